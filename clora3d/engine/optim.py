"""Optimizer parameter groups and the reference learning-rate schedule.

* :func:`param_groups` follows the Point-MAE family's ``add_weight_decay`` (point_mae_family §3.1):
  weight decay 0 for parameters that are 1-D, whose name ends with ``.bias`` or whose name contains
  ``token`` (``cls_token``, ``mask_token``, prompt tokens); everything else is decayed. Like the
  reference, ``cls_pos`` (shape (1,1,D), no "token" in its name) **is decayed** by default;
  ``no_decay_cls_pos=True`` exempts it. This name rule only splits the *decay groups*; which
  parameters train at all is decided explicitly by the PEFT method.
* :class:`CosineWarmupLR` is timm 0.4.5's ``CosineLRScheduler`` with the settings every reference
  repo uses (cycle_limit 1, t_mul 1, decay_rate 0.1, warmup_prefix False, t_in_epochs True),
  written out here so no timm version drift can change it. It is stepped once per epoch with the
  index of the epoch just finished, so epoch 0 and epoch 1 both run at ``warmup_lr_init``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn

from clora3d.errors import ConfigError
from clora3d.schema import spec

__all__ = [
    "OptimizerConfig",
    "SchedulerConfig",
    "is_no_decay",
    "param_groups",
    "build_optimizer",
    "CosineWarmupLR",
    "ConstantLR",
    "build_scheduler",
]


def _betas(v: list) -> bool:
    return len(v) == 2


@dataclass
class OptimizerConfig:
    """The ``optimizer`` section."""

    NAME: Literal["AdamW", "Adam", "SGD"] = spec("AdamW", doc="optimizer")
    lr: float = spec(5e-4, gt=0, doc="base learning rate")
    weight_decay: float = spec(
        0.05, ge=0, doc="decay of the decayed group (no decay: 1-D params, *.bias, names containing 'token')"
    )
    betas: list[float] = spec(
        factory=lambda: [0.9, 0.999], ge=0, lt=1, check=_betas, expect="two numbers in [0, 1)", doc="Adam/AdamW betas"
    )
    eps: float = spec(1e-8, gt=0, doc="Adam/AdamW eps")
    momentum: float = spec(0.9, ge=0, doc="SGD momentum")
    nesterov: bool = spec(True, doc="SGD Nesterov")
    no_decay_cls_pos: bool = spec(False, doc="also exempt cls_pos from weight decay (the reference decays it)")


@dataclass
class SchedulerConfig:
    """The ``scheduler`` section."""

    NAME: Literal["CosLR", "none"] = spec(
        "CosLR", doc="CosLR = timm-0.4.5 CosineLRScheduler stepped once per epoch; none = constant"
    )
    epochs: Optional[int] = spec(None, gt=0, doc="t_initial of the cosine; null = train.epochs")
    warmup_epochs: int = spec(10, ge=0, doc="linear warm-up epochs")
    lr_min: float = spec(1e-6, ge=0, doc="cosine floor")
    warmup_lr_init: float = spec(1e-6, ge=0, doc="lr at the start of warm-up")


def is_no_decay(name: str, param: torch.Tensor, *, no_decay_cls_pos: bool = False) -> bool:
    """True when the reference recipe puts ``param`` in the zero-weight-decay group."""
    if param.ndim <= 1 or name.endswith(".bias") or "token" in name:
        return True
    if no_decay_cls_pos and name.split(".")[-1] == "cls_pos":
        return True
    return False


def param_groups(
    named_params: Mapping[str, nn.Parameter],
    weight_decay: float,
    *,
    no_decay_cls_pos: bool = False,
    exempt: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Two AdamW groups (decay / no decay) over ``named_params`` that require grad.

    No decay: :func:`is_no_decay` (the one rule), plus the names in ``exempt``: what the PEFT method
    says the rule cannot tell (``method.no_weight_decay()``, e.g. CLoRA's stacked 2-D biases).

    Group order and the order of parameters inside each group follow ``named_params``.
    Each group carries the parameter names under ``"names"`` (ignored by torch optimizers).
    """
    decay, no_decay = (
        {"params": [], "names": [], "weight_decay": float(weight_decay)},
        {"params": [], "names": [], "weight_decay": 0.0},
    )
    seen: set[int] = set()
    for name, p in named_params.items():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        g = no_decay if name in exempt or is_no_decay(name, p, no_decay_cls_pos=no_decay_cls_pos) else decay
        g["params"].append(p)
        g["names"].append(name)
    groups = [g for g in (no_decay, decay) if g["params"]]
    if not groups:
        raise ConfigError("no trainable parameters: the PEFT method froze everything (check peft.NAME and its options)")
    return groups


def build_optimizer(
    named_params: Mapping[str, nn.Parameter], cfg_opt: Mapping[str, Any], *, exempt: Collection[str] = ()
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over :func:`param_groups` from the ``optimizer`` config section."""
    groups = param_groups(
        named_params, cfg_opt["weight_decay"], no_decay_cls_pos=cfg_opt.get("no_decay_cls_pos", False), exempt=exempt
    )
    name = cfg_opt["NAME"]
    lr = float(cfg_opt["lr"])
    # on CUDA the fused kernels update every parameter in a few launches and never read the step
    # counter back to the host (the CPU implementation stays the plain one)
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg_opt["betas"]), eps=cfg_opt["eps"], **fused)
    if name == "Adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg_opt["betas"]), eps=cfg_opt["eps"], **fused)
    if name == "SGD":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg_opt["momentum"], nesterov=bool(cfg_opt["nesterov"]) and cfg_opt["momentum"] > 0
        )
    raise ConfigError(f"optimizer.NAME must be AdamW, Adam or SGD, got {name!r}")


class CosineWarmupLR:
    """timm-0.4.5-compatible ``CosineLRScheduler`` (per-epoch), as the Point-MAE family uses it.

    ``lr(t)`` for the value set after epoch ``t`` finished:
      * ``t < warmup_t``: ``warmup_lr_init + t * (base - warmup_lr_init) / warmup_t``
      * ``t < t_initial``: ``lr_min + (base - lr_min) * (1 + cos(pi * t / t_initial)) / 2``
        (the cosine is *not* shifted by the warm-up)
      * otherwise ``lr_min`` (cycle_limit 1).
    At construction every group is set to ``warmup_lr_init`` (when warm-up is on), which is the lr
    of epoch 0; ``step(e)`` at the end of epoch ``e`` sets the lr of epoch ``e + 1`` to ``lr(e)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        t_initial: int,
        *,
        lr_min: float = 1e-6,
        warmup_t: int = 0,
        warmup_lr_init: float = 0.0,
    ) -> None:
        if t_initial <= 0:
            raise ConfigError(f"scheduler.epochs must be positive, got {t_initial}")
        self.optimizer = optimizer
        self.t_initial = int(t_initial)
        self.lr_min = float(lr_min)
        self.warmup_t = int(warmup_t)
        self.warmup_lr_init = float(warmup_lr_init)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_values = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = -1
        if self.warmup_t:
            self._set([self.warmup_lr_init] * len(self.base_values))

    def lr_at(self, t: int) -> list[float]:
        """The per-group lr computed for (finished) epoch index ``t``."""
        if t < self.warmup_t:
            return [self.warmup_lr_init + t * (v - self.warmup_lr_init) / self.warmup_t for v in self.base_values]
        i = t // self.t_initial
        t_curr = t - self.t_initial * i
        if i < 1:  # cycle_limit == 1; gamma = decay_rate ** 0 = 1 inside the first cycle
            return [
                self.lr_min + 0.5 * (v - self.lr_min) * (1 + math.cos(math.pi * t_curr / self.t_initial))
                for v in self.base_values
            ]
        return [self.lr_min for _ in self.base_values]

    def _set(self, values: list[float]) -> None:
        for g, v in zip(self.optimizer.param_groups, values):
            g["lr"] = v

    def step(self, epoch: int) -> None:
        """Call once at the end of epoch ``epoch``; sets the lr for the next epoch."""
        self.last_epoch = int(epoch)
        self._set(self.lr_at(int(epoch)))

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "t_initial": self.t_initial,
            "lr_min": self.lr_min,
            "warmup_t": self.warmup_t,
            "warmup_lr_init": self.warmup_lr_init,
            "base_values": list(self.base_values),
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t_initial = int(state["t_initial"])
        self.lr_min = float(state["lr_min"])
        self.warmup_t = int(state["warmup_t"])
        self.warmup_lr_init = float(state["warmup_lr_init"])
        self.base_values = [float(v) for v in state["base_values"]]
        self.last_epoch = int(state["last_epoch"])


class ConstantLR:
    """``scheduler.NAME: none``: the lr stays at ``optimizer.lr``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.last_epoch = -1

    def step(self, epoch: int) -> None:
        self.last_epoch = int(epoch)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg_sched: Mapping[str, Any], train_epochs: int
) -> CosineWarmupLR | ConstantLR:
    """Scheduler from the ``scheduler`` config section (``epochs: null`` = ``train_epochs``)."""
    if cfg_sched["NAME"] == "none":
        return ConstantLR(optimizer)
    t_initial = cfg_sched.get("epochs") or train_epochs
    return CosineWarmupLR(
        optimizer,
        t_initial,
        lr_min=cfg_sched["lr_min"],
        warmup_t=cfg_sched["warmup_epochs"],
        warmup_lr_init=cfg_sched["warmup_lr_init"],
    )

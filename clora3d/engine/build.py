"""One builder from a loaded run config to what a run needs: model, PEFT method, data, optimizer.

Training (``engine.trainer``), inference and export (``engine.infer.load_run``, ``engine.export``),
few-shot (through the trainer) and the demo build through these functions, so a config means the
same model, method and optimizer everywhere. ``cfg`` is always the whole run config, as
:func:`clora3d.engine.config.load_config` returns it::

    from clora3d.engine import build, load_config

    cfg = load_config("cfgs/modelnet40/clora.yaml")
    run = build.build(cfg, ckpt="pretrain.pth")       # model + method + optimizer + scheduler
    run.method.train()                                # train mode + the frozen-BN policy
    loss = F.cross_entropy(run.model(points), labels) + run.method.regularization_loss()

or piece by piece: :func:`build_model`, :func:`load_weights`, :func:`build_method`,
:func:`build_optimizer`, :func:`build_datasets`, :func:`build_train_pipeline`.

BatchNorm: the config's ``model.frozen_bn`` is the one policy. The method receives it (as its
``frozen_bn`` option, which also decides the BN buffers kept in adapter files) and applies it in
``method.train()``; the trainer calls nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from clora3d.errors import ConfigError

__all__ = [
    "model_spec",
    "build_model",
    "load_weights",
    "FullTraining",
    "apply_method",
    "build_method",
    "build_optimizer",
    "Splits",
    "build_datasets",
    "build_train_pipeline",
    "Built",
    "build",
]

#: model-section keys read by the engine, not by the model's constructor
ENGINE_MODEL_KEYS = ("frozen_bn",)


def model_spec(cfg: Mapping[str, Any]) -> dict:
    """``cfg["model"]`` as :func:`clora3d.models.build_model` takes it (engine-only keys removed)."""
    return {k: v for k, v in dict(cfg["model"]).items() if k not in ENGINE_MODEL_KEYS}


def frozen_bn_policy(cfg: Mapping[str, Any]) -> str:
    """The run's BatchNorm policy: ``model.frozen_bn``, else the method's own, else ``train``."""
    return (cfg.get("model") or {}).get("frozen_bn") or (cfg.get("peft") or {}).get("frozen_bn") or "train"


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model from ``cfg["model"]`` (draws from torch's global RNG)."""
    from clora3d.models import build_model as _build

    spec = model_spec(cfg)
    try:
        return _build(spec)
    except TypeError as e:  # an argument the constructor does not take
        raise ConfigError(f"model: cannot build {spec.get('NAME')!r} from {spec}: {e}") from None


def load_weights(model: nn.Module, ckpt: Any, log: Any = "logging") -> Any:
    """Load a pre-trained checkpoint (Point-MAE / Point-BERT / clora3d layouts) into ``model``;
    returns the load report (loaded / missing / unexpected keys), which goes to ``log`` as
    :func:`clora3d.models.checkpoint.load_pretrained` takes it (``None``: silent)."""
    from clora3d.models.checkpoint import load_pretrained

    return load_pretrained(model, ckpt, log=log)


class FullTraining:
    """The method of runs where every parameter of the model trains (pre-training, full part seg)."""

    name = "full"

    def __init__(self, model: nn.Module, frozen_bn: str = "train") -> None:
        self.model = model
        self.frozen_bn = frozen_bn

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the optimizer's rule (1-D tensors, biases, tokens)."""
        return set()

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def train(self, mode: bool = True) -> None:
        """``model.train(mode)`` and the frozen-BN policy (a no-op here: no BatchNorm is frozen)."""
        from clora3d.models.utils import apply_frozen_bn_policy

        self.model.train(mode)
        if mode:
            apply_frozen_bn_policy(self.model, self.frozen_bn)

    def eval(self) -> None:
        self.model.eval()


def apply_method(model: nn.Module, cfg: Mapping[str, Any]):
    """Apply the PEFT method ``cfg["peft"]`` to ``model`` (in place) with the run's frozen-BN policy;
    an option the model cannot take is a ConfigError naming method and model."""
    from clora3d.peft import apply_peft

    peft_cfg = dict(cfg.get("peft") or {"NAME": "full"})
    if (cfg.get("model") or {}).get("frozen_bn"):
        peft_cfg["frozen_bn"] = cfg["model"]["frozen_bn"]
    try:
        return apply_peft(model, peft_cfg)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(
            f"peft.NAME={peft_cfg.get('NAME')!r} cannot be applied to model {cfg['model'].get('NAME')}: {e}"
        ) from None


def trains_everything(cfg: Mapping[str, Any], model: nn.Module) -> bool:
    """Pre-training, or ``peft.NAME: full`` on a model without a classification head (part seg)."""
    return cfg.get("task") == "pretrain" or (
        (cfg.get("peft") or {}).get("NAME") == "full" and not hasattr(model, "cls_head_finetune")
    )


def build_method(model: nn.Module, cfg: Mapping[str, Any]):
    """The run's method: :class:`FullTraining` when every parameter trains, else :func:`apply_method`."""
    if trains_everything(cfg, model):
        return FullTraining(model, frozen_bn_policy(cfg))
    return apply_method(model, cfg)


def build_optimizer(method: Any, cfg: Mapping[str, Any]):
    """``(optimizer, scheduler)`` over exactly the method's trainable parameters."""
    from clora3d.engine.optim import build_optimizer as _optimizer
    from clora3d.engine.optim import build_scheduler

    optimizer = _optimizer(dict(method.trainable_parameters()), cfg["optimizer"], exempt=method.no_weight_decay())
    scheduler = build_scheduler(optimizer, cfg["scheduler"], cfg["train"]["epochs"])
    return optimizer, scheduler


def compile_forward(net: nn.Module, mode: bool | str) -> nn.Module:
    """``train.compile``: ``torch.compile(net, fullgraph=True)`` in ``mode`` (true = Inductor's default,
    ``reduce-overhead`` = Inductor + CUDA graphs, ``max-autotune``, ``aot_eager`` = no code generation).
    Inductor is told to draw random numbers as eager does (``fallback_random``), so dropout / drop path
    match eager and a resumed run stays exact. Used by the trainer and by the GPU benchmark's compiled
    rows alike."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    kw = {"backend": "aot_eager"} if mode == "aot_eager" else ({"mode": mode} if isinstance(mode, str) else {})
    return torch.compile(net, fullgraph=True, **kw)


@dataclass
class Splits:
    """The run's data sets; ``val`` / ``test`` are None when the config has none."""

    train: Dataset
    val: Dataset | None = None
    test: Dataset | None = None

    def attribute(self, name: str) -> Any:
        """An attribute of the train set (``class_names``, ``seg_classes``), looking through a Subset."""
        ds = self.train
        return getattr(ds, name, None) or getattr(getattr(ds, "dataset", None), name, None)


def _dataset(sec: Mapping[str, Any], split_default: str) -> Dataset:
    from clora3d.data import build_dataset

    spec = {k: v for k, v in sec.items() if k != "split"}
    return build_dataset(spec, sec.get("split", split_default))


def build_datasets(cfg: Mapping[str, Any]) -> Splits:
    """``dataset.train`` / ``val`` / ``test``; ``val: {from_train: f}`` holds out a seeded fraction."""
    from clora3d.engine.pipeline import holdout

    ds = cfg["dataset"]
    splits = Splits(_dataset(ds["train"], "train"))
    if "val" in ds:
        if "from_train" in ds["val"]:
            splits.train, splits.val = holdout(splits.train, ds["val"]["from_train"], cfg["seed"])
        else:
            splits.val = _dataset(ds["val"], "val")
    if "test" in ds:
        splits.test = _dataset(ds["test"], "test")
    return splits


def build_train_pipeline(cfg: Mapping[str, Any]):
    """The training batch pipeline of ``cfg["data"]`` (sampling mode + augmentations)."""
    from clora3d.data import build_transforms
    from clora3d.engine.pipeline import TrainBatchPipeline

    dcfg = cfg["data"]
    transform = build_transforms(dcfg["train_transforms"]) if dcfg["train_transforms"] else None
    return TrainBatchPipeline(dcfg["train_sampling"], dcfg["npoints"], dcfg["point_all"], transform)


@dataclass
class Built:
    """What :func:`build` returns."""

    model: nn.Module
    method: Any
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    load_report: Any = None


def build(
    cfg: Mapping[str, Any], *, ckpt: Any = None, device: str | torch.device = "cpu", optimizer: bool = True
) -> Built:
    """Model (pre-trained weights from ``ckpt`` when given), method, optimizer and scheduler of a
    validated run config, on ``device``; the same steps and order as the trainer."""
    model = build_model(cfg)
    report = load_weights(model, ckpt) if ckpt is not None else None
    method = build_method(model, cfg)
    model.to(device)
    opt, sched = build_optimizer(method, cfg) if optimizer else (None, None)
    return Built(model, method, opt, sched, report)

"""LoRA on the block linears (default ``qkv`` and ``proj``, as PointLoRA).

Each target ``Linear`` (weight W, d_out x d_in) gets two sibling parameters registered on the module
itself, so no base key is renamed: ``<target>.lora_A`` (r x d_in, kaiming-uniform a=sqrt(5)) and
``<target>.lora_B`` (d_out x r, zeros). A forward hook adds ``scale * dropout(x) A^T B^T`` with
``scale = alpha / r`` (``alpha / sqrt(r)`` with ``rslora``). ``merge`` sets ``W += scale * B A`` and
removes the sibling parameters and hooks; ``unmerge`` restores the stored original W exactly.
For ViT-S with r = 8 on qkv + proj: 12 * 8 * (384 + 1152 + 384 + 384) = 221,184 parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.models.transformer import Linear, autocast_input
from clora3d.peft.base import PeftMethod, fan_in_uniform_
from clora3d.peft.config import BLOCK_LINEARS, PeftConfig, config_defaults, layers_spec, normalize_targets
from clora3d.peft.registry import register_method
from clora3d.schema import spec


@dataclass
class LoRAConfig(PeftConfig):
    """Options of ``peft: {NAME: lora}``."""

    rank: int = spec(8, gt=0, doc="r")
    alpha: float = spec(8.0, gt=0, doc="scale = alpha / r (PointLoRA: r = alpha = 8)")
    dropout: float = spec(0.0, ge=0, lt=1, doc="dropout on the LoRA branch input (training only)")
    targets: list[str] = spec(factory=lambda: ["qkv", "proj"], doc="any of qkv, proj, fc1, fc2")
    layers: list[int] | None = layers_spec()
    rslora: bool = spec(False, doc="scale = alpha / sqrt(r)")

    def __post_init__(self) -> None:
        self.targets = normalize_targets(self.targets, BLOCK_LINEARS)


#: LoRA's own options and their defaults (the dataclass above is the source).
LORA_DEFAULTS = config_defaults(LoRAConfig)


class LoRALayer:
    """The low-rank update of one target linear: forward hook ``y -> y + scale * dropout(x) A^T B^T``,
    its delta ``scale * B A``, and merge / exact unmerge into the linear's weight."""

    def __init__(self, lin: nn.Linear, A: nn.Parameter, B: nn.Parameter, scale: float, p: float = 0.0) -> None:
        self.lin, self.A, self.B, self.scale, self.p = lin, A, B, scale, p
        self.original: torch.Tensor | None = None

    @classmethod
    def on(cls, lin: nn.Linear, rank: int, scale: float, p: float = 0.0, **extra: object) -> LoRALayer:
        """A zero update on ``lin``: ``A`` (rank x d_in) kaiming-uniform(a=sqrt(5)), ``B`` (d_out x rank) zeros,
        on the linear's device and dtype; ``extra`` goes to a subclass's constructor."""
        w = lin.weight
        A = nn.Parameter(torch.empty(rank, lin.in_features, device=w.device, dtype=w.dtype))
        fan_in_uniform_(A)
        B = nn.Parameter(torch.zeros(lin.out_features, rank, device=w.device, dtype=w.dtype))
        return cls(lin, A, B, scale, p, **extra)

    def factors(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` for this forward on ``x``: the copies cast together with the other trainable
        tensors when the trainer's bf16 scope made them (:meth:`Linear.trainable_copies`), else the
        parameters themselves (autocast casts each at its use)."""
        if isinstance(module, Linear) and module._parameters.get("lora_A") is self.A:
            return module.trainable_copies(x, "lora_A", "lora_B")
        return self.A, self.B

    def cast_input(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook (no dropout): under autocast the input is cast once for both the frozen
        linear and the branch (each would cast it, and convert its gradient back)."""
        return (autocast_input(args[0]),) + tuple(args[1:])

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = F.dropout(args[0], self.p, module.training) if self.p > 0 else args[0]
        A, B = self.factors(module, x)
        # out + scale * (x A^T) B^T as mm + addmm on 2-D views: fewer dispatched ops per step
        z = x.reshape(-1, x.shape[-1]) @ A.t()
        return torch.addmm(out.reshape(-1, out.shape[-1]), z, B.t(), alpha=self.scale).view(out.shape)

    def delta(self) -> torch.Tensor:
        """``scale * B A`` (d_out x d_in, the nn.Linear weight layout)."""
        return self.scale * (self.B @ self.A)

    def merge(self) -> None:
        """``W += scale * B A`` computed in float64; the original W is kept for :meth:`unmerge`."""
        W = self.lin.weight
        self.original = W.detach().clone()
        dW = self.scale * (self.B.detach().to(torch.float64) @ self.A.detach().to(torch.float64))
        W.copy_((W.detach().to(torch.float64) + dW).to(W.dtype))

    def unmerge(self) -> None:
        """Restore the original W exactly."""
        self.lin.weight.copy_(self.original)
        self.original = None


@register_method
class LoRA(PeftMethod):
    """Low-rank update ``W + scale * B A`` on the chosen block linears."""

    name = "lora"
    config_class = LoRAConfig
    mergeable = True

    def _setup(self) -> None:
        cfg = self.cfg
        self.targets = list(cfg.targets)
        self.layers = self.resolve_layers()
        r = cfg.rank
        self.scale = cfg.alpha / (math.sqrt(r) if cfg.rslora else r)
        self.sites: list[tuple[str, LoRALayer]] = []
        for i in self.layers:
            for t in self.targets:
                name, layer = (
                    self.block_linear_name(i, t),
                    LoRALayer.on(self.block_linear(i, t), r, self.scale, cfg.dropout),
                )
                self.sites.append((name, layer))
                self.peft_params[f"{name}.lora_A"] = layer.A
                self.peft_params[f"{name}.lora_B"] = layer.B

    def _attach(self) -> None:
        for _, layer in self.sites:
            layer.lin.register_parameter("lora_A", layer.A)
            layer.lin.register_parameter("lora_B", layer.B)
            if layer.p == 0:
                self._hook_pre(layer.lin, layer.cast_input)
            self._hook_post(layer.lin, layer)

    def _detach(self) -> None:
        super()._detach()
        for _, layer in self.sites:
            for k in ("lora_A", "lora_B"):
                if k in layer.lin._parameters:
                    del layer.lin._parameters[k]

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """``scale * B A`` (d_out x d_in, the nn.Linear weight layout) per target."""
        return {name: layer.delta() for name, layer in self.sites}

    def _merge_weights(self) -> None:
        for _, layer in self.sites:
            layer.merge()

    def _restore_weights(self) -> None:
        for _, layer in self.sites:
            layer.unmerge()

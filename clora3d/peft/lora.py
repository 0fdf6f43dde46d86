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
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.errors import ConfigError
from clora3d.peft.base import (BLOCK_LINEARS, PeftMethod, check_positive, check_probability, fan_in_uniform_,
                               register_method, resolve_layers, resolve_targets)

LORA_DEFAULTS: dict[str, Any] = {
    "rank": 8,                      # r
    "alpha": 8.0,                   # scale = alpha / r (PointLoRA: r = alpha = 8)
    "dropout": 0.0,                 # dropout on the LoRA branch input (training only)
    "targets": ["qkv", "proj"],     # any of qkv, proj, fc1, fc2
    "layers": None,                 # null -> every block
    "rslora": False,                # scale = alpha / sqrt(r)
}


class _LoRAHook:
    """Forward hook of a target linear: ``y -> y + scale * dropout(x) A^T B^T``."""

    def __init__(self, A: nn.Parameter, B: nn.Parameter, scale: float, p: float) -> None:
        self.A, self.B, self.scale, self.p = A, B, scale, p

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = F.dropout(args[0], self.p, module.training) if self.p > 0 else args[0]
        # out + scale * (x A^T) B^T as mm + addmm on 2-D views: fewer dispatched ops per step
        z = x.reshape(-1, x.shape[-1]) @ self.A.t()
        return torch.addmm(out.reshape(-1, out.shape[-1]), z, self.B.t(), alpha=self.scale).view(out.shape)


@register_method
class LoRA(PeftMethod):
    """Low-rank update ``W + scale * B A`` on the chosen block linears."""

    name = "lora"
    DEFAULTS = LORA_DEFAULTS
    mergeable = True

    def _setup(self) -> None:
        cfg, n = self.config, self.name
        check_positive(n, cfg, "rank")
        check_positive(n, cfg, "alpha")
        check_probability(n, cfg, "dropout")
        self.targets = resolve_targets(n, cfg, list(BLOCK_LINEARS))
        cfg["targets"] = list(self.targets)
        self.layers = resolve_layers(n, cfg, len(self.blocks))
        cfg["layers"] = list(self.layers)
        r = cfg["rank"]
        self.scale = cfg["alpha"] / (math.sqrt(r) if cfg["rslora"] else r)
        self.sites: list[tuple[str, nn.Linear, nn.Parameter, nn.Parameter]] = []
        ref = self.reference_parameter()
        for i in self.layers:
            for t in self.targets:
                lin = self.block_linear(i, t)
                if not isinstance(lin, nn.Linear):
                    raise ConfigError(f"peft method 'lora': {self.block_linear_name(i, t)} is not an nn.Linear")
                A = nn.Parameter(torch.empty(r, lin.in_features, device=ref.device, dtype=ref.dtype))
                fan_in_uniform_(A)
                B = nn.Parameter(torch.zeros(lin.out_features, r, device=ref.device, dtype=ref.dtype))
                name = self.block_linear_name(i, t)
                self.sites.append((name, lin, A, B))
                self.peft_params[f"{name}.lora_A"] = A
                self.peft_params[f"{name}.lora_B"] = B
        self._originals: dict[str, torch.Tensor] = {}

    def _attach(self) -> None:
        for _, lin, A, B in self.sites:
            lin.register_parameter("lora_A", A)
            lin.register_parameter("lora_B", B)
            self._hook_post(lin, self._make_hook(A, B))

    def _detach(self) -> None:
        super()._detach()
        for _, lin, _, _ in self.sites:
            for k in ("lora_A", "lora_B"):
                if k in lin._parameters:
                    del lin._parameters[k]

    def _make_hook(self, A: nn.Parameter, B: nn.Parameter) -> "_LoRAHook":
        return _LoRAHook(A, B, self.scale, self.config["dropout"])

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """``scale * B A`` (d_out x d_in, the nn.Linear weight layout) per target."""
        return {name: self.scale * (B @ A) for name, _, A, B in self.sites}

    def _merge_weights(self) -> None:
        self._originals = {}
        for name, lin, A, B in self.sites:
            self._originals[name] = lin.weight.detach().clone()
            dW = self.scale * (B.detach().to(torch.float64) @ A.detach().to(torch.float64))
            lin.weight.copy_((lin.weight.detach().to(torch.float64) + dW).to(lin.weight.dtype))

    def _restore_weights(self) -> None:
        for name, lin, _, _ in self.sites:
            lin.weight.copy_(self._originals[name])
        self._originals = {}

"""AdaptFormer-style parallel MLP adapter and deep prompt tuning (both attached by hooks).

Adapter (``NAME: adapter``), per selected block, in parallel with the MLP branch::

    h = x + DP(attn(norm1 x));   out = h + DP(mlp(norm2 h)) + scale * up(dropout(relu(down(a))))

with ``a = h`` (``input: residual``, AdaptFormer's default) or ``a = norm2 h`` (``input: norm2``).
``down`` is Linear(d, bottleneck) with kaiming-uniform(a=sqrt(5)) weight, ``up`` Linear(bottleneck, d) with
zero weight; both biases zero, so the model starts exactly at the pre-trained one. Parameters live in
``peft.<block index>.down/up``. Not mergeable (non-linear).

Deep prompt tuning (``NAME: prompt``): ``num_tokens`` learnable tokens per selected block (VPT-deep;
``layers: [0]`` gives shallow prompting). A pre-hook inserts them after the cls token, a post-hook
drops them again, so the block's output keeps 1 + G tokens and the head is unchanged. The
positional embedding is added before the block (and hence before insertion): prompts carry none.
Prompts are ``trunc_normal(std=init_std)``; parameters ``peft.prompts`` (len(layers), n, d).
Prompts change attention from the first step, so prompt tuning does NOT start at the base model's
output. Not mergeable. Each selected block processes n extra tokens (see the FLOPs table).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.errors import ConfigError
from clora3d.peft.base import (PeftMethod, check_positive, check_probability, fan_in_uniform_, register_method,
                               resolve_layers)

ADAPTER_DEFAULTS: dict[str, Any] = {
    "bottleneck": 64,        # hidden width of the adapter
    "scale": 0.1,            # AdaptFormer's s
    "dropout": 0.1,          # dropout after the activation (training only)
    "input": "residual",     # "residual" (AdaptFormer: the stream before norm2) | "norm2" (its output)
    "layers": None,          # null -> every block
}

PROMPT_DEFAULTS: dict[str, Any] = {
    "num_tokens": 10,        # prompt tokens per selected block
    "layers": None,          # null -> every block (deep); [0] -> shallow
    "init_std": 0.02,        # trunc-normal std of the prompts
    "dropout": 0.0,          # dropout on the prompts (training only)
}


class AdapterMLP(nn.Module):
    """``up(dropout(relu(down(x))))`` with zero-initialised ``up``."""

    def __init__(self, dim: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        fan_in_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x))))


class _Stash:
    """Forward hook of ``norm2``: remembers the adapter input (its input, or its output for ``norm2``)."""

    def __init__(self, use_output: bool) -> None:
        self.use_output, self.value = use_output, None

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.value = out if self.use_output else args[0]


class _AddAdapter:
    """Forward hook of a Block: ``out -> out + scale * adapter(stashed input)``."""

    def __init__(self, stash: _Stash, adapter: AdapterMLP, scale: float) -> None:
        self.stash, self.adapter, self.scale = stash, adapter, scale

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        a, self.stash.value = self.stash.value, None
        return out + self.scale * self.adapter(a)


@register_method
class Adapter(PeftMethod):
    """AdaptFormer parallel adapter (see module docstring)."""

    name = "adapter"
    DEFAULTS = ADAPTER_DEFAULTS

    def _setup(self) -> None:
        cfg, n = self.config, self.name
        check_positive(n, cfg, "bottleneck")
        check_probability(n, cfg, "dropout")
        if cfg["input"] not in ("residual", "norm2"):
            raise ConfigError(f"peft method 'adapter': input must be 'residual' or 'norm2', got {cfg['input']!r}")
        self.layers = resolve_layers(n, cfg, len(self.blocks))
        cfg["layers"] = list(self.layers)
        d = self.dim
        self.adapters = nn.ModuleDict({str(i): AdapterMLP(d, cfg["bottleneck"], cfg["dropout"]) for i in self.layers})
        ref = self.reference_parameter()
        self.adapters.to(device=ref.device, dtype=ref.dtype)
        self.peft_params = {f"peft.{k}": p for k, p in self.adapters.named_parameters()}

    def _attach(self) -> None:
        self.model.add_module("peft", self.adapters)
        for i in self.layers:
            stash = _Stash(self.config["input"] == "norm2")
            self._hook_post(self.blocks[i].norm2, stash)
            self._hook_post(self.blocks[i], _AddAdapter(stash, self.adapters[str(i)], self.config["scale"]))

    def _detach(self) -> None:
        super()._detach()
        if "peft" in self.model._modules:
            del self.model._modules["peft"]


class PromptStore(nn.Module):
    """Holds the prompt tokens ``prompts`` (len(layers), n, d)."""

    def __init__(self, num_layers: int, num_tokens: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(num_layers, num_tokens, dim))
        nn.init.trunc_normal_(self.prompts, std=init_std)


class _InsertPrompts:
    """Forward pre-hook of a Block: insert the prompts of slot ``k`` after the cls token."""

    def __init__(self, store: PromptStore, k: int, p: float) -> None:
        self.store, self.k, self.p = store, k, p

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        pr = self.store.prompts[self.k]
        if self.p > 0:
            pr = F.dropout(pr, self.p, module.training)
        pr = pr.unsqueeze(0).expand(x.shape[0], -1, -1)
        return (torch.cat([x[:, :1], pr, x[:, 1:]], dim=1),) + tuple(args[1:])


class _RemovePrompts:
    """Forward hook of a Block: drop the ``n`` prompt tokens again."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1], out[:, 1 + self.n:]], dim=1)


@register_method
class PromptTuning(PeftMethod):
    """Deep prompt tuning (see module docstring)."""

    name = "prompt"
    DEFAULTS = PROMPT_DEFAULTS
    starts_at_base = False

    def _setup(self) -> None:
        cfg, n = self.config, self.name
        check_positive(n, cfg, "num_tokens")
        check_positive(n, cfg, "init_std")
        check_probability(n, cfg, "dropout")
        self.layers = resolve_layers(n, cfg, len(self.blocks))
        cfg["layers"] = list(self.layers)
        d = self.dim
        self.store = PromptStore(len(self.layers), cfg["num_tokens"], d, cfg["init_std"])
        ref = self.reference_parameter()
        self.store.to(device=ref.device, dtype=ref.dtype)
        self.peft_params = {"peft.prompts": self.store.prompts}

    def _attach(self) -> None:
        self.model.add_module("peft", self.store)
        for k, i in enumerate(self.layers):
            self._hook_pre(self.blocks[i], _InsertPrompts(self.store, k, self.config["dropout"]))
            self._hook_post(self.blocks[i], _RemovePrompts(self.config["num_tokens"]))

    def _detach(self) -> None:
        super()._detach()
        if "peft" in self.model._modules:
            del self.model._modules["peft"]

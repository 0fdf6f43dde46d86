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

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.models.transformer import Linear
from clora3d.peft.base import PeftMethod, fan_in_uniform_
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec
from clora3d.peft.registry import register_method
from clora3d.schema import spec


@dataclass
class AdapterConfig(PeftConfig):
    """Options of ``peft: {NAME: adapter}``."""

    bottleneck: int = spec(64, gt=0, doc="hidden width of the adapter")
    scale: float = spec(0.1, doc="AdaptFormer's s")
    dropout: float = spec(0.1, ge=0, lt=1, doc="dropout after the activation (training only)")
    input: Literal["residual", "norm2"] = spec(
        "residual", doc="residual (AdaptFormer: the stream before norm2) | norm2 (its output)"
    )
    layers: list[int] | None = layers_spec()


@dataclass
class PromptConfig(PeftConfig):
    """Options of ``peft: {NAME: prompt}``."""

    num_tokens: int = spec(10, gt=0, doc="prompt tokens per selected block")
    layers: list[int] | None = layers_spec("block indices; null = every block (deep); [0] = shallow")
    init_std: float = spec(0.02, gt=0, doc="trunc-normal std of the prompts")
    dropout: float = spec(0.0, ge=0, lt=1, doc="dropout on the prompts (training only)")


ADAPTER_DEFAULTS = config_defaults(AdapterConfig)
PROMPT_DEFAULTS = config_defaults(PromptConfig)


class AdapterMLP(nn.Module):
    """``up(dropout(relu(down(x))))`` with zero-initialised ``up``."""

    def __init__(self, dim: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.down = Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.up = Linear(bottleneck, dim)
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
    config_class = AdapterConfig

    def _setup(self) -> None:
        cfg = self.cfg
        self.layers = self.resolve_layers()
        d = self.dim
        self.adapters = nn.ModuleDict({str(i): AdapterMLP(d, cfg.bottleneck, cfg.dropout) for i in self.layers})
        ref = self.reference_parameter()
        self.adapters.to(device=ref.device, dtype=ref.dtype)
        self.peft_params = {f"peft.{k}": p for k, p in self.adapters.named_parameters()}
        self.peft_module = self.adapters

    def _attach(self) -> None:
        for i in self.layers:
            stash = _Stash(self.cfg.input == "norm2")
            self._hook_post(self.blocks[i].norm2, stash)
            self._hook_post(self.blocks[i], _AddAdapter(stash, self.adapters[str(i)], self.cfg.scale))


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
        return torch.cat([out[:, :1], out[:, 1 + self.n :]], dim=1)


@register_method
class PromptTuning(PeftMethod):
    """Deep prompt tuning (see module docstring)."""

    name = "prompt"
    config_class = PromptConfig
    starts_at_base = False

    def _setup(self) -> None:
        cfg = self.cfg
        self.layers = self.resolve_layers()
        self.store = PromptStore(len(self.layers), cfg.num_tokens, self.dim, cfg.init_std)
        ref = self.reference_parameter()
        self.store.to(device=ref.device, dtype=ref.dtype)
        self.peft_params = {"peft.prompts": self.store.prompts}
        self.peft_module = self.store

    def _attach(self) -> None:
        for k, i in enumerate(self.layers):
            self._hook_pre(self.blocks[i], _InsertPrompts(self.store, k, self.cfg.dropout))
            self._hook_post(self.blocks[i], _RemovePrompts(self.cfg.num_tokens))

"""DAPT, Dynamic Adapter meets Prompt Tuning (Zhou et al., CVPR 2024).

Built from the paper and the facts of its repository (LMD0311/DAPT, ``reference/point_mae_family.md``
§8.2); attached to the canonical Block by hooks, with the backbone's own extension points:

* **Positional embedding added once** before the first block (``blocks.pos_every_block = False``
  while attached), not re-added per block as in Point-MAE.
* **SSF scale/shift** ``x * gamma + beta`` (per channel; gamma ~ N(1, .02), beta ~ N(0, .02)) on the
  patch-encoder tokens, on the outputs of ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2`` of every block, on every internal prompt and after the final ``norm``.
* **Dynamic adapter** in parallel with the MLP, on the (scaled) ``norm2`` output ``a``:
  ``adapter(a) = up(dropout(GELU(down(LN(a))))) * ReLU(s(LN(a)))`` with a per-token scale
  ``s: Linear(d, 1)``; the block computes ``x = h + DP(mlp(a) + adapter(a))`` (one drop-path mask for
  both). Init: ``down`` and ``s`` kaiming-uniform(a=sqrt(5)), ``up`` zero, biases zero: the adapter
  outputs zero at step 0.
* **Internal prompt**: after each block, ``SSF(mean over tokens of GELU(adapter(a)))`` is inserted after
  the cls token, so the sequence grows by one token per block: ``[cls, p_L, ..., p_1, G patches]``.
* **Head input** (``pool``): the cls token, the ``prompt_token`` pooling of the prompts (mean/max/none)
  and the ``patch_token`` pooling of the last G tokens (max/mean/none), concatenated; the head is
  replaced by a fresh one of that width when it differs from 2 * d.

ViT-S, 15 classes, rank 64, cls + mean prompts + max patches (PB_T50_RS):
12 x (adapter 50,753 + SSF 9,216) + 2 x 768 + cls 768 + head (1152 in) 365,839 = 1,087,771.
New modules live in ``peft.*`` (the wider head keeps the name ``cls_head_finetune``).

**Part segmentation** (``PartSegModel``; DAPT's paper reports ShapeNetPart, its repository has no
segmentation code): the same adapters, SSF sites and per-block prompts; with no cls token the
prompts are inserted first, ``[p_L, ..., p_1, G patches]``, so the fetched blocks carry them before
the patches and the part-seg pool reads only the last G tokens (per-point features, max/mean global
feature); the final SSF follows the shared ``norm`` of every fetched layer. ``class_token``,
``prompt_token`` and ``patch_token`` only shape the classification head input and have no effect
there. ViT-S: 12 x 59,969 + 2 x 768 + part-seg head 5,238,706 = 5,959,870. The SSF init
noise and the prompts change the output from the first step (``starts_at_base = False``); not
mergeable (the adapter is non-linear and the prompts change the sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.models.transformer import Linear
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults
from clora3d.peft.registry import register_method
from clora3d.schema import spec

_POOLS = ("mean", "max", "none")


@dataclass
class DAPTConfig(PeftConfig):
    """Options of ``peft: {NAME: dapt}``."""

    rank: int = spec(64, gt=0, doc="adapter bottleneck (reference: 64 ScanObjectNN, 72 ModelNet40)")
    adapter_dropout: float = spec(
        0.0, ge=0, lt=1, doc="dropout inside the adapter (reference: 0.2 PB_T50_RS, 0.5 OBJ_BG, else 0)"
    )
    class_token: bool = spec(True, doc="head input includes the cls token")
    prompt_token: Literal["mean", "max", "none"] = spec(
        "mean", doc="pooling of the internal prompts into the head input: mean | max | none"
    )
    patch_token: Literal["max", "mean", "none"] = spec(
        "max", doc="pooling of the patch tokens into the head input: max | mean | none"
    )
    ssf_std: float = spec(0.02, ge=0, doc="std of the SSF init around gamma = 1, beta = 0")

    def __post_init__(self) -> None:
        if self.head_parts() == 0:
            raise ValueError("the head input is empty; set class_token: true or a prompt_token / patch_token pooling")

    def head_parts(self) -> int:
        """Pieces concatenated into the head input (cls token, pooled prompts, pooled patches)."""
        return int(self.class_token) + (self.prompt_token != "none") + (self.patch_token != "none")


DAPT_DEFAULTS = config_defaults(DAPTConfig)


class SSF(nn.Module):
    """Per-channel scale and shift ``x * gamma + beta`` on the last dimension."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim))
        self.beta = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.gamma, mean=1.0, std=std)
        nn.init.normal_(self.beta, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class DynamicAdapter(nn.Module):
    """``up(dropout(GELU(down(LN x)))) * ReLU(scale(LN x))`` with zero-initialised ``up``."""

    def __init__(self, dim: int, rank: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scale = Linear(dim, 1)
        self.down = Linear(dim, rank)
        self.up = Linear(rank, dim)
        self.p = dropout
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.scale.weight, a=math.sqrt(5))
        for b in (self.down.bias, self.up.bias, self.scale.bias):
            nn.init.zeros_(b)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        s = F.relu(self.scale(x))
        h = F.dropout(F.gelu(self.down(x)), self.p, self.training)
        return self.up(h) * s


class DAPTBlock(nn.Module):
    """A block's DAPT parameters: the adapter and the seven SSF sites."""

    SITES = {
        "norm1": "norm1",
        "qkv": "attn.qkv",
        "proj": "attn.proj",
        "norm2": "norm2",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
    }

    def __init__(self, dim: int, hidden: int, rank: int, dropout: float, std: float) -> None:
        super().__init__()
        self.adapter = DynamicAdapter(dim, rank, dropout)
        width = {"norm1": dim, "qkv": 3 * dim, "proj": dim, "norm2": dim, "fc1": hidden, "fc2": dim}
        self.ssf = nn.ModuleDict({k: SSF(w, std) for k, w in width.items()})
        self.prompt_ssf = SSF(dim, std)


class DAPTModules(nn.Module):
    """All new DAPT modules (registered as ``peft``)."""

    def __init__(self, dim: int, hidden: int, depth: int, rank: int, dropout: float, std: float) -> None:
        super().__init__()
        self.embed_ssf = SSF(dim, std)
        self.final_ssf = SSF(dim, std)
        self.blocks = nn.ModuleList(DAPTBlock(dim, hidden, rank, dropout, std) for _ in range(depth))


class DAPTPool(nn.Module):
    """Head input of DAPT from the final tokens ``[cls, prompts..., G patches]``."""

    def __init__(self, num_patches: int, class_token: bool, prompt_token: str, patch_token: str) -> None:
        super().__init__()
        self.g, self.cls, self.prompt, self.patch = num_patches, class_token, prompt_token, patch_token

    @staticmethod
    def _reduce(x: torch.Tensor, how: str) -> torch.Tensor:
        return x.max(dim=1).values if how == "max" else x.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.cls:
            parts.append(x[:, 0])
        if self.prompt != "none":
            parts.append(self._reduce(x[:, 1 : x.shape[1] - self.g], self.prompt))
        if self.patch != "none":
            parts.append(self._reduce(x[:, x.shape[1] - self.g :], self.patch))
        return torch.cat(parts, dim=-1)


class _Apply:
    """Forward hook: ``out -> fn(out)``."""

    def __init__(self, fn: nn.Module) -> None:
        self.fn = fn

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.fn(out)


class _MlpPlusAdapter:
    """Forward hook of ``block.mlp``: ``mlp(a) + adapter(a)``; keeps the adapter output for the prompt."""

    def __init__(self, adapter: DynamicAdapter) -> None:
        self.adapter, self.last = adapter, None

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        self.last = self.adapter(args[0])
        return out + self.last


class _InsertPrompt:
    """Forward hook of a Block: insert ``SSF(mean_tokens(GELU(adapter output)))`` after the ``lead`` leading
    tokens (1 = the cls token of the classification model, 0 on the part-seg model: first position)."""

    def __init__(self, source: _MlpPlusAdapter, ssf: SSF, lead: int = 1) -> None:
        self.source, self.ssf, self.lead = source, ssf, lead

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        a, self.source.last = self.source.last, None
        prompt = self.ssf(F.gelu(a).mean(dim=1, keepdim=True))
        n = self.lead
        return torch.cat([out[:, :n], prompt, out[:, n:]], dim=1)


@register_method
class DAPT(PeftMethod):
    """DAPT (see module docstring)."""

    name = "dapt"
    config_class = DAPTConfig
    starts_at_base = False

    def _setup(self) -> None:
        cfg = self.cfg
        parts = cfg.head_parts()
        model = self.model
        if not hasattr(model, "pool") or not hasattr(model, "encoder") or not hasattr(model, "group_divider"):
            raise ValueError("dapt needs a PointTransformer or PartSegModel (group_divider, encoder, pool)")
        d = self.dim
        hidden = self.blocks[0].mlp.fc1.out_features
        ref = self.reference_parameter()
        self.mods = DAPTModules(d, hidden, len(self.blocks), cfg.rank, cfg.adapter_dropout, cfg.ssf_std).to(
            device=ref.device, dtype=ref.dtype
        )
        self.lead = self.num_lead_tokens
        if self.is_partseg:  # the prompts sit before the patches, which the part-seg pool reads (last G)
            self.pool = self.head = None
        else:
            self.pool = DAPTPool(self.num_patches, cfg.class_token, cfg.prompt_token, cfg.patch_token)
            head_in = parts * d
            self.head = self.make_head(head_in) if head_in != model.cls_head_finetune[0].in_features else None
        self.peft_params = {f"peft.{k}": p for k, p in self.mods.named_parameters()}
        self.peft_module = self.mods

    def _attach(self) -> None:
        model, mods = self.model, self.mods
        model.blocks.pos_every_block = False
        if self.pool is not None:
            self.replace_module("pool", self.pool)
        if self.head is not None:
            self.replace_module("cls_head_finetune", self.head)
        embed_out = model.reduce_dim if getattr(model, "reduce_dim", None) is not None else model.encoder
        self._hook_post(embed_out, _Apply(mods.embed_ssf))
        self._hook_post(model.norm, _Apply(mods.final_ssf))
        for blk, m in zip(self.blocks, mods.blocks):
            for site, path in DAPTBlock.SITES.items():
                self._hook_post(blk.get_submodule(path), _Apply(m.ssf[site]))
            tap = _MlpPlusAdapter(m.adapter)
            self._hook_post(blk.mlp, tap)
            self._hook_post(blk, _InsertPrompt(tap, m.prompt_ssf, self.lead))

    def _detach(self) -> None:
        super()._detach()
        self.model.blocks.pos_every_block = True

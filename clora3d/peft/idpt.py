"""IDPT, Instance-aware Dynamic Prompt Tuning (Zha et al., ICCV 2023).

Built from the paper and the facts of its repository (zyh16143998882/ICCV23-IDPT at bf152f2,
``reference/point_mae_family.md`` §8.1); attached to the canonical Block by hooks:

* **Prompt generator** (DGCNN, ``peft.generator``): before block ``prompt_layer`` (default the last) the current patch
  tokens (the previous block's output, positional embedding not yet added) go through three EdgeConv
  layers in feature space (k nearest tokens by squared distance, the token itself included; edge
  feature ``[x_j - x_i, x_i]``; Conv2d 2d -> d without bias, BatchNorm2d, LeakyReLU 0.2; max over the
  k edges), then the three outputs are concatenated (3d), Conv1d 3d -> d without bias, BatchNorm1d,
  LeakyReLU 0.2, and max-pooled over the tokens: one instance-aware prompt token.
* The prompt is inserted after the cls token, ``[cls, prompt, patches]``, with its own positional
  embedding ``prompt_pos`` (trunc-normal .02). The reference never optimises ``prompt_pos`` (its name
  lacks the substring its optimizer selects on), so by default it is a fixed buffer stored in the
  adapter file (``train_prompt_pos: true`` trains it). The positional embedding is re-added before
  every block as in Point-MAE; IDPT adds it itself (the stack's ``pos_every_block`` is off while
  attached) because the sequence grows by one token at the prompt layer.
* **Head input** (``cls_type``): ``all`` = [cls, prompt, max(patches)] (3d, wider head),
  ``promptonly`` = prompt (d), ``promptcls`` = [cls, prompt], ``pointcls`` = [cls, max(patches)].

ViT-S, 15 classes, cls_type all: generator 1,330,176 + cls 768 + head (1152 in) 365,839 = 1,696,783.
The prompt changes the output from the first step (``starts_at_base = False``); not mergeable.

**Part segmentation** (``PartSegModel``; the repository's segmentation/models/prompt_pt3.py): one
prompt per fetched block (``fetch_idx``, 3/7/11 on ViT-S), each from its own generator (the reference
uses the ``generator: mlp`` variant there: Conv1d d -> d without bias, BatchNorm1d, LeakyReLU 0.2,
global max over the tokens) applied to the block's raw patch tokens. The block runs on
``[prompt + prompt_pos, patches + pos]``; its fetched output is ``[raw prompt, prompt out, G patches]``
and the next block gets the G patches only. The part-seg pool (``IDPTSegPool``) keeps the last G
tokens as per-group features and replaces the max/mean global feature by the normed raw prompts and
the normed prompt outputs of the fetched blocks (same width, so the head is unchanged). The
reference trains ``prompt_pos`` there (its name contains the substring it selects on):
``train_prompt_pos: true``. ``prompt_layer``, ``cls_type`` and ``k`` (mlp) do not apply.
ViT-S, mlp generators: 3 x 148,224 + prompt_pos 384 + part-seg head 5,238,706 = 5,683,762.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from clora3d.errors import ConfigError
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults
from clora3d.peft.registry import register_method
from clora3d.schema import spec

_CLS_TYPES = {"all": 3, "promptonly": 1, "promptcls": 2, "pointcls": 2}


@dataclass
class IDPTConfig(PeftConfig):
    """Options of ``peft: {NAME: idpt}``."""

    prompt_layer: int = spec(
        -1,
        doc="the prompt is generated and inserted before this block; negative counts "
        "from the end (-1 = the last block: 11 on ViT-S, the reference)",
    )
    k: int = spec(20, gt=0, doc="neighbours of each token in the EdgeConv layers (reference: 20)")
    cls_type: Literal["all", "promptonly", "promptcls", "pointcls"] = spec(
        "all", doc="head input: all | promptonly | promptcls | pointcls"
    )
    train_prompt_pos: bool = spec(False, doc="the reference leaves prompt_pos at its random init (classification)")
    generator: Literal["dgcnn", "mlp"] = spec(
        "dgcnn",
        doc="prompt generator: dgcnn (3 EdgeConvs; reference classification) or mlp (Conv1d + BN + "
        "LeakyReLU + max; the reference's part-seg generator)",
    )


IDPT_DEFAULTS = config_defaults(IDPTConfig)


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, C, N) -> (B, 2C, N, k)``: ``[x_j - x_i, x_i]`` over the k nearest tokens j of each i in feature
    space (squared Euclidean distance; i itself is its nearest)."""
    xt = x.transpose(1, 2)  # (B, N, C)
    sq = (xt * xt).sum(-1)
    neg_d = 2 * xt @ x - sq.unsqueeze(-1) - sq.unsqueeze(-2)  # -||x_i - x_j||^2
    idx = neg_d.topk(k, dim=-1).indices  # (B, N, k)
    B, N, C = xt.shape
    nb = torch.gather(xt.unsqueeze(1).expand(B, N, N, C), 2, idx.unsqueeze(-1).expand(B, N, k, C))
    ctr = xt.unsqueeze(2).expand(B, N, k, C)
    return torch.cat([nb - ctr, ctr], dim=-1).permute(0, 3, 1, 2)


class PromptGenerator(nn.Module):
    """DGCNN prompt generator: three EdgeConvs, concat, Conv1d, global max -> ``(B, 1, d)``."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.k = k

        def edge() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.LeakyReLU(0.2))

        self.conv1, self.conv2, self.conv3 = edge(), edge(), edge()
        self.conv5 = nn.Sequential(nn.Conv1d(3 * dim, dim, 1, bias=False), nn.BatchNorm1d(dim), nn.LeakyReLU(0.2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(1, 2)  # (B, d, G)
        x1 = self.conv1(edge_features(x, self.k)).max(dim=-1).values
        x2 = self.conv2(edge_features(x1, self.k)).max(dim=-1).values
        x3 = self.conv3(edge_features(x2, self.k)).max(dim=-1).values
        y = self.conv5(torch.cat([x1, x2, x3], dim=1))
        return y.max(dim=-1).values.unsqueeze(1)


class MLPPromptGenerator(nn.Module):
    """The reference's part-seg prompt generator: Conv1d d -> d (no bias), BatchNorm1d, LeakyReLU 0.2,
    global max over the tokens -> ``(B, 1, d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv5 = nn.Sequential(nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), nn.LeakyReLU(0.2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.conv5(tokens.transpose(1, 2)).max(dim=-1).values.unsqueeze(1)


def make_generator(kind: str, dim: int, k: int) -> nn.Module:
    return PromptGenerator(dim, k) if kind == "dgcnn" else MLPPromptGenerator(dim)


class IDPTModules(nn.Module):
    """New IDPT modules (registered as ``peft``): the generator (classification) or one generator per
    fetched block (``generators``, part seg), and ``prompt_pos``."""

    def __init__(self, dim: int, k: int, train_prompt_pos: bool, kind: str = "dgcnn", n_seg: int = 0) -> None:
        super().__init__()
        if n_seg:
            self.generators = nn.ModuleList(make_generator(kind, dim, k) for _ in range(n_seg))
        else:
            self.generator = make_generator(kind, dim, k)
        pos = torch.empty(1, 1, dim)
        nn.init.trunc_normal_(pos, std=0.02)
        if train_prompt_pos:
            self.prompt_pos = nn.Parameter(pos)
        else:
            self.register_buffer("prompt_pos", pos)


class IDPTPool(nn.Module):
    """Head input from ``[cls, prompt, patches]`` per ``cls_type``."""

    def __init__(self, cls_type: str) -> None:
        super().__init__()
        self.cls_type = cls_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.cls_type
        if t == "promptonly":
            return x[:, 1]
        if t == "promptcls":
            return torch.cat([x[:, 0], x[:, 1]], dim=-1)
        patches = x[:, 2:].max(dim=1).values
        if t == "pointcls":
            return torch.cat([x[:, 0], patches], dim=-1)
        return torch.cat([x[:, 0], x[:, 1], patches], dim=-1)


class IDPTSegPool(nn.Module):
    """Part-seg features from the fetched layers ``[raw prompt, prompt out, G patches]``: the last G tokens
    (concatenated over layers) per group; global = the raw prompts of every layer, then their outputs."""

    def forward(self, layers: list[torch.Tensor], num_group: int) -> tuple[torch.Tensor, torch.Tensor]:
        if any(t.shape[1] != num_group + 2 for t in layers):
            raise RuntimeError(
                f"idpt: a fetched part-seg layer has {[t.shape[1] for t in layers]} tokens, "
                f"expected {num_group + 2} (raw prompt, prompt output, patches)"
            )
        feat = torch.cat([t[:, 2:] for t in layers], dim=-1)
        glob = torch.cat([t[:, 0] for t in layers] + [t[:, 1] for t in layers], dim=-1)
        return feat, glob


class _StackState:
    """Forward pre-hook of the block stack: remembers ``(x, pos)`` of this forward."""

    def __init__(self) -> None:
        self.x = self.pos = self.pos_ext = self.prompt = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.x, self.pos, self.pos_ext, self.prompt = args[0], args[1], None, None


class _BlockInput:
    """Forward pre-hook of block ``i``: add the positional embedding (the stack adds it only before block
    0); at the prompt layer, generate the prompt from the raw patch tokens and insert it."""

    def __init__(self, i: int, layer: int, state: _StackState, mods: IDPTModules, num_group: int) -> None:
        self.i, self.layer, self.state, self.mods, self.g = i, layer, state, mods, num_group

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        st, x = self.state, args[0]
        if self.i == self.layer:
            raw = st.x if self.i == 0 else x  # block 0 already got x + pos from the stack
            prompt = self.mods.generator(raw[:, -self.g :])
            B = x.shape[0]
            pp = self.mods.prompt_pos.expand(B, -1, -1)
            st.pos_ext = torch.cat([st.pos[:, :1], pp, st.pos[:, 1:]], dim=1)
            if self.i == 0:
                x = torch.cat([x[:, :1], prompt + pp, x[:, 1:]], dim=1)
            else:
                x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1) + st.pos_ext
        elif self.i > 0:
            x = x + (st.pos_ext if self.i > self.layer else st.pos)
        return (x,) + tuple(args[1:])


class _SegBlockInput:
    """Part seg, forward pre-hook of block ``i``: keep the G patch tokens (a fetched block's output also
    carries its two prompt tokens), add the positional embedding (the stack adds it before block 0
    only); before a fetched block, generate its prompt from the raw patches and put it first."""

    def __init__(self, i: int, gen: nn.Module | None, state: _StackState, mods: IDPTModules, num_group: int) -> None:
        self.i, self.gen, self.state, self.mods, self.g = i, gen, state, mods, num_group

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        st, x = self.state, args[0]
        if self.i == 0:
            raw = st.x  # block 0 already got x + pos from the stack
        else:
            raw = x[:, -self.g :]
            x = raw + st.pos
        if self.gen is not None:
            st.prompt = self.gen(raw)
            x = torch.cat([st.prompt + self.mods.prompt_pos.expand(x.shape[0], -1, -1), x], dim=1)
        return (x,) + tuple(args[1:])


class _SegBlockOutput:
    """Part seg, forward hook of a fetched block: put the raw prompt before its output."""

    def __init__(self, state: _StackState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        prompt, self.state.prompt = self.state.prompt, None
        return torch.cat([prompt, out], dim=1)


@register_method
class IDPT(PeftMethod):
    """IDPT (see module docstring)."""

    name = "idpt"
    config_class = IDPTConfig
    starts_at_base = False

    def _setup(self) -> None:
        cfg = self.cfg
        depth = len(self.blocks)
        # part seg: a prompt before every fetched block instead (prompt_layer does not apply)
        if not self.is_partseg and not -depth <= cfg.prompt_layer < depth:
            raise ConfigError(
                f"peft method 'idpt': prompt_layer {cfg.prompt_layer} out of range for a backbone with depth {depth}"
            )
        self.layer = cfg.prompt_layer % depth
        model = self.model
        if not hasattr(model, "pool") or not hasattr(model, "group_divider"):
            raise ValueError("idpt needs a PointTransformer or PartSegModel (group_divider, pool)")
        G = self.num_patches
        if cfg.generator == "dgcnn" and cfg.k > G:
            raise ConfigError(f"peft method 'idpt': k={cfg.k} exceeds the number of tokens (num_group={G})")
        ref = self.reference_parameter()
        self.seg_layers = list(model.fetch_idx) if self.is_partseg else []
        self.mods = IDPTModules(self.dim, cfg.k, cfg.train_prompt_pos, cfg.generator, n_seg=len(self.seg_layers)).to(
            device=ref.device, dtype=ref.dtype
        )
        if self.is_partseg:
            self.pool, self.head = IDPTSegPool(), None
        else:
            self.pool = IDPTPool(cfg.cls_type)
            head_in = _CLS_TYPES[cfg.cls_type] * self.dim
            self.head = self.make_head(head_in) if head_in != model.cls_head_finetune[0].in_features else None
        self.peft_params = {f"peft.{k}": p for k, p in self.mods.named_parameters()}
        self.peft_module = self.mods

    def saved_buffer_names(self) -> list[str]:
        """Besides the BatchNorm buffers, the fixed random ``prompt_pos`` (unless it is trained)."""
        extra = [] if self.cfg.train_prompt_pos else ["peft.prompt_pos"]
        return super().saved_buffer_names() + extra

    def _attach(self) -> None:
        model = self.model
        model.blocks.pos_every_block = False
        self.replace_module("pool", self.pool)
        if self.head is not None:
            self.replace_module("cls_head_finetune", self.head)
        state = _StackState()
        self._hook_pre(model.blocks, state)
        if self.is_partseg:
            gens = dict(zip(self.seg_layers, self.mods.generators))
            for i, blk in enumerate(self.blocks):
                self._hook_pre(blk, _SegBlockInput(i, gens.get(i), state, self.mods, self.num_patches))
                if i in gens:
                    self._hook_post(blk, _SegBlockOutput(state))
            return
        for i, blk in enumerate(self.blocks):
            self._hook_pre(blk, _BlockInput(i, self.layer, state, self.mods, self.num_patches))

    def _detach(self) -> None:
        super()._detach()
        self.model.blocks.pos_every_block = True

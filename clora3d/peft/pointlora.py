"""PointLoRA (Wang et al., CVPR 2025): LoRA on qkv/proj plus multi-scale token selection.

Built from the paper and the facts of its repository (songw-zju/PointLoRA, see
``reference/point_mae_family.md`` §8.4); attached to the canonical Block by hooks:

* **LoRA with a shared prompt branch** on ``attn.qkv`` and ``attn.proj`` of every selected block:
  ``y = W x + b + scale * x A^T B^T + prompt_<target>(x)``. ``A`` (r x d_in, kaiming-uniform a=sqrt(5))
  and ``B`` (d_out x r, zeros) are sibling parameters ``<target>.lora_A/lora_B``; ``prompt_qkv`` /
  ``prompt_proj`` are small MLPs (d -> ``prompt_hidden`` -> d_out, GELU) shared by all blocks. The
  reference multiplies the prompt branch by a scalar that no optimizer group contains (it stays 1.0),
  so it is left out here; it computes ``scale = alpha / r`` but never applies it (r = alpha = 8 gives 1).
* **Multi-scale token selection**: the same cloud is grouped again at each of ``scales``
  (``[num_group, group_size, kept]``; reference 128 x 32 keeping 32 and 64 x 64 keeping 8), each
  grouping goes through the backbone's own patch encoder and ``pos_embed``; a mask predictor
  (d -> d/2, ReLU, -> 1, sigmoid) scores the tokens and the ``kept`` highest-scoring tokens of each
  scale (with their positional embeddings) are appended after the patch tokens:
  ``[cls, G patches, kept_1, kept_2, ...]``. The head pools them with the patches (cls + max).
* **Token prompts** before every block (after the positional embedding is added): tokens
  ``1 .. prompt_span`` get ``x + prompt_tokens(x)`` (the reference hard-codes 128, which on
  ModelNet40's 64 groups also covers the selected tokens), then the appended tokens get
  ``x + prompt_selected(x)``. Both MLPs are shared by all blocks.
* **Extra loss**: ``mask_loss_weight * sum_s w_s * mean(p log(p + 1e-6) + (1 - p) log(1 - p + 1e-6))``
  over each scale's scores ``p`` (reference: 0.004, weights 1 and 0.25), recorded per training
  forward and returned by ``regularization_loss()``. It is the only gradient path to the mask
  predictor (top-k selection is not differentiable).
* **Trainable base parameters**: the first half of the patch encoder (``encoder.first_conv.*``) and
  ``pos_embed.*`` (switchable), besides head, ``cls_token`` and ``cls_pos``.

ViT-S, 15 classes: LoRA 221,184 + prompt MLPs 125,312 + mask predictor 74,113 + first_conv 33,792 +
pos_embed 50,048 + cls 768 + head 267,535 = 772,752. New modules live in ``peft.*``. The prompt MLPs
(trunc-normal .02 weights) and the extra tokens change the output from the first step
(``starts_at_base = False``); not mergeable (the prompt branch is non-linear).

**Part segmentation** (``PartSegModel``; the paper reports ShapeNetPart, the repository has no
segmentation code): the same LoRA, prompt MLPs, token selection and mask loss; with no cls token the
selected tokens are put before the patches, ``[kept_1, kept_2, ..., G patches]``, so the part-seg
pool (last G tokens) never mixes them into the per-point or global features; ``prompt_selected`` acts on
the selected tokens and ``prompt_tokens`` on the first ``prompt_span`` patch tokens. ViT-S: the
classification count without the cls token and head, 504,449, + part-seg head 5,238,706 = 5,743,155.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.models.grouping import Group
from clora3d.models.transformer import Linear
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec, normalize_targets
from clora3d.peft.lora import LoRALayer
from clora3d.peft.registry import register_method
from clora3d.schema import spec


@dataclass
class PointLoRAConfig(PeftConfig):
    """Options of ``peft: {NAME: pointlora}``."""

    rank: int = spec(8, gt=0, doc="LoRA rank r")
    alpha: float = spec(8.0, gt=0, doc="LoRA scale alpha / r (reference: r = alpha = 8, i.e. 1)")
    targets: list[str] = spec(
        factory=lambda: ["qkv", "proj"], doc="LoRA + prompt branch on these linears (qkv and/or proj)"
    )
    layers: list[int] | None = layers_spec()
    prompt_hidden: int = spec(32, gt=0, doc="hidden width of the four prompt MLPs")
    prompt_span: int = spec(128, gt=0, doc="tokens 1..prompt_span get the token prompt (reference: 128)")
    scales: list[tuple[int, int, int]] = spec(
        factory=lambda: [[128, 32, 32], [64, 64, 8]], gt=0, doc="extra groupings: [num_group, group_size, tokens kept]"
    )
    scale_weights: list[float] = spec(factory=lambda: [1.0, 0.25], doc="weight of each scale's mask-entropy term")
    mask_loss_weight: float = spec(0.004, ge=0, doc="weight of the mask loss added to the task loss")
    train_first_conv: bool = spec(True, doc="train encoder.first_conv (reference: yes)")
    train_pos_embed: bool = spec(True, doc="train pos_embed (reference: yes)")

    def __post_init__(self) -> None:
        self.targets = normalize_targets(self.targets, ["qkv", "proj"])
        self.scales = [tuple(s) for s in self.scales]
        bad = [list(s) for s in self.scales if s[2] > s[0]]
        if bad:
            raise ValueError(f"scales {bad} keep more tokens than the scale has groups")
        if len(self.scale_weights) != len(self.scales):
            raise ValueError(
                f"scale_weights has {len(self.scale_weights)} entries for {len(self.scales)} scales; "
                f"give one weight per scale"
            )


POINTLORA_DEFAULTS = config_defaults(PointLoRAConfig)


def _prompt_mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    mlp = nn.Sequential(Linear(d_in, hidden), nn.GELU(), Linear(hidden, d_out))
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mlp


class MaskPredictor(nn.Module):
    """Token score ``sigmoid(fc2(relu(fc1 x)))`` in (0, 1), shape (B, L)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, dim // 2)
        self.fc2 = Linear(dim // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))).squeeze(-1))


class PointLoRAModules(nn.Module):
    """The new modules of PointLoRA (registered as ``peft``)."""

    def __init__(self, dim: int, hidden: int, targets: Iterable[str]) -> None:
        super().__init__()
        out = {"qkv": 3 * dim, "proj": dim}
        self.prompt_tokens = _prompt_mlp(dim, hidden, dim)
        self.prompt_selected = _prompt_mlp(dim, hidden, dim)
        self.prompt_linear = nn.ModuleDict({t: _prompt_mlp(dim, hidden, out[t]) for t in targets})
        self.mask_predictor = MaskPredictor(dim)


def mask_entropy(p: torch.Tensor) -> torch.Tensor:
    """The reference's mask term ``mean(p log(p + 1e-6) + (1 - p) log(1 - p + 1e-6))`` (<= 0)."""
    return torch.mean(p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6))


class _StashPoints:
    """Forward pre-hook of ``group_divider``: remembers the cloud being embedded."""

    def __init__(self) -> None:
        self.pts: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.pts = args[0]


class _AppendSelected:
    """Forward pre-hook of the block stack: append the selected multi-scale tokens to ``(x, pos)``."""

    def __init__(
        self,
        method: PointLoRA,
        stash: _StashPoints,
        mods: PointLoRAModules,
        groupers: list[Group],
        kept: list[int],
        weights: list[float],
        loss_weight: float,
        before_patches: bool = False,
    ) -> None:
        self.method, self.stash, self.mods = method, stash, mods
        self.groupers, self.kept, self.weights, self.loss_weight = groupers, kept, weights, loss_weight
        self.before = before_patches

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, pos = args[0], args[1]
        model = self.method.model
        pts, self.stash.pts = self.stash.pts, None
        if pts is None:
            raise RuntimeError(
                "pointlora: the block stack ran without the backbone's grouping; call the model "
                "(or embed) on the point cloud, not the blocks alone"
            )
        toks, poss, loss = [x], [pos], x.new_zeros(())
        for grouper, k, w in zip(self.groupers, self.kept, self.weights):
            neighborhood, center = grouper(pts)
            t = model.encoder(neighborhood)
            if model.reduce_dim is not None:
                t = model.reduce_dim(t)
            pe = model.pos_embed(center)
            p = self.mods.mask_predictor(t)
            loss = loss + w * mask_entropy(p)
            idx = torch.topk(p, k, dim=1).indices  # (B, k), highest scores first
            sel = idx.unsqueeze(-1).expand(-1, -1, t.shape[-1])
            toks.append(torch.gather(t, 1, sel))
            poss.append(torch.gather(pe, 1, sel))
        self.method.record_forward_loss("mask", self.loss_weight * loss, model)
        if self.before:  # part seg: [selected..., G patches] (the patches stay the last G tokens)
            toks, poss = toks[1:] + toks[:1], poss[1:] + poss[:1]
        return (torch.cat(toks, dim=1), torch.cat(poss, dim=1)) + tuple(args[2:])


class _TokenPrompts:
    """Forward pre-hook of a Block (input = tokens + pos): ``x[1:1+span] += prompt_tokens(.)``, then
    the last ``n_sel`` tokens ``+= prompt_selected(.)`` (sequentially, as the reference). Part seg
    (``before_patches``, sequence ``[selected, G patches]``): the first ``n_sel`` tokens get
    ``prompt_selected`` and the first ``span`` patch tokens get ``prompt_tokens``."""

    def __init__(self, mods: PointLoRAModules, span: int, n_sel: int, before_patches: bool = False) -> None:
        self.mods, self.span, self.n_sel, self.before = mods, span, n_sel, before_patches

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        L = x.shape[1]
        if self.before:
            s = self.n_sel
            end = min(s + self.span, L)
            sel, mid = x[:, :s], x[:, s:end]
            parts = [sel + self.mods.prompt_selected(sel)] if s else []
            x = torch.cat(parts + [mid + self.mods.prompt_tokens(mid), x[:, end:]], dim=1)
            return (x,) + tuple(args[1:])
        end = min(1 + self.span, L)
        mid = x[:, 1:end]
        x = torch.cat([x[:, :1], mid + self.mods.prompt_tokens(mid), x[:, end:]], dim=1)
        if self.n_sel:
            tail = x[:, L - self.n_sel :]
            x = torch.cat([x[:, : L - self.n_sel], tail + self.mods.prompt_selected(tail)], dim=1)
        return (x,) + tuple(args[1:])


class _LoRAPromptLayer(LoRALayer):
    """LoRA plus the prompt branch on a target linear: forward hook ``y + scale * x A^T B^T + prompt(x)``
    (not mergeable: the prompt is non-linear)."""

    def __init__(
        self, lin: nn.Linear, A: nn.Parameter, B: nn.Parameter, scale: float, p: float = 0.0, *, prompt: nn.Module
    ) -> None:
        super().__init__(lin, A, B, scale, p)
        self.prompt = prompt

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        A, B = self.factors(module, x)
        return out + self.scale * ((x @ A.T) @ B.T) + self.prompt(x)


@register_method
class PointLoRA(PeftMethod):
    """PointLoRA (see module docstring)."""

    name = "pointlora"
    config_class = PointLoRAConfig
    starts_at_base = False

    def _setup(self) -> None:
        cfg = self.cfg
        if not hasattr(self.model, "group_divider") or not hasattr(self.model, "pos_embed"):
            raise ValueError("pointlora needs a PointTransformer (group_divider, encoder, pos_embed)")
        self.targets = list(cfg.targets)
        self.layers = self.resolve_layers()
        scales = cfg.scales
        d, r = self.dim, cfg.rank
        ref = self.reference_parameter()
        self.mods = PointLoRAModules(d, cfg.prompt_hidden, self.targets).to(device=ref.device, dtype=ref.dtype)
        self.groupers = [Group(s[0], s[1]) for s in scales]
        self.kept = [s[2] for s in scales]
        self.scale = cfg.alpha / r
        #: (target linear name, its LoRA + prompt layer, target)
        self.sites: list[tuple[str, _LoRAPromptLayer, str]] = []
        for i in self.layers:
            for t in self.targets:
                name = self.block_linear_name(i, t)
                layer = _LoRAPromptLayer.on(self.block_linear(i, t), r, self.scale, prompt=self.mods.prompt_linear[t])
                self.sites.append((name, layer, t))
                self.peft_params[f"{name}.lora_A"] = layer.A
                self.peft_params[f"{name}.lora_B"] = layer.B
        self.peft_params.update({f"peft.{k}": p for k, p in self.mods.named_parameters()})
        self.peft_module = self.mods

    def _base_trainable(self) -> Iterable[str]:
        prefixes = []
        if self.cfg.train_first_conv:
            prefixes.append("encoder.first_conv.")
        if self.cfg.train_pos_embed:
            prefixes.append("pos_embed.")
        return [nm for nm, _ in self.model.named_parameters() if nm.startswith(tuple(prefixes))] if prefixes else []

    def _attach(self) -> None:
        for _, layer, _ in self.sites:
            layer.lin.register_parameter("lora_A", layer.A)
            layer.lin.register_parameter("lora_B", layer.B)
            self._hook_pre(layer.lin, layer.cast_input)  # the linear, LoRA and the prompt branch share one cast
            self._hook_post(layer.lin, layer)
        stash = _StashPoints()
        self._hook_pre(self.model.group_divider, stash)
        seg = self.is_partseg
        self._hook_pre(
            self.model.blocks,
            _AppendSelected(
                self,
                stash,
                self.mods,
                self.groupers,
                self.kept,
                self.cfg.scale_weights,
                self.cfg.mask_loss_weight,
                before_patches=seg,
            ),
        )
        n_sel = sum(self.kept)
        for blk in self.blocks:
            self._hook_pre(blk, _TokenPrompts(self.mods, self.cfg.prompt_span, n_sel, before_patches=seg))

    def _detach(self) -> None:
        super()._detach()
        for _, layer, _ in self.sites:
            for k in ("lora_A", "lora_B"):
                if k in layer.lin._parameters:
                    del layer.lin._parameters[k]

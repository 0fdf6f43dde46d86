"""Part segmentation model of Point-MAE (segmentation/models/pt.py), sizes configurable.

Data flow (reference §5): Group -> mini-PointNet tokens -> positional MLP -> transformer whose
blocks ``fetch_idx`` (3, 7, 11 for depth 12) are each passed through the shared final ``norm`` and
concatenated (3D channels per group) -> global max and mean over groups + a one-hot category
branch (``label_conv``) -> feature propagation of the group features to all N points (3 nearest
centres, weights 1/(d^2 + eps) on squared distances, normalised; the reference's choice, not
pointnet2's 1/(d + eps)) -> MLP (1536, 1024) -> conv head to ``num_parts`` -> log_softmax.

Like the reference there is NO cls token and no cls_pos. Module names mirror the reference
(``encoder``, ``pos_embed``, ``blocks.blocks.i``, ``norm``, ``label_conv``, ``propagation_0.mlp_convs``
/ ``mlp_bns``, ``convs1..3``, ``bns1..2``) so a Point-MAE checkpoint loads with the same loader.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from clora3d import ops
from clora3d.models.encoder import batchnorm_rows, pointwise
from clora3d.models.registry import PresetMixin, register_model
from clora3d.models.stem import PointStem
from clora3d.models.transformer import TransformerEncoder
from clora3d.models.utils import HeadSplitMixin, init_args


def default_fetch_idx(depth: int, n: int = 3) -> tuple[int, ...]:
    """Evenly spaced block indices ending at the last block: (3, 7, 11) for depth 12, (0, 2, 3) for 4."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    idx = sorted({max(0, round((i + 1) * depth / n) - 1) for i in range(n)})
    return tuple(idx)


class PointNetFeaturePropagation(nn.Module):
    """Interpolate coarse features to dense points (3-NN inverse squared distance) then a pointwise MLP.

    ``mlp_convs.i`` are 1x1 Conv1d and ``mlp_bns.i`` BatchNorm1d (reference names); they are applied
    channel-last as matmuls.
    """

    def __init__(self, in_channel: int, mlp: Sequence[int], eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv1d(last, int(out), 1))
            self.mlp_bns.append(nn.BatchNorm1d(int(out)))
            last = int(out)

    def forward(
        self, xyz1: torch.Tensor, xyz2: torch.Tensor, points1: torch.Tensor | None, points2: torch.Tensor
    ) -> torch.Tensor:
        """``xyz1 (B,N,3)`` dense, ``xyz2 (B,S,3)`` coarse, ``points1 (B,N,C1)`` or None,
        ``points2 (B,S,C2)`` -> ``(B, N, mlp[-1])`` (all channel-last)."""
        sqdist, idx = ops.three_nn(xyz1, xyz2)
        weight = ops.interpolation_weights(sqdist, eps=self.eps)
        feats = ops.three_interpolate(points2, idx, weight)  # (B, N, C2)
        if points1 is not None:
            feats = torch.cat([points1, feats], dim=-1)
        B, N, C = feats.shape
        feats = feats.reshape(B * N, C)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            feats = batchnorm_rows(pointwise(feats, conv), bn, relu=True)
        return feats.reshape(B, N, -1)


class SegTokenPool(nn.Module):
    """Per-group and global features from the normed outputs of the ``fetch_idx`` blocks.

    The patch features of a layer are its LAST ``num_group`` tokens: a PEFT method that adds tokens to
    the part-seg sequence (prompts, selected tokens) puts them before the patch tokens, so they never
    reach the per-point features. The default global feature is the max and the mean over the groups of
    the concatenated patch features (the reference). Holds no parameters; a method may swap the model's
    ``pool`` for its own (IDPT builds the global feature from its prompts) while it is attached.
    """

    def forward(self, layers: Sequence[torch.Tensor], num_group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layers``: normed ``(B, L_i, D)`` with ``L_i >= num_group`` -> ``(feat (B,G,len*D), glob (B,2*len*D))``."""
        feat = torch.cat([t[:, t.shape[1] - num_group :] for t in layers], dim=-1)
        return feat, torch.cat([feat.max(dim=1).values, feat.mean(dim=1)], dim=-1)


@register_model(
    "PartSegModel",
    presets={
        # Reference: 2048 points, G=128 x 32, ViT-S, blocks 3/7/11, propagation MLP (1536, 1024).
        "vit_s": dict(
            trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, encoder_dims=384, num_group=128, group_size=32
        ),
        # CPU-sized: same layout with small widths.
        "tiny": dict(
            trans_dim=96,
            depth=4,
            num_heads=3,
            mlp_ratio=4.0,
            encoder_dims=96,
            encoder_widths=(32, 64, 128),
            num_group=32,
            group_size=16,
            label_dim=16,
            propagation_mlp=(192, 128),
            head_widths=(128, 64),
        ),
    },
)
class PartSegModel(PointStem, HeadSplitMixin, PresetMixin, nn.Module):
    """Point-MAE part segmentation: ``forward(pts (B,N,3), cls_onehot (B,num_classes)) -> (B,N,num_parts)``.

    The output is log-probabilities (log_softmax over parts), for ``nll_loss``.
    """

    # Module-name prefixes of the pre-trained backbone (must be present in a pre-trained checkpoint).
    BACKBONE_PREFIXES: tuple[str, ...] = ("encoder.", "reduce_dim.", "pos_embed.", "blocks.", "norm.")
    # Module-name prefixes of the task head (newly initialised; may be skipped on a shape mismatch).
    HEAD_PREFIXES: tuple[str, ...] = (
        "label_conv.",
        "propagation_0.",
        "convs1.",
        "convs2.",
        "convs3.",
        "bns1.",
        "bns2.",
    )

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        num_group: int = 128,
        group_size: int = 32,
        encoder_dims: int = 384,
        encoder_widths: Sequence[int] = (128, 256, 512),
        qkv_bias: bool = False,
        num_classes: int = 16,
        num_parts: int = 50,
        fetch_idx: Sequence[int] | None = None,
        label_dim: int = 64,
        propagation_mlp: Sequence[int] = (1536, 1024),
        head_widths: Sequence[int] = (512, 256),
        dropout: float = 0.5,
        interp_eps: float = 1e-8,
    ) -> None:
        arguments = init_args(locals())
        super().__init__()
        fetch = tuple(int(i) for i in fetch_idx) if fetch_idx is not None else default_fetch_idx(depth)
        if not fetch or any(i < 0 or i >= depth for i in fetch) or len(set(fetch)) != len(fetch):
            raise ValueError(f"PartSegModel: fetch_idx={fetch_idx} must be distinct block indices in [0, {depth})")
        if len(head_widths) != 2:
            raise ValueError(f"PartSegModel: head_widths must have 2 entries (convs1, convs2), got {head_widths}")
        self.config = {**arguments, "fetch_idx": fetch}
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_classes = num_classes
        self.num_parts = num_parts
        self.fetch_idx = fetch

        self.init_stem(
            trans_dim=trans_dim,
            encoder_dims=encoder_dims,
            encoder_widths=encoder_widths,
            num_group=num_group,
            group_size=group_size,
        )
        self.blocks = TransformerEncoder(
            embed_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        self.norm = nn.LayerNorm(trans_dim)
        self.pool = SegTokenPool()  # fetched layers -> (per-group, global) features; no parameters

        feat_dim = trans_dim * len(fetch)
        self.label_conv = nn.Sequential(
            nn.Conv1d(num_classes, label_dim, 1, bias=False), nn.BatchNorm1d(label_dim), nn.LeakyReLU(0.2)
        )
        self.propagation_0 = PointNetFeaturePropagation(in_channel=feat_dim + 3, mlp=propagation_mlp, eps=interp_eps)
        global_dim = 2 * feat_dim + label_dim
        self.global_dim = global_dim
        h1, h2 = (int(w) for w in head_widths)
        self.convs1 = nn.Conv1d(int(propagation_mlp[-1]) + global_dim, h1, 1)
        self.dp1 = nn.Dropout(dropout)
        self.convs2 = nn.Conv1d(h1, h2, 1)
        self.convs3 = nn.Conv1d(h2, num_parts, 1)
        self.bns1 = nn.BatchNorm1d(h1)
        self.bns2 = nn.BatchNorm1d(h2)

    def forward_features(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(feat (B,G,len*D), glob (B,2*len*D), center (B,G,3))``: ``self.pool`` of the normed outputs of
        the ``fetch_idx`` blocks (by default their last G tokens concatenated, and max + mean over groups)."""
        x, center = self.group_tokens(pts)
        pos = self.pos_embed(center)
        layers = self.blocks(x, pos, return_layers=self.fetch_idx)
        feat, glob = self.pool([self.norm(t) for t in layers], center.shape[1])
        return feat, glob, center

    def forward_token_features(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed features of the ``fetch_idx`` blocks, concatenated: ``(feat (B,G,len*D), center (B,G,3))``."""
        feat, _, center = self.forward_features(pts)
        return feat, center

    def forward(self, pts: torch.Tensor, cls_onehot: torch.Tensor) -> torch.Tensor:
        if pts.ndim != 3 or pts.shape[-1] != 3:
            raise ValueError(f"PartSegModel: expected points of shape (B, N, 3), got {tuple(pts.shape)}")
        B, N, _ = pts.shape
        if cls_onehot.shape != (B, self.num_classes):
            raise ValueError(
                f"PartSegModel: expected a one-hot category of shape ({B}, {self.num_classes}), "
                f"got {tuple(cls_onehot.shape)}"
            )
        feat, glob, center = self.forward_features(pts)  # (B, G, F), (B, 2F)
        label = self.label_conv(cls_onehot.to(feat.dtype).unsqueeze(-1)).squeeze(-1)  # (B, label_dim)
        glob = torch.cat([glob, label], dim=-1)  # (B, global_dim)
        dense = self.propagation_0(pts, center, pts, feat)  # (B, N, mlp[-1])
        # convs1 on concat(dense, glob repeated over N) == W_d dense + (W_g glob) broadcast: the
        # global part is computed once per shape instead of N times (same function).
        w = self.convs1.weight.squeeze(-1)
        d = dense.shape[-1]
        h = F.linear(dense.reshape(B * N, d), w[:, :d]).view(B, N, -1) + F.linear(
            glob, w[:, d:], self.convs1.bias
        ).unsqueeze(1)
        h = self.dp1(batchnorm_rows(h.view(B * N, -1), self.bns1, relu=True))
        h = batchnorm_rows(pointwise(h, self.convs2), self.bns2, relu=True)
        logits = pointwise(h, self.convs3).view(B, N, self.num_parts)
        return F.log_softmax(logits, dim=-1)

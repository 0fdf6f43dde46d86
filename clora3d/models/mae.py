"""Point-MAE masked-autoencoder pre-training model (reference §1.2), sizes configurable.

``PointMAE(pts) -> loss``: group the cloud, mask a random ``mask_ratio`` of the groups per sample,
encode ONLY the visible tokens with ``MAE_encoder`` (no cls token), append one shared
``mask_token`` per masked group, add ``decoder_pos_embed`` of every centre, run the ``MAE_decoder``
blocks, project the masked tokens with ``increase_dim`` to ``group_size`` x 3 relative coordinates
and score them with Chamfer-L2 (``clora3d.ops.chamfer_l2_loss``) against the true masked groups.

State-dict keys equal the official pre-training checkpoint's (``MAE_encoder.encoder.*``,
``MAE_encoder.pos_embed.*``, ``MAE_encoder.blocks.blocks.i.*``, ``MAE_encoder.norm.*``, ``mask_token``,
``decoder_pos_embed.*``, ``MAE_decoder.blocks.i.*``, ``MAE_decoder.norm.*``, ``increase_dim.0.*``), so
a released ``pretrain.pth`` loads to continue pre-training, and the encoder loads into the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clora3d import ops
from clora3d.models.backbone import trunc_normal_init
from clora3d.models.registry import PresetMixin, register_model
from clora3d.models.stem import Group, PointStem, position_mlp
from clora3d.models.transformer import Block, TransformerEncoder, drop_path_schedule
from clora3d.models.utils import HeadSplitMixin, init_args


def random_group_mask(
    batch: int,
    num_group: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean ``(B, G)`` mask with exactly ``int(mask_ratio * G)`` True (masked) entries per row.

    Each row is an independent uniformly random subset (Point-MAE's ``mask_type: rand``).
    """
    num_mask = int(mask_ratio * num_group)
    scores = torch.rand(batch, num_group, generator=generator, device=generator.device if generator else device)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, num_group, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :num_mask], True)
    return mask.to(device)


def masked_rows(x: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """``x[mask].reshape(B, count, ...)`` with a static shape: the rows of ``x (B, G, ...)`` where
    ``mask (B, G)`` is True, in ascending index order, when every row of ``mask`` holds exactly
    ``count`` True entries. A plain gather (bit-identical to boolean indexing) whose output shape
    does not depend on the data, so torch.compile traces it without a graph break."""
    B = mask.shape[0]
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :count]  # True entries first
    index = order.reshape(B, count, *([1] * (x.dim() - 2))).expand(B, count, *x.shape[2:])
    return torch.gather(x, 1, index)


class MaskTransformer(PointStem, nn.Module):
    """The MAE encoder: patch ``encoder``, ``pos_embed``, ``blocks`` (TransformerEncoder), ``norm``.

    No cls token. Encodes only the visible groups: ``forward(neighborhood, center, mask)`` returns
    ``(B, G_visible, D)``.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        encoder_dims: int = 384,
        encoder_widths: Sequence[int] = (128, 256, 512),
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if encoder_dims != trans_dim:
            raise ValueError(
                f"MaskTransformer: Point-MAE needs encoder_dims == trans_dim, got {encoder_dims} != {trans_dim}"
            )
        self.trans_dim = trans_dim
        self.init_stem(trans_dim=trans_dim, encoder_dims=encoder_dims, encoder_widths=encoder_widths)
        self.blocks = TransformerEncoder(
            embed_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        self.norm = nn.LayerNorm(trans_dim)

    def forward(
        self, neighborhood: torch.Tensor, center: torch.Tensor, mask: torch.Tensor, n_visible: int | None = None
    ) -> torch.Tensor:
        """``n_visible``: the number of False entries per row of ``mask`` when the caller knows it
        (PointMAE does: it comes from the mask ratio); otherwise it is read from ``mask`` and checked
        (a host sync, and a graph break under torch.compile)."""
        B, G = mask.shape
        tokens = self.patch_tokens(neighborhood)  # (B, G, D)
        vis = ~mask
        if n_visible is None:
            n_visible = int(vis[0].sum())
            if not bool((vis.sum(dim=1) == n_visible).all()):
                raise ValueError("MaskTransformer: every sample must have the same number of visible groups")
        x_vis = masked_rows(tokens, vis, n_visible)
        pos = self.pos_embed(masked_rows(center, vis, n_visible))
        return self.norm(self.blocks(x_vis, pos))


class TransformerDecoder(nn.Module):
    """``blocks`` (a ModuleList of canonical Blocks, keys ``blocks.i.*``) + ``norm``; returns the last
    ``return_token_num`` tokens after the norm. The positional embedding is re-added before every block."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        dpr = drop_path_schedule(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, return_token_num: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x[:, -return_token_num:])


@register_model(
    "PointMAE",
    presets={
        # Point-MAE cfgs/pretrain.yaml: ViT-S encoder, 4-block decoder, 64 groups x 32, mask 0.6.
        "vit_s": dict(
            trans_dim=384,
            depth=12,
            num_heads=6,
            mlp_ratio=4.0,
            encoder_dims=384,
            decoder_depth=4,
            decoder_num_heads=6,
            num_group=64,
            group_size=32,
        ),
        # Same encoder sizes as the backbone's "tiny" preset (so it initialises it), 2-block decoder.
        "tiny": dict(
            trans_dim=96,
            depth=4,
            num_heads=3,
            mlp_ratio=4.0,
            encoder_dims=96,
            encoder_widths=(32, 64, 128),
            decoder_depth=2,
            decoder_num_heads=3,
            num_group=32,
            group_size=16,
        ),
    },
)
class PointMAE(HeadSplitMixin, PresetMixin, nn.Module):
    """Point-MAE pre-training model; ``forward(pts (B,N,3)) -> scalar Chamfer-L2 loss`` on masked groups."""

    BACKBONE_PREFIXES: tuple[str, ...] = ("MAE_encoder.",)
    HEAD_PREFIXES: tuple[str, ...] = ()
    # The backbone's keys live under this prefix; checkpoints in the fine-tune namespace get it added.
    CHECKPOINT_ROOT = "MAE_encoder."

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        num_group: int = 64,
        group_size: int = 32,
        encoder_dims: int = 384,
        encoder_widths: Sequence[int] = (128, 256, 512),
        qkv_bias: bool = False,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        mask_ratio: float = 0.6,
    ) -> None:
        arguments = init_args(locals())
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"PointMAE: mask_ratio must be in (0, 1), got {mask_ratio}")
        if int(mask_ratio * num_group) < 1 or int(mask_ratio * num_group) >= num_group:
            raise ValueError(
                f"PointMAE: mask_ratio={mask_ratio} with num_group={num_group} masks "
                f"{int(mask_ratio * num_group)} groups; need at least one masked and one visible"
            )
        self.config = arguments
        self.trans_dim = trans_dim
        self.num_group = num_group
        self.group_size = group_size
        self.mask_ratio = float(mask_ratio)

        self.group_divider = Group(num_group=num_group, group_size=group_size)
        self.MAE_encoder = MaskTransformer(
            trans_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            encoder_dims=encoder_dims,
            encoder_widths=encoder_widths,
            qkv_bias=qkv_bias,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.decoder_pos_embed = position_mlp(trans_dim)
        self.MAE_decoder = TransformerDecoder(
            embed_dim=trans_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        self.increase_dim = nn.Sequential(nn.Conv1d(trans_dim, 3 * group_size, 1))
        # Reference init: trunc-normal(.02) Linear/Conv1d weights, zero biases, LayerNorm 1/0.
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _reconstruct(
        self, pts: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pred (B,M,k,3), gt (B,M,k,3), neighborhood (B,G,k,3), center (B,G,3), mask (B,G))``;
        ``pred``/``gt``/``neighborhood`` are relative to their centres."""
        if pts.ndim != 3 or pts.shape[-1] != 3:
            raise ValueError(f"PointMAE: expected points of shape (B, N, 3), got {tuple(pts.shape)}")
        neighborhood, center = self.group_divider(pts)
        B, G, k, _ = neighborhood.shape
        mask = random_group_mask(B, G, self.mask_ratio, device=pts.device, generator=generator)
        M = int(self.mask_ratio * G)  # masked per sample (exact)
        V = G - M
        x_vis = self.MAE_encoder(neighborhood, center, mask, V)  # (B, V, D)
        pos_vis = self.decoder_pos_embed(masked_rows(center, ~mask, V))
        pos_mask = self.decoder_pos_embed(masked_rows(center, mask, M))
        x_full = torch.cat([x_vis, self.mask_token.expand(B, M, -1)], dim=1)
        pos_full = torch.cat([pos_vis, pos_mask], dim=1)
        x_rec = self.MAE_decoder(x_full, pos_full, M)  # (B, M, D)
        pred = self.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(B, M, k, 3)
        gt = masked_rows(neighborhood, mask, M)
        return pred, gt, neighborhood, center, mask

    def forward(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pred, gt, _, _, _ = self._reconstruct(pts, generator)
        B, M, k, _ = pred.shape
        return ops.chamfer_l2_loss(pred.reshape(B * M, k, 3), gt.reshape(B * M, k, 3))

    @torch.no_grad()
    def forward_reconstruction(
        self, pts: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """For visualisation (call ``model.eval()`` first), in ABSOLUTE coordinates: ``visible (B, V*k, 3)`` input patches,
        ``reconstructed (B, M*k, 3)`` predicted masked patches, ``masked_gt (B, M*k, 3)`` their
        ground truth, ``full (B, (V+M)*k, 3)`` = visible + reconstructed, and ``mask (B, G)``."""
        pred, gt, neighborhood, center, mask = self._reconstruct(pts, generator)
        B, M, k, _ = pred.shape
        V = center.shape[1] - M
        vis = (neighborhood[~mask].reshape(B, V, k, 3) + center[~mask].reshape(B, V, 1, 3)).reshape(B, V * k, 3)
        c_mask = center[mask].reshape(B, M, 1, 3)
        rec = (pred + c_mask).reshape(B, M * k, 3)
        gt_abs = (gt + c_mask).reshape(B, M * k, 3)
        return {
            "visible": vis,
            "reconstructed": rec,
            "masked_gt": gt_abs,
            "full": torch.cat([vis, rec], dim=1),
            "mask": mask,
        }

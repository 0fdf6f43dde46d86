"""The Point-MAE / Point-BERT compatible point cloud transformer with its classification head.

Module names mirror Point-MAE's fine-tuning model (``encoder.first_conv.0``, ``pos_embed.0``,
``blocks.blocks.3.attn.qkv``, ``norm``, ``cls_token``, ``cls_pos``, ``cls_head_finetune``) so an
official checkpoint loads after stripping its prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from clora3d.models.registry import PresetMixin, register_model
from clora3d.models.stem import PointStem, position_mlp
from clora3d.models.transformer import Linear, TransformerEncoder
from clora3d.models.utils import HeadSplitMixin, init_args


def trunc_normal_init(module: nn.Module) -> None:
    """Point-MAE's ``_init_weights``: trunc-normal(.02) for Linear/Conv1d, zero bias, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ClsMaxPool(nn.Module):
    """Point-MAE's head input from the final tokens ``(B, L, D)``: the cls token (index 0) concatenated
    with the max over all other tokens, ``(B, 2D)``. Holds no parameters; a PEFT method may swap the
    model's ``pool`` for its own pooling (and the head for a wider one) while it is attached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)


@register_model(
    "PointTransformer",
    presets={
        # The references' default (Point-MAE / Point-BERT ViT-S): 22.1 M parameters with a 40-class head.
        "vit_s": dict(trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, encoder_dims=384),
        # Small enough to pre-train and fine-tune on a 2-core CPU in minutes.
        "tiny": dict(
            trans_dim=96,
            depth=4,
            num_heads=3,
            mlp_ratio=4.0,
            encoder_dims=96,
            encoder_widths=(32, 64, 128),
            num_group=32,
            group_size=16,
        ),
        # Point-BERT fine-tune model (reference §1.3): 256-d mini-PointNet tokens + reduce_dim Linear(256, 384),
        # lighter head 768 -> 256 -> C without BatchNorm. Loads Point-BERT's ``transformer_q.*`` weights.
        "point_bert": dict(trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, encoder_dims=256, head="bert"),
    },
)
class PointTransformer(PointStem, HeadSplitMixin, PresetMixin, nn.Module):
    """Grouping + mini-PointNet tokens + cls token + pre-norm transformer + classification head.

    ``head="mae"``: Point-MAE head (768 -> 256 -> 256 -> C with BatchNorm, ReLU, dropout 0.5).
    ``head="bert"``: Point-BERT head (768 -> 256 -> C, ReLU, dropout 0.5, no BatchNorm).
    ``encoder_dims != trans_dim`` adds the Point-BERT ``reduce_dim`` projection.
    """

    # Module-name prefixes of the pre-trained backbone (must be present in a pre-trained checkpoint).
    BACKBONE_PREFIXES: tuple[str, ...] = ("encoder.", "reduce_dim.", "pos_embed.", "blocks.", "norm.")
    # Module-name prefixes of the task head (newly initialised; may be skipped on a shape mismatch).
    HEAD_PREFIXES: tuple[str, ...] = ("cls_head_finetune.",)

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
        cls_dim: int = 40,
        head: str = "mae",
        qkv_bias: bool = False,
        encoder_widths: tuple[int, int, int] = (128, 256, 512),
    ) -> None:
        arguments = init_args(locals())
        super().__init__()
        if head not in ("mae", "bert"):
            raise ValueError(f"PointTransformer: head must be 'mae' or 'bert', got {head!r}")
        self.config = arguments
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_group = num_group
        self.group_size = group_size
        self.cls_dim = cls_dim

        self.init_stem(
            trans_dim=trans_dim,
            encoder_dims=encoder_dims,
            encoder_widths=encoder_widths,
            num_group=num_group,
            group_size=group_size,
            position=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = position_mlp(trans_dim)  # after cls_pos: the random draws of earlier versions
        self.blocks = TransformerEncoder(
            embed_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        self.norm = nn.LayerNorm(trans_dim)
        self.pool = ClsMaxPool()  # tokens -> head input (no parameters, no state_dict keys)
        if head == "mae":
            self.cls_head_finetune = nn.Sequential(
                Linear(trans_dim * 2, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                Linear(256, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                Linear(256, cls_dim),
            )
        else:
            self.cls_head_finetune = nn.Sequential(
                Linear(trans_dim * 2, 256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                Linear(256, cls_dim),
            )
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    # -- construction helpers -------------------------------------------------------------------
    def init_weights(self) -> None:
        """Apply the reference's trunc-normal initialisation (used when training from scratch)."""
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    # -- forward ----------------------------------------------------------------------------------
    def embed(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and positional embeddings, cls first: ``(x (B,1+G,D), pos (B,1+G,D))``."""
        if pts.ndim != 3 or pts.shape[-1] != 3:
            raise ValueError(f"PointTransformer: expected points of shape (B, N, 3), got {tuple(pts.shape)}")
        tokens, center = self.group_tokens(pts)
        B = tokens.shape[0]
        cls_tokens = self.cls_token.expand(B, -1, -1)
        cls_pos = self.cls_pos.expand(B, -1, -1)
        pos = self.pos_embed(center)
        x = torch.cat((cls_tokens, tokens), dim=1)
        pos = torch.cat((cls_pos, pos), dim=1)
        return x, pos

    def forward_tokens(self, pts: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm, ``(B, 1+G, D)`` with the cls token first."""
        x, pos = self.embed(pts)
        return self.norm(self.blocks(x, pos))

    def forward_features(self, pts: torch.Tensor) -> torch.Tensor:
        """The head input, ``self.pool`` of the final tokens: by default the cls token concatenated with
        the max-pooled patch tokens, ``(B, 2D)``."""
        return self.pool(self.forward_tokens(pts))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.cls_head_finetune(self.forward_features(pts))

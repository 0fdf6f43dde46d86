"""The point stem shared by every model: grouping (FPS centres + kNN patches, :class:`Group`), the
mini-PointNet patch encoder (:class:`Encoder`), the optional ``reduce_dim`` projection of Point-BERT's
256-d tokens, and the positional MLP of the patch centres (:func:`position_mlp`).

:class:`PointStem` declares them ON the model (``group_divider``, ``encoder``, ``reduce_dim``,
``pos_embed``), so the state_dict keys stay those of Point-MAE's checkpoints (``encoder.*``,
``pos_embed.*``; ``MAE_encoder.encoder.*`` inside the MAE) and no new key level appears.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clora3d.models.encoder import Encoder
from clora3d.models.grouping import Group
from clora3d.models.transformer import Linear

__all__ = ["PointStem", "position_mlp", "Group", "Encoder"]


def position_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Point-MAE's positional embedding of patch centres: ``Linear(3, 128) -> GELU -> Linear(128, dim)``
    (state_dict keys ``0.*`` and ``2.*``); also the MAE decoder's ``decoder_pos_embed``."""
    return nn.Sequential(Linear(3, hidden), nn.GELU(), Linear(hidden, dim))


class PointStem:
    """Mixin of ``nn.Module`` models: :meth:`init_stem` creates the stem's modules on the model and
    :meth:`patch_tokens` / :meth:`group_tokens` run them.

    Call order matters for reproducible initialisation (each module draws from torch's RNG when
    built): ``init_stem`` builds ``group_divider``, ``encoder``, ``reduce_dim`` and then, unless
    ``position=False`` (the caller builds ``pos_embed = position_mlp(...)`` itself, later), ``pos_embed``.
    """

    def init_stem(
        self,
        *,
        trans_dim: int,
        encoder_dims: int,
        encoder_widths: Sequence[int],
        num_group: int | None = None,
        group_size: int | None = None,
        position: bool = True,
    ) -> None:
        """``num_group`` None: no ``group_divider`` (the caller groups, as PointMAE does for its
        encoder). ``reduce_dim`` is a Linear when ``encoder_dims != trans_dim``, else None."""
        if num_group is not None:
            self.group_divider = Group(num_group=num_group, group_size=group_size)
        self.encoder = Encoder(encoder_channel=encoder_dims, widths=tuple(encoder_widths))
        self.reduce_dim = Linear(encoder_dims, trans_dim) if encoder_dims != trans_dim else None
        if position:
            self.pos_embed = position_mlp(trans_dim)

    def patch_tokens(self, neighborhood: torch.Tensor) -> torch.Tensor:
        """One token per patch, ``(B, G, k, 3) -> (B, G, trans_dim)`` (encoder, then ``reduce_dim``)."""
        tokens = self.encoder(neighborhood)
        return tokens if self.reduce_dim is None else self.reduce_dim(tokens)

    def group_tokens(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group ``pts (B, N, 3)`` and encode the patches: ``(tokens (B, G, trans_dim), center (B, G, 3))``."""
        neighborhood, center = self.group_divider(pts)
        return self.patch_tokens(neighborhood), center

"""Grouping of a point cloud into local patches: FPS centres + kNN neighbourhoods."""

from __future__ import annotations

import torch
from torch import nn

from clora3d import ops


class Group(nn.Module):
    """Split ``xyz (B, N, 3)`` into ``num_group`` patches of ``group_size`` nearest points.

    Centres come from farthest point sampling started at index 0 (so, like the reference, the
    result depends on the order of the input points); neighbourhoods are the ``group_size``
    nearest points of each centre (the centre itself first), expressed relative to the centre.
    Returns ``(neighborhood (B, G, k, 3), center (B, G, 3))``.
    """

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = int(num_group)
        self.group_size = int(group_size)

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"Group: expected points of shape (B, N, 3), got {tuple(xyz.shape)}")
        N = xyz.shape[1]
        if N < self.num_group or N < self.group_size:
            raise ValueError(
                f"Group: the cloud has N={N} points but num_group={self.num_group} and "
                f"group_size={self.group_size} need at least {max(self.num_group, self.group_size)}"
            )
        with torch.no_grad():
            center_idx = ops.furthest_point_sample(xyz, self.num_group)
            center = ops.gather_points(xyz, center_idx)
            _, idx = ops.knn(center, xyz, self.group_size)
        neighborhood = ops.gather_points(xyz, idx) - center.unsqueeze(2)
        return neighborhood, center

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}"

"""Seeding and the training batch pipeline (the data side of a training step).

``derive_seed`` / ``seed_everything`` / ``TrainBatchPipeline`` are also importable from
``clora3d.engine.trainer`` (their historical home).

Determinism: the trainer re-seeds the torch / numpy / Python RNGs at the start of every epoch from
(seed, epoch, rank) and draws the shared subset and augmentations from generators seeded with
(seed, epoch), so an epoch's batches depend on nothing that happened before it (exact resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from clora3d.engine.config import default_point_all
from clora3d.errors import ConfigError

__all__ = [
    "derive_seed",
    "seed_everything",
    "deterministic",
    "TrainBatchPipeline",
    "holdout",
    "worker_init",
    "collate",
    "to_device",
]


def derive_seed(*parts: Any) -> int:
    """A 62-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return int(h[:15], 16)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(enabled: bool):
    """torch.use_deterministic_algorithms (warn_only) + cudnn flags for the run; restored after."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


class TrainBatchPipeline:
    """Reference training batch pipeline on batched tensors (point_mae_family §1.4).

    ``fps_subset``: FPS (first index 0) to ``point_all`` points (capped at the points available;
    skipped when it would keep every point, where it is only a reordering), then ONE random subset
    of ``npoints`` without replacement shared by the whole batch, then the augmentations.
    ``fps``: deterministic FPS to ``npoints``. ``none``: the points as loaded (part segmentation;
    labels stay aligned because no point is dropped or reordered).
    """

    def __init__(
        self, mode: str, npoints: int, point_all: int | None, transform: Callable[..., torch.Tensor] | None
    ) -> None:
        self.mode, self.npoints = mode, int(npoints)
        self.point_all = int(point_all) if point_all is not None else default_point_all(npoints)
        self.transform = transform

    def __call__(
        self,
        points: torch.Tensor,
        *,
        subset_gen: torch.Generator | None = None,
        aug_gen: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> torch.Tensor:
        """Sample and augment one (per-rank) batch.

        Under DDP (``world_size > 1``) the rank's samples sit at positions ``rank, rank + W, ...``
        of the global batch (DistributedSampler interleaving); the augmentation is drawn for the
        whole global batch from the generator every rank shares and each rank keeps its rows, so
        every sample gets exactly the augmentation it gets in a single-process run.
        """
        from clora3d import ops

        n = points.shape[1]
        if self.mode != "none" and n < self.npoints:
            raise ConfigError(
                f"data.npoints={self.npoints} but the training clouds have only {n} "
                f"points; lower data.npoints or use denser data"
            )
        if self.mode == "fps_subset":
            pool = min(max(self.point_all, self.npoints), n)
            if pool < n:
                points = ops.gather_points(points, ops.furthest_point_sample(points.contiguous(), pool))
            idx = torch.randperm(pool, generator=subset_gen)[: self.npoints].to(points.device)
            points = points[:, idx, :]
        elif self.mode == "fps" and n > self.npoints:
            points = ops.gather_points(points, ops.furthest_point_sample(points.contiguous(), self.npoints))
        if self.transform is not None:
            if world_size > 1:
                full = points.new_zeros((points.shape[0] * world_size, *points.shape[1:]))
                full[rank::world_size] = points
                points = self.transform(full, generator=aug_gen)[rank::world_size]
            else:
                points = self.transform(points, generator=aug_gen)
        return points.contiguous()


def holdout(ds: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Deterministic (train, val) split of ``ds`` holding out ``fraction`` of it for validation."""
    n = len(ds)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ConfigError(
            f"dataset.val.from_train={fraction} holds out {n_val} of {n} train "
            f"samples; it must leave at least one sample on each side"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, "holdout"))
    perm = torch.randperm(n, generator=g).tolist()
    return Subset(ds, sorted(perm[n_val:])), Subset(ds, sorted(perm[:n_val]))


def worker_init(worker_id: int) -> None:
    """DataLoader worker: numpy / random seeded from the worker's torch seed."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def collate(samples: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the samples' tensors key by key."""
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

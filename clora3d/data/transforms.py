"""Point cloud augmentations on BATCHED tensors (B, N, C>=3), channel-last, any device.

Every transform is a callable ``t(points, generator=None) -> points`` that draws its randomness per
sample (except :class:`RandomSubset`, which by default uses one index set for the whole batch like
the reference runner) from ``generator`` when given. Only the xyz columns are transformed; extra
columns (normals) follow the rotation in :class:`RotateY` and are otherwise copied.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional, Sequence

import torch

from clora3d.errors import ConfigError

Generator = Optional[torch.Generator]


def _check(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] < 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"{name}: expected a batched tensor (B, N, C>=3), got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"{name}: expected a floating point tensor, got {points.dtype}")


def _rand(shape: tuple, points: torch.Tensor, generator: Generator) -> torch.Tensor:
    dev = generator.device if generator is not None else points.device
    return torch.rand(shape, generator=generator, device=dev, dtype=torch.float32).to(points.device, points.dtype)


def _randn(shape: tuple, points: torch.Tensor, generator: Generator) -> torch.Tensor:
    dev = generator.device if generator is not None else points.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(points.device, points.dtype)


class Normalize:
    """Per sample: subtract the centroid, divide by the largest radius (unit sphere)."""

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "Normalize")
        xyz = points[..., :3] - points[..., :3].mean(dim=1, keepdim=True)
        r = xyz.norm(dim=-1).amax(dim=1).clamp_min(torch.finfo(points.dtype).tiny)
        return torch.cat([xyz / r[:, None, None], points[..., 3:]], dim=-1)


class ScaleAndTranslate:
    """Per sample scale U(scale_low, scale_high) per axis (anisotropic, Point-MAE classification;
    ``isotropic=True``: one factor per sample, as the reference part segmentation's
    random_scale_point_cloud), then shift U(-t, t) per axis."""

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate: float = 0.2,
                 isotropic: bool = False) -> None:
        if not 0 < scale_low <= scale_high:
            raise ConfigError(f"ScaleAndTranslate: need 0 < scale_low <= scale_high, got {scale_low}, {scale_high}")
        self.scale_low, self.scale_high, self.translate = float(scale_low), float(scale_high), float(translate)
        self.isotropic = bool(isotropic)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "ScaleAndTranslate")
        B = points.shape[0]
        s = self.scale_low + (self.scale_high - self.scale_low) * _rand((B, 1, 1 if self.isotropic else 3), points,
                                                                        generator)
        t = self.translate * (2 * _rand((B, 1, 3), points, generator) - 1)
        return torch.cat([points[..., :3] * s + t, points[..., 3:]], dim=-1)


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B,3,3) matrices R, applied to row vectors as ``p @ R`` (reference 3.2)."""
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1),
                        torch.stack([-s, z, c], -1)], dim=-2)


class RotateY:
    """Per sample rotation about the Y (up) axis by an angle U(low, high) (default U(0, 2*pi))."""

    def __init__(self, angle_low: float = 0.0, angle_high: float = 2 * math.pi) -> None:
        self.angle_low, self.angle_high = float(angle_low), float(angle_high)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "RotateY")
        B = points.shape[0]
        a = self.angle_low + (self.angle_high - self.angle_low) * _rand((B,), points, generator)
        R = rotation_y(a)
        out = [points[..., :3] @ R]
        if points.shape[-1] >= 6:  # normals rotate with the points
            out.append(points[..., 3:6] @ R)
        out.append(points[..., 6:] if points.shape[-1] >= 6 else points[..., 3:])
        return torch.cat(out, dim=-1)


class Jitter:
    """Add clipped Gaussian noise N(0, std) clamped to [-clip, clip] to every coordinate."""

    def __init__(self, std: float = 0.01, clip: float = 0.05) -> None:
        if std < 0 or clip < 0:
            raise ConfigError(f"Jitter: std and clip must be >= 0, got {std}, {clip}")
        self.std, self.clip = float(std), float(clip)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "Jitter")
        noise = (self.std * _randn(points[..., :3].shape, points, generator)).clamp(-self.clip, self.clip)
        return torch.cat([points[..., :3] + noise, points[..., 3:]], dim=-1)


class RandomDropout:
    """Per sample drop ratio U(0, max_dropout_ratio); dropped points are replaced by the sample's
    first point so the shape (B, N, C) is kept (reference PointcloudRandomInputDropout)."""

    def __init__(self, max_dropout_ratio: float = 0.875) -> None:
        if not 0 <= max_dropout_ratio < 1:
            raise ConfigError(f"RandomDropout: max_dropout_ratio must be in [0, 1), got {max_dropout_ratio}")
        self.max_dropout_ratio = float(max_dropout_ratio)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "RandomDropout")
        B, N, _ = points.shape
        ratio = self.max_dropout_ratio * _rand((B, 1), points, generator)
        drop = _rand((B, N), points, generator) <= ratio
        return torch.where(drop[..., None], points[:, :1, :].expand_as(points), points)


class FPSResample:
    """Furthest point sampling to ``n`` points per sample (deterministic, first index 0)."""

    def __init__(self, n: int) -> None:
        if int(n) <= 0:
            raise ConfigError(f"FPSResample: n must be positive, got {n}")
        self.n = int(n)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "FPSResample")
        if self.n > points.shape[1]:
            raise ValueError(f"FPSResample: cannot sample {self.n} of {points.shape[1]} points")
        from clora3d.data.common import _ops_fps

        idx = _ops_fps(points[..., :3].contiguous(), self.n, 0)
        return torch.gather(points, 1, idx[..., None].expand(-1, -1, points.shape[-1]))


class RandomSubset:
    """Random ``n`` of N points without replacement; one index set for the whole batch like the
    reference runner (``per_sample=True`` draws one per sample)."""

    def __init__(self, n: int, per_sample: bool = False) -> None:
        if int(n) <= 0:
            raise ConfigError(f"RandomSubset: n must be positive, got {n}")
        self.n, self.per_sample = int(n), bool(per_sample)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check(points, "RandomSubset")
        B, N, C = points.shape
        if self.n > N:
            raise ValueError(f"RandomSubset: cannot take {self.n} of {N} points")
        if self.per_sample:
            idx = _rand((B, N), points, generator).argsort(dim=1)[:, : self.n]
        else:
            idx = _rand((1, N), points, generator).argsort(dim=1)[:, : self.n].expand(B, -1)
        return torch.gather(points, 1, idx[..., None].expand(-1, -1, C))


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, points: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        for t in self.transforms:
            points = t(points, generator)
        return points

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


TRANSFORMS: dict[str, type] = {
    c.__name__: c for c in (Normalize, ScaleAndTranslate, RotateY, Jitter, RandomDropout, FPSResample, RandomSubset)
}
# accepted keyword arguments of every transform (for config validation)
TRANSFORM_KEYS: dict[str, set[str]] = {
    name: set(inspect.signature(cls.__init__).parameters) - {"self"} for name, cls in TRANSFORMS.items()
}


def build_transforms(specs: Optional[Sequence[dict[str, Any]]]) -> Compose:
    """Build a :class:`Compose` from ``[{"NAME": "RotateY"}, {"NAME": "Jitter", "std": 0.01}, ...]``
    (validated by the transforms' typed configs, clora3d.data.config)."""
    from clora3d.data.config import validate_transforms

    return Compose([TRANSFORMS[s["NAME"]](**{k: v for k, v in s.items() if k != "NAME"})
                    for s in validate_transforms(specs, path=("transforms",))])

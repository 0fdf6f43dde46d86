"""Checked public point cloud ops: validate, then run the compiled kernel or the reference.

All coordinates and features are channel-last. See :mod:`clora3d.ops.reference` for the exact
semantics (the specification) and :mod:`clora3d.ops._backend` for backend selection.
"""

from __future__ import annotations

import torch

from clora3d.ops import _backend as _be
from clora3d.ops import _checks as _ck
from clora3d.ops import reference as _ref
from clora3d.ops.reference import interpolation_weights

__all__ = [
    "furthest_point_sample",
    "knn",
    "gather_points",
    "three_nn",
    "interpolation_weights",
    "three_interpolate",
    "chamfer_l2",
    "chamfer_l2_loss",
    "fps_sample",
]


# The compiled kernels are torch custom operators, torch.ops.clora3d.* (csrc/bindings.cpp), with
# fake implementations and autograd registered in clora3d/ops/_library.py: they trace under
# torch.compile(fullgraph=True) and torch.export. Value checks (finite coordinates, index ranges)
# run here only for CPU tensors in eager mode; on CUDA, and while tracing, the kernels check them
# (CPU: RuntimeError; CUDA: a device-side assertion at the next sync, no host sync per call).


# ----------------------------------------------------------------------------- public ops
def furthest_point_sample(xyz: torch.Tensor, S: int, start: int = 0) -> torch.LongTensor:
    """Exact furthest point sampling: ``S`` indices (B,S) int64 per cloud of ``xyz`` (B,N,3).

    The first index is ``start``; every point is eligible (no near-origin skip); ties go to the
    lowest index. Not differentiable (returns indices).
    """
    op = "furthest_point_sample"
    xyz = _ck.coords(xyz, op, "xyz")
    N = xyz.shape[1]
    S = _ck.count(S, op, "S", 1, N, "N")
    start = _ck.count(start, op, "start", 0, N - 1, "N-1")
    if _be.use_native(xyz.device):
        return _be.C().fps(xyz.detach(), S, start)
    _ck.defer_finite(op, ("xyz", xyz))
    return _ref.furthest_point_sample(xyz.detach(), S, start)


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.LongTensor]:
    """The ``k`` nearest ``ref`` points (B,N,3) of every ``query`` point (B,M,3).

    Returns (sqdist (B,M,k), idx int64 (B,M,k)), sorted ascending, ties to the lower index.
    Distances are not differentiable; recompute them from ``gather_points`` if you need gradients.
    """
    op = "knn"
    query = _ck.coords(query, op, "query", min_points=0)
    ref = _ck.coords(ref, op, "ref")
    _ck.same_batch_device(op, ("query", query), ("ref", ref))
    _ck.same_dtype(op, ("query", query), ("ref", ref))
    k = _ck.count(k, op, "k", 1, ref.shape[1], "N (points in ref)")
    if _be.use_native(query.device):
        return tuple(_be.C().knn(query.detach(), ref.detach(), k))
    _ck.defer_finite(op, ("query", query), ("ref", ref))
    return _ref.knn(query.detach(), ref.detach(), k)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``points`` (B,N,C) picked by ``idx`` (B,S) or (B,S,K) -> (B,S,C) or (B,S,K,C).

    Differentiable (twice) w.r.t. ``points``. float32/float64 use the compiled kernel, and so do
    float16/bfloat16 on CUDA; other dtypes (integers, half types on the CPU) use torch.gather.
    """
    op = "gather_points"
    points = _ck.tensor(points, op, "points")
    if points.dim() != 3:
        raise ValueError(f"{op}: points must have shape (B, N, C), got {_ck._shape(points)}")
    idx = _ck.indices(idx, op, "idx", points.shape[1], (2, 3))
    _ck.same_batch_device(op, ("points", points), ("idx", idx))
    if not _ck.native_feature_dtype(points) or not _be.use_native(points.device):
        return _ref.gather_points(points, idx)
    B = points.shape[0]
    if B == 0 or idx.numel() == 0:  # nothing to gather: the empty result of the right shape
        return _ref.gather_points(points, idx)
    out = _be.C().gather_forward(points, idx.reshape(B, -1))
    return out.reshape(*idx.shape, points.shape[2])


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
    """Three nearest ``known`` (B,m,3) points of every ``unknown`` (B,n,3) point.

    Returns (sqdist (B,n,3) squared distances ascending, idx int64 (B,n,3)); needs m >= 3.
    """
    op = "three_nn"
    unknown = _ck.coords(unknown, op, "unknown", min_points=0)
    known = _ck.coords(known, op, "known", min_points=3)
    _ck.same_batch_device(op, ("unknown", unknown), ("known", known))
    _ck.same_dtype(op, ("unknown", unknown), ("known", known))
    if _be.use_native(unknown.device):
        return tuple(_be.C().three_nn(unknown.detach(), known.detach()))
    _ck.defer_finite(op, ("unknown", unknown), ("known", known))
    return _ref.three_nn(unknown.detach(), known.detach())


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blend three feature rows per target point: features (B,m,C), idx/weight (B,n,3) -> (B,n,C).

    ``out[b,i] = (w0*f[idx0] + w1*f[idx1]) + w2*f[idx2]``. Differentiable w.r.t. features and
    weight. ``weight`` is cast to the features' dtype; float16/bfloat16 use the kernel on CUDA (float32
    accumulation, one rounding) and the PyTorch path in their own dtype on the CPU.
    """
    op = "three_interpolate"
    features = _ck.tensor(features, op, "features")
    if features.dim() != 3:
        raise ValueError(f"{op}: features must have shape (B, m, C), got {_ck._shape(features)}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{op}: features must be a floating point tensor, got {features.dtype}")
    idx = _ck.indices(idx, op, "idx", features.shape[1], (3,))
    weight = _ck.tensor(weight, op, "weight")
    if idx.shape[-1] != 3:
        raise ValueError(f"{op}: idx must have shape (B, n, 3), got {_ck._shape(idx)}")
    if weight.shape != idx.shape:
        raise ValueError(f"{op}: weight must have the shape of idx {_ck._shape(idx)}, got {_ck._shape(weight)}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{op}: weight must be a floating point tensor, got {weight.dtype}")
    _ck.same_batch_device(op, ("features", features), ("idx", idx), ("weight", weight))
    weight = weight.to(features.dtype)
    if not _ck.native_feature_dtype(features) or not _be.use_native(features.device):
        return _ref.three_interpolate(features, idx, weight)
    return _be.C().three_interpolate_forward(features, idx, weight)


def chamfer_l2(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor, torch.LongTensor]:
    """Chamfer-L2 both ways: (dist_a (B,N), idx_a (B,N), dist_b (B,M), idx_b (B,M)).

    ``dist_a[b,i] = min_j |a_i - b_j|^2`` (squared), ``idx_a`` its argmin (ties -> lower index);
    likewise for b. Differentiable w.r.t. a and b through the distances.
    """
    op = "chamfer_l2"
    a = _ck.coords(a, op, "a")
    b = _ck.coords(b, op, "b")
    _ck.same_batch_device(op, ("a", a), ("b", b))
    _ck.same_dtype(op, ("a", a), ("b", b))
    if _be.use_native(a.device):
        return tuple(_be.C().chamfer_forward(a, b))
    _ck.defer_finite(op, ("a", a), ("b", b))
    return _ref.chamfer_l2(a, b)


def chamfer_l2_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Point-MAE's ChamferDistanceL2: ``dist_a.mean() + dist_b.mean()`` (scalar, differentiable).

    An empty batch (B = 0) raises ValueError: the mean over no clouds is undefined (it would be
    NaN and poison a training step); skip the loss for an empty batch instead."""
    if isinstance(a, torch.Tensor) and a.dim() == 3 and a.shape[0] == 0:
        raise ValueError(
            "chamfer_l2_loss: empty batch (B = 0): the mean over no clouds is "
            "undefined; skip the loss for an empty batch"
        )
    dist_a, _, dist_b, _ = chamfer_l2(a, b)
    return dist_a.mean() + dist_b.mean()


def fps_sample(xyz: torch.Tensor, S: int) -> torch.Tensor:
    """The ``S`` furthest-point-sampled points of ``xyz`` (B,N,3) -> (B,S,3)."""
    return gather_points(xyz, furthest_point_sample(xyz, S))

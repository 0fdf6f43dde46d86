"""Checked public point cloud ops: validate, then run the compiled kernel or the reference.

All coordinates and features are channel-last. See :mod:`clora3d.ops.reference` for the exact
semantics (the specification) and :mod:`clora3d.ops._backend` for backend selection.
"""
from __future__ import annotations

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

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


# ----------------------------------------------------------------------------- autograd Functions
class _GatherFn(Function):
    @staticmethod
    def forward(ctx, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # idx (B,S)
        ctx.save_for_backward(idx)
        ctx.n = points.shape[1]
        return _be.C().gather_forward(points, idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        return _be.C().gather_backward(grad, idx, ctx.n), None


class _ThreeInterpolateFn(Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, idx, weight)
        return _be.C().three_interpolate_forward(features, idx, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        features, idx, weight = ctx.saved_tensors
        C = _be.C()
        g_feat = g_w = None
        if ctx.needs_input_grad[0]:
            g_feat = C.three_interpolate_backward(grad, idx, weight, features.shape[1])
        if ctx.needs_input_grad[2]:
            B, n, _ = idx.shape
            f = C.gather_forward(features, idx.reshape(B, n * 3)).reshape(B, n, 3, -1)
            g_w = (f * grad.unsqueeze(2)).sum(-1)
        return g_feat, None, g_w


class _ChamferFn(Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor):
        dist_a, idx_a, dist_b, idx_b = _be.C().chamfer_forward(a, b)
        ctx.save_for_backward(a, b, idx_a, idx_b)
        ctx.mark_non_differentiable(idx_a, idx_b)
        return dist_a, idx_a, dist_b, idx_b

    @staticmethod
    @once_differentiable
    def backward(ctx, g_da, _g_ia, g_db, _g_ib):
        a, b, idx_a, idx_b = ctx.saved_tensors
        if g_da is None:
            g_da = torch.zeros(idx_a.shape, dtype=a.dtype, device=a.device)
        if g_db is None:
            g_db = torch.zeros(idx_b.shape, dtype=a.dtype, device=a.device)
        g_a, g_b = _be.C().chamfer_backward(a, b, idx_a, idx_b, g_da, g_db)
        return (g_a if ctx.needs_input_grad[0] else None, g_b if ctx.needs_input_grad[1] else None)


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
    return _ref.knn(query.detach(), ref.detach(), k)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``points`` (B,N,C) picked by ``idx`` (B,S) or (B,S,K) -> (B,S,C) or (B,S,K,C).

    Differentiable w.r.t. ``points``. float32/float64 use the compiled kernel; other dtypes
    (integers, float16, bfloat16) use torch.gather.
    """
    op = "gather_points"
    points = _ck.tensor(points, op, "points")
    if points.dim() != 3:
        raise ValueError(f"{op}: points must have shape (B, N, C), got {_ck._shape(points)}")
    idx = _ck.indices(idx, op, "idx", points.shape[1], (2, 3))
    _ck.same_batch_device(op, ("points", points), ("idx", idx))
    if points.dtype not in _ck.FLOAT_DTYPES or not _be.use_native(points.device):
        return _ref.gather_points(points, idx)
    B = points.shape[0]
    if B == 0 or idx.numel() == 0:  # nothing to gather: the empty result of the right shape
        return _ref.gather_points(points, idx)
    out = _GatherFn.apply(points, idx.reshape(B, -1))
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
    return _ref.three_nn(unknown.detach(), known.detach())


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blend three feature rows per target point: features (B,m,C), idx/weight (B,n,3) -> (B,n,C).

    ``out[b,i] = (w0*f[idx0] + w1*f[idx1]) + w2*f[idx2]``. Differentiable w.r.t. features and
    weight. ``weight`` is cast to the features' dtype; float16/bfloat16 use the PyTorch path.
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
    if features.dtype not in _ck.FLOAT_DTYPES or not _be.use_native(features.device):
        return _ref.three_interpolate(features, idx, weight)
    return _ThreeInterpolateFn.apply(features, idx, weight)


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
        return tuple(_ChamferFn.apply(a, b))
    return _ref.chamfer_l2(a, b)


def chamfer_l2_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Point-MAE's ChamferDistanceL2: ``dist_a.mean() + dist_b.mean()`` (scalar, differentiable).

    An empty batch (B = 0) raises ValueError: the mean over no clouds is undefined (it would be
    NaN and poison a training step); skip the loss for an empty batch instead."""
    if isinstance(a, torch.Tensor) and a.dim() == 3 and a.shape[0] == 0:
        raise ValueError("chamfer_l2_loss: empty batch (B = 0): the mean over no clouds is "
                         "undefined; skip the loss for an empty batch")
    dist_a, _, dist_b, _ = chamfer_l2(a, b)
    return dist_a.mean() + dist_b.mean()


def fps_sample(xyz: torch.Tensor, S: int) -> torch.Tensor:
    """The ``S`` furthest-point-sampled points of ``xyz`` (B,N,3) -> (B,S,3)."""
    return gather_points(xyz, furthest_point_sample(xyz, S))

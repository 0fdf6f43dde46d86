"""Fake (meta) implementations and autograd of the compiled ops ``torch.ops.clora3d.*``.

The C++ side (csrc/bindings.cpp) defines the operator schemas with ``TORCH_LIBRARY`` and registers
the CPU and CUDA kernels. This module adds, through :mod:`torch.library`:

- a fake implementation per op (output shapes and dtypes only), so that ``torch.compile`` and
  ``torch.export`` trace through the ops without a graph break;
- autograd formulas: ``gather_forward`` and ``three_interpolate_forward`` are differentiable
  (twice: their backward ops have autograd of their own), ``chamfer_forward`` once (its backward
  raises on a second derivative instead of returning a silent zero).

``register()`` runs once, right after ``clora3d._C`` is imported (see :mod:`clora3d.ops._backend`).
"""

from __future__ import annotations

import torch

_registered = False


def _ops():
    return torch.ops.clora3d


# ----------------------------------------------------------------------------- fake implementations
def _fake_fps(xyz, S, start=0):
    return xyz.new_empty((xyz.shape[0], S), dtype=torch.long)


def _fake_knn(query, ref, k):
    shape = (query.shape[0], query.shape[1], k)
    return query.new_empty(shape), query.new_empty(shape, dtype=torch.long)


def _fake_gather_forward(points, idx):
    return points.new_empty((points.shape[0], idx.shape[1], points.shape[2]))


def _fake_gather_backward(grad_out, idx, N):
    return grad_out.new_empty((grad_out.shape[0], N, grad_out.shape[2]))


def _fake_three_nn(unknown, known):
    shape = (unknown.shape[0], unknown.shape[1], 3)
    return unknown.new_empty(shape), unknown.new_empty(shape, dtype=torch.long)


def _fake_three_interpolate_forward(features, idx, weight):
    return features.new_empty((features.shape[0], idx.shape[1], features.shape[2]))


def _fake_three_interpolate_backward(grad_out, idx, weight, m):
    return grad_out.new_empty((grad_out.shape[0], m, grad_out.shape[2]))


def _fake_chamfer_forward(a, b):
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    return (
        a.new_empty((B, N)),
        a.new_empty((B, N), dtype=torch.long),
        a.new_empty((B, M)),
        a.new_empty((B, M), dtype=torch.long),
    )


def _fake_chamfer_backward(a, b, idx_a, idx_b, grad_dist_a, grad_dist_b):
    return a.new_empty(a.shape), b.new_empty(b.shape)


# ----------------------------------------------------------------------------- autograd
# gather: out[b,s] = points[b, idx[b,s]];  d/dpoints = scatter-add (gather_backward)
def _gather_setup(ctx, inputs, output):
    points, idx = inputs
    ctx.save_for_backward(idx)
    ctx.n = points.shape[1]


def _gather_backward(ctx, grad):
    (idx,) = ctx.saved_tensors
    return _ops().gather_backward(grad, idx, ctx.n), None


# gather_backward is linear in grad_out: its derivative is a gather again
def _gather_bwd_setup(ctx, inputs, output):
    _grad, idx, _N = inputs
    ctx.save_for_backward(idx)


def _gather_bwd_backward(ctx, gg):
    (idx,) = ctx.saved_tensors
    return _ops().gather_forward(gg, idx), None, None


# three_interpolate: out[b,i] = sum_k w[b,i,k] f[b, idx[b,i,k]]
def _interp_setup(ctx, inputs, output):
    features, idx, weight = inputs
    ctx.save_for_backward(features, idx, weight)


def _interp_backward(ctx, grad):
    features, idx, weight = ctx.saved_tensors
    g_feat = g_w = None
    if ctx.needs_input_grad[0]:
        g_feat = _ops().three_interpolate_backward(grad, idx, weight, features.shape[1])
    if ctx.needs_input_grad[2]:
        B, n, _ = idx.shape
        f = _ops().gather_forward(features, idx.reshape(B, n * 3)).reshape(B, n, 3, -1)
        g_w = (f * grad.unsqueeze(2)).sum(-1)
    return g_feat, None, g_w


# three_interpolate_backward: gf[b, idx[b,i,k]] += w[b,i,k] g[b,i]  (linear in g, bilinear in w)
def _interp_bwd_setup(ctx, inputs, output):
    grad_out, idx, weight, _m = inputs
    ctx.save_for_backward(grad_out, idx, weight)


def _interp_bwd_backward(ctx, ggf):
    grad_out, idx, weight = ctx.saved_tensors
    g_grad = g_w = None
    if ctx.needs_input_grad[0]:
        g_grad = _ops().three_interpolate_forward(ggf, idx, weight)
    if ctx.needs_input_grad[2]:
        B, n, _ = idx.shape
        f = _ops().gather_forward(ggf, idx.reshape(B, n * 3)).reshape(B, n, 3, -1)
        g_w = (f * grad_out.unsqueeze(2)).sum(-1)
    return g_grad, None, g_w, None


# chamfer: dist_a[b,i] = |a_i - b_{idx_a}|^2, dist_b likewise
def _chamfer_setup(ctx, inputs, output):
    a, b = inputs
    _da, idx_a, _db, idx_b = output
    ctx.save_for_backward(a, b, idx_a, idx_b)


def _chamfer_backward(ctx, g_da, _g_ia, g_db, _g_ib):
    a, b, idx_a, idx_b = ctx.saved_tensors
    if g_da is None:
        g_da = torch.zeros(idx_a.shape, dtype=a.dtype, device=a.device)
    if g_db is None:
        g_db = torch.zeros(idx_b.shape, dtype=a.dtype, device=a.device)
    g_a, g_b = _ops().chamfer_backward(a, b, idx_a, idx_b, g_da, g_db)
    return (g_a if ctx.needs_input_grad[0] else None, g_b if ctx.needs_input_grad[1] else None)


def _chamfer_bwd_setup(ctx, inputs, output):
    pass


def _chamfer_bwd_backward(ctx, *grads):
    raise RuntimeError(
        "clora3d chamfer_l2 is differentiable once: a second derivative (double backward) "
        "through it is not implemented; use clora3d.ops.reference.chamfer_l2 for that"
    )


_FAKES = {
    "fps": _fake_fps,
    "knn": _fake_knn,
    "gather_forward": _fake_gather_forward,
    "gather_backward": _fake_gather_backward,
    "three_nn": _fake_three_nn,
    "three_interpolate_forward": _fake_three_interpolate_forward,
    "three_interpolate_backward": _fake_three_interpolate_backward,
    "chamfer_forward": _fake_chamfer_forward,
    "chamfer_backward": _fake_chamfer_backward,
}

_AUTOGRAD = {
    "gather_forward": (_gather_backward, _gather_setup),
    "gather_backward": (_gather_bwd_backward, _gather_bwd_setup),
    "three_interpolate_forward": (_interp_backward, _interp_setup),
    "three_interpolate_backward": (_interp_bwd_backward, _interp_bwd_setup),
    "chamfer_forward": (_chamfer_backward, _chamfer_setup),
    "chamfer_backward": (_chamfer_bwd_backward, _chamfer_bwd_setup),
}

OPS = tuple(_FAKES)


def register() -> None:
    """Register the fake implementations and autograd formulas (idempotent)."""
    global _registered
    if _registered:
        return
    for name, fn in _FAKES.items():
        torch.library.register_fake(f"clora3d::{name}", fn)
    for name, (bwd, setup) in _AUTOGRAD.items():
        torch.library.register_autograd(f"clora3d::{name}", bwd, setup_context=setup)
    _registered = True

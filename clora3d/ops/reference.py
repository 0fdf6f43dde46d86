"""Pure-PyTorch reference implementations of the clora3d point cloud ops.

These functions are the specification of the compiled kernels and the fallback when the extension
is not built. They assume validated inputs (see :mod:`clora3d.ops` for the checked public API).
Conventions shared with the kernels (channel-last everywhere):

* squared distances are computed exactly as ``(dx*dx + dy*dy) + dz*dz`` from coordinate
  differences (no ``|a|^2 + |b|^2 - 2ab`` expansion), so native and reference values agree bit for bit;
* furthest point sampling starts at ``start``, considers every point (no near-origin skip) and
  breaks ties towards the lowest index;
* kNN / three_nn / Chamfer indices break distance ties towards the lower index; kNN is sorted
  ascending;
* ``interpolation_weights`` uses inverse squared distance ``1 / (d^2 + eps)`` normalised to sum 1;
* ``three_interpolate`` blends as ``(w0*f0 + w1*f1) + w2*f2``.
"""

from __future__ import annotations

import torch

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

# Upper bound on elements of one (B, chunk, N) distance block, to bound the reference's memory.
_BLOCK_ELEMS = 1 << 23


def _sqdist(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Exact squared distances (B,M,3) x (B,N,3) -> (B,M,N) as (dx*dx + dy*dy) + dz*dz."""
    dx = q[..., 0:1] - r[..., 0].unsqueeze(1)
    dy = q[..., 1:2] - r[..., 1].unsqueeze(1)
    dz = q[..., 2:3] - r[..., 2].unsqueeze(1)
    return (dx * dx + dy * dy) + dz * dz


def _query_chunks(B: int, M: int, N: int) -> int:
    return max(1, min(M, _BLOCK_ELEMS // max(1, B * N)))


@torch.no_grad()
def furthest_point_sample(xyz: torch.Tensor, S: int, start: int = 0) -> torch.LongTensor:
    """Exact furthest point sampling of ``S`` indices per cloud of ``xyz`` (B,N,3), from ``start``."""
    B, N, _ = xyz.shape
    out = torch.empty(B, S, dtype=torch.long, device=xyz.device)
    if B == 0 or S == 0:
        return out
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    cur = torch.full((B,), int(start), dtype=torch.long, device=xyz.device)
    for s in range(S):
        out[:, s] = cur
        if s == S - 1:
            break
        c = xyz[rows, cur]  # (B,3)
        dx = x - c[:, 0:1]
        dy = y - c[:, 1:2]
        dz = z - c[:, 2:3]
        dist = torch.minimum(dist, (dx * dx + dy * dy) + dz * dz)
        cur = dist.argmax(dim=1)  # first maximum -> lowest index on ties
    return out


@torch.no_grad()
def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.LongTensor]:
    """``k`` nearest ``ref`` points of every ``query`` point: (sqdist (B,M,k), idx (B,M,k)), ascending."""
    B, M, _ = query.shape
    N = ref.shape[1]
    dists, idxs = [], []
    step = _query_chunks(B, M, N)
    for m0 in range(0, M, step):
        d = _sqdist(query[:, m0 : m0 + step], ref)
        sd, si = torch.sort(d, dim=-1, stable=True)
        dists.append(sd[..., :k])
        idxs.append(si[..., :k])
    if not dists:
        return (query.new_empty(B, 0, k), torch.empty(B, 0, k, dtype=torch.long, device=query.device))
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``points`` (B,N,C) rows picked by ``idx`` (B,S) or (B,S,K) -> (B,S,C) or (B,S,K,C)."""
    B, _, C = points.shape
    flat = idx.reshape(B, idx[0].numel() if B else int(torch.Size(idx.shape[1:]).numel()))
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, C))
    return out.reshape(*idx.shape, C)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
    """Three nearest ``known`` points of every ``unknown`` point: (sqdist (B,n,3), idx (B,n,3))."""
    return knn(unknown, known, 3)


def interpolation_weights(sqdist: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Inverse squared-distance weights ``1 / (d + eps)`` where ``d = sqdist`` is already the squared
    distance (as three_nn returns it), normalised to sum 1 over the last dim."""
    w = 1.0 / (sqdist + eps)
    return w / w.sum(dim=-1, keepdim=True)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[b,i] = (w0*f[idx0] + w1*f[idx1]) + w2*f[idx2]`` for features (B,m,C) -> (B,n,C)."""
    g = gather_points(features, idx)  # (B,n,3,C)
    w = weight.unsqueeze(-1)
    return (w[:, :, 0] * g[:, :, 0] + w[:, :, 1] * g[:, :, 1]) + w[:, :, 2] * g[:, :, 2]


@torch.no_grad()
def _nearest(q: torch.Tensor, r: torch.Tensor) -> torch.LongTensor:
    """Index of the nearest ``r`` point for every ``q`` point (ties -> lower index)."""
    B, M, _ = q.shape
    N = r.shape[1]
    step = _query_chunks(B, M, N)
    parts = [_sqdist(q[:, m0 : m0 + step], r).min(dim=-1).indices for m0 in range(0, M, step)]
    return torch.cat(parts, 1)


def _paired_sqdist(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    d = p - q
    return (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2]


def chamfer_l2(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor, torch.LongTensor]:
    """Nearest squared distances both ways: (dist_a (B,N), idx_a, dist_b (B,M), idx_b); autograd on dists."""
    idx_a = _nearest(a, b)
    idx_b = _nearest(b, a)
    dist_a = _paired_sqdist(a, gather_points(b, idx_a))
    dist_b = _paired_sqdist(b, gather_points(a, idx_b))
    return dist_a, idx_a, dist_b, idx_b


def chamfer_l2_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Point-MAE's ChamferDistanceL2: ``dist_a.mean() + dist_b.mean()``."""
    dist_a, _, dist_b, _ = chamfer_l2(a, b)
    return dist_a.mean() + dist_b.mean()


def fps_sample(xyz: torch.Tensor, S: int) -> torch.Tensor:
    """The ``S`` furthest-point-sampled points of ``xyz`` (B,N,3) -> (B,S,3)."""
    return gather_points(xyz, furthest_point_sample(xyz, S))

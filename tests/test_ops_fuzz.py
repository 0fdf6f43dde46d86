"""Property-based fuzzing of clora3d.ops: any shape/value/dtype either gives the brute-force answer
or raises ValueError -- never a crash or another exception."""

from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import clora3d.ops as ops  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# coordinate values: few distinct values make ties and duplicates likely; some large, some invalid
VALUES = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, 1e-3, 1e4, -7.25, 3.0, float("nan"), float("inf")])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int32])


@st.composite
def clouds(draw, max_b=3, max_n=24):
    B = draw(st.integers(1, max_b))
    N = draw(st.integers(0, max_n))
    vals = draw(st.lists(VALUES, min_size=B * N * 3, max_size=B * N * 3))
    use_invalid = draw(st.booleans())
    arr = np.array(vals, dtype=np.float64).reshape(B, N, 3)
    if not use_invalid:
        arr = np.nan_to_num(arr, nan=0.25, posinf=4.0, neginf=-4.0)
    return torch.from_numpy(arr).to(draw(DTYPES))


def _sq(diff: np.ndarray) -> np.ndarray:
    return (diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]) + diff[..., 2] * diff[..., 2]


def _valid_coords(x: torch.Tensor, min_points: int = 1) -> bool:
    return (
        x.dtype in (torch.float32, torch.float64, torch.float16)
        and x.shape[1] >= min_points
        and bool(torch.isfinite(x).all())
    )


def _same_compute_dtype(x: torch.Tensor, y: torch.Tensor) -> bool:
    """float16 is computed in float32; a float32/float64 mix is a user error (ValueError)."""
    return (x.dtype == torch.float64) == (y.dtype == torch.float64)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.float().numpy() if x.dtype == torch.float16 else x.numpy()


@FUZZ
@given(xyz=clouds(), S=st.integers(-2, 30), start=st.integers(-1, 30))
def test_fuzz_fps(xyz, S, start):
    try:
        out = ops.furthest_point_sample(xyz, S, start)
    except ValueError:
        N = xyz.shape[1]
        assert not (_valid_coords(xyz) and 1 <= S <= N and 0 <= start < N)
        return
    pts = _np(xyz)
    for b in range(pts.shape[0]):
        chosen = [start]
        for _ in range(1, S):
            mind = _sq(pts[b][:, None, :] - pts[b][chosen][None]).min(1)
            chosen.append(int(np.flatnonzero(mind == mind.max())[0]))
        assert out[b].tolist() == chosen


@FUZZ
@given(q=clouds(max_n=12), r=clouds(max_n=24), k=st.integers(-1, 26))
def test_fuzz_knn(q, r, k):
    try:
        d, i = ops.knn(q, r, k)
    except ValueError:
        assert not (
            _valid_coords(q, 0)
            and _valid_coords(r)
            and q.shape[0] == r.shape[0]
            and 1 <= k <= r.shape[1]
            and _same_compute_dtype(q, r)
        )
        return
    dt = np.float64 if torch.float64 in (q.dtype, r.dtype) else np.float32
    qn, rn = _np(q).astype(dt), _np(r).astype(dt)
    for b in range(qn.shape[0]):
        dist = _sq(qn[b][:, None, :] - rn[b][None])
        idx = np.argsort(dist, 1, kind="stable")[:, :k]
        np.testing.assert_array_equal(i[b].numpy(), idx)
        np.testing.assert_array_equal(d[b].numpy(), np.take_along_axis(dist, idx, 1))


@FUZZ
@given(a=clouds(max_n=16), b=clouds(max_n=16))
def test_fuzz_chamfer(a, b):
    try:
        da, ia, db, ib = ops.chamfer_l2(a, b)
    except ValueError:
        assert not (_valid_coords(a) and _valid_coords(b) and a.shape[0] == b.shape[0] and _same_compute_dtype(a, b))
        return
    dt = np.float64 if torch.float64 in (a.dtype, b.dtype) else np.float32
    an, bn = _np(a).astype(dt), _np(b).astype(dt)
    for k in range(an.shape[0]):
        dist = _sq(an[k][:, None, :] - bn[k][None])
        np.testing.assert_array_equal(ia[k].numpy(), dist.argmin(1))
        np.testing.assert_array_equal(ib[k].numpy(), dist.argmin(0))
        np.testing.assert_array_equal(da[k].detach().numpy(), dist.min(1))
        np.testing.assert_array_equal(db[k].detach().numpy(), dist.min(0))


@FUZZ
@given(
    B=st.integers(1, 3),
    N=st.integers(0, 10),
    C=st.integers(0, 5),
    idx=st.lists(st.integers(-2, 12), min_size=0, max_size=8),
    rank3=st.booleans(),
)
def test_fuzz_gather(B, N, C, idx, rank3):
    pts = torch.randn(B, N, C, dtype=torch.float64)
    ix = torch.tensor(idx, dtype=torch.long).reshape(1, -1).expand(B, -1)
    if rank3:
        ix = ix.reshape(B, -1, 1)
    try:
        out = ops.gather_points(pts, ix)
    except ValueError:
        assert any(v < 0 or v >= N for v in idx)
        return
    for b in range(B):
        assert torch.equal(out[b], pts[b][ix[b]])


@FUZZ
@given(B=st.integers(1, 2), m=st.integers(0, 8), n=st.integers(0, 6), C=st.integers(1, 4), seed=st.integers(0, 99))
def test_fuzz_three_nn_interpolate(B, m, n, C, seed):
    g = torch.Generator().manual_seed(seed)
    known = torch.randint(0, 3, (B, m, 3), generator=g).double()
    unknown = torch.rand(B, n, 3, generator=g, dtype=torch.float64)
    try:
        d, i = ops.three_nn(unknown, known)
    except ValueError:
        assert m < 3
        return
    kn, un = known.numpy(), unknown.numpy()
    feats = torch.randn(B, m, C, dtype=torch.float64, generator=g)
    w = ops.interpolation_weights(d)
    out = ops.three_interpolate(feats, i, w)
    for b in range(B):
        dist = _sq(un[b][:, None, :] - kn[b][None])
        idx = np.argsort(dist, 1, kind="stable")[:, :3]
        np.testing.assert_array_equal(i[b].numpy(), idx)
        manual = (w[b].unsqueeze(-1) * feats[b][i[b]]).sum(1)
        torch.testing.assert_close(out[b], manual)

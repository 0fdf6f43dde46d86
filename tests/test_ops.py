"""clora3d.ops: native kernels vs the PyTorch reference vs brute-force numpy, gradients, errors."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

import clora3d.ops as ops
from clora3d.ops import _backend
from clora3d.ops import reference as ref


def _native_or_none():
    try:
        return importlib.import_module("clora3d._C")
    except ImportError:
        return None


_C = _native_or_none()
needs_native = pytest.mark.skipif(
    _C is None, reason="compiled extension clora3d._C is not built (pip install --no-build-isolation -e .)"
)


@pytest.fixture
def native(monkeypatch):
    """Force the compiled backend for the duration of a test."""
    if _C is None:
        pytest.skip("compiled extension clora3d._C is not built (pip install --no-build-isolation -e .)")
    monkeypatch.setenv("CLORA3D_OPS", "native")
    return _C


# ----------------------------------------------------------------------------- independent references
def numpy_fps(xyz: np.ndarray, S: int, start: int = 0) -> np.ndarray:
    """Brute-force FPS of one cloud (N,3): distances recomputed to all chosen points every step."""
    chosen = [start]
    for _ in range(1, S):
        diff = xyz[:, None, :] - xyz[chosen][None, :, :]
        d = (diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]) + diff[..., 2] * diff[..., 2]
        mind = d.min(axis=1)
        chosen.append(int(np.flatnonzero(mind == mind.max())[0]))
    return np.array(chosen)


def numpy_knn(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force kNN of one cloud: stable argsort of exact squared distances."""
    diff = q[:, None, :] - r[None, :, :]
    d = (diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]) + diff[..., 2] * diff[..., 2]
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def adversarial_clouds(dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Clouds that stress ties and precision: (B,N,3)."""
    g = torch.Generator().manual_seed(1)
    base = torch.rand(2, 40, 3, generator=g)
    line = torch.linspace(0, 1, 37)
    return {
        "random": torch.rand(3, 200, 3, generator=g).to(dtype),
        "duplicated": torch.cat([base, base, base[:, :5]], 1).to(dtype),
        "all_equal": torch.full((2, 33, 3), 0.25).to(dtype),
        "collinear": torch.stack([line, 2 * line, -line], -1).unsqueeze(0).repeat(2, 1, 1).to(dtype),
        "grid_ties": torch.randint(0, 3, (2, 64, 3), generator=g).to(dtype),
        "large_1e4": (1e4 * torch.rand(2, 150, 3, generator=g) - 5e3).to(dtype),
        "single_batch": torch.rand(1, 77, 3, generator=g).to(dtype),
        "origin_cluster": torch.cat(
            [1e-3 * torch.rand(1, 20, 3, generator=g), torch.rand(1, 20, 3, generator=g)], 1
        ).to(dtype),
    }


CLOUDS = adversarial_clouds()


# ----------------------------------------------------------------------------- FPS
@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_reference_fps_matches_numpy_bruteforce(name):
    xyz = CLOUDS[name]
    S = min(16, xyz.shape[1])
    got = ref.furthest_point_sample(xyz, S, start=1)
    for b in range(xyz.shape[0]):
        np.testing.assert_array_equal(got[b].numpy(), numpy_fps(xyz[b].numpy(), S, start=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_native_fps_matches_reference_and_numpy(native, name, dtype):
    xyz = CLOUDS[name].to(dtype)
    N = xyz.shape[1]
    for S, start in [(min(16, N), 0), (N, N - 1)]:  # includes N == S
        got = ops.furthest_point_sample(xyz, S, start)
        assert got.dtype == torch.int64 and got.shape == (xyz.shape[0], S)
        assert torch.equal(got, ref.furthest_point_sample(xyz, S, start))
        np.testing.assert_array_equal(got[0].numpy(), numpy_fps(xyz[0].numpy(), S, start))


def test_fps_does_not_skip_points_near_origin(native):
    xyz = torch.tensor([[[1.0, 0, 0], [0.001, 0, 0], [-0.001, 0.0, 0.0], [0.5, 0, 0]]])
    got = ops.furthest_point_sample(xyz, 4)
    assert got.tolist() == [[0, 2, 3, 1]]


def test_fps_large_cloud_parity(native):
    xyz = torch.rand(2, 3000, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ops.furthest_point_sample(xyz, 300), ref.furthest_point_sample(xyz, 300))


# ----------------------------------------------------------------------------- kNN / three_nn
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_native_knn_matches_reference_and_numpy(native, name, dtype):
    xyz = CLOUDS[name].to(dtype)
    N = xyz.shape[1]
    query = xyz[:, : min(20, N)] + 0.0  # queries are cloud points: distance-0 ties with duplicates
    for k in sorted({1, 3, min(16, N), N}):  # includes k == N
        d, i = ops.knn(query, xyz, k)
        rd, ri = ref.knn(query, xyz, k)
        assert d.dtype == dtype and i.dtype == torch.int64 and d.shape == (xyz.shape[0], query.shape[1], k)
        assert torch.equal(i, ri) and torch.equal(d, rd)
        nd, ni = numpy_knn(query[0].numpy(), xyz[0].numpy(), k)
        np.testing.assert_array_equal(i[0].numpy(), ni)
        np.testing.assert_array_equal(d[0].numpy(), nd)


@pytest.mark.parametrize("N,M,k", [(1024, 64, 32), (2500, 40, 100), (700, 30, 3), (5000, 8, 1)])
def test_native_knn_sizes(native, N, M, k):
    g = torch.Generator().manual_seed(N)
    xyz = torch.rand(2, N, 3, generator=g)
    q = torch.rand(2, M, 3, generator=g)
    d, i = ops.knn(q, xyz, k)
    rd, ri = ref.knn(q, xyz, k)
    assert torch.equal(i, ri) and torch.equal(d, rd)


def grid_path_clouds(dtype=torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(query (B,M,3), ref (B,N,3)) pairs sized for the native grid path (N >= 1536, M >= 16, 16k <= N)."""
    g = torch.Generator().manual_seed(7)
    B, N, M = 2, 2500, 64

    def sphere(n: int) -> torch.Tensor:
        p = torch.randn(B, n, 3, generator=g)
        return p / p.norm(dim=-1, keepdim=True) + 0.02 * torch.randn(B, n, 3, generator=g)

    s = sphere(N)
    # tight clusters + sparse outliers: very non-uniform density
    centers = 5 * torch.randn(B, 4, 3, generator=g)
    cl = centers.repeat_interleave((N - 40) // 4, 1) + 1e-3 * torch.randn(B, N - 40, 3, generator=g)
    clustered = torch.cat([cl, 10 * torch.randn(B, 40, 3, generator=g)], 1)
    # lattice with many duplicates: coordinates (and so distance ties) sit exactly on cell boundaries
    lattice = torch.randint(0, 8, (B, N, 3), generator=g).float() * 0.125
    planar = torch.rand(B, N, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0])
    line = torch.linspace(0, 1, N).view(1, N, 1) * torch.tensor([1.0, 2.0, -1.0]) + 1e-6 * torch.rand(
        B, N, 3, generator=g
    )
    far_1e4 = 1e4 + torch.rand(B, N, 3, generator=g)

    # queries: cloud points (distance-0 ties with duplicates), nearby points, points outside the box
    def queries(ref_: torch.Tensor, scale: float) -> torch.Tensor:
        own = ref_[:, : M // 2]
        out = ref_.mean(1, keepdim=True) + scale * 3 * torch.randn(B, M // 4, 3, generator=g)
        far = ref_.mean(1, keepdim=True) + scale * 100 * torch.randn(B, M // 4, 3, generator=g)
        return torch.cat([own, out, far], 1)

    pairs = {
        "sphere": (queries(s, 1.0), s),
        "sphere_N2048_fps_like": (s[:, :128, :], s[:, :2048]),
        "clustered": (queries(clustered, 5.0), clustered),
        "lattice_duplicates": (queries(lattice, 1.0), lattice),
        "lattice_half_cell_queries": (torch.randint(0, 15, (B, M, 3), generator=g).float() * 0.0625, lattice),
        "planar": (queries(planar, 1.0), planar),
        "near_collinear": (queries(line, 1.0), line),
        "offset_1e4": (queries(far_1e4, 1.0), far_1e4),
        "all_equal": (torch.rand(B, M, 3, generator=g), torch.full((B, N, 3), 0.5)),
    }
    return {k: (q.to(dtype).contiguous(), r.to(dtype).contiguous()) for k, (q, r) in pairs.items()}


GRID_CLOUDS = grid_path_clouds()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(GRID_CLOUDS))
def test_native_knn_grid_path_matches_reference(native, name, dtype):
    """Large N / small k goes through the native spatial grid: results must stay bit-identical."""
    q, r = (t.to(dtype) for t in GRID_CLOUDS[name])
    N = r.shape[1]
    for k in (2, 3, 16, 32, 100, N):  # k = N (and 16k > N) take the brute-force path
        d, i = ops.knn(q, r, k)
        rd, ri = ref.knn(q, r, k)
        assert torch.equal(i, ri), (name, k)
        assert torch.equal(d, rd), (name, k)
    nd, ni = numpy_knn(q[0].numpy(), r[0].numpy(), 32)
    d, i = ops.knn(q, r, 32)
    np.testing.assert_array_equal(i[0].numpy(), ni)
    np.testing.assert_array_equal(d[0].numpy(), nd)


def test_native_three_nn_grid_path_matches_reference(native):
    q, r = GRID_CLOUDS["sphere"]
    d, i = ops.three_nn(q, r)
    rd, ri = ref.three_nn(q, r)
    assert torch.equal(i, ri) and torch.equal(d, rd)


def test_knn_sorted_and_self_first(native):
    xyz = torch.rand(2, 300, 3)
    d, i = ops.knn(xyz, xyz, 8)
    assert torch.all(d[..., 1:] >= d[..., :-1])
    assert torch.equal(i[..., 0], torch.arange(300).expand(2, 300))


@pytest.mark.parametrize("name", ["random", "duplicated", "grid_ties", "large_1e4"])
def test_three_nn_parity(native, name):
    known = CLOUDS[name]
    unknown = torch.rand(known.shape[0], 50, 3) * known.abs().max()
    d, i = ops.three_nn(unknown, known)
    rd, ri = ref.three_nn(unknown, known)
    assert d.shape == (known.shape[0], 50, 3)
    assert torch.equal(i, ri) and torch.equal(d, rd)


def test_interpolation_weights_formula():
    # d are squared distances; weights 1/(d + 1e-8) normalised. Hand values for d = 1, 4, 16:
    # raw 1, 1/4, 1/16 (sum 21/16) -> 16/21, 4/21, 1/21. 1/sqrt(d) would give 4/7, 2/7, 1/7 and
    # 1/d^2 256/273, 16/273, 1/273, so the tolerance below tells the three apart.
    d = torch.tensor([[[1.0, 4.0, 16.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    w = ops.interpolation_weights(d, eps=1e-8)
    hand = torch.tensor([16 / 21, 4 / 21, 1 / 21], dtype=torch.float64)
    torch.testing.assert_close(w[0, 0], hand, rtol=1e-7, atol=0)
    # the eps is added to the squared distance: a point on a known point gets 1e8 / (1e8 + 2/(1+1e-8))
    raw = 1.0 / (torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64) + 1e-8)
    torch.testing.assert_close(w[0, 1], raw / raw.sum(), rtol=1e-12, atol=0)
    assert abs(float(w[0, 1, 1]) - 1e-8) < 1e-12
    # the documented default eps is 1e-8
    torch.testing.assert_close(ops.interpolation_weights(d), w, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- gather / interpolate
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_parity_and_formula(native, dtype):
    pts = torch.randn(3, 50, 7, dtype=dtype)
    idx2 = torch.randint(0, 50, (3, 20))
    idx3 = torch.randint(0, 50, (3, 10, 4))
    out2 = ops.gather_points(pts, idx2)
    out3 = ops.gather_points(pts, idx3)
    assert out2.shape == (3, 20, 7) and out3.shape == (3, 10, 4, 7)
    for b in range(3):
        assert torch.equal(out2[b], pts[b][idx2[b]])
        assert torch.equal(out3[b], pts[b][idx3[b]])


def test_gather_backward_accumulates_duplicates(native):
    pts = torch.zeros(1, 4, 2, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[1, 1, 3]])
    ops.gather_points(pts, idx).sum().backward()
    assert pts.grad[0].tolist() == [[0, 0], [2, 2], [0, 0], [1, 1]]


def test_gather_other_dtypes_use_torch_gather(native):
    labels = torch.arange(10).reshape(1, 10, 1)
    assert ops.gather_points(labels, torch.tensor([[9, 0]])).tolist() == [[[9], [0]]]
    h = torch.randn(1, 10, 3).half()
    assert torch.equal(ops.gather_points(h, torch.tensor([[2]])), h[:, 2:3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_three_interpolate_parity(native, dtype):
    feats = torch.randn(2, 30, 70, dtype=dtype)
    known = torch.rand(2, 30, 3, dtype=dtype)
    unknown = torch.rand(2, 100, 3, dtype=dtype)
    d, i = ops.three_nn(unknown, known)
    w = ops.interpolation_weights(d)
    out = ops.three_interpolate(feats, i, w)
    assert torch.equal(out, ref.three_interpolate(feats, i, w))
    manual = (w.unsqueeze(-1) * torch.stack([feats[b][i[b]] for b in range(2)])).sum(2)
    torch.testing.assert_close(out, manual)


def test_gradcheck_gather(native):
    pts = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 9, (2, 5, 3))
    assert torch.autograd.gradcheck(lambda p: ops.gather_points(p, idx), (pts,))


def test_gradcheck_three_interpolate(native):
    feats = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 8, (2, 6, 3))
    w = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.three_interpolate, (feats, idx, w))


def test_gradcheck_chamfer(native):
    a = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)

    def f(x, y):
        da, _, db, _ = ops.chamfer_l2(x, y)
        return da, db

    assert torch.autograd.gradcheck(f, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: ops.chamfer_l2_loss(x, y), (a, b))


def test_gradcheck_reference_ops(monkeypatch):
    monkeypatch.setenv("CLORA3D_OPS", "reference")
    a = torch.randn(1, 7, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.chamfer_l2(x, y)[0], (a, b))
    f = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 6, (1, 4, 3))
    w = torch.rand(1, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.three_interpolate, (f, idx, w))


# ----------------------------------------------------------------------------- Chamfer
@pytest.mark.parametrize("name", ["random", "duplicated", "all_equal", "collinear", "grid_ties", "large_1e4"])
def test_chamfer_parity_and_bruteforce(native, name):
    a = CLOUDS[name]
    b = a.flip(1)[:, : max(1, a.shape[1] // 2)] + 0.5
    da, ia, db, ib = ops.chamfer_l2(a, b)
    for x, y in zip((da, ia, db, ib), ref.chamfer_l2(a, b)):
        assert torch.equal(x, y)
    nd, ni = numpy_knn(a[0].numpy(), b[0].numpy(), 1)
    np.testing.assert_array_equal(ia[0].numpy(), ni[:, 0])
    np.testing.assert_array_equal(da[0].numpy(), nd[:, 0])


def test_chamfer_grad_matches_reference(native):
    a = torch.randn(3, 200, 3, requires_grad=True)
    b = torch.randn(3, 150, 3, requires_grad=True)
    ops.chamfer_l2_loss(a, b).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    ref.chamfer_l2_loss(a, b).backward()
    torch.testing.assert_close(ga, a.grad)
    torch.testing.assert_close(gb, b.grad)


def test_chamfer_loss_formula(native):
    # cloud 0 by hand: a = (0,0,0), (2,0,0), (0,3,0); b = (0,1,0), (2,0,1)
    #   dist_a: min(1, 5) = 1, min(5, 1) = 1, min(4, 14) = 4   -> sum 6, mean 2
    #   dist_b: min(1, 5, 4) = 1, min(5, 1, 14) = 1            -> sum 2, mean 1
    # cloud 1 = cloud 0 scaled by 2: every squared distance x 4 -> dist_a mean 8, dist_b mean 4
    # loss = mean over all (cloud, point) of dist_a + same of dist_b = (2+8)/2 + (1+4)/2 = 7.5
    # (sums would give 40, the mean of the concatenation 40/10 = 4, Euclidean distances differ too)
    a0 = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0.0, 3, 0]])
    b0 = torch.tensor([[0.0, 1, 0], [2.0, 0, 1]])
    a, b = torch.stack([a0, 2 * a0]), torch.stack([b0, 2 * b0])
    da, ia, db, ib = ops.chamfer_l2(a, b)
    assert da.tolist() == [[1.0, 1.0, 4.0], [4.0, 4.0, 16.0]] and ia.tolist() == [[0, 1, 0], [0, 1, 0]]
    assert db.tolist() == [[1.0, 1.0], [4.0, 4.0]] and ib.tolist() == [[0, 1], [0, 1]]
    assert float(ops.chamfer_l2_loss(a, b)) == pytest.approx(7.5, abs=1e-6)
    assert float(ops.chamfer_l2_loss(b, a)) == pytest.approx(7.5, abs=1e-6)


# ----------------------------------------------------------------------------- layouts and dtypes
def test_noncontiguous_and_expanded_inputs(native):
    base = torch.rand(2, 3, 60)
    xyz = base.transpose(1, 2)  # (2,60,3) non-contiguous
    assert not xyz.is_contiguous()
    assert torch.equal(ops.furthest_point_sample(xyz, 10), ref.furthest_point_sample(xyz.contiguous(), 10))
    q = torch.rand(1, 5, 3).expand(2, 5, 3)  # expanded (stride 0 in batch)
    d, i = ops.knn(q, xyz, 4)
    rd, ri = ref.knn(q.contiguous(), xyz.contiguous(), 4)
    assert torch.equal(i, ri) and torch.equal(d, rd)
    feats = torch.randn(2, 16, 60).transpose(1, 2)
    idx = torch.randint(0, 60, (2, 9))
    assert torch.equal(ops.gather_points(feats, idx), ref.gather_points(feats.contiguous(), idx))
    a, b = xyz[:, ::2], xyz[:, 1::3]
    for x, y in zip(ops.chamfer_l2(a, b), ref.chamfer_l2(a.contiguous(), b.contiguous())):
        assert torch.equal(x, y)


def test_half_coordinates_computed_in_float32(native):
    xyz = torch.rand(2, 40, 3).half()
    assert torch.equal(ops.furthest_point_sample(xyz, 8), ref.furthest_point_sample(xyz.float(), 8))
    d, _ = ops.knn(xyz, xyz, 3)
    assert d.dtype == torch.float32


def test_mixed_float32_float64_pair_raises(native):
    a32, b64 = torch.rand(1, 10, 3), torch.rand(1, 8, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"chamfer_l2: a is torch.float32 but b is torch.float64"):
        ops.chamfer_l2(a32, b64)
    with pytest.raises(ValueError, match=r"knn: query is torch.float64 but ref is torch.float32"):
        ops.knn(b64, a32, 2)
    with pytest.raises(ValueError, match=r"three_nn: unknown is torch.float32 but known is torch.float64"):
        ops.three_nn(a32, b64)
    # float16/bfloat16 are computed in float32, so a half/float32 pair is one dtype
    da, _, db, _ = ops.chamfer_l2(a32.half(), b64.float())
    assert da.dtype == torch.float32 and db.dtype == torch.float32


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.furthest_point_sample(torch.rand(2, 10), 3), r"xyz must have shape \(B, N, 3\)"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 10, 4), 3), r"xyz must have shape"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 10, 3), 11), r"S must be in \[1, N=10\], got 11"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 10, 3), 0), r"S must be in"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 10, 3), 2, start=10), r"start must be in"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 0, 3), 1), r"at least one point"),
        (lambda: ops.furthest_point_sample(torch.rand(2, 5, 3).int(), 1), r"float32 or float64"),
        (lambda: ops.furthest_point_sample(torch.tensor([[[0.0, float("nan"), 0]]]), 1), r"NaN or infinite"),
        (lambda: ops.furthest_point_sample(torch.rand(1, 5, 3), 2.5), r"S must be an int"),
        (lambda: ops.knn(torch.rand(2, 4, 3), torch.rand(2, 5, 3), 6), r"k must be in \[1, N"),
        (lambda: ops.knn(torch.rand(2, 4, 3), torch.rand(3, 5, 3), 2), r"batch size"),
        (lambda: ops.knn(torch.rand(2, 4, 3), torch.rand(2, 0, 3), 1), r"ref must hold at least one point"),
        (lambda: ops.knn(torch.rand(2, 4, 3), torch.tensor([[[float("inf"), 0, 0]]] * 2), 1), r"ref contains NaN"),
        (lambda: ops.three_nn(torch.rand(1, 4, 3), torch.rand(1, 2, 3)), r"at least 3 points"),
        (lambda: ops.gather_points(torch.rand(1, 5, 2), torch.tensor([[5]])), r"indices in \[0, 5\)"),
        (lambda: ops.gather_points(torch.rand(1, 5, 2), torch.tensor([[-1]])), r"indices in \[0, 5\)"),
        (lambda: ops.gather_points(torch.rand(1, 5, 2), torch.tensor([[0.0]])), r"integer"),
        (lambda: ops.gather_points(torch.rand(5, 2), torch.tensor([[0]])), r"points must have shape"),
        (lambda: ops.gather_points(torch.rand(2, 5, 2), torch.tensor([[0]])), r"batch size"),
        (
            lambda: ops.three_interpolate(
                torch.rand(1, 5, 2), torch.zeros(1, 3, 3, dtype=torch.long), torch.rand(1, 3, 2)
            ),
            r"weight must have the shape",
        ),
        (
            lambda: ops.three_interpolate(
                torch.rand(1, 5, 2), torch.zeros(1, 3, 2, dtype=torch.long), torch.rand(1, 3, 2)
            ),
            r"idx must have shape \(B, n, 3\)",
        ),
        (lambda: ops.chamfer_l2(torch.rand(1, 4, 3), torch.rand(1, 0, 3)), r"b must hold at least one point"),
        (lambda: ops.chamfer_l2(torch.rand(1, 4, 3), "x"), r"b must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# Direct calls of the compiled operators with bad arguments: tests/test_ops_direct.py (in a child
# process, so that a crash fails one test instead of the run).


@needs_native
def test_build_info_keys():
    info = _C.build_info()
    assert info["cpu"] is True
    for key in ("openmp", "cuda", "cuda_archs", "compiler", "torch_version"):
        assert key in info
    # meta tensors get the fake implementation (shapes only), as torch.compile's tracing does
    out = torch.ops.clora3d.fps(torch.empty(2, 9, 3, device="meta"), 4, 0)
    assert out.device.type == "meta" and out.shape == (2, 4) and out.dtype == torch.int64


# ----------------------------------------------------------------------------- backend selection
def test_reference_forced_by_env(monkeypatch):
    monkeypatch.setenv("CLORA3D_OPS", "reference")
    info = ops.backend_info()
    assert info["mode"] == "reference"
    assert info["ops"]["knn"]["cpu"]["backend"] == "reference"
    xyz = torch.rand(1, 20, 3)
    assert torch.equal(ops.furthest_point_sample(xyz, 5), ref.furthest_point_sample(xyz, 5))


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv("CLORA3D_OPS", "fast")
    with pytest.raises(ValueError, match="CLORA3D_OPS"):
        ops.furthest_point_sample(torch.rand(1, 5, 3), 2)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv("CLORA3D_OPS", raising=False)
    monkeypatch.setattr(_backend, "_native_tried", True)
    monkeypatch.setattr(_backend, "_native", None)
    monkeypatch.setattr(_backend, "_native_error", "ImportError: simulated")
    monkeypatch.setattr(_backend, "_warned", False)
    xyz = torch.rand(1, 20, 3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ops.furthest_point_sample(xyz, 4)
        ops.knn(xyz, xyz, 2)
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "reference" in msgs[0]
    assert ops.backend_info()["ops"]["furthest_point_sample"]["cpu"]["backend"] == "reference"
    monkeypatch.setenv("CLORA3D_OPS", "native")
    with pytest.raises(ops.NativeOpsUnavailableError, match="not importable"):
        ops.furthest_point_sample(xyz, 4)


@needs_native
def test_backend_info_native():
    info = ops.backend_info()
    assert info["native_available"] and info["build_info"]["cpu"]
    if info["mode"] != "reference":
        assert info["ops"]["chamfer_l2"]["cpu"]["backend"] == "native"


@needs_native
def test_results_independent_of_thread_count():
    g = torch.Generator().manual_seed(5)
    xyz = torch.rand(4, 4096, 3, generator=g)
    q = torch.rand(4, 512, 3, generator=g)
    n = torch.get_num_threads()
    try:
        out = {}
        for th in (1, 2):
            torch.set_num_threads(th)
            C = torch.ops.clora3d
            out[th] = (C.fps(xyz, 256, 0), *C.knn(q, xyz, 16), *C.chamfer_forward(q, xyz))
    finally:
        torch.set_num_threads(n)
    for x, y in zip(out[1], out[2]):
        assert torch.equal(x, y)


def _child_knn(q, xyz, conn):
    d, i = ops.knn(q, xyz, 8)  # a job large enough for the thread pool
    conn.send(i.tolist())  # plain data: torch's tensor pickling would pass shared-memory fds
    conn.close()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_ops_work_in_forked_child_after_pool_use(native):
    import multiprocessing as mp

    g = torch.Generator().manual_seed(6)
    xyz = torch.rand(4, 4096, 3, generator=g)
    q = torch.rand(4, 512, 3, generator=g)
    _, want = ops.knn(q, xyz, 8)  # parent starts the helper threads
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_knn, args=(q, xyz, send))
    p.start()
    assert recv.poll(60), "forked child did not finish (thread pool deadlock after fork?)"
    got = torch.tensor(recv.recv())
    p.join(10)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- exact messages
_P = torch.rand(2, 5, 3)
_I = torch.zeros(2, 3, dtype=torch.long)
_I3 = torch.zeros(2, 4, 3, dtype=torch.long)
_W = torch.rand(2, 4, 3)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ops.furthest_point_sample("x", 2), "furthest_point_sample: xyz must be a torch.Tensor, got str"),
        (
            lambda: ops.furthest_point_sample(_P, 2, start=-1),
            "furthest_point_sample: start must be in [0, N-1=4], got -1",
        ),
        (lambda: ops.fps_sample(_P, 6), "furthest_point_sample: S must be in [1, N=5], got 6"),
        (lambda: ops.knn("x", _P, 2), "knn: query must be a torch.Tensor, got str"),
        (lambda: ops.knn(_P, "x", 2), "knn: ref must be a torch.Tensor, got str"),
        (lambda: ops.knn(torch.rand(2, 4, 2), _P, 2), "knn: query must have shape (B, N, 3), got (2, 4, 2)"),
        (
            lambda: ops.knn(_P, torch.rand(1, 5, 3), 2),
            "knn: ref has batch size 1 (shape (1, 5, 3)) but query has 2 (shape (2, 5, 3)); expected the same batch size",
        ),
        (lambda: ops.knn(_P, _P, 6), "knn: k must be in [1, N (points in ref)=5], got 6"),
        (lambda: ops.knn(_P, _P, 2.0), "knn: k must be an int, got float 2.0"),
        (lambda: ops.gather_points("x", _I), "gather_points: points must be a torch.Tensor, got str"),
        (lambda: ops.gather_points(_P, "x"), "gather_points: idx must be a torch.Tensor, got str"),
        (
            lambda: ops.gather_points(_P, torch.zeros(1, 3, dtype=torch.long)),
            "gather_points: idx has batch size 1 (shape (1, 3)) but points has 2 (shape (2, 5, 3)); expected the same batch size",
        ),
        (
            lambda: ops.gather_points(_P, torch.full((2, 3), 5)),
            "gather_points: idx must hold indices in [0, 5), got values in [5, 5]",
        ),
        (
            lambda: ops.gather_points(_P, torch.zeros(2, dtype=torch.long)),
            "gather_points: idx must be 2-D or 3-D, got shape (2)",
        ),
        (lambda: ops.three_nn("x", _P), "three_nn: unknown must be a torch.Tensor, got str"),
        (lambda: ops.three_nn(_P, "x"), "three_nn: known must be a torch.Tensor, got str"),
        (
            lambda: ops.three_nn(_P, torch.rand(1, 5, 3)),
            "three_nn: known has batch size 1 (shape (1, 5, 3)) but unknown has 2 (shape (2, 5, 3)); expected the same batch size",
        ),
        (
            lambda: ops.three_nn(torch.full((2, 1, 3), float("nan")), _P),
            "three_nn: unknown contains NaN or infinite coordinates; expected finite values",
        ),
        (lambda: ops.three_interpolate("x", _I3, _W), "three_interpolate: features must be a torch.Tensor, got str"),
        (lambda: ops.three_interpolate(_P, "x", _W), "three_interpolate: idx must be a torch.Tensor, got str"),
        (lambda: ops.three_interpolate(_P, _I3, "x"), "three_interpolate: weight must be a torch.Tensor, got str"),
        (
            lambda: ops.three_interpolate(_P, torch.full((2, 4, 3), 5), _W),
            "three_interpolate: idx must hold indices in [0, 5), got values in [5, 5]",
        ),
        (
            lambda: ops.three_interpolate(_P, _I3, torch.rand(1, 4, 3)),
            "three_interpolate: weight must have the shape of idx (2, 4, 3), got (1, 4, 3)",
        ),
        (
            lambda: ops.three_interpolate(_P, _I3, _I3),
            "three_interpolate: weight must be a floating point tensor, got torch.int64",
        ),
        (
            lambda: ops.three_interpolate(_P.long(), _I3, _W),
            "three_interpolate: features must be a floating point tensor, got torch.int64",
        ),
        (lambda: ops.chamfer_l2("x", _P), "chamfer_l2: a must be a torch.Tensor, got str"),
        (
            lambda: ops.chamfer_l2(torch.full((2, 1, 3), float("nan")), _P),
            "chamfer_l2: a contains NaN or infinite coordinates; expected finite values",
        ),
        (
            lambda: ops.chamfer_l2(_P, torch.rand(1, 5, 3)),
            "chamfer_l2: b has batch size 1 (shape (1, 5, 3)) but a has 2 (shape (2, 5, 3)); expected the same batch size",
        ),
        (
            lambda: ops.chamfer_l2_loss(torch.rand(0, 5, 3), torch.rand(0, 5, 3)),
            "chamfer_l2_loss: empty batch (B = 0): the mean over no clouds is undefined; skip the loss for an empty batch",
        ),
    ],
)
def test_error_messages_name_the_op_and_the_argument_exactly(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_reference_backend_forced_gives_the_native_answers(monkeypatch):
    # every op through the pure-PyTorch path (CLORA3D_OPS=reference) against the native path
    g = torch.Generator().manual_seed(8)
    xyz, q = torch.rand(2, 40, 3, generator=g), torch.rand(2, 7, 3, generator=g)
    feats = torch.randn(2, 40, 5, generator=g)
    native = (
        ops.furthest_point_sample(xyz, 6, start=3),
        ops.fps_sample(xyz, 6),
        ops.knn(q, xyz, 4),
        ops.three_nn(q, xyz),
        ops.gather_points(feats, torch.tensor([[1, 2], [3, 39]])),
    )
    monkeypatch.setenv("CLORA3D_OPS", "reference")
    got = (
        ops.furthest_point_sample(xyz, 6, start=3),
        ops.fps_sample(xyz, 6),
        ops.knn(q, xyz, 4),
        ops.three_nn(q, xyz),
        ops.gather_points(feats, torch.tensor([[1, 2], [3, 39]])),
    )
    assert got[0][:, 0].tolist() == [3, 3] and torch.equal(got[0], native[0])
    assert torch.equal(got[1], native[1]) and torch.equal(got[4], native[4])
    for (d, i), (nd, ni) in zip(got[2:4], native[2:4]):
        assert torch.equal(d, nd) and torch.equal(i, ni)
    assert torch.equal(got[4], feats[torch.arange(2)[:, None], torch.tensor([[1, 2], [3, 39]])])


def test_empty_query_sets_are_allowed():
    # knn / three_nn accept M = 0 queries (an empty result), unlike an empty reference cloud
    ref_pts = torch.rand(2, 5, 3)
    d, i = ops.knn(torch.rand(2, 0, 3), ref_pts, 2)
    assert d.shape == (2, 0, 2) and i.shape == (2, 0, 2)
    d, i = ops.three_nn(torch.rand(2, 0, 3), ref_pts)
    assert d.shape == (2, 0, 3) and i.shape == (2, 0, 3)

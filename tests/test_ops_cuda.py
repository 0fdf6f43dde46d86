"""CUDA kernels of clora3d._C vs the CPU reference (skipped without a GPU or a CUDA build).

``CLORA3D_CUDA_TESTS_ON_CPU=1`` runs these tests' bodies on the CPU kernels instead ("the CPU twin",
``tests/test_gpu_check.py`` does it on every run): the CPU kernels follow the same exactness and tie
rules, so a test whose own logic is wrong (bad arguments, a wrong reference) fails here, on a machine
without a GPU, and not for the first time on one. Tests of CUDA-only behaviour (half-type kernels,
host syncs) skip in the twin.
"""

from __future__ import annotations

import os

import pytest
import torch

import clora3d.ops as ops
from clora3d.ops import reference as ref

pytestmark = pytest.mark.cuda

#: the CPU twin (see the module docstring)
ON_CPU = os.environ.get("CLORA3D_CUDA_TESTS_ON_CPU", "") not in ("", "0")
DEV = "cpu" if ON_CPU else "cuda"
cuda_behaviour = pytest.mark.skipif(ON_CPU, reason="CUDA-only behaviour: not run in the CPU twin")


@pytest.fixture
def cuda_native(monkeypatch):
    if not ON_CPU and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        import clora3d._C as C
    except ImportError:
        pytest.skip("compiled extension clora3d._C is not built")
    if not ON_CPU and not C.build_info()["cuda"]:
        pytest.skip("clora3d._C was built without CUDA kernels")
    monkeypatch.setenv("CLORA3D_OPS", "native")
    return C


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fps_matches_reference(cuda_native, dtype):
    xyz = torch.rand(4, 2000, 3, dtype=dtype)
    got = ops.furthest_point_sample(xyz.to(DEV), 128, start=3)
    assert torch.equal(got.cpu(), ref.furthest_point_sample(xyz, 128, 3))


@pytest.mark.parametrize("k", [1, 3, 32])
def test_cuda_knn_matches_reference(cuda_native, k):
    xyz = torch.rand(4, 1024, 3)
    q = torch.rand(4, 64, 3)
    d, i = ops.knn(q.to(DEV), xyz.to(DEV), k)
    rd, ri = ref.knn(q, xyz, k)
    assert torch.equal(i.cpu(), ri)
    torch.testing.assert_close(d.cpu(), rd)


def test_cuda_knn_ties(cuda_native):
    xyz = torch.randint(0, 3, (2, 200, 3)).float()
    d, i = ops.knn(xyz.to(DEV), xyz.to(DEV), 16)
    rd, ri = ref.knn(xyz, xyz, 16)
    assert torch.equal(i.cpu(), ri) and torch.equal(d.cpu(), rd)


def _tied_cloud(B: int, N: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Points on a coarse grid, the second half duplicating the first: many exact distance ties."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, N, 3, generator=g, dtype=torch.float64) * 4).round() / 4
    x[:, N - N // 2 :] = x[:, : N // 2].clone()
    return x.to(dtype)


# k at the edges of the kNN kernels (knn_kernels.cuh): warp per query up to 32, a thread-local
# list up to 128, then the full sorted distance matrix; N across tile boundaries (256 points).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 128, 129])
def test_cuda_knn_kernel_boundaries_with_ties(cuda_native, k, dtype):
    refs = _tied_cloud(3, 513, dtype, seed=k)
    query = torch.cat([_tied_cloud(3, 70, dtype, seed=k + 1), refs[:, [0, 512]]], dim=1)
    d, i = ops.knn(query.to(DEV), refs.to(DEV), k)
    rd, ri = ref.knn(query, refs, k)
    assert torch.equal(i.cpu(), ri) and torch.equal(d.cpu(), rd)


# N at the edges of the FPS kernels (fps_kernels.cuh): 4 points per thread up to 4096, 8 up to
# 8192, then the generic kernel (shared memory when the cloud fits, else global memory).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [23, 1024, 4096, 4097, 8192, 8193, 30000])
def test_cuda_fps_kernel_boundaries_with_ties(cuda_native, N, dtype):
    xyz = _tied_cloud(2, N, dtype, seed=N)
    S = min(48, N)  # S <= N (N = 23: every point, the duplicates' zero-distance rule included)
    got = ops.furthest_point_sample(xyz.to(DEV), S, start=N - 1)
    assert torch.equal(got.cpu(), ref.furthest_point_sample(xyz, S, N - 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_three_nn_and_interpolate(cuda_native, dtype):
    known, unknown = torch.rand(2, 100, 3), torch.rand(2, 500, 3)
    d, i = ops.three_nn(unknown.to(DEV), known.to(DEV))
    rd, ri = ref.three_nn(unknown, known)
    assert torch.equal(i.cpu(), ri)
    feats = torch.randn(2, 100, 16, dtype=dtype, requires_grad=True)
    w = ops.interpolation_weights(rd).to(dtype)
    fc = feats.detach().to(DEV).requires_grad_(True)
    out = ops.three_interpolate(fc, ri.to(DEV), w.to(DEV))
    # the reference's sum order without FMA contraction: bit-identical
    assert torch.equal(out.detach().cpu(), ref.three_interpolate(feats, ri, w).detach())
    out.sum().backward()
    ref.three_interpolate(feats, ri, w).sum().backward()
    torch.testing.assert_close(fc.grad.cpu(), feats.grad)


def test_cuda_gather_and_backward(cuda_native):
    pts = torch.randn(3, 50, 8, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 50, (3, 20, 4))
    pc = pts.detach().to(DEV).requires_grad_(True)
    out = ops.gather_points(pc, idx.to(DEV))
    torch.testing.assert_close(out.cpu(), ref.gather_points(pts, idx))
    out.sum().backward()
    ref.gather_points(pts, idx).sum().backward()
    torch.testing.assert_close(pc.grad.cpu(), pts.grad)


def test_cuda_chamfer_forward_backward(cuda_native):
    a = torch.randn(4, 600, 3, requires_grad=True)
    b = torch.randn(4, 500, 3, requires_grad=True)
    ac, bc = a.detach().to(DEV).requires_grad_(True), b.detach().to(DEV).requires_grad_(True)
    got = ops.chamfer_l2(ac, bc)
    want = ref.chamfer_l2(a, b)
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[3].cpu(), want[3])
    torch.testing.assert_close(got[0].cpu(), want[0])
    (got[0].mean() + got[2].mean()).backward()
    (want[0].mean() + want[2].mean()).backward()
    torch.testing.assert_close(ac.grad.cpu(), a.grad)
    torch.testing.assert_close(bc.grad.cpu(), b.grad)


def test_cuda_gradcheck_chamfer(cuda_native):
    a = torch.randn(1, 10, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    b = torch.randn(1, 7, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.chamfer_l2(x, y)[0], (a, b))


# float16 / bfloat16 through the public ops on CUDA (compiled kernels, accumulated in float32 and
# rounded once), forward and backward, against float64 references. Tolerances: the rounding of the
# inputs and of the result to the half type (float16: 2^-11 relative, bfloat16: 2^-8), times the
# magnitudes involved (|features| <~ 4, three weights summing to 1, up to a few scatter-adds).
HALF_TOL = {torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}


@cuda_behaviour
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_gather_and_interpolation_forward_backward(cuda_native, dtype):
    g = torch.Generator().manual_seed(4)
    feat64 = torch.randn(2, 60, 8, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 60, (2, 40, 3), generator=g)
    w64 = torch.rand(2, 40, 3, generator=g, dtype=torch.float64)
    w64 = w64 / w64.sum(-1, keepdim=True)
    gout = torch.randn(2, 40, 8, generator=g, dtype=torch.float64)

    feat = feat64.to(DEV, dtype).requires_grad_(True)
    w = w64.to(DEV, dtype).requires_grad_(True)
    out = ops.three_interpolate(feat, idx.to(DEV), w)
    assert out.dtype == dtype
    out.backward(gout.to(DEV, dtype))
    f64 = feat64.clone().requires_grad_(True)
    ww64 = w64.clone().requires_grad_(True)
    ref_out = ref.three_interpolate(f64, idx, ww64)
    ref_out.backward(gout)
    torch.testing.assert_close(out.double().cpu(), ref_out.detach(), **HALF_TOL[dtype])
    torch.testing.assert_close(feat.grad.double().cpu(), f64.grad, **HALF_TOL[dtype])
    torch.testing.assert_close(w.grad.double().cpu(), ww64.grad, **{k: 4 * v for k, v in HALF_TOL[dtype].items()})

    pts = feat64.to(DEV, dtype).requires_grad_(True)
    gi = idx[..., 0].to(DEV)
    got = ops.gather_points(pts, gi)
    assert torch.equal(got.double().cpu(), feat64.to(dtype).double()[torch.arange(2)[:, None], idx[..., 0]])  # exact
    got.backward(torch.ones_like(got))
    counts = torch.zeros(2, 60, dtype=torch.float64).scatter_add_(
        1, idx[..., 0], torch.ones(2, 40, dtype=torch.float64)
    )
    assert torch.equal(pts.grad.double().cpu(), counts[..., None].expand(2, 60, 8))  # small integers: exact


@cuda_behaviour
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_backward_accumulates_in_float32(cuda_native, dtype):
    """4096 gradients of 0.01 scattered into one row: accumulated in the half type the sum would stall
    far below 40.96 (float16 spacing is 0.03 above 32, bfloat16's 0.25); in float32 and rounded once
    it is 40.96 to the half type's rounding."""
    S = 4096
    idx = torch.zeros(1, S, dtype=torch.long, device=DEV)
    pts = torch.zeros(1, 5, 2, dtype=dtype, device=DEV, requires_grad=True)
    ops.gather_points(pts, idx).backward(torch.full((1, S, 2), 0.01, dtype=dtype, device=DEV))
    want = S * float(torch.tensor(0.01, dtype=dtype))
    torch.testing.assert_close(
        pts.grad[0, 0].double().cpu(), torch.full((2,), want, dtype=torch.float64), rtol=1e-2, atol=0
    )
    assert not pts.grad[0, 1:].any()
    feats = torch.zeros(1, 5, 2, dtype=dtype, device=DEV, requires_grad=True)
    tri = torch.zeros(1, S, 3, dtype=torch.long, device=DEV)
    w = torch.full((1, S, 3), 1.0, dtype=dtype, device=DEV)
    ops.three_interpolate(feats, tri, w).backward(torch.full((1, S, 2), 0.01, dtype=dtype, device=DEV))
    torch.testing.assert_close(
        feats.grad[0, 0].double().cpu(), torch.full((2,), 3 * want, dtype=torch.float64), rtol=1e-2, atol=0
    )


@cuda_behaviour
def test_cuda_training_step_does_not_synchronise(cuda_native):
    """Forward and backward of the classifier on CUDA read nothing back to the host: with
    torch.cuda's sync debug mode set to "error", any device-to-host sync raises."""
    from clora3d.models import build_model

    torch.manual_seed(0)
    model = build_model({"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5}).to(DEV).train()
    pts = torch.rand(4, 512, 3, device=DEV)
    model(pts).sum().backward()  # warm-up (lazy inits may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = model(pts).float().pow(2).mean()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()

"""CUDA kernels of clora3d._C vs the CPU reference (skipped without a GPU or a CUDA build)."""
from __future__ import annotations

import pytest
import torch

import clora3d.ops as ops
from clora3d.ops import reference as ref

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda_native(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        import clora3d._C as C
    except ImportError:
        pytest.skip("compiled extension clora3d._C is not built")
    if not C.build_info()["cuda"]:
        pytest.skip("clora3d._C was built without CUDA kernels")
    monkeypatch.setenv("CLORA3D_OPS", "native")
    return C


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fps_matches_reference(cuda_native, dtype):
    xyz = torch.rand(4, 2000, 3, dtype=dtype)
    got = ops.furthest_point_sample(xyz.cuda(), 128, start=3)
    assert torch.equal(got.cpu(), ref.furthest_point_sample(xyz, 128, 3))


@pytest.mark.parametrize("k", [1, 3, 32])
def test_cuda_knn_matches_reference(cuda_native, k):
    xyz = torch.rand(4, 1024, 3)
    q = torch.rand(4, 64, 3)
    d, i = ops.knn(q.cuda(), xyz.cuda(), k)
    rd, ri = ref.knn(q, xyz, k)
    assert torch.equal(i.cpu(), ri)
    torch.testing.assert_close(d.cpu(), rd)


def test_cuda_knn_ties(cuda_native):
    xyz = torch.randint(0, 3, (2, 200, 3)).float()
    d, i = ops.knn(xyz.cuda(), xyz.cuda(), 16)
    rd, ri = ref.knn(xyz, xyz, 16)
    assert torch.equal(i.cpu(), ri) and torch.equal(d.cpu(), rd)


def test_cuda_three_nn_and_interpolate(cuda_native):
    known, unknown = torch.rand(2, 100, 3), torch.rand(2, 500, 3)
    d, i = ops.three_nn(unknown.cuda(), known.cuda())
    rd, ri = ref.three_nn(unknown, known)
    assert torch.equal(i.cpu(), ri)
    feats = torch.randn(2, 100, 16, dtype=torch.float64, requires_grad=True)
    w = ops.interpolation_weights(rd).double()
    fc = feats.detach().cuda().requires_grad_(True)
    out = ops.three_interpolate(fc, ri.cuda(), w.cuda())
    torch.testing.assert_close(out.cpu(), ref.three_interpolate(feats, ri, w))
    out.sum().backward()
    ref.three_interpolate(feats, ri, w).sum().backward()
    torch.testing.assert_close(fc.grad.cpu(), feats.grad)


def test_cuda_gather_and_backward(cuda_native):
    pts = torch.randn(3, 50, 8, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 50, (3, 20, 4))
    pc = pts.detach().cuda().requires_grad_(True)
    out = ops.gather_points(pc, idx.cuda())
    torch.testing.assert_close(out.cpu(), ref.gather_points(pts, idx))
    out.sum().backward()
    ref.gather_points(pts, idx).sum().backward()
    torch.testing.assert_close(pc.grad.cpu(), pts.grad)


def test_cuda_chamfer_forward_backward(cuda_native):
    a = torch.randn(4, 600, 3, requires_grad=True)
    b = torch.randn(4, 500, 3, requires_grad=True)
    ac, bc = a.detach().cuda().requires_grad_(True), b.detach().cuda().requires_grad_(True)
    got = ops.chamfer_l2(ac, bc)
    want = ref.chamfer_l2(a, b)
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[3].cpu(), want[3])
    torch.testing.assert_close(got[0].cpu(), want[0])
    (got[0].mean() + got[2].mean()).backward()
    (want[0].mean() + want[2].mean()).backward()
    torch.testing.assert_close(ac.grad.cpu(), a.grad)
    torch.testing.assert_close(bc.grad.cpu(), b.grad)


def test_cuda_gradcheck_chamfer(cuda_native):
    a = torch.randn(1, 10, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(1, 7, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.chamfer_l2(x, y)[0], (a, b))

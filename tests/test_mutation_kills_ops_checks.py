"""Input checks and dispatch of clora3d.ops on the cases the mutation run found unguarded: meta
tensors, 0-d integer tensors as counts, the inclusive upper bounds of S and k, 0-d / 1-d tensors
in the batch check, every argument named in the batch check of three_interpolate, empty gathers,
the weight dtype cast, and which backend computes an op. Answers are checked against brute-force
numpy or hand-written messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clora3d import ops
from clora3d.ops import _backend, _checks
from clora3d.ops import reference as ref_mod

_P = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0))


def _message(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_meta_tensor_is_refused_with_its_name():
    meta = torch.empty(2, 5, 3, device="meta")
    assert _message(lambda: ops.knn(meta, _P, 2)) == (
        "knn: query is a meta tensor (shape only, no data); pass a tensor on cpu or cuda"
    )
    assert _message(lambda: ops.furthest_point_sample(meta, 2)) == (
        "furthest_point_sample: xyz is a meta tensor (shape only, no data); pass a tensor on cpu or cuda"
    )


def test_batch_check_device_and_scalar_messages():
    a = torch.zeros(2, 3)
    assert _message(lambda: _checks.same_batch_device("op", ("a", a), ("b", torch.zeros(2, 3, device="meta")))) == (
        "op: b is on meta but a is on cpu; expected the same device"
    )
    assert _message(lambda: _checks.same_batch_device("op", ("a", a), ("b", torch.tensor(1.0)))) == (
        "op: b has batch size none (shape ()) but a has 2 (shape (2, 3)); expected the same batch size"
    )
    # a 1-D tensor with the same batch size passes (only 0-d tensors have no batch)
    _checks.same_batch_device("op", ("a", a), ("b", torch.zeros(2)))


def test_zero_dim_integer_tensor_counts_like_an_int():
    xyz = torch.rand(2, 30, 3, generator=torch.Generator().manual_seed(1))
    for S in (torch.tensor(7), torch.tensor(7, dtype=torch.int32), np.int64(7)):
        assert torch.equal(ops.furthest_point_sample(xyz, S), ops.furthest_point_sample(xyz, 7))
    d, i = ops.knn(xyz, xyz, torch.tensor(4))
    assert i.shape == (2, 30, 4)
    assert _message(lambda: ops.knn(xyz, xyz, torch.tensor(4.0))) == "knn: k must be an int, got Tensor tensor(4.)"
    assert _message(lambda: ops.knn(xyz, xyz, torch.tensor(True))) == "knn: k must be an int, got Tensor tensor(True)"
    assert _message(lambda: ops.knn(xyz, xyz, torch.tensor([4]))) == "knn: k must be an int, got Tensor tensor([4])"


def test_upper_bounds_are_inclusive():
    # S = N samples every point once; k = N returns every point, nearest first
    xyz = torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(2))
    idx = ops.furthest_point_sample(xyz, 9)
    assert [sorted(r) for r in idx.tolist()] == [list(range(9))] * 2
    d, i = ops.knn(xyz[:, :4], xyz, 9)
    x = xyz.double().numpy()
    for b in range(2):
        for m in range(4):
            dist = ((x[b] - x[b, m]) ** 2).sum(-1)
            assert i[b, m].tolist() == np.argsort(dist, kind="stable").tolist()
    assert _message(lambda: ops.knn(xyz, xyz, 10)) == "knn: k must be in [1, N (points in ref)=9], got 10"


def test_three_interpolate_names_each_argument_in_the_batch_check():
    f = torch.rand(2, 5, 4)
    idx = torch.zeros(3, 7, 3, dtype=torch.long)
    assert _message(lambda: ops.three_interpolate(f, idx, torch.rand(3, 7, 3))) == (
        "three_interpolate: idx has batch size 3 (shape (3, 7, 3)) but features has 2 (shape (2, 5, 4)); "
        "expected the same batch size"
    )
    assert _message(lambda: ops.three_interpolate(torch.rand(2, 5), idx, torch.rand(3, 7, 3))) == (
        "three_interpolate: features must have shape (B, m, C), got (2, 5)"
    )
    assert _message(lambda: ops.chamfer_l2(_P, torch.rand(2, 5))) == (
        "chamfer_l2: b must have shape (B, N, 3), got (2, 5)"
    )


def test_three_interpolate_casts_float64_weights_to_the_features_dtype():
    g = torch.Generator().manual_seed(3)
    f = torch.rand(2, 6, 4, generator=g)
    idx = torch.randint(0, 6, (2, 5, 3), generator=g)
    w = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    out = ops.three_interpolate(f, idx, w)
    assert out.dtype == torch.float32
    fn, iw, wn = f.double().numpy(), idx.numpy(), w.float().double().numpy()
    want = np.stack([[sum(wn[b, n, j] * fn[b, iw[b, n, j]] for j in range(3)) for n in range(5)] for b in range(2)])
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,idx_shape", [(0, (0, 4)), (2, (2, 0)), (2, (2, 0, 3)), (0, (0, 3, 2))])
def test_empty_gathers_have_the_right_shape(B, idx_shape):
    pts = torch.rand(B, 5, 3, requires_grad=True)
    out = ops.gather_points(pts, torch.zeros(idx_shape, dtype=torch.long))
    assert out.shape == (*idx_shape, 3) and out.dtype == torch.float32
    out.sum().backward()
    assert torch.equal(pts.grad, torch.zeros_like(pts))


def _spy(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(ref_mod, name)

    def wrapped(*a, **k):
        calls.append(a[0].dtype)
        return real(*a, **k)

    monkeypatch.setattr(ref_mod, name, wrapped)
    return calls


def test_float32_and_float64_run_the_compiled_kernel_other_dtypes_the_reference(monkeypatch):
    if not _backend.use_native(torch.device("cpu")):
        pytest.skip("the compiled kernels are not in use here")
    g = torch.Generator().manual_seed(4)
    gather_calls = _spy(monkeypatch, "gather_points")
    interp_calls = _spy(monkeypatch, "three_interpolate")
    for B, S in ((1, 1), (1, 4), (2, 3)):
        pts = torch.rand(B, 6, 3, generator=g)
        idx = torch.randint(0, 6, (B, S), generator=g)
        for dt in (torch.float32, torch.float64):
            got = ops.gather_points(pts.to(dt), idx)
            assert torch.equal(got, pts.to(dt)[torch.arange(B)[:, None], idx])
        w = torch.rand(B, S, 3, generator=g)
        i3 = torch.randint(0, 6, (B, S, 3), generator=g)
        ops.three_interpolate(pts, i3, w)
        ops.three_interpolate(pts.double(), i3, w.double())
    assert gather_calls == [] and interp_calls == []  # compiled kernels only
    ops.gather_points(torch.arange(12).reshape(1, 4, 3), torch.tensor([[3, 0]]))
    assert gather_calls == [torch.int64]
    ops.three_interpolate(
        torch.rand(1, 6, 3).half(), torch.zeros(1, 2, 3, dtype=torch.long), torch.rand(1, 2, 3).half()
    )
    assert interp_calls == [torch.float16]
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    ops.gather_points(_P, torch.zeros(2, 3, dtype=torch.long))
    ops.three_interpolate(_P, torch.zeros(2, 4, 3, dtype=torch.long), torch.rand(2, 4, 3))
    assert gather_calls[-1] == torch.float32 and interp_calls[-1] == torch.float32

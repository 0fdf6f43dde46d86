"""Value checks where clora3d.ops cannot read values on the host (issue 11): on CUDA tensors and
while torch.compile / torch.export trace. The reference path then asserts asynchronously
(``torch._assert_async``), the compiled kernels check inside the operator; eagerly on the CPU the
host check stays. Fake CUDA tensors (FakeTensorMode) stand in for a GPU.

"While tracing" is simulated by making ``torch.compiler.is_compiling()`` return True (the real
torch.compile runs are in tests/test_compile.py): the mutation tool wraps every function in a
trampoline that Dynamo cannot trace, so these tests must not need Dynamo."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from clora3d import ops
from clora3d.ops import _backend
from clora3d.ops import _checks as ck
from clora3d.ops import reference as ref

NAN = float("nan")


def test_eager_values_only_for_real_cpu_tensors_outside_tracing(monkeypatch):
    assert ck.eager_values(torch.zeros(2)) is True
    with FakeTensorMode():
        fake_cpu = torch.empty(2)
        fake_cuda = torch.empty(2, device="cuda")
    assert ck.eager_values(fake_cpu) is False  # a fake tensor has no values to read
    assert ck.eager_values(fake_cuda) is False  # CUDA: reading would sync the device
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert ck.eager_values(torch.zeros(2)) is False  # while tracing


def test_native_feature_dtype_half_only_on_cuda():
    with FakeTensorMode():
        cuda = {
            dt: torch.empty(1, dtype=dt, device="cuda")
            for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
        }
        cpu = {
            dt: torch.empty(1, dtype=dt)
            for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
        }
    assert [ck.native_feature_dtype(t) for t in cuda.values()] == [True, True, True, True, False]
    assert [ck.native_feature_dtype(t) for t in cpu.values()] == [False, False, True, True, False]


def test_defer_finite_asserts_with_op_and_argument_name(monkeypatch):
    good, bad = torch.rand(1, 4, 3), torch.rand(1, 4, 3)
    bad[0, 1, 2] = NAN
    # eager CPU tensors were checked on the host already: defer_finite adds nothing (no raise)
    ck.defer_finite("knn", ("query", good))
    ck.defer_finite("knn", ("query", bad))

    def traced(a, b):
        ck.defer_finite("chamfer_l2", ("a", a), ("b", b))
        return a + b

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(traced(good, good), good + good)
    with pytest.raises(
        RuntimeError, match=r"^chamfer_l2: b contains NaN or infinite coordinates; expected finite values"
    ):
        traced(good, bad)
    with pytest.raises(RuntimeError, match=r"^chamfer_l2: a contains NaN or infinite coordinates"):
        traced(bad, good)
    empty = torch.rand(1, 0, 3)
    torch.testing.assert_close(traced(empty, empty), empty)  # nothing to check in an empty tensor


@pytest.mark.parametrize(
    "op,args,name",
    [
        ("furthest_point_sample", lambda x, y: (x, 2), "xyz"),
        ("knn", lambda x, y: (x, y, 2), "query"),
        ("knn", lambda x, y: (y, x, 2), "ref"),
        ("three_nn", lambda x, y: (x, y), "unknown"),
        ("three_nn", lambda x, y: (y, x), "known"),
        ("chamfer_l2", lambda x, y: (x, y), "a"),
        ("chamfer_l2", lambda x, y: (y, x), "b"),
    ],
)
def test_reference_path_under_compile_refuses_nan_and_matches_eager(monkeypatch, op, args, name):
    monkeypatch.setenv("CLORA3D_OPS", "reference")
    good = torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(0))
    other = torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(1))
    bad = good.clone()
    bad[1, 3, 0] = NAN
    fn = getattr(ops, op)
    eager = fn(*args(good, other))  # eager call: sets the backend mode that tracing then uses
    with pytest.raises(ValueError, match=rf"{op}: {name} contains NaN"):  # eager: the host check
        fn(*args(bad, other))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setenv("CLORA3D_OPS", "native")  # ignored while tracing: the last eager mode holds

    def compiled(x, y):
        return fn(*args(x, y))

    got = compiled(good, other)
    want = eager if isinstance(eager, tuple) else (eager,)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    with pytest.raises(RuntimeError, match=rf"^{op}: {name} contains NaN or infinite coordinates"):
        compiled(bad, other)


@pytest.mark.skipif(_backend.native_module() is None, reason="compiled extension not built")
def test_native_path_under_compile_refuses_nan_in_the_operator(monkeypatch):
    monkeypatch.delenv("CLORA3D_OPS", raising=False)
    good = torch.rand(2, 6, 3)
    bad = good.clone()
    bad[0, 2, 1] = NAN
    ops.knn(good, good, 2)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)

    def compiled(x):
        return ops.knn(x, x, 2)

    d, i = compiled(good)
    rd, ri = ref.knn(good, good, 2)
    assert torch.equal(i, ri) and torch.equal(d, rd)
    with pytest.raises(RuntimeError, match="query must hold finite coordinates"):
        compiled(bad)

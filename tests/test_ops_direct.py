"""Direct calls of the compiled operators (``torch.ops.clora3d.*``, bypassing clora3d.ops'
validation) with bad arguments raise a RuntimeError that names the argument; none crashes.

Every call runs in a child process: a crash (the CUDA build once died with SIGSEGV on these calls)
fails that call's test and the run goes on. One child runs the calls in order and reports each
before and after it; when it dies, the parent records the crash against the call it had started
and starts a new child for the rest, so the suite pays for a few interpreters, not one per call.

NaN / inf coordinates: the CPU kernels refuse them (they used to return uninitialised indices).
On CUDA nothing is read back to the host; a device-side assertion fires instead and the error
surfaces at the next synchronisation (``test_cuda_nan_is_a_device_assert_not_a_wrong_result``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from clora3d.ops import _backend

needs_native = pytest.mark.skipif(_backend.native_module() is None, reason="compiled extension clora3d._C is not built")
HAVE_CUDA_BUILD = bool(_backend.native_module() is not None and _backend.backend_info()["build_info"]["cuda"])

# name -> (python expression over C = torch.ops.clora3d, T = torch, nan/inf tensors; expected message regex)
CALLS: dict[str, tuple[str, str]] = {
    "fps_S_too_large": ("C.fps(T.rand(2, 10, 3), 11, 0)", r"S must be in \[1, N=10\], got 11"),
    "fps_negative_start": ("C.fps(T.rand(2, 10, 3), 3, -1)", r"start must be in \[0, N=10\), got -1"),
    "fps_two_coordinates": ("C.fps(T.rand(2, 10, 2), 3, 0)", r"xyz must have shape \(B, N, 3\)"),
    "fps_no_points": ("C.fps(T.rand(2, 0, 3), 1, 0)", r"xyz must hold at least one point"),
    "fps_int_coordinates": ("C.fps(T.rand(2, 10, 3).long(), 3, 0)", r"xyz must be float32 or float64"),
    "fps_rank2": ("C.fps(T.rand(10, 3), 3, 0)", r"xyz must have 3 dimensions"),
    "knn_k_zero": ("C.knn(T.rand(2, 4, 3), T.rand(2, 5, 3), 0)", r"k must be in \[1, N=5\], got 0"),
    "knn_k_too_large": ("C.knn(T.rand(2, 4, 3), T.rand(2, 5, 3), 6)", r"k must be in \[1, N=5\], got 6"),
    "knn_dtype_mix": (
        "C.knn(T.rand(2, 4, 3), T.rand(2, 5, 3, dtype=T.float64), 1)",
        r"query and ref must have the same dtype",
    ),
    "knn_batch_mismatch": (
        "C.knn(T.rand(2, 4, 3), T.rand(1, 5, 3), 1)",
        r"query and ref must have the same batch size",
    ),
    "gather_index_too_large": (
        "C.gather_forward(T.rand(1, 5, 2), T.tensor([[7]]))",
        r"idx must hold indices in \[0, 5\)",
    ),
    "gather_index_negative": (
        "C.gather_forward(T.rand(1, 5, 2), T.tensor([[-1]]))",
        r"idx must hold indices in \[0, 5\)",
    ),
    "gather_int32_index": ("C.gather_forward(T.rand(1, 5, 2), T.tensor([[1]], dtype=T.int32))", r"idx must be int64"),
    "gather_int_points": (
        "C.gather_forward(T.ones(1, 5, 2, dtype=T.int64), T.tensor([[1]]))",
        r"points must be float32, float64, float16 or bfloat16",
    ),
    "gather_backward_index": (
        "C.gather_backward(T.rand(1, 2, 2), T.tensor([[0, 9]]), 5)",
        r"idx must hold indices in \[0, 5\)",
    ),
    "gather_backward_negative_N": (
        "C.gather_backward(T.rand(1, 1, 2), T.tensor([[0]]), -1)",
        r"N must be >= 0, got -1",
    ),
    "three_nn_two_known": ("C.three_nn(T.rand(1, 5, 3), T.rand(1, 2, 3))", r"known must hold at least 3 points"),
    "interp_index": (
        "C.three_interpolate_forward(T.rand(1, 4, 2), T.full((1, 3, 3), 4), T.rand(1, 3, 3))",
        r"idx must hold indices in \[0, 4\)",
    ),
    "interp_weight_shape": (
        "C.three_interpolate_forward(T.rand(1, 4, 2), T.zeros(1, 3, 3, dtype=T.long), T.rand(1, 3, 2))",
        r"weight must have the shape of idx",
    ),
    "interp_backward_negative_m": (
        "C.three_interpolate_backward(T.rand(1, 3, 2), T.zeros(1, 3, 3, dtype=T.long), T.rand(1, 3, 3), -1)",
        r"m must be >= 0, got -1",
    ),
    "chamfer_empty_b": ("C.chamfer_forward(T.rand(1, 4, 3), T.rand(1, 0, 3))", r"a and b must hold at least one point"),
    "chamfer_backward_index": (
        "C.chamfer_backward(T.rand(1, 4, 3), T.rand(1, 2, 3), T.full((1, 4), 2), "
        "T.zeros(1, 2, dtype=T.long), T.rand(1, 4), T.rand(1, 2))",
        r"idx_a must hold indices in \[0, 2\)",
    ),
    "index_range_empty": ("C.index_range(T.zeros(0, dtype=T.long))", r"index_range needs a non-empty tensor"),
    # NaN / inf coordinates (CPU): refused, naming the argument
    "nan_knn_query": ("C.knn(NAN_Q, GOOD_R, 2)", r"^query must hold finite coordinates"),
    "inf_knn_ref": ("C.knn(GOOD_Q, INF_R, 2)", r"^ref must hold finite coordinates"),
    "nan_three_nn_unknown": ("C.three_nn(NAN_Q, GOOD_R)", r"^unknown must hold finite coordinates"),
    "inf_three_nn_known": ("C.three_nn(GOOD_Q, INF_R)", r"^known must hold finite coordinates"),
    "inf_fps": ("C.fps(INF_R, 3, 0)", r"^xyz must hold finite coordinates"),
    "nan_chamfer_a": ("C.chamfer_forward(NAN_Q, GOOD_R)", r"^a must hold finite coordinates"),
    "nan_chamfer_b": ("C.chamfer_forward(GOOD_Q, NAN_Q)", r"^b must hold finite coordinates"),
}

_CHILD = textwrap.dedent("""
    import json, sys
    import torch as T
    import clora3d.ops  # loads the extension: registers torch.ops.clora3d.*
    C = T.ops.clora3d
    GOOD_Q, GOOD_R = T.rand(2, 4, 3), T.rand(2, 6, 3)
    NAN_Q, INF_R = GOOD_Q.clone(), GOOD_R.clone()
    NAN_Q[1, 2, 0] = float("nan")
    INF_R[0, 3, 1] = float("inf")
    calls = json.loads(sys.argv[1])
    for name, expr in calls:
        print(json.dumps({"start": name}), flush=True)
        try:
            eval(expr)
            res = {"done": name, "error": None}
        except Exception as e:
            res = {"done": name, "type": type(e).__name__, "error": str(e).splitlines()[0]}
        print(json.dumps(res), flush=True)
""")


def _run_all(calls: dict[str, str]) -> dict[str, dict]:
    """Results per call name; a call during which the child died gets {"crash": returncode}."""
    pending = list(calls.items())
    results: dict[str, dict] = {}
    while pending:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(pending)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        started = None
        for line in proc.stdout.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["done"]] = msg
                started = None
        if proc.returncode != 0 and started is None and not results:
            raise AssertionError(f"the child process failed before the first call:\n{proc.stderr[-3000:]}")
        if started is not None:  # it died inside this call
            results[started] = {"crash": proc.returncode, "stderr": proc.stderr[-1500:]}
        done = set(results)
        pending = [(n, e) for n, e in pending if n not in done]
        if proc.returncode == 0 and pending:
            raise AssertionError(f"the child exited without running {[n for n, _ in pending]}")
    return results


@pytest.fixture(scope="module")
def direct_results():
    return _run_all({name: expr for name, (expr, _) in CALLS.items()})


@needs_native
@pytest.mark.parametrize("name", list(CALLS))
def test_direct_call_raises_naming_the_argument(direct_results, name):
    import re

    res = direct_results[name]
    assert "crash" not in res, f"{name}: the process died (exit {res['crash']}):\n{res['stderr']}"
    assert res["error"] is not None, f"{name}: the bad call was accepted"
    assert res["type"] == "RuntimeError", res
    assert re.search(CALLS[name][1], res["error"]), (name, res["error"])


def test_runner_reports_a_crash_against_the_call_that_crashed():
    # the harness itself: a call that kills the child is reported, and the calls after it still run
    res = _run_all({"before": "1 + 1", "dies": "__import__('os')._exit(139)", "after": "1 / 0"})
    assert res["before"]["error"] is None
    assert res["dies"]["crash"] == 139
    assert res["after"]["type"] == "ZeroDivisionError"


_CUDA_CHILD = textwrap.dedent("""
    import sys, torch
    import clora3d.ops  # noqa: F401
    C = torch.ops.clora3d
    q = torch.rand(2, 64, 3, device="cuda")
    r = torch.rand(2, 80, 3, device="cuda")
    q[1, 5, 2] = float("nan")
    d, i = C.knn(q, r, 4)  # returns at once: nothing is read back to the host
    print("launched", flush=True)
    try:
        torch.cuda.synchronize()
        print("NO ERROR", i.max().item(), flush=True)
    except RuntimeError as e:
        print("SYNC ERROR", str(e).splitlines()[0], flush=True)
    # the context is poisoned now (sticky error): leave without the interpreter's teardown, whose
    # frees may report the same error again; exit 0 = the child got here without crashing
    sys.stdout.flush()
    sys.stderr.flush()
    __import__("os")._exit(0)
""")


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_CUDA_BUILD), reason="needs a GPU and the CUDA build")
def test_cuda_nan_is_a_device_assert_not_a_wrong_result():
    proc = subprocess.run([sys.executable, "-c", _CUDA_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launched" in proc.stdout
    assert "SYNC ERROR" in proc.stdout and "device-side assert" in proc.stdout, proc.stdout
    assert "hold NaN or inf" in proc.stderr, proc.stderr[-3000:]


_CUDA_BAD_ARGS = textwrap.dedent("""
    import json, torch
    import clora3d.ops  # noqa: F401
    C = torch.ops.clora3d
    d = "cuda"
    calls = {
        "fps_S": lambda: C.fps(torch.rand(2, 10, 3, device=d), 11, 0),
        "knn_k": lambda: C.knn(torch.rand(2, 4, 3, device=d), torch.rand(2, 5, 3, device=d), 0),
        "knn_devices": lambda: C.knn(torch.rand(2, 4, 3, device=d), torch.rand(2, 5, 3), 1),
        "gather_int32": lambda: C.gather_forward(torch.rand(1, 5, 2, device=d), torch.tensor([[1]], dtype=torch.int32, device=d)),
        "three_nn_two": lambda: C.three_nn(torch.rand(1, 5, 3, device=d), torch.rand(1, 2, 3, device=d)),
        "interp_shape": lambda: C.three_interpolate_forward(torch.rand(1, 4, 2, device=d), torch.zeros(1, 3, 3, dtype=torch.long, device=d), torch.rand(1, 3, 2, device=d)),
    }
    out = {}
    for k, f in calls.items():
        try:
            f(); out[k] = None
        except RuntimeError as e:
            out[k] = str(e).splitlines()[0]
    torch.cuda.synchronize()
    print(json.dumps(out))
""")


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_CUDA_BUILD), reason="needs a GPU and the CUDA build")
def test_cuda_bad_arguments_raise_eagerly():
    proc = subprocess.run([sys.executable, "-c", _CUDA_BAD_ARGS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expect = {
        "fps_S": "S must be in",
        "knn_k": "k must be in",
        "knn_devices": "same device",
        "gather_int32": "idx must be int64",
        "three_nn_two": "at least 3 points",
        "interp_shape": "weight must have the shape",
    }
    for k, frag in expect.items():
        assert got[k] is not None and frag in got[k], (k, got[k])

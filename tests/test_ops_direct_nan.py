"""NaN / infinite coordinates given straight to the compiled kernels (bypassing clora3d.ops'
validation) must be refused with a RuntimeError naming the argument and saying 'finite', not
answered with uninitialised memory (kNN / three_nn used to return indices like 4.5e18).

Runs in a subprocess so that a crash of the extension fails the test instead of the test run.
CPU tensors only: the compiled entry points do not check CUDA tensors (that would sync the device
in every step); clora3d.ops validates those before the call.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch  # noqa: F401  (loads libc10 before the extension)

try:
    import clora3d._C  # noqa: F401
    _HAVE_C = True
except ImportError:  # pragma: no cover - depends on the build
    _HAVE_C = False

needs_native = pytest.mark.skipif(not _HAVE_C, reason="compiled extension clora3d._C is not built")

_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    import clora3d._C as C
    nan = float("nan")
    good_q, good_r = torch.rand(2, 4, 3), torch.rand(2, 6, 3)
    bad_q, bad_r = good_q.clone(), good_r.clone()
    bad_q[1, 2, 0] = nan
    bad_r[0, 3, 1] = float("inf")
    calls = {
        "knn_query": lambda: C.knn(bad_q, good_r, 2),
        "knn_ref": lambda: C.knn(good_q, bad_r, 2),
        "three_nn_unknown": lambda: C.three_nn(bad_q, good_r),
        "three_nn_known": lambda: C.three_nn(good_q, bad_r),
        "fps_xyz": lambda: C.fps(bad_r, 3, 0),
        "chamfer_a": lambda: C.chamfer_forward(bad_q, good_r),
    }
    out = {}
    for name, f in calls.items():
        try:
            f()
            out[name] = None
        except RuntimeError as e:
            out[name] = str(e).splitlines()[0]
    print(json.dumps(out))
''')

# which argument each call must name
_EXPECT = {"knn_query": "query", "knn_ref": "ref", "three_nn_unknown": "unknown", "three_nn_known": "known",
           "fps_xyz": "xyz", "chamfer_a": "a"}


@needs_native
def test_direct_extension_calls_with_nan_raise_naming_the_argument():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the extension crashed on NaN input:\n{proc.stderr[-2000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, arg in _EXPECT.items():
        msg = got[name]
        assert msg is not None, f"{name}: a NaN/inf input was accepted (returned garbage) instead of raising"
        # like every other TORCH_CHECK message of the extension: "<argument> must ..."
        assert msg.startswith(f"{arg} ") and "finite" in msg, (name, msg)

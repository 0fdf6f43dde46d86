"""The GPU check's benchmark code runs end to end (on the CPU at tiny sizes, so that a GPU session
does not discover a typo), and the check refuses clearly where there is no GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kernel_benchmark_rows_and_table():
    rows = gpu_bench.run_kernels(torch.device("cpu"), quick=True)
    ops_seen = {(r.op, r.impl) for r in rows}
    for op in ("fps", "knn", "gather (B,S,K,C)", "three_nn + interpolate", "chamfer fwd+bwd"):
        assert (op, "clora3d") in ops_seen
    assert not [r for r in rows if r.error], [r.error for r in rows if r.error]
    assert all(r.median_ms > 0 and len(r.times_ms) >= 3 for r in rows)
    knn = {r.impl: r for r in rows if r.op == "knn"}
    assert knn["clora3d"].speedup == pytest.approx(knn["torch cdist+topk"].median_ms / knn["clora3d"].median_ms)
    table = gpu_bench.kernel_table(rows)
    assert table.count("\n") == len(rows) + 1


def test_model_benchmark_runs_one_method():
    rows = gpu_bench.run_model(torch.device("cpu"), quick=True, methods=("clora",), precisions=("fp32",))
    (r,) = rows
    assert r["method"] == "clora" and r["precision"] == "fp32" and r["step_ms"] > 0 and r["inference_ms"] > 0
    assert 0 < r["trainable"] < 200_000  # the tiny model's CLoRA + head, not the whole model
    assert "| clora | fp32 |" in gpu_bench.model_table(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_check_without_gpu_says_so():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--skip-build"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "sees no GPU" in proc.stderr


def test_gpu_check_collects_every_cuda_test_file_and_only_minimal_imports():
    import gpu_check

    files = gpu_check.cuda_test_files()
    assert {
        "tests/test_ops_cuda.py",
        "tests/test_build.py",
        "tests/test_ops_direct.py",
        "tests/test_compile.py",
    } <= set(files)
    for f in files + gpu_check.EXTRA_TESTS:  # the GPU machine has torch, numpy, pytest, hypothesis only
        text = (ROOT / f).read_text()
        for pkg in ("yaml", "h5py", "plyfile", "matplotlib", "tqdm", "open3d", "tensorboard"):
            assert f"import {pkg}" not in text and f"from {pkg}" not in text, (f, pkg)

"""The CUDA kernels' device code, run on the CPU by the emulator of tests/cuda_emu, against the
PyTorch reference (clora3d.ops.reference), bit for bit.

The kernels in csrc/cuda/*_kernels.cuh are compiled with g++ together with tests/cuda_emu/emu.h,
which runs every thread of a block as a coroutine with real barriers and warp collectives
(shuffles, ballots, warp reductions). This checks the kernels' logic (tie rules, warp-level list
insertion, block reductions, tiling, partial warps and tiles, device-side asserts) on a machine
without a GPU; it cannot check timing, memory ordering between blocks, or the GPU compiler. The
same kernels run on a GPU in tests/test_ops_cuda.py.

Each case runs the driver in a child process: an emulator error (deadlock, partial mask) or a
device assert is an exit status, not a crash of the test run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from clora3d.ops import reference as ref

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
KERNELS = ROOT / "csrc" / "cuda"
SOURCES = [EMU / "emu.h", EMU / "driver.cpp", *sorted(KERNELS.glob("*.cuh"))]
EXIT_EMULATOR_ERROR = 3
EXIT_DEVICE_ASSERT = 4


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA emulator")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    exe = tmp_path_factory.mktemp("cuda_emu") / f"driver-{digest}"
    cmd = [cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-Werror"]
    cmd += [f"-I{KERNELS}", str(EMU / "driver.cpp"), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return exe


def _dt(t: torch.Tensor) -> str:
    return {torch.float32: "f32", torch.float64: "f64"}[t.dtype]


def _np(t: torch.Tensor) -> np.dtype:
    return {torch.float32: np.float32, torch.float64: np.float64}[t.dtype]


def _run(driver: Path, args: list, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}: {proc.stderr}"
    return proc


def emu_knn(driver, tmp_path, query, refs, k, kind=None, expect=0):
    B, M, N = query.shape[0], query.shape[1], refs.shape[1]
    query.numpy().tofile(tmp_path / "q")
    refs.numpy().tofile(tmp_path / "r")
    args = ["knn", _dt(query), B, M, N, k, tmp_path / "q", tmp_path / "r", tmp_path / "d", tmp_path / "i"]
    proc = _run(driver, args + ([kind] if kind else []), expect)
    if expect:
        return proc
    d = np.fromfile(tmp_path / "d", _np(query)).reshape(B, M, k)
    i = np.fromfile(tmp_path / "i", np.int64).reshape(B, M, k)
    return torch.from_numpy(d), torch.from_numpy(i)


def emu_fps(driver, tmp_path, xyz, S, start, smem_limit=None, expect=0):
    B, N = xyz.shape[:2]
    xyz.numpy().tofile(tmp_path / "x")
    args = ["fps", _dt(xyz), B, N, S, start, tmp_path / "x", tmp_path / "o"]
    proc = _run(driver, args + ([smem_limit] if smem_limit else []), expect)
    if expect:
        return proc
    return torch.from_numpy(np.fromfile(tmp_path / "o", np.int64).reshape(B, S))


def emu_three_nn(driver, tmp_path, unknown, known, expect=0):
    B, n, m = unknown.shape[0], unknown.shape[1], known.shape[1]
    unknown.numpy().tofile(tmp_path / "a")
    known.numpy().tofile(tmp_path / "b")
    args = ["three_nn", _dt(unknown), B, n, m, tmp_path / "a", tmp_path / "b", tmp_path / "d", tmp_path / "i"]
    proc = _run(driver, args, expect)
    if expect:
        return proc
    d = np.fromfile(tmp_path / "d", _np(unknown)).reshape(B, n, 3)
    return torch.from_numpy(d), torch.from_numpy(np.fromfile(tmp_path / "i", np.int64).reshape(B, n, 3))


def emu_chamfer(driver, tmp_path, a, b, expect=0):
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    a.numpy().tofile(tmp_path / "a")
    b.numpy().tofile(tmp_path / "b")
    outs = [tmp_path / f for f in ("da", "ia", "db", "ib")]
    proc = _run(driver, ["chamfer", _dt(a), B, N, M, tmp_path / "a", tmp_path / "b", *outs], expect)
    if expect:
        return proc
    da, db = (torch.from_numpy(np.fromfile(outs[k], _np(a)).reshape(B, n)) for k, n in ((0, N), (2, M)))
    ia, ib = (torch.from_numpy(np.fromfile(outs[k], np.int64).reshape(B, n)) for k, n in ((1, N), (3, M)))
    return da, ia, db, ib


def emu_chamfer_backward(driver, tmp_path, a, b, ia, ib, ga, gb, expanded=False):
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    for name, t in (("a", a), ("b", b), ("ia", ia), ("ib", ib), ("ga", ga), ("gb", gb)):
        t.contiguous().numpy().tofile(tmp_path / name)
    args = ["chamfer_backward", _dt(a), B, N, M, *(tmp_path / n for n in ("a", "b", "ia", "ib", "ga", "gb"))]
    _run(driver, args + [tmp_path / "grad_a", tmp_path / "grad_b"] + (["expanded"] if expanded else []))
    grad_a = np.fromfile(tmp_path / "grad_a", _np(a)).reshape(B, N, 3)
    grad_b = np.fromfile(tmp_path / "grad_b", _np(a)).reshape(B, M, 3)
    return torch.from_numpy(grad_a), torch.from_numpy(grad_b)


def cloud(B: int, N: int, dtype=torch.float32, seed: int = 0, grid: float | None = 8.0, scale: float = 1.0):
    """Random points; with ``grid``, snapped to a coarse grid and half of them duplicated, so that
    many distances tie exactly and the tie rule decides."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, 3, generator=g, dtype=torch.float64)
    if grid:
        x = (x * grid).round() / grid
        h = N // 2
        x[:, N - h :] = x[:, :h].clone()
    return (x * scale).to(dtype)


# ----------------------------------------------------------------------------- the emulator itself
def test_emulator_runs_a_correct_warp_kernel(driver, tmp_path):
    _run(driver, ["selftest", "f32", 0, tmp_path / "o"])
    out = np.fromfile(tmp_path / "o", np.int32)
    assert out.tolist() == [lane ^ 1 for lane in range(32)] * 2


@pytest.mark.parametrize(
    "mode,message",
    [(1, "deadlock"), (2, "partial mask"), (3, "deadlock")],
    ids=["divergent_shuffle", "partial_mask", "lane_returned_before_shuffle"],
)
def test_emulator_rejects_what_is_undefined_on_a_gpu(driver, tmp_path, mode, message):
    proc = _run(driver, ["selftest", "f32", mode, tmp_path / "o"], expect=EXIT_EMULATOR_ERROR)
    assert message in proc.stderr


# ----------------------------------------------------------------------------- kNN
KNN_CASES = {
    # name: (B, M, N, k, dtype, cloud kwargs)
    "ties_k32_two_tiles": (2, 13, 300, 32, torch.float32, {}),
    "ties_k1": (2, 9, 70, 1, torch.float32, {}),
    "ties_k3_partial_round": (1, 17, 45, 3, torch.float32, {}),
    "k_equals_n": (2, 8, 20, 20, torch.float32, {}),
    "k32_equals_n": (1, 5, 32, 32, torch.float32, {}),
    "float64_ties": (2, 10, 260, 32, torch.float64, {}),
    "no_ties_large_scale_last_tile_one_point": (1, 16, 513, 16, torch.float32, {"grid": None, "scale": 1e4}),
    "overflow_to_inf": (1, 6, 64, 8, torch.float32, {"grid": 2.0, "scale": 3e19}),
}


@pytest.mark.parametrize("name", list(KNN_CASES))
def test_knn_warp_kernel_matches_reference(driver, tmp_path, name):
    B, M, N, k, dtype, kw = KNN_CASES[name]
    refs = cloud(B, N, dtype, seed=1, **kw)
    query = torch.cat([cloud(B, M - 2, dtype, seed=2, **kw), refs[:, [0, N - 1]]], dim=1)  # on the first/last point
    d, i = emu_knn(driver, tmp_path, query, refs, k, kind="warp")
    d0, i0 = ref.knn(query, refs, k)
    assert torch.equal(i, i0)
    assert torch.equal(d, d0)


def test_knn_warp_kernel_worst_order_inserts_every_candidate(driver, tmp_path):
    """References sorted by decreasing distance from the query: every one enters the list."""
    refs = cloud(1, 200, grid=None)
    query = torch.full((1, 1, 3), 0.5)
    order = torch.argsort(((refs - query) ** 2).sum(-1), dim=1, descending=True)
    refs = torch.gather(refs, 1, order[..., None].expand(-1, -1, 3)).contiguous()
    d, i = emu_knn(driver, tmp_path, query, refs, 32, kind="warp")
    d0, i0 = ref.knn(query, refs, 32)
    assert torch.equal(i, i0) and torch.equal(d, d0)
    assert i[0, 0, 0].item() == 199


@pytest.mark.parametrize("k", [1, 40, 128])
def test_knn_local_kernel_matches_reference(driver, tmp_path, k):
    refs = cloud(2, 150, seed=3)
    query = cloud(2, 11, seed=4)
    d, i = emu_knn(driver, tmp_path, query, refs, k, kind="local")
    d0, i0 = ref.knn(query, refs, k)
    assert torch.equal(i, i0) and torch.equal(d, d0)


@pytest.mark.parametrize("k", [129, 300])
def test_knn_beyond_the_list_kernels_matches_reference(driver, tmp_path, k):
    """k > 128: knn.cu computes every distance (pairwise_sqdist_kernel, emulated) and sorts them stably
    (at::sort there, a stable sort here): ties keep the lower index first."""
    refs = cloud(2, 300, seed=18)
    query = cloud(2, 7, seed=19)
    d, i = emu_knn(driver, tmp_path, query, refs, k, kind="sort")
    d0, i0 = ref.knn(query, refs, k)
    assert torch.equal(i, i0) and torch.equal(d, d0)


@pytest.mark.parametrize("where", ["query", "ref"])
def test_knn_non_finite_coordinates_are_a_device_assert(driver, tmp_path, where):
    query, refs = cloud(1, 5, seed=5), cloud(1, 40, seed=6)
    (query if where == "query" else refs)[0, 3, 1] = float("nan")
    proc = emu_knn(driver, tmp_path, query, refs, 4, kind="warp", expect=EXIT_DEVICE_ASSERT)
    assert "NaN or inf" in proc.stderr


# ----------------------------------------------------------------------------- FPS
FPS_CASES = {
    # name: (B, N, S, start, dtype, smem_limit) -> kernel chosen by fps_plan
    "registers4_one_warp": (2, 23, 23, 5, torch.float32, None),
    "registers4_recipe": (2, 1024, 64, 0, torch.float32, None),
    "registers4_float64": (2, 300, 40, 7, torch.float64, None),
    "registers8_partial_warp": (1, 4097, 24, 4096, torch.float32, None),
    "generic_global_memory": (1, 8193, 16, 1, torch.float32, None),
    "generic_shared_memory_float64": (1, 8193, 16, 2, torch.float64, 1 << 20),
    # the choices fps.cu makes on an H200 (sharedMemPerBlockOptin = 232448 B): float32 points of a
    # scene-size cloud in opted-in shared memory, float64 ones in global memory
    "h200_generic_shared_memory": (1, 12000, 16, 1, torch.float32, 232448),
    "h200_generic_global_memory_float64": (1, 8193, 16, 2, torch.float64, 232448),
}


@pytest.mark.parametrize("name", list(FPS_CASES))
def test_fps_kernels_match_reference(driver, tmp_path, name):
    B, N, S, start, dtype, smem = FPS_CASES[name]
    xyz = cloud(B, N, dtype, seed=7, grid=4.0)  # many equal distances: the lowest index must win
    out = emu_fps(driver, tmp_path, xyz, S, start, smem_limit=smem)
    assert torch.equal(out, ref.furthest_point_sample(xyz, S, start))


def test_fps_all_points_identical_picks_the_lowest_index(driver, tmp_path):
    """Every distance is 0 after the first step (selected points included): index 0 each time."""
    xyz = torch.zeros(1, 40, 3)
    out = emu_fps(driver, tmp_path, xyz, 6, 3)
    assert out.tolist() == [[3, 0, 0, 0, 0, 0]] == ref.furthest_point_sample(xyz, 6, 3).tolist()


def test_fps_non_finite_coordinates_are_a_device_assert(driver, tmp_path):
    xyz = cloud(1, 50, seed=8)
    xyz[0, 49, 2] = float("inf")
    proc = emu_fps(driver, tmp_path, xyz, 4, 0, expect=EXIT_DEVICE_ASSERT)
    assert "NaN or inf" in proc.stderr


# ----------------------------------------------------------------------------- Chamfer / three_nn
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chamfer_forward_kernel_matches_reference_both_ways(driver, tmp_path, dtype):
    """One launch serves both directions: N and M differ and neither is a multiple of the block."""
    a, b = cloud(2, 300, dtype, seed=9, grid=4.0), cloud(2, 270, dtype, seed=10, grid=4.0)
    got = emu_chamfer(driver, tmp_path, a, b)
    want = ref.chamfer_l2(a, b)
    for g, w, name in zip(got, want, ("dist_a", "idx_a", "dist_b", "idx_b")):
        assert torch.equal(g, w), name


@pytest.mark.parametrize("expanded", [False, True], ids=["dense_grads", "expanded_grads_of_mean"])
def test_chamfer_backward_kernel_matches_autograd_of_the_reference(driver, tmp_path, expanded):
    a = cloud(2, 70, torch.float64, seed=15, grid=None).requires_grad_(True)
    b = cloud(2, 45, torch.float64, seed=16, grid=None).requires_grad_(True)
    da, ia, db, ib = ref.chamfer_l2(a, b)
    g = torch.Generator().manual_seed(17)
    if expanded:  # the gradient of dist_a.mean() + 3 * dist_b.mean(): one value each, stride 0
        ga, gb = (
            torch.tensor([1.0 / da.numel()], dtype=torch.float64),
            torch.tensor([3.0 / db.numel()], dtype=torch.float64),
        )
        (da.mean() + 3 * db.mean()).backward()
    else:
        ga = torch.randn(da.shape, generator=g, dtype=torch.float64)
        gb = torch.randn(db.shape, generator=g, dtype=torch.float64)
        ((da * ga).sum() + (db * gb).sum()).backward()
    grad_a, grad_b = emu_chamfer_backward(driver, tmp_path, a.detach(), b.detach(), ia, ib, ga, gb, expanded=expanded)
    torch.testing.assert_close(grad_a, a.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_b, b.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_three_nn_kernel_matches_reference(driver, tmp_path, dtype):
    unknown, known = cloud(2, 290, dtype, seed=11, grid=4.0), cloud(2, 260, dtype, seed=12, grid=4.0)
    d, i = emu_three_nn(driver, tmp_path, unknown, known)
    d0, i0 = ref.three_nn(unknown, known)
    assert torch.equal(i, i0) and torch.equal(d, d0)


@pytest.mark.parametrize("op", ["chamfer", "three_nn"])
def test_nearest_non_finite_coordinates_are_a_device_assert(driver, tmp_path, op):
    a, b = cloud(1, 10, seed=13), cloud(1, 10, seed=14)
    b[0, 7, 0] = float("nan")
    run = emu_chamfer if op == "chamfer" else emu_three_nn
    proc = run(driver, tmp_path, a, b, expect=EXIT_DEVICE_ASSERT)
    assert "NaN or inf" in proc.stderr


# ----------------------------------------------------------------------------- gather / three_interpolate
def emu_gather_family(driver, tmp_path, op, index, dims, inputs, out_shape, dtype, blocks=3, expect=0):
    """``op`` in gather, gather_backward, interpolate, interpolate_backward; ``index`` i32 / i64 (the
    offset type); 3 blocks of 64 threads, so the grid-stride loops wrap."""
    names = []
    for k, t in enumerate(inputs):
        t.contiguous().numpy().tofile(tmp_path / f"in{k}")
        names.append(tmp_path / f"in{k}")
    proc = _run(driver, [op, _dt(torch.empty(0, dtype=dtype)), *dims, *names, tmp_path / "out", index, blocks], expect)
    if expect:
        return proc
    return torch.from_numpy(np.fromfile(tmp_path / "out", _np(torch.empty(0, dtype=dtype))).reshape(out_shape))


@pytest.mark.parametrize("index", ["i32", "i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_kernels_match_reference_and_autograd(driver, tmp_path, dtype, index):
    B, N, S, C = 2, 37, 29, 5  # 290 outputs for 192 threads: every thread loops
    g = torch.Generator().manual_seed(21)
    points = torch.randn(B, N, C, generator=g, dtype=dtype)
    idx = torch.randint(0, N, (B, S), generator=g)
    idx[:, :6] = 3  # repeated rows: the backward accumulates into one row from many threads
    out = emu_gather_family(driver, tmp_path, "gather", index, (B, N, S, C), (points, idx), (B, S, C), dtype)
    assert torch.equal(out, ref.gather_points(points, idx))
    grad_out = torch.randn(B, S, C, generator=g, dtype=dtype)
    leaf = points.clone().requires_grad_(True)
    (ref.gather_points(leaf, idx) * grad_out).sum().backward()
    grad = emu_gather_family(
        driver, tmp_path, "gather_backward", index, (B, N, S, C), (grad_out, idx), (B, N, C), dtype
    )
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}
    torch.testing.assert_close(grad, leaf.grad, **tol)


@pytest.mark.parametrize("index", ["i32", "i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_three_interpolate_kernels_match_reference_and_autograd(driver, tmp_path, dtype, index):
    B, m, n, C = 2, 11, 23, 6  # 276 outputs for 192 threads
    g = torch.Generator().manual_seed(22)
    features = torch.randn(B, m, C, generator=g, dtype=dtype)
    known, unknown = torch.rand(B, m, 3, generator=g, dtype=dtype), torch.rand(B, n, 3, generator=g, dtype=dtype)
    d, idx = ref.three_nn(unknown, known)
    weight = ref.interpolation_weights(d)
    dims = (B, m, n, C)
    out = emu_gather_family(driver, tmp_path, "interpolate", index, dims, (features, idx, weight), (B, n, C), dtype)
    assert torch.equal(out, ref.three_interpolate(features, idx, weight))  # same sum order, no FMA
    grad_out = torch.randn(B, n, C, generator=g, dtype=dtype)
    leaf = features.clone().requires_grad_(True)
    (ref.three_interpolate(leaf, idx, weight) * grad_out).sum().backward()
    grad = emu_gather_family(
        driver, tmp_path, "interpolate_backward", index, dims, (grad_out, idx, weight), (B, m, C), dtype
    )
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(grad, leaf.grad, **tol)


@pytest.mark.parametrize("op", ["gather", "gather_backward", "interpolate", "interpolate_backward"])
@pytest.mark.parametrize("bad", [-1, 9])
def test_gather_family_index_out_of_range_is_a_device_assert(driver, tmp_path, op, bad):
    B, N, S, C = 1, 9, 4, 3
    t = torch.zeros(B, N if op in ("gather", "interpolate") else S, C)
    if op.startswith("gather"):
        idx = torch.tensor([[0, 1, bad, 2]])
        inputs, dims = (t, idx), (B, N, S, C)
    else:
        idx = torch.tensor([[[0, 1, 2], [0, bad, 1], [3, 4, 5], [6, 7, 8]]])
        inputs, dims = (t, idx, torch.full((B, S, 3), 1 / 3)), (B, N, S, C)
    proc = emu_gather_family(driver, tmp_path, op, "i32", dims, inputs, None, torch.float32, expect=EXIT_DEVICE_ASSERT)
    assert "index out of range" in proc.stderr

"""One-command GPU check (``make gpu-check``): build for the local GPU, test, benchmark, one table.

Steps, each logged under ``--out`` (default ``build/gpu-check``):

1. build the extension in place for this GPU's architecture only (``TORCH_CUDA_ARCH_LIST`` = the
   device's compute capability, ``FORCE_CUDA=1``), with ``setup.py build_ext --inplace``: no pip, no
   network; at the same time, when peer sources were carried to ``build/peers`` (see docs/gpu.md),
   ``benchmarks/gpu_peers.py build`` compiles them at a lower CPU priority (each peer time-boxed; a
   peer that fails only drops out of the table), waited for before step 3;
2. run every CUDA test, the direct bad calls (tests/test_ops_direct.py) and the torch.compile /
   torch.export tests (tests/test_compile.py) with ``CLORA3D_REQUIRE_CUDA=1``: a CUDA test that
   would skip fails instead;
3. the kernel benchmark on CUDA against every peer that imports (pointnet2_ops, Point-MAE's chamfer
   and kNN, torch_cluster, pytorch3d, torch) and the summary against the 1.5x bar;
4. the model benchmark on CUDA: ViT-S, B32, 1024 points; the original Point-MAE code (when carried),
   full, CLoRA (both training paths), LoRA; fp32, TF32 and bf16; and the issue's model criteria;
5. print one report: build, tests, both tables.

Needs only torch, numpy, pytest and hypothesis (no open3d, no tensorboard, no internet).
Exit status: 0 when the build and every test passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "build" / "peers"
PEER_TIMEOUT_S = 300  # per peer build; they all start with clora3d's build and run beside the tests
# besides the CUDA tests: direct bad calls, compile/export and the step-cost proxies. Only
# files that import with torch, numpy, pytest and hypothesis alone (no yaml, h5py, plyfile, ...).
EXTRA_TESTS = ["tests/test_ops_direct.py", "tests/test_compile.py", "tests/test_step_ops.py"]


def cuda_test_files() -> list[str]:
    """Test files with CUDA tests (``pytest.mark.cuda``); collecting only these keeps the check
    independent of the optional packages other test files import."""
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text()
    )


def _run(cmd: list[str], log: Path, env: dict | None = None, timeout: int = 1200) -> tuple[int, float, str]:
    t = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
        )
    return proc.returncode, time.time() - t, log.read_text(errors="replace")


def start_peer_build(arch: str, log: Path):
    """Start ``gpu_peers.py build`` in the background when peer sources were carried (else None):
    every core, niced, so that clora3d's build (and then the tests) keep the CPU first."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_peers

    if not any((PEERS / d).is_dir() for d in gpu_peers.SRC_DIRS.values()):
        return None
    cmd = [sys.executable, "benchmarks/gpu_peers.py", "--root", str(PEERS), "build", "--arch", arch, "--nice", "10"]
    cmd += ["--jobs", str(os.cpu_count() or 1), "--timeout", str(PEER_TIMEOUT_S)]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, fh, time.time()


def stop(peers) -> None:
    """End the peer build: SIGTERM (it kills its compilers), SIGKILL if it has not ended 10 s later."""
    if peers is not None and peers[0].poll() is None:
        peers[0].terminate()
        try:
            peers[0].wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(peers[0].pid, signal.SIGKILL)
            peers[0].wait()


def finish_peer_build(peers, log: Path) -> list[str]:
    """Wait for the peer build (each peer is time-boxed; the whole is cut off a minute later) and
    return its status lines for the report."""
    proc, fh, t0 = peers
    try:
        proc.wait(timeout=max(1.0, t0 + PEER_TIMEOUT_S + 60 - time.time()))
    except subprocess.TimeoutExpired:
        stop(peers)
    fh.close()
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(("peer ", "gpu_peers:"))]
    head = f"peer build: {time.time() - t0:.0f} s (started with the build; log {log})"
    return [head, *lines] if lines else [head, f"peer build printed no status (rc {proc.returncode})"]


def gpu_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu-check: torch sees no GPU (torch.cuda.is_available() is False); run it on a machine with one")
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "gpu-check"))
    ap.add_argument("--skip-build", action="store_true", help="use the extension already built in place")
    ap.add_argument(
        "--compile",
        nargs="?",
        const="reduce-overhead",
        default=None,
        metavar="MODE",
        help="also time the model with torch.compile (gpu_bench.py --compile: reduce-overhead when MODE is omitted)",
    )
    ap.add_argument("--skip-peers", action="store_true", help="do not build the peers carried in build/peers")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = []
    ok = True

    arch = gpu_arch()
    peers = None if args.skip_peers else start_peer_build(arch, out / "peers.log")
    if not args.skip_build:
        jobs = str(max(1, os.cpu_count() or 1))
        rc, secs, text = _run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            out / "build.log",
            env={"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": jobs},
        )
        report.append(f"build: TORCH_CUDA_ARCH_LIST={arch}, {'ok' if rc == 0 else 'FAILED'} in {secs:.0f} s")
        if rc != 0:
            stop(peers)
            print("\n".join(report) + "\n" + text[-6000:])
            return 1

    rc, secs, text = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "-m", "cuda", *cuda_test_files()],
        out / "tests_cuda.log",
        env={"CLORA3D_REQUIRE_CUDA": "1"},
    )
    summary = (re.findall(r"^=+ (.*) in [\d.]+s", text, re.M) or ["no summary (see log)"])[-1]
    report.append(f"CUDA tests (-m cuda, nothing may skip): {summary} ({secs:.0f} s)")
    ok &= rc == 0
    rc, secs, text2 = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "-m", "not cuda", *EXTRA_TESTS],
        out / "tests_ops_compile.log",
        env={"CLORA3D_REQUIRE_CUDA": "1"},
    )
    summary2 = (re.findall(r"^=+ (.*) in [\d.]+s", text2, re.M) or ["no summary (see log)"])[-1]
    report.append(f"direct bad calls, torch.compile / export, step-cost proxies (CPU parts): {summary2} ({secs:.0f} s)")
    ok &= rc == 0
    for t in (text, text2):
        report += [ln for ln in t.splitlines() if ln.startswith(("FAILED", "ERROR"))][:30]

    if peers is not None:
        report += finish_peer_build(peers, out / "peers.log")
    bench_json = out / "bench.json"
    cmd = [sys.executable, "benchmarks/gpu_bench.py", "all", "--device", "cuda", "--json", str(bench_json)]
    if args.compile:
        cmd += ["--compile", args.compile]
    rc, secs, btext = _run(cmd, out / "bench.log")
    report.append(f"benchmarks: {'ok' if rc == 0 else 'FAILED'} ({secs:.0f} s)")
    if rc == 0:
        env = json.loads(bench_json.read_text())["environment"]
        peer_status = env.pop("peers", {})
        report.append("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        report.append("peers timed: " + (", ".join(n for n, v in peer_status.items() if v == "ok") or "torch only"))
        report += [f"peer {n}: {v}" for n, v in peer_status.items() if v != "ok"]
        report.append(btext.strip())
    else:
        ok = False
        report.append(btext[-4000:])
    report.append(f"total {time.time() - t0:.0f} s; logs in {out}")
    text = "\n".join(report)
    (out / "report.md").write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

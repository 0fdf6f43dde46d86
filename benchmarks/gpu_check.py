"""One-command GPU check (``make gpu-check``): build for the local GPU, test, benchmark, one table.

Steps, each logged under ``--out`` (default ``build/gpu-check``):

1. build the extension in place for this GPU's architecture only (``TORCH_CUDA_ARCH_LIST`` = the
   device's compute capability, ``FORCE_CUDA=1``), with ``setup.py build_ext --inplace``: no pip, no
   network; at the same time, when peer sources were carried to ``build/peers`` (see docs/gpu.md),
   ``benchmarks/gpu_peers.py build`` compiles them at a lower CPU priority (each peer time-boxed; a
   peer that fails only drops out of the table), waited for before step 3;
2. run every CUDA test with ``CLORA3D_REQUIRE_CUDA=1`` (a CUDA test that would skip fails instead)
   and, beside them, the CPU parts of the direct bad calls (tests/test_ops_direct.py), the
   torch.compile / torch.export tests (tests/test_compile.py) and the step-cost proxies (the
   default suite's selection: not ``slow``);
3. the kernel benchmark on CUDA against every peer that imports (pointnet2_ops, Point-MAE's chamfer
   and kNN, torch_cluster, pytorch3d, torch) and the summary against the 1.5x bar;
4. the model benchmark on CUDA: ViT-S, B32, 1024 points; the original Point-MAE code (when carried),
   full, CLoRA (both training paths), LoRA; fp32, TF32 and bf16; and the issue's model criteria;
5. print one report: build, tests, both tables.

Needs only torch, numpy, pytest and hypothesis (no open3d, no tensorboard, no internet).
Exit status: 0 when the build, every test and the benchmarks passed, 1 otherwise; a step that runs
past its time limit (``STEP_TIMEOUT_S``) is killed with its children and reported as timed out.
The report is printed and written to ``--out``/report.md in every case.
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
# per peer build; they all start with clora3d's build and run beside the tests, and the benchmarks
# wait for them: the bound keeps the whole check near its 5 minutes (a peer cut off only drops out
# of the table)
PEER_TIMEOUT_S = 200
# besides the CUDA tests: direct bad calls, compile/export and the step-cost proxies. Only
# files that import with torch, numpy, pytest and hypothesis alone (no yaml, h5py, plyfile, ...).
EXTRA_TESTS = ["tests/test_ops_direct.py", "tests/test_compile.py", "tests/test_step_ops.py"]


def cuda_test_files() -> list[str]:
    """Test files with CUDA tests (``pytest.mark.cuda``); collecting only these keeps the check
    independent of the optional packages other test files import."""
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text()
    )


#: exit status recorded for a step that ran past its time limit (as timeout(1) reports it)
TIMED_OUT = 124
#: per-step limits: far above a normal run (the whole check takes about 5 minutes on an H200 machine),
#: so that a hang ends in a report instead of a check that never returns
STEP_TIMEOUT_S = {"build": 900, "tests": 900, "bench": 900}


def _start(cmd: list[str], log: Path, env: dict | None = None):
    """Start one step in its own process group (so that a time-out ends its children too)."""
    fh = open(log, "w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, fh, log, time.time()


def _wait(step, timeout: float) -> tuple[int, float, str]:
    """(exit status, seconds, log text) of a started step; past ``timeout`` its whole process group is
    killed and the status is :data:`TIMED_OUT`, with a line saying so at the end of the text."""
    proc, fh, log, t = step
    try:
        rc = proc.wait(timeout=max(1.0, t + timeout - time.time()))
        note = ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc, note = TIMED_OUT, f"\ngpu-check: killed after {timeout:.0f} s (time limit of the step)\n"
    fh.close()
    return rc, time.time() - t, log.read_text(errors="replace") + note


def _run(cmd: list[str], log: Path, env: dict | None = None, timeout: float = 900) -> tuple[int, float, str]:
    return _wait(_start(cmd, log, env), timeout)


#: pytest's final count line: with -q it has no "=" rule around it ("3 passed, 1 skipped in 2.5s")
_SUMMARY = re.compile(r"^(?:=+ )?((?:\d+ \w+(?:, )?)+|no tests ran) in [\d.]+s\b", re.M)


def pytest_summary(text: str, rc: int) -> str:
    """The counts of a pytest run from its output, or why there are none."""
    found = _SUMMARY.findall(text)
    if found:
        return found[-1]
    return "timed out (see log)" if rc == TIMED_OUT else f"no summary, exit {rc} (see log)"


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
    """Wait for the peer build (each peer is time-boxed; the whole is cut off 30 s later) and
    return its status lines for the report."""
    proc, fh, t0 = peers
    try:
        proc.wait(timeout=max(1.0, t0 + PEER_TIMEOUT_S + 30 - time.time()))
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


def _checks(args, arch: str, out: Path, report: list[str], peers) -> bool:
    """Build, tests, benchmarks (main's steps); appends to ``report``; True when all passed."""
    if not args.skip_build:
        jobs = str(max(1, os.cpu_count() or 1))
        rc, secs, text = _run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            out / "build.log",
            env={"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": jobs},
            timeout=STEP_TIMEOUT_S["build"],
        )
        report.append(f"build: TORCH_CUDA_ARCH_LIST={arch}, {'ok' if rc == 0 else 'FAILED'} in {secs:.0f} s")
        if rc != 0:
            report.append(text[-6000:])
            return False

    # the CPU parts (direct bad calls, compile/export on the CPU, step-cost proxies; the slow ones
    # left out as in the default suite) run beside the GPU tests
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    env = {"CLORA3D_REQUIRE_CUDA": "1"}
    cpu_part = _start([*pytest, "-m", "not cuda and not slow", *EXTRA_TESTS], out / "tests_ops_compile.log", env)
    gpu_part = _start([*pytest, "-m", "cuda", *cuda_test_files()], out / "tests_cuda.log", env)
    rc, secs, text = _wait(gpu_part, STEP_TIMEOUT_S["tests"])
    report.append(f"CUDA tests (-m cuda, nothing may skip): {pytest_summary(text, rc)} ({secs:.0f} s)")
    ok = rc == 0
    rc, secs, text2 = _wait(cpu_part, STEP_TIMEOUT_S["tests"])
    report.append(
        "direct bad calls, torch.compile / export, step-cost proxies (CPU parts, not slow): "
        f"{pytest_summary(text2, rc)} ({secs:.0f} s)"
    )
    ok &= rc == 0
    for t in (text, text2):
        report += [ln for ln in t.splitlines() if ln.startswith(("FAILED", "ERROR"))][:30]

    if peers is not None:
        report += finish_peer_build(peers, out / "peers.log")
    bench_json = out / "bench.json"
    cmd = [sys.executable, "benchmarks/gpu_bench.py", "all", "--device", "cuda", "--json", str(bench_json)]
    if args.compile:
        cmd += ["--compile", args.compile]
    rc, secs, btext = _run(cmd, out / "bench.log", timeout=STEP_TIMEOUT_S["bench"])
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
    return ok


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
    report: list[str] = []

    arch = gpu_arch()
    peers = None if args.skip_peers else start_peer_build(arch, out / "peers.log")
    try:
        ok = _checks(args, arch, out, report, peers)
    finally:
        stop(peers)  # a no-op when it has ended; else (an error above) it must not outlive the check
    report.append(f"total {time.time() - t0:.0f} s; logs in {out}")
    text = "\n".join(report)
    (out / "report.md").write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

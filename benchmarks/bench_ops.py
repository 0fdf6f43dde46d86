"""Benchmark of clora3d.ops against the reference and every installed peer library.

One run produces one table: FPS and kNN at the ModelNet (B32 N1024 S64 K32), ScanObjectNN
(B32 N2048 S128 K32) and pre-processing (B8 N8192 S1024 K32) sizes, and Chamfer-L2 forward +
backward at B32 N1024 M1024. Every implementation gets the same inputs (points on a jittered
sphere surface, like normalised object scans); times are wall-clock medians. ``speedup`` is the
fastest peer's median divided by the row's median (> 1: faster than every peer).

    python benchmarks/bench_ops.py --repeats 9 --json docs/bench/ops_cpu.json   (or tools/bench_ops.py)

then ``python tools/render_bench_tables.py`` renders README.md's and docs/ops.md's tables from that
JSON (:func:`render_tables`). Tests never time anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from clora3d.ops import _backend  # noqa: E402
from clora3d.ops import api as ops  # noqa: E402
from clora3d.ops import reference as ref  # noqa: E402

log = logging.getLogger("benchmarks.bench_ops")

# (label, B, N, S, K)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "modelnet": (32, 1024, 64, 32),
    "scanobjectnn": (32, 2048, 128, 32),
    "preprocess": (8, 8192, 1024, 32),
}
CHAMFER_SIZE = (32, 1024, 1024)

PEER_PACKAGES = ("fpsample", "open3d", "pykdtree", "faiss", "scipy")


@dataclass
class Row:
    """One timed implementation of one op at one size."""

    op: str
    size: str
    impl: str
    kind: str  # "native" | "reference" | "peer"
    median_ms: Optional[float] = None
    runs: int = 0
    speedup: Optional[float] = None  # fastest peer median / this median
    note: str = ""
    error: str = ""
    times_ms: list = field(default_factory=list)


def _cloud(B: int, N: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, N, 3, generator=g)
    p = p / p.norm(dim=-1, keepdim=True)
    return (p + 0.02 * torch.randn(B, N, 3, generator=g)).contiguous()


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _single_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with torch.set_num_threads(1) (restored afterwards)."""

    def wrapped():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(n)

    return wrapped


def _native_rows(name_fn: Callable[[], object], note: str) -> list[tuple[str, str, Callable[[], object], str]]:
    """The native implementation with torch's thread count and, when that is > 1, with one thread."""
    threads = torch.get_num_threads()
    rows = [("clora3d native", "native", name_fn, f"{threads} threads{note}")]
    if threads > 1:
        rows.append(("clora3d native (1 thread)", "native", _single_thread(name_fn), f"1 thread{note}"))
    return rows


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - an absent or broken peer is simply skipped
        return None


def installed_peers() -> dict[str, str]:
    """Installed peer packages and their versions."""
    out = {}
    for name in PEER_PACKAGES:
        mod = _try_import(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", None) or _dist_version(name))
    return out


def _dist_version(module: str) -> str:
    """Version of the installed distribution that provides ``module`` ("?" when unknown)."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get(module, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


# ----------------------------------------------------------------------------- implementations
def _fps_impls(xyz: torch.Tensor, S: int) -> list[tuple[str, str, Callable[[], object], str]]:
    """(name, kind, callable, note) for every FPS implementation available."""
    impls = []
    if _backend.native_module() is not None:
        impls += _native_rows(lambda: ops.furthest_point_sample(xyz, S), "")
    impls.append(("clora3d reference (torch loop)", "reference", lambda: ref.furthest_point_sample(xyz, S), ""))
    pts = [c.numpy().astype(np.float32) for c in xyz]
    fpsample = _try_import("fpsample")
    if fpsample is not None:
        h = 3 if xyz.shape[1] <= 2048 else 7
        impls.append(
            ("fpsample.fps_sampling", "peer", lambda: [fpsample.fps_sampling(p, S, start_idx=0) for p in pts], "")
        )
        impls.append(
            (
                "fpsample.fps_npdu_kdtree_sampling",
                "peer",
                lambda: [fpsample.fps_npdu_kdtree_sampling(p, S, start_idx=0) for p in pts],
                "approximate",
            )
        )
        impls.append(
            (
                f"fpsample.bucket_fps_kdline (h={h})",
                "peer",
                lambda: [fpsample.bucket_fps_kdline_sampling(p, S, h=h, start_idx=0) for p in pts],
                "",
            )
        )
    o3d = _try_import("open3d")
    if o3d is not None:
        pts64 = [p.astype(np.float64) for p in pts]

        def _o3d_fps():
            for p in pts64:
                pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
                pc.farthest_point_down_sample(S)

        impls.append(("open3d farthest_point_down_sample", "peer", _o3d_fps, "incl. PointCloud construction"))
    return impls


def _knn_impls(query: torch.Tensor, xyz: torch.Tensor, k: int) -> list[tuple[str, str, Callable[[], object], str]]:
    """(name, kind, callable, note) for every kNN implementation available."""
    threads = torch.get_num_threads()
    impls = []
    if _backend.native_module() is not None:
        impls += _native_rows(lambda: ops.knn(query, xyz, k), "")
    impls.append(("clora3d reference (torch sort)", "reference", lambda: ref.knn(query, xyz, k), ""))

    def _cdist_topk():
        d = torch.cdist(query, xyz)
        return d.topk(k, dim=-1, largest=False, sorted=True)

    impls.append(("torch.cdist + topk", "peer", _cdist_topk, "batched"))
    qs = [c.numpy() for c in query]
    rs = [c.numpy() for c in xyz]
    pykdtree = _try_import("pykdtree.kdtree")
    if pykdtree is not None:
        impls.append(
            ("pykdtree (build + query)", "peer", lambda: [pykdtree.KDTree(r).query(q, k=k) for q, r in zip(qs, rs)], "")
        )
    spatial = _try_import("scipy.spatial")
    if spatial is not None:
        impls.append(
            (
                "scipy cKDTree (build + query)",
                "peer",
                lambda: [spatial.cKDTree(r).query(q, k=k, workers=threads) for q, r in zip(qs, rs)],
                f"workers={threads}",
            )
        )
    faiss = _try_import("faiss")
    if faiss is not None:

        def _faiss():
            out = []
            for q, r in zip(qs, rs):
                index = faiss.IndexFlatL2(3)
                index.add(r)
                out.append(index.search(q, k))
            return out

        impls.append(("faiss IndexFlatL2", "peer", _faiss, "exact"))
    o3d = _try_import("open3d")
    if o3d is not None:
        core = o3d.core

        def _o3d_knn():
            out = []
            for q, r in zip(qs, rs):
                nns = core.nns.NearestNeighborSearch(core.Tensor(r))
                nns.knn_index()
                out.append(nns.knn_search(core.Tensor(q), k))
            return out

        impls.append(("open3d NearestNeighborSearch", "peer", _o3d_knn, "build + query"))
    return impls


def _chamfer_impls(a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, str, Callable[[], object], str]]:

    def _run(loss_fn):
        def f():
            aa = a.clone().requires_grad_(True)
            bb = b.clone().requires_grad_(True)
            loss = loss_fn(aa, bb)
            loss.backward()
            return loss

        return f

    def _cdist_loss(x, y):
        d = torch.cdist(x, y) ** 2
        return d.min(dim=2).values.mean() + d.min(dim=1).values.mean()

    impls = []
    if _backend.native_module() is not None:
        impls += _native_rows(_run(ops.chamfer_l2_loss), ", fwd+bwd")
    impls.append(("clora3d reference (chunked torch)", "reference", _run(ref.chamfer_l2_loss), "fwd+bwd"))
    impls.append(("torch.cdist reference", "peer", _run(_cdist_loss), "fwd+bwd"))
    return impls


# ----------------------------------------------------------------------------- driver
def run_benchmarks(
    repeats: int = 7,
    warmup: int = 1,
    sizes: Optional[list[str]] = None,
    ops_to_run: tuple[str, ...] = ("fps", "knn", "chamfer"),
    slow_repeats: int = 3,
    progress: bool = True,
) -> list[Row]:
    """Time every implementation; returns one Row per (op, size, implementation).

    ``slow_repeats`` caps the repeats of implementations slower than 1 s per call.
    """
    sizes = list(SIZES) if sizes is None else sizes
    for s in sizes:
        if s not in SIZES:
            raise ValueError(f"unknown benchmark size {s!r}; expected one of {', '.join(SIZES)}")
    cases = []
    for label in sizes:
        B, N, S, K = SIZES[label]
        xyz = _cloud(B, N, seed=1)
        if "fps" in ops_to_run:
            cases.append(("fps", f"{label} B{B} N{N} S{S}", _fps_impls(xyz, S)))
        if "knn" in ops_to_run:
            query = ref.gather_points(xyz, ref.furthest_point_sample(xyz, S))
            cases.append(("knn", f"{label} B{B} N{N} M{S} K{K}", _knn_impls(query, xyz, K)))
    if "chamfer" in ops_to_run:
        B, N, M = CHAMFER_SIZE
        cases.append(("chamfer", f"fwd+bwd B{B} N{N} M{M}", _chamfer_impls(_cloud(B, N, 2), _cloud(B, M, 3))))

    total = sum(len(impls) for _, _, impls in cases)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench_ops", unit="impl", leave=False)
    rows: list[Row] = []
    for op, size, impls in cases:
        case_rows = []
        for name, kind, fn, note in impls:
            row = Row(op=op, size=size, impl=name, kind=kind, note=note)
            try:
                first = _time(fn, 1, warmup)
                n = repeats if first[0] < 1000.0 else min(repeats, slow_repeats)
                times = first + _time(fn, n - 1, 0) if n > 1 else first
                row.times_ms = [round(t, 4) for t in times]
                row.median_ms = statistics.median(times)
                row.runs = len(times)
            except Exception as exc:  # noqa: BLE001 - a broken peer is reported, not fatal
                row.error = f"{type(exc).__name__}: {exc}"[:200]
            case_rows.append(row)
            if bar is not None:
                bar.update(1)
        peer_times = [r.median_ms for r in case_rows if r.kind == "peer" and r.median_ms is not None]
        fastest = min(peer_times) if peer_times else None
        for r in case_rows:
            if fastest is not None and r.median_ms:
                r.speedup = fastest / r.median_ms
        rows.extend(case_rows)
    if bar is not None:
        bar.close()
    return rows


def environment() -> dict:
    """Machine / library facts printed with the table."""
    mod = _backend.native_module()
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "loadavg_1_5_15min": load,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "native": dict(mod.build_info()) if mod is not None else None,
        "peers": installed_peers(),
    }


def format_table(rows: list[Row]) -> str:
    """Markdown table: op, size, implementation, median ms, speedup vs fastest peer, note."""
    lines = [
        "| op | size | implementation | median ms | vs fastest peer | note |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        med = f"{r.median_ms:.3f}" if r.median_ms is not None else "error"
        sp = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        note = r.error or r.note
        name = f"**{r.impl}**" if r.kind == "native" else r.impl
        lines.append(f"| {r.op} | {r.size} | {name} | {med} | {sp} | {note} |")
    return "\n".join(lines)


def write_json(path: str, rows: list[Row], command: Optional[str] = None) -> None:
    """Rows + environment (+ the UTC time and the command line) as JSON: the one source every
    benchmark table in README.md and docs/ops.md is rendered from (:func:`render_tables`)."""
    from datetime import datetime, timezone

    from clora3d.storage import atomic_write_bytes

    env = environment()
    env["date_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if command:
        env["command"] = command
    blob = json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    atomic_write_bytes(path, blob.encode(), what="benchmark JSON")


# ----------------------------------------------------------------------------- tables from the JSON
# The bars the kernels were built against: (op, size label) -> (minimum speed-up over the fastest
# installed peer, wording). None: no bar.
BARS: dict[tuple[str, str], Optional[tuple[float, str]]] = {
    ("fps", "modelnet"): (5.0, ">= 5x"),
    ("fps", "scanobjectnn"): (5.0, ">= 5x"),
    ("fps", "preprocess"): (1.0, "faster"),
    ("knn", "modelnet"): (5.0, ">= 5x"),
    ("knn", "scanobjectnn"): (5.0, ">= 5x"),
    ("knn", "preprocess"): None,
    ("chamfer", "fwd+bwd"): (3.0, ">= 3x"),
}
MARKERS = {"full": "bench_ops:full", "summary": "bench_ops:summary"}
# peer packages that time each op (a bar judged without one of them is qualified as such)
OP_PEERS = {"fps": ("fpsample", "open3d"), "knn": ("pykdtree", "faiss", "scipy", "open3d"), "chamfer": ()}


def _fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _case_rows(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    cases: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cases.setdefault((r["op"], r["size"]), []).append(r)
    return [(op, size, rs) for (op, size), rs in cases.items()]


def summary_rows(data: dict) -> list[dict]:
    """Per (op, size): native (all threads, 1 thread), reference, fastest peer, speed-up and bar."""
    out = []
    for op, size, rs in _case_rows(data["rows"]):
        ok = [r for r in rs if r.get("median_ms") is not None and not r.get("error")]
        native = next((r for r in ok if r["kind"] == "native" and "1 thread" not in r["impl"]), None)
        native1 = next((r for r in ok if r["kind"] == "native" and "1 thread" in r["impl"]), None)
        refr = next((r for r in ok if r["kind"] == "reference"), None)
        peers = sorted((r for r in ok if r["kind"] == "peer"), key=lambda r: r["median_ms"])
        fastest = peers[0] if peers else None
        speed = fastest["median_ms"] / native["median_ms"] if fastest and native else None
        speed1 = fastest["median_ms"] / native1["median_ms"] if fastest and native1 else None
        bar = BARS.get((op, size.split()[0]))
        if bar is None:
            verdict = "(no bar)"
        elif speed is None:
            verdict = f"{bar[1]}: not measured (no peer installed)"
        else:
            verdict = f"{bar[1]}: {'met' if speed >= bar[0] else 'NOT met'}"
            missing = [p for p in OP_PEERS.get(op, ()) if p not in data.get("environment", {}).get("peers", {})]
            if missing:
                verdict += f" against the installed peers only ({', '.join(missing)} not installed)"
        out.append(
            {
                "op": op,
                "size": size,
                "native_ms": native and native["median_ms"],
                "native_1t_ms": native1 and native1["median_ms"],
                "reference_ms": refr and refr["median_ms"],
                "peer": fastest and fastest["impl"],
                "peer_ms": fastest and fastest["median_ms"],
                "speedup": speed,
                "speedup_1t": speed1,
                "bar": verdict,
            }
        )
    return out


def _env_line(env: dict) -> str:
    peers = ", ".join(f"{k} {v}" for k, v in env.get("peers", {}).items()) or "none"
    missing = [p for p in PEER_PACKAGES if p not in env.get("peers", {})]
    return (
        f"{env.get('cpu')} ({env.get('cpu_count')} logical CPUs), torch {env.get('torch')}, "
        f"{env.get('torch_threads')} threads, {env.get('date_utc', 'date not recorded')}, "
        f"load average (1/5/15 min) at the end {env.get('loadavg_1_5_15min')}; "
        f"peers installed: {peers}" + (f"; not installed: {', '.join(missing)}" if missing else "")
    )


def render_tables(data: dict, source: str) -> dict[str, str]:
    """The Markdown blocks (``"full"``, ``"summary"``) rendered from one benchmark JSON."""
    env = data["environment"]
    cmd = env.get("command", "python tools/bench_ops.py")
    head = f"From `{source}`, written by one run of `{cmd}`: {_env_line(env)}."
    full = head + "\n\n" + format_table([Row(**{k: v for k, v in r.items()}) for r in data["rows"]])
    lines = [
        head + " Median wall time in ms; speed-up = fastest installed peer / clora3d native.",
        "",
        "| op, size | clora3d native | native, 1 thread | pure-torch reference | fastest peer | "
        "speed-up (1 thread) | bar |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for r in summary_rows(data):
        peer = f"{r['peer']} {_fmt_ms(r['peer_ms'])}" if r["peer"] else "none installed"
        sp = (
            f"{r['speedup']:.1f}x ({r['speedup_1t']:.1f}x)"
            if r["speedup"] is not None and r["speedup_1t"] is not None
            else "-"
        )
        lines.append(
            f"| {r['op']} {r['size']} | {_fmt_ms(r['native_ms'])} | {_fmt_ms(r['native_1t_ms'])} | "
            f"{_fmt_ms(r['reference_ms'])} | {peer} | {sp} | {r['bar']} |"
        )
    return {"full": full, "summary": "\n".join(lines)}


def replace_between_markers(text: str, name: str, block: str, where: str = "file") -> str:
    """``text`` with the lines between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->``
    replaced by ``block``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{where}: needs exactly one '{begin}' followed by one '{end}'")
    a = text.index(begin) + len(begin)
    b = text.index(end)
    return text[:a] + "\n" + block.rstrip("\n") + "\n" + text[b:]


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Time the ops, print the environment and the table (stdout); ``--json`` also writes the JSON."""
    prog = prog or "benchmarks/bench_ops.py"
    ap = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None, help="subset of sizes")
    ap.add_argument("--ops", nargs="+", choices=["fps", "knn", "chamfer"], default=["fps", "knn", "chamfer"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every implementation")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write rows + environment as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run_benchmarks(
        repeats=args.repeats,
        warmup=args.warmup,
        sizes=args.sizes,
        ops_to_run=tuple(args.ops),
        progress=not args.no_progress,
    )
    env = environment()
    print(
        f"CPU: {env['cpu']} ({env['cpu_count']} logical), torch {env['torch']}, {env['torch_threads']} threads, "
        f"load average (1/5/15 min) at the end: {env['loadavg_1_5_15min']}"
    )
    print(f"peers: {', '.join(f'{k} {v}' for k, v in env['peers'].items()) or 'none'}")
    print(format_table(rows))
    if args.json:
        given = sys.argv[1:] if argv is None else list(argv)
        write_json(args.json, rows, command=f"python {prog} " + " ".join(given))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    from benchmarks import run_script

    sys.exit(run_script(main))

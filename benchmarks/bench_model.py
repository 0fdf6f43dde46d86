"""CPU throughput benchmark of the classification model: ``python benchmarks/bench_model.py``
(or ``tools/bench_model.py``) ``[--batch 32] [--points 1024] [--json out.json]``.

For ViT-S classification (default B=32, 1024 points, 64 groups x 32) it measures, in ONE run:

- the fp32 matmul peak of this machine (best of several square ``torch.mm``),
- inference forward (eval, no_grad) and training steps (forward + backward + fused AdamW step) for
  full fine-tuning and for a frozen backbone (head + cls token/pos trainable, frozen BatchNorm in
  eval mode),
- samples/s, FLOPs per step and achieved GFLOP/s with the ratio to the measured matmul peak,
- peak memory.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the same step: matmul-like
ops only (mm/addmm/bmm/convolution/SDPA, forward and backward, 2 FLOPs per multiply-add);
elementwise ops, norms, softmax, the optimizer and FPS/kNN (clora3d.ops kernels) are NOT counted.
"executed" counts what ran (our encoder evaluates its group-feature half once per group instead of
k times); "reference" counts the reference's concat-then-conv encoder for the same model, i.e. the
model's nominal FLOPs (MFU-style).

Memory: every configuration runs in a fresh subprocess; we report its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark) and the growth of that mark
during the measured steps over the mark reached after building model, data and optimizer.
(tracemalloc does not see torch's allocations.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (also in the spawned workers)
    sys.path.insert(0, str(ROOT))

MODES = ("forward", "train_full", "train_frozen")


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.mm`` throughput (GFLOP/s) on ``n x n`` matrices with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _build(spec: dict[str, Any]):
    from clora3d.models import PointTransformer, freeze_bn_stats

    torch.manual_seed(0)
    model = PointTransformer.from_preset(spec["preset"], cls_dim=spec["cls_dim"])
    mode = spec["mode"]
    if mode == "train_frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("cls_head_finetune.") or name in ("cls_token", "cls_pos")
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(spec["batch"], spec["points"], 3, generator=g)
    labels = torch.randint(0, spec["cls_dim"], (spec["batch"],), generator=g)
    opt = None
    if mode != "forward":
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05, fused=True)

    def step() -> None:
        if mode == "forward":
            model.eval()
            with torch.no_grad():
                model(pts)
            return
        model.train()
        freeze_bn_stats(model)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(pts), labels)
        loss.backward()
        opt.step()

    return model, step


def _count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in the current process (called in a fresh subprocess)."""
    torch.set_num_threads(spec["threads"])
    model, step = _build(spec)
    rss_ready = _maxrss_mb()
    step()  # warm-up (allocator, kernels)
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss_peak = _maxrss_mb()
    flops = _count_flops(step)
    model.encoder.split_global = False  # the reference's encoder computation
    flops_ref = _count_flops(step)
    model.encoder.split_global = True
    out = dict(
        spec,
        seconds=min(times),
        median_seconds=statistics.median(times),
        times=times,
        flops=flops,
        flops_reference=flops_ref,
        rss_ready_mb=rss_ready,
        rss_peak_mb=rss_peak,
    )
    if spec.get("profile") and spec["mode"] == "train_full":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        out["profile_table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return out


def _run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_config, (spec,))


def benchmark(
    preset: str = "vit_s",
    batch: int = 32,
    points: int = 1024,
    cls_dim: int = 40,
    steps: int = 3,
    threads: int | None = None,
    modes: tuple[str, ...] = MODES,
    profile: bool = False,
    isolate: bool = True,
) -> dict[str, Any]:
    """Run every mode (each in its own subprocess when ``isolate``) and return the results."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    peak_before = matmul_peak_gflops()
    rows = []
    for mode in modes:
        spec = dict(
            preset=preset,
            batch=batch,
            points=points,
            cls_dim=cls_dim,
            steps=steps,
            threads=threads,
            mode=mode,
            profile=profile,
        )
        rows.append(_run_in_subprocess(spec) if isolate else run_config(spec))
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)
    for r in rows:
        r["samples_per_s"] = r["batch"] / r["seconds"]
        r["gflops_per_s"] = r["flops"] / r["seconds"] / 1e9
        r["reference_gflops_per_s"] = r["flops_reference"] / r["seconds"] / 1e9
        r["fraction_of_peak"] = r["gflops_per_s"] / peak
        r["reference_fraction_of_peak"] = r["reference_gflops_per_s"] / peak
    return dict(
        matmul_peak_gflops=peak,
        matmul_peak_before=peak_before,
        matmul_peak_after=peak_after,
        threads=threads,
        torch=torch.__version__,
        rows=rows,
    )


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of a ``benchmark`` result."""
    lines = [
        f"matmul fp32 peak: {result['matmul_peak_gflops']:.1f} GFLOP/s "
        f"(before {result['matmul_peak_before']:.1f}, after {result['matmul_peak_after']:.1f}; "
        f"{result['threads']} threads, torch {result['torch']})",
        "",
        "| mode | s/step best (median) | samples/s | GFLOP/step executed (reference) | GFLOP/s executed (reference) "
        "| % of matmul peak executed (reference) | peak RSS MB | RSS growth MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['seconds']:.2f} ({r['median_seconds']:.2f}) | {r['samples_per_s']:.1f} | {r['flops'] / 1e9:.1f} "
            f"({r['flops_reference'] / 1e9:.1f}) | {r['gflops_per_s']:.1f} ({r['reference_gflops_per_s']:.1f}) "
            f"| {100 * r['fraction_of_peak']:.1f} ({100 * r['reference_fraction_of_peak']:.1f}) "
            f"| {r['rss_peak_mb']:.0f} | {r['rss_peak_mb'] - r['rss_ready_mb']:.0f} |"
        )
    b = result["rows"][0]
    lines.append("")
    lines.append(
        f"{b['preset']} classification, B={b['batch']}, {b['points']} points, CPU; rates use the best "
        f"of {b['steps']} timed steps (after 1 warm-up), like the best-of matmul peak. FLOPs: "
        "FlopCounterMode (matmul/conv/SDPA fwd+bwd, 2 per MAC; no elementwise/norm/optimizer/FPS/kNN). "
        "Memory: ru_maxrss per fresh subprocess; growth = high-water mark after the steps minus "
        "after building model+data+optimizer."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table (stdout); ``--json`` also writes the results."""
    parser = argparse.ArgumentParser(
        prog=prog or "benchmarks/bench_model.py",
        description="CPU throughput of the classification model (forward, full fine-tuning and frozen-backbone steps).",
    )
    parser.add_argument("--preset", default="vit_s")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--cls-dim", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per mode (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--profile", action="store_true", help="print the torch.profiler top ops of a full step")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {bad}; choose from {MODES}")
    result = benchmark(
        args.preset, args.batch, args.points, args.cls_dim, args.steps, args.threads, modes, args.profile
    )
    print(format_table(result))
    for r in result["rows"]:
        if "profile_table" in r:
            print("\ntorch.profiler, one full fine-tuning step:\n" + r.pop("profile_table"))
    if args.json:
        from clora3d.storage import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode(), what="benchmark JSON")
    return result


if __name__ == "__main__":
    from benchmarks import run_script

    sys.exit(run_script(main))

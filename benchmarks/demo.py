"""The whole clora3d job on the embedded synthetic data, on a CPU, in minutes.

Stages (each shows progress):
 1. write synthetic shapes in the real ModelNet40 and ShapeNet-55 on-disk formats;
 2. pre-train the tiny backbone with the Point-MAE objective on the clean ShapeNet-55-format shapes
    and save it in the official Point-MAE checkpoint layout (every later stage loads it exactly as
    it would load ``pretrain.pth``; one pre-training shared by every method);
 3. the benchmark (:mod:`benchmarks.ranking`): every PEFT method of the project fine-tunes that
    checkpoint on the same budget on a shifted distribution (ScanObjectNN-like partial scans with
    clutter and noise) and on few-shot episodes of it, several seeds; mean +- std accuracy,
    trainable parameters, wall time;
 4. a real-data check: the benchmark's best method (seed 0) classifies the real ModelNet40 shapes of
    ../shared/data whose classes the synthetic set shares (skipped, with a message, without them);
 5. the pipeline on files: CLoRA fine-tuned by the trainer on the ModelNet40-format data, evaluated
    (plain and vote@10), profiled (parameters, adapter size, GFLOPs merged and unmerged);
 6. export the CLoRA adapter and the merged model, classify one point cloud file with
    ``tools/infer.py``, and render PNGs (clouds, curves).

The tables go to stdout, ``<out>/demo_table.md`` and ``<out>/demo_result.json``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.ranking import BenchSize

REPO = Path(__file__).resolve().parents[1]
METHODS = ("clora",)  # fine-tuned by the trainer on files (stage 5); the benchmark runs every method


@dataclass(frozen=True)
class DemoSize:
    """How much data and training the demo uses."""

    num_classes: int
    n_train: int  # train shapes per class
    n_test: int  # test shapes per class
    pretrain_shapes: int  # ShapeNet-55-format pre-training shapes per class
    pretrain_epochs: int
    finetune_epochs: int


FULL = DemoSize(num_classes=16, n_train=20, n_test=10, pretrain_shapes=48, pretrain_epochs=15, finetune_epochs=8)
QUICK = DemoSize(num_classes=8, n_train=6, n_test=4, pretrain_shapes=8, pretrain_epochs=1, finetune_epochs=1)

#: benchmark sizes (stage 3); the full size is tuned so that linear probing and full fine-tuning
#: differ by many standard deviations under two pre-training seeds; the benchmark's jobs run in one
#: process per core.
#: - 30 test scans per class (480) and 20 per few-shot class: evaluation is cheap, and with 10 (160
#:   scans) the last-epoch accuracy of one run moved by 3 points between test draws;
#: - few-shot 10-way 10-shot (one of the Point-MAE protocol's settings) for 40 epochs: 5-way episodes
#:   differ so much in difficulty that one method's accuracy spread 48-89 % over three episodes, and
#:   with 20 epochs full fine-tuning had not converged (10-way: full - linear 2.5 x the std at 20
#:   epochs, 3.0 and 4.9 x at 40, pre-training seeds 1 and 0);
#: - no stochastic depth (``BenchSize.drop_path``).
FULL_BENCH = BenchSize(
    n_train=16,
    n_test=30,
    way=10,
    shot=10,
    fewshot_test=20,
    fewshot_pool=30,
    epochs=15,
    fewshot_epochs=40,
    seeds=(0, 1, 2),
)
QUICK_BENCH = BenchSize(
    num_classes=8,
    n_train=3,
    n_test=2,
    way=3,
    shot=2,
    fewshot_test=2,
    fewshot_pool=4,
    epochs=1,
    fewshot_epochs=1,
    batch_size=4,
    seeds=(0, 1),
    npoints=128,
    point_all=160,
)


def _stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _fmt_params(n: int) -> str:
    return f"{n / 1e3:.1f} K" if n < 1e6 else f"{n / 1e6:.2f} M"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def write_data(out: Path, size: DemoSize) -> dict[str, Path]:
    """Synthetic ModelNet40-format (classification) and ShapeNet-55-format (pre-training) data."""
    from clora3d.data.synthetic import write_modelnet40, write_shapenet55

    root = out / "data"
    mn = root / "ModelNet" / "modelnet40_normal_resampled"
    sn = root / "ShapeNet55-34"
    t0 = time.perf_counter()
    write_modelnet40(mn, num_classes=size.num_classes, n_train=size.n_train, n_test=size.n_test, n_points=1024, seed=0)
    # pre-training shapes are other samples of the same families (seed 1), as ShapeNet covers
    # ModelNet's categories; no test shape of the classification split is seen in pre-training
    write_shapenet55(sn, num_classes=size.num_classes, n_train=size.pretrain_shapes, n_test=2, n_points=1024, seed=1)
    print(
        f"wrote {size.num_classes} classes x ({size.n_train} train + {size.n_test} test) "
        f"ModelNet40-format shapes to {mn}\n"
        f"wrote {size.num_classes} x {size.pretrain_shapes} ShapeNet-55-format shapes to {sn} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return {"modelnet": mn, "shapenet55": sn}


def _cfg(name: str, overrides: list[str]) -> dict:
    from clora3d.engine.config import load_config

    return load_config(REPO / "cfgs" / "demo" / f"{name}.yaml", overrides)


def pretrain(out: Path, data: dict[str, Path], size: DemoSize, seed: int = 0) -> Path:
    """Point-MAE pre-training of the tiny backbone (trainer seed ``seed``); returns an
    official-layout checkpoint."""
    from clora3d.engine import train
    from clora3d.engine.infer import load_run
    from clora3d.models.checkpoint import save_point_mae_checkpoint

    cfg = _cfg(
        "pretrain",
        [
            f"dataset.train.root={data['shapenet55']}",
            f"dataset.test.root={data['shapenet55']}",
            f"train.epochs={size.pretrain_epochs}",
            f"seed={seed}",
        ],
    )
    t0 = time.perf_counter()
    res = train(cfg, run_dir=out / "runs" / "pretrain")
    model, _, _, _ = load_run(Path(res["run_dir"]) / "ckpt-last.pth")
    path = out / "pretrain.pth"
    save_point_mae_checkpoint(model, path)
    print(
        f"pre-training: last loss {res['last'].get('loss', float('nan')):.4f} "
        f"({time.perf_counter() - t0:.0f} s); Point-MAE-layout checkpoint -> {path}"
    )
    return path


def finetune(out: Path, data: dict[str, Path], size: DemoSize, ckpt: Path, method: str) -> dict[str, Any]:
    """Fine-tune ``ckpt`` with one PEFT method; returns the trainer's result + wall time."""
    from clora3d.engine import train

    cfg = _cfg(
        f"finetune_{method}",
        [
            f"dataset.train.root={data['modelnet']}",
            f"dataset.test.root={data['modelnet']}",
            f"model.cls_dim={size.num_classes}",
            f"train.epochs={size.finetune_epochs}",
        ],
    )
    t0 = time.perf_counter()
    res = train(cfg, ckpt=str(ckpt), run_dir=out / "runs" / method)
    res["wall_s"] = time.perf_counter() - t0
    return res


def profile_method(run_dir: Path, out: Path, npoints: int) -> dict[str, Any]:
    """Trainable parameters, adapter size and GFLOPs (unmerged and merged) of a finished run."""
    from clora3d.engine.infer import load_run
    from clora3d.profile import count_flops, parameter_report

    model, _, _, method = load_run(run_dir / "ckpt-last.pth", need_method=True)
    model.eval()
    params = parameter_report(model, method)
    adapter = method.save_adapter(out / "adapters" / f"{method.name}.pth")
    pts = torch.rand(1, npoints, 3) * 2 - 1
    unmerged = count_flops(model, pts)
    merged = None
    if getattr(method, "mergeable", False) and getattr(method, "peft_params", None):
        method.merge()
        merged = count_flops(model, pts)
        method.unmerge()
    return {
        "params": params,
        "adapter_bytes": Path(adapter).stat().st_size,
        "gflops": unmerged["flops"] / 1e9,
        "gflops_merged": (merged or unmerged)["flops"] / 1e9,
    }


def run(
    out: str | Path = "demo_out",
    quick: bool = False,
    pretrain_seed: int = 0,
    pretrain_threads: int = 1,
    methods: Sequence[str] | None = None,
    record: str | Path | None = None,
) -> dict[str, Any]:
    """Run every stage; returns the result dict that is also written to ``<out>/demo_result.json``.

    ``pretrain_seed`` / ``pretrain_threads``: the pre-training condition (trainer seed, intra-op
    threads of the pre-training stage only). ``methods``: benchmark rows to run (labels of
    :data:`benchmarks.ranking.BENCH_METHODS`; default all), e.g. ``["full", "linear"]`` to check the
    separation under another pre-training condition in a few minutes.

    Everything runs on one intra-op thread (the benchmark's jobs run one process per core): float
    sums depend on the thread count, and the pre-trained backbone every method starts from, so the
    table, changed visibly (a run whose pre-training used 2 threads gave full fine-tuning one
    unstable seed). One thread makes the printed table the same on every run of one machine type.
    """
    if isinstance(pretrain_seed, bool) or not isinstance(pretrain_seed, int) or pretrain_seed < 0:
        raise ValueError(f"demo: pretrain_seed (--pretrain-seed) must be an integer >= 0, got {pretrain_seed!r}")
    if isinstance(pretrain_threads, bool) or not isinstance(pretrain_threads, int) or pretrain_threads < 1:
        raise ValueError(
            f"demo: pretrain_threads (--pretrain-threads) must be an integer >= 1, got {pretrain_threads!r}"
        )
    from benchmarks.ranking import BENCH_METHODS

    methods = list(BENCH_METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in BENCH_METHODS]
    if unknown or not methods:
        raise ValueError(
            f"demo: unknown benchmark method(s) {unknown} in --methods; expected a non-empty "
            f"comma-separated subset of {', '.join(BENCH_METHODS)}"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, quick, pretrain_seed, pretrain_threads, methods, record)
    finally:
        torch.set_num_threads(threads)


def _run(
    out: str | Path,
    quick: bool,
    pretrain_seed: int,
    pretrain_threads: int,
    methods: list[str],
    record: str | Path | None = None,
) -> dict[str, Any]:
    from benchmarks import ranking as B
    from clora3d.data.synthetic import SYNTHETIC_CLASSES
    from clora3d.models.checkpoint import read_checkpoint

    t_start = time.perf_counter()
    torch.manual_seed(0)
    np.random.seed(0)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    bsize = QUICK_BENCH if quick else FULL_BENCH
    stage_times: dict[str, float] = {}

    _stage("1/6 synthetic data in the real on-disk formats")
    t0 = time.perf_counter()
    data = write_data(out, size)
    stage_times["data"] = time.perf_counter() - t0

    _stage("2/6 Point-MAE pre-training of the tiny backbone on clean shapes (shared by every method)")
    t0 = time.perf_counter()
    torch.set_num_threads(pretrain_threads)
    try:
        ckpt = pretrain(out, data, size, seed=pretrain_seed)
    finally:
        torch.set_num_threads(1)
    stage_times["pretrain"] = time.perf_counter() - t0

    _stage(
        "3/6 benchmark: every PEFT method on shifted scans and few-shot episodes, same budget, "
        f"seeds {list(bsize.seeds)}"
    )
    t0 = time.perf_counter()
    state = read_checkpoint(ckpt)
    # the best method is known only afterwards: keep every method's first-seed scan model (tiny)
    bench = B.run_benchmark(state, bsize, {m: B.BENCH_METHODS[m] for m in methods}, keep=tuple(methods))
    stage_times["benchmark"] = time.perf_counter() - t0
    btable = B.format_table(bench["summary"], bsize.tasks)
    print("\n" + btable)

    _stage("4/6 real-data check: the best method on real ModelNet40 shapes (classes shared with the synthetic set)")
    t0 = time.perf_counter()
    by_scan = sorted(bench["summary"], key=lambda r: -r["scan_mean"])
    best = by_scan[0]["method"]
    kept = bench["kept"][best]
    real = B.real_modelnet_check(kept["model"], SYNTHETIC_CLASSES[: bsize.num_classes], bsize.npoints)
    real["method"] = best
    print(format_real(real))
    bench["kept"] = None
    stage_times["real_check"] = time.perf_counter() - t0

    _stage("5/6 pipeline on files: CLoRA fine-tuned by the trainer, evaluated (plain, vote@10), profiled")
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for method in METHODS:
        print(f"\n--- {method} ---", flush=True)
        results[method] = finetune(out, data, size, ckpt, method)
    rows = []
    for method in METHODS:
        r = results[method]
        prof = profile_method(Path(r["run_dir"]), out, npoints=256)
        last, best_ep = r["last"], r["best"]
        rows.append(
            {
                "method": method,
                "acc_last": last.get("acc"),
                "acc_best": best_ep.get("acc"),
                "best_epoch": best_ep.get("epoch"),
                "acc_vote10_last": last.get("acc_vote@10"),
                "trainable_params": prof["params"]["trainable"],
                "trainable_params_no_head": prof["params"].get("trainable_without_head"),
                "total_params": prof["params"]["total"],
                "adapter_bytes": prof["adapter_bytes"],
                "gflops_unmerged": prof["gflops"],
                "gflops_merged": prof["gflops_merged"],
                "wall_s": r["wall_s"],
            }
        )
    stage_times["pipeline"] = time.perf_counter() - t0

    _stage("6/6 export, inference on a file, renders")
    t0 = time.perf_counter()
    extras = export_and_show(out, data, Path(results["clora"]["run_dir"]), results)
    stage_times["export_infer_render"] = time.perf_counter() - t0

    total = time.perf_counter() - t_start
    sep = {t: B.separation(bench["summary"], t) for t in bsize.tasks}
    bheader = (
        f"clora3d demo ({'quick' if quick else 'full'}), "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {_machine()}\n"
        f"benchmark: tiny backbone (96 dims, 4 blocks, 32 groups x 16, {bsize.npoints} points) pre-trained "
        f"with Point-MAE on clean synthetic shapes ({size.num_classes} classes x {size.pretrain_shapes}, "
        f"{size.pretrain_epochs} epochs, seed {pretrain_seed}, {pretrain_threads} thread(s)), fine-tuned on shifted synthetic scans (partial views, occluder, "
        f"floor/wall clutter, sensor noise): scan = {bsize.num_classes} classes x {bsize.n_train} train / "
        f"{bsize.n_test} test scans, {bsize.epochs} epochs; few-shot = {bsize.way}-way {bsize.shot}-shot, "
        f"{bsize.fewshot_test} test scans per class, {bsize.fewshot_epochs} epochs, one episode per seed; "
        f"AdamW, batch {bsize.batch_size}, cosine, lr {bsize.lr:g} except where the lr column says "
        f"otherwise (a method's lr is part of its recipe); {B.benchmark_workers(bsize)} worker "
        f"process(es) x 1 thread; last-epoch accuracy, mean ± std "
        f"over seeds {list(bsize.seeds)}; wall time per run (scan + few-shot)"
    )
    cpu = _cpu_seconds()
    result = {
        "cpu_s": cpu,
        "header": bheader,
        "benchmark": {
            "summary": bench["summary"],
            "runs": bench["runs"],
            "separation": sep,
            "size": dict(bsize.__dict__),
        },
        "real_check": real,
        "rows": rows,
        "stage_times_s": stage_times,
        "total_s": total,
        "quick": quick,
        "pretrain_seed": pretrain_seed,
        "pretrain_threads": pretrain_threads,
        "workers": B.benchmark_workers(bsize),
        "size": dict(size.__dict__),
        **extras,
    }
    text = render_text(result)
    print("\n" + text)
    print("\n" + timing_line(result))
    (out / "demo_table.md").write_text(text + "\n")
    (out / "demo_result.json").write_text(json.dumps(result, indent=2, default=str))
    if record is not None:
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        Path(record).write_text(json.dumps(doc_record(result), indent=2, default=str) + "\n")
        print(f"record for the docs (tools/render_bench_tables.py renders it): {record}")
    print(f"\nresults: {out / 'demo_table.md'}, {out / 'demo_result.json'}")
    return result


def render_text(result: dict[str, Any]) -> str:
    """The demo's printed tables, from its result (what ``run`` prints and the README shows)."""
    from benchmarks import ranking as B

    tasks = result["benchmark"]["size"]["tasks"]
    summary = result["benchmark"]["summary"]
    size = result["size"]
    pheader = (
        f"pipeline on files: CLoRA fine-tuned by tools/train.py's trainer on synthetic ModelNet40-format "
        f"data ({size['num_classes']} classes, {size['n_train']} train / {size['n_test']} test shapes per "
        f"class, {size['finetune_epochs']} epochs); GFLOPs = 2 x MACs of one 256-point sample, FPS/kNN "
        f"excluded"
    )
    return (
        result["header"]
        + "\n\n"
        + B.format_table(summary, tasks)
        + "\n\n"
        + B.format_separation(summary, tasks, result["benchmark"]["runs"])
        + "\n\n"
        + format_real(result["real_check"])
        + "\n\n"
        + pheader
        + "\n\n"
        + format_table(result["rows"])
    )


def timing_line(result: dict[str, Any]) -> str:
    """Stage wall times, total and CPU time of one demo run."""
    workers = result.get("workers", 1)
    return (
        "stage wall times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["stage_times_s"].items())
        + f"; total {result['total_s']:.0f} s; CPU time {result['cpu_s']:.0f} s (this process and its "
        f"children, all threads; {workers} benchmark worker process(es))"
    )


#: result keys that name files of one run's output folder (left out of the record kept in docs/)
_RUN_LOCAL = ("export", "infer_stdout", "infer_file", "renders")


def doc_record(result: dict[str, Any]) -> dict[str, Any]:
    """What docs/bench/demo*.json keep of a result: everything but the paths of the run's own folder."""
    return {k: v for k, v in result.items() if k not in _RUN_LOCAL}


def readme_block(record: dict[str, Any], json_rel: str, command: str) -> str:
    """The README's rendering of a demo record (docs/bench/demo*.json): provenance, timing, the
    header and text lines in code blocks, the tables as Markdown (tools/render_bench_tables.py)."""
    from benchmarks import ranking as B

    tasks = record["benchmark"]["size"]["tasks"]
    summary = record["benchmark"]["summary"]
    text = render_text(record)
    btable = B.format_table(summary, tasks)
    ptable = format_table(record["rows"])
    head, rest = text.split("\n\n" + btable + "\n\n", 1)
    middle = rest[: -len("\n\n" + ptable)] if ptable and rest.endswith(ptable) else rest
    return (
        f"From `{json_rel}`, written by `{command}` (rendered by `tools/render_bench_tables.py`); "
        f"{timing_line(record)}.\n\n```\n{head}\n```\n\n{btable}\n\n```\n{middle}\n```\n\n{ptable}"
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (0 where unsupported)."""
    try:
        import resource
    except ImportError:
        return 0.0
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def format_real(real: dict[str, Any]) -> str:
    """One paragraph on the real-data check."""
    if "skipped" in real:
        return f"real-data check skipped: {real['skipped']}"
    wrong = [f"{s} -> {p}" for s, p in real["per_shape"] if not s.startswith(p + "_")]
    return (
        f"real-data check ({real['method']}, seed 0, trained on synthetic scans only): {real['correct']} of "
        f"{real['n']} real ModelNet40 shapes right ({real['acc']:.1f}%; chance {real['chance']:.1f}%) over the "
        f"{len(real['classes'])} shared classes {', '.join(real['classes'])}; the argmax runs over those "
        f"classes only. Misclassified: {', '.join(wrong) if wrong else 'none'}."
    )


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo's Markdown table."""
    lines = [
        "| method | acc last (%) | acc best (%) @epoch | vote@10 last (%) | trainable params "
        "(w/o head) | adapter file | GFLOPs unmerged | GFLOPs merged | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        no_head = r.get("trainable_params_no_head")
        tp = _fmt_params(r["trainable_params"]) + (f" ({_fmt_params(no_head)})" if no_head is not None else "")
        lines.append(
            f"| {r['method']} | {_pct(r['acc_last'])} | {_pct(r['acc_best'])} @{r['best_epoch']} | "
            f"{_pct(r['acc_vote10_last'])} | {tp} | {r['adapter_bytes'] / 1024:.0f} KiB | "
            f"{r['gflops_unmerged']:.4f} | {r['gflops_merged']:.4f} | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def export_and_show(
    out: Path, data: dict[str, Path], clora_run: Path, results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Export the CLoRA adapter + merged model, run tools/infer.py on one file, render PNGs."""
    from clora3d.data.io import read_point_cloud
    from clora3d.engine.export import export_run
    from clora3d.viz import plot_training_curves, render_cloud

    exp = export_run(
        clora_run / "ckpt-best.pth",
        adapter_out=out / "export" / "clora_adapter.pth",
        merged_out=out / "export" / "clora_merged_pointmae.pth",
    )
    print(
        f"exported CLoRA adapter ({exp['adapter_bytes'] / 1024:.0f} KiB) -> {exp['adapter']}\n"
        f"exported merged model ({exp['merged_bytes'] / 1024:.0f} KiB, official Point-MAE keys; "
        f"max |logit diff| after merge {exp['max_abs_diff_merge']:.2e}) -> {exp['merged']}"
    )

    # one test shape of the synthetic split, as a user would hand it over
    test_ids = (data["modelnet"] / "modelnet40_test.txt").read_text().split()
    sample_id = test_ids[len(test_ids) // 2]
    sample = data["modelnet"] / sample_id.rsplit("_", 1)[0] / f"{sample_id}.txt"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "infer.py"),
        "--ckpt",
        str(clora_run / "ckpt-best.pth"),
        str(sample),
        "--topk",
        "3",
    ]
    print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"tools/infer.py failed ({proc.returncode}): {proc.stderr.strip()}")

    renders = out / "renders"
    xyz, _ = read_point_cloud(sample)
    pngs = [render_cloud(xyz, renders / f"{sample_id}.png", title=f"{sample_id} (synthetic test shape)")]
    for method, r in results.items():
        pngs.append(plot_training_curves(r["run_dir"], renders / f"curves_{method}.png"))
    for p in pngs:
        print(f"render -> {p}")
    return {"export": exp, "infer_stdout": proc.stdout, "infer_file": str(sample), "renders": [str(p) for p in pngs]}


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``python benchmarks/demo.py`` / ``tools/demo.py`` / ``make demo``: parse the options, run every
    stage; a user error (bad option value, missing data) is one ``error:`` line and exit 2."""
    import argparse

    from clora3d.errors import run_tool

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="output folder (data, runs, exports, renders)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: a smoke test")
    ap.add_argument(
        "--pretrain-seed",
        type=int,
        default=0,
        help="seed of the Point-MAE pre-training (another pre-trained backbone; default 0)",
    )
    ap.add_argument(
        "--pretrain-threads",
        type=int,
        default=1,
        help="intra-op threads of the pre-training stage (float sums, and so the backbone, depend on it; default 1)",
    )
    ap.add_argument(
        "--methods",
        default=None,
        help="comma-separated benchmark rows to run (default: every method), e.g. full,linear",
    )
    ap.add_argument(
        "--record",
        default=None,
        help="also write the result without the run folder's paths to this JSON file (the docs' "
        "copies: docs/bench/demo.json, rendered into the README by tools/render_bench_tables.py)",
    )
    args = ap.parse_args(argv)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",")]

    def body() -> int:
        run(
            args.out,
            quick=args.quick,
            pretrain_seed=args.pretrain_seed,
            pretrain_threads=args.pretrain_threads,
            methods=methods,
            record=args.record,
        )
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

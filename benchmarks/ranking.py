"""A CPU-sized benchmark that ranks PEFT methods: pre-train on clean shapes, adapt to shifted scans.

One pre-trained tiny backbone (Point-MAE objective on clean synthetic shapes, ShapeNet-55 style) is
fine-tuned by every PEFT method of the project on the same budget (recipe, epochs, batches, seeds)
on two tasks built from a *shifted* distribution (:func:`clora3d.data.synthetic.make_scan_shape`:
partial scans with self-occlusion, an occluder cut, floor/wall clutter and sensor noise, the
ScanObjectNN situation):

* ``scan``: every synthetic class, ``n_train`` / ``n_test`` scans per class (one fixed data set;
  the seed changes the head initialisation, batch order, point subsets and augmentations);
* ``fewshot``: ``way``-way ``shot``-shot episodes from a separate pool of scans, one episode per
  seed (classes and shots drawn from the seed), as the few-shot protocol's folds.

Accuracy is the last epoch's overall accuracy on the test scans (no selection on the test set, no
voting). Results are reported as mean +- std (sample std, ddof 1) over seeds, with trainable
parameters and wall time per run. For CLoRA the run also records what SADE does: the ratio of
the SADE gradient norm to the task gradient norm on the CLoRA parameters and the mean squared
cosine similarity of each LRM's components at the end (see :func:`component_similarity`).

Everything stays in memory (no files): every job builds its model, pre-trained weights, PEFT method,
optimizer and scheduler with the trainer's builder (:mod:`clora3d.engine.build`) from one run config
(:func:`run_config`), and batches through the trainer's pipeline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

#: Benchmark rows: label -> PEFT config (the shipped ``cfgs/_base_/peft/<NAME>.yaml`` plus overrides).
BENCH_METHODS: dict[str, dict[str, Any]] = {
    "full": {"NAME": "full"},
    "linear": {"NAME": "linear"},
    "bitfit": {"NAME": "bitfit"},
    "lora": {"NAME": "lora"},
    "clora": {"NAME": "clora"},
    "clora (no SADE)": {"NAME": "clora", "sade": False},
    "adapter": {"NAME": "adapter"},
    "prompt": {"NAME": "prompt"},
    # the point cloud PEFT baselines, sized for the tiny backbone (their ViT-S settings do not fit it:
    # IDPT's block 11 does not exist, PointGST's 32-token local graphs would span the whole cloud)
    "pointlora": {"NAME": "pointlora", "prompt_hidden": 16, "prompt_span": 32, "scales": [[32, 16, 8], [16, 32, 2]]},
    "dapt": {"NAME": "dapt", "rank": 16},
    "pointgst": {"NAME": "pointgst", "rank": 12, "local_size": 8},
    "idpt": {"NAME": "idpt", "prompt_layer": 3, "k": 8},
}

#: Per-method learning rate, part of a method's recipe (a method not listed uses ``BenchSize.lr``).
BENCH_LR: dict[str, float] = {}


@dataclass(frozen=True)
class BenchSize:
    """Data, budget and seeds of one benchmark run."""

    n_train: int = 16  # scan task: train scans per class
    n_test: int = 10  # scan task: test scans per class
    way: int = 5  # few-shot task
    shot: int = 10
    fewshot_test: int = 10  # test scans per class of an episode
    fewshot_pool: int = 20  # scans per class in the few-shot pool (train and test draw apart)
    epochs: int = 20  # scan task
    fewshot_epochs: int = 20
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    num_classes: int = 16  # synthetic classes used
    npoints: int = 256  # points the model sees
    point_all: int = 320  # points per generated scan (training subsets npoints of them)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    #: stochastic depth of the fine-tuned backbone; 0, not the ViT-S recipe's 0.1: with 4 blocks, 0.1
    #: made full fine-tuning bimodal (scan accuracy 35.4 / 37.5 / 61.9 over three seeds of one
    #: pre-training; 57.1 / 55.2 / 56.7 with 0)
    drop_path: float = 0.0
    tasks: tuple[str, ...] = ("scan", "fewshot")
    workers: int = 0  # processes running fine-tuning jobs in parallel; 0 = one per CPU core


def peft_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The shipped ``cfgs/_base_/peft/<NAME>.yaml`` section with ``spec``'s keys on top."""
    import yaml

    path = REPO / "cfgs" / "_base_" / "peft" / f"{spec['NAME']}.yaml"
    base = yaml.safe_load(path.read_text())["peft"] if path.is_file() else {"NAME": spec["NAME"]}
    return {**base, **spec}


# ------------------------------------------------------------------------------------------ data
def make_scans(labels: Sequence[int], n_points: int, seed: Any) -> np.ndarray:
    """(len(labels), n_points, 3) float32 scans; scan ``i`` draws from ``default_rng([*seed, i])``."""
    from clora3d.data.synthetic import make_scan_shape

    seed = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return np.stack(
        [make_scan_shape(int(c), n_points, np.random.default_rng([*seed, i]))[0] for i, c in enumerate(labels)]
    )


def scan_task(size: BenchSize, data_seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``scan`` task: every class, ``n_train`` + ``n_test`` scans each (fixed by ``data_seed``)."""
    ytr = np.repeat(np.arange(size.num_classes), size.n_train)
    yte = np.repeat(np.arange(size.num_classes), size.n_test)
    return {
        "train_x": torch.from_numpy(make_scans(ytr, size.point_all, (data_seed, 100))),
        "train_y": torch.from_numpy(ytr),
        "num_classes": size.num_classes,
        "test_x": torch.from_numpy(make_scans(yte, size.point_all, (data_seed, 101))),
        "test_y": torch.from_numpy(yte),
    }


def fewshot_pool(size: BenchSize, data_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The few-shot pool: ``fewshot_pool`` scans per class (apart from the scan task's scans)."""
    y = np.repeat(np.arange(size.num_classes), size.fewshot_pool)
    return make_scans(y, size.point_all, (data_seed, 102)), y


def fewshot_episode(pool: tuple[np.ndarray, np.ndarray], size: BenchSize, seed: int) -> dict[str, Any]:
    """One ``way``-way ``shot``-shot episode of the pool, drawn from ``seed`` (labels 0..way-1)."""
    x, y = pool
    rng = np.random.default_rng([seed, 103])
    classes = np.sort(rng.choice(size.num_classes, size.way, replace=False))
    tr, te = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < size.shot + size.fewshot_test:
            raise ValueError(
                f"few-shot pool has {len(idx)} scans of class {c}, fewer than shot + "
                f"fewshot_test = {size.shot + size.fewshot_test}; raise fewshot_pool"
            )
        tr.append(idx[: size.shot])
        te.append(idx[size.shot : size.shot + size.fewshot_test])
    remap = {int(c): k for k, c in enumerate(classes)}
    tr, te = np.concatenate(tr), np.concatenate(te)
    return {
        "train_x": torch.from_numpy(x[tr]),
        "train_y": torch.tensor([remap[int(v)] for v in y[tr]]),
        "test_x": torch.from_numpy(x[te]),
        "test_y": torch.tensor([remap[int(v)] for v in y[te]]),
        "num_classes": size.way,
        "classes": classes.tolist(),
    }


# -------------------------------------------------------------------------------------- training
def component_similarity(method: Any) -> float:
    """Mean over CLoRA LRMs and component pairs a < b of ``||M_a^T M_b||^2 / (||M_a||^2 ||M_b||^2)``:
    0 when the components are mutually orthogonal, 1 when they are identical up to scale."""
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for sp in method.spaces.values():
            p = sp.D.shape[0]
            if p < 2:
                continue
            tot += float(sp.sade(True, 1e-30))  # summed over LRMs and pairs (CLoRA# counts every LRM)
            cnt += sp.num_lrm * p * (p - 1) // 2
    return tot / cnt if cnt else float("nan")


def run_config(
    num_classes: int,
    peft_cfg: Mapping[str, Any],
    size: BenchSize | None = None,
    epochs: int = 1,
    lr: float | None = None,
    drop_path: float | None = None,
) -> dict[str, Any]:
    """The run config one benchmark job trains with, as :mod:`clora3d.engine.build` takes it: the tiny
    backbone with ``num_classes`` outputs and stochastic depth ``drop_path`` (default
    ``size.drop_path``), the PEFT section ``peft_cfg``, AdamW at ``lr`` (default ``size.lr``) and the
    recipe's cosine schedule over ``epochs``."""
    size = size or BenchSize()
    return {
        "model": {
            "NAME": "PointTransformer",
            "preset": "tiny",
            "cls_dim": num_classes,
            "drop_path_rate": size.drop_path if drop_path is None else drop_path,
        },
        "peft": dict(peft_cfg),
        "optimizer": {
            "NAME": "AdamW",
            "lr": size.lr if lr is None else lr,
            "weight_decay": size.weight_decay,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
        },
        "scheduler": {"NAME": "CosLR", "lr_min": 1e-6, "warmup_epochs": size.warmup_epochs, "warmup_lr_init": 1e-5},
        "train": {"epochs": epochs},
    }


def build_finetune_model(
    pretrained: Mapping[str, torch.Tensor],
    num_classes: int,
    peft_cfg: Mapping[str, Any],
    seed: int,
    drop_path: float = 0.0,
) -> tuple[torch.nn.Module, Any]:
    """Tiny backbone with ``num_classes`` outputs and stochastic depth ``drop_path``, pre-trained
    weights loaded, PEFT method applied: the trainer's builder (:mod:`clora3d.engine.build`) on
    :func:`run_config`, after seeding everything from ``seed``."""
    from clora3d.engine import build
    from clora3d.engine.pipeline import seed_everything

    seed_everything(seed)
    cfg = run_config(num_classes, peft_cfg, drop_path=drop_path)
    model = build.build_model(cfg)
    build.load_weights(model, dict(pretrained), log=None)
    return model, build.build_method(model, cfg)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    npoints: int,
    classes: Sequence[int] | None = None,
    batch: int = 64,
) -> tuple[float, torch.Tensor]:
    """Overall accuracy (%) of ``model`` on clouds ``x`` (FPS to ``npoints``) and the predictions;
    ``classes`` restricts the argmax to those logits (predictions are then indices into it)."""
    from clora3d.engine.pipeline import TrainBatchPipeline

    fps = TrainBatchPipeline("fps", npoints, None, None)
    model.eval()
    preds = []
    for i in range(0, len(x), batch):
        logits = model(fps(x[i : i + batch].float()))
        if classes is not None:
            logits = logits[:, list(classes)]
        preds.append(logits.argmax(-1))
    pred = torch.cat(preds)
    return 100.0 * float((pred == y).float().mean()), pred


def finetune(
    pretrained: Mapping[str, torch.Tensor],
    peft_cfg: Mapping[str, Any],
    task: Mapping[str, Any],
    size: BenchSize,
    seed: int,
    epochs: int,
    *,
    sade_stats: bool = False,
    keep_model: bool = False,
    lr: float | None = None,
) -> dict[str, Any]:
    """Fine-tune the pre-trained tiny backbone on ``task`` with one method (learning rate ``lr``,
    default ``size.lr``); returns accuracy, wall time, parameter counts (and SADE statistics for
    CLoRA with ``sade_stats``)."""
    from clora3d.data.transforms import ScaleAndTranslate
    from clora3d.engine import build
    from clora3d.engine.pipeline import TrainBatchPipeline, derive_seed
    from clora3d.profile import parameter_report

    t0 = time.perf_counter()
    model, method = build_finetune_model(pretrained, task["num_classes"], peft_cfg, seed, size.drop_path)
    trainable = method.trainable_parameters()
    lr = size.lr if lr is None else lr
    opt, sched = build.build_optimizer(method, run_config(task["num_classes"], peft_cfg, size, epochs, lr))
    pipe = TrainBatchPipeline("fps_subset", size.npoints, size.point_all, ScaleAndTranslate())
    params = list({id(p): p for p in trainable.values()}.values())
    clora_params = list(method.peft_params.values()) if method.name == "clora" else []
    track = sade_stats and bool(clora_params) and method.config["sade"] and method.config["sade_lambda"] > 0
    ratios: list[float] = []
    x, y = task["train_x"], task["train_y"]
    n = len(x)
    bs = min(size.batch_size, n)
    step = 0
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        sub = torch.Generator().manual_seed(derive_seed(seed, "subset", epoch))
        aug = torch.Generator().manual_seed(derive_seed(seed, "aug", epoch))
        order = torch.randperm(n, generator=gen)
        method.train()
        for i in range(0, n - bs + 1, bs):  # drop_last, as the reference loaders
            idx = order[i : i + bs]
            pts = pipe(x[idx].float(), subset_gen=sub, aug_gen=aug)
            task_loss = F.cross_entropy(model(pts), y[idx].long())
            reg = method.regularization_loss()
            opt.zero_grad(set_to_none=True)
            if track:
                g_reg = torch.autograd.grad(reg, clora_params, retain_graph=True, allow_unused=True)
            (task_loss + reg).backward()
            if track:
                rn = math.sqrt(sum(float(g.pow(2).sum()) for g in g_reg if g is not None))
                tn = math.sqrt(
                    sum(
                        float((p.grad - (g if g is not None else 0)).pow(2).sum())
                        for p, g in zip(clora_params, g_reg)
                        if p.grad is not None
                    )
                )
                ratios.append(rn / tn if tn > 0 else float("nan"))
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            step += 1
        sched.step(epoch)
    acc, _ = accuracy(model, task["test_x"], task["test_y"], size.npoints)
    rep = parameter_report(model, method)
    out: dict[str, Any] = {
        "acc": acc,
        "wall_s": time.perf_counter() - t0,
        "steps": step,
        "lr": lr,
        "trainable": rep["trainable"],
        "trainable_no_head": rep.get("trainable_without_head"),
    }
    if method.name == "clora":
        out["similarity"] = component_similarity(method)
        out["sade"] = float(method.regularization_loss().detach())
        if track:
            out["grad_ratio_first"] = ratios[1] if len(ratios) > 1 else ratios[0]
            out["grad_ratio_mean"] = float(np.nanmean(ratios))
    if keep_model:
        out["model"], out["method"] = model, method
    return out


def benchmark_workers(size: BenchSize) -> int:
    """How many processes run fine-tuning jobs: ``size.workers``, or one per usable CPU core."""
    if size.workers > 0:
        return size.workers
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _finetune_job(
    pretrained: Mapping[str, torch.Tensor],
    cfg: Mapping[str, Any],
    task: Mapping[str, Any],
    size: BenchSize,
    seed: int,
    epochs: int,
    lr: float,
) -> dict[str, Any]:
    return finetune(pretrained, cfg, task, size, seed, epochs, lr=lr)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def run_benchmark(
    pretrained: Mapping[str, torch.Tensor],
    size: BenchSize,
    methods: Mapping[str, Mapping[str, Any]] | None = None,
    log: Callable[[str], None] = print,
    keep: Sequence[str] = (),
    lrs: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Every method x task x seed; returns per-run results and per-method summaries.

    ``lrs``: label -> learning rate for methods that do not use ``size.lr`` (default
    :data:`BENCH_LR`; ``{}`` gives every method ``size.lr``).

    ``keep``: labels of methods whose first-seed ``scan`` model (and PEFT method) are returned
    under ``"kept"`` (for the real-data check)."""
    methods = dict(methods or BENCH_METHODS)
    lrs = dict(BENCH_LR if lrs is None else lrs)
    t0 = time.perf_counter()
    tasks: dict[str, Any] = {}
    if "scan" in size.tasks:
        tasks["scan"] = scan_task(size)
    pool = fewshot_pool(size) if "fewshot" in size.tasks else None
    log(
        f"benchmark data: scan task {size.num_classes} classes x ({size.n_train} train + {size.n_test} test), "
        f"few-shot {size.way}-way {size.shot}-shot x {size.fewshot_test} test per class from a pool of "
        f"{size.fewshot_pool} per class ({time.perf_counter() - t0:.1f} s)"
    )
    jobs: list[dict[str, Any]] = []
    for label, spec in methods.items():
        cfg = peft_config(spec)
        for task_name in size.tasks:
            for seed in size.seeds:
                jobs.append(
                    {
                        "label": label,
                        "cfg": cfg,
                        "task_name": task_name,
                        "seed": seed,
                        "lr": lrs.get(label, size.lr),
                        "keep": label in keep and task_name == "scan" and seed == size.seeds[0],
                    }
                )

    def task_of(job: Mapping[str, Any]) -> dict[str, Any]:
        return tasks["scan"] if job["task_name"] == "scan" else fewshot_episode(pool, size, job["seed"])

    def epochs_of(job: Mapping[str, Any]) -> int:
        return size.epochs if job["task_name"] == "scan" else size.fewshot_epochs

    def done(job: Mapping[str, Any], r: dict[str, Any]) -> dict[str, Any]:
        r.update(method=job["label"], task=job["task_name"], seed=job["seed"])
        log(
            f"  {job['label']:16s} {job['task_name']:8s} seed {job['seed']}: acc {r['acc']:6.2f}%  "
            f"({r['wall_s']:.1f} s, {r['steps']} steps)"
        )
        return r

    workers = benchmark_workers(size)
    kept: dict[str, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    if workers <= 1:
        for i, job in enumerate(jobs):
            r = finetune(
                pretrained,
                job["cfg"],
                task_of(job),
                size,
                job["seed"],
                epochs_of(job),
                keep_model=job["keep"],
                lr=job["lr"],
            )
            if job["keep"]:
                kept[job["label"]] = {"model": r.pop("model"), "method": r.pop("method")}
            results[i] = done(job, r)
    else:
        # Every job seeds everything from its own seed (build_finetune_model), so where it runs does
        # not change its result. Jobs whose model is kept run here (a model with PEFT hooks does not
        # cross a process boundary); the others run in `workers` spawned processes, 1 thread each.
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as ex:
                futs = {
                    ex.submit(
                        _finetune_job,
                        dict(pretrained),
                        job["cfg"],
                        task_of(job),
                        size,
                        job["seed"],
                        epochs_of(job),
                        job["lr"],
                    ): i
                    for i, job in enumerate(jobs)
                    if not job["keep"]
                }
                for i, job in enumerate(jobs):
                    if job["keep"]:
                        r = finetune(
                            pretrained,
                            job["cfg"],
                            task_of(job),
                            size,
                            job["seed"],
                            epochs_of(job),
                            keep_model=True,
                            lr=job["lr"],
                        )
                        kept[job["label"]] = {"model": r.pop("model"), "method": r.pop("method")}
                        results[i] = done(job, r)
                for fut in cf.as_completed(futs):
                    i = futs[fut]
                    results[i] = done(jobs[i], fut.result())
        finally:
            torch.set_num_threads(threads)
    runs = [results[i] for i in range(len(jobs))]
    summary = summarise(runs, list(methods), list(size.tasks))
    return {"runs": runs, "summary": summary, "kept": kept, "wall_s": time.perf_counter() - t0}


def summarise(runs: list[dict[str, Any]], methods: Sequence[str], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method: accuracy mean/std per task, parameters, mean wall time per run."""
    rows = []
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        row: dict[str, Any] = {
            "method": m,
            "trainable": mine[0]["trainable"],
            "trainable_no_head": mine[0]["trainable_no_head"],
            "lr": mine[0].get("lr"),
        }
        for t in tasks:
            accs = [r["acc"] for r in mine if r["task"] == t]
            row[f"{t}_mean"], row[f"{t}_std"] = mean_std(accs)
            row[f"{t}_wall_s"] = float(np.mean([r["wall_s"] for r in mine if r["task"] == t]))
            row[f"{t}_n"] = len(accs)
        rows.append(row)
    return rows


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e3:.1f} K" if n < 1e6 else f"{n / 1e6:.2f} M"


def format_table(rows: list[dict[str, Any]], tasks: Sequence[str]) -> str:
    """Markdown table of :func:`summarise` rows."""
    names = {"scan": "scan acc (%)", "fewshot": "few-shot acc (%)"}
    head = (
        "| method | "
        + " | ".join(names.get(t, t) for t in tasks)
        + " | trainable params (w/o head) | lr | wall time / run |"
    )
    lines = [head, "|---|" + "---:|" * (len(tasks) + 3)]
    for r in rows:
        accs = " | ".join(f"{r[f'{t}_mean']:.1f} ± {r[f'{t}_std']:.1f}" for t in tasks)
        walls = " + ".join(f"{r[f'{t}_wall_s']:.0f}" for t in tasks)
        lr = "-" if r.get("lr") is None else f"{r['lr']:g}"
        lines.append(
            f"| {r['method']} | {accs} | {_fmt_params(r['trainable'])} "
            f"({_fmt_params(r['trainable_no_head'])}) | {lr} | {walls} s |"
        )
    return "\n".join(lines)


def separation(rows: list[dict[str, Any]], task: str, a: str = "full", b: str = "linear") -> dict[str, float] | None:
    """Gap between methods ``a`` and ``b`` on ``task`` in units of the larger of their stds."""
    ra = next((r for r in rows if r["method"] == a), None)
    rb = next((r for r in rows if r["method"] == b), None)
    if ra is None or rb is None:
        return None
    gap = ra[f"{task}_mean"] - rb[f"{task}_mean"]
    sd = max(ra[f"{task}_std"], rb[f"{task}_std"])
    ratio = gap / sd if sd > 0 else (math.copysign(math.inf, gap) if gap != 0 else math.nan)
    return {"gap": gap, "std": sd, "ratio": ratio}


#: a task separates full fine-tuning from linear probing when their gap is at least this many times
#: the larger of their seed stds (below it the column is labelled as not discriminating)
SEPARATES_AT = 3.0


def paired_gaps(runs: list[dict[str, Any]], task: str, a: str = "full", b: str = "linear") -> list[float]:
    """Per seed, accuracy of ``a`` minus ``b`` on ``task`` (both saw the same data and episode)."""
    acc = {(r["method"], r["seed"]): r["acc"] for r in runs if r["task"] == task}
    seeds = sorted({s for (m, s) in acc if m == a} & {s for (m, s) in acc if m == b})
    return [acc[a, s] - acc[b, s] for s in seeds]


def format_separation(
    rows: list[dict[str, Any]], tasks: Sequence[str], runs: list[dict[str, Any]] | None = None
) -> str:
    """One line per task: full - linear gap in points and in units of the larger std, labelled
    "separates" or "does NOT separate" against :data:`SEPARATES_AT`; with ``runs``, also the gap
    paired by seed (each seed's runs share the scan data order / few-shot episode), mean +- std."""
    lines = []
    for t in tasks:
        sep = separation(rows, t)
        if sep is None:
            continue
        verdict = (
            "separates full fine-tuning from linear probing"
            if sep["ratio"] >= SEPARATES_AT
            else f"does NOT separate full fine-tuning from linear probing (below {SEPARATES_AT:g} x)"
        )
        line = (
            f"{t}: full - linear = {sep['gap']:.1f} points = {sep['ratio']:.2f} x the larger std "
            f"({sep['std']:.1f}): {verdict}"
        )
        gaps = paired_gaps(runs, t) if runs is not None else []
        if len(gaps) > 1:
            m, sd = mean_std(gaps)
            times = f"{m / sd:.1f} x its std" if sd > 0 else "no spread"
            line += f"; paired by seed: {m:.1f} ± {sd:.1f} points ({times})"
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- real-data check
def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the repository root, when present."""
    d = REPO.parent / "shared" / "data"
    return d if d.is_dir() else None


def real_modelnet_check(
    model: torch.nn.Module, class_names: Sequence[str], npoints: int, root: Path | None = None
) -> dict[str, Any]:
    """Classify the real ModelNet40 shapes of the classes shared by ``class_names`` and ModelNet40.

    ``root``: a ``modelnet40_normal_resampled`` folder (default: the one in ../shared/data). Each
    shape is centred, scaled to the unit sphere and FPS-sampled to ``npoints``; the argmax runs
    over the shared classes only, so chance is 1 / (number of shared classes). Returns
    ``{"skipped": reason}`` when the folder is absent."""
    from clora3d.data.io import read_point_cloud

    if root is None:
        base = shared_data_dir()
        root = base / "modelnet40_normal_resampled" if base is not None else None
    if root is None or not Path(root).is_dir():
        where = root if root is not None else REPO.parent / "shared" / "data" / "modelnet40_normal_resampled"
        return {"skipped": f"real ModelNet40 samples ({where}) are not present"}
    root = Path(root)
    mn_names = (root / "modelnet40_shape_names.txt").read_text().split()
    shared = [c for c in class_names if c in mn_names]
    files, labels = [], []
    for k, c in enumerate(shared):
        for f in sorted((root / c).glob(f"{c}_*.txt")):
            files.append(f)
            labels.append(k)
    if not files:
        return {"skipped": f"no shapes of the shared classes {shared} under {root}"}
    clouds = []
    for f in files:
        xyz, _ = read_point_cloud(f)
        xyz = np.asarray(xyz, dtype=np.float32)[:, :3]
        xyz = xyz - xyz.mean(0)
        xyz = xyz / np.linalg.norm(xyz, axis=1).max()
        clouds.append(torch.from_numpy(xyz))
    x = torch.stack(clouds)
    y = torch.tensor(labels)
    idx = [list(class_names).index(c) for c in shared]
    acc, pred = accuracy(model, x, y, npoints, classes=idx)
    return {
        "classes": shared,
        "n": len(files),
        "correct": int((pred == y).sum()),
        "acc": acc,
        "chance": 100.0 / len(shared),
        "per_shape": [(f.stem, shared[int(p)]) for f, p in zip(files, pred)],
    }


# ------------------------------------------------------------------------------- SADE ablation
#: label -> CLoRA overrides; the old defaults (orthogonal init, lambda 0.01, unnormalised) first.
SADE_VARIANTS: dict[str, dict[str, Any]] = {
    "orthogonal, no SADE": {"init": "orthogonal", "sade": False},
    "orthogonal, 0.01": {"init": "orthogonal", "sade_lambda": 0.01, "sade_normalize": False},
    "orthogonal, 0.1 norm": {"init": "orthogonal", "sade_lambda": 0.1, "sade_normalize": True},
    "xavier, no SADE": {"init": "xavier", "sade": False},
    "xavier, 0.01": {"init": "xavier", "sade_lambda": 0.01, "sade_normalize": False},
    "xavier, 1.0": {"init": "xavier", "sade_lambda": 1.0, "sade_normalize": False},
    "xavier, 0.01 norm": {"init": "xavier", "sade_lambda": 0.01, "sade_normalize": True},
    "xavier, 0.1 norm": {"init": "xavier", "sade_lambda": 0.1, "sade_normalize": True},
    "xavier, 1.0 norm": {"init": "xavier", "sade_lambda": 1.0, "sade_normalize": True},
}


def sade_ablation(
    pretrained: Mapping[str, torch.Tensor],
    size: BenchSize,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """CLoRA on the ``scan`` task for every variant x seed: accuracy, SADE-to-task gradient-norm
    ratio on the CLoRA parameters (at the second step, the first with Q != 0, and the mean over
    all steps), end-of-training component similarity and SADE value."""
    variants = dict(variants or SADE_VARIANTS)
    task = scan_task(size)
    runs = []
    for label, over in variants.items():
        cfg = peft_config({"NAME": "clora", **over})
        for seed in size.seeds:
            r = finetune(pretrained, cfg, task, size, seed, size.epochs, sade_stats=True)
            r.update(
                variant=label,
                seed=seed,
                init=cfg.get("init", "default"),
                sade_lambda=cfg["sade_lambda"] if cfg.get("sade", True) else 0.0,
                normalize=bool(cfg.get("sade_normalize", False)) and cfg.get("sade", True),
            )
            runs.append(r)
            log(
                f"  {label:22s} seed {seed}: acc {r['acc']:6.2f}%  similarity {r['similarity']:.4f}  "
                f"grad ratio first {r.get('grad_ratio_first', 0.0):.2e} mean {r.get('grad_ratio_mean', 0.0):.2e}  "
                f"({r['wall_s']:.1f} s)"
            )
    rows = []
    for label in variants:
        mine = [r for r in runs if r["variant"] == label]
        row = {
            "variant": label,
            "init": mine[0]["init"],
            "sade_lambda": mine[0]["sade_lambda"],
            "normalize": mine[0]["normalize"],
        }
        row["acc_mean"], row["acc_std"] = mean_std([r["acc"] for r in mine])
        row["sim_mean"], row["sim_std"] = mean_std([r["similarity"] for r in mine])
        for k in ("grad_ratio_first", "grad_ratio_mean"):
            row[k] = float(np.mean([r[k] for r in mine])) if k in mine[0] else 0.0
        rows.append(row)
    return {"runs": runs, "rows": rows}


def format_ablation(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`sade_ablation` rows."""
    lines = [
        "| variant | init | lambda | normalised | scan acc (%) | component similarity at end | "
        "SADE / task grad, 2nd step | SADE / task grad, mean |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['init']} | {r['sade_lambda']:g} | {'yes' if r['normalize'] else 'no'} | "
            f"{r['acc_mean']:.1f} ± {r['acc_std']:.1f} | {r['sim_mean']:.4f} ± {r['sim_std']:.4f} | "
            f"{r['grad_ratio_first']:.2e} | {r['grad_ratio_mean']:.2e} |"
        )
    return "\n".join(lines)

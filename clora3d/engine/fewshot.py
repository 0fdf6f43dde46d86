"""The ModelNet40 few-shot benchmark: way x shot x fold grid of fine-tuning runs, resumable.

Protocol (``shared/reference/point_mae_family.md`` §6): 4 settings (5w10s, 5w20s, 10w10s, 10w20s)
x 10 folds = 40 independent runs of ``train(cfg)``, each on one fold's support set, evaluated on its
query set (20 unseen test shapes per class, **no voting**) every epoch. A fold's result is its
**best-epoch** query accuracy (reference); the last-epoch accuracy is recorded beside it. A setting
is reported as mean ± std over its folds with the **population** std (ddof 0) as the references,
optionally with a 95 % interval half-width 1.96·std/√n.

Seeds (``seeds=[0, 1, 2]``, ``tools/fewshot.py --seeds 0-2``): every fold is trained once per seed
(the config's ``seed``). The fold value is then the mean over its seeds and the reference statistic
is still mean ± std over folds; beside it the table reports the spread over seeds: per seed the mean
over folds (the number a single-seed paper would report), then mean ± std (ddof 0) of those.

Layout of ``out_dir``::

Fold pickles are read from ``<root>/<W>way_<S>shot/<F>.pkl`` (the reference layout; the old
clora3d spelling ``<W>way<S>shot`` is still read, with a warning).

    out_dir/<W>way<S>shot/fold<F>/          the trainer's run folder (checkpoints, logs)
    out_dir/<W>way<S>shot/fold<F>.json      the fold's result; its presence marks the fold done
    out_dir/<W>way<S>shot/seed<K>_fold<F>/  the same per seed, when seeds are given
    out_dir/<W>way<S>shot/seed<K>_fold<F>.json
    out_dir/summary.json                    the table (written after every finished fold)

Re-running skips every fold whose result JSON exists; a fold that was interrupted (run folder
without result JSON) resumes from its last checkpoint when there is one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clora3d.errors import ConfigError
from clora3d.storage import atomic_write_bytes

__all__ = [
    "SETTINGS",
    "run_fewshot",
    "summarize",
    "format_table",
    "fold_dataset_cfg",
    "setting_name",
    "missing_folds",
    "LAST_CKPT_NAMES",
]

log = logging.getLogger(__name__)
_LOG = log  # run_fewshot's (deprecated) ``log`` argument shadows the name

SETTINGS: tuple[tuple[int, int], ...] = ((5, 10), (5, 20), (10, 10), (10, 20))
FEWSHOT_DATASET = "ModelNetFewShot"
#: file names under which the trainer may keep its last checkpoint (first found is used to resume)
LAST_CKPT_NAMES = ("ckpt-last.pth", "last.pth", "checkpoint-last.pth")


def setting_name(way: int, shot: int) -> str:
    """``'5way10shot'``: the name of a setting in the runner's output folder and summary (the
    pickles themselves live in ``5way_10shot/``, see :func:`clora3d.data.fewshot_fold_path`)."""
    return f"{way}way{shot}shot"


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder + rename)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def fold_dataset_cfg(cfg: Mapping[str, Any], way: int, shot: int, fold: int) -> dict:
    """A deep copy of ``cfg`` whose few-shot dataset splits select (way, shot, fold)."""
    out = copy.deepcopy(dict(cfg))
    ds = out.get("dataset")
    if not isinstance(ds, dict):
        raise ConfigError(
            "few-shot: the config has no 'dataset' section; use a few-shot config such as cfgs/fewshot/*.yaml"
        )
    hit = False
    for sec in ds.values():
        if isinstance(sec, dict) and sec.get("NAME") == FEWSHOT_DATASET:
            sec.update(way=int(way), shot=int(shot), fold=int(fold))
            hit = True
    if not hit:
        raise ConfigError(
            f"few-shot: no dataset split of the config has NAME: {FEWSHOT_DATASET} "
            f"(found {[s.get('NAME') for s in ds.values() if isinstance(s, dict)]}); "
            "use a few-shot config"
        )
    return out


def _fewshot_roots(cfg: Mapping[str, Any]) -> list[Path]:
    roots: list[Path] = []
    for sec in cfg.get("dataset", {}).values():
        if isinstance(sec, dict) and sec.get("NAME") == FEWSHOT_DATASET and sec.get("root"):
            if Path(sec["root"]) not in roots:
                roots.append(Path(sec["root"]))
    return roots


def missing_folds(root: str | Path, grid: Iterable[tuple[int, int, int]]) -> list[Path]:
    """Fold pickles ``root/<W>way_<S>shot/<F>.pkl`` of ``grid`` that do not exist (under either
    spelling); the reference path is returned for each."""
    from clora3d.data import fewshot_fold_path

    paths = [fewshot_fold_path(root, w, s, f) for w, s, f in grid]
    return [p for p in paths if not p.is_file()]


def _generate_folds(
    root: Path,
    modelnet_root: str | Path,
    missing: Sequence[Path],
    ways: Sequence[int],
    shots: Sequence[int],
    n_folds: int,
    seed: int,
) -> None:
    """Generate folds with the data package's seeded generator into a scratch folder and move
    only the ``missing`` files into ``root`` (existing, e.g. released, folds are never replaced).
    Each fold file depends only on (seed, way, shot, fold), so partial generation is consistent."""
    import shutil

    from clora3d import data

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".generate-") as tmp:
        data.generate_fewshot_folds(modelnet_root, tmp, ways=tuple(ways), shots=tuple(shots), folds=n_folds, seed=seed)
        for dst in missing:
            src = Path(tmp) / dst.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))


def _find_last_ckpt(run_dir: Path) -> Path | None:
    for name in LAST_CKPT_NAMES:
        p = run_dir / name
        if p.is_file():
            return p
    return None


def _metric(d: Mapping[str, Any], key: str, what: str) -> float:
    if key not in d:
        raise ConfigError(
            f"few-shot: the trainer's {what} metrics have no {key!r} (they have "
            f"{sorted(d)}); pass --metric <one of them>"
        )
    return float(d[key])


def summarize(
    results: Mapping[tuple[int, int], Sequence[Mapping[str, Any]]], *, ci95: bool = False
) -> dict[str, dict[str, Any]]:
    """Per setting: folds, n (folds), seeds, mean/std (ddof 0) of best- and last-epoch accuracy
    over folds (+ ci95), and with several seeds the mean/std over seeds.

    Records may carry a ``seed``. Over folds (reference): each fold's value is the mean over its
    seeds, then mean ± std over the folds (``{which}_mean``/``{which}_std``). Over seeds: each
    seed's value is the mean over its folds, then mean ± std over the seeds
    (``{which}_seed_mean``/``{which}_seed_std``, only with more than one seed).
    """
    out: dict[str, dict[str, Any]] = {}
    for (w, s), recs in sorted(results.items()):
        if not recs:
            continue
        folds = sorted({int(r["fold"]) for r in recs})
        seeds = sorted({r.get("seed") for r in recs}, key=lambda v: (v is None, v))
        row: dict[str, Any] = {
            "way": w,
            "shot": s,
            "n": len(folds),
            "folds": folds,
            "n_seeds": len(seeds),
            "seeds": seeds,
        }
        for which in ("best", "last"):

            def mean_by(key: str, k: Any, which: str = which, recs: list = recs) -> float:
                return float(
                    np.mean(
                        [
                            float(r[f"{which}_acc"])
                            for r in recs
                            if (int(r["fold"]) if key == "fold" else r.get("seed")) == k
                        ]
                    )
                )

            vals = np.asarray([mean_by("fold", f) for f in folds], dtype=np.float64)
            row[f"{which}_mean"] = float(vals.mean())
            row[f"{which}_std"] = float(vals.std(ddof=0))
            if ci95:
                row[f"{which}_ci95"] = float(1.96 * vals.std(ddof=0) / math.sqrt(len(vals)))
            if len(seeds) > 1:
                per_seed = np.asarray([mean_by("seed", k) for k in seeds], dtype=np.float64)
                row[f"{which}_seed_mean"] = float(per_seed.mean())
                row[f"{which}_seed_std"] = float(per_seed.std(ddof=0))
        out[setting_name(w, s)] = row
    return out


def format_table(summary: Mapping[str, Mapping[str, Any]], *, ci95: bool = False) -> str:
    """Point-BERT-style table: one column per setting, rows best-epoch (reported) and last-epoch."""
    if not summary:
        return "(no finished folds)"
    names = list(summary)
    heads = [f"{summary[n]['way']}w{summary[n]['shot']}s (n={summary[n]['n']})" for n in names]
    width = max(18, *(len(h) + 2 for h in heads))
    spread = "ci95" if ci95 else "std"
    seeded = any(summary[n].get("n_seeds", 1) > 1 for n in names)
    over = " over folds" if seeded else ""
    rows = [("best", f"best epoch (ref.) ±{spread}{over}", spread), ("last", f"last epoch ±{spread}{over}", spread)]
    if seeded:
        k = max(summary[n].get("n_seeds", 1) for n in names)
        rows += [
            ("best_seed", f"best epoch ±std over {k} seeds", "std"),
            ("last_seed", f"last epoch ±std over {k} seeds", "std"),
        ]
    lw = max(len(label) for _, label, _ in rows) + 2
    lines = ["setting".ljust(lw) + "".join(h.rjust(width) for h in heads)]
    for which, label, sp in rows:
        cells = [
            f"{summary[n][f'{which}_mean']:.1f} ± {summary[n][f'{which}_{sp}']:.1f}"
            if f"{which}_mean" in summary[n]
            else "-"
            for n in names
        ]
        lines.append(label.ljust(lw) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)


def run_fewshot(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    *,
    ways: Sequence[int] = (5, 10),
    shots: Sequence[int] = (10, 20),
    folds: Sequence[int] = tuple(range(10)),
    ckpt: str | None = None,
    metric: str = "acc",
    ci95: bool = False,
    seeds: Sequence[int] | None = None,
    generate_from: str | Path | None = None,
    generate_seed: int = 0,
    train_fn: Callable[..., Mapping[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the few-shot grid and return ``{"folds": [...], "summary": {...}, "table"}``.

    ``cfg`` is a resolved config whose dataset splits use ``ModelNetFewShot``; each run gets a copy
    with ``way``/``shot``/``fold`` set. ``ckpt`` is the pre-trained checkpoint passed to ``train``.
    ``metric`` is the key of the trainer's ``best``/``last`` metric dicts to report. When fold
    pickles are missing and ``generate_from`` (a ModelNet40 root) is given, they are generated
    with the data package's seeded generator (``generate_seed``); they are *not* the released folds.
    ``seeds``: train every fold once per seed (sets the config's ``seed``; results are kept per
    seed and summarised over folds and over seeds); ``None`` = one run per fold with the config's
    own seed (the reference protocol, the original folder layout).
    ``train_fn`` defaults to :func:`clora3d.engine.trainer.train`.
    Progress messages go to the ``clora3d.engine.fewshot`` logger (INFO); ``log`` (deprecated) is a
    callable that receives them instead.
    """
    if log is None:
        log = _LOG.info
    out_dir = Path(out_dir)
    grid = [(int(w), int(s), int(f)) for w in ways for s in shots for f in folds]
    if seeds is not None:
        seeds = [int(k) for k in seeds]
        if not seeds or any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"few-shot: seeds must be distinct integers >= 0, got {seeds}")
    run_seeds: list[int | None] = list(seeds) if seeds is not None else [None]
    if not grid:
        raise ConfigError("few-shot: empty grid; give at least one way, shot and fold")
    for w, s, f in grid:
        if w <= 0 or s <= 0 or f < 0:
            raise ConfigError(f"few-shot: invalid setting way={w} shot={s} fold={f}")
    fold_dataset_cfg(cfg, *grid[0])  # validates the dataset section early
    for root in _fewshot_roots(cfg):
        missing = missing_folds(root, grid)
        if missing and generate_from is not None:
            log(
                f"few-shot: generating {len(missing)} missing fold file(s) under {root} from "
                f"{generate_from} (seed {generate_seed}); these are NOT the released folds"
            )
            _generate_folds(
                root,
                generate_from,
                missing,
                sorted({w for w, _, _ in grid}),
                sorted({s for _, s, _ in grid}),
                max(f for _, _, f in grid) + 1,
                generate_seed,
            )
            missing = missing_folds(root, grid)
        if missing:
            raise FileNotFoundError(
                f"few-shot: fold file {missing[0]} is missing ({len(missing)} of {len(grid)} "
                f"missing); place the released folds under {root}/<W>way_<S>shot/<F>.pkl or pass "
                "--generate-from <ModelNet40 root> to generate seeded folds"
            )
    if train_fn is None:
        from clora3d.engine.trainer import train as train_fn  # type: ignore[no-redef]

    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(w, s, f, k) for w, s, f in grid for k in run_seeds]
    base_seed = int(cfg.get("seed") or 0)
    for i, (w, s, f, k) in enumerate(runs):
        tag = f"fold{f}" if k is None else f"seed{k}_fold{f}"
        what = f"fold {f}" if k is None else f"fold {f} seed {k}"
        res_path = out_dir / setting_name(w, s) / f"{tag}.json"
        if res_path.is_file():
            try:
                rec = json.loads(res_path.read_text())
                _ = float(rec["best_acc"]), float(rec["last_acc"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"few-shot: result file {res_path} is unreadable ({e}); delete it to re-run that fold"
                ) from None
            log(f"[{i + 1}/{len(runs)}] {setting_name(w, s)} {what}: done before (best {rec['best_acc']:.2f}), skipped")
        else:
            run_dir = out_dir / setting_name(w, s) / tag
            resume = _find_last_ckpt(run_dir) is not None
            finished = run_dir / "result.json"
            if resume and finished.is_file():
                # training finished but the runner stopped before writing the fold's result
                log(f"[{i + 1}/{len(runs)}] {setting_name(w, s)} {what}: training had finished; reading {finished}")
                res = json.loads(finished.read_text())
            else:
                log(
                    f"[{i + 1}/{len(runs)}] {setting_name(w, s)} {what}: "
                    f"{'resuming' if resume else 'training'} in {run_dir}"
                )
                fold_cfg = fold_dataset_cfg(cfg, w, s, f)
                fold_cfg["name"] = f"{cfg.get('name') or 'fewshot'}_{setting_name(w, s)}_{tag}"
                if k is not None:
                    fold_cfg["seed"] = k
                res = train_fn(fold_cfg, ckpt=ckpt, resume=resume, run_dir=str(run_dir))
            best = res["best"]
            rec = {
                "way": w,
                "shot": s,
                "fold": f,
                "seed": base_seed if k is None else k,
                "metric": metric,
                "best_acc": _metric(best, metric, "best"),
                "best_epoch": best.get("epoch"),
                "last_acc": _metric(res["last"], metric, "last"),
                "epochs": len(res.get("history", [])),
                "run_dir": str(res.get("run_dir", run_dir)),
                "ckpt": ckpt,
            }
            _write_json(res_path, rec)
            log(f"    best {rec['best_acc']:.2f} (epoch {rec['best_epoch']}), last {rec['last_acc']:.2f}")
        results.setdefault((w, s), []).append(rec)
        summary = summarize(results, ci95=ci95)
        _write_json(
            out_dir / "summary.json",
            {
                "protocol": "best-epoch query accuracy per fold "
                "(mean over its seeds); mean ± population std (ddof 0) "
                "over folds (reference) and, with several seeds, over "
                "seeds (per-seed mean over folds); no voting",
                "metric": metric,
                "settings": summary,
                "folds": [r for v in results.values() for r in v],
            },
        )
    summary = summarize(results, ci95=ci95)
    return {
        "folds": [r for v in results.values() for r in v],
        "summary": summary,
        "table": format_table(summary, ci95=ci95),
    }

"""Commands that make things: ``flops`` (parameters / FLOPs of every method), ``make-synthetic``
(synthetic data sets in the real on-disk formats).

Results go to stdout (the Markdown table; the folder each format was written to); messages through
logging. The demo is an application of the checkout, not a command of the installed package:
``benchmarks/demo.py`` (``tools/demo.py``, ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from clora3d.cli import Command

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# flops
# ------------------------------------------------------------------------------------------------
FLOPS_DOC = """\
Parameter / adapter-size / FLOPs / MACs table of every PEFT method (Markdown to stdout, JSON with --json).

    clora3d flops --json flops.json
"""


def _flops_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="vit_s", help="backbone preset (default vit_s)")
    p.add_argument("--json", type=Path, default=None, help="also write all rows as JSON to this file")
    p.add_argument(
        "--inputs",
        nargs="+",
        default=None,
        choices=["ModelNet40", "ScanObjectNN"],
        help="which standard inputs to profile (default both)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _flops(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from clora3d.profile.report import INPUTS, method_table, to_markdown
    from clora3d.storage import atomic_write_bytes

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    inputs = {k: INPUTS[k] for k in (args.inputs or INPUTS)}
    rows = method_table(preset=args.preset, inputs=inputs, progress=not args.no_progress)
    print(to_markdown(rows))
    if args.json is not None:
        atomic_write_bytes(args.json, json.dumps(rows, indent=2).encode(), what="JSON file")
        log.info("wrote %s", args.json)
    return 0


# ------------------------------------------------------------------------------------------------
# make-synthetic
# ------------------------------------------------------------------------------------------------
SYNTHETIC_DOC = """\
Write synthetic point cloud data sets in the real on-disk formats (see data/README.md).

    clora3d make-synthetic --root data                     # everything, small sizes
    clora3d make-synthetic --root data --format modelnet40 --n-train 40 --n-test 15
    clora3d make-synthetic --root /tmp/son --format scanobjectnn --variant PB_T50_RS

Prints '<format> -> <folder>' for every format written.
"""


def _synthetic_arguments(p: argparse.ArgumentParser) -> None:
    from clora3d.data import synthetic as syn
    from clora3d.data.scanobjectnn import SCANOBJECTNN_FILES

    p.add_argument("--root", required=True, type=Path, help="data root (the data/ folder of data/README.md)")
    p.add_argument(
        "--format", default="all", choices=["all", *syn.LAYOUT_DIRS], help="which format to write (default: all)"
    )
    p.add_argument("--full", action="store_true", help="larger sizes than the fast default (write_all only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variant",
        choices=list(SCANOBJECTNN_FILES),
        action="append",
        help="ScanObjectNN variant(s) (default: all three)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="number of synthetic classes (default: all 16)")
    p.add_argument("--n-train", type=int, help="train shapes per class (shot pool for few-shot)")
    p.add_argument("--n-val", type=int, help="val shapes per category (ShapeNetPart)")
    p.add_argument("--n-test", type=int, help="test shapes per class (eval_sample for few-shot)")
    p.add_argument("--n-points", type=int, help="points per shape")
    p.add_argument("--folds", type=int, help="few-shot folds per setting")
    p.add_argument("--ways", type=int, nargs="+", help="few-shot ways (default 5 10)")
    p.add_argument("--shots", type=int, nargs="+", help="few-shot shots (default 10 20)")


def _make_synthetic(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from clora3d.data import synthetic as syn
    from clora3d.data.scanobjectnn import SCANOBJECTNN_FILES

    t0 = time.perf_counter()
    fmt = args.format
    if fmt == "all":
        if any(
            v is not None
            for v in (args.n_train, args.n_val, args.n_test, args.n_points, args.folds, args.ways, args.shots)
        ):
            parser.error("size options apply to a single --format; with --format all use --full or the defaults")
        written = syn.write_all(args.root, small=not args.full, seed=args.seed)
        for name, folder in written.items():
            print(f"{name} -> {folder}")
    else:
        sizes = dict((syn.FULL_SIZES if args.full else syn.SMALL_SIZES)[fmt])
        given = {
            "n_train": args.n_train,
            "n_val": args.n_val,
            "n_test": args.n_test,
            "n_points": args.n_points,
            "folds": args.folds,
        }
        if fmt == "fewshot":
            sizes.update({k: v for k, v in (("ways", args.ways), ("shots", args.shots)) if v})
            given["eval_sample"] = given.pop("n_test")
        elif args.ways or args.shots:
            parser.error("--ways/--shots apply to --format fewshot only")
        for k, v in given.items():
            if v is not None:
                if k not in sizes:
                    parser.error(f"--{k.replace('_', '-')} does not apply to --format {fmt}")
                sizes[k] = v
        out = args.root / syn.LAYOUT_DIRS[fmt]
        if fmt in ("modelnet40", "fewshot", "shapenet55"):
            sizes["num_classes"] = args.num_classes
        if fmt == "modelnet40":
            syn.write_modelnet40(out, seed=args.seed, **sizes)
        elif fmt == "fewshot":
            syn.write_fewshot(out, seed=args.seed, **sizes)
        elif fmt == "scanobjectnn":
            for v in args.variant or list(SCANOBJECTNN_FILES):
                syn.write_scanobjectnn(out, v, seed=args.seed, **sizes)
        elif fmt == "shapenetpart":
            syn.write_shapenetpart(out, seed=args.seed, **sizes)
        elif fmt == "shapenet55":
            syn.write_shapenet55(out, seed=args.seed, **sizes)
        print(f"{fmt} -> {out}")
    log.info("done in %.1f s", time.perf_counter() - t0)
    return 0


COMMANDS = [
    Command("flops", "parameters / adapter size / FLOPs of every PEFT method", FLOPS_DOC, _flops_arguments, _flops),
    Command(
        "make-synthetic",
        "write synthetic data sets in the real on-disk formats",
        SYNTHETIC_DOC,
        _synthetic_arguments,
        _make_synthetic,
    ),
]

#!/usr/bin/env python
"""Write synthetic point cloud data sets in the real on-disk formats (see data/README.md).

Examples:
  python tools/make_synthetic.py --root data                     # everything, small sizes
  python tools/make_synthetic.py --root data --format modelnet40 --n-train 40 --n-test 15
  python tools/make_synthetic.py --root /tmp/son --format scanobjectnn --variant PB_T50_RS
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import clora3d  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clora3d.data import synthetic as syn  # noqa: E402
from clora3d.data.scanobjectnn import SCANOBJECTNN_FILES  # noqa: E402
from clora3d.errors import USER_ERRORS, format_user_error  # noqa: E402

FORMATS = ["all", *syn.LAYOUT_DIRS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=Path, help="data root (the data/ folder of data/README.md)")
    ap.add_argument("--format", default="all", choices=FORMATS, help="which format to write (default: all)")
    ap.add_argument("--full", action="store_true", help="larger sizes than the fast default (write_all only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=list(SCANOBJECTNN_FILES), action="append",
                    help="ScanObjectNN variant(s) (default: all three)")
    ap.add_argument("--num-classes", type=int, default=None, help="number of synthetic classes (default: all 16)")
    ap.add_argument("--n-train", type=int, help="train shapes per class (shot pool for few-shot)")
    ap.add_argument("--n-val", type=int, help="val shapes per category (ShapeNetPart)")
    ap.add_argument("--n-test", type=int, help="test shapes per class (eval_sample for few-shot)")
    ap.add_argument("--n-points", type=int, help="points per shape")
    ap.add_argument("--folds", type=int, help="few-shot folds per setting")
    ap.add_argument("--ways", type=int, nargs="+", help="few-shot ways (default 5 10)")
    ap.add_argument("--shots", type=int, nargs="+", help="few-shot shots (default 10 20)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.format == "all":
        if any(v is not None for v in (args.n_train, args.n_val, args.n_test, args.n_points, args.folds,
                                            args.ways, args.shots)):
            ap.error("size options apply to a single --format; with --format all use --full or the defaults")
        syn.write_all(args.root, small=not args.full, seed=args.seed, verbose=True)
    else:
        sizes = dict((syn.FULL_SIZES if args.full else syn.SMALL_SIZES)[args.format])
        given = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "n_points": args.n_points,
                 "folds": args.folds}
        if args.format == "fewshot":
            sizes.update({k: v for k, v in (("ways", args.ways), ("shots", args.shots)) if v})
        elif args.ways or args.shots:
            ap.error("--ways/--shots apply to --format fewshot only")
        if args.format == "fewshot":
            given["eval_sample"] = given.pop("n_test")
        for k, v in given.items():
            if v is not None:
                if k not in sizes:
                    ap.error(f"--{k.replace('_', '-')} does not apply to --format {args.format}")
                sizes[k] = v
        out = args.root / syn.LAYOUT_DIRS[args.format]
        fmt = args.format
        if fmt in ("modelnet40", "fewshot", "shapenet55"):
            sizes["num_classes"] = args.num_classes
        try:
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
        except USER_ERRORS as e:
            print(format_user_error(e), file=sys.stderr)
            return 2
        print(f"{fmt} -> {out}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

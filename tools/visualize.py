#!/usr/bin/env python
"""Render PNGs: point clouds, part-segmentation labels, and training curves of a run.

    python tools/visualize.py cloud FILE --out cloud.png
    python tools/visualize.py partseg FILE --out parts.png [--labels LABELS.txt|.npy]
    python tools/visualize.py partseg FILE --ckpt PARTSEG_RUN --category Chair --out parts.png
    python tools/visualize.py curves RUN_DIR --out curves.png

partseg takes the labels from --labels, else from the file's last column when it is a labelled
ShapeNetPart .txt (x y z nx ny nz part), else predicts them with --ckpt/--category.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import clora3d  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clora3d.errors import USER_ERRORS, format_user_error  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cloud", help="render a point cloud file")
    c.add_argument("file")
    c.add_argument("--out", required=True, help="output .png")
    c.add_argument("--title", default=None)
    s = sub.add_parser("partseg", help="render part labels (given or predicted)")
    s.add_argument("file")
    s.add_argument("--out", required=True, help="output .png")
    s.add_argument("--labels", default=None, help=".txt/.npy with one part id per point")
    s.add_argument("--ckpt", default=None, help="part-segmentation run checkpoint to predict with")
    s.add_argument("--cfg", default=None)
    s.add_argument("--category", default=None, help="object category for prediction (e.g. Chair)")
    s.add_argument("--device", default="cpu")
    k = sub.add_parser("curves", help="plot a run's per-epoch metrics")
    k.add_argument("run", help="run folder (or its metrics .csv/.jsonl/.json)")
    k.add_argument("--out", required=True, help="output .png")
    for q in (c, s, k):
        q.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from clora3d import viz

        if args.cmd == "cloud":
            from clora3d.data.io import read_point_cloud

            xyz, _ = read_point_cloud(args.file)
            out = viz.render_cloud(xyz, args.out, title=args.title or Path(args.file).name)
        elif args.cmd == "partseg":
            xyz, labels = viz.load_labelled_cloud(args.file, args.labels)
            title = Path(args.file).name
            if labels is None:
                if not args.ckpt:
                    raise ValueError(f"{args.file} carries no part labels; pass --labels FILE or "
                                     "--ckpt PARTSEG_RUN --category NAME to predict them")
                from clora3d.engine.infer import Predictor

                pred = Predictor.from_checkpoint(args.ckpt, args.cfg, device=args.device)
                if pred.task != "partseg":
                    raise ValueError(f"{args.ckpt} is a {pred.task} model; partseg needs a "
                                     "part-segmentation checkpoint")
                r = pred.segment(xyz, args.category)
                labels, title = r["labels"], f"{title} ({r['category']}, predicted)"
            out = viz.render_partseg(xyz, labels, args.out, title=title)
        else:
            out = viz.plot_training_curves(args.run, args.out)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    if not args.quiet:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

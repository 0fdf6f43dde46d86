#!/usr/bin/env python
"""Classify (or part-segment) your own point cloud files with a trained model.

    python tools/infer.py --ckpt RUN/ckpt-best.pth FILE_OR_FOLDER [--topk 5] [--json]
    python tools/infer.py --cfg CFG --ckpt merged.pth FILE              # merged Point-MAE weights
    python tools/infer.py --ckpt PARTSEG_RUN FILE --category Chair [--save-labels DIR]

Files: .ply .pcd .xyz .pts .npy .npz .txt .csv. Each cloud is centred, scaled into the unit sphere
and resampled (FPS) to the model's number of points.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import clora3d  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clora3d.errors import USER_ERRORS, format_user_error  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="point cloud file(s) or folder(s)")
    p.add_argument("--ckpt", required=True, help="run checkpoint / run folder, or merged weights with --cfg")
    p.add_argument("--cfg", default=None, help="config (default: the one saved with the run)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--category", default=None, help="part segmentation: object category (e.g. Chair)")
    p.add_argument("--npoints", type=int, default=None, help="override the model's number of points")
    p.add_argument("--save-labels", default=None, metavar="DIR",
                   help="part segmentation: write <stem>.txt with 'x y z part' per input point")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import numpy as np

        from clora3d.engine.infer import Predictor, _read, check_device, find_point_files

        device = check_device(args.device)
        files = [f for inp in args.inputs for f in find_point_files(inp)]
        pred = Predictor.from_checkpoint(args.ckpt, args.cfg, device=device, npoints=args.npoints)
        results = []
        for r in pred.predict(files, on_error="record", topk=args.topk, category=args.category):
            if "labels" in r:
                labels = r.pop("labels")
                if args.save_labels:
                    out = Path(args.save_labels) / f"{Path(r['file']).stem}.txt"
                    xyz = _read(Path(r["file"]))
                    from clora3d.storage import atomic_write

                    rows = np.concatenate([xyz, labels[:, None]], 1)
                    atomic_write(out, lambda f, rows=rows: np.savetxt(f, rows, fmt="%.6f %.6f %.6f %d"),
                                 what="labels file")
                    r["labels_file"] = str(out)
            results.append(r)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    failed = [r for r in results if "error" in r]
    for r in failed:  # every good file is classified; each bad one is one line, exit 2 at the end
        print(f"error: {r['error']}", file=sys.stderr)
    rc = 2 if failed else 0
    if args.json:
        print(json.dumps(results, indent=2))
        return rc
    for r in results:
        if "error" in r:
            continue
        if "top" in r:
            best = r["top"][0]
            print(f"{r['file']}: {best['class']} ({best['prob']:.3f})")
            for t in r["top"][1:]:
                print(f"    {t['class']:<20} {t['prob']:.3f}")
        else:
            parts = ", ".join(f"{p}: {n}" for p, n in r["part_counts"].items())
            print(f"{r['file']}: {r['category']} parts (points per part) {parts}"
                  + (f" -> {r['labels_file']}" if "labels_file" in r else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())

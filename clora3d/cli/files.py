"""Commands on files: ``infer`` (classify / part-segment point cloud files), ``export`` (adapter-only
file and merged model), ``visualize`` (PNG renders).

Each prints its result to stdout (predictions, the export report, the PNG path); inputs that could
not be read are ``error: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clora3d.cli import Command

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# infer
# ------------------------------------------------------------------------------------------------
INFER_DOC = """\
Classify (or part-segment) your own point cloud files with a trained model.

    clora3d infer --ckpt RUN/ckpt-best.pth FILE_OR_FOLDER [--topk 5] [--json]
    clora3d infer --cfg CFG --ckpt merged.pth FILE              # merged Point-MAE weights
    clora3d infer --ckpt PARTSEG_RUN FILE --category Chair [--save-labels DIR]

Files: .ply .pcd .xyz .pts .npy .npz .txt .csv. Each cloud is centred, scaled into the unit sphere
and resampled (FPS) to the model's number of points. Every readable file is classified; each
unreadable one is an ``error:`` line on stderr and the exit code is then 2.
"""


def _infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="point cloud file(s) or folder(s)")
    p.add_argument("--ckpt", required=True, help="run checkpoint / run folder, or merged weights with --cfg")
    p.add_argument("--cfg", default=None, help="config (default: the one saved with the run)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--category", default=None, help="part segmentation: object category (e.g. Chair)")
    p.add_argument("--npoints", type=int, default=None, help="override the model's number of points")
    p.add_argument(
        "--save-labels",
        default=None,
        metavar="DIR",
        help="part segmentation: write <stem>.txt with 'x y z part' per input point",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _infer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import numpy as np

    from clora3d.engine.infer import Predictor, _read, check_device, find_point_files
    from clora3d.storage import atomic_write

    device = check_device(args.device)
    files = [f for inp in args.inputs for f in find_point_files(inp)]
    pred = Predictor.from_checkpoint(args.ckpt, args.cfg, device=device, npoints=args.npoints)
    results = []
    for r in pred.predict(files, on_error="record", topk=args.topk, category=args.category):
        if "labels" in r:
            labels = r.pop("labels")
            if args.save_labels:
                out = Path(args.save_labels) / f"{Path(r['file']).stem}.txt"
                rows = np.concatenate([_read(Path(r["file"])), labels[:, None]], 1)
                atomic_write(out, lambda f, rows=rows: np.savetxt(f, rows, fmt="%.6f %.6f %.6f %d"), what="labels file")
                r["labels_file"] = str(out)
        results.append(r)
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
            print(
                f"{r['file']}: {r['category']} parts (points per part) {parts}"
                + (f" -> {r['labels_file']}" if "labels_file" in r else "")
            )
    return rc


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
EXPORT_DOC = """\
Export a fine-tuned run: an adapter-only file and/or a merged model in Point-MAE's key layout.

    clora3d export --ckpt RUN/ckpt-best.pth [--cfg CFG] --adapter OUT.pth --merged OUT.pth

The merged model is checked: its logits on a fixed cloud must match the adapted model's (fp32).
"""


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run checkpoint (ckpt-best.pth / ckpt-last.pth) or run folder")
    p.add_argument("--cfg", default=None, help="config (default: the one saved with the run)")
    p.add_argument("--adapter", default=None, metavar="OUT", help="write the adapter-only file here")
    p.add_argument("--merged", default=None, metavar="OUT", help="write the merged Point-MAE-layout model here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from clora3d.engine.export import export_run

    rep = export_run(args.ckpt, cfg=args.cfg, adapter_out=args.adapter, merged_out=args.merged, device=args.device)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    if "adapter" in rep:
        print(
            f"adapter ({rep['method']}): {rep['adapter']}  {rep['adapter_bytes'] / 1e6:.2f} MB, "
            f"{rep['adapter_tensors']} tensors"
        )
    if "merged" in rep:
        print(
            f"merged model (Point-MAE layout): {rep['merged']}  {rep['merged_bytes'] / 1e6:.2f} MB; "
            f"max |logit diff| merge {rep['max_abs_diff_merge']:.2e}, reload {rep['max_abs_diff_reload']:.2e}"
        )
    return 0


# ------------------------------------------------------------------------------------------------
# visualize
# ------------------------------------------------------------------------------------------------
VISUALIZE_DOC = """\
Render PNGs: point clouds, part-segmentation labels, and training curves of a run.

    clora3d visualize cloud FILE --out cloud.png
    clora3d visualize partseg FILE --out parts.png [--labels LABELS.txt|.npy]
    clora3d visualize partseg FILE --ckpt PARTSEG_RUN --category Chair --out parts.png
    clora3d visualize curves RUN_DIR --out curves.png

partseg takes the labels from --labels, else from the file's last column when it is a labelled
ShapeNetPart .txt (x y z nx ny nz part), else predicts them with --ckpt/--category.
Prints the path of the PNG (not with --quiet).
"""


def _visualize_arguments(p: argparse.ArgumentParser) -> None:
    from clora3d.cli import _add_verbosity

    sub = p.add_subparsers(dest="what", required=True, metavar="{cloud,partseg,curves}")
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
    for q in (c, s, k):  # -q/--quiet also after the sub-command (it hides the printed path)
        _add_verbosity(q)


def _visualize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from clora3d import viz

    if args.what == "cloud":
        from clora3d.data.io import read_point_cloud

        xyz, _ = read_point_cloud(args.file)
        out = viz.render_cloud(xyz, args.out, title=args.title or Path(args.file).name)
    elif args.what == "partseg":
        xyz, labels = viz.load_labelled_cloud(args.file, args.labels)
        title = Path(args.file).name
        if labels is None:
            if not args.ckpt:
                raise ValueError(
                    f"{args.file} carries no part labels; pass --labels FILE or "
                    "--ckpt PARTSEG_RUN --category NAME to predict them"
                )
            from clora3d.engine.infer import Predictor

            pred = Predictor.from_checkpoint(args.ckpt, args.cfg, device=args.device)
            if pred.task != "partseg":
                raise ValueError(f"{args.ckpt} is a {pred.task} model; partseg needs a part-segmentation checkpoint")
            r = pred.segment(xyz, args.category)
            labels, title = r["labels"], f"{title} ({r['category']}, predicted)"
        out = viz.render_partseg(xyz, labels, args.out, title=title)
    else:
        out = viz.plot_training_curves(args.run, args.out)
    if not getattr(args, "quiet", 0):
        print(out)
    return 0


COMMANDS = [
    Command("infer", "classify or part-segment point cloud files", INFER_DOC, _infer_arguments, _infer),
    Command("export", "write the adapter-only file and/or the merged model", EXPORT_DOC, _export_arguments, _export),
    Command(
        "visualize",
        "render point clouds, part labels and training curves to PNG",
        VISUALIZE_DOC,
        _visualize_arguments,
        _visualize,
    ),
]

#!/usr/bin/env python
"""Run the ModelNet40 few-shot grid (way x shot x fold), resumable, and print mean ± std.

    python tools/fewshot.py --cfg cfgs/fewshot/clora.yaml --ckpt pretrain.pth \
        [--ways 5,10] [--shots 10,20] [--folds 0-9] [--seeds 0-2] [--out DIR] [--ci95] [--set key=value ...]

Each (way, shot, fold) is one training run; finished folds (their result JSON in --out) are skipped
on re-run, an interrupted fold resumes from its last checkpoint. The reported number per fold is
the best-epoch query accuracy (reference protocol); the last-epoch accuracy is shown beside it.
With --seeds every fold is trained once per seed, and the table gives mean ± std over folds (the
reference statistic, each fold averaged over its seeds) and mean ± std over seeds.
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


def _int_list(text: str) -> list[int]:
    """'5,10' or '0-9' or '0,2-4' -> list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like '5,10' or '0-9', got {text!r}")
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="few-shot config (dataset NAME: ModelNetFewShot)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.epochs=150 (repeatable)")
    p.add_argument("--ckpt", default=None, help="pre-trained checkpoint passed to every run")
    p.add_argument("--ways", type=_int_list, default=[5, 10], help="default 5,10")
    p.add_argument("--shots", type=_int_list, default=[10, 20], help="default 10,20")
    p.add_argument("--folds", type=_int_list, default=list(range(10)), help="default 0-9")
    p.add_argument("--seeds", type=_int_list, default=None,
                   help="train every fold once per seed, e.g. 0-2 (default: one run per fold with "
                        "the config's seed, as the references)")
    p.add_argument("--out", default=None, help="output folder (default <log.root>/<name>_fewshot)")
    p.add_argument("--metric", default="acc", help="key of the trainer's metrics to report (acc)")
    p.add_argument("--ci95", action="store_true", help="show 1.96*std/sqrt(n) instead of std")
    p.add_argument("--generate-from", default=None, metavar="MODELNET40_ROOT",
                   help="generate missing fold pickles from this ModelNet40 root (seeded; "
                        "not the released folds)")
    p.add_argument("--generate-seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the final result JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from clora3d.engine.config import load_config
        from clora3d.engine.fewshot import run_fewshot

        cfg = load_config(args.cfg, args.overrides)
        out = args.out or str(Path(cfg["log"]["root"]) / f"{cfg['name']}_fewshot")
        res = run_fewshot(cfg, out, ways=args.ways, shots=args.shots, folds=args.folds,
                          ckpt=args.ckpt, metric=args.metric, ci95=args.ci95, seeds=args.seeds,
                          generate_from=args.generate_from, generate_seed=args.generate_seed)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    print(res["table"])
    print(f"results: {Path(out) / 'summary.json'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": res["summary"], "folds": res["folds"]},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

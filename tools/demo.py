#!/usr/bin/env python
"""The main job on the embedded default data: pre-train, benchmark every PEFT method on shifted
synthetic scans, real-data check, fine-tune CLoRA on files, evaluate, profile, export, infer, render.
See clora3d/demo.py; `make demo` runs it."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out", help="output folder (data, runs, exports, renders)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: a smoke test")
    ap.add_argument("--pretrain-seed", type=int, default=0,
                    help="seed of the Point-MAE pre-training (another pre-trained backbone; default 0)")
    ap.add_argument("--pretrain-threads", type=int, default=1,
                    help="intra-op threads of the pre-training stage (float sums, and so the backbone, "
                         "depend on it; default 1)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated benchmark rows to run (default: every method), e.g. full,linear")
    args = ap.parse_args()
    from clora3d.demo import run
    from clora3d.errors import USER_ERRORS, format_user_error

    try:
        run(args.out, quick=args.quick, pretrain_seed=args.pretrain_seed,
            pretrain_threads=args.pretrain_threads,
            methods=None if args.methods is None else [m.strip() for m in args.methods.split(",")])
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The main job on the embedded default data: pre-train, fine-tune with CLoRA and three peers,
evaluate, profile, export, infer, render. See clora3d/demo.py; `make demo` runs it."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out", help="output folder (data, runs, exports, renders)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: a smoke test")
    args = ap.parse_args()
    from clora3d.demo import run
    from clora3d.errors import USER_ERRORS, format_user_error

    try:
        run(args.out, quick=args.quick)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

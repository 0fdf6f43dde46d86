#!/usr/bin/env python
"""Parameter / adapter-size / FLOPs / MACs table of every PEFT method (Markdown to stdout, JSON with --json).

Example: python tools/flops.py --json flops.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vit_s", help="backbone preset (default vit_s)")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows as JSON to this file")
    ap.add_argument("--inputs", nargs="+", default=None, choices=["ModelNet40", "ScanObjectNN"],
                    help="which standard inputs to profile (default both)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    try:
        import clora3d  # noqa: F401
    except ModuleNotFoundError:  # running from a source checkout that is not pip-installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clora3d.errors import USER_ERRORS, format_user_error
    from clora3d.profile.report import INPUTS, method_table, to_markdown

    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    inputs = {k: INPUTS[k] for k in (args.inputs or INPUTS)}
    try:
        rows = method_table(preset=args.preset, inputs=inputs, progress=not args.no_progress)
        print(to_markdown(rows))
        if args.json is not None:
            from clora3d.storage import atomic_write_bytes

            atomic_write_bytes(args.json, json.dumps(rows, indent=2).encode(), what="JSON file")
            print(f"\nwrote {args.json}", file=sys.stderr)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a fine-tuned run: an adapter-only file and/or a merged model in Point-MAE's key layout.

    python tools/export.py --ckpt RUN/ckpt-best.pth [--cfg CFG] --adapter OUT.pth --merged OUT.pth

The merged model is checked: its logits on a fixed cloud must match the adapted model's (fp32).
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
    p.add_argument("--ckpt", required=True, help="run checkpoint (ckpt-best.pth / ckpt-last.pth) or run folder")
    p.add_argument("--cfg", default=None, help="config (default: the one saved with the run)")
    p.add_argument("--adapter", default=None, metavar="OUT", help="write the adapter-only file here")
    p.add_argument("--merged", default=None, metavar="OUT", help="write the merged Point-MAE-layout model here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from clora3d.engine.export import export_run

        rep = export_run(args.ckpt, cfg=args.cfg, adapter_out=args.adapter, merged_out=args.merged,
                         device=args.device)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        if "adapter" in rep:
            print(f"adapter ({rep['method']}): {rep['adapter']}  {rep['adapter_bytes'] / 1e6:.2f} MB, "
                  f"{rep['adapter_tensors']} tensors")
        if "merged" in rep:
            print(f"merged model (Point-MAE layout): {rep['merged']}  {rep['merged_bytes'] / 1e6:.2f} MB; "
                  f"max |logit diff| merge {rep['max_abs_diff_merge']:.2e}, reload "
                  f"{rep['max_abs_diff_reload']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

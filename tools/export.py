#!/usr/bin/env python
"""Export a fine-tuned run: an adapter-only file and/or a merged model in Point-MAE's key layout.

    python tools/export.py --ckpt RUN/ckpt-best.pth [--cfg CFG] --adapter OUT.pth --merged OUT.pth

The `clora3d export` command (clora3d/cli/); `python tools/export.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def parse_args(argv=None):
    return cli.parse_args("export", argv, prog="tools/export.py")


def main(argv=None) -> int:
    return cli.tool_main("export", argv, prog="tools/export.py")


if __name__ == "__main__":
    sys.exit(main())

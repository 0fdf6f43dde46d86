#!/usr/bin/env python
"""Render PNGs: point clouds, part-segmentation labels, and training curves of a run.

    python tools/visualize.py cloud|partseg|curves ... --out FILE.png

The `clora3d visualize` command (clora3d/cli/); `python tools/visualize.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def parse_args(argv=None):
    return cli.parse_args("visualize", argv, prog="tools/visualize.py")


def main(argv=None) -> int:
    return cli.tool_main("visualize", argv, prog="tools/visualize.py")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Classify (or part-segment) your own point cloud files with a trained model.

    python tools/infer.py --ckpt RUN/ckpt-best.pth FILE_OR_FOLDER [--topk 5] [--json]

The `clora3d infer` command (clora3d/cli/); `python tools/infer.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def parse_args(argv=None):
    return cli.parse_args("infer", argv, prog="tools/infer.py")


def main(argv=None) -> int:
    return cli.tool_main("infer", argv, prog="tools/infer.py")


if __name__ == "__main__":
    sys.exit(main())

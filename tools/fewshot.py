#!/usr/bin/env python
"""Run the ModelNet40 few-shot grid (way x shot x fold), resumable, and print mean +- std.

    python tools/fewshot.py --cfg cfgs/fewshot/clora.yaml --ckpt pretrain.pth [--seeds 0-2]

The `clora3d fewshot` command (clora3d/cli/); `python tools/fewshot.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def parse_args(argv=None):
    return cli.parse_args("fewshot", argv, prog="tools/fewshot.py")


def main(argv=None) -> int:
    return cli.tool_main("fewshot", argv, prog="tools/fewshot.py")


if __name__ == "__main__":
    sys.exit(main())

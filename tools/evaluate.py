#!/usr/bin/env python
"""Evaluate a trained classification run on its test split: plain accuracy and voting.

    python tools/evaluate.py --ckpt RUN/ckpt-best.pth [--vote-passes 299] [--json OUT]

The `clora3d evaluate` command (clora3d/cli/); `python tools/evaluate.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.tool_main("evaluate", argv, prog="tools/evaluate.py")


if __name__ == "__main__":
    sys.exit(main())

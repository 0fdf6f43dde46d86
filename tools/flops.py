#!/usr/bin/env python
"""Parameter / adapter-size / FLOPs / MACs table of every PEFT method (Markdown to stdout, JSON with --json).

    python tools/flops.py --json flops.json

The `clora3d flops` command (clora3d/cli/); `python tools/flops.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.tool_main("flops", argv, prog="tools/flops.py")


if __name__ == "__main__":
    sys.exit(main())

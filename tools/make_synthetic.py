#!/usr/bin/env python
"""Write synthetic point cloud data sets in the real on-disk formats (see data/README.md).

    python tools/make_synthetic.py --root data [--format modelnet40 --n-train 40 --n-test 15]

The `clora3d make-synthetic` command (clora3d/cli/); `python tools/make_synthetic.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.tool_main("make-synthetic", argv, prog="tools/make_synthetic.py")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Check the clora3d installation: versions, GPU, how clora3d._C was built, which op backend is active.

    python tools/doctor.py [--json]

The `clora3d doctor` command (clora3d/cli/); `python tools/doctor.py --help` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.tool_main("doctor", argv, prog="tools/doctor.py")


if __name__ == "__main__":
    sys.exit(main())

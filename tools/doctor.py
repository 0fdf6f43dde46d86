#!/usr/bin/env python3
"""Check the clora3d installation: versions, GPU, how clora3d._C was built, which op backend is active.

Usage: python tools/doctor.py [--json]
Exit code 0 when clora3d.ops is usable (the PyTorch reference fallback counts, with a warning).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("clora3d") is None:  # not installed: use the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clora3d.doctor import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    return run(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""CPU throughput benchmark of ViT-S classification: forward / full fine-tuning / frozen-backbone steps.

Prints a Markdown table (samples/s, GFLOP/s, % of the fp32 matmul peak measured in the same run,
peak memory); --json writes the numbers. Heavy (a few minutes on 2 cores): run it once, not in a loop.

Example: python tools/bench_model.py --batch 32 --points 1024 --json bench_model.json
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    try:
        import clora3d  # noqa: F401
    except ModuleNotFoundError:  # running from a source checkout that is not pip-installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clora3d.profile.bench_model import main as bench_main

    bench_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""CPU throughput benchmark of ViT-S classification: forward / full fine-tuning / frozen-backbone steps.

python tools/bench_model.py --batch 32 --points 1024 --json bench_model.json
Heavy (a few minutes on 2 cores): run it once, not in a loop.
The benchmark lives in benchmarks/bench_model.py (not in the installed package); this is its entry point.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d and benchmarks/

from benchmarks import bench_model, run_script  # noqa: E402


def main(argv=None) -> int:
    return run_script(bench_model.main, argv, prog="tools/bench_model.py")


if __name__ == "__main__":
    sys.exit(main())

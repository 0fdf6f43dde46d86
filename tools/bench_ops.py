#!/usr/bin/env python
"""Benchmark clora3d.ops (native vs reference vs installed peers) and print one table.

python tools/bench_ops.py --repeats 9 --json docs/bench/ops_cpu.json
then python tools/render_bench_tables.py renders README.md's and docs/ops.md's tables from that JSON.
The benchmark lives in benchmarks/bench_ops.py (not in the installed package); this is its entry point.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d and benchmarks/

from benchmarks import bench_ops, run_script  # noqa: E402


def main(argv=None) -> int:
    return run_script(bench_ops.main, argv, prog="tools/bench_ops.py")


if __name__ == "__main__":
    sys.exit(main())

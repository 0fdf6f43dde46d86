#!/usr/bin/env python
"""Benchmark clora3d.ops (native vs reference vs installed peers) and print one table.

Example: python tools/bench_ops.py --repeats 9 --json docs/bench/ops_cpu.json
then python tools/render_bench_tables.py renders README.md's and docs/ops.md's tables from that JSON.
"""
from __future__ import annotations

import argparse
import sys

import torch

from clora3d.ops import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--sizes", nargs="+", choices=list(bench.SIZES), default=None, help="subset of sizes")
    ap.add_argument("--ops", nargs="+", choices=["fps", "knn", "chamfer"], default=["fps", "knn", "chamfer"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every implementation")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write rows + environment as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = bench.run_benchmarks(repeats=args.repeats, warmup=args.warmup, sizes=args.sizes,
                                ops_to_run=tuple(args.ops), progress=not args.no_progress)
    env = bench.environment()
    print(f"CPU: {env['cpu']} ({env['cpu_count']} logical), torch {env['torch']}, {env['torch_threads']} threads, "
          f"load average (1/5/15 min) at the end: {env['loadavg_1_5_15min']}")
    print(f"peers: {', '.join(f'{k} {v}' for k, v in env['peers'].items()) or 'none'}")
    print(bench.format_table(rows))
    if args.json:
        bench.write_json(args.json, rows, command="python tools/bench_ops.py " + " ".join(sys.argv[1:]))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

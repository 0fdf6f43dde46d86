#!/usr/bin/env python
"""Render the kernel benchmark tables of README.md and docs/ops.md from one benchmark JSON.

The JSON is what `python tools/bench_ops.py --json docs/bench/ops_cpu.json` writes; the tables go
between the `<!-- bench_ops:summary:begin/end -->` (README.md) and `<!-- bench_ops:full:begin/end -->`
(docs/ops.md) markers. `--check` changes nothing and exits 1 when a file differs from the rendering.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clora3d.ops import bench  # noqa: E402

DEFAULT_JSON = "docs/bench/ops_cpu.json"
TARGETS = {"README.md": ["summary"], "docs/ops.md": ["full"]}


def rendered(json_path: str = DEFAULT_JSON, repo: Path = REPO) -> dict[str, str]:
    """{relative file: its text with every benchmark block re-rendered from ``json_path``}."""
    data = json.loads((repo / json_path).read_text())
    blocks = bench.render_tables(data, json_path)
    out = {}
    for rel, names in TARGETS.items():
        text = (repo / rel).read_text()
        for name in names:
            text = bench.replace_between_markers(text, bench.MARKERS[name], blocks[name], where=rel)
        out[rel] = text
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=DEFAULT_JSON, help="benchmark JSON, relative to the repository root")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = ap.parse_args()
    try:
        files = rendered(args.json)
    except (OSError, ValueError, KeyError) as e:
        print(f"render_bench_tables: {e}", file=sys.stderr)
        return 2
    stale = [rel for rel, text in files.items() if (REPO / rel).read_text() != text]
    if args.check:
        for rel in stale:
            print(f"{rel}: benchmark tables differ from {args.json}; run python tools/render_bench_tables.py")
        return 1 if stale else 0
    for rel in stale:
        (REPO / rel).write_text(files[rel])
        print(f"updated {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

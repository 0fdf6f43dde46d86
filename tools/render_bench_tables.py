#!/usr/bin/env python
"""Render the benchmark tables of README.md and docs/ops.md from the committed JSON files.

- kernels: what `python tools/bench_ops.py --json docs/bench/ops_cpu.json` writes, between the
  `<!-- bench_ops:summary:begin/end -->` (README.md) and `<!-- bench_ops:full:begin/end -->`
  (docs/ops.md) markers;
- parameters / FLOPs of every PEFT method: what `python tools/flops.py --json
  docs/bench/flops_vit_s.json` writes, between the `<!-- flops:begin/end -->` markers of README.md;
- the demo's ranking benchmark: what `python tools/demo.py --record docs/bench/demo.json` (and
  `--pretrain-seed 1 --methods full,linear --record docs/bench/demo_pretrain_seed1.json`) write,
  between the `<!-- demo:begin/end -->` and `<!-- demo_seed1:begin/end -->` markers of README.md;
- the SADE ablation: what `python tools/sade_ablation.py --record docs/bench/sade_ablation.json`
  writes, between the `<!-- sade_ablation:begin/end -->` markers of docs/peft.md;
- the CPU proxies of GPU step cost: what `python benchmarks/step_ops.py --preset tiny,vit_s --precision
  fp32,bf16 --json docs/bench/step_ops.json` writes, between the `<!-- step_ops:begin/end -->` markers of README.md;
- what the compiler gives each CUDA kernel (registers, spills, occupancy): what `python
  benchmarks/cuda_resources.py --arch 90 --json docs/bench/cuda_resources.json` writes, between the
  `<!-- cuda_resources:begin/end -->` markers of docs/ops.md.

`--check` changes nothing and exits 1 when a file differs from the rendering.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bench_ops as bench  # noqa: E402

DEFAULT_JSON = "docs/bench/ops_cpu.json"
FLOPS_JSON = "docs/bench/flops_vit_s.json"
FLOPS_MARKER = "flops"
#: marker -> (JSON file, the command that writes it)
DEMO_BLOCKS = {
    "demo": ("docs/bench/demo.json", "python tools/demo.py --record docs/bench/demo.json"),
    "demo_seed1": (
        "docs/bench/demo_pretrain_seed1.json",
        "python tools/demo.py --pretrain-seed 1 --methods full,linear --record docs/bench/demo_pretrain_seed1.json",
    ),
}
SADE_JSON = "docs/bench/sade_ablation.json"
SADE_MARKER = "sade_ablation"
STEP_OPS_MARKER = "step_ops"
CUDA_RESOURCES_MARKER = "cuda_resources"
TARGETS = {
    "README.md": ["summary", FLOPS_MARKER, *DEMO_BLOCKS, STEP_OPS_MARKER],
    "docs/ops.md": ["full", CUDA_RESOURCES_MARKER],
    "docs/peft.md": [SADE_MARKER],
}


def sade_block(json_path: str = SADE_JSON, repo: Path = REPO) -> str:
    from benchmarks import ranking

    rec = json.loads((repo / json_path).read_text())
    return (
        f"From `{json_path}`, written by `python tools/sade_ablation.py --record {json_path}` "
        f"(rendered by `tools/render_bench_tables.py`).\n\n```\n{rec['header']}\n```\n\n"
        + ranking.format_ablation(rec["rows"])
    )


def flops_block(json_path: str = FLOPS_JSON, repo: Path = REPO) -> str:
    from clora3d.profile.report import to_markdown

    rows = json.loads((repo / json_path).read_text())
    return (
        f"From `{json_path}`, written by `python tools/flops.py --json {json_path}` (rendered by "
        f"`tools/render_bench_tables.py`).\n\n" + to_markdown(rows)
    )


def rendered(json_path: str = DEFAULT_JSON, repo: Path = REPO, flops_json: str = FLOPS_JSON) -> dict[str, str]:
    """{relative file: its text with every benchmark block re-rendered from the JSON files}."""
    data = json.loads((repo / json_path).read_text())
    blocks = bench.render_tables(data, json_path)
    blocks[FLOPS_MARKER] = flops_block(flops_json, repo)
    from benchmarks import demo

    for marker, (rel_json, command) in DEMO_BLOCKS.items():
        blocks[marker] = demo.readme_block(json.loads((repo / rel_json).read_text()), rel_json, command)
    blocks[SADE_MARKER] = sade_block(SADE_JSON, repo)
    from benchmarks import step_ops

    blocks[STEP_OPS_MARKER] = step_ops.readme_block(json.loads((repo / step_ops.RECORD_JSON).read_text()))
    from benchmarks import cuda_resources

    blocks[CUDA_RESOURCES_MARKER] = cuda_resources.docs_block(
        json.loads((repo / cuda_resources.RECORD_JSON).read_text())
    )
    out = {}
    for rel, names in TARGETS.items():
        text = (repo / rel).read_text()
        for name in names:
            marker = bench.MARKERS.get(name, name)
            text = bench.replace_between_markers(text, marker, blocks[name], where=rel)
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

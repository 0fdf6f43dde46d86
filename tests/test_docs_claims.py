"""Claims in README.md and docs/ that the code or the data must back: the benchmark tables are the
rendering of the one committed benchmark JSON, the speed-ups and bar verdicts in them follow from
its rows, and no link in the docs points outside the repository."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is in the checkout, not the package
from benchmarks import bench_ops as bench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH_JSON = "docs/bench/ops_cpu.json"


def _render_tool():
    spec = importlib.util.spec_from_file_location("render_bench_tables", REPO / "tools" / "render_bench_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_tables_in_readme_and_docs_are_rendered_from_the_committed_json():
    files = _render_tool().rendered(BENCH_JSON, REPO)
    assert set(files) == {"README.md", "docs/ops.md", "docs/peft.md"}
    for rel, text in files.items():
        assert (REPO / rel).read_text() == text, (
            f"{rel}: benchmark tables differ from {BENCH_JSON}; run python tools/render_bench_tables.py"
        )


@pytest.mark.parametrize(
    "marker,json_rel", [("demo", "docs/bench/demo.json"), ("demo_seed1", "docs/bench/demo_pretrain_seed1.json")]
)
def test_readme_demo_table_follows_from_the_recorded_runs(marker, json_rel):
    """Each accuracy cell of the README's demo tables is the mean ± sample std of that method's
    recorded runs (recomputed here with numpy from the individual runs, not from the summary), and
    each separation line's gap is the difference of the two means."""
    import numpy as np

    rec = json.loads((REPO / json_rel).read_text())
    readme = (REPO / "README.md").read_text()
    block = readme.split(f"<!-- {marker}:begin -->")[1].split(f"<!-- {marker}:end -->")[0]
    tasks = rec["benchmark"]["size"]["tasks"]
    runs = rec["benchmark"]["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    means = {}
    for m in methods:
        bench_part = block.split(f"{tasks[0]}: full - linear = ")[0]  # the pipeline table follows
        row = [ln for ln in bench_part.splitlines() if ln.startswith(f"| {m} | ")]
        assert len(row) == 1, m
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        for k, t in enumerate(tasks):
            accs = np.array([r["acc"] for r in runs if r["method"] == m and r["task"] == t])
            assert len(accs) == len(rec["benchmark"]["size"]["seeds"])
            means[m, t] = accs.mean()
            assert cells[1 + k] == f"{accs.mean():.1f} ± {accs.std(ddof=1):.1f}", (m, t)
    for t in tasks:
        line = next(ln for ln in block.splitlines() if ln.startswith(f"{t}: full - linear = "))
        assert line.startswith(f"{t}: full - linear = {means['full', t] - means['linear', t]:.1f} points")


def test_readme_summary_numbers_follow_from_the_json_rows():
    data = json.loads((REPO / BENCH_JSON).read_text())
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- bench_ops:summary:begin -->")[1].split("<!-- bench_ops:summary:end -->")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| op,")]
    cases = {}
    for r in data["rows"]:
        cases.setdefault((r["op"], r["size"]), []).append(r)
    assert len(lines) == len(cases)
    for line, ((op, size), rows) in zip(lines, cases.items()):
        assert line.startswith(f"| {op} {size} |")
        native = [r["median_ms"] for r in rows if r["impl"] == "clora3d native"][0]
        peers = [r["median_ms"] for r in rows if r["kind"] == "peer" and r["median_ms"] is not None and not r["error"]]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(native, rel=5e-3)
        if peers:  # speed-up = fastest peer / native, computed here from the raw rows
            speed = min(peers) / native
            assert cells[5].startswith(f"{speed:.1f}x")
            bar = bench.BARS[(op, size.split()[0])]
            if bar is not None:
                verdict = cells[6].split(" against the installed peers only")[0]
                assert verdict.endswith("NOT met" if speed < bar[0] else ": met"), line
        else:
            assert cells[4] == "none installed" and cells[5] == "-"


def test_bar_verdicts_on_hand_made_rows():
    def rows(native, peer):
        out = [
            {
                "op": "knn",
                "size": "modelnet B32 N1024 M64 K32",
                "impl": "clora3d native",
                "kind": "native",
                "median_ms": native,
                "error": "",
            }
        ]
        if peer is not None:
            out.append(
                {
                    "op": "knn",
                    "size": "modelnet B32 N1024 M64 K32",
                    "impl": "pykdtree",
                    "kind": "peer",
                    "median_ms": peer,
                    "error": "",
                }
            )
        return {"environment": {}, "rows": out}

    only = " against the installed peers only (pykdtree, faiss, scipy, open3d not installed)"
    assert bench.summary_rows(rows(2.0, 10.0))[0]["bar"] == ">= 5x: met" + only  # exactly 5x
    assert bench.summary_rows(rows(2.0, 9.9))[0]["bar"] == ">= 5x: NOT met" + only  # 4.95x
    full = rows(2.0, 10.0)
    full["environment"]["peers"] = {p: "1" for p in ("pykdtree", "faiss", "scipy", "open3d")}
    assert bench.summary_rows(full)[0]["bar"] == ">= 5x: met"
    assert bench.summary_rows(rows(2.0, None))[0]["bar"] == ">= 5x: not measured (no peer installed)"
    assert bench.summary_rows(rows(2.0, 10.0))[0]["speedup"] == pytest.approx(5.0)


def test_markers_are_required_once():
    with pytest.raises(ValueError, match="bench_ops:full:begin"):
        bench.replace_between_markers("no markers here", "bench_ops:full", "x", where="README.md")
    text = "a\n<!-- m:begin -->\nold\n<!-- m:end -->\nb"
    assert bench.replace_between_markers(text, "m", "new") == "a\n<!-- m:begin -->\nnew\n<!-- m:end -->\nb"


def test_doc_links_stay_inside_the_repository_and_exist():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("#") or target.startswith("mailto:"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO), f"{doc.name}: link {target} points outside the repository"
            assert path.exists(), f"{doc.name}: link {target} does not exist"
        for ref in re.findall(r"`(\.\./[^`]+)`", text):
            raise AssertionError(f"{doc.name}: mentions {ref}, a path outside the repository")

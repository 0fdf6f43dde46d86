"""The demo (`make demo`) end to end at its --quick size (~20 s): every stage runs and writes its outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clora3d import benchmark as B
from clora3d import demo


def test_quick_demo_runs_every_stage(tmp_path):
    result = demo.run(tmp_path / "demo", quick=True)
    out = tmp_path / "demo"
    bsize = demo.QUICK_BENCH

    # benchmark: one row per method, mean/std recomputed from the individual runs
    summary = {r["method"]: r for r in result["benchmark"]["summary"]}
    assert list(summary) == list(B.BENCH_METHODS)
    runs = result["benchmark"]["runs"]
    assert len(runs) == len(B.BENCH_METHODS) * len(bsize.tasks) * len(bsize.seeds)
    for m, row in summary.items():
        for t in bsize.tasks:
            accs = [r["acc"] for r in runs if r["method"] == m and r["task"] == t]
            assert len(accs) == len(bsize.seeds) and all(0.0 <= a <= 100.0 for a in accs)
            assert row[f"{t}_mean"] == pytest.approx(np.mean(accs))
            assert row[f"{t}_std"] == pytest.approx(np.std(accs, ddof=1))
    # trainable counts: linear < every PEFT method < full; CLoRA with and without SADE train the same set
    tr = {m: r["trainable"] for m, r in summary.items()}
    assert all(tr["linear"] < tr[m] < tr["full"] for m in tr if m not in ("linear", "full"))
    assert tr["clora"] == tr["clora (no SADE)"]

    # real-data check: ran on the shared samples or says why not
    real = result["real_check"]
    assert "skipped" in real or (0 <= real["correct"] <= real["n"] and real["method"] in summary)

    # pipeline on files
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(demo.METHODS)
    r = rows["clora"]
    assert 0.0 <= r["acc_last"] <= 100.0 and 0.0 <= r["acc_vote10_last"] <= 100.0
    assert r["gflops_unmerged"] > r["gflops_merged"]
    assert (out / "export" / "clora_adapter.pth").stat().st_size > 0
    assert (out / "export" / "clora_merged_pointmae.pth").stat().st_size > 0
    assert len(list((out / "renders").glob("*.png"))) == 1 + len(demo.METHODS)

    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    table = (out / "demo_table.md").read_text()
    assert "| clora (no SADE) |" in table and "| linear |" in table and "real-data check" in table

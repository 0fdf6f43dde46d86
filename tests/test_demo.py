"""The demo (`make demo`) end to end at its --quick size (~15 s): every stage runs and writes its outputs."""
from __future__ import annotations

import json

import pytest

from clora3d import demo


def test_quick_demo_runs_every_stage(tmp_path):
    result = demo.run(tmp_path / "demo", quick=True)
    out = tmp_path / "demo"
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(demo.METHODS)
    for r in rows.values():
        assert 0.0 <= r["acc_last"] <= 100.0 and 0.0 <= r["acc_vote10_last"] <= 100.0
        # merging folds every update into the frozen weights: the plain backbone's cost
        assert r["gflops_merged"] == pytest.approx(rows["full"]["gflops_unmerged"])
    # CLoRA and LoRA add work before merging; linear probing trains far fewer weights than full
    assert rows["clora"]["gflops_unmerged"] > rows["clora"]["gflops_merged"]
    assert rows["linear"]["trainable_params"] < rows["clora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert (out / "export" / "clora_adapter.pth").stat().st_size > 0
    assert (out / "export" / "clora_merged_pointmae.pth").stat().st_size > 0
    assert all((out / "renders").glob("*.png"))
    assert len(list((out / "renders").glob("*.png"))) == 1 + len(demo.METHODS)
    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert "| clora |" in (out / "demo_table.md").read_text()

"""The demo (`make demo`) end to end at its --quick size: every stage runs and writes outputs whose
content is checked against independent computations (statistics recomputed from the individual
runs, accuracies that are whole numbers of test scans, parameter counts of a freshly built model,
checkpoint key layouts, the real-data manifest, PNG signatures, the infer tool's printed top-3)."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import demo
from benchmarks import ranking as B
from clora3d.data.synthetic import SYNTHETIC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def _whole_scans(acc: float, n: int) -> bool:
    """``acc`` (%) is k / n for an integer k (float32 accuracy: 1e-4 tolerance)."""
    k = acc * n / 100.0
    return abs(k - round(k)) < 1e-4 and 0 <= round(k) <= n


def test_quick_demo_runs_every_stage(tmp_path):
    result = demo.run(tmp_path / "demo", quick=True)
    check_quick_demo_outputs(result, tmp_path / "demo")


def check_quick_demo_outputs(result: dict, out: Path) -> None:
    """Every assertion on a quick demo's returned result and its output folder ``out``."""
    bsize, size = demo.QUICK_BENCH, demo.QUICK
    classes = SYNTHETIC_CLASSES[: bsize.num_classes]
    n_test = {"scan": bsize.num_classes * bsize.n_test, "fewshot": bsize.way * bsize.fewshot_test}

    # benchmark: every method x task x seed ran once; each accuracy is a whole number of test scans
    runs = result["benchmark"]["runs"]
    assert sorted((r["method"], r["task"], r["seed"]) for r in runs) == sorted(
        (m, t, s) for m in B.BENCH_METHODS for t in bsize.tasks for s in bsize.seeds
    )
    for r in runs:
        assert _whole_scans(r["acc"], n_test[r["task"]]), r
        assert r["lr"] == B.BENCH_LR.get(r["method"], bsize.lr)
    # summary rows: mean / sample std recomputed from the individual runs
    summary = {r["method"]: r for r in result["benchmark"]["summary"]}
    assert list(summary) == list(B.BENCH_METHODS)
    stats = {}
    for m in B.BENCH_METHODS:
        for t in bsize.tasks:
            accs = [r["acc"] for r in runs if r["method"] == m and r["task"] == t]
            stats[m, t] = (float(np.mean(accs)), float(np.std(accs, ddof=1)))
            assert summary[m][f"{t}_mean"] == pytest.approx(stats[m, t][0])
            assert summary[m][f"{t}_std"] == pytest.approx(stats[m, t][1])
    # full fine-tuning trains every parameter of the model (counted on a fresh one); linear probing
    # trains the fewest; CLoRA with and without SADE train the same set
    fresh = demo_model_params(bsize.num_classes)
    tr = {m: r["trainable"] for m, r in summary.items()}
    assert tr["full"] == fresh
    assert all(tr["linear"] < tr[m] < tr["full"] for m in tr if m not in ("linear", "full"))
    assert tr["clora"] == tr["clora (no SADE)"]

    # the printed table (demo_table.md): header, one row per method with the recomputed numbers,
    # the lr column, the separation lines and the real-data line
    table = (out / "demo_table.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("clora3d demo (quick)") and "seed 0, 1 thread(s)" in table
    bench_lines = lines[: next(i for i, ln in enumerate(lines) if ln.startswith("scan: full - linear"))]
    for m in B.BENCH_METHODS:
        rows = [ln for ln in bench_lines if ln.startswith(f"| {m} | ")]
        assert len(rows) == 1, m
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[1 : 1 + len(bsize.tasks)] == [f"{stats[m, t][0]:.1f} ± {stats[m, t][1]:.1f}" for t in bsize.tasks]
        assert cells[1 + len(bsize.tasks) + 1] == f"{B.BENCH_LR.get(m, bsize.lr):g}"
    for t in bsize.tasks:
        gap = stats["full", t][0] - stats["linear", t][0]
        sep = [ln for ln in lines if ln.startswith(f"{t}: full - linear = ")]
        assert len(sep) == 1 and sep[0].startswith(f"{t}: full - linear = {gap:.1f} points = ")
        assert ("does NOT separate" in sep[0]) == (not result["benchmark"]["separation"][t]["ratio"] >= 3.0)

    # real-data check: on the shared samples, the shapes of the shared classes from the data's own
    # manifest; without them, skipped with the reason printed
    real = result["real_check"]
    real_lines = [ln for ln in lines if ln.startswith("real-data check")]
    assert len(real_lines) == 1
    base = B.shared_data_dir()
    if base is None or not (base / "modelnet40_normal_resampled").is_dir():
        assert real_lines[0].startswith("real-data check skipped: real ModelNet40 samples (")
        assert real_lines[0].endswith("are not present")
    else:
        with (base / "modelnet40_manifest.tsv").open() as f:
            manifest = list(csv.DictReader(f, delimiter="\t"))
        shared = [c for c in classes if c in {r["class"] for r in manifest}]
        n = sum(r["class"] in shared for r in manifest)
        assert real["classes"] == shared and real["n"] == n and real["method"] in summary
        assert _whole_scans(real["acc"], n)
        assert real_lines[0].startswith(
            f"real-data check ({real['method']}, seed 0, trained on synthetic "
            f"scans only): {real['correct']} of {n} real ModelNet40 shapes right"
        )

    # pre-training checkpoint in the official Point-MAE layout
    pre = torch.load(out / "pretrain.pth", weights_only=True)
    assert {"base_model", "optimizer", "epoch", "metrics", "best_metrics"} <= set(pre)
    assert "MAE_encoder.blocks.blocks.0.attn.qkv.weight" in pre["base_model"] and "mask_token" in pre["base_model"]

    # pipeline on files: the CLoRA row; accuracies are whole numbers of the synthetic test shapes
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(demo.METHODS)
    r = rows["clora"]
    n_files = size.num_classes * size.n_test
    assert _whole_scans(r["acc_last"], n_files) and _whole_scans(r["acc_vote10_last"], n_files)
    assert size.num_classes == bsize.num_classes and r["trainable_params"] == tr["clora"]  # same model, same method
    assert r["gflops_unmerged"] > r["gflops_merged"]
    # exports: the adapter holds CLoRA's shared spaces, the merged model none of them, official keys
    adapter = torch.load(out / "export" / "clora_adapter.pth", weights_only=True)
    assert adapter["metadata"]["method"] == "clora"
    assert {"peft.s96x96.D", "peft.s96x96.U", "peft.s96x96.Q"} <= set(adapter["state"])
    merged = torch.load(out / "export" / "clora_merged_pointmae.pth", weights_only=True)["base_model"]
    assert "blocks.blocks.0.attn.qkv.weight" in merged and "cls_head_finetune.0.weight" in merged
    assert not any(k.startswith("peft.") for k in merged)
    assert result["export"]["max_abs_diff_merge"] < 1e-4
    # tools/infer.py printed the file, its top class and two more, probabilities descending
    infer = result["infer_stdout"].strip().splitlines()
    m = re.fullmatch(re.escape(result["infer_file"]) + r": (\w+) \((0\.\d{3})\)", infer[0])
    assert m and m.group(1) in classes and len(infer) == 3
    probs = [float(m.group(2))] + [float(ln.split()[1]) for ln in infer[1:]]
    assert [ln.split()[0] in classes for ln in infer[1:]] == [True, True]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
    # renders: the test shape and one curve per pipeline method, real PNG files
    sample = Path(result["infer_file"]).stem
    expected = {f"{sample}.png"} | {f"curves_{m}.png" for m in demo.METHODS}
    assert {p.name for p in (out / "renders").iterdir()} == expected
    assert {Path(p).name for p in result["renders"]} == expected
    for p in (out / "renders").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000

    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert saved["benchmark"]["summary"] == json.loads(json.dumps(result["benchmark"]["summary"]))
    assert saved["pretrain_seed"] == 0 and saved["pretrain_threads"] == 1


def demo_model_params(num_classes: int) -> int:
    """Parameters of the tiny fine-tuning model, built independently of the benchmark."""
    from clora3d.models import PointTransformer

    return sum(p.numel() for p in PointTransformer.from_preset("tiny", cls_dim=num_classes).parameters())


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"pretrain_seed": -1}, "--pretrain-seed"),
        ({"pretrain_threads": 0}, "--pretrain-threads"),
        ({"methods": ["full", "lorra"]}, "--methods"),
    ],
)
def test_demo_rejects_bad_pretraining_condition(tmp_path, kw, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        demo.run(tmp_path / "demo", quick=True, **kw)
    assert not (tmp_path / "demo").exists()  # refused before any stage ran


def test_demo_tool_reports_bad_option_in_one_line(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("demo_tool", REPO / "tools" / "demo.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(tmp_path / "d"), "--pretrain-threads", "0"])
    assert tool.main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pretrain-threads" in err and ">= 1" in err

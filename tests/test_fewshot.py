"""Few-shot grid runner: table (population std), resumability, fold configs, missing folds, and an
end-to-end run of the real trainer on synthetic folds with a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from clora3d.engine.fewshot import format_table, run_fewshot, summarize
from clora3d.errors import ConfigError


def _cfg(root: Path | None = None) -> dict:
    sec = {"NAME": "ModelNetFewShot", "way": 5, "shot": 10, "fold": 0}
    if root is not None:
        sec["root"] = str(root)
    return {"name": "fs", "task": "classification", "dataset": {"train": dict(sec), "test": dict(sec)}}


class FakeTrain:
    """Records calls; accuracy is a known function of (way, shot, fold) read from the config."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, *, ckpt=None, resume=False, run_dir=None):
        tr, te = cfg["dataset"]["train"], cfg["dataset"]["test"]
        assert (tr["way"], tr["shot"], tr["fold"]) == (te["way"], te["shot"], te["fold"])
        self.calls.append((tr["way"], tr["shot"], tr["fold"], resume, ckpt))
        s, f = tr["shot"], tr["fold"]
        best = 90.0 + f + (s == 20)
        return {"run_dir": run_dir, "best": {"acc": best, "epoch": 3}, "last": {"acc": best - 10}, "history": [{}] * 4}


def test_grid_table_population_std_and_skip_on_second_call(tmp_path):
    train = FakeTrain()
    cfg = _cfg()
    res = run_fewshot(
        cfg, tmp_path, ways=[5], shots=[10, 20], folds=[0, 1, 2], ckpt="pre.pth", train_fn=train, log=lambda m: None
    )
    assert cfg["dataset"]["train"]["fold"] == 0  # caller's config not mutated
    assert [c[:3] for c in train.calls] == [(5, 10, 0), (5, 10, 1), (5, 10, 2), (5, 20, 0), (5, 20, 1), (5, 20, 2)]
    assert all(c[3] is False and c[4] == "pre.pth" for c in train.calls)
    s = res["summary"]
    # 5w10s folds: best 90, 91, 92 -> mean 91, population std sqrt(2/3); last = best - 10
    assert s["5way10shot"]["best_mean"] == pytest.approx(91.0)
    assert s["5way10shot"]["best_std"] == pytest.approx(math.sqrt(2 / 3))
    assert s["5way10shot"]["last_mean"] == pytest.approx(81.0)
    assert s["5way20shot"]["best_mean"] == pytest.approx(92.0)
    assert s["5way20shot"]["n"] == 3
    assert "91.0 ± 0.8" in res["table"] and "92.0 ± 0.8" in res["table"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["settings"]["5way10shot"]["best_std"] == pytest.approx(math.sqrt(2 / 3))
    rec = json.loads((tmp_path / "5way20shot" / "fold2.json").read_text())
    assert rec["best_acc"] == 93.0 and rec["last_acc"] == 83.0 and rec["best_epoch"] == 3

    def must_not_train(*a, **k):
        raise AssertionError("a finished fold was trained again")

    res2 = run_fewshot(
        cfg, tmp_path, ways=[5], shots=[10, 20], folds=[0, 1, 2], train_fn=must_not_train, log=lambda m: None
    )
    assert res2["summary"] == s and res2["table"] == res["table"]


def test_interrupted_fold_resumes_and_new_folds_start_fresh(tmp_path):
    train = FakeTrain()
    run_fewshot(_cfg(), tmp_path, ways=[10], shots=[20], folds=[0], train_fn=train, log=lambda m: None)
    # fold 1 was interrupted: its run folder has a last checkpoint but no result JSON
    run1 = tmp_path / "10way20shot" / "fold1"
    run1.mkdir(parents=True)
    (run1 / "ckpt-last.pth").write_bytes(b"x")
    train2 = FakeTrain()
    res = run_fewshot(
        _cfg(), tmp_path, ways=[10], shots=[20], folds=[0, 1, 2], train_fn=train2, ci95=True, log=lambda m: None
    )
    assert [(c[2], c[3]) for c in train2.calls] == [(1, True), (2, False)]
    row = res["summary"]["10way20shot"]
    vals = np.array([91.0, 92.0, 93.0])
    assert row["best_ci95"] == pytest.approx(1.96 * vals.std() / math.sqrt(3))
    assert "ci95" in format_table(res["summary"], ci95=True)


def test_summarize_matches_numpy():
    recs = {(5, 10): [{"fold": i, "best_acc": v, "last_acc": v - 1} for i, v in enumerate([96.0, 100.0, 93.0, 97.0])]}
    s = summarize(recs)["5way10shot"]
    assert s["best_mean"] == pytest.approx(96.5)
    assert s["best_std"] == pytest.approx(np.std([96.0, 100.0, 93.0, 97.0]))
    assert s["folds"] == [0, 1, 2, 3]


def test_config_without_fewshot_dataset_and_corrupt_result(tmp_path):
    bad = {"dataset": {"train": {"NAME": "ModelNet40"}}}
    with pytest.raises(ConfigError, match="ModelNetFewShot"):
        run_fewshot(bad, tmp_path, ways=[5], shots=[10], folds=[0], train_fn=FakeTrain())
    (tmp_path / "5way10shot").mkdir()
    (tmp_path / "5way10shot" / "fold0.json").write_text("{not json")
    with pytest.raises(ValueError, match="fold0.json"):
        run_fewshot(_cfg(), tmp_path, ways=[5], shots=[10], folds=[0], train_fn=FakeTrain(), log=lambda m: None)


def test_missing_fold_files_error_and_generation(tmp_path, monkeypatch):
    root = tmp_path / "folds"
    with pytest.raises(FileNotFoundError, match=r"5way_10shot/0\.pkl"):
        run_fewshot(
            _cfg(root), tmp_path / "out", ways=[5], shots=[10], folds=[0], train_fn=FakeTrain(), log=lambda m: None
        )
    calls = []

    def fake_gen(src, out_root, ways, shots, folds, seed):
        calls.append((src, ways, shots, folds, seed))
        for w in ways:
            for s in shots:
                for f in range(folds):
                    p = Path(out_root) / f"{w}way_{s}shot" / f"{f}.pkl"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(b"generated")

    import clora3d.data as data

    monkeypatch.setattr(data, "generate_fewshot_folds", fake_gen)
    (root / "5way_10shot").mkdir(parents=True)
    (root / "5way_10shot" / "0.pkl").write_bytes(b"released")  # an existing fold is never replaced
    train = FakeTrain()
    run_fewshot(
        _cfg(root),
        tmp_path / "out",
        ways=[5],
        shots=[10],
        folds=[0, 1],
        generate_from="mn40",
        generate_seed=3,
        train_fn=train,
        log=lambda m: None,
    )
    assert calls == [("mn40", (5,), (10,), 2, 3)]
    assert (root / "5way_10shot" / "0.pkl").read_bytes() == b"released"
    assert (root / "5way_10shot" / "1.pkl").read_bytes() == b"generated"
    assert sorted(p.name for p in root.iterdir()) == ["5way_10shot"]  # scratch folder removed
    assert len(train.calls) == 2


# ------------------------------------------------------------------------------------------------
# end to end with the real trainer, a tiny model and synthetic folds
# ------------------------------------------------------------------------------------------------


def _synthetic_folds(root: Path) -> None:
    """5 classes of ellipsoid surfaces with distinct axes, written in the released fold format."""
    from clora3d.data.modelnet import write_fewshot_folds_from_arrays

    rng = np.random.default_rng(0)
    axes = [(1, 1, 1), (1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1), (1, 1, 0.2)]

    def shape(c):
        v = rng.normal(size=(128, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return np.concatenate([v * np.asarray(axes[c]), np.zeros((128, 3))], 1).astype(np.float32)

    def split(n):
        return [shape(c) for c in range(5) for _ in range(n)], np.repeat(np.arange(5), n)

    write_fewshot_folds_from_arrays(split(4), split(2), root, ways=(5,), shots=(2, 4), folds=2, eval_sample=2, seed=0)


def test_end_to_end_with_real_trainer(tmp_path, monkeypatch):
    import yaml
    from test_trainer import _replay_classification, _spy_evaluations

    from clora3d.engine import trainer
    from clora3d.engine.config import load_config

    root = tmp_path / "ModelNetFewshot"
    _synthetic_folds(root)
    ds = {"NAME": "ModelNetFewShot", "root": str(root), "way": 5, "shot": 2, "fold": 0}
    cfg_file = tmp_path / "fs.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5, "drop_path_rate": 0.0},
                "peft": {"NAME": "full"},
                "data": {"npoints": 64, "train_sampling": "fps"},
                "scheduler": {"warmup_epochs": 0},
                "train": {"epochs": 2, "batch_size": 5, "num_workers": 0, "device": "cpu"},
                "dataset": {"train": ds, "test": dict(ds)},
                "log": {"root": str(tmp_path / "exp"), "tensorboard": False, "progress": False},
            }
        )
    )
    cfg = load_config(cfg_file)
    calls = []
    real_train = trainer.train

    def counting_train(*a, **k):
        calls.append(k.get("run_dir"))
        return real_train(*a, **k)

    out = tmp_path / "fewshot"
    seen = _spy_evaluations(monkeypatch)
    res = run_fewshot(cfg, out, ways=[5], shots=[2, 4], folds=[1], train_fn=counting_train, log=lambda m: None)
    assert len(calls) == 2
    # every per-epoch test accuracy is a by-hand count on the model and query batches evaluated
    # (numpy FPS to 64 points, argmax, 10 query shapes = 5 ways x 2)
    assert len(seen) == 4
    replayed = [
        _replay_classification(m, b, npoints=64, point_all=64, vote=0, inputs=fed)[0] for m, b, _, _, fed in seen
    ]
    assert [o["acc"] for *_, o, _ in seen] == pytest.approx(replayed, abs=1e-9)
    assert all(o["count"] == 10 for *_, o, _ in seen)
    for name in ("5way2shot", "5way4shot"):
        row = res["summary"][name]
        assert row["n"] == 1 and row["best_std"] == 0.0
        # the fold's numbers are the trainer's own: best = max over the per-epoch test accuracies
        # (the first of ties), last = the last epoch's, as recorded in the run's result.json
        rec = json.loads((out / name / "fold1.json").read_text())
        result = json.loads((Path(rec["run_dir"]) / "result.json").read_text())
        accs = [h["test"]["acc"] for h in result["history"]]
        assert len(accs) == 2
        assert accs == pytest.approx(replayed[:2] if name == "5way2shot" else replayed[2:], abs=1e-9)
        assert row["best_mean"] == rec["best_acc"] == max(accs)
        assert row["last_mean"] == rec["last_acc"] == accs[-1]
        assert rec["best_epoch"] == accs.index(max(accs))
    assert "5w2s" in res["table"] and "5w4s" in res["table"]
    res2 = run_fewshot(cfg, out, ways=[5], shots=[2, 4], folds=[1], train_fn=counting_train, log=lambda m: None)
    assert len(calls) == 2 and res2["summary"] == res["summary"]
    # the fold's query set was the one of fold 1 (way/shot/fold reached the dataset)
    rec = json.loads((out / "5way4shot" / "fold1.json").read_text())
    saved = yaml.safe_load((Path(rec["run_dir"]) / "config.yaml").read_text())
    assert saved["dataset"]["test"]["fold"] == 1 and saved["dataset"]["train"]["shot"] == 4


def test_fold_trained_but_unrecorded_is_read_from_run_result(tmp_path):
    run = tmp_path / "5way10shot" / "fold0"
    run.mkdir(parents=True)
    (run / "ckpt-last.pth").write_bytes(b"x")
    (run / "result.json").write_text(
        json.dumps({"best": {"acc": 77.0, "epoch": 1}, "last": {"acc": 70.0}, "history": [{}, {}]})
    )
    train = FakeTrain()
    res = run_fewshot(_cfg(), tmp_path, ways=[5], shots=[10], folds=[0], train_fn=train, log=lambda m: None)
    assert train.calls == []
    assert res["folds"][0]["best_acc"] == 77.0 and res["folds"][0]["last_acc"] == 70.0


class SeededFakeTrain(FakeTrain):
    """Accuracy depends on the fold and on the config's seed: best = 90 + fold + 2 * seed."""

    def __call__(self, cfg, *, ckpt=None, resume=False, run_dir=None):
        res = super().__call__(cfg, ckpt=ckpt, resume=resume, run_dir=run_dir)
        self.calls[-1] = self.calls[-1] + (cfg["seed"],)
        best = 90.0 + cfg["dataset"]["train"]["fold"] + 2 * cfg["seed"]
        return {**res, "best": {"acc": best, "epoch": 3}, "last": {"acc": best - 10}}


def test_seeds_mean_std_over_folds_and_over_seeds(tmp_path):
    train = SeededFakeTrain()
    cfg = {**_cfg(), "seed": 0}
    res = run_fewshot(
        cfg, tmp_path, ways=[5], shots=[10], folds=[0, 1, 2], seeds=[0, 1, 3], train_fn=train, log=lambda m: None
    )
    assert [(c[2], c[5]) for c in train.calls] == [(f, k) for f in (0, 1, 2) for k in (0, 1, 3)]
    row = res["summary"]["5way10shot"]
    # hand computation: acc(f, k) = 90 + f + 2k
    #   over folds: fold value = mean over seeds = 90 + f + 8/3 -> mean 91 + 8/3, std sqrt(2/3)
    #   over seeds: seed value = mean over folds = 91 + 2k -> 91, 93, 97: mean 93.667, std of (0,2,6)
    assert row["n"] == 3 and row["n_seeds"] == 3 and row["seeds"] == [0, 1, 3]
    assert row["best_mean"] == pytest.approx(91 + 8 / 3)
    assert row["best_std"] == pytest.approx(math.sqrt(2 / 3))
    assert row["best_seed_mean"] == pytest.approx(np.mean([91.0, 93.0, 97.0]))
    assert row["best_seed_std"] == pytest.approx(np.std([91.0, 93.0, 97.0]))
    assert row["last_seed_std"] == pytest.approx(row["best_seed_std"])
    table = res["table"]
    assert "±std over folds" in table and "±std over 3 seeds" in table
    assert f"{np.mean([91.0, 93.0, 97.0]):.1f} ± {np.std([91.0, 93.0, 97.0]):.1f}" in table
    rec = json.loads((tmp_path / "5way10shot" / "seed3_fold2.json").read_text())
    assert rec["seed"] == 3 and rec["best_acc"] == 98.0
    assert rec["run_dir"] == str(tmp_path / "5way10shot" / "seed3_fold2")  # one run dir per seed
    # resumable per (fold, seed): adding a seed trains only the new runs
    train2 = SeededFakeTrain()
    run_fewshot(
        cfg, tmp_path, ways=[5], shots=[10], folds=[0, 1, 2], seeds=[0, 1, 3, 4], train_fn=train2, log=lambda m: None
    )
    assert [(c[2], c[5]) for c in train2.calls] == [(0, 4), (1, 4), (2, 4)]
    with pytest.raises(ConfigError, match="distinct"):
        run_fewshot(cfg, tmp_path, ways=[5], shots=[10], folds=[0], seeds=[1, 1], train_fn=train2, log=lambda m: None)


def test_one_seed_is_the_reference_table(tmp_path):
    """Without --seeds: one run per fold with the config's seed, the table has no seed rows."""
    res = run_fewshot(
        {**_cfg(), "seed": 5}, tmp_path, ways=[5], shots=[10], folds=[0, 1], train_fn=FakeTrain(), log=lambda m: None
    )
    assert "seeds" not in res["table"] and "over folds" not in res["table"]
    assert res["summary"]["5way10shot"]["n_seeds"] == 1
    assert json.loads((tmp_path / "5way10shot" / "fold1.json").read_text())["seed"] == 5


def test_fewshot_cli_seeds():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_fs_tool", Path(__file__).resolve().parents[1] / "tools" / "fewshot.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.parse_args(["--cfg", "x.yaml", "--seeds", "0-2"]).seeds == [0, 1, 2]
    assert tool.parse_args(["--cfg", "x.yaml"]).seeds is None


def test_fewshot_cli_composes_a_method_without_a_file(monkeypatch, tmp_path, capsys):
    """``clora3d fewshot --peft NAME`` runs the grid on ``compose_config("fewshot", NAME)`` (the same
    config as ``train --task fewshot --peft NAME``), so every PEFT method has a few-shot run without a
    file of its own; --cfg and --peft are exclusive."""
    import clora3d.engine.fewshot as fs
    from clora3d import cli
    from clora3d.engine.config import compose_config

    seen = {}

    def fake(cfg, out, **kw):
        seen["cfg"], seen["out"] = cfg, out
        return {"table": "T", "summary": {}, "folds": []}

    monkeypatch.setattr(fs, "run_fewshot", fake)
    rc = cli.tool_main("fewshot", ["--peft", "pointgst", "--out", str(tmp_path), "--set", "train.epochs=3"])
    assert rc == 0 and seen["out"] == str(tmp_path)
    want = compose_config("fewshot", "pointgst", overrides=["train.epochs=3"])
    assert seen["cfg"] == want and seen["cfg"]["peft"]["NAME"] == "pointgst"
    assert seen["cfg"]["dataset"]["train"]["NAME"] == "ModelNetFewShot"
    with pytest.raises(SystemExit):
        cli.tool_main("fewshot", ["--peft", "pointgst", "--cfg", "cfgs/fewshot/clora.yaml"])

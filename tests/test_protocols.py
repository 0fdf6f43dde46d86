"""Protocol defaults that reproduce the Point-MAE-family references (issue 13), with their switches.

Each test would fail under the pre-issue-13 default (frozen BN: see test_trainer.py /
test_peft.py; few-shot folders: see test_data_loaders.py).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clora3d.engine.checkpoint import load_checkpoint
from clora3d.engine.config import load_config
from clora3d.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CFGS = REPO / "cfgs"

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(tmp: Path, name: str, body: str) -> Path:
    p = tmp / name
    p.write_text(body + "log: {progress: false, tensorboard: false}\n")
    return p


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_proto_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------
# 2. ScanObjectNN: both augmentation protocols as configs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["objbg", "objonly", "hardest"])
@pytest.mark.parametrize("method", ["full", "linear", "lora", "clora", "adapter", "prompt", "bitfit"])
def test_scanobjectnn_protocol_configs(variant, method):
    from clora3d.engine.config import compose_config  # the two-line leaves became compositions (issue 15)

    st = compose_config(f"scan_{variant}", method)
    rot = compose_config(f"scan_{variant}", method, protocol="rotate")
    assert st["data"]["train_transforms"] == [{"NAME": "ScaleAndTranslate"}]
    assert rot["data"]["train_transforms"] == [{"NAME": "RotateY", "angle_low": 0.0, "angle_high": 2 * math.pi}]
    assert rot["name"] == f"scan_{variant}_rotate_{method}" != st["name"]
    # everything else is the same recipe
    for cfg in (st, rot):
        cfg["data"].pop("train_transforms"), cfg.pop("name")
    assert st == rot


def test_rotation_protocol_is_reference_pointcloud_rotate():
    """Reference PointcloudRotate: per cloud, an angle U(0, 2 pi) about the Y axis, applied to row
    vectors as p @ [[c,0,s],[0,1,0],[-s,0,c]]. Recover each cloud's angle and check it."""
    from clora3d.data import build_transforms
    from clora3d.engine.config import compose_config

    cfg = compose_config("scan_hardest", "clora", protocol="rotate")
    t = build_transforms(cfg["data"]["train_transforms"])
    B = 4000
    p = torch.tensor([[1.0, 0.5, 0.0], [0.0, -0.25, 1.0]]).expand(B, 2, 3).contiguous()
    out = t(p, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[..., 1], p[..., 1])  # the up axis is untouched
    # first point (1, y, 0) -> (c, y, s): angle = atan2(s, c), in [0, 2 pi)
    ang = torch.remainder(torch.atan2(out[:, 0, 2], out[:, 0, 0]).double(), 2 * math.pi)
    c, s = torch.cos(ang), torch.sin(ang)
    # second point (0, y, 1) -> (-s, y, c) with the same angle: one rigid rotation per cloud
    torch.testing.assert_close(out[:, 1, 0].double(), -s, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 1, 2].double(), c, atol=1e-5, rtol=0)
    # U(0, 2 pi): the histogram over 8 bins is flat within sampling noise (expected 500 per bin)
    hist = np.histogram(ang.numpy(), bins=8, range=(0, 2 * math.pi))[0]
    assert hist.min() > 400 and hist.max() < 600, hist


# ------------------------------------------------------------------------------------------------
# 5. Voting: the reference's best of many vote passes, from the command line
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mn_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path_factory.mktemp("syn") / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=8, n_test=6, n_points=300, seed=0)
    return root


def _cls_cfg(tmp: Path, root: Path) -> Path:
    return _write(
        tmp,
        "cls.yaml",
        f"""\
task: classification
seed: 1
model: {{NAME: PointTransformer, preset: tiny, cls_dim: 4, drop_path_rate: 0.0}}
peft: {{NAME: lora}}
dataset:
  train: {{NAME: ModelNet40, root: {root}, n_points: 300}}
  test: {{NAME: ModelNet40, root: {root}, n_points: 300}}
data: {{npoints: 128, point_all: 160, train_transforms: [{{NAME: ScaleAndTranslate}}]}}
scheduler: {{warmup_epochs: 0, epochs: 1}}
train: {{epochs: 1, batch_size: 8, num_workers: 0}}
""",
    )


def test_vote_passes_cli_sets_config_and_reports_labelled(tmp_path, mn_root, capsys, monkeypatch):
    import json

    from test_trainer import _replay_classification, _spy_evaluations

    cfg_path = _cls_cfg(tmp_path, mn_root)
    tool = _tool("train")
    seen = _spy_evaluations(monkeypatch)
    assert tool.main(["--cfg", str(cfg_path), "--run-dir", str(tmp_path / "r3"), "--vote-passes", "3"]) == 0
    monkeypatch.undo()
    out = capsys.readouterr().out  # the JSON summary (the run's log lines go to the logger: stderr)
    printed = json.loads(out[out.index("{\n") :])
    res = json.loads((tmp_path / "r3" / "result.json").read_text())
    # the three figures are the first, the best and the mean of three by-hand replayed vote passes
    # (10 views each, one generator running on) of the model evaluated: last epoch, then best epoch
    voting = [s for s in seen if s[2]]
    assert len(voting) == 2
    for r, (model, batches, _, _, fed) in zip((res["last"], res["best"]), voting):
        _, accs = _replay_classification(model, batches, npoints=128, point_all=160, vote=10, inputs=fed, passes=3)
        assert r["acc_vote@10"] == pytest.approx(accs[0], abs=1e-9)
        assert r["acc_vote@10_max_of_3"] == pytest.approx(max(accs), abs=1e-9)
        assert r["acc_vote@10_mean_of_3"] == pytest.approx(sum(accs) / 3, abs=1e-9)
    assert {k: v for k, v in printed["last"].items() if k.startswith("acc_vote")} == {
        k: v for k, v in res["last"].items() if k.startswith("acc_vote")
    }
    assert "first pass" in res["protocol"]["vote"] and "max_of_3" in res["protocol"]["vote"]
    assert "acc" in res["last"]  # the single plain figure stays next to the vote figures
    # tools/evaluate.py on the saved best weights reproduces the trainer's figures exactly
    out_json = tmp_path / "eval.json"
    assert (
        _tool("evaluate").main(
            ["--ckpt", str(tmp_path / "r3" / "ckpt-best.pth"), "--vote-passes", "3", "--json", str(out_json)]
        )
        == 0
    )
    printed_eval = capsys.readouterr().out
    assert "best of 3 passes (reference protocol uses 299" in printed_eval
    ev = json.loads(out_json.read_text())
    for k in ("acc", "acc_vote@10", "acc_vote@10_max_of_3", "acc_vote@10_mean_of_3"):
        assert ev[k] == pytest.approx(res["best"][k], abs=1e-9), k
    # one pass: only the first-pass figure, the same number as the first of three passes
    assert tool.main(["--cfg", str(cfg_path), "--run-dir", str(tmp_path / "r1"), "--set", "eval.vote=10"]) == 0
    capsys.readouterr()
    one = json.loads((tmp_path / "r1" / "result.json").read_text())
    assert one["last"]["acc_vote@10"] == res["last"]["acc_vote@10"]
    assert not any("max_of" in k for k in one["last"])


def test_vote_passes_validation(tmp_path, mn_root):
    cfg_path = _cls_cfg(tmp_path, mn_root)
    assert load_config(cfg_path)["eval"]["vote_passes"] == 1
    with pytest.raises(ConfigError, match="eval.vote_passes=5.*needs eval.vote=10"):
        load_config(cfg_path, ["eval.vote_passes=5"])
    with pytest.raises(SystemExit):
        _tool("train").main(["--cfg", str(cfg_path), "--vote-passes", "0"])
    assert _tool("evaluate").main(["--ckpt", str(tmp_path / "missing.pth")]) == 2


# ------------------------------------------------------------------------------------------------
# 6. ShapeNetPart: double optimizer step by default, Cls. mIoU both ways
# ------------------------------------------------------------------------------------------------
def _partseg_cfg(tmp: Path, root: Path, epochs: int) -> Path:
    return _write(
        tmp,
        "seg.yaml",
        f"""\
task: partseg
model: {{NAME: PartSegModel, preset: tiny, drop_path_rate: 0.0}}
peft: {{NAME: full}}
dataset:
  train: {{NAME: ShapeNetPart, root: {root}, split: train, n_points: 128}}
  test: {{NAME: ShapeNetPart, root: {root}, n_points: 128}}
data: {{npoints: 128, train_sampling: none}}
scheduler: {{warmup_epochs: 0}}
train: {{epochs: {epochs}, batch_size: 8, num_workers: 0}}
""",
    )


def test_partseg_double_step_default_and_cls_miou_two_ways(tmp_path):
    from clora3d.data import synthetic
    from clora3d.engine.trainer import train

    root = synthetic.write_shapenetpart(tmp_path / "snp", n_train=1, n_val=0, n_test=1, n_points=256)
    path = _partseg_cfg(tmp_path, root, epochs=3)
    cfg = load_config(path)
    assert cfg["train"]["partseg_double_step"] is True  # the reference's default
    res = train(cfg, run_dir=tmp_path / "ref")
    n_batches = 16 // 8  # 16 synthetic train shapes (one per category), drop_last
    # AdamW counts its updates: two per batch with the reference's double step, one without
    state = load_checkpoint(tmp_path / "ref" / "ckpt-last.pth")["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {2 * 3 * n_batches}
    assert "two optimizer steps" in res["protocol"]["partseg_double_step"]
    clean = train(load_config(path, ["train.partseg_double_step=false"]), run_dir=tmp_path / "clean")
    state = load_checkpoint(tmp_path / "clean" / "ckpt-last.pth")["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {3 * n_batches}
    assert "one optimizer step" in clean["protocol"]["partseg_double_step"]
    # Cls. mIoU: at the best-Inst.-mIoU epoch (clean) and the reference's running max over epochs
    for r in (res, clean):
        per_epoch = [(h["epoch"], h["test"]["inst_miou"], h["test"]["cls_miou"]) for h in r["history"]]
        best_inst = max(v for _, v, _ in per_epoch)
        at_best = [c for e, v, c in per_epoch if v == best_inst][-1]  # ">=" keeps the latest tie
        assert r["best"]["cls_miou"] == at_best
        assert r["best"]["cls_miou_max_over_epochs"] == max(c for _, _, c in per_epoch)
        assert r["best"]["cls_miou_max_over_epochs"] >= r["best"]["cls_miou"]
        assert r["best"]["cls_miou_max_epoch"] in [
            e for e, _, c in per_epoch if c == r["best"]["cls_miou_max_over_epochs"]
        ]


# ------------------------------------------------------------------------------------------------
# 7. Pre-training: no gradient clipping, no model selection, snapshots as the reference runner
# ------------------------------------------------------------------------------------------------
def test_pretrain_defaults_match_reference_runner(tmp_path):
    from clora3d.engine.trainer import snapshot_due

    for path in (CFGS / "pretrain" / "pointmae.yaml", CFGS / "cpu" / "pretrain_pointmae.yaml"):
        t = load_config(path)["train"]
        assert t["grad_clip"] is None and t["pretrain_select"] == "last", path
    body = """\
model: {NAME: PointMAE, preset: tiny}
dataset: {train: {NAME: ShapeNet55, root: x}}
"""
    pre = load_config(_write(tmp_path, "p.yaml", "task: pretrain\n" + body))["train"]
    assert pre["grad_clip"] is None and pre["snapshot_every"] == 25 and pre["snapshot_from"] == 250
    # reference runner: `epoch % 25 == 0 and epoch >= 250` over range(0, 301)
    assert [e for e in range(301) if snapshot_due(e, 25, 250)] == [250, 275, 300]
    # an explicit value wins; fine-tuning keeps the reference's clip at 10 and no snapshots
    assert (
        load_config(_write(tmp_path, "p2.yaml", "task: pretrain\ntrain: {grad_clip: 10}\n" + body))["train"][
            "grad_clip"
        ]
        == 10
    )
    ft = load_config(CFGS / "modelnet40" / "clora.yaml")["train"]
    assert ft["grad_clip"] == 10 and ft["snapshot_every"] is None
    with pytest.raises(ConfigError, match="pretrain_select.*task: pretrain only"):
        load_config(CFGS / "modelnet40" / "clora.yaml", ["train.pretrain_select=test_loss"])


def test_pretrain_run_reference_default_and_switch(tmp_path, monkeypatch):
    from clora3d.data import synthetic
    from clora3d.engine import trainer

    root = synthetic.write_shapenet55(tmp_path / "sn55", num_classes=2, n_train=6, n_test=2, n_points=300)
    path = _write(
        tmp_path,
        "pre.yaml",
        f"""\
task: pretrain
model: {{NAME: PointMAE, preset: tiny, drop_path_rate: 0.0}}
dataset:
  train: {{NAME: ShapeNet55, root: {root}, n_points: 256}}
  test: {{NAME: ShapeNet55, root: {root}, n_points: 256}}
data: {{npoints: 256, train_sampling: none}}
optimizer: {{lr: 1.0e-3}}
train: {{epochs: 3, batch_size: 6, num_workers: 0, snapshot_every: 1, snapshot_from: 1}}
""",
    )
    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(*a, **k):
        calls.append(k.get("max_norm", a[1] if len(a) > 1 else None))
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    res = trainer.train(load_config(path), run_dir=tmp_path / "ref")
    run = tmp_path / "ref"
    assert calls == []  # the reference pre-training runner never clips
    assert not (run / "ckpt-best.pth").exists()  # and selects nothing: the model is the last epoch
    assert res["selected_on"] == "last" and res["best"] == {"epoch": None}
    assert "last epoch" in res["protocol"]["model_selection"]
    assert sorted(p.name for p in run.glob("ckpt-epoch-*.pth")) == ["ckpt-epoch-001.pth", "ckpt-epoch-002.pth"]
    snap = load_checkpoint(run / "ckpt-epoch-002.pth")
    last = load_checkpoint(run / "ckpt-last.pth")
    assert snap["epoch"] == last["epoch"] == 2
    assert all(torch.equal(snap["model"][k], last["model"][k]) for k in last["model"])
    # the test-set Chamfer loss is still logged every epoch
    assert all(math.isfinite(h["test"]["loss"]) for h in res["history"])

    # the old clora3d behaviour as a switch: clip at 10, ckpt-best at the lowest test loss
    old = trainer.train(
        load_config(path, ["train.grad_clip=10", "train.pretrain_select=test_loss"]), run_dir=tmp_path / "old"
    )
    assert calls == [10] * (3 * 2)  # 2 classes x 6 train shapes = 2 batches of 6 per epoch
    assert (tmp_path / "old" / "ckpt-best.pth").is_file() and old["selected_on"] == "test"
    losses = {h["epoch"]: h["test"]["loss"] for h in old["history"]}
    assert old["best"]["epoch"] == min(losses, key=lambda e: (losses[e], e))

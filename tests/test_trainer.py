"""Trainer, optimizer groups, LR schedule, atomic checkpoints and exact resume (CPU, tiny model)."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from clora3d.engine.checkpoint import atomic_save, get_rng_state, load_checkpoint, set_rng_state
from clora3d.engine.config import load_config
from clora3d.engine.optim import CosineWarmupLR, build_optimizer, param_groups
from clora3d.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]

TINY = """\
task: classification
seed: 3
model: {{NAME: PointTransformer, preset: tiny, cls_dim: 4, drop_path_rate: 0.0}}
peft: {{NAME: {peft}}}
dataset:
  train: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
  test: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
data: {{npoints: 128, point_all: 160, train_transforms: [{{NAME: ScaleAndTranslate}}]}}
optimizer: {{lr: 2.0e-3}}
scheduler: {{warmup_epochs: 1, epochs: {epochs}}}
train: {{epochs: {epochs}, batch_size: 8, num_workers: 0}}
log: {{progress: false, tensorboard: {tb}}}
"""


@pytest.fixture(autouse=True)
def one_thread():
    """The CI box is shared: one intra-op thread avoids OpenMP oversubscription (40x faster here)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def mn_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path_factory.mktemp("syn") / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=16, n_test=8, n_points=1100, seed=0)
    return root


def tiny_cfg(
    tmp: Path, root: Path, *, peft: str = "full", epochs: int = 3, tb: bool = False, overrides: tuple[str, ...] = ()
) -> dict:
    p = tmp / "tiny.yaml"
    p.write_text(TINY.format(root=root, peft=peft, epochs=epochs, tb=str(tb).lower()))
    return load_config(p, [f"log.root={tmp / 'exp'}", *overrides])


# ----------------------------------------------------------------------------------------------
# optimizer groups and schedule
# ----------------------------------------------------------------------------------------------
class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, 4))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.lora_A = nn.Parameter(torch.zeros(2, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_follow_reference_rule():
    m = _Toy()
    named = dict(m.named_parameters())
    groups = {g["weight_decay"]: set(g["names"]) for g in param_groups(named, 0.05)}
    # reference add_weight_decay: 1-D, *.bias and names containing "token" are not decayed;
    # cls_pos (3-D, no "token") and 2-D LoRA matrices are decayed; frozen params are left out.
    assert groups[0.0] == {"cls_token", "mask_token", "fc.bias", "norm.weight", "norm.bias"}
    assert groups[0.05] == {"cls_pos", "fc.weight", "lora_A"}
    groups = {g["weight_decay"]: set(g["names"]) for g in param_groups(named, 0.05, no_decay_cls_pos=True)}
    assert "cls_pos" in groups[0.0] and "cls_pos" not in groups[0.05]
    opt = build_optimizer(
        named,
        {
            "NAME": "AdamW",
            "lr": 1e-3,
            "weight_decay": 0.05,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "no_decay_cls_pos": False,
        },
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in opt.param_groups) == 8
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups({"w": nn.Parameter(torch.zeros(2, 2), requires_grad=False)}, 0.05)


def _timm045_lr(t: int, base: float, t_initial: int, warmup_t: int, lr_min: float, warm_init: float) -> float:
    """timm 0.4.5 CosineLRScheduler._get_lr for one group (cycle_limit 1, t_mul 1, decay 0.1)."""
    if t < warmup_t:
        return warm_init + t * (base - warm_init) / warmup_t
    i = t // t_initial
    if i >= 1:  # cycle_limit 1: past the first cycle the lr stays at lr_min
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * (t % t_initial) / t_initial))


def test_cosine_schedule_matches_reference_stepping():
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=5e-4)
    sched = CosineWarmupLR(opt, 300, lr_min=1e-6, warmup_t=10, warmup_lr_init=1e-6)
    used = []
    for epoch in range(301):  # the reference loop: range(0, max_epoch + 1)
        used.append(opt.param_groups[0]["lr"])
        sched.step(epoch)  # at the end of the epoch, with the index just finished
    assert used[0] == pytest.approx(1e-6) and used[1] == pytest.approx(1e-6)
    assert used[2] == pytest.approx(1e-6 + (5e-4 - 1e-6) / 10)
    assert used[10] == pytest.approx(1e-6 + 9 * (5e-4 - 1e-6) / 10)
    # epoch 11 runs at the cosine evaluated at t=10 (not shifted by the warm-up)
    assert used[11] == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * 10 / 300)))
    for e in range(1, 301):
        assert used[e] == pytest.approx(_timm045_lr(e - 1, 5e-4, 300, 10, 1e-6, 1e-6), rel=1e-12)
    assert max(used) < 5e-4  # the base lr itself is never reached exactly with t_initial 300
    sched.step(300)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)  # past the cycle: lr_min
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=5e-4)
    s2 = CosineWarmupLR(opt2, 300, lr_min=1e-6, warmup_t=10, warmup_lr_init=1e-6)
    s2.load_state_dict(state)
    assert s2.lr_at(57) == sched.lr_at(57)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def test_atomic_save_survives_an_exception_midway(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"epoch": 1, "w": torch.arange(3)}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"\x80\x02 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # temp file cleaned up


def test_killed_process_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    path = tmp_path / "ckpt-last.pth"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from clora3d.engine.checkpoint import atomic_save
        atomic_save({{"epoch": 1, "w": torch.ones(1000)}}, {str(path)!r})
        real = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)   # killed in the middle of the write
        torch.save = dying_save
        atomic_save({{"epoch": 2, "w": torch.zeros(1000)}}, {str(path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    ck = load_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.ones(1000))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"obj": _Toy}, tmp_path / "pickle.pth")  # a class: refused by weights_only
    with pytest.raises(CheckpointError, match="pickle.pth"):
        load_checkpoint(tmp_path / "pickle.pth")


def test_rng_state_roundtrip(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    atomic_save({"rng": get_rng_state()}, tmp_path / "r.pth")
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def test_short_cpu_run_learns_and_writes_run_dir(tmp_path, mn_root):
    import warnings

    from clora3d.engine.trainer import train
    from clora3d.optional import try_import

    have_tb = try_import("torch.utils.tensorboard")[0] is not None
    cfg = tiny_cfg(tmp_path, mn_root, epochs=10, tb=True, overrides=("scheduler.warmup_epochs=0",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(cfg, run_dir=tmp_path / "run")
    tb_warnings = [w for w in caught if "log.tensorboard=true but tensorboard" in str(w.message)]
    assert len(tb_warnings) == (0 if have_tb else 1), [str(w.message) for w in caught]
    run = Path(res["run_dir"])
    assert res["selected_on"] == "test"
    assert res["last"]["epoch"] == 9 and res["last"]["count"] == 32
    # 4 balanced classes: chance is 25 %
    assert res["best"]["acc"] >= 75.0, res["history"]
    assert res["last"]["acc"] >= 60.0, res["history"]
    assert res["best"]["acc"] == max(h["test"]["acc"] for h in res["history"])
    assert res["best"]["epoch"] == next(h["epoch"] for h in res["history"] if h["test"]["acc"] == res["best"]["acc"])
    assert len(res["history"]) == 10
    assert res["history"][-1]["train"]["loss"] < res["history"][0]["train"]["loss"]
    for f in (
        "config.yaml",
        "env.json",
        "log.txt",
        "metrics.csv",
        "metrics.jsonl",
        "result.json",
        "ckpt-last.pth",
        "ckpt-best.pth",
    ):
        assert (run / f).is_file(), f
    if have_tb:
        assert any((run / "tb").iterdir())
    else:  # tensorboard unavailable: training went on, said so in the log, wrote no tb/
        assert not (run / "tb").exists()
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and "commit" in env["git"]
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg  # the resolved config, complete
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(10)) and "test.acc" in rows[0]
    log = (run / "log.txt").read_text()
    assert "[Training] EPOCH: 9" in log and "[Validation] EPOCH: 9  acc = " in log
    best = load_checkpoint(run / "ckpt-best.pth")
    assert best["epoch"] == res["best"]["epoch"] and best["selected_on"] == "test"
    # the run dir is not silently overwritten
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="log.tensorboard=true")  # checked above
        with pytest.raises(ConfigError, match="already holds a run"):
            train(cfg, run_dir=run)
        with pytest.raises(CheckpointError, match="no ckpt-last.pth"):
            train(cfg, run_dir=tmp_path / "elsewhere", resume=True)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, mn_root, monkeypatch):
    from clora3d.engine import trainer

    cfg = tiny_cfg(tmp_path, mn_root, peft="lora", epochs=4)
    full = trainer.train(cfg, run_dir=tmp_path / "a")

    real = trainer._Trainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the run dies after epoch 1 was checkpointed
        return real(self, epoch)

    monkeypatch.setattr(trainer._Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, run_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "ckpt-last.pth")["epoch"] == 1
    monkeypatch.undo()
    torch.manual_seed(1234)  # the resumed process starts from a different global RNG state
    resumed = trainer.train(cfg, run_dir=tmp_path / "b", resume=True)

    a = load_checkpoint(tmp_path / "a" / "ckpt-last.pth")
    b = load_checkpoint(tmp_path / "b" / "ckpt-last.pth")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train"]["loss"] for h in full["history"]] == [h["train"]["loss"] for h in resumed["history"]]
    assert full["best"] == resumed["best"] and full["last"] == resumed["last"]


def _spy_evaluations(monkeypatch) -> list:
    """Record (frozen copy of the model, the batches, vote, result, every input the model saw) for
    each evaluation of the trainer."""
    import copy

    from clora3d.engine import trainer as tr

    seen = []
    real = tr._Trainer._evaluate

    def spy(self, loader, vote=0, vote_passes=1):
        if loader is None:
            return real(self, loader, vote=vote, vote_passes=vote_passes)
        batches = list(loader)  # the datasets draw random subsets: keep the batches evaluated
        frozen, inputs = copy.deepcopy(self.model).eval(), []
        hook = self.model.register_forward_hook(lambda m, args, o: inputs.append(args[0].detach().clone()))
        try:
            out = real(self, batches, vote=vote, vote_passes=vote_passes)
        finally:
            hook.remove()
        seen.append((frozen, batches, vote, out, inputs))
        return out

    monkeypatch.setattr(tr._Trainer, "_evaluate", spy)
    return seen


from np_refs import np_fps as _np_fps  # noqa: E402


@torch.no_grad()
def _replay_classification(
    model, loader, *, npoints: int, point_all: int, vote: int, inputs: list, passes: int = 1
) -> tuple[float, list[float]]:
    """Plain and vote@N accuracy replayed by hand: numpy FPS to npoints (plain) and to the point_all
    pool; per batch and pass N views, each a fresh randperm subset of the pool shared by the batch,
    then the default ScaleAndTranslate, all from one CPU generator seeded 0; the class of the summed
    logits. Returns (plain, [vote accuracy of each pass]). Every replayed model input must equal the
    one the evaluation fed the model, in order."""
    from clora3d.data.transforms import ScaleAndTranslate

    g = torch.Generator().manual_seed(0)
    tf = ScaleAndTranslate()
    plain = total = 0
    voted = [0] * passes
    fed = iter(inputs)
    for batch in loader:
        x, lab = batch["points"].float().numpy(), batch["label"].view(-1)
        ins = torch.stack([torch.from_numpy(c[_np_fps(c, npoints)]) for c in x])
        pool = torch.stack([torch.from_numpy(c[_np_fps(c, point_all)]) for c in x])
        torch.testing.assert_close(next(fed), ins, rtol=0, atol=0)
        plain += int((model(ins).argmax(-1) == lab).sum())
        for r in range(passes if vote else 0):
            acc = 0
            for _ in range(vote):
                sub = torch.randperm(point_all, generator=g)[:npoints]
                view = tf(pool[:, sub], generator=g)
                torch.testing.assert_close(next(fed), view, rtol=0, atol=0)
                acc = acc + model(view)
            voted[r] += int(((acc / vote).argmax(-1) == lab).sum())
        total += int(lab.numel())
    assert next(fed, None) is None  # no extra forward passes
    return 100.0 * plain / total, [100.0 * v / total for v in voted]


def test_select_on_val_holdout_reports_test_for_last_and_best(tmp_path, mn_root, monkeypatch):
    from clora3d.engine.trainer import train

    cfg = tiny_cfg(
        tmp_path,
        mn_root,
        peft="linear",
        epochs=2,
        overrides=("train.select_on_test=false", "dataset.val={from_train: 0.25}", "eval.vote=10"),
    )
    seen = _spy_evaluations(monkeypatch)
    res = train(cfg, run_dir=tmp_path / "run")
    assert res["selected_on"] == "val"
    assert res["history"][0]["val"]["count"] == 16 and "test" not in res["history"][0]
    assert res["last"]["test"]["count"] == 32 and res["best"]["test"]["count"] == 32
    # voting is reported under its own label, next to (never instead of) the plain accuracy, and
    # both equal a by-hand replay of the protocol (npoints 128 from a 160-point FPS pool, 10 views)
    # on the very model that was evaluated: the last epoch's weights, then the best epoch's
    voting = [(m, ld, out, fed) for m, ld, v, out, fed in seen if v]
    assert [s[2] for s in seen[-4:]] == [0, 10, 0, 10] and len(voting) == 2
    for r, (model, loader, out, fed) in zip((res["last"], res["best"]), voting):
        plain, vote10 = _replay_classification(model, loader, npoints=128, point_all=160, vote=10, inputs=fed)
        assert r["acc_vote@10"] == out["acc_vote@10"] == pytest.approx(vote10[0], abs=1e-9)
        assert r["test"]["acc"] == pytest.approx(plain, abs=1e-9) and "acc" in r


# ShapeNetPart's 16 categories and their 50 part ids (the dataset's published layout)
_SNP_PARTS = [
    [0, 1, 2, 3],
    [4, 5],
    [6, 7],
    [8, 9, 10, 11],
    [12, 13, 14, 15],
    [16, 17, 18],
    [19, 20, 21],
    [22, 23],
    [24, 25, 26, 27],
    [28, 29],
    [30, 31, 32, 33, 34, 35],
    [36, 37],
    [38, 39, 40],
    [41, 42, 43],
    [44, 45, 46],
    [47, 48, 49],
]


@torch.no_grad()
def _brute_inst_miou(model, loader) -> tuple[float, int]:
    """Instance mIoU by hand: per point the best logit among the shape's category parts (ties to the
    lower id), per part IoU (a part absent from both prediction and truth counts 1), mean per shape,
    mean over shapes."""
    shape_ious = []
    for batch in loader:
        pts, cls, seg = batch["points"].float(), batch["cls"].view(-1), batch["seg"]
        logits = model(pts, torch.nn.functional.one_hot(cls.long(), 16).float())
        for s in range(pts.shape[0]):
            parts = _SNP_PARTS[int(cls[s])]
            ious = []
            pred = [max(parts, key=lambda q: (float(logits[s, i, q]), -q)) for i in range(pts.shape[1])]
            truth = [int(v) for v in seg[s]]
            for q in parts:
                inter = sum(1 for a, b in zip(pred, truth) if a == q and b == q)
                union = sum(1 for a, b in zip(pred, truth) if a == q or b == q)
                ious.append(1.0 if union == 0 else inter / union)
            shape_ious.append(sum(ious) / len(ious))
    return 100.0 * sum(shape_ious) / len(shape_ious), len(shape_ious)


@pytest.mark.parametrize("task", ["partseg", "pretrain"])
def test_other_tasks_run(tmp_path, task, monkeypatch):
    from clora3d.data import synthetic
    from clora3d.engine.trainer import train

    if task == "partseg":
        root = synthetic.write_shapenetpart(tmp_path / "snp", n_train=1, n_val=0, n_test=1, n_points=256)
        body = f"""\
task: partseg
model: {{NAME: PartSegModel, preset: tiny, drop_path_rate: 0.0}}
peft: {{NAME: full}}
dataset:
  train: {{NAME: ShapeNetPart, root: {root}, split: train, n_points: 128}}
  test: {{NAME: ShapeNetPart, root: {root}, n_points: 128}}
data: {{npoints: 128, train_sampling: none}}
train: {{epochs: 2, batch_size: 8, num_workers: 0}}
"""
    else:
        root = synthetic.write_shapenet55(tmp_path / "sn55", num_classes=3, n_train=6, n_test=2, n_points=300)
        body = f"""\
task: pretrain
model: {{NAME: PointMAE, preset: tiny, drop_path_rate: 0.0}}
dataset:
  train: {{NAME: ShapeNet55, root: {root}, n_points: 256}}
  test: {{NAME: ShapeNet55, root: {root}, n_points: 256}}
data: {{npoints: 256, train_sampling: none}}
optimizer: {{lr: 1.0e-3}}
train: {{epochs: 2, batch_size: 6, num_workers: 0}}
"""
    (tmp_path / "c.yaml").write_text(body + "log: {progress: false, tensorboard: false}\n")
    seen = _spy_evaluations(monkeypatch)
    res = train(load_config(tmp_path / "c.yaml"), run_dir=tmp_path / "run")
    if task == "partseg":
        # the last epoch's Inst. mIoU is the by-hand one of the model as it was evaluated
        model, loader, _, out, _ = seen[-1]
        miou, n = _brute_inst_miou(model, loader)
        assert n == res["last"]["num_shapes"] == 16
        assert res["last"]["inst_miou"] == out["inst_miou"] == pytest.approx(miou, abs=1e-9)
        assert "per_category" in res["last"]
    else:
        # reference pre-training: no model selection, the last epoch is the model
        assert res["selected_on"] == "last" and math.isfinite(res["last"]["loss"])
    assert (tmp_path / "run" / "ckpt-last.pth").is_file()


def test_train_batch_pipeline_reference_semantics():
    """FPS to point_all, then ONE random subset of npoints shared by the batch (reference §1.4)."""
    from clora3d import ops
    from clora3d.engine.trainer import TrainBatchPipeline

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 500, 3, generator=g)
    pipe = TrainBatchPipeline("fps_subset", npoints=64, point_all=100, transform=None)
    out = pipe(pts, subset_gen=torch.Generator().manual_seed(1))
    assert out.shape == (3, 64, 3)
    pool = ops.gather_points(pts, ops.furthest_point_sample(pts, 100))
    # every output point is a point of its FPS pool, at the same pool positions in every sample
    pos = [[int(torch.nonzero((pool[b] == p).all(-1))[0]) for p in out[b]] for b in range(3)]
    assert pos[0] == pos[1] == pos[2] and len(set(pos[0])) == 64
    fps = TrainBatchPipeline("fps", npoints=64, point_all=None, transform=None)(pts)
    assert torch.equal(fps, ops.gather_points(pts, ops.furthest_point_sample(pts, 64)))
    assert torch.equal(TrainBatchPipeline("none", 64, None, None)(pts), pts)
    with pytest.raises(ConfigError, match="npoints=600"):
        TrainBatchPipeline("fps_subset", 600, None, None)(pts)


@pytest.mark.parametrize("policy", ["eval", "train", None])
def test_frozen_bn_policy(tmp_path, mn_root, policy):
    """frozen_bn: eval keeps a frozen backbone's BatchNorm statistics; train lets them drift, and
    that is the default (None): the references leave the frozen patch encoder's BN in train mode."""
    from clora3d.engine.trainer import seed_everything, train
    from clora3d.models import build_model

    over = (f"model.frozen_bn={policy}",) if policy else ()
    cfg = tiny_cfg(tmp_path, mn_root, peft="lora", epochs=1, overrides=over)
    train(cfg, run_dir=tmp_path / "run")
    seed_everything(cfg["seed"])  # the trainer initialises the model from the same seed
    init = build_model({k: v for k, v in cfg["model"].items() if k != "frozen_bn"}).state_dict()
    last = load_checkpoint(tmp_path / "run" / "ckpt-last.pth")["model"]
    keys = [k for k in init if k.startswith("encoder.") and k.endswith("running_mean")]
    assert keys
    same = [torch.equal(init[k], last[k]) for k in keys]
    assert all(same) if policy == "eval" else not any(same)
    # the trainable head's BatchNorm statistics are updated either way
    assert not torch.equal(init["cls_head_finetune.1.running_mean"], last["cls_head_finetune.1.running_mean"])

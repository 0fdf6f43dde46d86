"""Training switches that change the maths, each checked against an independent computation:
the method's regulariser (SADE) is in the loss that is differentiated, grad_clip bounds the gradient
norm at the optimizer step (and only rescales), label_smoothing changes the cross-entropy by the
textbook formula, and the best epoch uses a strict ">" (the first of tied epochs) for
classification and ">=" (the last) for part segmentation. CPU, tiny model, a few seconds each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from clora3d.engine.config import load_config

TINY = """\
task: classification
seed: 5
model: {{NAME: PointTransformer, preset: tiny, cls_dim: 4, drop_path_rate: 0.0}}
peft: {peft}
dataset:
  train: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
  test: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
data: {{npoints: 128, point_all: 160, train_transforms: [{{NAME: ScaleAndTranslate}}]}}
optimizer: {{lr: 2.0e-3}}
scheduler: {{warmup_epochs: 0, epochs: {epochs}}}
train: {{epochs: {epochs}, batch_size: 8, num_workers: 0}}
log: {{progress: false, tensorboard: false}}
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def mn_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path_factory.mktemp("syn") / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=4, n_test=2, n_points=1100, seed=0)  # 16 train shapes
    return root


def _cfg(
    tmp: Path, root: Path, name: str, *, peft: str = "{NAME: full}", epochs: int = 1, overrides: tuple[str, ...] = ()
) -> dict:
    p = tmp / f"{name}.yaml"
    p.write_text(TINY.format(root=root, peft=peft, epochs=epochs))
    return load_config(p, [f"log.root={tmp / 'exp'}", *overrides])


class _Steps:
    """Records, before every optimizer step, each trainable parameter's value and gradient (in the
    optimizer's order), and the trainer instance (for parameter names)."""

    def __init__(self, monkeypatch):
        from clora3d.engine import trainer

        self.steps: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = []
        self.trainer = None
        real_run = trainer._Trainer.run

        def run(inst):
            self.trainer = inst
            return real_run(inst)

        monkeypatch.setattr(trainer._Trainer, "run", run)

        def hook(opt, args, kwargs):
            self.steps.append(
                [
                    (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                    for g in opt.param_groups
                    for p in g["params"]
                ]
            )

        self.handle = register_optimizer_step_pre_hook(hook)

    def close(self):
        self.handle.remove()


def _train(cfg, run_dir, monkeypatch):
    from clora3d.engine.trainer import train

    rec = _Steps(monkeypatch)
    try:
        res = train(cfg, run_dir=run_dir)
    finally:
        rec.close()
        monkeypatch.undo()
    return res, rec


def _grad_norm(step) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for _, g in step if g is not None))


# ------------------------------------------------------------------------------------------------
# the method's regulariser is part of the differentiated loss
# ------------------------------------------------------------------------------------------------
def _sade_by_hand(spaces, lam: float) -> torch.Tensor:
    """lambda * sum_j sum_{a<b} ||(M_a^j)^T M_b^j||_F^2 with M_h^j = D_h Q_h^j U_h, materialised."""
    total = torch.zeros((), dtype=torch.float64)
    for D, U, Q in spaces:
        p = D.shape[0]
        for j in range(Q.shape[0]):
            M = [D[h] @ Q[j, h] @ U[h] for h in range(p)]
            for a in range(p):
                for b in range(a + 1, p):
                    total = total + ((M[a].T @ M[b]) ** 2).sum()
    return lam * total


def test_trainer_adds_the_methods_regulariser_to_the_loss(tmp_path, mn_root, monkeypatch):
    # Two runs from the same seed, SADE weight 0 and 50, no clipping. Q starts at zero, so the
    # SADE gradient is zero at the first step and both runs stay identical up to the second step;
    # there, the gradient difference must be exactly the gradient of 50 * SADE (computed here by
    # materialising every component).
    # Everything explicit (defaults may change): xavier init (orthogonal spaces make every
    # D_a^T D_b, and so SADE and its gradient, zero), the unnormalised SADE the hand formula below
    # computes; a large first step moves Q well away from zero.
    peft = "{NAME: clora, rank: 2, num_spaces: 3, init: xavier, sade: true, sade_normalize: false, sade_lambda: %s}"
    lam = 50.0
    grads, names = {}, None
    for tag, value in (("off", 0.0), ("on", lam)):
        cfg = _cfg(tmp_path, mn_root, tag, peft=peft % value, overrides=("train.grad_clip=null", "optimizer.lr=0.2"))
        _, rec = _train(cfg, tmp_path / tag, monkeypatch)
        assert len(rec.steps) == 2  # 16 shapes, batch 8
        grads[tag] = rec.steps
        opt_params = [p for g in rec.trainer.optimizer.param_groups for p in g["params"]]
        names = {id(p): n for n, p in rec.trainer.model.named_parameters()}
        order = [names[id(p)] for p in opt_params]
    off, on = grads["off"], grads["on"]
    for (v0, g0), (v1, g1) in zip(off[0], on[0]):  # step 1: identical
        assert torch.equal(v0, v1) and torch.equal(g0, g1)
    for (v0, _), (v1, _) in zip(off[1], on[1]):  # identical parameters at step 2
        assert torch.equal(v0, v1)
    # SADE gradient by hand at the step-2 parameters
    vals = {n: v.double().requires_grad_(True) for n, (v, _) in zip(order, on[1])}
    prefixes = sorted({n[: -len(".D")] for n in vals if n.endswith(".D")})
    assert prefixes, order
    spaces = [(vals[f"{q}.D"], vals[f"{q}.U"], vals[f"{q}.Q"]) for q in prefixes]
    reg = _sade_by_hand(spaces, lam)
    hand = dict(zip(vals, torch.autograd.grad(reg, list(vals.values()), allow_unused=True)))
    n_checked = 0
    for n, (_, g0), (_, g1) in zip(order, off[1], on[1]):
        diff = (g1.double() if g1 is not None else 0) - (g0.double() if g0 is not None else 0)
        expect = hand[n] if hand[n] is not None else torch.zeros_like(vals[n])
        torch.testing.assert_close(torch.as_tensor(diff).expand_as(expect), expect, rtol=1e-3, atol=1e-6)
        n_checked += int(expect.abs().max() > 1e-3)
    assert n_checked >= 3  # the regulariser really moves D, U and Q of the spaces


# ------------------------------------------------------------------------------------------------
# grad_clip
# ------------------------------------------------------------------------------------------------
def test_grad_clip_rescales_the_gradient_to_the_bound(tmp_path, mn_root, monkeypatch):
    clip = 1e-3
    _, free = _train(
        _cfg(tmp_path, mn_root, "free", overrides=("train.grad_clip=null",)), tmp_path / "free", monkeypatch
    )
    _, clipped = _train(
        _cfg(tmp_path, mn_root, "clip", overrides=(f"train.grad_clip={clip}",)), tmp_path / "clip", monkeypatch
    )
    assert len(free.steps) == len(clipped.steps) == 2
    for step in clipped.steps:
        assert _grad_norm(step) == pytest.approx(clip, rel=1e-4)
    # first step: same parameters and data, so the clipped gradient is the free one times clip/norm
    norm = _grad_norm(free.steps[0])
    assert norm > 100 * clip  # the bound is active
    for (v0, g0), (v1, g1) in zip(free.steps[0], clipped.steps[0]):
        assert torch.equal(v0, v1)
        torch.testing.assert_close(g1, g0 * (clip / norm), rtol=1e-4, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# label smoothing
# ------------------------------------------------------------------------------------------------
def test_label_smoothing_changes_the_training_loss_by_the_formula(tmp_path, mn_root, monkeypatch):
    from clora3d.engine import trainer

    eps = 0.3
    seen_logits, seen_labels = [], []
    real_to_device = trainer._to_device

    def to_device(batch, device):
        out = real_to_device(batch, device)
        seen_labels.append(out["label"].view(-1).clone())
        return out

    monkeypatch.setattr(trainer, "_to_device", to_device)
    real_forward = trainer._Trainer._forward_loss

    def forward_loss(self, batch, pts):
        handle = self.model.register_forward_hook(lambda m, i, o: seen_logits.append(o.detach().clone()))
        try:
            return real_forward(self, batch, pts)
        finally:
            handle.remove()

    monkeypatch.setattr(trainer._Trainer, "_forward_loss", forward_loss)
    cfg = _cfg(tmp_path, mn_root, "ls", overrides=(f"train.label_smoothing={eps}",))
    res = trainer.train(cfg, run_dir=tmp_path / "ls")
    monkeypatch.undo()
    labels = seen_labels[: len(seen_logits)]  # the evaluation loader goes through _to_device too
    assert len(seen_logits) == 2
    total = count = 0.0
    for logits, y in zip(seen_logits, labels):
        logp = torch.log_softmax(logits.double(), -1)
        C = logp.shape[-1]
        q = torch.full_like(logp, eps / C)
        q[torch.arange(len(y)), y] += 1 - eps
        total += float(-(q * logp).sum(-1).sum())  # textbook smoothed CE, summed over the batch
        count += len(y)
    plain = (
        sum(
            float(torch.nn.functional.cross_entropy(lg.double(), y, reduction="sum"))
            for lg, y in zip(seen_logits, labels)
        )
        / count
    )
    got = res["history"][0]["train"]["loss"]
    assert got == pytest.approx(total / count, rel=1e-5)
    assert abs(got - plain) > 1e-3  # smoothing made a difference


# ------------------------------------------------------------------------------------------------
# best epoch
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,key,expect_epoch", [("classification", "acc", 1), ("partseg", "inst_miou", 2), ("pretrain", "loss", 1)]
)
def test_best_epoch_tie_rule(tmp_path, mn_root, monkeypatch, task, key, expect_epoch):
    # scripted metrics 50, 70, 70, 60: classification keeps the first 70 (acc > best), part
    # segmentation the last (inst mIoU >= best), as the references do; pre-training selected on
    # the test loss (0.7, 0.5, 0.5, 0.6) keeps the first 0.5 (loss < best)
    from clora3d.engine import trainer
    from clora3d.engine.tasks import TASKS

    lower = key == "loss"
    script = iter([0.7, 0.5, 0.5, 0.6] if lower else [50.0, 70.0, 70.0, 60.0])

    def fake_eval(self, loader, vote=0, **kw):
        v = next(script)
        return {key: v, "count": 8}

    monkeypatch.setattr(trainer._Trainer, "_evaluate", fake_eval)
    cfg = _cfg(tmp_path, mn_root, "best", epochs=4, overrides=("train.save_best=false",))
    real_init = trainer._Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        # the selection rule of the task; the training itself stays classification
        rule = TASKS[task](self.cfg)
        self.task.select_key, self.task.higher_is_better, self.task.strict = (
            rule.select_key,
            rule.higher_is_better,
            rule.strict,
        )

    monkeypatch.setattr(trainer._Trainer, "__init__", init)
    res = trainer.train(cfg, run_dir=tmp_path / "run")
    monkeypatch.undo()
    assert res["best"]["epoch"] == expect_epoch and res["best"][key] == (0.5 if lower else 70.0)
    assert [h.get("is_best", False) for h in res["history"]] == (
        [True, True, False, False] if expect_epoch == 1 else [True, True, True, False]
    )

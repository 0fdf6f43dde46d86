"""engine.build: one builder from a run config for training, inference, export and the demo, and the
one BatchNorm policy (``model.frozen_bn``, applied by ``method.train()``) through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clora3d.engine import build
from clora3d.engine.config import load_config
from clora3d.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """\
task: {task}
seed: 3
model: {model}
peft: {peft}
dataset:
  train: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
  test: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
data: {{npoints: 128, point_all: 160, train_transforms: [{{NAME: ScaleAndTranslate}}]}}
optimizer: {{lr: 2.0e-3}}
scheduler: {{warmup_epochs: 0, epochs: 2}}
train: {{epochs: 1, batch_size: 8, num_workers: 0}}
log: {{progress: false, tensorboard: false}}
"""
CLS_MODEL = "{NAME: PointTransformer, preset: tiny, cls_dim: 4, drop_path_rate: 0.0}"


@pytest.fixture(scope="module")
def mn_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path_factory.mktemp("syn") / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=4, n_test=2, n_points=1100, seed=0)
    return root


def _cfg(
    tmp: Path,
    root: Path,
    *,
    task: str = "classification",
    model: str = CLS_MODEL,
    peft: str = "{NAME: lora}",
    overrides: tuple[str, ...] = (),
) -> dict:
    p = tmp / "c.yaml"
    p.write_text(TINY.format(task=task, model=model, peft=peft, root=root))
    return load_config(p, [f"log.root={tmp / 'exp'}", *overrides])


def _frozen_bns(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def test_build_gives_model_method_and_an_optimizer_over_exactly_the_trainable_set(tmp_path, mn_root):
    cfg = _cfg(tmp_path, mn_root)
    run = build.build(cfg)
    trainable = run.method.trainable_parameters()
    # LoRA on the tiny model: qkv + proj of each of the 4 blocks, rank 8 (default), plus head and tokens
    assert {n for n in trainable if "lora" in n.lower()} and "cls_token" in trainable
    opt_ids = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(opt_ids) == sorted({id(p) for p in trainable.values()})
    names = {n for g in run.optimizer.param_groups for n in g["names"]}
    assert names == set(trainable)
    frozen = [n for n, p in run.model.named_parameters() if not p.requires_grad]
    assert frozen and not set(frozen) & names
    # the scheduler is the config's (cosine over scheduler.epochs=2, no warm-up)
    assert run.scheduler.t_initial == 2 and run.scheduler.warmup_t == 0
    assert build.build(cfg, optimizer=False).optimizer is None


def test_model_spec_and_build_errors(tmp_path, mn_root):
    cfg = _cfg(tmp_path, mn_root, overrides=("model.frozen_bn=eval",))
    spec = build.model_spec(cfg)
    assert "frozen_bn" not in spec and spec["NAME"] == "PointTransformer" and spec["cls_dim"] == 4
    bad = {**cfg, "model": {**cfg["model"], "no_such_arg": 1}}
    with pytest.raises(ConfigError, match="PointTransformer"):
        build.build_model(bad)


@pytest.mark.parametrize(
    "task,model,peft",
    [
        ("pretrain", "{NAME: PointMAE, preset: tiny, drop_path_rate: 0.0}", "{NAME: full}"),
        ("classification", CLS_MODEL, "{NAME: full}"),
    ],
)
def test_every_parameter_trains_in_pretraining_and_full_finetuning(tmp_path, mn_root, task, model, peft):
    cfg = _cfg(tmp_path, mn_root, task=task, model=model, peft=peft)
    m = build.build_model(cfg)
    method = build.build_method(m, cfg)
    assert set(method.trainable_parameters()) == {n for n, _ in m.named_parameters()}
    assert isinstance(method, build.FullTraining) == (task == "pretrain")


@pytest.mark.parametrize("policy", ["eval", "train"])
def test_the_method_applies_model_frozen_bn_in_train(tmp_path, mn_root, policy):
    """``model.frozen_bn`` reaches the method whatever the peft section says; ``method.train()``
    puts exactly the BatchNorms whose parameters are all frozen in eval mode (policy eval)."""
    cfg = _cfg(tmp_path, mn_root, overrides=(f"model.frozen_bn={policy}",))
    cfg["peft"] = {k: v for k, v in cfg["peft"].items() if k != "frozen_bn"}  # the model's key decides
    model = build.build_model(cfg)
    method = build.build_method(model, cfg)
    frozen = _frozen_bns(model)
    assert frozen and all(n.startswith("encoder.") for n in frozen)
    model.eval()
    method.train()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert {n for n, m in bns.items() if not m.training} == (set(frozen) if policy == "eval" else set())
    assert bns["cls_head_finetune.1"].training  # a trained BatchNorm always trains
    method.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("policy", ["eval", "train"])
def test_frozen_bn_statistics_through_the_trainer(tmp_path, mn_root, policy):
    """Through a training run: every buffer of a frozen BatchNorm (running mean / var, batch count)
    stays bit-identical with frozen_bn: eval, and mean and var all move with train (the default)."""
    from clora3d.engine.checkpoint import load_checkpoint
    from clora3d.engine.trainer import seed_everything, train

    cfg = _cfg(tmp_path, mn_root, overrides=(f"model.frozen_bn={policy}",))
    train(cfg, run_dir=tmp_path / "run")
    seed_everything(cfg["seed"])  # the trainer initialises the model from the same seed
    init = build.build_model(cfg)
    frozen = _frozen_bns(build.build_method(init, cfg).model)
    last = load_checkpoint(tmp_path / "run" / "ckpt-last.pth")["model"]
    init_state = init.state_dict()
    for bn in frozen:
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            same = torch.equal(init_state[f"{bn}.{buf}"], last[f"{bn}.{buf}"])
            assert same if policy == "eval" else (not same), (bn, buf)
    # the trained head's BatchNorm updates its statistics either way
    assert not torch.equal(init_state["cls_head_finetune.1.running_mean"], last["cls_head_finetune.1.running_mean"])


def test_build_datasets_holdout(tmp_path, mn_root):
    cfg = _cfg(tmp_path, mn_root, overrides=("dataset.val={from_train: 0.25}", "train.select_on_test=false"))
    splits = build.build_datasets(cfg)
    assert len(splits.train) == 12 and len(splits.val) == 4 and len(splits.test) == 8
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert splits.attribute("class_names") is not None
    again = build.build_datasets(cfg)
    assert again.val.indices == splits.val.indices  # seeded: the same hold-out every time


def test_one_weight_decay_rule_through_the_builder(tmp_path, mn_root):
    """No decay exactly for 1-D tensors, ``*.bias`` and names with ``token`` (the reference's
    add_weight_decay, written out here) plus what the method names; ``cls_pos`` is decayed as in the
    reference. CLoRA with per-LRM biases, whose stacked (m, d) bias is 2-D."""
    cfg = _cfg(tmp_path, mn_root, peft="{NAME: clora, bias: true}")
    run = build.build(cfg)
    groups = {g["weight_decay"]: set(g["names"]) for g in run.optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    trainable = run.method.trainable_parameters()
    by_hand = {n for n, p in trainable.items() if p.ndim <= 1 or n.endswith(".bias") or "token" in n}
    extra = run.method.no_weight_decay()
    assert extra and all(trainable[n].ndim == 2 for n in extra)  # the stacked biases
    assert groups[0.0] == by_hand | extra
    assert groups[0.05] == set(trainable) - groups[0.0]
    assert "cls_pos" in groups[0.05] and "cls_token" in groups[0.0]
    # the builder asks the method: a name it exempts leaves the decayed group whatever its shape
    model = build.build_model(cfg)
    method = build.build_method(model, {**cfg, "peft": {"NAME": "full"}})
    method.no_weight_decay = lambda: {"blocks.blocks.0.attn.qkv.weight"}
    opt, _ = build.build_optimizer(method, cfg)
    no_decay = next(set(g["names"]) for g in opt.param_groups if g["weight_decay"] == 0.0)
    assert "blocks.blocks.0.attn.qkv.weight" in no_decay and "blocks.blocks.1.attn.qkv.weight" not in no_decay

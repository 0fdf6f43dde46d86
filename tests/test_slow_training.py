"""Long checks, run with `pytest -m slow` (`make test-slow`); the default run skips them."""

from __future__ import annotations

import pytest

from clora3d.engine.config import load_config

pytestmark = pytest.mark.slow

CFG = """\
task: classification
seed: 0
model: {{NAME: PointTransformer, preset: tiny, cls_dim: 4, drop_path_rate: 0.0}}
peft: {{NAME: {peft}}}
dataset:
  train: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
  test: {{NAME: ModelNet40, root: {root}, n_points: 1024}}
data: {{npoints: 128, point_all: 160, train_transforms: [{{NAME: ScaleAndTranslate}}]}}
optimizer: {{lr: 2.0e-3}}
scheduler: {{warmup_epochs: 2, epochs: 30}}
train: {{epochs: 30, batch_size: 8, num_workers: 0}}
log: {{progress: false, tensorboard: false}}
"""


@pytest.mark.parametrize("peft", ["full", "clora"])
def test_training_converges_on_separable_synthetic_classes(tmp_path, one_thread, peft):
    # 4 synthetic shape classes, 32 train / 16 test shapes, 30 epochs: full fine-tuning and CLoRA
    # from scratch must separate them (chance 25 %), the loss must fall by more than half, and
    # CLoRA's SADE term must be reported every epoch.
    from clora3d.data.synthetic import write_modelnet40
    from clora3d.engine.trainer import train

    root = tmp_path / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=8, n_test=4, n_points=1100, seed=0)
    (tmp_path / "c.yaml").write_text(CFG.format(root=root, peft=peft))
    res = train(load_config(tmp_path / "c.yaml", [f"log.root={tmp_path / 'exp'}"]), run_dir=tmp_path / "run")
    hist = res["history"]
    assert len(hist) == 30
    assert res["best"]["acc"] >= 87.5, [h["test"]["acc"] for h in hist]
    assert res["last"]["acc"] >= 75.0, [h["test"]["acc"] for h in hist]
    first, last = hist[0]["train"]["loss"], hist[-1]["train"]["loss"]
    assert last < 0.5 * first, (first, last)
    if peft == "clora":
        assert all("reg_loss" in h["train"] for h in hist[1:])

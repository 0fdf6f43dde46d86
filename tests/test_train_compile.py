"""train.compile (issue 12): the training forward compiled with torch.compile(fullgraph=True);
resume stays exact, and the numbers follow the eager run. Also the device-side running sums and
non-finite check of the training loop (no host sync per step on CUDA)."""

from __future__ import annotations

import pytest
import torch
from test_trainer import (
    mn_root,  # noqa: F401  (fixture)
    tiny_cfg,  # noqa: F401  (the tiny ModelNet config of the trainer tests)
)

from clora3d.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_training_resumes_exactly_and_follows_eager(tmp_path, mn_root, monkeypatch):  # noqa: F811
    from clora3d.engine import trainer

    cfg = tiny_cfg(tmp_path, mn_root, peft="clora", epochs=3, overrides=("train.compile=aot_eager",))
    compiled = trainer.train(cfg, run_dir=tmp_path / "a")
    eager = trainer.train(tiny_cfg(tmp_path, mn_root, peft="clora", epochs=3), run_dir=tmp_path / "e")

    real = trainer._Trainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(trainer._Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, run_dir=tmp_path / "b")
    monkeypatch.undo()
    torch.manual_seed(99)
    resumed = trainer.train(cfg, run_dir=tmp_path / "b", resume=True)

    a = load_checkpoint(tmp_path / "a" / "ckpt-last.pth")["model"]
    b = load_checkpoint(tmp_path / "b" / "ckpt-last.pth")["model"]
    assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in a)  # the plain model is saved
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [h["train"]["loss"] for h in compiled["history"]]
    assert la == [h["train"]["loss"] for h in resumed["history"]]
    le = [h["train"]["loss"] for h in eager["history"]]
    assert la == pytest.approx(le, rel=1e-4, abs=1e-5)


def test_non_finite_loss_stops_the_epoch_before_its_checkpoint(tmp_path, mn_root):  # noqa: F811
    from clora3d.engine import trainer

    cfg = tiny_cfg(
        tmp_path,
        mn_root,
        peft="lora",
        epochs=2,
        overrides=("optimizer.lr=1e30", "scheduler.warmup_epochs=0", "train.grad_clip=null"),
    )
    with pytest.raises(FloatingPointError, match=r"epoch \d+: the loss is not finite .* at step \d+") as e:
        trainer.train(cfg, run_dir=tmp_path / "nan")
    bad_epoch = int(str(e.value).split()[1].rstrip(":"))
    last = tmp_path / "nan" / "ckpt-last.pth"
    assert not last.exists() or load_checkpoint(last)["epoch"] < bad_epoch  # the diverged epoch was not saved

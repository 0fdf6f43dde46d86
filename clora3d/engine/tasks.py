"""What differs between the trainer's tasks: loss, evaluation, the metric that selects the best epoch.

:func:`get_task` returns one of :class:`Classification`, :class:`PartSeg`, :class:`Pretrain` for a
config's ``task``; the trainer (``engine.trainer``) is the same loop for all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Task", "Classification", "PartSeg", "Pretrain", "get_task", "TASKS"]


class Task:
    """One training task. ``cfg`` is the validated run config.

    ``select_key`` / ``higher_is_better`` / ``strict``: the selection metric, whether larger is
    better and whether only a strict improvement makes a new best epoch.
    """

    name = ""
    select_key = ""
    higher_is_better = True
    strict = True
    train_accuracy = True  # the training log reports an accuracy

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.seg_classes: Any = None

    # -- selection ----------------------------------------------------------------------------------
    def selection_split(self, has_val: bool, has_test: bool) -> str:
        """The split evaluated every ``val_freq`` epochs and used to select the best epoch."""
        return "test" if self.cfg["train"]["select_on_test"] else "val"

    @property
    def selects(self) -> bool:
        """Whether a best epoch is chosen at all."""
        return True

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.higher_is_better:
            return value > best if self.strict else value >= best
        return value < best if self.strict else value <= best

    # -- training -----------------------------------------------------------------------------------
    def forward_loss(
        self, forward: nn.Module, model: nn.Module, batch: Mapping[str, torch.Tensor], pts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(loss, correct (a 0-d tensor on the device: no host sync), count) of one batch;
        ``forward`` is the (possibly compiled / DDP-wrapped) model, ``model`` the bare one."""
        raise NotImplementedError

    def double_step(self) -> bool:
        """Two optimizer steps per batch (the part segmentation reference's quirk)."""
        return False

    def fallback_metrics(self, train_metrics: Mapping[str, Any], has_eval: bool) -> dict | None:
        """Selection metrics of an epoch without evaluation (pre-training without a test set)."""
        return None

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self, model: nn.Module, loader: Any, *, device: torch.device, vote: int = 0, vote_passes: int = 1
    ) -> dict[str, Any]:
        raise NotImplementedError

    # -- reporting ----------------------------------------------------------------------------------
    def finish_best(self, best: dict[str, Any], evals: list[dict[str, Any]], split: str, log: Any) -> None:
        """Add task-specific entries to the best-epoch report (in place)."""

    def protocol(self, select_split: str) -> dict[str, Any]:
        """The task's protocol knobs, labelled (reference value vs clora3d switch)."""
        return {
            "model_selection": (
                "best epoch on the TEST set (reference quirk)"
                if select_split == "test"
                else "best epoch on dataset.val"
            )
        }


class Classification(Task):
    name = "classification"
    select_key, higher_is_better, strict = "acc", True, True  # reference: acc > best

    def forward_loss(self, forward, model, batch, pts):
        logits = forward(pts)
        label = batch["label"].view(-1).long()
        loss = F.cross_entropy(logits.float(), label, label_smoothing=self.cfg["train"]["label_smoothing"])
        return loss, (logits.detach().argmax(-1) == label).sum(), float(label.numel())

    def evaluate(self, model, loader, *, device, vote=0, vote_passes=1):
        from clora3d.engine.config import default_point_all
        from clora3d.engine.evaluate import evaluate_classification

        dcfg = self.cfg["data"]
        pa = dcfg["point_all"] or default_point_all(dcfg["npoints"])
        return evaluate_classification(
            model, loader, device=device, npoints=dcfg["npoints"], vote=vote, point_all=pa, vote_repeats=vote_passes
        )

    def protocol(self, select_split):
        out = super().protocol(select_split)
        ecfg = self.cfg["eval"]
        if ecfg["vote"]:
            out["vote"] = (
                f"vote@{ecfg['vote']}: {ecfg['vote_passes']} pass(es); "
                f"acc_vote@{ecfg['vote']} = first pass"
                + (
                    f", _max_of_{ecfg['vote_passes']} = best pass (reference "
                    f"protocol when 299), _mean_of_{ecfg['vote_passes']} = mean"
                    if ecfg["vote_passes"] > 1
                    else ""
                )
            )
        return out


class PartSeg(Task):
    name = "partseg"
    select_key, higher_is_better, strict = "inst_miou", True, False  # reference: inst mIoU >= best

    def forward_loss(self, forward, model, batch, pts):
        ncls = getattr(model, "num_classes", 16)
        onehot = F.one_hot(batch["cls"].view(-1).long(), ncls).to(pts.dtype)
        logp = forward(pts, onehot)
        seg = batch["seg"].long()
        loss = F.nll_loss(logp.float().reshape(-1, logp.shape[-1]), seg.reshape(-1))
        return loss, (logp.detach().argmax(-1) == seg).sum(), float(seg.numel())

    def double_step(self):
        return bool(self.cfg["train"]["partseg_double_step"])

    def evaluate(self, model, loader, *, device, vote=0, vote_passes=1):
        from clora3d.engine.evaluate import evaluate_partseg

        return evaluate_partseg(model, loader, device=device, seg_classes=self.seg_classes)

    def finish_best(self, best, evals, split, log):
        if not evals:
            return
        # Cls. mIoU two ways: `cls_miou` at the best-Inst.-mIoU epoch (clean) and the reference's own
        # running maximum over epochs (segmentation/main.py tracks best_class_avg_iou separately, so
        # it may come from another epoch)
        e_max = max(evals, key=lambda h: h[split].get("cls_miou", float("-inf")))
        best["cls_miou_max_over_epochs"] = e_max[split].get("cls_miou")
        best["cls_miou_max_epoch"] = e_max["epoch"]
        log.info(
            f"Cls. mIoU: {fmt(best, 'cls_miou')} at the best Inst. mIoU epoch "
            f"{best.get('epoch')} (clean); {fmt(best, 'cls_miou_max_over_epochs')} = "
            f"max over epochs, at epoch {e_max['epoch']} (reference's way)"
        )

    def protocol(self, select_split):
        out = super().protocol(select_split)
        out["partseg_double_step"] = (
            "two optimizer steps per batch (reference quirk)"
            if self.double_step()
            else "one optimizer step per batch (clean)"
        )
        return out


class Pretrain(Task):
    name = "pretrain"
    select_key, higher_is_better, strict = "loss", False, True
    train_accuracy = False

    def selection_split(self, has_val, has_test):
        return "test" if has_test else "train"

    @property
    def selects(self):
        """``pretrain_select: last`` keeps the last epoch, as the reference runner (no ckpt-best.pth)."""
        return self.cfg["train"]["pretrain_select"] != "last"

    def forward_loss(self, forward, model, batch, pts):
        loss = forward(pts)
        return loss, loss.new_zeros(()), float(pts.shape[0])

    def fallback_metrics(self, train_metrics, has_eval):
        return None if has_eval else {"loss": train_metrics["loss"]}  # no test set: the train loss

    @torch.no_grad()
    def evaluate(self, model, loader, *, device, vote=0, vote_passes=1):
        """Mean Chamfer loss with masks drawn from a generator seeded once per evaluation."""
        from clora3d import ops
        from clora3d.engine.distributed import all_reduce_sum
        from clora3d.engine.pipeline import derive_seed

        was = model.training
        model.eval()
        g = torch.Generator(device=device).manual_seed(derive_seed(self.cfg["seed"], "eval-mask"))
        loss_sum, n = 0.0, 0.0
        npoints = self.cfg["data"]["npoints"]
        for batch in loader:
            pts = batch["points"].to(device).float()
            if pts.shape[1] > npoints:
                pts = ops.gather_points(pts, ops.furthest_point_sample(pts.contiguous(), npoints))
            loss = model(pts, generator=g)
            loss_sum += float(loss) * pts.shape[0]
            n += pts.shape[0]
        model.train(was)
        s = all_reduce_sum([loss_sum, n], device)
        return {"loss": s[0] / max(s[1], 1.0), "count": int(s[1])}

    def protocol(self, select_split):
        return {
            "model_selection": (
                "last epoch, no selection (reference)"
                if not self.selects
                else "lowest Chamfer loss on dataset.test (clora3d switch)"
            )
        }


TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, PartSeg, Pretrain)}


def get_task(cfg: Mapping[str, Any]) -> Task:
    """The task object of run config ``cfg`` (``cfg["task"]``)."""
    from clora3d.errors import ConfigError

    name = cfg["task"]
    if name not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](cfg)


def fmt(d: Mapping[str, Any], key: str) -> Any:
    """``d[key]`` for a log line: floats with 4 decimals."""
    v = d.get(key)
    return f"{v:.4f}" if isinstance(v, float) else v

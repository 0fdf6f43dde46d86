"""What the trainer does around an epoch: log lines, checkpoints, snapshots, the history files.

Each callback implements any of ``on_train_epoch(trainer, epoch, train_metrics)``,
``on_validation(trainer, epoch, metrics)``, ``on_best(trainer, epoch, metrics)`` and
``on_epoch_end(trainer, epoch, record)``; :func:`default_callbacks` is the list the trainer runs,
in this order. Only the main process writes files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from clora3d.engine.checkpoint import atomic_save, load_checkpoint, restore_training_state, training_state
from clora3d.storage import to_plain as plain

__all__ = [
    "LAST_CKPT",
    "BEST_CKPT",
    "Callback",
    "EpochLog",
    "BestCheckpoint",
    "History",
    "LastCheckpoint",
    "Snapshots",
    "default_callbacks",
    "snapshot_due",
    "resume",
    "plain",
]

LAST_CKPT = "ckpt-last.pth"
BEST_CKPT = "ckpt-best.pth"

#: metrics shown in the "[Validation]" log line
SHOWN = ("acc", "inst_miou", "cls_miou", "loss")


class Callback:
    def on_train_epoch(self, trainer: Any, epoch: int, train_metrics: Mapping[str, Any]) -> None:
        pass

    def on_validation(self, trainer: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        pass

    def on_best(self, trainer: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int, record: Mapping[str, Any]) -> None:
        pass


class EpochLog(Callback):
    """The reference runners' "[Training]" / "[Validation]" lines, and the scalars (csv, TensorBoard)."""

    def on_train_epoch(self, trainer, epoch, tr):
        trainer.log.info(
            f"[Training] EPOCH: {epoch} EpochTime = {tr['time']:.3f} (s) Losses = {loss_list(tr)} lr = {tr['lr']:.6f}"
        )
        trainer.log.scalars("train", tr, epoch)

    def on_validation(self, trainer, epoch, m):
        trainer.log.info(
            f"[Validation] EPOCH: {epoch}  " + "  ".join(f"{k} = {v:.4f}" for k, v in m.items() if k in SHOWN)
        )
        trainer.log.scalars(trainer.select_split, m, epoch)


class BestCheckpoint(Callback):
    """``ckpt-best.pth``: the model of the best epoch with its metrics (``train.save_best``)."""

    def on_best(self, trainer, epoch, metrics):
        if not trainer.info.is_main or not trainer.cfg["train"]["save_best"]:
            return
        atomic_save(
            {
                "format_version": 1,
                "kind": "best",
                "epoch": epoch,
                "metrics": plain(metrics),
                "selected_on": trainer.select_split,
                "config": trainer.cfg,
                "class_names": trainer.class_names,
                "model": model_state(trainer.model),
            },
            trainer.run_dir / BEST_CKPT,
        )


class History(Callback):
    """``metrics.csv`` / ``metrics.jsonl`` rewritten from the full history."""

    def on_epoch_end(self, trainer, epoch, record):
        trainer.log.write_history(trainer.history)


class LastCheckpoint(Callback):
    """``ckpt-last.pth``: the full training state (model, optimizer, scheduler, scaler, RNGs, history)."""

    def on_epoch_end(self, trainer, epoch, record):
        if not trainer.info.is_main:
            return
        state = training_state(
            model_state=model_state(trainer.model),
            optimizer=trainer.optimizer,
            scheduler=trainer.scheduler,
            scaler=trainer.scaler,
            epoch=epoch,
            best=plain(trainer.best) if trainer.best else None,
            history=plain(trainer.history),
            extra={"config": trainer.cfg, "class_names": trainer.class_names},
        )
        atomic_save(state, trainer.run_dir / LAST_CKPT)


class Snapshots(Callback):
    """``ckpt-epoch-XXX.pth``: a copy of ``ckpt-last.pth`` every ``train.snapshot_every`` epochs from
    ``train.snapshot_from`` (reference pre-training keeps one every 25 epochs from epoch 250)."""

    def on_epoch_end(self, trainer, epoch, record):
        t = trainer.cfg["train"]
        if not snapshot_due(epoch, t["snapshot_every"], t["snapshot_from"]) or not trainer.info.is_main:
            return
        import shutil

        dst = trainer.run_dir / f"ckpt-epoch-{epoch:03d}.pth"
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(trainer.run_dir / LAST_CKPT, tmp)
        os.replace(tmp, dst)


def default_callbacks() -> list[Callback]:
    return [EpochLog(), BestCheckpoint(), History(), LastCheckpoint(), Snapshots()]


def resume(trainer: Any) -> int:
    """Restore ``<run_dir>/ckpt-last.pth`` into the trainer; returns the epoch to start from."""
    path = trainer.run_dir / LAST_CKPT
    state = load_checkpoint(path)
    restore_training_state(
        state,
        model=trainer.model,
        optimizer=trainer.optimizer,
        scheduler=trainer.scheduler,
        scaler=trainer.scaler,
        path=path,
    )
    saved_cfg = state.get("extra", {}).get("config")
    if saved_cfg is not None:
        diff = config_diff(saved_cfg, trainer.cfg, ignore=("log", "train.num_workers", "train.epochs", "train.device"))
        if diff:
            trainer.log.info(
                f"warning: resuming with a config that differs from the saved one "
                f"in {', '.join(diff)}; the result will not equal an uninterrupted run"
            )
    trainer.history = list(state.get("history") or [])
    trainer.best = dict(state["best"]) if state.get("best") else None
    start = int(state["epoch"]) + 1
    trainer.log.info(f"resumed from {path} at epoch {start}")
    return start


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def snapshot_due(epoch: int, every: int | None, start: int) -> bool:
    """Whether ``ckpt-epoch-XXX.pth`` is kept after ``epoch`` (reference pre-training: every 25
    epochs from epoch 250, i.e. ``epoch % 25 == 0 and epoch >= 250``)."""
    return bool(every) and epoch >= start and epoch % every == 0


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def loss_list(tr: Mapping[str, float]) -> str:
    vals = [tr["loss"]] + ([tr["acc"]] if "acc" in tr else [])
    return "[" + ", ".join(f"'{v:.4f}'" for v in vals) + "]"


def config_diff(
    a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple[str, ...] = (), prefix: str = ""
) -> list[str]:
    """Dotted keys whose values differ between configs ``a`` and ``b`` (``ignore``: keys / sections)."""
    out = []
    for k in sorted(set(a) | set(b)):
        p = f"{prefix}{k}"
        if p in ignore:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, ignore, p + ".")
        elif va != vb:
            out.append(p)
    return out

"""The training loop: classification, part segmentation and Point-MAE pre-training.

The loop is the same for every task; what differs (loss, evaluation, selection metric) lives in
``engine.tasks``, what happens around an epoch (log lines, checkpoints, snapshots) in
``engine.callbacks``, building model / method / data / optimizer in ``engine.build`` and the
batch pipeline and seeding in ``engine.pipeline`` (re-exported here).

``train(cfg, ckpt=..., resume=..., run_dir=...)`` runs one config end to end:

1. validate the config, start DDP when launched by torchrun, seed, create / reopen the run dir;
2. build the model, load the pre-trained checkpoint, apply the PEFT method (``engine.build``); the
   optimizer sees exactly the method's ``trainable_parameters()`` (AdamW groups, see ``optim``), the
   loss adds the method's ``regularization_loss()``;
3. every epoch: ``method.train()`` (train mode + the frozen-BN policy ``model.frozen_bn``), the
   reference batch pipeline (FPS to ``point_all``, one random subset of ``npoints`` shared by the
   batch, then the augmentations),
   loss, backward, gradient clipping, step; the scheduler steps once at the end of the epoch;
   evaluation every ``val_freq`` epochs; ``ckpt-best.pth`` when the selection metric improves and
   ``ckpt-last.pth`` (full state) after every epoch, both written atomically;
4. at the end: the last and the best epoch are reported separately (plus vote@10 when asked).

Determinism and resume: at the start of every epoch the torch / numpy / Python RNGs are re-seeded
from (seed, epoch, rank), the sampler permutation comes from (seed, epoch) and the shared subset
generator from (seed, epoch); ``ckpt-last.pth`` also stores every RNG state. A run resumed from
``ckpt-last.pth`` therefore continues exactly like the uninterrupted run (bit-identical on the CPU
with ``num_workers: 0`` or any fixed number of workers).

Size: about 390 lines as written, 460 after ``ruff format`` (which puts each argument of a call
that does not fit 120 columns on its own line); the loop, its device handling and resume are one
job, and the tasks, callbacks, pipeline and report already live in their own modules.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clora3d.engine import build
from clora3d.engine.callbacks import BEST_CKPT, LAST_CKPT, default_callbacks, resume, snapshot_due
from clora3d.engine.config import dump_config, validate_config
from clora3d.engine.distributed import (
    DistInfo,
    ShardSampler,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    maybe_sync_bn,
    unwrap,
)
from clora3d.engine.logging import RunLogger, environment_info
from clora3d.engine.pipeline import (
    TrainBatchPipeline,
    collate,
    derive_seed,
    deterministic,
    seed_everything,
    to_device,
    worker_init,
)
from clora3d.engine.report import final_report
from clora3d.engine.report import scalars as _scalars
from clora3d.engine.tasks import get_task
from clora3d.errors import CheckpointError, ConfigError
from clora3d.models.transformer import reuse_frozen_casts, trainable_casts

__all__ = ["train", "derive_seed", "seed_everything", "TrainBatchPipeline", "LAST_CKPT", "BEST_CKPT", "snapshot_due"]

log = logging.getLogger(__name__)

# the trainer's seams, looked up at call time (tests wrap them)
_to_device = to_device


def _build_model(cfg_model: Mapping[str, Any]) -> nn.Module:
    """The model of a config's ``model`` section (see :func:`clora3d.engine.build.build_model`)."""
    return build.build_model({"model": cfg_model})


def train(
    cfg: Mapping[str, Any],
    *,
    ckpt: str | os.PathLike | None = None,
    resume: bool = False,
    run_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (a dict from :func:`~clora3d.engine.config.load_config`).

    ``ckpt``: pre-trained checkpoint loaded into the model before the PEFT method is applied.
    ``resume``: continue from ``<run_dir>/ckpt-last.pth``. ``run_dir``: default
    ``<log.root>/<name>``. Returns ``{"run_dir", "last": {...}, "best": {..., "epoch"},
    "history": [...], "selected_on": "test" | "val" | "train"}``.
    """
    cfg = validate_config(cfg)
    started_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg["train"]["device"])
    try:
        with deterministic(cfg["train"]["deterministic"]):
            return _Trainer(cfg, info, ckpt=ckpt, resume=resume, run_dir=run_dir).run()
    finally:
        if started_group and info.distributed:
            cleanup_distributed()


#: On CUDA, training steps between two reads of the device-side running sums / non-finite flag.
SYNC_EVERY = 20


class _Trainer:
    def __init__(self, cfg: dict, info: DistInfo, *, ckpt: Any, resume: bool, run_dir: Any) -> None:
        self.cfg, self.info = cfg, info
        self.task = get_task(cfg)
        self.callbacks = default_callbacks()
        self.device = info.device
        self.ckpt, self.resume = ckpt, resume
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg["log"]["root"]) / cfg["name"]
        tcfg = cfg["train"]
        if tcfg["batch_size"] % info.world_size:
            raise ConfigError(
                f"train.batch_size={tcfg['batch_size']} is the global batch and must "
                f"be divisible by the number of processes ({info.world_size})"
            )
        self.amp = tcfg["amp"] if self.device.type == "cuda" else False
        # one run per run dir: the lock is held (main process) until run() ends
        from clora3d.engine.runlock import RunDirLock
        from clora3d.storage import clean_stale_tmp

        self.lock = RunDirLock(self.run_dir)
        if info.is_main:
            self.lock.acquire()
            # temporary files of a checkpoint write that was killed: nobody else writes here now
            self._stale_removed = clean_stale_tmp(self.run_dir, max_age_s=0)
        try:
            self.log = RunLogger(
                self.run_dir,
                enabled=info.is_main,
                tensorboard=cfg["log"]["tensorboard"],
                csv_file=cfg["log"]["csv"],
                json_file=cfg["log"]["json"],
            )
        except BaseException:
            self.lock.release()
            raise
        if tcfg["amp"] and self.device.type != "cuda":
            self.log.info(
                f"train.amp={tcfg['amp']} ignored: mixed precision runs on CUDA only (device is {self.device})"
            )

    # -- setup ---------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        last = self.run_dir / LAST_CKPT
        if self.resume and not last.is_file():
            raise CheckpointError(
                f"--resume: no {LAST_CKPT} in {self.run_dir}; start a new run "
                f"without --resume or pass the run dir of an earlier run"
            )
        if not self.resume and last.is_file():
            raise ConfigError(
                f"run dir {self.run_dir} already holds a run ({LAST_CKPT}); pass "
                f"--resume to continue it or --run-dir to start a new one"
            )

    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        seed_everything(cfg["seed"] + info.rank)
        self._check_run_dir()
        barrier()
        self._setup_data()  # first: a missing data set fails before any model is built
        # re-seed: building a data cache may or may not draw random numbers (first run vs later
        # runs); the model initialisation must not depend on that
        seed_everything(cfg["seed"] + info.rank)

        # model, pre-trained weights, method -------------------------------------------------
        model = build.build_model(cfg)
        if self.ckpt is not None:
            report = build.load_weights(model, self.ckpt)
            self.log.info(f"loaded pre-trained weights from {self.ckpt}: {_report_text(report)}")
        self.method = build.build_method(model, cfg)
        model.to(self.device)
        self.model = model
        trainable = dict(self.method.trainable_parameters())
        self.params = list({id(p): p for p in trainable.values()}.values())
        n_train = sum(p.numel() for p in self.params)
        n_total = sum(p.numel() for p in model.parameters())
        self.log.info(
            f"model {cfg['model']['NAME']} ({n_total:,} parameters), peft {cfg['peft']['NAME']}: {n_train:,} trainable"
        )
        net: nn.Module = maybe_sync_bn(model, info, cfg["train"]["sync_bn"])
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.net = self.forward_net = net
        torch.set_float32_matmul_precision(cfg["train"]["matmul_precision"])
        mode = cfg["train"]["compile"]
        if mode:  # Inductor draws eager's random numbers there: resume stays exact
            self.forward_net = build.compile_forward(net, mode)
            self.log.info(f"train.compile={mode}: the training forward is compiled (fullgraph)")

        self.optimizer, self.scheduler = build.build_optimizer(self.method, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

    def _setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        splits = build.build_datasets(cfg)
        self.select_split = self.task.selection_split(splits.val is not None, splits.test is not None)
        self.eval_ds = {"val": splits.val, "test": splits.test}.get(self.select_split)
        train_ds = splits.train
        tcfg = cfg["train"]
        local_bs = tcfg["batch_size"] // info.world_size
        self.train_sampler = DistributedSampler(
            train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg["seed"], drop_last=True
        )
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(
            train_ds,
            batch_size=local_bs,
            sampler=self.train_sampler,
            num_workers=tcfg["num_workers"],
            drop_last=tcfg["drop_last"],
            collate_fn=collate,
            worker_init_fn=worker_init,
            pin_memory=pin,
        )
        if len(self.train_loader) == 0:
            raise ConfigError(
                f"the train set has {len(train_ds)} samples, fewer than "
                f"train.batch_size={tcfg['batch_size']} with train.drop_last=true: "
                f"no batch to train on"
            )
        self.train_size = len(train_ds)
        self.eval_bs = cfg["eval"]["batch_size"] or 2 * tcfg["batch_size"]

        def loader(d: Dataset | None) -> DataLoader | None:
            if d is None:
                return None
            return DataLoader(
                d,
                batch_size=max(1, self.eval_bs // info.world_size),
                sampler=ShardSampler(len(d), info.rank, info.world_size),
                num_workers=tcfg["num_workers"],
                collate_fn=collate,
                worker_init_fn=worker_init,
                pin_memory=pin,
            )

        self.eval_loader = loader(self.eval_ds)
        self.test_loader = loader(splits.test) if splits.test is not self.eval_ds else self.eval_loader
        names = splits.attribute("class_names")
        # stored in the checkpoints so that inference can print class names
        self.class_names = [str(n) for n in names] if names else None
        self.task.seg_classes = splits.attribute("seg_classes")
        self.pipeline = build.build_train_pipeline(cfg)
        self.log.info(
            f"data: train {len(train_ds)} samples ({len(self.train_loader)} batches of "
            f"{local_bs} x {info.world_size} ranks), selection on {self.select_split}"
            + (f" ({len(self.eval_ds)} samples)" if self.eval_ds is not None else "")
        )

    # -- one epoch ------------------------------------------------------------------------------
    def _forward_loss(
        self, batch: dict[str, torch.Tensor], pts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(loss, correct (a 0-d tensor on the device: no host sync), count) of one batch."""
        return self.task.forward_loss(self.forward_net, unwrap(self.net), batch, pts)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        seed = cfg["seed"]
        seed_everything(derive_seed(seed, "epoch", epoch, info.rank))
        subset_gen = torch.Generator().manual_seed(derive_seed(seed, "subset", epoch))
        aug_gen = torch.Generator().manual_seed(derive_seed(seed, "aug", epoch))  # shared by ranks
        self.train_sampler.set_epoch(epoch)
        self.net.train()  # the DDP wrapper's own flag; the model's modules are set by the method:
        self.method.train()  # train mode + the frozen-BN policy (model.frozen_bn), decided there only
        params = self.params
        clip = cfg["train"]["grad_clip"]
        double = self.task.double_step()
        lr = self.optimizer.param_groups[0]["lr"]
        # running sums stay on the device (loss*count, correct, count, reg) and the non-finite check
        # is a device flag: a CUDA step reads nothing back to the host. The flag is read every
        # SYNC_EVERY steps and at the end of the epoch (on the CPU every step: reading is free
        # there), always before the epoch's checkpoint, so a diverged epoch is never saved.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*count, correct, reg
        n_items = 0.0
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        sync_every = 1 if self.device.type == "cpu" else SYNC_EVERY
        n_batches = 0
        t0 = time.time()
        bar = _progress(
            self.train_loader,
            enabled=info.is_main and cfg["log"]["progress"],
            desc=f"epoch {epoch}/{cfg['train']['epochs'] - 1}",
        )
        amp_ctx = (
            torch.autocast("cuda", dtype=torch.float16 if self.amp == "fp16" else torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        # under autocast the frozen weights are cast once per epoch, not at every step, and the
        # trainable ones all together at each forward (a compiled forward does its own casts; under
        # DDP each gradient keeps its own conversion, so that the reducer overlaps the backward)
        eager = self.forward_net is self.net and not info.distributed

        def casts() -> contextlib.AbstractContextManager:
            return trainable_casts(self.model) if eager else contextlib.nullcontext()

        with reuse_frozen_casts(self.model) if self.amp else contextlib.nullcontext():
            for batch in bar:
                batch = _to_device(batch, self.device)
                pts = self.pipeline(
                    batch["points"].float(),
                    subset_gen=subset_gen,
                    aug_gen=aug_gen,
                    rank=info.rank,
                    world_size=info.world_size,
                )
                with amp_ctx, casts():
                    loss, correct, count = self._forward_loss(batch, pts)
                reg = self.method.regularization_loss()
                reg = reg.to(loss.device) if isinstance(reg, torch.Tensor) else torch.tensor(float(reg))
                total = loss + reg
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(total.detach()), n_batches, bad_step)
                if (n_batches + 1) % sync_every == 0:
                    self._raise_if_not_finite(epoch, bad_step)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(total).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    total.backward()
                if double:  # reference quirk: step, clip, step again with the same gradients
                    self.optimizer.step()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip, norm_type=2.0)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                sums += torch.stack([loss.detach().double() * count, correct.double(), reg.detach().double()])
                n_items += count
                n_batches += 1
                if hasattr(bar, "set_postfix") and n_batches % sync_every == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.2e}")
        self._raise_if_not_finite(epoch, bad_step)
        loss_sum, correct_sum, reg_sum = sums.tolist()
        tot = all_reduce_sum([loss_sum, correct_sum, n_items, reg_sum, n_batches], self.device)
        count = max(tot[2], 1.0)
        out = {"loss": tot[0] / count, "lr": lr, "time": time.time() - t0}
        if self.task.train_accuracy:
            out["acc"] = 100.0 * tot[1] / count
        if tot[3]:
            out["reg_loss"] = tot[3] / max(tot[4], 1.0)
        return out

    @staticmethod
    def _raise_if_not_finite(epoch: int, bad_step: torch.Tensor) -> None:
        """Raise when a step of this epoch had a non-finite loss (reads the device flag: a sync)."""
        step = int(bad_step)
        if step >= 0:
            raise FloatingPointError(
                f"epoch {epoch}: the loss is not finite (NaN or inf) at step {step}; "
                f"lower optimizer.lr or enable train.grad_clip"
            )

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, loader: DataLoader | None, vote: int = 0, vote_passes: int = 1) -> dict[str, Any] | None:
        if loader is None:
            return None
        return self.task.evaluate(self.model, loader, device=self.device, vote=vote, vote_passes=vote_passes)

    # -- main loop ----------------------------------------------------------------------------------
    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def run(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        try:
            removed = getattr(self, "_stale_removed", [])
            if removed:
                self.log.info(
                    f"removed {len(removed)} temporary file(s) of an interrupted write: "
                    f"{', '.join(p.name for p in removed[:5])}"
                )
            if self.lock.took_over:
                h = self.lock.took_over
                self.log.info(
                    f"took over the lock of an earlier run that ended without releasing it "
                    f"(pid {h.get('pid')} on {h.get('host')}, started {h.get('started')})"
                )
            self._setup()
            self.history: list[dict[str, Any]] = []
            self.best: dict[str, Any] | None = None
            start = resume(self) if self.resume else 0
            if info.is_main:
                self.log.write_text("config.yaml", dump_config(cfg))
                self.log.write_json("env.json", environment_info())
                if start == 0:
                    self.log.info(f"run dir {self.run_dir}\n--- resolved config ---\n{dump_config(cfg)}---")
            epochs = cfg["train"]["epochs"]
            key = self.task.select_key
            for epoch in range(start, epochs):
                tr = self._train_epoch(epoch)
                self.scheduler.step(epoch)
                rec: dict[str, Any] = {"epoch": epoch, "train": tr}
                self._emit("on_train_epoch", epoch, tr)
                do_eval = (epoch + 1) % cfg["train"]["val_freq"] == 0 or epoch == epochs - 1
                metrics = self._evaluate(self.eval_loader) if do_eval else None
                if metrics is None:
                    metrics = self.task.fallback_metrics(tr, self.eval_loader is not None)
                if metrics is not None:
                    m = _scalars(metrics)
                    rec[self.select_split] = m
                    self._emit("on_validation", epoch, m)
                    if self.selects and self.task.is_better(m[key], self.best[key] if self.best else None):
                        self.best = {"epoch": epoch, **m}
                        self._emit("on_best", epoch, m)
                        rec["is_best"] = True
                self.history.append(rec)
                self._emit("on_epoch_end", epoch, rec)
                barrier()
            result = self._finish()
            self.log.write_json("result.json", result)
            return result
        finally:
            self.log.close()
            self.lock.release()

    @property
    def selects(self) -> bool:
        """Whether a "best" epoch is chosen (pre-training with pretrain_select: last keeps the last,
        as the reference runner, which writes no ckpt-best.pth)."""
        return self.task.selects

    def _finish(self) -> dict[str, Any]:
        """The run's result: last and best epoch (+ test set / vote@N), protocol, history."""
        return final_report(self)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _progress(it: Iterable, *, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


def _report_text(report: Any) -> str:
    parts = []
    for name in ("loaded", "missing", "unexpected"):
        v = getattr(report, name, None)
        if v is not None:
            parts.append(f"{len(v)} {name}")
    return ", ".join(parts) if parts else str(report)

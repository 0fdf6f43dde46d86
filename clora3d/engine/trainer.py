"""The training loop: classification, part segmentation and Point-MAE pre-training.

``train(cfg, ckpt=..., resume=..., run_dir=...)`` runs one config end to end:

1. validate the config, start DDP when launched by torchrun, seed, create / reopen the run dir;
2. build the model (``clora3d.models.build_model``), load the pre-trained checkpoint
   (``load_pretrained``), apply the PEFT method (``clora3d.peft.apply_peft``); the optimizer sees
   exactly the method's ``trainable_parameters()`` (AdamW groups, see ``optim``), the loss adds the
   method's ``regularization_loss()``;
3. every epoch: ``model.train()`` + the frozen-BN policy, the reference batch pipeline (FPS to
   ``point_all``, one random subset of ``npoints`` shared by the batch, then the augmentations),
   loss, backward, gradient clipping, step; the scheduler steps once at the end of the epoch;
   evaluation every ``val_freq`` epochs; ``ckpt-best.pth`` when the selection metric improves and
   ``ckpt-last.pth`` (full state) after every epoch, both written atomically;
4. at the end: the last and the best epoch are reported separately (plus vote@10 when asked).

Determinism and resume: at the start of every epoch the torch / numpy / Python RNGs are re-seeded
from (seed, epoch, rank), the sampler permutation comes from (seed, epoch) and the shared subset
generator from (seed, epoch); ``ckpt-last.pth`` also stores every RNG state. A run resumed from
``ckpt-last.pth`` therefore continues exactly like the uninterrupted run (bit-identical on the CPU
with ``num_workers: 0`` or any fixed number of workers).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from clora3d.engine.checkpoint import (atomic_save, load_checkpoint, restore_training_state,
                                       training_state)
from clora3d.engine.config import default_point_all, dump_config, validate_config
from clora3d.engine.distributed import (DistInfo, ShardSampler, all_reduce_sum, barrier,
                                        cleanup_distributed, init_distributed, maybe_sync_bn, unwrap)
from clora3d.engine.logging import RunLogger, environment_info
from clora3d.engine.optim import build_optimizer, build_scheduler
from clora3d.errors import CheckpointError, ConfigError

__all__ = ["train", "derive_seed", "seed_everything", "TrainBatchPipeline", "LAST_CKPT", "BEST_CKPT"]

LAST_CKPT = "ckpt-last.pth"
BEST_CKPT = "ckpt-best.pth"

# selection metric per task: (key, higher_is_better, strictly_better_only)
_SELECTION = {"classification": ("acc", True, True),      # reference: acc > best
              "partseg": ("inst_miou", True, False),      # reference: inst mIoU >= best
              "pretrain": ("loss", False, True)}


# ----------------------------------------------------------------------------------------------
# seeding
# ----------------------------------------------------------------------------------------------
def derive_seed(*parts: Any) -> int:
    """A 62-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return int(h[:15], 16)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """torch.use_deterministic_algorithms (warn_only) + cudnn flags for the run; restored after."""
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


# ----------------------------------------------------------------------------------------------
# batch pipeline
# ----------------------------------------------------------------------------------------------
class TrainBatchPipeline:
    """Reference training batch pipeline on batched tensors (point_mae_family §1.4).

    ``fps_subset``: FPS (first index 0) to ``point_all`` points (capped at the points available;
    skipped when it would keep every point, where it is only a reordering), then ONE random subset
    of ``npoints`` without replacement shared by the whole batch, then the augmentations.
    ``fps``: deterministic FPS to ``npoints``. ``none``: the points as loaded (part segmentation;
    labels stay aligned because no point is dropped or reordered).
    """

    def __init__(self, mode: str, npoints: int, point_all: int | None,
                 transform: Callable[..., torch.Tensor] | None) -> None:
        self.mode, self.npoints = mode, int(npoints)
        self.point_all = int(point_all) if point_all is not None else default_point_all(npoints)
        self.transform = transform

    def __call__(self, points: torch.Tensor, *, subset_gen: torch.Generator | None = None,
                 aug_gen: torch.Generator | None = None, rank: int = 0, world_size: int = 1
                 ) -> torch.Tensor:
        """Sample and augment one (per-rank) batch.

        Under DDP (``world_size > 1``) the rank's samples sit at positions ``rank, rank + W, ...``
        of the global batch (DistributedSampler interleaving); the augmentation is drawn for the
        whole global batch from the generator every rank shares and each rank keeps its rows, so
        every sample gets exactly the augmentation it gets in a single-process run.
        """
        from clora3d import ops

        n = points.shape[1]
        if self.mode != "none" and n < self.npoints:
            raise ConfigError(f"data.npoints={self.npoints} but the training clouds have only {n} "
                              f"points; lower data.npoints or use denser data")
        if self.mode == "fps_subset":
            pool = min(max(self.point_all, self.npoints), n)
            if pool < n:
                points = ops.gather_points(points, ops.furthest_point_sample(points.contiguous(), pool))
            idx = torch.randperm(pool, generator=subset_gen)[: self.npoints].to(points.device)
            points = points[:, idx, :]
        elif self.mode == "fps" and n > self.npoints:
            points = ops.gather_points(points, ops.furthest_point_sample(points.contiguous(), self.npoints))
        if self.transform is not None:
            if world_size > 1:
                full = points.new_zeros((points.shape[0] * world_size, *points.shape[1:]))
                full[rank::world_size] = points
                points = self.transform(full, generator=aug_gen)[rank::world_size]
            else:
                points = self.transform(points, generator=aug_gen)
        return points.contiguous()


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _build_model(cfg_model: Mapping[str, Any]) -> nn.Module:
    from clora3d.models import build_model

    spec = {k: v for k, v in cfg_model.items() if k != "frozen_bn"}
    try:
        return build_model(spec)
    except TypeError as e:  # an argument the constructor does not take
        raise ConfigError(f"model: cannot build {cfg_model.get('NAME')!r} from {spec}: {e}") from None


def _build_dataset(sec: Mapping[str, Any], split_default: str) -> Dataset:
    from clora3d.data import build_dataset

    spec = {k: v for k, v in sec.items() if k != "split"}
    return build_dataset(spec, sec.get("split", split_default))


def _holdout(ds: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Deterministic (train, val) split of ``ds`` holding out ``fraction`` of it for validation."""
    n = len(ds)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ConfigError(f"dataset.val.from_train={fraction} holds out {n_val} of {n} train "
                          f"samples; it must leave at least one sample on each side")
    g = torch.Generator().manual_seed(derive_seed(seed, "holdout"))
    perm = torch.randperm(n, generator=g).tolist()
    return Subset(ds, sorted(perm[n_val:])), Subset(ds, sorted(perm[:n_val]))


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)


def _collate(samples: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _NullPeft:
    """Stand-in for pre-training, where every parameter of the model trains."""

    name = "full"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros(())


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
def train(cfg: Mapping[str, Any], *, ckpt: str | os.PathLike | None = None, resume: bool = False,
          run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
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
        with _deterministic(cfg["train"]["deterministic"]):
            return _Trainer(cfg, info, ckpt=ckpt, resume=resume, run_dir=run_dir).run()
    finally:
        if started_group and info.distributed:
            cleanup_distributed()


#: On CUDA, training steps between two reads of the device-side running sums / non-finite flag.
SYNC_EVERY = 20


class _Trainer:
    def __init__(self, cfg: dict, info: DistInfo, *, ckpt: Any, resume: bool, run_dir: Any) -> None:
        self.cfg, self.info = cfg, info
        self.task = cfg["task"]
        self.device = info.device
        self.ckpt, self.resume = ckpt, resume
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg["log"]["root"]) / cfg["name"]
        tcfg = cfg["train"]
        if tcfg["batch_size"] % info.world_size:
            raise ConfigError(f"train.batch_size={tcfg['batch_size']} is the global batch and must "
                              f"be divisible by the number of processes ({info.world_size})")
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
            self.log = RunLogger(self.run_dir, enabled=info.is_main,
                                 tensorboard=cfg["log"]["tensorboard"],
                                 csv_file=cfg["log"]["csv"], json_file=cfg["log"]["json"])
        except BaseException:
            self.lock.release()
            raise
        if tcfg["amp"] and self.device.type != "cuda":
            self.log.info(f"train.amp={tcfg['amp']} ignored: mixed precision runs on CUDA only "
                          f"(device is {self.device})")

    # -- setup ---------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        last = self.run_dir / LAST_CKPT
        if self.resume and not last.is_file():
            raise CheckpointError(f"--resume: no {LAST_CKPT} in {self.run_dir}; start a new run "
                                  f"without --resume or pass the run dir of an earlier run")
        if not self.resume and last.is_file():
            raise ConfigError(f"run dir {self.run_dir} already holds a run ({LAST_CKPT}); pass "
                              f"--resume to continue it or --run-dir to start a new one")

    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        seed_everything(cfg["seed"] + info.rank)
        self._check_run_dir()
        barrier()
        self._setup_data()  # first: a missing data set fails before any model is built
        # re-seed: building a data cache may or may not draw random numbers (first run vs later
        # runs); the model initialisation must not depend on that
        seed_everything(cfg["seed"] + info.rank)

        # model, pre-trained weights, PEFT ---------------------------------------------------
        model = _build_model(cfg["model"])
        if self.ckpt is not None:
            from clora3d.models.checkpoint import load_pretrained

            report = load_pretrained(model, self.ckpt)
            self.log.info(f"loaded pre-trained weights from {self.ckpt}: {_report_text(report)}")
        if self.task == "pretrain" or (cfg["peft"]["NAME"] == "full"
                                       and not hasattr(model, "cls_head_finetune")):
            self.peft = _NullPeft(model)  # every parameter trains (pre-training, full part-seg)
        else:
            from clora3d.peft import apply_peft

            try:
                self.peft = apply_peft(model, dict(cfg["peft"]))
            except ValueError as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"peft.NAME={cfg['peft']['NAME']!r} cannot be applied to model "
                                  f"{cfg['model']['NAME']}: {e}") from None
        trainable = dict(self.peft.trainable_parameters())
        model.to(self.device)
        self.model = model
        self.trainable = trainable
        n_train = sum(p.numel() for p in {id(p): p for p in trainable.values()}.values())
        n_total = sum(p.numel() for p in model.parameters())
        self.log.info(f"model {cfg['model']['NAME']} ({n_total:,} parameters), peft "
                      f"{cfg['peft']['NAME']}: {n_train:,} trainable")
        net: nn.Module = maybe_sync_bn(model, info, cfg["train"]["sync_bn"])
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = self.forward_net = net
        torch.set_float32_matmul_precision(cfg["train"]["matmul_precision"])
        mode = cfg["train"]["compile"]
        if mode:
            # Inductor draws its own random numbers unless told to use eager's: with
            # fallback_random, dropout / drop path match eager and a resumed run stays exact
            import torch._inductor.config as inductor_config

            inductor_config.fallback_random = True
            kw = {"backend": "aot_eager"} if mode == "aot_eager" else (
                {"mode": mode} if isinstance(mode, str) else {})
            self.forward_net = torch.compile(net, fullgraph=True, **kw)
            self.log.info(f"train.compile={mode}: the training forward is compiled (fullgraph)")

        # optimisation -----------------------------------------------------------------------
        self.optimizer = build_optimizer(trainable, cfg["optimizer"])
        self.scheduler = build_scheduler(self.optimizer, cfg["scheduler"], cfg["train"]["epochs"])
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

    def _setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        from clora3d.data import build_transforms

        ds = cfg["dataset"]
        train_ds = _build_dataset(ds["train"], "train")
        val_ds = test_ds = None
        if "val" in ds:
            if "from_train" in ds["val"]:
                train_ds, val_ds = _holdout(train_ds, ds["val"]["from_train"], cfg["seed"])
            else:
                val_ds = _build_dataset(ds["val"], "val")
        if "test" in ds:
            test_ds = _build_dataset(ds["test"], "test")
        if self.task == "pretrain":
            self.select_split = "test" if test_ds is not None else "train"
            self.eval_ds = test_ds
        elif cfg["train"]["select_on_test"]:
            self.select_split, self.eval_ds = "test", test_ds
        else:
            self.select_split, self.eval_ds = "val", val_ds
        self.test_ds = test_ds

        tcfg = cfg["train"]
        local_bs = tcfg["batch_size"] // info.world_size
        self.train_sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                                shuffle=True, seed=cfg["seed"], drop_last=True)
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(train_ds, batch_size=local_bs, sampler=self.train_sampler,
                                       num_workers=tcfg["num_workers"], drop_last=tcfg["drop_last"],
                                       collate_fn=_collate, worker_init_fn=_worker_init,
                                       pin_memory=pin)
        if len(self.train_loader) == 0:
            raise ConfigError(f"the train set has {len(train_ds)} samples, fewer than "
                              f"train.batch_size={tcfg['batch_size']} with train.drop_last=true: "
                              f"no batch to train on")
        self.train_size = len(train_ds)
        eval_bs = cfg["eval"]["batch_size"] or 2 * tcfg["batch_size"]
        self.eval_bs = eval_bs

        def loader(d: Dataset | None) -> DataLoader | None:
            if d is None:
                return None
            return DataLoader(d, batch_size=max(1, eval_bs // info.world_size),
                              sampler=ShardSampler(len(d), info.rank, info.world_size),
                              num_workers=tcfg["num_workers"], collate_fn=_collate,
                              worker_init_fn=_worker_init, pin_memory=pin)

        self.eval_loader = loader(self.eval_ds)
        self.test_loader = loader(test_ds) if test_ds is not self.eval_ds else self.eval_loader
        names = getattr(train_ds, "class_names", None) or \
            getattr(getattr(train_ds, "dataset", None), "class_names", None)
        # stored in the checkpoints so that inference can print class names
        self.class_names = [str(n) for n in names] if names else None
        self.seg_classes = getattr(train_ds, "seg_classes", None) or \
            getattr(getattr(train_ds, "dataset", None), "seg_classes", None)
        dcfg = cfg["data"]
        transform = build_transforms(dcfg["train_transforms"]) if dcfg["train_transforms"] else None
        mode = dcfg["train_sampling"]
        self.pipeline = TrainBatchPipeline(mode, dcfg["npoints"], dcfg["point_all"], transform)
        self.log.info(f"data: train {len(train_ds)} samples ({len(self.train_loader)} batches of "
                      f"{local_bs} x {info.world_size} ranks), selection on {self.select_split}"
                      + (f" ({len(self.eval_ds)} samples)" if self.eval_ds is not None else ""))

    # -- one epoch ------------------------------------------------------------------------------
    def _forward_loss(self, batch: dict[str, torch.Tensor], pts: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(loss, correct (a 0-d tensor on the device: no host sync), count) of one batch."""
        if self.task == "classification":
            logits = self.forward_net(pts)
            label = batch["label"].view(-1).long()
            loss = F.cross_entropy(logits.float(), label,
                                   label_smoothing=self.cfg["train"]["label_smoothing"])
            return loss, (logits.detach().argmax(-1) == label).sum(), float(label.numel())
        if self.task == "partseg":
            m = unwrap(self.net)
            ncls = getattr(m, "num_classes", 16)
            onehot = F.one_hot(batch["cls"].view(-1).long(), ncls).to(pts.dtype)
            logp = self.forward_net(pts, onehot)
            seg = batch["seg"].long()
            loss = F.nll_loss(logp.float().reshape(-1, logp.shape[-1]), seg.reshape(-1))
            return loss, (logp.detach().argmax(-1) == seg).sum(), float(seg.numel())
        loss = self.forward_net(pts)
        return loss, loss.new_zeros(()), float(pts.shape[0])

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        seed = cfg["seed"]
        seed_everything(derive_seed(seed, "epoch", epoch, info.rank))
        subset_gen = torch.Generator().manual_seed(derive_seed(seed, "subset", epoch))
        aug_gen = torch.Generator().manual_seed(derive_seed(seed, "aug", epoch))  # shared by ranks
        self.train_sampler.set_epoch(epoch)
        self.net.train()
        from clora3d.models.utils import freeze_bn_stats

        if cfg["model"]["frozen_bn"] == "eval":
            freeze_bn_stats(self.model)
        params = [p for p in {id(p): p for p in self.trainable.values()}.values()]
        clip = cfg["train"]["grad_clip"]
        double = self.task == "partseg" and cfg["train"]["partseg_double_step"]
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
        bar = _progress(self.train_loader, enabled=info.is_main and cfg["log"]["progress"],
                        desc=f"epoch {epoch}/{cfg['train']['epochs'] - 1}")
        amp_ctx = (torch.autocast("cuda", dtype=torch.float16 if self.amp == "fp16" else torch.bfloat16)
                   if self.amp else contextlib.nullcontext())
        for batch in bar:
            batch = _to_device(batch, self.device)
            pts = self.pipeline(batch["points"].float(), subset_gen=subset_gen, aug_gen=aug_gen,
                                rank=info.rank, world_size=info.world_size)
            with amp_ctx:
                loss, correct, count = self._forward_loss(batch, pts)
            reg = self.peft.regularization_loss()
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
        sums = [loss_sum, correct_sum, n_items, reg_sum]
        tot = all_reduce_sum([*sums, n_batches], self.device)
        count = max(tot[2], 1.0)
        out = {"loss": tot[0] / count, "lr": lr, "time": time.time() - t0}
        if self.task != "pretrain":
            out["acc"] = 100.0 * tot[1] / count
        if tot[3]:
            out["reg_loss"] = tot[3] / max(tot[4], 1.0)
        return out

    @staticmethod
    def _raise_if_not_finite(epoch: int, bad_step: torch.Tensor) -> None:
        """Raise when a step of this epoch had a non-finite loss (reads the device flag: a sync)."""
        step = int(bad_step)
        if step >= 0:
            raise FloatingPointError(f"epoch {epoch}: the loss is not finite (NaN or inf) at step {step}; "
                                     f"lower optimizer.lr or enable train.grad_clip")

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, loader: DataLoader | None, vote: int = 0,
                  vote_passes: int = 1) -> dict[str, Any] | None:
        if loader is None:
            return None
        model = self.model
        if self.task == "classification":
            from clora3d.engine.evaluate import evaluate_classification

            dcfg = self.cfg["data"]
            pa = dcfg["point_all"] or default_point_all(dcfg["npoints"])
            return evaluate_classification(model, loader, device=self.device, npoints=dcfg["npoints"],
                                           vote=vote, point_all=pa, vote_repeats=vote_passes)
        if self.task == "partseg":
            from clora3d.engine.evaluate import evaluate_partseg

            return evaluate_partseg(model, loader, device=self.device, seg_classes=self.seg_classes)
        return self._evaluate_pretrain(loader)

    @torch.no_grad()
    def _evaluate_pretrain(self, loader: DataLoader) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        g = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg["seed"], "eval-mask"))
        loss_sum, n = 0.0, 0.0
        npoints = self.cfg["data"]["npoints"]
        from clora3d import ops

        for batch in loader:
            pts = batch["points"].to(self.device).float()
            if pts.shape[1] > npoints:
                pts = ops.gather_points(pts, ops.furthest_point_sample(pts.contiguous(), npoints))
            loss = self.model(pts, generator=g)
            loss_sum += float(loss) * pts.shape[0]
            n += pts.shape[0]
        self.model.train(was)
        s = all_reduce_sum([loss_sum, n], self.device)
        return {"loss": s[0] / max(s[1], 1.0), "count": int(s[1])}

    def _is_better(self, value: float, best: float | None) -> bool:
        _, higher, strict = _SELECTION[self.task]
        if best is None:
            return True
        if higher:
            return value > best if strict else value >= best
        return value < best if strict else value <= best

    # -- checkpoints ------------------------------------------------------------------------------
    def _model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _save_best(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if not self.info.is_main or not self.cfg["train"]["save_best"]:
            return
        atomic_save({"format_version": 1, "kind": "best", "epoch": epoch, "metrics": _plain(metrics),
                     "selected_on": self.select_split, "config": self.cfg,
                     "class_names": self.class_names,
                     "model": self._model_state()}, self.run_dir / BEST_CKPT)

    def _save_last(self, epoch: int) -> None:
        if not self.info.is_main:
            return
        state = training_state(model_state=self._model_state(), optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, epoch=epoch,
                               best=_plain(self.best) if self.best else None,
                               history=_plain(self.history),
                               extra={"config": self.cfg, "class_names": self.class_names})
        atomic_save(state, self.run_dir / LAST_CKPT)

    def _try_resume(self) -> int:
        if not self.resume:
            return 0
        path = self.run_dir / LAST_CKPT
        state = load_checkpoint(path)
        restore_training_state(state, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, path=path)
        saved_cfg = state.get("extra", {}).get("config")
        if saved_cfg is not None:
            diff = _config_diff(saved_cfg, self.cfg, ignore=("log", "train.num_workers",
                                                             "train.epochs", "train.device"))
            if diff:
                self.log.info(f"warning: resuming with a config that differs from the saved one "
                              f"in {', '.join(diff)}; the result will not equal an uninterrupted run")
        self.history = list(state.get("history") or [])
        self.best = dict(state["best"]) if state.get("best") else None
        start = int(state["epoch"]) + 1
        self.log.info(f"resumed from {path} at epoch {start}")
        return start

    # -- main loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        try:
            removed = getattr(self, "_stale_removed", [])
            if removed:
                self.log.info(f"removed {len(removed)} temporary file(s) of an interrupted write: "
                              f"{', '.join(p.name for p in removed[:5])}")
            if self.lock.took_over:
                h = self.lock.took_over
                self.log.info(f"took over the lock of an earlier run that ended without releasing it "
                              f"(pid {h.get('pid')} on {h.get('host')}, started {h.get('started')})")
            self._setup()
            self.history: list[dict[str, Any]] = []
            self.best: dict[str, Any] | None = None
            start = self._try_resume()
            if info.is_main:
                self.log.write_text("config.yaml", dump_config(cfg))
                self.log.write_json("env.json", environment_info())
                if start == 0:
                    self.log.info(f"run dir {self.run_dir}\n--- resolved config ---\n"
                                  f"{dump_config(cfg)}---")
            epochs = cfg["train"]["epochs"]
            key = _SELECTION[self.task][0]
            for epoch in range(start, epochs):
                tr = self._train_epoch(epoch)
                self.scheduler.step(epoch)
                rec: dict[str, Any] = {"epoch": epoch, "train": tr}
                self.log.info(f"[Training] EPOCH: {epoch} EpochTime = {tr['time']:.3f} (s) Losses = "
                              f"{_loss_list(tr)} lr = {tr['lr']:.6f}")
                self.log.scalars("train", tr, epoch)
                do_eval = (epoch + 1) % cfg["train"]["val_freq"] == 0 or epoch == epochs - 1
                metrics = self._evaluate(self.eval_loader) if do_eval else None
                if metrics is None and self.task == "pretrain" and self.eval_loader is None:
                    metrics = {"loss": tr["loss"]}  # pre-training without a test set: train loss
                if metrics is not None:
                    m = _scalars(metrics)
                    rec[self.select_split] = m
                    self.log.info(f"[Validation] EPOCH: {epoch}  " + "  ".join(
                        f"{k} = {v:.4f}" for k, v in m.items() if k in _SHOWN))
                    self.log.scalars(self.select_split, m, epoch)
                    if self.selects and self._is_better(m[key],
                                                        self.best[key] if self.best else None):
                        self.best = {"epoch": epoch, **m}
                        self._save_best(epoch, m)
                        rec["is_best"] = True
                self.history.append(rec)
                self.log.write_history(self.history)
                self._save_last(epoch)
                if snapshot_due(epoch, cfg["train"]["snapshot_every"], cfg["train"]["snapshot_from"]):
                    self._save_snapshot(epoch)
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
        return not (self.task == "pretrain" and self.cfg["train"]["pretrain_select"] == "last")

    def _save_snapshot(self, epoch: int) -> None:
        """``ckpt-epoch-XXX.pth``: a copy of ``ckpt-last.pth`` (reference pre-training keeps one
        every 25 epochs from epoch 250)."""
        if not self.info.is_main:
            return
        import shutil

        dst = self.run_dir / f"ckpt-epoch-{epoch:03d}.pth"
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(self.run_dir / LAST_CKPT, tmp)
        os.replace(tmp, dst)

    def _protocol(self) -> dict[str, Any]:
        """The protocol knobs in effect, labelled (reference value vs clora3d switch), for results."""
        cfg, t = self.cfg, self.cfg["train"]
        out: dict[str, Any] = {"frozen_bn": cfg["model"]["frozen_bn"] + (
            " (reference: frozen BN statistics drift)" if cfg["model"]["frozen_bn"] == "train"
            else " (strict: frozen BN statistics fixed; the references let them drift)"),
            "grad_clip": t["grad_clip"]}
        if self.task == "pretrain":
            out["model_selection"] = ("last epoch, no selection (reference)" if not self.selects
                                      else "lowest Chamfer loss on dataset.test (clora3d switch)")
        else:
            out["model_selection"] = ("best epoch on the TEST set (reference quirk)"
                                      if self.select_split == "test" else "best epoch on dataset.val")
        if self.task == "partseg":
            out["partseg_double_step"] = (
                "two optimizer steps per batch (reference quirk)" if t["partseg_double_step"]
                else "one optimizer step per batch (clean)")
        if self.task == "classification" and cfg["eval"]["vote"]:
            out["vote"] = (f"vote@{cfg['eval']['vote']}: {cfg['eval']['vote_passes']} pass(es); "
                           f"acc_vote@{cfg['eval']['vote']} = first pass"
                           + (f", _max_of_{cfg['eval']['vote_passes']} = best pass (reference "
                              f"protocol when 299), _mean_of_{cfg['eval']['vote_passes']} = mean"
                              if cfg["eval"]["vote_passes"] > 1 else ""))
        return out

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        if not self.history:
            raise ConfigError(f"nothing to do: the run in {self.run_dir} already finished "
                              f"train.epochs={cfg['train']['epochs']}")
        last_rec = self.history[-1]
        last_epoch = last_rec["epoch"]
        evals = [h for h in self.history if self.select_split in h]
        last = {"epoch": last_epoch, **(evals[-1][self.select_split] if evals and
                                        evals[-1]["epoch"] == last_epoch else {})}
        best = dict(self.best) if self.best else {"epoch": None}
        if self.task == "partseg" and evals:
            # Cls. mIoU two ways: `cls_miou` at the best-Inst.-mIoU epoch (clean) and the
            # reference's own running maximum over epochs (segmentation/main.py tracks
            # best_class_avg_iou separately, so it may come from another epoch)
            e_max = max(evals, key=lambda h: h[self.select_split].get("cls_miou", float("-inf")))
            best["cls_miou_max_over_epochs"] = e_max[self.select_split].get("cls_miou")
            best["cls_miou_max_epoch"] = e_max["epoch"]
            self.log.info(f"Cls. mIoU: {_get(best, 'cls_miou')} at the best Inst. mIoU epoch "
                          f"{best.get('epoch')} (clean); {_get(best, 'cls_miou_max_over_epochs')} = "
                          f"max over epochs, at epoch {e_max['epoch']} (reference's way)")
        vote = cfg["eval"]["vote"]
        passes = cfg["eval"]["vote_passes"]
        need_test = self.select_split == "val" and self.test_loader is not None
        if need_test or vote:
            last_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            if need_test:
                last["test"] = _scalars(self._evaluate(self.test_loader))
            if vote:
                last.update(_vote_keys(self._evaluate(self.test_loader, vote=vote,
                                                      vote_passes=passes)))
            best_path = self.run_dir / BEST_CKPT
            if best.get("epoch") is not None and cfg["train"]["save_best"]:
                barrier()
                best_ckpt = load_checkpoint(best_path)
                self.model.load_state_dict(best_ckpt["model"])
                if need_test:
                    best["test"] = _scalars(self._evaluate(self.test_loader))
                if vote:
                    best.update(_vote_keys(self._evaluate(self.test_loader, vote=vote,
                                                          vote_passes=passes)))
                self.model.load_state_dict(last_state)
        key = _SELECTION[self.task][0]
        self.log.info(f"done. last epoch {last_epoch}: {key} = {_get(last, key)}; best epoch "
                      f"{best.get('epoch')} (selected on {self.select_split}): {key} = "
                      f"{_get(best, key)}"
                      + (f"; test: last {last['test'].get(key)}, best {best.get('test', {}).get(key)}"
                         if "test" in last else "")
                      + (f"; vote@{vote} (first pass): last {last.get(f'acc_vote@{vote}')}, best "
                         f"{best.get(f'acc_vote@{vote}')}" if vote else "")
                      + (f"; vote@{vote} best of {passes} passes (reference protocol"
                         f"{'' if passes == 299 else ' with 299'}): last "
                         f"{last.get(f'acc_vote@{vote}_max_of_{passes}')}, best "
                         f"{best.get(f'acc_vote@{vote}_max_of_{passes}')}" if vote and passes > 1
                         else ""))
        return {"run_dir": str(self.run_dir), "task": self.task,
                "selected_on": self.select_split if self.selects else "last",
                "protocol": self._protocol(), "last": last, "best": best, "history": self.history}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
_SHOWN = ("acc", "inst_miou", "cls_miou", "loss")


def snapshot_due(epoch: int, every: int | None, start: int) -> bool:
    """Whether ``ckpt-epoch-XXX.pth`` is kept after ``epoch`` (reference pre-training: every 25
    epochs from epoch 250, i.e. ``epoch % 25 == 0 and epoch >= 250``)."""
    return bool(every) and epoch >= start and epoch % every == 0


def _vote_keys(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("acc_vote@")}


def _get(d: Mapping[str, Any], key: str) -> Any:
    v = d.get(key)
    return f"{v:.4f}" if isinstance(v, float) else v


def _loss_list(tr: Mapping[str, float]) -> str:
    vals = [tr["loss"]] + ([tr["acc"]] if "acc" in tr else [])
    return "[" + ", ".join(f"'{v:.4f}'" for v in vals) + "]"


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric entries (and the per-category table) of an evaluation result."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v) if isinstance(v, float) else int(v)
        elif k == "per_category" and isinstance(v, Mapping):
            out[k] = _plain(v)
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


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


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = (),
                 prefix: str = "") -> list[str]:
    ignore = tuple(ignore)
    out = []
    for k in sorted(set(a) | set(b)):
        p = f"{prefix}{k}"
        if p in ignore:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _config_diff(va, vb, ignore, p + ".")
        elif va != vb:
            out.append(p)
    return out

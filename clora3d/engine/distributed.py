"""Distributed data parallel helpers for runs launched with ``torchrun``.

``torchrun --nproc_per_node=N tools/train.py --cfg ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; :func:`init_distributed` reads them and starts the process group
(NCCL on CUDA, Gloo on the CPU). Without those variables everything runs in one process.

Batch split: ``train.batch_size`` is the GLOBAL batch. Each rank gets ``batch_size / world`` samples
of every global batch: a :class:`~torch.utils.data.DistributedSampler` (shuffle, fixed seed,
``set_epoch``, drop_last) interleaves the same permutation a single process would use, so the
union of the ranks' k-th batches is exactly the single-process k-th batch and the DDP-averaged
gradient equals the single-process gradient of the mean loss (up to what per-sample randomness
and per-rank BatchNorm statistics change). Evaluation shards the data without padding
(:class:`ShardSampler`) and the evaluation functions all-reduce sums and counts, so metrics are
exact.
"""

from __future__ import annotations

import datetime
import os
import pickle
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from clora3d.errors import ConfigError

__all__ = [
    "DistInfo",
    "env_world",
    "init_distributed",
    "cleanup_distributed",
    "is_main",
    "barrier",
    "active",
    "all_reduce_sum",
    "all_gather_list",
    "broadcast_object",
    "ShardSampler",
    "maybe_sync_bn",
    "unwrap",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 when absent)."""

    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None

    return _int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0)


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is available; use train.device=cpu or auto")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    n = torch.cuda.device_count()
    return torch.device("cuda", local_rank % max(n, 1))


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun; return this process's :class:`DistInfo`."""
    rank, world, local_rank = env_world()
    device = _pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device, None)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {missing} are not set: launch with torchrun --nproc_per_node=N tools/train.py ..."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank, world, local_rank, device, backend)


# Tensors handed to a collective by the helpers below, tracked by weak references until they die.
# A backend's worker thread (Gloo's) holds a collective's tensors a little after the collective has
# returned; when Python has dropped the tensor by then, the thread's release needs the GIL, and
# ProcessGroupGloo's destructor joins those threads while holding it (until pytorch#154976, June
# 2025): destroy_process_group() then deadlocks (torch 2.5.1: 5 in about 40 two-rank runs under
# load, the thread in ~AsyncAllreduceWork / ~AsyncAllgatherWork waiting for the GIL, the main thread
# in ~ProcessGroupGloo joining it). A tensor whose reference has died is gone, from the backend too,
# so cleanup_distributed() waits for that first. The references are never dereferenced (that would
# lend the worker thread a Python reference in the middle of its release): their callbacks, run by
# whichever thread drops the tensor, take them off the table.
_PENDING: dict[int, weakref.ref] = {}

#: How long cleanup_distributed() waits for the backend to let go of the helpers' tensors. A tensor
#: still referenced from Python (kept alive by something else) keeps its reference alive too and
#: makes the wait run out; such a tensor needs no GIL-taking release and cannot deadlock.
RELEASE_WAIT_S = 10.0


def _released(ref: weakref.ref) -> None:
    _PENDING.pop(id(ref), None)


def _hand_over(*tensors: torch.Tensor) -> None:
    for t in tensors:
        ref = weakref.ref(t, _released)
        _PENDING[id(ref)] = ref


def _wait_for_release(timeout_s: float) -> bool:
    """Sleep (without the GIL) until every tensor handed over is gone; False on timeout."""
    end = time.monotonic() + timeout_s
    while _PENDING:
        if time.monotonic() >= end:
            return False
        time.sleep(0.002)
    return True


def cleanup_distributed() -> None:
    """Destroy the process group if one is active, once the backend has released the helpers' tensors."""
    if dist.is_available() and dist.is_initialized():
        if not _wait_for_release(RELEASE_WAIT_S):
            warnings.warn(
                f"cleanup_distributed: {len(_PENDING)} tensor(s) given to a collective are still alive after "
                f"{RELEASE_WAIT_S:g} s; destroying the process group anyway",
                RuntimeWarning,
                stacklevel=2,
            )
        dist.destroy_process_group()
    _PENDING.clear()


def active() -> bool:
    """True when a process group is initialised (the collectives below are identities otherwise)."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0 (or without a process group)."""
    return not active() or dist.get_rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _collective_device(device: torch.device | str | None = None) -> torch.device:
    """Where a collective's tensors live: the CPU for Gloo, this rank's GPU for NCCL."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum scalars over ranks (float64); identity without a process group."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    _hand_over(t)
    return [float(v) for v in t.cpu()]


# The object collectives pickle into byte tensors of their own, as all_gather_object and
# broadcast_object_list do, so that the tensors given to the backend can be handed over (see
# _PENDING): torch's make theirs internally, out of reach. The byte-level functions return Python
# bytes, so no tensor outlives them in a traceback when unpickling fails.
def _bytes_tensor(payload: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)


def _gather_bytes(payload: bytes) -> list[bytes]:
    """Every rank's ``payload``, in rank order, each exactly as long as it was sent."""
    dev, world = _collective_device(), dist.get_world_size()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=dev)
    padded[: len(payload)] = _bytes_tensor(payload)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    _hand_over(size, *sizes, padded, *parts)
    return [part[:n].cpu().numpy().tobytes() for part, n in zip(parts, lengths)]


def _broadcast_bytes(payload: bytes | None, src: int) -> bytes:
    """``src``'s ``payload`` on every rank (``payload`` is given on ``src`` only)."""
    dev = _collective_device()
    mine = dist.get_rank() == src
    size = torch.tensor([len(payload) if mine else 0], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=src)
    buf = _bytes_tensor(payload).to(dev) if mine else torch.empty(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=src)
    _hand_over(size, buf)
    return payload if mine else buf.cpu().numpy().tobytes()


def all_gather_list(items: list) -> list:
    """Concatenate a python list over all ranks, in rank order (identity without a process group)."""
    if not active():
        return items
    return [x for part in _gather_bytes(pickle.dumps(items)) for x in pickle.loads(part)]


def broadcast_object(obj: object, src: int = 0) -> object:
    """Broadcast a picklable object from ``src`` to every rank (identity without a group; ``src``
    keeps its own object)."""
    if not active():
        return obj
    mine = dist.get_rank() == src
    data = _broadcast_bytes(pickle.dumps(obj) if mine else None, src)
    return obj if mine else pickle.loads(data)


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``W`` gets indices ``r, r+W, r+2W, ...`` in order: no shuffling, no padding.

    For evaluation: every sample is seen exactly once across ranks, so all-reduced sums and counts
    give the exact single-process metric.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def maybe_sync_bn(model: nn.Module, info: DistInfo, enabled: bool) -> nn.Module:
    """Convert BatchNorm to SyncBatchNorm when ``enabled`` under multi-GPU DDP.

    SyncBatchNorm needs CUDA; on the CPU (Gloo) it raises a ConfigError instead of failing deep in
    the first forward. In a single process it is a no-op (no SyncBN crash on one GPU).
    """
    if not enabled or not info.distributed:
        return model
    if info.device.type != "cuda":
        raise ConfigError(
            "train.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm does not run "
            "on the CPU); set train.sync_bn=false for CPU/Gloo runs"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model

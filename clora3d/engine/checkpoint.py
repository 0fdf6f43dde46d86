"""Training checkpoints: full-state resume.

A checkpoint is a plain dict of tensors and Python scalars written by
:func:`clora3d.storage.atomic_torch_save` (temporary file + fsync + rename, tensor checksum) and read
back by :func:`clora3d.storage.safe_torch_load` (``weights_only=True``, checksum verified): a crash at
any point leaves either the previous file or the new one under the final name.

Full training state (:func:`training_state` / :func:`restore_training_state`): model, optimizer,
scheduler, AMP scaler, epoch, best metrics, history, and the RNG states of torch (CPU and CUDA),
numpy and Python ``random``, so a resumed run continues bit-identically on the CPU.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clora3d.errors import CheckpointError
from clora3d.storage import atomic_torch_save, safe_torch_load

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "training_state",
    "restore_training_state",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1


#: Alias of :func:`clora3d.storage.atomic_torch_save` (the one atomic torch writer), kept because the
#: trainer and tests import it from here.
atomic_save = atomic_torch_save


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint (:func:`clora3d.storage.safe_torch_load`) and check it is a dict."""
    path = Path(path)
    obj = safe_torch_load(path, what="checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


# -- RNG ---------------------------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, every CUDA device), numpy and Python, as weights_only-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- full training state -----------------------------------------------------------------------
def training_state(
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    best: Mapping[str, Any] | None,
    history: list,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue training after ``epoch`` (0-based index of the last epoch done)."""
    return {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "model": dict(model_state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best": dict(best) if best else None,
        "history": list(history),
        "rng": get_rng_state(),
        "extra": dict(extra or {}),
    }


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    path: str | os.PathLike = "<checkpoint>",
) -> None:
    """Load model / optimizer / scheduler / scaler / RNG from a :func:`training_state` dict."""
    missing = [k for k in ("epoch", "model", "optimizer", "scheduler", "rng") if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a clora3d training checkpoint (missing {missing}); "
            f"--resume needs ckpt-last.pth from a clora3d run dir"
        )
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: model weights do not match this config's model ({first}); resume with the same config"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise CheckpointError(
            f"{path}: optimizer state does not match this config's trainable "
            f"parameters ({e}); resume with the same config"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])

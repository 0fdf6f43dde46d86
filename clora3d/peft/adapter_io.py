"""Adapter files and the base-weight hash.

An adapter file is ``torch.save`` of ``{"metadata": {...}, "state": {name: tensor}}`` with plain
tensors and dicts only, written atomically and read with ``torch.load(weights_only=True)`` (both
through :mod:`clora3d.storage`). ``state`` holds the trained tensors under the names they have in
the adapted model (base keys untouched); ``metadata`` records the method, its resolved config (a
plain dict, so files written by older versions keep loading), the versions and a SHA-256 hash of the
frozen base parameters: an adapter loads only onto the base weights it was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import clora3d
from clora3d.errors import CheckpointError, ConfigError
from clora3d.storage import to_plain

if TYPE_CHECKING:
    from clora3d.peft.base import PeftMethod

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "clora3d-adapter"
ADAPTER_FORMAT_VERSION = 1


def hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Deterministic SHA-256 over sorted names, dtypes, shapes and raw bytes of the tensors."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def adapter_metadata(method: PeftMethod) -> dict[str, Any]:
    """What an adapter file records besides its tensors."""
    return {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "method": method.name,
        "config": to_plain(method.config),
        "clora3d_version": str(clora3d.__version__),
        "torch_version": str(torch.__version__),
        "base_hash": method.base_hash,
        "base_hash_numel": int(method.num_frozen_hashed),
        "model_config": to_plain(getattr(method.model, "config", {})),
    }


def save_adapter(method: PeftMethod, path: str | os.PathLike) -> Path:
    """Write ``method``'s adapter file (atomically); returns the path."""
    from clora3d.storage import atomic_torch_save

    return atomic_torch_save(
        {"metadata": adapter_metadata(method), "state": method.adapter_state_dict()}, Path(path), what="adapter"
    )


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter file safely; returns ``(metadata, state)``."""
    from clora3d.storage import safe_torch_load

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter file not found: {path}")
    blob = safe_torch_load(path, what="adapter file")
    if (
        not isinstance(blob, dict)
        or not isinstance(blob.get("metadata"), dict)
        or blob["metadata"].get("format") != ADAPTER_FORMAT
        or not isinstance(blob.get("state"), dict)
    ):
        raise CheckpointError(
            f"{path} is not a clora3d adapter file (expected a dict with 'metadata' of format "
            f"{ADAPTER_FORMAT!r} and 'state'); full checkpoints load with "
            f"clora3d.models.checkpoint.load_pretrained"
        )
    return blob["metadata"], blob["state"]


def load_adapter(model: nn.Module, path: str | os.PathLike) -> PeftMethod:
    """Apply the method recorded in the adapter file to ``model`` and load its tensors.

    ``model`` must be the plain backbone with the same base weights the adapter was trained on
    (checked with the stored hash of the frozen parameters); otherwise CheckpointError.
    """
    from clora3d.peft.registry import apply_peft

    meta, state = read_adapter(path)
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: adapter format version {meta.get('format_version')} is not supported "
            f"(this clora3d reads version {ADAPTER_FORMAT_VERSION})"
        )
    if meta.get("clora3d_version") != clora3d.__version__:
        warnings.warn(
            f"{path} was written by clora3d {meta.get('clora3d_version')}, this is {clora3d.__version__}", stacklevel=2
        )
    try:
        method = apply_peft(model, dict(meta["config"]), where=lambda p: "the adapter's metadata")
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored method config is not valid here: {e}") from e
    try:
        if method.base_hash != meta["base_hash"]:
            raise CheckpointError(
                f"{path}: adapter was trained on different base weights (frozen-parameter hash "
                f"{meta['base_hash'][:12]}..., this model {method.base_hash[:12]}...). Load the same pre-trained "
                f"checkpoint into the model before load_adapter"
            )
        expected = method.adapter_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: adapter keys do not match method {method.name!r}: missing {missing[:10]}, "
                f"unexpected {unexpected[:10]}"
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(
                    f"{path}: size mismatch for {k}: adapter {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    + (" (build the model with the adapter's cls_dim)" if k.startswith("cls_head_finetune") else "")
                )
        targets = {**dict(model.named_buffers()), **method.trainable_parameters()}
        with torch.no_grad():
            for k, v in state.items():
                targets[k].copy_(v)
    except BaseException:
        method.remove()
        raise
    log.debug("loaded adapter %s (method %s)", path, method.name)
    return method

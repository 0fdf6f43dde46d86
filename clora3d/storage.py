"""Writing and reading the project's files safely: atomic writes, tensor checksums, safe loading.

* :func:`atomic_write` / :func:`atomic_torch_save`: the data goes to a temporary file
  ``.<name>.<pid>-<random>.tmp`` in the destination folder, is flushed and ``fsync``-ed, then
  renamed over the final name with ``os.replace`` and the folder entry is synced. A kill or a full
  disk at any point leaves either the previous file or the new one under the final name; the
  temporary file is removed on failure, and one left by a killed process is removed by
  :func:`clean_stale_tmp` (next save of the same file, next run start in a run directory). A failed
  write (``ENOSPC``, permissions, ...) is one :class:`~clora3d.errors.StorageError` naming the file.
* Checksum: :func:`atomic_torch_save` of a dict adds ``"_clora3d_checksum"`` (SHA-256 over the
  names, dtypes, shapes and bytes of every tensor in it); :func:`safe_torch_load` verifies it and
  removes the entry, so a bit flip inside a tensor is one :class:`~clora3d.errors.CheckpointError`
  naming the file. Files written before checksums existed (no entry) load as before.
* :func:`safe_torch_load`: ``torch.load(weights_only=True)`` on the CPU; a file that references
  objects outside torch's allow-list is refused with :class:`~clora3d.errors.UnsafeCheckpointError`
  saying that nothing was executed (never suggesting ``weights_only=False``).
* :func:`to_plain`: the one converter of configs, metrics and metadata to plain JSON/YAML data
  (dicts with string keys, lists, str, int, float, bool, None) before they are written.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import pickle
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clora3d.errors import CheckpointError, CheckpointNotFoundError, StorageError, UnsafeCheckpointError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_torch_save",
    "safe_torch_load",
    "tensor_checksum",
    "verify_checksum",
    "clean_stale_tmp",
    "to_plain",
    "CHECKSUM_KEY",
]

CHECKSUM_KEY = "_clora3d_checksum"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$")


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
class _Sink:
    """File wrapper that remembers the first OSError of a write: torch.save swallows it into an
    'enforce fail ... unexpected pos' RuntimeError."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_tmp(folder: str | os.PathLike, name: str | None = None, *, max_age_s: float = 3600.0) -> list[Path]:
    """Remove temporary files of interrupted atomic writes in ``folder`` (of target ``name`` only,
    when given): those whose writer process is gone, and old ones without a process id (written
    before process ids were recorded) once older than ``max_age_s``. Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        m = _TMP_RE.match(p.name)
        if m is None or (name is not None and not m.group("name").startswith(name)):
            continue
        pid = m.group("pid")
        try:
            if pid is not None:
                stale = not _pid_alive(int(pid))
            else:
                stale = now - p.stat().st_mtime >= max_age_s
            if stale and p.is_file():
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, what: str = "file") -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise StorageError(f"cannot write {what} {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot write {what} {path}: cannot create its folder ({e.strerror or e})") from None
    clean_stale_tmp(path.parent, path.name)
    existed = path.exists()
    tmp = _tmp_name(path)
    sink: _Sink | None = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        err = (sink.error if sink is not None else None) or (e if isinstance(e, OSError) else None)
        if err is not None and not isinstance(err, StorageError):
            why = os.strerror(err.errno) if err.errno else str(err)
            hint = " (free some space and retry)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            kept = f"the previous {path.name} is unchanged" if existed else "nothing was written"
            se = StorageError(f"cannot write {what} {path}: {why}{hint}; {kept}")
            se.errno, se.strerror, se.filename = err.errno, why, str(path)
            raise se from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), what=what)


# ------------------------------------------------------------------------------------------------
# checksums
# ------------------------------------------------------------------------------------------------
def _walk_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            if prefix == "" and k == CHECKSUM_KEY:
                continue
            yield from _walk_tensors(obj[k], f"{prefix}/{type(k).__name__}:{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{prefix}[{i}]")


def tensor_checksum(obj: Any) -> dict[str, Any]:
    """``{"algorithm": "sha256", "tensors": n, "digest": hex}`` over every tensor inside ``obj``
    (name path, dtype, shape and raw bytes), ignoring an existing checksum entry."""
    import torch

    h = hashlib.sha256()
    n = 0
    for name, t in _walk_tensors(obj):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        n += 1
    return {"algorithm": "sha256", "tensors": n, "digest": h.hexdigest()}


def verify_checksum(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Check and remove the checksum entry of a loaded dict (no entry: an older file, accepted)."""
    if not isinstance(obj, dict) or CHECKSUM_KEY not in obj:
        return obj
    stored = obj.pop(CHECKSUM_KEY)
    if not isinstance(stored, dict) or stored.get("algorithm") != "sha256":
        raise CheckpointError(
            f"{what} {path} has an unreadable checksum entry; the file is corrupt: "
            "restore it from a backup or write it again"
        )
    got = tensor_checksum(obj)
    if got["digest"] != stored.get("digest") or got["tensors"] != stored.get("tensors"):
        raise CheckpointError(
            f"{what} {path} is corrupt: its tensors do not match the checksum "
            "stored when it was written (bit flip or damaged copy); restore it "
            "from a backup or write it again"
        )
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, what: str = "checkpoint", checksum: bool = True) -> Path:
    """``torch.save(obj)`` atomically; a dict gets a checksum of its tensors (see module doc)."""
    import torch

    if checksum and isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: tensor_checksum(obj)}
    return atomic_write(path, lambda f: torch.save(obj, f), what=what)


# ------------------------------------------------------------------------------------------------
# safe loading
# ------------------------------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike, *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with one clear error per failure, the
    checksum verified (and removed) when the file has one. The one safe loader of torch files
    (checkpoints, adapters, foreign Point-MAE / Point-BERT weights); restricted unpickling of ``.pkl``
    data files is :mod:`clora3d.data.safe_pickle`. A missing file is a
    :class:`~clora3d.errors.CheckpointNotFoundError` (also a ``FileNotFoundError``)."""
    import torch

    p = Path(path)
    if p.is_dir():
        inside = [n for n in ("ckpt-best.pth", "ckpt-last.pth") if (p / n).is_file()]
        hint = f" (this run folder has {' and '.join(inside)})" if inside else ""
        raise CheckpointError(f"{what} {p} is a directory; pass the .pth file inside it{hint}")
    if not p.is_file():
        raise CheckpointNotFoundError(f"{what} not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()
        culprit = next((ln.strip() for ln in detail if "GLOBAL" in ln or "Unsupported global" in ln), "")
        raise UnsafeCheckpointError(
            f"refused to load {what} {p}: it references Python objects outside torch's weights-only "
            f"allow-list, so loading it could run code; nothing was executed. Use only files from a "
            f"source you trust, saved as plain tensors (torch.save(model.state_dict(), ...))"
            + (f" [{culprit[:200]}]" if culprit else "")
        ) from None
    except MemoryError:
        raise CheckpointError(
            f"cannot read {what} {p}: out of memory (the file is corrupt or far larger than a model)"
        ) from None
    except Exception as exc:  # corrupt / foreign files fail in arbitrary ways inside the unpickler
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(
            f"cannot read {what} {p}: {type(exc).__name__}: {detail} (the file is corrupt or not a PyTorch checkpoint)"
        ) from None
    return verify_checksum(obj, p, what)


# ------------------------------------------------------------------------------------------------
# plain data
# ------------------------------------------------------------------------------------------------
def to_plain(obj: Any, *, nonfinite: str = "keep") -> Any:
    """``obj`` as plain data for JSON/YAML/metadata: mappings become dicts with ``str`` keys,
    lists/tuples become lists, dataclass instances dicts of their fields, ``os.PathLike`` its path
    string, numpy scalars and 0-d numpy arrays / torch tensors their Python value (``.item()``),
    larger arrays and tensors nested lists (``.tolist()``); anything else is returned unchanged.

    ``nonfinite="keep"`` leaves NaN and infinities as floats (YAML and torch files hold them);
    ``nonfinite="str"`` writes them as ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON readers
    refuse the bare ``NaN`` that :func:`json.dumps` would write).
    """
    if nonfinite not in ("keep", "str"):
        raise ValueError(f"to_plain: nonfinite must be 'keep' or 'str', got {nonfinite!r}")
    return _plain(obj, nonfinite == "str")


def _plain(obj: Any, nonfinite_str: bool) -> Any:
    if _is_array(obj):  # first: numpy's float64, str_ and bytes_ scalars are also float, str and bytes
        value = obj.item() if getattr(obj, "ndim", 1) == 0 else obj.tolist()
        return _plain(value, nonfinite_str)
    if isinstance(obj, float):
        return str(obj) if nonfinite_str and not math.isfinite(obj) else obj
    if obj is None or isinstance(obj, (str, bytes, bool, int)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, nonfinite_str) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, nonfinite_str) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name), nonfinite_str) for f in dataclasses.fields(obj)}
    return obj


def _is_array(obj: Any) -> bool:
    """numpy scalar / array or torch tensor, without importing either (they are imported when in use)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.generic, np.ndarray)):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)

"""Atomic writers (data cache, JSON results, run files, checkpoints): the final file is never opened
for writing, holds the old bytes until a complete temporary file is renamed over it, and a failure
at any step leaves the old file (or nothing) and no temporary file behind. Failures are injected."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from clora3d import storage
from clora3d.engine import checkpoint, fewshot

DATA = bytes(range(256)) * 64


def _torch_blob(data: bytes) -> dict:
    return {"blob": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()}


WRITERS = {
    "storage.atomic_write_bytes": lambda p: storage.atomic_write_bytes(p, DATA),
    "checkpoint.atomic_save": lambda p: checkpoint.atomic_save(_torch_blob(DATA), p),
    "fewshot json": lambda p: fewshot._write_json(p, {"data": DATA.hex()}),
}


def _is_new(path: Path, name: str) -> bool:
    """Whether ``path`` holds what writer ``name`` writes (read back independently)."""
    raw = path.read_bytes()
    if name == "checkpoint.atomic_save":
        obj = torch.load(path, weights_only=True)
        return bytes(obj["blob"].numpy().tobytes()) == DATA
    if name == "fewshot json":
        return json.loads(raw) == {"data": DATA.hex()}
    return raw == DATA


class _OpenSpy:
    """Records every path opened for writing through os.open / builtins.open."""

    def __init__(self, monkeypatch):
        self.written: list[Path] = []
        real_os_open, real_open = os.open, builtins.open

        def os_open(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                self.written.append(Path(os.fsdecode(path)).resolve())
            return real_os_open(path, flags, *a, **k)

        def open_(file, mode="r", *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self.written.append(Path(os.fsdecode(file)).resolve())
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)


@pytest.mark.parametrize("name", list(WRITERS))
def test_final_file_untouched_until_a_complete_temp_is_renamed_over_it(tmp_path, monkeypatch, name):
    final = tmp_path / "out.bin"
    final.write_bytes(b"OLD")
    renames = []
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        src, dst = Path(src), Path(dst)
        # at the moment of the rename: the old bytes are still there and the temp is complete
        assert final.read_bytes() == b"OLD"
        assert dst.resolve() == final.resolve() and src.parent.resolve() == final.parent.resolve()
        assert src != dst and _is_new(src, name)
        renames.append(src)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    spy = _OpenSpy(monkeypatch)
    WRITERS[name](final)
    monkeypatch.undo()
    assert len(renames) == 1
    assert final.resolve() not in spy.written  # never opened for writing
    assert _is_new(final, name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("existed", [True, False])
def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch, name, fail_at, existed):
    final = tmp_path / "out.bin"
    if existed:
        final.write_bytes(b"OLD")

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError) as info:
        WRITERS[name](final)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    if existed:
        assert final.read_bytes() == b"OLD"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    else:
        assert list(tmp_path.iterdir()) == []  # no partial file, no temp file


def test_modelnet_cache_write_failure_leaves_no_file(tmp_path, monkeypatch):
    from clora3d.data.modelnet import ModelNet40, cache_name
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=2, n_train=2, n_test=1, n_points=300, seed=0)
    cache = tmp_path / "cache"
    cache.mkdir()

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        ModelNet40(root, "train", n_points=64, cache_dir=cache)  # an explicit cache_dir must be writable
    monkeypatch.undo()
    assert list(cache.iterdir()) == []
    ds = ModelNet40(root, "train", n_points=64, cache_dir=cache)
    assert len(ds) == 4 and [p.name for p in cache.iterdir()] == [cache_name(40, "train", 64)]

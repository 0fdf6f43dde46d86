"""Atomic writer and checksum edges that mutation testing (group storage_checkpoint) and hand-made
mutations found unguarded. Expected values come from hashlib or are written out by hand."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from clora3d import storage
from clora3d.errors import CheckpointError


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, ValueError])
@pytest.mark.parametrize("existed", [True, False])
def test_interrupted_write_keeps_the_old_file_and_removes_the_temp(tmp_path, exc, existed):
    # Ctrl-C (a BaseException, not an Exception) in the middle of writing must clean up like an
    # I/O error: old file intact, no temp file, the interrupt propagates unchanged
    final = tmp_path / "out.bin"
    if existed:
        final.write_bytes(b"OLD")

    def write(f):
        f.write(b"partial")
        raise exc("stop")

    with pytest.raises(exc):
        storage.atomic_write(final, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.bin"] if existed else [])
    if existed:
        assert final.read_bytes() == b"OLD"


def test_atomic_write_refuses_a_directory_and_names_it(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write_bytes(d, b"x", what="adapter")
    assert str(info.value) == f"cannot write adapter {d}: it is a directory; give a file name"


def test_tensor_checksum_is_sha256_over_name_dtype_shape_bytes():
    a = torch.arange(4, dtype=torch.int32)
    b = torch.ones(2, 2, dtype=torch.float64) / 3
    obj = {"x": {"a": a}, "b": b, "note": "text"}
    got = storage.tensor_checksum(obj)
    assert got["algorithm"] == "sha256" and got["tensors"] == 2
    names = {n for n, _ in storage._walk_tensors(obj)}
    h = hashlib.sha256()
    for name, t in storage._walk_tensors(obj):
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    assert got["digest"] == h.hexdigest() and len(names) == 2
    # one bit of one tensor changes the digest
    b2 = b.clone()
    b2.view(torch.int64)[1, 1] ^= 1
    assert storage.tensor_checksum({"x": {"a": a}, "b": b2, "note": "text"})["digest"] != got["digest"]


def test_checksum_catches_a_flipped_bit_on_disk(tmp_path):
    path = tmp_path / "c.pth"
    storage.atomic_torch_save({"w": torch.linspace(0, 1, 64)}, path, what="checkpoint")
    assert torch.equal(storage.safe_torch_load(path)["w"], torch.linspace(0, 1, 64))
    blob = torch.load(path, weights_only=True)
    blob["w"][5] = torch.nextafter(blob["w"][5], torch.tensor(2.0))
    torch.save(blob, path)  # the stored checksum is the old one
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(path, what="checkpoint")
    assert str(info.value) == (f"checkpoint {path} is corrupt: its tensors do not match the checksum stored when "
                               "it was written (bit flip or damaged copy); restore it from a backup or write it again")
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))

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
    assert str(info.value) == (
        f"checkpoint {path} is corrupt: its tensors do not match the checksum stored when "
        "it was written (bit flip or damaged copy); restore it from a backup or write it again"
    )
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))


# ------------------------------------------------------------------------------ engine/checkpoint.py
def test_rng_state_round_trip_restores_every_generator(tmp_path):
    import random

    import numpy as np

    from clora3d.engine.checkpoint import atomic_save, get_rng_state, load_checkpoint, set_rng_state

    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.randn()  # leaves a cached gaussian behind in the legacy state
    random.gauss(0, 1)
    state = get_rng_state()
    want = (
        torch.rand(4),
        np.random.rand(4),
        np.random.randn(3),
        [random.random() for _ in range(4)],
        random.gauss(0, 1),
    )
    atomic_save({"rng": state}, tmp_path / "r.pth")
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (
        torch.rand(4),
        np.random.rand(4),
        np.random.randn(3),
        [random.random() for _ in range(4)],
        random.gauss(0, 1),
    )
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])
    assert got[3] == want[3] and got[4] == want[4]
    n = state["numpy"]
    assert n["name"] == "MT19937" and n["keys"].dtype == torch.int64 and n["keys"].numel() == 624
    assert isinstance(n["pos"], int) and isinstance(n["has_gauss"], int) and isinstance(n["cached_gaussian"], float)


def _toy_training():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_training_state_holds_everything_and_restores_it(tmp_path):
    from clora3d.engine.checkpoint import (
        FORMAT_VERSION,
        atomic_save,
        load_checkpoint,
        restore_training_state,
        training_state,
    )

    model, opt, sched = _toy_training()
    st = training_state(
        model_state=model.state_dict(),
        optimizer=opt,
        scheduler=sched,
        scaler=None,
        epoch=4,
        best={"acc": 1.0},
        history=[{"e": 0}],
        extra={"k": 1},
    )
    assert FORMAT_VERSION == 1 and st["format_version"] == 1 and st["epoch"] == 4 and st["scaler"] is None
    assert st["best"] == {"acc": 1.0} and st["history"] == [{"e": 0}] and st["extra"] == {"k": 1}
    assert set(st) == {
        "format_version",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "best",
        "history",
        "rng",
        "extra",
    }
    assert (
        training_state(model_state={}, optimizer=opt, scheduler=sched, scaler=None, epoch=0, best=None, history=[])[
            "best"
        ]
        is None
    )
    atomic_save(st, tmp_path / "c.pth")
    model2, opt2, sched2 = torch.nn.Linear(3, 2), None, None
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    restore_training_state(
        load_checkpoint(tmp_path / "c.pth"), model=model2, optimizer=opt2, scheduler=sched2, scaler=None
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.05
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert sched2.last_epoch == 1


def test_scaler_state_saved_and_restored():
    from clora3d.engine.checkpoint import restore_training_state, training_state

    class Scaler:
        def __init__(self, v):
            self.v = v

        def state_dict(self):
            return {"scale": self.v}

        def load_state_dict(self, d):
            self.v = d["scale"]

    model, opt, sched = _toy_training()
    st = training_state(
        model_state=model.state_dict(),
        optimizer=opt,
        scheduler=sched,
        scaler=Scaler(8.0),
        epoch=0,
        best=None,
        history=[],
    )
    assert st["scaler"] == {"scale": 8.0}
    s2 = Scaler(1.0)
    restore_training_state(st, model=model, optimizer=opt, scheduler=sched, scaler=s2)
    assert s2.v == 8.0


def test_restore_errors_name_the_file_and_the_fix():
    from clora3d.engine.checkpoint import restore_training_state, training_state

    model, opt, sched = _toy_training()
    st = training_state(
        model_state=model.state_dict(), optimizer=opt, scheduler=sched, scaler=None, epoch=0, best=None, history=[]
    )
    for drop in (["rng"], ["epoch", "scheduler"]):
        bad = {k: v for k, v in st.items() if k not in drop}
        with pytest.raises(CheckpointError) as info:
            restore_training_state(bad, model=model, optimizer=opt, scheduler=sched, scaler=None, path="x.pth")
        assert str(info.value) == (
            f"x.pth is not a clora3d training checkpoint (missing {drop}); --resume needs "
            "ckpt-last.pth from a clora3d run dir"
        )
    other = torch.nn.Linear(3, 4)
    with pytest.raises(CheckpointError) as info:
        restore_training_state(st, model=other, optimizer=opt, scheduler=sched, scaler=None, path="x.pth")
    msg = str(info.value)
    assert msg.startswith(
        "x.pth: model weights do not match this config's model (Error(s) in loading state_dict for Linear:"
    ) and msg.endswith("); resume with the same config")
    opt3 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(CheckpointError) as info:
        restore_training_state(st, model=model, optimizer=opt3, scheduler=sched, scaler=None, path="x.pth")
    assert str(info.value).startswith("x.pth: optimizer state does not match this config's trainable parameters (")
    assert str(info.value).endswith("); resume with the same config")


def test_load_checkpoint_refuses_a_non_dict(tmp_path):
    from clora3d.engine.checkpoint import atomic_save, load_checkpoint

    atomic_save([1, 2], tmp_path / "l.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "l.pth")
    assert str(info.value) == f"checkpoint {tmp_path / 'l.pth'} holds a list, expected a dict"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "none.pth")
    assert str(info.value) == f"checkpoint not found: {tmp_path / 'none.pth'}"


# ------------------------------------------------------------------------------ stale temp files
def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has this id now (pids are not reused this fast)


def test_clean_stale_tmp_by_writer_process_and_age(tmp_path):
    import time

    dead, me = _dead_pid(), os.getpid()
    files = {
        "dead": tmp_path / f".ckpt.pth.{dead}-ab12cd34.tmp",  # writer gone: stale
        "alive": tmp_path / f".ckpt.pth.{me}-ab12cd34.tmp",  # this process: kept
        "old_nopid": tmp_path / ".ckpt.pth.ab12cd34.tmp",  # no pid, 2 h old: stale
        "new_nopid": tmp_path / ".ckpt.pth.ff12cd34.tmp",  # no pid, fresh: kept
        "other": tmp_path / f".other.bin.{dead}-ab12cd34.tmp",  # another target
        "plain": tmp_path / "ckpt.pth",  # not a temp file
        "edge_nopid": tmp_path / ".ckpt.pth.ee12cd34.tmp",  # exactly max_age old: stale
    }
    for p in files.values():
        p.write_bytes(b"x")
    now = time.time()
    os.utime(files["old_nopid"], (now - 7200, now - 7200))
    os.utime(files["edge_nopid"], (now - 3600.5, now - 3600.5))
    got = storage.clean_stale_tmp(tmp_path, "ckpt.pth")
    assert sorted(p.name for p in got) == sorted(files[k].name for k in ("dead", "old_nopid", "edge_nopid"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        files[k].name for k in ("alive", "new_nopid", "other", "plain")
    )
    # without a name: every target's stale temp goes; a custom age applies to pid-less ones
    assert [p.name for p in storage.clean_stale_tmp(tmp_path)] == [files["other"].name]
    assert [p.name for p in storage.clean_stale_tmp(tmp_path, max_age_s=0.0)] == [files["new_nopid"].name]
    assert storage.clean_stale_tmp(tmp_path / "missing") == []


def test_atomic_write_removes_a_dead_writers_temp_first(tmp_path):
    stale = tmp_path / f".out.bin.{_dead_pid()}-0badf00d.tmp"
    stale.write_bytes(b"half")
    storage.atomic_write_bytes(tmp_path / "out.bin", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_creates_folders_with_the_default_mode(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    storage.atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_messages_name_what_and_why(tmp_path, monkeypatch):
    import errno

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write_bytes(blocker / "sub" / "x.bin", b"")
    assert str(info.value).startswith(f"cannot write file {blocker / 'sub' / 'x.bin'}: cannot create its folder (")
    for call, what in [
        (lambda d: storage.atomic_torch_save({}, d), "checkpoint"),
        (lambda d: storage.atomic_torch_save({}, d, what="adapter"), "adapter"),
        (lambda d: storage.atomic_write_bytes(d, b""), "file"),
    ]:
        with pytest.raises(storage.StorageError) as info:
            call(tmp_path)
        assert str(info.value) == f"cannot write {what} {tmp_path}: it is a directory; give a file name"
    from clora3d.engine.checkpoint import atomic_save

    with pytest.raises(storage.StorageError) as info:
        atomic_save({}, tmp_path)
    assert str(info.value) == f"cannot write checkpoint {tmp_path}: it is a directory; give a file name"

    def full(f):
        f.write(b"abc")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "o.bin"
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write(out, full, what="cache")
    assert str(info.value) == (
        f"cannot write cache {out}: {os.strerror(errno.ENOSPC)} (free some space and retry); nothing was written"
    )
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    out.write_bytes(b"OLD")

    class Disk:
        def __call__(self, f):  # the first write fails inside the sink, the writer then swallows it
            try:
                f.write(b"x")
            except OSError:
                pass
            raise RuntimeError("enforce fail: unexpected pos")

    real_write = storage._Sink.write

    def failing(self, data):
        self._f = type("F", (), {"write": lambda s, d: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))})()
        return real_write(self, data)

    monkeypatch.setattr(storage._Sink, "write", failing)
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write(out, Disk(), what="cache")
    assert str(info.value) == f"cannot write cache {out}: {os.strerror(errno.EIO)}; the previous o.bin is unchanged"
    assert out.read_bytes() == b"OLD"


def test_walk_tensors_names_and_order():
    t = torch.zeros(1)
    obj = {"b": [t, {"x": t}], "a": t, 3: (t,), storage.CHECKSUM_KEY: t, "n": {storage.CHECKSUM_KEY: t}}
    names = [n for n, _ in storage._walk_tensors(obj)]
    assert names == ["/int:3[0]", "/str:a", "/str:b[0]", "/str:b[1]/str:x", f"/str:n/str:{storage.CHECKSUM_KEY}"]
    assert [n for n, _ in storage._walk_tensors(t)] == [""]


def test_restore_checks_model_keys_strictly_and_ignores_a_scaler_state_without_scaler():
    from clora3d.engine.checkpoint import restore_training_state, training_state

    model, opt, sched = _toy_training()
    st = training_state(
        model_state=model.state_dict(), optimizer=opt, scheduler=sched, scaler=None, epoch=0, best=None, history=[]
    )
    st["scaler"] = {"scale": 2.0}
    restore_training_state(st, model=model, optimizer=opt, scheduler=sched, scaler=None)  # AMP off now
    st["model"] = {**st["model"], "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        restore_training_state(st, model=model, optimizer=opt, scheduler=sched, scaler=None)
    assert str(info.value).startswith(
        "<checkpoint>: model weights do not match this config's model (Error(s) in loading state_dict for Linear:"
    )


def test_atomic_write_reports_a_failure_to_create_the_temp(tmp_path, monkeypatch):
    import errno

    def refuse(*a, **k):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "open", refuse)
    out = tmp_path / "q.bin"
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write_bytes(out, b"x", what="cache")
    monkeypatch.undo()
    assert str(info.value) == (
        f"cannot write cache {out}: {os.strerror(errno.EDQUOT)} (free some space and retry); nothing was written"
    )
    assert list(tmp_path.iterdir()) == []


def test_pid_alive_probes_without_signalling(monkeypatch):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert storage._pid_alive(child.pid) is True
        import time

        time.sleep(0.3)
        assert child.poll() is None  # the probe (signal 0) did not disturb it
        assert storage._pid_alive(os.getpid()) is True
    finally:
        child.kill()
        child.wait()
    assert storage._pid_alive(child.pid) is False

    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", denied)
    assert storage._pid_alive(child.pid) is True  # exists, owned by someone else


def test_safe_torch_load_messages(tmp_path, monkeypatch):
    import pickle

    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(tmp_path)
    assert str(info.value) == f"checkpoint {tmp_path} is a directory; pass the .pth file inside it"
    good = tmp_path / "g.pth"
    torch.save({"w": torch.ones(2)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(cut, what="adapter file")
    msg = str(info.value)
    assert msg.startswith(f"cannot read adapter file {cut}: ") and msg.endswith(
        " (the file is corrupt or not a PyTorch checkpoint)"
    )

    class Evil:
        def __reduce__(self):
            return (print, ("x",))

    evil = tmp_path / "evil.pth"
    torch.save({"e": Evil()}, evil)
    with pytest.raises(storage.UnsafeCheckpointError) as info:
        storage.safe_torch_load(evil)
    msg = str(info.value)
    assert msg.startswith(
        f"refused to load checkpoint {evil}: it references Python objects outside torch's "
        "weights-only allow-list, so loading it could run code; nothing was executed."
    )
    assert msg.endswith("]") and " [" in msg and "print" in msg[msg.rindex(" [") :]

    def no_culprit(*a, **k):
        raise pickle.UnpicklingError("bad opcode")

    monkeypatch.setattr(torch, "load", no_culprit)
    with pytest.raises(storage.UnsafeCheckpointError) as info:
        storage.safe_torch_load(good)
    assert str(info.value).endswith("saved as plain tensors (torch.save(model.state_dict(), ...))")

    def oom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(torch, "load", oom)
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(good)
    assert str(info.value) == (
        f"cannot read checkpoint {good}: out of memory (the file is corrupt or far larger than a model)"
    )

    def long_error(*a, **k):
        raise ValueError("L" * 300 + "\nsecond line")

    monkeypatch.setattr(torch, "load", long_error)
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(good)
    assert str(info.value) == (
        f"cannot read checkpoint {good}: ValueError: {'L' * 200} (the file is corrupt or not a PyTorch checkpoint)"
    )

    def silent(*a, **k):
        raise ValueError()

    monkeypatch.setattr(torch, "load", silent)
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(good)
    assert (
        str(info.value)
        == f"cannot read checkpoint {good}: ValueError:  (the file is corrupt or not a PyTorch checkpoint)"
    )


def test_verify_checksum_messages(tmp_path):
    obj = {"w": torch.ones(2), storage.CHECKSUM_KEY: {"algorithm": "md5"}}
    with pytest.raises(CheckpointError) as info:
        storage.verify_checksum(dict(obj), "f.pth")
    assert str(info.value) == (
        "checkpoint f.pth has an unreadable checksum entry; the file is corrupt: restore it "
        "from a backup or write it again"
    )
    bad = {"w": torch.ones(2), storage.CHECKSUM_KEY: {**storage.tensor_checksum({"w": torch.zeros(2)})}}
    with pytest.raises(CheckpointError) as info:
        storage.verify_checksum(bad, "f.pth", what="adapter")
    assert str(info.value) == (
        "adapter f.pth is corrupt: its tensors do not match the checksum stored when it was "
        "written (bit flip or damaged copy); restore it from a backup or write it again"
    )
    one_more = {
        "w": torch.ones(2),
        "v": torch.ones(0),
        storage.CHECKSUM_KEY: storage.tensor_checksum({"w": torch.ones(2)}),
    }
    with pytest.raises(CheckpointError):
        storage.verify_checksum(one_more, "f.pth")  # same digest input except a new empty tensor
    ok = {"w": torch.ones(2), storage.CHECKSUM_KEY: storage.tensor_checksum({"w": torch.ones(2)})}
    assert set(storage.verify_checksum(ok, "f.pth")) == {"w"}
    assert storage.verify_checksum([1], "f.pth") == [1]


def test_atomic_write_defaults_and_messages_without_errno(tmp_path):

    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write(tmp_path, lambda f: None)
    assert str(info.value) == f"cannot write file {tmp_path}: it is a directory; give a file name"
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write_bytes(blocker / "sub" / "x.bin", b"")
    assert str(info.value) == (
        f"cannot write file {blocker / 'sub' / 'x.bin'}: cannot create its folder ({os.strerror(20)})"
    )

    def odd(f):
        raise OSError("weird device")

    out = tmp_path / "o.bin"
    with pytest.raises(storage.StorageError) as info:
        storage.atomic_write(out, odd, what="cache")
    assert str(info.value) == f"cannot write cache {out}: weird device; nothing was written"
    # only the target's own stale temps are cleaned before a write
    dead = _dead_pid()
    mine, other = tmp_path / f".o.bin.{dead}-00aa.tmp", tmp_path / f".zz.bin.{dead}-00aa.tmp"
    mine.write_bytes(b"")
    other.write_bytes(b"")
    storage.atomic_write_bytes(out, b"x")
    assert not mine.exists() and other.exists()


def test_walk_order_sorts_by_key_type_first():
    t = torch.zeros(1)
    assert [n for n, _ in storage._walk_tensors({5: t, "1": t})] == ["/int:5", "/str:1"]


def test_corrupt_checksum_message_names_what_was_loaded(tmp_path):
    path = tmp_path / "a.pt"
    storage.atomic_torch_save({"w": torch.ones(3)}, path)
    blob = torch.load(path, weights_only=True)
    blob["w"][0] = 2.0
    torch.save(blob, path)
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(path, what="adapter file")
    assert str(info.value).startswith(f"adapter file {path} is corrupt: ")


def test_unsafe_checkpoint_culprit_is_the_first_global_line(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("x",))

    evil = tmp_path / "evil.pth"
    torch.save({"e": Evil()}, evil)
    try:
        torch.load(evil, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines()
    want = next(ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln)
    with pytest.raises(storage.UnsafeCheckpointError) as info:
        storage.safe_torch_load(evil)
    assert str(info.value).endswith(f" [{want[:200]}]")


# ------------------------------------------------------------------------------ second round (issue 17)
def test_pid_alive_probes_with_signal_0_only(monkeypatch):
    # signal 0 checks that the process exists and delivers nothing; any other number would be a real
    # signal (SIGHUP, ...), which a child that ignores it would not even show
    import subprocess
    import sys

    sent = []
    real_kill = os.kill

    def spy(pid, sig):
        sent.append((pid, sig))
        return real_kill(pid, sig)

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setattr(os, "kill", spy)
        assert storage._pid_alive(child.pid) is True
        assert storage._pid_alive(os.getpid()) is True  # itself: no probe at all
        monkeypatch.undo()
        assert sent == [(child.pid, 0)]
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_clean_stale_tmp_goes_on_past_an_entry_it_cannot_stat(tmp_path, monkeypatch):
    # a temp that vanishes while the folder is cleaned (here: a dangling link, whose stat fails) is
    # skipped; the stale temps after it are still removed
    from pathlib import Path

    broken = tmp_path / ".a.pth.00aa.tmp"  # no pid: its age is read with stat()
    broken.symlink_to(tmp_path / "gone")
    dead = tmp_path / f".b.pth.{_dead_pid()}-00aa.tmp"
    dead.write_bytes(b"x")
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(real_iterdir(self))))  # the broken one first
    assert storage.clean_stale_tmp(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == [broken.name]


def test_clean_stale_tmp_removes_a_pidless_temp_exactly_max_age_old(tmp_path, monkeypatch):
    t0 = 1_700_000_000
    exact, younger = tmp_path / ".c.pth.00aa.tmp", tmp_path / ".c.pth.00bb.tmp"
    for p, age in ((exact, 3600), (younger, 3599)):
        p.write_bytes(b"x")
        os.utime(p, ns=((t0 - age) * 10**9, (t0 - age) * 10**9))
    monkeypatch.setattr(storage.time, "time", lambda: float(t0))
    assert storage.clean_stale_tmp(tmp_path, "c.pth", max_age_s=3600.0) == [exact]
    assert storage.clean_stale_tmp(tmp_path, "c.pth", max_age_s=3599.0) == [younger]


@pytest.mark.parametrize(
    "inside,hint",
    [
        (["ckpt-best.pth", "ckpt-last.pth"], " (this run folder has ckpt-best.pth and ckpt-last.pth)"),
        (["ckpt-best.pth"], " (this run folder has ckpt-best.pth)"),
        (["other.pth"], ""),
    ],
)
def test_safe_torch_load_on_a_run_folder_names_its_checkpoints(tmp_path, inside, hint):
    for n in inside:
        (tmp_path / n).write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        storage.safe_torch_load(tmp_path, what="weights")
    assert str(info.value) == f"weights {tmp_path} is a directory; pass the .pth file inside it{hint}"


def test_safe_torch_load_maps_tensors_saved_on_a_gpu_to_the_cpu(tmp_path, monkeypatch):
    # a file written from CUDA tensors records 'cuda:0' as their location: simulated by tagging the
    # CPU storages so while saving; it must load onto the CPU, with or without a GPU here
    import torch.serialization

    path = tmp_path / "gpu.pth"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    storage.atomic_torch_save({"w": torch.arange(4.0), "n": {"b": torch.tensor([7], dtype=torch.int64)}}, path)
    monkeypatch.undo()
    assert b"cuda:0" in path.read_bytes()
    got = storage.safe_torch_load(path)
    assert got["w"].device.type == "cpu" and got["n"]["b"].device.type == "cpu"
    assert torch.equal(got["w"], torch.arange(4.0)) and torch.equal(got["n"]["b"], torch.tensor([7]))


def test_safe_torch_load_stays_weights_only_when_torch_is_told_otherwise(tmp_path, monkeypatch, capsys):
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch.load's default into the unsafe loader, but only
    # where the caller did not ask for weights_only=True itself
    class Evil:
        def __reduce__(self):
            return (print, ("EXECUTED",))

    evil = tmp_path / "evil.pth"
    torch.save({"e": Evil()}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(storage.UnsafeCheckpointError) as info:
        storage.safe_torch_load(evil)
    assert "nothing was executed" in str(info.value)
    assert "EXECUTED" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "detail,culprit",
    [
        # the first line holding 'GLOBAL' (upper case) or 'Unsupported global', stripped
        (
            "Weights only load failed.\nsome global context\n  GLOBAL os.system was not allowed\n",
            "GLOBAL os.system was not allowed",
        ),
        (
            "Weights only load failed.\nunsupported global here\n\tUnsupported global: foo.Bar\nGLOBAL x\n",
            "Unsupported global: foo.Bar",
        ),
        ("Weights only load failed.\nno culprit named (global, unsupported)\n", None),
    ],
)
def test_unsafe_checkpoint_culprit_is_the_first_line_naming_a_global(tmp_path, monkeypatch, detail, culprit):
    import pickle

    good = tmp_path / "g.pth"
    torch.save({"w": torch.ones(1)}, good)

    def refuse(*a, **k):
        raise pickle.UnpicklingError(detail)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(storage.UnsafeCheckpointError) as info:
        storage.safe_torch_load(good)
    tail = "saved as plain tensors (torch.save(model.state_dict(), ...))"
    assert str(info.value).endswith(tail + (f" [{culprit}]" if culprit else ""))


def test_numpy_scalars_that_subclass_python_types_become_plain(tmp_path):
    # np.float64 is a float, np.str_ a str, np.bytes_ a bytes: still numpy scalars, which YAML's
    # safe dumper and torch's weights-only loader both refuse
    import math

    import numpy as np
    import yaml

    cfg = {"alpha": np.float64(8.0), "name": np.str_("qkv"), "raw": np.bytes_(b"ab"), "nan": np.float64("nan")}
    out = storage.to_plain(cfg)
    assert [type(out[k]) for k in ("alpha", "name", "raw", "nan")] == [float, str, bytes, float]
    assert out["alpha"] == 8.0 and out["name"] == "qkv" and out["raw"] == b"ab" and math.isnan(out["nan"])
    assert storage.to_plain(cfg, nonfinite="str")["nan"] == "nan"
    assert yaml.safe_dump(storage.to_plain({"alpha": np.float64(8.0), "name": np.str_("qkv")})) == (
        "alpha: 8.0\nname: qkv\n"
    )
    path = tmp_path / "meta.pth"
    storage.atomic_torch_save({"metadata": out, "w": torch.ones(1)}, path)
    assert storage.safe_torch_load(path)["metadata"]["name"] == "qkv"


def test_nonfinite_strings_reach_inside_dataclasses():
    import dataclasses

    @dataclasses.dataclass
    class Metrics:
        loss: float
        parts: tuple

    got = storage.to_plain(Metrics(float("nan"), (float("inf"), 1.0)), nonfinite="str")
    assert got == {"loss": "nan", "parts": ["inf", 1.0]}


class _LenientModel(torch.nn.Linear):
    """A model whose load_state_dict is lenient unless told otherwise, recording how it was called."""

    def __init__(self, error: RuntimeError | None = None):
        super().__init__(3, 2)
        self.error, self.calls = error, []

    def load_state_dict(self, state_dict, strict=False, assign=False):
        self.calls.append(strict)
        if self.error is not None:
            raise self.error
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def test_restore_asks_the_model_for_a_strict_load_and_reports_a_bare_error():
    from clora3d.engine.checkpoint import restore_training_state, training_state

    model, opt, sched = _toy_training()
    st = training_state(
        model_state=model.state_dict(), optimizer=opt, scheduler=sched, scaler=None, epoch=0, best=None, history=[]
    )
    st["model"] = {k: v for k, v in st["model"].items() if k != "bias"}  # a lenient load would accept it
    lenient = _LenientModel()
    with pytest.raises(CheckpointError) as info:
        restore_training_state(st, model=lenient, optimizer=opt, scheduler=sched, scaler=None, path="x.pth")
    assert lenient.calls == [True]
    assert str(info.value).startswith("x.pth: model weights do not match this config's model (Error(s) in loading")
    bare = _LenientModel(RuntimeError())
    with pytest.raises(CheckpointError) as info:
        restore_training_state(st, model=bare, optimizer=opt, scheduler=sched, scaler=None, path="x.pth")
    assert str(info.value) == "x.pth: model weights do not match this config's model (); resume with the same config"

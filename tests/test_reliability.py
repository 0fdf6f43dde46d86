"""Nothing lost, nothing cryptic (issue 16): the exported adapter loads on its own base, files are
written atomically with checksums, a run directory is locked, and every bad input or fault is one
``error:`` line with exit code 2. Faults run in subprocesses (kill, injected ENOSPC, two runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
MODEL = {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5, "drop_path_rate": 0.0}


def _run(
    args: list[str], *, timeout: int = 300, env: dict | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errs) == 1, proc.stderr[-3000:]
    return errs[0]


def _fewshot_data(root: Path, seed: int = 0) -> dict:
    from clora3d.data.modelnet import write_fewshot_folds_from_arrays

    rng = np.random.default_rng(seed)
    axes = [(1, 1, 1), (1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1), (1, 1, 0.2)]

    def split(n):
        pts = []
        for c in range(5):
            for _ in range(n):
                v = rng.normal(size=(96, 3))
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                pts.append(np.concatenate([v * axes[c], np.zeros((96, 3))], 1).astype(np.float32))
        return pts, np.repeat(np.arange(5), n)

    write_fewshot_folds_from_arrays(split(4), split(2), root, ways=(5,), shots=(4,), folds=1, eval_sample=2, seed=0)
    return {"NAME": "ModelNetFewShot", "root": str(root), "way": 5, "shot": 4, "fold": 0}


def _tiny_cfg(d: Path, ds: dict, epochs: int = 1, peft: str = "clora") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg_file = d / "cfg.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "model": dict(MODEL),
                "peft": {"NAME": peft},
                "data": {"npoints": 64, "train_sampling": "fps"},
                "scheduler": {"warmup_epochs": 0},
                "train": {"epochs": epochs, "batch_size": 5, "num_workers": 0, "device": "cpu"},
                "dataset": {"train": ds, "test": dict(ds)},
                "log": {"root": str(d / "exp"), "tensorboard": False, "progress": False},
            }
        )
    )
    return cfg_file


@pytest.fixture(scope="module")
def base_and_run(tmp_path_factory):
    """A 'pre-trained' base (Point-MAE pre-training layout, not the random init) and a 1-epoch
    CLoRA run trained on top of it with ``--ckpt``."""
    from clora3d.engine.config import load_config
    from clora3d.engine.trainer import train
    from clora3d.models import build_model
    from clora3d.models.checkpoint import save_point_mae_checkpoint

    d = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(1234)
    base_model = build_model(dict(MODEL))
    with torch.no_grad():  # far from any default initialisation
        for p in base_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base = save_point_mae_checkpoint(base_model, d / "base.pth", layout="pretrain")
    cfg_file = _tiny_cfg(d, _fewshot_data(d / "folds"))
    res = train(load_config(cfg_file), ckpt=str(base), run_dir=str(d / "run"))
    return d, base, Path(res["run_dir"]), cfg_file


def _probe_cloud() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, 3, generator=g)
    return x / x.norm(dim=-1).max()


def test_exported_adapter_loads_on_its_base_in_a_fresh_process_and_merged_infers_the_same(base_and_run, tmp_path):
    from clora3d.engine.infer import Predictor, load_run

    d, base, run_dir, cfg_file = base_and_run
    ckpt = run_dir / "ckpt-last.pth"
    adapter, merged = tmp_path / "adapter.pth", tmp_path / "merged.pth"
    p = _run(["tools/export.py", "--ckpt", str(ckpt), "--adapter", str(adapter), "--merged", str(merged)])
    assert p.returncode == 0, p.stderr[-3000:]

    # reference: the run's own adapted model, rebuilt from its checkpoint
    model, _, _, _ = load_run(ckpt)
    x = _probe_cloud()
    with torch.no_grad():
        want = model(x).float()
    torch.save(x, tmp_path / "x.pt")

    # fresh process: same pre-trained base -> load_adapter -> logits
    script = textwrap.dedent(f"""
        import torch
        from clora3d.models import build_model
        from clora3d.models.checkpoint import load_pretrained
        from clora3d.peft import load_adapter
        model = build_model({MODEL!r})
        load_pretrained(model, {str(base)!r}, log=None)
        method = load_adapter(model, {str(adapter)!r})
        model.eval()
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "x.pt")!r})).float(), {str(tmp_path / "y.pt")!r})
        print("method", method.name)
    """)
    p = _run(["-c", script])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "method clora" in p.stdout
    got = torch.load(tmp_path / "y.pt")
    assert torch.equal(got, want), float((got - want).abs().max())

    # a different base is still refused with the base-weights message
    script_other = script.replace("load_pretrained(model", "torch.manual_seed(9); (lambda *a, **k: None)(model")
    p = _run(["-c", script_other])
    assert p.returncode != 0 and "different base weights" in p.stderr

    # merged export -> tools/infer.py -> the same predictions as the run checkpoint
    rng = np.random.default_rng(3)
    clouds = tmp_path / "clouds"
    clouds.mkdir()
    for i in range(3):
        np.save(clouds / f"c{i}.npy", (rng.normal(size=(150, 3)) * [1, 0.3 + 0.3 * i, 0.5]).astype(np.float32))
    want_pred = Predictor.from_checkpoint(ckpt).predict(sorted(clouds.iterdir()), topk=5)
    p = _run(["tools/infer.py", "--ckpt", str(merged), "--cfg", str(cfg_file), str(clouds), "--json"])
    assert p.returncode == 0, p.stderr[-3000:]
    got_pred = json.loads(p.stdout)
    assert [r["file"] for r in got_pred] == [r["file"] for r in want_pred]
    for a, b in zip(got_pred, want_pred):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        for ta, tb in zip(a["top"], b["top"]):
            assert ta["prob"] == pytest.approx(tb["prob"], abs=1e-5)


# ------------------------------------------------------------------------------------------------
# run-directory lock: two concurrent trainings, a killed holder
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # two real trainings (about a minute); the fast test below covers the lock itself
def test_second_run_on_a_locked_run_dir_fails_at_once_and_a_dead_holder_is_taken_over(tmp_path):
    from clora3d.engine.runlock import LOCK_NAME, RunDirLock

    cfg_file = _tiny_cfg(tmp_path, _fewshot_data(tmp_path / "folds"), epochs=10000)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    a = subprocess.Popen(
        [PY, "tools/train.py", "--cfg", str(cfg_file), "--run-dir", str(run)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "ckpt-last.pth").is_file():  # A holds the lock and has written a checkpoint
            assert a.poll() is None, a.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "first run did not start"
            time.sleep(0.2)
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == a.pid
        # the second run (new or --resume) fails at once, naming the holder and what to do
        for extra in ([], ["--resume"]):
            b = _run(["tools/train.py", "--cfg", str(cfg_file), "--run-dir", str(run), *extra], timeout=120)
            err = _one_error_line(b)
            assert f"pid {a.pid}" in err and holder["host"] in err and holder["started"] in err, err
            assert "--run-dir" in err and "wait" in err, err
        log_before = (run / "log.txt").read_text()
        assert "is in use" not in log_before  # the refused run wrote nothing into A's log
    finally:
        a.kill()
        a.wait()
    # the holder died by SIGKILL: its lock file still names it, the kernel released the flock
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == a.pid
    stale_new = run / f".ckpt-last.pth.{a.pid}-0badc0de.tmp"  # a killed write (pid-tagged name)
    stale_old = run / ".ckpt-last.pth.k3x9q2_z.tmp"  # a killed write (older naming)
    stale_new.write_bytes(b"half a checkpoint")
    stale_old.write_bytes(b"half a checkpoint")
    with RunDirLock(run) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == a.pid
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    # a resumed run removes the temporary files of the killed write, then trains on
    c = _run(
        ["tools/train.py", "--cfg", str(cfg_file), "--run-dir", str(run), "--resume", "--set", "train.epochs=1"],
        timeout=300,
    )
    assert not stale_new.exists() and not stale_old.exists()
    assert "removed 2 temporary file(s)" in (run / "log.txt").read_text()
    assert c.returncode == 0 and "in use" not in c.stderr, c.stderr[-2000:]
    assert (run / LOCK_NAME).read_text() == ""  # released


def test_lock_held_by_another_process_names_it(tmp_path):
    from clora3d.engine.runlock import RunDirLock, RunDirLockedError

    holder = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from clora3d.engine.runlock import RunDirLock
        RunDirLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLockedError, match=rf"pid {holder.pid} on host .* started .*another --run-dir"):
            RunDirLock(tmp_path).acquire()
        # tools/train.py on that run dir: one line naming the holder, exit 2, nothing written
        cfg_file = _tiny_cfg(
            tmp_path / "c", {"NAME": "ModelNetFewShot", "root": str(tmp_path / "no"), "way": 5, "shot": 4, "fold": 0}
        )
        p = _run(["tools/train.py", "--cfg", str(cfg_file), "--run-dir", str(tmp_path)], timeout=120)
        err = _one_error_line(p)
        assert f"pid {holder.pid}" in err and "in use" in err, err
        assert not (tmp_path / "log.txt").exists()
    finally:
        holder.kill()
        holder.wait()
    RunDirLock(tmp_path).acquire().release()  # free again once the holder is gone


# ------------------------------------------------------------------------------------------------
# atomic writes: full disk (injected ENOSPC, small tmpfs), kill mid-write, stale temp files
# ------------------------------------------------------------------------------------------------
_ENOSPC_SHIM = textwrap.dedent("""
    import errno, os, runpy, sys
    _real_fdopen = os.fdopen
    class _FullDisk:
        # a file on a disk with LIMIT bytes free: the write that crosses it fails with ENOSPC
        def __init__(self, f, limit):
            self._f, self._left = f, limit
        def write(self, b):
            n = len(memoryview(b).cast("B"))
            if n > self._left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._left -= n
            return self._f.write(b)
        def __getattr__(self, k):
            return getattr(self._f, k)
        def __enter__(self):
            return self
        def __exit__(self, *a):
            self._f.close()
    def fdopen(fd, mode="r", *a, **k):
        f = _real_fdopen(fd, mode, *a, **k)
        return _FullDisk(f, int(os.environ["FULL_DISK_AFTER"])) if "w" in mode else f
    os.fdopen = fdopen
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_full_disk_export_is_one_line_and_keeps_the_previous_files(base_and_run, tmp_path):
    d, _, run_dir, _ = base_and_run
    ckpt = run_dir / "ckpt-last.pth"
    out = tmp_path / "out"
    from clora3d.engine.export import export_run

    export_run(ckpt, adapter_out=out / "a.pth", merged_out=out / "m.pth")
    before = {n: (out / n).read_bytes() for n in ("a.pth", "m.pth")}
    shim = tmp_path / "shim.py"
    shim.write_text(_ENOSPC_SHIM)
    for target in ("--adapter", "--merged"):
        p = _run(
            [
                str(shim),
                "tools/export.py",
                "--ckpt",
                str(ckpt),
                target,
                str(out / ("a.pth" if target == "--adapter" else "m.pth")),
            ],
            env={"FULL_DISK_AFTER": "4096"},
        )
        err = _one_error_line(p)
        name = "a.pth" if target == "--adapter" else "m.pth"
        assert str(out / name) in err and "No space left on device" in err, err
        assert "unchanged" in err, err
    assert {n: (out / n).read_bytes() for n in ("a.pth", "m.pth")} == before
    assert sorted(x.name for x in out.iterdir()) == ["a.pth", "m.pth"]  # no temp file left


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_full_disk_on_a_real_small_tmpfs(tmp_path):
    """The same with a real full file system (root only; skipped where mounting is not allowed)."""
    from clora3d.engine.checkpoint import atomic_save, load_checkpoint

    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        atomic_save({"w": torch.arange(1000.0)}, mnt / "ckpt-last.pth")
        script = textwrap.dedent(f"""
            import sys, torch
            from clora3d.engine.checkpoint import atomic_save
            from clora3d.errors import USER_ERRORS, format_user_error
            try:
                atomic_save({{"w": torch.zeros(200_000)}}, {str(mnt / "ckpt-last.pth")!r})
            except USER_ERRORS as e:
                print(format_user_error(e), file=sys.stderr)
                sys.exit(2)
        """)
        p = _run(["-c", script])
        err = _one_error_line(p)
        assert str(mnt / "ckpt-last.pth") in err and "No space left" in err, err
        assert torch.equal(load_checkpoint(mnt / "ckpt-last.pth")["w"], torch.arange(1000.0))
        assert [x.name for x in mnt.iterdir()] == ["ckpt-last.pth"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_kill_during_an_adapter_sized_write_keeps_the_previous_file_and_the_next_save_cleans_up(tmp_path):
    from clora3d.storage import atomic_torch_save, safe_torch_load

    path = tmp_path / "adapter.pth"
    atomic_torch_save({"state": {"w": torch.full((10,), 7.0)}}, path, what="adapter")
    child = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(f"""
        import torch
        from clora3d.storage import atomic_torch_save
        big = {{"state": {{"w": torch.randn(6_000_000)}}}}
        while True:
            atomic_torch_save(big, {str(path)!r}, what="adapter")
    """),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".adapter.pth.*.tmp")):  # a write is in progress
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    obj = safe_torch_load(path, what="adapter")  # the previous or a complete new file, checksum ok
    assert obj["state"]["w"].shape in {(10,), (6_000_000,)}
    left = list(tmp_path.glob(".adapter.pth.*.tmp"))
    if left:  # killed mid-write: the temp file carries the dead writer's pid ...
        assert all(f".{child.pid}-" in p.name for p in left)
    atomic_torch_save({"state": {"w": torch.ones(3)}}, path, what="adapter")
    assert not list(tmp_path.glob(".adapter.pth.*.tmp"))  # ... and the next save removes it
    assert torch.equal(safe_torch_load(path)["state"]["w"], torch.ones(3))


# ------------------------------------------------------------------------------------------------
# checksums: a bit flip inside a tensor is one error naming the file; older files still load
# ------------------------------------------------------------------------------------------------
def _flip_inside(path: Path, marker: torch.Tensor) -> None:
    raw = bytearray(path.read_bytes())
    pos = raw.find(marker.numpy().tobytes())
    assert pos > 0
    raw[pos + 5] ^= 0x10
    path.write_bytes(bytes(raw))


def test_bit_flip_in_checkpoint_adapter_and_merged_model_is_detected(tmp_path):
    from clora3d.engine.checkpoint import atomic_save, load_checkpoint
    from clora3d.errors import CheckpointError
    from clora3d.models import build_model
    from clora3d.models.checkpoint import load_pretrained, save_point_mae_checkpoint
    from clora3d.peft import apply_peft, load_adapter

    marker = torch.arange(64, dtype=torch.float32) * 1.2345 + 3.0
    ck = atomic_save({"model": {"m": marker.clone()}, "epoch": 3}, tmp_path / "ckpt-last.pth")
    assert load_checkpoint(ck)["epoch"] == 3
    _flip_inside(ck, marker)
    with pytest.raises(CheckpointError, match=rf"{ck}.*corrupt"):
        load_checkpoint(ck)

    torch.manual_seed(0)
    model = build_model(dict(MODEL))
    method = apply_peft(model, {"NAME": "clora"})
    with torch.no_grad():
        head = model.cls_head_finetune[0].weight
        head.view(-1)[:64] = marker
    ad = method.save_adapter(tmp_path / "a.pth")
    merged = save_point_mae_checkpoint(build_model(dict(MODEL)), tmp_path / "m.pth")
    _flip_inside(ad, marker)
    with pytest.raises(CheckpointError, match=rf"{ad}.*corrupt"):
        load_adapter(build_model(dict(MODEL)), ad)
    m_marker = torch.load(merged, weights_only=True)["base_model"]["cls_token"].reshape(-1)[:8].clone()
    if m_marker.abs().sum() > 0:
        _flip_inside(merged, m_marker)
    else:  # cls_token starts at zero: flip inside the first block's qkv weight instead
        _flip_inside(
            merged,
            torch.load(merged, weights_only=True)["base_model"]["blocks.blocks.0.attn.qkv.weight"]
            .reshape(-1)[:8]
            .clone(),
        )
    with pytest.raises(CheckpointError, match=rf"{merged}.*corrupt"):
        load_pretrained(build_model(dict(MODEL)), merged, log=None)


def test_files_written_before_checksums_still_load(tmp_path):
    from clora3d.engine.checkpoint import load_checkpoint
    from clora3d.models import build_model
    from clora3d.models.checkpoint import load_pretrained
    from clora3d.peft import apply_peft, load_adapter

    torch.save({"model": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "old.pth")
    assert load_checkpoint(tmp_path / "old.pth")["epoch"] == 1
    torch.manual_seed(0)
    model = build_model(dict(MODEL))
    torch.save({"base_model": model.state_dict()}, tmp_path / "old_merged.pth")
    rep = load_pretrained(build_model(dict(MODEL)), tmp_path / "old_merged.pth", log=None)
    assert not rep.missing_backbone
    method = apply_peft(model, {"NAME": "clora"})
    torch.save({"metadata": method.metadata(), "state": method.adapter_state_dict()}, tmp_path / "old_a.pth")
    torch.manual_seed(0)
    assert load_adapter(build_model(dict(MODEL)), tmp_path / "old_a.pth").name == "clora"


# ------------------------------------------------------------------------------------------------
# a malicious checkpoint: refused in every path, nothing executed, no unsafe advice
# ------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_in_every_path(base_and_run, tmp_path, capsys):
    d, base, run_dir, cfg_file = base_and_run
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "x": _Evil(str(marker))}, evil)
    run2 = tmp_path / "run2"
    run2.mkdir()
    torch.save({"epoch": 0, "x": _Evil(str(marker))}, run2 / "ckpt-last.pth")
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32))
    cases = {  # in process: the tools' own main(); nothing may run, so nothing can harm the test
        "infer": ["infer", "--ckpt", str(evil), "--cfg", str(cfg_file), str(cloud)],
        "export": ["export", "--ckpt", str(evil), "--cfg", str(cfg_file), "--adapter", str(tmp_path / "a.pth")],
        "resume": ["train", "--cfg", str(cfg_file), "--run-dir", str(run2), "--resume"],
        "train --ckpt": ["train", "--cfg", str(cfg_file), "--run-dir", str(tmp_path / "r3"), "--ckpt", str(evil)],
    }
    for name, args in cases.items():
        err = _one_line(*_tool_main(args[0], args[1:], capsys))
        assert "nothing was executed" in err, (name, err)
        assert "weights_only=False" not in err and "weights_only" not in err.replace("weights-only", ""), (name, err)
        assert str(evil if name != "resume" else run2 / "ckpt-last.pth") in err, (name, err)
    from clora3d.errors import CheckpointError, format_user_error
    from clora3d.models import build_model
    from clora3d.peft import load_adapter

    with pytest.raises(CheckpointError) as e:
        load_adapter(build_model(dict(MODEL)), evil)
    err = format_user_error(e.value)
    assert "nothing was executed" in err and "weights_only" not in err.replace("weights-only", ""), err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# one `error:` line for every bad input
# ------------------------------------------------------------------------------------------------
def _tool_run(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``tools/<name>.py`` main(argv), in process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_rel_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    capsys.readouterr()
    rc = mod.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _tool_main(name: str, argv: list[str], capsys) -> tuple[int, str]:
    rc, _, err = _tool_run(name, argv, capsys)
    return rc, err


def _one_line(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_config_inputs_are_one_line(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    err = _one_line(*_tool_main("train", ["--cfg", str(latin)], capsys))
    assert str(latin) in err and "UTF-8" in err

    folder = tmp_path / "cfgdir.yaml"
    folder.mkdir()
    err = _one_line(*_tool_main("train", ["--cfg", str(folder)], capsys))
    assert "is a directory" in err

    deep = tmp_path / "deep.yaml"
    deep.write_text("model: " + "[" * 3000 + "]" * 3000 + "\n")
    err = _one_line(*_tool_main("train", ["--cfg", str(deep)], capsys))
    assert "nested" in err and str(deep) in err

    # a file outside the config tree that is not a config: never read, never quoted
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:SECRET-LINE:/root:/bin/bash\nadmin: SECRET-VALUE\n")
    cfg = tmp_path / "cfgs" / "c.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"_base_: {os.path.relpath(secret, cfg.parent)}\n")
    err = _one_line(*_tool_main("train", ["--cfg", str(cfg)], capsys))
    assert "SECRET" not in err and str(secret) in err and "not read" in err


def _alias_bomb(levels: int, where: str, ds: dict) -> str:
    lines = [
        "task: classification",
        "model: {NAME: PointTransformer, preset: tiny, cls_dim: 5}",
        f"dataset: {{train: &ds {json.dumps(ds)}, test: *ds}}",
        "data: {npoints: 64}",
        "train: {device: cpu, num_workers: 0, batch_size: 5}",
        "peft:",
        "  NAME: clora",
        f"  {where}:",
        "    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    for i in range(1, levels + 1):
        lines.append(f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [4, 6, 9])
def test_yaml_alias_bomb_is_short_and_fast(tmp_path, levels, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb(levels, "extra_trainable", _fewshot_data(tmp_path / "folds")))
    argv = ["--cfg", str(cfg), "--run-dir", str(tmp_path / "r")]
    if levels < 9:
        rc, stderr = _tool_main("train", argv, capsys)
        err = _one_line(rc, stderr)
    else:  # the probe's hang: in a subprocess with a time limit
        p = _run(["tools/train.py", *argv], timeout=60)
        err, stderr = _one_error_line(p), p.stderr
    assert len(stderr) < 2500, len(stderr)
    assert "extra_trainable" in err or "expands to more than" in err, err


def test_restricted_unpickler_errors_of_allowed_globals_are_data_errors(tmp_path):
    from clora3d.data.safe_pickle import safe_load, safe_loads
    from clora3d.errors import DataError

    bad = b"c_codecs\nencode\n(Vabc\nVno-such-encoding\ntR."
    with pytest.raises(DataError, match="not a readable pickle.*LookupError"):
        safe_loads(bad, "fold.pkl")
    (tmp_path / "0.pkl").write_bytes(bad)
    with pytest.raises(DataError, match=str(tmp_path / "0.pkl")):
        safe_load(tmp_path / "0.pkl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_infer_device_errors(tmp_path, capsys):
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.zeros((10, 3), np.float32))
    for dev, want in (
        ("cuda", "CUDA is not available"),
        ("banana", "not a device"),
        ("cuda:3", "CUDA is not available"),
    ):
        err = _one_line(
            *_tool_main("infer", ["--ckpt", str(tmp_path / "none.pth"), str(cloud), "--device", dev], capsys)
        )
        assert want in err and "--device cpu" in err or want in err, err
    err = _one_line(*_tool_main("export", ["--ckpt", str(tmp_path), "--adapter", "x", "--device", "banana"], capsys))
    assert "not a device" in err


def test_check_device_accepts_cpu():
    from clora3d.engine.infer import check_device

    assert check_device("cpu") == torch.device("cpu")


def test_ops_empty_batch_meta_and_empty_chamfer():
    from clora3d import ops

    pts = torch.randn(0, 7, 5)
    assert ops.gather_points(pts, torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 5)
    assert ops.gather_points(pts, torch.zeros(0, 3, 2, dtype=torch.long)).shape == (0, 3, 2, 5)
    assert ops.gather_points(torch.randn(2, 7, 5), torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 5)
    # like the other ops with B = 0
    assert ops.furthest_point_sample(torch.randn(0, 7, 3), 2).shape == (0, 2)
    meta = torch.empty(1, 8, 3, device="meta")
    for call in (
        lambda: ops.furthest_point_sample(meta, 2),
        lambda: ops.knn(meta, meta, 2),
        lambda: ops.gather_points(meta, torch.zeros(1, 2, dtype=torch.long, device="meta")),
        lambda: ops.chamfer_l2(meta, meta),
    ):
        with pytest.raises(ValueError, match="meta tensor"):
            call()
    with pytest.raises(ValueError, match="empty batch"):
        ops.chamfer_l2_loss(torch.zeros(0, 4, 3), torch.zeros(0, 5, 3))
    # a non-empty batch still gives the brute-force value
    a, b = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    d = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    want = d.min(2).values.mean() + d.min(1).values.mean()
    assert torch.allclose(ops.chamfer_l2_loss(a, b), want, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# loaders: every sample checked once at load time, errors name the file and the sample
# ------------------------------------------------------------------------------------------------
def _scan(tmp_path: Path, edit) -> Path:
    h5py = pytest.importorskip("h5py")
    from clora3d.data.scanobjectnn import scanobjectnn_file
    from clora3d.data.synthetic import write_scanobjectnn

    root = tmp_path / "scan"
    write_scanobjectnn(root, "OBJ_BG", n_train=6, n_test=2, n_points=64, seed=0)
    path = scanobjectnn_file(root, "OBJ_BG", "train")
    with h5py.File(path, "r+") as f:
        edit(f)
    return root


def test_scanobjectnn_fractional_labels_nan_groups_strings_and_wrong_keys(tmp_path):
    from clora3d.data import ScanObjectNN
    from clora3d.errors import DataError

    def fractional(f):
        lab = f["label"][:].astype(np.float64)
        lab[4] = 3.7
        del f["label"]
        f["label"] = lab

    root = _scan(tmp_path / "a", fractional)
    with pytest.raises(DataError, match=r"sample 4 of .*training_objectdataset\.h5: label 3\.7 is not an integer"):
        ScanObjectNN(root, "OBJ_BG", "train")

    def nan(f):
        f["data"][3, 10, 1] = np.nan

    root = _scan(tmp_path / "b", nan)
    with pytest.raises(DataError, match=r"sample 3 of .*training_objectdataset\.h5: non-finite"):
        ScanObjectNN(root, "OBJ_BG", "train")

    def group(f):
        del f["data"]
        f.create_group("data")

    root = _scan(tmp_path / "c", group)
    with pytest.raises(DataError, match=r"training_objectdataset\.h5: h5 entry 'data' is a Group"):
        ScanObjectNN(root, "OBJ_BG", "train")

    def strings(f):
        n = f["data"].shape[0]
        del f["data"]
        f["data"] = np.array([b"abc"] * n)

    root = _scan(tmp_path / "d", strings)
    with pytest.raises(DataError, match=r"h5 entry 'data' holds \|S3 values, expected numbers"):
        ScanObjectNN(root, "OBJ_BG", "train")

    def wrong_keys(f):
        f["points"] = f["data"][:]
        del f["data"]

    root = _scan(tmp_path / "e", wrong_keys)
    with pytest.raises(DataError) as e:
        ScanObjectNN(root, "OBJ_BG", "train")
    assert str(e.value).count("Expected layout") == 1 and "lacks key 'data'" in str(e.value)


def test_modelnet_cache_checks_every_cloud_not_just_the_first(tmp_path):
    import pickle

    from clora3d.data import ModelNet40
    from clora3d.errors import DataError

    rng = np.random.default_rng(0)
    good = [rng.normal(size=(64, 6)).astype(np.float32) for _ in range(5)]
    labels = [np.array([i % 2], dtype=np.int32) for i in range(5)]
    root = tmp_path / "mn"
    root.mkdir()

    def write(points, labs):
        (root / "modelnet40_train_64pts_fps.dat").write_bytes(pickle.dumps([points, labs], protocol=4))

    write(good, labels)
    assert len(ModelNet40(root, "train", n_points=64)) == 5
    short = list(good)
    short[2] = good[2][:30]
    write(short, labels)
    with pytest.raises(DataError, match=r"sample 2 of .*_fps\.dat: cloud has 30 points, fewer than n_points=64"):
        ModelNet40(root, "train", n_points=64)
    nan = [g.copy() for g in good]
    nan[3][7, 0] = np.inf
    write(nan, labels)
    with pytest.raises(DataError, match=r"sample 3 of .*_fps\.dat: non-finite value inf at point 7"):
        ModelNet40(root, "train", n_points=64)
    flat = list(good)
    flat[4] = good[4].reshape(-1)
    write(flat, labels)
    with pytest.raises(DataError, match=r"sample 4 of .*cloud has shape \(384,\)"):
        ModelNet40(root, "train", n_points=64)
    frac = list(labels)
    frac[1] = np.array([1.5])
    write(good, frac)
    with pytest.raises(DataError, match=r"sample 1 of .*label 1\.5 is not an integer"):
        ModelNet40(root, "train", n_points=64)


def _fold(tmp_path: Path, edit) -> dict:
    import pickle

    ds = _fewshot_data(tmp_path / "folds")
    path = tmp_path / "folds" / "5way_4shot" / "0.pkl"
    data = pickle.loads(path.read_bytes())
    edit(data)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return ds


@pytest.mark.parametrize(
    "case,match",
    [
        ("short", r"sample 3 of .*0\.pkl: cloud has 10 points, fewer than n_points=64"),
        ("nan", r"sample 5 of .*0\.pkl: non-finite value nan at point 2"),
        ("fraction", r"sample 1 of .*0\.pkl: label 2\.5 is not an integer"),
        ("malformed", r"sample 6 of .*0\.pkl: malformed entry"),
        ("strings", r"sample 0 of .*0\.pkl: not a numeric point array"),
    ],
)
def test_fewshot_fold_entries_are_all_checked(tmp_path, case, match):
    from clora3d.data import ModelNetFewShot
    from clora3d.errors import DataError

    def edit(data):
        tr = data["train"]
        if case == "short":
            tr[3] = (tr[3][0][:10], tr[3][1], tr[3][2])
        elif case == "nan":
            p = tr[5][0].copy()
            p[2, 1] = np.nan
            tr[5] = (p, tr[5][1], tr[5][2])
        elif case == "fraction":
            tr[1] = (tr[1][0], 2.5, tr[1][2])
        elif case == "malformed":
            tr[6] = (tr[6][0],)
        elif case == "strings":
            tr[0] = (np.array(["a", "b", "c"]), tr[0][1], tr[0][2])

    ds = _fold(tmp_path, edit)
    with pytest.raises(DataError, match=match):
        ModelNetFewShot(ds["root"], 5, 4, 0, "train", n_points=64)


def test_bad_fold_through_train_tool_is_one_line(tmp_path, capsys):
    def edit(data):
        p = data["train"][5][0].copy()
        p[2, 1] = np.nan
        data["train"][5] = (p, data["train"][5][1], data["train"][5][2])

    cfg = _tiny_cfg(tmp_path, _fold(tmp_path, edit))
    err = _one_line(*_tool_main("train", ["--cfg", str(cfg), "--run-dir", str(tmp_path / "r")], capsys))
    assert "sample 5 of" in err and "0.pkl" in err and "non-finite" in err


def test_directory_or_binary_where_a_shape_file_belongs(tmp_path, capsys):
    from clora3d.data import ModelNet40
    from clora3d.data.synthetic import write_modelnet40
    from clora3d.errors import DataError

    root = tmp_path / "mn"
    write_modelnet40(root, num_classes=2, n_train=2, n_test=1, n_points=80, seed=0)
    victim = sorted(root.glob("*/*_0001.txt"))[0]
    victim.unlink()
    victim.mkdir()
    with pytest.raises(DataError, match=rf"{victim}: is a directory where a shape file"):
        ModelNet40(root, "train", n_points=64, cache=False)
    victim.rmdir()
    victim.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=rf"{victim}: not a text shape file"):
        ModelNet40(root, "train", n_points=64, cache=False)
    victim.write_text("0.1,0.2,nan,0,0,1\n" * 100)
    with pytest.raises(DataError, match=rf"{victim}: non-finite value"):
        ModelNet40(root, "train", n_points=64, cache=False)


# ------------------------------------------------------------------------------------------------
# clearer messages: head mismatch, adapter as --ckpt, directories, inference folders
# ------------------------------------------------------------------------------------------------
def test_head_mismatch_adapter_as_ckpt_and_directory(base_and_run, tmp_path, capsys):
    from clora3d.errors import CheckpointError
    from clora3d.models import build_model
    from clora3d.models.checkpoint import load_pretrained, save_point_mae_checkpoint
    from clora3d.peft import apply_peft

    d, base, run_dir, cfg_file = base_and_run
    merged40 = save_point_mae_checkpoint(build_model({**MODEL, "cls_dim": 40}), tmp_path / "m40.pth")
    with pytest.raises(CheckpointError, match=r"task head does not match.*40 outputs.*model's 5.*cls_dim"):
        load_pretrained(build_model(dict(MODEL)), merged40, ignore_head=False, log=None)
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32))
    err = _one_line(*_tool_main("infer", ["--ckpt", str(merged40), "--cfg", str(cfg_file), str(cloud)], capsys))
    assert "task head" in err and "cls_dim" in err and "backbone" not in err, err

    adapter = apply_peft(build_model(dict(MODEL)), {"NAME": "clora"}).save_adapter(tmp_path / "ad.pth")
    err = _one_line(
        *_tool_main(
            "train", ["--cfg", str(cfg_file), "--run-dir", str(tmp_path / "r1"), "--ckpt", str(adapter)], capsys
        )
    )
    assert "adapter file" in err and "load_adapter" in err and "no state dict" not in err, err

    err = _one_line(
        *_tool_main(
            "train", ["--cfg", str(cfg_file), "--run-dir", str(tmp_path / "r2"), "--ckpt", str(tmp_path)], capsys
        )
    )
    assert "is a directory" in err and "not found" not in err, err


def test_one_bad_file_in_an_inference_folder_does_not_stop_the_others(base_and_run, tmp_path, capsys):
    d, base, run_dir, cfg_file = base_and_run
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.npy", "c.npy"):
        np.save(folder / name, rng.normal(size=(100, 3)).astype(np.float32))
    (folder / "b.npy").write_bytes(b"\x93NUMPY garbage that is not an array")
    rc, out, err = _tool_run("infer", ["--ckpt", str(run_dir), str(folder), "--json"], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and str(folder / "b.npy") in lines[0] and "Traceback" not in err, err
    res = json.loads(out)
    assert [Path(r["file"]).name for r in res] == ["a.npy", "b.npy", "c.npy"]
    assert "top" in res[0] and "top" in res[2] and "error" in res[1] and "top" not in res[1]
    rc, out, err = _tool_run("infer", ["--ckpt", str(run_dir), str(folder)], capsys)
    assert rc == 2
    assert str(folder / "a.npy") in out and str(folder / "c.npy") in out and "b.npy" not in out


def test_full_disk_during_training_is_one_line_naming_the_checkpoint(base_and_run, tmp_path):
    d, base, run_dir, cfg_file = base_and_run
    shim = tmp_path / "shim.py"
    shim.write_text(_ENOSPC_SHIM)
    run = tmp_path / "run"
    p = _run(
        [str(shim), "tools/train.py", "--cfg", str(cfg_file), "--run-dir", str(run)], env={"FULL_DISK_AFTER": "20000"}
    )
    err = _one_error_line(p)
    assert "No space left on device" in err and ("ckpt-best.pth" in err or "ckpt-last.pth" in err), err
    assert "enforce fail" not in p.stderr
    assert not list(run.glob(".*.tmp")) and not list(run.glob("ckpt-*.pth"))


def test_full_disk_on_the_log_is_a_storage_error_naming_it(tmp_path):
    import errno

    from clora3d.engine.logging import RunLogger
    from clora3d.errors import StorageError

    log = RunLogger(tmp_path, tensorboard=False)

    class _Full:
        def write(self, s):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass

    real, log._log_file = log._log_file, _Full()
    with pytest.raises(StorageError, match=rf"{tmp_path / 'log.txt'}: No space left on device"):
        log.info("epoch 3")
    real.close()


def test_format_user_error_names_the_file_and_bounds_the_length(tmp_path):
    from clora3d.data import ModelNet40
    from clora3d.errors import ConfigError, DataError, format_user_error

    try:
        open(tmp_path, "rb")
    except OSError as e:
        assert format_user_error(e) == f"error: {tmp_path}: is a directory, expected a file"
    msg = format_user_error(ConfigError("x" * 10_000))
    assert len(msg) < 2100 and msg.endswith("more characters cut]")
    assert format_user_error(RecursionError()).startswith("error: input is nested too deeply")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="data root is a file, expected a folder"):
        ModelNet40(f, "train")


def test_run_dir_without_flock_support_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    import errno

    from clora3d.engine import runlock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="cannot lock run dir"):
        lock = runlock.RunDirLock(tmp_path).acquire()
    lock.release()

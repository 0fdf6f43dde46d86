"""Run directory and logs: stdout, log.txt, metrics.csv / metrics.jsonl, result.json, TensorBoard.

A run dir holds everything needed to reproduce and audit a run:

    config.yaml      the resolved config (every key, defaults filled in)
    env.json         git commit (+ dirty flag), package versions, python, platform, GPU, argv
    log.txt          the run's messages, time-stamped (appended across resumes)
    metrics.csv      one row per epoch (rewritten from the full history every epoch)
    metrics.jsonl    the same as JSON lines
    result.json      the final result dict of ``train`` (last and best metrics)
    tb/              TensorBoard scalars (optional; tensorboard is imported lazily)
    ckpt-last.pth, ckpt-best.pth

Only rank 0 writes; other ranks get a logger that does nothing. :meth:`RunLogger.info` messages also
go to this module's stdlib logger (``clora3d.engine.logging``, level INFO): the command line shows
them on stderr (``clora3d.cli.configure_logging``), a library caller configures logging as it likes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clora3d.storage import atomic_write_bytes, to_plain

__all__ = ["RunLogger", "environment_info", "git_info"]

log = logging.getLogger(__name__)

_DIST_NAME = {"yaml": "PyYAML"}
_PACKAGES = ("torch", "numpy", "yaml", "h5py", "tqdm", "plyfile", "scipy", "open3d", "tensorboard")


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the git checkout holding ``path`` (clora3d's source by default)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if status.returncode == 0:
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def environment_info() -> dict[str, Any]:
    """Versions of python, clora3d and the main packages, platform, CUDA / GPU, ops backend, argv."""

    import clora3d

    versions: dict[str, Any] = {"python": sys.version.split()[0], "clora3d": clora3d.__version__}
    from importlib import metadata

    for name in _PACKAGES:
        mod = sys.modules.get(name)
        if mod is not None:
            versions[name] = getattr(mod, "__version__", "unknown")
            continue
        try:  # the installed version, without importing it (open3d may be installed but unloadable)
            versions[name] = metadata.version(_DIST_NAME.get(name, name))
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "versions": versions,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "argv": list(sys.argv),
        "git": git_info(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        import torch

        env["cuda"] = {
            "available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        }
        env["threads"] = torch.get_num_threads()
    except Exception as e:  # pragma: no cover - torch is a hard dependency
        env["cuda"] = {"error": str(e)}
    try:
        from clora3d import ops

        env["ops_backend"] = ops.backend_info()
    except Exception as e:  # ops not built / not importable: record why
        env["ops_backend"] = {"error": f"{type(e).__name__}: {e}"}
    return env


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class RunLogger:
    """Writes the run dir's logs. ``enabled=False`` (non-zero ranks) makes every method a no-op."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        csv_file: bool = True,
        json_file: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._csv = csv_file
        self._json = json_file
        self._tb = None
        self._log_file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.run_dir / "log.txt", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as e:  # tensorboard not installed: keep training, say so once
                from clora3d.optional import explain_import_failure

                warnings.warn(
                    f"log.tensorboard=true but {explain_import_failure('tensorboard', e)}; "
                    f"training goes on without TensorBoard scalars (or set "
                    f"log.tensorboard=false)",
                    stacklevel=2,
                )
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    # -- text ----------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        """Log ``msg`` (INFO, this module's logger) and append it (time-stamped) to log.txt."""
        if not self.enabled:
            return
        log.info("%s", msg)
        if self._log_file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                for line in str(msg).splitlines() or [""]:
                    self._log_file.write(f"{stamp} {line}\n")
                self._log_file.flush()
            except OSError as e:  # full disk: one error naming the log, not a bare errno
                from clora3d.errors import StorageError

                raise StorageError(
                    f"cannot append to {self.run_dir / 'log.txt'}: "
                    f"{e.strerror or e}; free some space and continue with "
                    "--resume (the checkpoints are intact)"
                ) from None

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            atomic_write_bytes(self.run_dir / name, text.encode("utf-8"), what="run file")

    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            atomic_write_bytes(
                self.run_dir / name,
                (json.dumps(to_plain(obj, nonfinite="str"), indent=2) + "\n").encode("utf-8"),
                what="run file",
            )

    # -- metrics -------------------------------------------------------------------------------
    def write_history(self, history: list[Mapping[str, Any]]) -> None:
        """Rewrite metrics.csv / metrics.jsonl from the full per-epoch history."""
        if not self.enabled:
            return
        flat = [_flatten(h) for h in history]
        if self._csv:
            cols: list[str] = []
            for row in flat:
                for k in row:
                    if k not in cols:
                        cols.append(k)
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=cols, restval="")
            w.writeheader()
            for row in flat:
                w.writerow({k: _fmt(v) for k, v in row.items()})
            atomic_write_bytes(self.run_dir / "metrics.csv", buf.getvalue().encode("utf-8"), what="metrics file")
        if self._json:
            text = "".join(json.dumps(to_plain(h, nonfinite="str")) + "\n" for h in history)
            atomic_write_bytes(self.run_dir / "metrics.jsonl", text.encode("utf-8"), what="metrics file")

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/key`` for the numeric entries of ``values``."""
        if not self.enabled or self._tb is None:
            return
        for k, v in _flatten(values).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            continue
        else:
            out[key] = v
    return out

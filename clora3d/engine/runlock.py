"""A lock on a run directory for the life of a run.

``RunDirLock(run_dir).acquire()`` takes an exclusive ``fcntl.flock`` on ``<run_dir>/.lock`` and
writes the holder into it (pid, host, start time). A second run on the same directory fails at once
with :class:`RunDirLockedError` naming the holder and how to continue. The kernel drops a flock
when its process dies (even by SIGKILL), so the lock of a dead run is taken over by the next one.
Where ``fcntl`` is missing (Windows) the lock is a no-op.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from clora3d.errors import Clora3dError

__all__ = ["RunDirLock", "RunDirLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunDirLockedError(Clora3dError, RuntimeError):
    """Another live run holds the run directory."""


class RunDirLock:
    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        #: the previous holder's record when a stale lock file was taken over
        self.took_over: dict[str, Any] | None = None

    def _read_holder(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 4096)
            rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            return rec if isinstance(rec, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunDirLock:
        if fcntl is None or self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                # a file system without flock (some network mounts): run unlocked, say so once
                os.close(fd)
                warnings.warn(
                    f"cannot lock run dir {self.run_dir} ({e.strerror or e}); make sure no other run uses it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return self
            holder = self._read_holder(fd)
            os.close(fd)
            who = (
                f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
                if holder
                else "another process"
            )
            raise RunDirLockedError(
                f"run dir {self.run_dir} is in use by another run ({who}); wait for it to finish "
                f"(then continue it with --resume), or pass another --run-dir"
            ) from None
        prev = self._read_holder(fd)
        if prev:
            self.took_over = prev
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(rec) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file: nobody holds it
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

"""Where the CUDA toolkit is, whether a build compiles the CUDA kernels, and which torch releases
clora3d runs on: the one copy of that logic.

Two users ask the same question and must get the same answer:

* ``setup.py`` (the build), which runs before clora3d is installed: it loads this file by its path
  (``importlib``), so this module imports only the standard library, nothing of clora3d, and no
  torch (the torch CUDA version is passed in);
* the doctor (``clora3d doctor`` / ``tools/doctor.py``), which reports what a rebuild would do.

``import clora3d`` asks :func:`torch_floor_problem` too (torch's version from its package metadata,
without importing torch).

Nothing runs at import time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

__all__ = [
    "TORCH_FLOOR",
    "torch_release",
    "torch_floor_problem",
    "env_flag",
    "nvcc_reported_home",
    "has_cuda_headers",
    "is_cuda_home",
    "find_cuda_home",
    "parse_nvcc_version",
    "decide_cuda",
    "cuda_plan",
]


#: The oldest torch release clora3d runs on (pyproject.toml's lower bound says the same;
#: `make test-torch-range`, part of CI, runs the test suite on it). Older releases
#: lack what clora3d uses: 2.4's weights-only loader refuses bytes, and the torch.library
#: registration of fake and autograd implementations is new in 2.4.
TORCH_FLOOR = (2, 5)


def torch_release(version: str) -> Optional[tuple[int, int]]:
    """(major, minor) of a torch version string such as ``2.14.1+cu130`` or ``2.12.0a0+git1234``;
    None when it does not start with two numbers."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def torch_floor_problem(version: str, python: str = sys.executable) -> Optional[str]:
    """None when torch ``version`` (e.g. ``2.14.1+cu130``) is new enough, else the message naming the fix."""
    release = torch_release(version)
    if release is None or release >= TORCH_FLOOR:
        return None
    floor = ".".join(map(str, TORCH_FLOOR))
    return (
        f"clora3d needs torch >= {floor}, and this environment ({python}) has torch {version}. "
        f"Upgrade torch, then rebuild clora3d's kernels against it:\n"
        f"    {python} -m pip install 'torch>={floor},<3'\n"
        f"    {python} -m pip install --force-reinstall --no-deps .    (in clora3d's checkout; "
        f"or there: make install)"
    )


def env_flag(env: Mapping[str, str], name: str) -> Optional[bool]:
    """Tri-state boolean environment flag: None when unset/empty, else True for 1/true/yes/on."""
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def _nvcc_name() -> str:
    return "nvcc.exe" if sys.platform == "win32" else "nvcc"


def nvcc_reported_home(nvcc: str, timeout: float = 60.0) -> Optional[str]:
    """Ask nvcc where its toolkit lives (works through wrapper scripts such as /usr/local/bin/nvcc)."""
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.match(r"^#\$ _HERE_=(.+)$", line.strip())
        if m:
            return str(Path(m.group(1).strip()).resolve().parent)
    return None


def has_cuda_headers(path: Optional[str]) -> bool:
    """Whether ``path`` holds the CUDA runtime headers (include/ or targets/*/include/)."""
    if not path:
        return False
    p = Path(path)
    return (p / "include" / "cuda_runtime_api.h").exists() or any(p.glob("targets/*/include/cuda_runtime_api.h"))


def is_cuda_home(path: Optional[str]) -> bool:
    """A usable toolkit has bin/nvcc and the runtime headers."""
    return bool(path) and (Path(path) / "bin" / _nvcc_name()).exists() and has_cuda_headers(path)


def torch_cuda_home_guess(env: Mapping[str, str]) -> Optional[str]:
    """What torch alone would take as CUDA_HOME: CUDA_HOME / CUDA_PATH, else the parent of the folder
    holding the first nvcc on PATH (wrong when that nvcc is a wrapper script)."""
    explicit = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if explicit:
        return explicit
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    return str(Path(nvcc).parent.parent) if nvcc else None


def find_cuda_home(env: Mapping[str, str]) -> Optional[str]:
    """Locate the CUDA toolkit the way torch does, but see through nvcc wrapper scripts.

    torch guesses CUDA_HOME as the parent of the directory holding the first ``nvcc`` on PATH; when
    that is a wrapper (e.g. /usr/local/bin/nvcc) the guess (/usr/local) has no CUDA headers or
    libraries. An explicit CUDA_HOME / CUDA_PATH always wins.
    """
    explicit = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if explicit:
        return explicit
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        guess = str(Path(nvcc).parent.parent)
        if is_cuda_home(guess):
            return guess
        reported = nvcc_reported_home(nvcc)
        if is_cuda_home(reported):
            return reported
    if sys.platform != "win32" and is_cuda_home("/usr/local/cuda"):
        return str(Path("/usr/local/cuda").resolve())
    return None


def parse_nvcc_version(text: str) -> Optional[str]:
    """'Cuda compilation tools, release 13.0, V13.0.88' -> '13.0'."""
    m = re.search(r"release (\d+\.\d+)", text or "")
    return m.group(1) if m else None


def _nvcc_version(nvcc: str) -> Optional[str]:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvcc_version(out.stdout + out.stderr)


def decide_cuda(
    env: Mapping[str, str], torch_cuda_version: Optional[str], cuda_home: Optional[str]
) -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why (the reason is printed during the build).

    Raises RuntimeError when FORCE_CUDA=1 asks for something impossible, naming the fix.
    """
    if env_flag(env, "CLORA3D_CPU_ONLY"):
        return False, "CLORA3D_CPU_ONLY=1"
    force = env_flag(env, "FORCE_CUDA")
    has_nvcc = is_cuda_home(cuda_home)
    if force is False:
        return False, "FORCE_CUDA=0"
    if force:
        if not torch_cuda_version:
            raise RuntimeError(
                "FORCE_CUDA=1 but the installed torch is a CPU-only build (torch.version.cuda is None). "
                "Install a CUDA build of torch (https://pytorch.org/get-started/locally/) or unset FORCE_CUDA."
            )
        if not has_nvcc:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit (bin/nvcc + include/cuda_runtime_api.h) was found "
                f"(CUDA_HOME guess: {cuda_home!r}). Install the CUDA toolkit matching torch "
                f"{torch_cuda_version} and set CUDA_HOME=/path/to/cuda, or unset FORCE_CUDA."
            )
        return True, "FORCE_CUDA=1"
    if not torch_cuda_version:
        return False, "torch is a CPU-only build"
    if not has_nvcc:
        return False, "nvcc not found (set CUDA_HOME to the CUDA toolkit to build the CUDA kernels)"
    return True, f"torch CUDA {torch_cuda_version} and nvcc at {cuda_home}"


def cuda_plan(env: Mapping[str, str], torch_cuda_version: Optional[str]) -> dict:
    """Everything a build in this environment would find and decide about CUDA, as a dict:

    ``cuda_home`` (the toolkit setup.py compiles with, :func:`find_cuda_home`), ``nvcc`` (its nvcc,
    else the first nvcc on PATH), ``nvcc_version``, ``toolkit_root`` (where nvcc says it lives),
    ``torch_guess`` (what torch alone would take as CUDA_HOME), ``build_cuda`` (bool; None when the
    request is impossible) and ``reason`` (why, or the error of an impossible FORCE_CUDA=1).
    """
    cuda_home = find_cuda_home(env)
    nvcc = None
    if cuda_home and (Path(cuda_home) / "bin" / _nvcc_name()).exists():
        nvcc = str(Path(cuda_home) / "bin" / _nvcc_name())
    else:
        nvcc = shutil.which("nvcc", path=env.get("PATH"))
    try:
        build, reason = decide_cuda(env, torch_cuda_version, cuda_home)
    except RuntimeError as e:
        build, reason = None, str(e)
    return {
        "cuda_home": cuda_home,
        "nvcc": nvcc,
        "nvcc_version": _nvcc_version(nvcc) if nvcc else None,
        "toolkit_root": nvcc_reported_home(nvcc) if nvcc else None,
        "torch_guess": torch_cuda_home_guess(env),
        "build_cuda": build,
        "reason": reason,
    }

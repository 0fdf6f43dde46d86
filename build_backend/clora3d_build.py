"""PEP 517 build backend of clora3d: setuptools, compiling the kernels against the right torch.

clora3d's compiled kernels (``clora3d._C``) must be built against the torch that will import them:
a kernel built against another torch release does not load. torch is therefore not a build
requirement (an isolated build would install a second, possibly different, torch just to compile).
Under pip's default build isolation the build process runs on the target environment's
interpreter with that environment's site-packages hidden; this backend asks that interpreter,
without the isolation's environment variables, where its torch lives and puts that folder at the
END of ``sys.path`` (the isolated setuptools still wins). setup.py then compiles against it.

When the target environment has no torch, building a wheel stops with a message saying what to
run, instead of installing a package without kernels. ``CLORA3D_NO_KERNELS=1`` builds the
pure-Python package on purpose (every op then runs its PyTorch reference).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook we do not wrap)

_PROBE = (
    "import os, torch; print(os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))); "
    "print(torch.__version__)"
)
# variables with which pip (and build) hide the target environment from the build process
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _torch_visible() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _target_torch_site() -> tuple[str, str] | None:
    """(site-packages folder holding the target environment's torch, torch version) or None."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    with tempfile.TemporaryDirectory() as cwd:  # never pick up a ./torch folder
        try:
            r = subprocess.run(
                [sys.executable, "-c", _PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.SubprocessError):
            return None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or len(lines) < 2:
        return None
    return lines[-2], lines[-1]


def _ensure_torch() -> None:
    if _flag("CLORA3D_NO_KERNELS") or _torch_visible():
        return
    found = _target_torch_site()
    if found is None:
        raise SystemExit(
            "clora3d build: no torch in the environment being installed into "
            f"({sys.executable}). clora3d compiles its kernels against the torch that will run them, "
            "so install torch first and then clora3d:\n"
            f"    {sys.executable} -m pip install torch\n"
            f"    {sys.executable} -m pip install .        (or: pip install git+<url>)\n"
            "(CLORA3D_NO_KERNELS=1 builds the package without kernels; every op then runs its "
            "30-60x slower PyTorch reference.)"
        )
    site, version = found
    if site not in sys.path:
        sys.path.append(site)
    sys.stderr.write(f"clora3d build: compiling the kernels against torch {version} from {site}\n")


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _ensure_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _ensure_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)

"""Installing clora3d the way a Python user does: ``pip install .`` with pip's default build isolation.

The slow tests build real venvs (torch 2.13.0, the small CPU-only build, then clora3d from a copy
of this checkout) and check that the installed package has working compiled kernels built against
that torch, and that an environment without torch gets a message saying what to run instead of a
package without kernels. `.ci/run` runs them on every commit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_setup():
    spec = importlib.util.spec_from_file_location("clora3d_setup", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_only_build_commands_need_torch():
    setup = _load_setup()
    assert setup.builds_binaries(["bdist_wheel", "--dist-dir", "x"])
    assert setup.builds_binaries(["editable_wheel"]) and setup.builds_binaries(["build_ext", "--inplace"])
    assert not setup.builds_binaries(["egg_info", "--egg-base", "x"])
    assert not setup.builds_binaries(["sdist"])


def test_lock_pins_every_package_exactly():
    lock = REPO / "requirements" / "lock-linux-x86_64.txt"
    lines = [ln.split("#")[0].strip() for ln in lock.read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs and all("==" in r and not any(c in r for c in "<>~!*") for r in reqs), reqs
    names = {r.split("==")[0].lower() for r in reqs}
    # the direct dependencies of `make demo` and `make test`, and the build tools
    for need in (
        "torch",
        "numpy",
        "pyyaml",
        "h5py",
        "tqdm",
        "matplotlib",
        "plyfile",
        "pytest",
        "hypothesis",
        "tensorboard",
        "pip",
        "setuptools",
        "wheel",
    ):
        assert need in names, need
    # benchmark peers and open3d are not part of the two README commands
    assert not names & {"open3d", "fpsample", "pykdtree", "faiss-cpu", "scipy", "scikit-learn"}


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def _copy_checkout(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".venv*",
        "build",
        "*.so",
        "*.egg-info",
        ".git",
        "__pycache__",
        "demo_out",
        "runs",
        ".hypothesis",
        ".pytest_cache",
    )
    shutil.copytree(REPO, dst, ignore=ignore, dirs_exist_ok=False)
    return dst


def _pip(py: Path, *args: str, env=None, timeout=1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(py), "-m", "pip", "install", "--progress-bar", "off", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env=env,
    )


@pytest.mark.slow
def test_pip_install_without_torch_says_what_to_run(tmp_path):
    py = _venv(tmp_path / "venv")
    src = _copy_checkout(tmp_path / "src")
    r = _pip(py, "--no-deps", str(src))
    assert r.returncode != 0
    assert "no torch in the environment being installed into" in r.stdout + r.stderr
    assert f"{py} -m pip install torch" in r.stdout + r.stderr


@pytest.mark.slow
def test_pip_install_with_build_isolation_builds_kernels_against_the_envs_torch(tmp_path):
    py = _venv(tmp_path / "venv")
    lock = REPO / "requirements" / "lock-linux-x86_64.txt"
    r = _pip(py, "--only-binary", ":all:", "torch==2.13.0")
    assert r.returncode == 0, r.stderr[-3000:]
    src = _copy_checkout(tmp_path / "src")
    env = dict(os.environ, CLORA3D_CPU_ONLY="1", MAX_JOBS="2")
    # default build isolation: no --no-build-isolation; dependencies pinned by the lock minus torch
    pins = tmp_path / "pins.txt"
    pins.write_text(
        "".join(
            ln + "\n"
            for ln in lock.read_text().splitlines()
            if not ln.startswith(("torch==", "triton==", "nvidia-", "cuda-"))
        )
    )
    r = _pip(py, "-c", str(pins), str(src), env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    code = (
        "import torch, clora3d.ops as o\n"
        "i = o.backend_info()\n"
        "assert i['native_available'], i['native_error']\n"
        "assert i['build_info']['torch_version'] == torch.__version__.split('+')[0], i['build_info']\n"
        "x = torch.rand(2, 64, 3)\n"
        "assert o.backend_info()['ops']['knn']['cpu']['backend'] == 'native'\n"
        "d, idx = o.knn(x, x, 4)\n"
        "assert (idx[..., 0] == torch.arange(64)).all()\n"
        "print(o.kernels_summary())\n"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("clora3d kernels: native CPU")

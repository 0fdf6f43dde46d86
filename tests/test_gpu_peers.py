"""benchmarks/gpu_peers.py without a GPU: the arch-list patch on a setup.py modelled on
pointnet2_ops' own, the source export, the parallel-subset driver for torch_cluster, and builds that
fail or overrun without failing the command."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_peers  # noqa: E402

OLD_LIST = "3.7+PTX;5.0;6.0;6.1;6.2;7.0;7.5"

# pointnet2_ops_lib/setup.py of erikwijmans/Pointnet2_PyTorch (b5ceb6d), abridged: the hard-coded
# architecture list sits between the version exec and setup()
POINTNET2_SETUP = textwrap.dedent(
    f"""\
    import glob
    import os
    import os.path as osp

    from setuptools import find_packages, setup
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    this_dir = osp.dirname(osp.abspath(__file__))
    _ext_src_root = osp.join("pointnet2_ops", "_ext-src")
    _ext_sources = glob.glob(osp.join(_ext_src_root, "src", "*.cpp")) + glob.glob(
        osp.join(_ext_src_root, "src", "*.cu")
    )

    requirements = ["torch>=1.4"]

    exec(open(osp.join("pointnet2_ops", "_version.py")).read())

    os.environ["TORCH_CUDA_ARCH_LIST"] = "{OLD_LIST}"
    setup(
        name="pointnet2_ops",
        version=__version__,
        packages=find_packages(),
        install_requires=requirements,
        ext_modules=[
            CUDAExtension(
                name="pointnet2_ops._ext",
                sources=_ext_sources,
                extra_compile_args={{"cxx": ["-O3"], "nvcc": ["-O3", "-Xfatbin", "-compress-all"]}},
            )
        ],
        cmdclass={{"build_ext": BuildExtension}},
        include_package_data=True,
    )
    """
)
# its pointnet2_utils.py JIT fallback, abridged
POINTNET2_UTILS = textwrap.dedent(
    f"""\
    import torch
    import warnings

    try:
        import pointnet2_ops._ext as _ext
    except ImportError:
        from torch.utils.cpp_extension import load
        import os

        warnings.warn("Unable to load pointnet2_ops cpp extension. JIT Compiling.")
        os.environ["TORCH_CUDA_ARCH_LIST"] = "{OLD_LIST}"
        _ext = None
    """
)


def _fake_pointnet2(root: Path) -> Path:
    (root / "pointnet2_ops").mkdir(parents=True)
    (root / "pointnet2_ops" / "_version.py").write_text('__version__ = "3.0.0"\n')
    (root / "pointnet2_ops" / "pointnet2_utils.py").write_text(POINTNET2_UTILS)
    (root / "setup.py").write_text(POINTNET2_SETUP)
    return root / "setup.py"


def _run_setup(setup_py: Path, monkeypatch, arch: str | None) -> tuple[str | None, dict]:
    """Execute setup.py with stub setuptools / torch modules; return TORCH_CUDA_ARCH_LIST as seen
    when setup() is called, and setup()'s arguments."""
    seen = {}

    def setup(**kw):
        seen.update(kw, arch=os.environ.get("TORCH_CUDA_ARCH_LIST"))

    st = types.ModuleType("setuptools")
    st.setup, st.find_packages = setup, lambda: ["pointnet2_ops"]
    ce = types.ModuleType("torch.utils.cpp_extension")
    ce.BuildExtension, ce.CUDAExtension = object, lambda **kw: kw
    for name, mod in {
        "setuptools": st,
        "torch": types.ModuleType("torch"),
        "torch.utils": types.ModuleType("torch.utils"),
        "torch.utils.cpp_extension": ce,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    if arch is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch)
    monkeypatch.chdir(setup_py.parent)
    exec(compile(setup_py.read_text(), str(setup_py), "exec"), {"__name__": "__main__", "__file__": str(setup_py)})
    return seen.pop("arch"), seen


def test_arch_list_patch_lets_the_environment_win(tmp_path, monkeypatch):
    setup_py = _fake_pointnet2(tmp_path / "p2")
    # the bug: unpatched, the file overrides the caller's list with one nvcc >= 12 rejects
    assert _run_setup(setup_py, monkeypatch, "9.0")[0] == OLD_LIST
    assert gpu_peers.patch_arch_list(setup_py) == 1
    arch, kw = _run_setup(setup_py, monkeypatch, "9.0")
    assert arch == "9.0" and kw["name"] == "pointnet2_ops" and kw["version"] == "3.0.0"
    assert _run_setup(setup_py, monkeypatch, None)[0] == OLD_LIST  # unset: the old default, as before
    before = setup_py.read_text()
    assert gpu_peers.patch_arch_list(setup_py) == 0 and setup_py.read_text() == before  # idempotent
    # the JIT fallback in pointnet2_utils.py, indented inside except: still valid Python
    utils = setup_py.parent / "pointnet2_ops" / "pointnet2_utils.py"
    assert gpu_peers.patch_arch_list(utils) == 1
    ast.parse(utils.read_text())
    assert f'\n    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "{OLD_LIST}")\n' in utils.read_text()


def test_arch_list_patch_refuses_a_form_it_does_not_know(tmp_path):
    f = tmp_path / "setup.py"
    f.write_text('import os\nos.putenv("TORCH_CUDA_ARCH_LIST", "3.7")\nos.environ["TORCH_CUDA_ARCH_LIST"] = "5.0"\n')
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        gpu_peers.patch_arch_list(f)


def test_real_pointnet2_setup_is_patched_when_carried():
    """On a checkout where build/peers was prepared: the carried file has exactly one assignment."""
    real = gpu_peers.PEERS / gpu_peers.SRC_DIRS["pointnet2_ops"] / "setup.py"
    if not real.exists():
        pytest.skip("build/peers not prepared here")
    text = real.read_text()
    assert len(gpu_peers.ARCH_ASSIGN.findall(text)) == 1


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def test_prepare_exports_sources_only(tmp_path):
    repo = tmp_path / "Point-MAE"
    for rel, text in {
        "extensions/chamfer_dist/setup.py": "x",
        "extensions/chamfer_dist/__init__.py": "import chamfer\n",
        "models/Point_MAE.py": "m",
        "figure/net.jpg": "jpg",
        "build.log": "log",
    }.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "c")
    (repo / "models" / "uncommitted.py").write_text("not in HEAD")
    lib = tmp_path / "p2"
    _fake_pointnet2(lib / "pointnet2_ops_lib")
    (lib / "UNLICENSE").write_text("public domain")
    out = tmp_path / "peers"
    (out / "site").mkdir(parents=True)  # a stale build: removed
    args = types.SimpleNamespace(
        root=str(out), pointnet2=str(lib), point_mae=str(repo), knn_cuda=None, torch_cluster=None
    )
    assert gpu_peers.prepare(args) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "Point-MAE/extensions/chamfer_dist/__init__.py",
        "Point-MAE/extensions/chamfer_dist/setup.py",
        "Point-MAE/models/Point_MAE.py",
        "SOURCES.json",
        "pointnet2_ops_lib/UNLICENSE",
        "pointnet2_ops_lib/pointnet2_ops/_version.py",
        "pointnet2_ops_lib/pointnet2_ops/pointnet2_utils.py",
        "pointnet2_ops_lib/setup.py",
    ]
    sources = json.loads((out / "SOURCES.json").read_text())
    assert sources["chamfer"]["commit"] == _git(repo, "rev-parse", "HEAD").strip()
    assert "commit" not in sources["pointnet2_ops"]  # a plain folder


def test_torch_cluster_subset_driver_keeps_only_the_named_extensions(tmp_path):
    fake = tmp_path / "fake_setuptools"
    (fake / "setuptools").mkdir(parents=True)
    (fake / "setuptools" / "__init__.py").write_text(
        "import json, sys\n"
        "def setup(**kw):\n"
        "    print(json.dumps({'exts': [e.name for e in kw['ext_modules']], 'argv': sys.argv[1:]}))\n"
    )
    work = tmp_path / "tc"
    work.mkdir()
    (work / "setup.py").write_text(
        "from setuptools import setup\n"
        "class E:\n"
        "    def __init__(self, name): self.name = name\n"
        "setup(name='torch_cluster', ext_modules=[E('torch_cluster._fps_cuda'), E('torch_cluster._knn_cuda'),"
        " E('torch_cluster._rw_cuda')])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", gpu_peers.SUBSET_DRIVER, "_knn_cuda,_rw_cuda", "build_ext", "--build-lib", "x"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(fake)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(r.stdout) == {
        "exts": ["torch_cluster._knn_cuda", "torch_cluster._rw_cuda"],
        "argv": ["build_ext", "--build-lib", "x"],
    }


def test_split_jobs():
    assert gpu_peers.split_jobs(16, ["pointnet2_ops", "chamfer", "knn_cuda", "torch_cluster"]) == {
        "pointnet2_ops": 4,
        "chamfer": 1,
        "knn_cuda": 1,
        "torch_cluster": 10,
    }
    assert gpu_peers.split_jobs(1, ["pointnet2_ops", "chamfer"]) == {"pointnet2_ops": 1, "chamfer": 1}
    assert gpu_peers.split_jobs(64, ["chamfer"]) == {"chamfer": 2}


def test_run_stage_time_box_kills_and_reports(tmp_path):
    log = tmp_path / "x.log"
    py = sys.executable
    sleeper = gpu_peers.Cmd([py, "-c", "import time; time.sleep(60)"], tmp_path)
    quick = gpu_peers.Cmd([py, "-c", "print('done')"], tmp_path)
    t = time.time()
    assert gpu_peers.run_stage([quick, sleeper], log, time.time() + 1.0)[0] == "timeout"
    assert time.time() - t < 20
    fail = gpu_peers.Cmd([py, "-c", "import sys; print('error: nvcc fatal : bad arch'); sys.exit(2)"], tmp_path)
    outcome, bad = gpu_peers.run_stage([fail], log, time.time() + 30)
    assert outcome == "rc=2" and gpu_peers._last_error(bad) == "error: nvcc fatal : bad arch"
    unset = gpu_peers.Cmd([py, "-c", "import os; print('ARCH', os.environ.get('TORCH_CUDA_ARCH_LIST'))"], tmp_path)
    unset.unset = ("TORCH_CUDA_ARCH_LIST",)
    log.unlink()
    assert gpu_peers.run_stage([unset], log, time.time() + 30)[0] == "ok"
    assert "ARCH None" in log.read_text()


def test_build_reports_each_peer_and_never_fails(tmp_path, monkeypatch, capsys):
    """A fake pointnet2_ops (its setup.py records the arch list it ends up with) builds with the
    caller's list; a chamfer whose build errors is FAILED; the command still succeeds."""
    root = tmp_path / "peers"
    lib = root / "pointnet2_ops_lib"
    _fake_pointnet2(lib)
    assignment = f'os.environ["TORCH_CUDA_ARCH_LIST"] = "{OLD_LIST}"\n'
    (lib / "setup.py").write_text(
        "import os, sys\n"
        + assignment
        + 'lib = sys.argv[sys.argv.index("--build-lib") + 1]\n'
        + 'open(os.path.join(lib, "arch.txt"), "w").write(os.environ["TORCH_CUDA_ARCH_LIST"])\n'
    )
    ext = root / "Point-MAE" / "extensions" / "chamfer_dist"
    ext.mkdir(parents=True)
    (ext / "setup.py").write_text("raise SystemExit('error: chamfer.cu: identifier undefined')\n")
    facts = {"torch": "2.x", "cuda": "13.0", "python": "3", "gpu": False, "capability": None, "site": str(tmp_path)}
    monkeypatch.setattr(gpu_peers, "torch_facts", lambda: facts)
    monkeypatch.setattr(gpu_peers, "cuda_home", lambda: None)
    args = types.SimpleNamespace(root=str(root), arch="9.0", jobs=2, timeout=60.0, nice=0, only=None)
    assert gpu_peers.build(args) == 0
    out = capsys.readouterr().out
    assert (root / "site" / "arch.txt").read_text() == "9.0"
    assert "peer pointnet2_ops: ok" in out
    assert "peer chamfer: FAILED" in out and "identifier undefined" in out
    info = json.loads((root / "site" / "BUILD_INFO.json").read_text())
    assert info["arch"] == "9.0" and info["results"]["chamfer"]["status"] == "FAILED"
    assert assignment in (lib / "setup.py").read_text()  # the carried copy is untouched; its build copy patched
    # again, after an import left bytecode in the carried sources: pointnet2_ops is reused, only
    # chamfer is retried
    (lib / "pointnet2_ops" / "__pycache__").mkdir()
    (lib / "pointnet2_ops" / "__pycache__" / "pointnet2_utils.cpython-312.pyc").write_bytes(b"\0")
    assert gpu_peers.build(args) == 0
    out = capsys.readouterr().out
    assert "peer pointnet2_ops: ok in" in out and "already built" in out and "peer chamfer: FAILED" in out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_terminating_the_build_takes_its_compilers_down(tmp_path):
    """gpu_check stops a peer build with SIGTERM (its own build failed, or the wait ran out): the
    compilers, each in its own process group, must not outlive it."""
    ext = tmp_path / "peers" / "Point-MAE" / "extensions" / "chamfer_dist"
    ext.mkdir(parents=True)
    pid_file = tmp_path / "pid"
    (ext / "setup.py").write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_peers.py"), "--root", str(tmp_path / "peers")]
    proc = subprocess.Popen([*cmd, "build", "--arch", "9.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while not (pid_file.exists() and pid_file.read_text()) and time.time() - t < 60:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert _alive(child)
    proc.terminate()
    assert proc.wait(timeout=30) != 0
    t = time.time()
    while _alive(child) and time.time() - t < 10:
        time.sleep(0.1)
    assert not _alive(child)

"""Build logic (setup.py, pyproject.toml, MANIFEST.in) and the CUDA sources' contract.

Nothing here compiles: setup.py's decisions are pure functions, checked against hand-written
expectations; the C++ headers are checked against each other (CUDA signatures must equal the CPU
ones). The real compile happens in `.ci/run` (FORCE_CUDA=1 make test).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import stat
import sys
import tokenize
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
OPS = [
    "fps",
    "knn",
    "gather_forward",
    "gather_backward",
    "three_nn",
    "three_interpolate_forward",
    "three_interpolate_backward",
    "chamfer_forward",
    "chamfer_backward",
]


@pytest.fixture(scope="module")
def setup_mod():
    """setup.py loaded as a module: its __main__ guard must keep setup() from running."""
    spec = importlib.util.spec_from_file_location("clora3d_setup_under_test", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_toolkit(root: Path) -> Path:
    """A directory that looks like a CUDA toolkit: bin/nvcc + include/cuda_runtime_api.h."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    (root / "include" / "cuda_runtime_api.h").write_text("/* fake */\n")
    return root


# ---------------------------------------------------------------- setup.py decisions


def test_env_flag_is_tristate(setup_mod):
    f = setup_mod.env_flag
    assert f({}, "X") is None
    assert f({"X": ""}, "X") is None
    for v in ("1", "true", "YES", "on"):
        assert f({"X": v}, "X") is True
    for v in ("0", "false", "no", "off"):
        assert f({"X": v}, "X") is False


def test_decide_cuda_matrix(setup_mod, tmp_path):
    tk = str(_fake_toolkit(tmp_path / "cuda"))
    decide = setup_mod.decide_cuda
    assert decide({}, "12.4", tk)[0] is True  # CUDA torch + nvcc -> build
    assert decide({}, None, tk) == (False, "torch is a CPU-only build")
    assert decide({}, "12.4", None)[0] is False  # no nvcc -> CPU kernels only
    assert decide({}, "12.4", str(tmp_path))[0] is False  # a dir without a toolkit
    assert decide({"CLORA3D_CPU_ONLY": "1"}, "12.4", tk) == (False, "CLORA3D_CPU_ONLY=1")
    assert decide({"CLORA3D_CPU_ONLY": "1", "FORCE_CUDA": "1"}, "12.4", tk)[0] is False
    assert decide({"FORCE_CUDA": "0"}, "12.4", tk) == (False, "FORCE_CUDA=0")
    assert decide({"FORCE_CUDA": "1"}, "12.4", tk) == (True, "FORCE_CUDA=1")


def test_force_cuda_impossible_requests_fail_with_the_fix(setup_mod, tmp_path):
    with pytest.raises(RuntimeError, match="CPU-only build"):
        setup_mod.decide_cuda({"FORCE_CUDA": "1"}, None, str(_fake_toolkit(tmp_path / "c")))
    with pytest.raises(RuntimeError, match="CUDA_HOME"):
        setup_mod.decide_cuda({"FORCE_CUDA": "1"}, "12.4", None)


def test_find_cuda_home_explicit_wins(setup_mod, tmp_path):
    assert setup_mod.find_cuda_home({"CUDA_HOME": "/opt/x", "PATH": ""}) == "/opt/x"
    assert setup_mod.find_cuda_home({"CUDA_PATH": "/opt/y", "PATH": ""}) == "/opt/y"


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script wrapper")
def test_find_cuda_home_sees_through_nvcc_wrapper(setup_mod, tmp_path):
    # /usr/local/bin/nvcc-style wrapper: torch would guess CUDA_HOME=<wrapper>/.. (no headers).
    real = _fake_toolkit(tmp_path / "cuda-12.4")
    wrapper_bin = tmp_path / "local" / "bin"
    wrapper_bin.mkdir(parents=True)
    wrapper = wrapper_bin / "nvcc"
    wrapper.write_text(f"#!/bin/sh\necho '#$ _HERE_={real / 'bin'}'\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    assert setup_mod.find_cuda_home({"PATH": str(wrapper_bin)}) == str(real.resolve())
    # A real toolkit on PATH is taken as is.
    assert setup_mod.find_cuda_home({"PATH": str(real / "bin")}) == str(real)


def test_arch_list_from_user_env_is_used_verbatim(setup_mod):
    r = setup_mod.resolve_arch_list
    assert r({"TORCH_CUDA_ARCH_LIST": "8.0;8.6+PTX"}, [(7, 5)], ["sm_90"]) == ("8.0;8.6+PTX", "TORCH_CUDA_ARCH_LIST")
    assert r({"TORCH_CUDA_ARCH_LIST": "8.6 9.0"}, [], [])[0] == "8.6;9.0"
    assert r({"TORCH_CUDA_ARCH_LIST": "Ampere"}, [], [])[0] == "Ampere"
    with pytest.raises(RuntimeError, match="TORCH_CUDA_ARCH_LIST"):
        r({"TORCH_CUDA_ARCH_LIST": "8.0;rm -rf"}, [], [])


def test_arch_list_defaults_without_hardcoding(setup_mod):
    r = setup_mod.resolve_arch_list
    # visible GPUs: unique, sorted, PTX on the newest (what torch does for visible devices)
    assert r({}, [(8, 6), (7, 5), (8, 6)], ["sm_90"]) == ("7.5;8.6+PTX", "visible GPUs")
    assert r({"TORCH_CUDA_ARCH_LIST": "native"}, [(9, 0)], [])[0] == "9.0+PTX"
    # no GPU: the architectures this torch was compiled for
    arch, src = r({}, [], ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"])
    assert arch == "7.5;8.0;8.6;9.0;10.0;12.0+PTX" and "get_arch_list" in src
    with pytest.raises(RuntimeError, match="TORCH_CUDA_ARCH_LIST"):
        r({}, [], [])


def test_setup_py_hard_codes_no_architecture(setup_mod):
    """Strip comments and strings: the code itself must not contain any arch number or sm_/compute_."""
    code = []
    with open(REPO / "setup.py", "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING):
                code.append(tok.string)
    text = " ".join(code)
    assert not re.search(r"\b\d+\.\d\b", text), "numeric arch-like literal in setup.py code"
    assert "compute_" not in text and "sm_" not in text


def test_arch_macro_survives_a_shell(setup_mod):
    """ninja runs the host compiler through a shell with -D flags unquoted: the value must be inert."""
    for arch in ("8.0;8.6+PTX", "7.5;8.0;8.6;9.0;10.0;12.0+PTX", "9.0a", "Ampere"):
        value = setup_mod.arch_macro_value(arch)
        flag = f"-DCLORA3D_CUDA_ARCH_TOKENS={value}"
        assert shlex.split(flag) == [flag]
        assert "," not in value  # nvcc splits option values at commas
        assert value.replace("_", ";") == arch
    macros = dict(setup_mod.cuda_define_macros("8.0;8.6+PTX"))
    assert "WITH_CUDA" in macros
    assert macros["CLORA3D_CUDA_ARCHS"] == "clora3d_cuda_archs"  # names the C string in version.cu
    assert re.fullmatch(r"[A-Za-z_]\w*", macros["CLORA3D_CUDA_ARCHS"])


def test_openmp_flags_per_platform(setup_mod):
    assert setup_mod.openmp_flags("linux") == (["-fopenmp"], ["-fopenmp"])
    assert setup_mod.openmp_flags("win32") == (["/openmp"], [])
    assert setup_mod.openmp_flags("darwin") == ([], [])


def test_sources_and_nvidia_headers(setup_mod, tmp_path):
    srcs = setup_mod.cpu_sources()
    assert srcs[0] == "csrc/bindings.cpp"
    assert all(s.startswith("csrc/cpu/") and s.endswith(".cpp") for s in srcs[1:])
    cu = setup_mod.cuda_sources()
    assert {Path(s).stem for s in cu} >= {"fps", "knn", "gather", "three_nn", "three_interpolate", "chamfer"}
    (tmp_path / "nvidia" / "cu13" / "include").mkdir(parents=True)
    (tmp_path / "nvidia" / "cudnn" / "include").mkdir(parents=True)
    dirs = setup_mod.nvidia_wheel_include_dirs(tmp_path)
    assert dirs == sorted(str(tmp_path / "nvidia" / p / "include") for p in ("cu13", "cudnn"))


def test_wheel_headers_only_when_the_toolkit_lacks_them(setup_mod, tmp_path):
    tk = _fake_toolkit(tmp_path / "cuda")
    assert not setup_mod.toolkit_has_header(str(tk), "cusparse.h")
    (tk / "include" / "cusparse.h").write_text("/* fake */\n")
    assert setup_mod.toolkit_has_header(str(tk), "cusparse.h")
    assert not setup_mod.toolkit_has_header(None, "cusparse.h")


def test_wheel_headers_come_after_the_toolkits(setup_mod, tmp_path):
    """torch 2.15's wheels carry CUDA 13.2 headers; as -I directories they shadowed an nvcc 13.0
    toolkit's own cuda_runtime_api.h and the build stopped ("CUDA compiler and CUDA toolkit headers
    are incompatible"). They must be searched last, in the host and the nvcc compiles alike."""
    dirs = [str(tmp_path / "nvidia" / "cu13" / "include"), str(tmp_path / "nvidia" / "cudnn" / "include")]
    include_dirs, cxx, nvcc = setup_mod.wheel_header_flags(dirs, "linux")
    assert include_dirs == []
    assert cxx == ["-idirafter", dirs[0], "-idirafter", dirs[1]]
    assert nvcc == ["-Xcompiler", f"-idirafter,{dirs[0]}", "-Xcompiler", f"-idirafter,{dirs[1]}"]
    assert setup_mod.wheel_header_flags(dirs, "win32") == (dirs, [], [])  # MSVC: no -idirafter


def test_idirafter_loses_to_the_toolkit_and_fills_what_it_lacks(setup_mod, tmp_path):
    """The flags with the real compiler: a header in both places comes from the -I (toolkit)
    directory, one only in the wheel directory is still found."""
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    toolkit, wheel = tmp_path / "toolkit", tmp_path / "wheel"
    toolkit.mkdir()
    wheel.mkdir()
    (toolkit / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 13000\n")
    (wheel / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 13020\n")
    (wheel / "cusparse.h").write_text("#define CUSPARSE_FROM_WHEEL 1\n")
    src = tmp_path / "probe.cpp"
    src.write_text(
        '#include "cuda_runtime_api.h"\n#include <cusparse.h>\n'
        "static_assert(CUDART_VERSION == 13000, \"the wheel's header shadowed the toolkit's\");\n"
        'static_assert(CUSPARSE_FROM_WHEEL == 1, "");\nint main() { return 0; }\n'
    )
    _, flags, _ = setup_mod.wheel_header_flags([str(wheel)], "linux")
    proc = subprocess.run(
        [cxx, "-fsyntax-only", *flags, f"-I{toolkit}", str(src)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not torch.version.cuda, reason="CPU-only torch has no nvidia-* wheels")
def test_cusparse_header_is_found_for_a_cuda_torch(setup_mod):
    import sysconfig

    dirs = setup_mod.nvidia_wheel_include_dirs(Path(sysconfig.get_paths()["purelib"]))
    if not dirs:
        pytest.skip("torch's CUDA headers do not come from nvidia-* wheels here")
    assert any((Path(d) / "cusparse.h").exists() for d in dirs)


# ---------------------------------------------------------------- packaging files


def test_pyproject_build_system():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    req = data["build-system"]["requires"]
    assert any(r.startswith("setuptools") for r in req) and any(r.startswith("wheel") for r in req)
    assert not any(r.startswith("torch") for r in req), "torch must come from the user's env"
    # the in-tree backend that compiles against the target environment's torch under build isolation
    assert data["build-system"]["build-backend"] == "clora3d_build"
    assert data["build-system"]["backend-path"] == ["build_backend"]
    assert (REPO / "build_backend" / "clora3d_build.py").is_file()
    assert data["project"]["name"] == "clora3d"
    assert "version" in data["project"]["dynamic"]
    assert set(data["project"]["optional-dependencies"]) >= {"dev", "bench"}


def test_manifest_ships_kernel_sources():
    text = (REPO / "MANIFEST.in").read_text()
    assert re.search(r"recursive-include csrc .*\*\.cu\b", text)
    assert "*.cuh" in text and "*.h" in text and "*.cpp" in text
    # an sdist must carry the build backend named in pyproject.toml
    assert re.search(r"recursive-include build_backend \*\.py", text)


# ---------------------------------------------------------------- C++ / CUDA contract


def _decls(header: Path, suffix: str) -> dict[str, str]:
    """{op: 'return_type(param types)'} of every `<op>_<suffix>(...)` declaration in a header."""
    text = re.sub(r"//[^\n]*", "", header.read_text())
    out = {}
    for m in re.finditer(r"([\w:<>,\s]+?)\s+(\w+)_" + suffix + r"\s*\(([^)]*)\)\s*;", text):
        ret = re.sub(r"\s+", "", m.group(1).split(";")[-1].split("}")[-1])
        types = [re.sub(r"\s+", "", re.sub(r"\w+\s*$", "", p.strip())) for p in m.group(3).split(",")]
        out[m.group(2)] = f"{ret}({','.join(types)})"
    return out


def test_cuda_signatures_equal_cpu_signatures():
    cpu_h = CSRC / "cpu" / "cpu_ops.h"
    if not cpu_h.exists():
        pytest.skip("csrc/cpu/cpu_ops.h not there yet")
    cuda = _decls(CSRC / "cuda" / "cuda_ops.h", "cuda")
    cpu = _decls(cpu_h, "cpu")
    assert set(cuda) == set(OPS), sorted(cuda)
    for op in OPS:
        assert cuda[op] == cpu.get(op), (op, cuda[op], cpu.get(op))


def _strip_cpp_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


@pytest.mark.parametrize("name", ["fps", "knn", "gather", "three_nn", "three_interpolate", "chamfer"])
def test_cuda_file_follows_the_house_rules(name):
    text = _strip_cpp_comments((CSRC / "cuda" / f"{name}.cu").read_text())
    launches = len(re.findall(r"<<<", text))
    checks = len(re.findall(r"C10_CUDA_KERNEL_LAUNCH_CHECK\(\)", text))
    assert launches >= 1 and checks >= launches, f"{name}.cu: {launches} launches, {checks} checks"
    assert "getCurrentCUDAStream" in text
    assert "CUDAGuard" in text
    assert "AT_DISPATCH_FLOATING_TYPES" in text
    assert "TORCH_CHECK" in text or "CLORA3D_CHECK" in text
    # every launch passes the current stream (4th launch parameter), never the default stream
    for cfg in re.findall(r"<<<(.*?)>>>", text, flags=re.S):
        assert cfg.split(",")[-1].strip() == "stream", cfg


def test_cuda_kernel_headers_are_free_of_aten():
    """The device code in csrc/cuda/*_kernels.cuh (and device_common.cuh) also compiles for the CPU
    emulator of tests/cuda_emu: no ATen / torch / CUDA runtime headers there, only the c10 assert
    macro outside the emulator."""
    headers = sorted((CSRC / "cuda").glob("*_kernels.cuh")) + [CSRC / "cuda" / "device_common.cuh"]
    assert len(headers) >= 4
    for h in headers:
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', h.read_text())
        bad = [i for i in includes if i.split("/")[0] in ("ATen", "torch") or i in ("cuda_runtime.h", "common.cuh")]
        assert not bad, (h.name, bad)


def test_cuda_header_is_host_only():
    """cuda_ops.h is included by bindings.cpp (host compiler): no CUDA headers or device code."""
    text = _strip_cpp_comments((CSRC / "cuda" / "cuda_ops.h").read_text())
    assert "__global__" not in text and "__device__" not in text
    assert "cuda_runtime" not in text and "CUDAContext" not in text


def test_built_extension_reports_its_build():
    try:
        from clora3d import _C
    except ImportError:
        pytest.skip("clora3d._C not built")
    info = dict(_C.build_info())
    assert info["cpu"] is True
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert re.fullmatch(r"[0-9A-Za-z.+;]+", info["cuda_archs"]), info["cuda_archs"]
    else:
        assert info["cuda_archs"] == ""


# ---------------------------------------------------------------- CUDA kernels of the built extension


def _cuda_C():
    try:
        from clora3d import _C
    except ImportError:
        pytest.skip("clora3d._C not built")
    if not dict(_C.build_info())["cuda"]:
        pytest.skip("clora3d._C built without CUDA kernels")
    import clora3d.ops  # noqa: F401  (registers the operators' fake / autograd parts)

    return torch.ops.clora3d


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernels_equal_cpu_kernels_with_ties(dtype):
    """Integer coordinates in a small box: every distance is exact and ties are everywhere, so
    CUDA and CPU must agree exactly, indices included (ties -> lowest index)."""
    _C = _cuda_C()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (2, 300, 3), generator=g).to(dtype)
    b = torch.randint(-3, 4, (2, 257, 3), generator=g).to(dtype)
    dev = torch.device("cuda")
    assert torch.equal(_C.fps(a, 64, 5), _C.fps(a.to(dev), 64, 5).cpu())
    for k in (1, 3, 16, 17, 40, 128, 129, 257):  # register, local-memory and sort paths
        d_cpu, i_cpu = _C.knn(a, b, k)
        d_gpu, i_gpu = _C.knn(a.to(dev), b.to(dev), k)
        assert torch.equal(d_cpu, d_gpu.cpu()) and torch.equal(i_cpu, i_gpu.cpu()), k
    for x, y in zip(_C.three_nn(a, b), _C.three_nn(a.to(dev), b.to(dev))):
        assert torch.equal(x, y.cpu())
    for x, y in zip(_C.chamfer_forward(a, b), _C.chamfer_forward(a.to(dev), b.to(dev))):
        assert torch.equal(x, y.cpu())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_gather_and_interpolate_match_cpu(dtype):
    _C = _cuda_C()
    g = torch.Generator().manual_seed(1)
    dev = torch.device("cuda")
    pts = torch.randn(2, 50, 7, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 50, (2, 30), generator=g)
    grad = torch.randn(2, 30, 7, generator=g, dtype=torch.float64)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    ref_fwd = pts[torch.arange(2)[:, None], idx]
    ref_bwd = torch.zeros_like(pts).index_put_((torch.arange(2)[:, None].expand(2, 30), idx), grad, accumulate=True)
    out = _C.gather_forward(pts.to(dev, dtype), idx.to(dev)).double().cpu()
    back = _C.gather_backward(grad.to(dev, dtype), idx.to(dev), 50).double().cpu()
    torch.testing.assert_close(out, ref_fwd, atol=tol, rtol=tol)
    torch.testing.assert_close(back, ref_bwd, atol=4 * tol, rtol=4 * tol)
    tidx = torch.randint(0, 50, (2, 40, 3), generator=g)
    w = torch.rand(2, 40, 3, generator=g, dtype=torch.float64)
    w = w / w.sum(-1, keepdim=True)
    ref = (w[..., None] * pts[torch.arange(2)[:, None, None], tidx]).sum(2)
    got = _C.three_interpolate_forward(pts.to(dev, dtype), tidx.to(dev), w.to(dev, dtype)).double().cpu()
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


# ---------------------------------------------------------------------------- the oldest torch
def test_torch_floor_problem_names_the_release_and_the_fix():
    from clora3d._build_env import TORCH_FLOOR, torch_floor_problem

    assert TORCH_FLOOR == (2, 5)
    for fine in ("2.5.0", "2.5.1+cu121", "2.11.0+cu130", "2.14.1+cu130", "2.12.0a0+git1234", "3.0.0"):
        assert torch_floor_problem(fine, "/venv/bin/python") is None, fine
    msg = torch_floor_problem("2.4.1+cu121", "/venv/bin/python")
    assert "needs torch >= 2.5" in msg and "has torch 2.4.1+cu121" in msg and "(/venv/bin/python)" in msg
    assert "/venv/bin/python -m pip install 'torch>=2.5,<3'" in msg
    assert "--force-reinstall --no-deps ." in msg  # the kernels must be rebuilt against the new torch
    assert torch_floor_problem("1.13.1", "p") is not None and torch_floor_problem("2.0.0", "p") is not None


def test_pyproject_lower_bound_is_the_floor():
    from clora3d._build_env import TORCH_FLOOR

    text = (REPO / "pyproject.toml").read_text()
    assert f'"torch>={TORCH_FLOOR[0]}.{TORCH_FLOOR[1]},<3"' in text
    assert f"torch >= {TORCH_FLOOR[0]}.{TORCH_FLOOR[1]}" in (REPO / "docs" / "install.md").read_text()


def test_import_with_an_older_torch_stops_with_the_fix(tmp_path):
    """``import clora3d`` reads torch's version from its package metadata (here a fake 2.4.1 found
    first on sys.path) and stops before anything fails obscurely; the current torch imports fine."""
    import subprocess

    dist = tmp_path / "torch-2.4.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.4.1\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", "import clora3d"], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()
    assert any(line.startswith("ImportError: clora3d needs torch >= 2.5, and this environment") for line in last)
    assert "has torch 2.4.1." in r.stderr and "pip install 'torch>=2.5,<3'" in r.stderr
    ok = subprocess.run([sys.executable, "-c", "import clora3d"], env={**env, "PYTHONPATH": str(REPO)})
    assert ok.returncode == 0

"""The doctor (clora3d/cli/doctor.py): pure helpers against known facts, collect() under simulated
environments, the same CUDA discovery as setup.py, and the command line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from clora3d import _build_env
from clora3d.cli import doctor

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure helpers


def test_parse_nvcc_version():
    text = (
        "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
        "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n"
    )
    assert _build_env.parse_nvcc_version(text) == "13.0"
    assert _build_env.parse_nvcc_version("Cuda compilation tools, release 11.8, V11.8.89") == "11.8"
    assert _build_env.parse_nvcc_version("command not found") is None


def test_parse_arch_list():
    assert doctor.parse_arch_list("7.5;8.0;8.6+PTX") == [(7, 5, False), (8, 0, False), (8, 6, True)]
    assert doctor.parse_arch_list("8.0,9.0a 12.0+PTX") == [(8, 0, False), (9, 0, False), (12, 0, True)]
    assert doctor.parse_arch_list("Ampere") == []
    assert doctor.parse_arch_list("") == []


@pytest.mark.parametrize(
    "archs, cap, ok",
    [
        ("8.0", (8, 0), True),
        ("8.0", (8, 6), True),  # sm_80 cubin runs on sm_86 (same major, higher minor)
        ("8.6", (8, 0), False),  # ... but not the other way round
        ("8.0", (9, 0), False),  # no cubin for another major, no PTX
        ("8.0+PTX", (9, 0), True),  # PTX JIT-compiles forward
        ("9.0+PTX", (8, 6), False),  # PTX never runs backwards
        ("7.5;8.0;8.6;9.0;10.0;12.0+PTX", (12, 1), True),
        ("7.5;8.0;8.6;9.0;10.0;12.0+PTX", (8, 9), True),
        ("", (8, 0), False),
    ],
)
def test_arch_covers(archs, cap, ok):
    assert doctor.arch_covers(archs, cap) is ok


@pytest.mark.parametrize(
    "message, needle",
    [
        ("No module named 'clora3d._C'", "no-build-isolation"),
        ("/x/clora3d/_C.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEab", "rm -rf build"),
        ("DLL load failed while importing _C: The specified module could not be found.", "PATH"),
        ("libcudart.so.12: cannot open shared object file: No such file or directory", "rebuild"),
        ("version `GLIBCXX_3.4.32' not found", "libstdcxx"),
    ],
)
def test_diagnose_import_error(message, needle):
    why, fix = doctor.diagnose_import_error(message)
    assert why and needle in fix


# ---------------------------------------------------------------- collect() with fakes


def _fake_importer(ext=None, ext_error=None, ops=None, ops_error=None):
    """import_module replacement returning fake clora3d._C / clora3d.ops modules."""

    def import_module(name):
        if name == "clora3d._C":
            if ext_error:
                raise ext_error
            return ext
        if name == "clora3d.ops":
            if ops_error:
                raise ops_error
            return ops
        raise AssertionError(name)

    return import_module


def _ext(**info):
    m = types.SimpleNamespace(__file__="/fake/_C.so")
    m.build_info = lambda: dict(info)
    return m


def _ops(cpu="native", cuda="reference", why="test"):
    """A fake clora3d.ops whose backend_info() has the per-op, per-device layout of clora3d.ops."""
    m = types.SimpleNamespace()
    names = ["furthest_point_sample", "knn", "gather_points", "three_nn", "three_interpolate", "chamfer_l2"]
    m.backend_info = lambda: {
        "mode": "auto",
        "native_error": None,
        "ops": {op: {"cpu": {"backend": cpu, "why": why}, "cuda": {"backend": cuda, "why": why}} for op in names},
    }
    return m


def _by_name(rep):
    return {f.name: f for f in rep.findings}


def test_backend_table_accepts_flat_and_per_device_forms():
    assert doctor.backend_table({"ops": {"knn": "native"}}) == {"knn": {"cpu": ("native", "")}}
    t = doctor.backend_table(
        {
            "ops": {
                "knn": {"cpu": {"backend": "native", "why": "ok"}, "cuda": {"backend": "reference", "why": "no CUDA"}}
            }
        }
    )
    assert t == {"knn": {"cpu": ("native", "ok"), "cuda": ("reference", "no CUDA")}}
    assert doctor.backend_table(None) == {}


def test_native_backend_is_ok():
    rep = doctor.collect(
        _fake_importer(
            ext=_ext(cpu=True, cuda=False, cuda_archs="", torch_version=torch.__version__.split("+")[0]), ops=_ops()
        )
    )
    f = _by_name(rep)
    assert f["extension"].status == doctor.OK and "CPU" in f["extension"].detail
    assert f["ops-cpu"].status == doctor.OK and "all 6 ops" in f["ops-cpu"].detail
    assert f["ops-cuda"].status == doctor.INFO  # no GPU: reference for CUDA tensors is expected
    assert "knn" in doctor.format_report(rep) and "cpu: native" in doctor.format_report(rep)
    assert rep.usable and rep.exit_code == 0
    json.loads(doctor.to_json(rep))  # serialisable


def test_missing_extension_is_usable_but_warned_with_the_fix():
    rep = doctor.collect(
        _fake_importer(
            ext_error=ModuleNotFoundError("No module named 'clora3d._C'"),
            ops=_ops(cpu="reference", why="clora3d._C not importable"),
        )
    )
    f = _by_name(rep)
    assert f["extension"].status == doctor.WARN
    assert "pip install --no-build-isolation -e ." in f["extension"].fix
    assert f["ops-cpu"].status == doctor.WARN and "reference" in f["ops-cpu"].detail
    assert "pip install --no-build-isolation -e ." in f["ops-cpu"].fix
    assert rep.usable and rep.exit_code == 0
    text = doctor.format_report(rep)
    assert "[WARN] extension" in text and "fix: pip install --no-build-isolation" in text


def test_ops_import_failure_is_not_usable():
    rep = doctor.collect(
        _fake_importer(
            ext=_ext(cpu=True, cuda=False, cuda_archs=""),
            ops_error=ValueError("CLORA3D_OPS must be reference or native"),
        )
    )
    assert _by_name(rep)["ops"].status == doctor.ERROR
    assert not rep.usable and rep.exit_code == 1


def test_stale_torch_build_is_flagged():
    rep = doctor.collect(
        _fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs="", torch_version="1.13.1"), ops=_ops())
    )
    f = _by_name(rep)["extension-torch"]
    assert f.status == doctor.WARN and "1.13.1" in f.detail and "rm -rf build" in f.fix


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend one GPU of compute capability 9.0 is visible."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake H100")
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")
    # the nvcc on this machine is not part of these scenarios
    monkeypatch.setattr(doctor, "_nvcc_section", lambda rep, torch_mod: None)


def test_gpu_without_cuda_kernels_gets_force_cuda_fix(fake_gpu):
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""), ops=_ops()))
    f = _by_name(rep)
    assert f["gpu"].status == doctor.OK and "sm_90" in f["gpu"].detail
    assert f["extension-cuda"].status == doctor.WARN and "FORCE_CUDA=1" in f["extension-cuda"].fix
    assert f["ops-cuda"].status == doctor.WARN and "FORCE_CUDA=1" in f["ops-cuda"].fix
    assert rep.exit_code == 0


def test_gpu_arch_not_compiled_is_an_error_with_the_arch_fix(fake_gpu):
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=True, cuda_archs="8.0;8.6"), ops=_ops()))
    f = _by_name(rep)["extension-arch"]
    assert f.status == doctor.ERROR
    assert 'TORCH_CUDA_ARCH_LIST="9.0"' in f.fix
    assert rep.exit_code == 1
    ok = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=True, cuda_archs="8.0;8.6+PTX"), ops=_ops()))
    assert "extension-arch" not in _by_name(ok) and ok.exit_code == 0


# ---------------------------------------------------------------- one CUDA discovery for setup.py and the doctor


def _setup_py():
    spec = importlib.util.spec_from_file_location("clora3d_setup_for_doctor_test", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _toolkit(root: Path, release: str) -> Path:
    """A folder that looks like a CUDA toolkit whose nvcc reports ``release``."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    (root / "include" / "cuda_runtime_api.h").write_text("/* fake */\n")
    return root


def test_setup_and_doctor_use_the_same_cuda_discovery(tmp_path, monkeypatch, capsys):
    setup = _setup_py()
    assert setup.find_cuda_home is _build_env.find_cuda_home
    assert setup.decide_cuda is _build_env.decide_cuda
    # the discovery answers with a toolkit nowhere on PATH: both the build and the doctor must follow
    tk = str(_toolkit(tmp_path / "cuda-77.1", "77.1"))
    monkeypatch.setattr(_build_env, "find_cuda_home", lambda env: tk)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("CLORA3D_CPU_ONLY", raising=False)
    monkeypatch.setenv("FORCE_CUDA", "0")  # build nothing: extensions() only decides and describes
    monkeypatch.setattr(torch.version, "cuda", "77.1")
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""), ops=_ops()))
    assert rep.nvcc["cuda_home_of_setup"] == tk and rep.nvcc["path"] == f"{tk}/bin/nvcc"
    assert rep.nvcc["version"] == "77.1"
    assert _by_name(rep)["build"].detail.endswith("would build the CUDA kernels: no (FORCE_CUDA=0)")
    monkeypatch.setenv("FORCE_CUDA", "1")
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""), ops=_ops()))
    assert _by_name(rep)["build"].detail.endswith("yes (FORCE_CUDA=1)")
    # setup.py's extensions() goes through the same plan: a plan that cannot be honoured stops the build
    calls = []

    def plan(env, torch_cuda):
        calls.append(torch_cuda)
        return {
            "cuda_home": None,
            "nvcc": None,
            "nvcc_version": None,
            "toolkit_root": None,
            "torch_guess": None,
            "build_cuda": None,
            "reason": "the shared plan says no",
        }

    monkeypatch.setattr(_build_env, "cuda_plan", plan)
    with pytest.raises(RuntimeError, match="the shared plan says no"):
        setup.extensions({})
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""), ops=_ops()))
    assert "the shared plan says no" in _by_name(rep)["build"].detail
    assert calls == ["77.1", "77.1"]


def test_build_plan_of_a_real_folder_layout(tmp_path):
    """cuda_plan on hand-built layouts: CUDA_HOME wins; FORCE_CUDA=1 with a CPU torch cannot be honoured."""
    tk = str(_toolkit(tmp_path / "tk", "12.4"))
    plan = _build_env.cuda_plan({"CUDA_HOME": tk, "PATH": ""}, "12.4")
    assert plan["cuda_home"] == tk and plan["nvcc"] == f"{tk}/bin/nvcc" and plan["nvcc_version"] == "12.4"
    assert plan["build_cuda"] is True and plan["reason"] == f"torch CUDA 12.4 and nvcc at {tk}"
    plan = _build_env.cuda_plan({"CUDA_HOME": tk, "PATH": "", "FORCE_CUDA": "1"}, None)
    assert plan["build_cuda"] is None and "CPU-only build" in plan["reason"]
    plan = _build_env.cuda_plan({"CUDA_HOME": str(tmp_path / "nothing"), "PATH": ""}, "12.4")
    assert plan["build_cuda"] is False and plan["nvcc"] is None and plan["nvcc_version"] is None


# ---------------------------------------------------------------- the real environment + CLI


@pytest.mark.parametrize("command", [["tools/doctor.py"], ["-m", "clora3d", "doctor"]])
def test_cli_json_matches_exit_code(command):
    out = subprocess.run([sys.executable, *command, "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    data = json.loads(out.stdout)
    assert out.returncode == data["exit_code"]
    assert data["torch"]["version"] == torch.__version__
    assert data["torch"]["cuda"] == torch.version.cuda
    assert data["cuda"]["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert {f["name"] for f in data["findings"]} >= {"torch", "gpu", "compiler", "extension"}
    if data["extension"]["importable"]:
        from clora3d import _C

        assert data["extension"]["build_info"]["cuda"] == dict(_C.build_info())["cuda"]


def test_cli_text_report():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "doctor.py")], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.stdout.startswith("clora3d doctor")
    assert f"torch      {torch.__version__}" in out.stdout
    assert out.stdout.rstrip().endswith(f"(exit code {out.returncode})")

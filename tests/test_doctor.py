"""clora3d.doctor: pure helpers against known facts, and collect() under simulated environments."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from clora3d import doctor

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure helpers

def test_parse_nvcc_version():
    text = ("nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
            "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n")
    assert doctor.parse_nvcc_version(text) == "13.0"
    assert doctor.parse_nvcc_version("Cuda compilation tools, release 11.8, V11.8.89") == "11.8"
    assert doctor.parse_nvcc_version("command not found") is None


def test_parse_arch_list():
    assert doctor.parse_arch_list("7.5;8.0;8.6+PTX") == [(7, 5, False), (8, 0, False), (8, 6, True)]
    assert doctor.parse_arch_list("8.0,9.0a 12.0+PTX") == [(8, 0, False), (9, 0, False), (12, 0, True)]
    assert doctor.parse_arch_list("Ampere") == []
    assert doctor.parse_arch_list("") == []


@pytest.mark.parametrize("archs, cap, ok", [
    ("8.0", (8, 0), True),
    ("8.0", (8, 6), True),        # sm_80 cubin runs on sm_86 (same major, higher minor)
    ("8.6", (8, 0), False),       # ... but not the other way round
    ("8.0", (9, 0), False),       # no cubin for another major, no PTX
    ("8.0+PTX", (9, 0), True),    # PTX JIT-compiles forward
    ("9.0+PTX", (8, 6), False),   # PTX never runs backwards
    ("7.5;8.0;8.6;9.0;10.0;12.0+PTX", (12, 1), True),
    ("7.5;8.0;8.6;9.0;10.0;12.0+PTX", (8, 9), True),
    ("", (8, 0), False),
])
def test_arch_covers(archs, cap, ok):
    assert doctor.arch_covers(archs, cap) is ok


@pytest.mark.parametrize("message, needle", [
    ("No module named 'clora3d._C'", "no-build-isolation"),
    ("/x/clora3d/_C.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEab", "rm -rf build"),
    ("DLL load failed while importing _C: The specified module could not be found.", "PATH"),
    ("libcudart.so.12: cannot open shared object file: No such file or directory", "rebuild"),
    ("version `GLIBCXX_3.4.32' not found", "libstdcxx"),
])
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
    m.backend_info = lambda: {"mode": "auto", "native_error": None, "ops": {
        op: {"cpu": {"backend": cpu, "why": why}, "cuda": {"backend": cuda, "why": why}} for op in names}}
    return m


def _by_name(rep):
    return {f.name: f for f in rep.findings}


def test_backend_table_accepts_flat_and_per_device_forms():
    assert doctor.backend_table({"ops": {"knn": "native"}}) == {"knn": {"cpu": ("native", "")}}
    t = doctor.backend_table({"ops": {"knn": {"cpu": {"backend": "native", "why": "ok"},
                                              "cuda": {"backend": "reference", "why": "no CUDA"}}}})
    assert t == {"knn": {"cpu": ("native", "ok"), "cuda": ("reference", "no CUDA")}}
    assert doctor.backend_table(None) == {}


def test_native_backend_is_ok():
    rep = doctor.collect(_fake_importer(
        ext=_ext(cpu=True, cuda=False, cuda_archs="", torch_version=torch.__version__.split("+")[0]),
        ops=_ops()))
    f = _by_name(rep)
    assert f["extension"].status == doctor.OK and "CPU" in f["extension"].detail
    assert f["ops-cpu"].status == doctor.OK and "all 6 ops" in f["ops-cpu"].detail
    assert f["ops-cuda"].status == doctor.INFO  # no GPU: reference for CUDA tensors is expected
    assert "knn" in doctor.format_report(rep) and "cpu: native" in doctor.format_report(rep)
    assert rep.usable and rep.exit_code == 0
    json.loads(doctor.to_json(rep))  # serialisable


def test_missing_extension_is_usable_but_warned_with_the_fix():
    rep = doctor.collect(_fake_importer(
        ext_error=ModuleNotFoundError("No module named 'clora3d._C'"),
        ops=_ops(cpu="reference", why="clora3d._C not importable")))
    f = _by_name(rep)
    assert f["extension"].status == doctor.WARN
    assert "pip install --no-build-isolation -e ." in f["extension"].fix
    assert f["ops-cpu"].status == doctor.WARN and "reference" in f["ops-cpu"].detail
    assert "pip install --no-build-isolation -e ." in f["ops-cpu"].fix
    assert rep.usable and rep.exit_code == 0
    text = doctor.format_report(rep)
    assert "[WARN] extension" in text and "fix: pip install --no-build-isolation" in text


def test_ops_import_failure_is_not_usable():
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""),
                                        ops_error=ValueError("CLORA3D_OPS must be reference or native")))
    assert _by_name(rep)["ops"].status == doctor.ERROR
    assert not rep.usable and rep.exit_code == 1


def test_stale_torch_build_is_flagged():
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs="", torch_version="1.13.1"),
                                        ops=_ops()))
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
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=False, cuda_archs=""),
                                        ops=_ops()))
    f = _by_name(rep)
    assert f["gpu"].status == doctor.OK and "sm_90" in f["gpu"].detail
    assert f["extension-cuda"].status == doctor.WARN and "FORCE_CUDA=1" in f["extension-cuda"].fix
    assert f["ops-cuda"].status == doctor.WARN and "FORCE_CUDA=1" in f["ops-cuda"].fix
    assert rep.exit_code == 0


def test_gpu_arch_not_compiled_is_an_error_with_the_arch_fix(fake_gpu):
    rep = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=True, cuda_archs="8.0;8.6"),
                                        ops=_ops()))
    f = _by_name(rep)["extension-arch"]
    assert f.status == doctor.ERROR
    assert 'TORCH_CUDA_ARCH_LIST="9.0"' in f.fix
    assert rep.exit_code == 1
    ok = doctor.collect(_fake_importer(ext=_ext(cpu=True, cuda=True, cuda_archs="8.0;8.6+PTX"),
                                       ops=_ops()))
    assert "extension-arch" not in _by_name(ok) and ok.exit_code == 0


# ---------------------------------------------------------------- the real environment + CLI

def test_cli_json_matches_exit_code():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "doctor.py"), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
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
    out = subprocess.run([sys.executable, str(REPO / "tools" / "doctor.py")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.startswith("clora3d doctor")
    assert f"torch      {torch.__version__}" in out.stdout
    assert out.stdout.rstrip().endswith(f"(exit code {out.returncode})")

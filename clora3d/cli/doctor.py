"""Environment check for clora3d: what is installed, what the kernels were built with, and the fix.

``collect()`` gathers a JSON-serialisable report (torch / CUDA / nvcc / compiler versions, GPUs and
their architectures, how ``clora3d._C`` was built, which backend each op uses) together with a list
of findings, each with a status and, when something is missing or broken, the exact command that
fixes it. ``format_report()`` renders it for a terminal; ``run()`` is the ``doctor`` subcommand of
the command line (``clora3d doctor``, ``python -m clora3d doctor``, ``tools/doctor.py``).

Where the CUDA toolkit is and whether a rebuild would compile the CUDA kernels come from
``clora3d._build_env.cuda_plan``, the function setup.py itself decides with, so the doctor reports
the build's own answer. An application, not part of the library: nothing in clora3d imports it.

Exit code: 0 when clora3d.ops is usable (the pure-PyTorch reference fallback counts as usable but
is reported as a warning), 1 when it is not. Nothing here runs at import time.

Longer than 400 lines on purpose: it is one job, one function per section of the report (python,
torch, GPU, nvcc, compiler, extension, ops, optional packages), each turning facts into findings
with their fix; splitting the sections apart would scatter the wording of the fixes.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from clora3d import _build_env
from clora3d.cli import Command

OK, INFO, WARN, ERROR = "ok", "info", "warn", "error"
_ORDER = {OK: 0, INFO: 0, WARN: 1, ERROR: 2}

REBUILD = "pip install --no-build-isolation -e .   # from the clora3d checkout, after installing torch"


@dataclass
class Finding:
    """One line of the diagnosis: what was checked, its status, details and the fix (if any)."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    """Everything doctor found; ``asdict(report)`` is the ``--json`` output."""

    python: dict = field(default_factory=dict)
    torch: dict = field(default_factory=dict)
    cuda: dict = field(default_factory=dict)
    nvcc: dict = field(default_factory=dict)
    compiler: dict = field(default_factory=dict)
    extension: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)
    usable: bool = False
    exit_code: int = 1

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.findings.append(Finding(name, status, detail, fix))


# --------------------------------------------------------------------------------------------
# Small pure helpers (unit-tested)
# --------------------------------------------------------------------------------------------


def parse_arch_list(archs: str) -> list[tuple[int, int, bool]]:
    """'7.5;8.0;8.6+PTX' (';', ',' or space separated) -> [(7, 5, False), (8, 0, False), (8, 6, True)].

    Named architectures (e.g. 'Ampere') and unparsable entries are skipped.
    """
    out = []
    for item in re.split(r"[;,\s]+", archs or ""):
        m = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", item.strip())
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3) is not None))
    return out


def arch_covers(archs: str, capability: tuple[int, int]) -> bool:
    """Whether code built for ``archs`` runs on a GPU of compute ``capability``.

    A cubin for sm_XY runs on devices of the same major X and minor >= Y; PTX for compute_XY is
    JIT-compiled by the driver for any device with capability >= X.Y.
    """
    major, minor = capability
    for a_major, a_minor, ptx in parse_arch_list(archs):
        if a_major == major and a_minor <= minor:
            return True
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
    return False


def diagnose_import_error(message: str) -> tuple[str, str]:
    """Map an ``import clora3d._C`` failure to (explanation, fix)."""
    msg = message or ""
    if "No module named" in msg and "_C" in msg:
        return (
            "the compiled kernels were never built (e.g. installed with CLORA3D_NO_KERNELS=1, or "
            "torch was missing at build time)",
            REBUILD,
        )
    if "undefined symbol" in msg:
        return (
            "clora3d._C was built against a different torch (C++ ABI mismatch)",
            "rm -rf build clora3d/_C*.so && " + REBUILD,
        )
    if "DLL load failed" in msg:
        return (
            "Windows could not load a DLL the extension needs (torch's or the CUDA runtime's)",
            "import torch before clora3d, make sure the CUDA runtime matching torch is on PATH, "
            "then rebuild: " + REBUILD,
        )
    if "libcudart" in msg or "libc10_cuda" in msg or "cannot open shared object" in msg:
        return (
            "a shared library of the CUDA build is missing at run time (extension built for "
            "CUDA but the installed torch is a CPU build, or a different CUDA version)",
            "rebuild against the torch you run with: rm -rf build clora3d/_C*.so && " + REBUILD,
        )
    if "GLIBCXX" in msg:
        return (
            "the C++ runtime is older than the compiler that built the extension",
            "rebuild with the system compiler, or install a newer libstdc++ (conda: "
            "conda install -c conda-forge libstdcxx-ng)",
        )
    return ("importing clora3d._C failed", "rm -rf build clora3d/_C*.so && " + REBUILD)


def _run(cmd: Sequence[str], timeout: float = 30.0) -> Optional[str]:
    """stdout+stderr of a command, or None when it cannot run."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or "") + (out.stderr or "")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _python_section(rep: Report) -> None:
    rep.python = {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}


def _torch_section(rep: Report, torch) -> None:
    rep.torch = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cxx11_abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)),
        "openmp": bool(torch.backends.openmp.is_available()),
        "num_threads": torch.get_num_threads(),
    }
    kind = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    rep.add("torch", OK, f"torch {torch.__version__} ({kind})")


def _cuda_section(rep: Report, torch) -> None:
    devices = []
    available = False
    err = None
    try:
        available = bool(torch.cuda.is_available())
        for i in range(torch.cuda.device_count() if available else 0):
            major, minor = torch.cuda.get_device_capability(i)
            devices.append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "capability": f"{major}.{minor}",
                    "sm": f"sm_{major}{minor}",
                }
            )
    except Exception as e:  # a broken driver must not crash the doctor
        err = f"{type(e).__name__}: {e}"
    driver = None
    smi = shutil.which("nvidia-smi")
    if smi:
        text = _run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], timeout=20)
        if text and re.match(r"^\d", text.strip()):
            driver = text.strip().splitlines()[0]
    arch_list = []
    if torch.version.cuda:
        try:
            arch_list = list(torch.cuda.get_arch_list())
        except Exception:
            arch_list = []
    rep.cuda = {
        "available": available,
        "device_count": len(devices),
        "devices": devices,
        "driver_version": driver,
        "torch_arch_list": arch_list,
        "error": err,
    }
    if devices:
        names = ", ".join(f"{d['name']} ({d['sm']})" for d in devices)
        rep.add("gpu", OK, f"{len(devices)} GPU(s): {names}")
    elif err:
        rep.add(
            "gpu",
            WARN,
            f"CUDA initialisation failed: {err}",
            "check the NVIDIA driver (nvidia-smi) supports CUDA " + str(torch.version.cuda),
        )
    elif torch.version.cuda:
        rep.add("gpu", INFO, "no GPU visible: the CPU kernels will be used")
    else:
        rep.add("gpu", INFO, "CPU-only torch: the CPU kernels will be used")


def _nvcc_section(rep: Report, torch) -> None:
    plan = _build_env.cuda_plan(os.environ, torch.version.cuda)
    nvcc, version, root = plan["nvcc"], plan["nvcc_version"], plan["toolkit_root"]
    rep.nvcc = {
        "path": nvcc,
        "version": version,
        "toolkit_root": root,
        "CUDA_HOME": os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"),
        "cuda_home_seen_by_torch": plan["torch_guess"],
        "cuda_home_of_setup": plan["cuda_home"],
        "rebuild_builds_cuda": plan["build_cuda"],
        "rebuild_reason": plan["reason"],
    }
    gpu = rep.cuda.get("device_count", 0) > 0
    if plan["build_cuda"] is None:  # FORCE_CUDA=1 that cannot be honoured: setup.py would stop here
        rep.add(
            "build",
            WARN,
            f"a rebuild (setup.py) would stop: {plan['reason']}",
            "unset FORCE_CUDA, or install what the message names",
        )
    else:
        rep.add(
            "build",
            INFO,
            f"a rebuild (setup.py) would build the CUDA kernels: "
            f"{'yes' if plan['build_cuda'] else 'no'} ({plan['reason']})",
        )
    if not torch.version.cuda:
        rep.add("nvcc", INFO, f"nvcc {version or 'not found'} (not needed with a CPU-only torch)")
        return
    if not nvcc:
        status = WARN if gpu else INFO
        rep.add(
            "nvcc",
            status,
            "nvcc not found: the CUDA kernels cannot be built",
            f"install the CUDA {torch.version.cuda} toolkit and `export CUDA_HOME=/usr/local/cuda-"
            f"{torch.version.cuda}`, then FORCE_CUDA=1 {REBUILD}"
            if gpu
            else "",
        )
        return
    rep.add("nvcc", OK, f"nvcc {version} at {nvcc}")
    if version and torch.version.cuda and version.split(".")[0] != torch.version.cuda.split(".")[0]:
        rep.add(
            "nvcc-vs-torch",
            ERROR if gpu else WARN,
            f"nvcc is CUDA {version} but torch was built with CUDA {torch.version.cuda}: torch "
            "refuses to build extensions across CUDA major versions",
            f"install the CUDA {torch.version.cuda} toolkit and point CUDA_HOME at it, or install "
            f"the torch wheel for CUDA {version}",
        )
    guess, home = plan["torch_guess"], plan["cuda_home"]
    if (
        not rep.nvcc["CUDA_HOME"]
        and guess
        and home
        and guess != home
        and not _build_env.has_cuda_headers(guess)
        and _build_env.has_cuda_headers(home)
    ):
        rep.add(
            "CUDA_HOME",
            INFO,
            f"nvcc on PATH is a wrapper: torch alone would guess CUDA_HOME={guess} (no "
            f"headers there); clora3d's setup.py resolves it to {home}",
            f"for other extensions: export CUDA_HOME={home}",
        )


def _compiler_section(rep: Report) -> None:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    cxx_version = None
    if cxx:
        text = _run([cxx, "--version"])
        cxx_version = text.strip().splitlines()[0] if text and text.strip() else None
    ninja = shutil.which("ninja")
    ninja_version = ((_run([ninja, "--version"]) or "").strip() or None) if ninja else None
    rep.compiler = {"cxx": cxx, "cxx_version": cxx_version, "ninja": ninja, "ninja_version": ninja_version}
    if not cxx:
        rep.add(
            "compiler",
            WARN,
            "no C++ compiler found: the kernels cannot be (re)built",
            "Debian/Ubuntu: apt-get install build-essential; macOS: xcode-select --install; "
            "Windows: install the Visual Studio Build Tools (C++)",
        )
    else:
        rep.add("compiler", OK, f"{cxx_version or cxx}")
    if not ninja:
        rep.add("ninja", INFO, "ninja not found: builds compile one file at a time", "pip install ninja")


def _extension_section(rep: Report, torch, import_module: Callable[[str], Any]) -> None:
    ext: dict[str, Any] = {"importable": False, "error": None, "build_info": None}
    try:
        mod = import_module("clora3d._C")
    except Exception as e:  # ImportError, OSError (missing .so deps) ...
        ext["error"] = f"{type(e).__name__}: {e}"
        why, fix = diagnose_import_error(str(e))
        rep.extension = ext
        rep.add("extension", WARN, f"clora3d._C not importable ({why}): {ext['error']}", fix)
        return
    ext["importable"] = True
    ext["file"] = getattr(mod, "__file__", None)
    info: dict = {}
    if hasattr(mod, "build_info"):
        try:
            info = dict(mod.build_info())
        except Exception as e:
            ext["error"] = f"build_info() failed: {type(e).__name__}: {e}"
    ext["build_info"] = {
        k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v)) for k, v in info.items()
    }
    rep.extension = ext
    with_cuda = bool(info.get("cuda", info.get("with_cuda", False)))
    archs = str(info.get("cuda_archs", info.get("archs", "")) or "")
    kinds = ["CPU"] + (["CUDA"] if with_cuda else [])
    extra = f" for architectures {archs}" if with_cuda and archs else ""
    rep.add("extension", OK, f"clora3d._C built with {' + '.join(kinds)} kernels{extra}")

    built_torch = info.get("torch_version")
    if built_torch and str(built_torch).split("+")[0] != torch.__version__.split("+")[0]:
        rep.add(
            "extension-torch",
            WARN,
            f"clora3d._C was built against torch {built_torch}, running torch {torch.__version__}",
            "rm -rf build clora3d/_C*.so && " + REBUILD,
        )

    devices = rep.cuda.get("devices", [])
    if devices and not with_cuda:
        fix = f"FORCE_CUDA=1 {REBUILD}"
        if not rep.nvcc.get("path"):
            fix = f"install the CUDA {torch.version.cuda} toolkit, export CUDA_HOME=..., then " + fix
        rep.add(
            "extension-cuda",
            WARN,
            "a GPU is visible but clora3d._C has no CUDA kernels: ops on CUDA tensors use the "
            "PyTorch reference (correct but slower)",
            fix,
        )
    if devices and with_cuda and archs:
        for d in devices:
            cap = tuple(int(x) for x in d["capability"].split("."))
            if not arch_covers(archs, cap):  # type: ignore[arg-type]
                rep.add(
                    "extension-arch",
                    ERROR,
                    f"clora3d._C has CUDA code for {archs}, which cannot run on {d['name']} ({d['sm']})",
                    f'TORCH_CUDA_ARCH_LIST="{d["capability"]}" FORCE_CUDA=1 {REBUILD}',
                )


def _ops_section(rep: Report, import_module: Callable[[str], Any]) -> bool:
    forced = os.environ.get("CLORA3D_OPS")
    try:
        ops = import_module("clora3d.ops")
        info = ops.backend_info()
    except Exception as e:
        rep.ops = {"error": f"{type(e).__name__}: {e}", "CLORA3D_OPS": forced}
        rep.add(
            "ops",
            ERROR,
            f"clora3d.ops is not usable: {rep.ops['error']}",
            "check CLORA3D_OPS (reference|native or unset); " + REBUILD,
        )
        return False
    rep.ops = json.loads(json.dumps(info, default=str))
    if isinstance(rep.ops, dict):
        rep.ops.setdefault("CLORA3D_OPS", forced)
    table = backend_table(info)
    if not table:
        rep.add("ops", OK, "backend_info: " + json.dumps(rep.ops, default=str)[:300])
        return True
    if isinstance(info, dict) and info.get("native_error"):
        rep.add(
            "ops-native",
            WARN,
            f"compiled kernels not loaded: {info['native_error']}",
            diagnose_import_error(str(info["native_error"]))[1],
        )
    cpu = {op: devs["cpu"] for op, devs in table.items() if "cpu" in devs}
    cuda = {op: devs["cuda"] for op, devs in table.items() if "cuda" in devs}
    ref_cpu = sorted(op for op, (b, _) in cpu.items() if b == "reference")
    if ref_cpu:
        why = cpu[ref_cpu[0]][1]
        fix = "unset CLORA3D_OPS to use the compiled kernels" if forced == "reference" else REBUILD
        rep.add("ops-cpu", WARN, f"CPU ops on the pure-PyTorch reference (slow): {', '.join(ref_cpu)} ({why})", fix)
    else:
        rep.add("ops-cpu", OK, f"CPU: compiled kernels for all {len(cpu)} ops")
    if cuda:
        ref_cuda = sorted(op for op, (b, _) in cuda.items() if b == "reference")
        gpu = rep.cuda.get("device_count", 0) > 0
        if not ref_cuda:
            rep.add("ops-cuda", OK, f"CUDA: compiled kernels for all {len(cuda)} ops")
        elif gpu:
            rep.add(
                "ops-cuda",
                WARN,
                f"CUDA ops on the PyTorch reference: {', '.join(ref_cuda)} ({cuda[ref_cuda[0]][1]})",
                f"FORCE_CUDA=1 {REBUILD}",
            )
        else:
            rep.add("ops-cuda", INFO, f"CUDA: reference for CUDA tensors (no GPU here; {cuda[ref_cuda[0]][1]})")
    return True


def backend_table(info: Any) -> dict:
    """{op: {device: (backend, why)}} from ops.backend_info(), accepting flat or per-device forms."""
    if not isinstance(info, dict):
        return {}
    ops = info.get("ops", info)
    out: dict = {}
    if not isinstance(ops, dict):
        return out

    def entry(val: Any):
        if isinstance(val, str) and val in ("native", "reference"):
            return (val, "")
        if isinstance(val, dict) and isinstance(val.get("backend"), str):
            return (val["backend"], str(val.get("why", val.get("reason", ""))))
        return None

    for op, val in ops.items():
        e = entry(val)
        if e:
            out[op] = {"cpu": e}
        elif isinstance(val, dict):
            devs = {dev: entry(v) for dev, v in val.items()}
            devs = {dev: e for dev, e in devs.items() if e}
            if devs:
                out[op] = devs
    return out


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

#: optional packages: (module, what it is for); none of them is needed by the README's commands
OPTIONAL_PACKAGES = (
    ("tensorboard", "TensorBoard scalars in <run>/tb (log.tensorboard)"),
    ("open3d", "binary_compressed .pcd files; a benchmark peer"),
)


def _optional_section(rep: Report) -> None:
    from clora3d.optional import try_import

    for name, purpose in OPTIONAL_PACKAGES:
        mod, why = try_import(name)
        if mod is not None:
            rep.add(f"optional-{name}", OK, f"{name} {getattr(mod, '__version__', '?')}: {purpose}")
        elif "cannot load" in str(why):  # installed but broken: the fix is a system package
            rep.add(
                f"optional-{name}",
                WARN,
                f"{why.split(';')[0]} (only needed for {purpose})",
                why.split("; ", 1)[1] if "; " in why else "",
            )
        else:
            rep.add(f"optional-{name}", INFO, f"{name} not installed (optional: {purpose})")


def collect(import_module: Callable[[str], Any] = importlib.import_module) -> Report:
    """Run every check and return the report (never raises for environment problems)."""
    rep = Report()
    _python_section(rep)
    try:
        import torch
    except Exception as e:
        rep.add(
            "torch",
            ERROR,
            f"torch is not importable: {type(e).__name__}: {e}",
            "install torch first: https://pytorch.org/get-started/locally/ (CPU: pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu)",
        )
        rep.usable, rep.exit_code = False, 1
        return rep
    _torch_section(rep, torch)
    _cuda_section(rep, torch)
    _nvcc_section(rep, torch)
    _compiler_section(rep)
    _extension_section(rep, torch, import_module)
    ops_ok = _ops_section(rep, import_module)
    _optional_section(rep)
    worst = max((_ORDER[f.status] for f in rep.findings), default=0)
    rep.usable = ops_ok and worst < _ORDER[ERROR]
    rep.exit_code = 0 if rep.usable else 1
    return rep


def to_json(rep: Report) -> str:
    return json.dumps(asdict(rep), indent=2, default=str)


_MARK = {OK: "[ ok ]", INFO: "[info]", WARN: "[WARN]", ERROR: "[FAIL]"}


def format_report(rep: Report) -> str:
    """Human-readable report: versions first, then one line per finding with its fix."""
    t, c, n, x, e = rep.torch, rep.cuda, rep.nvcc, rep.compiler, rep.extension
    lines = ["clora3d doctor", ""]
    lines.append(f"python     {rep.python.get('version')}  ({rep.python.get('executable')})")
    if t:
        lines.append(
            f"torch      {t.get('version')}  cuda={t.get('cuda')}  openmp={t.get('openmp')}  "
            f"threads={t.get('num_threads')}"
        )
    if c:
        devs = ", ".join(f"{d['name']} {d['sm']}" for d in c.get("devices", [])) or "none"
        lines.append(f"gpu        {devs}  driver={c.get('driver_version')}")
        if c.get("torch_arch_list"):
            lines.append(f"           torch compiled for {' '.join(c['torch_arch_list'])}")
    if n:
        lines.append(f"nvcc       {n.get('version')}  ({n.get('path')})  toolkit={n.get('toolkit_root')}")
    if x:
        lines.append(f"compiler   {x.get('cxx_version')}  ninja={x.get('ninja_version')}")
    if e:
        bi = e.get("build_info") or {}
        lines.append(
            f"clora3d._C {'importable' if e.get('importable') else 'NOT importable'}"
            + (f"  build_info={json.dumps(bi)}" if bi else "")
        )
    for op, devs in backend_table(rep.ops).items():
        cols = "  ".join(f"{dev}: {b}" for dev, (b, _) in sorted(devs.items()))
        lines.append(f"op         {op:<26} {cols}")
    lines.append("")
    for f in rep.findings:
        f = f if isinstance(f, Finding) else Finding(**f)
        lines.append(f"{_MARK.get(f.status, f.status)} {f.name}: {f.detail}")
        if f.fix and f.status in (WARN, ERROR, INFO):
            lines.append(f"         fix: {f.fix}")
    lines.append("")
    verdict = ("usable" if rep.usable else "NOT usable") + f" (exit code {rep.exit_code})"
    lines.append(f"clora3d ops: {verdict}")
    return "\n".join(lines)


def run(as_json: bool = False, stream=None) -> int:
    """Collect, write the report (text or JSON) to ``stream`` (stdout) and return the exit code."""
    stream = stream or sys.stdout
    rep = collect()
    stream.write((to_json(rep) if as_json else format_report(rep)) + "\n")
    return rep.exit_code


def _arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _doctor(args, parser) -> int:
    return run(as_json=args.json)


COMMANDS = [
    Command(
        "doctor",
        "check the installation: versions, GPU, how the kernels were built, the fix",
        __doc__.split("\n\n")[0] + "\n\nExit code 0 when clora3d.ops is usable (the PyTorch "
        "reference fallback counts, with a warning), 1 when it is not.",
        _arguments,
        _doctor,
    )
]

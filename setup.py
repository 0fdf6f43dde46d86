"""Build clora3d and its compiled kernels (``clora3d._C``).

Install torch first, then::

    pip install --no-build-isolation -e .

* CPU kernels (C++/OpenMP) are always built when torch is importable.
* CUDA kernels are added when torch is a CUDA build and nvcc is found, or when ``FORCE_CUDA=1``.
  ``CLORA3D_CPU_ONLY=1`` (or ``FORCE_CUDA=0``) skips them.
* Target GPU architectures come from ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;8.6;9.0+PTX"``). When it
  is unset: the architectures of the visible GPUs, or, on a machine without a GPU, the list this
  torch build itself was compiled for. No architecture list is hard-coded here.
* Under pip's default build isolation (``pip install .``), build_backend/clora3d_build.py makes the
  target environment's torch visible, so the kernels are compiled against the torch that will run
  them. Without any torch, building a wheel stops and says what to run; ``CLORA3D_NO_KERNELS=1``
  builds the pure-Python package on purpose.

The decision logic lives in small pure functions so tests/test_build.py can check it without
compiling anything; nothing below the ``__main__`` guard runs on import.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent

_ARCH_RE = re.compile(r"^[A-Za-z0-9.+]+$")


def _load_build_env():
    """clora3d/_build_env.py (CUDA discovery, shared with the doctor) loaded by its path: the package
    is not installed yet, and importing clora3d could pick up another installed copy. Reuses the
    module when this very file is already imported as clora3d._build_env (one set of functions)."""
    path = HERE / "clora3d" / "_build_env.py"
    mod = sys.modules.get("clora3d._build_env")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    spec = importlib.util.spec_from_file_location("clora3d_build_env", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build_env = _load_build_env()
# the shared decisions, under the names the build (and tests/test_build.py) use
env_flag = _build_env.env_flag
find_cuda_home = _build_env.find_cuda_home
decide_cuda = _build_env.decide_cuda


def resolve_arch_list(
    env: Mapping[str, str], device_capabilities: Sequence[tuple[int, int]], torch_arch_list: Sequence[str]
) -> tuple[str, str]:
    """The TORCH_CUDA_ARCH_LIST to build for, and where it came from.

    Order: the user's TORCH_CUDA_ARCH_LIST; else the visible GPUs (newest + PTX, as torch does);
    else the architectures this torch build was compiled for (``torch.cuda.get_arch_list()``,
    newest + PTX). Nothing is hard-coded.
    """
    user = (env.get("TORCH_CUDA_ARCH_LIST") or "").strip()
    if user and user != "native":
        items = [a for a in re.split(r"[;\s,]+", user) if a]
        bad = [a for a in items if not _ARCH_RE.match(a)]
        if bad or not items:
            raise RuntimeError(
                f"TORCH_CUDA_ARCH_LIST={user!r} is not understood (bad entries: {bad}). "
                'Use e.g. TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0+PTX".'
            )
        return ";".join(items), "TORCH_CUDA_ARCH_LIST"
    if device_capabilities:
        archs = sorted(
            {f"{major}.{minor}" for major, minor in device_capabilities},
            key=lambda a: tuple(int(x) for x in a.split(".")),
        )
        archs[-1] += "+PTX"
        return ";".join(archs), "visible GPUs"
    sms = []
    for name in torch_arch_list:
        m = re.fullmatch(r"sm_(\d+)(\d)", name)
        if m:
            sms.append((int(m.group(1)), int(m.group(2))))
    if not sms:
        raise RuntimeError(
            "No GPU is visible and TORCH_CUDA_ARCH_LIST is unset, and torch reports no compiled "
            "architectures to fall back on. Set TORCH_CUDA_ARCH_LIST for your GPU, e.g. "
            'TORCH_CUDA_ARCH_LIST="8.6" (RTX 30xx), "8.9" (RTX 40xx), "9.0" (H100).'
        )
    archs = [f"{a}.{b}" for a, b in sorted(set(sms))]
    archs[-1] += "+PTX"
    return ";".join(archs), "torch.cuda.get_arch_list() (no GPU visible)"


def arch_macro_value(arch_list: str) -> str:
    """CLORA3D_CUDA_ARCH_TOKENS value: the list with '_' for ';' (e.g. 8.0_8.6+PTX).

    Quotes and semicolons do not survive torch's ninja build, which runs the host compiler through
    a shell with the -D flags unquoted, and nvcc splits option values at commas; '_' never occurs
    in an architecture name. csrc/cuda/version.cu stringifies the tokens and turns '_' back to ';'.
    """
    return arch_list.replace(";", "_")


def cuda_define_macros(arch_list: str) -> list[tuple[str, Optional[str]]]:
    """Macros of a CUDA build. CLORA3D_CUDA_ARCHS names the C string ``clora3d_cuda_archs``
    (declared in csrc/cuda/cuda_ops.h, e.g. "8.0;8.6+PTX"), so ``std::string(CLORA3D_CUDA_ARCHS)``
    works in any file that includes that header."""
    return [
        ("WITH_CUDA", None),
        ("CLORA3D_CUDA_ARCHS", "clora3d_cuda_archs"),
        ("CLORA3D_CUDA_ARCH_TOKENS", arch_macro_value(arch_list)),
    ]


def openmp_flags(platform: str = sys.platform) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for OpenMP; none on macOS (Apple clang has no -fopenmp)."""
    if platform.startswith("linux"):
        return ["-fopenmp"], ["-fopenmp"]
    if platform == "win32":
        return ["/openmp"], []
    return [], []


def nvidia_wheel_include_dirs(site_packages: Path) -> list[str]:
    """CUDA headers shipped by the nvidia-* wheels that CUDA builds of torch depend on.

    ATen/cuda/CUDAContext.h includes cusparse.h / cublas_v2.h, which pip-installed torch gets from
    site-packages/nvidia/<pkg>/include rather than from the CUDA toolkit.
    """
    dirs = sorted(site_packages.glob("nvidia/*/include")) + sorted(site_packages.glob("nvidia/*/*/include"))
    return [str(d) for d in dirs if d.is_dir()]


def wheel_header_flags(dirs: Sequence[str], platform: str = sys.platform) -> tuple[list[str], list[str], list[str]]:
    """(include_dirs, cxx flags, nvcc flags) that put the nvidia-* wheel header ``dirs`` AFTER the
    toolkit's own include path. They only fill in the headers the toolkit lacks (cusparse.h): torch
    2.15 ships CUDA 13.2 headers there, and an nvcc 13.0 that sees that cuda_runtime_api.h before its
    own stops with "CUDA compiler and CUDA toolkit headers are incompatible". ``-idirafter`` (gcc and
    clang; nvcc preprocesses with the host compiler, so it goes through ``-Xcompiler``) searches a
    directory after every ``-I`` and system directory. MSVC has no such option: there they stay
    ordinary include directories."""
    dirs = list(dirs)
    if platform == "win32":
        return dirs, [], []
    cxx = [flag for d in dirs for flag in ("-idirafter", d)]
    nvcc = [flag for d in dirs for flag in ("-Xcompiler", f"-idirafter,{d}")]
    return [], cxx, nvcc


def toolkit_has_header(cuda_home: Optional[str], header: str) -> bool:
    """Whether the CUDA toolkit ships ``header``. Minimal toolkits lack the math-library headers;
    only then are the nvidia-* wheel headers added, and after the toolkit's own (wheel_header_flags)."""
    if not cuda_home:
        return False
    p = Path(cuda_home)
    return (p / "include" / header).exists() or any(p.glob(f"targets/*/include/{header}"))


def cpu_sources(root: Path = HERE) -> list[str]:
    return ["csrc/bindings.cpp"] + sorted(
        str(Path(p).relative_to(root)) for p in glob.glob(str(root / "csrc" / "cpu" / "*.cpp"))
    )


def cuda_sources(root: Path = HERE) -> list[str]:
    return sorted(str(Path(p).relative_to(root)) for p in glob.glob(str(root / "csrc" / "cuda" / "*.cu")))


_BINARY_COMMANDS = {"build_ext", "build", "bdist_wheel", "develop", "editable_wheel", "install", "bdist_egg"}


def builds_binaries(argv: Sequence[str]) -> bool:
    """Whether these setup.py commands compile the extension (egg_info and sdist do not)."""
    return any(a in _BINARY_COMMANDS for a in argv)


def _log(msg: str) -> None:
    sys.stderr.write(f"clora3d setup: {msg}\n")


def extensions(env: Mapping[str, str] = os.environ):  # pragma: no cover - exercised by real builds
    """(ext_modules, cmdclass) for setuptools; empty when torch is not importable."""
    if env_flag(env, "CLORA3D_NO_KERNELS"):
        _log(
            "CLORA3D_NO_KERNELS=1: building without compiled kernels (every op runs its PyTorch "
            "reference, 30-60x slower on the CPU)."
        )
        return [], {}
    try:
        import torch
    except ImportError:
        if not builds_binaries(sys.argv[1:]):
            return [], {}  # metadata / sdist only: nothing is compiled
        raise SystemExit(
            "clora3d setup: torch is not importable, and the compiled kernels must be built against "
            "the torch that will run them. Install torch first, then clora3d:\n"
            f"    {sys.executable} -m pip install torch\n"
            f"    {sys.executable} -m pip install .\n"
            "(or set CLORA3D_NO_KERNELS=1 to build without kernels on purpose)."
        ) from None
    problem = _build_env.torch_floor_problem(torch.__version__)
    if problem is not None:
        raise SystemExit(f"clora3d setup: {problem}")
    if not (HERE / "csrc" / "bindings.cpp").exists():
        _log("csrc/bindings.cpp is missing: building without compiled kernels.")
        return [], {}

    # the same plan `clora3d doctor` reports (clora3d/_build_env.py)
    plan = _build_env.cuda_plan(env, torch.version.cuda)
    if plan["build_cuda"] is None:  # FORCE_CUDA=1 asked for something impossible: the reason says what
        raise RuntimeError(plan["reason"])
    cuda_home, with_cuda, reason = plan["cuda_home"], plan["build_cuda"], plan["reason"]
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: give it the toolkit we found.
    if cuda_home and not (env.get("CUDA_HOME") or env.get("CUDA_PATH")):
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    sources = cpu_sources()
    define_macros: list[tuple[str, Optional[str]]] = []
    include_dirs = [str(HERE / "csrc")]
    omp_compile, omp_link = openmp_flags()
    # No -std flag: torch adds the standard its headers need (C++17 or C++20 depending on version).
    # -g0: Python's default CFLAGS carry -g, which only makes the build slower and the .so larger.
    cxx_opt = ["/O2"] if sys.platform == "win32" else ["-O3", "-g0"]
    extra_compile_args: dict[str, list[str]] = {"cxx": cxx_opt + omp_compile}
    ext_cls = cpp_extension.CppExtension
    if with_cuda:
        caps = []
        if torch.cuda.is_available():
            caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        arch_list, arch_source = resolve_arch_list(env, caps, torch.cuda.get_arch_list())
        # torch's own default crashes with no GPU visible and no TORCH_CUDA_ARCH_LIST; pin it.
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        _log(f"CUDA kernels: ON ({reason}); architectures {arch_list} from {arch_source}; CUDA_HOME={cuda_home}")
        sources += cuda_sources()
        define_macros += cuda_define_macros(arch_list)
        extra_compile_args["nvcc"] = ["-O3"]
        if not toolkit_has_header(cuda_home, "cusparse.h"):
            wheel_dirs = nvidia_wheel_include_dirs(Path(sysconfig.get_paths()["purelib"]))
            more_dirs, cxx_after, nvcc_after = wheel_header_flags(wheel_dirs)
            include_dirs += more_dirs
            extra_compile_args["cxx"] += cxx_after
            extra_compile_args["nvcc"] += nvcc_after
        ext_cls = cpp_extension.CUDAExtension
    else:
        _log(f"CUDA kernels: OFF ({reason}); building the CPU kernels only.")
    ext = ext_cls(
        name="clora3d._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=omp_link,
        depends=sorted(
            glob.glob(str(HERE / "csrc" / "**" / "*.h"), recursive=True)
            + glob.glob(str(HERE / "csrc" / "**" / "*.cuh"), recursive=True)
        ),
    )
    use_ninja = shutil.which("ninja") is not None
    if not use_ninja:
        _log("ninja not found: compiling serially (pip install ninja for parallel builds).")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)}


if __name__ == "__main__":
    from setuptools import setup

    ext_modules, cmdclass = extensions()
    # Metadata (name, version, dependencies, extras) lives in pyproject.toml.
    setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Backend selection for clora3d.ops: the compiled extension ``clora3d._C`` or the PyTorch reference.

The extension is imported once, when :mod:`clora3d.ops` is imported (like any torch extension: it
registers the operators ``torch.ops.clora3d.*``); a missing or broken build is reported on the first
op call, not at import. Importing it up front keeps ``torch.compile`` from having to trace an import.
``CLORA3D_OPS`` selects the backend: unset/``auto`` = compiled when importable (else the reference,
with one warning), ``reference`` = always the reference, ``native`` = always the compiled kernels
(an error when they are unavailable).
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from typing import Any, Optional

import torch

from clora3d.errors import Clora3dError

ENV_VAR = "CLORA3D_OPS"
_MODES = ("auto", "reference", "native")
OPS = (
    "furthest_point_sample",
    "knn",
    "gather_points",
    "three_nn",
    "three_interpolate",
    "chamfer_l2",
)

_native: Any = None
_native_error: Optional[str] = None
_native_tried = False
_warned = False
_last_mode = "auto"
_build_info: dict = {}


class NativeOpsUnavailableError(Clora3dError, RuntimeError):
    """CLORA3D_OPS=native was requested but the compiled kernels cannot serve the call."""


def mode() -> str:
    """The backend mode requested through the CLORA3D_OPS environment variable.

    While torch.compile / torch.export trace, the mode of the last eager call is used (tracing
    does not read the environment; change CLORA3D_OPS before compiling)."""
    global _last_mode
    if torch.compiler.is_compiling():
        return _last_mode
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in ("", "auto"):
        raw = "auto"
    elif raw not in _MODES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a backend; expected one of {', '.join(_MODES)} (or unset)")
    _last_mode = raw
    return raw


def native_module() -> Any:
    """The imported ``clora3d._C`` module, or None when it is not built (reason in ``native_error``)."""
    global _native, _native_error, _native_tried, _build_info
    if not _native_tried:
        _native_tried = True
        try:
            _native = importlib.import_module("clora3d._C")
        except ImportError as exc:  # not built, or built against another torch
            _native = None
            _native_error = f"{type(exc).__name__}: {exc}"
        else:
            if not hasattr(torch.ops.clora3d, "fps"):  # an old build: pybind functions, no operators
                _native = None
                _native_error = (
                    "ImportError: clora3d._C is an old build without the torch.ops.clora3d "
                    "operators; rebuild it (pip install --no-build-isolation -e .)"
                )
            else:
                from clora3d.ops import _library

                _library.register()
                _build_info = dict(_native.build_info())
        log = logging.getLogger("clora3d.ops")
        if log.isEnabledFor(logging.DEBUG):  # debug: the command line shows INFO, and a user error stays one line
            try:
                log.debug(kernels_summary())
            except ValueError as exc:  # a bad CLORA3D_OPS: reported on the first op call
                log.debug(str(exc))
    return _native


def kernels_summary() -> str:
    """One line saying which kernels are active, e.g. for logs and ``python -m clora3d``."""
    m = native_module()
    forced = mode()
    if forced == "reference":
        return f"clora3d kernels: PyTorch reference on every device ({ENV_VAR}=reference)"
    if m is None:
        return (
            f"clora3d kernels: NOT BUILT, every op runs the 30-60x slower PyTorch reference "
            f"({_native_error}); run `python tools/doctor.py` for the fix"
        )
    info = _build_info
    cpu = f"native CPU ({info.get('multiversion', 'baseline')})"
    cuda = (
        f"native CUDA (archs {info.get('cuda_archs')})"
        if info.get("cuda")
        else "CUDA tensors: PyTorch reference (built without CUDA kernels)"
    )
    return f"clora3d kernels: {cpu}; {cuda}"


def native_error() -> Optional[str]:
    """Why the compiled extension could not be imported (None when it imported fine)."""
    native_module()
    return _native_error


def _native_reason(device: torch.device) -> Optional[str]:
    """None when the compiled kernels can run on ``device``; otherwise the reason and the fix."""
    mod = native_module()
    if mod is None:
        return (
            f"the compiled extension clora3d._C is not importable ({_native_error}); build it with "
            "`pip install --no-build-isolation -e .` from the repository root"
        )
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if _build_info.get("cuda", False):
            return None
        return (
            "clora3d._C was built without CUDA kernels; rebuild with nvcc on PATH (or FORCE_CUDA=1) "
            "to run the ops natively on the GPU"
        )
    return f"clora3d._C has no kernels for device type {device.type!r}"


def use_native(device: torch.device) -> bool:
    """Whether an op on ``device`` runs the compiled kernel (warns once when falling back)."""
    global _warned
    m = mode()
    if m == "reference":
        return False
    reason = _native_reason(device)
    if reason is None:
        return True
    if m == "native":
        raise NativeOpsUnavailableError(f"{ENV_VAR}=native but {reason}")
    if not _warned:
        _warned = True
        warnings.warn(
            f"clora3d.ops: using the (slower) PyTorch reference ops because {reason}. "
            f"Set {ENV_VAR}=reference to silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def C() -> Any:
    """The compiled operators, ``torch.ops.clora3d`` (only call after ``use_native`` returned True)."""
    return torch.ops.clora3d


def backend_info() -> dict:
    """Which backend each op uses on CPU and CUDA, and why (for tools/doctor.py)."""
    m = mode()
    mod = native_module()
    build = dict(_build_info) if mod is not None else None
    devices = {"cpu": torch.device("cpu"), "cuda": torch.device("cuda")}
    per_device = {}
    for name, dev in devices.items():
        if m == "reference":
            per_device[name] = ("reference", f"{ENV_VAR}=reference")
            continue
        reason = _native_reason(dev)
        if reason is None:
            why = f"{ENV_VAR}={m}" if m == "native" else "compiled kernel available"
            per_device[name] = ("native", why)
        elif m == "native":
            per_device[name] = ("error", f"{ENV_VAR}=native but {reason}")
        else:
            per_device[name] = ("reference", reason)
    ops = {}
    for op in OPS:
        ops[op] = {dev: {"backend": b, "why": why} for dev, (b, why) in per_device.items()}
    return {
        "mode": m,
        "env": os.environ.get(ENV_VAR),
        "native_available": mod is not None,
        "native_error": _native_error,
        "build_info": build,
        "torch_threads": torch.get_num_threads(),
        "ops": ops,
        "notes": {
            "gather_points": "integer dtypes use torch.gather; float16/bfloat16 use the kernel on CUDA, torch.gather on the CPU",
            "three_interpolate": "float16/bfloat16 features: the kernel on CUDA (float32 accumulation, one rounding), the PyTorch path in their own dtype on the CPU",
            "coordinates": "float16/bfloat16 coordinates are computed in float32",
        },
    }

"""Optional third-party packages: import them lazily and, when one cannot be used, say why.

An optional package can be unusable for two different reasons, and they need different fixes:

* it is not installed -> ``pip install <name>``;
* it is installed but cannot load, typically because a system shared library it links against is
  missing (open3d needs Debian's ``libusb-1.0-0``: "libusb-1.0.so.0: cannot open shared object
  file"). Telling that user to ``pip install`` it again is wrong advice; the message names the
  missing library and the Debian/Ubuntu package that provides it.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Optional

# Shared libraries that optional packages are known to need -> Debian/Ubuntu package providing it.
DEBIAN_PACKAGE_OF_LIBRARY: dict[str, str] = {
    "libusb-1.0.so.0": "libusb-1.0-0",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libgomp.so.1": "libgomp1",
    "libX11.so.6": "libx11-6",
    "libXext.so.6": "libxext6",
    "libSM.so.6": "libsm6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libOSMesa.so.8": "libosmesa6",
}

# pip distribution name when it differs from the module name.
PIP_NAME: dict[str, str] = {"faiss": "faiss-cpu", "sklearn": "scikit-learn", "yaml": "pyyaml"}

_MISSING_LIB_RE = re.compile(r"([A-Za-z0-9_.+-]+\.so(?:\.[0-9]+)*): cannot open shared object file")


class OptionalDependencyError(ImportError):
    """An optional package is needed but missing or unloadable; the message says how to fix it."""


def explain_import_failure(name: str, exc: BaseException) -> str:
    """One sentence on why ``import name`` failed and what fixes it (no trailing period)."""
    text = str(exc)
    pip_name = PIP_NAME.get(name.split(".")[0], name.split(".")[0])
    m = _MISSING_LIB_RE.search(text)
    if m:
        lib = m.group(1)
        pkg = DEBIAN_PACKAGE_OF_LIBRARY.get(lib)
        fix = (
            f"install it with `apt-get install {pkg}` (Debian/Ubuntu)"
            if pkg
            else "install the system package that provides it"
        )
        return f"{name} is installed but cannot load: the system library {lib} is missing; {fix}"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == name.split(".")[0]:
        return f"{name} is not installed: pip install {pip_name}"
    return f"{name} is installed but failed to import ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"


def try_import(name: str) -> tuple[Optional[ModuleType], Optional[str]]:
    """(module, None) when ``name`` imports, else (None, reason). Catches loader errors too
    (OSError from a missing shared library, RuntimeError from a broken native build)."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # noqa: BLE001 - any failure to load an optional package is reported
        return None, explain_import_failure(name, e)


def require(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise OptionalDependencyError naming ``purpose`` and the real fix."""
    mod, why = try_import(name)
    if mod is None:
        raise OptionalDependencyError(f"{purpose} needs {name}, but {why}")
    return mod


def status(name: str) -> str:
    """'ok <version>' or the reason it cannot be used (for doctor and run metadata)."""
    mod, why = try_import(name)
    if mod is None:
        return str(why)
    return f"ok {getattr(mod, '__version__', '?')}"

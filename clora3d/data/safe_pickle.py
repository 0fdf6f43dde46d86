"""Restricted unpickling for the data set pickles (`*_fps.dat`, few-shot `*.pkl`).

The ModelNet40 cache and the few-shot folds are Python pickles, and a pickle can run any code when it
is loaded. :func:`safe_load` admits only what those files contain: numpy arrays, dtypes and scalars
and the builtin containers. Any other global (``os.system``, ``builtins.eval``, a class of some
package ...) raises :class:`~clora3d.errors.UnsafePickleError` naming it; it is never imported or
called.

This is not a second safe ``torch.load``: torch files (checkpoints, adapters) are read by
:func:`clora3d.storage.safe_torch_load` (torch's weights-only unpickler). This module is the other
job, plain ``.pkl`` / ``.dat`` data pickles holding numpy arrays, which torch's loader cannot read.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import IO, Any, Union

from clora3d.errors import UnsafePickleError

# (module, name) pairs that may be resolved. numpy 1 spells the private core modules `numpy.core`,
# numpy 2 spells them `numpy._core`; pickles written by either are accepted.
_NUMPY_CORE_NAMES = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ (protocol <= 4)
    ("multiarray", "scalar"),  # numpy scalars (np.int32(3) ...)
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ with protocol 5
}
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {(f"{pkg}.{mod}", name) for pkg in ("numpy.core", "numpy._core") for mod, name in _NUMPY_CORE_NAMES}
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # builtin containers / values that older protocols reference by name
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("__builtin__", "set"),  # Python-2 spellings
        ("__builtin__", "frozenset"),
        # protocol-2 pickles of numpy arrays made under Python 3 encode bytes this way
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}': only numpy arrays, dtypes, "
                "scalars and builtin containers are allowed in data set pickles. The file was not "
                "executed; if you trust it, convert it yourself, otherwise re-create it "
                "(see data/README.md)."
            )
        if module == "__builtin__":
            module = "builtins"
        if module.startswith("numpy.core."):
            # numpy 2 keeps a deprecated `numpy.core` alias; resolve the real module instead
            alt = "numpy._core." + module[len("numpy.core."):]
            try:
                return getattr(importlib.import_module(alt), name)
            except (ImportError, AttributeError):
                pass
        elif module.startswith("numpy._core."):
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):  # numpy 1 reading a numpy-2 pickle
                module = "numpy.core." + module[len("numpy._core."):]
        return getattr(importlib.import_module(module), name)


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted unpickler (see :func:`safe_load`)."""
    return _load(io.BytesIO(data), source)


def safe_load(path_or_file: Union[str, os.PathLike, IO[bytes]]) -> Any:
    """Load a pickle that may only hold numpy arrays/dtypes/scalars and builtin containers.

    Raises UnsafePickleError (naming the global) for anything else, before it is executed.
    """
    if hasattr(path_or_file, "read"):
        return _load(path_or_file, getattr(path_or_file, "name", "<file>"))  # type: ignore[arg-type]
    path = os.fspath(path_or_file)
    with open(path, "rb") as f:
        return _load(f, path)


def _load(f: IO[bytes], source: str) -> Any:
    try:
        return _RestrictedUnpickler(f, str(source)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # whatever an allowed global or a damaged stream raises (LookupError,
        # MemoryError, RecursionError, ...): one error naming the file
        from clora3d.errors import DataError

        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {detail})") from None

"""Input validation of clora3d.ops: every user error becomes one ValueError naming the op, the
argument, what it got and what is expected."""

from __future__ import annotations

import numbers

import torch

from clora3d.ops import _backend

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def eager_values(t: torch.Tensor) -> bool:
    """Whether value checks (finite coordinates, index ranges) run here, on the host.

    Only for CPU tensors in eager mode: on CUDA a host check would synchronise every call, and
    while torch.compile / torch.export trace there are no values. There the kernels check instead
    (see csrc/bindings.cpp), or :func:`defer_finite` for the PyTorch reference path."""
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return False
    return not isinstance(t, torch._subclasses.fake_tensor.FakeTensor)


def defer_finite(op: str, *named: tuple[str, torch.Tensor]) -> None:
    """For the PyTorch reference path where :func:`coords` could not check values on the host:
    an asynchronous assertion (CUDA: a device-side assert at the next sync; CPU while tracing: a
    RuntimeError when the compiled graph runs)."""
    for name, t in named:
        if not eager_values(t) and t.numel():
            torch._assert_async(
                torch.isfinite(t).all(), f"{op}: {name} contains NaN or infinite coordinates; expected finite values"
            )


def native_feature_dtype(t: torch.Tensor) -> bool:
    """Whether the compiled gather / interpolation kernels take ``t``'s dtype on its device:
    float32/float64 everywhere, float16/bfloat16 on CUDA (the CPU keeps the bit-exact PyTorch path)."""
    return t.dtype in FLOAT_DTYPES or (t.dtype in HALF_DTYPES and t.device.type == "cuda")


def _native_cpu(t: torch.Tensor):
    """The compiled module when it may serve checks on ``t`` (a CPU tensor), else None.

    Its serial helpers avoid torch reductions, whose parallel region can stall for a whole
    scheduler time slice on a busy machine."""
    if t.device.type != "cpu" or _backend.mode() == "reference":
        return None
    return _backend.native_module()


def all_finite(t: torch.Tensor) -> bool:
    """No NaN / inf in ``t``."""
    mod = _native_cpu(t)
    if mod is not None and t.dtype in FLOAT_DTYPES:
        return bool(torch.ops.clora3d.all_finite(t))
    return bool(torch.isfinite(t).all())


def index_range(t: torch.Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor."""
    mod = _native_cpu(t)
    if mod is not None and t.dtype == torch.int64:
        lo, hi = torch.ops.clora3d.index_range(t)
        return int(lo), int(hi)
    lo, hi = torch.aminmax(t)
    return int(lo), int(hi)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def tensor(x: object, op: str, name: str) -> torch.Tensor:
    """``x`` must be a torch.Tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{op}: {name} is a meta tensor (shape only, no data); pass a tensor on cpu or cuda")
    return x


def coords(x: object, op: str, name: str, *, min_points: int = 1) -> torch.Tensor:
    """A finite (B,N,3) float coordinate tensor with N >= min_points; float16/bfloat16 -> float32."""
    x = tensor(x, op, name)
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"{op}: {name} must have shape (B, N, 3), got {_shape(x)}")
    if x.dtype in HALF_DTYPES:
        x = x.float()
    elif x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} must be float32 or float64 (float16/bfloat16 are computed in float32), got {x.dtype}"
        )
    if x.shape[1] < min_points:
        what = "at least one point" if min_points == 1 else f"at least {min_points} points"
        raise ValueError(f"{op}: {name} must hold {what} (N >= {min_points}), got shape {_shape(x)}")
    if x.numel() and eager_values(x) and not all_finite(x):
        raise ValueError(f"{op}: {name} contains NaN or infinite coordinates; expected finite values")
    return x


def same_batch_device(op: str, *named: tuple[str, torch.Tensor]) -> None:
    """All tensors share the batch size (dim 0) and the device."""
    (n0, t0), rest = named[0], named[1:]
    for n, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{op}: {n} is on {t.device} but {n0} is on {t0.device}; expected the same device")
        if t.dim() == 0 or t.shape[0] != t0.shape[0]:
            raise ValueError(
                f"{op}: {n} has batch size {t.shape[0] if t.dim() else 'none'} (shape {_shape(t)}) but {n0} "
                f"has {t0.shape[0]} (shape {_shape(t0)}); expected the same batch size"
            )


def same_dtype(op: str, *named: tuple[str, torch.Tensor]) -> None:
    """Coordinate tensors share one dtype (after float16/bfloat16 -> float32): a float32/float64
    mix is an error, not a silent promotion (it would double the memory of the float32 side)."""
    (n0, t0), rest = named[0], named[1:]
    for n, t in rest:
        if t.dtype != t0.dtype:
            raise ValueError(
                f"{op}: {n0} is {t0.dtype} but {n} is {t.dtype}; expected the same dtype "
                f"(cast one of them, e.g. {n}.to({n0}.dtype))"
            )


def count(v: object, op: str, name: str, lo: int, hi: int, hi_desc: str) -> int:
    """An integer in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.dtype.is_floating_point and v.dtype != torch.bool:
            v = int(v)
        else:
            raise ValueError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if v < lo or v > hi:
        raise ValueError(f"{op}: {name} must be in [{lo}, {hi_desc}={hi}], got {v}")
    return v


def indices(idx: object, op: str, name: str, n: int, ranks: tuple[int, ...]) -> torch.Tensor:
    """An integer index tensor of one of ``ranks`` with values in [0, n) -> int64."""
    idx = tensor(idx, op, name)
    if idx.dtype not in INDEX_DTYPES:
        raise ValueError(f"{op}: {name} must be an integer (int64) tensor, got {idx.dtype}")
    if idx.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{op}: {name} must be {want}, got shape {_shape(idx)}")
    if idx.numel() and eager_values(idx):
        lo, hi = index_range(idx)
        if lo < 0 or hi >= n:
            raise ValueError(f"{op}: {name} must hold indices in [0, {n}), got values in [{lo}, {hi}]")
    return idx.long()

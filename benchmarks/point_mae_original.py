"""The original Point-MAE fine-tuning classifier, timed in clora3d's GPU harness.

``python benchmarks/point_mae_original.py [--point-mae build/peers/Point-MAE] [--device cuda] [--quick]
[--precisions fp32,bf16] [--pointnet2 require|fallback|standin] [--json FILE]``

The model is Point-MAE's own code (github Pang-Yatian/Point-MAE, ``models/Point_MAE.py``, class
``PointTransformer``) imported at run time from a checkout carried beside clora3d (the ignored folder
``build/peers/Point-MAE``, sources only); nothing of it is copied into clora3d. Its ViT-S settings are
read from the checkout's ``cfgs/finetune_modelnet.yaml`` (``model:`` section) and built through its
own registry (``models.build_model_from_cfg``).

What the checkout imports and what is done when it is missing (each choice is recorded in ``info``):

- ``knn_cuda`` (KNN_CUDA 0.2, a GitHub wheel, not installable offline; its import also asserts a
  GPU): when ``import knn_cuda`` fails, a stand-in ``KNN(k, transpose_mode)`` with KNN_CUDA's calling
  convention computes the same neighbours with ``torch.cdist`` + ``topk`` (batched; KNN_CUDA 0.2 loops
  over the batch in Python, so the stand-in is, if anything, faster than the original's kNN).
- ``extensions.chamfer_dist`` (Point-MAE's compiled Chamfer loss, imported by ``models/Point_MAE.py``
  but used only by the pre-training model): when it does not import, a stub whose classes raise a
  clear error when constructed.
- ``pointnet2_ops`` (FPS + gather in ``utils/misc.fps``): the real package by default
  (``pointnet2="require"``); a pure-torch stand-in only when asked (``"standin"``, CPU tests, or
  ``"fallback"``: the stand-in if the real one does not import), never silently.
- ``easydict`` and ``termcolor`` (imported by Point-MAE's ``utils/config.py`` and
  ``utils/checkpoint.py``; not on the GPU machine): minimal stand-ins when missing (attribute access
  to the config dict; ``colored`` returns the text). Neither runs in the timed step.
- ``yaml`` (``utils/config.py``), ``matplotlib.pyplot`` and ``mpl_toolkits.mplot3d`` (``utils/misc.py``;
  neither on the GPU machine, where only torch, numpy, pytest, hypothesis, h5py and timm are
  installed): stand-ins when missing; the classifier never calls them. The ViT-S settings are then
  read from the config's ``model:`` flow mapping without PyYAML (:func:`read_config`).
- ``timm``: the real one; Point-MAE imports ``timm.models.layers`` (``DropPath``, ``trunc_normal_``),
  deprecated since timm 0.9 but still re-exported (timm 1.0.31 warns with a FutureWarning, which is
  recorded).

Point-MAE's top-level packages (``models``, ``utils``, ``extensions``, ``datasets``, ...) would clash
with other modules of those names: the checkout is put first on ``sys.path`` only while it is
imported, same-named modules already loaded are set aside and put back afterwards, and every module
of the checkout and every stand-in is removed from ``sys.modules`` again (the built model keeps its
references). Not thread-safe.

Timing (``time_original``) follows ``benchmarks.gpu_bench.run_model``: full fine-tuning, train mode,
forward + ``F.cross_entropy`` on the logits (Point-MAE's ``get_loss_acc`` computes the same
``nn.CrossEntropyLoss`` plus an accuracy; the plain loss matches clora3d's rows), backward, AdamW
over all parameters (lr 1e-4, weight decay 0.05, fused on CUDA); no gradient clipping, no data
augmentation or point resampling (the runner's, not the model's; clora3d's rows have none either);
bf16 through ``torch.autocast``; peak allocated memory over the timed steps after
``reset_peak_memory_stats``; inference in eval mode under ``no_grad``.

To add the rows to gpu_bench's model table (same points, labels, timer and repeats)::

    model, info = build_original("build/peers/Point-MAE", cls_dim=C, device=device)
    rows += time_original(model, pts, labels, precisions=precisions, repeats=repeats, warmup=warmup,
                          timer=timer)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKOUT = ROOT / "build" / "peers" / "Point-MAE"
CONFIG_FILE = "cfgs/finetune_modelnet.yaml"
METHOD = "original Point-MAE (full)"
# Point-MAE's ViT-S classifier (cfgs/finetune_modelnet.yaml, model section), checked against the file
VIT_S = {
    "NAME": "PointTransformer",
    "trans_dim": 384,
    "depth": 12,
    "drop_path_rate": 0.1,
    "cls_dim": 40,
    "num_heads": 6,
    "group_size": 32,
    "num_group": 64,
    "encoder_dims": 384,
}
# top-level names of the checkout that other code may also use
CLASHING = ("models", "utils", "extensions", "datasets", "tools", "segmentation")
POINTNET2_MODES = ("require", "fallback", "standin")


# ----------------------------------------------------------------------------- stand-ins
class TorchKNN(torch.nn.Module):
    """KNN_CUDA 0.2's ``KNN(k, transpose_mode)`` computed with ``torch.cdist`` + ``topk``.

    ``forward(ref, query)`` returns ``(dist, idx)``: Euclidean distances (float32, ascending) and int64
    indices into ``ref``, without gradients. ``transpose_mode=True`` (how Point-MAE calls it): ref
    ``(B, Nr, D)``, query ``(B, Nq, D)`` -> ``(B, Nq, k)``. ``transpose_mode=False``: channel-first ref
    ``(B, D, Nr)``, query ``(B, D, Nq)`` -> ``(B, k, Nq)``. Ties may be ordered differently from the
    CUDA kernel's (which puts the lower index first).
    """

    def __init__(self, k: int, transpose_mode: bool = False):
        super().__init__()
        self.k = k
        self._t = transpose_mode

    def forward(self, ref: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert ref.size(0) == query.size(0), f"ref.shape={ref.shape} != query.shape={query.shape}"
        with torch.no_grad():
            if not self._t:  # channel-first -> points-first
                ref, query = ref.transpose(1, 2), query.transpose(1, 2)
            dist, idx = torch.cdist(query.float(), ref.float()).topk(self.k, dim=-1, largest=False, sorted=True)
            if not self._t:
                dist, idx = dist.transpose(1, 2).contiguous(), idx.transpose(1, 2).contiguous()
        return dist, idx


def knn_cuda_standin(reason: str = "") -> types.ModuleType:
    """A module object standing in for ``knn_cuda``: ``KNN`` is :class:`TorchKNN`."""
    mod = types.ModuleType("knn_cuda")
    mod.__doc__ = "clora3d stand-in for KNN_CUDA (torch.cdist + topk); see benchmarks/point_mae_original.py"
    mod.KNN = TorchKNN
    mod.STANDIN = True
    return mod


def chamfer_stub(reason: str = "") -> types.ModuleType:
    mod = types.ModuleType("extensions.chamfer_dist")
    mod.STANDIN = True

    def make(name: str) -> type:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                f"{name}: Point-MAE's chamfer extension did not import ({reason}); this stub only lets "
                "models/Point_MAE.py import for fine-tuning. Build extensions/chamfer_dist to pre-train."
            )

        return type(name, (torch.nn.Module,), {"__init__": __init__, "__module__": mod.__name__})

    mod.ChamferDistanceL1 = make("ChamferDistanceL1")
    mod.ChamferDistanceL2 = make("ChamferDistanceL2")
    return mod


def _fps(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Furthest point sampling from index 0 (pointnet2_ops' order; int32 like its kernel)."""
    B, N, _ = xyz.shape
    out = torch.zeros(B, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), device=xyz.device)
    far = torch.zeros(B, dtype=torch.long, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    for i in range(npoint):
        out[:, i] = far
        dist = torch.minimum(dist, (xyz - xyz[rows, far].unsqueeze(1)).pow(2).sum(-1))
        far = dist.argmax(-1)
    return out.int()


def _gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, C, N) features at (B, S) indices -> (B, C, S), like pointnet2_ops.gather_operation."""
    return torch.gather(features, 2, idx.long().unsqueeze(1).expand(-1, features.shape[1], -1))


def pointnet2_standin() -> tuple[types.ModuleType, types.ModuleType]:
    """(``pointnet2_ops``, ``pointnet2_ops.pointnet2_utils``) stand-ins with the two functions that
    Point-MAE's fine-tuning model calls: ``furthest_point_sample`` and ``gather_operation`` (torch, any
    device). For CPU tests only: the GPU rows must use the real package."""
    pkg = types.ModuleType("pointnet2_ops")
    pkg.__path__ = []
    utils = types.ModuleType("pointnet2_ops.pointnet2_utils")
    utils.furthest_point_sample = _fps
    utils.gather_operation = _gather_operation
    pkg.pointnet2_utils = utils
    pkg.STANDIN = utils.STANDIN = True
    return pkg, utils


class _EasyDict(dict):
    """The part of easydict that Point-MAE's model build uses: attribute access to a (nested) dict."""

    def __init__(self, d=None, **kwargs):
        super().__init__()
        for k, v in {**(d or {}), **kwargs}.items():
            self[k] = v

    def __setitem__(self, k, v):
        super().__setitem__(k, _EasyDict(v) if isinstance(v, dict) and not isinstance(v, _EasyDict) else v)

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v


def _standin(name: str, package: bool = False, **attrs: object) -> types.ModuleType:
    """A module object named ``name`` with ``attrs``, marked ``STANDIN`` (a package when asked, so
    that a submodule stand-in can sit under it)."""
    mod = types.ModuleType(name)
    if package:
        mod.__path__ = []
    mod.__dict__.update(attrs, STANDIN=True)
    return mod


def easydict_standin(reason: str = "") -> types.ModuleType:
    return _standin("easydict", EasyDict=_EasyDict)


def yaml_standin(reason: str = "") -> types.ModuleType:
    """``yaml`` for Point-MAE's ``utils/config.py``, which imports it; the classifier never parses YAML."""

    def refuse(*args, **kwargs):
        raise RuntimeError(f"PyYAML is not installed ({reason}); this yaml is clora3d's import stand-in")

    return _standin(
        "yaml",
        safe_load=refuse,
        load=refuse,
        dump=refuse,
        safe_dump=refuse,
        FullLoader=object,
        SafeLoader=object,
        Loader=object,
    )


def matplotlib_standin(reason: str = "") -> types.ModuleType:
    """An empty ``matplotlib`` package (``utils/misc.py`` imports ``matplotlib.pyplot``)."""
    return _standin("matplotlib", package=True)


def pyplot_standin(reason: str = "") -> types.ModuleType:
    """``matplotlib.pyplot`` for ``utils/misc.py``'s plotting helpers, which the classifier never calls."""

    def refuse(name):
        raise AttributeError(f"matplotlib is not installed ({reason}): matplotlib.pyplot.{name} is a stand-in")

    return _standin("matplotlib.pyplot", __getattr__=refuse)


def mpl_toolkits_standin(reason: str = "") -> types.ModuleType:
    return _standin("mpl_toolkits", package=True)


def mplot3d_standin(reason: str = "") -> types.ModuleType:
    """``mpl_toolkits.mplot3d`` with the name ``utils/misc.py`` imports (``Axes3D``), unusable."""

    class Axes3D:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"matplotlib is not installed ({reason}): mpl_toolkits.mplot3d is a stand-in")

    return _standin("mpl_toolkits.mplot3d", Axes3D=Axes3D)


def termcolor_standin(reason: str = "") -> types.ModuleType:
    return _standin(
        "termcolor",
        colored=lambda text, *args, **kwargs: str(text),
        cprint=lambda text, *args, **kwargs: print(str(text)),
    )


#: modules of the checkout's imports that the classifier never uses, stood in for when missing (in
#: this order: a parent package before its submodule)
OPTIONAL_IMPORTS = (
    ("easydict", easydict_standin),
    ("termcolor", termcolor_standin),
    ("yaml", yaml_standin),
    ("matplotlib", matplotlib_standin),
    ("matplotlib.pyplot", pyplot_standin),
    ("mpl_toolkits", mpl_toolkits_standin),
    ("mpl_toolkits.mplot3d", mplot3d_standin),
)


# ----------------------------------------------------------------------------- import machinery
def pointnet2_ext_built() -> bool | None:
    """Whether the installed ``pointnet2_ops`` has its compiled ``_ext`` (None: not installed), found
    without importing the package: importing it unbuilt JIT-compiles the extension for the
    architectures its source hard-codes (minutes, and refused by CUDA 13's nvcc). A failed or
    time-boxed peer build leaves exactly that state (setup.py copies the Python files first)."""
    spec = importlib.util.find_spec("pointnet2_ops")
    if spec is None:
        return None
    folders = spec.submodule_search_locations or []
    return any(
        (Path(d) / f"_ext{suffix}").is_file() for d in folders for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def ensure_module(name: str, make: Callable[[str], types.ModuleType]) -> tuple[types.ModuleType, str | None]:
    """The real module ``name`` when it imports; else ``make(error)``, put in ``sys.modules[name]`` (and
    on its parent package, when that is loaded). Returns (module, None) or (stand-in, the import error)."""
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or e.g. knn_cuda's AssertionError without a GPU
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    mod = make(error)
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    return mod, error


def _top(name: str) -> str:
    return name.partition(".")[0]


def _is_under(mod: object, root: Path) -> bool:
    files = [getattr(mod, "__file__", None)] + list(getattr(mod, "__path__", None) or [])
    for f in files:
        if f:
            try:
                Path(f).resolve().relative_to(root)
                return True
            except (ValueError, OSError):
                pass
    return False


@contextlib.contextmanager
def isolated_import(root: str | Path, hide: Sequence[str] = ()) -> Iterator[list[str]]:
    """Import from the checkout ``root`` without leaving a trace.

    While inside: ``root`` is first on ``sys.path``; loaded modules whose top-level name is in
    :data:`CLASHING` or ``hide`` are set aside. Yields a list to which the caller appends the names of
    stand-ins it puts in ``sys.modules``. On exit: ``sys.path`` is restored; every module loaded inside
    that is one of those top-level names, a listed stand-in (or the entry it replaced, put back) or a file of ``root`` is removed from
    ``sys.modules``; the set-aside modules are put back. Other modules loaded inside (timm, a real
    pointnet2_ops, ...) stay, as after any import.
    """
    root = Path(root).resolve()
    names = set(CLASHING) | set(hide)
    saved_path = list(sys.path)
    set_aside = {k: sys.modules.pop(k) for k in list(sys.modules) if _top(k) in names}
    before = dict(sys.modules)
    standins: list[str] = []
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield standins
    finally:
        sys.path[:] = saved_path
        for k in list(sys.modules):
            if k in standins and k in before:  # a stand-in over an entry that blocked the name (None)
                sys.modules[k] = before[k]
            elif k in before:
                continue
            elif _top(k) in names or k in standins or _is_under(sys.modules[k], root):
                del sys.modules[k]
        sys.modules.update(set_aside)
        importlib.invalidate_caches()


def _scalar(text: str) -> object:
    """A plain scalar of the config as PyYAML (YAML 1.1) reads it: int, float (with a dot), bool,
    null, or a string (quoted ones verbatim)."""
    v = text.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    if re.fullmatch(r"[-+]?\d+", v):
        return int(v)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", v):
        return float(v)
    return {"true": True, "false": False, "null": None, "~": None}.get(v.lower(), v)


def model_section(text: str) -> dict:
    """The ``model: {k: v, ...}`` flow mapping of a Point-MAE config read without PyYAML (flat scalars
    only, as in cfgs/finetune_modelnet.yaml); anything else is an error, never a guess."""
    m = re.search(r"^model\s*:\s*\{([^{}]*)\}", text, re.M)
    if m is None:
        raise ValueError("no flat 'model: {...}' mapping (PyYAML is needed to read this config)")
    cfg = {}
    for item in filter(None, (i.strip() for i in m.group(1).split(","))):
        key, sep, value = item.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"cannot read {item!r} of the model mapping without PyYAML")
        cfg[key.strip()] = _scalar(value)
    return cfg


def read_config(point_mae_dir: str | Path, cls_dim: int = 40) -> dict:
    """The ``model`` section of the checkout's ModelNet40 fine-tuning config, ``cls_dim`` set: with
    PyYAML when it is installed, else with :func:`model_section` (the GPU machine has no PyYAML)."""
    path = Path(point_mae_dir) / CONFIG_FILE
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        try:
            cfg = model_section(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    else:
        cfg = dict(yaml.safe_load(text)["model"])
    cfg["cls_dim"] = cls_dim
    return cfg


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def build_original(
    point_mae_dir: str | Path = DEFAULT_CHECKOUT,
    cls_dim: int = 40,
    device: str | torch.device = "cuda",
    pointnet2: str = "require",
    seed: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """Point-MAE's ViT-S fine-tuning classifier built by its own code from the checkout.

    Returns ``(model, info)``: the model on ``device`` (PyTorch's default initialisation, as a
    from-scratch fine-tune; weights do not change the timing) and what was used: ``knn``,
    ``pointnet2_ops``, ``chamfer``, ``standins`` (module names replaced), ``config``, ``vit_s`` (the
    config equals :data:`VIT_S` for ``cls_dim=40``), ``timm``, ``warnings``, ``parameters``,
    ``source_sha256`` (of models/Point_MAE.py). ``pointnet2``: ``"require"`` (the real package or an
    ImportError), ``"fallback"`` (a torch stand-in if the real one does not import) or ``"standin"``
    (always the stand-in: CPU tests; pointnet2_ops itself runs on CUDA only).
    """
    if pointnet2 not in POINTNET2_MODES:
        raise ValueError(f"pointnet2 must be one of {POINTNET2_MODES}, got {pointnet2!r}")
    root = Path(point_mae_dir).resolve()
    source = root / "models" / "Point_MAE.py"
    if not source.is_file():
        raise FileNotFoundError(
            f"no Point-MAE checkout at {root} (models/Point_MAE.py missing): export github "
            "Pang-Yatian/Point-MAE there (sources only)"
        )
    cfg = read_config(root, cls_dim)
    info: dict = {
        "point_mae_dir": str(root),
        "source_sha256": _sha(source),
        "config_file": CONFIG_FILE,
        "config": dict(cfg),
        "vit_s": cfg == {**VIT_S, "cls_dim": cls_dim},
        "standins": [],
    }
    hide = ("pointnet2_ops",) if pointnet2 == "standin" else ()
    with isolated_import(root, hide=hide) as standins, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def ensure(name, make):
            mod, err = ensure_module(name, make)
            if err is not None:
                standins.append(name)
            return mod, err

        # pointnet2_ops (utils/misc.py: from pointnet2_ops import pointnet2_utils)
        if pointnet2 == "standin":
            p2_err = "stand-in requested (pointnet2='standin')"
        else:
            try:
                if pointnet2_ext_built() is False:  # never let it JIT-compile itself
                    raise ImportError("pointnet2_ops._ext is not built (run benchmarks/gpu_peers.py build)")
                p2 = importlib.import_module("pointnet2_ops.pointnet2_utils")
                p2_err = None
            except Exception as exc:
                p2_err = f"{type(exc).__name__}: {exc}"
                if pointnet2 == "require":
                    raise ImportError(
                        f"pointnet2_ops does not import ({p2_err}); the original model needs the real "
                        "package on the GPU (pass pointnet2='standin' or 'fallback' only for CPU tests)"
                    ) from exc
        if p2_err is None:
            info["pointnet2_ops"] = f"real ({getattr(p2, '__file__', '?')})"
        else:
            pkg, utils = pointnet2_standin()
            sys.modules["pointnet2_ops"], sys.modules["pointnet2_ops.pointnet2_utils"] = pkg, utils
            standins += ["pointnet2_ops", "pointnet2_ops.pointnet2_utils"]
            info["pointnet2_ops"] = f"stand-in: torch FPS from index 0 + torch.gather ({p2_err})"

        knn, err = ensure("knn_cuda", knn_cuda_standin)
        info["knn"] = (
            f"real knn_cuda ({getattr(knn, '__file__', '?')})"
            if err is None
            else f"stand-in: torch.cdist + topk, KNN_CUDA's KNN(k, transpose_mode) convention ({err})"
        )
        import timm  # the real one, before any stand-in (its own imports must not see them)

        info["timm"] = timm.__version__
        for name, make in OPTIONAL_IMPORTS:
            _, err = ensure(name, make)
            info[name] = "real" if err is None else f"stand-in ({err})"
        _, err = ensure("extensions.chamfer_dist", chamfer_stub)
        info["chamfer"] = "real" if err is None else f"stub, raises when used (pre-training only) ({err})"
        models = importlib.import_module("models")  # the checkout's: registers PointTransformer
        EasyDict = importlib.import_module("easydict").EasyDict
        torch.manual_seed(seed)
        model = models.build_model_from_cfg(EasyDict(cfg))
        info["standins"] = list(standins)
    info["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return model.to(device), info


# ----------------------------------------------------------------------------- timing
def time_original(
    model: torch.nn.Module,
    pts: torch.Tensor,
    labels: torch.Tensor,
    precisions: Sequence[str] = ("fp32", "bf16"),
    repeats: int = 20,
    warmup: int = 5,
    timer: Callable[[torch.device, Callable[[], object], int, int], list[float]] | None = None,
    preset: str = "vit_s",
) -> list[dict]:
    """Rows like ``gpu_bench.run_model``'s for full fine-tuning of the original model, one per precision
    (``fp32``, ``tf32``: fp32 with TF32 matmuls, ``bf16``: autocast). ``timer(device, fn, repeats,
    warmup)`` returns milliseconds per call (default: gpu_bench's). Each precision gets a fresh AdamW
    over all parameters; the model's weights carry over (they do not change the cost)."""
    from benchmarks.gpu_bench import time_training

    rows = []
    for prec in precisions:
        row = time_training(model, pts, labels, prec, repeats, warmup, timer_fn=timer)
        rows.append(dict(method=METHOD, precision=prec, **row, preset=preset))
    return rows


# ----------------------------------------------------------------------------- CLI
def _table(rows: list[dict]) -> str:
    lines = [
        "| method | precision | trainable | train step ms | samples/s | peak MiB | inference ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['trainable']:,} | {r['step_ms']:.2f} | "
            f"{r['samples_per_s']:.0f} | {peak} | {r['inference_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--point-mae", default=str(DEFAULT_CHECKOUT), help="the Point-MAE checkout (sources)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="B2, 256 points, 2 timed calls (smoke test)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, tf32, bf16")
    ap.add_argument("--pointnet2", choices=POINTNET2_MODES, default="require")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU; use --device cpu --pointnet2 standin")
    if str(ROOT) not in sys.path:  # run as a script: the timer comes from benchmarks.gpu_bench
        sys.path.insert(0, str(ROOT))
    B, N, C, repeats, warmup = (2, 256, 40, 2, 1) if args.quick else (32, 1024, 40, 20, 5)
    model, info = build_original(args.point_mae, cls_dim=C, device=device, pointnet2=args.pointnet2)
    print(json.dumps(info, indent=1), flush=True)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(B, N, 3, generator=g).to(device)
    labels = torch.randint(0, C, (B,), generator=g).to(device)
    rows = time_original(model, pts, labels, args.precisions.split(","), repeats, warmup)
    print(_table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "model": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

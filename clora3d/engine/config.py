"""YAML configs with ``_base_`` inheritance, ``--set`` overrides and a validated schema.

Loading rules (see cfgs/README.md for the user-facing description):

* A YAML file is a mapping. Any mapping (top level or nested) may contain ``_base_``: a path or a
  list of paths, relative to the file that names them. The bases are loaded (recursively) and
  merged in list order, then the mapping's own keys are merged on top: **deep merge, child wins**.
  Mappings merge key by key; lists and scalars are replaced as a whole. This differs from Point-MAE,
  whose loader stores the base file *nested under* the key ``_base_`` instead of merging it.
* ``_replace_: true`` inside a mapping makes it replace the inherited mapping instead of merging
  into it (e.g. to switch ``peft`` from LoRA to adapters without inheriting ``rank``).
* ``overrides`` (``--set a.b=c``) are applied last; ``c`` is parsed as YAML (``1e-3``, ``true``,
  ``[1, 2]``, ``{NAME: RotateY}``).
* Every section has a fixed set of keys with defaults (``SCHEMA``); an unknown key raises
  :class:`~clora3d.errors.ConfigError` naming the key and the file (or ``--set``) it came from.
  The keys of ``model``, ``peft`` and each ``dataset`` split are checked against the constructor
  signature of the class named by their ``NAME``.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from clora3d.errors import ConfigError

__all__ = [
    "SCHEMA", "load_config", "compose_config", "composition_choices", "validate_config", "apply_overrides",
    "parse_override", "dump_config", "save_config", "default_point_all",
]

Path_ = tuple  # a key path such as ("train", "epochs")
Origins = dict  # key path -> description of where the value came from

BASE_KEY = "_base_"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats also match ``1e-3`` / ``5E4`` (PyYAML's YAML 1.1 rule reads them as
    strings, a classic source of "lr must be a number" surprises)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml_load(text_or_stream: Any) -> Any:
    return yaml.load(text_or_stream, Loader=_Loader)
REPLACE_KEY = "_replace_"


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One config key: default value, a checker and a one-line description."""

    default: Any
    check: Callable[[Any], bool]
    expect: str
    doc: str = ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _pos_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _nonneg_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _nonneg_num(v: Any) -> bool:
    return _is_num(v) and v >= 0


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _choice(*options: Any) -> Callable[[Any], bool]:
    return lambda v: any(v == o and type(v) is type(o) for o in options)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _transform_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, dict) and "NAME" in t for t in v)


def _betas(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v)


#: Sections whose keys are fixed here. ``model``, ``peft`` and ``dataset.<split>`` are open
#: sections checked against the library's constructors (see ``_validate_library_sections``).
SCHEMA: dict[str, dict[str, Key] | Key] = {
    "name": Key(None, _opt(_is_str), "a string",
                "experiment name; default: the config file stem ('run' for a dict built in code)"),
    "task": Key("classification", _choice("classification", "partseg", "pretrain"),
                "classification | partseg | pretrain", "what is trained"),
    "seed": Key(0, _nonneg_int, "an integer >= 0", "base seed; rank r uses seed + r for the model RNG"),
    "data": {
        "npoints": Key(1024, _pos_int, "a positive integer", "points fed to the model"),
        "point_all": Key(None, _opt(_pos_int), "a positive integer or null",
                         "train: FPS to point_all, then a random subset of npoints shared by the "
                         "batch; null = reference table (1024->1200, 2048->2400, 4096->4800, "
                         "8192->8192, else npoints), capped at the points available"),
        "train_sampling": Key("fps_subset", _choice("fps_subset", "fps", "none"),
                              "fps_subset | fps | none",
                              "fps_subset = reference train pipeline; fps = deterministic FPS; "
                              "none = use the dataset's points as they are (part segmentation)"),
        "train_transforms": Key([], _transform_list, "a list of {NAME: ...} mappings",
                                "batched augmentations after sampling (clora3d.data.build_transforms)"),
    },
    "optimizer": {
        "NAME": Key("AdamW", _choice("AdamW", "Adam", "SGD"), "AdamW | Adam | SGD", "optimizer"),
        "lr": Key(5e-4, lambda v: _is_num(v) and v > 0, "a positive number", "base learning rate"),
        "weight_decay": Key(0.05, _nonneg_num, "a number >= 0",
                            "decay of the decayed group (no decay: 1-D params, *.bias, names "
                            "containing 'token')"),
        "betas": Key([0.9, 0.999], _betas, "two numbers in [0, 1)", "Adam/AdamW betas"),
        "eps": Key(1e-8, lambda v: _is_num(v) and v > 0, "a positive number", "Adam/AdamW eps"),
        "momentum": Key(0.9, _nonneg_num, "a number >= 0", "SGD momentum"),
        "nesterov": Key(True, _is_bool, "true or false", "SGD Nesterov"),
        "no_decay_cls_pos": Key(False, _is_bool, "true or false",
                                "also exempt cls_pos from weight decay (the reference decays it)"),
    },
    "scheduler": {
        "NAME": Key("CosLR", _choice("CosLR", "none"), "CosLR | none",
                    "CosLR = timm-0.4.5 CosineLRScheduler stepped once per epoch; none = constant"),
        "epochs": Key(None, _opt(_pos_int), "a positive integer or null",
                      "t_initial of the cosine; null = train.epochs"),
        "warmup_epochs": Key(10, _nonneg_int, "an integer >= 0", "linear warm-up epochs"),
        "lr_min": Key(1e-6, _nonneg_num, "a number >= 0", "cosine floor"),
        "warmup_lr_init": Key(1e-6, _nonneg_num, "a number >= 0", "lr at the start of warm-up"),
    },
    "train": {
        "epochs": Key(300, _pos_int, "a positive integer",
                      "epochs to run (the reference runs max_epoch + 1 = 301)"),
        "batch_size": Key(32, _pos_int, "a positive integer",
                          "GLOBAL batch; each of W ranks gets batch_size / W"),
        "grad_clip": Key(10.0, _opt(lambda v: _is_num(v) and v > 0), "a positive number or null",
                         "clip_grad_norm_ max norm over the trainable params; null = off "
                         "(default 10 for fine-tuning, null for pre-training: the references)"),
        "amp": Key(False, _choice(False, "fp16", "bf16"), "false | fp16 | bf16",
                   "mixed precision, CUDA only (ignored with a warning on CPU)"),
        "matmul_precision": Key("highest", _choice("highest", "high", "medium"), "highest | high | medium",
                                "torch.set_float32_matmul_precision: high = TF32 tensor cores for float32 "
                                "matmuls on CUDA (faster, ~1e-3 relative error); highest = exact float32"),
        "compile": Key(False, _choice(False, True, "reduce-overhead", "max-autotune", "aot_eager"),
                       "false | true | reduce-overhead | max-autotune | aot_eager",
                       "torch.compile(fullgraph=True) of the training forward: true = Inductor's default "
                       "mode, reduce-overhead = Inductor + CUDA graphs, aot_eager = no code generation "
                       "(debugging); evaluation and checkpoints use the plain model (docs/training.md)"),
        "num_workers": Key(4, _nonneg_int, "an integer >= 0", "DataLoader workers"),
        "val_freq": Key(1, _pos_int, "a positive integer",
                        "evaluate every val_freq epochs (and always after the last epoch)"),
        "deterministic": Key(True, _is_bool, "true or false",
                             "torch.use_deterministic_algorithms(warn_only) + cudnn flags"),
        "select_on_test": Key(True, _is_bool, "true or false",
                              "REFERENCE QUIRK: evaluate every epoch on dataset.test and pick the "
                              "best epoch on it (Point-MAE & co.); false = pick on dataset.val, "
                              "then report test metrics of the last and best weights"),
        "drop_last": Key(True, _is_bool, "true or false", "drop the incomplete last train batch"),
        "device": Key("auto", _choice("auto", "cpu", "cuda"), "auto | cpu | cuda",
                      "auto = cuda when available"),
        "sync_bn": Key(False, _is_bool, "true or false", "SyncBatchNorm under DDP (CUDA only)"),
        "label_smoothing": Key(0.0, lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)",
                               "cross-entropy label smoothing (classification)"),
        "partseg_double_step": Key(True, _is_bool, "true or false",
                                   "REFERENCE QUIRK of Point-MAE part seg (default): two optimizer "
                                   "steps per batch (before and after clipping); false = one step"),
        "pretrain_select": Key("last", _choice("last", "test_loss"), "last | test_loss",
                               "pre-training: last = keep the last epoch, no model selection "
                               "(reference); test_loss = also write ckpt-best.pth at the lowest "
                               "Chamfer loss on dataset.test"),
        "snapshot_every": Key(None, _opt(_pos_int), "a positive integer or null",
                              "also keep ckpt-epoch-XXX.pth every N epochs from snapshot_from "
                              "(pre-training default 25, as the reference)"),
        "snapshot_from": Key(0, _nonneg_int, "an integer >= 0",
                             "first epoch eligible for snapshots (pre-training default 250)"),
        "save_best": Key(True, _is_bool, "true or false", "write ckpt-best.pth"),
    },
    "eval": {
        "vote": Key(0, _choice(0, 10), "0 or 10",
                    "after training, also evaluate the best and last weights with 10-view "
                    "scale&translate voting, reported separately as vote@10"),
        "vote_passes": Key(1, _pos_int, "a positive integer",
                           "voting passes; > 1 also reports the best and the mean of the passes "
                           "(reference protocol: best of 299 passes, acc_vote@10_max_of_299)"),
        "batch_size": Key(None, _opt(_pos_int), "a positive integer or null",
                          "evaluation batch; null = 2 x train.batch_size (reference)"),
    },
    "log": {
        "root": Key("experiments", _is_str, "a path", "run dirs go to <root>/<name>"),
        "tensorboard": Key(True, _is_bool, "true or false", "TensorBoard scalars in <run>/tb"),
        "csv": Key(True, _is_bool, "true or false", "per-epoch metrics.csv"),
        "json": Key(True, _is_bool, "true or false", "per-epoch metrics.jsonl + result.json"),
        "progress": Key(True, _is_bool, "true or false", "tqdm progress bars"),
    },
}

OPEN_SECTIONS = ("model", "peft", "dataset")
MODEL_ENGINE_KEYS = {
    "NAME": "model class (PointTransformer | PartSegModel | PointMAE)",
    "preset": "optional preset (vit_s | tiny ...) from which the other keys override",
    "frozen_bn": "train (default, the references: a frozen BatchNorm's statistics drift to the "
                 "new data) | eval (strict: BatchNorm with frozen params keeps its statistics)",
}
#: frozen-BN policy when neither model.frozen_bn nor peft.frozen_bn is given (reference behaviour)
DEFAULT_FROZEN_BN = "train"
DATASET_SPLIT_KEYS = ("train", "val", "test")
DATASET_ENGINE_KEYS = {
    "NAME": "dataset class",
    "split": "split passed to build_dataset (default: the section name)",
    "from_train": "val only: hold out this fraction (0..1) of the train set instead",
}

#: Reference table for the FPS pre-sampling size of the training pipeline (point_mae_family §1.4).
_POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


def default_point_all(npoints: int) -> int:
    """``point_all`` used by the reference runner for ``npoints`` (npoints itself if not listed)."""
    return _POINT_ALL.get(npoints, npoints)


# ----------------------------------------------------------------------------------------------
# Loading and merging
# ----------------------------------------------------------------------------------------------
#: bounds on what one config file may expand to (YAML aliases of aliases: "billion laughs")
MAX_CONFIG_VALUES = 200_000
MAX_CONFIG_DEPTH = 64


def _check_size(data: Any, path: Path) -> None:
    """Count values iteratively (aliases expanded) and stop at the bounds, before anything walks
    or prints the structure."""
    stack = [(data, 0)]
    n = 0
    while stack:
        v, depth = stack.pop()
        n += 1
        if n > MAX_CONFIG_VALUES:
            raise ConfigError(f"config {path} expands to more than {MAX_CONFIG_VALUES:,} values "
                              "(YAML aliases nested in aliases?); write the values out")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"config {path} is nested more than {MAX_CONFIG_DEPTH} levels deep; "
                              "a config is a few levels of mappings")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)


def _read_yaml(path: Path, referenced_from: str | None) -> Any:
    where = f" (named in _base_ of {referenced_from})" if referenced_from else ""
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory, expected a YAML file{where}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{where}")
    if referenced_from and path.suffix.lower() not in (".yaml", ".yml"):
        # never read (nor quote in an error) a file that is not a config, e.g. a system file
        raise ConfigError(f"_base_ in {referenced_from} names {path}, which is not a .yaml/.yml "
                          "config file; it was not read")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = _yaml_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0][:200]
        raise ConfigError(f"invalid YAML in {path}{loc}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (invalid byte at position {e.start}); "
                          "save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply to read; a config is a few levels "
                          "of mappings") from None
    _check_size(data, path)
    return data


def _merge(base: dict, base_org: Origins, child: dict, child_org: Origins,
           prefix: Path_ = ()) -> None:
    """Deep-merge ``child`` into ``base`` in place (child wins); origins follow the values."""
    for k, v in child.items():
        p = prefix + (k,)
        if isinstance(v, dict) and isinstance(base.get(k), dict) and not v.get(REPLACE_KEY, False):
            _merge(base[k], base_org, v, child_org, p)
            base_org[p] = child_org.get(p, base_org.get(p))
        else:
            if isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if kk != REPLACE_KEY}
            # drop origins of the replaced subtree
            for q in [q for q in base_org if q[: len(p)] == p]:
                del base_org[q]
            base[k] = copy.deepcopy(v)
            for q, o in child_org.items():
                if q[: len(p)] == p:
                    base_org[q] = o
    for k in list(base):
        if isinstance(base[k], dict):
            base[k].pop(REPLACE_KEY, None)


def _origins_of(obj: Any, source: str, prefix: Path_ = ()) -> Origins:
    out: Origins = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out[prefix + (k,)] = source
            out.update(_origins_of(v, source, prefix + (k,)))
    return out


def _resolve_mapping(node: dict, file: Path, stack: tuple[Path, ...], prefix: Path_) -> tuple[dict, Origins]:
    """Resolve ``_base_`` inside ``node`` (a mapping read from ``file``) recursively."""
    out: dict = {}
    org: Origins = {}
    bases = node.get(BASE_KEY)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            where = ".".join(map(str, prefix + (BASE_KEY,)))
            raise ConfigError(f"'{where}' in {file} must be a path or a list of paths, got {_short_repr(bases)}")
        for b in bases:
            bpath = (file.parent / b).resolve()
            sub, sub_org = _load_file(bpath, stack, referenced_from=str(file))
            # the base file's keys live at ``prefix`` in the including file
            sub_org = {prefix + q: o for q, o in sub_org.items()}
            _merge(out, org, sub, sub_org, prefix)
    own: dict = {}
    own_org: Origins = {}
    for k, v in node.items():
        if k == BASE_KEY:
            continue
        if not isinstance(k, str):
            raise ConfigError(f"config key {_short_repr(k)} in {file} must be a string")
        p = prefix + (k,)
        own_org[p] = str(file)
        if isinstance(v, dict):
            rv, rorg = _resolve_mapping(v, file, stack, p)
            if v.get(REPLACE_KEY):
                rv[REPLACE_KEY] = True
            own[k] = rv
            own_org.update(rorg)
        else:
            own[k] = v
    _merge(out, org, own, own_org, prefix)
    return out, org


def _load_file(path: Path, stack: tuple[Path, ...] = (), referenced_from: str | None = None) -> tuple[dict, Origins]:
    path = Path(path).resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in stack + (path,))
        raise ConfigError(f"_base_ cycle: {chain}")
    data = _read_yaml(path, referenced_from)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level, "
                          f"got {type(data).__name__}")
    return _resolve_mapping(data, path, stack + (path,), ())


def _strip_replace(node: Any) -> None:
    if isinstance(node, dict):
        node.pop(REPLACE_KEY, None)
        for v in node.values():
            _strip_replace(v)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], yaml-parsed value)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected KEY.SUB=VALUE, e.g. train.epochs=10")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() or p != p.strip() for p in parts):
        raise ConfigError(f"bad override {text!r}: the key must be dot-separated names, "
                          f"e.g. optimizer.lr=1e-3")
    if BASE_KEY in parts:
        raise ConfigError(f"bad override {text!r}: _base_ cannot be set from the command line")
    try:
        value = _yaml_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"bad override {text!r}: the value is not valid YAML "
                          f"({getattr(e, 'problem', e)})") from None
    return parts, value


def apply_overrides(cfg: dict, overrides: Iterable[str], origins: Origins | None = None) -> dict:
    """Apply ``--set`` overrides in place (creating missing mappings) and return ``cfg``."""
    for text in overrides:
        parts, value = parse_override(text)
        node = cfg
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"bad override {text!r}: '{where}' is {nxt!r}, not a mapping")
            node = nxt
        node[parts[-1]] = value
        if origins is not None:
            p = tuple(parts)
            for q in [q for q in origins if q[: len(p)] == p]:
                del origins[q]
            for i in range(1, len(p) + 1):
                origins[p[:i]] = f"--set {text}"
            origins.update(_origins_of(value, f"--set {text}", p))
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Load a YAML config with ``_base_`` inheritance and ``--set`` overrides, fill defaults, validate.

    Returns a plain nested dict with every schema key present. Raises ConfigError on any problem,
    naming the key and the file (or override) responsible.
    """
    path = Path(path)
    cfg, origins = _load_file(path)
    apply_overrides(cfg, list(overrides), origins)
    _strip_replace(cfg)
    if cfg.get("name") is None:
        cfg["name"] = path.stem
    return validate_config(cfg, origins=origins, source=str(path))


# ----------------------------------------------------------------------------------------------
# Composition by task and method
# ----------------------------------------------------------------------------------------------
def default_cfgs_root() -> Path:
    """The ``cfgs/`` folder of this checkout (``./cfgs`` when the package is installed elsewhere)."""
    here = Path(__file__).resolve().parents[2] / "cfgs"
    return here if (here / BASE_KEY).is_dir() else Path("cfgs")


def composition_choices(root: str | Path | None = None) -> dict[str, list[str]]:
    """The names ``compose_config`` accepts: ``{"task": [...], "peft": [...], "model": [...], "protocol": [...]}``
    (the YAML files under ``<root>/_base_/{tasks,peft,models,protocols}/``)."""
    base = Path(root if root is not None else default_cfgs_root()) / BASE_KEY
    return {kind: sorted(f.stem for f in (base / folder).glob("*.yaml"))
            for kind, folder in (("task", "tasks"), ("peft", "peft"), ("model", "models"),
                                 ("protocol", "protocols"))}


def _compose(task: str, peft: str, model: str | None, protocol: str | None,
             root: str | Path | None) -> tuple[dict, Origins, str]:
    """Merge ``_base_/{recipe, models/<model>, tasks/<task>, protocols/<protocol>, peft/<peft>}.yaml``
    in that order (deep merge, later wins, as a ``_base_`` list); returns (cfg, origins, source)."""
    root = Path(root if root is not None else default_cfgs_root())
    choices = composition_choices(root)
    source = f"--task {task} --peft {peft}" + (f" --protocol {protocol}" if protocol else "") \
        + (f" --model {model}" if model else "")
    for kind, value in (("task", task), ("peft", peft), ("model", model), ("protocol", protocol)):
        if value is not None and value not in choices[kind]:
            close = difflib.get_close_matches(str(value), choices[kind], n=1)
            did = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown --{kind} {value!r}{did} (available in {root / BASE_KEY}: "
                              f"{', '.join(choices[kind]) or 'none'})")
    base = root.resolve() / BASE_KEY
    pair = root.resolve() / ("_".join([task] + ([protocol] if protocol else []))) / f"{peft}.yaml"
    if pair.is_file():  # the pair's own reference settings on top of the same layers (cfgs/README.md)
        if model is not None:
            raise ConfigError(f"--model {model}: {pair} fixes the model of {task} x {peft}; drop --model, or "
                              f"use --cfg {pair} --set model.KEY=VALUE")
        cfg, origins = _load_file(pair, referenced_from=source)
        cfg.setdefault("name", "_".join([task] + ([protocol] if protocol else []) + [peft]))
        return cfg, origins, source
    task_file = base / "tasks" / f"{task}.yaml"
    task_cfg, _ = _load_file(task_file)
    own_model = isinstance(task_cfg.get("model"), dict) and "NAME" in task_cfg["model"]
    if own_model and model is not None:
        raise ConfigError(f"--model {model}: task {task!r} defines its own model "
                          f"({task_cfg['model']['NAME']}) in {task_file}; drop --model, or write a config "
                          f"file with _base_ and set the model keys there")
    files = [base / "recipe.yaml"]
    if not own_model:
        files.append(base / "models" / f"{model or DEFAULT_MODEL}.yaml")
    files.append(task_file)
    if protocol is not None:
        files.append(base / "protocols" / f"{protocol}.yaml")
    files.append(base / "peft" / f"{peft}.yaml")
    cfg: dict = {}
    origins: Origins = {}
    for f in files:
        sub, sub_org = _load_file(f, referenced_from=source)
        _merge(cfg, origins, sub, sub_org)
    cfg["name"] = "_".join([task] + ([protocol] if protocol else []) + [peft])
    origins[("name",)] = source
    return cfg, origins, source


def compose_config(task: str, peft: str, *, model: str | None = None, protocol: str | None = None,
                   overrides: Iterable[str] = (), root: str | Path | None = None) -> dict:
    """The run config of ``task`` x ``peft`` (``tools/train.py --task modelnet40 --peft clora``), validated.

    Merges ``cfgs/_base_/recipe.yaml``, ``models/<model>.yaml`` (default ``vit_s``; skipped for a task
    whose file names its own ``model.NAME``, e.g. shapenetpart), ``tasks/<task>.yaml``,
    ``protocols/<protocol>.yaml`` (optional, e.g. ``rotate``) and ``peft/<peft>.yaml`` in that order, then
    ``overrides`` (``--set``). A pair whose reference settings go beyond these layers keeps a file
    ``cfgs/<task>[_<protocol>]/<peft>.yaml`` (e.g. DAPT's per-task bottleneck), which bases on the same
    layers; it is used instead when it exists. The run name is ``<task>_<peft>``
    (``<task>_<protocol>_<peft>`` with a protocol). An unknown name raises ConfigError listing the
    available ones.
    """
    cfg, origins, source = _compose(task, peft, model, protocol, root)
    apply_overrides(cfg, list(overrides), origins)
    _strip_replace(cfg)
    return validate_config(cfg, origins=origins, source=source)


#: model file used by compose_config when --model is not given
DEFAULT_MODEL = "vit_s"


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _where(origins: Origins | None, p: Path_, source: str) -> str:
    if origins:
        for i in range(len(p), 0, -1):
            if p[:i] in origins:
                return origins[p[:i]]
    return source


def _unknown(key_path: Path_, known: Iterable[str], origins: Origins | None, source: str,
             hint: str = "") -> ConfigError:
    dotted = ".".join(map(str, key_path))
    known = sorted(known)
    close = difflib.get_close_matches(str(key_path[-1]), known, n=1)
    did = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{dotted}' in {_where(origins, key_path, source)}{did} "
                       f"(known keys{hint}: {', '.join(known)})")


def _bad_value(key_path: Path_, value: Any, expect: str, origins: Origins | None, source: str) -> ConfigError:
    dotted = ".".join(map(str, key_path))
    return ConfigError(f"config key '{dotted}' in {_where(origins, key_path, source)} must be "
                       f"{expect}, got {_short_repr(value)}")


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr`` bounded in time and length (a value may be a huge aliased structure)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 8, 120, 120
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: Defaults that depend on the task (applied when the key is absent): the references' pre-training
#: runner (Point-MAE tools/runner_pretrain.py) does not clip gradients and keeps
#: ckpt-epoch-XXX.pth every 25 epochs from epoch 250.
TASK_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "pretrain": {("train", "grad_clip"): None, ("train", "snapshot_every"): 25,
                 ("train", "snapshot_from"): 250},
}


def validate_config(cfg: Mapping, *, origins: Origins | None = None, source: str = "<config>",
                    check_library: bool = True) -> dict:
    """Fill defaults and validate ``cfg`` (idempotent). Returns a new dict.

    ``check_library`` also checks the open sections (model, peft, dataset.*) against the
    constructor signatures of the classes they name.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config from {source} must be a mapping, got {type(cfg).__name__}")
    cfg = copy.deepcopy(dict(cfg))
    cfg.pop(BASE_KEY, None)
    for (sec_name, key), value in TASK_DEFAULTS.get(cfg.get("task"), {}).items():
        sec = cfg.get(sec_name)
        if sec is None:
            sec = cfg[sec_name] = {}
        if isinstance(sec, dict) and key not in sec:
            sec[key] = copy.deepcopy(value)
    known_top = set(SCHEMA) | set(OPEN_SECTIONS)
    for k in cfg:
        if k not in known_top:
            raise _unknown((k,), known_top, origins, source, " at the top level")
    out: dict = {}
    for k, spec in SCHEMA.items():
        if isinstance(spec, Key):
            v = cfg.get(k, copy.deepcopy(spec.default))
            if not spec.check(v):
                raise _bad_value((k,), v, spec.expect, origins, source)
            out[k] = v
            continue
        sec = cfg.get(k)
        if sec is None:
            sec = {}
        if not isinstance(sec, dict):
            raise _bad_value((k,), sec, "a mapping", origins, source)
        for kk in sec:
            if kk not in spec:
                raise _unknown((k, kk), spec, origins, source, f" of '{k}'")
        res = {}
        for kk, key in spec.items():
            v = sec.get(kk, copy.deepcopy(key.default))
            if isinstance(v, int) and not isinstance(v, bool) and key.check(float(v)) \
                    and not key.check(v):
                v = float(v)
            if not key.check(v):
                raise _bad_value((k, kk), v, key.expect, origins, source)
            if isinstance(v, tuple):
                v = list(v)
            res[kk] = v
        out[k] = res

    if out["name"] is None:  # a dict built in code, not loaded from a file
        out["name"] = "run"
    task = out["task"]
    # open sections -------------------------------------------------------------------------
    model = cfg.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("NAME"), str):
        raise _bad_value(("model",), model, "a mapping with a NAME key (PointTransformer | "
                         "PartSegModel | PointMAE)", origins, source)
    model = dict(model)
    peft = cfg.get("peft")
    if peft is None:
        peft = {"NAME": "full"}
    if not isinstance(peft, dict) or not isinstance(peft.get("NAME"), str):
        raise _bad_value(("peft",), peft, "a mapping with a NAME key (full | linear | lora | clora "
                         "| adapter | prompt | bitfit)", origins, source)
    peft = dict(peft)
    # One BatchNorm policy: model.frozen_bn (the engine applies it after model.train()) and the
    # PEFT method's frozen_bn (which decides the BN buffers stored in adapter files) must agree.
    fb_model, fb_peft = model.get("frozen_bn"), peft.get("frozen_bn")
    if fb_model is not None and fb_peft is not None and fb_model != fb_peft:
        raise ConfigError(f"model.frozen_bn={fb_model!r} ({_where(origins, ('model', 'frozen_bn'), source)})"
                          f" and peft.frozen_bn={fb_peft!r} "
                          f"({_where(origins, ('peft', 'frozen_bn'), source)}) disagree; set only "
                          f"model.frozen_bn")
    # default "train" = the references (their frozen patch encoder's BN runs in train mode, its
    # statistics drift to the downstream data); "eval" is the strict switch
    fb = fb_model if fb_model is not None else (fb_peft if fb_peft is not None
                                                else DEFAULT_FROZEN_BN)
    if fb not in ("eval", "train"):
        raise _bad_value(("model", "frozen_bn"), fb, "eval or train", origins, source)
    model["frozen_bn"] = fb
    if task != "pretrain":
        peft["frozen_bn"] = fb
    out["model"] = model
    out["peft"] = peft

    ds = cfg.get("dataset")
    if not isinstance(ds, dict) or "train" not in ds:
        raise _bad_value(("dataset",), ds, "a mapping with at least a 'train' split", origins, source)
    for split in ds:
        if split not in DATASET_SPLIT_KEYS:
            raise _unknown(("dataset", split), DATASET_SPLIT_KEYS, origins, source, " of 'dataset'")
    out_ds = {}
    for split, sec in ds.items():
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise _bad_value(("dataset", split), sec, "a mapping", origins, source)
        sec = dict(sec)
        if "from_train" in sec:
            if split != "val":
                raise _unknown(("dataset", split, "from_train"), [], origins, source,
                               f" (from_train is only allowed in dataset.val)")
            ft = sec["from_train"]
            if not (_is_num(ft) and 0 < ft < 1) or set(sec) != {"from_train"}:
                raise _bad_value(("dataset", "val"), sec, "{from_train: FRACTION} with 0 < "
                                 "FRACTION < 1 and no other key", origins, source)
        elif not isinstance(sec.get("NAME"), str):
            raise _bad_value(("dataset", split), sec, "a mapping with a NAME key", origins, source)
        out_ds[split] = sec
    out["dataset"] = out_ds

    # cross-field rules ---------------------------------------------------------------------
    if task in ("classification", "partseg"):
        if out["train"]["select_on_test"]:
            if "test" not in out_ds:
                raise ConfigError(f"train.select_on_test is true but dataset.test is missing in "
                                  f"{source}: add the test split (it is evaluated every epoch)")
            if "val" in out_ds:
                raise ConfigError(f"dataset.val in {_where(origins, ('dataset', 'val'), source)} "
                                  f"is unused with train.select_on_test: true (the best epoch is "
                                  f"picked on dataset.test); remove it or set "
                                  f"train.select_on_test=false")
        elif "val" not in out_ds:
            raise ConfigError(f"train.select_on_test is false but dataset.val is missing in "
                              f"{source}: add a validation split, e.g. dataset.val: "
                              f"{{from_train: 0.1}}")
    if out["eval"]["vote_passes"] > 1 and not out["eval"]["vote"]:
        raise ConfigError(f"eval.vote_passes={out['eval']['vote_passes']} in "
                          f"{_where(origins, ('eval', 'vote_passes'), source)} needs eval.vote=10 "
                          f"(passes of what?); set eval.vote=10 or use --vote-passes, which sets both")
    if out["train"]["pretrain_select"] != "last" and task != "pretrain":
        raise ConfigError(f"train.pretrain_select={out['train']['pretrain_select']!r} in "
                          f"{_where(origins, ('train', 'pretrain_select'), source)} applies to "
                          f"task: pretrain only (this config is task: {task})")
    if out["eval"]["vote"] and task != "classification":
        raise ConfigError(f"eval.vote={out['eval']['vote']} in "
                          f"{_where(origins, ('eval', 'vote'), source)}: voting is defined for "
                          f"classification only")
    if task == "pretrain" and out["peft"]["NAME"] != "full":
        raise ConfigError(f"peft.NAME={out['peft']['NAME']!r} with task: pretrain in "
                          f"{_where(origins, ('peft', 'NAME'), source)}: pre-training trains the "
                          f"whole model; use peft: {{NAME: full}}")
    if check_library:
        _validate_library_sections(out, origins, source)
    return out


def _signature_keys(fn: Callable) -> tuple[set[str], bool]:
    """Named parameters of ``fn`` (minus self / positional-only) and whether it takes **kwargs."""
    sig = inspect.signature(fn)
    names, var_kw = set(), False
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) \
                and name != "self":
            names.add(name)
    return names, var_kw


def _check_against(section: dict, path: Path_, allowed: set[str], origins: Origins | None,
                   source: str, what: str) -> None:
    for k in section:
        if k not in allowed:
            raise _unknown(path + (k,), allowed, origins, source, f" of {what}")


MODEL_NAMES = ("PointTransformer", "PartSegModel", "PointMAE")


def _model_class(name: str) -> Any:
    """The model class a ``model.NAME`` selects (None when unknown)."""
    if name not in MODEL_NAMES:
        return None
    import clora3d.models as models
    return getattr(models, name, None)


def _dataset_class(name: str) -> Any:
    """The dataset class a ``dataset.<split>.NAME`` selects (None when unknown)."""
    import clora3d.data as data
    registry = getattr(data, "DATASETS", None)
    if isinstance(registry, Mapping):
        return registry.get(name)
    cls = getattr(data, name, None)
    return cls if inspect.isclass(cls) else None


def _peft_allowed_keys(name: str) -> set[str] | None | bool:
    """Option names of PEFT method ``name``; False when unknown, None when not introspectable."""
    import clora3d.peft as peft
    defaults = getattr(peft, "DEFAULTS", None)
    if not isinstance(defaults, Mapping):
        return None
    if name not in defaults:
        return False
    return set(defaults[name]) | set(getattr(peft, "COMMON_DEFAULTS", {}))


def _validate_library_sections(cfg: dict, origins: Origins | None, source: str) -> None:
    """Check model / peft / dataset keys against the constructors their NAME selects."""
    m = cfg["model"]
    cls = _model_class(m["NAME"])
    if cls is None:
        raise _bad_value(("model", "NAME"), m["NAME"], f"one of {list(MODEL_NAMES)}",
                         origins, source)
    names, var_kw = _signature_keys(cls)
    if not var_kw:
        _check_against(m, ("model",), names | set(MODEL_ENGINE_KEYS), origins, source,
                       f"model {m['NAME']}")

    p = cfg["peft"]
    allowed = _peft_allowed_keys(p["NAME"])
    if allowed is False:
        raise _bad_value(("peft", "NAME"), p["NAME"], "a known PEFT method (full | linear | lora "
                         "| clora | adapter | prompt | bitfit)", origins, source)
    if allowed is not None:
        _check_against(p, ("peft",), set(allowed) | {"NAME"}, origins, source,
                       f"peft method {p['NAME']}")

    from clora3d.data import build_transforms
    try:
        build_transforms(cfg["data"]["train_transforms"])
    except ConfigError as e:
        raise ConfigError(f"data.train_transforms in "
                          f"{_where(origins, ('data', 'train_transforms'), source)}: {e}") from None

    for split, sec in cfg["dataset"].items():
        if "from_train" in sec:
            continue
        dcls = _dataset_class(sec["NAME"])
        if dcls is None:
            raise _bad_value(("dataset", split, "NAME"), sec["NAME"], "a dataset class of "
                             "clora3d.data (ModelNet40 | ModelNetFewShot | ScanObjectNN | "
                             "ShapeNetPart | ShapeNet55 ...)", origins, source)
        names, var_kw = _signature_keys(dcls)
        if not var_kw:
            _check_against(sec, ("dataset", split), names | {"NAME", "split"}, origins, source,
                           f"dataset {sec['NAME']}")


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def dump_config(cfg: Mapping) -> str:
    """The resolved config as YAML text (keys in schema order)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Mapping, path: str | Path) -> None:
    """Write the resolved config to ``path`` as YAML."""
    from clora3d.storage import atomic_write_bytes

    atomic_write_bytes(Path(path), dump_config(cfg).encode("utf-8"), what="config")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj

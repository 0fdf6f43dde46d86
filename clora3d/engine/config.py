"""YAML configs with ``_base_`` inheritance, ``--set`` overrides, composition by task and method.

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
* :func:`compose_config` builds the same kind of merge from ``cfgs/_base_/`` by task, method,
  protocol and model names instead of a file.
* The merged config is validated once by the typed configs (:mod:`clora3d.engine.run_config`
  dispatches each section to the dataclass declared next to its code); the loader tracks which file
  (or ``--set``) set every key, so an unknown key or a bad value is one
  :class:`~clora3d.errors.ConfigError` naming the key, the value and that file.

The module is a little over 400 lines: loading and composition share the merge and the origin
bookkeeping, and splitting them would put one data structure's rules in two files.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from clora3d.errors import ConfigError
from clora3d.schema import short_repr as _short_repr
from clora3d.storage import to_plain

__all__ = [
    "load_config",
    "compose_config",
    "composition_choices",
    "validate_config",
    "apply_overrides",
    "parse_override",
    "dump_config",
    "save_config",
    "default_point_all",
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
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text_or_stream: Any) -> Any:
    return yaml.load(text_or_stream, Loader=_Loader)


REPLACE_KEY = "_replace_"


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
            raise ConfigError(
                f"config {path} expands to more than {MAX_CONFIG_VALUES:,} values "
                "(YAML aliases nested in aliases?); write the values out"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"config {path} is nested more than {MAX_CONFIG_DEPTH} levels deep; "
                "a config is a few levels of mappings"
            )
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)


def _composed_pair_hint(path: Path) -> str:
    """For a missing ``cfgs/<task>[_<protocol>]/<method>.yaml`` whose task and method are layers
    beside it: the ``--task/--peft`` command that builds that config (the one-file-per-pair layout
    of earlier releases was retired for composition)."""
    base = path.parent.parent / "_base_"
    folder, method = path.parent.name, path.stem
    if path.suffix != ".yaml" or not (base / "peft" / f"{method}.yaml").is_file():
        return ""
    task, protocol = folder, None
    if not (base / "tasks" / f"{task}.yaml").is_file():
        protocols = sorted(f.stem for f in (base / "protocols").glob("*.yaml"))
        match = [
            p
            for p in protocols
            if folder.endswith(f"_{p}") and (base / "tasks" / f"{folder[: -len(p) - 1]}.yaml").is_file()
        ]
        if not match:
            return ""
        task, protocol = folder[: -len(match[0]) - 1], match[0]
    args = f"--task {task} --peft {method}" + (f" --protocol {protocol}" if protocol else "")
    return f"; that task x method pair is composed from the layers in {base}: use `{args}` instead of --cfg"


def _read_yaml(path: Path, referenced_from: str | None) -> Any:
    where = f" (named in _base_ of {referenced_from})" if referenced_from else ""
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory, expected a YAML file{where}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{where}{'' if referenced_from else _composed_pair_hint(path)}")
    if referenced_from and path.suffix.lower() not in (".yaml", ".yml"):
        # never read (nor quote in an error) a file that is not a config, e.g. a system file
        raise ConfigError(
            f"_base_ in {referenced_from} names {path}, which is not a .yaml/.yml config file; it was not read"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = _yaml_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0][:200]
        raise ConfigError(f"invalid YAML in {path}{loc}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {path} is not UTF-8 text (invalid byte at position {e.start}); save it as UTF-8"
        ) from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply to read; a config is a few levels of mappings") from None
    _check_size(data, path)
    return data


def _merge(base: dict, base_org: Origins, child: dict, child_org: Origins, prefix: Path_ = ()) -> None:
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
        raise ConfigError(f"config file {path} must contain a mapping at the top level, got {type(data).__name__}")
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
        raise ConfigError(f"bad override {text!r}: the key must be dot-separated names, e.g. optimizer.lr=1e-3")
    if BASE_KEY in parts:
        raise ConfigError(f"bad override {text!r}: _base_ cannot be set from the command line")
    try:
        value = _yaml_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"bad override {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None
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
    return {
        kind: sorted(f.stem for f in (base / folder).glob("*.yaml"))
        for kind, folder in (("task", "tasks"), ("peft", "peft"), ("model", "models"), ("protocol", "protocols"))
    }


def _compose(
    task: str, peft: str, model: str | None, protocol: str | None, root: str | Path | None
) -> tuple[dict, Origins, str]:
    """Merge ``_base_/{recipe, models/<model>, tasks/<task>, protocols/<protocol>, peft/<peft>}.yaml``
    in that order (deep merge, later wins, as a ``_base_`` list); returns (cfg, origins, source)."""
    root = Path(root if root is not None else default_cfgs_root())
    choices = composition_choices(root)
    source = (
        f"--task {task} --peft {peft}"
        + (f" --protocol {protocol}" if protocol else "")
        + (f" --model {model}" if model else "")
    )
    for kind, value in (("task", task), ("peft", peft), ("model", model), ("protocol", protocol)):
        if value is not None and value not in choices[kind]:
            close = difflib.get_close_matches(str(value), choices[kind], n=1)
            did = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown --{kind} {value!r}{did} (available in {root / BASE_KEY}: "
                f"{', '.join(choices[kind]) or 'none'})"
            )
    if model == DEFAULT_MODEL:  # the model of the shipped pair files and of a task that names its own
        model = None
    base = root.resolve() / BASE_KEY
    name = "_".join([task] + ([protocol] if protocol else []) + [peft])
    protocol_file = [base / "protocols" / f"{protocol}.yaml"] if protocol else []
    # a pair whose reference settings go beyond the layers keeps a file (cfgs/README.md): the pair's
    # file for this protocol, else the pair's file with the protocol on top, else the layers
    pair = root.resolve() / f"{task}_{protocol}" / f"{peft}.yaml" if protocol else None
    if pair is not None and pair.is_file():
        files = [pair]
    elif (root.resolve() / task / f"{peft}.yaml").is_file():
        pair = root.resolve() / task / f"{peft}.yaml"
        files = [pair] + protocol_file
    else:
        files = []
    if files and model is not None:
        raise ConfigError(
            f"--model {model}: {pair} fixes the model of {task} x {peft}; drop --model, or "
            f"use --cfg {pair} --set model.KEY=VALUE"
        )
    if not files:
        files = _layers(base, task, model) + protocol_file + [base / "peft" / f"{peft}.yaml"]
    cfg: dict = {}
    origins: Origins = {}
    for f in files:
        sub, sub_org = _load_file(f, referenced_from=source)
        _merge(cfg, origins, sub, sub_org)
    if cfg.get("name") != name:
        cfg["name"] = name
        origins[("name",)] = source
    return cfg, origins, source


def _layers(base: Path, task: str, model: str | None) -> list[Path]:
    """recipe, the model (unless the task names its own), the task."""
    task_file = base / "tasks" / f"{task}.yaml"
    task_cfg, _ = _load_file(task_file)
    own_model = isinstance(task_cfg.get("model"), dict) and "NAME" in task_cfg["model"]
    if own_model and model is not None:
        raise ConfigError(
            f"--model {model}: task {task!r} defines its own model "
            f"({task_cfg['model']['NAME']}) in {task_file}; drop --model, or write a config "
            f"file with _base_ and set the model keys there"
        )
    files = [base / "recipe.yaml"]
    if not own_model:
        files.append(base / "models" / f"{model or DEFAULT_MODEL}.yaml")
    return files + [task_file]


def compose_config(
    task: str,
    peft: str,
    *,
    model: str | None = None,
    protocol: str | None = None,
    overrides: Iterable[str] = (),
    root: str | Path | None = None,
) -> dict:
    """The run config of ``task`` x ``peft`` (``tools/train.py --task modelnet40 --peft clora``), validated.

    Merges ``cfgs/_base_/recipe.yaml``, ``models/<model>.yaml`` (default ``vit_s``; skipped for a task
    whose file names its own ``model.NAME``, e.g. shapenetpart, which refuses another ``model``),
    ``tasks/<task>.yaml``,
    ``protocols/<protocol>.yaml`` (optional, e.g. ``rotate``) and ``peft/<peft>.yaml`` in that order, then
    ``overrides`` (``--set``). A pair whose reference settings go beyond these layers keeps a file
    ``cfgs/<task>/<peft>.yaml`` (e.g. DAPT's per-task bottleneck), which bases on the same layers; when
    it exists it is used instead, with the protocol merged on top (or ``cfgs/<task>_<protocol>/<peft>.yaml``
    when that exists). The run name is ``<task>_<peft>``
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
def default_point_all(npoints: int) -> int:
    """:func:`clora3d.data.config.default_point_all` (the trainer and tools import it from here)."""
    from clora3d.data.config import default_point_all as point_all

    return point_all(npoints)


def _where(origins: Origins | None, p: Path_, source: str) -> str:
    """The file (or ``--set``) that set key path ``p`` (its closest set ancestor), else ``source``."""
    if origins:
        for i in range(len(p), 0, -1):
            if p[:i] in origins:
                return origins[p[:i]]
    return source


def validate_config(cfg: Mapping, *, origins: Origins | None = None, source: str = "<config>") -> dict:
    """Fill defaults and validate ``cfg`` (idempotent); returns a new plain dict.

    Dispatches to the typed configs (:func:`clora3d.engine.run_config.validate_run`: the trainer's
    sections, and the model / peft / dataset / data / optimizer / scheduler configs declared next to
    their code); ``origins`` (key path -> file or ``--set``) name where a bad key came from.
    """
    from clora3d.engine.run_config import validate_run

    return validate_run(cfg, where=lambda p: _where(origins, p, source), source=source)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def dump_config(cfg: Mapping) -> str:
    """The resolved config as YAML text (keys in the order of the typed configs)."""
    return yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Mapping, path: str | Path) -> None:
    """Write the resolved config to ``path`` as YAML."""
    from clora3d.storage import atomic_write_bytes

    atomic_write_bytes(Path(path), dump_config(cfg).encode("utf-8"), what="config")

"""A small validator for dataclass configs: one typed config class per buildable thing.

``validate(cls, mapping)`` builds the dataclass ``cls`` from a plain mapping (a YAML section) and
raises ONE :class:`~clora3d.errors.ConfigError` for the first problem, naming the dotted key, the
bad value, what was expected and where the value was set (``where(path)``, supplied by the caller:
the YAML loader knows which file or ``--set`` set each key)::

    @dataclass
    class LoraConfig:
        rank: int = spec(8, gt=0, doc="rank r of the update")
        targets: list[str] = spec(factory=lambda: ["qkv"], doc="block linears to adapt")

    validate(LoraConfig, {"rank": 0}, path=("peft",), where=lambda p: "cfgs/x.yaml")
    # ConfigError: config key 'peft.rank' in cfgs/x.yaml must be a positive integer, got 0

Supported field types: ``bool``, ``int``, ``float`` (an int is accepted and converted; a bool is
never a number), ``str``, ``Literal[...]``, ``Optional[X]`` / ``X | None``, ``list[X]``,
``tuple[X, ...]`` / ``tuple[X, Y]``, ``dict[str, X]``, nested dataclasses and ``Any``. Bounds and
docs come from :func:`spec`. Unknown keys are errors (with a "did you mean"), missing required fields
too. ``__post_init__`` may raise ``ValueError`` (or :class:`Invalid` naming the field) for
cross-field rules; it becomes the same one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Union

from clora3d.errors import ConfigError

__all__ = ["spec", "validate", "to_dict", "field_docs", "FieldDoc", "Invalid", "short_repr"]


class Invalid(ValueError):
    """Raised by a config's ``__post_init__``: field ``key`` (a name or dotted sub-path) holds ``value``
    but must be ``expect``; ``validate`` turns it into the usual message with the key's origin."""

    def __init__(self, key: str, expect: str, value: Any) -> None:
        super().__init__(f"{key} must be {expect}")
        self.key, self.expect, self.value = key, expect, value


def spec(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], bool] | None = None,
    expect: str | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with bounds (applied to a non-None value), an extra ``check`` (``expect`` says
    what it requires, for the message) and a one-line ``doc``. No default and no factory: required."""
    if check is not None and expect is None:
        raise TypeError("spec(check=...) needs expect='what the check requires'")
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "check": check, "expect": expect, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr`` bounded in time and length (a value may be a huge aliased YAML structure)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 8, 120, 120
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


# ------------------------------------------------------------------------------------------------
# what a type expects, in words
# ------------------------------------------------------------------------------------------------
_PLURAL = {
    "an integer": "integers",
    "a number": "numbers",
    "a string": "strings",
    "true or false": "booleans",
    "a mapping": "mappings",
}


def _literal_word(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return str(v)


def _bounds(meta: Mapping) -> str:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    lo = None if ge is None and gt is None else ("[" if ge is not None else "(", ge if ge is not None else gt)
    hi = None if le is None and lt is None else ("]" if le is not None else ")", le if le is not None else lt)
    if lo and hi:
        return f" in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f" >= {lo[1]:g}" if lo[0] == "[" else f" > {lo[1]:g}"
    if hi:
        return f" <= {hi[1]:g}" if hi[0] == "]" else f" < {hi[1]:g}"
    return ""


def _item_meta(meta: Mapping) -> dict:
    """The bounds of a list/dict field apply to its items."""
    return {k: meta.get(k) for k in ("ge", "gt", "le", "lt")}


def describe(tp: Any, meta: Mapping | None = None) -> str:
    """What ``tp`` (with the bounds of ``meta``) expects, e.g. 'a positive integer or null'."""
    meta = meta or {}
    if meta.get("expect"):
        return meta["expect"]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [describe(a, meta) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        noun = "integer" if tp is int else "number"
        b = _bounds(meta)
        if b == " > 0":
            return f"a positive {noun}"
        return f"{'an' if tp is int else 'a'} {noun}{b}"
    if tp is str:
        return "a string"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(_literal_word(a) for a in args)
    if origin is list or (origin is tuple and args[-1:] == (Ellipsis,)):
        inner = describe(args[0], _item_meta(meta)) if args else "any value"
        return f"a list of {_PLURAL.get(inner, f'({inner})')}"
    if origin is tuple:
        return f"a list of {len(args)} items ({', '.join(describe(a) for a in args)})"
    if origin is dict or tp is dict:
        inner = describe(args[1], _item_meta(meta)) if args else "any value"
        return f"a mapping of names to {_PLURAL.get(inner, f'({inner})')}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
class _Bad(Exception):
    """Internal: ``value`` at ``path`` does not match; ``expect`` in words."""

    def __init__(self, path: tuple, value: Any, expect: str) -> None:
        self.path, self.value, self.expect = path, value, expect


def _bad_error(path: tuple, value: Any, expect: str, where: Callable[[tuple], str]) -> ConfigError:
    return ConfigError(f"config key '{_dotted(path)}' in {where(path)} must be {expect}, got {short_repr(value)}")


def _convert(value: Any, tp: Any, path: tuple, where: Callable[[tuple], str], meta: Mapping) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            try:
                return _convert(value, a, path, where, meta)
            except _Bad as e:
                if len(options) == 1 and e.path != path:
                    raise  # X | None and an item of X is wrong: name the item
        raise _Bad(path, value, describe(tp, meta))
    bounds = [meta.get(k) for k in ("ge", "gt", "le", "lt")]
    if tp in (bool, int, float, str) or origin is Literal:
        if tp in (int, float):
            ok = not isinstance(value, bool) and (
                isinstance(value, int) or (tp is float and isinstance(value, float) and math.isfinite(value))
            )
            ge, gt, le, lt = bounds
            ok = ok and not (
                (ge is not None and value < ge)
                or (gt is not None and value <= gt)
                or (le is not None and value > le)
                or (lt is not None and value >= lt)
            )
        elif origin is Literal:
            ok = any(value == a and type(value) is type(a) for a in args)
        else:
            ok = isinstance(value, tp)
        if not ok:
            raise _Bad(path, value, describe(tp, meta))
        return tp(value) if tp in (int, float) else value
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Bad(path, value, describe(tp, meta))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Bad(path, value, describe(tp, meta))
            return tuple(
                _convert(v, a, path + (i,), where, _item_meta(meta)) for i, (v, a) in enumerate(zip(value, args))
            )
        item = args[0] if args else Any
        out = [_convert(v, item, path + (i,), where, _item_meta(meta)) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Bad(path, value, describe(tp, meta))
        item = args[1] if args else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Bad(path + (k,), k, "a string key")
            out[k] = _convert(v, item, path + (k,), where, _item_meta(meta))
        return out
    if dataclasses.is_dataclass(tp):
        return validate(tp, value, path=path, where=where)
    raise TypeError(f"clora3d.schema: unsupported field type {tp!r} at {_dotted(path)}")


def validate(
    cls: type, data: Mapping, *, path: tuple[str, ...] = (), where: Callable[[tuple[str, ...]], str] | None = None
) -> Any:
    """Build the dataclass ``cls`` from ``data``; every problem is ONE ConfigError naming the dotted key
    (``path`` + field), the value, what was expected and ``where(key_path)``."""
    where = where or (lambda p: "<config>")
    path = tuple(path)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = to_dict(data)
    if not isinstance(data, Mapping):
        if path:
            raise _bad_error(path, data, "a mapping", where)
        raise ConfigError(f"config in {where(path)} must be a mapping, got {short_repr(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            kp = path + (key,)
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            did = f"; did you mean '{close[0]}'?" if close else ""
            hint = f" of '{_dotted(path)}'" if path else " at the top level"
            raise ConfigError(
                f"unknown config key '{_dotted(kp)}' in {where(kp)}{did} "
                f"(known keys{hint}: {', '.join(sorted(fields))})"
            )
    kwargs = {}
    for name, f in fields.items():
        kp = path + (name,)
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(
                    f"config key '{_dotted(kp)}' in {where(kp)} is required (no default): set it to "
                    f"{describe(hints[name], f.metadata)}"
                )
            continue
        try:
            value = _convert(data[name], hints[name], kp, where, f.metadata)
            check = f.metadata.get("check")
            if check is not None and value is not None and not check(value):
                raise _Bad(kp, value, f.metadata["expect"])
        except _Bad as e:
            raise _bad_error(e.path, e.value, e.expect, where) from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except Invalid as e:
        kp = path + tuple(e.key.split("."))
        raise _bad_error(kp, e.value, e.expect, where) from None
    except ValueError as e:
        head = f"config '{_dotted(path)}'" if path else "config"
        raise ConfigError(f"{head} in {where(path)}: {e}") from None


# ------------------------------------------------------------------------------------------------
# back to plain data; documentation
# ------------------------------------------------------------------------------------------------
def to_dict(instance: Any) -> Any:
    """The dataclass ``instance`` as plain nested dicts/lists (tuples become lists), JSON/YAML-safe
    (:func:`clora3d.storage.to_plain`, the one converter)."""
    from clora3d.storage import to_plain

    return to_plain(instance)


@dataclass(frozen=True)
class FieldDoc:
    """One documented field: dotted name, expected value in words, default (``MISSING``: required), doc."""

    name: str
    expect: str
    default: Any
    doc: str

    @property
    def required(self) -> bool:
        return self.default is MISSING


def field_docs(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every field of ``cls`` in declaration order, nested dataclasses flattened to dotted names
    (for generated reference tables)."""
    hints = typing.get_type_hints(cls)
    out: list[FieldDoc] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(field_docs(tp, name + "."))
            continue
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else MISSING)
        )
        out.append(FieldDoc(name, describe(tp, f.metadata), to_dict(default), f.metadata.get("doc", "")))
    return out

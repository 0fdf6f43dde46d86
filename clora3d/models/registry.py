"""Model variants by name: one registry of model classes and their presets, one factory.

A model class registers itself with its presets (named sizes) next to its code::

    @register_model("PointTransformer", presets={"vit_s": dict(trans_dim=384, ...), "tiny": ...})
    class PointTransformer(PresetMixin, nn.Module): ...

and every consumer asks the registry: :func:`build_model` (config dict -> model), :func:`model_names`,
:func:`model_class`, :func:`model_presets`, :func:`model_keys` (what a config may set, for the config
validator) and ``Class.from_preset(name, **overrides)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from clora3d.errors import ConfigError

__all__ = ["register_model", "model_names", "model_class", "model_presets", "model_keys", "build_model", "PresetMixin"]

M = TypeVar("M", bound=type)

_CLASSES: dict[str, type[nn.Module]] = {}
#: the one preset table: model name -> preset name -> constructor arguments
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
#: config keys that are not constructor arguments
_SPECIAL_KEYS = frozenset({"NAME", "preset"})


def register_model(name: str, *, presets: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[M], M]:
    """Class decorator: make ``cls`` buildable as ``{"NAME": name, "preset": ..., **kwargs}``.
    Every preset's keys must be constructor arguments (checked here, at import)."""

    def deco(cls: M) -> M:
        if name in _CLASSES and _CLASSES[name] is not cls:
            raise ValueError(f"register_model: the name {name!r} is taken by {_CLASSES[name].__qualname__}")
        args = _constructor_args(cls)
        table: dict[str, dict[str, Any]] = {}
        for preset, kwargs in (presets or {}).items():
            bad = sorted(set(kwargs) - args)
            if bad:
                raise ValueError(
                    f"register_model: preset {name}/{preset} sets {bad}, which "
                    f"{cls.__qualname__}.__init__ does not take"
                )
            table[preset] = dict(kwargs)
        _CLASSES[name] = cls
        _PRESETS[name] = table
        return cls

    return deco


def _constructor_args(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _registered() -> dict[str, type[nn.Module]]:
    import clora3d.models  # noqa: F401  (importing the package registers its model classes)

    return _CLASSES


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted (what ``model.NAME`` may be)."""
    return tuple(sorted(_registered()))


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; an unknown name is a ConfigError listing the known ones."""
    classes = _registered()
    if not isinstance(name, str) or name not in classes:
        raise ConfigError(f"model.NAME must be one of {sorted(classes)}, got {name!r}")
    return classes[name]


def model_presets(name: str) -> dict[str, dict[str, Any]]:
    """``{preset: constructor arguments}`` of model ``name`` (a copy)."""
    model_class(name)
    return {p: dict(kw) for p, kw in _PRESETS[name].items()}


def model_keys(name: str) -> frozenset[str]:
    """The keys a model config of ``name`` may hold: its constructor arguments, ``NAME`` and ``preset``."""
    return frozenset(_constructor_args(model_class(name))) | _SPECIAL_KEYS


def _name_of(cls: type) -> str:
    """The registered name of ``cls`` or of its nearest registered base class."""
    for klass in cls.__mro__:
        for name, registered in _CLASSES.items():
            if registered is klass:
                return name
    raise ValueError(f"{cls.__qualname__} is not a registered model (use @register_model)")


def _preset_kwargs(name: str, preset: str) -> dict[str, Any]:
    presets = _PRESETS[name]
    if preset not in presets:
        raise ConfigError(f"model.preset {preset!r} is not a {name} preset; valid presets: {sorted(presets)}")
    return dict(presets[preset])


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """Build a model from ``{"NAME": ..., "preset": ..., **constructor_args}``: the preset's arguments,
    overridden by the others (lists become tuples). An unknown NAME, preset or key, or arguments the
    constructor refuses, are one ConfigError naming them."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    name = cfg.get("NAME")
    cls = model_class(name)
    allowed = model_keys(name)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown} for {name}; valid keys: {sorted(allowed)}")
    kwargs = _preset_kwargs(name, cfg["preset"]) if cfg.get("preset") is not None else {}
    for key, value in cfg.items():
        if key not in _SPECIAL_KEYS:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {name} from config {dict(cfg)}: {exc}") from None


class PresetMixin:
    """Gives a registered model class ``from_preset``."""

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Any:
        """Build from one of the class's registered presets (see :func:`model_presets`); keyword
        arguments override it."""
        kwargs = _preset_kwargs(_name_of(cls), name)
        kwargs.update(overrides)
        return cls(**kwargs)

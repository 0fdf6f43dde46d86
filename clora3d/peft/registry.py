"""The one registry of PEFT methods: name -> (config class, method class).

``register_method`` (a class decorator on each method) pairs the method's ``name`` with its
``config_class``; the config loader asks :func:`config_class` for the dataclass that validates the
``peft`` section, and :func:`apply_peft` builds the method from a validated config (or validates a
plain mapping with a ``NAME`` key first).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from clora3d.errors import ConfigError
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig
from clora3d.schema import short_repr, validate

#: Every registered method class by name.
METHODS: dict[str, type[PeftMethod]] = {}


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Class decorator: register ``cls`` under ``cls.name`` with its ``cls.config_class``."""
    if not cls.name or not isinstance(cls.config_class, type) or not issubclass(cls.config_class, PeftConfig):
        raise TypeError(f"{cls.__name__}: a registered PEFT method needs a name and a PeftConfig config_class")
    owner = next((m for m in METHODS.values() if m.config_class is cls.config_class and m.name != cls.name), None)
    if owner is not None:
        raise TypeError(f"{cls.__name__}: config class {cls.config_class.__name__} is already {owner.name!r}'s")
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(METHODS)


def method_class(name: str) -> type[PeftMethod]:
    """The method class registered as ``name`` (ConfigError with a suggestion when unknown)."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=1)
        did = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown peft method NAME {short_repr(name)}{did}; known: {method_names()}")
    return METHODS[name]


def config_class(name: str) -> type[PeftConfig]:
    """The config dataclass of method ``name`` (its fields are the method's options)."""
    return method_class(name).config_class


def name_of(config: PeftConfig) -> str:
    """The method name a config instance belongs to."""
    for name, cls in METHODS.items():
        if type(config) is cls.config_class:
            return name
    raise TypeError(f"{type(config).__name__} is not the config class of a registered PEFT method")


def build_config(
    cfg: Mapping[str, Any], *, path: tuple[str, ...] = ("peft",), where: Callable[[tuple[str, ...]], str] | None = None
) -> PeftConfig:
    """Validate a ``{"NAME": ..., **options}`` mapping into the method's config instance."""
    if not isinstance(cfg, Mapping) or "NAME" not in cfg:
        raise ConfigError(f"peft config must be a mapping with a NAME key in {method_names()}, got {short_repr(cfg)}")
    cls = config_class(cfg["NAME"])
    return validate(cls, {k: v for k, v in cfg.items() if k != "NAME"}, path=path, where=where)


def apply_peft(
    model: nn.Module, cfg: PeftConfig | Mapping[str, Any], *, where: Callable[[tuple[str, ...]], str] | None = None
) -> PeftMethod:
    """Apply a method to ``model`` (in place) and return it: ``cfg`` is a validated config instance, or
    a mapping ``{"NAME": ..., **options}`` validated here (``where`` names its origin in errors)."""
    if not isinstance(cfg, PeftConfig):
        cfg = build_config(cfg, where=where)
    return METHODS[name_of(cfg)](model, cfg)

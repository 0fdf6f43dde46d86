"""What every PEFT config shares: :class:`PeftConfig` (the options all methods accept), the ``layers``
field, the ``targets`` check, and ``{option: default}`` tables for the config loader and the docs.

Each method's config dataclass (e.g. ``LoRAConfig``) sits next to the method in its own file and
subclasses :class:`PeftConfig`; :func:`clora3d.schema.validate` builds it from the ``peft`` section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from clora3d.schema import Invalid, spec, to_dict

#: Block-relative module paths of the linear layers methods may target.
BLOCK_LINEARS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def _names_ok(v: list[str]) -> bool:
    return all(e != "" for e in v)


def _layers_ok(v: list[int]) -> bool:
    return len(v) > 0 and len(set(v)) == len(v)


def layers_spec(doc: str = "block indices; null = every block") -> Any:
    """The ``layers`` field: null (every block) or a non-empty list of distinct block indices; the range
    is checked against the model's depth when the method is built (:meth:`PeftMethod.resolve_layers`)."""
    return spec(
        None, ge=0, check=_layers_ok, expect="a non-empty list of distinct block indices (>= 0) or null", doc=doc
    )


def normalize_targets(targets: Any, allowed: Iterable[str], key: str = "targets") -> list[str]:
    """``targets`` checked against ``allowed`` (non-empty, no duplicates) in the order of ``allowed``;
    for a config's ``__post_init__``."""
    allowed = list(allowed)
    if not targets or len(set(targets)) != len(targets) or any(t not in allowed for t in targets):
        raise Invalid(key, f"a non-empty list of distinct names from {allowed}", targets)
    return [t for t in allowed if t in targets]


@dataclass
class PeftConfig:
    """Options every method accepts; each method's config subclasses it (and is registered with it)."""

    extra_trainable: list[str] = spec(
        factory=list,
        check=_names_ok,
        expect="a list of parameter/module names",
        doc="exact parameter names, or module names (all parameters below name + '.'), trained in addition to "
        "the method's own set; never substring matching: an entry that names nothing is an error",
    )
    frozen_bn: Literal["train", "eval"] = spec(
        "train",
        doc="frozen BatchNorm layers: train (the references; their statistics drift and are saved in "
        "the adapter) | eval (strict: running statistics fixed; use method.train())",
    )


def config_defaults(cls: type[PeftConfig], *, own: bool = True) -> dict[str, Any]:
    """``{option: default}`` of a config class (``own``: without the :class:`PeftConfig` options)."""
    base = {f.name for f in dataclasses.fields(PeftConfig)} if own else set()
    return {
        f.name: to_dict(f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(cls)
        if f.name not in base
    }


#: Options every method accepts, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = config_defaults(PeftConfig, own=False)

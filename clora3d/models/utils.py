"""Small model utilities: BatchNorm statistics policy for frozen modules, the task head's parameters,
the one parameter counter."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

FROZEN_BN_POLICIES = ("eval", "train")


def freeze_bn_stats(model: nn.Module) -> list[str]:
    """Put every BatchNorm whose parameters are all frozen into eval mode; return their names.

    Call it right after ``model.train()`` (which flips every module back to train mode). A
    frozen BatchNorm then normalises with its stored running statistics and does not update
    them, so a frozen backbone stays bit-identical to the pre-trained one. A BatchNorm without
    affine parameters counts as frozen. The reference repos leave these layers in train mode
    (their statistics drift to the downstream data); ``apply_frozen_bn_policy(model, "train")``
    keeps that behaviour.
    """
    frozen: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if all(not p.requires_grad for p in params):
                module.eval()
                frozen.append(name)
    return frozen


def apply_frozen_bn_policy(model: nn.Module, policy: str = "eval") -> list[str]:
    """Apply the config's ``frozen_bn`` policy after ``model.train()``.

    ``"eval"`` (default): frozen BatchNorm layers use and keep their running statistics
    (``freeze_bn_stats``). ``"train"``: reference behaviour, nothing is changed (statistics drift).
    Returns the names of the layers put into eval mode.
    """
    if policy not in FROZEN_BN_POLICIES:
        raise ValueError(f"frozen_bn must be one of {FROZEN_BN_POLICIES}, got {policy!r}")
    if policy == "train":
        return []
    return freeze_bn_stats(model)


def init_args(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A model's ``config``: its constructor's arguments as called, from ``locals()`` taken on the
    first line of ``__init__`` (``self`` and ``__class__`` dropped, sequences as tuples), so that
    ``type(model)(**model.config)`` builds the same architecture and a new argument cannot be
    forgotten in the record. Keys follow the signature (the caller's argument order: Python 3.10's
    ``locals()`` puts arguments that a closure captures last)."""
    names = sys._getframe(1).f_code.co_varnames
    order = {n: i for i, n in enumerate(names)}
    return {
        k: tuple(v) if isinstance(v, (list, tuple)) else v
        for k, v in sorted(arguments.items(), key=lambda kv: order.get(kv[0], len(order)))
        if k not in ("self", "__class__")
    }


def head_parameter_names(model: nn.Module, *, required: bool = False) -> list[str]:
    """Names of the task head's parameters: ``model.head_parameters()`` when the model declares it
    (every clora3d classifier), else the parameters of the modules in ``model.HEAD_PREFIXES``
    (module names ending in '.', as PartSegModel lists them), else none; with ``required`` a model
    that declares neither is a ValueError (a PEFT method must know which head to train)."""
    if hasattr(model, "head_parameters"):
        return [n for n, _ in model.head_parameters()]
    prefixes = getattr(model, "HEAD_PREFIXES", None)
    if prefixes is None:
        if required:
            raise ValueError(
                f"cannot tell the task head of {type(model).__name__}: it has neither head_parameters() nor HEAD_PREFIXES"
            )
        return []
    bad = [p for p in prefixes if not p.endswith(".")]
    if bad:
        raise ValueError(f"{type(model).__name__}.HEAD_PREFIXES must be module names ending in '.', got {bad}")
    return [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]


def head_parameter_ids(model: nn.Module) -> set[int]:
    """``id``s of the parameters :func:`head_parameter_names` names (none when no head is declared)."""
    names = set(head_parameter_names(model))
    return {id(p) for n, p in model.named_parameters() if n in names}


def count_parameters(model: nn.Module, *, trainable_only: bool = False, exclude_head: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm statistics are never counted; a
    parameter shared by several modules is counted once).

    ``trainable_only``: only parameters with ``requires_grad``. ``exclude_head``: without the task
    head (:func:`head_parameter_ids`), as the PEFT papers report backbone parameters.
    """
    head = head_parameter_ids(model) if exclude_head else set()
    return sum(
        p.numel()
        for p in model.parameters()  # parameters() yields a shared one once
        if (p.requires_grad or not trainable_only) and id(p) not in head
    )


class HeadSplitMixin:
    """``head_parameters()`` / ``backbone_parameters()`` of a model from its ``HEAD_PREFIXES`` (module
    names ending in '.'): the task head is every parameter under them, the backbone the rest."""

    HEAD_PREFIXES: tuple[str, ...] = ()

    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Named parameters of the task head (everything under ``HEAD_PREFIXES``)."""
        for name, p in self.named_parameters():
            if self.HEAD_PREFIXES and name.startswith(self.HEAD_PREFIXES):
                yield name, p

    def backbone_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Named parameters of everything except the head."""
        for name, p in self.named_parameters():
            if not (self.HEAD_PREFIXES and name.startswith(self.HEAD_PREFIXES)):
                yield name, p

"""Small model utilities: BatchNorm statistics policy for frozen modules, parameter counting."""
from __future__ import annotations

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


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers excluded), optionally only those with requires_grad.

    Shared parameters are counted once.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel()
    return total

"""Models: grouping, patch encoder, canonical transformer, backbone, heads, MAE, checkpoints.

``build_model(cfg)`` builds one of ``MODEL_CLASSES`` from a config dict::

    {"NAME": "PointTransformer", "preset": "vit_s", "cls_dim": 15}

``NAME`` picks the class, the optional ``preset`` its size (see ``MODEL_PRESETS``), every other key
is a constructor argument (``MODEL_KEYS[NAME]``); an unknown key raises ``ConfigError``.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from clora3d.errors import ConfigError
from clora3d.models.backbone import PRESETS, PointTransformer
from clora3d.models.checkpoint import (LoadReport, load_pretrained, save_point_mae_checkpoint,
                                       to_point_mae_state_dict)
from clora3d.models.encoder import Encoder
from clora3d.models.grouping import Group
from clora3d.models.mae import MAE_PRESETS, MaskTransformer, PointMAE
from clora3d.models.partseg import PARTSEG_PRESETS, PartSegModel
from clora3d.models.transformer import Attention, Block, DropPath, Mlp, TransformerEncoder
from clora3d.models.utils import apply_frozen_bn_policy, count_parameters, freeze_bn_stats

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "PointTransformer": PointTransformer,
    "PartSegModel": PartSegModel,
    "PointMAE": PointMAE,
}
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "PointTransformer": PRESETS,
    "PartSegModel": PARTSEG_PRESETS,
    "PointMAE": MAE_PRESETS,
}
# Valid config keys per model NAME (constructor arguments + NAME + preset), for config validation.
MODEL_KEYS: dict[str, frozenset[str]] = {
    name: frozenset(p for p in inspect.signature(cls.__init__).parameters if p != "self") | {"NAME", "preset"}
    for name, cls in MODEL_CLASSES.items()
}
_SEQUENCE_ARGS = {"encoder_widths", "fetch_idx", "propagation_mlp", "head_widths"}


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """Build a model from ``{"NAME": ..., "preset": ..., **constructor_args}``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    name = cfg.get("NAME")
    if name not in MODEL_CLASSES:
        raise ConfigError(f"model.NAME must be one of {sorted(MODEL_CLASSES)}, got {name!r}")
    unknown = sorted(set(cfg) - MODEL_KEYS[name])
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown} for {name}; valid keys: "
                          f"{sorted(MODEL_KEYS[name])}")
    kwargs: dict[str, Any] = {}
    preset = cfg.get("preset")
    if preset is not None:
        presets = MODEL_PRESETS[name]
        if preset not in presets:
            raise ConfigError(f"model.preset {preset!r} is not a {name} preset; valid presets: {sorted(presets)}")
        kwargs.update(presets[preset])
    for key, value in cfg.items():
        if key in ("NAME", "preset"):
            continue
        kwargs[key] = tuple(value) if key in _SEQUENCE_ARGS and isinstance(value, list) else value
    try:
        return MODEL_CLASSES[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {name} from config {dict(cfg)}: {exc}") from None


__all__ = [
    "PRESETS", "PARTSEG_PRESETS", "MAE_PRESETS", "MODEL_CLASSES", "MODEL_PRESETS", "MODEL_KEYS", "build_model",
    "PointTransformer", "PartSegModel", "PointMAE", "MaskTransformer", "Encoder", "Group", "Attention", "Block",
    "DropPath", "Mlp", "TransformerEncoder", "LoadReport", "load_pretrained", "to_point_mae_state_dict",
    "save_point_mae_checkpoint", "freeze_bn_stats", "apply_frozen_bn_policy", "count_parameters",
]

"""Typed configs of the models: one dataclass per model ``NAME`` (a ``model`` section).

The fields are the constructor's arguments with the same defaults (``tests/test_config_typed.py``
checks them against the signatures) plus the engine's keys ``preset`` (sizes from the model's
presets, the other keys override them) and ``frozen_bn``. The resolved config keeps only the keys
that were given, so a preset's sizes are not overwritten by defaults. The constructors keep their own
cross-argument checks (head, mask ratio, fetch_idx): they are public API, called without a config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

from clora3d.errors import ConfigError
from clora3d.schema import short_repr, spec, to_dict, validate

__all__ = [
    "ModelKeys",
    "PointTransformerConfig",
    "PartSegModelConfig",
    "PointMAEConfig",
    "MODEL_CONFIGS",
    "validate_model",
    "DEFAULT_FROZEN_BN",
]

Where = Callable[[tuple], str]

#: frozen-BN policy when neither model.frozen_bn nor peft.frozen_bn is given (reference behaviour)
DEFAULT_FROZEN_BN = "train"


@dataclass(kw_only=True)
class ModelKeys:
    """Keys every model section takes besides the constructor's arguments."""

    preset: Optional[str] = spec(None, doc="preset sizes (vit_s | tiny | point_bert ...); the other keys override them")
    frozen_bn: Optional[Literal["train", "eval"]] = spec(
        None,
        doc="train (default, the references: a frozen BatchNorm's statistics drift to the new data) | eval "
        "(strict: BatchNorm with frozen params keeps its statistics)",
    )


@dataclass(kw_only=True)
class _TransformerSizes(ModelKeys):
    trans_dim: int = spec(384, gt=0, doc="token width")
    depth: int = spec(12, gt=0, doc="transformer blocks")
    num_heads: int = spec(6, gt=0, doc="attention heads")
    mlp_ratio: float = spec(4.0, gt=0, doc="MLP width / token width")
    drop_path_rate: float = spec(0.1, ge=0, lt=1, doc="stochastic depth of the last block (linear from 0)")
    group_size: int = spec(32, gt=0, doc="points per group (kNN)")
    encoder_dims: int = spec(384, gt=0, doc="patch encoder output width")
    encoder_widths: tuple[int, ...] = spec((128, 256, 512), gt=0, doc="mini-PointNet widths")
    qkv_bias: bool = spec(False, doc="bias of the qkv projection")


@dataclass(kw_only=True)
class PointTransformerConfig(_TransformerSizes):
    """Backbone + classification head (clora3d.models.PointTransformer)."""

    num_group: int = spec(64, gt=0, doc="groups (FPS centres) per cloud")
    cls_dim: int = spec(40, gt=0, doc="classes")
    head: Literal["mae", "bert"] = spec("mae", doc="mae: Point-MAE head (BN, dropout); bert: Point-BERT's lighter head")


@dataclass(kw_only=True)
class PartSegModelConfig(_TransformerSizes):
    """Part segmentation model (clora3d.models.PartSegModel)."""

    num_group: int = spec(128, gt=0, doc="groups (FPS centres) per cloud")
    num_classes: int = spec(16, gt=0, doc="object categories (one-hot input of the head)")
    num_parts: int = spec(50, gt=0, doc="part labels")
    fetch_idx: Optional[tuple[int, ...]] = spec(
        None, ge=0, doc="blocks whose features the head reads (null: evenly spaced, 3/7/11 for depth 12)"
    )
    label_dim: int = spec(64, gt=0, doc="width of the category embedding")
    propagation_mlp: tuple[int, ...] = spec((1536, 1024), gt=0, doc="feature propagation MLP widths")
    head_widths: tuple[int, ...] = spec((512, 256), gt=0, doc="conv head widths (2 entries)")
    dropout: float = spec(0.5, ge=0, lt=1, doc="head dropout")
    interp_eps: float = spec(1e-8, gt=0, doc="epsilon of the inverse-distance weights")


@dataclass(kw_only=True)
class PointMAEConfig(_TransformerSizes):
    """Point-MAE pre-training model (clora3d.models.PointMAE)."""

    num_group: int = spec(64, gt=0, doc="groups (FPS centres) per cloud")
    decoder_depth: int = spec(4, gt=0, doc="decoder blocks")
    decoder_num_heads: int = spec(6, gt=0, doc="decoder attention heads")
    mask_ratio: float = spec(0.6, gt=0, lt=1, doc="fraction of groups masked")


MODEL_CONFIGS: dict[str, type] = {
    "PointTransformer": PointTransformerConfig,
    "PartSegModel": PartSegModelConfig,
    "PointMAE": PointMAEConfig,
}


def _presets(name: str) -> Mapping[str, Any]:
    from clora3d.models.registry import model_names, model_presets

    return model_presets(name) if name in model_names() else {}


def validate_model(cfg: Any, *, path: tuple = ("model",), where: Where | None = None) -> dict[str, Any]:
    """Validate a ``{"NAME": ..., "preset": ..., **constructor_args}`` model section; returns it with the
    validated values (only the keys given; lists stay lists)."""
    where = where or (lambda p: "<config>")
    names = " | ".join(MODEL_CONFIGS)
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("NAME"), str):
        raise ConfigError(
            f"config key '{'.'.join(path)}' in {where(path)} must be a mapping with a NAME key "
            f"({names}), got {short_repr(cfg)}"
        )
    name = cfg["NAME"]
    if name not in MODEL_CONFIGS:
        kp = path + ("NAME",)
        raise ConfigError(
            f"config key '{'.'.join(kp)}' in {where(kp)} must be one of {list(MODEL_CONFIGS)}, got {short_repr(name)}"
        )
    inst = validate(MODEL_CONFIGS[name], {k: v for k, v in cfg.items() if k != "NAME"}, path=path, where=where)
    if inst.preset is not None and inst.preset not in _presets(name):
        kp = path + ("preset",)
        raise ConfigError(
            f"config key '{'.'.join(kp)}' in {where(kp)} must be a {name} preset "
            f"({' | '.join(_presets(name))}), got {short_repr(inst.preset)}"
        )
    plain = to_dict(inst)
    return {k: (cfg[k] if k == "NAME" else plain[k]) for k in cfg}

"""Models: the point stem (grouping + patch encoder + position MLP), the canonical transformer, the
backbone with its classification head, part segmentation, the MAE, checkpoints.

Model classes register themselves by name with their presets (:mod:`clora3d.models.registry`);
``build_model(cfg)`` builds one from a config dict::

    {"NAME": "PointTransformer", "preset": "vit_s", "cls_dim": 15}

``NAME`` picks the class (:func:`model_names`), the optional ``preset`` its size
(:func:`model_presets`), every other key is a constructor argument (:func:`model_keys`); an unknown
key raises ``ConfigError``.
"""

from __future__ import annotations

from clora3d.models.backbone import PointTransformer
from clora3d.models.checkpoint import LoadReport, load_pretrained, save_point_mae_checkpoint, to_point_mae_state_dict
from clora3d.models.mae import MaskTransformer, PointMAE
from clora3d.models.partseg import PartSegModel
from clora3d.models.registry import build_model, model_class, model_keys, model_names, model_presets, register_model
from clora3d.models.stem import Encoder, Group, PointStem, position_mlp
from clora3d.models.transformer import Attention, Block, DropPath, Mlp, TransformerEncoder
from clora3d.models.utils import apply_frozen_bn_policy, count_parameters, freeze_bn_stats

__all__ = [
    "build_model",
    "register_model",
    "model_names",
    "model_class",
    "model_keys",
    "model_presets",
    "PointTransformer",
    "PartSegModel",
    "PointMAE",
    "MaskTransformer",
    "PointStem",
    "position_mlp",
    "Encoder",
    "Group",
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "TransformerEncoder",
    "LoadReport",
    "load_pretrained",
    "to_point_mae_state_dict",
    "save_point_mae_checkpoint",
    "freeze_bn_stats",
    "apply_frozen_bn_policy",
    "count_parameters",
]

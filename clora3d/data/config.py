"""Typed configs of the data side: the ``data`` section (sampling and augmentation of the training batch),
one config per transform NAME and one per dataset NAME (a ``dataset.<split>`` section).

Each dataclass mirrors the constructor it configures (``tests/test_config_typed.py`` checks the
fields and defaults against the signatures); :mod:`clora3d.schema` validates a mapping into it with
one error naming the key, the value and the file that set it. The sections stay sparse in the
resolved config (only the keys a file or ``--set`` gave), so the constructors' defaults apply.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

from clora3d.errors import ConfigError
from clora3d.schema import Invalid, short_repr, spec, to_dict, validate

__all__ = ["DataConfig", "TRANSFORM_CONFIGS", "DATASET_CONFIGS", "validate_transforms", "validate_dataset",
           "default_point_all"]

Where = Callable[[tuple], str]

#: Reference table for the FPS pre-sampling size of the training pipeline (point_mae_family §1.4).
_POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


def default_point_all(npoints: int) -> int:
    """``point_all`` used by the reference runner for ``npoints`` (npoints itself if not listed)."""
    return _POINT_ALL.get(npoints, npoints)


def _is_path(v: Any) -> bool:
    return isinstance(v, (str, os.PathLike)) and str(v) != ""


def _path(default: Any = None, doc: str = "", required: bool = False) -> Any:
    if required:
        return spec(check=_is_path, expect="a path", doc=doc)
    return spec(default, check=_is_path, expect="a path or null", doc=doc)


# ------------------------------------------------------------------------------------------------
# the data section
# ------------------------------------------------------------------------------------------------
def _transform_list(v: Any) -> bool:
    return all(isinstance(t, Mapping) and "NAME" in t for t in v)


@dataclass
class DataConfig:
    """How the training batch is sampled and augmented (evaluation: deterministic FPS, no augmentation)."""

    npoints: int = spec(1024, gt=0, doc="points fed to the model")
    point_all: Optional[int] = spec(None, gt=0, doc="train: FPS to point_all, then a random subset of npoints shared "
                                    "by the batch; null = reference table (1024->1200, 2048->2400, 4096->4800, "
                                    "8192->8192, else npoints), capped at the points available")
    train_sampling: Literal["fps_subset", "fps", "none"] = spec(
        "fps_subset", doc="fps_subset = reference train pipeline; fps = deterministic FPS; none = use the dataset's "
        "points as they are (part segmentation)")
    train_transforms: list[dict[str, Any]] = spec(factory=list, check=_transform_list,
                                                  expect="a list of {NAME: ...} mappings",
                                                  doc="batched augmentations after sampling (TRANSFORM_CONFIGS)")


# ------------------------------------------------------------------------------------------------
# transforms (clora3d.data.transforms)
# ------------------------------------------------------------------------------------------------
@dataclass
class NormalizeConfig:
    """Per sample: subtract the centroid, divide by the largest radius."""


@dataclass
class ScaleAndTranslateConfig:
    """Scale U(scale_low, scale_high) per axis (one factor with isotropic), then shift U(-t, t) per axis."""

    scale_low: float = spec(2.0 / 3.0, gt=0, doc="lowest scale factor")
    scale_high: float = spec(3.0 / 2.0, gt=0, doc="highest scale factor (>= scale_low)")
    translate: float = spec(0.2, ge=0, doc="largest shift per axis")
    isotropic: bool = spec(False, doc="one factor per cloud (reference part segmentation) instead of one per axis")

    def __post_init__(self) -> None:
        if self.scale_low > self.scale_high:
            raise Invalid("scale_high", f">= scale_low ({self.scale_low:g})", self.scale_high)


@dataclass
class RotateYConfig:
    """Rotation about the Y (up) axis by an angle U(angle_low, angle_high)."""

    angle_low: float = spec(0.0, doc="smallest angle (radians)")
    angle_high: float = spec(2 * math.pi, doc="largest angle (radians)")


@dataclass
class JitterConfig:
    """Gaussian noise N(0, std) clamped to [-clip, clip] on every coordinate."""

    std: float = spec(0.01, ge=0, doc="standard deviation")
    clip: float = spec(0.05, ge=0, doc="clamp bound")


@dataclass
class RandomDropoutConfig:
    """Per sample drop ratio U(0, max_dropout_ratio); dropped points become the first point."""

    max_dropout_ratio: float = spec(0.875, ge=0, lt=1, doc="largest fraction of points dropped")


@dataclass
class FPSResampleConfig:
    """Furthest point sampling to n points per sample."""

    n: int = spec(gt=0, doc="points kept")


@dataclass
class RandomSubsetConfig:
    """Random n of N points without replacement (one index set per batch unless per_sample)."""

    n: int = spec(gt=0, doc="points kept")
    per_sample: bool = spec(False, doc="one index set per sample")


TRANSFORM_CONFIGS: dict[str, type] = {
    "Normalize": NormalizeConfig, "ScaleAndTranslate": ScaleAndTranslateConfig, "RotateY": RotateYConfig,
    "Jitter": JitterConfig, "RandomDropout": RandomDropoutConfig, "FPSResample": FPSResampleConfig,
    "RandomSubset": RandomSubsetConfig,
}


def _named(cfg: Any, registry: Mapping[str, type], path: tuple, where: Where, what: str) -> type:
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("NAME"), str):
        raise ConfigError(f"config key '{'.'.join(map(str, path))}' in {where(path)} must be a mapping with a NAME "
                          f"key ({' | '.join(registry)}), got {short_repr(cfg)}")
    name = cfg["NAME"]
    if name not in registry:
        kp = path + ("NAME",)
        raise ConfigError(f"config key '{'.'.join(map(str, kp))}' in {where(kp)} must be {what} "
                          f"({' | '.join(registry)}), got {short_repr(name)}")
    return registry[name]


def _sparse(cfg: Mapping, instance: Any, keep: tuple[str, ...] = ("NAME",)) -> dict:
    """The keys ``cfg`` gave, with the validated values (so the constructors' defaults still apply)."""
    plain = to_dict(instance)
    return {k: (cfg[k] if k in keep else plain[k]) for k in cfg}


def validate_transforms(specs: Any, *, path: tuple = ("data", "train_transforms"), where: Where | None = None
                        ) -> list[dict[str, Any]]:
    """Validate ``[{"NAME": "RotateY"}, {"NAME": "Jitter", "std": 0.01}, ...]``; returns the list with
    validated values (only the keys given)."""
    where = where or (lambda p: "<config>")
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"config key '{'.'.join(map(str, path))}' in {where(path)} must be a list of "
                          f"{{NAME: ...}} mappings, got {short_repr(specs)}")
    out = []
    for i, t in enumerate(specs):
        cls = _named(t, TRANSFORM_CONFIGS, path + (i,), where, "a transform")
        inst = validate(cls, {k: v for k, v in t.items() if k != "NAME"}, path=path + (i,), where=where)
        out.append(_sparse(t, inst))
    return out


# ------------------------------------------------------------------------------------------------
# datasets (dataset.<split> sections)
# ------------------------------------------------------------------------------------------------
_SPLIT_DOC = "split passed to the data set (default: the section name: train, val, test)"
_SEED_DOC = "seed of the per-item randomness (point order, resampling), worker-safe"


@dataclass(kw_only=True)
class ModelNet40Config:
    """ModelNet40 / ModelNet10 in modelnet40_normal_resampled layout (clora3d.data.ModelNet40)."""

    root: Any = _path(required=True, doc="folder holding modelnet40_shape_names.txt and the class folders")
    split: Optional[str] = spec(None, doc=_SPLIT_DOC)
    n_points: int = spec(8192, gt=0, doc="points read per shape (the reference's 8192-point cache)")
    num_category: Literal[10, 40] = spec(40, doc="ModelNet40 or ModelNet10")
    use_normals: bool = spec(False, doc="keep the normals as channels 3..5")
    cache: bool = spec(True, doc="cache the resampled arrays under cache_dir")
    cache_dir: Any = _path(None, doc="cache folder (default: root)")
    seed: int = spec(0, doc=_SEED_DOC)


@dataclass(kw_only=True)
class ModelNetFewShotConfig:
    """One few-shot fold (<root>/<way>way_<shot>shot/<fold>.pkl; clora3d.data.ModelNetFewShot)."""

    root: Any = _path(required=True, doc="folder holding the <way>way_<shot>shot folders")
    way: int = spec(ge=0, doc="classes per episode")
    shot: int = spec(ge=0, doc="training shapes per class")
    fold: int = spec(ge=0, doc="fold index")
    split: Optional[str] = spec(None, doc=_SPLIT_DOC)
    n_points: Optional[int] = spec(None, gt=0, doc="points per shape (null: as stored)")
    use_normals: bool = spec(False, doc="keep the normals as channels 3..5")
    seed: int = spec(0, doc=_SEED_DOC)


@dataclass(kw_only=True)
class ScanObjectNNConfig:
    """ScanObjectNN h5 files (clora3d.data.ScanObjectNN)."""

    root: Any = _path(required=True, doc="folder holding main_split/ and main_split_nobg/")
    variant: Literal["OBJ_BG", "OBJ_ONLY", "PB_T50_RS"] = spec(doc="OBJ_BG | OBJ_ONLY | PB_T50_RS")
    split: Optional[str] = spec(None, doc=_SPLIT_DOC)
    n_points: Optional[int] = spec(None, gt=0, doc="points per object (null: all 2048)")
    seed: int = spec(0, doc=_SEED_DOC)


@dataclass(kw_only=True)
class ShapeNetPartConfig:
    """ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0[_normal]; clora3d.data.ShapeNetPart)."""

    root: Any = _path(required=True, doc="folder holding synsetoffset2category.txt")
    split: Optional[str] = spec(None, doc=_SPLIT_DOC + " (also trainval)")
    n_points: int = spec(2048, gt=0, doc="points per shape (resampled with replacement, as the reference)")
    split_dir: Any = _path(None, doc="folder of the split json files (default: root/train_test_split)")
    layout: Literal["auto", "v0_normal", "v0"] = spec("auto", doc="file layout")
    use_normals: bool = spec(False, doc="keep the normals as channels 3..5")
    cache_items: bool = spec(True, doc="keep parsed shapes in memory")
    seed: int = spec(0, doc=_SEED_DOC)


@dataclass(kw_only=True)
class ShapeNet55Config:
    """ShapeNet-55 (Point-MAE's pre-training set; clora3d.data.ShapeNet55)."""

    root: Any = _path(required=True, doc="folder holding ShapeNet-55/ and shapenet_pc/")
    split: Optional[str] = spec(None, doc=_SPLIT_DOC)
    n_points: int = spec(1024, gt=0, doc="points per cloud")
    whole: bool = spec(False, doc="train on train + test lists (the reference's whole flag)")
    seed: int = spec(0, doc=_SEED_DOC)


DATASET_CONFIGS: dict[str, type] = {
    "ModelNet40": ModelNet40Config, "ModelNetFewShot": ModelNetFewShotConfig, "ScanObjectNN": ScanObjectNNConfig,
    "ShapeNetPart": ShapeNetPartConfig, "ShapeNet55": ShapeNet55Config,
}


def validate_dataset(cfg: Any, *, path: tuple = ("dataset",), where: Where | None = None) -> dict[str, Any]:
    """Validate a ``{"NAME": ..., **constructor_args}`` dataset section; returns it with validated values
    (only the keys given)."""
    where = where or (lambda p: "<config>")
    cls = _named(cfg, DATASET_CONFIGS, path, where, "a dataset class of clora3d.data")
    inst = validate(cls, {k: v for k, v in cfg.items() if k != "NAME"}, path=path, where=where)
    return _sparse(cfg, inst, keep=("NAME", "root", "cache_dir", "split_dir"))

"""Data sets in their original on-disk formats, batched transforms, synthetic shapes and file I/O.

Importing this package reads no file and imports neither h5py nor plyfile (they load lazily); open3d is never needed.
"""
from __future__ import annotations

import inspect
from typing import Any

from clora3d.errors import ConfigError
from clora3d.data.modelnet import (MODELNET10_CLASSES, MODELNET40_CLASSES, ModelNet40, ModelNetFewShot,
                                   build_modelnet_arrays, cache_name, fewshot_fold_path,
                                   fewshot_setting_dir, generate_fewshot_folds)
from clora3d.data.scanobjectnn import SCANOBJECTNN_CLASSES, SCANOBJECTNN_FILES, ScanObjectNN, scanobjectnn_file
from clora3d.data.shapenet import (CATEGORY_NAMES, CATEGORY_TO_SYNSET, NUM_PARTS, PART_COUNTS, SEG_CLASSES,
                                   SEG_LABEL_TO_CATEGORY, SYNSETS, ShapeNet55, ShapeNetPart)
from clora3d.data.transforms import (TRANSFORM_KEYS, TRANSFORMS, Compose, FPSResample, Jitter, Normalize,
                                     RandomDropout, RandomSubset, RotateY, ScaleAndTranslate, build_transforms)
from clora3d.data.safe_pickle import safe_load, safe_loads
from clora3d.data.io import read_point_cloud, write_point_cloud
from clora3d.data import synthetic  # noqa: E402  (writers; importing it reads/writes nothing)

DATASETS: dict[str, type] = {
    "ModelNet40": ModelNet40,
    "ModelNetFewShot": ModelNetFewShot,
    "ScanObjectNN": ScanObjectNN,
    "ShapeNetPart": ShapeNetPart,
    "ShapeNet55": ShapeNet55,
}


def _keys(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {n: (p.default if p.default is not inspect.Parameter.empty else "<required>")
            for n, p in sig.parameters.items() if n not in ("self", "split")}


# Keys a dataset config may carry besides NAME (value = default, "<required>" when mandatory);
# the split is passed separately to build_dataset.
DATASET_KEYS: dict[str, dict[str, Any]] = {name: _keys(cls) for name, cls in DATASETS.items()}


def build_dataset(cfg: dict, split: str):
    """Instantiate ``cfg["NAME"]`` with the other keys of ``cfg`` as arguments, for ``split``.

    Example: ``build_dataset({"NAME": "ScanObjectNN", "root": "data/ScanObjectNN",
    "variant": "PB_T50_RS"}, "train")``. The typed config of the NAME (clora3d.data.config) validates
    ``cfg``: unknown names/keys, bad values and missing required keys raise ConfigError naming them.
    """
    from clora3d.data.config import validate_dataset

    kwargs = validate_dataset(cfg)
    if "split" in kwargs:
        raise ConfigError(f"build_dataset: pass the split as the argument, not as a key (got split "
                          f"{kwargs['split']!r} in the config and {split!r})")
    return DATASETS[kwargs.pop("NAME")](split=split, **kwargs)


__all__ = [
    "ModelNet40", "ModelNetFewShot", "ScanObjectNN", "ShapeNetPart", "ShapeNet55", "build_dataset",
    "DATASETS", "DATASET_KEYS", "generate_fewshot_folds", "fewshot_fold_path",
    "fewshot_setting_dir", "build_modelnet_arrays", "cache_name",
    "MODELNET40_CLASSES", "MODELNET10_CLASSES", "SCANOBJECTNN_CLASSES", "SCANOBJECTNN_FILES",
    "scanobjectnn_file", "CATEGORY_NAMES", "CATEGORY_TO_SYNSET", "SYNSETS", "SEG_CLASSES",
    "SEG_LABEL_TO_CATEGORY", "PART_COUNTS", "NUM_PARTS", "Normalize", "ScaleAndTranslate", "RotateY",
    "Jitter", "RandomDropout", "FPSResample", "RandomSubset", "Compose", "build_transforms",
    "TRANSFORMS", "TRANSFORM_KEYS", "safe_load", "safe_loads", "read_point_cloud", "write_point_cloud", "synthetic",
]

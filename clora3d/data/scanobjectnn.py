"""ScanObjectNN (h5 files of the official release) selected by variant name."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from clora3d.errors import ConfigError, DataError
from clora3d.data.common import WorkerRNG, check_labels, check_split, data_error, sample_error

SCANOBJECTNN_CLASSES: list[str] = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
    "pillow", "sink", "sofa", "toilet",
]

# variant -> (sub-folder, train file, test file)   (reference section 4.3)
SCANOBJECTNN_FILES: dict[str, tuple[str, str, str]] = {
    "OBJ_BG": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "PB_T50_RS": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}


def scanobjectnn_file(root: Union[str, Path], variant: str, split: str) -> Path:
    """Path of the h5 file holding ``variant`` / ``split`` under the ScanObjectNN root."""
    if variant not in SCANOBJECTNN_FILES:
        raise ConfigError(f"ScanObjectNN: unknown variant {variant!r}; choose one of "
                          f"{list(SCANOBJECTNN_FILES)} (OBJ_BG = main_split, OBJ_ONLY = "
                          "main_split_nobg, PB_T50_RS = main_split/*_augmentedrot_scale75.h5)")
    sub, tr, te = SCANOBJECTNN_FILES[variant]
    return Path(root) / sub / (tr if split == "train" else te)


class ScanObjectNN(Dataset):
    """ScanObjectNN ``variant`` in {OBJ_BG, OBJ_ONLY, PB_T50_RS}, ``split`` in {train, test}.

    ``root`` is the folder holding ``main_split/`` and ``main_split_nobg/``. Items
    ``{"points": float32 (2048, 3), "label": int64 0..14}``; no normalisation (the objects come
    pre-normalised), train point order shuffled (seeded, worker-safe). ``n_points`` (optional)
    keeps the first n points.
    """

    class_names = SCANOBJECTNN_CLASSES
    num_classes = len(SCANOBJECTNN_CLASSES)

    def __init__(self, root: Union[str, Path], variant: str, split: str, n_points: int | None = None,
                 seed: int = 0) -> None:
        import h5py  # lazy: only needed here

        self.root = Path(root)
        self.variant = variant
        self.split = check_split("ScanObjectNN", split, ("train", "test"))
        self.path = scanobjectnn_file(self.root, variant, split)
        self._rng = WorkerRNG(seed)
        if self.root.name in ("main_split", "main_split_nobg") and not (self.root / "main_split").exists():
            raise data_error("ScanObjectNN", f"root points at a split folder; pass its parent "
                             f"({self.root.parent}) so the variant can choose the folder", self.root,
                             variant=variant)
        if not self.path.is_file():
            raise data_error("ScanObjectNN", "missing file", self.path, variant=variant)
        try:
            with h5py.File(self.path, "r") as f:
                if "data" not in f or "label" not in f:
                    raise data_error("ScanObjectNN", f"h5 file lacks key 'data' or 'label' (has "
                                     f"{sorted(f.keys())[:20]})", self.path, variant=variant)
                for key in ("data", "label"):
                    ds = f[key]
                    if not isinstance(ds, h5py.Dataset):
                        raise sample_error("ScanObjectNN", f"h5 entry '{key}' is a "
                                           f"{type(ds).__name__}, expected an array", self.path,
                                           variant=variant)
                    if ds.dtype.kind not in "biuf":
                        raise sample_error("ScanObjectNN", f"h5 entry '{key}' holds {ds.dtype} "
                                           "values, expected numbers", self.path, variant=variant)
                self._points = np.asarray(f["data"][:], dtype=np.float32)
                raw_labels = np.asarray(f["label"][:])
        except DataError:
            raise
        except OSError as e:
            raise data_error("ScanObjectNN", f"cannot read h5 file ({e})", self.path, variant=variant) from None
        if self._points.ndim != 3 or self._points.shape[2] < 3 or self._points.shape[1] == 0 \
                or len(self._points) != raw_labels.size:
            raise data_error("ScanObjectNN", f"'data' has shape {self._points.shape} for "
                             f"{raw_labels.size} labels; expected (N, 2048, 3)", self.path, variant=variant)
        # every sample is checked once, here: integer labels in range, finite coordinates
        self._labels = check_labels("ScanObjectNN", raw_labels, self.path, self.num_classes, variant)
        finite = np.isfinite(self._points[:, :, :3]).all(axis=(1, 2))
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise sample_error("ScanObjectNN", f"non-finite coordinates ({int((~finite).sum())} such "
                               "samples)", self.path, i, variant)
        self._points = np.ascontiguousarray(self._points[:, :, :3])
        if n_points is not None and n_points > self._points.shape[1]:
            raise data_error("ScanObjectNN", f"n_points={n_points} but the file holds "
                             f"{self._points.shape[1]} points per object", self.path, variant=variant)
        self.n_points = n_points

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict:
        pts = self._points[index]
        if self.n_points is not None:
            pts = pts[: self.n_points]
        if self.split == "train":
            pts = pts[self._rng.get().permutation(pts.shape[0])]
        return {"points": torch.from_numpy(np.ascontiguousarray(pts)),
                "label": torch.tensor(int(self._labels[index]), dtype=torch.int64)}

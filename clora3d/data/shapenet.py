"""ShapeNetPart part segmentation (``_v0_normal`` txt tree and the original v0 ``.pts``/``.seg``
release) and ShapeNet-55 pre-training clouds (npy)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from clora3d.errors import ConfigError
from clora3d.data.common import (WorkerRNG, check_labels, check_split, data_error, normalize_unit_sphere,
                                 read_text_cloud, sample_error)

# category index = line order of synsetoffset2category.txt
CATEGORY_NAMES: list[str] = [
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife", "Lamp", "Laptop",
    "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table",
]
SYNSETS: list[str] = [
    "02691156", "02773838", "02954340", "02958343", "03001627", "03261776", "03467517", "03624134",
    "03636649", "03642806", "03790512", "03797390", "03948459", "04099429", "04225987", "04379243",
]
CATEGORY_TO_SYNSET: dict[str, str] = dict(zip(CATEGORY_NAMES, SYNSETS))
SYNSET_TO_CATEGORY: dict[str, str] = dict(zip(SYNSETS, CATEGORY_NAMES))
PART_COUNTS: list[int] = [4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3]
_offsets = np.concatenate([[0], np.cumsum(PART_COUNTS)]).tolist()
# category name -> its global part ids (50 parts in all)
SEG_CLASSES: dict[str, list[int]] = {
    c: list(range(_offsets[i], _offsets[i + 1])) for i, c in enumerate(CATEGORY_NAMES)
}
NUM_PARTS = int(_offsets[-1])
# global part id -> category name
SEG_LABEL_TO_CATEGORY: dict[int, str] = {p: c for c, ps in SEG_CLASSES.items() for p in ps}

_SPLITS = ("train", "val", "test", "trainval")


def _read_split_ids(split_dir: Path, split: str) -> set[tuple[str, str]]:
    names = ("train", "val") if split == "trainval" else (split,)
    ids: set[tuple[str, str]] = set()
    for n in names:
        f = split_dir / f"shuffled_{n}_file_list.json"
        if not f.is_file():
            raise data_error("ShapeNetPart", f"missing split list for split {split!r}", f)
        try:
            entries = json.loads(f.read_text())
            for e in entries:
                parts = str(e).split("/")
                ids.add((parts[1], parts[2]))  # "shape_data/<synset>/<id>"
        except (ValueError, IndexError) as err:
            raise data_error("ShapeNetPart", f"malformed split list ({err}); expected a JSON list of "
                             "'shape_data/<synset>/<id>'", f) from None
    return ids


class ShapeNetPart(Dataset):
    """ShapeNetPart, 16 categories / 50 parts; ``split`` in train, val, test, trainval.

    Reads the ``_v0_normal`` layout (``<synset>/<id>.txt`` with global part ids) or the original
    v0 release (``<synset>/points/<id>.pts`` + ``points_label/<id>.seg`` with per-category part
    ids 1..k, mapped to the global ids of :data:`SEG_CLASSES`); ``layout="auto"`` decides per
    category folder. Split lists come from ``<root>/train_test_split`` (or ``split_dir``); as in the
    reference, every shape file present in a category folder and named in the lists is used.

    Items ``{"points": float32 (n_points, 3), "cls": int64 0..15, "seg": int64 (n_points,)}``:
    xyz unit-sphere normalised, then ``n_points`` drawn WITH replacement (reference behaviour, test
    split included; seeded, worker-safe).
    """

    class_names = CATEGORY_NAMES
    num_classes = len(CATEGORY_NAMES)
    num_parts = NUM_PARTS
    seg_classes = SEG_CLASSES

    def __init__(self, root: Union[str, Path], split: str, n_points: int = 2048,
                 split_dir: Optional[Union[str, Path]] = None, layout: str = "auto",
                 use_normals: bool = False, cache_items: bool = True, seed: int = 0) -> None:
        self.root = Path(root)
        self.split = check_split("ShapeNetPart", split, _SPLITS)
        self.cache_items = bool(cache_items)
        if layout not in ("auto", "v0_normal", "v0"):
            raise ConfigError(f"ShapeNetPart: layout must be 'auto', 'v0_normal' or 'v0', got {layout!r}")
        self.n_points = int(n_points)
        self.use_normals = bool(use_normals)
        self._rng = WorkerRNG(seed)
        if not self.root.is_dir():
            raise data_error("ShapeNetPart", "data root is a file, expected a folder"
                             if self.root.is_file() else "data folder not found", self.root)
        cat_file = self.root / "synsetoffset2category.txt"
        if not cat_file.is_file():
            raise data_error("ShapeNetPart", "missing category file", cat_file)
        rows = [ln.split() for ln in cat_file.read_text().splitlines() if ln.strip()]
        if [tuple(r[:2]) for r in rows] != list(zip(CATEGORY_NAMES, SYNSETS)):
            raise data_error("ShapeNetPart", "category file does not list the 16 standard categories "
                             "in the standard order", cat_file)
        wanted = _read_split_ids(Path(split_dir) if split_dir else self.root / "train_test_split", split)
        self.items: list[tuple[int, Path, Optional[Path], str]] = []  # (cls, file, seg file, layout)
        for ci, syn in enumerate(SYNSETS):
            d = self.root / syn
            if not d.is_dir():
                raise data_error("ShapeNetPart", f"missing category folder ({CATEGORY_NAMES[ci]})", d)
            lay = layout
            if lay == "auto":
                lay = "v0" if (d / "points").is_dir() else "v0_normal"
            if lay == "v0":
                files = sorted((d / "points").glob("*.pts"))
                for f in files:
                    if (syn, f.stem) in wanted:
                        self.items.append((ci, f, d / "points_label" / f"{f.stem}.seg", "v0"))
            else:
                for f in sorted(d.glob("*.txt")):
                    if (syn, f.stem) in wanted:
                        self.items.append((ci, f, None, "v0_normal"))
        if not self.items:
            raise data_error("ShapeNetPart", f"no shape file of split {split!r} found (the split lists "
                             "name none of the files present)", self.root)
        if self.use_normals and any(it[3] == "v0" for it in self.items):
            raise ConfigError("ShapeNetPart: use_normals=True but the v0 release (.pts) has no normals; "
                              "use the _v0_normal data or use_normals=False")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def labels(self) -> np.ndarray:
        """int64 category index of every shape."""
        return np.array([it[0] for it in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (N, 3) float32 points ((N, 6) with use_normals) and (N,) int64 global part ids."""
        if index in self._cache:
            pts, seg8 = self._cache[index]
            return pts, seg8.astype(np.int64)
        ci, f, seg_file, lay = self.items[index]
        cat = CATEGORY_NAMES[ci]
        if lay == "v0_normal":
            arr = read_text_cloud(f, "ShapeNetPart", 7, None)
            pts, seg = arr[:, :6], check_labels("ShapeNetPart", arr[:, 6], f, None)
            bad = ~np.isin(seg, SEG_CLASSES[cat])
            if bad.any():
                raise data_error("ShapeNetPart", f"part labels {sorted(set(seg[bad].tolist()))[:5]} are "
                                 f"not parts of {cat} {SEG_CLASSES[cat]}", f)
        else:
            pts = read_text_cloud(f, "ShapeNetPart", 3, None)
            assert seg_file is not None
            if not seg_file.is_file():
                raise data_error("ShapeNetPart", "missing part label file", seg_file)
            local = check_labels("ShapeNetPart", read_text_cloud(seg_file, "ShapeNetPart", 1, None)[:, 0],
                                 seg_file, None)
            k = len(SEG_CLASSES[cat])
            if local.shape[0] != pts.shape[0]:
                raise data_error("ShapeNetPart", f"{local.shape[0]} labels for {pts.shape[0]} points "
                                 f"in {f}", seg_file)
            if local.min() < 1 or local.max() > k:
                raise data_error("ShapeNetPart", f"v0 part labels must be 1..{k} for {cat}, got "
                                 f"{local.min()}..{local.max()}", seg_file)
            seg = SEG_CLASSES[cat][0] + local - 1
        if not self.use_normals:
            pts = np.ascontiguousarray(pts[:, :3])
        if self.cache_items:  # parsed shapes are kept (per worker), like the reference's cache
            self._cache[index] = (pts, seg.astype(np.uint8))
        return pts, seg

    def __getitem__(self, index: int) -> dict:
        pts, seg = self.load(index)
        xyz = normalize_unit_sphere(pts[:, :3].astype(np.float64))
        out = np.concatenate([xyz, pts[:, 3:6]], axis=1) if self.use_normals else xyz
        choice = self._rng.get().choice(out.shape[0], self.n_points, replace=True)
        return {"points": torch.from_numpy(np.ascontiguousarray(out[choice], dtype=np.float32)),
                "cls": torch.tensor(self.items[index][0], dtype=torch.int64),
                "seg": torch.from_numpy(np.ascontiguousarray(seg[choice], dtype=np.int64))}


class ShapeNet55(Dataset):
    """ShapeNet-55 pre-training clouds: ``<root>/ShapeNet-55/{split}.txt`` + ``shapenet_pc/*.npy``.

    Items ``{"points": float32 (n_points, 3)}``: a random subset of ``n_points`` (without
    replacement; seeded, worker-safe), unit-sphere normalised. ``whole=True`` also uses test.txt
    for the train split (Point-BERT pre-training).
    """

    def __init__(self, root: Union[str, Path], split: str, n_points: int = 1024, whole: bool = False,
                 seed: int = 0) -> None:
        self.root = Path(root)
        self.split = check_split("ShapeNet55", split, ("train", "test"))
        self.n_points = int(n_points)
        self._rng = WorkerRNG(seed)
        lists = [split] + (["test"] if whole and split == "train" else [])
        self.files: list[str] = []
        for s in lists:
            lf = self.root / "ShapeNet-55" / f"{s}.txt"
            if not lf.is_file():
                raise data_error("ShapeNet55", "missing split list", lf)
            self.files += [ln.strip() for ln in lf.read_text().splitlines() if ln.strip()]
        if not self.files:
            raise data_error("ShapeNet55", f"split list {split!r} is empty", self.root / "ShapeNet-55")
        pc = self.root / "shapenet_pc"
        if not pc.is_dir():
            raise data_error("ShapeNet55", "missing folder", pc)
        missing = [f for f in self.files if not (pc / f).is_file()]
        if missing:
            raise data_error("ShapeNet55", f"{len(missing)} listed clouds are missing, e.g.", pc / missing[0])
        self.synsets = [f.split("-", 1)[0] for f in self.files]
        self.class_names = sorted(set(self.synsets))
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.root / "shapenet_pc" / self.files[index]
        try:
            pts = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise data_error("ShapeNet55", "missing cloud file", path) from None
        except (ValueError, OSError, EOFError) as e:
            kind = "is a directory, expected a .npy file" if path.is_dir() else \
                f"unreadable npy ({type(e).__name__}: {str(e)[:200]})"
            raise sample_error("ShapeNet55", kind, path) from None
        if not isinstance(pts, np.ndarray) or pts.dtype.kind not in "biuf":
            raise sample_error("ShapeNet55", f"holds {getattr(pts, 'dtype', type(pts).__name__)} "
                               "values, expected numbers", path)
        if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[0] < self.n_points:
            raise data_error("ShapeNet55", f"cloud has shape {pts.shape}, expected (N >= {self.n_points}, 3)",
                             path)
        if not np.isfinite(pts[:, :3]).all():
            raise sample_error("ShapeNet55", "non-finite coordinates (nan/inf)", path)
        idx = self._rng.get().permutation(pts.shape[0])[: self.n_points]
        xyz = normalize_unit_sphere(pts[idx, :3].astype(np.float64))
        return {"points": torch.from_numpy(xyz.astype(np.float32))}

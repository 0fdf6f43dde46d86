"""Writers of every on-disk data set format the loaders read (ModelNet40, few-shot folds, ScanObjectNN,
ShapeNetPart, ShapeNet-55), filled with synthetic shapes; ``write_all(root)`` writes the whole
``data/`` layout of data/README.md."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from clora3d.data.modelnet import write_fewshot_folds_from_arrays
from clora3d.data.scanobjectnn import SCANOBJECTNN_CLASSES, SCANOBJECTNN_FILES
from clora3d.data.shapenet import CATEGORY_NAMES, SEG_CLASSES, SYNSETS
from clora3d.data.synthetic.catalog import SYNTHETIC_CLASSES
from clora3d.data.synthetic.primitives import _rot
from clora3d.data.synthetic.sampling import make_part_shape, make_shape

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# ------------------------------------------------------------------------------------- writers


def _fmt_rows(arr: np.ndarray, sep: str) -> str:
    """Rows of ``arr`` as text with 6 decimals (like "%.6f"), columns joined by ``sep``.

    Vectorised: characters are computed with integer arithmetic (|values| < 100), which is ~20x
    faster than Python string formatting.
    """
    a = np.round(np.asarray(arr, dtype=np.float64) * 1e6).astype(np.int64)
    if a.size == 0 or np.abs(a).max() >= 100 * 10**6:
        row = sep.join(["%.6f"] * arr.shape[1]) + "\n"
        return (row * arr.shape[0]) % tuple(np.asarray(arr).ravel().tolist())
    n, c = a.shape
    neg, a = a < 0, np.abs(a)
    ip, fp = a // 10**6, a % 10**6
    ch = np.zeros((n, c, 11), dtype=np.uint8)  # 0 = no character
    ch[..., 0] = np.where(neg, ord("-"), 0)
    ch[..., 1] = np.where(ip >= 10, ord("0") + ip // 10, 0)
    ch[..., 2] = ord("0") + ip % 10
    ch[..., 3] = ord(".")
    for k in range(6):
        ch[..., 4 + k] = ord("0") + (fp // 10 ** (5 - k)) % 10
    ch[:, :-1, 10] = ord(sep)
    ch[:, -1, 10] = ord("\n")
    buf = ch.reshape(-1)
    return buf[buf != 0].tobytes().decode("ascii")


def _classes(num_classes: Optional[int]) -> list[str]:
    k = len(SYNTHETIC_CLASSES) if num_classes is None else int(num_classes)
    if not 1 <= k <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
    return SYNTHETIC_CLASSES[:k]


def write_modelnet40(root: PathLike, num_classes: Optional[int] = None, n_train: int = 40, n_test: int = 15,
                     n_points: int = 2048, seed: int = 0) -> Path:
    """Write a ``modelnet40_normal_resampled`` tree: shape_names/train/test txt files (and the
    modelnet10_* files over the first 10 classes) plus ``<class>/<class>_NNNN.txt`` with
    ``x,y,z,nx,ny,nz`` lines. Returns the tree root (``root`` itself)."""
    root = Path(root)
    names = _classes(num_classes)
    root.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for ci, cname in enumerate(names):
        (root / cname).mkdir(exist_ok=True)
        for j in range(n_train + n_test):
            rng = np.random.default_rng([seed, 1, ci, j])
            xyz, nrm = make_shape(ci, n_points, rng, return_normals=True)
            sid = f"{cname}_{j + 1:04d}"
            (root / cname / f"{sid}.txt").write_text(_fmt_rows(np.concatenate([xyz, nrm], 1), ","))
            (train if j < n_train else test).append(sid)
    for prefix, cls in (("modelnet40", names), ("modelnet10", names[:10])):
        keep = set(cls)
        (root / f"{prefix}_shape_names.txt").write_text("\n".join(cls) + "\n")
        for split, ids in (("train", train), ("test", test)):
            sel = [s for s in ids if s.rsplit("_", 1)[0] in keep]
            (root / f"{prefix}_{split}.txt").write_text("\n".join(sel) + "\n")
    return root


def write_fewshot(root: PathLike, num_classes: Optional[int] = None, ways: Sequence[int] = (5, 10),
                  shots: Sequence[int] = (10, 20), folds: int = 10, eval_sample: int = 20, n_points: int = 1024,
                  seed: int = 0) -> Path:
    """Write ``{way}way_{shot}shot/{fold}.pkl`` folds (reference layout) from a pool of synthetic (n_points, 6) clouds
    (max(shots) train and eval_sample test shapes per class), by the reference episode rules."""
    names = _classes(num_classes)
    if max(ways) > len(names):
        raise ValueError(f"way {max(ways)} needs at least {max(ways)} classes, but only {len(names)} "
                         "synthetic classes are used; lower `ways` or raise num_classes")
    pools: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for ci in range(len(names)):
        for split, cnt in (("train", max(shots)), ("test", eval_sample)):
            for j in range(cnt):
                rng = np.random.default_rng([seed, 2, ci, j, split == "test"])
                xyz, nrm = make_shape(ci, n_points, rng, return_normals=True)
                pools[split][0].append(np.concatenate([xyz, nrm], 1))
                pools[split][1].append(ci)
    tr = (pools["train"][0], np.array(pools["train"][1]))
    te = (pools["test"][0], np.array(pools["test"][1]))
    write_fewshot_folds_from_arrays(tr, te, root, ways, shots, folds, eval_sample, seed)
    return Path(root)


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Floor patch and a partial wall around an object (ScanObjectNN-like clutter)."""
    k = rng.integers(n // 3, 2 * n // 3 + 1)
    floor = np.stack([rng.uniform(-1.0, 1.0, k), np.full(k, -0.85), rng.uniform(-1.0, 1.0, k)], 1)
    wall = np.stack([rng.uniform(-1.0, 1.0, n - k), rng.uniform(-0.85, 0.9, n - k), np.full(n - k, -0.9)], 1)
    pts = np.concatenate([floor, wall]) @ _rot("y", rng.uniform(0, 2 * np.pi)).T
    return pts + rng.normal(0, 0.01, pts.shape)


def write_scanobjectnn(root: PathLike, variant: str, n_train: int = 20, n_test: int = 8, n_points: int = 2048,
                       n_augment: int = 5, seed: int = 0) -> Path:
    """Write the train/test h5 files of ``variant`` (keys ``data`` (N,2048,3) float32, ``label``
    (N,) int64, ``mask`` (N,2048) int32 with -1 on background points) under ``root`` (the folder
    holding main_split/ and main_split_nobg/). Class i uses synthetic class i (15 classes).
    OBJ_BG: object + floor/wall background; OBJ_ONLY: object alone; PB_T50_RS: ``n_augment``
    perturbed copies of every object (rotation about Y, scale 0.75-1.25, shift up to 0.5, then
    re-normalised) with background."""
    import h5py

    if variant not in SCANOBJECTNN_FILES:
        raise ValueError(f"unknown ScanObjectNN variant {variant!r}; choose one of {list(SCANOBJECTNN_FILES)}")
    sub, ftr, fte = SCANOBJECTNN_FILES[variant]
    out = Path(root) / sub
    out.mkdir(parents=True, exist_ok=True)
    ncls = len(SCANOBJECTNN_CLASSES)
    for split, fname, cnt in (("train", ftr, n_train), ("test", fte, n_test)):
        data, labels, masks = [], [], []
        for ci in range(ncls):
            for j in range(cnt):
                rng = np.random.default_rng([seed, 3, ci, j, split == "test"])
                with_bg = variant != "OBJ_ONLY"
                n_obj = int(n_points * rng.uniform(0.55, 0.8)) if with_bg else n_points
                obj = make_shape(ci, n_obj, rng).astype(np.float64) * 0.8
                copies = n_augment if variant == "PB_T50_RS" else 1
                for _ in range(copies):
                    o = obj
                    if variant == "PB_T50_RS":
                        o = (o @ _rot("y", rng.uniform(0, 2 * np.pi)).T) * rng.uniform(0.75, 1.25) + \
                            rng.uniform(-0.5, 0.5, 3) * np.array([1, 0.2, 1])
                    pts = np.concatenate([o, _background(n_points - n_obj, rng)]) if with_bg else o
                    mask = np.concatenate([np.full(n_obj, 1), np.full(n_points - n_obj, -1)]).astype(np.int32)
                    perm = rng.permutation(n_points)
                    pts, mask = pts[perm], mask[perm]
                    pts = pts - pts.mean(0)
                    pts = pts / np.linalg.norm(pts, axis=1).max()
                    data.append(pts.astype(np.float32))
                    masks.append(mask)
                    labels.append(ci)
        with h5py.File(out / fname, "w") as f:
            f.create_dataset("data", data=np.stack(data))
            f.create_dataset("label", data=np.array(labels, dtype=np.int64))
            f.create_dataset("mask", data=np.stack(masks))
    return Path(root)


def write_shapenetpart(root: PathLike, n_train: int = 8, n_val: int = 2, n_test: int = 4, n_points: int = 2048,
                       seed: int = 0) -> Path:
    """Write a ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` tree: synsetoffset2category.txt,
    ``<synset>/<id>.txt`` lines ``x y z nx ny nz part`` (global part id written as a float, like the
    release) and ``train_test_split/shuffled_{train,val,test}_file_list.json``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{c}\t{s}\n" for c, s in zip(CATEGORY_NAMES, SYNSETS)))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ci, (cat, syn) in enumerate(zip(CATEGORY_NAMES, SYNSETS)):
        (root / syn).mkdir(exist_ok=True)
        j = 0
        for split, cnt in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(cnt):
                rng = np.random.default_rng([seed, 4, ci, j])
                xyz, nrm, local = make_part_shape(cat, n_points, rng)
                glob = np.asarray(SEG_CLASSES[cat])[local].astype(np.float64)
                mid = f"syn{ci:02d}{j:04d}" + "%024x" % int(rng.integers(2**62))
                arr = np.concatenate([xyz, nrm, glob[:, None]], 1)
                (root / syn / f"{mid}.txt").write_text(_fmt_rows(arr, " "))
                splits[split].append(f"shape_data/{syn}/{mid}")
                j += 1
    (root / "train_test_split").mkdir(exist_ok=True)
    for split, entries in splits.items():
        order = np.random.default_rng([seed, 5, len(split)]).permutation(len(entries))
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(
            json.dumps([entries[i] for i in order]))
    return root


def write_shapenet55(root: PathLike, num_classes: Optional[int] = None, n_train: int = 20, n_test: int = 5,
                     n_points: int = 2048, seed: int = 0) -> Path:
    """Write ``ShapeNet-55/{train,test}.txt`` and ``shapenet_pc/<synset>-<id>.npy`` (float32 (n,3)).
    Synthetic synsets are ``9000NNNN`` (one per synthetic class)."""
    root = Path(root)
    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for ci, _ in enumerate(_classes(num_classes)):
        for j in range(n_train + n_test):
            rng = np.random.default_rng([seed, 6, ci, j])
            name = f"9000{ci:04d}-synthetic{j:05d}.npy"
            np.save(root / "shapenet_pc" / name, make_shape(ci, n_points, rng))
            lists["train" if j < n_train else "test"].append(name)
    for split, names in lists.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


# sub-folders of the data root (data/README.md)
LAYOUT_DIRS: dict[str, str] = {
    "modelnet40": "ModelNet/modelnet40_normal_resampled",
    "fewshot": "ModelNetFewshot",
    "scanobjectnn": "ScanObjectNN",
    "shapenetpart": "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    "shapenet55": "ShapeNet55-34",
}

# per-format writer arguments for write_all(small=True/False)
SMALL_SIZES: dict[str, dict] = {
    "modelnet40": dict(n_train=40, n_test=15, n_points=2048),
    "fewshot": dict(folds=2, eval_sample=10, n_points=1024),
    "scanobjectnn": dict(n_train=12, n_test=5, n_points=2048, n_augment=2),
    "shapenetpart": dict(n_train=6, n_val=2, n_test=3, n_points=2048),
    "shapenet55": dict(n_train=16, n_test=4, n_points=2048),
}
FULL_SIZES: dict[str, dict] = {
    "modelnet40": dict(n_train=100, n_test=30, n_points=4096),
    "fewshot": dict(folds=10, eval_sample=20, n_points=2048),
    "scanobjectnn": dict(n_train=60, n_test=20, n_points=2048, n_augment=5),
    "shapenetpart": dict(n_train=40, n_val=8, n_test=15, n_points=2048),
    "shapenet55": dict(n_train=150, n_test=30, n_points=8192),
}


def write_all(root: PathLike, small: bool = True, seed: int = 0,
              formats: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Write every format (or ``formats``) under ``root`` in the data/README.md layout.

    Returns {format: folder}. ``small=True`` is sized for tests and the CPU demo (a few seconds).
    Each format written is logged (INFO) with its folder and time.
    """
    root = Path(root)
    sizes = SMALL_SIZES if small else FULL_SIZES
    formats = list(formats) if formats else list(LAYOUT_DIRS)
    unknown = set(formats) - set(LAYOUT_DIRS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; known: {list(LAYOUT_DIRS)}")
    out: dict[str, Path] = {}
    for fmt in formats:
        t0 = time.perf_counter()
        d = root / LAYOUT_DIRS[fmt]
        if fmt == "modelnet40":
            write_modelnet40(d, seed=seed, **sizes[fmt])
        elif fmt == "fewshot":
            write_fewshot(d, seed=seed, **sizes[fmt])
        elif fmt == "scanobjectnn":
            for v in SCANOBJECTNN_FILES:
                write_scanobjectnn(d, v, seed=seed, **sizes[fmt])
        elif fmt == "shapenetpart":
            write_shapenetpart(d, seed=seed, **sizes[fmt])
        elif fmt == "shapenet55":
            write_shapenet55(d, seed=seed, **sizes[fmt])
        out[fmt] = d
        log.info("%-14s -> %s  (%.1f s)", fmt, d, time.perf_counter() - t0)
    return out

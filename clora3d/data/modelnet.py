"""ModelNet40 / ModelNet10 (raw ``modelnet40_normal_resampled`` tree + ``*_fps.dat`` cache) and the
ModelNet few-shot folds (loader and seeded generator)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from clora3d.errors import ConfigError
from clora3d.data.common import (WorkerRNG, check_clouds, check_labels,
                                 check_split, data_error, sample_error,
                                 furthest_point_sample_batch, normalize_unit_sphere, read_text_cloud,
                                 warn_once)
from clora3d.data.safe_pickle import safe_load
from clora3d.storage import atomic_write_bytes

MODELNET40_CLASSES: list[str] = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard",
    "lamp", "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio",
    "range_hood", "sink", "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase",
    "wardrobe", "xbox",
]
MODELNET10_CLASSES: list[str] = [
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
]

CACHE_SEED = 0  # seed of the random FPS start index used when building the .dat cache


def cache_name(num_category: int, split: str, n_points: int) -> str:
    """Reference cache file name, e.g. ``modelnet40_train_8192pts_fps.dat``."""
    return f"modelnet{num_category}_{split}_{n_points}pts_fps.dat"


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def build_modelnet_arrays(root: Union[str, Path], split: str, n_points: int, num_category: int = 40,
                          seed: int = CACHE_SEED, progress: bool = True) -> tuple[list, list]:
    """Read the raw txt tree and FPS every shape to ``n_points`` (the content of the .dat cache).

    FPS starts at a random index per shape like the reference, but drawn from
    ``np.random.default_rng([seed, shape_position])`` so the cache is reproducible. Returns
    ``[list of float32 (n_points, 6)], [list of int32 (1,)]``.
    """
    root = Path(root)
    prefix = f"modelnet{num_category}"
    names_file = root / f"{prefix}_shape_names.txt"
    split_file = root / f"{prefix}_{split}.txt"
    for f in (names_file, split_file):
        if not f.is_file():
            raise data_error("ModelNet40", "missing file", f, variant=f"{prefix} {split}")
    names = _read_lines(names_file)
    cls_index = {n: i for i, n in enumerate(names)}
    ids = _read_lines(split_file)
    if not ids:
        raise data_error("ModelNet40", "empty split list", split_file, variant=f"{prefix} {split}")
    clouds, labels = [], []
    for sid in tqdm(ids, desc=f"reading {prefix} {split}", disable=not progress, leave=False):
        cls = sid.rsplit("_", 1)[0]
        if cls not in cls_index:
            raise data_error("ModelNet40", f"shape id {sid!r} names class {cls!r} which is not in",
                             names_file, variant=f"{prefix} {split}")
        pts = read_text_cloud(root / cls / f"{sid}.txt", "ModelNet40", 6, ",")
        if pts.shape[0] < n_points:
            raise data_error("ModelNet40", f"shape has {pts.shape[0]} points, fewer than n_points="
                             f"{n_points}", root / cls / f"{sid}.txt", variant=f"{prefix} {split}")
        clouds.append(pts)
        labels.append(np.array([cls_index[cls]], dtype=np.int32))
    out: list[Optional[np.ndarray]] = [None] * len(clouds)
    starts = [int(np.random.default_rng([seed, i]).integers(c.shape[0])) for i, c in enumerate(clouds)]
    by_n: dict[int, list[int]] = {}
    for i, c in enumerate(clouds):
        by_n.setdefault(c.shape[0], []).append(i)
    chunk = 64
    for n_in, members in by_n.items():
        for s in tqdm(range(0, len(members), chunk), desc=f"FPS {prefix} {split}",
                      disable=not progress, leave=False):
            m = members[s:s + chunk]
            batch = np.stack([clouds[i] for i in m])
            idx = furthest_point_sample_batch(batch[..., :3], n_points, [starts[i] for i in m])
            for j, i in enumerate(m):
                out[i] = np.ascontiguousarray(batch[j][idx[j]], dtype=np.float32)
    return out, labels  # type: ignore[return-value]


class ModelNet40(Dataset):
    """ModelNet40 (or ModelNet10 with ``num_category=10``) classification.

    Items: ``{"points": float32 (n_points, 3 or 6), "label": int64}``; xyz unit-sphere normalised,
    point order shuffled for the train split (seeded, worker-safe). The FPS-downsampled clouds come
    from ``modelnet{C}_{split}_{N}pts_fps.dat`` in ``cache_dir`` (default: root); when it is
    missing it is built from the txt tree and written atomically (``cache=True``), or kept in
    memory (``cache=False``). A read-only root without ``cache_dir`` keeps it in memory with a
    warning.
    """

    def __init__(self, root: Union[str, Path], split: str, n_points: int = 8192, num_category: int = 40,
                 use_normals: bool = False, cache: bool = True, cache_dir: Optional[Union[str, Path]] = None,
                 seed: int = 0) -> None:
        self.root = Path(root)
        self.split = check_split("ModelNet40", split, ("train", "test"))
        if num_category not in (10, 40):
            raise ConfigError(f"ModelNet40: num_category must be 10 or 40, got {num_category!r}")
        if int(n_points) <= 0:
            raise ConfigError(f"ModelNet40: n_points must be positive, got {n_points!r}")
        self.n_points, self.num_category = int(n_points), int(num_category)
        self.use_normals = bool(use_normals)
        self._rng = WorkerRNG(seed)
        prefix = f"modelnet{num_category}"
        variant = f"{prefix} {split}"
        if not self.root.is_dir():
            raise data_error("ModelNet40", "data root is a file, expected a folder" if self.root.is_file()
                             else "data folder not found", self.root, variant=variant)
        names_file = self.root / f"{prefix}_shape_names.txt"
        inner = self.root / "modelnet40_normal_resampled"
        if not names_file.is_file() and inner.is_dir():
            raise data_error("ModelNet40", f"root is the parent folder; use root: {inner}", self.root,
                             variant=variant)
        if names_file.is_file():
            self.class_names = _read_lines(names_file)
        else:  # processed-only bundles ship just the .dat files: use the standard order
            self.class_names = list(MODELNET40_CLASSES if num_category == 40 else MODELNET10_CLASSES)
        self.num_classes = len(self.class_names)
        cdir = Path(cache_dir) if cache_dir is not None else self.root
        self.cache_path = cdir / cache_name(num_category, split, self.n_points)
        if self.cache_path.is_file():
            data = safe_load(self.cache_path)
            if not (isinstance(data, (list, tuple)) and len(data) == 2 and len(data[0]) == len(data[1])):
                raise data_error("ModelNet40", "malformed cache (expected a pickled [points, labels] "
                                 "pair of equal-length lists)", self.cache_path, variant=variant)
            points, labels = list(data[0]), list(data[1])
        else:
            points, labels = build_modelnet_arrays(self.root, split, self.n_points, num_category)
            if cache:
                self._write_cache(points, labels, explicit_dir=cache_dir is not None)
        # every cached cloud and label is checked once, here: shape, finiteness, integer labels
        self._points = check_clouds("ModelNet40", points, self.cache_path, min_points=self.n_points,
                                    cols=6 if self.use_normals else 3, variant=variant)
        if any(np.asarray(lb).size != 1 for lb in labels):
            i = next(i for i, lb in enumerate(labels) if np.asarray(lb).size != 1)
            raise sample_error("ModelNet40", f"label {np.asarray(labels[i]).tolist()!r} is not one "
                               "class id", self.cache_path, i, variant)
        self._labels = check_labels("ModelNet40", [np.asarray(lb).reshape(-1)[0] for lb in labels],
                                    self.cache_path, self.num_classes, variant)

    def _write_cache(self, points: list, labels: list, explicit_dir: bool) -> None:
        folder = self.cache_path.parent
        if not explicit_dir and folder.is_dir() and not (folder.stat().st_mode & 0o222):
            # a folder without any write bit is meant to be read-only (root could still write)
            warn_once(f"ModelNet40: {folder} is read-only; keeping the cache {self.cache_path.name} in "
                      "memory. Pass cache_dir to a writable folder to keep it.")
            return
        payload = pickle.dumps([points, labels], protocol=4)
        try:
            atomic_write_bytes(self.cache_path, payload)
        except OSError as e:
            if explicit_dir:
                raise
            warn_once(f"ModelNet40: cannot write the cache {self.cache_path} ({e.strerror}); keeping it "
                      "in memory. Pass cache_dir to a writable folder to keep it.")

    @property
    def labels(self) -> np.ndarray:
        """int64 (len,) class labels."""
        return self._labels

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        """The cached (n_points, 6) float32 array and label, unnormalised (for few-shot folds)."""
        return self._points[index], int(self._labels[index])

    def __len__(self) -> int:
        return len(self._points)

    def __getitem__(self, index: int) -> dict:
        return _cloud_item(self._points[index], self._labels[index], self.n_points, self.use_normals,
                           self._rng.get() if self.split == "train" else None)


def _cloud_item(pts: np.ndarray, label: Any, n_points: Optional[int], use_normals: bool,
                rng: Optional[np.random.Generator]) -> dict:
    """A ModelNet sample: the first ``n_points`` points (all when None), xyz normalised to the unit
    sphere (normals kept with ``use_normals``), points shuffled with ``rng`` when given (training)."""
    pts = pts[:n_points]
    xyz = normalize_unit_sphere(pts[:, :3])
    out = np.concatenate([xyz, pts[:, 3:6]], axis=1) if use_normals else xyz
    if rng is not None:
        out = out[rng.permutation(out.shape[0])]
    return {"points": torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)),
            "label": torch.tensor(int(label), dtype=torch.int64)}


# ----------------------------------------------------------------------------------------- few-shot


def fewshot_setting_dir(way: int, shot: int) -> str:
    """``'5way_10shot'``: the folder of one setting, as the reference loaders and fold generator
    (Point-MAE / Point-BERT ``ModelNetDatasetFewShot.py``) spell it."""
    return f"{int(way)}way_{int(shot)}shot"


def legacy_fewshot_setting_dir(way: int, shot: int) -> str:
    """``'5way10shot'``: the spelling clora3d wrote before it matched the reference (still read)."""
    return f"{int(way)}way{int(shot)}shot"


_LEGACY_WARNED: set = set()


def fewshot_fold_path(root: Union[str, Path], way: int, shot: int, fold: int) -> Path:
    """The fold pickle of (way, shot, fold) under ``root``.

    ``<root>/{way}way_{shot}shot/{fold}.pkl`` (reference layout) when it exists; else the old
    clora3d spelling ``<root>/{way}way{shot}shot/{fold}.pkl`` when that exists (with a one-line
    warning, once per folder); else the reference path (which does not exist: callers name it in
    their error).
    """
    root = Path(root)
    ref = root / fewshot_setting_dir(way, shot) / f"{int(fold)}.pkl"
    if ref.is_file():
        return ref
    old = root / legacy_fewshot_setting_dir(way, shot) / f"{int(fold)}.pkl"
    if old.is_file():
        if old.parent not in _LEGACY_WARNED:
            _LEGACY_WARNED.add(old.parent)
            warn_once(f"ModelNetFewShot: reading {old.parent} (old clora3d spelling); rename it to "
                      f"{ref.parent} (the reference layout)")
        return old
    return ref


def _episodes(train: tuple[list, np.ndarray], test: tuple[list, np.ndarray], way: int, shot: int,
              eval_sample: int, rng: np.random.Generator) -> dict:
    """Reference episode construction: shuffle the class ids, take `way`; per class `shot` random
    train shapes and `eval_sample` random test shapes; shuffle both lists.

    Only classes with at least `shot` train and `eval_sample` test shapes are candidates (the
    reference asserts this for every drawn class, which always holds on the full ModelNet40).
    """
    tr_pts, tr_lab = train
    te_pts, te_lab = test
    classes = sorted(set(int(c) for c in tr_lab))
    ok = [c for c in classes if (tr_lab == c).sum() >= shot and (te_lab == c).sum() >= eval_sample]
    if len(ok) < way:
        raise ValueError(
            f"few-shot {way}-way {shot}-shot needs {way} classes with >= {shot} train and >= "
            f"{eval_sample} test shapes, but only {len(ok)} of the {len(classes)} classes qualify "
            f"({ok}); lower `way`/`shot`/`eval_sample` or use more data")
    keys = list(ok)
    rng.shuffle(keys)
    out_train, out_test = [], []
    for ep, c in enumerate(keys[:way]):
        tr_idx = np.flatnonzero(tr_lab == c)
        te_idx = np.flatnonzero(te_lab == c)
        for i in rng.permutation(tr_idx)[:shot]:
            out_train.append((np.asarray(tr_pts[i], dtype=np.float32), ep, np.int32(c)))
        for i in rng.permutation(te_idx)[:eval_sample]:
            out_test.append((np.asarray(te_pts[i], dtype=np.float32), ep, np.int32(c)))
    order_tr, order_te = rng.permutation(len(out_train)), rng.permutation(len(out_test))
    return {"train": [out_train[i] for i in order_tr], "test": [out_test[i] for i in order_te]}


def write_fewshot_folds_from_arrays(train: tuple[list, np.ndarray], test: tuple[list, np.ndarray],
                                    out_root: Union[str, Path], ways: Sequence[int] = (5, 10),
                                    shots: Sequence[int] = (10, 20), folds: int = 10,
                                    eval_sample: int = 20, seed: int = 0) -> list[Path]:
    """Write ``{way}way_{shot}shot/{fold}.pkl`` (the reference layout) for every setting from
    in-memory (points, labels)."""
    out_root = Path(out_root)
    written = []
    for way in ways:
        for shot in shots:
            for fold in range(folds):
                rng = np.random.default_rng([seed, way, shot, fold])
                ep = _episodes(train, test, way, shot, eval_sample, rng)
                path = out_root / fewshot_setting_dir(way, shot) / f"{fold}.pkl"
                atomic_write_bytes(path, pickle.dumps(ep, protocol=4))
                written.append(path)
    return written


def generate_fewshot_folds(modelnet_root_or_dataset: Union[str, Path, tuple],
                           out_root: Union[str, Path], ways: Sequence[int] = (5, 10),
                           shots: Sequence[int] = (10, 20), folds: int = 10, eval_sample: int = 20,
                           seed: int = 0, n_points: int = 8192,
                           cache_dir: Optional[Union[str, Path]] = None) -> list[Path]:
    """Build the few-shot folds from ModelNet40 (the released pickles' structure).

    ``modelnet_root_or_dataset`` is a ``modelnet40_normal_resampled`` folder (its
    ``modelnet40_{train,test}_{n_points}pts_fps.dat`` caches are used/built) or a pair
    ``(train_dataset, test_dataset)`` of :class:`ModelNet40`. Fold ``f`` of setting (way, shot) is
    drawn from ``np.random.default_rng([seed, way, shot, f])``, so each file is reproducible on
    its own. Returns the written paths.
    """
    src = modelnet_root_or_dataset
    if isinstance(src, (tuple, list)):
        tr_ds, te_ds = src
    else:
        tr_ds = ModelNet40(src, "train", n_points=n_points, cache_dir=cache_dir)
        te_ds = ModelNet40(src, "test", n_points=n_points, cache_dir=cache_dir)
    train = ([tr_ds.raw(i)[0] for i in range(len(tr_ds))], np.asarray(tr_ds.labels))
    test = ([te_ds.raw(i)[0] for i in range(len(te_ds))], np.asarray(te_ds.labels))
    return write_fewshot_folds_from_arrays(train, test, out_root, ways, shots, folds, eval_sample, seed)


class ModelNetFewShot(Dataset):
    """One few-shot fold: ``<root>/{way}way_{shot}shot/{fold}.pkl`` entry ``split`` ('train'|'test').

    The folder spelling is the reference's (``5way_10shot``); the old clora3d spelling
    ``5way10shot`` is still read, with a warning (:func:`fewshot_fold_path`).

    Items ``{"points": float32 (n_points, 3), "label": int64 episode label 0..way-1}``; xyz
    unit-sphere normalised, train point order shuffled. ``original_labels[e]`` is the ModelNet40
    class id of episode label ``e``. ``n_points=None`` keeps every point in the pickle.
    """

    def __init__(self, root: Union[str, Path], way: int, shot: int, fold: int, split: str,
                 n_points: Optional[int] = None, use_normals: bool = False, seed: int = 0) -> None:
        self.root = Path(root)
        self.split = check_split("ModelNetFewShot", split, ("train", "test"))
        for k, v in (("way", way), ("shot", shot), ("fold", fold)):
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"ModelNetFewShot: {k} must be a non-negative int, got {v!r}")
        self.way, self.shot, self.fold = int(way), int(shot), int(fold)
        self.n_points = n_points
        self.use_normals = bool(use_normals)
        self._rng = WorkerRNG(seed)
        variant = f"{fewshot_setting_dir(self.way, self.shot)} fold {self.fold}"
        self.path = fewshot_fold_path(self.root, self.way, self.shot, self.fold)
        if not self.path.is_file():
            raise data_error("ModelNetFewShot", "missing fold file (expected path)", self.path,
                             variant=variant)
        data = safe_load(self.path)
        if not isinstance(data, dict) or split not in data:
            raise data_error("ModelNetFewShot", f"malformed fold (expected a dict with 'train' and "
                             f"'test')", self.path, variant=variant)
        entries = data[split]
        variant = f"{variant} {split}"
        if not isinstance(entries, (list, tuple)):
            raise sample_error("ModelNetFewShot", f"'{split}' holds a {type(entries).__name__}, "
                               "expected a list of (points, episode_label, original_label)",
                               self.path, variant=variant)
        for i, e in enumerate(entries):
            if not isinstance(e, (list, tuple)) or len(e) < 3:
                raise sample_error("ModelNetFewShot", "malformed entry, expected a (points, "
                                   "episode_label, original_label) tuple", self.path, i, variant)
        # every entry is checked once, here: shape, finiteness, integer labels
        self._points = check_clouds("ModelNetFewShot", [e[0] for e in entries], self.path,
                                    min_points=n_points or 1, cols=6 if self.use_normals else 3,
                                    variant=variant)
        self._labels = check_labels("ModelNetFewShot", [e[1] for e in entries], self.path, self.way,
                                    variant)
        origs = check_labels("ModelNetFewShot", [e[2] for e in entries], self.path, None, variant)
        orig = {int(a): int(b) for a, b in zip(self._labels, origs)}
        self.num_classes = self.way
        self.original_labels = [orig.get(i, -1) for i in range(self.way)]
        self.class_names = None

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._points)

    def __getitem__(self, index: int) -> dict:
        return _cloud_item(self._points[index], self._labels[index], self.n_points, self.use_normals,
                           self._rng.get() if self.split == "train" else None)

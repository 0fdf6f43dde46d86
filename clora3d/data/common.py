"""Helpers shared by the data set loaders: expected layouts, errors, seeding, normalisation, FPS."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from clora3d.errors import ConfigError, DataError

README_HINT = "See data/README.md for where to get each archive and how to place it."

# Short trees printed in every DataError so the user sees at once what was expected.
LAYOUTS: dict[str, str] = {
    "ModelNet40": """\
<root>/                                   (e.g. data/ModelNet/modelnet40_normal_resampled)
  modelnet40_shape_names.txt              40 class names, one a line (label = line index)
  modelnet40_train.txt, modelnet40_test.txt   shape ids, e.g. airplane_0001
  modelnet10_{shape_names,train,test}.txt (only for num_category: 10)
  airplane/airplane_0001.txt ...          lines "x,y,z,nx,ny,nz"
  modelnet40_{train,test}_8192pts_fps.dat (optional cache; built from the txt files when missing)""",
    "ModelNetFewShot": """\
<root>/                                   (e.g. data/ModelNetFewshot)
  5way_10shot/0.pkl ... 9.pkl              (reference spelling; the old 5way10shot/ is still read)
  5way_20shot/  10way_10shot/  10way_20shot/
  (make them with clora3d.data.generate_fewshot_folds or tools/make_synthetic.py)""",
    "ScanObjectNN": """\
<root>/                                   (e.g. data/ScanObjectNN)
  main_split/                             OBJ_BG and PB_T50_RS
    training_objectdataset.h5, test_objectdataset.h5                                  (OBJ_BG)
    training_objectdataset_augmentedrot_scale75.h5, test_objectdataset_augmentedrot_scale75.h5 (PB_T50_RS)
  main_split_nobg/                        OBJ_ONLY
    training_objectdataset.h5, test_objectdataset.h5""",
    "ShapeNetPart": """\
<root>/   shapenetcore_partanno_segmentation_benchmark_v0_normal  (or the original ..._v0 release)
  synsetoffset2category.txt               16 lines "Name<TAB>synset"
  train_test_split/shuffled_{train,val,test}_file_list.json   "shape_data/<synset>/<id>"
  <synset>/<id>.txt                       _v0_normal: "x y z nx ny nz part" (global part 0..49)
  or <synset>/points/<id>.pts + <synset>/points_label/<id>.seg   v0: "x y z" + part 1..k per category""",
    "ShapeNet55": """\
<root>/                                   (e.g. data/ShapeNet55-34)
  ShapeNet-55/train.txt, ShapeNet-55/test.txt   lines "<synset>-<model_id>.npy"
  shapenet_pc/<synset>-<model_id>.npy     (N, 3) float arrays (8192 points in the release)""",
}


def data_error(dataset: str, what: str, path: Any = None, variant: Optional[str] = None) -> DataError:
    """Build the one DataError the loaders raise: what is wrong, which variant, expected layout."""
    msg = f"{dataset}"
    if variant:
        msg += f" (variant {variant})"
    msg += f": {what}"
    if path is not None:
        msg += f": {path}"
    msg += f"\nExpected layout:\n{LAYOUTS[dataset]}\n{README_HINT}"
    return DataError(msg)


def sample_error(dataset: str, what: str, path: Any, index: Optional[int] = None,
                 variant: Optional[str] = None) -> DataError:
    """A DataError for the content of one sample of a file (no layout block: the layout is fine)."""
    where = f"sample {index} of {path}" if index is not None else f"{path}"
    var = f" (variant {variant})" if variant else ""
    return DataError(f"{dataset}{var}: {where}: {what}; fix or re-create the file (see data/README.md)")


def check_labels(dataset: str, labels: Any, path: Any, num_classes: Optional[int],
                 variant: Optional[str] = None) -> np.ndarray:
    """int64 (N,) labels from numbers that must be finite integers in ``0..num_classes-1``; a
    fractional label (3.7) is an error naming its sample, never truncated."""
    try:
        lab = np.asarray(labels)
        if lab.dtype == object:
            lab = np.asarray([np.asarray(x).reshape(-1)[0] if np.asarray(x).size == 1 else np.nan
                              for x in lab.reshape(-1)], dtype=np.float64)
        if lab.dtype.kind not in "biuf":
            raise TypeError(f"labels of type {lab.dtype}")
        lab = lab.reshape(-1).astype(np.float64) if lab.dtype.kind == "f" else lab.reshape(-1)
    except (TypeError, ValueError) as e:
        raise sample_error(dataset, f"labels are not numbers ({e})", path, variant=variant) from None
    if lab.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(lab) | (lab != np.round(lab)))
        if bad.size:
            raise sample_error(dataset, f"label {float(lab[bad[0]])!r} is not an integer class id "
                               f"({bad.size} such labels)", path, int(bad[0]), variant)
    lab = lab.astype(np.int64)
    if num_classes is not None and lab.size:
        bad = np.flatnonzero((lab < 0) | (lab >= num_classes))
        if bad.size:
            raise sample_error(dataset, f"label {int(lab[bad[0]])} outside 0..{num_classes - 1} "
                               f"({bad.size} such labels)", path, int(bad[0]), variant)
    return lab


def check_clouds(dataset: str, clouds: Any, path: Any, *, min_points: int = 1, cols: int = 3,
                 variant: Optional[str] = None) -> list:
    """float32 (N_i, >=cols) arrays from a list of clouds, each checked once: a numeric 2-D array
    with at least ``cols`` columns and ``min_points`` rows, every value finite. Errors name the
    sample and the file."""
    out = []
    for i, c in enumerate(clouds):
        try:
            a = np.asarray(c)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"values of type {a.dtype}")
            a = a.astype(np.float32, copy=False)
        except (TypeError, ValueError) as e:
            raise sample_error(dataset, f"not a numeric point array ({e})", path, i, variant) from None
        if a.ndim != 2 or a.shape[1] < cols or a.shape[0] == 0:
            raise sample_error(dataset, f"cloud has shape {a.shape}, expected (points, >= {cols})",
                               path, i, variant)
        if a.shape[0] < min_points:
            raise sample_error(dataset, f"cloud has {a.shape[0]} points, fewer than "
                               f"n_points={min_points}", path, i, variant)
        out.append(a)
    _check_finite(dataset, out, path, variant)
    return out


def _check_finite(dataset: str, clouds: list, path: Any, variant: Optional[str]) -> None:
    for i, a in enumerate(clouds):
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise sample_error(dataset, f"non-finite value {a[tuple(bad)]} at point {int(bad[0])}",
                               path, i, variant)


def check_split(dataset: str, split: str, allowed: tuple[str, ...]) -> str:
    if split not in allowed:
        raise ConfigError(f"{dataset}: split must be one of {list(allowed)}, got {split!r}")
    return split


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points in float64, centred on their centroid and divided by the largest radius (the
    data sets' and inference's normalisation; all points at one place or no points: only centred)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return xyz
    xyz = xyz - xyz.mean(axis=0, keepdims=True)
    r = float(np.sqrt((xyz**2).sum(axis=1)).max())
    return xyz / r if r > 0 else xyz


class WorkerRNG:
    """Numpy generator that is different in every DataLoader worker and every epoch.

    The stream is keyed on (dataset seed, ``torch.initial_seed()``): inside a worker that is the
    worker seed DataLoader draws from the main process RNG for every epoch, so ``torch.manual_seed``
    in the main process makes a run reproducible; in the main process (num_workers=0) one stream is
    kept and advances from epoch to epoch.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._key: Optional[int] = None
        self._gen: Optional[np.random.Generator] = None

    def get(self) -> np.random.Generator:
        key = torch.initial_seed() % (2**63)
        if self._gen is None or key != self._key:
            self._gen = np.random.default_rng([self.seed, key])
            self._key = key
        return self._gen

    def __getstate__(self) -> dict:  # a fresh stream in each worker process
        return {"seed": self.seed, "_key": None, "_gen": None}


def furthest_point_sample_np(xyz: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """FPS indices (n,) of one cloud (N,3) via clora3d.ops (batched torch)."""
    return furthest_point_sample_batch(xyz[None], n, [start])[0]


def furthest_point_sample_batch(xyz: np.ndarray, n: int, starts: list[int]) -> np.ndarray:
    """FPS indices (B,n) of clouds (B,N,3) with one start index per cloud."""
    t = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
    starts_t = torch.as_tensor(starts, dtype=torch.long)
    if bool((starts_t == 0).all()):
        return _ops_fps(t, n, 0).numpy()
    # rotate each cloud so that its start point comes first, then undo the rotation on the indices
    N = t.shape[1]
    perm = (torch.arange(N)[None, :] + starts_t[:, None]) % N
    rolled = torch.gather(t, 1, perm[..., None].expand(-1, -1, 3))
    idx = _ops_fps(rolled, n, 0)
    return torch.gather(perm, 1, idx).numpy()


def _ops_fps(xyz: torch.Tensor, n: int, start: int) -> torch.Tensor:
    try:
        from clora3d.ops import furthest_point_sample
    except ImportError:  # TEMP shim until clora3d.ops lands
        return _fps_shim(xyz, n, start)
    return furthest_point_sample(xyz, n, start=start)


def _fps_shim(xyz: torch.Tensor, n: int, start: int) -> torch.Tensor:
    # TEMP shim until clora3d.ops lands: exact FPS, first index `start`, ties -> lower index.
    B, N, _ = xyz.shape
    idx = torch.zeros(B, n, dtype=torch.long)
    dist = torch.full((B, N), float("inf"), dtype=xyz.dtype)
    cur = torch.full((B,), start, dtype=torch.long)
    ar = torch.arange(B)
    for i in range(n):
        idx[:, i] = cur
        d = ((xyz - xyz[ar, cur][:, None, :]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        cur = dist.argmax(dim=1)
    return idx


def warn_once(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def read_text_cloud(path: Path, dataset: str, cols: int, delimiter: Optional[str]) -> np.ndarray:
    """Parse a text point file quickly into float32 (N, cols); DataError when malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise data_error(dataset, "missing shape file", path) from None
    except IsADirectoryError:
        raise sample_error(dataset, "is a directory where a shape file (text, one point per line) "
                           "belongs", path) from None
    except UnicodeDecodeError as e:
        raise sample_error(dataset, f"not a text shape file (binary or not UTF-8: invalid byte at "
                           f"position {e.start})", path) from None
    except OSError as e:
        raise sample_error(dataset, f"cannot read shape file ({e.strerror or e})", path) from None
    if delimiter:
        text = text.replace(delimiter, " ")
    try:
        arr = np.array(text.split(), dtype=np.float32)
    except ValueError as e:
        raise data_error(dataset, f"malformed shape file ({e})", path) from None
    stripped = text.strip()
    lines = stripped.count("\n") + 1 if stripped else 0
    if lines * cols != arr.size:  # blank lines inside the file: count exactly
        lines = sum(1 for ln in text.splitlines() if ln.strip())
    if lines == 0 or arr.size != lines * cols:
        raise data_error(dataset, f"malformed shape file (expected {cols} numbers per line, "
                         f"got {arr.size} numbers on {lines} lines)", path)
    arr = arr.reshape(lines, cols)
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise sample_error(dataset, f"non-finite value (nan/inf) on point line {row + 1}", path)
    return arr

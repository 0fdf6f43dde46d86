"""Read users' own point cloud files into float32 (N, 3) xyz (+ (N, 3) normals when present).

.ply / .pcd / .xyz / .pts go through open3d (imported lazily); .npy / .npz / .txt / .csv through
numpy. Text/array files: columns 0-2 are xyz, columns 3-5 (when there are >= 6) are normals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

_OPEN3D_EXT = {".ply", ".pcd", ".xyz", ".pts", ".xyzn", ".xyzrgb"}
_NUMPY_EXT = {".npy", ".npz", ".txt", ".csv"}


def _validate(xyz: np.ndarray, normals: Optional[np.ndarray], path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{path}: expected points of shape (N, 3), got {xyz.shape}")
    if xyz.shape[0] == 0:
        raise ValueError(f"{path}: the point cloud is empty (0 points)")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz)).any(axis=1).sum())
        raise ValueError(f"{path}: {bad} of {xyz.shape[0]} points have NaN/inf coordinates; clean the file")
    if normals is not None:
        if normals.shape != xyz.shape:
            raise ValueError(f"{path}: normals of shape {normals.shape} do not match points {xyz.shape}")
        if not np.isfinite(normals).all():
            raise ValueError(f"{path}: normals contain NaN/inf values")
    return (np.ascontiguousarray(xyz, dtype=np.float32),
            None if normals is None else np.ascontiguousarray(normals, dtype=np.float32))


def _from_array(arr: np.ndarray, path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"{path}: the point cloud is empty (0 points)")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{path}: expected an array of shape (N, 3) or (N, 6) (xyz [+ normals]), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    normals = arr[:, 3:6] if arr.shape[1] >= 6 else None
    return _validate(arr[:, :3], normals, path)


def read_point_cloud(path: Union[str, Path]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a point cloud file -> (xyz float32 (N, 3), normals float32 (N, 3) or None).

    Raises FileNotFoundError for a missing file and ValueError for an unsupported extension or an
    empty, non-finite or wrongly shaped cloud.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    ext = path.suffix.lower()
    if ext in _OPEN3D_EXT:
        try:
            import open3d as o3d
        except ImportError:
            raise ImportError(f"reading {ext} files needs open3d: pip install open3d "
                              "(or convert the file to .npy/.txt)") from None
        fmt = {".pts": "xyz"}.get(ext, "auto")
        pcd = o3d.io.read_point_cloud(str(path), format=fmt)
        xyz = np.asarray(pcd.points, dtype=np.float64)
        if xyz.shape[0] == 0:
            raise ValueError(f"{path}: open3d read 0 points (empty or unreadable {ext} file)")
        normals = np.asarray(pcd.normals, dtype=np.float64) if pcd.has_normals() else None
        return _validate(xyz, normals, path)
    if ext == ".npy":
        return _from_array(np.load(path, allow_pickle=False), path)
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise ValueError(f"{path}: the .npz archive holds no array")
            key = next((k for k in ("points", "xyz", "pos", "data") if k in keys), keys[0])
            arr = z[key]
            if arr.ndim == 2 and arr.shape[1] == 3:
                nk = next((k for k in ("normals", "normal") if k in keys), None)
                if nk is not None:
                    arr = np.concatenate([arr, z[nk]], axis=1)
        return _from_array(arr, path)
    if ext in (".txt", ".csv"):
        text = path.read_text()
        delim = "," if "," in text.split("\n", 1)[0] else None
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise ValueError(f"{path}: the point cloud is empty (0 points)")
        try:
            arr = np.loadtxt(lines, delimiter=delim, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise ValueError(f"{path}: cannot parse as numeric columns ({e})") from None
        return _from_array(arr, path)
    raise ValueError(f"{path}: unsupported extension {ext!r}; supported: "
                     f"{sorted(_OPEN3D_EXT | _NUMPY_EXT)}")

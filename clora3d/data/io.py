"""Read and write users' point cloud files without open3d.

``read_point_cloud(path) -> (xyz float32 (N, 3), normals float32 (N, 3) or None)``

=================  =====================================================================
extension          how it is read
=================  =====================================================================
.ply               plyfile (ascii, binary little and big endian); the ``vertex`` element
                   must have x, y and z; nx, ny, nz become the normals
.pcd               own reader: DATA ascii and binary (the PCL formats); binary_compressed
                   through open3d when it is installed. NaN points (PCL's "invalid point"
                   of organised clouds) are dropped
.npy / .npz        numpy, never unpickling (object arrays are refused)
.txt .csv .xyzn    numeric text columns: 0-2 xyz, 3-5 normals when there are >= 6 columns
.xyz .pts .xyzrgb  numeric text columns: 0-2 xyz, the rest (intensity, colours) ignored; an
                   Open3D-style first line holding only the point count is skipped
=================  =====================================================================

``write_point_cloud(path, xyz, normals=None, *, binary=True, byte_order="<")`` writes the same
formats (atomically: a failed write never leaves a truncated file under the final name).

Every malformed file is one ``ValueError`` that starts with the file's path and says what is wrong.
"""
from __future__ import annotations

import io as _io
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from clora3d.optional import require

PathLike = Union[str, Path]

_TEXT_NORMALS_EXT = {".txt", ".csv", ".xyzn"}
_TEXT_XYZ_EXT = {".xyz", ".pts", ".xyzrgb"}
SUPPORTED_EXTENSIONS = sorted({".ply", ".pcd", ".npy", ".npz"} | _TEXT_NORMALS_EXT | _TEXT_XYZ_EXT)


# ------------------------------------------------------------------------------------------------
# validation shared by every format
# ------------------------------------------------------------------------------------------------
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


def _check_real_numeric(arr: np.ndarray, path: Path) -> None:
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{path}: expected a real numeric array (float or int), got dtype {arr.dtype}")


def _from_array(arr: np.ndarray, path: Path, *, normals_from_columns: bool = True
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    arr = np.asarray(arr)
    _check_real_numeric(arr, path)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"{path}: the point cloud is empty (0 points)")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{path}: expected an array of shape (N, 3) or (N, 6) (xyz [+ normals]), got {arr.shape}")
    arr = arr.astype(np.float64)
    normals = arr[:, 3:6] if normals_from_columns and arr.shape[1] >= 6 else None
    return _validate(arr[:, :3], normals, path)


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                         f"is it a binary file with a text extension?") from None


def _parse_columns(lines: list[str], path: Path, delim: Optional[str]) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=delim, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: cannot parse as numeric columns ({e})") from None


def _read_text_cloud(path: Path, ext: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    text = _read_text(path)
    first = text.split("\n", 1)[0]
    delim = "," if "," in first else None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
    if lines and delim == "," and not re.match(r"^\s*[-+0-9.eE]", lines[0]):
        lines = lines[1:]  # a CSV header row such as "x,y,z"
    if ext in _TEXT_XYZ_EXT and len(lines) > 1 and re.fullmatch(r"\s*\d+\s*", lines[0]) \
            and int(lines[0]) == len(lines) - 1:
        lines = lines[1:]  # Open3D-style .pts: the first line is the point count
    if not lines:
        raise ValueError(f"{path}: the point cloud is empty (0 points)")
    arr = _parse_columns(lines, path, delim)
    return _from_array(arr, path, normals_from_columns=ext in _TEXT_NORMALS_EXT)


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"{path}: not a readable .npy file (it does not start with the .npy magic bytes)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "Object arrays" in str(e):
            raise ValueError(f"{path}: holds an object (pickled) array, which is never loaded; "
                             f"save a numeric array of shape (N, 3) or (N, 6)") from None
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    except (EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e or 'truncated'})") from None


def _read_npz(path: Path) -> np.ndarray:
    try:
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
            return arr
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable .npz archive of numeric arrays ({e})") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError from a truncated archive
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None


def _read_ply(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises PlyParseError subclasses, struct/ValueError on bad data
        raise ValueError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") from None
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise ValueError(f"{path}: the PLY file has no 'vertex' element (elements: {names})")
    v = ply["vertex"].data
    props = list(v.dtype.names or ())
    missing = [c for c in ("x", "y", "z") if c not in props]
    if missing:
        raise ValueError(f"{path}: the PLY vertex element lacks {', '.join(missing)} "
                         f"(its properties: {', '.join(props) or 'none'}); a point cloud needs x, y and z")
    for c in ("x", "y", "z"):
        if v.dtype[c].kind not in "fiu":
            raise ValueError(f"{path}: the PLY property {c} is not a scalar number (type {v.dtype[c]})")
    xyz = np.stack([np.asarray(v[c], dtype=np.float64) for c in ("x", "y", "z")], axis=1)
    normals = None
    if all(c in props for c in ("nx", "ny", "nz")):
        normals = np.stack([np.asarray(v[c], dtype=np.float64) for c in ("nx", "ny", "nz")], axis=1)
    return _validate(xyz.reshape(-1, 3), None if normals is None else normals.reshape(-1, 3), path)


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4",
              ("I", 8): "i8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _parse_pcd_header(raw: bytes, path: Path) -> tuple[dict[str, list[str]], int]:
    """Header fields and the byte offset where the data starts."""
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: not a PCD file (no DATA line in the header)")
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a PCD file (binary bytes in the header)") from None
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            return header, pos
        if len(header) > 64:
            raise ValueError(f"{path}: not a PCD file (no DATA line in the header)")


def _read_pcd(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    raw = path.read_bytes()
    header, offset = _parse_pcd_header(raw, path)
    for key in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if key not in header:
            raise ValueError(f"{path}: the PCD header has no {key} line")
    fields = header["FIELDS"]
    n_f = len(fields)
    counts = [int(c) for c in header.get("COUNT", ["1"] * n_f)]
    if not (len(header["SIZE"]) == len(header["TYPE"]) == len(counts) == n_f):
        raise ValueError(f"{path}: the PCD header's FIELDS, SIZE, TYPE and COUNT have different lengths")
    try:
        if "POINTS" in header:
            n_points = int(header["POINTS"][0])
        else:
            n_points = int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{path}: the PCD header has no valid POINTS (or WIDTH/HEIGHT) count") from None
    missing = [c for c in ("x", "y", "z") if c not in fields]
    if missing:
        raise ValueError(f"{path}: the PCD file has no field {', '.join(missing)} (fields: {' '.join(fields)})")
    # column index of the first value of each field once COUNTs are expanded
    starts = dict(zip(fields, np.cumsum([0] + counts[:-1]).tolist()))
    kind = header["DATA"][0].lower() if header["DATA"] else ""
    if kind == "ascii":
        text = raw[offset:].decode("ascii", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if n_points == 0 or not lines:
            raise ValueError(f"{path}: the point cloud is empty (0 points)")
        table = _parse_columns(lines, path, None)
        if table.shape[1] < sum(counts):
            raise ValueError(f"{path}: PCD rows have {table.shape[1]} values, the header declares {sum(counts)}")
        cols = {f: table[:, starts[f]] for f in fields}
    elif kind == "binary":
        dtype = []
        for f, s, t, c in zip(fields, header["SIZE"], header["TYPE"], counts):
            code = _PCD_TYPES.get((t.upper(), int(s)))
            if code is None:
                raise ValueError(f"{path}: unsupported PCD field type {t} of size {s} for field {f}")
            dtype.append((f"f{len(dtype)}", "<" + code, (c,)) if c > 1 else (f"f{len(dtype)}", "<" + code))
        dt = np.dtype(dtype)
        need = n_points * dt.itemsize
        if len(raw) - offset < need:
            raise ValueError(f"{path}: truncated PCD data: {len(raw) - offset} bytes for {n_points} points "
                             f"of {dt.itemsize} bytes")
        if n_points == 0:
            raise ValueError(f"{path}: the point cloud is empty (0 points)")
        rec = np.frombuffer(raw, dtype=dt, count=n_points, offset=offset)
        cols = {f: np.asarray(rec[f"f{i}"], dtype=np.float64).reshape(n_points, -1)[:, 0]
                for i, f in enumerate(fields)}
    elif kind == "binary_compressed":
        o3d = require("open3d", f"reading {path.name} (a binary_compressed PCD file)")
        pcd = o3d.io.read_point_cloud(str(path), format="pcd")
        xyz = np.asarray(pcd.points, dtype=np.float64)
        normals = np.asarray(pcd.normals, dtype=np.float64) if pcd.has_normals() else None
        keep = np.isfinite(xyz).all(axis=1) if xyz.size else np.zeros(0, bool)
        return _validate(xyz[keep], None if normals is None else normals[keep], path)
    else:
        raise ValueError(f"{path}: unknown PCD DATA kind {kind!r} (expected ascii, binary or binary_compressed)")
    xyz = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
    normals = None
    if all(c in cols for c in ("normal_x", "normal_y", "normal_z")):
        normals = np.stack([cols["normal_x"], cols["normal_y"], cols["normal_z"]], axis=1)
    keep = ~np.isnan(xyz).any(axis=1)  # PCL marks invalid points of organised clouds with NaN
    if not keep.all():
        xyz = xyz[keep]
        normals = None if normals is None else normals[keep]
    return _validate(xyz, normals, path)


def read_point_cloud(path: PathLike) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a point cloud file -> (xyz float32 (N, 3), normals float32 (N, 3) or None).

    Raises FileNotFoundError for a missing file, IsADirectoryError for a folder, and ValueError
    (starting with the path) for an unsupported extension or a malformed, empty, non-finite or
    wrongly shaped cloud.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, expected a point cloud file", str(path))
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    ext = path.suffix.lower()
    if ext == ".ply":
        return _read_ply(path)
    if ext == ".pcd":
        return _read_pcd(path)
    if ext == ".npy":
        return _from_array(_read_npy(path), path)
    if ext == ".npz":
        return _from_array(_read_npz(path), path)
    if ext in _TEXT_NORMALS_EXT or ext in _TEXT_XYZ_EXT:
        return _read_text_cloud(path, ext)
    raise ValueError(f"{path}: unsupported extension {ext!r}; supported: {SUPPORTED_EXTENSIONS}")


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------
def _ply_bytes(xyz: np.ndarray, normals: Optional[np.ndarray], binary: bool, byte_order: str) -> bytes:
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    vals = xyz if normals is None else np.concatenate([xyz, normals], axis=1)
    rec = np.empty(len(vals), dtype=[(n, "f4") for n in names])
    for i, n in enumerate(names):
        rec[n] = vals[:, i]
    buf = _io.BytesIO()
    PlyData([PlyElement.describe(rec, "vertex")], text=not binary, byte_order=byte_order).write(buf)
    return buf.getvalue()


def _pcd_bytes(xyz: np.ndarray, normals: Optional[np.ndarray], binary: bool) -> bytes:
    fields = ["x", "y", "z"] + (["normal_x", "normal_y", "normal_z"] if normals is not None else [])
    vals = (xyz if normals is None else np.concatenate([xyz, normals], axis=1)).astype("<f4")
    n, k = vals.shape
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
            f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * k)}\nTYPE {' '.join(['F'] * k)}\n"
            f"COUNT {' '.join(['1'] * k)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
            f"DATA {'binary' if binary else 'ascii'}\n").encode("ascii")
    if binary:
        return head + np.ascontiguousarray(vals).tobytes()
    buf = _io.StringIO()
    np.savetxt(buf, vals, fmt="%.9g")
    return head + buf.getvalue().encode("ascii")


def write_point_cloud(path: PathLike, xyz: np.ndarray, normals: Optional[np.ndarray] = None, *,
                      binary: bool = True, byte_order: str = "<") -> Path:
    """Write xyz (N, 3) [+ normals (N, 3)] as float32 in the format of ``path``'s extension.

    ``binary`` selects binary vs ascii PLY / PCD; ``byte_order`` ("<" little, ">" big endian)
    applies to binary PLY (PCD binary is little endian). The write is atomic.
    """
    from clora3d.storage import atomic_write_bytes

    path = Path(path)
    xyz = np.asarray(xyz, dtype=np.float64)
    normals = None if normals is None else np.asarray(normals, dtype=np.float64)
    _validate(xyz, normals, path)
    if byte_order not in ("<", ">"):
        raise ValueError(f"byte_order must be '<' or '>', got {byte_order!r}")
    ext = path.suffix.lower()
    if ext == ".ply":
        data = _ply_bytes(xyz, normals, binary, byte_order)
    elif ext == ".pcd":
        data = _pcd_bytes(xyz, normals, binary)
    elif ext in (".npy", ".npz"):
        arr = (xyz if normals is None else np.concatenate([xyz, normals], axis=1)).astype(np.float32)
        buf = _io.BytesIO()
        if ext == ".npy":
            np.save(buf, arr)
        else:
            np.savez(buf, **({"points": arr} if normals is None else
                             {"points": arr[:, :3], "normals": arr[:, 3:]}))
        data = buf.getvalue()
    elif ext in _TEXT_NORMALS_EXT or ext in (".xyz", ".pts"):
        if normals is not None and ext not in _TEXT_NORMALS_EXT:
            raise ValueError(f"{path}: {ext} files hold xyz only; use .txt, .xyzn, .ply or .pcd to keep normals")
        arr = xyz if normals is None else np.concatenate([xyz, normals], axis=1)
        buf = _io.StringIO()
        np.savetxt(buf, arr.astype(np.float32), fmt="%.9g", delimiter="," if ext == ".csv" else " ")
        data = buf.getvalue().encode("ascii")
    else:
        raise ValueError(f"{path}: cannot write extension {ext!r}; supported: "
                         f"{sorted(set(SUPPORTED_EXTENSIONS) - {'.xyzrgb'})}")
    return atomic_write_bytes(path, data, what="point cloud")

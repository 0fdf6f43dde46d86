"""Reading and writing users' point cloud files without open3d.

The references are independent of clora3d's reader: PLY and PCD files are built byte by byte from
the format specifications with ``struct`` (ascii, binary little and big endian), PLY files are also
written by plyfile, and open3d cross-checks when it is importable (skipped otherwise).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clora3d.data import read_point_cloud, write_point_cloud
from clora3d.optional import explain_import_failure, try_import

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32).astype(np.float64)
    nrm = rng.normal(size=(50, 3))
    nrm = (nrm / np.linalg.norm(nrm, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    return xyz, nrm


# ------------------------------------------------------------------------------------------------
# hand-built files (the specification is the reference)
# ------------------------------------------------------------------------------------------------
def _ply_by_hand(xyz, nrm, fmt: str, extra_face: bool = False) -> bytes:
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if nrm is not None else [])
    head = ["ply", f"format {fmt} 1.0", "comment made by hand", f"element vertex {len(xyz)}"]
    head += [f"property float {p}" for p in props]
    head += ["property uchar red"]  # an extra property the reader must skip
    if extra_face:
        head += ["element face 1", "property list uchar int vertex_indices"]
    head += ["end_header"]
    body = b""
    rows = xyz if nrm is None else np.concatenate([xyz, nrm], 1)
    if fmt == "ascii":
        body = "".join(" ".join(f"{v:.9g}" for v in r) + " 7\n" for r in rows).encode()
        if extra_face:
            body += b"3 0 1 2\n"
    else:
        e = "<" if fmt == "binary_little_endian" else ">"
        for r in rows:
            body += struct.pack(e + "f" * len(r) + "B", *r, 7)
        if extra_face:
            body += struct.pack(e + "B3i", 3, 0, 1, 2)
    return ("\n".join(head) + "\n").encode() + body


def _pcd_by_hand(xyz, nrm, data: str) -> bytes:
    fields = ["x", "y", "z"] + (["normal_x", "normal_y", "normal_z"] if nrm is not None else []) + ["intensity"]
    k = len(fields)
    head = (
        "VERSION .7\n"
        f"FIELDS {' '.join(fields)}\n"
        f"SIZE {' '.join(['4'] * (k - 1))} 2\n"
        f"TYPE {' '.join(['F'] * (k - 1))} U\n"
        f"COUNT {' '.join(['1'] * k)}\n"
        f"WIDTH {len(xyz)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(xyz)}\nDATA {data}\n"
    )
    rows = xyz if nrm is None else np.concatenate([xyz, nrm], 1)
    if data == "ascii":
        body = "".join(" ".join(f"{v:.9g}" for v in r) + " 3\n" for r in rows).encode()
    else:
        body = b"".join(struct.pack("<" + "f" * len(r) + "H", *r, 3) for r in rows)
    return head.encode() + body


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("with_normals", [True, False])
def test_ply_by_hand(tmp_path: Path, cloud, fmt, with_normals):
    xyz, nrm = cloud
    f = tmp_path / "a.ply"
    f.write_bytes(_ply_by_hand(xyz, nrm if with_normals else None, fmt, extra_face=True))
    p, n = read_point_cloud(f)
    assert p.dtype == np.float32 and p.shape == (50, 3)
    np.testing.assert_array_equal(p, xyz.astype(np.float32))
    if with_normals:
        np.testing.assert_array_equal(n, nrm.astype(np.float32))
    else:
        assert n is None


@pytest.mark.parametrize("data", ["ascii", "binary"])
@pytest.mark.parametrize("with_normals", [True, False])
def test_pcd_by_hand(tmp_path: Path, cloud, data, with_normals):
    xyz, nrm = cloud
    f = tmp_path / "a.pcd"
    f.write_bytes(_pcd_by_hand(xyz, nrm if with_normals else None, data))
    p, n = read_point_cloud(f)
    np.testing.assert_array_equal(p, xyz.astype(np.float32))
    if with_normals:
        np.testing.assert_array_equal(n, nrm.astype(np.float32))
    else:
        assert n is None


def test_pcd_drops_pcl_invalid_points(tmp_path: Path, cloud):
    xyz = cloud[0].copy()
    xyz[[3, 7]] = np.nan  # PCL's marker of an invalid point in an organised cloud
    f = tmp_path / "org.pcd"
    f.write_bytes(_pcd_by_hand(xyz, None, "binary"))
    p, _ = read_point_cloud(f)
    np.testing.assert_array_equal(p, np.delete(cloud[0], [3, 7], axis=0).astype(np.float32))


def test_pcd_binary_truncated_and_bad_header(tmp_path: Path, cloud):
    good = _pcd_by_hand(cloud[0], None, "binary")
    (tmp_path / "short.pcd").write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"short\.pcd: truncated PCD data"):
        read_point_cloud(tmp_path / "short.pcd")
    (tmp_path / "nodata.pcd").write_bytes(b"VERSION .7\nFIELDS x y z\n")
    with pytest.raises(ValueError, match=r"nodata\.pcd: not a PCD file"):
        read_point_cloud(tmp_path / "nodata.pcd")
    (tmp_path / "noz.pcd").write_bytes(b"FIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nPOINTS 1\nDATA ascii\n1 2\n")
    with pytest.raises(ValueError, match=r"noz\.pcd: the PCD file has no field z"):
        read_point_cloud(tmp_path / "noz.pcd")


def test_ply_written_by_plyfile(tmp_path: Path, cloud):
    from plyfile import PlyData, PlyElement

    xyz, nrm = cloud
    rec = np.empty(50, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4")])
    for i, c in enumerate("xyz"):
        rec[c] = xyz[:, i]
        rec["n" + c] = nrm[:, i]
    for text, order in ((True, "="), (False, "<"), (False, ">")):
        PlyData([PlyElement.describe(rec, "vertex")], text=text, byte_order=order).write(str(tmp_path / "p.ply"))
        p, n = read_point_cloud(tmp_path / "p.ply")
        np.testing.assert_array_equal(p, xyz.astype(np.float32))
        np.testing.assert_array_equal(n, nrm.astype(np.float32))


def test_ply_with_only_x_and_y_is_refused(tmp_path: Path):
    """Regression: a header declaring only x and y was read as garbage and accepted."""
    f = tmp_path / "flat.ply"
    f.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nend_header\n5 6\n7 8\n9 10\n"
    )
    with pytest.raises(ValueError, match=r"flat\.ply: the PLY vertex element lacks z \(its properties: x, y\)"):
        read_point_cloud(f)


def test_ply_malformed(tmp_path: Path):
    (tmp_path / "trunc.ply").write_bytes(_ply_by_hand(np.ones((4, 3)), None, "binary_little_endian")[:-6])
    with pytest.raises(ValueError, match=r"trunc\.ply: not a readable PLY file"):
        read_point_cloud(tmp_path / "trunc.ply")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"junk\.ply: not a readable PLY file"):
        read_point_cloud(tmp_path / "junk.ply")
    (tmp_path / "empty.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    with pytest.raises(ValueError, match=r"empty\.ply: the point cloud is empty"):
        read_point_cloud(tmp_path / "empty.ply")


@pytest.mark.parametrize(
    "name,binary,order,normals",
    [
        ("a.ply", True, "<", True),
        ("b.ply", True, ">", False),
        ("c.ply", False, "<", True),
        ("d.pcd", True, "<", True),
        ("e.pcd", False, "<", False),
        ("f.npy", True, "<", True),
        ("g.npz", True, "<", True),
        ("h.txt", True, "<", True),
        ("i.xyz", True, "<", False),
        ("j.csv", True, "<", False),
        ("k.xyzn", True, "<", True),
        ("l.pts", True, "<", False),
    ],
)
def test_write_read_round_trip(tmp_path: Path, cloud, name, binary, order, normals):
    xyz, nrm = cloud
    write_point_cloud(tmp_path / name, xyz, nrm if normals else None, binary=binary, byte_order=order)
    p, n = read_point_cloud(tmp_path / name)
    np.testing.assert_array_equal(p, xyz.astype(np.float32))
    if normals:
        np.testing.assert_array_equal(n, nrm.astype(np.float32))
    else:
        assert n is None
    assert [q.name for q in tmp_path.iterdir()] == [name]  # atomic: no temporary file left


def test_written_ply_header_follows_the_spec(tmp_path: Path, cloud):
    write_point_cloud(tmp_path / "b.ply", cloud[0], binary=True, byte_order=">")
    raw = (tmp_path / "b.ply").read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    assert b"format binary_big_endian 1.0" in head and b"element vertex 50" in head
    np.testing.assert_array_equal(np.frombuffer(body, ">f4").reshape(50, 3), cloud[0].astype(np.float32))


def test_numpy_and_text_formats(tmp_path: Path, cloud):
    xyz, nrm = cloud
    full = np.concatenate([xyz, nrm], 1)
    np.save(tmp_path / "a.npy", full)
    np.save(tmp_path / "b.npy", xyz[None])  # (1, N, 3) is accepted
    np.savez(tmp_path / "c.npz", points=xyz, normals=nrm)
    np.savetxt(tmp_path / "d.txt", full, fmt="%.9g")
    np.savetxt(tmp_path / "e.csv", xyz, fmt="%.9g", delimiter=",", header="x,y,z", comments="")
    np.savetxt(tmp_path / "f.xyzrgb", np.concatenate([xyz, np.full((50, 3), 255.0)], 1), fmt="%.9g")
    (tmp_path / "g.pts").write_text("50\n" + "".join(" ".join(f"{v:.9g}" for v in r) + "\n" for r in xyz))
    for name, has_n in (
        ("a.npy", True),
        ("b.npy", False),
        ("c.npz", True),
        ("d.txt", True),
        ("e.csv", False),
        ("f.xyzrgb", False),
        ("g.pts", False),
    ):
        p, n = read_point_cloud(tmp_path / name)
        assert p.dtype == np.float32 and p.shape == (50, 3), name
        np.testing.assert_array_equal(p, xyz.astype(np.float32))
        if has_n:
            np.testing.assert_array_equal(n, nrm.astype(np.float32))
        else:
            assert n is None, name


def test_real_v0_pts_file(shared_data):
    f = next((shared_data / "shapenetcore_partanno_segmentation_benchmark_v0" / "02691156" / "points").glob("*.pts"))
    p, n = read_point_cloud(f)
    ref = np.array([[float(v) for v in ln.split()] for ln in f.read_text().splitlines() if ln.strip()])
    assert p.shape == (2488, 3) and n is None
    np.testing.assert_array_equal(p, ref.astype(np.float32))


def test_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        read_point_cloud(tmp_path / "nope.npy")
    (tmp_path / "folder.ply").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_point_cloud(tmp_path / "folder.ply")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty"):
        read_point_cloud(tmp_path / "empty.npy")
    bad = np.ones((10, 3))
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="1 of 10 points have NaN"):
        read_point_cloud(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.ones((10, 2)))
    with pytest.raises(ValueError, match=r"\(N, 3\).*\(10, 2\)"):
        read_point_cloud(tmp_path / "flat.npy")
    np.save(tmp_path / "cplx.npy", np.ones((10, 3), dtype=np.complex64))
    with pytest.raises(ValueError, match=r"cplx\.npy: expected a real numeric array.*complex64"):
        read_point_cloud(tmp_path / "cplx.npy")
    np.save(tmp_path / "obj.npy", np.array([[1, 2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy: holds an object \(pickled\) array, which is never loaded"):
        read_point_cloud(tmp_path / "obj.npy")
    (tmp_path / "rand.npy").write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(ValueError, match=r"rand\.npy: not a readable \.npy file"):
        read_point_cloud(tmp_path / "rand.npy")
    (tmp_path / "rand.npz").write_bytes(np.random.default_rng(2).bytes(300))
    with pytest.raises(ValueError, match=r"rand\.npz: not a readable \.npz archive"):
        read_point_cloud(tmp_path / "rand.npz")
    (tmp_path / "latin1.txt").write_bytes("1 2 3 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not a UTF-8 text file \(byte 0xe9"):
        read_point_cloud(tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        read_point_cloud(tmp_path / "blank.txt")
    (tmp_path / "words.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="cannot parse"):
        read_point_cloud(tmp_path / "words.txt")
    (tmp_path / "x.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="unsupported extension '.obj'"):
        read_point_cloud(tmp_path / "x.obj")


# ------------------------------------------------------------------------------------------------
# open3d: optional, cross-check when it loads, a true message when it does not
# ------------------------------------------------------------------------------------------------
def test_open3d_cross_check(tmp_path: Path, cloud):
    o3d, why = try_import("open3d")
    if o3d is None:
        pytest.skip(f"open3d unavailable: {why}")
    xyz, nrm = cloud
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pcd.normals = o3d.utility.Vector3dVector(nrm)
    for ext, ascii_ in (("ply", False), ("ply", True), ("pcd", False), ("pcd", True)):
        assert o3d.io.write_point_cloud(str(tmp_path / f"a.{ext}"), pcd, write_ascii=ascii_)
        p, n = read_point_cloud(tmp_path / f"a.{ext}")
        np.testing.assert_allclose(p, xyz, atol=1e-5)
        np.testing.assert_allclose(n, nrm, atol=1e-5)
        write_point_cloud(tmp_path / f"b.{ext}", xyz, nrm, binary=not ascii_)
        back = o3d.io.read_point_cloud(str(tmp_path / f"b.{ext}"))
        np.testing.assert_allclose(np.asarray(back.points), xyz, atol=1e-6)
        np.testing.assert_allclose(np.asarray(back.normals), nrm, atol=1e-6)


def test_unloadable_open3d_names_the_missing_library():
    err = OSError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")
    msg = explain_import_failure("open3d", err)
    assert msg == (
        "open3d is installed but cannot load: the system library libusb-1.0.so.0 is missing; "
        "install it with `apt-get install libusb-1.0-0` (Debian/Ubuntu)"
    )
    missing = ModuleNotFoundError("No module named 'open3d'", name="open3d")
    assert explain_import_failure("open3d", missing) == "open3d is not installed: pip install open3d"
    assert explain_import_failure("faiss", ModuleNotFoundError("x", name="faiss")).endswith("pip install faiss-cpu")


def test_binary_compressed_pcd_with_broken_open3d(tmp_path: Path):
    """With open3d installed but unloadable (the libusb case, simulated by the test shim that CI
    also uses), the one format that needs open3d says so truthfully, and every other format works."""
    shim = REPO / "tests" / "shims" / "broken_optional"
    f = tmp_path / "c.pcd"
    f.write_bytes(b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS 1\nDATA binary_compressed\n\0\0\0\0")
    code = (
        "import sys\nfrom clora3d.data import read_point_cloud, write_point_cloud\n"
        f"write_point_cloud({str(tmp_path / 'ok.ply')!r}, [[0, 0, 1], [1, 2, 3]])\n"
        f"assert read_point_cloud({str(tmp_path / 'ok.ply')!r})[0].shape == (2, 3)\n"
        f"try:\n    read_point_cloud({str(f)!r})\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {"PYTHONPATH": f"{shim}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "reading c.pcd (a binary_compressed PCD file) needs open3d, but open3d is installed but cannot "
        "load: the system library libusb-1.0.so.0 is missing; install it with `apt-get install "
        "libusb-1.0-0` (Debian/Ubuntu)"
    )

"""Reading users' point cloud files (numpy formats and open3d formats)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clora3d.data import read_point_cloud


@pytest.fixture
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    nrm = rng.normal(size=(50, 3))
    return xyz, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)


def test_numpy_formats(tmp_path: Path, cloud):
    xyz, nrm = cloud
    full = np.concatenate([xyz, nrm], 1)
    np.save(tmp_path / "a.npy", full)
    np.save(tmp_path / "b.npy", xyz[None])  # (1, N, 3) is accepted
    np.savez(tmp_path / "c.npz", points=xyz, normals=nrm)
    np.savetxt(tmp_path / "d.txt", full, fmt="%.7f")
    np.savetxt(tmp_path / "e.csv", xyz, fmt="%.7f", delimiter=",", header="x,y,z")
    for name, has_n in (("a.npy", True), ("b.npy", False), ("c.npz", True), ("d.txt", True), ("e.csv", False)):
        p, n = read_point_cloud(tmp_path / name)
        assert p.dtype == np.float32 and p.shape == (50, 3), name
        np.testing.assert_allclose(p, xyz, atol=1e-6)
        if has_n:
            assert n is not None and n.dtype == np.float32
            np.testing.assert_allclose(n, nrm, atol=1e-6)
        else:
            assert n is None


def test_open3d_formats(tmp_path: Path, cloud):
    o3d = pytest.importorskip("open3d")
    xyz, nrm = cloud
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pcd.normals = o3d.utility.Vector3dVector(nrm)
    for ext in ("ply", "pcd"):
        assert o3d.io.write_point_cloud(str(tmp_path / f"a.{ext}"), pcd)
        p, n = read_point_cloud(tmp_path / f"a.{ext}")
        np.testing.assert_allclose(p, xyz, atol=1e-5)
        np.testing.assert_allclose(n, nrm, atol=1e-5)
    np.savetxt(tmp_path / "b.xyz", xyz, fmt="%.7f")
    np.savetxt(tmp_path / "c.pts", xyz, fmt="%.7f")  # ShapeNetPart v0 style "x y z"
    for name in ("b.xyz", "c.pts"):
        p, n = read_point_cloud(tmp_path / name)
        np.testing.assert_allclose(p, xyz, atol=1e-6)
        assert n is None


def test_real_v0_pts_file(shared_data):
    f = next((shared_data / "shapenetcore_partanno_segmentation_benchmark_v0" / "02691156" / "points").glob("*.pts"))
    p, n = read_point_cloud(f)
    assert p.shape == (2488, 3) and n is None


def test_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        read_point_cloud(tmp_path / "nope.npy")
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
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        read_point_cloud(tmp_path / "blank.txt")
    (tmp_path / "words.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="cannot parse"):
        read_point_cloud(tmp_path / "words.txt")
    (tmp_path / "x.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="unsupported extension '.obj'"):
        read_point_cloud(tmp_path / "x.obj")
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                        "property float y\nproperty float z\nend_header\n")
    pytest.importorskip("open3d")
    with pytest.raises(ValueError, match="0 points"):
        read_point_cloud(tmp_path / "empty.ply")


def test_missing_open3d_message(tmp_path: Path, monkeypatch, cloud):
    import builtins
    import sys

    np.savetxt(tmp_path / "a.xyz", cloud[0])
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "open3d":
            raise ImportError("No module named 'open3d'")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "open3d", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install open3d"):
        read_point_cloud(tmp_path / "a.xyz")

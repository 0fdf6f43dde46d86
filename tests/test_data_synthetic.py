"""Synthetic shapes: determinism, geometry, part labels, learnability, writers and write_all."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from clora3d.data import CATEGORY_NAMES, PART_COUNTS, SEG_CLASSES
from clora3d.data import synthetic as syn


def test_classes_and_determinism():
    assert len(syn.SYNTHETIC_CLASSES) >= 12 and len(set(syn.SYNTHETIC_CLASSES)) == len(syn.SYNTHETIC_CLASSES)
    for c in range(len(syn.SYNTHETIC_CLASSES)):
        a, na = syn.make_shape(c, 500, np.random.default_rng([1, c]), return_normals=True)
        b = syn.make_shape(c, 500, np.random.default_rng([1, c]))
        d = syn.make_shape(c, 500, np.random.default_rng([2, c]))
        assert a.shape == (500, 3) and a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, d)  # pose/scale/noise vary
        assert np.linalg.norm(a, axis=1).max() < 1.1
        np.testing.assert_allclose(np.linalg.norm(na, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="label"):
        syn.make_shape(99, 10, np.random.default_rng(0))


def test_normals_point_outwards_on_sphere_and_cube():
    # for convex shapes the analytic normal points away from the centre
    for name in ("sphere", "cube", "cylinder", "cone", "pyramid", "capsule"):
        x, n = syn.make_shape(syn.SYNTHETIC_CLASSES.index(name), 2000, np.random.default_rng(3), return_normals=True)
        x = x - x.mean(0)
        assert ((x * n).sum(1) > 0).mean() > 0.9, name


def test_part_shapes_match_seg_classes():
    for ci, cat in enumerate(CATEGORY_NAMES):
        x, n, lab = syn.make_part_shape(cat, 3000, np.random.default_rng([5, ci]))
        assert x.shape == (3000, 3) and lab.dtype == np.int64
        assert sorted(set(lab.tolist())) == list(range(PART_COUNTS[ci])), cat  # every part present
        assert len(SEG_CLASSES[cat]) == PART_COUNTS[ci]


def _d2_features(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    i = rng.integers(0, len(x), (2000, 2))
    h, _ = np.histogram(np.linalg.norm(x[i[:, 0]] - x[i[:, 1]], axis=1), bins=20, range=(0, 2))
    r, _ = np.histogram(np.linalg.norm(x, axis=1), bins=10, range=(0, 1.05))
    return np.concatenate([h / h.sum(), r / r.sum()])


def test_classes_learnable_but_not_trivial():
    """1-NN on rotation-invariant shape histograms: far above chance (1/16)."""
    X, Y = [], []
    for c in range(len(syn.SYNTHETIC_CLASSES)):
        for j in range(12):
            rng = np.random.default_rng([9, c, j])
            X.append(_d2_features(syn.make_shape(c, 512, rng), rng))
            Y.append(c)
    X, Y = np.array(X), np.array(Y)
    tr = np.arange(len(Y)) % 12 < 8
    d = ((X[~tr][:, None] - X[tr][None]) ** 2).sum(-1)
    acc = (Y[tr][d.argmin(1)] == Y[~tr]).mean()
    assert acc > 0.4


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        if f.suffix != ".h5":  # h5 files embed no randomness but may embed creation metadata
            h.update(f.read_bytes())
    return h.hexdigest()


def test_writers_are_deterministic(tmp_path: Path):
    for r in ("a", "b"):
        syn.write_modelnet40(tmp_path / r / "mn", num_classes=3, n_train=2, n_test=1, n_points=64)
        syn.write_shapenetpart(tmp_path / r / "sp", n_train=1, n_val=1, n_test=1, n_points=64)
        syn.write_shapenet55(tmp_path / r / "s55", num_classes=2, n_train=1, n_test=1, n_points=64)
        syn.write_fewshot(
            tmp_path / r / "fs", num_classes=5, ways=(5,), shots=(1,), folds=1, eval_sample=1, n_points=32
        )
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    mn = tmp_path / "a" / "mn"
    assert (mn / "modelnet40_shape_names.txt").read_text().split() == syn.SYNTHETIC_CLASSES[:3]
    assert (mn / "modelnet40_train.txt").read_text().split() == [
        "sphere_0001",
        "sphere_0002",
        "cube_0001",
        "cube_0002",
        "cylinder_0001",
        "cylinder_0002",
    ]
    line = (mn / "sphere" / "sphere_0001.txt").read_text().splitlines()[0]
    assert len(line.split(",")) == 6
    with pytest.raises(ValueError, match="way 10 needs at least 10 classes"):
        syn.write_fewshot(tmp_path / "c", num_classes=6, folds=1)


def test_write_all_layout_and_cli(tmp_path: Path):
    t0 = time.perf_counter()
    out = syn.write_all(tmp_path, small=True, formats=["scanobjectnn", "shapenet55"])
    assert time.perf_counter() - t0 < 30
    assert set(out) == {"scanobjectnn", "shapenet55"}
    for rel in (
        "ScanObjectNN/main_split/training_objectdataset.h5",
        "ScanObjectNN/main_split/test_objectdataset_augmentedrot_scale75.h5",
        "ScanObjectNN/main_split_nobg/test_objectdataset.h5",
        "ShapeNet55-34/ShapeNet-55/train.txt",
    ):
        assert (tmp_path / rel).is_file(), rel
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_synthetic", repo / "tools" / "make_synthetic.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert (
        cli.main(
            [
                "--root",
                str(tmp_path / "cli"),
                "--format",
                "modelnet40",
                "--num-classes",
                "2",
                "--n-train",
                "1",
                "--n-test",
                "1",
                "--n-points",
                "32",
            ]
        )
        == 0
    )
    assert (tmp_path / "cli" / "ModelNet" / "modelnet40_normal_resampled" / "cube" / "cube_0002.txt").is_file()
    assert cli.main(["--root", str(tmp_path / "cli"), "--format", "fewshot", "--num-classes", "6", "--folds", "1"]) == 2

"""Data set loaders on synthetic data written in each real format, and on the real samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clora3d.data import (
    CATEGORY_NAMES,
    DATASET_KEYS,
    MODELNET40_CLASSES,
    SCANOBJECTNN_CLASSES,
    SEG_CLASSES,
    SYNSETS,
    ModelNet40,
    ModelNetFewShot,
    ScanObjectNN,
    ShapeNet55,
    ShapeNetPart,
    build_dataset,
    cache_name,
    generate_fewshot_folds,
    safe_load,
)
from clora3d.data import synthetic as syn
from clora3d.errors import ConfigError, DataError

NCLS, NTR, NTE, NPTS = 12, 4, 2, 384


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A small data/ tree in every real format."""
    root = tmp_path_factory.mktemp("synthetic_data")
    syn.write_modelnet40(root / syn.LAYOUT_DIRS["modelnet40"], num_classes=NCLS, n_train=NTR, n_test=NTE, n_points=NPTS)
    syn.write_fewshot(
        root / syn.LAYOUT_DIRS["fewshot"],
        num_classes=NCLS,
        ways=(5, 10),
        shots=(2, 3),
        folds=2,
        eval_sample=2,
        n_points=256,
    )
    for v in ("OBJ_BG", "OBJ_ONLY", "PB_T50_RS"):
        syn.write_scanobjectnn(root / "ScanObjectNN", v, n_train=2, n_test=1, n_points=256, n_augment=2)
    syn.write_shapenetpart(root / syn.LAYOUT_DIRS["shapenetpart"], n_train=2, n_val=1, n_test=1, n_points=300)
    syn.write_shapenet55(root / syn.LAYOUT_DIRS["shapenet55"], num_classes=6, n_train=3, n_test=1, n_points=300)
    return root


def _mn_root(root: Path) -> Path:
    return root / "ModelNet" / "modelnet40_normal_resampled"


def _numpy_fps(xyz: np.ndarray, n: int, start: int) -> np.ndarray:
    """Brute-force FPS reference (first index `start`, ties -> lowest index)."""
    idx = [start]
    d = np.full(len(xyz), np.inf)
    for _ in range(n - 1):
        d = np.minimum(d, ((xyz - xyz[idx[-1]]) ** 2).sum(1))
        idx.append(int(np.argmax(d)))
    return np.array(idx)


# ------------------------------------------------------------------------------------ ModelNet40


def test_modelnet40_synthetic_items_and_cache(synth, tmp_path):
    root = _mn_root(synth)
    ds = ModelNet40(root, "train", n_points=128, cache_dir=tmp_path)
    assert ds.class_names == syn.SYNTHETIC_CLASSES[:NCLS] and ds.num_classes == NCLS
    assert len(ds) == NCLS * NTR
    item = ds[0]
    assert item["points"].shape == (128, 3) and item["points"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].shape == ()
    # labels follow the folder of every id in the split list (line order of shape_names)
    ids = (root / "modelnet40_train.txt").read_text().split()
    expect = [syn.SYNTHETIC_CLASSES.index(i.rsplit("_", 1)[0]) for i in ids]
    assert ds.labels.tolist() == expect
    # unit sphere
    p = item["points"].double()
    assert torch.allclose(p.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert abs(p.norm(dim=1).max().item() - 1) < 1e-5
    # cache: reference name, restricted-pickle readable, [float32 (N,6)], [int32 (1,)]
    cpath = tmp_path / cache_name(40, "train", 128)
    assert cpath.name == "modelnet40_train_128pts_fps.dat" and cpath.is_file()
    pts, labs = safe_load(cpath)
    assert len(pts) == len(labs) == len(ds)
    assert pts[0].dtype == np.float32 and pts[0].shape == (128, 6)
    assert labs[0].dtype == np.int32 and labs[0].shape == (1,)
    # the cache folder holds the cache and nothing else (no temporary file, hidden or not)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cpath.name]
    # the cached cloud is the brute-force FPS of the raw file from some start point
    raw = np.loadtxt(root / ids[0].rsplit("_", 1)[0] / f"{ids[0]}.txt", delimiter=",", dtype=np.float32)
    start = int(np.flatnonzero((raw == pts[0][0]).all(1))[0])
    ref = _numpy_fps(raw[:, :3].astype(np.float64), 128, start)
    np.testing.assert_array_equal(pts[0], raw[ref])
    # the train item is a shuffled, normalised copy of the cached cloud
    xyz = pts[0][:, :3].astype(np.float64)
    xyz = xyz - xyz.mean(0)
    xyz /= np.linalg.norm(xyz, axis=1).max()
    got = item["points"].numpy().astype(np.float64)
    assert np.allclose(np.sort(got, axis=0), np.sort(xyz, axis=0), atol=1e-5)
    assert not np.allclose(got, xyz, atol=1e-5)  # order shuffled for train
    # a second instance reads the cache (same arrays)
    ds2 = ModelNet40(root, "train", n_points=128, cache_dir=tmp_path)
    np.testing.assert_array_equal(ds2.raw(3)[0], ds.raw(3)[0])


def test_modelnet40_cache_fps_start_is_seeded_per_shape(synth, tmp_path):
    # documented: FPS of shape i starts at np.random.default_rng([seed, i]).integers(N_i), seed 0,
    # so two builds give the same cache whatever the global RNG state
    from clora3d.data.modelnet import build_modelnet_arrays

    root = _mn_root(synth)
    ids = (root / "modelnet40_train.txt").read_text().split()
    np.random.seed(123)
    torch.manual_seed(123)
    pts, _ = build_modelnet_arrays(root, "train", 64, progress=False)
    starts = []
    for i, sid in enumerate(ids):
        raw = np.loadtxt(root / sid.rsplit("_", 1)[0] / f"{sid}.txt", delimiter=",", dtype=np.float32)
        start = int(np.random.default_rng([0, i]).integers(raw.shape[0]))
        starts.append(start)
        np.testing.assert_array_equal(pts[i], raw[_numpy_fps(raw[:, :3].astype(np.float64), 64, start)])
    assert len(set(starts)) > 1  # really per shape, not one start for all
    np.random.seed(7)
    torch.manual_seed(7)
    again, _ = build_modelnet_arrays(root, "train", 64, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(pts, again))
    other, _ = build_modelnet_arrays(root, "train", 64, seed=1, progress=False)
    assert not all(np.array_equal(a, b) for a, b in zip(pts, other))


def test_modelnet40_test_split_normals_and_modelnet10(synth, tmp_path):
    root = _mn_root(synth)
    te = ModelNet40(root, "test", n_points=64, use_normals=True, cache=False)
    assert len(te) == NCLS * NTE and not list(root.glob("*.dat"))
    a, b = te[1]["points"], te[1]["points"]
    assert a.shape == (64, 6) and torch.equal(a, b)  # test order is not shuffled
    assert torch.allclose(a[:, 3:].norm(dim=1), torch.ones(64), atol=1e-3)
    mn10 = ModelNet40(root, "test", n_points=64, num_category=10, cache_dir=tmp_path)
    assert mn10.class_names == syn.SYNTHETIC_CLASSES[:10] and len(mn10) == 10 * NTE
    assert (tmp_path / "modelnet10_test_64pts_fps.dat").is_file()
    with pytest.raises(ConfigError, match="num_category"):
        ModelNet40(root, "test", num_category=20)


def test_modelnet40_too_few_points_and_missing_files(synth, tmp_path):
    root = _mn_root(synth)
    with pytest.raises(DataError, match="fewer than n_points=1000"):
        ModelNet40(root, "test", n_points=1000, cache=False)
    with pytest.raises(DataError) as e:
        ModelNet40(tmp_path, "train", n_points=64, cache=False)
    msg = str(e.value)
    assert "modelnet40_shape_names.txt" in msg and "Expected layout" in msg and "data/README.md" in msg
    with pytest.raises(DataError, match="parent folder"):
        ModelNet40(synth / "ModelNet", "train", n_points=64, cache=False)
    # a shape listed in the split file but missing on disk is named
    (tmp_path / "mn").mkdir()
    for f in ("modelnet40_shape_names.txt", "modelnet40_test.txt"):
        (tmp_path / "mn" / f).write_text((root / f).read_text())
    with pytest.raises(DataError, match=r"missing shape file.*sphere_0005\.txt"):
        ModelNet40(tmp_path / "mn", "test", n_points=64, cache=False)


def test_modelnet40_processed_only_bundle(synth, tmp_path):
    """A folder holding only the .dat caches (no name/split lists) uses the standard class names."""
    src = ModelNet40(_mn_root(synth), "test", n_points=32, cache_dir=tmp_path / "src")
    only = tmp_path / "only"
    only.mkdir()
    (only / cache_name(40, "test", 32)).write_bytes((tmp_path / "src" / cache_name(40, "test", 32)).read_bytes())
    ds = ModelNet40(only, "test", n_points=32)
    assert ds.class_names == MODELNET40_CLASSES and len(ds) == len(src)
    assert torch.equal(ds[3]["points"], src[3]["points"])


def test_modelnet40_read_only_root_is_not_written(shared_data):
    root = shared_data / "modelnet40_normal_resampled"
    if root.stat().st_mode & 0o222:
        pytest.skip("the shared sample folder is writable here")
    before = sorted(os.listdir(root))
    with pytest.warns(RuntimeWarning, match="read-only"):
        ds = ModelNet40(root, "test", n_points=64)
    assert len(ds) == 20 and sorted(os.listdir(root)) == before


def test_modelnet40_real_sample(shared_data, tmp_path):
    root = shared_data / "modelnet40_normal_resampled"
    before = sorted(os.listdir(root))
    tr = ModelNet40(root, "train", n_points=512, cache_dir=tmp_path)
    te = ModelNet40(root, "test", n_points=512, cache_dir=tmp_path)
    assert sorted(os.listdir(root)) == before  # nothing written into the data folder
    assert (len(tr), len(te)) == (52, 20)
    assert tr.class_names == MODELNET40_CLASSES and tr.class_names[13] == "door" and tr.num_classes == 40
    ids = (root / "modelnet40_test.txt").read_text().split()
    assert te.labels.tolist() == [MODELNET40_CLASSES.index(i.rsplit("_", 1)[0]) for i in ids]
    it = te[0]
    assert it["points"].shape == (512, 3) and it["label"].item() == MODELNET40_CLASSES.index("airplane")
    # the cached rows are rows of the 10,000-line source file
    raw = np.loadtxt(root / "airplane" / f"{ids[0]}.txt", delimiter=",", dtype=np.float32)
    assert raw.shape == (10000, 6)
    rows = {r.tobytes() for r in raw}
    assert all(r.tobytes() in rows for r in te.raw(0)[0])


# ------------------------------------------------------------------------------------- few-shot


def test_fewshot_synthetic_folds(synth):
    root = synth / "ModelNetFewshot"
    # the reference layout (Point-MAE datasets/ModelNetDatasetFewShot.py): <root>/{way}way_{shot}shot/
    assert sorted(p.name for p in root.iterdir()) == ["10way_2shot", "10way_3shot", "5way_2shot", "5way_3shot"]
    ds = ModelNetFewShot(root, 10, 3, 1, "train")
    assert len(ds) == 30 and ds.num_classes == 10
    assert np.bincount(ds.labels, minlength=10).tolist() == [3] * 10
    it = ds[0]
    assert it["points"].shape == (256, 3) and it["label"].dtype == torch.int64
    te = ModelNetFewShot(root, 10, 3, 1, "test", n_points=128)
    assert len(te) == 20 and te[0]["points"].shape == (128, 3)
    assert sorted(ds.original_labels) == sorted(set(ds.original_labels)) and len(ds.original_labels) == 10
    raw = safe_load(root / "5way_2shot" / "0.pkl")
    assert set(raw) == {"train", "test"}
    pts, ep, orig = raw["train"][0]
    assert pts.dtype == np.float32 and pts.shape == (256, 6) and isinstance(ep, int)
    assert isinstance(orig, np.int32)
    with pytest.raises(DataError, match=r"expected path\): \S*ModelNetFewshot/7way_2shot/0\.pkl"):
        ModelNetFewShot(root, 7, 2, 0, "train")


def test_fewshot_reads_reference_layout_and_old_spelling(synth, tmp_path):
    import shutil
    import warnings

    import clora3d.data.modelnet as mn

    src = synth / "ModelNetFewshot" / "5way_2shot" / "0.pkl"
    ref = tmp_path / "ref" / "5way_2shot" / "0.pkl"  # a released-style folder, written by hand
    ref.parent.mkdir(parents=True)
    shutil.copy(src, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference spelling reads without any warning
        ds = ModelNetFewShot(tmp_path / "ref", 5, 2, 0, "train")
    assert ds.path == ref and len(ds) == 10
    old = tmp_path / "old" / "5way2shot" / "0.pkl"  # folders written by clora3d before the fix
    old.parent.mkdir(parents=True)
    shutil.copy(src, old)
    mn._LEGACY_WARNED.discard(old.parent)
    with pytest.warns(RuntimeWarning, match=r"old clora3d spelling.*5way_2shot"):
        ds_old = ModelNetFewShot(tmp_path / "old", 5, 2, 0, "train")
    assert ds_old.path == old and np.array_equal(ds_old.labels, ds.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder
        ModelNetFewShot(tmp_path / "old", 5, 2, 0, "test")
    # both present: the reference spelling wins
    shutil.copytree(tmp_path / "ref" / "5way_2shot", tmp_path / "old" / "5way_2shot")
    assert ModelNetFewShot(tmp_path / "old", 5, 2, 0, "train").path == tmp_path / "old" / "5way_2shot" / "0.pkl"


def test_generate_fewshot_folds_from_modelnet(synth, tmp_path):
    mn = _mn_root(synth)
    tr = ModelNet40(mn, "train", n_points=64, cache_dir=tmp_path / "c")
    te = ModelNet40(mn, "test", n_points=64, cache_dir=tmp_path / "c")
    paths = generate_fewshot_folds((tr, te), tmp_path / "fs", ways=(5,), shots=(3,), folds=3, eval_sample=2, seed=7)
    assert [p.name for p in paths] == ["0.pkl", "1.pkl", "2.pkl"]
    f0 = safe_load(paths[0])
    assert len(f0["train"]) == 15 and len(f0["test"]) == 10
    test_rows = {te.raw(i)[0].tobytes(): te.raw(i)[1] for i in range(len(te))}
    train_rows = {tr.raw(i)[0].tobytes(): tr.raw(i)[1] for i in range(len(tr))}
    ep_to_orig = {}
    for pts, ep, orig in f0["train"]:
        assert train_rows[pts.tobytes()] == int(orig)  # support shapes come from the train split
        assert ep_to_orig.setdefault(ep, int(orig)) == int(orig)
    for pts, ep, orig in f0["test"]:
        assert test_rows[pts.tobytes()] == int(orig) == ep_to_orig[ep]  # queries from the test split
    assert sorted(ep_to_orig) == list(range(5)) and len(set(ep_to_orig.values())) == 5
    # reproducible per (seed, way, shot, fold); folds differ
    again = generate_fewshot_folds((tr, te), tmp_path / "fs2", ways=(5,), shots=(3,), folds=1, eval_sample=2, seed=7)
    assert again[0].read_bytes() == paths[0].read_bytes()
    assert paths[1].read_bytes() != paths[0].read_bytes()
    with pytest.raises(ValueError, match="13 classes"):
        generate_fewshot_folds((tr, te), tmp_path / "fs3", ways=(13,), shots=(1,), folds=1, eval_sample=1)
    with pytest.raises(ValueError, match=">= 5 train"):
        generate_fewshot_folds((tr, te), tmp_path / "fs3", ways=(5,), shots=(5,), folds=1, eval_sample=1)


# ---------------------------------------------------------------------------------- ScanObjectNN


def test_scanobjectnn_variants(synth):
    root = synth / "ScanObjectNN"
    sizes = {}
    for v, per in (("OBJ_BG", 1), ("OBJ_ONLY", 1), ("PB_T50_RS", 2)):
        tr, te = ScanObjectNN(root, v, "train"), ScanObjectNN(root, v, "test")
        sizes[v] = (len(tr), len(te))
        assert (len(tr), len(te)) == (15 * 2 * per, 15 * 1 * per)
        assert tr.class_names == SCANOBJECTNN_CLASSES and tr.num_classes == 15
        assert sorted(set(tr.labels.tolist())) == list(range(15))
        it = tr[0]
        assert it["points"].shape == (256, 3) and it["points"].dtype == torch.float32
        assert it["label"].dtype == torch.int64
    # the variant picks the file of the reference table (section 4.3)
    expect = {
        "OBJ_BG": "main_split/training_objectdataset.h5",
        "OBJ_ONLY": "main_split_nobg/training_objectdataset.h5",
        "PB_T50_RS": "main_split/training_objectdataset_augmentedrot_scale75.h5",
    }
    for v, rel in expect.items():
        assert ScanObjectNN(root, v, "train").path == root / rel
    import h5py

    with h5py.File(root / expect["OBJ_BG"], "r") as f:
        assert {"data", "label", "mask"} <= set(f.keys())
        assert (f["mask"][:] == -1).any()  # background points in OBJ_BG
    with h5py.File(root / expect["OBJ_ONLY"], "r") as f:
        assert not (f["mask"][:] == -1).any()
    with pytest.raises(ConfigError, match="OBJ_BG"):
        ScanObjectNN(root, "PB_T25", "train")


def test_scanobjectnn_missing_file_names_file_variant_layout(tmp_path):
    (tmp_path / "main_split").mkdir()
    with pytest.raises(DataError) as e:
        ScanObjectNN(tmp_path, "PB_T50_RS", "test")
    msg = str(e.value)
    assert "variant PB_T50_RS" in msg and "test_objectdataset_augmentedrot_scale75.h5" in msg
    assert "main_split_nobg/" in msg and "data/README.md" in msg
    with pytest.raises(DataError, match="parent"):
        ScanObjectNN(tmp_path / "main_split", "OBJ_BG", "test")


# ----------------------------------------------------------------------------------- ShapeNetPart


def test_seg_classes_table():
    # reference section 4.4
    expect = {
        "Airplane": (0, 3),
        "Bag": (4, 5),
        "Cap": (6, 7),
        "Car": (8, 11),
        "Chair": (12, 15),
        "Earphone": (16, 18),
        "Guitar": (19, 21),
        "Knife": (22, 23),
        "Lamp": (24, 27),
        "Laptop": (28, 29),
        "Motorbike": (30, 35),
        "Mug": (36, 37),
        "Pistol": (38, 40),
        "Rocket": (41, 43),
        "Skateboard": (44, 46),
        "Table": (47, 49),
    }
    assert CATEGORY_NAMES == list(expect)
    assert {k: (v[0], v[-1]) for k, v in SEG_CLASSES.items()} == expect
    assert SYNSETS[0] == "02691156" and SYNSETS[15] == "04379243"


def test_shapenetpart_v0_normal_synthetic(synth):
    root = synth / syn.LAYOUT_DIRS["shapenetpart"]
    sizes = {s: len(ShapeNetPart(root, s, n_points=100)) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 32, "val": 16, "test": 16, "trainval": 48}
    ds = ShapeNetPart(root, "trainval", n_points=500)
    seen = set()
    for i in range(len(ds)):
        it = ds[i]
        assert it["points"].shape == (500, 3) and it["seg"].shape == (500,)  # resampled with replacement
        cat = CATEGORY_NAMES[int(it["cls"])]
        assert set(it["seg"].tolist()) <= set(SEG_CLASSES[cat])
        seen |= set(it["seg"].tolist())
    assert seen == set(range(50))
    line = next((root / SYNSETS[0]).glob("*.txt")).read_text().splitlines()[0].split()
    assert len(line) == 7 and float(line[6]) in range(0, 4)


def test_shapenetpart_v0_layout_matches_v0_normal(synth, tmp_path):
    src = synth / syn.LAYOUT_DIRS["shapenetpart"]
    dst = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0"
    (dst / "train_test_split").mkdir(parents=True)
    (dst / "synsetoffset2category.txt").write_text((src / "synsetoffset2category.txt").read_text())
    for s in ("train", "val", "test"):
        f = f"train_test_split/shuffled_{s}_file_list.json"
        (dst / f).write_text((src / f).read_text())
    for ci, syn_id in enumerate(SYNSETS):
        (dst / syn_id / "points").mkdir(parents=True)
        (dst / syn_id / "points_label").mkdir()
        for f in (src / syn_id).glob("*.txt"):
            arr = np.loadtxt(f)
            np.savetxt(dst / syn_id / "points" / f"{f.stem}.pts", arr[:, :3], fmt="%.5f")
            local = arr[:, 6].astype(int) - SEG_CLASSES[CATEGORY_NAMES[ci]][0] + 1  # v0: 1..k
            np.savetxt(dst / syn_id / "points_label" / f"{f.stem}.seg", local, fmt="%d")
    a, b = ShapeNetPart(src, "test"), ShapeNetPart(dst, "test")
    assert len(a) == len(b) == 16
    for i in range(len(a)):
        pa, sa = a.load(i)
        pb, sb = b.load(i)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(pa[:, :3], pb, atol=1e-5)
    with pytest.raises(ConfigError, match="no normals"):
        ShapeNetPart(dst, "test", use_normals=True)
    # a v0 label outside 1..k is reported with the file
    for bad in (dst / SYNSETS[1] / "points_label").glob("*.seg"):
        bad.write_text("3\n" + bad.read_text().split("\n", 1)[1])
    ds = ShapeNetPart(dst, "trainval")
    with pytest.raises(DataError, match=r"1\.\.2 for Bag"):
        for i in range(len(ds)):
            ds.load(i)


def test_shapenetpart_real_v0_sample(shared_data):
    root = shared_data / "shapenetcore_partanno_segmentation_benchmark_v0"
    ds = ShapeNetPart(root, "train", n_points=2048)
    assert len(ds) == 16 and ds.labels.tolist() == list(range(16))
    for i in range(16):
        pts, seg = ds.load(i)
        cat = CATEGORY_NAMES[i]
        assert pts.shape[1] == 3 and 2209 <= pts.shape[0] <= 2834
        assert set(np.unique(seg)) <= set(SEG_CLASSES[cat])
    # README: the Lamp shape has v0 labels 1,2,4 -> global 24, 25, 27; Motorbike 1-6 -> 30..35
    assert set(np.unique(ds.load(CATEGORY_NAMES.index("Lamp"))[1])) == {24, 25, 27}
    assert set(np.unique(ds.load(CATEGORY_NAMES.index("Motorbike"))[1])) == set(range(30, 36))
    it = ds[0]
    assert it["points"].shape == (2048, 3) and it["cls"].item() == 0 and it["seg"].dtype == torch.int64
    # the official split lists: 3 of the 16 shapes are in the test split
    split_dir = shared_data / "metadata" / "shapenetcore_partanno_segmentation_benchmark_v0_normal" / "train_test_split"
    te = ShapeNetPart(root, "test", split_dir=split_dir)
    assert [CATEGORY_NAMES[c] for c in te.labels] == ["Earphone", "Rocket", "Table"]
    assert len(json.loads((split_dir / "shuffled_test_file_list.json").read_text())) == 2874
    with pytest.raises(DataError, match="shuffled_val_file_list.json"):
        ShapeNetPart(root, "val")


# ------------------------------------------------------------------------------------- ShapeNet55


def test_shapenet55_synthetic(synth):
    root = synth / syn.LAYOUT_DIRS["shapenet55"]
    tr = ShapeNet55(root, "train", n_points=256)
    assert len(tr) == 18 and len(ShapeNet55(root, "test")) == 6 and len(ShapeNet55(root, "train", whole=True)) == 24
    it = tr[0]
    assert set(it) == {"points"} and it["points"].shape == (256, 3) and it["points"].dtype == torch.float32
    assert abs(it["points"].double().norm(dim=1).max().item() - 1) < 1e-5
    line = (root / "ShapeNet-55" / "train.txt").read_text().split()[0]
    assert line.endswith(".npy") and "-" in line and (root / "shapenet_pc" / line).is_file()
    with pytest.raises(DataError, match="shapenet_pc"):
        ShapeNet55(root, "train", n_points=301)[0]


# ----------------------------------------------------------------------- build_dataset / loaders


def test_build_dataset_validates_keys(synth):
    assert set(DATASET_KEYS) == {"ModelNet40", "ModelNetFewShot", "ScanObjectNN", "ShapeNetPart", "ShapeNet55"}
    assert "variant" in DATASET_KEYS["ScanObjectNN"] and "num_category" in DATASET_KEYS["ModelNet40"]
    ds = build_dataset({"NAME": "ScanObjectNN", "root": str(synth / "ScanObjectNN"), "variant": "OBJ_ONLY"}, "test")
    assert isinstance(ds, ScanObjectNN) and len(ds) == 15
    with pytest.raises(ConfigError, match="npoints"):
        build_dataset({"NAME": "ModelNet40", "root": "x", "npoints": 1024}, "train")
    with pytest.raises(ConfigError, match="ModelNet41"):
        build_dataset({"NAME": "ModelNet41", "root": "x"}, "train")
    with pytest.raises(ConfigError, match="variant"):
        build_dataset({"NAME": "ScanObjectNN", "root": "x"}, "train")


def test_dataloader_two_workers_every_dataset(synth, tmp_path):
    mn = _mn_root(synth)
    datasets = [
        ModelNet40(mn, "train", n_points=64, cache_dir=tmp_path),
        ModelNetFewShot(synth / "ModelNetFewshot", 5, 2, 0, "train"),
        ScanObjectNN(synth / "ScanObjectNN", "PB_T50_RS", "train"),
        ShapeNetPart(synth / syn.LAYOUT_DIRS["shapenetpart"], "trainval", n_points=128),
        ShapeNet55(synth / syn.LAYOUT_DIRS["shapenet55"], "train", n_points=128),
    ]
    for ds in datasets:
        dl = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, drop_last=False)
        n = 0
        for batch in dl:
            assert batch["points"].dim() == 3 and batch["points"].dtype == torch.float32
            n += batch["points"].shape[0]
        assert n == len(ds)
    # seeded: the same torch seed gives the same epoch; workers/epochs get different shuffles
    ds = datasets[0]

    def epoch() -> torch.Tensor:
        return torch.cat([b["points"] for b in DataLoader(ds, batch_size=8, num_workers=2)])

    torch.manual_seed(3)
    e1, e2 = epoch(), epoch()
    torch.manual_seed(3)
    assert torch.equal(epoch(), e1) and not torch.equal(e1, e2)

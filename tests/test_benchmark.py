"""The PEFT benchmark's pieces against independent references: the scan generator's geometry, the
few-shot episodes, statistics, CLoRA component similarity by brute force, the real-data check's
selection of shapes (from the data's own manifest)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from benchmarks import ranking as B
from clora3d.data.synthetic import SYNTHETIC_CLASSES, make_scan_shape, make_shape
from clora3d.models import PointTransformer
from clora3d.peft import apply_peft

pytestmark = pytest.mark.usefixtures("one_thread")


def test_scan_shape_layout_and_determinism():
    for c in range(len(SYNTHETIC_CLASSES)):
        x, m = make_scan_shape(c, 300, np.random.default_rng([7, c]))
        assert x.shape == (300, 3) and x.dtype == np.float32 and m.shape == (300,)
        assert set(np.unique(m)) <= {-1, 1}
        # background share within the requested range (rounding: one point)
        bg = (m == -1).sum()
        assert 0.3 * 300 - 1 <= bg <= 0.5 * 300 + 1
        # unit sphere, centred
        r = np.linalg.norm(x, axis=1)
        assert r.max() == pytest.approx(1.0, abs=1e-5)
        assert np.abs(x.mean(0)).max() < 1e-5
    x2, m2 = make_scan_shape(len(SYNTHETIC_CLASSES) - 1, 300, np.random.default_rng([7, len(SYNTHETIC_CLASSES) - 1]))
    assert np.array_equal(x, x2) and np.array_equal(m, m2)
    with pytest.raises(ValueError, match="label"):
        make_scan_shape(len(SYNTHETIC_CLASSES), 10, np.random.default_rng(0))


def test_scan_is_partial_view_of_the_object():
    """A sphere seen from one side: only the hemisphere facing the camera is sampled, so the object
    points' centroid sits off the sphere's centre (a full sphere would have it at the centre)."""
    rng = np.random.default_rng(3)
    x, m = make_scan_shape(
        SYNTHETIC_CLASSES.index("sphere"), 2000, rng, background=(0.0, 0.0), cut=(0.0, 0.0), noise=(0.0, 0.0)
    )
    assert (m == 1).all()

    def fit(pts):  # least-squares sphere |x|^2 = 2 c.x + k -> centre c, radius R
        A = np.concatenate([2 * pts, np.ones((len(pts), 1))], 1).astype(np.float64)
        sol, *_ = np.linalg.lstsq(A, (pts.astype(np.float64) ** 2).sum(1), rcond=None)
        c = sol[:3]
        return c, np.sqrt(sol[3] + c @ c)

    c, R = fit(x)
    # the pose scales axes anisotropically (0.8-1.25), so a loose tolerance on the radius
    assert np.abs(np.linalg.norm(x - c, axis=1) - R).max() < 0.35 * R
    assert np.linalg.norm(c) > 0.3 * R  # centroid far from the surface's centre: one side only
    full = make_shape(SYNTHETIC_CLASSES.index("sphere"), 2000, np.random.default_rng(3))
    c_full, R_full = fit(full)
    assert np.linalg.norm(c_full) < 0.05 * R_full  # the whole sphere: centroid at the centre


def test_fewshot_episode_is_disjoint_and_balanced():
    size = B.BenchSize(num_classes=6, fewshot_pool=5, way=3, shot=2, fewshot_test=3, point_all=40)
    x = np.arange(6 * 5, dtype=np.float32)[:, None, None] * np.ones((1, 40, 3), np.float32)
    y = np.repeat(np.arange(6), 5)
    ep = B.fewshot_episode((x, y), size, seed=4)
    tr_ids = set(ep["train_x"][:, 0, 0].long().tolist())
    te_ids = set(ep["test_x"][:, 0, 0].long().tolist())
    assert not tr_ids & te_ids
    assert len(tr_ids) == 3 * 2 and len(te_ids) == 3 * 3
    assert sorted(torch.bincount(ep["train_y"]).tolist()) == [2, 2, 2]
    for sid, lab in zip(ep["train_x"][:, 0, 0].long().tolist(), ep["train_y"].tolist()):
        assert y[sid] == ep["classes"][lab]
    again = B.fewshot_episode((x, y), size, seed=4)
    assert torch.equal(ep["train_x"], again["train_x"]) and torch.equal(ep["test_y"], again["test_y"])
    with pytest.raises(ValueError, match="fewshot_pool"):
        B.fewshot_episode((x, y), B.BenchSize(num_classes=6, way=3, shot=4, fewshot_test=3), seed=0)


def test_mean_std_is_sample_std():
    m, s = B.mean_std([1.0, 2.0, 6.0])
    assert m == pytest.approx(3.0)
    assert s == pytest.approx(np.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert B.mean_std([5.0]) == (5.0, 0.0)


def test_component_similarity_brute_force():
    torch.manual_seed(0)
    model = PointTransformer.from_preset("tiny", cls_dim=4)
    method = apply_peft(model, {"NAME": "clora", "init": "xavier", "num_spaces": 3, "rank": 4})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in method.peft_params.values():
            p.copy_(torch.randn(p.shape, generator=g))
    vals = []
    for _, _, key, j in method.lrms:
        sp = method.spaces[key]
        M = [sp.D[h].detach().double() @ sp.Q[j, h].detach().double() @ sp.U[h].detach().double() for h in range(3)]
        for a in range(3):
            for b in range(a + 1, 3):
                vals.append(
                    float(
                        torch.linalg.matrix_norm(M[a].T @ M[b]) ** 2
                        / (torch.linalg.matrix_norm(M[a]) ** 2 * torch.linalg.matrix_norm(M[b]) ** 2)
                    )
                )
    assert B.component_similarity(method) == pytest.approx(np.mean(vals), rel=1e-4)
    assert 0.0 < B.component_similarity(method) < 1.0


def test_benchmark_tables_from_runs():
    runs = [
        {"method": m, "task": "scan", "seed": s, "acc": a, "wall_s": 1.0, "trainable": 1000, "trainable_no_head": 10}
        for m, accs in (("full", [80.0, 82.0]), ("linear", [40.0, 44.0]))
        for s, a in enumerate(accs)
    ]
    rows = B.summarise(runs, ["full", "linear"], ["scan"])
    assert rows[0]["scan_mean"] == 81.0 and rows[1]["scan_mean"] == 42.0
    sep = B.separation(rows, "scan")
    assert sep["gap"] == pytest.approx(39.0)
    assert sep["ratio"] == pytest.approx(39.0 / np.std([40.0, 44.0], ddof=1))
    table = B.format_table(rows, ["scan"])
    assert "| full | 81.0 ± 1.4 |" in table and "| linear | 42.0 ± 2.8 |" in table


def test_real_modelnet_check_selects_shared_classes(shared_data):
    root = shared_data / "modelnet40_normal_resampled"
    with (shared_data / "modelnet40_manifest.tsv").open() as f:
        manifest = list(csv.DictReader(f, delimiter="\t"))
    shared = [c for c in SYNTHETIC_CLASSES if c in {r["class"] for r in manifest}]
    expected = sorted(r["shape_id"] for r in manifest if r["class"] in shared)
    torch.manual_seed(0)
    model = PointTransformer.from_preset("tiny", cls_dim=len(SYNTHETIC_CLASSES)).eval()
    res = B.real_modelnet_check(model, SYNTHETIC_CLASSES, npoints=128, root=root)
    assert res["classes"] == shared and res["n"] == len(expected)
    assert sorted(s for s, _ in res["per_shape"]) == expected
    assert all(p in shared for _, p in res["per_shape"])
    assert res["acc"] == pytest.approx(100.0 * res["correct"] / res["n"])
    assert res["chance"] == pytest.approx(100.0 / len(shared))


def test_real_modelnet_check_skips_without_data(tmp_path):
    model = PointTransformer.from_preset("tiny", cls_dim=3).eval()
    res = B.real_modelnet_check(model, ["a", "b", "c"], npoints=64, root=tmp_path / "absent")
    assert "not present" in res["skipped"]


def test_parallel_workers_give_the_sequential_results():
    """Each fine-tuning job seeds everything from its own seed, so running the jobs in spawned
    worker processes must reproduce the in-process run exactly (accuracy, steps, parameters), and
    a kept model comes back from the main process."""
    from clora3d.models.backbone import PointTransformer

    torch.manual_seed(0)
    pretrained = PointTransformer.from_preset("tiny", cls_dim=4).state_dict()
    size = B.BenchSize(
        num_classes=4,
        n_train=3,
        n_test=3,
        epochs=2,
        batch_size=4,
        seeds=(0, 1),
        npoints=64,
        point_all=80,
        tasks=("scan",),
    )
    methods = {"linear": {"NAME": "linear"}, "clora": {"NAME": "clora"}, "idpt": B.BENCH_METHODS["idpt"]}
    seq = B.run_benchmark(
        pretrained, B.BenchSize(**{**size.__dict__, "workers": 1}), methods, log=lambda m: None, keep=("clora",)
    )
    par = B.run_benchmark(
        pretrained, B.BenchSize(**{**size.__dict__, "workers": 2}), methods, log=lambda m: None, keep=("clora",)
    )
    key = [(r["method"], r["task"], r["seed"]) for r in seq["runs"]]
    assert key == [(r["method"], r["task"], r["seed"]) for r in par["runs"]] and len(key) == 6
    for a, b in zip(seq["runs"], par["runs"]):
        assert (a["acc"], a["steps"], a["trainable"]) == (b["acc"], b["steps"], b["trainable"])
    assert set(par["kept"]) == {"clora"} and set(seq["kept"]) == {"clora"}
    x = torch.rand(2, 64, 3)
    for d in (seq, par):
        d["kept"]["clora"]["model"].eval()
    with torch.no_grad():
        assert torch.equal(seq["kept"]["clora"]["model"](x), par["kept"]["clora"]["model"](x))


def test_separation_labels_each_task_against_the_threshold():
    runs = [
        {"method": m, "task": t, "seed": s, "acc": a, "wall_s": 1.0, "trainable": 1, "trainable_no_head": 0}
        for m, t, accs in (
            ("full", "scan", [60.0, 64.0, 62.0]),
            ("linear", "scan", [30.0, 31.0, 29.0]),
            ("full", "fewshot", [50.0, 60.0, 55.0]),
            ("linear", "fewshot", [45.0, 50.0, 40.0]),
        )
        for s, a in enumerate(accs)
    ]
    rows = B.summarise(runs, ["full", "linear"], ["scan", "fewshot"])
    text = B.format_separation(rows, ["scan", "fewshot"]).splitlines()
    # scan: 62 - 30 = 32, larger std 2 -> 16.0 x; few-shot: gap 10, larger std 5 -> 2.0 x (below 3)
    assert text[0] == (
        "scan: full - linear = 32.0 points = 16.00 x the larger std (2.0): separates full "
        "fine-tuning from linear probing"
    )
    assert text[1] == (
        "fewshot: full - linear = 10.0 points = 2.00 x the larger std (5.0): does NOT separate "
        "full fine-tuning from linear probing (below 3 x)"
    )
    # paired by seed: scan gaps 30, 33, 33 -> 32.0 +- 1.7; few-shot gaps 5, 10, 15 -> 10.0 +- 5.0
    paired = B.format_separation(rows, ["scan", "fewshot"], runs).splitlines()
    assert paired[0] == text[0] + "; paired by seed: 32.0 ± 1.7 points (18.5 x its std)"
    assert paired[1] == text[1] + "; paired by seed: 10.0 ± 5.0 points (2.0 x its std)"
    assert B.paired_gaps(runs, "scan") == [30.0, 33.0, 33.0]
    # zero spread: a gap is infinitely many stds, no gap is undefined (not "separates")
    same = B.summarise([dict(r, acc=50.0) for r in runs], ["full", "linear"], ["scan"])
    assert np.isnan(B.separation(same, "scan")["ratio"]) and "does NOT separate" in B.format_separation(same, ["scan"])
    apart = B.summarise(
        [dict(r, acc=70.0 if r["method"] == "full" else 20.0) for r in runs], ["full", "linear"], ["scan"]
    )
    assert B.separation(apart, "scan")["ratio"] == np.inf


def test_per_method_learning_rate_reaches_the_optimizer():
    """A method's lr in ``lrs`` is the one its optimizer uses: at lr 0 AdamW (decoupled weight decay
    scaled by lr) leaves every trainable parameter exactly at its freshly built value, while the
    same run at the default lr moves them; the lr is recorded per run and shown in the table."""
    torch.manual_seed(0)
    pretrained = PointTransformer.from_preset("tiny", cls_dim=4).state_dict()
    size = B.BenchSize(
        num_classes=4,
        n_train=3,
        n_test=2,
        epochs=1,
        batch_size=4,
        seeds=(3,),
        npoints=64,
        point_all=80,
        tasks=("scan",),
        workers=1,
        warmup_epochs=0,
    )  # warm-up starts at 1e-5 whatever the lr
    methods = {"linear": {"NAME": "linear"}}
    frozen = B.run_benchmark(pretrained, size, methods, log=lambda m: None, keep=("linear",), lrs={"linear": 0.0})
    moved = B.run_benchmark(pretrained, size, methods, log=lambda m: None, keep=("linear",), lrs={})
    fresh, fresh_method = B.build_finetune_model(pretrained, 4, B.peft_config({"NAME": "linear"}), seed=3)
    names = list(fresh_method.trainable_parameters())
    assert names
    for res, same in ((frozen, True), (moved, False)):
        got = dict(res["kept"]["linear"]["model"].named_parameters())
        want = dict(fresh.named_parameters())
        assert all(torch.equal(got[n], want[n]) for n in names) == same
    assert frozen["runs"][0]["lr"] == 0.0 and moved["runs"][0]["lr"] == size.lr
    assert "| linear | " in B.format_table(frozen["summary"], ["scan"]) and " | 0 | " in B.format_table(
        frozen["summary"], ["scan"]
    )
    assert B.BENCH_LR == {} or set(B.BENCH_LR) <= set(B.BENCH_METHODS)


def test_drop_path_of_the_size_reaches_the_fine_tuned_model():
    """``BenchSize.drop_path`` is the stochastic depth of the model every run fine-tunes: 0 (the
    benchmark's default) builds no DropPath at all, 0.2 builds the ViT schedule linspace(0, 0.2,
    depth) over the blocks (the kept run's model is the one trained)."""
    from clora3d.models.transformer import DropPath

    torch.manual_seed(0)
    pretrained = PointTransformer.from_preset("tiny", cls_dim=4).state_dict()
    assert B.BenchSize().drop_path == 0.0
    for rate in (0.0, 0.2):
        size = B.BenchSize(
            num_classes=4,
            n_train=2,
            n_test=1,
            epochs=1,
            batch_size=4,
            seeds=(0,),
            npoints=64,
            point_all=80,
            tasks=("scan",),
            workers=1,
            drop_path=rate,
        )
        res = B.run_benchmark(pretrained, size, {"linear": {"NAME": "linear"}}, log=lambda m: None, keep=("linear",))
        probs = [m.drop_prob for m in res["kept"]["linear"]["model"].modules() if isinstance(m, DropPath)]
        depth = len(res["kept"]["linear"]["model"].blocks.blocks)
        want = [float(v) for v in torch.linspace(0, rate, depth)][1:] if rate else []
        assert probs == pytest.approx(want)

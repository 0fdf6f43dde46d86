"""Evaluation protocols: part-seg mIoU against a hand-computed example and a brute-force version,
plain accuracy vs. a numpy FPS reference, vote@N against an independent re-implementation, DDP sums."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from clora3d.engine.distributed import _gather_bytes, all_gather_list, broadcast_object, cleanup_distributed
from clora3d.engine.evaluate import (
    SHAPENETPART_SEG_CLASSES,
    evaluate_classification,
    evaluate_partseg,
    format_partseg_table,
    part_seg_miou,
)

# ------------------------------------------------------------------------------------------------
# part segmentation: hand-computed example
# ------------------------------------------------------------------------------------------------
SEG2 = {"A": [0, 1], "B": [2, 3, 4]}
GT = np.array(
    [
        [0, 0, 1, 1],  # shape 0, category A
        [0, 0, 0, 0],  # shape 1, category A
        [2, 2, 3, 3],
    ]
)  # shape 2, category B
PRED = np.array([[0, 1, 1, 1], [0, 0, 0, 0], [2, 3, 3, 3]])
CLS = np.array([0, 0, 1])
# By hand:
# shape 0: part0 inter 1 / union 2 = 1/2, part1 inter 2 / union 3 = 2/3      -> (1/2 + 2/3) / 2 = 7/12
# shape 1: part0 4/4 = 1, part1 absent from both -> 1                        -> 1
# shape 2: part2 1/2, part3 2/3, part4 absent from both -> 1                 -> (1/2 + 2/3 + 1) / 3 = 13/18
# Inst = (7/12 + 1 + 13/18) / 3 ; Cls = ((7/12 + 1) / 2 + 13/18) / 2
# point acc = (3 + 4 + 3) / 12 ; per-part acc: p0 5/6, p1 2/2, p2 1/2, p3 2/2 (p4 unseen) -> mean
HAND = {
    "inst_miou": 100 * (7 / 12 + 1 + 13 / 18) / 3,
    "cls_miou": 100 * ((7 / 12 + 1) / 2 + 13 / 18) / 2,
    "point_acc": 100 * 10 / 12,
    "class_avg_acc": 100 * (5 / 6 + 1 + 1 / 2 + 1) / 4,
}


def test_partseg_hand_computed_labels():
    m = part_seg_miou(PRED, GT, CLS, SEG2)
    for k, v in HAND.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    assert m["num_shapes"] == 3
    assert m["per_category"]["A"] == {"miou": pytest.approx(100 * (7 / 12 + 1) / 2), "shapes": 2}
    assert m["per_category"]["B"]["miou"] == pytest.approx(100 * 13 / 18)


def test_partseg_argmax_restricted_to_category_parts():
    # Logits whose global argmax is always a part of the *other* category (value 9); within the
    # shape's own category the largest logit is the hand-written prediction above (value 5).
    logits = np.zeros((3, 4, 5))
    for s in range(3):
        own = SEG2["A"] if CLS[s] == 0 else SEG2["B"]
        other = SEG2["B"] if CLS[s] == 0 else SEG2["A"]
        for i in range(4):
            logits[s, i, own] = 1.0
            logits[s, i, PRED[s, i]] = 5.0
            logits[s, i, other[0]] = 9.0
    m = part_seg_miou(torch.from_numpy(logits), torch.from_numpy(GT), torch.from_numpy(CLS), SEG2)
    for k, v in HAND.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k


def _brute_force(logits, gt, cls, seg_classes):
    cats = list(seg_classes.values())
    shape_m, by_cat = [], {}
    correct = total = 0
    seen, hit = {}, {}
    for s in range(gt.shape[0]):
        parts = cats[cls[s]]
        pred = []
        for i in range(gt.shape[1]):
            best = max(parts, key=lambda p: (logits[s][i][p], -p))
            pred.append(best)
        ious = []
        for p in parts:
            inter = sum(1 for i in range(gt.shape[1]) if pred[i] == p and gt[s][i] == p)
            union = sum(1 for i in range(gt.shape[1]) if pred[i] == p or gt[s][i] == p)
            ious.append(1.0 if union == 0 else inter / union)
        shape_m.append(sum(ious) / len(ious))
        by_cat.setdefault(cls[s], []).append(shape_m[-1])
        for i in range(gt.shape[1]):
            g = gt[s][i]
            seen[g] = seen.get(g, 0) + 1
            if pred[i] == g:
                hit[g] = hit.get(g, 0) + 1
                correct += 1
            total += 1
    cat_means = [sum(v) / len(v) for v in by_cat.values()]
    return {
        "inst_miou": 100 * sum(shape_m) / len(shape_m),
        "cls_miou": 100 * sum(cat_means) / len(cat_means),
        "point_acc": 100 * correct / total,
        "class_avg_acc": 100 * sum(hit.get(p, 0) / n for p, n in seen.items()) / len(seen),
    }


def test_partseg_matches_brute_force_on_random_data():
    rng = np.random.default_rng(1)
    S, N = 24, 40
    cls = rng.integers(0, 16, size=S)
    cls[:3] = [4, 4, 10]
    cats = list(SHAPENETPART_SEG_CLASSES.values())
    gt = np.stack([rng.choice(cats[c][: max(1, len(cats[c]) - 1)], size=N) for c in cls])
    logits = rng.normal(size=(S, N, 50))
    m = part_seg_miou(logits, gt, cls, SHAPENETPART_SEG_CLASSES)
    ref = _brute_force(logits, gt, cls, SHAPENETPART_SEG_CLASSES)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    assert sum(r["shapes"] for r in m["per_category"].values()) == S
    assert "Inst. mIoU" in format_partseg_table(m)


def test_partseg_bad_shapes_raise():
    with pytest.raises(ValueError, match="shapes do not match"):
        part_seg_miou(PRED[:, :3], GT, CLS, SEG2)
    with pytest.raises(ValueError, match="out of range"):
        part_seg_miou(PRED, GT, np.array([0, 0, 5]), SEG2)


class _SegModel(nn.Module):
    """Predicts part (x > 0) within the category: logits favour parts[0] or parts[1]."""

    def __init__(self, cats):
        super().__init__()
        self.cats = cats
        self.seen_onehot = []

    def forward(self, pts, onehot):
        self.seen_onehot.append(onehot.clone())
        B, N, _ = pts.shape
        out = torch.full((B, N, 50), -5.0)
        for b in range(B):
            parts = self.cats[int(onehot[b].argmax())]
            out[b, :, parts[0]] = pts[b, :, 0]
            out[b, :, parts[1]] = -pts[b, :, 0]
            out[b, :, 49 if parts[0] != 47 else 0] = 100.0  # outside the category: must be ignored
        return torch.log_softmax(out, -1)


def test_evaluate_partseg_equals_part_seg_miou_on_whole_set():
    g = torch.Generator().manual_seed(3)
    cats = list(SHAPENETPART_SEG_CLASSES.values())
    items = []
    for i in range(10):
        c = i % 16
        pts = torch.randn(30, 3, generator=g)
        seg = torch.tensor(cats[c])[torch.randint(0, 2, (30,), generator=g)]
        items.append({"points": pts, "cls": torch.tensor(c), "seg": seg})
    loader = torch.utils.data.DataLoader(items, batch_size=4)
    model = _SegModel(cats).train()
    m = evaluate_partseg(model, loader, device="cpu", seg_classes=SHAPENETPART_SEG_CLASSES)
    assert model.training  # mode restored
    pts = torch.stack([it["points"] for it in items])
    cls = torch.stack([it["cls"] for it in items])
    seg = torch.stack([it["seg"] for it in items])
    onehot = torch.cat(model.seen_onehot)
    assert torch.equal(onehot.argmax(-1), cls) and onehot.shape == (10, 16)
    ref = part_seg_miou(_SegModel(cats)(pts, torch.eye(16)[cls]), seg, cls)
    for k in ("inst_miou", "cls_miou", "point_acc", "class_avg_acc", "num_shapes"):
        assert m[k] == pytest.approx(ref[k]), k


# ------------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------------

from np_refs import np_fps as _np_fps  # noqa: E402


class _MeanLinear(nn.Module):
    """logits = mean(points) @ W + b : depends on which points were sampled."""

    def __init__(self, c=4):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(3, c, generator=g))
        self.b = nn.Parameter(torch.randn(c, generator=g) * 0.1)

    def forward(self, pts):
        return (pts.mean(1) + pts.abs().max(1).values) @ self.w + self.b


def _cls_items(n=20, N=64, c=4, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [{"points": torch.randn(N, 3, generator=g), "label": torch.randint(0, c, (), generator=g)} for _ in range(n)]


def test_plain_accuracy_matches_numpy_fps_reference():
    items = _cls_items()
    model = _MeanLinear().train()
    m = evaluate_classification(model, torch.utils.data.DataLoader(items, batch_size=6), npoints=16)
    assert model.training
    correct = 0
    for it in items:
        x = it["points"].numpy()
        sub = torch.from_numpy(x[_np_fps(x, 16)])[None]
        correct += int(model(sub).argmax(-1).item() == int(it["label"]))
    assert m["correct"] == correct and m["count"] == 20
    assert m["acc"] == pytest.approx(100 * correct / 20)
    assert not any(k.startswith("acc_vote") for k in m)


def _scale_tf(pts, generator=None):
    s = 0.5 + torch.rand(pts.shape[0], 1, 1, generator=generator)
    t = torch.rand(pts.shape[0], 1, 3, generator=generator) * 0.4 - 0.2
    return pts * s + t


class _Recorder(nn.Module):
    """Wraps a model and keeps a copy of every input it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, pts):
        self.seen.append(pts.detach().clone())
        return self.inner(pts)


def test_vote_matches_independent_reimplementation():
    # Replays the documented algorithm with a numpy FPS pool: per batch, N views, each a fresh
    # randperm subset shared by the batch, then the transform; mean of the logits. Every view the
    # model sees must equal the replayed one, not only the final accuracy.
    items = _cls_items(n=14, N=80)
    model = _Recorder(_MeanLinear()).eval()
    bs, npts, pool, V = 5, 16, 40, 4
    m = evaluate_classification(
        model,
        torch.utils.data.DataLoader(items, batch_size=bs),
        npoints=npts,
        vote=V,
        vote_transform=_scale_tf,
        point_all=pool,
        generator=torch.Generator().manual_seed(11),
    )
    g = torch.Generator().manual_seed(11)
    correct = 0
    seen = iter(model.seen)
    for start in range(0, len(items), bs):
        chunk = items[start : start + bs]
        plain = next(seen)
        expect_plain = torch.stack(
            [torch.from_numpy(it["points"].numpy()[_np_fps(it["points"].numpy(), npts)]) for it in chunk]
        )
        torch.testing.assert_close(plain, expect_plain, rtol=0, atol=0)
        pools = torch.stack(
            [torch.from_numpy(it["points"].numpy()[_np_fps(it["points"].numpy(), pool)]) for it in chunk]
        )
        acc = 0
        for _ in range(V):
            sub = torch.randperm(pool, generator=g)[:npts]
            view = _scale_tf(pools[:, sub], generator=g)
            torch.testing.assert_close(next(seen), view, rtol=0, atol=0)
            acc = acc + model.inner(view)
        pred = (acc / V).argmax(-1)
        correct += int((pred == torch.stack([it["label"] for it in chunk])).sum())
    assert next(seen, None) is None  # no extra forward passes
    assert m[f"acc_vote@{V}"] == pytest.approx(100 * correct / len(items))
    assert "acc" in m and m["count"] == 14


class _RadiusModel(nn.Module):
    """Class 0 when the mean radius exceeds 1, else class 1."""

    def forward(self, pts):
        r = pts.norm(dim=-1).mean(1)
        return torch.stack([r - 1.0, torch.zeros_like(r)], -1)


def test_vote_differs_from_plain_and_is_labelled_separately():
    g = torch.Generator().manual_seed(2)
    items = []
    for _ in range(8):
        p = torch.randn(50, 3, generator=g)
        items.append({"points": 0.9 * p / p.norm(dim=-1, keepdim=True), "label": torch.tensor(0)})
    loader = torch.utils.data.DataLoader(items, batch_size=4)
    m = evaluate_classification(
        _RadiusModel(), loader, npoints=20, vote=10, vote_transform=lambda x: 2.0 * x, point_all=30
    )
    assert m["acc"] == 0.0  # unaugmented clouds have radius 0.9 -> class 1
    assert m["acc_vote@10"] == 100.0  # the TTA views are scaled x2 -> class 0
    m2 = evaluate_classification(
        _RadiusModel(), loader, npoints=20, vote=10, vote_transform=lambda x: 2.0 * x, point_all=30, vote_repeats=3
    )
    assert m2["acc_vote@10_max_of_3"] == 100.0 and m2["acc_vote@10_mean_of_3"] == 100.0
    assert m2["acc"] == 0.0


class _TableModel(nn.Module):
    """Logits (0, z) with z read from a table by (view tag k, cloud id b): k is written into the x
    coordinate by :class:`_TagViews`, b is the y coordinate of every point of cloud b. Unaugmented
    clouds have x = -1 and get z = -1 (class 0)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, pts):
        z = []
        for b in range(pts.shape[0]):
            k, cid = int(round(float(pts[b, 0, 0]))), int(round(float(pts[b, 0, 1])))
            z.append(-1.0 if k < 0 else self.table[k][cid])
        z = torch.tensor(z)
        return torch.stack([torch.zeros_like(z), z], -1)


class _TagViews:
    """A vote transform that tags the k-th view it is asked for by writing k into x."""

    def __init__(self):
        self.k = 0

    def __call__(self, pts, generator=None):
        out = pts.clone()
        out[..., 0] = float(self.k)
        self.k += 1
        return out


def _tagged_clouds(n_clouds=4, N=8):
    items = []
    for b in range(n_clouds):
        pts = torch.zeros(N, 3)
        pts[:, 0], pts[:, 1], pts[:, 2] = -1.0, float(b), torch.arange(N) / N
        items.append({"points": pts, "label": torch.tensor(1)})
    return items


# z per (view k, cloud b); 3 passes x 3 views, every cloud has label 1.
#  pass 0 (k 0-2): clouds 0,1 see z = 20, -2, -2: mean logit 16/3 > 0 -> class 1 (right), while the
#                  mean softmax p1 = (sigmoid(20) + 2 sigmoid(-2)) / 3 = 0.413 -> class 0 (wrong);
#                  clouds 2,3 see -1 three times -> wrong.                      logits 50 %, softmax 0 %
#  pass 1 (k 3-5): every cloud sees +1 -> right.                                100 %
#  pass 2 (k 6-8): cloud 0 sees +1, the others -1.                              25 %
_VOTE_TABLE = [
    [20, 20, -1, -1],
    [-2, -2, -1, -1],
    [-2, -2, -1, -1],
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [1, -1, -1, -1],
    [1, -1, -1, -1],
    [1, -1, -1, -1],
]


def test_vote_averages_logits_not_softmax():
    loader = torch.utils.data.DataLoader(_tagged_clouds(), batch_size=4)
    m = evaluate_classification(
        _TableModel(_VOTE_TABLE), loader, npoints=8, point_all=8, vote=3, vote_transform=_TagViews()
    )
    assert m["acc"] == 0.0
    assert m["acc_vote@3"] == 50.0  # mean softmax would give 0 %


def test_vote_repeats_max_is_max_of_passes():
    loader = torch.utils.data.DataLoader(_tagged_clouds(), batch_size=4)
    m = evaluate_classification(
        _TableModel(_VOTE_TABLE), loader, npoints=8, point_all=8, vote=3, vote_transform=_TagViews(), vote_repeats=3
    )
    # passes: 50 %, 100 %, 25 % (hand-computed above)
    assert m["acc_vote@3"] == 50.0  # the first pass alone
    assert m["acc_vote@3_max_of_3"] == 100.0  # the best pass
    assert m["acc_vote@3_mean_of_3"] == pytest.approx(175.0 / 3)
    assert m["acc"] == 0.0


def test_vote_draws_a_fresh_subset_per_view_shared_by_the_batch():
    # Points are labelled by their index (x) and cloud (y); with the identity transform the model
    # sees exactly which pool points each view holds.
    N, npts, V, R = 20, 6, 5, 2
    items = []
    for c in range(6):
        pts = torch.stack([torch.arange(N, dtype=torch.float32), torch.full((N,), float(c)), torch.zeros(N)], -1)
        items.append({"points": pts, "label": torch.tensor(0)})
    model = _Recorder(_MeanLinear())
    evaluate_classification(
        model,
        torch.utils.data.DataLoader(items, batch_size=3),
        npoints=npts,
        point_all=N,
        vote=V,
        vote_transform=lambda x: x,
        vote_repeats=R,
    )
    assert len(model.seen) == 2 * (1 + V * R)  # per batch: the plain pass, then V views x R passes
    for batch in range(2):
        views = model.seen[batch * (1 + V * R) + 1 : (batch + 1) * (1 + V * R)]
        subsets = []
        for view in views:
            assert view.shape == (3, npts, 3)
            idx = view[..., 0].long()
            assert torch.equal(view[..., 1], torch.arange(3 * batch, 3 * batch + 3).float()[:, None].expand(3, npts))
            assert torch.equal(idx, idx[:1].expand(3, npts))  # one subset shared by the batch
            assert len(set(idx[0].tolist())) == npts  # drawn without replacement
            subsets.append(tuple(sorted(idx[0].tolist())))
        for r in range(R):  # a fresh subset for every view
            assert len(set(subsets[r * V : (r + 1) * V])) == V
        assert len(set(subsets)) == V * R


def test_default_vote_transform_is_scale_and_translate():
    # Each cloud holds 8 points at (0,0,0) and 8 at (1,1,1); a view of A=0, B=1 under
    # p -> p * s + t is {t, s + t}: min = t, max = s + t per axis. Default: anisotropic scale
    # s ~ U(2/3, 3/2) per axis and sample, shift t ~ U(-0.2, 0.2).
    items = []
    for _ in range(4):
        pts = torch.zeros(16, 3)
        pts[1::2] = 1.0
        items.append({"points": pts, "label": torch.tensor(0)})
    model = _Recorder(_MeanLinear())
    evaluate_classification(model, torch.utils.data.DataLoader(items, batch_size=4), npoints=8, point_all=16, vote=10)
    views = torch.stack(model.seen[1:])  # (10 views, 4 clouds, 8, 3); seen[0] is the plain pass
    assert views.shape == (10, 4, 8, 3)
    lo, hi = views.min(2).values, views.max(2).values
    is_lo = torch.isclose(views, lo[:, :, None]).all(-1)
    is_hi = torch.isclose(views, hi[:, :, None]).all(-1)
    assert torch.all(is_lo | is_hi) and torch.all(is_lo.any(-1)) and torch.all(is_hi.any(-1))
    s, t = hi - lo, lo
    assert torch.all(s >= 2 / 3 - 1e-5) and torch.all(s <= 1.5 + 1e-5)
    assert torch.all(t.abs() <= 0.2 + 1e-5)
    # really random, per axis and per cloud (not the identity, not one isotropic factor)
    assert s.min() < 0.8 and s.max() > 1.35 and t.min() < -0.1 and t.max() > 0.1
    assert (s[..., 0] - s[..., 1]).abs().max() > 0.1 and (s[:, 0] - s[:, 1]).abs().max() > 0.1
    # the plain pass is not augmented
    assert set(model.seen[0].unique().tolist()) <= {0.0, 1.0}


def test_classification_user_errors():
    loader = torch.utils.data.DataLoader(_cls_items(n=2, N=10), batch_size=2)
    with pytest.raises(ValueError, match="npoints=16"):
        evaluate_classification(_MeanLinear(), loader, npoints=16)
    with pytest.raises(ValueError, match="no samples"):
        evaluate_classification(_MeanLinear(), [], npoints=4)


# ------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes on the CPU give the single-process numbers
# ------------------------------------------------------------------------------------------------


def _ddp_worker(rank, world, store, queue):
    import datetime

    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: not whatever the hostname resolves to
    # a file store: no port to pick (and lose to another process) between choosing and binding it
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    import faulthandler

    faulthandler.dump_traceback_later(240)  # a rank still here at 240 s prints its stacks (the wait ends at 300 s)
    try:
        items = _cls_items(n=10, N=40)[rank::world]
        cls_m = evaluate_classification(_MeanLinear(), torch.utils.data.DataLoader(items, batch_size=3), npoints=16)
        cats = list(SHAPENETPART_SEG_CLASSES.values())
        g = torch.Generator().manual_seed(3)
        seg_items = [
            {
                "points": torch.randn(20, 3, generator=g),
                "cls": torch.tensor(i % 16),
                "seg": torch.tensor(cats[i % 16])[torch.randint(0, 2, (20,), generator=g)],
            }
            for i in range(8)
        ][rank::world]
        seg_m = evaluate_partseg(_SegModel(cats), torch.utils.data.DataLoader(seg_items, batch_size=2))
        # the object collectives with payloads of different lengths on the two ranks (padding)
        gathered = all_gather_list([f"r{rank}"] * (1 + 40 * rank))
        sent = broadcast_object({"from": rank, "pad": "x" * 99} if rank == 1 else None, src=1)
        raw = _gather_bytes(bytes(range(1 + 50 * rank)))  # each part exactly as long as it was sent
        queue.put((rank, cls_m, seg_m, gathered, sent, raw))
        # the result is in the pipe before the group goes, and a cleanup still running after 45 s
        # prints its stacks and ends the worker (exit code 1), before the parent's 60 s join
        queue.close()
        queue.join_thread()
        faulthandler.dump_traceback_later(45, exit=True)
    finally:
        cleanup_distributed()
        faulthandler.cancel_dump_traceback_later()


def _results(procs, queue, deadline_s: float = 300.0) -> list:
    """One result per worker; a worker that dies first fails the test at once, with its exit code."""
    import queue as queue_mod

    results, end = [], time.monotonic() + deadline_s
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=1.0))
        except queue_mod.Empty:
            dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            assert not dead, f"DDP worker(s) died before reporting (rank, exit code): {dead}"
            assert time.monotonic() < end, f"DDP workers did not report within {deadline_s:.0f} s ({len(results)} did)"
    return results


def test_a_ddp_worker_that_dies_fails_the_wait_at_once():
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=os._exit, args=(3,))]
    procs[0].start()
    t = time.monotonic()
    with pytest.raises(AssertionError, match=r"died before reporting .*\(0, 3\)"):
        _results(procs, queue, deadline_s=120)
    assert time.monotonic() - t < 60
    procs[0].join()


def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "store"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = _results(procs, queue)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    single = evaluate_classification(
        _MeanLinear(), torch.utils.data.DataLoader(_cls_items(n=10, N=40), batch_size=3), npoints=16
    )
    cats = list(SHAPENETPART_SEG_CLASSES.values())
    g = torch.Generator().manual_seed(3)
    seg_items = [
        {
            "points": torch.randn(20, 3, generator=g),
            "cls": torch.tensor(i % 16),
            "seg": torch.tensor(cats[i % 16])[torch.randint(0, 2, (20,), generator=g)],
        }
        for i in range(8)
    ]
    seg_single = evaluate_partseg(_SegModel(cats), torch.utils.data.DataLoader(seg_items, batch_size=2))
    for _, cls_m, seg_m, gathered, sent, raw in results:
        assert gathered == ["r0"] + ["r1"] * 41
        assert raw == [bytes(range(1)), bytes(range(51))]
        assert sent == {"from": 1, "pad": "x" * 99}
        assert cls_m["acc"] == pytest.approx(single["acc"]) and cls_m["count"] == 10
        for k in ("inst_miou", "cls_miou", "point_acc", "class_avg_acc", "num_shapes"):
            assert seg_m[k] == pytest.approx(seg_single[k]), k


# ------------------------------------------------------------------------------------------------
# details the protocol tests above do not reach
# ------------------------------------------------------------------------------------------------
def test_batch_field_errors_name_the_keys():
    loader = [[torch.zeros(1, 4, 3), torch.zeros(1)]]
    with pytest.raises(TypeError, match=r"dicts with keys \['points', 'label'\], got list"):
        evaluate_classification(_MeanLinear(), loader, npoints=4)
    with pytest.raises(KeyError, match=r"no key\(s\) \['label'\]; it has \['lab', 'points'\]"):
        evaluate_classification(_MeanLinear(), [{"points": torch.zeros(1, 4, 3), "lab": torch.zeros(1)}], npoints=4)


def test_partseg_edge_cases_by_hand():
    # a category index equal to the number of categories is out of range
    with pytest.raises(ValueError, match="category index 2 out of range for 2 categories"):
        part_seg_miou(PRED, GT, np.array([0, 0, 2]), SEG2)
    with pytest.raises(ValueError, match=r"predictions must be logits \(S,N,P\) or labels \(S,N\)"):
        part_seg_miou(np.zeros((3, 4, 5, 1)), GT, CLS, SEG2)
    with pytest.raises(ValueError, match="^part_seg_miou: no shapes to evaluate$"):
        part_seg_miou(np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4), dtype=np.int64), np.zeros(0), SEG2)
    with pytest.raises(ValueError, match="seg_classes: category 'cat1' has no parts"):
        part_seg_miou(PRED, GT, CLS, [[0, 1], []])
    # one shape, one point: part 2 seen once and predicted right -> every metric 100 %
    m = part_seg_miou(np.array([[2]]), np.array([[2]]), np.array([1]), [[0, 1], [2, 3, 4]])
    assert m["point_acc"] == 100.0 and m["class_avg_acc"] == 100.0 and m["inst_miou"] == 100.0
    assert list(m["per_category"]) == ["cat1"]
    # one point wrong: part 2 seen once, never hit; part 3 absent from the truth
    m = part_seg_miou(np.array([[3]]), np.array([[2]]), np.array([1]), [[0, 1], [2, 3, 4]])
    assert m["point_acc"] == 0.0 and m["class_avg_acc"] == 0.0
    assert m["inst_miou"] == pytest.approx(100 * (0 + 0 + 1) / 3)
    # the highest part id (4) present in the truth but never predicted right: per-part accuracy
    # counts it (seen once, hit never): p2 1/1, p4 0/1 -> 50 %
    m = part_seg_miou(np.array([[2, 3]]), np.array([[2, 4]]), np.array([1]), [[0, 1], [2, 3, 4]])
    assert m["class_avg_acc"] == 50.0 and m["point_acc"] == 50.0


def test_partseg_table_layout():
    m = part_seg_miou(PRED, GT, CLS, SEG2)
    lines = format_partseg_table(m).split("\n")
    assert lines[0] == f"{'category':<12} {'shapes':>6} {'mIoU':>7}"
    assert lines[1] == f"{'A':<12} {2:>6d} {100 * (7 / 12 + 1) / 2:>7.2f}"
    assert lines[2] == f"{'B':<12} {1:>6d} {100 * 13 / 18:>7.2f}"
    assert lines[3].startswith(f"Inst. mIoU {HAND['inst_miou']:.2f}  Cls. mIoU {HAND['cls_miou']:.2f}")
    assert len(lines) == 4


def test_one_process_group_gives_the_same_metrics_and_exact_sums(tmp_path):
    # under an initialised process group the correct/count sums go through all_reduce (float64,
    # on the CPU for gloo) and part-seg shapes through all_gather_object; with one rank they must
    # be the plain numbers, exactly
    from clora3d.engine import evaluate as ev

    items = _cls_items(n=10, N=40)
    plain = evaluate_classification(_MeanLinear(), torch.utils.data.DataLoader(items, batch_size=3), npoints=16)
    cats = list(SHAPENETPART_SEG_CLASSES.values())
    g = torch.Generator().manual_seed(3)
    seg_items = [
        {
            "points": torch.randn(20, 3, generator=g),
            "cls": torch.tensor(i % 16),
            "seg": torch.tensor(cats[i % 16])[torch.randint(0, 2, (20,), generator=g)],
        }
        for i in range(6)
    ]
    seg_plain = evaluate_partseg(_SegModel(cats), torch.utils.data.DataLoader(seg_items, batch_size=2))
    assert ev.all_gather_list([1, 2]) == [1, 2] and ev.all_reduce_sum([3, 4.5], torch.device("cpu")) == [3.0, 4.5]
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        big = 2**53 - 1  # exact in float64, not in float32
        got = ev.all_reduce_sum([big, 1, 0.5], torch.device("cpu"))
        assert got == [float(big), 1.0, 0.5] and all(type(v) is float for v in got)
        assert ev.all_gather_list([("a", 1), ("b", 2)]) == [("a", 1), ("b", 2)]
        dist = evaluate_classification(_MeanLinear(), torch.utils.data.DataLoader(items, batch_size=3), npoints=16)
        seg_dist = evaluate_partseg(_SegModel(cats), torch.utils.data.DataLoader(seg_items, batch_size=2))
    finally:
        cleanup_distributed()
    assert dist == plain
    for k in ("inst_miou", "cls_miou", "point_acc", "class_avg_acc", "num_shapes", "per_category"):
        assert seg_dist[k] == seg_plain[k], k

"""Evaluation protocols: classification accuracy (plain and vote@N) and part-segmentation mIoU.

Conventions (see ``shared/reference/point_mae_family.md`` §3.4 and §5):

* Every accuracy / IoU is reported in **percent** (0..100), as the references log them.
* Plain accuracy uses deterministic farthest point sampling (start index 0) down to ``npoints`` and
  no augmentation. It is stored under ``"acc"``. Clouds that already have ``npoints`` points are
  used as they are (FPS to N points only reorders them from the same first point, which the
  model's own FPS grouping and max-pooled patch encoder do not see).
* Voting (``vote=N > 0``) is reported separately under ``"acc_vote@N"`` and never mixed with the
  plain number: per batch, FPS the raw cloud to ``point_all`` points, then N times draw one random
  subset of ``npoints`` indices shared by the whole batch, apply a scale-and-translate test-time
  augmentation, forward; average the N logit tensors and take the argmax.
* The references repeat the whole voting evaluation 299 times and publish the **maximum**. That is
  not done by default. ``vote_repeats=R`` runs R voting passes and additionally reports
  ``"acc_vote@N_max_of_R"`` (the reference's number, an optimistic best-of-R) and
  ``"acc_vote@N_mean_of_R"``; ``"acc_vote@N"`` is always the first pass alone.
* Under ``torch.distributed`` (process group initialised) the correct/count sums are all-reduced,
  and part-segmentation per-shape results are gathered, so every rank returns the global metrics.
  A ``DistributedSampler`` pads the last shard by repeating samples; those repeats are counted, as
  in every DDP evaluation that uses it (use a non-padded sampler for exact numbers). Plain accuracy
  and mIoU are then identical to one process; vote@N draws its random views per rank, so it equals
  the single-process number only in distribution.
* Part segmentation follows the reference exactly: the argmax runs over the logits of the shape's
  ground-truth category only; per shape, the IoU of each part of that category, with IoU = 1 when
  the part is absent from both ground truth and prediction; Inst. mIoU = mean of shape mIoUs over
  all shapes; Cls. mIoU = mean over the categories present of the mean shape mIoU within each.

Size: about 380 lines as written, 422 after ``ruff format``; the two tasks' protocols share the
batching and the distributed reduction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from clora3d.engine.distributed import active, all_gather_list, all_reduce_sum

__all__ = [
    "SHAPENETPART_SEG_CLASSES",
    "evaluate_classification",
    "evaluate_partseg",
    "part_seg_miou",
    "normalize_seg_classes",
    "format_partseg_table",
]

# ShapeNetPart categories in index order (synsetoffset2category.txt line order) and the global part
# ids of each (reference §4.4): 16 categories, 50 parts.
SHAPENETPART_SEG_CLASSES: dict[str, list[int]] = {
    "Airplane": [0, 1, 2, 3],
    "Bag": [4, 5],
    "Cap": [6, 7],
    "Car": [8, 9, 10, 11],
    "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18],
    "Guitar": [19, 20, 21],
    "Knife": [22, 23],
    "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29],
    "Motorbike": [30, 31, 32, 33, 34, 35],
    "Mug": [36, 37],
    "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43],
    "Skateboard": [44, 45, 46],
    "Table": [47, 48, 49],
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _batch_fields(batch: Any, names: Sequence[str]) -> list[torch.Tensor]:
    """Take fields from a dataset batch (dict of tensors as in the data contract)."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"evaluate: expected batches that are dicts with keys {list(names)}, got {type(batch).__name__}"
        )
    missing = [n for n in names if n not in batch]
    if missing:
        raise KeyError(f"evaluate: batch has no key(s) {missing}; it has {sorted(batch)}")
    return [batch[n] for n in names]


def _fps(points: torch.Tensor, n: int) -> torch.Tensor:
    """Deterministic farthest point sampling (first index 0) of ``points (B,N,3)`` to ``n`` points."""
    from clora3d import ops

    idx = ops.furthest_point_sample(points.contiguous(), n)
    return ops.gather_points(points, idx)


def _default_vote_transform() -> Callable:
    from clora3d.data.transforms import ScaleAndTranslate

    return ScaleAndTranslate()


def _apply_transform(transform: Callable, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return transform(points)
    try:
        return transform(points, generator=generator)
    except TypeError:  # a user callable without a generator argument
        return transform(points)


class _train_mode_guard:
    """Put a model in eval mode for the duration of a ``with`` and restore its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


# --------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_classification(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    npoints: int,
    vote: int = 0,
    vote_transform: Callable | None = None,
    point_all: int | None = None,
    generator: torch.Generator | None = None,
    vote_repeats: int = 1,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``loader`` (batches ``{"points": (B,N,3), "label": (B,)}``).

    Returns ``{"acc", "correct", "count"}`` and, when ``vote > 0``, ``"acc_vote@{vote}"`` (plus
    ``"acc_vote@{vote}_max_of_{R}"`` / ``"..._mean_of_{R}"`` when ``vote_repeats=R > 1``).
    ``point_all`` is the size of the FPS pool that vote subsets are drawn from (reference: 1200 for
    1k points, 4800 for 4k, 8192 for 8k; default: 1200 when ``npoints == 1024`` else ``npoints``);
    it is clipped to the number of points available. ``vote_transform`` defaults to
    ``ScaleAndTranslate()``; ``generator`` drives the vote subsets and the augmentation (default:
    a CPU generator seeded 0, so repeated calls give the same vote@N).
    """
    if npoints <= 0:
        raise ValueError(f"evaluate_classification: npoints must be positive, got {npoints}")
    if vote < 0 or vote_repeats < 1:
        raise ValueError(
            f"evaluate_classification: need vote >= 0 and vote_repeats >= 1, "
            f"got vote={vote}, vote_repeats={vote_repeats}"
        )
    device = torch.device(device)
    if vote > 0:
        if vote_transform is None:
            vote_transform = _default_vote_transform()
        if point_all is None:
            point_all = {1024: 1200, 4096: 4800, 8192: 8192}.get(npoints, npoints)
        if point_all < npoints:
            raise ValueError(f"evaluate_classification: point_all={point_all} < npoints={npoints}")
    if generator is None and vote > 0:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(0)

    correct = 0
    count = 0
    vote_correct = [0] * (vote_repeats if vote > 0 else 0)
    with _train_mode_guard(model):
        for batch in loader:
            points, label = _batch_fields(batch, ("points", "label"))
            points = points.to(device, non_blocking=True).float()
            label = label.to(device).view(-1).long()
            n_avail = points.shape[1]
            if n_avail < npoints:
                raise ValueError(
                    f"evaluate_classification: the batch has {n_avail} points per cloud "
                    f"but npoints={npoints}; lower npoints or use a denser dataset"
                )
            pts = points if n_avail == npoints else _fps(points, npoints)
            pred = model(pts).argmax(-1)
            correct += int((pred == label).sum())
            count += int(label.numel())
            if vote > 0:
                pool_n = min(int(point_all), n_avail)  # type: ignore[arg-type]
                pool = points if pool_n == n_avail else _fps(points, pool_n)
                for r in range(vote_repeats):
                    logits_sum = None
                    for _ in range(vote):
                        sub = torch.randperm(pool_n, generator=generator, device=generator.device)[:npoints].to(device)
                        view = pool[:, sub, :]
                        view = _apply_transform(vote_transform, view, generator)
                        logits = model(view).float()
                        logits_sum = logits if logits_sum is None else logits_sum + logits
                    vpred = (logits_sum / vote).argmax(-1)
                    vote_correct[r] += int((vpred == label).sum())

    sums = all_reduce_sum([correct, count, *vote_correct], device)
    correct_g, count_g, vote_g = sums[0], sums[1], sums[2:]
    if count_g == 0:
        raise ValueError("evaluate_classification: the loader yielded no samples")
    out: dict[str, float] = {"acc": 100.0 * correct_g / count_g, "correct": int(correct_g), "count": int(count_g)}
    if vote > 0:
        accs = [100.0 * c / count_g for c in vote_g]
        out[f"acc_vote@{vote}"] = accs[0]
        if vote_repeats > 1:
            out[f"acc_vote@{vote}_max_of_{vote_repeats}"] = max(accs)
            out[f"acc_vote@{vote}_mean_of_{vote_repeats}"] = float(np.mean(accs))
    return out


# --------------------------------------------------------------------------------------------------
# part segmentation
# --------------------------------------------------------------------------------------------------


def normalize_seg_classes(
    seg_classes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | None,
) -> list[tuple[str, list[int]]]:
    """``[(category name, [global part ids])]`` in category-index order.

    Accepts a dict ``{name: parts}`` (insertion order = category index), a list of part lists
    (names become ``"cat{i}"``) or ``None`` (ShapeNetPart's 16 categories).
    """
    if seg_classes is None:
        seg_classes = SHAPENETPART_SEG_CLASSES
    if isinstance(seg_classes, Mapping):
        items = [(str(k), [int(p) for p in v]) for k, v in seg_classes.items()]
    else:
        items = [(f"cat{i}", [int(p) for p in v]) for i, v in enumerate(seg_classes)]
    for name, parts in items:
        if not parts:
            raise ValueError(f"seg_classes: category {name!r} has no parts")
    return items


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _restricted_labels(pred: np.ndarray, cls: np.ndarray, cats: list[tuple[str, list[int]]]) -> np.ndarray:
    """Per-point labels: argmax of the logits of the shape's category parts only (or labels as given)."""
    if pred.ndim == 2:
        return pred.astype(np.int64)
    if pred.ndim != 3:
        raise ValueError(f"part_seg_miou: predictions must be logits (S,N,P) or labels (S,N), got shape {pred.shape}")
    out = np.empty(pred.shape[:2], dtype=np.int64)
    for s in range(pred.shape[0]):
        parts = np.asarray(cats[int(cls[s])][1])
        out[s] = parts[np.argmax(pred[s][:, parts], axis=-1)]
    return out


def _shape_ious(
    pred_lab: np.ndarray, seg: np.ndarray, cls: np.ndarray, cats: list[tuple[str, list[int]]]
) -> list[tuple[int, float]]:
    """``[(category, shape mIoU)]`` per shape, absent-in-both part IoU = 1."""
    res = []
    for s in range(seg.shape[0]):
        c = int(cls[s])
        ious = []
        for p in cats[c][1]:
            in_gt, in_pred = seg[s] == p, pred_lab[s] == p
            union = np.logical_or(in_gt, in_pred).sum()
            ious.append(1.0 if union == 0 else np.logical_and(in_gt, in_pred).sum() / union)
        res.append((c, float(np.mean(ious))))
    return res


def _summarise(
    shape_res: list[tuple[int, float]],
    point_correct: float,
    point_count: float,
    part_seen: np.ndarray,
    part_correct: np.ndarray,
    cats: list[tuple[str, list[int]]],
) -> dict[str, Any]:
    if not shape_res:
        raise ValueError("part_seg_miou: no shapes to evaluate")
    per_cat: dict[str, dict[str, float]] = {}
    cat_means = []
    for c, (name, _) in enumerate(cats):
        vals = [m for cc, m in shape_res if cc == c]
        if vals:
            mean = float(np.mean(vals))
            per_cat[name] = {"miou": 100.0 * mean, "shapes": len(vals)}
            cat_means.append(mean)
    seen = part_seen > 0
    return {
        "inst_miou": 100.0 * float(np.mean([m for _, m in shape_res])),
        "cls_miou": 100.0 * float(np.mean(cat_means)),
        "point_acc": 100.0 * point_correct / max(point_count, 1),
        "class_avg_acc": 100.0 * float(np.mean(part_correct[seen] / part_seen[seen])),
        "num_shapes": len(shape_res),
        "per_category": per_cat,
    }


def _check_cls(cls: np.ndarray, cats: list) -> None:
    if cls.size and (cls.min() < 0 or cls.max() >= len(cats)):
        raise ValueError(
            f"part_seg_miou: category index {int(cls.max())} out of range for {len(cats)} categories in seg_classes"
        )


def part_seg_miou(
    pred_logits_or_labels: Any,
    seg_gt: Any,
    cls: Any,
    seg_classes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """ShapeNetPart metrics exactly as the reference computes them.

    ``pred_logits_or_labels``: logits / log-probabilities ``(S, N, P)`` (the argmax is restricted
    to the parts of each shape's category) or predicted global part labels ``(S, N)``;
    ``seg_gt``: ``(S, N)`` global part ids; ``cls``: ``(S,)`` category indices into
    ``seg_classes``. Returns percentages ``inst_miou`` (mean shape mIoU), ``cls_miou`` (mean over
    categories present of the per-category mean shape mIoU), ``point_acc``, ``class_avg_acc``
    (mean over seen parts of per-part point accuracy), ``num_shapes`` and ``per_category``
    (``{name: {"miou", "shapes"}}``).
    """
    cats = normalize_seg_classes(seg_classes)
    pred = _as_numpy(pred_logits_or_labels)
    seg = _as_numpy(seg_gt).astype(np.int64)
    cls_np = _as_numpy(cls).astype(np.int64).reshape(-1)
    if seg.ndim != 2 or pred.shape[:2] != seg.shape or cls_np.shape[0] != seg.shape[0]:
        raise ValueError(
            f"part_seg_miou: shapes do not match: pred {pred.shape}, seg {seg.shape}, "
            f"cls {cls_np.shape}; expected (S,N[,P]), (S,N), (S,)"
        )
    _check_cls(cls_np, cats)
    lab = _restricted_labels(pred, cls_np, cats)
    n_parts = max(max(p) for _, p in cats) + 1
    part_seen = np.bincount(seg.reshape(-1), minlength=n_parts).astype(np.float64)
    hit = seg == lab
    part_correct = np.bincount(seg[hit], minlength=n_parts).astype(np.float64)
    return _summarise(
        _shape_ious(lab, seg, cls_np, cats), float(hit.sum()), float(seg.size), part_seen, part_correct, cats
    )


@torch.no_grad()
def evaluate_partseg(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    seg_classes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Part-segmentation metrics of ``model`` (``model(pts, cls_onehot) -> (B,N,P)``) on ``loader``.

    Batches are ``{"points": (B,N,3), "cls": (B,), "seg": (B,N)}``. The category one-hot has one
    column per entry of ``seg_classes`` (16 for ShapeNetPart). Metrics as in :func:`part_seg_miou`,
    accumulated over the whole loader (and over ranks under DDP).
    """
    device = torch.device(device)
    cats = normalize_seg_classes(seg_classes)
    n_parts = max(max(p) for _, p in cats) + 1
    shape_res: list[tuple[int, float]] = []
    point_correct = 0.0
    point_count = 0.0
    part_seen = np.zeros(n_parts)
    part_correct = np.zeros(n_parts)
    with _train_mode_guard(model):
        for batch in loader:
            points, cls, seg = _batch_fields(batch, ("points", "cls", "seg"))
            points = points.to(device).float()
            cls_t = cls.to(device).view(-1).long()
            onehot = torch.nn.functional.one_hot(cls_t, len(cats)).float()
            logits = model(points, onehot)
            pred = _as_numpy(logits.float())
            seg_np = _as_numpy(seg).astype(np.int64)
            cls_np = _as_numpy(cls_t)
            _check_cls(cls_np, cats)
            lab = _restricted_labels(pred, cls_np, cats)
            shape_res.extend(_shape_ious(lab, seg_np, cls_np, cats))
            hit = seg_np == lab
            point_correct += float(hit.sum())
            point_count += float(seg_np.size)
            part_seen += np.bincount(seg_np.reshape(-1), minlength=n_parts)[:n_parts]
            part_correct += np.bincount(seg_np[hit], minlength=n_parts)[:n_parts]
    if active():
        shape_res = all_gather_list(shape_res)
        sums = all_reduce_sum([point_correct, point_count, *part_seen, *part_correct], device)
        point_correct, point_count = sums[0], sums[1]
        part_seen = np.asarray(sums[2 : 2 + n_parts])
        part_correct = np.asarray(sums[2 + n_parts :])
    return _summarise(shape_res, point_correct, point_count, part_seen, part_correct, cats)


def format_partseg_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the per-category mIoU followed by the summary numbers."""
    lines = [f"{'category':<12} {'shapes':>6} {'mIoU':>7}"]
    for name, row in metrics["per_category"].items():
        lines.append(f"{name:<12} {row['shapes']:>6d} {row['miou']:>7.2f}")
    lines.append(
        f"Inst. mIoU {metrics['inst_miou']:.2f}  Cls. mIoU {metrics['cls_miou']:.2f}  "
        f"point acc {metrics['point_acc']:.2f}  ({metrics['num_shapes']} shapes)"
    )
    return "\n".join(lines)

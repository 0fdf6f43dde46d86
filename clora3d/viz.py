"""PNG rendering with matplotlib's Agg backend: point clouds, part-segmentation labels, training curves.

Nothing is imported from matplotlib at module import; every function builds its own ``Figure`` on
an Agg canvas (no pyplot global state, works headless). Clouds are drawn with the data sets' y axis
pointing up (ModelNet / ShapeNet convention): matplotlib's vertical axis shows y, depth shows z.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "render_cloud",
    "render_partseg",
    "plot_training_curves",
    "load_history",
    "part_colors",
    "load_labelled_cloud",
]

_HISTORY_FILES = ("metrics.jsonl", "metrics.csv", "history.json", "history.jsonl", "history.csv", "metrics.json")
#: per-epoch entries that are bookkeeping, not curves
_SKIP_SUFFIXES = ("time", "count", "correct", "is_best", "num_shapes")


def _figure(ncols: int, size: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, size), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _as_points(points: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency of clora3d
        pass
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[0] == 0:
        raise ValueError(f"viz: expected a non-empty (N, 3) point array, got shape {pts.shape}")
    return pts[:, :3]


def part_colors(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """RGBA colour per label from a fixed 20-colour palette (same id -> same colour everywhere)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    lab = np.asarray(labels, dtype=np.int64)
    # spread consecutive ids over the palette: even entries first, then odd (dark/light pairs)
    slot = (lab * 2) % 20 + ((lab * 2) // 20) % 2
    return cmap(slot % 20)


def _scatter(ax, pts: np.ndarray, colors: Any, point_size: float, elev: float, azim: float, title: str | None) -> None:
    ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], c=colors, s=point_size, depthshade=False, linewidths=0)
    center = (pts.max(0) + pts.min(0)) / 2
    half = max(float((pts.max(0) - pts.min(0)).max()) / 2, 1e-6)
    ax.set_xlim(center[0] - half, center[0] + half)
    ax.set_ylim(center[2] - half, center[2] + half)
    ax.set_zlim(center[1] - half, center[1] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"viz: output file must end in .png, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def render_cloud(
    points: Any,
    out: str | Path,
    *,
    colors: Any = None,
    title: str | None = None,
    point_size: float = 2.0,
    elev: float = 20.0,
    azim: float = -60.0,
    size: float = 5.0,
) -> Path:
    """Render one cloud ``(N, 3)`` to a PNG; default colour encodes height (y)."""
    pts = _as_points(points)
    fig = _figure(1, size)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    if colors is None:
        from matplotlib import colormaps

        y = pts[:, 1]
        colors = colormaps["viridis"]((y - y.min()) / max(float(np.ptp(y)), 1e-9))
    _scatter(ax, pts, colors, point_size, elev, azim, title)
    return _save(fig, out)


def render_partseg(
    points: Any,
    labels: Any,
    out: str | Path,
    *,
    gt: Any = None,
    part_names: Mapping[int, str] | None = None,
    title: str | None = None,
    point_size: float = 2.0,
    elev: float = 20.0,
    azim: float = -60.0,
    size: float = 5.0,
) -> Path:
    """Render part labels colour-coded (prediction, and ground truth beside it when ``gt`` given).

    A legend lists the parts present (``part_names`` maps a global part id to its name).
    """
    from matplotlib.patches import Patch

    pts = _as_points(points)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.shape[0] != pts.shape[0]:
        raise ValueError(f"viz: {lab.shape[0]} labels for {pts.shape[0]} points")
    panels = [("prediction" if gt is not None else (title or "parts"), lab)]
    if gt is not None:
        g = np.asarray(gt, dtype=np.int64).reshape(-1)
        if g.shape[0] != pts.shape[0]:
            raise ValueError(f"viz: {g.shape[0]} ground-truth labels for {pts.shape[0]} points")
        panels.append(("ground truth", g))
    fig = _figure(len(panels), size)
    for i, (name, lb) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        _scatter(ax, pts, part_colors(lb), point_size, elev, azim, name)
    present = sorted(set(np.concatenate([p[1] for p in panels]).tolist()))
    handles = [Patch(color=part_colors([p])[0], label=(part_names or {}).get(p, f"part {p}")) for p in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title and gt is not None:
        fig.suptitle(title)
    return _save(fig, out)


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"viz: label file not found: {path}")
    try:
        arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"viz: cannot read labels from {path} ({e}); expected one integer per point (.txt or .npy)"
        ) from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] >= 4:  # "x y z label" rows as written by tools/infer.py
        arr = arr[:, -1]
    return arr.reshape(-1).astype(np.int64)


def load_labelled_cloud(file: str | Path, labels: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(xyz, part labels or None)``: labels from ``labels`` (one per point, or ``x y z label``
    rows), else the last column of a 4- or 7-column text/npy file (ShapeNetPart ``x y z nx ny nz
    part``), else None."""
    from clora3d.data.io import read_point_cloud

    path = Path(file)
    if labels is not None:
        xyz, _ = read_point_cloud(path)
        lab = _read_labels(Path(labels))
        if lab.shape[0] != xyz.shape[0]:
            raise ValueError(f"viz: {labels} has {lab.shape[0]} labels but {path} has {xyz.shape[0]} points")
        return xyz, lab
    if path.suffix.lower() in (".txt", ".npy") and path.is_file():
        try:
            arr = np.load(path) if path.suffix.lower() == ".npy" else np.loadtxt(path, ndmin=2)
        except (OSError, ValueError):
            arr = None
        if arr is not None and arr.ndim == 2 and arr.shape[1] in (4, 7):
            return arr[:, :3].astype(np.float32), arr[:, -1].astype(np.int64)
    xyz, _ = read_point_cloud(path)
    return xyz, None


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_history(run: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per-epoch metric dicts from a run folder (history JSON/JSONL/CSV), a ``train()`` result or a list."""
    if isinstance(run, Mapping):
        if "history" not in run:
            raise ValueError("viz: the result dict has no 'history' key")
        return [_flatten(r) for r in run["history"]]
    if not isinstance(run, (str, Path)):
        return [_flatten(r) for r in run]
    path = Path(run)
    if path.is_dir():
        cands = [path / n for n in _HISTORY_FILES if (path / n).is_file()]
        if not cands:
            raise FileNotFoundError(
                f"viz: no training history in {path} (looked for "
                f"{', '.join(_HISTORY_FILES)}); pass the run folder written by "
                "tools/train.py"
            )
        path = cands[0]
    elif not path.is_file():
        raise FileNotFoundError(f"viz: {path} does not exist; pass a run folder or its history file")
    text = path.read_text()
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        rows = data.get("history", data) if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"viz: {path} holds no per-epoch records")
    return [_flatten(r) for r in rows]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"loss": 1}}`` -> ``{"train.loss": 1}`` (the trainer's nested history records)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _group_of(key: str) -> str:
    k = key.lower()
    if "loss" in k:
        return "loss"
    if k == "lr" or k.endswith(("_lr", ".lr")) or "learning_rate" in k:
        return "learning rate"
    return "metrics"


def plot_training_curves(run: Any, out: str | Path, *, keys: Iterable[str] | None = None, size: float = 4.0) -> Path:
    """Plot every numeric per-epoch series (losses, metrics, learning rate in separate panels)."""
    from matplotlib.ticker import MaxNLocator

    rows = load_history(run)
    xkey = "epoch" if all("epoch" in r for r in rows) else None
    xs = [(_num(r["epoch"]) if xkey else i) for i, r in enumerate(rows)]
    wanted = list(keys) if keys is not None else None
    series: dict[str, list[tuple[float, float]]] = {}
    for x, r in zip(xs, rows):
        for k, v in r.items():
            if k == xkey or (wanted is not None and k not in wanted):
                continue
            if wanted is None and k.rsplit(".", 1)[-1] in _SKIP_SUFFIXES:
                continue
            y = _num(v)
            if y is not None and math.isfinite(y) and x is not None:
                series.setdefault(k, []).append((x, y))
    if not series:
        raise ValueError("viz: the history has no numeric series to plot")
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(_group_of(k), []).append(k)
    order = [g for g in ("loss", "metrics", "learning rate") if g in groups]
    fig = _figure(len(order), size)
    for i, g in enumerate(order):
        ax = fig.add_subplot(1, len(order), i + 1)
        for k in groups[g]:
            pts = series[k]
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3, label=k
            )
        ax.set_xlabel(xkey or "record")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(g)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out)

"""Sampling a shape of the catalogue into a point cloud: points over its parts in proportion to their
area, then pose, anisotropic scale, a density gradient and noise (``make_shape``, ``make_part_shape``,
``make_scan_shape``)."""
from __future__ import annotations

from typing import Callable, Union

import numpy as np

from clora3d.data.shapenet import CATEGORY_NAMES
from clora3d.data.synthetic.catalog import _CLASS_BUILDERS, PART_BUILDERS, SYNTHETIC_CLASSES
from clora3d.data.synthetic.primitives import _SAMPLERS, _Part, _rot, _unit

# ------------------------------------------------------------------------------------ sampling


def _sample_parts(parts: list[_Part], n_points: int, rng: np.random.Generator, noise: bool = True,
                  pose: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample n points over the parts, then pose/scale/density/noise; unit-sphere normalised."""
    dens = rng.uniform(0.7, 1.3, len(parts))
    w = np.array([p.area for p in parts]) * dens
    m = int(n_points * 1.5)  # oversample, then thin with a density gradient
    counts = rng.multinomial(m, w / w.sum())
    xs, ns, ls = [], [], []
    for p, c in zip(parts, counts):
        if c == 0:
            continue
        x, nr = _SAMPLERS[p.kind](int(c), rng, *p.params)
        xs.append(x @ p.R.T + p.t)
        ns.append(nr @ p.R.T)
        ls.append(np.full(int(c), p.label, np.int64))
    xyz, nrm, lab = np.concatenate(xs), np.concatenate(ns), np.concatenate(ls)
    xyz = xyz - (xyz.max(0) + xyz.min(0)) / 2
    d = _unit(rng.normal(size=3))
    beta = rng.uniform(0.0, 1.2)
    prob = np.exp(beta * (xyz @ d) / max(np.abs(xyz).max(), 1e-9))
    # weighted sampling without replacement (Efraimidis-Spirakis keys u^(1/w), largest n kept)
    keys = np.log(rng.uniform(1e-12, 1.0, xyz.shape[0])) / prob
    keep = np.argpartition(-keys, n_points - 1)[:n_points]
    xyz, nrm, lab = xyz[keep], nrm[keep], lab[keep]
    if pose:
        s = rng.uniform(0.8, 1.25, 3)
        xyz, nrm = xyz * s, _unit(nrm / s)
        R = _rot("y", rng.uniform(0, 2 * np.pi)) @ _rot("x", rng.uniform(-0.12, 0.12)) @ \
            _rot("z", rng.uniform(-0.12, 0.12))
        xyz, nrm = xyz @ R.T, nrm @ R.T
    xyz = xyz - xyz.mean(0)
    xyz = xyz / np.linalg.norm(xyz, axis=1).max()
    if noise:
        xyz = xyz + rng.normal(0, rng.uniform(0.002, 0.01), xyz.shape)
    return xyz.astype(np.float32), _unit(nrm).astype(np.float32), lab


def _uniform(rng: np.random.Generator) -> Callable[[float, float], float]:
    return lambda a, b: float(rng.uniform(a, b))


def make_shape(label: int, n_points: int, rng: np.random.Generator, return_normals: bool = False):
    """One cloud of class ``SYNTHETIC_CLASSES[label]``: float32 (n_points, 3) (+ normals)."""
    if not 0 <= int(label) < len(SYNTHETIC_CLASSES):
        raise ValueError(f"label must be in 0..{len(SYNTHETIC_CLASSES) - 1}, got {label}")
    parts = _CLASS_BUILDERS[SYNTHETIC_CLASSES[int(label)]](_uniform(rng))
    xyz, nrm, _ = _sample_parts(parts, int(n_points), rng)
    return (xyz, nrm) if return_normals else xyz


def make_part_shape(category: Union[int, str], n_points: int, rng: np.random.Generator):
    """Part-labelled cloud of a ShapeNetPart category (index 0..15 or name).

    Returns (xyz float32 (n,3), normals float32 (n,3), local part ids int64 (n,) in 0..k-1); the
    global ShapeNetPart id is ``SEG_CLASSES[name][local]``.
    """
    name = CATEGORY_NAMES[category] if isinstance(category, (int, np.integer)) else category
    if name not in PART_BUILDERS:
        raise ValueError(f"unknown ShapeNetPart category {category!r}; known: {CATEGORY_NAMES}")
    return _sample_parts(PART_BUILDERS[name](_uniform(rng)), int(n_points), rng)


def make_scan_shape(label: int, n_points: int, rng: np.random.Generator, *,
                    background: tuple[float, float] = (0.3, 0.5), cut: tuple[float, float] = (0.0, 0.35),
                    noise: tuple[float, float] = (0.01, 0.025)) -> tuple[np.ndarray, np.ndarray]:
    """A ScanObjectNN-like partial scan of class ``SYNTHETIC_CLASSES[label]``, a shifted distribution
    next to the clean shapes of :func:`make_shape`.

    1. the object surface, posed as in :func:`make_shape`;
    2. self-occlusion: a viewpoint (random azimuth, elevation 10-45 degrees); only points whose
       normal faces it are seen;
    3. an occluder: the points beyond a random vertical plane are dropped (a fraction in ``cut``
       of the visible object);
    4. clutter: a floor under the object and a wall behind it (seen from the viewpoint) make up a
       fraction in ``background`` of the points;
    5. sensor noise: Gaussian jitter (std in ``noise``) plus twice as much along the viewing ray;
    6. centred and scaled to the unit sphere together with the clutter (so the object shrinks).

    Returns ``xyz`` float32 (n_points, 3) and ``mask`` int32 (n_points,): 1 object, -1 background
    (the ScanObjectNN convention).
    """
    if not 0 <= int(label) < len(SYNTHETIC_CLASSES):
        raise ValueError(f"label must be in 0..{len(SYNTHETIC_CLASSES) - 1}, got {label}")
    n_points = int(n_points)
    n_bg = int(round(n_points * rng.uniform(*background)))
    n_obj = n_points - n_bg
    parts = _CLASS_BUILDERS[SYNTHETIC_CLASSES[int(label)]](_uniform(rng))
    xyz, nrm, _ = _sample_parts(parts, 4 * n_obj, rng, noise=False)
    az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(10, 45))
    view = np.array([np.cos(el) * np.cos(az), np.sin(el), np.cos(el) * np.sin(az)])  # object -> camera
    seen = (nrm @ view) > 0.0
    if seen.sum() < n_obj:  # degenerate normals (never for the built-in classes): keep the front half
        seen = (xyz @ view) >= np.median(xyz @ view)
    xyz = xyz[seen]
    side = _unit(np.array([-view[2], 0.0, view[0]]) + rng.normal(0, 0.3, 3) * np.array([1, 0, 1]))
    proj = xyz @ side
    keep = proj <= np.quantile(proj, 1.0 - rng.uniform(*cut))
    if keep.sum() >= n_obj:
        xyz = xyz[keep]
    obj = xyz[rng.choice(len(xyz), n_obj, replace=False)]
    # clutter: floor patch at the object's foot, wall behind it (away from the camera)
    horiz = _unit(np.array([view[0], 0.0, view[2]]))
    perp = np.array([-horiz[2], 0.0, horiz[0]])
    n_floor = int(rng.integers(n_bg // 3, 2 * n_bg // 3 + 1)) if n_bg else 0
    a = rng.uniform(-1.3, 1.3, (n_floor, 2))
    floor = a[:, :1] * horiz + a[:, 1:] * perp + np.array([0.0, obj[:, 1].min() - 0.02, 0.0])
    n_wall = n_bg - n_floor
    dist = rng.uniform(0.9, 1.3)
    b = np.stack([rng.uniform(-1.3, 1.3, n_wall), rng.uniform(obj[:, 1].min(), 1.2, n_wall)], 1)
    wall = -dist * horiz + b[:, :1] * perp + b[:, 1:] * np.array([0.0, 1.0, 0.0])
    pts = np.concatenate([obj, floor, wall])
    mask = np.concatenate([np.ones(n_obj), -np.ones(n_bg)]).astype(np.int32)
    sigma = rng.uniform(*noise)
    pts = pts + rng.normal(0, sigma, pts.shape) + rng.normal(0, 2 * sigma, (len(pts), 1)) * view
    perm = rng.permutation(n_points)
    pts, mask = pts[perm], mask[perm]
    pts = pts - pts.mean(0)
    pts = pts / np.linalg.norm(pts, axis=1).max()
    return pts.astype(np.float32), mask

"""Deterministic procedural point clouds and writers for every real on-disk data set format.

Shapes are unions of primitives (sphere, box, cylinder, cone, torus, disk, pyramid, ...) sampled on
their surfaces in proportion to area, with analytic normals. Every shape gets class-specific
random proportions, a random pose (full rotation about the up axis Y plus a small tilt), an
anisotropic scale, a density gradient (points are thinned towards one side) and Gaussian noise,
so classes are learnable but not trivially separable. All randomness comes from the
``np.random.Generator`` passed in: the same seed gives the same files.

Writers emit the formats the loaders (and the reference repos) read; ``write_all(root)`` writes
the whole ``data/`` layout of data/README.md.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from clora3d.data.modelnet import write_fewshot_folds_from_arrays
from clora3d.data.scanobjectnn import SCANOBJECTNN_CLASSES, SCANOBJECTNN_FILES
from clora3d.data.shapenet import CATEGORY_NAMES, SEG_CLASSES, SYNSETS

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# ----------------------------------------------------------------------------------- primitives
# Each sampler returns (points (n,3), normals (n,3)) in its local frame; `_AREA` gives the area.


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _s_sphere(n, rng, r):
    d = _unit(rng.normal(size=(n, 3)))
    return r * d, d


def _s_hemisphere(n, rng, r):  # lower half (y <= 0): a bowl opening upwards
    d = _unit(rng.normal(size=(n, 3)))
    d[:, 1] = -np.abs(d[:, 1])
    return r * d, d


def _s_box(n, rng, sx, sy, sz):
    h = np.array([sx, sy, sz]) / 2
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
    face = rng.choice(6, size=n, p=areas / areas.sum())
    p = rng.uniform(-1, 1, size=(n, 3)) * h
    axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
    p[np.arange(n), axis] = sign * h[axis]
    nrm = np.zeros((n, 3))
    nrm[np.arange(n), axis] = sign
    return p, nrm


def _s_tube(n, rng, r, h):  # open cylinder side along y, centred
    th = rng.uniform(0, 2 * np.pi, n)
    y = rng.uniform(-h / 2, h / 2, n)
    nrm = np.stack([np.cos(th), np.zeros(n), np.sin(th)], 1)
    return np.stack([r * np.cos(th), y, r * np.sin(th)], 1), nrm


def _s_disk(n, rng, r):  # disk in the xz plane facing +y
    rad = r * np.sqrt(rng.uniform(0, 1, n))
    th = rng.uniform(0, 2 * np.pi, n)
    p = np.stack([rad * np.cos(th), np.zeros(n), rad * np.sin(th)], 1)
    return p, np.tile([0.0, 1.0, 0.0], (n, 1))


def _s_cone(n, rng, r, h):  # lateral surface, base (radius r) at y=-h/2, apex at y=+h/2
    t = np.sqrt(rng.uniform(0, 1, n))  # distance fraction from the apex
    th = rng.uniform(0, 2 * np.pi, n)
    rad = r * t
    p = np.stack([rad * np.cos(th), h / 2 - h * t, rad * np.sin(th)], 1)
    nrm = _unit(np.stack([h * np.cos(th), np.full(n, r), h * np.sin(th)], 1))
    return p, nrm


def _s_torus(n, rng, R, r):  # ring around the y axis
    out_u, out_v = [], []
    need = n
    while need > 0:
        u = rng.uniform(0, 2 * np.pi, 2 * need + 8)
        v = rng.uniform(0, 2 * np.pi, 2 * need + 8)
        keep = rng.uniform(0, 1, u.size) < (R + r * np.cos(v)) / (R + r)
        out_u.append(u[keep][:need])
        out_v.append(v[keep][:need])
        need -= int(min(keep.sum(), need))
    u, v = np.concatenate(out_u), np.concatenate(out_v)
    nrm = np.stack([np.cos(v) * np.cos(u), np.sin(v), np.cos(v) * np.sin(u)], 1)
    p = np.stack([(R + r * np.cos(v)) * np.cos(u), r * np.sin(v), (R + r * np.cos(v)) * np.sin(u)], 1)
    return p, nrm


def _pyramid_tris(b, h):
    a = b / 2
    base = np.array([[-a, 0, -a], [a, 0, -a], [a, 0, a], [-a, 0, a]])
    apex = np.array([0, h, 0])
    tris = [(base[0], base[1], base[2]), (base[0], base[2], base[3])]
    tris += [(base[i], base[(i + 1) % 4], apex) for i in range(4)]
    return np.array(tris, dtype=np.float64), np.array([0, h / 4, 0])


def _s_pyramid(n, rng, b, h):
    tris, centre = _pyramid_tris(b, h)
    e1, e2 = tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    cr = np.cross(e1, e2)
    area = 0.5 * np.linalg.norm(cr, axis=1)
    k = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    p = tris[k, 0] + u[:, None] * e1[k] + v[:, None] * e2[k]
    nrm = _unit(cr[k])
    out = np.einsum("ij,ij->i", nrm, tris[k, 0] - centre) < 0
    nrm[out] *= -1
    return p, nrm


_SAMPLERS: dict[str, Callable] = {
    "sphere": _s_sphere, "hemisphere": _s_hemisphere, "box": _s_box, "tube": _s_tube, "disk": _s_disk,
    "cone": _s_cone, "torus": _s_torus, "pyramid": _s_pyramid,
}
_AREA: dict[str, Callable[..., float]] = {
    "sphere": lambda r: 4 * np.pi * r * r,
    "hemisphere": lambda r: 2 * np.pi * r * r,
    "box": lambda sx, sy, sz: 2 * (sx * sy + sy * sz + sx * sz),
    "tube": lambda r, h: 2 * np.pi * r * h,
    "disk": lambda r: np.pi * r * r,
    "cone": lambda r, h: np.pi * r * math.hypot(r, h),
    "torus": lambda R, r: 4 * np.pi**2 * R * r,
    "pyramid": lambda b, h: b * b + 2 * b * math.hypot(b / 2, h),
}

# ------------------------------------------------------------------------------ part assembly


def _rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


_I = np.eye(3)
_TO_X = _rot("z", -np.pi / 2)  # maps the local y axis to +x
_TO_Z = _rot("x", np.pi / 2)  # maps the local y axis to +z
_FLIP = _rot("x", np.pi)  # turns a +y facing disk to face -y


class _Part:
    __slots__ = ("kind", "params", "R", "t", "label")

    def __init__(self, kind: str, params: tuple, R: np.ndarray, t, label: int) -> None:
        self.kind, self.params, self.R, self.t, self.label = kind, params, R, np.asarray(t, float), label

    @property
    def area(self) -> float:
        return float(_AREA[self.kind](*self.params))


def box(size, t=(0, 0, 0), label=0, R=_I) -> list[_Part]:
    return [_Part("box", tuple(size), R, t, label)]


def sphere(r, t=(0, 0, 0), label=0) -> list[_Part]:
    return [_Part("sphere", (r,), _I, t, label)]


def cylinder(r, h, t=(0, 0, 0), label=0, R=_I, top=True, bottom=True) -> list[_Part]:
    """Cylinder along R's y axis; optional caps."""
    t = np.asarray(t, float)
    parts = [_Part("tube", (r, h), R, t, label)]
    if top:
        parts.append(_Part("disk", (r,), R, t + R @ np.array([0, h / 2, 0]), label))
    if bottom:
        parts.append(_Part("disk", (r,), R @ _FLIP, t + R @ np.array([0, -h / 2, 0]), label))
    return parts


def cone(r, h, t=(0, 0, 0), label=0, R=_I, base=True) -> list[_Part]:
    t = np.asarray(t, float)
    parts = [_Part("cone", (r, h), R, t, label)]
    if base:
        parts.append(_Part("disk", (r,), R @ _FLIP, t + R @ np.array([0, -h / 2, 0]), label))
    return parts


def capsule(r, h, t=(0, 0, 0), label=0, R=_I) -> list[_Part]:
    t = np.asarray(t, float)
    return [_Part("tube", (r, h), R, t, label), _Part("sphere", (r,), R, t + R @ np.array([0, h / 2, 0]), label),
            _Part("sphere", (r,), R, t + R @ np.array([0, -h / 2, 0]), label)]


def torus(R_, r, t=(0, 0, 0), label=0, R=_I) -> list[_Part]:
    return [_Part("torus", (R_, r), R, t, label)]


# ---------------------------------------------------------------- part-labelled categories (16)
# Each builder returns parts labelled 0..k-1 with k = PART_COUNTS of the ShapeNetPart category.


def _airplane(u) -> list[_Part]:
    L, w = u(1.6, 2.0), u(1.6, 2.2)
    body = capsule(u(0.1, 0.14), L, label=0, R=_TO_X)
    wing = box((u(0.3, 0.45), 0.04, w), t=(u(-0.1, 0.15), 0, 0), label=1)
    tail = box((0.25, u(0.3, 0.45), 0.04), t=(-L / 2, 0.2, 0), label=2) + \
        box((0.22, 0.03, u(0.5, 0.8)), t=(-L / 2, 0.05, 0), label=2)
    eng = []
    for z in (-w * 0.28, w * 0.28):
        eng += cylinder(0.07, 0.3, t=(0.05, -0.12, z), label=3, R=_TO_X)
    return body + wing + tail + eng


def _bag(u) -> list[_Part]:
    sx, sy, sz = u(1.0, 1.4), u(0.8, 1.1), u(0.35, 0.5)
    return box((sx, sy, sz), label=0) + torus(u(0.25, 0.35), 0.035, t=(0, sy / 2, 0), label=1, R=_TO_Z)


def _cap(u) -> list[_Part]:
    r = u(0.6, 0.75)
    crown = [_Part("hemisphere", (r,), _FLIP, (0, 0, 0), 0)]
    return crown + box((u(0.45, 0.6), 0.03, r * 1.4), t=(r + 0.2, 0, 0), label=1)


def _car(u) -> list[_Part]:
    L, W, H = u(1.8, 2.2), u(0.8, 1.0), u(0.3, 0.4)
    parts = box((L, H, W), label=0)
    for x in (-L * 0.33, L * 0.33):
        for z in (-W / 2, W / 2):
            parts += cylinder(0.18, 0.12, t=(x, -H / 2, z), label=1, R=_TO_Z)
    parts += box((L * u(0.4, 0.55), u(0.25, 0.35), W * 0.9), t=(-L * 0.08, H / 2 + 0.15, 0), label=2)
    parts += box((L * 0.25, 0.08, W * 0.9), t=(L * 0.37, H / 2 + 0.04, 0), label=3)
    return parts


def _chair(u, arms: bool = True) -> list[_Part]:
    s, hs, hb = u(0.8, 1.0), u(0.7, 0.9), u(0.7, 1.0)
    parts = box((0.08, hb, s), t=(-s / 2, hs + hb / 2, 0), label=0)  # back
    parts += box((s, 0.08, s), t=(0, hs, 0), label=1)  # seat
    for x in (-s / 2 + 0.05, s / 2 - 0.05):
        for z in (-s / 2 + 0.05, s / 2 - 0.05):
            parts += cylinder(0.04, hs, t=(x, hs / 2, z), label=2)
    if arms:
        for z in (-s / 2, s / 2):
            parts += box((s * 0.8, 0.05, 0.06), t=(0, hs + 0.3, z), label=3)
    return parts


def _earphone(u) -> list[_Part]:
    R = u(0.5, 0.65)
    parts = []
    for x in (-R, R):
        parts += cylinder(0.2, 0.12, t=(x, 0, 0), label=0, R=_TO_X)
    band = [p for p in torus(R, 0.04, label=1, R=_TO_Z)]
    return parts + band + cylinder(0.02, u(0.6, 0.9), t=(R, -0.5, 0), label=2)


def _guitar(u) -> list[_Part]:
    nl = u(0.9, 1.2)
    body = cylinder(u(0.35, 0.42), 0.15, t=(0, -0.35, 0), label=2, R=_TO_Z) + \
        cylinder(u(0.26, 0.32), 0.15, t=(0, 0.1, 0), label=2, R=_TO_Z)
    neck = box((0.1, nl, 0.05), t=(0, 0.2 + nl / 2, 0), label=1)
    head = box((0.16, 0.25, 0.05), t=(0, 0.3 + nl, 0), label=0)
    return head + neck + body


def _knife(u) -> list[_Part]:
    bl = u(1.0, 1.4)
    blade = [_Part("pyramid", (0.2, bl), np.diag([1.0, 1.0, 0.12]), (0, 0, 0), 0)]
    return blade + cylinder(0.07, u(0.5, 0.7), t=(0, -0.3, 0), label=1)


def _lamp(u) -> list[_Part]:
    h = u(1.2, 1.7)
    parts = cylinder(u(0.3, 0.4), 0.06, t=(0, 0, 0), label=0)
    parts += cylinder(0.03, h, t=(0, h / 2, 0), label=1, top=False, bottom=False)
    parts += cone(u(0.35, 0.5), u(0.3, 0.45), t=(0, h, 0), label=2, base=False)
    parts += sphere(0.08, t=(0, h - 0.1, 0), label=3)
    return parts


def _laptop(u) -> list[_Part]:
    w, d = u(1.1, 1.4), u(0.8, 1.0)
    ang = u(0.2, 0.6)
    screen_R = _rot("z", ang)
    return box((d, 0.05, w), label=0) + \
        box((0.04, d * 0.95, w), t=(-d / 2 - np.sin(ang) * d / 2, d / 2 * np.cos(ang), 0), label=1, R=screen_R)


def _motorbike(u) -> list[_Part]:
    L = u(1.4, 1.8)
    parts = sphere(0.18, t=(0.1, 0.35, 0), label=0)  # tank
    parts += box((0.45, 0.08, 0.2), t=(-0.3, 0.35, 0), label=1)  # seat
    for x in (-L / 2, L / 2):
        parts += torus(0.3, 0.07, t=(x, -0.2, 0), label=2, R=_TO_Z)  # wheels
    parts += cylinder(0.025, 0.6, t=(L / 2 - 0.2, 0.55, 0), label=3, R=_TO_Z)  # handle
    parts += sphere(0.07, t=(L / 2 - 0.05, 0.4, 0), label=4)  # light
    parts += box((L * 0.7, 0.08, 0.08), t=(0, 0.05, 0), label=5)  # frame
    return parts


def _mug(u) -> list[_Part]:
    r, h = u(0.4, 0.5), u(0.8, 1.1)
    return cylinder(r, h, label=0, top=False) + torus(u(0.2, 0.26), 0.05, t=(r + 0.12, 0, 0), label=1, R=_TO_Z)


def _pistol(u) -> list[_Part]:
    bl = u(0.9, 1.2)
    return box((bl, 0.18, 0.1), t=(0.2, 0.3, 0), label=0) + \
        box((0.22, u(0.5, 0.7), 0.12), t=(-0.2, -0.05, 0), label=1, R=_rot("z", 0.25)) + \
        torus(0.08, 0.02, t=(0.05, 0.1, 0), label=2, R=_TO_Z)


def _rocket(u) -> list[_Part]:
    h, r = u(1.4, 1.9), u(0.15, 0.22)
    parts = cylinder(r, h, label=0, top=False)
    for k in range(4):
        a = k * np.pi / 2
        parts += box((0.3, 0.35, 0.03), t=(np.cos(a) * (r + 0.13), -h / 2 + 0.15, np.sin(a) * (r + 0.13)),
                     label=1, R=_rot("y", -a))
    parts += cone(r, u(0.35, 0.5), t=(0, h / 2 + 0.2, 0), label=2, base=False)
    return parts


def _skateboard(u) -> list[_Part]:
    L = u(1.6, 2.0)
    parts = box((L, 0.04, 0.45), label=0)
    for x in (-L * 0.32, L * 0.32):
        parts += box((0.1, 0.08, 0.3), t=(x, -0.06, 0), label=2)
        for z in (-0.17, 0.17):
            parts += cylinder(0.06, 0.06, t=(x, -0.14, z), label=1, R=_TO_Z)
    return parts


def _table(u) -> list[_Part]:
    w, d, h = u(1.4, 2.0), u(0.8, 1.2), u(0.7, 1.0)
    parts = box((w, 0.07, d), t=(0, h, 0), label=0)
    for x in (-w / 2 + 0.08, w / 2 - 0.08):
        for z in (-d / 2 + 0.08, d / 2 - 0.08):
            parts += cylinder(u(0.035, 0.06), h, t=(x, h / 2, z), label=1)
    parts += box((w * 0.9, 0.1, 0.03), t=(0, h - 0.1, d / 2 - 0.08), label=2)
    parts += box((w * 0.9, 0.1, 0.03), t=(0, h - 0.1, -d / 2 + 0.08), label=2)
    return parts


PART_BUILDERS: dict[str, Callable] = {
    "Airplane": _airplane, "Bag": _bag, "Cap": _cap, "Car": _car, "Chair": _chair, "Earphone": _earphone,
    "Guitar": _guitar, "Knife": _knife, "Lamp": _lamp, "Laptop": _laptop, "Motorbike": _motorbike,
    "Mug": _mug, "Pistol": _pistol, "Rocket": _rocket, "Skateboard": _skateboard, "Table": _table,
}

# ----------------------------------------------------------------------- classification classes


def _c_sphere(u):
    return sphere(1.0)


def _c_cube(u):
    return box((1.5, 1.5, 1.5))


def _c_cylinder(u):
    return cylinder(u(0.4, 0.6), u(1.4, 2.0))


def _c_cone(u):
    return cone(u(0.6, 0.9), u(1.4, 2.0))


def _c_torus(u):
    return torus(0.8, u(0.2, 0.35))


def _c_pyramid(u):
    return [_Part("pyramid", (u(1.4, 1.8), u(1.2, 1.6)), _I, (0, 0, 0), 0)]


def _c_capsule(u):
    return capsule(u(0.35, 0.5), u(1.0, 1.5))


def _c_stool(u):
    h, r = u(0.8, 1.1), u(0.35, 0.45)
    parts = cylinder(r, 0.06, t=(0, h, 0))
    for k in range(3):
        a = 2 * np.pi * k / 3
        parts += cylinder(0.035, h, t=(0.75 * r * np.cos(a), h / 2, 0.75 * r * np.sin(a)))
    return parts


def _c_bottle(u):
    r, h = u(0.3, 0.4), u(1.0, 1.3)
    return cylinder(r, h, top=False) + cone(r, 0.35, t=(0, h / 2 + 0.175, 0), base=False) + \
        cylinder(0.1, 0.3, t=(0, h / 2 + 0.45, 0), bottom=False)


def _c_bookshelf(u):
    w, h, d = u(1.0, 1.3), u(1.6, 2.0), u(0.35, 0.5)
    parts = box((0.05, h, d), t=(-w / 2, 0, 0)) + box((0.05, h, d), t=(w / 2, 0, 0)) + \
        box((w, h, 0.03), t=(0, 0, -d / 2))
    n_sh = int(u(3, 5.99))
    for y in np.linspace(-h / 2, h / 2, n_sh):
        parts += box((w, 0.04, d), t=(0, y, 0))
    return parts


def _c_bowl(u):
    r = u(0.8, 1.0)
    return [_Part("hemisphere", (r,), _I, (0, 0, 0), 0)] + torus(r, 0.03)


SYNTHETIC_CLASSES: list[str] = [
    "sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule", "table", "chair", "lamp",
    "airplane", "mug", "bottle", "stool", "bookshelf", "bowl",
]
_CLASS_BUILDERS: dict[str, Callable] = {
    "sphere": _c_sphere, "cube": _c_cube, "cylinder": _c_cylinder, "cone": _c_cone, "torus": _c_torus,
    "pyramid": _c_pyramid, "capsule": _c_capsule, "table": _table, "chair": lambda u: _chair(u, arms=u(0, 1) < 0.5),
    "lamp": _lamp, "airplane": _airplane, "mug": _mug, "bottle": _c_bottle, "stool": _c_stool,
    "bookshelf": _c_bookshelf, "bowl": _c_bowl,
}

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


# ------------------------------------------------------------------------------------- writers


def _fmt_rows(arr: np.ndarray, sep: str) -> str:
    """Rows of ``arr`` as text with 6 decimals (like "%.6f"), columns joined by ``sep``.

    Vectorised: characters are computed with integer arithmetic (|values| < 100), which is ~20x
    faster than Python string formatting.
    """
    a = np.round(np.asarray(arr, dtype=np.float64) * 1e6).astype(np.int64)
    if a.size == 0 or np.abs(a).max() >= 100 * 10**6:
        row = sep.join(["%.6f"] * arr.shape[1]) + "\n"
        return (row * arr.shape[0]) % tuple(np.asarray(arr).ravel().tolist())
    n, c = a.shape
    neg, a = a < 0, np.abs(a)
    ip, fp = a // 10**6, a % 10**6
    ch = np.zeros((n, c, 11), dtype=np.uint8)  # 0 = no character
    ch[..., 0] = np.where(neg, ord("-"), 0)
    ch[..., 1] = np.where(ip >= 10, ord("0") + ip // 10, 0)
    ch[..., 2] = ord("0") + ip % 10
    ch[..., 3] = ord(".")
    for k in range(6):
        ch[..., 4 + k] = ord("0") + (fp // 10 ** (5 - k)) % 10
    ch[:, :-1, 10] = ord(sep)
    ch[:, -1, 10] = ord("\n")
    buf = ch.reshape(-1)
    return buf[buf != 0].tobytes().decode("ascii")


def _classes(num_classes: Optional[int]) -> list[str]:
    k = len(SYNTHETIC_CLASSES) if num_classes is None else int(num_classes)
    if not 1 <= k <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
    return SYNTHETIC_CLASSES[:k]


def write_modelnet40(root: PathLike, num_classes: Optional[int] = None, n_train: int = 40, n_test: int = 15,
                     n_points: int = 2048, seed: int = 0) -> Path:
    """Write a ``modelnet40_normal_resampled`` tree: shape_names/train/test txt files (and the
    modelnet10_* files over the first 10 classes) plus ``<class>/<class>_NNNN.txt`` with
    ``x,y,z,nx,ny,nz`` lines. Returns the tree root (``root`` itself)."""
    root = Path(root)
    names = _classes(num_classes)
    root.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for ci, cname in enumerate(names):
        (root / cname).mkdir(exist_ok=True)
        for j in range(n_train + n_test):
            rng = np.random.default_rng([seed, 1, ci, j])
            xyz, nrm = make_shape(ci, n_points, rng, return_normals=True)
            sid = f"{cname}_{j + 1:04d}"
            (root / cname / f"{sid}.txt").write_text(_fmt_rows(np.concatenate([xyz, nrm], 1), ","))
            (train if j < n_train else test).append(sid)
    for prefix, cls in (("modelnet40", names), ("modelnet10", names[:10])):
        keep = set(cls)
        (root / f"{prefix}_shape_names.txt").write_text("\n".join(cls) + "\n")
        for split, ids in (("train", train), ("test", test)):
            sel = [s for s in ids if s.rsplit("_", 1)[0] in keep]
            (root / f"{prefix}_{split}.txt").write_text("\n".join(sel) + "\n")
    return root


def write_fewshot(root: PathLike, num_classes: Optional[int] = None, ways: Sequence[int] = (5, 10),
                  shots: Sequence[int] = (10, 20), folds: int = 10, eval_sample: int = 20, n_points: int = 1024,
                  seed: int = 0) -> Path:
    """Write ``{way}way_{shot}shot/{fold}.pkl`` folds (reference layout) from a pool of synthetic (n_points, 6) clouds
    (max(shots) train and eval_sample test shapes per class), by the reference episode rules."""
    names = _classes(num_classes)
    if max(ways) > len(names):
        raise ValueError(f"way {max(ways)} needs at least {max(ways)} classes, but only {len(names)} "
                         "synthetic classes are used; lower `ways` or raise num_classes")
    pools: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for ci in range(len(names)):
        for split, cnt in (("train", max(shots)), ("test", eval_sample)):
            for j in range(cnt):
                rng = np.random.default_rng([seed, 2, ci, j, split == "test"])
                xyz, nrm = make_shape(ci, n_points, rng, return_normals=True)
                pools[split][0].append(np.concatenate([xyz, nrm], 1))
                pools[split][1].append(ci)
    tr = (pools["train"][0], np.array(pools["train"][1]))
    te = (pools["test"][0], np.array(pools["test"][1]))
    write_fewshot_folds_from_arrays(tr, te, root, ways, shots, folds, eval_sample, seed)
    return Path(root)


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Floor patch and a partial wall around an object (ScanObjectNN-like clutter)."""
    k = rng.integers(n // 3, 2 * n // 3 + 1)
    floor = np.stack([rng.uniform(-1.0, 1.0, k), np.full(k, -0.85), rng.uniform(-1.0, 1.0, k)], 1)
    wall = np.stack([rng.uniform(-1.0, 1.0, n - k), rng.uniform(-0.85, 0.9, n - k), np.full(n - k, -0.9)], 1)
    pts = np.concatenate([floor, wall]) @ _rot("y", rng.uniform(0, 2 * np.pi)).T
    return pts + rng.normal(0, 0.01, pts.shape)


def write_scanobjectnn(root: PathLike, variant: str, n_train: int = 20, n_test: int = 8, n_points: int = 2048,
                       n_augment: int = 5, seed: int = 0) -> Path:
    """Write the train/test h5 files of ``variant`` (keys ``data`` (N,2048,3) float32, ``label``
    (N,) int64, ``mask`` (N,2048) int32 with -1 on background points) under ``root`` (the folder
    holding main_split/ and main_split_nobg/). Class i uses synthetic class i (15 classes).
    OBJ_BG: object + floor/wall background; OBJ_ONLY: object alone; PB_T50_RS: ``n_augment``
    perturbed copies of every object (rotation about Y, scale 0.75-1.25, shift up to 0.5, then
    re-normalised) with background."""
    import h5py

    if variant not in SCANOBJECTNN_FILES:
        raise ValueError(f"unknown ScanObjectNN variant {variant!r}; choose one of {list(SCANOBJECTNN_FILES)}")
    sub, ftr, fte = SCANOBJECTNN_FILES[variant]
    out = Path(root) / sub
    out.mkdir(parents=True, exist_ok=True)
    ncls = len(SCANOBJECTNN_CLASSES)
    for split, fname, cnt in (("train", ftr, n_train), ("test", fte, n_test)):
        data, labels, masks = [], [], []
        for ci in range(ncls):
            for j in range(cnt):
                rng = np.random.default_rng([seed, 3, ci, j, split == "test"])
                with_bg = variant != "OBJ_ONLY"
                n_obj = int(n_points * rng.uniform(0.55, 0.8)) if with_bg else n_points
                obj = make_shape(ci, n_obj, rng).astype(np.float64) * 0.8
                copies = n_augment if variant == "PB_T50_RS" else 1
                for _ in range(copies):
                    o = obj
                    if variant == "PB_T50_RS":
                        o = (o @ _rot("y", rng.uniform(0, 2 * np.pi)).T) * rng.uniform(0.75, 1.25) + \
                            rng.uniform(-0.5, 0.5, 3) * np.array([1, 0.2, 1])
                    pts = np.concatenate([o, _background(n_points - n_obj, rng)]) if with_bg else o
                    mask = np.concatenate([np.full(n_obj, 1), np.full(n_points - n_obj, -1)]).astype(np.int32)
                    perm = rng.permutation(n_points)
                    pts, mask = pts[perm], mask[perm]
                    pts = pts - pts.mean(0)
                    pts = pts / np.linalg.norm(pts, axis=1).max()
                    data.append(pts.astype(np.float32))
                    masks.append(mask)
                    labels.append(ci)
        with h5py.File(out / fname, "w") as f:
            f.create_dataset("data", data=np.stack(data))
            f.create_dataset("label", data=np.array(labels, dtype=np.int64))
            f.create_dataset("mask", data=np.stack(masks))
    return Path(root)


def write_shapenetpart(root: PathLike, n_train: int = 8, n_val: int = 2, n_test: int = 4, n_points: int = 2048,
                       seed: int = 0) -> Path:
    """Write a ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` tree: synsetoffset2category.txt,
    ``<synset>/<id>.txt`` lines ``x y z nx ny nz part`` (global part id written as a float, like the
    release) and ``train_test_split/shuffled_{train,val,test}_file_list.json``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{c}\t{s}\n" for c, s in zip(CATEGORY_NAMES, SYNSETS)))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ci, (cat, syn) in enumerate(zip(CATEGORY_NAMES, SYNSETS)):
        (root / syn).mkdir(exist_ok=True)
        j = 0
        for split, cnt in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(cnt):
                rng = np.random.default_rng([seed, 4, ci, j])
                xyz, nrm, local = make_part_shape(cat, n_points, rng)
                glob = np.asarray(SEG_CLASSES[cat])[local].astype(np.float64)
                mid = f"syn{ci:02d}{j:04d}" + "%024x" % int(rng.integers(2**62))
                arr = np.concatenate([xyz, nrm, glob[:, None]], 1)
                (root / syn / f"{mid}.txt").write_text(_fmt_rows(arr, " "))
                splits[split].append(f"shape_data/{syn}/{mid}")
                j += 1
    (root / "train_test_split").mkdir(exist_ok=True)
    for split, entries in splits.items():
        order = np.random.default_rng([seed, 5, len(split)]).permutation(len(entries))
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(
            json.dumps([entries[i] for i in order]))
    return root


def write_shapenet55(root: PathLike, num_classes: Optional[int] = None, n_train: int = 20, n_test: int = 5,
                     n_points: int = 2048, seed: int = 0) -> Path:
    """Write ``ShapeNet-55/{train,test}.txt`` and ``shapenet_pc/<synset>-<id>.npy`` (float32 (n,3)).
    Synthetic synsets are ``9000NNNN`` (one per synthetic class)."""
    root = Path(root)
    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for ci, _ in enumerate(_classes(num_classes)):
        for j in range(n_train + n_test):
            rng = np.random.default_rng([seed, 6, ci, j])
            name = f"9000{ci:04d}-synthetic{j:05d}.npy"
            np.save(root / "shapenet_pc" / name, make_shape(ci, n_points, rng))
            lists["train" if j < n_train else "test"].append(name)
    for split, names in lists.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


# sub-folders of the data root (data/README.md)
LAYOUT_DIRS: dict[str, str] = {
    "modelnet40": "ModelNet/modelnet40_normal_resampled",
    "fewshot": "ModelNetFewshot",
    "scanobjectnn": "ScanObjectNN",
    "shapenetpart": "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    "shapenet55": "ShapeNet55-34",
}

# per-format writer arguments for write_all(small=True/False)
SMALL_SIZES: dict[str, dict] = {
    "modelnet40": dict(n_train=40, n_test=15, n_points=2048),
    "fewshot": dict(folds=2, eval_sample=10, n_points=1024),
    "scanobjectnn": dict(n_train=12, n_test=5, n_points=2048, n_augment=2),
    "shapenetpart": dict(n_train=6, n_val=2, n_test=3, n_points=2048),
    "shapenet55": dict(n_train=16, n_test=4, n_points=2048),
}
FULL_SIZES: dict[str, dict] = {
    "modelnet40": dict(n_train=100, n_test=30, n_points=4096),
    "fewshot": dict(folds=10, eval_sample=20, n_points=2048),
    "scanobjectnn": dict(n_train=60, n_test=20, n_points=2048, n_augment=5),
    "shapenetpart": dict(n_train=40, n_val=8, n_test=15, n_points=2048),
    "shapenet55": dict(n_train=150, n_test=30, n_points=8192),
}


def write_all(root: PathLike, small: bool = True, seed: int = 0,
              formats: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Write every format (or ``formats``) under ``root`` in the data/README.md layout.

    Returns {format: folder}. ``small=True`` is sized for tests and the CPU demo (a few seconds).
    Each format written is logged (INFO) with its folder and time.
    """
    root = Path(root)
    sizes = SMALL_SIZES if small else FULL_SIZES
    formats = list(formats) if formats else list(LAYOUT_DIRS)
    unknown = set(formats) - set(LAYOUT_DIRS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; known: {list(LAYOUT_DIRS)}")
    out: dict[str, Path] = {}
    for fmt in formats:
        t0 = time.perf_counter()
        d = root / LAYOUT_DIRS[fmt]
        if fmt == "modelnet40":
            write_modelnet40(d, seed=seed, **sizes[fmt])
        elif fmt == "fewshot":
            write_fewshot(d, seed=seed, **sizes[fmt])
        elif fmt == "scanobjectnn":
            for v in SCANOBJECTNN_FILES:
                write_scanobjectnn(d, v, seed=seed, **sizes[fmt])
        elif fmt == "shapenetpart":
            write_shapenetpart(d, seed=seed, **sizes[fmt])
        elif fmt == "shapenet55":
            write_shapenet55(d, seed=seed, **sizes[fmt])
        out[fmt] = d
        log.info("%-14s -> %s  (%.1f s)", fmt, d, time.perf_counter() - t0)
    return out

"""Surface samplers of the primitives (sphere, box, tube, disk, cone, torus, pyramid ...) with their
areas, and the part-assembly helpers (``box``, ``sphere``, ``cylinder`` ...) that place them."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

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

"""The shape catalogue: the 16 ShapeNetPart categories with part labels (``PART_BUILDERS``) and the
classification classes (``SYNTHETIC_CLASSES``), each a function of a uniform sampler ``u(lo, hi)``
returning a list of placed primitives."""
from __future__ import annotations

from typing import Callable

import numpy as np

from clora3d.data.synthetic.primitives import (_FLIP, _I, _TO_X, _TO_Z, _Part, _rot, box, capsule, cone,
                                               cylinder, sphere, torus)

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

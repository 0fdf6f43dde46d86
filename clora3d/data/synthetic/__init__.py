"""Deterministic procedural point clouds and writers for every real on-disk data set format.

Shapes are unions of primitives (sphere, box, cylinder, cone, torus, disk, pyramid, ...) sampled on
their surfaces in proportion to area, with analytic normals. Every shape gets class-specific
random proportions, a random pose (full rotation about the up axis Y plus a small tilt), an
anisotropic scale, a density gradient (points are thinned towards one side) and Gaussian noise,
so classes are learnable but not trivially separable. All randomness comes from the
``np.random.Generator`` passed in: the same seed gives the same files.

Writers emit the formats the loaders (and the reference repos) read; ``write_all(root)`` writes
the whole ``data/`` layout of data/README.md.

Modules: :mod:`~clora3d.data.synthetic.primitives` (surface samplers, part assembly),
:mod:`~clora3d.data.synthetic.catalog` (the categories and classes), :mod:`~clora3d.data.synthetic.sampling`
(one shape -> one cloud) and :mod:`~clora3d.data.synthetic.writers` (the file formats); their public
names are importable from here, as from the single module this package replaced.
"""
from __future__ import annotations

from clora3d.data.synthetic.catalog import PART_BUILDERS, SYNTHETIC_CLASSES
from clora3d.data.synthetic.primitives import box, capsule, cone, cylinder, sphere, torus
from clora3d.data.synthetic.sampling import make_part_shape, make_scan_shape, make_shape
from clora3d.data.synthetic.writers import (FULL_SIZES, LAYOUT_DIRS, SMALL_SIZES, PathLike, write_all,
                                            write_fewshot, write_modelnet40, write_scanobjectnn,
                                            write_shapenet55, write_shapenetpart)

__all__ = ["box", "sphere", "cylinder", "cone", "capsule", "torus", "PART_BUILDERS", "SYNTHETIC_CLASSES",
           "make_shape", "make_part_shape", "make_scan_shape", "write_modelnet40", "write_fewshot",
           "write_scanobjectnn", "write_shapenetpart", "write_shapenet55", "LAYOUT_DIRS", "SMALL_SIZES",
           "FULL_SIZES", "write_all", "PathLike"]

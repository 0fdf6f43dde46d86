"""Batched point cloud transforms against independent formulas and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clora3d.data import (
    TRANSFORM_KEYS,
    Compose,
    FPSResample,
    Jitter,
    Normalize,
    RandomDropout,
    RandomSubset,
    RotateY,
    ScaleAndTranslate,
    build_transforms,
)
from clora3d.errors import ConfigError


def _pts(B=4, N=200, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, C, generator=g) * 0.7 + torch.randn(B, 1, C, generator=g)


def test_normalize_unit_sphere():
    p = _pts()
    out = Normalize()(p)
    for b in range(p.shape[0]):
        x = p[b].numpy().astype(np.float64)
        x = x - x.mean(0)
        x /= np.linalg.norm(x, axis=1).max()
        np.testing.assert_allclose(out[b].numpy(), x, atol=1e-5)


def test_scale_and_translate_is_per_sample_axis_affine():
    p = _pts(B=6)
    out = ScaleAndTranslate()(p, torch.Generator().manual_seed(1))
    slopes = (out[:, 1] - out[:, 0]) / (p[:, 1] - p[:, 0])  # (B,3)
    intercept = out[:, 0] - slopes * p[:, 0]
    np.testing.assert_allclose((p * slopes[:, None] + intercept[:, None]).numpy(), out.numpy(), atol=1e-4)
    assert slopes.min() >= 2 / 3 - 1e-4 and slopes.max() <= 1.5 + 1e-4
    assert intercept.abs().max() <= 0.2 + 1e-4
    assert slopes.std(dim=0).min() > 0  # per sample
    assert (slopes[:, 0] != slopes[:, 1]).all()  # anisotropic
    iso = ScaleAndTranslate(0.8, 1.25, 0.1, isotropic=True)(p, torch.Generator().manual_seed(1))
    s_iso = (iso[:, 1] - iso[:, 0]) / (p[:, 1] - p[:, 0])
    torch.testing.assert_close(s_iso, s_iso[:, :1].expand(-1, 3), atol=1e-4, rtol=1e-4)
    assert s_iso.min() >= 0.8 - 1e-4 and s_iso.max() <= 1.25 + 1e-4


def test_rotate_y_matches_formula_and_rotates_normals():
    a = 0.7
    p = _pts(B=2, C=6)
    out = RotateY(angle_low=a, angle_high=a)(p)
    c, s = math.cos(a), math.sin(a)
    for cols in ((0, 1, 2), (3, 4, 5)):
        x, y, z = (p[..., i] for i in cols)
        # row vector times R = [[c,0,s],[0,1,0],[-s,0,c]]
        torch.testing.assert_close(out[..., cols[0]], x * c - z * s)
        torch.testing.assert_close(out[..., cols[1]], y)
        torch.testing.assert_close(out[..., cols[2]], x * s + z * c)
    q = _pts(B=8)
    r = RotateY()(q, torch.Generator().manual_seed(0))

    def pd(x):
        x = x.double()
        return ((x[:, :, None] - x[:, None]) ** 2).sum(-1)

    torch.testing.assert_close(pd(r), pd(q), atol=1e-5, rtol=1e-5)
    ang = torch.atan2(r[:, 0, 2], r[:, 0, 0]) - torch.atan2(q[:, 0, 2], q[:, 0, 0])
    assert len(set(np.round(np.mod(ang.numpy(), 2 * np.pi), 4))) == 8  # one angle per sample


def test_jitter_dropout_subset():
    p = _pts(B=3, N=500)
    g = torch.Generator().manual_seed(0)
    j = Jitter(std=0.01, clip=0.02)(p, g)
    d = j - p
    assert d.abs().max() <= 0.02 + 1e-6 and 0.005 < d.std() < 0.012
    dr = RandomDropout(0.875)(p, torch.Generator().manual_seed(2))
    assert dr.shape == p.shape
    changed = (dr != p).any(-1)
    for b in range(3):
        assert torch.equal(dr[b, changed[b]], p[b, :1].expand(int(changed[b].sum()), -1))
        assert changed[b].float().mean() < 0.95
    sub = RandomSubset(100)(p, torch.Generator().manual_seed(3))
    assert sub.shape == (3, 100, 3)
    idx = [[int(torch.nonzero((p[b] == row).all(-1))[0]) for row in sub[b]] for b in range(3)]
    assert len(set(idx[0])) == 100 and idx[0] == idx[1] == idx[2]  # one index set for the batch (reference)
    per = RandomSubset(100, per_sample=True)(p, torch.Generator().manual_seed(3))
    assert not torch.equal(per[0], sub[0]) or not torch.equal(per[1], sub[1])
    with pytest.raises(ValueError, match="600 of 500"):
        RandomSubset(600)(p)


def test_fps_resample_matches_brute_force():
    p = _pts(B=2, N=300, C=6)
    out = FPSResample(40)(p)
    for b in range(2):
        x = p[b, :, :3].numpy().astype(np.float64)
        idx, d = [0], np.full(300, np.inf)
        for _ in range(39):
            d = np.minimum(d, ((x - x[idx[-1]]) ** 2).sum(1))
            idx.append(int(np.argmax(d)))
        np.testing.assert_array_equal(out[b].numpy(), p[b, idx].numpy())


def test_generator_reproducible_and_shape_checks():
    t = build_transforms(
        [
            {"NAME": "ScaleAndTranslate"},
            {"NAME": "RotateY"},
            {"NAME": "Jitter", "std": 0.02},
            {"NAME": "RandomDropout", "max_dropout_ratio": 0.5},
            {"NAME": "Normalize"},
        ]
    )
    assert isinstance(t, Compose) and len(t.transforms) == 5
    p = _pts()
    a = t(p, torch.Generator().manual_seed(5))
    b = t(p, torch.Generator().manual_seed(5))
    c = t(p, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"\(B, N, C>=3\)"):
        RotateY()(torch.zeros(10, 3))
    assert build_transforms(None)(p) is p


def test_build_transforms_errors():
    assert "scale_low" in TRANSFORM_KEYS["ScaleAndTranslate"] and "n" in TRANSFORM_KEYS["FPSResample"]
    with pytest.raises(ConfigError, match="Rotate'"):
        build_transforms([{"NAME": "Rotate"}])
    with pytest.raises(ConfigError, match="sigma"):
        build_transforms([{"NAME": "Jitter", "sigma": 0.1}])
    with pytest.raises(ConfigError, match="NAME"):
        build_transforms([{"std": 0.1}])

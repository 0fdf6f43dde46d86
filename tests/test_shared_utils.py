"""One normalize_unit_sphere (clora3d.data.common, also inference's) and one all_reduce_sum
(clora3d.engine.distributed, also evaluation's), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_normalize_unit_sphere_hand_computed():
    from clora3d.data.common import normalize_unit_sphere

    got = normalize_unit_sphere(np.array([[0, 0, 0], [2, 0, 0]], dtype=np.float32))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[-1, 0, 0], [1, 0, 0]])
    # centroid (1, 1, 2); radii 1 and 1 -> unchanged scale
    np.testing.assert_array_equal(normalize_unit_sphere([[1, 1, 1], [1, 1, 3]]), [[0, 0, -1], [0, 0, 1]])
    # centroid (0, 0, 0); largest radius 5 (3-4-5 triangle)
    np.testing.assert_allclose(
        normalize_unit_sphere([[3, 4, 0], [-3, -4, 0], [1, 0, 0], [-1, 0, 0]]),
        [[0.6, 0.8, 0], [-0.6, -0.8, 0], [0.2, 0, 0], [-0.2, 0, 0]],
        rtol=0,
        atol=1e-15,
    )
    np.testing.assert_array_equal(normalize_unit_sphere([[5, 5, 5], [5, 5, 5]]), np.zeros((2, 3)))
    empty = normalize_unit_sphere(np.zeros((0, 3), dtype=np.float32))
    assert empty.shape == (0, 3) and empty.dtype == np.float64


def test_inference_uses_the_data_normalisation():
    from clora3d.data.common import normalize_unit_sphere
    from clora3d.engine import infer

    assert infer.normalize_unit_sphere is normalize_unit_sphere


def test_all_reduce_sum_without_a_group_and_in_a_one_rank_group(tmp_path):
    import torch.distributed as dist

    from clora3d.engine import evaluate
    from clora3d.engine.distributed import all_reduce_sum, cleanup_distributed

    assert evaluate.all_reduce_sum is all_reduce_sum
    assert not dist.is_initialized()
    out = all_reduce_sum([1, 2.5, torch.tensor(3)])
    assert out == [1.0, 2.5, 3.0] and all(type(v) is float for v in out)
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert all_reduce_sum([1, 2.5, 4], "cpu") == [1.0, 2.5, 4.0]
    finally:
        cleanup_distributed()

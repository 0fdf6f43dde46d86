"""Reference ops (the spec and the fallback) on the edges the mutation run found unguarded:
batches of one and of zero clouds for gather, and kNN / three_nn over several query chunks.
Every answer is checked against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clora3d.ops import reference as ref


def _np_gather(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.empty(idx.shape + (points.shape[-1],), dtype=points.dtype)
    for b in range(idx.shape[0]):
        for pos in np.ndindex(*idx.shape[1:]):
            out[(b, *pos)] = points[b, idx[(b, *pos)]]
    return out


@pytest.mark.parametrize("B", [0, 1, 2])
@pytest.mark.parametrize("idx_shape", [(5,), (4, 3)])
def test_reference_gather_any_batch_size(B, idx_shape):
    g = torch.Generator().manual_seed(B)
    pts = torch.rand(B, 9, 4, generator=g)
    idx = torch.randint(0, 9, (B, *idx_shape), generator=g)
    out = ref.gather_points(pts, idx)
    assert out.shape == (B, *idx_shape, 4)
    np.testing.assert_array_equal(out.numpy(), _np_gather(pts.numpy(), idx.numpy()))


def test_reference_knn_and_three_nn_over_several_query_chunks(monkeypatch):
    # B*N*M above the reference's block size (2**23 distances, lowered here to 1000 to keep the
    # test small): the queries are processed in chunks of 1000 // (B*N) = 3; the answer must be
    # the brute-force one for every query
    monkeypatch.setattr(ref, "_BLOCK_ELEMS", 1000)
    B, N, M = 2, 150, 11
    g = torch.Generator().manual_seed(0)
    r = torch.rand(B, N, 3, generator=g)
    q = torch.rand(B, M, 3, generator=g)
    d, i = ref.knn(q, r, 2)
    _, i3 = ref.three_nn(q, r)
    rn, qn = r.numpy().astype(np.float64), q.numpy().astype(np.float64)
    for b in range(B):
        dist = ((rn[b][None] - qn[b][:, None]) ** 2).sum(-1)  # (M, N)
        order = np.argsort(dist, axis=-1, kind="stable")
        assert i[b].tolist() == order[:, :2].tolist()
        assert i3[b].tolist() == order[:, :3].tolist()
        np.testing.assert_allclose(d[b].numpy(), np.take_along_axis(dist, order[:, :2], -1), rtol=1e-5, atol=1e-7)


def test_reference_fps_sample_gathers_the_sampled_points():
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(2, 40, 3, generator=g)
    got = ref.fps_sample(xyz, 6)
    for b in range(2):
        x = xyz[b].double().numpy()
        idx = [0]
        d = ((x - x[0]) ** 2).sum(-1)
        for _ in range(5):  # brute-force farthest point sampling from index 0
            j = int(np.argmax(d))
            idx.append(j)
            d = np.minimum(d, ((x - x[j]) ** 2).sum(-1))
        np.testing.assert_array_equal(got[b].numpy(), xyz[b].numpy()[idx])

"""Independent numpy references shared by several test modules (not a test file itself)."""

from __future__ import annotations

import numpy as np


def np_fps(x: np.ndarray, s: int) -> np.ndarray:
    """Brute-force farthest point sampling from index 0 (ties -> lower index)."""
    idx = [0]
    d = ((x - x[0]) ** 2).sum(-1)
    for _ in range(s - 1):
        j = int(np.argmax(d))
        idx.append(j)
        d = np.minimum(d, ((x - x[j]) ** 2).sum(-1))
    return np.asarray(idx)

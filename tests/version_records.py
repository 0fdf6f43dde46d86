"""Which torch release runs the tests, for records that depend on it.

Records of seeded runs (tests/fixtures: initial weights, short training runs and their
checkpoints) were made with torch >= 2.12 and hold on the releases since. Older releases draw and
compute other numbers for the same seed: torch 2.12 changed how ``torch.nn.init.trunc_normal_``
samples (rejection sampling instead of the inverse CDF of a uniform draw; same distribution, other
values), with which clora3d initialises its transformers as Point-MAE does, and torch 2.5 also
trains the part-segmentation run to other numbers. On an older torch (2.11 is what the GPU machines
carry; `make test-torch-range` runs it) those comparisons skip and say why; everything else in the
same tests still runs.
"""

from __future__ import annotations

import pytest
import torch

from clora3d._build_env import torch_release

#: the first torch release whose numbers the records in tests/fixtures hold
RECORDS_FROM = (2, 12)


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string (clora3d._build_env.torch_release), which must have them."""
    parsed = torch_release(version)
    if parsed is None:
        raise ValueError(f"not a torch version: {version!r}")
    return parsed


def skip_unless_recorded_release() -> None:
    """Skip the calling test's remaining comparisons on a torch older than the records."""
    if release(torch.__version__) < RECORDS_FROM:
        pytest.skip(
            f"the seeded numbers were recorded with torch >= {'.'.join(map(str, RECORDS_FROM))}; "
            f"torch {torch.__version__} draws and computes others (tests/version_records.py)"
        )

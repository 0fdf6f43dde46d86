"""Shared pytest fixtures: real-data location, deterministic seeds, GPU marker handling."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    env = os.environ.get("CLORA3D_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def shared_data() -> Path:
    """Folder of real data samples (../shared/data); the test is skipped when it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("real data samples (../shared/data) are not present")
    return d


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed every RNG with 0 before each test so results are deterministic."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


REQUIRE_CUDA = os.environ.get("CLORA3D_REQUIRE_CUDA", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or REQUIRE_CUDA:  # REQUIRE_CUDA: the GPU check, where nothing may skip
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    twin = os.environ.get("CLORA3D_CUDA_TESTS_ON_CPU", "") not in ("", "0")
    for item in items:
        if twin and item.path.name == "test_ops_cuda.py":
            continue  # the CPU twin of the CUDA kernel tests (tests/test_ops_cuda.py)
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CLORA3D_REQUIRE_CUDA=1 (``make gpu-check``), a CUDA test that skips is a failure."""
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_CUDA and rep.skipped and "cuda" in item.keywords:
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"CLORA3D_REQUIRE_CUDA=1 but this CUDA test skipped: {reason}"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests: far faster on a shared 2-core machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

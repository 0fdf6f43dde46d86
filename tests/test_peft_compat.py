"""Adapter files written before the PEFT package was split (tests/fixtures/adapters, see its README)
still load: same method config, same tensors, and the logits stored when they were written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from clora3d.models.backbone import PointTransformer
from clora3d.peft import load_adapter, read_adapter

FIXTURES = Path(__file__).parent / "fixtures" / "adapters"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import CASES, fill_, points  # noqa: E402

METHODS = sorted(CASES)


def _base_from_file(path: Path) -> torch.nn.Module:
    meta, _ = read_adapter(path)
    model = PointTransformer(**meta["model_config"])  # the model the adapter records
    fill_(list(model.named_parameters()) + list(model.named_buffers()), 0.0)
    return model


def test_fixture_files_are_small():
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file())
    assert total < 1_000_000
    assert sorted(p.stem for p in FIXTURES.glob("*.pt") if p.stem != "expected_logits") == METHODS


#: options added after the fixtures were written (f627983), with the default an old file gets
ADDED_SINCE = {"clora": {"train_path": "auto"}}


@pytest.mark.parametrize("name", METHODS)
def test_old_adapter_file_loads_with_identical_logits(name):
    path = FIXTURES / f"{name}.pt"
    meta, state = read_adapter(path)
    model = _base_from_file(path)
    method = load_adapter(model, path)
    assert method.name == name
    # the recorded config is what the method reports (a plain dict) after loading, plus the options
    # added since the file was written, at their defaults
    assert method.config == {**meta["config"], **ADDED_SINCE.get(name, {})}
    for k, v in state.items():
        assert torch.equal(method.adapter_state_dict()[k], v), k
    expected = torch.load(FIXTURES / "expected_logits.pt", weights_only=True)[name]
    model.eval()
    with torch.no_grad():
        logits = model(points())
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["clora", "lora"])
def test_old_adapter_merges_and_unmerges_exactly(name):
    path = FIXTURES / f"{name}.pt"
    model = _base_from_file(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = load_adapter(model, path)
    model.eval()
    expected = torch.load(FIXTURES / "expected_logits.pt", weights_only=True)[name]
    method.merge()
    assert not any(k.startswith("peft") for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(points()), expected, rtol=1e-4, atol=1e-5)
    method.unmerge()
    method.remove()
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "pos_embed.", "blocks.", "norm."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)

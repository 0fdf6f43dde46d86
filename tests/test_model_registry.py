"""The point stem and the model registry (issue 15 item 4).

- State-dict keys (in order, with shapes), the order of ``parameters()`` and the initial weights under
  ``torch.manual_seed(0)`` of every model class and preset equal those recorded BEFORE the stem and the
  registry existed (tests/fixtures/models/layouts.json, written by make_layouts.py at 445c336): old
  checkpoints, adapter files and optimizer states keep loading, and seeded runs keep their numbers.
- One registry: names, presets and config keys come from it; from_preset and build_model use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from version_records import skip_unless_recorded_release

import clora3d.models as models
from clora3d.errors import ConfigError
from clora3d.models import (
    PartSegModel,
    PointMAE,
    PointTransformer,
    build_model,
    model_class,
    model_keys,
    model_names,
    model_presets,
)
from clora3d.models.stem import PointStem

LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "models" / "layouts.json").read_text())


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_keys_parameter_order_and_seeded_init_unchanged(case):
    name, preset = case.split("/")
    want = LAYOUTS[case]
    torch.manual_seed(0)
    model = model_class(name).from_preset(preset)
    state = model.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == want["keys"]
    assert [n for n, _ in model.named_parameters()] == want["params"]
    skip_unless_recorded_release()
    for key, (first, total) in want["fingerprint"].items():
        flat = state[key].detach().reshape(-1).double()
        torch.testing.assert_close(
            flat[:4],
            torch.tensor(first, dtype=torch.float64),
            rtol=1e-6,
            atol=1e-7,
            msg=lambda m, key=key: f"{case} {key}: {m}",
        )
        assert abs(float(flat.sum()) - total) <= 1e-4 * max(1.0, abs(total)), (case, key)


def test_one_stem_on_every_model():
    tiny = {n: model_class(n).from_preset("tiny") for n in model_names()}
    for n in ("PointTransformer", "PartSegModel"):
        assert isinstance(tiny[n], PointStem)
    assert isinstance(tiny["PointMAE"].MAE_encoder, PointStem)
    # the stem's pieces sit directly on the model: no new key level
    assert {k.split(".")[0] for k in tiny["PointTransformer"].state_dict()} >= {"encoder", "pos_embed"}
    assert tiny["PointMAE"].MAE_encoder.reduce_dim is None


def test_stem_tokens_equal_the_pieces_run_by_hand():
    torch.manual_seed(1)
    model = PointTransformer.from_preset("tiny", encoder_dims=64).eval()  # with reduce_dim
    pts = torch.randn(2, 128, 3)
    tokens, center = model.group_tokens(pts)
    nb, c = model.group_divider(pts)
    torch.testing.assert_close(center, c, rtol=0, atol=0)
    torch.testing.assert_close(tokens, model.reduce_dim(model.encoder(nb)), rtol=0, atol=0)
    # pos MLP = Linear -> GELU -> Linear written out
    l0, l2 = model.pos_embed[0], model.pos_embed[2]
    by_hand = torch.nn.functional.gelu(c @ l0.weight.T + l0.bias) @ l2.weight.T + l2.bias
    torch.testing.assert_close(model.pos_embed(c), by_hand)


def test_registry_lists_names_presets_and_keys():
    assert model_names() == ("PartSegModel", "PointMAE", "PointTransformer")
    assert model_class("PointMAE") is PointMAE and model_class("PartSegModel") is PartSegModel
    assert sorted(model_presets("PointTransformer")) == ["point_bert", "tiny", "vit_s"]
    assert sorted(model_presets("PartSegModel")) == ["tiny", "vit_s"]
    assert model_presets("PointMAE")["vit_s"]["decoder_depth"] == 4
    model_presets("PointMAE")["vit_s"]["decoder_depth"] = 99  # a copy: the table is not changed
    assert model_presets("PointMAE")["vit_s"]["decoder_depth"] == 4
    assert {"NAME", "preset", "mask_ratio", "decoder_depth"} <= model_keys("PointMAE")
    assert "fetch_idx" in model_keys("PartSegModel") and "fetch_idx" not in model_keys("PointTransformer")
    with pytest.raises(
        ConfigError,
        match=r"model.NAME must be one of \['PartSegModel', 'PointMAE', "
        r"'PointTransformer'\], got 'PointNet'",
    ):
        model_class("PointNet")
    with pytest.raises(ConfigError, match="got None"):
        model_class(None)  # type: ignore[arg-type]


def test_from_preset_and_build_model_agree():
    torch.manual_seed(3)
    a = PointTransformer.from_preset("tiny", cls_dim=7)
    torch.manual_seed(3)
    b = build_model({"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 7})
    assert a.config == b.config and a.config["num_group"] == 32 and a.config["cls_dim"] == 7
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ConfigError, match=r"'huge' is not a PartSegModel preset; valid presets: \['tiny', 'vit_s'\]"):
        PartSegModel.from_preset("huge")
    with pytest.raises(ValueError):  # ConfigError is a ValueError, as from_preset raised before
        PointMAE.from_preset("huge")


def test_a_subclass_uses_its_registered_base_presets():
    class Wider(PointTransformer):
        pass

    m = Wider.from_preset("tiny", cls_dim=3)
    assert type(m) is Wider and m.config["trans_dim"] == 96


def test_register_model_checks_presets_and_names():
    with pytest.raises(ValueError, match=r"preset Bad/x sets \['widht'\], which .*__init__ does not take"):

        @models.register_model("Bad", presets={"x": {"widht": 3}})
        class Bad(nn.Module):
            def __init__(self, width: int = 1) -> None:
                super().__init__()

    with pytest.raises(ValueError, match="name 'PointMAE' is taken"):

        @models.register_model("PointMAE")
        class Other(nn.Module):
            pass

    assert "Bad" not in model_names() and model_class("PointMAE") is PointMAE


@pytest.mark.parametrize("name", ["PointTransformer", "PartSegModel", "PointMAE"])
def test_model_config_is_every_constructor_argument_and_rebuilds_the_model(name):
    """``model.config`` records each constructor argument as called (sequences as tuples; PartSeg's
    fetch_idx resolved from the depth): the same architecture comes back from it."""
    import inspect

    cls = getattr(models, name)
    model = cls.from_preset("tiny")
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(model.config) == params
    assert all(not isinstance(v, list) for v in model.config.values())
    again = cls(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    if name == "PartSegModel":
        assert model.config["fetch_idx"] == models.partseg.default_fetch_idx(model.config["depth"])
        listed = cls(**{**model.config, "head_widths": [16, 8], "fetch_idx": [0, 1]})
        assert listed.config["head_widths"] == (16, 8) and listed.config["fetch_idx"] == (0, 1)


def test_release_of_a_torch_version():
    from version_records import release

    assert release("2.14.1+cu130") == (2, 14) and release("2.12.0a0+git1234") == (2, 12)
    assert release("2.5.1") < (2, 12) <= release("2.12.0")
    with pytest.raises(ValueError, match="not a torch version"):
        release("nightly")

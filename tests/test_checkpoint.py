"""Checkpoint interop: official Point-MAE / Point-BERT key layouts written BY THE TEST from the
reference's key list (reference/point_mae_family.md §1.1-1.3), loud failures, safe loading, round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from clora3d.errors import CheckpointError, UnsafePickleError
from clora3d.models import (
    PartSegModel,
    PointMAE,
    PointTransformer,
    load_pretrained,
    save_point_mae_checkpoint,
    to_point_mae_state_dict,
)

VIT_S = dict(D=384, depth=12, w=(128, 256, 512), k=32, dec_depth=4)
TINY = dict(D=96, depth=4, w=(32, 64, 128), k=16, dec_depth=2)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# The official key layout, written out from the reference (§1.2 list of `base_model` keys)
# ------------------------------------------------------------------------------------------------
def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _block(prefix: str, D: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm1.weight": (D,),
        f"{prefix}.norm1.bias": (D,),
        f"{prefix}.attn.qkv.weight": (3 * D, D),  # no qkv bias
        f"{prefix}.attn.proj.weight": (D, D),
        f"{prefix}.attn.proj.bias": (D,),
        f"{prefix}.norm2.weight": (D,),
        f"{prefix}.norm2.bias": (D,),
        f"{prefix}.mlp.fc1.weight": (4 * D, D),
        f"{prefix}.mlp.fc1.bias": (4 * D,),
        f"{prefix}.mlp.fc2.weight": (D, 4 * D),
        f"{prefix}.mlp.fc2.bias": (D,),
    }


def official_backbone(
    D: int, depth: int, w: tuple[int, int, int], enc_out: int | None = None, **_: object
) -> dict[str, tuple[int, ...]]:
    """MaskTransformer / fine-tune backbone keys (no prefix): encoder, pos_embed, blocks.blocks.i, norm."""
    w0, w1, w2 = w
    enc_out = enc_out or D
    s = {"encoder.first_conv.0.weight": (w0, 3, 1), "encoder.first_conv.0.bias": (w0,)}
    s.update(_bn("encoder.first_conv.1", w0))
    s.update(
        {
            "encoder.first_conv.3.weight": (w1, w0, 1),
            "encoder.first_conv.3.bias": (w1,),
            "encoder.second_conv.0.weight": (w2, 2 * w1, 1),
            "encoder.second_conv.0.bias": (w2,),
        }
    )
    s.update(_bn("encoder.second_conv.1", w2))
    s.update(
        {
            "encoder.second_conv.3.weight": (enc_out, w2, 1),
            "encoder.second_conv.3.bias": (enc_out,),
            "pos_embed.0.weight": (128, 3),
            "pos_embed.0.bias": (128,),
            "pos_embed.2.weight": (D, 128),
            "pos_embed.2.bias": (D,),
        }
    )
    for i in range(depth):
        s.update(_block(f"blocks.blocks.{i}", D))
    s.update({"norm.weight": (D,), "norm.bias": (D,)})
    return s


def official_pretrain(D: int, depth: int, w: tuple[int, int, int], k: int, dec_depth: int) -> dict[str, tuple]:
    """Keys of Point-MAE's released pretrain.pth `base_model` (without the optional `module.`)."""
    s = {f"MAE_encoder.{n}": shp for n, shp in official_backbone(D, depth, w).items()}
    s["mask_token"] = (1, 1, D)
    s.update(
        {
            "decoder_pos_embed.0.weight": (128, 3),
            "decoder_pos_embed.0.bias": (128,),
            "decoder_pos_embed.2.weight": (D, 128),
            "decoder_pos_embed.2.bias": (D,),
        }
    )
    for i in range(dec_depth):
        s.update(_block(f"MAE_decoder.blocks.{i}", D))
    s.update(
        {
            "MAE_decoder.norm.weight": (D,),
            "MAE_decoder.norm.bias": (D,),
            "increase_dim.0.weight": (3 * k, D, 1),
            "increase_dim.0.bias": (3 * k,),
        }
    )
    return s


def official_finetune(D: int, depth: int, w: tuple[int, int, int], cls_dim: int, **_: object) -> dict[str, tuple]:
    """Point-MAE fine-tuned PointTransformer keys: backbone + cls_token/cls_pos + cls_head_finetune."""
    s = official_backbone(D, depth, w)
    s.update(
        {
            "cls_token": (1, 1, D),
            "cls_pos": (1, 1, D),
            "cls_head_finetune.0.weight": (256, 2 * D),
            "cls_head_finetune.0.bias": (256,),
        }
    )
    s.update(_bn("cls_head_finetune.1", 256))
    s.update({"cls_head_finetune.4.weight": (256, 256), "cls_head_finetune.4.bias": (256,)})
    s.update(_bn("cls_head_finetune.5", 256))
    s.update({"cls_head_finetune.8.weight": (cls_dim, 256), "cls_head_finetune.8.bias": (cls_dim,)})
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shp in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shp, generator=g) + 0.5
        else:
            out[k] = torch.randn(shp, generator=g) * 0.1
    return out


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights AND BatchNorm statistics, so that a forgotten tensor changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def tiny(**kw) -> PointTransformer:
    return PointTransformer.from_preset("tiny", **kw)


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pts() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 256, 3, generator=g)


# ------------------------------------------------------------------------------------------------
# layouts
# ------------------------------------------------------------------------------------------------
def test_module_names_equal_the_official_layout_vit_s():
    with torch.device("meta"):
        mae = PointMAE.from_preset("vit_s")
        cls40 = PointTransformer.from_preset("vit_s", cls_dim=40)
    assert shapes_of(mae) == official_pretrain(**VIT_S)
    assert shapes_of(cls40) == official_finetune(**VIT_S, cls_dim=40)
    assert {f"MAE_encoder.{k}": v for k, v in shapes_of(mae.MAE_encoder).items()} == {
        k: v for k, v in official_pretrain(**VIT_S).items() if k.startswith("MAE_encoder.")
    }


def test_official_vit_s_pretrain_checkpoint_loads_with_zero_missing_backbone_keys(tmp_path: Path):
    official = random_state(official_pretrain(**VIT_S))
    path = tmp_path / "pretrain.pth"
    torch.save(
        {
            "base_model": {"module." + k: v for k, v in official.items()},
            "optimizer": {},
            "epoch": 300,
            "metrics": {"acc": 0.0},
        },
        path,
    )
    model = PointTransformer.from_preset("vit_s", cls_dim=40)
    report = load_pretrained(model, path, log=None)
    assert report.missing_backbone == [] and report.mismatched == []
    head = {k for k in official_finetune(**VIT_S, cls_dim=40) if k.startswith("cls_head_finetune.")}
    assert set(report.missing) == head | {"cls_token", "cls_pos"}
    assert set(report.unexpected) == {k for k in official if not k.startswith("MAE_encoder.")}
    state = model.state_dict()
    for k, v in official.items():
        if k.startswith("MAE_encoder."):
            assert torch.equal(state[k[len("MAE_encoder.") :]], v), k


def test_pretrain_checkpoint_gives_identical_logits(tmp_path: Path):
    src = randomise(tiny(cls_dim=10), 1).eval()
    sd = src.state_dict()
    names = official_backbone(**TINY)
    assert set(names) <= set(sd)
    ckpt = {f"module.MAE_encoder.{k}": sd[k] for k in names}
    ckpt.update(
        {
            "module." + k: v
            for k, v in random_state(
                {k: s for k, s in official_pretrain(**TINY).items() if not k.startswith("MAE_encoder.")}
            ).items()
        }
    )
    torch.save({"base_model": ckpt}, tmp_path / "p.pth")
    dst = randomise(tiny(cls_dim=10), 2)
    load_pretrained(dst, tmp_path / "p.pth", log=None)
    # the pre-training checkpoint has no tokens / head: take them from the source for the comparison
    with torch.no_grad():
        dst.cls_token.copy_(src.cls_token)
        dst.cls_pos.copy_(src.cls_pos)
    dst.cls_head_finetune.load_state_dict(src.cls_head_finetune.state_dict())
    dst.eval()
    x = pts()
    assert torch.equal(dst(x), src(x))


def test_finetuned_checkpoint_gives_identical_logits(tmp_path: Path):
    src = randomise(tiny(cls_dim=10), 1).eval()
    sd = src.state_dict()
    names = official_finetune(**TINY, cls_dim=10)
    assert shapes_of(src) == names
    torch.save({"model": {k: sd[k] for k in names}, "epoch": 3}, tmp_path / "ft.pth")
    dst = randomise(tiny(cls_dim=10), 2)
    report = load_pretrained(dst, tmp_path / "ft.pth", log=None)
    assert report.missing == [] and report.unexpected == []
    dst.eval()
    x = pts()
    assert torch.equal(dst(x), src(x))


# ------------------------------------------------------------------------------------------------
# loud failures
# ------------------------------------------------------------------------------------------------
def _tiny_pretrain_state() -> dict[str, torch.Tensor]:
    return {"MAE_encoder." + k: v for k, v in random_state(official_backbone(**TINY)).items()}


@pytest.mark.parametrize("key", ["encoder.second_conv.3.weight", "blocks.blocks.2.attn.qkv.weight", "norm.bias"])
def test_one_missing_backbone_key_raises_naming_it(key: str):
    state = _tiny_pretrain_state()
    del state["MAE_encoder." + key]
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_pretrained(model, {"base_model": state}, log=None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


@pytest.mark.parametrize("key", ["encoder.first_conv.0.weight", "blocks.blocks.1.mlp.fc1.bias"])
def test_one_misshaped_backbone_key_raises_naming_it(key: str):
    state = _tiny_pretrain_state()
    t = state["MAE_encoder." + key]
    state["MAE_encoder." + key] = torch.zeros((t.shape[0] + 1,) + tuple(t.shape[1:]))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_pretrained(tiny(), {"base_model": state}, log=None)


def test_missing_key_tolerated_without_strict_backbone():
    state = _tiny_pretrain_state()
    del state["MAE_encoder.norm.weight"]
    report = load_pretrained(tiny(), {"base_model": state}, strict_backbone=False, log=None)
    assert report.missing_backbone == ["norm.weight"] and not report.ok


def test_nothing_matching_raises():
    with pytest.raises(CheckpointError, match="no backbone weight"):
        load_pretrained(tiny(), {"state_dict": {"foo.weight": torch.zeros(3)}}, log=None)
    with pytest.raises(CheckpointError):
        load_pretrained(tiny(), {"epoch": 3}, log=None)


def test_missing_file_raises_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(tiny(), tmp_path / "nope.pth", log=None)


class _Payload:
    """Pickles to ``open(marker, "w")``: executing the checkpoint would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_never_executes_code(tmp_path: Path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pth"
    torch.save({"base_model": _tiny_pretrain_state(), "evil": _Payload(str(marker))}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_pretrained(tiny(), path, log=None)
    assert isinstance(info.value, CheckpointError)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# head policy, Point-BERT, other models, PEFT extras
# ------------------------------------------------------------------------------------------------
def test_head_with_other_class_count_is_skipped_with_a_note():
    src = randomise(tiny(cls_dim=40), 1)
    state = {"base_model": src.state_dict()}
    dst = tiny(cls_dim=15)
    head_before = dst.cls_head_finetune[8].weight.detach().clone()
    report = load_pretrained(dst, state, log=None)
    assert {k for k, _ in report.skipped} == {"cls_head_finetune.8.weight", "cls_head_finetune.8.bias"}
    assert "cls_head_finetune.0.weight" in report.loaded
    assert torch.equal(dst.cls_head_finetune[8].weight, head_before)
    assert "different class count" in report.format()
    with pytest.raises(CheckpointError, match=r"cls_head_finetune\.8\.weight"):
        load_pretrained(tiny(cls_dim=15), state, ignore_head=False, log=None)
    report = load_pretrained(tiny(cls_dim=40), state, ignore_head=True, log=None)
    assert not any(k.startswith("cls_head_finetune.") for k in report.loaded)


def test_point_bert_checkpoint(tmp_path: Path):
    bert = dict(head="bert", encoder_dims=64)
    src = randomise(tiny(cls_dim=10, **bert), 1).eval()
    sd = src.state_dict()
    names = official_backbone(**TINY, enc_out=64)
    names.update(
        {"reduce_dim.weight": (96, 64), "reduce_dim.bias": (96,), "cls_token": (1, 1, 96), "cls_pos": (1, 1, 96)}
    )
    assert set(names) <= set(sd)
    ckpt = {f"transformer_q.{k}": sd[k] for k in names}
    ckpt["transformer_q.cls_head.0.weight"] = torch.zeros(512, 192)  # MoCo projection: dropped
    ckpt["transformer_q.mask_token"] = torch.zeros(1, 1, 96)
    ckpt.update({f"transformer_k.{k}": torch.zeros(1) for k in list(names)[:5]})
    ckpt["dvae.encoder.first_conv.0.weight"] = torch.zeros(1)
    ckpt["queue"] = torch.zeros(4, 4)
    torch.save({"base_model": {"module." + k: v for k, v in ckpt.items()}}, tmp_path / "bert.pth")
    dst = randomise(tiny(cls_dim=10, **bert), 2)
    report = load_pretrained(dst, tmp_path / "bert.pth", log=None)
    assert report.layout.startswith("point-bert")
    assert {"cls_token", "cls_pos", "reduce_dim.weight"} <= set(report.loaded)
    assert report.unexpected == ["mask_token"]
    assert "queue" in report.dropped and "transformer_q.cls_head.0.weight" in report.dropped
    assert set(report.missing) == {
        "cls_head_finetune.0.weight",
        "cls_head_finetune.0.bias",
        "cls_head_finetune.3.weight",
        "cls_head_finetune.3.bias",
    }
    dst.cls_head_finetune.load_state_dict(src.cls_head_finetune.state_dict())
    dst.eval()
    x = pts()
    assert torch.equal(dst(x), src(x))


def test_partseg_and_pointmae_load_the_pretrain_layout():
    state = {
        "base_model": {
            **_tiny_pretrain_state(),
            **random_state({k: s for k, s in official_pretrain(**TINY).items() if not k.startswith("MAE_encoder.")}),
        }
    }
    seg = PartSegModel.from_preset("tiny")
    report = load_pretrained(seg, state, log=None)
    assert report.missing_backbone == [] and all(k.startswith(PartSegModel.HEAD_PREFIXES) for k in report.missing)
    mae = PointMAE.from_preset("tiny")
    report = load_pretrained(mae, state, log=None)
    assert report.missing == [] and report.unexpected == []
    for k, v in state["base_model"].items():
        assert torch.equal(mae.state_dict()[k], v), k


def test_peft_extras_may_be_missing_but_block_saving():
    model = tiny()
    model.blocks.blocks[0].attn.qkv.register_parameter("lora_A", nn.Parameter(torch.zeros(4, 96)))
    report = load_pretrained(model, {"base_model": _tiny_pretrain_state()}, log=None)
    assert "blocks.blocks.0.attn.qkv.lora_A" in report.missing and report.ok
    with pytest.raises(CheckpointError, match="lora_A"):
        to_point_mae_state_dict(model)
    assert "blocks.blocks.0.attn.qkv.lora_A" not in to_point_mae_state_dict(model, drop_extra=True)


# ------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------
def test_round_trip_finetune_layout(tmp_path: Path):
    src = randomise(tiny(cls_dim=10), 1).eval()
    path = save_point_mae_checkpoint(src, tmp_path / "ft.pth", epoch=5, metrics={"acc": 91.5})
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert set(raw) >= {"base_model", "epoch", "metrics", "best_metrics"} and raw["epoch"] == 5
    assert {k: tuple(v.shape) for k, v in raw["base_model"].items()} == official_finetune(**TINY, cls_dim=10)
    dst = tiny(cls_dim=10)
    load_pretrained(dst, path, log=None)
    dst.eval()
    x = pts()
    assert torch.equal(dst(x), src(x))


def test_round_trip_pretrain_layout(tmp_path: Path):
    mae = randomise(PointMAE.from_preset("tiny"), 1)
    path = save_point_mae_checkpoint(mae, tmp_path / "mae.pth", module_prefix=True)
    raw = torch.load(path, weights_only=True, map_location="cpu")["base_model"]
    assert {k[len("module.") :]: tuple(v.shape) for k, v in raw.items()} == official_pretrain(**TINY)
    again = PointMAE.from_preset("tiny")
    load_pretrained(again, path, log=None)
    assert all(torch.equal(v, mae.state_dict()[k]) for k, v in again.state_dict().items())
    # a classifier saved in the pre-training layout keeps only the backbone, under MAE_encoder.
    cls = randomise(tiny(), 3)
    sd = to_point_mae_state_dict(cls, "pretrain")
    assert set(sd) == {"MAE_encoder." + k for k in official_backbone(**TINY)}


@pytest.mark.parametrize("payload", [b"junk\n", b"", b"PK\x03\x04not really a zip", bytes(range(256))])
def test_corrupt_checkpoint_file_is_one_clear_error(tmp_path, payload):
    from clora3d.errors import CheckpointError
    from clora3d.models import PointTransformer
    from clora3d.models.checkpoint import load_pretrained

    bad = tmp_path / "pretrain.pth"
    bad.write_bytes(payload)
    with pytest.raises(CheckpointError, match="pretrain.pth"):
        load_pretrained(PointTransformer.from_preset("tiny"), str(bad), log=None)

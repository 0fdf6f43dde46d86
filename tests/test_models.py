"""Models against independent references: parameter formulas from the reference's layer list,
channel-first Conv1d re-implementations, brute-force interpolation, permutation behaviour, MAE
training on synthetic shapes, frozen BatchNorm statistics, config building."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from clora3d.errors import ConfigError
from clora3d.models import (
    Attention,
    Encoder,
    PartSegModel,
    PointMAE,
    PointTransformer,
    apply_frozen_bn_policy,
    build_model,
    count_parameters,
    freeze_bn_stats,
    model_keys,
)
from clora3d.models.partseg import PointNetFeaturePropagation, default_fetch_idx

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# parameter counts, from the layer list of reference §1.1 / §1.3 / §5 (not from the model)
# ------------------------------------------------------------------------------------------------
def lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # BatchNorm / LayerNorm affine parameters


def enc(out: int = 384, w=(128, 256, 512)) -> int:
    return lin(3, w[0]) + bn(w[0]) + lin(w[0], w[1]) + lin(2 * w[1], w[2]) + bn(w[2]) + lin(w[2], out)


def block(D: int = 384) -> int:
    return bn(D) + lin(D, 3 * D, bias=False) + lin(D, D) + bn(D) + lin(D, 4 * D) + lin(4 * D, D)


def backbone(D: int = 384, depth: int = 12) -> int:
    return enc(D) + lin(3, 128) + lin(128, D) + depth * block(D) + bn(D)


def test_vit_s_classification_parameter_counts():
    for cls_dim, expected in ((40, 22_099_752), (15, 22_093_327)):
        head = lin(768, 256) + bn(256) + lin(256, 256) + bn(256) + lin(256, cls_dim)
        formula = backbone() + 2 * 384 + head  # + cls_token + cls_pos
        assert formula == expected
        with torch.device("meta"):
            model = PointTransformer.from_preset("vit_s", cls_dim=cls_dim)
        assert sum(p.numel() for p in model.parameters()) == formula


def test_point_bert_and_partseg_and_mae_parameter_counts():
    bert = (
        enc(256)
        + lin(256, 384)
        + lin(3, 128)
        + lin(128, 384)
        + 12 * block()
        + bn(384)
        + 2 * 384
        + lin(768, 256)
        + lin(256, 40)
    )
    seg = (
        backbone()
        + lin(16, 64, bias=False)
        + bn(64)
        + lin(1152 + 3, 1536)
        + bn(1536)
        + lin(1536, 1024)
        + bn(1024)
        + lin(3392, 512)
        + bn(512)
        + lin(512, 256)
        + bn(256)
        + lin(256, 50)
    )
    mae = backbone() + 384 + lin(3, 128) + lin(128, 384) + 4 * block() + bn(384) + lin(384, 96)
    with torch.device("meta"):
        models = [
            build_model({"NAME": "PointTransformer", "preset": "point_bert"}),
            build_model({"NAME": "PartSegModel", "preset": "vit_s"}),
            build_model({"NAME": "PointMAE", "preset": "vit_s"}),
        ]
    assert [count_parameters(m) for m in models] == [bert, seg, mae]
    assert seg == 27_063_730


# ------------------------------------------------------------------------------------------------
# building blocks against straightforward channel-first / textbook implementations
# ------------------------------------------------------------------------------------------------
def reference_encoder(enc_mod: Encoder, groups: torch.Tensor) -> torch.Tensor:
    """Reference mini-PointNet: channel-first Conv1d modules, repeat-and-concat, max over points."""
    B, G, k, _ = groups.shape
    x = groups.reshape(B * G, k, 3).transpose(2, 1)
    f = enc_mod.first_conv(x)
    g = torch.max(f, dim=2, keepdim=True)[0]
    f = torch.cat([g.expand(-1, -1, k), f], dim=1)
    f = enc_mod.second_conv(f)
    return torch.max(f, dim=2, keepdim=False)[0].reshape(B, G, -1)


@pytest.mark.parametrize("split_global", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_encoder_matches_channel_first_reference(split_global: bool, train: bool):
    e = Encoder(48, widths=(16, 32, 64), split_global=split_global)
    with torch.no_grad():
        for m in e.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    e.train(train)
    x = torch.randn(2, 5, 8, 3)
    ours = e(x)
    ref = reference_encoder(e, x)
    assert ours.shape == (2, 5, 48)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_attention_matches_textbook_softmax():
    att = Attention(32, num_heads=4).eval()
    x = torch.randn(3, 7, 32)
    qkv = att.qkv(x).reshape(3, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax(q @ k.transpose(-2, -1) * 8**-0.5, dim=-1)
    ref = att.proj((a @ v).transpose(1, 2).reshape(3, 7, 32))
    torch.testing.assert_close(att(x), ref, rtol=1e-5, atol=1e-5)
    assert att.qkv.bias is None


def test_positional_embedding_is_readded_before_every_block():
    model = PointTransformer.from_preset("tiny", drop_path_rate=0.0).eval()
    x, pos = torch.randn(2, 5, 96), torch.randn(2, 5, 96)
    ref = x
    for blk in model.blocks.blocks:
        h = ref + pos
        h = h + blk.attn(blk.norm1(h))
        ref = h + blk.mlp(blk.norm2(h))
    torch.testing.assert_close(model.blocks(x, pos), ref)
    outs = model.blocks(x, pos, return_layers=[1, 3])
    assert len(outs) == 2 and torch.equal(outs[1], model.blocks(x, pos))


def test_drop_path_schedule():
    model = PointTransformer.from_preset("vit_s")
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks.blocks]
    assert isinstance(model.blocks.blocks[0].drop_path, nn.Identity)
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])


# ------------------------------------------------------------------------------------------------
# classification: what is and is not invariant to the order of the input points
# ------------------------------------------------------------------------------------------------
def test_point_order_invariance_with_fixed_fps_start():
    """FPS starts at input index 0. Permuting the points while keeping point 0 first gives the same
    FPS centres (ties aside: random float inputs have none) and the same kNN sets; the encoder
    max-pools over each group, so eval-mode logits are equal up to float rounding. Moving a
    different point to index 0 changes the centres, hence the logits."""
    model = PointTransformer.from_preset("tiny", cls_dim=7).eval()
    g = torch.Generator().manual_seed(5)
    pts = torch.randn(2, 200, 3, generator=g)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(199, generator=g)])
    with torch.no_grad():
        a = model(pts)
        b = model(pts[:, perm])
        _, c0 = model.group_divider(pts)
        _, c1 = model.group_divider(pts[:, perm])
        torch.testing.assert_close(c0, c1, rtol=0, atol=0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        other = torch.roll(torch.arange(200), 1)  # point 199 becomes the FPS start
        c = model(pts[:, other])
        _, c2 = model.group_divider(pts[:, other])
    assert not torch.allclose(c0, c2)
    assert not torch.allclose(a, c, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# part segmentation
# ------------------------------------------------------------------------------------------------
def test_default_fetch_idx():
    assert default_fetch_idx(12) == (3, 7, 11)
    assert default_fetch_idx(4) == (0, 2, 3)
    assert default_fetch_idx(6) == (1, 3, 5)


def test_feature_propagation_matches_brute_force():
    prop = PointNetFeaturePropagation(in_channel=0, mlp=[])
    g = torch.Generator().manual_seed(2)
    dense, coarse = torch.rand(2, 30, 3, generator=g), torch.rand(2, 9, 3, generator=g)
    feats = torch.randn(2, 9, 5, generator=g)
    out = prop(dense, coarse, None, feats).numpy()
    d, c, f = dense.double().numpy(), coarse.double().numpy(), feats.double().numpy()
    for b in range(2):
        for i in range(30):
            sq = ((c[b] - d[b, i]) ** 2).sum(-1)
            nn3 = np.argsort(sq, kind="stable")[:3]
            w = 1.0 / (sq[nn3] + 1e-8)
            w /= w.sum()
            np.testing.assert_allclose(out[b, i], (w[:, None] * f[b, nn3]).sum(0), rtol=1e-4, atol=1e-5)


def reference_partseg(model: PartSegModel, pts: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Channel-first re-implementation of the reference seg head (repeat global features over N,
    brute-force 3-NN over squared distances, concat then Conv1d), on the model's own modules."""
    B, N, _ = pts.shape
    feat, center = model.forward_token_features(pts)  # (B, G, F)
    x = feat.transpose(1, 2)
    glob = torch.cat(
        [
            x.max(2)[0].unsqueeze(-1).repeat(1, 1, N),
            x.mean(2).unsqueeze(-1).repeat(1, 1, N),
            model.label_conv(onehot.view(B, -1, 1)).repeat(1, 1, N),
        ],
        dim=1,
    )
    d = ((pts[:, :, None] - center[:, None]) ** 2).sum(-1)
    dist, idx = d.sort(dim=-1)
    w = 1.0 / (dist[:, :, :3] + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    nb = torch.stack([feat[b][idx[b, :, :3]] for b in range(B)])  # (B, N, 3, F)
    new = torch.cat([pts, (nb * w[..., None]).sum(2)], dim=-1).transpose(1, 2)
    for conv, bn in zip(model.propagation_0.mlp_convs, model.propagation_0.mlp_bns):
        new = torch.relu(bn(conv(new)))
    h = torch.cat([new, glob], dim=1)
    h = model.dp1(torch.relu(model.bns1(model.convs1(h))))
    h = torch.relu(model.bns2(model.convs2(h)))
    return F.log_softmax(model.convs3(h), dim=1).permute(0, 2, 1)


@pytest.mark.parametrize("train", [False, True])
def test_partseg_matches_channel_first_reference(train: bool):
    model = PartSegModel.from_preset("tiny", dropout=0.0, drop_path_rate=0.0).train(train)
    pts = torch.randn(2, 96, 3)
    onehot = F.one_hot(torch.tensor([2, 9]), 16).float()
    torch.testing.assert_close(model(pts, onehot), reference_partseg(model, pts, onehot), rtol=1e-4, atol=1e-4)


def test_partseg_output_and_gradients_reach_every_parameter():
    model = PartSegModel.from_preset("tiny")
    pts = torch.randn(3, 128, 3)
    onehot = F.one_hot(torch.tensor([0, 5, 15]), 16).float()
    out = model(pts, onehot)
    assert out.shape == (3, 128, 50)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, 128))
    target = torch.randint(0, 50, (3, 128))
    F.nll_loss(out.reshape(-1, 50), target.reshape(-1)).backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert no_grad == []
    assert not hasattr(model, "cls_token")
    head = dict(model.head_parameters())
    assert "convs3.weight" in head and "label_conv.0.weight" in head and "propagation_0.mlp_convs.0.weight" in head
    assert not any(n in head for n, _ in model.backbone_parameters())
    assert len(head) + len(list(model.backbone_parameters())) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="one-hot"):
        model(pts, onehot[:, :15])


# ------------------------------------------------------------------------------------------------
# MAE pre-training
# ------------------------------------------------------------------------------------------------
def synthetic_batch(n: int, n_points: int) -> torch.Tensor:
    from clora3d.data.synthetic import SYNTHETIC_CLASSES, make_shape

    rng = np.random.default_rng(0)
    clouds = [make_shape(i % len(SYNTHETIC_CLASSES), n_points, rng) for i in range(n)]
    x = torch.from_numpy(np.stack(clouds)).float()
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=-1).amax(1).view(-1, 1, 1)


def test_mae_masking_and_reconstruction_shapes():
    mae = PointMAE.from_preset("tiny")
    out = mae.forward_reconstruction(torch.randn(4, 128, 3), generator=torch.Generator().manual_seed(0))
    G, k, M = 32, 16, int(0.6 * 32)
    assert (out["mask"].sum(1) == M).all() and not torch.equal(out["mask"][0], out["mask"][1])
    assert out["reconstructed"].shape == out["masked_gt"].shape == (4, M * k, 3)
    assert out["visible"].shape == (4, (G - M) * k, 3) and out["full"].shape == (4, G * k, 3)
    with torch.device("meta"):
        assert PointMAE.from_preset("vit_s").increase_dim[0].out_channels == 3 * 32


def test_mae_loss_decreases_on_synthetic_shapes():
    torch.manual_seed(0)
    mae = PointMAE.from_preset("tiny", drop_path_rate=0.0)
    pts = synthetic_batch(8, 256)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.0)

    def eval_loss() -> float:
        mae.eval()
        with torch.no_grad():
            return float(mae(pts, generator=torch.Generator().manual_seed(123)))

    before = eval_loss()
    mae.train()
    for _ in range(30):
        opt.zero_grad()
        loss = mae(pts)
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after) and after < 0.6 * before, (before, after)


# ------------------------------------------------------------------------------------------------
# frozen BatchNorm statistics
# ------------------------------------------------------------------------------------------------
def _encoder_bn_stats(model: PointTransformer) -> list[torch.Tensor]:
    return [model.encoder.first_conv[1].running_mean.clone(), model.encoder.second_conv[1].running_var.clone()]


@pytest.mark.parametrize("policy", ["eval", "train"])
def test_frozen_backbone_bn_statistics(policy: str):
    model = PointTransformer.from_preset("tiny", cls_dim=5)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("cls_head_finetune.")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = _encoder_bn_stats(model)
    head_before = model.cls_head_finetune[1].running_mean.clone()
    for _ in range(3):
        model.train()
        frozen = apply_frozen_bn_policy(model, policy)
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 128, 3) * 2 + 1), torch.randint(0, 5, (4,))).backward()
        opt.step()
    after = _encoder_bn_stats(model)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, after))
    if policy == "eval":
        assert frozen == ["encoder.first_conv.1", "encoder.second_conv.1"]
        assert unchanged
    else:
        assert frozen == [] and not unchanged
    assert not torch.equal(head_before, model.cls_head_finetune[1].running_mean)  # trainable BN moves


def test_freeze_bn_stats_only_touches_fully_frozen_bn():
    model = PointTransformer.from_preset("tiny").train()
    assert freeze_bn_stats(model) == []
    model.encoder.first_conv[1].weight.requires_grad = False
    assert freeze_bn_stats(model) == []  # bias still trainable
    model.encoder.first_conv[1].bias.requires_grad = False
    assert freeze_bn_stats(model) == ["encoder.first_conv.1"]
    assert not model.encoder.first_conv[1].training and model.encoder.second_conv[1].training
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 2 * 32


# ------------------------------------------------------------------------------------------------
# build_model
# ------------------------------------------------------------------------------------------------
def test_build_model_presets_and_overrides():
    m = build_model({"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 15, "encoder_widths": [16, 32, 64]})
    assert isinstance(m, PointTransformer) and m.cls_dim == 15 and m.encoder.first_conv[0].out_channels == 16
    b = build_model({"NAME": "PointTransformer", "preset": "tiny", "head": "bert", "encoder_dims": 64})
    assert b.reduce_dim is not None and len(b.cls_head_finetune) == 4
    s = build_model({"NAME": "PartSegModel", "preset": "tiny", "fetch_idx": [1, 3]})
    assert s.fetch_idx == (1, 3)
    assert "mask_ratio" in model_keys("PointMAE") and "fetch_idx" in model_keys("PartSegModel")


def test_build_model_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"cls_dimm.*valid keys.*cls_dim"):
        build_model({"NAME": "PointTransformer", "cls_dimm": 3})
    with pytest.raises(ConfigError, match="NAME"):
        build_model({"NAME": "PointNet"})
    with pytest.raises(ConfigError, match="preset"):
        build_model({"NAME": "PointMAE", "preset": "huge"})
    with pytest.raises(ConfigError, match="head"):
        build_model({"NAME": "PointTransformer", "preset": "tiny", "head": "mlp"})

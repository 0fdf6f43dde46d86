"""The point cloud PEFT baselines (issue 14) on the part-seg model and in the few-shot protocol.

Part seg (IDPT, DAPT, PointGST, PointLoRA on ``PartSegModel``): trainable counts against formulas,
token bookkeeping (one prediction per input point; tokens a method adds never reach the per-point or
global features: PointGST equals the un-adapted model at init, DAPT and PointLoRA equal it once every
path by which their extra tokens may legitimately act is switched off, IDPT against an independent
re-computation of its part-seg forward), an adapter round trip, and a short run of the real trainer
from each ``--task shapenetpart --peft <method>`` config on synthetic ShapeNetPart data that lowers the loss.
Few-shot: every ``cfgs/fewshot/<method>.yaml`` follows the protocol and trains one short episode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clora3d.models import PartSegModel
from clora3d.peft import apply_peft, load_adapter

REPO = Path(__file__).resolve().parents[1]
METHODS = ("idpt", "dapt", "pointgst", "pointlora")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread

# tiny part-seg model: d 96, depth 4 (fetch 0, 2, 3), 32 groups of 16; PointLoRA's scales sized for 128 points
TINY_CFG = {
    "idpt": {"NAME": "idpt", "generator": "mlp", "train_prompt_pos": True},
    "dapt": {"NAME": "dapt"},
    "pointgst": {"NAME": "pointgst"},
    "pointlora": {"NAME": "pointlora", "scales": [[32, 16, 8], [16, 32, 4]]},
}


def tiny_seg(**kw) -> PartSegModel:
    torch.manual_seed(0)
    return PartSegModel.from_preset("tiny", drop_path_rate=0.0, **kw)


def batch(b: int = 2, n: int = 128, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(b, n, 3, generator=g) * 2 - 1
    return pts, F.one_hot(torch.arange(b) * 5 % 16, 16).float()


def count(method) -> int:
    return sum(p.numel() for p in method.trainable_parameters().values())


def perturb_(method, seed: int = 5, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------------------------
# trainable counts
# ------------------------------------------------------------------------------------------------
def seg_head_count(
    d: int, n_fetch: int, label: int, prop: tuple[int, int], widths: tuple[int, int], classes: int = 16, parts: int = 50
) -> int:
    """label_conv (no bias) + BN, propagation convs + BNs, convs1..3 + bns1..2."""
    f = d * n_fetch
    n = classes * label + 2 * label
    n += (f + 3) * prop[0] + prop[0] + 2 * prop[0] + prop[0] * prop[1] + prop[1] + 2 * prop[1]
    n += (prop[1] + 2 * f + label) * widths[0] + widths[0] + 2 * widths[0]
    n += widths[0] * widths[1] + widths[1] + 2 * widths[1] + widths[1] * parts + parts
    return n


def method_count(name: str, d: int, depth: int, hidden: int, n_fetch: int, enc_first: int) -> int:
    """Parameters a method adds on the part-seg model (no cls token, no classification head)."""
    if name == "idpt":  # one MLP generator per fetched block (Conv1d d x d, BN) + one prompt_pos
        return n_fetch * (d * d + 2 * d) + d
    if name == "dapt":  # per block: adapter (LN, scale d->1, down d->64, up 64->d) + 6 SSF sites + prompt SSF
        adapter = 2 * d + (d + 1) + (d * 64 + 64) + (64 * d + d)
        ssf = 2 * (d + 3 * d + d + d + hidden + d) + 2 * d
        return depth * (adapter + ssf) + 2 * 2 * d
    if name == "pointgst":  # per block: down d->36, up 36->d, adapt 36->36, two LayerNorm(36)
        r = 36
        return depth * ((d * r + r) + (r * d + d) + (r * r + r) + 4 * r)
    # pointlora: LoRA r8 on qkv/proj, 4 prompt MLPs (hidden 32), mask predictor, first_conv, pos_embed
    lora = depth * (8 * d + 3 * d * 8 + 8 * d + d * 8)
    mlps = sum(d * 32 + 32 + 32 * o + o for o in (d, d, 3 * d, d))
    mask = d * (d // 2) + d // 2 + d // 2 + 1
    pos = 3 * 128 + 128 + 128 * d + d
    return lora + mlps + mask + enc_first + pos


@pytest.mark.parametrize("name", METHODS)
def test_partseg_counts_vit_s(name):
    cfg = {"NAME": name, **({"generator": "mlp", "train_prompt_pos": True} if name == "idpt" else {})}
    model = PartSegModel.from_preset("vit_s")
    method = apply_peft(model, cfg)
    head = seg_head_count(384, 3, 64, (1536, 1024), (512, 256))
    assert head == 5_238_706
    first_conv = 3 * 128 + 128 + 2 * 128 + 128 * 256 + 256  # Conv1d 3->128, BN, Conv1d 128->256
    assert count(method) == head + method_count(name, 384, 12, 1536, 3, first_conv)
    # the totals documented in the method files and configs
    assert count(method) == {"idpt": 5_683_762, "dapt": 5_959_870, "pointgst": 5_593_234, "pointlora": 5_743_155}[name]


# ------------------------------------------------------------------------------------------------
# token bookkeeping
# ------------------------------------------------------------------------------------------------
def block_lengths(model, pts, onehot) -> list[int]:
    """Sequence length each block returns during one forward."""
    lengths, handles = [], []
    for blk in model.blocks.blocks:
        handles.append(blk.register_forward_hook(lambda m, a, o: lengths.append(o.shape[1])))
    try:
        with torch.no_grad():
            model(pts, onehot)
    finally:
        for h in handles:
            h.remove()
    return lengths


def isolate_tokens_(model: PartSegModel) -> None:
    """Zero every attention output and the positional embedding: tokens no longer interact, and adding
    the position once or per block is the same."""
    with torch.no_grad():
        for blk in model.blocks.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
        model.pos_embed[2].weight.zero_()
        model.pos_embed[2].bias.zero_()


@pytest.mark.parametrize("train", [False, True])
def test_pointgst_partseg_starts_at_the_base_model(train):
    base = tiny_seg()
    model = copy.deepcopy(base)
    method = apply_peft(model, TINY_CFG["pointgst"])
    pts, oh = batch()
    base.train(train)
    model.train(train)
    torch.manual_seed(3)
    want = base(pts, oh)
    torch.manual_seed(3)
    got = model(pts, oh)
    assert got.shape == (2, 128, 50)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    perturb_(method)
    assert (model.eval()(pts, oh) - base.eval()(pts, oh)).abs().max() > 1e-3  # the adapter does act


@pytest.mark.parametrize("name", ["dapt", "pointlora"])
def test_extra_tokens_do_not_leak_into_partseg_features(name):
    """With attention and the token prompts off, a patch token never sees the method's extra tokens:
    the adapted model must then equal the un-adapted one exactly, although every fetched layer holds
    the extra tokens (a pool reading them as patches, or pooling them into the global feature, fails)."""
    base = tiny_seg(dropout=0.0)
    isolate_tokens_(base)
    model = copy.deepcopy(base)
    cfg = dict(TINY_CFG[name], **({"ssf_std": 0.0} if name == "dapt" else {}))
    method = apply_peft(model, cfg)
    if name == "pointlora":  # the prompt branches on proj and on the patch tokens output zero
        with torch.no_grad():
            for mlp in (method.mods.prompt_linear["proj"], method.mods.prompt_tokens):
                mlp[2].weight.zero_()
                mlp[2].bias.zero_()
    pts, oh = batch()
    for train in (False, True):  # eval first: a train-mode pass moves the patch encoder's BN statistics
        base.train(train)
        model.train(train)
        with torch.no_grad():
            want, got = base(pts, oh), model(pts, oh)
        assert got.shape == (2, 128, 50)
        torch.testing.assert_close(got.exp().sum(-1), torch.ones(2, 128))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    G, depth = 32, 4
    lengths = block_lengths(model.eval(), pts, oh)
    if name == "dapt":  # one internal prompt more after every block
        assert lengths == [G + i + 1 for i in range(depth)]
    else:  # 8 + 4 selected tokens before the patches
        assert lengths == [G + 12] * depth
    # the method does act once its trainable tensors move
    base.load_state_dict(model.state_dict(), strict=False)  # same BN statistics
    perturb_(method)
    with torch.no_grad():
        assert (model.eval()(pts, oh) - base.eval()(pts, oh)).abs().max() > 1e-4


def test_pointlora_partseg_sequence_puts_selected_tokens_first():
    """The selected tokens come first: the last G tokens entering block 0 are the patches + pos."""
    model = tiny_seg()
    apply_peft(model, TINY_CFG["pointlora"])
    seen = {}
    h = model.blocks.register_forward_pre_hook(lambda m, a: seen.update(x=a[0], pos=a[1]), prepend=False)
    h2 = model.blocks.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(first=a[0]))
    pts, oh = batch()
    with torch.no_grad():
        model.eval()(pts, oh)
        neigh, center = model.group_divider(pts)
        tokens, pos = model.encoder(neigh), model.pos_embed(center)
    h.remove()
    h2.remove()
    assert seen["first"].shape[1] == 32 + 12
    # the stack's input after PointLoRA's pre-hook: [selected (12), patches (32)]
    torch.testing.assert_close(seen["x"][:, 12:], tokens)
    torch.testing.assert_close(seen["pos"][:, 12:], pos)


def bn_eval(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm over the channel axis 1, written out."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def ref_mlp_generator(gen: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """IDPT's part-seg generator: Conv1d (no bias) + BN + LeakyReLU 0.2 + max over tokens -> (B, 1, d)."""
    conv, bn = gen.conv5[0], gen.conv5[1]
    y = torch.einsum("oc,bnc->bon", conv.weight[:, :, 0], tokens)
    return F.leaky_relu(bn_eval(bn, y), 0.2).max(dim=-1).values.unsqueeze(1)


def idpt_seg_reference(base: PartSegModel, method, pts: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """IDPT's part-seg forward written out on the un-adapted model's modules (eval mode): blocks 0..L-1 with
    the position added before each; before a fetched block its prompt from the raw patches, prepended with
    prompt_pos, then stripped; features [raw prompt, prompt out, patches]; global = normed prompts."""
    B, N, _ = pts.shape
    neigh, center = base.group_divider(pts)
    x = base.encoder(neigh)
    pos = base.pos_embed(center)
    pp = method.mods.prompt_pos
    gens = dict(zip(base.fetch_idx, method.mods.generators))
    fetched = []
    for i, blk in enumerate(base.blocks.blocks):
        if i in gens:
            p = ref_mlp_generator(gens[i], x)
            y = blk(torch.cat([p + pp, x + pos], dim=1))
            fetched.append((p, y[:, :1], y[:, 1:]))
            x = y[:, 1:]
        else:
            x = blk(x + pos)
    feat = torch.cat([base.norm(t) for _, _, t in fetched], dim=-1)
    glob = torch.cat([base.norm(p[:, 0]) for p, _, _ in fetched] + [base.norm(o[:, 0]) for _, o, _ in fetched], -1)
    label = F.leaky_relu(
        bn_eval(base.label_conv[1], torch.einsum("oc,bc->bo", base.label_conv[0].weight[:, :, 0], onehot)[:, :, None]),
        0.2,
    )[:, :, 0]
    glob = torch.cat([glob, label], dim=-1)
    # 3-NN inverse squared distance interpolation, brute force
    d = ((pts[:, :, None] - center[:, None]) ** 2).sum(-1)
    dist, idx = d.sort(dim=-1)
    w = 1.0 / (dist[:, :, :3] + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    nb = torch.stack([feat[b][idx[b, :, :3]] for b in range(B)])
    h = torch.cat([pts, (nb * w[..., None]).sum(2)], dim=-1).transpose(1, 2)  # (B, C, N)
    for conv, bn in zip(base.propagation_0.mlp_convs, base.propagation_0.mlp_bns):
        h = torch.relu(bn_eval(bn, conv(h)))
    h = torch.cat([h, glob[:, :, None].expand(-1, -1, N)], dim=1)
    h = torch.relu(bn_eval(base.bns1, base.convs1(h)))
    h = torch.relu(bn_eval(base.bns2, base.convs2(h)))
    return F.log_softmax(base.convs3(h), dim=1).permute(0, 2, 1)


def test_idpt_partseg_matches_independent_recomputation():
    base = tiny_seg()
    model = copy.deepcopy(base)
    method = apply_peft(model, TINY_CFG["idpt"])
    perturb_(method)
    with torch.no_grad():  # the head was perturbed on the adapted model: give the reference the same weights
        for n, p in model.named_parameters():
            if n.startswith(PartSegModel.HEAD_PREFIXES):
                base.get_parameter(n).copy_(p)
    pts, oh = batch()
    model.eval()
    base.eval()
    method.mods.eval()
    lengths = block_lengths(model, pts, oh)
    assert lengths == [32 + 2, 32, 32 + 2, 32 + 2]  # fetched blocks 0, 2, 3 carry [raw prompt, prompt out]
    with torch.no_grad():
        got = model(pts, oh)
        want = idpt_seg_reference(base, method, pts, oh)
    assert got.shape == (2, 128, 50)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_idpt_partseg_prompts_change_only_the_global_feature_path():
    """With attention isolated, the per-group features equal the un-adapted model's (the prompt never
    mixes into them), while the global feature is the prompts' (so the output differs)."""
    base = tiny_seg()
    isolate_tokens_(base)
    model = copy.deepcopy(base)
    apply_peft(model, TINY_CFG["idpt"])
    pts, oh = batch()
    with torch.no_grad():
        fb, gb, cb = base.eval().forward_features(pts)
        fm, gm, cm = model.eval().forward_features(pts)
    torch.testing.assert_close(fm, fb, rtol=0, atol=1e-5)
    torch.testing.assert_close(cm, cb)
    assert gm.shape == gb.shape and (gm - gb).abs().max() > 1e-3


def test_idpt_partseg_config_errors_and_defaults():
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError, match="generator"):
        apply_peft(tiny_seg(), {"NAME": "idpt", "generator": "pointnet"})
    m = apply_peft(tiny_seg(), {"NAME": "idpt"})  # default generator: the DGCNN one, k 20 <= 32 groups
    assert type(m.mods.generators[0]).__name__ == "PromptGenerator" and len(m.mods.generators) == 3
    assert "peft.prompt_pos" not in m.trainable_parameters()  # a fixed buffer unless train_prompt_pos
    m.remove()


# ------------------------------------------------------------------------------------------------
# adapter round trip
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_partseg_adapter_round_trip(tmp_path, name):
    model = tiny_seg()
    method = apply_peft(model, TINY_CFG[name])
    perturb_(method)
    pts, oh = batch()
    with torch.no_grad():
        model.train()(pts, oh)  # BN statistics drift (frozen_bn: train) and are saved in the adapter
    path = method.save_adapter(tmp_path / "a.pth")
    model.eval()
    with torch.no_grad():
        want = model(pts, oh)
    fresh = tiny_seg()
    loaded = load_adapter(fresh, path)
    assert loaded.name == name
    with torch.no_grad():
        got = fresh.eval()(pts, oh)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    loaded.remove()  # detached again: the plain model is back
    with torch.no_grad():
        plain = tiny_seg().eval()
        fresh.load_state_dict(plain.state_dict())
        torch.testing.assert_close(fresh.eval()(pts, oh), plain(pts, oh))


# ------------------------------------------------------------------------------------------------
# configs: part seg
# ------------------------------------------------------------------------------------------------
SEG_OPTS = {
    "idpt": {"generator": "mlp", "train_prompt_pos": True},
    "dapt": {"rank": 64, "adapter_dropout": 0.0},
    "pointgst": {"rank": 36, "local_size": 32},
    "pointlora": {"rank": 8, "scales": [[128, 32, 32], [64, 64, 8]], "mask_loss_weight": 0.004},
}


@pytest.mark.parametrize("name", METHODS)
def test_shapenetpart_configs_follow_the_partseg_protocol(name):
    from clora3d.engine.config import compose_config

    cfg = compose_config("shapenetpart", name)  # the pair file when the method keeps one, else the layers
    assert cfg["name"] == f"shapenetpart_{name}" and cfg["task"] == "partseg" and cfg["peft"]["NAME"] == name
    m = cfg["model"]
    assert m["NAME"] == "PartSegModel" and m["drop_path_rate"] == 0.1 and m["num_group"] == 128
    # segmentation/main.py: lr 2e-4, batch 16, 300 epochs (cosine over 300), 2048 points, isotropic S&T
    assert cfg["optimizer"]["lr"] == 2e-4 and cfg["train"]["batch_size"] == 16
    assert cfg["train"]["epochs"] == 300 and cfg["scheduler"]["epochs"] == 300
    assert cfg["data"]["npoints"] == 2048
    (t,) = cfg["data"]["train_transforms"]
    assert (t["NAME"], t["scale_low"], t["scale_high"], t["translate"], t["isotropic"]) == (
        "ScaleAndTranslate",
        0.8,
        1.25,
        0.1,
        True,
    )
    for k, v in SEG_OPTS[name].items():
        assert cfg["peft"][k] == v, k


@pytest.fixture(scope="module")
def snp_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_shapenetpart

    return write_shapenetpart(tmp_path_factory.mktemp("snp") / "snp", n_train=1, n_val=0, n_test=1, n_points=300)


def seg_run(tmp_path, name: str, root: Path, extra: list[str]) -> dict:
    """The real trainer from ``--task shapenetpart --peft <name>``, with a tiny model, 256 points, 6 epochs."""
    from clora3d.engine.config import compose_config
    from clora3d.engine.trainer import train

    cfg = compose_config(
        "shapenetpart",
        name,
        overrides=extra
        + [
            f"dataset.train.root={root}",
            f"dataset.test.root={root}",
            "dataset.train.n_points=256",
            "dataset.test.n_points=256",
            "data.npoints=256",
            "train.epochs=6",
            "scheduler.epochs=6",
            "scheduler.warmup_epochs=0",
            "train.batch_size=8",
            "train.num_workers=0",
            "optimizer.lr=0.002",
            f"log.root={tmp_path / 'exp'}",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    cfg["model"] = {"NAME": "PartSegModel", "preset": "tiny", "drop_path_rate": 0.0, "num_classes": 16, "num_parts": 50}
    if name == "pointlora":
        cfg["peft"]["scales"] = [[64, 16, 8], [32, 32, 4]]
    return train(cfg, run_dir=tmp_path / "run")


@pytest.mark.parametrize("name", METHODS)
def test_partseg_trains_from_its_config_and_lowers_the_loss(tmp_path, snp_root, name):
    """The real trainer, from the shapenetpart x <method> config with a tiny model on synthetic ShapeNetPart:
    no trainer special case, the part-seg metrics come out and the train loss goes down."""
    res = seg_run(tmp_path, name, snp_root, [])
    h = res["history"]
    assert h[-1]["train"]["loss"] < 0.9 * h[0]["train"]["loss"], [x["train"]["loss"] for x in h]
    assert 0.0 <= res["best"]["inst_miou"] <= 100.0
    if name == "pointlora":  # the mask loss reached the trainer's total
        assert all(x["train"]["reg_loss"] != 0.0 for x in h)


@pytest.mark.parametrize("name", METHODS)
def test_partseg_trains_on_the_real_shapenetpart_sample(tmp_path, shared_data, name):
    """The same run on the 16 real ShapeNetPart shapes (original v0 files; skipped without ../shared/data)."""
    root = shared_data / "shapenetcore_partanno_segmentation_benchmark_v0"
    res = seg_run(tmp_path, name, root, ["dataset.train.split=train", "dataset.test.split=train"])
    h = res["history"]
    assert h[-1]["train"]["loss"] < 0.9 * h[0]["train"]["loss"], [x["train"]["loss"] for x in h]
    assert 0.0 <= res["best"]["inst_miou"] <= 100.0


# ------------------------------------------------------------------------------------------------
# configs: few-shot
# ------------------------------------------------------------------------------------------------
FEWSHOT_OPTS = {
    "idpt": (0.1, {"prompt_layer": 11, "cls_type": "all"}),
    "dapt": (0.1, {"rank": 72, "adapter_dropout": 0.0, "prompt_token": "none", "patch_token": "max"}),
    "pointgst": (0.1, {"rank": 36, "local_size": 32}),
    "pointlora": (0.3, {"rank": 8, "mask_loss_weight": 0.004}),
}


@pytest.fixture(scope="module")
def fs_root(tmp_path_factory) -> Path:
    import numpy as np

    from clora3d.data.modelnet import write_fewshot_folds_from_arrays

    rng = np.random.default_rng(0)
    axes = [(1, 1, 1), (1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1), (1, 1, 0.2)]

    def shape(c):
        v = rng.normal(size=(160, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return np.concatenate([v * np.asarray(axes[c]), np.zeros((160, 3))], 1).astype(np.float32)

    def split(n):
        return [shape(c) for c in range(5) for _ in range(n)], np.repeat(np.arange(5), n)

    root = tmp_path_factory.mktemp("fs") / "ModelNetFewshot"
    write_fewshot_folds_from_arrays(split(2), split(1), root, ways=(5,), shots=(2,), folds=1, eval_sample=1, seed=0)
    return root


@pytest.mark.parametrize("name", METHODS)
def test_fewshot_config_follows_the_protocol_and_trains_an_episode(tmp_path, fs_root, name):
    from clora3d.engine.config import compose_config
    from clora3d.engine.fewshot import run_fewshot
    from clora3d.engine.trainer import train

    cfg = compose_config("fewshot", name)
    dp, opts = FEWSHOT_OPTS[name]
    assert cfg["name"] == f"fewshot_{name}" and cfg["peft"]["NAME"] == name
    assert cfg["model"]["drop_path_rate"] == dp and cfg["model"]["cls_dim"] == 40 and cfg["model"]["num_group"] == 64
    assert cfg["scheduler"]["epochs"] == 150 and cfg["data"]["npoints"] == 1024
    assert [t["NAME"] for t in cfg["data"]["train_transforms"]] == ["ScaleAndTranslate"]
    assert cfg["dataset"]["train"]["NAME"] == "ModelNetFewShot"
    for k, v in opts.items():
        assert cfg["peft"][k] == v, k
    cfg = compose_config(
        "fewshot",
        name,
        overrides=[
            f"dataset.train.root={fs_root}",
            f"dataset.test.root={fs_root}",
            "data.npoints=128",
            "train.epochs=1",
            "scheduler.epochs=1",
            "scheduler.warmup_epochs=0",
            "train.batch_size=5",
            "train.num_workers=0",
            f"log.root={tmp_path / 'exp'}",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    cfg["model"] = {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 40, "drop_path_rate": dp}
    if name == "pointlora":
        cfg["peft"]["scales"] = [[64, 16, 8], [32, 32, 4]]
    if name == "idpt":
        cfg["peft"]["prompt_layer"] = -1  # the last block of the 4-block tiny model (11 on ViT-S)
    runs = []

    def counting_train(c, **k):
        runs.append(c)
        return train(c, **k)

    res = run_fewshot(cfg, tmp_path / "fs", ways=[5], shots=[2], folds=[0], train_fn=counting_train, log=lambda m: None)
    assert len(runs) == 1 and runs[0]["peft"]["NAME"] == name
    row = res["summary"]["5way2shot"]
    assert row["n"] == 1 and 0.0 <= row["best_mean"] <= 100.0

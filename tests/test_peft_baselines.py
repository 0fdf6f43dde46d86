"""The point cloud PEFT baselines (issue 14): PointLoRA, DAPT, PointGST, IDPT.

Per method: the trainable count against a formula (and the issue's ViT-S count), behaviour at init,
an adapter round trip, a short training run that lowers the loss, and an independent
re-computation of the method's core operation (plain tensor code written here, not the method's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clora3d.models import PointTransformer
from clora3d.peft import apply_peft, load_adapter

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def tiny(cls_dim: int = 5, **kw) -> PointTransformer:
    torch.manual_seed(0)
    return PointTransformer.from_preset("tiny", cls_dim=cls_dim, drop_path_rate=0.0, **kw)


def clouds(b: int = 3, n: int = 128, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * 2 - 1


def count(method) -> int:
    return sum(p.numel() for p in method.trainable_parameters().values())


def mlp_params(d_in: int, hidden: int, d_out: int) -> int:
    return d_in * hidden + hidden + hidden * d_out + d_out


def head_params(d_in: int, c: int) -> int:
    """Point-MAE head: Linear(d_in, 256) BN Linear(256, 256) BN Linear(256, c)."""
    return (d_in * 256 + 256) + 512 + (256 * 256 + 256) + 512 + (256 * c + c)


def perturb_(method, seed: int = 5, std: float = 0.05) -> None:
    """Move every trainable tensor away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * std)


def separable_batch(n_per_class: int = 8, n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes that differ in shape (a flat disc vs an elongated stick)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_per_class, n, 3, generator=g) * torch.tensor([1.0, 1.0, 0.05])
    b = torch.randn(n_per_class, n, 3, generator=g) * torch.tensor([0.05, 0.05, 1.0])
    return torch.cat([a, b]), torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).long()


def train_steps(model, method, steps: int = 15, lr: float = 3e-3) -> list[float]:
    pts, y = separable_batch(n_per_class=4)
    opt = torch.optim.AdamW(list(method.trainable_parameters().values()), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(pts), y)
        total = loss + method.regularization_loss()
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def adapter_round_trip(tmp_path, cfg: dict, pts: torch.Tensor, cls_dim: int = 5) -> None:
    model = tiny(cls_dim)
    method = apply_peft(model, cfg)
    perturb_(method)
    model.train()
    model(pts)  # BN statistics drift, as in training
    method.regularization_loss()
    model.eval()
    with torch.no_grad():
        want = model(pts)
    path = method.save_adapter(tmp_path / "a.pt")
    fresh = tiny(cls_dim)
    loaded = load_adapter(fresh, path)
    assert loaded.name == cfg["NAME"]
    fresh.eval()
    with torch.no_grad():
        got = fresh(pts)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # remove() gives back the plain backbone: the same outputs as a never-adapted model
    loaded.remove()
    base = tiny(cls_dim).eval()
    fresh.load_state_dict(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(pts), base(pts), rtol=0, atol=0)
    assert set(fresh.state_dict()) == set(base.state_dict())


# ------------------------------------------------------------------------------------------------
# independent reference pieces (plain tensor code)
# ------------------------------------------------------------------------------------------------
def ref_attention(blk, x: torch.Tensor, qkv_extra=None, proj_extra=None, qkv_post=None, proj_post=None) -> torch.Tensor:
    """Multi-head attention written out: softmax(q k^T / sqrt(hd)) v, optional additive extras and
    functions applied to the qkv / proj outputs."""
    B, L, C = x.shape
    H = blk.attn.num_heads
    hd = C // H
    qkv = x @ blk.attn.qkv.weight.T
    if blk.attn.qkv.bias is not None:
        qkv = qkv + blk.attn.qkv.bias
    if qkv_extra is not None:
        qkv = qkv + qkv_extra(x)
    if qkv_post is not None:
        qkv = qkv_post(qkv)
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    out = torch.zeros_like(x)
    for h in range(H):
        s = slice(h * hd, (h + 1) * hd)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / hd**0.5, dim=-1)
        out[..., s] = a @ v[..., s]
    y = out @ blk.attn.proj.weight.T + blk.attn.proj.bias
    if proj_extra is not None:
        y = y + proj_extra(out)
    if proj_post is not None:
        y = proj_post(y)
    return y


def ref_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias


def ln(mod, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def seq_mlp(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Linear -> GELU -> Linear, from the weights."""
    return F.gelu(x @ seq[0].weight.T + seq[0].bias) @ seq[2].weight.T + seq[2].bias


# ================================================================================================
# PointLoRA
# ================================================================================================
TINY_PLORA = {"NAME": "pointlora", "prompt_hidden": 8, "prompt_span": 32, "scales": [[32, 16, 6], [16, 32, 2]]}


def pointlora_count(d: int, depth: int, r: int, hidden: int, enc_first: int, c: int, targets=("qkv", "proj")) -> int:
    out = {"qkv": 3 * d, "proj": d}
    lora = depth * sum(r * (d + out[t]) for t in targets)
    prompts = 2 * mlp_params(d, hidden, d) + sum(mlp_params(d, hidden, out[t]) for t in targets)
    mask = mlp_params(d, d // 2, 1)
    pos = mlp_params(3, 128, d)
    return lora + prompts + mask + enc_first + pos + 2 * d + head_params(2 * d, c)


def test_pointlora_count_vit_s_matches_the_reference():
    torch.manual_seed(0)
    model = PointTransformer.from_preset("vit_s", num_group=128, cls_dim=15)
    method = apply_peft(model, {"NAME": "pointlora"})
    first_conv = (3 * 128 + 128) + 2 * 128 + (128 * 256 + 256)
    assert count(method) == pointlora_count(384, 12, 8, 32, first_conv, 15) == 772_752  # issue: 0.77 M


def test_pointlora_count_formula_tiny():
    model = tiny()
    method = apply_peft(model, TINY_PLORA)
    w0, w1 = 32, 64  # tiny encoder widths
    first_conv = (3 * w0 + w0) + 2 * w0 + (w0 * w1 + w1)
    assert count(method) == pointlora_count(96, 4, 8, 8, first_conv, 5)
    names = set(method.trainable_parameters())
    assert "encoder.first_conv.0.weight" in names and "pos_embed.2.bias" in names
    assert "encoder.second_conv.0.weight" not in names and "blocks.blocks.0.attn.qkv.weight" not in names
    off = apply_peft(tiny(), {**TINY_PLORA, "train_first_conv": False, "train_pos_embed": False})
    assert count(off) == count(method) - first_conv - mlp_params(3, 128, 96)


def pointlora_reference_logits(model, method, pts: torch.Tensor) -> torch.Tensor:
    """PointLoRA's eval forward from the weights: grouping and patch encoder of the backbone, the rest
    (selection, prompts, LoRA, attention, pooling) written out here."""
    mods, cfg = method.mods, method.config
    nb, center = model.group_divider(pts)
    x = torch.cat([model.cls_token.expand(len(pts), -1, -1), model.encoder(nb)], 1)
    pos = torch.cat([model.cls_pos.expand(len(pts), -1, -1), model.pos_embed(center)], 1)
    sel_x, sel_p = [], []
    for G, k, kept in cfg["scales"]:
        from clora3d.models.grouping import Group

        nb2, c2 = Group(G, k)(pts)
        t, pe = model.encoder(nb2), model.pos_embed(c2)
        mp = mods.mask_predictor
        score = torch.sigmoid(F.relu(t @ mp.fc1.weight.T + mp.fc1.bias) @ mp.fc2.weight.T + mp.fc2.bias)[..., 0]
        for b in range(len(pts)):
            order = np.argsort(-score[b].detach().numpy(), kind="stable")[:kept]
            sel_x.append((b, t[b, order]))
            sel_p.append((b, pe[b, order]))
    nsel = sum(s[2] for s in cfg["scales"])
    xs = [torch.cat([x[b]] + [t for bb, t in sel_x if bb == b]) for b in range(len(pts))]
    ps = [torch.cat([pos[b]] + [t for bb, t in sel_p if bb == b]) for b in range(len(pts))]
    x, pos = torch.stack(xs), torch.stack(ps)
    L = x.shape[1]
    span = min(cfg["prompt_span"], L - 1)
    lora = {}
    for name, layer, t in method.sites:
        lora[(name.split(".")[2], t)] = (layer.A, layer.B, mods.prompt_linear[t])
    for i, blk in enumerate(model.blocks.blocks):
        h = x + pos
        h = h.clone()
        h[:, 1 : 1 + span] = h[:, 1 : 1 + span] + seq_mlp(mods.prompt_tokens, h[:, 1 : 1 + span])
        h[:, L - nsel :] = h[:, L - nsel :] + seq_mlp(mods.prompt_selected, h[:, L - nsel :])

        def extra(t, i=i):
            A, B, pm = lora[(str(i), t)]
            return lambda z: z @ A.T @ B.T + seq_mlp(pm, z)

        h = h + ref_attention(blk, ln(blk.norm1, h), qkv_extra=extra("qkv"), proj_extra=extra("proj"))
        x = h + ref_mlp(blk.mlp, ln(blk.norm2, h))
    x = ln(model.norm, x)
    feat = torch.cat([x[:, 0], x[:, 1:].max(1).values], -1)
    return model.cls_head_finetune(feat)


def test_pointlora_forward_matches_independent_recomputation():
    model = tiny()
    method = apply_peft(model, TINY_PLORA)
    perturb_(method, std=0.05)  # non-zero lora_B, prompts, predictor
    model.eval()
    pts = clouds(n=128)
    with torch.no_grad():
        got = model(pts)
        want = pointlora_reference_logits(model, method, pts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_pointlora_sequence_layout_and_mask_loss():
    model = tiny()
    method = apply_peft(model, TINY_PLORA)
    seen = []
    h = model.blocks.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    pts = clouds(n=128)
    model.train()
    model(pts)
    h.remove()
    assert seen[0] == (3, 1 + 32 + 6 + 2, 96)  # cls + G patches + kept tokens of both scales
    # the recorded loss is the reference's formula on the predictor scores, weighted
    reg = method.regularization_loss()
    want = 0.0
    from clora3d.models.grouping import Group

    for (G, k, _), w in zip(TINY_PLORA["scales"], [1.0, 0.25]):
        with torch.no_grad():
            p = method.mods.mask_predictor(model.encoder(Group(G, k)(pts)[0])).double()
        want += w * float(torch.mean(p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6)))
    assert float(reg.detach()) == pytest.approx(0.004 * want, rel=1e-4)
    assert reg.requires_grad
    # popped: a second call without a forward is zero; eval forwards record nothing
    assert float(method.regularization_loss()) == 0.0
    model.eval()
    model(pts)
    assert float(method.regularization_loss()) == 0.0
    # the mask predictor learns only through the mask loss
    model.train()
    model(pts).sum().backward(retain_graph=True)
    assert method.mods.mask_predictor.fc1.weight.grad is None
    method.regularization_loss().backward()
    assert method.mods.mask_predictor.fc1.weight.grad.abs().sum() > 0


def test_pointlora_init_lora_is_zero_and_prompts_act():
    """At init lora_B = 0: the LoRA part adds nothing, the prompt branches (trunc-normal) do."""
    model = tiny()
    method = apply_peft(model, TINY_PLORA)
    assert not method.starts_at_base
    for _, layer, _ in method.sites:
        assert torch.count_nonzero(layer.B) == 0
    x = torch.randn(2, 7, 96)
    lin = model.blocks.blocks[1].attn.qkv
    want = x @ lin.weight.T + seq_mlp(method.mods.prompt_linear["qkv"], x)
    torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-6)


def test_pointlora_adapter_round_trip(tmp_path):
    adapter_round_trip(tmp_path, TINY_PLORA, clouds(n=128))


def test_pointlora_short_training_lowers_loss():
    model = tiny(cls_dim=2)
    method = apply_peft(model, TINY_PLORA)
    losses = train_steps(model, method)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_pointlora_config_errors():
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError, match="scales"):
        apply_peft(tiny(), {**TINY_PLORA, "scales": [[32, 16]]})
    with pytest.raises(ConfigError, match="keep more tokens"):
        apply_peft(tiny(), {**TINY_PLORA, "scales": [[8, 16, 9]], "scale_weights": [1.0]})
    with pytest.raises(ConfigError, match="one weight per scale"):
        apply_peft(tiny(), {**TINY_PLORA, "scale_weights": [1.0]})
    with pytest.raises(ConfigError, match="targets"):
        apply_peft(tiny(), {**TINY_PLORA, "targets": ["fc1"]})


# ================================================================================================
# DAPT
# ================================================================================================
TINY_DAPT = {"NAME": "dapt", "rank": 8}


def dapt_count(d: int, depth: int, hidden: int, r: int, parts: int, c: int) -> int:
    adapter = 2 * d + (d + 1) + (d * r + r) + (r * d + d)
    ssf = 2 * (d + 3 * d + d + d + hidden + d + d)  # norm1 qkv proj norm2 fc1 fc2 prompt
    return depth * (adapter + ssf) + 2 * 2 * d + 2 * d + head_params(parts * d, c)


def test_dapt_count_vit_s_matches_the_reference():
    torch.manual_seed(0)
    scan = apply_peft(PointTransformer.from_preset("vit_s", num_group=128, cls_dim=15), {"NAME": "dapt"})
    assert count(scan) == dapt_count(384, 12, 1536, 64, 3, 15) == 1_087_771  # issue: 1.09 M
    mn = apply_peft(
        PointTransformer.from_preset("vit_s", num_group=64, cls_dim=40),
        {"NAME": "dapt", "rank": 72, "prompt_token": "none"},
    )
    assert count(mn) == dapt_count(384, 12, 1536, 72, 2, 40) == 1_069_716  # reference ModelNet count


def test_dapt_count_formula_tiny_and_head_width():
    for cfg, parts in [({}, 3), ({"prompt_token": "none"}, 2), ({"patch_token": "none", "class_token": False}, 1)]:
        model = tiny()
        method = apply_peft(model, {**TINY_DAPT, **cfg})
        assert count(method) == dapt_count(96, 4, 384, 8, parts, 5), cfg
        assert model.cls_head_finetune[0].in_features == parts * 96
        method.remove()
        assert model.cls_head_finetune[0].in_features == 2 * 96 and type(model.pool).__name__ == "ClsMaxPool"


def dapt_reference_logits(model, method, pts: torch.Tensor) -> torch.Tensor:
    """DAPT's eval forward from the weights: grouping and patch encoder of the backbone (``.forward``
    skips the method's hooks), everything else written out here."""
    mods, cfg = method.mods, method.config

    def ssf(x, m):
        return x * m.gamma + m.beta

    def adapter(a, ad):
        z = ln(ad.norm, a)
        s = F.relu(z @ ad.scale.weight.T + ad.scale.bias)
        return (F.gelu(z @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias) * s

    nb, center = model.group_divider(pts)
    B = len(pts)
    x = torch.cat([model.cls_token.expand(B, -1, -1), ssf(model.encoder.forward(nb), mods.embed_ssf)], 1)
    x = x + torch.cat([model.cls_pos.expand(B, -1, -1), model.pos_embed(center)], 1)  # once
    for blk, mb in zip(model.blocks.blocks, mods.blocks):
        x = x + ref_attention(
            blk,
            ssf(ln(blk.norm1, x), mb.ssf["norm1"]),
            qkv_post=lambda q, mb=mb: ssf(q, mb.ssf["qkv"]),
            proj_post=lambda y, mb=mb: ssf(y, mb.ssf["proj"]),
        )
        a = ssf(ln(blk.norm2, x), mb.ssf["norm2"])
        f1 = ssf(a @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias, mb.ssf["fc1"])
        mlp = ssf(F.gelu(f1) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias, mb.ssf["fc2"])
        ad = adapter(a, mb.adapter)
        x = x + mlp + ad
        prompt = ssf(F.gelu(ad).mean(1, keepdim=True), mb.prompt_ssf)
        x = torch.cat([x[:, :1], prompt, x[:, 1:]], 1)
    x = ssf(ln(model.norm, x), mods.final_ssf)
    G = model.num_group
    parts = [x[:, 0]] if cfg["class_token"] else []
    if cfg["prompt_token"] != "none":
        pr = x[:, 1 : x.shape[1] - G]
        parts.append(pr.mean(1) if cfg["prompt_token"] == "mean" else pr.max(1).values)
    if cfg["patch_token"] != "none":
        pa = x[:, x.shape[1] - G :]
        parts.append(pa.max(1).values if cfg["patch_token"] == "max" else pa.mean(1))
    return model.cls_head_finetune(torch.cat(parts, -1))


@pytest.mark.parametrize("cfg", [{}, {"prompt_token": "max", "patch_token": "mean"}])
def test_dapt_forward_matches_independent_recomputation(cfg):
    model = tiny()
    method = apply_peft(model, {**TINY_DAPT, **cfg})
    perturb_(method, std=0.05)  # non-zero adapter up-projection
    model.eval()
    pts = clouds(n=128)
    with torch.no_grad():
        got = model(pts)
        want = dapt_reference_logits(model, method, pts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dapt_init_and_sequence_growth():
    model = tiny()
    method = apply_peft(model, TINY_DAPT)
    assert not method.starts_at_base and not model.blocks.pos_every_block
    a = torch.randn(2, 9, 96)
    for mb in method.mods.blocks:  # up = 0: the adapter adds nothing at step 0
        assert torch.count_nonzero(mb.adapter(a)) == 0
    g = torch.cat([p.detach() for n, p in method.trainable_parameters().items() if n.endswith(".gamma")])
    b = torch.cat([p.detach() for n, p in method.trainable_parameters().items() if n.endswith(".beta")])
    assert abs(float(g.mean()) - 1) < 0.01 and 0.01 < float(g.std()) < 0.03 and abs(float(b.mean())) < 0.01
    seen = []
    h = model.norm.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    model.eval()
    with torch.no_grad():
        model(clouds(n=128))
    h.remove()
    assert seen == [(3, 1 + 4 + 32, 96)]  # cls + one prompt per block + G patches
    method.remove()
    assert model.blocks.pos_every_block


def test_dapt_adapter_round_trip(tmp_path):
    adapter_round_trip(tmp_path, TINY_DAPT, clouds(n=128))


def test_dapt_short_training_lowers_loss():
    model = tiny(cls_dim=2)
    method = apply_peft(model, TINY_DAPT)
    losses = train_steps(model, method)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_dapt_config_errors():
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt_token"):
        apply_peft(tiny(), {**TINY_DAPT, "prompt_token": "sum"})
    with pytest.raises(ConfigError, match="head input is empty"):
        apply_peft(tiny(), {**TINY_DAPT, "class_token": False, "prompt_token": "none", "patch_token": "none"})
    with pytest.raises(ConfigError, match="adapter_dropout"):
        apply_peft(tiny(), {**TINY_DAPT, "adapter_dropout": 1.5})


# ================================================================================================
# PointGST
# ================================================================================================
TINY_GST = {"NAME": "pointgst", "rank": 12, "local_size": 8}


def pointgst_count(d: int, depth: int, r: int, c: int) -> int:
    pcsa = (d * r + r) + (r * d + d) + (r * r + r) + 2 * (2 * r)
    return depth * pcsa + 2 * d + head_params(2 * d, c)


def test_pointgst_count_vit_s_matches_the_reference():
    torch.manual_seed(0)
    method = apply_peft(PointTransformer.from_preset("vit_s", num_group=128, cls_dim=15), {"NAME": "pointgst"})
    assert count(method) == pointgst_count(384, 12, 36, 15) == 622_831  # issue: 0.62 M


def test_pointgst_count_formula_tiny_and_config_errors():
    from clora3d.errors import ConfigError

    assert count(apply_peft(tiny(), TINY_GST)) == pointgst_count(96, 4, 12, 5)
    with pytest.raises(ConfigError, match="local_size=12 must divide"):
        apply_peft(tiny(), {**TINY_GST, "local_size": 12})


def np_morton(c: np.ndarray) -> list[int]:
    """Bit-by-bit Morton keys with Python ints: trunc(100 c) as 16-bit two's complement, (y, x, z)."""
    out = []
    for x, y, z in c:
        q = [int(np.trunc(v * np.float32(100))) & 0xFFFF for v in (y, x, z)]
        key = 0
        for i in range(16):
            for j, v in enumerate(q):
                key |= ((v >> i) & 1) << (3 * i + 2 - j)
        out.append(key)
    return out


def np_basis(c: np.ndarray, d_min: float) -> np.ndarray:
    """Dense eigendecomposition (float64) of I - D^-1/2 W D^-1/2, W = 1 / (dist / d_min + I), with the
    sign convention 'largest-magnitude entry positive'."""
    n = len(c)
    dist = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    w = 1.0 / (dist / d_min + np.eye(n))
    dinv = 1.0 / np.sqrt(w.sum(1) + 1e-6)
    lap = np.eye(n) - dinv[:, None] * w * dinv[None, :]
    _, u = np.linalg.eigh(lap)
    k = np.abs(u).argmax(0)
    return u * np.sign(u[k, np.arange(n)])


def test_pointgst_zorder_and_bases_match_dense_numpy():
    from clora3d.peft.pointgst import graph_basis, zorder_keys

    g = torch.Generator().manual_seed(3)
    center = torch.rand(2, 40, 3, generator=g) * 2 - 1  # > 25 points: torch.cdist's matmul path
    keys = zorder_keys(center)
    for b in range(2):
        assert keys[b].tolist() == np_morton(center[b].numpy())
    c = center.double().numpy()
    dd = np.sqrt(((c[:, :, None] - c[:, None]) ** 2).sum(-1))
    d_min = dd[dd > 0].min()  # over the whole batch, as the reference
    U = graph_basis(center)
    for b in range(2):
        want = np_basis(c[b], d_min)
        np.testing.assert_allclose(U[b].double().numpy(), want, atol=2e-4)
        np.testing.assert_allclose(U[b].T.double() @ U[b].double(), np.eye(40), atol=1e-5)


def pointgst_reference_logits(model, method, pts: torch.Tensor) -> torch.Tensor:
    """PointGST's eval forward: grouping and patch encoder of the backbone, the bases from numpy (dense
    eigh, Python Morton keys), the blocks and PCSA written out here."""
    cfg = method.config
    nb, center = model.group_divider.forward(pts)
    B, G, _ = center.shape
    s = cfg["local_size"]
    c = center.double().numpy()
    dd = np.sqrt(((c[:, :, None] - c[:, None]) ** 2).sum(-1))
    U = torch.tensor(np.stack([np_basis(c[b], dd[dd > 0].min()) for b in range(B)]), dtype=torch.float32)
    order = [np.argsort(np.array(np_morton(center[b].numpy()), dtype=np.int64), kind="stable") for b in range(B)]
    sub = np.stack([c[b][order[b]] for b in range(B)]).reshape(B, G // s, s, 3)
    ds = np.sqrt(((sub[..., :, None, :] - sub[..., None, :, :]) ** 2).sum(-1))
    dmin_l = ds[ds > 0].min()
    subU = torch.tensor(
        np.stack([[np_basis(sub[b, k], dmin_l) for k in range(G // s)] for b in range(B)]), dtype=torch.float32
    )
    x = torch.cat([model.cls_token.expand(B, -1, -1), model.encoder(nb)], 1)
    pos = torch.cat([model.cls_pos.expand(B, -1, -1), model.pos_embed(center)], 1)
    for i, blk in enumerate(model.blocks.blocks):
        x = x + pos
        x = x + ref_attention(blk, ln(blk.norm1, x))
        m = method.adapters[str(i)]
        h = x @ m.down.weight.T + m.down.bias
        p = h[:, -G:]

        def spec(cf, norm, m=m):
            return cf + F.silu(ln(norm, cf) @ m.adapt.weight.T + m.adapt.bias)

        glob = U.transpose(1, 2) @ spec(U @ p, m.norm_global)
        loc = torch.zeros_like(p)
        for b in range(B):
            q = p[b][order[b]].reshape(G // s, s, -1)
            q = subU[b].transpose(1, 2) @ spec(subU[b] @ q, m.norm_local)
            loc[b, order[b]] = q.reshape(G, -1)
        a = F.silu(h).clone()
        a[:, -G:] = a[:, -G:] + glob + loc
        t = (a @ m.up.weight.T + m.up.bias) * m.scale
        x = x + ref_mlp(blk.mlp, ln(blk.norm2, x)) + t
    x = ln(model.norm, x)
    return model.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(1).values], -1))


def test_pointgst_forward_matches_independent_recomputation():
    model = tiny()
    method = apply_peft(model, TINY_GST)
    perturb_(method, std=0.1)  # non-zero adapt and up
    model.eval()
    pts = clouds(n=128)
    with torch.no_grad():
        got = model(pts)
        want = pointgst_reference_logits(model, method, pts)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_pointgst_starts_at_the_base_model():
    model = tiny().eval()
    pts = clouds(n=128)
    with torch.no_grad():
        base = model(pts)
    method = apply_peft(model, TINY_GST)
    assert method.starts_at_base and not method.mergeable
    with torch.no_grad():
        torch.testing.assert_close(model(pts), base, rtol=0, atol=0)


def test_pointgst_adapter_round_trip(tmp_path):
    adapter_round_trip(tmp_path, TINY_GST, clouds(n=128))


def test_pointgst_short_training_lowers_loss():
    model = tiny(cls_dim=2)
    method = apply_peft(model, TINY_GST)
    losses = train_steps(model, method)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


# ================================================================================================
# IDPT
# ================================================================================================
TINY_IDPT = {"NAME": "idpt", "prompt_layer": 2, "k": 8}


def idpt_count(d: int, parts: int, c: int) -> int:
    generator = 3 * (2 * d * d + 2 * d) + (3 * d * d + 2 * d)  # 3 EdgeConvs + Conv1d, BN weight/bias
    return generator + 2 * d + head_params(parts * d, c)


def test_idpt_count_vit_s_matches_the_reference():
    torch.manual_seed(0)
    method = apply_peft(PointTransformer.from_preset("vit_s", num_group=128, cls_dim=15), {"NAME": "idpt"})
    assert count(method) == idpt_count(384, 3, 15) == 1_696_783  # issue: 1.70 M


@pytest.mark.parametrize("cls_type,parts", [("all", 3), ("promptonly", 1), ("promptcls", 2), ("pointcls", 2)])
def test_idpt_count_formula_tiny(cls_type, parts):
    model = tiny()
    method = apply_peft(model, {**TINY_IDPT, "cls_type": cls_type})
    assert count(method) == idpt_count(96, parts, 5)
    assert "peft.prompt_pos" not in method.trainable_parameters()  # the reference never trains it
    assert "peft.prompt_pos" in method.adapter_state_dict()  # but it is random: saved
    trained = apply_peft(tiny(), {**TINY_IDPT, "cls_type": cls_type, "train_prompt_pos": True})
    assert count(trained) == count(method) + 96


def bn_eval(bn, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm with running statistics over channel dim 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def ref_generator(gen, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """DGCNN prompt of ``tokens (B, G, d)`` written out: per token its k nearest (argsort of squared
    distances), edge features, 1x1 convs as matrix products, BN with running stats, LeakyReLU, max."""

    def edge(x, conv):  # x (B, G, C) -> (B, G, C_out)
        d2 = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
        idx = torch.argsort(d2, dim=-1, stable=True)[..., :k]
        nb = torch.stack([x[b][idx[b]] for b in range(len(x))])  # (B, G, k, C)
        ctr = x[:, :, None].expand_as(nb)
        e = torch.cat([nb - ctr, ctr], -1) @ conv[0].weight[:, :, 0, 0].T  # (B, G, k, C_out)
        e = F.leaky_relu(bn_eval(conv[1], e.permute(0, 3, 1, 2)), 0.2)
        return e.max(-1).values.transpose(1, 2)

    x1 = edge(tokens, gen.conv1)
    x2 = edge(x1, gen.conv2)
    x3 = edge(x2, gen.conv3)
    y = torch.cat([x1, x2, x3], -1) @ gen.conv5[0].weight[:, :, 0].T
    y = F.leaky_relu(bn_eval(gen.conv5[1], y.transpose(1, 2)), 0.2)
    return y.max(-1).values[:, None]


def idpt_reference_logits(model, method, pts: torch.Tensor) -> torch.Tensor:
    cfg, mods = method.config, method.mods
    nb, center = model.group_divider(pts)
    B = len(pts)
    G = center.shape[1]
    x = torch.cat([model.cls_token.expand(B, -1, -1), model.encoder(nb)], 1)
    pos = torch.cat([model.cls_pos.expand(B, -1, -1), model.pos_embed(center)], 1)
    for i, blk in enumerate(model.blocks.blocks):
        if i == cfg["prompt_layer"]:
            prompt = ref_generator(mods.generator, x[:, -G:], cfg["k"])
            x = torch.cat([x[:, :1], prompt, x[:, 1:]], 1)
            pos = torch.cat([pos[:, :1], mods.prompt_pos.expand(B, -1, -1), pos[:, 1:]], 1)
        x = x + pos
        x = x + ref_attention(blk, ln(blk.norm1, x))
        x = x + ref_mlp(blk.mlp, ln(blk.norm2, x))
    x = ln(model.norm, x)
    t = cfg["cls_type"]
    feats = {
        "all": [x[:, 0], x[:, 1], x[:, 2:].max(1).values],
        "promptonly": [x[:, 1]],
        "promptcls": [x[:, 0], x[:, 1]],
        "pointcls": [x[:, 0], x[:, 2:].max(1).values],
    }[t]
    return model.cls_head_finetune(torch.cat(feats, -1))


@pytest.mark.parametrize("cfg", [{}, {"prompt_layer": 0, "cls_type": "promptonly"}, {"cls_type": "pointcls"}])
def test_idpt_forward_matches_independent_recomputation(cfg):
    model = tiny()
    method = apply_peft(model, {**TINY_IDPT, **cfg})
    perturb_(method, std=0.05)
    model.train()
    with torch.no_grad():
        model(clouds(n=128, seed=7))  # BN running statistics away from 0 / 1
    model.eval()
    pts = clouds(n=128)
    with torch.no_grad():
        got = model(pts)
        want = idpt_reference_logits(model, method, pts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_idpt_sequence_layout_and_prompt_pos_is_fixed():
    model = tiny()
    method = apply_peft(model, TINY_IDPT)
    assert not method.starts_at_base and not model.blocks.pos_every_block
    lengths = []
    hooks = [b.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1])) for b in model.blocks.blocks]
    before = method.mods.prompt_pos.clone()
    losses = train_steps(model, method, steps=2)
    for h in hooks:
        h.remove()
    assert lengths[:4] == [1 + 32, 1 + 32, 2 + 32, 2 + 32]  # the prompt enters at block 2
    assert torch.equal(method.mods.prompt_pos, before) and len(losses) == 2
    method.remove()
    assert model.blocks.pos_every_block and model.cls_head_finetune[0].in_features == 192


def test_idpt_adapter_round_trip(tmp_path):
    adapter_round_trip(tmp_path, TINY_IDPT, clouds(n=128))


def test_idpt_short_training_lowers_loss():
    model = tiny(cls_dim=2)
    method = apply_peft(model, TINY_IDPT)
    losses = train_steps(model, method)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_idpt_thop_macs_count_the_edgeconvs():
    """thop MACs of IDPT minus the plain backbone's, by formula: the generator (3 EdgeConv Conv2d over
    G x k edges + Conv1d over G tokens), one extra token through the blocks from the prompt layer on
    (12 d^2 linear MACs per token and block, attention 2 (L'^2 - L^2) d) and the wider head input."""
    from clora3d.profile.flops import thop_macs

    d, G, k, depth, layer = 96, 32, 8, 4, 2
    model = tiny().eval()
    pts = clouds(b=1, n=128)
    base = thop_macs(model, pts)
    apply_peft(model, {**TINY_IDPT, "prompt_layer": layer, "k": k})
    got = thop_macs(model, pts)
    blocks = depth - layer
    want_lin = 3 * G * k * 2 * d * d + G * 3 * d * d + blocks * 12 * d * d + d * 256
    want_attn = blocks * 2 * ((G + 2) ** 2 - (G + 1) ** 2) * d
    assert got["linear_conv"] - base["linear_conv"] == want_lin
    assert got["attention"] - base["attention"] == want_attn


def test_idpt_default_layer_is_the_last_block():
    method = apply_peft(tiny(), {"NAME": "idpt", "k": 8})
    assert method.layer == 3 and method.config["prompt_layer"] == -1
    assert apply_peft(tiny(), {"NAME": "idpt", "k": 8, "prompt_layer": -4}).layer == 0


def test_idpt_config_errors():
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError, match="cls_type"):
        apply_peft(tiny(), {**TINY_IDPT, "cls_type": "mean"})
    with pytest.raises(ConfigError, match="prompt_layer 4 out of range"):
        apply_peft(tiny(), {**TINY_IDPT, "prompt_layer": 4})
    with pytest.raises(ConfigError, match="prompt_layer -5 out of range"):
        apply_peft(tiny(), {**TINY_IDPT, "prompt_layer": -5})
    with pytest.raises(ConfigError, match="k=40 exceeds"):
        apply_peft(tiny(), {**TINY_IDPT, "k": 40})


# ------------------------------------------------------------------------------------------------
# configs and the trainer
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mn_root(tmp_path_factory) -> Path:
    from clora3d.data.synthetic import write_modelnet40

    root = tmp_path_factory.mktemp("syn") / "modelnet40_normal_resampled"
    write_modelnet40(root, num_classes=4, n_train=16, n_test=8, n_points=1100, seed=0)
    return root


def cpu_run(tmp_path, mn_root, cfg_file: str, epochs: int = 6) -> dict:
    from clora3d.engine.config import load_config
    from clora3d.engine.trainer import train

    cfg = load_config(
        REPO / "cfgs" / "cpu" / cfg_file,
        [
            f"dataset.train.root={mn_root}",
            f"dataset.test.root={mn_root}",
            "model.cls_dim=4",
            f"train.epochs={epochs}",
            f"scheduler.epochs={epochs}",
            "scheduler.warmup_epochs=0",
            "train.batch_size=8",
            "data.npoints=128",
            "data.point_all=160",
            f"log.root={tmp_path / 'exp'}",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    return train(cfg, run_dir=tmp_path / "run")


PROTOCOL = {  # method: (ScanObjectNN augmentation, drop path per task, peft options per task)
    "pointlora": (
        "ScaleAndTranslate",
        {t: 0.3 for t in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest")},
        {},
    ),
    # DAPT's repository files (per task): rank, adapter dropout, head pooling
    "dapt": (
        "ScaleAndTranslate",
        {"modelnet40": 0.1, "scan_objonly": 0.1, "scan_objbg": 0.3, "scan_hardest": 0.3},
        {
            "modelnet40": {"rank": 72, "adapter_dropout": 0.0, "prompt_token": "none", "patch_token": "max"},
            "scan_objonly": {"rank": 64, "adapter_dropout": 0.0, "prompt_token": "mean", "patch_token": "none"},
            "scan_objbg": {"rank": 64, "adapter_dropout": 0.5, "prompt_token": "mean", "patch_token": "max"},
            "scan_hardest": {"rank": 64, "adapter_dropout": 0.2, "prompt_token": "mean", "patch_token": "max"},
        },
    ),
    # PointGST's cfgs/mae/finetune_*_pgst.yaml at 7fbe92f: rank 36, local 32, drop path 0.1 everywhere
    "pointgst": (
        "ScaleAndTranslate",
        {t: 0.1 for t in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest")},
        {t: {"rank": 36, "local_size": 32} for t in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest")},
    ),
    # IDPT's cfgs/finetune_*_idpt.yaml: drop path 0.1, prompt layer 11 (6 OBJ_ONLY), cls_type all (promptonly OBJ_BG);
    # ScanObjectNN here with S&T for side-by-side tables, IDPT's rotation protocol in scan_*_rotate/ (below)
    "idpt": (
        "ScaleAndTranslate",
        {t: 0.1 for t in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest")},
        {
            "modelnet40": {"prompt_layer": 11, "cls_type": "all"},
            "scan_objbg": {"prompt_layer": 11, "cls_type": "promptonly"},
            "scan_objonly": {"prompt_layer": 6, "cls_type": "all"},
            "scan_hardest": {"prompt_layer": 11, "cls_type": "all"},
        },
    ),
}


@pytest.mark.parametrize("method", sorted(PROTOCOL))
def test_task_configs_follow_the_reference_protocol(method):
    from clora3d.engine.config import compose_config

    aug, dps, opts = PROTOCOL[method]
    for task in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest"):
        cfg = compose_config(task, method)  # cfgs/<task>/<method>.yaml where the pair keeps a file
        assert cfg["peft"]["NAME"] == method and cfg["name"] == f"{task}_{method}"
        assert cfg["model"]["drop_path_rate"] == dps[task], task
        for k, v in opts.get(task, {}).items():
            assert cfg["peft"][k] == v, (task, k)
        assert [t["NAME"] for t in cfg["data"]["train_transforms"]] == [aug]
        from clora3d.engine.trainer import _build_model

        torch.manual_seed(0)
        apply_peft(_build_model(cfg["model"]), dict(cfg["peft"]))


EXTRA_LOSS = {"modelnet_pointlora.yaml"}


def test_idpt_rotation_and_fewshot_configs():
    from clora3d.engine.config import compose_config, load_config

    for v in ("objbg", "objonly", "hardest"):
        rot = compose_config(f"scan_{v}", "idpt", protocol="rotate")
        st = compose_config(f"scan_{v}", "idpt")
        assert [t["NAME"] for t in rot["data"]["train_transforms"]] == ["RotateY"]
        assert rot["peft"] == st["peft"] and rot["name"] == f"scan_{v}_rotate_idpt"
    fs = load_config(REPO / "cfgs" / "fewshot" / "idpt.yaml")
    assert fs["peft"]["prompt_layer"] == 11 and fs["peft"]["cls_type"] == "all" and fs["model"]["cls_dim"] == 40


@pytest.mark.parametrize(
    "cfg_file", ["modelnet_pointlora.yaml", "modelnet_dapt.yaml", "modelnet_pointgst.yaml", "modelnet_idpt.yaml"]
)
def test_trains_end_to_end_from_cpu_config(tmp_path, mn_root, cfg_file):
    res = cpu_run(tmp_path, mn_root, cfg_file)
    h = res["history"]
    assert h[-1]["train"]["loss"] < h[0]["train"]["loss"], h
    # 4 balanced classes: the last epoch fits the training shapes at twice chance or better (70-80%
    # on torch 2.14, 62.5% for DAPT on 2.5.1). The held-out accuracy of 6 epochs from scratch on 32
    # shapes is not a learning signal: every method sits at exactly 25% for 2-5 epochs, then jumps.
    assert h[-1]["train"]["acc"] >= 50.0, h
    if cfg_file in EXTRA_LOSS:  # the method's per-forward loss reached the trainer's total
        assert all(x["train"]["reg_loss"] != 0.0 for x in h), h

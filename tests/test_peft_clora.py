"""CLoRA specifics against independent references: SADE brute force, counts by formula, CLoRA#,
the pre_proj update written out, FLOPs after merge."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.step_ops import CountOps  # how many times each aten op is dispatched
from clora3d.errors import ConfigError
from clora3d.models import PointTransformer
from clora3d.peft import apply_peft
from clora3d.peft.clora import CLoRASpaces, sade_total
from clora3d.profile import count_flops

D, DEPTH, HEADS = 96, 4, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base() -> PointTransformer:
    torch.manual_seed(0)
    return PointTransformer.from_preset("tiny", cls_dim=5).eval()


@pytest.fixture(scope="module")
def pts() -> torch.Tensor:
    return torch.rand(2, 128, 3, generator=torch.Generator().manual_seed(1))


def randomize(method, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in method.peft_params.values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def head_count(model) -> int:
    return sum(p.numel() for p in model.cls_head_finetune.parameters())


# -- SADE against brute force ----------------------------------------------------------------------
def lrm_sade(D: torch.Tensor, U: torch.Tensor, Q: torch.Tensor, normalize: bool, eps: float) -> torch.Tensor:
    """One LRM's SADE from its materialised d x d components M_h = D_h Q_h U_h (differentiable)."""
    M = [D[h] @ Q[h] @ U[h] for h in range(D.shape[0])]
    total = torch.zeros((), dtype=torch.float64)
    for a in range(len(M)):
        for b in range(a + 1, len(M)):
            val = torch.linalg.matrix_norm(M[a].T @ M[b]) ** 2
            if normalize:
                val = val / (torch.linalg.matrix_norm(M[a]) ** 2 * torch.linalg.matrix_norm(M[b]) ** 2 + eps)
            total = total + val
    return total


def brute_sets(sets, normalize: bool, eps: float) -> torch.Tensor:
    """SADE of CLoRASpaces sets, every LRM's components materialised (autograd flows through)."""
    return sum(
        (lrm_sade(sp.D, sp.U, sp.Q[0 if sp.shared_q else j], normalize, eps) for sp in sets for j in range(sp.num_lrm)),
        torch.zeros((), dtype=torch.float64),
    )


def brute_sade(method, normalize: bool, eps: float) -> torch.Tensor:
    """The method's SADE in float64, LRM by LRM."""
    total = torch.zeros((), dtype=torch.float64)
    for _, _, key, j in method.lrms:
        sp = method.spaces[key]
        Q = sp.Q.detach().double()[0 if sp.shared_q else j]
        total = total + lrm_sade(sp.D.detach().double(), sp.U.detach().double(), Q, normalize, eps)
    return total


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"sade_normalize": True},
        {"placement": "parallel", "targets": ["qkv", "proj", "fc1"], "num_spaces": 3, "rank": 5},
        {"shared_q": True, "sade_normalize": True, "num_spaces": 3},
        {"init": "xavier", "num_spaces": 5, "rank": 3},
    ],
)
def test_sade_equals_brute_force(base, extra):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora", "sade_lambda": 0.5, **extra})
    randomize(method)
    got = method.regularization_loss()
    ref = 0.5 * brute_sade(method, method.config["sade_normalize"], method.config["sade_eps"])
    assert ref > 0
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=0)


def test_sade_total_stacks_sets_of_any_shape_and_count():
    """sade_total batches sets with equal (p, r, number of Q, LRM weight): sets of other sizes, a
    p = 1 set (no pairs) and CLoRA# sets (every LRM counted) must each count exactly once."""
    torch.manual_seed(0)
    shapes = [(12, 20, 3, 3, 4, False), (12, 7, 3, 3, 4, False), (9, 9, 3, 3, 2, False), (12, 5, 2, 1, 3, False)]
    shapes += [(6, 8, 2, 2, 5, True), (6, 3, 2, 2, 1, True), (6, 3, 2, 2, 1, False)]
    sets = [CLoRASpaces(d_in, d_out, r, p, m, sq, None, "xavier") for d_in, d_out, r, p, m, sq in shapes]
    for sp in sets:
        with torch.no_grad():
            sp.Q.normal_()
    for normalize in (False, True):
        want = brute_sets([copy.deepcopy(sp).double().requires_grad_(False) for sp in sets], normalize, 1e-12)
        got = sade_total(sets, normalize, 1e-12)
        assert want > 0
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=0)
        # each subset: one group, two groups (different numbers of Q), and all of them
        for subset in (sets[:1], sets[:3], sets):
            want_sub = sum(sp.sade(normalize, 1e-12) for sp in subset)
            assert torch.allclose(sade_total(subset, normalize, 1e-12), want_sub, rtol=1e-5, atol=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_sade_backward_equals_autograd_of_brute_force(normalize):
    """The written-out backward of the batched SADE (_SadeBlocks) against autograd through the
    materialised components, float64: single sets, stacked sets of other d_out, CLoRA# sets with
    different LRM counts, a p = 1 set (no gradient), and a scale."""
    torch.manual_seed(0)
    shapes = [(12, 20, 3, 3, 4, False), (12, 7, 3, 3, 4, False), (9, 9, 3, 3, 2, False), (12, 5, 2, 1, 3, False)]
    shapes += [(6, 8, 2, 2, 5, True), (6, 3, 2, 2, 1, True), (6, 3, 2, 2, 3, True), (6, 3, 2, 2, 1, False)]
    sets = [CLoRASpaces(d_in, d_out, r, p, m, sq, None, "xavier").double() for d_in, d_out, r, p, m, sq in shapes]
    for sp in sets:
        with torch.no_grad():
            sp.Q.normal_()
    for subset in (sets[:1], sets[:3], sets[4:7], sets):
        params = [t for sp in subset for t in (sp.D, sp.U, sp.Q)]
        got = torch.autograd.grad(sade_total(subset, normalize, 1e-12, 0.7), params, allow_unused=True)
        want = torch.autograd.grad(0.7 * brute_sets(subset, normalize, 1e-12), params, allow_unused=True)
        for g, w in zip(got, want):
            if w is None:  # a p = 1 set: no pairs, no gradient
                assert g is None or not g.any()
                continue
            assert w.abs().max() > 0
            assert torch.allclose(g, w, rtol=1e-9, atol=1e-12 * w.abs().max().item())
    params = [t for sp in sets[:3] for t in (sp.D, sp.U, sp.Q)]
    assert torch.autograd.gradcheck(lambda *_: sade_total(sets[:3], normalize, 1e-12), params)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_sade_is_float32_under_autocast(device):
    """Under bfloat16 autocast the SADE term is still computed in the spaces' dtype (same value)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    sp = CLoRASpaces(16, 16, 4, 3, 4, False, None, "xavier").to(device)
    with torch.no_grad():
        sp.Q.normal_()
    want = sade_total([sp], True, 1e-12)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = sade_total([sp], True, 1e-12)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_sade_of_bfloat16_spaces_and_its_scale():
    """Spaces in bfloat16 (a model cast as a whole) keep one dtype throughout; ``scale`` multiplies
    the whole term (2.0 included, the value a mutant's ``!= 2.0`` would skip)."""
    torch.manual_seed(0)
    sp = CLoRASpaces(16, 16, 4, 3, 4, False, None, "xavier")
    with torch.no_grad():
        sp.Q.normal_()
    want = brute_sets([copy.deepcopy(sp).double()], True, 1e-12)
    got = sade_total([sp.to(torch.bfloat16)], True, 1e-12)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), want, rtol=0.05)
    sp = sp.double()
    one = sade_total([sp], False, 1e-12)
    for scale in (2.0, 0.5):
        assert torch.allclose(sade_total([sp], False, 1e-12, scale), scale * one, rtol=1e-12)


def test_sade_off_p1_and_gradient(base):
    off = apply_peft(copy.deepcopy(base), {"NAME": "clora", "sade": False})
    randomize(off)
    assert off.regularization_loss().item() == 0.0
    p1 = apply_peft(copy.deepcopy(base), {"NAME": "clora", "num_spaces": 1})
    randomize(p1)
    assert p1.regularization_loss().item() == 0.0  # no pairs of spaces
    m = apply_peft(copy.deepcopy(base), {"NAME": "clora"})
    randomize(m)
    m.regularization_loss().backward()
    sp = m.spaces["s96x96"]
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (sp.D, sp.U, sp.Q))


# -- parameter counts by formula -------------------------------------------------------------------
@pytest.mark.parametrize("r,p,bias", [(8, 4, False), (4, 2, True), (8, 1, False)])
def test_pre_proj_count_formula(base, r, p, bias):
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", "rank": r, "num_spaces": p, "bias": bias})
    m = 2 * DEPTH
    expected = p * (2 * D * r + m * r * r) + (m * D if bias else 0) + head_count(model) + 2 * D
    assert sum(t.numel() for t in method.trainable_parameters().values()) == expected
    assert len(method.lrms) == m


def test_parallel_and_shared_counts(base):
    r, p = 4, 3
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", "placement": "parallel", "rank": r, "num_spaces": p})
    # qkv: D 96 x r, U r x 288 (one set for the 4 qkv); proj: 96 x r / r x 96 (one set for the 4 proj)
    expected = p * (D * r + r * 3 * D) + DEPTH * p * r * r + p * (D * r + r * D) + DEPTH * p * r * r
    assert sum(t.numel() for t in method.peft_params.values()) == expected
    assert set(method.spaces) == {"s96x288", "s96x96"}
    shared = apply_peft(copy.deepcopy(base), {"NAME": "clora", "shared_q": True, "rank": r, "num_spaces": p})
    assert sum(t.numel() for t in shared.peft_params.values()) == p * (2 * D * r + r * r)


# -- structure --------------------------------------------------------------------------------------
def test_zero_init_and_orthogonal_spaces(base):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora", "rank": 8, "num_spaces": 4, "init": "orthogonal"})
    sp = method.spaces["s96x96"]
    assert torch.count_nonzero(sp.Q) == 0
    dcat = sp.D.detach().permute(1, 0, 2).reshape(D, -1)  # d x p r, jointly orthonormal
    ucat = sp.U.detach().reshape(-1, D)  # p r x d
    eye = torch.eye(32)
    assert torch.allclose(dcat.T @ dcat, eye, atol=1e-5)
    assert torch.allclose(ucat @ ucat.T, eye, atol=1e-5)
    assert all(torch.count_nonzero(w) == 0 for w in method.delta_weights().values())


def test_shared_q_gives_identical_delta_for_all_modules(base):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora", "shared_q": True})
    randomize(method)
    deltas = list(method.delta_weights().values())
    assert len(deltas) == 2 * DEPTH
    assert deltas[0].abs().sum() > 0
    assert all(torch.equal(d, deltas[0]) for d in deltas[1:])
    normal = apply_peft(copy.deepcopy(base), {"NAME": "clora"})
    randomize(normal)
    nd = list(normal.delta_weights().values())
    assert not torch.allclose(nd[0], nd[1])


def test_delta_matches_definition(base):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora", "scale": 0.7})
    randomize(method)
    i, t, key, j = method.lrms[5]
    sp = method.spaces[key]
    ref = 0.7 * sum(sp.D[h] @ sp.Q[j, h] @ sp.U[h] for h in range(sp.D.shape[0]))
    assert torch.allclose(method.delta_weights()[method.block_linear_name(i, t)], ref, atol=1e-6)


def test_pre_proj_forward_written_out(base):
    """The hooked qkv computes ((x + b) + (x + b) dW) W^T with dW = scale * sum_h D_h Q_h U_h."""
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", "bias": True, "scale": 0.5})
    randomize(method, std=0.1)
    model.eval()
    names = method.lrm_names()
    j = names.index("blocks.blocks.2.attn.qkv")
    _, _, key, jj = method.lrms[j]
    sp = method.spaces[key]
    dW = method.delta_weights()["blocks.blocks.2.attn.qkv"]
    x = torch.randn(2, 9, D)
    y = x + sp.bias[jj]
    expect = (y + y @ dW) @ model.blocks.blocks[2].attn.qkv.weight.T
    assert torch.allclose(model.blocks.blocks[2].attn.qkv(x), expect, atol=1e-5)


def test_parallel_forward_written_out(base):
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", "placement": "parallel", "targets": ["fc2"], "bias": True})
    randomize(method, std=0.1)
    lin = model.blocks.blocks[1].mlp.fc2
    _, _, key, j = method.lrms[1]
    x = torch.randn(3, lin.in_features)
    dW = method.delta_weights()["blocks.blocks.1.mlp.fc2"]
    expect = x @ lin.weight.T + lin.bias + x @ dW + method.spaces[key].bias[j]
    assert torch.allclose(lin(x), expect, atol=1e-5)


def test_config_errors(base):
    with pytest.raises(ConfigError, match="placement"):
        apply_peft(copy.deepcopy(base), {"NAME": "clora", "placement": "inside"})
    with pytest.raises(ConfigError, match="has no bias|has none"):
        apply_peft(copy.deepcopy(base), {"NAME": "clora", "placement": "parallel", "bias": True})
    with pytest.raises(ConfigError, match="targets"):
        apply_peft(copy.deepcopy(base), {"NAME": "clora", "targets": ["proj"]})  # pre_proj: qkv/fc1 only
    with pytest.raises(ConfigError, match="init"):
        apply_peft(copy.deepcopy(base), {"NAME": "clora", "init": "normal"})


def test_resolved_defaults_are_explicit(base):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora"})
    cfg = method.config
    assert cfg["targets"] == ["qkv", "fc1"] and cfg["layers"] == list(range(DEPTH))
    par = apply_peft(copy.deepcopy(base), {"NAME": "clora", "placement": "parallel"})
    assert par.config["targets"] == ["qkv", "proj"]


# -- FLOPs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"placement": "parallel"}, {"bias": True, "shared_q": True}])
def test_merged_flops_equal_backbone_and_unmerged_overhead_by_formula(base, pts, extra):
    plain = count_flops(base, pts[:1])["flops"]
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", **extra})
    randomize(method, std=0.05)
    unmerged = count_flops(model, pts[:1])["flops"]
    L = 1 + base.num_group
    r, p = method.config["rank"], method.config["num_spaces"]
    overhead = 0
    for _, _, key, _ in method.lrms:  # per token: x Dcat (d_in x p r), then (x Dcat) V_j (p r x d_out); 2 FLOPs / MAC
        sp = method.spaces[key]
        overhead += 2 * L * (sp.d_in * p * r + p * r * sp.d_out)
    for sp in method.spaces.values():  # once per forward: V_j = blockdiag(Q^j) U for every LRM of the set
        overhead += 2 * sp.Q.shape[0] * p * r * r * sp.d_out
    assert unmerged == plain + overhead
    method.merge()
    assert count_flops(model, pts[:1])["flops"] == plain


# -- the training path against the dense update ------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("placement", ["pre_proj", "parallel"])
def test_hooked_linear_equals_dense_update(base, scale, placement):
    # the factored path (x Dcat) V_j with V_j = scale blockdiag(Q_j) U, against x dW_j formed densely
    model = copy.deepcopy(base).double()
    method = apply_peft(model, {"NAME": "clora", "placement": placement, "scale": scale})
    randomize(method, std=0.2)
    i, t, key, j = method.lrms[1]
    lin = method.block_linear(i, t)
    sp = method.spaces[key]
    dW = scale * torch.einsum("hir,hrs,hso->io", sp.D, sp.Q[j], sp.U).detach()  # d_in x d_out
    x = torch.randn(3, 7, lin.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = lin(x)
        plain = torch.nn.functional.linear
        want = (
            plain(x + x @ dW, lin.weight, lin.bias)
            if placement == "pre_proj"
            else plain(x, lin.weight, lin.bias) + x @ dW
        )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_block_called_outside_the_stack_after_a_forward(base, pts):
    # the per-forward factor cache is emptied after each pass over the block stack; a block run on
    # its own afterwards forms its factors itself (and sees the current parameters)
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora"})
    randomize(method, std=0.2)
    with torch.no_grad():
        model(pts)
        x = torch.randn(2, 5, model.blocks.blocks[0].norm1.normalized_shape[0])
        block = model.blocks.blocks[0]  # Block.forward(x): the stack adds the position before each block
        first = block(x)
        for p in method.peft_params.values():
            p.mul_(2.0)
        second = block(x)
    assert not torch.equal(first, second)  # not a stale cache


# -- weight decay: one rule (engine.optim.is_no_decay) plus what the method names -----------------
_OPT_CFG = {
    "optimizer": {"NAME": "AdamW", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-8},
    "scheduler": {"NAME": "none"},
    "train": {"epochs": 1},
}


def _groups(method) -> dict[float, set[str]]:
    from clora3d.engine.build import build_optimizer  # what the trainer calls

    opt, _ = build_optimizer(method, _OPT_CFG)
    return {g["weight_decay"]: set(g["names"]) for g in opt.param_groups}


def test_clora_bias_takes_no_weight_decay_through_the_trainers_optimizer(base):
    m = apply_peft(copy.deepcopy(base), {"NAME": "clora", "bias": True, "rank": 2, "num_spaces": 2})
    groups = _groups(m)
    key = f"s{D}x{D}"
    assert f"peft.{key}.bias" in groups[0.0] and m.trainable_parameters()[f"peft.{key}.bias"].ndim == 2
    assert {f"peft.{key}.D", f"peft.{key}.U", f"peft.{key}.Q"} <= groups[0.05]
    assert {"cls_token", "cls_head_finetune.0.bias"} <= groups[0.0]  # the reference rule
    assert "cls_pos" in groups[0.05]  # the reference decays it (optimizer.no_decay_cls_pos: false)
    assert groups[0.0] | groups[0.05] == set(m.trainable_parameters())


def test_the_optimizer_asks_the_method_for_its_no_decay_names(base, monkeypatch):
    # a name the reference rule would decay (2-D, no '.bias', no 'token') moves because the method says so
    from clora3d.peft.clora import CLoRA

    key = f"s{D}x{D}"
    monkeypatch.setattr(CLoRA, "no_weight_decay", lambda self: {f"peft.{key}.Q"})
    m = apply_peft(copy.deepcopy(base), {"NAME": "clora", "rank": 2, "num_spaces": 2})
    groups = _groups(m)
    assert f"peft.{key}.Q" in groups[0.0] and f"peft.{key}.D" in groups[0.05]


@pytest.mark.parametrize("placement", ["pre_proj", "parallel"])
def test_each_lrm_layer_owns_its_merge_and_exact_unmerge(base, placement):
    cfg = {"NAME": "clora", "placement": placement, "bias": True, "rank": 2, "num_spaces": 2, "scale": 0.5}
    if placement == "parallel":
        cfg["targets"] = ["proj", "fc1"]  # targets with a bias
    m = apply_peft(copy.deepcopy(base), cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.spaces.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    lrm = m.lrm_layers[0]
    i, t, key, j = m.lrms[0]
    sp = m.spaces[key]
    # independent float64 reference: dW = scale * sum_h D_h Q_h^j U_h
    D, Q, U = (x.detach().double() for x in (sp.D, sp.Q[j], sp.U))
    dW = 0.5 * sum(D[h] @ Q[h] @ U[h] for h in range(D.shape[0]))
    b = sp.bias[j].detach().double()
    W0 = lrm.lin.weight.detach().double()
    with torch.no_grad():
        lrm.merge()
    if placement == "pre_proj":  # qkv has no bias: b_j folds into norm1's bias
        W_ref = W0 + W0 @ dW.T
        torch.testing.assert_close(
            lrm.norm.bias.detach().double(), before[f"blocks.blocks.{i}.norm1.bias"].double() + b, rtol=0, atol=1e-7
        )
    else:
        W_ref = W0 + dW.T
        torch.testing.assert_close(
            lrm.lin.bias.detach().double(), before[f"{lrm.name}.bias"].double() + b, rtol=0, atol=1e-7
        )
    torch.testing.assert_close(lrm.lin.weight.detach().double(), W_ref, rtol=0, atol=1e-6)
    changed = {k for k, v in m.model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert changed and all(k.startswith(f"blocks.blocks.{i}.") for k in changed)  # only its own block
    with torch.no_grad():
        lrm.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in m.model.state_dict().items())


# -- training paths: factored (x Dcat) V_j and dense x dW_j ----------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"bias": True, "dropout": 0.2},
        {"placement": "parallel", "targets": ["qkv", "proj", "fc1"]},
        {"placement": "parallel", "targets": ["proj", "fc2"], "bias": True},
        {"shared_q": True, "scale": 0.5},
        {"scale": 2.0},
    ],
    ids=["pre_proj", "pre_proj_bias_dropout", "parallel", "parallel_bias", "shared_q_scaled", "scale_2"],
)
def test_dense_training_path_equals_the_factored_one(base, pts, extra):
    """Same outputs, loss gradients and SADE, in train mode (dropout draws the same masks); in float64,
    where only rounding could differ (in float32 the batch norms of a train-mode batch of 2 amplify it)."""
    results = {}
    for path in ("factored", "dense"):
        model = copy.deepcopy(base).double().train()
        method = apply_peft(model, {"NAME": "clora", "train_path": path, **extra})
        randomize(method, std=0.05)  # updates of a realistic size (0.3 blows the activations up)
        key = next(iter(method.spaces))
        assert (method._cache._form(method.spaces[key], True)[0] is None) == (path == "dense")
        torch.manual_seed(7)
        out = model(pts.double())
        loss = out.square().mean() + method.regularization_loss()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in method.trainable_parameters().items() if p.grad is not None}
        results[path] = (out.detach(), grads)
    (out_f, g_f), (out_d, g_d) = results["factored"], results["dense"]
    torch.testing.assert_close(out_d, out_f, rtol=1e-10, atol=1e-12)
    assert g_d.keys() == g_f.keys() and any(n.startswith("peft.") for n in g_d)
    for n in g_f:
        torch.testing.assert_close(g_d[n], g_f[n], rtol=1e-8, atol=1e-10, msg=n)


def test_dense_path_is_chosen_by_option_and_device():
    from clora3d.peft.clora import dense_path

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # device objects only: no GPU needed
    paths = ("auto", "factored", "dense")
    assert [dense_path(p, cpu, True) for p in paths] == [False, False, True]
    assert [dense_path(p, cuda, True) for p in paths] == [True, False, True]
    assert [dense_path(p, cuda, False) for p in paths] == [False, False, True]  # eval: factored


def test_auto_training_path_is_factored_on_the_cpu(base):
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora"})
    assert method.config["train_path"] == "auto"
    dcat, vs = method._cache._form(method.spaces["s96x96"], True)
    assert dcat is not None and vs[0].shape == (4 * 8, 96)


@pytest.mark.cuda
def test_auto_training_path_is_dense_on_cuda(base, pts):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    outs = {}
    for path in ("auto", "factored"):
        model = copy.deepcopy(base).cuda().train()
        method = apply_peft(model, {"NAME": "clora", "train_path": path})
        randomize(method, std=0.05)
        if path == "auto":
            assert method._cache._form(method.spaces["s96x96"], True)[0] is None
            assert method._cache._form(method.spaces["s96x96"], False)[0] is not None
        torch.manual_seed(7)
        with torch.no_grad():
            outs[path] = model(pts.cuda()).cpu()
    # float32 on the GPU, train mode (batch norm over a batch of 2 amplifies rounding)
    torch.testing.assert_close(outs["auto"], outs["factored"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("placement", ["pre_proj", "parallel"])
def test_training_path_sees_the_mode_of_the_forward(base, pts, monkeypatch, placement):
    """The dense-or-factored decision gets the module's train/eval mode: from the block stack (the
    per-forward factors) and from an LRM hook whose block runs on its own (it forms them itself)."""
    import clora3d.peft.clora as clora_mod

    seen: list[bool] = []

    def record(train_path, device, training):
        seen.append(training)
        return False

    monkeypatch.setattr(clora_mod, "dense_path", record)
    model = copy.deepcopy(base)
    apply_peft(model, {"NAME": "clora", "placement": placement})
    for mode in (True, False):
        model.train(mode)
        seen.clear()
        with torch.no_grad():
            model(pts)
        assert seen and set(seen) == {mode}, (mode, seen)
        seen.clear()
        tokens = torch.randn(2, 5, D)
        with torch.no_grad():
            model.blocks.blocks[0](tokens)  # outside the stack: each LRM hook forms its set's factors
        assert seen and set(seen) == {mode}, (mode, seen)


def test_sade_compiles_without_graph_break():
    """The written-out SADE (an autograd.Function) traces with torch.compile(fullgraph=True): same value
    and gradients (aot_eager: the tracing, without code generation)."""
    torch.manual_seed(0)
    sp = CLoRASpaces(16, 16, 4, 3, 4, False, None, "xavier")
    with torch.no_grad():
        sp.Q.normal_()

    def f():
        return sade_total([sp], True, 1e-12, 0.01)

    want = f()
    want_g = torch.autograd.grad(want, [sp.D, sp.U, sp.Q])
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")()
    got_g = torch.autograd.grad(got, [sp.D, sp.U, sp.Q])
    torch.testing.assert_close(got, want)
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g, w)


# -- the pre_proj update's own backward ------------------------------------------------------------
def _ipl_inputs(dense: bool, dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, 6, generator=g, dtype=dtype).requires_grad_()
    dcat = None if dense else torch.randn(6, 4, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(6 if dense else 4, 6, generator=g, dtype=dtype).requires_grad_()
    return x, dcat, v


def _written_out(x, dcat, v):
    return x + (x if dcat is None else x @ dcat) @ v


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "factored"])
def test_identity_plus_low_rank_gradients_equal_autograd_of_the_formula(dense):
    """x + (x Dcat) V with the identity's gradient folded into one addmm: gradcheck, and value and
    gradients equal autograd of the written-out formula (any subset of inputs needing a gradient)."""
    from clora3d.peft.clora import _IdentityPlusLowRank

    inputs = tuple(t for t in _ipl_inputs(dense) if t is not None)
    fn = (lambda x, v: _IdentityPlusLowRank.apply(x, None, v)) if dense else _IdentityPlusLowRank.apply
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    x, dcat, v = _ipl_inputs(dense)
    want = _written_out(x, dcat, v)
    got = _IdentityPlusLowRank.apply(x, dcat, v)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(2))
    full = (x, dcat, v)
    for k in [i for i, t in enumerate(full) if t is not None]:  # only input k needs a gradient
        sub = [None if t is None else t.detach().requires_grad_(i == k) for i, t in enumerate(full)]
        grads = torch.autograd.grad(_IdentityPlusLowRank.apply(*sub), [sub[k]], g)
        ref = torch.autograd.grad(_written_out(*sub), [sub[k]], g)
        torch.testing.assert_close(grads, ref, rtol=1e-12, atol=1e-12)
    leaves = [t for t in full if t is not None]
    grads = torch.autograd.grad(got, leaves, g)
    ref = torch.autograd.grad(want, leaves, g)
    torch.testing.assert_close(grads, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "factored"])
def test_identity_plus_low_rank_backward_launches_no_separate_add(dense):
    """The reason it exists: autograd of the formula sums the two gradients of x in an add of its own;
    the written-out backward does it inside an addmm (one kernel-launching op fewer per LRM)."""
    from clora3d.peft.clora import _IdentityPlusLowRank

    ops = {}
    for name, fn in (("written", _IdentityPlusLowRank.apply), ("autograd", _written_out)):
        x, dcat, v = _ipl_inputs(dense, torch.float32)
        y = fn(x, dcat, v)
        with CountOps() as c:
            y.backward(torch.ones_like(y))
        ops[name] = c.ops
    written, auto = ops["written"], ops["autograd"]
    assert auto["add"] == 1 and written["add"] == 0, ops
    matmuls = ("mm", "addmm")
    assert sum(written[k] for k in matmuls) == sum(auto[k] for k in matmuls), ops  # the add went into one
    assert set(written) - set(auto) <= {"addmm", "transpose"}, ops  # and nothing else came in (.mT is a view)


def test_identity_plus_low_rank_under_autocast_matches_autocasts_forward_and_dtypes():
    """A bf16 input (the hook casts it once) with float32 factors: the forward bit for bit autocast's
    addmm, the factors' gradients come back in float32 and x's in bf16; an input autocast would still
    cast (fp16 under bf16 autocast) takes autocast's own path instead of failing."""
    from clora3d.peft.clora import _identity_plus_low_rank, _low_rank_add

    for dense in (True, False):
        x, dcat, v = _ipl_inputs(dense, torch.float32)
        xb = x.detach().to(torch.bfloat16).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _identity_plus_low_rank(xb, dcat, v)
            want = _low_rank_add(xb, xb, dcat, v)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
        got.float().sum().backward()
        assert xb.grad.dtype == torch.bfloat16 and v.grad.dtype == torch.float32
        assert dense or dcat.grad.dtype == torch.float32
        xh = x.detach().half()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = _identity_plus_low_rank(xh, dcat, v)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()  # autocast's own path: no dtype mismatch in the backward


def test_sade_constants_are_made_once_and_outside_inference_mode():
    """The masks and eps of the batched SADE are made at the first call and reused (no eye / ones /
    triu / full kernels in later steps), and a first call under inference_mode (an evaluation that logs
    SADE) leaves constants that a training backward can still save."""
    import clora3d.peft.clora as clora

    torch.manual_seed(0)
    sp = CLoRASpaces(12, 10, 3, 5, 4, False, None, "xavier")  # p = 5: a shape no other test uses
    with torch.no_grad():
        sp.Q.normal_()
    clora._SADE_CONSTANTS.clear()
    with torch.inference_mode(), CountOps() as first:
        ref = sade_total([sp], True, 1e-12, 0.3)
    assert {"eye", "ones", "triu_"} <= set(first.ops), first.ops
    with CountOps() as later:
        got = sade_total([sp], True, 1e-12, 0.3)
        got.backward()
    assert not {"eye", "ones", "triu_", "full", "fill_", "zeros", "scalar_tensor"} & set(later.ops), later.ops
    torch.testing.assert_close(got.detach(), ref, rtol=1e-6, atol=0)
    assert torch.allclose(got.detach(), brute_sets([copy.deepcopy(sp).double()], True, 1e-12).float() * 0.3, rtol=1e-5)
    assert all(not t.is_inference() for t in clora._SADE_CONSTANTS.values())


def test_identity_plus_low_rank_takes_every_input_autocast_leaves_alone():
    """The written-out function runs for float32 and float64 inputs and for an input already in the
    autocast dtype; only an input that autocast would still cast (float16 under bfloat16 autocast)
    takes autocast's own path."""
    from clora3d.peft.clora import _identity_plus_low_rank

    def nodes(y):
        return {type(y.grad_fn).__name__} | {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None}

    x, dcat, v = _ipl_inputs(False, torch.float32)
    cases = [(x, False, True), (x.double(), True, True), (x.detach().bfloat16().requires_grad_(), True, True)]
    cases.append((x.detach().half().requires_grad_(), True, False))
    for xi, autocast, written in cases:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = _identity_plus_low_rank(
                xi.view(7, 1, 6),
                dcat.to(xi.dtype) if xi.dtype == torch.float64 else dcat,
                v.to(xi.dtype) if xi.dtype == torch.float64 else v,
            )
        assert ("_IdentityPlusLowRankBackward" in nodes(y)) == written, (xi.dtype, autocast, nodes(y))
        assert y.shape == (7, 1, 6)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "factored"])
def test_identity_plus_low_rank_double_backward_with_factors_of_another_dtype(dense):
    """create_graph=True with float64 factors and a float32 input (the forward casts the factors to
    the input's dtype): the graph-building backward casts them again, and the second derivatives
    equal autograd's of the written-out formula with those casts."""
    from clora3d.peft.clora import _IdentityPlusLowRank

    x, dcat, v = _ipl_inputs(dense, torch.float32)
    v = v.detach().double().requires_grad_()
    dcat = None if dense else dcat.detach().double().requires_grad_()
    leaves = [t for t in (x, dcat, v) if t is not None]
    results = []
    for fn in (
        _IdentityPlusLowRank.apply,
        lambda a, d, b: _written_out(a, None if d is None else d.float(), b.float()),
    ):
        y = fn(x, dcat, v)
        grads = torch.autograd.grad(y.square().sum(), leaves, create_graph=True)
        assert [g.dtype for g in grads] == [t.dtype for t in leaves]
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)
        results.append((grads, second))
    for got, want in zip(results[0], results[1]):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_sade_constants_are_not_kept_while_compiling_or_capturing_a_cuda_graph(monkeypatch):
    """Under torch.compile a constant is made in the graph and never taken from or put into the cache;
    neither while a CUDA graph is captured (the kernel that fills it would run only at replay). The
    cache keys the dtype: a float64 call gets float64 constants."""
    import types

    import clora3d.peft.clora as clora

    like = torch.zeros(2, dtype=torch.float32)
    clora._SADE_CONSTANTS.clear()
    eye = clora._sade_constant(clora._eye_blocks, like, 3)
    assert clora._sade_constant(clora._eye_blocks, like, 3) is eye  # eager: cached
    eps64 = clora._sade_constant(clora._scalar, like.double(), 1e-12)
    pairs64 = clora._sade_constant(clora._pair_weights, like.double(), 3, (2, 1), 0.5)
    assert (
        eps64.dtype == pairs64.dtype == clora._sade_constant(clora._eye_blocks, like.double(), 3).dtype == torch.float64
    )
    assert clora._sade_constant(clora._scalar, like, 1e-12).dtype == torch.float32
    assert torch.equal(pairs64.view(2, 3, 3)[0], 0.5 * torch.ones(3, 3, dtype=torch.float64).triu(1))
    cached = dict(clora._SADE_CONSTANTS)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    again = clora._sade_constant(clora._eye_blocks, like, 3)
    assert again is not eye and torch.equal(again, eye)
    clora._sade_constant(clora._eye_blocks, like, 4)
    assert clora._SADE_CONSTANTS == cached
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device("cpu"))
    assert clora._sade_constant(clora._eye_blocks, cuda_like, 3) is not eye  # same key, not taken
    assert clora._SADE_CONSTANTS == cached
    assert clora._sade_constant(clora._eye_blocks, like, 3) is eye  # a CPU tensor is never captured


def test_clora_pre_proj_layer_under_torch_func_transforms(base):
    """vmap and grad of torch.func over a CLoRA model (pre_proj, the default): the update takes
    autograd's plain ops there (the written-out function has no functorch rules), same numbers."""
    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora"})
    randomize(method, std=0.05)
    qkv = model.blocks.blocks[1].attn.qkv
    xs = torch.randn(3, 2, 9, D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(vmap(qkv)(xs), torch.stack([qkv(x) for x in xs]))
    params = {n: p.detach() for n, p in model.named_parameters()}
    pts = torch.rand(1, 128, 3, generator=torch.Generator().manual_seed(5))
    g = grad(lambda p: functional_call(model, p, (pts,)).sum())(params)
    model.zero_grad()
    model(pts).sum().backward()
    for n, p in method.trainable_parameters().items():
        torch.testing.assert_close(g[n], p.grad, msg=n)


def test_sade_constants_of_a_fake_trace_stay_out_of_the_cache():
    """make_fx in fake mode (a memory estimation, an export) gets fake constants of its own: none is
    cached for a later eager call, and a real cached constant is not handed to the trace."""
    from torch.fx.experimental.proxy_tensor import make_fx

    import clora3d.peft.clora as clora

    torch.manual_seed(0)
    sp = CLoRASpaces(10, 10, 2, 3, 2, False, None, "xavier")
    with torch.no_grad():
        sp.Q.normal_()
    clora._SADE_CONSTANTS.clear()
    want = sade_total([sp], True, 1e-12).detach()  # eager first: real constants cached
    cached = dict(clora._SADE_CONSTANTS)

    def f(D, U, Q):
        return clora._SadeBlocks.apply(1.0, True, 1e-12, D, U, Q)

    gm = make_fx(f, tracing_mode="fake")(sp.D.detach(), sp.U.detach(), sp.Q.detach())
    assert clora._SADE_CONSTANTS == cached and all(type(t) is torch.Tensor for t in cached.values())
    torch.testing.assert_close(gm(sp.D.detach(), sp.U.detach(), sp.Q.detach()), want)
    torch.testing.assert_close(sade_total([sp], True, 1e-12).detach(), want)
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = torch.zeros(1, dtype=torch.float64)
    with FakeTensorMode(allow_non_fake_inputs=True):  # a real tensor to copy dtype and device from
        made = clora._sade_constant(clora._eye_blocks, real, 7)
    assert type(made) is not torch.Tensor  # made fake, so not kept
    assert clora._SADE_CONSTANTS == cached


def test_sade_constant_cache_is_bounded(monkeypatch):
    """A weight changed at every step (a scheduled sade_lambda) cannot grow the cache without end."""
    import clora3d.peft.clora as clora

    clora._SADE_CONSTANTS.clear()
    like = torch.zeros(1)
    for i in range(3 * clora._SADE_CONSTANTS_MAX):
        clora._sade_constant(clora._pair_weights, like, 3, (1, 2), 0.01 * (i + 1))
        assert 0 < len(clora._SADE_CONSTANTS) <= clora._SADE_CONSTANTS_MAX


@pytest.mark.cuda
@pytest.mark.parametrize("normalize", [True, False])
def test_sade_on_cuda_equals_the_cpu(normalize):
    """The batched SADE and its written-out backward on the GPU (its cached constants on the GPU
    too: CUDA's addcmul takes no CPU scalar as its input)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    cpu = CLoRASpaces(24, 20, 4, 3, 5, False, None, "xavier").double()
    with torch.no_grad():
        cpu.Q.normal_()
    gpu = copy.deepcopy(cpu).cuda()
    for sp in (cpu, gpu):
        sade_total([sp], normalize, 1e-12, 0.3).backward()
    for name in ("D", "U", "Q"):
        torch.testing.assert_close(getattr(gpu, name).grad.cpu(), getattr(cpu, name).grad, msg=name)
    torch.testing.assert_close(sade_total([gpu], normalize, 1e-12, 0.3).cpu(), sade_total([cpu], normalize, 1e-12, 0.3))

"""The PEFT interface: init equivalence, exact trainable sets and gradients, adapter files, merge/unmerge."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clora3d.errors import CheckpointError, ConfigError
from clora3d.models import PointTransformer
from clora3d.peft import COMMON_DEFAULTS, DEFAULTS, apply_peft, load_adapter, read_adapter

N_POINTS = 128
CLS = 5

# every method, plus the CLoRA variants
CONFIGS = {
    "full": {"NAME": "full"},
    "linear": {"NAME": "linear"},
    "bitfit": {"NAME": "bitfit"},
    "lora": {"NAME": "lora"},
    "adapter": {"NAME": "adapter"},
    "prompt": {"NAME": "prompt", "num_tokens": 3},
    "clora": {"NAME": "clora"},
    "clora_parallel_bias": {"NAME": "clora", "placement": "parallel", "targets": ["proj", "fc1", "fc2"], "bias": True},
    "clora_shared_bias": {"NAME": "clora", "shared_q": True, "bias": True, "num_spaces": 2, "rank": 4},
    # reference BN behaviour: the frozen encoder's BN statistics drift and must travel in the adapter
    "lora_bn_train": {"NAME": "lora", "frozen_bn": "train", "targets": ["fc1"]},
}
MERGEABLE = ["lora", "clora", "clora_parallel_bias", "clora_shared_bias"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_base(seed: int = 0) -> PointTransformer:
    torch.manual_seed(seed)
    return PointTransformer.from_preset("tiny", cls_dim=CLS).eval()


@pytest.fixture(scope="module")
def base() -> PointTransformer:
    return make_base()


@pytest.fixture(scope="module")
def pts() -> torch.Tensor:
    return torch.rand(2, N_POINTS, 3, generator=torch.Generator().manual_seed(1))


def perturb(method, std: float = 0.05) -> None:
    """Move every new PEFT parameter away from its init (so zero-init does not hide bugs)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in method.peft_params.values():
            p.add_(torch.randn(p.shape, generator=g) * std)


def head_names(model) -> list[str]:
    return [f"cls_head_finetune.{n}" for n, _ in model.cls_head_finetune.named_parameters()]


# -- initialisation -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(CONFIGS))
def test_init_logits_equal_base(base, pts, key):
    ref = base(pts)
    model = copy.deepcopy(base)
    method = apply_peft(model, CONFIGS[key])
    out = model(pts)
    if method.starts_at_base:
        assert torch.equal(out, ref)
    else:  # prompt tuning: prompts join attention from the first step
        assert key == "prompt"
        assert not torch.allclose(out, ref, atol=1e-4)
        assert out.shape == ref.shape


# -- trainable sets and gradients ------------------------------------------------------------------
def expected_trainable(model, key: str) -> set[str]:
    """Independent statement of each method's trainable base parameters (names written out)."""
    common = set(head_names(model)) | {"cls_token", "cls_pos"}
    depth = len(model.blocks.blocks)
    if key == "full":
        return {n for n, _ in model.named_parameters()}
    if key == "bitfit":
        names = {"norm.bias"}
        for i in range(depth):
            for s in ("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"):
                names.add(f"blocks.blocks.{i}.{s}.bias")  # qkv has no bias in the preset
        return common | names
    return common


@pytest.mark.parametrize("key", list(CONFIGS))
def test_gradients_exactly_on_declared_trainable(base, pts, key):
    model = copy.deepcopy(base)
    base_names = {n for n, _ in model.named_parameters()}
    method = apply_peft(model, CONFIGS[key])
    declared = method.trainable_parameters()
    # base part of the declared set matches the independent statement; new ones are exactly peft_params
    assert set(declared) & base_names == expected_trainable(model, key)
    assert set(declared) - base_names == set(method.peft_params)
    named = dict(model.named_parameters())
    assert set(declared) <= set(named)
    assert {n for n, p in named.items() if p.requires_grad} == set(declared)
    method.train()
    loss = model(pts).square().mean() + method.regularization_loss()
    loss.backward()
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert with_grad == set(declared)


def test_trainable_counts_by_formula(base):
    d, depth = 96, 4
    head = sum(p.numel() for p in base.cls_head_finetune.parameters())
    counts = {}
    for key in ("linear", "lora", "adapter", "prompt"):
        model = copy.deepcopy(base)
        counts[key] = sum(p.numel() for p in apply_peft(model, CONFIGS[key]).trainable_parameters().values())
    assert counts["linear"] == head + 2 * d
    r = DEFAULTS["lora"]["rank"]
    assert counts["lora"] == head + 2 * d + depth * r * ((d + 3 * d) + (d + d))
    b = DEFAULTS["adapter"]["bottleneck"]
    assert counts["adapter"] == head + 2 * d + depth * (d * b + b + b * d + d)
    assert counts["prompt"] == head + 2 * d + depth * 3 * d


def test_frozen_bn_policy(base, pts):
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "lora", "frozen_bn": "eval"})
    method.train()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d)}
    assert all(not m.training for n, m in bns.items() if n.startswith("encoder."))
    assert all(m.training for n, m in bns.items() if n.startswith("cls_head_finetune."))
    saved = set(method.adapter_state_dict())
    assert not any(k.startswith("encoder.") for k in saved)
    assert "cls_head_finetune.1.running_mean" in saved

    # the default is the references' behaviour: every BatchNorm in train mode, buffers saved
    for cfg in ({"NAME": "lora", "frozen_bn": "train"}, {"NAME": "lora"}):
        model2 = copy.deepcopy(base)
        m2 = apply_peft(model2, cfg)
        m2.train()
        assert all(m.training for m in model2.modules() if isinstance(m, nn.BatchNorm1d))
        assert "encoder.first_conv.1.running_var" in m2.adapter_state_dict()


# -- config validation -----------------------------------------------------------------------------
def test_config_errors(base):
    with pytest.raises(ConfigError, match="rnak"):
        apply_peft(copy.deepcopy(base), {"NAME": "lora", "rnak": 4})
    with pytest.raises(ConfigError, match="NAME"):
        apply_peft(copy.deepcopy(base), {"NAME": "dora"})
    with pytest.raises(ConfigError, match="rank"):
        apply_peft(copy.deepcopy(base), {"NAME": "lora", "rank": "8"})
    with pytest.raises(ConfigError, match="layers"):
        apply_peft(copy.deepcopy(base), {"NAME": "adapter", "layers": [7]})
    with pytest.raises(ConfigError, match="nope"):
        apply_peft(copy.deepcopy(base), {"NAME": "linear", "extra_trainable": ["nope"]})
    model = copy.deepcopy(base)
    apply_peft(model, {"NAME": "linear"})
    with pytest.raises(ValueError, match="already applied"):
        apply_peft(model, {"NAME": "lora"})


def test_extra_trainable_exact_names_and_module_prefixes(base):
    model = copy.deepcopy(base)
    # "norm" is the final LayerNorm module: selects norm.weight/bias, NOT norm1/norm2 (no substring matching)
    method = apply_peft(model, {"NAME": "linear", "extra_trainable": ["norm", "blocks.blocks.1.attn.proj.weight"]})
    extra = set(method.trainable_parameters()) - set(head_names(model)) - {"cls_token", "cls_pos"}
    assert extra == {"norm.weight", "norm.bias", "blocks.blocks.1.attn.proj.weight"}


# -- adapter files ---------------------------------------------------------------------------------
def fresh_base_like(base) -> PointTransformer:
    """A newly built model (other random init) loaded with the base's weights."""
    fresh = make_base(seed=123)
    fresh.load_state_dict(base.state_dict())
    return fresh.eval()


@pytest.mark.parametrize("key", list(CONFIGS))
def test_adapter_roundtrip_identical_logits(base, pts, key, tmp_path):
    model = copy.deepcopy(base)
    method = apply_peft(model, CONFIGS[key])
    perturb(method)
    with torch.no_grad():  # train the trainable base params a little, and update the head BN statistics
        for n, p in method.trainable_parameters().items():
            if n not in method.peft_params:
                p.add_(0.01 * torch.randn_like(p))
        method.train()
        model(pts)
    model.eval()
    ref = model(pts)
    path = method.save_adapter(tmp_path / "a" / "adapter.pt")

    meta, state = read_adapter(path)
    assert meta["method"] == CONFIGS[key]["NAME"]
    assert set(meta["config"]) == set(DEFAULTS[meta["method"]]) | set(COMMON_DEFAULTS) | {"NAME"}
    assert set(state) == set(method.adapter_state_dict())
    assert len(meta["base_hash"]) == 64

    fresh = fresh_base_like(base)
    loaded = load_adapter(fresh, path)
    assert loaded.name == method.name
    assert torch.equal(fresh(pts), ref)


@pytest.mark.parametrize("where", ["fc2_last", "qkv_middle", "norm_bias_last", "fc2_first"])
def test_adapter_on_different_base_raises(base, tmp_path, where):
    # the base hash covers every element of every frozen tensor, not only the first one
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora"})
    path = method.save_adapter(tmp_path / "clora.pt")
    other = fresh_base_like(base)
    with torch.no_grad():
        if where == "fc2_last":
            other.blocks.blocks[2].mlp.fc2.weight[-1, -1] += 1e-3
        elif where == "qkv_middle":
            w = other.blocks.blocks[1].attn.qkv.weight
            w[w.shape[0] // 2, w.shape[1] // 2] += 1e-3
        elif where == "norm_bias_last":
            other.norm.bias[-1] += 1e-3
        else:
            other.blocks.blocks[2].mlp.fc2.weight[0, 0] += 1e-3
    plain_keys = set(other.state_dict())
    with pytest.raises(CheckpointError, match="different base weights"):
        load_adapter(other, path)
    # the failed load leaves the model plain and usable
    assert set(other.state_dict()) == plain_keys
    assert getattr(other, "_clora3d_peft", None) is None
    apply_peft(other, {"NAME": "lora"})


def test_adapter_head_size_mismatch_and_bad_file(base, tmp_path):
    model = copy.deepcopy(base)
    path = apply_peft(model, {"NAME": "linear"}).save_adapter(tmp_path / "lin.pt")
    torch.manual_seed(0)
    other = PointTransformer.from_preset("tiny", cls_dim=CLS + 1)
    other.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("cls_head")}, strict=False)
    with pytest.raises(CheckpointError, match="size mismatch for cls_head_finetune"):
        load_adapter(other, path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_adapter(fresh_base_like(base), tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a clora3d adapter"):
        load_adapter(fresh_base_like(base), tmp_path / "x.pt")


# -- merge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", MERGEABLE)
def test_merge_matches_unmerged_and_restores(base, pts, key):
    plain_keys = list(base.state_dict())
    plain_modules = [n for n, _ in base.named_modules()]
    model = copy.deepcopy(base)
    method = apply_peft(model, CONFIGS[key])
    perturb(method)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(pts)
    assert method.merge_and_verify(pts) < 1e-5
    assert list(model.state_dict()) == plain_keys
    assert [n for n, _ in model.named_modules()] == plain_modules
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    merged = model(pts)
    assert (merged - out).abs().max() < 1e-5
    # a plain model with the merged state reproduces it (keys load strictly)
    plain = fresh_base_like(base)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(plain(pts), merged)
    method.unmerge()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(model(pts), out)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(method.trainable_parameters())


def test_non_mergeable_methods_say_so(base):
    for key in ("adapter", "prompt"):
        method = apply_peft(copy.deepcopy(base), CONFIGS[key])
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            method.merge()


def test_lora_update_matches_definition(base, pts):
    """LoRA output of one linear equals x W^T + b + (alpha/r) x A^T B^T, written out."""
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "lora", "rank": 4, "alpha": 2.0, "targets": ["fc1"]})
    perturb(method)
    lin = model.blocks.blocks[1].mlp.fc1
    x = torch.randn(3, 7, lin.in_features)
    expect = x @ lin.weight.T + lin.bias + 0.5 * (x @ lin.lora_A.T @ lin.lora_B.T)
    assert torch.allclose(lin(x), expect, atol=1e-6)


def test_no_weight_decay_names(base):
    # the method names only what the optimizer's reference rule cannot tell: CLoRA's stacked (m, d) biases
    method = apply_peft(copy.deepcopy(base), CONFIGS["clora_shared_bias"])
    assert method.no_weight_decay() == {"peft.s96x96.bias"}
    assert method.trainable_parameters()["peft.s96x96.bias"].ndim == 2
    assert apply_peft(copy.deepcopy(base), {"NAME": "clora"}).no_weight_decay() == set()
    assert apply_peft(copy.deepcopy(base), {"NAME": "lora"}).no_weight_decay() == set()


def test_dropout_only_in_training(base):
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora", "dropout": 0.5})
    perturb(method)
    lin = model.blocks.blocks[0].attn.qkv
    x = torch.randn(4, 10, lin.in_features)
    model.eval()
    assert torch.equal(lin(x), lin(x))  # eval: the branch dropout is off
    method.train()
    assert not torch.equal(lin(x), lin(x))  # training: the branch input is dropped at random


@pytest.mark.parametrize("key", ["lora", "clora", "clora_parallel_bias", "adapter", "prompt"])
def test_deepcopy_of_adapted_model_is_independent(base, pts, key):
    model = copy.deepcopy(base)
    method = apply_peft(model, CONFIGS[key])
    perturb(method)
    ref = model(pts)
    twin = copy.deepcopy(model)
    twin_method = twin._clora3d_peft
    assert twin_method is not method and twin_method.model is twin
    assert torch.equal(twin(pts), ref)
    with torch.no_grad():
        for p in twin_method.peft_params.values():
            p.mul_(2.0)
    assert not torch.equal(twin(pts), ref)  # the copy's hooks use the copy's parameters
    assert torch.equal(model(pts), ref)  # the original is untouched
    twin_method.remove()
    assert torch.equal(model(pts), ref)  # removing the copy's hooks leaves the original's
    assert torch.equal(twin(pts), base(pts))


@pytest.mark.parametrize("cfg", [{"NAME": "clora"}, {"NAME": "lora"}, {"NAME": "prompt", "num_tokens": 2}])
def test_part_segmentation_model(cfg, tmp_path):
    from clora3d.models.partseg import PartSegModel

    torch.manual_seed(0)
    seg = PartSegModel.from_preset("tiny").eval()
    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(4))
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 3]), seg.num_classes).float()
    ref = seg(pts, onehot)
    model = copy.deepcopy(seg)
    method = apply_peft(model, cfg)
    head = {n for n, _ in seg.named_parameters() if n.startswith(PartSegModel.HEAD_PREFIXES)}
    assert head and set(method.trainable_parameters()) == head | set(method.peft_params)
    if method.starts_at_base:
        assert torch.equal(model(pts, onehot), ref)
    perturb(method)
    out = model(pts, onehot)
    path = method.save_adapter(tmp_path / "seg.pt")
    fresh = PartSegModel.from_preset("tiny")
    fresh.load_state_dict(seg.state_dict())
    fresh.eval()
    load_adapter(fresh, path)
    assert torch.equal(fresh(pts, onehot), out)
    if method.mergeable:
        method.merge()
        assert list(model.state_dict()) == list(seg.state_dict())
        assert (model(pts, onehot) - out).abs().max() < 1e-5


@pytest.mark.parametrize("rslora,scale", [(False, 8.0 / 4), (True, 8.0 / 2)])
def test_lora_scale_alpha_over_r_or_sqrt_r(base, rslora, scale):
    # LoRA adds scale * x A^T B^T with scale = alpha / r, or alpha / sqrt(r) with rslora
    # (alpha 8, r 4: 2 vs 4); merging adds scale * B A to W.
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "lora", "rank": 4, "alpha": 8, "rslora": rslora, "targets": ["fc1"]})
    lin = model.blocks.blocks[1].mlp.fc1
    A, B = lin.lora_A, lin.lora_B
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        B.copy_(torch.randn(B.shape, generator=g))
    x = torch.randn(5, lin.in_features, generator=g)
    W0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    with torch.no_grad():
        y = lin(x)
    hand = x.double() @ W0.double().T + b0.double() + scale * (x.double() @ A.double().T) @ B.double().T
    torch.testing.assert_close(y.double(), hand, rtol=1e-5, atol=1e-5)
    method.merge()
    torch.testing.assert_close(lin.weight.double(), W0.double() + scale * B.double() @ A.double(), rtol=1e-5, atol=1e-6)


# -- registry: name -> (config class, method class) --------------------------------------------------
def test_registry_pairs_name_config_and_method(base):
    from clora3d.peft import CLoRA, CLoRAConfig, LoRA, LoRAConfig, build_config, config_class, method_names
    from clora3d.peft.registry import method_class

    assert method_names() == [
        "adapter",
        "bitfit",
        "clora",
        "dapt",
        "full",
        "idpt",
        "linear",
        "lora",
        "pointgst",
        "pointlora",
        "prompt",
    ]
    assert config_class("lora") is LoRAConfig and method_class("clora") is CLoRA
    with pytest.raises(ConfigError, match=r"unknown peft method NAME 'clorra'; did you mean 'clora'\?"):
        config_class("clorra")
    cfg = build_config({"NAME": "lora", "rank": 2, "targets": ["fc2", "qkv"]})
    assert cfg == LoRAConfig(rank=2, targets=["qkv", "fc2"])  # targets in block order
    # a validated config instance and the equivalent mapping build the same method
    a = apply_peft(copy.deepcopy(base), LoRAConfig(rank=2, layers=[1]))
    b = apply_peft(copy.deepcopy(base), {"NAME": "lora", "rank": 2, "layers": [1]})
    assert type(a) is LoRA and a.config == b.config == {
        "NAME": "lora",
        "rank": 2,
        "alpha": 8.0,
        "dropout": 0.0,
        "targets": ["qkv", "proj"],
        "layers": [1],
        "rslora": False,
        "extra_trainable": [],
        "frozen_bn": "train",
    }
    assert a.cfg == LoRAConfig(rank=2, layers=[1])
    with pytest.raises(TypeError, match="takes a CLoRAConfig, got LoRAConfig"):
        CLoRA(copy.deepcopy(base), LoRAConfig())
    with pytest.raises(ConfigError, match="in the run file"):
        apply_peft(copy.deepcopy(base), {"NAME": "clora", "rank": 0}, where=lambda p: "the run file")
    assert CLoRAConfig().targets == ["qkv", "fc1"] and CLoRAConfig(placement="parallel").targets == ["qkv", "proj"]


def test_register_method_refuses_a_config_class_twice():
    from clora3d.peft import LoRA
    from clora3d.peft.registry import register_method

    class Twin(LoRA):
        name = "lora_twin"

    with pytest.raises(TypeError, match="already 'lora'"):
        register_method(Twin)

    class Nameless(LoRA):
        name = ""

    with pytest.raises(TypeError, match="needs a name"):
        register_method(Nameless)

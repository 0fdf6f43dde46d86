"""The PEFT interface's public edges (peft/base.py, registry.py, adapter_io.py, config.py) on the cases
mutation testing left unguarded (tools/mutate.py, group peft_base): the adapter file's messages, warnings
and log line, hash_tensors' input rules, the config helpers, make_head, the registry's errors and the
thin PeftMethod delegations. Expected values are hand-written or come from hashlib/torch directly."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import warnings

import pytest
import torch
from torch import nn

import clora3d
from clora3d.errors import CheckpointError, ConfigError
from clora3d.models import PartSegModel, PointTransformer
from clora3d.peft import adapter_io, apply_peft, load_adapter, registry
from clora3d.peft.adapter_io import hash_tensors
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec
from clora3d.peft.lora import LoRA, LoRAConfig
from clora3d.schema import field_docs, validate
from clora3d.storage import atomic_torch_save, safe_torch_load

pytestmark = pytest.mark.usefixtures("one_thread")

KNOWN = "['adapter', 'bitfit', 'clora', 'dapt', 'full', 'idpt', 'linear', 'lora', 'pointgst', 'pointlora', 'prompt']"


def _tiny(seed: int = 0, cls_dim: int = 5) -> PointTransformer:
    torch.manual_seed(seed)
    return PointTransformer.from_preset("tiny", cls_dim=cls_dim).eval()


def _saved(tmp_path, cfg=None):
    """(base model, adapted copy's method with a non-zero update, adapter path)."""
    base = _tiny()
    method = apply_peft(copy.deepcopy(base), cfg or {"NAME": "lora", "rank": 2})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in method.peft_params.values():
            p.copy_(torch.randn(p.shape, generator=g))
    return base, method, method.save_adapter(tmp_path / "a.pt")


def _rewrite(path, edit):
    blob = safe_torch_load(path)
    edit(blob)
    atomic_torch_save(blob, path)


def _sha(named) -> str:
    h = hashlib.sha256()
    for name, t in named:  # in the order given
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()


def _under_mutmut(fn) -> bool:
    """mutmut's trampoline (functools.wraps) adds two frames between a caller and the function body."""
    return hasattr(fn, "__wrapped__")


# ------------------------------------------------------------------------------ hash_tensors
def test_hash_tensors_sorts_by_name_only_and_keeps_equal_names_in_input_order():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.5, -1.0], [7.0, 0.0]])
    # the tensors themselves are never compared: equal names keep the order they came in
    assert hash_tensors([("w", a), ("w", b)]) == _sha([("w", a), ("w", b)])
    assert hash_tensors([("w", b), ("w", a)]) == _sha([("w", b), ("w", a)])
    one, two = torch.tensor([2.0]), torch.tensor([1.0])
    assert hash_tensors([("v", one), ("v", two)]) == _sha([("v", one), ("v", two)])
    # distinct names: any input order gives the hash of the name-sorted list
    c = torch.arange(3, dtype=torch.int32)
    ref = _sha([("a", a), ("b", b), ("c", c)])
    for order in ([("c", c), ("a", a), ("b", b)], [("b", b), ("c", c), ("a", a)], [("a", a), ("b", b), ("c", c)]):
        assert hash_tensors(order) == ref
    assert hash_tensors(iter([("b", b), ("a", a), ("c", c)])) == ref  # any iterable, read once


class _OnDevice(torch.Tensor):
    """A tensor that acts like one on an accelerator: its bytes can be read (``numpy()``) only from a
    copy made with ``.to("cpu")``, as with a CUDA tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert a device tensor to numpy: copy it to the CPU first")
        if func is torch.Tensor.to:
            dev = args[1] if len(args) > 1 else kwargs.get("device")
            if isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cpu":
                with torch._C.DisableTorchFunctionSubclass():
                    return args[0].clone()  # a plain CPU tensor
            return args[0]  # stays on the device
        return super().__torch_function__(func, types, args, kwargs)


def test_hash_tensors_reads_a_device_tensor_through_its_cpu_copy():
    w = torch.linspace(-1, 1, 12).reshape(3, 4)
    on_device = w.clone().as_subclass(_OnDevice)
    with pytest.raises(TypeError, match="copy it to the CPU"):
        on_device.reshape(-1).numpy()  # the stand-in really refuses a direct read
    assert hash_tensors([("w", on_device), ("b", torch.ones(2))]) == _sha([("b", torch.ones(2)), ("w", w)])


@pytest.mark.cuda
def test_hash_tensors_is_device_independent_on_cuda():
    w = torch.linspace(-1, 1, 12).reshape(3, 4)
    assert hash_tensors([("w", w.cuda())]) == hash_tensors([("w", w)]) == _sha([("w", w)])


# ------------------------------------------------------------------------------ adapter files
def test_metadata_of_a_model_without_config_records_an_empty_model_config(tmp_path):
    model = _tiny()
    del model.config  # a backbone that records no constructor arguments
    m = apply_peft(model, {"NAME": "lora", "rank": 2})
    meta = m.metadata()
    assert meta == {
        "format": "clora3d-adapter",
        "format_version": 1,
        "method": "lora",
        "config": {
            "extra_trainable": [],
            "frozen_bn": "train",
            "rank": 2,
            "alpha": 8.0,
            "dropout": 0.0,
            "targets": ["qkv", "proj"],
            "layers": [0, 1, 2, 3],
            "rslora": False,
            "NAME": "lora",
        },
        "clora3d_version": clora3d.__version__,
        "torch_version": str(torch.__version__),
        "base_hash": m.base_hash,
        "base_hash_numel": m.num_frozen_hashed,
        "model_config": {},
    }
    path = m.save_adapter(tmp_path / "noconfig.pt")
    assert torch.load(path, weights_only=True)["metadata"] == meta


def test_method_metadata_is_what_the_file_records(tmp_path):
    base, m, path = _saved(tmp_path)
    meta = m.metadata()
    assert meta == torch.load(path, weights_only=True)["metadata"]
    assert meta["method"] == "lora" and meta["base_hash"] == m.base_hash and meta["config"]["rank"] == 2
    assert meta["model_config"]["cls_dim"] == 5


def test_load_adapter_classmethod_loads_the_file_onto_the_given_model(tmp_path):
    base, m, path = _saved(tmp_path)
    for cls in (LoRA, PeftMethod):
        model = copy.deepcopy(base)
        loaded = cls.load_adapter(model, path)
        assert type(loaded) is LoRA and loaded.model is model and model._clora3d_peft is loaded
        got, want = loaded.adapter_state_dict(), m.adapter_state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_load_adapter_lists_the_first_ten_missing_keys(tmp_path):
    base, m, path = _saved(tmp_path)
    keys = sorted(m.adapter_state_dict())
    gone = keys[:12]
    _rewrite(path, lambda b: [b["state"].pop(k) for k in gone])
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == f"{path}: adapter keys do not match method 'lora': missing {gone[:10]}, unexpected []"


def test_head_size_mismatch_hints_at_cls_dim(tmp_path):
    base, m, path = _saved(tmp_path)
    other = _tiny(cls_dim=6)
    other.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("cls_head")}, strict=False)
    with pytest.raises(CheckpointError) as info:
        load_adapter(other, path)
    # the first key of the file whose shape differs: the last Linear of the head (256 -> cls_dim)
    assert str(info.value) == (
        f"{path}: size mismatch for cls_head_finetune.8.weight: adapter (5, 256) vs model (6, 256) "
        "(build the model with the adapter's cls_dim)"
    )
    assert getattr(other, "_clora3d_peft", None) is None  # the failed load removed the method


def test_load_adapter_logs_the_file_and_method_at_debug(tmp_path, caplog):
    base, m, path = _saved(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="clora3d.peft.adapter_io"):
        load_adapter(copy.deepcopy(base), path)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == "clora3d.peft.adapter_io"]
    assert got == [("clora3d.peft.adapter_io", logging.DEBUG, f"loaded adapter {path} (method lora)")]


class _WarnSpy:
    """Records the arguments of every ``warnings.warn`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, message, category=None, stacklevel=1, **kwargs) -> None:
        self.calls.append((str(message), stacklevel))


def test_warnings_are_attributed_to_the_callers_frame(tmp_path, monkeypatch):
    base, m, path = _saved(tmp_path)
    _rewrite(path, lambda b: b["metadata"].update(clora3d_version="0.0.1"))
    pts = torch.rand(2, 128, 3, generator=torch.Generator().manual_seed(0))
    # the real warnings: the version warning points at this file, the line that called load_adapter
    with pytest.warns(UserWarning) as rec:
        load_adapter(copy.deepcopy(base), path)
    assert [str(w.message) for w in rec] == [f"{path} was written by clora3d 0.0.1, this is {clora3d.__version__}"]
    if not _under_mutmut(adapter_io.load_adapter):
        assert rec[0].filename == __file__
    # stacklevel=2 exactly (1 would name the library, 3 the caller's caller): what warn is asked for
    spy = _WarnSpy()
    monkeypatch.setattr(warnings, "warn", spy)
    load_adapter(copy.deepcopy(base), path)
    fresh = apply_peft(copy.deepcopy(base), {"NAME": "lora", "rank": 2})
    with torch.no_grad():
        for p in fresh.peft_params.values():
            p.fill_(0.5)
    diff = fresh.merge_and_verify(pts, atol=1e-12)
    assert spy.calls == [
        (f"{path} was written by clora3d 0.0.1, this is {clora3d.__version__}", 2),
        (f"peft method 'lora': merged outputs differ from unmerged by {diff:.3g} > 1e-12 (dtype torch.float32)", 2),
    ]


def test_merge_and_verify_default_tolerance_warns_above_1e_5_only():
    pts = torch.rand(2, 128, 3, generator=torch.Generator().manual_seed(0))

    def merged_off_by(offset: float):
        """A LoRA whose merge also shifts every logit by ``offset`` (a merge that is off by that much)."""
        model = _tiny()
        m = apply_peft(model, {"NAME": "lora", "rank": 2})
        merge = m._merge_weights

        def off():
            merge()
            model.cls_head_finetune[8].bias.add_(offset)

        m._merge_weights = off
        return m

    with pytest.warns(UserWarning) as rec:
        diff = merged_off_by(1e-3).merge_and_verify(pts)
    assert abs(diff - 1e-3) < 1e-6
    assert [str(w.message) for w in rec] == [
        f"peft method 'lora': merged outputs differ from unmerged by {diff:.3g} > 1e-05 (dtype torch.float32)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diff = merged_off_by(3e-6).merge_and_verify(pts)
    assert 1e-6 < diff < 1e-5


# ------------------------------------------------------------------------------ config helpers
def test_layers_spec_field():
    @dataclasses.dataclass
    class C:
        layers: list[int] | None = layers_spec()
        other: list[int] | None = layers_spec("my doc")

    assert validate(C, {}) == C(layers=None, other=None)  # null by default: every block
    assert validate(C, {"layers": [0, 3], "other": [2]}) == C(layers=[0, 3], other=[2])  # 0 is a block
    for data, message in [
        ({"layers": [1, -1]}, "config key 'layers.1' in <config> must be an integer >= 0, got -1"),
        (
            {"layers": []},
            "config key 'layers' in <config> must be a non-empty list of distinct block indices (>= 0) or null, got []",
        ),
        (
            {"other": [2, 2]},
            "config key 'other' in <config> must be a non-empty list of distinct block indices (>= 0) or null, "
            "got [2, 2]",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            validate(C, data)
        assert str(info.value) == message
    assert [(d.name, d.doc) for d in field_docs(C)] == [
        ("layers", "block indices; null = every block"),
        ("other", "my doc"),
    ]


def test_config_defaults_own_and_common():
    lora = {"rank": 8, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv", "proj"], "layers": None, "rslora": False}
    got = config_defaults(LoRAConfig)
    assert got == lora and list(got) == list(lora)
    assert config_defaults(LoRAConfig, own=True) == lora
    common = {"extra_trainable": [], "frozen_bn": "train"}
    assert config_defaults(LoRAConfig, own=False) == {**common, **lora}
    assert config_defaults(PeftConfig, own=False) == common
    assert config_defaults(PeftConfig) == {}
    # a factory default is called anew: the tables share no list with each other
    assert config_defaults(LoRAConfig)["targets"] is not config_defaults(LoRAConfig)["targets"]


# ------------------------------------------------------------------------------ PeftMethod
def test_method_built_from_a_plain_mapping_validates_it():
    m = LoRA(_tiny(), {"NAME": "lora", "rank": 3, "targets": ["fc1"]})
    assert type(m.cfg) is LoRAConfig and m.cfg.rank == 3 and m.cfg.targets == ["fc1"]
    assert m.config["NAME"] == "lora" and m.config["rank"] == 3
    m = LoRA(_tiny(), {"alpha": 2.0})  # without NAME
    assert m.cfg.alpha == 2.0 and m.cfg.rank == 8
    with pytest.raises(ConfigError) as info:
        LoRA(_tiny(), {"NAME": "lora", "rank": 0})
    assert str(info.value) == "config key 'peft.rank' in <config> must be a positive integer, got 0"
    with pytest.raises(TypeError) as info:
        LoRA(_tiny(), PeftConfig())
    assert str(info.value) == "peft method 'lora' takes a LoRAConfig, got PeftConfig"


def test_repr_names_class_method_trainable_count_and_merge_state():
    model = _tiny()
    m = apply_peft(model, {"NAME": "lora", "rank": 2})
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # LoRA r=2 on qkv (d=trans_dim -> 3d) and proj (d -> d) in 4 blocks, plus head and cls tokens
    d = m.dim
    head = sum(p.numel() for p in model.cls_head_finetune.parameters())
    assert n == 4 * 2 * ((d + 3 * d) + (d + d)) + head + 2 * d
    assert repr(m) == f"LoRA(name='lora', trainable={n}, merged=False)"
    m.merge()
    assert repr(m) == f"LoRA(name='lora', trainable={n}, merged=True)"


def test_base_examples_first_eight_names_with_the_listed_prefixes():
    names = [
        "encoder.w",
        "cls_token",
        "norm.weight",
        "normal.x",
        "blocks.blocks.0.attn.qkv.weight",
        "blocks.blocks.1.attn.qkv.weight",
        "pos_embed.0.weight",
        "pos_embed.1.weight",
        "cls_pos",
        "norm.bias",
        "blocks.blocks.0.mlp.fc1.weight",
        "pos_embed.0.bias",
        "cls_head_finetune.0.weight",
    ]
    assert PeftMethod._base_examples(dict.fromkeys(names)) == [
        "cls_token",
        "norm.weight",
        "blocks.blocks.0.attn.qkv.weight",
        "pos_embed.0.weight",
        "cls_pos",
        "norm.bias",
        "blocks.blocks.0.mlp.fc1.weight",
        "pos_embed.0.bias",
    ]
    assert PeftMethod._base_examples(dict.fromkeys(["norm.w", "pos_embed.0.b", "x"])) == ["norm.w", "pos_embed.0.b"]


def test_make_head_is_a_fresh_head_with_a_wider_input():
    model = _tiny()
    m = apply_peft(model, {"NAME": "lora"})
    head = model.cls_head_finetune
    with torch.no_grad():  # mark the trained head: nothing of it may leak into the new one
        for mod in head.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.fill_(5.0)
                mod.bias.fill_(5.0)
            elif isinstance(mod, nn.BatchNorm1d):
                mod.weight.fill_(3.0)
                mod.bias.fill_(3.0)
                mod.running_mean.fill_(2.0)
                mod.running_var.fill_(4.0)
                mod.num_batches_tracked.fill_(7)
    new = m.make_head(40)
    assert [type(x) for x in new] == [type(x) for x in head]
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in head.named_parameters()]
    assert (new[0].in_features, new[0].out_features, new[0].bias is not None) == (40, 256, True)
    for mod in new.modules():
        if isinstance(mod, nn.Linear):  # nn.Linear's default init: |w|, |b| <= 1 / sqrt(fan_in)
            bound = 1 / mod.in_features**0.5
            assert float(mod.weight.detach().abs().max()) <= bound and float(mod.bias.detach().abs().max()) <= bound
        elif isinstance(mod, nn.BatchNorm1d):
            assert torch.equal(mod.weight, torch.ones(256)) and torch.equal(mod.bias, torch.zeros(256))
            assert torch.equal(mod.running_mean, torch.zeros(256)) and torch.equal(mod.running_var, torch.ones(256))
            assert int(mod.num_batches_tracked) == 0
    assert float(head[4].weight.detach().min()) == 5.0 and float(head[1].running_mean.min()) == 2.0  # untouched
    assert not {id(p) for p in new.parameters()} & {id(p) for p in head.parameters()}


def test_make_head_keeps_the_first_layers_class_when_it_is_built_like_nn_linear():
    from clora3d.models.transformer import Linear

    class Scaled(nn.Linear):  # another constructor: make_head cannot know its arguments
        def __init__(self, in_features: int, out_features: int, scale: float) -> None:
            super().__init__(in_features, out_features)
            self.scale = scale

    model = _tiny()
    assert type(model.cls_head_finetune[0]) is Linear
    assert type(apply_peft(model, {"NAME": "lora"}).make_head(9)[0]) is Linear
    model = _tiny()
    model.cls_head_finetune[0] = Scaled(model.cls_head_finetune[0].in_features, 256, 2.0)
    new = apply_peft(model, {"NAME": "lora"}).make_head(9)
    assert type(new[0]) is nn.Linear and new[0].in_features == 9


def test_make_head_keeps_a_bias_free_first_layer():
    model = _tiny()
    model.cls_head_finetune[0] = nn.Linear(model.cls_head_finetune[0].in_features, 256, bias=False)
    new = apply_peft(model, {"NAME": "lora"}).make_head(9)
    assert (new[0].in_features, new[0].out_features, new[0].bias) == (9, 256, None)


def test_make_head_follows_the_backbone_dtype_and_device():
    model = _tiny().double()
    new = apply_peft(model, {"NAME": "lora"}).make_head(9)
    assert {p.dtype for p in new.parameters()} == {torch.float64}
    model = _tiny()
    m = apply_peft(model, {"NAME": "lora"})
    model.to("meta")  # another device than the CPU the new first Linear is built on
    new = m.make_head(9)
    assert {p.device.type for p in new.parameters()} | {b.device.type for b in new.buffers()} == {"meta"}


def test_make_head_needs_a_sequential_starting_with_a_linear():
    seg = apply_peft(PartSegModel.from_preset("tiny").eval(), {"NAME": "lora"})
    with pytest.raises(ValueError) as info:
        seg.make_head(8)
    assert str(info.value) == (
        "peft method 'lora' needs a classification model whose cls_head_finetune is a Sequential "
        "starting with a Linear (got PartSegModel)"
    )
    for bad in (nn.Sequential(nn.ReLU(), nn.Linear(4, 5)), nn.Linear(4, 5)):
        model = _tiny()
        m = apply_peft(model, {"NAME": "lora"})
        model.cls_head_finetune = bad
        with pytest.raises(ValueError) as info:
            m.make_head(8)
        assert str(info.value).endswith("is a Sequential starting with a Linear (got PointTransformer)")


# ------------------------------------------------------------------------------ registry
def test_register_method_checks_and_registers(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    class TestCfg(PeftConfig):
        pass

    class Good(PeftMethod):
        name = "test_good"
        config_class = TestCfg

    assert registry.register_method(Good) is Good and registry.METHODS["test_good"] is Good
    assert registry.register_method(Good) is Good  # the same name again: replaced, not a conflict
    need = "a registered PEFT method needs a name and a PeftConfig config_class"
    for cls_name, name, config_class in [
        ("NoName", "", TestCfg),
        ("NotAConfig", "test_int", int),
        ("NotAType", "test_str", "TestCfg"),
    ]:
        bad = type(cls_name, (PeftMethod,), {"name": name, "config_class": config_class})
        with pytest.raises(TypeError) as info:
            registry.register_method(bad)
        assert str(info.value) == f"{cls_name}: {need}"
    twin = type("Twin", (PeftMethod,), {"name": "test_twin", "config_class": TestCfg})
    with pytest.raises(TypeError) as info:
        registry.register_method(twin)
    assert str(info.value) == "Twin: config class TestCfg is already 'test_good''s"
    assert "test_twin" not in registry.METHODS and "test_int" not in registry.METHODS


def test_registry_errors_exact():
    with pytest.raises(ConfigError) as info:
        registry.method_class("zzzzzz")  # nothing close: no suggestion
    assert str(info.value) == f"unknown peft method NAME 'zzzzzz'; known: {KNOWN}"
    with pytest.raises(ConfigError) as info:
        registry.method_class("bitfitt")
    assert str(info.value) == f"unknown peft method NAME 'bitfitt'; did you mean 'bitfit'?; known: {KNOWN}"
    with pytest.raises(TypeError) as info:
        registry.name_of(PeftConfig())
    assert str(info.value) == "PeftConfig is not the config class of a registered PEFT method"
    assert registry.name_of(LoRAConfig()) == "lora"
    for cfg, shown in [({"rank": 2}, "{'rank': 2}"), (["lora"], "['lora']"), ("lora", "'lora'")]:
        with pytest.raises(ConfigError) as info:
            registry.build_config(cfg)
        assert str(info.value) == f"peft config must be a mapping with a NAME key in {KNOWN}, got {shown}"
    assert registry.build_config({"NAME": "lora", "rank": 4}) == LoRAConfig(rank=4)

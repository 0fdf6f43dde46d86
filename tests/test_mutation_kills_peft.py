"""PEFT interface on the cases mutation testing (tools/mutate.py, groups peft_*) and hand-made
mutations found unguarded. Expected values are hand-computed or come from plain torch/hashlib."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

from clora3d.errors import CheckpointError
from clora3d.models import PointTransformer
from clora3d.peft import apply_peft, load_adapter
from clora3d.peft.base import hash_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0) -> PointTransformer:
    torch.manual_seed(seed)
    return PointTransformer.from_preset("tiny", cls_dim=5).eval()


def test_hash_tensors_is_sha256_of_sorted_names_dtypes_shapes_and_raw_bytes():
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7
    b = torch.tensor([3, -1], dtype=torch.int64)
    e = torch.zeros(0, 4)
    h = hashlib.sha256()
    for name, t in (("a", a), ("b", b), ("e", e)):  # sorted by name
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    assert hash_tensors([("e", e), ("b", b), ("a", a)]) == h.hexdigest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_sees_a_one_ulp_change_anywhere(dtype):
    t = torch.linspace(-1, 1, 24, dtype=dtype).reshape(4, 6)
    ref = hash_tensors([("w", t)])
    for flat in (0, 7, 23):
        u = t.clone().reshape(-1)
        u[flat] = torch.nextafter(u[flat], torch.tensor(2.0, dtype=dtype))
        assert hash_tensors([("w", u.reshape(4, 6))]) != ref, flat
    # same bytes, other shape or dtype: a different base too
    assert hash_tensors([("w", t.reshape(6, 4))]) != ref
    assert hash_tensors([("v", t)]) != ref


def test_adapter_refuses_a_base_one_ulp_away(tmp_path):
    base = _tiny()
    method = apply_peft(copy.deepcopy(base), {"NAME": "clora"})
    path = method.save_adapter(tmp_path / "clora.pt")
    other = copy.deepcopy(base)
    with torch.no_grad():
        w = other.blocks.blocks[1].attn.proj.weight
        w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(10.0))
    with pytest.raises(CheckpointError, match="different base weights"):
        load_adapter(other, path)
    load_adapter(copy.deepcopy(base), path)  # the untouched base loads


# ------------------------------------------------------------------------------ config messages
K = "config key 'peft."
LAYERS = "must be a non-empty list of distinct block indices (>= 0) or null"
TARGETS = "must be a non-empty list of distinct names from ['qkv', 'proj', 'fc1', 'fc2']"


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"NAME": "lora", "rank": 0}, K + "rank' in <config> must be a positive integer, got 0"),
        ({"NAME": "lora", "alpha": -1.0}, K + "alpha' in <config> must be a positive number, got -1.0"),
        ({"NAME": "lora", "dropout": 1.0}, K + "dropout' in <config> must be a number in [0, 1), got 1.0"),
        ({"NAME": "lora", "dropout": -0.1}, K + "dropout' in <config> must be a number in [0, 1), got -0.1"),
        ({"NAME": "lora", "rank": 2.0}, K + "rank' in <config> must be a positive integer, got 2.0"),
        ({"NAME": "lora", "rslora": 1}, K + "rslora' in <config> must be true or false, got 1"),
        ({"NAME": "lora", "layers": []}, K + "layers' in <config> " + LAYERS + ", got []"),
        ({"NAME": "lora", "layers": [0, True]}, K + "layers.1' in <config> must be an integer >= 0, got True"),
        ({"NAME": "lora", "layers": [0, 4, -1]}, K + "layers.2' in <config> must be an integer >= 0, got -1"),
        ({"NAME": "lora", "layers": [0, 4]}, "peft method 'lora': layers [4] out of range for a backbone with depth 4"),
        ({"NAME": "lora", "layers": [1, 1]}, K + "layers' in <config> " + LAYERS + ", got [1, 1]"),
        ({"NAME": "lora", "targets": []}, K + "targets' in <config> " + TARGETS + ", got []"),
        ({"NAME": "lora", "targets": ["qkv", 3]}, K + "targets.1' in <config> must be a string, got 3"),
        ({"NAME": "lora", "targets": ["qkv", "fc3"]}, K + "targets' in <config> " + TARGETS + ", got ['qkv', 'fc3']"),
        ({"NAME": "lora", "targets": ["fc1", "fc1"]}, K + "targets' in <config> " + TARGETS + ", got ['fc1', 'fc1']"),
        ({"NAME": "lora", "frozen_bn": "off"}, K + "frozen_bn' in <config> must be train | eval, got 'off'"),
        (
            {"NAME": "lora", "extra_trainable": ["norm", ""]},
            K + "extra_trainable' in <config> must be a list of parameter/module names, got ['norm', '']",
        ),
        (
            {"NAME": "lora", "rnak": 4},
            "unknown config key 'peft.rnak' in <config>; did you mean 'rank'? (known keys of "
            "'peft': alpha, dropout, extra_trainable, frozen_bn, layers, rank, rslora, targets)",
        ),
        (
            {"NAME": "lorra"},
            "unknown peft method NAME 'lorra'; did you mean 'lora'?; known: ['adapter', 'bitfit', "
            "'clora', 'dapt', 'full', 'idpt', 'linear', 'lora', 'pointgst', 'pointlora', 'prompt']",
        ),
    ],
)
def test_config_errors_exact(cfg, message):
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        apply_peft(_tiny(), cfg)
    assert str(info.value) == message


def test_config_accepts_boundaries_and_sorts_layers():
    m = apply_peft(_tiny(), {"NAME": "lora", "dropout": 0.0, "layers": [3, 0], "targets": ["fc2", "qkv"], "alpha": 1})
    assert m.config["alpha"] == 1.0 and isinstance(m.config["alpha"], float)
    assert m.layers == [0, 3] and m.targets == ["qkv", "fc2"]


def test_long_config_values_are_shortened_in_messages():
    from clora3d.errors import ConfigError
    from clora3d.schema import short_repr as _short

    assert _short(list(range(20))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"
    assert _short([[[[1]]]]) == "[[[[...]]]]"
    assert _short("x" * 300) == "'" + "x" * 57 + "..." + "x" * 58 + "'"  # 120 characters
    assert _short(tuple(range(20))) == "(0, 1, 2, 3, 4, 5, 6, 7, ...)"
    assert _short({i: 0 for i in range(20)}) == "{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, ...}"

    class Long:
        def __repr__(self):
            return "L" * 300

    assert _short(Long()) == "L" * 58 + "..." + "L" * 59  # 120 characters
    assert _short(list(range(100)), limit=10) == "[0, 1, 2, ..."
    with pytest.raises(ConfigError) as info:
        apply_peft(_tiny(), {"NAME": "lora", "extra_trainable": ["no.such.module"]})
    msg = str(info.value)
    assert msg.startswith(
        "peft method 'lora': extra_trainable entry 'no.such.module' is neither a parameter name "
        "nor a module name of the backbone (example names: ['cls_token', 'cls_pos', "
    )
    examples = eval(msg[msg.index("(example names: ") + len("(example names: ") : -1])  # noqa: S307
    assert len(examples) == 8
    assert all(n.startswith(("cls_", "norm.", "blocks.blocks.0.", "pos_embed.0")) for n in examples)


# ------------------------------------------------------------------------------ adapter files
def _saved(tmp_path, cfg=None):
    base = _tiny()
    method = apply_peft(copy.deepcopy(base), cfg or {"NAME": "lora", "rank": 2})
    path = method.save_adapter(tmp_path / "a.pt")
    return base, method, path


def _rewrite(path, edit):
    """Edit an adapter file and write it back with a fresh checksum (a consistent but wrong file)."""
    from clora3d.storage import atomic_torch_save, safe_torch_load

    blob = safe_torch_load(path)
    edit(blob)
    atomic_torch_save(blob, path)


def test_metadata_records_what_the_file_needs(tmp_path):
    import clora3d

    base, method, path = _saved(tmp_path)
    meta = torch.load(path, weights_only=True)["metadata"]
    frozen = [p for n, p in base.named_parameters() if n not in method.trainable_parameters()]
    assert meta["format"] == "clora3d-adapter" and meta["format_version"] == 1 and meta["method"] == "lora"
    assert meta["clora3d_version"] == clora3d.__version__ and meta["torch_version"] == str(torch.__version__)
    assert meta["base_hash"] == method.base_hash and len(meta["base_hash"]) == 64
    assert meta["base_hash_numel"] == sum(p.numel() for p in frozen)
    assert meta["config"]["rank"] == 2 and meta["config"]["NAME"] == "lora"
    assert meta["model_config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in base.config.items()}


def test_load_adapter_errors_exact(tmp_path):
    base, method, path = _saved(tmp_path)
    _rewrite(path, lambda b: b["metadata"].update(format_version=7))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == f"{path}: adapter format version 7 is not supported (this clora3d reads version 1)"

    _, _, path = _saved(tmp_path)
    _rewrite(path, lambda b: b["metadata"]["config"].update(rank=0))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == (
        f"{path}: the stored method config is not valid here: "
        "config key 'peft.rank' in the adapter's metadata must be a positive integer, "
        "got 0"
    )

    _, m, path = _saved(tmp_path)
    key = sorted(m.adapter_state_dict())[0]
    _rewrite(path, lambda b: b["state"].pop(key))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == f"{path}: adapter keys do not match method 'lora': missing [{key!r}], unexpected []"

    _saved(tmp_path)
    _rewrite(path, lambda b: b["state"].update(extra=torch.zeros(1)))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == f"{path}: adapter keys do not match method 'lora': missing [], unexpected ['extra']"

    _saved(tmp_path)
    _rewrite(path, lambda b: b["state"].update({f"x{i:02d}": torch.zeros(1) for i in range(12)}))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value).endswith(f"unexpected {[f'x{i:02d}' for i in range(10)]}")

    other = copy.deepcopy(base)
    with torch.no_grad():
        other.norm.weight.add_(1.0)
    _saved(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_adapter(other, path)
    other_hash = hash_tensors(
        [
            (n, p)
            for n, p in other.named_parameters()
            if n in dict(base.named_parameters()) and n not in m.trainable_parameters()
        ]
    )
    assert str(info.value) == (
        f"{path}: adapter was trained on different base weights (frozen-parameter hash {m.base_hash[:12]}..., "
        f"this model {other_hash[:12]}...). Load the same pre-trained checkpoint into the model before load_adapter"
    )


def test_load_adapter_warns_on_another_clora3d_version(tmp_path):
    base, m, path = _saved(tmp_path)
    _rewrite(path, lambda b: b["metadata"].update(clora3d_version="0.0.1"))
    import clora3d

    with pytest.warns(UserWarning) as rec:
        load_adapter(copy.deepcopy(base), path)
    assert [str(w.message) for w in rec] == [f"{path} was written by clora3d 0.0.1, this is {clora3d.__version__}"]
    assert not rec[0].filename.endswith(("peft/base.py", "peft\\base.py"))  # points past the library
    _, _, path = _saved(tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(copy.deepcopy(base), path)  # same version: silent


def test_size_mismatch_names_the_key(tmp_path):
    base, m, path = _saved(tmp_path)
    key = next(k for k in m.adapter_state_dict() if "lora" in k.lower() or "blocks" in k)
    shape = tuple(m.adapter_state_dict()[key].shape)
    _rewrite(path, lambda b: b["state"].update({key: torch.zeros(*shape[:-1], shape[-1] + 1)}))
    with pytest.raises(CheckpointError) as info:
        load_adapter(copy.deepcopy(base), path)
    assert str(info.value) == (
        f"{path}: size mismatch for {key}: adapter {shape[:-1] + (shape[-1] + 1,)} vs model {shape}"
    )


def test_config_type_rules_exact():
    from clora3d.errors import ConfigError
    from clora3d.peft import DEFAULTS

    for cfg, message in [
        ({"alpha": True}, "config key 'peft.alpha' in <config> must be a positive number, got True"),
        ({"alpha": "x"}, "config key 'peft.alpha' in <config> must be a positive number, got 'x'"),
        ({"targets": "qkv"}, "config key 'peft.targets' in <config> must be a list of strings, got 'qkv'"),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_peft(_tiny(), {"NAME": "lora", **cfg})
        assert str(info.value) == message
    m = apply_peft(_tiny(), {"NAME": "lora", "targets": ("fc1",)})
    assert type(m.config["targets"]) is list and m.config["targets"] == ["fc1"]
    # the resolved config is the method's own: editing it leaves the defaults alone
    m = apply_peft(_tiny(), {"NAME": "lora"})
    m.config["targets"].append("fc2")
    assert DEFAULTS["lora"]["targets"] == ["qkv", "proj"]
    assert apply_peft(_tiny(), {"NAME": "lora"}).targets == ["qkv", "proj"]


# ------------------------------------------------------------------------------ merge / remove
def test_merge_state_errors_exact():
    m = apply_peft(_tiny(), {"NAME": "lora", "rank": 2})
    with pytest.raises(RuntimeError) as info:
        m.unmerge()
    assert str(info.value) == "peft method 'lora': not merged"
    m.merge()
    with pytest.raises(RuntimeError) as info:
        m.merge()
    assert str(info.value) == "peft method 'lora': already merged"
    m.unmerge()
    assert m.merged is False
    m.merge()  # merge again after an unmerge
    assert m.merged is True
    p = apply_peft(_tiny(), {"NAME": "adapter"})
    with pytest.raises(NotImplementedError) as info:
        p.merge()
    assert str(info.value) == (
        "peft method 'adapter' cannot be merged into the backbone (its update is not a "
        "linear map of the frozen weights); ship the adapter file instead"
    )


def test_merge_and_verify_warns_only_above_atol():
    import warnings

    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0))
    base = _tiny()

    def fresh():
        m = apply_peft(copy.deepcopy(base), {"NAME": "lora", "rank": 2})
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for q in m.peft_params.values():
                q.add_(torch.randn(q.shape, generator=g))
        return m

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a zero update (B = 0 at init) merges to the same weights: difference 0, equal to atol=0,
        # which is no reason to warn
        assert apply_peft(copy.deepcopy(base), {"NAME": "lora"}).merge_and_verify(pts, atol=0.0) == 0.0
    with pytest.warns(UserWarning) as rec:
        diff = fresh().merge_and_verify(pts, atol=1e-12)
    assert diff > 1e-12
    assert [str(w.message) for w in rec] == [
        f"peft method 'lora': merged outputs differ from unmerged by {diff:.3g} > 1e-12 (dtype torch.float32)"
    ]
    assert not rec[0].filename.endswith(("peft/base.py", "peft\\base.py"))


def test_remove_restores_swapped_modules_and_trainability():
    base = _tiny()
    model = copy.deepcopy(base).train()
    pool, head = model.pool if hasattr(model, "pool") else None, model.cls_head_finetune
    m = apply_peft(model, {"NAME": "dapt"})
    assert model.cls_head_finetune is not head or (pool is not None and model.pool is not pool)
    model.eval()  # the swapped-out originals miss this
    m.remove()
    assert model.cls_head_finetune is head and (pool is None or model.pool is pool)
    assert not head.training and (pool is None or not pool.training)
    assert all(p.requires_grad for p in model.parameters())
    assert getattr(model, "_clora3d_peft", None) is None
    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(pts), base(pts), rtol=0, atol=0)


def test_remove_of_a_merged_method_restores_the_exact_weights():
    base = _tiny()
    model = copy.deepcopy(base)
    m = apply_peft(model, {"NAME": "lora", "rank": 2})
    with torch.no_grad():
        for q in m.peft_params.values():
            q.add_(1.0)
    m.merge()
    m.remove()
    sd, ref = model.state_dict(), base.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_config_bounds_accept_the_boundaries():
    from clora3d.errors import ConfigError

    # >= 0 takes 0, > 0 takes a tiny positive number, [0, 1) takes 0 and 0.999
    m = apply_peft(_tiny(), {"NAME": "clora", "sade_lambda": 0, "sade_eps": 0.0, "dropout": 0.999})
    assert m.cfg.sade_lambda == 0.0 and m.cfg.dropout == 0.999
    m = apply_peft(_tiny(), {"NAME": "lora", "alpha": 1e-9, "dropout": 0.0})
    assert m.cfg.alpha == 1e-9
    for cfg, message in [
        ({"NAME": "lora", "alpha": None}, "config key 'peft.alpha' in <config> must be a positive number, got None"),
        ({"NAME": "clora", "sade_eps": None}, "config key 'peft.sade_eps' in <config> must be a number >= 0, got None"),
        (
            {"NAME": "clora", "dropout": 1.5},
            "config key 'peft.dropout' in <config> must be a number in [0, 1), got 1.5",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_peft(_tiny(), cfg)
        assert str(info.value) == message


def test_forward_losses_sum_replace_and_reset():
    model = _tiny().train()
    m = apply_peft(model, {"NAME": "lora"})
    assert float(m.regularization_loss()) == 0.0
    m.record_forward_loss("a", torch.tensor(2.0), model)
    m.record_forward_loss("b", torch.tensor(3.0, dtype=torch.float64), model)
    m.record_forward_loss("a", torch.tensor(5.0), model)  # replaces the unread "a"
    total = m.pop_forward_losses()
    assert float(total) == 8.0 and total.dtype == torch.float32 and total.shape == ()
    assert float(m.pop_forward_losses()) == 0.0  # forgotten once read
    model.eval()
    m.record_forward_loss("a", torch.tensor(1.0), model)  # evaluation: nothing kept
    model.train()
    with torch.no_grad():
        m.record_forward_loss("a", torch.tensor(1.0), model)
    assert float(m.regularization_loss()) == 0.0


def test_head_parameter_names_from_head_prefixes():
    from torch import nn

    from clora3d.models.utils import head_parameter_ids, head_parameter_names

    class WithPrefixes(nn.Module):
        HEAD_PREFIXES = ("head.", "aux.")

        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2)
            self.head = nn.Linear(2, 3)
            self.header = nn.Linear(2, 2)  # shares the text "head" but is not the head module
            self.aux = nn.Sequential(nn.Linear(3, 1))

    assert head_parameter_names(WithPrefixes()) == ["head.weight", "head.bias", "aux.0.weight", "aux.0.bias"]

    class BadPrefixes(nn.Module):
        HEAD_PREFIXES = ("head", "aux.")

    with pytest.raises(ValueError) as info:
        head_parameter_names(BadPrefixes())
    assert str(info.value) == "BadPrefixes.HEAD_PREFIXES must be module names ending in '.', got ['head']"
    assert head_parameter_names(nn.Linear(2, 2)) == [] and head_parameter_ids(nn.Linear(2, 2)) == set()
    with pytest.raises(ValueError) as info:
        head_parameter_names(nn.Linear(2, 2), required=True)
    assert str(info.value) == "cannot tell the task head of Linear: it has neither head_parameters() nor HEAD_PREFIXES"
    model = _tiny()
    head = [n for n, _ in model.named_parameters() if n.startswith("cls_head_finetune.")]
    assert head_parameter_names(model) == head and len(head) == 10  # 3 Linear + 2 BatchNorm, weight and bias
    params = dict(model.named_parameters())
    assert head_parameter_ids(model) == {id(params[n]) for n in head}


def test_a_peft_method_needs_to_know_the_head(monkeypatch):
    """A model that declares no head (neither head_parameters() nor HEAD_PREFIXES) cannot be adapted:
    the method would not know which parameters to train besides its own."""
    from clora3d.models.backbone import PointTransformer
    from clora3d.models.utils import HeadSplitMixin

    model = _tiny()
    monkeypatch.delattr(HeadSplitMixin, "head_parameters")
    monkeypatch.delattr(HeadSplitMixin, "HEAD_PREFIXES")
    monkeypatch.delattr(PointTransformer, "HEAD_PREFIXES")
    with pytest.raises(ValueError, match="cannot tell the task head of PointTransformer"):
        apply_peft(model, {"NAME": "bitfit"})


def test_fan_in_uniform_is_nn_linear_default_bound():
    from clora3d.peft.base import fan_in_uniform_

    torch.manual_seed(0)
    w = torch.empty(1000, 100)
    fan_in_uniform_(w)
    # kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in) = 0.1
    assert 0.0999 < float(w.abs().max()) <= 0.1
    assert abs(float(w.mean())) < 1e-3


def test_adapter_file_errors_name_the_adapter(tmp_path):
    from clora3d.errors import StorageError
    from clora3d.peft import read_adapter
    from clora3d.storage import atomic_torch_save

    m = apply_peft(_tiny(), {"NAME": "lora"})
    with pytest.raises(StorageError) as info:
        m.save_adapter(tmp_path)
    assert str(info.value) == f"cannot write adapter {tmp_path}: it is a directory; give a file name"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as info:
        read_adapter(bad)
    assert f" adapter file {bad}: " in str(info.value)  # the file is named as an adapter file
    atomic_torch_save({"metadata": {"format": "clora3d-adapter"}, "state": [1]}, bad)
    with pytest.raises(CheckpointError) as info:
        read_adapter(bad)
    assert str(info.value) == (
        f"{bad} is not a clora3d adapter file (expected a dict with 'metadata' of format "
        "'clora3d-adapter' and 'state'); full checkpoints load with "
        "clora3d.models.checkpoint.load_pretrained"
    )
    with pytest.raises(FileNotFoundError) as info:
        read_adapter(tmp_path / "none.pt")
    assert str(info.value) == f"adapter file not found: {tmp_path / 'none.pt'}"


def test_extra_trainable_parameter_then_module_entries():
    model = _tiny()
    m = apply_peft(model, {"NAME": "lora", "extra_trainable": ["norm.weight", "blocks.blocks.2.mlp.fc2"]})
    got = set(m.trainable_parameters())
    assert {"norm.weight", "blocks.blocks.2.mlp.fc2.weight", "blocks.blocks.2.mlp.fc2.bias"} <= got
    assert "norm.bias" not in got and all(model.get_parameter(n).requires_grad for n in got)


def test_non_backbone_model_is_refused_by_name():
    from torch import nn

    with pytest.raises(ValueError) as info:
        apply_peft(nn.Linear(2, 2), {"NAME": "lora"})
    assert str(info.value) == (
        "peft method 'lora': the model has no transformer blocks 'blocks.blocks'; apply_peft "
        "expects a clora3d PointTransformer or PartSegModel (got Linear)"
    )


def test_refresh_base_hash_follows_the_loaded_weights():
    model = _tiny()
    m = apply_peft(model, {"NAME": "lora"})
    assert m.merged is False
    h0 = m.base_hash
    with torch.no_grad():
        model.blocks.blocks[0].attn.qkv.weight[0, 0] += 1.0
    trainable = set(m.trainable_parameters())
    frozen = [(n, p) for n, p in model.named_parameters() if n not in trainable]
    assert m.refresh_base_hash() == hash_tensors(frozen) != h0
    assert m.base_hash == hash_tensors(frozen) and m.num_frozen_hashed == sum(p.numel() for _, p in frozen)


def test_replace_module_on_a_nested_path_and_twice():
    from torch import nn

    model = _tiny().train()
    m = apply_peft(model, {"NAME": "lora"})
    original = model.blocks.blocks[1].mlp.fc2
    first, second = nn.Identity(), nn.Identity()
    m.replace_module("blocks.blocks.1.mlp.fc2", first.eval())
    assert model.blocks.blocks[1].mlp.fc2 is first and first.training  # follows the model's mode
    m.replace_module("blocks.blocks.1.mlp.fc2", second)
    assert model.blocks.blocks[1].mlp.fc2 is second
    model.eval()
    m.remove()
    assert model.blocks.blocks[1].mlp.fc2 is original and not original.training  # the first original comes back


def test_merge_and_verify_default_tolerance_is_1e_5():
    import inspect

    from clora3d.peft.base import PeftMethod

    assert inspect.signature(PeftMethod.merge_and_verify).parameters["atol"].default == 1e-5


# ------------------------------------------------------------------------------ CLoRA options
@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"placement": "inside"}, "config key 'peft.placement' in <config> must be pre_proj | parallel, got 'inside'"),
        ({"init": "normal"}, "config key 'peft.init' in <config> must be xavier | orthogonal, got 'normal'"),
        ({"rank": 0}, "config key 'peft.rank' in <config> must be a positive integer, got 0"),
        ({"num_spaces": 0}, "config key 'peft.num_spaces' in <config> must be a positive integer, got 0"),
        ({"sade_lambda": -0.1}, "config key 'peft.sade_lambda' in <config> must be a number >= 0, got -0.1"),
        ({"sade_eps": -1.0}, "config key 'peft.sade_eps' in <config> must be a number >= 0, got -1.0"),
        ({"dropout": 1.0}, "config key 'peft.dropout' in <config> must be a number in [0, 1), got 1.0"),
        (
            {"targets": ["proj"]},
            "config key 'peft.targets' in <config> must be a non-empty list of distinct names from ['qkv', 'fc1'], got "
            "['proj']",
        ),
        (
            {"placement": "parallel", "targets": ["fc1", "proj", "fc1"]},
            "config key 'peft.targets' in <config> must be a non-empty list of distinct names from ['qkv', 'proj', 'fc1', "
            "'fc2'], got ['fc1', 'proj', 'fc1']",
        ),
        ({"layers": [9]}, "peft method 'clora': layers [9] out of range for a backbone with depth 4"),
        (
            {"placement": "parallel", "bias": True},
            "peft method 'clora': bias: true with placement 'parallel' needs targets that have a bias to merge into, but "
            "blocks.blocks.0.attn.qkv has none; drop 'qkv' from targets or set bias: false",
        ),
    ],
)
def test_clora_config_errors_exact(cfg, message):
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        apply_peft(_tiny(), {"NAME": "clora", **cfg})
    assert str(info.value) == message


def test_clora_resolves_targets_and_layers_per_placement():
    m = apply_peft(_tiny(), {"NAME": "clora", "sade_lambda": 0.0, "sade_eps": 0.0, "layers": [2, 0]})
    assert m.config["targets"] == ["qkv", "fc1"] and m.config["layers"] == [0, 2]
    assert [(i, t) for i, t, _, _ in m.lrms] == [(0, "qkv"), (0, "fc1"), (2, "qkv"), (2, "fc1")]
    p = apply_peft(_tiny(), {"NAME": "clora", "placement": "parallel", "targets": ["fc2", "qkv"]})
    assert p.config["targets"] == ["qkv", "fc2"]
    assert apply_peft(_tiny(), {"NAME": "clora", "placement": "parallel"}).config["targets"] == ["qkv", "proj"]


def test_clora_not_a_linear_is_refused():
    from torch import nn

    from clora3d.errors import ConfigError

    model = _tiny()
    model.blocks.blocks[1].mlp.fc1 = nn.Identity()
    with pytest.raises(ConfigError) as info:
        apply_peft(model, {"NAME": "clora"})
    assert str(info.value) == "peft method 'clora': blocks.blocks.1.mlp.fc1 is not an nn.Linear"
    with pytest.raises(ConfigError) as info:
        apply_peft(model, {"NAME": "lora", "targets": ["fc1"]})
    assert str(info.value) == "peft method 'lora': blocks.blocks.1.mlp.fc1 is not an nn.Linear"


@pytest.mark.parametrize("extra", [{"bias": True}, {"bias": True, "placement": "parallel", "targets": ["fc1", "fc2"]}])
def test_clora_merge_with_bias_folds_exactly(extra):
    base = _tiny()
    model = copy.deepcopy(base)
    m = apply_peft(model, {"NAME": "clora", **extra})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for q in m.peft_params.values():
            q.add_(0.05 * torch.randn(q.shape, generator=g))
    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pts)
        m.merge()
        after = model(pts)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == set(base.state_dict())
    m.unmerge()
    m.remove()
    sd, ref = model.state_dict(), base.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


# ------------------------------------------------------------------------------ BitFit / full / linear
def _always(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("cls_head_finetune.")} | {"cls_token", "cls_pos"}


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"layers": [1]},
        {"layers": [1], "layernorm": False},
        {"final_norm": False, "layers": [0, 3]},
        {"embed": True, "layers": [2]},
    ],
)
def test_bitfit_trainable_set_by_hand(cfg):
    model = _tiny()
    m = apply_peft(model, {"NAME": "bitfit", **cfg})
    layers = cfg.get("layers", [0, 1, 2, 3])
    want = set(_always(model))
    for i in layers:  # the tiny backbone has no qkv bias
        want |= {
            f"blocks.blocks.{i}.attn.proj.bias",
            f"blocks.blocks.{i}.mlp.fc1.bias",
            f"blocks.blocks.{i}.mlp.fc2.bias",
        }
        if cfg.get("layernorm", True):
            want |= {f"blocks.blocks.{i}.norm1.bias", f"blocks.blocks.{i}.norm2.bias"}
    if cfg.get("final_norm", True):
        want.add("norm.bias")
    if cfg.get("embed", False):
        want |= {
            n
            for n, _ in model.named_parameters()
            if n.startswith(("encoder.", "pos_embed.", "reduce_dim.")) and n.endswith(".bias")
        }
    assert set(m.trainable_parameters()) == want
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    assert m.config["layers"] == sorted(layers)


def test_full_and_linear_trainable_sets_and_noop_merge():
    model = _tiny()
    full = apply_peft(model, {"NAME": "full"})
    assert set(full.trainable_parameters()) == {n for n, _ in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full.merge()
    full.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    full.remove()
    model2 = _tiny()
    lin = apply_peft(model2, {"NAME": "linear"})
    assert set(lin.trainable_parameters()) == _always(model2)
    lin.merge()
    assert all(torch.equal(v, before[k]) for k, v in model2.state_dict().items())


# ------------------------------------------------------------------------------ adapter / prompt
@pytest.mark.parametrize("inp", ["residual", "norm2"])
def test_adapter_block_output_written_out(inp):
    base = _tiny()
    model = copy.deepcopy(base)
    m = apply_peft(
        model, {"NAME": "adapter", "input": inp, "scale": 0.3, "bottleneck": 5, "dropout": 0.0, "layers": [1]}
    )
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for q in m.peft_params.values():
            q.add_(0.1 * torch.randn(q.shape, generator=g))
    x = torch.randn(2, 7, m.dim, generator=g)
    ref = base.blocks.blocks[1]
    A = m.adapters["1"]
    with torch.no_grad():
        h = x + ref.attn(ref.norm1(x))
        a_in = h if inp == "residual" else ref.norm2(h)
        want = ref(x) + 0.3 * A.up(torch.relu(A.down(a_in)))
        torch.testing.assert_close(model.blocks.blocks[1](x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.blocks.blocks[0](x), base.blocks.blocks[0](x), rtol=0, atol=0)
    assert [n for n in m.trainable_parameters() if n.startswith("peft.")] == [
        "peft.1.down.weight",
        "peft.1.down.bias",
        "peft.1.up.weight",
        "peft.1.up.bias",
    ]


def test_adapter_options_exact_and_zero_start():
    from clora3d.errors import ConfigError

    for name, cfg, message in [
        ("adapter", {"input": "output"}, "config key 'peft.input' in <config> must be residual | norm2, got 'output'"),
        ("adapter", {"bottleneck": 0}, "config key 'peft.bottleneck' in <config> must be a positive integer, got 0"),
        ("adapter", {"dropout": 1.0}, "config key 'peft.dropout' in <config> must be a number in [0, 1), got 1.0"),
        ("prompt", {"num_tokens": 0}, "config key 'peft.num_tokens' in <config> must be a positive integer, got 0"),
        ("prompt", {"init_std": 0.0}, "config key 'peft.init_std' in <config> must be a positive number, got 0.0"),
        ("prompt", {"dropout": -0.5}, "config key 'peft.dropout' in <config> must be a number in [0, 1), got -0.5"),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_peft(_tiny(), {"NAME": name, **cfg})
        assert str(info.value) == message
    m = apply_peft(_tiny(), {"NAME": "adapter", "bottleneck": 7})
    A = m.adapters["0"]
    down, up = A.down.weight.detach(), A.up.weight.detach()
    assert down.shape == (7, m.dim) and float(up.abs().sum()) == 0.0
    assert float(A.up.bias.detach().abs().sum()) == 0.0 and float(A.down.bias.detach().abs().sum()) == 0.0
    assert 0.9 / m.dim**0.5 < float(down.abs().max()) <= 1 / m.dim**0.5


@pytest.mark.parametrize("layers", [[0], [1, 3]])
def test_prompt_block_output_written_out(layers):
    base = _tiny()
    model = copy.deepcopy(base).eval()
    m = apply_peft(model, {"NAME": "prompt", "num_tokens": 3, "layers": layers})
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, m.dim, generator=g)
    with torch.no_grad():
        for k, i in enumerate(layers):
            pr = m.store.prompts[k].unsqueeze(0).expand(2, -1, -1)
            full = base.blocks.blocks[i](torch.cat([x[:, :1], pr, x[:, 1:]], 1))
            want = torch.cat([full[:, :1], full[:, 4:]], 1)
            torch.testing.assert_close(model.blocks.blocks[i](x), want, rtol=1e-5, atol=1e-6)
    assert m.store.prompts.shape == (len(layers), 3, m.dim)
    torch.manual_seed(0)
    big = apply_peft(_tiny(), {"NAME": "prompt", "num_tokens": 200, "init_std": 0.05})
    prompts = big.store.prompts.detach()
    assert abs(float(prompts.std()) - 0.05) < 0.005 and float(prompts.abs().max()) <= 2.0


# ------------------------------------------------------------------------------ CLoRA SADE / dropout / merge edges
def _brute_sade(method, normalize: bool, eps: float) -> torch.Tensor:
    """Every d x d component M_h^j = D_h Q_h^j U_h in float64, pair terms summed (written out again)."""
    total = torch.zeros((), dtype=torch.float64)
    for _, _, key, j in method.lrms:
        sp = method.spaces[key]
        D, U, Q = sp.D.detach().double(), sp.U.detach().double(), sp.Q.detach().double()[0 if sp.shared_q else j]
        M = [D[h] @ Q[h] @ U[h] for h in range(D.shape[0])]
        for a in range(len(M)):
            for b in range(a + 1, len(M)):
                v = torch.linalg.matrix_norm(M[a].T @ M[b]) ** 2
                if normalize:
                    v = v / (torch.linalg.matrix_norm(M[a]) ** 2 * torch.linalg.matrix_norm(M[b]) ** 2 + eps)
                total = total + v
    return total


def _randomize(m, std=0.3):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for q in m.peft_params.values():
            q.copy_(torch.randn(q.shape, generator=g) * std)


@pytest.mark.parametrize(
    "extra",
    [
        {"num_spaces": 2},
        {"num_spaces": 2, "sade_normalize": True, "sade_eps": 1.0},
        {"num_spaces": 2, "sade_normalize": True, "sade_eps": 1e9},
        {"num_spaces": 3, "sade_lambda": 1.0},
        {"num_spaces": 1},
    ],
)
def test_sade_small_p_lambda_one_and_large_eps(extra):
    m = apply_peft(_tiny(), {"NAME": "clora", "sade_lambda": 0.5, "sade_normalize": False, **extra})
    _randomize(m)
    want = m.config["sade_lambda"] * _brute_sade(m, m.config["sade_normalize"], m.config["sade_eps"])
    got = m.regularization_loss()
    if extra["num_spaces"] == 1:
        assert float(got) == 0.0 and float(want) == 0.0  # no pair of components
    else:
        assert float(want) > 0
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("placement", ["pre_proj", "parallel"])
def test_clora_dropout_acts_in_training_only(placement):
    model = _tiny()
    m = apply_peft(model, {"NAME": "clora", "placement": placement, "dropout": 0.5})
    _randomize(m)
    x = torch.randn(2, 7, m.dim, generator=torch.Generator().manual_seed(1))
    blk = model.blocks.blocks[0]
    blk.train()
    torch.manual_seed(0)
    a = blk(x)
    torch.manual_seed(1)
    b = blk(x)
    assert not torch.allclose(a, b)  # a fresh dropout mask per call
    blk.eval()
    torch.testing.assert_close(blk(x), blk(x), rtol=0, atol=0)
    m0 = apply_peft(copy.deepcopy(_tiny()), {"NAME": "clora", "placement": placement, "dropout": 0.0})
    with torch.no_grad():
        for (_n, q), (_, q0) in zip(m.peft_params.items(), m0.peft_params.items()):
            q0.copy_(q)
    blk0 = m0.model.blocks.blocks[0].eval()
    torch.testing.assert_close(blk(x), blk0(x), rtol=1e-6, atol=1e-6)  # eval: dropout is the identity


def test_clora_merge_twice_and_bias_without_a_place_to_fold():
    from torch import nn

    model = _tiny()
    m = apply_peft(model, {"NAME": "clora", "bias": True})
    _randomize(m, 0.05)
    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pts)
        m.merge()
        m.unmerge()
        m.merge()
        torch.testing.assert_close(model(pts), before, rtol=1e-4, atol=1e-5)
    model2 = _tiny()
    model2.blocks.blocks[0].norm1 = nn.LayerNorm(model2.blocks.blocks[0].norm1.normalized_shape, bias=False)
    m2 = apply_peft(model2, {"NAME": "clora", "bias": True})
    with pytest.raises(RuntimeError) as info:
        m2.merge()
    assert str(info.value) == (
        "clora merge: blocks.blocks.0.attn.qkv has no bias and blocks.blocks.0.norm1 has none "
        "to fold the per-LRM bias into"
    )


def test_clora_follows_a_float64_backbone():
    model = _tiny().double()
    m = apply_peft(model, {"NAME": "clora", "bias": True})
    assert {q.dtype for q in m.peft_params.values()} == {torch.float64}
    _randomize(m, 0.05)
    pts = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        assert model(pts).dtype == torch.float64


# ------------------------------------------------------------------------------ lora / adapter / prompt edges
@pytest.mark.parametrize("name", ["bitfit", "adapter", "prompt", "lora"])
def test_layers_resolved_and_named(name):
    from clora3d.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        apply_peft(_tiny(), {"NAME": name, "layers": [9]})
    assert str(info.value) == f"peft method {name!r}: layers [9] out of range for a backbone with depth 4"
    m = apply_peft(_tiny(), {"NAME": name, "layers": [2, 0]})
    assert m.config["layers"] == [0, 2]


@pytest.mark.parametrize("cfg", [{"NAME": "adapter", "dropout": 0.0}, {"NAME": "prompt"}, {"NAME": "lora"}])
def test_adapter_and_prompt_follow_a_float64_backbone_and_leave_no_trace(cfg):
    base = _tiny().double()
    model = copy.deepcopy(base)
    m = apply_peft(model, cfg)
    assert {q.dtype for q in m.peft_params.values()} == {torch.float64}
    assert "peft" in model._modules or cfg["NAME"] == "lora"
    m.remove()
    assert "peft" not in model._modules and set(model.state_dict()) == set(base.state_dict())


@pytest.mark.parametrize(
    "cfg", [{"NAME": "lora", "dropout": 0.5, "targets": ["qkv"]}, {"NAME": "prompt", "dropout": 0.5, "layers": [0]}]
)
def test_lora_and_prompt_dropout_in_training_only(cfg):
    model = _tiny()
    m = apply_peft(model, cfg)
    _randomize(m)
    x = torch.randn(2, 7, m.dim, generator=torch.Generator().manual_seed(1))
    blk = model.blocks.blocks[0].train()
    torch.manual_seed(0)
    a = blk(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, blk(x))
    blk.eval()
    torch.testing.assert_close(blk(x), blk(x), rtol=0, atol=0)
    m0 = apply_peft(_tiny(), {**cfg, "dropout": 0.0})
    with torch.no_grad():
        for q, q0 in zip(m.peft_params.values(), m0.peft_params.values()):
            q0.copy_(q)
    torch.testing.assert_close(blk(x), m0.model.blocks.blocks[0].eval()(x), rtol=1e-6, atol=1e-6)


def test_lora_delta_weights_are_scale_b_a():
    m = apply_peft(_tiny(), {"NAME": "lora", "rank": 3, "alpha": 6.0, "targets": ["fc1"], "layers": [1]})
    _randomize(m)
    ((name, layer),) = m.sites
    A, B = layer.A, layer.B
    assert list(m.delta_weights()) == [name] == ["blocks.blocks.1.mlp.fc1"]
    torch.testing.assert_close(m.delta_weights()[name], 2.0 * (B @ A), rtol=1e-6, atol=1e-7)

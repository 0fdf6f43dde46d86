"""LoRA layers, BitFit's trainable set, the new parameters' device and CLoRA's merge on the cases mutation
testing (tools/mutate.py, groups peft_clora and peft_lora_simple) found unguarded. Expected values
are hand-computed (small integer factors: exact in float32) or names written out."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clora3d.models import PointTransformer
from clora3d.peft import apply_peft
from clora3d.peft.lora import LoRALayer

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **kw) -> PointTransformer:
    torch.manual_seed(seed)
    return PointTransformer.from_preset("tiny", cls_dim=5, **kw).eval()


def _linear() -> nn.Linear:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    return lin


A_VAL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])  # rank 2 x d_in 3
B_VAL = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # d_out 2 x rank 2


# ------------------------------------------------------------------------------ LoRALayer
@pytest.mark.parametrize("build", ["on", "constructor"])
def test_lora_layer_has_no_dropout_unless_asked_even_in_training(build):
    lin = _linear().train()
    if build == "on":
        layer = LoRALayer.on(lin, 2, 0.5)
        with torch.no_grad():
            layer.A.copy_(A_VAL)
            layer.B.copy_(B_VAL)
    else:
        layer = LoRALayer(lin, nn.Parameter(A_VAL.clone()), nn.Parameter(B_VAL.clone()), 0.5)
    assert layer.p == 0.0
    lin.register_forward_hook(layer)
    x = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]])
    # x A^T = [[0, 3], [1, 2]];  (x A^T) B^T = [[6, -3], [5, -2]];  x W^T + b = [[6.5, 14.5], [1.5, 3.5]]
    want = torch.tensor([[6.5 + 3.0, 14.5 - 1.5], [1.5 + 2.5, 3.5 - 1.0]])
    for _ in range(3):  # p = 1 would drop the whole update in training
        assert torch.equal(lin(x), want)


def test_lora_layer_holds_the_original_weight_only_while_merged():
    lin = _linear()
    layer = LoRALayer(lin, nn.Parameter(A_VAL.clone()), nn.Parameter(B_VAL.clone()), 0.5)
    W0 = lin.weight.detach().clone()
    assert layer.original is None
    with torch.no_grad():
        layer.merge()
    # scale * B A = 0.5 * [[5, 2, -1], [-2, -1, 0]]
    assert torch.equal(lin.weight, W0 + torch.tensor([[2.5, 1.0, -0.5], [-1.0, -0.5, 0.0]]))
    assert torch.equal(layer.original, W0)
    with torch.no_grad():
        layer.unmerge()
    assert torch.equal(lin.weight, W0)
    assert layer.original is None  # nothing held after the unmerge: not merged


def test_lora_layer_on_passes_extra_arguments_to_a_subclass():
    class Tagged(LoRALayer):
        def __init__(self, lin, A, B, scale, p=0.0, *, tag):
            super().__init__(lin, A, B, scale, p)
            self.tag = tag

    lin = _linear()
    layer = Tagged.on(lin, 4, 2.0, 0.25, tag="site")
    assert type(layer) is Tagged and layer.tag == "site" and (layer.scale, layer.p) == (2.0, 0.25)
    assert layer.A.shape == (4, 3) and layer.B.shape == (2, 4) and not layer.B.any()


def test_pointlora_builds_its_prompt_layers_through_lora_layer_on():
    m = apply_peft(_tiny(), {"NAME": "pointlora", "layers": [1]})
    assert [(name, layer.prompt is m.mods.prompt_linear[t]) for name, layer, t in m.sites] == [
        ("blocks.blocks.1.attn.qkv", True),
        ("blocks.blocks.1.attn.proj", True),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lora_layer_on_follows_the_linears_device_and_dtype(dtype):
    lin = nn.Linear(5, 3, device="meta", dtype=dtype)  # a second device without a GPU
    layer = LoRALayer.on(lin, 2, 1.0)
    assert (layer.A.device.type, layer.A.dtype, layer.A.shape) == ("meta", dtype, (2, 5))
    assert (layer.B.device.type, layer.B.dtype, layer.B.shape) == ("meta", dtype, (3, 2))


# ------------------------------------------------------------------------------ device of new parameters
@pytest.mark.parametrize(
    "cfg",
    [
        {"NAME": "lora"},
        {"NAME": "adapter"},
        {"NAME": "prompt"},
        {"NAME": "clora"},
        {"NAME": "clora", "placement": "parallel", "targets": ["proj", "fc1"], "bias": True},
    ],
    ids=["lora", "adapter", "prompt", "clora", "clora_parallel"],
)
def test_new_parameters_and_sade_follow_a_backbone_on_another_device(monkeypatch, cfg):
    # the meta device stands for a GPU: the base hash needs real bytes, so it is stubbed out here
    monkeypatch.setattr("clora3d.peft.base.hash_tensors", lambda named: "not hashed")
    model = _tiny().to("meta")
    m = apply_peft(model, cfg)
    assert m.peft_params and {p.device.type for p in m.peft_params.values()} == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    reg = m.regularization_loss()  # CLoRA: SADE over p = 4 spaces, every mask on the spaces' device
    assert reg.device.type == "meta" and reg.shape == ()


# ------------------------------------------------------------------------------ BitFit
def _bitfit_names(model, blocks_bias_of=("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")) -> set[str]:
    head = {n for n, _ in model.named_parameters() if n.startswith("cls_head_finetune.")}
    blocks = {f"blocks.blocks.{i}.{s}.bias" for i in range(4) for s in blocks_bias_of}
    return head | blocks | {"cls_token", "cls_pos", "norm.bias"}


ENCODER_BIASES = {
    "encoder.first_conv.0.bias",  # Conv1d
    "encoder.first_conv.1.bias",  # BatchNorm1d
    "encoder.first_conv.3.bias",
    "encoder.second_conv.0.bias",
    "encoder.second_conv.1.bias",
    "encoder.second_conv.3.bias",
}


def test_bitfit_embed_trains_the_reduce_dim_linears_own_bias():
    # Point-BERT-like stem: encoder_dims != trans_dim adds reduce_dim = Linear(64, 96) (the root module
    # itself is the Linear: its bias is 'reduce_dim.bias')
    model = _tiny(encoder_dims=64, qkv_bias=True)
    m = apply_peft(model, {"NAME": "bitfit", "embed": True})
    want = _bitfit_names(model, ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"))
    want |= ENCODER_BIASES | {"pos_embed.0.bias", "pos_embed.2.bias", "reduce_dim.bias"}
    assert set(m.trainable_parameters()) == want
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want


def test_bitfit_embed_skips_a_missing_stem_part_and_goes_on():
    model = _tiny(encoder_dims=64)
    del model.pos_embed  # a backbone without a positional MLP: encoder and reduce_dim still count
    m = apply_peft(model, {"NAME": "bitfit", "embed": True})
    assert set(m.trainable_parameters()) == _bitfit_names(model) | ENCODER_BIASES | {"reduce_dim.bias"}
    model2 = _tiny()  # reduce_dim is None (encoder_dims == trans_dim)
    m2 = apply_peft(model2, {"NAME": "bitfit", "embed": True, "layernorm": False, "final_norm": False})
    want = _bitfit_names(model2, ("attn.proj", "mlp.fc1", "mlp.fc2")) - {"norm.bias"}
    assert set(m2.trainable_parameters()) == want | ENCODER_BIASES | {"pos_embed.0.bias", "pos_embed.2.bias"}


# ------------------------------------------------------------------------------ CLoRA merge
def test_clora_merge_refuses_a_norm_without_any_bias_attribute():
    model = _tiny()
    blk = model.blocks.blocks[0]
    blk.norm1 = nn.RMSNorm(blk.norm1.normalized_shape)  # no bias attribute at all
    m = apply_peft(model, {"NAME": "clora", "bias": True, "layers": [0]})
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError) as info:
        m.merge()
    assert str(info.value) == (
        "clora merge: blocks.blocks.0.attn.qkv has no bias and blocks.blocks.0.norm1 has none "
        "to fold the per-LRM bias into"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # qkv is the first LRM

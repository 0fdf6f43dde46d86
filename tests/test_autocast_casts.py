"""Casts under autocast (issue 12 item 2, mixed precision that pays): frozen weights are cast once and
reused (``clora3d.models.transformer.Linear``), CLoRA's pre_proj input is cast once. The numbers are
autocast's own: checked bit for bit against ``nn.Linear`` and the double cast, on CPU autocast
(bfloat16), which follows the same rule as CUDA autocast for linear layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clora3d.engine import build
from clora3d.models.transformer import Linear

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _pair(bias: bool = True, seed: int = 0) -> tuple[Linear, nn.Linear]:
    torch.manual_seed(seed)
    ours = Linear(24, 40, bias=bias)
    ref = nn.Linear(24, 40, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _x(seed: int = 1, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


def test_same_keys_and_initialisation_as_nn_linear():
    torch.manual_seed(0)
    a = Linear(24, 40)
    torch.manual_seed(0)
    b = nn.Linear(24, 40)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in b.state_dict())


@pytest.mark.parametrize("bias", [True, False])
def test_frozen_cast_cache_is_bit_identical_to_autocast(bias):
    ours, ref = _pair(bias)
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    for step in range(3):
        x1, x2 = _x(step, True), _x(step, True)
        with torch.autocast(**BF16):
            y1, y2 = ours(x1), ref(x2)
        assert y1.dtype == y2.dtype == torch.bfloat16
        assert torch.equal(y1, y2)
        (y1.float() ** 2).sum().backward()
        (y2.float() ** 2).sum().backward()
        assert torch.equal(x1.grad, x2.grad)
    assert ours.__dict__["_w"][1].dtype == torch.bfloat16  # the copy is kept between forwards
    assert ("_b" in ours.__dict__) == bias


def test_a_weight_changed_in_place_is_cast_again():
    ours, ref = _pair()
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    with torch.autocast(**BF16):
        ours(_x())
    with torch.no_grad():  # an optimizer step, merge(), unmerge(): in place
        for lin in (ours, ref):
            lin.weight.mul_(-2.0).add_(0.25)
            lin.bias.add_(1.0)
    with torch.autocast(**BF16):
        assert torch.equal(ours(_x()), ref(_x()))
    sd = nn.Linear(24, 40).state_dict()  # load_state_dict copies in place too
    ours.load_state_dict(sd)
    ref.load_state_dict(sd)
    with torch.autocast(**BF16):
        assert torch.equal(ours(_x()), ref(_x()))


def test_trainable_tensors_are_left_to_autocast():
    ours, ref = _pair()
    ours.weight.requires_grad_(True)
    ours.bias.requires_grad_(False)  # BitFit's opposite: a trainable weight, a frozen bias
    ref.bias.requires_grad_(False)
    with torch.autocast(**BF16):
        y1, y2 = ours(_x()), ref(_x())
    assert torch.equal(y1, y2)
    y1.float().sum().backward()
    y2.float().sum().backward()
    assert torch.equal(ours.weight.grad, ref.weight.grad)
    assert "_w" not in ours.__dict__  # a trainable weight changes every step: nothing kept
    assert "_b" in ours.__dict__


def test_a_forward_in_inference_mode_keeps_no_copy_a_training_forward_cannot_use():
    # an evaluation loop under torch.inference_mode() before training: a copy made there would be an
    # inference tensor, and the next training forward would fail to save it for backward
    ours, ref = _pair()
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    with torch.inference_mode(), torch.autocast(**BF16):
        assert torch.equal(ours(_x()), ref(_x()))
    assert "_w" not in ours.__dict__
    x1, x2 = _x(requires_grad=True), _x(requires_grad=True)
    with torch.autocast(**BF16):
        y1, y2 = ours(x1), ref(x2)
    y1.float().sum().backward()
    y2.float().sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    with torch.inference_mode(), torch.autocast(**BF16):  # a kept (normal) copy serves inference too
        assert torch.equal(ours(_x()), ref(_x()))


def test_no_autocast_float64_and_switched_off_keep_nothing():
    ours, ref = _pair()
    ours.requires_grad_(False)
    assert torch.equal(ours(_x()), ref(_x()))  # no autocast: plain F.linear
    assert "_w" not in ours.__dict__
    with torch.autocast(**BF16):
        ours(_x())
    assert "_w" in ours.__dict__
    ours.double()  # .to() drops the copies
    assert "_w" not in ours.__dict__ and "_b" not in ours.__dict__
    ref.double()
    with torch.autocast(**BF16):  # autocast leaves float64 alone
        y = ours(_x().double())
        assert y.dtype == torch.float64 and torch.equal(y, ref(_x().double()))
    off, ref2 = _pair()
    off.requires_grad_(False)
    off.cache_casts = False
    with torch.autocast(**BF16):
        assert torch.equal(off(_x()), ref2(_x()))
    assert "_w" not in off.__dict__


def _clora_model(seed: int = 0, **peft):
    torch.manual_seed(seed)
    cfg = {"model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5}, "peft": {"NAME": "clora", **peft}}
    model = build.build_model(cfg)
    method = build.build_method(model, cfg)
    with torch.no_grad():
        for sp in method.spaces.values():
            sp.Q.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return model, method


def test_merge_and_unmerge_under_autocast_use_the_new_weights():
    model, method = _clora_model()
    model.eval()
    pts = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(2))
    with torch.autocast(**BF16):
        before = model(pts)  # caches the frozen weights' copies
        method.merge()
        merged = model(pts)
    plain = copy.deepcopy(model)  # merged weights, fresh copies
    for m in plain.modules():
        if isinstance(m, Linear):
            m.__dict__.pop("_w", None)
            m.__dict__.pop("_b", None)
    with torch.autocast(**BF16):
        assert torch.equal(merged, plain(pts))
        method.unmerge()
        assert torch.equal(model(pts), before)


@pytest.mark.parametrize("train_path", ["dense", "factored"])
def test_clora_input_cast_once_keeps_autocast_forward_bit_for_bit(train_path, monkeypatch):
    """One cast of the pre_proj input instead of autocast's two (identity term and branch): the same
    forward bits. The backward adds the two bf16 gradient terms in bf16 before converting (autocast
    converted each): its error against the float32 gradient must stay that of autocast's own."""
    import clora3d.peft.clora as clora

    pts = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(3))
    once = clora._autocast_input
    out, grads = {}, {}
    for name in ("once", "twice", "fp32"):
        monkeypatch.setattr(clora, "_autocast_input", once if name == "once" else (lambda x: x))
        model, method = _clora_model(train_path=train_path)
        model.eval()  # BatchNorm of the head on batch statistics would swamp the comparison with fp32
        with torch.autocast(**BF16, enabled=name != "fp32"):
            y = model(pts)
        y.float().square().sum().backward()
        out[name] = y
        grads[name] = {k: p.grad.clone() for k, p in method.trainable_parameters().items()}
    assert torch.equal(out["once"], out["twice"])
    for k, ref in grads["fp32"].items():
        err = {n: float((grads[n][k] - ref).norm() / ref.norm()) for n in ("once", "twice")}
        assert err["twice"] < 0.05, (k, err)  # the comparison is meaningful: bf16-sized error
        assert err["once"] <= 1.5 * err["twice"] + 0.005, (k, err)


@pytest.mark.parametrize("train_path", ["dense", "factored"])
def test_clora_pre_proj_hook_casts_its_input_once(train_path):
    from torch.utils._python_dispatch import TorchDispatchMode

    class InputCasts(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.n = shape, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "_to_copy" and tuple(args[0].shape) == self.shape:
                self.n += 1
            return func(*args, **(kwargs or {}))

    model, method = _clora_model(train_path=train_path)
    lrm = method.lrm_layers[0]
    x = torch.randn(2, 9, lrm.lin.in_features, requires_grad=True)
    for autocast, casts, dtype in ((True, 1, torch.bfloat16), (False, 0, torch.float32)):
        with InputCasts(tuple(x.shape)) as c, torch.autocast(**BF16, enabled=autocast):
            (y,) = lrm(lrm.lin, (x,))
        assert (c.n, y.dtype) == (casts, dtype), autocast
        g = torch.ones_like(y)
        with InputCasts(tuple(x.shape)) as c:
            y.backward(g)
        assert c.n == casts, autocast  # one gradient converted back to float32, not two

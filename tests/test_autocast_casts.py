"""Casts under autocast (issue 12 item 2, mixed precision that pays): inside a ``reuse_frozen_casts``
scope (the trainer's epoch under ``train.amp``, the GPU benchmark's rows) frozen weights are cast once
and reused (``clora3d.models.transformer.Linear``); CLoRA's pre_proj input is cast once. The numbers
are autocast's own: checked bit for bit against ``nn.Linear`` and the double cast, on CPU autocast
(bfloat16, the same rule as CUDA autocast for linear layers) and on CUDA where there is a GPU."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.step_ops import CountOps
from clora3d.engine import build
from clora3d.models.transformer import Linear, reuse_frozen_casts, trainable_casts

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
    scope = reuse_frozen_casts(ours)
    scope.__enter__()
    for step in range(3):
        x1, x2 = _x(step, True), _x(step, True)
        with torch.autocast(**BF16):
            y1, y2 = ours(x1), ref(x2)
        assert y1.dtype == y2.dtype == torch.bfloat16
        assert torch.equal(y1, y2)
        (y1.float() ** 2).sum().backward()
        (y2.float() ** 2).sum().backward()
        assert torch.equal(x1.grad, x2.grad)
    assert ours.__dict__["_w"][2].dtype == torch.bfloat16  # the copy is kept between forwards
    assert ("_b" in ours.__dict__) == bias
    scope.__exit__(None, None, None)
    assert "_w" not in ours.__dict__ and "_b" not in ours.__dict__  # dropped with the scope


def test_a_weight_changed_in_place_is_cast_again():
    ours, ref = _pair()
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    with reuse_frozen_casts(ours):
        with torch.autocast(**BF16):
            ours(_x())
        with torch.no_grad():  # merge(), unmerge(), an optimizer step: in place
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
        new = nn.Parameter(torch.randn(40, 24), requires_grad=False)  # a replaced Parameter
        ours.weight, ref.weight = new, nn.Parameter(new.detach().clone(), requires_grad=False)
        with torch.autocast(**BF16):
            assert torch.equal(ours(_x()), ref(_x()))


def test_trainable_tensors_are_left_to_autocast():
    ours, ref = _pair()
    ours.weight.requires_grad_(True)
    ours.bias.requires_grad_(False)  # BitFit's opposite: a trainable weight, a frozen bias
    ref.bias.requires_grad_(False)
    with reuse_frozen_casts(ours):
        with torch.autocast(**BF16):
            y1, y2 = ours(_x()), ref(_x())
        assert torch.equal(y1, y2)
        y1.float().sum().backward()
        y2.float().sum().backward()
        assert torch.equal(ours.weight.grad, ref.weight.grad)
        assert "_w" not in ours.__dict__  # a trainable weight changes every step: nothing kept
        assert "_b" in ours.__dict__


def test_substituted_and_parametrized_weights_are_never_taken_from_the_copy():
    """Only the module's own frozen nn.Parameter is reused: a functional_call substitute (here the
    transposed weight, same storage and version), a parametrization recomputed at every forward, a
    jvp dual weight and a vmap-batched weight are autocast's business."""
    from torch.func import functional_call, jvp, stack_module_state, vmap
    from torch.nn.utils import parametrize

    ours, ref = _pair()
    sq, sq_ref = Linear(24, 24), nn.Linear(24, 24)
    sq_ref.load_state_dict(sq.state_dict())
    for m in (ours, ref, sq, sq_ref):
        m.requires_grad_(False)
    with reuse_frozen_casts(ours), reuse_frozen_casts(sq), torch.autocast(**BF16):
        sq(_x())  # a kept copy of sq.weight
        t = {"weight": sq.weight.t(), "bias": sq.bias}
        assert torch.equal(functional_call(sq, t, (_x(),)), functional_call(sq_ref, t, (_x(),)))

        class Scale(nn.Module):
            def __init__(self):
                super().__init__()
                self.k = 1.0

            def forward(self, w):
                return w * self.k

        for m in (ours, ref):
            parametrize.register_parametrization(m, "weight", Scale())
        for k in (2.0, 3.0):
            ours.parametrizations.weight[0].k = ref.parametrizations.weight[0].k = k
            assert torch.equal(ours(_x()), ref(_x()))

        copies = [Linear(24, 24) for _ in range(3)]
        params, buffers = stack_module_state(copies)
        params = {k: v.detach() for k, v in params.items()}  # frozen: batched tensors have no storage
        # forward-mode AD through the weight: a dual tensor (no storage) whose tangent must survive
        w, tangent, x = sq.weight.detach(), torch.ones(24, 24), _x()
        out, t_ours = jvp(lambda w: functional_call(sq, {"weight": w}, (x,)), (w,), (tangent,))
        _, t_ref = jvp(lambda w: functional_call(sq_ref, {"weight": w}, (x,)), (w,), (tangent,))
        assert torch.equal(t_ours, t_ref)

        x, plain = _x(), nn.Linear(24, 24)
        got = vmap(lambda p, b: functional_call(copies[0], (p, b), (x,)))(params, buffers)
        want = vmap(lambda p, b: functional_call(plain, (p, b), (x,)))(params, buffers)
        assert torch.equal(got, want)


def test_a_forward_in_inference_mode_keeps_no_copy_a_training_forward_cannot_use():
    # an evaluation loop under torch.inference_mode() before training: a copy made there would be an
    # inference tensor, and the next training forward would fail to save it for backward
    ours, ref = _pair()
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    with reuse_frozen_casts(ours):
        with torch.inference_mode(), torch.autocast(**BF16):
            assert torch.equal(ours(_x()), ref(_x()))
        assert "_w" not in ours.__dict__
        x1, x2 = _x(requires_grad=True), _x(requires_grad=True)
        with torch.autocast(**BF16):
            y1, y2 = ours(x1), ref(x2)
        y1.float().sum().backward()
        y2.float().sum().backward()
        assert torch.equal(x1.grad, x2.grad)
    with torch.inference_mode():  # a model made in inference mode, run under autocast
        made, made_ref = _pair()
        made.requires_grad_(False)
    with reuse_frozen_casts(made), torch.autocast(**BF16):  # (inference tensors keep no version counter)
        assert torch.equal(made(_x()), made_ref(_x()))


def test_outside_a_scope_it_is_nn_linear_and_scopes_nest():
    ours, ref = _pair()
    ours.requires_grad_(False)
    with torch.autocast(**BF16):
        assert torch.equal(ours(_x()), ref(_x()))
    assert "_w" not in ours.__dict__  # no scope: nothing kept
    with reuse_frozen_casts(ours):
        with reuse_frozen_casts(ours), torch.autocast(**BF16):
            ours(_x())
        assert "_w" in ours.__dict__  # the inner scope's end keeps the outer scope's copies
        ours.double()  # .to() drops the copies
        assert "_w" not in ours.__dict__ and "_b" not in ours.__dict__
        ref.double()
        with torch.autocast(**BF16):  # autocast leaves float64 alone
            y = ours(_x().double())
            assert y.dtype == torch.float64 and torch.equal(y, ref(_x().double()))
    assert not ours.__dict__.get("_reuse_casts")


def test_scripting_and_meta_forwards_still_work():
    ours, ref = _pair()
    scripted = torch.jit.script(ours)
    assert torch.equal(scripted(_x()), ref(_x()))
    meta = Linear(24, 40, device="meta")
    with reuse_frozen_casts(meta):
        assert meta(torch.empty(3, 24, device="meta")).shape == (3, 40)
    from clora3d.peft.clora import _autocast_input

    x = torch.empty(2, 9, 24, device="meta")
    with torch.autocast(**BF16):
        assert _autocast_input(x) is x  # (torch.is_autocast_enabled("meta") would raise)
        x64 = torch.ones(3, dtype=torch.float64)
        assert _autocast_input(x64) is x64  # autocast leaves float64 alone, and so does the single cast


def test_copies_are_not_pickled_or_deep_copied_and_a_copy_is_outside_the_scope():
    import io

    ours, ref = _pair()
    ours.requires_grad_(False)
    with reuse_frozen_casts(ours):
        with torch.autocast(**BF16):
            ours(_x())
        assert "_w" in ours.__dict__
        twin = copy.deepcopy(ours)
        assert "_w" not in twin.__dict__ and "_b" not in twin.__dict__
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert "_w" not in loaded.__dict__
        with torch.autocast(**BF16):
            twin(_x())
        assert "_w" not in twin.__dict__  # the scope holds the layers it was given, not their copies


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
    with reuse_frozen_casts(model):
        with torch.autocast(**BF16):
            before = model(pts)  # keeps the frozen weights' copies
            method.merge()
            merged = model(pts)
        plain = copy.deepcopy(model)  # merged weights, outside the scope: autocast's own casts
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
        assert err["twice"] < 0.2, (k, err)  # the comparison is meaningful: bf16-sized error (0.01-0.08 seen)
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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", ["clora", "lora", "full"])
def test_bf16_training_steps_inside_the_scope_equal_autocast(name, device):
    """As the trainer runs them (on the GPU: CUDA autocast, fused AdamW): three training steps inside
    reuse_frozen_casts give the same losses and weights, bit for bit, as without it; the frozen
    weights' copies are made once (kept across steps), the trainable ones (full fine-tuning) at
    every forward, all together."""
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device(device)
    pts = torch.randn(4, 256, 3, generator=torch.Generator().manual_seed(4)).to(dev)
    labels = torch.tensor([0, 1, 2, 3], device=dev)
    runs = {}
    for scoped in (True, False):
        torch.manual_seed(0)
        cfg = {"model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5}, "peft": {"NAME": name}}
        model = build.build_model(cfg)
        method = build.build_method(model, cfg)
        model.to(dev).eval()  # no drop path / batch statistics: the two runs see the same computation
        params = list(method.trainable_parameters().values())
        opt = torch.optim.AdamW(params, lr=1e-3, fused=dev.type == "cuda")
        losses, copies, step_copies = [], [], []
        qkv = model.blocks.blocks[0].attn.qkv
        qkv.register_forward_pre_hook(
            lambda m, args, seen=step_copies: seen.append(sorted(m.__dict__.get("_step", {})))
        )
        # the math attention backend: deterministic, so that the two runs can be compared bit for bit
        with reuse_frozen_casts(model) if scoped else contextlib.nullcontext(), sdpa_kernel(SDPBackend.MATH):
            for _ in range(3):
                with torch.autocast(dev.type, dtype=torch.bfloat16), trainable_casts(model):  # as the trainer
                    loss = F.cross_entropy(model(pts).float(), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                copies.append([id(m.__dict__["_w"][2]) for m in model.modules() if "_w" in m.__dict__])
        runs[scoped] = (torch.stack(losses), [p.detach().clone() for p in params])
        if scoped and name != "full":
            assert copies[0] and copies[0] == copies[1] == copies[2]  # made once, then reused
        if scoped and name == "full":
            assert not any(copies)  # nothing frozen: no copies kept across steps
        # the trainable weight (full fine-tuning) or LoRA's factors registered on the layer are cast
        # with the others for each forward, in a scope only
        made = {"full": ["_w"], "lora": ["_p.lora_A", "_p.lora_B"], "clora": []}[name]
        assert step_copies == [made if scoped else []] * 3
        assert "_step" not in qkv.__dict__  # the copies went with the forward
    assert torch.equal(runs[True][0], runs[False][0])
    for a, b in zip(runs[True][1], runs[False][1]):
        assert torch.equal(a, b)


def test_traces_and_input_transforms_inside_a_scope_see_no_copy():
    """Inside a scope: torch.jit.trace after a warm-up forward (a trace would freeze the copies as
    constants), torch.fx symbolic tracing (a Proxy input), and vmap over the inputs (autocast's own
    dtype rule there) all behave as nn.Linear does."""
    from torch.func import vmap

    ours, ref = _pair()
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    with reuse_frozen_casts(ours):
        with torch.autocast(**BF16):
            ours(_x())  # a kept copy
            traced = torch.jit.trace(ours, (_x(),), check_trace=False)
        with torch.no_grad():
            ours.weight.zero_()
            ref.weight.zero_()
        with torch.autocast(**BF16):
            assert torch.equal(traced(_x()), ref(_x()))  # follows the weight, not a frozen copy
        gm = torch.fx.symbolic_trace(ours)
        with torch.autocast(**BF16):
            assert torch.equal(gm(_x()), ref(_x()))
            xs = torch.randn(5, 3, 24, generator=torch.Generator().manual_seed(7))
            got, want = vmap(ours)(xs), vmap(ref)(xs)
        assert got.dtype == want.dtype and torch.equal(got, want)


# ------------------------------------------------------------------ trainable weights, cast together
class _Net(nn.Module):
    """Three layers: ``b`` used twice (its copy's gradient is summed over both uses), ``unused``
    never called (its gradients must stay None, not zeros)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.unused = Linear(24, 16), Linear(16, 16), Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.b(self.a(x))))


def _step(net: nn.Module, scoped: bool) -> tuple[torch.Tensor, list, dict]:
    x = _x(requires_grad=True)
    with reuse_frozen_casts(net) if scoped else contextlib.nullcontext(), CountOps() as c:
        with torch.autocast(**BF16), trainable_casts(net):
            y = net(x)
        y.float().pow(2).sum().backward()
    return y, [None if p.grad is None else p.grad for p in net.parameters()] + [x.grad], c.ops


def test_trainable_weights_cast_together_give_autocasts_numbers_in_two_ops():
    """Inside a scope, ``trainable_casts`` casts every trainable weight and bias of the scope's
    layers with one multi-tensor copy and converts their gradients back with one: the same output
    and gradients, bit for bit, as autocast's casts (one per tensor, each converted back)."""
    net = _Net()
    ref = copy.deepcopy(net)
    y, grads, ops = _step(net, scoped=True)
    y_ref, grads_ref, ops_ref = _step(ref, scoped=False)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert len(grads) == len(grads_ref) == 7
    for g, g_ref in zip(grads, grads_ref):
        assert (g is None) == (g_ref is None) and (g is None or (g.dtype == g_ref.dtype and torch.equal(g, g_ref)))
    assert net.unused.weight.grad is None and net.unused.bias.grad is None  # not zeros
    # autocast: a cast per weight and bias used (a and b: 4; b's is cached across its two uses), each
    # converted back in the backward (4); together: one copy each way
    assert ops.get("_foreach_copy_") == 2 and "_foreach_copy_" not in ops_ref
    assert ops_ref["_to_copy"] - ops.get("_to_copy", 0) == 8
    assert not any("_step" in m.__dict__ for m in net.modules())  # the copies went with the forward


def test_trainable_casts_is_a_no_op_without_a_scope_or_autocast_and_drops_copies_on_error():
    net = _Net()
    x = _x()
    with trainable_casts(net):  # no scope open on net
        assert not any("_step" in m.__dict__ for m in net.modules())
    with reuse_frozen_casts(net):
        with trainable_casts(net):  # autocast off: nothing to cast
            assert not any("_step" in m.__dict__ for m in net.modules())
            assert net(x).dtype == torch.float32
        with pytest.raises(RuntimeError, match="boom"), torch.autocast(**BF16), trainable_casts(net):
            assert sorted(net.a.__dict__["_step"]) == ["_b", "_w"]
            raise RuntimeError("boom")
        assert not any("_step" in m.__dict__ for m in net.modules())
        with torch.autocast(**BF16), trainable_casts(net.a):  # a layer with no scope of its own: no-op
            assert "_step" not in net.a.__dict__
    with torch.autocast(**BF16), trainable_casts(net):  # the scope has closed
        assert not any("_step" in m.__dict__ for m in net.modules())


def test_trainable_casts_follow_each_update_and_double_backward():
    """The copies are made at every forward (a fused optimizer step bumps no version counter, so a
    cache keyed on versions would miss it), and a create_graph backward goes through them."""
    net = _Net()
    ref = copy.deepcopy(net)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (net, ref)]
    with reuse_frozen_casts(net):
        for _ in range(3):
            outs = []
            for m, opt in zip((net, ref), opts):
                with torch.autocast(**BF16), trainable_casts(m):  # ref: no scope, a no-op
                    outs.append(m(_x()))
                opt.zero_grad()
                outs[-1].float().sum().backward()
                opt.step()
                for p in m.parameters():
                    p.data.add_(0.01)  # bypasses the version counter, as fused optimizers do
            assert torch.equal(outs[0], outs[1])
        for p, q in zip(net.parameters(), ref.parameters()):
            assert torch.equal(p, q)
        x = _x(requires_grad=True)
        with torch.autocast(**BF16), trainable_casts(net):
            y = net(x)
        (g,) = torch.autograd.grad(y.float().pow(2).sum(), net.a.weight, create_graph=True)
        g.sum().backward()
    with torch.autocast(**BF16):
        y_ref = ref(x)
    (g_ref,) = torch.autograd.grad(y_ref.float().pow(2).sum(), ref.a.weight, create_graph=True)
    assert torch.equal(g, g_ref)


def _grads_of(net: nn.Module, run) -> tuple[torch.Tensor, list]:  # noqa: ANN001
    net.zero_grad(set_to_none=True)
    y = run(net)
    y.float().pow(2).sum().backward()
    return y, [p.grad for p in net.parameters()]


def _assert_same(got: tuple, want: tuple) -> None:
    assert torch.equal(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        assert (g is None) == (w is None) and (g is None or torch.equal(g, w))


class _Tied(nn.Module):
    """Two layers sharing one weight (autocast casts it once and converts its summed gradient once)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = Linear(16, 16), Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _in_scope(net: nn.Module, body):  # noqa: ANN001
    with reuse_frozen_casts(net):
        return _grads_of(net, body)


@pytest.mark.parametrize(
    "case", ["tied weight", "changed in place before use", "grad forward inside no_grad", "no cast cache", "nested"]
)
def test_trainable_casts_keep_autocasts_numbers_in_corner_cases(case):
    """Where copies made up front would differ from autocast's casts at first use, the layer takes
    autocast's path (or shares one copy): the same outputs and gradients, bit for bit."""
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(6))
    make = _Tied if case == "tied weight" else _Net
    if make is _Net:
        x = torch.randn(3, 24, generator=torch.Generator().manual_seed(6))

    def plain(net):  # noqa: ANN001, ANN202
        with torch.autocast(**BF16, cache_enabled=case != "no cast cache"):
            return net(x)

    def scoped(net):  # noqa: ANN001, ANN202
        if case == "grad forward inside no_grad":
            with torch.no_grad(), torch.autocast(**BF16), trainable_casts(net), torch.enable_grad():
                return net(x)
        with torch.autocast(**BF16, cache_enabled=case != "no cast cache"), trainable_casts(net):
            if case == "nested":
                with trainable_casts(net):
                    y = net(x)
                return y + net(x)
            return net(x)

    def halve_b(mod, args):  # noqa: ANN001, ANN202 (a max-norm-style constraint in a pre-hook)
        with torch.no_grad():
            mod.weight.mul_(0.5)

    nets = [make(), make()]
    if case == "changed in place before use":
        for n in nets:
            n.b.register_forward_pre_hook(halve_b)
    if case == "nested":  # two forwards in one autocast region: one cast per weight, shared
        with torch.autocast(**BF16):
            want = _grads_of(nets[1], lambda n: n(x) + n(x))
    else:
        want = _grads_of(nets[1], plain)
    got = _in_scope(nets[0], scoped)
    assert got[0].requires_grad
    _assert_same(got, want)


def _method_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = {"model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5}, "peft": {"NAME": name}}
    model = build.build_model(cfg)
    return model, build.build_method(model, cfg)


@pytest.mark.parametrize("name", ["lora", "pointlora", "adapter", "dapt", "pointgst", "full"])
def test_bf16_step_casts_no_trainable_linear_tensor_on_its_own(name):
    """Inside the trainer's scope every trainable tensor of a clora3d Linear (full fine-tuning's
    weights, the adapters' and prompt MLPs' layers, LoRA's factors registered on the target) is cast
    with the others by one multi-tensor copy: no ``_to_copy`` of its own in the forward, none of its
    gradient in the backward."""
    model, method = _method_model(name)
    trainable = {}
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            assert type(mod) is Linear, f"{name}: {type(mod).__name__} is not clora3d's Linear"
            for pn, t in mod._parameters.items():
                if t is not None and t.requires_grad:
                    trainable[t.data_ptr(), t.numel()] = pn  # numel, not shape: a transposed view is cast
    assert trainable and (
        name == "full" or any(pn.startswith("lora_") for pn in trainable.values()) == ("lora" in name)
    )

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.own, self.together = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func.overloadpacket.__name__
            key = (args[0].data_ptr(), args[0].numel()) if op == "_to_copy" else None
            if key in trainable:
                self.own.append(trainable[key])
            self.together += op == "_foreach_copy_"
            return func(*args, **(kwargs or {}))

    pts = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(1))
    model.train()
    with reuse_frozen_casts(model), Casts() as c:
        with torch.autocast(**BF16), trainable_casts(model):
            loss = model(pts).float().square().mean() + method.regularization_loss()
        loss.backward()
    assert c.own == [] and c.together == 2, (c.own, c.together)  # one multi-tensor copy each way
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for n, p in method.trainable_parameters().items()
        if "lora_" in n
    )


@pytest.mark.parametrize("name", ["lora", "pointlora"])
def test_lora_target_input_is_cast_once(name, monkeypatch):
    """The frozen linear and the LoRA branch (and PointLoRA's prompt branch) share one cast of their
    input and one conversion of its gradient (autocast: one each per use); the forward bits are
    autocast's, and the gradients' error against float32 stays autocast's."""
    import clora3d.peft.lora as lora

    class InputCasts(TorchDispatchMode):
        """Casts of the input or a reshape of it (the branch works on a 2-D view)."""

        def __init__(self, shape):
            super().__init__()
            self.numel, self.width, self.n = math.prod(shape), shape[-1], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t = args[0] if args else None
            if func.overloadpacket.__name__ == "_to_copy" and t.numel() == self.numel and t.shape[-1] == self.width:
                self.n += 1
            return func(*args, **(kwargs or {}))

    out, grads, casts = {}, {}, {}
    for run in ("once", "per use", "fp32"):
        if run == "per use":
            monkeypatch.setattr(lora, "autocast_input", lambda x: x)
        model, method = _method_model(name)
        with torch.no_grad():
            for n, p in method.trainable_parameters().items():
                if n.endswith("lora_B"):
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
        lin = model.blocks.blocks[1].attn.qkv
        x0 = torch.randn(2, 9, lin.in_features, generator=torch.Generator().manual_seed(6), requires_grad=True)
        with InputCasts(tuple(x0.shape)) as fwd, torch.autocast(**BF16, enabled=run != "fp32"):
            y = lin(x0 * 1.0)  # not a leaf (autocast would cache a leaf's cast), as a LayerNorm's output
        x = x0
        with InputCasts(tuple(x.shape)) as bwd:
            y.float().square().sum().backward()
        out[run], casts[run] = y, (fwd.n, bwd.n)
        grads[run] = [x.grad] + [
            p.grad for n, p in method.trainable_parameters().items() if n.startswith("blocks.blocks.1.attn.qkv.")
        ]
    assert casts["once"] == (1, 1) and casts["per use"][0] >= 2 and casts["fp32"] == (0, 0), casts
    assert out["once"].dtype == torch.bfloat16 and torch.equal(out["once"], out["per use"])
    for g_once, g_twice, ref in zip(grads["once"], grads["per use"], grads["fp32"]):
        err = {k: float((g - ref).norm() / ref.norm()) for k, g in (("once", g_once), ("twice", g_twice))}
        assert err["twice"] < 0.2, err
        assert err["once"] <= 1.5 * err["twice"] + 0.005, err


def test_lora_on_a_plain_nn_linear_target_leaves_its_factors_to_autocast():
    """A backbone of the user's with plain nn.Linear targets: LoRA's factors are autocast's to cast
    (nn.Linear has no copies to give), inside the trainer's scope too."""
    torch.manual_seed(0)
    cfg = {"model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5}, "peft": {"NAME": "lora"}}
    model = build.build_model(cfg)
    attn = model.blocks.blocks[0].attn
    plain = nn.Linear(attn.qkv.in_features, attn.qkv.out_features, bias=attn.qkv.bias is not None)
    plain.load_state_dict(attn.qkv.state_dict())
    attn.qkv = plain
    method = build.build_method(model, cfg)
    pts = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(1))
    with reuse_frozen_casts(model), torch.autocast(**BF16), trainable_casts(model):
        y = model(pts)
    y.float().square().mean().backward()
    grads = {n: p.grad for n, p in method.trainable_parameters().items() if n.startswith("blocks.blocks.0.attn.qkv.")}
    assert len(grads) == 2 and all(g is not None and g.dtype == torch.float32 for g in grads.values())

"""The compiled kernels are torch custom operators: torch.compile(fullgraph=True) and torch.export
trace the three models with no graph break, and the traced graphs compute what eager mode does.

The default suite compiles with the ``aot_eager`` backend: it runs Dynamo (graph capture, which is
where a pybind function or a ``.item()`` breaks the graph) and AOTAutograd (which needs the fake
implementations and the autograd registrations of every op), without Inductor's C++ code
generation, which takes minutes on a 2-core machine; the Inductor run is behind ``-m slow``.
``torch.library.opcheck`` checks each operator's schema, fake implementation and autograd
registration against its real kernel.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo

from clora3d import ops
from clora3d.models import build_model
from clora3d.ops import _backend
from clora3d.peft import apply_peft

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(_backend.native_module() is None, reason="compiled extension clora3d._C is not built"),
]


def _models():
    torch.manual_seed(0)
    cls = build_model({"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5})
    seg = build_model({"NAME": "PartSegModel", "preset": "tiny", "num_classes": 16, "num_parts": 50})
    mae = build_model({"NAME": "PointMAE", "preset": "tiny"})
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(2, 256, 3, generator=g) * 2 - 1
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 3]), 16).float()
    return {"classifier": (cls, (pts,)), "partseg": (seg, (pts, onehot)), "mae": (mae, (pts,))}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("name", ["classifier", "partseg", "mae"])
def test_no_graph_break(models, name):
    model, args = models[name]
    model.train(name == "mae")  # MAE pre-trains in train mode (random masking); the others evaluate
    dynamo.reset()
    ex = dynamo.explain(model)(*args)
    reasons = [str(b.reason).splitlines()[0] for b in ex.break_reasons]
    assert ex.graph_break_count == 0 and ex.graph_count == 1, reasons


def _loss(name, out):
    return out if name == "mae" else out.float().pow(2).mean()


@pytest.mark.parametrize("name", ["classifier", "partseg", "mae"])
def test_fullgraph_compile_matches_eager_forward_and_backward(models, name):
    model, args = models[name]
    model = copy.deepcopy(model).train()
    for m in model.modules():  # dropout / drop path off: eager and compiled runs draw no randomness
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def run(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # the MAE mask
        out = fn(*args)
        _loss(name, out).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_e, grads_e = run(model)
    out_c, grads_c = run(compiled)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 10
    for n in grads_e:
        torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-4, atol=1e-6, msg=n)


def test_clora_classifier_compiles_without_graph_break(models):
    base, (pts,) = models["classifier"]
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora"})
    model.train()
    dynamo.reset()
    ex = dynamo.explain(model)(pts)
    assert ex.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in ex.break_reasons]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.eval()
    torch.testing.assert_close(compiled(pts), model(pts), rtol=1e-5, atol=1e-6)
    assert method.trainable_parameters()


def test_export_of_merged_classifier(models):
    base, (pts,) = models["classifier"]
    model = copy.deepcopy(base)
    method = apply_peft(model, {"NAME": "clora"})
    with torch.no_grad():  # a non-trivial adapter, so the merge changes the weights
        for p in method.trainable_parameters().values():
            p.normal_(0, 0.05)
    model.eval()
    before = model(pts)
    method.merge()
    exported = torch.export.export(model, (pts,))
    targets = {str(n.target) for n in exported.graph_module.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("clora3d.") for t in targets), sorted(targets)  # the kernels, as operators
    out = exported.module()(pts)
    torch.testing.assert_close(out, model(pts), rtol=0, atol=0)
    torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- per-operator checks
def _op_samples():
    g = torch.Generator().manual_seed(7)
    a = torch.rand(2, 40, 3, generator=g, dtype=torch.float64)
    b = torch.rand(2, 30, 3, generator=g, dtype=torch.float64)
    feat = torch.randn(2, 30, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx2 = torch.randint(0, 30, (2, 12), generator=g)
    idx3 = torch.randint(0, 30, (2, 40, 3), generator=g)
    w = torch.rand(2, 40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ca = a.clone().requires_grad_(True)
    cb = b.clone().requires_grad_(True)
    C = torch.ops.clora3d
    return [
        (C.fps.default, (a, 7, 3)),
        (C.knn.default, (a, b, 5)),
        (C.gather_forward.default, (feat, idx2)),
        (C.gather_backward.default, (grad, idx2, 30)),
        (C.three_nn.default, (a, b)),
        (C.three_interpolate_forward.default, (feat, idx3, w)),
        (C.chamfer_forward.default, (ca, cb)),
    ]


@pytest.mark.parametrize("i", range(7))
def test_opcheck(i):
    op, args = _op_samples()[i]
    # schema, fake tensor, autograd registration and AOT dispatch, each against the real kernel
    torch.library.opcheck(op, args)


def test_double_backward_of_gather_and_interpolation():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 9, (2, 5, 3), generator=g)
    w = torch.rand(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda f, ww: ops.three_interpolate(f, idx, ww), (feat, w))
    assert torch.autograd.gradgradcheck(lambda f: ops.gather_points(f, idx[..., 0]), (feat,))


def test_chamfer_double_backward_raises_instead_of_silent_zero():
    a = torch.rand(1, 6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 5, 3, dtype=torch.float64)
    (g,) = torch.autograd.grad(ops.chamfer_l2_loss(a, b), a, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


@pytest.mark.slow
def test_inductor_fullgraph_classifier_matches_eager(models):
    model, (pts,) = models["classifier"]
    model = copy.deepcopy(model).eval()
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # Inductor: generates and builds C++ code
    torch.testing.assert_close(compiled(pts), model(pts), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["classifier", "partseg", "mae"])
def test_cuda_fullgraph_compile_no_graph_break(models, name):
    if not _backend.backend_info()["build_info"]["cuda"]:
        pytest.skip("clora3d._C was built without CUDA kernels")
    model, args = models[name]
    model = copy.deepcopy(model).cuda().train(name == "mae")
    args = tuple(a.cuda() for a in args)
    dynamo.reset()
    ex = dynamo.explain(model)(*args)
    assert ex.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in ex.break_reasons]
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # Inductor on the GPU
    if name == "mae":  # Inductor draws its own random numbers (mask, drop path): check the step runs
        loss = compiled(*args)
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    else:
        torch.testing.assert_close(compiled(*args), model(*args), rtol=1e-3, atol=1e-4)

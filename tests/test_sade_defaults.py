"""SADE acts with the default CLoRA options (issue 13, item 4).

Q starts at zero (the adapted model equals the pre-trained one), so every component M_h = D_h Q_h U_h
and with it SADE and its gradient are zero at step 0 whatever the options; the first optimizer step
moves only Q (the task gradient of D and U is zero while Q = 0). From then on SADE is
sum ||U_a^T Q_a^T (D_a^T D_b) Q_b U_b||^2: with the old orthogonal init D_a^T D_b = 0 exactly, so SADE
and its gradient stay zero until D drifts. With the defaults it must be non-zero right after the
first step and its gradient must be a sizeable fraction of the task gradient. Reference values are
computed here from D, Q, U by brute force (materialised components), not by the library."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clora3d.models import PointTransformer
from clora3d.peft import CLORA_DEFAULTS, apply_peft

pytestmark = pytest.mark.usefixtures("one_thread")


def one_step(options: dict) -> tuple[object, torch.nn.Module]:
    """Tiny model + CLoRA(options); one AdamW step on a task loss from Q = 0. Returns the method."""
    torch.manual_seed(0)
    model = PointTransformer.from_preset("tiny", cls_dim=4)
    method = apply_peft(model, {"NAME": "clora", **options})
    params = method.trainable_parameters()
    opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    pts, y = torch.rand(8, 128, 3, generator=g) * 2 - 1, torch.randint(0, 4, (8,), generator=g)
    method.train()
    reg0 = method.regularization_loss()
    assert float(reg0.detach()) == 0.0  # Q = 0: no component yet
    loss = F.cross_entropy(model(pts), y) + reg0
    loss.backward()
    for sp in method.spaces.values():  # step 0: D and U get no task gradient while Q = 0
        assert float(sp.D.grad.abs().max()) == 0.0 and float(sp.U.grad.abs().max()) == 0.0
    opt.step()
    opt.zero_grad(set_to_none=True)
    return method, model, pts, y


def brute_pairs(sp, j: int) -> list[float]:
    p = sp.D.shape[0]
    M = [sp.D[h].detach().double() @ sp.Q[j, h].detach().double() @ sp.U[h].detach().double() for h in range(p)]
    return [float(torch.linalg.matrix_norm(M[a].T @ M[b]) ** 2) for a in range(p) for b in range(a + 1, p)]


def grad_norms(method, model, pts, y) -> tuple[float, float]:
    """Norms of the SADE gradient and of the task gradient on the CLoRA parameters."""
    params = list(method.peft_params.values())
    g_reg = torch.autograd.grad(method.regularization_loss(), params, allow_unused=True)
    g_task = torch.autograd.grad(F.cross_entropy(model(pts), y), params, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs if g is not None)))  # noqa: E731
    return norm(g_reg), norm(g_task)


def test_defaults_make_sade_act_after_the_first_step():
    assert CLORA_DEFAULTS["sade"] and CLORA_DEFAULTS["sade_lambda"] > 0
    method, model, pts, y = one_step({})
    sp = method.spaces["s96x96"]
    pairs = brute_pairs(sp, 0)
    assert min(pairs) > 0  # every pair of components overlaps: there is something to decorrelate
    reg, task = grad_norms(method, model, pts, y)
    assert reg > 0
    assert reg / task > 0.05  # not a rounding error next to the task gradient (old defaults: exactly 0)


def test_old_orthogonal_init_leaves_sade_inert():
    method, model, pts, y = one_step({"init": "orthogonal", "sade_lambda": 0.01, "sade_normalize": False})
    sp = method.spaces["s96x96"]
    assert max(brute_pairs(sp, 0)) < 1e-20  # D_a^T D_b = 0: the components are orthogonal by construction
    reg, task = grad_norms(method, model, pts, y)
    assert task > 0 and reg / task < 1e-6

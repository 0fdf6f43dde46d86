"""CLoRA: collaborative low-rank adaptation with shared subspaces and SADE.

All low-rank modules (LRMs) of one shape share ``p`` down-projection spaces ``D_h`` (d_in x r) and
``p`` up-projection spaces ``U_h`` (r x d_out); LRM ``j`` owns coefficient matrices ``Q_h^j``
(r x r, zero-initialised), and its update (row-vector convention, ``x`` is ``(..., d_in)``) is::

    dW_j = scale * sum_h D_h Q_h^j U_h          (d_in x d_out, rank <= p*r)

Placements:

* ``pre_proj`` (default): identity plus update on the LayerNorm output, just before the frozen
  ``qkv`` and/or ``fc1``: ``y = (x + b_j) + dropout(x + b_j) dW_j`` (``b_j`` only with ``bias``).
  d_in = d_out = trans_dim; one set of spaces; m = len(targets) x len(layers) (2 x depth by default).
  Merge: ``W' = W (I + dW_j)^T`` and the bias folds as ``b' = b + W' b_j`` (or, for the bias-free
  ``qkv``, into the preceding ``norm1.bias``, whose output feeds only ``qkv``).
* ``parallel``: LoRA-style ``y = W x + b + dropout(x) dW_j + b_j`` on the chosen linears. LRMs of equal
  shape (d_in, d_out) share one set of spaces (``D_h`` d_in x r, ``U_h`` r x d_out).
  Merge: ``W' = W + dW_j^T``, ``b' = b + b_j`` (``bias`` needs targets that have a bias).

SADE (sample-agnostic diversity enhancement), over the components ``M_h^j = D_h Q_h^j U_h``::

    L_SADE = sum_j sum_{a<b} ||M_a^T M_b||_F^2                                 (sade_normalize: false)
    L_SADE = sum_j sum_{a<b} ||M_a^T M_b||_F^2 / (||M_a||_F^2 ||M_b||_F^2 + eps)  (sade_normalize: true)

computed exactly through r x r Gram matrices: with ``A = Q_a^T (D_a^T D_b) Q_b`` and ``G_h = U_h U_h^T``,
``||M_a^T M_b||_F^2 = tr(A^T G_a A G_b)`` and ``||M_h||_F^2 = tr(Q_h^T (D_h^T D_h) Q_h G_h)``; no
d x d matrix is formed. ``regularization_loss()`` returns ``sade_lambda * L_SADE`` (``scale`` excluded).

Trainable parameters: ``p (d_in r + r d_out)`` per space set plus ``m p r^2`` coefficients
(``p r^2`` per set with ``shared_q``) plus ``m * d`` biases when ``bias`` is on, plus head and cls tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from clora3d.errors import ConfigError
from clora3d.models.transformer import autocast_dtype
from clora3d.models.transformer import autocast_input as _autocast_input
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec, normalize_targets
from clora3d.peft.registry import register_method
from clora3d.schema import spec

PLACEMENT_TARGETS = {"pre_proj": ["qkv", "fc1"], "parallel": ["qkv", "proj", "fc1", "fc2"]}
DEFAULT_TARGETS = {"pre_proj": ["qkv", "fc1"], "parallel": ["qkv", "proj"]}
#: For pre_proj, the LayerNorm whose output feeds each target (and nothing else) in the canonical Block.
PRE_NORM = {"qkv": "norm1", "fc1": "norm2"}


@dataclass
class CLoRAConfig(PeftConfig):
    """Options of ``peft: {NAME: clora}`` (written, resolved, into adapter metadata)."""

    rank: int = spec(8, gt=0, doc="r: size of each shared space")
    num_spaces: int = spec(4, gt=0, doc="p: number of shared down/up space pairs (p = 1 is an ablation)")
    placement: Literal["pre_proj", "parallel"] = spec("pre_proj", doc="pre_proj | parallel")
    targets: list[str] | None = spec(None, doc="null -> placement default: pre_proj [qkv, fc1], parallel [qkv, proj]")
    layers: list[int] | None = layers_spec()
    scale: float = spec(1.0, doc="multiplies dW")
    dropout: float = spec(0.0, ge=0, lt=1, doc="dropout on the input of the low-rank branch (training only)")
    bias: bool = spec(False, doc="per-LRM bias vector (pre_proj: size d_in, parallel: size d_out)")
    # xavier by default: with jointly orthogonal D_h every D_a^T D_b is 0, so SADE and its gradient
    # stay exactly 0 until the spaces drift (docs/peft.md, "SADE defaults", tools/sade_ablation.py)
    init: Literal["xavier", "orthogonal"] = spec(
        "xavier", doc="xavier (independent spaces) | orthogonal (the p spaces jointly orthonormal when p*r <= d)"
    )
    shared_q: bool = spec(False, doc="CLoRA#: one Q per space shared by all LRMs of a set (identical dW)")
    sade: bool = spec(True, doc="false -> no SADE term (ablation)")
    sade_lambda: float = spec(0.01, ge=0, doc="weight of L_SADE in the total loss (not published; see the ablation)")
    # the unnormalised term grows like ||Q||^4 from Q = 0, so its gradient is ~1e-13 of the task gradient
    # early and <= 0.4% on average
    sade_normalize: bool = spec(True, doc="normalised variant: each pair term in [0, 1], scale-free")
    sade_eps: float = spec(1e-12, ge=0, doc="added to the normaliser")
    # how the unmerged update is applied while training (the same numbers either way, to fp32 rounding)
    train_path: Literal["auto", "factored", "dense"] = spec(
        "auto",
        doc="factored: (x Dcat) V_j, two thin matmuls per LRM (fewest FLOPs); dense: x dW_j with every "
        "dW_j formed once per forward by one batched matmul (one matmul per LRM, fewer kernel launches); "
        "auto: dense for training forwards on CUDA, factored elsewhere",
    )

    def __post_init__(self) -> None:
        targets = DEFAULT_TARGETS[self.placement] if self.targets is None else self.targets
        self.targets = normalize_targets(targets, PLACEMENT_TARGETS[self.placement])


#: Every CLoRA option and its default (the dataclass above is the source).
CLORA_DEFAULTS = config_defaults(CLoRAConfig)


class CLoRASpaces(nn.Module):
    """One set of shared spaces: ``D`` (p, d_in, r), ``U`` (p, r, d_out), ``Q`` (m or 1, p, r, r), ``bias``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        rank: int,
        num_spaces: int,
        num_lrm: int,
        shared_q: bool,
        bias_dim: int | None,
        init: str,
    ) -> None:
        super().__init__()
        p, r = num_spaces, rank
        self.d_in, self.d_out, self.num_lrm, self.shared_q = d_in, d_out, num_lrm, shared_q
        self.D = nn.Parameter(torch.empty(p, d_in, r))
        self.U = nn.Parameter(torch.empty(p, r, d_out))
        self.Q = nn.Parameter(torch.zeros(1 if shared_q else num_lrm, p, r, r))
        self.bias = nn.Parameter(torch.zeros(num_lrm, bias_dim)) if bias_dim else None
        self.reset_spaces(init)

    @torch.no_grad()
    def reset_spaces(self, init: str) -> None:
        p, d_in, r = self.D.shape
        d_out = self.U.shape[2]
        if init == "orthogonal":
            # joint orthogonal init: the p spaces start mutually orthogonal when p*r <= d
            dcat = torch.empty(d_in, p * r)
            nn.init.orthogonal_(dcat)
            self.D.copy_(dcat.reshape(d_in, p, r).permute(1, 0, 2))
            ucat = torch.empty(p * r, d_out)
            nn.init.orthogonal_(ucat)
            self.U.copy_(ucat.reshape(p, r, d_out))
        else:
            for h in range(p):
                nn.init.xavier_uniform_(self.D[h])
                nn.init.xavier_uniform_(self.U[h])

    def q(self, j: int) -> torch.Tensor:
        """Coefficients of LRM ``j``: (p, r, r)."""
        return self.Q[0] if self.shared_q else self.Q[j]

    def factors(self, scale: float, dense: bool) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """The training path's factors for every LRM at once: ``(Dcat (d_in, p*r), (V_j (p*r, d_out), ...))``
        with ``Dcat = [D_1 .. D_p]`` and ``V_j = scale * blockdiag(Q_h^j) [U_1; ..; U_p]``, so that
        ``x dW_j = (x Dcat) V_j``. A handful of ops per forward for all LRMs of the set (one batched
        matmul forms every V_j), instead of a reshape/einsum chain per LRM and per call. ``dense``:
        ``(None, (dW_j (d_in, d_out), ...))`` with every ``dW_j = [D_1 Q_1^j .. D_p Q_p^j] Ucat`` from one
        batched matmul over h and one matmul (``Ucat = [U_1; ..; U_p]`` is a view of U): the fewest
        kernels for a training step, forward and backward."""
        p, d_in, r = self.D.shape
        if dense:
            m = self.Q.shape[0]
            qp = self.Q.permute(1, 2, 0, 3).reshape(p, r, m * r)  # [h][k, (j, l)] = Q_h^j[k, l]
            if scale != 1.0:
                qp = qp * scale
            e = torch.bmm(self.D, qp).view(p, d_in, m, r).permute(2, 1, 0, 3).reshape(m * d_in, p * r)
            return None, (e @ self.U.reshape(p * r, self.d_out)).view(m, d_in, self.d_out).unbind(0)
        dcat = self.D.permute(1, 0, 2).reshape(d_in, p * r)
        v = torch.matmul(self.Q, self.U)  # (m', p, r, d_out)
        if scale != 1.0:
            v = v * scale
        return dcat, v.reshape(v.shape[0], p * r, self.d_out).unbind(0)

    def components(self, j: int) -> torch.Tensor:
        """``M_h^j = D_h Q_h^j U_h`` for all h: (p, d_in, d_out) (materialised; for inspection/tests)."""
        return torch.einsum("hir,hrs,hso->hio", self.D, self.q(j), self.U)

    def delta(self, j: int) -> torch.Tensor:
        """``sum_h D_h Q_h^j U_h`` (d_in x d_out), without the scale."""
        return self.components(j).sum(0)

    def sade(self, normalize: bool, eps: float) -> torch.Tensor:
        """Exact SADE of this set, summed over all LRMs j and pairs a < b (see :func:`sade_total`)."""
        return sade_total([self], normalize, eps)


def _group_key(sp: CLoRASpaces) -> tuple[int, int, int, int]:
    """Sets with equal (p, r, number of Q, LRM weight) stack into one batched SADE term; the weight is
    the number of LRMs for CLoRA# (every LRM of a set has the same components) and 1 otherwise."""
    p, _, r = sp.D.shape
    return p, r, sp.Q.shape[0], sp.num_lrm if sp.shared_q else 1


#: Constant tensors of the batched SADE (block-diagonal mask, weighted pair mask, eps), made once per
#: maker, arguments, dtype and device instead of at every step (each a kernel launch on a GPU).
_SADE_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _eye_blocks(p: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``eye(p)`` viewed as (p, 1, p, 1): the mask of a block-diagonal (p*r, p*r) matrix."""
    return torch.eye(p, dtype=dtype, device=device).view(p, 1, p, 1)


def _pair_weights(
    p: int, batch: tuple[int, ...], weight: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``weight`` on the pairs a < b of a (p, p) matrix, 0 elsewhere, for ``batch`` matrices, flattened."""
    upper = torch.ones(p, p, dtype=dtype, device=device).triu_(1) * weight
    return upper.expand(*batch, p, p).reshape(-1)


def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((), value, dtype=dtype, device=device)


#: at most this many cached constants (a ``sade_lambda`` changed at every step would add one each time)
_SADE_CONSTANTS_MAX = 64


def _sade_constant(make: Callable[..., torch.Tensor], like: torch.Tensor, *args: object) -> torch.Tensor:
    """``make(*args, dtype=like.dtype, device=like.device)``, cached in eager mode (never written to:
    shared by every call) and made outside inference mode (an inference tensor could not be saved for
    a later training backward). Made anew, and not cached, under ``torch.compile`` (in the graph),
    for fake tensors (a ``make_fx`` or memory-estimation trace: a fake constant must not reach a
    later eager call, nor a real one a fake trace) and while a CUDA graph is being captured (its
    kernels would not have run yet)."""
    key = (make, *args, like.dtype, like.device)
    transient = (
        torch.compiler.is_compiling()
        or isinstance(like, FakeTensor)
        or (like.is_cuda and torch.cuda.is_current_stream_capturing())
    )
    t = None if transient else _SADE_CONSTANTS.get(key)
    if t is None:
        with torch.inference_mode(False):
            t = make(*args, dtype=like.dtype, device=like.device)
        if not transient and type(t) is torch.Tensor:
            if len(_SADE_CONSTANTS) >= _SADE_CONSTANTS_MAX:
                _SADE_CONSTANTS.clear()
            _SADE_CONSTANTS[key] = t
    return t


class _SadeBlocks(torch.autograd.Function):
    """``weight * sum_{S, j, a<b} c_ab`` for S stacked sets of equal (p, r, number of Q), with
    ``c_ab = ||M_a^T M_b||_F^2`` (divided by ``||M_a||_F^2 ||M_b||_F^2 + eps`` when normalising), from the
    sets' ``D`` (p, d_in, r), ``U`` (p, r, d_out) and ``Q`` (m, p, r, r) (``apply(weight, normalize, eps,
    *Ds, *Us, *Qs)``); see :func:`sade_total` for the block form.

    The backward is written out, down to the gradients of D, U and Q (fewer kernels than autograd
    records for the same forward, and the forward runs without a graph). With ``gd = Dcat^T Dcat``,
    ``G_h = U_h U_h^T``, ``Qbd = blockdiag(Q_h)``, ``Gbd = blockdiag(G_h)``, ``A = Qbd^T gd Qbd``
    (symmetric, as gd is) and ``w_ab`` the gradient of the loss w.r.t. ``c_ab`` expanded to blocks
    (``o`` elementwise):

    * ``c_ab = <A_ab, G_a A_ab G_b>``, so ``dL/dA = 2 w o (Gbd A Gbd)``, and ``dL/dG_h`` is the h-th
      diagonal block of ``(w o A + (w o A)^T) Gbd A``;
    * normalised: ``n_h = ||M_h||_F^2 = <A_hh, G_h>`` adds ``dn_h G_h`` to block (h, h) of ``dL/dA`` and
      ``dn_h A_hh`` to ``dL/dG_h``, with ``dn = -(Y + Y^T) n`` and ``Y = dL/dc o c / (n_a n_b + eps)``;
    * ``A = Qbd^T gd Qbd`` gives ``dL/dQbd = gd Qbd (dA + dA^T)`` (its diagonal blocks are dL/dQ_h)
      and ``dL/dgd = sum_j Qbd dA Qbd^T``;
    * the Gram matrices: ``dL/dDcat = Dcat (dgd + dgd^T)`` and ``dL/dU_h = (dG_h + dG_h^T) U_h``."""

    @staticmethod
    def forward(ctx, weight: float, normalize: bool, eps: float, *tensors):  # noqa: ANN001
        S = len(tensors) // 3
        Ds, Us, Qs = tensors[:S], tensors[S : 2 * S], tensors[2 * S :]
        m, p, r = Qs[0].shape[:3]
        pr = p * r
        dcats = [D.permute(1, 0, 2).reshape(-1, pr) for D in Ds]
        if S == 1:  # no copies for the usual single set
            gd, gu, Q = (dcats[0].mT @ dcats[0]).unsqueeze(0), (Us[0] @ Us[0].mT).unsqueeze(0), Qs[0].unsqueeze(0)
        else:
            gd = torch.stack([dc.mT @ dc for dc in dcats])  # (S, pr, pr): D_a^T D_b blocks
            gu = torch.stack([U @ U.mT for U in Us])  # (S, p, r, r): G_h = U_h U_h^T
            Q = torch.stack(Qs)
        eye = _sade_constant(_eye_blocks, Q, p)
        qbd = (Q.unsqueeze(-2) * eye).reshape(S, m, pr, pr)  # blockdiag(Q_h)
        gbd = (gu.unsqueeze(-2) * eye).reshape(S, 1, pr, pr)  # blockdiag(G_h)
        pq = gd.unsqueeze(1) @ qbd  # gd Qbd
        A = qbd.mT @ pq  # (S, m, pr, pr); block (a, b) = Q_a^T D_a^T D_b Q_b
        ga = gbd @ A
        bm = ga @ gbd  # Gbd A Gbd
        cross = (A * bm).reshape(S, m, p, r, p, r).sum((3, 5))  # (S, m, p, p): ||M_a^T M_b||_F^2
        pairs = _sade_constant(_pair_weights, Q, p, (S, m), weight)  # weight on a < b, flattened
        norms = denom = None
        if normalize:
            diag = torch.diagonal(A.reshape(S, m, p, r, p, r), dim1=2, dim2=4)  # (S, m, r, r, p)
            norms = (diag * gu.permute(0, 2, 3, 1).unsqueeze(1)).sum((2, 3))  # (S, m, p): ||M_h||_F^2
            denom = torch.addcmul(_sade_constant(_scalar, Q, eps), norms.unsqueeze(3), norms.unsqueeze(2))
            cross = cross / denom  # c_ab
        total = torch.dot(cross.reshape(-1), pairs)
        ctx.save_for_backward(*dcats, *Us, qbd, gbd, pq, A, ga, bm, cross, pairs, norms, denom)
        ctx.normalize, ctx.S, ctx.p = normalize, S, p
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001
        S, p = ctx.S, ctx.p
        saved = ctx.saved_tensors
        dcats, Us = saved[:S], saved[S : 2 * S]
        qbd, gbd, pq, A, ga, bm, cross, pairs, norms, denom = saved[2 * S :]
        m, pr = A.shape[1:3]
        r = pr // p
        blocks = (S, m, p, r, p, r)
        w = pairs.view(S, m, p, p) * grad  # dL/dc_ab
        if ctx.normalize:  # cross holds c_ab = ||M_a^T M_b||_F^2 / denom_ab
            w = w / denom  # dL/d||M_a^T M_b||_F^2 (S, m, p, p)
            y = w * cross
            nv = norms.view(S * m, p, 1)
            # s = dL/dn = -(Y + Y^T) n, as one batched matmul with alpha -1 (beta 0: nv only gives the shape)
            s = torch.baddbmm(nv, (y + y.mT).view(S * m, p, p), nv, beta=0, alpha=-1).view(S, m, p, 1, 1, 1)
        wb = w.view(S, m, p, 1, p, 1)
        aw = (A.view(blocks) * wb).view(S * m, pr, pr)
        aw = aw + aw.mT
        ga = ga.view(S * m, pr, pr)
        if ctx.normalize:
            dA = torch.addcmul(gbd.view(S, 1, p, r, p, r) * s, bm.view(blocks), wb, value=2).view(S, m, pr, pr)
            z = torch.baddbmm((A.view(blocks) * s).view(S * m, pr, pr), aw, ga)
        else:
            dA = (bm.view(blocks) * (2 * wb)).view(S, m, pr, pr)
            z = torch.bmm(aw, ga)
        dgu = torch.diagonal(z.view(blocks), dim1=2, dim2=4).sum(1).permute(0, 3, 1, 2)  # (S, p, r, r)
        sdA = dA + dA.mT
        dQ = torch.diagonal((pq @ sdA).view(blocks), dim1=2, dim2=4).permute(0, 1, 4, 2, 3)  # (S, m, p, r, r)
        dgd = (qbd @ dA @ qbd.mT).sum(1)  # (S, pr, pr)
        dDs, dUs = [], []
        for i in range(S):
            d_in = dcats[i].shape[0]
            dDs.append((dcats[i] @ (dgd[i] + dgd[i].mT)).view(d_in, p, r).permute(1, 0, 2))
            dUs.append((dgu[i] + dgu[i].mT) @ Us[i])
        return (None, None, None, *dDs, *dUs, *dQ.unbind(0))


def sade_total(sets: list[CLoRASpaces], normalize: bool, eps: float, scale: float = 1.0) -> torch.Tensor:
    """Exact SADE summed over space sets, LRMs j and pairs a < b, via r x r Gram matrices.

    Block form: with ``Dcat = [D_1 .. D_p]`` (d_in, p*r), ``Qbd_j = blockdiag(Q_h^j)`` and
    ``Gbd = blockdiag(U_h U_h^T)``, the (a, b) block of ``A_j = Qbd_j^T (Dcat^T Dcat) Qbd_j`` is
    ``Q_a^T D_a^T D_b Q_b`` and that of ``Gbd A_j Gbd`` is ``G_a A G_b``; their elementwise product
    summed over the block is ``||M_a^T M_b||_F^2``. Sets with the same (p, r, number of Q, LRM weight)
    are stacked, so the whole term is a few batched matmuls however many sets there are (``parallel``
    has one set per target shape), with a written-out backward (:class:`_SadeBlocks`). Computed in
    the spaces' dtype even under autocast (a ratio of fourth powers does not survive bfloat16).
    ``scale`` multiplies the result (folded into the batched term: no extra kernel)."""
    groups: dict[tuple[int, int, int, int], list[CLoRASpaces]] = {}
    for sp in sets:  # not dict.setdefault: torch 2.4's Dynamo does not trace it
        key = _group_key(sp)
        if key not in groups:
            groups[key] = []
        groups[key].append(sp)
    total = None
    device_type = sets[0].D.device.type
    no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
    with no_autocast:
        for (p, _, _, weight), group in groups.items():
            if p < 2:
                continue
            tensors = [sp.D for sp in group] + [sp.U for sp in group] + [sp.Q for sp in group]
            part = _SadeBlocks.apply(float(weight) * scale, normalize, eps, *tensors)
            total = part if total is None else total + part
    return sets[0].D.new_zeros(()) if total is None else total


def dense_path(train_path: str, device: torch.device, training: bool) -> bool:
    """Whether ``train_path`` (CLoRAConfig) means the dense path for spaces on ``device``: ``dense``, or
    ``auto`` in a training forward on CUDA (where a step of this size is bound by kernel launches;
    evaluation keeps the factored path's fewer FLOPs per sample, and so do FLOP reports)."""
    return train_path == "dense" or (train_path == "auto" and training and device.type == "cuda")


class _FactorCache:
    """Per-forward factors of every space set (see ``CLoRASpaces.factors``): filled by a pre-hook
    on the block stack, emptied by its post-hook, so each forward of the model forms them once (and
    a later forward never sees the graph of an earlier one). An LRM hook that runs outside the stack
    (a block called on its own) forms its set's factors itself. ``train_path`` (CLoRAConfig) picks
    factored or dense factors; ``auto`` decides by the device of the spaces and the mode (see
    :func:`dense_path`)."""

    def __init__(self, spaces: nn.ModuleDict, scale: float, train_path: str) -> None:
        self.spaces, self.scale, self.train_path = spaces, scale, train_path
        self.factors: dict[str, tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]] = {}

    def _form(self, sp: CLoRASpaces, training: bool) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        return sp.factors(self.scale, dense_path(self.train_path, sp.D.device, training))

    def fill(self, module: nn.Module, args: tuple) -> None:
        self.factors = {key: self._form(sp, module.training) for key, sp in self.spaces.items()}

    def clear(self, module: nn.Module, args: tuple, out: object) -> None:
        self.factors = {}

    def get(self, key: str, j: int, training: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        f = self.factors.get(key)
        if f is None:
            f = self._form(self.spaces[key], training)
        dcat, vs = f
        return dcat, vs[0 if self.spaces[key].shared_q else j]


def _low_rank_add(base: torch.Tensor, x: torch.Tensor, dcat: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """``base + (x Dcat) V`` for ``x (..., d_in)`` and ``base (..., d_out)``: two matmuls (mm, addmm);
    with ``dcat`` None, ``v`` is the dense ``dW`` and it is one addmm, ``base + x dW``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    z = x2 if dcat is None else x2 @ dcat
    return torch.addmm(base.reshape(-1, base.shape[-1]), z, v).view(*lead, v.shape[1])


class _IdentityPlusLowRank(torch.autograd.Function):
    """``x + (x Dcat) V`` for 2-D ``x`` (``x + x dW`` with ``dcat`` None), the pre_proj update when ``x`` is
    both the identity term and the branch's input. The forward is :func:`_low_rank_add`'s; the
    backward folds the identity's gradient into the branch's, ``dx = g + (g V^T) Dcat^T`` (dense:
    ``g + g dW^T``) as one addmm, where autograd adds the two paths' gradients in a kernel of its own
    (one launch fewer per LRM and step, and the sum rounded once). Every operand is in ``x``'s dtype
    (the caller routes an ``x`` that autocast would cast to :func:`_low_rank_add`); autograd converts
    the gradients of ``dcat`` and ``V`` to their dtypes, as after autocast's casts. A backward that
    builds a graph (``create_graph=True``) forms its operands again from the inputs, so
    it is differentiable too."""

    @staticmethod
    def forward(ctx, x, dcat, v):  # noqa: ANN001
        dc = None if dcat is None else dcat.to(x.dtype)
        vc = v.to(x.dtype)
        z = x if dc is None else x @ dc
        ctx.dense = dc is None
        if ctx.dense:
            ctx.save_for_backward(x, v, vc)
        else:
            ctx.save_for_backward(x, dcat, v, dc, vc, z)
        return torch.addmm(x, z, vc)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        need_x, need_d, need_v = ctx.needs_input_grad
        graph = torch.is_grad_enabled()  # create_graph: the operands again, with their graph
        gx = gd = gv = None
        if ctx.dense:
            x, v, vc = ctx.saved_tensors
            if graph:
                vc = v.to(x.dtype)
            if need_v:
                gv = x.mT @ g
            if need_x:
                gx = torch.addmm(g, g, vc.mT)
            return gx, None, gv
        x, dcat, v, dc, vc, z = ctx.saved_tensors
        if graph:
            dc, vc = dcat.to(x.dtype), v.to(x.dtype)
            z = x @ dc
        if need_v:
            gv = z.mT @ g
        if need_x or need_d:
            gz = g @ vc.mT
            if need_d:
                gd = x.mT @ gz
            if need_x:
                gx = torch.addmm(g, gz, dc.mT)
        return gx, gd, gv


def _identity_plus_low_rank(x: torch.Tensor, dcat: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """``x + (x Dcat) V`` (dense: ``x + x dW``) for ``x (..., d_in)``, through
    :class:`_IdentityPlusLowRank`; an ``x`` that autocast would still cast goes through
    :func:`_low_rank_add` (autocast's casts and dtypes), and so does a call under a ``torch.func``
    transform (vmap, grad, jvp: they take autograd's rules for plain ops, not a written-out backward)."""
    cast = autocast_dtype(x)
    if cast is not None and cast != x.dtype and x.dtype != torch.float64:  # autocast would cast x
        return _low_rank_add(x, x, dcat, v)
    if torch._C._are_functorch_transforms_active():
        return _low_rank_add(x, x, dcat, v)
    lead = x.shape[:-1]
    out = _IdentityPlusLowRank.apply(x.reshape(-1, x.shape[-1]), dcat, v)
    return out.view(*lead, out.shape[-1])


class _LRM:
    """One low-rank module on a target linear: its forward hook (subclasses), its update ``dW_j`` and
    its merge into the frozen weights (float64) with an exact unmerge (the originals are kept)."""

    def __init__(
        self,
        cache: _FactorCache,
        key: str,
        j: int,
        p: float,
        lin: nn.Linear,
        name: str,
        norm: nn.Module | None = None,
        norm_name: str = "",
    ) -> None:
        self.cache, self.key, self.j, self.p, self.lin, self.name = cache, key, j, p, lin, name
        self.norm, self.norm_name = norm, norm_name
        self.space = cache.spaces[key]
        self.originals: list[tuple[torch.Tensor, torch.Tensor]] = []

    def delta(self) -> torch.Tensor:
        """``dW_j`` (d_in x d_out, scale included)."""
        return self.cache.scale * self.space.delta(self.j)

    def _set(self, t: torch.Tensor, value64: torch.Tensor) -> None:
        self.originals.append((t, t.detach().clone()))
        t.copy_(value64.to(t.dtype))

    def unmerge(self) -> None:
        """Put back exactly the tensors :meth:`merge` changed."""
        for t, original in reversed(self.originals):
            t.copy_(original)
        self.originals = []


class _PreProjHook(_LRM):
    """Forward pre-hook of a target linear: ``x -> (x + b_j) + scale * dropout(x + b_j) dW_j``."""

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if self.space.bias is not None:
            x = x + self.space.bias[self.j]
        if self.p > 0:
            xd = F.dropout(x, self.p, module.training)
        else:
            # x is both the identity term and the branch's input: under autocast cast it once (the
            # addmm would cast it twice, and the backward convert both gradients back)
            x = xd = _autocast_input(x)
        dcat, v = self.cache.get(self.key, self.j, module.training)
        if xd is x:
            return (_identity_plus_low_rank(x, dcat, v),) + tuple(args[1:])
        return (_low_rank_add(x, xd, dcat, v),) + tuple(args[1:])

    def merge(self) -> None:
        """``W' = W (I + dW)^T``; the bias ``b_j`` folds as ``b' = b + W' b_j``, or into the preceding
        LayerNorm's bias (whose output feeds only this linear) when the linear has none."""
        lin, W64 = self.lin, self.lin.weight.detach().to(torch.float64)
        W_new = W64 + W64 @ self.delta().detach().to(torch.float64).T
        bias = self.space.bias
        if bias is not None:
            b_j = bias[self.j].detach().to(torch.float64)
            if lin.bias is not None:
                self._set(lin.bias, lin.bias.detach().to(torch.float64) + W_new @ b_j)
            else:
                if getattr(self.norm, "bias", None) is None:
                    raise RuntimeError(
                        f"clora merge: {self.name} has no bias and {self.norm_name} has none to fold "
                        f"the per-LRM bias into"
                    )
                self._set(self.norm.bias, self.norm.bias.detach().to(torch.float64) + b_j)
        self._set(lin.weight, W_new)


class _ParallelHook(_LRM):
    """Forward hook of a target linear: ``y -> y + scale * dropout(x) dW_j (+ b_j)``."""

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = F.dropout(args[0], self.p, module.training) if self.p > 0 else args[0]
        dcat, v = self.cache.get(self.key, self.j, module.training)
        out = _low_rank_add(out, x, dcat, v)
        if self.space.bias is not None:
            out = out + self.space.bias[self.j]
        return out

    def merge(self) -> None:
        """``W' = W + dW^T``, ``b' = b + b_j``."""
        lin = self.lin
        bias = self.space.bias
        if bias is not None:
            self._set(lin.bias, lin.bias.detach().to(torch.float64) + bias[self.j].detach())
        self._set(lin.weight, lin.weight.detach().to(torch.float64) + self.delta().detach().to(torch.float64).T)


@register_method
class CLoRA(PeftMethod):
    """Collaborative LoRA (see module docstring for the maths, placements and options)."""

    name = "clora"
    config_class = CLoRAConfig
    mergeable = True

    # -- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.targets = list(cfg.targets)
        self.layers = self.resolve_layers()
        pre = cfg.placement == "pre_proj"

        # LRMs in order (layer-major); group them by (d_in, d_out)
        self.lrms: list[tuple[int, str, str, int]] = []  # (block, target, group key, index in group)
        shapes: dict[str, tuple[int, int]] = {}
        counts: dict[str, int] = {}
        for i in self.layers:
            for t in self.targets:
                lin = self.block_linear(i, t)
                d_in = lin.in_features
                d_out = lin.in_features if pre else lin.out_features
                if cfg.bias and not pre and lin.bias is None:
                    raise ConfigError(
                        f"peft method 'clora': bias: true with placement 'parallel' needs targets that have a bias "
                        f"to merge into, but {self.block_linear_name(i, t)} has none; drop {t!r} from targets or "
                        f"set bias: false"
                    )
                key = f"s{d_in}x{d_out}"
                shapes[key] = (d_in, d_out)
                self.lrms.append((i, t, key, counts.get(key, 0)))
                counts[key] = counts.get(key, 0) + 1
        self.spaces = nn.ModuleDict(
            {
                key: CLoRASpaces(
                    d_in,
                    d_out,
                    cfg.rank,
                    cfg.num_spaces,
                    counts[key],
                    cfg.shared_q,
                    (d_in if pre else d_out) if cfg.bias else None,
                    cfg.init,
                )
                for key, (d_in, d_out) in shapes.items()
            }
        )
        ref = self.reference_parameter()
        self.spaces.to(device=ref.device, dtype=ref.dtype)
        self.peft_params = {f"peft.{n_}": p for n_, p in self.spaces.named_parameters()}
        self.peft_module = self.spaces
        self._cache = _FactorCache(self.spaces, float(cfg.scale), cfg.train_path)
        kind = _PreProjHook if pre else _ParallelHook
        #: the LRM layers, in the order of ``self.lrms``: each is its linear's hook and owns its merge
        self.lrm_layers: list[_LRM] = [
            kind(
                self._cache,
                key,
                j,
                cfg.dropout,
                self.block_linear(i, t),
                self.block_linear_name(i, t),
                *((getattr(self.blocks[i], PRE_NORM[t]), f"blocks.blocks.{i}.{PRE_NORM[t]}") if pre else ()),
            )
            for i, t, key, j in self.lrms
        ]

    # -- hooks ------------------------------------------------------------------------------------
    def _attach(self) -> None:
        self._hook_pre(self.model.blocks, self._cache.fill)
        self._hook_post(self.model.blocks, self._cache.clear)
        for lrm in self.lrm_layers:
            if isinstance(lrm, _PreProjHook):
                self._hook_pre(lrm.lin, lrm)
            else:
                self._hook_post(lrm.lin, lrm)

    # -- inspection -------------------------------------------------------------------------------
    def lrm_names(self) -> list[str]:
        """Module names of the LRMs' target linears, in LRM order."""
        return [self.block_linear_name(i, t) for i, t, _, _ in self.lrms]

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """``dW_j`` (d_in x d_out, scale included) per LRM, keyed by target linear name."""
        return {lrm.name: lrm.delta() for lrm in self.lrm_layers}

    def no_weight_decay(self) -> set[str]:
        """The stacked per-LRM bias vectors (m, d): biases, although 2-D."""
        return {f"peft.{k}.bias" for k, sp in self.spaces.items() if sp.bias is not None}

    def regularization_loss(self) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.sade or cfg.sade_lambda == 0.0:
            return self.reference_parameter().new_zeros(())
        return sade_total(list(self.spaces.values()), cfg.sade_normalize, cfg.sade_eps, cfg.sade_lambda)

    # -- merge ------------------------------------------------------------------------------------
    def _merge_weights(self) -> None:
        for lrm in self.lrm_layers:
            lrm.merge()

    def _restore_weights(self) -> None:
        for lrm in reversed(self.lrm_layers):
            lrm.unmerge()

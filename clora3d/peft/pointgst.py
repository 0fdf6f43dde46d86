"""PointGST, Point cloud Graph Spectral Tuning (Liang et al., 2024).

Built from the paper and the facts of its repository (jerryfeng2003/PointGST at 7fbe92f,
``reference/point_mae_family.md`` §8.3); attached to the canonical Block by hooks.

* **Spectral bases, recomputed every forward** from the patch centres (hook on ``group_divider``):
  a dense graph with weights ``W = 1 / (dist / d_min + I)`` (``d_min`` = the smallest positive
  centre distance over the whole batch), its normalized Laplacian ``L = I - D^-1/2 W D^-1/2``
  (``D^-1/2 = rsqrt(deg + 1e-6)``) and the eigenvectors ``U`` (columns, ``torch.linalg.eigh``,
  float32): one global G x G basis, and local ``local_size`` x ``local_size`` bases of the
  sub-groups obtained by sorting the centres along a z-order (Morton) curve of
  ``trunc(100 * centre)`` (axis order y, x, z, 16 bits per axis) and cutting the order in chunks.
  Two deliberate differences: eigenvector signs are canonical here (the largest-magnitude entry of
  each is positive), which the reference leaves to the eigen-solver (device-dependent); distances are
  computed exactly, whereas the reference's ``torch.cdist`` takes its matmul path for more than 25
  centres, whose diagonal holds rounding residues (measured ~1e-4 instead of 0), so its ``d_min`` is
  such a residue rather than the smallest centre distance and its graph weights differ accordingly.
* **PCSA adapter in parallel with the MLP**, on the block's stream ``x`` after the attention residual:
  ``h = down(x)`` (Linear d -> r, xavier); for the patch tokens ``p = h[-G:]`` (pre-activation),
  ``g = U^T (c + SiLU(adapt(LN_g(c))))`` with ``c = U p`` (global), the same with the local bases on the
  z-ordered chunks with ``LN_l`` and the *same* ``adapt`` (Linear r -> r, zero init), un-sorted back;
  then ``t = up(SiLU(h) + [0 | g + l]) * scale`` (``up`` zero init) and the block returns
  ``x + DP(mlp(norm2 x)) + t``. As in the reference the forward transform multiplies by ``U`` (not
  ``U^T``); ``U`` is orthogonal, so with ``adapt = 0`` the spectral round trip is exact.
* ``up`` starts at zero: the adapted model equals the pre-trained one at step 0.

ViT-S, 15 classes, rank 36: 12 x 29,544 + cls 768 + head 267,535 = 622,831. New modules live in
``peft.*``. Not mergeable (input-dependent bases).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from clora3d.errors import ConfigError
from clora3d.models.transformer import Linear
from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec
from clora3d.peft.registry import register_method
from clora3d.schema import spec


@dataclass
class PointGSTConfig(PeftConfig):
    """Options of ``peft: {NAME: pointgst}``."""

    rank: int = spec(36, gt=0, doc="width r of the spectral adapter")
    local_size: int = spec(32, gt=0, doc="tokens per local sub-group (reference `local: 32`); must divide num_group")
    scale: float = spec(1.0, doc="output scale of the adapter (reference: 1)")
    layers: list[int] | None = layers_spec()


POINTGST_DEFAULTS = config_defaults(PointGSTConfig)


# ------------------------------------------------------------------------------------------------
# graph spectral bases
# ------------------------------------------------------------------------------------------------
def zorder_keys(xyz: torch.Tensor, scale: float = 100.0, bits: int = 16) -> torch.Tensor:
    """Morton keys of ``trunc(scale * xyz)`` (int64, last dim 3), interleaving ``bits`` low bits per axis
    with axis order (y, x, z) from the most significant bit of each triple, as the reference."""
    q = (xyz * scale).to(torch.int64) & ((1 << bits) - 1)  # trunc toward zero, two's complement low bits
    a, b, c = q[..., 1], q[..., 0], q[..., 2]
    key = torch.zeros_like(a)
    for i in range(bits):
        key |= ((a >> i) & 1) << (3 * i + 2)
        key |= ((b >> i) & 1) << (3 * i + 1)
        key |= ((c >> i) & 1) << (3 * i)
    return key


def graph_basis(center: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns, ascending eigenvalues, canonical signs) of the normalized Laplacian of the
    dense graph ``W = 1 / (dist / d_min + I)`` over ``center (..., n, 3)``; d_min over the whole tensor."""
    c = center.float()
    # exact differences: torch.cdist's default matmul path (used above 25 points) leaves rounding residues
    # of ~1e-4 on the diagonal, which would then be taken for d_min
    d = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist")
    pos = d[d > 0]
    d_min = pos.min() if pos.numel() else d.new_ones(())
    n = d.shape[-1]
    w = 1.0 / (d / d_min + torch.eye(n, dtype=d.dtype, device=d.device))
    dinv = torch.rsqrt(w.sum(-1) + 1e-6)
    lap = torch.eye(n, dtype=d.dtype, device=d.device) - dinv.unsqueeze(-1) * w * dinv.unsqueeze(-2)
    _, u = torch.linalg.eigh(lap)
    idx = u.abs().argmax(dim=-2, keepdim=True)  # canonical sign per eigenvector
    sign = torch.sign(torch.gather(u, -2, idx))
    return u * torch.where(sign == 0, torch.ones_like(sign), sign)


class SpectralState:
    """Bases of the current forward, filled by the ``group_divider`` hook."""

    def __init__(self, local_size: int) -> None:
        self.local_size = local_size
        self.U: torch.Tensor | None = None  # (B, G, G)
        self.subU: torch.Tensor | None = None  # (B, G/s, s, s)
        self.order: torch.Tensor | None = None  # (B, G) z-order permutation
        self.inverse: torch.Tensor | None = None  # (B, G) its inverse

    def __call__(self, module: nn.Module, args: tuple, out: tuple) -> None:
        center = out[1]
        B, G, _ = center.shape
        s = self.local_size
        if G % s:
            raise ValueError(f"pointgst: local_size={s} must divide the number of groups G={G}")
        with torch.no_grad(), torch.autocast(center.device.type, enabled=False):
            self.U = graph_basis(center)
            order = torch.sort(zorder_keys(center), dim=1, stable=True).indices
            self.order, self.inverse = order, torch.argsort(order, dim=1)
            sub = torch.gather(center, 1, order.unsqueeze(-1).expand(-1, -1, 3))
            self.subU = graph_basis(sub.reshape(B, G // s, s, 3))


class PCSA(nn.Module):
    """The spectral adapter of one block (see module docstring)."""

    def __init__(self, dim: int, rank: int, scale: float) -> None:
        super().__init__()
        self.down = Linear(dim, rank)
        self.up = Linear(rank, dim)
        self.adapt = Linear(rank, rank)
        self.norm_global = nn.LayerNorm(rank)
        self.norm_local = nn.LayerNorm(rank)
        self.scale = scale
        nn.init.xavier_uniform_(self.down.weight)
        for t in (self.up.weight, self.up.bias, self.adapt.weight, self.adapt.bias):
            nn.init.zeros_(t)

    def spectral(self, c: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return c + F.silu(self.adapt(norm(c)))

    def forward(self, x: torch.Tensor, st: SpectralState) -> torch.Tensor:
        h = self.down(x)
        G = st.U.shape[-1]
        p = h[:, -G:]
        U = st.U.to(p.dtype)
        g = U.transpose(-2, -1) @ self.spectral(U @ p, self.norm_global)
        B, n, s, _ = st.subU.shape
        r = p.shape[-1]
        subU = st.subU.to(p.dtype)
        q = torch.gather(p, 1, st.order.unsqueeze(-1).expand(-1, -1, r)).reshape(B, n, s, r)
        q = subU.transpose(-2, -1) @ self.spectral(subU @ q, self.norm_local)
        loc = torch.gather(q.reshape(B, G, r), 1, st.inverse.unsqueeze(-1).expand(-1, -1, r))
        a = F.silu(h)
        a = torch.cat([a[:, :-G], a[:, -G:] + g + loc], dim=1)
        return self.up(a) * self.scale


class _Stash:
    """Forward pre-hook of ``norm2``: remembers its input (the stream after the attention residual)."""

    def __init__(self) -> None:
        self.value = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]


class _AddPCSA:
    """Forward hook of a Block: ``out + PCSA(stashed stream)``."""

    def __init__(self, stash: _Stash, pcsa: PCSA, state: SpectralState) -> None:
        self.stash, self.pcsa, self.state = stash, pcsa, state

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x, self.stash.value = self.stash.value, None
        if self.state.U is None:
            raise RuntimeError(
                "pointgst: the blocks ran without the backbone's grouping (no spectral basis); "
                "call the model on the point cloud"
            )
        return out + self.pcsa(x, self.state)


@register_method
class PointGST(PeftMethod):
    """PointGST (see module docstring)."""

    name = "pointgst"
    config_class = PointGSTConfig

    def _setup(self) -> None:
        cfg = self.cfg
        if not hasattr(self.model, "group_divider"):
            raise ValueError("pointgst needs a PointTransformer (group_divider gives the patch centres)")
        G = int(getattr(self.model, "num_group", 0) or self.model.group_divider.num_group)
        if G % cfg.local_size:
            raise ConfigError(
                f"peft method 'pointgst': local_size={cfg.local_size} must divide the model's num_group={G}"
            )
        self.layers = self.resolve_layers()
        ref = self.reference_parameter()
        self.adapters = nn.ModuleDict({str(i): PCSA(self.dim, cfg.rank, cfg.scale) for i in self.layers})
        self.adapters.to(device=ref.device, dtype=ref.dtype)
        self.state = SpectralState(cfg.local_size)
        self.peft_params = {f"peft.{k}": p for k, p in self.adapters.named_parameters()}
        self.peft_module = self.adapters

    def _attach(self) -> None:
        self._hook_post(self.model.group_divider, self.state)
        for i in self.layers:
            stash = _Stash()
            self._hook_pre(self.blocks[i].norm2, stash)
            self._hook_post(self.blocks[i], _AddPCSA(stash, self.adapters[str(i)], self.state))

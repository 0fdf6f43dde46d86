"""The one canonical transformer building blocks (timm-style): DropPath, Mlp, Attention, Block.

Every PEFT method attaches to these by hooks or by module replacement; none forks them.
Module and parameter names mirror Point-MAE (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) so official checkpoints load unchanged.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


#: the Linear layers inside a reuse_frozen_casts scope (a copy of a layer, e.g. deepcopy, is not)
_REUSING: weakref.WeakSet = weakref.WeakSet()

#: device types whose autocast state can be asked (torch.is_autocast_enabled raises on others, e.g. meta)
AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps")


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast casts float32 inputs on ``x``'s device to, or None when autocast is off
    there (or cannot be asked, as on meta tensors)."""
    dev = x.device.type
    if dev in AUTOCAST_DEVICES and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype of its device when autocast is on there and would cast it (the
    same rounding as autocast's own cast), else ``x``: an input that two ops use (a frozen linear and
    a low-rank branch beside it) cast once instead of by each, its two gradients summed in that dtype
    and converted back once."""
    dtype = autocast_dtype(x) if x.dtype == torch.float32 else None
    return x if dtype is None else x.to(dtype)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, keys, initialisation and numbers) that can reuse, inside a
    :func:`reuse_frozen_casts` scope, its autocast copies of a frozen weight and bias.

    Autocast casts every float32 weight at every use: 5 casts per block for ViT-S, about 100 kernel
    launches per training step for a PEFT method whose base is frozen (each a launch on a GPU step
    that is bound by launches). Inside the scope a frozen ``nn.Parameter`` is cast once and the copy
    reused: the very tensor autocast would make (the same rounding), so outputs and gradients are
    bit-identical. Outside a scope it is exactly ``nn.Linear``. Trainable tensors are cast once per
    forward, all layers' together, inside the scope's :meth:`CastScope.forward`, and are autocast's
    business elsewhere. Anything that is not the module's own ``nn.Parameter`` (``functional_call``
    substitutes, parametrizations, ``vmap``/``jvp`` wrappers), inference tensors and compiled graphs
    are left to autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.linear(x, self.weight, self.bias)
        return self._forward_reusing_casts(x)

    @torch.jit.unused
    def _forward_reusing_casts(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if (dtype := self._reuse_dtype(x)) is not None:
            w = self._cast(w, dtype, "_w")
            if b is not None:
                b = self._cast(b, dtype, "_b")
        return F.linear(x, w, b)

    def _reuse_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The autocast dtype when this forward on ``x`` may use kept copies, else None."""
        if (
            not torch.compiler.is_compiling()  # first: Dynamo folds it, and traces nothing below
            and self in _REUSING
            and isinstance(x, torch.Tensor)  # not an fx Proxy
            and not torch.jit.is_tracing()  # a trace would keep the copies as constants
            and not torch.is_inference_mode_enabled()
            and not torch._C._functorch.is_functorch_wrapped_tensor(x)  # vmap/grad levels: autocast's rules there
        ):
            return autocast_dtype(x)
        return None

    def trainable_copies(self, x: torch.Tensor, *names: str) -> tuple[torch.Tensor, ...]:
        """This layer's own parameters ``names`` (ones that are not ``weight`` or ``bias``: LoRA factors
        registered on the layer) as an op on ``x`` in this forward should use them: for each, the copy
        that the scope's :meth:`CastScope.forward` made together with the other trainable tensors, when
        there is one for this very parameter, dtype and version; else the parameter (autocast casts it)."""
        dtype = self._reuse_dtype(x)  # once for all of them
        out = []
        for name in names:
            t = self._parameters[name]
            trainable = type(t) is nn.Parameter and t.requires_grad
            out.append(self._cast(t, dtype, _extra_slot(name)) if trainable and dtype is not None else t)
        return tuple(out)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        # .to() / .cuda() / .half(): drop the copies (they would hold memory on the old device)
        self.drop_casts()
        return super()._apply(fn, recurse)

    def drop_casts(self) -> None:
        """Forget the kept copies."""
        for slot in _CAST_SLOTS:
            self.__dict__.pop(slot, None)

    def __getstate__(self) -> dict:
        # copy.deepcopy / pickle / torch.save(model): the copies are not part of the layer
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k not in _CAST_SLOTS}

    def _cast(self, t: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
        if type(t) is nn.Parameter and t.requires_grad:
            # trainable: the copy the scope made for this forward of the model, with all the others
            # (see _cast_trainable), when it is this very Parameter in this dtype; else autocast's
            made = self.__dict__.get("_step", {}).get(slot)
            if (
                made is not None
                and made[0] is t
                and made[1] == dtype
                and made[3] == t._version  # not changed in place since the scope cast it
                and (made[2].requires_grad or not torch.is_grad_enabled())  # not cast under no_grad for a grad forward
            ):
                return made[2]
            return t
        if (
            type(t) is not nn.Parameter
            or t.is_inference()
            or t.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or t.dtype == dtype
        ):
            return t  # autocast's business (it leaves float64 and the target dtype alone)
        # the same Parameter object, storage, version (in-place changes), layout and target dtype
        key = (dtype, t.device, t.data_ptr(), t._version, t.shape, t.stride())
        cached = self.__dict__.get(slot)
        if cached is None or cached[0] is not t or cached[1] != key:
            cached = (t, key, t.detach().to(dtype))
            self.__dict__[slot] = cached
        return cached[2]


#: attributes of a Linear that hold copies: frozen weight, frozen bias, this forward's trainable ones
_CAST_SLOTS = ("_w", "_b", "_step")


def _extra_slot(name: str) -> str:
    """The key of a Linear's own parameter other than weight and bias in this forward's copies."""
    return "_p." + name


def _cast_slots(m: Linear) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(slot, tensor) of every parameter of the layer itself: weight, bias, and any other one
    registered on it (LoRA's factors)."""
    yield "_w", m.weight
    yield "_b", m.bias
    for name, t in m._parameters.items():
        if name not in ("weight", "bias"):
            yield _extra_slot(name), t


class _CastTogether(torch.autograd.Function):
    """``tensors`` cast to ``dtype`` by one multi-tensor copy, and their gradients cast back by one:
    the numbers of autocast's per-tensor casts (the same rounding; a gradient is converted once,
    after it has been summed over the uses of the copy, as autocast's cast cache does), in two
    kernel launches instead of two per tensor."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: torch.Tensor):  # noqa: ANN205
        ctx.set_materialize_grads(False)  # an unused copy's gradient stays None (no zeros)
        ctx.dtypes = [t.dtype for t in tensors]
        out = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(out, list(tensors))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # noqa: ANN205
        used = [i for i, g in enumerate(grads) if g is not None]
        out: list[torch.Tensor | None] = [None] * len(grads)
        if torch.is_grad_enabled():  # create_graph: differentiable casts
            for i in used:
                out[i] = grads[i].to(ctx.dtypes[i])
        elif used:
            back = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in used]
            torch._foreach_copy_(back, [grads[i] for i in used])
            for i, g in zip(used, back):
                out[i] = g
        return (None, *out)


def _cast_trainable(layers: Sequence[Linear]) -> None:
    """The autocast copies of every trainable float32 parameter of ``layers`` (weight, bias, and the
    others registered on a layer, see :meth:`Linear.trainable_copies`), made together
    (:class:`_CastTogether`) and kept on the layers for one forward (see :meth:`CastScope.forward`)."""
    if (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.is_inference_mode_enabled()
        or not torch.is_autocast_cache_enabled()  # autocast casts at every use then: so must we
    ):
        return
    groups: dict[tuple[torch.device, torch.dtype], dict[int, tuple[nn.Parameter, list]]] = {}
    for m in layers:
        for slot, t in _cast_slots(m):
            if type(t) is nn.Parameter and t.requires_grad and t.dtype == torch.float32 and not t.is_inference():
                dtype = autocast_dtype(t)
                if dtype is not None and dtype != torch.float32:
                    # one copy per Parameter (a tied weight: one cast, one gradient conversion, as autocast)
                    groups.setdefault((t.device, dtype), {}).setdefault(id(t), (t, []))[1].append((m, slot))
    for (_, dtype), entries in groups.items():
        copies = _CastTogether.apply(dtype, *(t for t, _ in entries.values()))
        for (t, users), c in zip(entries.values(), copies):
            for m, slot in users:
                m.__dict__.setdefault("_step", {})[slot] = (t, dtype, c, t._version)


class CastScope:
    """What :func:`reuse_frozen_casts` yields: its layers, and :meth:`forward`."""

    def __init__(self, layers: list[Linear]) -> None:
        self.layers = layers

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """Around one forward of the model, inside ``torch.autocast``: the trainable weights and
        biases of the scope's layers are cast together, once (a multi-tensor copy, and one for the
        backward's conversion of their gradients, instead of two kernels per tensor), and the
        copies are used by this forward only; the numbers are autocast's. Without it (or outside
        autocast, or with autocast's cache off) trainable weights are autocast's business, as in
        ``nn.Linear``; so is a weight changed in place after the casts, or a forward that records
        gradients inside a ``no_grad`` one. Nested, the outer forward's copies stand.

        Costs, against autocast's per-tensor casts: all the converted gradients become ready at the
        end of the backward together (a DistributedDataParallel reducer could no longer overlap
        them with the backward: the trainer does not use this under DDP), and a trainable weight
        of these layers that another op also uses directly gets separate casts there (autocast
        would share one; no method of clora3d does that)."""
        if any("_step" in m.__dict__ for m in self.layers):  # nested: the outer forward's copies stand
            yield
            return
        try:
            _cast_trainable(self.layers)
            yield
        finally:
            for m in self.layers:
                m.__dict__.pop("_step", None)


@contextlib.contextmanager
def reuse_frozen_casts(model: nn.Module) -> Iterator[CastScope]:
    """Inside: the :class:`Linear` layers of ``model`` cast their frozen weights and biases to the
    autocast dtype once and reuse the copies (see :class:`Linear`); on exit the copies are dropped.

    The trainer opens one per training epoch under ``train.amp`` and the GPU benchmark one per timed
    row: there a frozen weight changes only by in-place ops, which bump its version counter and
    refresh the copy. Writes that bypass the version counter (``weight.data`` ops, fused optimizer
    steps, collectives into a frozen weight) are not seen: do not make them to frozen weights inside
    the scope. The scope belongs to the layers, not to a thread: another thread running the same
    layers meanwhile reuses the copies too. ``torch.jit.trace``, ``torch.fx`` and functorch
    transforms over the inputs never see the copies.

    Yields a :class:`CastScope`: ``with scope.forward():`` around one forward (inside autocast)
    casts the layers' trainable weights and biases together for that forward (full fine-tuning:
    two kernel launches per step instead of two per tensor)."""
    layers = [m for m in model.modules() if isinstance(m, Linear) and m not in _REUSING]  # outermost scope only
    _REUSING.update(layers)
    scope = CastScope(layers)
    outermost = model not in _SCOPES
    if outermost:
        _SCOPES[model] = scope
    try:
        yield scope
    finally:
        if outermost:
            del _SCOPES[model]
        for m in layers:
            _REUSING.discard(m)
            m.drop_casts()


#: the open scope of each model (see :func:`trainable_casts`)
_SCOPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trainable_casts(model: nn.Module) -> contextlib.AbstractContextManager:
    """``CastScope.forward()`` of the :func:`reuse_frozen_casts` scope open on ``model``, or a no-op
    when none is: for a training loop that runs inside an epoch's scope, around each forward."""
    scope = _SCOPES.get(model)
    return scope.forward() if scope is not None else contextlib.nullcontext()


class Mlp(nn.Module):
    """Two-layer MLP ``fc1 -> act -> drop -> fc2 -> drop``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (no bias by default) and ``proj``."""

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        # unbind + transpose are views (no copies; unbind's backward is one stack instead of three
        # zero-filled full-size gradients as with qkv[0], qkv[1], qkv[2]).
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, hd)
        drop = self.attn_drop.p if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DP(attn(norm1 x))`` then ``x + DP(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        # One DropPath shared by both residual branches, as in the reference.
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


def drop_path_schedule(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic depth, 0 for the first block and ``drop_path_rate`` for the last."""
    # Plain Python (same values as torch.linspace) so models can be built on the meta device.
    if depth == 1:
        return [0.0]
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class TransformerEncoder(nn.Module):
    """A stack of ``Block``s in ``self.blocks``; the positional embedding is re-added before every block
    (``pos_every_block``, default) or added once before the first."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(drop_path_rate, (int, float)):
            dpr = drop_path_schedule(float(drop_path_rate), depth)
        else:
            dpr = list(drop_path_rate)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        )
        #: re-add ``pos`` before every block (Point-MAE); False adds it once before the first block
        #: (ViT; DAPT switches to this while attached, its sequence grows by one token per block)
        self.pos_every_block = True

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, return_layers: Iterable[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run all blocks; with ``return_layers`` return the outputs of those block indices instead."""
        wanted = set(return_layers) if return_layers is not None else None
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos if (i == 0 or self.pos_every_block) else x)
            if wanted is not None and i in wanted:
                outs.append(x)
        return outs if wanted is not None else x

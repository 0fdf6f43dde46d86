"""The PEFT method lifecycle (:class:`PeftMethod`) and the options every method shares (:class:`PeftConfig`).

A method is applied to a :class:`~clora3d.models.backbone.PointTransformer` in four steps:

1. its config (a dataclass next to the method, e.g. ``LoRAConfig`` in lora.py, subclassing
   :class:`PeftConfig`) is validated once by :func:`clora3d.schema.validate`: unknown keys and bad
   values raise :class:`~clora3d.errors.ConfigError` naming the key (checks that need the model, such
   as block indices against its depth, are made when the method is built);
2. the trainable set is built explicitly: the method's own base parameters (e.g. biases for BitFit),
   plus the task head, ``cls_token`` and ``cls_pos`` when the model has them (always trained, as in the
   references; for PartSegModel the head is its ``HEAD_PREFIXES`` modules), plus
   ``extra_trainable`` (exact parameter names, or module names whose parameters are all taken);
3. every other base parameter gets ``requires_grad=False`` and a SHA-256 hash of these frozen
   parameters is stored (:mod:`clora3d.peft.adapter_io`): an adapter file remembers it so it can only
   be loaded onto the same base weights;
4. the method attaches its new parameters and hooks without renaming any base key; hooks are held by
   their removable handles.

The file stays above 400 lines on purpose: besides the lifecycle it holds the few helpers every method
builds on (``replace_module``, ``make_head``, ``record_forward_loss``, ``resolve_layers``), which are
part of that lifecycle (what ``_detach`` undoes, what ``regularization_loss`` returns).

The options every method shares and the config helpers are :mod:`clora3d.peft.config`; the registry
(name -> config class, method class) is :mod:`clora3d.peft.registry`; adapter files are
:mod:`clora3d.peft.adapter_io`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clora3d.errors import ConfigError
from clora3d.models.utils import head_parameter_names
from clora3d.peft.adapter_io import hash_tensors
from clora3d.peft.config import BLOCK_LINEARS, PeftConfig
from clora3d.schema import short_repr, to_dict, validate


# ------------------------------------------------------------------------------------------------
# the interface
# ------------------------------------------------------------------------------------------------
class PeftMethod:
    """Base class of every PEFT method; subclasses set ``name``/``config_class`` and override the hooks.

    ``self.cfg`` is the validated config instance; ``self.config`` the same as a plain dict with ``NAME``
    and the values the method resolved against the model (``layers``, ``targets``): what adapter files
    record.

    Subclass hooks: ``_setup()`` (model-dependent checks, create new parameters), ``_base_trainable()``
    (names of base parameters the method itself trains), ``_attach()`` / ``_detach()`` (register and
    remove new parameters + forward hooks), ``_merge_weights()`` / ``_restore_weights()``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PeftConfig]] = PeftConfig
    mergeable: ClassVar[bool] = False
    #: True when the adapted model's output equals the base model's at initialisation.
    starts_at_base: ClassVar[bool] = True

    def __init__(self, model: nn.Module, cfg: PeftConfig | Mapping[str, Any]) -> None:
        if not isinstance(getattr(getattr(model, "blocks", None), "blocks", None), nn.ModuleList):
            raise ValueError(
                f"peft method {self.name!r}: the model has no transformer blocks 'blocks.blocks'; "
                f"apply_peft expects a clora3d PointTransformer or PartSegModel "
                f"(got {type(model).__name__})"
            )
        if getattr(model, "_clora3d_peft", None) is not None:
            raise ValueError(
                f"peft method {self.name!r}: a PEFT method ({model._clora3d_peft.name!r}) is already "
                f"applied to this model; call .remove() on it first or build a fresh model"
            )
        if isinstance(cfg, Mapping):  # a plain mapping (with or without NAME): validate it here
            cfg = validate(self.config_class, {k: v for k, v in cfg.items() if k != "NAME"}, path=("peft",))
        if type(cfg) is not self.config_class:
            raise TypeError(f"peft method {self.name!r} takes a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.model = model
        self.cfg = cfg
        self.config: dict[str, Any] = {**to_dict(cfg), "NAME": self.name}
        self.blocks: list[nn.Module] = list(model.blocks.blocks)
        self.merged = False
        self._handles: list[Any] = []
        #: new parameters by the name they have in ``model.named_parameters()`` when attached
        self.peft_params: dict[str, nn.Parameter] = {}
        #: per-forward loss terms recorded by the method's hooks (see ``record_forward_loss``)
        self._forward_losses: dict[str, torch.Tensor] = {}
        #: the module holding the new parameters (set by ``_setup``), attached as ``model.peft`` while the
        #: method is attached (its parameters are then ``peft.*``)
        self.peft_module: nn.Module | None = None
        #: modules swapped in by ``replace_module`` while attached: path -> (new, original)
        self._replaced: dict[str, tuple[nn.Module, nn.Module]] = {}
        self._setup()

        base = dict(model.named_parameters())
        self._base_names = list(base)
        own = list(self._base_trainable())
        always = head_parameter_names(model, required=True) + [n for n in ("cls_token", "cls_pos") if n in base]
        extra = self._resolve_extra(base, self.cfg.extra_trainable)
        names = set(own) | set(always) | set(extra)
        self.base_trainable_names: list[str] = [n for n in self._base_names if n in names]
        for n, p in base.items():
            p.requires_grad_(n in names)
        frozen = [(n, p) for n, p in base.items() if n not in names]
        self._frozen_named = frozen  # the same Parameter objects: load_state_dict copies into them
        self.base_hash = hash_tensors(frozen)
        self.num_frozen_hashed = sum(p.numel() for _, p in frozen)
        for p in self.peft_params.values():
            p.requires_grad_(True)
        self._attach_all()
        model._clora3d_peft = self

    def _attach_all(self) -> None:
        if self.peft_module is not None:
            self.model.add_module("peft", self.peft_module)
            self.peft_module.train(self.model.training)  # a newly attached module follows the model's mode
        self._attach()

    # -- subclass hooks ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Model-dependent checks; create new parameters into ``self.peft_params``."""

    def _base_trainable(self) -> Iterable[str]:
        """Names of base parameters the method trains (besides head, cls tokens and extras)."""
        return ()

    def _attach(self) -> None:
        """Register new parameters/modules and forward hooks on the model."""

    def _detach(self) -> None:
        """Remove what ``_attach`` registered (hooks through their removable handles, modules swapped in
        with ``replace_module`` are swapped back) and ``model.peft``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for path, (_, original) in reversed(list(self._replaced.items())):
            parent, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, original)
            original.train(self.model.training)  # it missed the model's train()/eval() while swapped out
        self._replaced.clear()
        self._forward_losses.clear()
        if self.peft_module is not None and self.model._modules.get("peft") is self.peft_module:
            del self.model._modules["peft"]

    def _merge_weights(self) -> None:
        raise NotImplementedError

    def _restore_weights(self) -> None:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------
    def _resolve_extra(self, base: dict[str, nn.Parameter], entries: list[str]) -> list[str]:
        out: list[str] = []
        for e in entries:
            if e in base:
                out.append(e)
                continue
            under = [n for n in base if n.startswith(e + ".")]
            if not under:
                raise ConfigError(
                    f"peft method {self.name!r}: extra_trainable entry {short_repr(e)} is neither a parameter name nor a "
                    f"module name of the backbone (example names: {self._base_examples(base)})"
                )
            out.extend(under)
        return out

    @staticmethod
    def _base_examples(base: dict[str, nn.Parameter]) -> list[str]:
        return [n for n in base if n.startswith(("cls_", "norm.", "blocks.blocks.0.", "pos_embed.0"))][:8]

    def resolve_layers(self) -> list[int]:
        """``cfg.layers`` checked against the model's depth, sorted (null: every block); recorded in
        ``self.config``."""
        depth, layers = len(self.blocks), self.cfg.layers
        if layers is None:
            layers = list(range(depth))
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"peft method {self.name!r}: layers {bad} out of range for a backbone with depth {depth}")
        self.config["layers"] = sorted(layers)
        return sorted(layers)

    def reference_parameter(self) -> nn.Parameter:
        """A backbone parameter whose device and dtype new PEFT tensors follow."""
        return self.blocks[0].norm1.weight

    @property
    def dim(self) -> int:
        """Token width of the transformer."""
        return int(self.blocks[0].norm1.normalized_shape[0])

    @property
    def is_partseg(self) -> bool:
        """True on a part segmentation model (no classification head ``cls_head_finetune``)."""
        return not hasattr(self.model, "cls_head_finetune")

    @property
    def num_lead_tokens(self) -> int:
        """Tokens before the patch tokens in the plain model's sequence: 1 (cls) for the classification
        backbone, 0 for the part-seg model, which has no cls token. Methods insert their extra tokens
        right after these, so the patch tokens stay the last ``num_patches`` of the sequence (what the
        part-seg model's ``pool`` reads)."""
        return 1 if hasattr(self.model, "cls_token") else 0

    @property
    def num_patches(self) -> int:
        """Patch tokens per cloud (the grouping's ``num_group``)."""
        return int(self.model.group_divider.num_group)

    def block_linear(self, i: int, target: str) -> nn.Linear:
        """The ``target`` linear layer (qkv/proj/fc1/fc2) of block ``i`` (ConfigError when it is not one)."""
        lin = self.blocks[i].get_submodule(BLOCK_LINEARS[target])
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"peft method {self.name!r}: {self.block_linear_name(i, target)} is not an nn.Linear")
        return lin

    @staticmethod
    def block_linear_name(i: int, target: str) -> str:
        return f"blocks.blocks.{i}.{BLOCK_LINEARS[target]}"

    def replace_module(self, path: str, new: nn.Module) -> None:
        """Swap the model's submodule ``path`` for ``new`` while the method is attached (call from
        ``_attach``; ``_detach`` puts the original back). Used to replace the task head (a wider
        input) or the token pooling (``pool``); ``new`` keeps the module name, so its parameters are
        named like the original's (e.g. ``cls_head_finetune.0.weight``)."""
        parent, _, leaf = path.rpartition(".")
        owner = self.model.get_submodule(parent) if parent else self.model
        original = getattr(owner, leaf)
        if path in self._replaced:  # re-attach after unmerge: the original is the one stored first
            original = self._replaced[path][1]
        setattr(owner, leaf, new)
        new.train(self.model.training)
        self._replaced[path] = (new, original)

    def make_head(self, in_features: int) -> nn.Module:
        """A freshly initialised copy of the model's classification head ``cls_head_finetune`` whose first
        Linear takes ``in_features`` (for methods that pool more tokens into the head input); same
        module names, so its parameters are named like the original head's."""
        head = getattr(self.model, "cls_head_finetune", None)
        if not isinstance(head, nn.Sequential) or not isinstance(head[0], nn.Linear):
            raise ValueError(
                f"peft method {self.name!r} needs a classification model whose cls_head_finetune is a "
                f"Sequential starting with a Linear (got {type(self.model).__name__})"
            )
        new = copy.deepcopy(head)
        first = head[0]
        # the head's own Linear class when it is built like nn.Linear (clora3d's), else nn.Linear
        cls = type(first) if type(first).__init__ is nn.Linear.__init__ else nn.Linear
        new[0] = cls(in_features, first.out_features, bias=first.bias is not None)
        for m in new.modules():
            if hasattr(m, "reset_parameters") and m is not new:
                m.reset_parameters()
        ref = self.reference_parameter()
        return new.to(device=ref.device, dtype=ref.dtype)

    def record_forward_loss(self, name: str, loss: torch.Tensor, module: nn.Module) -> None:
        """Store a loss term computed inside a forward hook (per-forward state): the next
        ``regularization_loss()`` returns it and forgets it. Recorded only while ``module`` is in
        training mode with autograd on, so evaluation passes leave nothing behind; a later forward
        replaces an unread term of the same name."""
        if module.training and torch.is_grad_enabled():
            self._forward_losses[name] = loss

    def pop_forward_losses(self) -> torch.Tensor:
        """Sum of the recorded per-forward loss terms (zero when none), and forget them."""
        total = self.reference_parameter().new_zeros(())
        for v in self._forward_losses.values():
            total = total + v.to(total.dtype)
        self._forward_losses.clear()
        return total

    # Hooks are callable objects (not closures) held by their removable handles: a deepcopy of an adapted
    # model copies the method with it (model._clora3d_peft), so the copy's hooks are bound to its own PEFT
    # parameters and its handles to its own modules' hook dicts; removing them leaves the original alone.
    def _hook_pre(self, module: nn.Module, fn: Any) -> None:
        self._handles.append(module.register_forward_pre_hook(fn))

    def _hook_post(self, module: nn.Module, fn: Any) -> None:
        self._handles.append(module.register_forward_hook(fn))

    # -- public API -------------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by name: the method's own, head, ``cls_token``, ``cls_pos``, extras."""
        base = dict(self.model.named_parameters())
        out = {n: base[n] for n in self.base_trainable_names}
        out.update(self.peft_params)
        return out

    def no_weight_decay(self) -> set[str]:
        """Names of the method's trainable parameters that take no weight decay whatever their shape or
        name (e.g. CLoRA's stacked per-LRM bias vectors). The optimizer applies the reference rule
        (``clora3d.engine.optim.is_no_decay``: 1-D tensors, ``*.bias``, tokens) and adds these."""
        return set()

    def regularization_loss(self) -> torch.Tensor:
        """Extra loss term to add to the task loss: the per-forward terms recorded by the method's
        hooks since the last call (``record_forward_loss``), zero when there are none."""
        return self.pop_forward_losses()

    def merge(self) -> None:
        """Fold the update into the frozen weights; the model's modules and keys become the plain backbone's."""
        if self.merged:
            raise RuntimeError(f"peft method {self.name!r}: already merged")
        if not self.mergeable:
            raise NotImplementedError(
                f"peft method {self.name!r} cannot be merged into the backbone (its update is not a linear map "
                f"of the frozen weights); ship the adapter file instead"
            )
        with torch.no_grad():
            self._merge_weights()
        self._detach()
        self.merged = True

    def merge_and_verify(self, pts: torch.Tensor, atol: float = 1e-5) -> float:
        """Merge, and check that eval-mode outputs on ``pts`` did not change by more than ``atol``.

        Returns the largest absolute difference; warns when it exceeds ``atol`` (expected in bf16/fp16,
        where merged weights are rounded). The model's train/eval mode is restored afterwards.
        """
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                before = self.model(pts)
                self.merge()
                diff = float((self.model(pts) - before).abs().max())
        finally:
            self.model.train(was)
        if diff > atol:
            warnings.warn(
                f"peft method {self.name!r}: merged outputs differ from unmerged by {diff:.3g} > {atol:g} "
                f"(dtype {before.dtype})",
                stacklevel=2,
            )
        return diff

    def unmerge(self) -> None:
        """Undo :meth:`merge`: restore the original frozen weights exactly and re-attach params + hooks."""
        if not self.merged:
            raise RuntimeError(f"peft method {self.name!r}: not merged")
        with torch.no_grad():
            self._restore_weights()
        self._attach_all()
        self.merged = False

    def remove(self) -> None:
        """Detach the method completely (unmerging first) and make every base parameter trainable again."""
        if self.merged:
            self.unmerge()
        self._detach()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model._clora3d_peft = None

    def train(self, mode: bool = True) -> None:
        """``model.train(mode)``, then the run's frozen-BN policy (``frozen_bn``, set from ``model.frozen_bn`` by
        ``engine.build``): with ``eval``, BatchNorms whose parameters are all frozen stay in eval mode. The
        trainer calls only this."""
        from clora3d.models.utils import apply_frozen_bn_policy

        self.model.train(mode)
        if mode:
            apply_frozen_bn_policy(self.model, self.cfg.frozen_bn)

    def eval(self) -> None:
        """``model.eval()``."""
        self.model.eval()

    def saved_buffer_names(self) -> list[str]:
        """BatchNorm buffers stored in the adapter: BNs with a trainable parameter (the head's), and every
        BN when ``frozen_bn`` is ``"train"`` (their statistics then drift during fine-tuning)."""
        keep_all = self.cfg.frozen_bn == "train"
        out = []
        for mname, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if keep_all or any(p.requires_grad for p in m.parameters(recurse=False)):
                    for bname, _ in m.named_buffers(recurse=False):
                        out.append(f"{mname}.{bname}" if mname else bname)
        return out

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters (incl. head and cls tokens) + saved BN buffers, detached CPU copies."""
        out = {n: p.detach().to("cpu").clone() for n, p in self.trainable_parameters().items()}
        buffers = dict(self.model.named_buffers())
        for n in self.saved_buffer_names():
            out[n] = buffers[n].detach().to("cpu").clone()
        return out

    def metadata(self) -> dict[str, Any]:
        """What an adapter file records besides its tensors (:func:`clora3d.peft.adapter_io.adapter_metadata`)."""
        from clora3d.peft.adapter_io import adapter_metadata

        return adapter_metadata(self)

    def save_adapter(self, path: str | os.PathLike) -> Path:
        """Write the adapter file (``torch.save`` of plain tensors/dicts); returns the path."""
        from clora3d.peft.adapter_io import save_adapter

        return save_adapter(self, path)

    def refresh_base_hash(self) -> str:
        """Re-hash the frozen base parameters, after weights were loaded into the adapted model
        (e.g. a run checkpoint loaded into a model the method was applied to); returns the hash."""
        frozen = self._frozen_named
        self.base_hash = hash_tensors(frozen)
        self.num_frozen_hashed = sum(p.numel() for _, p in frozen)
        return self.base_hash

    @classmethod
    def load_adapter(cls, model: nn.Module, path: str | os.PathLike) -> PeftMethod:
        """Alias of :func:`clora3d.peft.adapter_io.load_adapter`."""
        from clora3d.peft.adapter_io import load_adapter

        return load_adapter(model, path)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters().values())
        return f"{type(self).__name__}(name={self.name!r}, trainable={n}, merged={self.merged})"


def fan_in_uniform_(weight: torch.Tensor) -> None:
    """``kaiming_uniform_(a=sqrt(5))`` (nn.Linear's default weight init)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))

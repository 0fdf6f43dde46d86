"""The one PEFT interface: :class:`PeftMethod`, config resolution, base hashing, adapter files.

A method is applied to a :class:`~clora3d.models.backbone.PointTransformer` in four steps:

1. the config is resolved against the method's ``DEFAULTS`` (unknown keys and bad values raise
   :class:`~clora3d.errors.ConfigError` naming the key);
2. the trainable set is built explicitly: the method's own base parameters (e.g. biases for BitFit),
   plus the task head, ``cls_token`` and ``cls_pos`` when the model has them (always trained, as in the
   references; for PartSegModel the head is its ``HEAD_PREFIXES`` modules), plus
   ``extra_trainable`` (exact parameter names, or module names whose parameters are all taken);
3. every other base parameter gets ``requires_grad=False`` and a SHA-256 hash of these frozen
   parameters (sorted names, dtypes, shapes and bytes) is stored: an adapter file remembers it so it
   can only be loaded onto the same base weights;
4. the method attaches its new parameters and hooks without renaming any base key.

Adapter files are ``torch.save`` of plain tensors and dicts and are read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

import clora3d
from clora3d.errors import CheckpointError, ConfigError

ADAPTER_FORMAT = "clora3d-adapter"
ADAPTER_FORMAT_VERSION = 1

#: Keys every method accepts, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    # Exact parameter names, or module names (all parameters below ``name + "."``), that are trained in
    # addition to the method's own set. Never substring matching: an entry that names nothing is an error.
    "extra_trainable": [],
    # Frozen BatchNorm layers (patch encoder): "train" (default) reproduces the references, whose
    # frozen BN statistics drift to the downstream data; their buffers are then saved in the adapter.
    # "eval" (strict) keeps their running statistics fixed (a frozen backbone is really frozen; use
    # ``method.train()``).
    "frozen_bn": "train",
}

#: Block-relative module paths of the linear layers methods may target.
BLOCK_LINEARS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


# ------------------------------------------------------------------------------------------------
# config helpers
# ------------------------------------------------------------------------------------------------
def _type_name(v: Any) -> str:
    return type(v).__name__


def _short(value: Any, limit: int = 200) -> str:
    """``repr`` bounded in time and length: a config value may be a huge aliased YAML structure."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 8, 120, 120
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def resolve_config(name: str, defaults: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge ``cfg`` over ``COMMON_DEFAULTS`` + ``defaults``; unknown keys or wrong types raise ConfigError."""
    known = {**COMMON_DEFAULTS, **defaults}
    out = copy.deepcopy(known)
    for key, value in cfg.items():
        if key == "NAME":
            continue
        if key not in known:
            raise ConfigError(
                f"peft method {name!r}: unknown option {_short(key)}; known options: {sorted(known)}"
            )
        default = known[key]
        if default is not None and value is not None:
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            elif isinstance(default, (list, tuple)):
                ok = isinstance(value, (list, tuple))
                value = list(value) if ok else value
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(
                    f"peft method {name!r}: option {key!r} must be {_type_name(default)} "
                    f"(default {default!r}), got {_short(value)}"
                )
        out[key] = copy.deepcopy(value)
    out["NAME"] = name
    if out["frozen_bn"] not in ("eval", "train"):
        raise ConfigError(f"peft method {name!r}: frozen_bn must be 'eval' or 'train', got {out['frozen_bn']!r}")
    if not all(isinstance(e, str) and e for e in out["extra_trainable"]):
        raise ConfigError(f"peft method {name!r}: extra_trainable must be a list of parameter/module names, "
                          f"got {_short(out['extra_trainable'])}")
    return out


def check_positive(name: str, cfg: dict[str, Any], key: str, *, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``cfg[key]`` is > 0 (or >= 0 with ``allow_zero``)."""
    v = cfg[key]
    if v is None or (v < 0 if allow_zero else v <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"peft method {name!r}: option {key!r} must be {bound}, got {v!r}")


def check_probability(name: str, cfg: dict[str, Any], key: str) -> None:
    """Raise ConfigError unless ``0 <= cfg[key] < 1``."""
    v = cfg[key]
    if not (0.0 <= v < 1.0):
        raise ConfigError(f"peft method {name!r}: option {key!r} must be in [0, 1), got {v!r}")


def resolve_layers(name: str, cfg: dict[str, Any], depth: int) -> list[int]:
    """``layers: null`` -> every block; otherwise validate the explicit block indices (sorted, unique)."""
    layers = cfg.get("layers")
    if layers is None:
        return list(range(depth))
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ConfigError(f"peft method {name!r}: layers must be a non-empty list of block indices or null, "
                          f"got {layers!r}")
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ConfigError(f"peft method {name!r}: layers {bad} out of range for a backbone with depth {depth}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"peft method {name!r}: layers contains duplicates: {layers}")
    return sorted(layers)


def resolve_targets(name: str, cfg: dict[str, Any], allowed: Iterable[str]) -> list[str]:
    """Validate ``targets`` against the allowed block linear names (order kept as in ``allowed``)."""
    allowed = list(allowed)
    targets = cfg["targets"]
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"peft method {name!r}: targets must be a non-empty list from {allowed}, got {targets!r}")
    bad = [t for t in targets if t not in allowed]
    if bad:
        raise ConfigError(f"peft method {name!r}: unknown targets {bad}; allowed: {allowed}")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"peft method {name!r}: targets contains duplicates: {targets}")
    return [t for t in allowed if t in targets]


# ------------------------------------------------------------------------------------------------
# hashing
# ------------------------------------------------------------------------------------------------
def hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Deterministic SHA-256 over sorted names, dtypes, shapes and raw bytes of the tensors."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    """Convert tuples to lists recursively so metadata is plain JSON-like data."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the task head's parameters: ``model.head_parameters()`` (PointTransformer), else the
    modules listed in ``model.HEAD_PREFIXES`` (PartSegModel; whole module names ending in '.')."""
    if hasattr(model, "head_parameters"):
        return [n for n, _ in model.head_parameters()]
    prefixes = getattr(model, "HEAD_PREFIXES", None)
    if prefixes is None:
        raise ValueError(f"cannot tell the task head of {type(model).__name__}: it has neither head_parameters() "
                         f"nor HEAD_PREFIXES")
    bad = [p for p in prefixes if not p.endswith(".")]
    if bad:
        raise ValueError(f"{type(model).__name__}.HEAD_PREFIXES must be module names ending in '.', got {bad}")
    return [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]


# ------------------------------------------------------------------------------------------------
# the interface
# ------------------------------------------------------------------------------------------------
class PeftMethod:
    """Base class of every PEFT method; subclasses set ``name``/``DEFAULTS`` and override the hooks.

    Subclass hooks: ``_setup()`` (validate config, create new parameters), ``_base_trainable()``
    (names of base parameters the method itself trains), ``_attach()`` / ``_detach()`` (register and
    remove new parameters + forward hooks), ``_merge_weights()`` / ``_restore_weights()``.
    """

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    mergeable: ClassVar[bool] = False
    #: True when the adapted model's output equals the base model's at initialisation.
    starts_at_base: ClassVar[bool] = True

    def __init__(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        if not isinstance(getattr(getattr(model, "blocks", None), "blocks", None), nn.ModuleList):
            raise ValueError(f"peft method {self.name!r}: the model has no transformer blocks 'blocks.blocks'; "
                             f"apply_peft expects a clora3d PointTransformer or PartSegModel "
                             f"(got {type(model).__name__})")
        if getattr(model, "_clora3d_peft", None) is not None:
            raise ValueError(f"peft method {self.name!r}: a PEFT method ({model._clora3d_peft.name!r}) is already "
                             f"applied to this model; call .remove() on it first or build a fresh model")
        self.model = model
        self.config = resolve_config(self.name, self.DEFAULTS, cfg)
        self.blocks: list[nn.Module] = list(model.blocks.blocks)
        self.merged = False
        self._handles: list[Any] = []
        #: new parameters by the name they have in ``model.named_parameters()`` when attached
        self.peft_params: dict[str, nn.Parameter] = {}
        #: per-forward loss terms recorded by the method's hooks (see ``record_forward_loss``)
        self._forward_losses: dict[str, torch.Tensor] = {}
        #: modules swapped in by ``replace_module`` while attached: path -> (new, original)
        self._replaced: dict[str, tuple[nn.Module, nn.Module]] = {}
        self._setup()

        base = dict(model.named_parameters())
        self._base_names = list(base)
        own = list(self._base_trainable())
        always = head_parameter_names(model) + [n for n in ("cls_token", "cls_pos") if n in base]
        extra = self._resolve_extra(base, self.config["extra_trainable"])
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
        self._attach()
        peft = self.model._modules.get("peft")
        if peft is not None:  # a newly attached module follows the model's train/eval mode
            peft.train(self.model.training)

    # -- subclass hooks ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Validate method options and create new parameters into ``self.peft_params``."""

    def _base_trainable(self) -> Iterable[str]:
        """Names of base parameters the method trains (besides head, cls tokens and extras)."""
        return ()

    def _attach(self) -> None:
        """Register new parameters/modules and forward hooks on the model."""

    def _detach(self) -> None:
        """Remove what ``_attach`` registered (hooks via ``self._handles``, modules swapped in with
        ``replace_module`` are swapped back)."""
        for module, hook_id in self._handles:
            for attr in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                         "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                getattr(module, attr, {}).pop(hook_id, None)
        self._handles.clear()
        for path, (_, original) in reversed(list(self._replaced.items())):
            parent, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, original)
            original.train(self.model.training)  # it missed the model's train()/eval() while swapped out
        self._replaced.clear()
        self._forward_losses.clear()

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
                    f"peft method {self.name!r}: extra_trainable entry {_short(e)} is neither a parameter name nor a "
                    f"module name of the backbone (example names: {self._base_examples(base)})"
                )
            out.extend(under)
        return out

    @staticmethod
    def _base_examples(base: dict[str, nn.Parameter]) -> list[str]:
        return [n for n in base if n.startswith(("cls_", "norm.", "blocks.blocks.0.", "pos_embed.0"))][:8]

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
        """The ``target`` linear layer (qkv/proj/fc1/fc2) of block ``i``."""
        return self.blocks[i].get_submodule(BLOCK_LINEARS[target])

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
            raise ValueError(f"peft method {self.name!r} needs a classification model whose cls_head_finetune is a "
                             f"Sequential starting with a Linear (got {type(self.model).__name__})")
        new = copy.deepcopy(head)
        first = head[0]
        new[0] = nn.Linear(in_features, first.out_features, bias=first.bias is not None)
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

    # Hooks are callable objects (not closures) and are recorded as (module, hook id): a deepcopy of an
    # adapted model then gets hooks bound to its own copies of the PEFT parameters, and removing them
    # on the copy leaves the original untouched.
    def _hook_pre(self, module: nn.Module, fn: Any) -> None:
        self._handles.append((module, module.register_forward_pre_hook(fn).id))

    def _hook_post(self, module: nn.Module, fn: Any) -> None:
        self._handles.append((module, module.register_forward_hook(fn).id))

    # -- public API -------------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by name: the method's own, head, ``cls_token``, ``cls_pos``, extras."""
        base = dict(self.model.named_parameters())
        out = {n: base[n] for n in self.base_trainable_names}
        out.update(self.peft_params)
        return out

    def no_weight_decay(self) -> set[str]:
        """Names of trainable parameters to exclude from weight decay: 1-D tensors (biases, norm weights),
        ``cls_token``/``cls_pos``, plus method-specific stacked bias vectors (CLoRA's per-LRM ``bias``)."""
        return {n for n, p in self.trainable_parameters().items()
                if p.ndim <= 1 or n in ("cls_token", "cls_pos") or n in self._no_decay_extra()}

    def _no_decay_extra(self) -> set[str]:
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
            warnings.warn(f"peft method {self.name!r}: merged outputs differ from unmerged by {diff:.3g} > {atol:g} "
                          f"(dtype {before.dtype})", stacklevel=2)
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
        """``model.train(mode)``, then (``frozen_bn: eval``) put BatchNorms with only frozen params in eval mode."""
        self.model.train(mode)
        if mode and self.config["frozen_bn"] == "eval":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    ps = list(m.parameters(recurse=False))
                    if not any(p.requires_grad for p in ps):
                        m.eval()

    def eval(self) -> None:
        """``model.eval()``."""
        self.model.eval()

    def saved_buffer_names(self) -> list[str]:
        """BatchNorm buffers stored in the adapter: BNs with a trainable parameter (the head's), and every
        BN when ``frozen_bn`` is ``"train"`` (their statistics then drift during fine-tuning)."""
        keep_all = self.config["frozen_bn"] == "train"
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
        """What an adapter file records besides its tensors."""
        return {
            "format": ADAPTER_FORMAT,
            "format_version": ADAPTER_FORMAT_VERSION,
            "method": self.name,
            "config": _plain(self.config),
            "clora3d_version": str(clora3d.__version__),
            "torch_version": str(torch.__version__),
            "base_hash": self.base_hash,
            "base_hash_numel": int(self.num_frozen_hashed),
            "model_config": _plain(getattr(self.model, "config", {})),
        }

    def save_adapter(self, path: str | os.PathLike) -> Path:
        """Write the adapter file (``torch.save`` of plain tensors/dicts); returns the path."""
        from clora3d.storage import atomic_torch_save

        return atomic_torch_save({"metadata": self.metadata(), "state": self.adapter_state_dict()},
                                 Path(path), what="adapter")

    def refresh_base_hash(self) -> str:
        """Re-hash the frozen base parameters, after weights were loaded into the adapted model
        (e.g. a run checkpoint loaded into a model the method was applied to); returns the hash."""
        frozen = self._frozen_named
        self.base_hash = hash_tensors(frozen)
        self.num_frozen_hashed = sum(p.numel() for _, p in frozen)
        return self.base_hash

    @classmethod
    def load_adapter(cls, model: nn.Module, path: str | os.PathLike) -> "PeftMethod":
        """Alias of :func:`load_adapter`."""
        return load_adapter(model, path)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters().values())
        return f"{type(self).__name__}(name={self.name!r}, trainable={n}, merged={self.merged})"


# ------------------------------------------------------------------------------------------------
# registry and entry points
# ------------------------------------------------------------------------------------------------
METHODS: dict[str, type[PeftMethod]] = {}


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def apply_peft(model: nn.Module, cfg: dict[str, Any]) -> PeftMethod:
    """Apply the method ``cfg["NAME"]`` with its options to ``model`` (in place) and return it."""
    if not isinstance(cfg, dict) or "NAME" not in cfg:
        raise ConfigError(f"peft config must be a mapping with a NAME key in {sorted(METHODS)}, got {cfg!r}")
    name = cfg["NAME"]
    if name not in METHODS:
        raise ConfigError(f"unknown peft method NAME {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](model, cfg)


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter file safely; returns ``(metadata, state)``."""
    from clora3d.storage import safe_torch_load

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter file not found: {path}")
    blob = safe_torch_load(path, what="adapter file")
    if not isinstance(blob, dict) or not isinstance(blob.get("metadata"), dict) \
            or blob["metadata"].get("format") != ADAPTER_FORMAT or not isinstance(blob.get("state"), dict):
        raise CheckpointError(f"{path} is not a clora3d adapter file (expected a dict with 'metadata' of format "
                              f"{ADAPTER_FORMAT!r} and 'state'); full checkpoints load with "
                              f"clora3d.models.checkpoint.load_pretrained")
    return blob["metadata"], blob["state"]


def load_adapter(model: nn.Module, path: str | os.PathLike) -> PeftMethod:
    """Apply the method recorded in the adapter file to ``model`` and load its tensors.

    ``model`` must be the plain backbone with the same base weights the adapter was trained on
    (checked with the stored hash of the frozen parameters); otherwise CheckpointError.
    """
    meta, state = read_adapter(path)
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: adapter format version {meta.get('format_version')} is not supported "
                              f"(this clora3d reads version {ADAPTER_FORMAT_VERSION})")
    if meta.get("clora3d_version") != clora3d.__version__:
        warnings.warn(f"{path} was written by clora3d {meta.get('clora3d_version')}, this is "
                      f"{clora3d.__version__}", stacklevel=2)
    try:
        method = apply_peft(model, dict(meta["config"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored method config is not valid here: {e}") from e
    try:
        if method.base_hash != meta["base_hash"]:
            raise CheckpointError(
                f"{path}: adapter was trained on different base weights (frozen-parameter hash "
                f"{meta['base_hash'][:12]}..., this model {method.base_hash[:12]}...). Load the same pre-trained "
                f"checkpoint into the model before load_adapter"
            )
        expected = method.adapter_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{path}: adapter keys do not match method {method.name!r}: missing {missing[:10]}, "
                                  f"unexpected {unexpected[:10]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(
                    f"{path}: size mismatch for {k}: adapter {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    + (" (build the model with the adapter's cls_dim)" if k.startswith("cls_head_finetune") else "")
                )
        targets = {**dict(model.named_buffers()), **method.trainable_parameters()}
        with torch.no_grad():
            for k, v in state.items():
                targets[k].copy_(v)
    except BaseException:
        method.remove()
        raise
    return method


def fan_in_uniform_(weight: torch.Tensor) -> None:
    """``kaiming_uniform_(a=sqrt(5))`` (nn.Linear's default weight init)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))

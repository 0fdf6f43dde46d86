"""Loading and saving Point-MAE / Point-BERT checkpoints, loudly-correct.

``load_pretrained(model, path_or_state)`` accepts
- Point-MAE pre-training checkpoints: ``{"base_model": {...}}`` with keys ``[module.]MAE_encoder.*``
  plus decoder keys (``mask_token``, ``decoder_pos_embed``, ``MAE_decoder``, ``increase_dim``);
  ``ACT_encoder.`` (DAPT / PointGST) and ``base_model.`` prefixes are stripped the same way;
- Point-MAE fine-tuned checkpoints: ``base_model`` or ``model`` (or ``model_state_dict``, the
  segmentation scripts' name) holding the full fine-tune keys incl. ``cls_head_finetune``;
- Point-BERT checkpoints: ``transformer_q.*`` (online encoder) minus ``transformer_q.cls_head*``; all
  other keys (``transformer_k``, ``dvae``, ``queue`` ...) are dropped, as the reference loader does;
- raw state dicts of any of the above.

Unlike the references (``strict=False`` + a log line), a missing or mis-shaped BACKBONE weight raises
``CheckpointError`` naming the key, and so does a checkpoint of which nothing matches. Heads, tokens
(cls token/pos) and PEFT parameters may be missing. A head whose shape differs (another class count)
is skipped with a note by default (``ignore_head="auto"``). Files are read with
``torch.load(weights_only=True, map_location="cpu")``: a checkpoint never executes code.

Key namespaces: checkpoints are first brought to the fine-tune namespace (``encoder.*``,
``pos_embed.*``, ``blocks.blocks.i.*``, ``norm.*`` ...); a model whose backbone lives under a prefix
(``PointMAE``: ``MAE_encoder.``) gets it re-added, so the same file loads into ``PointTransformer``,
``PartSegModel`` and ``PointMAE``.

Size: about 380 lines as written, 427 after ``ruff format``; one job, the foreign key layouts and the
loud report of what loaded.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clora3d.errors import CheckpointError, UnsafeCheckpointError, UnsafePickleError  # noqa: F401
from clora3d.storage import atomic_torch_save, safe_torch_load

log = logging.getLogger(__name__)

CONTAINER_KEYS = ("base_model", "model", "model_state_dict", "state_dict")
# Canonical (fine-tune namespace) prefixes of backbone weights.
CANONICAL_BACKBONE_PREFIXES = ("encoder.", "reduce_dim.", "pos_embed.", "blocks.", "norm.")
PRETRAIN_ENCODER_PREFIXES = ("MAE_encoder.", "ACT_encoder.")
HEAD_POLICIES = ("auto", True, False)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What ``load_pretrained`` did. All key names are in the model's namespace."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys left as they were
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) present but not loaded
    dropped: list[str] = field(default_factory=list)  # removed by the layout's key map
    missing_backbone: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every backbone weight was loaded with the right shape."""
        return not self.missing_backbone and not self.mismatched

    def format(self, max_items: int = 8) -> str:
        """A short table: one line per status with counts grouped by top-level module."""
        lines = [f"checkpoint: {self.source}  (layout: {self.layout})"]
        rows = [
            ("loaded", self.loaded),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("dropped", self.dropped),
        ]
        for name, keys in rows:
            if keys or name in ("loaded", "missing"):
                lines.append(f"  {name:<11}{len(keys):>5}  {_summarise(keys, max_items)}")
        for key, reason in self.skipped[:max_items]:
            lines.append(f"  {'skipped':<11}{'':>5}  {key}: {reason}")
        if len(self.skipped) > max_items:
            lines.append(f"  {'skipped':<11}{'':>5}  ... {len(self.skipped) - max_items} more")
        for key, have, want in self.mismatched[:max_items]:
            lines.append(f"  {'MISMATCH':<11}{'':>5}  {key}: checkpoint {list(have)} vs model {list(want)}")
        if self.missing_backbone:
            lines.append(
                f"  {'MISSING BB':<11}{len(self.missing_backbone):>5}  {_summarise(self.missing_backbone, max_items)}"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _summarise(keys: list[str], max_items: int) -> str:
    """``encoder (14) | blocks (144) | cls_token`` style summary grouped by the first name component."""
    if not keys:
        return "-"
    groups: dict[str, int] = {}
    for k in keys:
        head = k.split(".", 1)[0]
        groups[head] = groups.get(head, 0) + 1
    parts = []
    for head, n in groups.items():
        parts.append(head if (n == 1 and head in keys) else f"{head}.* ({n})")
    if len(parts) > max_items:
        parts = parts[:max_items] + [f"... {len(parts) - max_items} more groups"]
    return " | ".join(parts)


# --------------------------------------------------------------------------------------------------
# reading and key maps
# --------------------------------------------------------------------------------------------------
#: Deprecated alias of :func:`clora3d.storage.safe_torch_load` (the one safe loader), kept because
#: clora3d/demo.py and tools/sade_ablation.py import it; new code calls storage directly.
read_checkpoint = safe_torch_load


def extract_state_dict(obj: Any, source: str = "<state>") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict in a checkpoint object; returns ``(state, container_key or '')``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}, key
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        return tensors, ""
    raise CheckpointError(
        f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:10]}, "
        f"expected a raw state dict or one of {list(CONTAINER_KEYS)}"
    )


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def canonicalize(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Map a checkpoint's keys to the fine-tune namespace: ``(state, layout name, dropped keys)``."""
    state = {_strip_module(k): v for k, v in state.items()}
    dropped: list[str] = []
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith("transformer_q.") for k in state):
        layout = "point-bert (transformer_q.*)"
        for k, v in state.items():
            if k.startswith("transformer_q.") and not k.startswith("transformer_q.cls_head"):
                out[k[len("transformer_q.") :]] = v
            elif k.startswith("base_model."):
                out[k[len("base_model.") :]] = v
            else:
                dropped.append(k)
        return out, layout, dropped
    pretrain = any(k.startswith(PRETRAIN_ENCODER_PREFIXES) for k in state)
    layout = "point-mae pre-training (MAE_encoder.*)" if pretrain else "fine-tune / raw"
    for k, v in state.items():
        for prefix in PRETRAIN_ENCODER_PREFIXES + ("base_model.",):
            if k.startswith(prefix):
                k = k[len(prefix) :]
                break
        if k in out:
            raise CheckpointError(f"checkpoint has two entries that both map to {k!r}")
        out[k] = v
    return out, layout, dropped


def _backbone_root(model: nn.Module) -> str:
    """Prefix under which the model keeps its backbone (``MAE_encoder.`` for PointMAE, else '')."""
    return str(getattr(model, "CHECKPOINT_ROOT", ""))


def _to_model_key(key: str, root: str) -> str:
    if root and key.startswith(CANONICAL_BACKBONE_PREFIXES):
        return root + key
    return key


def _reference_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the plain architecture (no PEFT additions), built on the meta device."""
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        try:
            with torch.device("meta"):
                ref = type(model)(**config)
            return set(ref.state_dict())
        except TypeError:
            pass
    return set(model.state_dict())


def _classify(model: nn.Module, key: str, ref_keys: set[str]) -> str:
    """'backbone', 'head', 'optional' (tokens, decoder, BN counters) or 'extra' (PEFT additions)."""
    if key not in ref_keys:
        return "extra"
    if key.startswith(tuple(getattr(model, "HEAD_PREFIXES", ()))):
        return "head"
    if key.endswith("num_batches_tracked"):
        return "optional"
    if key.startswith(tuple(getattr(model, "BACKBONE_PREFIXES", CANONICAL_BACKBONE_PREFIXES))):
        return "backbone"
    return "optional"


# --------------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------------
def load_pretrained(
    model: nn.Module,
    path_or_state: str | os.PathLike | Mapping[str, Any],
    *,
    strict_backbone: bool = True,
    ignore_head: bool | str = "auto",
    log: Callable[[str], None] | None | str = "logging",
) -> LoadReport:
    """Load a Point-MAE / Point-BERT / fine-tuned / raw checkpoint into ``model``; return a LoadReport.

    ``strict_backbone``: raise ``CheckpointError`` (naming the keys) when a backbone weight is missing
    from the checkpoint or has a different shape; nothing is loaded then. With False they are
    reported and the model keeps its own values for them.
    ``ignore_head``: ``"auto"`` loads head weights whose shapes match and skips (with a note) only
    those that differ, e.g. the last layer of a 40-class head loaded into a 15-class model (the
    other head layers are loaded); ``True`` never loads head weights;
    ``False`` raises on a head shape mismatch.
    ``log``: where the formatted report goes: ``"logging"`` (default) logs it at INFO level through
    this module's logger; ``None`` for silence. A callable (the former ``log=print`` style) still
    receives the text with a ``DeprecationWarning``; it goes in the next release.
    Raises ``CheckpointError`` also when no backbone weight matches at all.
    """
    if ignore_head not in HEAD_POLICIES:
        raise ValueError(f"ignore_head must be one of {HEAD_POLICIES}, got {ignore_head!r}")
    if not (log is None or log == "logging" or callable(log)):
        raise ValueError(f"log must be 'logging', None or a callable, got {log!r}")
    if isinstance(path_or_state, (str, os.PathLike)):
        source = str(path_or_state)
        obj = safe_torch_load(path_or_state, what="checkpoint")
    else:
        source = "<in-memory state>"
        obj = path_or_state
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if isinstance(meta, Mapping) and meta.get("format") == "clora3d-adapter":
        raise CheckpointError(
            f"{source} is a clora3d adapter file (method {meta.get('method')!r}), not pre-trained "
            f"weights: pass the pre-trained base checkpoint here, then apply the adapter with "
            f"clora3d.peft.load_adapter(model, {source!r}) (or use tools/export.py --merged output)"
        )
    raw, container = extract_state_dict(obj, source)
    canon, layout, dropped = canonicalize(raw)
    if container:
        layout += f", from '{container}'"

    root = _backbone_root(model)
    model_state = model.state_dict()
    ref_keys = _reference_keys(model)
    report = LoadReport(source=source, layout=layout, dropped=sorted(dropped))
    to_load: dict[str, torch.Tensor] = {}
    for ck, value in canon.items():
        key = _to_model_key(ck, root)
        if key not in model_state:
            report.unexpected.append(key)
            continue
        kind = _classify(model, key, ref_keys)
        want = tuple(model_state[key].shape)
        have = tuple(value.shape)
        if kind == "head" and ignore_head is True:
            report.skipped.append((key, "ignore_head=True"))
        elif have != want:
            if kind == "head" and ignore_head == "auto":
                report.skipped.append(
                    (
                        key,
                        f"shape {list(have)} in checkpoint vs {list(want)} in model; "
                        f"head kept at its initialisation (ignore_head='auto')",
                    )
                )
            else:
                report.mismatched.append((key, have, want))
        else:
            to_load[key] = value
    backbone_keys = [k for k in model_state if _classify(model, k, ref_keys) == "backbone"]
    report.loaded = [k for k in model_state if k in to_load]
    report.missing = [
        k
        for k in model_state
        if k not in to_load
        and k not in {s for s, _ in report.skipped}
        and k not in {m for m, _, _ in report.mismatched}
    ]
    report.missing_backbone = [
        k for k in backbone_keys if k not in to_load and k not in {m for m, _, _ in report.mismatched}
    ]
    if report.skipped and any("ignore_head='auto'" in r for _, r in report.skipped):
        report.notes.append(
            "head shapes differ from the checkpoint (different class count?): the head "
            "is trained from its initialisation"
        )

    if not any(k in to_load for k in backbone_keys):
        example = sorted(canon)[:5]
        raise CheckpointError(
            f"{source}: no backbone weight of {type(model).__name__} matches the checkpoint (layout "
            f"{layout}); checkpoint keys look like {example}, the model expects e.g. "
            f"{backbone_keys[:3]}. Is this the right file / model?"
        )
    head_mismatch = [(k, h, w) for k, h, w in report.mismatched if _classify(model, k, ref_keys) == "head"]
    if head_mismatch and len(head_mismatch) == len(report.mismatched):
        k, h, w = next((m for m in head_mismatch if m[0].endswith("weight")), head_mismatch[0])
        n_ckpt, n_model = (h[0] if h else None), (w[0] if w else None)
        raise CheckpointError(
            f"{source}: the task head does not match {type(model).__name__}: {k} has shape {list(h)} "
            f"in the checkpoint but {list(w)} in the model (the checkpoint's head has {n_ckpt} "
            f"outputs, the model's {n_model}); build the model with model.cls_dim (num_classes) = "
            f"{n_ckpt} to use this head, or load without the head (ignore_head='auto')"
        )
    if strict_backbone and (report.mismatched or report.missing_backbone):
        problems = [
            f"{k} has shape {list(h)} in the checkpoint but {list(w)} in the model" for k, h, w in report.mismatched[:5]
        ]
        problems += [f"{k} is missing from the checkpoint" for k in report.missing_backbone[:5]]
        more = len(report.mismatched) + len(report.missing_backbone) - len(problems)
        raise CheckpointError(
            f"{source}: backbone of {type(model).__name__} does not match the checkpoint: "
            + "; ".join(problems)
            + (f"; ... and {more} more" if more > 0 else "")
            + ". Check the model size/preset (trans_dim, depth, encoder_dims, group_size) or pass "
            "strict_backbone=False to load the rest anyway."
        )
    if to_load:
        model.load_state_dict(to_load, strict=False)
    if log == "logging":
        logging.getLogger(__name__).info("%s", report.format())
    elif log is not None:
        warnings.warn(
            "load_pretrained(log=callable) is deprecated: the report goes through the "
            "'clora3d.models.checkpoint' logger by default; pass log=None for silence",
            DeprecationWarning,
            stacklevel=2,
        )
        log(report.format())
    return report


# --------------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------------
LAYOUTS = ("auto", "finetune", "pretrain")


def to_point_mae_state_dict(
    model: nn.Module, layout: str = "auto", *, drop_extra: bool = False
) -> dict[str, torch.Tensor]:
    """The model's weights in the official Point-MAE key layout (CPU tensors).

    ``layout="finetune"``: the fine-tune model's keys (``encoder.*``, ``blocks.blocks.i.*``, ``norm.*``,
    ``cls_token``, ``cls_head_finetune.*`` ...); for ``PointMAE`` only its encoder, without prefix.
    ``layout="pretrain"``: the pre-training layout: backbone keys under ``MAE_encoder.`` (a
    ``PointMAE`` keeps its decoder keys; a fine-tune model's tokens and head are left out).
    ``"auto"``: ``pretrain`` for ``PointMAE``, else ``finetune``.
    Parameters that are not part of the architecture (unmerged PEFT modules) raise unless
    ``drop_extra=True``; merge the PEFT method first (or save its adapter separately).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = _backbone_root(model)
    if layout == "auto":
        layout = "pretrain" if root else "finetune"
    ref_keys = _reference_keys(model)
    state = model.state_dict()
    extra = [k for k in state if k not in ref_keys]
    if extra and not drop_extra:
        raise CheckpointError(
            f"{type(model).__name__} has {len(extra)} tensors outside the Point-MAE layout (e.g. {extra[:3]}); "
            f"merge the PEFT method into the weights first and pass drop_extra=True, or save the adapter "
            f"on its own"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in ref_keys:
            continue
        t = v.detach().cpu().clone()
        if root:
            if layout == "pretrain":
                out[k] = t
            elif k.startswith(root):
                out[k[len(root) :]] = t  # the decoder side is not part of the fine-tune layout
        elif layout == "finetune":
            out[k] = t
        elif k.startswith(CANONICAL_BACKBONE_PREFIXES):
            out["MAE_encoder." + k] = t
    return out


def save_point_mae_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    epoch: int = 0,
    metrics: Mapping[str, float] | None = None,
    best_metrics: Mapping[str, float] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    module_prefix: bool = False,
    drop_extra: bool = False,
) -> Path:
    """Write ``{"base_model", "optimizer", "epoch", "metrics", "best_metrics"}`` like Point-MAE's
    ``save_checkpoint``. ``module_prefix=True`` adds the ``module.`` prefix of its DataParallel runs.
    Returns the path written."""
    state = to_point_mae_state_dict(model, layout, drop_extra=drop_extra)
    if module_prefix:
        state = {"module." + k: v for k, v in state.items()}
    payload = {
        "base_model": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "best_metrics": {k: float(v) for k, v in (best_metrics or {}).items()},
    }
    return atomic_torch_save(payload, Path(path), what="model")

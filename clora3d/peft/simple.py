"""Methods that add no parameters: full fine-tuning, linear probing, BitFit.

Exact trainable sets (all three also train the head ``cls_head_finetune.*``, ``cls_token`` and
``cls_pos``, plus ``extra_trainable``):

* ``full``: every parameter of the model.
* ``linear``: only the head and the two cls parameters (the backbone, incl. the final ``norm``, is
  frozen). The Point-MAE head is an MLP (768 -> 256 -> 256 -> C with BN), so this is "head probing";
  ``cls_token``/``cls_pos`` change the features because the cls token passes through the blocks.
* ``bitfit``: in each selected block the biases of ``attn.qkv`` (when it has one), ``attn.proj``,
  ``mlp.fc1``, ``mlp.fc2`` and, with ``layernorm: true``, ``norm1.bias`` and ``norm2.bias``; the final
  ``norm.bias`` with ``final_norm: true``; with ``embed: true`` also the biases of the patch encoder
  (Conv1d and BatchNorm), ``pos_embed`` and ``reduce_dim``. LayerNorm/BatchNorm weights are never included.
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from clora3d.peft.base import PeftMethod, register_method, resolve_layers

FULL_DEFAULTS: dict[str, Any] = {}
LINEAR_DEFAULTS: dict[str, Any] = {}
BITFIT_DEFAULTS: dict[str, Any] = {
    "layernorm": True,    # train norm1.bias / norm2.bias of each selected block
    "final_norm": True,   # train the final norm.bias
    "embed": False,       # train biases of the patch encoder, pos_embed and reduce_dim
    "layers": None,       # null -> every block
}


@register_method
class FullFineTune(PeftMethod):
    """Every parameter is trained (the adapter file then holds the whole model)."""

    name = "full"
    DEFAULTS = FULL_DEFAULTS
    mergeable = True  # nothing to fold: merge/unmerge are no-ops

    def _base_trainable(self) -> Iterable[str]:
        return [n for n, _ in self.model.named_parameters()]

    def _merge_weights(self) -> None:
        pass

    def _restore_weights(self) -> None:
        pass


@register_method
class LinearProbe(PeftMethod):
    """Only the task head, ``cls_token`` and ``cls_pos`` are trained."""

    name = "linear"
    DEFAULTS = LINEAR_DEFAULTS
    mergeable = True

    def _merge_weights(self) -> None:
        pass

    def _restore_weights(self) -> None:
        pass


def _bias_name(prefix: str, module: nn.Module) -> list[str]:
    b = getattr(module, "bias", None)
    return [f"{prefix}.bias"] if isinstance(b, nn.Parameter) else []


@register_method
class BitFit(PeftMethod):
    """Bias terms only (see module docstring for the exact list)."""

    name = "bitfit"
    DEFAULTS = BITFIT_DEFAULTS
    mergeable = True

    def _setup(self) -> None:
        self.layers = resolve_layers(self.name, self.config, len(self.blocks))
        self.config["layers"] = list(self.layers)

    def _base_trainable(self) -> Iterable[str]:
        cfg, out = self.config, []
        for i in self.layers:
            blk, pre = self.blocks[i], f"blocks.blocks.{i}"
            for sub in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                out += _bias_name(f"{pre}.{sub}", blk.get_submodule(sub))
            if cfg["layernorm"]:
                out += _bias_name(f"{pre}.norm1", blk.norm1) + _bias_name(f"{pre}.norm2", blk.norm2)
        if cfg["final_norm"]:
            out += _bias_name("norm", self.model.norm)
        if cfg["embed"]:
            for root in ("encoder", "pos_embed", "reduce_dim"):
                mod = getattr(self.model, root, None)
                if mod is None:
                    continue
                for mname, m in mod.named_modules():
                    if isinstance(m, (nn.Linear, nn.Conv1d, nn.modules.batchnorm._BatchNorm)):
                        out += _bias_name(f"{root}.{mname}" if mname else root, m)
        return out

    def _merge_weights(self) -> None:
        pass

    def _restore_weights(self) -> None:
        pass

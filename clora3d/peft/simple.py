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

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from clora3d.peft.base import PeftMethod
from clora3d.peft.config import PeftConfig, config_defaults, layers_spec
from clora3d.peft.registry import register_method
from clora3d.schema import spec


@dataclass
class FullConfig(PeftConfig):
    """Options of ``peft: {NAME: full}`` (only the common ones)."""


@dataclass
class LinearConfig(PeftConfig):
    """Options of ``peft: {NAME: linear}`` (only the common ones)."""


@dataclass
class BitFitConfig(PeftConfig):
    """Options of ``peft: {NAME: bitfit}``."""

    layernorm: bool = spec(True, doc="train norm1.bias / norm2.bias of each selected block")
    final_norm: bool = spec(True, doc="train the final norm.bias")
    embed: bool = spec(False, doc="train biases of the patch encoder, pos_embed and reduce_dim")
    layers: list[int] | None = layers_spec()


FULL_DEFAULTS = config_defaults(FullConfig)
LINEAR_DEFAULTS = config_defaults(LinearConfig)
BITFIT_DEFAULTS = config_defaults(BitFitConfig)


@register_method
class FullFineTune(PeftMethod):
    """Every parameter is trained (the adapter file then holds the whole model)."""

    name = "full"
    config_class = FullConfig
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
    config_class = LinearConfig
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
    config_class = BitFitConfig
    mergeable = True

    def _setup(self) -> None:
        self.layers = self.resolve_layers()

    def _base_trainable(self) -> Iterable[str]:
        cfg, out = self.cfg, []
        for i in self.layers:
            blk, pre = self.blocks[i], f"blocks.blocks.{i}"
            for sub in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                out += _bias_name(f"{pre}.{sub}", blk.get_submodule(sub))
            if cfg.layernorm:
                out += _bias_name(f"{pre}.norm1", blk.norm1) + _bias_name(f"{pre}.norm2", blk.norm2)
        if cfg.final_norm:
            out += _bias_name("norm", self.model.norm)
        if cfg.embed:
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

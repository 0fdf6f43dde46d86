"""CLoRA and the other PEFT methods behind one interface.

``apply_peft(model, {"NAME": ..., **options}) -> PeftMethod``; see :mod:`clora3d.peft.base` for the
interface and ``docs/peft.md`` for every method's options. ``DEFAULTS[name]`` lists each method's
options with their defaults (the keys every method also accepts are in ``COMMON_DEFAULTS``).
"""
from clora3d.peft.adapter import ADAPTER_DEFAULTS, PROMPT_DEFAULTS, Adapter, PromptTuning
from clora3d.peft.base import (BLOCK_LINEARS, COMMON_DEFAULTS, METHODS, PeftMethod, apply_peft, hash_tensors,
                               load_adapter, read_adapter)
from clora3d.peft.clora import CLORA_DEFAULTS, CLoRA, CLoRASpaces
from clora3d.peft.dapt import DAPT, DAPT_DEFAULTS
from clora3d.peft.idpt import IDPT, IDPT_DEFAULTS
from clora3d.peft.lora import LORA_DEFAULTS, LoRA
from clora3d.peft.pointgst import POINTGST_DEFAULTS, PointGST
from clora3d.peft.pointlora import POINTLORA_DEFAULTS, PointLoRA
from clora3d.peft.simple import BITFIT_DEFAULTS, FULL_DEFAULTS, LINEAR_DEFAULTS, BitFit, FullFineTune, LinearProbe

#: Options (without the common ones) and defaults of every method, by NAME.
DEFAULTS = {
    "full": FULL_DEFAULTS,
    "linear": LINEAR_DEFAULTS,
    "bitfit": BITFIT_DEFAULTS,
    "lora": LORA_DEFAULTS,
    "clora": CLORA_DEFAULTS,
    "adapter": ADAPTER_DEFAULTS,
    "prompt": PROMPT_DEFAULTS,
    "pointlora": POINTLORA_DEFAULTS,
    "dapt": DAPT_DEFAULTS,
    "pointgst": POINTGST_DEFAULTS,
    "idpt": IDPT_DEFAULTS,
}

__all__ = ["apply_peft", "load_adapter", "read_adapter", "PeftMethod", "METHODS", "DEFAULTS", "COMMON_DEFAULTS",
           "BLOCK_LINEARS", "hash_tensors", "CLoRA", "CLoRASpaces", "LoRA", "Adapter", "PromptTuning",
           "FullFineTune", "LinearProbe", "BitFit", "PointLoRA", "DAPT", "PointGST", "IDPT"]

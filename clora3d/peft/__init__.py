"""CLoRA and the other PEFT methods behind one interface.

Each method is one file holding its config dataclass (``LoRAConfig`` ...), its layers and the method
class; :mod:`~clora3d.peft.registry` pairs name, config class and method class
(``apply_peft(model, cfg)``, ``config_class(name)``, ``method_names()``); :mod:`~clora3d.peft.base`
is the lifecycle every method shares; :mod:`~clora3d.peft.adapter_io` the adapter files and the
base-weight hash. ``DEFAULTS[name]`` lists each method's own options with their defaults (the keys
every method also accepts are in ``COMMON_DEFAULTS``); ``docs/peft.md`` explains them.
"""

from clora3d.peft.adapter import ADAPTER_DEFAULTS, PROMPT_DEFAULTS, Adapter, AdapterConfig, PromptConfig, PromptTuning
from clora3d.peft.adapter_io import hash_tensors, load_adapter, read_adapter, save_adapter
from clora3d.peft.base import PeftMethod
from clora3d.peft.clora import CLORA_DEFAULTS, CLoRA, CLoRAConfig, CLoRASpaces
from clora3d.peft.config import BLOCK_LINEARS, COMMON_DEFAULTS, PeftConfig, config_defaults
from clora3d.peft.dapt import DAPT, DAPT_DEFAULTS, DAPTConfig
from clora3d.peft.idpt import IDPT, IDPT_DEFAULTS, IDPTConfig
from clora3d.peft.lora import LORA_DEFAULTS, LoRA, LoRAConfig
from clora3d.peft.pointgst import POINTGST_DEFAULTS, PointGST, PointGSTConfig
from clora3d.peft.pointlora import POINTLORA_DEFAULTS, PointLoRA, PointLoRAConfig
from clora3d.peft.registry import METHODS, apply_peft, build_config, config_class, method_names, register_method
from clora3d.peft.simple import (
    BITFIT_DEFAULTS,
    FULL_DEFAULTS,
    LINEAR_DEFAULTS,
    BitFit,
    BitFitConfig,
    FullConfig,
    FullFineTune,
    LinearConfig,
    LinearProbe,
)

#: Options (without the common ones) and defaults of every method, by NAME (from the config classes).
DEFAULTS = {name: config_defaults(cls.config_class) for name, cls in METHODS.items()}

__all__ = [
    "apply_peft",
    "build_config",
    "config_class",
    "method_names",
    "register_method",
    "load_adapter",
    "read_adapter",
    "save_adapter",
    "PeftMethod",
    "PeftConfig",
    "METHODS",
    "DEFAULTS",
    "COMMON_DEFAULTS",
    "BLOCK_LINEARS",
    "hash_tensors",
    "config_defaults",
    "CLoRA",
    "CLoRAConfig",
    "CLoRASpaces",
    "LoRA",
    "LoRAConfig",
    "Adapter",
    "AdapterConfig",
    "PromptTuning",
    "PromptConfig",
    "FullFineTune",
    "FullConfig",
    "LinearProbe",
    "LinearConfig",
    "BitFit",
    "BitFitConfig",
    "PointLoRA",
    "PointLoRAConfig",
    "DAPT",
    "DAPTConfig",
    "PointGST",
    "PointGSTConfig",
    "IDPT",
    "IDPTConfig",
    "ADAPTER_DEFAULTS",
    "PROMPT_DEFAULTS",
    "CLORA_DEFAULTS",
    "DAPT_DEFAULTS",
    "IDPT_DEFAULTS",
    "LORA_DEFAULTS",
    "POINTGST_DEFAULTS",
    "POINTLORA_DEFAULTS",
    "BITFIT_DEFAULTS",
    "FULL_DEFAULTS",
    "LINEAR_DEFAULTS",
]

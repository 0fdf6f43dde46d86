"""Training engine: configs, trainer, evaluation protocols, checkpoints, logging, DDP.

Importing this package is cheap and side-effect free: the config functions (which need PyYAML) and
the trainer (which pulls in models, data and PEFT) are imported on first use, so that
``clora3d.engine.build`` works with torch and numpy alone (the GPU check's step-cost tests run on
machines without PyYAML).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_config", "compose_config", "validate_config", "train"]

_CONFIG_FUNCTIONS = ("load_config", "compose_config", "validate_config")


def __getattr__(name: str) -> Any:
    if name in _CONFIG_FUNCTIONS:
        from clora3d.engine import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(cfg: dict, **kwargs: Any) -> dict:
    """Run a training config; see :func:`clora3d.engine.trainer.train`."""
    from clora3d.engine.trainer import train as _train

    return _train(cfg, **kwargs)

"""Training engine: configs, trainer, evaluation protocols, checkpoints, logging, DDP.

Importing this package is cheap and side-effect free: the trainer (which pulls in models, data and
PEFT) is imported on first use of :func:`train`.
"""

from __future__ import annotations

from typing import Any

from clora3d.engine.config import compose_config, load_config, validate_config

__all__ = ["load_config", "compose_config", "validate_config", "train"]


def train(cfg: dict, **kwargs: Any) -> dict:
    """Run a training config; see :func:`clora3d.engine.trainer.train`."""
    from clora3d.engine.trainer import train as _train

    return _train(cfg, **kwargs)

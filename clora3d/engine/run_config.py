"""The run's typed config: the trainer's sections (``train``, ``eval``, ``log``) and the top level, which
dispatches every other section to the typed config declared next to its code:

    model      clora3d.models.config      (one dataclass per model NAME)
    peft       clora3d.peft               (the method's options)
    dataset.*  clora3d.data.config        (one dataclass per dataset NAME)
    data       clora3d.data.config        (sampling; one dataclass per transform NAME)
    optimizer  clora3d.engine.optim
    scheduler  clora3d.engine.optim

:func:`validate_run` is called once, when the run's config is built (``load_config`` /
``compose_config``; ``train()`` revalidates a dict built in code); ``where(key_path)`` names the file
or ``--set`` that set a key, for the errors. The result is a plain dict: every key of the fixed
sections filled with its default, the open sections (model, peft, dataset splits, transforms) sparse
(only the keys given, so presets and constructor defaults still apply).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from clora3d.data.config import DataConfig, validate_dataset, validate_transforms
from clora3d.engine.optim import OptimizerConfig, SchedulerConfig
from clora3d.errors import ConfigError
from clora3d.models.config import DEFAULT_FROZEN_BN, validate_model
from clora3d.schema import short_repr, spec, to_dict, validate

__all__ = ["TrainConfig", "EvalConfig", "LogConfig", "RunConfig", "TASK_DEFAULTS", "validate_run"]

Where = Callable[[tuple], str]


def _non_empty(v: str) -> bool:
    return v != ""


@dataclass
class TrainConfig:
    """The ``train`` section: the loop, its devices and the references' quirks."""

    epochs: int = spec(300, gt=0, doc="epochs to run (the reference runs max_epoch + 1 = 301)")
    batch_size: int = spec(32, gt=0, doc="GLOBAL batch; each of W ranks gets batch_size / W")
    grad_clip: Optional[float] = spec(
        10.0,
        gt=0,
        doc="clip_grad_norm_ max norm over the trainable params; null = "
        "off (default 10 for fine-tuning, null for pre-training: the references)",
    )
    amp: Literal[False, "fp16", "bf16"] = spec(False, doc="mixed precision, CUDA only (ignored with a warning on CPU)")
    matmul_precision: Literal["highest", "high", "medium"] = spec(
        "highest",
        doc="torch.set_float32_matmul_precision: high = TF32 tensor cores for float32 matmuls on CUDA "
        "(faster, ~1e-3 relative error); highest = exact float32",
    )
    compile: Literal[False, True, "reduce-overhead", "max-autotune", "aot_eager"] = spec(
        False,
        doc="torch.compile(fullgraph=True) of the training forward: true = Inductor's default mode, "
        "reduce-overhead = Inductor + CUDA graphs, aot_eager = no code generation (debugging); evaluation and "
        "checkpoints use the plain model (docs/training.md)",
    )
    num_workers: int = spec(4, ge=0, doc="DataLoader workers")
    val_freq: int = spec(1, gt=0, doc="evaluate every val_freq epochs (and always after the last epoch)")
    deterministic: bool = spec(True, doc="torch.use_deterministic_algorithms(warn_only) + cudnn flags")
    select_on_test: bool = spec(
        True,
        doc="REFERENCE QUIRK: evaluate every epoch on dataset.test and pick the best "
        "epoch on it (Point-MAE & co.); false = pick on dataset.val, then report test "
        "metrics of the last and best weights",
    )
    drop_last: bool = spec(True, doc="drop the incomplete last train batch")
    device: Literal["auto", "cpu", "cuda"] = spec("auto", doc="auto = cuda when available")
    sync_bn: bool = spec(False, doc="SyncBatchNorm under DDP (CUDA only)")
    label_smoothing: float = spec(0.0, ge=0, lt=1, doc="cross-entropy label smoothing (classification)")
    partseg_double_step: bool = spec(
        True,
        doc="REFERENCE QUIRK of Point-MAE part seg (default): two optimizer "
        "steps per batch (before and after clipping); false = one step",
    )
    pretrain_select: Literal["last", "test_loss"] = spec(
        "last",
        doc="pre-training: last = keep the last epoch, no model selection (reference); test_loss = also "
        "write ckpt-best.pth at the lowest Chamfer loss on dataset.test",
    )
    snapshot_every: Optional[int] = spec(
        None,
        gt=0,
        doc="also keep ckpt-epoch-XXX.pth every N epochs from "
        "snapshot_from (pre-training default 25, as the reference)",
    )
    snapshot_from: int = spec(0, ge=0, doc="first epoch eligible for snapshots (pre-training default 250)")
    save_best: bool = spec(True, doc="write ckpt-best.pth")


@dataclass
class EvalConfig:
    """The ``eval`` section: what is evaluated after training."""

    vote: Literal[0, 10] = spec(
        0,
        doc="after training, also evaluate the best and last weights with 10-view "
        "scale&translate voting, reported separately as vote@10",
    )
    vote_passes: int = spec(
        1,
        gt=0,
        doc="voting passes; > 1 also reports the best and the mean of the passes "
        "(reference protocol: best of 299 passes, acc_vote@10_max_of_299)",
    )
    batch_size: Optional[int] = spec(None, gt=0, doc="evaluation batch; null = 2 x train.batch_size (reference)")


@dataclass
class LogConfig:
    """The ``log`` section: what a run writes."""

    root: str = spec("experiments", check=_non_empty, expect="a path", doc="run dirs go to <root>/<name>")
    tensorboard: bool = spec(True, doc="TensorBoard scalars in <run>/tb")
    csv: bool = spec(True, doc="per-epoch metrics.csv")
    json: bool = spec(True, doc="per-epoch metrics.jsonl + result.json")
    progress: bool = spec(True, doc="tqdm progress bars")


@dataclass
class RunConfig:
    """A whole run. ``model``, ``peft`` and ``dataset`` are validated by the typed configs of their NAMEs."""

    name: Optional[str] = spec(
        None,
        check=_non_empty,
        expect="a string",
        doc="experiment name; default: the config file stem ('run' for a dict built in code)",
    )
    task: Literal["classification", "partseg", "pretrain"] = spec("classification", doc="what is trained")
    seed: int = spec(0, ge=0, doc="base seed; rank r uses seed + r for the model RNG")
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    model: Any = spec(None, doc="NAME + constructor arguments (clora3d.models.config)")
    peft: Any = spec(None, doc="NAME + the method's options (clora3d.peft); default {NAME: full}")
    dataset: Any = spec(None, doc="train / val / test splits, each NAME + constructor arguments (clora3d.data.config)")


#: Defaults that depend on the task (applied when the key is absent): the references' pre-training
#: runner (Point-MAE tools/runner_pretrain.py) does not clip gradients and keeps
#: ckpt-epoch-XXX.pth every 25 epochs from epoch 250.
TASK_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "pretrain": {("train", "grad_clip"): None, ("train", "snapshot_every"): 25, ("train", "snapshot_from"): 250},
}
_SECTIONS = ("data", "optimizer", "scheduler", "train", "eval", "log")
DATASET_SPLITS = ("train", "val", "test")


def _bad(path: tuple, value: Any, expect: str, where: Where) -> ConfigError:
    return ConfigError(f"config key '{'.'.join(path)}' in {where(path)} must be {expect}, got {short_repr(value)}")


def _peft_section(peft: Any, where: Where) -> dict:
    """The peft section validated by its method's config class (clora3d.peft.registry); only the keys given."""
    from clora3d.peft.registry import build_config, method_names

    if peft is None:
        peft = {"NAME": "full"}
    names = " | ".join(method_names())
    if not isinstance(peft, Mapping) or not isinstance(peft.get("NAME"), str):
        raise _bad(("peft",), peft, f"a mapping with a NAME key ({names})", where)
    if peft["NAME"] not in method_names():
        raise _bad(("peft", "NAME"), peft["NAME"], f"a known PEFT method ({names})", where)
    plain = to_dict(build_config(peft, path=("peft",), where=where))
    return {k: (peft[k] if k == "NAME" else plain[k]) for k in peft}


def _dataset_section(ds: Any, where: Where) -> dict:
    if not isinstance(ds, Mapping) or "train" not in ds:
        raise _bad(("dataset",), ds, "a mapping with at least a 'train' split", where)
    out = {}
    for split, sec in ds.items():
        path = ("dataset", split)
        if split not in DATASET_SPLITS:
            raise ConfigError(
                f"unknown config key 'dataset.{split}' in {where(path)} (known keys of 'dataset': "
                f"{', '.join(sorted(DATASET_SPLITS))})"
            )
        if sec is None:
            continue
        if isinstance(sec, Mapping) and "from_train" in sec:
            ft = sec["from_train"]
            if split != "val":
                raise ConfigError(
                    f"unknown config key 'dataset.{split}.from_train' in {where(path + ('from_train',))}"
                    f" (from_train is only allowed in dataset.val)"
                )
            if isinstance(ft, bool) or not isinstance(ft, (int, float)) or not 0 < ft < 1 or set(sec) != {"from_train"}:
                raise _bad(path, dict(sec), "{from_train: FRACTION} with 0 < FRACTION < 1 and no other key", where)
            out[split] = {"from_train": ft}
            continue
        out[split] = validate_dataset(sec, path=path, where=where)
    return out


def _frozen_bn(model: dict, peft: dict, task: str, where: Where) -> None:
    """One BatchNorm policy: model.frozen_bn (the engine applies it after model.train()) and the PEFT
    method's frozen_bn (which decides the BN buffers stored in adapter files) must agree."""
    fb_model, fb_peft = model.get("frozen_bn"), peft.get("frozen_bn")
    if fb_model is not None and fb_peft is not None and fb_model != fb_peft:
        raise ConfigError(
            f"model.frozen_bn={fb_model!r} ({where(('model', 'frozen_bn'))}) and peft.frozen_bn="
            f"{fb_peft!r} ({where(('peft', 'frozen_bn'))}) disagree; set only model.frozen_bn"
        )
    fb = fb_model if fb_model is not None else (fb_peft if fb_peft is not None else DEFAULT_FROZEN_BN)
    model["frozen_bn"] = fb
    if task != "pretrain":
        peft["frozen_bn"] = fb


def _cross_section_rules(out: dict, source: str, where: Where) -> None:
    task, train, ev, ds = out["task"], out["train"], out["eval"], out["dataset"]
    if task in ("classification", "partseg"):
        if train["select_on_test"]:
            if "test" not in ds:
                raise ConfigError(
                    f"train.select_on_test is true but dataset.test is missing in {source}: add the "
                    f"test split (it is evaluated every epoch)"
                )
            if "val" in ds:
                raise ConfigError(
                    f"dataset.val in {where(('dataset', 'val'))} is unused with train.select_on_test: "
                    f"true (the best epoch is picked on dataset.test); remove it or set "
                    f"train.select_on_test=false"
                )
        elif "val" not in ds:
            raise ConfigError(
                f"train.select_on_test is false but dataset.val is missing in {source}: add a "
                f"validation split, e.g. dataset.val: {{from_train: 0.1}}"
            )
    if ev["vote_passes"] > 1 and not ev["vote"]:
        raise ConfigError(
            f"eval.vote_passes={ev['vote_passes']} in {where(('eval', 'vote_passes'))} needs eval.vote=10 "
            f"(passes of what?); set eval.vote=10 or use --vote-passes, which sets both"
        )
    if train["pretrain_select"] != "last" and task != "pretrain":
        raise ConfigError(
            f"train.pretrain_select={train['pretrain_select']!r} in "
            f"{where(('train', 'pretrain_select'))} applies to task: pretrain only (this config is "
            f"task: {task})"
        )
    if ev["vote"] and task != "classification":
        raise ConfigError(
            f"eval.vote={ev['vote']} in {where(('eval', 'vote'))}: voting is defined for classification only"
        )
    if task == "pretrain" and out["peft"]["NAME"] != "full":
        raise ConfigError(
            f"peft.NAME={out['peft']['NAME']!r} with task: pretrain in {where(('peft', 'NAME'))}: "
            f"pre-training trains the whole model; use peft: {{NAME: full}}"
        )


def validate_run(cfg: Mapping, *, where: Where, source: str = "<config>") -> dict:
    """Fill defaults and validate a whole run config (idempotent); returns a new plain dict."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config from {source} must be a mapping, got {type(cfg).__name__}")
    cfg = copy.deepcopy(dict(cfg))
    for (sec_name, key), value in TASK_DEFAULTS.get(cfg.get("task"), {}).items():
        sec = cfg.get(sec_name)
        if sec is None:
            sec = cfg[sec_name] = {}
        if isinstance(sec, dict) and key not in sec:
            sec[key] = copy.deepcopy(value)
    for name in _SECTIONS:
        if name in cfg and cfg[name] is None:
            cfg[name] = {}
    run = validate(RunConfig, cfg, where=where)
    out = to_dict(run)
    if out["name"] is None:  # a dict built in code, not loaded from a file
        out["name"] = "run"
    out["data"]["train_transforms"] = validate_transforms(run.data.train_transforms, where=where)
    out["model"] = validate_model(run.model, where=where)
    out["peft"] = _peft_section(run.peft, where)
    _frozen_bn(out["model"], out["peft"], out["task"], where)
    out["dataset"] = _dataset_section(run.dataset, where)
    _cross_section_rules(out, source, where)
    return out

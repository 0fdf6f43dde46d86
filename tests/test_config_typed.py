"""The typed configs: each dataclass mirrors the constructor it configures, every error names the key,
the value and the file (or --set) that set it, files of the old layout still resolve to what they did."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path

import pytest

from clora3d.data import DATASETS, SCANOBJECTNN_FILES, TRANSFORMS, build_dataset, build_transforms
from clora3d.data.config import DATASET_CONFIGS, TRANSFORM_CONFIGS, ScanObjectNNConfig
from clora3d.engine.config import load_config, validate_config
from clora3d.engine.run_config import RunConfig
from clora3d.errors import ConfigError
from clora3d.models import model_class, model_names
from clora3d.models.config import MODEL_CONFIGS, ModelKeys
from clora3d.schema import field_docs

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

MINIMAL = """\
task: classification
model: {NAME: PointTransformer, preset: tiny, cls_dim: 4}
peft: {NAME: full}
dataset:
  train: {NAME: ModelNet40, root: data/x, n_points: 1024}
  test: {NAME: ModelNet40, root: data/x, n_points: 1024}
"""


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = inspect.Parameter.empty
    return out


def _signature(fn, skip=("self",)) -> dict:
    return {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize(
    "registry,classes,extra",
    [
        (MODEL_CONFIGS, {n: model_class(n) for n in model_names()}, {f.name for f in dataclasses.fields(ModelKeys)}),
        (DATASET_CONFIGS, DATASETS, {"split"}),
        (TRANSFORM_CONFIGS, TRANSFORMS, set()),
    ],
    ids=["models", "datasets", "transforms"],
)
def test_dataclass_fields_mirror_the_constructors(registry, classes, extra):
    """Names and defaults of every config field equal the constructor's (a new or renamed constructor
    argument fails here, instead of being refused or silently ignored by the config)."""
    assert set(registry) == set(classes)
    for name, cfg_cls in registry.items():
        fields = _defaults(cfg_cls)
        sig = _signature(classes[name].__init__, skip=("self", "split"))
        assert set(fields) - extra == set(sig), name
        for k, v in sig.items():
            assert _same(fields[k], v), (name, k, fields[k], v)


def test_scanobjectnn_variants_are_the_files_table():
    hint = typing.get_type_hints(ScanObjectNNConfig)["variant"]
    assert set(typing.get_args(hint)) == set(SCANOBJECTNN_FILES)


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# one bad value per typed config: (override, dotted key, what the message must say)
BAD = [
    ("seed=-1", "seed", "an integer >= 0"),
    ("task=seg", "task", "classification | partseg | pretrain"),
    ("name=''", "name", "a string"),
    ("data.npoints=0", "data.npoints", "a positive integer"),
    ("data.train_sampling=random", "data.train_sampling", "fps_subset | fps | none"),
    ("data.train_transforms=[{NAME: Jitter, std: -1}]", "data.train_transforms.0.std", "a number >= 0"),
    (
        "data.train_transforms=[{NAME: ScaleAndTranslate, scale_low: 2, scale_high: 1}]",
        "data.train_transforms.0.scale_high",
        ">= scale_low",
    ),
    ("data.train_transforms=[{NAME: FPSResample}]", "data.train_transforms.0.n", "required"),
    ("optimizer.lr=0", "optimizer.lr", "a positive number"),
    ("optimizer.betas=[0.9]", "optimizer.betas", "two numbers in [0, 1)"),
    ("optimizer.NAME=Adamw", "optimizer.NAME", "AdamW | Adam | SGD"),
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs", "an integer >= 0"),
    ("train.grad_clip=0", "train.grad_clip", "a positive number or null"),
    ("train.amp=true", "train.amp", "false | fp16 | bf16"),
    ("train.label_smoothing=1", "train.label_smoothing", "a number in [0, 1)"),
    ("eval.vote=5", "eval.vote", "0 | 10"),
    ("log.csv=1", "log.csv", "true or false"),
    ("model.NAME=Nope", "model.NAME", "one of ['PointTransformer', 'PartSegModel', 'PointMAE']"),
    ("model.preset=huge", "model.preset", "a PointTransformer preset (vit_s | tiny | point_bert)"),
    ("model.depth=0", "model.depth", "a positive integer"),
    ("model.head=big", "model.head", "mae | bert"),
    ("model.frozen_bn=yes", "model.frozen_bn", "train | eval or null"),
    ("dataset.train.NAME=Nope", "dataset.train.NAME", "a dataset class of clora3d.data"),
    ("dataset.train.n_points=1.5", "dataset.train.n_points", "a positive integer"),
    ("dataset.train.num_category=20", "dataset.train.num_category", "10 | 40"),
    (
        "dataset.test={NAME: ScanObjectNN, root: x, variant: OBJ}",
        "dataset.test.variant",
        "OBJ_BG | OBJ_ONLY | PB_T50_RS",
    ),
    ("dataset.test={NAME: ScanObjectNN, root: x}", "dataset.test.variant", "required"),
    ("peft.NAME=nope", "peft.NAME", "a known PEFT method"),
]


@pytest.mark.parametrize("override,key,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_key_value_and_origin(tmp_path, override, key, expect):
    """Set from the command line: the message names the key, the --set and the expectation; set in a
    base file: the message names that file, not the child that inherits it."""
    path = _write(tmp_path, "run.yaml", MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and f"--set {override}" in msg and expect in msg, msg
    assert "\n" not in msg
    # the same value written in a base file
    dotted, _, raw = override.partition("=")
    *parents, leaf = dotted.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: {raw}\n"
    base = _write(tmp_path, "base/bad.yaml", MINIMAL)
    extra = _write(tmp_path, "base/extra.yaml", text)
    child = _write(tmp_path, "exp/child.yaml", "_base_: [../base/bad.yaml, ../base/extra.yaml]\n")
    with pytest.raises(ConfigError) as e:
        load_config(child)
    msg = str(e.value)
    assert f"'{key}'" in msg and str(extra) in msg and str(child) not in msg and str(base) not in msg, msg


def test_unknown_keys_in_every_section_name_the_file(tmp_path):
    path = _write(tmp_path, "run.yaml", MINIMAL)
    for override, key, hint in [
        ("eval.votes=10", "eval.votes", "did you mean 'vote'"),
        ("log.rot=x", "log.rot", "did you mean 'root'"),
        ("model.num_groups=8", "model.num_groups", "did you mean 'num_group'"),
        ("dataset.train.n_point=8", "dataset.train.n_point", "did you mean 'n_points'"),
        ("data.train_transforms=[{NAME: RotateY, angle: 1}]", "data.train_transforms.0.angle", "angle_high"),
        ("peft.rank=4", "peft.rank", "known keys of 'peft': extra_trainable, frozen_bn"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(f"unknown config key '{key}' in --set {override}")) as e:
            load_config(path, [override])
        assert hint in str(e.value), str(e.value)


def test_sections_stay_sparse_and_converted(tmp_path):
    """Open sections keep only the given keys (a preset's sizes are not overwritten by defaults); values
    are the validated ones (an integer for a float option becomes a float)."""
    cfg = load_config(
        _write(tmp_path, "run.yaml", MINIMAL),
        ["model.mlp_ratio=2", "data.train_transforms=[{NAME: Jitter, std: 0}]", "optimizer.weight_decay=0"],
    )
    assert cfg["model"] == {
        "NAME": "PointTransformer",
        "preset": "tiny",
        "cls_dim": 4,
        "mlp_ratio": 2.0,
        "frozen_bn": "train",
    }
    assert isinstance(cfg["model"]["mlp_ratio"], float) and isinstance(cfg["optimizer"]["weight_decay"], float)
    assert cfg["data"]["train_transforms"] == [{"NAME": "Jitter", "std": 0.0}]
    assert cfg["dataset"]["train"] == {"NAME": "ModelNet40", "root": "data/x", "n_points": 1024}
    assert validate_config(cfg) == cfg


def test_old_layout_file_still_resolves_to_what_it_did():
    """A config written for the old layout (a _base_ list of recipe, model, task and method, as the
    deleted cfgs/modelnet40/lora.yaml) gives the config the old loader resolved (fixture of 705bf1d)."""
    old = load_config(FIXTURES / "cfgs_old_layout" / "modelnet40_lora.yaml")
    resolved = json.loads((FIXTURES / "cfgs_leaves_merged.json").read_text())["resolved"]
    assert old == resolved["modelnet40/lora.yaml"]


def test_builders_validate_through_the_typed_configs(tmp_path):
    with pytest.raises(ConfigError, match=r"'dataset\.n_points' in <config> must be a positive integer, got 'x'"):
        build_dataset({"NAME": "ModelNet40", "root": "x", "n_points": "x"}, "train")
    with pytest.raises(ConfigError, match=r"pass the split as the argument"):
        build_dataset({"NAME": "ModelNet40", "root": "x", "split": "test"}, "train")
    with pytest.raises(ConfigError, match=r"'transforms\.1\.max_dropout_ratio' .* must be a number in \[0, 1\)"):
        build_transforms([{"NAME": "RotateY"}, {"NAME": "RandomDropout", "max_dropout_ratio": 1.0}])
    t = build_transforms([{"NAME": "Jitter", "std": 0}])
    assert type(t.transforms[0]).__name__ == "Jitter" and t.transforms[0].std == 0.0


def _documented_keys(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+(?:\.[A-Za-z_<>]+)*)` \|", text, flags=re.M))


def test_readme_key_tables_match_the_dataclasses():
    """Both ways: every field of the fixed sections is in cfgs/README.md's tables, and every key a table
    lists exists (a field of the typed configs, or a documented engine key of an open section)."""
    text = (REPO / "cfgs" / "README.md").read_text()
    open_sections = {"model", "peft", "dataset"}  # documented by their NAME and engine keys below
    fields = {d.name for d in field_docs(RunConfig)} - open_sections
    assert all(f"### `{s}`" in text for s in open_sections)
    documented = _documented_keys(text)
    assert fields <= documented, sorted(fields - documented)
    engine_keys = {
        "model.NAME",
        "model.preset",
        "model.frozen_bn",
        "peft.NAME",
        "dataset.train",
        "dataset.val",
        "dataset.test",
        "dataset.<split>.split",
        "dataset.val.from_train",
    }
    assert documented - fields == engine_keys, sorted(documented - fields - engine_keys)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["eval.vote_passes=3"], r"eval\.vote_passes=3 in --set eval\.vote_passes=3 needs eval\.vote=10"),
        (["train.pretrain_select=test_loss"], r"train\.pretrain_select='test_loss' in --set .* task: pretrain only"),
        (
            ["task=partseg", "model={NAME: PartSegModel, preset: tiny}", "eval.vote=10"],
            r"eval\.vote=10 in --set eval\.vote=10: voting is defined for classification only",
        ),
        (
            ["task=pretrain", "model={NAME: PointMAE, preset: tiny}", "peft.NAME=lora"],
            r"peft\.NAME='lora' with task: pretrain in --set peft\.NAME=lora",
        ),
        (["dataset.val={from_train: 0.1}"], r"dataset\.val in --set dataset\.val=\{from_train: 0\.1\} is unused"),
        (
            ["train.select_on_test=false", "dataset.val={from_train: 1}"],
            r"'dataset\.val' in --set dataset\.val=\{from_train: 1\} must be \{from_train: FRACTION\}",
        ),
        (["dataset.test.from_train=0.1"], r"'dataset\.test\.from_train' in --set dataset\.test\.from_train=0\.1"),
    ],
)
def test_cross_section_rules_name_the_origin(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, "run.yaml", MINIMAL), overrides)

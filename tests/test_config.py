"""Config loading: _base_ inheritance, --set overrides, schema validation and the shipped cfgs/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clora3d.engine.config import compose_config, load_config, parse_override, validate_config
from clora3d.engine.run_config import RunConfig
from clora3d.errors import ConfigError
from clora3d.schema import field_docs

REPO = Path(__file__).resolve().parents[1]
CFGS = REPO / "cfgs"

MINIMAL = """\
task: classification
model: {NAME: PointTransformer, preset: tiny, cls_dim: 4}
peft: {NAME: full}
dataset:
  train: {NAME: ModelNet40, root: data/x, n_points: 1024}
  test: {NAME: ModelNet40, root: data/x, n_points: 1024}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_defaults_filled_and_idempotent(tmp_path):
    cfg = load_config(write(tmp_path, "run.yaml", MINIMAL))
    assert cfg["name"] == "run"
    assert list(cfg) == [
        "name",
        "task",
        "seed",
        "data",
        "optimizer",
        "scheduler",
        "train",
        "eval",
        "log",
        "model",
        "peft",
        "dataset",
    ]
    for section in ("data", "optimizer", "scheduler", "train", "eval", "log"):
        assert set(cfg[section]) == {
            d.name.split(".")[1] for d in field_docs(RunConfig) if d.name.startswith(section + ".")
        }
    assert cfg["optimizer"] == {
        "NAME": "AdamW",
        "lr": 5e-4,
        "weight_decay": 0.05,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "momentum": 0.9,
        "nesterov": True,
        "no_decay_cls_pos": False,
    }
    assert cfg["scheduler"]["warmup_epochs"] == 10 and cfg["train"]["grad_clip"] == 10.0
    # reference default: the frozen patch encoder's BatchNorm stays in train mode (stats drift)
    assert cfg["model"]["frozen_bn"] == "train" and cfg["peft"]["frozen_bn"] == "train"
    assert validate_config(cfg) == cfg


def test_base_deep_merge_child_wins_lists_replaced(tmp_path):
    write(
        tmp_path,
        "base/a.yaml",
        MINIMAL
        + """\
optimizer: {lr: 1.0e-3, weight_decay: 0.1}
data: {npoints: 512, train_transforms: [{NAME: ScaleAndTranslate}, {NAME: RotateY}]}
train: {epochs: 7}
""",
    )
    write(tmp_path, "base/b.yaml", "train: {epochs: 9, batch_size: 8}\n")
    child = write(
        tmp_path,
        "exp/child.yaml",
        """\
_base_: [../base/a.yaml, ../base/b.yaml]
optimizer: {lr: 2.0e-4}
data: {train_transforms: [{NAME: Jitter}]}
""",
    )
    cfg = load_config(child)
    assert cfg["optimizer"]["lr"] == 2e-4  # child wins
    assert cfg["optimizer"]["weight_decay"] == 0.1  # sibling key kept (deep merge)
    assert cfg["data"]["npoints"] == 512
    assert cfg["data"]["train_transforms"] == [{"NAME": "Jitter"}]  # lists replaced, not merged
    assert cfg["train"]["epochs"] == 9 and cfg["train"]["batch_size"] == 8  # later base wins
    assert cfg["name"] == "child"


def test_nested_base_and_replace(tmp_path):
    write(tmp_path, "ds.yaml", "NAME: ModelNet40\nroot: data/mn\nn_points: 2048\n")
    write(tmp_path, "lora.yaml", MINIMAL.replace("peft: {NAME: full}", "peft: {NAME: lora, rank: 4}"))
    child = write(
        tmp_path,
        "c.yaml",
        """\
_base_: lora.yaml
peft: {_replace_: true, NAME: bitfit}
dataset:
  train: {_base_: ds.yaml, n_points: 1024}
""",
    )
    cfg = load_config(child)
    assert cfg["dataset"]["train"] == {"NAME": "ModelNet40", "root": "data/mn", "n_points": 1024}
    assert cfg["peft"]["NAME"] == "bitfit" and "rank" not in cfg["peft"]
    # without _replace_ the inherited lora option leaks into bitfit and is rejected by name
    bad = write(tmp_path, "d.yaml", "_base_: lora.yaml\npeft: {NAME: bitfit}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'peft\.rank' in .*lora\.yaml"):
        load_config(bad)


def test_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, "r.yaml", MINIMAL),
        [
            "optimizer.lr=1e-3",
            "train.amp=bf16",
            "train.deterministic=false",
            "data.train_transforms=[{NAME: RotateY}]",
            "model.drop_path_rate=0.0",
            "name=x",
        ],
    )
    assert cfg["optimizer"]["lr"] == 1e-3 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["train"]["amp"] == "bf16" and cfg["train"]["deterministic"] is False
    assert cfg["data"]["train_transforms"] == [{"NAME": "RotateY"}]
    assert cfg["model"]["drop_path_rate"] == 0.0 and cfg["name"] == "x"
    assert parse_override("a.b.c= [1, 2]") == (["a", "b", "c"], [1, 2])


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train..epochs=3", ".x=1", "train.epochs=[1", "_base_=x.yaml"])
def test_bad_override_syntax(tmp_path, text):
    with pytest.raises(ConfigError, match=re.escape(repr(text))) as e:
        load_config(write(tmp_path, "r.yaml", MINIMAL), [text])
    assert "\n" not in str(e.value)


def test_unknown_keys_name_key_and_file(tmp_path):
    base = write(tmp_path, "base.yaml", MINIMAL + "train: {epocs: 3}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(child)
    msg = str(e.value)
    assert "'train.epocs'" in msg and str(base) in msg and "did you mean 'epochs'" in msg
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' in .*r\.yaml"):
        load_config(write(tmp_path, "r.yaml", MINIMAL + "trian: {}\n"))
    with pytest.raises(ConfigError, match=r"'optimizer\.lrr' in --set optimizer\.lrr=1"):
        load_config(write(tmp_path, "r2.yaml", MINIMAL), ["optimizer.lrr=1"])
    # open sections are checked against the library's constructors
    with pytest.raises(ConfigError, match=r"'model\.trans_dimm' in .*r3\.yaml; did you mean 'trans_dim'"):
        load_config(write(tmp_path, "r3.yaml", MINIMAL.replace("cls_dim: 4", "cls_dim: 4, trans_dimm: 8")))
    with pytest.raises(ConfigError, match=r"'peft\.rnak'"):
        load_config(write(tmp_path, "r4.yaml", MINIMAL.replace("{NAME: full}", "{NAME: lora, rnak: 2}")))
    with pytest.raises(ConfigError, match=r"'dataset\.train\.npoints'"):
        load_config(write(tmp_path, "r5.yaml", MINIMAL), ["dataset.train.npoints=3"])
    with pytest.raises(ConfigError, match=r"'dataset\.tst'"):
        load_config(write(tmp_path, "r6.yaml", MINIMAL), ["dataset.tst={NAME: ModelNet40}"])
    with pytest.raises(
        ConfigError, match=r"'data\.train_transforms\.0\.NAME' in --set .* must be a transform .*, got 'Rotat'"
    ):
        load_config(write(tmp_path, "r7.yaml", MINIMAL), ["data.train_transforms=[{NAME: Rotat}]"])


def test_missing_base_and_bad_files(tmp_path):
    child = write(tmp_path, "child.yaml", "_base_: nowhere/base.yaml\n" + MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert str(tmp_path / "nowhere" / "base.yaml") in str(e.value) and str(child) in str(e.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad\.yaml line 2"):
        load_config(write(tmp_path, "bad.yaml", "task: classification\nmodel: {NAME: x]\nseed: 1\n"))
    write(tmp_path, "cyc_a.yaml", "_base_: cyc_b.yaml\n")
    write(tmp_path, "cyc_b.yaml", "_base_: cyc_a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "cyc_a.yaml")


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epochs=0", r"'train\.epochs' .* must be a positive integer, got 0"),
        ("train.amp=true", r"'train\.amp'.*false \| fp16 \| bf16"),
        ("optimizer.NAME=Adamw", r"'optimizer\.NAME'"),
        ("task=segmentation", r"'task'"),
        ("eval.vote=5", r"'eval\.vote'"),
        ("model.NAME=Nope", r"'model\.NAME'"),
        ("dataset.train.NAME=Nope", r"'dataset\.train\.NAME'"),
        ("train.select_on_test=false", r"dataset\.val is missing"),
        ("peft.frozen_bn=train", r"model\.frozen_bn.*peft\.frozen_bn=.*disagree"),
    ],
)
def test_bad_values(tmp_path, override, match):
    extra = ["model.frozen_bn=eval"] if "peft.frozen_bn" in override else []
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, "r.yaml", MINIMAL), extra + [override])


def test_val_holdout_config(tmp_path):
    cfg = load_config(
        write(tmp_path, "r.yaml", MINIMAL), ["train.select_on_test=false", "dataset.val={from_train: 0.2}"]
    )
    assert cfg["dataset"]["val"] == {"from_train": 0.2}
    with pytest.raises(ConfigError, match="from_train"):
        load_config(write(tmp_path, "r.yaml", MINIMAL), ["train.select_on_test=false", "dataset.val={from_train: 1.5}"])


def _shipped_configs() -> list[Path]:
    """Every runnable config (files named _base_* or inside a _base_ folder are fragments)."""
    return sorted(
        p for p in CFGS.rglob("*.yaml") if not any(part.startswith("_base_") for part in p.relative_to(CFGS).parts)
    )


def test_shipped_configs_exist():
    names = {str(p.relative_to(CFGS)) for p in _shipped_configs()}
    for task in ("modelnet40", "scan_objbg", "scan_objonly", "scan_hardest", "fewshot", "shapenetpart"):
        for method in ("full", "linear", "lora", "clora", "adapter", "prompt", "bitfit"):
            cfg = compose_config(task, method)  # every task x method composes (tests/test_config_compose.py)
            assert cfg["name"] == f"{task}_{method}" and cfg["peft"]["NAME"] == method
    assert "pretrain/pointmae.yaml" in names
    assert any(n.startswith("cpu/") for n in names)


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(CFGS)))
def test_shipped_config_loads(path):
    cfg = load_config(path)
    if path.parent.name in (
        "modelnet40",
        "scan_objbg",
        "scan_objonly",
        "scan_hardest",
        "fewshot",
        "shapenetpart",
        "pretrain",
        "cpu",
    ):
        assert cfg["name"] == f"{path.parent.name}_{path.stem}"  # distinct run dirs per file


def test_reference_hyperparameters():
    """A few rows of point_mae_family §3.3 checked against the resolved configs."""
    mn = compose_config("modelnet40", "full")
    assert (mn["data"]["npoints"], mn["model"]["num_group"], mn["model"]["cls_dim"]) == (1024, 64, 40)
    assert mn["optimizer"]["lr"] == 5e-4 and mn["optimizer"]["weight_decay"] == 0.05
    assert mn["train"]["batch_size"] == 32 and mn["train"]["grad_clip"] == 10
    assert mn["train"]["epochs"] == 301 and mn["scheduler"]["epochs"] == 300
    assert mn["scheduler"]["warmup_epochs"] == 10 and mn["model"]["trans_dim"] == 384
    assert mn["data"]["train_transforms"] == [{"NAME": "ScaleAndTranslate"}]
    hard = load_config(CFGS / "scan_hardest" / "clora.yaml")
    assert (hard["data"]["npoints"], hard["model"]["num_group"], hard["model"]["cls_dim"]) == (2048, 128, 15)
    assert hard["dataset"]["train"]["variant"] == "PB_T50_RS"
    fs = compose_config("fewshot", "full")
    assert fs["train"]["epochs"] == 151 and fs["scheduler"]["epochs"] == 150
    assert fs["model"]["cls_dim"] == 40 and fs["train"]["drop_last"] is True
    seg = compose_config("shapenetpart", "full")
    assert seg["task"] == "partseg" and seg["optimizer"]["lr"] == 2e-4 and seg["train"]["batch_size"] == 16
    pre = load_config(CFGS / "pretrain" / "pointmae.yaml")
    assert pre["task"] == "pretrain" and pre["optimizer"]["lr"] == 1e-3 and pre["train"]["batch_size"] == 128


def test_readme_documents_every_key():
    text = (CFGS / "README.md").read_text()
    for d in field_docs(RunConfig):
        assert f"`{d.name}`" in text, d.name
    for k in (
        "model.NAME",
        "model.preset",
        "model.frozen_bn",
        "peft.NAME",
        "dataset.val.from_train",
        "_base_",
        "_replace_",
    ):
        assert f"`{k}`" in text, k


def test_train_cli_reports_config_error_on_one_line(tmp_path):
    bad = write(tmp_path, "bad.yaml", MINIMAL + "train: {epocs: 3}\n")
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'train.epocs'")
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(bad), "--set", "oops"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error: bad override 'oops'")

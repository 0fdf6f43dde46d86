"""Composition by task and method (``compose_config`` / ``tools/train.py --task T --peft P``) against the
merged configs of the old one-file-per-task-x-method leaves (tests/fixtures/cfgs_leaves_merged.json,
written from the leaf files before the two-line ones were deleted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clora3d.engine.config import (
    _compose,
    _load_file,
    _strip_replace,
    compose_config,
    composition_choices,
    load_config,
    validate_config,
)
from clora3d.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CFGS = REPO / "cfgs"
_FIXTURE = json.loads((REPO / "tests" / "fixtures" / "cfgs_leaves_merged.json").read_text())
SNAPSHOT = _FIXTURE["leaves"]  # merged, before validation
RESOLVED = _FIXTURE["resolved"]  # load_config's output at 705bf1d (the hand-written schema)

#: leaves that carried settings beyond _base_ + name (kept as files; composition differs from them)
REAL_LEAVES = {
    "modelnet40/dapt.yaml",
    "scan_objbg/dapt.yaml",
    "scan_objonly/dapt.yaml",
    "scan_hardest/dapt.yaml",
    "fewshot/dapt.yaml",
    "scan_objbg/idpt.yaml",
    "scan_objonly/idpt.yaml",
    "shapenetpart/idpt.yaml",
    "shapenetpart/pointlora.yaml",
}
#: two-line leaves kept because a document names them (README.md, tools/fewshot.py, docs/peft.md)
NAMED_LEAVES = {
    "modelnet40/clora.yaml",
    "scan_hardest/clora.yaml",
    "scan_objbg/lora.yaml",
    "fewshot/clora.yaml",
    "fewshot/idpt.yaml",
}


def _task_protocol(folder: str) -> tuple[str, str | None]:
    return (folder[: -len("_rotate")], "rotate") if folder.endswith("_rotate") else (folder, None)


def test_snapshot_covers_every_task_and_method():
    assert len(SNAPSHOT) == 90
    choices = composition_choices()
    assert choices["task"] == ["fewshot", "modelnet40", "scan_hardest", "scan_objbg", "scan_objonly", "shapenetpart"]
    assert choices["protocol"] == ["rotate", "scale_translate"] and choices["model"] == ["vit_s"]
    for leaf in SNAPSHOT:
        folder, method = leaf.split("/")
        assert _task_protocol(folder)[0] in choices["task"] and method[:-5] in choices["peft"], leaf


@pytest.mark.parametrize("leaf", sorted(SNAPSHOT))
def test_composition_equals_the_old_leaf(leaf):
    folder, method = leaf.split("/")
    task, protocol = _task_protocol(folder)
    cfg, _, _ = _compose(task, method[:-5], None, protocol, None)
    _strip_replace(cfg)
    assert cfg == SNAPSHOT[leaf]
    # validated by the typed configs: the same resolved config as the old hand-written schema gave
    resolved = compose_config(task, method[:-5], protocol=protocol)
    assert resolved == RESOLVED[leaf] and validate_config(resolved) == resolved


def test_two_line_leaves_are_gone_and_the_others_unchanged():
    for leaf, merged in SNAPSHOT.items():
        path = CFGS / leaf
        if leaf in REAL_LEAVES or leaf in NAMED_LEAVES:
            cfg, _ = _load_file(path)  # a kept leaf still merges to what it merged to
            _strip_replace(cfg)
            assert cfg == merged, leaf
        else:
            assert not path.exists(), f"{leaf} only repeats compose_config's layers; delete it"
    # README commands (--cfg of a kept file) give the same run as --task/--peft
    assert load_config(CFGS / "modelnet40" / "clora.yaml") == compose_config("modelnet40", "clora")


def test_real_leaves_carry_more_than_the_layers(tmp_path):
    """The kept pair files hold settings the layers alone do not give (a copy of cfgs/ without them
    composes to something else)."""
    shutil.copytree(CFGS / "_base_", tmp_path / "_base_")
    for leaf in REAL_LEAVES:
        folder, method = leaf.split("/")
        task, protocol = _task_protocol(folder)
        cfg, _, _ = _compose(task, method[:-5], None, protocol, tmp_path)
        _strip_replace(cfg)
        assert cfg != SNAPSHOT[leaf], leaf
        assert cfg["name"] == SNAPSHOT[leaf]["name"] and cfg["peft"]["NAME"] == SNAPSHOT[leaf]["peft"]["NAME"]


def test_overrides_and_origins(tmp_path):
    cfg = compose_config("scan_hardest", "clora", protocol="rotate", overrides=["train.epochs=3"])
    assert cfg["name"] == "scan_hardest_rotate_clora" and cfg["train"]["epochs"] == 3
    assert cfg["data"]["train_transforms"][0]["NAME"] == "RotateY" and cfg["peft"]["NAME"] == "clora"
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epocs' in --set train\.epocs=3"):
        compose_config("modelnet40", "lora", overrides=["train.epocs=3"])
    # an error names the key and the base file that set it (a copy of cfgs/_base_ with one bad value)
    shutil.copytree(CFGS / "_base_", tmp_path / "_base_")
    recipe = tmp_path / "_base_" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("lr: 5.0e-4", "lr: -1.0"))
    with pytest.raises(ConfigError, match=r"'optimizer\.lr' in .*_base_/recipe\.yaml must be a positive number"):
        compose_config("modelnet40", "lora", root=tmp_path)
    assert compose_config("modelnet40", "lora", root=tmp_path, overrides=["optimizer.lr=0.1"])["optimizer"]["lr"] == 0.1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(task="modelnet4", peft="clora"),
            r"unknown --task 'modelnet4'; did you mean 'modelnet40'\?.*"
            r"fewshot, modelnet40, scan_hardest, scan_objbg, scan_objonly, shapenetpart",
        ),
        (dict(task="modelnet40", peft="cloraa"), r"unknown --peft 'cloraa'; did you mean 'clora'\?.*adapter, bitfit"),
        (dict(task="modelnet40", peft="clora", model="vit_b"), r"unknown --model 'vit_b'.*vit_s"),
        (dict(task="modelnet40", peft="clora", protocol="rotate", model="vit_b"), r"unknown --model 'vit_b'"),
        (
            dict(task="modelnet40", peft="clora", protocol="../../x"),
            r"unknown --protocol '\.\./\.\./x'.*rotate, "
            r"scale_translate",
        ),
    ],
)
def test_unknown_names_list_the_available_ones(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        compose_config(**kwargs)


def test_train_cli_task_and_peft(tmp_path):
    """tools/train.py --task/--peft reach compose_config (a bad name is one error line, exit 2); --cfg and
    --task exclude each other."""
    tool = str(REPO / "tools" / "train.py")
    r = subprocess.run(
        [sys.executable, tool, "--task", "modelnet40", "--peft", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: unknown --peft 'nope'") and "clora" in r.stderr
    r = subprocess.run(
        [sys.executable, tool, "--task", "modelnet40", "--peft", "clora", "--set", "train.epocs=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and "'train.epocs' in --set train.epocs=1" in r.stderr
    r = subprocess.run(
        [sys.executable, tool, "--cfg", "x.yaml", "--task", "modelnet40", "--peft", "clora"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    r = subprocess.run(
        [sys.executable, tool, "--task", "modelnet40"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 2 and "--peft" in r.stderr


def test_model_choice(tmp_path):
    """--model vit_s is the default everywhere; another model file composes where the layers are used and
    is refused, with the reason, by a task or pair file that fixes the model."""
    assert compose_config("shapenetpart", "clora", model="vit_s") == compose_config("shapenetpart", "clora")
    assert compose_config("modelnet40", "dapt", model="vit_s") == compose_config("modelnet40", "dapt")
    shutil.copytree(CFGS / "_base_", tmp_path / "_base_")
    (tmp_path / "modelnet40").mkdir()
    shutil.copy(CFGS / "modelnet40" / "dapt.yaml", tmp_path / "modelnet40" / "dapt.yaml")
    (tmp_path / "_base_" / "models" / "vit_t.yaml").write_text(
        "model: {NAME: PointTransformer, trans_dim: 192, depth: 12, num_heads: 3, encoder_dims: 192}\n"
    )
    cfg = compose_config("modelnet40", "lora", model="vit_t", root=tmp_path)
    assert cfg["model"]["trans_dim"] == 192 and cfg["model"]["num_group"] == 64 and cfg["name"] == "modelnet40_lora"
    with pytest.raises(ConfigError, match=r"--model vit_t: task 'shapenetpart' defines its own model \(PartSegModel\)"):
        compose_config("shapenetpart", "lora", model="vit_t", root=tmp_path)
    with pytest.raises(ConfigError, match=r"--model vit_t: .*modelnet40/dapt\.yaml fixes the model"):
        compose_config("modelnet40", "dapt", model="vit_t", root=tmp_path)


def test_protocol_on_top_of_a_pair_file():
    """A pair file keeps its settings under another protocol: cfgs/scan_hardest/dapt.yaml + rotate."""
    rot = compose_config("scan_hardest", "dapt", protocol="rotate")
    st = load_config(CFGS / "scan_hardest" / "dapt.yaml")
    assert rot["name"] == "scan_hardest_rotate_dapt" and rot["data"]["train_transforms"][0]["NAME"] == "RotateY"
    assert rot["peft"] == st["peft"] and rot["model"] == st["model"] and rot["peft"]["adapter_dropout"] == 0.2


@pytest.mark.parametrize("leaf", sorted(set(SNAPSHOT) - REAL_LEAVES - NAMED_LEAVES))
def test_a_retired_leaf_names_the_command_that_builds_its_config(leaf):
    """``--cfg cfgs/<task>[_rotate]/<method>.yaml`` of a deleted two-line file fails with the
    ``--task/--peft[/--protocol]`` arguments, and those arguments compose the file's former config."""
    with pytest.raises(ConfigError) as info:
        load_config(CFGS / leaf)
    msg = str(info.value)
    assert msg.startswith(f"config file not found: {CFGS / leaf}; that task x method pair is composed")
    args = msg.split("use `")[1].split("`")[0].split()
    assert args[0::2] == ["--task", "--peft", "--protocol"][: len(args) // 2]
    folder, method = leaf.split("/")
    task, protocol = _task_protocol(folder)
    assert args[1::2] == [task, method[:-5]] + ([protocol] if protocol else [])
    assert compose_config(*args[1:4:2], protocol=protocol) == RESOLVED[leaf]


def test_a_missing_config_that_is_no_pair_gets_no_hint(tmp_path):
    for path in (CFGS / "modelnet40" / "nope.yaml", CFGS / "nowhere" / "clora.yaml", tmp_path / "clora.yaml"):
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"config file not found: {path}"

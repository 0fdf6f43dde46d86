"""clora3d.storage.to_plain: the one converter to plain JSON/YAML data, checked against hand-written
expected outputs (the four copies it replaced: engine/config.py, engine/trainer.py, peft/base.py
``_plain`` and engine/logging.py ``_jsonable``)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from clora3d.storage import to_plain


def test_nested_containers_become_dicts_with_str_keys_and_lists():
    obj = OrderedDict([(1, (2, [3, (4,)])), ("a", {"b": ("x", None, True)}), (None, [])])
    assert to_plain(obj) == {"1": [2, [3, [4]]], "a": {"b": ["x", None, True]}, "None": []}
    assert type(to_plain(obj)) is dict
    assert type(to_plain((1, 2))) is list


def test_scalars_and_strings_unchanged():
    for v in ("text", b"raw", 0, -7, 2.5, True, False, None):
        out = to_plain(v)
        assert out == v and type(out) is type(v)


def test_numpy_scalars_become_python_values():
    assert to_plain(np.float32(1.5)) == 1.5 and type(to_plain(np.float32(1.5))) is float
    assert to_plain(np.int64(-3)) == -3 and type(to_plain(np.int64(-3))) is int
    assert to_plain(np.bool_(True)) is True
    assert to_plain({"acc": np.float64(0.25), "n": np.int32(4)}) == {"acc": 0.25, "n": 4}


def test_torch_and_numpy_arrays():
    assert to_plain(torch.tensor(3)) == 3 and type(to_plain(torch.tensor(3))) is int
    assert to_plain(torch.tensor(0.5)) == 0.5
    assert to_plain(np.array(7)) == 7
    assert to_plain(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert to_plain(np.array([0.5, 1.5], dtype=np.float32)) == [0.5, 1.5]
    assert to_plain(torch.ones(2, requires_grad=True)) == [1.0, 1.0]


def test_paths_become_strings():
    assert to_plain(Path("/tmp/a/b.pth")) == "/tmp/a/b.pth"
    assert to_plain({"run": PurePosixPath("runs/x")}) == {"run": "runs/x"}


def test_dataclasses_become_dicts_of_fields():
    @dataclasses.dataclass
    class Cfg:
        rank: int = 8
        targets: tuple = ("qkv", "fc1")
        where: Path = Path("out")

    assert to_plain(Cfg()) == {"rank": 8, "targets": ["qkv", "fc1"], "where": "out"}
    assert to_plain(Cfg) is Cfg  # a class is not an instance: left alone


def test_nonfinite_kept_by_default_and_strings_on_request():
    out = to_plain({"a": float("nan"), "b": [float("inf"), -math.inf], "c": np.float32("nan")})
    assert math.isnan(out["a"]) and out["b"] == [math.inf, -math.inf] and math.isnan(out["c"])
    strict = to_plain(
        {
            "a": float("nan"),
            "b": [float("inf"), -math.inf],
            "c": torch.tensor(float("nan")),
            "d": np.array([1.0, np.inf]),
        },
        nonfinite="str",
    )
    assert strict == {"a": "nan", "b": ["inf", "-inf"], "c": "nan", "d": [1.0, "inf"]}
    json.loads(json.dumps(strict), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


def test_unknown_objects_returned_unchanged_and_bad_option_refused():
    sentinel = object()
    assert to_plain([sentinel])[0] is sentinel
    with pytest.raises(ValueError, match="nonfinite must be 'keep' or 'str'"):
        to_plain(1.0, nonfinite="null")


# ------------------------------------------------------------------------------ one safe loader
def test_missing_torch_file_is_a_checkpoint_error_and_a_file_not_found(tmp_path):
    from clora3d.errors import CheckpointError, CheckpointNotFoundError
    from clora3d.models.checkpoint import read_checkpoint
    from clora3d.storage import safe_torch_load

    for load in (safe_torch_load, read_checkpoint):  # the alias is the same function
        with pytest.raises(CheckpointNotFoundError) as info:
            load(tmp_path / "none.pth")
        assert isinstance(info.value, CheckpointError) and isinstance(info.value, FileNotFoundError)
        assert str(info.value) == f"checkpoint not found: {tmp_path / 'none.pth'}"


def test_a_run_folder_passed_as_checkpoint_names_the_files_inside(tmp_path):
    from clora3d.errors import CheckpointError
    from clora3d.storage import safe_torch_load

    (tmp_path / "ckpt-last.pth").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(tmp_path)
    assert str(info.value) == (
        f"checkpoint {tmp_path} is a directory; pass the .pth file inside it (this run folder has ckpt-last.pth)"
    )


def test_duplicate_writers_and_loaders_are_the_storage_functions():
    from clora3d import storage
    from clora3d.data import common
    from clora3d.engine import checkpoint as engine_ckpt
    from clora3d.models import checkpoint as model_ckpt

    assert engine_ckpt.atomic_save is storage.atomic_torch_save
    assert model_ckpt.read_checkpoint is storage.safe_torch_load
    assert not hasattr(common, "atomic_write_bytes")

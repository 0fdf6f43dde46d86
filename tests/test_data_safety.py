"""Restricted unpickling of the data set pickles (.dat caches, few-shot .pkl)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from clora3d.data import ModelNet40, ModelNetFewShot, safe_load, safe_loads
from clora3d.data.modelnet import cache_name
from clora3d.errors import DataError, UnsafePickleError


class _CreatesFile:
    """Unpickling this object would create ``path`` (payload runs builtins.open)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsSystem:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_numpy_payloads_load(proto):
    obj = [
        [np.arange(12, dtype=np.float32).reshape(4, 3), np.zeros((2, 6), np.float64)],
        [np.array([3], dtype=np.int32)],
        {"train": [(np.ones((5, 6), np.float32), 1, np.int32(7))]},
        np.dtype("int64"),
        np.float64(2.5),
        {1, 2},
        (1, "a", b"x", None, True, 1.5),
    ]
    out = safe_loads(pickle.dumps(obj, protocol=proto))
    np.testing.assert_array_equal(out[0][0], obj[0][0])
    assert out[0][0].dtype == np.float32 and out[1][0].dtype == np.int32
    pts, ep, orig = out[2]["train"][0]
    assert isinstance(orig, np.int32) and orig == 7 and ep == 1
    assert out[3] == np.dtype("int64") and out[4] == 2.5 and out[5] == {1, 2} and out[6] == obj[6]


class _Evals:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w')",))


@pytest.mark.parametrize(
    "payload_cls,name",
    # open pickles as io.open on Python 3.10-3.11 and as _io.open on 3.12
    [(_CreatesFile, r"'(_?io|builtins)\.open'"), (_RunsSystem, r"'(posix|os)\.system'"), (_Evals, r"'builtins\.eval'")],
)
def test_payload_rejected_and_not_executed(tmp_path: Path, payload_cls, name):
    target = tmp_path / "pwned.txt"
    # hide the payload inside an otherwise valid cache structure
    data = pickle.dumps(
        [[np.zeros((4, 6), np.float32), payload_cls(str(target))], [np.array([0], np.int32)]], protocol=4
    )
    f = tmp_path / "evil.pkl"
    f.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=name) as e:
        safe_load(f)
    assert str(f) in str(e.value)
    assert not target.exists()
    with pytest.raises(UnsafePickleError):
        safe_load(io.BytesIO(data))
    assert not target.exists()


def test_other_globals_rejected(tmp_path: Path):
    import collections

    for obj in (collections.OrderedDict(a=1), Path("/tmp"), np.ma.masked_array([1, 2], mask=[0, 1])):
        with pytest.raises(UnsafePickleError):
            safe_loads(pickle.dumps(obj, protocol=4))


def test_loaders_use_restricted_unpickler(tmp_path: Path):
    target = tmp_path / "created_by_cache.txt"
    (tmp_path / "modelnet40_shape_names.txt").write_text("a\nb\n")
    evil = pickle.dumps([[_CreatesFile(str(target))], [np.array([0], np.int32)]], protocol=4)
    (tmp_path / cache_name(40, "train", 1024)).write_bytes(evil)
    with pytest.raises(UnsafePickleError):
        ModelNet40(tmp_path, "train", n_points=1024)
    (tmp_path / "5way_10shot").mkdir()
    (tmp_path / "5way_10shot" / "0.pkl").write_bytes(pickle.dumps({"train": [_RunsSystem(str(target))], "test": []}))
    with pytest.raises(UnsafePickleError):
        ModelNetFewShot(tmp_path, 5, 10, 0, "train")
    assert not target.exists()


def test_corrupt_pickle_is_data_error(tmp_path: Path):
    f = tmp_path / "x.dat"
    f.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(DataError, match="x.dat"):
        safe_load(f)

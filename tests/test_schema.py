"""clora3d.schema: every supported field type and every error, against hand-written expectations."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

import pytest

from clora3d.errors import ConfigError
from clora3d.schema import FieldDoc, Invalid, describe, field_docs, spec, to_dict, validate


def origin_of(path):
    return "set in cfgs/x.yaml" if path[-1:] != ("lr",) else "--set opt.lr=-1"


@dataclass
class Inner:
    k: int = spec(3, ge=1, doc="neighbours")
    mode: Literal["a", "b"] = "a"


@dataclass
class Cfg:
    flag: bool = spec(False, doc="a switch")
    n: int = spec(1, ge=0, doc="count")
    lr: float = spec(1e-3, gt=0)
    name: str = "x"
    kind: Literal["lora", "clora", False] = "clora"
    opt: Optional[int] = spec(None, gt=0)
    alt: float | None = None
    items: list[int] = spec(factory=lambda: [1, 2], ge=0)
    pair: tuple[float, float] = (0.9, 0.999)
    many: tuple[str, ...] = ()
    names: dict[str, float] = spec(factory=dict)
    inner: Inner = spec(factory=Inner)
    anything: Any = None
    maybe: Optional[list[int]] = spec(None, ge=0)


def err(cls, data, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        validate(cls, data, **kw)
    return str(e.value)


# --------------------------------------------------------------------------- accepted values
def test_defaults_and_every_type_accepted():
    c = validate(Cfg, {})
    assert c == Cfg()
    c = validate(
        Cfg,
        {
            "flag": True,
            "n": 0,
            "lr": 2,
            "name": "",
            "kind": False,
            "opt": 4,
            "alt": 3,
            "items": (5, 6),
            "pair": [0, 0.5],
            "many": ["a", "b"],
            "names": {"u": 1},
            "inner": {"k": 7, "mode": "b"},
            "anything": {"z": [1]},
        },
    )
    assert c.flag is True and c.n == 0 and c.name == "" and c.kind is False and c.opt == 4
    assert c.lr == 2.0 and type(c.lr) is float  # an int is accepted for float, converted
    assert c.alt == 3.0 and type(c.alt) is float
    assert c.items == [5, 6] and type(c.items) is list  # a tuple is accepted for a list
    assert c.pair == (0.0, 0.5) and type(c.pair) is tuple and type(c.pair[0]) is float
    assert c.many == ("a", "b")
    assert c.names == {"u": 1.0} and type(c.names["u"]) is float
    assert c.inner == Inner(7, "b")
    assert c.anything == {"z": [1]}
    assert validate(Cfg, {"opt": None, "alt": None}).opt is None


def test_path_prefixes_keys():
    msg = err(Cfg, {"n": -1}, path=("peft",), where=lambda p: "cfgs/m.yaml")
    assert msg == "config key 'peft.n' in cfgs/m.yaml must be an integer >= 0, got -1"


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("flag", 1, "true or false"),
        ("flag", "yes", "true or false"),
        ("n", True, "an integer >= 0"),  # a bool is never an int
        ("n", 1.5, "an integer >= 0"),
        ("n", -1, "an integer >= 0"),
        ("lr", True, "a positive number"),
        ("lr", "1e-3", "a positive number"),
        ("lr", 0, "a positive number"),
        ("lr", float("nan"), "a positive number"),
        ("lr", float("inf"), "a positive number"),
        ("name", 3, "a string"),
        ("kind", "LoRA", "lora | clora | false"),
        ("kind", 0, "lora | clora | false"),  # 0 == False but is not the literal false
        ("opt", 0, "a positive integer or null"),
        ("opt", "1", "a positive integer or null"),
        ("alt", "x", "a number or null"),
        ("items", 3, "a list of (an integer >= 0)"),
        ("pair", [1], "a list of 2 items (a number, a number)"),
        ("pair", "ab", "a list of 2 items (a number, a number)"),
        ("many", "ab", "a list of strings"),
        ("names", [1], "a mapping of names to numbers"),
        ("inner", 5, "a mapping"),
        ("maybe", "x", "a list of (an integer >= 0) or null"),
    ],
)
def test_bad_value_names_key_value_expectation_and_origin(key, value, expect):
    msg = err(Cfg, {key: value}, where=origin_of)
    where = origin_of((key,))
    assert msg == f"config key '{key}' in {where} must be {expect}, got {value!r}"


@pytest.mark.parametrize(
    "key,value,bad_key,bad_value,expect",
    [
        ("items", [1, -2], "items.1", -2, "an integer >= 0"),
        ("items", [1, "2"], "items.1", "'2'", "an integer >= 0"),
        ("pair", [0.5, None], "pair.1", None, "a number"),
        ("many", ["a", 1], "many.1", 1, "a string"),
        ("names", {"u": "v"}, "names.u", "'v'", "a number"),
        ("names", {1: 2.0}, "names.1", 1, "a string key"),
        ("inner", {"k": 0}, "inner.k", 0, "an integer >= 1"),
        ("inner", {"mode": "c"}, "inner.mode", "'c'", "a | b"),
        ("maybe", [1, -1], "maybe.1", -1, "an integer >= 0"),  # X | None: a bad item of X is named
    ],
)
def test_bad_item_names_the_item(key, value, bad_key, bad_value, expect):
    msg = err(Cfg, {key: value}, path=("sec",), where=lambda p: f"file-for-{'.'.join(map(str, p))}")
    assert msg == f"config key 'sec.{bad_key}' in file-for-sec.{bad_key} must be {expect}, got {bad_value}"


def test_bounds_in_words():
    @dataclass
    class B:
        p: float = spec(0.0, ge=0, lt=1)
        q: float = spec(1.0, gt=0, le=2)
        r: int = spec(5, le=10)
        s: int = spec(5, lt=10)
        t: float = spec(1.0, gt=-1)

    assert err(B, {"p": 1}).endswith("must be a number in [0, 1), got 1")
    assert err(B, {"p": -0.5}).endswith("must be a number in [0, 1), got -0.5")
    assert err(B, {"q": 0}).endswith("must be a number in (0, 2], got 0")
    assert err(B, {"q": 2.5}).endswith("must be a number in (0, 2], got 2.5")
    assert err(B, {"r": 11}).endswith("must be an integer <= 10, got 11")
    assert err(B, {"s": 10}).endswith("must be an integer < 10, got 10")
    assert err(B, {"t": -1}).endswith("must be a number > -1, got -1")
    assert validate(B, {"p": 0, "q": 2, "r": 10, "s": 9, "t": -0.5}) == B(0.0, 2.0, 10, 9, -0.5)


def test_custom_check_and_expect():
    @dataclass
    class C:
        ids: Optional[list[int]] = spec(
            None,
            check=lambda v: len(set(v)) == len(v) and len(v) > 0,
            expect="a non-empty list of distinct integers or null",
        )

    assert validate(C, {"ids": [2, 1]}).ids == [2, 1]
    assert validate(C, {"ids": None}).ids is None
    assert err(C, {"ids": [1, 1]}) == (
        "config key 'ids' in <config> must be a non-empty list of distinct integers or null, got [1, 1]"
    )
    assert err(C, {"ids": 5}) == (
        "config key 'ids' in <config> must be a non-empty list of distinct integers or null, got 5"
    )
    with pytest.raises(TypeError, match="expect"):
        spec(None, check=bool)


def test_long_values_are_cut():
    msg = err(Cfg, {"name": list(range(10_000))})
    assert len(msg) < 300 and "..." in msg


# --------------------------------------------------------------------------- unknown / missing
def test_unknown_key_with_suggestion_and_origin():
    msg = err(Cfg, {"nme": "y"}, path=("peft",), where=lambda p: "cfgs/a.yaml" if p == ("peft", "nme") else "?")
    assert msg == (
        "unknown config key 'peft.nme' in cfgs/a.yaml; did you mean 'name'? (known keys of 'peft': "
        "alt, anything, flag, inner, items, kind, lr, many, maybe, n, name, names, opt, pair)"
    )


def test_unknown_key_top_level_without_suggestion():
    msg = err(Inner, {"zzzzzz": 1})
    assert msg == "unknown config key 'zzzzzz' in <config> (known keys at the top level: k, mode)"


def test_unknown_nested_key():
    msg = err(Cfg, {"inner": {"kk": 1}}, where=lambda p: ".".join(p))
    assert msg.startswith("unknown config key 'inner.kk' in inner.kk; did you mean 'k'? (known keys of 'inner'")


def test_missing_required_field():
    @dataclass
    class R:
        rank: int = spec(gt=0, doc="rank")
        alpha: float = 1.0

    assert validate(R, {"rank": 2}) == R(2, 1.0)
    msg = err(R, {"alpha": 2}, path=("peft",), where=lambda p: "cfgs/r.yaml")
    assert msg == "config key 'peft.rank' in cfgs/r.yaml is required (no default): set it to a positive integer"


def test_not_a_mapping():
    assert err(Inner, [1]) == "config in <config> must be a mapping, got [1]"
    assert err(Inner, "x", path=("model",)) == "config key 'model' in <config> must be a mapping, got 'x'"


# --------------------------------------------------------------------------- __post_init__
@dataclass
class Cross:
    lo: int = 0
    hi: int = 1

    def __post_init__(self):
        if self.hi <= self.lo:
            raise Invalid("hi", f"greater than lo ({self.lo})", self.hi)
        if self.hi > 100:
            raise ValueError("hi and lo span more than 100")


def test_post_init_invalid_names_field_value_and_origin():
    msg = err(Cross, {"lo": 5, "hi": 3}, path=("sec",), where=lambda p: f"in-{p[-1]}")
    assert msg == "config key 'sec.hi' in in-hi must be greater than lo (5), got 3"
    # the field kept its default: the message still names it and its value
    msg = err(Cross, {"lo": 5}, path=("sec",), where=lambda p: "f.yaml")
    assert msg == "config key 'sec.hi' in f.yaml must be greater than lo (5), got 1"


def test_post_init_value_error():
    msg = err(Cross, {"hi": 200}, path=("sec",), where=lambda p: "f.yaml")
    assert msg == "config 'sec' in f.yaml: hi and lo span more than 100"
    assert err(Cross, {"hi": 200}) == "config in <config>: hi and lo span more than 100"


def test_post_init_config_error_passes_through():
    @dataclass
    class P:
        a: int = 0

        def __post_init__(self):
            raise ConfigError("exact message")

    assert err(P, {}) == "exact message"


def test_error_is_value_error_and_single_line():
    with pytest.raises(ValueError) as e:
        validate(Cfg, {"n": "x"})
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- to_dict / docs
def test_to_dict_plain_nested_and_round_trip():
    c = validate(Cfg, {"pair": [0.1, 0.2], "many": ["q"], "inner": {"k": 2}})
    d = to_dict(c)
    assert d == {
        "flag": False,
        "n": 1,
        "lr": 1e-3,
        "name": "x",
        "kind": "clora",
        "opt": None,
        "alt": None,
        "items": [1, 2],
        "pair": [0.1, 0.2],
        "many": ["q"],
        "names": {},
        "inner": {"k": 2, "mode": "a"},
        "anything": None,
        "maybe": None,
    }
    assert validate(Cfg, d) == c
    assert validate(Cfg, c) == c  # an instance is re-validated through its dict


def test_field_docs():
    docs = field_docs(Cfg)
    by = {d.name: d for d in docs}
    assert [d.name for d in docs][:3] == ["flag", "n", "lr"]
    assert by["n"] == FieldDoc("n", "an integer >= 0", 1, "count")
    assert by["items"].default == [1, 2]
    assert by["pair"].default == [0.9, 0.999]
    assert by["inner.k"] == FieldDoc("inner.k", "an integer >= 1", 3, "neighbours")
    assert "inner" not in by

    @dataclass
    class R:
        rank: int = spec(gt=0)

    (d,) = field_docs(R)
    assert d.required and d.expect == "a positive integer"
    assert not by["n"].required


def test_describe_words():
    assert describe(Optional[int], {"gt": 0}) == "a positive integer or null"
    assert describe(list[str]) == "a list of strings"
    assert describe(dict[str, Any]) == "a mapping of names to (any value)"
    assert describe(Literal["x", None, True]) == "x | null | true"


def test_unsupported_type_is_a_programming_error():
    @dataclass
    class U:
        s: set = dataclasses.field(default_factory=set)

    with pytest.raises(TypeError, match="unsupported field type"):
        validate(U, {"s": [1]})


def test_messages_have_no_placeholders():
    msg = err(Cfg, {"opt": -3}, where=origin_of)
    assert not re.search(r"\{|\}", msg)

"""The one dict -> dataclass converter: strict types, errors that name the key and the expected type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from d2v.core.config import from_dict, to_dict
from d2v.core.errors import ConfigError


@dataclass
class Inner:
    size: int = 1
    scale: float = 1.0


@dataclass
class Outer:
    name: str
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = (0.0, 1.0)
    sizes: tuple[int, ...] = ()
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)
    by_name: dict[str, Inner] = field(default_factory=dict)
    free: dict[str, Any] = field(default_factory=dict)


def test_round_trip_through_json_types():
    cfg = Outer("x", True, "b", (0.5, 2.0), (1, 2), ["t"], 3, Inner(2, 0.5), {"k": Inner(4)}, {"any": [1, "a"]})
    data = to_dict(cfg)
    data["pair"], data["sizes"] = list(data["pair"]), list(data["sizes"])  # JSON has no tuples
    assert from_dict(Outer, data) == cfg


def test_ints_become_floats_but_not_the_reverse():
    assert from_dict(Inner, {"scale": 2}).scale == 2.0 and isinstance(from_dict(Inner, {"scale": 2}).scale, float)
    with pytest.raises(ConfigError, match=r"^size: expected int, got 2\.0 \(float\)$"):
        from_dict(Inner, {"size": 2.0})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "nmae": 1}, r"nmae: unknown field \(did you mean 'name'\?\)"),
        ({}, r"Outer: missing required field\(s\) name"),
        ({"name": 3}, r"name: expected str, got 3 \(int\)"),
        ({"name": "x", "flag": "yes"}, r"flag: expected bool, got 'yes' \(str\)"),
        ({"name": "x", "flag": 1}, r"flag: expected bool, got 1 \(int\)"),
        ({"name": "x", "mode": "c"}, r"mode: expected one of \['a', 'b'\], got 'c'"),
        ({"name": "x", "pair": "0.5,1"}, r"pair: expected a list"),
        ({"name": "x", "pair": [1.0]}, r"pair: expected a list of 2 values, got 1"),
        ({"name": "x", "sizes": [1, True]}, r"sizes\[1\]: expected int, got True \(bool\)"),
        ({"name": "x", "limit": "5"}, r"limit: expected int, got '5' \(str\)"),
        ({"name": "x", "inner": {"size": "5"}}, r"inner\.size: expected int, got '5'"),
        ({"name": "x", "inner": None}, r"inner: expected a mapping, got null"),
        ({"name": "x", "by_name": {"k": {"typo": 1}}}, r"by_name\.k\.typo: unknown field"),
        ({"name": "x", "tags": [1]}, r"tags\[0\]: expected str, got 1"),
    ],
)
def test_errors_name_the_key_and_the_type(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_where_prefixes_messages_and_literal_keeps_bools_apart():
    with pytest.raises(ConfigError, match=r"^model\.inner\.size: expected int"):
        from_dict(Outer, {"name": "x", "inner": {"size": "1"}}, where="model")

    @dataclass
    class Flags:
        level: Literal[1, 2] = 1

    with pytest.raises(ConfigError, match="expected one of"):
        from_dict(Flags, {"level": True})  # True == 1, but a bool is not the number 1
    assert from_dict(Flags, {"level": 2}).level == 2


def test_post_init_rules_still_apply():
    @dataclass
    class Positive:
        n: int = 1

        def __post_init__(self) -> None:
            if self.n < 1:
                raise ConfigError("n must be >= 1")

    with pytest.raises(ConfigError, match="n must be >= 1"):
        from_dict(Positive, {"n": 0})

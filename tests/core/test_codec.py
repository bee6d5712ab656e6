"""Unit tests of :mod:`aioflow.codec`: how values crossing vertices are stored."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from aioflow.core import codec


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\xff raw \n bytes",
        bytes(range(256)),
    ],
)
def test_raw_bytes_round_trip_and_are_stored_raw(value: bytes) -> None:
    stored = codec.encode(value)
    assert stored == b"b" + value  # one tag byte, then the payload untouched
    out = codec.decode(stored)
    assert out == value
    assert type(out) is bytes


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -7,
        3.25,
        True,
        False,
        "",
        "unicode: héllo ✓ 日本",
        [],
        {},
        [1, "two", None, 4.5],
        {"a": {"b": [1, 2, {"c": None}]}},
    ],
)
def test_json_values_round_trip(value: Any) -> None:
    stored = codec.encode(value)
    assert stored[:1] == b"j"
    assert codec.decode(stored) == value


def test_none_is_encoded_as_json_null() -> None:
    assert codec.encode(None) == b"jnull"
    assert codec.ENCODED_NONE == b"jnull"
    assert codec.decode(b"jnull") is None


def test_empty_stored_value_decodes_to_none() -> None:
    assert codec.decode(b"") is None


def test_bytes_nested_in_json_round_trip() -> None:
    value = {
        "blob": b"\x00\x01\xfe\xff",
        "list": [b"a", {"deep": b"b"}, "text"],
        "empty": b"",
        "n": 1,
    }
    stored = codec.encode(value)
    assert stored[:1] == b"j"
    out = codec.decode(stored)
    assert out == value
    assert type(out["blob"]) is bytes
    assert type(out["list"][1]["deep"]) is bytes


def test_nested_bytes_are_written_as_base64_marker() -> None:
    text = codec.dumps({"x": b"hi"})
    assert orjson.loads(text) == {"x": {"$bytes": "aGk="}}
    assert codec.loads(text) == {"x": b"hi"}
    # str input is accepted as well
    assert codec.loads(text.decode()) == {"x": b"hi"}


def test_marker_lookalikes_stay_data() -> None:
    # a dict with more keys than "$bytes", or a non-string value, is not revived
    value = {"$bytes": "aGk=", "other": 1}
    assert codec.loads(codec.dumps(value)) == value
    odd = {"$bytes": 5}
    assert codec.loads(codec.dumps(odd)) == odd


def test_tuples_and_sets_become_lists() -> None:
    assert codec.decode(codec.encode((1, 2))) == [1, 2]
    assert sorted(codec.decode(codec.encode({3, 1, 2}))) == [1, 2, 3]


def test_non_serialisable_value_raises_type_error() -> None:
    with pytest.raises(TypeError):
        codec.encode(object())


def test_to_json_bytes() -> None:
    assert orjson.loads(codec.to_json_bytes(codec.encode({"a": [1]}))) == {"a": [1]}
    assert orjson.loads(codec.to_json_bytes(codec.encode(b"hi"))) == {"$bytes": "aGk="}
    assert orjson.loads(codec.to_json_bytes(codec.encode(None))) is None


# -- NaN and infinities: JSON has none, orjson would write null ---------------------------


@dataclasses.dataclass
class Reading:
    sensor: str
    values: list[float]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (NAN, "value is nan"),
        (INF, "value is inf"),
        ([1.0, -INF], r"value\[1\] is -inf"),
        ({"a": [1, {"b": NAN}], "c": None}, r"value\['a'\]\[1\]\['b'\] is nan"),
        ((None, (INF,)), r"value\[1\]\[0\] is inf"),
        ({"r": Reading("s1", [0.5, NAN])}, r"value\['r'\]\.values\[1\] is nan"),
        ({"k": {NAN: 1}}, r"a key of value\['k'\] is nan"),
        ({"s": {1.0, INF}}, r"an item of value\['s'\] is inf"),
    ],
)
def test_nan_and_infinity_are_refused_naming_where(value: Any, where: str) -> None:
    with pytest.raises(ValueError, match=f"^{where}, which JSON cannot hold") as info:
        codec.encode(value)
    assert "use None or a string" in str(info.value)
    with pytest.raises(ValueError, match=f"^{where.replace('value', 'body', 1)}"):
        codec.dumps_finite(value, "body")


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"a": None, "b": [None, 1.5, -0.0, 1e308]},
        (None, 2.5),  # read back as a list: walked, nothing found
        {1: None, 2.5: "x"},  # non-string keys: walked too
        {"text": "null, nullable, NaN, Infinity", "n": None},
        Reading("s2", [1.0, 2.0]),
        {"blob": b"null", "x": None},
    ],
)
def test_finite_values_with_nulls_still_encode(value: Any) -> None:
    stored = codec.encode(value)
    assert stored == b"j" + codec.dumps(value)


def test_the_scan_runs_only_when_the_json_holds_a_null(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[Any] = []
    real = codec.check_finite

    def spy(value: Any, what: str = "value") -> None:
        walked.append(value)
        real(value, what)

    monkeypatch.setattr(codec, "check_finite", spy)
    codec.encode({"a": [1, 2.5, "x"], "b": (1, 2)})  # no null: not even read back
    codec.encode({"a": None, "b": [1.5]})  # reads back equal: no walk
    assert walked == []
    codec.encode((1, None))  # reads back as a list: walked
    assert walked == [(1, None)]

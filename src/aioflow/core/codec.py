"""How values crossing vertices are stored.

A value is ``bytes`` (kept raw) or anything orjson serialises. Stored form:
one tag byte, then the payload — ``b`` raw bytes, ``j`` JSON. Bytes nested in
a JSON value travel as ``{"$bytes": "<base64>"}`` and come back as bytes.

JSON has no NaN or Infinity and orjson writes them as ``null``: :func:`encode`
refuses them (ValueError naming where the number is) rather than let a value
change on its way. It looks for them only when the JSON holds a ``null``, so
values without one cost a single scan of their bytes; those with one are read
back and compared (C speed) before anything walks them in Python.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from typing import Any

import orjson

RAW = 0x62  # b"b"
JSON = 0x6A  # b"j"
_MARK = b'"$bytes"'


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"value of type {type(obj).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Serialise a value to JSON, writing bytes as ``{"$bytes": ...}``."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


def _revive(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and "$bytes" in obj and isinstance(obj["$bytes"], str):
            return base64.b64decode(obj["$bytes"])
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_revive(v) for v in obj]
    return obj


def loads(raw: bytes | str) -> Any:
    """Parse JSON written by :func:`dumps`, turning ``{"$bytes": ...}`` back into bytes."""
    obj = orjson.loads(raw)
    if isinstance(raw, str):
        raw = raw.encode()
    if _MARK in raw:
        return _revive(obj)
    return obj


def _non_finite(obj: Any) -> tuple[list[str], float] | None:
    """The first NaN or infinity in ``obj``, with its path (innermost step first)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else ([], obj)
    items: Any
    if isinstance(obj, dict):
        for k in obj:
            if isinstance(k, float) and not math.isfinite(k):
                return ["a key of "], k
        items = ((f"[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, set | frozenset):
        items = (("an item of ", v) for v in obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = ((f".{f.name}", getattr(obj, f.name)) for f in dataclasses.fields(obj))
    else:
        return None
    for step, v in items:
        found = _non_finite(v)
        if found is not None:
            found[0].append(step)
            return found
    return None


def check_finite(value: Any, what: str = "value") -> None:
    """Raise ValueError naming the first NaN or infinity inside ``value``
    (``what`` names the value itself)."""
    found = _non_finite(value)
    if found is not None:
        steps, number = found
        path = what
        for step in reversed(steps):  # outermost first; "... of " steps name a whole
            path = step + path if step.endswith(" of ") else path + step
        raise ValueError(
            f"{path} is {number!r}, which JSON cannot hold "
            "(it would be stored as null): use None or a string instead"
        )


def dumps_finite(value: Any, what: str = "value") -> bytes:
    """:func:`dumps`, refusing a NaN or infinity inside ``value`` with a ValueError
    that names where it is (``what`` names the value itself)."""
    payload = dumps(value)
    # NaN and infinities are written as null; when the JSON reads back equal to the
    # value they were not there (a value JSON reshapes, a tuple, is walked instead).
    # find, not `in`: bytes.__contains__ tries the needle as an int first, 2x slower
    if payload.find(b"null") != -1 and orjson.loads(payload) != value:
        check_finite(value, what)
    return payload


def encode(value: Any, what: str = "value") -> bytes:
    """The stored form of ``value``. Raises ValueError for a NaN or infinity inside
    it (``what`` names the value in the message) and TypeError for what orjson
    cannot serialise."""
    if isinstance(value, bytes):
        return b"b" + value
    return b"j" + dumps_finite(value, what)


def decode(stored: bytes) -> Any:
    if not stored:
        return None
    if stored[0] == RAW:
        return stored[1:]
    return loads(stored[1:])


def to_json_bytes(stored: bytes) -> bytes:
    """The JSON text of a stored value (bytes become ``{"$bytes": ...}``)."""
    if stored and stored[0] == JSON:
        return stored[1:]
    return dumps(decode(stored))


ENCODED_NONE = encode(None)

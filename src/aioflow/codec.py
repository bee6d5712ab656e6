"""How values crossing vertices are stored.

A value is ``bytes`` (kept raw) or anything orjson serialises. Stored form:
one tag byte, then the payload — ``b`` raw bytes, ``j`` JSON. Bytes nested in
a JSON value travel as ``{"$bytes": "<base64>"}`` and come back as bytes.
"""

from __future__ import annotations

import base64
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


def encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"b" + value
    return b"j" + dumps(value)


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

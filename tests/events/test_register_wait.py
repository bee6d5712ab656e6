"""The waiters' side of events: register_wait and forget_wait (on one Redis and a
Cluster), against events kept by ev_send."""

from __future__ import annotations

import pytest

from aioflow.core.errors import InvalidRunId
from aioflow.engine.events import forget_wait, register_wait
from aioflow.store import keys
from aioflow.store.topology import Backend

REF = keys.waiter_ref("af:{kyc:0}:q", "run1", "manual-review")
T0 = 1_800_000_000_000  # epoch ms


async def _keep(backend: Backend, name: str, key: str, at_ms: int, eid: str, data: bytes) -> None:
    await backend.redis.xadd(keys.event_stream(name, key), {"i": eid, "d": data}, id=f"{at_ms}-0")


async def test_register_records_the_waiter_with_its_deadline(backend: Backend) -> None:
    got = await register_wait(backend.fast, "kyc.reviewed", "user-42", REF, T0 + 5000, T0)
    assert got is None
    waiters = await backend.redis.hgetall("af:{ev:kyc.reviewed}:w:user-42")
    assert waiters == {REF.encode(): str(T0 + 5000).encode()}
    assert await backend.redis.pttl("af:{ev:kyc.reviewed}:w:user-42") > 0  # bounded
    await forget_wait(backend.fast, "kyc.reviewed", "user-42", REF)
    assert not await backend.redis.exists("af:{ev:kyc.reviewed}:w:user-42")


async def test_a_kept_event_sent_since_answers_at_once(backend: Backend) -> None:
    await _keep(backend, "kyc.reviewed", "user-42", T0 - 10, "old", b"jold")
    await _keep(backend, "kyc.reviewed", "user-42", T0 + 10, "new", b"jnew")
    await _keep(backend, "kyc.reviewed", "user-7", T0 + 20, "other", b"jother")
    got = await register_wait(backend.fast, "kyc.reviewed", "user-42", REF, 0, T0)
    assert got == ("new", b"jnew")
    # answered: not recorded as a waiter
    assert not await backend.redis.exists("af:{ev:kyc.reviewed}:w:user-42")
    # an event before since does not count (a new run of the same key), nor another key's
    assert await register_wait(backend.fast, "kyc.reviewed", "user-42", REF, 0, T0 + 11) is None
    assert await register_wait(backend.fast, "kyc.reviewed", "user-9", REF, 0, 0) is None
    # since < 0: do not look at kept events at all
    assert await register_wait(backend.fast, "kyc.reviewed", "user-7", REF, 0, -1) is None


async def test_names_and_keys_are_validated(backend: Backend) -> None:
    for name in ("", "Upper", "a b", "x" * 65, "a}b", ".dot"):
        with pytest.raises(InvalidRunId):
            await register_wait(backend.fast, name, "k", REF, 0, 0)
    for key in ("a\nb", "x" * 257, "\x00"):
        with pytest.raises(InvalidRunId):
            await register_wait(backend.fast, "ok.name", key, REF, 0, 0)
    # any other key, braces included, stays on the event's own keys
    assert await register_wait(backend.fast, "ok.name", "a}:b{c}", REF, 0, 0) is None
    assert await backend.redis.hexists("af:{ev:ok.name}:w:a}:b{c}", REF)

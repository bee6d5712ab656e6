"""Sending events at the engine level (on one Redis and a Cluster): kept events,
waiters resolved once per event and only of their key, idempotent ids, triggered
runs, limits and names. The run side of a resolution (steering.resolve_wait) is
recorded here; tests/events/test_waits_e2e.py runs flows that wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aioflow
from aioflow.core import codec
from aioflow.core.clock import FakeClock
from aioflow.core.errors import InvalidRunId, LimitExceeded
from aioflow.engine import events, steering
from aioflow.engine.engine import Engine, register
from aioflow.engine.events import register_wait
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend

Resolved = list[tuple[str, str, str, bytes]]


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> Resolved:
    """Every resolve_wait call (stream, uid, addr, data); each answers True."""
    calls: Resolved = []

    async def resolve_wait(
        fast: Any, stream: str, uid: str, addr: str, data: bytes, now: float
    ) -> bool:
        calls.append((stream, uid, addr, data))
        return True

    monkeypatch.setattr(steering, "resolve_wait", resolve_wait, raising=False)
    return calls


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[Engine]:
    e = Engine(backend.given, backend=backend, clock=FakeClock(), max_value=1000)
    try:
        yield e
    finally:
        await e.close()


def ref(uid: str, addr: str = "review") -> str:
    return keys.waiter_ref("af:{kyc:0}:q", uid, addr)


def ms(engine: Engine) -> int:
    return int(engine.clock() * 1000)


async def test_an_event_sent_after_the_run_began_counts_at_its_wait(
    engine: Engine, resolved: Resolved
) -> None:
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    await engine.send_event("kyc.reviewed", {"n": 0}, key="u1", event_id="before")
    clock.advance(1)
    created = ms(engine)  # the run is created now ...
    clock.advance(1)
    ans = await engine.send_event("kyc.reviewed", {"n": 1}, key="u1", event_id="after")
    assert ans == {"resolved": 0, "started": []}  # ... and has not reached its wait
    clock.advance(1)
    await engine.send_event("kyc.reviewed", {"n": 2}, key="u1", event_id="later")
    got = await register_wait(engine.fast, "kyc.reviewed", "u1", ref("r1"), 0, created)
    assert got is not None
    assert got[0] == "after"
    assert codec.decode(got[1]) == {"n": 1}  # the first since it began, not the one before
    assert resolved == []


async def test_one_event_resolves_each_waiter_of_its_key_once(
    engine: Engine, backend: Backend, resolved: Resolved
) -> None:
    for uid in ("r1", "r2", "r3"):
        assert await register_wait(engine.fast, "kyc.reviewed", "u1", ref(uid), 0, -1) is None
    await register_wait(engine.fast, "kyc.reviewed", "u2", ref("other"), 0, -1)
    ans = await engine.send_event("kyc.reviewed", {"ok": True}, key="u1", event_id="e1")
    assert ans == {"resolved": 3, "started": []}
    assert sorted(uid for _, uid, _, _ in resolved) == ["r1", "r2", "r3"]
    assert all(codec.decode(d) == {"ok": True} for *_, d in resolved)
    # delivered waiters are forgotten, the other key's is untouched
    assert not await backend.redis.exists("af:{ev:kyc.reviewed}:w:u1")
    assert await backend.redis.hexists("af:{ev:kyc.reviewed}:w:u2", ref("other"))
    # the same id again (a retried webhook): the first answer, nothing applied twice
    again = await engine.send_event("kyc.reviewed", {"ok": False}, key="u1", event_id="e1")
    assert again == ans
    assert len(resolved) == 3
    assert await backend.redis.xlen("af:{ev:kyc.reviewed}:s:u1") == 1
    # a new event of the key resolves nobody: its waiters were resolved
    assert (await engine.send_event("kyc.reviewed", 1, key="u1"))["resolved"] == 0
    assert await backend.redis.zcard("af:{ev:kyc.reviewed}:f") == 0  # no fan-out left


async def test_limits_and_names(engine: Engine, backend: Backend) -> None:
    with pytest.raises(LimitExceeded, match="max_value=1000"):
        await engine.send_event("kyc.reviewed", "x" * 2000, key="u1")
    assert not await backend.redis.exists("af:{ev:kyc.reviewed}:s:u1")  # nothing kept
    for bad in ("", "Kyc", "a/b", "x" * 65, "{x}"):
        with pytest.raises(InvalidRunId, match="event name"):
            await engine.send_event(bad, 1)
    with pytest.raises(InvalidRunId, match="event key"):
        await engine.send_event("kyc.reviewed", 1, key="a\nb")
    for bad in ("a.b", "", "x" * 61, "a b"):
        with pytest.raises(InvalidRunId, match="event id"):
            await engine.send_event("kyc.reviewed", 1, event_id=bad)
    assert not await backend.redis.exists("af:{ev:kyc.reviewed}:id:a")


def signup_flows() -> list[aioflow.Flow]:
    out = []
    for name in ("welcome", "audit"):
        flow = aioflow.Flow(name, on_event="user.created")

        @flow.node
        async def start(data: Any) -> Any:
            return data

        out.append(flow)
    return out


async def test_on_event_starts_one_run_per_event_and_flow_whatever_the_senders(
    backend: Backend, resolved: Resolved
) -> None:
    flows = signup_flows()
    await register(backend.redis, flows, fast=backend.fast)
    triggers = keys.event_triggers("user.created")
    assert set(await backend.redis.zrange(triggers, 0, -1)) == {b"welcome", b"audit"}
    assert await backend.redis.pttl(triggers) > 0  # bounded: refreshed while served
    # a flow whose registration is gone: skipped, the others still start
    await backend.redis.zadd(keys.event_triggers("user.created"), {"ghost": 1.0})
    senders = [Engine(backend.given, backend=backend) for _ in range(4)]
    try:
        answers = await asyncio.gather(
            *(s.send_event("user.created", {"id": 7}, key="u7", event_id="sg-1") for s in senders)
        )
        started = {r for a in answers for r in a["started"]}
        assert len(started) == 2  # one per flow, however many senders
        assert {keys.RunId.parse(r).flow for r in started} == {"welcome", "audit"}
        for a in answers:
            assert sorted(a["started"]) == sorted(started)
        for flow in ("welcome", "audit"):
            runs, _ = await senders[0].runs(flow)
            assert len(runs) == 1
            state = await senders[0].state(runs[0].run_id)
            assert state.options["event_id"] == ["sg-1"]
            assert state.options["event_key"] == ["u7"]
            assert state.options["event"] == ["user.created"]
        # another event: another run each
        other = await senders[0].send_event("user.created", {"id": 8}, key="u8", event_id="sg-2")
        assert len(set(other["started"]) - started) == 2
    finally:
        for s in senders:
            await s.close()


async def test_a_fan_out_left_by_a_dead_sender_is_finished_by_another(
    engine: Engine, backend: Backend, resolved: Resolved
) -> None:
    flows = signup_flows()
    await register(backend.redis, flows, fast=backend.fast)
    await register_wait(engine.fast, "user.created", "u9", ref("w1"), 0, -1)
    # the sender keeps the event (step 1) and dies before delivering it
    await SCRIPTS.call(
        engine.fast,
        "ev_send",
        keys.event_stream("user.created", "u9"),
        "s",
        "u9",
        "dead-1",
        codec.encode({"id": 9}),
        ms(engine),
        86_400_000,
        30_000,
    )
    assert await events.redo_due(engine, ["user.created"]) == 0  # not due yet: it may live
    assert resolved == []
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    clock.advance(events.REDO_AFTER + 1)
    assert await events.redo_due(engine, ["user.created"]) == 1
    assert [uid for _, uid, _, _ in resolved] == ["w1"]
    for flow in ("welcome", "audit"):
        runs, _ = await engine.runs(flow)
        assert [keys.RunId.parse(r.run_id).key for r in runs] == ["ev-dead-1"]
    assert await events.redo_due(engine, ["user.created"]) == 0  # done: once
    # a late resend of the id answers what the redo did
    ans = await engine.send_event("user.created", {"id": 9}, key="u9", event_id="dead-1")
    assert ans["resolved"] == 1
    assert len(ans["started"]) == 2
    assert len(resolved) == 1

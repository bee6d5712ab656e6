"""Waits across a run's lifecycle: stop, pause, retry of a failed run, a busy
worker, a worker killed while runs sleep."""

from __future__ import annotations

import asyncio
import signal as signals
from pathlib import Path
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, eventually
from tests.engine_helpers import running
from tests.helpers import wait_until
from tests.procs import Procs, clean_env
from tests.waits import flows
from tests.waits.signals import signal

FLOWS_APP = f"{Path(flows.__file__).resolve()}:app"


async def _status(client: aioflow.Client, run_id: str, addr: str) -> str | None:
    v = (await client.state(run_id)).vertices.get(addr)
    return v.status.value if v is not None else None


async def _waiting(client: aioflow.Client, run_id: str, addr: str) -> bool:
    return await _status(client, run_id, addr) == "waiting"


async def test_stop_ends_waits_and_sleeps(any_redis_url: str) -> None:
    async with running([flows.review, flows.sleepy], any_redis_url, concurrency=2) as s:
        waiting = await s.client.submit("review", {"user": "u"})
        sleeping = await s.client.submit("sleepy", 1)
        await wait_until(lambda: _waiting(s.client, waiting, "manual"), what="waiting")
        await wait_until(lambda: _waiting(s.client, sleeping, "long"), what="sleeping")
        for rid, addr in ((waiting, "manual"), (sleeping, "long")):
            await s.client.stop(rid)
            state = await s.client.state(rid)
            assert state.status == "stopped"
            assert state.vertices[addr].status == "cancelled"
            assert state.vertices[addr].deadline is None
        assert await signal(s.client, waiting, "manual", 1) is False


async def test_pause_holds_a_signal_until_resume(redis_url: str) -> None:
    async with running([flows.review], redis_url, concurrency=2) as s:
        rid = await s.client.submit("review", {"user": "u"})
        await wait_until(lambda: _waiting(s.client, rid, "manual"), what="waiting")
        await s.client.pause(rid)
        assert await signal(s.client, rid, "manual", {"approved": True}) is True
        with pytest.raises(aioflow.ResultTimeout):  # held while paused
            await s.client.result(rid, timeout=0.5)
        state = await s.client.state(rid)
        assert (state.status, state.vertices["manual"].status) == ("paused", "waiting")
        await s.client.resume(rid)
        assert await s.client.result(rid, timeout=10) == {"approved": True}


async def test_retry_of_a_failed_run_keeps_resolved_waits(redis_url: str) -> None:
    fragile = aioflow.Flow("fragile-after-wait")
    fragile.wait("answer")
    seen: list[Any] = []

    @fragile.node(after="answer")
    async def use(data: Any) -> Any:
        seen.append(data)
        if len(seen) == 1:
            raise RuntimeError("first time fails")
        return data

    async with running([fragile], redis_url, concurrency=2) as s:
        rid = await s.client.submit("fragile-after-wait", None)
        await wait_until(lambda: _waiting(s.client, rid, "answer"), what="waiting")
        assert await signal(s.client, rid, "answer", "yes") is True
        with pytest.raises(aioflow.RunFailed):
            await s.client.result(rid, timeout=10)
        await s.client.engine.retry(rid)
        assert await s.client.result(rid, timeout=10) == "yes"  # no second signal needed
        assert seen == ["yes", "yes"]
        answer = (await s.client.state(rid)).vertices["answer"]
        assert (answer.status, answer.attempts) == ("completed", 1)


async def test_retry_after_a_timeout_waits_again(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    """The retried wait counts its attempts from 1 again: the gate of the first
    run's attempt 1 (taken by its timer) must not shut out the new signal."""
    await aioflow_worker(flows.review)
    rid = await aioflow_client.submit("review", {"user": "u"})
    await eventually(lambda: _waiting(aioflow_client, rid, "manual"), what="waiting")
    aioflow_clock.advance(60)
    with pytest.raises(aioflow.RunFailed):
        await aioflow_client.result(rid, timeout=5)
    await aioflow_client.engine.retry(rid)
    await eventually(lambda: _waiting(aioflow_client, rid, "manual"), what="waiting again")
    assert await signal(aioflow_client, rid, "manual", {"approved": True}) is True
    assert await aioflow_client.result(rid, timeout=5) == {"approved": True}


async def test_500_waiting_and_sleeping_runs_hold_no_slot(any_redis_url: str) -> None:
    n = 250
    async with running(
        [flows.review, flows.sleepy, flows.quick], any_redis_url, concurrency=2
    ) as s:
        waits = await s.client.submit_many("review", [{"user": f"u{i}"} for i in range(n)])
        sleeps = await s.client.submit_many("sleepy", list(range(n)))
        worker = s.workers[0]

        async def all_waiting() -> bool:
            states = await asyncio.gather(
                *(s.client.state(r) for r in [*waits[:: n // 10], *sleeps[:: n // 10]])
            )
            return (
                all(any(v.status == "waiting" for v in st.vertices.values()) for st in states)
                and worker.completed >= 3 * n
            )

        await wait_until(all_waiting, timeout=60, what="500 runs waiting")
        assert len(worker._inflight) == 0  # nothing holds a slot
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        quick = await s.client.submit_many("quick", list(range(100)))
        results = [await s.client.result(r, timeout=20) for r in quick]
        assert results == [2 * i for i in range(100)]
        assert loop.time() - t0 < 20
        # and the waits still resolve
        assert await signal(s.client, waits[0], "manual", {"approved": True}) is True
        assert await s.client.result(waits[0], timeout=10) == {"approved": True}


def _worker(procs: Procs, name: str, url: str) -> Any:
    return procs.aioflow(
        name,
        "worker",
        FLOWS_APP,
        "--redis-url",
        url,
        "--concurrency",
        "4",
        "--visibility-timeout",
        "1",
        env=clean_env(),
    )


async def test_sigkilled_worker_with_sleeping_runs_loses_nothing(
    redis_url: str, procs: Procs
) -> None:
    n = 200
    w1 = _worker(procs, "w1", redis_url)
    async with aioflow.Client(redis_url) as client:
        await wait_until(lambda: "concurrency" in procs.output("w1"), timeout=20, what="w1 started")
        rids = await client.submit_many("short-sleep", list(range(n)))

        async def sleeping() -> bool:  # every run's sleep started (its message acked)
            states = [await client.state(r) for r in rids]
            return all(
                st.vertices.get("short") is not None
                and st.vertices["short"].status in ("waiting", "completed")
                for st in states
            )

        await wait_until(sleeping, timeout=20, what="runs sleeping")
        w1.send_signal(signals.SIGKILL)
        assert w1.wait(timeout=10) == -signals.SIGKILL
        _worker(procs, "w2", redis_url)
        results = await asyncio.gather(*(client.result(r, timeout=30) for r in rids))
        assert results == list(range(n))
        for r in rids:
            st = await client.state(r)
            assert st.vertices["short"].attempts == 1
            assert st.vertices["up"].status == "completed"

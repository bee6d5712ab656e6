"""Network faults between aioflow and Redis, through the fault proxy (tests/faultproxy.py).

A link that stalls without a reset (a partition, a stuck NAT or load balancer, a
failover to a new address) must cost seconds: every Redis call has a deadline
(``redis_timeout``; a blocking read its BLOCK plus a grace), a connection that misses
one is replaced, a client or gateway call ends in :class:`aioflow.RedisUnavailable`
/ 503, and a worker that could not renew a node's lease for longer than the
visibility timeout cancels that node (``lease_lost``). The runs of every test are
submitted straight to Redis, never through the proxy, so only the faulty side is
tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

import aioflow
from aioflow.app import connect
from aioflow.store import keys
from aioflow.store.redis_server import free_port
from tests.chaos import apps
from tests.chaos.harness import (
    APP,
    DoneCounter,
    Workers,
    audit_diamond,
    entries_added,
    pel_count,
    pel_empty,
)
from tests.faultproxy import FaultProxy
from tests.helpers import wait_until
from tests.procs import Procs, clean_env

RT = 1.0  # redis_timeout of whatever sits behind the proxy
BLOCK_GRACE = 1.0 + 3.0  # a blocking read's BLOCK (1 s) and the grace its reply gets
# a stalled connection is noticed and replaced within one deadline, plus backoff
NOTICED = BLOCK_GRACE + RT + 3.0
# a worker serves again within this of its link healing
SERVES_AGAIN = NOTICED + 4.0
# a message Redis handed to a read whose reply was lost with the stalled link is
# started again once idle past any read's deadline (+1 s), at the next housekeeping
# pass (every 5 s at most), a few stalled calls later: well before the visibility timeout
RECOVERS = BLOCK_GRACE + 1.0 + 5.0 + 3 * RT + 2.0
# a client or gateway call on a partitioned link ends within this, whatever its own
# timeout= says: an idempotent call retries through what may be a failover (for two
# deadlines), its last attempt within a deadline, a connection within its connect
# timeout (5 s)
CALL_BOUND = 2 * RT + 2 * RT + 5.0 + 1.0
VT_LONG = 60.0  # a visibility timeout no recovery in these tests may rely on
GUARD = 90.0  # the tests' own guard: nothing here may hang


def _redis_env(**extra: str) -> dict[str, str]:
    return {"AIOFLOW_REDIS_TIMEOUT": str(RT), **extra}


async def _pending(r: aioredis.Redis, flow: str) -> list[tuple[str, float, int]]:
    """(consumer, seconds since delivered, deliveries) of each entry not acked."""
    rows: Any = await r.xpending_range(keys.stream(flow, 0), keys.GROUP, "-", "+", 1000)
    return [
        (row["consumer"].decode(), row["time_since_delivered"] / 1000, row["times_delivered"])
        for row in rows
    ]


async def _until(
    r: aioredis.Redis, cond: Any, *, timeout: float, what: str, flow: str = "diamond"
) -> None:
    """wait_until, whose failure also tells what was left pending and to whom."""
    try:
        await wait_until(cond, timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(
            f"{e}; pending (consumer, idle s, deliveries): {await _pending(r, flow)}"
        ) from None


async def _blocked_read(r: aioredis.Redis) -> bool:
    """Whether a client is blocked in XREADGROUP at Redis now."""
    return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in await r.client_list())


def _start(workers: Workers, proxy: FaultProxy, redis_url: str, sleep: str) -> Any:
    return workers.start(
        proxy.url,
        concurrency=20,
        visibility_timeout=VT_LONG,
        env=_redis_env(CHAOS_SLEEP=sleep),
        counter_url=redis_url,  # the nodes count their executions straight in Redis
    )


# -- a worker process behind a stalled link ---------------------------------------------


async def test_busy_worker_serves_again_after_partition_heals(
    redis_url: str, redis: aioredis.Redis, workers: Workers
) -> None:
    """The headline: a worker process in the middle of traffic loses its link (no reset;
    the connections it opens meanwhile stall too). Once new connections get through,
    every run, those in flight and those submitted during the partition, completes
    within seconds: not after a visibility timeout, not never."""
    async with asyncio.timeout(GUARD), FaultProxy.to(redis_url) as proxy:
        w = _start(workers, proxy, redis_url, "0.3")
        await w.ready()
        async with (
            aioflow.Client(redis_url) as client,
            DoneCounter(redis_url, "diamond") as done,
        ):
            inputs: dict[str, int] = {}
            for i in range(20):
                inputs[await client.submit("diamond", i)] = i
            await wait_until(lambda: done.finished >= 1, timeout=10, what="the first runs")

            proxy.partition()
            assert proxy.stalled >= 2, "the worker's connections were open"
            for i in range(20, 40):  # straight to Redis: the worker has to read them
                inputs[await client.submit("diamond", i)] = i
            accepted = proxy.accepted
            await wait_until(
                lambda: proxy.accepted > accepted,
                timeout=NOTICED,
                what="the worker to give up its stalled connections and open new ones",
            )
            assert done.finished < len(inputs)

            proxy.heal(flush=False)  # the stalled connections stay dead: only new ones work
            healed = time.monotonic()
            await _until(
                redis,
                lambda: done.finished >= len(inputs),
                timeout=RECOVERS,
                what=f"every run to finish within {RECOVERS:g} s of the heal",
            )
            assert time.monotonic() - healed < RECOVERS < VT_LONG
            results = await asyncio.gather(*(client.result(rid, timeout=5) for rid in inputs))
            assert results == [apps.diamond_result(x) for x in inputs.values()]
            assert done.repeated() == {}
            assert w.running

        await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")
        rep = await audit_diamond(redis, inputs)
        assert (rep.completed, rep.lost, rep.over_joined) == (len(inputs), [], []), rep
        assert (rep.extra_entries, rep.dlq, rep.pel) == (0, 0, 0), rep


async def test_idle_worker_reads_again_after_partition_heals(
    redis_url: str, redis: aioredis.Redis, workers: Workers
) -> None:
    """A worker idle in its blocking read when the link stalls (its connections then stay
    dead: the link was replaced) reads again within seconds, with nothing to wake it."""
    async with asyncio.timeout(GUARD), FaultProxy.to(redis_url) as proxy:
        w = _start(workers, proxy, redis_url, "0")
        await w.ready()
        async with aioflow.Client(redis_url) as client:
            # it reads: one run through, then nothing until the stall
            assert await client.execute("diamond", 1, timeout=10) == apps.diamond_result(1)
            proxy.partition()
            accepted = proxy.accepted
            await wait_until(
                lambda: proxy.accepted > accepted,
                timeout=NOTICED,
                what="the idle worker to notice its stalled read and reconnect",
            )
            proxy.heal(flush=False)
            healed = time.monotonic()
            ids = [await client.submit("diamond", i) for i in range(10)]
            await _until(
                redis,
                lambda: _all_done(client, ids),
                timeout=SERVES_AGAIN,
                what=f"the runs to finish within {SERVES_AGAIN:g} s of the heal",
            )
            assert time.monotonic() - healed < SERVES_AGAIN
            results = await asyncio.gather(*(client.result(rid, timeout=5) for rid in ids))
            assert results == [apps.diamond_result(i) for i in range(10)]
            assert w.running
        await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")


async def _all_done(client: aioflow.Client, ids: list[str]) -> bool:
    states = await asyncio.gather(*(client.state(rid) for rid in ids))
    return all(s.status is aioflow.Status.COMPLETED for s in states)


async def test_read_answered_into_a_stalled_link_is_not_lost(
    redis_url: str, redis: aioredis.Redis, workers: Workers
) -> None:
    """The link stalls while the idle worker's blocking read waits at Redis; a run
    submitted then is handed by Redis to that read, whose reply never arrives. The
    entry is pending to the worker, which never saw it: it must not wait for the
    visibility timeout (here a minute) to run it."""
    async with asyncio.timeout(GUARD), FaultProxy.to(redis_url) as proxy:
        w = _start(workers, proxy, redis_url, "0")
        await w.ready()
        async with aioflow.Client(redis_url) as client:
            assert await client.execute("diamond", 1, timeout=10) == apps.diamond_result(1)
            # partition while a read is blocked at Redis (sent before the stall)
            for _ in range(10):
                await wait_until(
                    lambda: _blocked_read(redis), timeout=5, what="the worker's blocking read"
                )
                proxy.partition()
                if await _blocked_read(redis):
                    break
                proxy.heal(flush=True)  # its read was between two BLOCKs: again
            else:
                raise AssertionError("could not stall the link during a blocking read")
            rid = await client.submit("diamond", 2)
            await wait_until(
                lambda: _delivered(redis),
                timeout=2,
                what="Redis to hand the run to the stalled read",
            )
            accepted = proxy.accepted
            await wait_until(
                lambda: proxy.accepted > accepted,
                timeout=NOTICED,
                what="the worker to notice its stalled read and reconnect",
            )
            proxy.heal(flush=False)  # the reply that carried the entry is gone for good
            healed = time.monotonic()
            await _until(
                redis,
                lambda: _all_done(client, [rid]),
                timeout=RECOVERS,
                what=f"the run whose delivery was lost to finish within {RECOVERS:g} s",
            )
            assert time.monotonic() - healed < RECOVERS < VT_LONG
            assert await client.result(rid, timeout=5) == apps.diamond_result(2)
            assert w.running
        await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")


async def _delivered(r: aioredis.Redis) -> bool:
    return await pel_count(r, "diamond") >= 1


async def test_idle_worker_whose_links_die_for_good_reads_on_new_ones(
    redis_url: str, redis: aioredis.Redis, workers: Workers
) -> None:
    """Failover to a new address: the worker's open connections go silent forever while
    new ones work at once. It serves on new connections within seconds."""
    async with asyncio.timeout(GUARD), FaultProxy.to(redis_url) as proxy:
        w = _start(workers, proxy, redis_url, "0")
        await w.ready()
        async with aioflow.Client(redis_url) as client:
            assert await client.execute("diamond", 1, timeout=10) == apps.diamond_result(1)
            accepted = proxy.accepted
            assert proxy.stall() >= 2
            proxy.heal(flush=False)  # every link open now is dead; new ones forward
            stalled = time.monotonic()
            await wait_until(
                lambda: proxy.accepted > accepted,
                timeout=NOTICED,
                what="the worker to move to new connections",
            )
            ids = [await client.submit("diamond", i) for i in range(10)]
            await _until(
                redis,
                lambda: _all_done(client, ids),
                timeout=SERVES_AGAIN,
                what=f"the runs to finish within {SERVES_AGAIN:g} s of the stall",
            )
            assert time.monotonic() - stalled < SERVES_AGAIN
            results = await asyncio.gather(*(client.result(rid, timeout=5) for rid in ids))
            assert results == [apps.diamond_result(i) for i in range(10)]
            assert w.running


# -- a client on a stalled link -----------------------------------------------------------


def _echo_flow() -> aioflow.Flow:
    flow = aioflow.Flow("echo")

    @flow.node
    async def show(x: Any) -> Any:
        return x

    return flow


async def _timed(call: Awaitable[Any]) -> tuple[float, BaseException | Any]:
    t0 = time.monotonic()
    try:
        out: Any = await call
    except Exception as e:
        out = e
    return time.monotonic() - t0, out


async def test_client_calls_on_partitioned_link_fail_in_bounded_time(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``submit``, ``result(timeout=)`` and ``execute(timeout=)`` through a link that
    stalls (old and new connections alike) raise RedisUnavailable within a bound,
    before their own ``timeout=``; once the link heals the same client works again.
    No worker runs here: the runs never finish."""
    monkeypatch.setenv("AIOFLOW_REDIS_TIMEOUT", str(RT))
    flow = _echo_flow()
    async with (
        asyncio.timeout(GUARD),
        FaultProxy.to(redis_url) as proxy,
        aioflow.Client(redis_url) as direct,
        aioflow.Client(proxy.url) as client,
    ):
        pending = await direct.submit(flow, {"n": 0})  # registers the flow
        await client.state(pending)  # the client's connections are open and working
        await client.submit("echo", {"n": 1})
        proxy.partition()

        own_timeout = CALL_BOUND + 20
        calls = {
            "submit": client.submit("echo", {"n": 2}),
            "result": client.result(pending, timeout=own_timeout),
            "execute": client.execute("echo", {"n": 3}, timeout=own_timeout),
        }
        outcomes = dict(
            zip(calls, await asyncio.gather(*(_timed(c) for c in calls.values())), strict=True)
        )
        for name, (took, out) in outcomes.items():
            assert isinstance(out, aioflow.RedisUnavailable), (name, took, out)
            assert took < CALL_BOUND, f"{name} took {took:.1f} s on a partitioned link"

        proxy.heal(flush=False)
        rid = await client.submit("echo", {"n": 4})
        assert (await client.state(rid)).status is aioflow.Status.PENDING


# -- a gateway on a stalled link ----------------------------------------------------------


async def test_gateway_on_partitioned_link_answers_503(redis_url: str, procs: Procs) -> None:
    """``aioflow serve`` whose Redis link stalls answers 503 JSON within a bound, for a
    new run (with and without ``?wait=``) and for a run's state, instead of holding
    the request; once the link heals it serves again."""
    async with asyncio.timeout(GUARD), FaultProxy.to(redis_url) as proxy:
        port = free_port()
        procs.aioflow(
            "gateway",
            "serve",
            APP,
            "--redis-url",
            proxy.url,
            "--port",
            str(port),
            env=clean_env(_redis_env(PYTHONUNBUFFERED="1")),
        )
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as http:

            async def up() -> bool:
                procs.check_alive()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/flows") as resp:
                        return resp.status == 200 and "diamond" in await resp.text()
                return False

            await wait_until(up, timeout=20, what="the gateway to serve its flows")
            async with http.post(f"{base}/flow/diamond", json=1) as resp:
                assert resp.status == 202, await resp.text()
                rid = (await resp.json())["run_id"]
            async with http.get(f"{base}/flow/diamond/run/{rid}") as resp:
                assert resp.status == 200, await resp.text()

            proxy.partition()

            async def ask(method: str, path: str) -> tuple[int, Any]:
                async with http.request(method, base + path, json=2) as resp:
                    return resp.status, await resp.json()

            requests = [
                ("POST", "/flow/diamond"),
                ("POST", f"/flow/diamond?wait={CALL_BOUND + 20:g}"),
                ("GET", f"/flow/diamond/run/{rid}"),
            ]
            answers = await asyncio.gather(*(_timed(ask(m, p)) for m, p in requests))
            for (method, path), (took, out) in zip(requests, answers, strict=True):
                assert not isinstance(out, BaseException), (method, path, out)
                status, body = out
                assert (status, body.get("error")) == (503, "redis_unavailable"), (path, body)
                assert took < CALL_BOUND, f"{method} {path} took {took:.1f} s"

            proxy.heal(flush=False)
            async with http.post(f"{base}/flow/diamond", json=3) as resp:
                assert resp.status == 202, await resp.text()
        procs.check_alive()


# -- lease lost ---------------------------------------------------------------------------

VT = 2.0  # visibility timeout of the lease tests
# a lease counts as lost by VT after its last renewal; the worker notices within a
# renewal period and a few stalled calls
LEASE_SLACK = 4 * RT + 3.0
LEASE_LOST_METRIC = "lease_lost"


class Slow:
    """A flow ``lease``: ``slow`` (records each start and how it ended) -> ``child``."""

    def __init__(self, first_takes: float) -> None:
        self.first_takes = first_takes
        self.calls: list[str] = []  # per start of ``slow``: started, finished, cancelled
        self.children: list[int] = []
        self.flow = aioflow.Flow("lease")

        @self.flow.node
        async def slow(x: int) -> int:
            i = len(self.calls)
            self.calls.append("started")
            try:
                await asyncio.sleep(self.first_takes if i == 0 else 0.05)
            except asyncio.CancelledError:
                self.calls[i] = "cancelled"
                raise
            self.calls[i] = "finished"
            return x * 2

        @self.flow.node(after=slow)
        async def child(x: int) -> int:
            self.children.append(x)
            return x + 1


@contextlib.asynccontextmanager
async def _worker(
    flows: Sequence[aioflow.Flow], url: str, *, proxy: FaultProxy | None = None
) -> AsyncIterator[aioflow.Worker]:
    """An in-process worker on ``url`` (a proxy's or Redis' own) with small timeouts."""
    settings = aioflow.Settings(
        redis_url=url, concurrency=5, visibility_timeout=VT, redis_timeout=RT, grace=1.0
    )
    redis = connect(url, timeout=RT)
    w = aioflow.Worker(flows, redis, settings=settings)
    task: asyncio.Task[None] | None = None
    try:
        await w.prepare()
        task = asyncio.create_task(w.run())
        yield w
    finally:
        if proxy is not None:  # a worker deaf to its link must still be able to stop
            proxy.heal(flush=False)
            proxy.reset(only_stalled=True)
        w.stop()
        if task is not None:
            await asyncio.wait_for(task, 30)
        await redis.aclose()


async def test_lease_lost_cancels_the_node_and_the_run_completes_once(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A worker running a long node loses its link for longer than the visibility
    timeout: another worker reclaims the node and completes the run; the first one,
    unable to renew the lease, cancels its copy (``lease_lost``) without waiting for
    Redis, and after the heal changes nothing: the run completed exactly once."""
    slow = Slow(first_takes=GUARD)  # w1's copy would never end by itself
    async with (
        asyncio.timeout(GUARD),
        FaultProxy.to(redis_url) as proxy,
        aioflow.Client(redis_url) as client,
        DoneCounter(redis_url, "lease") as done,
        _worker([slow.flow], proxy.url, proxy=proxy) as w1,
    ):
        rid = await client.submit("lease", 5)
        await wait_until(lambda: slow.calls == ["started"], timeout=10, what="w1 to start slow")
        proxy.partition()
        stalled = time.monotonic()
        async with _worker([slow.flow], redis_url):
            assert await client.result(rid, timeout=VT + 10) == 5 * 2 + 1
            assert slow.calls[1:] == ["finished"], slow.calls  # w2's copy
            # w1 finds out by itself that its lease is gone: the link is still down
            with contextlib.suppress(AssertionError):
                await wait_until(
                    lambda: slow.calls[0] != "started",
                    timeout=max(0.0, VT + LEASE_SLACK - (time.monotonic() - stalled)),
                )
            cancelled_in_partition = slow.calls[0] == "cancelled"
            proxy.heal(flush=True)  # whatever w1 sent meanwhile arrives now
            await wait_until(
                lambda: slow.calls[0] != "started",
                timeout=VT + BLOCK_GRACE,
                what="w1 to cancel the node it lost (even after the heal)",
            )
        assert slow.calls[0] == "cancelled", slow.calls
        assert w1.lease_lost == 1
        scraped = generate_latest(w1.metrics.registry).decode()
        assert LEASE_LOST_METRIC in scraped, scraped

        # w1 reads again and serves alone: nothing of the first run is redone or doubled
        assert await client.execute("lease", 7, timeout=VT + BLOCK_GRACE + 10) == 7 * 2 + 1
        assert slow.children == [10, 14]
        await wait_until(lambda: done.finished >= 2, timeout=5, what="notifications")
        assert done.repeated() == {}
        assert await entries_added(redis, "lease") == 4  # slow and child, once per run
        assert await pel_empty(redis, "lease")
        assert (await client.state(rid)).status is aioflow.Status.COMPLETED
        assert cancelled_in_partition, (
            f"w1 cancelled its node only once the link healed, not within "
            f"{VT + LEASE_SLACK:g} s of losing it (visibility timeout {VT:g} s)"
        )


async def test_partitioned_worker_heals_its_late_completion_is_fenced(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A worker finishes a node while partitioned past the visibility timeout; another
    reclaims and completes it. When the partition heals (what was held arrives late),
    the first worker's completion is refused, not applied twice, and it serves again."""
    slow = Slow(first_takes=0.5)
    async with (
        asyncio.timeout(GUARD),
        FaultProxy.to(redis_url) as proxy,
        aioflow.Client(redis_url) as client,
        DoneCounter(redis_url, "lease") as done,
        _worker([slow.flow], proxy.url, proxy=proxy) as w1,
    ):
        rid = await client.submit("lease", 5)
        await wait_until(lambda: slow.calls == ["started"], timeout=10, what="w1 to start slow")
        proxy.partition()
        async with _worker([slow.flow], redis_url):
            assert await client.result(rid, timeout=VT + 10) == 5 * 2 + 1
            assert slow.calls == ["finished", "finished"]  # w1's finished during the stall
            proxy.heal(flush=True)
        assert await client.execute("lease", 7, timeout=VT + BLOCK_GRACE + 10) == 7 * 2 + 1
        assert w1.fenced + w1.lease_lost >= 1, "w1 thought its late completion counted"
        assert slow.children == [10, 14]
        await wait_until(lambda: done.finished >= 2, timeout=5, what="notifications")
        assert done.repeated() == {}
        assert await entries_added(redis, "lease") == 4
        assert await pel_empty(redis, "lease")

"""Redis itself fails: killed with -9 and restarted, connections cut every 300 ms, or a
server configured to evict keys. Workers and clients recover by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys

import pytest
import redis as redis_py
from redis.asyncio import Redis

import aioflow
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.redis_server import RedisServer
from tests.chaos import apps
from tests.chaos.harness import (
    APP,
    ROOT,
    DoneCounter,
    Workers,
    all_runs,
    audit_diamond,
    pel_empty,
)
from tests.helpers import RedisFactory, wait_until

pytestmark = pytest.mark.chaos


async def _joins_at_least(r: Redis, target: int) -> bool:
    """Whether ``target`` joins ran (False while Redis is unreachable)."""
    try:
        raw = await r.hget(apps.TOTAL, "d")
    except REDIS_ERRORS:
        return False
    return int(raw or 0) >= target


async def _submit_retrying(client: aioflow.Client, run_id: str, x: int) -> str:
    """Submit under a caller-chosen id, again and again while Redis is away: a submit
    that was applied but whose answer was lost returns the same run the next time."""
    backoff = 0.02
    while True:
        try:
            return await client.submit("diamond", x, run_id=run_id)
        except aioflow.RedisUnavailable:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)


async def test_redis_kill9_and_restart_under_load(
    redis_factory: RedisFactory, workers: Workers
) -> None:
    server = redis_factory(appendonly=True, appendfsync="always")
    url = server.url
    ws = [workers.start(url, concurrency=100, env={"CHAOS_SLEEP": "0.1"}) for _ in range(2)]
    for w in ws:
        await w.ready()
    n = 400
    submitted: dict[str, int] = {}
    async with aioflow.Client(url) as client:
        async with Redis.from_url(url) as probe:

            async def submit_all() -> None:
                for i in range(n):
                    rid = await _submit_retrying(client, f"r{i}", i)
                    submitted[rid] = i
                    await asyncio.sleep(0.005)  # pace the load so that it spans the kills

            submitter = asyncio.create_task(submit_all())
            try:
                for kill in range(2):
                    target = 40 * (kill + 1)
                    await wait_until(
                        functools.partial(_joins_at_least, probe, target),
                        timeout=20,
                        what=f"{target} joins before kill {kill + 1}",
                    )
                    assert len(submitted) < n  # the load goes on across the kill
                    server.kill()
                    await asyncio.to_thread(server.start)
                await asyncio.wait_for(submitter, 30)
            finally:
                submitter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await submitter
        assert len(submitted) == n

        results = await asyncio.gather(
            *(client.result(rid, timeout=30) for rid in submitted), return_exceptions=True
        )
        wrong = {
            rid: res
            for rid, res in zip(submitted, results, strict=True)
            if res != apps.diamond_result(submitted[rid])
        }
        assert wrong == {}
        assert all(w.running for w in ws)

    async with Redis.from_url(url) as r:  # a fresh connection: the old ones died with Redis
        await wait_until(lambda: pel_empty(r, "diamond"), timeout=10, what="empty PEL")
        assert sorted(await all_runs(r, "diamond")) == sorted(submitted)  # no stray run
        rep = await audit_diamond(r, submitted)
        assert (rep.completed, rep.lost, rep.over_joined) == (n, [], []), rep
        assert (rep.extra_entries, rep.dlq, rep.pel) == (0, 0, 0), rep


async def test_client_call_after_redis_restart_succeeds(
    redis_factory: RedisFactory, workers: Workers
) -> None:
    """A Client used before Redis restarted works on its next call once Redis is back:
    its pooled connections died with the old server and must be replaced, not handed out."""
    server = redis_factory(appendonly=True, appendfsync="always")
    w = workers.start(server.url, concurrency=10, env={"CHAOS_SLEEP": "0"})
    await w.ready()
    async with aioflow.Client(server.url) as client:
        first = await client.submit("diamond", 1)
        assert await client.result(first, timeout=10) == apps.diamond_result(1)
        server.kill()
        await asyncio.to_thread(server.start)
        # Redis answers again: these calls must not fail with RedisUnavailable
        state = await client.state(first)
        assert state.status is aioflow.Status.COMPLETED
        assert await client.execute("diamond", 2, timeout=10) == apps.diamond_result(2)


async def test_worker_started_before_redis_waits_for_it(
    redis_factory: RedisFactory, workers: Workers
) -> None:
    """A worker whose Redis is not up yet (both restarting after a reboot) keeps trying
    with backoff instead of dying, and serves once Redis answers."""
    server = redis_factory(appendonly=True, start=False)
    w = workers.start(server.url, concurrency=10, env={"CHAOS_SLEEP": "0"})
    await wait_until(
        lambda: "refused" in w.log().lower() or not w.running,
        timeout=20,
        what="the worker to find no Redis",
    )
    assert w.running, f"the worker died instead of waiting for Redis:\n{w.log()[-2000:]}"
    await asyncio.to_thread(server.start)
    await w.ready()
    async with aioflow.Client(server.url) as client:
        assert await client.execute("diamond", 3, timeout=10) == apps.diamond_result(3)


class DroppingProxy:
    """A TCP proxy to Redis whose :meth:`drop_all` aborts every proxied connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.dropped = 0  # connections aborted
        self.cuts = 0  # drop_all calls that aborted at least one

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.accepted += 1
        try:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            pair = (cw, uw)
            self.pairs.add(pair)
            pumps = [asyncio.create_task(_pump(cr, uw)), asyncio.create_task(_pump(ur, cw))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                self.pairs.discard(pair)
                _abort(uw)
        finally:
            _abort(cw)
            self.handlers.discard(task)

    def drop_all(self) -> int:
        pairs = list(self.pairs)
        for cw, uw in pairs:
            _abort(cw)
            _abort(uw)
        self.dropped += len(pairs)
        self.cuts += bool(pairs)
        return len(pairs)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop_all()
        for t in list(self.handlers):
            t.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def _abort(w: asyncio.StreamWriter) -> None:
    w.transport.abort()
    w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def test_connections_dropped_every_300ms(
    redis_server: RedisServer, redis_url: str, redis: Redis, workers: Workers
) -> None:
    proxy = DroppingProxy(redis_server.port)
    proxied = await proxy.start()
    chaos: asyncio.Task[None] | None = None
    try:
        # nodes slow enough that the load spans many cuts, however fast the engine gets
        env = {"CHAOS_SLEEP": "0.2"}
        ws = [
            workers.start(proxied, concurrency=50, env=env, counter_url=redis_url) for _ in range(2)
        ]
        for w in ws:
            await w.ready()

        async def drop_every_300ms() -> None:
            while True:
                await asyncio.sleep(0.3)  # the fault cadence, not a wait for a condition
                proxy.drop_all()

        n = 300
        async with (
            aioflow.Client(redis_url) as client,
            DoneCounter(redis_url, "diamond") as done,
        ):
            accepted_before = proxy.accepted
            chaos = asyncio.create_task(drop_every_300ms())
            ids = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(n))))
            inputs = dict(zip(ids, range(n), strict=True))
            results = await asyncio.gather(
                *(client.result(rid, timeout=30) for rid in ids), return_exceptions=True
            )
            chaos.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos
            wrong = {
                rid: res
                for rid, res in zip(ids, results, strict=True)
                if res != apps.diamond_result(inputs[rid])
            }
            assert wrong == {}
            # it did cut, repeatedly, and the workers did connect again
            assert proxy.cuts >= 3 and proxy.dropped >= 10, (proxy.cuts, proxy.dropped)
            assert proxy.accepted > accepted_before
            assert all(w.running for w in ws)
            await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")
            rep = await audit_diamond(redis, inputs)
            assert (rep.completed, rep.lost, rep.over_joined) == (n, [], []), rep
            assert (rep.extra_entries, rep.dlq, rep.pel) == (0, 0, 0), rep
            await wait_until(lambda: done.finished >= n, timeout=10, what="every notification")
            assert done.repeated() == {}
            assert done.statuses == {"completed": n}
    finally:
        if chaos is not None:
            chaos.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos
        await proxy.close()


def test_worker_refuses_an_evicting_redis(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru"])
    with redis_py.Redis.from_url(server.url) as r:
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
        proc = subprocess.run(
            [sys.executable, "-m", "aioflow", "worker", APP, "--redis-url", server.url],
            capture_output=True,
            timeout=30,
            cwd=ROOT,
            env=env,
            check=False,
        )
        assert proc.returncode != 0
        assert b"noeviction" in proc.stderr, proc.stderr.decode(errors="replace")
        assert b"allkeys-lru" in proc.stderr
        assert not r.exists("af:flows")  # refused before registering anything
        assert r.dbsize() == 0

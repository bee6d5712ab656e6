"""A sender that dies between keeping an event and delivering it: a worker's
housekeeping finishes the fan-out (on one Redis and a Cluster)."""

from __future__ import annotations

import time
from typing import Any

import aioflow
from aioflow.core import codec
from aioflow.engine import events
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from tests.engine_helpers import running
from tests.helpers import wait_until


def kyc() -> aioflow.Flow:
    flow = aioflow.Flow("kyc")
    flow.wait("review", event="user.created", key=lambda d: d["user"])
    return flow


def signup() -> aioflow.Flow:
    flow = aioflow.Flow("signup", on_event="user.created")

    @flow.node
    async def welcome(data: Any, ctx: aioflow.Context) -> Any:
        return {"data": data, "key": ctx.options["event_key"], "id": ctx.options["event_id"]}

    return flow


async def test_a_worker_finishes_the_fan_out_of_a_sender_that_died(any_redis_url: str) -> None:
    async with running([signup(), kyc()], any_redis_url, visibility_timeout=0.3) as s:
        engine = s.client.engine
        await engine.start()
        waiting = await s.client.submit("kyc", {"user": "u1"})
        await wait_until(lambda: _waiting(s.client, waiting), what="the run waiting")
        # step 1 alone, as a sender that died right after it, REDO_AFTER seconds ago
        sent_ms = int((time.time() - events.REDO_AFTER - 1) * 1000)
        await SCRIPTS.call(
            engine.fast,
            "ev_send",
            keys.event_stream("user.created", "u1"),
            "s",
            "u1",
            "lost-1",
            codec.encode({"name": "ada"}),
            sent_ms,
            86_400_000,
            int(events.REDO_AFTER * 1000),
        )
        rid = await engine.run_id("ev-lost-1", flow="signup")
        await wait_until(lambda: _exists(engine, rid.run), what="the run started by the redo")
        result = await s.client.result(str(rid), timeout=10)
        assert result == {"data": {"name": "ada"}, "key": ["u1"], "id": ["lost-1"]}
        assert await s.client.result(waiting, timeout=10) == {"name": "ada"}
        fanouts = keys.event_fanouts("user.created")
        await wait_until(lambda: _gone(engine, fanouts), what="the fan-out marked done")
        # sent again (the webhook retried): the answer of the redo, no second run
        again = await s.client.send_event(
            "user.created", {"name": "bob"}, key="u1", event_id="lost-1"
        )
        assert again["resolved"] == 1  # what the redo did
        assert [keys.RunId.parse(r).key for r in again["started"]] == ["ev-lost-1"]
        runs, _ = await s.client.runs("signup")
        assert len(runs) == 1


async def _gone(engine: Any, fanouts: str) -> bool:
    return not await engine.redis.zcard(fanouts)


async def _exists(engine: Any, key: str) -> bool:
    return bool(await engine.redis.exists(key))


async def _waiting(client: aioflow.Client, rid: str) -> bool:
    v = (await client.state(rid)).vertices.get("review")
    return v is not None and v.status == "waiting"

"""A wait's ``data_type=``: the event's or signal's data converted like a node's
annotated input, refused at the door where the sender holds the flow, and failing
the vertex (not retried) where it does not."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import aioflow
from aioflow.definitions.versions import version_of
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until


class Review(BaseModel):
    approved: bool
    score: float = 0.0


def reviewed(data_type: Any = Review) -> aioflow.Flow:
    flow = aioflow.Flow("typed-review")
    flow.wait("review", event="typed.reviewed", key=lambda d: d["user"], data_type=data_type)

    @flow.node(after="review")
    def decide(r: Review) -> str:
        assert isinstance(r, Review)
        return f"approved {r.score}" if r.approved else "rejected"

    return flow


async def waiting(s: Stack, rid: str) -> bool:
    v = (await s.client.state(rid)).vertices.get("review")
    return v is not None and v.status == "waiting"


async def test_a_signal_is_converted_or_refused_at_the_door(redis_url: str) -> None:
    flow = reviewed()
    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, {"user": "u1"})
        await wait_until(lambda: waiting(s, rid), timeout=10, what="the wait")
        with pytest.raises(aioflow.InvalidInput) as info:
            await s.client.signal(rid, "review", {"approved": "perhaps"})
        assert info.value.errors[0]["loc"] == ["approved"]
        assert await waiting(s, rid), "a refused signal changes nothing"
        assert await s.client.signal(rid, "review", {"approved": "yes", "score": "0.5"})
        assert await s.client.result(rid, timeout=10) == "approved 0.5"
        assert (await s.client.state(rid)).vertices["review"].status == "completed"


async def test_an_event_is_refused_by_a_sender_holding_the_flow(redis_url: str) -> None:
    flow = reviewed()
    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, {"user": "u2"})  # the client now holds flow
        await wait_until(lambda: waiting(s, rid), timeout=10, what="the wait")
        with pytest.raises(aioflow.InvalidInput):
            await s.client.send_event("typed.reviewed", {"score": 1}, key="u2")
        assert await waiting(s, rid)
        sent = await s.client.send_event("typed.reviewed", {"approved": True}, key="u2")
        assert sent["resolved"] == 1
        assert await s.client.result(rid, timeout=10) == "approved 0.0"


async def test_an_event_from_a_sender_without_the_flow_fails_the_vertex(
    redis_url: str,
) -> None:
    flow = reviewed()
    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, {"user": "u3"})
        await wait_until(lambda: waiting(s, rid), timeout=10, what="the wait")
        async with aioflow.Client(redis_url) as stranger:  # holds no flow
            sent = await stranger.send_event("typed.reviewed", {"score": 1}, key="u3")
        assert sent["resolved"] == 1
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=10)
        assert info.value.vertex == "review"
        assert info.value.error_type == "InvalidInput"
        assert (await s.client.state(rid)).vertices["review"].attempts == 1  # not retried


def test_the_data_type_is_in_the_definition_and_the_version() -> None:
    typed, untyped = reviewed(), reviewed(data_type=None)
    doc = typed.describe()["dag"]["vertices"][0]["wait"]
    assert doc["data_schema"]["required"] == ["approved"]
    assert "data_schema" not in untyped.describe()["dag"]["vertices"][0]["wait"]
    assert version_of(typed) != version_of(untyped)
    class Opaque:  # pydantic cannot convert into it
        pass

    with pytest.raises(aioflow.DefinitionError, match="wait 'w'"):
        aioflow.Flow("bad").wait("w", event="e.x", data_type=Opaque)

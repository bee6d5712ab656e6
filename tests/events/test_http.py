"""The events' HTTP surface: POST /events/{name} and POST
/flow/{name}/run/{id}/signal/{vertex}, their refusals, scopes and signatures, and
the Python client's HTTP mode for them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.security import sign
from aioflow.store import keys
from tests.engine_helpers import Stack, running

HttpClient = TestClient[web.Request, web.Application]
TOKENS = "read:R-tok,run:U-tok,admin:A-tok"
JSON = {"Content-Type": "application/json"}


def flows() -> list[aioflow.Flow]:
    signup = aioflow.Flow("signup", on_event="user.created")

    @signup.node
    async def welcome(data: Any) -> Any:
        return data

    kyc = aioflow.Flow("kyc")  # served by no worker here: its runs stay pending

    @kyc.node
    async def score(data: Any) -> Any:
        return data

    kyc.wait("review", event="kyc.reviewed", after=score)
    return [signup, kyc]


@contextlib.asynccontextmanager
async def gateway(url: str, **settings: Any) -> AsyncIterator[tuple[HttpClient, Stack]]:
    fs = flows()
    worker_settings = {k: v for k, v in settings.items() if k != "api_tokens"}
    async with running(fs[:1], url, **worker_settings) as stack:
        app = create_app(
            stack.redis, flows=fs, settings=aioflow.Settings(redis_url=url, **settings)
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


async def answer(resp: ClientResponse, status: int, error: str | None = None) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    doc = json.loads(text)
    if error is not None:
        assert doc["error"] == error, doc
        assert doc["detail"], doc
    return doc


async def test_send_an_event_over_http(redis_url: str) -> None:
    async with gateway(redis_url, max_value=100) as (http, stack):
        body = {"key": "u1", "data": {"name": "ada"}, "id": "sg-1"}
        doc = await answer(await http.post("/events/user.created", json=body), 200)
        assert doc["resolved"] == 0
        [rid] = doc["started"]
        assert keys.RunId.parse(rid).key == "ev-sg-1"
        assert await stack.client.result(rid, timeout=10) == {"name": "ada"}
        # the same id again: the same answer, no second run
        again = await answer(await http.post("/events/user.created", json=body), 200)
        assert again == doc
        # every field is optional: no key, no data, a new id each time
        other = await answer(await http.post("/events/user.created", json={}), 200)
        assert other["started"] != doc["started"]
        # nobody listens: nothing resolved, nothing started
        none = await answer(await http.post("/events/nobody.cares", json={"data": 1}), 200)
        assert none == {"resolved": 0, "started": []}


async def test_bad_events_are_refused_and_start_nothing(redis_url: str) -> None:
    async with gateway(redis_url, max_value=100) as (http, stack):
        for name in ("Bad", "a%20b", "x" * 65, "-x"):
            await answer(await http.post(f"/events/{name}", json={}), 400, "invalid_id")
        cases: list[tuple[Any, str]] = [
            ({"key": "a\nb"}, "invalid_id"),
            ({"id": "a.b"}, "invalid_id"),
            ({"id": "x" * 61}, "invalid_id"),
            ({"key": 5}, "invalid_event"),
            ({"id": 5}, "invalid_event"),
            ({"other": 1}, "invalid_event"),
            ([1, 2], "invalid_event"),
            ("text", "invalid_event"),
        ]
        for body, error in cases:
            resp = await http.post("/events/user.created", json=body)
            await answer(resp, 400, error)
        await answer(
            await http.post("/events/user.created", data=b"", headers=JSON), 400, "empty_body"
        )
        await answer(
            await http.post("/events/user.created", data=b"{", headers=JSON), 400, "invalid_json"
        )
        await answer(await http.post("/events/user.created", data=b"raw"), 415)
        big = {"data": "x" * 200}
        await answer(await http.post("/events/user.created", json=big), 413, "value_too_large")
        runs, _ = await stack.client.runs("signup")
        assert runs == []


async def test_events_and_signals_need_the_run_scope(redis_url: str) -> None:
    async with gateway(redis_url, api_tokens=TOKENS) as (http, _):
        for path in ("/events/user.created", "/flow/kyc/run/nope/signal/review"):
            await answer(await http.post(path, json={}), 401, "unauthorized")
            resp = await http.post(path, json={}, headers={"Authorization": "Bearer R-tok"})
            await answer(resp, 403, "forbidden")
        resp = await http.post(
            "/events/user.created", json={}, headers={"Authorization": "Bearer U-tok"}
        )
        await answer(resp, 200)
        resp = await http.post(
            "/flow/kyc/run/nope/signal/review", json={}, headers={"Authorization": "Bearer U-tok"}
        )
        await answer(resp, 404, "run_not_found")  # past the guard


async def test_events_are_signed_like_any_post(redis_url: str) -> None:
    async with gateway(redis_url, hmac_secret="k") as (http, _):
        body = b'{"key": "u2", "data": 1, "id": "signed-1"}'
        await answer(await http.post("/events/user.created", data=body, headers=JSON), 401)
        headers = {**JSON, "X-Aioflow-Signature": sign(body, "k")}
        doc = await answer(await http.post("/events/user.created", data=body, headers=headers), 200)
        assert len(doc["started"]) == 1
        replayed = await http.post("/events/user.created", data=body, headers=headers)
        assert (await answer(replayed, 401, "unauthorized"))["reason"] == "replayed"
        bad = {**JSON, "X-Aioflow-Signature": sign(b"other", "k")}
        await answer(await http.post("/events/user.created", data=body, headers=bad), 401)


async def test_signal_over_http(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        rid = await stack.client.submit("kyc", {"user": 1}, run_id="kyc-1")
        path = "/flow/kyc/run/kyc-1/signal"
        # not a wait vertex, or no such vertex: 409
        await answer(await http.post(f"{path}/score", json=1), 409, "invalid_transition")
        await answer(await http.post(f"{path}/nope", json=1), 409, "invalid_transition")
        await answer(await http.post(f"{path}/a%2Fb%5Bc%5D", json=1), 409, "invalid_transition")
        # unknown run, bad run id
        await answer(await http.post("/flow/kyc/run/other/signal/review", json=1), 404)
        await answer(await http.post("/flow/kyc/run/a.b/signal/review", json=1), 400, "invalid_id")
        await answer(await http.post(f"{path}/review", data=b"", headers=JSON), 400, "empty_body")
        # the wait vertex: taken (the run has not reached it: kept for it)
        doc = await answer(await http.post(f"{path}/review", json={"approved": True}), 200)
        assert doc["run_id"] == rid and doc["vertex"] == "review"
        assert isinstance(doc["taken"], bool)


async def test_the_client_sends_events_and_signals_over_http(redis_url: str) -> None:
    async with gateway(redis_url, max_value=100) as (http, stack):
        url = str(http.make_url("")).rstrip("/")
        async with aioflow.Client(url) as client:
            doc = await client.send_event("user.created", {"n": 1}, key="u3", event_id="cli-1")
            assert [keys.RunId.parse(r).key for r in doc["started"]] == ["ev-cli-1"]
            assert await client.send_event("user.created", {"n": 2}, event_id="cli-1") == doc
            with pytest.raises(aioflow.InvalidRunId):
                await client.send_event("Bad Name", 1)
            with pytest.raises(aioflow.LimitExceeded):  # the gateway's 413
                await client.send_event("user.created", "x" * 200)
            await stack.client.submit("kyc", 1, run_id="kyc-2")
            assert isinstance(await client.signal("kyc-2", "review", {"ok": 1}, flow="kyc"), bool)
            with pytest.raises(aioflow.InvalidTransition):
                await client.signal("kyc-2", "score", 1, flow="kyc")

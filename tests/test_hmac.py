"""``hmac_secret``: every POST to the gateway needs ``X-Hub-Signature-256:
sha256=<hex HMAC-SHA256 of the body>``; GET requests need none."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.gateway import create_app
from tests.engine_helpers import Stack, running

SECRET = "s3cret"
T = 10.0
HttpClient = TestClient[web.Request, web.Application]
JSON = {"Content-Type": "application/json"}


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def make_flows() -> tuple[aioflow.Flow, aioflow.Flow]:
    """``echo`` is served by the worker; ``idle`` is registered but served by nobody, so
    its runs stay pending (to pause and stop them)."""
    echo = aioflow.Flow("echo")

    @echo.node
    async def show(x: Any) -> dict[str, Any]:
        return {"got": x}

    idle = aioflow.Flow("idle")

    @idle.node
    async def never(x: Any) -> Any:
        return x

    return echo, idle


@contextlib.asynccontextmanager
async def gateway(url: str, secret: str | None = SECRET) -> AsyncIterator[tuple[HttpClient, Stack]]:
    echo, idle = make_flows()
    async with running([echo], url) as stack:
        app = create_app(
            stack.redis,
            flows=[echo, idle],
            settings=aioflow.Settings(redis_url=url, hmac_secret=secret),
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


async def _json(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text
    return json.loads(text)


async def _unauthorized(resp: ClientResponse) -> None:
    doc = await _json(resp, 401)
    assert doc["error"] == "unauthorized", doc
    assert "X-Hub-Signature-256" in doc["detail"], doc


async def _runs(redis: Redis, flow: str) -> int:
    """Runs ever created for ``flow`` (its run index)."""
    return int(await redis.zcard(f"af:{{{flow}:0}}:i"))


async def test_signed_post_starts_a_run(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, stack):
        body = json.dumps({"n": 7}).encode()
        resp = await http.post(
            "/flow/echo", data=body, headers={**JSON, "X-Hub-Signature-256": sign(body)}
        )
        doc = await _json(resp, 202)
        assert await stack.client.result(doc["run_id"], timeout=T) == {"got": {"n": 7}}

        # with ?wait= too (the signature covers the body, not the query)
        body = b"raw bytes"
        resp = await http.post(
            "/flow/echo?wait=5", data=body, headers={"X-Hub-Signature-256": sign(body)}
        )
        assert await _json(resp, 200) == {"got": {"$bytes": "cmF3IGJ5dGVz"}}
        assert await _runs(redis, "echo") == 2


async def test_unsigned_or_wrongly_signed_post_is_401(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, _):
        body = json.dumps({"n": 1}).encode()
        good = sign(body)
        await _unauthorized(await http.post("/flow/echo", data=body, headers=JSON))
        for wrong in (
            sign(b'{"n": 2}'),  # another body
            sign(body, "other-secret"),  # another secret
            good.removeprefix("sha256="),  # no scheme
            "sha1=" + good.removeprefix("sha256="),  # wrong scheme
            good[:-1],  # truncated
            good + "0",  # extended
            "sha256=",
            "",
        ):
            resp = await http.post(
                "/flow/echo", data=body, headers={**JSON, "X-Hub-Signature-256": wrong}
            )
            await _unauthorized(resp)
        # with ?wait= and X-Run-Id the check comes first as well
        resp = await http.post("/flow/echo?wait=1", data=body, headers={**JSON, "X-Run-Id": "k1"})
        await _unauthorized(resp)
        # an unknown flow is no way around it either: 401, not 404
        await _unauthorized(await http.post("/flow/nosuch", data=body, headers=JSON))
        # nothing was started
        assert await _runs(redis, "echo") == 0
        assert await redis.xlen("af:{echo:0}:q") == 0


async def test_non_ascii_signature_is_401(redis_url: str, redis: Redis) -> None:
    """A signature header with non-ASCII characters is a wrong signature (401), not a
    server error."""
    async with gateway(redis_url) as (http, _):
        body = b"{}"
        resp = await http.post(
            "/flow/echo", data=body, headers={**JSON, "X-Hub-Signature-256": "sha256=\u00e9"}
        )
        await _unauthorized(resp)
        assert await _runs(redis, "echo") == 0


async def test_control_posts_need_a_signature(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        run_id = await stack.client.submit("idle", 1)  # served by nobody: stays pending
        base = f"/flow/idle/run/{run_id}"
        empty = sign(b"")

        await _unauthorized(await http.post(f"{base}/pause"))
        await _unauthorized(await http.post(f"{base}/pause", headers={"X-Hub-Signature-256": "x"}))
        assert (await stack.client.state(run_id)).status is aioflow.Status.PENDING

        doc = await _json(
            await http.post(f"{base}/pause", headers={"X-Hub-Signature-256": empty}), 200
        )
        assert doc == {"run_id": run_id, "status": "paused"}

        await _unauthorized(await http.post(f"{base}/resume"))
        await _unauthorized(await http.post(f"{base}/stop"))
        assert (await stack.client.state(run_id)).status is aioflow.Status.PAUSED

        doc = await _json(
            await http.post(f"{base}/stop", headers={"X-Hub-Signature-256": empty}), 200
        )
        assert doc == {"run_id": run_id, "status": "stopped"}

        await _unauthorized(await http.post(f"{base}/retry"))
        await _unauthorized(await http.post("/dead-letters/idle.0.1-1/replay"))


async def test_get_endpoints_need_no_signature(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        run_id = await stack.client.submit("echo", 3)
        assert await stack.client.result(run_id, timeout=T) == {"got": 3}
        for path in (
            "/healthz",
            "/flows",
            "/flow/echo",
            "/flow/echo/runs",
            f"/flow/echo/run/{run_id}",
            "/dead-letters",
        ):
            await _json(await http.get(path), 200)
        resp = await http.get("/metrics")
        assert resp.status == 200, await resp.text()
        resp = await http.get("/")
        assert resp.status == 200 and resp.content_type == "text/html"
        state = await _json(await http.get(f"/flow/echo/run/{run_id}"), 200)
        assert state["status"] == "completed" and state["result"] == {"got": 3}


async def test_without_a_secret_no_signature_is_needed(redis_url: str) -> None:
    async with gateway(redis_url, secret=None) as (http, stack):
        doc = await _json(await http.post("/flow/echo", json={"n": 1}), 202)
        assert await stack.client.result(doc["run_id"], timeout=T) == {"got": {"n": 1}}

"""``hmac_secret``: every POST to the gateway carries ``X-Aioflow-Signature:
t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, accepted once and only
while fresh; GET requests need none (unless ``api_tokens`` is set)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.security import sign
from tests.engine_helpers import Stack, running

SECRET = "s3cret"
T = 10.0
HttpClient = TestClient[web.Request, web.Application]
JSON = {"Content-Type": "application/json"}
H = "X-Aioflow-Signature"


def signed(body: bytes = b"", secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    return {H: sign(body, secret, timestamp=int(time.time() if at is None else at))}


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
async def gateway(
    url: str, secret: str | None = SECRET, **settings: Any
) -> AsyncIterator[tuple[HttpClient, Stack]]:
    echo, idle = make_flows()
    async with running([echo], url) as stack:
        app = create_app(
            stack.redis,
            flows=[echo, idle],
            settings=aioflow.Settings(redis_url=url, hmac_secret=secret, **settings),
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


async def _json(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text
    return json.loads(text)


async def _refused(resp: ClientResponse, reason: str) -> None:
    doc = await _json(resp, 401)
    assert doc["error"] == "unauthorized", doc
    assert doc["reason"] == reason, doc


async def _runs(redis: Redis, flow: str) -> int:
    """Runs ever created for ``flow`` (its run index)."""
    return int(await redis.zcard(f"af:{{{flow}:0}}:i"))


async def test_signed_post_starts_a_run(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, stack):
        body = json.dumps({"n": 7}).encode()
        resp = await http.post("/flow/echo", data=body, headers={**JSON, **signed(body)})
        doc = await _json(resp, 202)
        assert await stack.client.result(doc["run_id"], timeout=T) == {"got": {"n": 7}}

        # with ?wait= too (the signature covers the body, not the query)
        body = b"raw bytes"
        resp = await http.post("/flow/echo?wait=5", data=body, headers=signed(body))
        assert await _json(resp, 200) == {"got": {"$bytes": "cmF3IGJ5dGVz"}}
        assert await _runs(redis, "echo") == 2


async def test_replayed_signature_is_refused(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, _):
        body = b'{"n": 1}'
        headers = {**JSON, **signed(body)}
        await _json(await http.post("/flow/echo", data=body, headers=headers), 202)
        await _refused(await http.post("/flow/echo", data=body, headers=headers), "replayed")
        # the same header with its MACs re-arranged is the same request
        t, mac = headers[H].split(",")
        extra = {**JSON, H: f"{t},v1={'0' * 64},{mac}"}
        await _refused(await http.post("/flow/echo", data=body, headers=extra), "replayed")
        assert await _runs(redis, "echo") == 1
        # remembered until it would be stale anyway (tolerance 300 s + 1 s)
        (key,) = [k async for k in redis.scan_iter("af:sig:*")]
        assert 295_000 < await redis.pttl(key) <= 301_000


async def test_stale_or_future_signature_is_refused(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url, signature_tolerance=30) as (http, _):
        body = b"{}"
        for at in (time.time() - 40, time.time() + 40):
            resp = await http.post("/flow/echo", data=body, headers={**JSON, **signed(body, at=at)})
            await _refused(resp, "stale")
        resp = await http.post(
            "/flow/echo", data=body, headers={**JSON, **signed(body, at=time.time() - 20)}
        )
        await _json(resp, 202)
        assert await _runs(redis, "echo") == 1


async def test_missing_malformed_or_bad_signature_is_401(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, _):
        body = json.dumps({"n": 1}).encode()
        await _refused(await http.post("/flow/echo", data=body, headers=JSON), "missing")
        good = signed(body)[H]
        t = good.split(",")[0]
        for wrong, why in (
            (signed(b'{"n": 2}')[H], "bad"),  # another body
            (signed(body, "other-secret")[H], "bad"),  # another secret
            (good[:-1], "malformed"),  # truncated
            (good + "0", "malformed"),  # extended
            (good.split(",")[1], "malformed"),  # no timestamp
            (t, "malformed"),  # no MAC
            ("sha256=" + good.split("v1=")[1], "malformed"),  # the old scheme
            ("t=1,v1=\u00e9", "malformed"),  # not ASCII
            ("", "missing"),
        ):
            resp = await http.post("/flow/echo", data=body, headers={**JSON, H: wrong})
            await _refused(resp, why)
        # with ?wait= and X-Run-Id the check comes first as well
        resp = await http.post("/flow/echo?wait=1", data=body, headers={**JSON, "X-Run-Id": "k1"})
        await _refused(resp, "missing")
        # an unknown flow is no way around it either: 401, not 404
        await _refused(await http.post("/flow/nosuch", data=body, headers=JSON), "missing")
        # nothing was started
        assert await _runs(redis, "echo") == 0
        assert await redis.xlen("af:{echo:0}:q") == 0


async def test_rotation_accepts_old_and_new_secret(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url, secret="new-one, old-one") as (http, _):
        for secret in ("new-one", "old-one"):
            body = json.dumps({"with": secret}).encode()
            resp = await http.post(
                "/flow/echo", data=body, headers={**JSON, **signed(body, secret)}
            )
            await _json(resp, 202)
        body = b"{}"
        resp = await http.post("/flow/echo", data=body, headers={**JSON, **signed(body, SECRET)})
        await _refused(resp, "bad")
        assert await _runs(redis, "echo") == 2


async def test_control_posts_need_a_signature(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        run_id = await stack.client.submit("idle", 1)  # served by nobody: stays pending
        base = f"/flow/idle/run/{run_id}"

        await _refused(await http.post(f"{base}/pause"), "missing")
        await _refused(await http.post(f"{base}/pause", headers={H: "x"}), "malformed")
        assert (await stack.client.state(run_id)).status is aioflow.Status.PENDING

        doc = await _json(await http.post(f"{base}/pause", headers=signed()), 200)
        assert doc == {"run_id": run_id, "status": "paused"}

        await _refused(await http.post(f"{base}/resume"), "missing")
        await _refused(await http.post(f"{base}/stop"), "missing")
        assert (await stack.client.state(run_id)).status is aioflow.Status.PAUSED

        # two control requests in the same second differ by their path, not their body:
        # the empty body signed twice is one signature, accepted once
        stop_headers = signed(at=time.time() - 1)
        doc = await _json(await http.post(f"{base}/stop", headers=stop_headers), 200)
        assert doc == {"run_id": run_id, "status": "stopped"}
        await _refused(await http.post(f"{base}/stop", headers=stop_headers), "replayed")

        await _refused(await http.post(f"{base}/retry"), "missing")
        await _refused(await http.post("/dead-letters/idle.0.1-1/replay"), "missing")


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
            "/openapi.json",
        ):
            await _json(await http.get(path), 200)
        resp = await http.get("/metrics")
        assert resp.status == 200, await resp.text()
        resp = await http.get("/")
        assert resp.status == 200 and resp.content_type == "text/html"


async def test_without_a_secret_no_signature_is_needed(redis_url: str) -> None:
    async with gateway(redis_url, secret=None) as (http, stack):
        doc = await _json(await http.post("/flow/echo", json={"n": 1}), 202)
        assert await stack.client.result(doc["run_id"], timeout=T) == {"got": {"n": 1}}


async def test_replay_guard_on_a_cluster(cluster_url: str) -> None:
    """The replay key is one key with its own hash tag: fine on a Redis Cluster, through
    the engine's cluster client, whichever master owns it."""
    async with gateway(cluster_url) as (http, stack):
        for n in range(3):  # distinct bodies: keys spread over the masters
            body = json.dumps({"n": n}).encode()
            headers = {**JSON, **signed(body)}
            doc = await _json(await http.post("/flow/echo", data=body, headers=headers), 202)
            assert await stack.client.result(doc["run_id"], timeout=T) == {"got": {"n": n}}
            await _refused(await http.post("/flow/echo", data=body, headers=headers), "replayed")

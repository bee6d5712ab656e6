"""The gateway on a network: token scopes per endpoint, security headers, static files,
tracebacks, and callbacks (refused for loopback targets, signed when a secret is set)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.security import parse_secrets, sign, verify
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until

T = 10.0
HttpClient = TestClient[web.Request, web.Application]
TOKENS = "read:R-tok,run:U-tok,admin:A-tok"


def make_flows() -> list[aioflow.Flow]:
    echo = aioflow.Flow("echo")

    @echo.node
    async def show(x: Any) -> Any:
        return {"got": x}

    boom = aioflow.Flow("boom")

    @boom.node
    async def explode(x: Any) -> Any:
        raise ValueError("on purpose")

    idle = aioflow.Flow("idle")  # served by nobody: its runs stay pending

    @idle.node
    async def never(x: Any) -> Any:
        return x

    return [echo, boom, idle]


@contextlib.asynccontextmanager
async def gateway(url: str, **settings: Any) -> AsyncIterator[tuple[HttpClient, Stack]]:
    flows = make_flows()
    worker_settings = {k: v for k, v in settings.items() if k != "api_tokens"}
    async with running(flows[:2], url, **worker_settings) as stack:
        app = create_app(
            stack.redis, flows=flows, settings=aioflow.Settings(redis_url=url, **settings)
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _json(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    return json.loads(text)


async def test_token_scopes_per_endpoint(redis_url: str) -> None:
    async with gateway(redis_url, api_tokens=TOKENS) as (http, stack):
        done = await stack.client.submit("echo", 1)
        await stack.client.result(done, timeout=T)
        pending = await stack.client.submit("idle", 1)
        reads = [
            "/flows",
            "/metrics",
            "/dead-letters",
            "/openapi.json",
            "/flow/echo",
            "/flow/echo/runs",
            f"/flow/echo/run/{done}",
        ]
        for path in reads:
            for headers, why in (({}, "missing"), (bearer("nope"), "bad")):
                resp = await http.get(path, headers=headers)
                doc = await _json(resp, 401)
                assert (doc["error"], doc["reason"]) == ("unauthorized", why), (path, doc)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            resp = await http.get(path, headers={"Authorization": "Token R-tok"})
            assert (await _json(resp, 401))["reason"] == "malformed"
            for token in ("R-tok", "U-tok", "A-tok"):  # admin > run > read
                resp = await http.get(path, headers=bearer(token))
                assert resp.status == 200, (path, token, await resp.text())

        # starting a run needs run
        await _json(await http.post("/flow/echo", json=1), 401)
        doc = await _json(await http.post("/flow/echo", json=1, headers=bearer("R-tok")), 403)
        assert doc["error"] == "forbidden" and "run" in doc["detail"]
        for token in ("U-tok", "A-tok"):
            await _json(await http.post("/flow/echo", json=1, headers=bearer(token)), 202)

        # steering needs admin
        base = f"/flow/idle/run/{pending}"
        for action in ("pause", "resume", "stop", "retry"):
            await _json(await http.post(f"{base}/{action}"), 401)
            for token in ("R-tok", "U-tok"):
                await _json(await http.post(f"{base}/{action}", headers=bearer(token)), 403)
        for token in ("R-tok", "U-tok"):
            await _json(await http.post("/dead-letters/x/replay", headers=bearer(token)), 403)
        doc = await _json(await http.post(f"{base}/pause", headers=bearer("A-tok")), 200)
        assert doc["status"] == "paused"
        await _json(await http.post("/dead-letters/x/replay", headers=bearer("A-tok")), 400)
        assert (await stack.client.state(pending)).status is aioflow.Status.PAUSED

        # open: health, the dashboard page and its assets (they hold no data)
        for path in ("/healthz", "/", "/static/dashboard.js", "/favicon.ico"):
            resp = await http.get(path)
            assert resp.status == 200, (path, await resp.text())


async def test_tokens_and_signatures_together(redis_url: str, redis: Redis) -> None:
    digest = "sha256:" + __import__("hashlib").sha256(b"A-tok").hexdigest()
    async with gateway(redis_url, api_tokens=f"admin:{digest}", hmac_secret="k") as (http, stack):
        # a browser cannot sign: a bearer token of the needed scope is enough
        await _json(await http.post("/flow/echo", json=1, headers=bearer("A-tok")), 202)
        # a signer needs no token for its POST ...
        body = b"2"
        sig = {"X-Aioflow-Signature": sign(body, "k"), "Content-Type": "application/json"}
        await _json(await http.post("/flow/echo", data=body, headers=sig), 202)
        # ... but a bad signature is not rescued by a token
        bad = {**sig, **bearer("A-tok"), "X-Aioflow-Signature": sign(b"3", "k")}
        assert (await _json(await http.post("/flow/echo", data=body, headers=bad), 401))[
            "reason"
        ] == "bad"
        # GETs need the token
        await _json(await http.get("/flows"), 401)
        await _json(await http.get("/flows", headers=bearer("A-tok")), 200)
        assert int(await redis.zcard("af:{echo:0}:i")) == 2


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'"
)


async def test_security_headers_on_every_response(redis_url: str) -> None:
    async with gateway(redis_url, api_tokens=TOKENS) as (http, _):
        for method, path, status in (
            ("GET", "/", 200),
            ("GET", "/healthz", 200),
            ("GET", "/static/dashboard.css", 200),
            ("GET", "/flows", 401),
            ("GET", "/nowhere", 404),
            ("PUT", "/flows", 405),
            ("POST", "/flow/echo", 401),
        ):
            resp = await http.request(method, path)
            assert resp.status == status, (path, await resp.text())
            assert resp.headers["Content-Security-Policy"] == CSP, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]


async def test_dashboard_has_no_inline_code_and_its_files_are_served(redis_url: str) -> None:
    async with gateway(redis_url) as (http, _):
        html = await (await http.get("/")).text()
        scripts = re.findall(r"<script\b[^>]*>", html, re.I)
        assert scripts and all("src=" in s for s in scripts), scripts
        assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None, "inline script"
        assert "<style" not in html.lower()
        assert re.search(r"\son[a-z]+\s*=", html, re.I) is None, "inline event handler"
        for name, ctype in (
            ("dashboard.js", "text/javascript"),
            ("dashboard.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ):
            resp = await http.get(f"/static/{name}")
            assert resp.status == 200 and resp.content_type == ctype, name
            assert len(await resp.read()) > 50
            assert f"/static/{name}" in html or name == "favicon.svg"
        resp = await http.get("/favicon.ico")
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
        for name in ("dashboard.html", "..%2f__init__.py", "%2e%2e%2fgateway.py", "nope.js"):
            resp = await http.get(f"/static/{name}")
            assert resp.status == 404, name
            assert (await resp.json())["error"] == "not_found"
        resp = await http.get("/static/../gateway.py")
        assert resp.status == 404


async def test_tracebacks_stay_home_unless_exposed(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        resp = await http.post("/flow/boom?wait=5", json=1)
        doc = await _json(resp, 500)
        assert doc["error"] == "run_failed" and doc["vertex"] == "explode"
        assert doc["type"] == "ValueError" and doc["message"] == "on purpose"
        assert "attempts" in doc
        assert "traceback" not in doc and "Traceback" not in await resp.text()
        state = await _json(await http.get(f"/flow/boom/run/{doc['run_id']}"), 200)
        assert state["error"]["type"] == "ValueError" and "traceback" not in state["error"]
        assert ".py" not in json.dumps(state)
        # the Python client reads Redis itself and keeps it
        try:
            await stack.client.result(doc["run_id"], timeout=T)
        except aioflow.RunFailed as e:
            assert "Traceback" in e.traceback and "on purpose" in e.traceback
        else:
            raise AssertionError("the run did not fail")
    async with gateway(redis_url, expose_tracebacks=True) as (http, _):
        doc = await _json(await http.post("/flow/boom?wait=5", json=1), 500)
        assert "Traceback" in doc["traceback"]
        state = await _json(await http.get(f"/flow/boom/run/{doc['run_id']}"), 200)
        assert "Traceback" in state["error"]["traceback"]


async def test_callbacks_to_loopback_are_refused_at_submit(redis_url: str, redis: Redis) -> None:
    async with gateway(redis_url) as (http, _):
        for url in (
            "http://127.0.0.1:9/cb",
            "http://localhost:9/cb",
            "http://[::1]:9/cb",
            "http://[::ffff:127.0.0.1]:9/cb",
            "http://0.0.0.0:9/cb",
            "ftp://example.com/cb",
        ):
            resp = await http.post("/flow/echo", json=1, headers={"X-Callback-Url": url})
            doc = await _json(resp, 400)
            assert doc["error"] == "invalid_callback_url", (url, doc)
        assert int(await redis.zcard("af:{echo:0}:i")) == 0


class Receiver:
    """A local HTTP server that records what it is sent."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/cb", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")


async def test_signed_callback_verified_by_receiver(redis_url: str) -> None:
    receiver = Receiver()
    secret = "cb-secret,older"
    async with (
        TestServer(receiver.app) as server,
        gateway(redis_url, hmac_secret=secret, callback_allow_private=True) as (http, stack),
    ):
        body = b'{"n": 5}'
        headers = {
            "Content-Type": "application/json",
            "X-Callback-Url": str(server.make_url("/cb")),
            "X-Aioflow-Signature": sign(body, "cb-secret"),
        }
        doc = await _json(await http.post("/flow/echo", data=body, headers=headers), 202)
        await wait_until(lambda: len(receiver.got) == 1, timeout=T, what="the callback")
        got_headers, got_body = receiver.got[0]
        # what a receiver does: verify with the shared secret, within a tolerance
        sig = verify(
            got_headers["X-Aioflow-Signature"],
            got_body,
            parse_secrets(secret)[:1],
            now=time.time(),
            tolerance=300,
        )
        assert abs(sig.timestamp - time.time()) < 60
        assert json.loads(got_body) == {
            "run_id": doc["run_id"],
            "flow": "echo",
            "status": "completed",
            "result": {"got": {"n": 5}},
        }
        assert got_headers["X-Run-Id"] == doc["run_id"]


async def test_callback_checked_again_at_delivery(redis_url: str) -> None:
    """A run submitted straight to Redis (no gateway check) with a loopback callback:
    the worker refuses to deliver it and records why."""
    receiver = Receiver()
    async with TestServer(receiver.app) as server, running(make_flows()[:1], redis_url) as s:
        rid = await s.client.submit("echo", 1, callback_url=str(server.make_url("/cb")))
        assert await s.client.result(rid, timeout=T) == {"got": 1}

        async def recorded() -> bool:
            return (await s.client.state(rid)).callback is not None

        await wait_until(recorded, timeout=T, what="callback outcome recorded")
        cb = (await s.client.state(rid)).callback
        assert cb is not None and cb["delivered"] is False and cb["attempts"] == 0
        assert "refused" in cb["error"] and "loopback" in cb["error"]
        assert receiver.got == []

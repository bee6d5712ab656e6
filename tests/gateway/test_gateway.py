"""The HTTP gateway, in-process (aiohttp test server) with an in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

import aioflow
from aioflow.gateway.routes import create_app
from tests.engine_helpers import Stack, running

T = 10.0
HttpClient = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def gateway(
    flows: Sequence[aioflow.Flow], url: str, **settings: Any
) -> AsyncIterator[tuple[HttpClient, Stack]]:
    """A worker serving ``flows`` and the gateway app around the same Redis."""
    async with running(flows, url) as stack:
        app = create_app(
            stack.redis, flows=list(flows), settings=aioflow.Settings(redis_url=url, **settings)
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


def make_flows() -> list[aioflow.Flow]:
    """Flows used by most tests: a diamond, a bytes flow, a failing flow, an echo."""
    diamond = aioflow.Flow("diamond")

    @diamond.node
    async def top(x: dict[str, int]) -> int:
        return x["n"] + 1

    @diamond.node(after=top)
    async def left(x: int) -> int:
        return x * 10

    @diamond.node(after=top)
    async def right(x: int) -> int:
        return x * 100

    @diamond.node(after=[left, right])
    async def join(d: dict[str, int]) -> dict[str, int]:
        return {"total": d["left"] + d["right"]}

    raw = aioflow.Flow("raw")

    @raw.node
    async def flip(x: bytes) -> bytes:
        assert isinstance(x, bytes)
        return x[::-1]

    failing = aioflow.Flow("failing")

    @failing.node
    async def ok(x: Any) -> Any:
        return x

    def deep_failure(x: Any) -> None:
        raise RuntimeError("it broke")

    @failing.node(after=ok)
    async def breaks(x: Any) -> None:
        deep_failure(x)

    echo = aioflow.Flow("echo")

    @echo.node
    async def show(x: Any, ctx: aioflow.Context) -> dict[str, Any]:
        return {"data": x, "options": ctx.options, "run_id": ctx.run_id}

    return [diamond, raw, failing, echo]


async def _json_body(resp: ClientResponse) -> Any:
    text = await resp.text()
    assert resp.content_type == "application/json", (resp.status, text)
    return json.loads(text)


async def assert_json_error(resp: ClientResponse, *statuses: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status in statuses, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text
    doc = json.loads(text)
    assert isinstance(doc, dict)
    assert isinstance(doc.get("error"), str) and doc["error"]
    assert "detail" in doc
    return doc


async def test_post_starts_a_run(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post("/flow/diamond", json={"n": 1})
        assert resp.status == 202
        doc = await _json_body(resp)
        run_id = doc["run_id"]
        assert resp.headers["X-Run-Id"] == run_id
        assert run_id.startswith("diamond.0.")
        assert await stack.client.result(run_id, timeout=T) == {"total": 220}


async def test_post_wait_returns_the_result(any_redis_url: str) -> None:
    async with gateway(make_flows(), any_redis_url) as (http, _):
        resp = await http.post("/flow/diamond?wait=5", json={"n": 2})
        assert resp.status == 200
        assert await _json_body(resp) == {"total": 330}
        assert resp.headers["X-Run-Id"].startswith("diamond.")


async def test_bytes_in_and_out_are_raw(redis_url: str) -> None:
    payload = bytes(range(256))
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.post(
            "/flow/raw?wait=5",
            data=payload,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status == 200
        assert resp.content_type == "application/octet-stream"
        assert await resp.read() == payload[::-1]


async def test_non_json_body_arrives_as_bytes(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.post(
            "/flow/echo?wait=5", data=b"plain text", headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 200
        doc = await _json_body(resp)
        # bytes nested in a JSON document are written {"$bytes": base64}
        assert doc["data"] == {"$bytes": "cGxhaW4gdGV4dA=="}


async def test_failing_run_with_wait(any_redis_url: str) -> None:
    async with gateway(make_flows(), any_redis_url) as (http, _):
        resp = await http.post("/flow/failing?wait=5", json={"a": 1})
        assert resp.status == 500
        doc = await _json_body(resp)
        assert doc["error"] == "run_failed"
        assert doc["vertex"] == "breaks"
        assert doc["type"] == "RuntimeError"
        assert doc["message"] == "it broke"
        assert doc["run_id"] == resp.headers["X-Run-Id"]
        assert "breaks" in doc["detail"]


async def test_a_wait_that_is_not_a_number_is_refused(redis_url: str) -> None:
    """A NaN or infinite wait would never end (its timer never fires), a negative one
    means nothing: each is refused like any non-number, and no run starts; a large
    finite one is capped at 300 s."""
    async with gateway(make_flows(), redis_url) as (http, stack):
        for bad in ("nan", "NaN", "-nan", "soon", "inf", "-inf", "1e400", "-1", "-0.5", ""):
            resp = await http.post(f"/flow/diamond?wait={bad}", json={"n": 1})
            body = await assert_json_error(resp, 400)
            assert body["error"] == "invalid_wait", body
            assert "wait must be a number" in body["detail"], body
            assert "finite and >= 0" in body["detail"], body
        runs, _ = await stack.client.runs("diamond")
        assert runs == []
        async with asyncio.timeout(T):
            resp = await http.post("/flow/diamond?wait=1e9", json={"n": 2})
            assert resp.status == 200 and await _json_body(resp) == {"total": 330}
            resp = await http.post("/flow/diamond?wait=0", json={"n": 3})
            assert resp.status in (200, 202), await resp.text()


async def test_wait_ending_before_the_run_answers_202(redis_url: str) -> None:
    slow = aioflow.Flow("slow")
    release = asyncio.Event()

    @slow.node
    async def hold(x: int) -> int:
        await release.wait()
        return x + 1

    async with gateway([slow], redis_url) as (http, stack):
        try:
            resp = await http.post("/flow/slow?wait=0.2", json=1)
            assert resp.status == 202
            doc = await _json_body(resp)
            assert doc["run_id"] == resp.headers["X-Run-Id"]
        finally:
            release.set()
        assert await stack.client.result(doc["run_id"], timeout=T) == 2


async def test_run_state(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post("/flow/diamond", json={"n": 0})
        run_id = (await _json_body(resp))["run_id"]
        await stack.client.result(run_id, timeout=T)
        resp = await http.get(f"/flow/diamond/run/{run_id}")
        assert resp.status == 200
        doc = await _json_body(resp)
        assert doc["run_id"] == run_id
        assert doc["flow"] == "diamond"
        assert doc["status"] == "completed"
        assert doc["result"] == {"total": 110}
        assert set(doc["vertices"]) == {"top", "left", "right", "join"}
        assert all(v["status"] == "completed" for v in doc["vertices"].values())


async def test_failed_run_state(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post("/flow/failing", json=None)
        run_id = (await _json_body(resp))["run_id"]
        with pytest.raises(aioflow.RunFailed):
            await stack.client.result(run_id, timeout=T)
        doc = await _json_body(await http.get(f"/flow/failing/run/{run_id}"))
        assert doc["status"] == "failed"
        assert doc["vertices"]["breaks"]["status"] == "failed"
        assert doc["error"]["vertex"] == "breaks"
        assert "result" not in doc


async def test_unknown_flow_is_404(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        for resp in [
            await http.post("/flow/nope", json=1),
            await http.post("/flow/nope?wait=1", json=1),
            await http.get("/flow/nope"),
        ]:
            doc = await assert_json_error(resp, 404)
            assert doc["error"] == "unknown_flow"
            assert "nope" in doc["detail"]


async def test_unknown_run_is_404(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        doc = await assert_json_error(await http.get("/flow/diamond/run/diamond.0.missing"), 404)
        assert doc["error"] == "run_not_found"


async def test_malformed_json_is_400(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        for body in [b"{not json", b"[1, 2", b"\xff\xfe", b"{'single': 'quotes'}"]:
            resp = await http.post(
                "/flow/diamond", data=body, headers={"Content-Type": "application/json"}
            )
            await assert_json_error(resp, 400)
        # nothing was started
        runs, _ = await stack.client.runs("diamond")
        assert runs == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/flow/UPPER"),
        ("POST", "/flow/has%20space"),
        ("POST", "/flow/-dash"),
        ("POST", "/flow/" + "x" * 65),
        ("POST", "/flow/%7Bdiamond%7D"),
        ("POST", "/flow/a:b"),
        ("GET", "/flow/UPPER"),
        ("GET", "/flow/UPPER/run/UPPER.0.abc"),
        ("GET", "/flow/diamond/run/not-a-run-id"),
        ("GET", "/flow/diamond/run/diamond.0.bad%20key"),
        ("GET", "/flow/diamond/run/diamond.x.abc"),
        ("GET", "/flow/diamond/run/diamond.99999.abc"),
        ("GET", "/flow/diamond/run/diamond.0." + "k" * 65),
        ("GET", "/flow/diamond/run/diamond.0.a.b"),
        ("GET", "/flow/diamond/run/raw.0.abc"),  # a run id of another flow
        ("GET", "/flow/diamond/run/diamond.0.%7Bx%7D"),
        ("GET", "/flow/diamond/run/diamond.0.%00"),
        ("GET", "/flow/diamond/run/diamond.0.%C3%A9"),
        ("POST", "/flow/diamond/run/garbage/stop"),
        ("POST", "/flow/diamond/run/diamond.0.abc/explode"),
        ("GET", "/flow/diamond/runs?status=bogus"),
        ("GET", "/flow/diamond/runs?limit=x"),
        ("POST", "/flow/diamond?wait=soon"),
        ("GET", "/no/such/route"),
    ],
)
async def test_bad_paths_answer_json_errors(redis_url: str, method: str, path: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.request(method, path, json={"n": 1})
        await assert_json_error(resp, 400, 404)


async def test_body_over_max_body_is_413(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url, max_body=1024) as (http, stack):
        resp = await http.post(
            "/flow/raw", data=b"x" * 4096, headers={"Content-Type": "application/octet-stream"}
        )
        await assert_json_error(resp, 413)
        resp = await http.post("/flow/echo", json={"pad": "y" * 2000})
        await assert_json_error(resp, 413)
        runs, _ = await stack.client.runs("raw")
        assert runs == []
        # a body under the limit is fine
        resp = await http.post(
            "/flow/raw?wait=5",
            data=b"x" * 1000,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status == 200
        assert await resp.read() == b"x" * 1000


async def test_flows_listing_and_definition(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/flows")
        assert resp.status == 200
        doc = await _json_body(resp)
        names = [f["name"] for f in doc["flows"]]
        assert sorted(names) == ["diamond", "echo", "failing", "raw"]
        assert all(f["partitions"] == 1 for f in doc["flows"])

        resp = await http.get("/flow/diamond")
        assert resp.status == 200
        d = await _json_body(resp)
        assert d["name"] == "diamond"
        graph = d["dag"]
        assert [v["name"] for v in graph["vertices"]] == ["top", "left", "right", "join"]
        edges = {(e["from"], e["to"]) for e in graph["edges"]}
        assert edges == {("top", "left"), ("top", "right"), ("left", "join"), ("right", "join")}
        assert graph["entries"] == ["top"]
        assert graph["exits"] == ["join"]


async def test_healthz(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/healthz")
        assert resp.status == 200
        assert (await _json_body(resp))["ok"] is True


async def test_dashboard_is_html(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/")
        assert resp.status == 200
        assert resp.content_type == "text/html"
        text = await resp.text()
        assert "<html" in text.lower()


async def test_query_parameters_become_options(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post("/flow/echo?wait=5&a=1&a=2&b=x%20y&empty=", json={"k": "v"})
        assert resp.status == 200
        doc = await _json_body(resp)
        assert doc["data"] == {"k": "v"}
        assert doc["options"] == {"a": ["1", "2"], "b": ["x y"], "empty": [""]}
        # also without ?wait, and visible in the run's state
        resp = await http.post("/flow/echo?tag=t1", json=None)
        run_id = (await _json_body(resp))["run_id"]
        out = await stack.client.result(run_id, timeout=T)
        assert out["options"] == {"tag": ["t1"]}
        assert (await stack.client.state(run_id)).options == {"tag": ["t1"]}


async def test_caller_chosen_run_id_starts_one_run(redis_url: str) -> None:
    counted = aioflow.Flow("counted")
    calls: list[Any] = []

    @counted.node
    async def count(x: Any) -> int:
        calls.append(x)
        return len(calls)

    async with gateway([counted], redis_url) as (http, stack):
        headers = {"X-Run-Id": "order-42"}
        r1 = await http.post("/flow/counted", json="first", headers=headers)
        assert r1.status == 202
        id1 = (await _json_body(r1))["run_id"]
        assert r1.headers["X-Run-Id"] == id1 == "counted.0.order-42"
        r2 = await http.post("/flow/counted", json="second", headers=headers)
        assert r2.status == 202
        assert (await _json_body(r2))["run_id"] == id1
        assert r2.headers["X-Run-Id"] == id1
        assert await stack.client.result(id1, timeout=T) == 1
        # with ?wait on the existing, finished run: its result, no new run
        r3 = await http.post("/flow/counted?wait=5", json="third", headers=headers)
        assert r3.status == 200
        assert await _json_body(r3) == 1
        assert calls == ["first"]
        runs, _ = await stack.client.runs("counted")
        assert [r.run_id for r in runs] == [id1]


async def test_invalid_caller_run_id_is_400(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        for bad in ["has space", "x" * 65, "a.b", "{tag}", "a/b"]:
            resp = await http.post("/flow/diamond", json={"n": 1}, headers={"X-Run-Id": bad})
            await assert_json_error(resp, 400)
        runs, _ = await stack.client.runs("diamond")
        assert runs == []


async def test_multi_exit_result_with_bytes_over_http(redis_url: str) -> None:
    multi = aioflow.Flow("multi")

    @multi.node
    async def start(x: Any) -> str:
        return "s"

    @multi.node(after=start)
    async def text(x: str) -> str:
        return x + "t"

    @multi.node(after=start)
    async def blob(x: str) -> bytes:
        return b"hi"

    async with gateway([multi], redis_url) as (http, _):
        resp = await http.post("/flow/multi?wait=5", json=None)
        assert resp.status == 200
        assert await _json_body(resp) == {"text": "st", "blob": {"$bytes": "aGk="}}


async def test_control_endpoints(redis_url: str) -> None:
    slow = aioflow.Flow("ctl")
    release = asyncio.Event()

    @slow.node
    async def hold(x: int) -> int:
        await release.wait()
        return x

    async with gateway([slow], redis_url) as (http, stack):
        try:
            run_id = (await _json_body(await http.post("/flow/ctl", json=1)))["run_id"]
            resp = await http.post(f"/flow/ctl/run/{run_id}/stop")
            assert resp.status == 200
            assert (await _json_body(resp))["status"] == "stopped"
            # a second stop is not allowed any more
            doc = await assert_json_error(await http.post(f"/flow/ctl/run/{run_id}/stop"), 409)
            assert doc["error"] == "invalid_transition"
            with pytest.raises(aioflow.RunStopped):
                await stack.client.result(run_id, timeout=T)
        finally:
            release.set()

"""The gateway refuses input outside what it allows with a 400 JSON error that says
what is allowed, never a Python error text, and starts no run on such a request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientResponse

import aioflow
from aioflow.status import Status
from tests.gateway.test_gateway import gateway, make_flows

PYTHON_TEXTS = ("invalid literal", "is not a valid", "could not convert", "Traceback", "Error")


async def refused(resp: ClientResponse, error: str, status: int = 400) -> str:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    doc = json.loads(text)
    assert doc["error"] == error, doc
    assert isinstance(doc["detail"], str) and doc["detail"], doc
    for py in PYTHON_TEXTS:
        assert py not in doc["detail"], doc
    return str(doc["detail"])


async def no_runs(stack: Any, flow: str = "echo") -> None:
    runs, _ = await stack.client.runs(flow)
    assert runs == [], runs


@pytest.mark.parametrize("wait", ["-1", "-0.001", "inf", "-inf", "Infinity", "nan", "1e999", ""])
async def test_a_wait_that_is_negative_or_not_finite_is_400(redis_url: str, wait: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post("/flow/echo", params={"wait": wait}, json={"a": 1})
        detail = await refused(resp, "invalid_wait")
        assert "finite and >= 0" in detail and repr(wait) in detail
        await no_runs(stack)


async def test_a_wait_in_range_is_taken(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.post("/flow/echo", params={"wait": "5"}, json={"a": 1})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["data"] == {"a": 1}
        resp = await http.post("/flow/echo", params={"wait": "0"}, json={"a": 2})
        assert resp.status in (200, 202), await resp.text()


@pytest.mark.parametrize("limit", ["0", "-1", "501", "abc", "1.5", "", " 5", "+5", "1e2", "9" * 30])
async def test_runs_limit_outside_1_to_500_or_not_an_integer_is_400(
    redis_url: str, limit: str
) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/flow/echo/runs", params={"limit": limit})
        detail = await refused(resp, "invalid_limit")
        assert "integer from 1 to 500" in detail, detail


async def test_runs_limit_at_the_bounds_is_taken(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        for i in range(3):
            await stack.client.submit("echo", i)
        for limit, n in (("1", 1), ("500", 3)):
            resp = await http.get("/flow/echo/runs", params={"limit": limit})
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["runs"]) == n


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-5"])
async def test_dead_letters_limit_outside_1_to_1000_is_400(redis_url: str, limit: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/dead-letters", params={"limit": limit})
        detail = await refused(resp, "invalid_limit")
        assert "integer from 1 to 1000" in detail
        for ok in ("1", "1000"):
            resp = await http.get("/dead-letters", params={"limit": ok})
            assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("status", ["bogus", "", "COMPLETED", "done"])
async def test_an_unknown_status_is_400_listing_the_valid_ones(redis_url: str, status: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, _):
        resp = await http.get("/flow/echo/runs", params={"status": status})
        detail = await refused(resp, "invalid_status")
        for s in Status:
            assert s.value in detail, detail
        resp = await http.get("/flow/echo/runs", params={"status": "completed"})
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("body", [b"", b"  \n"])
async def test_an_empty_json_body_is_400(redis_url: str, body: bytes) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        for ctype in ("application/json", "application/json; charset=utf-8"):
            for path in ("/flow/echo", "/flow/echo?wait=5", "/flow/echo/batch"):
                resp = await http.post(path, data=body, headers={"Content-Type": ctype})
                detail = await refused(resp, "empty_body")
                assert "null" in detail, detail
        await no_runs(stack)
        # null is an input; an empty body of another type is empty bytes
        resp = await http.post(
            "/flow/echo?wait=5", data=b"null", headers={"Content-Type": "application/json"}
        )
        assert resp.status == 200 and (await resp.json())["data"] is None
        resp = await http.post(
            "/flow/echo", data=b"", headers={"Content-Type": "application/octet-stream"}
        )
        assert resp.status == 202, await resp.text()


async def test_malformed_json_is_400_invalid_json(redis_url: str) -> None:
    async with gateway(make_flows(), redis_url) as (http, stack):
        resp = await http.post(
            "/flow/echo", data=b"{oops", headers={"Content-Type": "application/json"}
        )
        assert "malformed JSON body" in await refused(resp, "invalid_json")
        await no_runs(stack)


async def test_value_too_large_names_no_run(redis_url: str) -> None:
    """The input is refused before any run exists: the error must not hand out a run
    id (a caller would look it up and find nothing)."""
    async with gateway(make_flows(), redis_url, max_value=100) as (http, stack):
        big = {"pad": "x" * 500}
        resp = await http.post("/flow/echo", json=big, headers={"X-Run-Id": "big-1"})
        detail = await refused(resp, "value_too_large", 413)
        assert "max_value=100" in detail and "no run" in detail, detail
        assert "big-1" not in detail and "echo." not in detail, detail
        resp = await http.post("/flow/echo", json=big)
        detail = await refused(resp, "value_too_large", 413)
        assert "echo." not in detail, detail
        resp = await http.get("/flow/echo/run/big-1")
        assert resp.status == 404
        await no_runs(stack)
        async with aioflow.Client(redis_url) as c:
            c.engine.max_value = 100  # as AIOFLOW_MAX_VALUE=100 would
            with pytest.raises(aioflow.LimitExceeded) as e:
                await c.submit("echo", big, run_id="big-2")
        assert "big-2" not in str(e.value) and "echo." not in str(e.value)

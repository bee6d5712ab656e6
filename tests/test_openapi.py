"""GET /openapi.json describes exactly the gateway's routes, and schemathesis fuzzes
a live gateway (on a real Redis, a real worker) from it: no 5xx but the documented
``run_failed`` of a flow that fails on purpose, every answer as documented."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import strategies as st
from redis.asyncio import Redis
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import aioflow
from aioflow import openapi
from aioflow.gateway import create_app
from tests.engine_helpers import running
from tests.test_gateway_security import make_flows


def routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def test_document_describes_every_route_and_no_other(redis: Redis) -> None:
    app = create_app(redis, flows=[])
    doc = openapi.build()
    assert routes(app) == documented(doc)
    assert doc["openapi"].startswith("3.1")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "503" in op["responses"], (method, path)
            assert op["security"] == [] or "401" in op["responses"], (method, path)


async def test_document_is_served(redis: Redis) -> None:
    async with TestClient(TestServer(create_app(redis, flows=[]))) as http:
        resp = await http.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == openapi.build()


FLOWS = ["echo", "boom", "idle"]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, examples: int) -> Counter[tuple[str, int]]:
    """Every operation, up to ``examples`` generated cases each; answers how often each
    (operation, status) was seen."""
    schema = schemathesis.openapi.from_dict(openapi.build())
    seen: Counter[tuple[str, int]] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(), flow=st.sampled_from([*FLOWS, None]))
        def one(case: schemathesis.Case[Any], flow: str | None) -> None:
            if flow is not None and "name" in (case.path_parameters or {}):
                if case.operation.path.startswith("/flow/"):
                    case.path_parameters = {**(case.path_parameters or {}), "name": flow}
            if case.headers and "X-Callback-Url" in case.headers:
                # never let a generated URL send a worker anywhere: a loopback one is refused
                case.headers["X-Callback-Url"] = "http://127.0.0.1:9/cb"
            if case.query and "wait" in case.query:
                with contextlib.suppress(TypeError, ValueError):
                    # long enough for echo and boom to end, short for idle (never ends)
                    wait = 0.1 if case.path_parameters.get("name") == "idle" else 3.0
                    case.query["wait"] = min(abs(float(case.query["wait"])), wait)
            resp = case.call(base_url=base_url, session=session, timeout=10)
            seen[case.operation.label, resp.status_code] += 1
            if resp.status_code >= 500:
                try:
                    doc = resp.json()
                except ValueError:
                    doc = {}
                assert resp.status_code == 500 and doc.get("error") == "run_failed", (
                    case.method,
                    case.formatted_path,
                    resp.status_code,
                    resp.text[:500],
                )
                assert case.path_parameters and case.path_parameters["name"] == "boom"
            case.validate_response(resp, checks=CHECKS)

        one()
    return seen


@contextlib.asynccontextmanager
async def live_gateway(url: str) -> AsyncIterator[str]:
    flows = make_flows()
    async with running(flows[:2], url) as stack:
        app = create_app(stack.redis, flows=flows, settings=aioflow.Settings(redis_url=url))
        async with TestServer(app, host="127.0.0.1") as server:
            yield str(server.make_url("")).rstrip("/")


async def test_fuzz_the_gateway_from_its_document(redis_url: str) -> None:
    async with live_gateway(redis_url) as base_url:
        seen = await asyncio.to_thread(fuzz, base_url, 15)
    assert sum(seen.values()) >= 100, seen
    # it reached real flows and runs, not only 404s
    assert {200, 400, 404} <= {status for _, status in seen}, seen
    assert seen["POST /flow/{name}", 202] + seen["POST /flow/{name}", 200], seen
    assert seen["GET /flow/{name}", 200], seen

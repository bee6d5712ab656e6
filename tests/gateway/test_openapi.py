"""GET /openapi.json describes exactly the gateway's routes, and schemathesis fuzzes
a live gateway (on a real Redis, a real worker) from it: no 5xx but the documented
``run_failed`` of a flow that fails on purpose, every answer as documented. A second
run generates input the document forbids (schemathesis' negative mode): every such
request is refused with a documented 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import hypothesis
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import aioflow
from aioflow.gateway import openapi
from aioflow.gateway.routes import create_app
from tests.engine_helpers import running
from tests.gateway.test_gateway_security import make_flows


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


def _param(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    for p in doc["paths"][path][method]["parameters"]:
        if p["name"] == name:
            schema: dict[str, Any] = p["schema"]
            return doc["components"]["schemas"]["Status"] if "$ref" in schema else schema
    raise AssertionError(f"{method} {path} has no parameter {name}")


class Line(BaseModel):
    sku: str = Field(min_length=1, max_length=20)
    qty: int = Field(ge=1, le=1000)


class Order(BaseModel):
    order_id: UUID
    placed_at: datetime
    lines: list[Line] = Field(max_length=5)
    channel: Literal["web", "shop"] = "web"
    note: str | None = None


class Receipt(BaseModel):
    order_id: UUID
    units: int
    lines: list[Line]


def typed_flow() -> aioflow.Flow:
    """A flow whose entry takes an Order and whose exit returns a Receipt."""
    typed = aioflow.Flow("typed")

    @typed.node
    async def receive(order: Order) -> Receipt:
        return Receipt(
            order_id=order.order_id, units=sum(x.qty for x in order.lines), lines=order.lines
        )

    return typed


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def resolve(doc: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = doc
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_a_typed_flow_has_its_own_operation_with_its_schemas() -> None:
    flows = (typed_flow(), *make_flows())
    doc = openapi.build(flows)
    op = doc["paths"]["/flow/typed"]["post"]
    assert op["operationId"] == "start_typed"
    assert op["requestBody"]["required"] is True
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(doc, body["$ref"])["title"] == "Order"
    result = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert resolve(doc, result["$ref"])["title"] == "Receipt"
    assert resolve(doc, op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"])
    # the nested model is hoisted beside it: every reference resolves, no $defs is left
    assert "$defs" not in str(doc)
    for pointer in refs(doc):
        assert resolve(doc, pointer), pointer
    lines = resolve(doc, body["$ref"])["properties"]["lines"]["items"]["$ref"]
    assert resolve(doc, lines)["properties"]["qty"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "title": "Qty",
    }
    # echo, boom and idle say nothing of their types: no operation of their own
    assert [p for p in doc["paths"] if p.startswith("/flow/") and "{" not in p] == ["/flow/typed"]
    # the generic operation answers 422 too (a typed flow started by its name)
    assert "422" in doc["paths"]["/flow/{name}"]["post"]["responses"]


def test_a_bytes_flow_takes_and_gives_octet_streams() -> None:
    raw = aioflow.Flow("raw")

    @raw.node
    async def flip(b: bytes) -> bytes:
        return b[::-1]

    op = openapi.build((raw,))["paths"]["/flow/raw"]["post"]
    body = op["requestBody"]["content"]
    assert body["application/octet-stream"] == {"schema": {"type": "string"}}
    assert body["application/json"] == {"schema": {"type": "string"}}  # converted to bytes
    assert list(op["responses"]["200"]["content"]) == ["application/octet-stream"]


async def test_the_served_document_holds_the_apps_typed_flows(redis: Redis) -> None:
    flows = [typed_flow(), *make_flows()]
    app = create_app(redis, flows=flows)
    doc = openapi.build(tuple(flows))
    # a flow's own path is an instance of the generic route, which serves it
    served = {
        ("POST", "/flow/{name}") if p == ("POST", "/flow/typed") else p for p in documented(doc)
    }
    assert routes(app) == served
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/openapi.json")
        assert await resp.json() == doc


def test_document_states_what_input_is_allowed() -> None:
    doc = openapi.build()
    assert _param(doc, "/flow/{name}", "post", "wait") == {"type": "number", "minimum": 0}
    runs = _param(doc, "/flow/{name}/runs", "get", "limit")
    assert runs == {"type": "integer", "minimum": 1, "maximum": 500}
    dead = _param(doc, "/dead-letters", "get", "limit")
    assert dead == {"type": "integer", "minimum": 1, "maximum": 1000}
    status = _param(doc, "/flow/{name}/runs", "get", "status")
    assert status["enum"] == [s.value for s in aioflow.Status]
    run_id = _param(doc, "/flow/{name}/run/{run_id}", "get", "run_id")
    assert re.fullmatch(run_id["pattern"], "orders.3.order-42")
    assert re.fullmatch(run_id["pattern"], "order-42")
    assert not re.fullmatch(run_id["pattern"], "orders.x.order-42")
    bad = doc["paths"]["/flow/{name}"]["post"]["responses"]["400"]
    codes = bad["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
    assert {"empty_body", "invalid_wait", "invalid_json"} <= set(codes["enum"])


FLOWS = ["echo", "boom", "idle", "typed"]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _tame_wait(case: schemathesis.Case[Any]) -> None:
    """A valid ``wait`` long enough for echo and boom to end, short for idle (it never
    ends); an invalid one stays as it is, to be refused."""
    if case.query and "wait" in case.query:
        try:
            wait = float(case.query["wait"])
        except (TypeError, ValueError):
            return
        if math.isfinite(wait) and wait >= 0:
            name = (case.path_parameters or {}).get("name")
            case.query["wait"] = min(wait, 0.1 if name == "idle" else 3.0)


def _real_flow(case: schemathesis.Case[Any], flow: str | None) -> None:
    """Aim a case with a valid flow name at one of the served flows (or leave it)."""
    name = (case.path_parameters or {}).get("name")
    if flow is None or not isinstance(name, str) or not case.operation.path.startswith("/flow/"):
        return
    if re.fullmatch(openapi.NAME, name):
        case.path_parameters = {**(case.path_parameters or {}), "name": flow}


def fuzz(base_url: str, examples: int) -> Counter[tuple[str, int]]:
    """Every operation, up to ``examples`` generated cases each; answers how often each
    (operation, status) was seen."""
    schema = schemathesis.openapi.from_dict(served_document())
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
            _tame_wait(case)
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


def served_flows() -> list[aioflow.Flow]:
    """What the live gateway serves: the typed flow, then echo, boom and idle."""
    return [typed_flow(), *make_flows()]


def served_document() -> dict[str, Any]:
    """The live gateway's document: the typed flow has its own operation."""
    return openapi.build(tuple(served_flows()))


@contextlib.asynccontextmanager
async def live_gateway(url: str) -> AsyncIterator[str]:
    flows = served_flows()
    async with running(flows[:3], url) as stack:
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


# a refusal is any of these; 5xx never
REFUSED = ["400", "404", "405", "409", "413", "415", "422"]


def unguarded() -> dict[str, Any]:
    """The document without its security requirements: auth has tests of its own
    (test_gateway_security, test_hmac), and the gateway fuzzed here wants none, so
    missing credentials must not count as input it should refuse."""
    doc = served_document()
    for ops in doc["paths"].values():
        for op in ops.values():
            op["security"] = []
            for code in ("401", "403"):
                op["responses"].pop(code, None)
    del doc["components"]["securitySchemes"]
    return doc


def fuzz_negative(base_url: str, examples: int) -> Counter[tuple[str, int]]:
    """Up to ``examples`` cases per operation of input the document forbids; each must
    be refused with a 4xx the document lists (never a 5xx). Answers how often each
    (operation, status) was seen."""
    schema = schemathesis.openapi.from_dict(unguarded())
    schema.config.checks.negative_data_rejection.expected_statuses = REFUSED
    seen: Counter[tuple[str, int]] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        if not operation.path_parameters and not operation.query and not operation.body:
            continue  # nothing in it can be invalid (GET /, /healthz, /flows...)

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(
            case=operation.as_strategy(GenerationMode.NEGATIVE),
            flow=st.sampled_from([*FLOWS, None]),
        )
        def one(case: schemathesis.Case[Any], flow: str | None) -> None:
            _real_flow(case, flow)
            if case.headers and "X-Callback-Url" in case.headers:
                case.headers["X-Callback-Url"] = "http://127.0.0.1:9/cb"
            _tame_wait(case)
            resp = case.call(base_url=base_url, session=session, timeout=10)
            seen[case.operation.label, resp.status_code] += 1
            assert resp.status_code < 500, (
                case.method,
                case.formatted_path,
                case.query,
                resp.status_code,
                resp.text[:500],
            )
            case.validate_response(resp, checks=[negative_data_rejection, *CHECKS])

        one()
    return seen


async def test_fuzz_the_gateway_with_invalid_input(redis_url: str) -> None:
    async with live_gateway(redis_url) as base_url:
        seen = await asyncio.to_thread(fuzz_negative, base_url, 12)
    refused = {status for _, status in seen}
    assert refused <= {int(s) for s in REFUSED} | {200, 202}, seen
    # the query parameters' own refusals were reached, not only bad paths
    assert seen["GET /flow/{name}/runs", 400], seen
    assert seen["POST /flow/{name}", 400], seen
    assert seen["GET /dead-letters", 400], seen


def fuzz_typed(base_url: str, examples: int, mode: GenerationMode) -> Counter[tuple[bool, int]]:
    """``POST /flow/typed?wait=3`` with bodies generated from its schema (``mode``),
    each checked against the model itself: a body the model accepts must run to its
    Receipt (200), one it refuses must be 422 with the errors (bytes that are no JSON:
    400). Answers how often each (valid, status) was seen."""
    schema = schemathesis.openapi.from_dict(unguarded())
    operation = schema["/flow/typed"]["POST"]
    seen: Counter[tuple[bool, int]] = Counter()
    session = requests.Session()

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def one(case: schemathesis.Case[Any]) -> None:
        case.query = {"wait": 3}  # only the body is under test
        if case.headers:
            case.headers.clear()
        try:
            order: Order | None = Order.model_validate(case.body)
        except ValidationError:
            order = None
        valid = order is not None
        resp = case.call(base_url=base_url, session=session, timeout=10)
        seen[valid, resp.status_code] += 1
        if valid:
            assert resp.status_code == 200, (case.body, resp.status_code, resp.text[:500])
            receipt = Receipt.model_validate(resp.json())
            assert order is not None and receipt.order_id == order.order_id
        elif isinstance(case.body, bytes):  # not JSON at all: refused before any check
            assert resp.status_code == 400, (case.body, resp.status_code, resp.text[:500])
            assert resp.json()["error"] in ("invalid_json", "empty_body")
        else:
            assert resp.status_code == 422, (case.body, resp.status_code, resp.text[:500])
            doc = resp.json()
            assert doc["error"] == "invalid_input" and doc["detail"], doc
        case.validate_response(resp, checks=CHECKS)

    one()
    return seen


async def test_generated_bodies_of_a_typed_flow_run_and_invalid_ones_are_422(
    redis_url: str,
) -> None:
    async with live_gateway(redis_url) as base_url:
        good = await asyncio.to_thread(fuzz_typed, base_url, 25, GenerationMode.POSITIVE)
        bad = await asyncio.to_thread(fuzz_typed, base_url, 25, GenerationMode.NEGATIVE)
    assert good[True, 200] >= 20 and not good[False, 422], good
    assert bad[False, 422] >= 5, bad  # the others: bytes that are no JSON (400)

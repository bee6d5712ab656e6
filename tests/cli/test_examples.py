"""The KYC examples (goflow's README flows) and the typed orders run on a real worker and give the
results their stand-in functions imply, checked value by value."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

import aioflow
from aioflow.core import codec
from aioflow.store.keys import RunId
from tests.cli.test_cli_client import cli_in_thread
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until
from tests.served import served

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
USERS = ["alice", "blank-bob", "impostor-carol"]


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (examples are not a package), with
    ``examples/`` on the import path as ``aioflow dev examples/x.py:app`` has it."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"aioflow_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_of(module: ModuleType) -> aioflow.App:
    app = module.app
    assert isinstance(app, aioflow.App)
    return app


async def run(s: Stack, flow: str, data: Any) -> tuple[Any, RunId]:
    run_id = await s.client.submit(flow, data)
    return await s.client.result(run_id, timeout=10), RunId.parse(run_id)


async def output(s: Stack, rid: RunId, address: str) -> Any:
    """The stored output of one vertex of a run (``o:<address>`` in the run hash)."""
    raw = cast(bytes | None, await s.redis.hget(rid.run, f"o:{address}"))
    assert raw is not None, f"vertex {address!r} has no output"
    return codec.decode(raw)


async def executed(s: Stack, rid: RunId) -> set[str]:
    state = await s.client.state(str(rid))
    return {a for a, v in state.vertices.items() if v.status == "completed"}


@pytest.mark.parametrize(
    "name",
    [
        "kyc_sequential",
        "kyc_branching",
        "kyc_subdag",
        "kyc_conditional",
        "kyc_conditional_two",
        "kyc_foreach",
        "typed_orders",
    ],
)
def test_example_is_an_app_with_curl_docstring(name: str) -> None:
    module = load(name)
    app = app_of(module)
    assert len(app.flows) == 1
    flow = app.flows[0]
    doc = module.__doc__ or ""
    assert f"aioflow dev examples/{name}.py:app" in doc
    assert f"/flow/{flow.name}" in doc and "curl" in doc


async def test_kyc_sequential(redis_url: str) -> None:
    app = app_of(load("kyc_sequential"))
    flow = app.flows[0]
    assert list(flow.vertices) == ["get-kyc-image", "face-detect", "mark-profile"]
    async with running(app.flows, redis_url) as s:
        result, rid = await run(s, flow.name, {"user": "alice"})
        assert result == {"user": "alice", "kyc": "verified"}
        assert await output(s, rid, "get-kyc-image") == {
            "user": "alice",
            "url": "https://kyc.example/images/alice.jpg?signature=stub",
        }
        assert await output(s, rid, "face-detect") == {"user": "alice", "faces": 1}
        assert await executed(s, rid) == {"get-kyc-image", "face-detect", "mark-profile"}

        result, rid = await run(s, flow.name, {"user": "blank-bob"})
        assert result == {"user": "blank-bob", "kyc": "rejected"}
        assert await output(s, rid, "face-detect") == {"user": "blank-bob", "faces": 0}


async def test_kyc_branching(redis_url: str) -> None:
    app = app_of(load("kyc_branching"))
    flow = app.flows[0]
    assert set(flow.vertices) == {"get-kyc-image", "face-detect", "face-match", "mark-profile"}
    expected = {"alice": "verified", "blank-bob": "rejected", "impostor-carol": "rejected"}
    async with running(app.flows, redis_url) as s:
        for user, kyc in expected.items():
            result, rid = await run(s, flow.name, {"user": user})
            assert result == {"user": user, "kyc": kyc}
            assert await output(s, rid, "face-detect") == {
                "user": user,
                "faces": 0 if "blank" in user else 1,
            }
            assert await output(s, rid, "face-match") == {
                "user": user,
                "score": 0.12 if "impostor" in user else 0.97,
            }


async def test_kyc_subdag(redis_url: str) -> None:
    app = app_of(load("kyc_subdag"))
    flow = app.flows[0]
    assert flow.vertices["verify-image"].kind == "subdag"
    expected = {"alice": "success", "blank-bob": "failure", "impostor-carol": "failure"}
    async with running(app.flows, redis_url) as s:
        for user, status in expected.items():
            result, rid = await run(s, flow.name, {"user": user})
            kyc = "verified" if status == "success" else "rejected"
            assert result == {"user": user, "kyc": kyc}
            # the subdag vertex's output is its single exit's value (generate-result)
            assert await output(s, rid, "verify-image") == {"user": user, "status": status}
            assert await output(s, rid, "verify-image[]/generate-result") == {
                "user": user,
                "status": status,
            }
            assert await output(s, rid, "verify-image[]/face-detect") == {
                "user": user,
                "faces": 0 if "blank" in user else 1,
            }
            assert await executed(s, rid) == {
                "get-image",
                "verify-image",
                "verify-image[]/verify-url",
                "verify-image[]/face-detect",
                "verify-image[]/face-match",
                "verify-image[]/generate-result",
                "mark-profile",
            }


async def test_kyc_conditional(redis_url: str) -> None:
    app = app_of(load("kyc_conditional"))
    flow = app.flows[0]
    branch = "verify-image[]/handle-face-detect-response"
    async with running(app.flows, redis_url) as s:
        result, rid = await run(s, flow.name, {"user": "alice"})
        assert result == {"user": "alice", "kyc": "verified"}
        assert await output(s, rid, branch) == {"pass": {"user": "alice", "score": 0.97}}
        assert await output(s, rid, "verify-image") == {
            "user": "alice",
            "status": "success",
            "face-matched": True,
        }
        assert f"{branch}[pass]/face-match" in await executed(s, rid)

        # no face: the branch chooses nothing, face-match never runs, the flow goes on
        result, rid = await run(s, flow.name, {"user": "blank-bob"})
        assert result == {"user": "blank-bob", "kyc": "rejected"}
        assert await output(s, rid, branch) == {}
        assert await output(s, rid, "verify-image") == {
            "user": "blank-bob",
            "status": "failure",
            "face-matched": False,
        }
        done = await executed(s, rid)
        assert not any("face-match" in a for a in done)
        assert "mark-profile" in done

        result, rid = await run(s, flow.name, {"user": "impostor-carol"})
        assert result == {"user": "impostor-carol", "kyc": "rejected"}
        assert await output(s, rid, branch) == {"pass": {"user": "impostor-carol", "score": 0.12}}


async def test_kyc_conditional_two(redis_url: str) -> None:
    app = app_of(load("kyc_conditional_two"))
    flow = app.flows[0]
    branch = "verify-image[]/handle-face-detect-response"
    async with running(app.flows, redis_url) as s:
        result, rid = await run(s, flow.name, {"user": "alice"})
        assert result == {"user": "alice", "kyc": "verified"}
        assert await output(s, rid, branch) == {"pass": {"user": "alice", "score": 0.97}}
        done = await executed(s, rid)
        assert f"{branch}[pass]/face-match" in done
        assert not any("create-user" in a for a in done)

        result, rid = await run(s, flow.name, {"user": "blank-bob"})
        assert result == {"user": "blank-bob", "kyc": "pending-review"}
        assert await output(s, rid, branch) == {
            "fail": {"user": "blank-bob", "created": True, "review": "manual"}
        }
        assert await output(s, rid, "verify-image") == {
            "user": "blank-bob",
            "status": "review",
            "review": "manual",
        }
        done = await executed(s, rid)
        assert f"{branch}[fail]/create-user" in done
        assert not any("face-match" in a for a in done)

        result, rid = await run(s, flow.name, {"user": "impostor-carol"})
        assert result == {"user": "impostor-carol", "kyc": "rejected"}


async def test_kyc_foreach(redis_url: str) -> None:
    app = app_of(load("kyc_foreach"))
    flow = app.flows[0]
    assert flow.vertices["for-each-user-verify"].kind == "foreach"
    async with running(app.flows, redis_url) as s:
        result, rid = await run(s, flow.name, {"users": USERS})
        assert result == {
            "alice": {"user": "alice", "kyc": "verified"},
            "blank-bob": {"user": "blank-bob", "kyc": "rejected"},
            "impostor-carol": {"user": "impostor-carol", "kyc": "rejected"},
        }
        for user, status in [
            ("alice", "success"),
            ("blank-bob", "failure"),
            ("impostor-carol", "failure"),
        ]:
            scope = f"for-each-user-verify[{user}]/"
            assert await output(s, rid, f"{scope}verify-image") == {
                "user": user,
                "status": status,
            }
            assert await output(s, rid, f"{scope}verify-image[]/verify-url") == {
                "user": user,
                "url": f"https://kyc.example/images/{user}.jpg?signature=stub",
            }
        done = await executed(s, rid)
        assert sum(a.endswith("/mark-profile") for a in done) == 3
        assert sum(a.endswith("/face-match") for a in done) == 3

        result, _ = await run(s, flow.name, {"users": []})
        assert result == {}


async def test_kyc_review_waits_for_the_reviewer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COOL_OFF", "0.05")
    module = load("kyc_review")
    app = app_of(module)
    assert "aioflow dev examples/kyc_review.py:app" in (module.__doc__ or "")
    assert "/events/kyc.reviewed" in (module.__doc__ or "")
    async with running(app.flows, redis_url) as s:
        # a clear score: no reviewer, no wait
        result, _ = await run(s, "kyc-review", {"user_id": "user-1", "score": 0.95})
        assert result == {"user_id": "user-1", "kyc": "verified"}

        # an uncertain one waits, holding nothing, until the reviewer's event
        rid = await s.client.submit("kyc-review", {"user_id": "user-42", "score": 0.5})
        review = "route[review]/manual-review"

        async def waiting() -> bool:
            v = (await s.client.state(rid)).vertices.get(review)
            return v is not None and v.status == "waiting"

        await wait_until(waiting, timeout=10, what="the run waiting for its reviewer")
        sent = await s.client.send_event(
            "kyc.reviewed", {"approved": True}, key="user-42", event_id="rev-981"
        )
        assert sent["resolved"] == 1
        assert await s.client.result(rid, timeout=10) == {"user_id": "user-42", "kyc": "verified"}
        state = await s.client.state(rid)
        assert state.vertices["verify"].child is not None  # the child flow's run

        # a decision sent before the run reaches its wait counts too; a forged
        # document fails the child flow's check
        rid = await s.client.submit("kyc-review", {"user_id": "user-7", "score": 0.5})
        await s.client.send_event("kyc.reviewed", {"approved": True, "forged": True}, key="user-7")
        assert await s.client.result(rid, timeout=10) == {"user_id": "user-7", "kyc": "rejected"}


def _docstring_input(module: ModuleType) -> Any:
    """The JSON body of the example's curl command (its ``-d '...'``)."""
    doc = module.__doc__ or ""
    body = doc[doc.index("-d '") + 4 :]
    return json.loads(body[: body.index("'")])


async def test_typed_orders(redis_url: str) -> None:
    module = load("typed_orders")
    flow = app_of(module).flows[0]
    order = _docstring_input(module)
    async with running([flow], redis_url) as s:
        # by name: JSON in, JSON out (Decimal and UUID as strings, datetime in ISO 8601)
        result, rid = await run(s, flow.name, order)
        assert result == {
            "order_id": "0b7e8a52-3c1f-4c0e-9a43-5f1f2a6d9e01",
            "total": "7.44",
            "deliver_by": "2026-12-12T10:00:00Z",
        }
        assert await output(s, rid, "price") == {
            "order_id": "0b7e8a52-3c1f-4c0e-9a43-5f1f2a6d9e01",
            "placed_at": "2026-12-07T10:00:00Z",
            "net": "6.20",
            "vat": "1.24",
            "shipping": "standard",
        }
        # with the flow object: validated at the door, the result as the exit's type
        receipt = await s.client.execute(flow, {**order, "shipping": "express"}, timeout=10)
        assert isinstance(receipt, module.Receipt)
        assert receipt.total == Decimal("7.44")
        assert receipt.deliver_by == datetime(2026, 12, 8, 10, tzinfo=UTC)
        with pytest.raises(aioflow.InvalidInput) as info:
            await s.client.submit(flow, {**order, "lines": [{"sku": "tea", "qty": 0}]})
        assert {tuple(e["loc"]) for e in info.value.errors} == {
            ("lines", 0, "qty"),
            ("lines", 0, "price"),
        }


async def test_typed_orders_from_the_command_line(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aioflow submit orders`` through the example's gateway: a bad input is the
    gateway's 422, each error on its own line, exit 2 and no run; a good one its receipt."""
    module = load("typed_orders")
    order = _docstring_input(module)
    bad = {**order, "order_id": "nope", "lines": [{"sku": "tea", "qty": 0, "price": "1"}]}
    async with served(app_of(module).flows, redis_url) as srv:

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(cli_in_thread, capsys, *args)

        code, out, err = await cli("submit", "orders", json.dumps(bad), "--url", srv.base)
        assert code == 2 and out == "", err
        lines = err.splitlines()[1:]
        assert len(lines) == 2, err
        assert lines[0].startswith("  order_id: Input should be a valid UUID")
        assert lines[1] == "  lines.0.qty: Input should be greater than or equal to 1"
        assert await srv.stack.client.runs("orders") == ([], None)
        code, out, err = await cli(
            "submit", "orders", json.dumps(order), "--wait", "5", "--url", srv.base
        )
        assert code == 0, err
        assert json.loads(out)["total"] == "7.44"

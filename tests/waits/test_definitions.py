"""Wait, sleep and call vertices as definitions: validated when built, covered by
the flow's version, rebuilt from a description."""

from __future__ import annotations

from typing import Any

import pytest

import aioflow
from aioflow.definitions.plan import compile_dag, dag_from_description
from aioflow.definitions.versions import version_of


def _flow(**wait: Any) -> aioflow.Flow:
    f = aioflow.Flow("w")
    f.wait("w", **wait)
    return f


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "Bad Name"},
        {"event": "x" * 65},
        {"event": "ok", "timeout": 0},
        {"event": "ok", "timeout": -1},
        {"event": "ok", "timeout": True},
        {"event": "ok", "since": "ever"},
        {"key": lambda d: d},  # a key without an event
        {"event": "ok", "default": 1},  # a default without a timeout
        {"event": "ok", "key": lambda a, b, c: a},
        {"event": "ok", "retries": -1},
    ],
)
def test_bad_waits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(aioflow.DefinitionError):
        _flow(**kwargs)


def test_bad_sleeps_calls_and_triggers_are_refused() -> None:
    f = aioflow.Flow("f")
    for kw in ({}, {"seconds": 0}, {"seconds": 1, "until": lambda d: d}, {"until": 5}):
        with pytest.raises(aioflow.DefinitionError):
            f.sleep("s", **kw)
    with pytest.raises(aioflow.DefinitionError, match="needs a Flow"):
        f.call("c", aioflow.Dag())
    with pytest.raises(aioflow.DefinitionError):
        f.wait("bad name!", event="ok")
    with pytest.raises(aioflow.DefinitionError):
        aioflow.Flow("t", on_event="Not.Valid")
    with pytest.raises(aioflow.DefinitionError):
        aioflow.Flow("t", on_event=["a.b", "a.b"])
    assert aioflow.Flow("t", on_event="user.created").on_event == ("user.created",)
    assert aioflow.Flow("t", on_event=["a", "b.c"]).on_event == ("a", "b.c")
    assert aioflow.Flow("t").on_event == ()


def test_the_builders_answer_the_vertex_name_and_chain() -> None:
    child = aioflow.Flow("child")
    child.node("c", lambda d: d)
    f = aioflow.Flow("kyc", on_event="user.created")
    r = f.wait("review", event="kyc.reviewed", key=lambda d: d["u"], timeout=5, default=None)
    s = f.sleep("cool-off", seconds=60, after=r)
    c = f.call("verify", child, after=s)
    assert (r, s, c) == ("review", "cool-off", "verify")
    plan = compile_dag(f)
    assert [plan.nodes[n].kind for n in (r, s, c)] == ["wait", "sleep", "call"]
    doc = f.describe()
    assert doc["on_event"] == ["user.created"]
    kinds = {v["name"]: v for v in doc["dag"]["vertices"]}
    assert kinds["review"]["wait"] == {
        "event": "kyc.reviewed",
        "key": True,
        "timeout": 5.0,
        "default": True,
        "since": "run",
    }
    assert kinds["verify"]["call"] == {"flow": "child"}
    rebuilt = compile_dag(dag_from_description(doc["dag"]))
    assert [rebuilt.nodes[n].kind for n in (r, s, c)] == ["wait", "sleep", "call"]


def test_the_version_covers_waits() -> None:
    def build(timeout: float, event: str = "e.one", seconds: float = 1) -> str:
        f = aioflow.Flow("v")
        f.wait("w", event=event, timeout=timeout)
        f.sleep("s", seconds=seconds, after="w")
        return version_of(f)

    base = build(10)
    assert build(10) == base
    assert build(11) != base
    assert build(10, event="e.two") != base
    assert build(10, seconds=2) != base
    plain = aioflow.Flow("p")
    plain.node("n", lambda d: d)
    triggered = aioflow.Flow("p", on_event="x")
    triggered.node("n", lambda d: d)
    assert version_of(plain) != version_of(triggered)

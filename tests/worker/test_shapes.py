"""Every DAG shape, end to end through a real in-process worker on a real Redis."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import aioflow
from aioflow.status import Status
from tests.engine_helpers import running

T = 10.0  # generous deadline for runs that should finish in milliseconds


async def test_single_node(redis_url: str) -> None:
    flow = aioflow.Flow("single")

    @flow.node
    async def double(x: int) -> int:
        return x * 2

    async with running([flow], redis_url) as s:
        assert await s.client.execute("single", 21, timeout=T) == 42
        assert await s.client.execute(flow, 5, timeout=T) == 10


async def test_chain(any_redis_url: str) -> None:
    flow = aioflow.Flow("chain3")

    @flow.node
    async def one(x: list[str]) -> list[str]:
        return [*x, "one"]

    @flow.node(after=one)
    async def two(x: list[str]) -> list[str]:
        return [*x, "two"]

    @flow.node(after=two)
    async def three(x: list[str]) -> list[str]:
        return [*x, "three"]

    async with running([flow], any_redis_url) as s:
        assert await s.client.execute("chain3", ["in"], timeout=T) == ["in", "one", "two", "three"]


def _diamond(name: str, seen: list[Any] | None = None) -> aioflow.Flow:
    flow = aioflow.Flow(name)

    @flow.node
    async def top(x: int) -> int:
        return x + 1

    @flow.node(after=top)
    async def left(x: int) -> int:
        return x * 10

    @flow.node(after=top)
    async def right(x: int) -> int:
        return x * 100

    @flow.node(after=[left, right])
    async def join(d: dict[str, int]) -> dict[str, int]:
        if seen is not None:
            seen.append(d)
        return {"sum": d["left"] + d["right"], **d}

    return flow


async def test_diamond(any_redis_url: str) -> None:
    seen: list[Any] = []
    flow = _diamond("diamond", seen)
    async with running([flow], any_redis_url) as s:
        assert await s.client.execute("diamond", 1, timeout=T) == {
            "sum": 220,
            "left": 20,
            "right": 200,
        }
    assert seen == [{"left": 20, "right": 200}]


async def test_wide_fan_out_with_join(any_redis_url: str) -> None:
    flow = aioflow.Flow("fan")
    width = 100

    @flow.node
    async def source(x: str) -> str:
        return x + "!"

    async def work(x: str, ctx: aioflow.Context) -> str:
        return f"{ctx.vertex}:{x}"

    names = [f"w{i}" for i in range(width)]
    for n in names:
        flow.node(n, work, after=source)

    joined: list[dict[str, str]] = []

    @flow.node(after=names)
    async def join(d: dict[str, str]) -> int:
        joined.append(d)
        return len(d)

    async with running([flow], any_redis_url) as s:
        assert await s.client.execute("fan", "go", timeout=T) == width
    assert len(joined) == 1
    assert joined[0] == {n: f"{n}:go!" for n in names}


async def test_several_entries_all_receive_the_input(redis_url: str) -> None:
    flow = aioflow.Flow("entries")
    got: dict[str, Any] = {}

    def entry(name: str) -> Any:
        async def fn(x: Any) -> str:
            got[name] = x
            return f"{name}({x['v']})"

        return fn

    for n in ("e1", "e2", "e3"):
        flow.node(n, entry(n))

    @flow.node(after=["e1", "e2", "e3"])
    async def merge(d: dict[str, str]) -> list[str]:
        return sorted(d.values())

    async with running([flow], redis_url) as s:
        out = await s.client.execute("entries", {"v": 7}, timeout=T)
    assert out == ["e1(7)", "e2(7)", "e3(7)"]
    assert got == {"e1": {"v": 7}, "e2": {"v": 7}, "e3": {"v": 7}}


async def test_several_exits_give_a_dict(any_redis_url: str) -> None:
    flow = aioflow.Flow("exits")

    @flow.node
    async def start(x: int) -> int:
        return x

    @flow.node(after=start)
    async def plus(x: int) -> int:
        return x + 1

    @flow.node(after=start)
    async def minus(x: int) -> int:
        return x - 1

    @flow.node(after=start)
    async def raw(x: int) -> bytes:
        return b"\x00" * x

    async with running([flow], any_redis_url) as s:
        out = await s.client.execute("exits", 3, timeout=T)
    assert out == {"plus": 4, "minus": 2, "raw": b"\x00\x00\x00"}


async def test_entry_and_exit_mixed_several(redis_url: str) -> None:
    """Two independent vertices: both entries and both exits."""
    flow = aioflow.Flow("pair")

    @flow.node
    async def up(x: str) -> str:
        return x.upper()

    @flow.node
    async def rev(x: str) -> str:
        return x[::-1]

    async with running([flow], redis_url) as s:
        assert await s.client.execute("pair", "abc", timeout=T) == {"up": "ABC", "rev": "cba"}


async def test_bytes_pass_raw(redis_url: str) -> None:
    flow = aioflow.Flow("bytes")
    seen: list[Any] = []

    @flow.node
    async def first(x: bytes) -> bytes:
        seen.append(x)
        return x + b"\xff"

    @flow.node(after=first)
    async def second(x: bytes) -> bytes:
        seen.append(x)
        return bytes(reversed(x))

    payload = bytes(range(256))
    async with running([flow], redis_url) as s:
        out = await s.client.execute("bytes", payload, timeout=T)
    assert type(out) is bytes
    assert out == bytes(reversed(payload + b"\xff"))
    assert [type(v) for v in seen] == [bytes, bytes]
    assert seen == [payload, payload + b"\xff"]


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2, {"c": None}], "d": "x"},
        [1, "two", 3.5, None, True],
        None,
        3.14159,
        "unicode ✓ héllo 日本語 🚀",
        0,
        "",
        {},
        [],
        {"nested": b"bytes inside json"},
    ],
)
async def test_json_values_round_trip(redis_url: str, value: Any) -> None:
    flow = aioflow.Flow("json")
    seen: list[Any] = []

    @flow.node
    async def same(x: Any) -> Any:
        seen.append(x)
        return x

    @flow.node(after=same)
    async def again(x: Any) -> Any:
        seen.append(x)
        return x

    async with running([flow], redis_url) as s:
        assert await s.client.execute("json", value, timeout=T) == value
    assert seen == [value, value]


async def test_plain_def_nodes_run_in_a_thread(redis_url: str) -> None:
    flow = aioflow.Flow("sync")
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @flow.node
    def add(x: int) -> int:
        threads.append(threading.get_ident())
        return x + 1

    @flow.node(after=add)
    def with_ctx(x: int, ctx: aioflow.Context) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return {"x": x, "vertex": ctx.vertex, "attempt": ctx.attempt}

    async with running([flow], redis_url) as s:
        out = await s.client.execute("sync", 1, timeout=T)
    assert out == {"x": 2, "vertex": "with_ctx", "attempt": 1}
    assert len(threads) == 2
    assert loop_thread not in threads


async def test_blocking_def_node_does_not_starve_the_loop(redis_url: str) -> None:
    blocking = aioflow.Flow("blocking")
    quick = aioflow.Flow("quick")
    gate = threading.Event()

    @blocking.node
    def hold(x: int) -> int:
        if not gate.wait(timeout=T):
            raise RuntimeError("gate never opened")
        return x

    @quick.node
    async def fast(x: int) -> int:
        return x + 1

    async with running([blocking, quick], redis_url) as s:
        try:
            held = await s.client.submit("blocking", 5)
            # the blocking node occupies a thread; async runs still complete
            for i in range(5):
                assert await s.client.execute("quick", i, timeout=T) == i + 1
            assert (await s.client.state(held)).status is Status.RUNNING
        finally:
            gate.set()
        assert await s.client.result(held, timeout=T) == 5


async def test_context(redis_url: str) -> None:
    flow = aioflow.Flow("ctxflow")
    seen: dict[str, dict[str, Any]] = {}

    def record(ctx: aioflow.Context) -> None:
        seen[ctx.vertex] = {
            "run_id": ctx.run_id,
            "flow": ctx.flow,
            "vertex": ctx.vertex,
            "attempt": ctx.attempt,
            "options": ctx.options,
        }

    @flow.node
    async def writer(x: int, ctx: aioflow.Context) -> int:
        record(ctx)
        await ctx.store.set("count", x)
        await ctx.store.set("blob", b"\x01\x02")
        assert await ctx.store.get("missing") is None
        assert await ctx.store.get("missing", "dflt") == "dflt"
        return x

    @flow.node(after=writer)
    async def reader(x: int, ctx: aioflow.Context) -> dict[str, Any]:
        record(ctx)
        return {
            "x": x,
            "count": await ctx.store.get("count"),
            "blob": await ctx.store.get("blob"),
        }

    async with running([flow], redis_url) as s:
        out = await s.client.execute("ctxflow", 9, timeout=T, options={"a": ["1"]})
        assert out == {"x": 9, "count": 9, "blob": b"\x01\x02"}
        run_id = seen["writer"]["run_id"]
        assert run_id.startswith("ctxflow.0.")
        assert seen["reader"]["run_id"] == run_id
        state = await s.client.state(run_id)
        assert state.status is Status.COMPLETED
        assert state.options == {"a": ["1"]}
    for name in ("writer", "reader"):
        assert seen[name] == {
            "run_id": run_id,
            "flow": "ctxflow",
            "vertex": name,
            "attempt": 1,
            "options": {"a": ["1"]},
        }


async def test_context_with_caller_chosen_run_id(redis_url: str) -> None:
    flow = aioflow.Flow("named")
    ids: list[str] = []

    @flow.node
    async def who(x: None, ctx: aioflow.Context) -> str:
        ids.append(ctx.run_id)
        return ctx.run_id

    async with running([flow], redis_url) as s:
        out = await s.client.execute("named", timeout=T, run_id="my-run_1")
        assert out == "named.0.my-run_1"
        # the same caller-chosen id returns that run; the node does not run again
        assert await s.client.execute("named", timeout=T, run_id="my-run_1") == out
    assert ids == [out]


async def test_aggregate(redis_url: str) -> None:
    flow = aioflow.Flow("agg")

    @flow.node
    async def a(x: int) -> int:
        return x + 1

    @flow.node
    async def b(x: int) -> int:
        return x + 2

    seen: list[Any] = []

    def total(values: dict[str, int]) -> int:
        seen.append(values)
        return sum(values.values())

    @flow.node(after=[a, b], aggregate=total)
    async def result(x: int) -> int:
        return x * 10

    async with running([flow], redis_url) as s:
        assert await s.client.execute("agg", 1, timeout=T) == 50
    assert seen == [{"a": 2, "b": 3}]


async def test_aggregate_on_single_parent(redis_url: str) -> None:
    flow = aioflow.Flow("agg1")

    @flow.node
    async def a(x: int) -> int:
        return x

    @flow.node(after=a, aggregate=lambda d: sorted(d.items()))
    async def b(x: Any) -> Any:
        return x

    async with running([flow], redis_url) as s:
        assert await s.client.execute("agg1", 4, timeout=T) == [["a", 4]]


async def test_edge_without_data_orders_only(redis_url: str) -> None:
    flow = aioflow.Flow("nodata")
    order: list[str] = []
    gate = asyncio.Event()

    @flow.node
    async def slow(x: int) -> str:
        await gate.wait()
        order.append("slow")
        return "slow-value"

    @flow.node
    async def value(x: int) -> int:
        order.append("value")
        gate.set()
        return x * 3

    @flow.node
    async def tail(x: Any) -> Any:
        order.append("tail")
        return x

    @flow.node
    async def only_order(x: Any) -> Any:
        order.append("only_order")
        return {"got": x}

    flow.edge(value, tail)
    flow.edge(slow, tail, data=False)
    flow.edge(slow, only_order, data=False)

    async with running([flow], redis_url) as s:
        out = await s.client.execute("nodata", 2, timeout=T)
    # tail gets value's output alone (not a dict), only_order gets nothing
    assert out == {"tail": 6, "only_order": {"got": None}}
    assert order.index("tail") > order.index("slow")
    assert order.index("only_order") > order.index("slow")


async def test_forward_transforms_the_value(redis_url: str) -> None:
    flow = aioflow.Flow("fwd")

    @flow.node
    async def a(x: int) -> int:
        return x

    @flow.node
    async def b(x: int) -> int:
        return x + 1

    @flow.node
    async def single(x: Any) -> Any:
        return x

    @flow.node
    async def joined(x: Any) -> Any:
        return x

    flow.edge(a, single, forward=lambda v: {"fwd": v * 2})
    flow.edge(a, joined, forward=lambda v: -v)
    flow.edge(b, joined)

    async with running([flow], redis_url) as s:
        out = await s.client.execute("fwd", 5, timeout=T)
    assert out == {"single": {"fwd": 10}, "joined": {"a": -5, "b": 6}}


async def test_error_surfaces_as_run_failed(any_redis_url: str) -> None:
    flow = aioflow.Flow("fails")

    @flow.node
    async def fine(x: int) -> int:
        return x

    def explode_here(x: int) -> int:
        raise ValueError(f"boom {x}")

    @flow.node(after=fine)
    async def explode(x: int) -> int:
        return explode_here(x)

    @flow.node(after=explode)
    async def never(x: int) -> int:
        raise AssertionError("must not run after a failure")

    async with running([flow], any_redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as exc:
            await s.client.execute("fails", 42, timeout=T)
        err = exc.value
        assert err.vertex == "explode"
        assert err.error_type == "ValueError"
        assert err.message == "boom 42"
        assert "explode_here" in err.traceback
        assert "ValueError: boom 42" in err.traceback
        assert err.attempts == 1
        state = await s.client.state(err.run_id)
        assert state.status is Status.FAILED
        assert state.vertices["fine"].status == "completed"
        assert state.vertices["explode"].status == "failed"
        assert "never" not in state.vertices
        assert state.error is not None and state.error["vertex"] == "explode"
        # waiting again on the finished run raises the same error
        with pytest.raises(aioflow.RunFailed, match="boom 42"):
            await s.client.result(err.run_id, timeout=T)


async def test_error_in_sync_node(redis_url: str) -> None:
    flow = aioflow.Flow("syncfail")

    @flow.node
    def broken_sync(x: int) -> int:
        raise KeyError("missing-key")

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as exc:
            await s.client.execute("syncfail", 1, timeout=T)
    assert exc.value.vertex == "broken_sync"
    assert exc.value.error_type == "KeyError"
    assert "missing-key" in exc.value.message
    assert "broken_sync" in exc.value.traceback


async def test_state_after_completion(redis_url: str) -> None:
    flow = _diamond("diamond-state")
    async with running([flow], redis_url) as s:
        run_id = await s.client.submit("diamond-state", 1)
        assert await s.client.result(run_id, timeout=T) == {"sum": 220, "left": 20, "right": 200}
        state = await s.client.state(run_id)
    assert state.run_id == run_id
    assert state.flow == "diamond-state"
    assert state.status is Status.COMPLETED
    assert state.result == {"sum": 220, "left": 20, "right": 200}
    assert state.error is None
    assert set(state.vertices) == {"top", "left", "right", "join"}
    for addr, v in state.vertices.items():
        assert v.status == "completed", addr
        assert v.attempts == 1, addr
    assert state.created is not None and state.started is not None and state.ended is not None
    assert state.created <= state.started <= state.ended


async def test_result_of_a_run_submitted_earlier(redis_url: str) -> None:
    flow = _diamond("diamond-later")
    async with running([flow], redis_url) as s:
        ids = [await s.client.submit("diamond-later", i) for i in range(5)]
        assert len(set(ids)) == 5
        for i, run_id in reversed(list(enumerate(ids))):
            out = await s.client.result(run_id, timeout=T)
            assert out["sum"] == (i + 1) * 110


async def test_result_timeout_then_result(any_redis_url: str) -> None:
    flow = aioflow.Flow("waits")
    release = asyncio.Event()
    started = asyncio.Event()

    @flow.node
    async def hold(x: int) -> int:
        started.set()
        await release.wait()
        return x * 2

    async with running([flow], any_redis_url) as s:
        run_id = await s.client.submit("waits", 4)
        try:
            await asyncio.wait_for(started.wait(), T)
            with pytest.raises(aioflow.ResultTimeout):
                await s.client.result(run_id, timeout=0.2)
            with pytest.raises(TimeoutError):  # ResultTimeout is also a TimeoutError
                await s.client.result(run_id, timeout=0.05)
            with pytest.raises(aioflow.ResultTimeout):
                await s.client.execute("waits", 5, timeout=0.2, run_id="second")
            assert (await s.client.state(run_id)).status is Status.RUNNING
        finally:
            release.set()
        assert await s.client.result(run_id, timeout=T) == 8
        # the caller-chosen id names the run started above (not a second one)
        second = await s.client.submit("waits", 6, run_id="second")
        assert await s.client.result(second, timeout=T) == 10


async def test_unknown_flow(redis_url: str) -> None:
    flow = _diamond("known")
    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.UnknownFlow, match="never-registered"):
            await s.client.execute("never-registered", 1, timeout=T)
        with pytest.raises(aioflow.UnknownFlow):
            await s.client.submit("never-registered", 1)
        # a known flow on the same client still works
        assert (await s.client.execute("known", 0, timeout=T))["sum"] == 110


async def test_unknown_run(redis_url: str) -> None:
    flow = _diamond("known2")
    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunNotFound):
            await s.client.state("known2.0.doesnotexist")
        with pytest.raises(aioflow.RunNotFound):
            await s.client.result("known2.0.doesnotexist", timeout=1)
        with pytest.raises(aioflow.InvalidRunId):
            await s.client.state("not a run id")

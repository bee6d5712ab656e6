"""NaN and infinities cannot cross a vertex: JSON has none, and orjson would turn them
into null without a word. A node output holding one fails the vertex, naming where it
is; a run input holding one is refused at submit, in both client modes, before
anything is written."""

from __future__ import annotations

from typing import Any

import pytest

import aioflow
from aioflow.store.keys import RunId
from tests.engine_helpers import running
from tests.served import served

T = 10.0
NAN = float("nan")


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow("stats")

    @flow.node
    async def mean(data: dict[str, Any]) -> dict[str, Any]:
        values = data["values"]
        return {"n": len(values), "scores": [1.0, sum(values) / len(values) if values else NAN]}

    @flow.node
    def ratio(data: dict[str, Any]) -> Any:  # plain def, in a thread
        return {"deep": [{"r": 1 / data["den"] if data["den"] else float("-inf")}]}

    each = flow.foreach(  # float("nan") parses: a NaN made by user code, not the input
        "each", lambda d: {k: {"v": float(v)} for k, v in (d.get("items") or {}).items()}
    )
    each.node("echo", _echo)
    return flow


async def _echo(data: Any) -> Any:
    return data


async def test_a_nan_output_fails_the_vertex_naming_the_path(redis_url: str) -> None:
    async with running([make_flow()], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("stats", {"values": [], "den": 2}, timeout=T)
        err = info.value
        assert (err.vertex, err.error_type) == ("mean", "ValueError")
        assert err.message.startswith("value['scores'][1] is nan, which JSON cannot hold")
        st = await s.client.state(err.run_id)
        assert st.vertices["mean"].status == "failed"
        # nothing was stored for it (a null would have been)
        assert not await s.redis.hexists(RunId.parse(err.run_id).run, "o:mean")

        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("stats", {"values": [2, 4], "den": 0}, timeout=T)
        assert info.value.vertex == "ratio"
        assert info.value.message.startswith("value['deep'][0]['r'] is -inf")

        # the same values without the NaN go through
        out = await s.client.execute(
            "stats", {"values": [2, 4], "den": 4, "items": {"a": "1"}}, timeout=T
        )
        assert out == {
            "mean": {"n": 2, "scores": [1.0, 3.0]},
            "ratio": {"deep": [{"r": 0.25}]},
            "each": {"a": {"v": 1.0}},
        }


async def test_a_nan_foreach_item_fails_the_foreach(redis_url: str) -> None:
    async with running([make_flow()], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute(
                "stats", {"values": [1], "den": 1, "items": {"a": "1", "b": "nan"}}, timeout=T
            )
        assert info.value.vertex == "each"
        assert info.value.message.startswith("value['v'] is nan, which JSON cannot hold")


@pytest.mark.parametrize("mode", ["redis", "http"])
async def test_a_nan_input_is_refused_at_submit(redis_url: str, mode: str) -> None:
    async with served([make_flow()], redis_url) as srv:
        client = srv.stack.client if mode == "redis" else aioflow.Client(srv.base)
        try:
            where = "value" if mode == "redis" else "body"
            with pytest.raises(ValueError, match=rf"^{where}\['values'\]\[0\] is nan"):
                await client.submit("stats", {"values": [NAN], "den": 1})
            with pytest.raises(ValueError, match=r"is inf"):
                await client.submit("stats", float("inf"), run_id="chosen")
            runs, _ = await client.runs("stats")
            assert runs == []  # nothing was written
            # a None is no NaN: still accepted
            rid = await client.submit("stats", {"values": [3], "den": None, "items": None})
            assert (await client.state(rid)).run_id == rid
        finally:
            if mode == "http":
                await client.close()


async def test_submit_many_names_the_item_holding_a_nan(redis_url: str) -> None:
    async with running([make_flow()], redis_url) as s:
        inputs = [{"values": [1], "den": 1}, {"values": [2], "den": 1}, [1, {"x": NAN}]]
        with pytest.raises(aioflow.InvalidBatch, match=r"item 2: input\[1\]\['x'\] is nan") as e:
            await s.client.submit_many("stats", inputs)
        assert e.value.index == 2
        runs, _ = await s.client.runs("stats")
        assert runs == []


def test_a_schedule_whose_data_holds_a_nan_is_refused() -> None:
    flow = aioflow.Flow("sched")
    with pytest.raises(aioflow.DefinitionError, match=r"'hourly'.*data\['x'\] is nan"):
        flow.schedule("hourly", every=3600, data={"x": NAN})

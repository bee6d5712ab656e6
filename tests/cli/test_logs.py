"""The log formats of the ``aioflow`` commands: a real worker process runs a flow whose
node calls ``ctx.log``; its output shows the run and the vertex, as text or JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import aioflow
from aioflow import logs
from tests.helpers import wait_until
from tests.procs import Procs, clean_env

T = 10.0

APP = """
import aioflow

flow = aioflow.Flow("noisy")


@flow.node
async def greet(data, ctx):
    ctx.log.info("greeting %s", data)
    return data


@flow.node(after=greet)
async def shout(data, ctx):
    try:
        raise ValueError("loud")
    except ValueError:
        ctx.log.warning("shouting %s", data, exc_info=True)
    return data.upper()


app = aioflow.App([flow])
"""


async def _run_flow(
    procs: Procs, tmp_path: Path, redis_url: str, *args: str, env: dict[str, str]
) -> tuple[str, str]:
    """Start ``aioflow [ARGS] worker app.py:app``, run one ``noisy`` run: (run id, output)."""
    (tmp_path / "app.py").write_text(APP)
    procs.aioflow(
        "worker", *args, "worker", str(tmp_path / "app.py"), "--url", redis_url, env=clean_env(env)
    )
    async with aioflow.Client(redis_url) as client:

        async def registered() -> bool:
            procs.check_alive()
            return "noisy" in {f.name for f in await client.engine.flows()}

        await wait_until(registered, timeout=30, what="the worker to register noisy")
        rid = await client.submit("noisy", "hi")
        assert await client.result(rid, timeout=T) == "HI"
    await wait_until(lambda: "shouting" in procs.output("worker"), what="the node's log line")
    procs.terminate()
    return rid, procs.output("worker")


async def test_text_format_shows_run_and_vertex(
    procs: Procs, tmp_path: Path, redis_url: str
) -> None:
    rid, out = await _run_flow(procs, tmp_path, redis_url, env={})
    greet = next(line for line in out.splitlines() if "greeting hi" in line)
    assert greet.endswith(f"greeting hi [run={rid} vertex=greet attempt=1]"), greet
    assert " INFO aioflow.node: " in greet
    shout = next(line for line in out.splitlines() if "shouting hi" in line)
    assert shout.endswith(f"[run={rid} vertex=shout attempt=1]"), shout
    after = out[out.index(shout) :]
    assert "Traceback" in after and "ValueError: loud" in after  # exc_info below the line


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_json_format_one_object_per_line(
    procs: Procs, tmp_path: Path, redis_url: str, how: str
) -> None:
    args, env = (
        (["--log-format", "json"], {}) if how == "flag" else ([], {"AIOFLOW_LOG_FORMAT": "json"})
    )
    rid, out = await _run_flow(procs, tmp_path, redis_url, *args, env=env)
    docs = [json.loads(line) for line in out.splitlines()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= d.keys() for d in docs), docs
    assert any(d["logger"] == "aioflow.worker" and "run_id" not in d for d in docs)
    greet = next(d for d in docs if d["message"] == "greeting hi")
    assert greet == {
        "time": greet["time"],
        "level": "INFO",
        "logger": "aioflow.node",
        "message": "greeting hi",
        "flow": "noisy",
        "run_id": rid,
        "vertex": "greet",
        "attempt": 1,
    }
    assert greet["time"].endswith("+00:00")
    shout = next(d for d in docs if d["message"] == "shouting hi")
    assert (shout["level"], shout["vertex"], shout["run_id"]) == ("WARNING", "shout", rid)
    assert shout["exc_info"].startswith("Traceback") and "ValueError: loud" in shout["exc_info"]


def test_node_log_keeps_a_calls_extra() -> None:
    """``ctx.log.info(..., extra={...})`` adds to the run's fields instead of losing them."""
    from aioflow.worker.context import NodeLog

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aioflow.node")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        adapter = NodeLog(logger, {"flow": "f", "run_id": "f.0.r", "vertex": "v", "attempt": 2})
        adapter.info("with extra", extra={"order": 42})
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    (record,) = records
    assert getattr(record, "order", None) == 42
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc == {
        "time": doc["time"],
        "level": "INFO",
        "logger": "aioflow.node",
        "message": "with extra",
        "flow": "f",
        "run_id": "f.0.r",
        "vertex": "v",
        "attempt": 2,
    }
    text = logs.TextFormatter().format(record)
    assert text.endswith("aioflow.node: with extra [run=f.0.r vertex=v attempt=2]"), text


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_configure_refuses_unknown_levels_and_formats(level: str, fmt: str) -> None:
    with pytest.raises(aioflow.ConfigError, match="unknown log"):
        logs.configure(level, fmt)

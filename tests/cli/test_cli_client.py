"""``aioflow submit``, ``aioflow runs`` and ``aioflow dev --reload`` as real processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import aioflow
from aioflow.store.redis_server import free_port
from tests.helpers import ROOT, wait_until
from tests.served import served

T = 10.0


def flows() -> list[aioflow.Flow]:
    calc = aioflow.Flow("calc")

    @calc.node
    async def double(x: Any) -> Any:
        if x == "boom":
            raise ValueError("no boom")
        return x * 2

    return [calc]


async def aioflow_cli(*args: str, stdin: bytes = b"", cwd: Path = ROOT) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioflow",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cli_in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``aioflow ARGS`` in this process (its own event loop, in a thread): exit code,
    stdout, stderr. Cheaper than a process; one test below runs the real command."""
    from aioflow.cli.command import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:  # main() configures logging for a process: give the test's back
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


async def test_submit_and_runs(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(flows(), redis_url) as srv:

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(cli_in_thread, capsys, *args)

        code, out, err = await cli("submit", "calc", "21", "--url", redis_url)
        assert code == 0, err
        rid = out.strip()
        assert await srv.stack.client.result(rid, timeout=T) == 42

        # the real command, reading its input from stdin, over HTTP
        code, out, err = await aioflow_cli(
            "submit", "calc", "-", "--wait", "5", "--url", srv.base, stdin=b'"ab"'
        )
        assert (code, out) == (0, '"abab"\n'), err

        code, out, err = await cli("submit", "calc", '"boom"', "--wait", "5", "--url", redis_url)
        assert code == 1
        assert "no boom" in err and "double" in err

        code, out, err = await cli("submit", "calc", "not json", "--url", redis_url)
        assert code == 2 and "--raw" in err

        code, out, err = await cli("runs", "calc", "--status", "failed", "--url", srv.base)
        assert code == 0, err
        lines = [ln.split("\t") for ln in out.splitlines()]
        assert len(lines) == 1 and lines[0][1] == "failed"
        assert (await srv.stack.client.state(lines[0][0])).status is aioflow.Status.FAILED


def control_flow(gate: asyncio.Event) -> aioflow.Flow:
    ctl = aioflow.Flow("ctl")

    @ctl.node
    async def first(x: Any) -> Any:
        return x

    @ctl.node(after=first)
    async def second(x: Any) -> Any:
        if x == "boom":
            raise ValueError("no boom")
        await gate.wait()
        return x * 2

    return ctl


async def test_run_commands_take_the_callers_id_with_flow(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aioflow run ACTION ID --flow NAME``: ID is the one the caller chose (X-Run-Id,
    ``run_id=``), over Redis and over a gateway alike."""
    gate = asyncio.Event()
    async with served([control_flow(gate)], redis_url) as srv:
        client = srv.stack.client

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(cli_in_thread, capsys, *args)

        async def second_is(rid: str, status: str) -> bool:
            v = (await client.state(rid)).vertices.get("second")
            return v is not None and v.status == status

        try:
            rid = await client.submit("ctl", 21, run_id="order-42")
            assert rid != "order-42"
            await wait_until(lambda: second_is(rid, "running"), what="second running")
            for url in (redis_url, srv.base):
                code, out, err = await cli(
                    "run", "pause", "order-42", "--flow", "ctl", "--url", url
                )
                assert (code, out) == (0, "order-42: paused\n"), err
                code, out, err = await cli(
                    "run", "state", "order-42", "--flow", "ctl", "--url", url
                )
                assert code == 0, err
                doc = json.loads(out)
                assert (doc["run_id"], doc["status"]) == (rid, "paused")
                code, out, err = await cli(
                    "run", "resume", "order-42", "--flow", "ctl", "--redis-url", url
                )
                assert (code, out) == (0, "order-42: running\n"), err

            # not finished within --wait: exit 3 and the id
            code, out, err = await cli(
                "run", "result", "order-42", "--flow", "ctl", "--wait", "0.1", "--url", redis_url
            )
            assert (code, out) == (3, "order-42\n") and "still running" in err
            gate.set()
            for url in (redis_url, srv.base):
                code, out, err = await cli(
                    "run", "result", "order-42", "--flow", "ctl", "--wait", "5", "--url", url
                )
                assert (code, out) == (0, "42\n"), err

            gate.clear()
            other = await client.submit("ctl", 1, run_id="order-43")
            await wait_until(lambda: second_is(other, "running"), what="second running")
            code, out, err = await cli(
                "run", "stop", "order-43", "--flow", "ctl", "--url", srv.base
            )
            assert (code, out) == (0, "order-43: stopped\n"), err
            assert (await client.state(other)).status is aioflow.Status.STOPPED

            failed = await client.submit("ctl", "boom", run_id="order-44")
            with pytest.raises(aioflow.RunFailed):
                await client.result(failed, timeout=T)
            code, out, err = await cli(
                "run", "result", "order-44", "--flow", "ctl", "--url", redis_url
            )
            assert code == 1 and "no boom" in err
            before = (await client.state(failed)).vertices["second"].started
            code, out, err = await cli(
                "run", "retry", "order-44", "--flow", "ctl", "--url", redis_url
            )
            assert (code, out) == (0, "order-44: running (1 vertices requeued)\n"), err

            async def failed_again() -> bool:
                st = await client.state(failed)
                v = st.vertices["second"]
                return st.status is aioflow.Status.FAILED and (v.started or 0) > (before or 0)

            await wait_until(failed_again, what="second to run again and fail")

            # a caller's id names no run without its flow; the full id needs none
            code, out, err = await cli("run", "state", "order-42", "--url", redis_url)
            assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
            code, out, err = await cli("run", "state", rid, "--url", redis_url)
            assert code == 0 and json.loads(out)["status"] == "completed", err
        finally:
            gate.set()


APP = """
import aioflow

flow = aioflow.Flow("live")


@flow.node
async def version(data):
    return {version!r}


app = aioflow.App([flow])
"""


async def _answer(base: str) -> Any:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/flow/live?wait=2", json=None) as r:
                return await r.json() if r.status == 200 else None
    except aiohttp.ClientError:
        return None


@pytest.mark.slow
async def test_dev_reload_restarts_on_code_changes(tmp_path: Path) -> None:
    """With no Redis URL the parent starts the Redis; it outlives each restart."""
    (tmp_path / "app.py").write_text(APP.format(version="v1"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioflow",
        "dev",
        "app.py:app",
        "--reload",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _is(base, "v1"), timeout=20, what="v1 served", interval=0.1)
        url = (tmp_path / ".aioflow" / "redis.url").read_text().strip()
        async with aioflow.Client(url) as client:
            before, _ = await client.runs("live")
        (tmp_path / "app.py").write_text(APP.format(version="v2"))
        await wait_until(lambda: _is(base, "v2"), timeout=20, what="v2 after reload", interval=0.1)
        async with aioflow.Client(url) as client:  # same Redis, runs kept
            after, _ = await client.runs("live", limit=100)
        assert {r.run_id for r in before} <= {r.run_id for r in after}
        assert before
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "reloading" in err.decode()
    async with aioflow.Client(url) as client:  # the parent stopped its Redis
        with pytest.raises(aioflow.RedisUnavailable):
            await client.runs("live")


async def _is(base: str, want: str) -> bool:
    return bool(await _answer(base) == want)


def test_dev_reload_without_watchfiles_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioflow.cli.reload import run_reloading

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails as if not installed
    started: list[bool] = []
    with pytest.raises(aioflow.ConfigError, match=r"pip install 'aioflow\[reload\]'"):
        run_reloading(
            ["dev", "app.py:app", "--reload"],
            app_spec="app.py:app",
            redis_url=None,
            own_redis=lambda: started.append(True),
        )
    assert started == []  # failed before starting anything

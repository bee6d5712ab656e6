"""``aioflow submit``, ``aioflow runs`` and ``aioflow dev --reload`` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import aioflow
from aioflow.redis_server import free_port
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
    from aioflow.cli import main

    capsys.readouterr()
    code = main(list(args))
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
    from aioflow.reload import run_reloading

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

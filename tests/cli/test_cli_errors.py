"""How the ``aioflow`` commands fail, as real processes: usage and environment errors
exit 2 with one line on stderr (the traceback only at ``--log-level DEBUG``); an
unreachable Redis ends a one-shot command the same way, naming the URL, while
``serve`` and ``worker`` wait for their Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from aioflow.store.redis_server import free_port
from tests.helpers import RedisFactory, run_aioflow, wait_until
from tests.procs import Procs, clean_env

APP = "examples/hello.py:app"


async def aioflow_cmd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m aioflow ARGS`` with no AIOFLOW_/OTEL_ variables but ``env``."""
    return await run_aioflow(*args, timeout=30, env=clean_env(env))


def one_line(err: str) -> str:
    """The one line an error exit writes, checked to be alone and without a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aioflow: "), err
    return lines[0]


async def all_of(*commands: tuple[str, ...]) -> list[tuple[int, str, str]]:
    return list(await asyncio.gather(*(aioflow_cmd(*c) for c in commands)))


async def test_a_bad_url_scheme_is_a_usage_error() -> None:
    # one command of each kind: the one-shots share one path, the app commands another
    commands = [
        ("submit", "calc", "1", "--url", "redis:/"),
        ("run", "state", "calc.0.x", "--redis-url", "nope://x"),
        ("worker", APP, "--url", "foo://x"),
        ("dev", APP, "--redis-url", "mysql://x"),
    ]
    for cmd, (code, out, err) in zip(commands, await all_of(*commands), strict=True):
        assert code == 2 and out == "", (cmd, out, err)
        line = one_line(err)
        assert "unsupported URL" in line and "redis://" in line, (cmd, line)

    # a gateway will not do for a command that needs Redis itself
    commands = [
        ("schedule", "list", "f", "--url", "https://127.0.0.1:1"),
        ("serve", APP, "--url", "http://127.0.0.1:1"),
    ]
    for cmd, (code, _, err) in zip(commands, await all_of(*commands), strict=True):
        assert code == 2, (cmd, err)
        assert "not the gateway http" in one_line(err), (cmd, err)

    # the same from the environment
    code, _, err = await aioflow_cmd("worker", APP, env={"AIOFLOW_REDIS_URL": "foo://x"})
    assert code == 2 and "unsupported URL 'foo://x'" in one_line(err)


async def test_an_unreachable_redis_ends_one_shot_commands_naming_it() -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    commands = [
        ("submit", "calc", "1", "--url", url),
        ("run", "stop", "order-1", "--flow", "calc", "--redis-url", url),
        ("flows", "--url", url),  # through the engine, not a client call
    ]
    for cmd, (code, out, err) in zip(commands, await all_of(*commands), strict=True):
        assert code == 2 and out == "", (cmd, out, err)
        assert f"cannot reach Redis at {url}" in one_line(err), (cmd, err)

    # a password in the URL is not written out
    secret = f"redis://:s3cret@127.0.0.1:{port}/0"
    code, _, err = await aioflow_cmd("flows", "--url", secret)
    assert code == 2 and f"redis://:***@127.0.0.1:{port}/0" in one_line(err) and "s3cret" not in err

    gateway = f"http://127.0.0.1:{port}"
    code, _, err = await aioflow_cmd("runs", "calc", "--url", gateway)
    assert code == 2 and f"cannot reach gateway at {gateway}" in one_line(err), err


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_busy_port_is_an_environment_error(redis_url: str, busy_port: int) -> None:
    serve, metrics = await all_of(
        ("serve", APP, "--url", redis_url, "--port", str(busy_port)),
        ("worker", APP, "--url", redis_url, "--metrics-port", str(busy_port)),
    )
    assert serve[0] == 2, serve
    line = one_line(serve[2])
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line and "in use" in line, line
    assert metrics[0] == 2, metrics
    assert str(busy_port) in one_line(metrics[2]) and "in use" in metrics[2], metrics


async def test_an_app_that_cannot_be_loaded_is_a_usage_error() -> None:
    (missing, (code1, _, err1)), (no_attr, (code2, _, err2)) = zip(
        ("nosuchmodule", "examples/hello.py:nope"),
        await all_of(
            ("serve", "nosuchmodule:app", "--url", "redis://127.0.0.1:1"),
            ("worker", "examples/hello.py:nope", "--url", "redis://127.0.0.1:1"),
        ),
        strict=True,
    )
    assert code1 == 2 and "cannot import nosuchmodule" in one_line(err1), err1
    assert code2 == 2 and "has no attribute 'nope'" in one_line(err2), err2

    # DEBUG shows where it came from, and still ends with the one line
    code, _, err = await aioflow_cmd(
        "--log-level", "DEBUG", "serve", "nosuchmodule:app", "--url", "redis://127.0.0.1:1"
    )
    assert code == 2 and "Traceback" in err and "ModuleNotFoundError" in err, err
    assert err.strip().splitlines()[-1] == "aioflow: cannot import nosuchmodule: " + (
        "No module named 'nosuchmodule'"
    )


async def test_bad_log_options_are_usage_errors() -> None:
    (c1, _, e1), (c2, _, e2) = await all_of(
        ("--log-format", "xml", "flows", "--url", "redis://127.0.0.1:1"),
        ("--log-level", "LOUD", "flows", "--url", "redis://127.0.0.1:1"),
    )
    assert c1 == 2 and "unknown log format 'xml'" in one_line(e1)
    assert c2 == 2 and "unknown log level 'LOUD'" in one_line(e2)


async def _answers(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/flow/hello?wait=5", json={"name": "x"}) as r:
                return r.status == 200 and await r.json() == {"message": "HELLO, X!"}
    except aiohttp.ClientError:
        return False


async def test_serve_and_worker_wait_for_their_redis(
    procs: Procs, redis_factory: RedisFactory
) -> None:
    """Both start before their Redis, say they cannot reach it and keep trying; once it
    answers they serve. Stopped while still waiting, they exit 0 without a traceback."""
    server = redis_factory(start=False)
    port = free_port()
    env = clean_env()
    procs.aioflow("serve", "serve", APP, "--url", server.url, "--port", str(port), env=env)
    procs.aioflow("worker", "worker", APP, "--url", server.url, env=env)
    where = f"127.0.0.1:{server.port}"

    def waiting(name: str) -> bool:
        procs.check_alive()
        out = procs.output(name)
        return where in out and "retrying" in out

    await wait_until(lambda: waiting("serve") and waiting("worker"), timeout=30, what="both")
    await asyncio.to_thread(server.start)
    await wait_until(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=30, what="a run")
    procs.terminate()
    for name in ("serve", "worker"):
        assert "Traceback" not in procs.output(name), procs.output(name)

    # stopped before their Redis ever answered
    other = Procs(procs.log_dir / "other")
    other.log_dir.mkdir()
    try:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"
        other.aioflow("serve", "serve", APP, "--url", nowhere, "--port", str(free_port()), env=env)
        other.aioflow("worker", "worker", APP, "--url", nowhere, env=env)
        await wait_until(
            lambda: all("retrying" in other.output(n) for n in ("serve", "worker")),
            timeout=30,
            what="both to wait for Redis",
        )
        other.terminate()  # exit 0, checked
        for name in ("serve", "worker"):
            assert "Traceback" not in other.output(name), other.output(name)
    finally:
        other.kill_all()

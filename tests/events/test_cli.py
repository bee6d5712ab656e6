"""``aioflow event send`` and ``aioflow run signal``, over Redis and over a gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import aioflow
from aioflow.store import keys
from tests.cli.test_cli_client import aioflow_cli, cli_in_thread
from tests.served import served


def flows() -> tuple[aioflow.Flow, aioflow.Flow]:
    signup = aioflow.Flow("signup", on_event="user.created")

    @signup.node
    async def welcome(data: Any) -> Any:
        return data

    kyc = aioflow.Flow("kyc")  # registered by a client only: its runs stay pending

    @kyc.node
    async def score(data: Any) -> Any:
        return data

    kyc.wait("review", event="kyc.reviewed", after=score)
    return signup, kyc


async def test_event_send(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    signup, _ = flows()
    async with served([signup], redis_url) as srv:

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(cli_in_thread, capsys, *args)

        args = ("event", "send", "user.created", '{"n": 1}', "--key", "u1", "--id", "c-1")
        code, out, err = await cli(*args, "--url", redis_url)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["resolved"] == 0
        [rid] = doc["started"]
        assert keys.RunId.parse(rid).key == "ev-c-1"
        assert await srv.stack.client.result(rid, timeout=10) == {"n": 1}
        # over the gateway, the same id: the same answer
        code, out, err = await cli(*args, "--url", srv.base)
        assert (code, json.loads(out)) == (0, doc), err
        # the real command, its data from stdin, no key, no id
        code, out, err = await aioflow_cli(
            "event", "send", "user.created", "-", "--url", srv.base, stdin=b'{"n": 2}'
        )
        assert code == 0, err
        assert len(json.loads(out)["started"]) == 1
        code, out, err = await cli("event", "send", "Bad.Name", "1", "--url", redis_url)
        assert code != 0 and "event name" in err
        code, out, err = await cli("event", "send", "user.created", "not json", "--url", redis_url)
        assert code == 2 and "--raw" in err


async def test_run_signal(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    signup, kyc = flows()
    async with served([signup], redis_url) as srv:

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(cli_in_thread, capsys, *args)

        rid = await srv.stack.client.submit(kyc, {"user": 1}, run_id="k-1")
        for url in (redis_url, srv.base):
            code, out, err = await cli("run", "signal", rid, "score", "1", "--url", url)
            assert code != 0 and "not a wait vertex" in err, (code, err)
            code, out, err = await cli("run", "signal", "k-1", "--flow", "kyc", "--url", url)
            assert code == 2 and "VERTEX" in err
            code, out, err = await cli("run", "state", rid, "extra", "--url", url)
            assert code == 2 and "no argument" in err
        code, out, err = await cli(
            "run", "signal", "k-1", "review", '{"ok": true}', "--flow", "kyc", "--url", srv.base
        )
        # kept for the wait (the run has not reached it) or refused: said either way
        assert (code == 0 and "taken" in out) or (code == 1 and "not taken" in err), (code, err)

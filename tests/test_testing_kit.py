"""aioflow.testing used the way a user would: only the plugin's fixtures, on a small
flow of their own (no helper of aioflow's test suite)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, Kit, eventually, run_flow

orders = aioflow.Flow("orders")
attempts: list[int] = []


@orders.node(
    retries=aioflow.RetryPolicy(
        retries=3, backoff=30.0, max_delay=300.0, jitter=0.0, retry_on=(ConnectionError,)
    )
)
async def charge(order: dict[str, Any], ctx: aioflow.Context) -> dict[str, Any]:
    attempts.append(ctx.attempt)
    if order.get("card") == "declined":
        raise ValueError("card declined")
    if order.get("flaky") and ctx.attempt < 3:
        raise ConnectionError("payment gateway timeout")
    return {"id": order["id"], "charged": order["amount"], "attempt": ctx.attempt}


@orders.node(after=charge)
async def receipt(charged: dict[str, Any]) -> str:
    return f"order {charged['id']}: {charged['charged']} EUR (attempt {charged['attempt']})"


digest = aioflow.Flow("digest")
digest.schedule("hourly", every=3600, data={"kind": "hourly"})


@digest.node
async def send(data: dict[str, str], ctx: aioflow.Context) -> str:
    return f"{data['kind']} digest for {ctx.options['tick'][0]}"


app = aioflow.App(flows=[orders, digest])


@pytest.fixture(autouse=True)
def _fresh() -> None:
    attempts.clear()


async def test_run_flow_returns_the_result(aioflow_kit: Kit) -> None:
    out = await run_flow(app, {"id": 7, "amount": 12}, flow="orders")
    assert out == "order 7: 12 EUR (attempt 1)"


async def test_run_flow_raises_run_failed(aioflow_kit: Kit) -> None:
    with pytest.raises(aioflow.RunFailed) as info:
        await run_flow(orders, {"id": 8, "amount": 1, "card": "declined"})
    assert (info.value.vertex, info.value.error_type) == ("charge", "ValueError")
    assert attempts == [1]  # retry_on=(ConnectionError,): a declined card is final


async def test_retries_take_no_real_time(aioflow_kit: Kit, aioflow_clock: FakeClock) -> None:
    start, real = aioflow_clock(), time.monotonic()
    out = await run_flow(orders, {"id": 9, "amount": 3, "flaky": True})
    assert out == "order 9: 3 EUR (attempt 3)"
    assert attempts == [1, 2, 3]
    assert aioflow_clock() - start == pytest.approx(30.0 + 60.0)  # the backoffs, jumped
    assert time.monotonic() - real < 5.0


async def test_a_retry_step_by_step(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(app)
    run_id = await aioflow_client.submit("orders", {"id": 10, "amount": 4, "flaky": True})

    async def charge_status() -> tuple[str, int]:
        v = (await aioflow_client.state(run_id)).vertices.get("charge")
        return (v.status, v.attempts) if v else ("pending", 0)

    async def is_(want: tuple[str, int]) -> bool:
        return await charge_status() == want

    await eventually(lambda: is_(("retrying", 1)), what="first retry scheduled")
    aioflow_clock.advance(29.0)  # not due yet
    assert await charge_status() == ("retrying", 1)
    aioflow_clock.advance(1.0)  # due: attempt 2 runs, fails, waits 60 s
    await eventually(lambda: is_(("retrying", 2)), what="second retry scheduled")
    aioflow_clock.advance(60.0)
    assert await aioflow_client.result(run_id, timeout=5) == "order 10: 4 EUR (attempt 3)"


async def test_delayed_start_and_schedule_follow_the_clock(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(app)
    later = await aioflow_client.submit("orders", {"id": 11, "amount": 5}, delay=600)
    aioflow_clock.advance(600)
    assert await aioflow_client.result(later, timeout=5) == "order 11: 5 EUR (attempt 1)"

    async def digests() -> list[aioflow.RunState]:
        runs, _ = await aioflow_client.runs("digest")
        return runs

    aioflow_clock.advance(3600)  # the clock starts on the hour: one tick
    await eventually(lambda: _nonempty(digests()), what="the hourly run")
    (run,) = await digests()
    assert await aioflow_client.result(run.run_id, timeout=5) == (
        "hourly digest for 2026-01-01T01:00:00Z"
    )


async def _nonempty(runs: Any) -> bool:
    return bool(await runs)


async def test_the_first_tick_after_a_worker_starts_is_not_dropped(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    """Advancing right after the worker fixture returns: the tick is fired, and so
    is every one the clock passes afterwards (none skipped as 'missed')."""
    await aioflow_worker(digest)
    aioflow_clock.advance(3600)

    async def digest_ticks() -> list[str]:
        runs, _ = await aioflow_client.runs("digest", limit=10)
        return sorted(r.options["tick"][0] for r in runs)

    async def ticked(n: int) -> bool:
        return len(await digest_ticks()) == n

    await eventually(lambda: ticked(1), what="the first hourly run")
    aioflow_clock.advance(2 * 3600)  # two ticks in one step: both fire
    await eventually(lambda: ticked(3), what="the next two hourly runs")
    assert await digest_ticks() == [
        "2026-01-01T01:00:00Z",
        "2026-01-01T02:00:00Z",
        "2026-01-01T03:00:00Z",
    ]


def test_the_readme_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    """The README's "Testing your flows" example, copied as is into a project that
    never configured pytest-asyncio (strict mode, its default) and registers no
    plugin: the entry point brings the fixtures, and the tests run and pass."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Testing your flows\n", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None, "no python example in the README's testing section"
    (tmp_path / "test_orders.py").write_text(example.group(1))
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "shop"\nversion = "0.1"\n\n[tool.pytest.ini_options]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    # the project really is in strict mode ("mode=Mode.STRICT" in pytest-asyncio 1.x)
    assert re.search(r"asyncio: mode=(Mode\.)?strict\b", out, re.I), out
    assert proc.returncode == 0, out
    assert re.search(r"\b4 passed\b", out), out

"""Three ``aioflow worker`` processes tick the same every=1 schedule: exactly one
run per tick, none twice, none skipped."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import wait_until
from tests.procs import Procs, clean_env
from tests.worker.test_multiprocess import _readers

APP = "tests.apps.schedule_app:app"


def ticks(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()]


@pytest.mark.slow
async def test_three_workers_one_run_per_tick(
    redis_url: str, redis: Redis, procs: Procs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ticks.log"
    log.touch()
    monkeypatch.setenv("SCHED_TICK_LOG", str(log))
    for i in range(3):
        args = ["worker", APP, "--redis-url", redis_url, "--concurrency", "4"]
        procs.aioflow(f"worker{i}", *args, env=clean_env())
    await wait_until(lambda: _readers(redis, 3), timeout=30, what="3 workers reading")
    procs.check_alive()
    # with all three ticking, several more seconds
    seen = len(ticks(log))
    await wait_until(lambda: len(ticks(log)) >= seen + 4, timeout=15, what="4 more ticks")

    got = ticks(log)
    dups = [t for t, n in collections.Counter(got).items() if n > 1]
    assert not dups, f"ticks run twice: {dups}"
    times = sorted(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in got)
    gaps = [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a != timedelta(seconds=1)]
    assert not gaps, f"ticks skipped: {gaps}"
    keys = await redis.keys("af:{ticks:0}:r:sched-each-second-*")
    assert len(keys) >= len(got)

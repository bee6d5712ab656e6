"""When ticks fall: every= grids, cron expressions, time zones and daylight saving.

Pure computations on epoch milliseconds: the clock is whatever the test says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import aioflow
from aioflow.definitions.ticks import Schedule, tick_key
from aioflow.engine.schedule import _missed
from aioflow.store.keys import RUN_KEY_RE

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ms(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> int:
    y, mo, d, h, mi, *rest = args
    sec = rest[0] if rest else 0
    return int(datetime(y, mo, d, h, mi, sec, tzinfo=tz, fold=fold).timestamp() * 1000)


def local(t: int, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(t / 1000, tz).isoformat()


def test_every_ticks_on_the_epoch_grid() -> None:
    s = Schedule("s", every=60)
    assert s.next_after(0) == 60_000
    assert s.next_after(59_999) == 60_000
    assert s.next_after(60_000) == 120_000  # strictly after
    assert s.ticks(30_000, 180_000) == [60_000, 120_000, 180_000]
    assert Schedule("h", every=1.5).ticks(0, 4_500) == [1_500, 3_000, 4_500]


def test_cron_five_fields_in_utc() -> None:
    s = Schedule("s", cron="30 2 * * *")
    t0 = ms(2026, 1, 1, 0, 0, tz=ZoneInfo("UTC"))
    assert [local(t, ZoneInfo("UTC")) for t in s.ticks(t0, t0 + 2 * 86_400_000)] == [
        "2026-01-01T02:30:00+00:00",
        "2026-01-02T02:30:00+00:00",
    ]
    weekdays = Schedule("w", cron="0 9 * * mon-fri")
    monday = ms(2026, 1, 5, 0, 0, tz=ZoneInfo("UTC"))
    assert len(weekdays.ticks(monday, monday + 7 * 86_400_000)) == 5


def test_cron_six_fields_has_seconds_first() -> None:
    s = Schedule("s", cron="*/15 * * * * *")
    assert s.ticks(0, 60_000) == [15_000, 30_000, 45_000, 60_000]
    assert s.next_after(14_999) == 15_000


def test_cron_in_a_time_zone() -> None:
    s = Schedule("s", cron="0 9 * * *", timezone="America/New_York")
    t = s.next_after(ms(2026, 6, 1, 0, 0, tz=NEW_YORK))
    assert local(t, NEW_YORK) == "2026-06-01T09:00:00-04:00"
    assert datetime.fromtimestamp(t / 1000, UTC).hour == 13


def test_spring_forward_skipped_time_ticks_at_the_jump() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never happens
    s = Schedule("s", cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = s.ticks(ms(2026, 3, 27, 12, 0), ms(2026, 3, 31, 0, 0))
    assert [local(t) for t in ticks] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # once, at the jump
        "2026-03-30T02:30:00+02:00",
    ]
    q = Schedule("q", cron="*/20 * * * *", timezone="Europe/Berlin")
    ticks = q.ticks(ms(2026, 3, 29, 1, 0), ms(2026, 3, 29, 3, 40))
    assert [local(t) for t in ticks] == [
        "2026-03-29T01:20:00+01:00",
        "2026-03-29T01:40:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00, 02:20, 02:40 and 03:00 collapse here
        "2026-03-29T03:20:00+02:00",
        "2026-03-29T03:40:00+02:00",
    ]
    assert ticks == sorted(set(ticks))


def test_fall_back_repeated_time_ticks_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice
    s = Schedule("s", cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = s.ticks(ms(2026, 10, 23, 12, 0), ms(2026, 10, 27, 0, 0))
    assert [local(t) for t in ticks] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # the first 02:30 only
        "2026-10-26T02:30:00+01:00",
    ]
    # from inside the repeated hour's second pass, the next tick is after it
    q = Schedule("q", cron="*/20 * * * *", timezone="Europe/Berlin")
    assert local(q.next_after(ms(2026, 10, 25, 2, 10, fold=1))) == "2026-10-25T03:00:00+01:00"
    # UTC has no such thing: a steady interval
    u = Schedule("u", cron="0 * * * *")
    day = u.ticks(
        ms(2026, 10, 25, 0, 0, tz=ZoneInfo("UTC")), ms(2026, 10, 26, 0, 0, tz=ZoneInfo("UTC"))
    )
    assert len(day) == 24


def test_every_process_computes_the_same_ticks() -> None:
    s = Schedule("s", cron="*/7 * * * * *", timezone="Europe/Berlin")
    start = ms(2026, 3, 29, 1, 59, 0)
    whole = s.ticks(start, start + 1_800_000)
    # a process starting from any point in between finds the same later ticks
    for cut in (start + 1, start + 61_000, whole[10], whole[10] + 1):
        assert s.ticks(cut, start + 1_800_000) == [t for t in whole if t > cut]


def test_missed_ticks_are_the_most_recent_ones() -> None:
    s = Schedule("s", every=1, catch_up=2)
    assert _missed(s, 10_000, 20_500) == [19_000, 20_000]
    assert _missed(Schedule("z", every=1), 10_000, 20_500) == []
    # a long outage: no scan of a year of ticks, still the latest ones
    assert _missed(s, 0, 365 * 86_400_000 + 500) == [365 * 86_400_000 - 1000, 365 * 86_400_000]
    assert _missed(Schedule("c", every=3600, catch_up=5), 0, 7_300_000) == [3_600_000, 7_200_000]


def test_tick_keys_are_valid_run_ids_and_distinct() -> None:
    k = tick_key("nightly", ms(2026, 1, 1, 2, 30, tz=ZoneInfo("UTC")))
    assert k == "sched-nightly-20260101T023000Z"
    assert tick_key("n", 1_500) == "sched-n-19700101T000001500Z"
    long = "x" * 64
    assert RUN_KEY_RE.fullmatch(tick_key(long, 1_000)) and tick_key(long, 1_000) != tick_key(
        long, 2_000
    )
    assert tick_key("a", 1_000) != tick_key("b", 1_000)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of every= and cron="),
        ({"every": 5, "cron": "* * * * *"}, "exactly one"),
        ({"every": 0.5}, "at least 1 second"),
        ({"every": True}, "number of seconds"),
        ({"cron": "* * * *"}, "5 fields"),
        ({"cron": "* * * * * * *"}, "5 fields"),
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"cron": "0 0 30 2 *"}, "invalid cron"),  # never happens
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 60, "timezone": "Europe/Paris"}, "cron= only"),
        ({"every": 60, "catch_up": -1}, "catch_up"),
        ({"every": 60, "data": object()}, "JSON"),
    ],
)
def test_invalid_schedules_name_the_culprit(kwargs: dict[str, Any], match: str) -> None:
    flow = aioflow.Flow("f")
    with pytest.raises(aioflow.DefinitionError, match=match) as info:
        flow.schedule("nightly", **kwargs)
    assert "'nightly'" in str(info.value) and "'f'" in str(info.value)
    assert flow.schedules == {}


def test_schedule_names_are_checked_and_unique() -> None:
    flow = aioflow.Flow("f")
    s = flow.schedule("nightly", cron="0 3 * * *", data={"full": True})
    assert flow.schedules == {"nightly": s} and s.data == {"full": True}
    with pytest.raises(aioflow.DefinitionError, match="duplicate schedule name 'nightly'"):
        flow.schedule("nightly", every=60)
    with pytest.raises(aioflow.DefinitionError, match="invalid schedule name"):
        flow.schedule("no spaces", every=60)
    assert Schedule.from_doc(s.to_doc()) == s

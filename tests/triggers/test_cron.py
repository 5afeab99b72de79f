"""Cron semantics with a controllable clock: expressions (seconds first, descriptors), DST
days, overlap policies, catch-up after downtime, and restarts without double firing (the
trigger's state in either store: ``store_target``, SQLite and a real PostgreSQL)."""

from __future__ import annotations

import itertools
import re
import threading
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from dagengine.exceptions import TriggerError
from dagengine.orchestrator.store import StoreBackend, open_store
from dagengine.triggers import CronSchedule, CronTrigger, ManualClock, TriggerScheduler
from processes import wait_for

from .fakes import FakeExecutor

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       tz: str = "UTC", fold: int = 0) -> float:  # fmt: skip
    return datetime(
        year, month, day, hour, minute, second, tzinfo=ZoneInfo(tz), fold=fold
    ).timestamp()


def local(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


def utc_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


# -- expressions ------------------------------------------------------------------------------


def test_six_fields_put_seconds_first() -> None:
    sched = CronSchedule("*/10 * * * * *")
    start = ts(2024, 1, 1)
    assert sched.next_fire_times(3, start) == [start + 10, start + 20, start + 30]
    # 09:30:15 on Mondays: seconds 15, minute 30, hour 9, dow 1.
    monday = CronSchedule("15 30 9 * * 1")
    first = monday.next_after(ts(2024, 1, 1))  # 2024-01-01 is a Monday
    assert utc_iso(first) == "2024-01-01T09:30:15Z"
    assert utc_iso(monday.next_after(first)) == "2024-01-08T09:30:15Z"


def test_five_fields_and_descriptors() -> None:
    start = ts(2024, 5, 5, 10, 17)
    assert utc_iso(CronSchedule("*/15 * * * *").next_after(start)) == "2024-05-05T10:30:00Z"
    assert utc_iso(CronSchedule("@hourly").next_after(start)) == "2024-05-05T11:00:00Z"
    assert utc_iso(CronSchedule("@daily").next_after(start)) == "2024-05-06T00:00:00Z"
    assert utc_iso(CronSchedule("@midnight").next_after(start)) == "2024-05-06T00:00:00Z"
    assert utc_iso(CronSchedule("@weekly").next_after(start)) == "2024-05-12T00:00:00Z"
    assert utc_iso(CronSchedule("@monthly").next_after(start)) == "2024-06-01T00:00:00Z"
    assert utc_iso(CronSchedule("@yearly").next_after(start)) == "2025-01-01T00:00:00Z"


def days(expression: str, start: tuple[int, int, int], n: int = 6) -> list[str]:
    """The dates of the next ``n`` fires (UTC) from the start of ``start``."""
    times = CronSchedule(expression).next_fire_times(n, ts(*start) - 1)
    return [utc_iso(t)[:10] for t in times]


def test_a_range_of_one_value_is_that_value() -> None:
    # croniter read 2-2 as * (every hour).
    assert [utc_iso(t) for t in CronSchedule("0 2-2 * * *").next_fire_times(2, ts(2024, 1, 1))] == [
        "2024-01-01T02:00:00Z", "2024-01-02T02:00:00Z",
    ]  # fmt: skip
    assert (
        utc_iso(CronSchedule("0 23-23 * * *").next_after(ts(2024, 1, 1))) == "2024-01-01T23:00:00Z"
    )
    assert (
        utc_iso(CronSchedule("5-5 * * * *").next_after(ts(2024, 1, 1, 0, 6)))
        == "2024-01-01T01:05:00Z"
    )
    assert days("0 0 15-15 * *", (2024, 1, 1), 2) == ["2024-01-15", "2024-02-15"]
    assert days("0 0 * * 3-3", (2024, 1, 1), 2) == ["2024-01-03", "2024-01-10"]


def test_star_slash_one_in_a_day_field_is_unrestricted() -> None:
    # `*/1` is `*`: the other day field alone decides. croniter fired `0 0 */1 * 1` daily.
    assert days("0 0 */1 * 1", (2024, 1, 1), 3) == ["2024-01-01", "2024-01-08", "2024-01-15"]
    assert days("0 0 1 * */1", (2024, 1, 1), 3) == ["2024-01-01", "2024-02-01", "2024-03-01"]
    assert days("0 0 ? * MON", (2024, 1, 1), 2) == ["2024-01-01", "2024-01-08"]
    # Both restricted: a day matching either fires (the 1st, and every Monday).
    assert days("0 0 1 * 1", (2024, 1, 1), 4) == [
        "2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22",
    ]  # fmt: skip
    assert days("0 0 1 * 1", (2024, 1, 23), 2) == ["2024-01-29", "2024-02-01"]
    # robfig/cron v3: `*/2` is a restriction too (odd days, or Mondays), unlike Vixie cron.
    assert days("0 0 */2 * 1", (2024, 1, 1), 6) == [
        "2024-01-01", "2024-01-03", "2024-01-05", "2024-01-07", "2024-01-08", "2024-01-09",
    ]  # fmt: skip


def test_names_sunday_as_7_and_open_steps() -> None:
    assert days("0 0 * * 7", (2024, 1, 1), 2) == days("0 0 * * SUN", (2024, 1, 1), 2)
    assert days("0 0 * * 5-7", (2024, 1, 1), 4) == [
        "2024-01-05", "2024-01-06", "2024-01-07", "2024-01-12",
    ]  # fmt: skip
    assert days("0 0 1 jan-Mar,DEC *", (2024, 1, 2), 4) == [
        "2024-02-01", "2024-03-01", "2024-12-01", "2025-01-01",
    ]  # fmt: skip
    # N/S runs to the end of the field; in day-of-week that is 6 (Saturday), not 7.
    assert days("0 0 * * 1/2", (2024, 1, 1), 4) == [
        "2024-01-01", "2024-01-03", "2024-01-05", "2024-01-08",
    ]  # fmt: skip
    times = CronSchedule("50/5 * * * *").next_fire_times(3, ts(2024, 1, 1))
    assert [utc_iso(t)[11:16] for t in times] == ["00:50", "00:55", "01:50"]


def test_last_day_last_weekday_and_nth_weekday() -> None:
    assert days("0 0 L * *", (2024, 1, 1), 3) == ["2024-01-31", "2024-02-29", "2024-03-31"]
    assert days("0 0 L 2 *", (2025, 1, 1), 2) == ["2025-02-28", "2026-02-28"]
    assert days("0 0 * * 5L", (2024, 1, 1), 3) == ["2024-01-26", "2024-02-23", "2024-03-29"]
    assert days("0 0 * * FRIL", (2024, 1, 1), 1) == ["2024-01-26"]
    assert days("0 0 * * MON#2", (2024, 1, 1), 2) == ["2024-01-08", "2024-02-12"]
    # 1#5: only months with five Mondays. croniter said "never fires" once the day of
    # month was restricted too (then either matches: the 1st, or a fifth Monday).
    assert days("0 0 * * 1#5", (2024, 1, 1), 3) == ["2024-01-29", "2024-04-29", "2024-07-29"]
    assert days("0 0 1 * 1#5", (2024, 1, 2), 3) == ["2024-01-29", "2024-02-01", "2024-03-01"]
    assert days("0 0 * 2 1#5", (2024, 1, 1), 1) == ["2044-02-29"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute field: '61': 61 is out of range 0-59"),
        ("0 24 * * *", "hour field: '24': 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field: '0': 0 is out of range 1-31"),
        ("0 0 * 13 *", "month field: '13': 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: '8': 8 is out of range 0-7"),
        ("0 5-2 * * *", "hour field: '5-2': the range runs backwards"),
        ("*/0 * * * *", "minute field: '*/0': the step must be at least 1"),
        ("0 0 1,,2 * *", "day-of-month field: '1,,2' has an empty list item"),
        ("0 0 * foo *", "month field: 'foo': 'foo' is neither a number nor a name (jan-dec)"),
        ("0 mon * * *", "hour field: 'mon': 'mon' is not a number"),
        ("0 0 * * 1-2-3", "day-of-week field: '1-2-3': more than one '-'"),
        ("0 0 * * 1/2/3", "day-of-week field: '1/2/3': more than one '/'"),
        # W is refused (croniter read 15W as 15), and L and # outside their forms.
        ("0 0 15W * *", "day-of-month field: '15W': 'W' (nearest weekday) is not supported"),
        ("0 0 LW * *", "day-of-month field: 'LW': 'W' (nearest weekday) is not supported"),
        ("0 0 L-3 * *", "day-of-month field: 'L-3': 'L' must stand alone"),
        ("0 0 L/2 * *", "day-of-month field: 'L/2': 'L' must stand alone"),
        ("0 0 1#2 * *", "day-of-month field: '1#2': '#' is only supported as day-of-week"),
        ("0 0 * * L", "day-of-week field: 'L': 'L' alone is not supported in day-of-week"),
        ("0 0 * * 1#6", "day-of-week field: '1#6': the week number must be 1-5"),
        ("0 0 * * 1#2/2", "day-of-week field: '1#2/2': '#' is only supported as D#N"),
        ("0 0 * * 5L-6", "day-of-week field: '5L-6': 'L' is only supported as DL"),
        ("0 L * * *", "hour field: 'L': 'L' and 'W' are only supported in the day fields"),
        ("0 0 * 1#2 *", "month field: '1#2': '#' is only supported as day-of-week"),
        ("@every 5m", "@every is not supported"),
        ("CRON_TZ=UTC 0 * * * *", "CRON_TZ= prefix is not supported"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 30,31 2 *", "never fires"),
    ],
)
def test_dialect_errors_name_the_field_and_the_item(expression: str, message: str) -> None:
    with pytest.raises(TriggerError, match=re.escape(message)):
        CronSchedule(expression)


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("", "UTC", "empty"),
        ("* * * *", "UTC", "4 fields"),
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("@fortnightly", "UTC", "unknown cron descriptor"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_expressions_raise(expression: str, zone: str, message: str) -> None:
    with pytest.raises(TriggerError, match=message):
        CronSchedule(expression, zone)
    with pytest.raises(TriggerError, match=message):
        CronTrigger("t", expression, "wf", timezone=zone)


def test_bad_policies_raise() -> None:
    with pytest.raises(TriggerError, match="overlap"):
        CronTrigger("t", "* * * * *", "wf", overlap="queue")
    with pytest.raises(TriggerError, match="catchup"):
        CronTrigger("t", "* * * * *", "wf", catchup="some")
    with pytest.raises(TriggerError, match="catchup_window"):
        CronTrigger("t", "* * * * *", "wf", catchup_window="soon")


# -- DST -------------------------------------------------------------------------------------


def fires_on(expression: str, zone: str, day: tuple[int, int, int]) -> list[str]:
    sched = CronSchedule(expression, zone)
    start = ts(*day, tz=zone) - 1
    end = ts(*day, 23, 59, 59, tz=zone)
    return [local(t, zone) for t in sched.fire_times(start, end)]


def test_spring_forward_new_york_fires_once_after_the_gap() -> None:
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    assert fires_on("30 2 * * *", NY, (2024, 3, 10)) == ["2024-03-10T03:00:00-04:00"]
    # Every time inside the gap collapses into the one fire at 03:00.
    assert fires_on("*/20 2 * * *", NY, (2024, 3, 10)) == ["2024-03-10T03:00:00-04:00"]
    # The days around it are normal.
    assert fires_on("30 2 * * *", NY, (2024, 3, 9)) == ["2024-03-09T02:30:00-05:00"]
    assert fires_on("30 2 * * *", NY, (2024, 3, 11)) == ["2024-03-11T02:30:00-04:00"]


def test_fall_back_new_york_fires_once_at_the_first_occurrence() -> None:
    # 2024-11-03: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
    assert fires_on("30 1 * * *", NY, (2024, 11, 3)) == ["2024-11-03T01:30:00-04:00"]
    assert fires_on("15 30 1 * * *", NY, (2024, 11, 3)) == ["2024-11-03T01:30:15-04:00"]
    assert fires_on("30 1 * * *", NY, (2024, 11, 4)) == ["2024-11-04T01:30:00-05:00"]


def test_berlin_dst_days() -> None:
    # 2024-03-31: 02:00 CET -> 03:00 CEST; 2024-10-27: 03:00 CEST -> 02:00 CET.
    assert fires_on("30 2 * * *", BERLIN, (2024, 3, 31)) == ["2024-03-31T03:00:00+02:00"]
    assert fires_on("30 2 * * *", BERLIN, (2024, 10, 27)) == ["2024-10-27T02:30:00+02:00"]
    assert fires_on("0 3 * * *", BERLIN, (2024, 3, 31)) == ["2024-03-31T03:00:00+02:00"]


def test_every_hour_jobs_keep_their_rhythm_through_the_repeated_hour() -> None:
    sched = CronSchedule("*/20 * * * *", NY)
    start = ts(2024, 11, 3, 0, 0, tz=NY) - 1
    times = sched.fire_times(start, ts(2024, 11, 3, 3, 0, tz=NY))
    # 00:00..01:40 EDT, 01:00..01:40 EST again, 02:00..03:00 EST: every 20 real minutes.
    assert len(times) == 13
    assert {b - a for a, b in itertools.pairwise(times)} == {1200.0}
    # Asking from inside the first pass of the repeated hour still finds the second pass.
    in_first_pass = ts(2024, 11, 3, 1, 45, tz=NY, fold=0)
    assert local(sched.next_after(in_first_pass), NY) == "2024-11-03T01:00:00-05:00"
    # And spring forward: 01:40 EST is followed by 03:00 EDT (20 real minutes).
    spring = sched.fire_times(ts(2024, 3, 10, 1, 30, tz=NY), ts(2024, 3, 10, 3, 30, tz=NY))
    assert [local(t, NY) for t in spring] == [
        "2024-03-10T01:40:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T03:20:00-04:00",
    ]


@pytest.mark.parametrize("expression", ["0 * * * *", "@hourly", "0 0-23 * * *"])
def test_every_hour_fires_in_both_passes_of_the_repeated_hour(expression: str) -> None:
    # The README promises it; the old code fired 01:00 once (the second pass was missed
    # when asked from 01:00 EDT exactly).
    assert fires_on(expression, NY, (2024, 11, 3))[:5] == [
        "2024-11-03T00:00:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T03:00:00-05:00",
    ]
    assert len(fires_on(expression, NY, (2024, 11, 3))) == 25
    assert len(fires_on(expression, NY, (2024, 3, 10))) == 23


def test_every_hour_jobs_have_no_fire_in_the_skipped_hour() -> None:
    # Real time: 02:30 never happens on a spring-forward day, so `30 * * * *` does not fire
    # at 03:00 as well as at 03:30 (the old code did: two fires 30 minutes apart).
    sched = CronSchedule("30 * * * *", NY)
    times = sched.fire_times(ts(2024, 3, 10, 1, 0, tz=NY), ts(2024, 3, 10, 4, 0, tz=NY))
    assert [local(t, NY) for t in times] == [
        "2024-03-10T01:30:00-05:00",
        "2024-03-10T03:30:00-04:00",
    ]


def test_lord_howe_half_hour_shifts() -> None:
    lh = "Australia/Lord_Howe"
    # 2025-10-05: 02:00 +10:30 -> 02:30 +11:00. On real time 02:45 exists and fires ...
    assert fires_on("45 * * * *", lh, (2025, 10, 5))[1:4] == [
        "2025-10-05T01:45:00+10:30", "2025-10-05T02:45:00+11:00", "2025-10-05T03:45:00+11:00",
    ]  # fmt: skip
    # ... 02:15 does not; on wall-clock time it fires once, when the gap ends.
    assert "02:15" not in " ".join(fires_on("15 * * * *", lh, (2025, 10, 5)))
    assert fires_on("15 2 * * *", lh, (2025, 10, 5)) == ["2025-10-05T02:30:00+11:00"]
    # 2025-04-06: 02:00 +11:00 -> 01:30 +10:30: 01:30-01:59 happen twice.
    assert fires_on("37 * * * *", lh, (2025, 4, 6))[1:4] == [
        "2025-04-06T01:37:00+11:00", "2025-04-06T01:37:00+10:30", "2025-04-06T02:37:00+10:30",
    ]  # fmt: skip
    assert fires_on("37 1 * * *", lh, (2025, 4, 6)) == ["2025-04-06T01:37:00+11:00"]
    assert fires_on("17 1 * * *", lh, (2025, 4, 6)) == ["2025-04-06T01:17:00+11:00"]


def test_next_fire_times_preview_in_the_trigger_time_zone() -> None:
    trig = CronTrigger("t", "0 9 * * 1-5", "wf", timezone=BERLIN)
    times = trig.next_fire_times(3, after=ts(2024, 6, 7, 12))  # a Friday
    assert [t.isoformat() for t in times] == [
        "2024-06-10T09:00:00+02:00",
        "2024-06-11T09:00:00+02:00",
        "2024-06-12T09:00:00+02:00",
    ]


# -- firing ----------------------------------------------------------------------------------


class Rig:
    """A trigger on a manual clock, its scheduler driven by hand."""

    def __init__(self, start: float, store: StoreBackend | None = None) -> None:
        self.clock = ManualClock(start)
        self.scheduler = TriggerScheduler(self.clock)
        self.executor = FakeExecutor()
        self.store = store

    def trigger(self, schedule: str = "*/10 * * * * *", **kwargs: object) -> CronTrigger:
        return CronTrigger(
            "job",
            schedule,
            "wf",
            scheduler=self.scheduler,
            store=self.store,
            **kwargs,  # type: ignore[arg-type]
        )

    def advance(self, seconds: float, step: float = 1.0) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.clock.advance(min(step, end - self.clock.now()))
            self.scheduler.run_pending()


def test_fires_with_trigger_inputs_and_inputs_builder() -> None:
    rig = Rig(ts(2024, 1, 1))
    counter = iter(range(100))
    trig = rig.trigger(
        inputs={"mode": "full", "n": -1}, inputs_builder=lambda: {"n": next(counter)},
        version="1.2.0", overlap="allow",
    )  # fmt: skip
    trig.start(rig.executor)
    assert trig.is_active
    rig.advance(30)
    assert [c[1]["n"] for c in rig.executor.calls] == [0, 1, 2]
    workflow_id, inputs, version = rig.executor.calls[0]
    assert (workflow_id, version) == ("wf", "1.2.0")
    assert inputs["mode"] == "full"
    assert inputs["_trigger_type"] == "cron"
    assert inputs["_trigger_id"] == "job"
    assert rig.executor.times() == [
        "2024-01-01T00:00:10Z", "2024-01-01T00:00:20Z", "2024-01-01T00:00:30Z",
    ]  # fmt: skip


def test_start_twice_raises_and_start_after_stop_works() -> None:
    rig = Rig(ts(2024, 1, 1))
    trig = rig.trigger(overlap="allow")
    trig.start(rig.executor)
    with pytest.raises(TriggerError, match="already started"):
        trig.start(rig.executor)
    rig.advance(10)
    trig.stop()
    assert not trig.is_active
    rig.advance(30)
    assert len(rig.executor.calls) == 1
    trig.start(rig.executor)
    rig.advance(10)
    assert len(rig.executor.calls) == 2


def test_overlap_skip_is_the_default() -> None:
    rig = Rig(ts(2024, 1, 1))
    trig = rig.trigger()
    trig.start(rig.executor)
    rig.advance(30)  # 3 fires while the first run is unfinished
    assert len(rig.executor.calls) == 1
    assert trig.stats["skipped"] == 2
    rig.executor.runs[0].finish()
    rig.advance(10)
    assert len(rig.executor.calls) == 2


def test_overlap_allow() -> None:
    rig = Rig(ts(2024, 1, 1))
    rig.trigger(overlap="allow").start(rig.executor)
    rig.advance(30)
    assert len(rig.executor.calls) == 3


def test_overlap_buffer_one_keeps_one_pending_fire() -> None:
    rig = Rig(ts(2024, 1, 1))
    trig = rig.trigger(overlap="buffer_one")
    trig.start(rig.executor)
    rig.advance(40)  # fires at 10 (runs), 20 (buffered), 30 and 40 (dropped)
    assert len(rig.executor.calls) == 1
    assert trig.stats["buffered"] == 1
    assert trig.stats["skipped"] == 2
    rig.executor.runs[0].finish()
    assert trig.wait_idle()
    # The buffered fire starts when the previous run finishes, with its own time.
    assert rig.executor.times() == ["2024-01-01T00:00:10Z", "2024-01-01T00:00:20Z"]


def test_overlap_cancel_previous() -> None:
    rig = Rig(ts(2024, 1, 1))
    trig = rig.trigger(overlap="cancel_previous")
    trig.start(rig.executor)
    rig.advance(20)
    assert len(rig.executor.calls) == 2
    assert rig.executor.runs[0].cancelled
    assert not rig.executor.runs[1].cancelled
    assert trig.stats["cancelled"] == 1


def test_a_failing_submission_does_not_stop_the_trigger() -> None:
    rig = Rig(ts(2024, 1, 1))
    calls = 0

    def flaky() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("no inputs today")
        return {}

    trig = rig.trigger(overlap="allow", inputs_builder=flaky)
    trig.start(rig.executor)
    rig.advance(20)
    assert trig.stats["errors"] == 1
    assert len(rig.executor.calls) == 1


# -- persistence, catch-up and restarts --------------------------------------------------------


def test_restart_without_downtime_never_fires_twice(store_target: str) -> None:
    store = open_store(store_target)
    rig = Rig(ts(2024, 1, 1), store)
    trig = rig.trigger(overlap="allow", catchup="all", catchup_window=3600)
    trig.start(rig.executor)
    rig.advance(30)
    trig.stop()
    store.close()
    # A new process: same store, same clock time (no downtime).
    store2 = open_store(store_target)
    rig2 = Rig(rig.clock.now(), store2)
    trig2 = rig2.trigger(overlap="allow", catchup="all", catchup_window=3600)
    trig2.start(rig2.executor)
    rig2.advance(20)
    assert rig.executor.times() + rig2.executor.times() == [
        f"2024-01-01T00:00:{s}Z" for s in (10, 20, 30, 40, 50)
    ]
    store2.close()


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_catch_up_after_downtime(store_target: str, policy: str) -> None:
    store = open_store(store_target)
    rig = Rig(ts(2024, 1, 1, 0, 0, 5), store)
    trig = rig.trigger("0 * * * * *", overlap="skip", catchup=policy, catchup_window="3m")
    trig.start(rig.executor)
    rig.advance(60)  # fires 00:01:00
    trig.stop()
    # Down from 00:01:05 to 00:06:30: 00:02 .. 00:06 missed; the window (3 min) keeps
    # 00:04, 00:05, 00:06 (00:03:30 is the window's start).
    rig2 = Rig(ts(2024, 1, 1, 0, 6, 30), store)
    trig2 = rig2.trigger("0 * * * * *", overlap="skip", catchup=policy, catchup_window="3m")
    trig2.start(rig2.executor)
    expected = (
        ["2024-01-01T00:04:00Z", "2024-01-01T00:05:00Z", "2024-01-01T00:06:00Z"]
        if policy == "all"
        else ["2024-01-01T00:06:00Z"]
    )
    # Each missed time runs once, even under `skip` (they were asked for), stamped with
    # the time it was due.
    assert rig2.executor.times() == expected
    assert trig2.stats["caught_up"] == len(expected)
    # And the catch-up fires are persisted: a third start at the same moment repeats none.
    trig2.stop()
    rig3 = Rig(rig2.clock.now(), store)
    rig3.trigger("0 * * * * *", catchup=policy, catchup_window="3m").start(rig3.executor)
    assert rig3.executor.calls == []
    store.close()


def test_no_catch_up_without_a_window(store_target: str) -> None:
    store = open_store(store_target)
    rig = Rig(ts(2024, 1, 1), store)
    rig.trigger("0 * * * * *").start(rig.executor)
    rig2 = Rig(ts(2024, 1, 1, 1), store)
    trig = rig2.trigger("0 * * * * *")
    trig.start(rig2.executor)
    assert rig2.executor.calls == []
    rig2.advance(60)
    assert rig2.executor.times() == ["2024-01-01T01:01:00Z"]
    store.close()


def test_restart_sees_the_previous_run_still_going(store_target: str) -> None:
    """After a restart, `skip` still skips while the run started before it is unfinished
    (the run id is in the trigger's state; its status comes from the executor)."""
    store = open_store(store_target)
    rig = Rig(ts(2024, 1, 1), store)
    rig.trigger().start(rig.executor)
    rig.advance(10)
    run = rig.executor.runs[0]

    class Resumed:
        status = "running"

    executor = rig.executor
    executor.get_run = lambda run_id: Resumed  # type: ignore[attr-defined]
    rig2 = Rig(rig.clock.now(), store)
    rig2.executor = executor
    trig = rig2.trigger()
    trig.start(executor)
    rig2.advance(20)
    assert trig.stats["skipped"] == 2
    Resumed.status = "succeeded"
    rig2.advance(10)
    assert len(executor.calls) == 2
    assert run.run_id == "run-1"
    store.close()


# -- the scheduler ---------------------------------------------------------------------------


def test_one_timer_thread_per_executor() -> None:
    executor = FakeExecutor()
    before = {t.name for t in threading.enumerate()}
    triggers = [CronTrigger(f"t{i}", "0 0 1 1 *", "wf") for i in range(20)]
    for trig in triggers:
        trig.start(executor)
    try:
        new = [t for t in threading.enumerate() if t.name not in before]
        assert [t.name for t in new] == ["dagengine-triggers"]
        assert len(TriggerScheduler.for_executor(executor)) == 20
    finally:
        for trig in triggers:
            trig.stop()
        TriggerScheduler.for_executor(executor).stop()


def test_scheduler_thread_follows_a_manual_clock() -> None:
    clock = ManualClock(ts(2024, 1, 1))
    scheduler = TriggerScheduler(clock).start()
    executor = FakeExecutor()
    trig = CronTrigger("t", "*/5 * * * * *", "wf", scheduler=scheduler, overlap="allow")
    trig.start(executor)
    try:
        clock.advance(5)
        wait_for(lambda: bool(executor.calls), "the trigger to fire")
        assert executor.times() == ["2024-01-01T00:00:05Z"]
    finally:
        trig.stop()
        scheduler.stop()


class _LockedScheduled:
    """A scheduled entry that stops the way `Trigger.stop` does: under its own lock, it
    calls `scheduler.remove`; `is_active` takes the same lock."""

    def __init__(self, scheduler: TriggerScheduler) -> None:
        self.scheduler = scheduler
        self.lock = threading.RLock()
        self.active = True
        self.asked = threading.Event()

    @property
    def is_active(self) -> bool:
        self.asked.set()
        with self.lock:
            return self.active

    def on_due(self, when: float) -> float | None:
        return when + 1

    def stop(self) -> None:
        with self.lock:
            self.active = False
            self.scheduler.remove(self)


def test_stop_while_the_timer_thread_reschedules_does_not_deadlock() -> None:
    # The timer thread once asked `is_active` while holding the scheduler's condition, and
    # `stop` holds the trigger's lock while it calls `remove`: a lock-order deadlock that hung
    # CI. Here the stop holds its lock until the timer thread asks, then removes.
    clock = ManualClock(ts(2024, 1, 1))
    scheduler = TriggerScheduler(clock)
    entry = _LockedScheduled(scheduler)
    scheduler.add(entry, clock.now())
    stopped = threading.Event()

    def stop_when_asked() -> None:
        with entry.lock:
            entry.asked.wait(10)
            entry.stop()
        stopped.set()

    stopper = threading.Thread(target=stop_when_asked, daemon=True)
    stopper.start()
    firer = threading.Thread(target=scheduler.run_pending, daemon=True)
    firer.start()
    firer.join(10)
    stopper.join(10)
    assert stopped.is_set(), "stop and the timer thread deadlocked"
    assert not firer.is_alive(), "stop and the timer thread deadlocked"
    assert len(scheduler) == 0  # stopped: not rescheduled
    assert scheduler.next_due() is None

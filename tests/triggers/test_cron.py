"""Cron semantics with a controllable clock: expressions (seconds first, descriptors), DST
days, overlap policies, catch-up after downtime, and restarts without double firing."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dagengine.exceptions import TriggerError
from dagengine.orchestrator.store import Store
from dagengine.triggers import CronSchedule, CronTrigger, ManualClock, TriggerScheduler

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


def test_six_fields_put_seconds_first_and_are_converted_for_croniter() -> None:
    sched = CronSchedule("*/10 * * * * *")
    assert sched.croniter_expression == "* * * * * */10"
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

    def __init__(self, start: float, store: Store | None = None) -> None:
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


def test_restart_without_downtime_never_fires_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    rig = Rig(ts(2024, 1, 1), store)
    trig = rig.trigger(overlap="allow", catchup="all", catchup_window=3600)
    trig.start(rig.executor)
    rig.advance(30)
    trig.stop()
    store.close()
    # A new process: same store, same clock time (no downtime).
    store2 = Store(tmp_path / "s.db")
    rig2 = Rig(rig.clock.now(), store2)
    trig2 = rig2.trigger(overlap="allow", catchup="all", catchup_window=3600)
    trig2.start(rig2.executor)
    rig2.advance(20)
    assert rig.executor.times() + rig2.executor.times() == [
        f"2024-01-01T00:00:{s}Z" for s in (10, 20, 30, 40, 50)
    ]
    store2.close()


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_catch_up_after_downtime(tmp_path: Path, policy: str) -> None:
    store = Store(tmp_path / "s.db")
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


def test_no_catch_up_without_a_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    rig = Rig(ts(2024, 1, 1), store)
    rig.trigger("0 * * * * *").start(rig.executor)
    rig2 = Rig(ts(2024, 1, 1, 1), store)
    trig = rig2.trigger("0 * * * * *")
    trig.start(rig2.executor)
    assert rig2.executor.calls == []
    rig2.advance(60)
    assert rig2.executor.times() == ["2024-01-01T01:01:00Z"]
    store.close()


def test_restart_sees_the_previous_run_still_going(tmp_path: Path) -> None:
    """After a restart, `skip` still skips while the run started before it is unfinished
    (the run id is in the trigger's state; its status comes from the executor)."""
    store = Store(tmp_path / "s.db")
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
        deadline = time.monotonic() + 5
        while not executor.calls and time.monotonic() < deadline:
            time.sleep(0.005)
        assert executor.times() == ["2024-01-01T00:00:05Z"]
    finally:
        trig.stop()
        scheduler.stop()

"""Cron triggers: schedules in a time zone, overlap policies, catch-up after downtime.

Expressions
    5 fields (``min hour dom mon dow``), 6 fields with **seconds first** (``sec min hour dom
    mon dow``, the original system's robfig/cron format; croniter wants seconds last, so the
    field is moved), or a descriptor: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
    ``@daily`` (``@midnight``), ``@hourly``.

Time zones and DST (the rule, evaluated on local wall-clock time in ``timezone``):
    * A wall time that does not exist (spring forward: 02:30 in New York on the second Sunday
      of March) fires once, at the first valid instant after the gap (03:00 local). Several
      times inside one gap collapse into that one fire.
    * A wall time that exists twice (fall back: 01:30 in New York on the first Sunday of
      November) fires once, at its first occurrence — unless the hour field is ``*``: an
      every-N-minutes job keeps its rhythm through the repeated hour, firing in both.

Overlap policies (``overlap``), when a fire comes while the previous run this trigger started
is unfinished: ``skip`` (default; the fire is dropped), ``allow`` (start another),
``buffer_one`` (keep at most one fire pending, started when the previous run finishes; later
fires meanwhile are dropped), ``cancel_previous`` (cancel the running one, start the new one).

Catch-up (``catchup_window`` seconds, default 0 = none): the trigger persists the time of the
last occurrence it processed (``store.set_trigger_state``) *before* it submits the run, so
after a restart nothing fires twice. Occurrences missed while it was down that lie inside the
window before now are fired at start — each once (``catchup="all"``, submitted together
regardless of the overlap policy: you asked for every one) or only the latest
(``catchup="latest"``) — with ``_trigger_time`` set to the time each was due. A timer fire
that comes more than :data:`LATE_TOLERANCE` late (a suspended process) resumes at the next
occurrence after now rather than firing a burst.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from dagengine._units import parse_duration
from dagengine.exceptions import TriggerError
from dagengine.triggers.base import (
    Executor,
    InputsBuilder,
    RunLike,
    Trigger,
    log,
    publish_trigger_event,
    trigger_inputs,
)
from dagengine.triggers.clock import Clock
from dagengine.triggers.scheduler import TriggerScheduler

__all__ = [
    "CATCHUP_POLICIES",
    "DESCRIPTORS",
    "LATE_TOLERANCE",
    "OVERLAP_POLICIES",
    "CronSchedule",
    "CronTrigger",
]

OverlapPolicy = Literal["skip", "allow", "buffer_one", "cancel_previous"]
CatchupPolicy = Literal["all", "latest"]
OVERLAP_POLICIES: Final = ("skip", "allow", "buffer_one", "cancel_previous")
CATCHUP_POLICIES: Final = ("all", "latest")

DESCRIPTORS: Final[Mapping[str, str]] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: A timer fire later than this (seconds) skips to the next occurrence after now.
LATE_TOLERANCE: Final = 1.0

_UTC = timezone.utc


class CronSchedule:
    """A cron expression in a time zone: :meth:`next_after` gives fire times as unix
    seconds, following the DST rule of the module docs. Raises :class:`TriggerError` for an
    invalid expression, an unknown time zone, or an expression that never fires."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise TriggerError("empty cron expression")
        self.expression = expression.strip()
        text = DESCRIPTORS.get(self.expression.lower(), self.expression)
        if text.startswith("@"):
            raise TriggerError(
                f"unknown cron descriptor {self.expression!r} (use one of {', '.join(DESCRIPTORS)})"
            )
        fields = text.split()
        if len(fields) == 6:
            # robfig/cron puts seconds first; croniter wants them last.
            fields = [*fields[1:], fields[0]]
        elif len(fields) != 5:
            raise TriggerError(
                f"cron expression {self.expression!r} has {len(fields)} fields: use 5 "
                "(min hour dom mon dow), 6 with seconds first, or a descriptor like @hourly"
            )
        self._croniter_expr = " ".join(fields)
        try:
            expanded = croniter(self._croniter_expr).expanded
        except Exception as exc:  # croniter raises several unrelated classes
            raise TriggerError(f"invalid cron expression {self.expression!r}: {exc}") from None
        hours = expanded[1]
        # A wildcard hour field fires in every real hour, the repeated one included.
        self._every_hour = hours == ["*"] or len(set(hours)) == 24
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TriggerError(f"unknown time zone {timezone!r} (use an IANA name)") from None
        self.timezone = timezone
        try:
            self.next_after(datetime.now(_UTC).timestamp())
        except Exception:
            raise TriggerError(f"cron expression {self.expression!r} never fires") from None

    @property
    def croniter_expression(self) -> str:
        """The expression as croniter reads it (seconds last)."""
        return self._croniter_expr

    # -- local time -----------------------------------------------------------------------

    def _transition(self, lo: float, hi: float) -> float:
        """The first whole second in ``(lo, hi]`` whose UTC offset differs from ``lo``'s."""
        before = datetime.fromtimestamp(lo, self.tz).utcoffset()
        low, high = int(lo), int(hi) + 1
        while high - low > 1:
            mid = (low + high) // 2
            if datetime.fromtimestamp(mid, self.tz).utcoffset() == before:
                low = mid
            else:
                high = mid
        return float(high)

    def _instants(self, wall: datetime) -> list[float]:
        """Unix times at which naive local ``wall`` fires, ascending (see the DST rule)."""
        first = wall.replace(tzinfo=self.tz, fold=0)
        second = wall.replace(tzinfo=self.tz, fold=1)
        t0, t1 = first.timestamp(), second.timestamp()
        if t0 == t1:
            return [t0]
        if t0 < t1:  # exists twice (fall back)
            return [t0, t1] if self._every_hour else [t0]
        # Does not exist (spring forward): the first instant after the gap.
        return [self._transition(t1, t0)]

    def _ambiguous_start(self, moment: datetime) -> datetime | None:
        """If ``moment`` (aware, local) falls in the first pass of a repeated wall-clock
        period, the naive wall time at which that period starts; else ``None``."""
        naive = moment.replace(tzinfo=None)
        t0 = naive.replace(tzinfo=self.tz, fold=0).timestamp()
        t1 = naive.replace(tzinfo=self.tz, fold=1).timestamp()
        if not t0 < t1 or moment.fold == 1:
            return None
        switch = self._transition(t0, t1)  # the instant the clock is set back
        return datetime.fromtimestamp(switch, self.tz).replace(tzinfo=None)

    def next_after(self, after: float) -> float:
        """The first fire time strictly after ``after`` (unix seconds)."""
        moment = datetime.fromtimestamp(after, self.tz)
        naive = moment.replace(tzinfo=None, microsecond=0)
        best: float | None = None
        # Walk wall times forward. Past ``naive`` the first wall time with an instant after
        # ``after`` is the answer: instants grow with wall time outside a repeated period,
        # and inside one (second pass) the second instants grow too.
        it = croniter(self._croniter_expr, naive)
        for _ in range(100_000):
            wall = it.get_next(datetime)
            later = [t for t in self._instants(wall) if t > after]
            if later:
                best = later[0]
                break
        if self._every_hour:
            # In the first pass of a repeated hour, the second pass of wall times *before*
            # now is still ahead of us (01:45 EDT is followed by 01:00 EST).
            start = self._ambiguous_start(moment)
            if start is not None:
                wall = croniter(self._croniter_expr, start - timedelta(seconds=1)).get_next(
                    datetime
                )
                if wall < naive:
                    again = self._instants(wall)[-1]
                    if again > after and (best is None or again < best):
                        best = again
        if best is None:
            raise TriggerError(f"cron expression {self.expression!r} never fires")
        return best

    def fire_times(self, after: float, until: float, limit: int = 100_000) -> list[float]:
        """Fire times in ``(after, until]``, ascending (at most ``limit``)."""
        out: list[float] = []
        t = after
        while len(out) < limit:
            t = self.next_after(t)
            if t > until:
                break
            out.append(t)
        return out

    def next_fire_times(self, n: int, after: float | None = None) -> list[float]:
        """The next ``n`` fire times after ``after`` (default: now)."""
        t = datetime.now(_UTC).timestamp() if after is None else after
        out: list[float] = []
        for _ in range(n):
            t = self.next_after(t)
            out.append(t)
        return out

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"


class _StoredRun:
    """A run started before a restart, known by id only: its state comes from the store."""

    def __init__(self, executor: Any, run_id: str) -> None:
        self._executor = executor
        self.run_id = run_id

    @property
    def done(self) -> bool:
        try:
            status = self._executor.get_run(self.run_id).status
        except Exception:
            return True  # gone from the store: nothing to wait for
        return status in ("succeeded", "failed", "cancelled")

    def result(self, timeout: float | None = None) -> Any:
        stop = threading.Event()
        waited = 0.0
        while not self.done:
            if timeout is not None and waited >= timeout:
                raise TimeoutError(self.run_id)
            stop.wait(0.2)
            waited += 0.2
        return None

    def cancel(self) -> bool:
        return bool(self._executor.cancel_run(self.run_id))


class CronTrigger(Trigger):
    """Start ``workflow_id`` (at ``version``, default latest) on a cron ``schedule``.

    ``inputs`` are static run inputs; ``inputs_builder()`` (the original system's
    ``InputsBuilder``) is called at each fire and its result merged over them. See the module
    docs for ``timezone``, ``overlap``, ``catchup`` and ``catchup_window`` (seconds or a
    duration such as ``"10m"``). ``scheduler`` defaults to the executor's shared
    :class:`TriggerScheduler`; ``store`` (for the last fire time) to the executor's
    ``store``. Without a store nothing is persisted and there is no catch-up.
    """

    type = "cron"

    def __init__(
        self,
        id: str,
        schedule: str,
        workflow_id: str,
        *,
        version: str | None = None,
        timezone: str = "UTC",
        inputs: Mapping[str, Any] | None = None,
        inputs_builder: InputsBuilder | None = None,
        overlap: OverlapPolicy | str = "skip",
        catchup: CatchupPolicy | str = "latest",
        catchup_window: float | str = 0.0,
        scheduler: TriggerScheduler | None = None,
        store: Any = None,
    ) -> None:
        super().__init__(id)
        try:
            self.schedule = CronSchedule(schedule, timezone)
        except TriggerError as exc:
            raise TriggerError(f"cron trigger {id!r}: {exc}", trigger_id=id) from None
        if overlap not in OVERLAP_POLICIES:
            raise TriggerError(
                f"cron trigger {id!r}: unknown overlap policy {overlap!r} "
                f"(use one of {', '.join(OVERLAP_POLICIES)})",
                trigger_id=id,
            )
        if catchup not in CATCHUP_POLICIES:
            raise TriggerError(
                f"cron trigger {id!r}: unknown catchup policy {catchup!r} (use all or latest)",
                trigger_id=id,
            )
        try:
            window = parse_duration(catchup_window)
        except (TypeError, ValueError) as exc:
            raise TriggerError(
                f"cron trigger {id!r}: catchup_window: {exc}", trigger_id=id
            ) from None
        if window < 0:
            raise TriggerError(f"cron trigger {id!r}: negative catchup_window", trigger_id=id)
        self.workflow_id = workflow_id
        self.version = version
        self.inputs = dict(inputs or {})
        self.inputs_builder = inputs_builder
        self.overlap = overlap
        self.catchup = catchup
        self.catchup_window = window
        self._given_scheduler = scheduler
        self._scheduler: TriggerScheduler | None = scheduler
        self._given_store = store
        self._store: Any = store
        self._runs: list[Any] = []  # runs this trigger started that may be unfinished
        self._pending: float | None = None  # buffer_one: the fire waiting for its turn
        self._waiter: threading.Thread | None = None
        #: Counters of what fires did, for tests and the monitor: fired, skipped, buffered,
        #: cancelled (previous runs), caught_up, errors.
        self.stats: dict[str, int] = dict.fromkeys(
            ("fired", "skipped", "buffered", "cancelled", "caught_up", "errors"), 0
        )

    # -- preview --------------------------------------------------------------------------

    @property
    def clock(self) -> Clock | None:
        return self._scheduler.clock if self._scheduler is not None else None

    def _now(self) -> float:
        clock = self.clock
        return clock.now() if clock is not None else datetime.now(_UTC).timestamp()

    def next_fire_times(self, n: int = 5, after: float | None = None) -> list[datetime]:
        """The next ``n`` fire times (aware datetimes in the trigger's time zone)."""
        start = self._now() if after is None else after
        return [
            datetime.fromtimestamp(t, self.schedule.tz)
            for t in self.schedule.next_fire_times(n, start)
        ]

    # -- life -----------------------------------------------------------------------------

    def _start(self, executor: Executor) -> None:
        if self._given_scheduler is None:
            self._scheduler = TriggerScheduler.for_executor(executor)
        assert self._scheduler is not None
        self._store = (
            self._given_store if self._given_store is not None else getattr(executor, "store", None)
        )
        state = self._load_state()
        now = self._scheduler.clock.now()
        cursor = state.get("cursor")
        last_run = state.get("last_run_id")
        if isinstance(last_run, str) and last_run and hasattr(executor, "get_run"):
            stored = _StoredRun(executor, last_run)
            if not stored.done:
                self._runs.append(stored)  # the overlap policy sees a run still going
        if isinstance(cursor, int | float):
            if self.catchup_window > 0:
                since = max(float(cursor), now - self.catchup_window)
                missed = self.schedule.fire_times(since, now)
                if self.catchup == "latest":
                    missed = missed[-1:]
                for when in missed:
                    self._fire(when, catchup=True)
            elif cursor < now:
                self._save_state(cursor=now)
        else:
            # First start: remember that we exist from now on, so a later downtime is seen.
            self._save_state(cursor=now)
        self._scheduler.add(self, self.schedule.next_after(now))

    def _stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.remove(self)
        self._pending = None
        if self._given_scheduler is None:
            self._scheduler = None

    # -- state ----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if self._store is None:
            return {}
        state = self._store.get_trigger_state(self.id)
        return dict(state) if isinstance(state, Mapping) else {}

    def _save_state(self, **changes: Any) -> None:
        if self._store is None:
            return
        state = self._load_state()
        state.update(changes)
        self._store.set_trigger_state(self.id, state)

    # -- firing ---------------------------------------------------------------------------

    def on_due(self, scheduled: float) -> float | None:
        """Called by the scheduler at each fire time; returns the next one."""
        with self._lock:
            if not self._active:
                return None
            self._fire(scheduled, catchup=False)
            now = self._now()
            following = self.schedule.next_after(scheduled)
            if following < now - LATE_TOLERANCE:
                log.warning(
                    "cron trigger %s: timer late by %.1fs; skipping to the next occurrence",
                    self.id,
                    now - following,
                )
                following = self.schedule.next_after(now)
            return following

    def _unfinished(self) -> list[Any]:
        self._runs = [run for run in self._runs if not _is_done(run)]
        return self._runs

    def _fire(self, scheduled: float, *, catchup: bool) -> None:
        executor = self._executor
        assert executor is not None
        # Persist first: a crash after this loses at most this fire, never repeats it.
        self._save_state(cursor=scheduled)
        running = self._unfinished()
        if running and not catchup:
            if self.overlap == "skip":
                self.stats["skipped"] += 1
                log.info("cron trigger %s: previous run unfinished, fire skipped", self.id)
                publish_trigger_event(
                    executor, self, self.workflow_id, outcome="skipped", scheduled=scheduled
                )
                return
            if self.overlap == "buffer_one":
                if self._pending is None:
                    self._pending = scheduled
                    self.stats["buffered"] += 1
                    self._wait_then_fire()
                else:
                    self.stats["skipped"] += 1
                return
            if self.overlap == "cancel_previous":
                for run in running:
                    try:
                        if run.cancel():
                            self.stats["cancelled"] += 1
                    except Exception:
                        log.exception("cron trigger %s: could not cancel %s", self.id, run)
        self._submit(scheduled, catchup=catchup)

    def _submit(self, scheduled: float, *, catchup: bool) -> None:
        executor = self._executor
        assert executor is not None
        try:
            base = dict(self.inputs)
            if self.inputs_builder is not None:
                built = self.inputs_builder()
                if not isinstance(built, Mapping):
                    raise TypeError(
                        f"inputs_builder returned {type(built).__name__}, expected a mapping"
                    )
                base.update(built)
            inputs = trigger_inputs(base, self.type, self.id, scheduled)
            run = executor.execute_workflow(
                self.workflow_id, inputs, version=self.version, wait=False
            )
        except Exception as exc:
            self.stats["errors"] += 1
            log.error("cron trigger %s: could not start %s: %s", self.id, self.workflow_id, exc)
            publish_trigger_event(
                executor, self, self.workflow_id, outcome="error", scheduled=scheduled,
                error=f"{type(exc).__name__}: {exc}",
            )  # fmt: skip
            return
        self.stats["fired"] += 1
        if catchup:
            self.stats["caught_up"] += 1
        run_id = getattr(run, "run_id", None)
        if isinstance(run, RunLike) or hasattr(run, "done"):
            self._runs.append(run)
        if isinstance(run_id, str):
            self._save_state(last_run_id=run_id)
        publish_trigger_event(
            executor, self, self.workflow_id, outcome="fired", scheduled=scheduled,
            run_id=run_id if isinstance(run_id, str) else None,
        )  # fmt: skip

    def _wait_then_fire(self) -> None:
        """buffer_one: wait (on a helper thread, one at a time) for the unfinished runs, then
        start the pending fire."""
        if self._waiter is not None and self._waiter.is_alive():
            return

        def wait() -> None:
            while True:
                with self._lock:
                    running = list(self._unfinished())
                    if not running:
                        pending, self._pending = self._pending, None
                        if pending is not None and self._active:
                            self._submit(pending, catchup=False)
                        return
                for run in running:
                    # A failed or cancelled run is finished all the same.
                    with contextlib.suppress(Exception):
                        run.result(timeout=None)

        self._waiter = threading.Thread(target=wait, name=f"cron-{self.id}-buffer", daemon=True)
        self._waiter.start()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait for a buffered fire to be started (tests); True if none is pending."""
        waiter = self._waiter
        if waiter is not None:
            waiter.join(timeout)
        return self._pending is None


def _is_done(run: Any) -> bool:
    try:
        return bool(run.done)
    except Exception:
        return True

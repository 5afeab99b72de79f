"""Cron triggers: schedules in a time zone, overlap policies, catch-up after downtime.

Expressions (the dialect: robfig/cron v3, the original system's, plus ``L`` and ``#``)
    5 fields (``min hour dom mon dow``), 6 fields with **seconds first** (``sec min hour dom
    mon dow``), or a descriptor: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
    ``@daily`` (``@midnight``), ``@hourly``. Fields are separated by blanks; each is a
    comma-separated list of items:

    * ``*`` or ``?`` (every value), ``N``, ``A-B`` (``A <= B``; ``2-2`` is just 2),
      ``*/S``, ``A-B/S`` and ``N/S`` (``N`` to the field's maximum, every ``S``; ``S >= 1``).
    * Ranges: second and minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or
      ``JAN``-``DEC``, day-of-week 0-6 or ``SUN``-``SAT`` (7 is also Sunday; ``*`` and ``N/S``
      end at 6). Names are case-insensitive.
    * Day-of-month ``L``: the last day of the month. Day-of-week ``DL`` (``5L``, ``FRIL``): the
      last such weekday of the month; ``D#N`` (``1#2``, ``MON#2``, ``N`` 1-5): the N-th such
      weekday of the month (``1#5`` fires only in months with five Mondays). These cannot
      take a step or be part of a range.
    * Refused at parse time, with the field and the item named: ``W`` (nearest weekday,
      ``15W``, ``LW``), ``L`` or ``#`` anywhere else (``L-3``, ``L/2``, ``L`` alone in
      day-of-week, ``#`` in day-of-month), names outside month and day-of-week, a value out of
      range, a range that runs backwards, a step of 0, an empty item, ``@every`` and
      ``CRON_TZ=``/``TZ=`` prefixes (use the ``timezone`` argument), and an expression that
      can never fire (``0 0 30 2 *``).
    * Day-of-month and day-of-week: a field is *unrestricted* when one of its items is ``*``,
      ``?`` or ``*/1`` — as in robfig/cron v3, ``*/2`` is a restriction (Vixie cron would
      call any field starting with ``*`` unrestricted). When either field is unrestricted a
      day must match both; when both are restricted a day matching **either** fires
      (``0 0 1 * MON``: the 1st and every Monday; ``0 0 */1 * 1``: Mondays only).

Time zones and DST (evaluated in ``timezone``):
    * An expression whose hour field allows all 24 hours (``0 * * * *``, ``@hourly``,
      ``*/20 * * * *``, ``0 0-23 * * *``) runs on *real* time: it fires at every instant whose
      local wall-clock reading matches. A reading that does not exist (inside a
      spring-forward gap) never happens, so it has no fire; a reading that happens twice
      (fall back) fires twice — ``@hourly`` fires at 01:00 EDT and at 01:00 EST in New York.
    * Any other expression is on wall-clock time: a wall time that does not exist (02:30 in
      New York on the second Sunday of March) fires once, at the first valid instant after
      the gap (03:00 local); several times inside one gap collapse into that one fire. A wall
      time that exists twice (01:30 on the first Sunday of November) fires once, at its
      first occurrence.

Overlap policies (``overlap``), when a fire comes while the previous run this trigger started
is unfinished: ``skip`` (default; the fire is dropped), ``allow`` (start another),
``buffer_one`` (keep at most one fire pending, started when the previous run finishes; later
fires meanwhile are dropped), ``cancel_previous`` (cancel the running one, start the new one).

Catch-up (``catchup_window`` seconds, default 0 = none): the trigger persists the time of the
last occurrence it processed (``store.set_trigger_state``) *before* it submits the run, so
after a restart nothing fires twice. Orchestrator replicas on one PostgreSQL store all run the
trigger; each fire time is claimed in the store (``claim_fire``), and only the replica that
claims it fires, so each fire time starts one run across them; its overlap policy sees the
runs the trigger started on every replica (``unfinished_trigger_runs``), so ``skip`` skips
while another replica's run is going and ``cancel_previous`` cancels it. Occurrences missed
while it was down that lie inside the window before now are fired at start — each once
(``catchup="all"``, submitted together regardless of the overlap policy: you asked for every
one) or only the latest (``catchup="latest"``) — with ``_trigger_time`` set to the time each
was due. A timer fire that comes more than :data:`LATE_TOLERANCE` late (a suspended process)
resumes at the next occurrence after now rather than firing a burst.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagengine._units import parse_duration
from dagengine.exceptions import TriggerError
from dagengine.triggers._cron_expr import CronSyntaxError, parse
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
_SECOND = timedelta(seconds=1)


# -- the schedule ---------------------------------------------------------------------------


class CronSchedule:
    """A cron expression in a time zone: :meth:`next_after` gives fire times as unix
    seconds, following the dialect and DST rule of the module docs. Raises
    :class:`TriggerError` for an invalid expression (naming the field and the item), an
    unknown time zone, or an expression that never fires."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise TriggerError("empty cron expression")
        self.expression = expression.strip()
        text = DESCRIPTORS.get(self.expression.lower(), self.expression)
        if text.lower().startswith("@every"):
            raise TriggerError(
                f"cron descriptor {self.expression!r}: @every is not supported (use a step, "
                "such as */15 * * * * for every 15 minutes)"
            )
        if text.startswith("@"):
            raise TriggerError(
                f"unknown cron descriptor {self.expression!r} (use one of {', '.join(DESCRIPTORS)})"
            )
        try:
            self._spec = parse(text)
        except CronSyntaxError as exc:
            raise TriggerError(f"invalid cron expression {self.expression!r}: {exc}") from None
        if self._spec.next_wall(datetime(2000, 1, 1)) is None:
            raise TriggerError(
                f"cron expression {self.expression!r} never fires (no day matches its "
                "day-of-month, month and day-of-week fields)"
            )
        #: Every hour allowed: the schedule runs on real time (see the module docs).
        self.real_time = len(self._spec.hours) == 24
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TriggerError(f"unknown time zone {timezone!r} (use an IANA name)") from None
        self.timezone = timezone

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

    def _wall(self, instant: float) -> datetime:
        """The naive local reading of ``instant``."""
        return datetime.fromtimestamp(instant, self.tz).replace(tzinfo=None)

    def _readings(self, wall: datetime) -> tuple[float, float]:
        """The instants of naive ``wall`` read with ``fold=0`` and ``fold=1``: equal for an
        ordinary time, ascending for a repeated one, descending for one inside a gap."""
        return (
            wall.replace(tzinfo=self.tz, fold=0).timestamp(),
            wall.replace(tzinfo=self.tz, fold=1).timestamp(),
        )

    def _next_wall(self, start: datetime) -> datetime:
        wall = self._spec.next_wall(start)
        if wall is None:  # cannot happen: the constructor checked a whole calendar cycle
            raise TriggerError(f"cron expression {self.expression!r} never fires")
        return wall

    def next_after(self, after: float) -> float:
        """The first fire time strictly after ``after`` (unix seconds)."""
        moment = datetime.fromtimestamp(after, self.tz)
        naive = moment.replace(tzinfo=None, microsecond=0)
        start = naive
        second_pass: float | None = None
        t0, t1 = self._readings(naive)
        if t0 < t1:
            # ``after`` lies in a repeated period [period_start, period_end) of wall times.
            period_start = self._wall(self._transition(t0, t1))
            period_end = period_start + timedelta(seconds=t1 - t0)
            if moment.fold == 1:
                # Second pass: the first occurrences of the rest of the period are past.
                start = period_end
            if self.real_time:
                # The second pass of the period's wall times is (still) ahead.
                wall = self._next_wall(naive if moment.fold == 1 else period_start)
                if wall == naive and moment.fold == 1 and t1 <= after:
                    wall = self._next_wall(wall + _SECOND)
                if wall < period_end:
                    second_pass = self._readings(wall)[1]
        first_pass = self._first_occurrence_after(after, start)
        if second_pass is not None and after < second_pass < first_pass:
            return second_pass
        return first_pass

    def _first_occurrence_after(self, after: float, start: datetime) -> float:
        """The first instant after ``after`` at which a matching wall time from naive
        ``start`` on occurs for the first time (or, for a wall time inside a gap, the end of
        the gap — on real time, none). These instants never decrease as the wall time grows,
        so the first one after ``after`` is the answer."""
        wall = self._next_wall(start)
        while True:
            t0, t1 = self._readings(wall)
            if t0 <= t1:
                if t0 > after:
                    return t0
                wall = self._next_wall(wall + _SECOND)
                continue
            # Inside a gap: every wall time in it maps to the gap's end.
            gap_end = self._transition(t1, t0)
            if not self.real_time and gap_end > after:
                return gap_end
            wall = self._next_wall(max(wall + _SECOND, self._wall(gap_end)))

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


#: Fires that started a run kept in a cron trigger's stored state (:meth:`CronTrigger.last_fires`).
LAST_FIRES = 10


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
        #: cancelled (previous runs), caught_up, errors, claimed_elsewhere (fire times another
        #: orchestrator replica fired).
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "fired",
                "skipped",
                "buffered",
                "cancelled",
                "caught_up",
                "errors",
                "claimed_elsewhere",
            ),
            0,
        )
        self._paused = False

    # -- pause ----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Whether fires are paused: a paused trigger's fire times pass without a run (and
        are not caught up on resume). Persisted in the store with the trigger's state."""
        return self._paused

    def last_fires(self) -> list[tuple[float, str]]:
        """The last fires that started a run (up to :data:`LAST_FIRES`), oldest first:
        ``(scheduled time, run id)``, from the store."""
        fires = self._load_state().get("last_fires")
        if not isinstance(fires, list):
            return []
        return [(float(f[0]), str(f[1])) for f in fires if isinstance(f, list) and len(f) == 2]

    def pause(self) -> None:
        """Pause the trigger's fires (until :meth:`resume`), also across restarts."""
        with self._lock:
            self._paused = True
            self._pending = None
            self._save_state(paused=True)

    def resume(self) -> None:
        """Resume a paused trigger from its next fire time on."""
        with self._lock:
            self._paused = False
            self._save_state(paused=False, cursor=self._now())

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
        self._paused = state.get("paused") is True
        cursor = state.get("cursor")
        last_run = state.get("last_run_id")
        if isinstance(last_run, str) and last_run and hasattr(executor, "get_run"):
            stored = _StoredRun(executor, last_run)
            if not stored.done:
                self._runs.append(stored)  # the overlap policy sees a run still going
        if isinstance(cursor, int | float):
            if self.catchup_window > 0 and not self._paused:
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
            if not self._paused:
                self._fire(scheduled, catchup=False)
            else:
                self._save_state(cursor=scheduled)
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
        # Orchestrator replicas all run the trigger: the first to claim the fire time fires.
        claim = getattr(self._store, "claim_fire", None)
        if claim is not None and not claim(self.id, scheduled):
            self.stats["claimed_elsewhere"] += 1
            return
        if claim is not None and self.overlap != "allow":
            self._add_runs_of_other_replicas()
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

    def _add_runs_of_other_replicas(self) -> None:
        """Replicas: the unfinished runs this trigger started on the others, known by id
        (their state comes from the store), so that the overlap policy sees them too."""
        others = getattr(self._store, "unfinished_trigger_runs", None)
        if others is None:
            return
        try:
            found = others(self.id, self.workflow_id)
        except Exception:
            log.exception("cron trigger %s: could not read the runs of other replicas", self.id)
            return
        known = {getattr(run, "run_id", None) for run in self._runs}
        self._runs.extend(
            _StoredRun(self._executor, run_id) for run_id in found if run_id not in known
        )

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
            fires = self._load_state().get("last_fires")
            fires = [*(fires if isinstance(fires, list) else []), [scheduled, run_id]]
            self._save_state(last_run_id=run_id, last_fires=fires[-LAST_FIRES:])
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

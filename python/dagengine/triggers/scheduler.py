"""One timer thread for all time-based triggers of an orchestrator.

A heap of ``(fire time, sequence, trigger)`` and a condition variable: the thread sleeps until
the earliest fire time (or until a trigger is added earlier than that), fires every entry that
is due, and asks each fired trigger for its next time. A thousand cron triggers cost one
thread and one wake-up per distinct fire time, not a thread each.

Fires run on the timer thread, so a fire must be quick: a cron fire submits a run
(``execute_workflow(..., wait=False)``) and returns; the run itself goes through the
orchestrator's queue. ``inputs_builder`` callables run here too and should not block.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import weakref
from typing import Protocol

from dagengine.triggers.clock import Clock, SystemClock

__all__ = ["Scheduled", "TriggerScheduler"]

log = logging.getLogger("dagengine.triggers")


class Scheduled(Protocol):
    """What the scheduler calls: ``on_due(t)`` fires the occurrence scheduled for ``t`` and
    returns the trigger's next fire time (``None``: nothing more)."""

    def on_due(self, scheduled: float) -> float | None: ...


_SHARED: weakref.WeakKeyDictionary[object, TriggerScheduler] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class TriggerScheduler:
    """The timer of time-based triggers. :meth:`start` runs the thread; tests may instead
    drive :meth:`run_pending` with a :class:`~dagengine.triggers.ManualClock`."""

    def __init__(self, clock: Clock | None = None, *, name: str = "dagengine-triggers") -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Scheduled]] = []
        # The sequence number of each trigger's live entry; older entries are stale and
        # dropped when they surface (removing from the middle of a heap is O(n)).
        self._live: dict[int, int] = {}
        # Triggers popped for a fire and not removed since: only these are rescheduled, so a
        # trigger stopped during its own fire stays stopped without the timer thread taking
        # the trigger's lock under ``_cond`` (``stop`` takes them in the other order).
        self._firing: set[int] = set()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @classmethod
    def for_executor(cls, executor: object) -> TriggerScheduler:
        """The shared, started scheduler of ``executor`` (one per orchestrator)."""
        with _SHARED_LOCK:
            try:
                sched = _SHARED.get(executor)
            except TypeError:  # not weak-referenceable: one process-wide scheduler
                executor = cls
                sched = _SHARED.get(executor)
            if sched is None or sched._stopping:
                sched = cls()
                _SHARED[executor] = sched
            sched.start()
            return sched

    # -- entries --------------------------------------------------------------------------

    def add(self, trigger: Scheduled, when: float) -> None:
        """Schedule ``trigger`` at ``when`` (replacing any entry it had)."""
        with self._cond:
            seq = next(self._seq)
            self._live[id(trigger)] = seq
            heapq.heappush(self._heap, (when, seq, trigger))
            if self._heap[0][1] == seq:
                self._cond.notify_all()  # earlier than what the thread sleeps for

    def remove(self, trigger: Scheduled) -> None:
        """Unschedule ``trigger`` (a fire already in progress completes)."""
        with self._cond:
            self._live.pop(id(trigger), None)
            self._firing.discard(id(trigger))

    def next_due(self) -> float | None:
        """The earliest scheduled time, or ``None``."""
        with self._cond:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._live)

    def _drop_stale(self) -> None:
        while self._heap and self._live.get(id(self._heap[0][2])) != self._heap[0][1]:
            heapq.heappop(self._heap)

    def _pop_due(self, now: float) -> tuple[float, Scheduled] | None:
        with self._cond:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return None
            when, _, trigger = heapq.heappop(self._heap)
            del self._live[id(trigger)]
            self._firing.add(id(trigger))
            return when, trigger

    # -- firing ---------------------------------------------------------------------------

    def run_pending(self) -> int:
        """Fire every entry due at the clock's current time (each rescheduled at its next
        time); returns how many fired."""
        fired = 0
        now = self.clock.now()
        while (due := self._pop_due(now)) is not None:
            when, trigger = due
            fired += 1
            try:
                following = trigger.on_due(when)
            except Exception:  # one broken trigger must not stop the others
                log.exception("trigger %r failed to fire", trigger)
                following = None
            # Read outside ``_cond``: ``Trigger.stop`` holds its own lock while it calls
            # ``remove``, which takes ``_cond``; taking them here in the other order deadlocks.
            active = following is not None and getattr(trigger, "is_active", True)
            with self._cond:
                still_live = id(trigger) in self._firing
                self._firing.discard(id(trigger))
                # A trigger stopped (removed) during its own fire is not revived.
                if active and still_live and following is not None:
                    seq = next(self._seq)
                    self._live[id(trigger)] = seq
                    heapq.heappush(self._heap, (following, seq, trigger))
        return fired

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    self._drop_stale()
                    if not self._heap:
                        self.clock.wait(self._cond, None)
                        continue
                    delay = self._heap[0][0] - self.clock.now()
                    if delay <= 0:
                        break
                    self.clock.wait(self._cond, delay)
                if self._stopping:
                    return
            self.run_pending()

    # -- life -----------------------------------------------------------------------------

    def start(self) -> TriggerScheduler:
        """Run the timer thread (idempotent)."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread (entries are kept; :meth:`start` resumes)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._thread = None

    @property
    def running(self) -> bool:
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

"""Clocks for the trigger scheduler: the system clock, and a manual one for tests.

The scheduler only ever asks a clock two things: what time it is (unix seconds) and to wait
on the scheduler's condition variable until a time or until notified. A :class:`ManualClock`
moves only when told to, so cron semantics (DST days, catch-up after downtime) are tested
exactly and instantly.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """What the scheduler needs of a clock."""

    def now(self) -> float:
        """The current time, unix seconds."""
        ...

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        """Wait on ``cond`` (held by the caller) for ``seconds`` of this clock's time, or
        until ``cond`` is notified; ``None`` waits for a notification only."""
        ...


class SystemClock:
    """Wall-clock time (``time.time``); waits are real waits."""

    def now(self) -> float:
        return time.time()

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        cond.wait(seconds)


class ManualClock:
    """A clock that moves only by :meth:`advance` / :meth:`set`. Waiters are woken on every
    move, so a scheduler thread driven by it re-checks its heap at the new time."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._waiting: set[threading.Condition] = set()

    def now(self) -> float:
        with self._lock:
            return self._now

    def set(self, when: float) -> None:
        """Jump to ``when`` (unix seconds); the clock never goes back."""
        with self._lock:
            if when < self._now:
                raise ValueError("a ManualClock does not go back in time")
            self._now = float(when)
            waiting = list(self._waiting)
        for cond in waiting:
            with cond:
                cond.notify_all()

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self.set(self.now() + seconds)

    def wait(self, cond: threading.Condition, seconds: float | None) -> None:
        with self._lock:
            self._waiting.add(cond)
        try:
            # Manual time does not pass by itself: wait for a move (or a notification).
            # The real-time bound only keeps a forgotten test from hanging forever.
            cond.wait(1.0)
        finally:
            with self._lock:
                self._waiting.discard(cond)

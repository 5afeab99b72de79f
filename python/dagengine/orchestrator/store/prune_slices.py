"""A SQLite store's prune, cut into slices that ride in the writer's commits (issue 23).

A prune batch used to be a transaction of its own on the pruner's thread: it held the
store's lock for ~1.3 ms (a selection, five statements and a commit), and every run end
that came meanwhile waited for all of it, so p99 run latency during a prune rose by a third.
Now :meth:`SQLiteStore.prune` chooses the batch's runs outside the lock (on a connection of
its own: a WAL reader takes no lock a writer needs) and hands them to the writer thread as
a :class:`PruneJob`. The writer deletes a *slice* of them (a few runs, sized to take about
:data:`SLICE_TIME`) inside the next group commit it makes, at most one slice every
:data:`SLICE_GAP`; while nothing else is written, it commits a slice alone at that pace.
That is the default pace (:data:`~dagengine.orchestrator.store.retention.PRUNE_DUTY`, 5% of
the store's time); a policy with a larger ``duty`` (the pruner's, while it falls behind) gets
longer slices (up to :data:`MAX_SLICE_TIME`) closer together (:func:`pace`).
A slice does not ride in a commit that a run's end or a fence waits for (unless it has been
due for :data:`OVERDUE`): it goes in the next commit of rows nobody waits for, or alone
right after. A run's end then waits for a slice only when it comes while one is running.

A slice is one statement (``retention.RUN_CASCADE`` deletes a run's events and cache
entries with it): if it fails, SQLite undoes it alone and the job ends with that error (the
group it rode with is committed as usual). Its counts join the job's report
only once its transaction has committed (:meth:`PruneJob.settle`); a group that fails
takes the slice's deletes with it, and the slice is done again in a later commit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Final

from dagengine.orchestrator.store.retention import (
    _RUNLESS_EVENTS,
    EVENTS_PER_BATCH,
    PRUNE_DUTY,
    PruneReport,
    RetentionPolicy,
    delete_runs,
)

__all__ = ["MAX_SLICE_TIME", "SLICE_GAP", "SLICE_TIME", "PruneJob", "pace"]

#: Seconds one slice should hold the store: what a run's end may wait for a prune. The
#: slice's size adapts to the CPU time its statement takes on the writer thread, not to its
#: wall time: a statement also waits to take the GIL back from the orchestrator's threads,
#: whatever its size, and slices sized by that wait shrank to a run each under load
#: (~175 runs pruned a second at 300 new runs/s).
SLICE_TIME: Final = 0.5e-3
#: Least seconds from the end of one slice to the start of the next: the store is free 95%
#: of the time while a prune runs. Slices much smaller or closer than this cost more than
#: they save: the pages at the old end of each table and index are written to the log again
#: by every slice's commit, and a log that grows faster than the checkpointer copies it has
#: a commit finish the checkpoint under the store's lock (with 0.25 ms slices 1 ms apart,
#: 4x as many commits did, and p99 run latency during a prune doubled).
SLICE_GAP: Final = 9.5e-3
#: The longest a slice may hold the store, at a larger duty than the default: fewer, larger
#: slices cost less than more, closer ones (see :data:`SLICE_GAP`).
MAX_SLICE_TIME: Final = 4 * SLICE_TIME
#: Seconds past due after which a slice rides in a commit somebody waits for.
OVERDUE: Final = 0.05
_FIRST_SLICE: Final = 8
_MAX_SLICE: Final = 128
#: Events without a run deleted by one slice, per run a slice may delete.
_EVENTS_PER_RUN: Final = 16


def pace(duty: float) -> tuple[float, float]:
    """``(slice time, least gap after a slice)`` in seconds for a prune that may take
    ``duty`` of the store's time: :data:`SLICE_TIME` and :data:`SLICE_GAP` at the default
    duty; above it the slices grow with the duty up to :data:`MAX_SLICE_TIME`, and the gaps
    shrink to keep the share."""
    slice_time = min(MAX_SLICE_TIME, SLICE_TIME * max(1.0, duty / PRUNE_DUTY))
    return slice_time, slice_time * (1.0 / duty - 1.0)


class PruneJob:
    """One prune batch handed to the writer thread: the runs chosen for it, deleted a slice
    at a time (:meth:`step` in a commit, :meth:`settle` after it), then up to
    :data:`~dagengine.orchestrator.store.retention.EVENTS_PER_BATCH` old events that belong
    to no run. :attr:`done` is set when it is finished or has failed (:attr:`error`)."""

    def __init__(
        self, policy: RetentionPolicy, now: float, runs: dict[str, tuple[int, int]]
    ) -> None:
        self.policy = policy
        self.now = now
        self.runs = runs  # (see retention.prunable_runs)
        self.run_ids = list(runs)
        self.report = PruneReport(batches=1)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._next = 0
        self._events_done = policy.max_age is None
        self._size = _FIRST_SLICE
        self._cpu = 0.0  # (CPU seconds of the last slice's statement on the writer thread)
        self.slice_time, self.gap = pace(policy.duty)
        self._last_end = 0.0  # (time.monotonic() when the last slice was settled)
        self._tentative: PruneReport | None = None
        self._slice_start = 0
        self.slices = 0  # slices committed
        self._runless = 0  # events without a run deleted so far
        self._runless_slice: tuple[int, int] | None = None  # (deleted, limit) of the last

    def due(self, now: float) -> bool:
        """Whether a slice may run at ``now`` (``time.monotonic()``)."""
        return not self.done.is_set() and now - self._last_end >= self.gap

    def overdue(self, now: float) -> bool:
        """Whether a slice has been due for :data:`OVERDUE` seconds (it then rides in a
        commit that a run's end waits for, rather than never)."""
        return now - self._last_end >= self.gap + OVERDUE

    def wait_for(self, now: float) -> float:
        """Seconds from ``now`` until a slice may run."""
        return max(0.0, self._last_end + self.gap - now)

    def step(self, db: sqlite3.Connection, *, alone: bool = False) -> None:
        """Delete one slice in the caller's transaction: one statement, which SQLite undoes
        by itself if it fails; the job then ends with its error. ``alone`` (the transaction
        is the slice's own): the error is raised as well."""
        began = time.perf_counter()
        cpu = time.thread_time()
        self._slice_start = self._next
        try:
            if self._next < len(self.run_ids):
                ids = self.run_ids[self._next : self._next + self._size]
                part = delete_runs(db, {run_id: self.runs[run_id] for run_id in ids}, self.policy)
                self._next += len(ids)
            else:
                part = self._runless_events(db)
        except BaseException as exc:
            self._tentative = None
            self.error = exc
            if alone:
                raise
            return
        part.seconds = time.perf_counter() - began
        self._cpu = time.thread_time() - cpu
        self._tentative = part

    def _runless_events(self, db: sqlite3.Connection) -> PruneReport:
        assert self.policy.max_age is not None
        limit = min(EVENTS_PER_BATCH - self._runless, self._size * _EVENTS_PER_RUN)
        part = PruneReport()
        part.events = db.execute(
            f"DELETE FROM event_rows WHERE seq IN ({_RUNLESS_EVENTS} LIMIT ?)",
            (self.now - self.policy.max_age, limit),
        ).rowcount
        self._runless_slice = (part.events, limit)
        return part

    def settle(self, committed: bool) -> None:
        """After the transaction of the last :meth:`step`: count its slice if it was
        committed (else do it again later), resize the next slice, finish the job when
        nothing is left or the slice failed."""
        part, self._tentative = self._tentative, None
        runless, self._runless_slice = self._runless_slice, None
        self._last_end = time.monotonic()
        if self.error is not None:
            self.done.set()
            return
        if part is None:
            return
        if not committed:
            self._next = self._slice_start
            return
        self.slices += 1
        seconds = max(self.report.seconds, part.seconds)
        self.report.add(part)
        self.report.seconds = seconds  # (the longest slice: what a write may have waited)
        if runless is not None:
            deleted, limit = runless
            self._runless += deleted
            if deleted < limit or self._runless >= EVENTS_PER_BATCH:
                self._events_done = True
        if self._cpu > self.slice_time:
            self._size = max(1, self._size // 2)
        elif self._cpu < self.slice_time / 2:
            self._size = min(_MAX_SLICE, self._size * 2)
        if self._next >= len(self.run_ids) and self._events_done:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """End the job with ``error`` (the store is closing)."""
        if not self.done.is_set():
            self.error = error
            self.done.set()

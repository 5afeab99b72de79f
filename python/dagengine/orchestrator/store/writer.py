"""The SQLite store's write-behind: group commit of the ``*_later`` writes on a writer
thread, isolation of rows that cannot be written, transactions, and the checkpointer of
the write-ahead log.

:class:`WriteBehind` is the base of :class:`~dagengine.orchestrator.store.sqlite.SQLiteStore`
(a base class, not an object the store calls: no indirection on the hot path). The tuning
constants below are read when they are used, so a test can patch them here
(``monkeypatch.setattr(writer, "LAZY_COMMIT_DELAY", 60.0)``).

Queue rows are ``(kind, values)``: ``create`` (a run's columns), ``claim`` (the values of
``_CLAIM`` after the run id), ``output`` (``run_id, node_id, attempt, output``) and
``finish`` (the values of ``_finish_runs``, the outputs its result holds: see
``compact.outputs_to_drop``, and the ``done`` callback) and ``fence`` (a
``done`` callback alone: :meth:`WriteBehind.when_committed`); events wait in a queue of their
own (the values of ``_insert_events``, ``seq`` first).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from dagengine.exceptions import StoreError
from dagengine.orchestrator.store.compact import fold_events, same_output, with_outputs_here
from dagengine.orchestrator.store.records import _encodable

if TYPE_CHECKING:
    from dagengine.orchestrator.store.prune_slices import PruneJob
from dagengine.orchestrator.store.schema import (
    _CLAIM,
    _EVENTS_PER_INSERT,
    _OUTPUTS_PER_INSERT,
    _RUNS_PER_STATEMENT,
    _chunks,
    _finish_runs,
    _finish_sql,
    _finishable_runs,
    _insert_events,
    _insert_outputs,
    _insert_runs,
    _multi_row,
    _padded,
)

_log = logging.getLogger("dagengine.orchestrator.store")

#: The node outputs of some runs (a JSON array of ids), in their order, as one JSON array
#: of ``[run_id, node_id, output]`` (one row: one step of the statement).
_STORED_OUTPUTS: Final = """SELECT json_group_array(json_array(run_id, node_id, output)) FROM (
    SELECT run_id, node_id, output FROM node_outputs
    WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY run_id, position, node_id)"""
#: Delete the node outputs of some runs (a JSON array of ids).
_DROP_OUTPUTS: Final = "DELETE FROM node_outputs WHERE run_id IN (SELECT value FROM json_each(?))"

__all__ = [
    "CHECKPOINT_CATCH_UP_FRAMES",
    "CHECKPOINT_EVERY",
    "LAZY_COMMIT_DELAY",
    "MAX_PENDING",
    "URGENT_PACE",
    "WriteBehind",
]

#: Commits between two checkpoints of the write-ahead log into the database file. SQLite's
#: own automatic checkpoint (every 1,000 pages) runs inside the commit that crosses the mark,
#: fsync included: one run end in about seventy waited 3-5 ms for it, the p99 of a lone run.
#: A thread of the store's own runs them instead (PASSIVE: it never holds up a commit).
CHECKPOINT_EVERY: Final = 64
#: Log frames (pages) past which the writer finishes a checkpoint itself, right after a
#: commit. Under a steady stream of commits the checkpointer never catches up with the end
#: of the log, and SQLite starts the log over only once all of it is in the database file:
#: without this the log grew by ~7 MiB per thousand runs. Most pages are in by then, so
#: the writer's part is short.
CHECKPOINT_CATCH_UP_FRAMES: Final = 4000

#: Prune slices between two wake-ups of the checkpointer (about every 40 ms while a
#: prune runs).
_SLICES_PER_CHECKPOINT: Final = 4
#: Pending rows past which a writer commits the group itself instead of leaving it to the
#: background writer: memory stays bounded when writes outpace the disk.
MAX_PENDING: Final = 2000

#: How long a group of writes nobody waits for (events, node outputs, a run's creation and
#: claims) may wait for company before the background writer commits it. A run's end, which
#: its caller waits for, is committed at once and takes everything queued before it along.
#: Readers of the store commit what is pending first, so they never see the delay; what it
#: bounds is what a killed orchestrator can lose (events and outputs of nodes that then run
#: again: never a run's end).
LAZY_COMMIT_DELAY: Final = 0.02
#: Under a stream of run ends (the last group held more than one run end or fence), how long
#: after the previous commit ended the next one that somebody waits for is held back to
#: gather company. Run ends that come one at a time from one thread (runs ended where they
#: were submitted) made groups of two or three, each commit costing the writer about as much
#: as the group's rows; a lone run end (the last group had no company) is never held back.
URGENT_PACE: Final = 0.002


def _is_data_error(exc: BaseException) -> bool:
    """Whether a failed write failed on its data (a value SQLite cannot bind or a constraint
    it breaks) rather than on the database (busy, locked, full, unreadable): only the former
    is about one row, and only it is isolated."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    return isinstance(exc, (sqlite3.Error, ValueError, TypeError, OverflowError))


class WriteBehind:
    """The group commit and checkpoints of a SQLite store (see the module's docstring).

    The store calls :meth:`_init_write_behind` before it opens ``_db``; it sets ``path`` and
    ``_db`` itself. Lock order: ``_lock`` (the database) before ``_pending_cv``, never the
    other way round.
    """

    path: str
    _db: sqlite3.Connection

    def _init_write_behind(self) -> None:
        """The writer's state: empty queues, no threads yet (they start on first use)."""
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction(); only the outermost commits
        # Group commit of events and node outputs (see append_event_later). Lock order:
        # self._lock (the database) before self._pending_cv, never the other way round.
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        # Pending events, a queue of their own: a run end's commit leaves them for later
        # without going through them (with them in the one queue, each such commit sorted
        # out the hundreds queued since the last due commit: ~8% of the orchestrator's
        # throughput at 64 runs in flight).
        self._pending_events: list[tuple[Any, ...]] = []
        # Committed run ends whose callbacks are still to run (see _run_ready).
        self._ready: list[tuple[Callable[[bool], None], bool]] = []
        self._pending_cv = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._closing = False
        # A run end is pending (commit now), and when the oldest pending write was queued.
        self._urgent = False
        self._since = 0.0
        # Whether the last group had company (more than one run end or fence) and when it
        # was committed (see URGENT_PACE).
        self._company = False
        self._last_commit = 0.0
        # The checkpoints of a file store's log (see CHECKPOINT_EVERY). A condition of their
        # own: the writer must be the only thread waiting on _pending_cv, or a notify meant
        # for it can wake the checkpointer instead (a run's end then waited for the timer).
        self._checkpoint_cv = threading.Condition(threading.Lock())
        self._commits = 0
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wanted = False
        self._catch_up = False  # the writer finishes the checkpoint (under _lock)
        # Failures of the group commit (see _commit_isolating and write_error).
        self._write_error: str | None = None
        self._write_error_dropped: str | None = None
        self.dropped_writes = 0
        # A prune batch the writer deletes a slice at a time inside its commits
        # (prune_slices), and the slice the commit in progress takes along.
        self._prune_job: PruneJob | None = None
        self._slice: PruneJob | None = None

    # -- transactions and checkpoints --

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one atomic commit; nests (only the outermost commits). Other
        threads wait until it ends."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")
                # Committed: nothing after this may fail the transaction.
                try:
                    if self._catch_up:
                        self._catch_up = False
                        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self._committed()
                except Exception:
                    _log.exception("checkpointing %s after a commit failed", self.path)

    def _committed(self) -> None:
        """Count a commit; every CHECKPOINT_EVERY of a file store's, wake the checkpointer."""
        if self.path == ":memory:":
            return
        with self._checkpoint_cv:
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY:
                return
            self._want_checkpoint_locked()

    def _want_checkpoint(self) -> None:
        """Wake the checkpointer now (a prune batch wrote many pages: copied on the
        checkpointer's connection, they do not grow the log until a commit has to finish a
        checkpoint itself, under the store's lock, in whatever write comes next)."""
        if self.path == ":memory:":
            return
        with self._checkpoint_cv:
            self._want_checkpoint_locked()

    def _want_checkpoint_locked(self) -> None:
        if not self._closing:
            if self._checkpointer is None:
                checkpointer = threading.Thread(
                    target=self._checkpoints, name="dagengine-store-checkpoint", daemon=True
                )
                checkpointer.start()
                self._checkpointer = checkpointer
            self._checkpoint_wanted = True
            self._checkpoint_cv.notify()

    def _checkpoints(self) -> None:
        """Copy the log into the database file when asked (the checkpointer thread), on a
        connection of its own: a PASSIVE checkpoint takes no lock a commit needs. If this
        thread cannot do its job, SQLite's automatic checkpoints come back."""
        try:
            db = sqlite3.connect(
                f"file:{quote(self.path)}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error:
            _log.exception("cannot open %s to checkpoint it", self.path)
            self._automatic_checkpoints()
            return
        try:
            while True:
                with self._checkpoint_cv:
                    while not self._checkpoint_wanted and not self._closing:
                        self._checkpoint_cv.wait()
                    if self._closing:
                        return
                    self._checkpoint_wanted = False
                try:
                    # (``frames`` is the log as it was when the checkpoint began: the
                    # commits made meanwhile are not in it, and they keep the log from
                    # starting over even when every frame counted here was copied.)
                    _busy, frames, _done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames > CHECKPOINT_CATCH_UP_FRAMES:
                        self._catch_up = True  # (read by the next commit)
                except sqlite3.Error:
                    _log.exception("checkpointing %s failed", self.path)
        except BaseException:
            self._automatic_checkpoints()
            raise
        finally:
            db.close()

    def _automatic_checkpoints(self) -> None:
        with self._lock:
            if not self._closing:
                self._db.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default

    def close(self) -> None:
        """Write what is pending and close the database; the store cannot be used
        afterwards."""
        with self._pending_cv:
            self._closing = True
            self._pending_cv.notify_all()
            if self._prune_job is not None:
                self._prune_job.fail(StoreError(f"store {self.path!r} was closed"))
        with self._checkpoint_cv:
            self._checkpoint_cv.notify_all()
        for thread in (self._writer, self._checkpointer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
        with self._lock:
            self._flush_locked()
            self._close_db()
        self._run_ready()

    def _close_db(self) -> None:
        """Close the writer's connection (the last connection to close checkpoints the
        log); a store whose connection holds more than its data overrides it."""
        self._db.close()

    # -- group commit --

    def _later(self, kind: str, row: tuple[Any, ...]) -> None:
        with self._pending_cv:
            backlog = self._enqueue_locked(kind, row)
        if backlog >= MAX_PENDING:
            self.flush()  # backpressure: a writer faster than the disk waits for it

    def when_committed(self, done: Callable[[bool], None]) -> None:
        """Call ``done(True)`` once everything queued so far (but events) is committed: the
        durability of a ``*_later`` write without a blocking :meth:`flush` on the caller's
        thread (``POST /workflows/{id}/runs`` acknowledges a run from the event loop this
        way). The writer commits at once, as for a run's end: fences that arrive during a
        commit share the next one (a group commit of acceptances). ``done`` runs on the
        writer thread, like a run end's callback, and must not block; it gets ``False``
        when the commit fails (the writes stay queued and are tried again: the caller should
        not report them as committed)."""
        with self._pending_cv:
            self._enqueue_locked("fence", (done,))

    def _check_writer_locked(self) -> None:
        """Refuse writes to a closed store; start the writer thread on the first one."""
        if self._closing:
            raise StoreError(f"store {self.path!r} is closed")
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_behind, name="dagengine-store-writer", daemon=True
            )
            self._writer.start()

    def _enqueue_locked(self, kind: str, row: tuple[Any, ...]) -> int:
        """Queue a row for the next group; returns how many rows are pending. A run's end
        (``finish``) wakes the writer to commit now; other rows wake it only to start the
        clock of :data:`LAZY_COMMIT_DELAY`."""
        self._check_writer_locked()
        pending = self._pending
        pending.append((kind, row))
        backlog = len(pending) + len(self._pending_events)
        if backlog == 1:
            self._since = time.monotonic()
        if kind == "finish" or kind == "fence":
            if not self._urgent:
                self._urgent = True
                self._pending_cv.notify()
        elif backlog == 1:
            self._pending_cv.notify()
        return backlog

    def _enqueue_events_locked(self, rows: list[tuple[Any, ...]]) -> int:
        """Queue events for the next group that is due (:meth:`_enqueue_locked` for events,
        which never make a commit urgent); returns how many rows are pending."""
        self._check_writer_locked()
        events = self._pending_events
        was_empty = not events and not self._pending
        events.extend(rows)
        if was_empty:
            self._since = time.monotonic()
            self._pending_cv.notify()
        return len(events) + len(self._pending)

    def _write_behind(self) -> None:
        # Commit a run's end as soon as it is queued: the writes that arrive during a commit
        # form the next group, so groups grow with the load by themselves and a lone run end
        # is not held back (waiting a fixed 2 ms for company cost a lone run 2 ms). Writes
        # nobody waits for wait up to LAZY_COMMIT_DELAY for one: at a moderate load a run's
        # events came in several bursts, each its own commit and thread wake-up. Events are
        # left out of a run end's commit until they are due: nothing is fenced on them, and
        # a run's end then cost about 15% less to commit. This thread also runs every run
        # end's callback.
        failures = 0
        while True:
            with self._pending_cv:
                commit = events = False
                while not self._closing:
                    now = time.monotonic()
                    due = bool(self._pending or self._pending_events) and (
                        now - self._since >= LAZY_COMMIT_DELAY
                    )
                    job = self._prune_job
                    if job is not None and job.done.is_set():
                        self._prune_job = job = None
                    # A prune slice that is due commits what is pending with it.
                    sliced = job is not None and job.due(now)
                    if self._urgent or due or sliced:
                        held = self._last_commit + URGENT_PACE - now
                        if self._company and held > 0 and not (due or sliced):
                            self._pending_cv.wait(held)  # (for company: see URGENT_PACE)
                            continue
                        commit, events = True, due or sliced
                        break
                    if self._ready:
                        break
                    timeout = None
                    if self._pending or self._pending_events:
                        timeout = self._since + LAZY_COMMIT_DELAY - now
                    if job is not None:
                        wait = job.wait_for(now)
                        timeout = wait if timeout is None else min(timeout, wait)
                    self._pending_cv.wait(timeout)
                if self._closing:
                    return
            try:
                if commit:
                    with self._lock:
                        self._flush_locked(with_events=events)
                failures = 0
            except Exception:
                # The group is back in the queue (see _flush_locked): try again, later.
                failures += 1
                _log.exception(
                    "writing to %s failed (%d in a row); trying again", self.path, failures
                )
                time.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))
            self._run_ready()

    def flush(self) -> None:
        """Commit the pending events, node outputs and run ends now (readers call this). The
        callbacks of the run ends it commits run on the writer thread, as always."""
        with self._lock:
            self._flush_locked()

    def _run_ready(self) -> None:
        """Tell the waiters of committed run ends. Only the writer thread (and ``close``)
        does this, never under the database lock: a callback takes locks of its own (the
        orchestrator's, the event bus's), and a thread that wrote to the store while holding
        one of them (backpressure commits the group on the writing thread) deadlocked."""
        with self._pending_cv:
            ready, self._ready = self._ready, []
        for done, recorded in ready:
            try:
                done(recorded)
            except Exception:
                _log.exception("a run-finished callback failed")

    def _flush_locked(self, *, with_events: bool = True) -> None:
        """Commit what is pending; without ``with_events``, events stay pending for the next
        group (a run's end is not fenced on them)."""
        with self._pending_cv:
            pending, self._pending = self._pending, []
            self._urgent = False
            # Left behind, events keep the time the oldest pending write was queued.
            events: list[tuple[Any, ...]] = []
            if with_events:
                events, self._pending_events = self._pending_events, []
        # Fences are no rows: told once the rest of their group is committed (so each
        # backend's _commit_group only ever sees rows).
        fences = [row[0] for kind, row in pending if kind == "fence"]
        if fences:
            pending = [entry for entry in pending if entry[0] != "fence"]
        job = self._prune_job
        now = time.monotonic()
        if job is not None and (
            not job.due(now)
            or ((fences or any(kind == "finish" for kind, _ in pending)) and not job.overdue(now))
        ):
            # (Not with a run's end or a fence: somebody waits for those. A slice rides in
            # a commit of rows nobody waits for, or is committed alone right after; only
            # under a stream of run ends that leaves no such commit does it ride along.)
            job = None
        if not pending and not events:
            if fences:
                self._tell(fences, True)
            if job is not None:
                self._slice_alone(job)
            return
        self._slice = job  # (taken along by the group's commit)
        try:
            try:
                finished = self._commit_group(pending, events)
            except Exception as exc:
                if not _is_data_error(exc):
                    raise
                # One row of the group cannot be written (text that is not UTF-8, an integer
                # SQLite cannot hold): the rest of the group must not wait behind it forever.
                finished = self._commit_isolating(pending, events)
        except BaseException as exc:
            # Nothing of it was committed: back to the head of the queue, in order (a busy
            # database, a full disk: the writer tries again; the runs' waiters keep waiting).
            with self._pending_cv:
                self._pending[:0] = pending
                self._pending_events[:0] = events
                self._since = min(self._since, time.monotonic())
                if any(kind == "finish" for kind, _ in pending):
                    self._urgent = True
            if isinstance(exc, Exception):
                self._write_error = f"{type(exc).__name__}: {exc}"
            if fences:  # (told of the failure; the rows they fenced stay queued)
                self._tell(fences, False)
            raise
        finally:
            self._slice = None
        self._write_error = None
        self._company = len(finished) + len(fences) > 1
        self._last_commit = time.monotonic()
        if fences:
            finished = [*finished, *((done, True) for done in fences)]
        if finished:
            with self._pending_cv:
                self._ready.extend(finished)
                self._pending_cv.notify()  # the writer runs the callbacks

    def _slice_alone(self, job: PruneJob) -> None:
        """Commit a slice of the prune in progress by itself (nothing else is pending). A
        slice that fails ends the prune with its error; one that fails to commit is done
        again later."""
        try:
            with self.transaction():
                job.step(self._db, alone=True)
        except Exception:
            job.settle(False)
            if job.error is None:
                _log.exception("pruning %s: a slice failed to commit; trying again", self.path)
            return
        self._settled(job)

    def _settled(self, job: PruneJob) -> None:
        """A slice was committed: count it, and every few slices wake the checkpointer (the
        pages a prune frees grow the log; left to a commit's catch-up, its checkpoint ran
        under the store's lock, in a run's end)."""
        job.settle(True)
        if job.slices % _SLICES_PER_CHECKPOINT == 0:
            self._want_checkpoint()

    def _tell(self, fences: list[Callable[[bool], None]], committed: bool) -> None:
        """Have the writer tell ``fences`` whether their group was committed."""
        with self._pending_cv:
            self._ready.extend((done, committed) for done in fences)
            self._pending_cv.notify()

    def _commit_isolating(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """Commit a group that failed on its data, isolating the rows that cannot be written.

        The group is halved until the failing rows stand alone (each half is its own commit,
        in queue order, so a run's writes keep their order). A row that cannot be written
        is written again with its text made encodable (a lone surrogate becomes the
        characters ``\\udcff``: inside a JSON column that is the same JSON escape, so the value
        reads back unchanged); if that fails too, the row is dropped and counted in
        :attr:`dropped_writes`, and a dropped run end tells its waiter it was not recorded.
        A failure that is not about the data (a busy or full disk) stops the isolation and
        is raised, with what is left of the group back in the queue."""
        finished: list[tuple[Callable[[bool], None], bool]] = []
        # Work items: (pending rows, event rows); a stack, so halves are done in order.
        work: list[tuple[list[tuple[str, tuple[Any, ...]]], list[tuple[Any, ...]]]] = [
            (pending, events)
        ]
        while work:
            rows, evs = work.pop()
            try:
                finished.extend(self._commit_group(rows, evs))
                continue
            except Exception as exc:
                if not _is_data_error(exc):
                    for later_rows, later_evs in reversed(work):
                        rows = rows + later_rows
                        evs = evs + later_evs
                    with self._pending_cv:  # (the caller puts the group back: only the rest)
                        self._ready.extend(finished)
                    pending[:] = rows
                    events[:] = evs
                    raise
                error = exc
            if len(rows) + len(evs) > 1:
                if len(rows) > 1 or (rows and evs):
                    half = len(rows) // 2 if len(rows) > 1 else len(rows)
                    work.append((rows[half:], evs))
                    work.append((rows[:half], []))
                else:
                    half = len(evs) // 2
                    work.append(([], evs[half:]))
                    work.append((rows, evs[:half]))
                continue
            finished.extend(self._write_alone(rows, evs, error))
        return finished

    def _write_alone(
        self,
        rows: list[tuple[str, tuple[Any, ...]]],
        evs: list[tuple[Any, ...]],
        error: Exception,
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """Write one row that failed on its data with its text made encodable, or drop it."""
        kind = rows[0][0] if rows else "event"
        row = rows[0][1] if rows else evs[0]
        fixed = [_encodable(value) for value in row]
        try:
            if any(new is not old for new, old in zip(fixed, row, strict=True)):
                if rows:
                    return self._commit_group([(kind, tuple(fixed))], [])
                return self._commit_group([], [tuple(fixed)])
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            error = exc
        self.dropped_writes += 1
        self._write_error_dropped = f"{type(error).__name__}: {error}"
        run_id = row[0] if rows else row[5]  # (an event: seq, time, type, rank, workflow, run)
        _log.error(
            "store %s: dropped a %s row of run %s that cannot be written: %s",
            self.path,
            kind,
            run_id,
            self._write_error_dropped,
        )
        if kind == "finish":
            return [(row[-1], False)]
        return []

    @property
    def write_error(self) -> str | None:
        """Why the last commit failed, while commits fail (``None`` when the last one
        succeeded): the store cannot write, and the service is not ready."""
        return self._write_error

    def _outputs_in_results(
        self,
        rows: list[tuple[Any, ...]],
        expected: list[Any],
        ended: set[str],
    ) -> list[str]:
        """Of the runs ``rows`` end (``_finish_runs`` values) that succeed with a result
        holding exactly their stored node outputs (``expected``, each run's: see
        :func:`~dagengine.orchestrator.store.compact.outputs_to_drop`), in the same order
        (issue 23: the outputs were stored twice): mark the result in ``rows`` as holding
        them (:func:`~dagengine.orchestrator.store.compact.with_outputs_here`) and return
        their ids, whose ``node_outputs`` rows the caller then deletes.

        A run whose ``expected`` is ``True`` is known to hold them (its end decided it from
        the outputs the store queued for it: ``compact.OutputsSeen``): nothing is read back,
        so a run's end costs the writer no more than the delete of its rows."""
        wanted: dict[str, list[tuple[str, str]]] = {}
        dropped = []
        for index, ((run_id, status, *_), outputs) in enumerate(zip(rows, expected, strict=True)):
            if run_id not in ended or status != "succeeded" or not outputs:
                continue
            if outputs is True:
                row = rows[index]
                rows[index] = (run_id, row[1], with_outputs_here(row[2]), *row[3:])
                dropped.append(run_id)
            else:
                wanted[run_id] = outputs
        if not wanted:
            return dropped
        stored: dict[str, list[tuple[str, str]]] = {run_id: [] for run_id in wanted}
        found = self._db.execute(_STORED_OUTPUTS, (json.dumps(list(wanted)),)).fetchone()[0]
        for run_id, node_id, output in json.loads(found or "[]"):
            stored[run_id].append((node_id, output))
        for index, row in enumerate(rows):
            run_id = row[0]
            want, have = wanted.get(run_id), stored.get(run_id)
            if (
                want is not None
                and have is not None
                and [n for n, _ in have] == [n for n, _ in want]
                and all(same_output(o, e) for (_, o), (_, e) in zip(have, want, strict=True))
            ):
                rows[index] = (run_id, row[1], with_outputs_here(row[2]), *row[3:])
                dropped.append(run_id)
        return dropped

    def _commit_group(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """Write a group in one transaction; returns each run end's callback with whether
        its end was recorded, in the order they were queued.

        Each statement lets go of the GIL while SQLite runs it, and taking it back from
        the orchestrator's busy threads cost about a context switch: a group is written in
        a few multi-row statements, not one per run. Only the order of a run's own writes
        matters (the writes of different runs touch different rows), so the group is not
        written in the order it was queued:

        * the runs' creations first (nothing queued before a run's creation concerns it);
        * then claims, node outputs (consecutive ones as one statement) and the ends of
          runs that have something queued after their end, in the order queued;
        * then the other run ends, in one statement;
        * then the events (no other table depends on them);
        * then a slice of the prune in progress, if one is due (prune_slices).
        """
        creates: list[tuple[Any, ...]] = []
        last: dict[str, int] = {}  # run id -> index of its last write (but its creation)
        for index, (kind, row) in enumerate(pending):
            if kind == "create":
                creates.append(row)
            else:
                last[row[0]] = index
        # Runs whose node outputs this group would write only for their end, in the same
        # group, to delete again: a succeeded end (its last write) whose result holds exactly
        # the outputs queued for its attempt (``True``: see _outputs_in_results). Their
        # outputs are not written: an output is fenced on its run running at its attempt,
        # so it is written only where that end is recorded too, and the end deletes the
        # run's outputs (any of an earlier group as well) either way.
        held: dict[str, int] = {}  # run id -> the attempt whose outputs its end holds
        for index, (kind, row) in enumerate(pending):
            if (
                kind == "finish"
                and row[6] is True
                and row[1] == "succeeded"
                and row[5] is not None
                and last[row[0]] == index
            ):
                held[row[0]] = row[5]
        finished: list[list[Any]] = []  # [callback, recorded], in queue order
        deferred: list[tuple[list[Any], tuple[Any, ...]]] = []
        outputs: list[tuple[Any, ...]] = []  # consecutive outputs, written as one statement

        def write_outputs() -> None:
            for chunk in _chunks(outputs, _OUTPUTS_PER_INSERT):
                self._db.execute(*_multi_row(_insert_outputs, chunk))
            outputs.clear()

        job, self._slice = self._slice, None
        try:
            with self.transaction():
                for chunk in _chunks(creates, _RUNS_PER_STATEMENT):
                    self._db.execute(*_multi_row(_insert_runs, chunk))
                for index, (kind, row) in enumerate(pending):
                    if kind == "create":
                        continue
                    if kind == "output":
                        if held.get(row[0]) != row[2]:
                            outputs.append(row)
                        continue
                    if kind == "finish":
                        entry = [row[-1], False]
                        finished.append(entry)
                        if last[row[0]] == index:
                            deferred.append((entry, row))
                            continue
                    if outputs:  # before anything queued after them (their run's end)
                        write_outputs()
                    if kind == "claim":
                        self._db.execute(_CLAIM, row[1:])
                    else:
                        entry[1] = self._db.execute(*_finish_sql(*row[:6])).rowcount == 1
                if outputs:
                    write_outputs()
                for chunk in _chunks(deferred, _RUNS_PER_STATEMENT):
                    rows = [row[:6] for _, row in chunk]
                    finish, values = _multi_row(_finish_runs, rows)
                    finishable = _finishable_runs(_padded(len(chunk)))
                    ended = set(json.loads(self._db.execute(finishable, values).fetchone()[0]))
                    if ended:
                        expected = [row[6] for _, row in chunk]
                        dropped = self._outputs_in_results(rows, expected, ended)
                        if dropped:
                            finish, values = _multi_row(_finish_runs, rows)
                        self._db.execute(finish, values)
                        if dropped:
                            self._db.execute(_DROP_OUTPUTS, (json.dumps(dropped),))
                    for entry, row in chunk:
                        entry[1] = row[0] in ended
                for chunk in _chunks(fold_events(events), _EVENTS_PER_INSERT):
                    self._db.execute(*_multi_row(_insert_events, chunk))
                if job is not None:
                    job.step(self._db)  # (under a savepoint: fails alone)
        except BaseException:
            if job is not None:
                job.settle(False)  # (undone with the group: done again later)
            raise
        if job is not None:
            self._settled(job)
        return [(done, recorded) for done, recorded in finished]

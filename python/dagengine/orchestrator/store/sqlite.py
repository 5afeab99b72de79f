"""The SQLite store: :class:`SQLiteStore` (imported as ``Store``), the
:class:`~dagengine.orchestrator.store.protocol.StoreBackend` of one SQLite database.

One connection, guarded by a lock, serves every thread of the orchestrator: SQLite serialises
writers anyway, and one connection means one page cache and no ``database is locked`` between
our own threads. The database runs in WAL mode with ``synchronous=NORMAL``: readers never
block the writer, and a commit is durable against a crash of the process (not of the machine,
where the last transactions may roll back -- the usual trade for a WAL database). Other
processes (a restarted orchestrator, the CLI) may open the same file; ``busy_timeout`` makes
them wait for each other instead of failing.

The ``*_later`` writes are committed in groups by the write-behind of
:mod:`~dagengine.orchestrator.store.writer` (the base class); the statements are in
:mod:`~dagengine.orchestrator.store.schema`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dagengine.exceptions import RunNotFound, StoreError
from dagengine.orchestrator.store import writer as _writer
from dagengine.orchestrator.store.cache_entries import CacheEntryTable
from dagengine.orchestrator.store.compact import (
    FOLD_SPAN,
    FOLDED_TYPES,
    OutputsSeen,
    expand_page,
    outputs_to_drop,
    page_bound,
    result_outputs,
    stored_types,
)
from dagengine.orchestrator.store.prune_slices import PruneJob
from dagengine.orchestrator.store.records import (
    EventRecord,
    RunRecord,
    WorkflowVersionRecord,
    _check_status,
    _dumps,
    _loads,
    _severity_rank,
)
from dagengine.orchestrator.store.retention import (
    PRUNE_BATCH,
    RUN_CASCADE,
    PruneReport,
    RetentionPolicy,
    StoreStats,
    count_prunable,
    prunable_runs,
    prune_batch,
    store_stats,
)
from dagengine.orchestrator.store.schema import (
    _EVENT_SELECT,
    _INSERT_EVENT,
    _INSERT_OUTPUT,
    _INSERT_RUN,
    _RUN_COLUMNS,
    _RUN_JSON,
    _RUN_SELECT,
    MIGRATIONS,
    Positions,
    _finish_sql,
    _finish_values,
    _run_from_row,
    _run_values,
)
from dagengine.orchestrator.store.writer import WriteBehind

__all__ = ["SQLiteStore", "Store"]

# How long another process's write transaction may hold us up before SQLite gives up.
_BUSY_TIMEOUT_MS = 10_000


class SQLiteStore(CacheEntryTable, WriteBehind):
    """Durable orchestrator state in one SQLite database (a file path, or ``":memory:"``).

    Thread-safe. Use :meth:`transaction` to group several writes into one commit (atomic and
    cheaper); every method also works on its own.
    """

    _MARK = "?"

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        text = os.fspath(path)
        if text != ":memory:":
            resolved = Path(text).expanduser()
            try:
                resolved.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of store {text!r}: {exc}") from exc
            text = str(resolved)
        self.path = text
        self._positions = Positions()
        self._outputs_seen = OutputsSeen()
        self._init_write_behind()
        # The pruner's connection, to choose runs without the store's lock (_prunable).
        self._reader: sqlite3.Connection | None = None
        self._prune_lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE takes the
            # write lock up front, so a transaction never fails half-way on a lock upgrade).
            self._db = sqlite3.connect(
                text, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {text!r}: {exc}") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # A new database gives space freed by a prune back to the file system
            # (reclaim_space). Only takes before the first page is written (so before WAL);
            # an older store keeps its mode and reuses freed pages for new rows instead.
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            if text != ":memory:":
                self._db.execute("PRAGMA wal_autocheckpoint = 0")  # ours: _checkpoints
                self._db.execute(f"PRAGMA journal_size_limit = {64 << 20}")
            # Foreign keys on only after the migrations: one rebuilds ``runs``, and dropping
            # the old table must not cascade to the rows that refer to it (the pragma is
            # ignored inside a transaction, so it cannot be switched off for one migration).
            self._migrate()
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute(RUN_CASCADE)
            self._next_seq = (
                int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM event_rows").fetchone()[0])
                + 1
            )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"cannot open store {text!r}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    # -- plumbing --

    def _migrate(self) -> None:
        with self.transaction():
            # Read inside the write transaction: two processes opening a new file at once
            # must not both apply the same migration.
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"store {self.path!r} has schema version {current}, newer than this "
                    f"dagengine understands ({len(MIGRATIONS)}); upgrade dagengine"
                )
            for number in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[number]:
                    self._db.execute(statement)
            if current != len(MIGRATIONS):
                self._db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        if 0 < current < len(MIGRATIONS) and self.path != ":memory:":
            # A migration that rebuilt tables (4: runs and events) left the old ones'
            # pages free: a store with incremental auto-vacuum gives them back now rather
            # than at its first prune (the file had doubled: 157 -> 249 -> 134 MB for
            # 100,000 runs).
            self._db.executescript("PRAGMA incremental_vacuum")

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (``PRAGMA user_version``)."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode: ``wal`` for a file, ``memory`` for ``:memory:``."""
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def _write(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Run a statement on the writer's connection (in the caller's transaction)."""
        return self._db.execute(sql, tuple(params))

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        """Write what is pending and close the database; the store cannot be used
        afterwards."""
        # The pruner's reader first: the last connection to close checkpoints the log into
        # the file (and a read-only one cannot).
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        super().close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path!r}>"

    # -- workflow versions --

    def save_workflow_version(
        self,
        workflow_id: str,
        version: str,
        spec: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        dependencies: Iterable[tuple[str, str]],
    ) -> None:
        """Record a registered version. Saving an existing ``(workflow_id, version)`` again
        replaces its spec, metadata and dependencies but keeps its place in the order."""
        deps = [[child, rng] for child, rng in dependencies]
        with self.transaction():
            self._db.execute(
                """INSERT INTO workflow_versions
                       (workflow_id, version, spec, metadata, dependencies, registered_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (workflow_id, version) DO UPDATE SET
                       spec = excluded.spec, metadata = excluded.metadata,
                       dependencies = excluded.dependencies""",
                (
                    workflow_id,
                    version,
                    None if spec is None else _dumps(dict(spec)),
                    _dumps(dict(metadata or {})),
                    _dumps(deps),
                    time.time(),
                ),
            )

    def workflow_versions(self) -> list[WorkflowVersionRecord]:
        """Every recorded version, in registration order."""
        rows = self._query(
            "SELECT workflow_id, version, spec, metadata, dependencies, registered_at "
            "FROM workflow_versions ORDER BY seq"
        )
        return [
            WorkflowVersionRecord(
                workflow_id,
                version,
                _loads(spec),
                _loads(metadata),
                tuple((child, rng) for child, rng in _loads(deps)),
                registered_at,
            )
            for workflow_id, version, spec, metadata, deps, registered_at in rows
        ]

    # -- runs --

    def create_run(self, record: RunRecord) -> None:
        """Insert a new run; ``StoreError`` if its id is taken."""
        _check_status(record.status)
        self.flush()  # a run created "later" with the same id goes in first
        try:
            with self.transaction():
                self._db.execute(_INSERT_RUN, _run_values(record))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"cannot create run {record.run_id!r}: {exc}") from exc

    def create_run_later(self, record: RunRecord) -> None:
        """Like :meth:`create_run`, committed with the next group (before anything queued
        after it, such as the run's claim). An id the store already has is left as it was:
        check for it first (:meth:`get_run` commits pending writes before it reads)."""
        _check_status(record.status)
        self._outputs_seen.created(record.run_id)
        self._later("create", tuple(_run_values(record)))

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run (any :class:`RunRecord` field but ``run_id``), unfenced: for
        bookkeeping such as ``resolved_versions``. Use :meth:`claim_attempt`,
        :meth:`finish_run` and :meth:`release_run` for state changes that can race with an
        engine. ``RunNotFound`` if there is no such run."""
        if not fields:
            return
        unknown = sorted(set(fields) - set(_RUN_COLUMNS[1:]))
        if unknown:
            raise ValueError(f"update_run: unknown run field(s) {', '.join(unknown)}")
        if "status" in fields:
            _check_status(fields["status"])
        names = list(fields)
        values = [
            _dumps(fields[n]) if n in _RUN_JSON and fields[n] is not None else fields[n]
            for n in names
        ]
        with self.transaction():
            cursor = self._db.execute(
                f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} WHERE run_id = ?",
                [*values, run_id],
            )
            if cursor.rowcount == 0:
                raise RunNotFound(f"no run {run_id!r}", run_id=run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if there is none with that id."""
        self.flush()
        rows = self._query(f"{_RUN_SELECT} WHERE run_id = ?", (run_id,))
        return _run_from_row(rows[0]) if rows else None

    def list_runs(
        self,
        workflow_id: str | None = None,
        status: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
    ) -> list[RunRecord]:
        """Runs matching every filter given, newest first (see the protocol)."""
        self.flush()
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        if before is not None:
            if not self._query("SELECT 1 FROM runs WHERE run_id = ?", (before,)):
                raise ValueError(f"no run {before!r} to page on from")
            where.append(
                "(created_at, rowid) < (SELECT created_at, rowid FROM runs WHERE run_id = ?)"
            )
            params.append(before)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if status is not None:
            _check_status(status)
            where.append("status = ?")
            params.append(status)
        if parent_run_id is not None:
            where.append("parent_run_id = ?")
            params.append(parent_run_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"{_RUN_SELECT}{clause} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_run_from_row(row) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs that are queued or running, oldest first: what a restarted orchestrator
        resumes."""
        self.flush()
        rows = self._query(
            f"{_RUN_SELECT} WHERE status IN ('queued', 'running') ORDER BY created_at, rowid"
        )
        return [_run_from_row(row) for row in rows]

    def claim_attempt(self, run_id: str, engine_id: str) -> int:
        """Start a new attempt of an unfinished run on ``engine_id``: the attempt number goes
        up by one, the status becomes ``running``. Returns the new attempt number; outputs and
        results of earlier attempts are refused from now on.

        ``RunNotFound`` for an unknown run, ``StoreError`` for a finished one.
        """
        self._outputs_seen.forget(run_id)
        self.flush()  # pending outputs of the current attempt go in first
        with self.transaction():
            row = self._db.execute(
                """UPDATE runs SET attempt = attempt + 1, status = 'running', engine_id = ?,
                       started_at = COALESCE(started_at, ?)
                   WHERE run_id = ? AND status IN ('queued', 'running')
                   RETURNING attempt""",
                (engine_id, time.time(), run_id),
            ).fetchone()
            if row is None:
                self._raise_not_unfinished(run_id, "start a new attempt of")
            return int(row[0])

    def claim_attempt_later(self, run_id: str, engine_id: str, attempt: int) -> None:
        """Like :meth:`claim_attempt` with the attempt number decided by the caller (the
        orchestrator that owns this store and knows each run's last attempt), committed with
        the next group: after the run's creation and outputs queued before it, before the
        outputs and the end of the new attempt, which are fenced on it."""
        self._outputs_seen.claimed(run_id, attempt)
        self._later("claim", (run_id, attempt, engine_id, time.time(), run_id, attempt))

    def _raise_not_unfinished(self, run_id: str, action: str) -> None:
        found = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if found is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        raise StoreError(f"cannot {action} run {run_id!r}: it is already {found[0]}")

    def release_run(self, run_id: str, attempt: int) -> bool:
        """Put a running run back in the queue (its engine went away), if ``attempt`` is
        still its current attempt; returns whether it was released."""
        self._outputs_seen.forget(run_id)
        self.flush()  # pending outputs of the current attempt go in first
        with self.transaction():
            cursor = self._db.execute(
                """UPDATE runs SET status = 'queued', engine_id = NULL
                   WHERE run_id = ? AND attempt = ? AND status = 'running'""",
                (run_id, attempt),
            )
            return cursor.rowcount == 1

    def finish_run(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the end of a run, if it is unfinished and ``attempt`` is its current attempt
        (``None``: whatever the attempt, for a cancellation decided by the orchestrator).
        Returns whether it was recorded; a late result from an old attempt returns ``False``
        and changes nothing."""
        self._outputs_seen.forget(run_id)
        self.flush()  # pending outputs of the current attempt go in first
        row = _finish_values(run_id, attempt, status, result, error)
        with self.transaction():
            return self._db.execute(*_finish_sql(*row)).rowcount == 1

    def finish_run_later(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | str | None,
        error: Mapping[str, Any] | None,
        done: Callable[[bool], None],
    ) -> None:
        """Like :meth:`finish_run`, committed with the next group (after the outputs queued
        before it); ``done(recorded)`` is called once it is committed, outside the store's
        lock, on the store's writer thread. ``result`` may be given already encoded (the
        JSON text of a :meth:`~dagengine.RunResult.to_dict`)."""
        compacted: list[Any] = []
        row = _finish_values(run_id, attempt, status, result, error, compacted)
        # The outputs its result holds, and whether they are its node_outputs rows, worked
        # out here rather than by the writer, under the store's lock (see
        # WriteBehind._outputs_in_results and OutputsSeen); from the result as it was
        # encoded, not parsed back from its JSON.
        stored = row[2]
        expected = (
            outputs_to_drop(stored, compacted[0] if compacted else None)
            if status == "succeeded" and stored
            else None
        )
        drop = self._outputs_seen.ended(run_id, attempt, expected)
        self._later("finish", (*row, drop, done))

    # -- node outputs --

    def save_node_output(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> bool:
        """Record a completed node's output if ``attempt`` is the run's current attempt and
        the run is running; returns whether it was stored. One statement, so the check and the
        write cannot be separated by a new claim."""
        self._outputs_seen.forget(run_id)
        with self._lock:
            self._flush_locked()
            with self.transaction():
                cursor = self._db.execute(
                    _INSERT_OUTPUT,
                    (
                        run_id,
                        node_id,
                        attempt,
                        _dumps(dict(output)),
                        self._positions.next(),
                        run_id,
                        attempt,
                    ),
                )
                stored = cursor.rowcount == 1
        return stored

    def save_node_output_later(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> None:
        """Like :meth:`save_node_output`, committed with the next group (within a few
        milliseconds, or at once when something reads outputs, claims an attempt or finishes
        the run); the attempt check happens at commit time."""
        row = (run_id, node_id, attempt, _dumps(dict(output)), self._positions.next())
        self._outputs_seen.output(run_id, node_id, attempt, row[3])
        self._later("output", row)

    def save_node_output_json_later(
        self, run_id: str, node_id: str, attempt: int, output_json: str
    ) -> None:
        """:meth:`save_node_output_later` for an output that is already JSON text (a JSON
        object, as an engine sends it): stored as it is, without decoding it first."""
        self._outputs_seen.output(run_id, node_id, attempt, output_json)
        self._later("output", (run_id, node_id, attempt, output_json, self._positions.next()))

    def node_outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The stored output of each completed node of the run, in completion order."""
        self.flush()
        rows = self._query(
            "SELECT node_id, output FROM node_outputs WHERE run_id = ? ORDER BY position, node_id",
            (run_id,),
        )
        if not rows:  # a succeeded run's may be kept in its result only (compact)
            stored = self._query("SELECT result FROM runs WHERE run_id = ?", (run_id,))
            kept = result_outputs(stored[0][0]) if stored else None
            if kept is not None:
                return kept
        return {node_id: _loads(output) for node_id, output in rows}

    # -- events --

    def _event_row(
        self,
        time: float | None,
        type: str,
        severity: str,
        workflow_id: str | None,
        run_id: str | None,
        node_id: str | None,
        engine_id: str | None,
        data: Mapping[str, Any] | None,
    ) -> list[Any]:
        """The row of an event, with its ``seq`` slot (0) still to fill."""
        rank = _severity_rank(severity)
        when = _now() if time is None else time
        payload = _dumps(dict(data or {}))
        return [0, when, type, rank, workflow_id, run_id, node_id, engine_id, payload]

    def append_event(
        self,
        time: float | None,
        type: str,
        severity: str = "info",
        workflow_id: str | None = None,
        run_id: str | None = None,
        node_id: str | None = None,
        engine_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Store an event (``time`` ``None`` = now); returns its sequence number, increasing
        and never reused, also across restarts. ``severity`` is one of :data:`SEVERITIES`."""
        row = self._event_row(time, type, severity, workflow_id, run_id, node_id, engine_id, data)
        with self._lock:
            self._flush_locked()
            with self._pending_cv:
                row[0] = seq = self._next_seq
                self._next_seq += 1
            with self.transaction():
                self._db.execute(_INSERT_EVENT, row)
        return seq

    def append_event_later(
        self,
        time: float | None,
        type: str,
        severity: str = "info",
        workflow_id: str | None = None,
        run_id: str | None = None,
        node_id: str | None = None,
        engine_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Like :meth:`append_event`, committed with the next group (group commit: one
        transaction for a burst of events instead of one each). The sequence number is
        assigned now; :meth:`events` commits pending events before it reads."""
        row = self._event_row(time, type, severity, workflow_id, run_id, node_id, engine_id, data)
        # Number and queue in one step: a reader that saw this number (last_event_seq) and
        # then commits the pending group must find the event in it.
        with self._pending_cv:
            row[0] = seq = self._next_seq
            self._next_seq += 1
            backlog = self._enqueue_events_locked([tuple(row)])
        if backlog >= _writer.MAX_PENDING:
            self.flush()  # backpressure: a writer faster than the disk waits for it
        return seq

    def append_events_later(
        self,
        events: Iterable[
            tuple[float, str, str, str | None, str | None, str | None, str | None, Any]
        ],
    ) -> int:
        """:meth:`append_event_later` for several events (``(time, type, severity,
        workflow_id, run_id, node_id, engine_id, data)`` each) in one step; returns the
        sequence number of the first (they are consecutive)."""
        encoded = [
            (when, kind, _severity_rank(level), wf, run, node, engine, _dumps(data))
            for when, kind, level, wf, run, node, engine, data in events
        ]
        if not encoded:
            with self._pending_cv:
                return self._next_seq
        with self._pending_cv:
            first = self._next_seq
            backlog = self._enqueue_events_locked(
                [(first + offset, *row) for offset, row in enumerate(encoded)]
            )
            self._next_seq = first + len(encoded)
        if backlog >= _writer.MAX_PENDING:
            self.flush()
        return first

    def events(
        self,
        after: int = 0,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Iterable[str] | None = None,
        min_severity: str | None = None,
        limit: int = 1000,
    ) -> list[EventRecord]:
        """Events with ``seq > after`` that match every filter given, oldest first (folded
        rows read back as their two events: see :mod:`~dagengine.orchestrator.store.compact`)."""
        self.flush()
        where: list[str] = []
        params: list[Any] = []
        if workflow_id is not None:
            where.append("e.workflow_id = ?")
            params.append(workflow_id)
        if run_id is not None:
            # By the run's number (an event whose run had no row keeps the id itself).
            where.append("(e.run_key = (SELECT id FROM runs WHERE run_id = ?) OR e.run_id = ?)")
            params += [run_id, run_id]
        wanted: set[str] | None = None
        stored: list[str] = []
        if types is not None:
            wanted = set(types)
            if not wanted:
                return []
            stored = stored_types(wanted)
            where.append(f"e.type IN ({', '.join('?' for _ in stored)})")
            params.extend(stored)
        if min_severity is not None:
            where.append("e.severity >= ?")
            params.append(_severity_rank(min_severity))
        select = f"{_EVENT_SELECT} WHERE "
        rest = "".join(f" AND {w}" for w in where)
        with self._lock:
            rows = self._db.execute(
                f"{select}e.seq > ?{rest} ORDER BY e.seq LIMIT ?", [after, *params, limit]
            ).fetchall()
            bound = page_bound(rows, limit)
            folded = [t for t in FOLDED_TYPES if wanted is None or t in stored]
            if bound is not None and folded:
                marks = ", ".join("?" * len(folded))
                rows += self._db.execute(
                    f"{select}e.seq > ? AND e.seq <= ? AND e.type IN ({marks}){rest} "
                    "ORDER BY e.seq",
                    [bound, bound + FOLD_SPAN, *folded, *params],
                ).fetchall()
        return expand_page(rows, after, bound, wanted, limit)

    def last_event_seq(self) -> int:
        """The sequence number of the newest event (0 if there is none)."""
        with self._pending_cv:
            return self._next_seq - 1

    # -- retention --

    def prune(
        self,
        policy: RetentionPolicy,
        *,
        now: float | None = None,
        limit: int = PRUNE_BATCH,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete one batch: up to ``limit`` finished runs that ``policy`` lets go (see
        :mod:`~dagengine.orchestrator.store.retention`), with their node outputs and
        events, in one transaction (written to ``policy.export_dir`` first, if set). Fewer
        than ``limit`` runs removed: nothing more to do for now. ``dry_run``: delete
        nothing, count everything a full prune would remove."""
        if limit < 1:
            raise ValueError(f"prune limit must be >= 1, got {limit!r}")
        when = time.time() if now is None else now
        # No flush first: what is pending concerns unfinished runs, which stay anyway.
        if dry_run:
            with self._lock:
                return count_prunable(self._db, policy, when)
        if self._lock._is_owned():  # type: ignore[attr-defined]
            # Inside a transaction of this thread (or on the writer thread): the writer
            # cannot take the batch, so it is one transaction here.
            with self._lock:
                began = time.perf_counter()
                with self.transaction():
                    report = prune_batch(self._db, policy, when, limit)
                report.seconds = time.perf_counter() - began
        else:
            report = self._prune_in_slices(policy, when, limit)
        if report.runs or report.events:
            self._want_checkpoint()  # (its pages, off the writers' path)
        return report

    def _prune_in_slices(self, policy: RetentionPolicy, when: float, limit: int) -> PruneReport:
        """Choose the batch's runs outside the store's lock, then have the writer delete
        them a slice at a time inside its commits (:mod:`.prune_slices`); ``seconds`` of the
        report is the longest slice (what a write may have waited for)."""
        with self._prune_lock:  # (one batch at a time: the writer takes one job)
            runs = self._prunable(policy, when, limit)
            if not runs and policy.max_age is None:
                return PruneReport()
            job = PruneJob(policy, when, runs)
            with self._pending_cv:
                self._check_writer_locked()
                self._prune_job = job
                self._pending_cv.notify()
            job.done.wait()
        if job.error is not None:
            if isinstance(job.error, StoreError):
                raise job.error
            raise StoreError(f"pruning {self.path!r} failed: {job.error}") from job.error
        return job.report

    def _prunable(
        self, policy: RetentionPolicy, when: float, limit: int
    ) -> dict[str, tuple[int, int]]:
        """Up to ``limit`` runs the policy lets go with what each holds (exported first if
        the policy says so), read on the pruner's own connection (a file store's: a reader
        in WAL mode waits for no writer)."""
        if self.path == ":memory:":
            with self._lock:
                return prunable_runs(self._db, policy, when, limit)
        if self._closing:
            raise StoreError(f"store {self.path!r} is closed")
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"file:{quote(self.path)}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_TIMEOUT_MS / 1000,
            )
        return prunable_runs(self._reader, policy, when, limit)

    def reclaim_space(self, max_pages: int = 2000) -> int:
        """Give up to ``max_pages`` free pages back to the file system (a store created
        with incremental auto-vacuum; an older one reuses them for new rows instead);
        returns the bytes given back."""
        with self._lock:
            if self._depth:
                raise StoreError("reclaim_space cannot run inside a transaction")
            if int(self._db.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                return 0
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            before = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            # executescript steps the pragma to its end (execute() frees one page a call).
            self._db.executescript(f"PRAGMA incremental_vacuum({int(max_pages)})")
            after = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        if after < before:
            self._want_checkpoint()
        return (before - after) * page

    def stats(self) -> StoreStats:
        """Rows and bytes per table, runs per workflow, the file's size."""
        self.flush()
        with self._lock:
            return store_stats(self._db, self.path)

    # -- trigger state --

    def get_trigger_state(self, trigger_id: str) -> dict[str, Any] | None:
        """The state last saved for a trigger, or ``None``."""
        rows = self._query("SELECT state FROM trigger_state WHERE trigger_id = ?", (trigger_id,))
        return _loads(rows[0][0]) if rows else None

    def set_trigger_state(self, trigger_id: str, state: Mapping[str, Any]) -> None:
        """Save (replace) a trigger's state."""
        with self.transaction():
            self._db.execute(
                """INSERT INTO trigger_state (trigger_id, state, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT (trigger_id) DO UPDATE SET
                       state = excluded.state, updated_at = excluded.updated_at""",
                (trigger_id, _dumps(dict(state)), _now()),
            )


def _now() -> float:
    # A module function, since append_event's ``time`` parameter shadows the module there.
    return time.time()


#: The name the store is imported by (``from dagengine.orchestrator.store import Store``).
Store = SQLiteStore

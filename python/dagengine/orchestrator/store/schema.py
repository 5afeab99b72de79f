"""The SQLite schema (:data:`MIGRATIONS`) and the statements the SQLite store runs: the
multi-row INSERT/UPDATE texts of a group commit (prepared for a power-of-two row count,
padded with rows of NULLs: :func:`_padded`), the fenced single-row statements, and the
conversions between :class:`~dagengine.orchestrator.store.records.RunRecord` and a row."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from dagengine.orchestrator.store.compact import compact_result, expand_result
from dagengine.orchestrator.store.records import (
    FINISHED_STATUSES,
    RunRecord,
    _check_status,
    _dumps,
    _loads,
)

__all__ = ["MIGRATIONS"]

_RUN_COLUMNS = (
    "run_id",
    "workflow_id",
    "version",
    "status",
    "inputs",
    "attempt",
    "engine_id",
    "key",
    "parent_run_id",
    "parent_node_id",
    "depth",
    "resolved_versions",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
)

#: The events as they were before migration 4: the run's id joined back from its number.
_EVENTS_VIEW: Final = """SELECT e.seq, e.time, e.type, e.severity, e.workflow_id,
        COALESCE(r.run_id, e.run_id) AS run_id, e.node_id, e.engine_id, e.data
    FROM event_rows e LEFT JOIN runs r ON r.id = e.run_key"""

#: Schema migrations; ``PRAGMA user_version`` is the number applied. Append, never edit.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE workflow_versions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id TEXT NOT NULL,
            version TEXT NOT NULL,
            spec TEXT,
            metadata TEXT NOT NULL,
            dependencies TEXT NOT NULL,
            registered_at REAL NOT NULL,
            UNIQUE (workflow_id, version)
        )""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            inputs TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            engine_id TEXT,
            key TEXT,
            parent_run_id TEXT REFERENCES runs (run_id),
            parent_node_id TEXT,
            depth INTEGER NOT NULL DEFAULT 0,
            resolved_versions TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            result TEXT
        )""",
        "CREATE INDEX runs_by_created ON runs (created_at)",
        "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
        "CREATE INDEX runs_by_status ON runs (status, created_at)",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id)",
        """CREATE TABLE node_outputs (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            node_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            output TEXT NOT NULL,
            PRIMARY KEY (run_id, node_id)
        )""",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            type TEXT NOT NULL,
            severity INTEGER NOT NULL,
            workflow_id TEXT,
            run_id TEXT,
            node_id TEXT,
            engine_id TEXT,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_run ON events (run_id, seq)",
        "CREATE INDEX events_by_workflow ON events (workflow_id, seq)",
        """CREATE TABLE trigger_state (
            trigger_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    # Cached nodes' outputs (see dagengine.cache): no foreign key to runs (an entry may be
    # stored while its run's row still waits in the write-behind queue); retention deletes
    # the entries of the runs it prunes, and storing entries drops the expired ones.
    (
        """CREATE TABLE cache_entries (
            workflow_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            key TEXT NOT NULL,
            output TEXT NOT NULL,
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            PRIMARY KEY (workflow_id, node_id, key)
        )""",
        "CREATE INDEX cache_entries_by_run ON cache_entries (run_id)",
        "CREATE INDEX cache_entries_by_age ON cache_entries (workflow_id, created_at)",
    ),
    # Node outputs clustered on their primary key (WITHOUT ROWID): the rowid table kept a
    # second copy of every (run_id, node_id) in its key's index, ~40% of the outputs'
    # bytes. ``position`` keeps the completion order the rowid gave (a rising number; the
    # old rowids for the rows converted here).
    (
        """CREATE TABLE node_outputs_clustered (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            node_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            output TEXT NOT NULL,
            position INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, node_id)
        ) WITHOUT ROWID""",
        """INSERT INTO node_outputs_clustered (run_id, node_id, attempt, output, position)
            SELECT run_id, node_id, attempt, output, rowid FROM node_outputs""",
        "DROP TABLE node_outputs",
        "ALTER TABLE node_outputs_clustered RENAME TO node_outputs",
    ),
    # Events keyed by their run's number, not its 32-character id (issue 23: the id was
    # stored in every event row and again in its index, ~300 bytes a run). ``runs`` gets an
    # explicit ``id`` (VACUUM renumbers an implicit rowid; AUTOINCREMENT: a pruned run's
    # number is never given to another); the events move to ``event_rows``, whose
    # ``run_key`` is that number (``run_id`` holds the id only for an event whose run has no
    # row). ``events`` becomes a view with the old columns (and INSTEAD OF triggers), so SQL
    # written against the old table still reads and writes the same events. Applied with
    # foreign keys off (see SQLiteStore._migrate): dropping the old ``runs`` must not
    # cascade to the node outputs.
    (
        """CREATE TABLE runs_keyed (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL UNIQUE,
            workflow_id TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            inputs TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            engine_id TEXT,
            key TEXT,
            parent_run_id TEXT REFERENCES runs (run_id),
            parent_node_id TEXT,
            depth INTEGER NOT NULL DEFAULT 0,
            resolved_versions TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            result TEXT
        )""",
        f"""INSERT INTO runs_keyed (id, {", ".join(_RUN_COLUMNS)})
            SELECT rowid, {", ".join(_RUN_COLUMNS)} FROM runs ORDER BY rowid""",
        """CREATE TABLE event_rows (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            type TEXT NOT NULL,
            severity INTEGER NOT NULL,
            workflow_id TEXT,
            run_key INTEGER,
            run_id TEXT,
            node_id TEXT,
            engine_id TEXT,
            data TEXT NOT NULL
        )""",
        """INSERT INTO event_rows
            SELECT e.seq, e.time, e.type, e.severity, e.workflow_id, r.id,
                CASE WHEN r.id IS NULL THEN e.run_id END, e.node_id, e.engine_id, e.data
            FROM events e LEFT JOIN runs_keyed r ON r.run_id = e.run_id ORDER BY e.seq""",
        "DROP TABLE events",
        "DROP TABLE runs",
        "ALTER TABLE runs_keyed RENAME TO runs",
        "CREATE INDEX runs_by_created ON runs (created_at)",
        "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
        "CREATE INDEX runs_by_status ON runs (status, created_at)",
        # Only sub-workflows have a parent.
        "CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL",
        "CREATE INDEX event_rows_by_run ON event_rows (run_key, seq)",
        "CREATE INDEX event_rows_by_run_id ON event_rows (run_id, seq) WHERE run_id IS NOT NULL",
        "CREATE INDEX event_rows_by_workflow ON event_rows (workflow_id, seq)",
        f"CREATE VIEW events AS {_EVENTS_VIEW}",
        """CREATE TRIGGER events_insert INSTEAD OF INSERT ON events BEGIN
            INSERT INTO event_rows
                (seq, time, type, severity, workflow_id, run_key, run_id, node_id, engine_id,
                data)
            VALUES (NEW.seq, NEW.time, NEW.type, NEW.severity, NEW.workflow_id,
                (SELECT id FROM runs WHERE run_id = NEW.run_id),
                CASE WHEN NOT EXISTS (SELECT 1 FROM runs WHERE run_id = NEW.run_id)
                    THEN NEW.run_id END,
                NEW.node_id, NEW.engine_id, NEW.data);
        END""",
        """CREATE TRIGGER events_delete INSTEAD OF DELETE ON events BEGIN
            DELETE FROM event_rows WHERE seq = OLD.seq;
        END""",
    ),
)


#: Events written by one INSERT statement. sqlite3 lets go of the GIL around every step of
#: a statement, and each of those hand-offs cost more than the row when threads contend for
#: it: a group's events go in a few statements, not one step per row.
_EVENTS_PER_INSERT: Final = 256


def _chunks(rows: list[Any], size: int) -> Iterator[list[Any]]:
    """``rows`` in chunks of at most ``size``."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _padded(count: int) -> int:
    """The number of rows a multi-row statement for ``count`` rows is prepared for: the
    next power of two, the rest padded with rows of NULLs that match nothing. SQLite
    prepares a statement in about twice the time it takes to run it, and a connection
    keeps 128 prepared: one text per row count would keep preparing them."""
    return 1 << max(0, count - 1).bit_length()


def _values(rows: int, width: int) -> str:
    """The placeholders of a ``VALUES`` list of ``rows`` rows of ``width`` values."""
    row = f"({', '.join('?' * width)})"
    return ", ".join([row] * rows)


def _multi_row(
    statement: Callable[[int], str], rows: list[tuple[Any, ...]]
) -> tuple[str, list[Any]]:
    """``statement`` (a multi-row statement for a number of rows) for ``rows`` (of one
    width), and its parameters: the rows' values, padded with NULLs to :func:`_padded`
    rows."""
    padded = _padded(len(rows))
    values = [v for row in rows for v in row]
    values.extend([None] * ((padded - len(rows)) * len(rows[0])))
    return statement(padded), values


@functools.lru_cache(maxsize=16)
def _insert_events(rows: int) -> str:
    """An INSERT of ``rows`` events (``seq, time, type, severity, workflow_id, run_id,
    node_id, engine_id, data`` each; SQLite allows 32,766 values per statement; rows of
    NULLs are skipped: see :func:`_padded`). The run is stored by its number
    (``run_key``); its id only when it has no row."""
    return f"""INSERT INTO event_rows (seq, time, type, severity, workflow_id, run_key, run_id,
        node_id, engine_id, data)
    SELECT v.column1, v.column2, v.column3, v.column4, v.column5, r.id,
        CASE WHEN r.id IS NULL THEN v.column6 END, v.column7, v.column8, v.column9
    FROM (VALUES {_values(rows, 9)}) AS v LEFT JOIN runs r ON r.run_id = v.column6
    WHERE v.column1 IS NOT NULL"""


#: One event (the values of :func:`_insert_events`).
_INSERT_EVENT: Final = _insert_events(1)


@functools.lru_cache(maxsize=16)
def _insert_outputs(rows: int) -> str:
    """:data:`_INSERT_OUTPUT` for ``rows`` outputs in one statement (``run_id, node_id,
    attempt, output, position`` each), each fenced on its own run like the single one (rows
    of NULLs match no run: see :func:`_padded`)."""
    return f"""INSERT INTO node_outputs (run_id, node_id, attempt, output, position)
    SELECT column1, column2, column3, column4, column5 FROM (VALUES {_values(rows, 5)}) AS v
    WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = v.column1 AND attempt = v.column3
        AND status = 'running')
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""


#: Outputs written by one INSERT statement (a run's nodes' outputs come together).
_OUTPUTS_PER_INSERT: Final = 256

# Stores a node's output only if the attempt is the run's current one and the run is running
# (fencing): one statement, so the check and the write cannot be separated by a new claim.
# A stored node keeps its position (its first completion) when a later attempt replaces it.
_INSERT_OUTPUT = """INSERT INTO node_outputs (run_id, node_id, attempt, output, position)
    SELECT ?, ?, ?, ?, ? WHERE EXISTS (
        SELECT 1 FROM runs WHERE run_id = ? AND attempt = ? AND status = 'running')
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""


class Positions:
    """The completion order of node outputs: a rising number, near the time in
    microseconds (so it keeps rising across a restart, above the rowids of converted
    rows), one more than the last when outputs come faster than that. Thread-safe."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        now = time.time_ns() // 1000
        with self._lock:
            self._last = max(self._last + 1, now)
            return self._last


#: The columns an event is read as, its run's id joined back from its number (alias ``e``).
_EVENT_SELECT: Final = (
    "SELECT e.seq, e.time, e.type, e.severity, e.workflow_id, COALESCE(r.run_id, e.run_id), "
    "e.node_id, e.engine_id, e.data FROM event_rows e LEFT JOIN runs r ON r.id = e.run_key"
)
_RUN_JSON = frozenset({"inputs", "resolved_versions", "error", "result"})
_RUN_SELECT = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
_INSERT_RUN = (
    f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' for _ in _RUN_COLUMNS)})"
)


@functools.lru_cache(maxsize=16)
def _insert_runs(rows: int) -> str:
    """:data:`_INSERT_RUN` for ``rows`` runs in one statement (rows of NULLs are skipped:
    see :func:`_padded`). In a group commit a failing statement would roll back the whole
    group: a taken id is skipped instead (callers check for it before they queue the
    run)."""
    columns = ", ".join(f"column{i}" for i in range(1, len(_RUN_COLUMNS) + 1))
    return f"""INSERT INTO runs ({", ".join(_RUN_COLUMNS)})
    SELECT {columns} FROM (VALUES {_values(rows, len(_RUN_COLUMNS))}) WHERE column1 IS NOT NULL
    ON CONFLICT (run_id) DO NOTHING"""


#: Runs created, or ended, by one statement of a group.
_RUNS_PER_STATEMENT: Final = 256


@functools.lru_cache(maxsize=16)
def _finishable_runs(rows: int) -> str:
    """The ids (a JSON array) of the runs that a :func:`_finish_runs` of the same values
    ends: one row, so one step of the statement (each step lets go of the GIL)."""
    return f"""SELECT json_group_array(v.column1) FROM (VALUES {_values(rows, 6)}) AS v
    JOIN runs ON runs.run_id = v.column1
    WHERE runs.status IN ('queued', 'running')
        AND (v.column6 IS NULL OR runs.attempt = v.column6)"""


@functools.lru_cache(maxsize=16)
def _finish_runs(rows: int) -> str:
    """The end of ``rows`` runs in one statement, each fenced like :meth:`Store.finish_run`
    (``run_id, status, result, error, finished_at, attempt`` each; ``attempt`` NULL:
    any). No run may appear twice: only one of its rows would be used."""
    return f"""UPDATE runs SET status = v.column2, result = v.column3, error = v.column4,
        finished_at = v.column5
    FROM (VALUES {_values(rows, 6)}) AS v
    WHERE runs.run_id = v.column1 AND runs.status IN ('queued', 'running')
        AND (v.column6 IS NULL OR runs.attempt = v.column6)"""


# A claim decided by the orchestrator (which numbers attempts itself), fenced like
# claim_attempt: never on a finished run, never back to an older attempt.
_CLAIM = """UPDATE runs SET attempt = ?, status = 'running', engine_id = ?,
        started_at = COALESCE(started_at, ?)
    WHERE run_id = ? AND status IN ('queued', 'running') AND attempt < ?"""


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    values = {
        name: _loads(value) if name in _RUN_JSON else value
        for name, value in zip(_RUN_COLUMNS, row, strict=True)
    }
    values["result"] = expand_result(row[0], row[3], values["result"])
    return RunRecord(**values)


def _run_values(record: RunRecord) -> list[Any]:
    """The column values of a run record, JSON fields encoded."""
    values: list[Any] = []
    for name in _RUN_COLUMNS:
        value = getattr(record, name)
        values.append(_dumps(value) if name in _RUN_JSON and value is not None else value)
    return values


def _finish_values(
    run_id: str,
    attempt: int | None,
    status: str,
    result: Mapping[str, Any] | str | None,
    error: Mapping[str, Any] | None,
    compacted: list[Any] | None = None,
) -> tuple[Any, ...]:
    """A run's end as the values of :func:`_finish_runs`: ``run_id, status, result, error,
    finished_at, attempt`` (JSON fields encoded; ``result`` may come encoded). The result as
    stored, before it was encoded, is appended to ``compacted`` (when given and there is
    one)."""
    _check_status(status, FINISHED_STATUSES)
    stored: str | None = None
    if result is not None:
        # Stored without what the reader rebuilds from the row (compact.compact_result).
        value = json.loads(result) if isinstance(result, str) else dict(result)
        if isinstance(value, dict):
            value = compact_result(run_id, status, value)
        stored = _dumps(value)
        if compacted is not None:
            compacted.append(value)
    return (
        run_id,
        status,
        stored,
        None if error is None else _dumps(dict(error)),
        time.time(),
        attempt,
    )


def _finish_sql(
    run_id: str,
    status: str,
    result: str | None,
    error: str | None,
    finished_at: float,
    attempt: int | None,
) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that ends one run (the values of :func:`_finish_values`): only an
    unfinished run, and only its current attempt unless ``attempt`` is ``None``."""
    sql = """UPDATE runs SET status = ?, result = ?, error = ?, finished_at = ?
             WHERE run_id = ? AND status IN ('queued', 'running')"""
    if attempt is None:
        return sql, (status, result, error, finished_at, run_id)
    return f"{sql} AND attempt = ?", (status, result, error, finished_at, run_id, attempt)

"""The orchestrator's durable state in SQLite: workflow versions, runs, node outputs, events
and trigger state.

One connection, guarded by a lock, serves every thread of the orchestrator: SQLite serialises
writers anyway, and one connection means one page cache and no ``database is locked`` between
our own threads. The database runs in WAL mode with ``synchronous=NORMAL``: readers never
block the writer, and a commit is durable against a crash of the process (not of the machine,
where the last transactions may roll back -- the usual trade for a WAL database). Other
processes (a restarted orchestrator, the CLI) may open the same file; ``busy_timeout`` makes
them wait for each other instead of failing.

Runs are fenced by their attempt number: every dispatch of a run to an engine starts a new
attempt (:meth:`Store.claim_attempt`), and node outputs and the final result are only accepted
from the current attempt, so a late answer from an engine that was given up on changes nothing.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` lists the steps and a
store is brought up to date when it is opened.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import quote

from dagengine.exceptions import RunNotFound, StoreError

_log = logging.getLogger("dagengine.orchestrator.store")

__all__ = [
    "FINISHED_STATUSES",
    "MIGRATIONS",
    "RUN_STATUSES",
    "SEVERITIES",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "Severity",
    "Store",
    "WorkflowVersionRecord",
]

RunStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Severity: TypeAlias = Literal["info", "warning", "error", "critical"]

RUN_STATUSES: Final = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES: Final = ("succeeded", "failed", "cancelled")
#: Event severities, least severe first; ``min_severity`` filters by this order.
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "error", "critical")
_SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}

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
)

# How long another process's write transaction may hold us up before SQLite gives up.
_BUSY_TIMEOUT_MS = 10_000

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

_INSERT_EVENT = """INSERT INTO events
    (seq, time, type, severity, workflow_id, run_id, node_id, engine_id, data)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""

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
    """An INSERT of ``rows`` events (9 values each; SQLite allows 32,766 per statement;
    rows of NULLs are skipped: see :func:`_padded`)."""
    return (
        "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, node_id, "
        "engine_id, data) SELECT column1, column2, column3, column4, column5, column6, "
        f"column7, column8, column9 FROM (VALUES {_values(rows, 9)}) WHERE column1 IS NOT NULL"
    )


@functools.lru_cache(maxsize=16)
def _insert_outputs(rows: int) -> str:
    """:data:`_INSERT_OUTPUT` for ``rows`` outputs in one statement (``run_id, node_id,
    attempt, output`` each), each fenced on its own run like the single one (rows of
    NULLs match no run: see :func:`_padded`)."""
    return f"""INSERT INTO node_outputs (run_id, node_id, attempt, output)
    SELECT column1, column2, column3, column4 FROM (VALUES {_values(rows, 4)}) AS v
    WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = v.column1 AND attempt = v.column3
        AND status = 'running')
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""


#: Outputs written by one INSERT statement (a run's nodes' outputs come together).
_OUTPUTS_PER_INSERT: Final = 256

# Stores a node's output only if the attempt is the run's current one and the run is running
# (fencing): one statement, so the check and the write cannot be separated by a new claim.
_INSERT_OUTPUT = """INSERT INTO node_outputs (run_id, node_id, attempt, output)
    SELECT ?, ?, ?, ? WHERE EXISTS (
        SELECT 1 FROM runs WHERE run_id = ? AND attempt = ? AND status = 'running')
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""


#: One encoder for every write: ``json.dumps`` with options builds a new encoder per call.
_encode: Final[Callable[[Any], str]] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False
).encode


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder behind ``_encode``, made once: ``encode`` builds one per call, which costs more
# than encoding a node event's few fields. Without a circular-reference check (its state
# would be shared between threads): a cycle ends in RecursionError, and ``_dumps`` then lets
# ``_encode`` report it properly.
_c_encode = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def _dumps(value: Any) -> str:
    if _c_encode is None:
        return _encode(value)
    try:
        return "".join(_c_encode(value, 0))
    except RecursionError:
        return _encode(value)  # raises "Circular reference detected" (or encodes deep data)


def _is_data_error(exc: BaseException) -> bool:
    """Whether a failed write failed on its data (a value SQLite cannot bind or a constraint
    it breaks) rather than on the database (busy, locked, full, unreadable): only the former
    is about one row, and only it is isolated."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    return isinstance(exc, (sqlite3.Error, ValueError, TypeError, OverflowError))


def _encodable(value: Any) -> Any:
    """``value`` with text that UTF-8 can encode: lone surrogates become ``\\uXXXX``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowVersionRecord:
    """A registered workflow version as stored. ``spec`` is ``None`` for a DAG that has no
    portable spec (Python closures): it is listed after a restart but must be registered again
    to run. ``dependencies`` are the ``(workflow_id, version_range)`` of its sub-workflow
    nodes."""

    workflow_id: str
    version: str
    spec: dict[str, Any] | None
    metadata: dict[str, Any]
    dependencies: tuple[tuple[str, str], ...]
    registered_at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a workflow version. ``attempt`` counts dispatches to engines (0 = never
    dispatched); ``resolved_versions`` maps each sub-workflow reference (``child@^1``) to the
    version chosen at run start; times are Unix seconds."""

    run_id: str
    workflow_id: str
    version: str
    status: RunStatus = "queued"
    inputs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    engine_id: str | None = None
    key: str | None = None
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    depth: int = 0
    resolved_versions: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @staticmethod
    def new_id() -> str:
        """A fresh run id: 32 hex digits, the first 12 the creation time in milliseconds
        and the rest random (80 bits), like a UUIDv7. Ids made later sort later, so the
        indexes keyed by run id (runs, node outputs, events by run) grow at their end: with
        random ids each insert landed on a random page of them, which made recording an
        event three times as expensive.

        The random part comes from :mod:`random` (reseeded in a forked child), not from
        ``os.urandom``: that is a system call with the GIL let go, and taking the GIL back
        from 64 busy threads cost the caller a context switch per run. Run ids are unique,
        not secret."""
        return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"

    @property
    def finished(self) -> bool:
        """True once the run succeeded, failed or was cancelled."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event; ``seq`` increases with every event and is never reused."""

    seq: int
    time: float
    type: str
    severity: Severity
    workflow_id: str | None
    run_id: str | None
    node_id: str | None
    engine_id: str | None
    data: dict[str, Any]


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
) -> tuple[Any, ...]:
    """A run's end as the values of :func:`_finish_runs`: ``run_id, status, result, error,
    finished_at, attempt`` (JSON fields encoded; ``result`` may come encoded)."""
    _check_status(status, FINISHED_STATUSES)
    return (
        run_id,
        status,
        None if result is None else result if isinstance(result, str) else _dumps(dict(result)),
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


def _check_status(status: str, allowed: Iterable[str] = RUN_STATUSES) -> None:
    allowed = tuple(allowed)
    if status not in allowed:
        raise ValueError(f"invalid run status {status!r}: expected one of {', '.join(allowed)}")


def _severity_rank(severity: str) -> int:
    try:
        return _SEVERITY_RANK[severity]
    except KeyError:
        raise ValueError(
            f"invalid severity {severity!r}: expected one of {', '.join(SEVERITIES)}"
        ) from None


# --- the store --------------------------------------------------------------------------------


class Store:
    """Durable orchestrator state in one SQLite database (a file path, or ``":memory:"``).

    Thread-safe. Use :meth:`transaction` to group several writes into one commit (atomic and
    cheaper); every method also works on its own.
    """

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
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            if text != ":memory:":
                self._db.execute("PRAGMA wal_autocheckpoint = 0")  # ours: _checkpoints
                self._db.execute(f"PRAGMA journal_size_limit = {64 << 20}")
            self._migrate()
            self._next_seq = (
                int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]) + 1
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
            if self._commits % CHECKPOINT_EVERY or self._closing:
                return
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

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        """Write what is pending and close the database; the store cannot be used
        afterwards."""
        with self._pending_cv:
            self._closing = True
            self._pending_cv.notify_all()
        with self._checkpoint_cv:
            self._checkpoint_cv.notify_all()
        for thread in (self._writer, self._checkpointer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
        with self._lock:
            self._flush_locked()
            self._db.close()  # (the last connection to close checkpoints the log)
        self._run_ready()

    # -- group commit --

    def _later(self, kind: str, row: tuple[Any, ...]) -> None:
        with self._pending_cv:
            backlog = self._enqueue_locked(kind, row)
        if backlog >= MAX_PENDING:
            self.flush()  # backpressure: a writer faster than the disk waits for it

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
        if kind == "finish":
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
                    due = bool(self._pending or self._pending_events) and (
                        time.monotonic() - self._since >= LAZY_COMMIT_DELAY
                    )
                    if self._urgent or due:
                        commit, events = True, due
                        break
                    if self._ready:
                        break
                    if not self._pending and not self._pending_events:
                        self._pending_cv.wait()
                    else:
                        self._pending_cv.wait(self._since + LAZY_COMMIT_DELAY - time.monotonic())
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
        if not pending and not events:
            return
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
            raise
        self._write_error = None
        if finished:
            with self._pending_cv:
                self._ready.extend(finished)
                self._pending_cv.notify()  # the writer runs the callbacks

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
        * then the events (no other table depends on them).
        """
        creates: list[tuple[Any, ...]] = []
        last: dict[str, int] = {}  # run id -> index of its last write (but its creation)
        for index, (kind, row) in enumerate(pending):
            if kind == "create":
                creates.append(row)
            else:
                last[row[0]] = index
        finished: list[list[Any]] = []  # [callback, recorded], in queue order
        deferred: list[tuple[list[Any], tuple[Any, ...]]] = []
        outputs: list[tuple[Any, ...]] = []  # consecutive outputs, written as one statement

        def write_outputs() -> None:
            for chunk in _chunks(outputs, _OUTPUTS_PER_INSERT):
                self._db.execute(*_multi_row(_insert_outputs, chunk))
            outputs.clear()

        with self.transaction():
            for chunk in _chunks(creates, _RUNS_PER_STATEMENT):
                self._db.execute(*_multi_row(_insert_runs, chunk))
            for index, (kind, row) in enumerate(pending):
                if kind == "create":
                    continue
                if kind == "output":
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
                    entry[1] = self._db.execute(*_finish_sql(*row[:-1])).rowcount == 1
            if outputs:
                write_outputs()
            for chunk in _chunks(deferred, _RUNS_PER_STATEMENT):
                finish, values = _multi_row(_finish_runs, [row[:-1] for _, row in chunk])
                finishable = _finishable_runs(_padded(len(chunk)))
                ended = set(json.loads(self._db.execute(finishable, values).fetchone()[0]))
                if ended:
                    self._db.execute(finish, values)
                for entry, row in chunk:
                    entry[1] = row[0] in ended
            for chunk in _chunks(events, _EVENTS_PER_INSERT):
                self._db.execute(*_multi_row(_insert_events, chunk))
        return [(done, recorded) for done, recorded in finished]

    def __enter__(self) -> Store:
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
    ) -> list[RunRecord]:
        """Runs matching every filter given, newest first."""
        self.flush()
        where: list[str] = []
        params: list[Any] = []
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
        self._later("claim", (run_id, attempt, engine_id, time.time(), run_id, attempt))

    def _raise_not_unfinished(self, run_id: str, action: str) -> None:
        found = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if found is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        raise StoreError(f"cannot {action} run {run_id!r}: it is already {found[0]}")

    def release_run(self, run_id: str, attempt: int) -> bool:
        """Put a running run back in the queue (its engine went away), if ``attempt`` is
        still its current attempt; returns whether it was released."""
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
        row = _finish_values(run_id, attempt, status, result, error)
        self._later("finish", (*row, done))

    # -- node outputs --

    def save_node_output(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> bool:
        """Record a completed node's output if ``attempt`` is the run's current attempt and
        the run is running; returns whether it was stored. One statement, so the check and the
        write cannot be separated by a new claim."""
        with self._lock:
            self._flush_locked()
            with self.transaction():
                cursor = self._db.execute(
                    _INSERT_OUTPUT,
                    (run_id, node_id, attempt, _dumps(dict(output)), run_id, attempt),
                )
                stored = cursor.rowcount == 1
        return stored

    def save_node_output_later(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> None:
        """Like :meth:`save_node_output`, committed with the next group (within a few
        milliseconds, or at once when something reads outputs, claims an attempt or finishes
        the run); the attempt check happens at commit time."""
        self._later("output", (run_id, node_id, attempt, _dumps(dict(output))))

    def save_node_output_json_later(
        self, run_id: str, node_id: str, attempt: int, output_json: str
    ) -> None:
        """:meth:`save_node_output_later` for an output that is already JSON text (a JSON
        object, as an engine sends it): stored as it is, without decoding it first."""
        self._later("output", (run_id, node_id, attempt, output_json))

    def node_outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The stored output of each completed node of the run, in completion order."""
        self.flush()
        rows = self._query(
            "SELECT node_id, output FROM node_outputs WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
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
        if backlog >= MAX_PENDING:
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
        if backlog >= MAX_PENDING:
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
        """Events with ``seq > after`` that match every filter given, oldest first."""
        self.flush()
        where = ["seq > ?"]
        params: list[Any] = [after]
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if types is not None:
            wanted = list(types)
            if not wanted:
                return []
            where.append(f"type IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        if min_severity is not None:
            where.append("severity >= ?")
            params.append(_severity_rank(min_severity))
        rows = self._query(
            "SELECT seq, time, type, severity, workflow_id, run_id, node_id, engine_id, data "
            f"FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*params, limit],
        )
        return [
            EventRecord(seq, when, kind, SEVERITIES[rank], wf, run, node, engine, _loads(data))
            for seq, when, kind, rank, wf, run, node, engine, data in rows
        ]

    def last_event_seq(self) -> int:
        """The sequence number of the newest event (0 if there is none)."""
        with self._pending_cv:
            return self._next_seq - 1

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

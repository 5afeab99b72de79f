"""The PostgreSQL store: :class:`PostgresStore`, the
:class:`~dagengine.orchestrator.store.protocol.StoreBackend` of a PostgreSQL database
(``Orchestrator(store="postgresql://user:pass@host/db")``, ``dagengine serve --store URL``,
``DAGENGINE_STORE``). Needs the ``postgres`` extra (psycopg 3 and psycopg-pool).

Writes go through one connection of the store's own (the writer's, guarded by the store's
lock, as the SQLite store's one connection is); the ``*_later`` writes are committed in groups
by the same write-behind (:mod:`~dagengine.orchestrator.store.writer`), each group one
transaction whose statements go to the server in a pipeline (one round trip, not one per
row). Reads take a connection of a pool (psycopg_pool) and do not wait for the writer, after
committing what is pending (:meth:`flush`) as the contract wants. A commit is durable when
PostgreSQL acknowledges it (``synchronous_commit`` as the server is configured: ``on`` by
default, so an acknowledged run's end survives a crash of the orchestrator and of the
database server).

A connection lost (the server restarted, the network gone) makes the group's commit fail:
the group goes back to the queue, :attr:`write_error` says why, and the writer connects again
on its next try. Reads that find their pooled connection dead are tried once more on a new
one.

Event sequence numbers are assigned when an event is queued, from a counter of this store
(one orchestrator per database), and the highest one written is kept in the sequence
``events_seq`` so that a restarted store never reuses a number. A replica's store
(``replica=ID``: several active orchestrators on the database, see
:mod:`~dagengine.orchestrator.store.postgres_replicas`) numbers them when they are committed
instead, in commit order across the replicas: its ``append_event_later`` returns 0.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dagengine.exceptions import ConfigError, RunNotFound, StoreError
from dagengine.orchestrator.store import postgres_retention as _retention
from dagengine.orchestrator.store import writer as _writer
from dagengine.orchestrator.store.cache_entries import CacheEntryTable
from dagengine.orchestrator.store.compact import (
    FOLD_SPAN,
    FOLDED_TYPES,
    expand_page,
    page_bound,
    stored_types,
)
from dagengine.orchestrator.store.postgres_replicas import (
    DEFAULT_LEASE_TTL,
    ReplicaStore,
    replica_server_settings,
)
from dagengine.orchestrator.store.postgres_schema import (
    INSERT_OUTPUT,
    INSERT_RUN,
    NEXT_EVENT_SEQ,
    PG_MIGRATIONS,
    RUN_SELECT,
    finish_sql,
    migrate,
    run_from_row,
)
from dagengine.orchestrator.store.postgres_writer import (
    CONNECT_TIMEOUT,
    CONNECTION_DEFAULTS,
    SERVER_DEFAULTS,
    PostgresWriter,
    _RowError,
    server_options,
)
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
    PruneReport,
    RetentionPolicy,
    StoreStats,
)
from dagengine.orchestrator.store.schema import _RUN_COLUMNS, _RUN_JSON, _finish_values, _run_values

__all__ = ["PostgresStore", "is_postgres_url"]

#: Connections of the readers' pool (the writer has one more of its own).
POOL_SIZE = 8
#: The advisory lock a prune batch holds (any number: the same in every process).
PRUNE_LOCK = 0x6461_6765_7072  # "dagepr"


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _standby_from_env() -> bool:
    """``DAGENGINE_STORE_STANDBY``: ``1`` waits for a store another orchestrator holds."""
    raw = os.environ.get("DAGENGINE_STORE_STANDBY", "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(
            f"DAGENGINE_STORE_STANDBY must be 0 or 1, got {raw!r}",
            variable="DAGENGINE_STORE_STANDBY",
            value=raw,
        )
    return raw == "1"


def _require_psycopg() -> tuple[Any, Any]:
    """psycopg and psycopg_pool, or :class:`ConfigError` naming the extra."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as err:
        raise ConfigError(
            "a PostgreSQL store needs psycopg 3 and psycopg-pool: "
            "pip install 'dagengine[postgres]'",
            variable="DAGENGINE_STORE",
            value="postgresql://...",
        ) from err
    return psycopg, psycopg_pool


class PostgresStore(CacheEntryTable, ReplicaStore, PostgresWriter):
    """Durable orchestrator state in a PostgreSQL database (``url``: a libpq URL,
    ``postgresql://user:password@host:port/database?options=...``).

    Thread-safe; the same methods as the SQLite store (and :meth:`transaction` to group
    writes into one commit). The schema is created or migrated when the store opens.

    ``exclusive`` (an orchestrator's store): the writer's connection holds an advisory lock
    on the schema for as long as it lives, so a second orchestrator on the same store is
    refused at start (``StoreError`` naming the holder), and one that lost its connection
    writes again only if it gets the lock back: if another took the store over meanwhile,
    its writes are refused (:attr:`write_error` says so; its runs are the other's now).
    Tools (``dagengine store``) open the store without it, beside a running orchestrator.

    ``standby`` (default: ``DAGENGINE_STORE_STANDBY=1``), with ``exclusive``: where another
    orchestrator holds the store, wait until it is gone (its session ends: it stopped, died,
    or the server dropped its cut-off connection) instead of refusing, then take the store
    over; the orchestrator then resumes the runs the other left, from their stored outputs.

    ``replica`` (an id unique among the replicas, e.g. host and process): the store of one of
    several active orchestrators on the database (see
    :mod:`~dagengine.orchestrator.store.postgres_replicas`); they hold the store's lock
    shared, so no single (``exclusive``) orchestrator runs beside them. ``lease_ttl``: seconds
    its leases on runs last without renewal.
    """

    _MARK = "%s"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        exclusive: bool = False,
        standby: bool | None = None,
        replica: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        if not is_postgres_url(url):
            raise StoreError(f"not a PostgreSQL URL: {url!r} (postgresql://user@host/db)")
        if replica is not None and (not replica or exclusive):
            raise StoreError("a replica's store needs a non-empty id and is never exclusive")
        if not lease_ttl > 0:
            raise StoreError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}")
        self.replica_id = replica
        self.lease_ttl = float(lease_ttl)
        self._psycopg, pool_module = _require_psycopg()
        self.url = url
        self.exclusive = exclusive
        self.standby = exclusive and (_standby_from_env() if standby is None else standby)
        #: The URL without its password: how the store names itself (logs, errors).
        self.path = redact(url)
        given = self._psycopg.conninfo.conninfo_to_dict(url)
        self._options: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": int(CONNECT_TIMEOUT),
            "application_name": f"dagengine pid {os.getpid()} on {socket.gethostname()}",
            **{k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given},
        }
        settings = dict(SERVER_DEFAULTS)
        if replica is not None:
            settings.update(replica_server_settings(lease_ttl))
        # (the writer's connection and the pool's)
        self._options["options"] = server_options(given.get("options"), settings)
        self._init_write_behind()
        self._tx_thread: int | None = None
        self._db: Any = None
        self._shut = False  # closed by close(): no new connection
        self._committed_in_pipeline = False  # the transaction's COMMIT was pipelined
        try:
            self._db = self._connect()
            with self.transaction():
                migrate(self._db, self.path)
            self._next_seq = int(self._db.execute(NEXT_EVENT_SEQ).fetchone()[0])
            #: A replica's own number of its next event (its id is new with each process).
            self._next_token = 1
        except self._psycopg.Error as exc:
            if self._db is not None:
                self._db.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except BaseException:
            if self._db is not None:
                self._db.close()
            raise
        self._pool = pool_module.ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=self._options,
            timeout=CONNECT_TIMEOUT,
            name="dagengine-store",
            open=True,
        )

    # -- plumbing --

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query: on the writer's connection inside this thread's transaction (it
        sees its own writes), else on a connection of the pool (tried again once on a new
        one if the pooled connection turns out to be dead)."""
        values = tuple(params)
        if self._tx_thread == threading.get_ident():
            return list(self._db.execute(sql, values).fetchall())
        for tries in (1, 2):
            try:
                with self._pool.connection() as conn:
                    return list(conn.execute(sql, values).fetchall())
            except self._psycopg.OperationalError:
                if tries == 2:
                    raise
                # The server went away (restarted?): its other idle connections are dead
                # too. Drop them before the second try.
                self._pool.check()
        raise AssertionError("unreachable")

    @property
    def schema_version(self) -> int:
        """The schema version of the database (``dagengine_schema.version``)."""
        return int(self._query("SELECT version FROM dagengine_schema WHERE id = 1")[0][0])

    def close(self) -> None:
        """Commit what is pending, run the callbacks still due, close the connections."""
        try:
            super().close()  # (its lock released before its connection closes: _close_db)
        finally:
            # Also when the last commit failed (the database gone): no connection left open.
            self._shut = True
            self._close_db()
            self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresStore {self.path}>"

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
            self._write(
                """INSERT INTO workflow_versions
                       (workflow_id, version, spec, metadata, dependencies, registered_at)
                   VALUES (%s, %s, %s, %s, %s, %s)
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
        """Insert a new run; ``StoreError`` if its id is taken (or its parent unknown)."""
        _check_status(record.status)
        self.flush()  # a run created "later" with the same id goes in first
        try:
            with self.transaction():
                self._write(INSERT_RUN, _run_values(record))
        except _RowError as exc:
            raise StoreError(f"cannot create run {record.run_id!r}: {exc}") from exc

    def create_run_later(self, record: RunRecord) -> None:
        """Like :meth:`create_run`, committed with the next group (before anything queued
        after it). An id the store already has is left as it was: check for it first."""
        _check_status(record.status)
        self._later("create", tuple(_run_values(record)))

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run (any :class:`RunRecord` field but ``run_id``), unfenced: for
        bookkeeping. ``RunNotFound`` if there is no such run."""
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
            cursor = self._write(
                f"UPDATE runs SET {', '.join(f'{n} = %s' for n in names)} WHERE run_id = %s",
                [*values, run_id],
            )
            if cursor.rowcount == 0:
                raise RunNotFound(f"no run {run_id!r}", run_id=run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if there is none with that id."""
        self.flush()
        rows = self._query(f"{RUN_SELECT} WHERE run_id = %s", (run_id,))
        return run_from_row(rows[0]) if rows else None

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
        """Runs matching every filter given, newest first (by creation time, then by
        insertion). ``since``/``until`` bound the creation time (``since <= created_at <
        until``); ``before`` (a run id) pages by keyset: the runs listed after that one
        (``ValueError`` if there is no such run)."""
        self.flush()
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("created_at >= %s")
            params.append(since)
        if until is not None:
            where.append("created_at < %s")
            params.append(until)
        if before is not None:
            if not self._query("SELECT 1 FROM runs WHERE run_id = %s", (before,)):
                raise ValueError(f"no run {before!r} to page on from")
            where.append("(created_at, ord) < (SELECT created_at, ord FROM runs WHERE run_id = %s)")
            params.append(before)
        if workflow_id is not None:
            where.append("workflow_id = %s")
            params.append(workflow_id)
        if status is not None:
            _check_status(status)
            where.append("status = %s")
            params.append(status)
        if parent_run_id is not None:
            where.append("parent_run_id = %s")
            params.append(parent_run_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"{RUN_SELECT}{clause} ORDER BY created_at DESC, ord DESC LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return [run_from_row(row) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs that are queued or running, oldest first."""
        self.flush()
        rows = self._query(
            f"{RUN_SELECT} WHERE status IN ('queued', 'running') ORDER BY created_at, ord"
        )
        return [run_from_row(row) for row in rows]

    def claim_attempt(self, run_id: str, engine_id: str) -> int:
        """Start a new attempt of an unfinished run on ``engine_id``; returns its number.
        ``RunNotFound`` for an unknown run, ``StoreError`` for a finished one."""
        self.flush()
        with self.transaction():
            row = self._write(
                """UPDATE runs SET attempt = attempt + 1, status = 'running', engine_id = %s,
                       started_at = COALESCE(started_at, %s)
                   WHERE run_id = %s AND status IN ('queued', 'running')
                   RETURNING attempt""",
                (engine_id, time.time(), run_id),
            ).fetchone()
            if row is None:
                self._raise_not_unfinished(run_id, "start a new attempt of")
            return int(row[0])

    def claim_attempt_later(self, run_id: str, engine_id: str, attempt: int) -> None:
        """Like :meth:`claim_attempt` with the attempt number decided by the caller,
        committed with the next group (fenced: see the protocol)."""
        self._later("claim", (run_id, attempt, engine_id, time.time(), run_id, attempt))

    def _raise_not_unfinished(self, run_id: str, action: str) -> None:
        found = self._query("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        if not found:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        raise StoreError(f"cannot {action} run {run_id!r}: it is already {found[0][0]}")

    def release_run(self, run_id: str, attempt: int) -> bool:
        """Put a running run back in the queue if ``attempt`` is still its current attempt;
        returns whether it was released."""
        self.flush()
        with self.transaction():
            cursor = self._write(
                """UPDATE runs SET status = 'queued', engine_id = NULL
                   WHERE run_id = %s AND attempt = %s AND status = 'running'""",
                (run_id, attempt),
            )
            return bool(cursor.rowcount == 1)

    def finish_run(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the end of a run, fenced (see the protocol); returns whether it was."""
        self.flush()
        row = _finish_values(run_id, attempt, status, result, error)
        with self.transaction():
            return bool(self._write(*finish_sql(*row)).rowcount == 1)

    def finish_run_later(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | str | None,
        error: Mapping[str, Any] | None,
        done: Callable[[bool], None],
    ) -> None:
        """Like :meth:`finish_run`, committed at once with what was queued before it;
        ``done(recorded)`` is called after the commit, on the store's writer thread."""
        row = _finish_values(run_id, attempt, status, result, error)
        self._later("finish", (*row, done))

    # -- node outputs --

    def save_node_output(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> bool:
        """Record a completed node's output if ``attempt`` is the run's current attempt and
        the run is running; returns whether it was stored."""
        with self._lock:
            self._flush_locked()
            with self.transaction():
                cursor = self._write(
                    INSERT_OUTPUT, (run_id, node_id, attempt, _dumps(dict(output)))
                )
                return bool(cursor.rowcount == 1)

    def save_node_output_later(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> None:
        """Like :meth:`save_node_output`, committed with the next group (fenced then)."""
        self._later("output", (run_id, node_id, attempt, _dumps(dict(output))))

    def save_node_output_json_later(
        self, run_id: str, node_id: str, attempt: int, output_json: str
    ) -> None:
        """:meth:`save_node_output_later` for an output that is already JSON text."""
        self._later("output", (run_id, node_id, attempt, output_json))

    def node_outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The stored output of each completed node of the run, in completion order."""
        self.flush()
        rows = self._query(
            "SELECT node_id, output FROM node_outputs WHERE run_id = %s ORDER BY ord", (run_id,)
        )
        return {node_id: _loads(output) for node_id, output in rows}

    # -- events --

    def _take_numbers_locked(self, count: int) -> tuple[int, int]:
        """Numbers for ``count`` events about to be written (under ``_pending_cv``): the
        first sequence number to hand back, and the first number their rows carry. One
        orchestrator's are the same, its sequence numbers. A replica's events are numbered
        when committed (0 is handed back), and their rows carry the replica's own numbers,
        by which a group written again skips them (see INSERT_EVENTS_NUMBERED)."""
        if self.replica_id is None:
            first = self._next_seq
            self._next_seq += count
            return first, first
        first = self._next_token
        self._next_token += count
        return 0, first

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
        """Store an event now (``time`` ``None``: now); returns its sequence number."""
        row = _event_row(time, type, severity, workflow_id, run_id, node_id, engine_id, data)
        with self._lock:
            self._flush_locked()
            with self._pending_cv:
                seq, row[0] = self._take_numbers_locked(1)
            with self.transaction():
                cursor = self._db.cursor()
                self._write_events(cursor, [tuple(row)])
                if self.replica_id is not None:  # numbered at the insert
                    seq = int(cursor.fetchone()[0])
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
        """Like :meth:`append_event`, committed with a later group; the sequence number is
        assigned (and returned) now."""
        row = _event_row(time, type, severity, workflow_id, run_id, node_id, engine_id, data)
        with self._pending_cv:
            seq, row[0] = self._take_numbers_locked(1)
            backlog = self._enqueue_events_locked([tuple(row)])
        if backlog >= _writer.MAX_PENDING:
            self.flush()
        return seq

    def append_events_later(
        self,
        events: Iterable[
            tuple[float, str, str, str | None, str | None, str | None, str | None, Any]
        ],
    ) -> int:
        """:meth:`append_event_later` for several events in one step; returns the first
        sequence number (they are consecutive)."""
        encoded = [
            (when, kind, _severity_rank(level), wf, run, node, engine, _dumps(data))
            for when, kind, level, wf, run, node, engine, data in events
        ]
        with self._pending_cv:
            first, number = self._take_numbers_locked(len(encoded))
            if not encoded:
                return first
            backlog = self._enqueue_events_locked(
                [(number + offset, *row) for offset, row in enumerate(encoded)]
            )
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
        """Events with ``seq > after`` that match every filter given, oldest first."""
        self.flush()
        where = ["e.seq > %s"]
        params: list[Any] = [after]
        if workflow_id is not None:
            where.append("e.workflow_id = %s")
            params.append(workflow_id)
        if run_id is not None:
            # Keyed by the run's number; by its id only where the run has no row.
            where.append("(e.run_key = (SELECT ord FROM runs WHERE run_id = %s) OR e.run_id = %s)")
            params += [run_id, run_id]
        wanted: set[str] | None = None
        stored: list[str] = []
        if types is not None:
            wanted = set(types)
            if not wanted:
                return []
            stored = stored_types(wanted)
            where.append("e.type = ANY(%s)")
            params.append(stored)
        if min_severity is not None:
            where.append("e.severity >= %s")
            params.append(_severity_rank(min_severity))
        select = (
            "SELECT e.seq, e.time, e.type, e.severity, e.workflow_id, "
            "COALESCE(r.run_id, e.run_id), e.node_id, e.engine_id, e.data "
            "FROM event_rows e LEFT JOIN runs r ON r.ord = e.run_key WHERE "
        )
        rows = self._query(
            f"{select}{' AND '.join(where)} ORDER BY e.seq LIMIT %s", [*params, limit]
        )
        # Folded rows (see compact.fold_events) read back as their two events; a full
        # page takes the starts folded into rows just past its end.
        bound = page_bound(rows, limit)
        folded = [t for t in FOLDED_TYPES if wanted is None or t in stored]
        if bound is not None and folded:
            more = [*where[1:], "e.seq > %s", "e.seq <= %s", "e.type = ANY(%s)"]
            rows += self._query(
                f"{select}{' AND '.join(more)} ORDER BY e.seq",
                [*params[1:], bound, bound + FOLD_SPAN, folded],
            )
        return expand_page(rows, after, bound, wanted, limit)

    def last_event_seq(self) -> int:
        """The sequence number of the newest event, queued ones included (0 if none); a
        replica's store: of the newest committed one (its queued ones have none yet)."""
        if self.replica_id is not None:
            return self.committed_event_seq()
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
        """Delete one batch (see the protocol): plain deletes in one transaction of a
        pooled connection, beside the writer. ``dry_run``: count, delete nothing.

        ``report.seconds`` is 0: the batch holds nothing the store's writes wait for (it
        deletes finished runs, which no write touches, on a connection of its own, under row
        locks), and the background pruner sizes its batches and pauses by that wait. (On
        SQLite a batch holds the one connection, and every write waits for it.)"""
        if limit < 1:
            raise ValueError(f"prune limit must be >= 1, got {limit!r}")
        when = time.time() if now is None else now
        with self._pool.connection() as conn:
            if dry_run:
                return _retention.count_prunable(conn, policy, when)
            with conn.transaction():
                # One batch at a time across processes (replicas' pruners, a `dagengine store
                # prune` beside them): the next picks its runs after this one's are gone, so
                # none is exported twice.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
                return _retention.prune_batch(conn, policy, when, limit)

    def reclaim_space(self, max_pages: int = 2000) -> int:
        """0: PostgreSQL's autovacuum makes space freed by prunes reusable by itself."""
        return 0

    def stats(self) -> StoreStats:
        """Rows and bytes per table (from the catalog), runs per workflow and status, the
        database's size."""
        self.flush()
        with self._pool.connection() as conn:
            return _retention.store_stats(conn)

    # -- trigger state --

    def get_trigger_state(self, trigger_id: str) -> dict[str, Any] | None:
        """The state last saved for a trigger, or ``None``."""
        rows = self._query("SELECT state FROM trigger_state WHERE trigger_id = %s", (trigger_id,))
        return _loads(rows[0][0]) if rows else None

    def set_trigger_state(self, trigger_id: str, state: Mapping[str, Any]) -> None:
        """Save (replace) a trigger's state."""
        with self.transaction():
            self._write(
                """INSERT INTO trigger_state (trigger_id, state, updated_at) VALUES (%s, %s, %s)
                   ON CONFLICT (trigger_id) DO UPDATE SET
                       state = excluded.state, updated_at = excluded.updated_at""",
                (trigger_id, _dumps(dict(state)), time.time()),
            )


def _event_row(
    when: float | None,
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
    stamp = time.time() if when is None else when
    return [0, stamp, type, rank, workflow_id, run_id, node_id, engine_id, _dumps(dict(data or {}))]


#: The number of the newest migration of a PostgreSQL store.
SCHEMA_VERSION = len(PG_MIGRATIONS)

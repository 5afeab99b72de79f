"""The PostgreSQL store's writer: its connection (the store's lock taken with it for an
``exclusive`` store, connecting again after a lost connection), its transactions, and the group
commit of the ``*_later`` writes, each group one pipelined transaction.

:class:`PostgresWriter` is the base of :class:`~dagengine.orchestrator.store.postgres.
PostgresStore` (as :class:`~dagengine.orchestrator.store.writer.WriteBehind`, whose queueing it
reuses, is the SQLite store's): the store sets ``url``, ``path``, ``exclusive``, ``_options``
and ``_psycopg`` before it connects.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dagengine.exceptions import StoreError
from dagengine.orchestrator.store.compact import fold_events
from dagengine.orchestrator.store.postgres_schema import (
    CLAIM,
    CLAIM_RUNS,
    CREATE_RUNS,
    EVENTS_CHANNEL,
    EVENTS_LOCK,
    EVENTS_WRITTEN,
    FINISH_RUNS,
    FOLD_RUNS,
    INSERT_EVENTS,
    INSERT_EVENTS_NUMBERED,
    INSERT_OUTPUT,
    INSERT_OUTPUTS,
    INSERT_RUN_LATER,
    RUN_TIMES,
    finish_sql,
)
from dagengine.orchestrator.store.writer import WriteBehind

__all__ = [
    "CONNECTION_DEFAULTS",
    "CONNECT_TIMEOUT",
    "OWNER_LOCK",
    "SERVER_DEFAULTS",
    "PostgresWriter",
    "note_closed_owner",
    "server_options",
]

#: The advisory lock an orchestrator's store holds on its schema (``exclusive``): the first
#: key; the second is the schema's name, hashed.
OWNER_LOCK = 0x64616765
#: Seconds to wait for a connection when the store opens, and for one of the pool.
CONNECT_TIMEOUT = 10.0
#: libpq options of the store's connections unless the URL sets them: TCP keepalives, so a
#: connection to a server that went silent (a cut link) fails within ~20 s instead of hours.
CONNECTION_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
}
#: The server's settings of the store's sessions unless the URL's ``options`` set them (see
#: :func:`server_options`): the same keepalives on the server's side, whose default is the
#: operating system's (two hours), and how long data it sends may go unacknowledged.
SERVER_DEFAULTS: dict[str, str] = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "3",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "20000",
}


def server_options(given: str | None, settings: dict[str, str]) -> str:
    """The ``options`` connection parameter of the store's connections: ``given`` (the
    URL's) and ``-c NAME=VALUE`` for each of ``settings`` it does not name.

    They end the server's side of a session whose client was cut off (a pulled cable, a
    partition: no FIN reaches the server) within about 20 s, and with it what the session
    holds: an orchestrator's store lock (which a standby waits for), its transaction's row
    locks. Idle, the session is dropped by the server's keepalives; sending (a result the
    client no longer reads), by ``tcp_user_timeout`` (TCP would retransmit for ~15 minutes,
    and the backend, blocked writing, is not idle: no idle timeout applies)."""
    ours = [f"-c {name}={value}" for name, value in settings.items() if name not in (given or "")]
    return " ".join([given, *ours] if given else ours)


#: Seconds between two tries of a standby store to take the lock.
STANDBY_POLL = 0.5
#: Seconds a store waits for the lock held by a session this process closed without
#: releasing it (see :meth:`PostgresWriter._close_db`): the server ends a closed session's
#: backend, and only then frees its locks, a moment after the close.
CLOSE_GRACE = 5.0
#: Backend pids of the lock-holding sessions this process's stores closed unreleased.
_closed_owners: set[int] = set()

_log = logging.getLogger("dagengine.orchestrator.store")


def _try_lock(conn: Any, key: int) -> bool:
    """Take the store's lock on ``conn`` if it is free (held until the session ends)."""
    return bool(
        conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (OWNER_LOCK, key)).fetchone()[0]
    )


def _rollback(conn: Any, psycopg: Any) -> None:
    """Roll back the writer's transaction, keeping the session's prepared statements.

    (psycopg deallocates every prepared statement of a session that runs ROLLBACK, in case
    the transaction dropped or altered what they name: each group that failed on a row's data
    cost the writer all of them, each parsed again and prepared again only after
    ``prepare_threshold`` more uses. The writer's transactions change no schema (migrations
    run when the store opens, before any statement is prepared), so the statements stay
    valid: the ROLLBACK goes to libpq directly, past psycopg's cache.)"""
    with conn.lock:
        result = conn.pgconn.exec_(b"ROLLBACK")
    if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
        message = result.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(f"ROLLBACK failed: {message or 'no answer'}")


class _RowError(ValueError):
    """A write that failed on its data (a value PostgreSQL refuses, a broken constraint):
    raised as a ValueError so the write-behind isolates the row instead of retrying the
    group forever (see :func:`~dagengine.orchestrator.store.writer._is_data_error`)."""


def note_closed_owner(conn: Any) -> None:
    """Remember that ``conn``, a session holding a store's lock that could not release it,
    is being closed by this process: a store opened right after waits for its backend to
    end (:data:`CLOSE_GRACE`) instead of refusing the store as in use."""
    with contextlib.suppress(Exception):
        _closed_owners.add(int(conn.info.backend_pid))


def _wait_for_closed_owner(conn: Any, key: int, holder_pid: int | None) -> bool:
    """Take the lock once ``holder_pid``, a session this process closed, has ended (no
    holder: the lock went between the try and the look, so try again)."""
    if holder_pid is None:
        return _try_lock(conn, key)
    if holder_pid not in _closed_owners:
        return False
    deadline = time.monotonic() + CLOSE_GRACE
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if _try_lock(conn, key):
            _closed_owners.discard(holder_pid)
            return True
    return False


def _try_shared_lock(conn: Any, key: int) -> bool:
    """Take the store's lock shared (replicas: many at once, but never beside a single
    orchestrator, which takes it alone)."""
    return bool(
        conn.execute("SELECT pg_try_advisory_lock_shared(%s, %s)", (OWNER_LOCK, key)).fetchone()[0]
    )


class PostgresWriter(WriteBehind):
    """The writer's connection, transactions and group commit of a PostgreSQL store (see
    the module's docstring)."""

    url: str
    exclusive: bool
    standby: bool
    replica_id: str | None
    #: Makes a connection act for the replica (:class:`~.postgres_replicas.ReplicaStore`'s).
    _replica_session: Callable[[Any], None]
    _options: dict[str, Any]
    _psycopg: Any
    _db: Any
    _tx_thread: int | None
    _shut: bool
    _committed_in_pipeline: bool

    def _connect(self, *, again: bool = False) -> Any:
        """The writer's connection; with ``exclusive``, holding the store's lock
        (``StoreError`` if another process holds it: ``again``, after a lost connection,
        says this one was fenced off)."""
        conn = self._psycopg.connect(self.url, **self._options)
        if self.replica_id is not None:
            return self._connect_replica(conn)
        if not self.exclusive:
            return conn
        try:
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            key = zlib.crc32(str(schema).encode()) & 0x7FFFFFFF
            if _try_lock(conn, key):
                return conn
            holder = conn.execute(
                """SELECT a.application_name, host(a.client_addr), a.backend_start, a.pid
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s
                       AND l.objsubid = 2 AND l.granted""",
                (OWNER_LOCK, key),
            ).fetchone()
            if _wait_for_closed_owner(conn, key, None if holder is None else holder[3]):
                return conn
            who = (
                "another process" if holder is None else f"{holder[0] or 'a process'} ({holder[1]})"
            )
            if self.standby and not again:
                # A standby: wait for the holder to go (its session ends when it dies), then
                # take the store over; the orchestrator resumes its runs from the store.
                _log.warning(
                    "store %s is in use by %s: standing by until it is free", self.path, who
                )
                while not _try_lock(conn, key):
                    time.sleep(STANDBY_POLL)
                _log.warning("store %s is free: taking it over", self.path)
                return conn
        except BaseException:
            conn.close()
            raise
        conn.close()
        if again:
            raise StoreError(
                f"store {self.path} was taken over by {who} while this orchestrator's "
                "connection was lost: its writes are refused (fenced off); restart it"
            )
        raise StoreError(
            f"store {self.path} (schema {schema}) is in use by {who}: one orchestrator per "
            "store, unless they all are replicas (dagengine serve --replica)"
        )

    def _connect_replica(self, conn: Any) -> Any:
        """``conn`` as a replica's writer connection: the store's lock held shared (refused
        while a single orchestrator holds it), the session acting for this replica."""
        try:
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            key = zlib.crc32(str(schema).encode()) & 0x7FFFFFFF
            if not _try_shared_lock(conn, key):
                raise StoreError(
                    f"store {self.path} (schema {schema}) is in use by a single orchestrator "
                    "(not a replica): stop it before starting replicas on this store"
                )
            self._replica_session(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_db(self) -> None:
        """Close the writer's connection, the store's lock released in its session first
        (held alone or, a replica's, shared): the server frees a closed session's locks
        only when its backend ends, a moment after the client closed it, and a store opened
        right after (an orchestrator restarted on the store) found the lock still held ("is
        in use by"). Released here, the lock is free when this returns. Where the release
        fails (a broken connection), the session is noted (:func:`note_closed_owner`)."""
        db = self._db
        if db is None or db.closed:
            return
        if self.exclusive or self.replica_id is not None:
            try:
                if db.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                    db.rollback()  # (an aborted transaction would refuse the statement)
                db.execute("SELECT pg_advisory_unlock_all()")
            except Exception:
                note_closed_owner(db)
        db.close()

    def _write_events(self, cursor: Any, events: list[tuple[Any, ...]]) -> None:
        """Insert a group's events: numbered as queued (one orchestrator), or, a replica's,
        numbered at the commit in commit order, and the other replicas notified."""
        if self.replica_id is None:
            # Numbered when queued, as on SQLite: stored compact (node starts folded into
            # their ends, common payloads by number; see compact.fold_events). A replica's
            # are numbered at the commit, one number a row: stored as they are.
            cursor.execute(INSERT_EVENTS, _event_columns(fold_events(events)))
            cursor.execute(EVENTS_WRITTEN, (max(event[0] for event in events),))
            return
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
        self._db.execute(f"NOTIFY {EVENTS_CHANNEL}")  # (sent when the transaction commits)
        cursor.execute(INSERT_EVENTS_NUMBERED, _event_columns(events))

    @contextmanager
    def transaction(self, *, begin: bool = True) -> Iterator[None]:
        """Group writes into one atomic commit on the writer's connection; nests (only the
        outermost commits). Other threads' writes wait until it ends. (``begin=False``: the
        caller sends BEGIN and COMMIT itself, in a pipeline; this connects, rolls back on an
        error and keeps the nesting.)"""
        with self._lock:
            if self._depth == 0:
                if self._db is None or self._db.closed or self._db.broken:
                    self._reconnect_locked()
                if begin:
                    try:
                        self._db.execute("BEGIN")
                    except self._psycopg.OperationalError:
                        if not self._db.broken:
                            raise
                        # The server had dropped it while it sat idle (see _commit_group):
                        # nothing of this transaction was sent yet; a new one, then.
                        self._reconnect_locked()
                        self._db.execute("BEGIN")
                self._committed_in_pipeline = False
                self._tx_thread = threading.get_ident()
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._tx_thread = None
                    try:
                        if not self._db.broken:
                            _rollback(self._db, self._psycopg)
                    except self._psycopg.Error:
                        self._db.close()  # in an unknown state: the next one connects again
                raise
            self._depth -= 1
            if self._depth == 0:
                self._tx_thread = None
                if not self._committed_in_pipeline:
                    self._db.execute("COMMIT")

    def _reconnect_locked(self) -> None:
        """A new writer's connection in place of a lost one (a restarted server, a session
        the server ended), under the writer's lock; :class:`StoreError` once closed."""
        if self._shut:
            raise StoreError(f"store {self.path} is closed")
        again = self._db is not None
        if self._db is not None:
            self._db.close()
        self._db = None
        self._db = self._connect(again=again)

    def _committed(self) -> None:
        """No log to checkpoint: PostgreSQL does its own."""

    def _write(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Run a statement on the writer's connection (in the caller's transaction)."""
        try:
            return self._db.execute(sql, tuple(params))
        except (self._psycopg.DataError, self._psycopg.IntegrityError) as exc:
            raise _RowError(str(exc)) from exc

    # -- the group commit --

    def _commit_group(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """Write a group in one transaction (see the SQLite store's: the same order), its
        statements pipelined: the runs' creations, then claims, outputs and the ends of
        runs with writes queued after their end in queue order, then the other ends in one
        statement, then the events in one statement."""
        tries = 0
        reconnected = False
        while True:
            try:
                return self._write_group(pending, events)
            except (self._psycopg.DataError, self._psycopg.IntegrityError) as exc:
                raise _RowError(str(exc)) from exc
            except (
                self._psycopg.errors.DeadlockDetected,
                self._psycopg.errors.SerializationFailure,
            ) as exc:
                # A deadlock (or serialization failure) the server ended by rolling this
                # transaction back: done again, it is expected to go through. Raised from a
                # reader's flush, it had failed the run that reader was preparing.
                tries += 1
                if self._depth or tries == _ROLLBACK_TRIES:
                    raise
                _log.info("group commit rolled back by the server (%s); trying again", exc)
            except self._psycopg.OperationalError as exc:
                # The server had dropped the connection while it sat idle (a client cut off
                # for longer than the sessions' tcp_user_timeout or keepalives, a restarted
                # server): the first statement finds out. Written again once on a new one
                # (transaction() connects), as the writer thread would later; raised from a
                # caller's flush, it had failed the run that caller was starting.
                lost = self._db is None or self._db.closed or self._db.broken
                if self._depth or reconnected or not lost:
                    raise
                reconnected = True
                _log.info("store connection lost (%s); writing the group again", exc)

    @contextmanager
    def _pipelined_transaction(self) -> Iterator[Any]:
        """A transaction whose statements (BEGIN and COMMIT too) go to the server in one
        pipeline, one round trip; yields a cursor. Inside a :meth:`transaction` of the
        caller's: just the pipeline (the outer one commits)."""
        with self._lock:
            if self._depth:
                with self._db.pipeline():
                    yield self._db.cursor()
                return
            with self.transaction(begin=False), self._db.pipeline():
                cursor = self._db.cursor()
                cursor.execute("BEGIN")
                yield cursor
                cursor.execute("COMMIT")
                self._committed_in_pipeline = True

    def _write_group(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """The common group (each run's writes in the order claim, outputs, end: at most
        one of each but the outputs) as one statement per kind of write
        (:meth:`_write_sets`); any other as a statement per write, in queue order
        (:meth:`_write_rows`). Both in one pipelined transaction."""
        seen: dict[str, int] = {}  # run id -> the last kind written (1 claim, 2 output, 3 end)
        for kind, row in pending:
            if kind == "create":
                continue
            step = _STEPS[kind]
            before = seen.get(row[0], 0)
            if before > step or before == step != 2:
                return self._write_rows(pending, events)
            seen[row[0]] = step
        return self._write_sets(pending, events)

    def _write_sets(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """A group whose runs' writes can go kind by kind: the creations, then the claims,
        then the outputs, then the ends, then the events, one statement each (what the
        statements check sees what a write queued before it did). A run whose whole life is
        in the group is inserted as it ended, with its outputs, in one more statement
        (:func:`_foldable`, ``FOLD_RUNS``)."""
        creates: list[tuple[Any, ...]] = []
        claims: list[tuple[Any, ...]] = []
        outputs: list[tuple[Any, ...]] = []
        ends: list[tuple[Any, ...]] = []
        finished: list[list[Any]] = []
        for kind, row in pending:
            if kind == "create":
                creates.append(
                    tuple(
                        float(value) if i in RUN_TIMES and value is not None else value
                        for i, value in enumerate(row)
                    )
                )
            elif kind == "claim":
                claims.append(row[:4])
            elif kind == "output":
                outputs.append(row)
            else:
                ends.append(row[:-1])
                finished.append([row[-1], False])
        folded = _foldable(creates, claims, outputs, ends)
        fold: list[list[Any]] = []
        if folded:
            fold = _fold_values(folded, creates, outputs, ends)
            creates = [row for row in creates if row[0] not in folded]
        ended: Any = None
        whole: Any = None
        with self._pipelined_transaction() as cursor:
            if creates:
                cursor.execute(CREATE_RUNS, _columns(creates))
            if claims:
                cursor.execute(CLAIM_RUNS, _columns(claims))
            # A folded run's outputs and end too, fenced as any: they find no row (it is
            # inserted after them) unless a commit whose answer was lost created it
            # already; then they apply to it as they would have, and its insert is skipped.
            if outputs:
                cursor.execute(INSERT_OUTPUTS, _columns(outputs))
            if ends:
                ended = self._db.cursor()
                ended.execute(FINISH_RUNS, _columns(ends))
            if fold:
                whole = self._db.cursor()
                whole.execute(FOLD_RUNS, fold)
            if events:
                self._write_events(cursor, events)
        done: set[str] = set()
        for results in (ended, whole):
            if results is not None:
                done.update(r[0] for r in results.fetchall())
        for entry, row in zip(finished, ends, strict=True):
            entry[1] = row[0] in done
        return [(callback, recorded) for callback, recorded in finished]

    def _write_rows(
        self, pending: list[tuple[str, tuple[Any, ...]]], events: list[tuple[Any, ...]]
    ) -> list[tuple[Callable[[bool], None], bool]]:
        """Any group: the creations, then a statement per claim, output and end of a run
        with writes queued after its end, in queue order, then the other ends and the
        events in one statement each."""
        creates: list[tuple[Any, ...]] = []
        last: dict[str, int] = {}  # run id -> index of its last write (but its creation)
        for index, (kind, row) in enumerate(pending):
            if kind == "create":
                creates.append(row)
            else:
                last[row[0]] = index
        finished: list[list[Any]] = []  # [callback, recorded], in queue order
        deferred: list[tuple[list[Any], tuple[Any, ...]]] = []
        counted: list[tuple[list[Any], Any]] = []  # a run end and the cursor that ran it
        ended: Any = None
        # One pipeline, the transaction's BEGIN and COMMIT included: the statements go out
        # without waiting for each other's answers (a round trip each cost the writer more
        # than the statement), in order, and the first error fails the transaction.
        with self._pipelined_transaction() as cursor:
            if creates:
                cursor.executemany(INSERT_RUN_LATER, creates)
            for index, (kind, row) in enumerate(pending):
                if kind == "create":
                    continue
                if kind == "output":
                    cursor.execute(INSERT_OUTPUT, row)
                elif kind == "claim":
                    cursor.execute(CLAIM, row[1:])
                else:
                    entry = [row[-1], False]
                    finished.append(entry)
                    if last[row[0]] == index:
                        deferred.append((entry, row))
                    else:  # something of its run is queued after it: in its place
                        own = self._db.cursor()
                        own.execute(*finish_sql(*row[:-1]))
                        counted.append((entry, own))
            if deferred:
                ended = self._db.cursor()
                ended.execute(FINISH_RUNS, _columns([row[:-1] for _, row in deferred]))
            if events:
                self._write_events(cursor, events)
        for entry, own in counted:
            entry[1] = own.rowcount == 1
        if ended is not None:
            done = {r[0] for r in ended.fetchall()}
            for entry, row in deferred:
                entry[1] = row[0] in done
        return [(callback, recorded) for callback, recorded in finished]


#: Times a group is written when the server rolls it back (a deadlock): then it fails.
_ROLLBACK_TRIES = 3

#: The order a run's writes take in a group that :meth:`PostgresStore._write_sets` writes.
_STEPS = {"claim": 1, "output": 2, "finish": 3}


def _event_columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Event rows as a list per column, the times floats (a binary list holds one type; a
    caller may give an event's time as an int)."""
    columns = _columns(rows)
    columns[1] = [float(value) for value in columns[1]]
    return columns


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of one width as a list per column (the parameters of an ``unnest``)."""
    return [list(column) for column in zip(*rows, strict=True)]


#: Columns of a run's creation (``_RUN_COLUMNS`` order) that its end sets, and the index of
#: each in a run end's values (``run_id, status, result, error, finished_at, attempt``).
_STATUS, _ATTEMPT, _PARENT, _FINISHED_AT, _ERROR, _RESULT = 3, 5, 8, 14, 15, 16
_END_VALUES = ((_STATUS, 1), (_RESULT, 2), (_ERROR, 3), (_FINISHED_AT, 4))


def _foldable(
    creates: list[tuple[Any, ...]],
    claims: list[tuple[Any, ...]],
    outputs: list[tuple[Any, ...]],
    ends: list[tuple[Any, ...]],
) -> set[str]:
    """The runs of a group (of :meth:`PostgresWriter._write_sets`) whose whole life is in it
    and can be inserted as they end: created once, running, no claim, outputs and end of the
    attempt they were created with, and no run of the group created as their child (created
    before them). Inserting them as they end gives the same rows as the writes one after the
    other: on the row just inserted every fence passes. (Where the row exists already, from
    a commit whose answer was lost, the fenced writes the group sends too apply to it.)"""
    if not ends or not creates:
        return set()
    born: dict[str, tuple[Any, ...] | None] = {}
    for row in creates:
        born[row[0]] = None if row[0] in born else row  # (created twice: not folded)
    parents = {row[_PARENT] for row in creates}
    claimed = {row[0] for row in claims}
    folded = {
        row[0]
        for row in ends
        if (create := born.get(row[0])) is not None
        and create[_STATUS] == "running"
        and row[5] is not None
        and row[5] == create[_ATTEMPT]
        and row[0] not in claimed
        and row[0] not in parents
    }
    for row in outputs:
        create = born.get(row[0])
        if row[0] in folded and create is not None and row[2] != create[_ATTEMPT]:
            folded.discard(row[0])
    return folded


def _fold_values(
    folded: set[str],
    creates: list[tuple[Any, ...]],
    outputs: list[tuple[Any, ...]],
    ends: list[tuple[Any, ...]],
) -> list[list[Any]]:
    """The parameters of ``FOLD_RUNS`` for the ``folded`` runs: their creations with their
    ends' values, their outputs, and their ends' ids, statuses and times."""
    end_of = {row[0]: row for row in ends if row[0] in folded}
    rows = []
    for create in creates:
        if create[0] in folded:
            row = list(create)
            for column, index in _END_VALUES:
                row[column] = end_of[create[0]][index]
            rows.append(tuple(row))
    mine = [row for row in outputs if row[0] in folded]
    own_ends = [end_of[row[0]] for row in rows]
    return [
        *_columns(rows),
        *(_columns(mine) if mine else [[], [], [], []]),
        [row[0] for row in own_ends],
        [row[1] for row in own_ends],
        [float(row[4]) for row in own_ends],
    ]

"""The PostgreSQL schema (:data:`PG_MIGRATIONS`) and the statements the PostgreSQL store runs.

The tables mirror the SQLite store's (:mod:`~dagengine.orchestrator.store.schema`), with
PostgreSQL's types: JSON values stay ``TEXT`` (stored as they were encoded, an engine's output
JSON as it came), times ``DOUBLE PRECISION`` (Unix seconds), counters ``BIGINT``. Where the
SQLite store orders by ``rowid`` (runs created in the same instant, node outputs in completion
order), these tables have an identity column ``ord``; an upsert keeps a row's ``ord``, as it
keeps SQLite's ``rowid``.

Migrations are versioned in ``dagengine_schema`` (one row): :func:`migrate` applies the missing
ones at start, under an advisory lock (two processes starting at once apply each once), and
refuses a database whose version is newer than :data:`PG_MIGRATIONS` knows.
"""

from __future__ import annotations

from typing import Any, Final

from dagengine.orchestrator.store.compact import expand_result
from dagengine.orchestrator.store.records import RunRecord, _loads
from dagengine.orchestrator.store.schema import _RUN_COLUMNS, _RUN_JSON

__all__ = ["PG_MIGRATIONS"]

#: This session's replica id (``set_config('dagengine.replica', ...)`` on a replica's
#: connections; NULL on any other).
_REPLICA: Final = "NULLIF(current_setting('dagengine.replica', true), '')"
#: Now in the database's clock (Unix seconds): leases never compare two machines' clocks.
_DB_NOW: Final = "extract(epoch FROM clock_timestamp())::float8"
#: A write of this session may touch the run: any session but a replica's (one orchestrator
#: numbers the attempts), a replica's only on the runs it owns (a run taken over by another
#: replica refuses the late writes of the one it was taken from).
MINE: Final = f"({_REPLICA} IS NULL OR runs.owner = {_REPLICA})"

#: Schema migrations of a PostgreSQL store; ``dagengine_schema.version`` is the number
#: applied. Append, never edit.
PG_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE workflow_versions (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            version TEXT NOT NULL,
            spec TEXT,
            metadata TEXT NOT NULL,
            dependencies TEXT NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            UNIQUE (workflow_id, version)
        )""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            ord BIGINT GENERATED ALWAYS AS IDENTITY,
            workflow_id TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            inputs TEXT NOT NULL,
            attempt BIGINT NOT NULL DEFAULT 0,
            engine_id TEXT,
            key TEXT,
            parent_run_id TEXT REFERENCES runs (run_id),
            parent_node_id TEXT,
            depth BIGINT NOT NULL DEFAULT 0,
            resolved_versions TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            error TEXT,
            result TEXT
        )""",
        "CREATE INDEX runs_by_created ON runs (created_at, ord)",
        "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
        "CREATE INDEX runs_by_status ON runs (status, created_at)",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id)",
        """CREATE TABLE node_outputs (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            node_id TEXT NOT NULL,
            ord BIGINT GENERATED ALWAYS AS IDENTITY,
            attempt BIGINT NOT NULL,
            output TEXT NOT NULL,
            PRIMARY KEY (run_id, node_id)
        )""",
        # seq is assigned by the store when an event is queued (see the store's module);
        # events_seq keeps the highest number written, so numbers are never reused after
        # the newest events were deleted (SQLite's AUTOINCREMENT does that there).
        """CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            time DOUBLE PRECISION NOT NULL,
            type TEXT NOT NULL,
            severity SMALLINT NOT NULL,
            workflow_id TEXT,
            run_id TEXT,
            node_id TEXT,
            engine_id TEXT,
            data TEXT NOT NULL
        )""",
        "CREATE SEQUENCE events_seq MINVALUE 0 START 0",
        "CREATE INDEX events_by_run ON events (run_id, seq)",
        "CREATE INDEX events_by_workflow ON events (workflow_id, seq)",
        """CREATE TABLE trigger_state (
            trigger_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    # Replicas (several active orchestrators on one database, see postgres_replicas): the
    # replica that owns a run and until when (its lease, in the database's clock, renewed
    # by the owner). A run created by a replica's connection is its own from the start: the
    # defaults read the session's settings (NULL, no owner, on a single orchestrator's).
    # trigger_fires: one row per cron fire time that started a run, whoever fired it.
    # (The columns first, without defaults: the runs already there keep no owner, so any
    # replica may take them, and the table is not rewritten; then the defaults, for new rows.)
    (
        "ALTER TABLE runs ADD COLUMN owner TEXT, ADD COLUMN lease_until DOUBLE PRECISION",
        f"""ALTER TABLE runs
            ALTER COLUMN owner SET DEFAULT {_REPLICA},
            ALTER COLUMN lease_until SET DEFAULT CASE WHEN {_REPLICA} IS NULL
                THEN NULL ELSE {_DB_NOW} + current_setting('dagengine.lease_ttl')::float8 END""",
        "CREATE INDEX runs_by_lease ON runs (lease_until) WHERE status IN ('queued', 'running')",
        "CREATE INDEX runs_by_owner ON runs (owner) WHERE status IN ('queued', 'running')",
        """CREATE TABLE trigger_fires (
            trigger_id TEXT NOT NULL,
            fire_time DOUBLE PRECISION NOT NULL,
            owner TEXT,
            claimed_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (trigger_id, fire_time)
        )""",
    ),
    # A cancellation asked of a replica that does not own the run: its owner cancels it.
    ("ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false",),
    # The replica that published an event (its logs, traces and metrics count its own).
    (
        "ALTER TABLE events ADD COLUMN origin TEXT",
        f"ALTER TABLE events ALTER COLUMN origin SET DEFAULT {_REPLICA}",
    ),
    # Cached nodes' outputs, as in the SQLite schema (see there).
    (
        """CREATE TABLE cache_entries (
            workflow_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            key TEXT NOT NULL,
            output TEXT NOT NULL,
            run_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            PRIMARY KEY (workflow_id, node_id, key)
        )""",
        "CREATE INDEX cache_entries_by_run ON cache_entries (run_id)",
        "CREATE INDEX cache_entries_by_age ON cache_entries (workflow_id, created_at)",
    ),
    # Events keyed by their run's number (issue 23, as SQLite's migration 4): the run's
    # 32-character id was stored in every event row and again in its index. The rows move to
    # ``event_rows``, whose ``run_key`` is ``runs.ord`` (``run_id`` holds the id only for an
    # event whose run has no row); ``events`` becomes a view with the old columns (and
    # INSTEAD OF triggers), so SQL written against the old table still reads and writes the
    # same events. ``runs.ord`` gets the unique index the view joins on (and that lets a
    # query of the view that reads no run column skip the join).
    (
        "CREATE UNIQUE INDEX runs_by_ord ON runs (ord)",
        f"""CREATE TABLE event_rows (
            seq BIGINT PRIMARY KEY,
            time DOUBLE PRECISION NOT NULL,
            run_key BIGINT,
            severity SMALLINT NOT NULL,
            type TEXT NOT NULL,
            workflow_id TEXT,
            run_id TEXT,
            node_id TEXT,
            engine_id TEXT,
            data TEXT NOT NULL,
            origin TEXT DEFAULT {_REPLICA}
        )""",
        """INSERT INTO event_rows
            (seq, time, run_key, severity, type, workflow_id, run_id, node_id, engine_id,
                data, origin)
            SELECT e.seq, e.time, r.ord, e.severity, e.type, e.workflow_id,
                CASE WHEN r.ord IS NULL THEN e.run_id END, e.node_id, e.engine_id, e.data,
                e.origin
            FROM events e LEFT JOIN runs r ON r.run_id = e.run_id ORDER BY e.seq""",
        "DROP TABLE events",
        "CREATE INDEX event_rows_by_run ON event_rows (run_key, seq) WHERE run_key IS NOT NULL",
        "CREATE INDEX event_rows_by_run_id ON event_rows (run_id, seq) WHERE run_id IS NOT NULL",
        "CREATE INDEX event_rows_by_workflow ON event_rows (workflow_id, seq)",
        """CREATE VIEW events AS SELECT e.seq, e.time, e.type, e.severity, e.workflow_id,
                COALESCE(r.run_id, e.run_id) AS run_id, e.node_id, e.engine_id, e.data,
                e.origin
            FROM event_rows e LEFT JOIN runs r ON r.ord = e.run_key""",
        f"ALTER VIEW events ALTER COLUMN origin SET DEFAULT {_REPLICA}",
        """CREATE FUNCTION events_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                key BIGINT;
            BEGIN
                SELECT ord INTO key FROM runs WHERE run_id = NEW.run_id;
                INSERT INTO event_rows (seq, time, run_key, severity, type, workflow_id,
                        run_id, node_id, engine_id, data, origin)
                    VALUES (NEW.seq, NEW.time, key, NEW.severity, NEW.type, NEW.workflow_id,
                        CASE WHEN key IS NULL THEN NEW.run_id END, NEW.node_id,
                        NEW.engine_id, NEW.data, NEW.origin);
                RETURN NEW;
            END $$""",
        """CREATE FUNCTION events_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM event_rows WHERE seq = OLD.seq;
                RETURN OLD;
            END $$""",
        """CREATE TRIGGER events_insert INSTEAD OF INSERT ON events
            FOR EACH ROW EXECUTE FUNCTION events_insert()""",
        """CREATE TRIGGER events_delete INSTEAD OF DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_delete()""",
    ),
    # A replica's events carry a number of its own (``token``, counted by its store), unique
    # with their ``origin``: a group written again after a commit whose answer was lost (the
    # connection cut after the server committed) skips the events it holds, as a single
    # orchestrator's skips them by their ``seq`` (a replica's are numbered at the commit, so
    # the second commit numbered them anew: duplicates, a run with two ``run.completed``).
    # And ``events_seq`` is marked used if it never was: its first ``nextval`` (a replica's
    # first event on a new database) gave 0, a number no reader ever returns (``seq > 0``).
    (
        "ALTER TABLE event_rows ADD COLUMN token BIGINT",
        """CREATE UNIQUE INDEX event_rows_by_token ON event_rows (origin, token)
            WHERE token IS NOT NULL""",
        "SELECT setval('events_seq', last_value, true) FROM events_seq WHERE NOT is_called",
    ),
)

#: The advisory lock that serialises migrations (any number: the same in every process).
MIGRATION_LOCK: Final = 0x6461_6765_6E67  # "dageng"

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS dagengine_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
)"""

_COLUMNS = ", ".join(_RUN_COLUMNS)
RUN_SELECT: Final = f"SELECT {_COLUMNS} FROM runs"
INSERT_RUN: Final = (
    f"INSERT INTO runs ({_COLUMNS}) VALUES ({', '.join('%s' for _ in _RUN_COLUMNS)})"
)
#: A run created by the group commit: a taken id is skipped (callers check first), so it
#: cannot fail the whole group.
INSERT_RUN_LATER: Final = f"{INSERT_RUN} ON CONFLICT (run_id) DO NOTHING"

# A claim decided by the orchestrator, fenced: never on a finished run, never back to an
# older attempt (values: attempt, engine_id, started_at, run_id, attempt).
CLAIM: Final = (
    """UPDATE runs SET attempt = %s, status = 'running', engine_id = %s,
        started_at = COALESCE(started_at, %s)
    WHERE run_id = %s AND status IN ('queued', 'running') AND attempt < %s AND """
    + MINE
)

# A node output, stored only if its attempt is the run's current one and the run is running
# (one statement: a new claim cannot come between the check and the write). Values:
# run_id, node_id, attempt, output.
INSERT_OUTPUT: Final = f"""INSERT INTO node_outputs (run_id, node_id, attempt, output)
    SELECT v.run_id, v.node_id, v.attempt, v.output
    FROM (VALUES (%s::text, %s::text, %s::bigint, %s::text)) AS v (run_id, node_id, attempt, output)
    WHERE EXISTS (SELECT 1 FROM runs
        WHERE runs.run_id = v.run_id AND runs.attempt = v.attempt AND runs.status = 'running'
            AND {MINE})
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""

# The statements of a group commit's set path (one statement per kind of write, a list per
# column; see PostgresStore._write_sets): runs created in queue order, a taken id skipped;
# one claim per run, fenced as CLAIM; node outputs fenced as INSERT_OUTPUT, the last one
# that passes its fence kept for a node written twice, stored in queue order.
# The lists go in binary (``%b``): psycopg dumps a list in text element by element in Python,
# escaping each, which took about a fifth of the orchestrator's GIL under load; binary is ~3x
# cheaper. A binary list holds one type: the times are floats (an int among them would not
# dump; see RUN_TIMES and the events' times).
_RUN_TYPES = {
    "attempt": "bigint",
    "depth": "bigint",
    "created_at": "float8",
    "started_at": "float8",
    "finished_at": "float8",
}
_CASTS = ", ".join(f"%b::{_RUN_TYPES.get(name, 'text')}[]" for name in _RUN_COLUMNS)
CREATE_RUNS: Final = f"""INSERT INTO runs ({_COLUMNS})
    SELECT {_COLUMNS} FROM unnest({_CASTS}) WITH ORDINALITY AS v ({_COLUMNS}, n)
    ORDER BY n
    ON CONFLICT (run_id) DO NOTHING"""
# Runs whose whole life is in one group (created running, their outputs, their end; no
# claim): inserted as they end, not inserted and then updated (an UPDATE of the status is
# never HOT: a second version of the row and an entry in every index of ``runs``, and the
# partial indexes of unfinished runs touched twice). Their outputs are stored if the run was
# inserted here (the fences of INSERT_OUTPUTS and FINISH_RUNS would pass on the row just
# inserted: it is running, at that attempt, this session's), the last one of a node written
# twice kept. Sent after INSERT_OUTPUTS and FINISH_RUNS of the same rows, which apply where
# the run's row exists already (created by a commit whose answer was lost: the insert is
# skipped here). Returns the runs inserted, and those whose end is stored, to the time.
# Values: the runs' columns (as CREATE_RUNS), the outputs' (as INSERT_OUTPUTS), then the
# runs' ids, statuses and end times.
FOLD_RUNS: Final = f"""WITH created AS (
        {CREATE_RUNS}
        RETURNING run_id),
    stored AS (
        INSERT INTO node_outputs (run_id, node_id, attempt, output)
        SELECT run_id, node_id, attempt, output FROM (
            SELECT DISTINCT ON (o.run_id, o.node_id) o.run_id, o.node_id, o.attempt, o.output,
                o.n
            FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[]) WITH ORDINALITY
                AS o (run_id, node_id, attempt, output, n)
            WHERE o.run_id IN (SELECT run_id FROM created)
            ORDER BY o.run_id, o.node_id, o.n DESC
        ) AS kept
        ORDER BY n
        ON CONFLICT (run_id, node_id) DO UPDATE SET
            attempt = excluded.attempt, output = excluded.output)
    SELECT run_id FROM created
    UNION ALL
    SELECT runs.run_id FROM runs
        JOIN unnest(%b::text[], %b::text[], %b::float8[]) AS e (run_id, status, finished_at)
        ON runs.run_id = e.run_id AND runs.status = e.status
            AND runs.finished_at = e.finished_at"""
#: Indexes of the run columns that are times (floats: an int among them would not dump).
RUN_TIMES: Final = tuple(
    index for index, name in enumerate(_RUN_COLUMNS) if _RUN_TYPES.get(name) == "float8"
)
CLAIM_RUNS: Final = (
    """UPDATE runs SET attempt = v.attempt, status = 'running',
        engine_id = v.engine_id, started_at = COALESCE(runs.started_at, v.started_at)
    FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::float8[])
        AS v (run_id, attempt, engine_id, started_at)
    WHERE runs.run_id = v.run_id AND runs.status IN ('queued', 'running')
        AND runs.attempt < v.attempt AND """
    + MINE
)
INSERT_OUTPUTS: Final = f"""INSERT INTO node_outputs (run_id, node_id, attempt, output)
    SELECT run_id, node_id, attempt, output FROM (
        SELECT DISTINCT ON (v.run_id, v.node_id) v.run_id, v.node_id, v.attempt, v.output, v.n
        FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[]) WITH ORDINALITY
            AS v (run_id, node_id, attempt, output, n)
        JOIN runs ON runs.run_id = v.run_id AND runs.attempt = v.attempt
            AND runs.status = 'running' AND {MINE}
        ORDER BY v.run_id, v.node_id, v.n DESC
    ) AS kept
    ORDER BY n
    ON CONFLICT (run_id, node_id) DO UPDATE SET
        attempt = excluded.attempt, output = excluded.output"""

# The ends of several runs in one statement, each fenced like a single one; returns the runs
# it ended. No run may appear twice (the group commit sends each run's last end only). An
# end stored already, to the time (a commit whose answer was lost with the connection, its
# group written again), counts as ended.
FINISH_RUNS: Final = f"""UPDATE runs SET status = v.status, result = v.result, error = v.error,
        finished_at = v.finished_at
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::bigint[])
        AS v (run_id, status, result, error, finished_at, attempt)
    WHERE runs.run_id = v.run_id AND (
        (runs.status IN ('queued', 'running')
            AND (v.attempt IS NULL OR runs.attempt = v.attempt) AND {MINE})
        OR (runs.status = v.status AND runs.finished_at = v.finished_at))
    RETURNING runs.run_id"""

# Several events in one statement (a list per column, each in seq order), keyed by their
# run's number (``run_id`` kept only for an event whose run has no row: see migration 6).
# An event whose number is stored already is this store's own, written by a commit whose
# answer was lost with the connection (a restarted server): the group is written again, and
# the events it holds are skipped, not a duplicate key for ever.
_EVENT_ARRAYS: Final = """unnest(%b::bigint[], %b::float8[], %b::text[], %b::smallint[],
        %b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY
        AS v (seq, time, type, severity, workflow_id, run_id, node_id, engine_id, data, n)
    LEFT JOIN runs r ON r.run_id = v.run_id"""
_EVENT_ROW_COLUMNS: Final = (
    "seq, time, run_key, severity, type, workflow_id, run_id, node_id, engine_id, data"
)
_KEYED: Final = """r.ord, v.severity, v.type, v.workflow_id,
        CASE WHEN r.ord IS NULL THEN v.run_id END, v.node_id, v.engine_id, v.data"""
INSERT_EVENTS: Final = f"""INSERT INTO event_rows ({_EVENT_ROW_COLUMNS})
    SELECT v.seq, v.time, {_KEYED} FROM {_EVENT_ARRAYS}
    ON CONFLICT (seq) DO NOTHING"""
# Raise the high-water mark of event numbers (never lower it).
EVENTS_WRITTEN: Final = (
    "SELECT setval('events_seq', GREATEST(%s, (SELECT last_value FROM events_seq)))"
)
#: The lock a replica's transaction takes before it numbers its events (and holds until it
#: commits): events are numbered in the order they are committed, across replicas, so a
#: reader following ``seq > cursor`` never misses one committed later with a lower number.
EVENTS_LOCK: Final = 0x6461_6765_7673  # "dagevs"
#: A replica's events: numbered now from ``events_seq`` (under :data:`EVENTS_LOCK`), in the
#: order given; the ``seq`` column of the rows is the replica's own number of the event
#: (``token``): one it wrote already (its group written again after a lost answer) is
#: skipped. The followers are notified at the commit.
INSERT_EVENTS_NUMBERED: Final = f"""INSERT INTO event_rows ({_EVENT_ROW_COLUMNS}, token)
    SELECT nextval('events_seq'), time, run_key, severity, type, workflow_id, run_id,
        node_id, engine_id, data, token
    FROM (SELECT v.n, v.time, {_KEYED}, v.seq FROM {_EVENT_ARRAYS} ORDER BY v.n)
        AS ordered (n, time, run_key, severity, type, workflow_id, run_id, node_id,
            engine_id, data, token)
    ON CONFLICT (origin, token) WHERE token IS NOT NULL DO NOTHING
    RETURNING seq"""
#: The channel a replica notifies when it commits events (the payload is empty).
EVENTS_CHANNEL: Final = "dagengine_events"
#: The channel notified when a cancellation is asked of a run's owner (payload: the run id).
CANCEL_CHANNEL: Final = "dagengine_cancels"
# (MAX(seq) of event_rows, not of the events view: through the view it scans every row.)
NEXT_EVENT_SEQ: Final = """SELECT GREATEST(
    (SELECT COALESCE(MAX(seq), 0) FROM event_rows), (SELECT last_value FROM events_seq)) + 1"""


def finish_sql(
    run_id: str,
    status: str,
    result: str | None,
    error: str | None,
    finished_at: float,
    attempt: int | None,
) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that ends one run (the values of ``_finish_values``): only an unfinished
    run, and only its current attempt unless ``attempt`` is ``None``."""
    sql = f"""UPDATE runs SET status = %s, result = %s, error = %s, finished_at = %s
             WHERE run_id = %s AND status IN ('queued', 'running') AND {MINE}"""
    if attempt is None:
        return sql, (status, result, error, finished_at, run_id)
    return f"{sql} AND attempt = %s", (status, result, error, finished_at, run_id, attempt)


def run_from_row(row: tuple[Any, ...]) -> RunRecord:
    """A :class:`RunRecord` from the columns of :data:`RUN_SELECT`."""
    values = {
        name: _loads(value) if name in _RUN_JSON else value
        for name, value in zip(_RUN_COLUMNS, row, strict=True)
    }
    values["result"] = expand_result(row[0], row[3], values["result"])
    return RunRecord(**values)


def migrate(db: Any, where: str) -> int:
    """Bring the database of connection ``db`` (in a transaction of the caller's) up to
    date; returns the version it was at. ``StoreError`` for a newer schema than this
    dagengine knows. ``where`` names the store in the error."""
    from dagengine.exceptions import StoreError

    db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    db.execute(_VERSION_TABLE)
    row = db.execute("SELECT version FROM dagengine_schema WHERE id = 1").fetchone()
    current = 0 if row is None else int(row[0])
    if current > len(PG_MIGRATIONS):
        raise StoreError(
            f"store {where} has schema version {current}, newer than this dagengine "
            f"understands ({len(PG_MIGRATIONS)}); upgrade dagengine"
        )
    for number in range(current, len(PG_MIGRATIONS)):
        for statement in PG_MIGRATIONS[number]:
            db.execute(statement)
    if current != len(PG_MIGRATIONS):
        db.execute(
            """INSERT INTO dagengine_schema (id, version) VALUES (1, %s)
               ON CONFLICT (id) DO UPDATE SET version = excluded.version""",
            (len(PG_MIGRATIONS),),
        )
    return current

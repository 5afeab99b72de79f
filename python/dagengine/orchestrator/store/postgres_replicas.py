"""What several active orchestrators (replicas) on one PostgreSQL database need of its store:
:class:`ReplicaStore`, a base of :class:`~dagengine.orchestrator.store.postgres.PostgresStore`
whose methods do something only on a store opened with ``replica=ID``.

* **Ownership.** Each unfinished run has an ``owner`` (a replica id) and a lease
  (``lease_until``, in the database's clock). A replica's writer connection carries its id
  (``dagengine.replica``): the runs it creates are its own from their first row, and its
  writes to a run (claims, node outputs, its end) apply only while it owns the run
  (:data:`~dagengine.orchestrator.store.postgres_schema.MINE`), on top of the attempt
  fencing of one orchestrator. The attempt is the lease's fencing token: a take-over raises
  a started run's, so the late writes of the replica it was taken from are refused twice over.
* **Leases** are renewed by their owner (:meth:`ReplicaStore.renew_leases`, one statement for
  all of them); a replica that dies or cannot reach the database stops renewing, and once
  its leases expire the others take its runs over (:meth:`ReplicaStore.take_over`:
  ``SELECT ... FOR UPDATE SKIP LOCKED``, so two replicas never take the same run) and resume
  them from their stored node outputs.
* **Events** are numbered when they are committed, under a lock (see
  :data:`~dagengine.orchestrator.store.postgres_schema.EVENTS_LOCK`), so every replica can
  follow them all by a cursor (:meth:`ReplicaStore.events_committed`), woken by
  ``LISTEN``/``NOTIFY``.
* **Cron fires** are claimed once per ``(trigger, fire time)`` (:meth:`ReplicaStore.claim_fire`),
  and the replica that fires applies the trigger's overlap policy to the unfinished runs the
  trigger started on every replica (:meth:`ReplicaStore.unfinished_trigger_runs`).
* **Cancellations** asked of a replica that does not own the run are handed to its owner
  (:meth:`ReplicaStore.request_cancel`, :meth:`ReplicaStore.cancel_requests`).

A replica store and a single orchestrator's (``exclusive``) exclude each other: replicas hold
the store's advisory lock shared, a single orchestrator holds it alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from dagengine.orchestrator.store.compact import expand
from dagengine.orchestrator.store.postgres_schema import (
    CANCEL_CHANNEL,
    EVENTS_CHANNEL,
    RUN_SELECT,
    run_from_row,
)
from dagengine.orchestrator.store.records import SEVERITIES, EventRecord, RunRecord

__all__ = ["DEFAULT_LEASE_TTL", "ReplicaStore", "replica_server_settings"]

#: Seconds a replica's lease on a run lasts without renewal (``DAGENGINE_LEASE_TTL``).
DEFAULT_LEASE_TTL = 10.0

_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"


def replica_server_settings(lease_ttl: float) -> dict[str, str]:
    """What a replica's sessions change of the store's server settings
    (:data:`~dagengine.orchestrator.store.postgres_writer.SERVER_DEFAULTS`): data it sends
    may go unacknowledged for a lease's time to live, not 20 s.

    A replica cut off from the network mid-statement leaves a backend that is sending it
    results: blocked writing to the socket, not idle, so ``idle_in_transaction_session_timeout``
    never fires. All that time the backend holds what its transaction locked: its runs' rows
    (which the other replicas skip when they take runs over) and the lock events are
    numbered under (which every other replica's commit waits for: all of them stall). The
    others take the runs over once a lease has run out: the server drops the connection by
    then, and the locks go with it."""
    return {"tcp_user_timeout": str(max(1, round(lease_ttl * 1000)))}


# Renewed (and released) only on the rows nobody has locked: the writer's commits lock the
# rows of the runs they end, in an order of their own, so a renewal that waited for them
# deadlocked with one (the server then rolled one of the two back). A run skipped is one
# being written: renewed at the next round.
_MINE_UNLOCKED = """SELECT run_id FROM runs WHERE owner = %s AND status IN ('queued', 'running')
        FOR UPDATE SKIP LOCKED"""

_RENEW = f"""UPDATE runs SET lease_until = {_DB_NOW} + %s
    WHERE run_id IN ({_MINE_UNLOCKED})"""

_RELEASE = f"""UPDATE runs SET lease_until = 0 WHERE run_id IN ({_MINE_UNLOCKED})"""

# Runs whose owner's lease ran out (or that never had one: created by a tool), oldest first,
# locked so that no other replica takes the same one; each taken gets a new owner, lease
# and attempt (the fencing token) -- but a run that never started (attempt 0): it has no
# attempt to fence, and keeps looking like one not started yet (a retry's reused outputs
# are taken at its first attempt). Never this replica's own: it still works on them (cut off
# from the database for a while, it renews them when it is back, if nobody took them).
_TAKE_OVER = f"""WITH free AS (
        SELECT run_id FROM runs
        WHERE status IN ('queued', 'running')
            AND (owner IS NULL OR (lease_until < {_DB_NOW} AND owner <> %s))
        ORDER BY created_at, ord
        LIMIT %s
        FOR UPDATE SKIP LOCKED)
    UPDATE runs SET owner = %s, lease_until = {_DB_NOW} + %s,
        attempt = CASE WHEN runs.attempt = 0 THEN 0 ELSE runs.attempt + 1 END
    FROM free WHERE runs.run_id = free.run_id
    RETURNING runs.run_id, runs.owner"""

_CLAIM_FIRE = f"""INSERT INTO trigger_fires (trigger_id, fire_time, owner, claimed_at)
    VALUES (%s, %s, %s, {_DB_NOW})
    ON CONFLICT (trigger_id, fire_time) DO NOTHING
    RETURNING fire_time"""


class ReplicaStore:
    """The replica side of a PostgreSQL store (see the module's docstring). Its methods
    are no-ops (or ``True``) on a store that is not a replica's."""

    #: The replica this store belongs to (``None``: not a replica's store).
    replica_id: str | None
    #: Seconds a lease lasts without renewal.
    lease_ttl: float
    url: str
    _pool: Any
    _psycopg: Any
    _options: dict[str, Any]

    def _replica_session(self, conn: Any) -> None:
        """Make ``conn`` (the writer's) act for this replica: the runs it creates are this
        replica's, its writes only touch the runs it owns. A transaction it leaves open for
        a lease's time to live is aborted by the server: cut off mid-commit (no FIN reaches
        the server, whose keepalives take hours by default), it would hold its runs' rows,
        which the others could not take over, and the lock events are numbered under,
        which every replica's commits wait for."""
        conn.execute(
            "SELECT set_config('dagengine.replica', %s, false), "
            "set_config('dagengine.lease_ttl', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (
                self.replica_id,
                repr(float(self.lease_ttl)),
                f"{max(1, round(self.lease_ttl * 1000))}ms",
            ),
        )

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return list(conn.execute(sql, tuple(params)).fetchall())

    def renew_leases(self) -> int:
        """Extend the lease on every unfinished run this replica owns; returns how many."""
        if self.replica_id is None:
            return 0
        with self._pool.connection() as conn:
            return int(conn.execute(_RENEW, (self.lease_ttl, self.replica_id)).rowcount)

    def release_leases(self) -> int:
        """End this replica's leases now (it stops): the others take its unfinished runs
        at their next round. Returns how many."""
        if self.replica_id is None:
            return 0
        with self._pool.connection() as conn:
            return int(conn.execute(_RELEASE, (self.replica_id,)).rowcount)

    def take_over(self, limit: int) -> list[RunRecord]:
        """Take up to ``limit`` unfinished runs whose lease ran out (their replica died or
        lost the database), oldest first; returns them as they are now (owned by this
        replica, their attempt raised)."""
        if self.replica_id is None or limit < 1:
            return []
        with self._pool.connection() as conn, conn.transaction():
            taken = [
                row[0]
                for row in conn.execute(
                    _TAKE_OVER, (self.replica_id, limit, self.replica_id, self.lease_ttl)
                ).fetchall()
            ]
            if not taken:
                return []
            rows = conn.execute(
                f"{RUN_SELECT} WHERE run_id = ANY(%s) ORDER BY created_at, ord", (taken,)
            ).fetchall()
        return [run_from_row(row) for row in rows]

    def lost_runs(self, run_ids: Iterable[str]) -> list[str]:
        """Which of ``run_ids`` (runs this replica works on) another replica owns now."""
        wanted = list(run_ids)
        if self.replica_id is None or not wanted:
            return []
        rows = self._read(
            "SELECT run_id FROM runs WHERE run_id = ANY(%s) AND owner IS DISTINCT FROM %s "
            "AND owner IS NOT NULL",
            (wanted, self.replica_id),
        )
        return [row[0] for row in rows]

    def leases(self) -> dict[str, int]:
        """Unfinished runs per owning replica (``""``: no owner), for operators and tests."""
        rows = self._read(
            "SELECT COALESCE(owner, ''), count(*) FROM runs "
            "WHERE status IN ('queued', 'running') GROUP BY 1"
        )
        return {owner: int(count) for owner, count in rows}

    def request_cancel(self, run_id: str) -> bool:
        """Ask the replica that owns an unfinished run to cancel it (it is notified, and
        looks at its requests every lease round anyway); whether the run was unfinished."""
        if self.replica_id is None:
            return False
        with self._pool.connection() as conn, conn.transaction():
            asked = conn.execute(
                "UPDATE runs SET cancel_requested = true "
                "WHERE run_id = %s AND status IN ('queued', 'running') RETURNING run_id",
                (run_id,),
            ).fetchall()
            if asked:
                conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, run_id))
        return bool(asked)

    def cancel_requests(self) -> list[str]:
        """The runs this replica owns that someone asked to cancel (each returned once)."""
        if self.replica_id is None:
            return []
        with self._pool.connection() as conn:
            rows = conn.execute(
                "UPDATE runs SET cancel_requested = false "
                "WHERE owner = %s AND cancel_requested RETURNING run_id",
                (self.replica_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def workflow_version_count(self) -> int:
        """How many workflow versions the store has (a replica refreshes its registry when
        this changes: versions registered through the other replicas)."""
        return int(self._read("SELECT count(*) FROM workflow_versions")[0][0])

    def claim_fire(self, trigger_id: str, fire_time: float) -> bool:
        """Whether this replica is the one to fire ``trigger_id`` at ``fire_time`` (the
        first to ask is; ``True`` on a store that is not a replica's)."""
        if self.replica_id is None:
            return True
        rows = self._read(_CLAIM_FIRE, (trigger_id, float(fire_time), self.replica_id))
        return bool(rows)

    def unfinished_trigger_runs(self, trigger_id: str, workflow_id: str) -> list[str]:
        """The queued or running runs of ``workflow_id`` that trigger ``trigger_id`` started,
        on any replica, oldest first (their ``_trigger_id`` input; empty on a store that is
        not a replica's: one orchestrator knows its own runs)."""
        if self.replica_id is None:
            return []
        # strpos narrows the unfinished runs (few) to those with the id, as JSON encodes it,
        # in their inputs; the decoded inputs decide (it could be another input's value).
        rows = self._read(
            "SELECT run_id, inputs FROM runs WHERE status IN ('queued', 'running') "
            "AND workflow_id = %s AND strpos(inputs, %s) > 0 ORDER BY created_at, ord",
            (workflow_id, json.dumps(trigger_id, ensure_ascii=False)),
        )
        found = []
        for run_id, inputs in rows:
            try:
                decoded = json.loads(inputs)
            except ValueError:
                continue
            if isinstance(decoded, dict) and decoded.get("_trigger_id") == trigger_id:
                found.append(run_id)
        return found

    def events_committed(
        self, after: int, limit: int = 1000, *, own_only: bool = False
    ) -> tuple[list[tuple[EventRecord, bool]], int]:
        """Committed events with ``seq > after`` (``own_only``: this replica's only), oldest
        first, each with whether this replica published it, and the cursor to read on from:
        the last one's ``seq`` if the page is full, else the highest committed ``seq`` of
        any replica as the same statement saw it (one snapshot: nothing at or below it can
        be committed later). Does not commit this store's pending writes first (a
        follower's read; see the module's docstring)."""
        mine = "AND origin = %s " if own_only else ""
        rows = self._read(
            "WITH head AS (SELECT COALESCE(MAX(seq), 0) AS head FROM event_rows) "
            "SELECT head.head, e.* FROM head LEFT JOIN LATERAL ("
            "SELECT seq, time, type, severity, workflow_id, run_id, node_id, engine_id, data, "
            f"origin FROM events WHERE seq > %s {mine}ORDER BY seq LIMIT %s) AS e ON true",
            (after, *((self.replica_id,) if own_only else ()), limit),
        )
        head = int(rows[0][0])
        stored = [row[1:] for row in rows if row[1] is not None]
        # Rows a single orchestrator wrote before replicas shared the database may be folded
        # pairs or numbered payloads (compact.fold_events): read back as their events, the
        # start of a pair with the row (its seq may be at or below ``after``: it was never
        # read on its own).
        found: list[tuple[EventRecord, bool]] = []
        for seq, when, kind, rank, wf, run, node, engine, payload, origin in stored:
            events = expand(seq, when, kind, engine, payload)  # (data is NOT NULL)
            found.extend(
                (
                    EventRecord(at, t, kind_, SEVERITIES[rank], wf, run, node, engine_, data),
                    origin == self.replica_id,
                )
                for at, t, kind_, engine_, data in events
            )
        found.sort(key=lambda item: item[0].seq)
        if len(stored) == limit:
            return found, stored[-1][0]
        return found, max(after, head)

    def committed_event_seq(self) -> int:
        """The highest sequence number of a committed event (0 if none)."""
        # (event_rows, not the events view: MAX through the view scans every row.)
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM event_rows")[0][0])

    def listen_events(self) -> Any:
        """A new connection listening on the events and cancellations channels (the caller
        closes it): ``conn.notifies(timeout=...)`` wakes up when a replica commits events
        or asks for a cancellation (``notify.channel`` says which)."""
        conn = self._psycopg.connect(self.url, **self._options)
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        conn.execute(f"LISTEN {CANCEL_CHANNEL}")
        return conn

"""Several active orchestrators (replicas) on one PostgreSQL database:
:class:`ReplicaCoordinator`, the part of an :class:`~dagengine.orchestrator.Orchestrator`
started with ``replica=True`` (``dagengine serve --replica``, ``DAGENGINE_REPLICA=1``).

Every replica answers the API, the UI and the HTTP triggers: what they read (runs, node
outputs, events, workflow versions) is in the database. A run belongs to the replica that
created it, through a lease in the database (see
:mod:`~dagengine.orchestrator.store.postgres_replicas`); this module keeps the replica's side:

* ``dagengine-leases``: every third of the lease's time to live, renew this replica's leases
  (one statement), load the workflow versions (and yanked marks) changed through other
  replicas, give up the runs another replica took over meanwhile (this one was cut off from
  the database for longer than a lease: its engines are told to cancel them, its writes to
  them are refused anyway), and take over the runs whose lease ran out (a replica died or
  lost the database), resuming them from their stored node outputs as a restarted
  orchestrator does (:meth:`~dagengine.orchestrator.recovery.Recovery.adopt`).
* cancellations asked of another replica are handed over in the store: the owner cancels
  the run (woken by ``NOTIFY``, or at its next lease round).
* ``dagengine-events``: the events of every replica, numbered by the database when they
  were committed, read by a cursor and handed to this replica's subscribers (SSE, the
  monitor, the UI) in the store's order; woken by ``LISTEN``/``NOTIFY``, and polling every
  :data:`EVENT_POLL` seconds should a notification be lost.

Engines are shared: each replica discovers them itself and counts only its own runs, so an
engine may refuse a run as full (runs of other replicas); the run then goes back to the head
of the queue and is tried again (elsewhere if another engine has room), never failed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from dagengine.exceptions import ConfigError, DagEngineError
from dagengine.orchestrator.events import Event
from dagengine.orchestrator.store.postgres import PostgresStore
from dagengine.orchestrator.store.postgres_schema import CANCEL_CHANNEL
from dagengine.orchestrator.store.records import FINISHED_STATUSES
from dagengine.results import RunResult

if TYPE_CHECKING:
    from dagengine.orchestrator.orchestrator import Orchestrator

__all__ = [
    "EVENT_BATCH",
    "EVENT_POLL",
    "FOLLOW_POLL",
    "TAKE_OVER_BATCH",
    "ReplicaCoordinator",
    "new_replica_id",
    "replica_coordinator",
]

log = logging.getLogger("dagengine.orchestrator.replicas")

#: Seconds between two reads of the events when no notification comes.
EVENT_POLL = 0.5
#: Seconds at least between two reads: under load every commit of every replica notifies,
#: and one read per this interval takes them all.
EVENT_BATCH = 0.02
#: Seconds between two reads of a run another replica runs (:meth:`ReplicaCoordinator.follow`).
FOLLOW_POLL = 0.1
#: Runs taken over in one go (the next ones at the next round, or by another replica).
TAKE_OVER_BATCH = 200
_EVENT_PAGE = 1000


def new_replica_id() -> str:
    """A replica id unique across hosts and restarts: host, process, a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def replica_coordinator(orchestrator: Orchestrator, replica: bool) -> ReplicaCoordinator | None:
    """The coordinator of an orchestrator whose store was opened for a replica (``None``
    when ``replica`` is false)."""
    if not replica:
        return None
    store = orchestrator.store
    if not isinstance(store, PostgresStore) or store.replica_id is None:
        raise ConfigError(
            "replica=True needs the orchestrator to open its PostgreSQL store itself "
            "(store= a postgresql:// URL, not a store object)",
            variable="DAGENGINE_REPLICA",
            value="1",
        )
    return ReplicaCoordinator(orchestrator, store)


class ReplicaCoordinator:
    """Leases, take-overs and the shared event stream of one replica (see the module)."""

    def __init__(self, orchestrator: Orchestrator, store: PostgresStore) -> None:
        self._orch = orchestrator
        self.store = store
        assert store.replica_id is not None
        self.replica_id: str = store.replica_id
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._lock = threading.Lock()
        self._cursor = store.committed_event_seq()
        self._versions = -1  # workflow versions in the store at the last round
        #: Runs taken over from other replicas since the start, and given up to them.
        self.taken_over = 0
        self.given_up = 0
        #: When this replica's leases were last renewed (``time.monotonic()``).
        self.renewed_at: float | None = None

    @property
    def interval(self) -> float:
        """Seconds between two lease rounds: a third of the lease's time to live."""
        return self.store.lease_ttl / 3

    def start(self) -> None:
        """Take over the runs whose lease ran out, then start the threads (once)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._round()
        for target, name in (
            (self._lease_loop, "dagengine-leases"),
            (self._event_loop, "dagengine-events"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def holds_leases(self) -> bool:
        """Whether this replica may start attempts of its runs: its leases were renewed
        within a lease's time to live (or never were: not started). Past that (cut off from
        the database) the others may have taken its runs over already: an attempt started
        then would run nodes beside the new owner's attempt, for nothing (its writes are
        refused), and take the shared engines' room. The orchestrator starts none until a
        lease round goes through again."""
        renewed = self.renewed_at
        return renewed is None or time.monotonic() - renewed <= self.store.lease_ttl

    def unready_reason(self) -> str | None:
        """Why this replica should get no work (``GET /readyz`` answers 503): its leases
        were last renewed longer than a lease's time to live ago (the database is out of
        reach, its runs are being taken over). ``None`` when it is fine."""
        renewed = self.renewed_at
        if renewed is None or self.holds_leases():
            return None  # (renewed in time, or not started: nothing was ever leased)
        late = time.monotonic() - renewed
        return (
            f"replica {self.replica_id}: leases last renewed {late:.1f}s ago (lease TTL "
            f"{self.store.lease_ttl:g}s): the database is out of reach"
        )

    def stop(self) -> None:
        """Stop the threads (the leases are kept until :meth:`release`, or they expire)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def release(self) -> None:
        """Let the other replicas take this one's unfinished runs at once (a stopping
        replica's, after its last writes): their leases end now. A failure is logged (the
        leases then expire by themselves)."""
        try:
            released = self.store.release_leases()
        except Exception as exc:
            log.warning("replica %s: could not release its leases: %s", self.replica_id, exc)
            return
        if released:
            log.info("replica %s: released %d run(s) to the others", self.replica_id, released)

    # -- leases ---------------------------------------------------------------------------

    def _lease_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._round()
            except Exception as exc:  # the database is away: try again next round
                log.warning("replica %s: lease round failed: %s", self.replica_id, exc)

    def _round(self) -> None:
        """Renew, give up what was taken over, take over what is free."""
        self.store.renew_leases()
        self.renewed_at = time.monotonic()
        with self._orch._lock:
            mine = list(self._orch._runs)
        for run_id in self.store.lost_runs(mine):
            self._give_up(run_id)
        self._cancel_requested()
        versions = self.store.workflow_version_count()
        if versions != self._versions:  # registered through another replica: the latest
            self._orch.registry.refresh()  # version of a workflow may have changed
            self._versions = versions
        self._orch.registry.refresh_yanked()
        if self._orch._stopping:
            return
        taken = self.store.take_over(TAKE_OVER_BATCH)
        if taken:
            self.taken_over += len(taken)
            log.warning(
                "replica %s: took over %d run(s) whose lease ran out", self.replica_id, len(taken)
            )
            self._orch._recovery.adopt(taken, reason="taken over from a replica that was lost")

    def follow(self, run_id: str) -> concurrent.futures.Future[RunResult]:
        """The result of a run another replica runs (a sub-workflow run whose parent this
        replica took over), read from the store once the run has finished."""
        future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()

        def poll() -> None:
            while not self._stop.wait(FOLLOW_POLL):
                try:
                    rec = self.store.get_run(run_id)
                except Exception:  # the database is away: try again
                    continue
                if rec is None or rec.status in FINISHED_STATUSES:
                    if rec is not None and rec.result:
                        future.set_result(RunResult.from_dict(rec.result))
                    else:
                        future.set_exception(DagEngineError(f"run {run_id} ended without a result"))
                    return
            future.set_exception(DagEngineError("the orchestrator is stopping"))

        threading.Thread(target=poll, name=f"dagengine-follow-{run_id}", daemon=True).start()
        return future

    def request_cancel(self, run_id: str) -> bool:
        """Cancel a run another replica owns (:meth:`Orchestrator.cancel_run` of a run this
        one does not run): its owner is asked to. Whether the run was unfinished."""
        return self.store.request_cancel(run_id)

    def _cancel_requested(self) -> None:
        """Cancel the runs of this replica that were asked to be cancelled elsewhere."""
        for run_id in self.store.cancel_requests():
            self._orch.cancel_run(run_id)

    def _give_up(self, run_id: str) -> None:
        """Forget a run another replica owns now: its engine is told to cancel it, its
        waiters hear that it moved (its writes from here would be refused anyway)."""
        orch = self._orch
        with orch._lock:
            run = orch._runs.pop(run_id, None)
            if run is None:
                return
            orch._parked.pop(run_id, None)
            slot = orch._engines.get(run.engine_id) if run.engine_id is not None else None
        self.given_up += 1
        log.warning("replica %s: run %s was taken over by another replica", self.replica_id, run_id)
        if slot is not None:
            slot.backend.cancel(run_id)
        if not run.future.done():
            run.future.set_exception(
                DagEngineError(
                    f"run {run_id} was taken over by another replica (this one lost the "
                    "database for longer than its lease); its result is in the store"
                )
            )

    # -- events ---------------------------------------------------------------------------

    def _event_loop(self) -> None:
        conn: Any = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.store.listen_events()
                self._deliver_new()
                # Woken by a replica's commit (or a cancellation asked), or after
                # EVENT_POLL seconds anyway.
                for notify in conn.notifies(timeout=EVENT_POLL, stop_after=1):
                    if notify.channel == CANCEL_CHANNEL:
                        self._cancel_requested()
                self._stop.wait(EVENT_BATCH)
            except Exception as exc:
                log.warning("replica %s: following events failed: %s", self.replica_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(EVENT_POLL)
        if conn is not None:
            conn.close()

    def _deliver_new(self) -> None:
        bus = self._orch.events
        if not bus.subscribed:
            # Nobody listens: only keep up with the head (a subscriber that comes later is
            # live from about then, and reads anything older from the store by its cursor).
            self._cursor = self.store.committed_event_seq()
            return
        # Only own-only subscribers (the event log, traces, metrics): only own rows are read.
        own_only = not bus.wants_others
        while True:
            records, cursor = self.store.events_committed(
                self._cursor, _EVENT_PAGE, own_only=own_only
            )
            if records:
                bus.deliver_committed((Event.from_record(record), own) for record, own in records)
            self._cursor = cursor
            if len(records) < _EVENT_PAGE:
                return

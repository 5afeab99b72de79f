"""What the orchestrator needs of a store: :class:`StoreBackend`, the contract that the SQLite
store (:class:`~dagengine.orchestrator.store.sqlite.SQLiteStore`) and the PostgreSQL store
(:class:`~dagengine.orchestrator.store.postgres.PostgresStore`) implement.

It lists exactly what the orchestrator, the workflow registry, the event bus and its
subscriptions (replay), the monitor, the cron triggers and the HTTP API call on a store; both
stores have more (synchronous twins such as ``create_run`` and ``claim_attempt``,
``transaction()``, ``release_run``, ``update_run``), used by tests and tools, and the store
tests run every case on both (``tests/orchestrator/test_store.py``).

The contract, beyond the signatures:

* **Ordering of the ``*_later`` writes.** ``create_run_later``, ``claim_attempt_later``,
  ``save_node_output_later``, ``save_node_output_json_later``, ``finish_run_later``,
  ``append_event_later`` and ``append_events_later`` return before anything is written: the
  writes are queued and committed later, in groups (group commit). A backend may reorder
  writes of *different* runs, but a run's own writes take effect in the order they were
  queued (its creation, then its claims, outputs and end as queued). Events may be written
  after the run writes queued after them (no other write depends on an event), but they keep
  their sequence order. A run's end (``finish_run_later``) is committed without waiting for
  company; the other queued writes may wait a short while (the SQLite store: up to
  :data:`~dagengine.orchestrator.store.writer.LAZY_COMMIT_DELAY`) for one. A killed process
  may lose queued writes that nobody waited for (events, outputs of nodes that then run
  again), never a run's end whose ``done`` was called.
* **Readers see every write queued before them.** Every read (``get_run``, ``list_runs``,
  ``unfinished_runs``, ``node_outputs``, ``events``) and every synchronous write
  (``finish_run``, ``append_event``) first commits what is pending (:meth:`flush`), so a
  caller never observes the commit delay.
* **Fencing by attempt.** Every dispatch of a run starts a new attempt (the orchestrator
  numbers them: ``claim_attempt_later(run, engine, attempt)`` with an attempt above the
  stored one). A claim never applies to a finished run nor lowers the attempt; a node output
  is stored only if its attempt is the run's current one and the run is running; a run's end
  is recorded only if the run is unfinished and (unless ``attempt`` is ``None``, a decision
  of the orchestrator such as a cancellation) ``attempt`` is its current one. Each of these
  checks and its write are one atomic step: a new claim cannot come between them. A late
  answer from an engine that was given up on changes nothing.
* **``done(recorded)``** of ``finish_run_later`` is called exactly once, after the end was
  committed (``True``) or found fenced off or unwritable (``False``); outside every lock of
  the store, on a thread of the store's own (the callbacks take the orchestrator's and the
  event bus's locks: calling one on a thread that wrote to the store while holding such a
  lock would deadlock). A callback that raises is logged and does not stop the others.
* **Event sequence numbers** are assigned when the event is queued (``append_event_later``
  returns it), increase by one per event and are never reused, also across restarts of a
  store with history (:meth:`last_event_seq` continues it).
* **Failures.** A group whose commit fails on the database (busy past the timeout, a full
  disk, a read-only file) is retried (with a backoff) until it goes in, nothing dropped, its
  runs' waiters waiting; meanwhile :attr:`write_error` says why (the service is not ready).
  A row that cannot be written because of its *data* (text that is not UTF-8, an integer out
  of range) must not hold up the rest: it is isolated, written with its text made encodable
  if that helps, or else dropped and counted in :attr:`dropped_writes` (a dropped run end
  calls ``done(False)``).
* **Backpressure.** When more writes are pending than a bound (the SQLite store:
  :data:`~dagengine.orchestrator.store.writer.MAX_PENDING`), the writing thread commits the
  group itself instead of queueing more: memory stays bounded when writes outpace the disk.
* **Threads.** Every method may be called from any thread, concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from dagengine.orchestrator.store.records import EventRecord, RunRecord, WorkflowVersionRecord
from dagengine.orchestrator.store.retention import PruneReport, RetentionPolicy, StoreStats

__all__ = ["StoreBackend"]


class StoreBackend(Protocol):
    """The durable state of an orchestrator (see the module's docstring for the contract)."""

    # -- health and lifecycle --

    @property
    def write_error(self) -> str | None:
        """Why the last commit failed, while commits fail; ``None`` once one succeeds. Read
        by ``GET /readyz``: the service is not ready while the store cannot write."""
        ...

    @property
    def dropped_writes(self) -> int:
        """How many queued writes were dropped because their data cannot be written (each
        logged; a dropped run end told its waiter ``done(False)``)."""
        ...

    def flush(self) -> None:
        """Commit every write queued so far before returning (readers do this first). The
        ``done`` callbacks of the run ends it commits still run on the store's thread."""
        ...

    def close(self) -> None:
        """Commit what is pending, run the callbacks still due, stop the store's threads and
        release the database. The store cannot be used afterwards (queued writes raise
        ``StoreError``)."""
        ...

    # -- workflow versions --

    def save_workflow_version(
        self,
        workflow_id: str,
        version: str,
        spec: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        dependencies: Iterable[tuple[str, str]],
    ) -> None:
        """Record a registered version (committed before it returns). Saving an existing
        ``(workflow_id, version)`` again replaces its spec, metadata and dependencies but
        keeps its place in the registration order."""
        ...

    def workflow_versions(self) -> list[WorkflowVersionRecord]:
        """Every recorded version, in registration order."""
        ...

    # -- runs --

    def create_run_later(self, record: RunRecord) -> None:
        """Queue a new run's creation (before anything queued after it, such as its claim).
        An id the store already has is left as it was: callers check first (:meth:`get_run`).
        ``ValueError`` for an invalid status."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if there is none with that id."""
        ...

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
        insertion); ``ValueError`` for an invalid status. ``since``/``until`` bound the
        creation time (``since <= created_at < until``); ``before`` (a run id) pages by keyset:
        only the runs listed after that run (``ValueError`` if the store has no such run)."""
        ...

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs that are queued or running, oldest first: what a restarted orchestrator
        resumes."""
        ...

    def claim_attempt_later(self, run_id: str, engine_id: str, attempt: int) -> None:
        """Queue the start of attempt ``attempt`` of a run on ``engine_id``: status
        ``running``, ``started_at`` set if it was not. Fenced: no effect on a finished run or
        if the stored attempt is not below ``attempt``. Applied after the run's creation and
        outputs queued before it, before the outputs and the end of the new attempt."""
        ...

    def finish_run(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the end of a run now (after the writes queued before it), fenced (see the
        module's docstring); returns whether it was recorded. ``status`` is one of
        :data:`~dagengine.orchestrator.store.records.FINISHED_STATUSES` (``ValueError``
        otherwise)."""
        ...

    def finish_run_later(
        self,
        run_id: str,
        attempt: int | None,
        status: str,
        result: Mapping[str, Any] | str | None,
        error: Mapping[str, Any] | None,
        done: Callable[[bool], None],
    ) -> None:
        """:meth:`finish_run`, queued and committed without delay (with what was queued
        before it); ``done(recorded)`` is called once, after the commit, outside the store's
        locks, on the store's thread. ``result`` may come already encoded (the JSON text of
        a ``RunResult.to_dict()``) and is then stored as it is."""
        ...

    # -- node outputs --

    def save_node_output_later(
        self, run_id: str, node_id: str, attempt: int, output: Mapping[str, Any]
    ) -> None:
        """Queue a completed node's output; stored only if ``attempt`` is the run's current
        attempt and the run is running when it is committed (replacing an earlier output of
        the node)."""
        ...

    def save_node_output_json_later(
        self, run_id: str, node_id: str, attempt: int, output_json: str
    ) -> None:
        """:meth:`save_node_output_later` for an output that is already JSON text (an
        object, as an engine sends it): stored as it is, not decoded first."""
        ...

    def node_outputs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The stored output of each completed node of the run, in completion order."""
        ...

    # -- events --

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
        """Store an event now (``time`` ``None``: now); returns its sequence number.
        ``severity`` is one of :data:`~dagengine.orchestrator.store.records.SEVERITIES`
        (``ValueError`` otherwise)."""
        ...

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
        """:meth:`append_event`, queued: the sequence number is assigned (and returned)
        now, the event committed with a later group."""
        ...

    def append_events_later(
        self,
        events: Iterable[
            tuple[float, str, str, str | None, str | None, str | None, str | None, Any]
        ],
    ) -> int:
        """:meth:`append_event_later` for several events (``(time, type, severity,
        workflow_id, run_id, node_id, engine_id, data)`` each) in one step: their sequence
        numbers are consecutive; returns the first (the next number if there are none)."""
        ...

    def events(
        self,
        after: int = 0,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Iterable[str] | None = None,
        min_severity: str | None = None,
        limit: int = 1000,
    ) -> list[EventRecord]:
        """Events with ``seq > after`` that match every filter given (``types`` empty:
        none; ``min_severity``: that severity or a more severe one), oldest first."""
        ...

    def last_event_seq(self) -> int:
        """The sequence number of the newest event, queued ones included (0 if none)."""
        ...

    # -- retention --

    def prune(
        self,
        policy: RetentionPolicy,
        *,
        now: float | None = None,
        limit: int = 500,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete one batch, in one transaction: up to ``limit`` finished runs that
        ``policy`` lets go, with their node outputs and events (exported first to
        ``policy.export_dir`` if set; a failed export deletes nothing and raises
        ``StoreError``), and a batch of events without a run older than the default
        retention. Never a queued or running run, a finished child of an unfinished parent,
        nor a run whose children are still stored (see
        :mod:`~dagengine.orchestrator.store.retention`). Fewer than ``limit`` runs removed:
        done for now. ``dry_run``: delete nothing, count what a full prune would remove.
        ``report.seconds`` is how long the batch held the database (waits excluded): the
        background pruner sizes its batches by it."""
        ...

    def reclaim_space(self, max_pages: int = 2000) -> int:
        """Give space freed by prunes back to the file system, a bounded step (SQLite:
        ``PRAGMA incremental_vacuum``; a backend whose database does that itself, such as
        PostgreSQL's autovacuum, returns 0). Returns the bytes given back."""
        ...

    def stats(self) -> StoreStats:
        """Rows and bytes per table, runs per workflow and status, the database's size."""
        ...

    # -- trigger state --

    def get_trigger_state(self, trigger_id: str) -> dict[str, Any] | None:
        """The state last saved for a trigger, or ``None``."""
        ...

    def set_trigger_state(self, trigger_id: str, state: Mapping[str, Any]) -> None:
        """Save (replace) a trigger's state, committed before it returns."""
        ...

    # -- cached nodes' outputs --

    def cache_entries(
        self, workflow_id: str, node_ids: Sequence[str], limit: int
    ) -> list[tuple[str, str, str, str]]:
        """Unexpired entries of these nodes of the workflow as ``(node_id, key, output
        JSON, run_id)``, the newest first, at most ``limit``."""
        ...

    def save_cache_entries(
        self, workflow_id: str, entries: Sequence[tuple[str, str, str, str, float | None]]
    ) -> None:
        """Store (replace) ``(node_id, key, output JSON, run_id, ttl)`` entries of the
        workflow, committed before it returns, and drop its expired ones."""
        ...

    def clear_cache_entries(
        self, workflow_id: str | None = None, node_id: str | None = None
    ) -> int:
        """Delete every entry, a workflow's, or one node's of a workflow (``node_id`` needs
        ``workflow_id``: else a ``ValueError``), committed before it returns; how many."""
        ...

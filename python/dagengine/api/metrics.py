"""Prometheus metrics fed from the orchestrator's event bus.

One subscriber thread reads every event (the bus never blocks on it: a slow reader catches up
from the store) and updates a private :class:`prometheus_client.CollectorRegistry`, so two
orchestrators in one process (tests) never share counters. It counts in bulk: what arrived
within :data:`BATCH_INTERVAL` is taken under one hold of the lock, the gauges set once; a
scrape (:meth:`Metrics.render`) counts what is pending first. (Woken per event, it took
about 10% of the serving process's GIL time at ~700 HTTP-started runs/s, nine events each:
the wake-ups, the labels looked up and the gauges set per event; 5.8% in bulk.)

==================================== ========= ==============================================
metric                               type      from
==================================== ========= ==============================================
``dagengine_runs_total{status}``     counter   run.queued/started/completed/failed/cancelled
``dagengine_node_duration_seconds``  histogram node.started -> node.succeeded/failed
``dagengine_schedule_to_start_seconds`` histogram run.queued -> first run.started
``dagengine_queue_depth``            gauge     runs queued or re-dispatched, not started
``dagengine_engines{state}``         gauge     engine.joined/left/unhealthy/recovered
``dagengine_engine_active_runs{engine_id}`` gauge  run.started on an engine -> its end there
``dagengine_trigger_fires_total``    counter   trigger.fired, by trigger and outcome
==================================== ========= ==============================================
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dagengine.orchestrator.events import Event

__all__ = ["BATCH_INTERVAL", "CONTENT_TYPE", "Metrics"]

log = logging.getLogger("dagengine.api")

CONTENT_TYPE = CONTENT_TYPE_LATEST

_RUN_STATUS = {
    "run.queued": "queued",
    "run.started": "running",
    "run.completed": "succeeded",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                    10, 30, 60)  # fmt: skip
# Bound the per-run/per-node bookkeeping: events whose partner never comes (a run abandoned
# by a stopped orchestrator) must not grow the maps forever.
_MAX_TRACKED = 100_000
# Engine ids label a gauge: past this many engines, the rest share the label "other" so a
# churning fleet (pods with fresh names) cannot grow the exposition without bound.
_MAX_ENGINE_LABELS = 256
_OTHER = "other"
#: Seconds the subscriber lets events gather before it counts them (the metrics lag the events
#: by at most about this much; a scrape every few seconds never sees it).
BATCH_INTERVAL = 0.05
#: The longest the subscriber sleeps when no event came (the bus buffers 10,000 for it).
IDLE_INTERVAL = 0.25


class Metrics:
    """Metrics of one orchestrator. :meth:`attach` starts following its event bus;
    :meth:`render` gives the Prometheus text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter(
            "dagengine_runs", "Runs that reached each status.", ["status"], registry=self.registry
        )
        self.node_duration = Histogram(
            "dagengine_node_duration_seconds",
            "Node execution time, started to succeeded/failed (per attempt).",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.schedule_to_start = Histogram(
            "dagengine_schedule_to_start_seconds",
            "Time from a run being queued to its first start on an engine.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dagengine_queue_depth", "Runs waiting for an engine.", registry=self.registry
        )
        self.engines = Gauge(
            "dagengine_engines", "Engines by state.", ["state"], registry=self.registry
        )
        self.engine_active = Gauge(
            "dagengine_engine_active_runs",
            "Runs running on each engine (its load).",
            ["engine_id"],
            registry=self.registry,
        )
        self.trigger_fires = Counter(
            "dagengine_trigger_fires",
            "Trigger fires by outcome (fired, skipped, error).",
            ["trigger_id", "outcome"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "dagengine_pruned_rows",
            "Rows deleted by the store's retention (store.pruned events), by table.",
            ["table"],
            registry=self.registry,
        )
        for state in ("healthy", "unhealthy"):
            self.engines.labels(state)
        # The labelled children looked up once (labels() takes a lock and builds a key).
        self._run_counters = {status: self.runs.labels(status) for status in _RUN_STATUS.values()}
        self._node_durations = {
            outcome: self.node_duration.labels(outcome) for outcome in ("succeeded", "failed")
        }
        self._trigger_children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._draining = threading.Lock()
        self._queued_at: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._node_started: dict[tuple[str, str], float] = {}
        self._engine_state: dict[str, str] = {}
        self._run_engine: dict[str, str] = {}
        self._engine_load: dict[str, int] = {}
        self._sub: Any = None
        self._thread: threading.Thread | None = None

    # -- feeding --------------------------------------------------------------------------

    def attach(self, orchestrator: Any) -> Metrics:
        """Follow ``orchestrator.events`` from now on, after seeding the gauges from its
        current state (engines, unfinished runs)."""
        # (With replicas, each one's /metrics counts its own runs: scrape them all.)
        self._sub = orchestrator.events.subscribe(buffer=10_000, own_only=True)
        with self._lock:
            for engine_id in orchestrator.engines():
                self._engine_state[engine_id] = "healthy"
            store = getattr(orchestrator, "store", None)
            if store is not None:
                # Only runs still queued: the subscription above already sees the start
                # of each of them (runs that started before it are no longer queued).
                for rec in store.unfinished_runs():
                    if rec.status == "queued":
                        self._waiting.add(rec.run_id)
            self._update_gauges()
        self._thread = threading.Thread(target=self._follow, name="dagengine-metrics", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        sub = self._sub
        assert sub is not None
        pause = BATCH_INTERVAL
        while not sub.closed:
            counted = self._drain(sub)
            # Let the next batch gather (no wake-up per event); a quiet server is looked at
            # less and less often, up to IDLE_INTERVAL (a scrape drains what is pending).
            pause = BATCH_INTERVAL if counted else min(IDLE_INTERVAL, pause * 2)
            time.sleep(pause)

    def _drain(self, sub: Any) -> int:
        """Count what ``sub`` holds now, in order; returns how many events that was."""
        with self._draining:  # (one drainer at a time: events are counted in order)
            batch: list[Event] = []
            try:
                batch = sub.get_many(10_000)
            except Exception:  # a store read failed: keep going, the next one may work
                log.exception("metrics: reading events failed")
            if batch:
                self.observe_all(batch)
            return len(batch)

    def observe(self, event: Event) -> None:
        """Account for one event."""
        self.observe_all([event])

    def observe_all(self, events: list[Event]) -> None:
        """Account for events, in order (the gauges are set once, after the last)."""
        with self._lock:
            for event in events:
                try:
                    self._account(event)
                except Exception:
                    log.exception("metrics: event %s not counted", event.seq)
            self._update_gauges()

    def _account(self, event: Event) -> None:
        """Under the lock: one event (but the gauges)."""
        kind = event.type
        status = _RUN_STATUS.get(kind)
        run_id = event.run_id or ""
        if status is not None:
            self._run_counters[status].inc()
        if kind == "run.queued":
            self._remember(self._queued_at, run_id, event.time)
            self._waiting.add(run_id)
        elif kind == "run.redispatched":
            self._waiting.add(run_id)
            self._leave_engine(run_id)
        elif kind == "run.started":
            self._waiting.discard(run_id)
            self._leave_engine(run_id)
            if event.engine_id:
                label = self._engine_label(event.engine_id)
                self._remember(self._run_engine, run_id, label)
                self._engine_load[label] = self._engine_load.get(label, 0) + 1
            queued = self._queued_at.pop(run_id, None)
            if queued is not None:
                self.schedule_to_start.observe(max(0.0, event.time - queued))
        elif kind in ("run.completed", "run.failed", "run.cancelled"):
            self._waiting.discard(run_id)
            self._leave_engine(run_id)
            self._queued_at.pop(run_id, None)
        elif kind == "node.started":
            self._remember(self._node_started, (run_id, event.node_id or ""), event.time)
        elif kind in ("node.succeeded", "node.failed"):
            started = self._node_started.pop((run_id, event.node_id or ""), None)
            if started is not None:
                outcome = "succeeded" if kind == "node.succeeded" else "failed"
                self._node_durations[outcome].observe(max(0.0, event.time - started))
        elif kind in ("node.retrying", "node.skipped", "node.cancelled"):
            self._node_started.pop((run_id, event.node_id or ""), None)
        elif kind in ("engine.joined", "engine.recovered"):
            self._engine_state[event.engine_id or ""] = "healthy"
        elif kind == "engine.unhealthy":
            self._engine_state[event.engine_id or ""] = "unhealthy"
        elif kind == "engine.left":
            self._engine_state.pop(event.engine_id or "", None)
            label = event.engine_id or ""
            if label in self._engine_load and label != _OTHER:
                # Its runs are re-dispatched (or lost); the series goes with the engine.
                del self._engine_load[label]
                self._run_engine = {r: e for r, e in self._run_engine.items() if e != label}
                self.engine_active.remove(label)
        elif kind == "store.pruned":
            for table in ("runs", "node_outputs", "events"):
                self.pruned.labels(table).inc(int(event.data.get(table, 0)))
        elif kind == "trigger.fired":
            data = event.data
            key = (str(data.get("trigger_id", "")), str(data.get("outcome", "")))
            child = self._trigger_children.get(key)
            if child is None:
                child = self._trigger_children[key] = self.trigger_fires.labels(*key)
            child.inc()

    @staticmethod
    def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:
        if len(table) >= _MAX_TRACKED:
            table.pop(next(iter(table)))  # the oldest entry (dicts keep insertion order)
        table[key] = value

    def _engine_label(self, engine_id: str) -> str:
        if engine_id in self._engine_load or len(self._engine_load) < _MAX_ENGINE_LABELS:
            return engine_id
        return _OTHER

    def _leave_engine(self, run_id: str) -> None:
        label = self._run_engine.pop(run_id, None)
        if label is not None and label in self._engine_load:
            self._engine_load[label] = max(0, self._engine_load[label] - 1)

    def _update_gauges(self) -> None:
        for label, load in self._engine_load.items():
            self.engine_active.labels(label).set(load)
        self.queue_depth.set(len(self._waiting))
        states = list(self._engine_state.values())
        for state in ("healthy", "unhealthy"):
            self.engines.labels(state).set(states.count(state))

    # -- output ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, the events published so far
        counted."""
        sub = self._sub
        if sub is not None:
            self._drain(sub)
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop following events."""
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        if self._thread is not None:
            self._thread.join(2.0)

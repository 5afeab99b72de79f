"""What the orchestrator records of an attempt's node events: the outputs of succeeded nodes
in the store (fenced there by the attempt) and node events on the bus. Remote runs' events
come as the engine sent them (:func:`record_wire_events`: outputs and the result keep the
engine's JSON text), in-process runs' decoded (:func:`record_node_event`); both make the
same records.

Node log lines (``node_log``) become ``node.log`` bus events, stored like the others, with
``level`` and ``message`` in their data; a :class:`LogBudget` bounds them per node attempt
(:data:`~dagengine.node_logs.DEFAULT_LIMIT`, 1 MiB of message text): the line that would pass
the bound is replaced by one ``WARNING`` marker line (``truncated: true``) and the rest of that
attempt's lines are dropped."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from dagengine.engine import error_info_from_proto, result_json_from_proto
from dagengine.node_logs import DEFAULT_LIMIT, TRUNCATED_PREFIX
from dagengine.orchestrator.events import EventBus
from dagengine.orchestrator.retry import retry_origin
from dagengine.orchestrator.store import StoreBackend
from dagengine.results import NodeEvent
from dagengine.tracing import (
    available,
    current_trace_context,
    inherited_context,
    valid_trace_context,
)
from dagengine.v1 import engine_pb2 as pb

__all__ = [
    "LogBudget",
    "queued_trace",
    "record_node_event",
    "record_node_events",
    "record_wire_events",
]


class LogBudget:
    """What one run attempt's nodes may still log: ``limit`` bytes of message text (UTF-8)
    per node attempt, then one truncation marker."""

    __slots__ = ("_lock", "_used", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"node log limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self._used: dict[tuple[str, int], int] = {}  # (node, node attempt) -> bytes; -1: cut
        self._lock = threading.Lock()

    def admit(
        self, node_id: str, node_attempt: int, level: str, message: str
    ) -> dict[str, Any] | None:
        """The data of the ``node.log`` event for this line (level and message, or the
        truncation marker), or ``None`` once the attempt's log was cut."""
        key = (node_id, node_attempt)
        size = len(message.encode("utf-8", "replace"))
        with self._lock:
            used = self._used.get(key, 0)
            if used < 0:
                return None
            if used + size > self.limit:
                self._used[key] = -1
                return {
                    "level": "WARNING",
                    "message": f"{TRUNCATED_PREFIX}: this attempt's log passed {self.limit} "
                    "bytes; later lines were dropped",
                    "truncated": True,
                }
            self._used[key] = used + size
        return {"level": level, "message": message}


def queued_data(wv: Any, parent_run_id: str | None, parent_node_id: str | None) -> dict[str, Any]:
    """The ``run.queued`` event's data: the version, a sub-workflow's parent run and node,
    the W3C trace context of the request that submitted the run (``trace``; or the one a
    sub-workflow inherits from its parent run, ``inherited_trace``), and for a retry
    the run it retries and the nodes it reuses (``retry_of``, ``reused``: see
    :mod:`~dagengine.orchestrator.retry`)."""
    data: dict[str, Any] = {"version": str(wv.version)}
    if parent_run_id:
        data["parent_run_id"] = parent_run_id
        data["parent_node_id"] = parent_node_id
    trace = current_trace_context()
    if trace is not None:
        data["trace"] = trace
    else:
        inherited = inherited_context()
        if inherited is not None:  # (not "trace": the run span hangs under its parent node)
            data["inherited_trace"] = inherited
    origin = retry_origin()
    if origin is not None:
        data.update(origin)
    return data


def queued_trace(store: StoreBackend, run_id: str) -> dict[str, str] | None:
    """The trace context a stored run's engines run it in, from its ``run.queued`` event
    (``trace``, else ``inherited_trace``), for a run resumed by another orchestrator;
    ``None`` without OpenTelemetry (no store read then)."""
    if not available():
        return None
    queued = store.events(run_id=run_id, types=["run.queued"], limit=1)
    if not queued:
        return None
    data = queued[0].data
    carrier = data.get("trace") or data.get("inherited_trace")
    return valid_trace_context(carrier) if isinstance(carrier, dict) else None


# The engine's node events the orchestrator publishes, by wire kind (as record_node_event).
_WIRE_EVENT_TYPES: dict[int, str] = {
    pb.NODE_STARTED: "node.started",
    pb.NODE_SUCCEEDED: "node.succeeded",
    pb.NODE_FAILED: "node.failed",
    pb.NODE_RETRYING: "node.retrying",
    pb.NODE_SKIPPED: "node.skipped",
    pb.NODE_MAPPED: "node.mapped",
    pb.NODE_CACHED: "node.cached",
}
_NODE_KINDS = (
    "node_started",
    "node_succeeded",
    "node_failed",
    "node_retrying",
    "node_skipped",
    "node_mapped",
    "node_cached",
)


def record_wire_events(
    store: StoreBackend,
    events: EventBus,
    run_id: str,
    workflow_id: str,
    engine_id: str,
    attempt: int,
    batch: Sequence[pb.RunEvent],
    result_json: list[str],
    logs: LogBudget,
) -> None:
    """Record a burst of a remote run's events: outputs of succeeded nodes (as the JSON the
    engine sent), node events on the bus, and the result's JSON into ``result_json``."""
    published: list[tuple[str, str | None, dict[str, Any]]] = []
    for msg in batch:
        kind = msg.kind
        if kind == pb.NODE_SUCCEEDED:
            store.save_node_output_json_later(
                run_id, msg.node_id, attempt, msg.output_json.decode() or "{}"
            )
        if kind == pb.NODE_LOG:
            line = logs.admit(msg.node_id, msg.node_attempt, msg.level or "INFO", msg.message)
            if line is not None:
                line.update(attempt=attempt, node_attempt=msg.node_attempt)
                published.append(("node.log", msg.node_id or None, line))
            continue
        event_type = _WIRE_EVENT_TYPES.get(kind)
        if event_type is not None:
            data: dict[str, Any] = {"attempt": attempt, "node_attempt": msg.node_attempt}
            if msg.HasField("error"):
                data["error"] = error_info_from_proto(msg.error).to_dict()
            if msg.skip_reason:
                data["reason"] = msg.skip_reason
            if kind == pb.NODE_MAPPED:
                data["count"] = msg.item_count
            if kind == pb.NODE_CACHED:
                data["from_run"] = msg.cached_from
            published.append((event_type, msg.node_id or None, data))
        if msg.HasField("result"):
            result_json.append(result_json_from_proto(msg.result))
    if published:
        events.publish_batch(published, workflow_id=workflow_id, run_id=run_id, engine_id=engine_id)


def record_node_events(
    store: StoreBackend,
    events: EventBus,
    run_id: str,
    workflow_id: str,
    engine_id: str,
    attempt: int,
    batch: Sequence[NodeEvent],
    logs: LogBudget,
) -> None:
    """Record the events of an in-process run that ended before they were read: the same
    records as :func:`record_node_event` for each, the bus's in one :meth:`~EventBus.
    publish_batch` (one lock round, as a remote run's bursts)."""
    published: list[tuple[str, str | None, dict[str, Any]]] = []
    for event in batch:
        record = _record(store, run_id, attempt, event, logs)
        if record is not None:
            published.append(record)
    if published:
        events.publish_batch(published, workflow_id=workflow_id, run_id=run_id, engine_id=engine_id)


def _record(
    store: StoreBackend, run_id: str, attempt: int, event: NodeEvent, logs: LogBudget
) -> tuple[str, str | None, dict[str, Any]] | None:
    """Store what one event of an in-process run stores (a succeeded node's output) and
    return what it publishes on the bus (type, node, data), if anything."""
    kind, node_id = event.kind, event.node_id
    if kind == "node_log" and node_id is not None:
        detail = event.detail or {}
        line = logs.admit(
            node_id,
            event.attempt,
            str(detail.get("level", "INFO")),
            str(detail.get("message", "")),
        )
        if line is None:
            return None
        line.update(attempt=attempt, node_attempt=event.attempt)
        return ("node.log", node_id, line)
    if kind == "node_succeeded" and node_id is not None:
        _save_output(store, run_id, node_id, attempt, event)
    if kind in _NODE_KINDS:
        return ("node." + kind[5:], node_id, _node_data(attempt, event))
    return None


def _save_output(
    store: StoreBackend, run_id: str, node_id: str, attempt: int, event: NodeEvent
) -> None:
    output = (event.detail or {}).get("output", {})
    if isinstance(output, list):  # a mapped node's: its items' outputs
        store.save_node_output_json_later(
            run_id, node_id, attempt, json.dumps(output, separators=(",", ":"))
        )
    else:
        store.save_node_output_later(run_id, node_id, attempt, output)


def _node_data(attempt: int, event: NodeEvent) -> dict[str, Any]:
    """The data of a node event on the bus."""
    kind = event.kind
    data: dict[str, Any] = {"attempt": attempt, "node_attempt": event.attempt}
    err = event.error
    if err is not None:
        data["error"] = err.to_dict()
    detail = event.detail
    if detail:
        if kind == "node_skipped" and "reason" in detail:
            data["reason"] = detail["reason"]
        if kind == "node_mapped" and "count" in detail:
            data["count"] = detail["count"]
        if kind == "node_cached" and "run_id" in detail:
            data["from_run"] = detail["run_id"]
    return data


def record_node_event(
    store: StoreBackend,
    events: EventBus,
    run_id: str,
    workflow_id: str,
    engine_id: str,
    attempt: int,
    event: NodeEvent,
    logs: LogBudget,
) -> None:
    """Record one event of an in-process run (see :func:`record_node_events`)."""
    record = _record(store, run_id, attempt, event, logs)
    if record is not None:
        event_type, node_id, data = record
        events.publish(
            event_type,
            workflow_id=workflow_id,
            run_id=run_id,
            node_id=node_id,
            engine_id=engine_id,
            data=data,
        )

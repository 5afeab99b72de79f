"""What the orchestrator records of an attempt's node events: the outputs of succeeded nodes
in the store (fenced there by the attempt) and node events on the bus. Remote runs' events
come as the engine sent them (:func:`record_wire_events`: outputs and the result keep the
engine's JSON text), in-process runs' decoded (:func:`record_node_event`); both make the
same records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagengine.engine import error_info_from_proto, result_json_from_proto
from dagengine.orchestrator.events import EventBus
from dagengine.orchestrator.store import Store
from dagengine.results import NodeEvent
from dagengine.v1 import engine_pb2 as pb

__all__ = ["record_node_event", "record_wire_events"]

# The engine's node events the orchestrator publishes, by wire kind (as record_node_event).
_WIRE_EVENT_TYPES: dict[int, str] = {
    pb.NODE_STARTED: "node.started",
    pb.NODE_SUCCEEDED: "node.succeeded",
    pb.NODE_FAILED: "node.failed",
    pb.NODE_RETRYING: "node.retrying",
    pb.NODE_SKIPPED: "node.skipped",
}
_NODE_KINDS = ("node_started", "node_succeeded", "node_failed", "node_retrying", "node_skipped")


def record_wire_events(
    store: Store,
    events: EventBus,
    run_id: str,
    workflow_id: str,
    engine_id: str,
    attempt: int,
    batch: Sequence[pb.RunEvent],
    result_json: list[str],
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
        event_type = _WIRE_EVENT_TYPES.get(kind)
        if event_type is not None:
            data: dict[str, Any] = {"attempt": attempt, "node_attempt": msg.node_attempt}
            if msg.HasField("error"):
                data["error"] = error_info_from_proto(msg.error).to_dict()
            published.append((event_type, msg.node_id or None, data))
        if msg.HasField("result"):
            result_json.append(result_json_from_proto(msg.result))
    if published:
        events.publish_batch(published, workflow_id=workflow_id, run_id=run_id, engine_id=engine_id)


def record_node_event(
    store: Store,
    events: EventBus,
    run_id: str,
    workflow_id: str,
    engine_id: str,
    attempt: int,
    event: NodeEvent,
) -> None:
    """Record one event of an in-process run."""
    kind = event.kind
    if kind == "node_succeeded" and event.node_id is not None:
        output = (event.detail or {}).get("output", {})
        store.save_node_output_later(run_id, event.node_id, attempt, output)
    if kind in _NODE_KINDS:
        data: dict[str, Any] = {"attempt": attempt, "node_attempt": event.attempt}
        err = event.error
        if err is not None:
            data["error"] = err.to_dict()
        events.publish(
            "node." + kind.removeprefix("node_"),
            workflow_id=workflow_id,
            run_id=run_id,
            node_id=event.node_id,
            engine_id=engine_id,
            data=data,
        )

"""The wire forms (``dagengine.v1`` messages) of what the engine clients send and receive,
both ways: workflows, run requests and inputs out; events, results and engine info in, as
the same objects a local run produces (:class:`~dagengine.NodeEvent`,
:class:`~dagengine.RunResult`).

A spec goes out as :func:`dagengine.spec_model.parse` reads it: the one check of a spec's
shape, with the same messages as loading it locally; ``_model_to_proto`` writes the
parsed model as the message.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from dagengine._jsondata import compact_json
from dagengine.cache import code_identity
from dagengine.exceptions import EngineError
from dagengine.inputs import check_schema, validate_inputs
from dagengine.results import (
    ErrorInfo,
    LazyMapping,
    NodeEvent,
    NodeResult,
    NodeStatus,
    RunResult,
    RunStatus,
)
from dagengine.spec_model import LuaSpec, PythonSpec, WorkflowRef, WorkflowSpecModel, parse
from dagengine.tracing import valid_trace_context
from dagengine.v1 import engine_pb2 as pb
from dagengine.workflow import DAG

__all__ = [
    "RUN_STATUSES",
    "EngineEvent",
    "EngineInfo",
    "Inputs",
    "Workflow",
    "build_run_request",
    "decode_object",
    "encode_inputs",
    "encoded_workflow_field",
    "engine_event_from_proto",
    "error_info_from_proto",
    "event_from_proto",
    "json_object",
    "result_from_proto",
    "result_json_from_proto",
    "workflow_to_proto",
]

#: What :meth:`EngineClient.run` accepts as the workflow.
Workflow: TypeAlias = "DAG | Mapping[str, Any] | pb.WorkflowSpec"
#: Run inputs: a mapping (JSON-encoded here), or bytes already holding a JSON object.
Inputs: TypeAlias = "Mapping[str, Any] | bytes | None"


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """Who an engine is and how busy: :meth:`EngineClient.info`."""

    engine_id: str
    version: str
    capacity: int
    active_runs: int
    uptime_seconds: float
    draining: bool
    active_run_ids: tuple[str, ...] = ()

    @property
    def free(self) -> int:
        """How many more runs the engine takes now (0 while draining)."""
        return 0 if self.draining else max(self.capacity - self.active_runs, 0)

    @classmethod
    def from_proto(cls, msg: pb.EngineInfo) -> EngineInfo:
        """Build from the wire message."""
        return cls(
            engine_id=msg.engine_id,
            version=msg.version,
            capacity=msg.capacity,
            active_runs=msg.active_runs,
            uptime_seconds=msg.uptime_seconds,
            draining=msg.draining,
            active_run_ids=tuple(msg.active_run_ids),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineInfo:
        """Build from ``EngineServerRef.info()``."""
        return cls(
            engine_id=str(data["engine_id"]),
            version=str(data["version"]),
            capacity=int(data["capacity"]),
            active_runs=int(data["active_runs"]),
            uptime_seconds=float(data["uptime_seconds"]),
            draining=bool(data["draining"]),
            active_run_ids=tuple(data.get("active_run_ids", ())),
        )


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One event from :meth:`EngineClient.watch`: ``event`` happened in run ``run_id`` (run
    attempt ``attempt``) on engine ``engine_id``. ``missed`` counts events this watcher lost
    just before this one because it fell behind (an event of kind ``missed`` carries only
    that count); ``result`` is set on a ``run_finished`` event."""

    run_id: str
    attempt: int
    engine_id: str
    event: NodeEvent
    missed: int = 0
    result: RunResult | None = None


# --- conversions: Python -> wire --------------------------------------------------------------


def _model_to_proto(model: WorkflowSpecModel) -> pb.WorkflowSpec:
    """The ``WorkflowSpec`` message of a parsed spec. Every retry setting is spelled out (the
    engine never sees a zero backoff factor); a description stays behind."""
    msg = pb.WorkflowSpec(id=model.id, version=model.version or "", fail_fast=model.fail_fast)
    if model.max_parallel is not None:
        msg.max_parallel = model.max_parallel
    if model.timeout is not None:
        msg.timeout_seconds = model.timeout
    if model.inputs is not None:
        # The engine checks a run's inputs against it too (a raw gRPC caller skips ours).
        msg.inputs_schema_json = json.dumps(model.inputs).encode()
    for node in model.nodes:
        out = msg.nodes.add(id=node.id, deps=node.deps)
        executor = node.executor
        if isinstance(executor, LuaSpec):
            out.lua.code = executor.code
            if executor.max_instructions is not None:
                out.lua.max_instructions = executor.max_instructions
            if executor.max_memory is not None:
                out.lua.max_memory_bytes = executor.max_memory
        elif isinstance(executor, PythonSpec):
            out.python.import_path = executor.import_path
        elif isinstance(executor, WorkflowRef):
            out.workflow.workflow_id = executor.workflow_id
            out.workflow.version_range = executor.version_range
        else:
            out.noop.SetInParent()
        backoff = node.retry_backoff
        out.retry.retries = node.retries
        out.retry.backoff_initial_seconds = backoff.initial
        out.retry.backoff_factor = backoff.factor
        out.retry.backoff_max_seconds = backoff.max
        if node.timeout is not None:
            out.timeout_seconds = node.timeout
        if node.when is not None:
            out.when = node.when
        if node.trigger_rule != "all_success":
            out.trigger_rule = node.trigger_rule
        if node.map is not None:
            out.map = node.map
            out.map_max_parallel = node.max_parallel or 0
            out.allow_partial = node.allow_partial
            out.max_items = node.max_items or 0
        if node.cache is not None:
            out.cache.SetInParent()
            out.cache.key = node.cache.key or ""
            out.cache.ttl_seconds = node.cache.ttl or 0.0
    return msg


def with_code_identities(msg: pb.WorkflowSpec, dag: DAG) -> pb.WorkflowSpec:
    """``msg`` (the wire form of ``dag``) with the code identity of each cached node
    (:func:`dagengine.cache.code_identity`), computed here, where the functions are: an
    engine given only a spec identifies a Python node's code by its import path."""
    for out in msg.nodes:
        node = dag.nodes.get(out.id)
        if node is not None and node.cache is not None and out.HasField("cache"):
            out.cache.code = code_identity(node)
    return msg


def workflow_to_proto(workflow: Workflow) -> pb.WorkflowSpec:
    """The wire form of a workflow: a :class:`DAG` (through :meth:`DAG.to_spec`, so Python
    nodes need an import path), a spec dict as read from YAML/JSON, or a ``WorkflowSpec``
    message (used as is).

    Only the shape is checked here (:func:`dagengine.spec_model.parse`: a :class:`SpecError`
    naming the field, as loading the spec would); the engine validates the rest (graph, Lua
    syntax, import paths) and answers :class:`InvalidRequest`, so a spec naming Python code
    that exists only on the engine can be sent from anywhere.
    """
    if isinstance(workflow, pb.WorkflowSpec):
        return workflow
    if isinstance(workflow, DAG):
        return with_code_identities(_model_to_proto(parse(workflow.to_spec())), workflow)
    if isinstance(workflow, Mapping):
        return _model_to_proto(parse(workflow))
    raise TypeError(
        f"workflow must be a DAG, a spec dict or a WorkflowSpec, got {type(workflow).__name__}"
    )


def json_object(value: Mapping[str, Any], what: str) -> bytes:
    """``value`` as compact JSON bytes; ``TypeError`` naming ``what`` if it is not a JSON
    object (a mapping with str keys and JSON-serialisable values)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping (a JSON object), got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{what}: keys must be str, got {type(key).__name__} {key!r}")
    try:
        text = compact_json(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} are not JSON-serialisable: {exc}") from None
    return text.encode()


def encode_inputs(inputs: Inputs) -> bytes:
    """Run inputs as JSON bytes: a mapping is encoded (``TypeError`` naming the problem if it
    is not JSON-serialisable), bytes are sent as they are (already JSON), ``None`` is ``{}``."""
    if inputs is None:
        return b"{}"
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        return bytes(inputs)
    return json_object(inputs, "inputs")


def _checked_inputs(workflow: Workflow | None, inputs: Inputs) -> Inputs:
    """``inputs`` validated, defaults filled, against the workflow's ``inputs:`` schema (a
    :class:`~dagengine.InputError` before anything is sent); as given without a schema.
    The engine does not know the schema (the wire has no field for it), so this is the
    engine door's check."""
    schema: Any = None
    if isinstance(workflow, DAG):
        schema = workflow.inputs
    elif isinstance(workflow, Mapping) and workflow.get("inputs") is not None:
        schema = check_schema(workflow["inputs"])
    if schema is None:
        return inputs
    if inputs is None:
        data: Any = {}
    elif isinstance(inputs, (bytes, bytearray, memoryview)):
        try:
            data = json.loads(bytes(inputs))
        except ValueError as exc:
            raise TypeError(f"inputs: not JSON: {exc}") from None
    else:
        data = inputs
    if not isinstance(data, Mapping):
        raise TypeError(f"inputs must be a JSON object, got {type(data).__name__}")
    return validate_inputs(schema, data)


def _deadline_unix(deadline: float | None) -> float:
    if deadline is None:
        return 0.0
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError(f"deadline must be a unix time in seconds, got {type(deadline).__name__}")
    return float(deadline)


def build_run_request(
    workflow: Workflow | None,
    inputs: Inputs = None,
    *,
    run_id: str | None = None,
    attempt: int = 1,
    completed: Mapping[str, Mapping[str, Any]] | None = None,
    deadline: float | None = None,
    max_parallel: int | None = None,
    fail_fast: bool | None = None,
    parent_run_id: str = "",
    parent_node_id: str = "",
    depth: int = 0,
    result_only: bool = False,
    result_json: bool = False,
    trace_context: Mapping[str, str] | None = None,
    cache_entries: Iterable[tuple[str, str, bytes, str]] = (),
) -> pb.RunRequest:
    """The ``RunRequest`` message :meth:`EngineClient.run` sends (see there).
    ``trace_context``: the W3C trace context (``traceparent``, ``tracestate``) the engine
    runs the run's Python nodes in (see :mod:`dagengine.tracing`); one without a valid
    ``traceparent`` is left out.
    ``result_only`` asks the engine to stream nothing but the final result event;
    ``cache_entries`` are ``(node_id, key, output JSON, run_id)`` entries of the workflow's
    cached nodes the run may use.
    ``result_json`` to send the result also as JSON text (``RunResult.result_json``, the
    text :func:`result_json_from_proto` would build). ``workflow=None`` leaves the workflow
    out: a caller that sends the same workflow with many runs appends it, encoded once by
    :func:`encoded_workflow_field`, to each request's encoding (protobuf fields may come in
    any order)."""
    if run_id is None:
        run_id = uuid.uuid4().hex
    elif not isinstance(run_id, str) or not run_id:
        raise TypeError("run_id must be a non-empty str")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise TypeError(f"attempt must be an int >= 1, got {attempt!r}")
    request = pb.RunRequest(
        run_id=run_id,
        attempt=attempt,
        workflow=None if workflow is None else workflow_to_proto(workflow),
        inputs_json=encode_inputs(_checked_inputs(workflow, inputs)),
        deadline_unix=_deadline_unix(deadline),
        parent_run_id=parent_run_id,
        parent_node_id=parent_node_id,
        depth=depth,
        result_only=result_only,
        result_json=result_json,
    )
    if completed:
        if not isinstance(completed, Mapping):
            raise TypeError(f"completed must be a mapping, got {type(completed).__name__}")
        for node_id, output in completed.items():
            request.completed_json[node_id] = json_object(output, f"completed[{node_id!r}]")
    if max_parallel is not None:
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise TypeError(f"max_parallel must be a positive int, got {max_parallel!r}")
        request.max_parallel = max_parallel
    if fail_fast is not None:
        request.fail_fast = bool(fail_fast)
    if trace_context:
        valid = valid_trace_context(trace_context)
        if valid is not None:
            request.trace_context.update(valid)
    for node_id, key, output_json, from_run in cache_entries:
        request.cache_entries.add(
            node_id=node_id, key=key, output_json=output_json, run_id=from_run
        )
    return request


def encoded_workflow_field(workflow: Workflow) -> bytes:
    """The ``workflow`` field of a ``RunRequest``, encoded: appended to the encoding of
    ``build_run_request(None, ...)``, it makes that of ``build_run_request(workflow, ...)``."""
    return pb.RunRequest(workflow=workflow_to_proto(workflow)).SerializeToString()


# --- conversions: wire -> Python --------------------------------------------------------------

_EVENT_KINDS: dict[int, str] = {
    pb.RUN_STARTED: "run_started",
    pb.NODE_STARTED: "node_started",
    pb.NODE_SUCCEEDED: "node_succeeded",
    pb.NODE_FAILED: "node_failed",
    pb.NODE_RETRYING: "node_retrying",
    pb.NODE_SKIPPED: "node_skipped",
    pb.NODE_CANCELLED: "node_cancelled",
    pb.NODE_LOG: "node_log",
    pb.NODE_MAPPED: "node_mapped",
    pb.NODE_CACHED: "node_cached",
    pb.RUN_FINISHED: "run_finished",
}
#: The wire's run statuses (``pb.SUCCEEDED`` ...) as :class:`~dagengine.RunStatus`.
RUN_STATUSES: dict[int, RunStatus] = {
    pb.SUCCEEDED: RunStatus.SUCCEEDED,
    pb.FAILED: RunStatus.FAILED,
    pb.CANCELLED: RunStatus.CANCELLED,
}
_NODE_STATUS: dict[int, NodeStatus] = {
    pb.NODE_STATUS_UNSPECIFIED: NodeStatus.PENDING,
    pb.NODE_PENDING: NodeStatus.PENDING,
    pb.NODE_RUNNING: NodeStatus.RUNNING,
    pb.NODE_RETRYING_STATUS: NodeStatus.RETRYING,
    pb.NODE_SUCCEEDED_STATUS: NodeStatus.SUCCEEDED,
    pb.NODE_FAILED_STATUS: NodeStatus.FAILED,
    pb.NODE_SKIPPED_STATUS: NodeStatus.SKIPPED,
    pb.NODE_CANCELLED_STATUS: NodeStatus.CANCELLED,
}


def error_info_from_proto(msg: pb.ErrorInfo) -> ErrorInfo:
    """A wire ``ErrorInfo`` as an :class:`~dagengine.ErrorInfo`."""
    return ErrorInfo(
        type=msg.type or "Error",
        message=msg.message,
        traceback=msg.traceback or None,
        node_id=msg.node_id or None,
    )


def _error_dict(msg: pb.ErrorInfo) -> dict[str, Any]:
    # The shape of the core's event details: type, message, traceback (None when absent).
    out: dict[str, Any] = {
        "type": msg.type or "Error",
        "message": msg.message,
        "traceback": msg.traceback or None,
    }
    if msg.node_id:
        out["node_id"] = msg.node_id
    return out


def decode_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object the engine (or the orchestrator) sent; :class:`EngineError` naming
    ``what`` if it is not one."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"engine sent invalid JSON for {what}: {exc}") from None
    if not isinstance(value, dict):
        raise EngineError(f"engine sent {type(value).__name__} for {what}, expected an object")
    return value


def decode_output(data: bytes, what: str) -> Any:
    """A node's output the engine sent: a JSON object, or a mapped node's list."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"engine sent invalid JSON for {what}: {exc}") from None
    if not isinstance(value, (dict, list)):
        raise EngineError(f"engine sent {type(value).__name__} for {what}, expected an object")
    return value


def _run_status(value: int) -> RunStatus:
    try:
        return RUN_STATUSES[value]
    except KeyError:
        raise EngineError(f"engine sent a run result with unknown status {value}") from None


def event_from_proto(msg: pb.RunEvent) -> NodeEvent:
    """A wire ``RunEvent`` as the :class:`~dagengine.NodeEvent` a local run would produce.

    ``detail`` holds ``error`` (failures), ``delay`` (retries), ``message`` (logs), ``output``
    (``node_succeeded``), ``reason`` (``node_skipped``) and ``status`` (``run_finished``).
    """
    kind = _EVENT_KINDS.get(msg.kind, "unknown")
    if msg.kind == pb.EVENT_KIND_UNSPECIFIED and msg.missed:
        kind = "missed"  # Watch: only says how many events this watcher lost
    detail: dict[str, Any] = {}
    if msg.HasField("error"):
        detail["error"] = _error_dict(msg.error)
    if msg.kind == pb.NODE_RETRYING:
        detail["delay"] = msg.retry_delay_seconds
        detail.setdefault("error", None)
    elif msg.kind == pb.NODE_LOG:
        detail["message"] = msg.message
    elif msg.kind == pb.NODE_SUCCEEDED and msg.output_json:
        detail["output"] = decode_output(msg.output_json, f"node {msg.node_id!r}'s output")
    elif msg.kind == pb.NODE_MAPPED:
        detail["count"] = msg.item_count
    elif msg.kind == pb.NODE_CACHED:
        detail["run_id"] = msg.cached_from
        detail["key"] = msg.cache_key
    elif msg.kind == pb.NODE_SKIPPED and msg.skip_reason:
        detail["reason"] = msg.skip_reason
    elif msg.kind == pb.RUN_FINISHED and msg.HasField("result"):
        detail["status"] = _run_status(msg.result.status).value
    return NodeEvent(
        seq=msg.seq,
        kind=kind,
        node_id=msg.node_id or None,
        attempt=msg.node_attempt,
        time=msg.time_unix,
        detail=detail or None,
    )


def result_from_proto(msg: pb.RunResult) -> RunResult:
    """A wire ``RunResult`` as a :class:`~dagengine.RunResult`. Outputs are decoded from JSON
    on first access, so a large result costs nothing until it is read."""
    by_id = {node.node_id: node for node in msg.nodes}

    def node_result(node_id: str, node: pb.NodeResult) -> NodeResult:
        what = f"node {node_id!r}'s output"
        return NodeResult(
            node_id=node_id,
            status=_NODE_STATUS.get(node.status, NodeStatus.PENDING),
            output=decode_output(node.output_json, what) if node.output_json else None,
            error=error_info_from_proto(node.error) if node.HasField("error") else None,
            attempts=node.attempts,
            started_at=node.started_at or None,
            finished_at=node.finished_at or None,
            skip_reason=node.skip_reason or None,
            cached_from=node.cached_from or None,
            cache_key=node.cache_key or None,
        )

    node_results = LazyMapping(by_id, node_result)

    def output(node_id: str, _: object) -> Any:
        value = node_results[node_id].output
        return value if value is not None else {}

    succeeded = {
        node_id: None for node_id, node in by_id.items() if node.status == pb.NODE_SUCCEEDED_STATUS
    }
    return RunResult(
        run_id=msg.run_id,
        status=_run_status(msg.status),
        outputs=LazyMapping(succeeded, output),
        node_results=node_results,
        error=error_info_from_proto(msg.error) if msg.HasField("error") else None,
        duration=msg.duration_seconds,
    )


_json_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _error_json(msg: pb.ErrorInfo) -> str:
    return _json_text(error_info_from_proto(msg).to_dict())


def _json_str(text: str) -> str:
    # Most ids need no escaping: skip the encoder for them (ensure_ascii is off, so only
    # quotes, backslashes and control characters would change).
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return _json_text(text)


def _json_float(value: float) -> str:
    # JSON's float text is Python's repr; not-a-number and infinities go to the encoder.
    return repr(value) if math.isfinite(value) else _json_text(value)


def _json_time(value: float) -> str:
    # The result's shape: an unset time (0 on the wire) is null.
    return _json_float(value) if value else "null"


def result_json_from_proto(msg: pb.RunResult) -> str:
    """The JSON text of ``result_from_proto(msg).to_dict()``, built without decoding the node
    outputs: they are spliced in as the engine sent them (JSON objects, encoded by the core).
    The orchestrator records every run's result this way. When the engine sent that text
    itself (the request's ``result_json``), it is used as it is."""
    if msg.result_json:
        return msg.result_json.decode()
    outputs: list[str] = []
    nodes: list[str] = []
    for node in msg.nodes:
        key = _json_str(node.node_id)
        raw = node.output_json.decode() if node.output_json else None
        status = _NODE_STATUS.get(node.status, NodeStatus.PENDING)
        if node.status == pb.NODE_SUCCEEDED_STATUS:
            outputs.append(f"{key}:{raw or '{}'}")
        error = _error_json(node.error) if node.HasField("error") else "null"
        reason = f',"skip_reason":{_json_str(node.skip_reason)}' if node.skip_reason else ""
        if node.cached_from:
            reason += f',"cached_from":{_json_str(node.cached_from)}'
        nodes.append(
            f'{key}:{{"status":"{status.value}","output":{raw or "null"},"error":{error},'
            f'"attempts":{node.attempts},"started_at":{_json_time(node.started_at)},'
            f'"finished_at":{_json_time(node.finished_at)}{reason}}}'
        )
    error = _error_json(msg.error) if msg.HasField("error") else "null"
    return (
        f'{{"run_id":{_json_str(msg.run_id)},"status":"{_run_status(msg.status).value}",'
        f'"error":{error},"duration":{_json_float(msg.duration_seconds)},'
        f'"outputs":{{{",".join(outputs)}}},"nodes":{{{",".join(nodes)}}}}}'
    )


def engine_event_from_proto(msg: pb.RunEvent) -> EngineEvent:
    """A ``RunEvent`` of a ``Watch`` subscription as an :class:`EngineEvent`."""
    return EngineEvent(
        run_id=msg.run_id,
        attempt=msg.attempt,
        engine_id=msg.engine_id,
        event=event_from_proto(msg),
        missed=msg.missed,
        result=result_from_proto(msg.result) if msg.HasField("result") else None,
    )

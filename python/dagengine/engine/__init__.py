"""Engines over gRPC: the client (:class:`EngineClient`, :class:`AsyncEngineClient`) and the
engine process body (:func:`serve_engine`, run by ``dagengine engine``).

An engine is a Python process that embeds the core; the core serves
``dagengine.v1.EngineService`` (and ``grpc.health.v1.Health``) with tonic on its own runtime,
and calls back into this process only for ``python`` nodes (and sub-workflow nodes). The
wire contract is ``protos/dagengine/v1/engine.proto``; its Python modules are generated into
``dagengine.v1`` (``make proto``).

Client side, everything the engine says becomes the same objects a local run produces
(:class:`~dagengine.NodeEvent`, :class:`~dagengine.RunResult`), and every failure of the call
becomes one of the :class:`~dagengine.EngineError` classes:

========================  ====================================================================
:class:`EngineUnavailable`  no connection (refused, TLS handshake failed), the engine is
                          draining, or the Run stream ended without the run's result (the
                          engine died mid-run; keepalive pings notice a silent peer too)
:class:`EngineBusy`       the engine is at capacity (``RESOURCE_EXHAUSTED``)
:class:`InvalidRequest`   ``INVALID_ARGUMENT``: bad spec, unknown import path, Lua syntax error,
                          inputs not a JSON object; the message names the field or node
:class:`MessageTooLarge`  a message over the client's or the engine's size limit
:class:`EngineError`      anything else (``code`` is the gRPC status name)
========================  ====================================================================

A failed *run* is not an exception: it is a :class:`~dagengine.RunResult` with status
``failed`` (call ``raise_for_status()``), exactly as for :meth:`DAG.run`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TypeAlias

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from dagengine import _core
from dagengine._units import parse_duration, parse_size
from dagengine.exceptions import (
    EngineBusy,
    EngineError,
    EngineStartError,
    EngineUnavailable,
    ImportPathError,
    InvalidRequest,
    MessageTooLarge,
    SpecError,
    SubWorkflowError,
)
from dagengine.results import ErrorInfo, NodeEvent, NodeResult, NodeStatus, RunResult, RunStatus
from dagengine.results import _Lazy as _LazyMapping
from dagengine.v1 import engine_pb2 as pb
from dagengine.workflow import (
    _DEFAULT_BACKOFF,
    DAG,
    NodeContext,
    SubWorkflow,
    SubWorkflowRunner,
    _make_invoke,
    subworkflow_inputs,
)

__all__ = [
    "DEFAULT_KEEPALIVE_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncEngineClient",
    "AsyncEngineSession",
    "AsyncEventStream",
    "AsyncRunStream",
    "EngineClient",
    "EngineEvent",
    "EngineInfo",
    "EventStream",
    "RunStream",
    "SelfRegistrar",
    "SessionRun",
    "TLSConfig",
    "advertise_address",
    "build_run_request",
    "encode_inputs",
    "encoded_workflow_field",
    "event_from_proto",
    "orchestrator_credentials_from_env",
    "result_from_proto",
    "serve_engine",
    "subworkflow_runner_from_env",
    "workflow_to_proto",
]

MiB = 1024 * 1024
#: Default bound on one gRPC message, both ways, on clients and engines.
DEFAULT_MAX_MESSAGE_BYTES = 16 * MiB

#: What :meth:`EngineClient.run` accepts as the workflow.
Workflow: TypeAlias = "DAG | Mapping[str, Any] | pb.WorkflowSpec"
#: Run inputs: a mapping (JSON-encoded here), or bytes already holding a JSON object.
Inputs: TypeAlias = "Mapping[str, Any] | bytes | None"
#: A PEM document, or the path of a file holding one.
PemSource: TypeAlias = "bytes | str | os.PathLike[str]"

_SERVICE = "/dagengine.v1.EngineService/"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"

#: Seconds between HTTP/2 pings while a call is open. A Run stream can be quiet for as long
#: as its slowest node; the pings are how the client tells a slow node from a frozen engine or
#: a dead network path (a peer that does not answer one within the same time is gone).
DEFAULT_KEEPALIVE_SECONDS = 10.0
# With a deadline, the engine ends the run by itself; past the deadline plus this, the
# client stops waiting and reports the engine as unavailable.
_DEADLINE_SLACK_SECONDS = 5.0
_SIZE_ERROR = re.compile(r"larger than max|too large|message length", re.IGNORECASE)


# --- public data types ------------------------------------------------------------------------


def _read_pem(source: PemSource, what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{what} must be PEM bytes or a file path, got {type(source).__name__}")
    return Path(source).read_bytes()


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for a client: ``ca_cert`` verifies the engine (``None``: the system's roots);
    ``client_cert`` + ``client_key`` present a certificate for mutual TLS; ``server_name``
    overrides the name checked against the engine's certificate (default: the host of the
    address). Certificates and keys are PEM bytes or file paths."""

    ca_cert: PemSource | None = None
    client_cert: PemSource | None = None
    client_key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLSConfig: client_cert and client_key go together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpcio channel credentials (files are read now)."""
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.ca_cert is None else _read_pem(self.ca_cert, "ca_cert"),
            private_key=(
                None if self.client_key is None else _read_pem(self.client_key, "client_key")
            ),
            certificate_chain=(
                None if self.client_cert is None else _read_pem(self.client_cert, "client_cert")
            ),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel options that go with the credentials."""
        if self.server_name is None:
            return []
        return [
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.default_authority", self.server_name),
        ]


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

_TOP_KEYS = ("id", "version", "description", "max_parallel", "fail_fast", "timeout", "nodes")
_EXECUTOR_KEYS = ("lua", "python", "workflow", "noop")
_NODE_KEYS = ("id", "deps", *_EXECUTOR_KEYS, "retries", "retry_backoff", "timeout", "limits")


def _spec_error(path: str, problem: str) -> SpecError:
    return SpecError(f"{path}: {problem}" if path else problem, path=path or None)


def _check_keys(raw: Mapping[Any, Any], allowed: Sequence[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise _spec_error(where, "unknown key")


def _want(value: object, types: tuple[type, ...], path: str, expected: str) -> None:
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise _spec_error(path, f"expected {expected}, got {type(value).__name__} {value!r}")


def _seconds(value: object, path: str) -> float:
    try:
        return parse_duration(value, what=path)
    except (TypeError, ValueError) as exc:
        raise _spec_error(path, str(exc)) from None


def _node_to_proto(raw: object, path: str) -> pb.NodeSpec:
    _want(raw, (Mapping,), path, "a mapping")
    assert isinstance(raw, Mapping)
    _check_keys(raw, _NODE_KEYS, path)
    node_id = raw.get("id")
    _want(node_id, (str,), f"{path}.id", "a node id string")
    deps = raw.get("deps", [])
    _want(deps, (list, tuple), f"{path}.deps", "a list of node ids")
    for i, dep in enumerate(deps):
        _want(dep, (str,), f"{path}.deps[{i}]", "a node id string")
    node = pb.NodeSpec(id=node_id, deps=deps)
    kinds = [key for key in _EXECUTOR_KEYS if key in raw]
    if len(kinds) != 1:
        problem = "has no executor" if not kinds else f"has several executors ({', '.join(kinds)})"
        raise _spec_error(
            path, f"node {node_id!r} {problem}: use one of lua, python, workflow, noop"
        )
    kind = kinds[0]
    value = raw[kind]
    limits = raw.get("limits")
    if limits is not None and kind != "lua":
        raise _spec_error(f"{path}.limits", "limits apply to lua nodes only")
    if kind == "lua":
        _want(value, (str,), f"{path}.lua", "Lua source code")
        node.lua.code = value
        if limits is not None:
            _want(limits, (Mapping,), f"{path}.limits", "a mapping")
            _check_keys(limits, ("instructions", "memory"), f"{path}.limits")
            if limits.get("instructions") is not None:
                instructions = limits["instructions"]
                _want(instructions, (int,), f"{path}.limits.instructions", "a positive integer")
                node.lua.max_instructions = instructions
            if limits.get("memory") is not None:
                try:
                    node.lua.max_memory_bytes = parse_size(limits["memory"], what="memory")
                except (TypeError, ValueError) as exc:
                    raise _spec_error(f"{path}.limits.memory", str(exc)) from None
    elif kind == "python":
        _want(value, (str,), f"{path}.python", "an import path 'module:function'")
        node.python.import_path = value
    elif kind == "workflow":
        _want(value, (str,), f"{path}.workflow", "a workflow reference like 'child@^1.4'")
        workflow_id, _, version_range = value.partition("@")
        node.workflow.workflow_id = workflow_id.strip()
        node.workflow.version_range = version_range.strip() or "*"
    else:
        if value is not True:
            raise _spec_error(f"{path}.noop", f"must be true, got {value!r}")
        node.noop.SetInParent()
    retries = raw.get("retries", 0)
    _want(retries, (int,), f"{path}.retries", "a non-negative integer")
    backoff = raw.get("retry_backoff") or {}
    _want(backoff, (Mapping,), f"{path}.retry_backoff", "a mapping")
    _check_keys(backoff, ("initial", "factor", "max"), f"{path}.retry_backoff")
    factor = backoff.get("factor", _DEFAULT_BACKOFF.factor)
    _want(factor, (int, float), f"{path}.retry_backoff.factor", "a number >= 1")
    node.retry.retries = retries
    node.retry.backoff_initial_seconds = (
        _seconds(backoff["initial"], f"{path}.retry_backoff.initial")
        if "initial" in backoff
        else _DEFAULT_BACKOFF.initial
    )
    node.retry.backoff_factor = float(factor)
    node.retry.backoff_max_seconds = (
        _seconds(backoff["max"], f"{path}.retry_backoff.max")
        if "max" in backoff
        else _DEFAULT_BACKOFF.max
    )
    if raw.get("timeout") is not None:
        node.timeout_seconds = _seconds(raw["timeout"], f"{path}.timeout")
    return node


def _spec_to_proto(spec: Mapping[str, Any]) -> pb.WorkflowSpec:
    _check_keys(spec, _TOP_KEYS, "")
    wf_id = spec.get("id", "")
    _want(wf_id, (str,), "id", "a workflow id string")
    version = spec.get("version") or ""
    _want(version, (str,), "version", "a semver string")
    msg = pb.WorkflowSpec(id=wf_id, version=version)
    if spec.get("max_parallel") is not None:
        _want(spec["max_parallel"], (int,), "max_parallel", "a positive integer")
        msg.max_parallel = spec["max_parallel"]
    fail_fast = spec.get("fail_fast", False)
    _want(fail_fast, (bool,), "fail_fast", "true or false")
    msg.fail_fast = fail_fast
    if spec.get("timeout") is not None:
        msg.timeout_seconds = _seconds(spec["timeout"], "timeout")
    nodes = spec.get("nodes")
    _want(nodes, (list, tuple), "nodes", "a list of nodes")
    assert isinstance(nodes, (list, tuple))
    msg.nodes.extend(_node_to_proto(raw, f"nodes[{i}]") for i, raw in enumerate(nodes))
    return msg


def workflow_to_proto(workflow: Workflow) -> pb.WorkflowSpec:
    """The wire form of a workflow: a :class:`DAG` (through :meth:`DAG.to_spec`, so Python
    nodes need an import path), a spec dict as read from YAML/JSON, or a ``WorkflowSpec``
    message (used as is).

    Only the shape is checked here (:class:`SpecError` naming the field); the engine validates
    the rest (graph, Lua syntax, import paths) and answers :class:`InvalidRequest`, so a spec
    naming Python code that exists only on the engine can be sent from anywhere.
    """
    if isinstance(workflow, pb.WorkflowSpec):
        return workflow
    if isinstance(workflow, DAG):
        return _spec_to_proto(workflow.to_spec())
    if isinstance(workflow, Mapping):
        return _spec_to_proto(workflow)
    raise TypeError(
        f"workflow must be a DAG, a spec dict or a WorkflowSpec, got {type(workflow).__name__}"
    )


def _json_object(value: Mapping[str, Any], what: str) -> bytes:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping (a JSON object), got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{what}: keys must be str, got {type(key).__name__} {key!r}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
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
    return _json_object(inputs, "inputs")


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
) -> pb.RunRequest:
    """The ``RunRequest`` message :meth:`EngineClient.run` sends (see there).
    ``result_only`` asks the engine to stream nothing but the final result event;
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
        inputs_json=encode_inputs(inputs),
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
            request.completed_json[node_id] = _json_object(output, f"completed[{node_id!r}]")
    if max_parallel is not None:
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise TypeError(f"max_parallel must be a positive int, got {max_parallel!r}")
        request.max_parallel = max_parallel
    if fail_fast is not None:
        request.fail_fast = bool(fail_fast)
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
    pb.RUN_FINISHED: "run_finished",
}
_RUN_STATUS: dict[int, RunStatus] = {
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


def _decode_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"engine sent invalid JSON for {what}: {exc}") from None
    if not isinstance(value, dict):
        raise EngineError(f"engine sent {type(value).__name__} for {what}, expected an object")
    return value


def _run_status(value: int) -> RunStatus:
    try:
        return _RUN_STATUS[value]
    except KeyError:
        raise EngineError(f"engine sent a run result with unknown status {value}") from None


def event_from_proto(msg: pb.RunEvent) -> NodeEvent:
    """A wire ``RunEvent`` as the :class:`~dagengine.NodeEvent` a local run would produce.

    ``detail`` holds ``error`` (failures), ``delay`` (retries), ``message`` (logs), ``output``
    (``node_succeeded``) and ``status`` (``run_finished``).
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
        detail["output"] = _decode_object(msg.output_json, f"node {msg.node_id!r}'s output")
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
            output=_decode_object(node.output_json, what) if node.output_json else None,
            error=error_info_from_proto(node.error) if node.HasField("error") else None,
            attempts=node.attempts,
            started_at=node.started_at or None,
            finished_at=node.finished_at or None,
        )

    node_results = _LazyMapping(by_id, node_result)

    def output(node_id: str, _: object) -> Any:
        value = node_results[node_id].output
        return value if value is not None else {}

    succeeded = {
        node_id: None for node_id, node in by_id.items() if node.status == pb.NODE_SUCCEEDED_STATUS
    }
    return RunResult(
        run_id=msg.run_id,
        status=_run_status(msg.status),
        outputs=_LazyMapping(succeeded, output),
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
        nodes.append(
            f'{key}:{{"status":"{status.value}","output":{raw or "null"},"error":{error},'
            f'"attempts":{node.attempts},"started_at":{_json_time(node.started_at)},'
            f'"finished_at":{_json_time(node.finished_at)}}}'
        )
    error = _error_json(msg.error) if msg.HasField("error") else "null"
    return (
        f'{{"run_id":{_json_str(msg.run_id)},"status":"{_run_status(msg.status).value}",'
        f'"error":{error},"duration":{_json_float(msg.duration_seconds)},'
        f'"outputs":{{{",".join(outputs)}}},"nodes":{{{",".join(nodes)}}}}}'
    )


def _engine_event(msg: pb.RunEvent) -> EngineEvent:
    return EngineEvent(
        run_id=msg.run_id,
        attempt=msg.attempt,
        engine_id=msg.engine_id,
        event=event_from_proto(msg),
        missed=msg.missed,
        result=result_from_proto(msg.result) if msg.HasField("result") else None,
    )


# --- errors -----------------------------------------------------------------------------------


def _rpc_code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _rpc_details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    if text:
        return str(text)
    code = _rpc_code(err)
    return code.name if code is not None else type(err).__name__


def _map_error(err: grpc.RpcError, address: str, what: str) -> EngineError:
    """The :class:`EngineError` subclass for a failed gRPC call."""
    return _status_error(_rpc_code(err), _rpc_details(err), address, what)


def _status_error(
    code: grpc.StatusCode | None, details: str, address: str, what: str
) -> EngineError:
    """The :class:`EngineError` subclass for a gRPC status (of a call, or of a refusal)."""
    name = code.name if code is not None else None
    prefix = f"engine {address}: {what}: "
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE) and (
        _SIZE_ERROR.search(details)
    ):
        return MessageTooLarge(f"{prefix}message too large: {details}", code=name, address=address)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EngineBusy(prefix + details, code=name, address=address)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(prefix + details, code=name, address=address)
    if code is grpc.StatusCode.UNAVAILABLE:
        return EngineUnavailable(f"{prefix}unavailable: {details}", code=name, address=address)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return EngineUnavailable(
            f"{prefix}no answer in time: {details}", code=name, address=address
        )
    return EngineError(f"{prefix}{name or 'error'}: {details}", code=name, address=address)


def _session_broke(err: grpc.RpcError, address: str) -> EngineUnavailable:
    """The error of every run on a session whose stream failed, reading or writing. The
    engine refuses runs in band, so a status on the stream itself is the transport's:
    whatever its code (grpcio reports a peer that vanished mid-stream as ``UNAVAILABLE``
    or, racing the connection's teardown, ``INTERNAL: Internal error from Core``), the
    runs' fate is unknown and the engine is to be treated as gone."""
    error = _map_error(err, address, "session")
    if isinstance(error, EngineUnavailable):
        return error
    return EngineUnavailable(str(error), code=error.code, address=address)


def _stream_ended(address: str, run_id: str) -> EngineUnavailable:
    return EngineUnavailable(
        f"engine {address}: the stream of run {run_id} ended without its result "
        "(the engine went away)",
        address=address,
    )


# --- the sync client --------------------------------------------------------------------------


def _channel_options(
    tls: TLSConfig | None, max_message_bytes: int, keepalive: float
) -> list[tuple[str, Any]]:
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
        raise TypeError("max_message_bytes must be an int")
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
    if isinstance(keepalive, bool) or not isinstance(keepalive, (int, float)) or keepalive <= 0:
        raise ValueError(f"keepalive must be a positive number of seconds, got {keepalive!r}")
    keepalive_ms = max(int(keepalive * 1000), 100)
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        # The keepalive timeout alone is not enforced by grpc-core for a stream that is open
        # and quiet; the ping timeout is (default: a minute).
        ("grpc.http2.ping_timeout_ms", keepalive_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if tls is not None:
        options.extend(tls.channel_options())
    return options


def _check_size(request: pb.RunRequest, limit: int, address: str) -> int:
    """The request's size in bytes; ``MessageTooLarge`` if over ``limit``."""
    size: int = request.ByteSize()
    if size > limit:
        raise MessageTooLarge(
            f"engine {address}: run {request.run_id}: the request is {size} bytes, over the "
            f"client's max_message_bytes of {limit} (inputs are {len(request.inputs_json)} bytes)",
            address=address,
        )
    return size


#: The session protocol this client speaks, as the engine states it in the ``Session``
#: call's initial metadata (2: batched starts, coalesced replies).
_SESSION_PROTOCOL_HEADER = "dagengine-session-protocol"
_SESSION_PROTOCOL = "2"

#: Bytes a run adds to a ``RunBatch`` or ``SessionRequest`` besides its own: a field tag and
#: a length of up to 5 bytes, twice (the batch in the request, the run in the batch).
_BATCH_OVERHEAD = 12


def _batches(queued: list[tuple[pb.RunRequest, int]], limit: int) -> Iterator[list[pb.RunRequest]]:
    """``queued`` runs in order, grouped into messages of at most ``limit`` bytes (a run
    alone is never split off further: its own size was checked against the limit)."""
    chunk: list[pb.RunRequest] = []
    total = 0
    for request, size in queued:
        if chunk and total + size + _BATCH_OVERHEAD > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(request)
        total += size + _BATCH_OVERHEAD
    if chunk:
        yield chunk


def _ignore_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def _grpc_timeout(deadline_unix: float) -> float | None:
    if not deadline_unix:
        return None
    return max(deadline_unix - time.time(), 0.0) + _DEADLINE_SLACK_SECONDS


def _engine_rpcs(channel: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The callables of ``EngineService`` (Run, Watch, Cancel, Info) and of the standard health
    check on a channel — a grpcio or a grpc.aio one: both bind methods the same way."""
    return (
        channel.unary_stream(
            _SERVICE + "Run",
            request_serializer=pb.RunRequest.SerializeToString,
            response_deserializer=pb.RunEvents.FromString,
        ),
        channel.unary_stream(
            _SERVICE + "Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.RunEvent.FromString,
        ),
        channel.unary_unary(
            _SERVICE + "Cancel",
            request_serializer=pb.CancelRequest.SerializeToString,
            response_deserializer=pb.CancelResponse.FromString,
        ),
        channel.unary_unary(
            _SERVICE + "Info",
            request_serializer=pb.InfoRequest.SerializeToString,
            response_deserializer=pb.EngineInfo.FromString,
        ),
        channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        ),
        channel.unary_unary(
            _SERVICE + "RunToEnd",
            request_serializer=pb.RunRequest.SerializeToString,
            response_deserializer=pb.RunResult.FromString,
        ),
    )


class RunStream(Iterator["NodeEvent | RunResult"]):
    """A run in progress on an engine (:meth:`EngineClient.stream`).

    Iterating yields the run's :class:`~dagengine.NodeEvent` objects in ``seq`` order
    (``run_started`` first, ``run_finished`` last) and then, as the very last item, its
    :class:`~dagengine.RunResult`. A stream that breaks before the result raises
    :class:`EngineUnavailable`. :attr:`result` holds the result once it has arrived;
    :meth:`wait` reads to the end and returns it. Close it (or use ``with``) to drop the call.
    """

    def __init__(self, client: EngineClient, request: pb.RunRequest) -> None:
        self.run_id = request.run_id
        self.result: RunResult | None = None
        self._client = client
        self._pending: RunResult | None = None
        self._batch: collections.deque[pb.RunEvent] = collections.deque()
        self._done = False
        self._call = client._run_rpc(
            request, timeout=_grpc_timeout(request.deadline_unix), wait_for_ready=False
        )

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> NodeEvent | RunResult:
        if self._pending is not None:
            result, self._pending = self._pending, None
            self.result = result
            self._finish()
            return result
        if self._done:
            raise StopIteration
        # Events come in batches (one message per burst); hand them out one at a time.
        while not self._batch:
            try:
                self._batch.extend(next(self._call).events)
            except StopIteration:
                self._done = True
                raise _stream_ended(self._client.address, self.run_id) from None
            except grpc.RpcError as err:
                self._done = True
                raise _map_error(err, self._client.address, f"run {self.run_id}") from None
        msg = self._batch.popleft()
        if msg.HasField("result"):
            self._pending = result_from_proto(msg.result)
        return event_from_proto(msg)

    def wait(self) -> RunResult:
        """Read the rest of the stream and return the run's result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> bool:
        """Ask the engine to cancel the run (the stream then ends with a ``cancelled``
        result); False if the engine has no such run (any more)."""
        return self._client.cancel(self.run_id)

    def close(self) -> None:
        """Drop the call (the run's fate is then up to the engine)."""
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._call.cancel()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream(Iterator[EngineEvent]):
    """Every event of every run on an engine, as it happens (:meth:`EngineClient.watch`).
    Iterate; :meth:`close` (or ``with``) ends the subscription."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._address = address

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> EngineEvent:
        try:
            msg = next(self._call)
        except grpc.RpcError as err:
            if _rpc_code(err) is grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise _map_error(err, self._address, "watch") from None
        return _engine_event(msg)

    def close(self) -> None:
        """End the subscription."""
        self._call.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineClient:
    """A client of one engine, over grpcio (synchronous; see :class:`AsyncEngineClient`).

    ``address`` is ``host:port``; ``tls`` turns on TLS (and mutual TLS with a client
    certificate); ``timeout`` bounds each unary call (:meth:`cancel`, :meth:`info`,
    :meth:`health`) in seconds, ``None`` for no bound (a run is bounded by its ``deadline``);
    ``max_message_bytes`` bounds messages both ways; ``keepalive`` is the seconds between
    pings on an open call (a frozen engine or a dead network path is reported as
    :class:`EngineUnavailable` within about twice that). Thread-safe; close it, or use
    ``with``::

        with EngineClient("localhost:50051") as engine:
            result = engine.run(dag, {"factor": 3})
    """

    def __init__(
        self,
        address: str,
        *,
        tls: TLSConfig | None = None,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise TypeError("address must be a non-empty 'host:port' str")
        self.address = address
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        options = _channel_options(tls, max_message_bytes, keepalive)
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=options)
        (
            self._run_rpc,
            self._watch_rpc,
            self._cancel_rpc,
            self._info_rpc,
            self._health_rpc,
            self._run_to_end_rpc,
        ) = _engine_rpcs(self._channel)

    def stream(
        self,
        workflow: Workflow,
        inputs: Inputs = None,
        *,
        run_id: str | None = None,
        attempt: int = 1,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        deadline: float | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> RunStream:
        """Start a run and follow it: a :class:`RunStream` yielding the run's events, then its
        :class:`~dagengine.RunResult` as the last item. Arguments as for :meth:`run`."""
        request = build_run_request(
            workflow,
            inputs,
            run_id=run_id,
            attempt=attempt,
            completed=completed,
            deadline=deadline,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
        )
        return self.stream_request(request)

    def stream_request(self, request: pb.RunRequest) -> RunStream:
        """Like :meth:`stream`, for a prepared ``RunRequest`` (see :func:`build_run_request`)."""
        _check_size(request, self.max_message_bytes, self.address)
        return RunStream(self, request)

    def run(
        self,
        workflow: Workflow,
        inputs: Inputs = None,
        *,
        run_id: str | None = None,
        attempt: int = 1,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        deadline: float | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> RunResult:
        """Run ``workflow`` on the engine and return its :class:`~dagengine.RunResult`.

        ``workflow`` is a :class:`DAG`, a spec dict or a ``WorkflowSpec`` message;
        ``inputs`` a mapping (or JSON bytes). ``run_id`` defaults to a fresh one;
        ``attempt`` is the fencing number of a re-dispatched run; ``completed`` maps node ids
        to outputs of nodes already done (not run again); ``deadline`` is a unix time by
        which the run must end; ``max_parallel``/``fail_fast`` override the workflow's.

        A failed run is returned, not raised. Raises :class:`InvalidRequest`,
        :class:`EngineBusy`, :class:`EngineUnavailable` (also when the engine dies mid-run),
        :class:`MessageTooLarge` or :class:`EngineError`. On Ctrl-C the run is cancelled on the
        engine (best effort) and ``KeyboardInterrupt`` re-raised.
        """
        # run() only wants the result: one unary call (RunToEnd), no stream of events.
        request = build_run_request(
            workflow,
            inputs,
            run_id=run_id,
            attempt=attempt,
            completed=completed,
            deadline=deadline,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            result_only=True,
        )
        _check_size(request, self.max_message_bytes, self.address)
        call = self._run_to_end_rpc.future(request, timeout=_grpc_timeout(request.deadline_unix))
        try:
            reply = call.result()
        except KeyboardInterrupt:
            call.cancel()  # the engine cancels a run whose caller hung up
            raise
        except grpc.RpcError as err:
            raise _map_error(err, self.address, f"run {request.run_id}") from None
        return result_from_proto(reply)

    def cancel(self, run_id: str) -> bool:
        """Cancel run ``run_id`` on the engine: pending nodes are cancelled, running Lua is
        interrupted; its stream ends with a ``cancelled`` result. False if the engine has no
        active run of that id."""
        try:
            reply = self._cancel_rpc(pb.CancelRequest(run_id=run_id), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _map_error(err, self.address, f"cancel {run_id}") from None
        return bool(reply.found)

    def info(self) -> EngineInfo:
        """The engine's id, version, capacity, active runs, uptime and draining flag."""
        try:
            reply = self._info_rpc(pb.InfoRequest(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _map_error(err, self.address, "info") from None
        return EngineInfo.from_proto(reply)

    def health(self, service: str = "") -> str:
        """The standard gRPC health status: ``SERVING``, ``NOT_SERVING`` (e.g. draining),
        ``SERVICE_UNKNOWN`` (no such service) or ``UNKNOWN``. ``service`` ``""`` is the whole
        server."""
        try:
            reply = self._health_rpc(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError as err:
            if _rpc_code(err) is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise _map_error(err, self.address, "health") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def watch(self) -> EventStream:
        """Subscribe to every event of every run on the engine (for monitors): an
        :class:`EventStream` of :class:`EngineEvent`."""
        return EventStream(self._watch_rpc(pb.WatchRequest()), self.address)

    def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        self._channel.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EngineClient {self.address}>"


# --- the asyncio client -----------------------------------------------------------------------


class AsyncRunStream:
    """The asyncio form of :class:`RunStream`: ``async for`` yields the run's events, then
    its :class:`~dagengine.RunResult`; ``await wait()`` returns the result."""

    def __init__(self, client: AsyncEngineClient, request: pb.RunRequest) -> None:
        self.run_id = request.run_id
        self.result: RunResult | None = None
        self._client = client
        self._pending: RunResult | None = None
        self._batch: collections.deque[pb.RunEvent] = collections.deque()
        self._done = False
        self._call = client._run_rpc(request, timeout=_grpc_timeout(request.deadline_unix))
        self._iter: AsyncIterator[pb.RunEvents] = self._call.__aiter__()

    def __aiter__(self) -> AsyncRunStream:
        return self

    async def __anext__(self) -> NodeEvent | RunResult:
        if self._pending is not None:
            result, self._pending = self._pending, None
            self.result = result
            self._finish()
            return result
        if self._done:
            raise StopAsyncIteration
        while not self._batch:  # events come in batches, one message per burst
            self._batch.extend((await self._next_message()).events)
        msg = self._batch.popleft()
        if msg.HasField("result"):
            self._pending = result_from_proto(msg.result)
        return event_from_proto(msg)

    async def _next_message(self) -> pb.RunEvents:
        """The next message of the stream; a stream that ends (or fails) before the result
        is an engine gone (or the error it sent)."""
        try:
            return await self._iter.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise _stream_ended(self._client.address, self.run_id) from None
        except grpc.RpcError as err:
            self._done = True
            raise _map_error(err, self._client.address, f"run {self.run_id}") from None

    async def wait(self) -> RunResult:
        """Read the rest of the stream and return the run's result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> bool:
        """Ask the engine to cancel the run; False if it has no such run (any more)."""
        return await self._client.cancel(self.run_id)

    def close(self) -> None:
        """Drop the call."""
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


class SessionRun:
    """One run of an :class:`AsyncEngineSession`: :meth:`batches` yields its events as they
    come off the wire (the last batch carries the result, then set as :attr:`result`)."""

    def __init__(self, session: AsyncEngineSession, run_id: str) -> None:
        self.run_id = run_id
        self.result: RunResult | None = None
        self._session = session
        self._pending: collections.deque[pb.SessionEvents] = collections.deque()
        self._error: EngineError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _deliver(self, msg: pb.SessionEvents) -> None:
        self._pending.append(msg)
        self._wake()

    def _fail(self, error: EngineError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def batches(self) -> AsyncIterator[Sequence[pb.RunEvent]]:
        """The run's events, one sequence per message, until the one with the result.
        Raises the engine's refusal (:class:`EngineBusy`, :class:`InvalidRequest`, ...) or
        :class:`EngineUnavailable` when the session breaks first."""
        while self.result is None:
            while not self._pending:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
            msg = self._pending.popleft()
            if msg.HasField("refused"):
                self._session._forget(self.run_id)
                code = _STATUS_BY_CODE.get(msg.refused.code)
                raise _status_error(
                    code, msg.refused.message, self._session.address, f"run {self.run_id}"
                )
            for event in msg.events:
                if event.HasField("result"):
                    self.result = result_from_proto(event.result)
                    self._session._forget(self.run_id)
            yield msg.events

    def close(self) -> None:
        """Stop listening to the run (the engine is presumed gone): :meth:`batches` raises
        :class:`EngineUnavailable`. The run itself is not cancelled (see ``Cancel``)."""
        self._session._forget(self.run_id)
        self._fail(
            EngineUnavailable(
                f"engine {self._session.address}: run {self.run_id}: no longer listened to",
                address=self._session.address,
            )
        )


class AsyncEngineSession:
    """Many runs over one ``Session`` stream of an engine: no gRPC call per run, which is
    most of what a run costs its caller (the orchestrator's path to its engines). Open it
    with :meth:`AsyncEngineClient.session`, inside the loop that uses it. Once the stream
    breaks every run still on it fails with :class:`EngineUnavailable`, and so does every
    later :meth:`start` (open another session)."""

    def __init__(self, client: AsyncEngineClient) -> None:
        self.address = client.address
        self._client = client
        self._call = client._session_rpc()
        self._runs: dict[str, SessionRun] = {}
        self._writing = asyncio.Lock()  # grpc.aio allows one write at a time
        # Runs started while a write is in flight go out together in the next one: a write
        # costs its caller far more than the bytes in it.
        self._queued: list[tuple[pb.RunRequest, int]] = []  # with their sizes
        self._batches = 0  # batches written (or being written) so far
        self._broken: EngineError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def broken(self) -> bool:
        """Whether the stream has ended (nothing more can run on it)."""
        return self._broken is not None

    async def start(self, request: pb.RunRequest) -> SessionRun:
        """Send a run; its events come through the returned :class:`SessionRun`. If the
        caller is cancelled here, the run is cancelled too (taken out of the batch it was
        waiting in, or cancelled on the engine once sent)."""
        if self._broken is not None:
            raise self._broken
        size = _check_size(request, self._client.max_message_bytes, self.address)
        if request.run_id in self._runs:
            raise InvalidRequest(
                f"engine {self.address}: run {request.run_id} is already on this session",
                address=self.address,
            )
        run = self._runs[request.run_id] = SessionRun(self, request.run_id)
        self._queued.append((request, size))
        batch = self._batches + 1  # the write this request goes out in
        try:
            await self._writing.acquire()
        except asyncio.CancelledError:
            self._abandon(request)
            raise
        if self._batches >= batch:  # it went out with an earlier caller's write
            self._writing.release()
        else:
            try:
                # The runs started in this turn of the loop come along (1,550 -> 1,250
                # writes for 6,200 runs at 64 in flight over three engines).
                await asyncio.sleep(0)
            except BaseException:  # cancelled, in practice
                self._writing.release()  # the next writer takes the queue, or nobody needs to
                self._abandon(request)
                raise
            queued, self._queued = self._queued, []
            self._batches += 1
            # The write is a task of its own: if this caller is cancelled, the others'
            # runs in it still go out (cancelling a grpc.aio write cancels the whole call),
            # and the lock is released when it ends.
            write = asyncio.ensure_future(self._write_runs(queued))
            write.add_done_callback(self._written)
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                self._abandon(request)
                raise
        if self._broken is not None and request.run_id not in self._runs:
            # The write that carried it (someone else's) failed and broke the session.
            raise self._broken
        return run

    async def _write_runs(self, queued: list[tuple[pb.RunRequest, int]]) -> None:
        """Send queued runs, as few messages as the size limit allows; a failed write
        breaks the session (every run on it fails)."""
        try:
            for chunk in _batches(queued, self._client.max_message_bytes):
                await self._call.write(
                    pb.SessionRequest(run=chunk[0])
                    if len(chunk) == 1
                    else pb.SessionRequest(runs=pb.RunBatch(runs=chunk))
                )
        except (grpc.RpcError, asyncio.InvalidStateError) as err:
            error = (
                _session_broke(err, self.address)
                if isinstance(err, grpc.RpcError)
                else EngineUnavailable(f"engine {self.address}: the session has ended")
            )
            self._break(error)
            raise error from None

    def _written(self, write: asyncio.Future[None]) -> None:
        self._writing.release()
        _ignore_outcome(write)  # a caller that was cancelled meanwhile never retrieves it

    def _abandon(self, request: pb.RunRequest) -> None:
        """The caller of ``start`` gave up: take the run out of the queue, or, if it went
        out already, cancel it on the engine. Either way this session forgets it."""
        for i, (queued, _) in enumerate(self._queued):
            if queued is request:
                del self._queued[i]
                self._forget(request.run_id)
                return
        self._forget(request.run_id)
        if self._broken is None:
            task = asyncio.ensure_future(self.cancel(request.run_id))
            task.add_done_callback(_ignore_outcome)

    async def cancel(self, run_id: str) -> None:
        """Ask the engine to cancel a run of this session (no answer: see ``Cancel``). It
        goes out after every start sent before it."""
        if self._broken is not None:
            return
        await self._writing.acquire()
        write = asyncio.ensure_future(
            self._call.write(pb.SessionRequest(cancel=pb.CancelRequest(run_id=run_id)))
        )
        write.add_done_callback(self._written)
        await asyncio.shield(write)

    def close(self) -> None:
        """End the session: the engine cancels the runs still on it; they fail here with
        :class:`EngineUnavailable`."""
        self._break(EngineUnavailable(f"engine {self.address}: the session was closed"))
        self._call.cancel()

    def _forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def _break(self, error: EngineError) -> None:
        if self._broken is None:
            self._broken = error
        runs, self._runs = self._runs, {}
        for run in runs.values():
            run._fail(error)

    async def _read(self) -> None:
        error: EngineError
        try:
            metadata = await self._call.initial_metadata()
            value = dict(metadata or ()).get(_SESSION_PROTOCOL_HEADER)
            spoken = value.decode() if isinstance(value, bytes) else value
            if spoken != _SESSION_PROTOCOL and not self._call.done():  # (done: it failed)
                # An engine of another dagengine version: it would not understand batched
                # starts, or we its replies. Fail the runs now rather than wait for them.
                self._break(
                    EngineUnavailable(
                        f"engine {self.address} speaks session protocol {spoken or '1'}, "
                        f"this client {_SESSION_PROTOCOL}: run the same dagengine version on "
                        "engines and orchestrator",
                        address=self.address,
                    )
                )
                self._call.cancel()
                return
            async for replies in self._call:
                for msg in replies.runs:
                    run = self._runs.get(msg.run_id)
                    if run is not None:
                        run._deliver(msg)
            error = EngineUnavailable(
                f"engine {self.address}: the session ended", address=self.address
            )
        except grpc.RpcError as err:
            error = _session_broke(err, self.address)
        except asyncio.CancelledError:
            error = EngineUnavailable(f"engine {self.address}: the session was closed")
        self._break(error)


class AsyncEventStream:
    """The asyncio form of :class:`EventStream`."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._iter: AsyncIterator[pb.RunEvent] = call.__aiter__()
        self._address = address

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        try:
            msg = await self._iter.__anext__()
        except grpc.RpcError as err:
            if _rpc_code(err) is grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise _map_error(err, self._address, "watch") from None
        return _engine_event(msg)

    def close(self) -> None:
        """End the subscription."""
        self._call.cancel()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncEngineClient:
    """:class:`EngineClient` for asyncio, over ``grpc.aio``: the same methods, awaitable
    (:meth:`stream` and :meth:`watch` return ``async for`` iterators). Create and use it
    inside one running event loop; ``async with`` closes it."""

    def __init__(
        self,
        address: str,
        *,
        tls: TLSConfig | None = None,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise TypeError("address must be a non-empty 'host:port' str")
        self.address = address
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        options = _channel_options(tls, max_message_bytes, keepalive)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(address, tls.credentials(), options=options)
        (
            self._run_rpc,
            self._watch_rpc,
            self._cancel_rpc,
            self._info_rpc,
            self._health_rpc,
            self._run_to_end_rpc,
        ) = _engine_rpcs(self._channel)
        self._session_rpc = self._channel.stream_stream(
            _SERVICE + "Session",
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionReplies.FromString,
        )

    def session(self) -> AsyncEngineSession:
        """A new :class:`AsyncEngineSession`: many runs over one stream (call it inside
        the running loop)."""
        return AsyncEngineSession(self)

    def stream(
        self,
        workflow: Workflow,
        inputs: Inputs = None,
        *,
        run_id: str | None = None,
        attempt: int = 1,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        deadline: float | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> AsyncRunStream:
        """Start a run: an :class:`AsyncRunStream` (see :meth:`EngineClient.stream`)."""
        request = build_run_request(
            workflow,
            inputs,
            run_id=run_id,
            attempt=attempt,
            completed=completed,
            deadline=deadline,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
        )
        return self.stream_request(request)

    def stream_request(self, request: pb.RunRequest) -> AsyncRunStream:
        """Like :meth:`stream`, for a prepared ``RunRequest``."""
        _check_size(request, self.max_message_bytes, self.address)
        return AsyncRunStream(self, request)

    async def run(
        self,
        workflow: Workflow,
        inputs: Inputs = None,
        *,
        run_id: str | None = None,
        attempt: int = 1,
        completed: Mapping[str, Mapping[str, Any]] | None = None,
        deadline: float | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> RunResult:
        """Run ``workflow`` on the engine (see :meth:`EngineClient.run`). Cancelling the
        awaiting task cancels the run on the engine (best effort)."""
        # run() only wants the result: one unary call (RunToEnd), no stream of events.
        request = build_run_request(
            workflow,
            inputs,
            run_id=run_id,
            attempt=attempt,
            completed=completed,
            deadline=deadline,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            result_only=True,
        )
        _check_size(request, self.max_message_bytes, self.address)
        try:
            # Cancelling this task cancels the call, and the engine the run.
            reply = await self._run_to_end_rpc(
                request, timeout=_grpc_timeout(request.deadline_unix)
            )
        except grpc.RpcError as err:
            raise _map_error(err, self.address, f"run {request.run_id}") from None
        return result_from_proto(reply)

    async def cancel(self, run_id: str) -> bool:
        """See :meth:`EngineClient.cancel`."""
        try:
            reply = await self._cancel_rpc(pb.CancelRequest(run_id=run_id), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _map_error(err, self.address, f"cancel {run_id}") from None
        return bool(reply.found)

    async def info(self) -> EngineInfo:
        """See :meth:`EngineClient.info`."""
        try:
            reply = await self._info_rpc(pb.InfoRequest(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _map_error(err, self.address, "info") from None
        return EngineInfo.from_proto(reply)

    async def health(self, service: str = "") -> str:
        """See :meth:`EngineClient.health`."""
        try:
            reply = await self._health_rpc(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError as err:
            if _rpc_code(err) is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise _map_error(err, self.address, "health") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def watch(self) -> AsyncEventStream:
        """See :meth:`EngineClient.watch`."""
        return AsyncEventStream(self._watch_rpc(pb.WatchRequest()), self.address)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncEngineClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncEngineClient {self.address}>"


# --- the engine process -----------------------------------------------------------------------


def _no_orchestrator(sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
    raise SubWorkflowError(
        f"sub-workflow node {ctx.node_id!r} needs an orchestrator to run {sub.reference}, and "
        "this engine has none (set ORCHESTRATOR_ADDRESS)",
        node_id=ctx.node_id,
        reference=sub.reference,
    )


class OrchestratorSubWorkflowRunner:
    """Runs a sub-workflow node's child through the orchestrator's ``RunSubWorkflow``.

    The child's inputs are the node's run inputs with each parent's output added under the
    parent's id; the node's output is the child's outputs (node id -> output). The call is
    abandoned when the node is cancelled or times out (``ctx.cancelled``).
    """

    def __init__(
        self, address: str, *, tls: TLSConfig | None = None, token: str | None = None
    ) -> None:
        self.address = address
        self._metadata = _bearer(token)
        options = _channel_options(tls, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_KEEPALIVE_SECONDS)
        self._channel = (
            grpc.insecure_channel(address, options=options)
            if tls is None
            else grpc.secure_channel(address, tls.credentials(), options=options)
        )
        self._rpc = self._channel.unary_unary(
            "/dagengine.v1.OrchestratorService/RunSubWorkflow",
            request_serializer=pb.SubWorkflowRequest.SerializeToString,
            response_deserializer=pb.SubWorkflowResponse.FromString,
        )

    def __call__(self, sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
        inputs = subworkflow_inputs(ctx)
        request = pb.SubWorkflowRequest(
            parent_run_id=ctx.run_id,
            parent_node_id=ctx.node_id,
            workflow_id=sub.workflow_id,
            version_range=sub.version_range,
            inputs_json=_json_object(inputs, "sub-workflow inputs"),
        )
        future = self._rpc.future(request, metadata=self._metadata)
        try:
            while True:
                try:
                    reply = future.result(timeout=0.1)
                    break
                except grpc.FutureTimeoutError:
                    if ctx.cancelled:
                        future.cancel()
                        raise SubWorkflowError(
                            f"sub-workflow node {ctx.node_id!r} was cancelled",
                            node_id=ctx.node_id,
                            reference=sub.reference,
                        ) from None
        except grpc.RpcError as err:
            raise SubWorkflowError(
                f"sub-workflow node {ctx.node_id!r}: orchestrator {self.address}: "
                f"{_rpc_details(err)}",
                node_id=ctx.node_id,
                reference=sub.reference,
            ) from None
        if reply.status != pb.SUCCEEDED:
            status = _RUN_STATUS.get(reply.status, RunStatus.FAILED).value
            reason = f": {error_info_from_proto(reply.error)}" if reply.HasField("error") else ""
            raise SubWorkflowError(
                f"sub-workflow {sub.reference} (run {reply.run_id}) {status}{reason}",
                node_id=ctx.node_id,
                reference=sub.reference,
            )
        return _decode_object(reply.outputs_json or b"{}", "the sub-workflow's outputs")


def subworkflow_runner_from_env(env: Mapping[str, str] | None = None) -> SubWorkflowRunner:
    """How this engine runs sub-workflow nodes: through the orchestrator at
    ``ORCHESTRATOR_ADDRESS`` (``host:port``; TLS and token from
    :func:`orchestrator_credentials_from_env`), or, without one, failing such nodes with a
    :class:`~dagengine.SubWorkflowError` that says so."""
    address = (os.environ if env is None else env).get("ORCHESTRATOR_ADDRESS", "").strip()
    if not address:
        return _no_orchestrator
    tls, token = orchestrator_credentials_from_env(env)
    return OrchestratorSubWorkflowRunner(address, tls=tls, token=token)


#: The environment variables an engine reads to call its orchestrator's gRPC service.
ORCHESTRATOR_TOKEN_ENV = "DAGENGINE_ORCHESTRATOR_TOKEN"
_ORCHESTRATOR_TLS_ENV = {
    "ca_cert": "DAGENGINE_ORCHESTRATOR_TLS_CA",
    "client_cert": "DAGENGINE_ORCHESTRATOR_TLS_CERT",
    "client_key": "DAGENGINE_ORCHESTRATOR_TLS_KEY",
    "server_name": "DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME",
}


def orchestrator_credentials_from_env(
    env: Mapping[str, str] | None = None,
) -> tuple[TLSConfig | None, str | None]:
    """How an engine calls the orchestrator's ``OrchestratorService`` (self-registration,
    sub-workflows), from ``env`` (default: ``os.environ``): TLS when
    ``DAGENGINE_ORCHESTRATOR_TLS_CA`` (the CA that signed the orchestrator's certificate)
    or ``DAGENGINE_ORCHESTRATOR_TLS_CERT`` + ``_KEY`` (a client certificate, for mutual TLS)
    are set, with ``DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME`` overriding the name checked;
    and the bearer token ``DAGENGINE_ORCHESTRATOR_TOKEN``. Empty variables count as unset.
    Raises :class:`EngineStartError` naming the variable for a certificate without its key."""
    environ = os.environ if env is None else env
    values = {
        key: environ.get(name, "").strip() or None for key, name in _ORCHESTRATOR_TLS_ENV.items()
    }
    token = environ.get(ORCHESTRATOR_TOKEN_ENV, "").strip() or None
    if (values["client_cert"] is None) != (values["client_key"] is None):
        given, missing = (
            ("client_cert", "client_key")
            if values["client_key"] is None
            else ("client_key", "client_cert")
        )
        raise EngineStartError(
            f"{_ORCHESTRATOR_TLS_ENV[given]} is set but {_ORCHESTRATOR_TLS_ENV[missing]} is "
            "not: a client certificate needs its key"
        )
    if values["ca_cert"] is None and values["client_cert"] is None:
        return None, token
    return TLSConfig(**values), token


def _bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata carrying ``token`` (``authorization: Bearer <token>``)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def split_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port; raises ``ValueError``
    when it is not one."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # a bare IPv6 address needs brackets to carry a port
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
    if not sep or not host or not 0 < port < 65536 or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not host:port (e.g. engine-1:50051 or [::1]:50051)")
    return host, port


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def advertise_address(host: str, port: int, orchestrator: str | None = None) -> str:
    """The ``host:port`` an engine listening on ``host``:``port`` tells the orchestrator to
    dial: ``host`` itself when it is a concrete address; for a wildcard (``0.0.0.0``, ``::``)
    the local IP address the route to ``orchestrator`` leaves from (no packet is sent), else
    the IP address of this machine's host name, else the host name."""
    if host not in _WILDCARD_HOSTS:
        return _join_host_port(host.strip("[]"), port)
    if orchestrator:
        with contextlib.suppress(OSError, ValueError):
            target_host, target_port = split_address(orchestrator)
            family = socket.AF_INET6 if ":" in target_host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target_host, target_port))
                local = str(probe.getsockname()[0])
            if local not in _WILDCARD_HOSTS:
                return _join_host_port(local, port)
    name = socket.gethostname()
    try:
        return _join_host_port(socket.gethostbyname(name), port)
    except OSError:
        return _join_host_port(name, port)


#: Trailing metadata key carrying why ``RegisterEngine`` answered ``accepted=false``.
REFUSAL_REASON_KEY = "dagengine-refusal-reason"


class SelfRegistrar:
    """Keeps an engine registered with an orchestrator (``OrchestratorService.
    RegisterEngine``): registers at :meth:`start`, then again every
    ``heartbeat_interval_seconds`` the orchestrator answers with. While the orchestrator is
    unreachable it retries with exponential backoff (``backoff_initial`` doubling up to
    ``backoff_max`` seconds); a refusal is logged with the orchestrator's reason and retried
    at the heartbeat interval. Problems are logged once per change of state (``log`` gets
    one line each), not once per attempt. :meth:`stop` ends it (the engine is draining)."""

    def __init__(
        self,
        orchestrator: str,
        engine_id: str,
        address: str,
        capacity: int,
        version: str = "",
        *,
        tls: TLSConfig | None = None,
        token: str | None = None,
        log: Callable[[str], None] | None = None,
        call_timeout: float = 5.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self.orchestrator = orchestrator
        self.request = pb.RegisterEngineRequest(
            engine_id=engine_id, address=address, capacity=capacity, version=version
        )
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._metadata = _bearer(token)
        self._call_timeout = call_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        options = _channel_options(tls, 4 * MiB, DEFAULT_KEEPALIVE_SECONDS)
        self._channel = (
            grpc.insecure_channel(orchestrator, options=options)
            if tls is None
            else grpc.secure_channel(orchestrator, tls.credentials(), options=options)
        )
        self._rpc = self._channel.unary_unary(
            "/dagengine.v1.OrchestratorService/RegisterEngine",
            request_serializer=pb.RegisterEngineRequest.SerializeToString,
            response_deserializer=pb.RegisterEngineResponse.FromString,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ""  # the last state logged
        self._delay = 0.0  # the current retry backoff
        #: Accepted registrations so far (heartbeats included).
        self.registrations = 0
        #: Whether the last attempt was accepted.
        self.registered = False

    def start(self) -> SelfRegistrar:
        """Register now (in the background) and keep heartbeating."""
        if self._thread is not None:
            raise RuntimeError("self-registration already started")
        self._thread = threading.Thread(
            target=self._run, name="dagengine-self-registration", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop heartbeating (the orchestrator drops the engine when its registration
        expires, or sooner when its health checks see it draining or gone)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._channel.close()

    def _note(self, state: str, line: str) -> None:
        if state != self._state:
            self._state = state
            self._log(line)

    def register_once(self) -> float:
        """One ``RegisterEngine`` call; returns the seconds to wait before the next one."""
        who = f"engine {self.request.engine_id} ({self.request.address})"
        try:
            reply, call = self._rpc.with_call(
                self.request, timeout=self._call_timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            self.registered = False
            code = _rpc_code(err)
            name = code.name if code is not None else "UNKNOWN"
            self._delay = (
                min(self._delay * 2, self._backoff_max) if self._delay else self._backoff_initial
            )
            self._note(
                f"error:{name}:{_rpc_details(err)}",
                f"dagengine {who}: cannot register with orchestrator {self.orchestrator} "
                f"({name}: {_rpc_details(err)}); retrying with backoff up to "
                f"{self._backoff_max:g}s",
            )
            return self._delay
        self._delay = 0.0
        interval = reply.heartbeat_interval_seconds
        if not interval > 0 or interval != interval:
            interval = 10.0
        interval = min(max(interval, 0.05), 3600.0)
        if not reply.accepted:
            self.registered = False
            reason = ""
            for key, value in call.trailing_metadata() or ():
                if key == REFUSAL_REASON_KEY:
                    reason = value if isinstance(value, str) else value.decode()
            self._note(
                f"refused:{reason}",
                f"dagengine {who}: orchestrator {self.orchestrator} refused the registration: "
                f"{reason or 'no reason given'}; retrying every {interval:g}s",
            )
            return interval
        self.registered = True
        self.registrations += 1
        self._note(
            "registered",
            f"dagengine {who}: registered with orchestrator {self.orchestrator} "
            f"(heartbeat every {interval:g}s)",
        )
        return interval

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.register_once()
            except Exception as exc:  # never let the heartbeat thread die
                self._note(f"bug:{exc}", f"dagengine: self-registration failed: {exc!r}")
                wait = self._backoff_max
            if self._stop.wait(wait):
                return


class _Resolver:
    """``resolve(kind, reference)`` for the core: python import paths and sub-workflow
    references, each resolved once per engine (a class is instantiated once)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, reference: str) -> Any:
        key = (kind, reference)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        value = self._resolve(kind, reference)
        with self._lock:
            return self._cache.setdefault(key, value)

    def _resolve(self, kind: str, reference: str) -> Any:
        from dagengine.spec import _Ctx, _parse_workflow_ref, resolve_import_path

        if kind == "python":
            return resolve_import_path(reference).fn
        if kind == "workflow":
            return _parse_workflow_ref(_Ctx(None), reference, "workflow")
        raise ImportPathError(f"unknown node kind {kind!r} for reference {reference!r}")


def _import_modules(modules: Iterable[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise EngineStartError(
                f"--import {name}: cannot import: {type(exc).__name__}: {exc}"
            ) from exc


#: Set by ``dagengine serve`` for the engine processes it starts (to its own pid): such an
#: engine drains and exits when that process is gone, even if it was killed with SIGKILL.
PARENT_PID_ENV = "DAGENGINE_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_pid_from_env() -> int | None:
    # Taken out of the environment: it is about this process, not the ones it starts.
    text = os.environ.pop(PARENT_PID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 1:
        raise EngineStartError(f"{PARENT_PID_ENV}={text!r}: expected the parent's process id")
    return int(text)


def _watch_parent(parent_pid: int, gone: Callable[[], None]) -> None:
    """Call ``gone`` (from another thread, or at once) when process ``parent_pid`` -- this
    process's parent -- is gone.

    On Linux the kernel sends this process SIGTERM when the parent dies (``PR_SET_PDEATHSIG``,
    set here in the child; strictly, when the parent's *thread* that started this process
    ends -- ``dagengine serve`` starts its engines from its main thread). Then, and
    everywhere: a daemon thread reads stdin until EOF when it is a pipe (the parent holds its
    write end; the kernel closes it when the parent dies, however it dies), else polls
    :func:`os.getppid`. A parent already gone before any of this was armed is seen by the
    first ``getppid`` check (this process was re-parented).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        gone()
        return
    try:
        import stat

        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        stdin_is_pipe = False

    def watch() -> None:
        if stdin_is_pipe:
            with contextlib.suppress(OSError):
                while os.read(0, 4096):
                    pass
        else:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
        gone()

    threading.Thread(target=watch, name="dagengine-parent-watch", daemon=True).start()


def serve_engine(
    engine_id: str | None = None,
    host: str = "0.0.0.0",
    port: int = 50051,
    capacity: int = 10,
    imports: Sequence[str] = (),
    *,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    tls_client_ca: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    drain_grace: float = 25.0,
    subworkflow_runner: SubWorkflowRunner | None = None,
    orchestrator_address: str | None = None,
    self_register: bool = False,
    advertise: str | None = None,
    orchestrator_tls: TLSConfig | None = None,
    orchestrator_token: str | None = None,
    parent_pid: int | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run an engine in this process until SIGTERM/SIGINT; return the exit code (0).

    Imports ``imports`` (modules whose import registers or warms up node code), starts the
    core's gRPC server, prints one line ``dagengine engine <id> listening on <host>:<port>``
    to stdout, and waits. On SIGTERM or SIGINT it drains: new runs are refused
    (``UNAVAILABLE``, health ``NOT_SERVING``), running ones get ``drain_grace`` seconds to
    finish, the rest are cancelled; then the server stops. Python nodes resolve their
    ``module:function`` import paths in this process; sub-workflow nodes go through
    ``subworkflow_runner`` (default: ``RunSubWorkflow`` on the orchestrator at
    ``orchestrator_address``, else :func:`subworkflow_runner_from_env`).

    With ``self_register`` the engine registers with that orchestrator right after it
    starts, as ``advertise`` (``host:port``; default: see :func:`advertise_address`), and
    keeps heartbeating (:class:`SelfRegistrar`) until it drains. Calls to the orchestrator
    use ``orchestrator_tls`` and send ``orchestrator_token`` (each defaults to
    :func:`orchestrator_credentials_from_env`).

    With ``parent_pid`` (default: ``DAGENGINE_PARENT_PID`` from the environment, which
    ``dagengine serve`` sets for the engines it starts) the engine also drains and exits when
    that process, its parent, is gone -- even killed with SIGKILL (see :func:`_watch_parent`).

    Must run on the main thread (it installs signal handlers). Raises
    :class:`EngineStartError` if a module does not import or the server cannot start.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    engine_id = engine_id or os.environ.get("ENGINE_ID") or socket.gethostname()
    if parent_pid is None:
        parent_pid = _parent_pid_from_env()
    if orchestrator_address is None:
        orchestrator_address = os.environ.get("ORCHESTRATOR_ADDRESS", "").strip() or None
    if self_register and orchestrator_address is None:
        raise EngineStartError(
            "self-registration needs the orchestrator's address (--orchestrator HOST:PORT or "
            "ORCHESTRATOR_ADDRESS)"
        )
    for what, value in (("orchestrator", orchestrator_address), ("advertise", advertise)):
        if value is not None:
            try:
                split_address(value)
            except ValueError as exc:
                raise EngineStartError(f"{what} address: {exc}") from None
    if orchestrator_address is not None and (
        orchestrator_tls is None or orchestrator_token is None
    ):
        env_tls, env_token = orchestrator_credentials_from_env()
        orchestrator_tls = orchestrator_tls or env_tls
        orchestrator_token = orchestrator_token or env_token
    _import_modules(imports)
    if subworkflow_runner is not None:
        runner = subworkflow_runner
    elif orchestrator_address is not None:
        runner = OrchestratorSubWorkflowRunner(
            orchestrator_address, tls=orchestrator_tls, token=orchestrator_token
        )
    else:
        runner = _no_orchestrator
    server = _core.EngineServerRef(
        engine_id,
        _make_invoke(None, runner),
        _Resolver(),
        host=host,
        port=port,
        capacity=capacity,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        max_message_bytes=max_message_bytes,
    )
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if parent_pid is not None:

        def parent_gone() -> None:
            received.append("parent exited")
            stop.set()

        _watch_parent(parent_pid, parent_gone)
    registrar: SelfRegistrar | None = None
    try:
        print(f"dagengine engine {engine_id} listening on {host}:{server.port}", file=out)
        out.flush()
        if self_register and orchestrator_address is not None:
            from dagengine import __version__

            registrar = SelfRegistrar(
                orchestrator_address,
                engine_id,
                advertise or advertise_address(host, server.port, orchestrator_address),
                capacity,
                __version__,
                tls=orchestrator_tls,
                token=orchestrator_token,
                log=lambda line: print(line, file=err, flush=True),
            ).start()
        # The wait releases the GIL in the core and returns often enough for the signal
        # handler (which only runs on this thread, between calls) to be seen promptly.
        while not stop.is_set():
            if server.wait_stopped(0.2):
                print(f"dagengine engine {engine_id}: server stopped", file=err)
                return 1
        if registrar is not None:
            registrar.stop()
        print(
            f"dagengine engine {engine_id}: {received[0]}: draining "
            f"(refusing new runs, {drain_grace:g}s grace for running ones)",
            file=err,
            flush=True,
        )
        cancelled = server.drain(drain_grace)
        server.stop()
        server.wait_stopped(10.0)
        print(
            f"dagengine engine {engine_id}: stopped; {cancelled} run(s) cancelled at the end "
            "of the grace period",
            file=err,
            flush=True,
        )
        return 0
    finally:
        if registrar is not None:
            registrar.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()

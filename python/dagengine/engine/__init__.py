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

The package's modules, along its seams (what callers use is re-exported here):

* ``client``: the sync client, over grpcio (:class:`EngineClient`, :class:`RunStream`,
  :class:`EventStream`); ``aio``: the asyncio client, over ``grpc.aio``
  (:class:`AsyncEngineClient`, :class:`AsyncRunStream`, :class:`AsyncEventStream`);
* ``session``: the ``Session`` client, many runs over one stream, driven from Rust
  (:func:`open_session`);
* ``process``: the engine process (:func:`serve_engine`); ``registration``: the engine's calls
  to its orchestrator (:class:`SelfRegistrar`, sub-workflows, credentials);
* ``address``: ``host:port`` parsing, shared with the orchestrator's discovery;
* private: ``_wire`` (conversions to and from the ``dagengine.v1`` messages), ``_errors``
  (gRPC statuses to :class:`~dagengine.EngineError` classes), ``_tls`` (TLS material),
  ``_channel`` (channel options, size checks, the service's methods on a channel).
"""

from __future__ import annotations

from dagengine.engine._channel import DEFAULT_KEEPALIVE_SECONDS, DEFAULT_MAX_MESSAGE_BYTES
from dagengine.engine._errors import refusal_error, session_ended_error
from dagengine.engine._tls import PemSource, TLSConfig
from dagengine.engine._wire import (
    EngineEvent,
    EngineInfo,
    Inputs,
    Workflow,
    build_run_request,
    encode_inputs,
    encoded_workflow_field,
    error_info_from_proto,
    event_from_proto,
    result_from_proto,
    result_json_from_proto,
    workflow_to_proto,
)
from dagengine.engine.address import join_address, split_address
from dagengine.engine.aio import AsyncEngineClient, AsyncEventStream, AsyncRunStream
from dagengine.engine.client import EngineClient, EventStream, RunStream
from dagengine.engine.process import PARENT_PID_ENV, serve_engine
from dagengine.engine.registration import (
    ORCHESTRATOR_TOKEN_ENV,
    REFUSAL_REASON_KEY,
    OrchestratorSubWorkflowRunner,
    SelfRegistrar,
    advertise_address,
    orchestrator_credentials_from_env,
    subworkflow_runner_from_env,
)
from dagengine.engine.session import EngineSession, open_session

__all__ = [
    "DEFAULT_KEEPALIVE_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ORCHESTRATOR_TOKEN_ENV",
    "PARENT_PID_ENV",
    "REFUSAL_REASON_KEY",
    "AsyncEngineClient",
    "AsyncEventStream",
    "AsyncRunStream",
    "EngineClient",
    "EngineEvent",
    "EngineInfo",
    "EngineSession",
    "EventStream",
    "Inputs",
    "OrchestratorSubWorkflowRunner",
    "PemSource",
    "RunStream",
    "SelfRegistrar",
    "TLSConfig",
    "Workflow",
    "advertise_address",
    "build_run_request",
    "encode_inputs",
    "encoded_workflow_field",
    "error_info_from_proto",
    "event_from_proto",
    "join_address",
    "open_session",
    "orchestrator_credentials_from_env",
    "refusal_error",
    "result_from_proto",
    "result_json_from_proto",
    "serve_engine",
    "session_ended_error",
    "split_address",
    "subworkflow_runner_from_env",
    "workflow_to_proto",
]

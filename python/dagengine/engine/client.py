"""The synchronous engine client, over grpcio: :class:`EngineClient`, and the streams it
returns (:class:`RunStream`, :class:`EventStream`)."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from dagengine.engine._channel import (
    DEFAULT_KEEPALIVE_SECONDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    channel_options,
    check_size,
    engine_rpcs,
    grpc_timeout,
)
from dagengine.engine._errors import map_rpc_error, rpc_code, stream_ended
from dagengine.engine._tls import TLSConfig
from dagengine.engine._wire import (
    EngineEvent,
    EngineInfo,
    Inputs,
    Workflow,
    build_run_request,
    engine_event_from_proto,
    event_from_proto,
    result_from_proto,
)
from dagengine.results import NodeEvent, RunResult
from dagengine.v1 import engine_pb2 as pb

__all__ = ["EngineClient", "EventStream", "RunStream"]


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
            request, timeout=grpc_timeout(request.deadline_unix), wait_for_ready=False
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
                raise stream_ended(self._client.address, self.run_id) from None
            except grpc.RpcError as err:
                self._done = True
                raise map_rpc_error(err, self._client.address, f"run {self.run_id}") from None
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
            if rpc_code(err) is grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise map_rpc_error(err, self._address, "watch") from None
        return engine_event_from_proto(msg)

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
        options = channel_options(tls, max_message_bytes, keepalive)
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
        ) = engine_rpcs(self._channel)

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
        trace_context: Mapping[str, str] | None = None,
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
            trace_context=trace_context,
        )
        return self.stream_request(request)

    def stream_request(self, request: pb.RunRequest) -> RunStream:
        """Like :meth:`stream`, for a prepared ``RunRequest`` (see :func:`build_run_request`)."""
        check_size(request, self.max_message_bytes, self.address)
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
        trace_context: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run ``workflow`` on the engine and return its :class:`~dagengine.RunResult`.

        ``workflow`` is a :class:`DAG`, a spec dict or a ``WorkflowSpec`` message;
        ``inputs`` a mapping (or JSON bytes). ``run_id`` defaults to a fresh one;
        ``attempt`` is the fencing number of a re-dispatched run; ``completed`` maps node ids
        to outputs of nodes already done (not run again); ``deadline`` is a unix time by
        which the run must end; ``max_parallel``/``fail_fast`` override the workflow's;
        ``trace_context`` is a W3C trace context (``traceparent``, ``tracestate``) the
        engine runs the Python nodes in (see :mod:`dagengine.tracing`).

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
            trace_context=trace_context,
            result_only=True,
        )
        check_size(request, self.max_message_bytes, self.address)
        call = self._run_to_end_rpc.future(request, timeout=grpc_timeout(request.deadline_unix))
        try:
            reply = call.result()
        except KeyboardInterrupt:
            call.cancel()  # the engine cancels a run whose caller hung up
            raise
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, f"run {request.run_id}") from None
        return result_from_proto(reply)

    def cancel(self, run_id: str) -> bool:
        """Cancel run ``run_id`` on the engine: pending nodes are cancelled, running Lua is
        interrupted; its stream ends with a ``cancelled`` result. False if the engine has no
        active run of that id."""
        try:
            reply = self._cancel_rpc(pb.CancelRequest(run_id=run_id), timeout=self.timeout)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, f"cancel {run_id}") from None
        return bool(reply.found)

    def info(self) -> EngineInfo:
        """The engine's id, version, capacity, active runs, uptime and draining flag."""
        try:
            reply = self._info_rpc(pb.InfoRequest(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, "info") from None
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
            if rpc_code(err) is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise map_rpc_error(err, self.address, "health") from None
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

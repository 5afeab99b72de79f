"""The asyncio engine client, over ``grpc.aio``: :class:`AsyncEngineClient`, and the
streams it returns (:class:`AsyncRunStream`, :class:`AsyncEventStream`). The orchestrator's
many-runs-per-stream path to engines is the ``Session`` client driven from Rust
(:func:`dagengine.engine.open_session`)."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
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

__all__ = ["AsyncEngineClient", "AsyncEventStream", "AsyncRunStream"]


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
        self._call = client._run_rpc(request, timeout=grpc_timeout(request.deadline_unix))
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
            raise stream_ended(self._client.address, self.run_id) from None
        except grpc.RpcError as err:
            self._done = True
            raise map_rpc_error(err, self._client.address, f"run {self.run_id}") from None

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
            if rpc_code(err) is grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise map_rpc_error(err, self._address, "watch") from None
        return engine_event_from_proto(msg)

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
        options = channel_options(tls, max_message_bytes, keepalive)
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
            trace_context=trace_context,
        )
        return self.stream_request(request)

    def stream_request(self, request: pb.RunRequest) -> AsyncRunStream:
        """Like :meth:`stream`, for a prepared ``RunRequest``."""
        check_size(request, self.max_message_bytes, self.address)
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
        trace_context: Mapping[str, str] | None = None,
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
            trace_context=trace_context,
            result_only=True,
        )
        check_size(request, self.max_message_bytes, self.address)
        try:
            # Cancelling this task cancels the call, and the engine the run.
            reply = await self._run_to_end_rpc(request, timeout=grpc_timeout(request.deadline_unix))
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, f"run {request.run_id}") from None
        return result_from_proto(reply)

    async def cancel(self, run_id: str) -> bool:
        """See :meth:`EngineClient.cancel`."""
        try:
            reply = await self._cancel_rpc(pb.CancelRequest(run_id=run_id), timeout=self.timeout)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, f"cancel {run_id}") from None
        return bool(reply.found)

    async def info(self) -> EngineInfo:
        """See :meth:`EngineClient.info`."""
        try:
            reply = await self._info_rpc(pb.InfoRequest(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.address, "info") from None
        return EngineInfo.from_proto(reply)

    async def health(self, service: str = "") -> str:
        """See :meth:`EngineClient.health`."""
        try:
            reply = await self._health_rpc(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError as err:
            if rpc_code(err) is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise map_rpc_error(err, self.address, "health") from None
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

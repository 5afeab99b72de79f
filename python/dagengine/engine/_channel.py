"""gRPC channels to engines (and to the orchestrator): their options (message size limit,
keepalive, TLS), the request size check, call deadlines, and the ``EngineService`` methods
bound on a channel — shared by the sync and the asyncio clients."""

from __future__ import annotations

import time
from typing import Any

from grpc_health.v1 import health_pb2

from dagengine.engine._tls import TLSConfig
from dagengine.exceptions import MessageTooLarge
from dagengine.v1 import engine_pb2 as pb

__all__ = [
    "DEFAULT_KEEPALIVE_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MiB",
    "channel_options",
    "check_size",
    "engine_rpcs",
    "grpc_timeout",
]

MiB = 1024 * 1024
#: Default bound on one gRPC message, both ways, on clients and engines.
DEFAULT_MAX_MESSAGE_BYTES = 16 * MiB

_SERVICE = "/dagengine.v1.EngineService/"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"

#: Seconds between HTTP/2 pings while a call is open. A Run stream can be quiet for as long
#: as its slowest node; the pings are how the client tells a slow node from a frozen engine or
#: a dead network path (a peer that does not answer one within the same time is gone).
DEFAULT_KEEPALIVE_SECONDS = 10.0
# With a deadline, the engine ends the run by itself; past the deadline plus this, the
# client stops waiting and reports the engine as unavailable.
_DEADLINE_SLACK_SECONDS = 5.0


def channel_options(
    tls: TLSConfig | None, max_message_bytes: int, keepalive: float
) -> list[tuple[str, Any]]:
    """grpcio channel options: ``max_message_bytes`` both ways, HTTP/2 pings every
    ``keepalive`` seconds (a peer that does not answer one within as long is gone), and what
    ``tls`` adds; ``TypeError``/``ValueError`` for values that are none of these."""
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


def check_size(request: pb.RunRequest, limit: int, address: str) -> int:
    """The request's size in bytes; ``MessageTooLarge`` if over ``limit``."""
    size: int = request.ByteSize()
    if size > limit:
        raise MessageTooLarge(
            f"engine {address}: run {request.run_id}: the request is {size} bytes, over the "
            f"client's max_message_bytes of {limit} (inputs are {len(request.inputs_json)} bytes)",
            address=address,
        )
    return size


def grpc_timeout(deadline_unix: float) -> float | None:
    """The grpcio timeout of a run's call: past its deadline (a unix time; 0 for none) plus
    a slack, the engine that should have ended the run counts as gone."""
    if not deadline_unix:
        return None
    return max(deadline_unix - time.time(), 0.0) + _DEADLINE_SLACK_SECONDS


def engine_rpcs(channel: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The callables of ``EngineService`` (Run, Watch, Cancel, Info), of the standard health
    check and of ``RunToEnd``, in that order, on a channel — a grpcio or a grpc.aio one: both
    bind methods the same way."""
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

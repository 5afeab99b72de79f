"""Status and error mapping: every failure of a call to an engine, and every refusal or end
of a ``Session`` stream, becomes one of the :class:`~dagengine.EngineError` classes (see the
table in :mod:`dagengine.engine`)."""

from __future__ import annotations

import re

import grpc

from dagengine.exceptions import (
    EngineBusy,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    MessageTooLarge,
)
from dagengine.v1 import engine_pb2 as pb

__all__ = [
    "map_rpc_error",
    "refusal_error",
    "rpc_code",
    "rpc_details",
    "session_ended_error",
    "status_error",
    "stream_ended",
]

_SIZE_ERROR = re.compile(r"larger than max|too large|message length", re.IGNORECASE)
# The wire's status codes (a Refusal's, a Session's end) as grpcio's.
_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


def rpc_code(err: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed grpcio call (``None`` if it carries none)."""
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def rpc_details(err: grpc.RpcError) -> str:
    """The status message of a failed grpcio call, else its code's name."""
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    if text:
        return str(text)
    code = rpc_code(err)
    return code.name if code is not None else type(err).__name__


def map_rpc_error(err: grpc.RpcError, address: str, what: str) -> EngineError:
    """The :class:`EngineError` subclass for a failed gRPC call."""
    return status_error(rpc_code(err), rpc_details(err), address, what)


def status_error(
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


def refusal_error(refused: pb.Refusal, address: str, run_id: str) -> EngineError:
    """The :class:`EngineError` subclass for a run an engine refused on a ``Session`` stream:
    the class the ``Run`` call would have failed with (the refusal carries its status)."""
    return status_error(
        _STATUS_BY_CODE.get(refused.code), refused.message, address, f"run {run_id}"
    )


def session_ended_error(code: int, message: str, address: str) -> EngineUnavailable:
    """The error of every run still on a ``Session`` stream that ended with status ``code``
    (the wire's number) and ``message``. The engine refuses runs in band, so a status on the
    stream itself is the transport's: whatever its code (a peer that vanished is
    ``UNAVAILABLE``, a connection torn down mid-write may be ``INTERNAL``), the runs' fate is
    unknown and the engine is to be treated as gone."""
    error = status_error(_STATUS_BY_CODE.get(code), message, address, "session")
    if isinstance(error, EngineUnavailable):
        return error
    return EngineUnavailable(str(error), code=error.code, address=address)


def stream_ended(address: str, run_id: str) -> EngineUnavailable:
    """The error of a ``Run`` stream that ended without its run's result."""
    return EngineUnavailable(
        f"engine {address}: the stream of run {run_id} ended without its result "
        "(the engine went away)",
        address=address,
    )

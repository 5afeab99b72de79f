"""What every route of the API shares: client errors (:class:`ApiError`) and the HTTP status
of a dagengine error, bounded request bodies, JSON objects and their fields, integer query
parameters, and the request's :class:`~dagengine.api.app.Api`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from dagengine._jsondata import check_json_data, escape
from dagengine.exceptions import (
    DagEngineError,
    InputError,
    NoMatchingVersion,
    QueueFull,
    RunNotFound,
    StoreError,
    TriggerError,
    ValidationError,
    VersionConflict,
    VersionNotFound,
    WorkflowNotFound,
)

if TYPE_CHECKING:
    from dagengine.api.app import Api
    from dagengine.api.raw import RawRequest

__all__ = ["ApiError", "parse_json_object", "read_body"]


class ApiError(Exception):
    """A client error with its HTTP status (rendered as ``{"error": message}``, plus
    ``"problems"``, ``[{"path", "message"}, ...]``, for inputs that do not match a schema)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        problems: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.problems = problems


def _error_response(
    status: int,
    message: str,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    problems: list[dict[str, str]] | None = None,
) -> JSONResponse:
    # A message may quote what the client sent: lone surrogates are written as escapes (a
    # JSON response must encode as UTF-8).
    body: dict[str, Any] = {"error": escape(message)}
    if kind is not None:
        body["type"] = kind
    if problems is not None:
        body["problems"] = [
            {"path": escape(p["path"]), "message": escape(p["message"])} for p in problems
        ]
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _from_domain(exc: DagEngineError) -> ApiError:
    """The HTTP status of a dagengine error raised while serving a request."""
    if isinstance(exc, QueueFull):
        return ApiError(429, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, RunNotFound | WorkflowNotFound | VersionNotFound | NoMatchingVersion):
        return ApiError(404, str(exc))
    if isinstance(exc, VersionConflict):
        return ApiError(409, str(exc))
    if isinstance(exc, InputError):  # the request is well-formed; its inputs are not
        return ApiError(422, str(exc), problems=exc.problems)
    if isinstance(exc, ValidationError | TriggerError):
        return ApiError(400, str(exc))
    if "stopped" in str(exc) or isinstance(exc, StoreError):  # (a store that cannot write)
        return ApiError(503, str(exc), headers={"Retry-After": "5"})
    return ApiError(409, str(exc))


# -- request bodies ------------------------------------------------------------------------


async def read_body(request: Request | RawRequest, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes: by ``Content-Length`` before
    reading, and by counting while reading (a chunked body has no length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, f"request body over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    """``body`` as a JSON object, or a 400 saying what is wrong with it."""
    if not body.strip():
        raise ApiError(400, f"empty {what}: expected a JSON object")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"{what} must be a JSON object, got {_json_type(data)}")
    return data


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _field(data: Mapping[str, Any], name: str, types: tuple[type, ...], expected: str) -> Any:
    """``data[name]`` (``None`` if absent), a 400 if it is not of ``types`` (``null`` is not
    accepted for a field that is present: the document declares no field nullable)."""
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ApiError(400, f"{name!r} must be {expected}, got {_json_type(value)}")
    return value


def _only(data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """A 400 for a key of ``data`` not in ``allowed`` (the document sets
    ``additionalProperties: false``): a misspelt ``timeout`` must not pass unnoticed."""
    for key in data:
        if key not in allowed:
            raise ApiError(
                400, f"unknown key {escape(repr(key))} (expected one of {', '.join(allowed)})"
            )


def _json_data(value: Any, path: str) -> None:
    """A 400 naming the path of what in ``value`` is not JSON data (a lone surrogate, an
    integer past 64 bits, nesting past the limit; see :mod:`dagengine._jsondata`)."""
    try:
        check_json_data(value, path)
    except ValidationError as exc:
        raise ApiError(400, str(exc)) from None


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an orchestrator method off the event loop (it writes to SQLite), turning its
    domain errors into HTTP errors."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except DagEngineError as exc:
        raise _from_domain(exc) from None


async def _result(handle: Any, timeout: float | None = None) -> Any:
    """The run's result (``TimeoutError`` after ``timeout`` seconds; the run goes on)."""
    waiter = getattr(handle, "result_async", None)
    if waiter is not None:
        return await waiter(timeout)
    return await run_in_threadpool(handle.result, timeout)


def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name!r} must be between {low} and {high}")
    return value

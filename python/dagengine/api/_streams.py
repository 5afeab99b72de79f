"""A run's server-sent streams: ``GET /runs/{id}/events`` (its events, replayed from a
cursor and followed to its end) and ``GET /runs/{id}/logs`` (its node log lines, a page or
followed, optionally one node's or one mapped node's items). Routed by
:func:`dagengine.api.app.create_app`."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dagengine.api.openapi import EVENT_SEQ_PATTERN
from dagengine.api.requests import ApiError, _api, _call, _int_param
from dagengine.exceptions import DagEngineError

if TYPE_CHECKING:
    from dagengine.api.app import Api

__all__ = ["FINISHED", "SSE_KEEPALIVE", "log_line", "run_events", "run_logs"]

_TERMINAL_EVENTS: Final = frozenset({"run.completed", "run.failed", "run.cancelled"})
#: A run's statuses once it has ended.
FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})
#: Seconds between SSE keep-alive comments (proxies close idle connections).
SSE_KEEPALIVE: Final = 15.0


def _sse(event: Any) -> bytes:
    data = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


_KEEP_ALIVE = b": keep-alive\n\n"


async def _follow_run(
    api: Api, run_id: str, sub: Any, finished_at_start: bool
) -> AsyncGenerator[Any, None]:
    """A run's events from a subscription, for a server-sent stream: a run that had already
    ended only replays what the store has; a live one is followed up to and including its
    terminal event, with ``None`` meanwhile for each keep-alive comment due. Closes ``sub``."""
    try:
        while True:
            wait = 0.5 if finished_at_start else SSE_KEEPALIVE
            try:
                event = await asyncio.wait_for(sub.__anext__(), wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if finished_at_start:
                    return
                status = (await _call(api.orch.get_run, run_id)).status
                if status in FINISHED and not sub.lagging:
                    return
                yield None
                continue
            yield event
            if event.type in _TERMINAL_EVENTS:
                return
    finally:
        sub.close()


async def run_events(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    run_id = request.path_params["run_id"]
    info = await _call(api.orch.get_run, run_id)
    cursor = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not re.fullmatch(EVENT_SEQ_PATTERN, cursor):
        raise ApiError(
            400, "Last-Event-ID / after must be an event sequence number (up to 18 digits)"
        )
    sub = api.monitor.subscribe(run_id=run_id, after=int(cursor))
    finished_at_start = info.status in FINISHED

    async def stream() -> AsyncIterator[bytes]:
        async with aclosing(_follow_run(api, run_id, sub, finished_at_start)) as events:
            async for event in events:
                yield _KEEP_ALIVE if event is None else _sse(event)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def log_line(event: Any) -> dict[str, Any]:
    """A stored ``node.log`` event as one line of ``GET /runs/{id}/logs``."""
    data = event.data
    return {
        "seq": event.seq,
        "time": event.time,
        "node_id": event.node_id,
        "attempt": data.get("attempt"),
        "node_attempt": data.get("node_attempt"),
        "level": data.get("level", "INFO"),
        "message": data.get("message", ""),
        "truncated": bool(data.get("truncated", False)),
    }


def _sse_log(event: Any) -> bytes:
    data = json.dumps(log_line(event), separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: node.log\ndata: {data}\n\n".encode()


# An item of a mapped node: ``sq[3]`` is item 3 of node ``sq``.
_ITEM = re.compile(r"(.+)\[(\d+)\]")


def _of_node(event_node_id: str | None, node: str) -> bool:
    """Whether an event of ``event_node_id`` belongs to ``node``: the node itself or, for a
    mapped node, one of its items."""
    if event_node_id == node:
        return True
    item = _ITEM.fullmatch(event_node_id or "")
    return item is not None and item.group(1) == node


def _has_node(api: Api, workflow_id: str, version: str, node_id: str) -> bool:
    """Whether the run's workflow version has the node, or the node an item id (``sq[3]``)
    is an item of (true when the version is not known here: its lines are served as
    stored)."""
    item = _ITEM.fullmatch(node_id)
    if item is not None and _has_node(api, workflow_id, version, item.group(1)):
        return True
    try:
        entry = api.orch.registry.get(workflow_id, version)
    except DagEngineError:
        return True
    if entry.dag is not None:
        return node_id in entry.dag
    nodes = (entry.spec or {}).get("nodes")
    if not isinstance(nodes, list):
        return True
    return any(isinstance(n, dict) and n.get("id") == node_id for n in nodes)


async def run_logs(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    run_id = request.path_params["run_id"]
    info = await _call(api.orch.get_run, run_id)
    node = request.query_params.get("node") or None
    if node is not None and not await _call(_has_node, api, info.workflow_id, info.version, node):
        raise ApiError(404, f"run {run_id!r} has no node {node!r}")
    follow_text = request.query_params.get("follow", "false")
    if follow_text not in ("true", "false"):
        raise ApiError(400, "query parameter 'follow' must be true or false")
    cursor = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not re.fullmatch(EVENT_SEQ_PATTERN, cursor):
        raise ApiError(
            400, "Last-Event-ID / after must be an event sequence number (up to 18 digits)"
        )
    limit = _int_param(request, "limit", 1000, 1, 10_000)
    if follow_text == "false":
        lines: list[dict[str, Any]] = []
        after = int(cursor)
        while len(lines) < limit:
            page = await _call(
                api.monitor.history, after, run_id=run_id, types="node.log", limit=1000
            )
            lines.extend(log_line(e) for e in page if node is None or _of_node(e.node_id, node))
            if len(page) < 1000:
                break
            after = page[-1].seq
        lines = lines[:limit]
        more = len(lines) == limit
        return JSONResponse(
            {
                "run_id": run_id,
                "node": node,
                "lines": lines,
                "next_after": lines[-1]["seq"] if more else None,
            }
        )
    sub = api.monitor.subscribe(
        run_id=run_id, after=int(cursor), types=["node.log", *_TERMINAL_EVENTS]
    )
    finished_at_start = info.status in FINISHED

    async def stream() -> AsyncIterator[bytes]:
        # (aclosing: the subscription closes as soon as the stream ends, not when the
        # abandoned generator is collected)
        async with aclosing(_follow_run(api, run_id, sub, finished_at_start)) as events:
            async for event in events:
                if event is None:
                    yield _KEEP_ALIVE
                elif event.type in _TERMINAL_EVENTS:
                    return
                elif node is None or _of_node(event.node_id, node):
                    yield _sse_log(event)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

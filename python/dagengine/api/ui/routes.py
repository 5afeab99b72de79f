"""The web UI's static files and the API routes it adds (documented in docs/http-api.md).

=========================================== ================================================
``GET /``                                   redirect to ``/ui/``
``GET /ui/...``                             the UI: static HTML, CSS and ES modules (open:
                                            with a token set, the UI asks for it)
``GET /events``                             every run's events as server-sent events, live
                                            (``types``: comma-separated names or ``run.*``
                                            patterns; ``workflow_id``; ``Last-Event-ID``)
``POST /runs/{id}/retry``                   retry from failed: a new run reusing the
                                            completed nodes' outputs (202; 409 while running)
``POST /workflows/{id}/versions/{v}/yank``  mark a version yanked (``{"yanked": false}``
                                            restores it)
``POST /workflows/{id}/rollback``           yank the latest version: the latest rolls back
``GET /triggers``                           cron and HTTP triggers
``POST /triggers/{id}/pause``, ``/resume``  pause or resume a cron trigger
``GET /engines``                            engines: address, capacity, active runs, health
=========================================== ================================================
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dagengine.api.openapi import EVENT_SEQ_PATTERN
from dagengine.api.requests import (
    ApiError,
    _api,
    _call,
    _field,
    _only,
    parse_json_object,
    read_body,
)

if TYPE_CHECKING:
    from dagengine.api.app import Api
    from dagengine.triggers.cron import CronTrigger

__all__ = ["STATIC_DIR", "routes", "set_cron_triggers"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
#: Seconds between keep-alive comments of ``GET /events``.
KEEPALIVE: Final = 15.0
_TYPE_PATTERN: Final = re.compile(r"^[a-z]+\.(\*|[a-z_]+)$")
#: Next fire times shown per cron trigger.
NEXT_FIRES: Final = 5


def set_cron_triggers(app: Any, triggers: list[CronTrigger]) -> None:
    """Let ``GET /triggers`` (and pause/resume) see the server's cron triggers."""
    app.state.cron_triggers = list(triggers)


def _crons(request: Request) -> list[CronTrigger]:
    found: list[CronTrigger] = getattr(request.app.state, "cron_triggers", [])
    return found


# -- the UI --------------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


async def ui_root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


class _Static(StaticFiles):
    """The UI's files, with a Content-Security-Policy that allows only this origin's
    scripts and styles (no inline script runs, whatever a page shows)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


# -- events of every run -------------------------------------------------------------------


async def all_events(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    text = request.query_params.get("types", "run.*")
    types = [t.strip() for t in text.split(",") if t.strip()]
    if not types:
        raise ApiError(400, "types: give at least one event type or 'prefix.*' pattern")
    for name in types:
        if not _TYPE_PATTERN.match(name):
            raise ApiError(400, f"types: {name!r} is not an event type or a 'prefix.*' pattern")
    cursor = request.headers.get("last-event-id") or request.query_params.get("after")
    if cursor is not None and not re.fullmatch(EVENT_SEQ_PATTERN, cursor):
        raise ApiError(
            400, "Last-Event-ID / after must be an event sequence number (up to 18 digits)"
        )
    try:
        sub = api.monitor.subscribe(
            workflow_id=request.query_params.get("workflow_id") or None,
            types=types,
            after=int(cursor) if cursor is not None else None,
        )
    except (ValueError, KeyError) as exc:
        raise ApiError(400, f"types: {exc}") from None

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.__anext__(), KEEPALIVE)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                data = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
        finally:
            sub.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- retry ---------------------------------------------------------------------------------


async def retry(request: Request) -> Response:
    from dagengine.orchestrator.retry import retry_run

    api = _api(request)
    api.check_token(request)
    run_id = request.path_params["run_id"]
    handle, reused = await _call(retry_run, api.orch, run_id)
    return JSONResponse(
        {"run_id": handle.run_id, "retry_of": run_id, "reused": reused},
        status_code=202,
        headers={"Location": f"/runs/{handle.run_id}"},
    )


# -- versions ------------------------------------------------------------------------------


async def yank(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    workflow_id = request.path_params["workflow_id"]
    version = request.path_params["version"]
    body = await read_body(request, api.max_body_bytes)
    data = parse_json_object(body) if body.strip() else {}
    _only(data, ("yanked",))
    flag = _field(data, "yanked", (bool,), "a boolean")
    yanked = True if flag is None else flag
    registry = api.orch.registry
    await _call(registry.yank, workflow_id, version, yanked)
    latest = await _call(registry.get, workflow_id)
    return JSONResponse(
        {
            "id": workflow_id,
            "version": version,
            "yanked": yanked,
            "latest": str(latest.version),
            "yanked_versions": registry.yanked(workflow_id),
        }
    )


async def rollback(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    workflow_id = request.path_params["workflow_id"]
    registry = api.orch.registry
    latest = await _call(registry.get, workflow_id)
    versions = await _call(registry.versions, workflow_id)
    yanked = set(registry.yanked(workflow_id))
    if all(str(v.version) in yanked or v.version == latest.version for v in versions):
        raise ApiError(409, f"workflow {workflow_id!r} has no earlier version to roll back to")
    await _call(registry.yank, workflow_id, str(latest.version), True)
    now = await _call(registry.get, workflow_id)
    return JSONResponse(
        {
            "id": workflow_id,
            "yanked": str(latest.version),
            "latest": str(now.version),
            "yanked_versions": registry.yanked(workflow_id),
        }
    )


def workflow_extras(api: Api, workflow_id: str) -> dict[str, Any]:
    """What ``GET /workflows/{id}`` adds for version management: the latest version (yanked
    ones skipped), the yanked versions and the workflows that depend on this one (every
    version's sub-workflow nodes)."""
    registry = api.orch.registry
    return {
        # The latest is what runs without a version: the highest not yanked.
        "latest": str(registry.get(workflow_id).version),
        "yanked": registry.yanked(workflow_id),
        "dependents": [
            {"workflow_id": d.workflow_id, "version": d.version, "version_range": d.version_range}
            for d in registry.dependents(workflow_id, all_versions=True)
        ],
    }


# -- triggers and engines ------------------------------------------------------------------


def _cron_dict(trigger: CronTrigger) -> dict[str, Any]:
    return {
        "id": trigger.id,
        "type": "cron",
        "workflow_id": trigger.workflow_id,
        "version": trigger.version,
        "schedule": trigger.schedule.expression,
        "timezone": trigger.schedule.timezone,
        "overlap": trigger.overlap,
        "active": trigger.is_active,
        "paused": trigger.paused,
        "next_fire_times": (
            [t.isoformat() for t in trigger.next_fire_times(NEXT_FIRES)]
            if trigger.is_active and not trigger.paused
            else []
        ),
        "last_fires": [
            {"scheduled": when, "run_id": run_id} for when, run_id in trigger.last_fires()
        ],
        "stats": dict(trigger.stats),
    }


async def list_triggers(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    crons = await _call(lambda: [_cron_dict(t) for t in _crons(request)])
    https = [
        {
            "id": t.id,
            "type": "http",
            "workflow_id": t.workflow_id,
            "version": t.version,
            "path": t.path,
            "url": t.url or str(request.base_url).rstrip("/") + t.path,
            "mode": t.mode,
            "auth": t.auth,
            "active": t.is_active,
        }
        for t in sorted(api.triggers.values(), key=lambda t: t.id)
    ]
    return JSONResponse({"cron": crons, "http": https})


def _cron(request: Request) -> CronTrigger:
    trigger_id = request.path_params["trigger_id"]
    for trigger in _crons(request):
        if trigger.id == trigger_id:
            return trigger
    if any(t.id == trigger_id for t in _api(request).triggers.values()):
        raise ApiError(409, f"trigger {trigger_id!r} is an HTTP trigger: only cron pauses")
    raise ApiError(404, f"no cron trigger {trigger_id!r}")


async def pause_trigger(request: Request) -> Response:
    _api(request).check_token(request)
    trigger = _cron(request)
    await _call(trigger.pause)
    return JSONResponse(await _call(_cron_dict, trigger))


async def resume_trigger(request: Request) -> Response:
    _api(request).check_token(request)
    trigger = _cron(request)
    await _call(trigger.resume)
    return JSONResponse(await _call(_cron_dict, trigger))


def _engines(orch: Any) -> list[dict[str, Any]]:
    engine_set = getattr(orch, "_engine_set", None)
    if engine_set is None:
        return []
    out = []
    with engine_set._lock:
        slots = list(engine_set.slots.values())
        for slot in slots:
            out.append(
                {
                    "engine_id": slot.engine_id,
                    "address": orch.engine_address(slot.engine_id),
                    "capacity": slot.backend.capacity,
                    "active_runs": slot.active,
                    "healthy": slot.healthy,
                }
            )
    return sorted(out, key=lambda e: e["engine_id"])


async def list_engines(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    return JSONResponse({"engines": await _call(_engines, api.orch)})


def routes() -> list[BaseRoute]:
    """The routes this module adds, ahead of the app's catch-all."""
    return [
        Route("/", root, methods=["GET"]),
        Route("/ui", ui_root, methods=["GET"]),
        Mount("/ui", app=_Static(directory=STATIC_DIR, html=True), name="ui"),
        Route("/events", all_events, methods=["GET"]),
        Route("/runs/{run_id}/retry", retry, methods=["POST"]),
        Route("/workflows/{workflow_id}/versions/{version}/yank", yank, methods=["POST"]),
        Route("/workflows/{workflow_id}/rollback", rollback, methods=["POST"]),
        Route("/triggers", list_triggers, methods=["GET"]),
        Route("/triggers/{trigger_id}/pause", pause_trigger, methods=["POST"]),
        Route("/triggers/{trigger_id}/resume", resume_trigger, methods=["POST"]),
        Route("/engines", list_engines, methods=["GET"]),
    ]

"""HTTP triggers as the API serves them: the paths a trigger may not take and firing a
trigger on ``POST <path>`` (:func:`dagengine.api.app.serve_trigger` serves one on a port of its
own).

An :class:`~dagengine.triggers.HTTPTrigger` is configuration plus its authentication check;
the routes, the reserved paths and the serving are the API's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dagengine.api.raw import RawRequest
from dagengine.api.requests import (
    ApiError,
    _field,
    _from_domain,
    _json_data,
    _result,
    parse_json_object,
    read_body,
)
from dagengine.exceptions import DagEngineError, TriggerError
from dagengine.orchestrator.submit import committed, submit
from dagengine.triggers.base import publish_trigger_event, trigger_inputs

if TYPE_CHECKING:
    from dagengine.triggers.http import HTTPTrigger

__all__ = ["RESERVED_PATHS", "check_path", "fire", "fire_parts"]

#: Paths of the REST API; a trigger path may not be one of them or lie under one.
RESERVED_PATHS: Final = (
    "/workflows",
    "/runs",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/ui",
    "/events",
    "/triggers",
    "/engines",
)


def check_path(trigger: HTTPTrigger) -> None:
    """Refuse (:class:`TriggerError`) a trigger whose path the REST API takes."""
    for reserved in RESERVED_PATHS:
        if trigger.path == reserved or trigger.path.startswith(reserved + "/"):
            raise TriggerError(
                f"http trigger {trigger.id!r}: path {trigger.path!r} is taken by the REST API "
                f"({reserved})",
                trigger_id=trigger.id,
            )


async def fire(request: Request, trigger: HTTPTrigger, orchestrator: Any) -> Response:
    """Serve ``POST <trigger path>`` (see :func:`fire_parts`) as a ``JSONResponse``."""
    status, payload, headers = await fire_parts(
        request, {k.lower(): v for k, v in request.headers.items()}, trigger, orchestrator
    )
    return JSONResponse(payload, status_code=status, headers=headers)


async def fire_parts(
    request: Request | RawRequest,
    headers: dict[str, str],
    trigger: HTTPTrigger,
    orchestrator: Any,
) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Serve ``POST <trigger path>``: authenticate, read ``{"inputs": {...}}``, start the run
    through the trigger's executor (``orchestrator`` if it has none) and answer its result
    (``sync``) or its id (``async``): (status, JSON body, headers). ``headers``: the
    request's, lower-case; a client error is raised as :class:`ApiError`."""
    if not trigger.is_active:
        raise ApiError(404, f"trigger {trigger.id!r} is not active")
    if trigger.auth_before_body and not trigger.authorized(headers, b""):
        raise ApiError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    body = await read_body(request, trigger.max_body_bytes)
    problem = None if trigger.auth_before_body else trigger.auth_problem(headers, body)
    if problem is not None:
        raise ApiError(401, problem)
    data = parse_json_object(body)
    # Other keys are ignored: a webhook sender's payload may carry anything beside inputs.
    given = _field(data, "inputs", (dict,), "a JSON object")
    if given is None:
        given = {}
    _json_data(given, "inputs")
    now = time.time()
    inputs = trigger_inputs({**trigger.inputs, **given}, trigger.type, trigger.id, now)
    started = time.perf_counter_ns()
    executor = trigger.executor or orchestrator
    try:
        # A sync trigger answers with the run's end, which is reported only once committed
        # (after the run's creation): it need not wait for the creation's commit first.
        handle = await submit(
            executor,
            trigger.workflow_id,
            inputs,
            headers=headers,
            durable=trigger.mode != "sync",
            version=trigger.version,
        )
    except DagEngineError as exc:
        publish_trigger_event(
            executor, trigger, trigger.workflow_id, outcome="error", scheduled=now,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        raise _from_domain(exc) from None
    run_id = str(getattr(handle, "run_id", ""))
    publish_trigger_event(
        executor, trigger, trigger.workflow_id, outcome="fired", scheduled=now, run_id=run_id
    )
    accepted = {
        "trigger_id": trigger.id,
        "workflow_id": trigger.workflow_id,
        "run_id": run_id,
        "status": "queued",
    }
    location = {"Location": f"/runs/{run_id}"}
    if trigger.mode == "async":
        return 202, accepted, location
    try:
        result = await _result(handle, trigger.sync_timeout)
    except TimeoutError:
        await committed(executor)  # acknowledged: committed, as an async trigger's run is
        return 202, {**accepted, "status": "running"}, location
    error = result.error
    return (
        200,
        {
            "trigger_id": trigger.id,
            "workflow_id": trigger.workflow_id,
            "run_id": run_id,
            "status": result.status.value,
            "success": result.ok,
            "duration_ns": time.perf_counter_ns() - started,
            "outputs": dict(result.outputs),
            "error": str(error) if error is not None else None,
        },
        None,
    )

"""The HTTP front door: one Starlette app for every HTTP trigger and the REST API.

Routes (the OpenAPI document at ``GET /openapi.json`` describes each; see
:mod:`dagengine.api.openapi`):

=================================== ===========================================================
``POST <trigger path>``             fire an HTTP trigger: 200 result (sync) / 202 run id (async)
``GET /workflows``                  registered workflows
``POST /workflows``                 register a version from a spec (JSON ``{"spec": ...}`` or
                                    raw YAML with a YAML content type)
``GET /workflows/{id}``             one workflow's versions and its inputs schema
``POST /workflows/{id}/runs``       start a run (``{"inputs", "version", "wait", "timeout"}``)
``GET /runs``                       runs, newest first (``workflow_id``, ``status``, ``limit``,
                                    ``offset``)
``GET /runs/{id}``                  a run with its node states
``POST /runs/{id}/cancel``          cancel a run
``GET /runs/{id}/events``           the run's events as server-sent events
``GET /healthz``, ``GET /metrics``  liveness, Prometheus metrics
``GET /readyz``                     readiness: 503 while the store cannot write
=================================== ===========================================================

Errors are JSON ``{"error": message, "type": class}``: 400 bad body, 401 authentication, 404
unknown workflow/run/path, 405 wrong method, 409 version conflict, 413 body too large, 422
inputs that do not match the workflow's schema (with ``"problems"``, a list of ``{"path",
"message"}``), 429 queue full (with ``Retry-After``), 503 shutting down. Anything
unexpected is a 500 with ``{"error": "internal error", "id": ...}`` — the traceback goes to
the log under that id, never to the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dagengine._jsondata import describe_int
from dagengine.api import cache_routes
from dagengine.api._streams import FINISHED, run_events, run_logs
from dagengine.api.hooks import check_path, fire, fire_parts
from dagengine.api.metrics import CONTENT_TYPE, Metrics
from dagengine.api.openapi import MAX_OFFSET, openapi_document
from dagengine.api.raw import RawRequest, send_json
from dagengine.api.requests import (
    ApiError,
    _api,
    _call,
    _error_response,
    _field,
    _from_domain,
    _int_param,
    _json_data,
    _json_type,
    _only,
    _result,
    parse_json_object,
    read_body,
)
from dagengine.api.ui import routes as ui_routes
from dagengine.exceptions import DagEngineError, SpecError, TriggerError
from dagengine.orchestrator.runs import RunInfo
from dagengine.orchestrator.store import RUN_STATUSES
from dagengine.orchestrator.submit import submit
from dagengine.spec import MAX_SECONDS

if TYPE_CHECKING:
    from dagengine.api.server import ServerThread
    from dagengine.triggers.base import Executor
    from dagengine.triggers.http import HTTPTrigger

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Api",
    "ApiError",
    "create_app",
    "run_to_dict",
    "serve_trigger",
]

log = logging.getLogger("dagengine.api")

_YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
#: Seconds ``POST /runs/{id}/cancel`` waits for the cancelled run to settle before answering.
CANCEL_WAIT: Final = 2.0
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: The keys of ``POST /workflows/{id}/runs``.
_RUN_KEYS: Final = ("inputs", "version", "wait", "timeout", "key")
#: Bytes a REST request body may have (an HTTP trigger's own limit has the same default).
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024


# -- representations -----------------------------------------------------------------------


def run_to_dict(
    info: Any, *, detail: bool = True, completed: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A run as the API shows it. ``detail`` adds ``outputs`` and ``nodes`` (node id ->
    status, attempts, times, output, error) from its result — or, while it runs, the nodes
    completed so far (``completed``: node id -> output)."""
    out: dict[str, Any] = {
        "run_id": info.run_id,
        "workflow_id": info.workflow_id,
        "version": info.version,
        "status": info.status,
        "attempt": info.attempt,
        "engine_id": info.engine_id,
        "parent_run_id": info.parent_run_id,
        "created_at": info.created_at,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "error": dict(info.error) if info.error is not None else None,
    }
    if not detail:
        return out
    out["resolved_versions"] = dict(info.resolved_versions)
    result = info.result
    if result is not None:
        data = result.to_dict()
        out["duration"] = data["duration"]
        out["outputs"] = data["outputs"]
        out["nodes"] = data["nodes"]
    else:
        out["duration"] = None
        out["outputs"] = dict(completed or {})
        out["nodes"] = {
            node_id: {"status": "succeeded", "output": output}
            for node_id, output in (completed or {}).items()
        }
    return out


# -- the app -------------------------------------------------------------------------------


class Api:
    """The state behind the routes: the orchestrator, HTTP triggers by path, limits, metrics.
    Reached as ``app.state.api``."""

    def __init__(
        self,
        orchestrator: Any,
        *,
        triggers: Iterable[HTTPTrigger] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        api_token: str | None = None,
        allow_python_specs: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.orch = orchestrator
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token
        self.allow_python_specs = allow_python_specs
        self.metrics = metrics
        self.triggers: dict[str, HTTPTrigger] = {}
        self._monitor: Any = None
        for trigger in triggers:
            self.add_trigger(trigger)

    def add_trigger(self, trigger: HTTPTrigger) -> None:
        """Serve ``trigger`` at its path (:class:`TriggerError` if the REST API or another
        trigger takes the path)."""
        check_path(trigger)
        other = self.triggers.get(trigger.path)
        if other is not None and other is not trigger:
            raise TriggerError(
                f"http trigger {trigger.id!r}: path {trigger.path} is already used by trigger "
                f"{other.id!r}",
                trigger_id=trigger.id,
            )
        self.triggers[trigger.path] = trigger

    def remove_trigger(self, trigger: HTTPTrigger) -> None:
        if self.triggers.get(trigger.path) is trigger:
            del self.triggers[trigger.path]

    @property
    def monitor(self) -> Any:
        if self._monitor is None:
            from dagengine.orchestrator.monitor import Monitor

            self._monitor = Monitor(self.orch)
        return self._monitor

    def end_streams(self) -> None:
        """End every server-sent event stream (their subscriptions close), so a server that
        stops does not wait out its graceful timeout for streams that would outlive it."""
        if self._monitor is not None:
            self._monitor.close()

    def close(self) -> None:
        """Stop the metrics subscriber and the monitor's subscriptions."""
        if self.metrics is not None:
            self.metrics.close()
        if self._monitor is not None:
            self._monitor.close()

    def check_token(self, request: Request | RawRequest) -> None:
        if self.api_token is None:
            return
        import hmac

        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_token.encode()
        ):
            raise ApiError(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


async def _fallback(request: Request) -> Response:
    """Every path the REST routes do not take: an HTTP trigger, or 404/405."""
    api = _api(request)
    path = request.url.path.rstrip("/") or "/"
    trigger = api.triggers.get(path)
    if trigger is not None:
        if request.method != "POST":
            raise ApiError(405, "method not allowed", headers={"Allow": "POST"})
        return await fire(request, trigger, api.orch)
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.endpoint is not _fallback:
            match, _ = route.matches({**request.scope, "method": "__none__"})
            if match is Match.PARTIAL and route.methods:
                allowed |= route.methods
    if allowed:
        raise ApiError(405, "method not allowed", headers={"Allow": ", ".join(sorted(allowed))})
    raise ApiError(404, f"no route {request.url.path}")


# -- REST ----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    orch = _api(request).orch
    engines = orch.engines() if hasattr(orch, "engines") else {}
    return JSONResponse({"status": "ok", "engines": len(engines)})


async def readyz(request: Request) -> Response:
    """Ready while the store can write: a commit that keeps failing (a full disk, the
    database locked by another process, a read-only file) makes the service unready, so a
    load balancer sends work elsewhere while ``/healthz`` (liveness) still answers. So does
    a replica cut off from the database for a lease's time (its runs move to the others)."""
    orch = _api(request).orch
    problem = getattr(getattr(orch, "store", None), "write_error", None)
    replicas = getattr(orch, "replicas", None)
    if problem is None and replicas is not None:
        problem = replicas.unready_reason()
    if problem is not None:
        return JSONResponse({"status": "not ready", "store": str(problem)}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    api = _api(request)
    if api.metrics is None:
        raise ApiError(404, "metrics are disabled")
    body = await run_in_threadpool(api.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    api = _api(request)
    triggers = [t for t in api.triggers.values() if t.is_active]
    return JSONResponse(openapi_document(triggers, token=api.api_token is not None))


async def list_workflows(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    infos = await _call(api.orch.list_workflows)
    return JSONResponse(
        {
            "workflows": [
                {
                    "id": info.workflow_id,
                    "versions": list(info.versions),
                    "latest": info.latest,
                    "metadata": dict(info.metadata),
                }
                for info in infos
            ]
        }
    )


async def get_workflow(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    workflow_id = request.path_params["workflow_id"]
    versions = await _call(api.orch.registry.versions, workflow_id)
    return JSONResponse(
        {
            "id": workflow_id,
            "latest": str(versions[-1].version),
            "versions": [
                {
                    "version": str(wv.version),
                    "registered_at": wv.registered_at,
                    "runnable": wv.runnable,
                    "problem": wv.problem,
                    "metadata": dict(wv.metadata),
                    "dependencies": [
                        {"workflow_id": dep, "version_range": rng} for dep, rng in wv.dependencies
                    ],
                    "spec": wv.spec,
                    "inputs": _inputs_schema(wv),
                }
                for wv in versions
            ],
            "inputs": _inputs_schema(versions[-1]),
            **ui_routes.workflow_extras(api, workflow_id),
        }
    )


def _inputs_schema(wv: Any) -> dict[str, Any] | None:
    """A version's ``inputs:`` JSON Schema (``None``: its inputs are not checked)."""
    if wv.dag is not None:
        return wv.dag.inputs  # type: ignore[no-any-return]
    return (wv.spec or {}).get("inputs")


def _spec_from_body(request: Request, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    metadata: Any = {}
    if content_type in _YAML_TYPES:
        from dagengine.spec import UniqueKeyLoader

        try:
            spec = yaml.load(body.decode("utf-8"), Loader=UniqueKeyLoader)
        except (yaml.YAMLError, SpecError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"invalid YAML: {exc}") from None
        if not isinstance(spec, dict):
            raise ApiError(400, f"the YAML body must be a mapping, got {_json_type(spec)}")
    else:
        data = parse_json_object(body)
        spec = data.get("spec")
        if not isinstance(spec, dict):
            raise ApiError(
                400, 'expected {"spec": {...}} (or a YAML body with a YAML content type)'
            )
        _only(data, ("spec", "metadata"))
        metadata = _field(data, "metadata", (dict,), "a JSON object") or {}
        _json_data(metadata, "metadata")
    _json_data(spec, "spec")
    return spec, metadata


async def register_workflow(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    body = await read_body(request, api.max_body_bytes)
    spec, metadata = _spec_from_body(request, body)
    workflow_id, version = spec.get("id"), spec.get("version")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ApiError(400, "the spec needs an 'id' (a string)")
    if not isinstance(version, str) or not version:
        raise ApiError(400, "the spec needs a 'version' (a semver string like '1.0.0')")
    nodes = spec.get("nodes")
    if not api.allow_python_specs and isinstance(nodes, list):
        for node in nodes:
            if isinstance(node, dict) and "python" in node:
                # Registering imports the named module in this process: only specs from the
                # workflows folder (or a server started with allow_python_specs) may do that.
                raise ApiError(
                    403,
                    f"node {node.get('id')!r}: python nodes cannot be registered over the API "
                    "(allow_python_specs is off); use lua, noop or workflow nodes",
                )
    try:
        wv = await run_in_threadpool(
            api.orch.register_workflow, workflow_id, version, spec, metadata
        )
    except DagEngineError as exc:
        raise _from_domain(exc) from None
    except (TypeError, ValueError) as exc:  # a spec shape the parser did not anticipate
        raise ApiError(400, f"invalid spec: {exc}") from None
    return JSONResponse(
        {"id": wv.workflow_id, "version": str(wv.version)},
        status_code=201,
        headers={"Location": f"/workflows/{wv.workflow_id}"},
    )


async def start_run(request: Request) -> Response:
    api = _api(request)
    status, payload, headers = await _start_run(api, request, request.path_params["workflow_id"])
    return JSONResponse(payload, status_code=status, headers=headers)


async def _start_run(
    api: Api, request: Request | RawRequest, workflow_id: str
) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """``POST /workflows/{id}/runs``: (status, JSON body, headers); client errors raised as
    :class:`ApiError`."""
    api.check_token(request)
    body = await read_body(request, api.max_body_bytes)
    data = parse_json_object(body) if body.strip() else {}
    _only(data, _RUN_KEYS)
    inputs = _field(data, "inputs", (dict,), "an object")
    if inputs is None:
        inputs = {}
    version = _field(data, "version", (str,), "a string")
    wait = _field(data, "wait", (bool,), "a boolean") or False
    timeout = _field(data, "timeout", (int, float), "a number of seconds")
    if timeout is not None and not 0 < timeout <= MAX_SECONDS:
        shown = describe_int(timeout) if isinstance(timeout, int) else repr(timeout)
        raise ApiError(
            400, f"'timeout' must be a number of seconds in (0, {MAX_SECONDS:.0e}], got {shown}"
        )
    key = _field(data, "key", (str,), "a string")
    # Stored with the run: text that is not UTF-8 or numbers past 64 bits are refused here.
    for name, value in (("inputs", inputs), ("version", version), ("key", key)):
        _json_data(value, name)
    try:  # (with wait, answered with the run's end: committed after the run's creation)
        handle = await submit(
            api.orch,
            workflow_id,
            inputs,
            headers=request.headers,
            durable=not wait,
            version=version,
            key=key,
            timeout=float(timeout) if timeout is not None else None,
        )
    except DagEngineError as exc:
        raise _from_domain(exc) from None
    if not wait:
        # The run as acknowledged (committed: see submit), without reading it back (a
        # worker-thread hop and a commit of what is pending: half the route's cost).
        record = getattr(handle, "record", None)
        if record is not None:
            info = RunInfo.from_record(record)
        else:
            info = await _call(api.orch.get_run, handle.run_id)
        return 202, run_to_dict(info, detail=False), {"Location": f"/runs/{handle.run_id}"}
    await _result(handle)
    info = await _call(api.orch.get_run, handle.run_id)
    return 200, run_to_dict(info), None


async def list_runs(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    status = request.query_params.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(RUN_STATUSES)}")
    workflow_id = request.query_params.get("workflow_id")
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    since, until = _time_param(request, "since"), _time_param(request, "until")
    before = request.query_params.get("before") or None
    try:
        records = await _call(
            api.orch.store.list_runs,
            workflow_id=workflow_id,
            status=status,
            limit=limit,
            offset=offset,
            since=since,
            until=until,
            before=before,
        )
    except ValueError as exc:  # an unknown 'before' run
        raise ApiError(404, f"before: {exc}") from None
    runs = [RunInfo.from_record(r) for r in records]
    full = len(runs) == limit
    return JSONResponse(
        {
            "runs": [run_to_dict(info, detail=False) for info in runs],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + len(runs) if full else None,
            "next_before": runs[-1].run_id if full else None,
        }
    )


def _time_param(request: Request, name: str) -> float | None:
    """A time filter: Unix seconds in [0, 1e11)."""
    text = request.query_params.get(name)
    if text is None:
        return None
    number = re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text)
    value = float(text) if number else -1.0
    if not 0 <= value < 1e11:
        raise ApiError(400, f"query parameter {name!r} must be Unix seconds in [0, 1e11)")
    return value


async def get_run(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    run_id = request.path_params["run_id"]
    info = await _call(api.orch.get_run, run_id)
    completed = None
    if info.result is None:
        completed = await _call(api.orch.store.node_outputs, run_id)
    body = run_to_dict(info, completed=completed)
    record = await _call(api.orch.store.get_run, run_id)
    body["inputs"] = dict(record.inputs) if record is not None else {}
    return JSONResponse(body)


async def cancel_run(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    run_id = request.path_params["run_id"]
    await _call(api.orch.get_run, run_id)  # 404 for an unknown run
    cancelled = await _call(api.orch.cancel_run, run_id)
    info = await _call(api.orch.get_run, run_id)
    # Cancelling settles the run asynchronously (an engine stops it; the store commits in
    # groups): give it a moment so the answer usually shows the final status.
    deadline = time.monotonic() + CANCEL_WAIT
    while cancelled and info.status not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        info = await _call(api.orch.get_run, run_id)
    return JSONResponse({"run_id": run_id, "cancelled": bool(cancelled), "status": info.status})


# -- errors --------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc.status, exc.message, headers=exc.headers, problems=exc.problems)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def _internal_error(scope: Scope) -> JSONResponse:
    """A 500 with an id; the exception being handled is logged under that id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("internal error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
    return JSONResponse({"error": "internal error", "id": error_id}, status_code=500)


class _CatchAll:
    """The last line: an exception no handler took becomes a 500 JSON with an id; the
    traceback is logged under that id. (Starlette's own error middleware would re-raise into
    the server, which logs it again and, in debug, may show it.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _caught(self.app, scope, receive, send)


async def _caught(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve ``app``; an exception it raises before its answer started becomes a 500 JSON
    with an id (:func:`_internal_error`)."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception:
        response = _internal_error(scope)
        if started:
            raise  # the response is half sent: only the server can end it
        await response(scope, receive, send)


#: ``POST /workflows/{id}/runs`` as the router matches it (an id is one path segment).
_RUNS_PATH: Final = re.compile(r"/workflows/([^/]+)/runs")


class _App(Starlette):
    """The API's Starlette app, with its two busiest routes served ahead of it: ``POST`` on
    an HTTP trigger's path and ``POST /workflows/{id}/runs`` skip the middleware stack, the
    router and Starlette's request and response objects (:mod:`dagengine.api.raw`), with the
    same answers, errors included. Under a trigger load the middleware, matching every REST
    route before the trigger's catch-all and the request/response objects were ~10% of the
    event loop's time per request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            # Only while the stack is our own (_CatchAll): a middleware the user added (their
            # auth, CORS, rate limits) must see these routes too.
            and len(self.user_middleware) == 1
        ):
            api: Api = self.state.api
            path = scope["path"]
            trigger = api.triggers.get(path.rstrip("/") or "/")
            if trigger is not None:
                await _caught(partial(self._serve, api, trigger, None), scope, receive, send)
                return
            runs = _RUNS_PATH.fullmatch(path)
            if runs is not None:
                served = partial(self._serve, api, None, runs.group(1))
                await _caught(served, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    @staticmethod
    async def _serve(
        api: Api,
        trigger: HTTPTrigger | None,
        workflow_id: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer a trigger's POST (``trigger``) or ``POST /workflows/{id}/runs``
        (``workflow_id``); run under :func:`_caught`, as the stack's routes are."""
        try:
            if trigger is not None:
                # (fire's headers were a dict of Starlette's items: the last of a name sent
                # twice; RawRequest's keeps the first, as Headers.get does)
                request = RawRequest(scope, receive)
                answer = await fire_parts(request, request.headers, trigger, api.orch)
            else:
                assert workflow_id is not None
                request = RawRequest(scope, receive, {"workflow_id": workflow_id})
                answer = await _start_run(api, request, workflow_id)
        except ApiError as exc:
            response = _error_response(
                exc.status, exc.message, headers=exc.headers, problems=exc.problems
            )
            await response(scope, receive, send)
            return
        await send_json(send, *answer)


def create_app(
    orchestrator: Any,
    *,
    triggers: Iterable[HTTPTrigger] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_token: str | None = None,
    allow_python_specs: bool = False,
    metrics: bool | Metrics = True,
) -> Starlette:
    """The ASGI app over ``orchestrator``: the REST API and ``triggers`` (HTTP triggers fire
    only while active: start them with the orchestrator as executor). ``api_token`` requires
    ``Authorization: Bearer <token>`` on the REST routes (``/healthz``, ``/readyz``,
    ``/metrics`` and ``/openapi.json`` stay open); ``allow_python_specs`` lets ``POST
    /workflows`` register specs with ``python:`` nodes (which import modules in this
    process). ``metrics=True`` follows the orchestrator's events for ``/metrics``."""
    collector: Metrics | None
    if metrics is True:
        collector = Metrics().attach(orchestrator) if hasattr(orchestrator, "events") else None
    elif metrics is False:
        collector = None
    else:
        collector = metrics
    api = Api(
        orchestrator,
        triggers=triggers,
        max_body_bytes=max_body_bytes,
        api_token=api_token,
        allow_python_specs=allow_python_specs,
        metrics=collector,
    )
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/workflows", list_workflows, methods=["GET"]),
        Route("/workflows", register_workflow, methods=["POST"]),
        Route("/workflows/{workflow_id}", get_workflow, methods=["GET"]),
        Route("/workflows/{workflow_id}/runs", start_run, methods=["POST"]),
        Route("/runs", list_runs, methods=["GET"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/runs/{run_id}/logs", run_logs, methods=["GET"]),
        *cache_routes.routes(),
        *ui_routes.routes(),
        Route("/{path:path}", _fallback, methods=_ALL_METHODS),
    ]
    app = _App(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.api = api
    app.add_middleware(_CatchAll)
    return app


def serve_trigger(trigger: HTTPTrigger, executor: Executor) -> ServerThread:
    """Serve ``trigger`` alone on its own ``host:port`` (the original system's shape), firing
    through ``executor``; :class:`TriggerError` if the port cannot be listened on."""
    from dagengine.api.server import ServerThread

    assert trigger.port is not None
    app = create_app(executor, triggers=[trigger], metrics=False)
    server = ServerThread(app, trigger.host, trigger.port)
    try:
        server.start()
    except OSError as exc:
        raise TriggerError(
            f"http trigger {trigger.id!r}: cannot listen on {trigger.host}:{trigger.port}: {exc}",
            trigger_id=trigger.id,
        ) from None
    return server

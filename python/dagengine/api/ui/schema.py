"""The OpenAPI description of the routes :mod:`dagengine.api.ui.routes` adds (merged into the
document by :func:`dagengine.api.openapi.openapi_document`). ``GET /events``, an endless
stream, and the UI's static files are left out: the document is fuzzed request by request."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RUNS_QUERY", "openapi_paths"]

_JSON = "application/json"
_STR_LIST: Final = {"type": "array", "items": {"type": "string"}}
_UNIX: Final = {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11}

#: The query parameters ``GET /runs`` adds for the UI: time filters and keyset pages.
RUNS_QUERY: Final[tuple[dict[str, Any], ...]] = (
    {"name": "since", "in": "query", "schema": _UNIX, "description": "created at or after"},
    {"name": "until", "in": "query", "schema": _UNIX, "description": "created before"},
    {
        "name": "before",
        "in": "query",
        "schema": {"type": "string"},
        "description": "keyset page: the runs listed after this run (next_before); not with offset",
    },
)


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_CRON: Final = _obj(
    ["id", "type", "workflow_id", "schedule", "paused", "next_fire_times", "last_fires"],
    id={"type": "string"},
    type={"const": "cron"},
    workflow_id={"type": "string"},
    version={"type": ["string", "null"]},
    schedule={"type": "string"},
    timezone={"type": "string"},
    overlap={"type": "string"},
    active={"type": "boolean"},
    paused={"type": "boolean"},
    next_fire_times=_STR_LIST,
    last_fires={
        "type": "array",
        "items": _obj([], scheduled={"type": "number"}, run_id={"type": "string"}),
    },
    stats={"type": "object"},
)
_HTTP: Final = _obj(
    ["id", "type", "workflow_id", "path", "url", "mode", "auth"],
    id={"type": "string"},
    type={"const": "http"},
    workflow_id={"type": "string"},
    version={"type": ["string", "null"]},
    path={"type": "string"},
    url={"type": "string"},
    mode={"type": "string"},
    auth={"type": "string"},
    active={"type": "boolean"},
)


def openapi_paths(
    secured: dict[str, Any],
    unauthorized: dict[str, Any],
    bad: dict[str, Any],
    not_found: dict[str, Any],
) -> dict[str, Any]:
    """The paths, with the document's security requirement and error responses."""
    error = {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    yank_body = {
        "required": False,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"yanked": {"type": "boolean", "default": True}},
                }
            }
        },
    }
    versions = _obj(
        ["id", "latest", "yanked_versions"],
        id={"type": "string"},
        version={"type": "string"},
        yanked={"type": ["boolean", "string"]},
        latest={"type": "string"},
        yanked_versions=_STR_LIST,
    )

    def op(
        operation_id: str, summary: str, params: list[str], ok: dict[str, Any], **more: Any
    ) -> dict[str, Any]:
        responses = {**ok, **unauthorized}
        for status, description in more.pop("errors", {}).items():
            responses[status] = {"description": description, "content": error}
        return {
            "operationId": operation_id,
            "summary": summary,
            **secured,
            "parameters": [_param(p) for p in params],
            "responses": responses,
            **more,
        }

    return {
        "/runs/{run_id}/retry": {
            "post": op(
                "retryRun",
                "retry from failed: a new run reusing the completed nodes' outputs",
                ["run_id"],
                {
                    "202": _ok(
                        "the retry is queued",
                        _obj(
                            ["run_id", "retry_of", "reused"],
                            run_id={"type": "string"},
                            retry_of={"type": "string"},
                            reused=_STR_LIST,
                        ),
                    )
                },
                errors={"404": "no such run", "409": "the run is going or succeeded"},
            )
        },
        "/workflows/{workflow_id}/versions/{version}/yank": {
            "post": op(
                "yankVersion",
                "mark a version yanked ({yanked: false} restores it)",
                ["workflow_id", "version"],
                {"200": _ok("the workflow's versions now", versions), "400": bad},
                requestBody=yank_body,
                errors={"404": "no such workflow or version"},
            )
        },
        "/workflows/{workflow_id}/rollback": {
            "post": op(
                "rollbackWorkflow",
                "yank the latest version: the latest rolls back",
                ["workflow_id"],
                {"200": _ok("the workflow's versions now", versions)},
                errors={"404": "no such workflow", "409": "no earlier version is left"},
            )
        },
        "/triggers": {
            "get": op(
                "listTriggers",
                "cron and HTTP triggers",
                [],
                {
                    "200": _ok(
                        "the triggers",
                        _obj(
                            ["cron", "http"],
                            cron={"type": "array", "items": _CRON},
                            http={"type": "array", "items": _HTTP},
                        ),
                    )
                },
            )
        },
        "/triggers/{trigger_id}/pause": {
            "post": op(
                "pauseTrigger",
                "pause a cron trigger",
                ["trigger_id"],
                {"200": _ok("the trigger", _CRON)},
                errors={"404": "no such cron trigger", "409": "an HTTP trigger"},
            )
        },
        "/triggers/{trigger_id}/resume": {
            "post": op(
                "resumeTrigger",
                "resume a cron trigger",
                ["trigger_id"],
                {"200": _ok("the trigger", _CRON)},
                errors={"404": "no such cron trigger", "409": "an HTTP trigger"},
            )
        },
        "/engines": {
            "get": op(
                "listEngines",
                "engines: address, capacity, active runs, health",
                [],
                {
                    "200": _ok(
                        "the engines",
                        _obj(
                            ["engines"],
                            engines={
                                "type": "array",
                                "items": _obj(
                                    ["engine_id", "capacity", "active_runs", "healthy"],
                                    engine_id={"type": "string"},
                                    address={"type": ["string", "null"]},
                                    capacity={"type": "integer"},
                                    active_runs={"type": "integer"},
                                    healthy={"type": "boolean"},
                                ),
                            },
                        ),
                    )
                },
            )
        },
    }

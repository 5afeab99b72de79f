"""The OpenAPI 3.1 document of :mod:`dagengine.api.app`, written next to the routes.

It is a plain dict so what it says is reviewable line by line against the handlers; the API
tests fuzz the app from this document (schemathesis) and check every response against it, so
a route that answers something undocumented fails the tests. Active HTTP triggers are added
as operations of their own paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from dagengine._jsondata import INT_MAX, INT_MIN, MAX_DEPTH
from dagengine.api import cache_routes
from dagengine.api.ui import schema as ui_schema
from dagengine.spec import (
    MAX_BACKOFF_FACTOR,
    MAX_INSTRUCTIONS,
    MAX_PARALLEL,
    MAX_RETRIES,
    MAX_SECONDS,
)
from dagengine.spec_model import TRIGGER_RULES

if TYPE_CHECKING:
    from dagengine.triggers.http import HTTPTrigger

__all__ = ["EVENT_SEQ_PATTERN", "MAX_OFFSET", "openapi_document"]

#: The largest ``offset`` of ``GET /runs``.
MAX_OFFSET: Final = 2**62
#: An event sequence number (``Last-Event-ID``, ``after``): up to 18 ASCII digits.
EVENT_SEQ_PATTERN: Final = "^[0-9]{1,18}$"

_JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or ``null``: a spec key the parser reads as not given when null (as YAML
    writes an empty value)."""
    return {"anyOf": [schema, {"type": "null"}]}


#: A Lua expression (``when``, ``map``, ``cache.key``): a string with more than blanks.
_LUA_EXPRESSION: Final = {"type": "string", "pattern": "\\S"}
#: A node's count option (``max_parallel`` and ``max_items`` of a mapped node).
_COUNT: Final = {"type": "integer", "minimum": 1, "maximum": 0xFFFF_FFFF}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": _ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


def _ok(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    body = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {_JSON: {"schema": body}}}


_NULLABLE_STR = {"type": ["string", "null"]}
_INPUTS_SCHEMA = {
    "type": ["object", "null"],
    "description": "the JSON Schema run inputs are checked against (null: not checked)",
}
_NULLABLE_NUM = {"type": ["number", "null"]}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
_LOG_LINE: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "time", "node_id", "level", "message", "truncated"],
    "properties": {
        "seq": {"type": "integer"},
        "time": {"type": "number"},
        "node_id": _NULLABLE_STR,
        "attempt": {"type": ["integer", "null"]},
        "node_attempt": {"type": ["integer", "null"]},
        "level": {"type": "string"},
        "message": {"type": "string"},
        "truncated": {"type": "boolean"},
    },
}
_LOG_PAGE: dict[str, Any] = {
    "type": "object",
    "required": ["run_id", "node", "lines", "next_after"],
    "properties": {
        "run_id": {"type": "string"},
        "node": _NULLABLE_STR,
        "lines": {"type": "array", "items": _LOG_LINE},
        "next_after": {"type": ["integer", "null"]},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "type": {"type": "string"},
            "id": {"type": "string"},
            "problems": {
                "type": "array",
                "description": "422: every input that does not match the workflow's schema",
                "items": {
                    "type": "object",
                    "required": ["path", "message"],
                    "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "engines"],
        "properties": {"status": {"type": "string"}, "engines": {"type": "integer"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "store": {"type": "string", "description": "why the store cannot write"},
        },
    },
    "WorkflowSummary": {
        "type": "object",
        "required": ["id", "versions", "latest", "metadata"],
        "properties": {
            "id": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "latest": {"type": "string"},
            "metadata": {"type": "object"},
        },
    },
    "WorkflowList": {
        "type": "object",
        "required": ["workflows"],
        "properties": {"workflows": {"type": "array", "items": _ref("WorkflowSummary")}},
    },
    "Workflow": {
        "type": "object",
        "required": ["id", "latest", "versions"],
        "properties": {
            "id": {"type": "string"},
            "latest": {"type": "string"},
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "runnable", "metadata", "dependencies"],
                    "properties": {
                        "version": {"type": "string"},
                        "registered_at": {"type": "number"},
                        "runnable": {"type": "boolean"},
                        "problem": _NULLABLE_STR,
                        "metadata": {"type": "object"},
                        "dependencies": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "workflow_id": {"type": "string"},
                                    "version_range": {"type": "string"},
                                },
                            },
                        },
                        "spec": {"type": ["object", "null"]},
                        "inputs": _INPUTS_SCHEMA,
                    },
                },
            },
            "inputs": _INPUTS_SCHEMA,
            "yanked": {"type": "array", "items": {"type": "string"}},
            "dependents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "workflow_id": {"type": "string"},
                        "version": {"type": "string"},
                        "version_range": {"type": "string"},
                    },
                },
            },
        },
    },
    "JsonValue": {
        "description": (
            f"JSON data within the limits of every door: integers in [{INT_MIN}, {INT_MAX}], "
            f"finite numbers, text without lone surrogates, at most {MAX_DEPTH} levels of "
            "nesting in all"
        ),
        "anyOf": [
            {"type": ["null", "boolean", "string"]},
            {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "array", "items": _ref("JsonValue")},
            _ref("JsonObject"),
        ],
    },
    "JsonObject": {"type": "object", "additionalProperties": _ref("JsonValue")},
    "Duration": {
        "description": "seconds, or a string like '500ms', '10s', '1m30s', '2h'",
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
            {"type": "string", "minLength": 1},
        ],
    },
    "WorkflowSpec": {
        "type": "object",
        "description": "a workflow spec (the YAML/JSON format; see docs/authoring.md)",
        "additionalProperties": False,
        "required": ["id", "version", "nodes"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            "version": {
                "type": "string",
                "pattern": "^(0|[1-9][0-9]*)[.](0|[1-9][0-9]*)[.](0|[1-9][0-9]*)([-+].*)?$",
                "description": "semver: MAJOR.MINOR.PATCH[-pre][+build]",
            },
            "description": _or_null({"type": "string"}),
            "inputs": {
                "type": ["object", "null"],
                "description": "the workflow's inputs: a schema (see docs/authoring.md)",
            },
            "max_parallel": _or_null({"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL}),
            "fail_fast": {"type": "boolean"},
            "timeout": _or_null(_ref("Duration")),
            "nodes": {"type": "array", "minItems": 1, "items": _ref("NodeSpec")},
        },
    },
    "NodeSpec": {
        "type": "object",
        "description": "a node: its id, deps and one executor (lua, python, workflow or noop)",
        "additionalProperties": False,
        "required": ["id"],
        "oneOf": [{"required": [kind]} for kind in ("lua", "python", "workflow", "noop")],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "deps": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "lua": {"type": "string"},
            "python": {"type": "string"},
            "workflow": {"type": "string"},
            "noop": {"const": True},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
            "retry_backoff": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "initial": {"type": ["number", "string"]},
                    "factor": {"type": "number", "minimum": 1, "maximum": MAX_BACKOFF_FACTOR},
                    "max": {"type": ["number", "string"]},
                },
            },
            "timeout": _or_null(_ref("Duration")),
            "limits": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "instructions": _or_null(
                        {"type": "integer", "minimum": 1, "maximum": MAX_INSTRUCTIONS}
                    ),
                    "memory": {"type": ["integer", "string", "null"]},
                },
            },
            "when": _or_null(_LUA_EXPRESSION),
            "trigger_rule": {"enum": list(TRIGGER_RULES)},
            "map": _or_null(_LUA_EXPRESSION),
            "max_parallel": _or_null(_COUNT),
            "max_items": _or_null(_COUNT),
            "allow_partial": {"type": "boolean"},
            "cache": {
                "anyOf": [
                    {"type": ["boolean", "null"]},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "key": _or_null(_LUA_EXPRESSION),
                            "ttl": _or_null(_ref("Duration")),
                        },
                    },
                ]
            },
        },
    },
    "RegisterRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["spec"],
        "properties": {"spec": _ref("WorkflowSpec"), "metadata": _ref("JsonObject")},
    },
    "Registered": {
        "type": "object",
        "required": ["id", "version"],
        "properties": {"id": {"type": "string"}, "version": {"type": "string"}},
    },
    "RunRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inputs": _ref("JsonObject"),
            "version": {"type": "string", "description": "exact version; default latest"},
            "wait": {"type": "boolean", "description": "answer 200 with the result when done"},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_SECONDS,
                "description": "seconds",
            },
            "key": {"type": "string", "description": "load-balancing key"},
        },
    },
    "RunSummary": {
        "type": "object",
        "required": ["run_id", "workflow_id", "version", "status", "attempt", "created_at"],
        "properties": {
            "run_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "version": {"type": "string"},
            "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "attempt": {"type": "integer"},
            "engine_id": _NULLABLE_STR,
            "parent_run_id": _NULLABLE_STR,
            "created_at": {"type": "number"},
            "started_at": _NULLABLE_NUM,
            "finished_at": _NULLABLE_NUM,
            "error": {"type": ["object", "null"]},
        },
    },
    "Run": {
        "allOf": [
            _ref("RunSummary"),
            {
                "type": "object",
                "required": ["outputs", "nodes", "resolved_versions"],
                "properties": {
                    "duration": _NULLABLE_NUM,
                    "inputs": {"type": "object", "description": "GET /runs/{run_id} only"},
                    "resolved_versions": {"type": "object"},
                    "outputs": {"type": "object"},
                    "nodes": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"type": "string"},
                                "attempts": {"type": "integer"},
                                "output": {"type": ["object", "null"]},
                                "error": {"type": ["object", "null"]},
                                "started_at": _NULLABLE_NUM,
                                "finished_at": _NULLABLE_NUM,
                            },
                        },
                    },
                },
            },
        ]
    },
    "RunList": {
        "type": "object",
        "required": ["runs", "limit", "offset", "next_offset"],
        "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary")},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
            "next_before": _NULLABLE_STR,
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["run_id", "cancelled", "status"],
        "properties": {
            "run_id": {"type": "string"},
            "cancelled": {"type": "boolean"},
            "status": {"type": "string"},
        },
    },
    "TriggerRequest": {
        "type": "object",
        "description": "other keys are ignored (a webhook sender's payload may carry more)",
        "additionalProperties": True,
        "properties": {"inputs": _ref("JsonObject")},
    },
    "TriggerAccepted": {
        "type": "object",
        "required": ["trigger_id", "workflow_id", "run_id", "status"],
        "properties": {
            "trigger_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "run_id": {"type": "string"},
            "status": {"type": "string"},
        },
    },
    "TriggerResult": {
        "type": "object",
        "required": [
            "trigger_id",
            "workflow_id",
            "run_id",
            "status",
            "success",
            "duration_ns",
            "outputs",
            "error",
        ],
        "properties": {
            "trigger_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "run_id": {"type": "string"},
            "status": {"type": "string"},
            "success": {"type": "boolean"},
            "duration_ns": {"type": "integer"},
            "outputs": {"type": "object"},
            "error": _NULLABLE_STR,
        },
    },
}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document(
    triggers: Iterable[HTTPTrigger] = (), *, token: bool = False
) -> dict[str, Any]:
    """The document for an app serving ``triggers``; ``token``: the REST routes need a
    bearer token (declared as a security requirement, with 401 responses)."""
    bad = _error("bad request: the body or a parameter is invalid")
    not_found = _error("no such workflow, version or run")
    too_large = _error("the body is over the configured limit")
    queue_full = _error("the run queue is full; retry after Retry-After seconds", _RETRY_AFTER)
    stopping = _error("the orchestrator is shutting down", _RETRY_AFTER)
    conflict = _error("conflict: a version rule refuses it, or the workflow cannot run")
    secured: dict[str, Any] = {}
    unauthorized: dict[str, Any] = {}
    if token:
        secured = {"security": [{"bearer": []}]}
        unauthorized = {"401": _error("missing or wrong bearer token")}
    json_body = {"content": {_JSON: {"schema": _ref("RunRequest")}}}

    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "liveness",
                "responses": {"200": _ok("alive", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "readiness: the store can write",
                "responses": {
                    "200": _ok("ready", "Readiness"),
                    "503": _ok("not ready: the store's commits fail", "Readiness"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _error("metrics are disabled"),
                },
            }
        },
        "/workflows": {
            "get": {
                "operationId": "listWorkflows",
                "summary": "registered workflows",
                **secured,
                "responses": {"200": _ok("workflows", "WorkflowList"), **unauthorized},
            },
            "post": {
                "operationId": "registerWorkflow",
                "summary": "register a workflow version from a spec",
                **secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": _ref("RegisterRequest")},
                        "application/yaml": {
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "description": "a workflow spec in YAML (a mapping)",
                            }
                        },
                    },
                },
                "responses": {
                    "201": _ok("registered (or already registered identically)", "Registered"),
                    "400": bad,
                    **unauthorized,
                    "403": _error("python nodes are not accepted over the API"),
                    "404": not_found,
                    "409": conflict,
                    "413": too_large,
                    "503": stopping,
                },
            },
        },
        "/workflows/{workflow_id}": {
            "get": {
                "operationId": "getWorkflow",
                "summary": "a workflow and its versions",
                **secured,
                "parameters": [_path_param("workflow_id")],
                "responses": {
                    "200": _ok("the workflow", "Workflow"),
                    **unauthorized,
                    "404": not_found,
                },
            }
        },
        "/workflows/{workflow_id}/runs": {
            "post": {
                "operationId": "startRun",
                "summary": "start a run",
                **secured,
                "parameters": [_path_param("workflow_id")],
                "requestBody": json_body,
                "responses": {
                    "200": _ok("the finished run (wait=true)", "Run"),
                    "202": _ok("the run is queued (wait=false)", "RunSummary"),
                    "400": bad,
                    **unauthorized,
                    "404": not_found,
                    "409": conflict,
                    "422": _error("the inputs do not match the workflow's inputs schema"),
                    "413": too_large,
                    "429": queue_full,
                    "503": stopping,
                },
            }
        },
        "/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "runs, newest first",
                **secured,
                "parameters": [
                    {"name": "workflow_id", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "enum": ["queued", "running", "succeeded", "failed", "cancelled"]
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_OFFSET,
                            "default": 0,
                        },
                    },
                    *ui_schema.RUNS_QUERY,
                ],
                "responses": {
                    "200": _ok("a page of runs", "RunList"),
                    "400": bad,
                    **unauthorized,
                    "404": _error("no run 'before' names"),
                },
            }
        },
        "/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "a run with its node states",
                **secured,
                "parameters": [_path_param("run_id")],
                "responses": {"200": _ok("the run", "Run"), **unauthorized, "404": not_found},
            }
        },
        "/runs/{run_id}/cancel": {
            "post": {
                "operationId": "cancelRun",
                "summary": "cancel a run (and its sub-workflows)",
                **secured,
                "parameters": [_path_param("run_id")],
                "responses": {
                    "200": _ok("cancelled is false if the run had already finished", "Cancelled"),
                    **unauthorized,
                    "404": not_found,
                },
            }
        },
        "/runs/{run_id}/events": {
            "get": {
                "operationId": "runEvents",
                "summary": "the run's events as server-sent events, ending with the run",
                **secured,
                "parameters": [
                    _path_param("run_id"),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": EVENT_SEQ_PATTERN},
                        "description": "resume after this event sequence number",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": EVENT_SEQ_PATTERN},
                        "description": "same as Last-Event-ID",
                    },
                ],
                "responses": {
                    "200": {
                        "description": (
                            "a stream of server-sent events, not JSON: each event is the lines "
                            "'id: <seq>', 'event: <type>', 'data: <the event as JSON>' and a "
                            "blank line; ': keep-alive' comments in between"
                        ),
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "example": (
                                        'id: 1\nevent: run.started\ndata: {"seq":1,...}\n\n'
                                    ),
                                }
                            }
                        },
                    },
                    "400": bad,
                    **unauthorized,
                    "404": not_found,
                },
            }
        },
        "/runs/{run_id}/logs": {
            "get": {
                "operationId": "runLogs",
                "summary": "the run's node log lines (Lua log/print, Python logging/print)",
                **secured,
                "parameters": [
                    _path_param("run_id"),
                    {
                        "name": "node",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": (
                            "only this node's lines (a mapped node's: its items' too; an "
                            "item id such as sq[3]: that item's)"
                        ),
                    },
                    {
                        "name": "follow",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                        "description": (
                            "true: server-sent events (event 'node.log'), ending with the run"
                        ),
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": EVENT_SEQ_PATTERN},
                        "description": "resume after this event sequence number",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": EVENT_SEQ_PATTERN},
                        "description": "lines after this sequence number (next_after pages on)",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "description": "at most this many lines (default 1000; not with follow)",
                    },
                ],
                "responses": {
                    "200": {
                        "description": (
                            "the lines, oldest first; with follow=true a stream of server-sent "
                            "events whose data is one line"
                        ),
                        "content": {
                            "application/json": {"schema": _LOG_PAGE},
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "example": ('id: 7\nevent: node.log\ndata: {"seq":7,...}\n\n'),
                                }
                            },
                        },
                    },
                    "400": bad,
                    **unauthorized,
                    "404": not_found,
                },
            }
        },
    }
    for trigger in triggers:
        auth: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if trigger.auth == "bearer":
            auth = {"security": [{"bearer": []}]}
            extra["401"] = _error("missing or wrong bearer token")
        elif trigger.auth in ("hmac", "hmac-timestamp"):
            timestamped = trigger.auth == "hmac-timestamp"
            auth = {
                "parameters": [
                    {
                        "name": "X-Dagengine-Signature" if timestamped else "X-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": (
                            "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>"
                            if timestamped
                            else "sha256=<hex HMAC-SHA256 of the body>"
                        ),
                    }
                ]
            }
            extra["401"] = _error(
                "missing, wrong, stale or replayed signature"
                if timestamped
                else "missing or wrong signature"
            )
        paths[trigger.path] = {
            "post": {
                "operationId": f"trigger_{trigger.id}",
                "summary": (
                    f"HTTP trigger {trigger.id}: runs {trigger.workflow_id} ({trigger.mode})"
                ),
                **auth,
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("TriggerRequest")}},
                },
                "responses": {
                    "200": _ok("the run finished (sync mode)", "TriggerResult"),
                    "202": _ok(
                        "the run is queued (async mode, or sync past its timeout)",
                        "TriggerAccepted",
                    ),
                    "400": bad,
                    **extra,
                    "404": _error("the trigger's workflow or version is not registered"),
                    "409": conflict,
                    "422": _error("the inputs do not match the workflow's inputs schema"),
                    "413": too_large,
                    "429": queue_full,
                    "503": stopping,
                },
            }
        }
    paths.update(cache_routes.openapi_paths(secured, unauthorized, not_found))
    paths.update(ui_schema.openapi_paths(secured, unauthorized, bad, not_found))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "dagengine",
            "version": _version(),
            "description": "Workflows, runs, HTTP triggers and metrics of a dagengine server.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return doc


def _version() -> str:
    from dagengine import __version__

    return str(__version__)

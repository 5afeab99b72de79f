"""Clearing the orchestrator's cache of node outputs (see :mod:`dagengine.orchestrator.cache`)
over REST, and the route's part of the OpenAPI document: ``DELETE
/workflows/{workflow_id}/cache`` deletes a workflow's entries, or one node's (``?node=ID``),
and answers ``{"deleted": <entries>}``; 404 for a workflow that is not registered. The next
run of a cleared node misses and runs it. (Entries are kept for registered workflows only:
clearing them all is clearing each workflow's, as ``dagengine cache clear`` does.)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dagengine.api.requests import ApiError, _api, _call

__all__ = ["openapi_paths", "routes"]


async def clear_workflow_cache(request: Request) -> Response:
    api = _api(request)
    api.check_token(request)
    workflow_id = request.path_params["workflow_id"]
    node_id = request.query_params.get("node")
    if node_id is not None and not node_id:
        raise ApiError(400, "query parameter 'node' must name a node")
    await _call(api.orch.registry.versions, workflow_id)  # 404 for an unknown workflow
    deleted = await _call(api.orch.store.clear_cache_entries, workflow_id, node_id)
    return JSONResponse({"deleted": deleted})


def routes() -> list[Route]:
    """The route, for :func:`dagengine.api.create_app`."""
    return [
        Route("/workflows/{workflow_id}/cache", clear_workflow_cache, methods=["DELETE"]),
    ]


def openapi_paths(
    secured: dict[str, Any], unauthorized: dict[str, Any], not_found: dict[str, Any]
) -> dict[str, Any]:
    """The route's OpenAPI path, with the document's security requirement and errors."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    deleted = {
        "200": {
            "description": "how many entries were deleted",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["deleted"],
                        "properties": {"deleted": {"type": "integer", "minimum": 0}},
                    }
                }
            },
        }
    }
    return {
        "/workflows/{workflow_id}/cache": {
            "delete": {
                "operationId": "clearWorkflowCache",
                "summary": "delete a workflow's cached node outputs, or one node's",
                **secured,
                "parameters": [
                    {
                        "name": "workflow_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "node",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "only this node's entries",
                    },
                ],
                "responses": {
                    **deleted,
                    **unauthorized,
                    "400": {"description": "an empty node", "content": error},
                    "404": not_found,
                },
            }
        },
    }

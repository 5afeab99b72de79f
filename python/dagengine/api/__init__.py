"""The HTTP API: one Starlette app serving the REST API and every HTTP trigger
(:func:`create_app`), its OpenAPI document, Prometheus metrics, and a uvicorn server thread."""

from dagengine.api.app import Api, ApiError, create_app, run_to_dict
from dagengine.api.metrics import Metrics
from dagengine.api.openapi import openapi_document
from dagengine.api.server import ServerThread

__all__ = [
    "Api",
    "ApiError",
    "Metrics",
    "ServerThread",
    "create_app",
    "openapi_document",
    "run_to_dict",
]

"""An orchestrator with the API on a real loopback socket (uvicorn on port 0, in a thread)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from dagengine.api import ServerThread, create_app
from dagengine.orchestrator import Orchestrator
from dagengine.orchestrator.config import Config
from dagengine.triggers import HTTPTrigger

LUA3 = {
    "id": "lua3",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return {x = (inputs.n or 1) * 2}"},
        {"id": "b", "deps": ["a"], "lua": "return {y = results.a.x + 1}"},
        {"id": "c", "deps": ["b"], "lua": "return {z = results.b.y, via = inputs._trigger_type}"},
    ],
}
FAILING = {"id": "failing", "version": "1.0.0", "nodes": [{"id": "a", "lua": "error('boom')"}]}
SECRET = "s3cret"


@dataclass
class Served:
    orch: Orchestrator
    server: ServerThread
    client: httpx.Client
    triggers: list[HTTPTrigger]
    app: Any


def make_triggers() -> list[HTTPTrigger]:
    return [
        HTTPTrigger("sync", "/hooks/sync", "lua3", mode="sync"),
        HTTPTrigger("async", "/hooks/async", "lua3", mode="async"),
        HTTPTrigger("bearer", "/hooks/bearer", "lua3", auth="bearer", secret=SECRET),
        HTTPTrigger("hmac", "/hooks/hmac", "lua3", auth="hmac", secret=SECRET, mode="async"),
        HTTPTrigger("small", "/hooks/small", "lua3", max_body_bytes=64),
        HTTPTrigger("fail", "/hooks/fail", "failing"),
    ]


def serve(config: Config | None = None, **app_kwargs: Any) -> Served:
    orch = Orchestrator(store=":memory:", config=config)
    orch.register_workflow("lua3", "1.0.0", LUA3)
    orch.register_workflow("failing", "1.0.0", FAILING)
    triggers = make_triggers()
    app = create_app(orch, triggers=triggers, **app_kwargs)
    for trigger in triggers:
        trigger.start(orch)
    server = ServerThread(app).start()
    return Served(orch, server, httpx.Client(base_url=server.url, timeout=30), triggers, app)


def shutdown(served: Served) -> None:
    served.client.close()
    for trigger in served.triggers:
        trigger.stop()
    served.server.stop()
    served.app.state.api.close()
    served.orch.stop()


@pytest.fixture(scope="module")
def api() -> Iterator[Served]:
    served = serve(max_body_bytes=4096)
    yield served
    shutdown(served)

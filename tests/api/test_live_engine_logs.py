"""A remote engine's Python node's lines reach ``GET /runs/{id}/logs?follow=true`` while the
node still runs, not only when its attempt ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
from dagengine.api import ServerThread, create_app
from dagengine.orchestrator import Orchestrator
from processes import EngineProcess

HELD = {"nodes": [{"id": "held", "python": "live_log_tasks:held"}]}


def _messages(lines: Iterator[str], count: int) -> list[str]:
    seen: list[str] = []
    for line in lines:
        if line.startswith("data: "):
            seen.append(json.loads(line.removeprefix("data: "))["message"])
            if len(seen) == count:
                break
    return seen


def test_lines_of_a_running_remote_python_node_are_followed_live(tmp_path: Path) -> None:
    release = tmp_path / "release"
    orch = Orchestrator(store=":memory:", embedded_engine=False)
    proc = EngineProcess("--engine-id", "live-logs", "--capacity", "2")
    app = create_app(orch)
    server = ServerThread(app).start()
    try:
        orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("held", "1.0.0", HELD)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"inputs": {"release": str(release)}}
            run_id = client.post("/workflows/held/runs", json=body).json()["run_id"]
            params = {"follow": "true"}
            with client.stream("GET", f"/runs/{run_id}/logs", params=params) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                # Seen while the node waits for the file this test has not created yet.
                assert _messages(lines, 2) == ["waiting for release", "still waiting"]
                assert client.get(f"/runs/{run_id}").json()["status"] == "running"
                release.touch()
                assert _messages(lines, 1) == ["released"]
                rest = list(lines)  # the stream ends with the run
            assert not any(line.startswith("data: ") for line in rest)
            run = client.get(f"/runs/{run_id}").json()
            assert run["status"] == "succeeded"
        orch.store.flush()
        logs = httpx.get(f"{server.url}/runs/{run_id}/logs", timeout=30).json()
        assert [(x["level"], x["message"]) for x in logs["lines"]] == [
            ("INFO", "waiting for release"),
            ("WARNING", "still waiting"),
            ("INFO", "released"),
        ]
        assert all(x["node_id"] == "held" and x["node_attempt"] == 1 for x in logs["lines"])
    finally:
        release.touch()
        server.stop()
        app.state.api.close()
        orch.stop()
        proc.kill()

"""The HTTP API and HTTP triggers over a real socket: every status code the door can give,
both authentication modes, the REST routes, server-sent events and metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from dagengine import DAG, Node, PythonExecutor
from dagengine.api import ServerThread, create_app
from dagengine.exceptions import TriggerError
from dagengine.orchestrator import Orchestrator
from dagengine.orchestrator.config import Config
from dagengine.triggers import HTTPTrigger
from processes import wait_for
from starlette.types import ASGIApp, Receive, Scope, Send

from .conftest import LUA3, SECRET, Served, serve, shutdown

pytestmark = pytest.mark.integration


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- triggers --------------------------------------------------------------------------------


def test_sync_trigger_answers_with_the_result(api: Served) -> None:
    r = api.client.post("/hooks/sync", json={"inputs": {"n": 5}})
    assert r.status_code == 200
    body = r.json()
    assert body["trigger_id"] == "sync"
    assert body["workflow_id"] == "lua3"
    assert body["success"] is True
    assert body["error"] is None
    assert isinstance(body["duration_ns"], int)
    assert body["duration_ns"] > 0
    assert body["outputs"]["c"] == {"z": 11, "via": "http"}
    run = api.orch.get_run(body["run_id"])
    assert run.status == "succeeded"
    rec = api.orch.store.get_run(body["run_id"])
    assert rec is not None
    assert rec.inputs["_trigger_id"] == "sync"
    assert rec.inputs["_trigger_type"] == "http"
    assert rec.inputs["_trigger_time"].endswith("Z")


def test_sync_trigger_reports_a_failed_run(api: Served) -> None:
    r = api.client.post("/hooks/fail", json={})
    assert r.status_code == 200
    assert r.json()["success"] is False
    assert "boom" in r.json()["error"]


def test_async_trigger_answers_202_with_the_run_id(api: Served) -> None:
    r = api.client.post("/hooks/async", json={"inputs": {"n": 2}})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/runs/{body['run_id']}"
    handle_result = api.client.get(f"/runs/{body['run_id']}")
    assert handle_result.status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b"", "empty request body"),
        (b'{"inputs": 3}', "'inputs' must be a JSON object"),
        (b'{"inputs": {"x": NaN}}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_bodies_are_400(api: Served, body: bytes, message: str) -> None:
    r = api.client.post("/hooks/sync", content=body[:4000])
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_bearer_auth(api: Served) -> None:
    assert api.client.post("/hooks/bearer", json={}).status_code == 401
    wrong = api.client.post("/hooks/bearer", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    ok = api.client.post(
        "/hooks/bearer", json={"inputs": {}}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert ok.status_code == 200
    assert ok.json()["success"] is True


def test_hmac_auth(api: Served) -> None:
    body = json.dumps({"inputs": {"n": 1}}).encode()
    assert api.client.post("/hooks/hmac", content=body).status_code == 401
    bad = api.client.post("/hooks/hmac", content=body, headers={"X-Signature": sign(b"other")})
    assert bad.status_code == 401
    odd = api.client.post(
        "/hooks/hmac", content=body, headers={"X-Signature": "sha256=\xe9".encode("latin-1")}
    )
    assert odd.status_code == 401
    ok = api.client.post("/hooks/hmac", content=body, headers={"X-Signature": sign(body)})
    assert ok.status_code == 202


def test_unknown_paths_and_workflows_are_404(api: Served) -> None:
    assert api.client.post("/hooks/none", json={}).status_code == 404
    assert api.client.get("/nothing/here").status_code == 404
    assert api.client.get("/workflows/nope").status_code == 404
    assert api.client.post("/workflows/nope/runs", json={}).status_code == 404
    r = api.client.post("/workflows/lua3/runs", json={"version": "9.9.9"})
    assert r.status_code == 404
    assert api.client.get("/runs/nope").status_code == 404
    assert api.client.post("/runs/nope/cancel").status_code == 404
    assert api.client.get("/runs/nope/events").status_code == 404


def test_trigger_whose_workflow_is_missing_is_404() -> None:
    with Orchestrator(store=":memory:") as orch:
        trig = HTTPTrigger("t", "/hooks/t", "absent", mode="async")
        app = create_app(orch, triggers=[trig], metrics=False)
        trig.start(orch)
        with ServerThread(app) as server:
            r = httpx.post(server.url + "/hooks/t", json={})
        assert r.status_code == 404
        assert "absent" in r.json()["error"]


def test_a_middleware_the_user_adds_sees_the_trigger_and_run_routes_too() -> None:
    # The busiest routes are served ahead of Starlette's stack; not once a user wrapped the
    # app in a middleware of their own (an auth or rate limit): it must see every request.
    seen: list[str] = []

    class Refuse:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["path"])
            await send({"type": "http.response.start", "status": 403, "headers": []})
            await send({"type": "http.response.body", "body": b"refused"})

    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("lua3", "1.0.0", LUA3)
        trig = HTTPTrigger("t", "/hooks/t", "lua3", mode="async")
        app = create_app(orch, triggers=[trig], metrics=False)
        app.add_middleware(Refuse)
        trig.start(orch)
        with ServerThread(app) as server:
            for path in ("/hooks/t", "/workflows/lua3/runs"):
                assert httpx.post(server.url + path, json={}).status_code == 403
        app.state.api.close()
        assert orch.list_runs() == []
    assert seen == ["/hooks/t", "/workflows/lua3/runs"]


def test_wrong_method_is_405(api: Served) -> None:
    r = api.client.get("/hooks/sync")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    r = api.client.delete("/runs")
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]
    assert api.client.post("/healthz").status_code == 405
    assert api.client.put("/workflows").status_code == 405


def test_body_over_the_limit_is_413(api: Served) -> None:
    big = json.dumps({"inputs": {"x": "y" * 100}}).encode()
    assert api.client.post("/hooks/small", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streamed
        yield b'{"inputs": {"x": "'
        for _ in range(10):
            yield b"y" * 50
        yield b'"}}'

    assert api.client.post("/hooks/small", content=chunks()).status_code == 413
    # The REST routes have the app-wide limit (4096 here).
    huge = json.dumps({"inputs": {"x": "y" * 5000}})
    assert api.client.post("/workflows/lua3/runs", content=huge).status_code == 413
    # A lying Content-Length is refused too.
    with socket.create_connection(("127.0.0.1", api.server.port)) as sock:
        sock.sendall(b"POST /hooks/small HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n")
        assert b" 413 " in sock.recv(1000)


def test_full_queue_is_429_with_retry_after() -> None:
    # No run may wait, and there is no engine to start one on: every run would have to wait.
    served = serve(config=Config(store_path=":memory:", queue_limit=0))
    served.orch.unregister_engine("local")
    try:
        r = served.client.post("/hooks/async", json={})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        r = served.client.post("/workflows/lua3/runs", json={})
        assert r.status_code == 429
    finally:
        shutdown(served)


def test_port_taken_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with Orchestrator(store=":memory:") as orch:
            trig = HTTPTrigger("own", "/hooks/own", "lua3", port=port)
            with pytest.raises(TriggerError, match="cannot listen"):
                trig.start(orch)
            assert not trig.is_active
            # The original system's shape: a trigger on a port of its own.
            orch.register_workflow("lua3", "1.0.0", LUA3)
            trig.port = 0
            trig.start(orch)
            try:
                assert trig.url is not None
                r = httpx.post(trig.url, json={"inputs": {"n": 1}})
                assert r.status_code == 200
                assert r.json()["outputs"]["c"]["z"] == 3
            finally:
                trig.stop()
            trig.start(orch)  # start after stop
            trig.stop()


def test_trigger_paths_are_checked() -> None:
    with Orchestrator(store=":memory:") as orch:
        for path in ("/runs", "/runs/x", "/openapi.json/"):
            with pytest.raises(TriggerError, match="taken by the REST API"):
                create_app(orch, triggers=[HTTPTrigger("t", path, "wf")])
    with pytest.raises(TriggerError, match="invalid path"):
        HTTPTrigger("t", "no-slash", "wf")
    with pytest.raises(TriggerError, match="secret"):
        HTTPTrigger("t", "/x", "wf", auth="hmac")
    with Orchestrator(store=":memory:") as orch, pytest.raises(TriggerError, match="already used"):
        create_app(orch, triggers=[HTTPTrigger("a", "/x", "wf"), HTTPTrigger("b", "/x/", "wf")])


def test_stopped_trigger_is_404(api: Served) -> None:
    trig = next(t for t in api.triggers if t.id == "async")
    trig.stop()
    try:
        assert api.client.post("/hooks/async", json={}).status_code == 404
    finally:
        trig.start(api.orch)


# -- REST ------------------------------------------------------------------------------------


def test_register_and_list_workflows(api: Served) -> None:
    spec = {"id": "reg", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {v = 1}"}]}
    r = api.client.post("/workflows", json={"spec": spec, "metadata": {"team": "data"}})
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "reg", "version": "1.0.0"}
    yaml_body = b"id: reg\nversion: 1.1.0\nnodes:\n  - id: a\n    lua: return {v = 2}\n"
    r = api.client.post(
        "/workflows", content=yaml_body, headers={"Content-Type": "application/yaml"}
    )
    assert r.status_code == 201, r.text
    listing = api.client.get("/workflows").json()["workflows"]
    reg = next(w for w in listing if w["id"] == "reg")
    assert reg["versions"] == ["1.0.0", "1.1.0"]
    assert reg["latest"] == "1.1.0"
    detail = api.client.get("/workflows/reg").json()
    assert [v["version"] for v in detail["versions"]] == ["1.0.0", "1.1.0"]
    assert detail["versions"][0]["metadata"] == {"team": "data"}
    # Re-registering the same spec is fine; an older version of the line is a conflict.
    assert (
        api.client.post("/workflows", json={"spec": spec, "metadata": {"team": "data"}}).status_code
        == 201
    )
    older = {**spec, "version": "1.0.1"}
    assert api.client.post("/workflows", json={"spec": older}).status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"nospec": 1}, 400, 'expected {"spec"'),
        ({"spec": {"id": "x", "nodes": []}}, 400, "needs a 'version'"),
        ({"spec": {"version": "1.0.0", "nodes": []}}, 400, "needs an 'id'"),
        ({"spec": {"id": "x", "version": "1.0.0", "nodes": [{"id": "a"}]}}, 400, "executor"),
        (
            {"spec": {"id": "x", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {"}]}},
            400,
            "",
        ),
        ({"spec": {"id": "x", "version": "one", "nodes": []}}, 400, ""),
        (
            {
                "spec": {
                    "id": "x",
                    "version": "1.0.0",
                    "nodes": [{"id": "a", "python": "os:system"}],
                }
            },
            403,
            "python",
        ),
    ],
)
def test_bad_specs(api: Served, body: dict[str, object], status: int, message: str) -> None:
    r = api.client.post("/workflows", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_bad_yaml_is_400(api: Served) -> None:
    for text in (b"a: [", b"- 1\n- 2\n", b"a: 1\na: 2\n"):
        r = api.client.post("/workflows", content=text, headers={"Content-Type": "text/yaml"})
        assert r.status_code == 400, r.text


def test_start_runs_and_read_them(api: Served) -> None:
    r = api.client.post("/workflows/lua3/runs", json={"inputs": {"n": 3}, "wait": True})
    assert r.status_code == 200
    run = r.json()
    assert run["status"] == "succeeded"
    assert run["outputs"]["c"]["z"] == 7
    assert set(run["nodes"]) == {"a", "b", "c"}
    assert run["nodes"]["a"]["status"] == "succeeded"
    r = api.client.post("/workflows/lua3/runs", json={"inputs": {"n": 1}, "version": "1.0.0"})
    assert r.status_code == 202
    run_id = r.json()["run_id"]
    got = api.client.get(f"/runs/{run_id}").json()
    assert got["run_id"] == run_id
    assert got["workflow_id"] == "lua3"
    for bad in (
        {"inputs": []},
        {"wait": "yes"},
        {"version": 1},
        {"timeout": -1},
        {"timeout": True},
    ):
        assert api.client.post("/workflows/lua3/runs", json=bad).status_code == 400, bad


def test_list_runs_filters_and_pagination(api: Served) -> None:
    for n in range(3):
        api.client.post("/workflows/lua3/runs", json={"inputs": {"n": n}, "wait": True})
    page = api.client.get("/runs", params={"workflow_id": "lua3", "limit": 2}).json()
    assert len(page["runs"]) == 2
    assert page["next_offset"] == 2
    nxt = api.client.get("/runs", params={"workflow_id": "lua3", "limit": 2, "offset": 2}).json()
    assert {r["run_id"] for r in nxt["runs"]}.isdisjoint(r["run_id"] for r in page["runs"])
    failed = api.client.get("/runs", params={"status": "failed"}).json()["runs"]
    assert all(r["status"] == "failed" for r in failed)
    assert api.client.get("/runs", params={"status": "bogus"}).status_code == 400
    assert api.client.get("/runs", params={"limit": 0}).status_code == 400
    assert api.client.get("/runs", params={"limit": "x"}).status_code == 400
    assert api.client.get("/runs", params={"offset": -1}).status_code == 400


def test_cancel(api: Served) -> None:
    run_id = api.client.post("/workflows/lua3/runs", json={"wait": True}).json()["run_id"]
    r = api.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 200
    assert r.json() == {"run_id": run_id, "cancelled": False, "status": "succeeded"}


def test_cancel_a_queued_run() -> None:
    # No engine at all: runs stay queued until cancelled.
    with Orchestrator(store=":memory:", embedded_engine=False) as orch:
        orch.register_workflow("lua3", "1.0.0", LUA3)
        app = create_app(orch)
        with ServerThread(app) as server:
            client = httpx.Client(base_url=server.url)
            run_id = client.post("/workflows/lua3/runs", json={}).json()["run_id"]
            assert client.get(f"/runs/{run_id}").json()["status"] == "queued"
            r = client.post(f"/runs/{run_id}/cancel")
            assert r.json() == {"run_id": run_id, "cancelled": True, "status": "cancelled"}
            client.close()
        app.state.api.close()


def read_sse(response: httpx.Response) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    return events


def test_run_events_stream_replays_and_resumes(api: Served) -> None:
    run_id = api.client.post("/workflows/lua3/runs", json={"wait": True}).json()["run_id"]
    with api.client.stream("GET", f"/runs/{run_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run.queued"
    assert kinds[-1] == "run.completed"
    assert kinds.count("node.succeeded") == 3
    assert all(json.loads(e["data"])["run_id"] == run_id for e in events)
    # Resume after the third event.
    third = events[2]["id"]
    with api.client.stream("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": third}) as r:
        rest = read_sse(r)
    assert [e["id"] for e in rest] == [e["id"] for e in events[3:]]
    assert (
        api.client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"}).status_code == 400
    )


def test_live_events_end_with_the_run() -> None:
    # No engine: the run waits in the queue; the stream follows it live until cancelled.
    with Orchestrator(store=":memory:", embedded_engine=False) as orch:
        orch.register_workflow("lua3", "1.0.0", LUA3)
        app = create_app(orch)
        with ServerThread(app) as server:
            client = httpx.Client(base_url=server.url, timeout=10)
            run_id = client.post("/workflows/lua3/runs", json={}).json()["run_id"]
            with client.stream("GET", f"/runs/{run_id}/events") as r:
                lines = r.iter_lines()
                assert next(lines) == "id: " + str(orch.events.last_seq)
                orch.cancel_run(run_id)
                rest = list(lines)
            assert "event: run.cancelled" in rest
            client.close()
        app.state.api.close()


def test_healthz_metrics_openapi(api: Served) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "engines": 1}
    api.client.post("/workflows/lua3/runs", json={"wait": True})
    text = api.client.get("/metrics").text
    for name in (
        'dagengine_runs_total{status="succeeded"}',
        "dagengine_node_duration_seconds_bucket",
        "dagengine_schedule_to_start_seconds_count",
        "dagengine_queue_depth",
        'dagengine_engines{state="healthy"} 1.0',
        'dagengine_trigger_fires_total{outcome="fired",trigger_id="sync"}',
    ):
        assert name in text, name
    doc = api.client.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    assert "/hooks/sync" in doc["paths"]
    assert "/runs/{run_id}/events" in doc["paths"]


def test_readyz_says_when_the_store_cannot_write(api: Served) -> None:
    assert api.client.get("/readyz").json() == {"status": "ready"}
    store = api.orch.store
    with store._lock:
        store._db.execute("PRAGMA query_only = ON")  # every commit fails now
    try:
        refused = api.client.post("/workflows/lua3/runs", json={"inputs": {"n": 1}})
        assert refused.status_code >= 500
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready"
        assert "readonly" in ready.json()["store"]
        assert api.client.get("/healthz").status_code == 200  # alive all the same
    finally:
        with store._lock:
            store._db.execute("PRAGMA query_only = OFF")
    done = api.client.post("/workflows/lua3/runs", json={"inputs": {"n": 1}, "wait": True})
    assert done.status_code == 200, done.text
    assert api.client.get("/readyz").json() == {"status": "ready"}


def test_api_token_protects_the_rest_routes() -> None:
    served = serve(api_token="tok")
    try:
        assert served.client.get("/workflows").status_code == 401
        assert served.client.get("/runs", headers={"Authorization": "Bearer no"}).status_code == 401
        ok = served.client.get("/workflows", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200
        assert served.client.get("/healthz").status_code == 200
        assert served.client.get("/readyz").status_code == 200
    finally:
        shutdown(served)


def test_internal_errors_are_500_json_without_traceback(
    api: Served, caplog: pytest.LogCaptureFixture
) -> None:
    original = api.orch.list_workflows
    api.orch.list_workflows = lambda: 1 / 0  # type: ignore[assignment,method-assign,misc]
    try:
        r = api.client.get("/workflows")
    finally:
        api.orch.list_workflows = original  # type: ignore[method-assign]
    _assert_internal_error(r, caplog)
    # The routes served ahead of the stack (a run's start, a trigger's) answer the same.
    state = api.app.state.api
    trigger = state.triggers["/hooks/async"]
    state.check_token = lambda request: 1 / 0
    trigger.auth_problem = lambda headers, body: 1 / 0
    try:
        for path in ("/workflows/lua3/runs", "/hooks/async"):
            _assert_internal_error(api.client.post(path, json={}), caplog)
    finally:
        del state.check_token, trigger.auth_problem


def _assert_internal_error(r: httpx.Response, caplog: pytest.LogCaptureFixture) -> None:
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal error"
    assert "Traceback" not in r.text
    assert "ZeroDivision" not in r.text
    assert any(body["id"] in rec.getMessage() for rec in caplog.records)


def test_sync_trigger_past_its_timeout_answers_202_and_the_run_goes_on() -> None:
    gate = threading.Event()

    def held(ctx: object) -> dict[str, int]:
        gate.wait(30)
        return {"v": 1}

    dag = DAG()
    dag.add_node(Node("held", [], PythonExecutor(held)))
    with Orchestrator(store=":memory:") as orch:
        orch.register_workflow("held", "1.0.0", dag)
        trig = HTTPTrigger("slow", "/hooks/slow", "held", mode="sync", sync_timeout=0.05)
        app = create_app(orch, triggers=[trig], metrics=False)
        trig.start(orch)
        with ServerThread(app) as server:
            r = httpx.post(server.url + "/hooks/slow", json={}, timeout=30)
            assert r.status_code == 202
            body = r.json()
            assert body["status"] == "running"
            assert r.headers["location"] == f"/runs/{body['run_id']}"
            # Acknowledged: stored before the answer, as an async trigger's run is.
            assert orch.store.get_run(body["run_id"]) is not None
            gate.set()
            wait_for(lambda: orch.get_run(body["run_id"]).status == "succeeded", "the run")
        trig.stop()
        app.state.api.close()

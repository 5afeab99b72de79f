"""The API routes the UI added: keyset pages and time filters of ``GET /runs``, ``GET
/events``, ``POST /runs/{id}/retry`` (and ``dagengine retry``), yanking versions and rolling
the latest back, cron pause/resume, ``GET /triggers``, ``GET /engines``, the UI's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import retry_tasks
from dagengine.api import ServerThread, create_app
from dagengine.api.ui.routes import set_cron_triggers
from dagengine.exceptions import NoMatchingVersion
from dagengine.orchestrator import Orchestrator
from dagengine.triggers import CronTrigger, HTTPTrigger, ManualClock, TriggerScheduler
from processes import wait_for

pytestmark = pytest.mark.integration

QUICK = {"id": "quick", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {x = 1}"}]}
FLAKY = {
    "id": "flaky",
    "version": "1.0.0",
    "nodes": [
        {"id": "first", "python": "retry_tasks:first"},
        {"id": "gate", "deps": ["first"], "python": "retry_tasks:gate"},
        {"id": "last", "deps": ["gate"], "lua": "return {v = results.gate.through}"},
    ],
}
HOLD = {"id": "hold", "version": "1.0.0", "nodes": [{"id": "w", "python": "retry_tasks:hold"}]}


def versioned(version: str) -> dict[str, Any]:
    return {
        "id": "v",
        "version": version,
        "nodes": [{"id": "n", "lua": f"return {{v = '{version}'}}"}],
    }


class Rig:
    def __init__(self, store: str, token: str | None = None) -> None:
        self.orch = Orchestrator(store=store)
        for spec in (QUICK, FLAKY, versioned("1.0.0"), versioned("1.1.0"), versioned("1.2.0")):
            self.orch.register_workflow(spec["id"], spec["version"], spec)
        self.clock = ManualClock(1_700_000_000.0)
        self.scheduler = TriggerScheduler(self.clock)
        self.cron = CronTrigger("every-minute", "0 * * * * *", "quick", scheduler=self.scheduler)
        self.hook = HTTPTrigger("hook", "/hooks/quick", "quick", auth="hmac", secret="s")
        self.app = create_app(
            self.orch, triggers=[self.hook], api_token=token, allow_python_specs=True
        )
        set_cron_triggers(self.app, [self.cron])
        self.cron.start(self.orch)
        self.hook.start(self.orch)
        self.server = ServerThread(self.app).start()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.server.url, timeout=30, headers=headers)

    def close(self) -> None:
        self.client.close()
        self.cron.stop()
        self.hook.stop()
        self.server.stop()
        self.app.state.api.close()
        self.orch.stop()

    def run(self, workflow: str, **inputs: Any) -> dict[str, Any]:
        answer = self.client.post(
            f"/workflows/{workflow}/runs", json={"inputs": inputs, "wait": True}
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    retry_tasks.CLOSED["closed"] = True
    r = Rig(str(tmp_path / "store.db"))
    yield r
    r.close()


# -- GET /runs -----------------------------------------------------------------------------


def test_keyset_pages_walk_every_run_once(rig: Rig) -> None:
    ids = [rig.run("quick")["run_id"] for _ in range(7)]
    seen: list[str] = []
    before = None
    while True:
        query = {"workflow_id": "quick", "limit": 3, **({"before": before} if before else {})}
        page = rig.client.get("/runs", params=query).json()
        seen += [r["run_id"] for r in page["runs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids[::-1]
    # With an offset too: that many more are skipped after the keyset's run.
    page = rig.client.get("/runs", params={"before": ids[5], "offset": 2, "limit": 2}).json()
    assert [r["run_id"] for r in page["runs"]] == [ids[2], ids[1]]
    assert page["next_offset"] == 4


def test_time_filters_and_bad_paging(rig: Rig) -> None:
    runs = [rig.run("quick") for _ in range(3)]
    middle = runs[1]["created_at"]
    newer = rig.client.get("/runs", params={"since": middle}).json()["runs"]
    assert [r["run_id"] for r in newer] == [runs[2]["run_id"], runs[1]["run_id"]]
    older = rig.client.get("/runs", params={"until": middle}).json()["runs"]
    assert [r["run_id"] for r in older] == [runs[0]["run_id"]]
    assert len(rig.client.get("/runs", params={"since": "1e9"}).json()["runs"]) == 3
    for query, status, needle in [
        ({"since": "yesterday"}, 400, "'since' must be Unix seconds in [0, 1e11)"),
        ({"since": "1_000"}, 400, "'since' must be Unix seconds"),
        ({"until": "-5"}, 400, "'until' must be Unix seconds"),
        ({"until": "1e11"}, 400, "'until' must be Unix seconds"),
        ({"before": "no-such-run"}, 404, "before: no run 'no-such-run'"),
    ]:
        answer = rig.client.get("/runs", params=query)
        assert answer.status_code == status, query
        assert needle in answer.json()["error"]


# -- GET /events ---------------------------------------------------------------------------


def test_events_stream_every_run_live(rig: Rig) -> None:
    got: list[dict[str, Any]] = []
    connected = threading.Event()
    finished = threading.Event()

    def follow() -> None:
        with rig.client.stream("GET", "/events", params={"types": "run.*"}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                connected.set()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    got.append(event)
                    if event["type"] == "run.completed":
                        finished.set()
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert connected.wait(30)
    run_id = rig.run("quick")["run_id"]
    assert finished.wait(30)
    assert [e["type"] for e in got if e["run_id"] == run_id] == [
        "run.queued",
        "run.started",
        "run.completed",
    ]
    assert all(e["type"].startswith("run.") for e in got)
    for types in ("node.<x>", "run.bogus", "", " , "):
        bad = rig.client.get("/events", params={"types": types})
        assert bad.status_code == 400, types
    assert rig.client.get("/events", headers={"Last-Event-ID": "x"}).status_code == 400


# -- retry ---------------------------------------------------------------------------------


def test_retry_reuses_the_completed_nodes(rig: Rig) -> None:
    failed = rig.run("flaky", tag="r1")
    assert failed["status"] == "failed"
    assert retry_tasks.CALLS["r1"] == 1
    retry_tasks.CLOSED["closed"] = False
    answer = rig.client.post(f"/runs/{failed['run_id']}/retry")
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["retry_of"] == failed["run_id"]
    assert body["reused"] == ["first"]
    assert answer.headers["location"] == f"/runs/{body['run_id']}"
    rig.orch.get_run(body["run_id"])  # known at once
    wait_for(lambda: rig.orch.get_run(body["run_id"]).status == "succeeded", "the retry's end")
    run = rig.client.get(f"/runs/{body['run_id']}").json()
    assert run["outputs"]["last"] == {"v": 7}
    assert run["nodes"]["first"]["output"] == {"tag": "r1", "n": 7}
    assert run["nodes"]["first"]["attempts"] == 0  # reused, not run
    assert retry_tasks.CALLS["r1"] == 1
    assert rig.orch.store.node_outputs(body["run_id"])["first"] == {"tag": "r1", "n": 7}
    assert run["inputs"] == {"tag": "r1"}


def test_a_retry_cancelled_while_queued_is_forgotten(rig: Rig) -> None:
    failed = rig.run("flaky", tag="q")
    reuse = rig.orch._reuse
    # What a retry cancelled while queued leaves: reused outputs for a run that ended without
    # a first attempt. The next retry's put drops it; that retry's own goes at its start.
    ended = rig.run("quick")["run_id"]
    reuse.put(ended, {"a": {"x": 1}})
    assert len(reuse) == 1
    retry_tasks.CLOSED["closed"] = False
    answer = rig.client.post(f"/runs/{failed['run_id']}/retry")
    assert answer.status_code == 202
    wait_for(lambda: rig.orch.get_run(answer.json()["run_id"]).status == "succeeded", "the retry")
    assert len(reuse) == 0


def test_retry_refusals(rig: Rig) -> None:
    done = rig.run("quick")
    answer = rig.client.post(f"/runs/{done['run_id']}/retry")
    assert answer.status_code == 409
    assert "succeeded: nothing to retry" in answer.json()["error"]
    assert rig.client.post("/runs/nope/retry").status_code == 404


def test_retry_of_a_running_run_is_409(rig: Rig) -> None:
    rig.orch.register_workflow("hold", "1.0.0", HOLD)
    retry_tasks.RELEASE.clear()
    handle = rig.orch.execute_workflow("hold", wait=False)
    try:
        wait_for(lambda: rig.orch.get_run(handle.run_id).status == "running", "the run's start")
        answer = rig.client.post(f"/runs/{handle.run_id}/retry")
        assert answer.status_code == 409
        assert "is running: cancel it or wait for its end" in answer.json()["error"]
    finally:
        retry_tasks.RELEASE.set()
    handle.result()


def test_cli_retry(rig: Rig) -> None:
    failed = rig.run("flaky", tag="cli")
    retry_tasks.CLOSED["closed"] = False
    env = {**os.environ, "DAGENGINE_URL": rig.server.url}
    done = subprocess.run(
        [sys.executable, "-m", "dagengine", "retry", failed["run_id"]],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.strip()
    assert "reusing 1 node(s): first" in done.stderr
    wait_for(lambda: rig.orch.get_run(new_id).status == "succeeded", "the CLI's retry")
    again = subprocess.run(
        [sys.executable, "-m", "dagengine", "retry", new_id],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert again.returncode != 0
    assert "409" in again.stderr


# -- versions ------------------------------------------------------------------------------


def test_yank_skips_ranges_and_latest_but_not_exact(rig: Rig, tmp_path: Path) -> None:
    answer = rig.client.post("/workflows/v/versions/1.2.0/yank")
    assert answer.status_code == 200
    assert answer.json()["latest"] == "1.1.0"
    assert str(rig.orch.registry.resolve("v", "^1.0").version) == "1.1.0"
    assert str(rig.orch.registry.resolve("v", "1.2.0").version) == "1.2.0"  # exact
    assert str(rig.orch.registry.resolve("v", "=1.2.0").version) == "1.2.0"
    with pytest.raises(NoMatchingVersion):
        rig.orch.registry.resolve("v", ">=1.1.5")  # only the yanked 1.2.0 matches
    assert rig.run("v")["version"] == "1.1.0"
    exact = rig.client.post("/workflows/v/runs", json={"version": "1.2.0", "wait": True})
    assert exact.json()["version"] == "1.2.0"
    wf = rig.client.get("/workflows/v").json()
    assert wf["latest"] == "1.1.0"
    assert wf["yanked"] == ["1.2.0"]
    assert [
        w["latest"] for w in rig.client.get("/workflows").json()["workflows"] if w["id"] == "v"
    ] == ["1.1.0"]
    # Roll back: the latest (1.1.0) is yanked too; then nothing earlier is left.
    back = rig.client.post("/workflows/v/rollback").json()
    assert back == {
        "id": "v",
        "yanked": "1.1.0",
        "latest": "1.0.0",
        "yanked_versions": ["1.1.0", "1.2.0"],
    }
    refused = rig.client.post("/workflows/v/rollback")
    assert refused.status_code == 409
    # Restore one; kept across a restart on the same store.
    restored = rig.client.post("/workflows/v/versions/1.1.0/yank", json={"yanked": False}).json()
    assert restored["latest"] == "1.1.0"
    again = Orchestrator(store=str(tmp_path / "store.db"), embedded_engine=False, recover=False)
    try:
        assert again.registry.yanked("v") == ["1.2.0"]
        assert str(again.registry.get("v").version) == "1.1.0"
    finally:
        again.stop()


def test_yank_bad_input(rig: Rig) -> None:
    assert rig.client.post("/workflows/v/versions/9.9.9/yank").status_code == 404
    assert rig.client.post("/workflows/nope/versions/1.0.0/yank").status_code == 404
    bad = rig.client.post("/workflows/v/versions/1.0.0/yank", json={"yanked": "yes"})
    assert bad.status_code == 400
    assert "'yanked' must be a boolean" in bad.json()["error"]
    assert rig.client.post("/workflows/v/versions/1.0.0/yank", json={"x": 1}).status_code == 400


def test_dependents_are_listed(rig: Rig) -> None:
    parent = {"id": "parent", "version": "1.0.0", "nodes": [{"id": "child", "workflow": "v@^1.0"}]}
    rig.client.post("/workflows", json={"spec": parent}).raise_for_status()
    wf = rig.client.get("/workflows/v").json()
    assert wf["dependents"] == [
        {"workflow_id": "parent", "version": "1.0.0", "version_range": "^1.0"}
    ]


# -- triggers and engines ------------------------------------------------------------------


def test_cron_pause_and_resume(rig: Rig) -> None:
    listed = rig.client.get("/triggers").json()
    cron = listed["cron"][0]
    assert cron["id"] == "every-minute"
    assert cron["paused"] is False
    assert len(cron["next_fire_times"]) == 5
    assert listed["http"] == [{
        "id": "hook", "type": "http", "workflow_id": "quick", "version": None,
        "path": "/hooks/quick", "url": rig.server.url + "/hooks/quick", "mode": "sync",
        "auth": "hmac", "active": True,
    }]  # fmt: skip
    rig.clock.advance(60)
    rig.scheduler.run_pending()
    wait_for(lambda: rig.cron.stats["fired"] == 1, "the first fire")
    paused = rig.client.post("/triggers/every-minute/pause").json()
    assert paused["paused"] is True
    assert paused["next_fire_times"] == []
    assert rig.orch.store.get_trigger_state("every-minute")["paused"] is True
    rig.clock.advance(180)
    rig.scheduler.run_pending()
    assert rig.cron.stats["fired"] == 1  # paused: the due fires passed without a run
    resumed = rig.client.post("/triggers/every-minute/resume").json()
    assert resumed["paused"] is False
    rig.clock.advance(60)
    rig.scheduler.run_pending()
    wait_for(lambda: rig.cron.stats["fired"] == 2, "a fire after resume")
    fires = rig.client.get("/triggers").json()["cron"][0]["last_fires"]
    assert len(fires) == 2
    assert rig.orch.get_run(fires[-1]["run_id"]).workflow_id == "quick"
    assert rig.client.post("/triggers/nope/pause").status_code == 404
    assert rig.client.post("/triggers/hook/pause").status_code == 409


def test_paused_survives_a_restart(rig: Rig) -> None:
    rig.client.post("/triggers/every-minute/pause").raise_for_status()
    other = CronTrigger("every-minute", "0 * * * * *", "quick", scheduler=rig.scheduler)
    rig.cron.stop()
    other.start(rig.orch)
    try:
        assert other.paused is True
    finally:
        other.stop()


def test_engines(rig: Rig) -> None:
    assert rig.client.get("/engines").json() == {
        "engines": [
            {
                "engine_id": "local",
                "address": None,
                "capacity": 10,
                "active_runs": 0,
                "healthy": True,
            }
        ]
    }


# -- the UI's files and the token ----------------------------------------------------------


def test_ui_files_are_open_and_the_api_is_not(tmp_path: Path) -> None:
    rig = Rig(":memory:", token="tok")
    try:
        bare = httpx.Client(base_url=rig.server.url, timeout=30)
        root = bare.get("/")
        assert root.status_code == 307
        assert root.headers["location"] == "/ui/"
        index = bare.get("/ui/")
        assert index.status_code == 200
        assert '<script type="module" src="js/app.js">' in index.text
        assert "script-src 'self'" in index.headers["content-security-policy"]
        js = bare.get("/ui/js/app.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        for path in ("/events", "/triggers", "/engines", "/runs"):
            assert bare.get(path).status_code == 401, path
        assert bare.post("/runs/x/retry").status_code == 401
        assert rig.client.get("/engines").status_code == 200
        bare.close()
    finally:
        rig.close()


def test_serve_ends_event_streams_when_it_stops(tmp_path: Path) -> None:
    """An open UI page's streams end cleanly when ``dagengine serve`` stops, instead of being
    cut when the server's graceful timeout runs out."""
    from uiserver import make_server

    server = make_server(tmp_path)
    outcome: list[str] = []
    connected = [threading.Event(), threading.Event()]

    def follow(path: str, seen: threading.Event) -> None:
        try:
            with server.client() as client, client.stream("GET", path) as resp:
                for _ in resp.iter_lines():
                    seen.set()
            outcome.append("ended")
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    with server.client() as client:
        answer = client.post("/workflows/gated/runs", json={"inputs": {"gate": "never"}})
    paths = ("/events", f"/runs/{answer.json()['run_id']}/events")
    readers = [
        threading.Thread(target=follow, args=(path, seen), daemon=True)
        for path, seen in zip(paths, connected, strict=True)
    ]
    for reader in readers:
        reader.start()
    for seen in connected:
        assert seen.wait(30)
    server.stop()
    for reader in readers:
        reader.join(30)
    assert outcome == ["ended", "ended"]

"""``GET /runs/{id}/logs``: the stored node log lines, a node filter, paging, and
``follow=true`` as server-sent events that end with the run."""

from __future__ import annotations

import json
import time

from .conftest import Served
from .test_http import read_sse

LOGGING = {
    "nodes": [
        {"id": "a", "lua": 'log("a one") log("a two") return {}'},
        {"id": "b", "lua": 'log("b one") return {}', "deps": ["a"]},
    ]
}
SLOW = {
    "nodes": [
        {"id": "a", "lua": 'log("before the spin") return {}'},
        {
            "id": "spin",
            "deps": ["a"],
            "lua": "while true do end",
            "limits": {"instructions": 10**15},
        },
    ]
}


def _run(api: Served, workflow: str) -> str:
    body = api.client.post(f"/workflows/{workflow}/runs", json={"wait": True}).json()
    api.orch.store.flush()
    return str(body["run_id"])


def test_lines_of_a_run_and_of_one_node(api: Served) -> None:
    api.orch.register_workflow("logging", "1.0.0", LOGGING)
    run_id = _run(api, "logging")
    r = api.client.get(f"/runs/{run_id}/logs")
    assert r.status_code == 200
    body = r.json()
    assert body["run_id"] == run_id
    assert body["next_after"] is None
    assert [(x["node_id"], x["level"], x["message"]) for x in body["lines"]] == [
        ("a", "INFO", "a one"),
        ("a", "INFO", "a two"),
        ("b", "INFO", "b one"),
    ]
    assert all(x["node_attempt"] == 1 and x["truncated"] is False for x in body["lines"])
    only_b = api.client.get(f"/runs/{run_id}/logs", params={"node": "b"}).json()
    assert [x["message"] for x in only_b["lines"]] == ["b one"]
    assert only_b["node"] == "b"
    # Paging: one line at a time, on from next_after.
    first = api.client.get(f"/runs/{run_id}/logs", params={"limit": 1}).json()
    assert [x["message"] for x in first["lines"]] == ["a one"]
    rest = api.client.get(f"/runs/{run_id}/logs", params={"after": str(first["next_after"])}).json()
    assert [x["message"] for x in rest["lines"]] == ["a two", "b one"]


def test_bad_requests(api: Served) -> None:
    assert api.client.get("/runs/nope/logs").status_code == 404
    run_id = _run(api, "lua3")
    r = api.client.get(f"/runs/{run_id}/logs", params={"node": "nope"})
    assert r.status_code == 404
    assert "has no node 'nope'" in r.text
    for params, word in (
        ({"follow": "yes"}, "follow"),
        ({"after": "x"}, "sequence"),
        ({"limit": "0"}, "limit"),
    ):
        r = api.client.get(f"/runs/{run_id}/logs", params=params)
        assert r.status_code == 400, params
        assert word in r.text


def test_follow_a_finished_run_replays_and_ends(api: Served) -> None:
    api.orch.register_workflow("logging", "1.0.0", LOGGING)
    run_id = _run(api, "logging")
    with api.client.stream("GET", f"/runs/{run_id}/logs", params={"follow": "true"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    assert {e["event"] for e in events} == {"node.log"}
    assert [json.loads(e["data"])["message"] for e in events] == ["a one", "a two", "b one"]
    params = {"follow": "true", "node": "a"}
    with api.client.stream("GET", f"/runs/{run_id}/logs", params=params) as r:
        assert [json.loads(e["data"])["message"] for e in read_sse(r)] == ["a one", "a two"]


def test_follow_a_live_run_until_it_ends(api: Served) -> None:
    api.orch.register_workflow("slow", "1.0.0", SLOW)
    run_id = api.client.post("/workflows/slow/runs", json={}).json()["run_id"]
    started = time.monotonic()
    with api.client.stream("GET", f"/runs/{run_id}/logs", params={"follow": "true"}) as r:
        lines = r.iter_lines()
        seen: list[str] = []
        for line in lines:
            if line.startswith("data: "):
                seen.append(json.loads(line.removeprefix("data: "))["message"])
                break
        assert seen == ["before the spin"]
        assert api.orch.cancel_run(run_id)
        rest = list(lines)  # the stream ends with the run
    assert not any(line.startswith("data: ") for line in rest)
    assert time.monotonic() - started < 20


def test_a_mapped_nodes_lines_include_its_items(api: Served) -> None:
    api.orch.register_workflow("logging", "1.0.0", LOGGING)
    run_id = _run(api, "logging")
    # What a mapped node b's items log (ids b[0], b[1]), published as the engine's would be.
    api.orch.events.publish_batch(
        [
            ("node.log", "b[0]", {"level": "INFO", "message": "item zero"}),
            ("node.log", "b[1]", {"level": "WARNING", "message": "item one"}),
            ("node.log", "bb[0]", {"level": "INFO", "message": "another node's item"}),
        ],
        workflow_id="logging",
        run_id=run_id,
    )
    api.orch.store.flush()
    of_b = api.client.get(f"/runs/{run_id}/logs", params={"node": "b"}).json()
    assert [(x["node_id"], x["message"]) for x in of_b["lines"]] == [
        ("b", "b one"),
        ("b[0]", "item zero"),
        ("b[1]", "item one"),
    ]
    one = api.client.get(f"/runs/{run_id}/logs", params={"node": "b[1]"}).json()
    assert [x["message"] for x in one["lines"]] == ["item one"]
    for unknown in ("zz[0]", "b[x]", "b[]"):
        r = api.client.get(f"/runs/{run_id}/logs", params={"node": unknown})
        assert r.status_code == 404, unknown
        assert "has no node" in r.text

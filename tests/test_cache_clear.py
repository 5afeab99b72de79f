"""Clearing the orchestrator's cache: the store's ``clear_cache_entries`` (SQLite and
PostgreSQL), ``DELETE /workflows/{id}/cache`` and ``dagengine cache clear``; a cleared node's
next run misses and runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dagengine import RunResult
from dagengine.api import ServerThread, create_app
from dagengine.cli import main
from dagengine.orchestrator import Orchestrator
from dagengine.orchestrator.store import open_store


def _spec(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "version": "1.0.0",
        "nodes": [
            {"id": "work", "lua": "return {value = inputs.n * 2}", "cache": True},
            {
                "id": "label",
                "deps": ["work"],
                "lua": "return {text = 'v' .. results.work.value}",
                "cache": {"key": "inputs.n"},
            },
        ],
    }


def test_the_store_clears_all_a_workflows_or_a_nodes_entries(store_target: str) -> None:
    store = open_store(store_target)
    try:
        rows = [("a", "k1", "{}", "r1", None), ("a", "k2", "{}", "r1", None)]
        rows.append(("b", "k1", "{}", "r1", 3600.0))
        for workflow in ("wf", "other", "third"):
            store.save_cache_entries(workflow, rows)

        def left(workflow: str) -> list[str]:
            return sorted(f"{n}:{k}" for n, k, _, _ in store.cache_entries(workflow, ["a", "b"], 9))

        assert store.clear_cache_entries("wf", "a") == 2
        assert left("wf") == ["b:k1"]
        assert store.clear_cache_entries("wf", "a") == 0
        assert store.clear_cache_entries("other") == 3
        assert left("other") == []
        assert left("third") == ["a:k1", "a:k2", "b:k1"]
        assert store.clear_cache_entries("nobody") == 0
        assert store.clear_cache_entries() == 4
        assert left("wf") == left("third") == []
        with pytest.raises(ValueError, match="needs its workflow_id"):
            store.clear_cache_entries(None, "a")
    finally:
        store.close()


class _Served:
    def __init__(self, store: str, token: str | None = None) -> None:
        self.orch = Orchestrator(store=store)
        for workflow in ("cached", "other"):
            self.orch.register_workflow(workflow, "1.0.0", _spec(workflow))
        self.app = create_app(self.orch, api_token=token)
        self.server = ServerThread(self.app).start()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.server.url, timeout=30, headers=headers)

    def run(self, workflow: str, n: int) -> dict[str, str | None]:
        """Run ``workflow``; which run each cached node's output came from (None: it ran)."""
        result = self.orch.execute_workflow(workflow, {"n": n})
        assert isinstance(result, RunResult)
        assert result.ok, result.error
        return {node: result.node_results[node].cached_from for node in ("work", "label")}

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.app.state.api.close()
        self.orch.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Served]:
    served = _Served(str(tmp_path / "state.db"))
    yield served
    served.close()


def _cli(served: _Served, *args: str) -> int:
    return main(["cache", "clear", *args, "--url", served.server.url])


def test_rest_clears_a_node_then_a_workflow(served: _Served) -> None:
    assert served.run("cached", 1) == {"work": None, "label": None}
    hit = served.run("cached", 1)
    assert hit["work"] is not None
    assert hit["label"] is not None
    served.run("other", 1)

    answer = served.client.delete("/workflows/cached/cache", params={"node": "work"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"deleted": 1}
    # work runs again (and is stored again); label's entry, under its own key, still hits.
    assert served.run("cached", 1) == {"work": None, "label": hit["label"]}

    answer = served.client.delete("/workflows/cached/cache")
    assert answer.json() == {"deleted": 2}
    assert served.run("cached", 1) == {"work": None, "label": None}
    assert served.run("other", 1)["work"] is not None  # another workflow's: untouched

    missing = served.client.delete("/workflows/nope/cache")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]
    empty = served.client.delete("/workflows/cached/cache?node=")
    assert empty.status_code == 400
    doc = served.client.get("/openapi.json").json()
    assert doc["paths"]["/workflows/{workflow_id}/cache"]["delete"]["operationId"] == (
        "clearWorkflowCache"
    )


def test_the_cli_clears_a_node_a_workflow_or_everything(
    served: _Served, capsys: pytest.CaptureFixture[str]
) -> None:
    for workflow in ("cached", "other"):
        served.run(workflow, 2)
        served.run(workflow, 3)

    assert _cli(served, "--workflow", "cached", "--node", "label") == 0
    assert capsys.readouterr().out == "deleted 2 cache entries of node label of workflow cached\n"
    assert served.run("cached", 2)["label"] is None  # and stored again

    assert _cli(served, "--workflow", "cached") == 0
    assert "deleted 3 cache entries of workflow cached" in capsys.readouterr().out
    assert served.run("cached", 3) == {"work": None, "label": None}

    assert _cli(served) == 0  # every workflow's: other's 4 and cached's 2 from the run above
    assert capsys.readouterr().out == "deleted 6 cache entries of 2 workflow(s)\n"
    assert served.run("other", 2) == {"work": None, "label": None}

    assert _cli(served, "--node", "work") == 2
    assert "--node needs --workflow" in capsys.readouterr().err
    assert _cli(served, "--workflow", "nope") == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_clearing_needs_the_api_token(tmp_path: Path) -> None:
    served = _Served(str(tmp_path / "state.db"), token="tok")
    try:
        anonymous = httpx.delete(f"{served.server.url}/workflows/cached/cache", timeout=30)
        assert anonymous.status_code == 401
        assert served.client.delete("/workflows/cached/cache").json() == {"deleted": 0}
    finally:
        served.close()

"""A mapped node's events on the orchestrator's bus: ``node.mapped`` with its item count,
then its items' node events under their ids (``sq[0]``...), in-process and from an engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dagengine.orchestrator import Engine, Monitor, Orchestrator, RunHandle
from processes import EngineProcess

SPEC: dict[str, Any] = {
    "nodes": [
        {"id": "src", "lua": "return {items = {1, 2, 3}}"},
        {
            "id": "sq",
            "deps": ["src"],
            "map": "results.src.items",
            "lua": "return {v = item * item}",
        },
    ]
}


@pytest.fixture
def orch() -> Iterator[Orchestrator]:
    o = Orchestrator(store=":memory:", embedded_engine=False)
    try:
        yield o
    finally:
        o.stop()


def _check(orch: Orchestrator, run_id: str) -> None:
    orch.store.flush()
    history = Monitor(orch.events).history(run_id=run_id, limit=1000)
    [mapped] = [e for e in history if e.type == "node.mapped"]
    assert (mapped.node_id, mapped.data["count"]) == ("sq", 3)
    items = sorted(e.node_id or "" for e in history if e.type == "node.succeeded")
    assert items == ["sq", "sq[0]", "sq[1]", "sq[2]", "src"]
    first_item = min(e.seq for e in history if (e.node_id or "").startswith("sq["))
    assert mapped.seq < first_item


def _run(orch: Orchestrator) -> str:
    orch.register_workflow("w", "1.0.0", SPEC)
    handle = orch.execute_workflow("w", wait=False)
    assert isinstance(handle, RunHandle)
    result = handle.result(timeout=30)
    assert result.ok, result.error
    assert result.outputs["sq"] == [{"v": 1}, {"v": 4}, {"v": 9}]
    return handle.run_id


def test_in_process(orch: Orchestrator) -> None:
    orch.register_engine("local", Engine())
    _check(orch, _run(orch))


def test_from_an_engine_process(orch: Orchestrator) -> None:
    proc = EngineProcess("--engine-id", "mapped", "--capacity", "2")
    try:
        orch.register_engine(proc.engine_id, proc.address)
        _check(orch, _run(orch))
    finally:
        proc.kill()


def test_an_engines_mapped_python_items_log_under_their_item_ids(orch: Orchestrator) -> None:
    spec = {
        "nodes": [
            {"id": "src", "lua": "return {items = {'a', 'b', 'c'}}"},
            {
                "id": "say",
                "deps": ["src"],
                "map": "results.src.items",
                "python": "live_log_tasks:item_says",
            },
        ]
    }
    proc = EngineProcess("--engine-id", "mapped-logs", "--capacity", "2")
    try:
        orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("says", "1.0.0", spec)
        handle = orch.execute_workflow("says", wait=False)
        assert isinstance(handle, RunHandle)
        assert handle.result(timeout=30).ok
        orch.store.flush()
        lines = Monitor(orch.events).history(run_id=handle.run_id, types="node.log", limit=100)
    finally:
        proc.kill()
    assert sorted((e.node_id, e.data["message"]) for e in lines) == [
        ("say[0]", "item 0 says a"),
        ("say[1]", "item 1 says b"),
        ("say[2]", "item 2 says c"),
    ]

"""Node log lines in the orchestrator: stored as ``node.log`` events per node attempt, in-process
and from a remote engine, bounded per attempt with a truncation marker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from dagengine import DAG, Node, NodeContext, PythonExecutor
from dagengine.exceptions import ConfigError
from dagengine.node_logs import TRUNCATED_PREFIX
from dagengine.orchestrator import Config, Engine, Event, Monitor, Orchestrator, RunHandle
from dagengine.orchestrator.recording import LogBudget
from processes import EngineProcess

WAIT = 30.0

SPEC: dict[str, Any] = {
    "nodes": [
        {"id": "a", "lua": 'log("a says", inputs.x) print("a again") return {v = 1}'},
        {"id": "b", "lua": 'log("b says") return {}', "deps": ["a"]},
    ]
}


def _history(orch: Orchestrator, run_id: str) -> list[Event]:
    return Monitor(orch.events).history(run_id=run_id, types="node.log", limit=10_000)


def _logs(orch: Orchestrator, run_id: str) -> list[tuple[str | None, str, str]]:
    return [(e.node_id, e.data["level"], e.data["message"]) for e in _history(orch, run_id)]


def _started(orch: Orchestrator, workflow_id: str, inputs: Any = None, **kw: Any) -> RunHandle:
    handle = orch.execute_workflow(workflow_id, inputs, **kw)
    assert isinstance(handle, RunHandle)
    return handle


@pytest.fixture
def orch() -> Iterator[Orchestrator]:
    o = Orchestrator(store=":memory:", embedded_engine=False)
    try:
        yield o
    finally:
        o.stop()


def test_in_process_lines_are_stored_per_node(orch: Orchestrator) -> None:
    orch.register_engine("local", Engine())
    orch.register_workflow("w", "1.0.0", SPEC)
    handle = _started(orch, "w", {"x": 7}, wait=False)
    assert handle.result(timeout=WAIT).ok
    orch.store.flush()
    assert _logs(orch, handle.run_id) == [
        ("a", "INFO", "a says\t7"),
        ("a", "INFO", "a again"),
        ("b", "INFO", "b says"),
    ]
    [first, *_] = _history(orch, handle.run_id)
    assert first.data["node_attempt"] == 1
    assert first.data["attempt"] >= 1


def test_remote_engine_lines_are_carried_and_stored(orch: Orchestrator) -> None:
    proc = EngineProcess("--engine-id", "logs-engine", "--capacity", "4")
    try:
        orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("w", "1.0.0", SPEC)
        handle = _started(orch, "w", {"x": 3}, wait=False)
        assert handle.result(timeout=WAIT).ok
        orch.store.flush()
        assert _logs(orch, handle.run_id) == [
            ("a", "INFO", "a says\t3"),
            ("a", "INFO", "a again"),
            ("b", "INFO", "b says"),
        ]
    finally:
        proc.kill()


def test_lines_past_the_bound_end_in_one_marker(orch: Orchestrator) -> None:
    orch.register_engine("local", Engine())
    # 3,000 lines of 500 bytes: 1.5 MB, past the 1 MiB default.
    source = 'for i = 1, 3000 do log(string.rep("x", 500)) end return {}'
    orch.register_workflow("big", "1.0.0", {"nodes": [{"id": "n", "lua": source}]})
    handle = _started(orch, "big", wait=False)
    assert handle.result(timeout=WAIT).ok
    orch.store.flush()
    lines = _logs(orch, handle.run_id)
    assert len(lines) == 1024 * 1024 // 500 + 1
    node, level, marker = lines[-1]
    assert (node, level) == ("n", "WARNING")
    assert marker.startswith(TRUNCATED_PREFIX)
    assert all(message == "x" * 500 for _, _, message in lines[:-1])


def test_the_bound_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGENGINE_NODE_LOG_LIMIT", "2048")
    config = Config.from_env()
    assert config.node_log_limit == 2048
    with Orchestrator(store=":memory:", config=config) as small:
        source = 'for i = 1, 100 do log(string.rep("y", 100)) end return {}'
        small.register_workflow("chatty", "1.0.0", {"nodes": [{"id": "n", "lua": source}]})
        handle = _started(small, "chatty", wait=False)
        assert handle.result(timeout=WAIT).ok
        small.store.flush()
        lines = _logs(small, handle.run_id)
    assert len(lines) == 2048 // 100 + 1
    assert lines[-1][2].startswith(TRUNCATED_PREFIX)
    monkeypatch.setenv("DAGENGINE_NODE_LOG_LIMIT", "10")
    with pytest.raises(ConfigError, match="DAGENGINE_NODE_LOG_LIMIT"):
        Config.from_env()


def test_budget_is_per_node_attempt() -> None:
    budget = LogBudget(limit=5)
    assert budget.admit("n", 1, "INFO", "12345") == {"level": "INFO", "message": "12345"}
    cut = budget.admit("n", 1, "ERROR", "6")
    assert cut is not None
    assert cut["truncated"] is True
    assert cut["level"] == "WARNING"
    assert budget.admit("n", 1, "INFO", "") is None
    # Another attempt of the node, and another node, start afresh.
    assert budget.admit("n", 2, "DEBUG", "abc") == {"level": "DEBUG", "message": "abc"}
    assert budget.admit("m", 1, "INFO", "abcde") == {"level": "INFO", "message": "abcde"}
    with pytest.raises(ValueError, match="node log limit must be >= 0 bytes, got -1"):
        LogBudget(limit=-1)


def _python_node(ctx: NodeContext) -> None:
    print("printed")
    logging.getLogger("tests.node_log_store").error("an error")


def test_in_process_python_node_lines_keep_their_levels(orch: Orchestrator) -> None:
    orch.register_engine("local", Engine())
    dag = DAG()
    dag.add_node(Node("p", executor=PythonExecutor(_python_node)))
    orch.register_workflow("py", "1.0.0", dag)
    handle = _started(orch, "py", wait=False)
    assert handle.result(timeout=WAIT).ok
    orch.store.flush()
    assert _logs(orch, handle.run_id) == [("p", "INFO", "printed"), ("p", "ERROR", "an error")]


PY_SPEC: dict[str, Any] = {
    "nodes": [
        {"id": "p", "python": "log_tasks:chatty"},
        {
            "id": "f",
            "python": "log_tasks:flaky",
            "retries": 1,
            "retry_backoff": {"initial": 0.01, "factor": 1, "max": 0.01},
        },
    ]
}


def test_remote_engine_python_lines_are_carried_with_levels_for_every_attempt(
    orch: Orchestrator,
) -> None:
    proc = EngineProcess("--engine-id", "py-logs-engine", "--capacity", "4")
    try:
        orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("py", "1.0.0", PY_SPEC)
        handle = _started(orch, "py", wait=False)
        assert handle.result(timeout=WAIT).ok
        orch.store.flush()
        history = Monitor(orch.events).history(run_id=handle.run_id, limit=10_000)
    finally:
        proc.kill()
    lines = [
        (e.node_id, e.data["level"], e.data["message"]) for e in history if e.type == "node.log"
    ]
    assert [line for line in lines if line[0] == "p"] == [
        ("p", "INFO", "printed 1"),
        ("p", "WARNING", "a warning"),
        ("p", "ERROR", "an error"),
    ]
    assert [line for line in lines if line[0] == "f"] == [
        ("f", "INFO", "try 1"),
        ("f", "ERROR", "failing attempt 1"),
        ("f", "INFO", "try 2"),
    ]
    # Each attempt's lines come before the event that ends it.
    f_events = [(e.type, e.data.get("node_attempt")) for e in history if e.node_id == "f"]
    assert f_events == [
        ("node.started", 1),
        ("node.log", 1),
        ("node.log", 1),
        ("node.retrying", 1),
        ("node.started", 2),
        ("node.log", 2),
        ("node.succeeded", 2),
    ]

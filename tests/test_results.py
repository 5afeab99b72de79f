"""RunResult / NodeResult / NodeEvent built from the core's dicts and tuples."""

from __future__ import annotations

import json

import pytest
from dagengine import (
    ErrorInfo,
    NodeEvent,
    NodeStatus,
    RunCancelled,
    RunFailed,
    RunResult,
    RunStatus,
)

CORE_RESULT = {
    "run_id": "r1",
    "status": "failed",
    "error": {"type": "ValueError", "message": "bad", "node_id": "b"},
    "duration": 0.5,
    "nodes": {
        "a": {"status": "succeeded", "output": {"x": 1}, "error": None, "attempts": 1,
              "started_at": 10.0, "finished_at": 10.25},
        "b": {"status": "failed", "output": None,
              "error": {"type": "ValueError", "message": "bad", "traceback": "tb"},
              "attempts": 2, "started_at": 10.25, "finished_at": 10.5},
        "c": {"status": "skipped", "output": None, "error": None, "attempts": 0,
              "started_at": None, "finished_at": None},
    },
}  # fmt: skip


def test_from_core_dict() -> None:
    result = RunResult.from_dict(CORE_RESULT)
    assert result.status is RunStatus.FAILED
    assert not result.ok
    assert result.outputs == {"a": {"x": 1}}
    assert result.error == ErrorInfo("ValueError", "bad", None, "b")
    b = result.node_results["b"]
    assert b.status is NodeStatus.FAILED
    assert b.error == ErrorInfo("ValueError", "bad", "tb")
    assert b.attempts == 2
    assert result.node_results["a"].duration == 0.25
    assert result.node_results["c"].duration is None
    assert result.nodes_with_status("skipped") == ["c"]


def test_to_dict_is_json_and_reads_back() -> None:
    result = RunResult.from_dict(CORE_RESULT)
    data = json.loads(json.dumps(result.to_dict()))
    assert RunResult.from_dict(data) == result
    assert data["outputs"] == {"a": {"x": 1}}


@pytest.mark.parametrize("read_first", [(), ("a",), ("b", "c"), ("a", "b", "c")])
def test_to_dict_of_unread_entries_is_the_per_node_to_dict(read_first: tuple[str, ...]) -> None:
    # to_dict takes entries nobody has read from the core's dicts as they are; whichever
    # were read (built as NodeResult) or not, the dict is the per-node to_dict's.
    core = {**CORE_RESULT, "nodes": {**CORE_RESULT["nodes"]}}  # type: ignore[dict-item]
    core["nodes"]["d"] = {"status": "skipped", "output": None, "error": None, "attempts": 0,
                          "started_at": None, "finished_at": None,
                          "skip_reason": "condition"}  # fmt: skip
    core["nodes"]["e"] = {"status": "succeeded", "output": {"y": 2}, "error": None,
                          "attempts": 0, "started_at": 11.0, "finished_at": 11.0,
                          "cached_from": "r0", "cache_key": "k"}  # fmt: skip
    result = RunResult.from_dict(core)
    for node_id in read_first:
        assert result.node_results[node_id].node_id == node_id
    expected = RunResult.from_dict(core).node_results
    assert result.to_dict()["nodes"] == {nid: res.to_dict() for nid, res in expected.items()}
    assert result.to_dict()["nodes"]["d"]["skip_reason"] == "condition"
    assert "cache_key" not in result.to_dict()["nodes"]["e"]


def test_raise_for_status() -> None:
    with pytest.raises(RunFailed, match="node 'b'") as info:
        RunResult.from_dict(CORE_RESULT).raise_for_status()
    assert info.value.result is not None
    cancelled = RunResult("r2", RunStatus.CANCELLED)
    with pytest.raises(RunCancelled, match="r2 was cancelled"):
        cancelled.raise_for_status()
    ok = RunResult("r3", RunStatus.SUCCEEDED)
    assert ok.raise_for_status() is ok


def test_event_from_tuple() -> None:
    event = NodeEvent.from_tuple(
        (3, "node_failed", "b", 1, 12.5, {"error": {"type": "E", "message": "m"}})
    )
    assert (event.seq, event.kind, event.node_id, event.attempt, event.time) == (
        3,
        "node_failed",
        "b",
        1,
        12.5,
    )
    assert event.error == ErrorInfo("E", "m")
    assert NodeEvent(1, "run_started", None, 0, 1.0).error is None
    assert event.to_dict()["detail"] == {"error": {"type": "E", "message": "m"}}


def test_status_enums_are_strings() -> None:
    assert NodeStatus("retrying") == "retrying"
    assert str(RunStatus.CANCELLED) == "cancelled"
    assert NodeStatus.SKIPPED.finished
    assert not NodeStatus.RUNNING.finished

"""Conditions and trigger rules on an engine over gRPC and through the orchestrator (with
an embedded engine, with engine processes, and resumed on another engine after the first
one was killed mid-run): the same states and skip reasons as a local run."""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine import DAG, EngineClient, InvalidRequest, NodeEvent, Orchestrator, RunStatus
from dagengine.engine import workflow_to_proto
from hypothesis import HealthCheck, given, settings
from processes import EngineProcess, wait_for
from test_trigger_rules import reference, rule_cases

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "id": "rules",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return {go = inputs.go}"},
        {"id": "on", "deps": ["a"], "noop": True, "when": "results.a.go"},
        {"id": "off", "deps": ["a"], "noop": True, "when": "not results.a.go"},
        {"id": "f", "lua": "error('no')"},
        {"id": "down", "deps": ["f"], "noop": True},
        {"id": "handler", "deps": ["down"], "noop": True, "trigger_rule": "one_failed"},
        {"id": "strict", "deps": ["off"], "noop": True},
        {
            "id": "join",
            "deps": ["on", "off"],
            "lua": "return {n = 1}",
            "trigger_rule": "none_failed_min_one_success",
        },
    ],
}

EXPECTED = {
    "a": ("succeeded", None),
    "on": ("succeeded", None),
    "off": ("skipped", "condition"),
    "f": ("failed", None),
    "down": ("skipped", "upstream_failed"),
    "handler": ("succeeded", None),
    "strict": ("skipped", "trigger_rule"),
    "join": ("succeeded", None),
}


def states(result: Any) -> dict[str, tuple[str, str | None]]:
    return {nid: (res.status.value, res.skip_reason) for nid, res in result.node_results.items()}


def test_a_local_run_gives_the_expected_states() -> None:
    result = DAG.from_spec(SPEC).run({"go": True})
    assert states(result) == EXPECTED
    assert result.status is RunStatus.FAILED


# --- an engine over gRPC ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[EngineClient]:
    engine = EngineProcess("--engine-id", "rules")
    try:
        with EngineClient(engine.address, timeout=30) as c:
            yield c
    finally:
        engine.kill()


def test_an_engine_applies_conditions_and_rules(client: EngineClient) -> None:
    result = client.run(SPEC, {"go": True})
    assert states(result) == EXPECTED
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.node_id == "f"
    assert result.to_dict()["nodes"]["off"]["skip_reason"] == "condition"
    events = [item for item in client.stream(SPEC, {"go": False}) if isinstance(item, NodeEvent)]
    skips = {e.node_id: (e.detail or {}).get("reason") for e in events if e.kind == "node_skipped"}
    assert skips == {"on": "condition", "down": "upstream_failed"}


def test_an_engine_fails_a_non_boolean_when_naming_the_node(client: EngineClient) -> None:
    spec = {"id": "bad-when", "nodes": [{"id": "x", "noop": True, "when": "inputs.n"}]}
    result = client.run(spec, {"n": 3})
    error = result.node_results["x"].error
    assert error is not None
    assert "node 'x': when must be a boolean, got a number (3)" in error.message


def test_an_engine_refuses_an_unknown_rule_naming_the_node(client: EngineClient) -> None:
    msg = workflow_to_proto({"id": "r", "nodes": [{"id": "x", "noop": True}]})
    msg.nodes[0].trigger_rule = "sometimes"
    with pytest.raises(InvalidRequest, match=r"node 'x': unknown trigger rule 'sometimes'"):
        client.run(msg)
    msg.nodes[0].trigger_rule = ""
    msg.nodes[0].when = "1 +"
    with pytest.raises(InvalidRequest, match=r"nodes\[0\]\.when: node 'x': when: syntax error"):
        client.run(msg)


def test_an_engine_resumes_with_rules_decided_by_completed_parents(client: EngineClient) -> None:
    completed = {"a": {"go": False}, "off": {}}
    result = client.run(SPEC, {"go": True}, completed=completed)
    # `off` completed in the first attempt; `on` is decided again from a's recorded output.
    assert states(result)["on"] == ("skipped", "condition")
    assert states(result)["off"] == ("succeeded", None)
    assert states(result)["strict"] == ("succeeded", None)
    assert states(result)["join"] == ("succeeded", None)


def case_spec(
    deps: list[list[int]], rules: list[str], acts: list[str], kinds: list[str]
) -> tuple[dict[str, Any], dict[str, bool]]:
    """A random case of ``test_trigger_rules`` as a spec (conditions in Lua, Python nodes by
    import path) and its inputs."""
    nodes: list[dict[str, Any]] = []
    inputs: dict[str, bool] = {}
    for i, (parents, rule, act, kind) in enumerate(zip(deps, rules, acts, kinds, strict=True)):
        node: dict[str, Any] = {"id": f"n{i}", "deps": [f"n{p}" for p in parents]}
        if kind == "python":
            node["python"] = "rule_tasks:fail" if act == "fail" else "rule_tasks:ok"
        elif kind == "lua" or act == "fail":
            node["lua"] = "error('no')" if act == "fail" else "return {ok = true}"
        else:
            node["noop"] = True
        if act == "false" or i % 2:
            inputs[f"go_{i}"] = act != "false"
            node["when"] = f"inputs.go_{i}"
        if rule != "all_success":
            node["trigger_rule"] = rule
        nodes.append(node)
    return {"id": "property", "nodes": nodes}, inputs


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(case=rule_cases())
def test_random_dags_on_an_engine_match_the_reference_model(
    client: EngineClient, case: tuple[list[list[int]], list[str], list[str], list[str]]
) -> None:
    deps, rules, acts, kinds = case
    spec, inputs = case_spec(deps, rules, acts, kinds)
    result = client.run(spec, inputs)
    want = reference(deps, rules, acts)
    assert [states(result)[f"n{i}"] for i in range(len(deps))] == want
    failed = any(status == "failed" for status, _ in want)
    assert result.status is (RunStatus.FAILED if failed else RunStatus.SUCCEEDED)


# --- the orchestrator -------------------------------------------------------------------------


def skip_events(orch: Orchestrator, run_id: str) -> dict[str | None, Any]:
    return {
        ev.node_id: ev.data.get("reason")
        for ev in orch.store.events(run_id=run_id, types=["node.skipped"])
    }


def test_the_orchestrator_records_skip_reasons_with_an_embedded_engine(tmp_path: Path) -> None:
    orch = Orchestrator(store=str(tmp_path / "store.db"))
    try:
        orch.register_workflow("rules", "1.0.0", SPEC)
        result = orch.execute_workflow("rules", {"go": True})
        assert states(result) == EXPECTED
        assert skip_events(orch, result.run_id) == {
            "off": "condition",
            "down": "upstream_failed",
            "strict": "trigger_rule",
        }
    finally:
        orch.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


@pytest.fixture
def engines(tmp_path: Path, ledger: Path) -> Iterator[Callable[[int], list[EngineProcess]]]:
    started: list[EngineProcess] = []

    def start(count: int) -> list[EngineProcess]:
        env = {
            "DAGENGINE_TEST_LEDGER": str(ledger),
            "DAGENGINE_TEST_RELEASE": str(tmp_path / "release"),
        }
        for i in range(count):
            started.append(EngineProcess("--engine-id", f"rules-{i}", env=env))
        return started[-count:]

    try:
        yield start
    finally:
        for engine in started:
            engine.kill()


HELD: dict[str, Any] = {
    "id": "held",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "python": "rule_tasks:record"},
        {"id": "on", "deps": ["a"], "python": "rule_tasks:record", "when": "inputs.go"},
        {"id": "off", "deps": ["a"], "python": "rule_tasks:record", "when": "not inputs.go"},
        {"id": "f", "lua": "error('no')"},
        {
            "id": "handler",
            "deps": ["f"],
            "python": "rule_tasks:record",
            "trigger_rule": "one_failed",
        },
        {
            "id": "hold",
            "deps": ["on", "handler"],
            "python": "rule_tasks:hold",
            "trigger_rule": "none_failed",
        },
        {"id": "strict", "deps": ["off"], "noop": True},
        {"id": "last", "deps": ["hold", "strict"], "noop": True, "trigger_rule": "all_done"},
    ],
}


def test_a_run_resumed_on_another_engine_keeps_its_rules(
    tmp_path: Path, ledger: Path, engines: Callable[[int], list[EngineProcess]]
) -> None:
    procs = engines(2)
    orch = Orchestrator(store=str(tmp_path / "store.db"), embedded_engine=False)
    try:
        for proc in procs:
            orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("held", "1.0.0", HELD)
        handle = orch.execute_workflow("held", {"go": True}, wait=False)
        wait_for(lambda: " hold started" in ledger.read_text(), "hold to start", timeout=60)
        # The outputs recorded so far are the checkpoint the re-dispatch resumes from.
        wait_for(
            lambda: (
                {"a", "on", "handler"}
                <= {
                    ev.node_id
                    for ev in orch.store.events(run_id=handle.run_id, types=["node.succeeded"])
                }
            ),
            "the completed nodes to be recorded",
            timeout=30,
        )
        victim = next(p for p in procs if orch.engines()[p.engine_id].active > 0)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        (tmp_path / "release").touch()
        result = handle.result(timeout=120)
        assert orch.store.events(run_id=handle.run_id, types=["run.redispatched"])
        assert states(result) == {
            "a": ("succeeded", None),
            "on": ("succeeded", None),
            "off": ("skipped", "condition"),
            "f": ("failed", None),
            "handler": ("succeeded", None),
            "hold": ("succeeded", None),
            "strict": ("skipped", "trigger_rule"),
            "last": ("succeeded", None),
        }
    finally:
        orch.stop()
    counts = collections.Counter(ledger.read_text().splitlines())
    run = handle.run_id
    # Completed nodes were not run again; the held node ran again on the second engine.
    assert counts[f"{run} a"] == 1
    assert counts[f"{run} on"] == 1
    assert counts[f"{run} handler"] == 1
    assert counts[f"{run} off"] == 0
    assert counts[f"{run} hold started"] == 2
    assert counts[f"{run} hold"] == 1

"""The sub-workflow version a parent run recorded at its start is the one that runs (issue 17,
point 12), whatever is registered meanwhile: through ``OrchestratorService.RunSubWorkflow``
from a remote engine, and after the parent is resumed by a new orchestrator. (The in-process
case is ``test_orchestrator.py::test_a_subworkflow_runs_the_version_its_parent_recorded``.)

Both used to resolve the range again when the sub-workflow node started: a ``child`` 1.1.0
registered while a parent that recorded ``child@^1.0 -> 1.0.0`` ran was what ran, while the
record still said 1.0.0. Each test registers 1.1.0 while the parent's first node waits for a
gate file, then opens the gate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine.orchestrator import Config, Orchestrator
from outcomes import handle, result
from processes import EngineProcess, free_port, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
WAIT = 30.0


def child(version: str) -> dict[str, Any]:
    return {"nodes": [{"id": "v", "lua": f"return {{v = '{version}'}}"}]}


def parent(reference: str) -> dict[str, Any]:
    """A parent whose sub-workflow node waits for ``first``, which waits for the gate."""
    return {
        "nodes": [
            {"id": "first", "python": "orch_tasks:gated"},
            {"id": "sub", "deps": ["first"], "workflow": reference},
        ]
    }


# "child" alone is the range "*": recorded as "child@*", and looked up under that name.
REFERENCES = [("child@^1.0", "child@^1.0"), ("child", "child@*")]


@pytest.fixture
def engine() -> Iterator[Callable[[int], EngineProcess]]:
    started: list[EngineProcess] = []

    def start(orchestrator_port: int) -> EngineProcess:
        e = EngineProcess(
            "--engine-id",
            "remote",
            "--orchestrator",
            f"127.0.0.1:{orchestrator_port}",
            env={"PYTHONPATH": str(HERE)},
        )
        started.append(e)
        return e

    try:
        yield start
    finally:
        for e in started:
            e.kill()


@pytest.mark.parametrize(("reference", "recorded_as"), REFERENCES)
def test_a_remote_engines_subworkflow_runs_the_recorded_version(
    tmp_path: Path,
    engine: Callable[[int], EngineProcess],
    reference: str,
    recorded_as: str,
) -> None:
    port = free_port()
    remote = engine(port)
    config = Config(
        discovery="static",
        engines=(remote.address,),
        engine_health_check_interval=1.0,
        store_path=":memory:",
    )
    orch = Orchestrator.from_config(config, grpc_port=port)
    try:
        wait_for(lambda: "remote" in orch.engines(), "static discovery to find the engine")
        orch.register_workflow("child", "1.0.0", child("1.0.0"))
        orch.register_workflow("parent", "1.0.0", parent(reference))
        gate = tmp_path / "gate"
        inputs = {"ledger": str(tmp_path / "ledger"), "gate": str(gate)}
        h = handle(orch.execute_workflow("parent", inputs, wait=False))
        wait_for(lambda: orch.get_run(h.run_id).status == "running", "the parent to start")
        assert orch.get_run(h.run_id).resolved_versions == {recorded_as: "1.0.0"}
        orch.register_workflow("child", "1.1.0", child("1.1.0"))
        gate.touch()
        res = h.result(timeout=WAIT)
        assert res.ok, res.error
        info = orch.get_run(h.run_id)
        assert info.engine_id == "remote"  # the sub-workflow came through RunSubWorkflow
        assert res.outputs["sub"] == {"v": {"v": "1.0.0"}}
        (ran,) = orch.get_subworkflow_coordinator().children(h.run_id)
        assert (ran.workflow_id, ran.version, ran.engine_id) == ("child", "1.0.0", "remote")
        assert info.resolved_versions == {recorded_as: "1.0.0"}
        # A new run records, and runs, the newer one.
        again = result(orch.execute_workflow("parent", inputs, wait=True))
        assert again.ok, again.error
        assert again.outputs["sub"] == {"v": {"v": "1.1.0"}}
        assert orch.get_run(again.run_id).resolved_versions == {recorded_as: "1.1.0"}
    finally:
        orch.stop()


@pytest.mark.parametrize(("reference", "recorded_as"), REFERENCES)
def test_a_resumed_parents_subworkflow_runs_the_recorded_version(
    tmp_path: Path, store_target: str, reference: str, recorded_as: str
) -> None:
    store = store_target
    gate = tmp_path / "gate"
    ledger = tmp_path / "ledger"
    inputs = {"ledger": str(ledger), "gate": str(gate)}
    first = Orchestrator(store=store)
    try:
        first.register_workflow("child", "1.0.0", child("1.0.0"))
        first.register_workflow("parent", "1.0.0", parent(reference))
        h = handle(first.execute_workflow("parent", inputs, wait=False))
        wait_for(lambda: first.get_run(h.run_id).status == "running", "the parent to start")
        assert first.get_run(h.run_id).resolved_versions == {recorded_as: "1.0.0"}
        # Registered (and stored) while the parent runs: the next orchestrator knows it.
        first.register_workflow("child", "1.1.0", child("1.1.0"))
    finally:
        first.stop()  # "first" still waits for its gate: the parent is resumed below
    gate.touch()
    second = Orchestrator(store=store)
    try:
        assert [str(v.version) for v in second.registry.versions("child")] == ["1.0.0", "1.1.0"]
        wait_for(lambda: second.get_run(h.run_id).status == "succeeded", "the resumed parent")
        info = second.get_run(h.run_id)
        assert info.attempt == 2  # resumed, not finished by the first orchestrator
        assert info.result is not None
        assert info.result.outputs["sub"] == {"v": {"v": "1.0.0"}}
        assert info.resolved_versions == {recorded_as: "1.0.0"}
        (ran,) = second.get_subworkflow_coordinator().children(h.run_id)
        assert (ran.workflow_id, ran.version, ran.status) == ("child", "1.0.0", "succeeded")
        again = result(second.execute_workflow("parent", inputs, wait=True))
        assert again.outputs["sub"] == {"v": {"v": "1.1.0"}}
    finally:
        second.stop()

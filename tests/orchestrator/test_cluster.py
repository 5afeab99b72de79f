"""A distributed orchestrator (``Orchestrator.from_config``) with real engine processes:
engines that register themselves over ``OrchestratorService.RegisterEngine`` and keep
heartbeating, and sub-workflow nodes on a remote engine that call back ``RunSubWorkflow``.

Every engine is a ``python -m dagengine engine --port 0`` subprocess killed at teardown;
tests wait on conditions, never on sleeps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dagengine import RunStatus
from dagengine.cli import main as cli_main
from dagengine.engine import SelfRegistrar, advertise_address
from dagengine.orchestrator import Config, Orchestrator
from outcomes import handle, result
from processes import EngineProcess, free_port, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
WAIT = 30.0
SPIN = {"lua": "while true do end", "limits": {"instructions": 10**15}}


@pytest.fixture
def start_engine(start_engine: Callable[..., EngineProcess]) -> Callable[..., EngineProcess]:
    """The shared fixture, with this folder's task modules on the engines' path."""
    return lambda *args: start_engine(*args, env={"PYTHONPATH": str(HERE)})


@pytest.fixture
def make_orch() -> Iterator[Callable[..., Orchestrator]]:
    made: list[Orchestrator] = []

    def make(config: Config, grpc_port: int = 0) -> Orchestrator:
        orch = Orchestrator.from_config(config, grpc_port=grpc_port)
        made.append(orch)
        return orch

    try:
        yield make
    finally:
        for orch in made:
            orch.stop()


def self_registration(interval: float) -> Config:
    return Config(
        discovery="self-registration", engine_health_check_interval=interval, store_path=":memory:"
    )


# --- self-registration --------------------------------------------------------------------------


def test_a_self_registered_engine_runs_workflows_and_is_dropped_when_killed(
    make_orch: Callable[..., Orchestrator], start_engine: Callable[..., EngineProcess]
) -> None:
    orch = make_orch(self_registration(0.5))
    assert orch.cluster is not None
    assert orch.cluster.registration is not None
    orchestrator = f"127.0.0.1:{orch.cluster.port}"
    first = start_engine(
        "--engine-id", "sr-a", "--capacity", "3", "--self-register", "--orchestrator", orchestrator
    )
    wait_for(lambda: "sr-a" in orch.engines(), "the engine to register")
    assert orch.engines()["sr-a"].capacity == 3
    assert orch.engine_address("sr-a") == first.address  # --host 127.0.0.1 is concrete
    orch.register_workflow(
        "w", "1.0.0", {"nodes": [{"id": "a", "lua": "return {v = inputs.x + 1}"}]}
    )
    res = result(orch.execute_workflow("w", {"x": 1}))
    assert res.ok, res.error
    assert res.outputs["a"] == {"v": 2}
    assert orch.get_run(res.run_id).engine_id == "sr-a"
    assert "registered with orchestrator" in first.stderr()

    first.kill()
    wait_for(lambda: "sr-a" not in orch.engines(), "the dead engine to be evicted")
    # Its registration expires too (no heartbeat for 3 intervals): it is gone, not just out.
    registration = orch.cluster.registration
    wait_for(lambda: registration.endpoints() == [], "the registration to expire")
    assert orch.engine_address("sr-a") is None

    # With no engine, a run waits in the queue; an engine that registers then takes it.
    waiting = handle(orch.execute_workflow("w", {"x": 41}, wait=False))
    assert waiting.status == "queued"
    second = start_engine("--engine-id", "sr-b", "--self-register", "--orchestrator", orchestrator)
    late = waiting.result(timeout=WAIT)
    assert late.ok, late.error
    assert late.outputs["a"] == {"v": 42}
    assert orch.get_run(waiting.run_id).engine_id == "sr-b"

    # SIGTERM: the engine drains, stops heartbeating and exits 0; it is dropped.
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=WAIT) == 0
    wait_for(lambda: registration.endpoints() == [], "the drained engine's registration to expire")
    assert "sr-b" not in orch.engines()


def test_registration_retries_until_the_orchestrator_is_up_and_logs_refusals(
    make_orch: Callable[..., Orchestrator],
) -> None:
    port = free_port()
    lines: list[str] = []
    refused: list[str] = []
    first = SelfRegistrar(
        f"127.0.0.1:{port}", "dup", "127.0.0.1:1", 2, "t", log=lines.append,
        backoff_initial=0.05, backoff_max=0.2,
    ).start()  # fmt: skip
    second: SelfRegistrar | None = None
    try:
        wait_for(lambda: any("cannot register" in line for line in lines), "a failed attempt")
        assert "UNAVAILABLE" in lines[0]
        assert not first.registered
        orch = make_orch(self_registration(30.0), grpc_port=port)
        assert orch.cluster is not None
        registration = orch.cluster.registration
        assert registration is not None
        wait_for(lambda: first.registered, "the registration once the orchestrator is up")
        assert [(e.engine_id, e.address, e.capacity) for e in registration.endpoints()] == [
            ("dup", "127.0.0.1:1", 2)
        ]
        assert any("registered with orchestrator" in line for line in lines)
        assert first.registrations == 1  # heartbeats come every 30s, not in a loop
        # The same engine id from another address is refused, and the engine says why.
        second = SelfRegistrar(
            f"127.0.0.1:{port}", "dup", "127.0.0.1:2", 2, log=refused.append
        ).start()
        wait_for(lambda: bool(refused), "the refusal to be logged")
        assert "refused the registration" in refused[0]
        assert "'dup' is registered from 127.0.0.1:1" in refused[0]
        assert not second.registered
        assert [e.address for e in registration.endpoints()] == ["127.0.0.1:1"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_advertise_address_defaults() -> None:
    assert advertise_address("127.0.0.1", 5000) == "127.0.0.1:5000"
    assert advertise_address("::1", 5000) == "[::1]:5000"
    assert advertise_address("engine-3.local", 5000) == "engine-3.local:5000"
    # A wildcard host: the address the route to the orchestrator leaves from.
    assert advertise_address("0.0.0.0", 5000, "127.0.0.1:9") == "127.0.0.1:5000"
    host, _, port = advertise_address("0.0.0.0", 5000).rpartition(":")
    assert host
    assert port == "5000"


def test_engine_cli_refuses_bad_registration_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_ADDRESS", raising=False)
    monkeypatch.delenv("DAGENGINE_SELF_REGISTER", raising=False)
    assert cli_main(["engine", "--self-register"]) == 2
    assert "--self-register needs --orchestrator" in capsys.readouterr().err
    monkeypatch.setenv("DAGENGINE_SELF_REGISTER", "true")
    assert cli_main(["engine"]) == 2
    assert "--self-register needs --orchestrator" in capsys.readouterr().err
    monkeypatch.setenv("DAGENGINE_SELF_REGISTER", "maybe")
    assert cli_main(["engine"]) == 2
    assert "DAGENGINE_SELF_REGISTER" in capsys.readouterr().err
    monkeypatch.delenv("DAGENGINE_SELF_REGISTER")
    assert cli_main(["engine", "--orchestrator", "no-port"]) == 2
    assert "--orchestrator" in capsys.readouterr().err
    assert cli_main(["engine", "--orchestrator", "o:1", "--advertise-address", "::1:5"]) == 2
    assert "--advertise-address" in capsys.readouterr().err


# --- sub-workflows from a remote engine ---------------------------------------------------------


def test_a_remote_engine_runs_subworkflows_through_run_subworkflow(
    make_orch: Callable[..., Orchestrator], start_engine: Callable[..., EngineProcess]
) -> None:
    port = free_port()
    engine = start_engine("--engine-id", "remote", "--orchestrator", f"127.0.0.1:{port}")
    config = Config(
        discovery="static",
        engines=(engine.address,),
        # (Health checks time out after half the interval: not too short on a busy machine.)
        engine_health_check_interval=1.0,
        store_path=":memory:",
    )
    orch = make_orch(config, grpc_port=port)
    wait_for(lambda: "remote" in orch.engines(), "static discovery to find the engine")
    orch.register_workflow(
        "child",
        "1.3.0",
        {"nodes": [{"id": "echo", "lua": "return {x = inputs.x, prep = inputs.prep.n}"}]},
    )
    orch.register_workflow(
        "parent",
        "1.0.0",
        {
            "nodes": [
                {"id": "prep", "lua": "return {n = inputs.x * 10}"},
                {"id": "sub", "deps": ["prep"], "workflow": "child@^1.2"},
            ]
        },
    )
    res = result(orch.execute_workflow("parent", {"x": 3}))
    assert res.ok, res.error
    assert res.outputs["sub"] == {"echo": {"x": 3, "prep": 30}}
    parent = orch.get_run(res.run_id)
    assert parent.engine_id == "remote"
    assert parent.resolved_versions == {"child@^1.2": "1.3.0"}
    (child,) = orch.get_subworkflow_coordinator().children(res.run_id)
    assert (child.workflow_id, child.version, child.status) == ("child", "1.3.0", "succeeded")
    assert (child.parent_run_id, child.parent_node_id, child.depth) == (res.run_id, "sub", 1)
    assert child.engine_id == "remote"
    assert child.result is not None
    assert child.result.outputs == {"echo": {"x": 3, "prep": 30}}

    # An engine the orchestrator itself found unhealthy (as when a Run stream breaks) is
    # admitted again by the next health check it passes.
    orch.mark_unhealthy("remote", reason="a Run stream broke")
    assert "remote" not in orch.engines()
    wait_for(lambda: "remote" in orch.engines(), "the next health check to re-admit it")

    # Cancelling the parent reaches the child: the engine cancels the node, which hangs up
    # on RunSubWorkflow, and the orchestrator cancels the child.
    orch.register_workflow("spinner", "1.0.0", {"nodes": [{"id": "spin", **SPIN}]})
    orch.register_workflow("waits", "1.0.0", {"nodes": [{"id": "sub", "workflow": "spinner"}]})
    h = handle(orch.execute_workflow("waits", wait=False))
    coordinator = orch.get_subworkflow_coordinator()
    wait_for(
        lambda: [c.status for c in coordinator.children(h.run_id)] == ["running"],
        "the child to run",
    )
    assert h.cancel()
    assert h.result(timeout=WAIT).status is RunStatus.CANCELLED
    (spinner,) = coordinator.children(h.run_id)
    wait_for(lambda: coordinator.status(spinner.run_id) == "cancelled", "the child's cancel")

"""The W3C trace context of a run reaches its engine: the orchestrator sends the submitting
request's trace context with the run (``RunRequest.trace_context``), the engine runs each
Python node attempt in it (``dagengine.tracing.node_span``), and a sub-workflow started by a
remote engine's node runs in its parent run's."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagengine import RunResult
from dagengine.orchestrator import Config, Orchestrator
from dagengine.tracing import with_trace_context
from processes import EngineProcess, wait_for

pytest.importorskip("opentelemetry.trace")

HERE = Path(__file__).parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Orchestrator]:
    port = _free_port()
    engine = EngineProcess(
        "--engine-id",
        "traced",
        "--orchestrator",
        f"127.0.0.1:{port}",
        env={"PYTHONPATH": str(HERE)},
    )
    orch = None
    try:
        config = Config(
            discovery="static",
            engines=(engine.address,),
            engine_health_check_interval=1.0,
            store_path=":memory:",
        )
        orch = Orchestrator.from_config(config, grpc_port=port)
        wait_for(lambda: "traced" in orch.engines(), "static discovery to find the engine")
        orch.register_workflow(
            "child", "1.0.0", {"nodes": [{"id": "who", "python": "trace_tasks:whoami"}]}
        )
        orch.register_workflow(
            "parent",
            "1.0.0",
            {
                "nodes": [
                    {"id": "who", "python": "trace_tasks:whoami"},
                    {"id": "sub", "deps": ["who"], "workflow": "child"},
                ]
            },
        )
        yield orch
    finally:
        if orch is not None:
            orch.stop()
        engine.kill()


def _result(value: object) -> RunResult:
    assert isinstance(value, RunResult), value
    assert value.ok, value.error
    return value


def test_a_runs_python_nodes_and_sub_workflow_run_in_the_callers_trace(
    cluster: Orchestrator,
) -> None:
    execute = with_trace_context({"traceparent": TRACEPARENT}, cluster.execute_workflow)
    res = _result(execute("parent", {}))
    assert cluster.get_run(res.run_id).engine_id == "traced"
    # No tracer provider in the engine process: the node runs in the caller's span context.
    assert res.outputs["who"] == {"trace_id": TRACE_ID, "span_id": PARENT_SPAN}
    assert res.outputs["sub"] == {"who": {"trace_id": TRACE_ID, "span_id": PARENT_SPAN}}


def test_a_run_without_a_trace_context_runs_outside_any_trace(cluster: Orchestrator) -> None:
    res = _result(cluster.execute_workflow("parent", {}))
    assert res.outputs["who"] == {"trace_id": "0" * 32, "span_id": "0" * 16}


WHO = {"id": "who", "version": "1.0.0", "nodes": [{"id": "who", "python": "trace_tasks:whoami"}]}
SEEN = {"who": {"trace_id": TRACE_ID, "span_id": PARENT_SPAN}}


def test_an_engine_client_sends_a_trace_context_with_its_run(cluster: Orchestrator) -> None:
    from dagengine.engine import EngineClient

    address = cluster.engine_address("traced")
    assert address is not None
    with EngineClient(address) as client:
        res = client.run(WHO, trace_context={"traceparent": TRACEPARENT})
        assert res.ok, res.error
        assert res.outputs == SEEN
        # Not a valid traceparent: left out.
        res = client.run(WHO, trace_context={"traceparent": "00-nope"})
        assert res.outputs["who"]["trace_id"] == "0" * 32


def test_an_engine_takes_traceparent_metadata_on_a_run_call(cluster: Orchestrator) -> None:
    import grpc
    from dagengine.engine import build_run_request, result_from_proto
    from dagengine.v1 import engine_pb2_grpc

    address = cluster.engine_address("traced")
    assert address is not None
    with grpc.insecure_channel(address) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        request = build_run_request(WHO, {})
        reply = stub.RunToEnd(request, metadata=[("traceparent", TRACEPARENT)], timeout=30)
    assert result_from_proto(reply).outputs == SEEN


def test_a_queued_run_keeps_its_trace_context_across_a_restart(tmp_path: Path) -> None:
    store = str(tmp_path / "state.db")
    first = Orchestrator(store=store, embedded_engine=False)
    try:
        first.register_workflow("who", "1.0.0", WHO)
        execute = with_trace_context({"traceparent": TRACEPARENT}, first.execute_workflow)
        queued = execute("who", {}, wait=False)
        assert queued.status == "queued"  # no engine yet
    finally:
        first.stop()
    engine = EngineProcess("--engine-id", "later", env={"PYTHONPATH": str(HERE)})
    second = Orchestrator(store=store, embedded_engine=False)
    try:
        second.register_engine(engine.engine_id, engine.address)
        wait_for(lambda: second.get_run(queued.run_id).status == "succeeded", "the resumed run")
        info = second.get_run(queued.run_id)
        assert info.result is not None
        assert info.result.outputs == SEEN
    finally:
        second.stop()
        engine.kill()

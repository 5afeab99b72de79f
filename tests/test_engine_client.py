"""The engine client against an in-process grpcio stand-in for an engine, and the
conversions between the wire messages and dagengine's objects.

The stand-in serves the same contract (``dagengine.v1.EngineService`` + health) so the
client's own behaviour — event order, the result as the last item, error mapping, size
limits, a stream that ends without a result — is tested without the Rust server;
``test_engine.py`` runs the real engine processes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import engine_tasks
import grpc
import pytest
from dagengine import (
    DAG,
    AsyncEngineClient,
    EngineBusy,
    EngineClient,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    InvalidRequest,
    LuaExecutor,
    MessageTooLarge,
    Node,
    NodeEvent,
    NoopExecutor,
    PythonExecutor,
    RetryBackoff,
    RunResult,
    RunStatus,
    SpecError,
    SubWorkflow,
)
from dagengine.engine import (
    build_run_request,
    encode_inputs,
    event_from_proto,
    refusal_error,
    result_from_proto,
    result_json_from_proto,
    session_ended_error,
    workflow_to_proto,
)
from dagengine.v1 import engine_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration


# --- conversions ------------------------------------------------------------------------------


def test_dag_becomes_a_workflow_spec_with_every_executor_and_policy() -> None:
    dag = DAG("pipe", "1.2.0", max_parallel=3, fail_fast=True, timeout="1m")
    dag.add_node(Node("lua", [], LuaExecutor("return {x = 1}", max_instructions=1000)))
    dag.add_node(
        Node(
            "py",
            ["lua"],
            PythonExecutor(engine_tasks.add),
            retries=2,
            retry_backoff=RetryBackoff(0.5, 3, 10),
            timeout="10s",
        )
    )
    dag.add_node(Node("child", ["py"], SubWorkflow("reporting", "^1.4")))
    dag.add_node(Node("any", ["py"], SubWorkflow("other")))
    dag.add_node(Node("done", ["child", "any"], NoopExecutor()))
    spec = workflow_to_proto(dag)
    assert (spec.id, spec.version, spec.max_parallel, spec.fail_fast) == ("pipe", "1.2.0", 3, True)
    assert spec.timeout_seconds == 60
    lua, py, child, any_, done = spec.nodes
    assert lua.WhichOneof("executor") == "lua"
    assert lua.lua.code == "return {x = 1}"
    assert lua.lua.max_instructions == 1000
    assert not lua.lua.HasField("max_memory_bytes")
    assert not lua.HasField("timeout_seconds")
    assert py.python.import_path == "engine_tasks:add"
    assert list(py.deps) == ["lua"]
    assert (py.retry.retries, py.retry.backoff_initial_seconds) == (2, 0.5)
    assert (py.retry.backoff_factor, py.retry.backoff_max_seconds) == (3, 10)
    assert py.timeout_seconds == 10
    assert (child.workflow.workflow_id, child.workflow.version_range) == ("reporting", "^1.4")
    assert (any_.workflow.workflow_id, any_.workflow.version_range) == ("other", "*")
    assert done.WhichOneof("executor") == "noop"
    # Defaults are spelled out, so the engine never sees a zero backoff factor.
    assert (lua.retry.backoff_initial_seconds, lua.retry.backoff_factor) == (1, 2)
    assert lua.retry.backoff_max_seconds == 60


def test_spec_dicts_are_sent_without_importing_their_python() -> None:
    spec = workflow_to_proto(
        {
            "id": "remote",
            "nodes": [
                {"id": "a", "python": "only_on_the_engine.tasks:f"},
                {"id": "b", "deps": ["a"], "lua": "return {}", "limits": {"memory": "1MiB"}},
            ],
        }
    )
    assert spec.nodes[0].python.import_path == "only_on_the_engine.tasks:f"
    assert spec.nodes[1].lua.max_memory_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"id": "w", "nodes": [{"id": "a", "noop": True, "retires": 1}]}, "nodes[0].retires"),
        ({"id": "w", "nodes": [{"id": "a"}]}, "nodes[0]"),
        ({"id": "w", "nodes": [{"id": "a", "noop": True, "lua": "x"}]}, "nodes[0]"),
        ({"id": "w", "nodes": [{"id": "a", "noop": True, "timeout": "soon"}]}, "nodes[0].timeout"),
        ({"id": "w", "nodes": "a"}, "nodes"),
        ({"id": "w", "nodes": [], "colour": 1}, "colour"),
    ],
)
def test_spec_shape_errors_name_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as info:
        workflow_to_proto(spec)
    assert info.value.path == path
    assert str(info.value).startswith(path)


def test_inputs_are_json_objects() -> None:
    assert json.loads(encode_inputs({"a": [1, 2], "b": {"c": None}})) == {
        "a": [1, 2],
        "b": {"c": None},
    }
    assert encode_inputs(None) == b"{}"
    assert encode_inputs(b'{"raw": 1}') == b'{"raw": 1}'
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode_inputs({"when": {1, 2}})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode_inputs({"x": float("nan")})
    with pytest.raises(TypeError, match="keys must be str"):
        encode_inputs({1: "one"})
    with pytest.raises(TypeError, match="must be a mapping"):
        encode_inputs([1, 2])  # type: ignore[arg-type]
    request = build_run_request(
        {"id": "w", "nodes": [{"id": "a", "noop": True}]},
        {"x": 1},
        completed={"a": {"done": True}},
        deadline=1e9,
        max_parallel=2,
        fail_fast=False,
    )
    assert json.loads(request.completed_json["a"]) == {"done": True}
    assert request.run_id
    assert request.attempt == 1
    assert request.HasField("fail_fast")
    assert not request.fail_fast
    with pytest.raises(TypeError, match=r"completed\['a'\]"):
        build_run_request(request.workflow, completed={"a": {"bad": object()}})


def _result_proto() -> pb.RunResult:
    return pb.RunResult(
        run_id="r1",
        attempt=2,
        status=pb.FAILED,
        error=pb.ErrorInfo(type="LuaRuntimeError", message="boom", node_id="b"),
        duration_seconds=0.5,
        nodes=[
            pb.NodeResult(
                node_id="a",
                status=pb.NODE_SUCCEEDED_STATUS,
                output_json=b'{"v": 1}',
                attempts=1,
                started_at=10.0,
                finished_at=10.5,
            ),
            pb.NodeResult(
                node_id="b",
                status=pb.NODE_FAILED_STATUS,
                error=pb.ErrorInfo(type="LuaRuntimeError", message="boom", traceback="tb"),
                attempts=3,
                started_at=10.5,
                finished_at=11.0,
            ),
            pb.NodeResult(node_id="c", status=pb.NODE_SKIPPED_STATUS),
            pb.NodeResult(node_id="d", status=pb.NODE_SUCCEEDED_STATUS),
        ],
    )


def test_results_convert_like_local_ones() -> None:
    result = result_from_proto(_result_proto())
    assert (result.run_id, result.status, result.duration) == ("r1", RunStatus.FAILED, 0.5)
    assert result.error is not None
    assert result.error.node_id == "b"
    assert dict(result.outputs) == {"a": {"v": 1}, "d": {}}
    a, b, c = (result.node_results[k] for k in "abc")
    assert (a.output, a.attempts, a.duration) == ({"v": 1}, 1, 0.5)
    assert b.error is not None
    assert (b.error.type, b.error.traceback) == ("LuaRuntimeError", "tb")
    assert (c.status.value, c.started_at, c.output) == ("skipped", None, None)
    assert result.nodes_with_status("skipped") == ["c"]
    # The same JSON-ready shape as a local result.
    assert RunResult.from_dict(result.to_dict()) == result_from_proto(_result_proto())
    with pytest.raises(EngineError, match="unknown status"):
        result_from_proto(pb.RunResult(run_id="x"))


def test_result_json_is_the_results_dict_without_decoding_outputs() -> None:
    # The orchestrator records remote results from this text: it must read back exactly as
    # the decoded result's dict, for failures, skipped nodes, odd ids and unicode alike.
    msg = _result_proto()
    msg.nodes.append(
        pb.NodeResult(
            node_id='q"uote\\ü',
            status=pb.NODE_SUCCEEDED_STATUS,
            output_json='{"s": "ü\\n", "n": [1, 2.5, null]}'.encode(),
            attempts=1,
            started_at=1.25,
            finished_at=2.0,
        )
    )
    msg.nodes.append(pb.NodeResult(node_id="tab\tid", status=pb.NODE_CANCELLED_STATUS))
    assert json.loads(result_json_from_proto(msg)) == result_from_proto(msg).to_dict()
    ok = pb.RunResult(run_id="r2", status=pb.SUCCEEDED, duration_seconds=0.001)
    assert json.loads(result_json_from_proto(ok)) == result_from_proto(ok).to_dict()


def test_events_convert_like_local_ones() -> None:
    failed = event_from_proto(
        pb.RunEvent(
            seq=3,
            kind=pb.NODE_RETRYING,
            node_id="n",
            node_attempt=2,
            time_unix=5.0,
            retry_delay_seconds=1.5,
            error=pb.ErrorInfo(type="ValueError", message="bad"),
        )
    )
    assert (failed.seq, failed.kind, failed.node_id, failed.attempt) == (3, "node_retrying", "n", 2)
    assert failed.detail is not None
    assert failed.detail["delay"] == 1.5
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    started = event_from_proto(pb.RunEvent(seq=1, kind=pb.RUN_STARTED))
    assert (started.node_id, started.detail) == (None, None)
    log = event_from_proto(pb.RunEvent(seq=2, kind=pb.NODE_LOG, node_id="n", message="hi"))
    assert log.detail == {"message": "hi"}
    done = event_from_proto(
        pb.RunEvent(seq=4, kind=pb.NODE_SUCCEEDED, node_id="n", output_json=b'{"x": 1}')
    )
    assert done.detail == {"output": {"x": 1}}
    finished = event_from_proto(
        pb.RunEvent(seq=5, kind=pb.RUN_FINISHED, result=pb.RunResult(status=pb.CANCELLED))
    )
    assert finished.detail == {"status": "cancelled"}


@pytest.mark.parametrize(
    ("code", "message", "error", "text"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "workflow.nodes[0]: bad", InvalidRequest, "bad"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity (1)", EngineBusy, "capacity"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max", MessageTooLarge, "large"),
        (grpc.StatusCode.UNAVAILABLE, "draining", EngineUnavailable, "unavailable: draining"),
        (grpc.StatusCode.ALREADY_EXISTS, "run r is already active", EngineError, "ALREADY_EXISTS"),
    ],
)
def test_session_refusals_map_to_the_errors_run_raises(
    code: grpc.StatusCode, message: str, error: type[EngineError], text: str
) -> None:
    refused = pb.Refusal(code=code.value[0], message=message)
    mapped = refusal_error(refused, "e:1", "r")
    assert type(mapped) is error
    assert mapped.code == code.name
    assert mapped.address == "e:1"
    assert str(mapped).startswith("engine e:1: run r: ")
    assert text in str(mapped)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, "cannot connect"),
        (grpc.StatusCode.CANCELLED, "the session was closed"),
        # grpc-core's report of a connection torn down mid-write.
        (grpc.StatusCode.INTERNAL, "Internal error from Core"),
        (grpc.StatusCode.INVALID_ARGUMENT, "not a session"),
    ],
)
def test_a_session_ended_with_any_status_leaves_its_runs_engine_unavailable(
    code: grpc.StatusCode, message: str
) -> None:
    # The engine refuses runs in band: a status on the stream itself is the transport's.
    error = session_ended_error(code.value[0], message, "e:1")
    assert type(error) is EngineUnavailable
    assert error.code == code.name
    assert error.address == "e:1"
    assert message in str(error)
    assert "engine e:1: session: " in str(error)


# --- a stand-in engine ------------------------------------------------------------------------


def _event(request: pb.RunRequest, seq: int, kind: int, node: str = "", **kw: Any) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=request.run_id,
        attempt=request.attempt,
        seq=seq,
        engine_id="fake",
        kind=kind,
        node_id=node,
        node_attempt=1 if node else 0,
        **kw,
    )


class FakeEngine:
    """Behaviour by workflow id: ``ok``, ``no-result``, ``busy``, ``invalid``, ``huge``,
    ``slow`` (waits until cancelled)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.watchers: list[Any] = []
        self.requests: list[pb.RunRequest] = []

    def run(self, request: pb.RunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        self.requests.append(request)
        behaviour = request.workflow.id
        if behaviour == "busy":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "engine fake is at capacity (1/1)")
        if behaviour == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nodes[0].deps: unknown node 'ghost'")
        if behaviour == "huge":
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                "Error, decoded message length too large: found 2000 bytes, the limit is: 1000",
            )
        yield _event(request, 1, pb.RUN_STARTED)
        if behaviour == "no-result":
            return
        yield _event(request, 2, pb.NODE_STARTED, "a")
        if behaviour == "slow":
            self.cancelled.wait(30)
            status, node_status = pb.CANCELLED, pb.NODE_CANCELLED_STATUS
            yield _event(request, 3, pb.NODE_CANCELLED, "a")
        else:
            status, node_status = pb.SUCCEEDED, pb.NODE_SUCCEEDED_STATUS
            yield _event(request, 3, pb.NODE_SUCCEEDED, "a", output_json=request.inputs_json)
        result = pb.RunResult(
            run_id=request.run_id,
            attempt=request.attempt,
            status=status,
            engine_id="fake",
            nodes=[
                pb.NodeResult(
                    node_id="a",
                    status=node_status,
                    output_json=request.inputs_json if status == pb.SUCCEEDED else b"",
                )
            ],
        )
        if behaviour == "big-result":  # the inputs twice over: a result bigger than its request
            result.nodes.append(
                pb.NodeResult(node_id="b", status=node_status, output_json=request.inputs_json)
            )
        yield _event(request, 4, pb.RUN_FINISHED, result=result)

    def run_to_end(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunResult:
        # What the engine does: the run's result, as one reply.
        if request.workflow.id == "no-result":
            # The one way a real engine answers without a result: it is gone.
            context.abort(grpc.StatusCode.UNAVAILABLE, "the run ended without its result")
        for event in self.run(request, context):
            if event.HasField("result"):
                return event.result
        context.abort(grpc.StatusCode.INTERNAL, "the run ended without a result")
        raise AssertionError("unreachable")

    def cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CancelResponse:
        self.cancelled.set()
        return pb.CancelResponse(found=request.run_id == "slow-run")

    def info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.EngineInfo:
        return pb.EngineInfo(
            engine_id="fake", version="0.0.0", capacity=4, active_runs=1, uptime_seconds=1.0
        )

    def watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        req = pb.RunRequest(run_id="watched", attempt=1)
        yield _event(req, 1, pb.RUN_STARTED, missed=2)
        yield _event(req, 2, pb.NODE_STARTED, "a")


@pytest.fixture(scope="module")
def fake_engine() -> Iterator[tuple[str, FakeEngine]]:
    fake = FakeEngine()
    handlers = {
        "Run": grpc.unary_stream_rpc_method_handler(
            # One event per message: a batch may be that small.
            fake.run,
            pb.RunRequest.FromString,
            lambda ev: pb.RunEvents(events=[ev]).SerializeToString(),
        ),
        "RunToEnd": grpc.unary_unary_rpc_method_handler(
            fake.run_to_end, pb.RunRequest.FromString, pb.RunResult.SerializeToString
        ),
        "Cancel": grpc.unary_unary_rpc_method_handler(
            fake.cancel, pb.CancelRequest.FromString, pb.CancelResponse.SerializeToString
        ),
        "Info": grpc.unary_unary_rpc_method_handler(
            fake.info, pb.InfoRequest.FromString, pb.EngineInfo.SerializeToString
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            fake.watch, pb.WatchRequest.FromString, pb.RunEvent.SerializeToString
        ),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 1 << 20)],
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("dagengine.v1.EngineService", handlers)]
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        server.stop(None)


def _spec(behaviour: str) -> dict[str, Any]:
    return {"id": behaviour, "nodes": [{"id": "a", "noop": True}]}


def test_run_returns_the_result(fake_engine: tuple[str, FakeEngine]) -> None:
    address, fake = fake_engine
    with EngineClient(address, timeout=10) as client:
        result = client.run(_spec("ok"), {"x": 1}, run_id="r-ok", attempt=3, max_parallel=2)
    assert result.ok
    assert result.run_id == "r-ok"
    assert result.outputs["a"] == {"x": 1}
    sent = fake.requests[-1]
    assert (sent.attempt, sent.max_parallel, sent.HasField("fail_fast")) == (3, 2, False)


def test_stream_yields_events_then_the_result(fake_engine: tuple[str, FakeEngine]) -> None:
    with EngineClient(fake_engine[0]) as client:
        stream = client.stream(_spec("ok"), {"x": 2})
        items = list(stream)
    *events, result = items
    assert all(isinstance(e, NodeEvent) for e in events)
    assert [e.seq for e in events] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert events[-1].kind == "run_finished"  # type: ignore[union-attr]
    assert isinstance(result, RunResult)
    assert result.ok
    assert stream.result is result
    assert list(stream) == []


@pytest.mark.parametrize(
    ("behaviour", "error", "text"),
    [
        ("busy", EngineBusy, "capacity"),
        ("invalid", InvalidRequest, "nodes[0].deps"),
        ("huge", MessageTooLarge, "too large"),
        ("no-result", EngineUnavailable, "without its result"),
    ],
)
def test_call_failures_map_to_engine_errors(
    fake_engine: tuple[str, FakeEngine], behaviour: str, error: type[EngineError], text: str
) -> None:
    with EngineClient(fake_engine[0]) as client, pytest.raises(error) as info:
        client.run(_spec(behaviour))
    assert text in str(info.value)
    assert info.value.address == fake_engine[0]


def test_a_stream_that_ends_without_its_result_is_unavailable(
    fake_engine: tuple[str, FakeEngine],
) -> None:
    with EngineClient(fake_engine[0]) as client, pytest.raises(EngineUnavailable) as info:
        client.stream(_spec("no-result")).wait()
    assert "without its result" in str(info.value)


def test_requests_over_the_client_limit_are_refused_before_sending(
    fake_engine: tuple[str, FakeEngine],
) -> None:
    with EngineClient(fake_engine[0], max_message_bytes=1000) as client:
        with pytest.raises(MessageTooLarge, match="max_message_bytes"):
            client.run(_spec("ok"), {"blob": "x" * 2000})
        # The receiving side is limited too: a result over the limit is refused by grpc.
        with pytest.raises(MessageTooLarge):
            client.run(_spec("big-result"), b'{"blob": "' + b"x" * 800 + b'"}')


def test_the_engine_side_limit_is_reported_as_too_large(
    fake_engine: tuple[str, FakeEngine],
) -> None:
    # The stand-in accepts 1 MiB; grpcio refuses a bigger request with RESOURCE_EXHAUSTED.
    with EngineClient(fake_engine[0], max_message_bytes=8 << 20) as client:
        with pytest.raises(MessageTooLarge):
            client.run(_spec("ok"), {"blob": "x" * (2 << 20)})
        assert client.run(_spec("ok")).ok


def test_unreachable_engine_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    with EngineClient(f"127.0.0.1:{port}", timeout=10) as client:
        with pytest.raises(EngineUnavailable):
            client.info()
        with pytest.raises(EngineUnavailable):
            client.run(_spec("ok"))


def test_info_health_cancel_and_watch(fake_engine: tuple[str, FakeEngine]) -> None:
    with EngineClient(fake_engine[0], timeout=10) as client:
        info = client.info()
        assert info == EngineInfo("fake", "0.0.0", 4, 1, 1.0, False, ())
        assert info.free == 3
        assert client.health() == "SERVING"
        assert client.health("no.such.Service") == "SERVICE_UNKNOWN"
        assert client.cancel("nope") is False
        with client.watch() as watch:
            first, second = next(watch), next(watch)
        assert (first.run_id, first.missed, first.event.kind) == ("watched", 2, "run_started")
        assert (second.engine_id, second.event.node_id) == ("fake", "a")


def test_stream_cancel_ends_with_a_cancelled_result(fake_engine: tuple[str, FakeEngine]) -> None:
    _, fake = fake_engine
    fake.cancelled.clear()
    with EngineClient(fake_engine[0]) as client:
        stream = client.stream(_spec("slow"), run_id="slow-run")
        kinds = [next(stream).kind, next(stream).kind]  # type: ignore[union-attr]
        assert kinds == ["run_started", "node_started"]
        assert stream.cancel() is True
        result = stream.wait()
    assert result.status is RunStatus.CANCELLED


def test_async_client(fake_engine: tuple[str, FakeEngine]) -> None:
    address = fake_engine[0]

    async def main() -> None:
        async with AsyncEngineClient(address, timeout=10) as client:
            result = await client.run(_spec("ok"), {"y": 1})
            assert result.outputs["a"] == {"y": 1}
            items = [item async for item in client.stream(_spec("ok"))]
            assert isinstance(items[-1], RunResult)
            assert [e.seq for e in items[:-1]] == [1, 2, 3, 4]  # type: ignore[union-attr]
            assert (await client.info()).engine_id == "fake"
            assert await client.health() == "SERVING"
            assert await client.cancel("x") is False
            with pytest.raises(EngineBusy, match="capacity"):
                await client.run(_spec("busy"))
            with pytest.raises(EngineUnavailable, match="without its result"):
                await client.run(_spec("no-result"))
            async with client.watch() as watch:
                event = await watch.__anext__()
            assert event.run_id == "watched"

    asyncio.run(main())

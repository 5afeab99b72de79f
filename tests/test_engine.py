"""Engine processes over real sockets: ``dagengine engine`` (the tonic server in the core)
driven by the grpcio client, one process per behaviour that needs its own engine.

Every engine is started with ``--port 0`` and announces its port on its one stdout line;
every process is killed at teardown, whatever happened. Nothing sleeps hoping: tests wait on
conditions (an event seen, a flag in ``info()``) with generous bounds.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import dagengine
import engine_tasks
import grpc
import pytest
from dagengine import (
    DAG,
    AsyncEngineClient,
    EngineBusy,
    EngineClient,
    EngineUnavailable,
    InvalidRequest,
    LuaExecutor,
    MessageTooLarge,
    Node,
    NodeEvent,
    NodeStatus,
    NoopExecutor,
    PythonExecutor,
    RunResult,
    RunStatus,
    TLSConfig,
)
from dagengine.cli import main as cli_main
from dagengine.engine import RunStream, workflow_to_proto
from dagengine.v1 import engine_pb2 as pb
from processes import EngineProcess, wait_for

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parent
# A Lua node that runs until it is interrupted (the default instruction budget would stop
# it after ~10^8 instructions).
SPIN = {"lua": "while true do end", "limits": {"instructions": 10**15}}


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[EngineProcess]:
    engine = EngineProcess("--engine-id", "shared", "--capacity", "8", "--max-message-mb", "1")
    try:
        yield engine
    finally:
        engine.kill()


@pytest.fixture(scope="module")
def client(shared_engine: EngineProcess) -> Iterator[EngineClient]:
    with EngineClient(shared_engine.address, timeout=30) as c:
        yield c


def until_started(stream: RunStream, node_id: str) -> list[NodeEvent]:
    """Read ``stream`` until ``node_id`` has started; return the events read."""
    seen: list[NodeEvent] = []
    for item in stream:
        assert isinstance(item, NodeEvent), item
        seen.append(item)
        if item.kind == "node_started" and item.node_id == node_id:
            return seen
    pytest.fail(f"the stream ended before {node_id} started: {seen}")


def spin_spec(*extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": "spin", "nodes": [{"id": "spin", **SPIN}, *extra]}


GOOD = {
    "id": "good",
    "nodes": [
        {"id": "a", "lua": "return {v = inputs.x + 1}"},
        {"id": "b", "deps": ["a"], "noop": True},
    ],
}


def assert_serving(client: EngineClient) -> None:
    result = client.run(GOOD, {"x": 41})
    assert result.ok, result
    assert result.outputs["a"] == {"v": 42}


# --- runs -------------------------------------------------------------------------------------


def test_lua_noop_and_python_nodes(client: EngineClient) -> None:
    spec = {
        "id": "mixed",
        "version": "1.0.0",
        "nodes": [
            {"id": "add", "python": "engine_tasks:add"},
            {"id": "lua", "deps": ["add"], "lua": "return {value = results.add.sum * 10}"},
            {"id": "double", "deps": ["lua"], "python": "engine_tasks:double"},
            {"id": "greet", "python": "engine_tasks:Greeter"},
            {"id": "end", "deps": ["double", "greet"], "noop": True},
        ],
    }
    result = client.run(spec, {"a": 1, "b": 2, "name": "engine"})
    assert result.ok, result.error
    assert result.outputs["add"] == {"sum": 3}
    assert result.outputs["lua"] == {"value": 30}
    assert result.outputs["double"]["value"] == 60
    # Python nodes ran in the engine process, not here.
    assert result.outputs["double"]["pid"] != os.getpid()
    assert result.outputs["greet"] == {"greeting": "hello engine"}
    assert result.outputs["end"] == {}
    assert result.node_results["add"].attempts == 1


def test_a_dag_object_is_sent_as_its_spec(client: EngineClient) -> None:
    dag = DAG("from-dag")
    dag.add_node(Node("add", [], PythonExecutor(engine_tasks.add)))
    dag.add_node(Node("lua", ["add"], LuaExecutor("return {v = results.add.sum}")))
    dag.add_node(Node("end", ["lua"], NoopExecutor()))
    result = client.run(dag, {"a": 5, "b": 6}, run_id="dag-run-1")
    assert result.ok
    assert result.run_id == "dag-run-1"
    assert result.outputs["lua"] == {"v": 11}


def test_failures_are_results_not_exceptions(client: EngineClient) -> None:
    spec = {
        "id": "failing",
        "nodes": [
            {"id": "bad", "lua": "error('nope')"},
            {"id": "after", "deps": ["bad"], "noop": True},
            {"id": "other", "lua": "return {ok = true}"},
        ],
    }
    result = client.run(spec)
    assert result.status is RunStatus.FAILED
    bad = result.node_results["bad"]
    assert bad.status is NodeStatus.FAILED
    assert bad.error is not None
    assert "nope" in bad.error.message
    assert result.node_results["after"].status is NodeStatus.SKIPPED
    assert result.outputs["other"] == {"ok": True}
    with pytest.raises(dagengine.RunFailed):
        result.raise_for_status()


def test_subworkflow_nodes_need_an_orchestrator(client: EngineClient) -> None:
    spec = {"id": "parent", "nodes": [{"id": "child", "workflow": "reporting@^1.4"}]}
    result = client.run(spec)
    assert result.status is RunStatus.FAILED
    error = result.node_results["child"].error
    assert error is not None
    assert error.type == "SubWorkflowError"
    assert "ORCHESTRATOR_ADDRESS" in error.message


def test_subworkflow_nodes_run_through_the_orchestrator(
    start_engine: Callable[..., EngineProcess],
) -> None:
    requests: list[pb.SubWorkflowRequest] = []

    def run_subworkflow(
        request: pb.SubWorkflowRequest, context: grpc.ServicerContext
    ) -> pb.SubWorkflowResponse:
        requests.append(request)
        if request.workflow_id == "broken":
            return pb.SubWorkflowResponse(
                run_id="child-2",
                status=pb.FAILED,
                error=pb.ErrorInfo(type="LuaRuntimeError", message="child failed"),
            )
        inputs = json.loads(request.inputs_json)
        outputs = {"report": {"rows": inputs["parent"]["n"] * inputs["x"]}}
        return pb.SubWorkflowResponse(
            run_id="child-1",
            status=pb.SUCCEEDED,
            outputs_json=json.dumps(outputs).encode(),
            resolved_version="1.4.2",
        )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "dagengine.v1.OrchestratorService",
                {
                    "RunSubWorkflow": grpc.unary_unary_rpc_method_handler(
                        run_subworkflow,
                        pb.SubWorkflowRequest.FromString,
                        pb.SubWorkflowResponse.SerializeToString,
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        engine = start_engine(env={"ORCHESTRATOR_ADDRESS": f"127.0.0.1:{port}"})
        spec = {
            "id": "parent",
            "nodes": [
                {"id": "parent", "lua": "return {n = 3}"},
                {"id": "child", "deps": ["parent"], "workflow": "reporting@^1.4"},
                {"id": "bad", "workflow": "broken"},
            ],
        }
        with EngineClient(engine.address, timeout=30) as client:
            result = client.run(spec, {"x": 2}, run_id="parent-run")
    finally:
        server.stop(None)
    assert result.outputs["child"] == {"report": {"rows": 6}}
    bad = result.node_results["bad"]
    assert bad.error is not None
    assert bad.error.type == "SubWorkflowError"
    assert "child failed" in bad.error.message
    child = next(r for r in requests if r.workflow_id == "reporting")
    assert (child.version_range, child.parent_run_id, child.parent_node_id) == (
        "^1.4",
        "parent-run",
        "child",
    )
    assert next(r for r in requests if r.workflow_id == "broken").version_range == "*"


def test_stream_yields_events_in_order_then_the_result(client: EngineClient) -> None:
    items = list(client.stream(GOOD, {"x": 1}))
    *events, result = items
    assert isinstance(result, RunResult)
    assert result.ok
    assert all(isinstance(e, NodeEvent) for e in events)
    node_events = [e for e in events if isinstance(e, NodeEvent)]
    assert [e.seq for e in node_events] == list(range(1, len(node_events) + 1))
    assert node_events[0].kind == "run_started"
    assert node_events[-1].kind == "run_finished"
    assert node_events[-1].detail == {"status": "succeeded"}
    succeeded = {e.node_id: e.detail for e in node_events if e.kind == "node_succeeded"}
    # Each node_succeeded event carries the output, so a re-dispatched run can skip the node.
    assert succeeded == {"a": {"output": {"v": 2}}, "b": {"output": {}}}


def test_cancel_interrupts_running_lua_and_cancels_pending_nodes(client: EngineClient) -> None:
    stream = client.stream(spin_spec({"id": "after", "deps": ["spin"], "lua": "return {}"}))
    with stream:
        until_started(stream, "spin")
        started = time.monotonic()
        assert client.cancel(stream.run_id) is True
        result = stream.wait()
    assert time.monotonic() - started < 10
    assert result.status is RunStatus.CANCELLED
    assert result.node_results["spin"].status is NodeStatus.CANCELLED
    assert result.node_results["after"].status is NodeStatus.CANCELLED
    assert client.cancel(stream.run_id) is False
    assert_serving(client)


def test_resumed_run_skips_completed_nodes(client: EngineClient) -> None:
    spec = {
        "id": "resume",
        "nodes": [
            {"id": "first", "lua": "error('first must not run again')"},
            {"id": "second", "deps": ["first"], "lua": "return {v = results.first.v * 2}"},
        ],
    }
    stream = client.stream(spec, completed={"first": {"v": 21}}, attempt=2)
    items = list(stream)
    result = items[-1]
    assert isinstance(result, RunResult)
    assert result.ok, result.error
    assert result.outputs["second"] == {"v": 42}
    started = [e.node_id for e in items if isinstance(e, NodeEvent) and e.kind == "node_started"]
    assert started == ["second"]


@pytest.mark.parametrize(
    ("spec", "inputs", "expected"),
    [
        pytest.param(
            {
                "id": "cyclic",
                "nodes": [
                    {"id": "a", "deps": ["b"], "noop": True},
                    {"id": "b", "deps": ["a"], "noop": True},
                ],
            },
            None,
            ["cycle"],
            id="cycle",
        ),
        pytest.param(
            {"id": "dangling", "nodes": [{"id": "a", "deps": ["ghost"], "noop": True}]},
            None,
            ["ghost"],
            id="unknown-dep",
        ),
        pytest.param(
            {"id": "imports", "nodes": [{"id": "py", "python": "engine_tasks:nope"}]},
            None,
            ["nodes[0].python", "engine_tasks:nope", "'py'"],
            id="import-path",
        ),
        pytest.param(
            {"id": "syntax", "nodes": [{"id": "broken", "lua": "return {"}]},
            None,
            ["broken"],
            id="lua-syntax",
        ),
        pytest.param(GOOD, b"[1, 2]", ["inputs"], id="inputs-not-object"),
        pytest.param(GOOD, b"{not json", ["inputs"], id="inputs-not-json"),
    ],
)
def test_malformed_requests_are_invalid_and_the_engine_keeps_serving(
    client: EngineClient, spec: dict[str, Any], inputs: bytes | None, expected: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.run(spec, inputs)
    for text in expected:
        assert text in str(info.value)
    assert info.value.code == "INVALID_ARGUMENT"
    assert_serving(client)


def test_completed_nodes_must_exist(client: EngineClient) -> None:
    with pytest.raises(InvalidRequest, match="completed"):
        client.run(GOOD, {"x": 1}, completed={"ghost": {}})
    assert_serving(client)


def test_message_size_limit(shared_engine: EngineProcess, client: EngineClient) -> None:
    # The shared engine accepts 1 MiB; this client would send 8.
    with EngineClient(shared_engine.address, max_message_bytes=8 << 20) as big:
        with pytest.raises(MessageTooLarge) as info:
            big.run(GOOD, {"x": 1, "blob": "x" * (2 << 20)})
        assert "too large" in str(info.value)
    # The client's own limit is checked before sending.
    with pytest.raises(MessageTooLarge, match="max_message_bytes"):
        EngineClient(shared_engine.address, max_message_bytes=1000).run(GOOD, {"b": "x" * 2000})
    assert_serving(client)


def test_info_and_health(shared_engine: EngineProcess, client: EngineClient) -> None:
    info = client.info()
    assert info.engine_id == "shared" == shared_engine.engine_id
    assert info.version == dagengine.__version__
    assert (info.capacity, info.draining) == (8, False)
    assert info.uptime_seconds > 0
    assert info.active_runs == len(info.active_run_ids)
    assert client.health() == "SERVING"
    assert client.health("dagengine.v1.EngineService") == "SERVING"


def test_watch_sees_another_clients_runs(shared_engine: EngineProcess) -> None:
    seen: queue.Queue[dagengine.EngineEvent] = queue.Queue()
    with (
        EngineClient(shared_engine.address) as watcher,
        EngineClient(shared_engine.address) as runner,
    ):
        watch = watcher.watch()

        def pump() -> None:
            try:
                for event in watch:
                    seen.put(event)
            except dagengine.EngineError:
                pass

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            # The subscription is set up asynchronously: run until the watcher sees one.
            for _ in range(20):
                run_id = f"watched-{uuid.uuid4().hex}"
                assert runner.run(GOOD, {"x": 1}, run_id=run_id).ok
                kinds = []
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and "run_finished" not in kinds:
                    try:
                        event = seen.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if event.run_id == run_id:
                        kinds.append(event.event.kind)
                        last = event
                if "run_finished" in kinds:
                    break
            else:
                pytest.fail("the watcher never saw a run")
            assert kinds[0] == "run_started"
            assert last.engine_id == "shared"
            assert last.result is not None
            assert last.result.ok
        finally:
            watch.close()
            thread.join(timeout=10)


def test_async_client(shared_engine: EngineProcess) -> None:
    async def main() -> None:
        async with AsyncEngineClient(shared_engine.address, timeout=30) as aclient:
            result = await aclient.run(GOOD, {"x": 2})
            assert result.outputs["a"] == {"v": 3}
            assert (await aclient.info()).engine_id == "shared"
            assert await aclient.health() == "SERVING"
            stream = aclient.stream(spin_spec())
            async for item in stream:
                if isinstance(item, NodeEvent) and item.kind == "node_started":
                    break
            assert await stream.cancel() is True
            cancelled = await stream.wait()
            assert cancelled.status is RunStatus.CANCELLED
            with pytest.raises(InvalidRequest):
                await aclient.run({"id": "x", "nodes": [{"id": "a", "lua": "return {"}]})

    asyncio.run(main())


async def _until_active_runs(client: AsyncEngineClient, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while (await client.info()).active_runs != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (await client.info()).active_runs == wanted


def test_a_run_caller_that_hangs_up_cancels_its_run(
    start_engine: Callable[..., EngineProcess],
) -> None:
    # run() is one unary call (RunToEnd): cancelling it is the only cancel the engine hears.
    engine = start_engine("--engine-id", "hangup")

    async def main() -> None:
        async with AsyncEngineClient(engine.address, timeout=30) as aclient:
            task = asyncio.create_task(aclient.run(spin_spec()))
            await _until_active_runs(aclient, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until_active_runs(aclient, 0)
            assert (await aclient.run(GOOD, {"x": 1})).ok

    asyncio.run(main())


# --- engines of their own ---------------------------------------------------------------------


def test_capacity_refusal(start_engine: Callable[..., EngineProcess]) -> None:
    engine = start_engine("--capacity", "1", "--engine-id", "tiny")
    with EngineClient(engine.address, timeout=30) as client:
        stream = client.stream(spin_spec())
        with stream:
            until_started(stream, "spin")
            with pytest.raises(EngineBusy) as info:
                client.run(GOOD, {"x": 1})
            assert "capacity" in str(info.value)
            assert info.value.code == "RESOURCE_EXHAUSTED"
            assert client.info().active_run_ids == (stream.run_id,)
            client.cancel(stream.run_id)
            assert stream.wait().status is RunStatus.CANCELLED
        wait_for(lambda: client.info().active_runs == 0, "the run's slot to be released")
        assert_serving(client)


def test_sigterm_drains_running_runs(
    start_engine: Callable[..., EngineProcess], tmp_path: Path
) -> None:
    engine = start_engine("--drain-grace", "60")
    release = tmp_path / "release"
    with EngineClient(engine.address, timeout=30) as client:
        spec = {"id": "held", "nodes": [{"id": "held", "python": "engine_tasks:wait_for_file"}]}
        stream = client.stream(spec, {"path": str(release)})
        with stream:
            until_started(stream, "held")
            engine.signal(signal.SIGTERM)
            wait_for(lambda: client.info().draining, "the engine to drain")
            with pytest.raises(EngineUnavailable, match="draining"):
                client.run(GOOD, {"x": 1})
            assert client.health() == "NOT_SERVING"
            assert client.info().active_run_ids == (stream.run_id,)
            release.touch()  # the run in flight may now finish, within the grace period
            result = stream.wait()
        assert result.ok, result.error
        assert result.outputs["held"] == {"released": True}
    assert engine.wait() == 0
    assert "0 run(s) cancelled" in engine.stderr()


def test_sigterm_cancels_runs_past_the_grace(start_engine: Callable[..., EngineProcess]) -> None:
    engine = start_engine("--drain-grace", "0.5")
    with EngineClient(engine.address, timeout=30) as client:
        stream = client.stream(spin_spec())
        with stream:
            until_started(stream, "spin")
            engine.signal(signal.SIGTERM)
            result = stream.wait()
        assert result.status is RunStatus.CANCELLED
    assert engine.wait() == 0
    assert "1 run(s) cancelled" in engine.stderr()


def test_sigkill_mid_run_is_unavailable_not_a_hang(
    start_engine: Callable[..., EngineProcess],
) -> None:
    engine = start_engine()
    with EngineClient(engine.address) as client:
        stream = client.stream(spin_spec())
        with stream:
            until_started(stream, "spin")
            engine.signal(signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(EngineUnavailable):
                stream.wait()
        assert time.monotonic() - started < 10
        with pytest.raises(EngineUnavailable):
            client.run(GOOD, {"x": 1})


def test_a_frozen_engine_is_unavailable_not_a_hang(
    start_engine: Callable[..., EngineProcess],
) -> None:
    # SIGSTOP: the socket stays open but nothing answers; only keepalive pings can tell.
    engine = start_engine()
    try:
        with EngineClient(engine.address, keepalive=0.5) as client:
            stream = client.stream(spin_spec())
            with stream:
                until_started(stream, "spin")
                engine.signal(signal.SIGSTOP)
                started = time.monotonic()
                with pytest.raises(EngineUnavailable):
                    stream.wait()
            assert time.monotonic() - started < 10
    finally:
        engine.signal(signal.SIGCONT)


def test_engine_cli_refuses_bad_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli_main(["engine", "--capacity", "0"]) == 2
    assert cli_main(["engine", "--tls-key", "k.pem"]) == 2
    assert cli_main(["engine", "--port", "70000"]) == 2
    monkeypatch.setenv("CAPACITY", "many")
    assert cli_main(["engine"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("dagengine: error: ") for line in lines)
    assert "CAPACITY" in lines[-1]


def test_environment_variables_configure_the_engine(
    start_engine: Callable[..., EngineProcess],
) -> None:
    engine = start_engine(env={"ENGINE_ID": "from-env", "CAPACITY": "3"})
    with EngineClient(engine.address, timeout=30) as client:
        info = client.info()
    assert (info.engine_id, info.capacity) == ("from-env", 3)
    flags = start_engine("--engine-id", "from-flag", env={"ENGINE_ID": "from-env"})
    assert flags.engine_id == "from-flag"


# --- TLS --------------------------------------------------------------------------------------


class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a
    second CA with a client certificate of its own (which the engine must refuse)."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)

        def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

        def name(common: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        def ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(common))
                .issuer_name(name(common))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            return cert, key

        def leaf(
            issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common: str, server: bool
        ) -> tuple[bytes, bytes]:
            issuer_cert, issuer_key = issuer
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(common))
                .issuer_name(issuer_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([usage]),
                    critical=False,
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                    critical=False,
                )
            )
            alt_names: list[x509.GeneralName] = [x509.DNSName("localhost" if server else common)]
            if server:
                alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            cert = builder.sign(issuer_key, hashes.SHA256())
            return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

        authority = ca("dagengine test CA")
        other = ca("some other CA")
        self.ca = authority[0].public_bytes(serialization.Encoding.PEM)
        self.other_ca = other[0].public_bytes(serialization.Encoding.PEM)
        self.server_cert, self.server_key = leaf(authority, "engine", server=True)
        self.client_cert, self.client_key = leaf(authority, "orchestrator", server=False)
        self.rogue_cert, self.rogue_key = leaf(other, "rogue", server=False)
        self.files: dict[str, str] = {}
        for attr in ("ca", "server_cert", "server_key"):
            path = directory / f"{attr}.pem"
            path.write_bytes(getattr(self, attr))
            self.files[attr] = str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def test_tls(start_engine: Callable[..., EngineProcess], certs: Certs) -> None:
    engine = start_engine(
        "--tls-cert", certs.files["server_cert"], "--tls-key", certs.files["server_key"]
    )
    with EngineClient(engine.address, tls=TLSConfig(certs.files["ca"]), timeout=30) as secure:
        assert secure.health() == "SERVING"
        assert_serving(secure)
    with EngineClient(
        f"localhost:{engine.address.rsplit(':', 1)[1]}", tls=TLSConfig(certs.ca), timeout=30
    ) as by_name:
        assert by_name.info().engine_id == engine.engine_id
    with EngineClient(engine.address, timeout=30) as plain, pytest.raises(EngineUnavailable):
        plain.info()
    with (
        EngineClient(engine.address, tls=TLSConfig(certs.other_ca), timeout=30) as untrusting,
        pytest.raises(EngineUnavailable),
    ):
        untrusting.info()


def mutual_tls_engine(start_engine: Callable[..., EngineProcess], certs: Certs) -> EngineProcess:
    """An engine that requires client certificates signed by the test CA."""
    return start_engine(
        "--tls-cert",
        certs.files["server_cert"],
        "--tls-key",
        certs.files["server_key"],
        "--tls-client-ca",
        certs.files["ca"],
    )


def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    start_engine: Callable[..., EngineProcess], certs: Certs
) -> None:
    engine = mutual_tls_engine(start_engine, certs)
    valid = TLSConfig(certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    with EngineClient(engine.address, tls=valid, timeout=30) as client:
        assert_serving(client)
    for tls in (
        TLSConfig(certs.ca),
        TLSConfig(certs.ca, client_cert=certs.rogue_cert, client_key=certs.rogue_key),
    ):
        with EngineClient(engine.address, tls=tls, timeout=30) as refused:
            with pytest.raises(dagengine.EngineError) as info:
                refused.info()
            assert isinstance(info.value, EngineUnavailable), info.value


def test_the_orchestrator_session_speaks_mutual_tls(
    start_engine: Callable[..., EngineProcess], certs: Certs
) -> None:
    """The orchestrator's path (a Rust-driven Session, :class:`RemoteBackend`) with the same
    TLS material as the client: a CA file, a client certificate, a name override."""
    from dagengine.orchestrator.backends import Job, LoopThread, RemoteBackend

    engine = mutual_tls_engine(start_engine, certs)
    port = engine.address.rsplit(":", 1)[1]
    spec = {**GOOD, "version": "1.0.0"}
    loop = LoopThread("test-tls")
    try:
        outcomes: queue.Queue[tuple[RunResult | None, BaseException | None]] = queue.Queue()
        cases = [
            (engine.address, TLSConfig(certs.files["ca"], certs.client_cert, certs.client_key)),
            (
                f"localhost:{port}",
                TLSConfig(certs.ca, certs.client_cert, certs.client_key, server_name="localhost"),
            ),
            (engine.address, TLSConfig(certs.ca)),  # no client certificate: refused
            (engine.address, TLSConfig(certs.other_ca, certs.client_cert, certs.client_key)),
            (engine.address, None),  # plaintext to a TLS engine
        ]
        for address, tls in cases:
            backend = RemoteBackend("e", address, 4, loop, tls=tls)
            job = Job(
                run_id=uuid.uuid4().hex,
                attempt=1,
                workflow_id="good",
                version="1.0.0",
                dag=DAG.from_spec(spec),
                spec=workflow_to_proto(spec),
                inputs={"x": 1},
            )
            backend.launch(job, lambda batch: None, lambda r, e: outcomes.put((r, e)))
            outcomes_seen = outcomes.get(timeout=30)
            backend.close()
            result, exc = outcomes_seen
            if tls is not None and tls.client_cert is not None and tls.ca_cert != certs.other_ca:
                assert exc is None, exc
                assert result is not None
                assert result.outputs["a"] == {"v": 2}
            else:
                assert isinstance(exc, EngineUnavailable), (address, tls, exc)
    finally:
        loop.stop()

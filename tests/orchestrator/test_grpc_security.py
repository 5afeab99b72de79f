"""The orchestrator's gRPC server (``OrchestratorService``): it listens where it is told, serves
TLS and mutual TLS, and with a token refuses calls without ``authorization: Bearer <token>``;
engines that self-register or run sub-workflows through it send their TLS certificates and
token.

Engines are real ``dagengine engine`` processes; the orchestrator runs in-process
(``Orchestrator.from_config``) or under ``serve``. Tests wait on conditions, never on sleeps.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dagengine.engine import orchestrator_credentials_from_env
from dagengine.exceptions import ConfigError, EngineStartError
from dagengine.orchestrator import Config, Orchestrator
from dagengine.serve import ServeOptions, serve
from dagengine.v1 import engine_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from outcomes import result as done
from processes import EngineProcess, free_port, wait_for
from test_engine import Certs

pytestmark = pytest.mark.integration

TOKEN = "orchestrator-s3cret"
WAIT = 30.0


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def register(
    channel: grpc.Channel, engine_id: str = "e1", metadata: Any = None
) -> pb.RegisterEngineResponse:
    rpc = channel.unary_unary(
        "/dagengine.v1.OrchestratorService/RegisterEngine",
        request_serializer=pb.RegisterEngineRequest.SerializeToString,
        response_deserializer=pb.RegisterEngineResponse.FromString,
    )
    request = pb.RegisterEngineRequest(engine_id=engine_id, address="127.0.0.1:1", capacity=1)
    reply: pb.RegisterEngineResponse = rpc(request, timeout=WAIT, metadata=metadata)
    return reply


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT).status
    return status


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    made = Certs(tmp_path_factory.mktemp("certs"))
    directory = Path(made.files["ca"]).parent
    for attr in ("other_ca", "client_cert", "client_key", "rogue_cert", "rogue_key"):
        path = directory / f"{attr}.pem"
        path.write_bytes(getattr(made, attr))
        made.files[attr] = str(path)
    return made


@pytest.fixture
def make_orch() -> Iterator[Callable[..., Orchestrator]]:
    made: list[Orchestrator] = []

    def make(**settings: Any) -> Orchestrator:
        config = Config(
            discovery=settings.pop("discovery", "self-registration"),
            store_path=":memory:",
            grpc_host="127.0.0.1",
            engine_health_check_interval=1.0,
            **settings,
        )
        orch = Orchestrator.from_config(config, grpc_port=0)
        made.append(orch)
        return orch

    try:
        yield make
    finally:
        for orch in made:
            orch.stop()


def address(orch: Orchestrator) -> str:
    assert orch.cluster is not None
    return f"127.0.0.1:{orch.cluster.port}"


# --- where it listens -------------------------------------------------------------------------


def _connects(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return False
    return True


@pytest.mark.parametrize(
    ("env", "listening", "not_listening"),
    [
        # serve --host 127.0.0.1: OrchestratorService too listens on 127.0.0.1 only (all of
        # 127.0.0.0/8 reaches lo, so 127.0.0.2 reaches a server bound to all interfaces).
        ({}, "127.0.0.1", "127.0.0.2"),
        # DAGENGINE_GRPC_HOST moves it, whatever the API's host.
        ({"DAGENGINE_GRPC_HOST": "127.0.0.2"}, "127.0.0.2", "127.0.0.1"),
    ],
)
def test_serve_binds_orchestrator_service_where_configured(
    env: dict[str, str], listening: str, not_listening: str
) -> None:
    port = free_port()
    opts = ServeOptions(
        host="127.0.0.1",
        port=0,
        store=":memory:",
        discovery={"type": "self-registration"},
        grpc_port=port,
    )
    out = io.StringIO()
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(serve(opts, env=env, out=out, stop=stop)), daemon=True
    )
    thread.start()
    try:
        wait_for(lambda: "listening on" in out.getvalue() or not thread.is_alive(), "serve")
        assert thread.is_alive(), out.getvalue()
        assert _connects(listening, port)
        assert not _connects(not_listening, port)
        with grpc.insecure_channel(f"{listening}:{port}") as channel:
            assert register(channel).accepted
    finally:
        stop.set()
        thread.join(WAIT)
    assert codes == [0]


def test_the_grpc_host_comes_from_the_environment(tmp_path: Path) -> None:
    config = Config.from_env({"DAGENGINE_GRPC_HOST": "10.1.2.3", "DAGENGINE_GRPC_TOKEN": "t"})
    assert (config.grpc_host, config.grpc_token) == ("10.1.2.3", "t")
    assert "'t'" not in repr(config)  # the token stays out of logs
    assert Config.from_env({}).grpc_host is None
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DAGENGINE_GRPC_TLS_CERT": str(cert)})
    assert caught.value.variable == "DAGENGINE_GRPC_TLS_KEY"
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DAGENGINE_GRPC_TLS_CLIENT_CA": str(cert)})
    assert caught.value.variable == "DAGENGINE_GRPC_TLS_CERT"


# --- the token --------------------------------------------------------------------------------


def test_a_token_is_required_on_orchestrator_service_but_not_for_health(
    make_orch: Callable[..., Orchestrator],
) -> None:
    orch = make_orch(grpc_token=TOKEN)
    assert orch.cluster is not None
    assert orch.cluster.registration is not None
    with grpc.insecure_channel(address(orch)) as channel:
        for metadata in (
            None,
            bearer("wrong"),
            (("authorization", TOKEN),),  # not a bearer credential
            bearer(TOKEN + "x"),
        ):
            assert code_of(lambda m=metadata: register(channel, metadata=m)) is (
                grpc.StatusCode.UNAUTHENTICATED
            )
        assert orch.cluster.registration.endpoints() == []
        sub = channel.unary_unary(
            "/dagengine.v1.OrchestratorService/RunSubWorkflow",
            request_serializer=pb.SubWorkflowRequest.SerializeToString,
            response_deserializer=pb.SubWorkflowResponse.FromString,
        )
        request = pb.SubWorkflowRequest(workflow_id="nope", inputs_json=b"{}")
        assert code_of(lambda: sub(request, timeout=WAIT)) is grpc.StatusCode.UNAUTHENTICATED
        # Reflection, a stream, is refused too.
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        asked = [reflection_pb2.ServerReflectionRequest(list_services="")]
        assert code_of(lambda: list(info(iter(asked), timeout=WAIT))) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # Probes carry no credentials: health needs none.
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        # With the token: accepted.
        assert register(channel, metadata=bearer(TOKEN)).accepted
        assert [e.engine_id for e in orch.cluster.registration.endpoints()] == ["e1"]
        assert list(info(iter(asked), timeout=WAIT, metadata=bearer(TOKEN)))


def test_engines_send_the_token_when_they_self_register(
    make_orch: Callable[..., Orchestrator], start_engine: Callable[..., EngineProcess]
) -> None:
    orch = make_orch(grpc_token=TOKEN)
    target = address(orch)
    refused = start_engine("--engine-id", "no-token", "--self-register", "--orchestrator", target)
    accepted = start_engine(
        "--engine-id",
        "with-token",
        "--self-register",
        "--orchestrator",
        target,
        env={"DAGENGINE_ORCHESTRATOR_TOKEN": TOKEN},
    )
    wait_for(lambda: "with-token" in orch.engines(), "the engine with the token to register")
    wait_for(lambda: "UNAUTHENTICATED" in refused.stderr(), "the refusal to be logged")
    assert "no-token" not in orch.engines()
    wait_for(lambda: "registered with orchestrator" in accepted.stderr(), "the engine's log")


@pytest.mark.parametrize("with_token", [True, False])
def test_sub_workflows_from_an_engine_send_the_token_over_mutual_tls(
    start_engine: Callable[..., EngineProcess], certs: Certs, with_token: bool
) -> None:
    port = free_port()
    env = {
        "DAGENGINE_ORCHESTRATOR_TOKEN": TOKEN if with_token else "",
        "DAGENGINE_ORCHESTRATOR_TLS_CA": certs.files["ca"],
        "DAGENGINE_ORCHESTRATOR_TLS_CERT": certs.files["client_cert"],
        "DAGENGINE_ORCHESTRATOR_TLS_KEY": certs.files["client_key"],
    }
    engine = start_engine("--engine-id", "remote", "--orchestrator", f"127.0.0.1:{port}", env=env)
    config = Config(
        discovery="static",
        engines=(engine.address,),
        store_path=":memory:",
        grpc_host="127.0.0.1",
        engine_health_check_interval=1.0,
        grpc_tls_cert=certs.files["server_cert"],
        grpc_tls_key=certs.files["server_key"],
        grpc_tls_client_ca=certs.files["ca"],
        grpc_token=TOKEN,
    )
    orch = Orchestrator.from_config(config, grpc_port=port)
    try:
        wait_for(lambda: "remote" in orch.engines(), "static discovery to find the engine")
        orch.register_workflow("child", "1.0.0", {"nodes": [{"id": "c", "lua": "return {v = 7}"}]})
        orch.register_workflow("parent", "1.0.0", {"nodes": [{"id": "s", "workflow": "child"}]})
        result = done(orch.execute_workflow("parent", {}))
    finally:
        orch.stop()
    if with_token:
        assert result.ok, result.error
        assert result.outputs["s"] == {"c": {"v": 7}}
    else:
        assert not result.ok
        assert "authorization: Bearer" in str(result.error)


def test_orchestrator_credentials_from_the_environment(certs: Certs) -> None:
    assert orchestrator_credentials_from_env({}) == (None, None)
    tls, token = orchestrator_credentials_from_env(
        {
            "DAGENGINE_ORCHESTRATOR_TOKEN": " t ",
            "DAGENGINE_ORCHESTRATOR_TLS_CA": certs.files["ca"],
            "DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME": "orchestrator",
        }
    )
    assert token == "t"
    assert tls is not None
    assert (tls.ca_cert, tls.client_cert, tls.server_name) == (
        certs.files["ca"],
        None,
        "orchestrator",
    )
    with pytest.raises(EngineStartError, match="DAGENGINE_ORCHESTRATOR_TLS_KEY"):
        orchestrator_credentials_from_env(
            {"DAGENGINE_ORCHESTRATOR_TLS_CERT": certs.files["client_cert"]}
        )


# --- TLS and mutual TLS -----------------------------------------------------------------------


def _tls_channel(target: str, certs: Certs, client: str | None = None) -> grpc.Channel:
    cert = key = None
    if client is not None:
        cert, key = getattr(certs, f"{client}_cert"), getattr(certs, f"{client}_key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(target, credentials)


def test_tls_serves_tls_clients_and_refuses_plaintext(
    make_orch: Callable[..., Orchestrator], certs: Certs
) -> None:
    orch = make_orch(
        grpc_tls_cert=certs.files["server_cert"], grpc_tls_key=certs.files["server_key"]
    )
    target = address(orch)
    with _tls_channel(target, certs) as channel:
        assert register(channel).accepted
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(target) as plain:
        assert code_of(lambda: register(plain, "plain")) is grpc.StatusCode.UNAVAILABLE
    untrusted = grpc.ssl_channel_credentials(root_certificates=certs.other_ca)
    with grpc.secure_channel(target, untrusted) as channel:
        assert code_of(lambda: register(channel, "untrusted")) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    make_orch: Callable[..., Orchestrator], certs: Certs
) -> None:
    orch = make_orch(
        grpc_tls_cert=certs.files["server_cert"],
        grpc_tls_key=certs.files["server_key"],
        grpc_tls_client_ca=certs.files["ca"],
    )
    assert orch.cluster is not None
    assert orch.cluster.registration is not None
    target = address(orch)
    for client in (None, "rogue"):
        with _tls_channel(target, certs, client) as channel:
            assert code_of(lambda c=channel: register(c, "refused")) is grpc.StatusCode.UNAVAILABLE
    with _tls_channel(target, certs, "client") as channel:
        assert register(channel, "mtls").accepted
    assert [e.engine_id for e in orch.cluster.registration.endpoints()] == ["mtls"]


def test_an_engine_self_registers_over_mutual_tls_with_a_token(
    make_orch: Callable[..., Orchestrator],
    start_engine: Callable[..., EngineProcess],
    certs: Certs,
) -> None:
    orch = make_orch(
        grpc_tls_cert=certs.files["server_cert"],
        grpc_tls_key=certs.files["server_key"],
        grpc_tls_client_ca=certs.files["ca"],
        grpc_token=TOKEN,
    )
    target = address(orch)
    tls_flags = ("--orchestrator-tls-ca", certs.files["ca"])
    client_flags = (
        "--orchestrator-tls-cert",
        certs.files["client_cert"],
        "--orchestrator-tls-key",
        certs.files["client_key"],
    )
    token = {"DAGENGINE_ORCHESTRATOR_TOKEN": TOKEN}
    common = ("--self-register", "--orchestrator", target)
    no_cert = start_engine("--engine-id", "no-cert", *common, *tls_flags, env=token)
    plain = start_engine("--engine-id", "plain", *common, env=token)
    good = start_engine("--engine-id", "mtls", *common, *tls_flags, *client_flags, env=token)
    wait_for(lambda: "mtls" in orch.engines(), "the engine to register over mutual TLS")
    wait_for(lambda: "cannot register" in no_cert.stderr(), "the engine without a certificate")
    wait_for(lambda: "cannot register" in plain.stderr(), "the plaintext engine")
    assert set(orch.engines()) == {"mtls"}
    wait_for(lambda: "registered with orchestrator" in good.stderr(), "the engine's log")
    # The orchestrator dials the engine back (plaintext: the engine serves no TLS here).
    orch.register_workflow("w", "1.0.0", {"nodes": [{"id": "a", "lua": "return {v = 1}"}]})
    result = done(orch.execute_workflow("w", {}))
    assert result.ok, result.error


def test_engine_cli_refuses_half_a_client_certificate_for_the_orchestrator(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> None:
    from dagengine.cli import main as cli_main

    for name in ("ORCHESTRATOR_ADDRESS", "DAGENGINE_SELF_REGISTER"):
        monkeypatch.delenv(name, raising=False)
    target = ("--orchestrator", "127.0.0.1:1", "--port", "0")
    assert cli_main(["engine", *target, "--orchestrator-tls-cert", certs.files["client_cert"]]) == 2
    assert "--orchestrator-tls-cert and --orchestrator-tls-key go together" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("DAGENGINE_ORCHESTRATOR_TLS_KEY", certs.files["client_key"])
    assert cli_main(["engine", *target]) == 2
    assert "DAGENGINE_ORCHESTRATOR_TLS_CERT" in capsys.readouterr().err

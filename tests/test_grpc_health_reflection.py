"""gRPC health and server reflection on a real engine process and a real orchestrator server.

* ``grpc.health.v1.Health/Watch`` of a service the server does not know streams
  ``SERVICE_UNKNOWN`` and stays open, as the health-checking protocol says
  (https://github.com/grpc/grpc/blob/master/doc/health-checking.md) -- not ``NOT_FOUND``.
* Server reflection lets a client that has no ``.proto`` files (grpcurl, or grpcio-reflection's
  ``ProtoReflectionDescriptorDatabase`` here) list the services and resolve their methods.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from dagengine.orchestrator import Config, Orchestrator
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from processes import EngineProcess

pytestmark = pytest.mark.integration

WAIT = 30.0
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    process = EngineProcess("--engine-id", "reflected")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def orchestrator() -> Iterator[str]:
    config = Config(discovery="self-registration", store_path=":memory:", grpc_host="127.0.0.1")
    orch = Orchestrator.from_config(config, grpc_port=0)
    try:
        assert orch.cluster is not None
        yield f"127.0.0.1:{orch.cluster.port}"
    finally:
        orch.stop()


def _watch_unknown_stays_open(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
        first = next(stream)
        assert first.status == SERVICE_UNKNOWN
        # Check still says NOT_FOUND for it (the protocol's answer for Check) ...
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=WAIT)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        # ... the server itself serves, and the watch is still open: cancelling it succeeds
        # (a finished call cannot be cancelled) and its next read reports the cancel.
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status == SERVING
        assert stream.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() is grpc.StatusCode.CANCELLED


def test_engine_health_watch_of_an_unknown_service_streams_service_unknown(
    engine: EngineProcess,
) -> None:
    _watch_unknown_stays_open(engine.address)


def test_orchestrator_health_watch_of_an_unknown_service_streams_service_unknown(
    orchestrator: str,
) -> None:
    _watch_unknown_stays_open(orchestrator)


def test_orchestrator_health_watchers_learn_a_later_status() -> None:
    config = Config(discovery="none", store_path=":memory:", grpc_host="127.0.0.1")
    orch = Orchestrator.from_config(config, grpc_port=0)
    try:
        assert orch.cluster is not None
        with grpc.insecure_channel(f"127.0.0.1:{orch.cluster.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stream = stub.Watch(
                health_pb2.HealthCheckRequest(service="dagengine.v1.OrchestratorService")
            )
            assert next(stream).status == SERVING
            orch.stop()  # the orchestrator shuts down: its watchers hear it first
            assert next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING
            stream.cancel()
    finally:
        orch.stop()


def _reflected(target: str, service: str) -> tuple[list[str], set[str]]:
    """The services a server lists, and the methods of ``service`` as reflection resolves
    them (with their request and response types)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = DescriptorPool(database)
        descriptor = pool.FindServiceByName(service)
        methods = {
            f"{m.name}({m.input_type.full_name}) -> {m.output_type.full_name}"
            for m in descriptor.methods
        }
    return services, methods


def test_engine_serves_reflection(engine: EngineProcess) -> None:
    services, methods = _reflected(engine.address, "dagengine.v1.EngineService")
    assert set(services) == {
        "dagengine.v1.EngineService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert {
        "Run(dagengine.v1.RunRequest) -> dagengine.v1.RunEvents",
        "Info(dagengine.v1.InfoRequest) -> dagengine.v1.EngineInfo",
        "Cancel(dagengine.v1.CancelRequest) -> dagengine.v1.CancelResponse",
        "Watch(dagengine.v1.WatchRequest) -> dagengine.v1.RunEvent",
    } <= methods
    _, health = _reflected(engine.address, "grpc.health.v1.Health")
    assert "Watch(grpc.health.v1.HealthCheckRequest) -> grpc.health.v1.HealthCheckResponse" in (
        health
    )
    # grpc.reflection.v1 (what grpcurl asks first) answers too; its messages are v1alpha's
    # on the wire.
    with grpc.insecure_channel(engine.address) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (reply,) = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert {s.name for s in reply.list_services_response.service} == set(services)


def test_orchestrator_serves_reflection(orchestrator: str) -> None:
    services, methods = _reflected(orchestrator, "dagengine.v1.OrchestratorService")
    assert set(services) == {
        "dagengine.v1.OrchestratorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert methods == {
        "RegisterEngine(dagengine.v1.RegisterEngineRequest) -> dagengine.v1.RegisterEngineResponse",
        "RunSubWorkflow(dagengine.v1.SubWorkflowRequest) -> dagengine.v1.SubWorkflowResponse",
    }

"""The distributed side of an orchestrator: its gRPC service (``OrchestratorService``), engine
discovery, and health checks, wired to an :class:`~dagengine.orchestrator.Orchestrator`.

* Discovery (static list, self-registration, or Kubernetes) reports the engines there are;
  the cluster registers new ones with the orchestrator and removes the ones that left.
* The health checker asks every engine for its ``grpc.health.v1`` status every
  ``ENGINE_HEALTH_CHECK_INTERVAL`` seconds; an engine that fails is evicted (its runs are
  re-dispatched) and admitted again when it recovers.
* ``RegisterEngine`` feeds self-registration; ``RunSubWorkflow`` runs a child workflow for a
  sub-workflow node running on a remote engine.
* The gRPC server listens on ``Config.grpc_host`` (``DAGENGINE_GRPC_HOST``; ``dagengine serve``
  defaults it to its ``--host``), serves TLS with ``DAGENGINE_GRPC_TLS_CERT``/``_KEY`` (mutual
  TLS with ``DAGENGINE_GRPC_TLS_CLIENT_CA``), and with ``DAGENGINE_GRPC_TOKEN`` refuses every
  call but health checks that lacks ``authorization: Bearer <token>`` (``UNAUTHENTICATED``).
  It also serves ``grpc.health.v1.Health`` and server reflection (``grpc.reflection.v1alpha``).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dagengine.engine import REFUSAL_REASON_KEY, TLSConfig
from dagengine.exceptions import DagEngineError, DiscoveryError
from dagengine.orchestrator.discovery import (
    Discovery,
    EngineEndpoint,
    HealthChecker,
    HealthReport,
    KubernetesDiscovery,
    SelfRegistration,
    StaticDiscovery,
    grpc_health_check,
)
from dagengine.results import RunStatus
from dagengine.v1 import engine_pb2 as pb

if TYPE_CHECKING:
    from dagengine.orchestrator.config import Config
    from dagengine.orchestrator.orchestrator import Orchestrator

__all__ = [
    "ORCHESTRATOR_SERVICE",
    "Cluster",
    "OrchestratorServicer",
    "TokenInterceptor",
    "orchestrator_from_config",
]

log = logging.getLogger("dagengine.orchestrator")

#: The full name of the orchestrator's gRPC service.
ORCHESTRATOR_SERVICE = "dagengine.v1.OrchestratorService"

_STATUS = {
    RunStatus.SUCCEEDED: pb.SUCCEEDED,
    RunStatus.FAILED: pb.FAILED,
    RunStatus.CANCELLED: pb.CANCELLED,
}


class OrchestratorServicer:
    """``dagengine.v1.OrchestratorService``: engine self-registration and sub-workflows."""

    def __init__(self, orchestrator: Orchestrator, registration: SelfRegistration | None) -> None:
        self._orch = orchestrator
        self._registration = registration

    def RegisterEngine(
        self, request: pb.RegisterEngineRequest, context: grpc.ServicerContext
    ) -> pb.RegisterEngineResponse:
        if self._registration is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this orchestrator does not use self-registration (DISCOVERY)",
            )
        try:
            reg = self._registration.register(
                request.engine_id, request.address, request.capacity, request.version
            )
        except DiscoveryError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not reg.accepted and reg.reason:
            # The response has no field for it: the engine logs it from the trailers.
            # (Metadata values are printable ASCII.)
            reason = "".join(c if " " <= c <= "~" else "?" for c in reg.reason)
            context.set_trailing_metadata(((REFUSAL_REASON_KEY, reason),))
        return pb.RegisterEngineResponse(
            accepted=reg.accepted, heartbeat_interval_seconds=reg.heartbeat_interval
        )

    def RunSubWorkflow(
        self, request: pb.SubWorkflowRequest, context: grpc.ServicerContext
    ) -> pb.SubWorkflowResponse:
        try:
            inputs = json.loads(request.inputs_json or b"{}")
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"inputs_json: not valid JSON: {exc}")
        if not isinstance(inputs, dict):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs_json: must be a JSON object")
        coordinator = self._orch.get_subworkflow_coordinator()
        try:
            result = coordinator.run_child(
                request.workflow_id,
                request.version_range or "*",
                inputs,
                parent_run_id=request.parent_run_id,
                parent_node_id=request.parent_node_id,
                # The engine hangs up when the parent node is cancelled: cancel the child.
                cancelled=lambda: not context.is_active(),
            )
        except DagEngineError as exc:
            return pb.SubWorkflowResponse(
                status=pb.FAILED,
                error=pb.ErrorInfo(
                    type=type(exc).__name__, message=str(exc), node_id=request.parent_node_id
                ),
            )
        response = pb.SubWorkflowResponse(
            run_id=result.run_id,
            status=_STATUS[result.status],
            outputs_json=json.dumps(dict(result.outputs)).encode(),
        )
        child = self._orch.store.get_run(result.run_id)
        if child is not None:
            response.resolved_version = child.version
        if result.error is not None:
            response.error.CopyFrom(
                pb.ErrorInfo(
                    type=result.error.type,
                    message=result.error.message,
                    node_id=result.error.node_id or "",
                )
            )
        return response


_DRAINING = "engine is draining"


class _EngineDraining(Exception):
    """The engine answers, but ``NOT_SERVING``: it is draining, not dead."""


def _engine_health_check(timeout: float) -> Callable[[EngineEndpoint], bool]:
    """``grpc.health.v1`` check that tells a draining engine (answers ``NOT_SERVING``) from
    a dead one: the draining engine's runs are left to finish."""
    return grpc_health_check(client_factory=_StatusClient.factory(timeout), timeout=timeout)


class _StatusClient:
    """Health client whose NOT_SERVING answer raises :class:`_EngineDraining` (so the
    checker's report says why)."""

    def __init__(self, address: str, timeout: float) -> None:
        from dagengine.engine import EngineClient

        self._client = EngineClient(address, timeout=timeout)

    @classmethod
    def factory(cls, timeout: float) -> Callable[[str], _StatusClient]:
        return lambda address: cls(address, timeout)

    def health(self) -> str:
        status = self._client.health()
        if status == "NOT_SERVING":
            raise _EngineDraining(_DRAINING)
        return status

    def close(self) -> None:
        self._client.close()


def _handlers(servicer: OrchestratorServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        ORCHESTRATOR_SERVICE,
        {
            "RegisterEngine": grpc.unary_unary_rpc_method_handler(
                servicer.RegisterEngine,
                request_deserializer=pb.RegisterEngineRequest.FromString,
                response_serializer=pb.RegisterEngineResponse.SerializeToString,
            ),
            "RunSubWorkflow": grpc.unary_unary_rpc_method_handler(
                servicer.RunSubWorkflow,
                request_deserializer=pb.SubWorkflowRequest.FromString,
                response_serializer=pb.SubWorkflowResponse.SerializeToString,
            ),
        },
    )


_HEALTH_PREFIX = "/grpc.health.v1.Health/"


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses, with ``UNAUTHENTICATED``, every call without the metadata
    ``authorization: Bearer <token>`` -- except the health service's, which probes call
    without credentials."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("TokenInterceptor: the token is empty")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusal(
            handler,
            f"unauthenticated: {method} needs the metadata 'authorization: Bearer <token>' "
            "with this orchestrator's token (DAGENGINE_GRPC_TOKEN); it is missing or wrong",
        )


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that aborts with ``UNAUTHENTICATED``."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise DagEngineError(f"{what} {path}: {exc.strerror or exc}") from None


def _server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS of the orchestrator's gRPC server from the config (``None``: plaintext)."""
    if config.grpc_tls_cert is None and config.grpc_tls_key is None:
        if config.grpc_tls_client_ca is not None:
            raise DagEngineError(
                "DAGENGINE_GRPC_TLS_CLIENT_CA (mutual TLS) needs DAGENGINE_GRPC_TLS_CERT and "
                "DAGENGINE_GRPC_TLS_KEY"
            )
        return None
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        raise DagEngineError(
            "the orchestrator's gRPC TLS needs both DAGENGINE_GRPC_TLS_CERT and "
            "DAGENGINE_GRPC_TLS_KEY"
        )
    cert = _read(config.grpc_tls_cert, "DAGENGINE_GRPC_TLS_CERT")
    key = _read(config.grpc_tls_key, "DAGENGINE_GRPC_TLS_KEY")
    client_ca = (
        None
        if config.grpc_tls_client_ca is None
        else _read(config.grpc_tls_client_ca, "DAGENGINE_GRPC_TLS_CLIENT_CA")
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


_O = TypeVar("_O", bound="Orchestrator")


def orchestrator_from_config(
    orchestrator_class: type[_O], config: Config, *, grpc_port: int | None = None, **kwargs: Any
) -> _O:
    """A distributed orchestrator of ``orchestrator_class`` (``Orchestrator.from_config``
    calls this with its class): store, balancer and limits from ``config``; an embedded
    engine only without discovery; engine TLS from ``config.tls_*``; its :class:`Cluster`
    (discovery, health checks, ``OrchestratorService`` on ``grpc_port``, default
    ``config.grpc_port``) started and set as ``orchestrator.cluster``. ``kwargs`` go to the
    orchestrator's constructor. The orchestrator is stopped if its cluster cannot start.

    It lives here, not on the orchestrator, so that the dependency runs one way: the
    cluster knows the orchestrator, the orchestrator's module does not need the cluster's."""
    kwargs.setdefault("embedded_engine", config.discovery == "none")
    if config.tls_enabled and "tls" not in kwargs:
        kwargs["tls"] = TLSConfig(
            ca_cert=Path(config.tls_ca) if config.tls_ca else None,
            client_cert=Path(config.tls_cert) if config.tls_cert else None,
            client_key=Path(config.tls_key) if config.tls_key else None,
            server_name=config.tls_server_name,
        )
    orch = orchestrator_class(config=config, **kwargs)
    try:
        orch.cluster = Cluster(orch, grpc_port=grpc_port).start()
    except BaseException:
        orch.stop()
        raise
    return orch


class Cluster:
    """Discovery, health checks and the gRPC server of a distributed orchestrator.

    ``discovery`` is ``"static"``, ``"self-registration"``, ``"kubernetes"`` or ``"none"``
    (default: the orchestrator's config). ``grpc_port`` 0 picks a free port (see
    :attr:`port`); ``None`` serves no gRPC at all. ``grpc_host`` (default: the config's
    ``grpc_host``, else ``0.0.0.0``) is the address the gRPC server listens on; TLS and the
    bearer token come from the config (``grpc_tls_*``, ``grpc_token``).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        discovery: str | None = None,
        grpc_host: str | None = None,
        grpc_port: int | None = None,
        kubernetes_api: Any = None,
    ) -> None:
        self._orch = orchestrator
        config = orchestrator.config
        kind = discovery or config.discovery
        self.registration: SelfRegistration | None = None
        self.discovery: Discovery | None
        if kind == "static":
            self.discovery = StaticDiscovery(
                list(config.engines), interval=config.engine_discovery_interval
            )
        elif kind == "self-registration":
            self.registration = SelfRegistration(
                heartbeat_timeout=3 * config.engine_health_check_interval
            )
            self.discovery = self.registration
        elif kind == "kubernetes":
            self.discovery = KubernetesDiscovery(
                config.k8s_namespace,
                config.k8s_label_selector,
                in_cluster=config.in_cluster_config,
                api=kubernetes_api,
            )
        elif kind == "none":
            self.discovery = None
        else:
            raise DagEngineError(f"unknown discovery {kind!r}")
        self.health = HealthChecker(
            config.engine_health_check_interval,
            self._readmitting(
                _engine_health_check(timeout=min(2.0, config.engine_health_check_interval / 2))
            ),
            self._on_unhealthy,
            self._on_recovered,
        )
        self._known: dict[str, EngineEndpoint] = {}
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self.port: int | None = None
        port = config.grpc_port if grpc_port is None else grpc_port
        if port is not None:
            host = grpc_host or config.grpc_host or "0.0.0.0"
            credentials = _server_credentials(config)
            token = config.grpc_token
            self._server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="orchestrator-grpc"),
                interceptors=[TokenInterceptor(token)] if token else None,
                options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
            )
            self._server.add_generic_rpc_handlers(
                (_handlers(OrchestratorServicer(orchestrator, self.registration)),)
            )
            self._health = health.HealthServicer(experimental_non_blocking=True)
            self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            self._health.set(ORCHESTRATOR_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            reflection.enable_server_reflection(
                (
                    ORCHESTRATOR_SERVICE,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self._server,
            )
            # An IPv6 literal needs its brackets in the address grpc parses.
            bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
            address = f"{bound}:{port}"
            try:
                if credentials is None:
                    self.port = self._server.add_insecure_port(address)
                else:
                    self.port = self._server.add_secure_port(address, credentials)
            except RuntimeError as exc:
                raise DagEngineError(
                    f"cannot listen on {address} for OrchestratorService: {exc}"
                ) from None
            if self.port == 0:
                raise DagEngineError(f"cannot listen on {address} for OrchestratorService")

    def start(self) -> Cluster:
        """Start serving, discovering and checking engines."""
        if self._server is not None:
            self._server.start()
        if self.discovery is not None:
            self.discovery.start(self._on_change)
        self.health.start()
        return self

    def stop(self) -> None:
        """Stop everything started by :meth:`start`."""
        if self.discovery is not None:
            self.discovery.stop()
        self.health.stop()
        if self._health is not None:
            # Watchers see NOT_SERVING before their streams end with the server.
            self._health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(grace=1.0).wait(5)

    def _on_change(self, endpoints: Sequence[EngineEndpoint]) -> None:
        current = {e.engine_id: e for e in endpoints}
        with self._lock:
            gone = [eid for eid in self._known if eid not in current]
            changed = [
                e
                for e in current.values()
                if self._known.get(e.engine_id) is None
                or self._known[e.engine_id].address != e.address
                or self._known[e.engine_id].capacity != e.capacity
            ]
            self._known = current
        self.health.set_endpoints(list(current.values()))
        for engine_id in gone:
            self._orch.unregister_engine(engine_id)
        for endpoint in changed:
            try:
                self._orch.register_engine(
                    endpoint.engine_id, endpoint.address, capacity=endpoint.capacity
                )
            except DagEngineError:
                log.exception(
                    "cannot register engine %s at %s", endpoint.engine_id, endpoint.address
                )

    def _readmitting(
        self, check: Callable[[EngineEndpoint], bool]
    ) -> Callable[[EngineEndpoint], bool]:
        """``check``, which also re-admits an engine the orchestrator itself found
        unhealthy (a Run stream broke) when the check passes: the checker reports only its
        own transitions, and it may never have seen this engine fail (it restarted between
        two checks, or the stream broke for a reason of its own)."""

        def checked(endpoint: EngineEndpoint) -> bool:
            started = time.monotonic()
            ok = check(endpoint)
            if ok and self.health.is_healthy(endpoint.engine_id):
                self._orch.mark_healthy(endpoint.engine_id, checked_at=started)
            return ok

        return checked

    def _on_unhealthy(self, endpoint: EngineEndpoint, report: HealthReport) -> None:
        reason = report.error or "health check failed"
        self._orch.mark_unhealthy(
            endpoint.engine_id,
            reason=reason,
            data=report.to_dict(),
            draining=_DRAINING in reason,
        )

    def _on_recovered(self, endpoint: EngineEndpoint, report: HealthReport) -> None:
        self._orch.mark_healthy(endpoint.engine_id, data=report.to_dict())

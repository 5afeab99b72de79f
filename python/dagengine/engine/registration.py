"""An engine's side of its orchestrator's ``OrchestratorService``: self-registration
(:class:`SelfRegistrar`, :func:`advertise_address`), sub-workflow nodes run through the
orchestrator (:class:`OrchestratorSubWorkflowRunner`, :func:`subworkflow_runner_from_env`),
and the TLS and token those calls use (:func:`orchestrator_credentials_from_env`)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from dagengine.engine._channel import (
    DEFAULT_KEEPALIVE_SECONDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    MiB,
    channel_options,
)
from dagengine.engine._errors import rpc_code, rpc_details
from dagengine.engine._tls import TLSConfig
from dagengine.engine._wire import (
    RUN_STATUSES,
    decode_object,
    error_info_from_proto,
    json_object,
)
from dagengine.engine.address import join_address, split_address
from dagengine.exceptions import EngineStartError, SubWorkflowError
from dagengine.nodes import NodeContext, SubWorkflow, SubWorkflowRunner, subworkflow_inputs
from dagengine.results import RunStatus
from dagengine.v1 import engine_pb2 as pb

__all__ = [
    "ORCHESTRATOR_TOKEN_ENV",
    "REFUSAL_REASON_KEY",
    "OrchestratorSubWorkflowRunner",
    "SelfRegistrar",
    "advertise_address",
    "no_orchestrator",
    "orchestrator_credentials_from_env",
    "subworkflow_runner_from_env",
]


def no_orchestrator(sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
    """The sub-workflow runner of an engine without an orchestrator: it fails the node with
    a :class:`~dagengine.SubWorkflowError` saying so."""
    raise SubWorkflowError(
        f"sub-workflow node {ctx.node_id!r} needs an orchestrator to run {sub.reference}, and "
        "this engine has none (set ORCHESTRATOR_ADDRESS)",
        node_id=ctx.node_id,
        reference=sub.reference,
    )


class OrchestratorSubWorkflowRunner:
    """Runs a sub-workflow node's child through the orchestrator's ``RunSubWorkflow``.

    The child's inputs are the node's run inputs with each parent's output added under the
    parent's id; the node's output is the child's outputs (node id -> output). The call is
    abandoned when the node is cancelled or times out (``ctx.cancelled``).
    """

    def __init__(
        self, address: str, *, tls: TLSConfig | None = None, token: str | None = None
    ) -> None:
        self.address = address
        self._metadata = _bearer(token)
        options = channel_options(tls, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_KEEPALIVE_SECONDS)
        self._channel = (
            grpc.insecure_channel(address, options=options)
            if tls is None
            else grpc.secure_channel(address, tls.credentials(), options=options)
        )
        self._rpc = self._channel.unary_unary(
            "/dagengine.v1.OrchestratorService/RunSubWorkflow",
            request_serializer=pb.SubWorkflowRequest.SerializeToString,
            response_deserializer=pb.SubWorkflowResponse.FromString,
        )

    def __call__(self, sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
        inputs = subworkflow_inputs(ctx)
        request = pb.SubWorkflowRequest(
            parent_run_id=ctx.run_id,
            parent_node_id=ctx.node_id,
            workflow_id=sub.workflow_id,
            version_range=sub.version_range,
            inputs_json=json_object(inputs, "sub-workflow inputs"),
        )
        future = self._rpc.future(request, metadata=self._metadata)
        try:
            while True:
                try:
                    reply = future.result(timeout=0.1)
                    break
                except grpc.FutureTimeoutError:
                    if ctx.cancelled:
                        future.cancel()
                        raise SubWorkflowError(
                            f"sub-workflow node {ctx.node_id!r} was cancelled",
                            node_id=ctx.node_id,
                            reference=sub.reference,
                        ) from None
        except grpc.RpcError as err:
            raise SubWorkflowError(
                f"sub-workflow node {ctx.node_id!r}: orchestrator {self.address}: "
                f"{rpc_details(err)}",
                node_id=ctx.node_id,
                reference=sub.reference,
            ) from None
        if reply.status != pb.SUCCEEDED:
            status = RUN_STATUSES.get(reply.status, RunStatus.FAILED).value
            reason = f": {error_info_from_proto(reply.error)}" if reply.HasField("error") else ""
            raise SubWorkflowError(
                f"sub-workflow {sub.reference} (run {reply.run_id}) {status}{reason}",
                node_id=ctx.node_id,
                reference=sub.reference,
            )
        return decode_object(reply.outputs_json or b"{}", "the sub-workflow's outputs")


def subworkflow_runner_from_env(env: Mapping[str, str] | None = None) -> SubWorkflowRunner:
    """How this engine runs sub-workflow nodes: through the orchestrator at
    ``ORCHESTRATOR_ADDRESS`` (``host:port``; TLS and token from
    :func:`orchestrator_credentials_from_env`), or, without one, failing such nodes with a
    :class:`~dagengine.SubWorkflowError` that says so."""
    address = (os.environ if env is None else env).get("ORCHESTRATOR_ADDRESS", "").strip()
    if not address:
        return no_orchestrator
    tls, token = orchestrator_credentials_from_env(env)
    return OrchestratorSubWorkflowRunner(address, tls=tls, token=token)


#: The environment variables an engine reads to call its orchestrator's gRPC service.
ORCHESTRATOR_TOKEN_ENV = "DAGENGINE_ORCHESTRATOR_TOKEN"
_ORCHESTRATOR_TLS_ENV = {
    "ca_cert": "DAGENGINE_ORCHESTRATOR_TLS_CA",
    "client_cert": "DAGENGINE_ORCHESTRATOR_TLS_CERT",
    "client_key": "DAGENGINE_ORCHESTRATOR_TLS_KEY",
    "server_name": "DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME",
}


def orchestrator_credentials_from_env(
    env: Mapping[str, str] | None = None,
) -> tuple[TLSConfig | None, str | None]:
    """How an engine calls the orchestrator's ``OrchestratorService`` (self-registration,
    sub-workflows), from ``env`` (default: ``os.environ``): TLS when
    ``DAGENGINE_ORCHESTRATOR_TLS_CA`` (the CA that signed the orchestrator's certificate)
    or ``DAGENGINE_ORCHESTRATOR_TLS_CERT`` + ``_KEY`` (a client certificate, for mutual TLS)
    are set, with ``DAGENGINE_ORCHESTRATOR_TLS_SERVER_NAME`` overriding the name checked;
    and the bearer token ``DAGENGINE_ORCHESTRATOR_TOKEN``. Empty variables count as unset.
    Raises :class:`EngineStartError` naming the variable for a certificate without its key."""
    environ = os.environ if env is None else env
    values = {
        key: environ.get(name, "").strip() or None for key, name in _ORCHESTRATOR_TLS_ENV.items()
    }
    token = environ.get(ORCHESTRATOR_TOKEN_ENV, "").strip() or None
    if (values["client_cert"] is None) != (values["client_key"] is None):
        given, missing = (
            ("client_cert", "client_key")
            if values["client_key"] is None
            else ("client_key", "client_cert")
        )
        raise EngineStartError(
            f"{_ORCHESTRATOR_TLS_ENV[given]} is set but {_ORCHESTRATOR_TLS_ENV[missing]} is "
            "not: a client certificate needs its key"
        )
    if values["ca_cert"] is None and values["client_cert"] is None:
        return None, token
    return TLSConfig(**values), token


def _bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata carrying ``token`` (``authorization: Bearer <token>``)."""
    return (("authorization", f"Bearer {token}"),) if token else None


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def advertise_address(host: str, port: int, orchestrator: str | None = None) -> str:
    """The ``host:port`` an engine listening on ``host``:``port`` tells the orchestrator to
    dial: ``host`` itself when it is a concrete address; for a wildcard (``0.0.0.0``, ``::``)
    the local IP address the route to ``orchestrator`` leaves from (no packet is sent), else
    the IP address of this machine's host name, else the host name."""
    if host not in _WILDCARD_HOSTS:
        return join_address(host.strip("[]"), port)
    if orchestrator:
        with contextlib.suppress(OSError, ValueError):
            target_host, target_port = split_address(orchestrator)
            family = socket.AF_INET6 if ":" in target_host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target_host, target_port))
                local = str(probe.getsockname()[0])
            if local not in _WILDCARD_HOSTS:
                return join_address(local, port)
    name = socket.gethostname()
    try:
        return join_address(socket.gethostbyname(name), port)
    except OSError:
        return join_address(name, port)


#: Trailing metadata key carrying why ``RegisterEngine`` answered ``accepted=false``.
REFUSAL_REASON_KEY = "dagengine-refusal-reason"


class SelfRegistrar:
    """Keeps an engine registered with an orchestrator (``OrchestratorService.
    RegisterEngine``): registers at :meth:`start`, then again every
    ``heartbeat_interval_seconds`` the orchestrator answers with. While the orchestrator is
    unreachable it retries with exponential backoff (``backoff_initial`` doubling up to
    ``backoff_max`` seconds); a refusal is logged with the orchestrator's reason and retried
    at the heartbeat interval. Problems are logged once per change of state (``log`` gets
    one line each), not once per attempt. :meth:`stop` ends it (the engine is draining)."""

    def __init__(
        self,
        orchestrator: str,
        engine_id: str,
        address: str,
        capacity: int,
        version: str = "",
        *,
        tls: TLSConfig | None = None,
        token: str | None = None,
        log: Callable[[str], None] | None = None,
        call_timeout: float = 5.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self.orchestrator = orchestrator
        self.request = pb.RegisterEngineRequest(
            engine_id=engine_id, address=address, capacity=capacity, version=version
        )
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._metadata = _bearer(token)
        self._call_timeout = call_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        options = channel_options(tls, 4 * MiB, DEFAULT_KEEPALIVE_SECONDS)
        self._channel = (
            grpc.insecure_channel(orchestrator, options=options)
            if tls is None
            else grpc.secure_channel(orchestrator, tls.credentials(), options=options)
        )
        self._rpc = self._channel.unary_unary(
            "/dagengine.v1.OrchestratorService/RegisterEngine",
            request_serializer=pb.RegisterEngineRequest.SerializeToString,
            response_deserializer=pb.RegisterEngineResponse.FromString,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ""  # the last state logged
        self._delay = 0.0  # the current retry backoff
        #: Accepted registrations so far (heartbeats included).
        self.registrations = 0
        #: Whether the last attempt was accepted.
        self.registered = False

    def start(self) -> SelfRegistrar:
        """Register now (in the background) and keep heartbeating."""
        if self._thread is not None:
            raise RuntimeError("self-registration already started")
        self._thread = threading.Thread(
            target=self._run, name="dagengine-self-registration", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop heartbeating (the orchestrator drops the engine when its registration
        expires, or sooner when its health checks see it draining or gone)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._channel.close()

    def _note(self, state: str, line: str) -> None:
        if state != self._state:
            self._state = state
            self._log(line)

    def register_once(self) -> float:
        """One ``RegisterEngine`` call; returns the seconds to wait before the next one."""
        who = f"engine {self.request.engine_id} ({self.request.address})"
        try:
            reply, call = self._rpc.with_call(
                self.request, timeout=self._call_timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            self.registered = False
            code = rpc_code(err)
            name = code.name if code is not None else "UNKNOWN"
            self._delay = (
                min(self._delay * 2, self._backoff_max) if self._delay else self._backoff_initial
            )
            self._note(
                f"error:{name}:{rpc_details(err)}",
                f"dagengine {who}: cannot register with orchestrator {self.orchestrator} "
                f"({name}: {rpc_details(err)}); retrying with backoff up to "
                f"{self._backoff_max:g}s",
            )
            return self._delay
        self._delay = 0.0
        interval = reply.heartbeat_interval_seconds
        if not interval > 0 or interval != interval:
            interval = 10.0
        interval = min(max(interval, 0.05), 3600.0)
        if not reply.accepted:
            self.registered = False
            reason = ""
            for key, value in call.trailing_metadata() or ():
                if key == REFUSAL_REASON_KEY:
                    reason = value if isinstance(value, str) else value.decode()
            self._note(
                f"refused:{reason}",
                f"dagengine {who}: orchestrator {self.orchestrator} refused the registration: "
                f"{reason or 'no reason given'}; retrying every {interval:g}s",
            )
            return interval
        self.registered = True
        self.registrations += 1
        self._note(
            "registered",
            f"dagengine {who}: registered with orchestrator {self.orchestrator} "
            f"(heartbeat every {interval:g}s)",
        )
        return interval

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.register_once()
            except Exception as exc:  # never let the heartbeat thread die
                self._note(f"bug:{exc}", f"dagengine: self-registration failed: {exc!r}")
                wait = self._backoff_max
            if self._stop.wait(wait):
                return

"""Orchestrator configuration from environment variables.

The original system's variables keep their names and defaults (``K8S_NAMESPACE``,
``K8S_SERVICE_NAME``, ``K8S_LABEL_SELECTOR``, ``IN_CLUSTER_CONFIG``, ``TRANSPORT_TYPE``,
``LOAD_BALANCER_TYPE``, ``GRPC_PORT``, ``ENGINE_DISCOVERY_INTERVAL``,
``ENGINE_HEALTH_CHECK_INTERVAL``); ours are ``DISCOVERY``, ``ENGINES`` and the ``DAGENGINE_*``
family. :meth:`Config.from_env` reads them all and raises :class:`ConfigError` naming the
variable and its value for anything it cannot use, so a bad deployment fails at start-up
rather than at the first run.

An empty variable counts as unset: Kubernetes manifests and ``.env`` files often carry
``NAME=`` placeholders, and treating them as "use the default" is what their authors mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagengine._units import parse_duration
from dagengine.exceptions import ConfigError
from dagengine.node_logs import DEFAULT_LIMIT as NODE_LOG_LIMIT

__all__ = [
    "ANNOTATION_CAPACITY",
    "ANNOTATION_PORT",
    "DEFAULT_ENGINE_CAPACITY",
    "DEFAULT_STORE_PATH",
    "DISCOVERY_TYPES",
    "LOAD_BALANCER_TYPES",
    "TRANSPORT_TYPES",
    "Config",
]

#: Pod annotation giving an engine's gRPC port (the original system's name).
ANNOTATION_PORT = "workflow-engine/port"
#: Pod annotation giving an engine's capacity, its maximum concurrent runs.
ANNOTATION_CAPACITY = "workflow-engine/capacity"
#: An engine's capacity when nothing says otherwise (the original engines' ``CAPACITY`` default).
DEFAULT_ENGINE_CAPACITY = 10
#: Where the store lives unless ``DAGENGINE_STORE`` says otherwise (``~`` is expanded).
DEFAULT_STORE_PATH = "~/.local/state/dagengine/dagengine.db"

TRANSPORT_TYPES = ("grpc",)
LOAD_BALANCER_TYPES = ("consistent-hash", "round-robin", "least-loaded")
DISCOVERY_TYPES = ("static", "self-registration", "kubernetes", "none")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the orchestrator reads from its environment; build it with
    :meth:`from_env` (or directly, in tests and embedded use). Intervals are seconds."""

    k8s_namespace: str = "default"
    k8s_service_name: str = "workflow-engines"
    k8s_label_selector: str = "app=workflow-engine"
    in_cluster_config: bool = True
    transport_type: str = "grpc"
    load_balancer_type: str = "consistent-hash"
    grpc_port: int = 50051
    engine_discovery_interval: float = 30.0
    engine_health_check_interval: float = 10.0
    #: ``static``, ``self-registration``, ``kubernetes`` or ``none``.
    discovery: str = "none"
    #: ``host:port`` addresses of static engines (``ENGINES``).
    engines: tuple[str, ...] = ()
    #: SQLite file of the store, or ``:memory:``.
    store_path: str = field(default_factory=lambda: os.path.expanduser(DEFAULT_STORE_PATH))
    #: Runs that may wait for an engine before :class:`~dagengine.QueueFull` is raised.
    queue_limit: int = 10000
    max_subworkflow_depth: int = 16
    http_port: int = 8080
    #: Client TLS toward engines: CA bundle to verify them, and our certificate and key
    #: (mutual TLS). ``None`` means plaintext.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: The name engine certificates are checked against (``DAGENGINE_TLS_SERVER_NAME``):
    #: engines are dialled by pod IP, so their certificates name a service, not an address.
    tls_server_name: str | None = None
    #: Where ``OrchestratorService`` listens (``DAGENGINE_GRPC_HOST``). ``None``: all
    #: interfaces, except under ``dagengine serve``, which uses its ``--host``.
    grpc_host: str | None = None
    #: TLS of the orchestrator's own gRPC server: its certificate chain and key
    #: (``DAGENGINE_GRPC_TLS_CERT``, ``DAGENGINE_GRPC_TLS_KEY``), and with
    #: ``DAGENGINE_GRPC_TLS_CLIENT_CA`` callers must present a certificate that CA signed.
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_client_ca: str | None = None
    #: Bearer token every ``OrchestratorService`` call must carry (``DAGENGINE_GRPC_TOKEN``;
    #: engines send theirs from ``DAGENGINE_ORCHESTRATOR_TOKEN``). ``None``: no token.
    grpc_token: str | None = field(default=None, repr=False)
    #: Seconds finished runs are kept (``DAGENGINE_RETENTION``: ``30d``, ``12h``, ``off``);
    #: ``None`` keeps them forever. See :mod:`~dagengine.orchestrator.store.retention`.
    retention: float | None = 30 * 86400.0
    #: Seconds between two passes of the background pruner (``DAGENGINE_PRUNE_INTERVAL``).
    prune_interval: float = 600.0
    #: The newest finished runs of each workflow kept whatever their age.
    keep_last: int = 0
    #: A folder finished runs are written to (JSON Lines) before they are pruned.
    export_dir: str | None = None
    #: Bytes of log text stored per node attempt (``DAGENGINE_NODE_LOG_LIMIT``); the line
    #: past it is replaced by one truncation marker and the rest of the attempt's are dropped.
    node_log_limit: int = NODE_LOG_LIMIT
    #: One of several active orchestrators (replicas) on one PostgreSQL store
    #: (``DAGENGINE_REPLICA=1``, ``dagengine serve --replica``): see
    #: :mod:`~dagengine.orchestrator.replicas`.
    replica: bool = False
    #: Seconds a replica's lease on a run lasts without renewal (``DAGENGINE_LEASE_TTL``);
    #: renewed every third of it. A lost replica's runs move to the others within about 1.3x.
    lease_ttl: float = 10.0

    @property
    def tls_enabled(self) -> bool:
        """True when any TLS material is configured (connections to engines use TLS)."""
        return self.tls_ca is not None or self.tls_cert is not None

    @classmethod
    def local_from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """The configuration of an embedded orchestrator (``Orchestrator()``): the variables
        that apply to one process (``DAGENGINE_STORE``, ``DAGENGINE_QUEUE_LIMIT``,
        ``DAGENGINE_MAX_SUBWORKFLOW_DEPTH``, ``LOAD_BALANCER_TYPE``, ...) are read from
        ``environ`` (default: ``os.environ``); discovery is off whatever ``DISCOVERY`` and
        ``ENGINES`` say (that is :meth:`from_env` with ``Orchestrator.from_config``)."""
        env = dict(os.environ if environ is None else environ)
        for name in ("DISCOVERY", "ENGINES"):
            env.pop(name, None)
        return cls.from_env(env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the configuration from ``environ`` (default: ``os.environ``).

        Raises :class:`ConfigError` (``.variable``, ``.value``) for a value it cannot use.
        """
        env = _Env(os.environ if environ is None else environ)
        engines = env.engines("ENGINES")
        discovery = env.choice("DISCOVERY", DISCOVERY_TYPES, "static" if engines else "none")
        if discovery == "static" and not engines:
            raise ConfigError(
                "DISCOVERY=static needs engine addresses in ENGINES (host:port,host:port)",
                variable="ENGINES",
                value=env.raw("ENGINES") or "",
            )
        tls_cert = env.path("DAGENGINE_TLS_CERT")
        tls_key = env.path("DAGENGINE_TLS_KEY")
        if (tls_cert is None) != (tls_key is None):
            missing, given = (
                ("DAGENGINE_TLS_KEY", "DAGENGINE_TLS_CERT")
                if tls_key is None
                else ("DAGENGINE_TLS_CERT", "DAGENGINE_TLS_KEY")
            )
            raise ConfigError(
                f"{given} is set but {missing} is not: a client certificate needs its key",
                variable=missing,
                value="",
            )
        grpc_cert = env.path("DAGENGINE_GRPC_TLS_CERT")
        grpc_key = env.path("DAGENGINE_GRPC_TLS_KEY")
        grpc_client_ca = env.path("DAGENGINE_GRPC_TLS_CLIENT_CA")
        if (grpc_cert is None) != (grpc_key is None) or (grpc_client_ca and not grpc_cert):
            missing = "DAGENGINE_GRPC_TLS_CERT" if grpc_cert is None else "DAGENGINE_GRPC_TLS_KEY"
            raise ConfigError(
                f"{missing} is not set: the orchestrator's gRPC TLS needs both "
                "DAGENGINE_GRPC_TLS_CERT and DAGENGINE_GRPC_TLS_KEY (and mutual TLS, "
                "DAGENGINE_GRPC_TLS_CLIENT_CA, needs them too)",
                variable=missing,
                value="",
            )
        store = env.raw("DAGENGINE_STORE") or DEFAULT_STORE_PATH
        return cls(
            k8s_namespace=env.text("K8S_NAMESPACE", "default"),
            k8s_service_name=env.text("K8S_SERVICE_NAME", "workflow-engines"),
            k8s_label_selector=env.text("K8S_LABEL_SELECTOR", "app=workflow-engine"),
            in_cluster_config=env.boolean("IN_CLUSTER_CONFIG", True),
            transport_type=env.choice("TRANSPORT_TYPE", TRANSPORT_TYPES, "grpc"),
            load_balancer_type=env.choice(
                "LOAD_BALANCER_TYPE", LOAD_BALANCER_TYPES, "consistent-hash"
            ),
            grpc_port=env.port("GRPC_PORT", 50051),
            engine_discovery_interval=env.seconds("ENGINE_DISCOVERY_INTERVAL", 30.0),
            engine_health_check_interval=env.seconds("ENGINE_HEALTH_CHECK_INTERVAL", 10.0),
            discovery=discovery,
            engines=engines,
            store_path=store if store == ":memory:" else os.path.expanduser(store),
            queue_limit=env.integer("DAGENGINE_QUEUE_LIMIT", 10000, minimum=0),
            max_subworkflow_depth=env.integer("DAGENGINE_MAX_SUBWORKFLOW_DEPTH", 16, minimum=1),
            http_port=env.port("DAGENGINE_HTTP_PORT", 8080),
            tls_ca=env.path("DAGENGINE_TLS_CA"),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=env.raw("DAGENGINE_TLS_SERVER_NAME"),
            grpc_host=env.raw("DAGENGINE_GRPC_HOST"),
            grpc_tls_cert=grpc_cert,
            grpc_tls_key=grpc_key,
            grpc_tls_client_ca=grpc_client_ca,
            grpc_token=env.raw("DAGENGINE_GRPC_TOKEN"),
            retention=env.retention("DAGENGINE_RETENTION", 30 * 86400.0),
            prune_interval=env.duration("DAGENGINE_PRUNE_INTERVAL", 600.0),
            node_log_limit=env.integer(
                "DAGENGINE_NODE_LOG_LIMIT", NODE_LOG_LIMIT, minimum=1024, maximum=1 << 30
            ),
            replica=env.boolean("DAGENGINE_REPLICA", False),
            lease_ttl=env.seconds("DAGENGINE_LEASE_TTL", 10.0),
        )


class _Env:
    """Typed access to an environment mapping; every failure names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def _bad(self, name: str, value: str, expected: str) -> ConfigError:
        return ConfigError(f"{name}={value!r} is invalid: {expected}", variable=name, value=value)

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise self._bad(name, value, f"expected one of {', '.join(choices)}")
        return value.lower()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self._bad(name, value, "expected true or false")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self._bad(name, value, "expected an integer") from None
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self._bad(name, value, f"expected an integer {bounds}")
        return number

    def port(self, name: str, default: int) -> int:
        # 0 is allowed: it asks the OS for a free port, which tests and sidecars rely on.
        return self.integer(name, default, minimum=0, maximum=65535)

    def seconds(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self._bad(name, value, "expected a number of seconds, e.g. 10 or 2.5") from None
        if not math.isfinite(number) or number <= 0:
            raise self._bad(name, value, "expected a positive number of seconds")
        return number

    def duration(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            seconds = parse_duration(value, what=name)
        except ValueError:
            raise self._bad(name, value, "expected a duration such as 30d, 12h or 90s") from None
        if seconds <= 0:
            raise self._bad(name, value, "expected a positive duration")
        return seconds

    def retention(self, name: str, default: float) -> float | None:
        value = self.raw(name)
        if value is not None and value.lower() in ("off", "none", "forever"):
            return None
        return self.duration(name, default)

    def path(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise self._bad(name, value, "no such file")
        return str(path)

    def engines(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        addresses: list[str] = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue  # tolerate "a:1,b:2," and "a:1,,b:2"
            if not _valid_address(item):
                raise self._bad(
                    name,
                    value,
                    f"{item!r} is not host:port (e.g. engine-1:50051 or [::1]:50051)",
                )
            if item in addresses:
                raise self._bad(name, value, f"{item!r} is listed twice")
            addresses.append(item)
        return tuple(addresses)


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        return False
    if not 1 <= int(port) <= 65535:
        return False
    if host.startswith("["):
        return host.endswith("]") and len(host) > 2
    # A bare IPv6 address without brackets is ambiguous ("::1:50051"); refuse it.
    return ":" not in host and not any(c.isspace() for c in host)

"""Finding engines, and checking that they are alive.

Discovery says which engines exist; :class:`HealthChecker` says which of them are alive. Three
discoveries implement the same :class:`Discovery` protocol:

- :class:`StaticDiscovery`: a fixed list of addresses (``ENGINES=host:port,...``); each
  engine's id and capacity come from its ``Info`` call.
- :class:`SelfRegistration`: engines announce themselves (``OrchestratorService.
  RegisterEngine``, whose handler calls :meth:`SelfRegistration.register`) and keep doing so;
  an engine that stops heartbeating is dropped.
- :class:`KubernetesDiscovery`: list + watch of the engine Pods through the Kubernetes API
  (the API calls it makes are listed in :data:`RBAC_RULES`, which the deployment's Role must
  grant).

``start(on_change)`` begins discovering; ``on_change`` receives the full current list of
:class:`EngineEndpoint` (sorted by engine id) every time it changes, from the discovery's own
thread, never concurrently with itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dagengine.engine.address import join_address, split_address
from dagengine.exceptions import ConfigError, DiscoveryError

if TYPE_CHECKING:
    from kubernetes import client as k8s_client
    from kubernetes import watch as k8s_watch

__all__ = [
    "RBAC_RULES",
    "Discovery",
    "EngineEndpoint",
    "HealthChecker",
    "HealthReport",
    "KubernetesDiscovery",
    "Registration",
    "SelfRegistration",
    "StaticDiscovery",
    "grpc_health_check",
    "parse_address",
    "parse_engine_addresses",
]

_log = logging.getLogger(__name__)

#: Every Kubernetes API call :class:`KubernetesDiscovery` makes, as Role rules: it lists and
#: watches Pods in its namespace and nothing else. The deployment's Role is checked against
#: this (``deploy/`` tests), so change both together.
RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
]


@dataclass(frozen=True, slots=True)
class EngineEndpoint:
    """An engine the orchestrator can dial: its id, ``host:port`` address and capacity
    (concurrent runs); ``version`` is what the engine reported, when it did."""

    engine_id: str
    address: str
    capacity: int
    version: str = ""


OnChange = Callable[[Sequence[EngineEndpoint]], None]


class Discovery(Protocol):
    """A source of engines. ``on_change`` gets the full list each time it changes."""

    def start(self, on_change: OnChange) -> None: ...

    def stop(self) -> None: ...

    def endpoints(self) -> list[EngineEndpoint]: ...


# --- addresses ---------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """Split an engine's ``host:port`` (``[v6]:port`` for IPv6) into host and port, as
    :func:`dagengine.engine.split_address` does; raises :class:`DiscoveryError` when it is
    not one."""
    try:
        return split_address(text)
    except ValueError:
        raise DiscoveryError(f"engine address {text!r} is not host:port") from None


def parse_engine_addresses(value: str | Sequence[str]) -> list[str]:
    """The addresses of ``ENGINES`` (``host:port,host:port``), checked and without duplicates
    or blanks, in order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not item.strip():
            continue
        address = join_address(*parse_address(item))
        if address not in out:
            out.append(address)
    return out


# --- the common part --------------------------------------------------------------------------


class _Publisher:
    """Holds the current endpoints and calls ``on_change`` when they change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Reentrant: a callback may call back into the discovery (e.g. endpoints()).
        self._notify_lock = threading.RLock()
        self._current: dict[str, EngineEndpoint] = {}
        self._on_change: OnChange | None = None

    def endpoints(self) -> list[EngineEndpoint]:
        """The engines known now, sorted by id."""
        with self._lock:
            return sorted(self._current.values(), key=lambda e: e.engine_id)

    def _set_callback(self, on_change: OnChange) -> None:
        with self._notify_lock:
            with self._lock:
                self._on_change = on_change
                snapshot = sorted(self._current.values(), key=lambda e: e.engine_id)
            if snapshot:
                self._call(on_change, snapshot)

    def _publish(self, endpoints: Mapping[str, EngineEndpoint]) -> bool:
        # One notifier at a time, and the set is swapped under the same lock, so callbacks
        # see the changes in the order they happened.
        with self._notify_lock:
            with self._lock:
                if dict(endpoints) == self._current:
                    return False
                self._current = dict(endpoints)
                snapshot = sorted(self._current.values(), key=lambda e: e.engine_id)
                callback = self._on_change
            if callback is not None:
                self._call(callback, snapshot)
            return True

    @staticmethod
    def _call(callback: OnChange, snapshot: list[EngineEndpoint]) -> None:
        try:
            callback(snapshot)
        except Exception:
            _log.exception("discovery on_change callback failed")


def _join(thread: threading.Thread | None, timeout: float) -> None:
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


# --- static list ------------------------------------------------------------------------------


class _InfoClient(Protocol):
    def info(self) -> Any: ...

    def close(self) -> None: ...


def _default_client_factory(timeout: float) -> Callable[[str], Any]:
    def make(address: str) -> Any:
        from dagengine.engine import EngineClient  # grpc only when engines are used

        return EngineClient(address, timeout=timeout)

    return make


class StaticDiscovery(_Publisher):
    """Engines at fixed addresses (``ENGINES=host:port,...``).

    Each address's engine id and capacity come from its ``Info`` call, made in parallel by a
    background thread; the calls are repeated every ``interval`` seconds
    (``ENGINE_DISCOVERY_INTERVAL``), which retries the engines that were unreachable and picks
    up an engine restarted with another id or capacity. An engine that was found once stays
    listed while unreachable: whether it is alive is the :class:`HealthChecker`'s call.
    ``client_factory(address)`` makes a client with ``info()`` and ``close()`` (default: an
    :class:`dagengine.engine.EngineClient` with a ``timeout`` per call).
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        client_factory: Callable[[str], _InfoClient] | None = None,
        *,
        interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.addresses = parse_engine_addresses(addresses)
        self.interval = interval
        self.timeout = timeout
        self._client_factory = client_factory or _default_client_factory(timeout)
        self._found: dict[str, EngineEndpoint] = {}  # by address
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_change: OnChange) -> None:
        """Register ``on_change`` and start polling the engines."""
        if self._thread is not None:
            raise RuntimeError("discovery already started")
        self._set_callback(on_change)
        self._thread = threading.Thread(target=self._run, name="discovery-static", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Ask every engine again now instead of at the next interval."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling (waits for a round in progress, bounded by the call timeout)."""
        self._stop.set()
        self._wake.set()
        _join(self._thread, timeout)

    def _ask(self, address: str) -> EngineEndpoint:
        client = self._client_factory(address)
        try:
            info = client.info()
        finally:
            client.close()
        return EngineEndpoint(
            str(info.engine_id), address, int(info.capacity), str(getattr(info, "version", ""))
        )

    def _round(self, pool: ThreadPoolExecutor) -> None:
        futures = {address: pool.submit(self._ask, address) for address in self.addresses}
        for address, fut in futures.items():
            try:
                self._found[address] = fut.result()
            except Exception as err:
                # Unreachable now; asked again next round. A known engine keeps its entry.
                _log.info("engine at %s did not answer Info: %s", address, err)
        by_id: dict[str, EngineEndpoint] = {}
        for address in self.addresses:  # in configuration order, so the first one wins
            endpoint = self._found.get(address)
            if endpoint is None:
                continue
            other = by_id.get(endpoint.engine_id)
            if other is not None:
                _log.error(
                    "engines at %s and %s both call themselves %r; using %s",
                    other.address, address, endpoint.engine_id, other.address,
                )  # fmt: skip
                continue
            by_id[endpoint.engine_id] = endpoint
        self._publish(by_id)

    def _run(self) -> None:
        workers = max(1, min(16, len(self.addresses)))
        with ThreadPoolExecutor(workers, thread_name_prefix="discovery-info") as pool:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self._round(pool)
                except Exception:
                    _log.exception("static discovery round failed")
                self._wake.wait(self.interval)


# --- self-registration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """The answer to one ``RegisterEngine`` call: whether it was accepted, how often the
    engine should register again (seconds), and why it was refused."""

    accepted: bool
    heartbeat_interval: float
    reason: str = ""


class SelfRegistration(_Publisher):
    """Engines that register themselves and keep heartbeating.

    The orchestrator's ``OrchestratorService.RegisterEngine`` handler calls :meth:`register`
    for each request and answers with the :class:`Registration` it returns (invalid arguments
    raise :class:`~dagengine.exceptions.DiscoveryError`, for ``INVALID_ARGUMENT``). An engine
    whose last registration is older than ``heartbeat_timeout`` seconds is dropped; engines
    are told to register every ``heartbeat_interval`` seconds (default: a third of the
    timeout, so two lost heartbeats do not drop an engine).

    An engine id already registered from another address is refused until that registration
    expires: two live engines sharing an id (a manifest that gives every pod the same
    ``ENGINE_ID``) would otherwise take turns being the engine of that id.
    """

    def __init__(
        self,
        heartbeat_timeout: float = 30.0,
        *,
        heartbeat_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_interval = (
            heartbeat_interval if heartbeat_interval is not None else heartbeat_timeout / 3
        )
        self._clock = clock
        self._reg_lock = threading.Lock()
        self._engines: dict[str, EngineEndpoint] = {}
        self._last_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_change: OnChange) -> None:
        """Register ``on_change`` (called at once if engines registered already) and start
        expiring silent engines."""
        if self._thread is not None:
            raise RuntimeError("discovery already started")
        self._set_callback(on_change)
        self._thread = threading.Thread(
            target=self._run, name="discovery-self-registration", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop expiring engines (registrations are still accepted and recorded)."""
        self._stop.set()
        _join(self._thread, timeout)

    def register(
        self, engine_id: str, address: str, capacity: int, version: str = ""
    ) -> Registration:
        """Record an engine's (re-)registration; see the class doc."""
        if not engine_id or not engine_id.strip():
            raise DiscoveryError("engine_id must not be empty")
        try:
            address = join_address(*parse_address(address))
        except DiscoveryError as err:
            raise DiscoveryError(str(err), engine_id=engine_id) from None
        if capacity < 1:
            raise DiscoveryError(
                f"engine {engine_id!r}: capacity must be at least 1, not {capacity}",
                engine_id=engine_id,
            )
        endpoint = EngineEndpoint(engine_id, address, int(capacity), version)
        with self._reg_lock:
            now = self._clock()
            self._expire_locked(now)
            current = self._engines.get(engine_id)
            if current is not None and current.address != address:
                reason = (
                    f"engine id {engine_id!r} is registered from {current.address}; "
                    f"{address} is refused until that registration expires"
                )
                _log.warning("%s", reason)
                return Registration(False, self.heartbeat_interval, reason)
            self._engines[engine_id] = endpoint
            self._last_seen[engine_id] = now
            snapshot = dict(self._engines)
        # Outside _reg_lock, so a slow on_change does not hold heartbeats up; _publish
        # orders the notifications.
        self._publish(snapshot)
        return Registration(True, self.heartbeat_interval)

    def deregister(self, engine_id: str) -> bool:
        """Drop an engine now (it is leaving); ``False`` if it was not registered."""
        with self._reg_lock:
            if self._engines.pop(engine_id, None) is None:
                return False
            self._last_seen.pop(engine_id, None)
            snapshot = dict(self._engines)
        self._publish(snapshot)
        return True

    def expire(self) -> list[str]:
        """Drop the engines silent for longer than the heartbeat timeout now; returns their
        ids. (The background thread calls this regularly.)"""
        with self._reg_lock:
            gone = self._expire_locked(self._clock())
            snapshot = dict(self._engines)
        if gone:
            self._publish(snapshot)
        return gone

    def _expire_locked(self, now: float) -> list[str]:
        gone = [
            engine_id
            for engine_id, seen in self._last_seen.items()
            if now - seen > self.heartbeat_timeout
        ]
        for engine_id in gone:
            _log.warning("engine %s stopped heartbeating; dropped", engine_id)
            del self._last_seen[engine_id]
            del self._engines[engine_id]
        return gone

    def _run(self) -> None:
        # A quarter of the timeout: an engine is dropped at most 1.25 timeouts after its
        # last heartbeat.
        period = max(self.heartbeat_timeout / 4, 0.01)
        while not self._stop.wait(period):
            try:
                self.expire()
            except Exception:
                _log.exception("expiring engines failed")


# --- Kubernetes -------------------------------------------------------------------------------


def _require_kubernetes() -> None:
    """The ``kubernetes`` client is an extra (``dagengine[kubernetes]``): raise
    :class:`ConfigError` naming it when the client is not installed."""
    try:
        importlib.import_module("kubernetes")
    except ImportError as err:
        raise ConfigError(
            "Kubernetes discovery needs the kubernetes package: "
            "pip install 'dagengine[kubernetes]'",
            variable="DISCOVERY",
            value="kubernetes",
        ) from err


def _pod_ready(pod: Any) -> bool:
    conditions = getattr(pod.status, "conditions", None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


class KubernetesDiscovery(_Publisher):
    """Engine Pods found through the Kubernetes API (the official ``kubernetes`` client).

    Lists the Pods of ``namespace`` matching ``label_selector`` (``K8S_NAMESPACE``,
    ``K8S_LABEL_SELECTOR``), then watches them from the list's ``resourceVersion``; when the
    API server answers 410 Gone (the version was compacted away) it lists again. A Pod counts
    as an engine when it is ``Running``, its ``Ready`` condition is ``True``, it has a Pod IP
    and it is not being deleted (a terminating engine is draining and takes no new runs).

    The engine id is the Pod's ``engine-id`` label, else its name; its port and capacity are
    the ``workflow-engine/port`` and ``workflow-engine/capacity`` annotations, else
    ``default_port`` and ``default_capacity``. A Pod whose annotation is not a valid number is
    skipped with an error logged, rather than dialled at a guessed port.

    The client is configured in-cluster (the Pod's service account) when ``in_cluster``, else
    from the kubeconfig, unless ``api`` (a ``CoreV1Api``) is given. The API calls made are
    exactly :data:`RBAC_RULES`. The client is the ``dagengine[kubernetes]`` extra; without it
    the constructor raises :class:`ConfigError` naming the extra.
    """

    def __init__(
        self,
        namespace: str = "default",
        label_selector: str = "app=workflow-engine",
        *,
        in_cluster: bool = True,
        port_annotation: str = "workflow-engine/port",
        capacity_annotation: str = "workflow-engine/capacity",
        default_port: int = 50051,
        default_capacity: int = 10,
        api: k8s_client.CoreV1Api | None = None,
        watch_timeout: int = 300,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        _require_kubernetes()
        super().__init__()
        self.namespace = namespace
        self.label_selector = label_selector
        self.port_annotation = port_annotation
        self.capacity_annotation = capacity_annotation
        self.default_port = default_port
        self.default_capacity = default_capacity
        # The server ends each watch after this long and we watch again from the last
        # version seen; the read timeout is longer, so a quiet watch is not a dead one.
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.api = api if api is not None else self._load_api(in_cluster)
        self._pods: dict[str, Any] = {}  # pod name -> V1Pod
        self._stop = threading.Event()
        self._watch_lock = threading.Lock()
        self._watch: k8s_watch.Watch | None = None
        self._thread: threading.Thread | None = None
        #: How many times the Pods were listed (1 + re-lists after 410 Gone or errors).
        self.lists = 0

    @staticmethod
    def _load_api(in_cluster: bool) -> k8s_client.CoreV1Api:
        from kubernetes import client, config

        try:
            # The config loaders are untyped in the client.
            if in_cluster:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config()  # type: ignore[no-untyped-call]
        except config.ConfigException as err:
            where = "in-cluster service account" if in_cluster else "kubeconfig"
            raise DiscoveryError(
                f"cannot load the Kubernetes {where} configuration: {err}"
            ) from None
        return client.CoreV1Api()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, on_change: OnChange) -> None:
        """Register ``on_change`` and start listing and watching."""
        if self._thread is not None:
            raise RuntimeError("discovery already started")
        self._set_callback(on_change)
        self._thread = threading.Thread(target=self._run, name="discovery-k8s", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; returns once the watch thread has ended (or ``timeout`` passed)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        thread = self._thread
        # Watch.stop() shuts the socket of the current response, but a watch that is just
        # being opened has no response yet, so keep stopping until the thread is gone.
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            with self._watch_lock:
                current = self._watch
            if current is not None:
                current.stop()  # type: ignore[no-untyped-call]
            thread.join(0.05)

    # --- pods -> endpoints -----------------------------------------------------------------

    def _annotation_int(self, pod: Any, key: str, default: int, low: int, high: int) -> int:
        annotations = pod.metadata.annotations or {}
        raw = annotations.get(key)
        if raw is None:
            return default
        try:
            value = int(str(raw).strip())
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError(f"annotation {key}={raw!r} is not a number in {low}..{high}")
        return value

    def endpoint_of(self, pod: Any) -> EngineEndpoint | None:
        """The engine a Pod is, or ``None`` if it is not one now (not Running and Ready, no
        IP, terminating, or a bad annotation)."""
        status = pod.status
        if status is None or status.phase != "Running" or not status.pod_ip:
            return None
        if pod.metadata.deletion_timestamp is not None or not _pod_ready(pod):
            return None
        try:
            port = self._annotation_int(pod, self.port_annotation, self.default_port, 1, 65535)
            capacity = self._annotation_int(
                pod, self.capacity_annotation, self.default_capacity, 1, 1_000_000
            )
        except ValueError as err:
            _log.error("pod %s skipped: %s", pod.metadata.name, err)
            return None
        labels = pod.metadata.labels or {}
        engine_id = str(labels.get("engine-id") or "").strip() or pod.metadata.name
        return EngineEndpoint(engine_id, join_address(status.pod_ip, port), capacity)

    def _publish_pods(self) -> None:
        by_id: dict[str, EngineEndpoint] = {}
        owner: dict[str, str] = {}
        for name in sorted(self._pods):  # by pod name, so a clash resolves the same way
            endpoint = self.endpoint_of(self._pods[name])
            if endpoint is None:
                continue
            if endpoint.engine_id in by_id:
                _log.error(
                    "pods %s and %s both have engine id %r; using %s",
                    owner[endpoint.engine_id], name, endpoint.engine_id,
                    owner[endpoint.engine_id],
                )  # fmt: skip
                continue
            by_id[endpoint.engine_id] = endpoint
            owner[endpoint.engine_id] = name
        self._publish(by_id)

    # --- list + watch ----------------------------------------------------------------------

    def _list(self) -> str:
        pods = self.api.list_namespaced_pod(
            self.namespace,
            label_selector=self.label_selector,
            _request_timeout=self.request_timeout,
        )
        self.lists += 1
        self._pods = {
            str(pod.metadata.name): pod for pod in pods.items or [] if pod.metadata is not None
        }
        self._publish_pods()
        if pods.metadata is None or not pods.metadata.resource_version:
            raise DiscoveryError("the pod list has no resourceVersion to watch from")
        return str(pods.metadata.resource_version)

    def _watch_once(self, resource_version: str) -> str:
        """One watch call from ``resource_version``; returns the last version seen. Raises
        ``ApiException`` (410 when the version is too old)."""
        from kubernetes import watch

        with self._watch_lock:
            if self._stop.is_set():
                return resource_version
            w = watch.Watch()  # type: ignore[no-untyped-call]
            self._watch = w
        try:
            stream = w.stream(  # type: ignore[no-untyped-call]
                self.api.list_namespaced_pod,
                self.namespace,
                label_selector=self.label_selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                # With a timeout, Watch.stream neither retries on its own nor swallows a
                # 410: the list-again logic stays here.
                timeout_seconds=self.watch_timeout,
                _request_timeout=(self.request_timeout, self.watch_timeout + 30),
            )
            for event in stream:
                if self._stop.is_set():
                    break
                kind = event["type"]
                raw = event["raw_object"]
                if kind == "BOOKMARK":
                    resource_version = str(raw["metadata"]["resourceVersion"])
                    continue
                pod = event["object"]
                resource_version = str(pod.metadata.resource_version)
                if kind == "DELETED":
                    self._pods.pop(pod.metadata.name, None)
                elif kind in ("ADDED", "MODIFIED"):
                    self._pods[pod.metadata.name] = pod
                else:
                    continue
                self._publish_pods()
        finally:
            with self._watch_lock:
                self._watch = None
        return resource_version

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        delay = self.backoff_initial
        while not self._stop.is_set():
            try:
                resource_version = self._list()
                delay = self.backoff_initial
                while not self._stop.is_set():
                    began = time.monotonic()
                    resource_version = self._watch_once(resource_version)
                    # A watch the server ends at once, again and again, must not turn into
                    # a busy loop against the API server.
                    if time.monotonic() - began < 1.0:
                        if self._stop.wait(delay):
                            break
                        delay = min(delay * 2, self.backoff_max)
                    else:
                        delay = self.backoff_initial
            except ApiException as err:
                if self._stop.is_set():
                    break
                if err.status == 410:
                    # Our version was compacted away: list again (right away) and resume.
                    _log.info("watch of pods: 410 Gone; listing again")
                    continue
                _log.warning("Kubernetes API error (%s): %s; retrying in %.1fs",
                             err.status, err.reason, delay)  # fmt: skip
            except Exception as err:
                if self._stop.is_set():
                    break
                _log.warning("listing/watching pods failed: %r; retrying in %.1fs", err, delay)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)


# --- health -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A health transition of one engine, passed to ``on_unhealthy``/``on_recovered``.

    - ``detect_seconds``: (unhealthy) time from the last successful check to the moment the
      engine was declared unhealthy — an upper bound of the time from its failure to its
      detection. For an engine never seen healthy, from when it was added.
    - ``since_first_failure``: (unhealthy) time from the first failed check of this streak.
    - ``down_seconds``: (recovered) how long it was out.
    """

    engine_id: str
    address: str
    healthy: bool
    consecutive_failures: int = 0
    detect_seconds: float | None = None
    since_first_failure: float | None = None
    down_seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for event data)."""
        return {
            "engine_id": self.engine_id,
            "address": self.address,
            "healthy": self.healthy,
            "consecutive_failures": self.consecutive_failures,
            "detect_seconds": self.detect_seconds,
            "since_first_failure": self.since_first_failure,
            "down_seconds": self.down_seconds,
            "error": self.error,
        }


@dataclass
class _Health:
    endpoint: EngineEndpoint
    added_at: float
    healthy: bool = True
    failures: int = 0
    last_ok: float | None = None
    first_failure: float | None = None
    unhealthy_since: float | None = None
    inflight: Future[bool] | None = field(default=None, repr=False)


HealthCallback = Callable[[EngineEndpoint, HealthReport], None]


def grpc_health_check(
    client_factory: Callable[[str], Any] | None = None, timeout: float = 2.0
) -> Callable[[EngineEndpoint], bool]:
    """A check for :class:`HealthChecker`: the engine's standard gRPC health status is
    ``SERVING``. A new client per check, so a recovered engine is seen at the next check
    instead of after the channel's reconnection backoff."""

    def make(address: str) -> Any:
        from dagengine.engine import EngineClient

        return EngineClient(address, timeout=timeout)

    factory = client_factory or make

    def check(endpoint: EngineEndpoint) -> bool:
        client = factory(endpoint.address)
        try:
            return bool(client.health() == "SERVING")
        finally:
            client.close()

    return check


class HealthChecker:
    """Checks every engine every ``interval`` seconds (``ENGINE_HEALTH_CHECK_INTERVAL``) and
    reports transitions: ``on_unhealthy(endpoint, report)`` after
    ``failures_before_unhealthy`` failed checks in a row (the orchestrator evicts the engine and
    re-dispatches its runs), ``on_recovered(endpoint, report)`` at the first passing check of
    an unhealthy engine (it is admitted again).

    ``check(endpoint)`` returns whether the engine is healthy; raising counts as a failure, and
    so does not answering within ``timeout`` seconds (default: half the interval, so an engine
    that dies is declared unhealthy within 1.5 intervals with one failure required). Checks
    run in parallel on a pool of ``max_workers`` threads; an engine whose previous check is
    still hanging is not checked again until it returns (each round it still hangs counts as
    a failure). Callbacks run on the checker's thread, one at a time.

    The engines to check are set with :meth:`set_endpoints` (e.g. from discovery's
    ``on_change``); a new engine starts healthy.
    """

    def __init__(
        self,
        interval: float,
        check: Callable[[EngineEndpoint], bool],
        on_unhealthy: HealthCallback,
        on_recovered: HealthCallback,
        failures_before_unhealthy: int = 1,
        *,
        timeout: float | None = None,
        max_workers: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if failures_before_unhealthy < 1:
            raise ValueError("failures_before_unhealthy must be at least 1")
        self.interval = interval
        self.timeout = timeout if timeout is not None else interval / 2
        self.failures_before_unhealthy = failures_before_unhealthy
        self._check = check
        self._on_unhealthy = on_unhealthy
        self._on_recovered = on_recovered
        self._clock = clock
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()  # one round at a time (thread or check_now)
        self._engines: dict[str, _Health] = {}
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="health-check")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Completed rounds (for tests and metrics).
        self.rounds = 0

    def set_endpoints(self, endpoints: Sequence[EngineEndpoint]) -> None:
        """Check exactly these engines from now on. A new engine (or one at a new address)
        starts healthy; engines no longer listed are forgotten without a callback."""
        now = self._clock()
        with self._lock:
            fresh: dict[str, _Health] = {}
            for endpoint in endpoints:
                current = self._engines.get(endpoint.engine_id)
                if current is not None and current.endpoint.address == endpoint.address:
                    current.endpoint = endpoint  # capacity/version may change
                    fresh[endpoint.engine_id] = current
                else:
                    fresh[endpoint.engine_id] = _Health(endpoint, added_at=now)
            self._engines = fresh

    def healthy(self) -> list[EngineEndpoint]:
        """The engines currently considered healthy."""
        with self._lock:
            return [h.endpoint for h in self._engines.values() if h.healthy]

    def is_healthy(self, engine_id: str) -> bool | None:
        """Whether engine ``engine_id`` is healthy; ``None`` if it is not checked."""
        with self._lock:
            state = self._engines.get(engine_id)
            return None if state is None else state.healthy

    def start(self) -> None:
        """Start checking in a background thread (first round right away)."""
        if self._thread is not None:
            raise RuntimeError("health checker already started")
        self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop checking; checks still hanging are abandoned."""
        self._stop.set()
        _join(self._thread, timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        next_round = self._clock()
        while not self._stop.is_set():
            try:
                self.check_now()
            except Exception:
                _log.exception("health check round failed")
            # A fixed schedule: slow checks do not push later rounds back; a round that
            # overran the interval is followed by the next at once.
            next_round += self.interval
            now = self._clock()
            if next_round < now:
                next_round = now
            if self._stop.wait(next_round - now):
                break

    def _run_check(self, endpoint: EngineEndpoint) -> bool:
        return bool(self._check(endpoint))

    def check_now(self) -> None:
        """Run one round of checks now and report its transitions (blocks up to
        ``timeout``)."""
        with self._round_lock:
            with self._lock:
                targets = list(self._engines.values())
            started = self._clock()
            pending: list[tuple[_Health, Future[bool] | None]] = []
            for state in targets:
                if state.inflight is not None and not state.inflight.done():
                    pending.append((state, None))  # still hanging from an earlier round
                    continue
                try:
                    state.inflight = self._pool.submit(self._run_check, state.endpoint)
                except RuntimeError:  # pool shut down: we are stopping
                    return
                pending.append((state, state.inflight))
            deadline = started + self.timeout
            outcomes: list[tuple[_Health, bool, str | None]] = []
            for state, fut in pending:
                if fut is None:
                    outcomes.append((state, False, "previous check still running"))
                    continue
                try:
                    ok = fut.result(timeout=max(0.0, deadline - self._clock()))
                    outcomes.append((state, ok, None if ok else "check failed"))
                except FutureTimeout:
                    outcomes.append((state, False, f"no answer within {self.timeout:g}s"))
                except Exception as err:
                    outcomes.append((state, False, f"{type(err).__name__}: {err}"))
            now = self._clock()
            calls: list[tuple[HealthCallback, EngineEndpoint, HealthReport]] = []
            with self._lock:
                for state, ok, error in outcomes:
                    if self._engines.get(state.endpoint.engine_id) is not state:
                        continue  # removed or replaced while we checked
                    report = self._transition(state, ok, error, now)
                    if report is not None:
                        callback = self._on_recovered if ok else self._on_unhealthy
                        calls.append((callback, state.endpoint, report))
            self.rounds += 1
            for callback, endpoint, report in calls:
                try:
                    callback(endpoint, report)
                except Exception:
                    _log.exception("health callback for %s failed", endpoint.engine_id)

    def _transition(
        self, state: _Health, ok: bool, error: str | None, now: float
    ) -> HealthReport | None:
        endpoint = state.endpoint
        if ok:
            state.last_ok = now
            state.failures = 0
            state.first_failure = None
            if state.healthy:
                return None
            down = now - state.unhealthy_since if state.unhealthy_since is not None else None
            state.healthy = True
            state.unhealthy_since = None
            return HealthReport(endpoint.engine_id, endpoint.address, True, down_seconds=down)
        state.failures += 1
        if state.first_failure is None:
            state.first_failure = now
        if not state.healthy or state.failures < self.failures_before_unhealthy:
            return None
        state.healthy = False
        state.unhealthy_since = now
        since_ok = now - (state.last_ok if state.last_ok is not None else state.added_at)
        return HealthReport(
            endpoint.engine_id,
            endpoint.address,
            False,
            consecutive_failures=state.failures,
            detect_seconds=since_ok,
            since_first_failure=now - state.first_failure,
            error=error,
        )

"""Engine Pods found through the Kubernetes API: :class:`KubernetesDiscovery`, and the API
calls it makes (:data:`RBAC_RULES`). The ``kubernetes`` client is the ``dagengine[kubernetes]``
extra, imported only when this discovery is used."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from dagengine.engine.address import join_address
from dagengine.exceptions import ConfigError, DiscoveryError
from dagengine.orchestrator.discovery._base import EngineEndpoint, OnChange, Publisher

if TYPE_CHECKING:
    from kubernetes import client as k8s_client
    from kubernetes import watch as k8s_watch

_log = logging.getLogger("dagengine.orchestrator.discovery")

#: Every Kubernetes API call :class:`KubernetesDiscovery` makes, as Role rules: it lists and
#: watches Pods in its namespace and nothing else. The deployment's Role is checked against
#: this (``deploy/`` tests), so change both together.
RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
]


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


class KubernetesDiscovery(Publisher):
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

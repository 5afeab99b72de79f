"""A protocol-faithful stand-in of the Kubernetes API server, for Pods only.

This is **not** Kubernetes: it is a small HTTP server (``http.server`` in a thread) that
speaks the part of the API server's protocol that engine discovery uses, so the real
``kubernetes`` client can be pointed at it (``Configuration(host=standin.url)``):

- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=...`` → a ``PodList`` whose
  ``metadata.resourceVersion`` is the current version;
- the same with ``watch=true&resourceVersion=N`` → a chunked stream of JSON lines
  ``{"type": "ADDED|MODIFIED|DELETED|ERROR", "object": ...}`` with every change after ``N``
  (without ``resourceVersion``, or ``0``: synthetic ``ADDED`` events for the current Pods
  first, as the API server does); ``timeoutSeconds`` ends the stream;
- the label selector (equality ``k=v``, ``k==v``, ``k!=v`` and existence ``k``, ``!k``) is
  applied to watch events the way the API server applies it: a Pod that starts matching
  arrives as ``ADDED``, one that stops matching as ``DELETED``;
- a watch from a version older than the compacted history gets HTTP 200 and one ``ERROR``
  event carrying a ``Status`` with ``code: 410`` (reason ``Expired``), then the stream ends;
- every object change bumps one global ``resourceVersion`` (decimal strings, as etcd's).

The tests drive Pods through their life (``Pending`` → ``Running`` → ``Succeeded``/``Failed``,
the ``Ready`` condition, graceful deletion) with the methods below, and can compact the
history (:meth:`compact`) and cut every open watch (:meth:`drop_watches`, as an API server
restart does). Every request is recorded as ``(verb, resource)`` for the RBAC check.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Pod = dict[str, Any]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class SelectorError(ValueError):
    """A label selector this stand-in does not support (set-based) or cannot parse."""


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Parse an equality-based label selector into ``(op, key, value)`` terms."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        if " in " in term or " notin " in term or "(" in term:
            raise SelectorError(f"set-based selector {term!r} is not supported by the stand-in")
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in term:
            key, value = term.split("==", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("!exists", term[1:].strip(), None))
        else:
            terms.append(("exists", term, None))
    return terms


def selector_matches(terms: list[tuple[str, str, str | None]], labels: dict[str, str]) -> bool:
    """Whether labels satisfy every term (as the API server evaluates it)."""
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


@dataclass
class _Change:
    rv: int
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    old: Pod | None
    new: Pod


class KubeApiStandIn:
    """The stand-in server; see the module doc. Use as a context manager or
    :meth:`start`/:meth:`stop`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1000
        self._pods: dict[tuple[str, str], Pod] = {}
        self._history: list[_Change] = []
        self._compacted = 0  # changes with rv <= this are gone from the history
        self._generation = 0  # bumped by drop_watches(): open watches end
        self._held = False  # hold_watches(): new watch requests wait before being served
        self.held_watches = 0
        self.gone_sent = 0  # 410 ERROR events sent
        self._stopping = False
        self.requests: list[tuple[str, str, str]] = []  # (verb, resource, namespace)
        self.open_watches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- server -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> KubeApiStandIn:
        standin = self

        class Handler(_Handler):
            api = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="k8s-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()  # returns within serve_forever's poll interval
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state changes ----------------------------------------------------------------------

    def _commit(self, namespace: str, kind: str, old: Pod | None, new: Pod) -> Pod:
        """Under the lock: give ``new`` the next resourceVersion and record the change."""
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(_Change(self._rv, namespace, kind, old, copy.deepcopy(new)))
        self._cond.notify_all()
        return copy.deepcopy(new)

    def create_pod(
        self,
        name: str,
        *,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Pod:
        """A new Pod, ``Pending`` and not Ready, without an IP (as the scheduler leaves it)."""
        pod: Pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
            },
            "spec": {"containers": [{"name": "engine", "image": "dagengine:standin"}]},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "Ready", "status": "False"}],
            },
        }
        with self._cond:
            if (namespace, name) in self._pods:
                raise ValueError(f"pod {namespace}/{name} exists")
            self._pods[(namespace, name)] = pod
            return self._commit(namespace, "ADDED", None, pod)

    def _modify(self, name: str, namespace: str, change: Any) -> Pod:
        with self._cond:
            pod = self._pods[(namespace, name)]
            old = copy.deepcopy(pod)
            change(pod)
            return self._commit(namespace, "MODIFIED", old, pod)

    def set_phase(
        self, name: str, phase: str, *, namespace: str = "default", pod_ip: str | None = None
    ) -> Pod:
        """Move a Pod to ``phase``; ``Running`` gets ``pod_ip``; leaving Running drops Ready."""

        def change(pod: Pod) -> None:
            pod["status"]["phase"] = phase
            if pod_ip is not None:
                pod["status"]["podIP"] = pod_ip
                pod["status"]["podIPs"] = [{"ip": pod_ip}]
            if phase != "Running":
                self._set_ready(pod, False)

        return self._modify(name, namespace, change)

    @staticmethod
    def _set_ready(pod: Pod, ready: bool) -> None:
        conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != "Ready"]
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
        pod["status"]["conditions"] = conditions

    def set_ready(self, name: str, ready: bool, *, namespace: str = "default") -> Pod:
        """Set the Pod's ``Ready`` condition (the kubelet's readiness probe result)."""
        return self._modify(name, namespace, lambda pod: self._set_ready(pod, ready))

    def run_pod(
        self,
        name: str,
        pod_ip: str,
        *,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Pod:
        """Create a Pod and take it through Pending → Running → Ready (three changes)."""
        self.create_pod(name, namespace=namespace, labels=labels, annotations=annotations)
        self.set_phase(name, "Running", namespace=namespace, pod_ip=pod_ip)
        return self.set_ready(name, True, namespace=namespace)

    def set_metadata(
        self,
        name: str,
        *,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Pod:
        """Replace the Pod's labels and/or annotations."""

        def change(pod: Pod) -> None:
            if labels is not None:
                pod["metadata"]["labels"] = dict(labels)
            if annotations is not None:
                pod["metadata"]["annotations"] = dict(annotations)

        return self._modify(name, namespace, change)

    def begin_delete(self, name: str, *, namespace: str = "default") -> Pod:
        """Graceful deletion's first step: ``deletionTimestamp`` is set (the Pod terminates)."""

        def change(pod: Pod) -> None:
            pod["metadata"]["deletionTimestamp"] = _now()
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

        return self._modify(name, namespace, change)

    def delete_pod(self, name: str, *, namespace: str = "default") -> Pod:
        """The Pod is gone: a ``DELETED`` event with its last state."""
        with self._cond:
            pod = self._pods.pop((namespace, name))
            old = copy.deepcopy(pod)
            return self._commit(namespace, "DELETED", old, pod)

    def compact(self) -> int:
        """Forget the change history (as etcd compaction does): a watch from any version up
        to now gets 410 Gone. Returns the compacted version."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            return self._rv

    def hold_watches(self, held: bool) -> None:
        """While held, new watch requests wait (as behind a slow API server) before they are
        served; releasing serves them against the state at that moment. Lets a test change
        things, compact, and only then let a resuming watch in, deterministically."""
        with self._cond:
            self._held = held
            self._cond.notify_all()

    def wait_for_held(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` watch requests are waiting behind :meth:`hold_watches`."""
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while self.held_watches < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart does)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def served(self) -> set[tuple[str, str]]:
        """The ``(verb, resource)`` pairs requested so far."""
        with self._cond:
            return {(verb, resource) for verb, resource, _ in self.requests}

    def count(self, verb: str) -> int:
        """How many requests of ``verb`` (``list``/``watch``) were served."""
        with self._cond:
            return sum(1 for v, _, _ in self.requests if v == verb)

    # --- request handling (called from handler threads) ---------------------------------------

    def _list(self, namespace: str, terms: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        with self._cond:
            self.requests.append(("list", "pods", namespace))
            items = [
                copy.deepcopy(pod)
                for (ns, _), pod in sorted(self._pods.items())
                if ns == namespace and selector_matches(terms, pod["metadata"]["labels"])
            ]
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _watch(
        self,
        namespace: str,
        terms: list[tuple[str, str, str | None]],
        resource_version: str | None,
        timeout: float | None,
        send: Any,
    ) -> None:
        """Stream watch events through ``send(event_dict)`` until the timeout, a dropped
        watch, or the server stopping."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout

        def matches(pod: Pod | None) -> bool:
            return pod is not None and selector_matches(terms, pod["metadata"]["labels"])

        with self._cond:
            self.requests.append(("watch", "pods", namespace))
            if self._held:
                self.held_watches += 1
                self._cond.notify_all()
                while self._held and not self._stopping:
                    self._cond.wait()
                self.held_watches -= 1
            generation = self._generation
            self.open_watches += 1
            self._cond.notify_all()  # wait_for_watchers()
        try:
            with self._cond:
                if resource_version in (None, "", "0"):
                    # "Any version": start with the current state as synthetic ADDED events.
                    position = self._rv
                    initial = [
                        {"type": "ADDED", "object": copy.deepcopy(pod)}
                        for (ns, _), pod in sorted(self._pods.items())
                        if ns == namespace and matches(pod)
                    ]
                else:
                    position = int(resource_version)
                    initial = []
                    if position < self._compacted:
                        initial = [
                            {
                                "type": "ERROR",
                                "object": _status(
                                    410,
                                    "Expired",
                                    f"too old resource version: {position} ({self._compacted})",
                                ),
                            }
                        ]
                        self.gone_sent += 1
                        position = -1  # end after the error
            for event in initial:
                send(event)
            if position < 0:
                return
            while True:
                with self._cond:
                    while True:
                        if self._stopping or self._generation != generation:
                            return
                        pending = [c for c in self._history if c.rv > position]
                        if pending:
                            break
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return
                        self._cond.wait(remaining)
                for change in pending:
                    position = change.rv
                    if change.namespace != namespace:
                        continue
                    was, now = matches(change.old), matches(change.new)
                    if change.type == "DELETED":
                        kind = "DELETED" if was else None
                    elif was and now:
                        kind = "MODIFIED"
                    elif now:
                        kind = "ADDED"  # started matching the selector
                    elif was:
                        kind = "DELETED"  # stopped matching the selector
                    else:
                        kind = None
                    if kind is not None:
                        send({"type": kind, "object": copy.deepcopy(change.new)})
        finally:
            with self._cond:
                self.open_watches -= 1
                self._cond.notify_all()

    def wait_for_watchers(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` watch streams are open."""
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while self.open_watches < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiStandIn
    protocol_version = "HTTP/1.1"  # chunked transfer encoding for watch streams

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest captures enough

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [s for s in parts.path.split("/") if s]
        # /api/v1/namespaces/{ns}/pods
        if (
            len(segments) != 5
            or segments[:3] != ["api", "v1", "namespaces"]
            or (segments[4] != "pods")
        ):
            self._json(404, _status(404, "NotFound", f"the server could not find {parts.path}"))
            return
        namespace = segments[3]
        try:
            terms = parse_selector(query.get("labelSelector", ""))
        except SelectorError as err:
            self._json(400, _status(400, "BadRequest", str(err)))
            return
        if query.get("watch") not in ("true", "1"):
            self._json(200, self.api._list(namespace, terms))
            return
        timeout = float(query["timeoutSeconds"]) if "timeoutSeconds" in query else None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: dict[str, Any]) -> None:
            line = (json.dumps(event) + "\n").encode()
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        try:
            self.api._watch(namespace, terms, query.get("resourceVersion"), timeout, send)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (Watch.stop())
        self.close_connection = True

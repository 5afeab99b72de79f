"""The monitor: filtered, resumable event subscriptions, and engines' ``Watch`` streams
republished as orchestrator events.

::

    monitor = Monitor(orch)
    with monitor.subscribe(workflow_id="etl", min_severity="warning") as sub:
        for event in sub:
            print(event.seq, event.severity, event.type, event.run_id)

A subscription resumes from a cursor (``after=sub.cursor``): the events after it come from the
store, then it continues live, without a gap or a duplicate at the boundary. A slow
subscriber never slows runs down: see :class:`~dagengine.orchestrator.events.Subscription`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dagengine.exceptions import DagEngineError
from dagengine.orchestrator.events import (
    Event,
    EventBus,
    EventFilter,
    EventType,
    Severity,
    Subscription,
)

__all__ = ["EngineWatchClient", "Monitor", "Subscription"]

_log = logging.getLogger(__name__)

# Engine Watch event kinds republished on the bus. Run-level kinds (run_started,
# run_finished) are not: the orchestrator owns the life of a run and publishes run.* itself,
# under its own run ids and with the run's workflow; republishing them would duplicate it.
_NODE_KINDS: dict[str, EventType] = {
    "node_started": EventType.NODE_STARTED,
    "node_succeeded": EventType.NODE_SUCCEEDED,
    "node_failed": EventType.NODE_FAILED,
    "node_retrying": EventType.NODE_RETRYING,
    "node_skipped": EventType.NODE_SKIPPED,
    "node_cancelled": EventType.NODE_CANCELLED,
    "node_log": EventType.NODE_LOG,
}


class _WatchStream(Protocol):
    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class EngineWatchClient(Protocol):
    """What :meth:`Monitor.attach_to_engine` needs of an engine client
    (:class:`dagengine.engine.EngineClient`)."""

    def watch(self) -> _WatchStream: ...

    def close(self) -> None: ...


class EventSource(Protocol):
    """Anything that carries the event bus (the orchestrator does)."""

    @property
    def events(self) -> EventBus: ...


def _default_client_factory(address: str) -> EngineWatchClient:
    from dagengine.engine import EngineClient  # grpc is imported only when engines are used

    return EngineClient(address)


@dataclass
class _Attachment:
    engine_id: str
    address: str | None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stream: _WatchStream | None = None
    thread: threading.Thread | None = None
    connections: int = 0  # Watch calls made (reconnects + 1)
    received: int = 0  # engine events seen
    engine_missed: int = 0  # events the engine says this watcher lost


class Monitor:
    """Subscriptions to the orchestrator's events, and engine ``Watch`` followers.

    ``source`` is the orchestrator (anything with an ``events`` attribute holding the
    :class:`~dagengine.orchestrator.events.EventBus`) or an ``EventBus`` itself.

    For :meth:`attach_to_engine`: ``client_factory(address)`` makes the engine client
    (default: a plain :class:`dagengine.engine.EngineClient`; pass one that sets TLS if the
    engines use it). ``engine_address(engine_id)`` says where a registered engine is, or
    ``None`` once it is no longer registered, which ends the following; ``workflow_of_run(
    run_id)`` names the workflow of a run, so engine events can be filtered by workflow. When
    not given, they are taken from ``source`` if it has attributes of those names.
    ``backoff_initial``/``backoff_max`` bound the reconnection delay (seconds, doubling).
    """

    def __init__(
        self,
        source: EventBus | EventSource,
        *,
        client_factory: Callable[[str], EngineWatchClient] | None = None,
        engine_address: Callable[[str], str | None] | None = None,
        workflow_of_run: Callable[[str], str | None] | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self.bus: EventBus = source if isinstance(source, EventBus) else source.events
        self._client_factory = client_factory or _default_client_factory
        self._engine_address = engine_address or getattr(source, "engine_address", None)
        self._workflow_of_run = workflow_of_run or getattr(source, "workflow_of_run", None)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._attach_lock = threading.RLock()  # reentrant: attach may detach first
        # Weak: a subscription its reader closed is dropped by the bus and then forgotten here.
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._attached: dict[str, _Attachment] = {}
        self._closed = False

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Iterable[EventType | str] | EventType | str | None = None,
        min_severity: Severity | str | None = None,
        after: int | None = None,
        buffer: int = 1000,
    ) -> Subscription:
        """Events matching every given filter, as a sync and async iterator.

        ``types`` takes type names, :class:`EventType` members or ``"node.*"`` patterns;
        ``min_severity`` one of ``info``, ``warning``, ``error``, ``critical``. With ``after``
        (a cursor: an event's ``seq``), the matching events after it are replayed from the
        store first. ``buffer`` bounds the live events held for this subscriber.
        """
        flt = EventFilter.create(workflow_id, run_id, types, min_severity)
        with self._lock:
            if self._closed:
                raise RuntimeError("the monitor is closed")
            sub = self.bus.subscribe(flt, after=after, buffer=buffer)
            self._subs.add(sub)
        return sub

    def history(
        self,
        after: int = 0,
        *,
        workflow_id: str | None = None,
        run_id: str | None = None,
        types: Iterable[EventType | str] | EventType | str | None = None,
        min_severity: Severity | str | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Stored events after ``after`` that match, oldest first, at most ``limit``."""
        flt = EventFilter.create(workflow_id, run_id, types, min_severity)
        return flt.query(after, limit, self.bus.store)

    # --- engine Watch streams --------------------------------------------------------------

    def attach_to_engine(self, engine_id: str, address: str | None = None) -> None:
        """Follow engine ``engine_id``'s ``Watch`` stream in a background thread and republish
        its node events as ``node.*`` events with ``engine_id`` set (run-level engine events
        are left to the orchestrator, which publishes ``run.*``).

        ``address`` defaults to ``engine_address(engine_id)``. The follower reconnects with
        backoff when the stream breaks, for as long as the engine is registered (when
        ``engine_address`` is known it is asked again before every reconnection and ``None``
        ends the following), until :meth:`detach` or :meth:`close`. Attaching an engine that is
        already followed does nothing, unless another ``address`` is given: then it restarts.
        """
        if address is None and self._engine_address is None:
            raise ValueError(f"no address for engine {engine_id!r} and no engine_address lookup")
        # One attach/detach at a time, so two attaches of one engine cannot both start a
        # follower; _lock alone is not held across the (joining) detach.
        with self._attach_lock:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the monitor is closed")
                current = self._attached.get(engine_id)
            if current is not None:
                if address is None or current.address == address:
                    return
                self.detach(engine_id)
            att = _Attachment(engine_id, address)
            att.thread = threading.Thread(
                target=self._follow, args=(att,), name=f"monitor-watch-{engine_id}", daemon=True
            )
            with self._lock:
                if self._closed:
                    raise RuntimeError("the monitor is closed")
                self._attached[engine_id] = att
            att.thread.start()

    def detach(self, engine_id: str, timeout: float | None = 5.0) -> bool:
        """Stop following ``engine_id``; ``False`` if it was not followed. Waits up to
        ``timeout`` seconds for the follower thread to end."""
        with self._attach_lock, self._lock:
            att = self._attached.pop(engine_id, None)
        if att is None:
            return False
        self._stop_attachment(att, timeout)
        return True

    def attached(self) -> dict[str, dict[str, Any]]:
        """The engines followed: per engine id, its address, how many ``Watch`` connections
        were made, how many engine events were received and how many the engine said this
        follower missed."""
        with self._lock:
            atts = list(self._attached.values())
        return {
            a.engine_id: {
                "address": a.address,
                "connections": a.connections,
                "received": a.received,
                "engine_missed": a.engine_missed,
            }
            for a in atts
        }

    @staticmethod
    def _stop_attachment(att: _Attachment, timeout: float | None) -> None:
        with att.lock:
            att.stop.set()
            stream = att.stream
        if stream is not None:
            try:
                stream.close()  # unblocks the follower's read
            except Exception:
                _log.debug("closing the watch stream of %s failed", att.engine_id, exc_info=True)
        if att.thread is not None and att.thread is not threading.current_thread():
            att.thread.join(timeout)

    def _resolve(self, att: _Attachment) -> str | None:
        if self._engine_address is None:
            return att.address
        try:
            found = self._engine_address(att.engine_id)
        except Exception:
            _log.exception("engine_address(%r) failed", att.engine_id)
            return att.address
        return found if found is not None else None

    def _follow(self, att: _Attachment) -> None:
        delay = self._backoff_initial
        while not att.stop.is_set():
            address = att.address if att.connections == 0 and att.address else self._resolve(att)
            att.address = address
            if address is None:
                _log.info("engine %s is no longer registered; monitor stops following it",
                          att.engine_id)  # fmt: skip
                break
            client: EngineWatchClient | None = None
            try:
                client = self._client_factory(address)
                with att.lock:
                    # Checked under the lock that _stop_attachment takes, so a detach either
                    # sees this stream (and closes it) or we see its stop flag here.
                    if att.stop.is_set():
                        break
                    att.stream = client.watch()
                    att.connections += 1
                for item in att.stream:
                    if att.stop.is_set():
                        break
                    delay = self._backoff_initial  # events flow: the connection is good
                    self._republish(att, item)
            except DagEngineError as err:
                _log.info("watch stream of engine %s broke: %s", att.engine_id, err)
            except Exception:
                _log.exception("following engine %s failed", att.engine_id)
            finally:
                with att.lock:
                    stream, att.stream = att.stream, None
                for closable in (stream, client):
                    if closable is not None:
                        try:
                            closable.close()
                        except Exception:
                            _log.debug("close failed", exc_info=True)
            if att.stop.wait(delay):
                break
            delay = min(delay * 2, self._backoff_max)

    def _republish(self, att: _Attachment, item: Any) -> None:
        """Publish one engine Watch event (an :class:`dagengine.engine.EngineEvent`) as a
        ``node.*`` event."""
        att.received += 1
        missed = int(getattr(item, "missed", 0) or 0)
        att.engine_missed += missed
        event = getattr(item, "event", item)
        kind = _NODE_KINDS.get(str(getattr(event, "kind", "")))
        if kind is None:
            return
        run_id: str | None = getattr(item, "run_id", None) or None
        data: dict[str, Any] = {
            "attempt": getattr(item, "attempt", None),
            "node_attempt": getattr(event, "attempt", None),
            "engine_seq": getattr(event, "seq", None),
        }
        detail = getattr(event, "detail", None) or {}
        # Node outputs are left out: they can be large, and the store keeps them with the run.
        data.update({k: v for k, v in detail.items() if k != "output"})
        if missed:
            data["engine_missed"] = missed
        workflow_id = None
        if run_id is not None and self._workflow_of_run is not None:
            try:
                workflow_id = self._workflow_of_run(run_id)
            except Exception:
                _log.exception("workflow_of_run(%r) failed", run_id)
        when = getattr(event, "time", None)
        self.bus.publish(
            kind,
            workflow_id=workflow_id,
            run_id=run_id,
            node_id=getattr(event, "node_id", None),
            engine_id=att.engine_id,  # the id the orchestrator knows the engine by
            data=data,
            time=float(when) if when else None,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop following every engine and close every subscription made here."""
        with self._lock:
            self._closed = True
            atts = list(self._attached.values())
            self._attached.clear()
            subs = list(self._subs)
            self._subs.clear()
        for att in atts:
            self._stop_attachment(att, timeout)
        for sub in subs:
            sub.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

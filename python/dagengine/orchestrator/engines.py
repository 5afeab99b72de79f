"""The engines an orchestrator sends runs to (:class:`EngineSet`): each one's backend, the
runs it holds, its health, and the choice of an engine with room for a run.

It shares the orchestrator's lock and wakes its dispatcher (``wakeup``) when room may have
appeared; losing an engine hangs up on its runs, whose attempts then end as lost (see
:mod:`.lifecycle`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagengine.engine import TLSConfig
from dagengine.orchestrator.backends import Backend, Engine, LocalBackend, LoopThread, RemoteBackend
from dagengine.orchestrator.balancer import EngineLoad, LoadBalancer
from dagengine.orchestrator.events import EventBus

__all__ = ["EngineSet", "EngineSlot"]

log = logging.getLogger("dagengine.orchestrator")


@dataclass
class EngineSlot:
    """An engine as the orchestrator counts it."""

    backend: Backend
    active: int = 0
    healthy: bool = True
    #: ``time.monotonic()`` when it was last found unhealthy.
    unhealthy_at: float = 0.0
    runs: set[str] = field(default_factory=set)
    #: The engine refused a run as full although we counted room (runs we no longer track,
    #: e.g. from before it re-registered): treated as full until then (``time.monotonic()``).
    full_until: float = 0.0

    @property
    def engine_id(self) -> str:
        return self.backend.engine_id


class EngineSet:
    """The registered engines, by id (:attr:`slots`)."""

    def __init__(
        self,
        lock: threading.RLock,
        wakeup: threading.Condition,
        events: EventBus,
        balancer: LoadBalancer,
        loop: LoopThread,
        tls: TLSConfig | None,
    ) -> None:
        self._lock = lock
        self._wakeup = wakeup
        self.events = events
        self.balancer = balancer
        self._loop = loop
        self._tls = tls
        self.slots: dict[str, EngineSlot] = {}

    def register(
        self, engine_id: str, engine: Engine | str, *, capacity: int | None = None
    ) -> None:
        """Add an engine: an in-process :class:`Engine`, or the ``host:port`` of an engine
        process (``capacity`` defaults to what the engine reports). Registering an id again
        replaces its address/capacity (an engine that restarted)."""
        if isinstance(engine, Engine):
            backend: Backend = LocalBackend(engine_id, engine)
        elif isinstance(engine, str):
            if capacity is None:
                from dagengine.engine import EngineClient

                with EngineClient(engine, tls=self._tls, timeout=5.0) as client:
                    capacity = client.info().capacity
            backend = RemoteBackend(engine_id, engine, capacity, self._loop, tls=self._tls)
        else:
            raise TypeError(
                f"engine must be an Engine or a 'host:port' str, got {type(engine).__name__}"
            )
        replaced: EngineSlot | None = None
        with self._lock:
            old = self.slots.get(engine_id)
            if (
                old is not None
                and isinstance(old.backend, RemoteBackend)
                and isinstance(backend, RemoteBackend)
                and old.backend.address == backend.address
            ):
                old.backend.capacity = backend.capacity
                backend.close()
                old.healthy = True
            else:
                # A fresh slot: the old one's runs keep their own slot (their workers
                # release it), so its counts must not be carried over.
                self.slots[engine_id] = EngineSlot(backend)
                self.balancer.add(engine_id)
                replaced = old
            self._wakeup.notify_all()
        if replaced is not None and isinstance(replaced.backend, RemoteBackend):
            # The engine moved (a new process): the runs on the old address are lost.
            self.lose(replaced, reason=f"re-registered at {engine}")
            replaced.backend.close()
        self.events.publish(
            "engine.joined", engine_id=engine_id, data={"capacity": backend.capacity}
        )

    def unregister(self, engine_id: str) -> None:
        """Remove an engine; its runs are re-dispatched."""
        with self._lock:
            slot = self.slots.pop(engine_id, None)
            if slot is None:
                return
            self.balancer.remove(engine_id)
        self.lose(slot, reason="removed")
        slot.backend.close()
        self.events.publish("engine.left", engine_id=engine_id)

    def mark_unhealthy(
        self,
        engine_id: str,
        reason: str = "health check failed",
        data: Mapping[str, Any] | None = None,
        *,
        draining: bool = False,
    ) -> None:
        """Stop sending runs to an engine and re-dispatch the runs it has — unless it is
        ``draining``: it finishes its runs (or reports them drained, and they are
        re-dispatched then), it just takes no new ones."""
        with self._lock:
            slot = self.slots.get(engine_id)
            if slot is None or not slot.healthy:
                return
            slot.healthy = False
            slot.unhealthy_at = time.monotonic()
        self.events.publish(
            "engine.unhealthy",
            engine_id=engine_id,
            data={"reason": reason, "draining": draining, **(data or {})},
        )
        if not draining:
            self.lose(slot, reason=reason)

    def mark_healthy(
        self,
        engine_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        checked_at: float | None = None,
    ) -> None:
        """Send runs to an engine again. ``checked_at`` (``time.monotonic()``) is when the
        check that found it healthy started: a check older than the engine's last failure
        says nothing."""
        with self._lock:
            slot = self.slots.get(engine_id)
            if slot is None or slot.healthy:
                return
            if checked_at is not None and checked_at < slot.unhealthy_at:
                return
            slot.healthy = True
            self._wakeup.notify_all()
        self.events.publish("engine.recovered", engine_id=engine_id, data=dict(data or {}))

    def loads(self) -> dict[str, EngineLoad]:
        """Each engine's capacity and active runs (healthy engines only)."""
        with self._lock:
            return {
                eid: EngineLoad(eid, slot.backend.capacity, slot.active)
                for eid, slot in self.slots.items()
                if slot.healthy
            }

    def address(self, engine_id: str) -> str | None:
        """The ``host:port`` of a registered remote engine (``None`` for unknown or in-process
        engines); :meth:`Monitor.attach_to_engine` follows it."""
        with self._lock:
            slot = self.slots.get(engine_id)
        if slot is not None and isinstance(slot.backend, RemoteBackend):
            return slot.backend.address
        return None

    def lose(self, slot: EngineSlot, *, reason: str) -> None:
        # Hang up on the engine's runs: each worker then sees EngineUnavailable and
        # re-dispatches its run.
        with self._lock:
            run_ids = list(slot.runs)
        for run_id in run_ids:
            slot.backend.abandon(run_id)
        if run_ids:
            log.warning(
                "engine %s lost (%s); re-dispatching %d runs", slot.engine_id, reason, len(run_ids)
            )

    def choose(self, key: str, *, depth: int, local_only: bool) -> EngineSlot | None:
        """The engine with room for a run (``local_only``: a workflow without a portable
        spec, which only in-process engines run), by the balancer. Called with the lock
        held."""
        # A sub-workflow run is admitted beyond capacity: its parent holds a slot while it
        # waits, and a cluster full of waiting parents would otherwise deadlock. The depth
        # limit bounds the overflow; engines admit such runs too (RunRequest.depth > 0).
        now = time.monotonic()

        def capacity(slot: EngineSlot) -> int:
            if depth > 0:
                return slot.active + 1
            return slot.active if slot.full_until > now else slot.backend.capacity

        loads = {
            eid: EngineLoad(eid, capacity(slot), slot.active)
            for eid, slot in self.slots.items()
            if slot.healthy and (not local_only or isinstance(slot.backend, LocalBackend))
        }
        engine_id = self.balancer.choose(key, loads)
        return self.slots.get(engine_id) if engine_id is not None else None

    def engine_lost(self, slot: EngineSlot, reason: str) -> None:
        """A remote engine lost a run: presumed dead until a health check says otherwise."""
        with self._lock:
            current = self.slots.get(slot.engine_id) is slot
        if current and isinstance(slot.backend, RemoteBackend) and "drained" not in reason:
            with self._lock:
                if slot.healthy:
                    slot.healthy = False
                    slot.unhealthy_at = time.monotonic()
                    unhealthy = True
                else:
                    unhealthy = False
            if unhealthy:
                self.events.publish(
                    "engine.unhealthy", engine_id=slot.engine_id, data={"reason": reason}
                )
                self.lose(slot, reason=reason)

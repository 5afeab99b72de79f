"""Engines that announce themselves (``RegisterEngine``) and keep heartbeating:
:class:`SelfRegistration`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagengine.engine.address import join_address
from dagengine.exceptions import DiscoveryError
from dagengine.orchestrator.discovery._base import (
    EngineEndpoint,
    OnChange,
    Publisher,
    join_thread,
    parse_address,
)

_log = logging.getLogger("dagengine.orchestrator.discovery")


@dataclass(frozen=True, slots=True)
class Registration:
    """The answer to one ``RegisterEngine`` call: whether it was accepted, how often the
    engine should register again (seconds), and why it was refused."""

    accepted: bool
    heartbeat_interval: float
    reason: str = ""


class SelfRegistration(Publisher):
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
        join_thread(self._thread, timeout)

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

"""What every discovery shares: the :class:`EngineEndpoint` record, the :class:`Discovery`
protocol, ``host:port`` parsing, and :class:`Publisher`, which holds the current endpoints and
tells ``on_change`` when they change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dagengine.engine.address import join_address, split_address
from dagengine.exceptions import DiscoveryError

_log = logging.getLogger("dagengine.orchestrator.discovery")


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


class Publisher:
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


def join_thread(thread: threading.Thread | None, timeout: float) -> None:
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)

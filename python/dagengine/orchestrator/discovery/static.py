"""Engines at fixed addresses (``ENGINES=host:port,...``): :class:`StaticDiscovery`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dagengine.orchestrator.discovery._base import (
    EngineEndpoint,
    OnChange,
    Publisher,
    join_thread,
    parse_engine_addresses,
)

_log = logging.getLogger("dagengine.orchestrator.discovery")


class _InfoClient(Protocol):
    def info(self) -> Any: ...

    def close(self) -> None: ...


def _default_client_factory(timeout: float) -> Callable[[str], Any]:
    def make(address: str) -> Any:
        from dagengine.engine import EngineClient  # grpc only when engines are used

        return EngineClient(address, timeout=timeout)

    return make


class StaticDiscovery(Publisher):
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
        join_thread(self._thread, timeout)

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

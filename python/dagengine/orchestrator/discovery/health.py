"""Whether the engines are alive: :class:`HealthChecker`, its :class:`HealthReport` and the
standard gRPC health check (:func:`grpc_health_check`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from dagengine.orchestrator.discovery._base import EngineEndpoint, join_thread

_log = logging.getLogger("dagengine.orchestrator.discovery")


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
        join_thread(self._thread, timeout)
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

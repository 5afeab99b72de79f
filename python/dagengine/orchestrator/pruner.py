"""The background pruner: every ``interval`` seconds, deletes the finished runs past their
retention in small batches (one transaction of at most :data:`PRUNE_BATCH` runs each, a
pause between two, so the store's lock is never held long and runs keep their latency),
gives the freed space back to the file system, and publishes a ``store.pruned`` event with
the counts when it removed anything.

Each pass builds its :class:`~dagengine.orchestrator.store.retention.RetentionPolicy` from
the orchestrator's (``Config.retention``, ``serve`` config ``retention:``) and the
retention each workflow was registered with (``metadata={"retention": "7d",
"keep_last": 10}``, read from the registry's latest version of the workflow).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dagengine.orchestrator.events import EventBus, EventType
from dagengine.orchestrator.store.protocol import StoreBackend
from dagengine.orchestrator.store.retention import (
    EVENTS_PER_BATCH,
    PRUNE_BATCH,
    PruneReport,
    RetentionPolicy,
)

__all__ = ["Pruner"]

_log = logging.getLogger(__name__)

#: Seconds between two batches of a pass: lets queued writes and readers in.
BATCH_PAUSE = 0.05


class Pruner:
    """Prunes ``store`` in the background (:meth:`start`) or on demand (:meth:`run_pass`).
    ``policy`` is called at every pass (the per-workflow parts may change)."""

    def __init__(
        self,
        store: StoreBackend,
        events: EventBus | None,
        policy: Callable[[], RetentionPolicy],
        *,
        interval: float = 600.0,
        batch: int = PRUNE_BATCH,
        pause: float = BATCH_PAUSE,
    ) -> None:
        if interval <= 0 or batch < 1 or pause < 0:
            raise ValueError(
                f"pruner: interval must be > 0 ({interval!r}), batch >= 1 ({batch!r}), "
                f"pause >= 0 ({pause!r})"
            )
        self.store = store
        self.events = events
        self.policy = policy
        self.interval = interval
        self.batch = batch
        self.pause = pause
        self.total = PruneReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run a pass now and then every ``interval`` seconds, on a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="dagengine-pruner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop between two batches and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:  # a busy or full database: the next pass tries again
                _log.exception("pruning the store failed")
            self._stop.wait(self.interval)

    def run_pass(self) -> PruneReport:
        """Prune batch after batch until one removes fewer runs than a batch (or the pruner
        is stopped), reclaim the space, publish ``store.pruned`` if anything went."""
        policy = self.policy()
        report = PruneReport()
        while not self._stop.is_set():
            part = self.store.prune(policy, limit=self.batch)
            report.add(part)
            if part.runs < self.batch and part.events < EVENTS_PER_BATCH:
                break  # nothing more past its retention (a parent whose children just
                # went waits for the next pass)
            self._stop.wait(self.pause)
        if report.runs or report.events:
            while not self._stop.is_set():
                freed = self.store.reclaim_space()
                report.bytes_reclaimed += freed
                if not freed:
                    break
                self._stop.wait(self.pause)
            self.total.add(report)
            _log.info("pruned the store: %s", report.to_dict())
            if self.events is not None:
                self.events.publish(EventType.STORE_PRUNED, data=report.to_dict())
        return report

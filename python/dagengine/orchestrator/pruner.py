"""The background pruner: every ``interval`` seconds, deletes the finished runs past their
retention in small batches (at most :data:`PRUNE_BATCH` runs each, sized by the time the
store reports it held its lock for them, a pause between two, so the store's lock is never
held long and runs keep their latency: a SQLite store's writer deletes a batch in slices of
its own inside its commits, see :mod:`~dagengine.orchestrator.store.prune_slices`),
gives the freed space back to the file system, and publishes a ``store.pruned`` event with
the counts when it removed anything.

By default a prune takes 5% of the store's time (``PRUNE_DUTY``): run latency does not move,
and ~600 runs a second are pruned on a quiet 2-core machine (fewer under load). A service
that finishes more runs than that a second would outgrow it, and so would the first pass
over a large backlog: a pass that is still going after :data:`CATCH_UP_AFTER` of the
interval is *behind*, and from then on its share doubles every :data:`CATCH_UP_STEP` of the
interval, up to ``MAX_PRUNE_DUTY`` (50%); the next pass starts gentle again. Disk space
that stays bounded is worth a slower p99 while it catches up (benches/README.md).

Each pass builds its :class:`~dagengine.orchestrator.store.retention.RetentionPolicy` from
the orchestrator's (``Config.retention``, ``serve`` config ``retention:``) and the
retention each workflow was registered with (``metadata={"retention": "7d",
"keep_last": 10}``, read from the registry's latest version of the workflow).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from dagengine.orchestrator.events import EventBus, EventType
from dagengine.orchestrator.store.protocol import StoreBackend
from dagengine.orchestrator.store.retention import (
    EVENTS_PER_BATCH,
    MAX_PRUNE_DUTY,
    PRUNE_BATCH,
    PRUNE_DUTY,
    PruneReport,
    RetentionPolicy,
)

__all__ = ["Pruner"]

_log = logging.getLogger(__name__)

#: Least seconds between two batches of a pass: lets queued writes and readers in.
BATCH_PAUSE = 0.01
#: Seconds a batch should take (its size adapts): what a run's write may wait for it.
BATCH_TIME = 0.002
#: The share of the interval after which a pass still going is behind (see the module).
CATCH_UP_AFTER = 0.25
#: The share of the interval after which a pass that is behind doubles its duty again.
CATCH_UP_STEP = 0.125
_FIRST_BATCH = 32
#: Pages given back per step of a reclaim (it adapts the same way), at first and at most.
_FIRST_PAGES = 64
_MAX_PAGES = 4096


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
        batch_time: float = BATCH_TIME,
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
        self.batch_time = batch_time
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
        """Prune batch after batch until one removes fewer runs than it was allowed (or the
        pruner is stopped), reclaim the space, publish ``store.pruned`` if anything went.

        A batch holds the store's lock while it runs, and every run's writes wait for that
        lock: batches are sized to take about :attr:`batch_time` (halved when one takes
        longer, doubled up to :attr:`batch` when one takes less than half), with a pause
        after each (:meth:`_pause_after`) that leaves the store free 95% of the time at the
        default duty, so few writes meet a batch at all."""
        policy = self.policy()
        report = PruneReport()
        size = min(self.batch, _FIRST_BATCH)
        began = time.monotonic()
        duty = PRUNE_DUTY
        while not self._stop.is_set():
            part = self.store.prune(dataclasses.replace(policy, duty=duty), limit=size)
            took = part.seconds  # the time it held the store, not the wait for it
            report.add(part)
            if part.runs < size and part.events < EVENTS_PER_BATCH:
                break  # nothing more past its retention (a parent whose children just
                # went waits for the next pass)
            size = self._resize(size, took, self.batch)
            behind = self.duty(time.monotonic() - began)
            if behind > duty:
                _log.warning(
                    "the pruner is behind (%.1f s into its pass, %d runs pruned): it may "
                    "now take %.0f%% of the store's time",
                    time.monotonic() - began,
                    report.runs,
                    100 * behind,
                )
                duty = behind
            self._stop.wait(self._pause_after(took, duty))
        report.duty = duty
        if report.runs or report.events:
            pages = _FIRST_PAGES
            while not self._stop.is_set():
                began = time.perf_counter()
                freed = self.store.reclaim_space(pages)
                took = time.perf_counter() - began
                report.bytes_reclaimed += freed
                if not freed:
                    break
                pages = self._resize(pages, took, _MAX_PAGES)
                self._stop.wait(self._pause_after(took, duty))
            self.total.add(report)
            _log.info("pruned the store: %s", report.to_dict())
            if self.events is not None:
                self.events.publish(EventType.STORE_PRUNED, data=report.to_dict())
        return report

    def _pause_after(self, took: float, duty: float) -> float:
        """Seconds to wait after a step that held the store ``took`` seconds, so that steps
        take ``duty`` of its time (at least :attr:`pause`): 19x the step at the default
        duty. With 4x (free 80%), the slowest 1% of runs met a batch and p99 run latency
        during a prune was 1.5-2.7x that without; with 19x, 0.6-1.4x (benches/README.md).
        The price: a prune takes 2-4x as long, hence the larger duty when behind."""
        return max(self.pause, took * (1 / duty - 1))

    def duty(self, elapsed: float) -> float:
        """The share of the store's time a pass may take ``elapsed`` seconds after it began:
        ``PRUNE_DUTY`` until :data:`CATCH_UP_AFTER` of the interval, then doubled every
        :data:`CATCH_UP_STEP` of it, up to ``MAX_PRUNE_DUTY``."""
        late = elapsed / self.interval - CATCH_UP_AFTER
        if late < 0:
            return PRUNE_DUTY
        return min(MAX_PRUNE_DUTY, PRUNE_DUTY * 2.0 ** (1 + int(late / CATCH_UP_STEP)))

    def _resize(self, size: int, took: float, ceiling: int) -> int:
        """The next batch's size after one of ``size`` took ``took`` seconds."""
        if took > self.batch_time:
            return max(1, size // 2)
        if took < self.batch_time / 2:
            return min(ceiling, size * 2)
        return size

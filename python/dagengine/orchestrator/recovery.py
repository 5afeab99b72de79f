"""Resuming the runs a previous orchestrator left in the store (:meth:`Orchestrator.recover`).

A run whose workflow version builds is re-queued at once. One whose version does not build
yet (a ``python:`` import path that does not resolve) is *parked*: it is known to the
orchestrator (so a resumed parent waits for it instead of starting the child again, and a
cancel settles it) but not dispatched; a ``dagengine-resume`` thread tries its version again
with backoff and whenever a workflow is registered, and queues it once it builds. The
decisions are the run lifecycle's (``RECOVERED``, ``PARKED``, ``BUILT``); this module only
drives them, under the orchestrator's lock.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import TYPE_CHECKING

from dagengine.exceptions import DagEngineError
from dagengine.orchestrator.lifecycle import Event
from dagengine.orchestrator.recording import queued_trace
from dagengine.orchestrator.runs import ActiveRun
from dagengine.orchestrator.store import RunRecord

if TYPE_CHECKING:
    from dagengine.orchestrator.orchestrator import Orchestrator

__all__ = ["RESUME_RETRY_INITIAL", "RESUME_RETRY_MAX", "Recovery"]

log = logging.getLogger("dagengine.orchestrator")

#: A stored run whose workflow version cannot be built yet is tried again after this many
#: seconds, doubling up to :data:`RESUME_RETRY_MAX`.
RESUME_RETRY_INITIAL = 0.5
RESUME_RETRY_MAX = 30.0


class Recovery:
    """The resumption of one orchestrator's stored runs (see the module doc)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orch = orchestrator
        self._thread: threading.Thread | None = None
        self._done = False

    def recover(self) -> None:
        """Resume the stored runs; only the first call does anything."""
        with self._orch._lock:
            if self._done:
                return
            self._done = True
        self._recover()

    def _recover(self) -> None:
        """Re-queue the runs a previous orchestrator left queued or running."""
        self.adopt(self._orch.store.unfinished_runs())

    def adopt(self, records: list[RunRecord], reason: str = "orchestrator restarted") -> None:
        """Resume ``records`` (unfinished runs this orchestrator now owns: left by a
        previous one, or taken over from a replica that died) from their stored outputs.
        All are known (in ``_runs``) before any is dispatched, so a resumed parent finds its
        resumed children instead of starting them again (a waiting child too: it is known,
        and the parent waits for it). ``reason``: what the redispatch events say."""
        orch = self._orch
        # A retry among those not started yet finds its reused outputs through the store.
        orch._reuse.adopted(rec.run_id for rec in records if rec.attempt == 0)
        recovered: list[tuple[ActiveRun, RunRecord]] = []
        waiting: list[tuple[ActiveRun, RunRecord, str]] = []
        for rec in records:
            problem: str | None = None
            try:
                wv = orch.registry.get(rec.workflow_id, rec.version)
                if wv.dag is None:
                    wv = orch.registry.reload(rec.workflow_id, rec.version)
                if wv.dag is None:
                    problem = wv.problem or f"{wv} is not runnable"
            except DagEngineError as exc:
                # No such version at all: nothing to wait for.
                orch.store.finish_run(
                    rec.run_id,
                    rec.attempt,
                    "failed",
                    None,
                    {"type": type(exc).__name__, "message": f"cannot resume: {exc}"},
                )
                continue
            run = ActiveRun(
                run_id=rec.run_id,
                version=wv,
                inputs=dict(rec.inputs),
                key=rec.key or rec.workflow_id,
                future=concurrent.futures.Future(),
                depth=rec.depth,
                parent_run_id=rec.parent_run_id or "",
                parent_node_id=rec.parent_node_id or "",
                attempt=rec.attempt,
                # (read from its run.queued event only with OpenTelemetry installed)
                trace=queued_trace(orch.store, rec.run_id),
            )
            if problem is None:
                recovered.append((run, rec))
            else:
                waiting.append((run, rec, problem))
        with orch._lock:
            for run, _ in recovered:
                orch._runs[run.run_id] = run
            for run, _, _ in waiting:
                orch._runs[run.run_id] = run
            for run, _ in recovered:
                actions = run.handle(Event.RECOVERED)
                orch._apply(run, actions, None, run.attempt, reason=reason)
            for run, _, problem in waiting:
                orch._apply(run, run.handle(Event.PARKED), None, run.attempt, reason=problem)
            orch._wakeup.notify_all()
            if orch._parked and self._thread is None:
                self._thread = threading.Thread(
                    target=self._resume_waiting, name="dagengine-resume", daemon=True
                )
                self._thread.start()

    def _resume_waiting(self) -> None:
        """Try the waiting runs' workflow versions again, with backoff, until every waiting
        run is resumed or cancelled, or the orchestrator stops."""
        orch = self._orch
        delay = RESUME_RETRY_INITIAL
        while True:
            with orch._lock:
                orch._parked_wakeup.wait(delay)
                # Cancelled meanwhile (cancel_run settles them): no longer ours.
                for run_id in [r for r in orch._parked if r not in orch._runs]:
                    del orch._parked[run_id]
                if orch._stopping or not orch._parked:
                    self._thread = None
                    return
                runs = [orch._runs[run_id] for run_id in orch._parked]
            resumed: list[ActiveRun] = []
            for run in runs:
                try:
                    wv = orch.registry.reload(run.version.workflow_id, str(run.version.version))
                except DagEngineError as exc:
                    log.warning("run %s cannot resume yet: %s", run.run_id, exc)
                    continue
                if wv.dag is not None:
                    run.version = wv
                    resumed.append(run)
            with orch._lock:
                redispatched: list[ActiveRun] = []
                for run in resumed:
                    if orch._parked.pop(run.run_id, None) is None:
                        continue
                    # (a run cancelled meanwhile is over: BUILT asks for nothing)
                    actions = run.handle(Event.BUILT)
                    if actions:
                        redispatched.append(run)
                        orch._apply(
                            run, actions, None, run.attempt, reason="orchestrator restarted"
                        )
                left = dict(orch._parked)
            if redispatched:
                delay = RESUME_RETRY_INITIAL
            else:
                delay = min(delay * 2, RESUME_RETRY_MAX)
                for run_id, problem in left.items():
                    log.warning(
                        "run %s still waits to resume (next try in %.1f s): %s",
                        run_id,
                        delay,
                        problem,
                    )

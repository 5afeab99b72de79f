"""One attempt of a run on an engine: its :class:`~.backends.Job` built, run on an
in-process engine (a pool thread; a run the core runs without Python is launched there
instead and concluded where it ends, see :func:`launch_local`) or launched on a remote one
(concluded on ``dagengine-io``), and what the backend returned or raised turned into the
run's lifecycle event. The :class:`~.orchestrator.Orchestrator` starts attempts when its
lifecycle asks (``Action.LAUNCH``) and carries out what each conclusion asks for."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dagengine.exceptions import DagEngineError, EngineBusy, EngineUnavailable
from dagengine.orchestrator.backends import Job, LocalBackend, RemoteBackend
from dagengine.orchestrator.cache import cache_entries_for, store_cache_entries
from dagengine.orchestrator.lifecycle import Event, State
from dagengine.orchestrator.recording import (
    LogBudget,
    record_node_event,
    record_node_events,
    record_wire_events,
)
from dagengine.orchestrator.runs import ActiveRun, failed_result
from dagengine.results import RunResult, RunStatus

if TYPE_CHECKING:
    from dagengine.orchestrator.engines import EngineSlot
    from dagengine.orchestrator.orchestrator import Orchestrator

__all__ = [
    "conclude_attempt",
    "launch_local",
    "launch_remote",
    "prepare_job",
    "run_in_process",
]

# The orchestrator's logger: these lines were always its.
log = logging.getLogger("dagengine.orchestrator")


def run_in_process(orch: Orchestrator, run: ActiveRun, slot: EngineSlot, attempt: int) -> None:
    """Run one attempt on an in-process engine (a pool thread)."""
    job = prepare_job(orch, run, slot, attempt)
    if job is None:
        return
    workflow_id, engine_id = job.workflow_id, slot.engine_id
    logs = LogBudget(orch.config.node_log_limit)
    try:
        result = slot.backend.execute(
            job,
            lambda event: record_node_event(
                orch.store,
                orch.events,
                run.run_id,
                workflow_id,
                engine_id,
                attempt,
                event,
                logs,
            ),
            orch._coordinator.runner_for_local(run.run_id),
        )
    except BaseException as exc:
        conclude_attempt(orch, run, slot, attempt, None, exc)
    else:
        conclude_attempt(orch, run, slot, attempt, result, None)


def launch_local(orch: Orchestrator, run: ActiveRun, slot: EngineSlot, attempt: int) -> None:
    """Start one attempt of a run the core runs without Python on an in-process engine
    (:meth:`LocalBackend.launch`): a short one ends and is concluded on this thread, a
    longer one on a pool thread that follows it."""
    backend = slot.backend
    assert isinstance(backend, LocalBackend)
    job = prepare_job(orch, run, slot, attempt)
    if job is None:
        return
    workflow_id, engine_id = job.workflow_id, slot.engine_id
    logs = LogBudget(orch.config.node_log_limit)
    try:
        backend.launch(
            job,
            lambda batch: record_node_events(
                orch.store,
                orch.events,
                run.run_id,
                workflow_id,
                engine_id,
                attempt,
                batch,
                logs,
            ),
            lambda result, exc: conclude_attempt(orch, run, slot, attempt, result, exc),
            orch._pool.submit,
        )
    except BaseException as exc:
        conclude_attempt(orch, run, slot, attempt, None, exc)


def launch_remote(orch: Orchestrator, run: ActiveRun, slot: EngineSlot, attempt: int) -> None:
    """Start one attempt on a remote engine; it is concluded on ``dagengine-io``."""
    backend = slot.backend
    assert isinstance(backend, RemoteBackend)
    job = prepare_job(orch, run, slot, attempt)
    if job is None:
        return
    # The engine's messages are recorded as they came (outputs and the result stay the
    # JSON the engine sent): decoding them only to encode them again cost more than the
    # rest of a run's bookkeeping.
    result_json: list[str] = []
    workflow_id, engine_id = job.workflow_id, slot.engine_id
    logs = LogBudget(orch.config.node_log_limit)

    def on_end(result: RunResult | None, exc: BaseException | None) -> None:
        encoded = result_json[0] if result_json and exc is None else None
        conclude_attempt(orch, run, slot, attempt, result, exc, encoded)

    try:
        backend.launch(
            job,
            lambda batch: record_wire_events(
                orch.store,
                orch.events,
                run.run_id,
                workflow_id,
                engine_id,
                attempt,
                batch,
                result_json,
                logs,
            ),
            on_end,
        )
    except BaseException as exc:
        conclude_attempt(orch, run, slot, attempt, None, exc)


def prepare_job(orch: Orchestrator, run: ActiveRun, slot: EngineSlot, attempt: int) -> Job | None:
    """The job of this attempt, or ``None`` when there is nothing to run (settled here)."""
    with orch._lock:
        actions = run.handle(Event.LAUNCHING)
        launched = run.state is State.RUNNING
    if not launched:
        # Cancelled (or the orchestrator stopped) between its dispatch and now.
        orch._apply(run, actions, slot, attempt)
        return None
    wv = run.version
    if wv.dag is None:  # checked at submission and recovery; kept for the type checker
        failed = failed_result(run.run_id, DagEngineError(f"{wv} cannot run"))
        with orch._lock:
            actions = run.handle(Event.FAILED, attempt)
        orch._apply(run, actions, slot, attempt, result=failed)
        return None
    try:
        return Job(
            run_id=run.run_id,
            attempt=attempt,
            workflow_id=wv.workflow_id,
            version=str(wv.version),
            dag=wv.dag,
            spec=orch._spec(wv),
            inputs=run.inputs,
            # Stored outputs are a running attempt's; a first has none but a retry's reused
            # ones.
            completed=orch._reuse.completed(run.run_id, attempt),
            depth=run.depth,
            parent_run_id=run.parent_run_id,
            parent_node_id=run.parent_node_id,
            deadline=run.deadline,
            trace_context=run.trace,
            cache_entries=cache_entries_for(orch.store, wv.workflow_id, wv.dag),
        )
    except Exception as exc:
        # Its stored outputs or cache entries could not be read (the store is unreachable):
        # the attempt ends here, failed with the store's error, rather than leave the run
        # running with nothing started and its slot taken (or the dispatcher dead).
        log.warning("run %s: preparing attempt %d failed: %s", run.run_id, attempt, exc)
        conclude_attempt(orch, run, slot, attempt, None, exc)
        return None


def conclude_attempt(
    orch: Orchestrator,
    run: ActiveRun,
    slot: EngineSlot,
    attempt: int,
    result: RunResult | None,
    exc: BaseException | None,
    result_json: str | None = None,
) -> None:
    """End an attempt with what its backend returned or raised (``result_json``: the
    result already encoded, when the backend had it so)."""
    reason = ""
    if exc is None:
        assert result is not None
        if run.version.dag is not None:
            store_cache_entries(
                orch.store, run.version.workflow_id, run.version.dag, run.run_id, result
            )
        if result.error is not None and result.error.type == "EngineDraining":
            event = Event.DRAINED
            reason = f"engine {slot.engine_id} drained"
        else:
            event = Event.SUCCEEDED if result.status is RunStatus.SUCCEEDED else Event.FAILED
    elif isinstance(exc, EngineBusy):
        # Full with runs we do not count: back to the head of the queue (see lifecycle).
        event = Event.BUSY
    elif isinstance(exc, EngineUnavailable):
        event = Event.LOST
        reason = str(exc)
    else:  # a run must always settle
        if not isinstance(exc, DagEngineError):
            log.error("run %s on %s failed unexpectedly", run.run_id, slot.engine_id, exc_info=exc)
        event = Event.FAILED
        result = failed_result(run.run_id, exc)
    with orch._lock:
        actions = run.handle(event, attempt)
    orch._apply(
        run,
        actions,
        slot,
        attempt,
        result=result,
        result_json=result_json if exc is None else None,
        reason=reason,
    )

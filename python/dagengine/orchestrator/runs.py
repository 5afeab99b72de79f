"""What a caller holds of a run: :class:`RunInfo` (its stored record) and :class:`RunHandle`
(a run submitted without waiting)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagengine.orchestrator.lifecycle import RunLifecycle
from dagengine.orchestrator.store import RunRecord
from dagengine.results import ErrorInfo, RunResult, RunStatus
from dagengine.tracing import run_trace_context

if TYPE_CHECKING:
    from dagengine.orchestrator.orchestrator import Orchestrator
    from dagengine.orchestrator.registry import WorkflowVersion

__all__ = [
    "ActiveRun",
    "RunHandle",
    "RunInfo",
    "cancelled_result",
    "failed_result",
    "settle_run",
]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the orchestrator knows of a run (from its store)."""

    run_id: str
    workflow_id: str
    version: str
    status: str
    attempt: int
    engine_id: str | None
    parent_run_id: str | None
    parent_node_id: str | None
    depth: int
    resolved_versions: Mapping[str, str]
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: Mapping[str, Any] | None
    result: RunResult | None

    @classmethod
    def from_record(cls, rec: RunRecord) -> RunInfo:
        return cls(
            run_id=rec.run_id,
            workflow_id=rec.workflow_id,
            version=rec.version,
            status=rec.status,
            attempt=rec.attempt,
            engine_id=rec.engine_id,
            parent_run_id=rec.parent_run_id or None,
            parent_node_id=rec.parent_node_id or None,
            depth=rec.depth,
            resolved_versions=dict(rec.resolved_versions),
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            error=rec.error,
            result=RunResult.from_dict(rec.result) if rec.result else None,
        )


class RunHandle:
    """A run submitted with ``wait=False``: :meth:`result` waits for it, :meth:`cancel`
    stops it, :attr:`status` says where it is. :attr:`record` is the run as it was created
    (the record the store got) when this handle comes from its submission, else ``None``."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        run_id: str,
        future: concurrent.futures.Future[RunResult],
        record: RunRecord | None = None,
    ) -> None:
        self._orch = orchestrator
        self.run_id = run_id
        self._future = future
        self.record = record

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._orch.get_run(self.run_id).status

    @property
    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end (``TimeoutError`` after ``timeout`` seconds)."""
        return self._future.result(timeout)

    async def result_async(self, timeout: float | None = None) -> RunResult:
        """Await the run's end (``TimeoutError`` after ``timeout`` seconds). Neither a
        timeout nor cancelling the awaiting task touches the run: it goes on, and other
        waiters still get its result (``asyncio.wrap_future`` would have cancelled the
        run's future, which the run's end then no longer set)."""
        future = self._future
        if future.done():
            return future.result()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RunResult] = loop.create_future()

        def copy(done: concurrent.futures.Future[RunResult]) -> None:
            if waiter.done():  # timed out or cancelled meanwhile
                return
            if done.cancelled():
                waiter.cancel()
                return
            error = done.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())

        def settled(done: concurrent.futures.Future[RunResult]) -> None:
            # On whichever thread ended the run: one hop to the loop, no task.
            with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody waits)
                loop.call_soon_threadsafe(copy, done)

        future.add_done_callback(settled)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _time_out, waiter, self.run_id, timeout)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()

    def cancel(self) -> bool:
        """Cancel the run (and its sub-workflows); False if it had already finished."""
        return self._orch.cancel_run(self.run_id)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {'done' if self.done else 'pending'}>"


def _time_out(waiter: asyncio.Future[RunResult], run_id: str, timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"run {run_id} still running after {timeout}s"))


def cancelled_result(run_id: str) -> RunResult:
    """The result of a run cancelled before its engine ended it."""
    return RunResult(
        run_id=run_id,
        status=RunStatus.CANCELLED,
        error=ErrorInfo(type="RunCancelled", message="run cancelled"),
    )


def failed_result(run_id: str, exc: BaseException) -> RunResult:
    """The result of a run whose attempt raised ``exc``."""
    return RunResult(
        run_id=run_id,
        status=RunStatus.FAILED,
        error=ErrorInfo(type=type(exc).__name__, message=str(exc)),
    )


@dataclass(kw_only=True)
class ActiveRun(RunLifecycle):
    """In-memory state of a run this orchestrator is responsible for: what it runs, and its
    lifecycle (state, attempt, engine; :mod:`.lifecycle`), which changes only by
    ``handle`` under the orchestrator's lock."""

    run_id: str
    version: WorkflowVersion
    inputs: dict[str, Any]
    key: str
    future: concurrent.futures.Future[RunResult]
    depth: int = 0
    parent_run_id: str = ""
    parent_node_id: str = ""
    deadline: float | None = None
    #: The W3C trace context its engines run it in (the submitting request's, or its
    #: parent run's): :func:`~dagengine.tracing.run_trace_context` where it is made.
    trace: dict[str, str] | None = field(default_factory=run_trace_context)


def settle_run(
    orch: Orchestrator,
    run: ActiveRun,
    attempt: int,
    result: RunResult,
    engine_id: str | None,
    result_json: str | None = None,
) -> None:
    """Record a run's end (fenced by ``attempt``) and then tell its waiters. The record is
    committed with the store's next group, so settling never waits for the disk on the
    caller's thread (the core's I/O thread, for remote runs). ``result_json``:
    ``result`` already encoded."""
    error = result.error.to_dict() if result.error is not None else None

    def recorded(stored: bool) -> None:
        if not stored:
            # A newer attempt (or another replica) owns the run: this result is stale.
            return
        with orch._lock:
            orch._runs.pop(run.run_id, None)
        ended = {
            "succeeded": "run.completed",
            "failed": "run.failed",
            "cancelled": "run.cancelled",
        }[result.status.value]
        data = {
            "attempt": attempt,
            "duration": result.duration,
            **({"error": error} if error else {}),
        }
        try:
            orch.events.publish_batch(
                [(ended, None, data)],
                workflow_id=run.version.workflow_id,
                run_id=run.run_id,
                engine_id=engine_id,
            )
        finally:  # (its waiters are told even if the event could not be)
            if not run.future.done():
                run.future.set_result(result)

    orch.store.finish_run_later(
        run.run_id,
        attempt,
        result.status.value,
        result_json if result_json is not None else result.to_dict(),
        error,
        recorded,
    )

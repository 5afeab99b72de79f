"""Retry from failed: a new run of a finished run's workflow version and inputs that reuses
the outputs of the nodes the old run completed, so only what failed (or never ran) runs again.

The mechanism is the one a run resumed on another engine uses: its job carries the completed
nodes' outputs (``Job.completed``) and the engine seeds them instead of running those nodes.
A retry's first attempt takes the old run's outputs from :class:`Reuse` (filled before the new
run is submitted) and stores them as the new run's own outputs at that attempt, so a later
attempt (its engine lost, the orchestrator restarted while it ran) finds them in the store
like any checkpoint.

A retry still queued when the orchestrator stops keeps its reuse too: its ``run.queued`` event
(stored with the run, in the same commit) names the old run and the reused nodes
(``retry_of``, ``reused``). A run this orchestrator adopts before its first attempt (left
queued by a previous one, or taken over from a replica that was lost: :meth:`Reuse.adopted`)
reads that event at its first attempt and takes the old run's stored outputs of those nodes
(any the old run no longer has, pruned meanwhile, run again).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dagengine.exceptions import DagEngineError, RunNotFound

if TYPE_CHECKING:
    from dagengine.orchestrator.runs import RunHandle

__all__ = ["RETRYABLE", "Reuse", "retry_origin", "retry_run"]

#: The statuses a run can be retried from.
RETRYABLE = ("failed", "cancelled")
_ENDED = ("succeeded", "failed", "cancelled")

# The retry being submitted on this thread: ``run.queued``'s ``retry_of`` and ``reused``.
_origin: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "dagengine_retry_origin", default=None
)


def retry_origin() -> dict[str, Any] | None:
    """While :func:`retry_run` submits a retry: ``{"retry_of": old run id, "reused": node
    ids}``, for the new run's ``run.queued`` event (else ``None``)."""
    return _origin.get()


class Reuse:
    """Outputs a retry's first attempt starts with, by new run id."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._outputs: dict[str, dict[str, dict[str, Any]]] = {}
        # Adopted runs not started yet: retries among them have their reuse only in their
        # run.queued event.
        self._adopted: set[str] = set()

    def adopted(self, run_ids: Iterable[str]) -> None:
        """Runs this orchestrator adopted before their first attempt (resumed or taken over):
        their first attempt looks for a retry's reuse in the store."""
        with self._lock:
            self._adopted.update(run_ids)

    def put(self, run_id: str, outputs: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember a new retry's outputs; forget those of retries that ended without a first
        attempt (cancelled while queued), so the map holds only retries still waiting."""
        with self._lock:
            waiting = list(self._outputs)
        ended = [r for r in waiting if (rec := self._store.get_run(r)) and rec.status in _ENDED]
        with self._lock:
            for other in ended:
                self._outputs.pop(other, None)
            self._outputs[run_id] = {k: dict(v) for k, v in outputs.items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._outputs)

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._outputs.pop(run_id, None)
            self._adopted.discard(run_id)

    def completed(self, run_id: str, attempt: int) -> dict[str, dict[str, Any]]:
        """The completed nodes' outputs attempt ``attempt`` of a run starts with: the stored
        ones after the first attempt, else a retry's reused ones (:meth:`take`)."""
        if attempt > 1:
            return self._store.node_outputs(run_id)  # type: ignore[no-any-return]
        return self.take(run_id, attempt)

    def take(self, run_id: str, attempt: int) -> dict[str, dict[str, Any]]:
        """The outputs attempt ``attempt`` (the first) of ``run_id`` starts with, stored as
        that attempt's outputs (queued behind its claim); empty for a run that is no retry."""
        with self._lock:
            outputs = self._outputs.pop(run_id, None)
            adopted = bool(self._adopted) and run_id in self._adopted
            if adopted:
                self._adopted.discard(run_id)
        if outputs is None and adopted:
            outputs = self._stored(run_id)
        if not outputs:
            return {}
        for node_id, output in outputs.items():
            self._store.save_node_output_later(run_id, node_id, attempt, output)
        return outputs

    def _stored(self, run_id: str) -> dict[str, dict[str, Any]]:
        """A resumed retry's reused outputs, from its ``run.queued`` event and the old run's
        stored outputs (empty for a run that is no retry)."""
        queued = self._store.events(run_id=run_id, types=["run.queued"], limit=1)
        origin = queued[0].data if queued else {}
        old = origin.get("retry_of")
        if not isinstance(old, str):
            return {}
        stored = self._store.node_outputs(old)
        return {n: stored[n] for n in origin.get("reused", ()) if n in stored}


def retry_run(orch: Any, run_id: str) -> tuple[RunHandle, list[str]]:
    """Start a retry of finished run ``run_id`` (failed or cancelled): the same workflow
    version, inputs and key, reusing its completed nodes' outputs. Returns the new run's
    handle and the ids of the reused nodes. :class:`RunNotFound` for an unknown run;
    :class:`DagEngineError` for a run that is still going or that succeeded."""
    record = orch.store.get_run(run_id)
    if record is None:
        raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
    if record.status not in RETRYABLE:
        going = record.status in ("queued", "running")
        raise DagEngineError(
            f"run {run_id!r} is {record.status}: "
            + ("cancel it or wait for its end to retry it" if going else "nothing to retry")
        )
    wv = orch.registry.get(record.workflow_id, record.version)
    outputs = orch.store.node_outputs(run_id)
    if wv.dag is not None:  # only nodes the version still has
        outputs = {k: v for k, v in outputs.items() if k in wv.dag}
    from dagengine.orchestrator.store import RunRecord

    new_id = RunRecord.new_id()
    orch._reuse.put(new_id, outputs)
    token = _origin.set({"retry_of": run_id, "reused": sorted(outputs)})
    try:
        handle = orch.execute_workflow(
            record.workflow_id,
            record.inputs,
            version=record.version,
            wait=False,
            key=record.key,
            run_id=new_id,
        )
    except BaseException:
        orch._reuse.discard(new_id)
        raise
    finally:
        _origin.reset(token)
    return handle, sorted(outputs)

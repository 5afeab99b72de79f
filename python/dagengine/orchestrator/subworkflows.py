"""Sub-workflows: :class:`SubWorkflowCoordinator` runs a child workflow for a parent's
``SubWorkflow`` node (in-process engines call it directly, remote ones through
``OrchestratorService.RunSubWorkflow``) and keeps the runs' lineage; :func:`child_output` is
the parent node's output from the child's result."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagengine.exceptions import DagEngineError, SubWorkflowError
from dagengine.nodes import NodeContext, SubWorkflow, subworkflow_inputs
from dagengine.orchestrator.registry import WorkflowVersion
from dagengine.orchestrator.runs import RunHandle, RunInfo
from dagengine.orchestrator.store import RunRecord
from dagengine.results import RunResult, RunStatus
from dagengine.tracing import inherited_trace_context

if TYPE_CHECKING:
    from dagengine.orchestrator.orchestrator import Orchestrator

__all__ = ["SubWorkflowCoordinator", "child_output"]

# How the core prefixes a run's error with the failing node ("node 'x' failed: ...").
_NODE_FAILED = re.compile(r"^node '[^']*' failed: ")


class SubWorkflowCoordinator:
    """Runs sub-workflows for their parents and keeps their lineage.

    ``status(execution_id)`` is a run's status; ``children(parent_execution_id)`` lists the
    runs a run started as sub-workflows.
    """

    def __init__(self, orchestrator: Orchestrator, max_depth: int) -> None:
        self._orch = orchestrator
        self.max_depth = max_depth

    def status(self, execution_id: str) -> str:
        """The status of run ``execution_id``."""
        return self._orch.get_run(execution_id).status

    def children(self, parent_execution_id: str) -> list[RunInfo]:
        """Runs started as sub-workflows by run ``parent_execution_id``, oldest first."""
        records = self._orch.store.list_runs(parent_run_id=parent_execution_id, limit=10_000)
        return sorted((RunInfo.from_record(r) for r in records), key=lambda r: r.created_at)

    def lineage(self, run_id: str) -> list[str]:
        """``workflow@version`` of the run and its ancestors, outermost first."""
        chain: list[str] = []
        current: str | None = run_id
        while current:
            rec = self._orch.store.get_run(current)
            if rec is None:
                break
            chain.append(f"{rec.workflow_id}@{rec.version}")
            current = rec.parent_run_id or None
        return list(reversed(chain))

    def run_child(
        self,
        workflow_id: str,
        version_range: str,
        inputs: Mapping[str, Any],
        *,
        parent_run_id: str,
        parent_node_id: str,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> RunResult:
        """Run a child workflow for a parent node and wait for it. The child's depth is its
        parent's plus one; past ``max_depth`` it is refused with :class:`SubWorkflowError`
        naming the chain. If the parent node is cancelled meanwhile, so is the child."""
        parent = self._orch.store.get_run(parent_run_id)
        depth = (parent.depth if parent is not None else 0) + 1
        if depth > self.max_depth:
            chain = " -> ".join([*self.lineage(parent_run_id), f"{workflow_id}@{version_range}"])
            raise SubWorkflowError(
                f"sub-workflow depth limit {self.max_depth} exceeded: {chain}",
                node_id=parent_node_id,
                reference=f"{workflow_id}@{version_range}",
            )
        # The node may be running again (its run was resumed or re-dispatched) while the
        # child it started before still runs, or has succeeded: wait for that one rather
        # than running the child twice.
        handle = self._existing_child(parent_run_id, parent_node_id)
        if handle is None:
            version = self._recorded_version(parent, workflow_id, version_range)
            owner = self._orch._runs.get(parent_run_id)
            # The child's engines run it in its parent run's trace context.
            with inherited_trace_context(owner.trace if owner is not None else None):
                handle = self._orch._submit(
                    version,
                    dict(inputs),
                    parent_run_id=parent_run_id,
                    parent_node_id=parent_node_id,
                    depth=depth,
                )
        while True:
            try:
                return handle.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if cancelled():
                    if self._orch._stopping:
                        # The orchestrator is stopping, not the parent being cancelled: the
                        # child stays in the store and is resumed with its parent.
                        raise DagEngineError("the orchestrator is stopping") from None
                    self._orch.cancel_run(handle.run_id)
                    return handle.result()

    def _recorded_version(
        self, parent: RunRecord | None, workflow_id: str, version_range: str
    ) -> WorkflowVersion:
        """The version a parent run recorded for ``workflow_id@version_range`` when it
        started (a version registered since does not change what the run runs); the range's
        best match for a parent that recorded none (a run of an older store)."""
        reference = f"{workflow_id}@{version_range}"
        pinned = parent.resolved_versions.get(reference) if parent is not None else None
        if pinned is None:
            return self._orch.registry.resolve(workflow_id, version_range)
        return self._orch.registry.get(workflow_id, pinned)

    def _existing_child(self, parent_run_id: str, parent_node_id: str) -> RunHandle | None:
        """A handle on the child a parent node started already, if it succeeded or is still
        unfinished here (or, a replica's, on another replica)."""
        for rec in self._orch.store.list_runs(parent_run_id=parent_run_id, limit=10_000):
            if rec.parent_node_id != parent_node_id:
                continue
            if rec.status in ("queued", "running"):
                with self._orch._lock:
                    known = rec.run_id in self._orch._runs
                if not known:
                    # It may have ended between the read and this look (a run leaves
                    # ``_runs`` only once its end is committed): read it again.
                    rec = self._orch.store.get_run(rec.run_id) or rec
            if rec.status == "succeeded" and rec.result:
                future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
                future.set_result(RunResult.from_dict(rec.result))
                return RunHandle(self._orch, rec.run_id, future)
            if rec.status in ("queued", "running"):
                with self._orch._lock:
                    run = self._orch._runs.get(rec.run_id)
                if run is not None:
                    return RunHandle(self._orch, rec.run_id, run.future)
                if self._orch.replicas is not None:  # another replica runs it: follow it
                    return RunHandle(self._orch, rec.run_id, self._orch.replicas.follow(rec.run_id))
        return None

    def runner_for_local(
        self, parent_run_id: str
    ) -> Callable[[SubWorkflow, NodeContext], dict[str, Any]]:
        """The sub-workflow runner handed to in-process engines for one parent run."""

        def run(sub: SubWorkflow, ctx: NodeContext) -> dict[str, Any]:
            result = self.run_child(
                sub.workflow_id,
                sub.version_range,
                subworkflow_inputs(ctx),
                parent_run_id=ctx.run_id or parent_run_id,
                parent_node_id=ctx.node_id,
                cancelled=lambda: ctx.cancelled,
            )
            return child_output(sub, result)

        return run


def child_output(sub: SubWorkflow, result: RunResult) -> dict[str, Any]:
    """The parent node's output: the child's outputs (node id -> output); a child that did
    not succeed fails the node with its error."""
    if result.status is not RunStatus.SUCCEEDED:
        error = result.error
        if error is not None and error.type == "SubWorkflowError":
            # A failure deeper down (a depth limit, a grandchild's failure): pass its own
            # message up instead of wrapping it once per level.
            raise SubWorkflowError(_NODE_FAILED.sub("", error.message), reference=sub.reference)
        reason = f": {error}" if error is not None else ""
        raise SubWorkflowError(
            f"sub-workflow {sub.reference} (run {result.run_id}) {result.status.value}{reason}",
            reference=sub.reference,
        )
    return {node_id: output for node_id, output in result.outputs.items()}

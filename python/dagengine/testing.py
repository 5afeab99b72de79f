"""A test harness for workflows: :func:`run` with doubles and a :class:`VirtualClock`.

::

    from dagengine import testing

    def test_numbers():
        clock = testing.VirtualClock()
        run = testing.run(numbers, {"day": "2026-12-06"},
                          replace={"extract": {"rows": [2, 3]}}, clock=clock)
        run.assert_succeeded()
        run.assert_output("total", {"sum": 13})

``replace`` swaps nodes for doubles: a dict is the node's output, a callable is called with
the node's :class:`~dagengine.NodeContext` and returns it (it may raise, to fail the node).
Every node keeps its id, dependencies, retries and timeout, so the run goes through the same
scheduler, retry and failure logic as a real one.

Under a :class:`VirtualClock` (``clock=``, Temporal's time-skipping test environment is the
model), waiting costs no real time: retry backoff is skipped and its delays are added to the
clock; code that waits through the clock (``clock.sleep(s)``, ``await clock.asleep(s)``,
as a double or the code under test given the clock) moves it at once, and passing a node's
or the run's ``timeout`` in virtual time times the node (``NodeTimeout``) or the run
(``RunTimeout``) out as the engine would. Cron schedules elapse instantly too: a
:class:`VirtualClock` is a trigger clock, so ``TriggerScheduler(clock)`` with a
``CronTrigger`` fires each due time as :meth:`VirtualClock.advance_schedules` passes it.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import difflib
import inspect
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from dagengine.authoring import DecoratedWorkflow
from dagengine.exceptions import NodeTimeout, RunCancelled, SpecError
from dagengine.nodes import (
    LuaExecutor,
    Node,
    NodeContext,
    NoopExecutor,
    PythonExecutor,
    SubWorkflow,
)
from dagengine.results import ErrorInfo, NodeResult, NodeStatus, RunResult, RunStatus
from dagengine.spec_model import RetryBackoff
from dagengine.triggers.clock import ManualClock
from dagengine.triggers.scheduler import TriggerScheduler
from dagengine.workflow import DAG, LocalRun

__all__ = ["Double", "HarnessRun", "VirtualClock", "run"]

#: A double: the node's output, or a function of its context returning it.
Double = Mapping[str, Any] | Callable[[NodeContext], Any]

_NO_BACKOFF = RetryBackoff(0.0, 1.0, 0.0)


# --- the clock --------------------------------------------------------------------------------


class _Deadline:
    """The virtual deadlines of the node attempt running in this context."""

    __slots__ = ("node_at", "node_id", "node_timeout", "run")

    def __init__(
        self, node_id: str, node_at: float | None, node_timeout: float | None, run: _RunState
    ) -> None:
        self.node_id = node_id
        self.node_at = node_at
        self.node_timeout = node_timeout
        self.run = run


_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "dagengine_testing_deadline", default=None
)


class VirtualClock(ManualClock):
    """Virtual time for :func:`run` (and a trigger clock, see the module docs): it moves only
    when something waits through it or it is told to (:meth:`advance`, :meth:`set`).

    ``start`` is the time it shows first (unix seconds or a ``datetime``; default: now).
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        if isinstance(start, datetime):
            start = start.timestamp()
        super().__init__(time.time() if start is None else float(start))
        self.start = self.now()

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock was made."""
        return self.now() - self.start

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of virtual time, at once. Inside a node run by :func:`run`, a
        wait past the node's (or the run's) timeout stops at the deadline and raises
        ``NodeTimeout`` (or ``RunCancelled``, the run then ending as timed out)."""
        if seconds < 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds}")
        target = self.now() + seconds
        deadline = _DEADLINE.get()
        if deadline is not None:
            run_at = deadline.run.deadline
            if (
                run_at is not None
                and target > run_at
                and (deadline.node_at is None or run_at <= deadline.node_at)
            ):
                self.set(max(run_at, self.now()))
                deadline.run.time_out()
                raise RunCancelled(f"node {deadline.node_id!r} was cancelled")
            if deadline.node_at is not None and target > deadline.node_at:
                self.set(max(deadline.node_at, self.now()))
                raise NodeTimeout(
                    f"node {deadline.node_id!r} timed out after "
                    f"{deadline.node_timeout:g}s (virtual time)",
                    node_id=deadline.node_id,
                    timeout=deadline.node_timeout,
                )
        self.set(target)

    def advance_schedules(self, scheduler: TriggerScheduler, seconds: float) -> int:
        """Move ``seconds`` forward, stopping at each time ``scheduler`` (a
        :class:`~dagengine.triggers.TriggerScheduler` on this clock) has an entry due and
        firing it, as if that time had passed for real; returns how many fired."""
        end = self.now() + seconds
        fired = 0
        while (due := scheduler.next_due()) is not None and due <= end:
            self.set(max(due, self.now()))
            fired += scheduler.run_pending()
        self.set(end)
        return fired + scheduler.run_pending()

    async def asleep(self, seconds: float) -> None:
        """:meth:`sleep` for ``async def`` code."""
        self.sleep(seconds)
        await asyncio.sleep(0)


# --- the run ----------------------------------------------------------------------------------


class _RunState:
    """What the wrapped nodes of one harness run share."""

    def __init__(self, clock: VirtualClock | None, timeout: float | None) -> None:
        self.clock = clock
        self.timeout = timeout
        self.deadline = None if clock is None or timeout is None else clock.now() + timeout
        self.timed_out = False
        self.handle: LocalRun | None = None
        self.calls: dict[str, list[NodeContext]] = {}
        self.lock = threading.Lock()

    def time_out(self) -> None:
        with self.lock:
            self.timed_out = True
            handle = self.handle
        if handle is not None:
            handle.cancel()

    def record(self, ctx: NodeContext) -> None:
        with self.lock:
            self.calls.setdefault(ctx.node_id, []).append(ctx)


def _double(node_id: str, double: object) -> Callable[[NodeContext], Any]:
    if callable(double):
        return double
    if double is None or isinstance(double, Mapping):
        output = dict(double) if double is not None else None
        return lambda ctx: copy.deepcopy(output)
    raise TypeError(
        f"replace[{node_id!r}] must be the node's output (a dict) or a function of its "
        f"context, got {type(double).__name__}"
    )


def _callable(node: Node) -> Callable[[NodeContext], Any] | None:
    """What a Python or custom node calls with its context (None: Lua, no-op, sub-workflow)."""
    executor = node.executor
    if isinstance(executor, PythonExecutor):
        return executor.fn
    if isinstance(executor, (LuaExecutor, NoopExecutor, SubWorkflow)):
        return None
    return executor.execute


def _clocked(
    node: Node, fn: Callable[[NodeContext], Any], state: _RunState, clock: VirtualClock
) -> Callable[[NodeContext], Any]:
    """``fn`` under virtual time: a retry first waits its backoff on the clock; the attempt
    runs with its node and run deadlines set for :meth:`VirtualClock.sleep`."""
    backoff, timeout = node.retry_backoff, node.timeout

    def call(ctx: NodeContext) -> Any:
        state.record(ctx)
        if ctx.attempt > 1:
            clock.advance(backoff.delay(ctx.attempt - 1))
        at = None if timeout is None else clock.now() + timeout
        deadline = _Deadline(ctx.node_id, at, timeout, state)
        token = _DEADLINE.set(deadline)
        try:
            out = fn(ctx)
        finally:
            _DEADLINE.reset(token)
        if inspect.isawaitable(out):
            return _with_deadline(out, deadline)
        return out

    return call


async def _with_deadline(awaitable: Awaitable[Any], deadline: _Deadline) -> Any:
    token = _DEADLINE.set(deadline)
    try:
        return await awaitable
    finally:
        _DEADLINE.reset(token)


def _recorded(fn: Callable[[NodeContext], Any], state: _RunState) -> Callable[[NodeContext], Any]:
    def call(ctx: NodeContext) -> Any:
        state.record(ctx)
        return fn(ctx)

    return call


def _harness_dag(
    workflow: DAG, replace: Mapping[str, Double], state: _RunState, clock: VirtualClock | None
) -> DAG:
    for node_id in replace:
        if node_id not in workflow.nodes:
            close = difflib.get_close_matches(str(node_id), list(workflow.nodes), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(
                f"replace names {node_id!r}, which is not a node of {workflow.id or 'the DAG'}"
                f"{hint}",
                path="replace",
            )
    dag = DAG(
        workflow.id,
        workflow.version,
        description=workflow.description,
        max_parallel=workflow.max_parallel,
        fail_fast=workflow.fail_fast,
        inputs=workflow.inputs,
        # A virtual run timeout is the harness's; a real one only guards against a hang.
        timeout=workflow.timeout if clock is None else None,
    )
    for node in workflow.nodes.values():
        changes: dict[str, Any] = {}
        fn = _callable(node)
        if node.id in replace:
            fn = _double(node.id, replace[node.id])
        if fn is not None:
            fn = _clocked(node, fn, state, clock) if clock is not None else _recorded(fn, state)
            changes["executor"] = PythonExecutor(fn)
        if clock is not None:
            changes["retry_backoff"] = _NO_BACKOFF
        dag.add_node(dataclasses.replace(node, **changes) if changes else node)
    return dag


def run(
    workflow: DAG,
    inputs: Mapping[str, Any] | None = None,
    *,
    replace: Mapping[str, Double] | None = None,
    clock: VirtualClock | None = None,
) -> HarnessRun:
    """Run ``workflow`` (a :class:`DAG` or a decorated workflow) in this process with
    ``replace``'s doubles and, with a :class:`VirtualClock`, in virtual time (see the module
    docs); return a :class:`HarnessRun` to assert on. The workflow itself is not changed."""
    if not isinstance(workflow, DAG):
        raise TypeError(f"testing.run takes a DAG or a decorated workflow, got {workflow!r}")
    if clock is not None and not isinstance(clock, VirtualClock):
        raise TypeError(f"clock must be a VirtualClock, got {type(clock).__name__}")
    state = _RunState(clock, workflow.timeout)
    dag = _harness_dag(workflow, replace or {}, state, clock)
    # No cache: a double's output must not be stored for real runs, nor a real run's
    # output stand in for the code under test.
    handle = dag.start(inputs, events=False, cache=None)
    with state.lock:
        state.handle = handle
        timed_out = state.timed_out
    if timed_out:
        handle.cancel()
    result = handle.wait()
    if clock is not None:
        result = _settle_virtual_time(workflow, result, state, clock)
    return HarnessRun(workflow, result, state.calls, clock)


def _settle_virtual_time(
    workflow: DAG, result: RunResult, state: _RunState, clock: VirtualClock
) -> RunResult:
    """Lua nodes were retried without their backoff: add the delays to the clock (Python
    nodes waited theirs before each retry); a run that timed out in virtual time ends as
    the engine's timed-out runs do."""
    for node_id, node in workflow.nodes.items():
        if _callable(node) is None and node_id not in state.calls:
            attempts = result.node_results[node_id].attempts
            for retry in range(1, attempts):
                clock.advance(node.retry_backoff.delay(retry))
    if state.timed_out:
        error = ErrorInfo("RunTimeout", f"run timed out after {state.timeout:g}s (virtual time)")
        result = dataclasses.replace(result, status=RunStatus.FAILED, error=error)
    return result


# --- asserting --------------------------------------------------------------------------------


class HarnessRun:
    """A finished harness run: the :class:`RunResult` (``result``, and its ``status``,
    ``outputs``, ``node_results``, ``error``), the contexts each Python node was called with
    (``calls[node_id]``, one per attempt), the workflow's ``output`` (a decorated workflow's
    returned reference, resolved), and assertions that say what differs when they fail."""

    __test__ = False  # not a pytest test class, whatever a test module imports

    def __init__(
        self,
        workflow: DAG,
        result: RunResult,
        calls: Mapping[str, list[NodeContext]],
        clock: VirtualClock | None,
    ) -> None:
        self.workflow = workflow
        self.result = result
        self.calls = calls
        self.clock = clock

    @property
    def status(self) -> RunStatus:
        """How the run ended."""
        return self.result.status

    @property
    def outputs(self) -> Mapping[str, Any]:
        """Outputs of the nodes that succeeded."""
        return self.result.outputs

    @property
    def node_results(self) -> Mapping[str, NodeResult]:
        """Every node's result."""
        return self.result.node_results

    @property
    def error(self) -> ErrorInfo | None:
        """The run's error, if it failed."""
        return self.result.error

    @property
    def output(self) -> Any:
        """A decorated workflow's output (its returned reference's value); ``None`` for a
        plain DAG or a workflow that returned nothing."""
        if isinstance(self.workflow, DecoratedWorkflow):
            return self.workflow.output_of(self.result)
        return None

    def node(self, node_id: str) -> NodeResult:
        """Node ``node_id``'s result (an ``AssertionError`` naming the nodes if unknown)."""
        if node_id not in self.result.node_results:
            raise AssertionError(
                f"no node {node_id!r} in this run; nodes: {', '.join(self.result.node_results)}"
            )
        return self.result.node_results[node_id]

    def _states(self) -> str:
        return ", ".join(f"{nid}={res.status.value}" for nid, res in self.node_results.items())

    def assert_succeeded(self, *node_ids: str) -> HarnessRun:
        """Assert the run succeeded (no ids), or that each of these nodes did."""
        if not node_ids:
            if self.status is not RunStatus.SUCCEEDED:
                raise AssertionError(
                    f"run {self.status.value}: {self.error}; nodes: {self._states()}"
                )
            return self
        for node_id in node_ids:
            self.assert_status(node_id, NodeStatus.SUCCEEDED)
        return self

    def assert_failed(
        self, node_id: str | None = None, *, match: str | None = None, error_type: str | None = None
    ) -> HarnessRun:
        """Assert the run failed (no id) or node ``node_id`` did; ``match`` is a regex
        searched in the error message, ``error_type`` the error's class name."""
        if node_id is None:
            if self.status is not RunStatus.FAILED:
                raise AssertionError(f"run {self.status.value}, expected failed")
            error = self.error
        else:
            error = self.assert_status(node_id, NodeStatus.FAILED).error
        what = "run" if node_id is None else f"node {node_id!r}"
        if error_type is not None and (error is None or error.type != error_type):
            raise AssertionError(f"{what} failed with {error}, expected a {error_type}")
        if match is not None and (error is None or not re.search(match, error.message)):
            raise AssertionError(f"{what} failed with {error}, which does not match {match!r}")
        return self

    def assert_skipped(self, node_id: str, *, reason: str | None = None) -> HarnessRun:
        """Assert node ``node_id`` was skipped (and, with ``reason``, why)."""
        result = self.assert_status(node_id, NodeStatus.SKIPPED)
        got = getattr(result, "skip_reason", None)
        if reason is not None and got != reason:
            raise AssertionError(f"node {node_id!r} skipped for {got!r}, expected {reason!r}")
        return self

    def assert_status(self, node_id: str, status: NodeStatus | str) -> NodeResult:
        """Assert node ``node_id`` ended in ``status``; returns its result."""
        result = self.node(node_id)
        expected = NodeStatus(status)
        if result.status is not expected:
            why = f" ({result.error})" if result.error is not None else ""
            raise AssertionError(
                f"node {node_id!r} is {result.status.value}{why}, expected {expected.value}"
            )
        return result

    def assert_output(self, node_id: str, expected: Mapping[str, Any] | list[Any]) -> HarnessRun:
        """Assert node ``node_id`` succeeded with output ``expected`` (a mapped node's is the
        list of its items' outputs)."""
        self.assert_status(node_id, NodeStatus.SUCCEEDED)
        got = self.outputs[node_id]
        want = list(expected) if isinstance(expected, list) else dict(expected)
        if (list(got) if isinstance(got, list) else dict(got)) != want:
            raise AssertionError(f"node {node_id!r} output {got!r}, expected {want!r}")
        return self

    def assert_attempts(self, node_id: str, attempts: int) -> HarnessRun:
        """Assert node ``node_id`` was tried ``attempts`` times."""
        got = self.node(node_id).attempts
        if got != attempts:
            raise AssertionError(f"node {node_id!r} tried {got} times, expected {attempts}")
        return self

    def assert_not_run(self, node_id: str) -> HarnessRun:
        """Assert node ``node_id`` never started (skipped, cancelled, or not reached)."""
        result = self.node(node_id)
        if result.attempts:
            raise AssertionError(
                f"node {node_id!r} ran ({result.attempts} attempts, {result.status.value})"
            )
        return self

    def raise_for_status(self) -> HarnessRun:
        """Raise the run's error (see :meth:`RunResult.raise_for_status`) unless it succeeded."""
        self.result.raise_for_status()
        return self

    def __repr__(self) -> str:
        return f"<HarnessRun {self.workflow.id}: {self.status.value}; {self._states()}>"

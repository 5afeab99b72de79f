"""The invoke trampoline: what the core calls, on its worker threads, for every ``python``
node of a run. It builds the node's :class:`~dagengine.nodes.NodeContext`, calls the node (an
``async def`` node on the caller's loop or its own, cancelled with the node), checks the
output is a dict with str keys or ``None``, and optionally captures the attempt's log lines.
:func:`make_invoke` is importable from :mod:`dagengine.workflow` too."""

from __future__ import annotations

import asyncio
import atexit
import inspect
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from dagengine import _core
from dagengine.exceptions import SubWorkflowError
from dagengine.node_logs import NodeLogQueue, NodeLogStore, capture, captured
from dagengine.nodes import NodeContext, NodeOutput, SubWorkflow, SubWorkflowRunner
from dagengine.tracing import node_span

if TYPE_CHECKING:
    from dagengine._core import CancelToken, ParentOutputs

__all__ = ["POLL_SECONDS", "make_invoke"]

# How long one wait on the core lasts before Python gets a chance to handle signals (Ctrl-C)
# or deliver events; short enough to feel instant, long enough to cost nothing.
POLL_SECONDS = 0.05


def _describe(value: object) -> str:
    return type(value).__name__


def _check_output(node_id: str, out: object) -> NodeOutput:
    if out is None:
        return None
    if type(out) is dict or isinstance(out, dict):
        for key in out:
            if type(key) is not str:
                raise TypeError(
                    f"node {node_id} returned a dict with a {_describe(key)} key {key!r}; "
                    "output keys must be str"
                )
        return out
    raise TypeError(f"node {node_id} returned {_describe(out)}; expected a dict or None")


def _bad_when(node_id: str, value: object) -> TypeError:
    return TypeError(f"node {node_id!r}: when must return a bool, got {_describe(value)} {value!r}")


def _check_when(fn: Any, when: Any, ctx: NodeContext) -> bool | BaseException:
    """A node's condition on its context: whether it held; with ``fn`` (the node's call
    follows), its exception is returned instead of raised (the core fails the node without
    a retry), without ``fn`` it is raised."""
    try:
        held = when(ctx)
        if held is not True and held is not False:
            raise _bad_when(ctx.node_id, held)
    except BaseException as exc:
        if fn is None:
            raise
        return exc
    return held


async def _drive(awaitable: Awaitable[Any], cancel: CancelToken | None) -> Any:
    """Await ``awaitable``, cancelling it when the node's cancel token is set (run cancelled or
    node timed out), so an ``async def`` node stops instead of running on unobserved."""
    task = asyncio.ensure_future(awaitable)
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_SECONDS)
        if cancel is not None and cancel.is_set and not task.done():
            task.cancel()
    return task.result()


def _run_subworkflow(
    sub: SubWorkflow, ctx: NodeContext, runner: SubWorkflowRunner | None
) -> NodeOutput:
    if runner is None:
        raise SubWorkflowError(
            f"sub-workflow node {ctx.node_id} needs an orchestrator to resolve {sub.reference}",
            node_id=ctx.node_id,
            reference=sub.reference,
        )
    return runner(sub, ctx)


def _wait_idle(timeout: float) -> bool:
    """At exit: wait (at most ``timeout`` seconds) until no Python node call is in progress.

    A run can end (timeout, cancellation) while an abandoned attempt is still inside Python
    on a core worker thread; if the interpreter finalizes under it, the process aborts. So
    such attempts get a bounded grace period to notice ``ctx.cancelled`` and return. The
    core counts the calls (``_core.calls_in_flight``: an atomic around each call into the
    trampoline; counting here, in Python, cost more than a trivial node's own call)."""
    deadline = time.monotonic() + timeout
    while _core.calls_in_flight():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_EXIT_POLL)
    return True


# How often the wait at exit looks at the count.
_EXIT_POLL = 0.002
# Longer than any sane reaction to ctx.cancelled, short enough not to hang an exiting process.
atexit.register(_wait_idle, 5.0)


def make_invoke(
    loop: asyncio.AbstractEventLoop | None,
    runner: SubWorkflowRunner | None,
    logs: NodeLogQueue | NodeLogStore | None = None,
) -> _core.Invoke:
    """The trampoline the core calls for every ``python`` node of one run.

    ``loop`` is the caller's event loop for :meth:`DAG.run_async` (coroutines run there, so
    async nodes share the caller's loop and its resources); ``None`` runs each coroutine with
    ``asyncio.run`` on the worker thread. With ``logs``, each attempt's ``logging`` records and
    ``print`` output are captured (:mod:`dagengine.node_logs`) into a buffer ``logs`` makes
    and handed back to it when the attempt returns (a local run's queue also takes a running
    attempt's lines as it goes; an engine process's store keeps them for the core).
    Without ``logs`` the trampoline has a ``finish`` (see there): the core then calls the
    nodes (and their conditions, checked first on the same context) itself.
    """
    if logs is not None:
        return _capturing_invoke(loop, runner, logs)

    def invoke(
        fn: Any,
        node_id: str,
        run_id: str,
        attempt: int,
        inputs: Mapping[str, Any],
        results: ParentOutputs,
        cancel: CancelToken,
        item: tuple[int, Any] | None = None,
        when: Any = None,
    ) -> NodeOutput | bool | BaseException:
        ctx = NodeContext(inputs, results, node_id, run_id, attempt, cancel, item)
        if when is not None:
            # The node's condition, on the context the node gets if it holds
            # (_check_when, inline).
            try:
                held = when(ctx)
                if held is not True and held is not False:
                    raise _bad_when(node_id, held)
            except BaseException as exc:
                if fn is None:
                    raise
                return exc
            if held is False or fn is None:
                return held
        out = _run_subworkflow(fn, ctx, runner) if type(fn) is SubWorkflow else fn(ctx)
        if out is None:
            return None
        if type(out) is dict:
            return _check_output(node_id, out)
        return finish(node_id, out, cancel)

    def finish(node_id: str, out: object, cancel: CancelToken) -> NodeOutput:
        """What a node returned when it is neither ``None`` nor a dict with str keys: an
        awaitable is awaited (cancelled with the node), then the output is checked. The
        core calls a node and its condition itself (``fn(ctx)``, the context built
        natively: the trampoline's frame cost more than a trivial node's own call), and
        hands such a value here."""
        if inspect.isawaitable(out):
            if loop is None:
                out = asyncio.run(_drive(out, cancel))
            else:
                future = asyncio.run_coroutine_threadsafe(_drive(out, cancel), loop)
                out = future.result()
        return _check_output(node_id, out)

    invoke.finish = finish  # type: ignore[attr-defined]
    return invoke


def _capturing_invoke(
    loop: asyncio.AbstractEventLoop | None,
    runner: SubWorkflowRunner | None,
    logs: NodeLogQueue | NodeLogStore,
) -> _core.Invoke:
    """:func:`make_invoke`'s trampoline, capturing each attempt's output into ``logs``."""
    new_buffer, done = logs.new_buffer, logs.done

    def invoke(
        fn: Any,
        node_id: str,
        run_id: str,
        attempt: int,
        inputs: Mapping[str, Any],
        results: ParentOutputs,
        cancel: CancelToken,
        item: tuple[int, Any] | None = None,
        when: Any = None,
    ) -> NodeOutput | bool | BaseException:
        buffer = new_buffer(node_id, attempt, cancel)
        try:
            trace = cancel.trace_context
            span = None if trace is None else node_span(trace, run_id, node_id, attempt)
            with capture(buffer, span):
                ctx = NodeContext(inputs, results, node_id, run_id, attempt, cancel, item)
                if when is not None:
                    # Its lines and the node's are the attempt's.
                    held = _check_when(fn, when, ctx)
                    if held is not True or fn is None:
                        return held
                out = _run_subworkflow(fn, ctx, runner) if type(fn) is SubWorkflow else fn(ctx)
                if out is None or type(out) is dict:
                    return _check_output(node_id, out)
                if inspect.isawaitable(out):
                    if loop is None:  # asyncio.run's task copies this context, buffer and all
                        out = asyncio.run(_drive(out, cancel))
                    else:  # the loop's task starts from the loop's context: carry the buffer
                        coro = captured(_drive(out, cancel), buffer)
                        out = asyncio.run_coroutine_threadsafe(coro, loop).result()
                return _check_output(node_id, out)
        finally:
            if buffer.lines:
                done(buffer, run_id, node_id, attempt)

    return invoke


def inline_ok(fn: object) -> bool:
    """Whether a node's callable (or its condition's) may be called on the thread that drives
    a run (``DAG.run``): a synchronous one may; an ``async def`` one (it needs an event loop
    of its own there) or a sub-workflow (it may wait long on an orchestrator) goes to the
    core's Python threads."""
    return type(fn) is not SubWorkflow and not inspect.iscoroutinefunction(fn)

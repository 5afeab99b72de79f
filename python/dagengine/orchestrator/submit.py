"""Starting a run from an event loop (the HTTP API's ``POST /workflows/{id}/runs`` and HTTP
triggers): no thread hand-off, and the run's acceptance committed with the store's next group.

:meth:`Orchestrator.execute_workflow` with ``wait=False`` commits the run before it returns
(:meth:`store.flush() <dagengine.orchestrator.store.protocol.Store.flush>`, a blocking
commit): called from the event loop it had to run on a worker thread, and each request held
one through its commit. :func:`submit` queues the run on the loop's own thread (queueing is
in-memory work: the run joins the store's write-behind queue and the dispatcher's queue or an
engine) and awaits a fence the store's writer completes once the group holding the run's
creation is committed (:meth:`~dagengine.orchestrator.store.writer.WriteBehind.when_committed`):
requests that arrive together share one commit, and an acknowledged run survives ``kill -9``
exactly as before. An executor that is not an in-process :class:`Orchestrator` over such a
store (a remote client, a store without the fence) is called on a worker thread, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from dagengine.exceptions import StoreError
from dagengine.orchestrator.orchestrator import Orchestrator
from dagengine.tracing import with_trace_context

__all__ = ["committed", "submit"]


def _inline(executor: Any) -> bool:
    """Whether runs of ``executor`` can be queued on the loop and fenced in its store."""
    return isinstance(executor, Orchestrator) and hasattr(executor.store, "when_committed")


async def submit(
    executor: Any,
    workflow_id: str,
    inputs: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    durable: bool = True,
    **options: Any,
) -> Any:
    """Start a run of ``workflow_id`` through ``executor`` and return its handle once the run
    is committed to the store (with ``durable``; without, the run is committed with the next
    group, which is enough for a caller that only answers with the run's end: that end is
    reported once committed, after the run's creation). ``headers`` (lower-case) carry the
    request's trace context; ``options`` are :meth:`Orchestrator.execute_workflow`'s
    (``version``, ``key``, ``timeout``). Domain errors are raised as they are."""
    if not _inline(executor):
        return await run_in_threadpool(
            with_trace_context(headers, executor.execute_workflow),
            workflow_id,
            inputs,
            wait=False,
            **options,
        )
    wv = executor.registry.get(workflow_id, options.pop("version", None))
    handle = with_trace_context(headers, executor._submit)(
        wv, dict(inputs), durable=False, **options
    )
    if durable:
        await committed(executor)
    return handle


async def committed(executor: Any) -> None:
    """Return once everything ``executor``'s store has queued so far (but events) is
    committed; :class:`StoreError` if that commit fails. At once for an executor whose runs
    :func:`submit` does not queue on the loop (they are committed before they are handed
    back)."""
    if not _inline(executor):
        return
    loop = asyncio.get_running_loop()
    fence: asyncio.Future[bool] = loop.create_future()

    def settle(recorded: bool) -> None:
        if not fence.done():  # (the request may have gone meanwhile: cancelled)
            fence.set_result(recorded)

    def done(recorded: bool) -> None:
        with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody waits)
            loop.call_soon_threadsafe(settle, recorded)

    store = executor.store
    store.when_committed(done)
    if not await fence:
        raise StoreError(
            f"the store cannot commit (it will try again): {store.write_error or 'unknown'}"
        )

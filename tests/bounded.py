"""Calls made side by side under load, with every wait bounded: a call that never returns (a
run the code under test lost: its waiter is never told) fails the test with a message saying
how many and which, instead of hanging it.

(``with ThreadPoolExecutor(...)`` hung such a test for ever: leaving the block, and the
interpreter's exit after it, wait for every worker thread, and a worker waiting for a lost run
never ends. These workers are daemon threads: one stuck in a lost call is left behind, and the
test goes on to fail and clean up.)
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

#: Seconds a test waits for the calls of a load to end, then for a teardown step.
LOAD_TIMEOUT = 90.0
STEP_TIMEOUT = 60.0


class Calls:
    """``workers`` daemon threads running the calls given to :meth:`submit`; :meth:`close`
    (or leaving a ``with`` block) cancels the calls not started and waits for none."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        for index in range(workers):
            threading.Thread(target=self._work, name=f"bounded-call-{index}", daemon=True).start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on a worker; its future."""
        if self._closed:
            raise RuntimeError("these calls are closed")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, fn, args))
        return future

    def close(self) -> None:
        self._closed = True
        for _ in range(64):  # (more than any test's workers: each ends on one)
            self._queue.put(None)

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def results(
    futures: Sequence[concurrent.futures.Future[Any]],
    what: str,
    timeout: float = LOAD_TIMEOUT,
    name: Callable[[int], str] | None = None,
) -> list[Any]:
    """The results of ``futures`` (each call's exception raised as it was), once all have
    ended; fails naming ``what`` and the first calls (``name(index)``, default their index)
    that had not ended after ``timeout`` seconds."""
    _done, pending = concurrent.futures.wait(futures, timeout=timeout)
    if pending:
        stuck = [i for i, future in enumerate(futures) if future in pending]
        names = ", ".join((name or str)(i) for i in stuck[:5])
        pytest.fail(
            f"{len(pending)} of {len(futures)} {what} had not ended after {timeout:.0f} s "
            f"(lost?): {names}{', ...' if len(stuck) > 5 else ''}"
        )
    return [future.result() for future in futures]


def within(fn: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
    """``fn()`` on a daemon thread; its result, or fails naming ``what`` if it has not
    returned after ``timeout`` seconds (a teardown step stuck on a lost run)."""
    with Calls(1) as calls:
        (result,) = results([calls.submit(fn)], what, timeout)
    return result


def each_within(fns: Iterable[Callable[[], Any]], what: str, timeout: float = STEP_TIMEOUT) -> None:
    """:func:`within` for each of ``fns`` side by side (a teardown of several), all tried
    even when one fails or hangs."""
    items = list(fns)
    with Calls(len(items) or 1) as calls:
        results([calls.submit(fn) for fn in items], what, timeout)

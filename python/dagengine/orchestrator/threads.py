"""The threads an orchestrator runs its work on: :class:`RunThreads`, the threads in-process
runs block while they run, and :class:`LoopThread`, the event loop of its remote engines'
calls other than runs. (Re-exported by :mod:`dagengine.orchestrator.backends`, their user.)
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "RunThreads"]

log = logging.getLogger("dagengine.orchestrator")
T = TypeVar("T")


#: Every live :class:`RunThreads`: at the interpreter's exit their runs are waited for, as
#: ``ThreadPoolExecutor``'s were (a script that never stopped its orchestrator still gets its
#: in-process runs to their end).
_LIVE_RUN_THREADS: weakref.WeakSet[RunThreads] = weakref.WeakSet()


def _finish_run_threads() -> None:
    for threads in list(_LIVE_RUN_THREADS):
        threads.shutdown(wait=True)


# Before non-daemon threads are joined, like concurrent.futures (after them, atexit's would
# be too late: the runs' threads are daemons).
getattr(threading, "_register_atexit", atexit.register)(_finish_run_threads)


class RunThreads:
    """The threads in-process runs block while they run: started as needed (when none is
    idle), up to ``max_threads``, then kept for the next runs. A run reports its end through
    its own future, so a submission creates none: ``ThreadPoolExecutor`` made a future (with
    its condition and lock) per run and went through a semaphore's condition twice per run,
    ~2% of a serving process's GIL time at a thousand runs a second. At the interpreter's exit
    the runs in flight and queued are waited for, as the executor's were."""

    def __init__(self, name: str, max_threads: int = 1024) -> None:
        self._name = name
        self._max = max_threads
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads that are waiting or about to wait for a job
        self._closed = False
        _LIVE_RUN_THREADS.add(self)

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on one of the threads (``RuntimeError`` once shut down)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot start a run after shutdown")
            self._jobs.put((fn, args))
            if self._idle:
                self._idle -= 1  # that thread takes it
                return
            if len(self._threads) >= self._max:
                return  # the next thread to finish takes it
            thread = threading.Thread(
                target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            # Started under the lock: a shutdown on another thread joins only started ones.
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # (a run settles itself; this is a bug, not the run's end)
                log.exception("an in-process run's thread failed")
            del job, fn, args  # (nothing of the last run is kept alive while idle)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new runs; the threads finish the runs they have, then end (waited for with
        ``wait``)."""
        with self._lock:
            threads = [] if self._closed else list(self._threads)
            self._closed = True
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (a dependency except on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """One asyncio event loop on a daemon thread, shared by an orchestrator's remote engines
    for their calls other than runs (health checks, info, cancels without a session, and
    :meth:`RemoteBackend.execute`): grpc.aio objects live on it."""

    def __init__(self, name: str = "dagengine-remote") -> None:
        self.loop = _new_event_loop()
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def _ensure(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self.loop.run_forever, name=self._name, daemon=True
                )
                self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its future is tracked until it is done."""
        self._ensure()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop thread (grpc.aio objects live there)."""
        self._ensure()
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (never from the loop itself)."""
        return self.submit(coro).result(timeout)

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the submitted coroutines to finish."""
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout=timeout)

    def stop(self) -> None:
        """Stop the loop and its thread."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()

"""The loop thread that runs remote attempts: spawns from many threads, drain, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest
from dagengine.orchestrator.backends import LoopThread


def test_spawns_from_many_threads_all_run_and_drain_waits_for_them() -> None:
    loop = LoopThread("test-loop")
    done: list[int] = []
    lock = threading.Lock()
    release = asyncio.Event()

    async def job(i: int) -> None:
        await release.wait()
        with lock:
            done.append(i)

    def spawner(base: int) -> None:
        for i in range(base, base + 250):
            loop.spawn(job(i))

    threads = [threading.Thread(target=spawner, args=(k * 250,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.call(release.set)
    loop.drain(timeout=10)
    try:
        assert sorted(done) == list(range(1000))  # every spawn ran, none twice
    finally:
        loop.stop()


def test_drain_returns_at_its_timeout_when_a_task_never_ends() -> None:
    loop = LoopThread("test-loop")
    never = asyncio.Event()
    loop.spawn(never.wait())
    loop.drain(timeout=0.2)  # must return although the task is still waiting
    loop.call(never.set)
    loop.drain(timeout=5)
    loop.stop()


def test_spawning_on_a_stopped_loop_fails_and_leaves_nothing_behind() -> None:
    loop = LoopThread("test-loop")
    loop.run(asyncio.sleep(0), timeout=5)
    loop.stop()

    async def job() -> None:
        raise AssertionError("must not run")

    coro = job()
    with pytest.raises(RuntimeError):
        loop.spawn(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning later

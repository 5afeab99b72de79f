"""Backends: the loop thread for remote calls other than runs, and a remote engine's runs
launched over its Rust-driven session (real engine processes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dagengine.engine import build_run_request, encoded_workflow_field, workflow_to_proto
from dagengine.exceptions import EngineBusy, EngineUnavailable, MessageTooLarge
from dagengine.orchestrator.backends import (
    Engine,
    Job,
    LocalBackend,
    LoopThread,
    RemoteBackend,
    RunThreads,
)
from dagengine.orchestrator.cache import EntriesCache
from dagengine.results import RunResult, RunStatus
from dagengine.v1 import engine_pb2 as pb
from dagengine.workflow import DAG
from processes import EngineProcess, wait_for

GOOD = {
    "id": "good",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return {v = inputs.x + 1}"},
        {"id": "b", "deps": ["a"], "lua": "return {w = results.a.v * 2}"},
    ],
}
SPIN = {"id": "spin", "version": "1.0.0", "nodes": [{"id": "s", "lua": "while true do end"}]}


def test_drain_returns_at_its_timeout_when_a_coroutine_never_ends() -> None:
    loop = LoopThread("test-loop")
    never = asyncio.Event()
    loop.submit(never.wait())
    loop.drain(timeout=0.2)  # must return although the coroutine is still waiting
    loop.call(never.set)
    loop.drain(timeout=5)
    assert loop.run(asyncio.sleep(0, result=7), timeout=5) == 7
    loop.stop()


def job(spec: dict[str, Any], inputs: dict[str, Any], **kwargs: Any) -> Job:
    return Job(
        run_id=kwargs.pop("run_id", uuid.uuid4().hex),
        attempt=kwargs.pop("attempt", 1),
        workflow_id=spec["id"],
        version=spec["version"],
        dag=DAG.from_spec(spec),
        spec=workflow_to_proto(spec),
        inputs=inputs,
        **kwargs,
    )


class Ends:
    """What a launched run reported: its bursts and its one end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bursts: dict[str, list[list[pb.RunEvent]]] = {}
        self.ends: dict[str, list[tuple[RunResult | None, BaseException | None]]] = {}

    def launch(self, backend: RemoteBackend, j: Job) -> None:
        def on_wire(batch: Sequence[pb.RunEvent]) -> None:
            with self.lock:
                self.bursts.setdefault(j.run_id, []).append(list(batch))

        def on_end(result: RunResult | None, exc: BaseException | None) -> None:
            with self.lock:
                self.ends.setdefault(j.run_id, []).append((result, exc))

        backend.launch(j, on_wire, on_end)

    def spin(self, backend: RemoteBackend) -> Job:
        """Launch a run that spins until it is stopped; return once it runs."""
        spin = job(SPIN, {})
        self.launch(backend, spin)
        wait_for(lambda: spin.run_id in self.bursts, "the spin to start")
        return spin

    def ended(self, run_id: str) -> bool:
        with self.lock:
            return run_id in self.ends

    def end(self, run_id: str) -> tuple[RunResult | None, BaseException | None]:
        with self.lock:
            (only,) = self.ends[run_id]  # exactly one end
            return only


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread("test-remote")
    try:
        yield lt
    finally:
        lt.stop()


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    proc = EngineProcess("--engine-id", "backend-engine", "--capacity", "64")
    try:
        yield proc
    finally:
        proc.kill()


def test_launched_runs_end_once_each_with_their_results(
    engine: EngineProcess, loop: LoopThread
) -> None:
    backend = RemoteBackend("e", engine.address, 64, loop)
    ends = Ends()
    jobs = [job(GOOD, {"x": i}) for i in range(100)]
    for j in jobs:
        ends.launch(backend, j)
    wait_for(lambda: all(ends.ended(j.run_id) for j in jobs), "100 ends")
    for i, j in enumerate(jobs):
        result, exc = ends.end(j.run_id)
        assert exc is None
        assert result is not None
        assert result.status is RunStatus.SUCCEEDED
        assert result.outputs["b"] == {"w": (i + 1) * 2}
        events = [e for burst in ends.bursts[j.run_id] for e in burst]
        succeeded = [e.node_id for e in events if e.kind == pb.NODE_SUCCEEDED]
        assert sorted(succeeded) == ["a", "b"]
        # The result is in the last burst, and comes as JSON text too (result_json).
        assert events[-1].HasField("result")
        assert events[-1].result.result_json
    backend.close()


def test_a_request_is_the_one_build_run_request_makes(
    engine: EngineProcess, loop: LoopThread
) -> None:
    backend = RemoteBackend("e", engine.address, 64, loop)
    j = job(GOOD, {"x": 1}, completed={"a": {"v": 2}}, deadline=2e9, depth=1, parent_run_id="p")
    encoded = backend._encode(j)
    assert j.spec is not None
    expected = build_run_request(
        j.spec,
        j.inputs,
        run_id=j.run_id,
        completed=j.completed,
        deadline=j.deadline,
        depth=1,
        parent_run_id="p",
        result_json=True,
    )
    assert pb.RunRequest.FromString(encoded) == expected
    # The spec is encoded once per workflow version.
    assert backend._encode(job(GOOD, {"x": 2}, run_id="other")) != encoded
    assert len(backend._specs) == 1
    backend.close()


def test_a_request_over_the_size_limit_is_refused_before_anything_goes_out(
    engine: EngineProcess, loop: LoopThread
) -> None:
    backend = RemoteBackend("e", engine.address, 64, loop, max_message_bytes=4096)
    ends = Ends()
    j = job(GOOD, {"x": 1, "pad": "x" * 5000})
    with pytest.raises(MessageTooLarge, match="over the client's max_message_bytes of 4096"):
        ends.launch(backend, j)
    assert not ends.ended(j.run_id)
    small = job(GOOD, {"x": 1})
    ends.launch(backend, small)  # the session was not harmed
    wait_for(lambda: ends.ended(small.run_id), "the small run's end")
    assert ends.end(small.run_id)[1] is None
    backend.close()


def test_a_run_the_engine_refuses_ends_with_its_refusal(loop: LoopThread) -> None:
    engine = EngineProcess("--engine-id", "tiny", "--capacity", "1")
    try:
        backend = RemoteBackend("tiny", engine.address, 1, loop)
        ends = Ends()
        spin = ends.spin(backend)
        extra = job(GOOD, {"x": 1})
        ends.launch(backend, extra)
        wait_for(lambda: ends.ended(extra.run_id), "the refusal")
        result, exc = ends.end(extra.run_id)
        assert result is None
        assert isinstance(exc, EngineBusy)
        backend.cancel(spin.run_id)  # over the session
        wait_for(lambda: ends.ended(spin.run_id), "the cancelled spin's end")
        result, exc = ends.end(spin.run_id)
        assert exc is None
        assert result is not None
        assert result.status is RunStatus.CANCELLED
        backend.close()
    finally:
        engine.kill()


def test_an_abandoned_run_ends_at_once_and_what_comes_later_is_ignored(
    engine: EngineProcess, loop: LoopThread
) -> None:
    backend = RemoteBackend("e", engine.address, 64, loop)
    ends = Ends()
    spin = job(SPIN, {})
    ends.launch(backend, spin)
    backend.abandon(spin.run_id)
    result, exc = ends.end(spin.run_id)  # ended on the caller's thread, before returning
    assert result is None
    assert isinstance(exc, EngineUnavailable)
    assert "stopped answering" in str(exc)
    backend.cancel(spin.run_id)  # no longer on the session: a Cancel call
    wait_for(lambda: spin.run_id not in _active(backend), "the spin to be cancelled")
    good = job(GOOD, {"x": 3})
    ends.launch(backend, good)
    wait_for(lambda: ends.ended(good.run_id), "the next run's end")
    assert len(ends.ends[spin.run_id]) == 1  # the spin's own end never came through
    backend.close()


def test_abandon_all_ends_every_run_and_the_next_run_opens_a_new_session(
    engine: EngineProcess, loop: LoopThread
) -> None:
    backend = RemoteBackend("e", engine.address, 64, loop)
    ends = Ends()
    spins = [job(SPIN, {}) for _ in range(3)]
    for j in spins:
        ends.launch(backend, j)
    first = backend._session
    assert sorted(backend.abandon_all()) == sorted(j.run_id for j in spins)
    for j in spins:
        _result, exc = ends.end(j.run_id)
        assert isinstance(exc, EngineUnavailable)
    # Closing the session cancelled the spins on the engine.
    wait_for(lambda: not _active(backend), "the spins to be cancelled")
    good = job(GOOD, {"x": 4})
    ends.launch(backend, good)
    assert backend._session is not None
    assert backend._session is not first
    wait_for(lambda: ends.ended(good.run_id), "the run on the new session")
    assert ends.end(good.run_id)[1] is None
    backend.close()


def test_a_lost_engine_ends_its_runs_unavailable(loop: LoopThread) -> None:
    engine = EngineProcess("--engine-id", "doomed")
    try:
        backend = RemoteBackend("doomed", engine.address, 10, loop)
        ends = Ends()
        spins = [job(SPIN, {}) for _ in range(2)]
        for j in spins:
            ends.launch(backend, j)
        wait_for(lambda: all(j.run_id in ends.bursts for j in spins), "the spins to start")
        engine.kill()
        wait_for(lambda: all(ends.ended(j.run_id) for j in spins), "the runs' ends")
        for j in spins:
            result, exc = ends.end(j.run_id)
            assert result is None
            assert isinstance(exc, EngineUnavailable)
            assert "session" in str(exc)
        # A run after the loss fails too (nothing listens at the address any more).
        late = job(GOOD, {"x": 1})
        ends.launch(backend, late)
        wait_for(lambda: ends.ended(late.run_id), "the late run's end")
        assert isinstance(ends.end(late.run_id)[1], EngineUnavailable)
        backend.close()
    finally:
        engine.kill()


def _active(backend: RemoteBackend) -> tuple[str, ...]:
    async def info() -> tuple[str, ...]:
        return (await backend._client.info()).active_run_ids

    return backend._loop.run(info(), timeout=10)


def test_a_run_an_earlier_attempt_of_still_holds_is_busy_not_failed(
    engine: EngineProcess, loop: LoopThread
) -> None:
    """An abandoned attempt may still run on its engine when the run comes back to it: the
    engine refuses the run as ALREADY_EXISTS, which is the orchestrator's cue to wait and
    retry (EngineBusy), not a failure of the run."""
    first = RemoteBackend("e", engine.address, 64, loop)
    second = RemoteBackend("e", engine.address, 64, loop)  # another session
    ends = Ends()
    spin = ends.spin(first)
    again = job(SPIN, {}, run_id=spin.run_id, attempt=2)
    Ends.launch(later := Ends(), second, again)
    wait_for(lambda: later.ended(spin.run_id), "the refusal")
    result, exc = later.end(spin.run_id)
    assert result is None
    assert isinstance(exc, EngineBusy)
    assert "already active" in str(exc)
    first.close()
    second.close()


def test_the_size_check_counts_the_framing(engine: EngineProcess, loop: LoopThread) -> None:
    limit = 4096
    backend = RemoteBackend("e", engine.address, 64, loop, max_message_bytes=limit)
    spec_field = len(encoded_workflow_field(workflow_to_proto(GOOD)))

    def sized(pad: int) -> tuple[Job, int]:
        j = job(GOOD, {"x": 1, "pad": "p" * pad})
        return j, j.request(None, result_json=True).ByteSize() + spec_field

    # Inputs that make the bare request 2 bytes under the limit: with its key and length in
    # the SessionRequest it is over, and sent it would break the whole stream.
    j, size = sized(0)
    pad = limit - 2 - size
    j, size = sized(pad)
    while size != limit - 2:
        pad += 1 if size < limit - 2 else -1
        j, size = sized(pad)
    ends = Ends()
    with pytest.raises(MessageTooLarge, match="framed"):
        ends.launch(backend, j)
    assert not ends.ended(j.run_id)
    ok = job(GOOD, {"x": 1})
    ends.launch(backend, ok)
    wait_for(lambda: ends.ended(ok.run_id), "a run on the same session")
    assert ends.end(ok.run_id)[1] is None
    backend.close()


def test_a_backend_dropped_without_close_is_collected_and_its_session_closed(
    engine: EngineProcess, loop: LoopThread
) -> None:
    import gc
    import weakref

    backend = RemoteBackend("e", engine.address, 64, loop)
    ends = Ends()
    spin = ends.spin(backend)
    assert backend._session is not None
    gone = weakref.ref(backend)
    del backend
    gc.collect()
    assert gone() is None  # the session's callbacks did not keep it alive
    # Its session was closed with it: the engine cancels the spin.
    probe = RemoteBackend("probe", engine.address, 64, loop)
    wait_for(lambda: spin.run_id not in _active(probe), "the spin to be cancelled")
    probe.close()


def test_an_in_process_run_gets_a_cache_only_when_its_dag_has_cached_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking a cache against the Cache protocol cost more than the rest of starting a
    short run: a DAG without cached nodes starts with none (its nodes just run)."""
    given: list[object] = []
    start = DAG.start

    def spy(self: DAG, *args: Any, **kwargs: Any) -> Any:
        given.append(kwargs.get("cache"))
        return start(self, *args, **kwargs)

    monkeypatch.setattr(DAG, "start", spy)
    cached = {
        "id": "cached",
        "version": "1.0.0",
        "nodes": [{"id": "a", "lua": "return {v = inputs.x}", "cache": True}],
    }
    backend = LocalBackend("local", Engine())
    entry = ("a", "k", '{"v": 1}', "r0")
    for spec, entries in ((GOOD, []), (cached, [entry])):
        result = backend.execute(
            job(spec, {"x": 1}, cache_entries=entries), lambda _: None, lambda sub, ctx: {}
        )
        assert result.ok, result.error
    assert given[0] is None
    assert isinstance(given[1], EntriesCache)


def test_run_threads_grow_while_runs_block_then_are_reused_and_shut_down() -> None:
    pool = RunThreads("test-run", max_threads=3)
    gate = threading.Event()
    started: list[int] = []
    names: set[str] = set()
    lock = threading.Lock()

    def run(i: int) -> None:
        with lock:
            started.append(i)
            names.add(threading.current_thread().name)
        gate.wait(30)

    for i in range(4):  # the fourth waits for a thread: at most three
        pool.submit(run, i)
    wait_for(lambda: len(started) == 3, "three runs on three threads")
    assert names == {"test-run_0", "test-run_1", "test-run_2"}
    gate.set()
    wait_for(lambda: len(started) == 4, "the fourth run")
    done = threading.Event()
    pool.submit(done.set)  # an idle thread takes it: no fourth thread
    assert done.wait(10)
    assert len(pool._threads) == 3
    # A failing job is logged, and its thread goes on.
    pool.submit(lambda: 1 / 0)
    again = threading.Event()
    pool.submit(again.set)
    assert again.wait(10)
    slow = threading.Event()
    pool.submit(lambda: (time.sleep(0.2), slow.set()))
    pool.shutdown(wait=True)  # waits for the run in flight
    assert slow.is_set()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(done.set)


def test_run_threads_shut_down_while_a_thread_is_being_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shutdown racing a submit that starts a thread joins only started threads (it
    raised "cannot join thread before it is started" in an orchestrator's stop)."""
    pool = RunThreads("test-race", max_threads=2)
    starting = threading.Event()
    start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        if thread.name.startswith("test-race"):
            starting.set()
            time.sleep(0.3)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    ran = threading.Event()
    submitter = threading.Thread(target=pool.submit, args=(ran.set,))
    submitter.start()
    assert starting.wait(10)
    pool.shutdown(wait=True)  # while the pool's thread is being started
    submitter.join(10)
    assert ran.is_set()


def test_in_process_runs_in_flight_are_waited_for_at_the_interpreters_exit(
    tmp_path: Path,
) -> None:
    """As with the ThreadPoolExecutor the run threads replaced: a script that never stops
    its orchestrator still has its in-process runs carried to their end."""
    marker = tmp_path / "ended"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from dagengine import DAG, Node, PythonExecutor
            from dagengine.orchestrator import Orchestrator

            def nap(ctx):
                time.sleep(0.3)
                Path({str(marker)!r}).write_text("yes")
                return {{}}

            dag = DAG()
            dag.add_node(Node("nap", [], PythonExecutor(nap)))
            orch = Orchestrator(store=":memory:")
            orch.register_workflow("w", "1.0.0", dag)
            orch.execute_workflow("w", wait=False)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert marker.read_text() == "yes"

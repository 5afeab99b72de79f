"""Losing things mid-run, with real processes, sockets and SQLite files: an engine SIGKILLed
during 300 runs, and the orchestrator itself killed and restarted during 100 runs.

The workflow's Python nodes append a line to a ledger file when they complete (see
``failover_tasks``): a node recorded as completed by the orchestrator must appear once in the
ledger, however many times its run was dispatched. (A node that was running when its engine
died may run again: execution is at-least-once per node, exactly-once per recorded output.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagengine import EngineClient, Orchestrator, RunStatus
from dagengine.orchestrator import Monitor
from failover_tasks import SPEC
from ledger import ledger_counts
from pg import query
from processes import EngineProcess, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def test_sigkill_one_of_three_engines_during_300_runs(
    tmp_path: Path, ledger: Path, engines: Callable[[int], list[EngineProcess]]
) -> None:
    procs = engines(3)
    orch = Orchestrator(store=str(tmp_path / "store.db"), embedded_engine=False)
    try:
        for proc in procs:
            orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("ledger", "1.0.0", SPEC)
        monitor = Monitor(orch)
        redispatched = monitor.subscribe(types=["run.redispatched"], after=0)
        # Spread the runs over the engines: a key per run.
        handles = [orch.execute_workflow("ledger", {}, wait=False, key=f"k{i}") for i in range(300)]
        victim = procs[1]

        def finished() -> int:
            return sum(1 for h in handles if h.done)

        wait_for(lambda: finished() >= 60, "a fifth of the runs to finish", timeout=60)
        assert orch.engines()[victim.engine_id].active > 0, "the victim has runs to lose"
        killed_at = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        kill_seq = orch.store.last_event_seq()
        results = [h.result(timeout=120) for h in handles]
        first = redispatched.get(timeout=10)
        assert first is not None
        detect_s = first.time - killed_at

        assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 300
        assert all(dict(r.outputs)["c"] == {"sum": 3} for r in results)
        # Every node the orchestrator recorded as completed before the kill ran exactly once.
        completed_before = {
            (ev.run_id, ev.node_id)
            for ev in orch.store.events(types=["node.succeeded"], limit=100_000)
            if ev.seq <= kill_seq and ev.node_id in ("a", "b")
        }
        counts = ledger_counts(ledger)
        assert completed_before, "some nodes had completed before the kill"
        assert [k for k in completed_before if counts[k] != 1] == []
        redispatches = orch.store.events(types=["run.redispatched"], limit=100_000)
        assert redispatches, "the victim's runs were re-dispatched"
        assert all(ev.engine_id == victim.engine_id for ev in redispatches)
        duplicated = sum(1 for n in counts.values() if n > 1)
        print(
            f"\n300 runs: 300 succeeded, {len(redispatches)} re-dispatched, "
            f"{duplicated} node executions repeated (nodes running at the kill), "
            f"{len(completed_before)} recorded nodes not repeated; "
            f"detected after {detect_s * 1e3:.0f} ms"
        )
        monitor.close()
    finally:
        orch.stop()


def test_orchestrator_killed_and_restarted_during_100_runs(
    store_target: str, ledger: Path, engines: Callable[[int], list[EngineProcess]]
) -> None:
    # SIGKILL: what the orchestrator acknowledged survives in the store (SQLite's file and
    # PostgreSQL alike), and a new orchestrator resumes the rest from it.
    procs = engines(2)
    store = store_target
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    args = [
        sys.executable,
        str(HERE / "orchestrator_proc.py"),
        str(store),
        str(ledger),
        "100",
        *(p.address for p in procs),
    ]

    pumps: list[threading.Thread] = []

    def start() -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            with proc.stdout:  # closed at EOF, when the process is gone
                for line in proc.stdout:
                    lines.append(line.strip())

        pumps.append(threading.Thread(target=pump, daemon=True))
        pumps[-1].start()
        return proc, lines

    def done(lines: list[str]) -> int:
        counts = [int(line.split()[1]) for line in list(lines) if line.startswith("done ")]
        return max(counts, default=0)

    first, lines = start()
    try:
        wait_for(lambda: done(lines) >= 25, "a quarter of the runs to finish", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    # What the dead orchestrator had recorded: node outputs stored, runs finished.
    recorded = set(query(store, "SELECT run_id, node_id FROM node_outputs"))
    finished_before = dict(
        query(
            store,
            "SELECT run_id, status FROM runs WHERE status IN ('succeeded','failed','cancelled')",
        )
    )
    assert finished_before, "some runs had finished before the kill"
    unfinished_before = 100 - len(finished_before)
    assert unfinished_before > 0, "the kill came before the end"

    second, lines2 = start()
    try:
        assert second.wait(timeout=120) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=10)
    for pump in pumps:
        pump.join(timeout=10)
    assert done(lines2) == 100
    rows = query(store, "SELECT run_id, status, attempt FROM runs")
    assert len(rows) == 100, "no run lost, none submitted twice"
    assert {status for _, status, _ in rows} == {"succeeded"}
    # Runs finished before the kill kept their result (not run again).
    attempts = {run_id: attempt for run_id, _, attempt in rows}
    counts = ledger_counts(ledger)
    assert [k for k in recorded if k[1] in ("a", "b") and counts[k] != 1] == []
    assert all(counts[(run_id, "b")] == 1 for run_id in finished_before)
    resumed = sum(1 for run_id in attempts if run_id not in finished_before)
    print(
        f"\n100 runs: {len(finished_before)} finished before the kill, {resumed} resumed after "
        f"restart, all succeeded; {len(recorded)} recorded node outputs not re-run; "
        f"{sum(1 for n in counts.values() if n > 1)} node executions repeated"
    )


def test_a_standby_orchestrator_takes_over_the_runs_of_a_killed_one(
    pg_url: str,
    ledger: Path,
    engines: Callable[..., list[EngineProcess]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two orchestrators on one PostgreSQL store: the active one (a process) holds the
    store's lock; the standby (here, DAGENGINE_STORE_STANDBY=1) waits in its constructor.
    SIGKILL the active one mid-load: its session ends, the standby takes the store over and
    resumes the runs from their stored outputs; none lost, none run twice."""
    procs = engines(2, 8, 0.1)  # slow enough nodes that the kill comes mid-load
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, str(HERE / "orchestrator_proc.py"), pg_url, str(ledger), "100"]
    active = subprocess.Popen(
        [*args, *(p.address for p in procs)], stdout=subprocess.PIPE, text=True, env=env, cwd=HERE
    )
    lines: list[str] = []

    def pump() -> None:
        assert active.stdout is not None
        with active.stdout:
            for line in active.stdout:
                lines.append(line.strip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    standby: list[Orchestrator] = []
    failed: list[BaseException] = []

    def stand_by() -> None:
        try:
            standby.append(Orchestrator(store=pg_url, embedded_engine=False))
        except BaseException as exc:  # reported below
            failed.append(exc)

    monkeypatch.setenv("DAGENGINE_STORE_STANDBY", "1")
    waiter = threading.Thread(target=stand_by)
    try:
        wait_for(lambda: "submitted" in lines, "the active orchestrator's runs", timeout=60)
        waiter.start()
        wait_for(
            lambda: any(line.startswith("done ") and int(line.split()[1]) >= 25 for line in lines),
            "a quarter of the runs to finish",
            timeout=60,
        )
        assert waiter.is_alive(), "the standby must wait while the active one holds the store"
        killed = time.monotonic()
        active.send_signal(signal.SIGKILL)
        active.wait(timeout=10)
    finally:
        if active.poll() is None:
            active.kill()
            active.wait(timeout=10)
    reader.join(timeout=10)
    recorded = set(query(pg_url, "SELECT run_id, node_id FROM node_outputs"))
    finished_before = {
        row[0]
        for row in query(
            pg_url, "SELECT run_id FROM runs WHERE status IN ('succeeded','failed','cancelled')"
        )
    }
    assert 0 < len(finished_before) < 100, "the kill came mid-load"
    waiter.join(timeout=60)
    took_over = time.monotonic() - killed  # (its lock taken, the store opened, runs resumed)
    assert failed == []
    (orch,) = standby
    try:
        for i, proc in enumerate(procs):
            orch.register_engine(f"engine-{i}", proc.address)
        wait_for(
            lambda: len(orch.store.list_runs(status="succeeded", limit=200)) == 100,
            "the standby to finish every run",
            timeout=120,
        )
        rows = query(pg_url, "SELECT run_id, status FROM runs")
        assert len(rows) == 100
        assert {status for _, status in rows} == {"succeeded"}
        counts = ledger_counts(ledger)
        assert [k for k in recorded if k[1] in ("a", "b") and counts[k] != 1] == []
        assert all(counts[(run_id, "b")] == 1 for run_id in finished_before)
        print(
            f"\n100 runs: {len(finished_before)} finished before the active orchestrator was "
            f"killed, {100 - len(finished_before)} taken over by the standby, all succeeded; "
            f"{len(recorded)} recorded node outputs not re-run; the standby took over "
            f"{took_over * 1e3:.0f} ms after the kill"
        )
    finally:
        orch.stop()


def test_an_engine_full_of_runs_we_do_not_count_delays_a_run_instead_of_failing_it(
    tmp_path: Path, engines: Callable[..., list[EngineProcess]]
) -> None:
    """An engine can be full with runs the orchestrator does not count (the stale attempts of
    an engine that was cut off and registered again): its EngineBusy puts the run back in the
    queue until the engine has room, and the run succeeds."""
    (engine,) = engines(1, capacity=1, node_seconds=1.0)
    slow = {
        "id": "slow",
        "version": "1.0.0",
        "nodes": [{"id": "a", "python": "failover_tasks:record"}],
    }
    with EngineClient(engine.address) as client:
        stream = client.stream(slow, {}, run_id="outside")
        assert next(stream).kind == "run_started"  # the engine's one slot is taken
        orch = Orchestrator(store=str(tmp_path / "store.db"), embedded_engine=False)
        try:
            orch.register_engine(engine.engine_id, engine.address)
            orch.register_workflow(
                "quick",
                "1.0.0",
                {"id": "quick", "version": "1.0.0", "nodes": [{"id": "q", "noop": True}]},
            )
            handle = orch.execute_workflow("quick", {}, wait=False)
            assert stream.wait().status is RunStatus.SUCCEEDED
            result = handle.result(timeout=30)
            assert result.status is RunStatus.SUCCEEDED, result.error
            assert orch.get_run(result.run_id).attempt >= 2  # refused once, then run
        finally:
            orch.stop()

"""Multi-host fault tests on one machine: the orchestrator and each engine run in their own
network namespace with their own address (see ``netns``), engines find the orchestrator by
registering themselves (``--self-register``), and faults are real: a SIGKILLed engine, a
pulled network cable, a SIGKILLed orchestrator, an engine joining under load.

The workflow's Python nodes append ``run_id node_id engine time`` to a ledger file on the
shared filesystem when they complete (``multihost_tasks``), so the tests count how many times
each node ran, where and when. Each scenario prints one line of figures: runs submitted,
succeeded, re-dispatched, duplicated node executions (ledger count > 1), time to detect, time
to recover.

Needs root and ``ip netns`` (iproute2); skipped with the reason otherwise. CI runs as root.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from dagengine.orchestrator import Store
from hosts import EngineHost, OrchestratorHost
from multihost_tasks import counts, read_ledger

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

FINISHED_EVENTS = ("run.completed", "run.failed", "run.cancelled")
#: ENGINE_HEALTH_CHECK_INTERVAL of the orchestrator (self-registration expires after 3).
HEALTH_INTERVAL = 1.0


@pytest.fixture(scope="module", autouse=True)
def _namespaces_available() -> None:
    """Skip the whole module, with the reason, where namespaces cannot be made (fail instead
    when ``DAGENGINE_REQUIRE_MULTIHOST=1``: in CI these tests must not vanish silently)."""
    try:
        netns.available()
    except netns.NetnsUnavailable as exc:
        if os.environ.get("DAGENGINE_REQUIRE_MULTIHOST") == "1":
            pytest.fail(f"DAGENGINE_REQUIRE_MULTIHOST=1 but {exc}")
        pytest.skip(str(exc))
    netns.sweep_stale()


class Lab:
    """A network of hosts for one test: ``orch`` and engines ``e1``.. (each on the host of
    the same name), a shared ledger and store in ``tmp``. :meth:`close` kills every process
    and deletes every namespace."""

    def __init__(self, tmp: Path) -> None:
        self.net = netns.Network()
        self.ledger = tmp / "ledger.txt"
        self.ledger.touch()
        self.store = tmp / "store.db"
        self.processes: list[OrchestratorHost | EngineHost] = []
        self.orch: OrchestratorHost | None = None
        self.engines: dict[str, EngineHost] = {}

    def _host(self, name: str) -> None:
        if name not in self.net.hosts:
            self.net.add_host(name)

    def start_orchestrator(self) -> OrchestratorHost:
        """Start (or start again, on the same store and address) the orchestrator."""
        self._host("orch")
        self.orch = OrchestratorHost(self.net, "orch", self.store, interval=HEALTH_INTERVAL)
        self.processes.append(self.orch)
        return self.orch

    def start_engine(self, engine_id: str, **options: Any) -> EngineHost:
        """Start engine ``engine_id`` on its own host, registering with the orchestrator."""
        assert self.orch is not None
        self._host(engine_id)
        engine = EngineHost(
            self.net, engine_id, engine_id, self.orch.target, self.ledger, **options
        )
        self.processes.append(engine)
        self.engines[engine_id] = engine
        return engine

    def start_cluster(self, engines: int, **options: Any) -> OrchestratorHost:
        """The orchestrator and ``engines`` engines, all registered."""
        orch = self.start_orchestrator()
        for i in range(1, engines + 1):
            self.start_engine(f"e{i}", **options)
        orch.wait_engines(set(self.engines))
        return orch

    def close(self) -> None:
        """Kill every process started here, then delete the namespaces."""
        for proc in self.processes:
            proc.kill()
        self.net.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A :class:`Lab` torn down (processes killed, namespaces deleted) however the test
    ends."""
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        assert lab.net.leftovers() == [], "namespaces left behind"


def in_flight(orch: OrchestratorHost, engine_id: str) -> set[str]:
    """Runs whose latest attempt was started on ``engine_id`` and that have not finished
    (as far as the orchestrator's event lines tell)."""
    where: dict[str, str] = {}
    finished: set[str] = set()
    for line in orch.events():
        if line["event"] == "run.started":
            where[line["run_id"]] = line["engine_id"]
        elif line["event"] in FINISHED_EVENTS:
            finished.add(line["run_id"])
    return {run for run, eid in where.items() if eid == engine_id and run not in finished}


def figures(name: str, **values: Any) -> None:
    """Print the scenario's line of figures."""
    print(f"\n[multihost {name}] " + " ".join(f"{k}={v}" for k, v in values.items()))


def test_sigkill_one_of_three_engines_during_500_runs(lab: Lab) -> None:
    """Kill -9 an engine while it has runs: its runs go to the other engines, every run
    succeeds, and no node the orchestrator had recorded as completed runs again."""
    total = 500
    orch = lab.start_cluster(3)
    started = time.monotonic()
    orch.send("submit", prefix="r", count=total, rate=0)
    victim = lab.engines["e2"]
    orch.wait(
        lambda ln: (
            ln.get("event") == "progress"
            and ln["succeeded"] >= total // 5
            and bool(in_flight(orch, victim.engine_id))
        ),
        "a fifth of the runs to finish while the victim has runs",
    )
    killed_at = victim.sigkill()
    orch.wait_succeeded(total, timeout=45)
    elapsed = time.monotonic() - started
    orch.stop()

    store = Store(str(lab.store))
    try:
        runs = store.list_runs(limit=10 * total)
        assert len(runs) == total
        assert {r.status for r in runs} == {"succeeded"}
        assert all(r.result and r.result["outputs"]["c"] == {"sum": 3} for r in runs)
        moved = store.events(types=["run.redispatched"], limit=100_000)
        completed_before = {
            (ev.run_id, ev.node_id)
            for ev in store.events(types=["node.succeeded"], limit=100_000)
            if ev.time < killed_at and ev.node_id in ("a", "b")
        }
        ends = {
            ev.run_id: ev.time
            for ev in store.events(types=["run.completed"], limit=100_000)
            if ev.run_id is not None
        }
    finally:
        store.close()
    ledger = counts(read_ledger(lab.ledger))
    assert moved, "the victim's runs were re-dispatched"
    assert {ev.engine_id for ev in moved} == {victim.engine_id}
    assert completed_before, "some nodes had completed before the kill"
    assert [k for k in completed_before if ledger[k] != 1] == []
    detect = min(ev.time for ev in moved) - killed_at
    recover = max(ends[ev.run_id] for ev in moved) - killed_at
    figures(
        "sigkill-engine",
        submitted=total,
        succeeded=len(runs),
        redispatched=len(moved),
        duplicated=sum(1 for n in ledger.values() if n > 1),
        recorded_not_repeated=len(completed_before),
        detect_ms=round(detect * 1e3),
        recover_ms=round(recover * 1e3),
        wall_s=round(elapsed, 1),
    )


#: How long the cable stays out: past the registration's expiry (3 health intervals).
PARTITION_S = 3.5


def test_partitioned_engine_runs_move_and_it_is_readmitted(lab: Lab) -> None:
    """Pull an engine's cable while it has runs (its sockets stay half-open: no RST): the
    health check notices, its runs move to the other engines with a new attempt, and after the
    cable is back it registers again and gets runs. What it computed meanwhile (stale
    attempts) never reaches the store."""
    orch = lab.start_cluster(3, capacity=4, node_seconds=0.1)
    victim = lab.engines["e2"]
    orch.send("submit", prefix="r", count=200, rate=40)
    orch.wait(
        lambda ln: (
            ln.get("event") == "progress"
            and ln["succeeded"] >= 20
            and len(in_flight(orch, victim.engine_id)) >= 2
        ),
        "runs to finish while the victim has runs",
    )
    mark = orch.mark()
    down_at = time.time()
    lab.net.link_down(victim.host)
    # What the engine sends after this is lost; what it sent while `ip` ran may have arrived.
    cut_at = time.time()
    unhealthy = orch.wait(
        lambda ln: ln.get("event") == "engine.unhealthy" and ln["engine_id"] == victim.engine_id,
        "the health check to evict the cut-off engine",
        after=mark,
    )
    time.sleep(max(0.0, down_at + PARTITION_S - time.time()))  # the partition itself
    mark = orch.mark()
    up_at = time.time()
    lab.net.link_up(victim.host)
    back = orch.wait(
        lambda ln: (
            ln.get("event") in ("engine.joined", "engine.recovered")
            and ln["engine_id"] == victim.engine_id
        ),
        "the engine to be re-admitted",
        after=mark,
    )
    orch.wait_succeeded(200, timeout=40)
    # Re-admitted: it takes new runs again.
    orch.send("submit", prefix="s", count=60, rate=0)
    orch.wait_succeeded(260, timeout=40)
    readmitted_runs = {
        ln["run_id"]
        for ln in orch.events("run.started", engine_id=victim.engine_id)
        if ln["run_id"].startswith("s")
    }
    expired = bool(orch.events("engine.left", engine_id=victim.engine_id))
    orch.stop()

    store = Store(str(lab.store))
    try:
        runs = {r.run_id: r for r in store.list_runs(limit=1000)}
        moved_events = store.events(types=["run.redispatched"], limit=100_000)
        ends = collections.Counter(
            ev.run_id for ev in store.events(types=list(FINISHED_EVENTS), limit=100_000)
        )
        moved = {ev.run_id: int(ev.data["previous_attempt"]) for ev in moved_events}
        outputs = {run_id: store.node_outputs(run_id) for run_id in moved}
        # A late result of an old attempt, delivered now: refused, the run unchanged.
        late = [
            store.finish_run(run_id, attempt, "failed", None, {"type": "Stale", "message": "x"})
            for run_id, attempt in moved.items()
        ]
        late_outputs = [
            store.save_node_output(run_id, "a", attempt, {"n": -1, "engine": "stale"})
            for run_id, attempt in moved.items()
        ]
        after_late = {run_id: store.get_run(run_id) for run_id in moved}
    finally:
        store.close()
    entries = read_ledger(lab.ledger)
    ledger = counts(entries)

    # Nothing lost, each run finished once.
    assert len(runs) == 260
    assert {r.status for r in runs.values()} == {"succeeded"}
    assert set(ends.values()) == {1}, "a run finished more than once"
    # Its runs moved (after the health check evicted it) to other engines, with a new attempt.
    assert moved, "the cut-off engine's runs were re-dispatched"
    assert {ev.engine_id for ev in moved_events} == {victim.engine_id}
    assert min(ev.time for ev in moved_events) >= unhealthy["time"] - 0.05
    for run_id, previous in moved.items():
        assert runs[run_id].attempt > previous
        assert runs[run_id].engine_id != victim.engine_id
    # The engine went on computing its (now stale) attempts; none of it reached the store.
    stale = [
        e
        for e in entries
        if e.engine_id == victim.engine_id and e.run_id in moved and e.time > cut_at
    ]
    assert stale, "the cut-off engine completed nodes of stale attempts"
    for e in stale:
        assert outputs[e.run_id][e.node_id]["engine"] != victim.engine_id
        result = runs[e.run_id].result
        assert result is not None
        assert result["outputs"][e.node_id]["engine"] != victim.engine_id
    assert not any(late), "a late result of an old attempt was accepted"
    assert not any(late_outputs), "a late node output of an old attempt was accepted"
    assert all(
        rec is not None and rec.status == "succeeded" and rec.error is None
        for rec in after_late.values()
    )
    # Re-admitted after the cable was back.
    assert readmitted_runs, "the re-admitted engine got runs again"

    detect = unhealthy["time"] - down_at
    assert detect <= 2 * HEALTH_INTERVAL + 0.5, f"detected after {detect:.2f}s"
    last_moved_end = max(
        r.finished_at for r in runs.values() if r.run_id in moved and r.finished_at
    )
    figures(
        "partition-engine",
        submitted=len(runs),
        succeeded=len(runs),
        redispatched=len(moved),
        duplicated=sum(1 for n in ledger.values() if n > 1),
        stale_node_executions=len(stale),
        detect_ms=round(detect * 1e3),
        recover_ms=round((last_moved_end - down_at) * 1e3),
        partition_s=PARTITION_S,
        registration_expired=expired,
        readmit_ms=round((back["time"] - up_at) * 1e3),
        readmitted_runs=len(readmitted_runs),
    )


def test_orchestrator_restarted_during_runs(lab: Lab) -> None:
    """SIGKILL the orchestrator during runs and start it again on the same store and address:
    the engines register again on their own, runs left queued or running are resumed, runs it
    had not submitted yet are submitted; none is lost and none runs twice to completion."""
    total = 300
    orch = lab.start_cluster(3, node_seconds=0.05)
    orch.send("submit", prefix="r", count=total, rate=150)
    orch.wait(
        lambda ln: ln.get("event") == "progress" and ln["succeeded"] >= total // 5,
        "a fifth of the runs to finish",
    )
    killed_at = orch.sigkill()
    # What the dead orchestrator had recorded.
    with contextlib.closing(sqlite3.connect(f"file:{lab.store}?mode=ro", uri=True)) as db:
        recorded = set(db.execute("SELECT run_id, node_id FROM node_outputs").fetchall())
        finished_before = dict(
            db.execute(
                "SELECT run_id, finished_at FROM runs "
                "WHERE status IN ('succeeded', 'failed', 'cancelled')"
            ).fetchall()
        )
        submitted_before = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert finished_before, "some runs had finished before the kill"
    assert len(finished_before) < total, "the kill came before the end"

    again = lab.start_orchestrator()
    again.wait_engines(set(lab.engines))
    rejoined_at = max(ln["time"] for ln in again.events("engine.joined"))
    again.send("submit", prefix="r", count=total, rate=0)  # what the first one had not
    again.wait_succeeded(total, timeout=45)
    again.stop()

    store = Store(str(lab.store))
    try:
        runs = {r.run_id: r for r in store.list_runs(limit=10 * total)}
        resumed = store.events(types=["run.redispatched"], limit=100_000)
        completions = store.events(types=["run.completed"], limit=100_000)
        ends = sorted(ev.time for ev in completions if ev.time > again.ready_at)
    finally:
        store.close()
    ledger = counts(read_ledger(lab.ledger))
    assert sorted(runs) == sorted(f"r{i}" for i in range(total)), "none lost, none twice"
    assert {r.status for r in runs.values()} == {"succeeded"}
    assert max(collections.Counter(ev.run_id for ev in completions).values()) == 1
    # Finished runs kept their result and did not run again; recorded nodes did not re-run.
    assert all(runs[run_id].finished_at == at for run_id, at in finished_before.items())
    assert all(ledger[(run_id, "b")] == 1 for run_id in finished_before)
    assert [k for k in recorded if k[1] in ("a", "b") and ledger[k] != 1] == []
    restarted = [ev for ev in resumed if ev.data.get("reason") == "orchestrator restarted"]
    assert restarted, "runs left running were resumed"
    assert ends, "runs finished after the restart"
    figures(
        "restart-orchestrator",
        submitted=total,
        submitted_before_kill=submitted_before,
        succeeded=len(runs),
        finished_before_kill=len(finished_before),
        redispatched=len(restarted),
        duplicated=sum(1 for n in ledger.values() if n > 1),
        recorded_not_repeated=len(recorded),
        restart_ms=round((again.ready_at - killed_at) * 1e3),
        detect_ms=round((rejoined_at - killed_at) * 1e3),
        recover_ms=round((ends[0] - killed_at) * 1e3),
        all_done_ms=round((ends[-1] - killed_at) * 1e3),
    )


def test_engine_added_under_load_moves_only_its_share(lab: Lab) -> None:
    """Add a fourth engine while runs flow (consistent hashing, a key per run): only the keys
    the new engine now owns change owner, about 1/N of them, and it takes runs at once."""
    total = 400
    orch = lab.start_cluster(3, node_seconds=0.05)
    keys = [f"r{i}" for i in range(total)]
    probe = [f"k{i}" for i in range(10_000)]
    orch.send("submit", prefix="r", count=total, rate=100)
    orch.wait(
        lambda ln: ln.get("event") == "progress" and ln["succeeded"] >= total // 5,
        "a fifth of the runs to finish",
    )
    before = orch.request("owners", keys=keys + probe)["owners"]
    mark = orch.mark()
    added_at = time.time()
    lab.start_engine("e4", node_seconds=0.05)
    joined = orch.wait(
        lambda ln: ln.get("event") == "engine.joined" and ln["engine_id"] == "e4",
        "the new engine to register",
        after=mark,
    )
    after = orch.request("owners", keys=keys + probe)["owners"]
    first_run = orch.wait(
        lambda ln: ln.get("event") == "run.started" and ln["engine_id"] == "e4",
        "the new engine's first run",
        after=mark,
    )
    orch.wait_succeeded(total, timeout=45)
    # The same keys again, now that e4 is in: runs s<i> with the key r<i>.
    orch.send("submit", prefix="s", count=total, rate=200, key_prefix="r")
    orch.wait_succeeded(2 * total, timeout=45)
    orch.stop()

    store = Store(str(lab.store))
    try:
        runs = {r.run_id: r for r in store.list_runs(limit=10 * total)}
        moved_runs = store.events(types=["run.redispatched"], limit=100_000)
    finally:
        store.close()
    ledger = counts(read_ledger(lab.ledger))
    assert len(runs) == 2 * total
    assert {r.status for r in runs.values()} == {"succeeded"}

    def share(sample: list[str]) -> float:
        changed = [k for k in sample if before[k] != after[k]]
        assert {after[k] for k in changed} <= {"e4"}, "keys moved only to the new engine"
        return len(changed) / len(sample)

    n = 4
    run_keys, probe_keys = share(keys), share(probe)
    assert abs(probe_keys - 1 / n) <= 0.07, f"{probe_keys:.3f} of 10k keys moved"
    assert abs(run_keys - 1 / n) <= 0.1, f"{run_keys:.3f} of the run keys moved"
    # Where the runs actually went (bounded load may divert a run from its key's owner).
    observed = sum(
        1 for k in keys if runs[k].engine_id != runs["s" + k.removeprefix("r")].engine_id
    )
    on_owner = sum(1 for k in keys if runs["s" + k.removeprefix("r")].engine_id == after[k])
    figures(
        "add-engine",
        submitted=len(runs),
        succeeded=len(runs),
        redispatched=len(moved_runs),
        duplicated=sum(1 for c in ledger.values() if c > 1),
        moved_run_keys=f"{run_keys:.3f}",
        moved_10k_keys=f"{probe_keys:.3f}",
        expected=f"{1 / n:.3f}",
        runs_changed_engine=f"{observed / total:.3f}",
        second_runs_on_owner=f"{on_owner / total:.3f}",
        detect_ms=round((joined["time"] - added_at) * 1e3),
        recover_ms=round((first_run["time"] - added_at) * 1e3),
    )

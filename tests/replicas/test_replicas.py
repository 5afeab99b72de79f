"""Orchestrator replicas on one PostgreSQL database, in one process: events of every replica
reach every replica's subscribers in the store's order, a run taken over from a replica
refuses that replica's late writes, a cron fire time is claimed once, and replicas and a
single orchestrator exclude each other."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagengine import DAG, Node, NodeContext, Orchestrator, PythonExecutor
from dagengine.exceptions import ConfigError, StoreError
from dagengine.orchestrator.config import Config
from dagengine.orchestrator.store import PostgresStore
from pg import query
from processes import wait_for

SPEC = {
    "id": "w",
    "version": "1.0.0",
    "nodes": [
        {"id": "x", "lua": "return {v = inputs.i}"},
        {"id": "y", "deps": ["x"], "lua": "return {v = results.x.v + 1}"},
    ],
}


def _config(ttl: float = 1.5) -> Config:
    return dataclasses.replace(Config.local_from_env(), replica=True, lease_ttl=ttl)


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[Orchestrator]]:
    started = [Orchestrator(store=pg_url, config=_config()) for _ in range(2)]
    try:
        started[0].register_workflow("w", "1.0.0", SPEC)
        yield started
    finally:
        for orch in started:
            orch.stop()


def test_any_replica_sees_the_events_of_all_in_one_order(replicas: list[Orchestrator]) -> None:
    a, b = replicas
    # From one cursor: a live subscription starts "about now" on each replica.
    start = a.store.last_event_seq()
    subs = [orch.events.subscribe(after=start) for orch in replicas]
    # b runs a workflow registered on a (it finds the version in the store).
    ran = [a.execute_workflow("w", {"i": 1}), b.execute_workflow("w", {"i": 2})]
    assert [r.status.value for r in ran] == ["succeeded", "succeeded"]
    seen: list[list[tuple[int, str, str | None]]] = [[], []]
    for sub, got in zip(subs, seen, strict=True):
        wait_for(
            lambda sub=sub, got=got: _drain(sub, got) >= 2,
            "both runs' ends on every replica",
        )
    # The same events, in the same order, numbered without gaps, on both replicas.
    assert seen[0] == seen[1]
    seqs = [seq for seq, _, _ in seen[0]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for result in ran:
        types = [kind for _, kind, run in seen[0] if run == result.run_id]
        assert types[0] == "run.queued"
        assert types[-1] == "run.completed"
        assert types.count("node.succeeded") == 2


def _drain(sub: object, got: list[tuple[int, str, str | None]]) -> int:
    while (event := sub.get(timeout=0.05)) is not None:  # type: ignore[attr-defined]
        got.append((event.seq, event.type, event.run_id))
    return sum(1 for _, kind, _ in got if kind == "run.completed")


def test_a_run_taken_over_refuses_the_late_writes_of_its_old_owner(pg_url: str) -> None:
    a = Orchestrator(store=pg_url, config=_config(), embedded_engine=False)
    b: Orchestrator | None = None
    try:
        a.register_workflow("w", "1.0.0", SPEC)
        handle = a.execute_workflow("w", {"i": 3}, wait=False)  # no engine: stays queued
        assert a.replicas is not None
        a.replicas.stop()  # a stops renewing: as if it had lost the database
        b = Orchestrator(store=pg_url, config=_config())
        assert b.replicas is not None
        wait_for(
            lambda: b.get_run(handle.run_id).status == "succeeded",
            "the other replica to take the run over and run it",
        )
        info = b.get_run(handle.run_id)
        # Never started on a: taken over at attempt 0 (nothing to fence but a's writes,
        # which ownership refuses), its first attempt is b's.
        assert info.attempt == 1
        assert b.replicas.taken_over == 1
        owner = query(pg_url, f"SELECT owner FROM runs WHERE run_id = '{handle.run_id}'")
        assert owner == [(b.replicas.replica_id,)]
        # a's late writes, even with the current attempt, are refused: b owns the run.
        assert isinstance(a.store, PostgresStore)
        assert not a.store.finish_run(handle.run_id, None, "failed")
        assert not a.store.save_node_output(handle.run_id, "x", info.attempt, {"v": 0})
        assert b.get_run(handle.run_id).status == "succeeded"
        assert b.store.node_outputs(handle.run_id)["x"] == {"v": 3}
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_a_replica_gives_up_a_run_another_one_took_over(pg_url: str) -> None:
    a = Orchestrator(store=pg_url, config=_config(), embedded_engine=False)
    try:
        a.register_workflow("w", "1.0.0", SPEC)
        handle = a.execute_workflow("w", {"i": 3}, wait=False)  # no engine: stays queued
        assert a.replicas is not None
        # Another replica takes it, as if a's lease had run out while it was cut off.
        other = PostgresStore(pg_url, replica="other", lease_ttl=60)
        try:
            with other.transaction():
                other._write("UPDATE runs SET lease_until = 0")
            assert [r.run_id for r in other.take_over(10)] == [handle.run_id]
        finally:
            other.close()
        wait_for(lambda: a.replicas.given_up == 1, "a to give the run up")  # type: ignore[union-attr]
        with pytest.raises(Exception, match="taken over by another replica"):
            handle.result(timeout=5)
    finally:
        a.stop()


def test_each_cron_fire_time_is_claimed_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, replica=f"r{i}") for i in range(3)]
    try:
        claims = [[s.claim_fire("nightly", t) for s in stores] for t in (1.0, 2.0, 3.0)]
        assert [sum(c) for c in claims] == [1, 1, 1]
        assert [s.claim_fire("other", 1.0) for s in stores] == [True, False, False]
    finally:
        for store in stores:
            store.close()


def test_replicas_and_a_single_orchestrator_exclude_each_other(pg_url: str) -> None:
    replica = Orchestrator(store=pg_url, config=_config(), embedded_engine=False)
    try:
        with pytest.raises(StoreError, match="in use"):
            Orchestrator(store=pg_url, embedded_engine=False)
    finally:
        replica.stop()
    single = Orchestrator(store=pg_url, embedded_engine=False)
    try:
        with pytest.raises(StoreError, match="single orchestrator"):
            Orchestrator(store=pg_url, config=_config(), embedded_engine=False)
    finally:
        single.stop()


def test_replicas_need_a_postgresql_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="share a PostgreSQL store"):
        Orchestrator(store=str(tmp_path / "state.db"), config=_config())
    config = Config.from_env({"DAGENGINE_REPLICA": "1", "DAGENGINE_LEASE_TTL": "4"})
    assert (config.replica, config.lease_ttl) == (True, 4.0)
    with pytest.raises(ConfigError, match="DAGENGINE_LEASE_TTL"):
        Config.from_env({"DAGENGINE_LEASE_TTL": "0"})


def _until_cancelled(ctx: NodeContext) -> dict[str, object]:
    while not ctx.cancelled:
        time.sleep(0.01)
    return {}


def test_a_run_is_cancelled_through_a_replica_that_does_not_own_it(
    replicas: list[Orchestrator],
) -> None:
    a, b = replicas
    slow = DAG("slow", "1.0.0")
    slow.add_node(Node("wait", [], PythonExecutor(_until_cancelled)))
    a.register_workflow(slow)
    handle = a.execute_workflow("slow", {}, wait=False)
    wait_for(lambda: a.get_run(handle.run_id).status == "running", "the run to start")
    assert b.cancel_run(handle.run_id)  # b does not run it: a is asked to
    wait_for(lambda: b.get_run(handle.run_id).status == "cancelled", "the owner to cancel it")
    assert not b.cancel_run(handle.run_id)  # finished: nothing to cancel
    assert not b.cancel_run("no-such-run")


@pytest.mark.timeout(300)  # (its own waits are bounded below it: see bounded.py)
def test_postgres_restarted_under_two_replicas_loses_no_run() -> None:
    """A fast restart of PostgreSQL (every session cut, the replicas' writers, lease and
    event connections too) while two replicas run 500 runs each: they connect again, every
    run finishes and is recorded once, owned by the replica that started it."""
    from bounded import Calls, each_within, results
    from pg import restart_cluster, start_cluster, stop_cluster

    runs = 500
    url, folder = start_cluster()  # a cluster of its own: the others' tests go on beside
    try:
        started = [Orchestrator(store=url, config=_config(ttl=10)) for _ in range(2)]
        try:
            started[0].register_workflow("w", "1.0.0", SPEC)
            with Calls(16) as calls:
                futures = [
                    calls.submit(orch.execute_workflow, "w", {"i": i})
                    for i in range(runs)
                    for orch in started
                ]
                wait_for(lambda: sum(f.done() for f in futures) >= 50, "the first runs")
                restart_cluster(folder)
                finished_then = sum(f.done() for f in futures)
                # A run lost (its waiter never told) fails here, naming it, not a hang.
                ended = results(
                    futures, "runs", name=lambda n: f"run i={n // 2} on replica {n % 2}"
                )
            assert finished_then < 2 * runs, "the restart came after the last run"
            assert all(r.ok for r in ended)  # type: ignore[union-attr]
            rows = query(url, "SELECT status, owner FROM runs")
            assert len(rows) == 2 * runs
            assert {status for status, _ in rows} == {"succeeded"}
            owners = {orch.replicas.replica_id for orch in started if orch.replicas}
            assert {owner for _, owner in rows} == owners  # none taken over
            assert all(orch.store.write_error is None for orch in started)
            print(
                f"\n{2 * runs} runs on 2 replicas: {finished_then} finished when PostgreSQL "
                "was back from its restart; all succeeded, recorded once, none moved"
            )
        finally:
            each_within([orch.stop for orch in started], "the replicas' stops")
    finally:
        stop_cluster(folder)


def test_a_version_registered_on_one_replica_becomes_the_latest_on_all(
    replicas: list[Orchestrator],
) -> None:
    a, b = replicas
    assert b.registry.get("w").version.major == 1  # (found in the store on first ask)
    a.register_workflow("w", "1.1.0", {**SPEC, "version": "1.1.0"})
    wait_for(lambda: str(b.registry.get("w").version) == "1.1.0", "b to see the new latest")
    assert b.execute_workflow("w", {"i": 1}).outputs["y"] == {"v": 2}


def test_a_stopped_replica_hands_its_runs_over_at_once(pg_url: str) -> None:
    a = Orchestrator(store=pg_url, config=_config(ttl=600), embedded_engine=False)
    a.register_workflow("w", "1.0.0", SPEC)
    handle = a.execute_workflow("w", {"i": 5}, wait=False)  # no engine: stays queued
    a.stop()  # (a lease of 600 s: only its release lets another replica have the run)
    b = Orchestrator(store=pg_url, config=_config(ttl=600))
    try:
        wait_for(lambda: b.get_run(handle.run_id).status == "succeeded", "b to run it")
    finally:
        b.stop()


def test_a_replica_that_could_not_renew_its_leases_starts_no_attempt(pg_url: str) -> None:
    """A replica whose leases were last renewed longer than their time to live ago (cut off
    from the database) may have lost its runs to the others: it starts no attempt (one would
    run nodes beside the new owner's, for nothing) until a lease round goes through again.
    (Before, a cut-off replica went on launching its queued runs on the shared engines.)"""
    orch = Orchestrator(store=pg_url, config=_config(ttl=3600))  # (no lease round meanwhile)
    try:
        orch.register_workflow("w", "1.0.0", SPEC)
        assert orch.replicas is not None
        orch.replicas.renewed_at = time.monotonic() - 3601  # not renewed for a lease's TTL
        handle = orch.execute_workflow("w", {"i": 1}, wait=False)  # (durable: committed)
        assert orch.get_run(handle.run_id).status == "queued"  # not started at once
        orch.replicas._round()  # the database answers again
        assert handle.result(timeout=30).ok  # type: ignore[union-attr]
    finally:
        orch.stop()


def test_the_serve_file_and_flag_select_replica_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagengine import cli
    from dagengine.serve import ServeOptions, _orchestrator_config, load_serve_config

    path = tmp_path / "serve.yaml"
    path.write_text("replica: true\nstore: postgresql://db/x\n")
    opts = load_serve_config(path)
    assert opts.replica is True
    assert _orchestrator_config(opts, {}).replica is True
    # Unset, the environment decides.
    assert _orchestrator_config(ServeOptions(), {"DAGENGINE_REPLICA": "1"}).replica is True
    assert _orchestrator_config(ServeOptions(), {}).replica is False
    path.write_text("replica: yes please\n")
    with pytest.raises(ConfigError, match="replica"):
        load_serve_config(path)
    seen: list[ServeOptions] = []
    monkeypatch.setattr("dagengine.serve.serve", lambda opts, **_: seen.append(opts) or 0)
    assert cli.main(["serve", "--replica", "--store", "postgresql://db/x", "--port", "0"]) == 0
    assert cli.main(["serve", "--store", "postgresql://db/x", "--port", "0"]) == 0
    assert [opts.replica for opts in seen] == [True, None]


_release_child = threading.Event()


def _blocked(ctx: NodeContext) -> dict[str, object]:
    _release_child.wait(30)
    return {"done": True}


def test_a_child_run_on_another_replica_is_waited_for_not_started_again(
    replicas: list[Orchestrator],
) -> None:
    """A parent taken over by one replica finds the sub-workflow run its node started on
    another replica (still running there) and waits for it instead of starting another."""
    a, b = replicas
    parent = a.execute_workflow("w", {"i": 1})
    child = DAG("child", "1.0.0")
    child.add_node(Node("blocked", [], PythonExecutor(_blocked)))
    version = a.register_workflow(child)
    _release_child.clear()
    started = a._submit(version, {}, parent_run_id=parent.run_id, parent_node_id="sub")
    found = b.get_subworkflow_coordinator()._existing_child(parent.run_id, "sub")
    assert found is not None
    assert found.run_id == started.run_id
    assert not found.done
    _release_child.set()
    assert found.result(timeout=30).outputs["blocked"] == {"done": True}
    assert len(b.store.list_runs(parent_run_id=parent.run_id)) == 1


def test_a_version_yanked_on_one_replica_is_skipped_on_all(replicas: list[Orchestrator]) -> None:
    a, b = replicas
    a.register_workflow("w", "1.2.0", {**SPEC, "version": "1.2.0"})
    wait_for(lambda: str(b.registry.get("w").version) == "1.2.0", "b to see 1.2.0")
    a.registry.yank("w", "1.2.0")
    wait_for(lambda: str(b.registry.get("w").version) == "1.0.0", "b to skip the yanked one")


def test_replicas_pruning_together_export_each_run_once(pg_url: str, tmp_path: Path) -> None:
    from bounded import Calls, results
    from dagengine.orchestrator.store import RunRecord
    from dagengine.orchestrator.store.retention import RetentionPolicy

    day = 86400.0
    now = 10_000 * day
    stores = [PostgresStore(pg_url, replica=f"r{i}") for i in range(3)]
    try:
        for i in range(60):
            stores[0].create_run(RunRecord(f"old-{i}", "wf", "1.0.0", created_at=now - 40 * day))
            assert stores[0].finish_run(f"old-{i}", None, "succeeded", {"ok": True})
            stores[0].update_run(f"old-{i}", finished_at=now - 39 * day)
        folder = tmp_path / "archive"
        policy = RetentionPolicy(day, export_dir=str(folder))

        def prune_all(store: PostgresStore) -> int:
            removed = 0
            while (part := store.prune(policy, now=now, limit=7)).runs:
                removed += part.runs
            return removed

        with Calls(3) as calls:
            removed = results([calls.submit(prune_all, s) for s in stores], "prunes")
        assert sum(removed) == 60
        lines = [line for file in folder.iterdir() for line in file.read_text().splitlines()]
        assert sorted(json.loads(line)["run"]["run_id"] for line in lines) == sorted(
            f"old-{i}" for i in range(60)
        )
    finally:
        for store in stores:
            store.close()


def test_runs_of_a_store_from_before_replicas_are_taken_by_the_first_replica(
    pg_url: str,
) -> None:
    """A store at schema version 1 with a queued run, opened by a replica: the migration
    leaves the run without an owner (not the migrating replica's), so it is taken over and
    run."""
    import psycopg
    from dagengine.orchestrator.store.postgres_schema import PG_MIGRATIONS

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dagengine_schema (id INTEGER PRIMARY KEY, version INTEGER)")
        for statement in PG_MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO dagengine_schema VALUES (1, 1)")
        conn.execute(
            "INSERT INTO workflow_versions (workflow_id, version, spec, metadata, dependencies,"
            " registered_at) VALUES ('w', '1.0.0', %s, '{}', '[]', 0)",
            (json.dumps(SPEC),),
        )
        conn.execute(
            "INSERT INTO runs (run_id, workflow_id, version, status, inputs, resolved_versions,"
            " created_at) VALUES ('old', 'w', '1.0.0', 'queued', '{\"i\": 4}', '{}', 0)"
        )
    orch = Orchestrator(store=pg_url, config=_config())
    try:
        wait_for(lambda: orch.get_run("old").status == "succeeded", "the old run to be run")
        assert orch.store.node_outputs("old")["y"] == {"v": 5}
    finally:
        orch.stop()


def test_a_replicas_followers_see_its_own_events_and_its_monitor_all(
    replicas: list[Orchestrator],
) -> None:
    """Logs, traces and metrics follow a replica's own events (each replica's count its own
    runs once); SSE, the monitor and the UI see every replica's."""
    a, b = replicas
    own: list[str | None] = []
    follower = b.events.follow(
        lambda event: own.append(event.run_id) if event.type == "run.completed" else None,
        name="test-follower",
    )
    start = b.store.last_event_seq()
    everything = b.events.subscribe(after=start)
    try:
        on_a = a.execute_workflow("w", {"i": 1})
        on_b = b.execute_workflow("w", {"i": 2})
        seen: list[tuple[int, str, str | None]] = []
        wait_for(lambda: _drain(everything, seen) >= 2, "both runs' ends on b's subscription")
        wait_for(lambda: on_b.run_id in own, "b's own run on its follower")
        assert on_a.run_id not in own
        assert own == [on_b.run_id]
    finally:
        follower.close()
        everything.close()


def test_a_take_over_raises_the_attempt_of_a_started_run_only(pg_url: str) -> None:
    from dagengine.orchestrator.store import RunRecord

    old, new = (PostgresStore(pg_url, replica=name) for name in ("old", "new"))
    try:
        old.create_run(RunRecord("started", "wf", "1.0.0"))
        old.create_run(RunRecord("queued", "wf", "1.0.0"))
        assert old.claim_attempt("started", "e1") == 1
        assert new.take_over(10) == []  # their leases still run
        with old.transaction():
            old._write("UPDATE runs SET lease_until = 0")
        taken = {rec.run_id: rec.attempt for rec in new.take_over(10)}
        assert taken == {"started": 2, "queued": 0}
        # The old owner's writes to them are refused, whatever their attempt.
        assert not old.save_node_output("started", "n", 2, {"v": 1})
        assert not old.finish_run("queued", None, "cancelled")
        assert new.finish_run("queued", None, "cancelled")
    finally:
        old.close()
        new.close()


def test_with_only_own_followers_a_new_live_subscription_starts_at_the_head(
    replicas: list[Orchestrator],
) -> None:
    """While only own-only followers listen, a replica reads only its own events; a live
    subscription opened then starts from about now, not from the last own event."""
    a, b = replicas
    own: list[str | None] = []
    follower = b.events.follow(
        lambda event: own.append(event.run_id) if event.type == "run.completed" else None,
        name="test-own-follower",
    )
    try:
        mine = b.execute_workflow("w", {"i": 1})
        wait_for(lambda: mine.run_id in own, "b's follower to see its run")
        for i in range(3):
            a.execute_workflow("w", {"i": i})  # others' events, not read by b meanwhile
        a.store.flush()  # (a run's events may be committed after its end)
        head = a.store.last_event_seq()
        wait_for(lambda: b.replicas is not None and b.replicas._cursor >= head, "b's cursor")
        with b.events.subscribe() as live:
            later = a.execute_workflow("w", {"i": 9})
            first = live.get(timeout=10)
            assert first is not None
            assert (first.type, first.run_id) == ("run.queued", later.run_id)
        assert own == [mine.run_id]
    finally:
        follower.close()


@pytest.mark.integration
def test_an_engine_full_with_another_replicas_runs_delays_a_run_never_fails_it(
    pg_url: str,
) -> None:
    """Two replicas share one engine process of capacity 1, each counting only its own
    runs: the engine refuses a run as full (the other replica's is on it), the run goes back
    to the queue and is tried again; every run of both succeeds."""
    from processes import EngineProcess

    engine = EngineProcess("--capacity", "1")
    started = [
        Orchestrator(store=pg_url, config=_config(), embedded_engine=False) for _ in range(2)
    ]
    try:
        slow = {
            "id": "slow",
            "version": "1.0.0",
            "nodes": [{"id": "n", "lua": "local i = 0 while i < 3000000 do i = i + 1 end"}],
        }
        started[0].register_workflow("slow", "1.0.0", slow)
        for orch in started:
            orch.register_engine("shared", engine.address, capacity=1)
        handles = [
            orch.execute_workflow("slow", {}, wait=False) for _ in range(5) for orch in started
        ]
        results = [h.result(timeout=120) for h in handles]  # type: ignore[union-attr]
        assert {r.status.value for r in results} == {"succeeded"}
        # The engine did refuse some (a refused attempt was announced, then tried again).
        for orch in started:
            orch.store.flush()  # (a run's events may be committed after its end)
        starts = collections.Counter(
            run_id
            for (run_id,) in query(pg_url, "SELECT run_id FROM events WHERE type = 'run.started'")
        )
        assert max(starts.values()) > 1
    finally:
        for orch in started:
            orch.stop()
        engine.kill()


def test_following_the_events_reads_the_head_by_index_not_by_scan(pg_url: str) -> None:
    """The followers read the highest event number every round (and a store reads it when
    it opens): through the ``events`` view (a join since migration 6) MAX(seq) scanned every
    event row; each statement they run must be able to use an index."""
    from typing import Any

    import psycopg
    from dagengine.orchestrator.store.postgres_schema import NEXT_EVENT_SEQ

    store = PostgresStore(pg_url, replica="r1")
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real = store._read

    def read(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        seen.append((sql, tuple(params)))
        return real(sql, params)

    store._read = read  # type: ignore[method-assign]
    try:
        store.committed_event_seq()
        store.events_committed(0, 10)
        store.events_committed(0, 10, own_only=True)
    finally:
        store.close()
    assert len(seen) == 3
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # (what an index can do, it does now)
        for sql, params in [*seen, (NEXT_EVENT_SEQ, ())]:
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))
            assert "Seq Scan on event_rows" not in plan, (sql, plan)

"""Retention: what a prune deletes and what it must never delete, batches, export, the
background pruner of a real orchestrator, configuration and the ``dagengine store`` CLI; the
store's part against both backends (``store_target``: SQLite, a real PostgreSQL)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine import RunResult, cli
from dagengine._units import format_duration, parse_duration
from dagengine.exceptions import ConfigError, SpecError, StoreError
from dagengine.orchestrator import Config, Orchestrator
from dagengine.orchestrator.pruner import Pruner
from dagengine.orchestrator.store import PostgresStore, RunRecord, Store, open_store
from dagengine.orchestrator.store.retention import (
    RetentionPolicy,
    WorkflowRetention,
    retention_from_metadata,
)
from dagengine.serve import ServeOptions, _orchestrator_config, load_serve_config

DAY = 86400.0
NOW = 10_000 * DAY


AnyStore = Store | PostgresStore


@pytest.fixture
def store(store_target: str) -> Iterator[AnyStore]:
    s = open_store(store_target)
    try:
        yield s
    finally:
        s.close()


def add_run(
    store: AnyStore,
    run_id: str,
    *,
    workflow: str = "wf",
    status: str = "succeeded",
    age_days: float = 40,
    parent: str | None = None,
    outputs: int = 2,
    events: int = 3,
) -> None:
    """A run created and finished ``age_days`` before :data:`NOW`, with node outputs and
    events written while it ran."""
    when = NOW - age_days * DAY
    store.create_run(RunRecord(run_id, workflow, "1.0.0", created_at=when, parent_run_id=parent))
    attempt = store.claim_attempt(run_id, "local")
    for index in range(outputs):
        assert store.save_node_output(run_id, f"n{index}", attempt, {"v": index})
    for index in range(events):
        store.append_event(when, "node.succeeded", workflow_id=workflow, run_id=run_id,
                           node_id=f"n{index}", data={"i": index})  # fmt: skip
    if status in ("succeeded", "failed", "cancelled"):
        assert store.finish_run(run_id, attempt, status, {"ok": True})
        store.update_run(run_id, finished_at=when + 1)
    elif status == "queued":
        assert store.release_run(run_id, attempt)


def run_ids(store: AnyStore) -> set[str]:
    return {r.run_id for r in store.list_runs(limit=10_000)}


def prune_all(store: AnyStore, policy: RetentionPolicy, limit: int = 500) -> int:
    removed = 0
    while True:
        part = store.prune(policy, now=NOW, limit=limit)
        removed += part.runs
        if part.runs == 0:
            return removed


# --- what goes and what stays -------------------------------------------------------------


def test_old_finished_runs_go_with_their_outputs_and_events(store: AnyStore) -> None:
    add_run(store, "old-ok", age_days=40)
    add_run(store, "old-failed", status="failed", age_days=31)
    add_run(store, "old-cancelled", status="cancelled", age_days=35)
    add_run(store, "young", age_days=29)
    store.append_event(NOW - 40 * DAY, "engine.joined", engine_id="e1")
    store.append_event(NOW - 1 * DAY, "engine.joined", engine_id="e2")
    report = store.prune(RetentionPolicy(30 * DAY), now=NOW)
    assert (report.runs, report.node_outputs, report.events) == (3, 6, 10)
    assert run_ids(store) == {"young"}
    assert store.node_outputs("old-ok") == {}
    assert store.events(run_id="old-ok") == []
    assert len(store.events(run_id="young")) == 3
    assert [e.engine_id for e in store.events(types=["engine.joined"])] == ["e2"]


def test_queued_and_running_runs_and_their_outputs_are_never_deleted(store: AnyStore) -> None:
    add_run(store, "queued", status="queued", age_days=400)
    add_run(store, "running", status="running", age_days=400)
    report = store.prune(RetentionPolicy(1.0), now=NOW)
    assert report.runs == 0
    assert run_ids(store) == {"queued", "running"}
    # A run that will resume starts from its stored outputs.
    assert store.node_outputs("running") == {"n0": {"v": 0}, "n1": {"v": 1}}
    assert store.node_outputs("queued") == {"n0": {"v": 0}, "n1": {"v": 1}}
    assert len(store.events(run_id="running")) == 3


def test_a_finished_child_of_an_unfinished_parent_is_kept(store: AnyStore) -> None:
    add_run(store, "parent", status="running", age_days=100)
    add_run(store, "child", workflow="sub", age_days=90, parent="parent")
    prune_all(store, RetentionPolicy(1.0))
    assert run_ids(store) == {"parent", "child"}
    # What SubWorkflowCoordinator reads back when the parent resumes:
    assert [r.run_id for r in store.list_runs(parent_run_id="parent")] == ["child"]
    assert store.node_outputs("child") == {"n0": {"v": 0}, "n1": {"v": 1}}


def test_a_finished_parent_goes_after_its_children(store: AnyStore) -> None:
    add_run(store, "parent", age_days=100)
    add_run(store, "child", workflow="sub", age_days=100, parent="parent")
    first = store.prune(RetentionPolicy(DAY), now=NOW)
    assert first.runs == 1
    assert run_ids(store) == {"parent"}
    second = store.prune(RetentionPolicy(DAY), now=NOW)
    assert second.runs == 1
    assert run_ids(store) == set()


def test_a_child_whose_workflow_keeps_it_longer_keeps_its_parent(store: AnyStore) -> None:
    add_run(store, "parent", age_days=10)
    add_run(store, "child", workflow="sub", age_days=10, parent="parent")
    policy = RetentionPolicy(DAY, workflows={"sub": WorkflowRetention(max_age=100 * DAY)})
    prune_all(store, policy)
    assert run_ids(store) == {"parent", "child"}


def test_keep_last_keeps_the_newest_finished_runs_whatever_their_age(store: AnyStore) -> None:
    for index in range(6):
        add_run(store, f"r{index}", age_days=100 - index)
    add_run(store, "other", workflow="other", age_days=100)
    policy = RetentionPolicy(DAY, keep_last=2)
    prune_all(store, policy)
    assert run_ids(store) == {"r4", "r5", "other"}


def test_a_workflow_can_keep_its_runs_longer_or_shorter(store: AnyStore) -> None:
    add_run(store, "short-5d", workflow="short", age_days=5)
    add_run(store, "short-1d", workflow="short", age_days=1)
    add_run(store, "long-40d", workflow="long", age_days=40)
    add_run(store, "forever", workflow="keep", age_days=4000)
    add_run(store, "default-40d", age_days=40)
    policy = RetentionPolicy(
        30 * DAY,
        workflows={
            "short": WorkflowRetention(max_age=2 * DAY),
            "long": WorkflowRetention(max_age=60 * DAY),
            "keep": WorkflowRetention(keep_last=1),
        },
    )
    prune_all(store, policy)
    assert run_ids(store) == {"short-1d", "long-40d", "forever"}


def test_no_retention_keeps_everything(store: AnyStore) -> None:
    add_run(store, "ancient", age_days=10_000 - 1)
    assert store.prune(RetentionPolicy(None), now=NOW).runs == 0
    assert run_ids(store) == {"ancient"}


def test_pruning_goes_in_batches_of_the_limit(store: AnyStore) -> None:
    for index in range(25):
        add_run(store, f"r{index:02}", age_days=50 - index, outputs=1, events=1)
    sizes = []
    while True:
        part = store.prune(RetentionPolicy(DAY), now=NOW, limit=10)
        sizes.append(part.runs)
        if part.runs < 10:
            break
    assert sizes == [10, 10, 5]
    assert run_ids(store) == set()


def test_oldest_runs_go_first(store: AnyStore) -> None:
    for index in range(5):
        add_run(store, f"r{index}", age_days=10 + index)
    store.prune(RetentionPolicy(DAY), now=NOW, limit=2)
    assert run_ids(store) == {"r0", "r1", "r2"}


def test_dry_run_counts_and_deletes_nothing(store: AnyStore) -> None:
    add_run(store, "a", age_days=40)
    add_run(store, "b", age_days=40)
    add_run(store, "young", age_days=1)
    report = store.prune(RetentionPolicy(30 * DAY), now=NOW, dry_run=True)
    assert report.dry_run
    assert (report.runs, report.node_outputs, report.events) == (2, 4, 6)
    assert run_ids(store) == {"a", "b", "young"}


def test_a_bad_limit_is_refused(store: AnyStore) -> None:
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        store.prune(RetentionPolicy(), limit=0)


def test_new_stores_give_freed_space_back(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        for index in range(300):
            add_run(store, f"r{index:03}", age_days=40, outputs=3, events=5)
        before = store.stats().file_bytes
        store.flush()
        prune_all(store, RetentionPolicy(DAY))
        freed = 0
        while step := store.reclaim_space():
            freed += step
        assert freed > 0
        assert store.stats().free_bytes == 0
    assert (tmp_path / "s.db").stat().st_size < before


def test_prunes_and_reclaims_wake_the_checkpointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pages a batch wrote are copied on the checkpointer's connection, not left to grow
    # the log until a run's commit has to finish a checkpoint under the store's lock.
    with Store(tmp_path / "s.db") as store:
        for index in range(50):
            add_run(store, f"r{index:03}", age_days=40 if index < 40 else 1)
        woken: list[str] = []
        monkeypatch.setattr(store, "_want_checkpoint", lambda: woken.append("asked"))
        policy = RetentionPolicy(10 * DAY)
        # (Woken after each batch, and every few slices of one while it runs.)
        assert store.prune(policy, now=NOW, limit=30).runs == 30
        first = len(woken)
        assert first >= 1
        assert store.prune(policy, now=NOW, dry_run=True).runs == 10
        assert len(woken) == first
        assert store.prune(policy, now=NOW, limit=30).runs == 10
        second = len(woken)
        assert second > first
        assert store.prune(policy, now=NOW, limit=30).runs == 0  # nothing gone: not woken
        assert len(woken) == second
        assert store.reclaim_space() > 0
        assert len(woken) == second + 1


# --- export ---------------------------------------------------------------------------------


def test_runs_are_exported_as_json_lines_before_they_go(store: AnyStore, tmp_path: Path) -> None:
    add_run(store, "a", age_days=40)
    add_run(store, "young", age_days=1)
    folder = tmp_path / "archive"
    report = store.prune(RetentionPolicy(DAY, export_dir=str(folder)), now=NOW)
    assert report.exported == 1
    (file,) = folder.iterdir()
    assert file.name == "runs-" + time.strftime("%Y-%m-%d", time.gmtime(NOW)) + ".jsonl"
    (line,) = file.read_text().splitlines()
    item = json.loads(line)
    assert item["run"]["run_id"] == "a"
    assert item["run"]["status"] == "succeeded"
    assert item["run"]["result"] == {"ok": True}
    assert item["node_outputs"] == {"n0": {"v": 0}, "n1": {"v": 1}}
    assert [e["node_id"] for e in item["events"]] == ["n0", "n1", "n2"]
    assert item["events"][0]["type"] == "node.succeeded"
    assert item["events"][0]["data"] == {"i": 0}


def test_a_failed_export_deletes_nothing(store: AnyStore, tmp_path: Path) -> None:
    add_run(store, "a", age_days=40)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot export pruned runs"):
        store.prune(RetentionPolicy(DAY, export_dir=str(blocker / "sub")), now=NOW)
    assert run_ids(store) == {"a"}
    assert store.node_outputs("a") == {"n0": {"v": 0}, "n1": {"v": 1}}


# --- configuration ------------------------------------------------------------------------


def test_durations_read_days_and_keep_writing_hours() -> None:
    assert parse_duration("30d") == 30 * DAY
    assert parse_duration("1d12h") == 1.5 * DAY
    assert format_duration(DAY) == "24h"  # specs written before days keep their form
    with pytest.raises(ValueError, match="'12h1d'"):
        parse_duration("12h1d")


def test_retention_from_the_environment() -> None:
    assert Config.from_env({}).retention == 30 * DAY
    assert Config.from_env({"DAGENGINE_RETENTION": "7d"}).retention == 7 * DAY
    assert Config.from_env({"DAGENGINE_RETENTION": "off"}).retention is None
    assert Config.from_env({"DAGENGINE_PRUNE_INTERVAL": "1m"}).prune_interval == 60
    with pytest.raises(ConfigError, match="DAGENGINE_RETENTION='7 days' is invalid"):
        Config.from_env({"DAGENGINE_RETENTION": "7 days"})
    with pytest.raises(ConfigError, match=r"DAGENGINE_RETENTION='0s'.*positive"):
        Config.from_env({"DAGENGINE_RETENTION": "0s"})


def test_retention_in_the_serve_config(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "retention:\n  max_age: 7d\n  keep_last: 3\n  export_dir: arch\n  interval: 5m\n"
    )
    opts = load_serve_config(path)
    config = _orchestrator_config(opts, {"DAGENGINE_STORE": ":memory:"})
    assert (config.retention, config.keep_last, config.prune_interval) == (7 * DAY, 3, 300)
    assert config.export_dir == str(tmp_path / "arch")
    path.write_text("retention: 12h\n")
    assert load_serve_config(path).retention == {"retention": 12 * 3600}
    path.write_text("retention: off\n")
    assert _orchestrator_config(load_serve_config(path), {}).retention is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retention: {max_age: soon}", "retention.max_age: invalid retention.max_age 'soon'"),
        ("retention: {keep_last: -1}", "retention.keep_last: expected an integer between 0"),
        ("retention: {max_ages: 7d}", "retention: unknown key(s) 'max_ages'"),
        ("retention: {interval: 0s}", "retention.interval: expected a positive duration"),
    ],
)
def test_bad_retention_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_serve_config(path, ServeOptions())
    assert message in str(info.value)


def test_retention_from_registration_metadata() -> None:
    assert retention_from_metadata({}) is None
    assert retention_from_metadata({"owner": "x"}) is None
    assert retention_from_metadata({"retention": "7d", "keep_last": 4}) == WorkflowRetention(
        7 * DAY, 4
    )
    with pytest.raises(ValueError, match="keep_last must be an integer >= 0, got 'x'"):
        retention_from_metadata({"keep_last": "x"})
    with pytest.raises(ValueError, match="invalid metadata retention 'soon'"):
        retention_from_metadata({"retention": "soon"})


def lua_spec() -> dict[str, Any]:
    return {"nodes": [{"id": "n", "lua": "return {v = 1}"}]}


def test_registration_checks_and_applies_the_workflows_retention() -> None:
    with Orchestrator(store=":memory:") as orch:
        with pytest.raises(SpecError, match="workflow 'w': invalid metadata retention"):
            orch.register_workflow("w", "1.0.0", lua_spec(), metadata={"retention": "soon"})
        orch.register_workflow("w", "1.0.0", lua_spec(), metadata={"retention": "2d"})
        orch.register_workflow("v", "1.0.0", lua_spec(), metadata={"keep_last": 5})
        orch.register_workflow("plain", "1.0.0", lua_spec())
        policy = orch.retention_policy()
        assert policy.of("w") == (2 * DAY, 0)
        assert policy.of("v") == (30 * DAY, 5)
        assert policy.of("plain") == (30 * DAY, 0)


# --- the background pruner ----------------------------------------------------------------


def backdate(path: Path | str, workflow: str, count: int, age_days: float) -> None:
    """``count`` finished runs of ``workflow`` written straight into the database, as if they
    had run ``age_days`` ago."""
    when = time.time() - age_days * DAY
    if str(path).startswith("postgresql://"):
        _backdate_postgres(str(path), workflow, count, when)
        return
    db = sqlite3.connect(path)
    with db:
        for index in range(count):
            run_id = f"old-{workflow}-{index:05}"
            db.execute(
                "INSERT INTO runs (run_id, workflow_id, version, status, inputs, attempt, "
                "resolved_versions, created_at, finished_at, result) "
                "VALUES (?, ?, '1.0.0', 'succeeded', '{}', 1, '{}', ?, ?, '{}')",
                (run_id, workflow, when, when + 1),
            )
            db.execute(
                "INSERT INTO node_outputs (run_id, node_id, attempt, output) "
                "VALUES (?, 'n', 1, '{\"v\": 1}')",
                (run_id,),
            )
            db.execute(
                "INSERT INTO events (time, type, severity, workflow_id, run_id, data) "
                "VALUES (?, 'run.completed', 0, ?, ?, '{}')",
                (when, workflow, run_id),
            )
    db.close()


def _backdate_postgres(url: str, workflow: str, count: int, when: float) -> None:
    import psycopg

    with psycopg.connect(url) as db, db.transaction():
        for index in range(count):
            run_id = f"old-{workflow}-{index:05}"
            db.execute(
                "INSERT INTO runs (run_id, workflow_id, version, status, inputs, attempt, "
                "resolved_versions, created_at, finished_at, result) "
                "VALUES (%s, %s, '1.0.0', 'succeeded', '{}', 1, '{}', %s, %s, '{}')",
                (run_id, workflow, when, when + 1),
            )
            db.execute(
                "INSERT INTO node_outputs (run_id, node_id, attempt, output) "
                "VALUES (%s, 'n', 1, '{\"v\": 1}')",
                (run_id,),
            )
            db.execute(
                "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, data) "
                "VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM events), %s, 'run.completed', "
                "0, %s, %s, '{}')",
                (when, workflow, run_id),
            )


def test_the_pruner_of_a_real_orchestrator_runs_while_runs_go_on(store_target: str) -> None:
    path = store_target
    open_store(path).close()  # the schema
    backdate(path, "w", 1200, age_days=40)
    config = Config(store_path=str(path), retention=30 * DAY, prune_interval=3600)
    orch = Orchestrator(config=config)
    try:
        orch.register_workflow("w", "1.0.0", lua_spec())
        results = []
        stop = threading.Event()

        def keep_running() -> None:
            while not stop.is_set():
                results.append(orch.execute_workflow("w", inputs={}))

        worker = threading.Thread(target=keep_running)
        worker.start()
        deadline = time.time() + 60
        while orch.pruner.total.runs < 1200 and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join()
        assert orch.pruner.total.runs == 1200
        assert orch.pruner.total.batches >= 3  # small batches
        assert results
        assert all(isinstance(r, RunResult) and r.ok for r in results)
        kept = {r.run_id for r in orch.store.list_runs(workflow_id="w", limit=100_000)}
        assert not any(run_id.startswith("old-") for run_id in kept)
        assert len(kept) == len(results)
        (event,) = orch.store.events(types=["store.pruned"])
        assert event.data["runs"] == 1200
        assert event.data["events"] == 1200
        assert event.data["node_outputs"] == 1200
    finally:
        orch.stop()


def test_prunes_are_counted_in_the_metrics() -> None:
    from dagengine.api.metrics import Metrics
    from dagengine.orchestrator import Event

    metrics = Metrics()
    data = {"runs": 3, "node_outputs": 6, "events": 27}
    metrics.observe(Event(1, time.time(), "store.pruned", "info", data=data))
    text = metrics.render().decode()
    assert 'dagengine_pruned_rows_total{table="runs"} 3.0' in text
    assert 'dagengine_pruned_rows_total{table="events"} 27.0' in text


def test_the_pruner_stops_between_batches(store: AnyStore) -> None:
    for index in range(30):
        add_run(store, f"r{index:02}", age_days=40, outputs=0, events=0)
    pruner = Pruner(store, None, lambda: RetentionPolicy(DAY), batch=10, pause=0)
    original = store.prune
    calls = []

    def prune_then_stop(policy: RetentionPolicy, **kw: Any) -> Any:
        calls.append(1)
        pruner._stop.set()
        return original(policy, **kw)

    store.prune = prune_then_stop  # type: ignore[method-assign]
    report = pruner.run_pass()
    assert len(calls) == 1
    assert report.runs == 10


def test_batches_are_sized_to_their_time(store: AnyStore) -> None:
    pruner = Pruner(store, None, RetentionPolicy, batch=500, batch_time=0.002)
    assert pruner._resize(100, 0.010, 500) == 50  # too long: halved
    assert pruner._resize(100, 0.0005, 500) == 200  # quick: doubled
    assert pruner._resize(400, 0.0005, 500) == 500  # up to the ceiling
    assert pruner._resize(100, 0.0015, 500) == 100
    assert pruner._resize(1, 1.0, 500) == 1


def test_postgres_reclaims_nothing_itself_and_sizes_come_from_the_catalog(pg_url: str) -> None:
    with open_store(pg_url) as store:
        for index in range(50):
            add_run(store, f"r{index:03}", age_days=40, outputs=3, events=5)
        stats = store.stats()
        assert stats.bytes_exact
        assert stats.tables["runs"][0] == 50
        assert stats.tables["events"][0] == 250
        assert all(size > 0 for _, size in stats.tables.values())
        assert stats.file_bytes > sum(size for _, size in stats.tables.values())
        assert stats.workflows == {"wf": {"succeeded": 50}}
        prune_all(store, RetentionPolicy(DAY))
        assert store.reclaim_space() == 0  # autovacuum's job
        assert store.stats().tables["runs"][0] == 0


def test_reclaim_gives_back_the_pages_asked_for(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        for index in range(200):
            add_run(store, f"r{index:03}", age_days=40, outputs=3, events=5)
        prune_all(store, RetentionPolicy(DAY))
        assert store.reclaim_space(10) == 10 * 4096
        with store.transaction(), pytest.raises(StoreError, match="inside a transaction"):
            store.reclaim_space()


def test_bad_pruner_settings_are_refused(store: AnyStore) -> None:
    with pytest.raises(ValueError, match=r"batch >= 1 \(0\)"):
        Pruner(store, None, RetentionPolicy, batch=0)


def test_stats_give_bytes_per_workflow(store: AnyStore) -> None:
    for index in range(10):
        add_run(store, f"big{index}", workflow="big", outputs=6, events=9)
    add_run(store, "small0", workflow="small", outputs=1, events=1)
    stats = store.stats()
    assert set(stats.workflow_bytes) == {"big", "small"}
    # Each run stores its inputs ("{}"), its result ('{"ok": true}' or the like), its node
    # outputs ('{"v": n}') and its events' data ('{"i": n}'): 10 heavy runs against 1 light.
    assert stats.workflow_bytes["big"] > 10 * stats.workflow_bytes["small"]
    one_output = len('{"v":0}')
    assert stats.workflow_bytes["small"] >= one_output + len('{"i":0}')
    assert stats.workflow_bytes["big"] >= 10 * (6 * one_output + 9 * len('{"i":0}'))


class _NoDbstat:
    """A connection of an SQLite built without the dbstat table (Debian's has it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if "dbstat" in sql:
            raise sqlite3.OperationalError("no such table: dbstat")
        return self._db.execute(sql, *args)


def test_stats_estimate_bytes_without_dbstat(tmp_path: Path) -> None:
    from dagengine.orchestrator.store.retention import store_stats

    path = tmp_path / "s.db"
    with Store(path) as store:
        for index in range(20):
            add_run(store, f"r{index:02}", outputs=3, events=4)
        exact = store.stats()
    db = sqlite3.connect(path)
    try:
        estimated = store_stats(_NoDbstat(db), str(path))  # type: ignore[arg-type]
    finally:
        db.close()
    assert exact.bytes_exact
    assert not estimated.bytes_exact
    assert {t: rows for t, (rows, _) in estimated.tables.items()} == {
        t: rows for t, (rows, _) in exact.tables.items()
    }
    # The values' lengths: below the pages dbstat counts, and never nothing for a full table.
    for table, (rows, size) in estimated.tables.items():
        assert (size > 0) == (rows > 0), table
        assert size <= exact.tables[table][1], table
    assert estimated.workflow_bytes == exact.workflow_bytes
    assert estimated.workflows == {"wf": {"succeeded": 20}}


# --- the CLI ----------------------------------------------------------------------------------


def test_store_prune_and_stats_on_the_command_line(
    store_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = store_target
    open_store(path).close()
    backdate(path, "w", 20, age_days=40)
    backdate(path, "young", 2, age_days=1)
    assert cli.main(["store", "stats", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runs" in out
    # A file has its size and free pages; a PostgreSQL database its size (from the catalog).
    assert ("database " if path.startswith("postgresql://") else "file ") in out
    assert "w" in out
    assert "succeeded 20" in out
    assert cli.main(["store", "prune", "--dry-run", "--store", str(path)]) == 0
    assert capsys.readouterr().out.startswith("would delete 20 runs, 20 node outputs, 20 events")
    assert cli.main(["store", "stats", "--json", "--store", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tables"]["runs"]["rows"] == 22
    assert set(stats["workflow_bytes"]) == {"w", "young"}
    assert cli.main(["store", "prune", "--older-than", "2d", "--store", str(path)]) == 0
    assert capsys.readouterr().out.startswith("deleted 20 runs, 20 node outputs, 20 events")
    assert cli.main(["store", "prune", "--older-than", "12h", "--keep-last", "1",
                     "--store", str(path)]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("deleted 1 runs")
    with open_store(path) as store:
        assert [r.workflow_id for r in store.list_runs()] == ["young"]


def test_store_commands_report_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.db"
    assert cli.main(["store", "stats", "--store", str(missing)]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"dagengine: error: no store at '{missing}' (give --store PATH or DAGENGINE_STORE)"
    )
    assert not missing.exists()
    assert cli.main(["store", "prune", "--older-than", "soon", "--store", str(missing)]) == 2
    assert "--older-than 'soon'" in capsys.readouterr().err
    assert cli.main(["store", "prune", "--keep-last", "-3", "--store", str(missing)]) == 2
    assert "expected an integer >= 0, got '-3'" in capsys.readouterr().err
    assert cli.main(["store"]) == 2

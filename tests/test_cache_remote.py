"""Caching beyond a local run: an engine takes hits from the entries sent with a run and
reports the keys of the cached nodes that ran; the orchestrator keeps the entries in its
store (SQLite and PostgreSQL), across a restart, for in-process and remote engines."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagengine import NodeEvent, RunResult
from dagengine.engine import EngineClient, build_run_request
from dagengine.orchestrator import Orchestrator
from dagengine.orchestrator.store import RunRecord, Store, open_store
from dagengine.orchestrator.store.retention import RetentionPolicy
from processes import EngineProcess, wait_for

TESTS = Path(__file__).parent

SPEC: dict[str, Any] = {
    "id": "cached",
    "version": "1.0.0",
    "nodes": [
        {"id": "load", "lua": "return {value = inputs.n}"},
        {"id": "work", "deps": ["load"], "python": "engine_tasks:double", "cache": True},
        {
            "id": "label",
            "deps": ["work"],
            "lua": "return {text = 'v' .. results.work.value}",
            "cache": {"key": "inputs.n", "ttl": "1h"},
        },
    ],
}


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    process = EngineProcess("--engine-id", "cache-engine", env={"PYTHONPATH": str(TESTS)})
    try:
        yield process
    finally:
        process.kill()


def _stream(client: EngineClient, **request: Any) -> tuple[list[NodeEvent], RunResult]:
    events: list[NodeEvent] = []
    result = None
    for item in client.stream_request(build_run_request(SPEC, **request)):
        if isinstance(item, RunResult):
            result = item
        else:
            events.append(item)
    assert result is not None
    return events, result


def test_an_engine_takes_hits_from_the_request_and_reports_keys(engine: EngineProcess) -> None:
    with EngineClient(engine.address, timeout=30) as client:
        events, first = _stream(client, inputs={"n": 2}, run_id="e1")
        assert first.ok, first.error
        work, label = first.node_results["work"], first.node_results["label"]
        assert work.cached_from is None
        assert work.cache_key is not None
        assert label.cache_key is not None
        assert "node_cached" not in [e.kind for e in events]

        # The entry's output is not what the node would compute: the hit is not executed.
        entries = [("work", work.cache_key, b'{"value":99}', "e0")]
        events, second = _stream(client, inputs={"n": 2}, run_id="e2", cache_entries=entries)
        assert second.ok, second.error
        assert second.node_results["work"].cached_from == "e0"
        assert second.node_results["work"].attempts == 0
        assert second.outputs["work"] == {"value": 99}
        assert second.outputs["label"] == {"text": "v99"}  # not cached: another key
        cached = [e for e in events if e.kind == "node_cached"]
        assert [e.node_id for e in cached] == ["work"]
        assert cached[0].detail == {"run_id": "e0", "key": work.cache_key}
        # The result's JSON (as the orchestrator records it) says so too.
        assert second.to_dict()["nodes"]["work"]["cached_from"] == "e0"


def _counts(result: RunResult) -> dict[str, str | None]:
    return {n: result.node_results[n].cached_from for n in ("work", "label")}


def _assert_cached_events(orch: Orchestrator, run_id: str, from_run: str) -> None:
    """Run ``run_id``'s ``node.cached`` events name ``from_run`` for both cached nodes."""
    orch.store.flush()
    events = orch.store.events(run_id=run_id, types=["node.cached"])
    assert sorted((e.node_id, e.data["from_run"]) for e in events) == [
        ("label", from_run),
        ("work", from_run),
    ]


def test_the_orchestrator_store_keeps_entries_across_a_restart(store_target: str) -> None:
    first = Orchestrator(store=store_target)
    try:
        first.register_workflow("cached", "1.0.0", SPEC)
        one = first.execute_workflow("cached", {"n": 3})
        assert isinstance(one, RunResult)
        assert one.ok, one.error
        assert _counts(one) == {"work": None, "label": None}
        two = first.execute_workflow("cached", {"n": 3})
        assert isinstance(two, RunResult)
        assert _counts(two) == {"work": one.run_id, "label": one.run_id}
        assert two.outputs["label"] == {"text": "v6"}
        _assert_cached_events(first, two.run_id, one.run_id)
    finally:
        first.stop()
    second = Orchestrator(store=store_target)
    try:
        three = second.execute_workflow("cached", {"n": 3})
        assert isinstance(three, RunResult)
        assert _counts(three) == {"work": one.run_id, "label": one.run_id}
        other = second.execute_workflow("cached", {"n": 4})
        assert isinstance(other, RunResult)
        assert _counts(other) == {"work": None, "label": None}
        assert other.outputs["label"] == {"text": "v8"}
    finally:
        second.stop()


def test_store_entries_are_scoped_and_expire(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state.db"))
    try:
        store.save_cache_entries(
            "wf",
            [
                ("a", "k1", '{"v":1}', "r1", None),
                ("a", "k2", '{"v":2}', "r2", 3600.0),
                ("b", "k1", '{"v":3}', "r1", None),
            ],
        )
        entries = store.cache_entries("wf", ["a"], 10)
        assert sorted(entries) == [("a", "k1", '{"v":1}', "r1"), ("a", "k2", '{"v":2}', "r2")]
        assert store.cache_entries("wf", ["a", "b"], 1) != []
        assert store.cache_entries("other", ["a"], 10) == []
        # Expired (its time has come): not returned, and dropped by the next store.
        with store.transaction():
            store._db.execute("UPDATE cache_entries SET expires_at = 1 WHERE key = 'k2'")
        assert store.cache_entries("wf", ["a"], 10) == [("a", "k1", '{"v":1}', "r1")]
        store.save_cache_entries("wf", [("b", "k9", "{}", "r3", None)])
        rows = store._query("SELECT key FROM cache_entries WHERE node_id = 'a'")
        assert rows == [("k1",)]
    finally:
        store.close()


def test_a_remote_engine_run_stores_and_takes_entries(
    engine: EngineProcess, tmp_path: Path
) -> None:
    orch = Orchestrator(store=str(tmp_path / "state.db"), embedded_engine=False)
    try:
        orch.register_engine(engine.engine_id, engine.address)
        wait_for(lambda: engine.engine_id in orch.engines(), "the engine to register")
        orch.register_workflow("cached", "1.0.0", SPEC)
        one = orch.execute_workflow("cached", {"n": 5})
        assert isinstance(one, RunResult)
        assert one.ok, one.error
        assert orch.get_run(one.run_id).engine_id == engine.engine_id
        two = orch.execute_workflow("cached", {"n": 5})
        assert isinstance(two, RunResult)
        assert _counts(two) == {"work": one.run_id, "label": one.run_id}
        assert two.outputs["work"]["pid"] == one.outputs["work"]["pid"]
        _assert_cached_events(orch, two.run_id, one.run_id)
        # The result the orchestrator recorded (the engine's JSON) says so too.
        stored = orch.get_run(two.run_id).result
        assert isinstance(stored, RunResult)
        assert stored.node_results["work"].cached_from == one.run_id
    finally:
        orch.stop()


def test_retention_deletes_the_entries_of_the_runs_it_prunes(store_target: str) -> None:
    store = open_store(store_target)
    day = 86_400.0
    now = 10_000 * day
    try:
        for run_id, age in (("old", 40), ("young", 1)):
            when = now - age * day
            store.create_run(RunRecord(run_id, "wf", "1.0.0", created_at=when))
            attempt = store.claim_attempt(run_id, "local")
            assert store.finish_run(run_id, attempt, "succeeded", {"ok": True})
            store.update_run(run_id, finished_at=when + 1)
        store.save_cache_entries(
            "wf", [("a", "k-old", "{}", "old", None), ("a", "k-young", "{}", "young", None)]
        )
        report = store.prune(RetentionPolicy(30 * day), now=now)
        assert report.runs == 1
        assert store.cache_entries("wf", ["a"], 10) == [("a", "k-young", "{}", "young")]
    finally:
        store.close()


def test_a_dag_sent_to_an_engine_carries_its_code_identity() -> None:
    import dagengine
    from dagengine.engine import workflow_to_proto

    by_spec = workflow_to_proto(SPEC)
    assert by_spec.nodes[1].cache.code == ""  # the engine uses the import path
    assert by_spec.nodes[2].cache.key == "inputs.n"
    assert by_spec.nodes[2].cache.ttl_seconds == 3600.0
    by_dag = workflow_to_proto(dagengine.parse_workflow(SPEC))
    code = by_dag.nodes[1].cache.code
    assert code.startswith("python\nengine_tasks:double\ndef double(ctx")
    assert by_dag.nodes[2].cache.code == "lua\nreturn {text = 'v' .. results.work.value}"
    assert not by_dag.nodes[0].HasField("cache")


def test_a_cached_sub_workflow_node_does_not_start_its_child_again(tmp_path: Path) -> None:
    orch = Orchestrator(store=str(tmp_path / "state.db"))
    try:
        orch.register_workflow("child", "1.0.0", {"nodes": [{"id": "c", "lua": "return {x = 1}"}]})
        parent = {
            "nodes": [
                {"id": "pre", "lua": "return {}"},
                {"id": "sub", "deps": ["pre"], "workflow": "child@^1", "cache": True},
            ]
        }
        orch.register_workflow("parent", "1.0.0", parent)
        one = orch.execute_workflow("parent", {"day": "mon"})
        assert isinstance(one, RunResult)
        assert one.ok, one.error
        two = orch.execute_workflow("parent", {"day": "mon"})
        assert isinstance(two, RunResult)
        assert two.node_results["sub"].cached_from == one.run_id
        assert two.outputs["sub"] == one.outputs["sub"]
        children = [r for r in orch.list_runs(limit=100) if r.workflow_id == "child"]
        assert len(children) == 1, "the hit started no child run"
    finally:
        orch.stop()


def test_the_entries_sent_with_a_run_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagengine import parse_workflow
    from dagengine.orchestrator import cache

    store = Store(str(tmp_path / "state.db"))
    try:
        big = '{"v":"' + "x" * 1000 + '"}'
        store.save_cache_entries("wf", [("work", f"k{i}", big, "r", None) for i in range(10)])
        dag = parse_workflow(SPEC)
        assert len(cache.cache_entries_for(store, "wf", dag)) == 10
        monkeypatch.setattr(cache, "MAX_ENTRY_BYTES_PER_RUN", 3500)
        assert len(cache.cache_entries_for(store, "wf", dag)) == 3
        monkeypatch.setattr(cache, "MAX_ENTRIES_PER_RUN", 2)
        assert len(cache.cache_entries_for(store, "wf", dag)) == 2
    finally:
        store.close()


def test_a_function_changed_behind_the_same_import_path_misses(tmp_path: Path) -> None:
    spec = {
        "id": "changing",
        "version": "1.0.0",
        "nodes": [{"id": "work", "python": "changing_code:work", "cache": True}],
    }
    results: list[RunResult] = []
    entries: list[tuple[str, str, bytes, str]] = []
    for version in (1, 2):
        # The same import path, another function behind it (a redeployed engine).
        code_dir = tmp_path / f"v{version}"
        code_dir.mkdir()
        (code_dir / "changing_code.py").write_text(
            f"def work(ctx):\n    return {{'version': {version}}}\n"
        )
        process = EngineProcess("--engine-id", f"v{version}", env={"PYTHONPATH": str(code_dir)})
        try:
            with EngineClient(process.address, timeout=30) as client:
                request = build_run_request(
                    spec, inputs={}, run_id=f"v{version}", cache_entries=entries
                )
                result = client.stream_request(request)
                *_, last = result
                assert isinstance(last, RunResult)
                assert last.ok, last.error
                results.append(last)
        finally:
            process.kill()
        work = last.node_results["work"]
        assert work.cache_key is not None
        entries = [("work", work.cache_key, b'{"version":1}', f"v{version}")]
    assert results[1].node_results["work"].cached_from is None
    assert results[1].outputs["work"] == {"version": 2}


def _run_changing(code_dir: Path, request: Any) -> RunResult:
    """``request`` run by an engine importing ``changing_code`` from ``code_dir``."""
    process = EngineProcess("--engine-id", code_dir.name, env={"PYTHONPATH": str(code_dir)})
    try:
        with EngineClient(process.address, timeout=30) as client:
            *_, last = client.stream_request(request)
    finally:
        process.kill()
    assert isinstance(last, RunResult)
    assert last.ok, last.error
    return last


def test_an_engine_keys_by_its_own_code_not_the_senders(tmp_path: Path) -> None:
    spec = {
        "id": "changing",
        "version": "1.0.0",
        "nodes": [{"id": "work", "python": "changing_code:work", "cache": True}],
    }
    for name in ("a", "b"):  # two engines deployed with the same code
        (tmp_path / name).mkdir()
        (tmp_path / name / "changing_code.py").write_text("def work(ctx):\n    return {'v': 1}\n")
    first = _run_changing(tmp_path / "a", build_run_request(spec, run_id="r1"))
    key = first.node_results["work"].cache_key
    assert key is not None
    # The same source on another engine: the same key, a hit, even though the sender
    # claims other code (its own, stale copy): the engine's identity wins.
    request = build_run_request(spec, run_id="r2", cache_entries=[("work", key, b'{"v":99}', "r1")])
    request.workflow.nodes[0].cache.code = "python\nchanging_code:work\nan older source"
    second = _run_changing(tmp_path / "b", request)
    assert second.node_results["work"].cache_key == key
    assert second.node_results["work"].cached_from == "r1"
    assert second.outputs["work"] == {"v": 99}


def test_an_engine_keys_by_the_code_it_loaded_not_a_newer_file(tmp_path: Path) -> None:
    module = tmp_path / "changing_code.py"
    module.write_text("def work(ctx):\n    return {'v': 1}\n")
    process = EngineProcess("--engine-id", "loaded", env={"PYTHONPATH": str(tmp_path)})
    try:
        with EngineClient(process.address, timeout=30) as client:
            results = []
            for workflow_id in ("one", "two"):  # two specs: each is validated (keyed) anew
                spec = {
                    "id": workflow_id,
                    "version": "1.0.0",
                    "nodes": [{"id": "work", "python": "changing_code:work", "cache": True}],
                }
                *_, last = client.stream_request(build_run_request(spec, run_id=workflow_id))
                assert isinstance(last, RunResult)
                assert last.ok, last.error
                results.append(last)
                # The file changes under the running engine, which keeps its loaded code.
                module.write_text("def work(ctx):\n    return {'v': 2, 'new': True}\n")
    finally:
        process.kill()
    assert results[1].outputs["work"] == {"v": 1}
    assert results[1].node_results["work"].cache_key == results[0].node_results["work"].cache_key


def test_a_cached_node_completed_on_a_lost_engine_is_stored(tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "id": "lost-cached",
        "version": "1.0.0",
        "nodes": [
            {"id": "rows", "lua": "return {rows = {1, 2, 3, 4}}", "cache": True},
            # One item at a time; the last one holds the run until the test releases it.
            {
                "id": "work",
                "deps": ["rows"],
                "python": "map_tasks:hold_item",
                "map": "results.rows.rows",
                "max_parallel": 1,
            },
        ],
    }
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    env = {"DAGENGINE_TEST_LEDGER": str(ledger), "DAGENGINE_TEST_RELEASE": str(tmp_path / "go")}
    engines = [EngineProcess("--engine-id", f"lost-{i}", env=env) for i in range(2)]
    orch = Orchestrator(store=str(tmp_path / "state.db"), embedded_engine=False)
    try:
        for proc in engines:
            orch.register_engine(proc.engine_id, proc.address)
        orch.register_workflow("lost-cached", "1.0.0", spec)
        handle = orch.execute_workflow("lost-cached", {}, wait=False)
        wait_for(lambda: " work[3] started" in ledger.read_text(), "the held item", timeout=60)
        wait_for(
            lambda: "rows" in orch.store.node_outputs(handle.run_id),
            "the cached node's output to be recorded",
            timeout=30,
        )
        victim = next(p for p in engines if orch.engines()[p.engine_id].active > 0)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        (tmp_path / "go").touch()
        first = handle.result(timeout=120)
        assert first.ok, first.error
        assert orch.store.events(run_id=handle.run_id, types=["run.redispatched"])
        # The cached node ran once, on the lost engine: its output must be in the cache.
        assert orch.store.cache_entries("lost-cached", ["rows"], 9) != []
        second = orch.execute_workflow("lost-cached", {})
        assert isinstance(second, RunResult)
        assert second.node_results["rows"].cached_from == handle.run_id
    finally:
        orch.stop()
        for proc in engines:
            proc.kill()


def test_an_imported_module_rewritten_before_the_first_cached_spec_keeps_its_loaded_identity(
    tmp_path: Path,
) -> None:
    spec = {
        "id": "changing",
        "version": "1.0.0",
        "nodes": [{"id": "work", "python": "changing_code:work", "cache": True}],
    }
    for name in ("loaded", "fresh"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "changing_code.py").write_text("def work(ctx):\n    return {'v': 1}\n")
    # The key of the code as loaded: an engine that imports the same file unchanged.
    fresh = _run_changing(tmp_path / "fresh", build_run_request(spec, run_id="fresh"))
    module = tmp_path / "loaded" / "changing_code.py"
    process = EngineProcess(
        "--engine-id",
        "loaded",
        "--import",
        "changing_code",
        env={"PYTHONPATH": str(tmp_path / "loaded")},
    )
    try:
        with EngineClient(process.address, timeout=30) as client:
            # Rewritten after the engine imported it, before any cached spec arrives.
            module.write_text("def work(ctx):\n    return {'v': 2, 'new': True}\n")
            *_, last = client.stream_request(build_run_request(spec, run_id="loaded"))
    finally:
        process.kill()
    assert isinstance(last, RunResult)
    assert last.ok, last.error
    assert last.outputs["work"] == {"v": 1}
    assert last.node_results["work"].cache_key == fresh.node_results["work"].cache_key

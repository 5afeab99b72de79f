"""Choosing the PostgreSQL store: ``DAGENGINE_STORE``, the serve config file's ``store:``,
``--store`` and ``Orchestrator(store=...)`` all take a ``postgresql://`` URL (and leave it as it
is: no folder made, no path resolved). A real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from dagengine.orchestrator import Config, Orchestrator
from dagengine.orchestrator.store import PostgresStore, SQLiteStore, open_store
from dagengine.serve import ServeOptions, _orchestrator_config, load_serve_config


def test_dagengine_store_names_a_postgres_database(pg_url: str) -> None:
    config = Config.from_env({"DAGENGINE_STORE": pg_url})
    assert config.store_path == pg_url
    orch = Orchestrator(config=config)
    try:
        assert isinstance(orch.store, PostgresStore)
        orch.register_workflow("w", "1.0.0", {"nodes": [{"id": "n", "lua": "return {v = 2}"}]})
        result = orch.execute_workflow("w")
        assert result.ok  # type: ignore[union-attr]
    finally:
        orch.stop()
    with open_store(pg_url) as store:  # the run is in the database
        (run,) = store.list_runs()
        assert (run.workflow_id, run.status) == ("w", "succeeded")
        assert store.node_outputs(run.run_id) == {"n": {"v": 2}}


def test_the_serve_config_keeps_a_url_as_it_is(tmp_path: Path) -> None:
    url = "postgresql://dagengine:pw@db.internal:5432/dagengine?sslmode=require"
    path = tmp_path / "serve.yaml"
    path.write_text(f"store: {url}\n")
    opts = load_serve_config(path)
    assert opts.store == url  # not joined to the file's folder
    config = _orchestrator_config(opts, {})
    assert config.store_path == url
    assert not (tmp_path / "postgresql:").exists()
    assert list(tmp_path.iterdir()) == [path]


def test_serve_store_flag_keeps_a_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dagengine import cli

    seen: list[ServeOptions] = []

    def fake_serve(opts: ServeOptions, **_: object) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr("dagengine.serve.serve", fake_serve)
    monkeypatch.chdir(tmp_path)
    url = "postgresql://u@127.0.0.1:5432/db"
    assert cli.main(["serve", "--store", url, "--port", "0"]) == 0
    assert seen[0].store == url
    assert cli.main(["serve", "--store", "rel.db", "--port", "0"]) == 0
    assert seen[1].store == str(tmp_path / "rel.db")  # a path is still made absolute


def test_open_store_picks_the_backend_by_the_target(tmp_path: Path, pg_url: str) -> None:
    with open_store(tmp_path / "s.db") as sqlite_store:
        assert isinstance(sqlite_store, SQLiteStore)
    with open_store(pg_url) as pg_store:
        assert isinstance(pg_store, PostgresStore)
    # postgres:// is libpq's other spelling
    alias = "postgres://" + pg_url.removeprefix("postgresql://")
    with open_store(alias) as pg_store:
        assert isinstance(pg_store, PostgresStore)


# --- one orchestrator per store: the writer's lock ----------------------------------------------


def test_a_second_orchestrator_on_the_same_store_is_refused(pg_url: str) -> None:
    from dagengine.exceptions import StoreError

    first = Orchestrator(store=pg_url)
    try:
        with pytest.raises(StoreError, match=r"is in use by dagengine pid \d+ on "):
            Orchestrator(store=pg_url)
        with open_store(pg_url) as tool:  # tools (dagengine store) open it beside
            assert tool.schema_version >= 1
    finally:
        first.stop()
    Orchestrator(store=pg_url).stop()  # free again once the first stopped


@pytest.mark.parametrize("kind", ["exclusive", "replica"])
def test_a_closed_store_has_let_its_lock_go_before_its_connection_closes(
    pg_url: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server frees a closed session's locks only when its backend ends, a moment after
    the client closed it: an orchestrator started on the store right after another stopped
    was refused now and then, the store "in use by" the one that had stopped (a replica's
    shared hold refuses a single orchestrator the same way). close() releases the lock in
    the session first: when its connection closes (however late the backend then ends),
    the session holds no lock any more."""
    import psycopg
    from dagengine.orchestrator.store.postgres_writer import OWNER_LOCK

    if kind == "exclusive":
        store = open_store(pg_url, exclusive=True)
    else:
        store = PostgresStore(pg_url, replica="r1")
    assert isinstance(store, PostgresStore)
    writer = store._db
    pid = writer.info.backend_pid

    def locks_held() -> int:
        with psycopg.connect(pg_url, autocommit=True) as other:
            row = other.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s AND pid = %s",
                (OWNER_LOCK, pid),
            ).fetchone()
        assert row is not None
        return int(row[0])

    assert locks_held() == 1
    at_close: list[int] = []
    real_close = type(writer).close

    def close(conn: psycopg.Connection[object]) -> None:
        if conn is writer:
            at_close.append(locks_held())
        real_close(conn)

    monkeypatch.setattr(type(writer), "close", close)
    store.close()
    assert at_close == [0]


def test_a_store_opened_right_after_a_close_waits_for_the_closed_session(pg_url: str) -> None:
    """A store whose session could not release its lock (the statement failed) notes it
    when it closes: a store this process opens before the server has ended that session's
    backend (and freed its lock) waits for that end instead of refusing the store as in
    use."""
    import threading

    from dagengine.orchestrator.store.postgres_writer import note_closed_owner

    first = open_store(pg_url, exclusive=True)
    assert isinstance(first, PostgresStore)
    # As close() does when the release fails, with the lock held 0.3 s longer.
    note_closed_owner(first._db)
    later = threading.Timer(0.3, first.close)
    later.start()
    try:
        second = open_store(pg_url, exclusive=True)
        second.close()
    finally:
        later.join()
    # A store still open is refused at once, as before.
    third = open_store(pg_url, exclusive=True)
    try:
        from dagengine.exceptions import StoreError

        with pytest.raises(StoreError, match="is in use by"):
            open_store(pg_url, exclusive=True)
    finally:
        third.close()


def test_a_fenced_off_store_refuses_its_late_writes_then_rejoins(pg_url: str) -> None:
    import threading

    import psycopg
    from dagengine.orchestrator.store import RunRecord
    from processes import wait_for

    first = open_store(pg_url, exclusive=True)
    assert isinstance(first, PostgresStore)
    first.create_run(RunRecord("r", "wf", "1.0.0", status="running", attempt=1))
    # Its connection is lost (a network cut, say), and another orchestrator takes over.
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (first._db.info.backend_pid,))
    second = open_store(pg_url, exclusive=True)
    told: list[bool] = []
    ended = threading.Event()
    first.finish_run_later(
        "r", 1, "failed", None, {"late": True}, lambda ok: (told.append(ok), ended.set())
    )
    # (Its first try fails on the dead connection; the next ones on the lock.)
    wait_for(lambda: "taken over" in (first.write_error or ""), "the write to be fenced off")
    assert not ended.is_set()
    with open_store(pg_url) as reader:
        rec = reader.get_run("r")
        assert rec is not None
        assert rec.status == "running"  # the late end was refused
    # The other one lets go: the first gets the lock back and writes what it kept.
    second.close()
    assert ended.wait(30)
    assert told == [True]
    assert first.write_error is None
    first.close()


def test_connections_use_tcp_keepalives_unless_the_url_says(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        assert "keepalives_idle=10" in store._db.info.dsn
        with store._pool.connection() as conn:
            assert "keepalives_idle=10" in conn.info.dsn
    with open_store(f"{pg_url}&keepalives_idle=7") as store:
        assert isinstance(store, PostgresStore)
        assert "keepalives_idle=7" in store._db.info.dsn


_SERVER_SETTINGS = (
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "tcp_user_timeout",
)


def _server_settings(conn: Any) -> tuple[str, ...]:
    return tuple(conn.execute(f"SHOW {name}").fetchone()[0] for name in _SERVER_SETTINGS)


def test_the_servers_side_of_the_sessions_drops_a_silent_client_unless_the_url_says(
    pg_url: str,
) -> None:
    """The server's keepalives and tcp_user_timeout are set on every session of the store
    (its own defaults are the OS's: hours), a replica's tcp_user_timeout to its lease; the
    URL's ``options`` win."""
    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        assert _server_settings(store._db) == ("10", "3", "3", "20000")
        with store._pool.connection() as conn:
            assert _server_settings(conn) == ("10", "3", "3", "20000")
    replica = PostgresStore(pg_url, replica="r-settings", lease_ttl=2.5)
    try:
        assert _server_settings(replica._db) == ("10", "3", "3", "2500")
    finally:
        replica.close()
    parts = urlsplit(pg_url)
    query = dict(parse_qsl(parts.query))  # (its options set the test's schema)
    query["options"] += " -c tcp_keepalives_idle=42 -c tcp_user_timeout=0"
    url = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        assert _server_settings(store._db) == ("42", "3", "3", "0")


# --- the server restarted under load ------------------------------------------------------------


@pytest.mark.timeout(300)  # (its own waits are bounded below it: see bounded.py)
def test_postgres_restarted_mid_load_loses_no_run() -> None:
    """A fast restart of PostgreSQL (every session cut) while runs go through an orchestrator:
    the store connects again, every run finishes and is recorded once, and reads work. (The
    runs are waited for, not handed back: a handle is only handed back once its run is
    committed, and that fails while the server is down.)"""
    from bounded import Calls, results, within
    from pg import restart_cluster, start_cluster, stop_cluster
    from processes import wait_for

    runs = 1000
    url, folder = start_cluster()  # a cluster of its own: the others' tests go on beside
    try:
        orch = Orchestrator(store=url)
        try:
            orch.register_workflow("w", "1.0.0", {"nodes": [{"id": "n", "lua": "return {v = 1}"}]})
            with Calls(16) as calls:
                futures = [calls.submit(orch.execute_workflow, "w") for _ in range(runs)]
                wait_for(lambda: sum(f.done() for f in futures) >= 50, "the first runs")
                restart_cluster(folder)
                # (Counted after the restart: runs waiting for their end's commit could not
                # finish while the server was down.)
                finished_then = sum(f.done() for f in futures)
                # A run lost (its waiter never told) fails here, naming it, not a hang.
                ended = results(futures, "runs", name=lambda i: f"run #{i}")
            assert finished_then < runs, "the restart came after the last run"
            assert all(r.ok for r in ended)  # type: ignore[union-attr]
            stored = orch.store.list_runs(workflow_id="w", limit=1000)  # reads work again
            assert len(stored) == runs
            assert {r.status for r in stored} == {"succeeded"}
            assert orch.store.write_error is None
            print(
                f"\n{runs} runs: {finished_then} finished when PostgreSQL was back from its "
                f"restart, all {runs} succeeded and recorded once"
            )
        finally:
            within(orch.stop, "the orchestrator's stop")
    finally:
        stop_cluster(folder)


@pytest.mark.parametrize("kind", ["single", "replica"])
def test_a_write_after_the_server_dropped_the_idle_connection_goes_through(
    pg_url: str, kind: str
) -> None:
    # The server ended the session while it sat idle (a client cut off past the sessions'
    # tcp_user_timeout, a restarted server): the next commit finds out on its first
    # statement. It is written again on a new connection instead of failing the caller
    # (a replica rejoining after a cut raised psycopg's error out of execute_workflow).
    import psycopg
    from dagengine.orchestrator.store import RunRecord

    if kind == "replica":
        store = PostgresStore(pg_url, replica="dropped-idle-replica")
    else:
        store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    try:
        store.create_run(RunRecord("before-drop", "wf", "1.0.0"))
        pid = store._db.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        store.create_run(RunRecord("after-drop", "wf", "1.0.0"))  # its own transaction
        assert store._db.info.backend_pid != pid
        assert store.get_run("after-drop") is not None
        # The same for a group of queued writes committed by a caller's flush (what
        # execute_workflow(wait=False) does): pipelined, its BEGIN goes with the rest.
        pid = store._db.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        store.create_run_later(RunRecord("queued-after-drop", "wf", "1.0.0"))
        store.flush()
        assert store._db.info.backend_pid != pid
        assert store.get_run("queued-after-drop") is not None
    finally:
        store.close()


def test_closing_a_store_that_cannot_commit_still_lets_go_of_its_connections(
    pg_url: str,
) -> None:
    import psycopg
    from dagengine.exceptions import StoreError
    from dagengine.orchestrator.store import RunRecord

    first = open_store(pg_url, exclusive=True)
    assert isinstance(first, PostgresStore)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (first._db.info.backend_pid,))
    second = open_store(pg_url, exclusive=True)  # first cannot get its lock back
    try:
        first.create_run_later(RunRecord("r", "wf", "1.0.0"))
        # What it could not commit is reported (here: its connection was found dead), not
        # hidden; and nothing is left open.
        with pytest.raises((StoreError, psycopg.OperationalError)):
            first.close()
        assert first._db is None or first._db.closed
        assert first._pool.closed
    finally:
        second.close()


def test_dagengine_store_standby_must_be_0_or_1(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagengine.exceptions import ConfigError

    monkeypatch.setenv("DAGENGINE_STORE_STANDBY", "yes please")
    with pytest.raises(ConfigError, match="DAGENGINE_STORE_STANDBY must be 0 or 1"):
        open_store(pg_url, exclusive=True)
    monkeypatch.setenv("DAGENGINE_STORE_STANDBY", "1")
    with open_store(pg_url) as tool:  # only an orchestrator's (exclusive) store stands by
        assert isinstance(tool, PostgresStore)
        assert not tool.standby


@pytest.mark.parametrize("kind", ["single", "replica"])
def test_a_group_whose_commit_answer_was_lost_is_written_again(pg_url: str, kind: str) -> None:
    # A server restarted between committing a group and answering (or, a replica's, the
    # server dropped its cut-off session): the writer only sees the connection go, puts the
    # group back and writes it again. Its events were stored already (a duplicate key for
    # ever, before; a replica's, numbered at the commit, stored twice) and its run's end
    # too (not recorded).
    import threading

    import psycopg
    from dagengine.orchestrator.store import RunRecord

    if kind == "replica":
        store = PostgresStore(pg_url, replica="lost-answer-replica")
    else:
        store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    real = store._write_group
    lost: list[str] = []  # what the groups whose answer was lost held

    def answer_lost(pending: list, events: list) -> list:  # type: ignore[type-arg]
        written = real(pending, events)
        held = "events" if events else "end" if any(k == "finish" for k, _ in pending) else ""
        if held and held not in lost:
            lost.append(held)
            raise psycopg.OperationalError("the server closed the connection unexpectedly")
        return written

    store._write_group = answer_lost  # type: ignore[method-assign]
    try:
        store.create_run(RunRecord("lost-answer", "wf", "1.0.0"))
        attempt = store.claim_attempt("lost-answer", "local")
        ended = threading.Event()
        recorded: list[bool] = []
        store.append_event_later(None, "node.started", workflow_id="wf", run_id="lost-answer")
        store.finish_run_later(
            "lost-answer",
            attempt,
            "succeeded",
            {"ok": True},
            None,
            lambda ok: (recorded.append(ok), ended.set()),
        )
        assert ended.wait(30), "the run's end was never told"
        store.flush()
        assert sorted(lost) == ["end", "events"], lost
        assert recorded == [True]
        assert store.get_run("lost-answer").status == "succeeded"
        assert [e.type for e in store.events(run_id="lost-answer")] == ["node.started"]
        assert store.write_error is None
    finally:
        store.close()


# --- the writer's prepared statements -----------------------------------------------------------


def test_isolating_a_row_keeps_the_writers_prepared_statements(pg_url: str) -> None:
    """A group that fails on one row's data is rolled back and halved until the row stands
    alone. psycopg deallocates every prepared statement of a session that runs ROLLBACK (in
    case the transaction dropped what they name), so each isolation cost the writer all of
    them: parsed again and prepared again only after ``prepare_threshold`` (5) more uses
    each. The writer's transactions change no schema; its rollbacks keep them."""
    from dagengine.orchestrator.store import RunRecord

    def prepared(store: PostgresStore) -> set[str]:
        with store._lock:  # (the writer's connection: its own session's statements)
            rows = store._db.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        return {statement for (statement,) in rows}

    store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    try:
        pid = store._db.info.backend_pid
        for i in range(8):  # past psycopg's prepare_threshold: the group's statements
            store.create_run_later(RunRecord(f"r{i}", "wf", "1.0.0"))
            store.append_event_later(None, "run.queued", workflow_id="wf", run_id=f"r{i}")
            store.flush()
        before = prepared(store)
        assert len(before) >= 2, before  # the runs' and the events' inserts, at least
        store.create_run_later(RunRecord("good", "wf", "1.0.0"))
        store.create_run_later(RunRecord("bad", "wf", "1.0.0", inputs={"a": "\udcff"}))
        store.append_event_later(None, "run.queued", workflow_id="wf", run_id="bad")
        store.flush()
        assert store.write_error is None
        assert store.get_run("bad") is not None  # isolated, written escaped
        assert store._db.info.backend_pid == pid  # the same connection
        after = prepared(store)
        assert before <= after, f"lost: {sorted(before - after)}"
    finally:
        store.close()


# --- compact event history (issue 23): events keyed by their run's number ---------------------


def _store_at_version_5(url: str) -> None:
    """A store as dagengine left it before migration 6: a finished run with its events (one
    folded, one with a common payload by number), a run-less engine event and an event of a
    run that has no row, written in the old ``events`` table."""
    import psycopg
    from dagengine.orchestrator.store.compact import fold_events
    from dagengine.orchestrator.store.postgres_schema import PG_MIGRATIONS

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dagengine_schema (id INTEGER PRIMARY KEY, version INTEGER)")
        for migration in PG_MIGRATIONS[:5]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("INSERT INTO dagengine_schema VALUES (1, 5)")
        conn.execute(
            "INSERT INTO runs (run_id, workflow_id, version, status, inputs, resolved_versions,"
            " created_at, finished_at) VALUES ('old-run', 'wf', '1.0.0', 'succeeded', '{}',"
            " '{}', 1, 2)"
        )
        node = '{"attempt":1,"node_attempt":1}'
        rows = fold_events(
            [
                (1, 1.0, "run.queued", 1, "wf", "old-run", None, None, '{"n":1}'),
                (2, 1.2, "node.started", 1, "wf", "old-run", "n", "e1", node),
                (3, 1.5, "node.succeeded", 1, "wf", "old-run", "n", "e1", node),
                (4, 1.6, "engine.healthy", 1, None, None, None, "e1", "{}"),
                (5, 1.7, "run.queued", 1, "wf", "no-row", None, None, "{}"),
                (6, 2.0, "run.completed", 1, "wf", "old-run", None, None, '{"ok":true}'),
            ]
        )
        assert [row[0] for row in rows] == [1, 3, 4, 5, 6]  # (one folded row, as stored)
        for row in rows:
            conn.execute(
                "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, node_id,"
                " engine_id, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                row,
            )
        conn.execute("SELECT setval('events_seq', 6)")


def test_events_move_to_rows_keyed_by_their_runs_number_and_read_the_same(pg_url: str) -> None:
    from dagengine.orchestrator.store import RunRecord
    from dagengine.orchestrator.store.postgres_schema import PG_MIGRATIONS
    from pg import query

    _store_at_version_5(pg_url)

    def read(store: PostgresStore, **filters: object) -> list[tuple[object, ...]]:
        return [(e.seq, e.type, e.run_id, e.node_id, e.data) for e in store.events(**filters)]

    expected = [
        (1, "run.queued", "old-run", None, {"n": 1}),
        (2, "node.started", "old-run", "n", {"attempt": 1, "node_attempt": 1}),
        (3, "node.succeeded", "old-run", "n", {"attempt": 1, "node_attempt": 1}),
        (4, "engine.healthy", None, None, {}),
        (5, "run.queued", "no-row", None, {}),
        (6, "run.completed", "old-run", None, {"ok": True}),
    ]
    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        assert store.schema_version == len(PG_MIGRATIONS)  # (6, and those after it)
        assert read(store) == expected
        assert read(store, run_id="old-run") == [e for e in expected if e[2] == "old-run"]
        assert read(store, run_id="no-row") == [expected[4]]
        assert read(store, workflow_id="wf", types=["node.started"]) == [expected[1]]
        # Stored: the run's number, not its id (kept only where the run has no row).
        (key,) = query(pg_url, "SELECT ord FROM runs WHERE run_id = 'old-run'")[0]
        assert query(pg_url, "SELECT seq, run_key, run_id FROM event_rows ORDER BY seq") == [
            (1, key, None),
            (3, key, None),
            (4, None, None),
            (5, None, "no-row"),
            (6, key, None),
        ]
        # SQL written against the old table reads the same columns through the view.
        assert query(pg_url, "SELECT seq, run_id FROM events WHERE type = 'run.queued'") == [
            (1, "old-run"),
            (5, "no-row"),
        ]
        # New events are keyed as they are written, also through the view.
        store.create_run(RunRecord("new-run", "wf", "1.0.0"))
        seq = store.append_event(None, "run.queued", workflow_id="wf", run_id="new-run")
        store.append_event_later(None, "run.started", workflow_id="wf", run_id="new-run")
        store.flush()
        (new_key,) = query(pg_url, "SELECT ord FROM runs WHERE run_id = 'new-run'")[0]
        assert query(pg_url, f"SELECT run_key, run_id FROM event_rows WHERE seq >= {seq}") == [
            (new_key, None),
            (new_key, None),
        ]
        assert [e.type for e in store.events(run_id="new-run")] == ["run.queued", "run.started"]
    with open_store(pg_url) as again:  # opened again: nothing left to migrate
        assert again.schema_version == len(PG_MIGRATIONS)
        assert read(again, run_id="old-run") == [e for e in expected if e[2] == "old-run"]


def test_sql_against_the_old_events_table_still_writes_the_same_events(pg_url: str) -> None:
    from dagengine.orchestrator.store import RunRecord
    from pg import query

    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        store.create_run(RunRecord("r", "wf", "1.0.0"))
        with store.transaction():
            store._write(
                "INSERT INTO events (seq, time, type, severity, workflow_id, run_id, data) "
                "VALUES (100, 1.0, 'run.queued', 1, 'wf', 'r', '{}'), "
                "(101, 1.0, 'run.queued', 1, 'wf', 'gone', '{}')"
            )
        assert [(e.seq, e.run_id) for e in store.events(after=99)] == [(100, "r"), (101, "gone")]
        assert query(pg_url, "SELECT run_id IS NULL, run_key IS NULL FROM event_rows") == [
            (True, False),
            (False, True),
        ]
        with store.transaction():
            store._write("DELETE FROM events WHERE run_id = 'r'")
        assert [e.seq for e in store.events(after=99)] == [101]


# --- a run whose whole life is in one group ----------------------------------------------------


def _updated_runs(store: PostgresStore) -> int:
    """Rows of ``runs`` the store's writer has updated (its session's statistics, flushed)."""
    with store._lock:
        store._db.execute("SELECT pg_stat_force_next_flush()")
    with store._pool.connection() as conn:  # (another session: the writer's stats flushed)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = to_regclass('runs')"
        ).fetchone()
    return int(row[0])


def test_a_run_created_and_ended_in_one_group_is_inserted_as_it_ended(pg_url: str) -> None:
    """Created running, its outputs and its end in one group: one row inserted as it ended
    (no second version of the row), its outputs stored in completion order, its end told
    as recorded; the same rows as the writes one after the other."""
    import threading

    from dagengine.orchestrator.store import RunRecord

    store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    try:
        store.create_run(RunRecord("before", "wf", "1.0.0"))  # (stats exist for runs)
        updated = _updated_runs(store)
        told: list[tuple[str, bool]] = []
        ended = threading.Event()

        def tell(run_id: str) -> object:
            return lambda ok: (told.append((run_id, ok)), len(told) == 3 and ended.set())

        for name, parent in (("whole", None), ("child", "whole"), ("other", None)):
            store.create_run_later(
                RunRecord(
                    name, "wf", "1.0.0", status="running", attempt=1, engine_id="e1",
                    parent_run_id=parent,
                )
            )  # fmt: skip
        store.save_node_output_later("whole", "b", 1, {"v": 2})
        store.save_node_output_later("whole", "a", 1, {"v": 1})
        store.save_node_output_later("whole", "a", 1, {"v": 3})  # a node written twice
        store.save_node_output_later("other", "x", 2, {"late": True})  # not its attempt
        for name in ("whole", "child", "other"):
            store.finish_run_later(name, 1, "succeeded", {"ok": True}, None, tell(name))
        assert ended.wait(30)
        assert sorted(told) == [("child", True), ("other", True), ("whole", True)]
        for name in ("whole", "child", "other"):
            rec = store.get_run(name)
            assert rec is not None
            assert (rec.status, rec.attempt, rec.result) == ("succeeded", 1, {"ok": True})
            assert rec.finished_at is not None
        assert list(store.node_outputs("whole").items()) == [("b", {"v": 2}), ("a", {"v": 3})]
        assert store.node_outputs("other") == {}  # refused: not the run's attempt
        # "child" was inserted as it ended; "whole" (a parent created in the group) and
        # "other" (an output of another attempt) were inserted, then updated.
        assert _updated_runs(store) - updated == 2
    finally:
        store.close()


def test_a_whole_run_whose_commit_answer_was_lost_is_recorded_once(pg_url: str) -> None:
    import threading

    import psycopg
    from dagengine.orchestrator.store import RunRecord

    store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    real = store._write_group
    lost: list[bool] = []

    def answer_lost(pending: list, events: list) -> list:  # type: ignore[type-arg]
        written = real(pending, events)
        if not lost:
            lost.append(True)
            raise psycopg.OperationalError("the server closed the connection unexpectedly")
        return written

    store._write_group = answer_lost  # type: ignore[method-assign]
    try:
        ended = threading.Event()
        recorded: list[bool] = []
        store.create_run_later(
            RunRecord("whole", "wf", "1.0.0", status="running", attempt=1, engine_id="e1")
        )
        store.save_node_output_later("whole", "a", 1, {"v": 1})
        store.finish_run_later(
            "whole", 1, "failed", None, {"why": "x"}, lambda ok: (recorded.append(ok), ended.set())
        )
        assert ended.wait(30), "the run's end was never told"
        assert lost == [True]
        assert recorded == [True]  # stored by the first commit, found by the second
        rec = store.get_run("whole")
        assert rec is not None
        assert (rec.status, rec.error) == ("failed", {"why": "x"})
        assert store.node_outputs("whole") == {"a": {"v": 1}}
        assert store.write_error is None
    finally:
        store.close()


def test_a_run_created_by_a_commit_whose_answer_was_lost_ends_when_its_group_comes(
    pg_url: str,
) -> None:
    """The run's creation is committed but its answer lost (a restarted server); the writer
    puts it back, and its outputs and end queue behind it: the group written again holds
    the run's whole life, and its row exists already. Its outputs and end apply to that
    row as they would have (a run lost for ever before: its end was never recorded)."""
    import threading

    import psycopg
    from dagengine.orchestrator.store import RunRecord

    store = open_store(pg_url, exclusive=True)
    assert isinstance(store, PostgresStore)
    real = store._write_group
    lost: list[bool] = []
    queued = threading.Event()

    def answer_lost(pending: list, events: list) -> list:  # type: ignore[type-arg]
        written = real(pending, events)
        if not lost and [kind for kind, _ in pending] == ["create"]:
            lost.append(True)
            assert queued.wait(10)  # (what comes next queues behind the group)
            raise psycopg.OperationalError("the server closed the connection unexpectedly")
        return written

    store._write_group = answer_lost  # type: ignore[method-assign]
    try:
        store.create_run_later(
            RunRecord("r", "wf", "1.0.0", status="running", attempt=1, engine_id="e1")
        )
        failed: list[BaseException] = []

        def flush() -> None:
            try:
                store.flush()
            except psycopg.OperationalError as exc:  # (the lost answer, as the writer sees it)
                failed.append(exc)

        flushing = threading.Thread(target=flush)
        flushing.start()
        while not lost:
            threading.Event().wait(0.01)
        ended = threading.Event()
        recorded: list[bool] = []
        store.save_node_output_later("r", "a", 1, {"v": 1})
        store.finish_run_later(
            "r", 1, "succeeded", {"ok": True}, None, lambda ok: (recorded.append(ok), ended.set())
        )
        queued.set()
        flushing.join(30)
        assert len(failed) == 1
        assert ended.wait(30), "the run's end was never told"
        assert recorded == [True]
        rec = store.get_run("r")
        assert rec is not None
        assert (rec.status, rec.result) == ("succeeded", {"ok": True})
        assert store.node_outputs("r") == {"a": {"v": 1}}
    finally:
        store.close()

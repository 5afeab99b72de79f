"""Choosing the PostgreSQL store: ``DAGENGINE_STORE``, the serve config file's ``store:``,
``--store`` and ``Orchestrator(store=...)`` all take a ``postgresql://`` URL (and leave it as it
is: no folder made, no path resolved). A real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

from pathlib import Path

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

"""Row locks on a real PostgreSQL: a lease renewal never waits for a run's row another
transaction holds (it deadlocked with the writer's run ends), and a group commit the server
rolls back for a deadlock is written again instead of failing whoever flushed it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import psycopg
import pytest
from bounded import within
from dagengine import Orchestrator
from dagengine.orchestrator.config import Config
from dagengine.orchestrator.store import PostgresStore
from dagengine.orchestrator.store.records import RunRecord
from outcomes import handle
from pg import query

SPEC = {"nodes": [{"id": "n", "lua": "return {v = inputs.i}"}]}


@pytest.fixture
def replica(pg_url: str) -> Iterator[Orchestrator]:
    config = dataclasses.replace(Config.local_from_env(), replica=True, lease_ttl=30.0)
    orch = Orchestrator(store=pg_url, config=config, embedded_engine=False)
    try:
        orch.register_workflow("w", "1.0.0", SPEC)
        yield orch
    finally:
        orch.stop()


def test_a_lease_renewal_skips_a_run_whose_row_is_locked(
    pg_url: str, replica: Orchestrator
) -> None:
    # No engine: both runs stay queued, owned by this replica.
    runs = [handle(replica.execute_workflow("w", {"i": i}, wait=False)).run_id for i in (1, 2)]
    store = replica.store
    assert isinstance(store, PostgresStore)
    assert store.renew_leases() == 2
    with psycopg.connect(pg_url) as holder:  # a transaction of its own holds one run's row
        holder.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (runs[0],))
        # Before, the renewal waited for that lock (and deadlocked with the writer's ends
        # when the writer waited for a row the renewal had locked).
        assert within(store.renew_leases, "the renewal beside a locked row", 10) == 1
        lease = query(pg_url, f"SELECT lease_until FROM runs WHERE run_id = '{runs[0]}'")
        holder.rollback()
    assert store.renew_leases() == 2
    assert query(pg_url, f"SELECT lease_until FROM runs WHERE run_id = '{runs[0]}'") > lease


def test_a_group_commit_rolled_back_for_a_deadlock_is_written_again(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        # The server refuses the next write to runs as a deadlock's victim (SQLSTATE 40P01),
        # once: a sequence counts the tries (it is not rolled back with them).
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                """
                CREATE SEQUENCE deadlock_tries;
                CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('deadlock_tries') = 1 THEN
                        RAISE EXCEPTION 'deadlock detected (injected by the test)'
                            USING ERRCODE = '40P01';
                    END IF;
                    RETURN NULL;
                END $$;
                CREATE TRIGGER deadlock_once BEFORE INSERT OR UPDATE ON runs
                    FOR EACH STATEMENT EXECUTE FUNCTION deadlock_once();
                """
            )
        store.create_run_later(RunRecord("r1", "w", "1.0.0", created_at=1.0))
        # A reader's flush (as the dispatcher's read of a run's stored outputs): before, the
        # error reached it, and the dispatcher died of it.
        assert store.node_outputs("r1") == {}
        assert query(pg_url, "SELECT run_id, status FROM runs") == [("r1", "queued")]
        assert query(pg_url, "SELECT last_value FROM deadlock_tries") == [(2,)]
    finally:
        store.close()

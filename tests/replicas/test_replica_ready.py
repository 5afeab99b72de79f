"""A replica cut off from PostgreSQL: ``GET /readyz`` unready once its leases have gone a
lease's time to live unrenewed (its runs are moving to the other replicas, a load balancer
should send work elsewhere), ready again when the link is back, ``/healthz`` (liveness)
answering throughout; and a transaction it left open on the server does not block the
others for longer than a lease."""

from __future__ import annotations

import contextlib
import dataclasses

import httpx
import pytest
from cable import Cable
from dagengine import Orchestrator
from dagengine.api import ServerThread, create_app
from dagengine.orchestrator.config import Config
from processes import wait_for

pytestmark = pytest.mark.integration

LEASE_TTL = 1.0


def test_a_replica_cut_off_from_the_database_is_unready_until_it_is_back(pg_url: str) -> None:
    cable = Cable(pg_url)
    config = dataclasses.replace(Config.local_from_env(), replica=True, lease_ttl=LEASE_TTL)
    orch = Orchestrator(store=cable.url, config=config, embedded_engine=False)
    server = ServerThread(create_app(orch, metrics=False)).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        assert client.get("/readyz").status_code == 200
        cable.pull()
        wait_for(lambda: client.get("/readyz").status_code == 503, "the replica to be unready")
        body = client.get("/readyz").json()
        assert "leases last renewed" in body["store"], body
        assert client.get("/healthz").status_code == 200
        cable.plug()
        wait_for(lambda: client.get("/readyz").status_code == 200, "the replica to be ready")
    finally:
        cable.plug()
        client.close()
        server.stop()
        orch.stop()
        cable.close()


def test_a_cut_replicas_open_transaction_does_not_block_the_others(pg_url: str) -> None:
    """A replica cut off in the middle of a commit leaves its transaction open on the
    server (no FIN comes; the server's keepalives take hours by default), holding its runs'
    row locks and the lock events are numbered under. The server aborts it after a lease
    TTL idle (the replica's sessions set ``idle_in_transaction_session_timeout``): the
    others then take the run over and commit their events."""
    from dagengine.orchestrator.store import PostgresStore, RunRecord
    from dagengine.orchestrator.store.postgres_schema import EVENTS_LOCK

    cable = Cable(pg_url)
    cut = PostgresStore(cable.url, replica="cut", lease_ttl=LEASE_TTL)
    other = PostgresStore(pg_url, replica="other", lease_ttl=LEASE_TTL)
    conn = cut._connect()  # a writer's connection, as the replica's writer opens it
    try:
        cut.create_run(RunRecord("r", "wf", "1.0.0"))
        assert cut.claim_attempt("r", "e1") == 1
        # Mid-commit: the run's row and the events lock held, then the cable is pulled.
        conn.execute("BEGIN")
        conn.execute("UPDATE runs SET engine_id = 'e2' WHERE run_id = 'r'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
        cable.pull()
        wait_for(
            lambda: [rec.run_id for rec in other.take_over(10)] == ["r"],
            "the other replica to take the run over",
        )
        with other.transaction():  # the events lock is free again
            other._write("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
    finally:
        cable.plug()
        with contextlib.suppress(Exception):
            conn.close()
        cut.close()
        other.close()
        cable.close()

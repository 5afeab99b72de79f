"""``GET /readyz`` of a replica cut off from PostgreSQL: unready once its leases have gone a
lease's time to live unrenewed (its runs are moving to the other replicas, a load balancer
should send work elsewhere), ready again when the link is back; ``/healthz`` (liveness)
answers throughout, so the replica is not restarted for a database outage."""

from __future__ import annotations

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

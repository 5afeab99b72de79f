"""One orchestrator replica in its own process, for the replica tests: ``python
replica_proc.py URL PREFIX N LEASE_TTL ENGINE_ADDRESS...``.

Opens the PostgreSQL store as a replica (``Orchestrator(replica=True)``), registers the
engines and the ledger workflow, submits runs ``PREFIX-0`` .. ``PREFIX-N-1``, prints
``replica ID`` and then ``submitted``, and keeps working (its runs, and runs it takes over
from other replicas) until its stdin closes; then it stops. A line ``submit PREFIX N`` on
stdin submits N more runs and waits for them (``PREFIX-0``..), printing ``finished PREFIX
STATUS...`` (their statuses).
"""

from __future__ import annotations

import dataclasses
import sys

from dagengine import Orchestrator
from dagengine.orchestrator.config import Config
from failover_tasks import SPEC


def main() -> None:
    url, prefix, count, lease_ttl, *engines = sys.argv[1:]
    config = dataclasses.replace(
        Config.local_from_env(), store_path=url, replica=True, lease_ttl=float(lease_ttl)
    )
    orch = Orchestrator(config=config, embedded_engine=False)
    assert orch.replicas is not None
    print(f"replica {orch.replicas.replica_id}", flush=True)
    for i, address in enumerate(engines):
        orch.register_engine(f"engine-{i}", address)
    orch.register_workflow("ledger", "1.0.0", SPEC)
    for i in range(int(count)):
        orch.execute_workflow("ledger", {}, wait=False, run_id=f"{prefix}-{i}")
    print("submitted", flush=True)
    for line in sys.stdin:  # until the test closes it
        command, prefix, more = line.split()
        assert command == "submit", line
        handles = [
            orch.execute_workflow("ledger", {}, wait=False, run_id=f"{prefix}-{i}")
            for i in range(int(more))
        ]
        statuses = {h.result(timeout=120).status.value for h in handles}  # type: ignore[union-attr]
        print(f"finished {prefix} {' '.join(sorted(statuses))}", flush=True)
    orch.stop()


if __name__ == "__main__":
    main()

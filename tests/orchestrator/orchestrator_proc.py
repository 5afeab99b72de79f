"""An orchestrator in its own process, for the restart test: ``python orchestrator_proc.py
STORE LEDGER N ENGINE_ADDRESS...``.

Registers the ledger workflow (a no-op when the store already has it), submits runs
``run-0`` .. ``run-N-1`` that the store does not know yet, and prints ``done K`` each time the
number of finished runs changes, until all N are finished. Runs left queued or running by a
killed predecessor are resumed by the orchestrator itself on start.
"""

from __future__ import annotations

import sys
import time

from dagengine import Orchestrator
from dagengine.orchestrator.store import FINISHED_STATUSES
from failover_tasks import SPEC


def main() -> None:
    store_path, _ledger, count, *engines = sys.argv[1:]
    total = int(count)
    orch = Orchestrator(store=store_path, embedded_engine=False)
    for i, address in enumerate(engines):
        orch.register_engine(f"engine-{i}", address)
    orch.register_workflow("ledger", "1.0.0", SPEC)
    for i in range(total):
        run_id = f"run-{i}"
        if orch.store.get_run(run_id) is None:
            orch.execute_workflow("ledger", {}, wait=False, run_id=run_id)
    print("submitted", flush=True)
    last = -1
    while True:
        finished = sum(
            1 for r in orch.store.list_runs(limit=total + 10) if r.status in FINISHED_STATUSES
        )
        if finished != last:
            print(f"done {finished}", flush=True)
            last = finished
        if finished >= total:
            break
        time.sleep(0.02)
    orch.stop()


if __name__ == "__main__":
    main()

"""A distributed orchestrator in its own network namespace, driven over stdin/stdout.

``python orchestrator_host.py --store PATH [--port 50051] [--interval 1.0]``

It is ``Orchestrator.from_config(Config(discovery="self-registration", ...))``: engines find
it by registering themselves, health checks run every ``--interval`` seconds, and the gRPC
``OrchestratorService`` listens on ``--port`` on every address of its namespace. It registers
the ledger workflow (a no-op when the store has it already) and then:

* **stdout**, one JSON object per line:

  - ``{"event": "ready", "port": P, "pid": N}`` once it serves;
  - ``{"event": TYPE, "seq", "time", "run_id", "engine_id", "data"}`` for each orchestrator
    event of the types in ``EVENT_TYPES`` (engines joining, failing, recovering, leaving; runs
    starting, moving, ending), including the ones published while it started (a resumed
    run's ``run.redispatched``);
  - ``{"event": "progress", "queued": Q, "running": R, "succeeded": S, "failed": F,
    "cancelled": C}`` each time the store's run counts change (read from the SQLite file:
    counts survive a restart, even when the event of a run finished by a SIGKILLed
    predecessor was lost);
  - ``{"reply": COMMAND, ...}`` answering a command.

* **stdin**, one JSON command per line:

  - ``{"cmd": "submit", "prefix": "r", "count": N, "rate": R}``: submit runs ``r0`` ..
    ``r<N-1>`` that the store does not have yet, with the run id as the load-balancing key,
    ``R`` per second (0: all at once), in the background (``"key_prefix": "k"`` gives run
    ``r<i>`` the key ``k<i>`` instead); replies ``{"reply": "submit",
    "prefix", "submitted", "skipped"}`` when all are in;
  - ``{"cmd": "owners", "keys": [...]}``: the consistent-hash owner of each key,
    ``{"reply": "owners", "owners": {key: engine_id}}``;
  - ``{"cmd": "engines"}``: healthy engines, ``{"reply": "engines", "engines": {id:
    {"capacity", "active"}}}``;
  - ``{"cmd": "stop"}`` (or end of input): stop cleanly, reply, exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from typing import Any

from dagengine.orchestrator import Config, Monitor, Orchestrator, Store
from multihost_tasks import SPEC, VERSION, WORKFLOW_ID

EVENT_TYPES = [
    "engine.joined",
    "engine.left",
    "engine.unhealthy",
    "engine.recovered",
    "run.started",
    "run.redispatched",
    "run.completed",
    "run.failed",
    "run.cancelled",
]
_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout (whole lines only, from any thread)."""
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def forward_events(orch: Orchestrator, after: int, stop: threading.Event) -> None:
    """Print the orchestrator's events of interest after cursor ``after``."""
    monitor = Monitor(orch)
    with monitor.subscribe(types=EVENT_TYPES, after=after, buffer=10_000) as sub:
        while not stop.is_set():
            event = sub.get(timeout=0.1)
            if event is None:
                continue
            emit(
                {
                    "event": event.type,
                    "seq": event.seq,
                    "time": event.time,
                    "run_id": event.run_id,
                    "node_id": event.node_id,
                    "engine_id": event.engine_id,
                    "data": dict(event.data),
                }
            )
    monitor.close()


def report_progress(store_path: str, stop: threading.Event) -> None:
    """Print the store's run counts by status whenever they change."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)
    last: dict[str, int] = {}
    try:
        while not stop.wait(0.02):
            rows = db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
            counts = {status: 0 for status in _STATUSES} | dict(rows)
            if counts != last:
                emit({"event": "progress", **counts})
                last = counts
    finally:
        db.close()


def submit(orch: Orchestrator, prefix: str, count: int, rate: float, key_prefix: str) -> None:
    """Submit the runs ``prefix0`` .. that the store does not have, ``rate`` per second;
    run ``prefix<i>`` has the key ``key_prefix<i>``."""
    submitted = skipped = 0
    start = time.monotonic()
    for i in range(count):
        run_id = f"{prefix}{i}"
        if orch.store.get_run(run_id) is not None:
            skipped += 1
            continue
        if rate > 0:
            delay = start + submitted / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        orch.execute_workflow(WORKFLOW_ID, {}, wait=False, key=f"{key_prefix}{i}", run_id=run_id)
        submitted += 1
    emit({"reply": "submit", "prefix": prefix, "submitted": submitted, "skipped": skipped})


def handle(orch: Orchestrator, command: dict[str, Any]) -> bool:
    """Carry out one command; False once told to stop."""
    cmd = command.get("cmd")
    if cmd == "submit":
        threading.Thread(
            target=submit,
            args=(
                orch,
                command["prefix"],
                int(command["count"]),
                float(command.get("rate", 0)),
                command.get("key_prefix", command["prefix"]),
            ),
            daemon=True,
        ).start()
    elif cmd == "owners":
        owner = getattr(orch.balancer, "owner", None)
        if owner is None:
            emit({"reply": "owners", "error": "the balancer is not consistent-hash"})
        else:
            emit({"reply": "owners", "owners": {key: owner(key) for key in command["keys"]}})
    elif cmd == "engines":
        engines = {
            eid: {"capacity": load.capacity, "active": load.active}
            for eid, load in orch.engines().items()
        }
        emit({"reply": "engines", "engines": engines})
    elif cmd == "stop":
        return False
    else:
        emit({"reply": "error", "error": f"unknown command {cmd!r}"})
    return True


def main() -> None:
    """Start the orchestrator, serve commands until ``stop`` or end of input, stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--balancer", default="consistent-hash")
    args = parser.parse_args()

    store = Store(args.store)
    # Events published while the orchestrator starts (resumed runs) are replayed from here.
    cursor = store.last_event_seq()
    config = Config(
        discovery="self-registration",
        engine_health_check_interval=args.interval,
        load_balancer_type=args.balancer,
        store_path=args.store,
    )
    orch = Orchestrator.from_config(config, grpc_port=args.port, store=store)
    stop = threading.Event()
    threads = [
        threading.Thread(target=forward_events, args=(orch, cursor, stop), daemon=True),
        threading.Thread(target=report_progress, args=(args.store, stop), daemon=True),
    ]
    try:
        orch.register_workflow(WORKFLOW_ID, VERSION, SPEC)
        for thread in threads:
            thread.start()
        port = orch.cluster.port if orch.cluster is not None else None
        emit({"event": "ready", "port": port, "pid": os.getpid()})
        for line in sys.stdin:
            if line.strip() and not handle(orch, json.loads(line)):
                break
    finally:
        orch.stop()
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        store.close()
    emit({"reply": "stop"})


if __name__ == "__main__":
    main()

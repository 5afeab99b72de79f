"""Python nodes for the orchestrator tests, named by import path in specs (so the workflows
persist in the store and run on engine processes too).

Both append one line ``run_id node_id`` to the file named by the run input ``ledger`` when
they complete: the count of lines per node tells how often it really ran.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dagengine import NodeContext


def _record(ctx: NodeContext) -> None:
    with open(ctx.inputs["ledger"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ctx.run_id} {ctx.node_id}\n")


def count(ctx: NodeContext) -> dict[str, Any]:
    """Record the execution; return the node id."""
    _record(ctx)
    return {"node": ctx.node_id}


def gated(ctx: NodeContext) -> dict[str, Any]:
    """Wait until the file named by the run input ``gate`` exists (failing if the node is
    cancelled meanwhile), then record the execution."""
    gate = Path(ctx.inputs["gate"])
    while True:
        if ctx.cancelled:
            raise RuntimeError("cancelled while waiting for the gate")
        if gate.exists():
            break
        time.sleep(0.01)
    _record(ctx)
    return {"node": ctx.node_id, "after": sorted(ctx.results)}


def ledger_counts(path: Path) -> dict[str, int]:
    """``node_id`` -> how many times it completed, over every run in the ledger."""
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            _, node_id = line.split()
            counts[node_id] = counts.get(node_id, 0) + 1
    return counts

"""Python nodes for the failover tests, run in engine processes (``failover_tasks:record``).

Each call sleeps a little (so runs overlap an engine's death) and then appends one line
``run_id node_id`` to the ledger file named by ``DAGENGINE_TEST_LEDGER``: the side effect
whose count tells whether a node ran again. Appends of one short line are atomic (O_APPEND).
"""

from __future__ import annotations

import os
import time
from typing import Any

from dagengine import NodeContext


def record(ctx: NodeContext) -> dict[str, Any]:
    """Do the node's 'work', then record that it completed."""
    time.sleep(float(os.environ.get("DAGENGINE_TEST_NODE_SECONDS", "0.02")))
    with open(os.environ["DAGENGINE_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ctx.run_id} {ctx.node_id}\n")
    return {"n": len(ctx.results) + 1}


SPEC: dict[str, Any] = {
    "id": "ledger",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "python": "failover_tasks:record"},
        {"id": "b", "deps": ["a"], "python": "failover_tasks:record"},
        {"id": "c", "deps": ["b"], "lua": "return {sum = results.b.n + 1}"},
    ],
}

"""The workflow of tests/deploy/test_images.py, run by the containers: ``dagengine serve
--workflows`` loads it in the orchestrator, engines import its node from ``PYTHONPATH``.

Nodes ``a`` and ``b`` (Python) sleep ``inputs.seconds`` (so runs overlap the faults), then
append ``run_id node_id engine_id end_time start_time`` (Unix times) to the ledger file
``DAGENGINE_TEST_LEDGER``, a bind mount every container shares: how many times each node
completed, where, and when it started. ``c`` is Lua. No imports from the tests: only the
image's own packages are there.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from dagengine import NodeContext

WORKFLOW_ID = "image-ledger"
VERSION = "1.0.0"


def record(ctx: NodeContext) -> dict[str, Any]:
    """Do the node's 'work', then record that it completed (and where)."""
    started = time.time()
    time.sleep(float(ctx.inputs.get("seconds", 0.2)))
    engine = os.environ.get("ENGINE_ID") or socket.gethostname()
    with open(os.environ["DAGENGINE_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ctx.run_id} {ctx.node_id} {engine} {time.time():.6f} {started:.6f}\n")
    return {"n": len(ctx.results) + 1, "engine": engine}


SPEC: dict[str, Any] = {
    "id": WORKFLOW_ID,
    "version": VERSION,
    "nodes": [
        {"id": "a", "python": "image_flow:record"},
        {"id": "b", "deps": ["a"], "python": "image_flow:record"},
        {"id": "c", "deps": ["b"], "lua": "return {sum = results.b.n + 1}"},
    ],
}

WORKFLOWS = [(WORKFLOW_ID, VERSION, SPEC)]

"""Python nodes for the trigger-rule tests that run in engine processes (``rule_tasks:...``).

``record`` appends ``run_id node_id`` to the ledger file named by ``DAGENGINE_TEST_LEDGER``
(the side effect that tells whether a node ran again); ``hold`` first appends
``run_id node_id started``, then waits until the file named by ``DAGENGINE_TEST_RELEASE``
exists (or the attempt is cancelled) before it records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagengine import NodeContext


def _append(line: str) -> None:
    with open(os.environ["DAGENGINE_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(line + "\n")


def record(ctx: NodeContext) -> dict[str, Any]:
    """Record that the node completed."""
    _append(f"{ctx.run_id} {ctx.node_id}")
    return {"node": ctx.node_id}


def hold(ctx: NodeContext) -> dict[str, Any]:
    """Record the start, wait for the release file, then record the completion."""
    _append(f"{ctx.run_id} {ctx.node_id} started")
    release = Path(os.environ["DAGENGINE_TEST_RELEASE"])
    while not release.exists():
        if ctx.cancelled:
            raise RuntimeError("cancelled while held")
        time.sleep(0.01)  # polling a file a test creates; not a wait for an event of ours
    return record(ctx)


def go(ctx: NodeContext) -> bool:
    """A Python condition: the run's ``go`` input."""
    return bool(ctx.inputs["go"])


def ok(ctx: NodeContext) -> dict[str, Any]:
    """A Python node that succeeds."""
    return {"node": ctx.node_id}


def fail(ctx: NodeContext) -> dict[str, Any]:
    """A Python node that fails."""
    raise RuntimeError(f"{ctx.node_id} fails")

"""Python items of mapped nodes for tests/test_map_failover.py, run in engine processes
(``map_tasks:...``).

``hold_item`` appends ``run_id node_id`` to the ledger file named by
``DAGENGINE_TEST_LEDGER`` when an item completes (the side effect that tells whether an item
ran again); the last item first appends ``run_id node_id started`` and waits until the file
named by ``DAGENGINE_TEST_RELEASE`` exists (or the attempt is cancelled).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagengine import NodeContext

LAST = 3


def _append(line: str) -> None:
    with open(os.environ["DAGENGINE_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(line + "\n")


def hold_item(ctx: NodeContext) -> dict[str, Any]:
    """Record the item's completion; the last item waits for the release file first."""
    if ctx.index == LAST:
        _append(f"{ctx.run_id} {ctx.node_id} started")
        release = Path(os.environ["DAGENGINE_TEST_RELEASE"])
        while not release.exists():
            if ctx.cancelled:
                raise RuntimeError("cancelled while held")
            time.sleep(0.01)  # polling a file the test creates; not a wait for an event of ours
    _append(f"{ctx.run_id} {ctx.node_id}")
    return {"v": ctx.item * 10}

"""A Python node that logs, then waits for its test to release it (importable by engines)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dagengine import NodeContext

_log = logging.getLogger("tests.live_log_tasks")


def held(ctx: NodeContext) -> dict[str, str]:
    """Log a line, then wait until the file named by input ``release`` exists."""
    release = Path(ctx.inputs["release"])
    print("waiting for release")
    _log.warning("still waiting")
    deadline = time.monotonic() + 120
    while not release.exists():  # the test creates it once it saw the lines above
        if ctx.cancelled or time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.005)
    print("released")
    return {"done": "yes"}


def item_says(ctx: NodeContext) -> dict[str, int]:
    """An item of a mapped node: print which one it is."""
    print(f"item {ctx.index} says {ctx.item}")
    return {"i": int(ctx.index or 0)}

"""Python nodes that log, for the node log tests (importable by engine processes)."""

from __future__ import annotations

import logging

from dagengine import NodeContext

_log = logging.getLogger("tests.log_tasks")


def chatty(ctx: NodeContext) -> dict[str, int]:
    print("printed", ctx.attempt)
    _log.warning("a warning")
    _log.error("an error")
    return {"n": 1}


def flaky(ctx: NodeContext) -> dict[str, int]:
    print("try", ctx.attempt)
    if ctx.attempt < 2:
        _log.error("failing attempt %d", ctx.attempt)
        raise ValueError("not yet")
    return {"n": ctx.attempt}

"""Python nodes for the retry tests (run in-process by the embedded engine): ``first`` counts
its calls, ``gate`` fails while ``CLOSED`` is set, ``hold`` waits for ``RELEASE``."""

from __future__ import annotations

import threading
from typing import Any

CALLS: dict[str, int] = {}
CLOSED = {"closed": True}
RELEASE = threading.Event()


def first(ctx: Any) -> dict[str, Any]:
    tag = str(ctx.inputs.get("tag", ""))
    CALLS[tag] = CALLS.get(tag, 0) + 1
    return {"tag": tag, "n": 7}


def gate(ctx: Any) -> dict[str, Any]:
    if CLOSED["closed"]:
        raise RuntimeError("the gate is closed")
    return {"through": ctx.results["first"]["n"]}


def hold(ctx: Any) -> dict[str, Any]:
    RELEASE.wait(60)
    return {"released": RELEASE.is_set()}

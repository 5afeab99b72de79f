"""Python nodes of the multi-host tests, run in engine processes (``multihost_tasks:record``).

Each call sleeps ``DAGENGINE_TEST_NODE_SECONDS`` (so runs overlap the faults), then appends
one line ``run_id node_id engine_id unix_time`` to the ledger file named by
``DAGENGINE_TEST_LEDGER``: the side effect whose count tells whether a node ran again, and on
which engine and when. The namespaces share the filesystem, so every engine writes the same
file; an append of one short line is atomic (``O_APPEND``).
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagengine import NodeContext

WORKFLOW_ID = "ledger"
VERSION = "1.0.0"


def record(ctx: NodeContext) -> dict[str, Any]:
    """Do the node's 'work', then record that it completed (and where)."""
    time.sleep(float(os.environ.get("DAGENGINE_TEST_NODE_SECONDS", "0.02")))
    engine = os.environ.get("DAGENGINE_TEST_ENGINE_ID", "?")
    with open(os.environ["DAGENGINE_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ctx.run_id} {ctx.node_id} {engine} {time.time():.6f}\n")
    return {"n": len(ctx.results) + 1, "engine": engine}


SPEC: dict[str, Any] = {
    "id": WORKFLOW_ID,
    "version": VERSION,
    "nodes": [
        {"id": "a", "python": "multihost_tasks:record"},
        {"id": "b", "deps": ["a"], "python": "multihost_tasks:record"},
        {"id": "c", "deps": ["b"], "lua": "return {sum = results.b.n + 1}"},
    ],
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger line: a node execution that completed."""

    run_id: str
    node_id: str
    engine_id: str
    time: float


def read_ledger(path: Path) -> list[Entry]:
    """Every node execution recorded so far, in file order."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        run_id, node_id, engine_id, when = line.split()
        entries.append(Entry(run_id, node_id, engine_id, float(when)))
    return entries


def counts(entries: list[Entry]) -> collections.Counter[tuple[str, str]]:
    """How many times each (run, node) completed."""
    return collections.Counter((e.run_id, e.node_id) for e in entries)

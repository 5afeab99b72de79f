"""The ledger workflow's fixtures (``tests/orchestrator/failover_tasks.py``): each node an
engine runs appends ``run_id node_id`` to a ledger file, so a test counts how often every
node ran. Shared by the engine failover and the replica failover tests."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import EngineProcess

#: Where ``failover_tasks`` lives: on the engines' import path.
ORCHESTRATOR_TESTS = Path(__file__).resolve().parent / "orchestrator"


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


@pytest.fixture
def engines(ledger: Path) -> Iterator[Callable[..., list[EngineProcess]]]:
    """``start(count, capacity, node_seconds)``: engine processes writing to ``ledger``
    (killed at the end of the test)."""
    started: list[EngineProcess] = []

    def start(count: int, capacity: int = 8, node_seconds: float = 0.02) -> list[EngineProcess]:
        env = {
            "DAGENGINE_TEST_LEDGER": str(ledger),
            "DAGENGINE_TEST_NODE_SECONDS": str(node_seconds),
            "PYTHONPATH": os.pathsep.join(
                [str(ORCHESTRATOR_TESTS), os.environ.get("PYTHONPATH", "")]
            ),
        }
        for i in range(count):
            started.append(
                EngineProcess("--engine-id", f"engine-{i}", "--capacity", str(capacity), env=env)
            )
        return started[-count:]

    try:
        yield start
    finally:
        for engine in started:
            engine.kill()


def ledger_counts(ledger: Path) -> collections.Counter[tuple[str, str]]:
    """How many times each ``(run_id, node_id)`` ran."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in ledger.read_text().splitlines():
        run_id, node_id = line.split()
        counts[(run_id, node_id)] += 1
    return counts

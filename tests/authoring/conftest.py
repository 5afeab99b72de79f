"""Fixtures of tests/authoring: this directory on the path (``authoring_flows``), and an engine
process that can import it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def engine() -> Iterator[str]:
    """The address of an engine process with this directory on its path."""
    from processes import EngineProcess

    process = EngineProcess("--engine-id", "authoring", env={"PYTHONPATH": str(HERE)})
    try:
        yield process.address
    finally:
        process.kill()

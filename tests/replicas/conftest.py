"""Fixtures of the replica tests: the failover tests' ledger workflow and engines."""

from __future__ import annotations

import sys
from pathlib import Path

# failover_tasks (the ledger workflow, its Python nodes) lives with the failover tests.
ORCHESTRATOR_TESTS = Path(__file__).resolve().parent.parent / "orchestrator"
sys.path.insert(0, str(ORCHESTRATOR_TESTS))

"""Shared fixtures. Tests import helper modules (``node_funcs``) from this directory, and the
CLI tests run from the repository root so ``examples.tasks`` resolves as it does for users."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent

# Helper modules live next to the tests; specs name them by import path ("node_funcs:double").
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# A real PostgreSQL for the PostgreSQL store's tests (see tests/pg.py).
# The ledger workflow's file and engine processes (see tests/ledger.py); a module may
# define its own `ledger`/`engines` instead.
from ledger import engines, ledger  # noqa: E402, F401
from pg import pg_url, postgres_url, store_target  # noqa: E402, F401

# Engine processes for one test (see tests/processes.py).
from processes import start_engine  # noqa: E402, F401


@pytest.fixture
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test from the repository root with it on sys.path, as the README does."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return REPO_ROOT

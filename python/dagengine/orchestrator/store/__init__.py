"""The orchestrator's durable state: workflow versions, runs, node outputs, events and
trigger state.

What the orchestrator needs of a store is :class:`~.protocol.StoreBackend` (its docstrings
are the contract a second backend implements); ``Store`` is the SQLite one
(:class:`~.sqlite.SQLiteStore`). The modules:

* :mod:`.records`: the records (:class:`RunRecord`, :class:`EventRecord`,
  :class:`WorkflowVersionRecord`), run statuses, event severities, the JSON encoding;
* :mod:`.schema`: :data:`MIGRATIONS` and the SQL statements (multi-row group statements);
* :mod:`.writer`: the write-behind (group commit on a writer thread, isolation of rows that
  cannot be written, checkpoints of the log) and its tuning constants, read when used: patch
  them there (``store.writer.LAZY_COMMIT_DELAY``), not here;
* :mod:`.sqlite`: :class:`SQLiteStore`, imported as :data:`Store`;
* :mod:`.protocol`: :class:`StoreBackend`.

Runs are fenced by their attempt number: every dispatch of a run to an engine starts a new
attempt (:meth:`Store.claim_attempt`), and node outputs and the final result are only accepted
from the current attempt, so a late answer from an engine that was given up on changes nothing.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` lists the steps and a
store is brought up to date when it is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagengine.orchestrator.store.protocol import StoreBackend
from dagengine.orchestrator.store.records import (
    FINISHED_STATUSES,
    RUN_STATUSES,
    SEVERITIES,
    EventRecord,
    RunRecord,
    RunStatus,
    Severity,
    WorkflowVersionRecord,
)
from dagengine.orchestrator.store.schema import MIGRATIONS
from dagengine.orchestrator.store.sqlite import SQLiteStore, Store
from dagengine.orchestrator.store.writer import (
    CHECKPOINT_CATCH_UP_FRAMES,
    CHECKPOINT_EVERY,
    LAZY_COMMIT_DELAY,
    MAX_PENDING,
)

__all__ = [
    "CHECKPOINT_CATCH_UP_FRAMES",
    "CHECKPOINT_EVERY",
    "FINISHED_STATUSES",
    "LAZY_COMMIT_DELAY",
    "MAX_PENDING",
    "MIGRATIONS",
    "RUN_STATUSES",
    "SEVERITIES",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Severity",
    "Store",
    "StoreBackend",
    "WorkflowVersionRecord",
]

if TYPE_CHECKING:

    def _implements_the_protocol(store: SQLiteStore) -> StoreBackend:
        return store  # mypy checks that SQLiteStore is a StoreBackend

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
* :mod:`.postgres`: :class:`PostgresStore` (a ``postgresql://`` URL; the ``postgres``
  extra), with its writer (connection, lock, group commit) in :mod:`.postgres_writer`, its
  schema in :mod:`.postgres_schema` and its retention statements in
  :mod:`.postgres_retention`;
* :mod:`.protocol`: :class:`StoreBackend`.

:func:`open_store` opens the backend a target names: a ``postgresql://`` (or
``postgres://``) URL is PostgreSQL, anything else a SQLite file (or ``":memory:"``).

Runs are fenced by their attempt number: every dispatch of a run to an engine starts a new
attempt (:meth:`Store.claim_attempt`), and node outputs and the final result are only accepted
from the current attempt, so a late answer from an engine that was given up on changes nothing.

The schema is versioned (SQLite: ``PRAGMA user_version``; PostgreSQL: the table
``dagengine_schema``); :data:`MIGRATIONS` (:data:`PG_MIGRATIONS`) lists the steps, a store is
brought up to date when it is opened, and a store refuses a database whose schema is newer than
it knows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

from dagengine.exceptions import ConfigError
from dagengine.orchestrator.store.postgres import PostgresStore, is_postgres_url
from dagengine.orchestrator.store.postgres_replicas import DEFAULT_LEASE_TTL
from dagengine.orchestrator.store.postgres_schema import PG_MIGRATIONS
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
    "PG_MIGRATIONS",
    "RUN_STATUSES",
    "SEVERITIES",
    "EventRecord",
    "PostgresStore",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Severity",
    "Store",
    "StoreBackend",
    "StoreTarget",
    "WorkflowVersionRecord",
    "is_postgres_url",
    "open_store",
    "store_from",
]


#: What names an orchestrator's store: a store, a SQLite path (or ``":memory:"``), a URL.
StoreTarget: TypeAlias = "StoreBackend | str | os.PathLike[str]"


def store_from(
    target: StoreTarget,
    *,
    exclusive: bool = False,
    replica: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> tuple[StoreBackend, bool]:
    """``target`` opened with :func:`open_store` and ``True`` (the caller owns the store and
    closes it), or ``target`` itself and ``False`` if it is a store already."""
    if isinstance(target, (str, os.PathLike)):
        return open_store(target, exclusive=exclusive, replica=replica, lease_ttl=lease_ttl), True
    return target, False


def open_store(
    target: str | os.PathLike[str],
    *,
    exclusive: bool = False,
    replica: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> SQLiteStore | PostgresStore:
    """The store ``target`` names: a ``postgresql://`` (or ``postgres://``) URL opens a
    :class:`PostgresStore` (``ConfigError`` naming the ``postgres`` extra if psycopg is not
    installed), anything else a :class:`SQLiteStore` (a file path, or ``":memory:"``).
    ``exclusive``: an orchestrator's store, which no other orchestrator may use meanwhile
    (PostgreSQL: an advisory lock, see :class:`PostgresStore`; SQLite: ignored).
    ``replica``: the store of one of several active orchestrators (PostgreSQL only:
    ``ConfigError`` for another target), with leases of ``lease_ttl`` seconds."""
    if is_postgres_url(target):
        if replica is not None:
            return PostgresStore(str(target), replica=replica, lease_ttl=lease_ttl)
        return PostgresStore(str(target), exclusive=exclusive)
    if replica is not None:
        raise ConfigError(
            f"orchestrator replicas share a PostgreSQL store, not {str(target)!r}: give a "
            "postgresql:// URL (DAGENGINE_STORE) or leave replica mode off",
            variable="DAGENGINE_STORE",
            value=str(target),
        )
    return SQLiteStore(target)


if TYPE_CHECKING:

    def _implements_the_protocol(store: SQLiteStore) -> StoreBackend:
        return store  # mypy checks that SQLiteStore is a StoreBackend

    def _postgres_implements_the_protocol(store: PostgresStore) -> StoreBackend:
        return store  # ... and that PostgresStore is one

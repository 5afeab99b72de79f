"""Retention on PostgreSQL: the statements of a prune and of a store's stats (the policy, the
report and the rules are :mod:`~dagengine.orchestrator.store.retention`'s, shared with the
SQLite store).

A prune is plain deletes in one transaction of a connection of the store's pool: the store's
writer goes on meanwhile (row locks, not a database lock). Space is given back by
PostgreSQL's autovacuum, not by the store. Sizes come from the catalog
(``pg_total_relation_size``: a table with its indexes and TOAST; ``pg_database_size``).
"""

from __future__ import annotations

from typing import Any

from dagengine.orchestrator.store.compact import FOLDED_TYPES
from dagengine.orchestrator.store.postgres_schema import RUN_SELECT, run_from_row
from dagengine.orchestrator.store.retention import (
    _STORED,
    _TABLES,
    EVENTS_PER_BATCH,
    EXPORT_EVENT_COLUMNS,
    PRUNE_BATCH,
    WORKFLOW_BYTES_SQL,
    PruneReport,
    RetentionPolicy,
    StoreStats,
    write_export,
)

__all__ = ["count_prunable", "prune_batch", "store_stats"]

_FINISHED = "('succeeded', 'failed', 'cancelled')"
#: The event rows of the runs ``%s`` (an array of ids, given twice): keyed by the runs'
#: numbers, or holding the id of a run that has no row (see migration 6).
_OF_RUNS = "(run_key IN (SELECT ord FROM runs WHERE run_id = ANY(%s)) OR run_id = ANY(%s))"
#: Event rows of no run.
_NO_RUN = "run_key IS NULL AND run_id IS NULL"


def _selection(
    db: Any, policy: RetentionPolicy, now: float, limit: int | None
) -> list[tuple[str, str]]:
    """``(run_id, workflow_id)`` of finished runs the policy lets go, oldest first, at most
    ``limit`` (``None``: all)."""
    chosen: list[tuple[str, str]] = []
    # The workflows with runs, skipping through runs_by_workflow (one lookup a workflow).
    workflows = [
        row[0]
        for row in db.execute(
            """WITH RECURSIVE w(id) AS (SELECT MIN(workflow_id) FROM runs
                UNION ALL SELECT (SELECT MIN(workflow_id) FROM runs WHERE workflow_id > w.id)
                FROM w WHERE w.id IS NOT NULL)
            SELECT id FROM w WHERE id IS NOT NULL"""
        ).fetchall()
    ]
    for workflow_id in sorted(workflows):
        max_age, keep_last = policy.of(workflow_id)
        if max_age is None:
            continue
        room = None if limit is None else limit - len(chosen)
        if room is not None and room <= 0:
            break
        cutoff = now - max_age
        rows = db.execute(
            f"""SELECT r.run_id FROM runs r
            WHERE r.workflow_id = %s AND r.created_at < %s AND r.status IN {_FINISHED}
                AND COALESCE(r.finished_at, r.created_at) < %s
                AND r.run_id NOT IN (SELECT run_id FROM runs WHERE workflow_id = %s
                    AND status IN {_FINISHED} ORDER BY created_at DESC, ord DESC LIMIT %s)
                AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.parent_run_id = r.run_id)
                AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id
                    AND p.status IN ('queued', 'running'))
            ORDER BY r.created_at, r.ord LIMIT %s""",
            (workflow_id, cutoff, cutoff, workflow_id, keep_last, room),
        ).fetchall()
        chosen.extend((row[0], workflow_id) for row in rows)
    return chosen


def _export(db: Any, folder: str, run_ids: list[str], now: float) -> int:
    """:func:`~.retention.write_export` of the runs, read from this PostgreSQL database (the
    same JSON Lines the SQLite store writes)."""
    runs = {
        row[0]: run_from_row(row)
        for row in db.execute(f"{RUN_SELECT} WHERE run_id = ANY(%s)", (run_ids,)).fetchall()
    }
    outputs = db.execute(
        "SELECT run_id, node_id, output FROM node_outputs WHERE run_id = ANY(%s) ORDER BY ord",
        (run_ids,),
    ).fetchall()
    events = db.execute(
        f"SELECT {EXPORT_EVENT_COLUMNS} FROM events WHERE seq IN "
        f"(SELECT seq FROM event_rows WHERE {_OF_RUNS}) ORDER BY seq",
        (run_ids, run_ids),
    ).fetchall()
    return write_export(folder, now, run_ids, runs, outputs, events)


def prune_batch(db: Any, policy: RetentionPolicy, now: float, limit: int) -> PruneReport:
    """Delete (in the caller's transaction) up to ``limit`` runs the policy lets go, with
    their node outputs and events, and up to a batch of old events without a run."""
    report = PruneReport(batches=1)
    chosen = [run_id for run_id, _ in _selection(db, policy, now, limit)]
    if chosen:
        if policy.export_dir is not None:
            report.exported = _export(db, policy.export_dir, chosen, now)
        report.node_outputs = db.execute(
            "DELETE FROM node_outputs WHERE run_id = ANY(%s)", (chosen,)
        ).rowcount
        # (A folded row holds two events: see compact.fold_events.)
        report.events = sum(
            2 if folded else 1
            for (folded,) in db.execute(
                f"DELETE FROM event_rows WHERE {_OF_RUNS} RETURNING type = ANY(%s)",
                (chosen, chosen, list(FOLDED_TYPES)),
            ).fetchall()
        )
        db.execute("DELETE FROM cache_entries WHERE run_id = ANY(%s)", (chosen,))
        report.runs = db.execute("DELETE FROM runs WHERE run_id = ANY(%s)", (chosen,)).rowcount
    if policy.max_age is not None:
        report.events += db.execute(
            f"""DELETE FROM event_rows WHERE seq IN (SELECT seq FROM event_rows
                WHERE {_NO_RUN} AND time < %s ORDER BY seq LIMIT %s)""",
            (now - policy.max_age, EVENTS_PER_BATCH),
        ).rowcount
    return report


def count_prunable(db: Any, policy: RetentionPolicy, now: float) -> PruneReport:
    """What a prune would delete now (a dry run; runs whose children go first are counted
    only once their children are gone)."""
    report = PruneReport(dry_run=True)
    chosen = [run_id for run_id, _ in _selection(db, policy, now, None)]
    for start in range(0, len(chosen), PRUNE_BATCH):
        part = chosen[start : start + PRUNE_BATCH]
        report.runs += len(part)
        report.node_outputs += db.execute(
            "SELECT COUNT(*) FROM node_outputs WHERE run_id = ANY(%s)", (part,)
        ).fetchone()[0]
        report.events += db.execute(
            "SELECT COUNT(*) + COUNT(*) FILTER (WHERE type = ANY(%s)) FROM event_rows "
            f"WHERE {_OF_RUNS}",
            (list(FOLDED_TYPES), part, part),
        ).fetchone()[0]
    if policy.max_age is not None:
        report.events += db.execute(
            f"SELECT COUNT(*) FROM event_rows WHERE {_NO_RUN} AND time < %s",
            (now - policy.max_age,),
        ).fetchone()[0]
    return report


def store_stats(db: Any) -> StoreStats:
    """Rows per table (counted) and bytes per table from the catalog
    (``pg_total_relation_size``: the table, its indexes and TOAST), runs per workflow and
    status, and the database's size (``pg_database_size``). ``free_bytes`` is 0: freed space
    is reused by PostgreSQL (autovacuum), not given back by the store."""
    tables: dict[str, tuple[int, int]] = {}
    for table in _TABLES:
        stored = _STORED.get(table, table)  # (events: a view of event_rows)
        rows = int(db.execute(f"SELECT COUNT(*) FROM {stored}").fetchone()[0])
        size = db.execute("SELECT pg_total_relation_size(to_regclass(%s))", (stored,)).fetchone()[0]
        tables[table] = (rows, int(size or 0))
    workflows: dict[str, dict[str, int]] = {}
    for workflow_id, status, count in db.execute(
        "SELECT workflow_id, status, COUNT(*) FROM runs GROUP BY workflow_id, status"
    ).fetchall():
        workflows.setdefault(workflow_id, {})[status] = int(count)
    per_workflow = {
        workflow_id: int(size or 0)
        for workflow_id, size in db.execute(
            WORKFLOW_BYTES_SQL.format(length="octet_length")
        ).fetchall()
    }
    database = int(db.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    return StoreStats(tables, workflows, database, 0, True, per_workflow)

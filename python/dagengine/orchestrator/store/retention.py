"""Retention: which finished runs a store lets go (:class:`RetentionPolicy`), what a prune
removed (:class:`PruneReport`), what a store holds (:class:`StoreStats`), and the SQLite
statements of both (used by :class:`~dagengine.orchestrator.store.sqlite.SQLiteStore`).

A finished run (succeeded, failed or cancelled) goes once it finished longer ago than its
workflow's retention, with its node outputs and events, unless it is among the
``keep_last`` newest finished runs of its workflow. Never deleted:

* queued or running runs, and their node outputs (what a resumed run starts from);
* a finished sub-workflow run whose parent run is unfinished (the parent reads its children
  back by ``parent_run_id`` when it resumes);
* a run that still has sub-workflow runs in the store: its children go first, the parent
  with a later batch (so the ``parent_run_id`` references stay valid).

Events without a run (engines joining, triggers firing, prunes) go once they are older than
the default retention.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dagengine._units import parse_duration
from dagengine.exceptions import StoreError
from dagengine.orchestrator.store.compact import FOLDED_TYPES, expand, result_outputs
from dagengine.orchestrator.store.records import SEVERITIES
from dagengine.orchestrator.store.schema import _RUN_SELECT, _run_from_row

__all__ = [
    "DEFAULT_RETENTION",
    "EVENTS_PER_BATCH",
    "MAX_PRUNE_DUTY",
    "PRUNE_BATCH",
    "PRUNE_DUTY",
    "RUN_CASCADE",
    "PruneReport",
    "RetentionPolicy",
    "StoreStats",
    "WorkflowRetention",
    "delete_runs",
    "prunable_runs",
    "retention_from_metadata",
]

#: How long finished runs are kept unless ``DAGENGINE_RETENTION`` or the config says: 30 days.
DEFAULT_RETENTION: Final = 30 * 86400.0
#: Runs deleted by one transaction of a prune (a batch holds the store's lock: keep it short).
PRUNE_BATCH: Final = 500
#: Events without a run deleted by one batch.
EVENTS_PER_BATCH: Final = 5000
_FINISHED = "('succeeded', 'failed', 'cancelled')"
_TABLES: Final = ("runs", "node_outputs", "events", "workflow_versions", "trigger_state")
#: The SQLite table that holds the rows of each of :data:`_TABLES` (``events`` is a view of
#: ``event_rows`` since migration 4).
_STORED: Final = {"events": "event_rows"}


#: The share of the store's time a prune takes by default: the store is free 95% of the time,
#: and p99 run latency during a prune stays within the noise (benches/README.md).
PRUNE_DUTY: Final = 0.05
#: The most a prune may take, when the pruner falls behind (see ``Pruner``).
MAX_PRUNE_DUTY: Final = 0.5


@dataclass(frozen=True, slots=True)
class WorkflowRetention:
    """A workflow's own retention: ``max_age`` seconds (``None``: the default's), and the
    ``keep_last`` newest finished runs kept whatever their age (``None``: the default's)."""

    max_age: float | None = None
    keep_last: int | None = None


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished runs are kept: ``max_age`` seconds after they finished (``None``:
    forever), the ``keep_last`` newest finished runs of each workflow whatever their age,
    per-workflow overrides in ``workflows``, and ``export_dir``, a folder finished runs are
    written to (JSON Lines) before they are deleted.

    ``duty`` is how fast, not what: the share of the store's time a prune may take (a
    SQLite store's writer paces its slices by it, see
    :mod:`~dagengine.orchestrator.store.prune_slices`). The background pruner raises it
    from :data:`PRUNE_DUTY` while it falls behind."""

    max_age: float | None = DEFAULT_RETENTION
    keep_last: int = 0
    workflows: Mapping[str, WorkflowRetention] = field(default_factory=dict)
    export_dir: str | None = None
    duty: float = PRUNE_DUTY

    def __post_init__(self) -> None:
        if not 0 < self.duty <= MAX_PRUNE_DUTY:
            raise ValueError(
                f"retention duty must be > 0 and <= {MAX_PRUNE_DUTY}, got {self.duty!r}"
            )
        if self.max_age is not None and self.max_age < 0:
            raise ValueError(f"retention max_age must be >= 0 seconds, got {self.max_age!r}")
        if self.keep_last < 0:
            raise ValueError(f"retention keep_last must be >= 0, got {self.keep_last!r}")

    def of(self, workflow_id: str) -> tuple[float | None, int]:
        """``(max_age, keep_last)`` of a workflow."""
        own = self.workflows.get(workflow_id)
        if own is None:
            return self.max_age, self.keep_last
        return (
            self.max_age if own.max_age is None else own.max_age,
            self.keep_last if own.keep_last is None else own.keep_last,
        )


def retention_from_metadata(metadata: Mapping[str, Any]) -> WorkflowRetention | None:
    """The retention a workflow was registered with: ``metadata={"retention": "7d",
    "keep_last": 10}`` (either key; ``None`` if neither). ``ValueError`` naming the key for
    a value it cannot use."""
    if "retention" not in metadata and "keep_last" not in metadata:
        return None
    max_age: float | None = None
    keep_last: int | None = None
    if metadata.get("retention") is not None:
        try:
            max_age = parse_duration(metadata["retention"], what="metadata retention")
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    if metadata.get("keep_last") is not None:
        value = metadata["keep_last"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"metadata keep_last must be an integer >= 0, got {value!r}")
        keep_last = value
    return WorkflowRetention(max_age, keep_last)


def workflow_retentions(
    registrations: Iterable[tuple[str, Mapping[str, Any]]],
) -> dict[str, WorkflowRetention]:
    """Each workflow's own retention, from ``(workflow_id, metadata)`` in registration order:
    the latest registration of a workflow says (one without retention removes it), and
    metadata stored before the check existed that it refuses counts as none."""
    workflows: dict[str, WorkflowRetention] = {}
    for workflow_id, metadata in registrations:
        try:
            own = retention_from_metadata(metadata)
        except ValueError:
            own = None
        if own is not None:
            workflows[workflow_id] = own
        else:
            workflows.pop(workflow_id, None)
    return workflows


@dataclass(slots=True)
class PruneReport:
    """What a prune removed (or, dry, would remove): rows per table, runs written to the
    export folder, the batches it took and the bytes given back to the file system."""

    runs: int = 0
    node_outputs: int = 0
    events: int = 0
    exported: int = 0
    batches: int = 0
    bytes_reclaimed: int = 0
    dry_run: bool = False
    #: Seconds the batches held the store (its lock and write transaction), waits excluded.
    seconds: float = 0.0
    #: The largest share of the store's time the prune was allowed (``RetentionPolicy.duty``;
    #: above ``PRUNE_DUTY`` when the background pruner fell behind).
    duty: float = PRUNE_DUTY

    def add(self, other: PruneReport) -> None:
        """Add ``other``'s counts to these."""
        self.runs += other.runs
        self.node_outputs += other.node_outputs
        self.events += other.events
        self.exported += other.exported
        self.batches += other.batches
        self.bytes_reclaimed += other.bytes_reclaimed
        self.seconds += other.seconds
        self.duty = max(self.duty, other.duty)

    def to_dict(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict (the data of a ``store.pruned`` event)."""
        return {
            "runs": self.runs,
            "node_outputs": self.node_outputs,
            "events": self.events,
            "exported": self.exported,
            "batches": self.batches,
            "bytes_reclaimed": self.bytes_reclaimed,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 6),
            "duty": self.duty,
        }


@dataclass(slots=True)
class StoreStats:
    """What a store holds: ``tables`` maps a table to ``(rows, bytes)`` (bytes exact with
    SQLite's ``dbstat``, else estimated from the lengths of the values: ``bytes_exact``),
    ``workflows`` a workflow to its runs by status, and the file's size."""

    tables: dict[str, tuple[int, int]]
    workflows: dict[str, dict[str, int]]
    file_bytes: int
    free_bytes: int
    bytes_exact: bool
    #: Bytes of stored values per workflow (its runs' inputs, results and errors, its node
    #: outputs and its events' data): an estimate from the values' lengths, for finding the
    #: workflow that fills the store (indexes and page overhead are not split by workflow).
    workflow_bytes: dict[str, int] = field(default_factory=dict)


#: Per workflow, the summed lengths of what its runs store (the same query on both backends,
#: with the backend's length function).
WORKFLOW_BYTES_SQL: Final = """
    SELECT workflow_id, SUM(size) FROM (
        SELECT workflow_id,
               {length}(inputs) + COALESCE({length}(result), 0) + COALESCE({length}(error), 0)
               AS size
          FROM runs
        UNION ALL
        SELECT r.workflow_id, {length}(o.output)
          FROM node_outputs o JOIN runs r ON r.run_id = o.run_id
        UNION ALL
        SELECT workflow_id, {length}(data) FROM events WHERE workflow_id IS NOT NULL
    ) AS sizes GROUP BY workflow_id"""


# -- SQLite ---------------------------------------------------------------------------------


def _selection(
    db: sqlite3.Connection, policy: RetentionPolicy, now: float, limit: int | None
) -> list[tuple[str, str]]:
    """``(run_id, workflow_id)`` of finished runs the policy lets go, oldest first, at most
    ``limit`` (``None``: all)."""
    chosen: list[tuple[str, str]] = []
    # The workflows with runs, by skipping through the runs_by_workflow index (one lookup
    # a workflow; SELECT DISTINCT would read every entry of it, in the store's lock).
    workflows = [
        row[0]
        for row in db.execute(
            """WITH RECURSIVE w(id) AS (SELECT MIN(workflow_id) FROM runs
                UNION ALL SELECT (SELECT MIN(workflow_id) FROM runs WHERE workflow_id > w.id)
                FROM w WHERE w.id IS NOT NULL)
            SELECT id FROM w WHERE id IS NOT NULL"""
        )
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
            WHERE r.workflow_id = ? AND r.created_at < ? AND r.status IN {_FINISHED}
                AND COALESCE(r.finished_at, r.created_at) < ?
                AND r.run_id NOT IN (SELECT run_id FROM runs WHERE workflow_id = ?
                    AND status IN {_FINISHED} ORDER BY created_at DESC, rowid DESC LIMIT ?)
                AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.parent_run_id = r.run_id)
                AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id
                    AND p.status IN ('queued', 'running'))
            ORDER BY r.created_at, r.rowid LIMIT ?""",
            (workflow_id, cutoff, cutoff, workflow_id, keep_last, -1 if room is None else room),
        ).fetchall()
        chosen.extend((row[0], workflow_id) for row in rows)
    return chosen


def prunable_runs(
    db: sqlite3.Connection, policy: RetentionPolicy, now: float, limit: int
) -> dict[str, tuple[int, int]]:
    """Up to ``limit`` finished runs ``policy`` lets go, oldest first: each one's id to the
    node outputs and events it holds (a folded row counts as its two events), which is what
    deleting it removes (:func:`delete_runs`). Runs written to ``policy.export_dir`` first,
    if set. Reads only: a SQLite store runs it on a connection of the pruner's own, outside
    the store's lock."""
    run_ids = [run_id for run_id, _ in _selection(db, policy, now, limit)]
    if not run_ids:
        return {}
    marks = _placeholders(len(run_ids))
    folded = (
        f"COUNT(*) + COUNT(CASE WHEN e.type IN ({_placeholders(len(FOLDED_TYPES))}) THEN 1 END)"
    )
    counts = {
        run_id: (outputs, keyed + named)
        for run_id, outputs, keyed, named in db.execute(
            f"""SELECT r.run_id,
                (SELECT COUNT(*) FROM node_outputs o WHERE o.run_id = r.run_id),
                (SELECT {folded} FROM event_rows e WHERE e.run_key = r.id),
                (SELECT {folded} FROM event_rows e WHERE e.run_id = r.run_id)
            FROM runs r WHERE r.run_id IN ({marks})""",
            [*FOLDED_TYPES, *FOLDED_TYPES, *run_ids],
        )
    }
    chosen = {run_id: counts[run_id] for run_id in run_ids if run_id in counts}
    if chosen and policy.export_dir is not None:
        _export(db, policy.export_dir, list(chosen), now)
    return chosen


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def write_export(
    folder: str,
    now: float,
    run_ids: list[str],
    runs: Mapping[str, Any],
    output_rows: Iterable[tuple[str, str, str]],
    event_rows: Iterable[tuple[Any, ...]],
) -> int:
    """Append the runs (record, node outputs, events: one JSON object a line) to
    ``<folder>/runs-<UTC date>.jsonl``, from what a backend read: the records by run id,
    ``(run_id, node_id, output JSON)`` rows in write order and ``(seq, time, type, severity
    rank, node_id, engine_id, run_id, data JSON)`` rows in ``seq`` order; ``StoreError`` if the
    file cannot be written (the batch is then not deleted)."""
    outputs: dict[str, dict[str, Any]] = {run_id: {} for run_id in run_ids}
    for run_id, node_id, output in output_rows:
        outputs[run_id][node_id] = json.loads(output)
    events: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    for row_seq, row_time, row_type, rank, node_id, row_engine, run_id, stored in event_rows:
        for seq, when, kind, engine_id, data in expand(
            row_seq, row_time, row_type, row_engine, stored
        ):
            events[run_id].append(
                {
                    "seq": seq,
                    "time": when,
                    "type": kind,
                    "severity": SEVERITIES[rank],
                    "node_id": node_id,
                    "engine_id": engine_id,
                    "data": data,
                }
            )
        events[run_id].sort(key=lambda event: event["seq"])
    lines = []
    for run_id in run_ids:
        record = runs[run_id]
        lines.append(
            json.dumps(
                {
                    "run": {name: getattr(record, name) for name in record.__dataclass_fields__},
                    "node_outputs": outputs[run_id],
                    "events": events[run_id],
                },
                separators=(",", ":"),
            )
        )
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    path = Path(folder).expanduser() / f"runs-{day}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise StoreError(f"cannot export pruned runs to {str(path)!r}: {exc}") from exc
    return len(lines)


def outputs_kept_in_results(
    rows: list[tuple[str, str, str]], results: Iterable[tuple[str, str | None]]
) -> list[tuple[str, str, str]]:
    """The ``(run_id, node_id, output JSON)`` of the runs whose node outputs are kept in
    their result only (:func:`~dagengine.orchestrator.store.compact.result_outputs`), given
    the rows read from ``node_outputs`` and ``(run_id, stored result)`` of the runs."""
    have = {row[0] for row in rows}
    extra: list[tuple[str, str, str]] = []
    for run_id, result in results:
        kept = None if run_id in have else result_outputs(result)
        extra += [(run_id, node, json.dumps(value)) for node, value in (kept or {}).items()]
    return extra


#: The columns :func:`write_export` reads an event row as.
EXPORT_EVENT_COLUMNS: Final = "seq, time, type, severity, node_id, engine_id, run_id, data"


def _export(db: sqlite3.Connection, folder: str, run_ids: list[str], now: float) -> int:
    """:func:`write_export` of the runs, read from this SQLite database."""
    marks = _placeholders(len(run_ids))
    runs = {
        row[0]: _run_from_row(row)
        for row in db.execute(f"{_RUN_SELECT} WHERE run_id IN ({marks})", run_ids)
    }
    outputs: list[tuple[str, str, str]] = db.execute(
        f"SELECT run_id, node_id, output FROM node_outputs WHERE run_id IN ({marks}) "
        "ORDER BY position, node_id",
        run_ids,
    ).fetchall()
    results = db.execute(f"SELECT run_id, result FROM runs WHERE run_id IN ({marks})", run_ids)
    outputs += outputs_kept_in_results(outputs, results)
    events = db.execute(
        "SELECT e.seq, e.time, e.type, e.severity, e.node_id, e.engine_id, "
        "COALESCE(r.run_id, e.run_id), e.data FROM event_rows e "
        f"LEFT JOIN runs r ON r.id = e.run_key WHERE {_RUN_EVENTS.format(marks=marks)} "
        "ORDER BY e.seq",
        [*run_ids, *run_ids],
    )
    return write_export(folder, now, run_ids, runs, outputs, events)


#: The events of some runs (``run_ids`` twice as parameters): by their number, or by their
#: id for an event written while its run had no row.
_RUN_EVENTS: Final = (
    "(e.run_key IN (SELECT id FROM runs WHERE run_id IN ({marks})) OR e.run_id IN ({marks}))"
)


def _folded(db: sqlite3.Connection, marks: str, run_ids: list[str]) -> int:
    """The folded rows among the runs' events (each holds two events)."""
    return int(
        db.execute(
            f"SELECT COUNT(*) FROM event_rows e WHERE {_RUN_EVENTS.format(marks=marks)} "
            f"AND e.type IN ({_placeholders(len(FOLDED_TYPES))})",
            [*run_ids, *run_ids, *FOLDED_TYPES],
        ).fetchone()[0]
    )


def _run_event_count(db: sqlite3.Connection, marks: str, run_ids: list[str]) -> int:
    """The event rows of the runs."""
    return int(
        db.execute(
            f"SELECT COUNT(*) FROM event_rows e WHERE {_RUN_EVENTS.format(marks=marks)}",
            [*run_ids, *run_ids],
        ).fetchone()[0]
    )


#: Old events that belong to no run that is still stored (a run's own go with it): at
#: most a batch, oldest first.
_RUNLESS_EVENTS: Final = """SELECT seq FROM event_rows
    WHERE run_key IS NULL AND time < ?
        AND (run_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = event_rows.run_id))
    ORDER BY seq"""


def prune_batch(
    db: sqlite3.Connection, policy: RetentionPolicy, now: float, limit: int
) -> PruneReport:
    """Delete (in the caller's transaction) up to ``limit`` runs the policy lets go, with
    their node outputs and events, and up to a batch of old events without a run."""
    report = delete_runs(db, prunable_runs(db, policy, now, limit), policy)
    report.batches = 1
    if policy.max_age is not None:
        report.events += db.execute(
            f"DELETE FROM event_rows WHERE seq IN ({_RUNLESS_EVENTS} LIMIT ?)",
            (now - policy.max_age, EVENTS_PER_BATCH),
        ).rowcount
    return report


#: Of some runs (``run_ids`` as parameters), those that may still go (see
#: :func:`delete_runs`).
_STILL_PRUNABLE: Final = f"""r.run_id IN ({{marks}}) AND +r.status IN {_FINISHED}
    AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.parent_run_id = r.run_id)
    AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id
        AND p.status IN ('queued', 'running'))"""


#: A run's events and cache entries go with it (its node outputs by ``ON DELETE CASCADE``):
#: created on the store's connection when it opens, so that deleting runs is one statement
#: (see :func:`delete_runs`). Only a prune deletes runs.
RUN_CASCADE: Final = """CREATE TEMP TRIGGER IF NOT EXISTS run_deleted AFTER DELETE ON main.runs
BEGIN
    DELETE FROM event_rows WHERE run_key = OLD.id;
    DELETE FROM event_rows WHERE run_id = OLD.run_id;
    DELETE FROM cache_entries WHERE run_id = OLD.run_id;
END"""


def delete_runs(
    db: sqlite3.Connection, runs: Mapping[str, tuple[int, int]], policy: RetentionPolicy
) -> PruneReport:
    """Delete (in the caller's transaction) those of ``runs`` (from :func:`prunable_runs`)
    that may still go, with their node outputs, events and cache entries. They were chosen
    a moment ago, so only what can change since is checked again: the run is finished, has
    no sub-workflow run, and its parent is not queued or running.

    One statement (:data:`RUN_CASCADE` deletes the rest): a pruning slice runs in the
    writer's commit, and each statement lets go of the GIL and then waits to take it back
    from the orchestrator's threads while the store is held. A statement that fails is
    undone by itself, the transaction around it stays. ``+r.status``: from 16 ids on,
    SQLite's planner read every finished run through ``runs_by_status`` instead of looking
    the ids up (~5 ms instead of ~50 µs)."""
    report = PruneReport()
    if not runs:
        return report
    deleted = db.execute(
        "DELETE FROM runs AS r WHERE "
        + _STILL_PRUNABLE.format(marks=_placeholders(len(runs)))
        + " RETURNING run_id",
        list(runs),
    ).fetchall()
    report.runs = len(deleted)
    for (run_id,) in deleted:
        outputs, events = runs[run_id]
        report.node_outputs += outputs
        report.events += events
    if policy.export_dir is not None:
        report.exported = report.runs
    return report


def count_prunable(db: sqlite3.Connection, policy: RetentionPolicy, now: float) -> PruneReport:
    """What a prune would delete now (a dry run; runs whose children go first are counted
    only once their children are gone)."""
    report = PruneReport(dry_run=True)
    chosen = [run_id for run_id, _ in _selection(db, policy, now, None)]
    for start in range(0, len(chosen), PRUNE_BATCH):
        part = chosen[start : start + PRUNE_BATCH]
        marks = _placeholders(len(part))
        report.runs += len(part)
        report.node_outputs += db.execute(
            f"SELECT COUNT(*) FROM node_outputs WHERE run_id IN ({marks})", part
        ).fetchone()[0]
        report.events += _folded(db, marks, part) + _run_event_count(db, marks, part)
    if policy.max_age is not None:
        report.events += db.execute(
            f"SELECT COUNT(*) FROM ({_RUNLESS_EVENTS})", (now - policy.max_age,)
        ).fetchone()[0]
    return report


def store_stats(db: sqlite3.Connection, path: str) -> StoreStats:
    """Rows and bytes per table (``dbstat`` when compiled in, else the summed lengths of
    the values), runs per workflow and status, the file's size and its free pages."""
    stored = {table: _STORED.get(table, table) for table in _TABLES}
    rows = {
        table: int(db.execute(f"SELECT COUNT(*) FROM {stored[table]}").fetchone()[0])
        for table in _TABLES
    }
    sizes: dict[str, int] = {}
    exact = True
    try:
        for name, size in db.execute(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"
        ).fetchall():
            sizes[name] = int(size)
        by_table = {table: sizes.get(stored[table], 0) for table in _TABLES}
        logical = {name: table for table, name in stored.items()}
        # Indexes count with their table.
        for name, table in db.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
        ):
            if logical.get(table) in by_table:
                by_table[logical[table]] += sizes.get(name, 0)
    except sqlite3.OperationalError:  # no dbstat in this SQLite
        exact = False
        by_table = {}
        for table in _TABLES:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({stored[table]})")]
            total = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in columns)
            by_table[table] = int(
                db.execute(f"SELECT COALESCE(SUM({total}), 0) FROM {stored[table]}").fetchone()[0]
            )
    workflows: dict[str, dict[str, int]] = {}
    for workflow_id, status, count in db.execute(
        "SELECT workflow_id, status, COUNT(*) FROM runs GROUP BY workflow_id, status"
    ):
        workflows.setdefault(workflow_id, {})[status] = int(count)
    per_workflow = {
        workflow_id: int(size or 0)
        for workflow_id, size in db.execute(
            WORKFLOW_BYTES_SQL.format(length="LENGTH").replace("FROM events", "FROM event_rows")
        )
    }
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
    file_bytes = int(db.execute("PRAGMA page_count").fetchone()[0]) * page_size
    if path != ":memory:":
        with contextlib.suppress(OSError):  # the pages counted above, then
            file_bytes = os.path.getsize(path)
    return StoreStats(
        {table: (rows[table], by_table[table]) for table in _TABLES},
        workflows,
        file_bytes,
        free,
        exact,
        per_workflow,
    )

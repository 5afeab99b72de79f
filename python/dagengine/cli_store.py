"""``dagengine store``: ``prune`` and ``stats`` of an orchestrator's store (a SQLite file or a
``postgresql://`` URL), opened directly (the service may be running on it: SQLite serialises
the writers; PostgreSQL's row locks keep a prune and the service apart).

``store prune`` deletes the finished runs past their retention in batches, as the
orchestrator's background pruner does (see
:mod:`~dagengine.orchestrator.store.retention`): the retention is ``--older-than`` for
every workflow, else ``DAGENGINE_RETENTION`` (default 30 days) and each workflow's own,
as registered (``metadata={"retention": ..., "keep_last": ...}``). ``--dry-run`` deletes
nothing and prints what would go. ``store stats`` prints rows and bytes per table and runs
per workflow. The handlers plug into :data:`dagengine.cli.COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dagengine._units import parse_duration
from dagengine.exceptions import ConfigError, DagEngineError

if TYPE_CHECKING:
    # The orchestrator package (grpc and all) is imported only when a store command runs:
    # every CLI invocation builds this parser, and each import here cost every command
    # ~150 ms of start-up.
    from dagengine.orchestrator.store import StoreBackend
    from dagengine.orchestrator.store.retention import (
        PruneReport,
        RetentionPolicy,
    )

__all__ = ["configure_store", "run_store"]


def _age(text: str) -> float:
    try:
        value: object = float(text)  # a bare number is seconds
    except ValueError:
        value = text
    try:
        seconds = parse_duration(value, what="--older-than")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return seconds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def configure_store(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``dagengine store``."""
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    prune = sub.add_parser(
        "prune", help="delete finished runs past their retention", description=__doc__
    )
    prune.add_argument(
        "--older-than",
        type=_age,
        metavar="DUR",
        help="delete finished runs older than this (30d, 12h) whatever their workflow's "
        "retention (default: DAGENGINE_RETENTION or 30d, and each workflow's own)",
    )
    prune.add_argument(
        "--keep-last", type=_count, default=0, metavar="N", help="keep N runs per workflow"
    )
    prune.add_argument("--dry-run", action="store_true", help="delete nothing, print counts")
    prune.add_argument(
        "--export-dir", metavar="DIR", help="write each run (JSON Lines) here before deleting it"
    )
    stats = sub.add_parser("stats", help="rows and bytes per table, runs per workflow")
    stats.add_argument("--json", action="store_true", help="print JSON")
    for child in (prune, stats):
        child.add_argument(
            "--store",
            metavar="PATH|URL",
            help="SQLite file or postgresql:// URL (env DAGENGINE_STORE)",
        )


def _store_path(args: argparse.Namespace) -> str:
    from dagengine.orchestrator.config import Config

    path = args.store or Config.local_from_env().store_path
    if path.startswith(("postgresql://", "postgres://")):
        return str(path)
    if not Path(path).expanduser().is_file():
        raise DagEngineError(f"no store at {path!r} (give --store PATH or DAGENGINE_STORE)")
    return str(Path(path).expanduser())


def _policy(store: StoreBackend, args: argparse.Namespace) -> RetentionPolicy:
    from dagengine.orchestrator.config import Config
    from dagengine.orchestrator.store.retention import RetentionPolicy, workflow_retentions

    export = args.export_dir
    if args.older_than is not None:
        return RetentionPolicy(args.older_than, args.keep_last, {}, export)
    try:
        default = Config.local_from_env().retention
    except ConfigError as exc:
        raise DagEngineError(str(exc)) from None
    # Registration order: the latest version of each workflow says.
    versions = store.workflow_versions()
    workflows = workflow_retentions((v.workflow_id, v.metadata) for v in versions)
    return RetentionPolicy(default, args.keep_last, workflows, export)


def _describe(report: PruneReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    text = f"{verb} {report.runs} runs, {report.node_outputs} node outputs, {report.events} events"
    if report.exported:
        text += f"; exported {report.exported} runs"
    if not report.dry_run:
        text += f"; {report.bytes_reclaimed} bytes given back in {report.batches} batches"
    return text


def _prune(args: argparse.Namespace) -> int:
    from dagengine.orchestrator.store import open_store
    from dagengine.orchestrator.store.retention import PRUNE_BATCH, PruneReport

    with open_store(_store_path(args)) as store:
        policy = _policy(store, args)
        if args.dry_run:
            print(_describe(store.prune(policy, dry_run=True)))
            return 0
        total = PruneReport()
        while True:
            part = store.prune(policy, limit=PRUNE_BATCH)
            total.add(part)
            if part.runs == 0 and part.events == 0:
                break
        while freed := store.reclaim_space():
            total.bytes_reclaimed += freed
        print(_describe(total))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from dagengine.orchestrator.store import open_store

    target = _store_path(args)
    with open_store(target) as store:
        stats = store.stats()
    if args.json:
        print(
            json.dumps(
                {
                    "tables": {
                        name: {"rows": rows, "bytes": size}
                        for name, (rows, size) in stats.tables.items()
                    },
                    "bytes_exact": stats.bytes_exact,
                    "file_bytes": stats.file_bytes,
                    "free_bytes": stats.free_bytes,
                    "workflows": stats.workflows,
                    "workflow_bytes": stats.workflow_bytes,
                },
                indent=2,
            )
        )
        return 0
    kind = "bytes" if stats.bytes_exact else "bytes (est.)"
    print(f"{'table':<20} {'rows':>12} {kind:>14}")
    for name, (rows, size) in stats.tables.items():
        print(f"{name:<20} {rows:>12} {size:>14}")
    if target.startswith(("postgresql://", "postgres://")):
        print(f"database {stats.file_bytes} bytes")  # (its free space is autovacuum's)
    else:
        print(f"file {stats.file_bytes} bytes, {stats.free_bytes} free")
    if stats.workflows:
        print(f"\n{'workflow':<30} {'runs':>10} {'bytes (est.)':>14}  by status")
        for workflow_id, counts in sorted(stats.workflows.items()):
            detail = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
            size = stats.workflow_bytes.get(workflow_id, 0)
            print(f"{workflow_id:<30} {sum(counts.values()):>10} {size:>14}  {detail}")
    return 0


def run_store(args: argparse.Namespace) -> int:
    """Run ``dagengine store ACTION``; errors raise :class:`DagEngineError` (exit 2)."""
    if args.store_command == "prune":
        return _prune(args)
    return _stats(args)

"""The ``dagengine`` command line: ``run``, ``validate`` and ``graph`` a workflow spec,
``engine`` to serve runs over gRPC (:mod:`dagengine.cli_engine`), ``serve`` to run an
orchestrator with its HTTP API, and ``submit``/``runs``/``status``/``cancel``/``workflows``,
clients of that API, and ``store`` (``prune``, ``stats``: :mod:`dagengine.cli_store`).
Argument types the subcommands share are in :mod:`dagengine.cli_args`.

Exit codes: 0 success, 1 the run failed or was cancelled, 2 bad input (invalid spec, missing
file, bad arguments) — reported as one line on stderr, ``dagengine: error: <message>``, never a
traceback (an API client's HTTP error or unreachable server is a 2 too). Subcommands are
entries of :data:`COMMANDS`, so more plug in without touching :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from dagengine._jsondata import escape
from dagengine.cli_args import configure_process_logging, duration, port_number, positive_int
from dagengine.cli_cache import configure_cache, run_cache
from dagengine.cli_engine import configure_engine, run_engine
from dagengine.cli_inputs import BadInput, parse_input_value, parse_inputs, remote_schema
from dagengine.cli_logs import configure_logs, run_logs
from dagengine.cli_retry import configure_retry, run_retry
from dagengine.cli_store import configure_store, run_store
from dagengine.exceptions import DagEngineError
from dagengine.logconfig import add_logging_arguments
from dagengine.results import NodeEvent, NodeStatus, RunResult, RunStatus
from dagengine.spec import load_workflow
from dagengine.workflow import DAG, LocalRun

__all__ = ["COMMANDS", "BadInput", "Command", "main", "parse_input_value"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2

_PROG = "dagengine"


class _UsageError(Exception):
    """A bad command line (argparse's complaint), reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line (argparse prints the whole usage block) by raising
    instead of exiting, so :func:`main` returns the exit code rather than calling exit."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments, ``handler`` runs it and returns the exit
    code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


# --- output -------------------------------------------------------------------------------------

_STATUS_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "bright_black",
}

_EVENT_STATUS = {
    "node_started": NodeStatus.RUNNING,
    "node_succeeded": NodeStatus.SUCCEEDED,
    "node_failed": NodeStatus.FAILED,
    "node_retrying": NodeStatus.RETRYING,
    "node_skipped": NodeStatus.SKIPPED,
    "node_cancelled": NodeStatus.CANCELLED,
}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Progress:
    """Node states while a run goes on: a live table on a terminal, one line per event
    otherwise (logs, CI)."""

    def __init__(self, dag: DAG, out: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=out, highlight=False)
        self.states: dict[str, tuple[NodeStatus, int]] = {
            node_id: (NodeStatus.PENDING, 0) for node_id in dag.nodes
        }
        self.started = time.monotonic()

    def render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("node")
        table.add_column("status")
        table.add_column("attempt", justify="right")
        for node_id, (status, attempt) in self.states.items():
            style = _STATUS_STYLE[status.value]
            table.add_row(node_id, f"[{style}]{status.value}[/]", str(attempt) if attempt else "")
        elapsed = time.monotonic() - self.started
        table.caption = f"{elapsed:.1f}s"
        return table

    def apply(self, event: NodeEvent) -> None:
        status = _EVENT_STATUS.get(event.kind)
        if status is not None and event.node_id is not None:
            self.states[event.node_id] = (status, event.attempt)

    def line(self, event: NodeEvent) -> str:
        elapsed = time.monotonic() - self.started
        text = f"{elapsed:8.3f}s {event.kind:<15}"
        if event.node_id is not None:
            text += f" {event.node_id}"
        if event.attempt > 1:
            text += f" (attempt {event.attempt})"
        detail = event.detail or {}
        if event.error is not None:
            text += f": {_one_line(str(event.error))}"
        if "delay" in detail:
            text += f", retrying in {detail['delay']:.3g}s"
        if "message" in detail:
            text += f": {_one_line(str(detail['message']))}"
        if "status" in detail:
            text += f": {detail['status']}"
        return text

    def follow(self, handle: LocalRun) -> None:
        if not self.console.is_terminal:
            for event in handle.events():
                self.apply(event)
                self.console.print(self.line(event), markup=False)
            return
        from rich.live import Live

        # Transient: the result table printed next replaces the live view.
        with Live(
            self.render(), console=self.console, refresh_per_second=10, transient=True
        ) as live:
            for event in handle.events():
                self.apply(event)
                if event.kind == "node_log":
                    live.console.print(self.line(event), markup=False)
                live.update(self.render())


def _print_result(result: RunResult, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, highlight=False)
    table = Table(title=f"run {result.run_id}", title_justify="left")
    table.add_column("node")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("time", justify="right")
    table.add_column("output / error", overflow="fold")
    for node_id, node in result.node_results.items():
        style = _STATUS_STYLE[node.status.value]
        duration = node.duration
        if node.error is not None:
            detail = f"[red]{_escape(_one_line(str(node.error)))}[/]"
        elif node.status is NodeStatus.SUCCEEDED:
            detail = _escape(_short(node.output if node.output is not None else {}))
        else:
            detail = ""
        table.add_row(
            _escape(node_id),
            f"[{style}]{node.status.value}[/]",
            str(node.attempts),
            f"{duration:.3f}s" if duration is not None else "",
            detail,
        )
    console.print(table)
    style = _STATUS_STYLE[result.status.value]
    console.print(f"[{style}]{result.status.value}[/] in {result.duration:.3f}s")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _error(message: str) -> None:
    print(f"{_PROG}: error: {escape(_one_line(message))}", file=sys.stderr)


# --- commands -----------------------------------------------------------------------------------


def _load(path: str) -> DAG:
    return load_workflow(path)


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="workflow spec (.yaml, .yml or .json)")
    parser.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a run input; VALUE is parsed as JSON when it is valid JSON, else taken as a string",
    )
    parser.add_argument(
        "--inputs-json",
        metavar="JSON|@FILE",
        help="run inputs as a JSON object, or @path to a JSON file (--input overrides)",
    )
    parser.add_argument("--json", action="store_true", help="print only the result as JSON")
    parser.add_argument(
        "--max-parallel", type=positive_int, metavar="N", help="run at most N nodes at once"
    )
    parser.add_argument(
        "--fail-fast", action="store_true", help="cancel the rest of the run at the first failure"
    )
    parser.add_argument(
        "--timeout", type=duration, metavar="DUR", help="run timeout: 30, 500ms, 10s, 1m30s, 2h"
    )


def _cmd_run(args: argparse.Namespace) -> int:
    dag = _load(args.file)
    inputs = parse_inputs(args.input, args.inputs_json, dag.inputs)
    handle = dag.start(
        inputs,
        max_parallel=args.max_parallel,
        fail_fast=True if args.fail_fast else None,
        timeout=args.timeout,
        events=not args.json,
    )
    try:
        if args.json:
            result = handle.wait()
        else:
            _Progress(dag, sys.stdout).follow(handle)
            result = handle.wait()
    except KeyboardInterrupt:
        handle.cancel()
        result = handle.wait()
        print(f"{_PROG}: interrupted: run {result.run_id} cancelled", file=sys.stderr)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
    else:
        _print_result(result, sys.stdout)
        if result.status is not RunStatus.SUCCEEDED:
            reason = str(result.error) if result.error is not None else result.status.value
            node_id = result.error.node_id if result.error is not None else None
            where = f" at node {node_id!r}" if node_id else ""
            print(
                f"{_PROG}: run {result.status.value}{where}: {_one_line(reason)}",
                file=sys.stderr,
            )
    return EXIT_OK if result.ok else EXIT_RUN_FAILED


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="workflow spec (.yaml, .yml or .json)")


def _summary(dag: DAG) -> str:
    version = dag.version or "(unversioned)"
    return (
        f"{dag.id} {version}: {len(dag)} nodes, {dag.edge_count} edges, {len(dag.levels())} levels"
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    dag = _load(args.file)
    print(f"ok: {_summary(dag)}")
    return EXIT_OK


def _configure_graph(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="workflow spec (.yaml, .yml or .json)")
    parser.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of levels")


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(dag: DAG) -> str:
    """The graph in Graphviz DOT: one node per DAG node labelled with its executor kind, one
    edge per dependency (parent -> child)."""
    lines = [f"digraph {_dot_id(dag.id or 'workflow')} {{", "  rankdir=LR;"]
    for node in dag.nodes.values():
        label = f"{node.id}\\n{node.kind}"
        escaped = label.replace('"', '\\"')
        lines.append(f'  {_dot_id(node.id)} [label="{escaped}"];')
    for node in dag.nodes.values():
        for dep in node.deps:
            lines.append(f"  {_dot_id(dep)} -> {_dot_id(node.id)};")
    lines.append("}")
    return "\n".join(lines)


def _cmd_graph(args: argparse.Namespace) -> int:
    dag = _load(args.file)
    if args.dot:
        print(to_dot(dag))
        return EXIT_OK
    print(_summary(dag))
    for depth, level in enumerate(dag.levels()):
        print(f"level {depth}: {', '.join(level)}")
    return EXIT_OK


# --- serve and the API clients -------------------------------------------------------------


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    add_logging_arguments(parser)
    parser.add_argument("--config", metavar="FILE", help="serve configuration (YAML)")
    parser.add_argument(
        "--workflows",
        action="append",
        default=[],
        metavar="DIR",
        help="load every workflow in DIR: *.yaml/*.yml/*.json specs and *.py modules with "
        "WORKFLOWS or register(orch) (repeatable; adds to the config file's)",
    )
    parser.add_argument(
        "--host",
        help="address to listen on, for the HTTP API and, with discovery, OrchestratorService "
        "unless DAGENGINE_GRPC_HOST says otherwise (default 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=port_number, help="HTTP port; 0 picks one (env DAGENGINE_HTTP_PORT, 8080)"
    )
    parser.add_argument(
        "--store",
        metavar="PATH|URL",
        help="SQLite file, or a postgresql:// URL (env DAGENGINE_STORE)",
    )
    parser.add_argument(
        "--engines",
        type=int,
        metavar="N",
        help="local engine processes to start; 0 (default) runs the embedded engine",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        default=None,
        help="one of several active orchestrators on one PostgreSQL store: runs are leased, "
        "a lost replica's runs taken over by the others (env DAGENGINE_REPLICA=1)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from dagengine.serve import ServeOptions, load_serve_config, serve

    configure_process_logging(args)
    opts = load_serve_config(args.config) if args.config else ServeOptions()
    opts.workflows += [str(Path(folder).resolve()) for folder in args.workflows]
    if args.host is not None:
        opts.host = args.host
    if args.port is not None:
        opts.port = args.port
    if args.store is not None:
        keep = args.store == ":memory:" or args.store.startswith(("postgresql://", "postgres://"))
        opts.store = args.store if keep else str(Path(args.store).resolve())
    if args.engines is not None:
        if args.engines < 0:
            raise BadInput("--engines must be >= 0")
        opts.engines = args.engines
    if args.replica:
        opts.replica = True
    return serve(opts)


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the server (env DAGENGINE_URL, default http://127.0.0.1:8080)"
    )
    parser.add_argument("--token", help="bearer token of the API (env DAGENGINE_TOKEN)")


def _client(args: argparse.Namespace) -> Any:
    from dagengine.client import ApiClient

    return ApiClient(args.url, token=args.token)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _configure_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow id")
    parser.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=VALUE", help="a run input"
    )
    parser.add_argument("--inputs-json", metavar="JSON|@FILE", help="run inputs as JSON")
    parser.add_argument("--version", dest="workflow_version", help="exact version (default latest)")
    parser.add_argument("--wait", action="store_true", help="wait for the run and print it")
    _add_url(parser)


def _run_failed(run: dict[str, Any]) -> bool:
    return run.get("status") in ("failed", "cancelled")


def _cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    schema = remote_schema(client, args.workflow, args.workflow_version) if args.input else None
    inputs = parse_inputs(args.input, args.inputs_json, schema)
    run = client.submit(args.workflow, inputs, version=args.workflow_version, wait=args.wait)
    if not args.wait:
        print(run["run_id"])
        return EXIT_OK
    _print_json(
        {k: run.get(k) for k in ("run_id", "workflow_id", "version", "status", "outputs", "error")}
    )
    if _run_failed(run):
        error = run.get("error") or {}
        reason = _one_line(str(error.get("message", "")))
        print(f"{_PROG}: run {run['run_id']} {run['status']}: {reason}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


def _configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", help="only this workflow's runs")
    parser.add_argument(
        "--status", choices=("queued", "running", "succeeded", "failed", "cancelled")
    )
    parser.add_argument("--limit", type=positive_int, default=50)
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    _add_url(parser)


def _cmd_runs(args: argparse.Namespace) -> int:
    page = _client(args).runs(workflow_id=args.workflow, status=args.status, limit=args.limit)
    if args.json:
        _print_json(page)
        return EXIT_OK
    for run in page["runs"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))
        print(f"{run['run_id']}  {run['status']:<9}  {run['workflow_id']}@{run['version']}  {when}")
    return EXIT_OK


def _configure_run_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="run id")
    _add_url(parser)


def _cmd_status(args: argparse.Namespace) -> int:
    run = _client(args).run(args.run_id)
    _print_json(run)
    return EXIT_RUN_FAILED if _run_failed(run) else EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    answer = _client(args).cancel(args.run_id)
    if answer["cancelled"]:
        print(f"cancelled {args.run_id} ({answer['status']})")
    else:
        print(f"run {args.run_id} had already finished ({answer['status']})")
    return EXIT_OK


def _configure_workflows(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    _add_url(parser)


def _cmd_workflows(args: argparse.Namespace) -> int:
    listing = _client(args).workflows()
    if args.json:
        _print_json(listing)
        return EXIT_OK
    for wf in listing["workflows"]:
        print(f"{wf['id']}  latest {wf['latest']}  versions {', '.join(wf['versions'])}")
    return EXIT_OK


#: The subcommands, by name.
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("run", "run a workflow and show its progress and result", _configure_run, _cmd_run),
        Command("validate", "check a workflow spec", _configure_validate, _cmd_validate),
        Command("graph", "show a workflow's levels, or DOT", _configure_graph, _cmd_graph),
        Command("engine", "serve runs over gRPC (an engine process)", configure_engine, run_engine),
        Command(
            "serve",
            "run an orchestrator: engines, workflows, triggers and the HTTP API",
            _configure_serve,
            _cmd_serve,
        ),
        Command("submit", "start a run on a server", _configure_submit, _cmd_submit),
        Command("runs", "list a server's runs", _configure_runs, _cmd_runs),
        Command("status", "show a run (exit 1 if it failed)", _configure_run_id, _cmd_status),
        Command("cancel", "cancel a run", _configure_run_id, _cmd_cancel),
        Command("retry", "retry a failed run from where it failed", configure_retry, run_retry),
        Command("logs", "print a run's node log lines (-f: follow)", configure_logs, run_logs),
        Command("workflows", "list a server's workflows", _configure_workflows, _cmd_workflows),
        Command("store", "prune a store, or show its size (stats)", configure_store, run_store),
        Command("cache", "clear a server's cached node outputs", configure_cache, run_cache),
    )
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    from dagengine import __version__

    parser = _Parser(prog=_PROG, description="Run and inspect dagengine workflows.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    # Specs name Python code by import path relative to where the command runs
    # (`python: mypkg.tasks:fn`), as `python -m` would.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return COMMANDS[args.command].handler(args)
    except (DagEngineError, BadInput) as exc:
        _error(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_RUN_FAILED
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

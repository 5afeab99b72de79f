"""``dagengine logs RUN [--node ID] [-f]``: a run's node log lines from a server's HTTP API
(``GET /runs/{id}/logs``), one a line: time, node and attempt, level, message. ``-f`` follows
a live run until it ends. The handlers plug into :data:`dagengine.cli.COMMANDS`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["configure_logs", "format_log_line", "run_logs"]


def configure_logs(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``dagengine logs``."""
    parser.add_argument("run_id", help="run id")
    parser.add_argument("--node", metavar="ID", help="only this node's lines")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing lines until the run ends"
    )
    parser.add_argument(
        "--url", help="the server (env DAGENGINE_URL, default http://127.0.0.1:8080)"
    )
    parser.add_argument("--token", help="bearer token of the API (env DAGENGINE_TOKEN)")


def format_log_line(line: dict[str, Any]) -> str:
    """``HH:MM:SS.mmm node#attempt LEVEL message`` (local time)."""
    stamp = float(line.get("time") or 0.0)
    clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d}"
    where = f"{line.get('node_id') or '-'}#{line.get('node_attempt') or 1}"
    return f"{clock} {where} {line.get('level', 'INFO'):<7} {line.get('message', '')}"


def run_logs(args: argparse.Namespace) -> int:
    """Print the lines; 0 when done (errors reach the CLI's handler as ApiClientError)."""
    from dagengine.client import ApiClient

    client = ApiClient(args.url, token=args.token)
    lines = (
        client.follow_logs(args.run_id, node=args.node)
        if args.follow
        else client.logs(args.run_id, node=args.node)
    )
    for line in lines:
        sys.stdout.write(format_log_line(line) + "\n")
        if args.follow:
            sys.stdout.flush()
    return 0

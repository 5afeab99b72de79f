"""``dagengine retry RUN``: retry a failed (or cancelled) run from where it failed, on a
server (``POST /runs/{id}/retry``): a new run of the same workflow version and inputs that
reuses the outputs of the nodes the old run completed. Prints the new run's id; the reused
nodes go to stderr. The handlers plug into :data:`dagengine.cli.COMMANDS`."""

from __future__ import annotations

import argparse
import sys
import urllib.parse

__all__ = ["configure_retry", "run_retry"]


def configure_retry(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``dagengine retry``."""
    parser.add_argument("run_id", help="the failed or cancelled run")
    parser.add_argument(
        "--url", help="the server (env DAGENGINE_URL, default http://127.0.0.1:8080)"
    )
    parser.add_argument("--token", help="bearer token of the API (env DAGENGINE_TOKEN)")


def run_retry(args: argparse.Namespace) -> int:
    """Start the retry; 0 once it is queued (errors reach the CLI's handler as
    ApiClientError: 404 unknown run, 409 a run still going or one that succeeded)."""
    from dagengine.client import ApiClient

    client = ApiClient(args.url, token=args.token)
    path = f"/runs/{urllib.parse.quote(args.run_id, safe='')}/retry"
    answer = client.request("POST", path, {})
    reused = answer.get("reused") or []
    print(answer["run_id"])
    shown = ", ".join(reused) if reused else "none"
    print(f"retry of {args.run_id}: reusing {len(reused)} node(s): {shown}", file=sys.stderr)
    return 0

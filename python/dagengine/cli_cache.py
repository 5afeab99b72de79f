"""``dagengine cache clear [--workflow ID [--node ID]]``: delete a server's cached node
outputs (``DELETE /workflows/{id}/cache``): one node's, one workflow's, or, without
``--workflow``, every registered workflow's. The next run of a cleared node misses and runs
it. Prints how many entries were deleted. The handlers plug into
:data:`dagengine.cli.COMMANDS`."""

from __future__ import annotations

import argparse

from dagengine.cli_inputs import BadInput

__all__ = ["configure_cache", "run_cache"]


def configure_cache(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``dagengine cache``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    clear = actions.add_parser(
        "clear",
        help="delete cached node outputs (all, a workflow's, or a node's)",
        description="Delete cached node outputs: the next run of such a node runs it.",
    )
    clear.add_argument("--workflow", help="only this workflow's entries")
    clear.add_argument("--node", help="only this node's entries (needs --workflow)")
    clear.add_argument(
        "--url", help="the server (env DAGENGINE_URL, default http://127.0.0.1:8080)"
    )
    clear.add_argument("--token", help="bearer token of the API (env DAGENGINE_TOKEN)")


def run_cache(args: argparse.Namespace) -> int:
    """``cache clear``: 0 once the entries are deleted (errors reach the CLI's handler:
    BadInput for --node without --workflow, ApiClientError for an unknown workflow)."""
    from dagengine.client import ApiClient

    if args.node is not None and args.workflow is None:
        raise BadInput("--node needs --workflow: node ids are a workflow's")
    for name in ("workflow", "node"):
        value = getattr(args, name)
        if value is not None and not value.strip():
            raise BadInput(f"--{name} must not be empty")
    client = ApiClient(args.url, token=args.token)
    if args.workflow is not None:
        workflows = [args.workflow]
    else:
        workflows = [wf["id"] for wf in client.workflows()["workflows"]]
    deleted = sum(client.clear_cache(workflow, node=args.node) for workflow in workflows)
    what = (
        f"node {args.node} of workflow {args.workflow}"
        if args.node is not None
        else f"workflow {args.workflow}"
        if args.workflow is not None
        else f"{len(workflows)} workflow(s)"
    )
    print(f"deleted {deleted} cache entr{'y' if deleted == 1 else 'ies'} of {what}")
    return 0

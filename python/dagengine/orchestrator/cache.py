"""The orchestrator's cache of node outputs (see :mod:`dagengine.cache`): entries in its
store, table ``cache_entries``.

Engines keep no cache of their own. A run of a workflow with cached nodes is sent with
the unexpired entries of those nodes (the newest :data:`MAX_ENTRIES_PER_RUN`, at most
:data:`MAX_ENTRY_BYTES_PER_RUN` of outputs; a key not among them is a miss, and the node
runs); the engine computes each cached node's key,
takes a hit from those entries (``node_cached``), and reports the key of every cached node
in its result (``NodeResult.cache_key``). When the attempt ends, the outputs of the cached
nodes that ran and succeeded are stored under their keys with their ``ttl``. An in-process
engine (:class:`~dagengine.orchestrator.backends.LocalBackend`) gets the same entries
through :class:`EntriesCache`. Retention deletes the entries of the runs it prunes;
storing entries drops the workflow's expired ones.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from typing import Any

from dagengine.orchestrator.store.protocol import StoreBackend
from dagengine.results import NodeStatus, RunResult
from dagengine.workflow import DAG

__all__ = [
    "MAX_ENTRIES_PER_RUN",
    "MAX_ENTRY_BYTES_PER_RUN",
    "EntriesCache",
    "cache_entries_for",
    "store_cache_entries",
]

#: The most entries sent with one run (they travel in its request)...
MAX_ENTRIES_PER_RUN = 1000
#: ... and the most bytes of their outputs: a request must stay well under the engines'
#: message limit (4 MiB by default), whatever the cached nodes return.
MAX_ENTRY_BYTES_PER_RUN = 1 << 20

#: An entry as the store and the wire hold it: node id, key, output JSON, run id.
Entry = tuple[str, str, str, str]


#: The cached nodes of each workflow version's DAG, found once (a DAG does not change once
#: it is registered): runs of workflows without any pay a lookup, not a walk of the graph.
_CACHED: weakref.WeakKeyDictionary[DAG, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _cached_nodes(dag: DAG) -> tuple[str, ...]:
    nodes = _CACHED.get(dag)
    if nodes is None:
        nodes = tuple(node.id for node in dag.nodes.values() if node.cache is not None)
        _CACHED[dag] = nodes
    return nodes


def cache_entries_for(store: StoreBackend, workflow_id: str, dag: DAG) -> list[Entry]:
    """The entries a run of ``dag`` is sent with (none without cached nodes)."""
    nodes = _cached_nodes(dag)
    if not nodes:
        return []
    entries = store.cache_entries(workflow_id, nodes, MAX_ENTRIES_PER_RUN)
    kept: list[Entry] = []
    size = 0
    for entry in entries:  # the newest first
        size += len(entry[2]) + len(entry[1]) + len(entry[0])
        if size > MAX_ENTRY_BYTES_PER_RUN:
            break
        kept.append(entry)
    return kept


def store_cache_entries(
    store: StoreBackend, workflow_id: str, dag: DAG, run_id: str, result: RunResult
) -> int:
    """Store the outputs of the cached nodes of ``result`` that ran and succeeded under
    their keys; how many were stored."""
    rows: list[tuple[str, str, str, str, float | None]] = []
    for node_id in _cached_nodes(dag):
        cache = dag.nodes[node_id].cache
        if cache is None or node_id not in result.node_results:
            continue
        outcome = result.node_results[node_id]
        if (
            outcome.status is not NodeStatus.SUCCEEDED
            or outcome.cache_key is None
            or outcome.cached_from is not None
        ):
            continue
        output = json.dumps(outcome.output or {}, separators=(",", ":"), ensure_ascii=False)
        rows.append((node_id, outcome.cache_key, output, run_id, cache.ttl))
    if rows:
        store.save_cache_entries(workflow_id, rows)
    return len(rows)


class EntriesCache:
    """A :class:`~dagengine.cache.Cache` of entries given up front (an in-process engine's
    run, as a remote engine gets them in the request); it stores nothing (the orchestrator
    does, from the run's result)."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._entries = {(node, key): (output, run) for node, key, output, run in entries}

    def get(self, node_id: str, key: str) -> tuple[dict[str, Any], str] | None:
        """The entry of ``node_id`` under ``key``, if it was given."""
        found = self._entries.get((node_id, key))
        if found is None:
            return None
        output, run_id = found
        return json.loads(output), run_id

    def put(
        self, node_id: str, key: str, output: dict[str, Any], run_id: str, ttl: float | None
    ) -> None:
        """Nothing: the orchestrator stores the result's new entries."""

"""The ``cache_entries`` table (cached nodes' outputs, see :mod:`dagengine.orchestrator.cache`):
its statements written once for both stores, in each one's placeholder style."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

__all__ = ["CacheEntryTable"]


class _Store(Protocol):
    """What the mixin needs of its store."""

    _MARK: ClassVar[str]

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]: ...

    def _write(self, sql: str, params: Iterable[Any] = ()) -> Any: ...

    def transaction(self) -> AbstractContextManager[None]: ...


def _sql(store: _Store, text: str) -> str:
    """``text`` with its ``?`` placeholders in the store's style."""
    return text.replace("?", store._MARK)


class CacheEntryTable:
    """``cache_entries``, ``save_cache_entries`` and ``clear_cache_entries`` of a store (a
    mixin, listed before the
    store's base): ``_MARK`` is the driver's placeholder (SQLite's ``?``, psycopg's ``%s``),
    ``_write`` runs a statement inside the store's open ``transaction``."""

    def cache_entries(
        self: _Store, workflow_id: str, node_ids: Sequence[str], limit: int
    ) -> list[tuple[str, str, str, str]]:
        """Unexpired entries of these nodes of the workflow as ``(node_id, key, output
        JSON, run_id)``, the newest first, at most ``limit``."""
        if not node_ids:
            return []
        marks = ", ".join(["?"] * len(node_ids))
        rows = self._query(
            _sql(
                self,
                f"""SELECT node_id, key, output, run_id FROM cache_entries
                    WHERE workflow_id = ? AND node_id IN ({marks})
                        AND (expires_at IS NULL OR expires_at > ?)
                    ORDER BY created_at DESC LIMIT ?""",
            ),
            (workflow_id, *node_ids, time.time(), limit),
        )
        return [(str(n), str(k), str(o), str(r)) for n, k, o, r in rows]

    def save_cache_entries(
        self: _Store,
        workflow_id: str,
        entries: Sequence[tuple[str, str, str, str, float | None]],
    ) -> None:
        """Store (replace) ``(node_id, key, output JSON, run_id, ttl)`` entries of the
        workflow and drop its expired ones."""
        now = time.time()
        upsert = _sql(
            self,
            """INSERT INTO cache_entries
                (workflow_id, node_id, key, output, run_id, created_at, expires_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (workflow_id, node_id, key) DO UPDATE SET
                   output = excluded.output, run_id = excluded.run_id,
                   created_at = excluded.created_at, expires_at = excluded.expires_at""",
        )
        with self.transaction():
            for node_id, key, output, run_id, ttl in entries:
                expires = None if ttl is None else now + ttl
                self._write(upsert, (workflow_id, node_id, key, output, run_id, now, expires))
            self._write(
                _sql(self, "DELETE FROM cache_entries WHERE workflow_id = ? AND expires_at <= ?"),
                (workflow_id, now),
            )

    def clear_cache_entries(
        self: _Store, workflow_id: str | None = None, node_id: str | None = None
    ) -> int:
        """Delete cached outputs: every entry, a workflow's (``workflow_id``), or one node's
        of a workflow (and ``node_id``); how many were deleted. The next run of such a node
        misses and runs it."""
        if node_id is not None and workflow_id is None:
            raise ValueError("clearing a node's cache entries needs its workflow_id")
        sql = "DELETE FROM cache_entries"
        params: tuple[str, ...] = ()
        if workflow_id is not None:
            sql, params = f"{sql} WHERE workflow_id = ?", (workflow_id,)
            if node_id is not None:
                sql, params = f"{sql} AND node_id = ?", (workflow_id, node_id)
        with self.transaction():
            cursor = self._write(_sql(self, sql), params)
        return max(int(cursor.rowcount), 0)

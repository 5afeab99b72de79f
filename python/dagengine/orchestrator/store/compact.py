"""Compact history for the SQLite store: fewer and smaller rows per run, read back as the
same records (issue 23, "compact history").

Where a run of the 3-node Lua workflow spent its bytes (file bytes per run after VACUUM,
10,000 runs; ``dbstat``): events 1,027 + their ``(run_id, seq)`` index 403 + their
``(workflow_id, seq)`` index 175 (9 rows a run), the run row 822 (of which the result's
JSON ~720: ``outputs`` repeated the nodes' outputs, ``run_id`` and ``status`` the row's
columns), node outputs 194 + their primary key 145. Three cuts, each lossless:

* **Folded node events** (:func:`fold_events`): a ``node.started`` and the
  ``node.succeeded`` of the same run, node and payload committed in the same group are
  stored as one row of type :data:`FOLDED` (the end's ``seq`` and time; the start's ``seq``
  offset and time in the payload, ``[offset, time, payload]``). Readers expand it back into
  the two events (:func:`expand`). A start is folded only into an end at most
  :data:`FOLD_SPAN` numbers later, so a reader that pages by ``seq`` finds every start
  whose number it reaches by reading that far past its page (see ``SQLiteStore.events``).
* **Common payloads by number** (:data:`PAYLOADS`): a payload that is exactly one of a few
  frequent texts (``{"attempt":1,"node_attempt":1}``) is stored as its index (a digit, so
  it can never be mistaken for a JSON object).
* **Results without repeats** (:func:`compact_result` / :func:`expand_result`): a run's
  result is stored without ``run_id`` and ``status`` (the row's columns), without
  ``outputs`` (rebuilt from ``nodes``) and without a ``null`` ``error``: each only when it
  is exactly what the reader rebuilds.

Old rows (written before these cuts) have none of these forms and read as they are: there
is nothing to migrate.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["FOLDED", "FOLD_SPAN", "PAYLOADS", "compact_result", "expand", "fold_events"]

#: The stored type of a folded ``node.started`` + ``node.succeeded`` pair.
FOLDED: Final = "node.started+succeeded"
_STARTED: Final = "node.started"
_SUCCEEDED: Final = "node.succeeded"
#: A start is folded only into an end at most this many sequence numbers after it.
FOLD_SPAN: Final = 4096

#: Payloads stored by their index. Append only: stored rows refer to these by position.
PAYLOADS: Final[tuple[str, ...]] = (
    "{}",
    '{"attempt":1}',
    '{"attempt":1,"node_attempt":1}',
    '{"attempt":2}',
    '{"attempt":2,"node_attempt":1}',
    '{"attempt":1,"node_attempt":2}',
    '{"attempt":3}',
    '{"attempt":3,"node_attempt":1}',
    '{"attempt":1,"node_attempt":3}',
    '{"attempt":2,"node_attempt":2}',
)
_PAYLOAD_CODE: Final[dict[str, str]] = {text: str(code) for code, text in enumerate(PAYLOADS)}
_DIGITS: Final = frozenset("0123456789")


def _encode(data: str) -> str:
    """A payload's stored text: its number when it is one of :data:`PAYLOADS`."""
    return _PAYLOAD_CODE.get(data, data)


def _decode(stored: str) -> Any:
    """The payload of a stored text (a number of :data:`PAYLOADS`, or JSON)."""
    if stored and stored[0] in _DIGITS:
        return json.loads(PAYLOADS[int(stored)])
    return json.loads(stored)


def fold_events(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A group's event rows (``seq, time, type, severity rank, workflow_id, run_id,
    node_id, engine_id, data``, in ``seq`` order) as stored: pairs folded, common payloads
    by number."""
    out: list[tuple[Any, ...] | None] = []
    starts: dict[tuple[Any, Any], int] = {}  # (run, node) -> index in out of its start
    for row in rows:
        kind = row[2]
        if kind == _STARTED and row[5] is not None and row[6] is not None:
            starts[(row[5], row[6])] = len(out)
            out.append(row)
            continue
        if kind == _SUCCEEDED:
            index = starts.pop((row[5], row[6]), None)
            if index is not None:
                start = out[index]
                if (
                    start is not None
                    and start[8] == row[8]
                    and start[3] == row[3]
                    and start[4] == row[4]
                    and start[7] == row[7]
                    and 0 < row[0] - start[0] <= FOLD_SPAN
                    and isinstance(start[1], float)
                ):
                    out[index] = None
                    payload = f"[{row[0] - start[0]},{start[1]!r},{_encode(row[8])}]"
                    out.append((*row[:2], FOLDED, *row[3:8], payload))
                    continue
        out.append(row)
    return [
        row if row[2] == FOLDED else (*row[:8], _encode(row[8])) for row in out if row is not None
    ]


def expand(
    seq: int, when: float, kind: str, stored: str
) -> list[tuple[int, float, str, dict[str, Any]]]:
    """The events ``(seq, time, type, data)`` of one stored row (two for a folded pair)."""
    if kind != FOLDED:
        return [(seq, when, kind, _decode(stored))]
    offset, started, payload = json.loads(stored)
    data = json.loads(PAYLOADS[payload]) if isinstance(payload, int) else payload
    return [
        (seq - offset, started, _STARTED, copy.deepcopy(data)),
        (seq, when, _SUCCEEDED, data),
    ]


def stored_types(types: Iterable[str]) -> list[str]:
    """The stored types to select for events of ``types``."""
    wanted = list(types)
    if _STARTED in wanted or _SUCCEEDED in wanted:
        wanted.append(FOLDED)
    return wanted


def _outputs_of(nodes: Mapping[str, Any]) -> dict[str, Any]:
    """A result's ``outputs`` as :meth:`~dagengine.RunResult.from_dict` rebuilds it."""
    return {
        nid: entry["output"] if entry.get("output") is not None else {}
        for nid, entry in nodes.items()
        if isinstance(entry, Mapping) and entry.get("status") == "succeeded"
    }


#: The key that marks a compacted result.
_MARK: Final = "~"


def compact_result(run_id: str, status: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` (a :meth:`~dagengine.RunResult.to_dict`) without what
    :func:`expand_result` rebuilds from the run's row; anything else as it is."""
    if result.get("run_id") != run_id or result.get("status") != status:
        return result
    nodes = result.get("nodes")
    if not isinstance(nodes, Mapping) or _MARK in result:
        return result
    out: dict[str, Any] = {_MARK: 1}
    for key, value in result.items():
        if key in ("run_id", "status"):
            continue
        if key == "error" and value is None:
            continue
        if key == "outputs" and value == _outputs_of(nodes):
            out[_MARK] = 2  # outputs dropped
            continue
        out[key] = value
    return out


def expand_result(run_id: str, status: str, stored: Any) -> Any:
    """A stored result as it was given (see :func:`compact_result`)."""
    if not isinstance(stored, dict) or _MARK not in stored:
        return stored
    mark = stored.pop(_MARK)
    out: dict[str, Any] = {"run_id": run_id, "status": status, "error": stored.pop("error", None)}
    if "duration" in stored:
        out["duration"] = stored.pop("duration")
    if mark == 2:
        out["outputs"] = _outputs_of(stored.get("nodes", {}))
    out.update(stored)
    return out

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
  ``outputs`` (rebuilt from ``nodes``) and without a ``null`` ``error``, each only when it
  is exactly what the reader rebuilds; a node's entry with the usual keys is a list of its
  values (no key names, no trailing ``null``).

Two more cuts came later (1,694 -> 1,173 file bytes a run of the workflow above):

* **Events keyed by their run's number** (SQLite migration 4, see ``schema.MIGRATIONS``):
  ``event_rows.run_key`` is ``runs.id`` instead of the 32-character id, in the row and in
  its index; ``events`` is a view with the old columns for SQL written against the table.
* **A succeeded run's node outputs kept once** (:func:`outputs_to_drop`,
  :func:`with_outputs_here`, :func:`result_outputs`): when the run's result holds exactly
  its stored ``node_outputs`` rows, in their order (the nodes' ``finished_at``), the result
  is marked and the rows deleted in the group commit that ends the run; readers rebuild
  them from the result. Failed and cancelled runs keep their rows (a retry reads them).
  Whether the rows are the result's is decided on the caller's thread from the outputs
  this process queued for the run (:class:`OutputsSeen`), so the writer, which serialises
  the store, only marks and deletes; a run not followed from its creation (a restart, a
  retry) is compared with its stored rows by the writer instead.

The PostgreSQL store folds events and numbers payloads too, on a store that numbers events
when queued (not a replica's, which numbers them at the commit), and keys its events by the
run's number as SQLite does (its migration 6: ``event_rows.run_key`` is ``runs.ord``;
``events`` a view with the old columns). It keeps its node output rows: comparing the
outputs in the statement that ends a run cost its server more than the rows (the dead
tuples of the deleted rows were scanned by every group).

Old rows (written before these cuts) have none of these forms and read as they are.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

from dagengine.orchestrator.store.records import SEVERITIES, EventRecord, _dumps

__all__ = [
    "FOLDED",
    "FOLDED_TYPES",
    "FOLDS",
    "FOLD_SPAN",
    "PAYLOADS",
    "compact_result",
    "expand",
    "fold_events",
]

#: Event pairs stored as one row: the end's type -> (the start's type, the row's type).
FOLDS: Final[dict[str, tuple[str, str]]] = {
    "node.succeeded": ("node.started", "node.started+succeeded"),
    "run.started": ("run.queued", "run.queued+started"),
}
#: The stored types of folded rows -> (the start's type, the end's type).
_UNFOLD: Final[dict[str, tuple[str, str]]] = {
    folded: (first, end) for end, (first, folded) in FOLDS.items()
}
_STARTS: Final = frozenset(first for first, _ in FOLDS.values())
#: The stored type of a folded node start and end (the most frequent pair).
FOLDED: Final = FOLDS["node.succeeded"][1]
#: The stored types of folded rows.
FOLDED_TYPES: Final[tuple[str, ...]] = tuple(_UNFOLD)
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


def _fold(start: tuple[Any, ...], end: tuple[Any, ...], folded: str) -> tuple[Any, ...] | None:
    """The row of ``start`` and ``end`` folded (``None`` if they cannot be): the end's
    columns, and as payload ``[seq offset, start time, end payload]``, then the start's
    payload if it differs, then the start's engine if it differs too."""
    if (
        start[3] != end[3]  # severity: filtered in SQL, one for both
        or start[4] != end[4]
        or not 0 < end[0] - start[0] <= FOLD_SPAN
        or not isinstance(start[1], float)
    ):
        return None
    parts = [str(end[0] - start[0]), repr(start[1]), _encode(end[8])]
    if start[7] != end[7]:
        parts += [_encode(start[8]), json.dumps(start[7])]
    elif start[8] != end[8]:
        parts.append(_encode(start[8]))
    return (*end[:2], folded, *end[3:8], f"[{','.join(parts)}]")


def fold_events(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A group's event rows (``seq, time, type, severity rank, workflow_id, run_id,
    node_id, engine_id, data``, in ``seq`` order) as stored: pairs of :data:`FOLDS`
    folded, common payloads by number."""
    out: list[tuple[Any, ...] | None] = []
    starts: dict[tuple[Any, Any, Any], int] = {}  # (type, run, node) -> index in out
    for row in rows:
        kind = row[2]
        if kind in _STARTS and row[5] is not None:
            starts[(kind, row[5], row[6])] = len(out)
            out.append(row)
            continue
        pair = FOLDS.get(kind)
        if pair is not None:
            index = starts.pop((pair[0], row[5], row[6]), None)
            start = None if index is None else out[index]
            folded = None if start is None else _fold(start, row, pair[1])
            if folded is not None:
                out[index] = None  # type: ignore[index]
                out.append(folded)
                continue
        out.append(row)
    return [
        row if row[2] in _UNFOLD else (*row[:8], _encode(row[8])) for row in out if row is not None
    ]


def _payload(value: Any) -> Any:
    return json.loads(PAYLOADS[value]) if isinstance(value, int) else value


def expand(
    seq: int, when: float, kind: str, engine_id: str | None, stored: str
) -> list[tuple[int, float, str, str | None, dict[str, Any]]]:
    """The events ``(seq, time, type, engine_id, data)`` of one stored row (two for a
    folded pair)."""
    pair = _UNFOLD.get(kind)
    if pair is None:
        return [(seq, when, kind, engine_id, _decode(stored))]
    offset, started, end_payload, *rest = json.loads(stored)
    data = _payload(end_payload)
    first = copy.deepcopy(data) if not rest else _payload(rest[0])
    first_engine = rest[1] if len(rest) > 1 else engine_id
    return [
        (seq - offset, started, pair[0], first_engine, first),
        (seq, when, pair[1], engine_id, data),
    ]


def page_bound(rows: list[tuple[Any, ...]], limit: int) -> int | None:
    """The last ``seq`` of a full page of stored rows (``None``: not full). The starts folded
    into rows just past it (at most :data:`FOLD_SPAN` numbers later) belong to the page:
    a store reads the folded rows up to ``bound + FOLD_SPAN`` too (:func:`expand_page`)."""
    return rows[-1][0] if len(rows) >= limit else None


def expand_page(
    rows: list[tuple[Any, ...]],
    after: int,
    bound: int | None,
    wanted: set[str] | None,
    limit: int,
) -> list[EventRecord]:
    """The events of a page of stored rows (``seq, time, type, severity rank, workflow_id,
    run_id, node_id, engine_id, data``; the page's rows, then the folded rows up to
    ``bound + FOLD_SPAN``): those with ``after < seq <= bound`` of the ``wanted`` types, in
    ``seq`` order, at most ``limit``."""
    records = [
        EventRecord(seq, when, kind, SEVERITIES[rank], wf, run, node, engine, data)
        for row_seq, row_time, row_type, rank, wf, run, node, row_engine, payload in rows
        for seq, when, kind, engine, data in expand(
            row_seq, row_time, row_type, row_engine, payload
        )
        if seq > after and (bound is None or seq <= bound) and (wanted is None or kind in wanted)
    ]
    records.sort(key=lambda record: record.seq)
    return records[:limit]


def stored_types(types: Iterable[str]) -> list[str]:
    """The stored types to select for events of ``types``."""
    wanted = list(types)
    wanted += [folded for folded, pair in _UNFOLD.items() if set(pair) & set(wanted)]
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


#: The keys of a node's entry in a result (``NodeResult.to_dict``), in their order; an
#: entry with exactly these is stored as a list in :data:`_NODE_LIST` order, its trailing
#: ``null`` values left out.
_NODE_KEYS: Final = ("status", "output", "error", "attempts", "started_at", "finished_at")
_NODE_LIST: Final = ("status", "attempts", "started_at", "finished_at", "output", "error")
#: Where :func:`_completed` reads a listed entry's status, finish time and output.
_STATUS_AT, _FINISHED_AT, _OUTPUT_AT = (
    _NODE_LIST.index(k) for k in ("status", "finished_at", "output")
)
_NODE_KEY_SET: Final = frozenset(_NODE_KEYS)


def _node_list(entry: Any) -> Any:
    """A node's entry as a list, if it has exactly the usual keys (else as it is)."""
    if not isinstance(entry, dict) or entry.keys() != _NODE_KEY_SET:
        return entry
    values = [entry[key] for key in _NODE_LIST]
    while values and values[-1] is None:
        values.pop()
    return values


def _node_entry(stored: Any) -> Any:
    """A node's entry as it was given (see :func:`_node_list`)."""
    if not isinstance(stored, list):
        return stored
    values = dict(zip(_NODE_LIST, stored + [None] * (len(_NODE_LIST) - len(stored)), strict=True))
    return {key: values[key] for key in _NODE_KEYS}


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
        if key == "nodes":
            value = {node: _node_list(entry) for node, entry in nodes.items()}
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
    nodes = stored.get("nodes")
    if isinstance(nodes, dict):
        stored["nodes"] = nodes = {node: _node_entry(entry) for node, entry in nodes.items()}
    if mark in (2, _OUTPUTS_HERE):
        out["outputs"] = _outputs_of(nodes or {})
    out.update(stored)
    return out


#: The mark of a result (``outputs`` dropped, as mark 2) whose run's ``node_outputs`` rows
#: were dropped too: they were exactly the result's, and are read back from it
#: (:func:`result_outputs`).
_OUTPUTS_HERE: Final = 3
_REBUILT_PREFIX: Final = '{"~":2,'
_OUTPUTS_HERE_PREFIX: Final = '{"~":3,'


def outputs_to_drop(stored: str, value: Any = None) -> list[tuple[str, str]] | None:
    """The ``(node_id, output JSON)`` of each succeeded node of a stored result, in the
    result's order: what the run's ``node_outputs`` rows must be (in their order) for
    :func:`with_outputs_here` to replace them; ``None`` for a result that cannot (not
    compacted with its ``outputs`` rebuilt). ``value``: what ``stored`` encodes, when the
    caller has it (not parsed again)."""
    if not stored.startswith(_REBUILT_PREFIX):
        return None
    nodes = (value if isinstance(value, dict) else json.loads(stored)).get("nodes")
    if not isinstance(nodes, dict):
        return None
    return [(nid, _dumps(output)) for nid, output in _completed(nodes).items()]


def with_outputs_here(stored: str) -> str:
    """A stored result of :func:`outputs_to_drop` marked as holding its run's node outputs."""
    return _OUTPUTS_HERE_PREFIX + stored[len(_REBUILT_PREFIX) :]


def result_outputs(stored: str | None) -> dict[str, Any] | None:
    """The node outputs a stored result holds for its run (:func:`with_outputs_here`), in
    completion order; ``None`` if its run's are in ``node_outputs``."""
    if stored is None or not stored.startswith(_OUTPUTS_HERE_PREFIX):
        return None
    nodes = json.loads(stored).get("nodes")
    return _completed(nodes if isinstance(nodes, dict) else {})


def _completed(nodes: dict[str, Any]) -> dict[str, Any]:
    """The outputs of a stored result's succeeded nodes in the order they finished (by
    ``finished_at``; the result's order for equal or missing times): the order their
    ``node_outputs`` rows had (:func:`with_outputs_here` is used only when it is)."""
    outputs: dict[str, Any] = {}
    finished: dict[str, Any] = {}
    for node, entry in nodes.items():
        if isinstance(entry, list):  # (_NODE_LIST's order, trailing nulls left out)
            if not entry or entry[_STATUS_AT] != "succeeded":
                continue
            output = entry[_OUTPUT_AT] if len(entry) > _OUTPUT_AT else None
            finished[node] = entry[_FINISHED_AT] if len(entry) > _FINISHED_AT else None
        elif isinstance(entry, Mapping) and entry.get("status") == "succeeded":
            output = entry.get("output")
            finished[node] = entry.get("finished_at")
        else:
            continue
        outputs[node] = output if output is not None else {}

    def when(node: str) -> float:
        value = finished[node]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return float("inf")

    return {node: outputs[node] for node in sorted(outputs, key=when)}


def same_output(stored: str, expected: str) -> bool:
    """Whether a stored output's JSON reads back as ``expected`` (the same text once
    re-encoded: ``1.0`` and ``1`` differ)."""
    if stored == expected:
        return True
    try:
        return _dumps(json.loads(stored)) == expected
    except ValueError:
        return False


class OutputsSeen:
    """The node outputs this process queued for the runs it created, kept until each run's
    end (issue 23): with them a run's end decides on the caller's thread, in O(1) store
    work, whether its ``node_outputs`` rows are exactly its result's outputs, instead of the
    store's writer reading the rows back under its lock.

    Only a run followed from its creation through its first attempt is known: its rows are
    then exactly the outputs queued here, in that order (a stored node keeps its first
    position when a later output of the same attempt replaces it, as a ``dict`` key does).
    Any other claim, a release, or an output of another attempt forgets the run, and its end
    falls back to comparing the stored rows. At most ``limit`` runs are kept (the oldest are
    forgotten first), holding at most ``budget`` characters of outputs (a run whose output
    does not fit is forgotten). Thread-safe."""

    def __init__(self, limit: int = 65_536, budget: int = 32 << 20) -> None:
        self._runs: dict[str, dict[str, str]] = {}
        self._limit = limit
        self._budget = budget
        self._held = 0  # characters of the outputs kept
        self._lock = threading.Lock()

    def _drop(self, run_id: str) -> dict[str, str] | None:
        outputs = self._runs.pop(run_id, None)
        if outputs:
            self._held -= sum(map(len, outputs.values()))
        return outputs

    def created(self, run_id: str) -> None:
        """A run this process creates (with no rows yet)."""
        with self._lock:
            self._drop(run_id)
            if len(self._runs) >= self._limit:
                self._drop(next(iter(self._runs)))
            self._runs[run_id] = {}

    def claimed(self, run_id: str, attempt: int) -> None:
        """A claim of ``attempt``: only the first attempt keeps a created run known."""
        if attempt != 1:
            self.forget(run_id)

    def output(self, run_id: str, node_id: str, attempt: int, output_json: str) -> None:
        """An output queued for ``run_id`` (fenced on ``attempt`` when written)."""
        with self._lock:
            outputs = self._runs.get(run_id)
            if outputs is None:
                return
            replaced = len(outputs.get(node_id, ""))
            if attempt != 1 or self._held - replaced + len(output_json) > self._budget:
                self._drop(run_id)
            else:
                outputs[node_id] = output_json
                self._held += len(output_json) - replaced

    def forget(self, run_id: str) -> None:
        """The run is no longer followed (its end compares the stored rows)."""
        with self._lock:
            self._drop(run_id)

    def ended(
        self, run_id: str, attempt: int | None, expected: list[tuple[str, str]] | None
    ) -> list[tuple[str, str]] | bool | None:
        """What a run's end queues for the writer (``WriteBehind._outputs_in_results``):
        ``True`` if its rows are known to be exactly ``expected`` (see
        :func:`outputs_to_drop`; drop them, nothing to read back), ``None`` if they are
        known not to be, or there is nothing to drop, and ``expected`` itself when the run
        is not known (the writer compares the stored rows)."""
        with self._lock:
            outputs = self._drop(run_id)
        if not expected:
            return None
        if outputs is None or attempt != 1:
            return expected
        if list(outputs) != [node for node, _ in expected]:
            return None
        stored = outputs.values()
        if all(same_output(o, e) for o, (_, e) in zip(stored, expected, strict=True)):
            return True
        return None

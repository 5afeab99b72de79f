"""What a run produces: per-node results, the run result, and the events emitted meanwhile.

These are plain frozen dataclasses built from the dicts and tuples the native core returns
(``RunRef.result()`` and ``RunRef.next_events()``), so they can be pickled, compared and turned
into JSON with :meth:`RunResult.to_dict`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from dagengine.exceptions import RunCancelled, RunFailed, RunTimeout

_V = TypeVar("_V")

__all__ = [
    "ErrorInfo",
    "LazyMapping",
    "NodeEvent",
    "NodeResult",
    "NodeStatus",
    "RunResult",
    "RunStatus",
]


class NodeStatus(str, enum.Enum):
    """State of one node in a run."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """True for the states a node does not leave."""
        return self in _FINISHED_NODE_STATES


_FINISHED_NODE_STATES = frozenset(
    {NodeStatus.SUCCEEDED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)


class RunStatus(str, enum.Enum):
    """How a finished run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A recorded error: the exception's class name, its message and, for Python nodes, the
    formatted traceback. ``node_id`` is set on a run's error (which node caused it)."""

    type: str
    message: str
    traceback: str | None = None
    node_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        """Build from the core's ``{"type", "message", "traceback"?, "node_id"?}`` dict."""
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            node_id=data.get("node_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``traceback`` and ``node_id`` only when set."""
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.node_id is not None:
            out["node_id"] = self.node_id
        return out

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class NodeResult:
    """The outcome of one node: ``output`` is set when it succeeded, ``error`` when it failed
    (or was cancelled with a reason); times are unix timestamps, ``None`` if it never ran.
    ``skip_reason`` says why a skipped node was skipped: ``upstream_failed`` (its trigger
    rule can no longer be met because of failures upstream), ``condition`` (its ``when`` was
    false) or ``trigger_rule`` (its rule can no longer be met because of skips upstream).
    A mapped node's ``output`` is the list of its items' outputs. ``cached_from`` is set
    for a cached node found in the cache (it was not executed, ``attempts`` is 0): the id of
    the run whose output it took."""

    node_id: str
    status: NodeStatus
    output: dict[str, Any] | list[Any] | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    skip_reason: str | None = None
    cached_from: str | None = None
    #: A cached node's key (set when the run had a cache to look it up in).
    cache_key: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from first start to finish, or ``None`` if the node never ran."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_dict(cls, node_id: str, data: Mapping[str, Any]) -> NodeResult:
        """Build from one entry of the core's ``nodes`` dict."""
        error = data.get("error")
        return cls(
            node_id=node_id,
            status=NodeStatus(data["status"]),
            output=data.get("output"),
            error=ErrorInfo.from_dict(error) if error is not None else None,
            attempts=int(data.get("attempts", 0)),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            skip_reason=data.get("skip_reason"),
            cached_from=data.get("cached_from"),
            cache_key=data.get("cache_key"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the core's shape (without ``node_id``, which is the key);
        ``skip_reason`` and ``cached_from`` only when set."""
        return _node_dict(
            self.status.value,
            self.output,
            self.error.to_dict() if self.error is not None else None,
            self.attempts,
            self.started_at,
            self.finished_at,
            self.skip_reason,
            self.cached_from,
        )


def _node_dict(
    status: str,
    output: Any,
    error: dict[str, Any] | None,
    attempts: int,
    started_at: float | None,
    finished_at: float | None,
    skip_reason: str | None,
    cached_from: str | None,
) -> dict[str, Any]:
    """:meth:`NodeResult.to_dict` of these fields (also built from the core's entries)."""
    out = {
        "status": status,
        "output": output,
        "error": error,
        "attempts": attempts,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    if skip_reason is not None:
        out["skip_reason"] = skip_reason
    if cached_from is not None:
        out["cached_from"] = cached_from
    return out


@dataclass(frozen=True, slots=True)
class RunResult:
    """The result of a finished run.

    ``outputs`` maps each succeeded node's id to its output; ``node_results`` has every node.
    ``error`` says why a run failed or was cancelled (``node_id`` names the node at fault, when
    one is). ``duration`` is in seconds.
    """

    run_id: str
    status: RunStatus
    outputs: Mapping[str, Any] = field(default_factory=dict)
    node_results: Mapping[str, NodeResult] = field(default_factory=dict)
    error: ErrorInfo | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.status is RunStatus.SUCCEEDED

    def raise_for_status(self) -> RunResult:
        """Raise :class:`RunFailed` (:class:`RunTimeout` when the run timed out) or
        :class:`RunCancelled` unless the run succeeded; return ``self`` so it chains
        (``dag.run(...).raise_for_status().outputs``)."""
        if self.status is RunStatus.SUCCEEDED:
            return self
        reason = f": {self.error}" if self.error is not None else ""
        where = f" (node {self.error.node_id!r})" if self.error and self.error.node_id else ""
        if self.status is RunStatus.CANCELLED:
            raise RunCancelled(f"run {self.run_id} was cancelled{where}{reason}", result=self)
        if self.error is not None and self.error.type == "RunTimeout":
            raise RunTimeout(f"run {self.run_id} timed out{reason}", result=self)
        raise RunFailed(f"run {self.run_id} failed{where}{reason}", result=self)

    def nodes_with_status(self, status: NodeStatus | str) -> list[str]:
        """Ids of the nodes that ended in ``status``, in the core's node order."""
        wanted = NodeStatus(status)
        return [nid for nid, res in self.node_results.items() if res.status is wanted]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        """Build from ``RunRef.result()`` (or from :meth:`to_dict`'s output)."""
        raw: Mapping[str, Mapping[str, Any]] = data.get("nodes", {})
        outputs: Mapping[str, Any]
        if "outputs" in data:
            outputs = LazyMapping(data["outputs"], _same)
        else:
            outputs = {
                nid: entry["output"] if entry.get("output") is not None else {}
                for nid, entry in raw.items()
                if entry["status"] == "succeeded"
            }
        error = data.get("error")
        return cls(
            run_id=str(data["run_id"]),
            status=RunStatus(data["status"]),
            outputs=outputs,
            node_results=LazyMapping(raw, NodeResult.from_dict),
            error=ErrorInfo.from_dict(error) if error is not None else None,
            duration=float(data.get("duration", 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``run_id``, ``status``, ``error``, ``duration``, ``outputs`` and
        ``nodes`` (id -> node result dict). :meth:`from_dict` reads it back."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "error": self.error.to_dict() if self.error is not None else None,
            "duration": self.duration,
            "outputs": _plain(self.outputs),
            "nodes": _node_dicts(self.node_results),
        }


def _plain(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``dict(outputs)``; of a lazy mapping that keeps the core's values as they are, its
    entries at once (the same objects) rather than key by key."""
    if isinstance(outputs, LazyMapping) and outputs._convert is _same:
        return dict(outputs._raw)
    return dict(outputs)


#: The node statuses' values, for :func:`_node_dicts`' check of the core's entries.
_NODE_STATUSES: Final = frozenset(status.value for status in NodeStatus)


def _node_dicts(results: Mapping[str, NodeResult]) -> dict[str, dict[str, Any]]:
    """``{id: result.to_dict()}`` of every node. Nodes not read yet from a run's lazy
    results (:class:`LazyMapping` over the core's entries) are taken from the entries as
    they are, the same dicts without building a :class:`NodeResult` only to turn it back:
    settling a small run spent more on that than on the rest of its bookkeeping. An entry
    with an error (normalised by :class:`ErrorInfo`) or an unknown status is built."""
    if not isinstance(results, LazyMapping) or results._convert is not NodeResult.from_dict:
        return {nid: res.to_dict() for nid, res in results.items()}
    built = results._built
    out: dict[str, dict[str, Any]] = {}
    for nid, entry in results._raw.items():
        done = built.get(nid)
        if done is None and entry.get("error") is None and entry["status"] in _NODE_STATUSES:
            out[nid] = _node_dict(
                entry["status"],
                entry.get("output"),
                None,
                int(entry.get("attempts", 0)),
                entry.get("started_at"),
                entry.get("finished_at"),
                entry.get("skip_reason"),
                entry.get("cached_from"),
            )
        else:
            out[nid] = (done if done is not None else results[nid]).to_dict()
    return out


def _same(_key: str, value: Any) -> Any:
    return value


class LazyMapping(Mapping[str, _V]):
    """A mapping whose values are built from the core's lazy mappings on first access and
    kept: a run of 10,000 nodes is usually read for a few outputs or results, and converting
    every one up front would cost more than the run."""

    __slots__ = ("_built", "_convert", "_raw")

    def __init__(self, raw: Mapping[str, Any], convert: Callable[[str, Any], _V]) -> None:
        self._raw = raw
        self._convert = convert
        self._built: dict[str, _V] = {}

    def __getitem__(self, key: str) -> _V:
        try:
            return self._built[key]
        except KeyError:
            value = self._built[key] = self._convert(key, self._raw[key])
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle as a plain dict: the core's mappings are an implementation detail.
        return (dict, (dict(self.items()),))


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """Something that happened during a run, in order of ``seq``.

    ``kind`` is one of ``run_started``, ``node_started``, ``node_succeeded``, ``node_failed``,
    ``node_retrying``, ``node_skipped``, ``node_cancelled``, ``node_log``, ``node_mapped``,
    ``node_cached``, ``run_finished``;
    ``node_id`` is ``None`` for run events; ``time`` is a unix timestamp; ``detail`` is ``None``
    or a dict (``error`` for failures, ``delay`` for retries, ``message`` for logs, ``reason``
    for ``node_skipped``: ``upstream_failed``, ``condition`` or ``trigger_rule``, ``count``
    for ``node_mapped``, ``run_id`` (the run whose output it takes) and ``key`` for
    ``node_cached``, ``status`` for ``run_finished``).
    """

    seq: int
    kind: str
    node_id: str | None
    attempt: int
    time: float
    detail: dict[str, Any] | None = None

    @classmethod
    def from_tuple(cls, raw: tuple[int, str, str | None, int, float, Any]) -> NodeEvent:
        """Build from one tuple of ``RunRef.next_events()``."""
        seq, kind, node_id, attempt, time, detail = raw
        return cls(seq, kind, node_id, attempt, time, detail)

    @property
    def error(self) -> ErrorInfo | None:
        """The error carried by a ``node_failed`` / ``node_retrying`` event, if any."""
        if self.detail is None or not isinstance(self.detail.get("error"), Mapping):
            return None
        return ErrorInfo.from_dict(self.detail["error"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "node_id": self.node_id,
            "attempt": self.attempt,
            "time": self.time,
            "detail": self.detail,
        }

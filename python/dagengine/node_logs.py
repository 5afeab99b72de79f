"""Capturing a Python node's ``logging`` records and ``print`` output to its attempt.

A :class:`NodeLogBuffer` collects the lines of one node attempt. :func:`capture` makes a buffer
current for the calling context (a :class:`contextvars.ContextVar`), so what is captured is
decided per task, not per process: two nodes running at once on different threads, or as two
asyncio tasks, each see their own buffer. Threads a node starts see its buffer when they run in
a copy of its context (``contextvars.copy_context().run``, or
:meth:`asyncio.loop.run_in_executor` / :func:`asyncio.to_thread`, which copy it); a plain
:class:`threading.Thread` starts with an empty context and so writes where it always did.

Two hooks, installed once by :func:`install` and free when no buffer is current:

* ``logging``: the log record factory is wrapped, so every record a logger creates (one that
  passed the logger's level; configure levels as usual) is also appended to the current buffer
  with its level name. Handlers are untouched: records still reach them as before.
* ``print``: ``sys.stdout`` and ``sys.stderr`` are replaced by proxies that send text written
  under a current buffer to it (line by line; stdout as level ``INFO``, stderr as ``ERROR``) and
  everything else to the original streams.

A buffer is bounded (:data:`DEFAULT_LIMIT` bytes of message text, 1 MiB): the first line that
would go past the bound is replaced by one ``WARNING`` line saying the log was truncated, and
later lines are dropped.

Where the lines go: a local run's :class:`NodeLogQueue` merges them into the run's events
(a running attempt's as it goes, each attempt's before its end); an engine process's
:class:`NodeLogStore` sends a running attempt's lines to the core in batches (``NODE_LOG``
events, live), and keeps the rest until the core takes them before the attempt's end.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Final, Protocol, TypeVar

__all__ = [
    "DEFAULT_LIMIT",
    "SEND_INTERVAL",
    "SEND_LINES",
    "TRUNCATED_PREFIX",
    "NodeLogBuffer",
    "NodeLogLine",
    "NodeLogQueue",
    "NodeLogStore",
    "capture",
    "captured",
    "current_buffer",
    "install",
]

DEFAULT_LIMIT: Final = 1024 * 1024
"""The bound on one node attempt's captured log text, in bytes (UTF-8)."""

TRUNCATED_PREFIX: Final = "[dagengine] log truncated"
"""How the marker line that ends a truncated log begins."""

SEND_INTERVAL: Final = 0.1
"""How often, in seconds, an engine process sends its running attempts' new lines."""

SEND_LINES: Final = 256
"""New lines of one running attempt that make an engine process send them at once."""

_T = TypeVar("_T")

_current: contextvars.ContextVar[NodeLogBuffer | None] = contextvars.ContextVar(
    "dagengine_node_log", default=None
)


@dataclass(frozen=True, slots=True)
class NodeLogLine:
    """One captured line: ``level`` is a :mod:`logging` level name (``INFO`` for ``print`` to
    stdout, ``ERROR`` for stderr), ``time`` seconds since the epoch, ``source`` ``"logging"``,
    ``"stdout"`` or ``"stderr"``."""

    level: str
    message: str
    time: float
    source: str


class NodeLogBuffer:
    """The captured lines of one node attempt, bounded to ``limit`` bytes of message text.

    Safe to write from several threads at once (a node's context-copying threads).
    """

    __slots__ = ("_lock", "_partial", "_sent", "limit", "lines", "size", "truncated")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"node log limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.lines: list[NodeLogLine] = []
        self.size = 0
        self.truncated = False
        self._partial: dict[str, str] = {}
        self._sent = 0
        self._lock = threading.Lock()

    def take_new(self) -> list[NodeLogLine]:
        """The lines added since the last call (all of them the first time)."""
        with self._lock:
            new = self.lines[self._sent :]
            self._sent = len(self.lines)
        return new

    def add(self, level: str, message: str, source: str = "logging") -> None:
        """Append one line (or, past the bound, the truncation marker once, then nothing)."""
        with self._lock:
            self._add(level, message, source)

    def _add(self, level: str, message: str, source: str) -> None:
        if self.truncated:
            return
        n = len(message.encode("utf-8", "replace"))
        if self.size + n > self.limit:
            self.truncated = True
            self.lines.append(
                NodeLogLine(
                    "WARNING",
                    f"{TRUNCATED_PREFIX}: this attempt's log passed {self.limit} bytes; "
                    "later lines were dropped",
                    time.time(),
                    "dagengine",
                )
            )
            return
        self.size += n
        self.lines.append(NodeLogLine(level, message, time.time(), source))

    def write(self, source: str, text: str) -> None:
        """Take ``text`` written to stream ``source`` (``stdout``/``stderr``): complete lines
        become log lines; a trailing partial line waits for the rest (or :meth:`flush`)."""
        level = "ERROR" if source == "stderr" else "INFO"
        with self._lock:
            pending = self._partial.pop(source, "") + text
            *complete, rest = pending.split("\n")
            for line in complete:
                self._add(level, line, source)
            if rest:
                self._partial[source] = rest

    def flush(self) -> None:
        """Turn the partial lines left by :meth:`write` into lines."""
        if not self._partial:
            return
        with self._lock:
            partial, self._partial = self._partial, {}
            for source, rest in partial.items():
                self._add("ERROR" if source == "stderr" else "INFO", rest, source)


def current_buffer() -> NodeLogBuffer | None:
    """The buffer capturing in this context, if any."""
    return _current.get()


class capture:
    """Make ``buffer`` current for this context until the block ends (then flush it); with
    ``span`` (a context manager: the attempt's trace span, :func:`dagengine.tracing.node_span`),
    enter that too, inside the capture.

    A class rather than a generator context manager: it is entered once per node attempt,
    and this costs a fraction of ``contextlib.contextmanager``'s overhead (and a span costs
    nothing when there is none).
    """

    __slots__ = ("_buffer", "_span", "_token")

    def __init__(
        self, buffer: NodeLogBuffer, span: AbstractContextManager[object] | None = None
    ) -> None:
        self._buffer = buffer
        self._span = span
        self._token: contextvars.Token[NodeLogBuffer | None] | None = None

    def __enter__(self) -> NodeLogBuffer:
        if not _hooks_in_place():
            install()
        self._token = _current.set(self._buffer)
        if self._span is not None:
            self._span.__enter__()
        return self._buffer

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._span is not None:
                self._span.__exit__(kind, value, traceback)
        finally:
            token, self._token = self._token, None
            if token is not None:
                _current.reset(token)
            self._buffer.flush()


async def captured(awaitable: Awaitable[_T], buffer: NodeLogBuffer) -> _T:
    """Await ``awaitable`` with ``buffer`` current: for a coroutine run as a task of another
    thread's loop, whose context is not the caller's."""
    with capture(buffer):
        return await awaitable


class _StreamProxy:
    """Stands for ``sys.stdout``/``sys.stderr``: text written under a current buffer goes to
    it, other text to the original stream; every other attribute is the original's."""

    def __init__(self, source: str, original: IO[str]) -> None:
        self._source = source
        self._original = original

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is None:
            return self._original.write(text)
        buffer.write(self._source, text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_install_lock = threading.Lock()
_installed_factory: Callable[..., logging.LogRecord] | None = None


def _format_record(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception as exc:  # a bad format string must not fail the node that logged it
        message = f"{record.msg!r} (unformattable with args {record.args!r}: {exc})"
    if record.exc_info and record.exc_info[0] is not None:
        message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
    return message


def _hooks_in_place() -> bool:
    return (
        type(sys.stdout) is _StreamProxy
        and type(sys.stderr) is _StreamProxy
        and logging.getLogRecordFactory() is _installed_factory
    )


def install() -> None:
    """Install the ``logging`` and stream hooks (idempotent; :func:`capture` calls it).

    If something later replaces ``sys.stdout``/``sys.stderr`` or the record factory, the hooks
    are put back in front of the replacement on the next call.
    """
    global _installed_factory
    with _install_lock:
        for source in ("stdout", "stderr"):
            stream = getattr(sys, source)
            if not isinstance(stream, _StreamProxy):
                setattr(sys, source, _StreamProxy(source, stream))
        if logging.getLogRecordFactory() is not _installed_factory:
            inner = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = inner(*args, **kwargs)
                buffer = _current.get()
                if buffer is not None:
                    buffer.add(record.levelname, _format_record(record))
                return record

            _installed_factory = factory
            logging.setLogRecordFactory(factory)


#: Node event kinds that end an attempt: its captured lines are delivered just before them.
_ATTEMPT_ENDS: Final = frozenset(
    {"node_succeeded", "node_failed", "node_retrying", "node_cancelled"}
)

_RawEvent = tuple[int, str, str | None, int, float, Any]


class _LiveBuffer(NodeLogBuffer):
    """A buffer of a :class:`NodeLogQueue`'s attempt: on its first line it tells the queue,
    which from then on takes its new lines each time it merges (so a running node's lines
    are seen while it runs; an attempt that logs nothing costs the queue nothing)."""

    __slots__ = ("_attempt", "_node_id", "_queue")

    def __init__(self, queue: NodeLogQueue, node_id: str, attempt: int) -> None:
        super().__init__()
        self._queue = queue
        self._node_id = node_id
        self._attempt = attempt

    def _add(self, level: str, message: str, source: str) -> None:
        if not self.lines:
            self._queue._watch(self._node_id, self._attempt, self)
        super()._add(level, message, source)


class NodeLogQueue:
    """The captured lines of one local run's Python node attempts, waiting to be merged into
    its event stream as ``node_log`` events (detail ``{"level", "message"}``; ``seq`` 0: they
    are not the core's events).

    The trampoline makes each attempt's buffer with :meth:`new_buffer` and hands it back with
    :meth:`done` when the attempt returns, before the core hears of its end. :meth:`merge`
    puts a finished attempt's lines right before the event that ends it, and a running
    attempt's new lines after the batch: a reader polling the run sees them live.
    """

    __slots__ = ("_live", "_lock", "_waiting")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, int], list[_RawEvent]] = {}
        self._live: dict[tuple[str, int], NodeLogBuffer] = {}

    def new_buffer(self, node_id: str, attempt: int, sink: object = None) -> NodeLogBuffer:
        """The buffer to capture attempt ``attempt`` of ``node_id`` into (``sink`` is for an
        engine's :class:`NodeLogStore`: a local run's reader pulls the lines itself)."""
        return _LiveBuffer(self, node_id, attempt)

    def _watch(self, node_id: str, attempt: int, buffer: NodeLogBuffer) -> None:
        with self._lock:
            self._live[(node_id, attempt)] = buffer

    def done(self, buffer: NodeLogBuffer, run_id: str, node_id: str, attempt: int) -> None:
        """The attempt returned: its lines not merged yet wait for its end event."""
        # The buffer's lock is never taken under the queue's by a thread that may hold it:
        # a buffer takes the queue's lock (under its own) only for its first line.
        lines = buffer.take_new()
        with self._lock:
            self._live.pop((node_id, attempt), None)
            self._add((node_id, attempt), lines)

    def _add(self, key: tuple[str, int], lines: list[NodeLogLine]) -> None:
        if not lines:
            return
        node_id, attempt = key
        self._waiting.setdefault(key, []).extend(
            (
                0,
                "node_log",
                node_id,
                attempt,
                line.time,
                {"level": line.level, "message": line.message},
            )
            for line in lines
        )

    def merge(self, batch: list[_RawEvent]) -> list[_RawEvent]:
        """``batch`` with the waiting lines of every attempt it ends put before its end, then
        the new lines of attempts still running."""
        if not self._waiting and not self._live:
            return batch
        out: list[_RawEvent] = []
        with self._lock:
            for raw in batch:
                if raw[1] in _ATTEMPT_ENDS and raw[2] is not None:
                    out.extend(self._waiting.pop((raw[2], raw[3]), ()))
                out.append(raw)
            for key, buffer in self._live.items():
                self._add(key, buffer.take_new())
                out.extend(self._waiting.pop(key, ()))
        return out

    def rest(self) -> list[_RawEvent]:
        """Lines no end event claimed (an attempt that outlived its timeout), oldest first."""
        with self._lock:
            for key, buffer in self._live.items():
                self._add(key, buffer.take_new())
            rest = [e for events in self._waiting.values() for e in events]
            self._waiting.clear()
        return sorted(rest, key=lambda e: e[4])


class _Sink(Protocol):
    """Where an engine attempt's lines go while it runs (the core's ``CancelToken``)."""

    def send_logs(self, lines: list[tuple[str, str]]) -> bool: ...


class _StreamedBuffer(NodeLogBuffer):
    """A buffer of a :class:`NodeLogStore`'s attempt: on its first line it registers with the
    store, whose sender thread then hands its new lines to the attempt's sink in batches, so
    the orchestrator sees a running node's lines."""

    __slots__ = ("_closed", "_send_lock", "_sink", "_store")

    def __init__(self, store: NodeLogStore, sink: _Sink | None) -> None:
        super().__init__()
        self._store = store
        self._sink = sink
        self._closed = False
        # Held while lines are taken and sent, and by done(): no batch is sent after the
        # attempt's remaining lines were handed over, so every line precedes the attempt's end.
        self._send_lock = threading.Lock()

    def _add(self, level: str, message: str, source: str) -> None:
        first = not self.lines
        super()._add(level, message, source)
        if self._sink is None:
            return
        if first:
            self._store._watch(self)
        elif len(self.lines) - self._sent == SEND_LINES:  # (once per batch: Event.set locks)
            self._store._wake.set()

    def send(self) -> None:
        """Send the lines added since the last batch (none once the attempt returned)."""
        with self._send_lock:
            if self._closed or self._sink is None:
                return
            lines = self.take_new()
            if lines:
                self._sink.send_logs([(line.level, line.message) for line in lines])

    def close(self) -> list[NodeLogLine]:
        """The attempt returned: the lines no batch took; no batch is sent after this."""
        with self._send_lock:
            self._closed = True
            return self.take_new()


class NodeLogStore:
    """The captured lines of an engine process's Python node attempts.

    While an attempt runs, a sender thread hands its new lines to the attempt's sink (the
    core's ``CancelToken.send_logs``: ``NODE_LOG`` events at once) every
    :data:`SEND_INTERVAL` seconds, or sooner once :data:`SEND_LINES` are waiting. When the
    attempt returns, the lines not sent yet wait, by run, node and attempt, until the core
    takes them (:meth:`take`) to send them before the attempt's end.
    """

    __slots__ = ("_live", "_lock", "_sender", "_waiting", "_wake")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str, int], list[NodeLogLine]] = {}
        self._live: set[_StreamedBuffer] = set()
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None

    def new_buffer(self, node_id: str, attempt: int, sink: _Sink | None = None) -> NodeLogBuffer:
        """The buffer to capture an attempt into; with ``sink``, its lines are sent while it
        runs."""
        return _StreamedBuffer(self, sink)

    def _watch(self, buffer: _StreamedBuffer) -> None:
        with self._lock:
            self._live.add(buffer)
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_loop, name="dagengine-node-logs", daemon=True
                )
                self._sender.start()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(SEND_INTERVAL)
            self._wake.clear()
            with self._lock:
                live = list(self._live)
                if not live:
                    self._sender = None
                    return
            for buffer in live:
                buffer.send()

    def done(self, buffer: NodeLogBuffer, run_id: str, node_id: str, attempt: int) -> None:
        """The attempt returned: keep its lines not sent yet for :meth:`take`."""
        if isinstance(buffer, _StreamedBuffer):
            lines = buffer.close()
            with self._lock:
                self._live.discard(buffer)
        else:
            lines = buffer.take_new()
        if lines:
            with self._lock:
                self._waiting.setdefault((run_id, node_id, attempt), []).extend(lines)

    def take(self, run_id: str, node_id: str, attempt: int) -> list[tuple[str, str]]:
        """The attempt's ``(level, message)`` pairs not sent yet, removed from the store."""
        if not self._waiting:
            return []
        with self._lock:
            lines = self._waiting.pop((run_id, node_id, attempt), ())
        return [(line.level, line.message) for line in lines]

"""Process logging for ``dagengine serve`` and ``dagengine engine``: human-readable text by
default, or one JSON object a line (``--log-format json``) for log pipelines.

Records carry the ids they are about: a ``run_id``, ``node_id``, ``workflow_id``,
``engine_id`` or ``trigger_id`` given as ``extra=`` to a logging call, or bound for a block
with :func:`log_context`. The JSON formatter writes each as its own key; the text formatter
appends them as ``key=value``.

``dagengine.events`` logs the orchestrator's run and node events (:class:`EventLogger`) at
DEBUG, so ``--log-level debug --log-format json`` gives a structured trail of every run
without costing anything at the default level.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from dagengine.node_logs import current_buffer

__all__ = [
    "CONTEXT_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "EventLogger",
    "JsonFormatter",
    "TextFormatter",
    "add_logging_arguments",
    "configure_logging",
    "is_configured",
    "log_context",
]

#: The ids a record may carry, in the order they are printed.
CONTEXT_KEYS = ("run_id", "workflow_id", "node_id", "attempt", "engine_id", "trigger_id")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "dagengine_log_context", default=None
)
_configured: list[logging.Handler] = []
_lock = threading.Lock()


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Bind ids (``run_id=...``, ``node_id=...``) to every record logged in this block, on
    this thread or task (a :mod:`contextvars` variable)."""
    unknown = set(ids) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"log_context: unknown keys {sorted(unknown)}; known: {CONTEXT_KEYS}")
    merged = dict(_context.get() or {})
    merged.update({k: v for k, v in ids.items() if v is not None})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    bound = _context.get()
    out: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        value = record.__dict__.get(key)
        if value is None and bound is not None:
            value = bound.get(key)
        if value is not None:
            out[key] = value
    return out


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ms), ``level``, ``logger``, ``msg``, the ids the
    record carries, and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_ids(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        # default=str: an id or message argument of any type must not lose the line.
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-12-06T14:00:00.123Z INFO dagengine.serve: message run_id=... node_id=...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        ids = _ids(record)
        if ids:
            line += " " + " ".join(f"{k}={v}" for k, v in ids.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class _ProcessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The process's log handler. Records logged by a node during its attempt are that
    node's log (captured by :mod:`dagengine.node_logs` and stored with the run), so they are
    not written here a second time."""

    def emit(self, record: logging.LogRecord) -> None:
        if current_buffer() is not None:
            return
        super().emit(record)


def _choice(value: str | None, env: str, choices: tuple[str, ...], default: str) -> str:
    text = value if value is not None else os.environ.get(env, "").strip() or default
    text = text.lower()
    if text not in choices:
        source = "its value" if value is not None else env
        raise ValueError(f"log {source} {text!r}: expected one of {', '.join(choices)}")
    return text


def configure_logging(
    log_format: str | None = None, level: str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send every ``logging`` record of the process at ``level`` and above to ``stream``
    (stderr) in ``log_format``. ``None`` reads ``DAGENGINE_LOG_FORMAT`` / ``DAGENGINE_LOG_LEVEL``
    (defaults ``text`` / ``info``). Calling it again replaces the handler it installed.
    Raises ``ValueError`` naming a bad format or level."""
    fmt = _choice(log_format, "DAGENGINE_LOG_FORMAT", LOG_FORMATS, "text")
    lvl = _choice(level, "DAGENGINE_LOG_LEVEL", LOG_LEVELS, "info")
    # The process's real stderr, not whatever object sys.stderr is now: node_logs puts a proxy
    # there, and a test harness a capture that is closed when its test ends.
    target = stream if stream is not None else (sys.__stderr__ or sys.stderr)
    handler = _ProcessHandler(target)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    with _lock:
        for old in _configured:
            root.removeHandler(old)
        _configured[:] = [handler]
        root.addHandler(handler)
        root.setLevel(lvl.upper())
    # Third-party chatter at INFO (grpc, urllib3 retries) stays at WARNING unless debugging.
    noisy = logging.WARNING if lvl != "debug" else logging.DEBUG
    for name in ("urllib3", "kubernetes", "asyncio", "grpc"):
        logging.getLogger(name).setLevel(noisy)
    return handler


def is_configured() -> bool:
    """Whether :func:`configure_logging` installed its handler (then uvicorn is told to
    leave logging alone and its records go through ours)."""
    return bool(_configured)


# Node output lines are served by the logs API; echoing them into the process log would
# double every line a node prints.
_NOT_LOGGED = frozenset({"node.log"})


class EventLogger:
    """Logs an orchestrator's events on ``dagengine.events`` at DEBUG, each with its ids:
    run events, node events (with the node and attempt), engine and trigger events. Attach it
    only when that logger is enabled for DEBUG (``attach`` checks)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("dagengine.events")
        self._follower: Any = None

    def attach(self, orchestrator: Any) -> bool:
        """Follow ``orchestrator.events`` on a thread; ``False`` (and nothing started) when
        the logger would drop DEBUG records anyway."""
        if not self.log.isEnabledFor(logging.DEBUG):
            return False
        self._follower = orchestrator.events.follow(self.emit, name="dagengine-eventlog")
        return True

    def emit(self, event: Any) -> None:
        """Log one event."""
        if event.type in _NOT_LOGGED:
            return
        data = event.data if isinstance(event.data, Mapping) else {}
        extra = {
            "run_id": event.run_id,
            "workflow_id": event.workflow_id,
            "node_id": event.node_id,
            "attempt": data.get("attempt"),
            "engine_id": event.engine_id,
            "trigger_id": data.get("trigger_id"),
        }
        extra = {k: v for k, v in extra.items() if v is not None}
        detail = data.get("error") or data.get("reason") or ""
        message = event.type if not detail else f"{event.type}: {detail}"
        self.log.debug(message, extra=extra)

    def detach(self) -> None:
        """Stop following (the subscription ends; the thread exits)."""
        if self._follower is not None:
            self._follower.close()


def add_logging_arguments(parser: Any) -> None:
    """``--log-format`` and ``--log-level`` on an ``argparse`` (sub)parser."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="process log format: text (default) or json, one object a line "
        "(env DAGENGINE_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="lowest level logged (default info; debug adds every run and node event) "
        "(env DAGENGINE_LOG_LEVEL)",
    )

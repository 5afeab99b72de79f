"""The exception hierarchy of dagengine, rooted at :class:`DagEngineError`.

Every class is constructed as ``Class(message, **attrs)``: the message is positional and every
structured attribute is keyword-only and optional (``None`` by default). The native core relies
on that form to raise these classes by name, and :func:`error_from_info` relies on it to turn a
recorded node error back into an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagengine.results import ErrorInfo, RunResult

__all__ = [
    "ERROR_TYPES",
    "ConfigError",
    "CycleError",
    "DagEngineError",
    "DependentsConflict",
    "DiscoveryError",
    "DuplicateNodeError",
    "EngineBusy",
    "EngineError",
    "EngineRuntimeError",
    "EngineStartError",
    "EngineUnavailable",
    "ImportPathError",
    "InputError",
    "InvalidRequest",
    "LuaBadReturn",
    "LuaConversionError",
    "LuaError",
    "LuaInstructionLimit",
    "LuaMemoryLimit",
    "LuaRuntimeError",
    "LuaSyntaxError",
    "LuaTimeout",
    "MessageTooLarge",
    "NoMatchingVersion",
    "NodeError",
    "NodeTimeout",
    "QueueFull",
    "RunCancelled",
    "RunFailed",
    "RunNotFound",
    "RunTimeout",
    "SelfDependencyError",
    "SpecError",
    "StoreError",
    "SubWorkflowError",
    "TriggerError",
    "UnknownDependencyError",
    "ValidationError",
    "VersionConflict",
    "VersionNotFound",
    "WorkflowNotFound",
    "error_from_info",
]


class DagEngineError(Exception):
    """Base class of every error dagengine raises on purpose."""

    def __init__(self, message: str = "", /) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- validation: the workflow is wrong, nothing has run -------------------------------------


class ValidationError(DagEngineError, ValueError):
    """The workflow definition is invalid; raised before anything runs."""


class CycleError(ValidationError):
    """The graph has a cycle. ``cycle`` is its path, first id repeated last
    (``["a", "b", "c", "a"]`` for ``a -> b -> c -> a``)."""

    def __init__(self, message: str = "", /, *, cycle: list[str] | None = None) -> None:
        super().__init__(message)
        self.cycle = cycle


class UnknownDependencyError(ValidationError):
    """Node ``node_id`` depends on ``dependency``, which is not a node of the graph."""

    def __init__(
        self, message: str = "", /, *, node_id: str | None = None, dependency: str | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.dependency = dependency


class DuplicateNodeError(ValidationError):
    """Two nodes share the id ``node_id``."""

    def __init__(self, message: str = "", /, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class SelfDependencyError(ValidationError):
    """Node ``node_id`` lists itself as a dependency."""

    def __init__(self, message: str = "", /, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class SpecError(ValidationError):
    """A field of a workflow spec (or of a ``Node``/``DAG`` argument) is invalid.

    ``path`` locates the field, e.g. ``nodes[2].timeout``; ``None`` for the whole document.
    """

    def __init__(self, message: str = "", /, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InputError(ValidationError):
    """A run's inputs do not match the workflow's ``inputs:`` schema. ``problems`` lists
    every problem as ``{"path": "inputs.factor", "message": "expected integer, got \"x\""}``;
    the message joins them (``inputs.factor: expected integer, got "x"``)."""

    def __init__(
        self, message: str = "", /, *, problems: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else []

    @classmethod
    def from_problems(cls, problems: list[tuple[str, str]]) -> InputError:
        """The error of these ``(path, message)`` problems."""
        listed = [{"path": path, "message": message} for path, message in problems]
        return cls("; ".join(f"{path}: {message}" for path, message in problems), problems=listed)


class ImportPathError(ValidationError):
    """The ``python:`` import path ``path`` of node ``node_id`` does not resolve."""

    def __init__(
        self, message: str = "", /, *, node_id: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.path = path


# --- Lua --------------------------------------------------------------------------------------


class LuaError(DagEngineError):
    """A Lua script failed. ``node_id`` and ``line`` are set when known."""

    def __init__(
        self, message: str = "", /, *, node_id: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.line = line


class LuaSyntaxError(LuaError, ValidationError):
    """A Lua script does not compile; reported when the workflow is loaded."""


class LuaRuntimeError(LuaError):
    """A Lua script raised an error while running."""


class LuaInstructionLimit(LuaError):
    """A Lua script executed more instructions than its limit allows."""


class LuaMemoryLimit(LuaError):
    """A Lua script allocated more memory than its limit allows."""


class LuaTimeout(LuaError):
    """A Lua script ran past its node's wall-clock timeout."""


class LuaBadReturn(LuaError):
    """A Lua script returned something other than a table or nothing."""


class LuaConversionError(LuaError):
    """A value could not be converted between Lua and the engine's JSON-like values."""


# --- runs -------------------------------------------------------------------------------------


class NodeError(DagEngineError):
    """A node failed: ``error_type`` is the original exception's class name (``"ValueError"``,
    ``"LuaTimeout"``), ``traceback`` its formatted traceback when there is one."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        node_id: str | None = None,
        error_type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.error_type = error_type
        self.traceback = traceback


class NodeTimeout(NodeError):
    """A node ran past its ``timeout`` (seconds)."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        node_id: str | None = None,
        error_type: str | None = None,
        traceback: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message, node_id=node_id, error_type=error_type, traceback=traceback)
        self.timeout = timeout


class SubWorkflowError(DagEngineError):
    """A sub-workflow node could not run its child workflow (e.g. no orchestrator to resolve
    the reference); ``node_id`` is the node, ``reference`` is ``child@range``."""

    def __init__(
        self, message: str = "", /, *, node_id: str | None = None, reference: str | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.reference = reference


class RunFailed(DagEngineError):
    """A run ended ``failed``; ``result`` is its :class:`~dagengine.RunResult`."""

    def __init__(self, message: str = "", /, *, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class RunTimeout(RunFailed):
    """A run ran past its ``timeout``: the rest was cancelled and the run ended ``failed``."""


class RunCancelled(DagEngineError):
    """A run was cancelled; ``result`` is its :class:`~dagengine.RunResult`."""

    def __init__(self, message: str = "", /, *, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class EngineRuntimeError(DagEngineError):
    """The engine's runtime cannot run here: it failed to start, or the process was forked
    after it started (start engine processes with ``subprocess``/spawn instead)."""


# --- engines (gRPC) ---------------------------------------------------------------------------


class EngineStartError(DagEngineError):
    """An engine server could not start: its address cannot be bound, or its TLS material
    (certificate, key, client CA) is invalid."""


class EngineError(DagEngineError):
    """A call to an engine failed. ``code`` is the gRPC status code name (``"UNAVAILABLE"``)
    when there is one, ``address`` the engine's address."""

    def __init__(
        self, message: str = "", /, *, code: str | None = None, address: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.address = address


class EngineUnavailable(EngineError):
    """The engine cannot be reached, refused the connection or the TLS handshake, is draining,
    or went away in the middle of a run (its stream ended without the run's result)."""


class EngineBusy(EngineError):
    """The engine is at capacity and refused the run; try another engine or later."""


class InvalidRequest(EngineError, ValueError):
    """The engine refused the request as invalid (bad spec, unknown import path, Lua syntax
    error, inputs not a JSON object); the message names the field or node."""


class MessageTooLarge(EngineError):
    """A request or response exceeded the gRPC message size limit of the client or engine."""


# --- orchestrator ----------------------------------------------------------------------------


class DiscoveryError(DagEngineError):
    """Engine discovery cannot work as configured: e.g. the Kubernetes client configuration
    cannot be loaded, or a self-registration is invalid. ``engine_id`` is set when one engine
    is at fault."""

    def __init__(self, message: str = "", /, *, engine_id: str | None = None) -> None:
        super().__init__(message)
        self.engine_id = engine_id


class ConfigError(DagEngineError, ValueError):
    """An environment variable (or configuration value) is invalid: ``variable`` names it and
    ``value`` is what was given."""

    def __init__(
        self, message: str = "", /, *, variable: str | None = None, value: str | None = None
    ) -> None:
        super().__init__(message)
        self.variable = variable
        self.value = value


class StoreError(DagEngineError):
    """The orchestrator's store cannot be opened or used (unreadable file, a schema written by
    a newer dagengine, a run in a state that does not allow the operation)."""


class RunNotFound(DagEngineError, LookupError):
    """No run has the id ``run_id``."""

    def __init__(self, message: str = "", /, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class WorkflowNotFound(DagEngineError, LookupError):
    """No workflow is registered under ``workflow_id``."""

    def __init__(self, message: str = "", /, *, workflow_id: str | None = None) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class VersionNotFound(DagEngineError, LookupError):
    """Workflow ``workflow_id`` has no version ``version``; ``available`` lists its versions."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        workflow_id: str | None = None,
        version: str | None = None,
        available: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.version = version
        self.available = available


class NoMatchingVersion(DagEngineError, LookupError):
    """No version of ``workflow_id`` satisfies ``version_range``; ``available`` lists the
    versions there are."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        workflow_id: str | None = None,
        version_range: str | None = None,
        available: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.version_range = version_range
        self.available = available


class VersionConflict(DagEngineError):
    """A registration was refused: ``version`` of ``workflow_id`` is not newer than ``latest``,
    the latest version of its major line (or that version exists with another definition)."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        workflow_id: str | None = None,
        version: str | None = None,
        latest: str | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.version = version
        self.latest = latest


class DependentsConflict(VersionConflict):
    """A new major version was refused because workflows that depend on this one (through
    sub-workflow nodes) use a range it would leave. ``dependents`` lists them as
    ``(workflow_id, version, version_range)``."""

    def __init__(
        self,
        message: str = "",
        /,
        *,
        workflow_id: str | None = None,
        version: str | None = None,
        latest: str | None = None,
        dependents: list[tuple[str, str, str]] | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, version=version, latest=latest)
        self.dependents = dependents


class QueueFull(DagEngineError):
    """Every engine is at capacity and the queue of runs waiting for one holds ``limit`` runs
    already (``DAGENGINE_QUEUE_LIMIT``)."""

    def __init__(self, message: str = "", /, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class TriggerError(DagEngineError, ValueError):
    """A trigger cannot be built or started: a bad cron expression or time zone, an HTTP
    path that clashes with another, a port already taken, a trigger started twice.
    ``trigger_id`` names it."""

    def __init__(self, message: str = "", /, *, trigger_id: str | None = None) -> None:
        super().__init__(message)
        self.trigger_id = trigger_id


#: Every exception class of this module, by class name, so a recorded error
#: (``{"type": "LuaTimeout", ...}``) can be turned back into an exception.
ERROR_TYPES: dict[str, type[DagEngineError]] = {
    cls.__name__: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, DagEngineError)
}


# Classes (besides NodeError) whose constructor takes ``node_id``.
_HAS_NODE_ID = (
    LuaError,
    SubWorkflowError,
    DuplicateNodeError,
    SelfDependencyError,
    UnknownDependencyError,
    ImportPathError,
)


def error_from_info(info: ErrorInfo, *, node_id: str | None = None) -> DagEngineError:
    """Turn a recorded error into an exception instance.

    A dagengine type (``LuaTimeout``, ``NodeTimeout``...) becomes its own class; anything else
    (a user function's ``ValueError``) becomes a :class:`NodeError` whose ``error_type`` keeps
    the original name, since the original class may not be importable here.
    """
    node = node_id if node_id is not None else info.node_id
    cls = ERROR_TYPES.get(info.type)
    kwargs: dict[str, Any] = {}
    if cls is not None and issubclass(cls, NodeError):
        kwargs = {"node_id": node, "error_type": info.type, "traceback": info.traceback}
    elif cls is not None and issubclass(cls, _HAS_NODE_ID):
        kwargs = {"node_id": node}
    elif cls is None:
        cls = NodeError
        kwargs = {"node_id": node, "error_type": info.type, "traceback": info.traceback}
    return cls(info.message, **kwargs)

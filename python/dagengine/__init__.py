"""dagengine: a DAG workflow engine whose hot path runs in a Rust core.

Build a :class:`DAG` of :class:`Node` objects (Lua, Python, no-op or sub-workflow executors),
or load one from a YAML/JSON spec with :func:`load_workflow`, then ``dag.run(inputs)``.
Run it on an engine process with :class:`EngineClient` (``dagengine engine`` serves one).
"""

from typing import TYPE_CHECKING, Any

from dagengine._core import __version__
from dagengine.authoring import DecoratedWorkflow, Ref, Task, task, workflow
from dagengine.exceptions import (
    ERROR_TYPES,
    ConfigError,
    CycleError,
    DagEngineError,
    DependentsConflict,
    DiscoveryError,
    DuplicateNodeError,
    EngineBusy,
    EngineError,
    EngineRuntimeError,
    EngineStartError,
    EngineUnavailable,
    ImportPathError,
    InputError,
    InvalidRequest,
    LuaBadReturn,
    LuaConversionError,
    LuaError,
    LuaInstructionLimit,
    LuaMemoryLimit,
    LuaRuntimeError,
    LuaSyntaxError,
    LuaTimeout,
    MessageTooLarge,
    NodeError,
    NodeTimeout,
    NoMatchingVersion,
    QueueFull,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunTimeout,
    SelfDependencyError,
    SpecError,
    StoreError,
    SubWorkflowError,
    TriggerError,
    UnknownDependencyError,
    ValidationError,
    VersionConflict,
    VersionNotFound,
    WorkflowNotFound,
)
from dagengine.results import ErrorInfo, NodeEvent, NodeResult, NodeStatus, RunResult, RunStatus
from dagengine.spec import dump_workflow, load_workflow, parse_workflow
from dagengine.workflow import (
    DAG,
    Executor,
    LocalRun,
    LuaExecutor,
    Node,
    NodeContext,
    NoopExecutor,
    PythonExecutor,
    RetryBackoff,
    SubWorkflow,
)

if TYPE_CHECKING:
    from dagengine.engine import (
        AsyncEngineClient,
        EngineClient,
        EngineEvent,
        EngineInfo,
        TLSConfig,
    )
    from dagengine.orchestrator import Config, Engine, Monitor, Orchestrator, RunHandle

# The engine client and the orchestrator pull in grpcio (~0.1 s to import): loaded on first
# use, so a script that only runs a DAG does not pay for them.
_LAZY = {
    "AsyncEngineClient": "dagengine.engine",
    "EngineClient": "dagengine.engine",
    "EngineEvent": "dagengine.engine",
    "EngineInfo": "dagengine.engine",
    "TLSConfig": "dagengine.engine",
    "Config": "dagengine.orchestrator",
    "Engine": "dagengine.orchestrator",
    "Monitor": "dagengine.orchestrator",
    "Orchestrator": "dagengine.orchestrator",
    "RunHandle": "dagengine.orchestrator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dagengine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DAG",
    "ERROR_TYPES",
    "AsyncEngineClient",
    "Config",
    "ConfigError",
    "CycleError",
    "DagEngineError",
    "DecoratedWorkflow",
    "DependentsConflict",
    "DiscoveryError",
    "DuplicateNodeError",
    "Engine",
    "EngineBusy",
    "EngineClient",
    "EngineError",
    "EngineEvent",
    "EngineInfo",
    "EngineRuntimeError",
    "EngineStartError",
    "EngineUnavailable",
    "ErrorInfo",
    "Executor",
    "ImportPathError",
    "InputError",
    "InvalidRequest",
    "LocalRun",
    "LuaBadReturn",
    "LuaConversionError",
    "LuaError",
    "LuaExecutor",
    "LuaInstructionLimit",
    "LuaMemoryLimit",
    "LuaRuntimeError",
    "LuaSyntaxError",
    "LuaTimeout",
    "MessageTooLarge",
    "Monitor",
    "NoMatchingVersion",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeEvent",
    "NodeResult",
    "NodeStatus",
    "NodeTimeout",
    "NoopExecutor",
    "Orchestrator",
    "PythonExecutor",
    "QueueFull",
    "Ref",
    "RetryBackoff",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunNotFound",
    "RunResult",
    "RunStatus",
    "RunTimeout",
    "SelfDependencyError",
    "SpecError",
    "StoreError",
    "SubWorkflow",
    "SubWorkflowError",
    "TLSConfig",
    "Task",
    "TriggerError",
    "UnknownDependencyError",
    "ValidationError",
    "VersionConflict",
    "VersionNotFound",
    "WorkflowNotFound",
    "__version__",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
    "task",
    "workflow",
]

"""dagengine: a DAG workflow engine whose hot path runs in a Rust core.

Build a :class:`DAG` of :class:`Node` objects (Lua, Python, no-op or sub-workflow executors),
or load one from a YAML/JSON spec with :func:`load_workflow`, then ``dag.run(inputs)``.
Run it on an engine process with :class:`EngineClient` (``dagengine engine`` serves one).
"""

from typing import TYPE_CHECKING, Any

from dagengine._core import __version__
from dagengine.exceptions import (
    ERROR_TYPES,
    CycleError,
    DagEngineError,
    DuplicateNodeError,
    EngineBusy,
    EngineError,
    EngineRuntimeError,
    EngineStartError,
    EngineUnavailable,
    ImportPathError,
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
    RunCancelled,
    RunFailed,
    RunTimeout,
    SelfDependencyError,
    SpecError,
    SubWorkflowError,
    UnknownDependencyError,
    ValidationError,
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

# The engine client pulls in grpcio (~0.1 s to import): loaded on first use.
_LAZY = {
    "AsyncEngineClient": "dagengine.engine",
    "EngineClient": "dagengine.engine",
    "EngineEvent": "dagengine.engine",
    "EngineInfo": "dagengine.engine",
    "TLSConfig": "dagengine.engine",
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
    "CycleError",
    "DagEngineError",
    "DuplicateNodeError",
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
    "Node",
    "NodeContext",
    "NodeError",
    "NodeEvent",
    "NodeResult",
    "NodeStatus",
    "NodeTimeout",
    "NoopExecutor",
    "PythonExecutor",
    "RetryBackoff",
    "RunCancelled",
    "RunFailed",
    "RunResult",
    "RunStatus",
    "RunTimeout",
    "SelfDependencyError",
    "SpecError",
    "SubWorkflow",
    "SubWorkflowError",
    "TLSConfig",
    "UnknownDependencyError",
    "ValidationError",
    "__version__",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
]

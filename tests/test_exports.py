"""The public names of ``dagengine``, ``dagengine.engine`` and ``dagengine.orchestrator``:
their ``__all__`` is pinned here, so a name cannot appear, vanish or be renamed by accident
(a restructure that moves code between modules keeps every name importable where it was).
Change a list here only together with the API (and its docs)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

DAGENGINE = {
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
}

ENGINE = {
    # the clients
    "AsyncEngineClient",
    "AsyncEventStream",
    "AsyncRunStream",
    "EngineClient",
    "EngineEvent",
    "EngineInfo",
    "EventStream",
    "RunStream",
    "TLSConfig",
    "PemSource",
    "DEFAULT_KEEPALIVE_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    # the Session client (Rust-driven) and what its users map its replies with
    "EngineSession",
    "open_session",
    "refusal_error",
    "session_ended_error",
    # wire conversions
    "Inputs",
    "Workflow",
    "build_run_request",
    "encode_inputs",
    "encoded_workflow_field",
    "error_info_from_proto",
    "event_from_proto",
    "result_from_proto",
    "result_json_from_proto",
    "workflow_to_proto",
    # addresses
    "join_address",
    "split_address",
    # the engine process and its calls to the orchestrator
    "PARENT_PID_ENV",
    "serve_engine",
    "ORCHESTRATOR_TOKEN_ENV",
    "REFUSAL_REASON_KEY",
    "OrchestratorSubWorkflowRunner",
    "SelfRegistrar",
    "advertise_address",
    "orchestrator_credentials_from_env",
    "subworkflow_runner_from_env",
}

ORCHESTRATOR = {
    "Config",
    "ConsistentHash",
    "Dependent",
    "Engine",
    "EngineLoad",
    "Event",
    "EventBus",
    "EventRecord",
    "EventType",
    "LeastLoaded",
    "LoadBalancer",
    "Monitor",
    "Orchestrator",
    "RoundRobin",
    "RunHandle",
    "RunInfo",
    "RunQueue",
    "RunRecord",
    "Severity",
    "Store",
    "SubWorkflowCoordinator",
    "Subscription",
    "WorkflowInfo",
    "WorkflowRegistry",
    "WorkflowVersion",
    "WorkflowVersionRecord",
    "make_balancer",
}

PINNED = {
    "dagengine": DAGENGINE,
    "dagengine.engine": ENGINE,
    "dagengine.orchestrator": ORCHESTRATOR,
}


@pytest.fixture(params=sorted(PINNED))
def module(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def test_all_is_pinned(module: ModuleType) -> None:
    names = list(module.__all__)
    assert len(names) == len(set(names)), "a name is listed twice"
    assert set(names) == PINNED[module.__name__]


def test_every_name_resolves(module: ModuleType) -> None:
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    star: dict[str, object] = {}
    exec(f"from {module.__name__} import *", star)
    assert set(star) - {"__builtins__"} == set(module.__all__)


def test_no_private_name_is_exported(module: ModuleType) -> None:
    assert not [n for n in module.__all__ if n.startswith("_") and n != "__version__"]


def test_the_top_level_names_are_the_submodules_objects() -> None:
    import dagengine
    import dagengine.engine
    import dagengine.orchestrator

    for name in DAGENGINE & ENGINE:
        assert getattr(dagengine, name) is getattr(dagengine.engine, name), name
    for name in DAGENGINE & ORCHESTRATOR:
        assert getattr(dagengine, name) is getattr(dagengine.orchestrator, name), name


def test_the_engine_packages_modules_export_what_the_package_does() -> None:
    """Each name of ``dagengine.engine`` is defined in (or re-exported by) one of its
    modules' ``__all__``: the package adds nothing of its own."""
    import dagengine.engine

    found: dict[str, object] = {}
    for sub in (
        "_channel",
        "_errors",
        "_tls",
        "_wire",
        "address",
        "aio",
        "client",
        "process",
        "registration",
        "session",
    ):
        mod = importlib.import_module(f"dagengine.engine.{sub}")
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"{sub}.{name}"
            found[name] = getattr(mod, name)
    for name in dagengine.engine.__all__:
        assert name in found, name
        assert getattr(dagengine.engine, name) is found[name], name

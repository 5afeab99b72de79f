from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    RUN_STARTED: _ClassVar[EventKind]
    NODE_STARTED: _ClassVar[EventKind]
    NODE_SUCCEEDED: _ClassVar[EventKind]
    NODE_FAILED: _ClassVar[EventKind]
    NODE_RETRYING: _ClassVar[EventKind]
    NODE_SKIPPED: _ClassVar[EventKind]
    NODE_CANCELLED: _ClassVar[EventKind]
    NODE_LOG: _ClassVar[EventKind]
    RUN_FINISHED: _ClassVar[EventKind]
    NODE_MAPPED: _ClassVar[EventKind]
    NODE_CACHED: _ClassVar[EventKind]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    SUCCEEDED: _ClassVar[RunStatus]
    FAILED: _ClassVar[RunStatus]
    CANCELLED: _ClassVar[RunStatus]

class NodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATUS_UNSPECIFIED: _ClassVar[NodeStatus]
    NODE_PENDING: _ClassVar[NodeStatus]
    NODE_RUNNING: _ClassVar[NodeStatus]
    NODE_RETRYING_STATUS: _ClassVar[NodeStatus]
    NODE_SUCCEEDED_STATUS: _ClassVar[NodeStatus]
    NODE_FAILED_STATUS: _ClassVar[NodeStatus]
    NODE_SKIPPED_STATUS: _ClassVar[NodeStatus]
    NODE_CANCELLED_STATUS: _ClassVar[NodeStatus]
EVENT_KIND_UNSPECIFIED: EventKind
RUN_STARTED: EventKind
NODE_STARTED: EventKind
NODE_SUCCEEDED: EventKind
NODE_FAILED: EventKind
NODE_RETRYING: EventKind
NODE_SKIPPED: EventKind
NODE_CANCELLED: EventKind
NODE_LOG: EventKind
RUN_FINISHED: EventKind
NODE_MAPPED: EventKind
NODE_CACHED: EventKind
RUN_STATUS_UNSPECIFIED: RunStatus
SUCCEEDED: RunStatus
FAILED: RunStatus
CANCELLED: RunStatus
NODE_STATUS_UNSPECIFIED: NodeStatus
NODE_PENDING: NodeStatus
NODE_RUNNING: NodeStatus
NODE_RETRYING_STATUS: NodeStatus
NODE_SUCCEEDED_STATUS: NodeStatus
NODE_FAILED_STATUS: NodeStatus
NODE_SKIPPED_STATUS: NodeStatus
NODE_CANCELLED_STATUS: NodeStatus

class WorkflowSpec(_message.Message):
    __slots__ = ("id", "version", "nodes", "max_parallel", "fail_fast", "timeout_seconds", "inputs_schema_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    FAIL_FAST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeSpec]
    max_parallel: int
    fail_fast: bool
    timeout_seconds: float
    inputs_schema_json: bytes
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeSpec, _Mapping]]] = ..., max_parallel: _Optional[int] = ..., fail_fast: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ..., inputs_schema_json: _Optional[bytes] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("id", "deps", "lua", "python", "workflow", "noop", "retry", "timeout_seconds", "when", "trigger_rule", "map", "map_max_parallel", "allow_partial", "max_items", "cache")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    LUA_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_RULE_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    MAP_MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    id: str
    deps: _containers.RepeatedScalarFieldContainer[str]
    lua: LuaExecutor
    python: PythonExecutor
    workflow: SubWorkflowExecutor
    noop: NoopExecutor
    retry: RetryPolicy
    timeout_seconds: float
    when: str
    trigger_rule: str
    map: str
    map_max_parallel: int
    allow_partial: bool
    max_items: int
    cache: CachePolicy
    def __init__(self, id: _Optional[str] = ..., deps: _Optional[_Iterable[str]] = ..., lua: _Optional[_Union[LuaExecutor, _Mapping]] = ..., python: _Optional[_Union[PythonExecutor, _Mapping]] = ..., workflow: _Optional[_Union[SubWorkflowExecutor, _Mapping]] = ..., noop: _Optional[_Union[NoopExecutor, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeout_seconds: _Optional[float] = ..., when: _Optional[str] = ..., trigger_rule: _Optional[str] = ..., map: _Optional[str] = ..., map_max_parallel: _Optional[int] = ..., allow_partial: _Optional[bool] = ..., max_items: _Optional[int] = ..., cache: _Optional[_Union[CachePolicy, _Mapping]] = ...) -> None: ...

class CachePolicy(_message.Message):
    __slots__ = ("key", "ttl_seconds", "code")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    key: str
    ttl_seconds: float
    code: str
    def __init__(self, key: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., code: _Optional[str] = ...) -> None: ...

class CacheEntry(_message.Message):
    __slots__ = ("node_id", "key", "output_json", "run_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    key: str
    output_json: bytes
    run_id: str
    def __init__(self, node_id: _Optional[str] = ..., key: _Optional[str] = ..., output_json: _Optional[bytes] = ..., run_id: _Optional[str] = ...) -> None: ...

class LuaExecutor(_message.Message):
    __slots__ = ("code", "max_instructions", "max_memory_bytes")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    code: str
    max_instructions: int
    max_memory_bytes: int
    def __init__(self, code: _Optional[str] = ..., max_instructions: _Optional[int] = ..., max_memory_bytes: _Optional[int] = ...) -> None: ...

class PythonExecutor(_message.Message):
    __slots__ = ("import_path",)
    IMPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    import_path: str
    def __init__(self, import_path: _Optional[str] = ...) -> None: ...

class SubWorkflowExecutor(_message.Message):
    __slots__ = ("workflow_id", "version_range")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_RANGE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    version_range: str
    def __init__(self, workflow_id: _Optional[str] = ..., version_range: _Optional[str] = ...) -> None: ...

class NoopExecutor(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("retries", "backoff_initial_seconds", "backoff_factor", "backoff_max_seconds")
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_INITIAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FACTOR_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    def __init__(self, retries: _Optional[int] = ..., backoff_initial_seconds: _Optional[float] = ..., backoff_factor: _Optional[float] = ..., backoff_max_seconds: _Optional[float] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("run_id", "attempt", "workflow", "inputs_json", "completed_json", "deadline_unix", "max_parallel", "fail_fast", "parent_run_id", "parent_node_id", "depth", "result_only", "result_json", "trace_context", "cache_entries")
    class CompletedJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    FAIL_FAST_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    RESULT_ONLY_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    workflow: WorkflowSpec
    inputs_json: bytes
    completed_json: _containers.ScalarMap[str, bytes]
    deadline_unix: float
    max_parallel: int
    fail_fast: bool
    parent_run_id: str
    parent_node_id: str
    depth: int
    result_only: bool
    result_json: bool
    trace_context: _containers.ScalarMap[str, str]
    cache_entries: _containers.RepeatedCompositeFieldContainer[CacheEntry]
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., workflow: _Optional[_Union[WorkflowSpec, _Mapping]] = ..., inputs_json: _Optional[bytes] = ..., completed_json: _Optional[_Mapping[str, bytes]] = ..., deadline_unix: _Optional[float] = ..., max_parallel: _Optional[int] = ..., fail_fast: _Optional[bool] = ..., parent_run_id: _Optional[str] = ..., parent_node_id: _Optional[str] = ..., depth: _Optional[int] = ..., result_only: _Optional[bool] = ..., result_json: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., cache_entries: _Optional[_Iterable[_Union[CacheEntry, _Mapping]]] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("type", "message", "traceback", "node_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    traceback: str
    node_id: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "attempt", "seq", "engine_id", "kind", "time_unix", "node_id", "node_attempt", "error", "retry_delay_seconds", "message", "output_json", "result", "missed", "skip_reason", "level", "item_count", "cached_from", "cache_key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FROM_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    seq: int
    engine_id: str
    kind: EventKind
    time_unix: float
    node_id: str
    node_attempt: int
    error: ErrorInfo
    retry_delay_seconds: float
    message: str
    output_json: bytes
    result: RunResult
    missed: int
    skip_reason: str
    level: str
    item_count: int
    cached_from: str
    cache_key: str
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., seq: _Optional[int] = ..., engine_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., time_unix: _Optional[float] = ..., node_id: _Optional[str] = ..., node_attempt: _Optional[int] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., retry_delay_seconds: _Optional[float] = ..., message: _Optional[str] = ..., output_json: _Optional[bytes] = ..., result: _Optional[_Union[RunResult, _Mapping]] = ..., missed: _Optional[int] = ..., skip_reason: _Optional[str] = ..., level: _Optional[str] = ..., item_count: _Optional[int] = ..., cached_from: _Optional[str] = ..., cache_key: _Optional[str] = ...) -> None: ...

class RunEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("run", "cancel", "runs")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    run: RunRequest
    cancel: CancelRequest
    runs: RunBatch
    def __init__(self, run: _Optional[_Union[RunRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., runs: _Optional[_Union[RunBatch, _Mapping]] = ...) -> None: ...

class RunBatch(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunRequest]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunRequest, _Mapping]]] = ...) -> None: ...

class SessionEvents(_message.Message):
    __slots__ = ("run_id", "events", "refused")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    refused: Refusal
    def __init__(self, run_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., refused: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class SessionReplies(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SessionEvents]
    def __init__(self, runs: _Optional[_Iterable[_Union[SessionEvents, _Mapping]]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class NodeResult(_message.Message):
    __slots__ = ("node_id", "status", "output_json", "error", "attempts", "started_at", "finished_at", "skip_reason", "cached_from", "cache_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FROM_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: NodeStatus
    output_json: bytes
    error: ErrorInfo
    attempts: int
    started_at: float
    finished_at: float
    skip_reason: str
    cached_from: str
    cache_key: str
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[_Union[NodeStatus, str]] = ..., output_json: _Optional[bytes] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., attempts: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., skip_reason: _Optional[str] = ..., cached_from: _Optional[str] = ..., cache_key: _Optional[str] = ...) -> None: ...

class RunResult(_message.Message):
    __slots__ = ("run_id", "attempt", "status", "error", "duration_seconds", "nodes", "engine_id", "result_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    status: RunStatus
    error: ErrorInfo
    duration_seconds: float
    nodes: _containers.RepeatedCompositeFieldContainer[NodeResult]
    engine_id: str
    result_json: bytes
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., status: _Optional[_Union[RunStatus, str]] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., duration_seconds: _Optional[float] = ..., nodes: _Optional[_Iterable[_Union[NodeResult, _Mapping]]] = ..., engine_id: _Optional[str] = ..., result_json: _Optional[bytes] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("engine_id", "version", "capacity", "active_runs", "uptime_seconds", "draining", "active_run_ids")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    version: str
    capacity: int
    active_runs: int
    uptime_seconds: float
    draining: bool
    active_run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, engine_id: _Optional[str] = ..., version: _Optional[str] = ..., capacity: _Optional[int] = ..., active_runs: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., draining: _Optional[bool] = ..., active_run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterEngineRequest(_message.Message):
    __slots__ = ("engine_id", "address", "capacity", "version")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    address: str
    capacity: int
    version: str
    def __init__(self, engine_id: _Optional[str] = ..., address: _Optional[str] = ..., capacity: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class RegisterEngineResponse(_message.Message):
    __slots__ = ("accepted", "heartbeat_interval_seconds")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    heartbeat_interval_seconds: float
    def __init__(self, accepted: _Optional[bool] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class SubWorkflowRequest(_message.Message):
    __slots__ = ("parent_run_id", "parent_node_id", "workflow_id", "version_range", "inputs_json", "depth")
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_RANGE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    parent_run_id: str
    parent_node_id: str
    workflow_id: str
    version_range: str
    inputs_json: bytes
    depth: int
    def __init__(self, parent_run_id: _Optional[str] = ..., parent_node_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., version_range: _Optional[str] = ..., inputs_json: _Optional[bytes] = ..., depth: _Optional[int] = ...) -> None: ...

class SubWorkflowResponse(_message.Message):
    __slots__ = ("run_id", "status", "outputs_json", "error", "resolved_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    outputs_json: bytes
    error: ErrorInfo
    resolved_version: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., outputs_json: _Optional[bytes] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., resolved_version: _Optional[str] = ...) -> None: ...

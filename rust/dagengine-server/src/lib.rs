//! `dagengine-server`: the process-wide tokio runtime and the run driver that steps the
//! core's scheduler, executes nodes (no-op and Lua in Rust, anything else through an
//! [`runner::ExternalExecutor`]) and records outcomes and events. The engine's gRPC
//! service is served from the same runtime.

mod drivers;
pub mod grpc;
pub mod pool;
pub mod runner;
pub mod runtime;

pub use pool::{Context, Growth, Hooks, Job, WorkerPool};
pub use runner::{
    condition_value, run_inline, start_run, start_run_inline, CacheHit, CacheSpec, Checked,
    Condition, EntriesCache, EventDetail, EventKind, ExternalCall, ExternalExecutor, InlineHost,
    LogLine, LogSink, MapSpec, MemoryCache, NodeCache, NodeFailure, NodeKind, NodeRecord, NodeSpec,
    Parents, Plan, RunConfig, RunError, RunEvent, RunHandle, RunOutcome, RunOutputs,
    DEFAULT_MAX_ITEMS, INLINE_BUDGET,
};
pub use runtime::{runtime, RuntimeError};

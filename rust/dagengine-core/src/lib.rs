//! `dagengine-core`: the graph model, validation, topological order and the sans-I/O
//! scheduler of dagengine. No I/O, no threads, no Python: the runtime crates drive it.

pub mod error;
pub mod graph;
pub mod scheduler;

pub use error::{ErrorKind, GraphError};
pub use graph::{Dag, NodeIdx};
pub use scheduler::{
    Backoff, Decision, Event, Instruction, MapOptions, NodePolicy, NodeState, RunOptions,
    RunStatus, Scheduler, SkipReason, StopReason, SuspendedScheduler, TriggerRule, TRANSITIONS,
};

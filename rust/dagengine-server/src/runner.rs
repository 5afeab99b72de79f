//! The run driver: steps a [`Scheduler`](dagengine_core::Scheduler) and turns its
//! instructions into work.
//!
//! Each run is driven by one loop on a driver thread (see `crate::drivers`). The loop
//! is CPU work (state-machine steps, bookkeeping), so it must not sit on an async worker
//! that also serves gRPC for long; and owning a thread lets it run work inline:
//!
//! * no-op nodes complete inside the loop, with no hand-off at all;
//! * of the Lua nodes that become ready together, all but one wait in the run's backlog
//!   and the last runs inline (work-first), so a chain of Lua nodes never changes threads.
//!   The Lua pool drains the backlog with at most one job per pool thread, and the loop
//!   takes the next waiting node itself whenever it would otherwise wait, so a wide
//!   fan-out keeps every core on Lua. Inline Lua cannot stall the run: the interpreter's
//!   hook enforces the node timeout, the run deadline and cancellation;
//! * external (Python) nodes go to the pool: they may block or ignore their cancellation
//!   flag, and the loop must stay free to time them out. A run driven on its caller's
//!   thread ([`run_inline`], `DAG.run`) calls synchronous ones itself while nothing else of
//!   the run runs elsewhere and neither the run nor the node has a timeout; what waits
//!   while such a call blocks moves to the pool.
//!
//! Completions come back over a channel; retry delays and node deadlines live in a timer
//! heap the loop waits on. Events are buffered and published in batches.
//!
//! A run can also start on its caller's thread ([`start_run_inline`], the gRPC service's
//! path for workflows without Python nodes): the loop runs there under a time budget and
//! moves to a driver thread (scheduler suspended, state carried over) once the budget is
//! spent or it would have to wait. Most small runs end within the budget, sparing the
//! thread hand-offs that cost more than the run itself.
//!
//! Modules: `model` (the plan, a run's configuration, events, records, outcome and node
//! failures), `handle` ([`RunHandle`] and the state it shares with the driver), `driver`
//! (the loop, [`start_run`], [`start_run_inline`]) and `lua` (the Lua pool, the run's
//! backlog of Lua attempts and one attempt's execution).

mod cache;
mod condition;
mod driver;
mod handle;
mod lua;
mod model;

use std::sync::{Mutex, MutexGuard};

pub use cache::{canonical, CacheHit, CacheSpec, EntriesCache, MemoryCache, NodeCache};
pub use condition::{condition_value, CONDITION_INSTRUCTIONS};
pub use driver::{run_inline, start_run, start_run_inline, INLINE_BUDGET};
pub use handle::{LogSink, RunHandle};
pub use model::{
    Checked, Condition, EventDetail, EventKind, ExternalCall, ExternalExecutor, InlineHost,
    LogLine, MapSpec, NodeFailure, NodeKind, NodeRecord, NodeSpec, Parents, Plan, RunConfig,
    RunError, RunEvent, RunOutcome, RunOutputs, DEFAULT_MAX_ITEMS,
};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rule_tests;

#[cfg(test)]
mod log_tests;

#[cfg(test)]
mod map_tests;

#[cfg(test)]
mod cache_tests;

#[cfg(test)]
mod inline_tests;

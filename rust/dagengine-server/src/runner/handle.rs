//! The handle of a started run, and the state it shares with the run's driver: published
//! events and outcome, the cancel flag, and the channel into the driver loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use dagengine_core::NodeIdx;
use serde_json::{Map, Value};

use super::model::{LogLine, NodeFailure, RunEvent, RunOutcome};

pub(super) enum Msg {
    Done {
        node: NodeIdx,
        attempt: u32,
        result: Result<ExecOk, NodeFailure>,
        /// What the attempt logged (on success too: emitted before its end).
        logs: Vec<LogLine>,
    },
    /// The node's external condition held: the attempt goes on (its start is now).
    ConditionPassed {
        node: NodeIdx,
        attempt: u32,
    },
    /// The node's external condition was false: it is skipped.
    ConditionFalse {
        node: NodeIdx,
        attempt: u32,
    },
    /// Lines a running attempt logged so far: `NodeLog` events now (see [`LogSink`]).
    Log {
        node: NodeIdx,
        attempt: u32,
        lines: Vec<LogLine>,
    },
    Cancel,
}

/// Where a running external attempt sends the lines it logged while it runs: each
/// [`LogSink::send`] becomes that many `NodeLog` events of the attempt at once, so a long
/// node's lines are seen before it ends. Lines sent before the attempt returns come before
/// its end event; what [`ExternalExecutor::take_logs`](super::ExternalExecutor::take_logs)
/// returns comes after them.
#[derive(Clone)]
pub struct LogSink {
    tx: Sender<Msg>,
    node: NodeIdx,
    attempt: u32,
}

impl LogSink {
    pub(super) fn new(tx: Sender<Msg>, node: NodeIdx, attempt: u32) -> Self {
        Self { tx, node, attempt }
    }

    /// Hand `lines` to the run; false once the run has ended (they are dropped).
    pub fn send(&self, lines: Vec<LogLine>) -> bool {
        if lines.is_empty() {
            return true;
        }
        self.tx
            .send(Msg::Log {
                node: self.node,
                attempt: self.attempt,
                lines,
            })
            .is_ok()
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("node", &self.node)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

pub(super) struct ExecOk {
    pub(super) output: Map<String, Value>,
    /// A Lua attempt's lines, until [`attempt_logs`](super::lua::attempt_logs) takes them.
    pub(super) logs: Vec<LogLine>,
}

#[derive(Default)]
pub(super) struct Published {
    pub(super) events: VecDeque<RunEvent>,
    pub(super) outcome: Option<Arc<RunOutcome>>,
}

pub(super) struct Shared {
    pub(super) run_id: String,
    pub(super) cancel: AtomicBool,
    pub(super) published: Mutex<Published>,
    /// Threads waiting for events or the end ([`RunHandle::next_events`]).
    pub(super) events_waiters: Waiters,
    /// Threads waiting for the end only ([`RunHandle::wait`]): not woken by events, which
    /// a driver running nodes inline publishes once per node (a fan-out of 10,000 Lua
    /// nodes woke `dag.start(...).wait()` thousands of times: ~7 ms of its CPU, taken
    /// from the run's own threads on a two-core machine).
    pub(super) end_waiters: Waiters,
    /// The same wake-up as `events_waiters`, for async waiters (the gRPC event stream).
    pub(super) changed_async: tokio::sync::Notify,
    /// Lua attempts the driver took from the backlog to run itself (tests wait on it).
    #[cfg(test)]
    pub(super) stolen: AtomicUsize,
}

/// A condition variable on [`Shared::published`] and how many threads wait on it (counted
/// under the lock): a `notify_all` is a syscall even with nobody to wake, and the gRPC
/// path never waits there.
#[derive(Default)]
pub(super) struct Waiters {
    changed: Condvar,
    count: AtomicUsize,
    /// How many times a waiter looked at the published state (tests count the wake-ups).
    #[cfg(test)]
    pub(super) looks: AtomicUsize,
}

impl Waiters {
    /// Wait on these while `blocked` holds, up to `timeout`.
    pub(super) fn wait_while<'a>(
        &self,
        guard: MutexGuard<'a, Published>,
        timeout: Duration,
        blocked: impl FnMut(&mut Published) -> bool,
    ) -> MutexGuard<'a, Published> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let mut blocked = blocked;
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |p| {
                #[cfg(test)]
                self.looks.fetch_add(1, Ordering::SeqCst);
                blocked(p)
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.count.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    fn notify(&self) {
        if self.count.load(Ordering::SeqCst) > 0 {
            self.changed.notify_all();
        }
    }
}

impl Shared {
    /// Wake the waiters for events (sync and async); call after releasing the lock.
    pub(super) fn notify_events(&self) {
        self.events_waiters.notify();
        self.changed_async.notify_waiters();
    }

    /// Wake every waiter: the outcome was set. Call after releasing the lock.
    pub(super) fn notify_end(&self) {
        self.notify_events();
        self.end_waiters.notify();
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Published> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A started run: wait for it, read its events, cancel it. Cheap to clone.
#[derive(Clone)]
pub struct RunHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: Sender<Msg>,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("run_id", &self.shared.run_id)
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// Ask the run to stop: pending nodes are cancelled, running ones interrupted.
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Cancel);
    }

    /// Whether the run has finished.
    pub fn is_done(&self) -> bool {
        self.shared.lock().outcome.is_some()
    }

    /// Wait up to `timeout` for the run to finish; true if it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let shared = &self.shared;
        let guard = shared
            .end_waiters
            .wait_while(shared.lock(), timeout, |p| p.outcome.is_none());
        guard.outcome.is_some()
    }

    /// Wait up to `timeout` for events (or the end of the run); take all pending events.
    pub fn next_events(&self, timeout: Duration) -> Vec<RunEvent> {
        let shared = &self.shared;
        let mut guard = shared
            .events_waiters
            .wait_while(shared.lock(), timeout, |p| {
                p.events.is_empty() && p.outcome.is_none()
            });
        guard.events.drain(..).collect()
    }

    /// Wait (asynchronously) for events or the end of the run; take all pending events.
    /// Returns them with the outcome once the run has finished and every event is out.
    pub async fn next_events_async(&self) -> (Vec<RunEvent>, Option<Arc<RunOutcome>>) {
        self.take_events_when(|p| !p.events.is_empty() || p.outcome.is_some(), None)
            .await
    }

    /// Wait (asynchronously) until the run has finished or `deadline` has passed; take all
    /// pending events, with the outcome if the run has finished.
    pub async fn events_until(
        &self,
        deadline: tokio::time::Instant,
    ) -> (Vec<RunEvent>, Option<Arc<RunOutcome>>) {
        self.take_events_when(|p| p.outcome.is_some(), Some(deadline))
            .await
    }

    /// Wait (asynchronously) until `ready` holds of what the run published, or `deadline`
    /// (if any) has passed; take all pending events, with the outcome if the run has
    /// finished.
    async fn take_events_when(
        &self,
        ready: impl Fn(&Published) -> bool,
        deadline: Option<tokio::time::Instant>,
    ) -> (Vec<RunEvent>, Option<Arc<RunOutcome>>) {
        loop {
            let notified = self.shared.changed_async.notified();
            tokio::pin!(notified);
            // Register before looking, so a publish between the look and the await is not
            // missed.
            notified.as_mut().enable();
            {
                let mut p = self.shared.lock();
                if ready(&p) || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    let events: Vec<RunEvent> = p.events.drain(..).collect();
                    return (events, p.outcome.clone());
                }
            }
            match deadline {
                // (past the deadline: looked at once more above, then returned)
                Some(d) => {
                    let _ = tokio::time::timeout_at(d, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// The outcome, once the run has finished.
    pub fn outcome(&self) -> Option<Arc<RunOutcome>> {
        self.shared.lock().outcome.clone()
    }
}

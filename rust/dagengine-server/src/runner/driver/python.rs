//! External (Python) nodes of a run driven on its caller's thread ([`run_inline`]): the loop
//! calls them itself, one after the other, as graphlib's inline loop would, instead of
//! handing each to a pool thread and waiting for its answer (two thread crossings a node,
//! more than a trivial node costs).
//!
//! Ready nodes wait in the run's [`Handoff`] and the loop takes them in turn. Running them
//! one at a time on one thread must not take away concurrency a workflow relies on (two
//! branches that meet at a barrier, a node that blocks on I/O): a process-wide watcher
//! looks every millisecond, and a loop that has been inside the same call on two looks in a
//! row while nodes wait gets them moved to the pool, where they run as any external node
//! does. Nodes made ready later start on the loop again.
//!
//! Also here: handing an external attempt to the pool (`dispatch_external`), the path of
//! every other run.
//!
//! [`run_inline`]: super::run_inline

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use std::cmp::Reverse;

use dagengine_core::{ErrorKind, Event, Instruction, NodeIdx, NodeState, Scheduler, StopReason};

use super::super::handle::{ExecOk, LogSink, Msg};
use super::super::lock;
use super::super::model::{
    contained, never_started, Checked, ExternalCall, ExternalExecutor, InlineHost, Kind, LogLine,
    NodeFailure, Plan,
};
use super::{Driver, Timer, HOST_POLL, SPIN};

/// An external attempt waiting for the loop's thread.
pub(super) struct Waiting {
    node: NodeIdx,
    attempt: u32,
    call: ExternalCall,
    /// For a first attempt whose external condition is checked in the same call: when it
    /// was made ready (its start, if the condition holds; it is announced after the call).
    check: Option<f64>,
}

/// A run's external attempts waiting to run on the loop's thread, and what the watcher
/// needs to move them to the pool.
pub(super) struct Handoff {
    queue: Mutex<VecDeque<Waiting>>,
    /// Inline calls started so far, and whether one is running now.
    calls: AtomicU64,
    in_call: AtomicBool,
    plan: Arc<Plan>,
    external: Arc<dyn ExternalExecutor>,
    tx: Sender<Msg>,
}

impl Handoff {
    /// Move every waiting attempt to the pool (the loop is stuck in a call).
    fn to_pool(&self) {
        let waiting: Vec<Waiting> = lock(&self.queue).drain(..).collect();
        for w in waiting {
            self.submit(w);
        }
    }

    /// Run `w` on the pool, as any external attempt (its condition first, if it has one to
    /// check: then as [`Driver::dispatch_external`] does).
    fn submit(&self, w: Waiting) {
        let (plan, external, tx) = (self.plan.clone(), self.external.clone(), self.tx.clone());
        self.external.pool().submit(Box::new(move || {
            let (node, attempt) = (w.node, w.attempt);
            if w.check.is_some() && !w.call.cancel.load(Ordering::Relaxed) {
                let msg = condition_msg(&plan, external.as_ref(), &w.call, node, node, attempt);
                let held = matches!(msg, Msg::ConditionPassed { .. });
                let _ = tx.send(msg);
                if !held {
                    return;
                }
            }
            let (result, logs) = call_external(&plan, external.as_ref(), w);
            let _ = tx.send(Msg::Done {
                node,
                attempt,
                result,
                logs,
            });
        }));
    }
}

/// Checks `call`'s condition (on the pool) and says how it went: held, not held, or the
/// node's failure (not retryable: a retry would not check the condition again). The
/// condition's lines are dropped (as a Lua condition's), unless it failed. `owner` names
/// the node in a failure.
fn condition_msg(
    plan: &Plan,
    external: &dyn ExternalExecutor,
    call: &ExternalCall,
    owner: NodeIdx,
    node: NodeIdx,
    attempt: u32,
) -> Msg {
    let held = contained(|| plan.dag.id(owner), || external.condition(plan, call));
    let logs = external.take_logs(plan, node, None, attempt);
    match held {
        Ok(true) => Msg::ConditionPassed { node, attempt },
        Ok(false) => Msg::ConditionFalse { node, attempt },
        Err(mut failure) => {
            failure.retryable = false;
            Msg::Done {
                node,
                attempt,
                result: Err(failure),
                logs,
            }
        }
    }
}

/// One external attempt, here: not at all if it was cancelled while it waited (its node
/// already ended), else its call and then its captured lines.
fn call_external(
    plan: &Plan,
    external: &dyn ExternalExecutor,
    w: Waiting,
) -> (Result<ExecOk, NodeFailure>, Vec<LogLine>) {
    let owner = w.call.node;
    if w.call.cancel.load(Ordering::Relaxed) {
        return (Err(never_started(plan, owner)), Vec::new());
    }
    let item = w.call.item.as_ref().map(|(i, _)| *i);
    let result =
        contained(|| plan.dag.id(owner), || external.execute(plan, w.call)).map(|output| ExecOk {
            output,
            logs: Vec::new(),
        });
    let logs = external.take_logs(plan, owner, item, w.attempt);
    (result, logs)
}

/// An external attempt whose condition is checked in the same call, here: not at all if
/// it was cancelled while it waited, else the call and then its captured lines (a
/// condition's lines are dropped, as a Lua condition's, unless it failed).
fn checked_external(
    plan: &Plan,
    external: &dyn ExternalExecutor,
    w: Waiting,
) -> (Checked, Vec<LogLine>) {
    let owner = w.call.node;
    if w.call.cancel.load(Ordering::Relaxed) {
        return (
            Checked::ConditionFailed(never_started(plan, owner)),
            Vec::new(),
        );
    }
    let attempt = w.attempt;
    let checked = contained(|| plan.dag.id(owner), || Ok(external.checked(plan, w.call)))
        .unwrap_or_else(Checked::ConditionFailed);
    let logs = external.take_logs(plan, owner, None, attempt);
    let logs = match checked {
        Checked::Skipped => Vec::new(),
        _ => logs,
    };
    (checked, logs)
}

/// The runs whose loops the watcher looks at, with the call count it saw last.
struct Watched {
    runs: Mutex<Vec<(Weak<Handoff>, u64)>>,
    added: Condvar,
}

/// How often the watcher looks: a call seen on two looks in a row has run for 1-2 ms.
const WATCH_TICK: Duration = Duration::from_millis(1);

fn watched() -> &'static Watched {
    static WATCHED: OnceLock<Watched> = OnceLock::new();
    WATCHED.get_or_init(|| {
        std::thread::Builder::new()
            .name("dagengine-handoff".to_owned())
            .spawn(watch)
            .expect("spawn the hand-off watcher");
        Watched {
            runs: Mutex::new(Vec::new()),
            added: Condvar::new(),
        }
    })
}

fn watch() {
    let w = watched();
    let mut runs = lock(&w.runs);
    loop {
        runs.retain(|(h, _)| h.strong_count() > 0);
        if runs.is_empty() {
            runs = w
                .added
                .wait(runs)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        for (h, seen) in runs.iter_mut() {
            let Some(h) = h.upgrade() else { continue };
            let calls = h.calls.load(Ordering::Acquire);
            if h.in_call.load(Ordering::Acquire) && calls == *seen {
                h.to_pool();
            }
            *seen = calls;
        }
        drop(runs);
        std::thread::sleep(WATCH_TICK);
        runs = lock(&w.runs);
    }
}

impl Driver {
    /// Run attempt `attempt` of `node` on the external executor's pool; with `check`, its
    /// external condition first (and for a node that is not external, only that: it runs
    /// here once [`Msg::ConditionPassed`] comes back).
    pub(super) fn dispatch_external(&mut self, node: NodeIdx, attempt: u32, check: bool) {
        let cancel = self.new_token(node);
        // An item calls its mapped node's callable, with the item.
        let owner = self.owner(node);
        let item = self.item_of(node).map(|(_, i)| i);
        let call = ExternalCall {
            node: owner,
            attempt,
            results: self.parents(node),
            cancel,
            item: self.item_call(node),
            logs: LogSink::new(self.tx.clone(), node, attempt),
        };
        if let Some(timeout) = self.plan.policies[self.policy_index(node)].timeout {
            self.timers.push(Reverse((
                Instant::now() + timeout,
                Timer::NodeDeadline { node, attempt },
            )));
        }
        let tx = self.tx.clone();
        let Some(external) = self.external.clone() else {
            let failure = NodeFailure::new(
                ErrorKind::DagEngineError.as_str(),
                format!(
                    "node '{}' needs an external executor and this run has none",
                    self.node_id(node)
                ),
                false,
            );
            let _ = tx.send(Msg::Done {
                node,
                attempt,
                result: Err(failure),
                logs: Vec::new(),
            });
            return;
        };
        let plan = self.plan.clone();
        let pool = external.pool();
        // A cached node is looked up between its condition and its call.
        let cached = self.config.cache.is_some() && self.plan.cache(owner).is_some();
        pool.submit(Box::new(move || {
            if check {
                let msg = condition_msg(&plan, external.as_ref(), &call, owner, node, attempt);
                let go_on = matches!(msg, Msg::ConditionPassed { .. })
                    && plan.kind(node) == Kind::External
                    && plan.map(node).is_none()
                    && !cached;
                let _ = tx.send(msg);
                if !go_on {
                    return;
                }
            }
            let result =
                contained(|| plan.dag.id(owner), || external.execute(&plan, call)).map(|output| {
                    ExecOk {
                        output,
                        logs: Vec::new(),
                    }
                });
            let logs = external.take_logs(&plan, owner, item, attempt);
            let _ = tx.send(Msg::Done {
                node,
                attempt,
                result,
                logs,
            });
        }));
    }

    /// Whether attempt `node` (a node or an item) runs on the loop's thread: only in a run
    /// driven by [`super::run_inline`], without a run timeout or a node timeout (a call
    /// here cannot be abandoned when it runs out), and if its executor allows it.
    pub(super) fn external_here(&self, node: NodeIdx) -> bool {
        self.inline_host
            && self.deadline.is_none()
            && !self.plan.has_timeout(self.owner(node))
            && self
                .external
                .as_ref()
                .is_some_and(|e| e.inline(self.owner(node)))
    }

    /// The call of attempt `attempt` of `node`, with a fresh cancel token.
    pub(super) fn external_call(&mut self, node: NodeIdx, attempt: u32) -> ExternalCall {
        let cancel = self.new_token(node);
        ExternalCall {
            node: self.owner(node),
            attempt,
            results: self.parents(node),
            cancel,
            item: self.item_call(node),
            logs: LogSink::new(self.tx.clone(), node, attempt),
        }
    }

    /// Queue an announced external attempt for the loop's thread.
    pub(super) fn queue_here(&mut self, node: NodeIdx, attempt: u32) {
        let call = self.external_call(node, attempt);
        self.ready_here.push_back(Waiting {
            node,
            attempt,
            call,
            check: None,
        });
    }

    /// Queue the first attempt of `node` (made ready at `now`, not announced yet) for the
    /// loop's thread, its external condition to be checked in the same call: one call
    /// builds the context both see (see [`ExternalExecutor::checked`]).
    pub(super) fn queue_checked_here(&mut self, node: NodeIdx, attempt: u32, now: f64) {
        self.records[node as usize].attempts = attempt;
        let call = self.external_call(node, attempt);
        self.ready_here.push_back(Waiting {
            node,
            attempt,
            call,
            check: Some(now),
        });
    }

    /// The next external attempt to run here: the last one made ready when others are
    /// waiting too (those go to the hand-off, where the watcher can see them), else the
    /// oldest in the hand-off; with how many attempts wait here besides it.
    fn next_here(&mut self) -> Option<(Waiting, usize)> {
        let next = self.ready_here.pop_back();
        if !self.ready_here.is_empty() {
            let handoff = self.handoff();
            lock(&handoff.queue).extend(self.ready_here.drain(..));
        }
        let handoff = self.handoff.as_ref();
        if let Some(w) = next {
            return Some((w, handoff.map_or(0, |h| lock(&h.queue).len())));
        }
        let mut queue = lock(&handoff?.queue);
        let w = queue.pop_front()?;
        Some((w, queue.len()))
    }

    fn handoff(&mut self) -> Arc<Handoff> {
        if let Some(h) = &self.handoff {
            return h.clone();
        }
        let h = Arc::new(Handoff {
            queue: Mutex::default(),
            calls: AtomicU64::new(0),
            in_call: AtomicBool::new(false),
            plan: self.plan.clone(),
            external: self
                .external
                .clone()
                .expect("external nodes have an executor"),
            tx: self.tx.clone(),
        });
        let w = watched();
        lock(&w.runs).push((Arc::downgrade(&h), u64::MAX));
        w.added.notify_one();
        self.handoff = Some(h.clone());
        h
    }

    /// Run the next external attempt waiting for this thread, if there is one, and take
    /// its result (or, if the caller was interrupted meanwhile, cancel the run). True if
    /// one ran.
    pub(super) fn run_external_here(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        host: Option<&dyn InlineHost>,
    ) -> bool {
        let Some((w, waiting)) = self.next_here() else {
            return false;
        };
        // Only while nothing else of the run runs elsewhere: a call here that blocks then
        // keeps no attempt's end from being heard (and what it made ready from starting);
        // the ones waiting here the watcher moves to the pool.
        if sched.running() > waiting + 1 {
            self.handoff().submit(w);
            return true;
        }
        let external = self
            .external
            .clone()
            .expect("external nodes have an executor");
        if let Some(h) = &self.handoff {
            h.calls.fetch_add(1, Ordering::AcqRel);
            h.in_call.store(true, Ordering::Release);
        }
        let (node, attempt, check) = (w.node, w.attempt, w.check);
        let (result, logs) = match check {
            None => {
                let (result, logs) = call_external(&self.plan, external.as_ref(), w);
                (Checked::Ran(result.map(|ok| ok.output)), logs)
            }
            Some(_) => checked_external(&self.plan, external.as_ref(), w),
        };
        if let Some(h) = &self.handoff {
            h.in_call.store(false, Ordering::Release);
        }
        if host.is_some_and(InlineHost::interrupted) {
            // Its attempt (still running for the scheduler) is aborted with the others.
            self.interrupt(sched, out);
            return true;
        }
        self.fire_timers(sched, out);
        let result = match result {
            Checked::Ran(result) => {
                let current =
                    sched.state(node) == NodeState::Running && sched.attempts(node) == attempt;
                if let (Some(at), true) = (check, current) {
                    // The condition held: the attempt started when it was made ready.
                    self.announce(node, attempt, at);
                }
                result.map(|output| ExecOk {
                    output,
                    logs: Vec::new(),
                })
            }
            Checked::Skipped => {
                if sched.state(node) == NodeState::Running && sched.attempts(node) == attempt {
                    self.tokens[node as usize] = None;
                    sched.handle(Event::ConditionFalse { node, attempt }, out);
                }
                return true;
            }
            Checked::ConditionFailed(mut failure) => {
                // A retry would not check the condition again.
                failure.retryable = false;
                Err(failure)
            }
        };
        self.finish_attempt(sched, out, node, attempt, result, logs);
        true
    }

    /// Wait for the next message with the host's lock released, at most [`HOST_POLL`]:
    /// `None` if none came (an interrupt, if any, has been acted on).
    pub(super) fn wait_here(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        rx: &mut Receiver<Msg>,
        host: &dyn InlineHost,
    ) -> Option<Msg> {
        let (running, wake) = (sched.running() > 0, self.next_wakeup());
        let mut got = None;
        host.blocking(&mut || got = wait_msg(rx, running, wake, Some(HOST_POLL)));
        if got.is_none() && host.interrupted() {
            self.interrupt(sched, out);
        }
        got
    }

    /// The caller was interrupted: cancel the run (it is then driven to its end).
    pub(super) fn interrupt(&mut self, sched: &mut Scheduler<'_>, out: &mut Vec<Instruction>) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        if sched.stop_reason().is_none() {
            sched.handle(Event::Stop(StopReason::Cancelled), out);
        }
    }
}

/// Wait for the next message: poll for [`SPIN`] while work is in flight, then sleep until
/// one comes, until `wake` (a timer or the run's deadline), or at most `cap`. `None` when
/// none came.
pub(super) fn wait_msg(
    rx: &mut Receiver<Msg>,
    running: bool,
    wake: Option<Instant>,
    cap: Option<Duration>,
) -> Option<Msg> {
    let spin_until = Instant::now() + SPIN;
    while running && Instant::now() < spin_until {
        if let Ok(msg) = rx.try_recv() {
            return Some(msg);
        }
        std::thread::yield_now();
    }
    let limit = match (wake, cap.map(|c| Instant::now() + c)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match limit {
        Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => unreachable!("driver holds a sender"),
        },
        None => Some(rx.recv().expect("driver holds a sender")),
    }
}

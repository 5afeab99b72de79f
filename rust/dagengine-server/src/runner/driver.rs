//! The driver loop: steps the run's scheduler, carries out its instructions (no-op nodes in
//! the loop, Lua nodes inline or through the backlog of `lua`, external ones on their
//! executor's pool), keeps the timers, records the nodes and publishes events and the
//! outcome (see the `runner` docs).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dagengine_core::{
    ErrorKind, Event, Instruction, NodeIdx, NodeState, RunStatus, Scheduler, StopReason,
};
use serde_json::Value;

use crate::drivers;
use crate::runtime::{runtime, RuntimeError};

use super::handle::{ExecOk, Msg, Published, RunHandle, Shared, Waiters};
use super::lock;
use super::lua::{
    attempt_logs, drain, lua_pool, Backlog, LuaCall, LuaJob, Queued, Waiting, PREEMPTED,
    STEAL_BUDGET,
};
use super::model::{
    contained, empty_output, never_started, EventDetail, EventKind, ExternalExecutor, InlineHost,
    Kind, NodeFailure, NodeKind, NodeRecord, Parents, Plan, RunConfig, RunError, RunEvent,
    RunOutcome, RunOutputs,
};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Start a run of `plan` on the process runtime and return at once.
pub fn start_run(
    plan: Arc<Plan>,
    config: RunConfig,
    external: Option<Arc<dyn ExternalExecutor>>,
) -> Result<RunHandle, RuntimeError> {
    // Not on the runtime's threads, but its check against use after fork() applies.
    runtime()?;
    let (handle, driver, rx) = new_run(plan, config, external);
    drivers::spawn(Box::new(move || {
        let mut rx = rx;
        driver.run(&mut rx);
    }));
    Ok(handle)
}

/// The budget the core's own callers give [`start_run_inline`] (the gRPC service for a run of
/// Lua and no-op nodes, `DAG.run` for a run without Python nodes). A 3-node Lua run takes
/// ~13 µs: it ends within it, with no thread hand-off (where handing it to a driver thread and
/// waiting for its end cost ~50 µs more, the two threads' wake-ups); a longer run holds the
/// caller this much once (tokio's guidance is 10-100 µs between yields), and a node still
/// running when it is spent runs again from its start, so it is kept short.
pub const INLINE_BUDGET: Duration = Duration::from_micros(100);

/// Start a run on the caller's thread: it is driven here until it ends, until `budget` is
/// spent, or until it would have to wait for work on other threads; then it goes on on a
/// driver thread. For callers on an async worker: a short run of Lua and no-op nodes ends
/// before this returns, with no thread hand-off at all (the gRPC service's common case), and
/// a long one holds the caller for about `budget` at most. A Lua node still running when the
/// budget runs out is interrupted and runs again on the pool: scripts have no side effects
/// (the sandbox has no I/O), so nothing can tell, and its events are only sent once.
pub fn start_run_inline(
    plan: Arc<Plan>,
    config: RunConfig,
    external: Option<Arc<dyn ExternalExecutor>>,
    budget: Duration,
) -> Result<RunHandle, RuntimeError> {
    // On a runtime thread already (the gRPC service): its handle is a thread-local read,
    // where `runtime()` checks the process id (a syscall) against fork().
    if tokio::runtime::Handle::try_current().is_err() {
        runtime()?;
    }
    let (handle, mut driver, mut rx) = new_run(plan, config, external);
    let plan = driver.plan.clone();
    let mut sched = Scheduler::new(&plan.dag, &plan.policies, driver.config.options);
    let mut work = Work::default();
    driver.begin(&mut sched, &mut work);
    let budget = Some(Instant::now() + budget);
    if let Some(status) = driver.drive(&mut sched, &mut work, &mut rx, budget, None) {
        driver.finish(&sched, status);
        return Ok(handle);
    }
    let saved = sched.suspend();
    drivers::spawn(Box::new(move || {
        let plan = driver.plan.clone();
        let mut sched = Scheduler::resume(&plan.dag, &plan.policies, saved);
        let status = driver
            .drive(&mut sched, &mut work, &mut rx, None, None)
            .expect("without a budget the loop runs to the end");
        driver.finish(&sched, status);
    }));
    Ok(handle)
}

/// Run `plan` to its end on the caller's thread and return its (finished) handle: the
/// Python API's `DAG.run`, whose thread holds the GIL. External nodes the executor allows
/// ([`ExternalExecutor::inline`]) are called right here, one after the other, unless the
/// run or the node has a timeout; the others go to the pool as usual, and whatever is left
/// waiting while a call here blocks is moved to the pool (see `driver::python`). The loop
/// releases the host's lock ([`InlineHost::blocking`]) while it waits or runs Lua, and
/// cancels the run when the host reports an interrupt.
pub fn run_inline(
    plan: Arc<Plan>,
    config: RunConfig,
    external: Option<Arc<dyn ExternalExecutor>>,
    host: &dyn InlineHost,
) -> Result<RunHandle, RuntimeError> {
    runtime()?;
    let (handle, mut driver, mut rx) = new_run(plan, config, external);
    driver.inline_host = true;
    let plan = driver.plan.clone();
    let mut sched = Scheduler::new(&plan.dag, &plan.policies, driver.config.options);
    let mut work = Work::default();
    driver.begin(&mut sched, &mut work);
    let status = driver
        .drive(&mut sched, &mut work, &mut rx, None, Some(host))
        .expect("without a budget the loop runs to the end");
    driver.finish(&sched, status);
    Ok(handle)
}

fn new_run(
    plan: Arc<Plan>,
    config: RunConfig,
    external: Option<Arc<dyn ExternalExecutor>>,
) -> (RunHandle, Driver, Receiver<Msg>) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        run_id: config.run_id.clone(),
        cancel: AtomicBool::new(false),
        published: Mutex::new(Published::default()),
        events_waiters: Waiters::default(),
        end_waiters: Waiters::default(),
        changed_async: tokio::sync::Notify::new(),
        #[cfg(test)]
        stolen: std::sync::atomic::AtomicUsize::new(0),
    });
    let handle = RunHandle {
        shared: shared.clone(),
        tx: tx.clone(),
    };
    (handle, Driver::new(plan, config, external, shared, tx), rx)
}

mod finish;
mod map;
mod python;
mod start;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry { node: NodeIdx, attempt: u32 },
    NodeDeadline { node: NodeIdx, attempt: u32 },
}

struct Driver {
    plan: Arc<Plan>,
    config: RunConfig,
    /// Shared with every Lua job instead of a `String` copy per node.
    run_id: Arc<str>,
    external: Option<Arc<dyn ExternalExecutor>>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    records: Vec<NodeRecord>,
    /// The graph nodes' outputs, for the external calls that read their parents' (made
    /// on the first such call: a run without one needs none).
    outputs: Option<Arc<RunOutputs>>,
    tokens: Vec<Option<Arc<AtomicBool>>>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    deadline: Option<Instant>,
    started: Instant,
    seq: u64,
    /// When the last attempt ended, until the instructions that followed it are carried
    /// out (cleared before the loop can wait): the next node started in that step (in a
    /// chain, the one that end made ready) takes that time as its start, one clock read
    /// fewer per node.
    ended_at: Option<f64>,
    buffered: Vec<RunEvent>,
    /// The failure that decided the run (first final node failure).
    first_failure: Option<NodeIdx>,
    /// This run's Lua attempts handed to the pool and not yet picked up there.
    backlog: Backlog,
    /// Mapped nodes expanded so far, in the order of their items' indices.
    expanded: Vec<map::Expanded>,
    /// Driven by [`run_inline`]: external nodes may run on the loop's thread.
    inline_host: bool,
    /// External attempts made ready to run here by the current instructions.
    ready_here: VecDeque<python::Waiting>,
    /// External attempts waiting to run here, which the watcher can move to the pool.
    handoff: Option<Arc<python::Handoff>>,
}

/// The driver loop's working state besides the scheduler: instructions to carry out and
/// Lua attempts picked to run on the loop's thread. Owned, so it moves with the run.
#[derive(Default)]
struct Work {
    out: Vec<Instruction>,
    todo: Vec<Instruction>,
    inline: Vec<(NodeIdx, u32)>,
}

const PUBLISH_BATCH: usize = 512;

/// How long the driver polls for a completion before it sleeps on the channel.
const SPIN: Duration = Duration::from_micros(50);

/// How long a run driven by [`run_inline`] waits before it looks for an interrupt again.
const HOST_POLL: Duration = Duration::from_millis(50);

impl Driver {
    fn new(
        plan: Arc<Plan>,
        config: RunConfig,
        external: Option<Arc<dyn ExternalExecutor>>,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
    ) -> Self {
        let n = plan.dag.len();
        let started = Instant::now();
        let record = NodeRecord {
            status: NodeState::Pending,
            output: None,
            error: None,
            attempts: 0,
            skip_reason: None,
            cache: None,
            started_at: None,
            finished_at: None,
        };
        Self {
            deadline: config.timeout.map(|t| started + t),
            run_id: config.run_id.as_str().into(),
            plan,
            config,
            external,
            shared,
            tx,
            records: vec![record; n],
            outputs: None,
            tokens: vec![None; n],
            timers: BinaryHeap::new(),
            started,
            seq: 0,
            ended_at: None,
            buffered: Vec::new(),
            first_failure: None,
            backlog: Arc::default(),
            expanded: Vec::new(),
            inline_host: false,
            ready_here: VecDeque::new(),
            handoff: None,
        }
    }

    fn emit(&mut self, kind: EventKind, node: Option<NodeIdx>, attempt: u32, detail: EventDetail) {
        if self.config.events {
            self.emit_at(unix_now(), kind, node, attempt, detail);
        }
    }

    /// [`Driver::emit`] with the time already read (the node record's own timestamp).
    fn emit_at(
        &mut self,
        time: f64,
        kind: EventKind,
        node: Option<NodeIdx>,
        attempt: u32,
        detail: EventDetail,
    ) {
        if !self.config.events {
            return;
        }
        self.seq += 1;
        // An item's events name its mapped node and its index.
        let (node, item) = match node {
            Some(n) if n as usize >= self.plan.dag.len() => match self.item_of(n) {
                Some((e, i)) => (Some(e.node), Some(i)),
                None => (Some(n), None),
            },
            n => (n, None),
        };
        self.buffered.push(RunEvent {
            seq: self.seq,
            kind,
            node,
            item,
            attempt,
            time,
            detail,
        });
        if self.buffered.len() >= PUBLISH_BATCH {
            self.publish();
        }
    }

    fn publish(&mut self) {
        if self.buffered.is_empty() {
            return;
        }
        self.shared.lock().events.extend(self.buffered.drain(..));
        self.shared.notify_events();
    }

    fn run(mut self, rx: &mut Receiver<Msg>) {
        let plan = self.plan.clone();
        let mut sched = Scheduler::new(&plan.dag, &plan.policies, self.config.options);
        let mut work = Work::default();
        self.begin(&mut sched, &mut work);
        let status = self
            .drive(&mut sched, &mut work, rx, None, None)
            .expect("without a budget the loop runs to the end");
        self.finish(&sched, status);
    }

    fn begin(&mut self, sched: &mut Scheduler<'_>, work: &mut Work) {
        let completed = std::mem::take(&mut self.config.completed);
        let mut nodes = Vec::with_capacity(completed.len());
        for (node, output) in completed {
            if (node as usize) < self.records.len() {
                self.records[node as usize].output = Some(Arc::new(output));
                sched.mark_completed(node);
                nodes.push(node);
            }
        }
        if let (false, Some(cache)) = (nodes.is_empty(), &self.config.cache) {
            let (plan, inputs) = (&self.plan, &self.config.inputs);
            let cancel = &self.shared.cancel;
            let records = &mut self.records;
            super::cache::key_completed(
                plan,
                &**cache,
                &self.run_id,
                inputs,
                &nodes,
                records,
                cancel,
            );
        }
        self.emit(EventKind::RunStarted, None, 0, EventDetail::None);
        sched.start(&mut work.out);
    }

    /// Step the run until it ends (its status). With a `budget` (driven inline on a
    /// caller's thread) it also stops, returning `None`, once the budget is spent or when
    /// it would have to wait for work elsewhere; `work` then holds where it stopped, for
    /// the loop to go on from on another thread. With a `host` (driven by [`run_inline`])
    /// external nodes run here too, and waits release the host's lock.
    fn drive(
        &mut self,
        sched: &mut Scheduler<'_>,
        work: &mut Work,
        rx: &mut Receiver<Msg>,
        budget: Option<Instant>,
        host: Option<&dyn InlineHost>,
    ) -> Option<RunStatus> {
        let Work { out, todo, inline } = work;
        let mut steps: u32 = 0;
        loop {
            steps = steps.wrapping_add(1);
            // A run of quick Lua or no-op nodes checks for Ctrl-C now and then.
            if steps.is_multiple_of(64) && host.is_some_and(InlineHost::interrupted) {
                self.interrupt(sched, out);
            }
            let applied = self.apply(sched, out, todo, inline, budget);
            self.ended_at = None; // the loop may wait next: a later start reads the clock
            if let Some(status) = applied {
                return Some(status);
            }
            if budget.is_some_and(|b| Instant::now() >= b) {
                self.leave_caller();
                return None; // a long chain of quick nodes: the rest elsewhere
            }
            // Work-first: hand all but one ready Lua node to the pool, run the last here.
            // Inline on a caller's thread, the backlog waits for this thread (below) and
            // pool jobs start only when the run leaves it: a small fan-out wakes no thread.
            if let Some((node, attempt)) = inline.pop() {
                self.dispatch_all_lua(inline, budget.is_none());
                self.publish();
                let mut ran = None;
                match host {
                    // Lua needs no GIL: other Python threads go on meanwhile.
                    Some(host) => host.blocking(&mut || {
                        ran = self.run_lua_inline(node, attempt, budget);
                    }),
                    None => ran = self.run_lua_inline(node, attempt, budget),
                }
                let Some(mut result) = ran else {
                    // Out of budget: the attempt runs again wherever the loop goes on.
                    inline.push((node, attempt));
                    self.leave_caller();
                    return None;
                };
                let logs = attempt_logs(&mut result);
                self.fire_timers(sched, out);
                self.finish_attempt(sched, out, node, attempt, result, logs);
                continue;
            }
            if !out.is_empty() {
                continue;
            }
            // An external node to call here (driven by `run_inline`).
            if self.run_external_here(sched, out, host) {
                continue;
            }
            // Nothing runnable here: take what came back, or wait for it.
            self.fire_timers(sched, out);
            if !out.is_empty() {
                continue;
            }
            // From here the loop may wait or give the run back: a start after that reads
            // the clock (an end that `fire_timers` recorded made nothing ready).
            self.ended_at = None;
            if let Some(b) = budget {
                if let Ok(msg) = rx.try_recv() {
                    self.on_msg(sched, out, msg);
                    continue;
                }
                // The run's waiting Lua attempts, here, within the budget.
                if let Some(q) = self.take_waiting() {
                    let Some(q) = self.run_taken(sched, out, q, Some(b)) else {
                        continue;
                    };
                    // Out of budget: it runs again from its start wherever it is taken.
                    lock(&self.backlog).queue.push_front(q);
                }
                self.leave_caller();
                return None; // waiting is for a thread of our own, not the caller's
            }
            self.publish();
            if let Ok(msg) = rx.try_recv() {
                self.on_msg(sched, out, msg);
                continue;
            }
            // This run's Lua attempts still waiting for a pool thread (a wide fan-out): run
            // the next one here rather than wait for a thread to get to it.
            if let Some(q) = self.take_waiting() {
                #[cfg(test)]
                self.shared.stolen.fetch_add(1, Ordering::SeqCst);
                if let Some(mut q) = self.run_taken(sched, out, q, None) {
                    // Long: a pool thread runs it from the start.
                    q.stealable = false;
                    self.enqueue(q, true);
                }
                continue;
            }
            // Work in flight usually answers within microseconds (a chain hands each node
            // to a pool thread and back): poll briefly before paying for a sleep and wake.
            // A host's lock is released meanwhile, and its interrupts looked at as often as
            // `LocalRun.wait` would.
            let msg = match host {
                Some(host) => self.wait_here(sched, out, rx, host),
                None => python::wait_msg(rx, sched.running() > 0, self.next_wakeup(), None),
            };
            match msg {
                Some(msg) => self.on_msg(sched, out, msg),
                None => self.fire_timers(sched, out),
            }
            while let Ok(msg) = rx.try_recv() {
                self.on_msg(sched, out, msg);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_msg(&mut self, sched: &mut Scheduler<'_>, out: &mut Vec<Instruction>, msg: Msg) {
        match msg {
            Msg::Done {
                node,
                attempt,
                result,
                logs,
            } => self.finish_attempt(sched, out, node, attempt, result, logs),
            Msg::ConditionPassed { node, attempt } => {
                self.condition_passed(sched, out, node, attempt);
            }
            Msg::ConditionFalse { node, attempt } => {
                if sched.state(node) == NodeState::Running && sched.attempts(node) == attempt {
                    self.tokens[node as usize] = None;
                    sched.handle(Event::ConditionFalse { node, attempt }, out);
                }
            }
            Msg::Log {
                node,
                attempt,
                lines,
            } => {
                let now = unix_now();
                for line in lines {
                    self.emit_at(
                        now,
                        EventKind::NodeLog,
                        Some(node),
                        attempt,
                        EventDetail::Log(line),
                    );
                }
            }
            Msg::Cancel => sched.handle(Event::Stop(StopReason::Cancelled), out),
        }
    }

    fn fire_timers(&mut self, sched: &mut Scheduler<'_>, out: &mut Vec<Instruction>) {
        if self.deadline.is_none() && self.timers.is_empty() {
            return; // nothing to fire: no clock read (a chain calls this once per node)
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| d <= now) && sched.stop_reason().is_none() {
            self.deadline = None;
            sched.handle(Event::Stop(StopReason::TimedOut), out);
        }
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Retry { node, attempt } => {
                    sched.handle(Event::RetryDue { node, attempt }, out);
                }
                Timer::NodeDeadline { node, attempt } => {
                    if sched.state(node) == NodeState::Running && sched.attempts(node) == attempt {
                        let timeout = self.plan.policies[self.policy_index(node)].timeout;
                        let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
                        // Still in its condition: a retry would not check it again.
                        let (what, retryable) = if self.condition_pending(node, attempt) {
                            ("'s when", false)
                        } else {
                            ("", true)
                        };
                        let failure = NodeFailure::new(
                            ErrorKind::NodeTimeout.as_str(),
                            format!(
                                "node '{}'{what} timed out after {secs}s",
                                self.node_id(node)
                            ),
                            retryable,
                        );
                        self.finish_attempt(sched, out, node, attempt, Err(failure), Vec::new());
                    }
                }
            }
        }
    }

    fn policy_index(&self, node: NodeIdx) -> usize {
        if self.plan.policies.len() == 1 {
            0
        } else {
            self.owner(node) as usize
        }
    }

    /// Carry out the scheduler's instructions. Returns the run status once it finished.
    /// With a `budget`, stops once it is spent and leaves what is left in `out` (no-op
    /// nodes complete in here: a long chain or a wide fan-out of them is many waves).
    fn apply(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        todo: &mut Vec<Instruction>,
        inline: &mut Vec<(NodeIdx, u32)>,
        budget: Option<Instant>,
    ) -> Option<RunStatus> {
        while !out.is_empty() {
            std::mem::swap(out, todo);
            let mut done = 0;
            while done < todo.len() {
                if budget.is_some() && done % 64 == 0 && budget.is_some_and(|b| Instant::now() >= b)
                {
                    // Spent: the rest of this wave goes first, before what it produced.
                    let rest: Vec<Instruction> = todo.drain(done..).collect();
                    todo.clear();
                    out.splice(0..0, rest);
                    return None;
                }
                let ins = todo[done];
                done += 1;
                match ins {
                    Instruction::Execute { node, attempt } => {
                        if self.execute(sched, out, node, attempt) {
                            inline.push((node, attempt));
                        }
                    }
                    Instruction::ScheduleRetry {
                        node,
                        attempt,
                        delay,
                    } => {
                        self.timers.push(Reverse((
                            Instant::now() + delay,
                            Timer::Retry { node, attempt },
                        )));
                        let error = self.records[node as usize].error.as_deref().cloned();
                        self.emit(
                            EventKind::NodeRetrying,
                            Some(node),
                            attempt - 1,
                            EventDetail::Retry { delay, error },
                        );
                    }
                    Instruction::Abort { node } => {
                        if let Some(t) = &self.tokens[node as usize] {
                            t.store(true, Ordering::SeqCst);
                        }
                        let attempt = self.records[node as usize].attempts;
                        let abandon = match self.plan.kind(self.owner(node)) {
                            // Picked to run inline but not started: it never runs.
                            Kind::Lua => {
                                let before = inline.len();
                                inline.retain(|&(n, _)| n != node);
                                inline.len() != before
                            }
                            // Python cannot be interrupted; the run does not wait for it
                            // (its thread finishes in the background, its result ignored).
                            Kind::External => true,
                            Kind::Noop => false,
                        } || self.condition_pending(node, attempt);
                        if abandon {
                            let failure = never_started(&self.plan, self.owner(node));
                            self.finish_attempt(
                                sched,
                                out,
                                node,
                                attempt,
                                Err(failure),
                                Vec::new(),
                            );
                        }
                    }
                    Instruction::Skipped { node, reason } => {
                        let rec = &mut self.records[node as usize];
                        rec.skip_reason = Some(reason);
                        rec.started_at = None;
                        rec.attempts = 0;
                        let detail = EventDetail::Skipped(reason);
                        self.emit(EventKind::NodeSkipped, Some(node), 0, detail);
                    }
                    Instruction::Cancelled { node } => {
                        let attempt = self.records[node as usize].attempts;
                        self.emit(
                            EventKind::NodeCancelled,
                            Some(node),
                            attempt,
                            EventDetail::None,
                        );
                    }
                    Instruction::MapFinished { node, failed } => {
                        self.map_finished(sched, node, failed);
                    }
                    Instruction::Finish { status } => {
                        todo.clear();
                        return Some(status);
                    }
                }
            }
            todo.clear();
        }
        None
    }

    fn results_of(&self, node: NodeIdx) -> Vec<(NodeIdx, Arc<Value>)> {
        self.plan
            .dag
            .parents(self.owner(node))
            .iter()
            .map(|&p| {
                let out = self.records[p as usize]
                    .output
                    .clone()
                    .unwrap_or_else(empty_output);
                (p, out)
            })
            .collect()
    }

    /// The parents' outputs of an external call of `node`: read when the call reads them,
    /// from the run's outputs, unless its trigger rule may run it before all its parents
    /// finished (then as they are now).
    fn parents(&mut self, node: NodeIdx) -> Parents {
        if self.plan.policies[self.policy_index(node)]
            .trigger_rule
            .runs_early()
        {
            return Parents::Given(self.results_of(node));
        }
        let (plan, records) = (&self.plan, &self.records);
        let outputs = self
            .outputs
            .get_or_insert_with(|| Arc::new(RunOutputs::new(plan.clone(), records)));
        Parents::Finished(outputs.clone(), self.owner(node))
    }

    /// Record the output of `node`, now in its record, where external calls read it.
    fn output_set(&self, node: NodeIdx) {
        if let (Some(outputs), Some(output)) = (&self.outputs, &self.records[node as usize].output)
        {
            outputs.set(node, output);
        }
    }

    fn new_token(&mut self, node: NodeIdx) -> Arc<AtomicBool> {
        let t = Arc::new(AtomicBool::new(self.shared.cancel.load(Ordering::SeqCst)));
        self.tokens[node as usize] = Some(t.clone());
        t
    }

    fn finish(mut self, sched: &Scheduler<'_>, status: RunStatus) {
        let n = self.plan.dag.len();
        // Items live on in their mapped nodes' outputs only.
        self.records.truncate(n);
        for i in 0..n {
            let state = sched.state(i as NodeIdx);
            let rec = &mut self.records[i];
            rec.status = state;
            if state != NodeState::Succeeded {
                rec.output = None;
            }
        }
        let error = match (status, sched.stop_reason()) {
            (RunStatus::Succeeded, _) => None,
            (_, Some(StopReason::TimedOut)) => Some(RunError {
                kind: ErrorKind::RunTimeout.as_str().to_owned(),
                message: format!(
                    "run timed out after {}s",
                    self.config.timeout.map_or(0.0, |t| t.as_secs_f64())
                ),
                node_id: None,
            }),
            (RunStatus::Failed, _) => self.first_failure.map(|node| {
                let failure = self.records[node as usize]
                    .error
                    .clone()
                    .expect("a failed node has an error");
                RunError {
                    message: format!(
                        "node '{}' failed: {}",
                        self.plan.dag.id(node),
                        failure.message
                    ),
                    kind: failure.kind,
                    node_id: Some(self.plan.dag.id(node).to_owned()),
                }
            }),
            (RunStatus::Cancelled, _) => Some(RunError {
                kind: ErrorKind::RunCancelled.as_str().to_owned(),
                message: "run cancelled".to_owned(),
                node_id: None,
            }),
        };
        self.emit(
            EventKind::RunFinished,
            None,
            0,
            EventDetail::Finished(status),
        );
        let outcome = RunOutcome {
            run_id: self.config.run_id.clone(),
            status,
            error,
            duration: self.started.elapsed(),
            nodes: std::mem::take(&mut self.records),
        };
        let mut published = self.shared.lock();
        published.events.extend(self.buffered.drain(..));
        published.outcome = Some(Arc::new(outcome));
        drop(published);
        self.shared.notify_end();
    }

    fn dispatch_lua(&mut self, node: NodeIdx, attempt: u32) {
        let q = self.queued(node, attempt);
        self.enqueue(q, false);
    }

    /// [`Driver::dispatch_lua`] for every attempt of `ready` (emptied), a batch at a time:
    /// the backlog's lock is taken once per batch, not once per node (the pool threads
    /// take from it meanwhile). Without `start`, no pool job is started for them (yet: see
    /// [`Driver::leave_caller`]).
    fn dispatch_all_lua(&mut self, ready: &mut Vec<(NodeIdx, u32)>, start: bool) {
        const BATCH: usize = 256;
        let mut batch = Vec::with_capacity(ready.len().min(BATCH));
        for chunk in ready.chunks(BATCH) {
            batch.extend(chunk.iter().map(|&(n, a)| self.queued(n, a)));
            self.enqueue_all(&mut batch, start);
        }
        ready.clear();
    }

    /// A run driven inline leaves its caller's thread (its budget is spent, or it would
    /// wait): publish what it buffered, and start pool jobs for the attempts waiting in the
    /// backlog (as [`Driver::enqueue`] would have), which it had left for that thread.
    fn leave_caller(&mut self) {
        self.publish();
        let start = Self::drainers_to_start(&mut lock(&self.backlog), false);
        self.start_drainers(start);
    }

    /// The next attempt waiting in the backlog, unless it is one the driver gave back
    /// (long: a pool thread runs it).
    fn take_waiting(&self) -> Option<Queued> {
        let mut waiting = lock(&self.backlog);
        match waiting.queue.front() {
            Some(q) if q.stealable => waiting.queue.pop_front(),
            _ => None,
        }
    }

    fn queued(&mut self, node: NodeIdx, attempt: u32) -> Queued {
        Queued {
            cancel: self.new_token(node),
            job: self.lua_job(node, attempt),
            stealable: true,
        }
    }

    /// Put an attempt in the backlog (at the front: one the driver gives back), and start a
    /// pool job to drain it unless enough are at it already (see
    /// [`Driver::drainers_to_start`]).
    fn enqueue(&self, q: Queued, front: bool) {
        let start = {
            let mut waiting = lock(&self.backlog);
            if front {
                waiting.queue.push_front(q);
            } else {
                waiting.queue.push_back(q);
            }
            Self::drainers_to_start(&mut waiting, front)
        };
        self.start_drainers(start);
    }

    /// [`Driver::enqueue`] of every attempt of `batch` (emptied) at the back, in order;
    /// without `start`, no pool job is started for them.
    fn enqueue_all(&self, batch: &mut Vec<Queued>, start: bool) {
        let start = {
            let mut waiting = lock(&self.backlog);
            waiting.queue.extend(batch.drain(..));
            if start {
                Self::drainers_to_start(&mut waiting, false)
            } else {
                0
            }
        };
        self.start_drainers(start);
    }

    /// How many pool jobs to start for the backlog, counted as draining: one per waiting
    /// attempt at most, and one per core but the driver's own, which takes from the backlog
    /// too (one more would have three threads share two cores, taking turns on the
    /// backlog's lock), but at least one: a long attempt the driver gave back runs on the
    /// pool only. Once the driver gave one back (`gave_back`) one per core: the driver
    /// takes no more while that attempt waits at the front, so it would leave a core idle.
    fn drainers_to_start(waiting: &mut Waiting, gave_back: bool) -> usize {
        let cores = lua_pool().max_threads();
        let most = if gave_back {
            cores
        } else {
            cores.saturating_sub(1).max(1)
        };
        let start = most
            .saturating_sub(waiting.drainers)
            .min(waiting.queue.len());
        waiting.drainers += start;
        start
    }

    /// Start `n` pool jobs draining the backlog.
    fn start_drainers(&self, n: usize) {
        for _ in 0..n {
            let (backlog, tx, plan) = (self.backlog.clone(), self.tx.clone(), self.plan.clone());
            let (run_id, inputs) = (self.run_id.clone(), self.config.inputs.clone());
            lua_pool().submit(Box::new(move || {
                drain(&backlog, &plan, (&run_id, &inputs), &tx);
            }));
        }
    }

    /// Run an attempt taken from the backlog here ([`Driver::run_queued`]) and record its
    /// end; the attempt back if its budget ran out first.
    fn run_taken(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        mut q: Queued,
        budget: Option<Instant>,
    ) -> Option<Queued> {
        let Some(mut result) = self.run_queued(&mut q, budget) else {
            return Some(q);
        };
        let logs = attempt_logs(&mut result);
        self.fire_timers(sched, out);
        self.finish_attempt(sched, out, q.job.node, q.job.attempt, result, logs);
        None
    }

    /// Run a queued Lua attempt on the driver's thread, as if it had been picked to run
    /// inline ([`Driver::run_here`]; if the attempt's own token is already set, it does not
    /// run at all). It gets [`STEAL_BUDGET`], watched late, or the caller's `budget` (inline
    /// on a caller's thread), watched on time; `None` if that ran out first (the attempt
    /// has no effects: it can simply run again, on a pool thread).
    fn run_queued(
        &self,
        q: &mut Queued,
        budget: Option<Instant>,
    ) -> Option<Result<ExecOk, NodeFailure>> {
        if q.cancel.load(Ordering::Relaxed) {
            return Some(Err(never_started(&self.plan, q.job.owner)));
        }
        if budget.is_some_and(|b| Instant::now() >= b) {
            return None;
        }
        q.job.budget = Some(budget.unwrap_or_else(|| Instant::now() + STEAL_BUDGET));
        let mut call = q.job.call(&self.run_id, &self.config.inputs);
        call.late_budget = budget.is_none();
        let result = self.run_here(&call);
        q.job.budget = None;
        result
    }

    /// Execute a Lua attempt on the driver's thread under its budget: the run-level cancel
    /// flag is the one that can change while the driver is busy here. `None` if the budget
    /// ran out first.
    fn run_here(&self, call: &LuaCall<'_>) -> Option<Result<ExecOk, NodeFailure>> {
        match contained(
            || self.plan.dag.id(call.owner),
            || call.execute(&self.plan, &self.shared.cancel),
        ) {
            Err(f) if f.kind == PREEMPTED => None,
            result => Some(result),
        }
    }

    /// Run a Lua attempt on this thread; `None` if `budget` ran out first (before it
    /// started, or by interrupting it: it has no effects, so it can simply run again).
    fn run_lua_inline(
        &mut self,
        node: NodeIdx,
        attempt: u32,
        budget: Option<Instant>,
    ) -> Option<Result<ExecOk, NodeFailure>> {
        if budget.is_some_and(|b| Instant::now() >= b) {
            return None;
        }
        let results = self.lua_results(node);
        let policy = &self.plan.policies[self.policy_index(node)];
        let owner = self.owner(node);
        let item = self
            .item_of(node)
            .map(|(e, i)| (i, e.items[i as usize].as_ref()));
        self.run_here(&LuaCall {
            attempt,
            owner,
            item,
            run_id: &self.run_id,
            inputs: &self.config.inputs,
            results: &results,
            node_timeout: policy.timeout,
            deadline: self.deadline,
            budget,
            late_budget: false,
        })
    }

    /// The parents' outputs, if the node's script can read them.
    fn lua_results(&self, node: NodeIdx) -> Vec<(NodeIdx, Arc<Value>)> {
        match &self.plan.kinds[self.owner(node) as usize] {
            NodeKind::Lua { script, .. } if script.reads_results() => self.results_of(node),
            _ => Vec::new(),
        }
    }

    fn lua_job(&self, node: NodeIdx, attempt: u32) -> LuaJob {
        let policy = &self.plan.policies[self.policy_index(node)];
        LuaJob {
            node,
            attempt,
            owner: self.owner(node),
            item: self.item_call(node),
            results: self.lua_results(node),
            node_timeout: policy.timeout,
            deadline: self.deadline,
            budget: None,
        }
    }
}

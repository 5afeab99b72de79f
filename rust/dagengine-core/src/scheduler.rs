//! The scheduler: a sans-I/O state machine. Events go in ([`Scheduler::handle`]),
//! instructions come out; the caller executes nodes, keeps the clock and feeds back what
//! happened. Nothing here blocks, sleeps or spawns, so it is driven the same way by the
//! local runner and the engine server, and tested without either.
//!
//! Failure semantics: a node that fails after its retries marks every descendant
//! `Skipped`; independent branches keep running and the run ends `Failed`. With
//! `fail_fast` the first final failure cancels everything not yet finished.

use std::collections::VecDeque;
use std::time::Duration;

use crate::graph::{Dag, NodeIdx};

/// State of one node within one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Waiting for parents (or for a slot under `max_parallel`).
    Pending,
    /// An attempt is executing.
    Running,
    /// An attempt failed; the next one is due after a backoff delay.
    Retrying,
    Succeeded,
    Failed,
    /// Not run because an ancestor failed.
    Skipped,
    /// Not run, or interrupted, because the run was cancelled (or `fail_fast`).
    Cancelled,
}

impl NodeState {
    /// True for states a node never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    /// Lower-case name used on the wire and in Python.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Every transition a node may take, in one table. [`Scheduler`] checks each move against
/// it (in debug builds) and the tests exercise every row.
pub const TRANSITIONS: &[(NodeState, NodeState)] = &[
    (NodeState::Pending, NodeState::Running),
    (NodeState::Pending, NodeState::Succeeded), // output given up front (resumed run)
    (NodeState::Pending, NodeState::Skipped),
    (NodeState::Pending, NodeState::Cancelled),
    (NodeState::Running, NodeState::Succeeded),
    (NodeState::Running, NodeState::Failed),
    (NodeState::Running, NodeState::Retrying),
    (NodeState::Running, NodeState::Cancelled),
    (NodeState::Retrying, NodeState::Running),
    (NodeState::Retrying, NodeState::Cancelled),
];

/// Final state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// Lower-case name used on the wire and in Python.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The caller cancelled the run.
    Cancelled,
    /// The run's own timeout passed.
    TimedOut,
}

/// Exponential backoff between attempts: `initial * factor^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_mins(1),
        }
    }
}

impl Backoff {
    /// Delay before attempt `next_attempt` (2 for the first retry).
    pub fn delay(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(1_000) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }
}

/// Per-node execution policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodePolicy {
    /// Attempts after the first one.
    pub retries: u32,
    pub backoff: Backoff,
    /// Wall time of one attempt; the driver enforces it and reports a failure.
    pub timeout: Option<Duration>,
}

/// Per-run options the state machine itself enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// At most this many nodes running at once (`None`: no limit).
    pub max_parallel: Option<usize>,
    /// Cancel everything unfinished after the first final node failure.
    pub fail_fast: bool,
}

/// What happened, as reported by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Attempt `attempt` of `node` returned an output.
    NodeSucceeded { node: NodeIdx, attempt: u32 },
    /// Attempt `attempt` of `node` failed; `retryable: false` skips remaining retries.
    NodeFailed {
        node: NodeIdx,
        attempt: u32,
        retryable: bool,
    },
    /// The backoff delay announced by [`Instruction::ScheduleRetry`] has passed.
    RetryDue { node: NodeIdx, attempt: u32 },
    /// Stop the run: cancel what has not started, interrupt what is running.
    Stop(StopReason),
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// Start attempt `attempt` (1-based) of `node`.
    Execute { node: NodeIdx, attempt: u32 },
    /// Attempt `attempt - 1` failed: send [`Event::RetryDue`] after `delay`.
    ScheduleRetry {
        node: NodeIdx,
        attempt: u32,
        delay: Duration,
    },
    /// Interrupt the running attempt of `node` (it will still report back).
    Abort { node: NodeIdx },
    /// `node` will not run because an ancestor failed.
    Skipped { node: NodeIdx },
    /// `node` will not run (or its result no longer counts) because the run stopped.
    Cancelled { node: NodeIdx },
    /// Nothing is running or due any more; the run is over.
    Finish { status: RunStatus },
}

/// A run's scheduling state without the graph and policies it refers to: what a [`Scheduler`]
/// owns, and what [`Scheduler::suspend`] hands out so a run can move between threads.
#[derive(Debug)]
pub struct SuspendedScheduler {
    options: RunOptions,
    state: Vec<NodeState>,
    waiting_on: Vec<u32>,
    attempts: Vec<u32>,
    ready: VecDeque<NodeIdx>,
    running: usize,
    retrying: usize,
    unfinished: usize,
    failed: bool,
    stopped: Option<StopReason>,
    finished: bool,
}

/// The state machine of one run.
#[derive(Debug)]
pub struct Scheduler<'a> {
    dag: &'a Dag,
    policies: &'a [NodePolicy],
    run: SuspendedScheduler,
}

impl<'a> Scheduler<'a> {
    /// A scheduler for one run of `dag` (which must be preprocessed). `policies` has one
    /// entry per node, or exactly one applied to every node.
    ///
    /// # Panics
    /// If the graph was not preprocessed or `policies` has the wrong length.
    pub fn new(dag: &'a Dag, policies: &'a [NodePolicy], options: RunOptions) -> Self {
        assert!(dag.is_preprocessed(), "Dag::preprocess must succeed first");
        assert!(
            policies.len() == dag.len() || policies.len() == 1,
            "one policy per node, or one for all"
        );
        let n = dag.len();
        let waiting_on = (0..n as u32).map(|i| dag.parents(i).len() as u32).collect();
        Self {
            dag,
            policies,
            run: SuspendedScheduler {
                options,
                state: vec![NodeState::Pending; n],
                waiting_on,
                attempts: vec![0; n],
                ready: VecDeque::new(),
                running: 0,
                retrying: 0,
                unfinished: n,
                failed: false,
                stopped: None,
                finished: false,
            },
        }
    }

    /// Detach the run's state from the graph and policies it borrows, to carry the run to
    /// another thread (whose owner holds the same graph); [`Scheduler::resume`] goes on
    /// from exactly here.
    #[must_use]
    pub fn suspend(self) -> SuspendedScheduler {
        self.run
    }

    /// Go on with a suspended run over the same graph and policies.
    ///
    /// # Panics
    /// If the graph has a different number of nodes than the one the run was suspended
    /// on, or `policies` has the wrong length.
    pub fn resume(dag: &'a Dag, policies: &'a [NodePolicy], run: SuspendedScheduler) -> Self {
        assert_eq!(dag.len(), run.state.len(), "resumed on a different graph");
        assert!(
            policies.len() == dag.len() || policies.len() == 1,
            "one policy per node, or one for all"
        );
        Self { dag, policies, run }
    }

    fn policy(&self, node: NodeIdx) -> &NodePolicy {
        if self.policies.len() == 1 {
            &self.policies[0]
        } else {
            &self.policies[node as usize]
        }
    }

    /// The current state of a node.
    pub fn state(&self, node: NodeIdx) -> NodeState {
        self.run.state[node as usize]
    }

    /// Attempts started so far for a node.
    pub fn attempts(&self, node: NodeIdx) -> u32 {
        self.run.attempts[node as usize]
    }

    /// Whether [`Instruction::Finish`] has been emitted.
    pub fn is_finished(&self) -> bool {
        self.run.finished
    }

    /// Nodes currently running.
    pub fn running(&self) -> usize {
        self.run.running
    }

    fn set(&mut self, node: NodeIdx, to: NodeState) {
        let from = self.run.state[node as usize];
        debug_assert!(
            TRANSITIONS.contains(&(from, to)),
            "illegal transition {from:?} -> {to:?} of node {node}"
        );
        self.run.state[node as usize] = to;
        match from {
            NodeState::Running => self.run.running -= 1,
            NodeState::Retrying => self.run.retrying -= 1,
            _ => {}
        }
        match to {
            NodeState::Running => self.run.running += 1,
            NodeState::Retrying => self.run.retrying += 1,
            s if s.is_terminal() => self.run.unfinished -= 1,
            _ => {}
        }
    }

    /// Mark nodes whose outputs are already known (a resumed run) as succeeded.
    /// Call before [`Scheduler::start`].
    pub fn mark_completed(&mut self, node: NodeIdx) {
        if self.run.state[node as usize] == NodeState::Pending {
            self.set(node, NodeState::Succeeded);
            for &c in self.dag.children(node) {
                self.run.waiting_on[c as usize] -= 1;
            }
        }
    }

    /// Begin the run: emits the first `Execute` instructions (or `Finish` for an empty or
    /// fully completed graph).
    pub fn start(&mut self, out: &mut Vec<Instruction>) {
        for &n in self.dag.topological_order() {
            if self.run.state[n as usize] == NodeState::Pending
                && self.run.waiting_on[n as usize] == 0
            {
                self.run.ready.push_back(n);
            }
        }
        self.dispatch(out);
        self.maybe_finish(out);
    }

    /// Feed one event; append the resulting instructions to `out`.
    ///
    /// Events about an attempt that is no longer current (a late result after a timeout
    /// was already reported, a retry timer for a cancelled node) are ignored.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Instruction>) {
        if self.run.finished {
            return;
        }
        match event {
            Event::NodeSucceeded { node, attempt } => {
                if !self.is_current(node, attempt) {
                    return;
                }
                if self.run.stopped.is_some() {
                    // Finished after it was told to stop: the run no longer waits for it,
                    // but its output is real, so keep it.
                    self.set(node, NodeState::Succeeded);
                } else {
                    self.set(node, NodeState::Succeeded);
                    for &c in self.dag.children(node) {
                        let w = &mut self.run.waiting_on[c as usize];
                        *w -= 1;
                        if *w == 0 && self.run.state[c as usize] == NodeState::Pending {
                            self.run.ready.push_back(c);
                        }
                    }
                }
            }
            Event::NodeFailed {
                node,
                attempt,
                retryable,
            } => {
                if !self.is_current(node, attempt) {
                    return;
                }
                if self.run.stopped.is_some() {
                    self.set(node, NodeState::Cancelled);
                    out.push(Instruction::Cancelled { node });
                } else if retryable && attempt <= self.policy(node).retries {
                    self.set(node, NodeState::Retrying);
                    let delay = self.policy(node).backoff.delay(attempt + 1);
                    out.push(Instruction::ScheduleRetry {
                        node,
                        attempt: attempt + 1,
                        delay,
                    });
                } else {
                    self.set(node, NodeState::Failed);
                    self.run.failed = true;
                    self.skip_descendants(node, out);
                    if self.run.options.fail_fast {
                        self.stop(StopReason::Cancelled, out);
                    }
                }
            }
            Event::RetryDue { node, attempt } => {
                if self.run.state[node as usize] != NodeState::Retrying
                    || self.run.attempts[node as usize] + 1 != attempt
                {
                    return;
                }
                if self
                    .run
                    .options
                    .max_parallel
                    .is_some_and(|m| self.run.running >= m)
                {
                    // Keep its place: it goes out before nodes that became ready later.
                    self.run.ready.push_front(node);
                } else {
                    self.execute(node, out);
                }
            }
            Event::Stop(reason) => self.stop(reason, out),
        }
        self.dispatch(out);
        self.maybe_finish(out);
    }

    fn is_current(&self, node: NodeIdx, attempt: u32) -> bool {
        (node as usize) < self.run.state.len()
            && self.run.state[node as usize] == NodeState::Running
            && self.run.attempts[node as usize] == attempt
    }

    fn execute(&mut self, node: NodeIdx, out: &mut Vec<Instruction>) {
        self.run.attempts[node as usize] += 1;
        self.set(node, NodeState::Running);
        out.push(Instruction::Execute {
            node,
            attempt: self.run.attempts[node as usize],
        });
    }

    fn dispatch(&mut self, out: &mut Vec<Instruction>) {
        if self.run.stopped.is_some() {
            return;
        }
        while self
            .run
            .options
            .max_parallel
            .is_none_or(|m| self.run.running < m)
        {
            let Some(node) = self.run.ready.pop_front() else {
                break;
            };
            match self.run.state[node as usize] {
                // Pending, or a retry that waited for a slot.
                NodeState::Pending | NodeState::Retrying => self.execute(node, out),
                _ => {}
            }
        }
    }

    fn skip_descendants(&mut self, node: NodeIdx, out: &mut Vec<Instruction>) {
        let mut stack: Vec<NodeIdx> = self.dag.children(node).to_vec();
        while let Some(c) = stack.pop() {
            if self.run.state[c as usize] == NodeState::Pending {
                self.set(c, NodeState::Skipped);
                out.push(Instruction::Skipped { node: c });
                stack.extend_from_slice(self.dag.children(c));
            }
        }
    }

    fn stop(&mut self, reason: StopReason, out: &mut Vec<Instruction>) {
        if self.run.stopped.is_some() {
            return;
        }
        self.run.stopped = Some(reason);
        self.run.ready.clear();
        for &n in self.dag.topological_order() {
            match self.run.state[n as usize] {
                NodeState::Pending | NodeState::Retrying => {
                    self.set(n, NodeState::Cancelled);
                    out.push(Instruction::Cancelled { node: n });
                }
                NodeState::Running => out.push(Instruction::Abort { node: n }),
                _ => {}
            }
        }
    }

    fn maybe_finish(&mut self, out: &mut Vec<Instruction>) {
        if self.run.finished
            || self.run.running > 0
            || self.run.retrying > 0
            || !self.run.ready.is_empty()
        {
            return;
        }
        let status = match self.run.stopped {
            // A failure decides the run even when fail_fast cancelled the rest.
            Some(StopReason::TimedOut) => RunStatus::Failed,
            _ if self.run.failed => RunStatus::Failed,
            Some(StopReason::Cancelled) => RunStatus::Cancelled,
            None => {
                debug_assert_eq!(
                    self.run.unfinished, 0,
                    "nothing running yet nodes unfinished"
                );
                RunStatus::Succeeded
            }
        };
        self.run.finished = true;
        out.push(Instruction::Finish { status });
    }

    /// Why the run stopped early, if it did.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.run.stopped
    }
}

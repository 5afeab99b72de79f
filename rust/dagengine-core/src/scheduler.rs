//! The scheduler: a sans-I/O state machine. Events go in ([`Scheduler::handle`]),
//! instructions come out; the caller executes nodes, keeps the clock and feeds back what
//! happened. Nothing here blocks, sleeps or spawns, so it is driven the same way by the
//! local runner and the engine server, and tested without either.
//!
//! Failure semantics: a node runs when its [`TriggerRule`] is met by its parents' outcomes
//! (Airflow's rules and names). With the default, `all_success`, a node that fails after
//! its retries marks every descendant `Skipped` with [`SkipReason::UpstreamFailed`];
//! independent branches keep running. A node whose rule can no longer be met because of
//! failures is skipped with `UpstreamFailed` and counts as failed for its own children;
//! one skipped by its condition ([`Event::ConditionFalse`]) or because its rule cannot be
//! met through skips (`TriggerRule`) counts as skipped. Every rule is a function of the
//! parents' final outcomes; a node is decided as soon as that function's value is certain,
//! so the result does not depend on the order parents finish in. The run ends `Failed`
//! when any node failed, even if rules absorbed the failure. With `fail_fast` the first
//! final failure cancels everything not yet finished.
//!
//! Dynamic fan-out (`map`): a mapped node, told to execute, is expanded by the driver
//! ([`Scheduler::expand`]) into items, scheduled like nodes with indices after the graph's
//! (see [`Scheduler::item`]) under the node's policy, at most [`MapOptions::max_parallel`]
//! at once. The node ends when its items have: [`Instruction::MapFinished`], `Succeeded`
//! unless an item failed for good without [`MapOptions::allow_partial`] (the first such
//! failure stops releasing items and cancels those not started).

use std::collections::VecDeque;
use std::time::Duration;

use crate::graph::{Dag, NodeIdx};

mod map;

use map::Map;
pub use map::MapOptions;

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
    /// Not run: see [`Scheduler::skip_reason`] for why.
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
    (NodeState::Running, NodeState::Skipped), // its condition was false
    (NodeState::Retrying, NodeState::Running),
    (NodeState::Retrying, NodeState::Cancelled),
];

/// When a node runs, given how its parents ended (Airflow's trigger rules). A node without
/// parents always runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TriggerRule {
    /// Every parent succeeded (the default).
    #[default]
    AllSuccess,
    /// Every parent finished, however.
    AllDone,
    /// Every parent failed (or was skipped because of failures upstream).
    AllFailed,
    /// At least one parent succeeded (runs as soon as one does).
    OneSuccess,
    /// At least one parent failed (runs as soon as one does).
    OneFailed,
    /// No parent failed: each succeeded or was skipped.
    NoneFailed,
    /// No parent failed and at least one succeeded.
    NoneFailedMinOneSuccess,
    /// No parent was skipped.
    NoneSkipped,
}

impl TriggerRule {
    /// Every rule, in the order of [`TriggerRule::NAMES`].
    pub const ALL: [TriggerRule; 8] = [
        Self::AllSuccess,
        Self::AllDone,
        Self::AllFailed,
        Self::OneSuccess,
        Self::OneFailed,
        Self::NoneFailed,
        Self::NoneFailedMinOneSuccess,
        Self::NoneSkipped,
    ];

    /// The names a spec uses, comma-separated (for error messages).
    pub const NAMES: &'static str = "all_success, all_done, all_failed, one_success, \
        one_failed, none_failed, none_failed_min_one_success, none_skipped";

    /// The rule's name in specs, on the wire and in Python.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllSuccess => "all_success",
            Self::AllDone => "all_done",
            Self::AllFailed => "all_failed",
            Self::OneSuccess => "one_success",
            Self::OneFailed => "one_failed",
            Self::NoneFailed => "none_failed",
            Self::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            Self::NoneSkipped => "none_skipped",
        }
    }

    /// The rule of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the rule can run a node before every one of its parents finished
    /// (`one_success`, `one_failed`): [`TriggerRule::decide`] says [`Decision::Run`] with
    /// parents `left` for these rules only.
    pub fn runs_early(self) -> bool {
        matches!(self, Self::OneSuccess | Self::OneFailed)
    }

    /// What the rule says given the parents' outcomes so far: `ok` succeeded, `failed`
    /// failed (or were skipped because of failures), `skipped` were skipped otherwise, and
    /// `left` have not finished. `None` while the answer still depends on those `left`.
    // Each rule's arms together read as its table: merging equal arms across rules would not.
    #[allow(clippy::match_same_arms)]
    pub fn decide(self, ok: u32, failed: u32, skipped: u32, left: u32) -> Option<Decision> {
        use Decision::{Run, Skip};
        use SkipReason::{TriggerRule as Rule, UpstreamFailed};
        if ok + failed + skipped + left == 0 {
            return Some(Run);
        }
        let done = left == 0;
        let run_if_done = if done { Some(Run) } else { None };
        match self {
            Self::AllSuccess if failed > 0 => Some(Skip(UpstreamFailed)),
            Self::AllSuccess if done && skipped > 0 => Some(Skip(Rule)),
            Self::AllSuccess | Self::AllDone => run_if_done,
            Self::AllFailed if ok > 0 || skipped > 0 => Some(Skip(Rule)),
            Self::AllFailed => run_if_done,
            Self::OneSuccess if ok > 0 => Some(Run),
            Self::OneSuccess if !done => None,
            Self::OneSuccess if failed > 0 => Some(Skip(UpstreamFailed)),
            Self::OneSuccess => Some(Skip(Rule)),
            Self::OneFailed if failed > 0 => Some(Run),
            Self::OneFailed if !done => None,
            Self::OneFailed => Some(Skip(Rule)),
            Self::NoneFailed if failed > 0 => Some(Skip(UpstreamFailed)),
            Self::NoneFailed => run_if_done,
            Self::NoneFailedMinOneSuccess if failed > 0 => Some(Skip(UpstreamFailed)),
            Self::NoneFailedMinOneSuccess if !done => None,
            Self::NoneFailedMinOneSuccess if ok > 0 => Some(Run),
            Self::NoneFailedMinOneSuccess => Some(Skip(Rule)),
            Self::NoneSkipped if skipped > 0 => Some(Skip(Rule)),
            Self::NoneSkipped => run_if_done,
        }
    }
}

/// Why a node was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Its trigger rule can no longer be met because of failures upstream; counts as
    /// failed for its own children (Airflow's `upstream_failed`).
    UpstreamFailed,
    /// Its condition (`when`) was false.
    Condition,
    /// Its trigger rule can no longer be met because of skips upstream.
    TriggerRule,
}

impl SkipReason {
    /// Lower-case name used on the wire and in Python.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamFailed => "upstream_failed",
            Self::Condition => "condition",
            Self::TriggerRule => "trigger_rule",
        }
    }

    /// The reason of this name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::UpstreamFailed, Self::Condition, Self::TriggerRule]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// What a [`TriggerRule`] says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(SkipReason),
}

/// How a finished node counts for its children's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    // The index of its count in a tally.
    Success = 0,
    Failure = 1,
    Skip = 2,
}

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
    /// When the node runs, given how its parents ended.
    pub trigger_rule: TriggerRule,
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
    /// The condition of `node`, checked by the driver when told to execute attempt
    /// `attempt` (the first), was false: the node is skipped instead of run.
    ConditionFalse { node: NodeIdx, attempt: u32 },
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
    /// `node` will not run, for `reason`.
    Skipped { node: NodeIdx, reason: SkipReason },
    /// `node` will not run (or its result no longer counts) because the run stopped.
    Cancelled { node: NodeIdx },
    /// Every item of the mapped `node` has ended: it `failed` (an item failed for good and
    /// partial results are not allowed; its children hear of it next), or it succeeded and
    /// its output is the list of its items' outputs.
    MapFinished { node: NodeIdx, failed: bool },
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
    /// Why each skipped node was skipped. While an `all_success` node without a tally is
    /// pending, `Some(TriggerRule)` remembers that a parent was skipped.
    skip_reason: Vec<Option<SkipReason>>,
    /// Per node, parents that (succeeded, failed, were skipped), or [`QUEUED`] once its
    /// rule said run; only kept when some node has a rule other than `all_success`, which
    /// needs no counts (its node is queued when its last parent ends: nothing comes after).
    tally: Vec<[u32; 3]>,
    /// Nodes whose end their children have yet to hear of (reused, not per node).
    settle: Vec<(NodeIdx, Outcome)>,
    running: usize,
    retrying: usize,
    unfinished: usize,
    failed: bool,
    stopped: Option<StopReason>,
    finished: bool,
    /// Nodes of the graph; indices from here on are items of mapped nodes.
    nodes: usize,
    /// Expanded mapped nodes, in the order of their items' indices.
    maps: Vec<Map>,
    /// Mapped nodes still running their items (not counted in `running`, so that their
    /// items can use the slots).
    expanded: usize,
}

/// The tally of a node its rule queued to run before all of its parents ended.
const QUEUED: [u32; 3] = [u32::MAX; 3];

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
        let counted = policies
            .iter()
            .any(|p| p.trigger_rule != TriggerRule::AllSuccess);
        Self {
            dag,
            policies,
            run: SuspendedScheduler {
                options,
                state: vec![NodeState::Pending; n],
                waiting_on,
                attempts: vec![0; n],
                ready: VecDeque::new(),
                skip_reason: vec![None; n],
                tally: if counted { vec![[0; 3]; n] } else { Vec::new() },
                settle: Vec::new(),
                running: 0,
                retrying: 0,
                unfinished: n,
                failed: false,
                stopped: None,
                finished: false,
                nodes: n,
                maps: Vec::new(),
                expanded: 0,
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
        assert_eq!(dag.len(), run.nodes, "resumed on a different graph");
        assert!(
            policies.len() == dag.len() || policies.len() == 1,
            "one policy per node, or one for all"
        );
        Self { dag, policies, run }
    }

    fn policy(&self, node: NodeIdx) -> &NodePolicy {
        if self.policies.len() == 1 {
            &self.policies[0]
        } else if (node as usize) < self.run.nodes {
            &self.policies[node as usize]
        } else {
            // An item runs under its mapped node's policy.
            &self.policies[self.run.maps[self.map_of(node)].node as usize]
        }
    }

    /// The current state of a node.
    pub fn state(&self, node: NodeIdx) -> NodeState {
        self.run.state[node as usize]
    }

    /// Why a skipped node was skipped (`None` for a node that is not skipped).
    pub fn skip_reason(&self, node: NodeIdx) -> Option<SkipReason> {
        if self.run.state[node as usize] == NodeState::Skipped {
            self.run.skip_reason[node as usize]
        } else {
            None
        }
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
                if let Some(t) = self.run.tally.get_mut(c as usize) {
                    t[0] += 1;
                }
            }
        }
    }

    /// Begin the run: emits the first `Execute` instructions (or `Finish` for an empty or
    /// fully completed graph).
    pub fn start(&mut self, out: &mut Vec<Instruction>) {
        for &n in self.dag.topological_order() {
            let i = n as usize;
            if self.run.state[i] != NodeState::Pending || self.run.tally.get(i) == Some(&QUEUED) {
                continue;
            }
            // Only completed parents (a resumed run) have ended yet.
            let decision = match self.run.tally.get(i) {
                Some(&[ok, failed, skipped]) => {
                    self.policy(n)
                        .trigger_rule
                        .decide(ok, failed, skipped, self.run.waiting_on[i])
                }
                None => (self.run.waiting_on[i] == 0).then_some(Decision::Run),
            };
            if let Some(d) = decision {
                self.decided(n, d, out);
                self.settle(out);
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
                // Finished after it was told to stop: the run no longer waits for it, but
                // its output is real, so keep it (and `ended` tells no child).
                self.set(node, NodeState::Succeeded);
                self.ended(node, Outcome::Success, out);
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
                } else if (node as usize) >= self.run.nodes {
                    // An item: its mapped node decides what the failure means.
                    self.set(node, NodeState::Failed);
                    self.ended(node, Outcome::Failure, out);
                } else {
                    self.set(node, NodeState::Failed);
                    self.run.failed = true;
                    self.ended(node, Outcome::Failure, out);
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
            Event::ConditionFalse { node, attempt } => {
                if !self.is_current(node, attempt) {
                    return;
                }
                self.skip(node, SkipReason::Condition, out);
                self.ended(node, Outcome::Skip, out);
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

    fn skip(&mut self, node: NodeIdx, reason: SkipReason, out: &mut Vec<Instruction>) {
        self.set(node, NodeState::Skipped);
        self.run.skip_reason[node as usize] = Some(reason);
        out.push(Instruction::Skipped { node, reason });
    }

    /// `node` ended with `outcome`: its children hear of it (unless the run stopped).
    fn ended(&mut self, node: NodeIdx, outcome: Outcome, out: &mut Vec<Instruction>) {
        if self.run.stopped.is_some() {
            return;
        }
        if (node as usize) >= self.run.nodes {
            self.item_ended(node, outcome, out);
            return;
        }
        self.tell_children(node, outcome, out);
        self.settle(out);
    }

    /// Tell the children of every node in `settle` how it ended (see
    /// [`Scheduler::tell_children`]); a child skipped goes on the list in turn.
    fn settle(&mut self, out: &mut Vec<Instruction>) {
        while let Some((node, outcome)) = self.run.settle.pop() {
            self.tell_children(node, outcome, out);
        }
    }

    /// Tell the children of `node` that it ended with `outcome`, deciding each child whose
    /// rule's answer is now certain.
    fn tell_children(&mut self, node: NodeIdx, outcome: Outcome, out: &mut Vec<Instruction>) {
        if outcome == Outcome::Success && self.run.tally.is_empty() {
            // The common case, kept as lean as it was before rules: all_success children
            // of a success; one that was waiting for this parent alone is decided.
            for &c in self.dag.children(node) {
                let i = c as usize;
                let w = &mut self.run.waiting_on[i];
                *w -= 1;
                if *w == 0 && self.run.state[i] == NodeState::Pending {
                    let decision = match self.run.skip_reason[i] {
                        None => Decision::Run,
                        Some(_) => Decision::Skip(SkipReason::TriggerRule),
                    };
                    self.decided(c, decision, out);
                }
            }
            return;
        }
        for &c in self.dag.children(node) {
            let i = c as usize;
            if self.run.state[i] != NodeState::Pending {
                continue; // decided already
            }
            let decision = if let Some(t) = self.run.tally.get_mut(i) {
                if *t == QUEUED {
                    continue; // decided already
                }
                self.run.waiting_on[i] -= 1;
                let left = self.run.waiting_on[i];
                t[outcome as usize] += 1;
                let [ok, failed, skipped] = *t;
                self.policy(c)
                    .trigger_rule
                    .decide(ok, failed, skipped, left)
            } else {
                self.run.waiting_on[i] -= 1;
                let left = self.run.waiting_on[i];
                // all_success without counts: a failure decides at once, a skip once every
                // parent has ended (a later failure would still win).
                match outcome {
                    Outcome::Success if left > 0 => None,
                    Outcome::Success => Some(match self.run.skip_reason[i] {
                        None => Decision::Run,
                        Some(_) => Decision::Skip(SkipReason::TriggerRule),
                    }),
                    Outcome::Failure => Some(Decision::Skip(SkipReason::UpstreamFailed)),
                    Outcome::Skip => {
                        self.run.skip_reason[i] = Some(SkipReason::TriggerRule);
                        (left == 0).then_some(Decision::Skip(SkipReason::TriggerRule))
                    }
                }
            };
            if let Some(d) = decision {
                self.decided(c, d, out);
            }
        }
    }

    fn decided(&mut self, node: NodeIdx, decision: Decision, out: &mut Vec<Instruction>) {
        match decision {
            Decision::Run => {
                if let Some(t) = self.run.tally.get_mut(node as usize) {
                    *t = QUEUED;
                }
                self.run.ready.push_back(node);
            }
            Decision::Skip(reason) => {
                self.skip(node, reason, out);
                let outcome = if reason == SkipReason::UpstreamFailed {
                    Outcome::Failure
                } else {
                    Outcome::Skip
                };
                self.run.settle.push((node, outcome));
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
                NodeState::Running if self.items(n).is_some() => {
                    // Expanded: its items are stopped below, and it ends now.
                    self.run.expanded -= 1;
                    self.run.running += 1;
                    self.set(n, NodeState::Cancelled);
                    out.push(Instruction::Cancelled { node: n });
                }
                NodeState::Running => out.push(Instruction::Abort { node: n }),
                _ => {}
            }
        }
        for item in self.run.nodes as NodeIdx..self.run.state.len() as NodeIdx {
            match self.run.state[item as usize] {
                NodeState::Pending | NodeState::Retrying => {
                    self.set(item, NodeState::Cancelled);
                    out.push(Instruction::Cancelled { node: item });
                }
                NodeState::Running => out.push(Instruction::Abort { node: item }),
                _ => {}
            }
        }
    }

    fn maybe_finish(&mut self, out: &mut Vec<Instruction>) {
        if self.run.finished
            || self.run.running > 0
            || self.run.retrying > 0
            || self.run.expanded > 0
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

//! Lua dispatch: the pool Lua nodes run on, the run's backlog of Lua attempts that pool
//! threads drain (and the driver steals from), and one attempt's execution under its wall
//! limit (node timeout, run deadline or inline budget, whichever comes first). The driver
//! decides where an attempt runs; nothing here depends on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dagengine_core::{ErrorKind, NodeIdx};
use dagengine_lua::{LuaError, NodeInfo};
use serde_json::Value;

use crate::pool::{Growth, Hooks, WorkerPool};

use super::handle::{ExecOk, Msg};
use super::lock;
use super::model::{contained, never_started, LogLine, NodeFailure, NodeKind, Plan};

/// The pool Lua nodes run on when they do not run inline: Lua is pure CPU work, so one
/// thread per core.
pub(super) fn lua_pool() -> &'static WorkerPool {
    static POOL: OnceLock<WorkerPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        WorkerPool::new("dagengine-lua", cores, 64, Growth::Eager, Hooks::default())
    })
}

/// A Lua attempt handed to the pool, waiting for a thread (its node and attempt are the
/// job's).
pub(super) struct Queued {
    pub(super) job: LuaJob,
    pub(super) cancel: Arc<AtomicBool>,
    /// The driver may take it: false once the driver gave it back unfinished (it is long;
    /// a pool thread runs it).
    pub(super) stealable: bool,
}

/// How long the driver runs a node it took from the backlog before it gives it back: it
/// must return to the run's results, timers and cancellations.
pub(super) const STEAL_BUDGET: Duration = Duration::from_millis(1);

/// A run's Lua attempts waiting for a thread. Pool threads drain it: at most one pool job
/// per pool thread takes attempts from the front until none is left (a fan-out of ten
/// thousand nodes is a few pool jobs, not ten thousand); the driver takes from the front
/// too when it would otherwise wait, so its thread runs Lua rather than polling for results.
pub(super) type Backlog = Arc<Mutex<Waiting>>;

#[derive(Default)]
pub(super) struct Waiting {
    pub(super) queue: VecDeque<Queued>,
    /// Pool jobs draining `queue`, queued or running.
    pub(super) drainers: usize,
}

/// A pool job: run the run's waiting Lua attempts until none is left. The run's id and
/// inputs are the job's, not each attempt's: a reference count the driver's and a pool
/// thread's cores would pass back and forth for every node.
pub(super) fn drain(
    backlog: &Backlog,
    plan: &Plan,
    (run_id, inputs): (&str, &Arc<Value>),
    tx: &Sender<Msg>,
) {
    loop {
        let q = {
            let mut waiting = lock(backlog);
            let Some(q) = waiting.queue.pop_front() else {
                waiting.drainers -= 1;
                return;
            };
            q
        };
        let (node, attempt, owner) = (q.job.node, q.job.attempt, q.job.owner);
        let mut result = if q.cancel.load(Ordering::Relaxed) {
            Err(never_started(plan, owner))
        } else {
            contained(
                || plan.dag.id(owner),
                || q.job.call(run_id, inputs).execute(plan, &q.cancel),
            )
        };
        let logs = attempt_logs(&mut result);
        let _ = tx.send(Msg::Done {
            node,
            attempt,
            result,
            logs,
        });
    }
}

/// The lines of the Lua attempt that just ran on this thread, whatever its result: a
/// success's from its output, a failure's (script error, limit, timeout, cancel) from the
/// Lua engine.
pub(super) fn attempt_logs(result: &mut Result<ExecOk, NodeFailure>) -> Vec<LogLine> {
    match result {
        Ok(ok) => std::mem::take(&mut ok.logs),
        Err(_) => dagengine_lua::take_failed_logs()
            .into_iter()
            .map(LogLine::info)
            .collect(),
    }
}

/// What a Lua attempt needs besides the run's id and inputs, owned, so it can move to a
/// pool thread.
pub(super) struct LuaJob {
    /// The node, or an item of a mapped node (`owner`).
    pub(super) node: NodeIdx,
    pub(super) attempt: u32,
    /// The node of the graph whose script runs (`node` itself, or the item's mapped node).
    pub(super) owner: NodeIdx,
    /// An item's index and value.
    pub(super) item: Option<(u32, Arc<Value>)>,
    pub(super) results: Vec<(NodeIdx, Arc<Value>)>,
    pub(super) node_timeout: Option<Duration>,
    pub(super) deadline: Option<Instant>,
    /// Inline on a caller's thread: when to give the thread back ([`start_run_inline`](super::start_run_inline)).
    pub(super) budget: Option<Instant>,
}

/// The failure kind of a Lua attempt interrupted because its inline budget ran out; never
/// reported: the attempt runs again.
pub(super) const PREEMPTED: &str = "dagengine.Preempted";

impl LuaJob {
    /// The attempt, in run `run_id` with `inputs`.
    pub(super) fn call<'a>(&'a self, run_id: &'a str, inputs: &'a Arc<Value>) -> LuaCall<'a> {
        LuaCall {
            attempt: self.attempt,
            owner: self.owner,
            item: self.item.as_ref().map(|(i, v)| (*i, v.as_ref())),
            run_id,
            inputs,
            results: &self.results,
            node_timeout: self.node_timeout,
            deadline: self.deadline,
            budget: self.budget,
            // Only the driver gives a job a budget: it took the job from the backlog.
            late_budget: true,
        }
    }
}

/// A Lua attempt with what it needs borrowed: from a [`LuaJob`] on a pool thread, or from
/// the driver itself when it runs the attempt inline (the run's id and inputs are not
/// cloned for it).
pub(super) struct LuaCall<'a> {
    pub(super) attempt: u32,
    /// The node whose script runs (for an item, its mapped node).
    pub(super) owner: NodeIdx,
    pub(super) item: Option<(u32, &'a Value)>,
    pub(super) run_id: &'a str,
    /// The run's inputs: shared, so each Lua state converts them once per run.
    pub(super) inputs: &'a Arc<Value>,
    pub(super) results: &'a [(NodeIdx, Arc<Value>)],
    pub(super) node_timeout: Option<Duration>,
    pub(super) deadline: Option<Instant>,
    pub(super) budget: Option<Instant>,
    /// The budget may be noticed late (about 2 ms, by the Lua watchdog), as for a node the
    /// driver took from the backlog, rather than with the limit hook set from the first
    /// instruction, as for a caller's thread that wants it back on time
    /// ([`dagengine_lua::execute_item_preemptible`]).
    pub(super) late_budget: bool,
}

impl LuaCall<'_> {
    pub(super) fn execute(&self, plan: &Plan, cancel: &AtomicBool) -> Result<ExecOk, NodeFailure> {
        let NodeKind::Lua { script, limits } = &plan.kinds[self.owner as usize] else {
            unreachable!("only Lua nodes become Lua jobs");
        };
        let item_id;
        let node_id = match self.item {
            Some((index, _)) => {
                item_id = format!("{}[{index}]", plan.dag.id(self.owner));
                &item_id
            }
            None => plan.dag.id(self.owner),
        };
        let mut limits = *limits;
        let now = (self.deadline.is_some() || self.budget.is_some()).then(Instant::now);
        let left = |at: Option<Instant>| Some(at?.saturating_duration_since(now?));
        let (deadline_left, budget_left) = (left(self.deadline), left(self.budget));
        let (timeout, binds) = wall_limit(
            limits.timeout,
            self.node_timeout,
            deadline_left,
            budget_left,
        );
        // A late budget that binds preempts the script; its wall limit is the others'.
        let preempt = self
            .budget
            .filter(|_| self.late_budget && binds == WallLimit::Budget);
        limits.timeout = match preempt {
            Some(_) => wall_limit(limits.timeout, self.node_timeout, deadline_left, None).0,
            None => timeout,
        };
        let results: Vec<(&str, &Value)> = self
            .results
            .iter()
            .map(|(p, v)| (plan.dag.id(*p), v.as_ref()))
            .collect();
        let info = NodeInfo {
            node_id,
            run_id: self.run_id,
            attempt: self.attempt,
        };
        let executed = dagengine_lua::execute_item_preemptible(
            script,
            self.inputs,
            &results,
            &info,
            self.item,
            &limits,
            Some(cancel),
            preempt,
        );
        match executed {
            Ok(out) => Ok(ExecOk {
                output: out.output,
                logs: out.logs.into_iter().map(LogLine::info).collect(),
            }),
            Err(LuaError::Timeout { .. }) if binds == WallLimit::Budget => {
                Err(NodeFailure::new(PREEMPTED, "inline budget spent", true))
            }
            Err(LuaError::Timeout { limit }) if binds == WallLimit::Node => Err(NodeFailure::new(
                ErrorKind::NodeTimeout.as_str(),
                format!("node '{node_id}' timed out after {}s", limit.as_secs_f64()),
                true,
            )),
            Err(e) => Err(lua_failure(node_id, &e)),
        }
    }
}

/// Which limit a Lua attempt's wall-time limit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WallLimit {
    Script,
    Node,
    Deadline,
    Budget,
}

/// A Lua attempt's wall-time limit: the node's timeout if it has one, else the script's
/// own (by default [`dagengine_lua::DEFAULT_TIMEOUT`]; a node timeout replaces it, so a
/// node may run longer), unless what is left of the run's deadline or of the inline budget
/// is shorter.
pub(super) fn wall_limit(
    script: Option<Duration>,
    node: Option<Duration>,
    deadline_left: Option<Duration>,
    budget_left: Option<Duration>,
) -> (Option<Duration>, WallLimit) {
    let mut limit = match node {
        Some(t) => (Some(t), WallLimit::Node),
        None => (script, WallLimit::Script),
    };
    for (left, binds) in [
        (deadline_left, WallLimit::Deadline),
        (budget_left, WallLimit::Budget),
    ] {
        if let Some(left) = left {
            if limit.0.is_none_or(|l| left < l) {
                limit = (Some(left), binds);
            }
        }
    }
    limit
}

/// Map a Lua error to a node failure of the error's kind.
pub(super) fn lua_failure(node_id: &str, e: &LuaError) -> NodeFailure {
    let retryable = matches!(e, LuaError::Runtime { .. } | LuaError::Timeout { .. });
    let mut f = NodeFailure::new(
        e.kind().as_str(),
        format!("node '{node_id}': {e}"),
        retryable,
    );
    if let LuaError::Runtime {
        traceback: Some(tb),
        ..
    } = e
    {
        f.traceback = Some(tb.clone());
    }
    f
}

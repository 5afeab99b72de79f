//! The run's model: the plan (nodes, their kinds and policies), what a run is given, and
//! what it reports (events, node records, the outcome), with the node failure every
//! executor returns.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dagengine_core::{
    Dag, ErrorKind, MapOptions, NodeIdx, NodePolicy, NodeState, RunOptions, RunStatus, SkipReason,
};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{Map, Value};

use super::cache::{CacheSpec, NodeCache};
use super::handle::LogSink;
use super::lock;
use crate::pool::{Growth, Hooks, WorkerPool};

/// How a node is executed.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// Succeeds at once with an empty output (tests, benchmarks, joins).
    Noop,
    /// A sandboxed Lua script.
    Lua {
        script: LuaScript,
        limits: LuaLimits,
    },
    /// Anything the host provides through [`ExternalExecutor`] (Python callables).
    External,
}

/// What a [`NodeKind`] is, without its contents: one byte a node, so the driver's look at
/// every node it starts stays in cache (a `NodeKind` is 96 bytes; on a 10,000-node run of
/// Python nodes, loading each node's `NodeKind` to find it is not Lua was ~10% of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Noop,
    Lua,
    External,
}

impl NodeKind {
    fn kind(&self) -> Kind {
        match self {
            NodeKind::Noop => Kind::Noop,
            NodeKind::Lua { .. } => Kind::Lua,
            NodeKind::External => Kind::External,
        }
    }
}

/// A node's condition (`when`): checked before its first attempt; false skips the node.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A Lua boolean expression over `inputs` and `results`, evaluated on the driver.
    Lua(LuaScript),
    /// Asked of the run's [`ExternalExecutor::condition`] (a Python callable), on its pool.
    External,
}

impl Condition {
    /// The condition of a Lua boolean expression; `check` it to find syntax errors.
    pub fn lua(expression: &str) -> Self {
        // A line break before the closing brackets: a trailing `--` comment ends there.
        Self::Lua(LuaScript::new(format!("return ({expression}\n)")))
    }

    /// Compile a Lua condition (no-op for others): its syntax error, if it has one.
    pub fn check(&self) -> Result<(), dagengine_lua::LuaError> {
        match self {
            Self::Lua(script) => script.check(),
            Self::External => Ok(()),
        }
    }
}

/// How a mapped node fans out (`map`): one item per element of the list its expression
/// gives, evaluated once when the node is about to run (after its `when`).
#[derive(Debug, Clone)]
pub struct MapSpec {
    /// A Lua expression over `inputs` and `results` giving an array.
    pub expression: String,
    /// The expression, compiled as a chunk returning it.
    pub(super) script: LuaScript,
    pub options: MapOptions,
    /// More items than this fail the node.
    pub max_items: u32,
}

/// The default limit on a mapped node's items.
pub const DEFAULT_MAX_ITEMS: u32 = 100_000;

impl MapSpec {
    /// The map over `expression` (`results.extract.rows`, `inputs.items`, any Lua expression
    /// giving an array); `check` it to find syntax errors.
    pub fn new(expression: &str, options: MapOptions, max_items: u32) -> Self {
        Self {
            expression: expression.to_owned(),
            // A line break before the closing bracket: a trailing `--` comment ends there.
            script: LuaScript::new(format!("return ({expression}\n)")),
            options,
            max_items,
        }
    }

    /// Compile the expression: its syntax error, if it has one.
    pub fn check(&self) -> Result<(), dagengine_lua::LuaError> {
        self.script.check()
    }
}

/// One node of a [`Plan`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub kind: NodeKind,
    pub policy: NodePolicy,
    /// Checked before the first attempt (`None`: the node just runs).
    pub condition: Option<Condition>,
}

/// A validated graph with how to execute each node; shared by every run of it.
#[derive(Debug)]
pub struct Plan {
    pub(super) dag: Dag,
    pub(super) kinds: Vec<NodeKind>,
    /// Each node's [`Kind`] (`kinds` without their contents).
    tags: Vec<Kind>,
    pub(super) policies: Vec<NodePolicy>,
    /// Whether each node's policy has a timeout, with one policy a node (else empty: the
    /// one policy says), looked at for every Python node the driver calls (a policy is
    /// 64 bytes; reading each node's from memory was ~6% of a run of trivial nodes).
    timed: Vec<bool>,
    /// One entry per node, or empty when no node has a condition.
    pub(super) conditions: Vec<Option<Condition>>,
    /// One entry per node, or empty when no node is mapped.
    pub(super) maps: Vec<Option<MapSpec>>,
    /// One entry per node, or empty when no node is cached.
    pub(super) caches: Vec<Option<CacheSpec>>,
}

/// [`Plan::timed`] of `policies`.
fn timed(policies: &[NodePolicy]) -> Vec<bool> {
    if policies.len() == 1 {
        return Vec::new();
    }
    policies.iter().map(|p| p.timeout.is_some()).collect()
}

/// Has the Lua nodes of one source share one script (and its text): a Lua state finds a
/// script's compiled chunk by its hash and then by the text, which for the same `Arc` is a
/// pointer comparison rather than a read of each node's own copy.
fn share_scripts(kinds: &mut [NodeKind]) {
    let mut seen: HashMap<u64, Vec<LuaScript>> = HashMap::new();
    for kind in kinds {
        if let NodeKind::Lua { script, .. } = kind {
            let same = seen.entry(script.content_hash()).or_default();
            match same.iter().find(|s| *s == script) {
                Some(first) => *script = first.clone(),
                None => same.push(script.clone()),
            }
        }
    }
}

impl Plan {
    /// Build a plan. `dag` must be preprocessed; `nodes` has one entry per node, or is
    /// empty (every node a no-op with the default policy).
    pub fn new(dag: Dag, nodes: Vec<NodeSpec>) -> Result<Self, String> {
        if !dag.is_preprocessed() {
            return Err("the graph must be preprocessed before it is planned".to_owned());
        }
        if nodes.is_empty() {
            return Ok(Self {
                kinds: vec![NodeKind::Noop; dag.len()],
                tags: vec![Kind::Noop; dag.len()],
                policies: vec![NodePolicy::default()],
                timed: Vec::new(),
                conditions: Vec::new(),
                maps: Vec::new(),
                caches: Vec::new(),
                dag,
            });
        }
        if nodes.len() != dag.len() {
            return Err(format!(
                "{} node specs for a graph of {} nodes",
                nodes.len(),
                dag.len()
            ));
        }
        let mut conditions = Vec::new();
        if nodes.iter().any(|n| n.condition.is_some()) {
            conditions = nodes.iter().map(|n| n.condition.clone()).collect();
        }
        let (mut kinds, policies): (Vec<NodeKind>, Vec<NodePolicy>) =
            nodes.into_iter().map(|n| (n.kind, n.policy)).unzip();
        share_scripts(&mut kinds);
        Ok(Self {
            dag,
            tags: kinds.iter().map(NodeKind::kind).collect(),
            kinds,
            timed: timed(&policies),
            policies,
            conditions,
            maps: Vec::new(),
            caches: Vec::new(),
        })
    }

    /// Make `node` a mapped node (before any run of the plan).
    pub fn set_map(&mut self, node: NodeIdx, map: MapSpec) {
        if self.maps.is_empty() {
            self.maps = vec![None; self.dag.len()];
        }
        self.maps[node as usize] = Some(map);
    }

    /// Cache `node` (before any run of the plan). A mapped node cannot be cached.
    pub fn set_cache(&mut self, node: NodeIdx, cache: CacheSpec) -> Result<(), String> {
        if self.map(node).is_some() {
            return Err(format!(
                "node '{}': a mapped node cannot be cached (cache its items' work in a \
                 node it calls instead)",
                self.dag.id(node)
            ));
        }
        if self.caches.is_empty() {
            self.caches = vec![None; self.dag.len()];
        }
        self.caches[node as usize] = Some(cache);
        Ok(())
    }

    /// Whether any node is cached.
    pub fn has_caches(&self) -> bool {
        !self.caches.is_empty()
    }

    /// How `node` is cached, if it is.
    pub fn cache(&self, node: NodeIdx) -> Option<&CacheSpec> {
        self.caches.get(node as usize).and_then(Option::as_ref)
    }

    /// How `node` fans out, if it is mapped.
    pub fn map(&self, node: NodeIdx) -> Option<&MapSpec> {
        self.maps.get(node as usize).and_then(Option::as_ref)
    }

    /// The node (and, for an item of a mapped node such as `square[3]`, the item's index)
    /// an id names: how a resumed run's completed outputs are found.
    pub fn resolve(&self, id: &str) -> Option<(NodeIdx, Option<u32>)> {
        if let Some(node) = self.dag.index_of(id) {
            return Some((node, None));
        }
        let (name, rest) = id.strip_suffix(']')?.rsplit_once('[')?;
        let node = self.dag.index_of(name)?;
        let index = rest.parse::<u32>().ok()?;
        // `square[03]` is not an item's id: ids are written one way.
        (self.map(node).is_some() && index.to_string() == rest).then_some((node, Some(index)))
    }

    /// Whether `node` (a node, not an item) has a timeout.
    pub(super) fn has_timeout(&self, node: NodeIdx) -> bool {
        match self.timed.get(node as usize) {
            Some(&timed) => timed,
            None => self.policies[0].timeout.is_some(),
        }
    }

    /// Replace the nodes' policies (one a node, or one for all; tests).
    #[cfg(test)]
    pub(super) fn set_policies(&mut self, policies: Vec<NodePolicy>) {
        self.timed = timed(&policies);
        self.policies = policies;
    }

    /// What kind of node `node` is.
    pub(super) fn kind(&self, node: NodeIdx) -> Kind {
        self.tags[node as usize]
    }

    /// The condition of `node`, if it has one.
    pub fn condition(&self, node: NodeIdx) -> Option<&Condition> {
        self.conditions.get(node as usize).and_then(Option::as_ref)
    }

    /// The graph.
    pub fn dag(&self) -> &Dag {
        &self.dag
    }
}

/// Why a node attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// Error class name (`LuaRuntimeError`, `NodeTimeout`, `ValueError`, ...).
    pub kind: String,
    pub message: String,
    pub traceback: Option<String>,
    /// False when another attempt cannot help (cancelled, limits, bad return value).
    pub retryable: bool,
}

impl NodeFailure {
    pub(super) fn new(kind: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            traceback: None,
            retryable,
        }
    }
}

/// The empty output (`{}`): a node that returned nothing, or a parent without an output.
pub(super) fn empty_output() -> Arc<Value> {
    static EMPTY: OnceLock<Arc<Value>> = OnceLock::new();
    EMPTY
        .get_or_init(|| Arc::new(Value::Object(Map::new())))
        .clone()
}

/// The parents' outputs of an external call ([`ExternalCall::results`]), in the order of
/// the node's parents, `{}` for a parent without one. Read when the call reads them: a
/// node that never does costs nothing per parent.
#[derive(Debug, Clone)]
pub enum Parents {
    /// As they were when the attempt started: for a node whose trigger rule runs it before
    /// all its parents finished ([`TriggerRule::runs_early`]), which must not see the
    /// outputs of those that finish later.
    ///
    /// [`TriggerRule::runs_early`]: dagengine_core::TriggerRule::runs_early
    Given(Vec<(NodeIdx, Arc<Value>)>),
    /// The parents of the node of the plan, read from the run's outputs: each of them had
    /// finished when the attempt started, and a finished node's output never changes.
    Finished(Arc<RunOutputs>, NodeIdx),
}

impl Default for Parents {
    fn default() -> Self {
        Self::Given(Vec::new())
    }
}

impl Parents {
    /// How many parents.
    pub fn len(&self) -> usize {
        match self {
            Self::Given(v) => v.len(),
            Self::Finished(outputs, node) => outputs.plan.dag.parents(*node).len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f` with each parent and its output, in order, until it fails (the run's
    /// outputs are not locked meanwhile: `f` may take as long as it needs).
    pub fn try_for_each<E>(
        &self,
        mut f: impl FnMut(NodeIdx, &Value) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Self::Given(v) => v.iter().try_for_each(|(p, out)| f(*p, out)),
            Self::Finished(..) => self.to_vec().iter().try_for_each(|(p, out)| f(*p, out)),
        }
    }

    /// Each parent and its output, in order.
    pub fn to_vec(&self) -> Vec<(NodeIdx, Arc<Value>)> {
        match self {
            Self::Given(v) => v.clone(),
            Self::Finished(outputs, node) => {
                let parents = outputs.plan.dag.parents(*node);
                let set = lock(&outputs.outputs);
                parents
                    .iter()
                    .map(|&p| {
                        let out = set[p as usize].clone();
                        (p, out.unwrap_or_else(empty_output))
                    })
                    .collect()
            }
        }
    }
}

/// The outputs of a run's nodes so far, shared with the external calls that read their
/// parents' ([`Parents::Finished`]): each one set once, when its node succeeds (or was
/// given as completed). One lock for all: the driver's store is a node's only cost. A
/// call (or a Python context a node kept) holds all of them, not its parents' alone.
pub struct RunOutputs {
    plan: Arc<Plan>,
    outputs: Mutex<Vec<Option<Arc<Value>>>>,
}

impl RunOutputs {
    /// For a run of `plan` whose node records are `records` so far (the graph's nodes
    /// first: an item is none of them).
    pub(super) fn new(plan: Arc<Plan>, records: &[NodeRecord]) -> Self {
        let outputs = records[..plan.dag.len()]
            .iter()
            .map(|rec| rec.output.clone())
            .collect();
        Self {
            plan,
            outputs: Mutex::new(outputs),
        }
    }

    /// Record the output of `node` (a node of the graph: an item has none here).
    pub(super) fn set(&self, node: NodeIdx, output: &Arc<Value>) {
        if let Some(slot @ None) = lock(&self.outputs).get_mut(node as usize) {
            *slot = Some(output.clone());
        }
    }
}

impl std::fmt::Debug for RunOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOutputs")
            .field("nodes", &self.plan.dag.len())
            .finish_non_exhaustive()
    }
}

/// One call into the host for an external node.
#[derive(Debug)]
pub struct ExternalCall {
    pub node: NodeIdx,
    pub attempt: u32,
    /// Each parent's id and output, read when the call reads them.
    pub results: Parents,
    /// Set when the attempt should stop (cancel, timeout, fail-fast).
    pub cancel: Arc<AtomicBool>,
    /// For an item of a mapped node (`node`), its index and value.
    pub item: Option<(u32, Arc<Value>)>,
    /// Where the attempt's lines go while it runs (those left go through
    /// [`ExternalExecutor::take_logs`]).
    pub logs: LogSink,
}

/// What [`ExternalExecutor::checked`] did: the condition was false, it failed (the node
/// fails, without a retry), or it held and the attempt ran.
#[derive(Debug)]
pub enum Checked {
    Skipped,
    ConditionFailed(NodeFailure),
    Ran(Result<Map<String, Value>, NodeFailure>),
}

/// Executes external nodes; called on a thread of [`ExternalExecutor::pool`].
pub trait ExternalExecutor: Send + Sync {
    /// Run one attempt; the output must be a JSON object.
    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure>;

    /// The lines attempt `attempt` of `node` (or of its item `item`, for a mapped node)
    /// logged, taken once [`ExternalExecutor::execute`] returned for it (succeeded or
    /// failed), on the same thread; they become `NodeLog` events right before the attempt's
    /// end. The default logs nothing.
    fn take_logs(
        &self,
        plan: &Plan,
        node: NodeIdx,
        item: Option<u32>,
        attempt: u32,
    ) -> Vec<LogLine> {
        let _ = (plan, node, item, attempt);
        Vec::new()
    }

    /// Check the [`Condition::External`] of `call.node`: whether it runs. Called on a thread
    /// of [`ExternalExecutor::pool`] before the node's first attempt; an error fails the
    /// node. The default has no conditions to check.
    fn condition(&self, plan: &Plan, call: &ExternalCall) -> Result<bool, NodeFailure> {
        Err(NodeFailure::new(
            ErrorKind::DagEngineError.as_str(),
            format!(
                "node '{}' has a condition this run cannot evaluate",
                plan.dag.id(call.node)
            ),
            false,
        ))
    }

    /// Check the [`Condition::External`] of `call.node` and, if it held, run the attempt:
    /// both in one call, on the thread driving a run started by
    /// [`run_inline`](super::run_inline) (only for a node that is neither mapped nor
    /// cached). The default is [`ExternalExecutor::condition`] then
    /// [`ExternalExecutor::execute`]; the Python bridge builds the node's context once for
    /// both.
    fn checked(&self, plan: &Plan, call: ExternalCall) -> Checked {
        match self.condition(plan, &call) {
            Ok(true) => Checked::Ran(self.execute(plan, call)),
            Ok(false) => Checked::Skipped,
            Err(failure) => Checked::ConditionFailed(failure),
        }
    }

    /// Whether `node` may run on the thread that drives a run started by
    /// [`run_inline`](super::run_inline) (a synchronous Python callable may; a coroutine
    /// function or a sub-workflow goes to [`ExternalExecutor::pool`]). The default: none.
    fn inline(&self, node: NodeIdx) -> bool {
        let _ = node;
        false
    }

    /// The pool external nodes run on (the Python bridge brings one that enters the
    /// interpreter once per batch).
    fn pool(&self) -> WorkerPool {
        static POOL: OnceLock<WorkerPool> = OnceLock::new();
        POOL.get_or_init(|| {
            WorkerPool::new(
                "dagengine-ext",
                64,
                1,
                Growth::WhenStalled(Duration::from_millis(1)),
                Hooks::default(),
            )
        })
        .clone()
    }
}

/// The caller of [`run_inline`](super::run_inline): the run is driven on its thread,
/// which holds a lock the host knows of (the Python bridge: the GIL) while the loop steps
/// the scheduler and calls external nodes.
pub trait InlineHost {
    /// Run `f` with that lock released (the loop waits for other threads, or runs Lua).
    fn blocking(&self, f: &mut (dyn FnMut() + Send));

    /// Whether the caller was interrupted (Ctrl-C): the run is then cancelled, driven to
    /// its end, and the host raises the interrupt once [`run_inline`](super::run_inline)
    /// returns.
    fn interrupted(&self) -> bool;
}

/// Run a node's work, turning a panic into a node failure so the run still hears back
/// (the failure names the node: `node_id` is asked for then only).
pub(super) fn contained<'a, T>(
    node_id: impl FnOnce() -> &'a str,
    f: impl FnOnce() -> Result<T, NodeFailure>,
) -> Result<T, NodeFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(NodeFailure::new(
            ErrorKind::DagEngineError.as_str(),
            format!("node '{}': internal error: {what}", node_id()),
            false,
        ))
    })
}

/// Parameters of one run.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub run_id: String,
    /// The run's inputs (a JSON object).
    pub inputs: Arc<Value>,
    pub options: RunOptions,
    pub timeout: Option<Duration>,
    /// Outputs of nodes that already succeeded (a resumed run does not run them again).
    pub completed: Vec<(NodeIdx, Value)>,
    /// Outputs of items of mapped nodes that already succeeded (node, item index, output):
    /// the node's expansion does not run them again.
    pub completed_items: Vec<(NodeIdx, u32, Value)>,
    /// Record events for [`RunHandle::next_events`](super::RunHandle::next_events).
    pub events: bool,
    /// Attach each node's output to its `NodeSucceeded` event (the engine streams them so
    /// the orchestrator can store completed outputs as they happen).
    pub event_outputs: bool,
    /// Where cached nodes look their keys up and store their outputs (`None`: they run
    /// as if they were not cached).
    pub cache: Option<Arc<dyn NodeCache>>,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    RunStarted,
    NodeStarted,
    NodeSucceeded,
    NodeFailed,
    NodeRetrying,
    NodeSkipped,
    NodeCancelled,
    NodeLog,
    /// A mapped node was expanded ([`EventDetail::Mapped`] says into how many items).
    NodeMapped,
    /// A cached node's key was found ([`EventDetail::Cached`] names the run whose output it
    /// takes); it was not executed, a `NodeSucceeded` follows.
    NodeCached,
    RunFinished,
}

impl EventKind {
    /// Snake-case name used on the wire and in Python.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunStarted => "run_started",
            Self::NodeStarted => "node_started",
            Self::NodeSucceeded => "node_succeeded",
            Self::NodeFailed => "node_failed",
            Self::NodeRetrying => "node_retrying",
            Self::NodeSkipped => "node_skipped",
            Self::NodeCancelled => "node_cancelled",
            Self::NodeLog => "node_log",
            Self::NodeMapped => "node_mapped",
            Self::NodeCached => "node_cached",
            Self::RunFinished => "run_finished",
        }
    }
}

/// One line a node attempt logged: Lua `log()`/`print` (level `INFO`), or a Python node's
/// captured `logging` record or `print` output (its level name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

impl LogLine {
    /// A Lua `log()` line.
    pub fn info(message: String) -> Self {
        Self {
            level: "INFO".to_owned(),
            message,
        }
    }
}

/// Extra data of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDetail {
    None,
    Error(NodeFailure),
    Retry {
        delay: Duration,
        error: Option<NodeFailure>,
    },
    Log(LogLine),
    /// Why a node was skipped.
    Skipped(SkipReason),
    /// A succeeded node's output (only with [`RunConfig::event_outputs`]).
    Output(Arc<Value>),
    /// How many items a mapped node was expanded into.
    Mapped(u32),
    /// The run a cached node's output comes from, and the key it was found under.
    Cached {
        run_id: String,
        key: String,
    },
    Finished(RunStatus),
}

/// Something that happened during a run, numbered from 1.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub seq: u64,
    pub kind: EventKind,
    pub node: Option<NodeIdx>,
    /// For an event of an item of a mapped node (`node`), the item's index: its id is
    /// `node[item]` ([`RunEvent::node_id`]).
    pub item: Option<u32>,
    pub attempt: u32,
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub detail: EventDetail,
}

impl RunEvent {
    /// The id of the node (or item: `square[3]`) the event is about.
    pub fn node_id(&self, plan: &Plan) -> Option<String> {
        let id = plan.dag.id(self.node?);
        Some(match self.item {
            Some(i) => format!("{id}[{i}]"),
            None => id.to_owned(),
        })
    }
}

/// The final record of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub status: NodeState,
    pub output: Option<Arc<Value>>,
    /// Boxed, as `cache`: a run keeps a record a node and touches it at each start and
    /// end, and most nodes neither fail nor are cached (176 bytes a record with both
    /// inline, 64 without: one cache line; a 10,000-node run of trivial Python nodes took
    /// ~10% less time).
    pub error: Option<Box<NodeFailure>>,
    pub attempts: u32,
    /// Why the node was skipped, if it was.
    pub skip_reason: Option<SkipReason>,
    /// For a cached node: see [`NodeRecord::cached_from`] and [`NodeRecord::cache_key`].
    pub cache: Option<Box<CacheNote>>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// What a record says of a cached node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheNote {
    /// Found in the cache (not executed): the run its output comes from.
    pub cached_from: Option<String>,
    /// The key it was looked up under (with no `cached_from`, its output was stored there
    /// when it succeeded).
    pub cache_key: Option<String>,
}

impl NodeRecord {
    /// For a node found in the cache (not executed), the run its output comes from.
    pub fn cached_from(&self) -> Option<&str> {
        self.cache.as_ref()?.cached_from.as_deref()
    }

    /// For a cached node, the key it was looked up under (with no `cached_from`, its
    /// output was stored there when it succeeded).
    pub fn cache_key(&self) -> Option<&str> {
        self.cache.as_ref()?.cache_key.as_deref()
    }

    /// The record's [`CacheNote`], made if it has none.
    pub(super) fn cache_note(&mut self) -> &mut CacheNote {
        self.cache.get_or_insert_with(Box::default)
    }
}

/// Why the run as a whole did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    pub kind: String,
    pub message: String,
    pub node_id: Option<String>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub error: Option<RunError>,
    pub duration: Duration,
    pub nodes: Vec<NodeRecord>,
}

/// Runs with at least this many nodes free their records on the reaper thread.
pub(super) const REAP_MIN_NODES: usize = 1024;

/// Outcomes waiting for the reaper before the next one is freed where it is dropped.
pub(super) const REAP_QUEUE: usize = 64;

impl Drop for RunOutcome {
    /// A large run's records are freed on a background thread: a few allocations per
    /// node (outputs, errors), about 0.1 µs per node, which the thread that lets go of a
    /// result (a caller reading the next result, a gRPC worker) need not wait for.
    fn drop(&mut self) {
        if self.nodes.len() >= REAP_MIN_NODES {
            reap(std::mem::take(&mut self.nodes));
        }
    }
}

/// Hands `records` to the reaper thread (started on first use) to drop. They drop here
/// instead when that thread cannot be started, when it is behind (the queue is bounded)
/// and in a forked child, where the parent's thread does not exist.
pub(super) fn reap(records: Vec<NodeRecord>) {
    static REAPER: OnceLock<Option<(u32, SyncSender<Vec<NodeRecord>>)>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Vec<NodeRecord>>(REAP_QUEUE);
        std::thread::Builder::new()
            .name("dagengine-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| (std::process::id(), tx))
    });
    if let Some((pid, tx)) = reaper {
        if *pid == std::process::id() {
            // On failure (full, or the thread is gone) the records come back and drop here.
            let _ = tx.try_send(records);
        }
    }
}

/// The failure of a waiting attempt whose run stopped (or that was aborted) before it
/// started: it does not run at all.
pub(super) fn never_started(plan: &Plan, node: NodeIdx) -> NodeFailure {
    NodeFailure::new(
        ErrorKind::RunCancelled.as_str(),
        format!("node '{}' was cancelled", plan.dag.id(node)),
        false,
    )
}

//! Wire messages <-> the core's types. Every refusal names the field it is about
//! (`workflow.nodes[2].timeout_seconds: ...`), because it goes back to the caller as the
//! message of an `INVALID_ARGUMENT` status.

use std::sync::Arc;
use std::time::Duration;

use dagengine_core::{
    Backoff, Dag, GraphError, MapOptions, NodeIdx, NodePolicy, NodeState, RunStatus, TriggerRule,
};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{Map, Value};

use super::pb;
use crate::runner::{
    CacheSpec, Condition, EventDetail, EventKind, MapSpec, NodeFailure, NodeKind, NodeSpec, Plan,
    RunError, RunEvent, RunOutcome, DEFAULT_MAX_ITEMS,
};

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What a host node (run by the embedding process, not by the core) refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRef {
    /// A Python callable, `package.module:function`.
    Python(String),
    /// A sub-workflow, `child@range` (or `child` for any version).
    Workflow(String),
}

/// A node the host must resolve before the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    pub node: NodeIdx,
    pub reference: HostRef,
}

fn seconds(field: &str, v: f64) -> Result<Duration, InvalidField> {
    if v.is_finite() && v >= 0.0 {
        Duration::try_from_secs_f64(v)
            .map_err(|_| InvalidField::new(field, format!("{v} is out of range")))
    } else {
        Err(InvalidField::new(
            field,
            format!("must be a finite number of seconds >= 0, got {v}"),
        ))
    }
}

fn policy(i: usize, node: &pb::NodeSpec) -> Result<NodePolicy, InvalidField> {
    let mut policy = NodePolicy::default();
    if let Some(r) = &node.retry {
        let f = |name: &str| format!("workflow.nodes[{i}].retry.{name}");
        policy.retries = r.retries;
        // Zero means "not set" on the wire: keep the defaults then.
        if r.backoff_initial_seconds != 0.0 {
            policy.backoff.initial =
                seconds(&f("backoff_initial_seconds"), r.backoff_initial_seconds)?;
        }
        if r.backoff_factor != 0.0 {
            if !(r.backoff_factor.is_finite() && r.backoff_factor >= 1.0) {
                return Err(InvalidField::new(
                    f("backoff_factor"),
                    format!("must be a number >= 1, got {}", r.backoff_factor),
                ));
            }
            policy.backoff.factor = r.backoff_factor;
        }
        if r.backoff_max_seconds != 0.0 {
            policy.backoff.max = seconds(&f("backoff_max_seconds"), r.backoff_max_seconds)?;
        }
    } else {
        policy.backoff = Backoff::default();
    }
    if let Some(t) = node.timeout_seconds {
        let field = format!("workflow.nodes[{i}].timeout_seconds");
        let d = seconds(&field, t)?;
        if d.is_zero() {
            return Err(InvalidField::new(field, "must be positive"));
        }
        policy.timeout = Some(d);
    }
    if !node.trigger_rule.is_empty() {
        policy.trigger_rule = TriggerRule::parse(&node.trigger_rule).ok_or_else(|| {
            InvalidField::new(
                format!("workflow.nodes[{i}].trigger_rule"),
                format!(
                    "node '{}': unknown trigger rule '{}' (expected one of {})",
                    node.id,
                    node.trigger_rule,
                    TriggerRule::NAMES
                ),
            )
        })?;
    }
    Ok(policy)
}

/// A node's `map`, compiled: a syntax error names the node and the line.
fn map_spec(i: usize, node: &pb::NodeSpec) -> Result<Option<MapSpec>, InvalidField> {
    if node.map.trim().is_empty() {
        return Ok(None);
    }
    let options = MapOptions {
        max_parallel: (node.map_max_parallel > 0).then_some(node.map_max_parallel),
        allow_partial: node.allow_partial,
    };
    let max_items = if node.max_items == 0 {
        DEFAULT_MAX_ITEMS
    } else {
        node.max_items
    };
    let map = MapSpec::new(&node.map, options, max_items);
    map.check().map_err(|e| {
        InvalidField::new(
            format!("workflow.nodes[{i}].map"),
            format!("node '{}': map: {e}", node.id),
        )
    })?;
    Ok(Some(map))
}

/// A node's `cache`, its key compiled: a syntax error names the node and the line. The
/// code identity is the sender's, or the engine's own (as `dagengine.cache.code_identity`
/// writes it: `lua\n<script>`, `python\n<import path>`, `workflow\n<id>@<range>`).
fn cache_spec(i: usize, node: &pb::NodeSpec) -> Result<Option<CacheSpec>, InvalidField> {
    use pb::node_spec::Executor;
    let Some(cache) = &node.cache else {
        return Ok(None);
    };
    let field = |name: &str| format!("workflow.nodes[{i}].cache{name}");
    if !node.map.trim().is_empty() {
        return Err(InvalidField::new(
            field(""),
            format!("node '{}': a mapped node cannot be cached", node.id),
        ));
    }
    let ttl = match cache.ttl_seconds {
        0.0 => None,
        t => Some(Duration::try_from_secs_f64(t).map_err(|_| {
            InvalidField::new(field(".ttl_seconds"), "must be a finite number >= 0")
        })?),
    };
    let code = if cache.code.is_empty() {
        match &node.executor {
            Some(Executor::Lua(lua)) => format!("lua\n{}", lua.code),
            Some(Executor::Python(py)) => format!("python\n{}", py.import_path.trim()),
            Some(Executor::Workflow(w)) => {
                let range = w.version_range.trim();
                let range = if range.is_empty() { "*" } else { range };
                format!("workflow\n{}@{range}", w.workflow_id)
            }
            Some(Executor::Noop(_)) | None => "noop".to_owned(),
        }
    } else {
        cache.code.clone()
    };
    let key = (!cache.key.trim().is_empty()).then_some(cache.key.as_str());
    let spec = CacheSpec::new(code, key, ttl);
    spec.check().map_err(|e| {
        InvalidField::new(field(".key"), format!("node '{}': cache.key: {e}", node.id))
    })?;
    Ok(Some(spec))
}

/// A node's `when`, compiled: a syntax error names the node and the line.
fn condition(i: usize, node: &pb::NodeSpec) -> Result<Option<Condition>, InvalidField> {
    if node.when.trim().is_empty() {
        return Ok(None);
    }
    let condition = Condition::lua(&node.when);
    condition.check().map_err(|e| {
        InvalidField::new(
            format!("workflow.nodes[{i}].when"),
            format!("node '{}': when: {e}", node.id),
        )
    })?;
    Ok(Some(condition))
}

fn executor(i: usize, node: &pb::NodeSpec) -> Result<(NodeKind, Option<HostRef>), InvalidField> {
    use pb::node_spec::Executor;
    let field = |name: &str| format!("workflow.nodes[{i}].{name}");
    match &node.executor {
        None => Err(InvalidField::new(
            field("executor"),
            format!(
                "node '{}' has no executor (set one of lua, python, workflow, noop)",
                node.id
            ),
        )),
        Some(Executor::Noop(_)) => Ok((NodeKind::Noop, None)),
        Some(Executor::Lua(lua)) => {
            let script = LuaScript::new(lua.code.as_str());
            script.check().map_err(|e| {
                InvalidField::new(field("lua.code"), format!("node '{}': {e}", node.id))
            })?;
            let defaults = LuaLimits::default();
            let max_memory =
                match lua.max_memory_bytes {
                    Some(m) => Some(usize::try_from(m).map_err(|_| {
                        InvalidField::new(field("lua.max_memory_bytes"), "too large")
                    })?),
                    None => defaults.max_memory,
                };
            let limits = LuaLimits {
                max_instructions: lua.max_instructions.or(defaults.max_instructions),
                max_memory,
                timeout: defaults.timeout,
            };
            Ok((NodeKind::Lua { script, limits }, None))
        }
        Some(Executor::Python(py)) => {
            let path = py.import_path.trim();
            let shape_ok = path
                .split_once(':')
                .is_some_and(|(m, f)| !m.is_empty() && !f.is_empty());
            if !shape_ok {
                return Err(InvalidField::new(
                    field("python.import_path"),
                    format!(
                        "node '{}': '{path}' is not an import path like 'package.module:function'",
                        node.id
                    ),
                ));
            }
            Ok((NodeKind::External, Some(HostRef::Python(path.to_owned()))))
        }
        Some(Executor::Workflow(w)) => {
            if w.workflow_id.trim().is_empty() {
                return Err(InvalidField::new(
                    field("workflow.workflow_id"),
                    format!("node '{}': must not be empty", node.id),
                ));
            }
            let range = w.version_range.trim();
            let reference = if range.is_empty() || range == "*" {
                w.workflow_id.clone()
            } else {
                format!("{}@{range}", w.workflow_id)
            };
            Ok((NodeKind::External, Some(HostRef::Workflow(reference))))
        }
    }
}

/// Validate a workflow spec and build its plan, plus the nodes the host must resolve.
pub fn plan_from_spec(spec: &pb::WorkflowSpec) -> Result<(Plan, Vec<HostNode>), InvalidField> {
    if spec.nodes.is_empty() {
        return Err(InvalidField::new(
            "workflow.nodes",
            "a workflow needs at least one node",
        ));
    }
    let mut dag = Dag::with_capacity(spec.nodes.len(), spec.nodes.len() * 2);
    let mut specs = Vec::with_capacity(spec.nodes.len());
    let mut host = Vec::new();
    let mut maps = Vec::new();
    let mut caches = Vec::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        if node.id.is_empty() {
            return Err(InvalidField::new(
                format!("workflow.nodes[{i}].id"),
                "must not be empty",
            ));
        }
        let policy = policy(i, node)?;
        let (kind, reference) = executor(i, node)?;
        let idx = dag
            .add_node(&node.id, node.deps.iter().map(String::as_str))
            .map_err(|e| {
                let field = match e {
                    GraphError::SelfDependency { .. } => format!("workflow.nodes[{i}].deps"),
                    _ => format!("workflow.nodes[{i}].id"),
                };
                InvalidField::new(field, e.to_string())
            })?;
        if let Some(reference) = reference {
            host.push(HostNode {
                node: idx,
                reference,
            });
        }
        let condition = condition(i, node)?;
        if let Some(map) = map_spec(i, node)? {
            maps.push((idx, map));
        }
        if let Some(cache) = cache_spec(i, node)? {
            caches.push((idx, cache));
        }
        specs.push(NodeSpec {
            kind,
            policy,
            condition,
        });
    }
    dag.preprocess().map_err(|e| {
        let field = match &e {
            GraphError::UnknownDependency { node_id, .. } => spec
                .nodes
                .iter()
                .position(|n| &n.id == node_id)
                .map_or_else(
                    || "workflow.nodes".to_owned(),
                    |i| format!("workflow.nodes[{i}].deps"),
                ),
            _ => "workflow.nodes".to_owned(),
        };
        InvalidField::new(field, e.to_string())
    })?;
    let mut plan = Plan::new(dag, specs).map_err(|e| InvalidField::new("workflow", e))?;
    for (idx, map) in maps {
        plan.set_map(idx, map);
    }
    for (idx, cache) in caches {
        plan.set_cache(idx, cache)
            .map_err(|e| InvalidField::new("workflow.nodes", e))?;
    }
    Ok((plan, host))
}

/// The field holding a run's inputs: it obeys the input limits below.
const INPUTS_FIELD: &str = "inputs_json";
/// The deepest nesting of a run's inputs (the inputs object is level 1), as at the Python
/// doors (`dagengine._jsondata.MAX_DEPTH`).
pub const MAX_INPUT_DEPTH: usize = 64;

/// Parse a JSON object sent as bytes. A run's inputs (`inputs_json`) must also be JSON data
/// within the limits every door applies: numbers in the signed 64-bit range (`serde_json`
/// would read a bigger integer as a float, silently) and nesting at most [`MAX_INPUT_DEPTH`]
/// levels. `serde_json` itself refuses lone surrogate escapes, NaN and text not in UTF-8.
pub fn json_object(field: &str, bytes: &[u8]) -> Result<Value, InvalidField> {
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let value = json_value(field, bytes)?;
    if !value.is_object() {
        return Err(InvalidField::new(field, "must be a JSON object"));
    }
    if field == INPUTS_FIELD {
        check_input_limits(bytes).map_err(|m| InvalidField::new(field, m))?;
    }
    Ok(value)
}

/// Any JSON value (a mapped node's output is a list).
pub fn json_value(field: &str, bytes: &[u8]) -> Result<Value, InvalidField> {
    serde_json::from_slice(bytes)
        .map_err(|e| InvalidField::new(field, format!("not valid JSON: {e}")))
}

/// One level of the document being scanned.
enum Level {
    Object { key: Option<String>, at_key: bool },
    Array { index: usize },
}

fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `inputs.a[2]`: where the scan is, for messages.
fn path_of(levels: &[Level]) -> String {
    let mut path = String::from("inputs");
    for level in levels {
        match level {
            Level::Object { key: Some(k), .. } if is_name(k) => {
                path.push('.');
                path.push_str(k);
            }
            Level::Object { key: Some(k), .. } => {
                path.push('[');
                path.push_str(&serde_json::to_string(k).unwrap_or_default());
                path.push(']');
            }
            Level::Object { key: None, .. } => {}
            Level::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// Scan valid JSON text for numbers outside the signed 64-bit range (integers, and whole
/// numbers written with an exponent: 1e19) and nesting deeper than [`MAX_INPUT_DEPTH`],
/// naming the path of the first (`inputs.a[1]: ...`).
fn check_input_limits(bytes: &[u8]) -> Result<(), String> {
    let mut levels: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                if levels.len() >= MAX_INPUT_DEPTH {
                    return Err(format!(
                        "{}: nested deeper than {MAX_INPUT_DEPTH} levels",
                        path_of(&levels)
                    ));
                }
                levels.push(if bytes[i] == b'{' {
                    Level::Object {
                        key: None,
                        at_key: true,
                    }
                } else {
                    Level::Array { index: 0 }
                });
            }
            b'}' | b']' => {
                levels.pop();
            }
            b',' => match levels.last_mut() {
                Some(Level::Array { index }) => *index += 1,
                Some(Level::Object { at_key, .. }) => *at_key = true,
                None => {}
            },
            b':' => {
                if let Some(Level::Object { at_key, .. }) = levels.last_mut() {
                    *at_key = false;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Level::Object { key, at_key: true }) = levels.last_mut() {
                    let end = (i + 1).min(bytes.len());
                    *key = serde_json::from_slice(&bytes[start..end]).ok();
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &bytes[start..=i];
                let text = std::str::from_utf8(token).unwrap_or_default();
                let integer = !token.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
                if integer && text.parse::<i64>().is_err() {
                    return Err(format!(
                        "{}: integer {text} is out of range (a signed 64-bit integer)",
                        path_of(&levels)
                    ));
                }
                // The same rule whatever the spelling: 1e19 is 10000000000000000000.
                let in_range = |x: f64| (-(2f64.powi(63))..2f64.powi(63)).contains(&x);
                if !integer && !text.parse::<f64>().is_ok_and(in_range) {
                    return Err(format!(
                        "{}: {text} is out of range (numbers must be in the signed 64-bit range)",
                        path_of(&levels)
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn error_info(f: &NodeFailure) -> pb::ErrorInfo {
    pb::ErrorInfo {
        r#type: f.kind.clone(),
        message: f.message.clone(),
        traceback: f.traceback.clone().unwrap_or_default(),
        node_id: String::new(),
    }
}

fn run_error_info(e: &RunError) -> pb::ErrorInfo {
    pb::ErrorInfo {
        r#type: e.kind.clone(),
        message: e.message.clone(),
        traceback: String::new(),
        node_id: e.node_id.clone().unwrap_or_default(),
    }
}

fn event_kind(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::RunStarted => pb::EventKind::RunStarted,
        EventKind::NodeStarted => pb::EventKind::NodeStarted,
        EventKind::NodeSucceeded => pb::EventKind::NodeSucceeded,
        EventKind::NodeFailed => pb::EventKind::NodeFailed,
        EventKind::NodeRetrying => pb::EventKind::NodeRetrying,
        EventKind::NodeSkipped => pb::EventKind::NodeSkipped,
        EventKind::NodeCancelled => pb::EventKind::NodeCancelled,
        EventKind::NodeLog => pb::EventKind::NodeLog,
        EventKind::NodeMapped => pb::EventKind::NodeMapped,
        EventKind::NodeCached => pb::EventKind::NodeCached,
        EventKind::RunFinished => pb::EventKind::RunFinished,
    }
}

pub fn run_status(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

fn node_status(s: NodeState) -> pb::NodeStatus {
    match s {
        NodeState::Pending => pb::NodeStatus::NodePending,
        NodeState::Running => pb::NodeStatus::NodeRunning,
        NodeState::Retrying => pb::NodeStatus::NodeRetryingStatus,
        NodeState::Succeeded => pb::NodeStatus::NodeSucceededStatus,
        NodeState::Failed => pb::NodeStatus::NodeFailedStatus,
        NodeState::Skipped => pb::NodeStatus::NodeSkippedStatus,
        NodeState::Cancelled => pb::NodeStatus::NodeCancelledStatus,
    }
}

/// Identity of a run on the wire.
#[derive(Debug, Clone)]
pub struct RunTag {
    pub run_id: Arc<str>,
    pub attempt: u64,
    pub engine_id: Arc<str>,
}

/// A core event as a wire event.
pub fn event(tag: &RunTag, plan: &Plan, e: &RunEvent) -> pb::RunEvent {
    let mut ev = pb::RunEvent {
        run_id: tag.run_id.to_string(),
        attempt: tag.attempt,
        seq: e.seq,
        engine_id: tag.engine_id.to_string(),
        kind: event_kind(e.kind) as i32,
        time_unix: e.time,
        node_id: e.node_id(plan).unwrap_or_default(),
        node_attempt: e.attempt,
        ..Default::default()
    };
    match &e.detail {
        EventDetail::None | EventDetail::Finished(_) => {}
        EventDetail::Error(f) => ev.error = Some(error_info(f)),
        EventDetail::Retry { delay, error } => {
            ev.retry_delay_seconds = delay.as_secs_f64();
            ev.error = error.as_ref().map(error_info);
        }
        EventDetail::Log(line) => {
            ev.message.clone_from(&line.message);
            ev.level.clone_from(&line.level);
        }
        EventDetail::Output(v) => ev.output_json = to_json(v),
        EventDetail::Skipped(reason) => reason.as_str().clone_into(&mut ev.skip_reason),
        EventDetail::Mapped(count) => ev.item_count = *count,
        EventDetail::Cached { run_id, key } => {
            ev.cached_from.clone_from(run_id);
            ev.cache_key.clone_from(key);
        }
    }
    ev
}

/// A finished run as a wire result.
pub fn result(tag: &RunTag, plan: &Plan, o: &RunOutcome) -> pb::RunResult {
    pb::RunResult {
        run_id: tag.run_id.to_string(),
        attempt: tag.attempt,
        status: run_status(o.status) as i32,
        error: o.error.as_ref().map(run_error_info),
        duration_seconds: o.duration.as_secs_f64(),
        nodes: o
            .nodes
            .iter()
            .enumerate()
            .map(|(i, r)| pb::NodeResult {
                node_id: plan.dag().id(i as NodeIdx).to_owned(),
                status: node_status(r.status) as i32,
                output_json: r.output.as_deref().map(to_json).unwrap_or_default(),
                error: r.error.as_deref().map(error_info),
                attempts: r.attempts,
                started_at: r.started_at.unwrap_or_default(),
                finished_at: r.finished_at.unwrap_or_default(),
                skip_reason: r
                    .skip_reason
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                cached_from: r.cached_from().unwrap_or_default().to_owned(),
                cache_key: r.cache_key().unwrap_or_default().to_owned(),
            })
            .collect(),
        engine_id: tag.engine_id.to_string(),
        result_json: Vec::new(),
    }
}

/// Results (encoded) past which `add_result_json` leaves the JSON out: it would carry the
/// outputs a second time, and a reply over the message size limit breaks the whole session.
/// A large result is not where a run's fixed cost is; the caller builds the JSON itself.
pub const RESULT_JSON_MAX_BYTES: usize = 64 << 10;

/// Fill `result_json` (see [`result_json`]) unless the result is over
/// [`RESULT_JSON_MAX_BYTES`].
pub fn add_result_json(result: &mut pb::RunResult) {
    if prost::Message::encoded_len(result) <= RESULT_JSON_MAX_BYTES {
        result.result_json = result_json(result);
    }
}

/// A string as JSON text.
fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// A float as JSON text (`null` if it is not finite, which times and durations never are).
fn push_json_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(&serde_json::to_string(&v).unwrap_or_default());
    } else {
        out.push_str("null");
    }
}

/// An error as the JSON of Python's `ErrorInfo.to_dict()`: `traceback` and `node_id` only
/// when set, an empty type read as `Error`.
fn push_error_json(out: &mut String, e: Option<&pb::ErrorInfo>) {
    let Some(e) = e else {
        out.push_str("null");
        return;
    };
    out.push_str("{\"type\":");
    push_json_str(
        out,
        if e.r#type.is_empty() {
            "Error"
        } else {
            &e.r#type
        },
    );
    out.push_str(",\"message\":");
    push_json_str(out, &e.message);
    if !e.traceback.is_empty() {
        out.push_str(",\"traceback\":");
        push_json_str(out, &e.traceback);
    }
    if !e.node_id.is_empty() {
        out.push_str(",\"node_id\":");
        push_json_str(out, &e.node_id);
    }
    out.push('}');
}

/// A wire node status as the core's state (`node_status` the other way; unset: pending).
fn node_state_of(status: i32) -> NodeState {
    match pb::NodeStatus::try_from(status).unwrap_or(pb::NodeStatus::Unspecified) {
        pb::NodeStatus::Unspecified | pb::NodeStatus::NodePending => NodeState::Pending,
        pb::NodeStatus::NodeRunning => NodeState::Running,
        pb::NodeStatus::NodeRetryingStatus => NodeState::Retrying,
        pb::NodeStatus::NodeSucceededStatus => NodeState::Succeeded,
        pb::NodeStatus::NodeFailedStatus => NodeState::Failed,
        pb::NodeStatus::NodeSkippedStatus => NodeState::Skipped,
        pb::NodeStatus::NodeCancelledStatus => NodeState::Cancelled,
    }
}

/// A node's output as JSON text, if it has one. Outputs are JSON objects encoded by
/// `to_json`: UTF-8 by construction.
fn raw_output(n: &pb::NodeResult) -> Option<&str> {
    if n.output_json.is_empty() {
        return None;
    }
    std::str::from_utf8(&n.output_json).ok()
}

/// A wire result as the JSON text of Python's `RunResult.to_dict()` (`run_id`, `status`,
/// `error`, `duration`, `outputs`: the succeeded nodes', `nodes`), the node outputs spliced
/// in as they are: what `result_json_from_proto` builds on the Python side, for callers that
/// store the result as it is.
pub fn result_json(r: &pb::RunResult) -> Vec<u8> {
    let status = match pb::RunStatus::try_from(r.status) {
        Ok(pb::RunStatus::Succeeded) => RunStatus::Succeeded,
        Ok(pb::RunStatus::Failed) => RunStatus::Failed,
        Ok(pb::RunStatus::Cancelled) => RunStatus::Cancelled,
        // Not a finished run's status: no JSON (the caller's own conversion reports it).
        _ => return Vec::new(),
    };
    let mut out = String::with_capacity(256 + r.nodes.len() * 160);
    out.push_str("{\"run_id\":");
    push_json_str(&mut out, &r.run_id);
    out.push_str(",\"status\":\"");
    out.push_str(status.as_str());
    out.push_str("\",\"error\":");
    push_error_json(&mut out, r.error.as_ref());
    out.push_str(",\"duration\":");
    push_json_f64(&mut out, r.duration_seconds);
    out.push_str(",\"outputs\":{");
    let succeeded = pb::NodeStatus::NodeSucceededStatus as i32;
    let mut first = true;
    for n in r.nodes.iter().filter(|n| n.status == succeeded) {
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, &n.node_id);
        out.push(':');
        out.push_str(raw_output(n).unwrap_or("{}"));
    }
    out.push_str("},\"nodes\":{");
    for (i, n) in r.nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, &n.node_id);
        out.push_str(":{\"status\":\"");
        out.push_str(node_state_of(n.status).as_str());
        out.push_str("\",\"output\":");
        out.push_str(raw_output(n).unwrap_or("null"));
        out.push_str(",\"error\":");
        push_error_json(&mut out, n.error.as_ref());
        out.push_str(",\"attempts\":");
        out.push_str(&n.attempts.to_string());
        for (key, time) in [("started_at", n.started_at), ("finished_at", n.finished_at)] {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            // An unset time (0 on the wire) is null, as in the Python result.
            if time == 0.0 {
                out.push_str("null");
            } else {
                push_json_f64(&mut out, time);
            }
        }
        if !n.skip_reason.is_empty() {
            out.push_str(",\"skip_reason\":");
            push_json_str(&mut out, &n.skip_reason);
        }
        if !n.cached_from.is_empty() {
            out.push_str(",\"cached_from\":");
            push_json_str(&mut out, &n.cached_from);
        }
        out.push('}');
    }
    out.push_str("}}");
    out.into_bytes()
}

#[cfg(test)]
mod tests;

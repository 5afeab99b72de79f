//! Caching (`cache`): a cached node's key, computed on the driver's thread before its first
//! attempt (after its `when`), and the [`NodeCache`] the run looks it up in. A hit is not
//! executed: the node succeeds with the stored output. The output of a node that ran and
//! succeeded is stored under its key. Where entries live is the host's: a local run's
//! process-wide memory, an engine's entries sent with the run, the orchestrator's store.
//!
//! The key is a SHA-256 (hex) of the node's code identity with either its custom key's value
//! (a Lua expression over `inputs` and `results` giving a string or a number), or the run's
//! inputs and the parents' outputs as canonical JSON (object keys sorted). The code is in the
//! key either way, so a change of code misses, and two nodes of the same id in different
//! workflows do not share entries unless their code is the same.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dagengine_core::NodeIdx;
use dagengine_lua::LuaScript;
use serde_json::Value;

use super::condition::DriverExpression;
use super::model::{NodeFailure, NodeRecord, Plan};

/// A stored output found for a node's key.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheHit {
    /// The output (a JSON object).
    pub output: Value,
    /// The run that computed it.
    pub run_id: String,
}

/// Where a run looks cached nodes' keys up and stores their outputs. Called on the run's
/// driver thread: keep both calls short (a lookup in memory, not a network round trip).
pub trait NodeCache: Send + Sync + std::fmt::Debug {
    /// The unexpired entry of `node_id` under `key`, if there is one.
    fn get(&self, node_id: &str, key: &str) -> Option<CacheHit>;

    /// Store `output`, computed by run `run_id`, for `node_id` under `key`; `ttl` (from now)
    /// is how long it may be used (`None`: until it is evicted).
    fn put(&self, node_id: &str, key: &str, output: &Value, run_id: &str, ttl: Option<Duration>);
}

/// The cache of a run whose entries were given with it (an engine's run: the orchestrator
/// sends the entries it keeps). It stores nothing: a node that ran reports its key in its
/// record, for the sender to store its output under.
#[derive(Debug, Default)]
pub struct EntriesCache {
    entries: HashMap<(String, String), CacheHit>,
}

impl EntriesCache {
    /// A cache of `(node id, key, hit)` entries.
    pub fn new(entries: impl IntoIterator<Item = (String, String, CacheHit)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(node, key, hit)| ((node, key), hit))
                .collect(),
        }
    }
}

impl NodeCache for EntriesCache {
    fn get(&self, node_id: &str, key: &str) -> Option<CacheHit> {
        self.entries
            .get(&(node_id.to_owned(), key.to_owned()))
            .cloned()
    }

    fn put(&self, _: &str, _: &str, _: &Value, _: &str, _: Option<Duration>) {}
}

/// A bounded in-memory cache: at most `capacity` entries, the least recently used evicted
/// first; an expired entry is a miss (and dropped when seen). `now` tells the time in
/// seconds (wall-clock time by default; a test's clock otherwise). Calls take one lock.
pub struct MemoryCache {
    capacity: usize,
    now: Box<dyn Fn() -> f64 + Send + Sync>,
    state: std::sync::Mutex<Lru>,
}

/// Entries by (node id, key) with their last use, and the uses in order.
#[derive(Default)]
struct Lru {
    entries: HashMap<(String, String), Stored>,
    order: std::collections::BTreeMap<u64, (String, String)>,
    tick: u64,
}

struct Stored {
    output: Value,
    run_id: String,
    expires: Option<f64>,
    used: u64,
}

impl MemoryCache {
    /// A cache of at most `capacity` (at least 1) entries on the wall clock.
    pub fn new(capacity: usize) -> Self {
        Self::with_clock(capacity, || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        })
    }

    /// A cache of at most `capacity` (at least 1) entries on the clock `now` (seconds).
    pub fn with_clock(capacity: usize, now: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        Self {
            capacity: capacity.max(1),
            now: Box::new(now),
            state: std::sync::Mutex::new(Lru::default()),
        }
    }

    /// How many entries it holds (expired ones not yet seen included).
    pub fn len(&self) -> usize {
        super::lock(&self.state).entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every entry.
    pub fn clear(&self) {
        let mut state = super::lock(&self.state);
        state.entries.clear();
        state.order.clear();
    }
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl NodeCache for MemoryCache {
    fn get(&self, node_id: &str, key: &str) -> Option<CacheHit> {
        let id = (node_id.to_owned(), key.to_owned());
        let now = (self.now)();
        let mut state = super::lock(&self.state);
        let Lru {
            entries,
            order,
            tick,
        } = &mut *state;
        let stored = entries.get_mut(&id)?;
        if stored.expires.is_some_and(|at| now >= at) {
            order.remove(&stored.used);
            entries.remove(&id);
            return None;
        }
        *tick += 1;
        order.remove(&stored.used);
        stored.used = *tick;
        order.insert(*tick, id);
        Some(CacheHit {
            output: stored.output.clone(),
            run_id: stored.run_id.clone(),
        })
    }

    fn put(&self, node_id: &str, key: &str, output: &Value, run_id: &str, ttl: Option<Duration>) {
        let id = (node_id.to_owned(), key.to_owned());
        let expires = ttl.map(|t| (self.now)() + t.as_secs_f64());
        let mut state = super::lock(&self.state);
        let Lru {
            entries,
            order,
            tick,
        } = &mut *state;
        *tick += 1;
        let stored = Stored {
            output: output.clone(),
            run_id: run_id.to_owned(),
            expires,
            used: *tick,
        };
        if let Some(old) = entries.insert(id.clone(), stored) {
            order.remove(&old.used);
        }
        order.insert(*tick, id);
        while entries.len() > self.capacity {
            let Some((_, oldest)) = order.pop_first() else {
                break;
            };
            entries.remove(&oldest);
        }
    }
}

/// How a node is cached.
#[derive(Debug, Clone)]
pub struct CacheSpec {
    /// The node's code identity: a Lua script's text, a Python function's qualified name
    /// and source, a sub-workflow's id and version (the host computes it).
    pub code: String,
    /// The custom key expression (`None`: the default key).
    pub key: Option<String>,
    /// The key expression, compiled as a chunk returning it in a one-element table.
    script: Option<LuaScript>,
    /// How long an entry may be used (`None`: until evicted).
    pub ttl: Option<Duration>,
}

impl CacheSpec {
    /// Cache a node of code identity `code`, under the default key or the Lua expression
    /// `key`; `check` it to find the expression's syntax errors.
    pub fn new(code: impl Into<String>, key: Option<&str>, ttl: Option<Duration>) -> Self {
        Self {
            code: code.into(),
            key: key.map(str::to_owned),
            // A table around it: its value converts to JSON whatever it is (nil: `{}`). A
            // line break before the brackets close: a trailing `--` comment ends there.
            script: key.map(|k| LuaScript::new(format!("return {{({k}\n)}}"))),
            ttl,
        }
    }

    /// The same caching of code identity `code` instead (the engine's own, for one the
    /// sender computed on its copy).
    #[must_use]
    pub fn with_code(&self, code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            ..self.clone()
        }
    }

    /// Compile the key expression (no-op for the default key): its syntax error, if any.
    pub fn check(&self) -> Result<(), dagengine_lua::LuaError> {
        self.script.as_ref().map_or(Ok(()), LuaScript::check)
    }

    /// Whether the key reads the parents' outputs (the default key always does).
    pub(super) fn reads_results(&self) -> bool {
        self.script.as_ref().is_none_or(LuaScript::reads_results)
    }
}

/// One computation of a node's key, with what it reads borrowed from the run.
pub(super) struct KeyCall<'a> {
    pub(super) node: NodeIdx,
    pub(super) run_id: &'a str,
    pub(super) inputs: &'a Arc<Value>,
    pub(super) results: &'a [(NodeIdx, Arc<Value>)],
}

impl KeyCall<'_> {
    /// The key of the node under `spec`; a key expression that fails or gives neither a
    /// string nor a number fails the node (not retryably: a retry would not compute it
    /// again).
    pub(super) fn key(
        &self,
        plan: &Plan,
        spec: &CacheSpec,
        cancel: &AtomicBool,
    ) -> Result<String, NodeFailure> {
        let mut text = String::with_capacity(256);
        canonical(&Value::String(spec.code.clone()), &mut text);
        text.push('\n');
        match &spec.script {
            None => {
                canonical(self.inputs, &mut text);
                text.push('\n');
                let mut parents: Vec<(&str, &Value)> = self
                    .results
                    .iter()
                    .map(|(p, v)| (plan.dag.id(*p), v.as_ref()))
                    .collect();
                parents.sort_unstable_by_key(|(id, _)| *id);
                text.push('{');
                for (i, (id, value)) in parents.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    canonical(&Value::String((*id).to_owned()), &mut text);
                    text.push(':');
                    canonical(value, &mut text);
                }
                text.push('}');
            }
            Some(script) => {
                let value = self.custom(plan, script, cancel)?;
                text.push_str("key:");
                canonical(&value, &mut text);
            }
        }
        Ok(sha256_hex(text.as_bytes()))
    }

    /// The value of the custom key expression: a string or a number.
    fn custom(
        &self,
        plan: &Plan,
        script: &LuaScript,
        cancel: &AtomicBool,
    ) -> Result<Value, NodeFailure> {
        let node_id = plan.dag.id(self.node);
        let call = DriverExpression {
            node: self.node,
            run_id: self.run_id,
            inputs: self.inputs,
            results: self.results,
            node_timeout: None,
        };
        let value = call.run(plan, "cache key", |inputs, results, info, limits| {
            dagengine_lua::evaluate_json(script, inputs, results, info, limits, Some(cancel))
        })?;
        let what = match value {
            Ok(Value::Array(mut one)) if one.len() == 1 => match one.pop() {
                Some(v @ (Value::String(_) | Value::Number(_))) => return Ok(v),
                Some(Value::Bool(b)) => format!("a boolean ({b})"),
                Some(Value::Array(_) | Value::Object(_)) => "a table".to_owned(),
                _ => "nil".to_owned(),
            },
            // `{nil}` is an empty table.
            Ok(_) => "nil".to_owned(),
            Err(what) => what,
        };
        Err(NodeFailure::new(
            "TypeError",
            format!("node '{node_id}': cache key must be a string or a number, got {what}"),
            false,
        ))
    }
}

/// Key the cached nodes among `completed` (a resumed run's checkpoint: they do not run
/// again, and their parents are completed too) as if they had run here: the output of one
/// that ran on an engine lost before its attempt's result came back would otherwise never
/// be stored. One whose key is already in `cache` keeps no key (that entry stands, its run
/// and expiry untouched: the lost attempt may have taken it from there); the others get
/// `cache_key` (the sender stores the output under it, as for a node that ran) and are
/// `put`. A key expression that fails leaves the node unkeyed: it did not fail.
pub(super) fn key_completed(
    plan: &Plan,
    cache: &dyn NodeCache,
    run_id: &str,
    inputs: &Arc<Value>,
    completed: &[NodeIdx],
    records: &mut [NodeRecord],
    cancel: &AtomicBool,
) {
    for &node in completed {
        let Some(spec) = plan.cache(node) else {
            continue;
        };
        let Some(output) = records[node as usize].output.clone() else {
            continue;
        };
        let results: Vec<(NodeIdx, Arc<Value>)> = if spec.reads_results() {
            let parents = plan.dag.parents(node).iter();
            parents
                .filter_map(|&p| records[p as usize].output.clone().map(|v| (p, v)))
                .collect()
        } else {
            Vec::new()
        };
        let call = KeyCall {
            node,
            run_id,
            inputs,
            results: &results,
        };
        let Ok(key) = call.key(plan, spec, cancel) else {
            continue;
        };
        let id = plan.dag.id(node);
        if cache
            .get(id, &key)
            .is_some_and(|hit| hit.output.is_object())
        {
            continue;
        }
        cache.put(id, &key, &output, run_id, spec.ttl);
        records[node as usize].cache_note().cache_key = Some(key);
    }
}

/// `value` as canonical JSON: object keys sorted, no spaces, numbers and strings as
/// `serde_json` writes them.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by_key(|(k, _)| k.as_str());
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

//! Caching through the driver: misses store, hits are not executed, keys (default and
//! custom) and their failures, code changes, and external (Python-like) nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dagengine_core::{Dag, NodePolicy, NodeState, RunStatus};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{json, Map, Value};

use super::*;

/// (node id, key) -> (output, run id, ttl).
type Entries = HashMap<(String, String), (Value, String, Option<Duration>)>;

/// Entries in a map, with the calls it got.
#[derive(Debug, Default)]
struct TestCache {
    entries: Mutex<Entries>,
    gets: AtomicUsize,
}

impl NodeCache for TestCache {
    fn get(&self, node_id: &str, key: &str) -> Option<CacheHit> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let entries = self.entries.lock().unwrap();
        entries
            .get(&(node_id.to_owned(), key.to_owned()))
            .map(|(output, run_id, _)| CacheHit {
                output: output.clone(),
                run_id: run_id.clone(),
            })
    }

    fn put(&self, node_id: &str, key: &str, output: &Value, run_id: &str, ttl: Option<Duration>) {
        self.entries.lock().unwrap().insert(
            (node_id.to_owned(), key.to_owned()),
            (output.clone(), run_id.to_owned(), ttl),
        );
    }
}

fn lua(src: &str) -> NodeKind {
    NodeKind::Lua {
        script: LuaScript::new(src),
        limits: LuaLimits::default(),
    }
}

/// load -> work (cached with `cache`), work's script `work`.
fn plan(work: &str, cache: CacheSpec) -> Plan {
    let mut d = Dag::new();
    d.add_node("load", []).unwrap();
    d.add_node("work", ["load"]).unwrap();
    d.preprocess().unwrap();
    let spec = |kind| NodeSpec {
        kind,
        policy: NodePolicy::default(),
        condition: None,
    };
    let mut plan = Plan::new(
        d,
        vec![spec(lua("return {n = inputs.n or 0}")), spec(lua(work))],
    )
    .unwrap();
    plan.set_cache(1, cache).unwrap();
    plan
}

const WORK: &str = "return {double = results.load.n * 2}";

fn default_key(code: &str) -> CacheSpec {
    CacheSpec::new(code, None, Some(Duration::from_mins(1)))
}

fn run(
    plan: &Arc<Plan>,
    run_id: &str,
    inputs: Value,
    cache: &Arc<TestCache>,
    ext: Option<Arc<dyn ExternalExecutor>>,
) -> (Arc<RunOutcome>, Vec<RunEvent>) {
    let h = start_run(
        plan.clone(),
        RunConfig {
            run_id: run_id.to_owned(),
            inputs: Arc::new(inputs),
            events: true,
            cache: Some(cache.clone() as Arc<dyn NodeCache>),
            ..RunConfig::default()
        },
        ext,
    )
    .unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    (h.outcome().unwrap(), h.next_events(Duration::ZERO))
}

fn kinds(events: &[RunEvent], node: u32) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.node == Some(node))
        .map(|e| e.kind)
        .collect()
}

#[test]
fn a_miss_runs_and_stores_and_a_hit_is_not_executed() {
    let p = Arc::new(plan(WORK, default_key(WORK)));
    let cache = Arc::new(TestCache::default());
    let (o, events) = run(&p, "r1", json!({"n": 4}), &cache, None);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[1].output.as_deref(), Some(&json!({"double": 8})));
    assert_eq!(o.nodes[1].cached_from(), None);
    assert_eq!(o.nodes[1].attempts, 1);
    let key = o.nodes[1]
        .cache_key()
        .map(str::to_owned)
        .expect("a cached node has a key");
    assert_eq!(key.len(), 64, "a SHA-256 in hex: {key}");
    assert_eq!(
        kinds(&events, 1),
        [EventKind::NodeStarted, EventKind::NodeSucceeded]
    );
    {
        let entries = cache.entries.lock().unwrap();
        let (output, run_id, ttl) = &entries[&("work".to_owned(), key.clone())];
        assert_eq!(output, &json!({"double": 8}));
        assert_eq!(run_id, "r1");
        assert_eq!(*ttl, Some(Duration::from_mins(1)));
        assert_eq!(entries.len(), 1, "only the cached node is stored");
    }

    // Same inputs: a hit, not executed, the event names the run it came from.
    let (o, events) = run(&p, "r2", json!({"n": 4}), &cache, None);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[1].status, NodeState::Succeeded);
    assert_eq!(o.nodes[1].output.as_deref(), Some(&json!({"double": 8})));
    assert_eq!(o.nodes[1].cached_from(), Some("r1"));
    assert_eq!(o.nodes[1].attempts, 0, "a hit is not executed");
    assert_eq!(
        kinds(&events, 1),
        [EventKind::NodeCached, EventKind::NodeSucceeded]
    );
    let cached = events.iter().find(|e| e.kind == EventKind::NodeCached);
    assert_eq!(
        cached.map(|e| &e.detail),
        Some(&EventDetail::Cached {
            run_id: "r1".into(),
            key: key.clone()
        })
    );
    let entries = cache.entries.lock().unwrap();
    assert_eq!(
        entries[&("work".to_owned(), key)].1,
        "r1",
        "a hit stores nothing"
    );
}

#[test]
fn other_inputs_parents_outputs_or_code_miss() {
    let cache = Arc::new(TestCache::default());
    let p = Arc::new(plan(WORK, default_key(WORK)));
    let (first, _) = run(&p, "r1", json!({"n": 4}), &cache, None);
    // Other inputs (the parent's output changes with them).
    let (o, _) = run(&p, "r2", json!({"n": 5}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), None);
    assert_ne!(o.nodes[1].cache_key(), first.nodes[1].cache_key());
    // An input the node does not read still counts: the run's inputs are in the key.
    let (o, _) = run(&p, "r3", json!({"n": 4, "other": 1}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), None);
    // The same inputs with their keys in another order: a hit (canonical JSON).
    let (o, _) = run(&p, "r4", json!({"other": 1, "n": 4}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), Some("r3"));
    // A change of code misses.
    let changed = "return {double = results.load.n + results.load.n}";
    let p2 = Arc::new(plan(changed, default_key(changed)));
    let (o, _) = run(&p2, "r5", json!({"n": 4}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), None);
    assert_eq!(o.nodes[1].attempts, 1);
}

#[test]
fn a_custom_key_reads_inputs_and_results() {
    let cache = Arc::new(TestCache::default());
    let spec = CacheSpec::new(WORK, Some("inputs.day .. ':' .. results.load.n"), None);
    let p = Arc::new(plan(WORK, spec));
    let (o, _) = run(
        &p,
        "r1",
        json!({"n": 2, "day": "mon", "x": 1}),
        &cache,
        None,
    );
    assert_eq!(o.nodes[1].cached_from(), None);
    // Another input the key does not read: still a hit.
    let (o, _) = run(
        &p,
        "r2",
        json!({"n": 2, "day": "mon", "x": 2}),
        &cache,
        None,
    );
    assert_eq!(o.nodes[1].cached_from(), Some("r1"));
    let (o, _) = run(&p, "r3", json!({"n": 2, "day": "tue"}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), None);
    // A number is a key too.
    let spec = CacheSpec::new(WORK, Some("inputs.n * 10"), None);
    let p = Arc::new(plan(WORK, spec));
    run(&p, "r4", json!({"n": 3}), &cache, None);
    let (o, _) = run(&p, "r5", json!({"n": 3, "y": 0}), &cache, None);
    assert_eq!(o.nodes[1].cached_from(), Some("r4"));
}

#[test]
fn a_failing_or_bad_key_fails_its_node_naming_it() {
    let cases = [
        (
            "error('no key')",
            "LuaRuntimeError",
            "node 'work': cache key:",
        ),
        (
            "nil",
            "TypeError",
            "node 'work': cache key must be a string or a number, got nil",
        ),
        ("true", "TypeError", "got a boolean (true)"),
        ("{1, 2}", "TypeError", "got a table"),
    ];
    for (expression, kind, message) in cases {
        let cache = Arc::new(TestCache::default());
        let p = Arc::new(plan(WORK, CacheSpec::new(WORK, Some(expression), None)));
        let (o, _) = run(&p, "r", json!({"n": 1}), &cache, None);
        assert_eq!(o.status, RunStatus::Failed, "{expression}");
        let error = o.nodes[1].error.as_ref().expect("failed");
        assert_eq!(error.kind, kind, "{expression}: {error:?}");
        assert!(error.message.contains(message), "{expression}: {error:?}");
        assert!(!error.retryable);
        assert_eq!(
            cache.gets.load(Ordering::SeqCst),
            0,
            "no lookup without a key"
        );
    }
}

#[test]
fn without_a_cache_a_cached_node_just_runs() {
    let p = Arc::new(plan(WORK, default_key(WORK)));
    let config = RunConfig {
        inputs: Arc::new(json!({"n": 1})),
        ..RunConfig::default()
    };
    let h = start_run(p, config, None).unwrap();
    assert!(h.wait(Duration::from_secs(30)));
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[1].cache_key(), None);
    assert_eq!(o.nodes[1].attempts, 1);
}

#[test]
fn a_mapped_node_cannot_be_cached() {
    let mut p = plan(WORK, default_key(WORK));
    p.set_map(
        0,
        MapSpec::new("{1}", dagengine_core::MapOptions::default(), 10),
    );
    let err = p.set_cache(0, default_key("x")).unwrap_err();
    assert!(
        err.contains("node 'load': a mapped node cannot be cached"),
        "{err}"
    );
}

/// An external node counting its calls, with a condition that always holds.
#[derive(Debug, Default)]
struct Counting {
    calls: AtomicUsize,
}

impl ExternalExecutor for Counting {
    fn execute(&self, _plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = call.results.to_vec()[0].1["n"].as_i64().unwrap_or(0);
        let mut out = Map::new();
        out.insert("plus".into(), json!(n + 1));
        Ok(out)
    }

    fn condition(&self, _plan: &Plan, _call: &ExternalCall) -> Result<bool, NodeFailure> {
        Ok(true)
    }
}

#[test]
fn external_nodes_hit_also_behind_an_external_condition() {
    for condition in [None, Some(Condition::External)] {
        let mut d = Dag::new();
        d.add_node("load", []).unwrap();
        d.add_node("work", ["load"]).unwrap();
        d.preprocess().unwrap();
        let mut p = Plan::new(
            d,
            vec![
                NodeSpec {
                    kind: lua("return {n = inputs.n}"),
                    policy: NodePolicy::default(),
                    condition: None,
                },
                NodeSpec {
                    kind: NodeKind::External,
                    policy: NodePolicy::default(),
                    condition: condition.clone(),
                },
            ],
        )
        .unwrap();
        p.set_cache(1, default_key("module:plus")).unwrap();
        let p = Arc::new(p);
        let cache = Arc::new(TestCache::default());
        let ext = Arc::new(Counting::default());
        let (o, _) = run(&p, "r1", json!({"n": 1}), &cache, Some(ext.clone()));
        assert_eq!(o.nodes[1].output.as_deref(), Some(&json!({"plus": 2})));
        let (o, events) = run(&p, "r2", json!({"n": 1}), &cache, Some(ext.clone()));
        assert_eq!(o.status, RunStatus::Succeeded, "{condition:?}");
        assert_eq!(o.nodes[1].output.as_deref(), Some(&json!({"plus": 2})));
        assert_eq!(o.nodes[1].cached_from(), Some("r1"));
        assert_eq!(
            ext.calls.load(Ordering::SeqCst),
            1,
            "{condition:?}: run once"
        );
        assert_eq!(
            kinds(&events, 1),
            [EventKind::NodeCached, EventKind::NodeSucceeded]
        );
    }
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let mut text = String::new();
    canonical(&json!({"b": [1, {"z": 1, "a": "é"}], "a": null}), &mut text);
    assert_eq!(text, r#"{"a":null,"b":[1,{"a":"é","z":1}]}"#);
}

#[test]
fn the_memory_cache_is_a_bounded_lru_with_expiry() {
    use std::sync::atomic::AtomicU64;
    let clock = Arc::new(AtomicU64::new(1_000));
    let now = clock.clone();
    let cache = MemoryCache::with_clock(2, move || now.load(Ordering::SeqCst) as f64);
    let hit = |c: &MemoryCache, node: &str| c.get(node, "k").map(|h| (h.output, h.run_id));
    cache.put("a", "k", &json!({"v": 1}), "r1", None);
    cache.put(
        "b",
        "k",
        &json!({"v": 2}),
        "r1",
        Some(Duration::from_secs(10)),
    );
    assert_eq!(hit(&cache, "a"), Some((json!({"v": 1}), "r1".to_owned())));
    // `a` was used last: `b` goes when `c` comes.
    cache.put("c", "k", &json!({"v": 3}), "r2", None);
    assert_eq!(cache.len(), 2);
    assert_eq!(hit(&cache, "b"), None);
    assert!(hit(&cache, "a").is_some());
    // A ttl runs out on the cache's clock.
    cache.put("d", "k", &json!({}), "r3", Some(Duration::from_secs(10)));
    clock.store(1_009, Ordering::SeqCst);
    assert!(hit(&cache, "d").is_some());
    clock.store(1_010, Ordering::SeqCst);
    assert_eq!(hit(&cache, "d"), None);
    // Replacing an entry keeps one of it.
    cache.put("a", "k", &json!({"v": 9}), "r4", None);
    cache.put("a", "k", &json!({"v": 10}), "r5", None);
    assert_eq!(hit(&cache, "a"), Some((json!({"v": 10}), "r5".to_owned())));
    assert!(cache.len() <= 2);
    cache.clear();
    assert!(cache.is_empty());
}

/// A run resumed with `work` (and `load`) completed, as after a lost engine.
fn resumed(plan: &Arc<Plan>, run_id: &str, cache: &Arc<TestCache>) -> Arc<RunOutcome> {
    let h = start_run(
        plan.clone(),
        RunConfig {
            run_id: run_id.to_owned(),
            inputs: Arc::new(json!({"n": 4})),
            completed: vec![(0, json!({"n": 4})), (1, json!({"double": 8}))],
            cache: Some(cache.clone() as Arc<dyn NodeCache>),
            ..RunConfig::default()
        },
        None,
    )
    .unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    h.outcome().unwrap()
}

#[test]
fn a_completed_cached_node_is_keyed_and_stored_unless_its_entry_is_there() {
    let p = Arc::new(plan(WORK, default_key(WORK)));
    // The key it would have had, had it run here.
    let fresh = Arc::new(TestCache::default());
    let (o, _) = run(&p, "r0", json!({"n": 4}), &fresh, None);
    let key = o.nodes[1].cache_key().unwrap().to_owned();

    let cache = Arc::new(TestCache::default());
    let o = resumed(&p, "r1", &cache);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        o.nodes[1].attempts, 0,
        "a completed node does not run again"
    );
    assert_eq!(o.nodes[1].cache_key(), Some(key.as_str()));
    assert_eq!(o.nodes[1].cached_from(), None);
    assert_eq!(o.nodes[0].cache_key(), None, "load is not cached");
    {
        let entries = cache.entries.lock().unwrap();
        let (output, run_id, ttl) = &entries[&("work".to_owned(), key.clone())];
        assert_eq!((output, run_id.as_str()), (&json!({"double": 8}), "r1"));
        assert_eq!(*ttl, Some(Duration::from_mins(1)));
    }

    // Its entry there already (the lost attempt may have taken it): left as it is.
    let o = resumed(&p, "r2", &cache);
    assert_eq!(o.nodes[1].cache_key(), None, "nothing to store");
    let entries = cache.entries.lock().unwrap();
    assert_eq!(entries[&("work".to_owned(), key)].1, "r1");

    // A key expression that fails leaves the node unkeyed, not failed.
    let bad = Arc::new(plan(WORK, CacheSpec::new(WORK, Some("error('no')"), None)));
    let o = resumed(&bad, "r3", &Arc::new(TestCache::default()));
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[1].status, NodeState::Succeeded);
    assert_eq!(o.nodes[1].cache_key(), None);
}

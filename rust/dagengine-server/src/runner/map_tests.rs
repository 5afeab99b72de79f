//! Dynamic fan-out (`map`) through the driver: expansion, items of every kind, the
//! collected output, failures, limits and a resumed run's completed items.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dagengine_core::{Dag, MapOptions, NodePolicy, NodeState, RunStatus, SkipReason};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{json, Map, Value};

use super::*;

/// extract -> square (mapped over `map`) -> total
fn plan(extract: NodeKind, square: NodeKind, map: MapSpec, when: Option<&str>) -> Plan {
    let mut d = Dag::new();
    d.add_node("extract", []).unwrap();
    d.add_node("square", ["extract"]).unwrap();
    d.add_node("total", ["square"]).unwrap();
    d.preprocess().unwrap();
    let spec = |kind, condition| NodeSpec {
        kind,
        policy: NodePolicy::default(),
        condition,
    };
    let total = lua("local s = 0 for _, p in ipairs(results.square) do \
         if p ~= json.null then s = s + p.sq end end return {sum = s, n = #results.square}");
    let mut plan = Plan::new(
        d,
        vec![
            spec(extract, None),
            spec(square, when.map(Condition::lua)),
            spec(total, None),
        ],
    )
    .unwrap();
    plan.set_map(1, map);
    plan
}

fn lua(src: &str) -> NodeKind {
    NodeKind::Lua {
        script: LuaScript::new(src),
        limits: LuaLimits::default(),
    }
}

fn rows(rows: &str) -> NodeKind {
    lua(&format!("return {{rows = {rows}}}"))
}

fn map(expression: &str) -> MapSpec {
    MapSpec::new(expression, MapOptions::default(), DEFAULT_MAX_ITEMS)
}

const SQUARE: &str = "return {sq = item * item, i = index, id = ctx.node_id}";

fn run_with(
    plan: Plan,
    config: RunConfig,
    ext: Option<Arc<dyn ExternalExecutor>>,
) -> (Arc<RunOutcome>, Vec<RunEvent>) {
    let plan = Arc::new(plan);
    let h = start_run(
        plan,
        RunConfig {
            events: true,
            ..config
        },
        ext,
    )
    .unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    let events = h.next_events(Duration::ZERO);
    (h.outcome().unwrap(), events)
}

fn run(plan: Plan) -> (Arc<RunOutcome>, Vec<RunEvent>) {
    run_with(plan, RunConfig::default(), None)
}

/// The ids of the nodes and items `kind` events were about, in order.
fn ids(plan: &Plan, events: &[RunEvent], kind: EventKind) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.node_id(plan).unwrap())
        .collect()
}

#[test]
fn lua_items_run_once_each_and_their_outputs_are_a_list() {
    let p = plan(
        rows("{3, 4, 5}"),
        lua(SQUARE),
        map("results.extract.rows"),
        None,
    );
    let reference = plan(NodeKind::Noop, NodeKind::Noop, map("x"), None);
    let (o, events) = run(p);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes.len(), 3, "items have no records of their own");
    assert_eq!(
        o.nodes[1].output.as_deref(),
        Some(&json!([
            {"sq": 9, "i": 0, "id": "square[0]"},
            {"sq": 16, "i": 1, "id": "square[1]"},
            {"sq": 25, "i": 2, "id": "square[2]"},
        ]))
    );
    assert_eq!(
        o.nodes[2].output.as_deref(),
        Some(&json!({"sum": 50, "n": 3}))
    );
    let mapped: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeMapped)
        .map(|e| (e.node, e.item, e.detail.clone()))
        .collect();
    assert_eq!(mapped, [(Some(1), None, EventDetail::Mapped(3))]);
    let mut started = ids(&reference, &events, EventKind::NodeStarted);
    started.sort();
    assert_eq!(
        started,
        [
            "extract",
            "square",
            "square[0]",
            "square[1]",
            "square[2]",
            "total"
        ]
    );
    // The node's end comes after its items'.
    let succeeded = ids(&reference, &events, EventKind::NodeSucceeded);
    let at = |id: &str| succeeded.iter().position(|s| s == id).unwrap();
    assert!(at("square") > at("square[0]") && at("square") > at("square[2]"));
    assert!(at("total") > at("square"));
}

#[test]
fn noop_and_lua_expression_maps() {
    let inputs = Arc::new(json!({"items": ["a", "b"], "n": 4}));
    let config = || RunConfig {
        inputs: inputs.clone(),
        ..Default::default()
    };
    let p = plan(NodeKind::Noop, NodeKind::Noop, map("inputs.items"), None);
    let (o, _) = run_with(p, config(), None);
    assert_eq!(o.nodes[1].output.as_deref(), Some(&json!([{}, {}])));
    // Any Lua expression giving an array.
    let expr = "(function() local t = {} for i = 1, inputs.n do t[i] = i end return t end)()";
    let p = plan(NodeKind::Noop, lua(SQUARE), map(expr), None);
    let (o, _) = run_with(p, config(), None);
    assert_eq!(
        o.nodes[2].output.as_deref(),
        Some(&json!({"sum": 30, "n": 4}))
    );
}

#[test]
fn an_empty_list_succeeds_with_an_empty_list() {
    for rows_src in ["{}", "json.decode('[]')"] {
        let p = plan(
            rows(rows_src),
            lua(SQUARE),
            map("results.extract.rows"),
            None,
        );
        let (o, _) = run(p);
        assert_eq!(o.status, RunStatus::Succeeded);
        assert_eq!(o.nodes[1].output.as_deref(), Some(&json!([])));
        assert_eq!(
            o.nodes[2].output.as_deref(),
            Some(&json!({"sum": 0, "n": 0}))
        );
    }
}

#[test]
fn a_failed_item_fails_the_node_and_skips_its_children() {
    let src = "if item == 4 then error('no four') end return {sq = item * item}";
    let p = plan(
        rows("{3, 4, 5}"),
        lua(src),
        map("results.extract.rows"),
        None,
    );
    let (o, events) = run(p);
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(o.nodes[1].status, NodeState::Failed);
    assert_eq!(o.nodes[2].status, NodeState::Skipped);
    assert_eq!(o.nodes[2].skip_reason, Some(SkipReason::UpstreamFailed));
    let err = o.error.as_ref().unwrap();
    assert_eq!(err.node_id.as_deref(), Some("square"));
    assert!(
        err.message.contains("item 1 failed") && err.message.contains("no four"),
        "{}",
        err.message
    );
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeFailed)
        .map(|e| (e.node, e.item))
        .collect();
    assert_eq!(failed, [(Some(1), Some(1)), (Some(1), None)]);
}

#[test]
fn allow_partial_turns_failed_items_into_nulls() {
    let src = "if item == 4 then error('no four') end return {sq = item * item}";
    let partial = MapSpec::new(
        "results.extract.rows",
        MapOptions {
            max_parallel: Some(1),
            allow_partial: true,
        },
        DEFAULT_MAX_ITEMS,
    );
    let p = plan(rows("{3, 4, 5}"), lua(src), partial, None);
    let (o, _) = run(p);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        o.nodes[1].output.as_deref(),
        Some(&json!([{"sq": 9}, null, {"sq": 25}]))
    );
    assert_eq!(
        o.nodes[2].output.as_deref(),
        Some(&json!({"sum": 34, "n": 3}))
    );
}

#[test]
fn a_list_that_is_not_an_array_or_too_long_fails_the_node_naming_it() {
    for (expr, says) in [
        ("results.extract.rows", "got a number (3)"),
        ("results.extract.missing", "got nil"),
        ("inputs.nothing", "got nil"),
        ("'text'", "got a string (\"text\")"),
        ("{a = 1}", "got a table with keys"),
    ] {
        let p = plan(rows("3"), lua(SQUARE), map(expr), None);
        let (o, events) = run(p);
        assert_eq!(o.status, RunStatus::Failed, "{expr}");
        let f = o.nodes[1].error.as_ref().unwrap();
        assert_eq!(f.kind, "TypeError");
        assert!(
            f.message
                .starts_with("node 'square': map must give an array")
                && f.message.contains(says),
            "{expr}: {}",
            f.message
        );
        assert!(!events.iter().any(|e| e.kind == EventKind::NodeMapped));
    }
    let short = MapSpec::new("results.extract.rows", MapOptions::default(), 2);
    let (o, _) = run(plan(rows("{1, 2, 3}"), lua(SQUARE), short, None));
    let f = o.nodes[1].error.as_ref().unwrap();
    assert_eq!(
        f.message,
        "node 'square': map gives 3 items, more than its limit of 2 (max_items)"
    );
    // A map expression that errs fails the node too.
    let (o, _) = run(plan(rows("{}"), lua(SQUARE), map("nil .. 1"), None));
    let f = o.nodes[1].error.as_ref().unwrap();
    assert!(
        f.message.starts_with("node 'square': map: "),
        "{}",
        f.message
    );
}

#[test]
fn when_is_checked_once_for_the_mapped_node() {
    let p = plan(
        rows("{1, 2}"),
        lua(SQUARE),
        map("results.extract.rows"),
        Some("false"),
    );
    let (o, events) = run(p);
    assert_eq!(o.nodes[1].status, NodeState::Skipped);
    assert_eq!(o.nodes[1].skip_reason, Some(SkipReason::Condition));
    assert!(!events.iter().any(|e| e.kind == EventKind::NodeMapped));
    let p = plan(
        rows("{1, 2}"),
        lua(SQUARE),
        map("results.extract.rows"),
        Some("#results.extract.rows == 2"),
    );
    let (o, _) = run(p);
    assert_eq!(
        o.nodes[2].output.as_deref(),
        Some(&json!({"sum": 5, "n": 2}))
    );
}

/// Doubles its item; counts its calls.
struct Double(AtomicUsize);
impl ExternalExecutor for Double {
    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        assert_eq!(plan.dag().id(call.node), "square");
        let (index, item) = call.item.expect("an item");
        let mut out = Map::new();
        out.insert("sq".into(), json!(item.as_i64().unwrap() * 2));
        out.insert("index".into(), json!(index));
        Ok(out)
    }
}

#[test]
fn external_items_get_their_item_and_index() {
    let ext = Arc::new(Double(AtomicUsize::new(0)));
    let p = plan(
        rows("{1, 2, 3}"),
        NodeKind::External,
        map("results.extract.rows"),
        None,
    );
    let (o, _) = run_with(p, RunConfig::default(), Some(ext.clone()));
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        o.nodes[1].output.as_deref(),
        Some(&json!([{"sq": 2, "index": 0}, {"sq": 4, "index": 1}, {"sq": 6, "index": 2}]))
    );
    assert_eq!(ext.0.load(Ordering::SeqCst), 3);
}

#[test]
fn a_resumed_run_does_not_run_completed_items_again() {
    let ext = Arc::new(Double(AtomicUsize::new(0)));
    let p = plan(
        rows("{1, 2, 3, 4}"),
        NodeKind::External,
        map("results.extract.rows"),
        None,
    );
    assert_eq!(p.resolve("square[2]"), Some((1, Some(2))));
    assert_eq!(p.resolve("square"), Some((1, None)));
    assert_eq!(p.resolve("square[02]"), None);
    assert_eq!(p.resolve("extract[0]"), None, "extract is not mapped");
    let config = RunConfig {
        completed: vec![(0, json!({"rows": [1, 2, 3, 4]}))],
        completed_items: vec![
            (1, 0, json!({"sq": 100, "index": 0})),
            (1, 2, json!({"sq": 300, "index": 2})),
        ],
        ..Default::default()
    };
    let (o, events) = run_with(p, config, Some(ext.clone()));
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(ext.0.load(Ordering::SeqCst), 2, "only items 1 and 3 ran");
    assert_eq!(
        o.nodes[1].output.as_deref(),
        Some(&json!([
            {"sq": 100, "index": 0},
            {"sq": 4, "index": 1},
            {"sq": 300, "index": 2},
            {"sq": 8, "index": 3},
        ]))
    );
    let started: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeStarted)
        .map(|e| (e.node, e.item))
        .collect();
    assert_eq!(
        started,
        [
            (Some(1), None),
            (Some(1), Some(1)),
            (Some(1), Some(3)),
            (Some(2), None)
        ]
    );
}

#[test]
fn items_retry_under_the_nodes_policy() {
    // Items 0 and 2 fail on their first attempt and succeed on the second.
    let src =
        "if ctx.attempt == 1 and index % 2 == 0 then error('once') end return {sq = item, a = ctx.attempt}";
    let mut p = plan(
        rows("{1, 2, 3}"),
        lua(src),
        map("results.extract.rows"),
        None,
    );
    p.set_policies(vec![
        NodePolicy::default(),
        NodePolicy {
            retries: 1,
            backoff: dagengine_core::Backoff {
                initial: Duration::from_millis(1),
                factor: 1.0,
                max: Duration::from_millis(1),
            },
            ..NodePolicy::default()
        },
        NodePolicy::default(),
    ]);
    let (o, events) = run(p);
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    assert_eq!(
        o.nodes[1].output.as_deref(),
        Some(&json!([{"sq": 1, "a": 2}, {"sq": 2, "a": 1}, {"sq": 3, "a": 2}]))
    );
    let retried: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeRetrying)
        .map(|e| e.item)
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried.contains(&Some(0)) && retried.contains(&Some(2)));
}

#[test]
fn a_cancel_stops_a_mapped_node_and_its_items() {
    let endless = MapSpec::new(
        "results.extract.rows",
        MapOptions {
            max_parallel: Some(2),
            allow_partial: false,
        },
        DEFAULT_MAX_ITEMS,
    );
    let p = plan(
        rows("{1, 2, 3, 4, 5}"),
        lua("while true do end"),
        endless,
        None,
    );
    let h = start_run(
        Arc::new(p),
        RunConfig {
            events: true,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &RunEvent| e.kind == EventKind::NodeStarted && e.item.is_some())
    {
        assert!(std::time::Instant::now() < deadline, "no item started");
        seen.extend(h.next_events(Duration::from_millis(50)));
    }
    h.cancel();
    assert!(
        h.wait(Duration::from_secs(10)),
        "cancel did not stop the run"
    );
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.nodes[1].status, NodeState::Cancelled);
    assert_eq!(o.nodes[2].status, NodeState::Cancelled);
}

#[test]
fn an_item_times_out_under_the_nodes_timeout_and_fails_the_node() {
    let slow = "if index == 1 then while true do end end return {sq = item}";
    let mut p = plan(
        rows("{1, 2, 3}"),
        lua(slow),
        map("results.extract.rows"),
        None,
    );
    p.set_policies(vec![
        NodePolicy::default(),
        NodePolicy {
            timeout: Some(Duration::from_millis(50)),
            ..NodePolicy::default()
        },
        NodePolicy::default(),
    ]);
    let config = RunConfig {
        options: dagengine_core::RunOptions {
            fail_fast: true,
            max_parallel: None,
        },
        ..Default::default()
    };
    let (o, _) = run_with(p, config, None);
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(o.nodes[1].status, NodeState::Failed);
    // As for any failed node: its children hear of it before fail_fast stops the rest.
    assert_eq!(o.nodes[2].skip_reason, Some(SkipReason::UpstreamFailed));
    let f = o.nodes[1].error.as_ref().unwrap();
    assert_eq!(f.kind, "NodeTimeout");
    assert!(
        f.message.contains("item 1 failed") && f.message.contains("square[1]"),
        "{}",
        f.message
    );
}

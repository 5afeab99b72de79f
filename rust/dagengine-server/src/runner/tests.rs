use std::sync::atomic::AtomicUsize;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagengine_core::{Dag, NodeIdx, NodePolicy, NodeState, RunOptions, RunStatus};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{Map, Value};

use super::lua::{lua_pool, wall_limit, WallLimit};
use super::model::REAP_MIN_NODES;
use super::*;
use dagengine_core::Backoff;

fn dag(edges: &[(&str, &[&str])]) -> Dag {
    let mut d = Dag::new();
    for (id, deps) in edges {
        d.add_node(id, deps.iter().copied()).unwrap();
    }
    d.preprocess().unwrap();
    d
}

fn lua(src: &str) -> NodeKind {
    NodeKind::Lua {
        script: LuaScript::new(src),
        limits: LuaLimits::default(),
    }
}

fn spec(kind: NodeKind) -> NodeSpec {
    NodeSpec {
        kind,
        policy: NodePolicy::default(),
        condition: None,
    }
}

/// Start `plan` on the pool with events on.
fn start_with_events(plan: Plan) -> RunHandle {
    start_run(
        Arc::new(plan),
        RunConfig {
            events: true,
            ..Default::default()
        },
        None,
    )
    .unwrap()
}

fn run(
    plan: Plan,
    cfg: RunConfig,
    ext: Option<Arc<dyn ExternalExecutor>>,
) -> (Arc<RunOutcome>, Vec<RunEvent>) {
    let h = start_run(
        Arc::new(plan),
        RunConfig {
            events: true,
            ..cfg
        },
        ext,
    )
    .unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    let events = h.next_events(Duration::ZERO);
    (h.outcome().unwrap(), events)
}

/// Calls a Rust closure per external node.
struct Closure<F>(F);
impl<F> ExternalExecutor for Closure<F>
where
    F: Fn(&Plan, ExternalCall) -> Result<Map<String, Value>, NodeFailure> + Send + Sync,
{
    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        (self.0)(plan, call)
    }
}

#[test]
fn lua_pipeline_passes_results_and_inputs() {
    let d = dag(&[("extract", &[]), ("transform", &["extract"])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua("return {rows = {1, 2, 3}}")),
            spec(lua(
                "local s = 0 for _, v in ipairs(results.extract.rows) do s = s + v end \
                 return {total = s * inputs.factor, node = ctx.node_id}",
            )),
        ],
    )
    .unwrap();
    let inputs = Arc::new(serde_json::json!({"factor": 3}));
    let (o, events) = run(
        plan,
        RunConfig {
            run_id: "r1".into(),
            inputs,
            ..Default::default()
        },
        None,
    );
    assert_eq!(o.status, RunStatus::Succeeded);
    let out = o.nodes[1].output.as_ref().unwrap();
    assert_eq!(**out, serde_json::json!({"total": 18, "node": "transform"}));
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.first(), Some(&EventKind::RunStarted));
    assert_eq!(kinds.last(), Some(&EventKind::RunFinished));
    assert!(events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[test]
fn lua_nodes_of_one_source_share_its_script() {
    let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["a"])]);
    let src = "return {n = 1}";
    let plan = Plan::new(
        d,
        vec![spec(lua(src)), spec(lua(src)), spec(lua("return {}"))],
    )
    .unwrap();
    let text = |i: usize| match &plan.kinds[i] {
        NodeKind::Lua { script, .. } => script.source().as_ptr(),
        _ => unreachable!("all Lua"),
    };
    assert_eq!(text(0), text(1));
    assert_ne!(text(0), text(2));
}

#[test]
fn failure_skips_descendants_and_reports_first_failure() {
    let d = dag(&[("bad", &[]), ("child", &["bad"]), ("free", &[])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua("error('boom')")),
            spec(NodeKind::Noop),
            spec(lua("return {ok = true}")),
        ],
    )
    .unwrap();
    let (o, _) = run(plan, RunConfig::default(), None);
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(o.nodes[0].status, NodeState::Failed);
    assert_eq!(o.nodes[1].status, NodeState::Skipped);
    assert_eq!(o.nodes[2].status, NodeState::Succeeded);
    let err = o.error.as_ref().unwrap();
    assert_eq!(err.node_id.as_deref(), Some("bad"));
    assert!(err.message.contains("boom"), "{}", err.message);
}

#[test]
fn external_nodes_retry_with_backoff_then_succeed() {
    let d = dag(&[("flaky", &[])]);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let ext = Closure(move |_: &Plan, call: ExternalCall| {
        c.fetch_add(1, Ordering::SeqCst);
        if call.attempt < 3 {
            Err(NodeFailure::new("ValueError", "not yet", true))
        } else {
            let mut m = Map::new();
            m.insert("attempt".into(), call.attempt.into());
            Ok(m)
        }
    });
    let policy = NodePolicy {
        retries: 3,
        backoff: Backoff {
            initial: Duration::from_millis(5),
            factor: 2.0,
            max: Duration::from_secs(1),
        },
        ..NodePolicy::default()
    };
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: NodeKind::External,
            policy,
            condition: None,
        }],
    )
    .unwrap();
    let (o, events) = run(plan, RunConfig::default(), Some(Arc::new(ext)));
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(o.nodes[0].attempts, 3);
    let retries = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeRetrying)
        .count();
    assert_eq!(retries, 2);
}

#[test]
fn external_node_timeout_fails_the_node_without_waiting_for_it() {
    let d = dag(&[("slow", &[])]);
    let ext = Closure(|_: &Plan, call: ExternalCall| {
        while !call.cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(NodeFailure::new("Cancelled", "saw the flag", false))
    });
    let policy = NodePolicy {
        timeout: Some(Duration::from_millis(50)),
        ..NodePolicy::default()
    };
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: NodeKind::External,
            policy,
            condition: None,
        }],
    )
    .unwrap();
    let (o, _) = run(plan, RunConfig::default(), Some(Arc::new(ext)));
    assert_eq!(o.status, RunStatus::Failed);
    let err = o.nodes[0].error.as_ref().unwrap();
    assert_eq!(err.kind, "NodeTimeout");
}

#[test]
fn lua_node_timeout_interrupts_an_endless_loop() {
    let d = dag(&[("spin", &[])]);
    let policy = NodePolicy {
        timeout: Some(Duration::from_millis(100)),
        ..NodePolicy::default()
    };
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: lua("while true do end"),
            policy,
            condition: None,
        }],
    )
    .unwrap();
    let t = Instant::now();
    let (o, _) = run(plan, RunConfig::default(), None);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(o.nodes[0].error.as_ref().unwrap().kind, "NodeTimeout");
}

#[test]
fn run_timeout_stops_the_run() {
    let d = dag(&[("spin", &[]), ("after", &["spin"])]);
    let plan = Plan::new(
        d,
        vec![spec(lua("while true do end")), spec(NodeKind::Noop)],
    )
    .unwrap();
    let cfg = RunConfig {
        timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let (o, _) = run(plan, cfg, None);
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(o.error.as_ref().unwrap().kind, "RunTimeout");
    assert_eq!(o.nodes[0].status, NodeState::Cancelled);
    assert_eq!(o.nodes[1].status, NodeState::Cancelled);
}

#[test]
fn cancel_interrupts_running_lua_and_cancels_pending() {
    let d = dag(&[("spin", &[]), ("after", &["spin"])]);
    let plan = Plan::new(
        d,
        vec![spec(lua("while true do end")), spec(NodeKind::Noop)],
    )
    .unwrap();
    let h = start_with_events(plan);
    // Wait until the node has started, then cancel.
    let mut started = false;
    while !started {
        started = h
            .next_events(Duration::from_secs(5))
            .iter()
            .any(|e| e.kind == EventKind::NodeStarted);
    }
    h.cancel();
    assert!(h.wait(Duration::from_secs(5)));
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.nodes[0].status, NodeState::Cancelled);
    assert_eq!(o.nodes[1].status, NodeState::Cancelled);
}

#[test]
fn completed_nodes_are_not_run_again_and_feed_their_children() {
    let d = dag(&[("a", &[]), ("b", &["a"])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua("error('must not run')")),
            spec(lua("return {v = results.a.v + 1}")),
        ],
    )
    .unwrap();
    let cfg = RunConfig {
        completed: vec![(0, serde_json::json!({"v": 41}))],
        ..Default::default()
    };
    let (o, _) = run(plan, cfg, None);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        **o.nodes[1].output.as_ref().unwrap(),
        serde_json::json!({"v": 42})
    );
}

/// A chain of `n` no-op nodes `n0 -> n1 -> ...`.
fn noop_chain(n: usize) -> Plan {
    chain_of(n, Vec::new())
}

/// A chain of `n` nodes `n0 -> n1 -> ...` running `specs` (none: no-op nodes).
fn chain_of(n: usize, specs: Vec<NodeSpec>) -> Plan {
    let mut d = Dag::new();
    let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let deps: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec![ids[i - 1].as_str()]
        };
        d.add_node(id, deps).unwrap();
    }
    d.preprocess().unwrap();
    Plan::new(d, specs).unwrap()
}

#[test]
fn ten_thousand_noop_chain() {
    let plan = noop_chain(10_000);
    let (o, events) = run(plan, RunConfig::default(), None);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert!(o.nodes.iter().all(|r| r.status == NodeState::Succeeded));
    assert_eq!(events.len(), 2 + 2 * 10_000);
}

#[test]
fn parallel_lua_nodes_all_run() {
    let mut d = Dag::new();
    d.add_node("root", []).unwrap();
    for i in 0..200 {
        d.add_node(&format!("w{i}"), ["root"]).unwrap();
    }
    let deps: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    d.add_node("join", deps.iter().map(String::as_str)).unwrap();
    d.preprocess().unwrap();
    let mut nodes = vec![spec(NodeKind::Noop)];
    nodes.extend((0..200).map(|_| spec(lua("return {x = ctx.node_id}"))));
    nodes.push(spec(lua(
        "local n = 0 for _ in pairs(results) do n = n + 1 end return {n = n}",
    )));
    let plan = Plan::new(d, nodes).unwrap();
    let (o, _) = run(plan, RunConfig::default(), None);
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        **o.nodes[201].output.as_ref().unwrap(),
        serde_json::json!({"n": 200})
    );
}

/// A no-op root and `width` nodes under it, node `i + 1` of kind `kind(i)`.
fn fan_out(width: usize, kind: impl Fn(usize) -> NodeKind) -> Plan {
    let mut d = Dag::new();
    d.add_node("root", []).unwrap();
    for i in 0..width {
        d.add_node(&format!("w{i}"), ["root"]).unwrap();
    }
    d.preprocess().unwrap();
    let mut nodes = vec![spec(NodeKind::Noop)];
    nodes.extend((0..width).map(|i| spec(kind(i))));
    Plan::new(d, nodes).unwrap()
}

/// Every node under the root ran once and returned `{id = ctx.node_id}`.
fn assert_each_ran_once_with_its_id(o: &RunOutcome) {
    assert_eq!(o.status, RunStatus::Succeeded);
    for (i, rec) in o.nodes[1..].iter().enumerate() {
        assert_eq!(rec.attempts, 1);
        assert_eq!(
            **rec.output.as_ref().unwrap(),
            serde_json::json!({ "id": format!("w{i}") })
        );
    }
}

#[test]
fn waiting_for_the_end_does_not_wake_for_each_event() {
    // The driver publishes events once per node it runs itself: a thread waiting only for
    // the end must sleep through them (it took ~7 ms of CPU per 10,000-node run from the
    // run's own threads when every publish woke it).
    let plan = fan_out(2_000, |_| lua("return {}"));
    let h = start_with_events(plan);
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    assert_eq!(h.outcome().unwrap().status, RunStatus::Succeeded);
    let events = h.next_events(Duration::ZERO);
    assert!(events.len() > 4_000, "{} events", events.len());
    // A look before it sleeps, one when the end wakes it (and a spurious wake-up at most).
    let looks = h.shared.end_waiters.looks.load(Ordering::SeqCst);
    assert!(looks <= 3, "the waiter looked {looks} times");
}

#[test]
fn cancel_reaches_fan_out_nodes_run_by_the_driver_and_by_the_pool() {
    // More endless nodes than pool threads: some run on the pool; the driver runs the quick
    // node it keeps for itself, then takes the next waiting endless one; the rest wait. A
    // cancel must stop all of them.
    let width = lua_pool().max_threads() + 3;
    let plan = fan_out(width, |i| {
        // The last ready node is the one the driver keeps (work-first).
        let src = if i + 1 == width {
            "return {}"
        } else {
            "while true do end"
        };
        NodeKind::Lua {
            script: LuaScript::new(src),
            limits: LuaLimits::UNLIMITED,
        }
    });
    let h = start_with_events(plan);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quick_done = false;
    while !quick_done {
        assert!(Instant::now() < deadline, "the fan-out did not start");
        quick_done = h
            .next_events(Duration::from_millis(100))
            .iter()
            .any(|e| e.kind == EventKind::NodeSucceeded && e.node == Some(width as NodeIdx));
    }
    // Once the quick node is done the driver takes a waiting endless node to run itself.
    while h.shared.stolen.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the driver took no waiting node");
        std::thread::sleep(Duration::from_millis(1)); // polling the condition
    }
    let asked = Instant::now();
    h.cancel();
    assert!(
        h.wait(Duration::from_secs(5)),
        "cancel did not stop the run"
    );
    assert!(asked.elapsed() < Duration::from_secs(2));
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.nodes[width].status, NodeState::Succeeded);
    for rec in &o.nodes[1..width] {
        assert_eq!(rec.status, NodeState::Cancelled);
    }
}

#[test]
fn a_long_node_the_driver_took_is_given_back_and_runs_once() {
    // Longer than the driver's budget for a node it takes from the backlog: it is
    // interrupted, given back and run by a pool thread; nobody sees it twice.
    let width = lua_pool().max_threads() + 4;
    let plan = fan_out(width, |_| {
        lua("for _ = 1, 3e6 do end return {id = ctx.node_id}")
    });
    let (o, events) = run(plan, RunConfig::default(), None);
    assert_each_ran_once_with_its_id(&o);
    for node in 1..=width {
        assert_eq!(
            node_events(&events, node as NodeIdx),
            [EventKind::NodeStarted, EventKind::NodeSucceeded]
        );
    }
}

#[test]
fn waiting_lua_nodes_of_a_stopped_run_end_cancelled() {
    // fail_fast: the first node to run fails at once (the one the driver keeps for itself
    // or the first in the backlog: both fail); of the others, only those a pool thread had
    // already started may finish; the rest end cancelled (and are not run at all). The
    // others do some work, so that the pool threads cannot drain the whole backlog while
    // the driver is recording the failure (with `return {}` they did, about 1 run in 30).
    let width = 300;
    let plan = fan_out(width, |i| {
        lua(if i == 0 || i + 1 == width {
            "error('boom')"
        } else {
            "local s = 0 for i = 1, 20000 do s = s + i end return {}"
        })
    });
    let cfg = RunConfig {
        options: RunOptions {
            fail_fast: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (o, _) = run(plan, cfg, None);
    assert_eq!(o.status, RunStatus::Failed);
    let count = |s: NodeState| o.nodes.iter().filter(|r| r.status == s).count();
    assert!((1..=2).contains(&count(NodeState::Failed)));
    assert!(
        count(NodeState::Cancelled) > width / 2,
        "succeeded {}, cancelled {}",
        count(NodeState::Succeeded),
        count(NodeState::Cancelled)
    );
    assert_eq!(
        count(NodeState::Failed) + count(NodeState::Succeeded) + count(NodeState::Cancelled),
        width + 1
    );
}

#[test]
fn a_wide_lua_fan_out_runs_every_node_once() {
    let width = 5_000;
    let plan = fan_out(width, |_| lua("return {id = ctx.node_id}"));
    let (o, events) = run(plan, RunConfig::default(), None);
    assert_each_ran_once_with_its_id(&o);
    let started = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeStarted)
        .count();
    assert_eq!(started, width + 1);
}

// --- runs started on the caller's thread ------------------------------------------------------

fn start_inline(plan: Plan, budget: Duration) -> RunHandle {
    let cfg = RunConfig {
        events: true,
        inputs: Arc::new(serde_json::json!({"factor": 3})),
        ..Default::default()
    };
    start_run_inline(Arc::new(plan), cfg, None, budget).unwrap()
}

fn node_events(events: &[RunEvent], node: NodeIdx) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.node == Some(node))
        .map(|e| e.kind)
        .collect()
}

#[test]
fn a_short_run_ends_on_the_callers_thread() {
    let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua("return {v = inputs.factor}")),
            spec(lua("return {v = results.a.v + 1}")),
            spec(NodeKind::Noop),
        ],
    )
    .unwrap();
    // A budget no 3-node run can spend: it must have ended before the call returned.
    let h = start_inline(plan, Duration::from_mins(1));
    assert!(h.is_done());
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        **o.nodes[1].output.as_ref().unwrap(),
        serde_json::json!({"v": 4})
    );
    let events = h.next_events(Duration::ZERO);
    assert!(events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[test]
fn a_lua_node_past_the_budget_moves_to_the_pool_and_runs_once_as_far_as_anyone_sees() {
    // The first node spins far longer than the budget: it is interrupted on the caller's
    // thread and run again on the pool, where it finishes; its events say it ran once.
    let d = dag(&[("spin", &[]), ("after", &["spin"])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua(
                "local n = 0 for i = 1, 3000000 do n = n + i end log('sum', n) \
                 return {n = n, attempt = ctx.attempt}",
            )),
            spec(lua("return {seen = results.spin.n}")),
        ],
    )
    .unwrap();
    let h = start_inline(plan, Duration::from_micros(50));
    assert!(!h.is_done(), "3 million iterations cannot end within 50 µs");
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    let sum: u64 = (1..=3_000_000u64).sum();
    assert_eq!(
        **o.nodes[0].output.as_ref().unwrap(),
        serde_json::json!({"n": sum, "attempt": 1})
    );
    assert_eq!(o.nodes[0].attempts, 1);
    assert_eq!(
        **o.nodes[1].output.as_ref().unwrap(),
        serde_json::json!({"seen": sum})
    );
    let events = h.next_events(Duration::ZERO);
    assert_eq!(
        node_events(&events, 0),
        vec![
            EventKind::NodeStarted,
            EventKind::NodeLog,
            EventKind::NodeSucceeded
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[test]
fn a_long_chain_of_quick_nodes_goes_on_elsewhere_and_ends() {
    // The chain's head spins far past the budget (moved to the pool, as above), so that the
    // check that the call returned before the run ended does not race the pool: 20,000
    // no-op nodes alone could end there before a loaded machine ran the check.
    let mut specs = vec![spec(lua(
        "local n = 0 for i = 1, 3000000 do n = n + i end return {n = n}",
    ))];
    specs.extend((1..20_000).map(|_| spec(NodeKind::Noop)));
    let h = start_inline(chain_of(20_000, specs), Duration::ZERO);
    assert!(
        !h.is_done(),
        "a zero budget leaves everything but the start to the pool"
    );
    assert!(h.wait(Duration::from_secs(30)));
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    let mut events = h.next_events(Duration::ZERO);
    while events.last().map(|e| e.kind) != Some(EventKind::RunFinished) {
        events.extend(h.next_events(Duration::from_secs(1)));
    }
    assert_eq!(events.len(), 2 + 2 * 20_000);
}

#[test]
fn a_small_fan_out_ends_on_the_callers_thread() {
    // Two ready Lua nodes: one waits in the backlog, which no pool job drains while the
    // run is inline; the caller's thread runs both, then the join.
    let d = dag(&[("a", &[]), ("b", &[]), ("join", &["a", "b"])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua("return {v = 1}")),
            spec(lua("return {v = 2}")),
            spec(lua("return {v = results.a.v + results.b.v}")),
        ],
    )
    .unwrap();
    let h = start_inline(plan, Duration::from_mins(1));
    assert!(h.is_done(), "a 3-node run cannot spend a minute");
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(
        **o.nodes[2].output.as_ref().unwrap(),
        serde_json::json!({"v": 3})
    );
}

#[test]
fn a_waiting_node_past_the_budget_is_left_and_runs_once_as_far_as_anyone_sees() {
    // The long sibling is first in the backlog: the caller's thread takes it, spends the
    // budget in it and leaves it to the pool (started only then) and the driver; it runs
    // once as far as its events and record tell, and so do its quick siblings.
    let d = dag(&[("long", &[]), ("q1", &[]), ("q2", &[]), ("q3", &[])]);
    let plan = Plan::new(
        d,
        vec![
            spec(lua(
                "local n = 0 for i = 1, 3000000 do n = n + i end return {n = n}",
            )),
            spec(lua("return {v = 1}")),
            spec(lua("return {v = 2}")),
            spec(lua("return {v = 3}")),
        ],
    )
    .unwrap();
    let h = start_inline(plan, Duration::from_micros(200));
    assert!(h.wait(Duration::from_secs(30)));
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[0].attempts, 1);
    let events = h.next_events(Duration::ZERO);
    assert_eq!(
        node_events(&events, 0),
        vec![EventKind::NodeStarted, EventKind::NodeSucceeded]
    );
    for q in 1..4 {
        assert_eq!(o.nodes[q].status, NodeState::Succeeded);
    }
}

/// A run's records are freed when its outcome goes: a small run's on the spot, a large
/// run's on the reaper thread (soon after, and never leaked).
#[test]
fn finished_runs_free_their_records() {
    fn outcome(n: usize) -> (RunOutcome, Vec<std::sync::Weak<Value>>) {
        let outputs: Vec<Arc<Value>> = (0..n)
            .map(|i| Arc::new(serde_json::json!({ "i": i })))
            .collect();
        let weak = outputs.iter().map(Arc::downgrade).collect();
        let nodes = outputs
            .into_iter()
            .map(|output| NodeRecord {
                status: NodeState::Succeeded,
                output: Some(output),
                error: None,
                attempts: 1,
                skip_reason: None,
                cache: None,
                started_at: None,
                finished_at: None,
            })
            .collect();
        let o = RunOutcome {
            run_id: "r".into(),
            status: RunStatus::Succeeded,
            error: None,
            duration: Duration::ZERO,
            nodes,
        };
        (o, weak)
    }
    let (small, weak) = outcome(REAP_MIN_NODES - 1);
    drop(small);
    assert!(weak.iter().all(|w| w.upgrade().is_none()));
    for _ in 0..3 {
        let (large, weak) = outcome(REAP_MIN_NODES * 2);
        drop(large);
        let until = Instant::now() + Duration::from_secs(10);
        while weak.iter().any(|w| w.strong_count() > 0) {
            assert!(
                Instant::now() < until,
                "the reaper did not free the records"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Event times never go back in sequence order, and a retried attempt's start is when it
/// started, not the time of some earlier end (here another node times out, making nothing
/// ready, while the retry waits out its backoff).
#[test]
fn event_times_follow_sequence_order_across_timeouts_and_retries() {
    let d = dag(&[("slow", &[]), ("flaky", &[])]);
    let ext = Closure(|plan: &Plan, call: ExternalCall| {
        if plan.dag.id(call.node) == "slow" {
            while !call.cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            return Err(NodeFailure::new("Cancelled", "saw the flag", false));
        }
        if call.attempt < 2 {
            return Err(NodeFailure::new("ValueError", "not yet", true));
        }
        Ok(Map::new())
    });
    let slow = NodePolicy {
        timeout: Some(Duration::from_millis(20)),
        ..NodePolicy::default()
    };
    let flaky = NodePolicy {
        retries: 1,
        backoff: Backoff {
            initial: Duration::from_millis(150),
            factor: 1.0,
            max: Duration::from_secs(1),
        },
        ..NodePolicy::default()
    };
    let specs = [slow, flaky].map(|policy| NodeSpec {
        kind: NodeKind::External,
        policy,
        condition: None,
    });
    let plan = Plan::new(d, specs.to_vec()).unwrap();
    let (o, events) = run(plan, RunConfig::default(), Some(Arc::new(ext)));
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(o.nodes[0].error.as_ref().unwrap().kind, "NodeTimeout");
    assert_eq!(o.nodes[1].status, NodeState::Succeeded);
    assert!(
        events.windows(2).all(|w| w[0].time <= w[1].time),
        "event times go back: {events:?}"
    );
    let flaky_starts: Vec<f64> = events
        .iter()
        .filter(|e| e.node == Some(1) && e.kind == EventKind::NodeStarted)
        .map(|e| e.time)
        .collect();
    assert_eq!(flaky_starts.len(), 2);
    assert!(
        flaky_starts[1] - flaky_starts[0] >= 0.14,
        "the retry started {:.3}s after the first attempt, before its 150 ms backoff",
        flaky_starts[1] - flaky_starts[0]
    );
}

#[test]
fn a_node_timeout_replaces_the_scripts_default_wall_time_limit() {
    let s = |n: u64| Some(Duration::from_secs(n));
    let default = Some(dagengine_lua::DEFAULT_TIMEOUT);
    // Longer than the default: the node may run that long.
    assert_eq!(
        wall_limit(default, s(60), None, None),
        (s(60), WallLimit::Node)
    );
    assert_eq!(
        wall_limit(default, s(2), None, None),
        (s(2), WallLimit::Node)
    );
    assert_eq!(
        wall_limit(default, None, None, None),
        (default, WallLimit::Script)
    );
    assert_eq!(
        wall_limit(None, None, None, None),
        (None, WallLimit::Script)
    );
    // What is left of the run's deadline or of the inline budget, when shorter.
    assert_eq!(
        wall_limit(default, s(60), s(5), None),
        (s(5), WallLimit::Deadline)
    );
    assert_eq!(
        wall_limit(default, s(60), s(5), s(1)),
        (s(1), WallLimit::Budget)
    );
    assert_eq!(
        wall_limit(default, s(3), s(5), s(9)),
        (s(3), WallLimit::Node)
    );
}

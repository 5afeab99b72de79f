//! Conditions (`when`) and trigger rules through the driver: Lua conditions on the driver,
//! external ones on the executor's pool, skip reasons on records and events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dagengine_core::{Dag, NodePolicy, NodeState, RunStatus, SkipReason, TriggerRule};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{json, Map, Value};

use super::*;

fn dag(edges: &[(&str, &[&str])]) -> Dag {
    let mut d = Dag::new();
    for (id, deps) in edges {
        d.add_node(id, deps.iter().copied()).unwrap();
    }
    d.preprocess().unwrap();
    d
}

fn node(kind: NodeKind, when: Option<&str>, rule: TriggerRule) -> NodeSpec {
    NodeSpec {
        kind,
        policy: NodePolicy {
            trigger_rule: rule,
            ..NodePolicy::default()
        },
        condition: when.map(Condition::lua),
    }
}

fn lua(src: &str) -> NodeKind {
    NodeKind::Lua {
        script: LuaScript::new(src),
        limits: LuaLimits::default(),
    }
}

fn run(
    plan: Plan,
    inputs: Value,
    ext: Option<Arc<dyn ExternalExecutor>>,
) -> (Arc<RunOutcome>, Vec<RunEvent>) {
    let h = start_run(
        Arc::new(plan),
        RunConfig {
            events: true,
            inputs: Arc::new(inputs),
            ..Default::default()
        },
        ext,
    )
    .unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    let events = h.next_events(Duration::ZERO);
    (h.outcome().unwrap(), events)
}

fn skipped_events(plan_dag: &Dag, events: &[RunEvent]) -> Vec<(String, SkipReason)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::NodeSkipped)
        .map(|e| {
            let EventDetail::Skipped(r) = e.detail else {
                panic!("a skip event without its reason: {e:?}")
            };
            (plan_dag.id(e.node.unwrap()).to_owned(), r)
        })
        .collect()
}

#[test]
fn lua_conditions_skip_or_run_and_rules_follow() {
    // gate reads inputs; check reads gate's output; after (none_failed) runs past a skip;
    // strict (all_success) is skipped by its rule.
    let d = dag(&[
        ("gate", &[]),
        ("check", &["gate"]),
        ("off", &["gate"]),
        ("after", &["check", "off"]),
        ("strict", &["off"]),
    ]);
    let plan = Plan::new(
        d.clone(),
        vec![
            node(
                lua("return {n = inputs.n}"),
                Some("inputs.n > 1"),
                TriggerRule::AllSuccess,
            ),
            node(
                lua("return {ok = true}"),
                Some("results.gate.n == 3 -- note"),
                TriggerRule::AllSuccess,
            ),
            node(
                NodeKind::Noop,
                Some("results.gate.n == 4"),
                TriggerRule::AllSuccess,
            ),
            node(NodeKind::Noop, None, TriggerRule::NoneFailed),
            node(NodeKind::Noop, None, TriggerRule::AllSuccess),
        ],
    )
    .unwrap();
    let (o, events) = run(plan, json!({"n": 3}), None);
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let states: Vec<_> = o.nodes.iter().map(|r| (r.status, r.skip_reason)).collect();
    assert_eq!(
        states,
        vec![
            (NodeState::Succeeded, None),
            (NodeState::Succeeded, None),
            (NodeState::Skipped, Some(SkipReason::Condition)),
            (NodeState::Succeeded, None),
            (NodeState::Skipped, Some(SkipReason::TriggerRule)),
        ]
    );
    assert_eq!(o.nodes[2].attempts, 0);
    assert_eq!(o.nodes[2].started_at, None);
    assert_eq!(
        skipped_events(&d, &events),
        vec![
            ("off".to_owned(), SkipReason::Condition),
            ("strict".to_owned(), SkipReason::TriggerRule)
        ]
    );
    // A node skipped by its condition is never announced as started.
    assert!(!events
        .iter()
        .any(|e| e.kind == EventKind::NodeStarted && e.node == Some(2)));
}

#[test]
fn a_condition_that_is_not_boolean_fails_its_node_naming_it() {
    let d = dag(&[("a", &[]), ("b", &["a"])]);
    for (expr, want) in [
        ("inputs.n", "got a number (3)"),
        ("nil", "got nil"),
        ("'yes'", "got a string (\"yes\")"),
        ("error('boom')", "boom"),
        ("(function() while true do end end)()", "instruction limit"),
    ] {
        let plan = Plan::new(
            d.clone(),
            vec![
                node(NodeKind::Noop, Some(expr), TriggerRule::AllSuccess),
                node(NodeKind::Noop, None, TriggerRule::AllSuccess),
            ],
        )
        .unwrap();
        let (o, _) = run(plan, json!({"n": 3}), None);
        assert_eq!(o.status, RunStatus::Failed);
        let err = o.nodes[0].error.as_ref().unwrap();
        assert!(err.message.contains("node 'a'"), "{err:?}");
        assert!(err.message.contains(want), "{expr}: {err:?}");
        assert_eq!(o.nodes[1].skip_reason, Some(SkipReason::UpstreamFailed));
        assert_eq!(o.error.as_ref().unwrap().node_id.as_deref(), Some("a"));
    }
}

/// Answers conditions from the node's id; counts node calls.
struct Ext {
    calls: AtomicUsize,
    conditions: AtomicUsize,
}

impl ExternalExecutor for Ext {
    fn execute(&self, _: &Plan, _: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Map::new())
    }

    fn condition(&self, plan: &Plan, call: &ExternalCall) -> Result<bool, NodeFailure> {
        self.conditions.fetch_add(1, Ordering::SeqCst);
        match plan.dag().id(call.node) {
            id if id.starts_with("yes") => Ok(true),
            id if id.starts_with("no") => Ok(false),
            id => Err(NodeFailure::new(
                "TypeError",
                format!("node '{id}': bad"),
                false,
            )),
        }
    }
}

#[test]
fn external_conditions_run_on_the_pool_before_the_node() {
    let d = dag(&[
        ("yes_ext", &[]),
        ("no_ext", &[]),
        ("yes_lua", &[]),
        ("no_noop", &[]),
        ("bad", &[]),
    ]);
    let ext_node = |kind| NodeSpec {
        kind,
        policy: NodePolicy::default(),
        condition: Some(Condition::External),
    };
    let plan = Plan::new(
        d,
        vec![
            ext_node(NodeKind::External),
            ext_node(NodeKind::External),
            ext_node(lua("return {x = 1}")),
            ext_node(NodeKind::Noop),
            ext_node(NodeKind::External),
        ],
    )
    .unwrap();
    let ext = Arc::new(Ext {
        calls: AtomicUsize::new(0),
        conditions: AtomicUsize::new(0),
    });
    let (o, events) = run(plan, json!({}), Some(ext.clone()));
    let states: Vec<_> = o.nodes.iter().map(|r| (r.status, r.skip_reason)).collect();
    assert_eq!(
        states,
        vec![
            (NodeState::Succeeded, None),
            (NodeState::Skipped, Some(SkipReason::Condition)),
            (NodeState::Succeeded, None),
            (NodeState::Skipped, Some(SkipReason::Condition)),
            (NodeState::Failed, None),
        ]
    );
    assert_eq!(o.nodes[2].output.as_deref(), Some(&json!({"x": 1})));
    assert_eq!(ext.conditions.load(Ordering::SeqCst), 5);
    assert_eq!(ext.calls.load(Ordering::SeqCst), 1);
    let started: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeStarted)
        .map(|e| e.node.unwrap())
        .collect();
    assert!(started.contains(&0) && started.contains(&2));
    assert!(!started.contains(&1) && !started.contains(&3));
    assert!(o.nodes[0].started_at.is_some());
}

struct Flaky(Arc<AtomicUsize>);
impl ExternalExecutor for Flaky {
    fn execute(&self, _: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        if call.attempt < 2 {
            return Err(NodeFailure::new("ValueError", "not yet", true));
        }
        Ok(Map::new())
    }
    fn condition(&self, _: &Plan, _: &ExternalCall) -> Result<bool, NodeFailure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

#[test]
fn a_condition_is_checked_once_not_on_retries() {
    let d = dag(&[("flaky", &[])]);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut policy = NodePolicy {
        retries: 1,
        ..NodePolicy::default()
    };
    policy.backoff.initial = Duration::from_millis(1);
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: NodeKind::External,
            policy,
            condition: Some(Condition::External),
        }],
    )
    .unwrap();
    let (o, _) = run(plan, json!({}), Some(Arc::new(Flaky(calls.clone()))));
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_eq!(o.nodes[0].attempts, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Blocks in its condition until the attempt is cancelled.
struct SlowCondition;

impl ExternalExecutor for SlowCondition {
    fn execute(&self, _: &Plan, _: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        Ok(Map::new())
    }

    fn condition(&self, _: &Plan, call: &ExternalCall) -> Result<bool, NodeFailure> {
        while !call.cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }
}

#[test]
fn a_slow_external_condition_times_out_for_good_and_a_stop_does_not_wait_for_it() {
    // A timeout while the condition runs fails the node without a retry (which would not
    // check the condition again).
    let d = dag(&[("slow", &[])]);
    let mut policy = NodePolicy {
        retries: 3,
        timeout: Some(Duration::from_millis(30)),
        ..NodePolicy::default()
    };
    policy.backoff.initial = Duration::from_millis(1);
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: NodeKind::Noop,
            policy,
            condition: Some(Condition::External),
        }],
    )
    .unwrap();
    let (o, _) = run(plan, json!({}), Some(Arc::new(SlowCondition)));
    assert_eq!(o.status, RunStatus::Failed);
    let err = o.nodes[0].error.as_ref().unwrap();
    assert_eq!(err.kind, "NodeTimeout");
    assert!(
        err.message.contains("node 'slow''s when timed out"),
        "{err:?}"
    );
    assert_eq!(o.nodes[0].attempts, 1);

    // A cancelled run does not wait for a no-op node's pending condition.
    let d = dag(&[("waits", &[])]);
    let plan = Plan::new(
        d,
        vec![NodeSpec {
            kind: NodeKind::Noop,
            policy: NodePolicy::default(),
            condition: Some(Condition::External),
        }],
    )
    .unwrap();
    let h = start_run(
        Arc::new(plan),
        RunConfig {
            events: true,
            ..Default::default()
        },
        Some(Arc::new(SlowCondition)),
    )
    .unwrap();
    h.cancel();
    assert!(
        h.wait(Duration::from_secs(30)),
        "the run waited for the condition"
    );
    let o = h.outcome().unwrap();
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.nodes[0].status, NodeState::Cancelled);
}

/// Keeps each call's parents' outputs, to read once the run ended; "slow" returns once
/// "child" ran.
#[derive(Default)]
struct Keeper {
    kept: std::sync::Mutex<Vec<(String, Parents)>>,
    released: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl ExternalExecutor for Keeper {
    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        let id = plan.dag().id(call.node);
        let (released, changed) = &self.released;
        match id {
            "slow" => {
                let mut done = released.lock().unwrap();
                while !*done {
                    done = changed.wait(done).unwrap();
                }
            }
            "child" => {
                *released.lock().unwrap() = true;
                changed.notify_all();
            }
            _ => {}
        }
        self.kept
            .lock()
            .unwrap()
            .push((id.to_owned(), call.results));
        let mut out = Map::new();
        out.insert("from".into(), json!(id));
        Ok(out)
    }
}

#[test]
fn parents_outputs_are_those_of_the_attempts_start() {
    // child (one_success) starts once fast succeeded, while slow still runs: slow's output
    // is not its, read when it may (after the run here). after (all_success) reads both.
    let d = dag(&[
        ("fast", &[]),
        ("slow", &[]),
        ("child", &["fast", "slow"]),
        ("after", &["fast", "slow"]),
    ]);
    let ext = |rule| node(NodeKind::External, None, rule);
    let plan = Plan::new(
        d,
        vec![
            ext(TriggerRule::AllSuccess),
            ext(TriggerRule::AllSuccess),
            ext(TriggerRule::OneSuccess),
            ext(TriggerRule::AllSuccess),
        ],
    )
    .unwrap();
    let keeper = Arc::new(Keeper::default());
    let (o, _) = run(plan, json!({}), Some(keeper.clone()));
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let kept = keeper.kept.lock().unwrap();
    let parents = |id: &str| {
        let (_, p) = kept.iter().find(|(n, _)| n == id).expect("the node ran");
        let mut each = Vec::new();
        p.try_for_each(|n, v| {
            each.push((n, v.clone()));
            Ok::<_, ()>(())
        })
        .unwrap();
        let listed: Vec<_> = p
            .to_vec()
            .into_iter()
            .map(|(n, v)| (n, (*v).clone()))
            .collect();
        assert_eq!(each, listed);
        assert_eq!(p.len(), listed.len());
        listed
    };
    assert_eq!(parents("fast"), vec![]);
    assert_eq!(
        parents("child"),
        vec![(0, json!({"from": "fast"})), (1, json!({}))]
    );
    assert_eq!(
        parents("after"),
        vec![(0, json!({"from": "fast"})), (1, json!({"from": "slow"}))]
    );
}

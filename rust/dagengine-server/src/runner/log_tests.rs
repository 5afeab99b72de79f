//! Node log lines: every attempt's lines are delivered (failed, retried, timed out,
//! cancelled, succeeded), each before the event that ends its attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dagengine_core::{Backoff, Dag, NodeIdx, NodePolicy, RunStatus};
use dagengine_lua::{LuaLimits, LuaScript};
use serde_json::{Map, Value};

use super::*;

fn one_node(kind: NodeKind, policy: NodePolicy) -> Plan {
    let mut d = Dag::new();
    d.add_node("n", std::iter::empty::<&str>()).unwrap();
    d.preprocess().unwrap();
    Plan::new(
        d,
        vec![NodeSpec {
            kind,
            policy,
            condition: None,
        }],
    )
    .unwrap()
}

fn lua(src: &str) -> NodeKind {
    NodeKind::Lua {
        script: LuaScript::new(src),
        limits: LuaLimits::default(),
    }
}

fn retries(n: u32) -> NodePolicy {
    NodePolicy {
        retries: n,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            factor: 1.0,
            max: Duration::from_millis(1),
        },
        ..NodePolicy::default()
    }
}

/// `(kind, attempt, log line)` of node 0's events, in order.
fn node_events(events: &[RunEvent]) -> Vec<(EventKind, u32, Option<LogLine>)> {
    events
        .iter()
        .filter(|e| e.node == Some(0 as NodeIdx))
        .map(|e| {
            let line = match &e.detail {
                EventDetail::Log(l) => Some(l.clone()),
                _ => None,
            };
            (e.kind, e.attempt, line)
        })
        .collect()
}

/// The log field of [`node_events`] for a Lua line.
#[allow(clippy::unnecessary_wraps)]
fn info(message: &str) -> Option<LogLine> {
    Some(LogLine::info(message.to_owned()))
}

fn run_pool(plan: Plan, ext: Option<Arc<dyn ExternalExecutor>>) -> (RunStatus, Vec<RunEvent>) {
    let cfg = RunConfig {
        events: true,
        ..Default::default()
    };
    let h = start_run(Arc::new(plan), cfg, ext).unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    (h.outcome().unwrap().status, h.next_events(Duration::ZERO))
}

fn run_inline(plan: Plan) -> (RunStatus, Vec<RunEvent>) {
    let cfg = RunConfig {
        events: true,
        ..Default::default()
    };
    let h = start_run_inline(Arc::new(plan), cfg, None, Duration::from_secs(5)).unwrap();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    (h.outcome().unwrap().status, h.next_events(Duration::ZERO))
}

const FAILING: &str = "log('try', ctx.attempt) error('boom ' .. ctx.attempt)";

fn expect_failed_attempts(events: &[RunEvent]) {
    use EventKind::{NodeFailed, NodeLog, NodeRetrying, NodeStarted};
    assert_eq!(
        node_events(events),
        vec![
            (NodeStarted, 1, None),
            (NodeLog, 1, info("try\t1")),
            (NodeRetrying, 1, None),
            (NodeStarted, 2, None),
            (NodeLog, 2, info("try\t2")),
            (NodeFailed, 2, None),
        ]
    );
}

#[test]
fn a_failing_lua_node_on_the_pool_delivers_each_attempts_lines_before_its_end() {
    let (status, events) = run_pool(one_node(lua(FAILING), retries(1)), None);
    assert_eq!(status, RunStatus::Failed);
    expect_failed_attempts(&events);
}

#[test]
fn a_failing_lua_node_run_inline_delivers_each_attempts_lines_before_its_end() {
    let (status, events) = run_inline(one_node(lua(FAILING), retries(1)));
    assert_eq!(status, RunStatus::Failed);
    expect_failed_attempts(&events);
}

#[test]
fn a_timed_out_lua_node_delivers_its_lines_before_its_end() {
    let policy = NodePolicy {
        timeout: Some(Duration::from_millis(100)),
        ..NodePolicy::default()
    };
    let (status, events) = run_pool(
        one_node(lua("log('before') while true do end"), policy),
        None,
    );
    assert_eq!(status, RunStatus::Failed);
    let seen = node_events(&events);
    assert_eq!(seen[1], (EventKind::NodeLog, 1, info("before")));
    assert_eq!(seen[2].0, EventKind::NodeFailed);
    assert_eq!(seen.len(), 3);
}

#[test]
fn a_cancelled_lua_node_delivers_its_lines_before_its_end() {
    // The cancel goes out when the node is reported started; a cancel that comes before
    // its script got the CPU stops the attempt before it runs (no line to deliver). Such
    // a run proves nothing, so try again: one where the script logged is what is checked.
    for _ in 0..50 {
        let h = start_run(
            Arc::new(one_node(
                lua("log('started') while true do end"),
                NodePolicy::default(),
            )),
            RunConfig {
                events: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|e: &RunEvent| e.kind == EventKind::NodeStarted)
        {
            seen.extend(h.next_events(Duration::from_secs(5)));
        }
        h.cancel();
        assert!(h.wait(Duration::from_secs(30)), "run did not finish");
        seen.extend(h.next_events(Duration::ZERO));
        let kinds = node_events(&seen);
        if !kinds.iter().any(|k| k.0 == EventKind::NodeLog) {
            // Cancelled before the script ran: it ended without a line, as it should.
            assert_eq!(kinds.len(), 2, "{kinds:?}");
            continue;
        }
        assert_eq!(kinds[1], (EventKind::NodeLog, 1, info("started")));
        assert!(
            matches!(kinds[2].0, EventKind::NodeFailed | EventKind::NodeCancelled),
            "{kinds:?}"
        );
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        return;
    }
    panic!("in 50 runs the cancel always came before the script ran");
}

/// Fails its first attempt and succeeds the next, logging at a level each time.
struct Logging {
    logged: Arc<AtomicBool>,
}

impl ExternalExecutor for Logging {
    fn execute(&self, _: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        self.logged.store(true, Ordering::SeqCst);
        if call.attempt == 1 {
            Err(NodeFailure::new("ValueError", "not yet", true))
        } else {
            Ok(Map::new())
        }
    }

    fn take_logs(&self, _: &Plan, _: NodeIdx, _: Option<u32>, attempt: u32) -> Vec<LogLine> {
        if !self.logged.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        let level = if attempt == 1 { "ERROR" } else { "DEBUG" };
        vec![LogLine {
            level: level.to_owned(),
            message: format!("attempt {attempt}"),
        }]
    }
}

#[test]
fn an_external_nodes_lines_keep_their_level_and_come_before_each_attempts_end() {
    use EventKind::{NodeLog, NodeRetrying, NodeStarted, NodeSucceeded};
    let ext = Logging {
        logged: Arc::default(),
    };
    let plan = one_node(NodeKind::External, retries(1));
    let (status, events) = run_pool(plan, Some(Arc::new(ext)));
    assert_eq!(status, RunStatus::Succeeded);
    let line = |level: &str, message: &str| {
        Some(LogLine {
            level: level.to_owned(),
            message: message.to_owned(),
        })
    };
    assert_eq!(
        node_events(&events),
        vec![
            (NodeStarted, 1, None),
            (NodeLog, 1, line("ERROR", "attempt 1")),
            (NodeRetrying, 1, None),
            (NodeStarted, 2, None),
            (NodeLog, 2, line("DEBUG", "attempt 2")),
            (NodeSucceeded, 2, None),
        ]
    );
}

/// Sends a line through its attempt's sink, then waits for the test to have seen it as an
/// event before it returns, logging one more line at its end.
struct Live {
    seen: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl ExternalExecutor for Live {
    fn execute(&self, _: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        assert!(call
            .logs
            .send(vec![LogLine::info("while running".to_owned())]));
        let (lock, cond) = &*self.seen;
        let seen = cond
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(30), |s| !*s)
            .unwrap()
            .0;
        assert!(*seen, "the test never saw the live line");
        Ok(Map::new())
    }

    fn take_logs(&self, _: &Plan, _: NodeIdx, _: Option<u32>, _: u32) -> Vec<LogLine> {
        vec![LogLine::info("at the end".to_owned())]
    }
}

#[test]
fn an_external_nodes_live_lines_are_published_while_it_runs() {
    use EventKind::{NodeLog, NodeStarted, NodeSucceeded};
    let seen = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let plan = one_node(NodeKind::External, NodePolicy::default());
    let cfg = RunConfig {
        events: true,
        ..Default::default()
    };
    let ext = Live { seen: seen.clone() };
    let h = start_run(Arc::new(plan), cfg, Some(Arc::new(ext))).unwrap();
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &RunEvent| e.kind == NodeLog && e.node == Some(0))
    {
        assert!(!h.is_done(), "the run ended before its live line was seen");
        events.extend(h.next_events(Duration::from_secs(5)));
    }
    // Seen while the node still runs: let it finish.
    *seen.0.lock().unwrap() = true;
    seen.1.notify_all();
    assert!(h.wait(Duration::from_secs(30)), "run did not finish");
    events.extend(h.next_events(Duration::ZERO));
    assert_eq!(
        node_events(&events),
        vec![
            (NodeStarted, 1, None),
            (NodeLog, 1, info("while running")),
            (NodeLog, 1, info("at the end")),
            (NodeSucceeded, 1, None),
        ]
    );
}

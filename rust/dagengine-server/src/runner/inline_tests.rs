//! Runs driven on the caller's thread ([`run_inline`]): external nodes called there, and
//! what must not change because of it (concurrency of ready siblings, timeouts, Ctrl-C).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use dagengine_core::{Dag, NodeIdx, NodePolicy, NodeState, RunStatus};
use serde_json::{Map, Value};

use super::*;

/// An external executor that may run every node inline and records where each ran.
struct Here<F> {
    call: F,
    threads: Mutex<Vec<(String, ThreadId)>>,
}

impl<F> Here<F> {
    fn new(call: F) -> Arc<Self> {
        Arc::new(Self {
            call,
            threads: Mutex::default(),
        })
    }

    fn thread_of(&self, id: &str) -> ThreadId {
        self.threads
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == id)
            .map_or_else(|| panic!("{id} did not run"), |(_, t)| *t)
    }
}

impl<F> ExternalExecutor for Here<F>
where
    F: Fn(&str) -> Result<Map<String, Value>, NodeFailure> + Send + Sync,
{
    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        let id = plan.dag().id(call.node).to_owned();
        self.threads
            .lock()
            .unwrap()
            .push((id.clone(), std::thread::current().id()));
        (self.call)(&id)
    }

    fn inline(&self, _node: NodeIdx) -> bool {
        true
    }
}

/// A host with nothing to release, interrupted once `interrupt` is set.
#[derive(Default)]
struct TestHost {
    interrupt: Arc<AtomicBool>,
}

impl InlineHost for TestHost {
    fn blocking(&self, f: &mut (dyn FnMut() + Send)) {
        f();
    }

    fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
    }
}

fn external_plan(edges: &[(&str, &[&str])], policy: NodePolicy) -> Plan {
    let mut d = Dag::new();
    for (id, deps) in edges {
        d.add_node(id, deps.iter().copied()).unwrap();
    }
    d.preprocess().unwrap();
    let specs = (0..d.len())
        .map(|_| NodeSpec {
            kind: NodeKind::External,
            policy,
            condition: None,
        })
        .collect();
    Plan::new(d, specs).unwrap()
}

fn run_here(plan: Plan, ext: Arc<dyn ExternalExecutor>, host: &TestHost) -> Arc<RunOutcome> {
    let h = run_inline(Arc::new(plan), RunConfig::default(), Some(ext), host).unwrap();
    assert!(h.is_done(), "run_inline returns a finished run");
    h.outcome().unwrap()
}

#[allow(clippy::unnecessary_wraps)] // the executor's signature
fn ok(_: &str) -> Result<Map<String, Value>, NodeFailure> {
    Ok(Map::new())
}

#[test]
fn a_chain_of_external_nodes_runs_on_the_callers_thread() {
    let ext = Here::new(ok);
    let plan = external_plan(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
        NodePolicy::default(),
    );
    let o = run_here(plan, ext.clone(), &TestHost::default());
    assert_eq!(o.status, RunStatus::Succeeded);
    let me = std::thread::current().id();
    for id in ["a", "b", "c"] {
        assert_eq!(ext.thread_of(id), me, "{id} ran elsewhere");
    }
}

#[test]
fn a_node_with_a_timeout_runs_on_the_pool() {
    let ext = Here::new(ok);
    let policy = NodePolicy {
        timeout: Some(Duration::from_secs(30)),
        ..NodePolicy::default()
    };
    let plan = external_plan(&[("a", &[])], policy);
    let o = run_here(plan, ext.clone(), &TestHost::default());
    assert_eq!(o.status, RunStatus::Succeeded);
    assert_ne!(ext.thread_of("a"), std::thread::current().id());
}

#[test]
fn siblings_that_wait_for_each_other_still_meet() {
    // Either sibling blocks until the other one runs: only concurrency gets through (the
    // barrier's timeout turns a hang into a failure).
    let barrier = Arc::new(Barrier::new(2));
    let met = Arc::new(AtomicBool::new(false));
    let (b, m) = (barrier.clone(), met.clone());
    let ext = Here::new(move |id: &str| {
        if id != "root" {
            b.wait();
            m.store(true, Ordering::SeqCst);
        }
        Ok(Map::new())
    });
    let plan = external_plan(
        &[("root", &[]), ("x", &["root"]), ("y", &["root"])],
        NodePolicy::default(),
    );
    let o = run_here(plan, ext.clone(), &TestHost::default());
    assert_eq!(o.status, RunStatus::Succeeded);
    assert!(met.load(Ordering::SeqCst));
    assert_ne!(ext.thread_of("x"), ext.thread_of("y"));
}

#[test]
fn an_interrupt_cancels_the_run_after_the_node_that_saw_it() {
    let host = TestHost::default();
    let interrupt = host.interrupt.clone();
    let ext = Here::new(move |id: &str| {
        if id == "b" {
            interrupt.store(true, Ordering::SeqCst); // Ctrl-C while b runs
        }
        Ok(Map::new())
    });
    let plan = external_plan(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
        NodePolicy::default(),
    );
    let o = run_here(plan, ext.clone(), &host);
    assert_eq!(o.status, RunStatus::Cancelled);
    assert_eq!(o.nodes[0].status, NodeState::Succeeded);
    assert_eq!(o.nodes[1].status, NodeState::Cancelled);
    assert_eq!(o.nodes[2].status, NodeState::Cancelled);
    assert!(ext.threads.lock().unwrap().iter().all(|(id, _)| id != "c"));
}

//! Dynamic fan-out in the scheduler: a mapped node's items are scheduled like nodes and the
//! node ends when they have.

use std::time::Duration;

use dagengine_core::{
    Backoff, Dag, Event, Instruction, MapOptions, NodePolicy, NodeState, RunOptions, RunStatus,
    Scheduler, StopReason, TriggerRule,
};

/// extract -> square (mapped) -> total
fn graph() -> Dag {
    let mut d = Dag::new();
    d.add_node("extract", []).unwrap();
    d.add_node("square", ["extract"]).unwrap();
    d.add_node("total", ["square"]).unwrap();
    d.preprocess().unwrap();
    d
}

const EXTRACT: u32 = 0;
const SQUARE: u32 = 1;
const TOTAL: u32 = 2;

fn policy(retries: u32) -> [NodePolicy; 1] {
    [NodePolicy {
        retries,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            factor: 1.0,
            max: Duration::from_millis(1),
        },
        timeout: None,
        trigger_rule: TriggerRule::AllSuccess,
    }]
}

fn executes(out: &[Instruction]) -> Vec<u32> {
    out.iter()
        .filter_map(|i| match i {
            Instruction::Execute { node, .. } => Some(*node),
            _ => None,
        })
        .collect()
}

fn ok(s: &mut Scheduler<'_>, node: u32, out: &mut Vec<Instruction>) {
    let attempt = s.attempts(node);
    s.handle(Event::NodeSucceeded { node, attempt }, out);
}

fn fail(s: &mut Scheduler<'_>, node: u32, out: &mut Vec<Instruction>) {
    let attempt = s.attempts(node);
    s.handle(
        Event::NodeFailed {
            node,
            attempt,
            retryable: true,
        },
        out,
    );
}

/// Start the run and get to `square`'s expansion into `count` items.
fn expanded<'a>(
    d: &'a Dag,
    p: &'a [NodePolicy],
    run: RunOptions,
    count: u32,
    options: MapOptions,
    completed: &[u32],
    out: &mut Vec<Instruction>,
) -> Scheduler<'a> {
    let mut s = Scheduler::new(d, p, run);
    s.start(out);
    ok(&mut s, EXTRACT, out);
    assert_eq!(executes(out), [EXTRACT, SQUARE]);
    out.clear();
    let first = s.expand(SQUARE, 1, count, options, completed, out).unwrap();
    assert_eq!(first, 3, "items come after the graph's nodes");
    s
}

#[test]
fn items_run_and_the_node_ends_after_them() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let mut s = expanded(
        &d,
        &p,
        RunOptions::default(),
        3,
        MapOptions::default(),
        &[],
        &mut out,
    );
    assert_eq!(executes(&out), [3, 4, 5]);
    assert_eq!(s.item(4), Some((SQUARE, 1)));
    assert_eq!(s.item(SQUARE), None);
    assert_eq!(s.items(SQUARE), Some((3, 3)));
    assert_eq!(s.len(), 6);
    out.clear();
    ok(&mut s, 5, &mut out);
    ok(&mut s, 3, &mut out);
    assert!(out.is_empty());
    assert_eq!(s.state(SQUARE), NodeState::Running);
    ok(&mut s, 4, &mut out);
    assert_eq!(
        out,
        [
            Instruction::MapFinished {
                node: SQUARE,
                failed: false
            },
            Instruction::Execute {
                node: TOTAL,
                attempt: 1
            }
        ]
    );
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
    out.clear();
    ok(&mut s, TOTAL, &mut out);
    assert_eq!(
        out,
        [Instruction::Finish {
            status: RunStatus::Succeeded
        }]
    );
}

#[test]
fn an_empty_list_succeeds_at_once() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let s = expanded(
        &d,
        &p,
        RunOptions::default(),
        0,
        MapOptions::default(),
        &[],
        &mut out,
    );
    assert_eq!(
        out,
        [
            Instruction::MapFinished {
                node: SQUARE,
                failed: false
            },
            Instruction::Execute {
                node: TOTAL,
                attempt: 1
            }
        ]
    );
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
}

#[test]
fn max_parallel_per_node_and_per_run() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let two = MapOptions {
        max_parallel: Some(2),
        allow_partial: false,
    };
    let mut s = expanded(&d, &p, RunOptions::default(), 5, two, &[], &mut out);
    assert_eq!(executes(&out), [3, 4]);
    out.clear();
    ok(&mut s, 4, &mut out);
    assert_eq!(executes(&out), [5]);
    // The run's own limit counts items too; the expanded node gave up its slot.
    let run = RunOptions {
        max_parallel: Some(1),
        fail_fast: false,
    };
    let mut out = Vec::new();
    let mut s = expanded(&d, &p, run, 3, MapOptions::default(), &[], &mut out);
    assert_eq!(executes(&out), [3]);
    out.clear();
    ok(&mut s, 3, &mut out);
    assert_eq!(executes(&out), [4]);
}

#[test]
fn a_failed_item_fails_the_node_and_cancels_the_rest() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let one = MapOptions {
        max_parallel: Some(2),
        allow_partial: false,
    };
    let mut s = expanded(&d, &p, RunOptions::default(), 4, one, &[], &mut out);
    out.clear();
    fail(&mut s, 3, &mut out);
    // Item 4 runs on and is interrupted; 5 and 6 never start.
    assert!(out.contains(&Instruction::Abort { node: 4 }));
    assert!(out.contains(&Instruction::Cancelled { node: 5 }));
    assert!(out.contains(&Instruction::Cancelled { node: 6 }));
    assert_eq!(s.state(SQUARE), NodeState::Running);
    out.clear();
    ok(&mut s, 4, &mut out);
    assert_eq!(s.state(SQUARE), NodeState::Failed);
    assert_eq!(s.state(TOTAL), NodeState::Skipped);
    assert_eq!(
        out.first(),
        Some(&Instruction::MapFinished {
            node: SQUARE,
            failed: true
        })
    );
    assert_eq!(
        out.last(),
        Some(&Instruction::Finish {
            status: RunStatus::Failed
        })
    );
}

#[test]
fn allow_partial_keeps_going_and_the_run_succeeds() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let partial = MapOptions {
        max_parallel: None,
        allow_partial: true,
    };
    let mut s = expanded(&d, &p, RunOptions::default(), 2, partial, &[], &mut out);
    out.clear();
    fail(&mut s, 3, &mut out);
    ok(&mut s, 4, &mut out);
    assert_eq!(s.state(3), NodeState::Failed);
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
    out.clear();
    ok(&mut s, TOTAL, &mut out);
    assert_eq!(
        out,
        [Instruction::Finish {
            status: RunStatus::Succeeded
        }]
    );
}

#[test]
fn items_retry_under_the_nodes_policy() {
    let (d, p) = (graph(), policy(1));
    let mut out = Vec::new();
    let mut s = expanded(
        &d,
        &p,
        RunOptions::default(),
        1,
        MapOptions::default(),
        &[],
        &mut out,
    );
    out.clear();
    fail(&mut s, 3, &mut out);
    assert!(matches!(
        out[..],
        [Instruction::ScheduleRetry {
            node: 3,
            attempt: 2,
            ..
        }]
    ));
    out.clear();
    s.handle(
        Event::RetryDue {
            node: 3,
            attempt: 2,
        },
        &mut out,
    );
    assert_eq!(executes(&out), [3]);
    ok(&mut s, 3, &mut out);
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
}

#[test]
fn completed_items_are_not_run_again() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let mut s = expanded(
        &d,
        &p,
        RunOptions::default(),
        4,
        MapOptions::default(),
        &[0, 2],
        &mut out,
    );
    assert_eq!(executes(&out), [4, 6]);
    out.clear();
    ok(&mut s, 4, &mut out);
    ok(&mut s, 6, &mut out);
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
    // All completed: the node ends at once.
    let mut out = Vec::new();
    let s = expanded(
        &d,
        &p,
        RunOptions::default(),
        2,
        MapOptions::default(),
        &[0, 1],
        &mut out,
    );
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
}

#[test]
fn a_stop_cancels_the_node_and_its_items() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let two = MapOptions {
        max_parallel: Some(1),
        allow_partial: false,
    };
    let mut s = expanded(&d, &p, RunOptions::default(), 3, two, &[], &mut out);
    out.clear();
    s.handle(Event::Stop(StopReason::Cancelled), &mut out);
    assert_eq!(s.state(SQUARE), NodeState::Cancelled);
    assert!(out.contains(&Instruction::Abort { node: 3 }));
    assert_eq!(s.state(4), NodeState::Cancelled);
    out.clear();
    fail(&mut s, 3, &mut out);
    assert_eq!(
        out,
        [
            Instruction::Cancelled { node: 3 },
            Instruction::Finish {
                status: RunStatus::Cancelled
            }
        ]
    );
}

#[test]
fn expand_refuses_a_stale_attempt_and_a_second_expansion() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let mut s = expanded(
        &d,
        &p,
        RunOptions::default(),
        1,
        MapOptions::default(),
        &[],
        &mut out,
    );
    assert_eq!(
        s.expand(SQUARE, 1, 2, MapOptions::default(), &[], &mut out),
        None
    );
    assert_eq!(
        s.expand(TOTAL, 1, 2, MapOptions::default(), &[], &mut out),
        None
    );
    assert_eq!(s.len(), 4);
}

#[test]
fn suspend_and_resume_keep_the_items() {
    let (d, p) = (graph(), policy(0));
    let mut out = Vec::new();
    let s = expanded(
        &d,
        &p,
        RunOptions::default(),
        2,
        MapOptions::default(),
        &[],
        &mut out,
    );
    let mut s = Scheduler::resume(&d, &p, s.suspend());
    out.clear();
    ok(&mut s, 3, &mut out);
    ok(&mut s, 4, &mut out);
    assert_eq!(s.state(SQUARE), NodeState::Succeeded);
}

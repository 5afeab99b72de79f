use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use dagengine_core::{
    Backoff, Dag, Event, Instruction, NodePolicy, NodeState, RunOptions, RunStatus, Scheduler,
    SkipReason, StopReason, TriggerRule, TRANSITIONS,
};
use proptest::prelude::*;

fn build(edges: &[(&str, &[&str])]) -> Dag {
    let mut d = Dag::new();
    for (id, deps) in edges {
        d.add_node(id, deps.iter().copied()).unwrap();
    }
    d.preprocess().unwrap();
    d
}

fn executes(out: &[Instruction]) -> Vec<(u32, u32)> {
    out.iter()
        .filter_map(|i| match i {
            Instruction::Execute { node, attempt } => Some((*node, *attempt)),
            _ => None,
        })
        .collect()
}

fn finish(out: &[Instruction]) -> Option<RunStatus> {
    out.iter().find_map(|i| match i {
        Instruction::Finish { status } => Some(*status),
        _ => None,
    })
}

const ONE: &[NodePolicy] = &[NodePolicy {
    retries: 0,
    backoff: Backoff {
        initial: Duration::from_millis(10),
        factor: 2.0,
        max: Duration::from_millis(35),
    },
    timeout: None,
    trigger_rule: TriggerRule::AllSuccess,
}];

#[test]
fn diamond_runs_in_dependency_order() {
    let d = build(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
    let mut s = Scheduler::new(&d, ONE, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(executes(&out), vec![(0, 1)]);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 0,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(executes(&out), vec![(1, 1), (2, 1)]);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 2,
            attempt: 1,
        },
        &mut out,
    );
    assert!(out.is_empty());
    s.handle(
        Event::NodeSucceeded {
            node: 1,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(executes(&out), vec![(3, 1)]);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 3,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(finish(&out), Some(RunStatus::Succeeded));
    assert!(s.is_finished());
}

#[test]
fn a_suspended_run_resumes_exactly_where_it_was_on_another_thread() {
    let d = build(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
    let mut s = Scheduler::new(&d, ONE, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    s.handle(
        Event::NodeSucceeded {
            node: 0,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(executes(&out), vec![(0, 1), (1, 1), (2, 1)]);
    let saved = s.suspend();
    let d = std::sync::Arc::new(d);
    let shared = d.clone();
    let (states, status) = std::thread::spawn(move || {
        let mut s = Scheduler::resume(&shared, ONE, saved);
        assert_eq!(
            (s.running(), s.state(1), s.attempts(2)),
            (2, NodeState::Running, 1)
        );
        let mut out = Vec::new();
        for node in [1, 2] {
            s.handle(Event::NodeSucceeded { node, attempt: 1 }, &mut out);
        }
        assert_eq!(executes(&out), vec![(3, 1)]);
        s.handle(
            Event::NodeSucceeded {
                node: 3,
                attempt: 1,
            },
            &mut out,
        );
        ((0..4).map(|n| s.state(n)).collect::<Vec<_>>(), finish(&out))
    })
    .join()
    .unwrap();
    assert_eq!(states, vec![NodeState::Succeeded; 4]);
    assert_eq!(status, Some(RunStatus::Succeeded));
}

#[test]
#[should_panic(expected = "resumed on a different graph")]
fn resuming_on_another_graph_is_refused() {
    let d = build(&[("a", &[]), ("b", &["a"])]);
    let saved = Scheduler::new(&d, ONE, RunOptions::default()).suspend();
    let other = build(&[("a", &[])]);
    let _ = Scheduler::resume(&other, ONE, saved);
}

#[test]
fn failure_skips_descendants_and_independent_branch_continues() {
    // a -> b -> c ; x -> y (independent)
    let d = build(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["b"]),
        ("x", &[]),
        ("y", &["x"]),
    ]);
    let mut s = Scheduler::new(&d, ONE, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(executes(&out), vec![(0, 1), (3, 1)]);
    out.clear();
    s.handle(
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: true,
        },
        &mut out,
    );
    let upstream = SkipReason::UpstreamFailed;
    assert!(out.contains(&Instruction::Skipped {
        node: 1,
        reason: upstream
    }));
    assert!(out.contains(&Instruction::Skipped {
        node: 2,
        reason: upstream
    }));
    assert_eq!(s.skip_reason(2), Some(upstream));
    assert_eq!(finish(&out), None);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 3,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(executes(&out), vec![(4, 1)]);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 4,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(finish(&out), Some(RunStatus::Failed));
    assert_eq!(s.state(1), NodeState::Skipped);
    assert_eq!(s.state(4), NodeState::Succeeded);
}

#[test]
fn fail_fast_cancels_pending_and_aborts_running() {
    let d = build(&[("a", &[]), ("b", &[]), ("c", &["b"])]);
    let opts = RunOptions {
        fail_fast: true,
        ..RunOptions::default()
    };
    let mut s = Scheduler::new(&d, ONE, opts);
    let mut out = Vec::new();
    s.start(&mut out);
    out.clear();
    s.handle(
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: true,
        },
        &mut out,
    );
    assert!(out.contains(&Instruction::Abort { node: 1 }));
    assert!(out.contains(&Instruction::Cancelled { node: 2 }));
    assert_eq!(finish(&out), None, "waits for the aborted node to report");
    out.clear();
    s.handle(
        Event::NodeFailed {
            node: 1,
            attempt: 1,
            retryable: false,
        },
        &mut out,
    );
    assert_eq!(s.state(1), NodeState::Cancelled);
    assert_eq!(finish(&out), Some(RunStatus::Failed));
}

#[test]
fn retries_with_exponential_backoff_then_fail() {
    let d = build(&[("a", &[])]);
    let pol = [NodePolicy {
        retries: 3,
        ..ONE[0]
    }];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        out.clear();
        s.handle(
            Event::NodeFailed {
                node: 0,
                attempt,
                retryable: true,
            },
            &mut out,
        );
        match out.as_slice() {
            [Instruction::ScheduleRetry {
                node: 0,
                attempt: next,
                delay,
            }] => {
                assert_eq!(*next, attempt + 1);
                assert_eq!(s.state(0), NodeState::Retrying);
                delays.push(*delay);
                out.clear();
                // A stale timer for another attempt is ignored.
                s.handle(
                    Event::RetryDue {
                        node: 0,
                        attempt: attempt + 7,
                    },
                    &mut out,
                );
                assert!(out.is_empty());
                s.handle(
                    Event::RetryDue {
                        node: 0,
                        attempt: attempt + 1,
                    },
                    &mut out,
                );
                assert_eq!(executes(&out), vec![(0, attempt + 1)]);
            }
            other => {
                assert_eq!(attempt, 4, "unexpected {other:?}");
                assert_eq!(finish(other), Some(RunStatus::Failed));
            }
        }
    }
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(35)
        ]
    );
    assert_eq!(s.attempts(0), 4);
}

#[test]
fn non_retryable_failure_fails_at_once() {
    let d = build(&[("a", &[])]);
    let pol = [NodePolicy {
        retries: 3,
        ..ONE[0]
    }];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    out.clear();
    s.handle(
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: false,
        },
        &mut out,
    );
    assert_eq!(finish(&out), Some(RunStatus::Failed));
}

#[test]
fn late_result_of_an_old_attempt_is_ignored() {
    let d = build(&[("a", &[])]);
    let pol = [NodePolicy {
        retries: 1,
        ..ONE[0]
    }];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    s.handle(
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: true,
        },
        &mut out,
    );
    s.handle(
        Event::RetryDue {
            node: 0,
            attempt: 2,
        },
        &mut out,
    );
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 0,
            attempt: 1,
        },
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(s.state(0), NodeState::Running);
    s.handle(
        Event::NodeSucceeded {
            node: 0,
            attempt: 2,
        },
        &mut out,
    );
    assert_eq!(finish(&out), Some(RunStatus::Succeeded));
}

#[test]
fn max_parallel_is_respected() {
    let mut d = Dag::new();
    for i in 0..10 {
        d.add_node(&format!("n{i}"), []).unwrap();
    }
    d.preprocess().unwrap();
    let opts = RunOptions {
        max_parallel: Some(3),
        ..RunOptions::default()
    };
    let mut s = Scheduler::new(&d, ONE, opts);
    let mut out = Vec::new();
    s.start(&mut out);
    let mut queue: VecDeque<u32> = executes(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(queue.len(), 3);
    let mut done = 0;
    while let Some(n) = queue.pop_front() {
        out.clear();
        s.handle(
            Event::NodeSucceeded {
                node: n,
                attempt: 1,
            },
            &mut out,
        );
        done += 1;
        queue.extend(executes(&out).into_iter().map(|(n, _)| n));
        assert!(s.running() <= 3);
    }
    assert_eq!(done, 10);
    assert_eq!(finish(&out), Some(RunStatus::Succeeded));
}

#[test]
fn stop_cancels_and_reports_cancelled_or_timed_out() {
    for (reason, status) in [
        (StopReason::Cancelled, RunStatus::Cancelled),
        (StopReason::TimedOut, RunStatus::Failed),
    ] {
        let d = build(&[("a", &[]), ("b", &["a"])]);
        let pol = [NodePolicy {
            retries: 2,
            ..ONE[0]
        }];
        let mut s = Scheduler::new(&d, &pol, RunOptions::default());
        let mut out = Vec::new();
        s.start(&mut out);
        out.clear();
        s.handle(Event::Stop(reason), &mut out);
        assert_eq!(
            out,
            vec![
                Instruction::Abort { node: 0 },
                Instruction::Cancelled { node: 1 }
            ]
        );
        out.clear();
        // The aborted node reports a failure: no retry, it counts as cancelled.
        s.handle(
            Event::NodeFailed {
                node: 0,
                attempt: 1,
                retryable: true,
            },
            &mut out,
        );
        assert_eq!(s.state(0), NodeState::Cancelled);
        assert_eq!(finish(&out), Some(status));
        assert_eq!(s.stop_reason(), Some(reason));
    }
}

#[test]
fn resumed_run_skips_completed_nodes() {
    let d = build(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
    let mut s = Scheduler::new(&d, ONE, RunOptions::default());
    s.mark_completed(0);
    s.mark_completed(1);
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(executes(&out), vec![(2, 1)]);
    let d2 = build(&[("a", &[])]);
    let mut s2 = Scheduler::new(&d2, ONE, RunOptions::default());
    s2.mark_completed(0);
    out.clear();
    s2.start(&mut out);
    assert_eq!(
        out,
        vec![Instruction::Finish {
            status: RunStatus::Succeeded
        }]
    );
}

/// Drive the state machine through every row of the transition table and check each was
/// taken (the table and the code must not drift apart).
#[test]
fn every_transition_is_exercised() {
    let mut seen: HashSet<(NodeState, NodeState)> = HashSet::new();
    let mut observe = |before: &[NodeState], s: &Scheduler<'_>| {
        for (i, &b) in before.iter().enumerate() {
            let a = s.state(i as u32);
            if a != b {
                seen.insert((b, a));
            }
        }
    };
    let snapshot =
        |s: &Scheduler<'_>, n: usize| (0..n as u32).map(|i| s.state(i)).collect::<Vec<_>>();
    let mut out = Vec::new();

    // Pending->Running->Retrying->Running->Succeeded; Pending->Succeeded (completed).
    let d = build(&[("a", &[]), ("done", &[])]);
    let pol = [NodePolicy {
        retries: 1,
        ..ONE[0]
    }];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    let b = snapshot(&s, 2);
    s.mark_completed(1);
    s.start(&mut out);
    observe(&b, &s);
    for e in [
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: true,
        },
        Event::RetryDue {
            node: 0,
            attempt: 2,
        },
        Event::NodeSucceeded {
            node: 0,
            attempt: 2,
        },
    ] {
        let b = snapshot(&s, 2);
        s.handle(e, &mut out);
        observe(&b, &s);
    }

    // Running->Failed, Pending->Skipped, Running->Cancelled, Retrying->Cancelled,
    // Pending->Cancelled.
    let d = build(&[
        ("f", &[]),
        ("skip", &["f"]),
        ("r", &[]),
        ("run", &[]),
        ("p", &["run"]),
    ]);
    let pol = [NodePolicy {
        retries: 1,
        ..ONE[0]
    }];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    s.start(&mut out);
    for e in [
        Event::NodeFailed {
            node: 0,
            attempt: 1,
            retryable: false,
        },
        Event::NodeFailed {
            node: 2,
            attempt: 1,
            retryable: true,
        },
        Event::Stop(StopReason::Cancelled),
        Event::NodeFailed {
            node: 3,
            attempt: 1,
            retryable: true,
        },
    ] {
        let b = snapshot(&s, 5);
        s.handle(e, &mut out);
        observe(&b, &s);
    }
    // Running->Skipped: a condition that was false.
    let d = build(&[("w", &[])]);
    let mut s = Scheduler::new(&d, ONE, RunOptions::default());
    s.start(&mut out);
    let b = snapshot(&s, 1);
    s.handle(
        Event::ConditionFalse {
            node: 0,
            attempt: 1,
        },
        &mut out,
    );
    observe(&b, &s);
    let want: HashSet<_> = TRANSITIONS.iter().copied().collect();
    assert_eq!(seen, want);
}

/// A random DAG: node `i` depends on a random subset of earlier nodes.
fn random_dag() -> impl Strategy<Value = (Vec<Vec<u32>>, Vec<bool>, u64)> {
    (1usize..120).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| proptest::collection::vec(0..(i.max(1) as u32), 0..=(i.min(3))))
            .collect::<Vec<_>>();
        (
            deps,
            proptest::collection::vec(proptest::bool::weighted(0.1), n),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Completing nodes in a random order: every node runs at most once and only after all
    /// of its parents; exactly the descendants of failed nodes are skipped.
    #[test]
    fn random_completion_order((deps, fails, seed) in random_dag(), max_par in proptest::option::of(1usize..5)) {
        let n = deps.len();
        let mut d = Dag::new();
        for (i, ds) in deps.iter().enumerate() {
            let names: Vec<String> = ds.iter().filter(|&&p| (p as usize) < i).map(|p| format!("n{p}")).collect();
            d.add_node(&format!("n{i}"), names.iter().map(String::as_str)).unwrap();
        }
        d.preprocess().unwrap();
        let mut s = Scheduler::new(&d, ONE, RunOptions { max_parallel: max_par, fail_fast: false });
        let mut out = Vec::new();
        s.start(&mut out);
        let mut running: Vec<u32> = Vec::new();
        let mut ran = vec![0u32; n];
        let mut done = vec![false; n];
        let mut rng = seed;
        let mut status = None;
        loop {
            for ins in out.drain(..) {
                match ins {
                    Instruction::Execute { node, .. } => {
                        for &p in d.parents(node) { prop_assert!(done[p as usize]); }
                        ran[node as usize] += 1;
                        running.push(node);
                    }
                    Instruction::Finish { status: st } => status = Some(st),
                    _ => {}
                }
            }
            if let Some(m) = max_par { prop_assert!(running.len() <= m); }
            if running.is_empty() { break; }
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let k = (rng >> 33) as usize % running.len();
            let node = running.swap_remove(k);
            if fails[node as usize] {
                s.handle(Event::NodeFailed { node, attempt: 1, retryable: true }, &mut out);
            } else {
                done[node as usize] = true;
                s.handle(Event::NodeSucceeded { node, attempt: 1 }, &mut out);
            }
        }
        // Expected skipped set: strict descendants of failed nodes.
        let mut tainted = vec![false; n];
        for &v in d.topological_order() {
            tainted[v as usize] = d.parents(v).iter().any(|&p| tainted[p as usize] || fails[p as usize]);
        }
        for i in 0..n as u32 {
            let st = s.state(i);
            if tainted[i as usize] {
                prop_assert_eq!(st, NodeState::Skipped);
                prop_assert_eq!(ran[i as usize], 0);
            } else {
                prop_assert_eq!(ran[i as usize], 1);
                prop_assert_eq!(st, if fails[i as usize] { NodeState::Failed } else { NodeState::Succeeded });
            }
        }
        let any_fail = fails.iter().any(|&f| f);
        prop_assert_eq!(status, Some(if any_fail { RunStatus::Failed } else { RunStatus::Succeeded }));
    }
}

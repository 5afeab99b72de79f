//! Trigger rules and conditions in the scheduler: each rule's table, the order
//! independence of its decisions, and random graphs against a reference model.

use std::time::Duration;

use dagengine_core::{
    Backoff, Dag, Decision, Event, Instruction, NodePolicy, NodeState, RunOptions, RunStatus,
    Scheduler, SkipReason, TriggerRule,
};
use proptest::prelude::*;

fn policy(rule: TriggerRule) -> NodePolicy {
    NodePolicy {
        retries: 0,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            factor: 2.0,
            max: Duration::from_millis(1),
        },
        timeout: None,
        trigger_rule: rule,
    }
}

/// What a node does when it is told to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Succeed,
    Fail,
    /// Its condition is false.
    Skip,
}

/// The final outcome class of a node for its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ok,
    Failed,
    Skipped,
}

/// The rules written out once more, from the final outcomes of all parents.
fn reference_rule(rule: TriggerRule, parents: &[Class]) -> Decision {
    use Decision::{Run, Skip};
    use SkipReason::{TriggerRule as Rule, UpstreamFailed};
    if parents.is_empty() {
        return Run;
    }
    let ok = parents.iter().filter(|&&c| c == Class::Ok).count();
    let failed = parents.iter().filter(|&&c| c == Class::Failed).count();
    let skipped = parents.iter().filter(|&&c| c == Class::Skipped).count();
    let n = parents.len();
    match rule {
        TriggerRule::AllSuccess => match (failed, skipped) {
            (0, 0) => Run,
            (0, _) => Skip(Rule),
            _ => Skip(UpstreamFailed),
        },
        TriggerRule::AllDone => Run,
        TriggerRule::AllFailed => {
            if failed == n {
                Run
            } else {
                Skip(Rule)
            }
        }
        TriggerRule::OneSuccess => match (ok, failed) {
            (0, 0) => Skip(Rule),
            (0, _) => Skip(UpstreamFailed),
            _ => Run,
        },
        TriggerRule::OneFailed => {
            if failed > 0 {
                Run
            } else {
                Skip(Rule)
            }
        }
        TriggerRule::NoneFailed => {
            if failed > 0 {
                Skip(UpstreamFailed)
            } else {
                Run
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => match (failed, ok) {
            (0, 0) => Skip(Rule),
            (0, _) => Run,
            _ => Skip(UpstreamFailed),
        },
        TriggerRule::NoneSkipped => {
            if skipped > 0 {
                Skip(Rule)
            } else {
                Run
            }
        }
    }
}

/// Expected (state, reason) of every node, in index order (parents have lower indices).
fn reference(
    deps: &[Vec<u32>],
    rules: &[TriggerRule],
    acts: &[Act],
) -> Vec<(NodeState, Option<SkipReason>)> {
    let mut out: Vec<(NodeState, Option<SkipReason>)> = Vec::new();
    let mut class: Vec<Class> = Vec::new();
    for (i, ds) in deps.iter().enumerate() {
        let parents: Vec<Class> = ds.iter().map(|&p| class[p as usize]).collect();
        let (state, reason, c) = match reference_rule(rules[i], &parents) {
            Decision::Skip(r) => {
                let c = if r == SkipReason::UpstreamFailed {
                    Class::Failed
                } else {
                    Class::Skipped
                };
                (NodeState::Skipped, Some(r), c)
            }
            Decision::Run => match acts[i] {
                Act::Succeed => (NodeState::Succeeded, None, Class::Ok),
                Act::Fail => (NodeState::Failed, None, Class::Failed),
                Act::Skip => (
                    NodeState::Skipped,
                    Some(SkipReason::Condition),
                    Class::Skipped,
                ),
            },
        };
        out.push((state, reason));
        class.push(c);
    }
    out
}

fn graph(deps: &[Vec<u32>]) -> Dag {
    let mut d = Dag::new();
    for (i, ds) in deps.iter().enumerate() {
        let names: Vec<String> = ds.iter().map(|p| format!("n{p}")).collect();
        d.add_node(&format!("n{i}"), names.iter().map(String::as_str))
            .unwrap();
    }
    d.preprocess().unwrap();
    d
}

/// Drive a run to its end, finishing running nodes in an order picked by `seed`.
fn drive(
    d: &Dag,
    policies: &[NodePolicy],
    acts: &[Act],
    seed: u64,
    max_parallel: Option<usize>,
) -> (Scheduler<'static>, Option<RunStatus>, Vec<u32>) {
    // Leak the graph and policies for the test: a Scheduler borrows them.
    let d: &'static Dag = Box::leak(Box::new(d.clone()));
    let policies: &'static [NodePolicy] = Box::leak(policies.to_vec().into_boxed_slice());
    let mut s = Scheduler::new(
        d,
        policies,
        RunOptions {
            max_parallel,
            fail_fast: false,
        },
    );
    let mut out = Vec::new();
    s.start(&mut out);
    let mut running: Vec<u32> = Vec::new();
    let mut ran = vec![0u32; d.len()];
    let mut status = None;
    let mut rng = seed;
    loop {
        for ins in out.drain(..) {
            match ins {
                Instruction::Execute { node, .. } => {
                    ran[node as usize] += 1;
                    running.push(node);
                }
                Instruction::Skipped { node, reason } => {
                    assert_eq!(s.skip_reason(node), Some(reason));
                }
                Instruction::Finish { status: st } => status = Some(st),
                _ => {}
            }
        }
        if running.is_empty() {
            break;
        }
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let node = running.swap_remove((rng >> 33) as usize % running.len());
        let event = match acts[node as usize] {
            Act::Succeed => Event::NodeSucceeded { node, attempt: 1 },
            Act::Fail => Event::NodeFailed {
                node,
                attempt: 1,
                retryable: false,
            },
            Act::Skip => Event::ConditionFalse { node, attempt: 1 },
        };
        s.handle(event, &mut out);
    }
    (s, status, ran)
}

/// Each rule over two parents, for every pair of parent outcomes.
#[test]
fn each_rule_matches_its_table() {
    let acts_of = [Act::Succeed, Act::Fail, Act::Skip];
    for rule in TriggerRule::ALL {
        for a in acts_of {
            for b in acts_of {
                let deps = vec![vec![], vec![], vec![0, 1]];
                let rules = [TriggerRule::AllSuccess, TriggerRule::AllSuccess, rule];
                let acts = [a, b, Act::Succeed];
                let d = graph(&deps);
                let policies: Vec<_> = rules.iter().map(|&r| policy(r)).collect();
                let want = reference(&deps, &rules, &acts);
                for seed in 0..4 {
                    let (s, status, _) = drive(&d, &policies, &acts, seed, None);
                    let got = (s.state(2), s.skip_reason(2));
                    assert_eq!(got, want[2], "{rule:?} after {a:?}, {b:?}");
                    let failed = [a, b].contains(&Act::Fail);
                    let want_status = if failed {
                        RunStatus::Failed
                    } else {
                        RunStatus::Succeeded
                    };
                    assert_eq!(status, Some(want_status));
                }
            }
        }
    }
}

/// `runs_early` names exactly the rules whose table has a run while parents are left.
#[test]
fn runs_early_is_a_run_with_parents_left() {
    for rule in TriggerRule::ALL {
        let mut early = false;
        for (ok, failed, skipped) in
            (0..3).flat_map(|a| (0..3).flat_map(move |b| (0..3).map(move |c| (a, b, c))))
        {
            early |= rule.decide(ok, failed, skipped, 1) == Some(Decision::Run);
        }
        assert_eq!(rule.runs_early(), early, "{}", rule.as_str());
    }
}

#[test]
fn names_round_trip_and_unknown_is_none() {
    for rule in TriggerRule::ALL {
        assert_eq!(TriggerRule::parse(rule.as_str()), Some(rule));
        assert!(TriggerRule::NAMES.contains(rule.as_str()));
    }
    assert_eq!(TriggerRule::parse("all_sucess"), None);
    assert_eq!(TriggerRule::default(), TriggerRule::AllSuccess);
    for r in [
        SkipReason::UpstreamFailed,
        SkipReason::Condition,
        SkipReason::TriggerRule,
    ] {
        assert_eq!(SkipReason::parse(r.as_str()), Some(r));
    }
}

/// `one_success` runs as soon as one parent succeeds, before the others end; a parent that
/// ends later changes nothing.
#[test]
fn one_success_runs_before_the_other_parents_end() {
    let d = graph(&[vec![], vec![], vec![0, 1]]);
    let pol = [
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::OneSuccess),
    ];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    let mut out = Vec::new();
    s.start(&mut out);
    out.clear();
    s.handle(
        Event::NodeSucceeded {
            node: 0,
            attempt: 1,
        },
        &mut out,
    );
    assert_eq!(
        out,
        vec![Instruction::Execute {
            node: 2,
            attempt: 1
        }]
    );
    out.clear();
    s.handle(
        Event::NodeFailed {
            node: 1,
            attempt: 1,
            retryable: false,
        },
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    s.handle(
        Event::NodeSucceeded {
            node: 2,
            attempt: 1,
        },
        &mut out,
    );
    // A failure absorbed by the rule still fails the run.
    assert_eq!(
        out,
        vec![Instruction::Finish {
            status: RunStatus::Failed
        }]
    );
}

/// An `upstream_failed` skip counts as a failure for the next rule down; a condition skip
/// counts as a skip.
#[test]
fn upstream_failed_counts_as_failed_and_condition_as_skipped() {
    // f fails; c (all_success) is upstream_failed; h (one_failed) runs because of it.
    let d = graph(&[vec![], vec![0], vec![1]]);
    let pol = [
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::OneFailed),
    ];
    let acts = [Act::Fail, Act::Succeed, Act::Succeed];
    let (s, _, ran) = drive(&d, &pol, &acts, 1, None);
    assert_eq!(s.skip_reason(1), Some(SkipReason::UpstreamFailed));
    assert_eq!(s.state(2), NodeState::Succeeded);
    assert_eq!(ran, vec![1, 0, 1]);
    // w's condition is false; x (none_failed) runs, y (all_success) is skipped by rule.
    let d = graph(&[vec![], vec![0], vec![0]]);
    let pol = [
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::NoneFailed),
        policy(TriggerRule::AllSuccess),
    ];
    let acts = [Act::Skip, Act::Succeed, Act::Succeed];
    let (s, status, _) = drive(&d, &pol, &acts, 1, None);
    assert_eq!(s.skip_reason(0), Some(SkipReason::Condition));
    assert_eq!(s.state(1), NodeState::Succeeded);
    assert_eq!(s.skip_reason(2), Some(SkipReason::TriggerRule));
    assert_eq!(status, Some(RunStatus::Succeeded));
}

/// A resumed run whose completed parents already decide a rule.
#[test]
fn completed_parents_decide_rules_at_start() {
    let d = graph(&[vec![], vec![0], vec![0]]);
    let pol = [
        policy(TriggerRule::AllSuccess),
        policy(TriggerRule::AllFailed),
        policy(TriggerRule::OneSuccess),
    ];
    let mut s = Scheduler::new(&d, &pol, RunOptions::default());
    s.mark_completed(0);
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(s.skip_reason(1), Some(SkipReason::TriggerRule));
    assert!(out.contains(&Instruction::Execute {
        node: 2,
        attempt: 1
    }));
}

fn rule_strategy() -> impl Strategy<Value = TriggerRule> {
    (0usize..TriggerRule::ALL.len()).prop_map(|i| TriggerRule::ALL[i])
}

fn act_strategy() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => Just(Act::Succeed),
        2 => Just(Act::Fail),
        2 => Just(Act::Skip),
    ]
}

fn random_case() -> impl Strategy<Value = (Vec<Vec<u32>>, Vec<TriggerRule>, Vec<Act>, u64)> {
    (1usize..60).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                proptest::collection::btree_set(0..(i.max(1) as u32), 0..=(i.min(3)))
                    .prop_map(move |s| s.into_iter().filter(|&p| (p as usize) < i).collect())
            })
            .collect::<Vec<_>>();
        (
            deps,
            proptest::collection::vec(rule_strategy(), n),
            proptest::collection::vec(act_strategy(), n),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random graphs, rules, failures and false conditions, finished in a random order:
    /// every node's state and skip reason match the reference model, each node that runs
    /// runs once, and the run fails exactly when a node failed.
    #[test]
    fn random_rules_match_the_reference(
        (deps, rules, acts, seed) in random_case(),
        max_par in proptest::option::of(1usize..4),
    ) {
        let d = graph(&deps);
        let policies: Vec<_> = rules.iter().map(|&r| policy(r)).collect();
        let want = reference(&deps, &rules, &acts);
        let (s, status, ran) = drive(&d, &policies, &acts, seed, max_par);
        for (i, &(state, reason)) in want.iter().enumerate() {
            prop_assert_eq!((s.state(i as u32), s.skip_reason(i as u32)), (state, reason), "node {}", i);
            let runs = u32::from(state != NodeState::Skipped || reason == Some(SkipReason::Condition));
            prop_assert_eq!(ran[i], runs, "node {}", i);
        }
        let failed = want.iter().any(|&(st, _)| st == NodeState::Failed);
        prop_assert_eq!(status, Some(if failed { RunStatus::Failed } else { RunStatus::Succeeded }));
    }
}

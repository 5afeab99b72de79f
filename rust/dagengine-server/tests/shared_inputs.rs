//! The expressions the driver evaluates (`when`, `map`, a cache `key`) read the run's inputs
//! through the view its nodes share: converted once per run and Lua state, not once per
//! expression. (A test binary of its own: the conversion count is the process's.)

use std::sync::Arc;
use std::time::Duration;

use dagengine_core::{Dag, NodePolicy, RunStatus};
use dagengine_server::{start_run, Condition, NodeKind, NodeSpec, Plan, RunConfig};
use serde_json::json;

#[test]
fn conditions_reading_the_inputs_share_one_conversion_per_run() {
    let nodes = 200;
    let mut dag = Dag::new();
    for i in 0..nodes {
        let parent = format!("n{}", i.max(1) - 1);
        let deps: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec![parent.as_str()]
        };
        dag.add_node(&format!("n{i}"), deps).unwrap();
    }
    dag.preprocess().unwrap();
    let specs = (0..nodes)
        .map(|_| NodeSpec {
            kind: NodeKind::Noop,
            policy: NodePolicy::default(),
            condition: Some(Condition::lua("inputs.go and #inputs.rows == 3")),
        })
        .collect();
    let plan = Arc::new(Plan::new(dag, specs).unwrap());
    let before = dagengine_lua::inputs_conversions();
    let run = start_run(
        plan,
        RunConfig {
            inputs: Arc::new(json!({"go": true, "rows": [1, 2, 3]})),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert!(run.wait(Duration::from_secs(30)), "the run did not finish");
    let outcome = run.outcome().unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let conversions = dagengine_lua::inputs_conversions() - before;
    // One per Lua state the run's expressions ran on (the driver's thread): before, one per
    // condition (200).
    assert!(
        conversions <= 2,
        "{conversions} conversions for {nodes} conditions"
    );
}

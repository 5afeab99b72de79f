//! Throughput check; run with
//! `cargo test -p dagengine-lua --release --test perf -- --ignored --nocapture`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use dagengine_lua::{execute, LuaLimits, LuaScript, NodeInfo};
use serde_json::json;

#[test]
#[ignore = "timing; meaningful only in release builds"]
fn small_script_throughput() {
    let script = LuaScript::new(
        "local s = 0 for _, x in ipairs(inputs.xs) do s = s + x end return { sum = s, n = #inputs.xs }",
    );
    let inputs = json!({ "xs": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] });
    let info = NodeInfo {
        node_id: "sum",
        run_id: "run",
        attempt: 1,
    };
    let limits = LuaLimits::default();
    let flag = AtomicBool::new(false);
    for (label, cancel) in [("no cancel flag", None), ("with cancel flag", Some(&flag))] {
        for _ in 0..1000 {
            execute(&script, &inputs, &[], &info, &limits, cancel).unwrap();
        }
        let n = 100_000;
        let start = Instant::now();
        for _ in 0..n {
            let o = execute(&script, &inputs, &[], &info, &limits, cancel).unwrap();
            assert_eq!(o.output["sum"], 55);
        }
        let per = start.elapsed() / n;
        println!("{label}: {per:?} per execution");
    }
}

/// A condition as the runner evaluates one (`when`): an instruction budget, the default
/// memory limit, no deadline, a cancel flag, the run's shared inputs. `DAGENGINE_PERF_N`
/// sets the number of evaluations (for callgrind: instructions per evaluation).
#[test]
#[ignore = "timing; meaningful only in release builds"]
fn condition_throughput() {
    use dagengine_lua::evaluate_bool;
    use std::sync::Arc;

    let n: u32 = std::env::var("DAGENGINE_PERF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let inputs = Arc::new(json!({ "go": true, "n": 1 }));
    let info = NodeInfo {
        node_id: "n",
        run_id: "run",
        attempt: 1,
    };
    let limits = LuaLimits {
        max_instructions: Some(10_000_000),
        timeout: None,
        ..LuaLimits::default()
    };
    let flag = AtomicBool::new(false);
    for expression in ["true", "inputs.go", "inputs.n > 0"] {
        let script = LuaScript::new(format!("return ({expression}\n)"));
        for _ in 0..1000 {
            let v = evaluate_bool(&script, &inputs, &[], &info, &limits, Some(&flag)).unwrap();
            assert_eq!(v, Ok(true));
        }
        let start = Instant::now();
        for _ in 0..n {
            let v = evaluate_bool(&script, &inputs, &[], &info, &limits, Some(&flag)).unwrap();
            assert_eq!(v, Ok(true));
        }
        let per = start.elapsed() / n;
        println!("when={expression:?}: {per:?} per evaluation");
    }
}

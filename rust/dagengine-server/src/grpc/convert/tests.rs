//! Unit tests of `convert.rs`.

use super::*;

fn lua(id: &str, deps: &[&str], code: &str) -> pb::NodeSpec {
    pb::NodeSpec {
        id: id.into(),
        deps: deps.iter().map(|s| (*s).to_owned()).collect(),
        executor: Some(pb::node_spec::Executor::Lua(pb::LuaExecutor {
            code: code.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn spec(nodes: Vec<pb::NodeSpec>) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        id: "w".into(),
        nodes,
        ..Default::default()
    }
}

#[test]
fn result_json_has_the_python_results_shape() {
    let r = pb::RunResult {
        run_id: "r1".into(),
        status: pb::RunStatus::Failed as i32,
        error: Some(pb::ErrorInfo {
            r#type: "NodeFailed".into(),
            message: "node b failed".into(),
            node_id: "b".into(),
            ..Default::default()
        }),
        duration_seconds: 0.5,
        nodes: vec![
            pb::NodeResult {
                node_id: "a\"ü".into(),
                status: pb::NodeStatus::NodeSucceededStatus as i32,
                output_json: br#"{"v":[1,2.5,null],"s":"\u00fc"}"#.to_vec(),
                attempts: 1,
                started_at: 10.25,
                finished_at: 10.75,
                ..Default::default()
            },
            pb::NodeResult {
                node_id: "b".into(),
                status: pb::NodeStatus::NodeFailedStatus as i32,
                error: Some(pb::ErrorInfo {
                    r#type: "LuaRuntimeError".into(),
                    message: "boom\n".into(),
                    traceback: "tb".into(),
                    ..Default::default()
                }),
                attempts: 3,
                started_at: 11.0,
                finished_at: 11.5,
                ..Default::default()
            },
            pb::NodeResult {
                node_id: "c".into(),
                status: pb::NodeStatus::NodeSkippedStatus as i32,
                ..Default::default()
            },
            pb::NodeResult {
                node_id: "d".into(),
                status: pb::NodeStatus::NodeSucceededStatus as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let got: Value = serde_json::from_slice(&result_json(&r)).unwrap();
    let node = |status: &str, output: Value, error: Value, attempts: u32, times: Value| {
        serde_json::json!({
            "status": status, "output": output, "error": error, "attempts": attempts,
            "started_at": times[0], "finished_at": times[1],
        })
    };
    let unset = serde_json::json!([null, null]);
    let want = serde_json::json!({
        "run_id": "r1",
        "status": "failed",
        "error": {"type": "NodeFailed", "message": "node b failed", "node_id": "b"},
        "duration": 0.5,
        "outputs": {"a\"ü": {"v": [1, 2.5, null], "s": "ü"}, "d": {}},
        "nodes": {
            "a\"ü": node("succeeded", serde_json::json!({"v": [1, 2.5, null], "s": "ü"}),
                Value::Null, 1, serde_json::json!([10.25, 10.75])),
            "b": node("failed", Value::Null, serde_json::json!(
                {"type": "LuaRuntimeError", "message": "boom\n", "traceback": "tb"}),
                3, serde_json::json!([11.0, 11.5])),
            "c": node("skipped", Value::Null, Value::Null, 0, unset.clone()),
            "d": node("succeeded", Value::Null, Value::Null, 0, unset),
        },
    });
    assert_eq!(got, want);
    // Not a finished run: nothing (the caller converts, and reports, it itself).
    let unfinished = pb::RunResult {
        run_id: "x".into(),
        ..Default::default()
    };
    assert!(result_json(&unfinished).is_empty());
    // Added to a small result; left out of a large one (the caller builds it).
    let mut small = r.clone();
    add_result_json(&mut small);
    assert_eq!(small.result_json, result_json(&r));
    let mut large = r;
    large.nodes[0].output_json =
        format!(r#"{{"s":"{}"}}"#, "x".repeat(RESULT_JSON_MAX_BYTES)).into_bytes();
    add_result_json(&mut large);
    assert!(large.result_json.is_empty());
}

#[test]
fn errors_name_the_field() {
    let cases: Vec<(pb::WorkflowSpec, &str, &str)> = vec![
        (spec(vec![]), "workflow.nodes", "at least one node"),
        (
            spec(vec![lua("a", &["ghost"], "return {}")]),
            "workflow.nodes[0].deps",
            "unknown node 'ghost'",
        ),
        (
            spec(vec![
                lua("a", &["b"], "return {}"),
                lua("b", &["a"], "return {}"),
            ]),
            "workflow.nodes",
            "dependency cycle",
        ),
        (
            spec(vec![lua("a", &[], "return {")]),
            "workflow.nodes[0].lua.code",
            "syntax error at line 1",
        ),
        (
            spec(vec![lua("a", &[], "return {}"), lua("a", &[], "return {}")]),
            "workflow.nodes[1].id",
            "duplicate node id 'a'",
        ),
        (
            spec(vec![pb::NodeSpec {
                id: "x".into(),
                ..Default::default()
            }]),
            "workflow.nodes[0].executor",
            "no executor",
        ),
    ];
    for (s, field, needle) in cases {
        let err = plan_from_spec(&s).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(needle), "{err}");
    }
    let mut bad = lua("a", &[], "return {}");
    bad.timeout_seconds = Some(-1.0);
    let err = plan_from_spec(&spec(vec![bad])).unwrap_err();
    assert_eq!(err.field, "workflow.nodes[0].timeout_seconds");
    let mut py = lua("p", &[], "");
    py.executor = Some(pb::node_spec::Executor::Python(pb::PythonExecutor {
        import_path: "nocolon".into(),
    }));
    assert_eq!(
        plan_from_spec(&spec(vec![py])).unwrap_err().field,
        "workflow.nodes[0].python.import_path"
    );
}

#[test]
fn host_nodes_are_listed() {
    let mut py = lua("p", &[], "");
    py.executor = Some(pb::node_spec::Executor::Python(pb::PythonExecutor {
        import_path: "m.t:f".into(),
    }));
    let mut wf = lua("w", &["p"], "");
    wf.executor = Some(pb::node_spec::Executor::Workflow(pb::SubWorkflowExecutor {
        workflow_id: "child".into(),
        version_range: "^1.2".into(),
    }));
    let (plan, host) = plan_from_spec(&spec(vec![py, wf])).unwrap();
    assert_eq!(plan.dag().len(), 2);
    assert_eq!(
        host,
        vec![
            HostNode {
                node: 0,
                reference: HostRef::Python("m.t:f".into())
            },
            HostNode {
                node: 1,
                reference: HostRef::Workflow("child@^1.2".into())
            },
        ]
    );
}

#[test]
fn inputs_within_the_limits_every_door_applies() {
    let err = |text: &str| {
        json_object("inputs_json", text.as_bytes())
            .unwrap_err()
            .message
    };
    // serde_json refuses these itself.
    assert!(err(r#"{"a": "\udcff"}"#).starts_with("not valid JSON"));
    assert!(err(r#"{"a": NaN}"#).starts_with("not valid JSON"));
    assert!(err(r#"{"a": 1e400}"#).starts_with("not valid JSON"));
    assert!(json_object("inputs_json", b"{\"a\": \"\xff\"}").is_err());
    // Integers past 64 bits, which serde_json would read as floats.
    assert_eq!(
        err(r#"{"a": 9223372036854775808}"#),
        "inputs.a: integer 9223372036854775808 is out of range (a signed 64-bit integer)"
    );
    assert_eq!(
        err(r#"{"a": {"x y": [1, "]", -9223372036854775809]}}"#),
        "inputs.a[\"x y\"][2]: integer -9223372036854775809 is out of range \
         (a signed 64-bit integer)"
    );
    assert!(err(r#"{"k\"e,y": 100000000000000000000000000000}"#)
        .starts_with("inputs[\"k\\\"e,y\"]: integer 1000"));
    // Nesting: the inputs object is level 1; 64 levels pass, 65 do not.
    let nested = |n: usize| format!(r#"{{"a": {}{}}}"#, "[".repeat(n), "]".repeat(n));
    assert!(json_object("inputs_json", nested(63).as_bytes()).is_ok());
    assert_eq!(
        err(&nested(64)),
        format!("inputs.a{}: nested deeper than 64 levels", "[0]".repeat(63))
    );
    assert!(err(&nested(100_000)).starts_with("not valid JSON"));
    // Within the limits: the edges, floats, brackets and digits inside strings.
    assert_eq!(
        err(r#"{"a": [1.5, -1e19]}"#),
        "inputs.a[1]: -1e19 is out of range (numbers must be in the signed 64-bit range)"
    );
    assert!(err(r#"{"a": 9.3e18}"#).starts_with("inputs.a: 9.3e18 is out of range"));
    let ok = r#"{"max": 9223372036854775807, "min": -9223372036854775808, "f": 1e18,
                 "g": -2.5E-3, "h": -9.2e18, "i": 1e-300, "s": "[[[[ 99999999999999999999999", "\"": [{"b": 0}]}"#;
    assert!(json_object("inputs_json", ok.as_bytes()).is_ok());
    // Completed outputs are node outputs, not inputs: not held to the input limits.
    assert!(json_object("completed_json[\"a\"]", b"{\"a\": 18446744073709551615}").is_ok());
}

#[test]
fn json_objects_only() {
    assert!(json_object("inputs_json", b"").unwrap().is_object());
    assert_eq!(
        json_object("inputs_json", b"[1]").unwrap_err().message,
        "must be a JSON object"
    );
    assert!(json_object("inputs_json", b"{")
        .unwrap_err()
        .message
        .starts_with("not valid JSON"));
}

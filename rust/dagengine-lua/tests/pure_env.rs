//! Pure chunks (short, straight, writing into no table) that read only the run's shared
//! inputs run in an environment kept for the run, neither set up nor emptied per call:
//! what they see and answer is what they would in a fresh one.

use std::sync::Arc;

use dagengine_lua::{evaluate_bool, execute, Inputs, LuaError, LuaLimits, LuaScript, NodeInfo};
use serde_json::{json, Value};

const INFO: NodeInfo<'static> = NodeInfo {
    node_id: "n",
    run_id: "r",
    attempt: 1,
};

const LIMITS: LuaLimits = LuaLimits {
    max_instructions: Some(10_000_000),
    max_memory: Some(64 * 1024 * 1024),
    timeout: None,
};

fn when(src: &str, inputs: Inputs<'_>) -> Result<Result<bool, String>, LuaError> {
    let script = LuaScript::new(format!("return ({src}\n)"));
    evaluate_bool(&script, inputs, &[], &INFO, &LIMITS, None)
}

/// Every expression answers (or fails) the same with the run's shared inputs (the kept
/// environment, for the pure ones) as with inputs converted for the call alone.
#[test]
fn the_kept_environment_answers_as_a_fresh_one() {
    let inputs = Arc::new(json!({"n": 2, "s": "ab", "list": [1, 2, 3], "o": {"k": false}}));
    for src in [
        "inputs.n > 1",
        "inputs.n + 1 == 3",
        "inputs.s .. 'c' == 'abc'",
        "#inputs.list == 3 and inputs.list[2] == 2",
        "not inputs.o.k",
        "inputs.missing == nil",
        "inputs.n",
        "inputs.missing.x",
        "inputs.s + 1",
        "inputs.n > 'a'",
        "string == nil",
        "x == nil and inputs.n == 2",
    ] {
        for _ in 0..3 {
            let shared = when(src, Inputs::Shared(&inputs));
            let once = when(src, Inputs::Once(&inputs));
            assert_eq!(shared, once, "{src}");
        }
    }
}

/// A failure, a run of another script and other inputs leave the kept environment right.
#[test]
fn errors_other_scripts_and_other_inputs_do_not_disturb_it() {
    let a = Arc::new(json!({"n": 2}));
    let b = Arc::new(json!({"n": 5}));
    let check = "inputs.n == 2 and leak == nil";
    assert_eq!(when(check, Inputs::Shared(&a)), Ok(Ok(true)));
    assert!(when("inputs.missing.x", Inputs::Shared(&a)).is_err());
    assert_eq!(when(check, Inputs::Shared(&a)), Ok(Ok(true)));
    // A script that is not pure writes into its own environment, never the kept one.
    let dirty = LuaScript::new("leak = 1 inputs = 3 ctx = 4 return {}");
    execute(&dirty, &a, &[], &INFO, &LIMITS, None).unwrap();
    let failing = LuaScript::new("leak = 1 error('boom')");
    assert!(execute(&failing, &a, &[], &INFO, &LIMITS, None).is_err());
    assert_eq!(when(check, Inputs::Shared(&a)), Ok(Ok(true)));
    // Other inputs: a new environment with them.
    assert_eq!(when("inputs.n == 5", Inputs::Shared(&b)), Ok(Ok(true)));
    assert_eq!(when(check, Inputs::Shared(&a)), Ok(Ok(true)));
    let scalar: Arc<Value> = Arc::new(json!(7));
    assert_eq!(when("inputs == 7", Inputs::Shared(&scalar)), Ok(Ok(true)));
}

/// The inputs stay read-only through the kept environment: a write is not pure, so it
/// runs in a fresh environment and raises as before.
#[test]
fn writes_still_raise() {
    let inputs = Arc::new(json!({"o": {}}));
    let script = LuaScript::new("inputs.o.x = 1 return {}");
    let err = execute(&script, &inputs, &[], &INFO, &LIMITS, None).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(
        when("inputs.o.x == nil", Inputs::Shared(&inputs)),
        Ok(Ok(true))
    );
}

/// Chunks that loop, call and build tables but set no global share the kept environment
/// too: they answer as in a fresh one, a global another script set is not there, and one
/// that failed half-way left nothing.
#[test]
fn longer_chunks_that_set_no_global_keep_it_too() {
    let inputs = Arc::new(json!({"values": [1, 2, 3]}));
    let sum = LuaScript::new(
        "local s = 0 for _, v in ipairs(inputs.values) do s = s + v end \
         return {sum = s, seen = leak}",
    );
    let leaky = LuaScript::new("for i = 1, 2 do leak = i end return {}");
    let failing = LuaScript::new(
        "local t = {} for i, v in ipairs(inputs.values) do t[i] = v if v == 2 then \
         error('boom') end end",
    );
    for _ in 0..3 {
        let out = execute(&sum, &inputs, &[], &INFO, &LIMITS, None).unwrap();
        assert_eq!(Value::Object(out.output), json!({"sum": 6}));
        execute(&leaky, &inputs, &[], &INFO, &LIMITS, None).unwrap();
        assert!(execute(&failing, &inputs, &[], &INFO, &LIMITS, None).is_err());
    }
    let once = execute(&sum, Inputs::Once(&inputs), &[], &INFO, &LIMITS, None).unwrap();
    assert_eq!(Value::Object(once.output), json!({"sum": 6}));
}

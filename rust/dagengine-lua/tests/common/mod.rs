//! Helpers shared by the sandbox's test files.
#![allow(dead_code)] // each test file uses some of them

use dagengine_lua::{execute, LuaError, LuaLimits, LuaOutput, LuaScript, NodeInfo};
use serde_json::{json, Value};

pub const INFO: NodeInfo<'static> = NodeInfo {
    node_id: "node",
    run_id: "run-1",
    attempt: 1,
};

pub fn run_with(src: &str, inputs: &Value, limits: &LuaLimits) -> Result<LuaOutput, LuaError> {
    execute(&LuaScript::new(src), inputs, &[], &INFO, limits, None)
}

pub fn run(src: &str) -> Result<LuaOutput, LuaError> {
    run_with(src, &json!({}), &LuaLimits::default())
}

pub fn out(src: &str) -> Value {
    Value::Object(run(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).output)
}

pub fn assert_next_run_works() {
    assert_eq!(out("return { ok = true }"), json!({ "ok": true }));
}

//! The run's `inputs` are a read-only view: shared by the run's executions on a state,
//! readable by every means Lua has, refused to every write, and converted back to the
//! values they show when a script returns them.

mod common;

use std::sync::Arc;

use common::{run_with, INFO};
use dagengine_lua::{execute, LuaError, LuaLimits, LuaScript};
use serde_json::{json, Value};

fn inputs() -> Value {
    json!({ "values": [1, 2, 3], "empty": [], "obj": { "a": 1, "b": [true, null] }, "s": "x" })
}

fn out(src: &str) -> Value {
    let o =
        run_with(src, &inputs(), &LuaLimits::default()).unwrap_or_else(|e| panic!("{src}: {e}"));
    Value::Object(o.output)
}

fn error(src: &str) -> String {
    match run_with(src, &inputs(), &LuaLimits::default()) {
        Err(LuaError::Runtime { message, .. }) => message,
        other => panic!("{src}: expected a runtime error, got {other:?}"),
    }
}

#[test]
fn every_way_of_reading_sees_the_values() {
    assert_eq!(
        out("local s = 0 for _, v in ipairs(inputs.values) do s = s + v end
             local n = 0 for k, v in pairs(inputs.obj) do n = n + 1 end
             local keys = {} local k = next(inputs) while k do keys[#keys + 1] = k k = next(inputs, k) end
             table.sort(keys)
             return { sum = s, len = #inputs.values, pairs = n, keys = table.concat(keys, ','),
                      rawget = rawget(inputs.values, 2), rawlen = rawlen(inputs.values),
                      concat = table.concat(inputs.values, '-'), second = select(2, table.unpack(inputs.values)),
                      empty = #inputs.empty, none = next(inputs.empty) == nil, null = inputs.obj.b[2] == json.null,
                      mt = getmetatable(inputs.values), objmt = getmetatable(inputs),
                      same = json.array(inputs.values) == inputs.values, s = inputs.s, missing = inputs.nope == nil }"),
        json!({
            "sum": 6, "len": 3, "pairs": 2, "keys": "empty,obj,s,values", "rawget": 2, "rawlen": 3,
            "concat": "1-2-3", "second": 2, "empty": 0, "none": true, "null": true,
            "mt": "json.array", "objmt": false, "same": true, "s": "x", "missing": true
        })
    );
}

#[test]
fn returned_whole_or_in_part_they_convert_to_their_values() {
    assert_eq!(out("return inputs"), inputs());
    assert_eq!(
        out("return { v = inputs.values, o = inputs.obj, e = inputs.empty, b = inputs.obj.b }"),
        json!({ "v": [1, 2, 3], "o": { "a": 1, "b": [true, null] }, "e": [], "b": [true, null] })
    );
    assert_eq!(
        out("return { text = json.encode(inputs.obj) }"),
        json!({ "text": r#"{"a":1,"b":[true,null]}"# })
    );
    // A copy made by the script is its own, and writable.
    assert_eq!(
        out("local c = {} for i, v in ipairs(inputs.values) do c[i] = v * 10 end c[4] = 40 return { c = c }"),
        json!({ "c": [10, 20, 30, 40] })
    );
}

#[test]
fn writing_raises_an_error_naming_the_problem() {
    for (src, what) in [
        ("inputs.x = 1", "'x'"),
        ("inputs.values[2] = 5", "[2]"),
        ("inputs.obj.b[1] = false", "[1]"),
        ("table.insert(inputs.values, 4)", "[4]"),
        (
            "table.sort(inputs.values, function(a, b) return a > b end)",
            "[",
        ),
        ("rawset(inputs, 'x', 1)", "'x'"),
        ("rawset(inputs.obj, 'a', 2)", "'a'"),
    ] {
        let msg = error(&format!("{src}\nreturn {{}}"));
        assert!(
            msg.contains("inputs is read-only (cannot set ") && msg.contains(what),
            "{src}: {msg}"
        );
    }
    // At the line that wrote (for an assignment, and for `rawset`).
    assert!(error("local a = 1\ninputs.x = 1").starts_with("node:2: inputs is read-only"));
    assert!(error("local a = 1\nrawset(inputs, 'x', 1)").starts_with("node:2: inputs is read-only"));
    // The protected metatable cannot be swapped to get at the values.
    assert!(error("setmetatable(inputs, nil)").contains("protected metatable"));
    // Nothing was changed: the next run sees the inputs as they were.
    assert_eq!(out("return inputs"), inputs());
}

#[test]
fn a_runs_shared_inputs_are_converted_once_per_state_and_never_changed() {
    let script = LuaScript::new(
        "local ok = pcall(function() inputs.values[1] = 99 end)
         return { first = inputs.values[1], ok = ok, id = tostring(inputs) }",
    );
    let limits = LuaLimits::default();
    let run = |inputs: &Arc<Value>| {
        execute(&script, inputs, &[], &INFO, &limits, None)
            .unwrap()
            .output
    };
    let a = Arc::new(json!({ "values": [1, 2] }));
    let (one, two) = (run(&a), run(&a));
    assert_eq!(one["first"], json!(1));
    assert_eq!(two["first"], json!(1));
    assert_eq!(one["ok"], json!(false));
    // The same tables for the same run's inputs ...
    assert_eq!(one["id"], two["id"]);
    // ... new ones for other inputs, even of equal value.
    let b = Arc::new(json!({ "values": [1, 2] }));
    let three = run(&b);
    assert_ne!(three["id"], one["id"]);
    assert_eq!(three["first"], json!(1));
    // Inputs given by reference are converted for the execution alone.
    let once = execute(
        &script,
        &json!({ "values": [7] }),
        &[],
        &INFO,
        &limits,
        None,
    )
    .unwrap();
    assert_eq!(once.output["first"], json!(7));
    assert_eq!(run(&b)["id"], three["id"]);
}

#[test]
fn shared_inputs_that_do_not_convert_fail_the_execution() {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({ "n": deep });
    }
    let bad = Arc::new(json!({ "deep": deep }));
    let script = LuaScript::new("return { seen = inputs ~= nil }");
    let err = execute(&script, &bad, &[], &INFO, &LuaLimits::default(), None).unwrap_err();
    assert!(
        matches!(&err, LuaError::Conversion { path, .. } if path.starts_with("inputs.deep.n")),
        "{err:?}"
    );
    common::assert_next_run_works();
}

#[test]
fn the_sandboxs_ipairs_next_and_raw_functions_are_luas_on_other_tables() {
    // (The messages are Lua 5.4's own, named also when called from `pcall`.)
    assert_eq!(
        out(
            "local proxied = setmetatable({}, { __index = { 'a', 'b' } })
             local seen = {} for i, v in ipairs(proxied) do seen[i] = v end
             local n = 0 for _ in ipairs({ 1, 2, nil, 4 }) do n = n + 1 end
             local k, v = next({ x = 1 })
             local _, e1 = pcall(ipairs)
             local _, e2 = pcall(next, 1)
             local _, e3 = pcall(rawlen, 1)
             local _, e4 = pcall(rawget, {})
             return { seen = seen, n = n, k = k, v = v, e1 = e1, e2 = e2, e3 = e3, e4 = e4,
                      rawlen = rawlen('abc'), rawget = rawget(proxied, 1) == nil }"
        ),
        json!({
            "seen": ["a", "b"], "n": 2, "k": "x", "v": 1,
            "e1": "bad argument #1 to 'ipairs' (value expected)",
            "e2": "bad argument #1 to 'next' (table expected, got number)",
            "e3": "bad argument #1 to 'rawlen' (table or string expected, got number)",
            "e4": "bad argument #2 to 'rawget' (value expected)",
            "rawlen": 3, "rawget": true
        })
    );
}

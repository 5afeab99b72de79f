//! A mapped node's item (`item`, `index`, `ctx.item`, `ctx.index`) and map expressions read
//! as JSON (`evaluate_json`).

use dagengine_lua::{evaluate_json, execute, execute_item, LuaLimits, LuaScript, NodeInfo};
use serde_json::{json, Value};

const INFO: NodeInfo<'static> = NodeInfo {
    node_id: "square[2]",
    run_id: "run",
    attempt: 1,
};

fn item_run(src: &str, index: u32, item: &Value) -> Value {
    let out = execute_item(
        &LuaScript::new(src),
        &json!({}),
        &[],
        &INFO,
        Some((index, item)),
        &LuaLimits::default(),
        None,
    )
    .unwrap();
    Value::Object(out.output)
}

#[test]
fn an_item_is_a_global_and_in_ctx() {
    let src = "return {sq = item * item, i = index, ci = ctx.index, same = ctx.item == item}";
    assert_eq!(
        item_run(src, 2, &json!(7)),
        json!({"sq": 49, "i": 2, "ci": 2, "same": true})
    );
    // Tables come through as JSON, like inputs.
    assert_eq!(
        item_run(
            "return {name = item.name, n = #item.tags}",
            0,
            &json!({"name": "a", "tags": [1, 2]})
        ),
        json!({"name": "a", "n": 2})
    );
}

#[test]
fn the_item_of_one_run_is_gone_in_the_next() {
    let script = LuaScript::new("return {seen = item ~= nil, i = index}");
    let limits = LuaLimits::default();
    let first = execute_item(
        &script,
        &json!({}),
        &[],
        &INFO,
        Some((1, &json!(1))),
        &limits,
        None,
    );
    assert_eq!(
        Value::Object(first.unwrap().output),
        json!({"seen": true, "i": 1})
    );
    let plain = execute(&script, &json!({}), &[], &INFO, &limits, None).unwrap();
    assert_eq!(Value::Object(plain.output), json!({"seen": false}));
}

fn evaluate(expr: &str, inputs: &Value) -> Result<Value, String> {
    let results = json!({"rows": [1, 2, 3], "empty": []});
    evaluate_json(
        &LuaScript::new(format!("return ({expr}\n)")),
        inputs,
        &[("extract", &results)],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap()
}

#[test]
fn map_expressions_read_as_json() {
    assert_eq!(
        evaluate("results.extract.rows", &json!({})),
        Ok(json!([1, 2, 3]))
    );
    assert_eq!(evaluate("results.extract.empty", &json!({})), Ok(json!([])));
    assert_eq!(
        evaluate("inputs.items", &json!({"items": ["a"]})),
        Ok(json!(["a"]))
    );
    assert_eq!(evaluate("{10, 20}", &json!({})), Ok(json!([10, 20])));
    assert_eq!(
        evaluate("inputs.missing", &json!({})),
        Err("nil".to_owned())
    );
    assert_eq!(evaluate("3", &json!({})), Err("a number (3)".to_owned()));
    assert_eq!(
        evaluate("'x'", &json!({})),
        Err("a string (\"x\")".to_owned())
    );
}

#[test]
fn a_failing_map_expression_is_an_error() {
    let e = evaluate_json(
        &LuaScript::new("return (nil .. 'x'\n)"),
        &json!({}),
        &[],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("concatenate"), "{e}");
}

//! Behavioural tests of the sandboxed executor (its limits: `sandbox_limits.rs`).

mod common;

use common::{assert_next_run_works, out, run, run_with, INFO};
use dagengine_core::ErrorKind;
use dagengine_lua::{compiled_chunks, execute, LuaError, LuaLimits, LuaScript, NodeInfo};
use serde_json::{json, Map, Value};

#[test]
fn forbidden_globals_are_absent() {
    for name in [
        "os",
        "io",
        "require",
        "package",
        "debug",
        "dofile",
        "loadfile",
        "collectgarbage",
        "_G",
    ] {
        assert_eq!(
            out(&format!("return {{ t = type({name}) }}")),
            json!({ "t": "nil" }),
            "{name}"
        );
    }
    assert_eq!(
        out("return { t = type(string.dump) }"),
        json!({ "t": "nil" })
    );
    assert_eq!(out("return { t = type(('').dump) }"), json!({ "t": "nil" }));
}

#[test]
fn allowed_libs_are_present() {
    let v = out(r"
        return {
          s = string.upper('ab'), m = math.max(1, 5), t = table.concat({1, 2}, ','),
          u = utf8.char(72, 105), v = _VERSION, sel = select('#', 1, 2, 3),
          n = tonumber('12'), ts = tostring(3), ty = type({}), u2 = unpack({7, 8}),
          method = ('x'):rep(3), co = coroutine.wrap(function() coroutine.yield(4) end)(),
          ok = pcall(error, 'x') == false, x = select(2, xpcall(function() return 9 end, print)),
          raw = rawlen({1, 2}) + rawget({5}, 1), eq = rawequal(1, 1),
        }");
    assert_eq!(
        v,
        json!({"s": "AB", "m": 5, "t": "1,2", "u": "Hi", "v": "Lua 5.4", "sel": 3, "n": 12, "ts": "3",
               "ty": "table", "u2": 7, "method": "xxx", "co": 4, "ok": true, "x": 9, "raw": 7, "eq": true})
    );
}

#[test]
fn binary_chunks_are_refused() {
    // `load` only accepts text.
    let v = out(r#"local f, err = load("\27Lua\84\0garbage") return { f = type(f), err = err }"#);
    assert_eq!(v["f"], "nil");
    assert!(v["err"].as_str().unwrap().contains("binary chunk"), "{v}");
    // A script that is itself a binary chunk is refused at compile time.
    let err = LuaScript::new("\x1bLuaT\0garbage").check().unwrap_err();
    assert!(matches!(err, LuaError::Syntax { .. }), "{err:?}");
    // Text load works and sees the script's environment by default.
    assert_eq!(
        out("x = 41 local f = assert(load('return x + 1')) return { y = f(), io = load('return io')() == nil }"),
        json!({ "y": 42, "io": true })
    );
}

#[test]
fn globals_do_not_leak_between_runs() {
    assert_eq!(
        out("leak = 1 return { before = leak }"),
        json!({ "before": 1 })
    );
    assert_eq!(
        out("return { after = leak == nil }"),
        json!({ "after": true })
    );
    // Also not through rawset on _ENV.
    out("rawset(_ENV, 'leak2', 2) return {}");
    assert_eq!(
        out("return { after = leak2 == nil }"),
        json!({ "after": true })
    );
}

/// The environment and `ctx` tables are reused from run to run: each run must still start
/// with exactly `inputs`, `results` and `ctx`, whatever the run before did to them.
#[test]
fn every_run_starts_with_a_clean_environment_and_ctx() {
    let clean = "local n = 0 for _ in pairs(_ENV) do n = n + 1 end \
                 local c = 0 for _ in pairs(ctx) do c = c + 1 end \
                 return { globals = n, ctx_keys = c, node = ctx.node_id, run = ctx.run_id, \
                          attempt = ctx.attempt, mt = getmetatable(ctx) == nil, \
                          inputs = type(inputs), results = type(results) }";
    let expected = json!({
        "globals": 3, "ctx_keys": 3, "node": "node", "run": "run-1", "attempt": 1,
        "mt": true, "inputs": "table", "results": "table",
    });
    assert_eq!(out(clean), expected);
    for dirty in [
        // Overwrite and remove what the host set.
        "inputs = 1 results = nil ctx = 'x' return {}",
        // Change ctx in place, and its metatable.
        "ctx.node_id = 'other' ctx.extra = 1 ctx.attempt = nil \
         setmetatable(ctx, { __index = function() return 'planted' end }) return {}",
        // Many globals: the tables are replaced rather than emptied every later run.
        "for i = 1, 500 do _ENV['g' .. i] = i; ctx['k' .. i] = i end return {}",
        // Through `load`, whose default environment is the running node's.
        "load('planted = true')() return {}",
        // A run that fails after changing things.
        "leaked = 1 ctx.extra = 2 error('boom')",
        // One whose result does not convert, and one that returns a global's table.
        "leaked = 1 ctx.extra = 2 return { f = print }",
        "leaked = {} return leaked",
    ] {
        let _ = run(dirty);
        assert_eq!(out(clean), expected, "after {dirty:?}");
    }
    // `load` still sees the current environment after the tables were replaced.
    assert_eq!(
        out("x = 5 return { x = load('return x')(), node = load('return ctx.node_id')() }"),
        json!({ "x": 5, "node": "node" })
    );
}

/// `inputs`, `results` and `ctx` are set only for scripts that can read them: those that
/// name them, or that can reach their environment (`_ENV`, the chunk's `...`, `load`).
#[test]
fn host_globals_are_set_for_the_scripts_that_can_read_them() {
    // A value that cannot convert shows whether the host converted it at all.
    let mut too_deep = json!(1);
    for _ in 0..200 {
        too_deep = json!([too_deep]);
    }
    let inputs = json!({ "deep": too_deep });
    let results = [("up", &too_deep)];
    let exec = |src: &str| {
        execute(
            &LuaScript::new(src),
            &inputs,
            &results,
            &INFO,
            &LuaLimits::default(),
            None,
        )
    };
    // Named nowhere: neither is converted, and the script runs.
    assert_eq!(
        Value::Object(exec("return { x = 1 }").unwrap().output),
        json!({ "x": 1 })
    );
    // Named, even only in a comment: converted (and refused here).
    for src in ["return { x = #inputs }", "-- inputs\nreturn {}"] {
        let err = exec(src).unwrap_err();
        assert!(
            matches!(&err, LuaError::Conversion { path, .. } if path.starts_with("inputs.deep")),
            "{src}: {err:?}"
        );
    }
    let err = exec("return { x = results }").unwrap_err();
    assert!(
        matches!(&err, LuaError::Conversion { path, .. } if path.starts_with(r#"results["up"]"#)),
        "{err:?}"
    );
    // Every way to the environment without writing the names sees all three.
    let all = json!({ "inputs": "table", "results": "table", "ctx": "table" });
    for src in [
        "local e = _ENV local r = {} for _, k in ipairs({'inp'..'uts', 'res'..'ults', 'c'..'tx'}) \
         do r[k] = type(e[k]) end return r",
        "local e = ... local r = {} for _, k in ipairs({'inp'..'uts', 'res'..'ults', 'c'..'tx'}) \
         do r[k] = type(e[k]) end return r",
        "local r = {} for _, k in ipairs({'inp'..'uts', 'res'..'ults', 'c'..'tx'}) \
         do r[k] = load('return type(' .. k .. ')')() end return r",
    ] {
        let out = execute(
            &LuaScript::new(src),
            &json!({}),
            &[("up", &json!({}))],
            &INFO,
            &LuaLimits::default(),
            None,
        )
        .unwrap_or_else(|e| panic!("{src}: {e:?}"));
        assert_eq!(Value::Object(out.output), all, "{src}");
    }
}

#[test]
fn shared_libraries_cannot_be_tampered_with() {
    let attacks = [
        "string.upper = nil",
        "rawset(string, 'upper', nil)",
        "rawset(string, 'lower', function() return 'pwned' end)",
        "getmetatable('').__index.upper = nil",
        "setmetatable(string, nil)",
        "table.insert(math, 1)",
        "json.null = 1",
        "getmetatable(_ENV).__index.print = nil",
        "local mt = getmetatable(json.array()) mt.__index = function() return 'pwned' end",
        "for k in pairs(string) do string[k] = nil end",
        "math.pi = 3",
        "coroutine.resume = nil",
        "local _, s = pairs(string) rawset(s, 'upper', nil)",
    ];
    for attack in attacks {
        // Whether or not the attack raises, the next run must see intact libs.
        let _ = run(attack);
        assert_eq!(
            out("return { u = string.upper('a'), l = ('A'):lower(), p = math.pi > 3.14, r = type(coroutine.resume),
                   pr = type(print), n = json.null ~= nil, a = json.array()[1] }"),
            json!({ "u": "A", "l": "a", "p": true, "r": "function", "pr": "function", "n": true }),
            "after {attack}"
        );
    }
    let err = run("string.upper = nil").unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}

#[test]
fn gc_metamethods_are_refused() {
    let err = run("setmetatable({}, { __gc = function() end })").unwrap_err();
    assert!(err.to_string().contains("__gc"), "{err}");
}

#[test]
fn syntax_error_reports_the_line() {
    let err = LuaScript::new("local a = 1\nlocal b = 2\nlocal = 3\n")
        .check()
        .unwrap_err();
    match &err {
        LuaError::Syntax { line, message } => {
            assert_eq!(*line, Some(3));
            assert!(message.contains("near"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with("syntax error at line 3: "),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::LuaSyntaxError);
    assert!(LuaScript::new("return {}").check().is_ok());
    // execute reports the same error.
    let err = run("\n\nreturn {").unwrap_err();
    assert!(
        matches!(err, LuaError::Syntax { line: Some(3), .. }),
        "{err:?}"
    );
}

#[test]
fn runtime_error_includes_the_line() {
    let err = run("local x = 1\n\nerror('boom')").unwrap_err();
    match &err {
        LuaError::Runtime { message, traceback } => {
            assert_eq!(message, "node:3: boom");
            assert!(
                traceback
                    .as_deref()
                    .unwrap_or("")
                    .contains("stack traceback"),
                "{traceback:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::LuaRuntimeError);
    let err = run("local t = nil\nreturn t.x").unwrap_err();
    assert!(
        err.to_string().starts_with("node:2: attempt to index"),
        "{err}"
    );
    // Errors from host functions carry the caller's line too.
    let err = run("\njson.decode('{')").unwrap_err();
    assert!(err.to_string().starts_with("node:2: json.decode:"), "{err}");
}

#[test]
fn bad_return_names_the_type() {
    for (src, ty) in [
        ("return 'x'", "string"),
        ("return 1", "number"),
        ("return true", "boolean"),
        ("return print", "function"),
    ] {
        let err = run(src).unwrap_err();
        assert_eq!(
            err,
            LuaError::BadReturn {
                message: format!("node returned a {ty}; expected a table or nothing")
            }
        );
        assert_eq!(err.kind(), ErrorKind::LuaBadReturn);
    }
    assert!(matches!(
        run("return {1, 2}").unwrap_err(),
        LuaError::BadReturn { .. }
    ));
    assert_eq!(out(""), json!({}));
    assert_eq!(out("return nil"), json!({}));
    assert_eq!(out("return {}"), json!({}));
}

#[test]
fn inputs_results_and_ctx_are_visible() {
    let inputs = json!({ "xs": [1, 2, 3] });
    let parent = json!({ "v": 10 });
    let info = NodeInfo {
        node_id: "sum",
        run_id: "r9",
        attempt: 2,
    };
    let script = LuaScript::new(
        "local s = 0 for _, x in ipairs(inputs.xs) do s = s + x end
         return { s = s + results.parent.v, id = ctx.node_id, run = ctx.run_id, attempt = ctx.attempt }",
    );
    let o = execute(
        &script,
        &inputs,
        &[("parent", &parent)],
        &info,
        &LuaLimits::default(),
        None,
    )
    .unwrap();
    assert_eq!(
        Value::Object(o.output),
        json!({ "s": 16, "id": "sum", "run": "r9", "attempt": 2 })
    );
}

#[test]
fn json_values_round_trip() {
    let value = json!({
        "int": 1, "neg": -7, "float": 1.5, "whole_float": 2.0, "big": 9_007_199_254_740_993_i64,
        "s": "héllo", "t": true, "f": false, "null": null,
        "empty_array": [], "empty_object": {},
        "nested": { "list": [1, [2, 3], { "a": [] }, null, "x"], "deep": { "deeper": { "k": "v" } } },
        "1": "numeric-looking key"
    });
    let o = run_with("return inputs", &value, &LuaLimits::default()).unwrap();
    assert_eq!(Value::Object(o.output), value);
    // Through json.encode/decode inside Lua as well.
    let o = run_with(
        "return json.decode(json.encode(inputs))",
        &value,
        &LuaLimits::default(),
    )
    .unwrap();
    assert_eq!(Value::Object(o.output), value);
}

#[test]
fn lua_tables_convert_to_json() {
    assert_eq!(
        out("return { seq = {1, 2, 3}, obj = { [1] = 'a', [3] = 'c' }, empty = {}, arr = json.array(),
                      mixed = { 1, 2, x = 3 }, holes = json.array({ [1] = 1, [3] = 3 }), n = json.null,
                      int = 3, float = 3.0, neg0 = 0.5 }"),
        json!({
            "seq": [1, 2, 3], "obj": { "1": "a", "3": "c" }, "empty": {}, "arr": [],
            "mixed": { "1": 1, "2": 2, "x": 3 }, "holes": [1, null, 3], "n": null,
            "int": 3, "float": 3.0, "neg0": 0.5
        })
    );
    // Keys come out sorted.
    let v = out("return { b = 1, a = 2, c = 3 }");
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    // Integer keys met after string keys (the hash part's order) still join the object,
    // sorted by their names among the others.
    let v =
        out("local t = {} for i = 1, 20 do t['k' .. i] = i end t[100] = 'x' t[-3] = 'y' return t");
    let mut names: Vec<String> = (1..=20).map(|i| format!("k{i}")).collect();
    names.extend(["100".to_owned(), "-3".to_owned()]);
    names.sort();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        (v["k7"].clone(), v["100"].clone(), v["-3"].clone()),
        (json!(7), json!("x"), json!("y"))
    );
    // json.null is distinct from nil in inputs.
    assert_eq!(
        run_with(
            "return { isnull = inputs.x == json.null, present = inputs.x ~= nil }",
            &json!({ "x": null }),
            &LuaLimits::default()
        )
        .unwrap()
        .output,
        json!({ "isnull": true, "present": true })
            .as_object()
            .unwrap()
            .clone()
    );
}

fn conversion_error(src: &str) -> (String, String) {
    match run(src).unwrap_err() {
        LuaError::Conversion { path, message } => (path, message),
        other => panic!("{src}: {other:?}"),
    }
}

#[test]
fn conversion_errors_name_the_path() {
    let (path, msg) = conversion_error("return { callback = print }");
    assert_eq!(path, "result.callback");
    assert!(msg.contains("function"), "{msg}");
    let (path, _) = conversion_error("return { out = { items = { 1, { f = function() end } } } }");
    assert_eq!(path, "result.out.items[2].f");
    let (path, msg) = conversion_error("return { x = 0/0 }");
    assert_eq!(path, "result.x");
    assert!(msg.contains("NaN"), "{msg}");
    let (path, _) = conversion_error("return { x = math.huge }");
    assert_eq!(path, "result.x");
    let (_, msg) = conversion_error("return { [1.5] = 1 }");
    assert!(msg.contains("1.5"), "{msg}");
    let (_, msg) = conversion_error("return { [true] = 1 }");
    assert!(msg.contains("true"), "{msg}");
    let (path, msg) = conversion_error(r#"return { s = "\255" }"#);
    assert_eq!(path, "result.s");
    assert!(msg.contains("UTF-8"), "{msg}");
    let (_, msg) = conversion_error("local t = {} t.self = t return t");
    assert!(msg.contains("cycle"), "{msg}");
    let (_, msg) = conversion_error(
        "local t = {} local c = t for i = 1, 200 do c.n = {} c = c.n end return t",
    );
    assert!(msg.contains("deeper"), "{msg}");
    let (path, _) = conversion_error("return { co = coroutine.create(print) }");
    assert_eq!(path, "result.co");
    assert_eq!(
        run("return { x = print }").unwrap_err().kind(),
        ErrorKind::LuaConversionError
    );
    // json.encode reports the same way, as a runtime error at the call site.
    let err = run("return { s = json.encode({ a = { f = print } }) }").unwrap_err();
    assert!(err.to_string().contains("value.a.f"), "{err}");
}

#[test]
fn deep_inputs_are_refused() {
    let mut v = json!(1);
    for _ in 0..200 {
        v = json!({ "n": v });
    }
    let err = run_with(
        "return { seen = inputs ~= nil }",
        &json!({ "deep": v }),
        &LuaLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LuaError::Conversion { path, .. } if path.starts_with("inputs.deep.n.n")),
        "{err:?}"
    );
    assert_next_run_works();
}

#[test]
fn table_shapes_json_cannot_take_are_refused() {
    let (_, msg) = conversion_error("return { t = { [1] = 'a', ['1'] = 'b' } }");
    assert!(msg.contains("appears both"), "{msg}");
    let (path, msg) = conversion_error("return { a = json.array({ [0] = 1 }) }");
    assert_eq!(path, "result.a");
    assert!(msg.contains("non-positive-integer key (0)"), "{msg}");
    let (_, msg) = conversion_error("return { a = json.array({ x = 1 }) }");
    assert!(msg.contains(r#"non-positive-integer key ("x")"#), "{msg}");
    let (_, msg) = conversion_error("return { a = json.array({ [100000] = 1 }) }");
    assert!(msg.contains("too sparse"), "{msg}");
    // A value's path through integer keys reads as Lua indexes it.
    let (path, _) = conversion_error("return { list = { 1, 2, print } }");
    assert_eq!(path, "result.list[3]");
    assert_next_run_works();
}

#[test]
fn with_several_faults_the_same_one_is_named_every_time() {
    // Lua's traversal order depends on each state's string hash seed; the reported fault
    // must not: values in the output's order (sorted keys, ascending indexes), after the
    // keys and the table's shape.
    let src = "local t = {} for i = 1, 40 do t['k' .. i] = print end \
               return { t = t, list = { 1, print, print } }";
    for _ in 0..20 {
        dagengine_lua::reset_thread_state(); // a new state: a new hash seed
        let (path, _) = conversion_error(src);
        assert_eq!(path, "result.list[2]");
        let (path, _) =
            conversion_error("local t = {} for i = 1, 40 do t['k' .. i] = print end return t");
        assert_eq!(path, "result.k1");
    }
    let (_, msg) = conversion_error("return { [1] = print, ['1'] = 2, x = print }");
    assert!(msg.contains("appears both"), "{msg}");
    let (_, msg) = conversion_error("return { a = json.array({ [5000] = print }) }");
    assert!(msg.contains("too sparse"), "{msg}");
    assert_next_run_works();
}

#[test]
fn parent_results_and_deep_arrays_convert() {
    let parent = json!({ "rows": [[1, [2, [3, [4]]]], { "k": null }] });
    let o = execute(
        &LuaScript::new("return { back = results.up, n = #results.up.rows }"),
        &json!({}),
        &[("up", &parent)],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap();
    assert_eq!(Value::Object(o.output), json!({ "back": parent, "n": 2 }));
    // 120 nested arrays: within the depth limit, and the stack grows as needed.
    let mut deep = json!([]);
    for _ in 0..120 {
        deep = json!([deep]);
    }
    let o = run_with(
        "return { d = inputs.d }",
        &json!({ "d": deep }),
        &LuaLimits::default(),
    )
    .unwrap();
    assert_eq!(o.output["d"], deep);
    // A parent result that cannot convert names its root.
    let mut too_deep = json!(1);
    for _ in 0..200 {
        too_deep = json!([too_deep]);
    }
    let err = execute(
        &LuaScript::new("return { seen = results ~= nil }"),
        &json!({}),
        &[("up", &too_deep)],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, LuaError::Conversion { path, .. } if path.starts_with(r#"results["up"][1][1]"#)),
        "{err:?}"
    );
    assert_next_run_works();
}

#[test]
fn log_and_print_are_captured() {
    let o = run("log('a', 1, nil, true) print('b') log() log(2.5) return {}").unwrap();
    assert_eq!(o.logs, ["a\t1\tnil\ttrue", "b", "", "2.5"]);
    // Logs of the previous run do not carry over.
    assert!(run("return {}").unwrap().logs.is_empty());
}

#[test]
fn json_encode_and_decode() {
    let v = out(r#"
        local d = json.decode('{"a": [1, 2.5, "x", null, {}], "b": []}')
        return {
          n = #d.a, second = d.a[2], isnull = d.a[4] == json.null,
          back = json.encode(d.b), obj = json.encode({ k = 'v' }), arr = json.encode({ 1, 2 }),
          empty = json.encode({}), s = json.encode('q"'), num = json.encode(3),
          bad = select(2, pcall(json.decode, 'nope')):match('json.decode') ~= nil,
        }"#);
    assert_eq!(
        v,
        json!({ "n": 5, "second": 2.5, "isnull": true, "back": "[]", "obj": "{\"k\":\"v\"}",
                "arr": "[1,2]", "empty": "{}", "s": "\"q\\\"\"", "num": "3", "bad": true })
    );
}

#[test]
fn compiled_once_per_source() {
    let src = format!("return {{ v = {} }}", line!());
    let before = compiled_chunks();
    for i in 0..10 {
        // A new LuaScript (new Arc) with the same text still hits the cache.
        let o = execute(
            &LuaScript::new(src.clone()),
            &json!({ "i": i }),
            &[],
            &INFO,
            &LuaLimits::default(),
            None,
        )
        .unwrap();
        assert!(o.output.contains_key("v"));
    }
    assert_eq!(compiled_chunks() - before, 1);
    // Different source compiles again.
    out(&format!("return {{ w = {} }}", line!()));
    assert_eq!(compiled_chunks() - before, 2);
    // check() followed by execute of the same source: one compile.
    let s = LuaScript::new(format!("return {{ z = {} }}", line!()));
    s.check().unwrap();
    execute(&s, &json!({}), &[], &INFO, &LuaLimits::default(), None).unwrap();
    assert_eq!(compiled_chunks() - before, 3);
}

#[test]
fn works_on_many_threads() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let o = run_with(
                    "g = (g or 0) + inputs.i return { i = inputs.i, g = g }",
                    &json!({ "i": i }),
                    &LuaLimits::default(),
                )
                .unwrap();
                o.output
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let mut expected = Map::new();
        expected.insert("i".into(), json!(i));
        expected.insert("g".into(), json!(i));
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn unlimited_limits_work() {
    let o = run_with(
        "local s = 0 for i = 1, 10 do s = s + i end return { s = s }",
        &json!({}),
        &LuaLimits::UNLIMITED,
    )
    .unwrap();
    assert_eq!(o.output.get("s"), Some(&json!(55)));
}

#[test]
fn stack_overflow_is_a_runtime_error_and_recovers() {
    let src = "local function f() return f() + 1 end return { x = f() }";
    let err = run_with(src, &json!({}), &LuaLimits::UNLIMITED).unwrap_err();
    assert!(
        matches!(&err, LuaError::Runtime { message, .. } if message.contains("stack overflow")),
        "{err:?}"
    );
    assert_next_run_works();
    // Under the default 64 MiB limit the deep Lua stack runs out of memory first.
    let err = run(src).unwrap_err();
    assert!(
        matches!(err, LuaError::MemoryLimit { .. } | LuaError::Runtime { .. }),
        "{err:?}"
    );
    assert_next_run_works();
}

#[test]
fn non_string_errors_and_long_chunk_names() {
    let err = run("error({ code = 1 })").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LuaRuntimeError);
    let long = "n".repeat(80);
    let info = NodeInfo {
        node_id: &long,
        run_id: "r",
        attempt: 1,
    };
    let err = execute(
        &LuaScript::new("\n\nlocal = 1"),
        &json!({}),
        &[],
        &info,
        &LuaLimits::default(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, LuaError::Syntax { line: Some(3), .. }),
        "{err:?}"
    );
}

#[test]
fn same_source_different_nodes_report_their_own_name() {
    let script = LuaScript::new("error('bad')");
    for id in ["first", "second"] {
        let info = NodeInfo {
            node_id: id,
            run_id: "r",
            attempt: 1,
        };
        let err =
            execute(&script, &json!({}), &[], &info, &LuaLimits::default(), None).unwrap_err();
        assert_eq!(err.to_string(), format!("{id}:1: bad"));
    }
}

//! Code that Lua runs where a hook cannot reach it, or that never returns to the VM (issue
//! 17, point 3): message handlers, `__close` handlers, coroutines inside those, finalizers
//! and the pattern matcher. Each form must stop at its deadline and on a cancel.

use std::time::{Duration, Instant};

use dagengine_lua::{LuaError, LuaLimits};
use serde_json::{json, Value};

mod common;
use common::{cancel_after, run_bounded};

/// How long a test waits for a script that should stop long before.
const WAIT: Duration = Duration::from_secs(10);

const LIMIT: Duration = Duration::from_millis(200);

/// Far beyond any of these runs when stopped, far below "never".
const HANG: Duration = Duration::from_secs(2);

fn run(src: &str) -> Value {
    let (r, _) = run_bounded(src, LuaLimits::default(), None, WAIT);
    Value::Object(r.unwrap_or_else(|e| panic!("{src}: {e:?}")).output)
}

/// A wall-time limit alone (the hook is set late, by the watchdog).
fn timed() -> LuaLimits {
    LuaLimits {
        timeout: Some(LIMIT),
        ..LuaLimits::default()
    }
}

/// A wall-time limit with an instruction budget (the hook from the first instruction).
fn counted() -> LuaLimits {
    LuaLimits {
        max_instructions: Some(u64::MAX / 2),
        timeout: Some(LIMIT),
        ..LuaLimits::default()
    }
}

const LOOP_CLOSE: &str = "setmetatable({}, {__close = function() while true do end end})";

/// Scripts whose last stand is code Lua runs with no hook, or a pattern match.
fn endless() -> Vec<(&'static str, String)> {
    let mut forms: Vec<(&str, String)> = vec![
        (
            "message handler after error()",
            "xpcall(function() error('x') end, function() while true do end end)".into(),
        ),
        (
            "message handler after a limit error",
            "xpcall(function() while true do end end, function() while true do end end)".into(),
        ),
        (
            "message handler that catches its own limit error",
            "xpcall(error, function() while true do pcall(function() while true do end end) end end)"
                .into(),
        ),
        (
            "coroutine in a message handler",
            "xpcall(error, function() coroutine.wrap(function() while true do end end)() end)"
                .into(),
        ),
        (
            "xpcall in a message handler",
            "xpcall(error, function() xpcall(error, function() while true do end end) end)".into(),
        ),
        (
            "__close on block exit",
            format!("do local x <close> = {LOOP_CLOSE} end"),
        ),
        (
            "__close while error() unwinds",
            format!("do local x <close> = {LOOP_CLOSE} error('e') end"),
        ),
        (
            "__close while a limit error unwinds",
            format!("do local x <close> = {LOOP_CLOSE} while true do end end"),
        ),
        (
            "__close under pcall while a limit error unwinds",
            format!("pcall(function() local x <close> = {LOOP_CLOSE} while true do end end)"),
        ),
        (
            "coroutine in a __close",
            "do local x <close> = setmetatable({}, {__close = function() \
             coroutine.resume(coroutine.create(function() while true do end end)) end}) end"
                .into(),
        ),
        (
            "__close in a wrapped coroutine that a limit error ends",
            format!(
                "coroutine.wrap(function() local x <close> = {LOOP_CLOSE} while true do end end)()"
            ),
        ),
        (
            "__close in a coroutine closed while a limit error unwinds",
            format!(
                "local co = coroutine.create(function() local x <close> = {LOOP_CLOSE} \
                 while true do end end) \
                 local y <close> = setmetatable({{}}, {{__close = function() coroutine.close(co) end}}) \
                 coroutine.resume(co)"
            ),
        ),
        (
            "__close of a suspended coroutine closed by a __close",
            format!(
                "local co = coroutine.create(function() local x <close> = {LOOP_CLOSE} \
                 coroutine.yield() end) coroutine.resume(co) \
                 local y <close> = setmetatable({{}}, {{__close = function() coroutine.close(co) end}}) \
                 while true do end"
            ),
        ),
        (
            "__tostring of an error object",
            "error(setmetatable({}, {__tostring = function() while true do end end}))".into(),
        ),
        (
            "__gc set after setmetatable (not a finalizer)",
            "local mt = {} for i = 1, 100 do setmetatable({}, mt) end \
             mt.__gc = function() while true do end end \
             while true do local t = {} end"
                .into(),
        ),
    ];
    forms.extend(pattern_forms());
    forms
}

/// Every pattern function, in both call forms, on a subject and pattern that backtrack
/// for ever (about n^5 steps), and a plain search with n x m compares.
fn pattern_forms() -> Vec<(&'static str, String)> {
    let mut forms = Vec::new();
    let subject = "string.rep('a', 1e5)";
    let pattern = "'.-.-.-.-.-b'";
    for call in [
        format!("string.find({subject}, {pattern})"),
        format!("({subject}):find({pattern})"),
        format!("string.match({subject}, {pattern})"),
        format!("({subject}):match({pattern})"),
        format!("for m in string.gmatch({subject}, {pattern}) do end"),
        format!("for m in ({subject}):gmatch({pattern}) do end"),
        format!("string.gsub({subject}, {pattern}, 'x')"),
        format!("({subject}):gsub({pattern}, 'x')"),
        format!("string.gsub({subject}, {pattern}, function() end)"),
        format!("string.gsub({subject}, {pattern}, {{}})"),
    ] {
        forms.push(("pattern", call));
    }
    // A plain search for a long needle that almost matches everywhere (n x m compares).
    forms.push((
        "plain find",
        "string.find(string.rep('a', 1e7), string.rep('a', 1e5) .. 'b', 1, true)".into(),
    ));
    forms
}

#[test]
fn every_form_stops_at_its_deadline() {
    for limits in [timed(), counted()] {
        for (what, src) in endless() {
            let (r, elapsed) = run_bounded(&src, limits, None, WAIT);
            let err = r.unwrap_err();
            assert!(
                err == LuaError::Timeout { limit: LIMIT }
                    || matches!(&err, LuaError::Runtime { message, .. }
                                 if message.contains("pattern too complex")),
                "{what}: {src}: {err:?}"
            );
            assert!(elapsed < HANG, "{what}: {src}: {elapsed:?}");
        }
    }
}

#[test]
fn a_pattern_with_no_limit_at_all_runs_out_of_steps() {
    for (_, src) in endless().into_iter().filter(|(what, _)| *what == "pattern") {
        let (r, elapsed) = run_bounded(&src, LuaLimits::UNLIMITED, None, WAIT);
        match r.unwrap_err() {
            LuaError::Runtime { message, .. } => assert_eq!(
                message, "node:1: pattern too complex (more than 11000000 steps)",
                "{src}"
            ),
            other => panic!("{src}: {other:?}"),
        }
        assert!(elapsed < HANG * 5, "{src}: {elapsed:?}");
        // A plain error: the script can catch it.
        let caught = format!("local ok, e = pcall(function() {src} end) return {{ ok = ok }}");
        assert_eq!(run(&caught), json!({ "ok": false }), "{src}");
    }
}

#[test]
fn every_form_stops_on_a_cancel() {
    for (what, src) in endless() {
        let (cancel, raised) = cancel_after(Duration::from_millis(50));
        let limits = LuaLimits {
            timeout: None,
            ..LuaLimits::default()
        };
        let (r, _) = run_bounded(&src, limits, Some(cancel), WAIT);
        let stopped = Instant::now();
        let err = r.unwrap_err();
        if let LuaError::Runtime { message, .. } = &err {
            // A pattern may run out of steps before the cancel comes.
            assert!(message.contains("pattern too complex"), "{what}: {message}");
            continue;
        }
        assert_eq!(err, LuaError::Cancelled, "{what}: {src}");
        let raised = raised.lock().unwrap().expect("the flag was raised");
        let late = stopped.duration_since(raised);
        assert!(
            late < HANG,
            "{what}: {src}: stopped {late:?} after the cancel"
        );
    }
}

#[test]
fn gsub_output_counts_against_the_memory_limit() {
    let limits = LuaLimits {
        max_memory: Some(16 * 1024 * 1024),
        ..LuaLimits::default()
    };
    for src in [
        "local s = string.rep('x', 1e6):gsub('', string.rep('y', 100))",
        "local ok = pcall(string.gsub, string.rep('x', 1e6), '', string.rep('y', 100))",
    ] {
        let (r, _) = run_bounded(src, limits, None, WAIT);
        assert_eq!(
            r.unwrap_err(),
            LuaError::MemoryLimit {
                limit: 16 * 1024 * 1024
            },
            "{src}"
        );
    }
    assert_eq!(
        run("return { n = #(string.rep('x', 1e5):gsub('', 'yy')) }"),
        json!({ "n": 300_002 })
    );
}

#[test]
fn the_sandbox_xpcall_keeps_xpcalls_results() {
    assert_eq!(
        run("return { r = { xpcall(function(a, b) return a + b, a * b end, print, 2, 3) } }"),
        json!({ "r": [true, 5, 6] })
    );
    // The handler's first result only, as Lua's own.
    assert_eq!(
        run("return { r = { xpcall(function() error('x') end, \
             function(e) return e .. '!', 'dropped' end) } }"),
        json!({ "r": [false, "dagengine-script:1: x!"] })
    );
    assert_eq!(
        run("return { r = { xpcall(function() error({ code = 7 }) end, \
             function(e) return e.code end) } }"),
        json!({ "r": [false, 7] })
    );
    // A handler that fails: false and its error.
    assert_eq!(
        run("return { r = { xpcall(function() error('x') end, function(e) error('h', 0) end) } }"),
        json!({ "r": [false, "h"] })
    );
    assert_eq!(
        run("return { r = { pcall(xpcall, print) } }"),
        json!({ "r": [false, "bad argument #2 to 'xpcall' (function expected, got no value)"] })
    );
    assert_eq!(
        run("return { r = { pcall(xpcall, print, 1) } }"),
        json!({ "r": [false, "bad argument #2 to 'xpcall' (function expected, got number)"] })
    );
    // Yields go through it, as through Lua's own.
    assert_eq!(
        run("local co = coroutine.wrap(function() \
               return xpcall(function() return coroutine.yield(1) + 1 end, print) end) \
             return { r = { co(), co(41) } }"),
        json!({ "r": [1, true, 42] })
    );
}

#[test]
fn the_sandbox_coroutine_wrap_keeps_wraps_behaviour() {
    assert_eq!(
        run("local f = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end) \
             return { r = { f(1), f(5) } }"),
        json!({ "r": [2, 10] })
    );
    // An error in the coroutine names where it was resumed, after closing its variables.
    assert_eq!(
        run("local closed = false \
             local f = coroutine.wrap(function() \
               local x <close> = setmetatable({}, {__close = function() closed = true end}) \
               error('in co', 0) end) \
             local ok, e = pcall(function() local r = f() return r end) \
             return { ok = ok, e = e, closed = closed }"),
        json!({ "ok": false, "e": "dagengine-script:1: in co", "closed": true })
    );
    assert_eq!(
        run("local f = coroutine.wrap(function() error({ 1 }) end) \
             local ok, e = pcall(f) return { ok = ok, e = e }"),
        json!({ "ok": false, "e": [1] })
    );
    assert_eq!(
        run("local f = coroutine.wrap(function() end) f() return { r = { pcall(f) } }"),
        json!({ "r": [false, "cannot resume dead coroutine"] })
    );
    assert_eq!(
        run("return { r = { pcall(coroutine.wrap) } }"),
        json!({ "r": [false, "bad argument #1 to 'coroutine.wrap' (function expected, got no value)"] })
    );
    // `coroutine.close` still closes.
    assert_eq!(
        run("local n = 0 local co = coroutine.create(function() \
               local x <close> = setmetatable({}, {__close = function() n = n + 1 end}) \
               coroutine.yield() end) \
             coroutine.resume(co) local ok = coroutine.close(co) \
             return { ok = ok, n = n, status = coroutine.status(co) }"),
        json!({ "ok": true, "n": 1, "status": "dead" })
    );
}

#[test]
fn a_long_load_stops_at_its_deadline() {
    // Lua's parser reads a string chunk without returning to the VM: with the whole 26 MB
    // at once the script ran to its end, well past the deadline, and succeeded.
    let limits = LuaLimits {
        timeout: Some(Duration::from_millis(50)),
        ..LuaLimits::default()
    };
    let src = "local f = load(string.rep('-- a comment\\n', 2e6))";
    let (r, elapsed) = run_bounded(src, limits, None, WAIT);
    assert_eq!(
        r.unwrap_err(),
        LuaError::Timeout {
            limit: Duration::from_millis(50)
        }
    );
    assert!(elapsed < HANG, "{elapsed:?}");
    // Loading still works, named as Lua names a string chunk.
    assert_eq!(
        run("local body = string.rep(' ', 10000) \
             local f = assert(load(body .. 'return 1 + 1')) \
             local g, e = load(body .. 'return +') \
             return { r = f(), e = (e:gsub(' +', ' ')) }"),
        json!({ "r": 2, "e": "[string \" ...\"]:1: unexpected symbol near '+'" })
    );
}

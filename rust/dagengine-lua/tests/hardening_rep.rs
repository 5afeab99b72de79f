//! `string.rep` (issue 17, point 3): Lua's `str_rep` copies once per repetition without
//! returning to the VM, so `string.rep('', 1e18)` ran for ever and a long result ran past
//! the deadline and a cancel. The sandbox's has Lua concatenate a few thousand pieces at
//! most; it must stop at the deadline and on a cancel, use no more memory than Lua's own,
//! and give what Lua's own gives (results, argument errors, "resulting string too
//! large").

use std::time::{Duration, Instant};

use dagengine_lua::{execute, LuaError, LuaLimits, LuaScript};
use serde_json::{json, Value};

mod common;
use common::{cancel_after, run_bounded, INFO};

/// How long a test waits for a script that should stop long before.
const WAIT: Duration = Duration::from_secs(30);

const LIMIT: Duration = Duration::from_millis(200);

/// Far beyond any of these runs when stopped, far below "never" (before the fix: for ever,
/// or 17 s for the gigabyte). A debug build copies the last, atomic step of a half-gigabyte
/// result several times slower: 2-3 s on a loaded machine, so it gets more room.
const HANG: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(8)
} else {
    Duration::from_secs(2)
};

/// Room for results of half a gigabyte (a buffer, then the string).
const BIG_MEMORY: usize = 2 << 30;

/// Loops whose calls each ran for seconds (or for ever) in Lua's `str_rep` without
/// returning to the VM (but the last, whose copies were long already).
fn endless() -> Vec<(&'static str, LuaLimits)> {
    let small = LuaLimits {
        timeout: Some(LIMIT),
        ..LuaLimits::default()
    };
    let big = LuaLimits {
        max_memory: Some(BIG_MEMORY),
        ..small
    };
    vec![
        ("while true do local s = string.rep('', 1e18) end", small),
        (
            "while true do local s = ('x'):rep(0, '') .. string.rep('', 1e18, '') end",
            small,
        ),
        (
            "while true do local s = string.rep('', math.maxinteger) end",
            small,
        ),
        ("while true do local s = string.rep('a', 5e8) end", big),
        ("while true do local s = ('ab'):rep(2e8, ',') end", big),
        (
            "while true do local s = string.rep(string.rep('x', 1e6), 500) end",
            big,
        ),
        (
            "local co = coroutine.wrap(function() while true do string.rep('', 1e18) end end) co()",
            small,
        ),
        (
            "xpcall(error, function() while true do string.rep('', 1e18) end end)",
            small,
        ),
    ]
}

#[test]
fn string_rep_stops_at_its_deadline() {
    for (src, limits) in endless() {
        for limits in [
            limits,
            LuaLimits {
                max_instructions: Some(u64::MAX / 2),
                ..limits
            },
        ] {
            let (r, elapsed) = run_bounded(src, limits, None, WAIT);
            assert_eq!(r.unwrap_err(), LuaError::Timeout { limit: LIMIT }, "{src}");
            assert!(elapsed < HANG, "{src}: {elapsed:?}");
        }
    }
}

#[test]
fn string_rep_stops_on_a_cancel() {
    for (src, limits) in endless() {
        let (cancel, raised) = cancel_after(Duration::from_millis(50));
        let limits = LuaLimits {
            timeout: None,
            ..limits
        };
        let (r, _) = run_bounded(src, limits, Some(cancel), WAIT);
        let stopped = Instant::now();
        assert_eq!(r.unwrap_err(), LuaError::Cancelled, "{src}");
        let raised = raised.lock().unwrap().expect("the flag was raised");
        let late = stopped.duration_since(raised);
        assert!(late < HANG, "{src}: stopped {late:?} after the cancel");
    }
}

#[test]
fn a_result_needs_its_size_once() {
    // Lua's needed it twice (a buffer of the result's size, then the string): this result
    // of 10 MiB did not fit in 16 MiB.
    let limits = LuaLimits {
        max_memory: Some(16 << 20),
        ..LuaLimits::default()
    };
    for src in [
        "local s = string.rep('x', 10 * 1024 * 1024) return { n = #s }",
        "local s = ('ab'):rep(3 * 1024 * 1024, ',') return { n = #s }",
        "local s = string.rep(string.rep('y', 3 * 1024 * 1024), 3, '-') return { n = #s }",
    ] {
        let (r, _) = run_bounded(src, limits, None, WAIT);
        let n = r.unwrap_or_else(|e| panic!("{src}: {e:?}")).output["n"].clone();
        assert!(n.as_u64().unwrap() > 8 << 20, "{src}: {n}");
    }
}

#[test]
fn a_result_past_the_memory_limit_is_the_memory_error() {
    let limits = LuaLimits {
        max_memory: Some(16 << 20),
        ..LuaLimits::default()
    };
    for src in [
        "local s = string.rep('a', 1e8)",
        "local ok = pcall(string.rep, 'ab', 1e7, ',')",
    ] {
        let (r, _) = run_bounded(src, limits, None, WAIT);
        assert_eq!(
            r.unwrap_err(),
            LuaError::MemoryLimit { limit: 16 << 20 },
            "{src}"
        );
    }
}

/// Results and errors of `string.rep`, the same way in both states.
const CASES: &str = r##"
local results = {}
local function add(what, ...)
  local out = { tostring(select("#", ...)) }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" and #v > 64 then
      -- long results: their length and a sample of their bytes
      local parts = { "#" .. #v }
      for j = 1, #v, (#v // 16) + 1 do parts[#parts + 1] = v:byte(j) end
      parts[#parts + 1] = v:byte(#v)
      v = table.concat(parts, ",")
    end
    out[#out + 1] = tostring(v)
  end
  results[#results + 1] = what .. " => " .. table.concat(out, "|")
end
add("plain", pcall(string.rep, "ab", 3))
add("sep", pcall(string.rep, "ab", 3, ","))
add("one", pcall(string.rep, "ab", 1, ","))
add("zero", pcall(string.rep, "ab", 0, ","))
add("negative", pcall(string.rep, "ab", -5))
add("mininteger", pcall(string.rep, "ab", math.mininteger))
add("empty", pcall(string.rep, "", 5))
add("empty sep", pcall(string.rep, "", 5, "-"))
add("empty both", pcall(string.rep, "", 5, ""))
add("nul bytes", pcall(string.rep, "a\0", 4, "\0b"))
add("number subject", pcall(string.rep, 12, 3))
add("float subject", pcall(string.rep, 1.5, 2))
add("number sep", pcall(string.rep, "a", 3, 7))
add("float count", pcall(string.rep, "a", 3.0))
add("string count", pcall(string.rep, "a", "3"))
add("string float count", pcall(string.rep, "a", "0x10"))
add("bad count", pcall(string.rep, "a", 2.5))
add("bad string count", pcall(string.rep, "a", "x"))
add("no count", pcall(string.rep, "a"))
add("nil count", pcall(string.rep, "a", nil))
add("nil count and sep", pcall(string.rep, "a", nil, ","))
add("no args", pcall(string.rep))
add("table subject", pcall(string.rep, {}, 2))
add("table sep", pcall(string.rep, "a", 2, {}))
add("bool sep", pcall(string.rep, "a", 2, true))
add("nil sep", pcall(string.rep, "a", 2, nil))
add("too large", pcall(string.rep, "a", math.maxinteger))
add("too large by the sep", pcall(string.rep, "", 2^31, "x"))
add("too large 2^31", pcall(string.rep, "ab", 2^30))
add("long", pcall(string.rep, "abc", 1e6 + 3, "--"))
add("long unit", pcall(string.rep, string.rep("xy", 3e5) .. "z", 7, "!"))
add("long sep", pcall(string.rep, "q", 5, string.rep("-", 2e6)))
add("method", pcall(function() local r = ("ab"):rep(2, "+") return r end))
add("method bad count", pcall(function() local r = ("ab"):rep("y") return r end))
add("method no count", pcall(function() local r = ("ab"):rep() return r end))
add("local name", pcall(function() local f = string.rep local r = f("x", {}) return r end))
add("field name", pcall(function() local r = string.rep(nil, 1) return r end))
add("error position", pcall(function() local r = string.rep("a", math.maxinteger) return r end))
return { r = results }
"##;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

#[test]
fn string_rep_gives_what_lstrlib_gives() {
    let out = execute(
        &LuaScript::new(CASES),
        &json!({}),
        &[],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let ours = strings(&out.output["r"]);
    let lua = mlua::Lua::new();
    let t: mlua::Table = lua
        .load(format!("local _ENV = ...; {CASES}"))
        .set_name("=dagengine-script")
        .call(lua.globals())
        .expect("the reference run");
    let theirs: Vec<String> = t
        .get::<Vec<mlua::String>>("r")
        .expect("results")
        .iter()
        .map(mlua::String::to_string_lossy)
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let diffs: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("ours:   {a}\nlua's:  {b}"))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}

#[test]
fn string_rep_errors_name_the_scripts_line() {
    for (src, expected) in [
        (
            "\nlocal x = string.rep('a', math.maxinteger)",
            "node:2: resulting string too large",
        ),
        (
            "local x = ('a'):rep({})",
            "node:1: bad argument #1 to 'rep' (number expected, got table)",
        ),
        (
            "local x = string.rep('a')",
            "node:1: bad argument #2 to 'rep' (number expected, got no value)",
        ),
    ] {
        let (r, _) = run_bounded(src, LuaLimits::default(), None, WAIT);
        match r.unwrap_err() {
            LuaError::Runtime { message, .. } => assert_eq!(message, expected, "{src}"),
            other => panic!("{src}: {other:?}"),
        }
    }
}

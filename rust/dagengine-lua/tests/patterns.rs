//! The sandbox's pattern functions (matched in Rust, with a step budget) against Lua's
//! own (`lstrlib.c`, in a plain state of the same Lua build): the same results and the same
//! error messages on many random subjects, patterns and replacements, malformed ones
//! included.

use dagengine_lua::{execute, LuaError, LuaLimits, LuaScript, NodeInfo};
use serde_json::{json, Value};

const INFO: NodeInfo<'static> = NodeInfo {
    node_id: "node",
    run_id: "run-1",
    attempt: 1,
};

/// Generates the cases from a seed (the same in both states) and describes what each of
/// the four functions, in both call forms, does with them.
const HARNESS: &str = r##"
local seed = SEED
local function rand(n)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n + 1
end
local SUBJECT = { "a", "b", "a", "a", "b", "c", " ", "(", ")", "1", "2", "x", "%", "-", ".", "]", "[", "^", "$" }
local PATTERN = {
  "a", "b", ".", "%a", "%d", "%s", "%w", "%p", "%A", "%x", "%l", "%u", "%c", "%g", "%z", "%S",
  "[ab]", "[^a]", "[a-c]", "[%d%s]", "[]]", "[^]]", "[a-]", "[%a-z]",
  "*", "+", "-", "?", "(", ")", "()", "%1", "%2", "%0", "%b()", "%bab", "%f[%a]", "%f[%A]",
  "^", "$", "%", "[", "%b", "%f", "%fa", "(.-)", "(a*)", "%%", ".-", "a-b", "x",
}
local REPL = { "-", "%0", "%1", "%2", "%%", "%", "%x", "<%1>", "", "ab", "%0%0" }
local function pick(t) return t[rand(#t)] end
local function gen(parts, max)
  local out = {}
  for i = 1, rand(max) - 1 do out[i] = pick(parts) end
  return table.concat(out)
end
local function show(...)
  local out = { tostring(select("#", ...)) }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    out[#out + 1] = type(v) .. ":" .. tostring(v)
  end
  return table.concat(out, "|")
end
local function collect(f, ...)
  local ok, it = pcall(f, ...)
  if not ok then return "error:" .. tostring(it) end
  local out, n = {}, 0
  while true do
    local r = table.pack(pcall(it))
    if not r[1] then out[#out + 1] = "error:" .. tostring(r[2]) break end
    if r[2] == nil then break end
    out[#out + 1] = show(table.unpack(r, 2, r.n))
    n = n + 1
    if n > 100 then out[#out + 1] = "..." break end
  end
  return table.concat(out, ";")
end
local results = {}
local function add(what, ...) results[#results + 1] = what .. " => " .. show(...) end
for case = 1, CASES do
  local s, p = gen(SUBJECT, 12), gen(PATTERN, 5)
  local init = rand(3) == 1 and rand(20) - 10 or nil
  local repl = pick(REPL)
  local max = rand(4) == 1 and rand(4) - 2 or nil
  local c = string.format("#%d s=%q p=%q init=%s", case, s, p, tostring(init))
  add(c .. " find", pcall(string.find, s, p, init))
  -- Not tail calls: a Lua function (the sandbox's) tail-called leaves no frame of its caller
  -- to name in an error's position, a C function (Lua's) does.
  add(c .. " :find", pcall(function() local r = table.pack(s:find(p, init)) return table.unpack(r, 1, r.n) end))
  add(c .. " find plain", pcall(string.find, s, p, init, true))
  add(c .. " match", pcall(string.match, s, p, init))
  add(c .. " :match", pcall(function() local r = table.pack(s:match(p, init)) return table.unpack(r, 1, r.n) end))
  results[#results + 1] = c .. " gmatch => " .. collect(string.gmatch, s, p, init)
  results[#results + 1] = c .. " :gmatch => " .. collect(function() return s:gmatch(p) end)
  local g = string.format("%s repl=%q max=%s", c, repl, tostring(max))
  add(g .. " gsub", pcall(string.gsub, s, p, repl, max))
  add(g .. " :gsub", pcall(function() local r, n = s:gsub(p, repl, max) return r, n end))
  add(g .. " gsub fn", pcall(string.gsub, s, p, function(...) return show(...) end, max))
  add(g .. " gsub fn nil", pcall(string.gsub, s, p, function() end, max))
  add(g .. " gsub table", pcall(string.gsub, s, p, { a = "A", [1] = 1, ["("] = false }, max))
end
return { r = results }
"##;

/// Argument checks and odd arguments, the same way in both.
const ARGUMENTS: &str = r##"
local results = {}
local function add(what, ...)
  local out = { tostring(select("#", ...)) }
  for i = 1, select("#", ...) do out[#out + 1] = tostring((select(i, ...))) end
  results[#results + 1] = what .. " => " .. table.concat(out, "|")
end
add("find no args", pcall(string.find))
add("find nil", pcall(string.find, "a"))
add("find table", pcall(string.find, {}, "a"))
add("find numbers", pcall(string.find, 12345, 34))
add("find float subject", pcall(string.find, 1.5, "%."))
add("find init float", pcall(string.find, "abc", "c", 2.0))
add("find init 2.5", pcall(string.find, "abc", "c", 2.5))
add("find init string", pcall(string.find, "abc", "c", "2"))
add("find init bad string", pcall(string.find, "abc", "c", "x"))
add("find init table", pcall(string.find, "abc", "c", {}))
add("find init huge", pcall(string.find, "abc", "", math.maxinteger))
add("find init past end", pcall(string.find, "abc", "", 5))
add("find init at end", pcall(string.find, "abc", "", 4))
add("find init -huge", pcall(string.find, "abc", "a", math.mininteger))
add("match no pattern", pcall(string.match, "abc"))
add("gmatch no pattern", pcall(string.gmatch, "abc"))
add("gmatch init past end", pcall(function() local t = {} for m in string.gmatch("abc", "", 10) do t[#t+1] = m end return #t end))
add("gmatch anchor is literal", pcall(function() local t = {} for m in string.gmatch("^a^a", "^a") do t[#t+1] = m end return #t end))
add("gsub no repl", pcall(string.gsub, "abc", "b"))
add("gsub bool repl", pcall(string.gsub, "abc", "b", true))
add("gsub number repl", pcall(string.gsub, "abc", "b", 7))
add("gsub float repl", pcall(string.gsub, "abc", "b", 7.5))
add("gsub bad max", pcall(string.gsub, "abc", "b", "x", 1.5))
add("gsub bad max and repl", pcall(string.gsub, "abc", "b", nil, "y"))
add("gsub table value", pcall(string.gsub, "abc", "b", { b = {} }))
add("gsub fn float", pcall(string.gsub, "abc", "(b)", function() return 2.0 end))
add("gsub fn error", pcall(string.gsub, "abc", "b", function() error("boom", 0) end))
local t = {}
add("gsub fn error object", select(2, pcall(string.gsub, "abc", "b", function() error(t) end)) == t)
add("gsub table unfinished", pcall(string.gsub, "ab", "(a)(b", { a = "A" }))
add("gsub fn unfinished", pcall(string.gsub, "ab", "(a)(b", print))
add("gsub %1 unfinished", pcall(string.gsub, "ab", "(a)(b", "%1"))
add("gsub %2 unfinished", pcall(string.gsub, "ab", "(a)(b", "%2"))
add("gmatch unfinished", pcall(function() for a in string.gmatch("ab", "(a)(b") do end end))
add("gsub position", pcall(string.gsub, "abc", "()b()", "%2-%1"))
add("gsub position table", pcall(string.gsub, "abc", "()", { [2] = "X" }))
add("gsub empty subject", pcall(string.gsub, "", "", "x"))
add("gsub nul bytes", pcall(string.gsub, "a\0b", "%z", "0"))
add("find nul pattern", pcall(string.find, "a\0b", "\0"))
add("match nul class", pcall(string.match, "a\0b", "[\0]"))
add("match set end", pcall(string.match, "a", "[a"))
add("match %f at end", pcall(string.match, "ab", "%f[%z]"))
add("too many captures", pcall(string.match, "a", string.rep("()", 33)))
add("32 captures", pcall(string.match, "a", string.rep("()", 32)))
add("deep", pcall(string.match, string.rep("a", 300), string.rep("a?", 300)))
add("high bytes", pcall(string.match, "\200\201a", "%a+"))
add("vertical tab", pcall(string.match, "\v", "%s"))
add("method bad arg", pcall(function() local r = ("x"):find({}) return r end))
add("method bad init", pcall(function() local r = ("x"):gsub("x", "y", 0.5) return r end))
add("local name", pcall(function() local f = string.match local r = f("x", nil) return r end))
add("field name", pcall(function() local r = string.gmatch(nil) return r end))
return { r = results }
"##;

fn sandboxed(src: &str) -> Vec<String> {
    let out = execute(
        &LuaScript::new(src),
        &json!({}),
        &[],
        &INFO,
        &LuaLimits::default(),
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    strings(&out.output["r"])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// The same script in a plain Lua state: Lua's own string library.
fn reference(src: &str) -> Vec<String> {
    let lua = mlua::Lua::new();
    let t: mlua::Table = lua
        .load(format!("local _ENV = ...; {src}"))
        .set_name("=dagengine-script")
        .call(lua.globals())
        .expect("the reference run");
    let r: Vec<mlua::String> = t.get("r").expect("results");
    r.iter().map(mlua::String::to_string_lossy).collect()
}

fn compare(src: &str) -> usize {
    let ours = sandboxed(src);
    let theirs = reference(src);
    assert_eq!(ours.len(), theirs.len());
    let diffs: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .take(10)
        .map(|(a, b)| format!("ours:   {a}\nlua's:  {b}"))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
    ours.len()
}

#[test]
fn random_patterns_match_as_lstrlib_does() {
    for seed in [1, 7, 42, 1234, 99_991, 31_337, 2_024, 5] {
        let src = HARNESS
            .replace("SEED", &seed.to_string())
            .replace("CASES", "1000");
        let n = compare(&src);
        assert_eq!(n, 1000 * 12);
    }
}

#[test]
fn arguments_are_checked_as_lstrlib_does() {
    compare(ARGUMENTS);
}

#[test]
fn errors_name_the_scripts_line() {
    for (src, expected) in [
        (
            "\nlocal x = string.find('a', '%')",
            "node:2: malformed pattern (ends with '%')",
        ),
        (
            "\n\nlocal x = ('a'):match('[a')",
            "node:3: malformed pattern (missing ']')",
        ),
        (
            "for m in ('a'):gmatch('%1') do end",
            "node:1: invalid capture index %1",
        ),
        (
            "local x = ('a'):gsub('a', '%2')",
            "node:1: invalid capture index %2",
        ),
        (
            "local x = ('a'):gsub('a', {a = {}})",
            "node:1: invalid replacement value (a table)",
        ),
        (
            "local x = string.find(string.rep('a', 2e4), '.-.-.-b')",
            "node:1: pattern too complex (more than 3000000 steps)",
        ),
        (
            "for m in string.gmatch(string.rep('a', 2e4), '(.-)(.-)b') do end",
            "node:1: pattern too complex (more than 3000000 steps)",
        ),
        (
            "local x = string.find(nil, 'a')",
            "node:1: bad argument #1 to 'find' (string expected, got nil)",
        ),
        (
            "local x = string.gsub('a', 'a')",
            "node:1: bad argument #3 to 'gsub' (string/function/table expected, got no value)",
        ),
    ] {
        let err = execute(
            &LuaScript::new(src),
            &json!({}),
            &[],
            &INFO,
            &LuaLimits::default(),
            None,
        )
        .unwrap_err();
        match err {
            LuaError::Runtime { message, .. } => assert_eq!(message, expected, "{src}"),
            other => panic!("{src}: {other:?}"),
        }
    }
}

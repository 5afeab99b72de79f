-- Builds the sandbox. Runs once per Lua state, with the full (unsandboxed)
-- globals still in reach, and returns the metatable of a node's environment.
-- Everything captured here as a local is unreachable from scripts, which only
-- ever see the frozen proxies and wrappers stored in `safe`.
local G, host = ...

local raw_error, raw_pcall = G.error, G.pcall
local raw_rawset, raw_setmetatable, raw_getmetatable = G.rawset, G.setmetatable, G.getmetatable
local raw_load, rawget, type, select, tostring, next = G.load, G.rawget, G.type, G.select, G.tostring, G.next
local concat = G.table.concat
local coroutine = G.coroutine
local raw_resume, raw_status, raw_close = coroutine.resume, coroutine.status, coroutine.close

local check_abort, sink, abort_if_tripped = host.check_abort, host.sink, host.abort_if_tripped
local raw_encode, raw_decode = host.json_encode, host.json_decode
local ARRAY_MT, NULL = host.array_mt, host.null
-- `current[1]` is the environment of the running node (set from Rust); the default env
-- of `load`.
local current = host.current

-- `string.dump` would hand out bytecode; remove it from the real table because
-- string values reach it through the string metatable, not through the proxy.
G.string.dump = nil
-- Hide the string metatable: its `__index` is the real (mutable) string table.
raw_getmetatable("").__metatable = false

-- Proxies shared by every run; `rawset` refuses them (see below) so a script
-- cannot plant fields that the next run would see.
local frozen = {}

local function readonly()
  raw_error("attempt to modify a read-only library table", 2)
end

local function freeze(lib)
  local proxy = {}
  raw_setmetatable(proxy, {
    __index = lib,
    __newindex = readonly,
    __metatable = false,
    -- Iterate the library without handing out the real table (which `next`
    -- as the first result of __pairs would do through its state argument).
    __pairs = function()
      return function(_, k) return next(lib, k) end, proxy, nil
    end,
  })
  frozen[proxy] = true
  return proxy
end

-- A limit tripped inside pcall/xpcall/coroutine.resume must not be swallowed by
-- the script: `check_abort` tells whether the caught error is a limit error.
local function pass(ok, ...)
  if not ok and check_abort((...)) then raw_error((...), 0) end
  return ok, ...
end

local function pcall(f, ...) return pass(raw_pcall(f, ...)) end

-- The type an argument error names: argument `i` of `n` given.
local function typename(v, i, n)
  return i > n and "no value" or v == NULL and "light userdata" or type(v)
end

-- Raises `lauxlib`'s message for a bad argument `i` to the sandbox function `name` (its
-- global name), at the position of that function's caller; the function is the caller
-- of the caller of this one (`level` 4), or its caller (`level` 3).
local arg_message = host.arg_message
local function argerror(name, i, msg, level)
  level = level or 4
  raw_error(arg_message(level - 1, name, i, msg), level)
end

-- `luaL_checktype`'s check for argument `i` of `name`, which must be a function.
local function expect_function(name, i, n, v)
  if type(v) == "function" then return end
  argerror(name, i, "function expected, got " .. typename(v, i, n))
end

-- Lua's own `xpcall` calls the message handler from inside the raise of the error. When
-- the error comes from the limit hook, that is inside the hook, where Lua calls no hook:
-- a handler that loops could never be stopped. This one calls the handler once `f` has
-- unwound, as an ordinary call (so the limit hook reaches it), with the same results:
-- `true, f's results`, or `false` and the handler's first result; a handler that fails
-- gives `false` and its own error. (No handler can look at the failed stack anyway: the
-- sandbox has no `debug` library.)
local function handled(ok, ...)
  if not ok and check_abort((...)) then raw_error((...), 0) end
  return false, (...)
end

local function caught(h, ok, ...)
  if ok then return ok, ... end
  if check_abort((...)) then raw_error((...), 0) end
  return handled(raw_pcall(h, (...)))
end

local function xpcall(...)
  local f, h = ...
  expect_function("xpcall", 2, select("#", ...), h)
  return caught(h, raw_pcall(f, select(3, ...)))
end

-- The run's `inputs` are read-only views (`view.rs`): assigning to one of their tables
-- raises this (at the assignment, from `__newindex`; at the call, from `rawset`).
local is_view = host.is_view

local function view_error(k, level)
  local key = type(k) == "string" and ("'" .. k .. "'") or ("[" .. tostring(k) .. "]")
  raw_error("inputs is read-only (cannot set " .. key .. ")", level)
end

host.view_newindex = function(_, k) view_error(k, 3) end

local function rawset(t, k, v)
  if frozen[t] then readonly() end
  if is_view(t) then view_error(k, 3) end
  return raw_rawset(t, k, v)
end

-- Finalizers would run at an arbitrary later time (possibly outside any run and
-- its limits), so `__gc` metatables are refused.
local function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    raw_error("__gc metamethods are not allowed in the sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end

local function log(...)
  local n = select("#", ...)
  if n == 1 then return sink(tostring((...))) end
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  return sink(concat(parts, "\t"))
end

local json = {
  null = NULL,
  encode = function(v)
    local ok, r = raw_encode(v)
    if not ok then raw_error(r, 2) end
    return r
  end,
  decode = function(s)
    local ok, r = raw_decode(s)
    if not ok then raw_error(r, 2) end
    return r
  end,
  array = function(t)
    if t == nil then t = {} end
    if type(t) ~= "table" then raw_error("json.array expects a table", 2) end
    if raw_getmetatable(t) == "json.array" then return t end
    return raw_setmetatable(t, ARRAY_MT)
  end,
}

local co = {}
for k, v in next, coroutine do co[k] = v end
-- `host.resume` is Lua's `resume` that tells the watchdog which state runs (run_state.rs).
local resume = host.resume
co.resume = function(c, ...)
  if type(c) ~= "thread" then return pass(raw_resume(c, ...)) end
  return pass(resume(c, ...))
end
-- A coroutine copies its creator's limit hook when it is created, and a script's hook may
-- be set only once it has run for a while: set it now (the hook goes with the run).
local arm_hook, raw_create = host.arm_hook, coroutine.create
co.create = function(f) arm_hook() return raw_create(f) end

-- A coroutine that a limit error ended died inside the limit hook, and Lua leaves it with
-- hooks off: closing it would run its `__close` handlers where the limit hook cannot stop
-- them. Once a limit is reached no coroutine is closed (the limit error goes on instead).
co.close = function(c)
  abort_if_tripped()
  return raw_close(c)
end

-- `coroutine.wrap` as lcorolib's, on top of the sandbox's `resume` and `close`: Lua's own
-- closes a coroutine that failed at once, limit error or not (see `close`).
local function wrapped(c, ok, ...)
  if ok then return ... end
  local e = (...)
  if check_abort(e) then raw_error(e, 0) end
  if raw_status(c) == "dead" then
    -- If it died of an error (`close` fails), close its to-be-closed variables, which may
    -- change the error, and say where it was resumed.
    local closed, ce = raw_close(c)
    if not closed then
      if type(ce) == "string" and ce ~= "not enough memory" then raw_error(ce, 2) end
      raw_error(ce, 0)
    end
  end
  raw_error(e, 0)
end

co.wrap = function(...)
  local f = ...
  expect_function("coroutine.wrap", 1, select("#", ...), f)
  arm_hook()
  local c = raw_create(f)
  return function(...) return wrapped(c, resume(c, ...)) end
end

-- Lua's parser never returns to the VM while it reads a string chunk: a long chunk is fed
-- to it in pieces by a reader, a Lua function in which the limit hook runs.
local LOAD_PIECE = 4096
local load_sub = G.string.sub

local function load(chunk, name, _mode, env)
  if env == nil then env = current[1] end
  -- Text only: binary chunks bypass the verifier and can crash the VM.
  if type(chunk) == "string" and #chunk > LOAD_PIECE then
    local at = 1
    local function reader()
      local piece = load_sub(chunk, at, at + LOAD_PIECE - 1)
      at = at + LOAD_PIECE
      return piece
    end
    -- A string chunk is named after its text by default.
    return raw_load(reader, name or chunk, "t", env)
  end
  return raw_load(chunk, name, "t", env)
end

-- The pattern functions: `string.find`, `match`, `gmatch` and `gsub` (also reached as
-- methods, through the string metatable) match in Rust, with a step budget and the run's
-- limit checks (`pattern.rs`, called through the C functions in `engine.rs`). These check
-- the arguments as `lstrlib.c` does (the common case, strings and integers, in line; the
-- rest, conversions and errors, in `*_args`), raise the matcher's errors at the caller's
-- position, and run the loops that call the script's replacement functions.
local p_find, p_search, p_gsub = host.find, host.search, host.gsub
local tointeger, tonumber, sub, math_type = G.math.tointeger, G.tonumber, G.string.sub, G.math.type

-- The functions below raise argument errors at this level: argerror, the check, `*_args`,
-- the pattern function, its caller.
local ARGS_LEVEL = 5

-- `luaL_checklstring`: a string, or a number as `tostring` writes it.
local function check_string(name, i, n, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  argerror(name, i, "string expected, got " .. typename(v, i, n), ARGS_LEVEL)
end

-- `luaL_optinteger`.
local function opt_integer(name, i, n, v)
  if v == nil then return nil end
  local x = v
  if type(x) == "string" then x = tonumber(x) end
  if type(x) == "number" then
    local k = tointeger(x)
    if k then return k end
    argerror(name, i, "number has no integer representation", ARGS_LEVEL)
  end
  argerror(name, i, "number expected, got " .. typename(v, i, n), ARGS_LEVEL)
end

-- The arguments `(s, p, init)` of `name` checked and converted.
local function pattern_args(name, ...)
  local n = select("#", ...)
  local s, p, init = ...
  return check_string(name, 1, n, s), check_string(name, 2, n, p), opt_integer(name, 3, n, init)
end

-- The host's answer, as the caller's results; an error is raised at the caller's
-- position (these are tail-called by the functions the script called).
local function answer(ok, ...)
  if ok then return ... end
  if ok == nil then return nil end
  abort_if_tripped()
  raw_error((...), 2)
end

G.string.find = function(...)
  local s, p, init, plain = ...
  if type(s) ~= "string" or type(p) ~= "string" or init ~= nil and math_type(init) ~= "integer" then
    s, p, init = pattern_args("string.find", ...)
  end
  return answer(p_find(s, p, init or 1, plain and true or false, true))
end

G.string.match = function(...)
  local s, p, init = ...
  if type(s) ~= "string" or type(p) ~= "string" or init ~= nil and math_type(init) ~= "integer" then
    s, p, init = pattern_args("string.match", ...)
  end
  return answer(p_find(s, p, init or 1, false, false))
end

-- `posrelatI` minus one: a 1-based start position (negative from the end) as an offset.
local function start_offset(pos, len)
  if pos > 0 then return pos - 1 end
  if pos == 0 or pos < -len then return 0 end
  return len + pos
end

G.string.gmatch = function(...)
  local s, p, init = ...
  if type(s) ~= "string" or type(p) ~= "string" or init ~= nil and math_type(init) ~= "integer" then
    s, p, init = pattern_args("string.gmatch", ...)
  end
  local len = #s
  local pos, last = start_offset(init or 1, len), -1
  local function step(ok, start, e, ...)
    if ok then
      pos, last = e, e
      return ...
    end
    if ok == nil then
      pos = len + 1
      return nil
    end
    abort_if_tripped()
    raw_error(start, 2)
  end
  return function()
    if pos > len then return nil end
    return step(p_search(s, p, pos, last, false, false))
  end
end

-- One replacement of `gsub` with a table or a function (`add_value`): false at the end,
-- nil and a message on an error.
local function replace(st, ok, start, e, ...)
  if not ok then
    if ok == nil then return false end
    abort_if_tripped()
    return nil, start
  end
  local parts, s = st.parts, st.s
  if start > st.pos then parts[#parts + 1] = sub(s, st.pos + 1, start) end
  local v
  if st.call then v = st.repl(...) else v = st.repl[(...)] end
  if not v then
    parts[#parts + 1] = sub(s, start + 1, e)
  else
    local t = type(v)
    if t == "number" then
      v = tostring(v)
    elseif t ~= "string" then
      return nil, "invalid replacement value (a " .. t .. ")"
    end
    parts[#parts + 1] = v
  end
  st.pos, st.last = e, e
  return true
end

local function gsub_calling(s, p, repl, max, call)
  local st = { parts = {}, s = s, repl = repl, call = call, pos = 0, last = -1 }
  local anchor = sub(p, 1, 1) == "^"
  local count = 0
  while count < max do
    local ok, msg = replace(st, p_search(s, p, st.pos, st.last, true, not call))
    if not ok then
      if ok == nil then raw_error(msg, 2) end
      break
    end
    count = count + 1
    if anchor then break end
  end
  if count == 0 then return s, 0 end
  local parts = st.parts
  parts[#parts + 1] = sub(s, st.pos + 1)
  return concat(parts), count
end

local function gsubbed(ok, out, ...)
  if ok then return out, ... end
  abort_if_tripped()
  raw_error(out, 2)
end

-- The arguments of `gsub` checked and converted, in `str_gsub`'s order.
local function gsub_args(...)
  local n = select("#", ...)
  local s, p, repl, max = ...
  s, p = check_string("string.gsub", 1, n, s), check_string("string.gsub", 2, n, p)
  max = opt_integer("string.gsub", 4, n, max)
  local t = type(repl)
  if t == "number" then
    repl = tostring(repl)
  elseif t ~= "string" and t ~= "function" and t ~= "table" then
    argerror("string.gsub", 3, "string/function/table expected, got " .. typename(repl, 3, n), ARGS_LEVEL - 1)
  end
  return s, p, repl, max
end

G.string.gsub = function(...)
  local s, p, repl, max = ...
  local t = type(repl)
  if type(s) ~= "string" or type(p) ~= "string" or max ~= nil and math_type(max) ~= "integer"
      or t ~= "string" and t ~= "function" and t ~= "table" then
    s, p, repl, max = gsub_args(...)
    t = type(repl)
  end
  if max == nil then max = #s + 1 end
  if t == "string" then return gsubbed(p_gsub(s, p, repl, max)) end
  return gsub_calling(s, p, repl, max, t == "function")
end

-- `string.rep` is `host_rep`: Lua's copies once per repetition without returning to the
-- VM, so a long result of short strings (or `string.rep('', 1e18)`, for ever) ignored the
-- deadline and a cancel. The arguments are checked as `str_rep` does.
local p_rep = host.rep

local function rep_args(...)
  local n = select("#", ...)
  local s, count, sep = ...
  s = check_string("string.rep", 1, n, s)
  if count == nil then
    argerror("string.rep", 2, "number expected, got " .. typename(count, 2, n), ARGS_LEVEL - 1)
  end
  count = opt_integer("string.rep", 2, n, count)
  if sep ~= nil then sep = check_string("string.rep", 3, n, sep) end
  return s, count, sep
end

G.string.rep = function(...)
  local s, n, sep = ...
  if type(s) ~= "string" or math_type(n) ~= "integer" or sep ~= nil and type(sep) ~= "string" then
    s, n, sep = rep_args(...)
  end
  return answer(p_rep(s, n, sep or ""))
end

local safe = {
  assert = G.assert, error = G.error, ipairs = host.view_ipairs, next = host.view_next, pairs = G.pairs,
  pcall = pcall, xpcall = xpcall, select = select, tonumber = G.tonumber, tostring = tostring,
  type = type, rawequal = G.rawequal, rawget = host.view_rawget, rawset = rawset,
  rawlen = host.view_rawlen,
  setmetatable = setmetatable, getmetatable = raw_getmetatable, unpack = G.table.unpack,
  _VERSION = G._VERSION,
  string = freeze(G.string), table = freeze(G.table), math = freeze(G.math),
  utf8 = freeze(G.utf8), coroutine = freeze(co), json = freeze(json),
  log = log, print = log, load = load,
}

-- The sandbox's own `ipairs`, `next`, `rawget` and `rawlen` (`view.rs`) replace Lua's in
-- the real globals too, where Lua looks up the name of a C function that an argument error
-- names when its caller gives none (as `pcall(next, 1)` does not).
G.ipairs, G.next, G.rawget, G.rawlen = safe.ipairs, safe.next, safe.rawget, safe.rawlen

-- Defence in depth: nothing should reach the real globals, but strip them anyway.
for _, name in next, { "dofile", "loadfile", "load", "collectgarbage", "print", "require", "package",
  "os", "io", "debug" } do
  G[name] = nil
end

-- Every node runs with an environment table carrying this metatable: its own
-- globals (`inputs`, `results`, `ctx` and whatever it assigns) over the shared
-- read-only `safe`. Rust empties and refills the table before each run, so
-- nothing one run assigns is seen by the next.
return { __index = safe, __metatable = false }

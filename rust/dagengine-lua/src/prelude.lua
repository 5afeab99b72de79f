-- Builds the sandbox. Runs once per Lua state, with the full (unsandboxed)
-- globals still in reach, and returns the metatable of a node's environment.
-- Everything captured here as a local is unreachable from scripts, which only
-- ever see the frozen proxies and wrappers stored in `safe`.
local G, host = ...

local raw_error, raw_pcall, raw_xpcall = G.error, G.pcall, G.xpcall
local raw_rawset, raw_setmetatable, raw_getmetatable = G.rawset, G.setmetatable, G.getmetatable
local raw_load, rawget, type, select, tostring, next = G.load, G.rawget, G.type, G.select, G.tostring, G.next
local concat = G.table.concat
local coroutine = G.coroutine
local raw_resume = coroutine.resume

local check_abort, sink = host.check_abort, host.sink
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
local function xpcall(f, h, ...) return pass(raw_xpcall(f, h, ...)) end

local function rawset(t, k, v)
  if frozen[t] then readonly() end
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
co.resume = function(c, ...) return pass(raw_resume(c, ...)) end
-- A coroutine copies its creator's limit hook when it is created, and a script's hook may
-- be set only once it has run for a while: set it now (the hook goes with the run).
local arm_hook, raw_create, raw_wrap = host.arm_hook, coroutine.create, coroutine.wrap
co.create = function(f) arm_hook() return raw_create(f) end
co.wrap = function(f) arm_hook() return raw_wrap(f) end

local function load(chunk, name, _mode, env)
  if env == nil then env = current[1] end
  -- Text only: binary chunks bypass the verifier and can crash the VM.
  return raw_load(chunk, name, "t", env)
end

local safe = {
  assert = G.assert, error = G.error, ipairs = G.ipairs, next = G.next, pairs = G.pairs,
  pcall = pcall, xpcall = xpcall, select = select, tonumber = G.tonumber, tostring = tostring,
  type = type, rawequal = G.rawequal, rawget = rawget, rawset = rawset, rawlen = G.rawlen,
  setmetatable = setmetatable, getmetatable = raw_getmetatable, unpack = G.table.unpack,
  _VERSION = G._VERSION,
  string = freeze(G.string), table = freeze(G.table), math = freeze(G.math),
  utf8 = freeze(G.utf8), coroutine = freeze(co), json = freeze(json),
  log = log, print = log, load = load,
}

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

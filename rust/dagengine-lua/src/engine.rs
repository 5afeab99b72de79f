//! The pooled per-thread Lua state: sandbox construction, compiled-chunk
//! cache, the limit hook and one execution.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_int;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mlua::{ffi, ChunkMode, Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue};
use serde_json::Value;

use crate::convert::{
    invoke, json_to_lua, lua_to_json, lua_type_name, release, Call, ConvFail, InvokeFail, Returned,
    Scope, REUSE_MAX_KEYS,
};
use crate::hook::{EAGER_WITHIN, HOOK_COUNT, HOOK_INTERVAL};
use crate::pattern;
use crate::watchdog;
use crate::{LuaError, LuaLimits, LuaOutput, LuaScript, NodeInfo};

/// Compiled chunks kept per state before the cache is flushed.
const CACHE_CAP: usize = 1024;

/// Prepended (without a newline, so line numbers are unchanged) to every
/// script: the runner passes the per-run environment as the chunk's first
/// vararg. Re-pointing the chunk's `_ENV` upvalue instead
/// (`Function::set_environment`) costs a chunk load per call on Lua 5.4.
const ENV_PREFIX: &str = "local _ENV = ...; ";

/// Lua's `LUA_IDSIZE` minus the NUL: longest chunk id shown in messages.
const LUA_IDSIZE: usize = 59;

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    static COMPILED: Cell<u64> = const { Cell::new(0) };
}

/// Number of chunks compiled on the calling thread so far (cache misses).
pub(crate) fn compiled_chunks() -> u64 {
    COMPILED.with(Cell::get)
}

/// Drops the calling thread's Lua state (it is recreated on next use).
pub(crate) fn reset_thread_state() {
    ENGINE.with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = None;
        }
    });
}

/// Runs `f` with this thread's engine, creating it lazily and replacing it if
/// a previous execution left it poisoned (internal error or panic).
pub(crate) fn with_engine<R>(
    f: impl FnOnce(&mut Engine) -> Result<R, LuaError>,
) -> Result<R, LuaError> {
    ENGINE.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entrant use (cannot happen through this crate's API): use a
            // private state rather than panic.
            return f(&mut Engine::new()?);
        };
        if slot.as_ref().is_some_and(|e| e.busy || e.poisoned.get()) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(Engine::new()?);
        }
        let engine = slot.as_mut().expect("engine was just created");
        engine.busy = true;
        let result = f(engine);
        engine.busy = false;
        if engine.poisoned.get() {
            *slot = None;
        }
        result
    })
}

/// Lends an execution's cancel flag to the hook for as long as the guard lives. (A
/// scoped userdata did the same without `unsafe`, at a cost of a quarter of a
/// microsecond per execution.)
struct CancelGuard<'a> {
    run: &'a RunState,
    _flag: std::marker::PhantomData<&'a AtomicBool>,
}

impl<'a> CancelGuard<'a> {
    fn new(run: &'a RunState, flag: Option<&'a AtomicBool>) -> Self {
        run.cancel
            .set(flag.map_or(std::ptr::null(), std::ptr::from_ref));
        CancelGuard {
            run,
            _flag: std::marker::PhantomData,
        }
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.run.cancel.set(std::ptr::null());
    }
}

/// Which limit stopped the script.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trip {
    Instructions,
    Timeout,
    Cancelled,
    Memory,
}

impl Trip {
    /// The error object a script sees (its handlers cannot keep it: see `must_abort`).
    fn message(self) -> &'static CStr {
        match self {
            Trip::Instructions => c"instruction limit exceeded",
            Trip::Timeout => c"wall-time limit exceeded",
            Trip::Cancelled => c"execution cancelled",
            Trip::Memory => c"memory limit exceeded",
        }
    }

    fn lua_error(self) -> mlua::Error {
        mlua::Error::runtime(self.message().to_string_lossy())
    }
}

/// The registry key (its address) of the light userdata pointing at a state's [`RunState`].
static RUN_KEY: u8 = 0;

fn run_key() -> *const std::os::raw::c_void {
    std::ptr::from_ref(&RUN_KEY).cast()
}

/// The count hook: every [`HOOK_INTERVAL`] instructions, [`RunState::check`], and a Lua
/// error if a limit is reached.
///
/// The hook is this crate's own rather than mlua's: to raise an error from a hook, mlua
/// empties the stack of the interrupted function first (`lua_settop(L, 0)`), which runs
/// that function's pending `__close` handlers right there, inside the hook, where Lua
/// calls no hook: a `__close` that loops could then never be stopped. Here the error is
/// raised as is: Lua closes those variables while it unwinds to the protected call, with
/// hooks on again, and a `__close` that still runs is stopped at its next hook (see
/// [`RunState::check`]).
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn limit_hook(l: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {
    // SAFETY: Lua calls the hook on a running state, with `LUA_MINSTACK` free slots. The
    // registry entry is set when the engine is built and points at its `RunState`, which
    // outlives the state. Nothing with a destructor is alive when `lua_error` jumps out.
    unsafe {
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, run_key());
        let run = ffi::lua_touserdata(l, -1).cast::<RunState>().cast_const();
        ffi::lua_pop(l, 1);
        let Some(run) = run.as_ref() else { return };
        let Err(trip) = run.check() else { return };
        ffi::lua_pushstring(l, trip.message().as_ptr());
        ffi::lua_error(l);
    }
}

/// Per-execution state shared with the hook and host functions.
struct RunState {
    active: Cell<bool>,
    instructions: Cell<u64>,
    max_instructions: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    /// The caller's cancel flag while an execution with one runs (else null); see
    /// [`CancelGuard`].
    cancel: Cell<*const AtomicBool>,
    memory_limited: Cell<bool>,
    tripped: Cell<Option<Trip>>,
    logs: RefCell<Vec<String>>,
    log_bytes: Cell<usize>,
    log_limit: Cell<usize>,
    /// The state scripts run on; [`limit_hook`] is set on it only while a script runs.
    main: Cell<*mut ffi::lua_State>,
}

impl RunState {
    fn new() -> Self {
        RunState {
            active: Cell::new(false),
            instructions: Cell::new(0),
            max_instructions: Cell::new(u64::MAX),
            deadline: Cell::new(None),
            cancel: Cell::new(std::ptr::null()),
            memory_limited: Cell::new(false),
            tripped: Cell::new(None),
            logs: RefCell::new(Vec::new()),
            log_bytes: Cell::new(0),
            log_limit: Cell::new(usize::MAX),
            main: Cell::new(std::ptr::null_mut()),
        }
    }

    /// Sets the hook on the main state now if it is not set (the watchdog would set it
    /// late). Coroutines copy their creator's hook when created, never later, so the
    /// sandbox's `coroutine.create` and `coroutine.wrap` call this first.
    #[allow(unsafe_code)]
    fn arm_hook(&self) {
        let main = self.main.get();
        if !main.is_null() {
            // SAFETY: `main` is this engine's live main state, on this thread; setting a
            // hook is allowed at any point.
            unsafe {
                if ffi::lua_gethookmask(main) == 0 {
                    ffi::lua_sethook(main, Some(limit_hook), ffi::LUA_MASKCOUNT, HOOK_COUNT);
                }
            }
        }
    }

    /// Sets the hook for a run with these limits: at once where it must count every
    /// instruction or the deadline is near; only if the script runs long where there is a
    /// deadline or a cancel flag to check (the returned guard; see `watchdog`); not at all
    /// where there is nothing to enforce.
    fn start_hook(&self, limits: &LuaLimits, cancellable: bool) -> Option<watchdog::Entered> {
        let eager =
            limits.max_instructions.is_some() || limits.timeout.is_some_and(|t| t < EAGER_WITHIN);
        if !eager && limits.timeout.is_none() && !cancellable {
            return None;
        }
        let watched = if eager {
            None
        } else {
            watchdog::enter(self.main.get(), Some(limit_hook))
        };
        if watched.is_none() {
            self.arm_hook();
        }
        watched
    }

    /// Takes the hook off the main state (between scripts it has none).
    #[allow(unsafe_code)]
    fn disarm_hook(&self) {
        let main = self.main.get();
        if !main.is_null() {
            // SAFETY: as in `arm_hook`.
            unsafe {
                if ffi::lua_gethookmask(main) != 0 {
                    ffi::lua_sethook(main, None, 0, 0);
                }
            }
        }
    }

    fn trip(&self, t: Trip) -> Result<(), Trip> {
        self.tripped.set(Some(t));
        Err(t)
    }

    /// The hook's check: charges the instructions and looks at the deadline and the
    /// cancel flag; `Err` when the script must stop.
    fn check(&self) -> Result<(), Trip> {
        if !self.active.get() {
            return Ok(());
        }
        // Once tripped, keep failing so code that runs after the error anyway (a `__close`
        // while the error unwinds the stack, say) cannot keep running.
        if let Some(t) = self.tripped.get() {
            return Err(t);
        }
        let n = self.instructions.get() + u64::from(HOOK_INTERVAL);
        self.instructions.set(n);
        if n > self.max_instructions.get() {
            return self.trip(Trip::Instructions);
        }
        if let Some(deadline) = self.deadline.get() {
            if Instant::now() >= deadline {
                return self.trip(Trip::Timeout);
            }
        }
        if self.cancelled() {
            return self.trip(Trip::Cancelled);
        }
        Ok(())
    }

    /// For the sandbox's wrappers: the limit error if a limit was reached in this run.
    fn abort_if_tripped(&self) -> mlua::Result<()> {
        match self.tripped.get() {
            Some(t) => Err(t.lua_error()),
            None => Ok(()),
        }
    }

    #[allow(unsafe_code)]
    fn cancelled(&self) -> bool {
        let flag = self.cancel.get();
        // SAFETY: non-null only while a `CancelGuard` borrowing the flag is alive (the
        // guard clears it on drop, also when unwinding), and the hook's check, the caller,
        // runs only inside the execution that guard spans.
        !flag.is_null() && unsafe { (*flag).load(Ordering::Relaxed) }
    }

    /// Whether an error caught by `pcall`/`xpcall`/`coroutine.resume` must be
    /// re-raised because it is a limit error.
    fn must_abort(&self, err: &LuaValue) -> bool {
        if self.tripped.get().is_some() {
            return true;
        }
        let oom = match err {
            LuaValue::Error(e) => is_memory_error(e),
            LuaValue::String(s) => &*s.as_bytes() == b"not enough memory",
            _ => false,
        };
        if oom && self.memory_limited.get() {
            self.tripped.set(Some(Trip::Memory));
            return true;
        }
        false
    }

    fn log(&self, line: &mlua::String) -> mlua::Result<()> {
        let line = line.to_string_lossy();
        // Logs live on the Rust heap, outside Lua's allocator; charge them
        // against the memory limit so `log` cannot be used to exhaust memory.
        let total = self.log_bytes.get().saturating_add(line.len());
        if total > self.log_limit.get() {
            self.tripped.set(Some(Trip::Memory));
            return Err(Trip::Memory.lua_error());
        }
        self.log_bytes.set(total);
        self.logs.borrow_mut().push(line);
        Ok(())
    }
}

/// The host functions behind the sandbox's `string.find`, `match`, `gmatch` and `gsub`
/// (see `pattern`; the argument checks and the loops calling Lua are in the prelude, which
/// passes these only arguments of the right types). Each returns nothing (no match), `true`
/// and the results (a match), or `false` and a message (an error: the prelude raises it as
/// the script's, or the limit error if the run reached one meanwhile; an error raised here
/// would name the prelude's frame). They are C functions on Lua's C API, as the conversions
/// are: through mlua's safe API a call cost several times Lua's own `string.find`.
///
/// # Safety (of the functions)
///
/// Lua calls them with their arguments on the stack; the strings' bytes stay valid while the
/// strings are there (they are never popped). The only Lua calls that can fail are pushes
/// and buffer additions (memory errors): the frames such an error unwinds through hold
/// borrows and plain values only (the messages of `pattern::Fail` are copied to the stack
/// first).
fn add_pattern_functions(lua: &Lua, host: &Table) -> mlua::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: see above.
    unsafe {
        host.raw_set("find", lua.create_c_function(host_find)?)?;
        host.raw_set("search", lua.create_c_function(host_search)?)?;
        host.raw_set("gsub", lua.create_c_function(host_gsub)?)?;
    }
    Ok(())
}

/// The [`RunState`] of the state `l` runs on (see [`RUN_KEY`]).
#[allow(unsafe_code)]
unsafe fn run_of<'a>(l: *mut ffi::lua_State) -> Option<&'a RunState> {
    // SAFETY: as in `limit_hook`.
    unsafe {
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, run_key());
        let run = ffi::lua_touserdata(l, -1).cast::<RunState>().cast_const();
        ffi::lua_pop(l, 1);
        run.as_ref()
    }
}

/// The bytes of the string at `i` (empty if it is not one).
#[allow(unsafe_code)]
unsafe fn arg_bytes<'a>(l: *mut ffi::lua_State, i: c_int) -> &'a [u8] {
    // SAFETY: a string's bytes live as long as the string, which stays on the stack.
    unsafe {
        if ffi::lua_type(l, i) != ffi::LUA_TSTRING {
            return &[];
        }
        let mut len = 0;
        let p = ffi::lua_tolstring(l, i, &raw mut len);
        std::slice::from_raw_parts(p.cast::<u8>(), len)
    }
}

/// Pushes `false` and the failure's message; returns their count.
#[allow(unsafe_code)]
unsafe fn push_fail(l: *mut ffi::lua_State, f: pattern::Fail) -> c_int {
    let mut buf = [0u8; 128];
    let msg = f.message();
    let n = msg.len().min(buf.len());
    buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
    drop((f, msg));
    // SAFETY: nothing with a destructor is left if a push fails.
    unsafe {
        ffi::lua_pushboolean(l, 0);
        ffi::lua_pushlstring(l, buf.as_ptr().cast(), n);
    }
    2
}

/// Pushes the captures of the match `start..end` of `matcher` over `subject`; their count.
#[allow(unsafe_code)]
unsafe fn push_captures<F: FnMut() -> Result<(), ()>>(
    l: *mut ffi::lua_State,
    matcher: &pattern::Matcher<'_, F>,
    subject: &[u8],
    (start, end): (usize, usize),
    whole: bool,
) -> Result<c_int, pattern::Fail> {
    let n = matcher.capture_count(whole);
    for i in 0..n {
        let cap = matcher.capture(i, start, end)?;
        // SAFETY: the stack has room (checked by the caller); `subject` is the subject.
        unsafe {
            match cap {
                pattern::Capture::Text(a, b) => {
                    ffi::lua_pushlstring(l, subject[a..b].as_ptr().cast(), b - a);
                }
                pattern::Capture::Position(at) => ffi::lua_pushinteger(l, to_lua_int(at)),
            }
        }
    }
    Ok(n as c_int)
}

/// Stack room for the most values a function here returns.
const RESULTS_ROOM: c_int = 40;

/// `find(subject, pat, init, plain, is_find)`: `string.find` (`true`, start, end, captures) or
/// `string.match` (`true`, captures); `init` is the 1-based argument.
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn host_find(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `add_pattern_functions`.
    unsafe {
        let (subject, pat) = (arg_bytes(l, 1), arg_bytes(l, 2));
        let init = ffi::lua_tointeger(l, 3);
        let plain = ffi::lua_toboolean(l, 4) != 0;
        let is_find = ffi::lua_toboolean(l, 5) != 0;
        let Some(run) = run_of(l) else { return 0 };
        ffi::luaL_checkstack(l, RESULTS_ROOM, std::ptr::null());
        let init = pattern::start_offset(init, subject.len());
        if init > subject.len() {
            return 0;
        }
        let tick = || run.check().map_err(drop);
        if is_find && (plain || pattern::no_specials(pat)) {
            let mut matcher = pattern::Matcher::new(subject, pat, tick);
            return match matcher.find_plain(init) {
                Ok(None) => 0,
                Ok(Some(at)) => {
                    ffi::lua_pushboolean(l, 1);
                    ffi::lua_pushinteger(l, to_lua_int(at + 1));
                    ffi::lua_pushinteger(l, to_lua_int(at + pat.len()));
                    3
                }
                Err(f) => push_fail(l, f),
            };
        }
        let (anchor, pat) = pattern::strip_anchor(pat);
        let mut matcher = pattern::Matcher::new(subject, pat, tick);
        let at = match matcher.search(init, anchor, None) {
            Ok(None) => return 0,
            Ok(Some(at)) => at,
            Err(f) => return push_fail(l, f),
        };
        ffi::lua_pushboolean(l, 1);
        if is_find {
            ffi::lua_pushinteger(l, to_lua_int(at.0 + 1));
            ffi::lua_pushinteger(l, to_lua_int(at.1));
        }
        match push_captures(l, &matcher, subject, at, !is_find) {
            Ok(n) => n + if is_find { 3 } else { 1 },
            Err(f) => push_fail(l, f),
        }
    }
}

/// `search(subject, pat, from, last, strip_anchor, first)`: the next match at 0-based `from` or
/// later whose end is not `last` (-1: none), for `gmatch` and `gsub`: `true`, its 0-based
/// start and end, its captures (the whole match if none; only the first if `first`).
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn host_search(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `add_pattern_functions`.
    unsafe {
        let (subject, pat) = (arg_bytes(l, 1), arg_bytes(l, 2));
        let from = usize::try_from(ffi::lua_tointeger(l, 3)).unwrap_or(usize::MAX);
        let last = usize::try_from(ffi::lua_tointeger(l, 4)).ok();
        let strip = ffi::lua_toboolean(l, 5) != 0;
        let first = ffi::lua_toboolean(l, 6) != 0;
        let Some(run) = run_of(l) else { return 0 };
        ffi::luaL_checkstack(l, RESULTS_ROOM, std::ptr::null());
        let (anchor, pat) = if strip {
            pattern::strip_anchor(pat)
        } else {
            (false, pat)
        };
        let mut matcher = pattern::Matcher::new(subject, pat, || run.check().map_err(drop));
        let at = match matcher.search(from, anchor, last) {
            Ok(None) => return 0,
            Ok(Some(at)) => at,
            Err(f) => return push_fail(l, f),
        };
        ffi::lua_pushboolean(l, 1);
        ffi::lua_pushinteger(l, to_lua_int(at.0));
        ffi::lua_pushinteger(l, to_lua_int(at.1));
        if first {
            return match matcher.capture(0, at.0, at.1) {
                Ok(pattern::Capture::Text(a, b)) => {
                    ffi::lua_pushlstring(l, subject[a..b].as_ptr().cast(), b - a);
                    4
                }
                Ok(pattern::Capture::Position(n)) => {
                    ffi::lua_pushinteger(l, to_lua_int(n));
                    4
                }
                Err(f) => push_fail(l, f),
            };
        }
        match push_captures(l, &matcher, subject, at, true) {
            Ok(n) => n + 3,
            Err(f) => push_fail(l, f),
        }
    }
}

/// A `luaL_Buffer` as `gsub`'subject output: built with Lua'subject allocator, so under the script'subject
/// memory limit.
struct LuaBuffer(*mut ffi::luaL_Buffer);

impl pattern::Sink for LuaBuffer {
    #[allow(unsafe_code)]
    fn add(&mut self, bytes: &[u8]) {
        // SAFETY: the buffer is initialized and used by nothing else meanwhile.
        unsafe { ffi::luaL_addlstring(self.0, bytes.as_ptr().cast(), bytes.len()) };
    }
}

/// `gsub(subject, pat, repl, max)`: `string.gsub` with a string replacement: `true`, the new
/// string, the count.
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn host_gsub(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `add_pattern_functions`. The buffer is a local that does not move; the
    // stack is left to it between its initialization and its result.
    unsafe {
        let (subject, pat, repl) = (arg_bytes(l, 1), arg_bytes(l, 2), arg_bytes(l, 3));
        let max = ffi::lua_tointeger(l, 4);
        let Some(run) = run_of(l) else { return 0 };
        ffi::luaL_checkstack(l, RESULTS_ROOM, std::ptr::null());
        ffi::lua_pushboolean(l, 1);
        let mut b: ffi::luaL_Buffer = std::mem::zeroed();
        ffi::luaL_buffinit(l, &raw mut b);
        let mut out = LuaBuffer(&raw mut b);
        let tick = || run.check().map_err(drop);
        match pattern::gsub_str(subject, pat, repl, max, &mut out, tick) {
            Ok(0) => {
                ffi::lua_pop(l, 1);
                ffi::lua_pushvalue(l, 1);
                ffi::lua_pushinteger(l, 0);
                3
            }
            Ok(n) => {
                ffi::luaL_pushresult(&raw mut b);
                ffi::lua_pushinteger(l, n);
                3
            }
            Err(f) => push_fail(l, f),
        }
    }
}

/// `luaL_argerror`'s message for argument `arg` of the sandbox function running at stack
/// `level` (`global` is its name when the caller gives none, as for a call from `pcall`):
/// named as its caller named it, `self` not counted in a method call.
fn arg_message(lua: &Lua, level: usize, global: &str, arg: i64, msg: &str) -> String {
    let (name, what) = lua
        .inspect_stack(level, |d| {
            let n = d.names();
            (n.name.map(std::borrow::Cow::into_owned), n.name_what)
        })
        .unwrap_or((None, None));
    let mut arg = arg;
    if what == Some("method") {
        arg -= 1;
        if arg == 0 {
            let name = name.as_deref().unwrap_or("?");
            return format!("calling '{name}' on bad self ({msg})");
        }
    }
    let name = name.as_deref().unwrap_or(global);
    format!("bad argument #{arg} to '{name}' ({msg})")
}

/// A position or length as a Lua integer.
fn to_lua_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

/// Hasher for keys that already are hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct CacheEntry {
    source: Arc<str>,
    func: Function,
}

/// Chunk name every script is compiled under, so one compiled function serves every node
/// that runs the same source; runtime messages get the node id in its place.
pub(crate) const CHUNK: &str = "dagengine-script";
/// The chunk name of the sandbox's prelude (the frames of its wrappers, `pcall` and the like).
const PRELUDE: &str = "dagengine-prelude";

/// One sandboxed Lua state with its compiled-chunk cache.
pub(crate) struct Engine {
    lua: Lua,
    run: Rc<RunState>,
    array_mt: Table,
    /// Metatable of node environments: `__index` is the shared read-only globals.
    env_mt: Table,
    /// The environment and `ctx` tables every run reuses (see [`Scope`]).
    env: Table,
    ctx: Table,
    /// `current[1]` is `env`: the default environment of the sandbox's `load`.
    current: Table,
    /// Environment of compiled chunks before the prefix rebinds `_ENV`; empty
    /// so the chunk never holds the real globals.
    chunk_env: Table,
    cache: HashMap<u64, Vec<CacheEntry>, BuildHasherDefault<IdHasher>>,
    cache_len: usize,
    busy: bool,
    /// Set on unexpected mlua failures; `with_engine` then drops the state.
    poisoned: Cell<bool>,
}

fn internal(e: &mlua::Error) -> LuaError {
    LuaError::Runtime {
        message: format!("internal Lua error: {e}"),
        traceback: None,
    }
}

/// A node environment (with the sandbox's metatable), made the default env of `load`.
fn new_env(lua: &Lua, env_mt: &Table, current: &Table) -> mlua::Result<Table> {
    let env = lua.create_table()?;
    env.set_metatable(Some(env_mt.clone()))?;
    current.raw_set(1, &env)?;
    Ok(env)
}

impl Engine {
    fn new() -> Result<Self, LuaError> {
        Self::build().map_err(|e| internal(&e))
    }

    fn build() -> mlua::Result<Self> {
        let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
        let lua = Lua::new_with(libs, LuaOptions::default())?;
        let run = Rc::new(RunState::new());

        let array_mt = lua.create_table()?;
        // Protected so scripts cannot reach (and poison) the shared marker.
        array_mt.raw_set("__metatable", "json.array")?;

        let host = lua.create_table()?;
        let r = Rc::clone(&run);
        host.raw_set(
            "check_abort",
            lua.create_function(move |_, v: LuaValue| Ok(r.must_abort(&v)))?,
        )?;
        let r = Rc::clone(&run);
        host.raw_set(
            "sink",
            lua.create_function(move |_, s: mlua::String| r.log(&s))?,
        )?;
        let mt = array_mt.clone();
        host.raw_set(
            "json_encode",
            lua.create_function(move |lua, v: LuaValue| json_encode(lua, &mt, &v))?,
        )?;
        let mt = array_mt.clone();
        host.raw_set(
            "json_decode",
            lua.create_function(move |lua, v: LuaValue| json_decode(lua, &mt, &v))?,
        )?;
        host.raw_set("array_mt", &array_mt)?;
        host.raw_set("null", LuaValue::NULL)?;
        let r = Rc::clone(&run);
        host.raw_set(
            "arm_hook",
            lua.create_function(move |_, ()| {
                r.arm_hook();
                Ok(())
            })?,
        )?;
        let r = Rc::clone(&run);
        host.raw_set(
            "abort_if_tripped",
            lua.create_function(move |_, ()| r.abort_if_tripped())?,
        )?;
        let current = lua.create_table()?;
        host.raw_set("current", &current)?;
        add_pattern_functions(&lua, &host)?;
        host.raw_set(
            "arg_message",
            lua.create_function(
                |lua, (level, global, arg, msg): (usize, mlua::String, i64, mlua::String)| {
                    let (global, msg) = (global.to_string_lossy(), msg.to_string_lossy());
                    Ok(arg_message(lua, level, &global, arg, &msg))
                },
            )?,
        )?;

        let env_mt: Table = lua
            .load(include_str!("prelude.lua"))
            .set_name(format!("={PRELUDE}"))
            .set_mode(ChunkMode::Text)
            .call((lua.globals(), host))?;

        // The hook finds the run's state in the registry; each execution sets the hook on
        // the main state, at its start or late.
        let mut main = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: stores a pointer to `run` (kept alive by the engine, which drops `lua`
        // first) in the registry of the state `exec_raw` runs on: the main state every
        // execution runs on too.
        unsafe {
            lua.exec_raw::<()>((), |l| {
                main = l;
                ffi::lua_pushlightuserdata(l, Rc::as_ptr(&run).cast_mut().cast());
                ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, run_key());
            })?;
        }
        run.main.set(main);

        let chunk_env = lua.create_table()?;
        let env = new_env(&lua, &env_mt, &current)?;
        let ctx = lua.create_table()?;
        Ok(Engine {
            lua,
            run,
            array_mt,
            env_mt,
            env,
            ctx,
            current,
            chunk_env,
            cache: HashMap::default(),
            cache_len: 0,
            busy: false,
            poisoned: Cell::new(false),
        })
    }

    /// Compiles `source` as a text chunk named `name`.
    fn compile(&self, source: &str, name: &str) -> Result<Function, LuaError> {
        if source.as_bytes().first() == Some(&0x1b) {
            return Err(LuaError::Syntax {
                line: None,
                message: "binary chunks are not allowed".into(),
            });
        }
        let mut text = String::with_capacity(ENV_PREFIX.len() + source.len());
        text.push_str(ENV_PREFIX);
        text.push_str(source);
        COMPILED.with(|c| c.set(c.get() + 1));
        let name = name.replace('\0', "?");
        self.lua
            .load(text)
            .set_name(format!("={name}"))
            .set_mode(ChunkMode::Text)
            .set_environment(self.chunk_env.clone())
            .into_function()
            .map_err(|e| match e {
                mlua::Error::SyntaxError { message, .. } => syntax_error(&message, &name),
                other => internal(&other),
            })
    }

    /// The compiled function for `script`, from the cache when possible.
    pub(crate) fn function(&mut self, script: &LuaScript) -> Result<Function, LuaError> {
        if let Some(entries) = self.cache.get(&script.hash) {
            for e in entries {
                if Arc::ptr_eq(&e.source, &script.source) || *e.source == *script.source {
                    return Ok(e.func.clone());
                }
            }
        }
        let func = self.compile(&script.source, CHUNK)?;
        if self.cache_len >= CACHE_CAP {
            // Scripts are few in practice; a full flush is simpler than LRU
            // and bounds the memory held by stale chunks.
            self.cache.clear();
            self.cache_len = 0;
        }
        self.cache.entry(script.hash).or_default().push(CacheEntry {
            source: Arc::clone(&script.source),
            func: func.clone(),
        });
        self.cache_len += 1;
        Ok(func)
    }

    pub(crate) fn execute(
        &mut self,
        script: &LuaScript,
        inputs: &Value,
        results: &[(&str, &Value)],
        info: &NodeInfo<'_>,
        limits: &LuaLimits,
        cancel: Option<&AtomicBool>,
    ) -> Result<LuaOutput, LuaError> {
        let func = self.function(script)?;

        let run = &self.run;
        run.instructions.set(0);
        run.max_instructions
            .set(limits.max_instructions.unwrap_or(u64::MAX));
        run.deadline.set(limits.timeout.map(|t| Instant::now() + t));
        run.tripped.set(None);
        run.log_bytes.set(0);
        run.log_limit.set(limits.max_memory.unwrap_or(usize::MAX));
        run.memory_limited.set(limits.max_memory.is_some());
        run.active.set(true);

        let call = Call {
            names: script.names,
            inputs,
            results,
            node_id: info.node_id,
            run_id: info.run_id,
            attempt: info.attempt,
        };
        let lua = &self.lua;
        // Inputs are converted before the memory limit is armed: they come from the host.
        let mut armed = Ok(());
        let arm = || {
            if let Some(max) = limits.max_memory {
                let limit = lua.used_memory().saturating_add(max).max(1);
                armed = lua.set_memory_limit(limit).map(drop);
            }
            armed.is_ok()
        };
        let mut disarmed = None;
        let disarm = || {
            if limits.max_memory.is_some() {
                disarmed = Some(lua.set_memory_limit(0).map(drop));
            }
        };
        let scope = Scope {
            env: &self.env,
            ctx: &self.ctx,
        };
        let mut outgrown = false;
        let guard = CancelGuard::new(run, cancel);
        let watched = run.start_hook(limits, cancel.is_some());
        let outcome = invoke(
            lua,
            &self.array_mt,
            &func,
            &scope,
            &call,
            arm,
            disarm,
            &mut outgrown,
        );
        drop(watched);
        run.disarm_hook();
        drop(guard);

        run.active.set(false);
        match disarmed {
            Some(done) => done.map_err(|e| self.fail(&e))?,
            // The script raised (or never ran): the limit is still on.
            None if limits.max_memory.is_some() => {
                self.lua.set_memory_limit(0).map_err(|e| self.fail(&e))?;
            }
            None => {}
        }
        let logs = std::mem::take(&mut *run.logs.borrow_mut());
        let tripped = run.tripped.take();
        if outcome.is_err() {
            // Before any collection after a limit error: what the run left in its scope
            // must be garbage by then.
            let keys = release(&self.lua, &scope).map_err(|e| self.fail(&e))?;
            outgrown |= keys > REUSE_MAX_KEYS;
        }
        if outgrown {
            self.renew_scope().map_err(|e| self.fail(&e))?;
        }
        match outcome {
            Err(InvokeFail::Args(e, root)) => Err(self.conv_failure(e, &root)),
            Err(InvokeFail::NotArmed) => {
                let e = armed
                    .err()
                    .unwrap_or(mlua::Error::MemoryControlNotAvailable);
                Err(self.fail(&e))
            }
            Err(InvokeFail::Call(e)) => Err(name_node(
                self.runtime_failure(&e, tripped, limits),
                info.node_id,
            )),
            Ok(value) => match tripped {
                // The script caught the limit error and still returned.
                Some(t) => Err(self.limit_error(t, limits)),
                None => Ok(LuaOutput {
                    output: self.output(value)?,
                    logs,
                }),
            },
        }
    }

    /// Fresh environment and `ctx` tables, for when a script left too many keys in them.
    fn renew_scope(&mut self) -> mlua::Result<()> {
        self.env = new_env(&self.lua, &self.env_mt, &self.current)?;
        self.ctx = self.lua.create_table()?;
        Ok(())
    }

    fn output(&self, returned: Returned) -> Result<serde_json::Map<String, Value>, LuaError> {
        match returned {
            Returned::Lua(LuaValue::Nil) => Ok(serde_json::Map::new()),
            Returned::Lua(other) => Err(LuaError::BadReturn {
                message: format!(
                    "node returned a {}; expected a table or nothing",
                    lua_type_name(&other)
                ),
            }),
            Returned::Json(Ok(Value::Object(map))) => Ok(map),
            Returned::Json(Ok(_)) => Err(LuaError::BadReturn {
                message: "node returned an array; expected a table with string keys or nothing"
                    .into(),
            }),
            Returned::Json(Err(e)) => Err(self.conv_failure(e, "result")),
        }
    }

    fn limit_error(&self, t: Trip, limits: &LuaLimits) -> LuaError {
        match t {
            Trip::Instructions => LuaError::InstructionLimit {
                limit: limits.max_instructions.unwrap_or(u64::MAX),
            },
            Trip::Timeout => LuaError::Timeout {
                limit: limits.timeout.unwrap_or_default(),
            },
            Trip::Cancelled => LuaError::Cancelled,
            Trip::Memory => {
                self.collect_garbage();
                LuaError::MemoryLimit {
                    limit: limits.max_memory.unwrap_or(usize::MAX),
                }
            }
        }
    }

    fn collect_garbage(&self) {
        // A memory bomb leaves its garbage behind; free it now so the next
        // run starts from the normal footprint.
        let _ = self.lua.gc_collect();
    }

    fn runtime_failure(
        &mut self,
        e: &mlua::Error,
        tripped: Option<Trip>,
        limits: &LuaLimits,
    ) -> LuaError {
        if let Some(t) = tripped {
            return self.limit_error(t, limits);
        }
        if is_memory_error(e) {
            self.collect_garbage();
            return match limits.max_memory {
                Some(limit) => LuaError::MemoryLimit { limit },
                None => LuaError::Runtime {
                    message: "not enough memory".into(),
                    traceback: None,
                },
            };
        }
        runtime_error(e).unwrap_or_else(|| self.fail(e))
    }

    fn conv_failure(&self, e: ConvFail, root: &str) -> LuaError {
        match e {
            ConvFail::Conv(c) => LuaError::Conversion {
                path: c.path(root),
                message: c.message,
            },
            ConvFail::Lua(e) => self.fail(&e),
        }
    }

    /// An unexpected mlua failure: report it and rebuild the state next time.
    fn fail(&self, e: &mlua::Error) -> LuaError {
        self.poisoned.set(true);
        internal(e)
    }
}

/// Maps errors raised by Lua code (or by host functions it called) to
/// [`LuaError::Runtime`]; `None` for mlua-internal failures.
fn runtime_error(e: &mlua::Error) -> Option<LuaError> {
    match e {
        mlua::Error::RuntimeError(msg) => Some(split_traceback(msg)),
        mlua::Error::CallbackError { traceback, cause } => {
            let mut inner: &mlua::Error = cause;
            while let mlua::Error::CallbackError { cause, .. }
            | mlua::Error::WithContext { cause, .. } = inner
            {
                inner = cause;
            }
            let message = match inner {
                mlua::Error::RuntimeError(m) => m.clone(),
                other => other.to_string(),
            };
            Some(LuaError::Runtime {
                message,
                traceback: Some(traceback.clone()),
            })
        }
        mlua::Error::BadArgument { .. } | mlua::Error::FromLuaConversionError { .. } => {
            Some(LuaError::Runtime {
                message: e.to_string(),
                traceback: None,
            })
        }
        mlua::Error::WithContext { cause, .. } => runtime_error(cause),
        _ => None,
    }
}

fn split_traceback(msg: &str) -> LuaError {
    match msg.find("\nstack traceback:") {
        Some(i) => LuaError::Runtime {
            message: msg[..i].to_owned(),
            traceback: Some(msg[i + 1..].to_owned()),
        },
        None => LuaError::Runtime {
            message: msg.to_owned(),
            traceback: None,
        },
    }
}

/// The frames of a traceback that are the user's: without the anonymous C frames of the
/// protected call and of the traceback handler (`[C]: in ?`) and without the sandbox's
/// own wrappers (a limit error re-raised by its `pcall`, say).
fn user_frames(traceback: &str) -> String {
    traceback
        .lines()
        .filter(|line| {
            let frame = line.trim_start();
            frame != "[C]: in ?"
                && !frame
                    .strip_prefix(PRELUDE)
                    .is_some_and(|at| at.starts_with(':'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Put the node id where Lua wrote the shared chunk name (`dagengine-script:3: boom`
/// becomes `transform:3: boom`), in the message and the traceback, and keep only the
/// traceback's user frames.
fn name_node(e: LuaError, node_id: &str) -> LuaError {
    let prefix = format!("{CHUNK}:");
    let rename = |s: String| {
        if s.contains(&prefix) {
            s.replace(&prefix, &format!("{node_id}:"))
        } else {
            s
        }
    };
    match e {
        LuaError::Runtime { message, traceback } => LuaError::Runtime {
            message: rename(message),
            traceback: traceback.map(|tb| rename(user_frames(&tb))),
        },
        other => other,
    }
}

/// Parses Lua's `chunkid:line: message` syntax error format.
fn syntax_error(message: &str, name: &str) -> LuaError {
    let mut id_len = name.len().min(LUA_IDSIZE);
    while !name.is_char_boundary(id_len) {
        id_len -= 1;
    }
    let rest = message.strip_prefix(&name[..id_len]).unwrap_or(message);
    if let Some(after) = rest.strip_prefix(':') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(':') {
            if let Ok(line) = after[..digits].parse::<u32>() {
                let text = after[digits + 1..].trim_start().to_owned();
                return LuaError::Syntax {
                    line: Some(line),
                    message: text,
                };
            }
        }
    }
    LuaError::Syntax {
        line: None,
        message: message.to_owned(),
    }
}

fn json_encode(lua: &Lua, array_mt: &Table, v: &LuaValue) -> mlua::Result<(bool, LuaValue)> {
    match lua_to_json(lua, array_mt, v) {
        Ok(json) => {
            let text = serde_json::to_string(&json).map_err(mlua::Error::external)?;
            Ok((true, LuaValue::String(lua.create_string(text)?)))
        }
        Err(ConvFail::Conv(c)) => {
            let msg = format!(
                "json.encode: cannot convert {}: {}",
                c.path("value"),
                c.message
            );
            Ok((false, LuaValue::String(lua.create_string(msg)?)))
        }
        Err(ConvFail::Lua(e)) => Err(e),
    }
}

fn json_decode(lua: &Lua, array_mt: &Table, v: &LuaValue) -> mlua::Result<(bool, LuaValue)> {
    let err = |msg: String| -> mlua::Result<(bool, LuaValue)> {
        Ok((false, LuaValue::String(lua.create_string(msg)?)))
    };
    let LuaValue::String(s) = v else {
        return err(format!(
            "json.decode: expected a string, got {}",
            lua_type_name(v)
        ));
    };
    let parsed: Value = match serde_json::from_slice(&s.as_bytes()) {
        Ok(p) => p,
        Err(e) => return err(format!("json.decode: {e}")),
    };
    match json_to_lua(lua, array_mt, &parsed) {
        Ok(lv) => Ok((true, lv)),
        Err(ConvFail::Conv(c)) => err(format!("json.decode: {} at {}", c.message, c.path("value"))),
        Err(ConvFail::Lua(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hook on this thread's main state (0: none).
    #[allow(unsafe_code)]
    fn hook_mask() -> std::os::raw::c_int {
        // SAFETY: the engine's main state, alive and on this thread.
        with_engine(|e| Ok(unsafe { ffi::lua_gethookmask(e.run.main.get()) })).unwrap()
    }

    #[test]
    fn the_hook_goes_with_the_run_that_set_it() {
        let info = NodeInfo {
            node_id: "n",
            run_id: "r",
            attempt: 1,
        };
        let run = |src: &str, limits: LuaLimits| {
            crate::execute(
                &LuaScript::new(src),
                &Value::Null,
                &[],
                &info,
                &limits,
                None,
            )
        };
        assert!(run("return {}", LuaLimits::default()).is_ok());
        assert_eq!(hook_mask(), 0);
        // Set late by the watchdog.
        let timed = LuaLimits {
            timeout: Some(std::time::Duration::from_millis(50)),
            ..LuaLimits::default()
        };
        assert!(matches!(
            run("while true do end", timed),
            Err(LuaError::Timeout { .. })
        ));
        assert_eq!(hook_mask(), 0);
        // Set at the start.
        let counted = LuaLimits {
            max_instructions: Some(10_000),
            ..LuaLimits::default()
        };
        assert!(run("return {}", counted).is_ok());
        assert_eq!(hook_mask(), 0);
        assert!(matches!(
            run("while true do end", counted),
            Err(LuaError::InstructionLimit { .. })
        ));
        assert_eq!(hook_mask(), 0);
    }

    #[test]
    fn parses_syntax_error_lines() {
        assert_eq!(
            syntax_error("node:3: unexpected symbol near '='", "node"),
            LuaError::Syntax {
                line: Some(3),
                message: "unexpected symbol near '='".into()
            }
        );
        // Names containing the pattern themselves are stripped first.
        assert_eq!(
            syntax_error("a:1:b:7: '=' expected", "a:1:b"),
            LuaError::Syntax {
                line: Some(7),
                message: "'=' expected".into()
            }
        );
        let long = "x".repeat(80);
        let msg = format!("{}:2: oops", &long[..LUA_IDSIZE]);
        assert_eq!(
            syntax_error(&msg, &long),
            LuaError::Syntax {
                line: Some(2),
                message: "oops".into()
            }
        );
        assert_eq!(
            syntax_error("weird", "node"),
            LuaError::Syntax {
                line: None,
                message: "weird".into()
            }
        );
    }

    #[test]
    fn tracebacks_keep_the_users_frames() {
        let lua = "stack traceback:\n\t[C]: in ?\n\t[C]: in function 'error'\n\t\
                   dagengine-prelude:52: in upvalue 'pass'\n\t\
                   dagengine-prelude:56: in function 'pcall'\n\t\
                   dagengine-script:1: in local 'f'\n\tdagengine-script:2: in main chunk\n\t\
                   [C]: in ?";
        assert_eq!(
            user_frames(lua),
            "stack traceback:\n\t[C]: in function 'error'\n\tdagengine-script:1: in local 'f'\n\t\
             dagengine-script:2: in main chunk"
        );
    }

    #[test]
    fn splits_tracebacks() {
        assert_eq!(
            split_traceback("node:1: x\nstack traceback:\n\t[C]: in ?"),
            LuaError::Runtime {
                message: "node:1: x".into(),
                traceback: Some("stack traceback:\n\t[C]: in ?".into())
            }
        );
    }
}

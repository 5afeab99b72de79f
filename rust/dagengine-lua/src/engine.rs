//! The pooled per-thread Lua state: sandbox construction, compiled-chunk
//! cache and one execution. The state the limit hook reads, and the hook, are in
//! `run_state`; the pattern-matching host functions in `host`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use mlua::{ffi, ChunkMode, Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue};
use serde_json::Value;

use crate::bounded::{shape, Shape};
use crate::convert::{
    invoke, json_to_lua, lua_to_json, lua_type_name, release, Call, CallInputs, ConvFail,
    InvokeFail, Returned, Scope, REUSE_MAX_KEYS,
};
use crate::host::add_pattern_functions;
use crate::run_state::{host_resume, is_memory_error, run_key, CancelGuard, RunState, Trip};
use crate::view::{is_view, json_to_view, view_ipairs, view_next, view_rawget, view_rawlen};
use crate::{Inputs, LuaError, LuaLimits, LuaOutput, LuaScript, NodeInfo};

/// Compiled chunks kept per state before the cache is flushed.
const CACHE_CAP: usize = 1024;

/// Prepended (without a newline, so line numbers are unchanged) to every
/// script: the runner passes the per-run environment as the chunk's first
/// vararg. Re-pointing the chunk's `_ENV` upvalue instead
/// (`Function::set_environment`) costs a chunk load per call on Lua 5.4.
const ENV_PREFIX: &str = "local _ENV = ...; ";

/// Lua's `LUA_IDSIZE` minus the NUL: longest chunk id shown in messages.
const LUA_IDSIZE: usize = 59;

/// Conversions of a run's inputs into Lua tables, on every thread (see
/// [`inputs_conversions`]).
static INPUTS_CONVERSIONS: AtomicU64 = AtomicU64::new(0);

/// How many times the inputs of an execution were converted into Lua tables so far, in
/// this process: once per execution given them as [`Inputs::Once`], once per run and
/// thread given them as [`Inputs::Shared`]. For tests.
pub(crate) fn inputs_conversions() -> u64 {
    INPUTS_CONVERSIONS.load(Ordering::Relaxed)
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    static COMPILED: Cell<u64> = const { Cell::new(0) };
}

/// Number of chunks compiled on the calling thread so far (cache misses).
pub(crate) fn compiled_chunks() -> u64 {
    COMPILED.with(Cell::get)
}

thread_local! {
    /// The log lines of this thread's last execution that failed (see [`take_failed_logs`]).
    static FAILED_LOGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The `log`/`print` lines of the calling thread's last failed execution (then empty).
pub(crate) fn take_failed_logs() -> Vec<String> {
    FAILED_LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

fn keep_failed_logs(logs: Vec<String>) {
    FAILED_LOGS.with(|l| *l.borrow_mut() = logs);
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

/// Sets the run's state for an execution under `limits` (and stopped at `preempt` too, if
/// sooner), and marks it active.
fn start_run(run: &RunState, limits: &LuaLimits, preempt: Option<Instant>) {
    run.instructions.set(0);
    run.max_instructions
        .set(limits.max_instructions.unwrap_or(u64::MAX));
    let now = Instant::now();
    let deadline = limits.timeout.map(|t| now + t);
    run.deadline.set(match (deadline, preempt) {
        (Some(d), Some(p)) => Some(d.min(p)),
        (d, p) => d.or(p),
    });
    run.last_hook.set(now);
    run.soon.set(false);
    run.tripped.set(None);
    run.log_bytes.set(0);
    run.log_limit.set(limits.max_memory.unwrap_or(usize::MAX));
    run.memory_limited.set(limits.max_memory.is_some());
    run.active.set(true);
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
    /// What its code lets the engine skip (see `bounded`).
    shape: Shape,
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
    /// `__newindex` of the inputs' views (see `view`): raises `inputs is read-only`.
    view_newindex: Function,
    /// The view of the last shared inputs (see [`Inputs::Shared`]) converted here, with
    /// their allocation: a weak reference keeps the address from being reused, so an
    /// `Arc` at that address is the same value.
    inputs_view: Option<(Weak<Value>, LuaValue)>,
    /// The environment of chunks that keep their environment and read only the inputs of
    /// `inputs_view` (see `run`): `inputs` and nothing else, never emptied; replaced with
    /// the view.
    inputs_env: Option<Table>,
    busy: bool,
    /// Set on unexpected mlua failures; `with_engine` then drops the state.
    poisoned: Cell<bool>,
}

/// What a script is given besides its identity: the run's inputs, its parents' results
/// and, for an item of a mapped node, the item's index and value.
pub(crate) struct Given<'a> {
    pub(crate) inputs: Inputs<'a>,
    pub(crate) results: &'a [(&'a str, &'a Value)],
    pub(crate) item: Option<(u32, &'a Value)>,
}

impl<'a> Given<'a> {
    fn of(inputs: Inputs<'a>, results: &'a [(&'a str, &'a Value)]) -> Self {
        Self {
            inputs,
            results,
            item: None,
        }
    }
}

/// What a value that is not a table is, for messages (`nil`, `a number (3)`, `a string
/// ("yes")`, `a function`).
fn describe(value: &LuaValue) -> String {
    match value {
        LuaValue::Nil => "nil".to_owned(),
        LuaValue::Integer(n) => format!("a number ({n})"),
        LuaValue::Number(n) => format!("a number ({n})"),
        LuaValue::String(text) => format!("a string ({:?})", text.to_string_lossy()),
        other => format!("a {}", lua_type_name(other)),
    }
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
        #[allow(unsafe_code)]
        // SAFETY: see `view`.
        unsafe {
            host.raw_set("view_next", lua.create_c_function(view_next)?)?;
            host.raw_set("view_ipairs", lua.create_c_function(view_ipairs)?)?;
            host.raw_set("view_rawget", lua.create_c_function(view_rawget)?)?;
            host.raw_set("view_rawlen", lua.create_c_function(view_rawlen)?)?;
            host.raw_set("is_view", lua.create_c_function(is_view)?)?;
            host.raw_set("resume", lua.create_c_function(host_resume)?)?;
        }
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
            .call((lua.globals(), &host))?;
        let view_newindex: Function = host.raw_get("view_newindex")?;

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
            view_newindex,
            inputs_view: None,
            inputs_env: None,
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
        self.compiled(script).map(|(func, _)| func)
    }

    /// [`Engine::function`], and what its code lets the engine skip (see `bounded`).
    fn compiled(&mut self, script: &LuaScript) -> Result<(Function, Shape), LuaError> {
        if let Some(entries) = self.cache.get_mut(&script.hash) {
            for e in entries {
                if Arc::ptr_eq(&e.source, &script.source) {
                    return Ok((e.func.clone(), e.shape));
                }
                if *e.source == *script.source {
                    // Another script of the same source (another DAG's): its next call
                    // compares pointers, not texts.
                    e.source = Arc::clone(&script.source);
                    return Ok((e.func.clone(), e.shape));
                }
            }
        }
        let func = self.compile(&script.source, CHUNK)?;
        let shape = shape(&func);
        if self.cache_len >= CACHE_CAP {
            // Scripts are few in practice; a full flush is simpler than LRU
            // and bounds the memory held by stale chunks.
            self.cache.clear();
            self.cache_len = 0;
        }
        self.cache.entry(script.hash).or_default().push(CacheEntry {
            source: Arc::clone(&script.source),
            func: func.clone(),
            shape,
        });
        self.cache_len += 1;
        Ok((func, shape))
    }

    /// Runs `script` for a node; past `preempt` it stops as at its wall-time limit, noticed
    /// late (see [`crate::execute_item_preemptible`]).
    pub(crate) fn execute(
        &mut self,
        script: &LuaScript,
        given: &Given<'_>,
        info: &NodeInfo<'_>,
        limits: &LuaLimits,
        cancel: Option<&AtomicBool>,
        preempt: Option<Instant>,
    ) -> Result<LuaOutput, LuaError> {
        let (output, logs) =
            self.run(script, given, info, (limits, preempt), cancel, Self::output)?;
        Ok(LuaOutput { output, logs })
    }

    /// Like [`Engine::execute`], for a map expression: a table's JSON, or the description
    /// of what the script returned instead; its log lines are dropped.
    pub(crate) fn evaluate_json(
        &mut self,
        script: &LuaScript,
        inputs: Inputs<'_>,
        results: &[(&str, &Value)],
        info: &NodeInfo<'_>,
        limits: &LuaLimits,
        cancel: Option<&AtomicBool>,
    ) -> Result<Result<Value, String>, LuaError> {
        let read = |e: &Self, returned: Returned| match returned {
            Returned::Json(json) => json.map(Ok).map_err(|f| e.conv_failure(f, "result")),
            Returned::Lua(other) => Ok(Err(describe(&other))),
        };
        Ok(self
            .run(
                script,
                &Given::of(inputs, results),
                info,
                (limits, None),
                cancel,
                read,
            )?
            .0)
    }

    /// Like [`Engine::execute`], for a condition: the script's value is a boolean, or the
    /// description of what it was instead (`a number (3)`); its log lines are dropped.
    pub(crate) fn evaluate_bool(
        &mut self,
        script: &LuaScript,
        inputs: Inputs<'_>,
        results: &[(&str, &Value)],
        info: &NodeInfo<'_>,
        limits: &LuaLimits,
        cancel: Option<&AtomicBool>,
    ) -> Result<Result<bool, String>, LuaError> {
        let read = |_: &Self, returned: Returned| {
            Ok(match returned {
                Returned::Lua(LuaValue::Boolean(b)) => Ok(b),
                Returned::Lua(other) => Err(describe(&other)),
                Returned::Json(_) => Err("a table".to_owned()),
            })
        };
        Ok(self
            .run(
                script,
                &Given::of(inputs, results),
                info,
                (limits, None),
                cancel,
                read,
            )?
            .0)
    }

    /// Run `script` once under `limits` (and until `preempt`, if any) with its `inputs`,
    /// `results` and mapped item; `finish` turns what it returned into the result.
    fn run<T>(
        &mut self,
        script: &LuaScript,
        given: &Given<'_>,
        info: &NodeInfo<'_>,
        (limits, preempt): (&LuaLimits, Option<Instant>),
        cancel: Option<&AtomicBool>,
        finish: impl FnOnce(&Self, Returned) -> Result<T, LuaError>,
    ) -> Result<(T, Vec<String>), LuaError> {
        let (func, shape) = self.compiled(script)?;
        let fixed = shape.keeps_env && self.fixed_scope(script, given.inputs)?;
        // Shared inputs are converted (once) before the run's state is set: a conversion
        // fault fails the execution as it would inside `invoke`.
        let inputs = match given.inputs {
            Inputs::Shared(inputs) if script.names.inputs => {
                self.keep_view(inputs)?;
                let (_, view) = self.inputs_view.as_ref().expect("the view was just kept");
                CallInputs::View(view)
            }
            other => {
                INPUTS_CONVERSIONS.fetch_add(u64::from(script.names.inputs), Ordering::Relaxed);
                CallInputs::Json(other.value())
            }
        };

        let run = &self.run;
        start_run(run, limits, preempt);

        let call = Call {
            names: script.names,
            inputs,
            results: given.results,
            node_id: info.node_id,
            run_id: info.run_id,
            attempt: info.attempt,
            item: given.item,
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
        let env = self.inputs_env.as_ref().filter(|_| fixed);
        let (env, ctx) = (env.unwrap_or(&self.env), &self.ctx);
        let scope = Scope { env, ctx, fixed };
        let mut outgrown = false;
        let guard = CancelGuard::new(run, cancel);
        let watched = run.start_hook(limits, cancel, shape.bounded);
        let outcome = invoke(
            lua,
            &self.array_mt,
            &self.view_newindex,
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
        if outcome.is_err() && !fixed {
            // Before any collection after a limit error: what the run left in its scope
            // must be garbage by then.
            let keys = release(&self.lua, &scope).map_err(|e| self.fail(&e))?;
            outgrown |= keys > REUSE_MAX_KEYS;
        }
        if outgrown {
            self.renew_scope().map_err(|e| self.fail(&e))?;
        }
        let result = match outcome {
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
                None => finish(self, value),
            },
        };
        match result {
            Ok(value) => Ok((value, logs)),
            Err(e) => {
                keep_failed_logs(logs);
                Err(e)
            }
        }
    }

    /// Keeps the view of the run's shared `inputs` on this state in `inputs_view`: the one
    /// converted for an earlier execution of the run, or a new one (which replaces it).
    fn keep_view(&mut self, inputs: &Arc<Value>) -> Result<(), LuaError> {
        let seen = self
            .inputs_view
            .as_ref()
            .is_some_and(|(seen, _)| std::ptr::eq(seen.as_ptr(), Arc::as_ptr(inputs)));
        if !seen {
            // The previous run's view is garbage from here on.
            self.inputs_view = None;
            self.inputs_env = None;
            INPUTS_CONVERSIONS.fetch_add(1, Ordering::Relaxed);
            let view = json_to_view(&self.lua, &self.array_mt, &self.view_newindex, inputs)
                .map_err(|e| self.conv_failure(e, "inputs"))?;
            self.inputs_view = Some((Arc::downgrade(inputs), view));
        }
        Ok(())
    }

    /// Whether `script`, a chunk that cannot change its environment (see `bounded`), runs in
    /// the environment kept for the run's shared inputs (which it makes ready): one that
    /// reads no other global the host sets finds all it can read there, as it is.
    fn fixed_scope(&mut self, script: &LuaScript, inputs: Inputs<'_>) -> Result<bool, LuaError> {
        let names = script.names;
        match inputs {
            Inputs::Shared(inputs)
                if names.inputs && !names.results && !names.ctx && !names.item =>
            {
                self.keep_view(inputs)?;
                self.keep_inputs_env().map_err(|e| self.fail(&e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Keeps in `inputs_env` an environment holding only the inputs' view kept (by
    /// [`Engine::keep_view`]) for the run, for the chunks that read only them and keep their
    /// environment.
    fn keep_inputs_env(&mut self) -> mlua::Result<()> {
        if self.inputs_env.is_none() {
            let (_, view) = self.inputs_view.as_ref().expect("the view was just kept");
            let env = self.lua.create_table()?;
            env.set_metatable(Some(self.env_mt.clone()))?;
            env.raw_set("inputs", view)?;
            self.inputs_env = Some(env);
        }
        Ok(())
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
mod tests;

//! Hand-written JSON <-> Lua conversion (see the crate docs for the mapping itself).
//!
//! This is the per-node hot path (every input, every parent result, every output), so it
//! is written against Lua's C API, inside one protected call per conversion
//! ([`Lua::exec_raw`]): mlua's safe API keeps every value it hands out in a reference
//! slot, which cost more than the conversion itself.
//!
//! # Safety
//!
//! The `unsafe` here is confined to this module. Every function taking a `lua_State`
//! runs inside `exec_raw`'s protected call on the state mlua owns, so a Lua error unwinds
//! to that call. The conversions themselves raise memory errors only (nothing here calls
//! metamethods); [`invoke`] also calls the script, whose errors of any kind take the same
//! way out. The frames an error unwinds through own nothing with a destructor while a Lua
//! function that can fail runs: they hold borrows and iterators only; owned values (`Vec`,
//! `String`, `serde_json::Value`) are built by the reading direction, whose Lua calls
//! (`lua_next`, `lua_to*`, `lua_getmetatable`) do not allocate and cannot fail on the
//! values they are given. Stack space is reserved with `lua_checkstack` before every
//! container; `exec_raw` restores the stack height afterwards, also on errors.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::fmt::Write as _;
use std::ptr;

use mlua::{ffi, Function, Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value};

use crate::view::{push_backing, push_view};
use crate::Names;

/// Deepest nesting accepted in either direction. Bounds Rust recursion and
/// doubles as a backstop against cycles.
pub(crate) const MAX_DEPTH: usize = 128;

/// One step of the path to a value that failed to convert.
pub(crate) enum Segment {
    Key(String),
    Index(i64),
}

/// A value that cannot be represented on the other side. The path is
/// collected while unwinding so successful conversions pay nothing for it.
pub(crate) struct ConvError {
    /// Innermost segment first.
    segments: Vec<Segment>,
    pub(crate) message: String,
    /// The Lua stack could not grow (out of memory): not a fault of the value, and raised
    /// as the memory error it is.
    no_stack: bool,
}

impl ConvError {
    fn new(message: impl Into<String>) -> Self {
        ConvError {
            segments: Vec::new(),
            message: message.into(),
            no_stack: false,
        }
    }

    pub(crate) fn no_stack() -> Self {
        ConvError {
            no_stack: true,
            ..ConvError::new("not enough memory for the Lua stack")
        }
    }

    /// As the failure of a conversion: a memory error if the stack could not grow.
    pub(crate) fn into_fail(self) -> ConvFail {
        if self.no_stack {
            ConvFail::Lua(mlua::Error::MemoryError(self.message))
        } else {
            ConvFail::Conv(self)
        }
    }

    pub(crate) fn at(mut self, seg: Segment) -> Self {
        self.segments.push(seg);
        self
    }

    /// Renders the path below `root`, e.g. `result.items[2].callback`.
    pub(crate) fn path(&self, root: &str) -> String {
        let mut out = String::from(root);
        for seg in self.segments.iter().rev() {
            match seg {
                Segment::Key(k) if is_identifier(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Key(k) => {
                    let _ = write!(out, "[{k:?}]");
                }
                Segment::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Conversion failure: either the value is not representable, or Lua itself
/// failed (typically the memory limit), which must propagate unchanged.
pub(crate) enum ConvFail {
    Conv(ConvError),
    Lua(mlua::Error),
}

impl From<mlua::Error> for ConvFail {
    fn from(e: mlua::Error) -> Self {
        ConvFail::Lua(e)
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, ConvError> {
    Err(ConvError::new(message))
}

// ---------------------------------------------------------------- JSON -> Lua

/// Converts a JSON value into a Lua value. Arrays get `array_mt` so that they
/// (including empty ones) convert back to arrays.
pub(crate) fn json_to_lua(lua: &Lua, array_mt: &Table, v: &Value) -> Result<LuaValue, ConvFail> {
    let mut failed = None;
    // SAFETY: see the module docs; the marker table is argument 1 of the protected call.
    let value = unsafe {
        lua.exec_raw::<LuaValue>(array_mt, |l| {
            if let Err(e) = push_json(l, 1, v, 0) {
                failed = Some(e);
                ffi::lua_settop(l, 0);
                return;
            }
            ffi::lua_remove(l, 1);
        })
    }?;
    match failed {
        Some(e) => Err(e.into_fail()),
        None => Ok(value),
    }
}

/// What one execution passes to the runner besides the script.
pub(crate) struct Call<'a> {
    /// The globals the script can read; the others are not set.
    pub(crate) names: Names,
    pub(crate) inputs: CallInputs<'a>,
    pub(crate) results: &'a [(&'a str, &'a Value)],
    pub(crate) node_id: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) attempt: u32,
    /// A mapped node's item: its index and value.
    pub(crate) item: Option<(u32, &'a Value)>,
}

/// The run's inputs as one execution sets them.
#[derive(Clone, Copy)]
pub(crate) enum CallInputs<'a> {
    /// Already a view (see `view`), kept by the engine for the run's executions.
    View(&'a LuaValue),
    /// To be converted into a view for this execution alone.
    Json(&'a Value),
}

/// What the runner returned: a table, already converted (or the fault that kept it from
/// converting), or any other value as it is.
pub(crate) enum Returned {
    Json(Result<Value, ConvFail>),
    Lua(LuaValue),
}

/// How an [`invoke`] failed.
pub(crate) enum InvokeFail {
    /// Converting the arguments failed (nothing ran); with the root the path starts from.
    Args(ConvFail, String),
    /// `arm` refused: nothing ran.
    NotArmed,
    /// The call failed: an error raised by the script, a host function or a limit.
    Call(mlua::Error),
}

/// The two tables a script's globals live in, kept for the life of the state: a node's
/// environment (`_ENV`, whose metatable reaches the shared read-only globals) and its
/// `ctx`. Reusing them saves two tables (four allocations, and their collection) per run.
pub(crate) struct Scope<'a> {
    pub(crate) env: &'a Table,
    pub(crate) ctx: &'a Table,
    /// `env` is the run's environment of chunks that keep it (see `Engine::run`): it
    /// already holds the inputs, and is neither set up nor emptied.
    pub(crate) fixed: bool,
}

/// Keys a reused table may have held before it is replaced by a fresh one: emptying a
/// table keeps its size, and every later run would walk the empty slots.
pub(crate) const REUSE_MAX_KEYS: usize = 32;

/// One execution in one protected call. The scope's tables are emptied first: nothing a
/// previous run assigned survives (no value of one run is reachable from the next but
/// these two tables, the environment's metatable cannot be changed by scripts, and
/// `ctx`'s is cleared). Then the arguments are converted and set (`inputs`, `results`,
/// `ctx` with the node and run ids, which through mlua would take a protected call each),
/// `arm` runs (the memory limit is armed after the host's values are in) and, if it
/// agrees, the script is called with the environment as its argument; if it returns,
/// `disarm` runs and a table it returned is converted to JSON. The call is unprotected
/// inside `exec_raw`'s protected call, so its errors reach mlua's own message handler
/// and error conversion exactly as `Function::call`'s would. After a run that returned,
/// `outgrown` says whether a scope table held more than [`REUSE_MAX_KEYS`] keys (after
/// any other, [`release`] says it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn invoke(
    lua: &Lua,
    array_mt: &Table,
    newindex: &Function,
    func: &Function,
    scope: &Scope<'_>,
    call: &Call<'_>,
    arm: impl FnOnce() -> bool,
    disarm: impl FnOnce(),
    outgrown: &mut bool,
) -> Result<Returned, InvokeFail> {
    let mut failed = None;
    let mut armed = true;
    let mut called = false;
    let mut converted = None;
    let marker = array_mt.to_pointer();
    // `__newindex` is needed only to convert the inputs here.
    let (view, json, newindex) = match call.inputs {
        CallInputs::View(v) => (Some(v).filter(|_| !scope.fixed), None, None),
        CallInputs::Json(v) => (None, Some(v), Some(newindex)),
    };
    // What the call does not use is passed as nil (a reference costs a push from mlua's
    // reference thread): the marker where nothing is converted, `ctx` where the script
    // cannot read it, the view where the scope is fixed (it holds it already).
    let names = call.names;
    let converts = names.results || names.item || (names.inputs && json.is_some());
    let (marker_table, ctx_table) = (converts.then_some(array_mt), names.ctx.then_some(scope.ctx));
    // SAFETY: see the module docs. Arguments 1..=6 of the protected call are the marker
    // table (or nil), the script, the environment, `ctx` (or nil), the views' `__newindex`
    // (or nil) and the inputs' view (or nil: the inputs are converted here, with that
    // `__newindex`, or are in the fixed scope already). When `lua_callk` runs, this frame
    // owns nothing with a destructor (`failed` is `None`, `arm` has been consumed), so an
    // error raised by the script may unwind through it.
    let value = unsafe {
        lua.exec_raw::<LuaValue>(
            (marker_table, func, scope.env, ctx_table, newindex, view),
            |l| {
                let ctx = names.ctx.then_some(4);
                let mut keys = clear_scope(l, scope, ctx);
                if names.inputs && !scope.fixed {
                    if let Err(e) = push_inputs(l, json) {
                        failed = Some((e, "inputs".to_owned()));
                        ffi::lua_settop(l, 0);
                        return;
                    }
                    ffi::lua_setfield(l, 3, c"inputs".as_ptr());
                }
                if names.results {
                    let n = call.results.len().min(c_int::MAX as usize) as c_int;
                    ffi::lua_createtable(l, 0, n);
                    for (id, v) in call.results {
                        push_str(l, id);
                        if let Err(e) = push_json(l, 1, v, 0) {
                            failed = Some((e, format!("results[{id:?}]")));
                            ffi::lua_settop(l, 0);
                            return;
                        }
                        ffi::lua_rawset(l, -3);
                    }
                    ffi::lua_setfield(l, 3, c"results".as_ptr());
                }
                if let (true, Some((index, item))) = (names.item, call.item) {
                    if let Err(e) = push_json(l, 1, item, 0) {
                        failed = Some((e, "item".to_owned()));
                        ffi::lua_settop(l, 0);
                        return;
                    }
                    if names.ctx {
                        ffi::lua_pushvalue(l, -1);
                        ffi::lua_setfield(l, 4, c"item".as_ptr());
                        ffi::lua_pushinteger(l, i64::from(index));
                        ffi::lua_setfield(l, 4, c"index".as_ptr());
                    }
                    ffi::lua_setfield(l, 3, c"item".as_ptr());
                    ffi::lua_pushinteger(l, i64::from(index));
                    ffi::lua_setfield(l, 3, c"index".as_ptr());
                }
                if names.ctx {
                    push_str(l, call.node_id);
                    ffi::lua_setfield(l, 4, c"node_id".as_ptr());
                    push_str(l, call.run_id);
                    ffi::lua_setfield(l, 4, c"run_id".as_ptr());
                    ffi::lua_pushinteger(l, i64::from(call.attempt));
                    ffi::lua_setfield(l, 4, c"attempt".as_ptr());
                    ffi::lua_pushvalue(l, 4);
                    ffi::lua_setfield(l, 3, c"ctx".as_ptr());
                }
                if !arm() {
                    armed = false;
                    ffi::lua_settop(l, 0);
                    return;
                }
                called = true;
                ffi::lua_pushvalue(l, 2);
                ffi::lua_pushvalue(l, 3);
                ffi::lua_callk(l, 1, 1, 0, None);
                // The script is done: its memory limit must not apply to reading its result
                // (naming a fault pushes string keys again; the stack may have to grow). Past
                // this point nothing raises a Lua error short of the process running out of
                // memory, where Rust's own allocations abort it anyway.
                disarm();
                // The scope is emptied again once the result is read (the result may be one of
                // its tables), so nothing of this run stays alive until the next one. (A run
                // that does not get here is emptied by `release`.)
                if ffi::lua_type(l, -1) == ffi::LUA_TTABLE {
                    converted = Some(ToJson::new(marker).value(l, ffi::lua_gettop(l)));
                }
                keys = keys.max(clear_scope(l, scope, ctx));
                if converted.is_some() {
                    ffi::lua_settop(l, 0);
                } else {
                    ffi::lua_replace(l, 1);
                    ffi::lua_settop(l, 1);
                }
                *outgrown = keys > REUSE_MAX_KEYS;
            },
        )
    };
    match (value, failed) {
        (Err(e), _) if called => Err(InvokeFail::Call(e)),
        (Err(e), _) => Err(InvokeFail::Args(ConvFail::Lua(e), "inputs".to_owned())),
        (Ok(_), Some((e, root))) => Err(InvokeFail::Args(e.into_fail(), root)),
        (Ok(_), None) if !armed => Err(InvokeFail::NotArmed),
        (Ok(value), None) => Ok(match converted {
            Some(json) => Returned::Json(json.map_err(ConvError::into_fail)),
            None => Returned::Lua(value),
        }),
    }
}

/// Pushes the inputs in [`invoke`]'s protected call: their view given as argument 6, or
/// `json` converted into one.
unsafe fn push_inputs(l: *mut ffi::lua_State, json: Option<&Value>) -> Result<(), ConvError> {
    match json {
        None => {
            ffi::lua_pushvalue(l, 6);
            Ok(())
        }
        Some(inputs) => push_view(l, 1, 5, inputs, 0),
    }
}

/// Empties the scope's tables (and removes `ctx`'s metatable) after a run that did not
/// return normally, so that what it left there does not stay alive until the next run;
/// returns how many keys the fuller table held.
pub(crate) fn release(lua: &Lua, scope: &Scope<'_>) -> mlua::Result<usize> {
    let mut keys = 0;
    // SAFETY: see the module docs; the tables are arguments 1 and 2 of the protected call,
    // and nothing here allocates or raises.
    unsafe {
        lua.exec_raw::<()>((scope.env, scope.ctx), |l| {
            keys = empty_scope(l, 1, Some(2));
            ffi::lua_settop(l, 0);
        })
    }?;
    Ok(keys)
}

/// [`empty_scope`] of [`invoke`]'s scope (the environment at index 3, `ctx` at `ctx`),
/// unless it is fixed: that one is neither set up nor emptied (see [`Scope::fixed`]).
unsafe fn clear_scope(l: *mut ffi::lua_State, scope: &Scope<'_>, ctx: Option<c_int>) -> usize {
    if scope.fixed {
        0
    } else {
        empty_scope(l, 3, ctx)
    }
}

/// Empties the environment at absolute index `env` and, if given, the `ctx` table at `ctx`
/// (removing its metatable too); returns how many keys the fuller of them held.
unsafe fn empty_scope(l: *mut ffi::lua_State, env: c_int, ctx: Option<c_int>) -> usize {
    let keys = clear(l, env);
    match ctx {
        Some(ctx) => {
            ffi::lua_pushnil(l);
            ffi::lua_setmetatable(l, ctx);
            keys.max(clear(l, ctx))
        }
        None => keys,
    }
}

/// Removes every key of the table at absolute index `idx` (clearing fields during a
/// traversal is allowed, and setting an existing key to nil allocates nothing); returns
/// how many there were.
unsafe fn clear(l: *mut ffi::lua_State, idx: c_int) -> usize {
    let mut n = 0;
    ffi::lua_pushnil(l);
    while ffi::lua_next(l, idx) != 0 {
        ffi::lua_pop(l, 1);
        ffi::lua_pushvalue(l, -1);
        ffi::lua_pushnil(l);
        ffi::lua_rawset(l, idx);
        n += 1;
    }
    n
}

pub(crate) unsafe fn push_str(l: *mut ffi::lua_State, s: &str) {
    ffi::lua_pushlstring(l, s.as_ptr().cast(), s.len());
}

/// Pushes `v`; containers are built with their final sizes and filled with raw sets.
/// On a conversion error the stack is left as it is (the caller resets it).
pub(crate) unsafe fn push_json(
    l: *mut ffi::lua_State,
    array_mt: c_int,
    v: &Value,
    depth: usize,
) -> Result<(), ConvError> {
    match v {
        Value::Null => ffi::lua_pushlightuserdata(l, ptr::null_mut()),
        Value::Bool(b) => ffi::lua_pushboolean(l, c_int::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ffi::lua_pushinteger(l, i),
            // u64 above i64::MAX (and floats) become Lua floats.
            None => ffi::lua_pushnumber(l, n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => push_str(l, s),
        Value::Array(items) => {
            enter(l, depth)?;
            ffi::lua_createtable(l, items.len().min(c_int::MAX as usize) as c_int, 0);
            for (i, item) in items.iter().enumerate() {
                let i = i as i64 + 1;
                push_json(l, array_mt, item, depth + 1).map_err(|e| e.at(Segment::Index(i)))?;
                ffi::lua_rawseti(l, -2, i);
            }
            ffi::lua_pushvalue(l, array_mt);
            ffi::lua_setmetatable(l, -2);
        }
        Value::Object(map) => {
            enter(l, depth)?;
            ffi::lua_createtable(l, 0, map.len().min(c_int::MAX as usize) as c_int);
            for (k, item) in map {
                push_str(l, k);
                push_json(l, array_mt, item, depth + 1)
                    .map_err(|e| e.at(Segment::Key(k.clone())))?;
                ffi::lua_rawset(l, -3);
            }
        }
    }
    Ok(())
}

/// Checks the nesting depth and reserves the stack slots a container needs (itself, a
/// key, a value).
pub(crate) unsafe fn enter(l: *mut ffi::lua_State, depth: usize) -> Result<(), ConvError> {
    if depth >= MAX_DEPTH {
        return fail(format!("nesting is deeper than {MAX_DEPTH} levels"));
    }
    if ffi::lua_checkstack(l, 4) == 0 {
        return Err(ConvError::no_stack());
    }
    Ok(())
}

// ---------------------------------------------------------------- Lua -> JSON

/// Lua's name for the type of `v`, as a script author would know it.
pub(crate) fn lua_type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        LuaValue::LightUserData(p) if p.0.is_null() => "json.null",
        _ => "userdata",
    }
}

/// Converts `v` to JSON. Tables give `Value::Array` or `Value::Object`.
pub(crate) fn lua_to_json(
    lua: &Lua,
    array_mt: &Table,
    v: impl mlua::IntoLuaMulti,
) -> Result<Value, ConvFail> {
    let mut out = None;
    let marker = array_mt.to_pointer();
    // SAFETY: see the module docs; `v` is argument 1 of the protected call.
    unsafe {
        lua.exec_raw::<()>(v, |l| {
            out = Some(ToJson::new(marker).value(l, 1));
        })
    }?;
    match out {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.into_fail()),
        None => unreachable!("exec_raw ran the conversion"),
    }
}

/// A table key as read from Lua that JSON can use.
#[derive(Clone)]
enum Key {
    Int(i64),
    Str(String),
}

impl Key {
    fn segment(&self) -> Segment {
        match self {
            Key::Int(i) => Segment::Index(*i),
            Key::Str(s) => Segment::Key(s.clone()),
        }
    }
}

/// Lua -> JSON converter; holds the traversal stack used for cycle detection.
struct ToJson {
    array_mt: *const c_void,
    stack: Vec<*const c_void>,
    /// A fault was found: tables are walked in a fixed order to name the same fault
    /// every time (see [`ToJson::first_error`]).
    careful: bool,
}

thread_local! {
    /// The traversal stack of the last conversion on this thread, kept for its capacity:
    /// most outputs are one small table, and allocating the stack was a fifth of the
    /// conversion.
    static SPARE_STACK: Cell<Vec<*const c_void>> = const { Cell::new(Vec::new()) };
}

/// What walking an unmarked table gave: a map when every key was a string (the common
/// object), else every entry as read.
enum Walk {
    Object(Map<String, Value>),
    Mixed(Vec<(Key, Value)>),
}

impl Drop for ToJson {
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        SPARE_STACK.set(stack);
    }
}

impl ToJson {
    fn new(array_mt: *const c_void) -> Self {
        ToJson {
            array_mt,
            stack: SPARE_STACK.take(),
            careful: false,
        }
    }

    unsafe fn value(&mut self, l: *mut ffi::lua_State, idx: c_int) -> Result<Value, ConvError> {
        Ok(match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL => Value::Null,
            ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(l, idx).is_null() => Value::Null,
            ffi::LUA_TBOOLEAN => Value::Bool(ffi::lua_toboolean(l, idx) != 0),
            ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => {
                Value::Number(ffi::lua_tointegerx(l, idx, ptr::null_mut()).into())
            }
            ffi::LUA_TNUMBER => {
                let f = ffi::lua_tonumberx(l, idx, ptr::null_mut());
                match Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => return fail(format!("{f} cannot be represented in JSON")),
                }
            }
            ffi::LUA_TSTRING => match std::str::from_utf8(string_bytes(l, idx)) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => return fail("string is not valid UTF-8"),
            },
            ffi::LUA_TTABLE => self.table(l, ffi::lua_absindex(l, idx))?,
            t => return fail(format!("a {} cannot be converted to JSON", type_name(t))),
        })
    }

    /// The table at absolute index `idx`; `Value::Array` or `Value::Object`.
    /// A view of the inputs (see `view`) converts as the table it shows: its backing
    /// table takes its place at `idx`.
    unsafe fn table(&mut self, l: *mut ffi::lua_State, idx: c_int) -> Result<Value, ConvError> {
        if ffi::lua_checkstack(l, 4) == 0 {
            return Err(ConvError::no_stack());
        }
        let marked = ffi::lua_getmetatable(l, idx) != 0 && {
            let m = ffi::lua_topointer(l, -1) == self.array_mt;
            ffi::lua_pop(l, 1);
            if !m && push_backing(l, idx) {
                ffi::lua_replace(l, idx);
                return self.table(l, idx);
            }
            m
        };
        let ptr = ffi::lua_topointer(l, idx);
        if self.stack.contains(&ptr) {
            return fail("table contains a reference cycle");
        }
        if self.stack.len() >= MAX_DEPTH {
            return fail(format!("nesting is deeper than {MAX_DEPTH} levels"));
        }
        let top = ffi::lua_gettop(l);
        self.stack.push(ptr);
        let result = if self.careful {
            // Looking for the fault only: what converts is not kept.
            self.first_error(l, idx, marked)
                .map_or(Ok(Value::Null), Err)
        } else {
            let walked = if marked {
                self.entries(l, idx, true).map(Walk::Mixed)
            } else {
                self.walk(l, idx)
            };
            match walked {
                Ok(Walk::Object(map)) => Ok(sorted(map)),
                Ok(Walk::Mixed(entries)) if marked => marked_array(entries),
                Ok(Walk::Mixed(entries)) if is_sequence(&entries) => Ok(sequence(entries)),
                Ok(Walk::Mixed(entries)) => object(entries),
                Err(e) if e.no_stack => Err(e),
                Err(e) => {
                    // From here on (this conversion fails anyway) every table is walked
                    // in order, each once per level above it.
                    self.careful = true;
                    Err(self.first_error(l, idx, marked).unwrap_or(e))
                }
            }
        };
        self.stack.pop();
        ffi::lua_settop(l, top);
        result
    }

    /// The fault of a table that failed to convert, looked for again in a fixed order.
    /// The fast path meets keys and values in Lua's traversal order, which depends on the
    /// state's string hash seed: with several faults it could name a different one from
    /// one run to the next. Here keys come first, then the checks of the table's shape,
    /// then the values in the order of the output. Only ever runs on a failure.
    unsafe fn first_error(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        marked: bool,
    ) -> Option<ConvError> {
        let mut keys = Vec::new();
        let mut bad: Option<ConvError> = None;
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, idx) != 0 {
            ffi::lua_pop(l, 1);
            match read_key(l, -1, marked) {
                Ok(k) => keys.push((k, ())),
                Err(e) => {
                    if bad.as_ref().is_none_or(|b| e.message < b.message) {
                        bad = Some(e);
                    }
                }
            }
        }
        if bad.is_some() {
            return bad;
        }
        // The shape checks, and the output's order.
        let order: Vec<Key> = if marked || is_sequence(&keys) {
            if marked {
                if let Err(e) = check_sparse(max_index(&keys), keys.len()) {
                    return Some(e);
                }
            }
            let mut ints: Vec<Key> = keys.into_iter().map(|(k, ())| k).collect();
            ints.sort_by_key(int_key);
            ints
        } else {
            // The same names and order as `object` gives the output; an integer key is
            // still fetched as the integer it is.
            let keyed = keys.into_iter().map(|(k, ())| (k.clone(), k)).collect();
            match named(keyed) {
                Ok(keyed) => keyed.into_iter().map(|(_, k)| k).collect(),
                Err(e) => return Some(e),
            }
        };
        for k in order {
            match &k {
                Key::Int(i) => ffi::lua_rawgeti(l, idx, *i),
                Key::Str(s) => {
                    push_str(l, s);
                    ffi::lua_rawget(l, idx)
                }
            };
            let r = self.value(l, -1);
            ffi::lua_pop(l, 1);
            if let Err(e) = r {
                return Some(e.at(k.segment()));
            }
        }
        None
    }

    /// Every key/value pair, values converted. Keys no JSON shape can take fail here.
    unsafe fn entries(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        marked: bool,
    ) -> Result<Vec<(Key, Value)>, ConvError> {
        ffi::lua_pushnil(l);
        self.entries_after(l, idx, marked, Vec::new())
    }

    /// The rest of a traversal whose current key is on top of the stack, added to `out`.
    unsafe fn entries_after(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        marked: bool,
        mut out: Vec<(Key, Value)>,
    ) -> Result<Vec<(Key, Value)>, ConvError> {
        while ffi::lua_next(l, idx) != 0 {
            out.push(self.pair(l, marked)?);
        }
        Ok(out)
    }

    /// The pair `lua_next` pushed (key at -2, value at -1), converted; pops the value.
    unsafe fn pair(
        &mut self,
        l: *mut ffi::lua_State,
        marked: bool,
    ) -> Result<(Key, Value), ConvError> {
        let key = read_key(l, -2, marked)?;
        let value = self.value(l, -1).map_err(|e| e.at(key.segment()))?;
        ffi::lua_pop(l, 1);
        Ok((key, value))
    }

    /// An unmarked table: string keys go straight into a map (no list of entries to
    /// rename, sort and copy); at the first other key the walk goes on as [`entries`]
    /// with what was read so far.
    ///
    /// [`entries`]: ToJson::entries
    unsafe fn walk(&mut self, l: *mut ffi::lua_State, idx: c_int) -> Result<Walk, ConvError> {
        let mut map = Map::new();
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, idx) != 0 {
            if ffi::lua_type(l, -2) != ffi::LUA_TSTRING {
                let mut out: Vec<(Key, Value)> =
                    map.into_iter().map(|(k, v)| (Key::Str(k), v)).collect();
                out.push(self.pair(l, false)?);
                return self.entries_after(l, idx, false, out).map(Walk::Mixed);
            }
            let (key, value) = self.pair(l, false)?;
            let Key::Str(name) = key else {
                unreachable!("the key is a string")
            };
            // Lua's keys are unique: nothing is replaced.
            map.insert(name, value);
        }
        Ok(Walk::Object(map))
    }
}

/// An object with its keys in order (see [`named`]).
fn sorted(mut map: Map<String, Value>) -> Value {
    let mut keys = map.keys();
    let mut prev = keys.next();
    for key in keys {
        if prev.is_some_and(|p| p > key) {
            map.sort_keys();
            break;
        }
        prev = Some(key);
    }
    Value::Object(map)
}

/// The key at `idx` (during a traversal), as JSON can use it given whether the table is
/// a marked array. Only string keys are read as strings: `lua_tolstring` on a number key
/// would change it under `lua_next`.
unsafe fn read_key(l: *mut ffi::lua_State, idx: c_int, marked: bool) -> Result<Key, ConvError> {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => {
            let i = ffi::lua_tointegerx(l, idx, ptr::null_mut());
            if marked && i < 1 {
                return fail(non_positive(&i.to_string()));
            }
            Ok(Key::Int(i))
        }
        ffi::LUA_TSTRING if !marked => match std::str::from_utf8(string_bytes(l, idx)) {
            Ok(s) => Ok(Key::Str(s.to_owned())),
            Err(_) => fail("table key is not valid UTF-8"),
        },
        _ => {
            let shown = key_display(l, idx);
            fail(if marked {
                non_positive(&shown)
            } else {
                format!("table key {shown} cannot be a JSON object key")
            })
        }
    }
}

/// Holes become null; absurdly sparse arrays are refused instead of allocating millions
/// of nulls.
fn check_sparse(len: i64, elements: usize) -> Result<(), ConvError> {
    if len as usize > elements.saturating_mul(2) + 1024 {
        return fail(format!(
            "json.array table is too sparse (index {len} with {elements} elements)"
        ));
    }
    Ok(())
}

/// Where an integer key sorts (string keys, which ordered keys never hold, last).
fn int_key(k: &Key) -> i64 {
    match k {
        Key::Int(i) => *i,
        Key::Str(_) => i64::MAX,
    }
}

fn duplicate(key: &str) -> String {
    format!("key {key:?} appears both as an integer and as a string")
}

fn non_positive(shown: &str) -> String {
    format!("json.array table has a non-positive-integer key ({shown})")
}

unsafe fn string_bytes<'a>(l: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    let mut len = 0usize;
    let p = ffi::lua_tolstring(l, idx, &raw mut len);
    std::slice::from_raw_parts(p.cast::<u8>(), len)
}

/// A key for an error message (the key is at `idx` and is not an integer).
unsafe fn key_display(l: *mut ffi::lua_State, idx: c_int) -> String {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TNUMBER => format!("{}", ffi::lua_tonumberx(l, idx, ptr::null_mut())),
        ffi::LUA_TBOOLEAN => (ffi::lua_toboolean(l, idx) != 0).to_string(),
        ffi::LUA_TSTRING => format!("{:?}", String::from_utf8_lossy(string_bytes(l, idx))),
        ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(l, idx).is_null() => {
            "of type json.null".to_owned()
        }
        t => format!("of type {}", type_name(t)),
    }
}

/// The name of a Lua type without a JSON counterpart (for messages).
fn type_name(t: c_int) -> &'static str {
    match t {
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TTHREAD => "thread",
        _ => "userdata",
    }
}

/// Keys are exactly `1..=n` for some n >= 1 (keys are unique, so it is enough
/// that every key is an integer within range).
fn is_sequence<T>(entries: &[(Key, T)]) -> bool {
    let n = entries.len() as i64;
    n >= 1
        && entries
            .iter()
            .all(|(k, _)| matches!(*k, Key::Int(i) if (1..=n).contains(&i)))
}

fn sequence(entries: Vec<(Key, Value)>) -> Value {
    let mut out = vec![Value::Null; entries.len()];
    for (k, v) in entries {
        let Key::Int(i) = k else {
            unreachable!("checked by is_sequence")
        };
        out[(i - 1) as usize] = v;
    }
    Value::Array(out)
}

fn marked_array(entries: Vec<(Key, Value)>) -> Result<Value, ConvError> {
    let len = max_index(&entries);
    check_sparse(len, entries.len())?;
    let mut out = vec![Value::Null; len as usize];
    for (k, v) in entries {
        let Key::Int(i) = k else {
            unreachable!("marked tables only have positive integer keys")
        };
        out[(i - 1) as usize] = v;
    }
    Ok(Value::Array(out))
}

fn object(entries: Vec<(Key, Value)>) -> Result<Value, ConvError> {
    Ok(Value::Object(
        named(entries)?.into_iter().collect::<Map<_, _>>(),
    ))
}

/// An object's entries by their JSON names (integer keys as decimal strings), sorted:
/// Lua's hash order differs between states (randomised string seeds), sorting keeps
/// outputs deterministic. Two keys with one name are an error.
fn named<T>(entries: Vec<(Key, T)>) -> Result<Vec<(String, T)>, ConvError> {
    let mut keyed: Vec<(String, T)> = entries
        .into_iter()
        .map(|(k, v)| match k {
            Key::Int(i) => (i.to_string(), v),
            Key::Str(s) => (s, v),
        })
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
        return fail(duplicate(&w[0].0));
    }
    Ok(keyed)
}

/// The highest integer key (0 for none).
fn max_index<T>(entries: &[(Key, T)]) -> i64 {
    entries.iter().map(|(k, _)| int_key(k)).max().unwrap_or(0)
}

//! The read-only view of a run's `inputs` a script gets.
//!
//! The inputs are converted once per Lua state and run (see [`Inputs::Shared`]) and every
//! node of the run on that state reads the same tables, so no node may change them: each
//! container is a *view*, an empty table whose metatable (hidden: `getmetatable` gives
//! `"json.array"` for an array, `false` for an object) holds the table with the values
//! (the *backing* table, nested containers being views again) as `__index` and under
//! [`view_key`], a `__newindex` raising `inputs is read-only (cannot set 'x')`, and `__len`
//! and `__pairs` reading the backing table. Indexing (`inputs.values[2]`), `#`, `ipairs`,
//! `pairs` and the table library's reading functions go through the metatable at Lua's own
//! speed; the sandbox's `ipairs`, `next`, `rawget` and `rawlen` see through a view (the C
//! functions here), its `rawset` refuses one, and the output and `json.encode` conversions convert
//! a view as the value it shows (`ToJson::table`).
//!
//! [`Inputs::Shared`]: crate::Inputs::Shared
//!
//! # Safety
//!
//! As in `convert`: the builders run inside `exec_raw`'s protected call and raise memory
//! errors only, through frames that own nothing with a destructor. The C functions are
//! called by Lua with their arguments on the stack (at least `LUA_MINSTACK` free slots);
//! the only errors they raise are Lua's own argument errors and `next`'s invalid key,
//! before anything is owned.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};

use mlua::{ffi, Function, Lua, Table};
use serde_json::Value;

use crate::convert::{enter, push_json, push_str, ConvError, ConvFail, Segment};

/// The address whose light userdata keys a view's metatable to its backing table: no
/// script can make that key (its only light userdata is `json.null`, the null pointer),
/// nor reach the metatable.
static VIEW_KEY: u8 = 0;

/// The key of a view's backing table in its metatable.
pub(crate) fn view_key() -> *const c_void {
    std::ptr::addr_of!(VIEW_KEY).cast()
}

/// As [`VIEW_KEY`], for the view's `ipairs` iterator (see [`view_ipairs`]).
static IPAIRS_KEY: u8 = 0;

fn ipairs_key() -> *const c_void {
    std::ptr::addr_of!(IPAIRS_KEY).cast()
}

/// If the value at `idx` is a view, pushes its backing table and returns true; else
/// pushes nothing. Needs two free stack slots.
pub(crate) unsafe fn push_backing(l: *mut ffi::lua_State, idx: c_int) -> bool {
    if ffi::lua_type(l, idx) != ffi::LUA_TTABLE || ffi::lua_getmetatable(l, idx) == 0 {
        return false;
    }
    if ffi::lua_rawgetp(l, -1, view_key()) == ffi::LUA_TTABLE {
        ffi::lua_remove(l, -2);
        true
    } else {
        ffi::lua_pop(l, 2);
        false
    }
}

/// Converts `v` into a view (a scalar as itself) in one protected call: the run's inputs,
/// kept by the engine for the run's later nodes. `newindex` is the views' `__newindex`.
pub(crate) fn json_to_view(
    lua: &Lua,
    array_mt: &Table,
    newindex: &Function,
    v: &Value,
) -> Result<mlua::Value, ConvFail> {
    let mut failed = None;
    // SAFETY: see the module docs; the marker table and `__newindex` are arguments 1 and 2.
    let value = unsafe {
        lua.exec_raw::<mlua::Value>((array_mt, newindex), |l| {
            if let Err(e) = push_view(l, 1, 2, v, 0) {
                failed = Some(e);
                ffi::lua_settop(l, 0);
                return;
            }
            ffi::lua_replace(l, 1);
            ffi::lua_settop(l, 1);
        })
    }?;
    match failed {
        Some(e) => Err(e.into_fail()),
        None => Ok(value),
    }
}

/// Pushes `v` as a view: containers as views (see the module docs), scalars as
/// `push_json` pushes them. `array_mt` and `newindex` are the absolute stack indexes of
/// the array marker and of the views' `__newindex`. On an error the stack is left as it
/// is (the caller resets it).
pub(crate) unsafe fn push_view(
    l: *mut ffi::lua_State,
    array_mt: c_int,
    newindex: c_int,
    v: &Value,
    depth: usize,
) -> Result<(), ConvError> {
    match v {
        Value::Array(items) => {
            enter(l, depth)?;
            ffi::lua_createtable(l, items.len().min(c_int::MAX as usize) as c_int, 0);
            for (i, item) in items.iter().enumerate() {
                let i = i as i64 + 1;
                push_view(l, array_mt, newindex, item, depth + 1)
                    .map_err(|e| e.at(Segment::Index(i)))?;
                ffi::lua_rawseti(l, -2, i);
            }
            ffi::lua_pushvalue(l, array_mt);
            ffi::lua_setmetatable(l, -2);
            wrap(l, newindex, true)
        }
        Value::Object(map) => {
            enter(l, depth)?;
            ffi::lua_createtable(l, 0, map.len().min(c_int::MAX as usize) as c_int);
            for (k, item) in map {
                push_str(l, k);
                push_view(l, array_mt, newindex, item, depth + 1)
                    .map_err(|e| e.at(Segment::Key(k.clone())))?;
                ffi::lua_rawset(l, -3);
            }
            wrap(l, newindex, false)
        }
        scalar => push_json(l, array_mt, scalar, depth),
    }
}

/// Replaces the backing table on top of the stack by its view.
unsafe fn wrap(l: *mut ffi::lua_State, newindex: c_int, array: bool) -> Result<(), ConvError> {
    // Three slots (the view, its metatable, a value) and one more: `lua_setfield` pushes
    // the key while it sets a field the table does not have yet (a debug build of Lua
    // asserts on it: `auxsetstr`, "stack overflow").
    if ffi::lua_checkstack(l, 4) == 0 {
        return Err(ConvError::no_stack());
    }
    ffi::lua_createtable(l, 0, 0);
    ffi::lua_createtable(l, 0, 7);
    ffi::lua_pushvalue(l, -3);
    ffi::lua_setfield(l, -2, c"__index".as_ptr());
    ffi::lua_pushvalue(l, -3);
    ffi::lua_rawsetp(l, -2, view_key());
    if array {
        ffi::lua_pushvalue(l, -3);
        ffi::lua_pushcclosure(l, view_ipairs_step, 1);
        ffi::lua_rawsetp(l, -2, ipairs_key());
    }
    ffi::lua_pushvalue(l, newindex);
    ffi::lua_setfield(l, -2, c"__newindex".as_ptr());
    ffi::lua_pushcfunction(l, view_len);
    ffi::lua_setfield(l, -2, c"__len".as_ptr());
    ffi::lua_pushcfunction(l, view_pairs);
    ffi::lua_setfield(l, -2, c"__pairs".as_ptr());
    if array {
        ffi::lua_pushstring(l, c"json.array".as_ptr());
    } else {
        ffi::lua_pushboolean(l, 0);
    }
    ffi::lua_setfield(l, -2, c"__metatable".as_ptr());
    ffi::lua_setmetatable(l, -2);
    ffi::lua_replace(l, -2);
    Ok(())
}

/// `__len` of a view: the length of its backing table.
unsafe extern "C-unwind" fn view_len(l: *mut ffi::lua_State) -> c_int {
    let n = if push_backing(l, 1) {
        ffi::lua_rawlen(l, -1)
    } else {
        0
    };
    ffi::lua_pushinteger(l, n.try_into().unwrap_or(ffi::lua_Integer::MAX));
    1
}

/// `__pairs` of a view: the sandbox's `next` over the view (its backing table stays
/// out of the script's reach).
unsafe extern "C-unwind" fn view_pairs(l: *mut ffi::lua_State) -> c_int {
    ffi::lua_pushcfunction(l, view_next);
    ffi::lua_pushvalue(l, 1);
    ffi::lua_pushnil(l);
    3
}

/// The sandbox's `next`: Lua's, reading a view's backing table.
pub(crate) unsafe extern "C-unwind" fn view_next(l: *mut ffi::lua_State) -> c_int {
    ffi::luaL_checktype(l, 1, ffi::LUA_TTABLE);
    ffi::lua_settop(l, 2);
    if push_backing(l, 1) {
        ffi::lua_replace(l, 1);
    }
    if ffi::lua_next(l, 1) != 0 {
        2
    } else {
        ffi::lua_pushnil(l);
        1
    }
}

/// The sandbox's `ipairs`: Lua's (`ipairs_step` is Lua's `ipairsaux`), except that over a
/// view of an array it steps through the backing table directly (the view's `__index`
/// would cost a metamethod lookup per element), by a closure holding it that the view's
/// metatable keeps.
pub(crate) unsafe extern "C-unwind" fn view_ipairs(l: *mut ffi::lua_State) -> c_int {
    ffi::luaL_checkany(l, 1);
    let stepper = ffi::lua_type(l, 1) == ffi::LUA_TTABLE
        && ffi::lua_getmetatable(l, 1) != 0
        && if ffi::lua_rawgetp(l, -1, ipairs_key()) == ffi::LUA_TFUNCTION {
            ffi::lua_remove(l, -2);
            true
        } else {
            ffi::lua_pop(l, 2);
            false
        };
    if !stepper {
        ffi::lua_pushcfunction(l, ipairs_step);
    }
    ffi::lua_pushvalue(l, 1);
    ffi::lua_pushinteger(l, 0);
    3
}

/// Lua's `ipairsaux`: the next index and value of the table, or nothing at the first nil.
unsafe extern "C-unwind" fn ipairs_step(l: *mut ffi::lua_State) -> c_int {
    let i = ffi::luaL_checkinteger(l, 2).wrapping_add(1);
    ffi::lua_pushinteger(l, i);
    if ffi::lua_geti(l, 1, i) == ffi::LUA_TNIL {
        1
    } else {
        2
    }
}

/// `ipairs_step` over a view: reads its backing table, the closure's upvalue. (The loop's
/// own control variable is an integer: `luaL_checkinteger` only for its error.)
unsafe extern "C-unwind" fn view_ipairs_step(l: *mut ffi::lua_State) -> c_int {
    let mut isnum = 0;
    let i = ffi::lua_tointegerx(l, 2, &raw mut isnum);
    let i = if isnum != 0 {
        i
    } else {
        ffi::luaL_checkinteger(l, 2)
    }
    .wrapping_add(1);
    ffi::lua_pushinteger(l, i);
    if ffi::lua_rawgeti(l, ffi::lua_upvalueindex(1), i) == ffi::LUA_TNIL {
        1
    } else {
        2
    }
}

/// The sandbox's `rawget`: Lua's, reading a view's backing table.
pub(crate) unsafe extern "C-unwind" fn view_rawget(l: *mut ffi::lua_State) -> c_int {
    ffi::luaL_checktype(l, 1, ffi::LUA_TTABLE);
    ffi::luaL_checkany(l, 2);
    ffi::lua_settop(l, 2);
    if push_backing(l, 1) {
        ffi::lua_replace(l, 1);
    }
    ffi::lua_rawget(l, 1);
    1
}

extern "C-unwind" {
    /// lauxlib's `luaL_typeerror` (not in `mlua-sys`' bindings).
    fn luaL_typeerror(l: *mut ffi::lua_State, arg: c_int, tname: *const std::ffi::c_char) -> c_int;
}

/// The sandbox's `rawlen`: Lua's, reading a view's backing table.
pub(crate) unsafe extern "C-unwind" fn view_rawlen(l: *mut ffi::lua_State) -> c_int {
    let t = ffi::lua_type(l, 1);
    if t != ffi::LUA_TTABLE && t != ffi::LUA_TSTRING {
        luaL_typeerror(l, 1, c"table or string".as_ptr());
    }
    let n = if push_backing(l, 1) {
        ffi::lua_rawlen(l, -1)
    } else {
        ffi::lua_rawlen(l, 1)
    };
    ffi::lua_pushinteger(l, n.try_into().unwrap_or(ffi::lua_Integer::MAX));
    1
}

/// `is_view(v)`: whether `v` is a view (the sandbox's `rawset` refuses one).
pub(crate) unsafe extern "C-unwind" fn is_view(l: *mut ffi::lua_State) -> c_int {
    let view = push_backing(l, 1);
    ffi::lua_pushboolean(l, c_int::from(view));
    1
}

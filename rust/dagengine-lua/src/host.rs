//! The host functions behind the sandbox's pattern matching: C functions on Lua's C API
//! over `pattern`, reading the running state's [`RunState`] for its limits.

use std::os::raw::c_int;

use mlua::{ffi, Lua, Table};

use crate::pattern;
use crate::run_state::{run_key, RunState};

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
pub(crate) fn add_pattern_functions(lua: &Lua, host: &Table) -> mlua::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: see above.
    unsafe {
        host.raw_set("find", lua.create_c_function(host_find)?)?;
        host.raw_set("search", lua.create_c_function(host_search)?)?;
        host.raw_set("gsub", lua.create_c_function(host_gsub)?)?;
        host.raw_set("rep", lua.create_c_function(host_rep)?)?;
    }
    Ok(())
}

/// The [`RunState`] of the state `l` runs on (see [`RUN_KEY`](crate::run_state::RUN_KEY)).
#[allow(unsafe_code)]
pub(crate) unsafe fn run_of<'a>(l: *mut ffi::lua_State) -> Option<&'a RunState> {
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
pub(crate) unsafe fn arg_bytes<'a>(l: *mut ffi::lua_State, i: c_int) -> &'a [u8] {
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
pub(crate) unsafe fn push_fail(l: *mut ffi::lua_State, f: pattern::Fail) -> c_int {
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
pub(crate) unsafe fn push_captures<F: FnMut() -> Result<(), ()>>(
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
pub(crate) const RESULTS_ROOM: c_int = 40;

/// `find(subject, pat, init, plain, is_find)`: `string.find` (`true`, start, end, captures) or
/// `string.match` (`true`, captures); `init` is the 1-based argument.
#[allow(unsafe_code)]
pub(crate) unsafe extern "C-unwind" fn host_find(l: *mut ffi::lua_State) -> c_int {
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
pub(crate) unsafe extern "C-unwind" fn host_search(l: *mut ffi::lua_State) -> c_int {
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
pub(crate) struct LuaBuffer(*mut ffi::luaL_Buffer);

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
pub(crate) unsafe extern "C-unwind" fn host_gsub(l: *mut ffi::lua_State) -> c_int {
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

/// Bytes of the piece `rep` builds (whole repetitions of `s` and `sep`) when they are short.
const REP_PIECE_BYTES: usize = 1 << 20;

/// `MAXSIZE` of `lstrlib.c` on a 64-bit build: `string.rep` refuses longer results.
const REP_MAX: usize = i32::MAX as usize;

/// `rep(s, n, sep)`: `string.rep` (`true` and the string, or `false` and a message), with
/// `lstrlib.c`'s results and errors. Lua's `str_rep` copies `s` and `sep` once per
/// repetition without returning to the VM: a long result of short strings ignored the
/// deadline and a cancel for seconds (`string.rep('a', 1e9)`: 17 s), and
/// `string.rep('', 1e18)` (10^18 empty copies) for ever. This one returns "" at once for a
/// result of no bytes, else builds a piece of whole repetitions of about
/// [`REP_PIECE_BYTES`] (or, for long strings, uses `s` and `sep` themselves) and has Lua
/// concatenate the copies of it: a few thousand values at most, copied once into the new
/// string. Its one long step is that copy of the result, which the memory limit bounds
/// (and it needs the result's size once, where Lua's needed it twice: a buffer, then the
/// string).
#[allow(unsafe_code)]
pub(crate) unsafe extern "C-unwind" fn host_rep(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `add_pattern_functions`; the pieces are pushed before anything can fail
    // past their copy onto the stack.
    unsafe {
        let (s, sep) = (arg_bytes(l, 1), arg_bytes(l, 3));
        let n = ffi::lua_tointeger(l, 2);
        ffi::luaL_checkstack(l, RESULTS_ROOM, std::ptr::null());
        if n <= 0 {
            ffi::lua_pushboolean(l, 1);
            ffi::lua_pushlstring(l, s.as_ptr().cast(), 0);
            return 2;
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let unit = s.len().saturating_add(sep.len());
        if unit > REP_MAX / n {
            let f = pattern::Fail::Error("resulting string too large".to_owned());
            return push_fail(l, f);
        }
        if unit == 0 {
            ffi::lua_pushboolean(l, 1);
            ffi::lua_pushlstring(l, s.as_ptr().cast(), 0);
            return 2;
        }
        // A long result is one long step: the run's limits are checked before it, so that
        // a loop of them stops at the next call (the count hook runs every 1,000
        // instructions, which may be as many calls).
        let total = n * s.len() + (n - 1) * sep.len();
        if total >= REP_PIECE_BYTES {
            let Some(run) = run_of(l) else { return 0 };
            if run.check().is_err() {
                return push_fail(l, pattern::Fail::Stopped);
            }
        }
        ffi::lua_pushboolean(l, 1);
        // The result: (s .. sep) n - 1 times, then s.
        let per_piece = (REP_PIECE_BYTES / unit).max(1);
        let (full, rest) = ((n - 1) / per_piece, (n - 1) % per_piece);
        // At most REP_MAX / REP_PIECE_BYTES pieces of two values, and the tail.
        let values = if per_piece == 1 {
            2 * full + 1
        } else {
            full + 1
        };
        let room = c_int::try_from(values + 1).unwrap_or(c_int::MAX);
        ffi::luaL_checkstack(l, room, c"string.rep".as_ptr());
        if full > 0 {
            if per_piece == 1 {
                for _ in 0..full {
                    ffi::lua_pushvalue(l, 1);
                    ffi::lua_pushvalue(l, 3);
                }
            } else {
                let piece = repeated(s, sep, per_piece, b"");
                ffi::lua_pushlstring(l, piece.as_ptr().cast(), piece.len());
                drop(piece);
                for _ in 1..full {
                    ffi::lua_pushvalue(l, -1);
                }
            }
        }
        if rest == 0 {
            ffi::lua_pushvalue(l, 1);
        } else {
            let tail = repeated(s, sep, rest, s);
            ffi::lua_pushlstring(l, tail.as_ptr().cast(), tail.len());
        }
        ffi::lua_concat(l, room - 1);
        2
    }
}

/// `s .. sep` `times` times, then `last`: one copy, then copies of what is written (about
/// doubling each time).
pub(crate) fn repeated(s: &[u8], sep: &[u8], times: usize, last: &[u8]) -> Vec<u8> {
    let body = (s.len() + sep.len()) * times;
    let mut v = Vec::with_capacity(body + last.len());
    if times > 0 {
        v.extend_from_slice(s);
        v.extend_from_slice(sep);
    }
    // v holds whole repetitions: its start is what follows it.
    while v.len() < body {
        let k = v.len().min(body - v.len());
        v.extend_from_within(..k);
    }
    v.extend_from_slice(last);
    v
}

/// A position or length as a Lua integer.
pub(crate) fn to_lua_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::repeated;

    fn naive(s: &[u8], sep: &[u8], times: usize, last: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..times {
            v.extend_from_slice(s);
            v.extend_from_slice(sep);
        }
        v.extend_from_slice(last);
        v
    }

    #[test]
    fn repeated_writes_whole_repetitions_then_the_last() {
        let long = vec![b'x'; 3000];
        let cases: [(&[u8], &[u8]); 7] = [
            (b"a", b""),
            (b"ab", b","),
            (b"", b"-"),
            (b"abc", b"<>"),
            (b"\0z", b"\0"),
            (&long, b"|"),
            (b"q", &long),
        ];
        for (s, sep) in cases {
            for times in [0, 1, 2, 3, 7, 64, 1000, 4097] {
                for last in [&b""[..], s] {
                    let got = repeated(s, sep, times, last);
                    assert!(
                        got == naive(s, sep, times, last),
                        "{} {} {times}",
                        s.len(),
                        sep.len()
                    );
                }
            }
        }
    }
}

//! Chunks too short to need the instruction budget's hook: a main function of at most
//! [`MAX_CODE`] instructions with no call, no loop, no backward jump, no closure and no
//! to-be-closed variable executes each of its instructions at most once. The only other
//! code it can reach is the metamethods the VM calls for it (indexing, arithmetic,
//! comparison, `#`, `..`), and in the sandbox those are tables or the sandbox's own short
//! functions (the views' `__newindex` and the read-only libraries' raise an error; `__len`
//! of a view is a C function reading the backing table's length), since setting any other
//! metatable takes a call. So such a chunk runs fewer instructions than the hook's interval
//! (it charges the budget in steps of [`HOOK_INTERVAL`](crate::hook::HOOK_INTERVAL)), and
//! the hook, set, would never fire: a condition like `inputs.n > 0` does not pay for it
//! (Lua stops at every instruction to count once a count hook is set).
//!
//! The same code tells whether a chunk can change its environment at all ([`Shape::keeps_env`]):
//! the sandbox compiles every script behind `local _ENV = ...;`, so the environment is the
//! main function's register 0, and a script that names neither `_ENV` nor `...` (nor `load`:
//! see `Names`) never holds it as a value, so it can write into it only through an
//! instruction that sets a field of register 0, or from a nested function (through its
//! `_ENV` upvalue).
//!
//! The main function's code is read from its stripped binary dump (Lua 5.4's format,
//! `ldump.c`); anything unexpected in it answers "not bounded" and "may change it".

use mlua::Function;

/// The longest main function (in VM instructions) counted as bounded.
pub(crate) const MAX_CODE: usize = 100;

/// The longest main function read for [`Shape::keeps_env`] (a larger dump is not read).
const MAX_READ: usize = 1 << 20;

// Lua 5.4's opcodes (`lopcodes.h`) that call, loop, create closures or close variables.
const OP_CLOSE: u32 = 54;
const OP_TBC: u32 = 55;
const OP_JMP: u32 = 56;
const OP_CALL: u32 = 68;
const OP_TAILCALL: u32 = 69;
const OP_FORLOOP: u32 = 73;
const OP_FORPREP: u32 = 74;
const OP_TFORPREP: u32 = 75;
const OP_TFORCALL: u32 = 76;
const OP_TFORLOOP: u32 = 77;
const OP_CLOSURE: u32 = 79;
// The opcodes that write into a table or an upvalue.
const OP_SETUPVAL: u32 = 10;
const OP_SETTABUP: u32 = 15;
const OP_SETTABLE: u32 = 16;
const OP_SETI: u32 = 17;
const OP_SETFIELD: u32 = 18;
const OP_SETLIST: u32 = 78;
/// `sJ`'s excess-K offset (`OFFSET_sJ`: 25 bits).
const OFFSET_SJ: i64 = ((1 << 25) - 1) >> 1;

/// The header of Lua 5.4 binary chunks up to the sizes, and its length with `LUAC_INT`
/// and `LUAC_NUM` (8 bytes each).
const HEADER: &[u8] = b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08";
const HEADER_LEN: usize = HEADER.len() + 16;

/// Reads one of `ldump.c`'s sizes (7 bits a byte, most significant first, the last byte
/// marked by its high bit).
fn size(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut x: usize = 0;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        x = x.checked_mul(128)? | usize::from(b & 0x7f);
        if b & 0x80 != 0 {
            return Some(x);
        }
    }
}

/// Whether `code` (a main function's instructions) is bounded as the module docs say.
pub(crate) fn code_is_bounded(code: &[u32]) -> bool {
    code.len() <= MAX_CODE
        && code.iter().all(|&i| match i & 0x7f {
            OP_CLOSE | OP_TBC | OP_CALL | OP_TAILCALL | OP_FORLOOP | OP_FORPREP | OP_TFORPREP
            | OP_TFORCALL | OP_TFORLOOP | OP_CLOSURE => false,
            OP_JMP => i64::from(i >> 7) - OFFSET_SJ >= 0,
            _ => true,
        })
}

/// Whether `code` (a main function's instructions, compiled behind `local _ENV = ...;`)
/// sets no field of its register 0 (the environment), no upvalue and no field of one, and
/// creates no closure (a nested function reaches the environment as an upvalue).
pub(crate) fn code_keeps_env(code: &[u32]) -> bool {
    code.iter().all(|&i| match i & 0x7f {
        OP_SETUPVAL | OP_SETTABUP | OP_CLOSURE => false,
        OP_SETTABLE | OP_SETI | OP_SETFIELD | OP_SETLIST => (i >> 7) & 0xff != 0,
        _ => true,
    })
}

/// What the compiled chunk's code allows the engine to skip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Bounded (see the module docs): the instruction budget's hook need not be set.
    pub(crate) bounded: bool,
    /// Cannot change its environment (see the module docs): for a script that reads no
    /// global but `inputs` (and cannot reach its environment, see `Names`), an environment
    /// holding only the run's `inputs` can serve every call of it in the run as it is,
    /// neither set up nor emptied per call.
    pub(crate) keeps_env: bool,
}

/// The [`Shape`] of the compiled chunk `func`.
pub(crate) fn shape(func: &Function) -> Shape {
    if !cfg!(target_endian = "little") {
        return Shape::default();
    }
    match main_code(&func.dump(true), MAX_READ) {
        Some(code) => Shape {
            bounded: code_is_bounded(&code),
            keeps_env: code_keeps_env(&code),
        },
        None => Shape::default(),
    }
}

/// The instructions of the main function of a stripped dump of a Lua 5.4 chunk, if there
/// are at most `max`.
fn main_code(dump: &[u8], max: usize) -> Option<Vec<u32>> {
    if dump.get(..HEADER.len())? != HEADER {
        return None;
    }
    // The main function's upvalue count (a byte), then its source: none when stripped.
    let mut at = HEADER_LEN + 1;
    if size(dump, &mut at)? != 0 {
        return None;
    }
    size(dump, &mut at)?; // linedefined
    size(dump, &mut at)?; // lastlinedefined
    at += 3; // numparams, is_vararg, maxstacksize
    let n = size(dump, &mut at)?;
    if n > max {
        return None;
    }
    let bytes = dump.get(at..at + n * 4)?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    /// The shape of chunk `src`, compiled as the sandbox compiles a script.
    fn shape_of(src: &str) -> Shape {
        let lua = Lua::new();
        let f = lua
            .load(format!("local _ENV = ...; {src}"))
            .into_function()
            .unwrap();
        shape(&f)
    }

    fn bounded(src: &str) -> bool {
        shape_of(src).bounded
    }

    fn keeps_env(src: &str) -> bool {
        shape_of(src).keeps_env
    }

    #[test]
    fn chunks_that_set_no_global_keep_their_env() {
        let long = format!("local x = 0 {} return x", "x = x + inputs.n ".repeat(200));
        for src in [
            "return (inputs.n > 0\n)",
            "return (inputs.a == 'x' and not inputs.b or #inputs.list > 2\n)",
            "local x = inputs.n return x",
            // Writes into tables other than the environment (an input's raises).
            "inputs.x = 1 return true",
            "return ({1, 2})[1] == 1",
            "local t = {} t.a = 1 return t.a == 1",
            "local t = {} t[1] = 1 t[inputs.k] = 2 return true",
            "return ({a = 1}).a == 1",
            "local t = {inputs.a, inputs.b, n = 2} return t",
            "return (f(1)\n)",
            "while true do end",
            "local s = 0 for _, v in ipairs(inputs.values) do s = s + v end return {sum = s}",
            long.as_str(),
        ] {
            assert!(keeps_env(src), "{src}");
        }
        let long = format!("{} x = 1", "local y = inputs.n ".repeat(150));
        for src in [
            "x = 1 return true",
            "x, y = 1, 2",
            "for i = 1, 3 do n = i end",
            "local function f() end return true",
            "return function() return x end",
            "local t = {} return function() t = 1 end",
            long.as_str(),
        ] {
            assert!(!keeps_env(src), "{src}");
        }
    }

    #[test]
    fn short_straight_code_is_bounded() {
        for src in [
            "return (true\n)",
            "return (inputs.n > 0\n)",
            "return (inputs.a == 'x' and not results.b.failed or #inputs.list > 2\n)",
            "return (inputs.s .. inputs.t == 'ab'\n)",
            "local x = inputs.n if x then return x > 1 else return false end",
            "return ({1, 2, 3})[2] == 2",
        ] {
            assert!(bounded(src), "{src}");
        }
    }

    #[test]
    fn calls_loops_closures_and_long_code_are_not() {
        let long = format!("return ({}\n)", vec!["inputs.n"; 60].join(" + "));
        for src in [
            "return (f(1)\n)",
            "return (inputs.s:upper() == 'A'\n)",
            "return (tostring\"x\"\n)",
            "return (pcall{}\n)",
            "while true do end",
            "repeat until false",
            "::a:: goto a",
            "for i = 1, 10 do end return true",
            "for k in next, {} do end return true",
            "return (function() return true end)",
            "local x <close> = nil return true",
            long.as_str(),
        ] {
            assert!(!bounded(src), "{src}");
        }
    }

    #[test]
    fn a_dump_not_as_expected_is_not_bounded() {
        assert_eq!(main_code(b"", MAX_READ), None);
        assert_eq!(main_code(b"\x1bLua\x53", MAX_READ), None);
        let mut dump = HEADER.to_vec();
        dump.extend([0; 16]);
        assert_eq!(main_code(&dump, MAX_READ), None);
    }

    /// The budget still stops a condition that loops or calls, and a bounded one still
    /// answers under the smallest budget, as it did with the hook set.
    #[test]
    fn the_budget_holds_where_it_can_be_reached() {
        use crate::{evaluate_bool, LuaError, LuaLimits, LuaScript, NodeInfo};
        use serde_json::json;
        use std::sync::atomic::AtomicBool;

        let info = NodeInfo {
            node_id: "n",
            run_id: "r",
            attempt: 1,
        };
        let limits = LuaLimits {
            max_instructions: Some(1),
            timeout: None,
            ..LuaLimits::default()
        };
        let inputs = json!({"n": 2});
        let flag = AtomicBool::new(false);
        let eval = |src: &str| {
            evaluate_bool(
                &LuaScript::new(src),
                &inputs,
                &[],
                &info,
                &limits,
                Some(&flag),
            )
        };
        assert_eq!(eval("return (inputs.n > 1\n)"), Ok(Ok(true)));
        for src in [
            "return ((function() while true do end end)()\n)",
            "while true do end",
            "::a:: goto a",
        ] {
            assert_eq!(
                eval(src),
                Err(LuaError::InstructionLimit { limit: 1 }),
                "{src}"
            );
        }
    }
}

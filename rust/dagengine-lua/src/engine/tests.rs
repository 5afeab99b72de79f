//! Unit tests of `engine.rs`.

use super::*;
use std::time::Duration;

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

/// A preemption is watched late however close it is; a timeout that close sets the hook at
/// the start.
#[test]
fn a_close_preemption_does_not_set_the_hook_at_the_start() {
    let hooked_at_start = |limits: LuaLimits, preempt: Option<Instant>| {
        with_engine(|e| {
            start_run(&e.run, &limits, preempt);
            let watched = e.run.start_hook(&limits, None, false);
            // SAFETY: the engine's main state, alive and on this thread.
            #[allow(unsafe_code)]
            let mask = unsafe { ffi::lua_gethookmask(e.run.main.get()) };
            let deadline = e.run.deadline.get();
            drop(watched);
            e.run.disarm_hook();
            e.run.active.set(false);
            Ok((mask != 0, deadline))
        })
        .unwrap()
    };
    let soon = Instant::now() + Duration::from_millis(1);
    let (hooked, deadline) = hooked_at_start(LuaLimits::default(), Some(soon));
    assert!(!hooked);
    assert_eq!(
        deadline,
        Some(soon),
        "the sooner of the timeout and the preemption"
    );
    let close = LuaLimits {
        timeout: Some(Duration::from_millis(1)),
        ..LuaLimits::default()
    };
    assert!(hooked_at_start(close, None).0);
    assert_eq!(hook_mask(), 0);
}

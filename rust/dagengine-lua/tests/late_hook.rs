//! Scripts without an instruction limit start with no hook; the watchdog sets it on those
//! that run long. These are the ways such a script must still stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dagengine_lua::{late_hooks, LuaError, LuaLimits, DEFAULT_TIMEOUT};

mod common;
use common::{run_bounded, run_bounded_after};

/// How long a test waits for a script that should stop long before.
const WAIT: Duration = Duration::from_secs(10);

const LIMIT: Duration = Duration::from_millis(100);

/// How late past its limit a script may stop here: only gross lateness (a watchdog that never
/// fired, a hook never set) is a bug these tests catch; how late a script really stops is
/// measured in `benches/bench_lua_stop.py` (a loaded CI machine made 2x the limit flaky).
const SLACK: Duration = Duration::from_secs(2);

fn timed() -> LuaLimits {
    LuaLimits {
        max_instructions: None,
        timeout: Some(LIMIT),
        ..LuaLimits::default()
    }
}

#[test]
fn the_default_limit_is_a_wall_time_limit() {
    let limits = LuaLimits::default();
    assert_eq!(limits.max_instructions, None);
    assert_eq!(limits.timeout, Some(DEFAULT_TIMEOUT));
}

#[test]
fn endless_loops_stop_at_their_deadline_in_every_form() {
    for src in [
        "while true do end",
        "local i = 0 while true do i = i + 1 end",
        "local function f() return f() end f()",
        "while true do pcall(function() while true do end end) end",
        "local ok = pcall(function() while true do end end) return { ok = ok }",
        // Coroutines copy the hook when created: the sandbox sets it before creating one.
        "coroutine.wrap(function() while true do end end)()",
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co)",
        "coroutine.wrap(function() coroutine.wrap(function() while true do end end)() end)()",
        "local co = coroutine.create(function() coroutine.yield() while true do end end) \
         coroutine.resume(co) coroutine.resume(co)",
    ] {
        let before = late_hooks();
        let (r, elapsed) = run_bounded(src, timed(), None, WAIT);
        assert_eq!(r.unwrap_err(), LuaError::Timeout { limit: LIMIT }, "{src}");
        assert!(
            elapsed >= LIMIT && elapsed < LIMIT + SLACK,
            "{src}: {elapsed:?}"
        );
        if !src.contains("coroutine") {
            assert!(
                late_hooks() > before,
                "{src}: the watchdog never set the hook"
            );
        }
    }
}

#[test]
#[allow(unsafe_code)]
fn a_thread_that_blocks_signals_still_has_its_script_stopped() {
    // Threads inherit their creator's signal mask: an embedding application may block
    // every signal on the threads that end up running scripts.
    let block_all = || {
        // SAFETY: blocks every signal on this thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&raw mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const all, std::ptr::null_mut());
        }
    };
    let (r, elapsed) = run_bounded_after(block_all, "while true do end", timed(), None, WAIT);
    assert_eq!(r.unwrap_err(), LuaError::Timeout { limit: LIMIT });
    assert!(elapsed < LIMIT + SLACK, "{elapsed:?}");
}

#[test]
fn cancel_stops_a_script_with_no_limits_at_all() {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Ordering::Relaxed);
    });
    let (r, elapsed) = run_bounded(
        "while true do end",
        LuaLimits::UNLIMITED,
        Some(cancel),
        WAIT,
    );
    assert_eq!(r.unwrap_err(), LuaError::Cancelled);
    assert!(elapsed < SLACK, "{elapsed:?}");
}

#[test]
fn an_instruction_limit_still_counts_from_the_first_instruction() {
    // 1,000 loop turns are a few thousand instructions, done long before any watchdog look:
    // only a hook set at the start can count them.
    let limits = LuaLimits {
        max_instructions: Some(1_000),
        ..LuaLimits::default()
    };
    let src = "local s = 0 for i = 1, 1000 do s = s + i end return { s = s }";
    let (r, _) = run_bounded(src, limits, None, WAIT);
    assert_eq!(r.unwrap_err(), LuaError::InstructionLimit { limit: 1_000 });
}

/// A script past its preemption time stops with the wall-time error, like at its deadline.
#[test]
fn a_preempted_script_stops_with_the_wall_time_error() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let r = dagengine_lua::execute_item_preemptible(
            &dagengine_lua::LuaScript::new("local n = 0 while true do n = n + 1 end"),
            &serde_json::json!({}),
            &[],
            &common::INFO,
            None,
            &LuaLimits::default(),
            None,
            Some(start + Duration::from_millis(5)),
        );
        let _ = tx.send((r, start.elapsed()));
    });
    let (r, took) = rx.recv_timeout(WAIT).expect("never stopped");
    assert_eq!(
        r,
        Err(LuaError::Timeout {
            limit: DEFAULT_TIMEOUT
        })
    );
    assert!(took >= Duration::from_millis(5), "{took:?}");
    assert!(took < Duration::from_millis(5) + SLACK, "{took:?}");
    common::assert_next_run_works();
}

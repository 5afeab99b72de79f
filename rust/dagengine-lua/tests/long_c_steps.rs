//! Loops of long C steps (issue 17, point 3: "whatever a script does"). The count hook runs
//! every 1,000 instructions, and one instruction can be a C call of tens of milliseconds
//! (`s:upper()` on 10 MB, `table.concat`, `..`, `table.sort`): 1,000 of them are seconds.
//! Once the deadline has passed or the cancel flag is up, the hook must run at the next
//! instruction, in the main state and in a coroutine, with the hook set late or from the
//! start.

use std::time::{Duration, Instant};

use dagengine_lua::{LuaError, LuaLimits};
use serde_json::json;

mod common;
use common::{cancel_after, run_bounded};

/// How long a test waits for a script that should stop long before.
const WAIT: Duration = Duration::from_mins(1);

const LIMIT: Duration = Duration::from_millis(200);

/// Far beyond any of these runs when stopped, far below "never" (before the fix they took
/// 1,000 steps: many seconds).
const HANG: Duration = Duration::from_secs(2);

const MEMORY: usize = 256 * 1024 * 1024;

/// Loops whose every step is one long C call.
fn loops() -> Vec<(&'static str, String)> {
    let big = "local s = string.rep('a', 10 * 1024 * 1024)";
    let body = [
        ("upper", format!("{big} while true do s:upper() end")),
        ("lower", format!("{big} while true do s:lower() end")),
        (
            "table.concat",
            "local t = {} for i = 1, 2e5 do t[i] = 'abcdefghijklmnopqrstuvwxyz0123456789' end \
             while true do local c = table.concat(t) end"
                .to_owned(),
        ),
        ("..", format!("{big} while true do local c = s .. s end")),
        (
            "table.sort",
            "local t = {} for i = 1, 3e5 do t[i] = (i * 7919) % 300007 end \
             while true do table.sort(t) end"
                .to_owned(),
        ),
    ];
    let mut forms = Vec::new();
    for (what, src) in body {
        forms.push((what, src.clone()));
        // The same loop in a coroutine: its state has a hook of its own.
        forms.push((what, format!("coroutine.wrap(function() {src} end)()")));
    }
    forms
}

/// A wall-time limit alone (the hook is set late, by the watchdog).
fn timed() -> LuaLimits {
    LuaLimits {
        timeout: Some(LIMIT),
        max_memory: Some(MEMORY),
        ..LuaLimits::default()
    }
}

/// With an instruction budget: the hook from the first instruction.
fn counted() -> LuaLimits {
    LuaLimits {
        max_instructions: Some(u64::MAX / 2),
        ..timed()
    }
}

#[test]
fn a_loop_of_long_c_steps_stops_at_its_deadline() {
    for limits in [timed(), counted()] {
        for (what, src) in loops() {
            let (r, elapsed) = run_bounded(&src, limits, None, WAIT);
            assert_eq!(
                r.unwrap_err(),
                LuaError::Timeout { limit: LIMIT },
                "{what}: {src}"
            );
            assert!(elapsed < HANG, "{what}: {src}: {elapsed:?}");
        }
    }
}

#[test]
fn a_loop_of_long_c_steps_stops_on_a_cancel() {
    for instructions in [None, Some(u64::MAX / 2)] {
        for (what, src) in loops() {
            let (cancel, raised) = cancel_after(Duration::from_millis(300));
            let limits = LuaLimits {
                timeout: None,
                max_instructions: instructions,
                max_memory: Some(MEMORY),
            };
            let (r, _) = run_bounded(&src, limits, Some(cancel), WAIT);
            let stopped = Instant::now();
            assert_eq!(r.unwrap_err(), LuaError::Cancelled, "{what}: {src}");
            let raised = raised.lock().unwrap().expect("the flag was raised");
            let late = stopped.duration_since(raised);
            assert!(
                late < HANG,
                "{what}: {src}: stopped {late:?} after the cancel"
            );
        }
    }
}

#[test]
fn a_loop_that_ends_before_its_deadline_still_succeeds() {
    // The hook's check every instruction near the deadline must not trip early, nor
    // charge 1,000 instructions per instruction.
    let limits = LuaLimits {
        max_instructions: Some(2_000_000),
        timeout: Some(Duration::from_secs(30)),
        ..LuaLimits::default()
    };
    let (r, _) = run_bounded(
        "local n = 0 for i = 1, 200000 do n = n + i end return { n = n }",
        limits,
        None,
        WAIT,
    );
    assert_eq!(
        serde_json::Value::Object(r.unwrap().output),
        json!({ "n": 20_000_100_000_u64 })
    );
}

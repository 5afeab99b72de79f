//! The sandbox's limits: instructions, time, memory, cancellation.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_next_run_works, run_with, INFO};
use dagengine_core::ErrorKind;
use dagengine_lua::{execute, LuaError, LuaLimits, LuaScript};
use serde_json::{json, Value};

#[test]
fn instruction_limit() {
    let limits = LuaLimits {
        max_instructions: Some(100_000),
        ..LuaLimits::default()
    };
    let err = run_with("while true do end", &json!({}), &limits).unwrap_err();
    assert_eq!(err, LuaError::InstructionLimit { limit: 100_000 });
    assert_eq!(err.kind(), ErrorKind::LuaInstructionLimit);
    assert_eq!(err.to_string(), "exceeded the instruction limit of 100000");
    assert_next_run_works();
    // A script within budget is fine.
    assert!(run_with(
        "local s = 0 for i = 1, 1000 do s = s + i end return {s = s}",
        &json!({}),
        &limits
    )
    .is_ok());
}

#[test]
fn limits_cannot_be_caught() {
    let limits = LuaLimits {
        max_instructions: Some(100_000),
        ..LuaLimits::default()
    };
    for src in [
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
        "local ok = pcall(function() while true do end end) return { ok = ok }",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "coroutine.wrap(function() while true do end end)()",
        "local co = coroutine.create(function() while true do end end) local ok = coroutine.resume(co) return {}",
    ] {
        let err = run_with(src, &json!({}), &limits).unwrap_err();
        assert_eq!(err, LuaError::InstructionLimit { limit: 100_000 }, "{src}");
        assert_next_run_works();
    }
}

#[test]
fn timeout_fires_within_twice_the_limit() {
    let limits = LuaLimits {
        max_instructions: None,
        timeout: Some(Duration::from_millis(200)),
        ..LuaLimits::default()
    };
    let start = Instant::now();
    let err = run_with("while true do end", &json!({}), &limits).unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(
        err,
        LuaError::Timeout {
            limit: Duration::from_millis(200)
        }
    );
    assert_eq!(err.kind(), ErrorKind::LuaTimeout);
    assert!(
        // (Stopped at its deadline, not before; how late is measured in bench_lua_stop.py.)
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(2200),
        "{elapsed:?}"
    );
    assert_next_run_works();
}

#[test]
fn inputs_larger_than_the_memory_limit_still_reach_the_script() {
    // The limit is armed once the host's values are converted: it bounds what the script
    // allocates, not what it is given.
    let limits = LuaLimits {
        max_memory: Some(256 * 1024),
        ..LuaLimits::default()
    };
    let values: Vec<u64> = (0..100_000).collect();
    let got = run_with(
        "return { n = #inputs.values, last = inputs.values[#inputs.values] }",
        &json!({ "values": values }),
        &limits,
    )
    .unwrap();
    assert_eq!(
        Value::Object(got.output),
        json!({ "n": 100_000, "last": 99_999 })
    );
    // ... while the script's own allocations still hit it.
    let err = run_with(
        "local t = {} for i = 1, 1e6 do t[i] = i end",
        &json!({}),
        &limits,
    )
    .unwrap_err();
    assert_eq!(err, LuaError::MemoryLimit { limit: 256 * 1024 });
    assert_next_run_works();
}

#[test]
fn memory_bomb_hits_the_limit() {
    let limits = LuaLimits {
        max_memory: Some(16 * 1024 * 1024),
        ..LuaLimits::default()
    };
    let start = Instant::now();
    let err = run_with(
        "local t = {} while true do t[#t+1] = string.rep('x', 1024) end",
        &json!({}),
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err,
        LuaError::MemoryLimit {
            limit: 16 * 1024 * 1024
        }
    );
    assert_eq!(err.kind(), ErrorKind::LuaMemoryLimit);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_next_run_works();
    // One huge allocation, and one caught by pcall, behave the same.
    for src in [
        "local s = string.rep('x', 100 * 1024 * 1024) return {}",
        "local ok = pcall(string.rep, 'x', 100 * 1024 * 1024) return { ok = ok }",
        "local t = {} while true do pcall(function() t[#t+1] = string.rep('x', 1024) end) end",
    ] {
        let err = run_with(src, &json!({}), &limits).unwrap_err();
        assert_eq!(
            err,
            LuaError::MemoryLimit {
                limit: 16 * 1024 * 1024
            },
            "{src}"
        );
        assert_next_run_works();
    }
    // The limit is per run: many runs of a moderate allocation all succeed.
    for _ in 0..5 {
        run_with(
            "local s = string.rep('x', 8 * 1024 * 1024) return { n = #s }",
            &json!({}),
            &limits,
        )
        .unwrap();
    }
}

#[test]
fn log_flood_hits_the_memory_limit() {
    let limits = LuaLimits {
        max_memory: Some(1024 * 1024),
        ..LuaLimits::default()
    };
    let err = run_with(
        "local s = string.rep('x', 1000) while true do log(s) end",
        &json!({}),
        &limits,
    )
    .unwrap_err();
    assert_eq!(err, LuaError::MemoryLimit { limit: 1024 * 1024 });
    assert_next_run_works();
}

#[test]
fn cancel_flag() {
    let flag = Arc::new(AtomicBool::new(false));
    let setter = Arc::clone(&flag);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        setter.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let limits = LuaLimits {
        max_instructions: None,
        ..LuaLimits::default()
    };
    let start = Instant::now();
    let err = execute(
        &LuaScript::new("while true do end"),
        &json!({}),
        &[],
        &INFO,
        &limits,
        Some(&flag),
    )
    .unwrap_err();
    t.join().unwrap();
    assert_eq!(err, LuaError::Cancelled);
    assert_eq!(err.kind(), ErrorKind::RunCancelled);
    assert!(start.elapsed() < Duration::from_secs(2));
    // Already-raised flag: nothing runs.
    assert_eq!(
        execute(
            &LuaScript::new("return {}"),
            &json!({}),
            &[],
            &INFO,
            &limits,
            Some(&flag)
        ),
        Err(LuaError::Cancelled)
    );
    // Unraised flag: runs normally, next run fine.
    let idle = AtomicBool::new(false);
    let o = execute(
        &LuaScript::new("return { a = 1 }"),
        &json!({}),
        &[],
        &INFO,
        &limits,
        Some(&idle),
    )
    .unwrap();
    assert_eq!(o.output.get("a"), Some(&json!(1)));
    assert_next_run_works();
}

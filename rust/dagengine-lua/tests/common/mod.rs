//! Helpers shared by the sandbox's test files.
#![allow(dead_code)] // each test file uses some of them

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dagengine_lua::{execute, LuaError, LuaLimits, LuaOutput, LuaScript, NodeInfo};
use serde_json::{json, Value};

pub const INFO: NodeInfo<'static> = NodeInfo {
    node_id: "node",
    run_id: "run-1",
    attempt: 1,
};

pub fn run_with(src: &str, inputs: &Value, limits: &LuaLimits) -> Result<LuaOutput, LuaError> {
    execute(&LuaScript::new(src), inputs, &[], &INFO, limits, None)
}

pub fn run(src: &str) -> Result<LuaOutput, LuaError> {
    run_with(src, &json!({}), &LuaLimits::default())
}

pub fn out(src: &str) -> Value {
    Value::Object(run(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).output)
}

pub fn assert_next_run_works() {
    assert_eq!(out("return { ok = true }"), json!({ "ok": true }));
}

/// Runs `src` on a thread of its own after `setup` (on that thread) and waits at most
/// `wait`, so a script that is never stopped fails the test instead of hanging it (the
/// thread is left spinning). Returns the result and the time the script took.
pub fn run_bounded_after(
    setup: impl FnOnce() + Send + 'static,
    src: &str,
    limits: LuaLimits,
    cancel: Option<Arc<AtomicBool>>,
    wait: Duration,
) -> (Result<LuaOutput, LuaError>, Duration) {
    let (tx, rx) = mpsc::channel();
    let shown = src.to_owned();
    let src = src.to_owned();
    std::thread::spawn(move || {
        setup();
        let start = Instant::now();
        let r = execute(
            &LuaScript::new(src.as_str()),
            &json!({}),
            &[],
            &INFO,
            &limits,
            cancel.as_deref(),
        );
        let _ = tx.send((r, start.elapsed()));
    });
    rx.recv_timeout(wait)
        .unwrap_or_else(|_| panic!("never stopped: {shown}"))
}

/// [`run_bounded_after`] with nothing to set up.
pub fn run_bounded(
    src: &str,
    limits: LuaLimits,
    cancel: Option<Arc<AtomicBool>>,
    wait: Duration,
) -> (Result<LuaOutput, LuaError>, Duration) {
    run_bounded_after(|| (), src, limits, cancel, wait)
}

/// A cancel flag raised by a thread of its own after `delay`, and when it was raised (for
/// the time from the cancel to the script's end).
pub fn cancel_after(delay: Duration) -> (Arc<AtomicBool>, Arc<Mutex<Option<Instant>>>) {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let raised = Arc::new(Mutex::new(None));
    let at = Arc::clone(&raised);
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        *at.lock().unwrap() = Some(Instant::now());
        flag.store(true, Ordering::Relaxed);
    });
    (cancel, raised)
}

//! `DAGENGINE_LUA_SIGNAL=off`: no watchdog, every script that needs the hook gets it at
//! its start. (A test binary of its own: the setting is read once per process.)

use std::time::{Duration, Instant};

use dagengine_lua::{execute, late_hooks, LuaError, LuaLimits, LuaScript, NodeInfo};
use serde_json::json;

#[test]
fn with_late_hooks_off_a_script_is_stopped_by_a_hook_set_at_its_start() {
    std::env::set_var("DAGENGINE_LUA_SIGNAL", "off");
    let limit = Duration::from_millis(100);
    let limits = LuaLimits {
        timeout: Some(limit),
        ..LuaLimits::default()
    };
    let info = NodeInfo {
        node_id: "node",
        run_id: "run-1",
        attempt: 1,
    };
    let start = Instant::now();
    let r = execute(
        &LuaScript::new("while true do end"),
        &json!({}),
        &[],
        &info,
        &limits,
        None,
    );
    assert_eq!(r.unwrap_err(), LuaError::Timeout { limit });
    assert!(start.elapsed() < 2 * limit);
    assert_eq!(late_hooks(), 0);
}

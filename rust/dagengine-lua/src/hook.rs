//! The count hook's timing, shared by the engine (which sets the hook at a script's start)
//! and the watchdog (which sets it late, see `watchdog`).

use std::os::raw::c_int;
use std::time::Duration;

/// The hook runs every this many VM instructions: the granularity of the
/// instruction budget, the deadline and the cancel flag.
pub(crate) const HOOK_INTERVAL: u32 = 1000;

/// [`HOOK_INTERVAL`] as the C API takes it.
#[allow(clippy::cast_possible_wrap)]
pub(crate) const HOOK_COUNT: c_int = HOOK_INTERVAL as c_int;

/// How often the watchdog looks at the running scripts.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A run whose deadline is closer than this gets the hook from its start: a late hook
/// could overshoot it by a few ticks.
pub(crate) const EAGER_WITHIN: Duration = Duration::from_millis(20);

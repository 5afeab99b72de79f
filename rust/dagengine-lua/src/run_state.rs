//! One execution's state as the hook and the host functions see it ([`RunState`]: limits,
//! counters, the cancel flag, logs), the count hook that enforces the limits, and how a
//! state finds its `RunState` (a registry entry).

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mlua::{ffi, Value as LuaValue};

use crate::hook::{EAGER_WITHIN, HOOK_COUNT, HOOK_INTERVAL};
use crate::watchdog;
use crate::LuaLimits;

/// Lends an execution's cancel flag to the hook for as long as the guard lives. (A
/// scoped userdata did the same without `unsafe`, at a cost of a quarter of a
/// microsecond per execution.)
pub(crate) struct CancelGuard<'a> {
    run: &'a RunState,
    _flag: std::marker::PhantomData<&'a AtomicBool>,
}

impl<'a> CancelGuard<'a> {
    pub(crate) fn new(run: &'a RunState, flag: Option<&'a AtomicBool>) -> Self {
        run.cancel
            .set(flag.map_or(std::ptr::null(), std::ptr::from_ref));
        CancelGuard {
            run,
            _flag: std::marker::PhantomData,
        }
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.run.cancel.set(std::ptr::null());
    }
}

/// Which limit stopped the script.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Trip {
    Instructions,
    Timeout,
    Cancelled,
    Memory,
}

impl Trip {
    /// The error object a script sees (its handlers cannot keep it: see `must_abort`).
    pub(crate) fn message(self) -> &'static CStr {
        match self {
            Trip::Instructions => c"instruction limit exceeded",
            Trip::Timeout => c"wall-time limit exceeded",
            Trip::Cancelled => c"execution cancelled",
            Trip::Memory => c"memory limit exceeded",
        }
    }

    pub(crate) fn lua_error(self) -> mlua::Error {
        mlua::Error::runtime(self.message().to_string_lossy())
    }
}

/// The registry key (its address) of the light userdata pointing at a state's [`RunState`].
pub(crate) static RUN_KEY: u8 = 0;

pub(crate) fn run_key() -> *const std::os::raw::c_void {
    std::ptr::from_ref(&RUN_KEY).cast()
}

/// The count hook: every [`HOOK_INTERVAL`] instructions, [`RunState::check`], and a Lua
/// error if a limit is reached.
///
/// The hook is this crate's own rather than mlua's: to raise an error from a hook, mlua
/// empties the stack of the interrupted function first (`lua_settop(L, 0)`), which runs
/// that function's pending `__close` handlers right there, inside the hook, where Lua
/// calls no hook: a `__close` that loops could then never be stopped. Here the error is
/// raised as is: Lua closes those variables while it unwinds to the protected call, with
/// hooks on again, and a `__close` that still runs is stopped at its next hook (see
/// [`RunState::check`]).
#[allow(unsafe_code)]
pub(crate) unsafe extern "C-unwind" fn limit_hook(l: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {
    // SAFETY: Lua calls the hook on a running state, with `LUA_MINSTACK` free slots. The
    // registry entry is set when the engine is built and points at its `RunState`, which
    // outlives the state. Nothing with a destructor is alive when `lua_error` jumps out.
    unsafe {
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, run_key());
        let run = ffi::lua_touserdata(l, -1).cast::<RunState>().cast_const();
        ffi::lua_pop(l, 1);
        let Some(run) = run.as_ref() else { return };
        let count = ffi::lua_gethookcount(l);
        match run.check_hook(count) {
            Ok(soon) => {
                // Every instruction once the deadline is near (see `check_hook`), else
                // every `HOOK_INTERVAL` (also after a watchdog's urgent signal for a
                // script that turned out not to be due).
                let want = if soon { 1 } else { HOOK_COUNT };
                if count != want {
                    ffi::lua_sethook(l, Some(limit_hook), ffi::LUA_MASKCOUNT, want);
                }
            }
            Err(trip) => {
                ffi::lua_pushstring(l, trip.message().as_ptr());
                ffi::lua_error(l);
            }
        }
    }
}

/// The sandbox's `coroutine.resume` of a coroutine (argument 1, a thread: the caller
/// checks), as Lua's (`luaB_coresume`): `true` and what it yielded or returned, or `false`
/// and its error. While it runs, the watchdog knows it as the running state: a due script
/// gets the hook there at the next instruction (see `watchdog::resuming`).
#[allow(unsafe_code)]
pub(crate) unsafe extern "C-unwind" fn host_resume(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua calls this with argument 1 a thread (the sandbox's `coroutine.resume`
    // and `coroutine.wrap` check it). Nothing between `resuming` and `resumed` can raise.
    unsafe {
        let co = ffi::lua_tothread(l, 1);
        let narg = ffi::lua_gettop(l) - 1;
        if co.is_null() || ffi::lua_checkstack(co, narg) == 0 {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_pushstring(l, c"too many arguments to resume".as_ptr());
            return 2;
        }
        ffi::lua_xmove(l, co, narg);
        let was = watchdog::resuming(co);
        let mut nres: c_int = 0;
        let status = ffi::lua_resume(co, l, narg, &raw mut nres);
        watchdog::resumed(was);
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            if ffi::lua_checkstack(l, nres + 1) == 0 {
                ffi::lua_pop(co, nres);
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushstring(l, c"too many results to resume".as_ptr());
                return 2;
            }
            ffi::lua_pushboolean(l, 1);
            ffi::lua_xmove(co, l, nres);
            nres + 1
        } else {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_xmove(co, l, 1);
            2
        }
    }
}

/// Per-execution state shared with the hook and host functions.
pub(crate) struct RunState {
    pub(crate) active: Cell<bool>,
    pub(crate) instructions: Cell<u64>,
    pub(crate) max_instructions: Cell<u64>,
    pub(crate) deadline: Cell<Option<Instant>>,
    /// When the hook last ran (or the run started), and whether the deadline is nearer
    /// than the hook's last interval: then the hook runs at every instruction.
    pub(crate) last_hook: Cell<Instant>,
    pub(crate) soon: Cell<bool>,
    /// The caller's cancel flag while an execution with one runs (else null); see
    /// [`CancelGuard`].
    pub(crate) cancel: Cell<*const AtomicBool>,
    pub(crate) memory_limited: Cell<bool>,
    pub(crate) tripped: Cell<Option<Trip>>,
    pub(crate) logs: RefCell<Vec<String>>,
    pub(crate) log_bytes: Cell<usize>,
    pub(crate) log_limit: Cell<usize>,
    /// The state scripts run on; [`limit_hook`] is set on it only while a script runs.
    pub(crate) main: Cell<*mut ffi::lua_State>,
}

impl RunState {
    pub(crate) fn new() -> Self {
        RunState {
            active: Cell::new(false),
            instructions: Cell::new(0),
            max_instructions: Cell::new(u64::MAX),
            deadline: Cell::new(None),
            last_hook: Cell::new(Instant::now()),
            soon: Cell::new(false),
            cancel: Cell::new(std::ptr::null()),
            memory_limited: Cell::new(false),
            tripped: Cell::new(None),
            logs: RefCell::new(Vec::new()),
            log_bytes: Cell::new(0),
            log_limit: Cell::new(usize::MAX),
            main: Cell::new(std::ptr::null_mut()),
        }
    }

    /// Sets the hook on the main state now if it is not set (the watchdog would set it
    /// late). Coroutines copy their creator's hook when created, never later, so the
    /// sandbox's `coroutine.create` and `coroutine.wrap` call this first.
    #[allow(unsafe_code)]
    pub(crate) fn arm_hook(&self) {
        let main = self.main.get();
        if !main.is_null() {
            // SAFETY: `main` is this engine's live main state, on this thread; setting a
            // hook is allowed at any point.
            unsafe {
                if ffi::lua_gethookmask(main) == 0 {
                    ffi::lua_sethook(main, Some(limit_hook), ffi::LUA_MASKCOUNT, HOOK_COUNT);
                }
            }
        }
    }

    /// Sets the hook for a run with these limits: at once where it must count every
    /// instruction or the deadline is near; only if the script runs long where there is a
    /// deadline or a cancel flag to check (the returned guard; see `watchdog`); not at all
    /// where there is nothing to enforce.
    /// The watchdog also watches the deadline and the cancel flag (`cancel`, which must
    /// outlive the guard) of a script that has the hook from its start: a due script gets
    /// the hook at its next instruction.
    pub(crate) fn start_hook(
        &self,
        limits: &LuaLimits,
        cancel: Option<&AtomicBool>,
        bounded: bool,
    ) -> Option<watchdog::Entered> {
        // A bounded chunk (see `bounded`) runs fewer instructions than the hook's interval:
        // the budget could not stop it, nor the cancel flag (checked before it starts) be
        // raised in time to matter; a deadline is still watched.
        // The deadline is the timeout's or a preemption's (see `execute_item_preemptible`),
        // which is watched late however close it is.
        let eager = (limits.max_instructions.is_some() && !bounded)
            || limits.timeout.is_some_and(|t| t < EAGER_WITHIN);
        let deadline = self.deadline.get();
        if !eager && deadline.is_none() && (cancel.is_none() || bounded) {
            return None;
        }
        if eager {
            self.arm_hook();
        }
        if deadline.is_none() && cancel.is_none() {
            return None;
        }
        let watch = watchdog::Watch {
            late: !eager,
            deadline,
            cancel: cancel.map_or(std::ptr::null(), std::ptr::from_ref),
        };
        let watched = watchdog::enter(self.main.get(), Some(limit_hook), &watch);
        if watched.is_none() {
            self.arm_hook();
        }
        watched
    }

    /// Takes the hook off the main state (between scripts it has none).
    #[allow(unsafe_code)]
    pub(crate) fn disarm_hook(&self) {
        let main = self.main.get();
        if !main.is_null() {
            // SAFETY: as in `arm_hook`.
            unsafe {
                if ffi::lua_gethookmask(main) != 0 {
                    ffi::lua_sethook(main, None, 0, 0);
                }
            }
        }
    }

    /// Records that `t` stopped the run.
    fn trip(&self, t: Trip) -> Trip {
        self.tripped.set(Some(t));
        t
    }

    /// The hook's check after `count` instructions: [`check`](Self::check), and whether
    /// the deadline is nearer than the time since the last hook (then the hook is to run
    /// at every instruction: each may be a long C call).
    pub(crate) fn check_hook(&self, count: c_int) -> Result<bool, Trip> {
        let charge = u64::try_from(count).unwrap_or(0);
        let looked = self.check_after(charge)?;
        if let (Some(now), Some(deadline), false) = (looked, self.deadline.get(), self.soon.get()) {
            let last = self.last_hook.replace(now);
            if deadline.saturating_duration_since(now) <= now.saturating_duration_since(last) {
                self.soon.set(true);
            }
        }
        Ok(self.soon.get())
    }

    /// The hook's check: charges the instructions and looks at the deadline and the
    /// cancel flag; `Err` when the script must stop.
    pub(crate) fn check(&self) -> Result<(), Trip> {
        self.check_after(u64::from(HOOK_INTERVAL)).map(drop)
    }

    /// [`check`](Self::check) charging `charge` instructions; the time it compared with
    /// the deadline, if it did.
    fn check_after(&self, charge: u64) -> Result<Option<Instant>, Trip> {
        if !self.active.get() {
            return Ok(None);
        }
        // Once tripped, keep failing so code that runs after the error anyway (a `__close`
        // while the error unwinds the stack, say) cannot keep running.
        if let Some(t) = self.tripped.get() {
            return Err(t);
        }
        let n = self.instructions.get() + charge;
        self.instructions.set(n);
        if n > self.max_instructions.get() {
            return Err(self.trip(Trip::Instructions));
        }
        let mut looked = None;
        if let Some(deadline) = self.deadline.get() {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.trip(Trip::Timeout));
            }
            looked = Some(now);
        }
        if self.cancelled() {
            return Err(self.trip(Trip::Cancelled));
        }
        Ok(looked)
    }

    /// For the sandbox's wrappers: the limit error if a limit was reached in this run.
    pub(crate) fn abort_if_tripped(&self) -> mlua::Result<()> {
        match self.tripped.get() {
            Some(t) => Err(t.lua_error()),
            None => Ok(()),
        }
    }

    #[allow(unsafe_code)]
    pub(crate) fn cancelled(&self) -> bool {
        let flag = self.cancel.get();
        // SAFETY: non-null only while a `CancelGuard` borrowing the flag is alive (the
        // guard clears it on drop, also when unwinding), and the hook's check, the caller,
        // runs only inside the execution that guard spans.
        !flag.is_null() && unsafe { (*flag).load(Ordering::Relaxed) }
    }

    /// Whether an error caught by `pcall`/`xpcall`/`coroutine.resume` must be
    /// re-raised because it is a limit error.
    pub(crate) fn must_abort(&self, err: &LuaValue) -> bool {
        if self.tripped.get().is_some() {
            return true;
        }
        let oom = match err {
            LuaValue::Error(e) => is_memory_error(e),
            LuaValue::String(s) => &*s.as_bytes() == b"not enough memory",
            _ => false,
        };
        if oom && self.memory_limited.get() {
            self.tripped.set(Some(Trip::Memory));
            return true;
        }
        false
    }

    pub(crate) fn log(&self, line: &mlua::String) -> mlua::Result<()> {
        let line = line.to_string_lossy();
        // Logs live on the Rust heap, outside Lua's allocator; charge them
        // against the memory limit so `log` cannot be used to exhaust memory.
        let total = self.log_bytes.get().saturating_add(line.len());
        if total > self.log_limit.get() {
            self.tripped.set(Some(Trip::Memory));
            return Err(Trip::Memory.lua_error());
        }
        self.log_bytes.set(total);
        self.logs.borrow_mut().push(line);
        Ok(())
    }
}

/// Whether `e` is (or wraps) a memory error.
pub(crate) fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

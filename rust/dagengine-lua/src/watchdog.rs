//! The hook installed late: how a script without an instruction limit still stops.
//!
//! Lua 5.4 counts instructions with a hook, and once any count hook is set the VM stops at
//! *every* instruction to decrement the counter (`luaG_traceexec`) and at every return
//! (`rethook`): about a tenth of a short node's time. A script with an instruction limit
//! needs that from its first instruction. One with only a wall-time limit, a cancel flag or
//! nothing at all needs it only once it has run for a while, and most node scripts are done
//! in microseconds. So such a script starts with no hook at all:
//!
//! * [`enter`] marks the calling thread as running a script (two stores, no syscall);
//! * the watchdog thread looks at every marked thread each millisecond ([`TICK`]). A
//!   thread it finds in the same script on two looks in a row is sent [`Watchdog::signal`];
//! * the signal's handler runs on that thread, between two of its instructions, and sets
//!   the count hook on the state it is running, as the standalone `lua` does on Ctrl-C
//!   (`lua_sethook` is made to be called from a signal handler). From then on the hook
//!   checks the deadline and the cancel flag every 1,000 instructions, as it does for a
//!   run that had it from the start.
//!
//! A script is thus stopped at most about two ticks (plus 1,000 instructions) later than
//! with the hook from the start. A deadline closer than [`EAGER_WITHIN`] gets the hook at
//! once. Coroutines inherit their creator's hook when created, not later: the sandbox's
//! `coroutine.create`/`wrap` set the hook first (see `RunState::arm_hook`), so only the
//! scripts that use coroutines pay for it.
//!
//! The watchdog parks after a second with no script running and [`enter`] wakes it. In a
//! forked child (the thread does not exist there), or where no real-time signal is free,
//! [`enter`] returns `None` and every script gets the hook at once.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use mlua::ffi;

use crate::engine::HOOK_INTERVAL;

/// [`HOOK_INTERVAL`] as the C API takes it.
#[allow(clippy::cast_possible_wrap)]
pub(crate) const HOOK_COUNT: c_int = HOOK_INTERVAL as c_int;

/// How often the watchdog looks at the running scripts.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A run whose deadline is closer than this gets the hook from its start: a late hook
/// could overshoot it by a few ticks.
pub(crate) const EAGER_WITHIN: Duration = Duration::from_millis(20);

/// Looks with no script running before the watchdog parks (about a second).
const IDLE_TICKS: u32 = 1000;

/// One thread that runs scripts.
struct Slot {
    /// Odd while a script runs on the thread; bumped by [`enter`] and by [`Entered`]'s drop.
    generation: AtomicU64,
    thread: libc::pthread_t,
    /// The watchdog's own: the generation seen on its last look and the last one signalled.
    seen: AtomicU64,
    signalled: AtomicU64,
}

struct Shared {
    /// The real-time signal whose handler is [`on_signal`].
    signal: c_int,
    slots: Mutex<Vec<Arc<Slot>>>,
    parked: AtomicBool,
    signals: AtomicU64,
}

/// The process's watchdog thread and the signal it sends.
struct Watchdog {
    shared: Arc<Shared>,
    thread: Thread,
}

static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();

thread_local! {
    /// The state running a script on this thread (null between scripts) and the hook to
    /// set on it: what the signal handler reads. Atomics, because a handler may interrupt
    /// any write in this thread.
    static TARGET: AtomicPtr<ffi::lua_State> = const { AtomicPtr::new(ptr::null_mut()) };
    static TARGET_HOOK: AtomicPtr<()> = const { AtomicPtr::new(ptr::null_mut()) };
    /// This thread's slot, registered on its first script and removed when it exits.
    static SLOT: RefCell<Option<Registered>> = const { RefCell::new(None) };
}

/// Removes a thread's slot when the thread exits. The watchdog signals only while it holds
/// the slot list's lock, so it never signals a thread that has gone.
struct Registered(Arc<Slot>, Arc<Shared>);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slots = lock(&self.1.slots);
        slots.retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Signals sent so far (scripts that ran long enough to get the hook late); for tests.
pub(crate) fn signals_sent() -> u64 {
    watchdog().map_or(0, |w| w.shared.signals.load(Ordering::Relaxed))
}

/// Set in a child process by `fork` (see [`start`]): the watchdog thread is not there.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

fn watchdog() -> Option<&'static Watchdog> {
    if FORKED.load(Ordering::Relaxed) {
        return None;
    }
    WATCHDOG.get_or_init(start).as_ref()
}

/// A script is running on this thread until the returned guard drops: the watchdog will
/// have `hook` set on `state` (every [`HOOK_INTERVAL`] instructions) if it runs for long.
/// `None` when there is no watchdog ([`available`]); the caller sets the hook itself then.
pub(crate) fn enter(state: *mut ffi::lua_State, hook: Option<ffi::lua_Hook>) -> Option<Entered> {
    let hook = hook?;
    let w = watchdog()?;
    let slot = SLOT.with(|s| {
        let mut s = s.borrow_mut();
        let registered = s.get_or_insert_with(|| {
            let slot = Arc::new(Slot {
                generation: AtomicU64::new(0),
                // SAFETY: `pthread_self` has no preconditions.
                thread: unsafe { libc::pthread_self() },
                seen: AtomicU64::new(0),
                signalled: AtomicU64::new(0),
            });
            lock(&w.shared.slots).push(Arc::clone(&slot));
            Registered(slot, Arc::clone(&w.shared))
        });
        Arc::as_ptr(&registered.0)
    });
    TARGET_HOOK.with(|h| h.store(hook as *mut (), Ordering::Relaxed));
    TARGET.with(|t| t.store(state, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    // SAFETY: this thread's `SLOT` keeps the slot alive until the thread exits.
    let generation = unsafe { &(*slot).generation };
    let g = generation.load(Ordering::Relaxed);
    generation.store(g | 1, Ordering::SeqCst);
    if w.shared.parked.load(Ordering::SeqCst) && w.shared.parked.swap(false, Ordering::SeqCst) {
        w.thread.unpark();
    }
    Some(Entered { slot })
}

/// The script on this thread is done (see [`enter`]).
pub(crate) struct Entered {
    /// This thread's slot (it outlives the guard, which cannot leave the thread).
    slot: *const Slot,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Clear the target before the generation: a signal from here on finds no state.
        TARGET.with(|t| t.store(ptr::null_mut(), Ordering::Relaxed));
        compiler_fence(Ordering::SeqCst);
        // SAFETY: see `Entered::slot`.
        let generation = unsafe { &(*self.slot).generation };
        let g = generation.load(Ordering::Relaxed);
        generation.store(g + 1, Ordering::Release);
    }
}

/// The signal handler: set the hook on the state running on this thread, if any.
extern "C" fn on_signal(_: c_int) {
    let state = TARGET.with(|t| t.load(Ordering::Relaxed));
    if state.is_null() {
        return;
    }
    let hook = TARGET_HOOK.with(|h| h.load(Ordering::Relaxed));
    if hook.is_null() {
        return;
    }
    // SAFETY: `hook` was stored from a `lua_Hook` by `enter`. `state` is the state running a
    // script on this very thread (cleared before the script's guard goes), and
    // `lua_sethook` may be called from a signal handler interrupting that state: it only
    // stores the hook fields and marks the running Lua frames to call it.
    unsafe {
        let hook: ffi::lua_Hook = std::mem::transmute::<*mut (), ffi::lua_Hook>(hook);
        if ffi::lua_gethookmask(state) == 0 {
            ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, HOOK_COUNT);
        }
    }
}

/// Installs the handler on a free real-time signal and starts the thread.
fn start() -> Option<Watchdog> {
    let signal = install_handler()?;
    let shared = Arc::new(Shared {
        signal,
        slots: Mutex::new(Vec::new()),
        parked: AtomicBool::new(false),
        signals: AtomicU64::new(0),
    });
    let s = Arc::clone(&shared);
    let handle = std::thread::Builder::new()
        .name("dagengine-lua-watchdog".into())
        .spawn(move || watch(&s))
        .ok()?;
    // SAFETY: registers a handler that only stores to an atomic.
    if unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) } != 0 {
        return None;
    }
    Some(Watchdog {
        shared,
        thread: handle.thread().clone(),
    })
}

/// The first real-time signal with no handler yet (glibc keeps the ones below
/// `SIGRTMIN` for itself), with [`on_signal`] installed on it.
fn install_handler() -> Option<c_int> {
    // SAFETY: plain libc calls on zeroed, then filled, `sigaction` structs.
    unsafe {
        for signal in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &raw mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut action.sa_mask);
            if libc::sigaction(signal, &raw const action, ptr::null_mut()) == 0 {
                return Some(signal);
            }
        }
    }
    None
}

/// The watchdog thread's loop.
fn watch(shared: &Shared) {
    let mut idle = 0u32;
    loop {
        std::thread::sleep(TICK);
        let mut running = false;
        {
            let slots = lock(&shared.slots);
            for slot in slots.iter() {
                let g = slot.generation.load(Ordering::SeqCst);
                if g & 1 == 0 {
                    continue;
                }
                running = true;
                if slot.seen.swap(g, Ordering::Relaxed) == g
                    && slot.signalled.swap(g, Ordering::Relaxed) != g
                {
                    // SAFETY: the slot's thread is alive: it removes its slot (under this
                    // lock) before it exits.
                    unsafe { libc::pthread_kill(slot.thread, shared.signal) };
                    shared.signals.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        idle = if running { 0 } else { idle + 1 };
        if idle >= IDLE_TICKS {
            shared.parked.store(true, Ordering::SeqCst);
            // A script that started before `parked` was set did not see it: look again.
            let busy = lock(&shared.slots)
                .iter()
                .any(|s| s.generation.load(Ordering::SeqCst) & 1 == 1);
            if busy {
                shared.parked.store(false, Ordering::SeqCst);
            } else {
                while shared.parked.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
            idle = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C-unwind" fn hook(_: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {}

    fn raise() {
        let signal = watchdog().expect("a watchdog").shared.signal;
        // SAFETY: sends the watchdog's signal to this thread; the handler runs before
        // `raise` returns.
        assert_eq!(unsafe { libc::raise(signal) }, 0);
    }

    #[test]
    fn the_signal_sets_the_hook_only_on_a_state_running_a_script() {
        let lua = mlua::Lua::new();
        let mut l = ptr::null_mut();
        // SAFETY: only reads the state pointer.
        unsafe { lua.exec_raw::<()>((), |s| l = s).unwrap() };
        // SAFETY: `l` is `lua`'s main state, alive and used on this thread only.
        let mask = || unsafe { ffi::lua_gethookmask(l) };

        raise();
        assert_eq!(
            mask(),
            0,
            "no script runs: the signal must not touch any state"
        );

        let entered = enter(l, Some(hook)).expect("a watchdog");
        raise();
        assert_eq!(mask(), ffi::LUA_MASKCOUNT);
        // SAFETY: as above.
        unsafe {
            assert_eq!(ffi::lua_gethookcount(l), HOOK_COUNT);
            assert_eq!(
                ffi::lua_gethook(l).map(|h| h as usize),
                Some(hook as ffi::lua_Hook as usize)
            );
            ffi::lua_sethook(l, None, 0, 0);
        }

        drop(entered);
        raise();
        assert_eq!(
            mask(),
            0,
            "the script is done: the signal must not set the hook"
        );
    }
}

//! The hook installed late: how a script without an instruction limit still stops.
//!
//! Lua 5.4 counts instructions with a hook, and once any count hook is set the VM stops at
//! *every* instruction to decrement the counter (`luaG_traceexec`) and at every return
//! (`rethook`): about a tenth of a short node's time. A script with an instruction limit
//! needs that from its first instruction. One with only a wall-time limit or a cancel flag
//! needs it only once it has run for a while, and most node scripts are done in
//! microseconds. So such a script starts with no hook at all:
//!
//! * [`enter`] marks the calling thread's slot as running a script (a few stores, no
//!   syscall);
//! * the watchdog thread looks at the slots each millisecond ([`TICK`]). A thread it finds
//!   in the same script on two looks in a row is sent the watchdog's signal, queued with
//!   the slot's index (`pthread_sigqueue`);
//! * the handler runs on that thread, between two of its instructions, and sets the count
//!   hook on the state the slot names, as the standalone `lua` does on Ctrl-C (`lua_sethook`
//!   is made to be called from a signal handler). From then on the hook checks the deadline
//!   and the cancel flag every 1,000 instructions, as for a run that had it from the start.
//!
//! The handler touches no thread-local (in a library `dlopen`ed by Python, the first read
//! of one on a thread may allocate) and nothing but the slot, in a static array: it reads
//! the index from the signal, checks that the signal was queued by this process for this
//! very thread, and says it ran. A thread registers its slot before its first late script
//! and unblocks the signal then.
//!
//! A script is thus stopped about two ticks (plus 1,000 instructions) later than with the
//! hook from the start, if the watchdog thread gets a core in time.
//!
//! One instruction can be a long C call (`s:upper()` on 10 MB, `table.concat`, `..`), so
//! 1,000 of them can take seconds. The watchdog therefore also knows each script's deadline
//! and cancel flag, also for scripts that had the hook from their start: once the deadline
//! has passed or the flag is up, it sends the signal marked [`URGENT`], and the handler sets
//! the hook with a count of 1 on the state running then (the main state, or the coroutine
//! the sandbox's `coroutine.resume` entered, see [`resuming`]): the hook runs at the next
//! instruction and stops the script. It sends it again every [`URGE_TICKS`] while the
//! script runs (a signal that came while the thread was setting a hook itself may be lost). A deadline closer than
//! [`EAGER_WITHIN`](crate::hook::EAGER_WITHIN) gets the hook at once. Coroutines copy
//! their creator's hook when created, not later: the sandbox's `coroutine.create`/`wrap` set the hook first (see
//! `RunState::arm_hook`), so only the scripts that use coroutines pay for it.
//!
//! Late hooks are off, and every script that needs the hook gets it at its start, in a
//! forked child (the thread does not exist there), when no real-time signal is free, when
//! `DAGENGINE_LUA_SIGNAL=off`, when more than [`MAX_SLOTS`] threads run scripts, and for
//! good once a signal went unanswered or another handler took the signal over. The signal
//! is the highest free real-time signal, or the one `DAGENGINE_LUA_SIGNAL` names.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::Instant;

use mlua::ffi;

use crate::hook::{HOOK_COUNT, TICK};

/// Looks with no script running before the watchdog parks (about a second).
const IDLE_TICKS: u32 = 1000;

/// Looks after a signal within which its handler must have run (the thread may not get a
/// core at once on a busy machine).
const ACK_TICKS: u32 = 1000;

/// Threads that can run late-hooked scripts at once.
pub(crate) const MAX_SLOTS: usize = 1024;

/// Marks a signal's slot index: the script is due (deadline passed or cancelled), run the
/// hook at the next instruction.
const URGENT: usize = 1 << 16;

/// Looks between two urgent signals to the same script.
const URGE_TICKS: u64 = 5;

/// No deadline (in [`Slot::deadline`]).
const NO_DEADLINE: u64 = u64::MAX;

/// One thread that runs scripts.
struct Slot {
    /// Taken by a live thread.
    taken: AtomicBool,
    /// The thread's `pthread_t`.
    thread: AtomicUsize,
    /// Odd while a script runs on the thread; bumped by [`enter`] and by [`Entered`]'s drop.
    generation: AtomicU64,
    /// The state running the script (null between scripts) and the hook to set on it.
    state: AtomicPtr<ffi::lua_State>,
    hook: AtomicPtr<()>,
    /// Whether the script's hook is to be set late (else it has it from its start).
    late: AtomicBool,
    /// The script's deadline, in nanoseconds from [`epoch`] ([`NO_DEADLINE`] if none).
    deadline: AtomicU64,
    /// The script's cancel flag (null if none), and whether the watchdog is reading it:
    /// [`Entered`]'s drop waits until it is not (the flag lives as long as the script).
    cancel: AtomicPtr<AtomicBool>,
    reading: AtomicBool,
    /// The generation the handler last ran for.
    acked: AtomicU64,
    /// The watchdog's own: the generation seen on its last look, the last one signalled
    /// and the looks since.
    seen: AtomicU64,
    signalled: AtomicU64,
    waited: AtomicU64,
    /// The generation last sent an urgent signal, and the looks since.
    urged: AtomicU64,
    urge_wait: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            taken: AtomicBool::new(false),
            thread: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            state: AtomicPtr::new(ptr::null_mut()),
            hook: AtomicPtr::new(ptr::null_mut()),
            late: AtomicBool::new(false),
            deadline: AtomicU64::new(NO_DEADLINE),
            cancel: AtomicPtr::new(ptr::null_mut()),
            reading: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            signalled: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            urged: AtomicU64::new(0),
            urge_wait: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; MAX_SLOTS] = [const { Slot::new() }; MAX_SLOTS];

/// Slots below this index have been taken at some point: the watchdog looks at those.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Held to take or give back a slot and while the watchdog signals, so that it never
/// signals a thread that has exited.
static REGISTRY: Mutex<()> = Mutex::new(());

/// Late hooks are off for good (see the module docs).
static OFF: AtomicBool = AtomicBool::new(false);

/// Set in a child process by `fork`: the watchdog thread is not there.
static FORKED: AtomicBool = AtomicBool::new(false);

static SIGNALS: AtomicU64 = AtomicU64::new(0);

/// The process's watchdog thread and its signal.
struct Watchdog {
    signal: c_int,
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();

/// The instant deadlines are counted from (set with the watchdog).
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `at` in nanoseconds from [`epoch`].
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(NO_DEADLINE - 1)
}

fn registry() -> MutexGuard<'static, ()> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives the thread's slot back when the thread exits.
struct Release(usize);

impl Drop for Release {
    fn drop(&mut self) {
        // A forked child may have inherited the registry locked: keep the slot there.
        if FORKED.load(Ordering::Relaxed) {
            return;
        }
        let _registry = registry();
        SLOTS[self.0].taken.store(false, Ordering::SeqCst);
    }
}

thread_local! {
    /// This thread's slot (an index into [`SLOTS`]), given back when the thread exits.
    static SLOT: RefCell<Option<Release>> = const { RefCell::new(None) };
}

/// Signals sent so far (scripts that ran long enough to get the hook late); for tests.
pub(crate) fn signals_sent() -> u64 {
    SIGNALS.load(Ordering::Relaxed)
}

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

fn watchdog() -> Option<&'static Watchdog> {
    if FORKED.load(Ordering::Relaxed) || OFF.load(Ordering::Relaxed) {
        return None;
    }
    WATCHDOG.get_or_init(start).as_ref()
}

/// This thread's slot, taken on first use.
fn slot(w: &Watchdog) -> Option<usize> {
    if let Some(i) = SLOT.with_borrow(|s| s.as_ref().map(|r| r.0)) {
        return Some(i);
    }
    let i = {
        let _registry = registry();
        let i = SLOTS.iter().position(|s| !s.taken.load(Ordering::SeqCst))?;
        let s = &SLOTS[i];
        // SAFETY: `pthread_self` has no preconditions.
        s.thread
            .store(unsafe { libc::pthread_self() } as usize, Ordering::SeqCst);
        s.state.store(ptr::null_mut(), Ordering::SeqCst);
        s.taken.store(true, Ordering::SeqCst);
        HIGH.fetch_max(i + 1, Ordering::SeqCst);
        i
    };
    // The signal may have been blocked by whoever made this thread.
    // SAFETY: plain libc calls on a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, w.signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, ptr::null_mut());
    }
    SLOT.set(Some(Release(i)));
    Some(i)
}

/// What the watchdog is to know of a script (see [`enter`]).
pub(crate) struct Watch {
    /// Whether the hook is to be set late; else the caller set it.
    pub(crate) late: bool,
    pub(crate) deadline: Option<Instant>,
    /// The script's cancel flag: it must outlive the returned [`Entered`].
    pub(crate) cancel: *const AtomicBool,
}

/// A script is running on this thread until the returned guard drops: the watchdog will
/// have `hook` set on `state` (every [`HOOK_INTERVAL`](crate::hook::HOOK_INTERVAL)
/// instructions) if it runs for long and `watch.late`, and at the next instruction once
/// its deadline has passed or its cancel flag is up.
/// `None` when late hooks are off (see the module docs): the caller sets the hook itself.
pub(crate) fn enter(
    state: *mut ffi::lua_State,
    hook: Option<ffi::lua_Hook>,
    watch: &Watch,
) -> Option<Entered> {
    let hook = hook?;
    let w = watchdog()?;
    ensure_thread(w);
    let i = slot(w)?;
    let s = &SLOTS[i];
    s.hook.store(hook as *mut (), Ordering::Relaxed);
    s.state.store(state, Ordering::Relaxed);
    s.late.store(watch.late, Ordering::Relaxed);
    s.deadline
        .store(watch.deadline.map_or(NO_DEADLINE, nanos), Ordering::Relaxed);
    s.cancel.store(watch.cancel.cast_mut(), Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    let g = s.generation.load(Ordering::Relaxed);
    s.generation.store(g | 1, Ordering::SeqCst);
    if w.parked.load(Ordering::SeqCst) && w.parked.swap(false, Ordering::SeqCst) {
        if let Some(t) = w.thread.get() {
            t.unpark();
        }
    }
    Some(Entered { slot: i })
}

/// The script on this thread is done (see [`enter`]).
pub(crate) struct Entered {
    slot: usize,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        // Clear the state before the generation: a signal from here on finds none.
        s.state.store(ptr::null_mut(), Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let g = s.generation.load(Ordering::Relaxed);
        s.generation.store(g + 1, Ordering::Release);
        // The cancel flag may go once the watchdog no longer reads it: either it loads the
        // pointer after this store (null), or it said it was reading before, and this
        // waits for it (a few loads, on the watchdog thread).
        s.cancel.store(ptr::null_mut(), Ordering::SeqCst);
        while s.reading.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
    }
}

/// The sandbox's `coroutine.resume` is resuming `co` on this thread (until it returns):
/// an urgent signal sets the hook there. Returns the state to give back to
/// [`resumed`]; null (and nothing changes) when no script is watched on this thread.
pub(crate) fn resuming(co: *mut ffi::lua_State) -> *mut ffi::lua_State {
    let Some(i) = SLOT.with_borrow(|s| s.as_ref().map(|r| r.0)) else {
        return ptr::null_mut();
    };
    let s = &SLOTS[i];
    let was = s.state.load(Ordering::Relaxed);
    if !was.is_null() {
        s.state.store(co, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
    }
    was
}

/// The resume that [`resuming`] announced has returned: `was` runs again.
pub(crate) fn resumed(was: *mut ffi::lua_State) {
    if was.is_null() {
        return;
    }
    if let Some(i) = SLOT.with_borrow(|s| s.as_ref().map(|r| r.0)) {
        compiler_fence(Ordering::SeqCst);
        SLOTS[i].state.store(was, Ordering::Relaxed);
    }
}

/// The signal handler: set the hook on the state running a script on this thread, if the
/// signal is the watchdog's for this thread.
extern "C" fn on_signal(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler; `getpid`
    // and `pthread_self` are safe in a handler. The slot is in a static array.
    unsafe {
        let Some(info) = info.as_ref() else { return };
        if info.si_code != libc::SI_QUEUE || info.si_pid() != libc::getpid() {
            return;
        }
        let value = info.si_value().sival_ptr as usize;
        let urgent = value & URGENT != 0;
        let Some(s) = SLOTS.get(value & !URGENT) else {
            return;
        };
        if s.thread.load(Ordering::Relaxed) != libc::pthread_self() as usize {
            return;
        }
        let state = s.state.load(Ordering::Relaxed);
        let hook = s.hook.load(Ordering::Relaxed);
        s.acked
            .store(s.generation.load(Ordering::Relaxed), Ordering::Relaxed);
        if state.is_null() || hook.is_null() {
            return;
        }
        // `state` is running a script on this very thread (it is cleared before the
        // script's guard goes), and `hook` was stored from a `lua_Hook`. `lua_sethook` may
        // interrupt that state: it only stores the hook fields and marks the running Lua
        // frames to call it.
        let hook = std::mem::transmute::<*mut (), ffi::lua_Hook>(hook);
        if urgent {
            // The script is due: the hook at the next instruction (the hook sets its
            // count back if nothing is due after all).
            ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, 1);
        } else if ffi::lua_gethookmask(state) == 0 {
            ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, HOOK_COUNT);
        }
    }
}

/// Installs the handler and starts the thread.
fn start() -> Option<Watchdog> {
    // Before any thread exists: a fork from here on marks the child.
    // SAFETY: registers a handler that only stores to an atomic.
    if unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) } != 0 {
        return None;
    }
    let signal = install_handler()?;
    epoch();
    let w = Watchdog {
        signal,
        parked: AtomicBool::new(false),
        thread: OnceLock::new(),
    };
    Some(w)
}

/// The watchdog thread, started by the first late script.
fn ensure_thread(w: &'static Watchdog) {
    w.thread.get_or_init(|| {
        std::thread::Builder::new()
            .name("dagengine-lua-watchdog".into())
            .spawn(move || watch(w))
            .map_or_else(
                |_| {
                    OFF.store(true, Ordering::SeqCst);
                    std::thread::current()
                },
                |h| h.thread().clone(),
            )
    });
}

/// `DAGENGINE_LUA_SIGNAL`: `off`, a signal number, or unset (pick one).
enum Choice {
    Off,
    Number(c_int),
    Any,
}

fn choice() -> Choice {
    match std::env::var("DAGENGINE_LUA_SIGNAL") {
        Ok(v) if v.eq_ignore_ascii_case("off") || v == "0" => Choice::Off,
        Ok(v) => v.trim().parse().map_or(Choice::Off, Choice::Number),
        Err(_) => Choice::Any,
    }
}

/// [`on_signal`] on the chosen signal: the named one, or the highest real-time signal
/// with no handler (low ones are where code with fixed numbers tends to live).
fn install_handler() -> Option<c_int> {
    let candidates: Vec<c_int> = match choice() {
        Choice::Off => return None,
        Choice::Number(n) => vec![n],
        Choice::Any => (libc::SIGRTMIN()..=libc::SIGRTMAX()).rev().collect(),
    };
    // SAFETY: plain libc calls on zeroed, then filled, `sigaction` structs.
    unsafe {
        for signal in candidates {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &raw mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler();
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&raw mut action.sa_mask);
            if libc::sigaction(signal, &raw const action, ptr::null_mut()) == 0 {
                return Some(signal);
            }
        }
    }
    None
}

/// Whether [`on_signal`] is still the handler of `signal`.
fn still_ours(signal: c_int) -> bool {
    // SAFETY: reads the current action into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, ptr::null(), &raw mut old) == 0 && old.sa_sigaction == handler()
    }
}

/// [`on_signal`] as `sigaction` holds it.
fn handler() -> libc::sighandler_t {
    on_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as libc::sighandler_t
}

/// Turns late hooks off for good, saying why once.
fn give_up(why: &str) {
    if !OFF.swap(true, Ordering::SeqCst) {
        eprintln!("dagengine: Lua limit hooks are now set at each script's start: {why}");
    }
}

/// Whether the script of generation `g` in `s` is due: its deadline has passed or its
/// cancel flag is up.
fn due(s: &Slot, g: u64, now: u64) -> bool {
    let deadline = s.deadline.load(Ordering::Relaxed);
    if deadline != NO_DEADLINE && now >= deadline {
        // The deadline was stored before the generation that `g` was read from.
        return true;
    }
    s.reading.store(true, Ordering::SeqCst);
    let flag = s.cancel.load(Ordering::SeqCst);
    // SAFETY: `flag` stays alive while `reading` is set (see `Entered`'s drop). It may be
    // the next script's flag: an urgent signal for nothing makes the hook run once.
    let up = !flag.is_null()
        && s.generation.load(Ordering::SeqCst) == g
        && unsafe { (*flag).load(Ordering::Relaxed) };
    s.reading.store(false, Ordering::SeqCst);
    up
}

/// Queues the watchdog's signal with `value` (a slot index, maybe [`URGENT`]) for the
/// thread of slot `s`; false if the signal is no longer the watchdog's.
fn send(w: &Watchdog, value: usize, s: &Slot) -> bool {
    if !still_ours(w.signal) {
        give_up("another handler took over the watchdog's signal");
        return false;
    }
    let value = libc::sigval {
        sival_ptr: value as *mut c_void,
    };
    // SAFETY: the slot's thread is alive: it gives its slot back (under the registry lock,
    // held by the caller) before it exits.
    unsafe {
        libc::pthread_sigqueue(
            s.thread.load(Ordering::SeqCst) as libc::pthread_t,
            w.signal,
            value,
        );
    }
    true
}

/// The watchdog thread's loop.
fn watch(w: &Watchdog) {
    let mut idle = 0u32;
    loop {
        std::thread::sleep(TICK);
        let mut running = false;
        {
            let _registry = registry();
            let high = HIGH.load(Ordering::SeqCst);
            let now = nanos(Instant::now());
            for (i, s) in SLOTS[..high].iter().enumerate() {
                if !s.taken.load(Ordering::SeqCst) {
                    continue;
                }
                let g = s.generation.load(Ordering::SeqCst);
                if g & 1 == 0 {
                    continue;
                }
                running = true;
                let again = s.seen.swap(g, Ordering::Relaxed) == g;
                if due(s, g, now) {
                    let first = s.urged.swap(g, Ordering::Relaxed) != g;
                    if first || s.urge_wait.fetch_add(1, Ordering::Relaxed) + 1 >= URGE_TICKS {
                        s.urge_wait.store(0, Ordering::Relaxed);
                        send(w, i | URGENT, s);
                    }
                    continue;
                }
                if !again || !s.late.load(Ordering::Relaxed) {
                    continue;
                }
                if s.signalled.load(Ordering::Relaxed) == g {
                    // Signalled: its handler must have run by now.
                    let waited = s.waited.fetch_add(1, Ordering::Relaxed) + 1;
                    if waited > u64::from(ACK_TICKS) && s.acked.load(Ordering::Relaxed) != g {
                        give_up("a script's thread did not answer the watchdog's signal");
                    }
                    continue;
                }
                s.signalled.store(g, Ordering::Relaxed);
                s.waited.store(0, Ordering::Relaxed);
                if send(w, i, s) {
                    SIGNALS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        idle = if running { 0 } else { idle + 1 };
        if idle >= IDLE_TICKS {
            w.parked.store(true, Ordering::SeqCst);
            // A script that started before `parked` was set did not see it: look again.
            let busy = SLOTS[..HIGH.load(Ordering::SeqCst)].iter().any(|s| {
                s.taken.load(Ordering::SeqCst) && s.generation.load(Ordering::SeqCst) & 1 == 1
            });
            if busy {
                w.parked.store(false, Ordering::SeqCst);
            } else {
                while w.parked.load(Ordering::SeqCst) {
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

    /// Queues the watchdog's signal for this thread's slot, as the watchdog does.
    fn queue(slot: usize) {
        let signal = watchdog().expect("a watchdog").signal;
        let value = libc::sigval {
            sival_ptr: slot as *mut c_void,
        };
        // SAFETY: queues a signal to this thread; its handler runs before the call returns.
        assert_eq!(
            unsafe { libc::pthread_sigqueue(libc::pthread_self(), signal, value) },
            0
        );
    }

    #[test]
    fn the_signal_sets_the_hook_only_on_a_state_running_a_script_on_its_thread() {
        let lua = mlua::Lua::new();
        let mut l = ptr::null_mut();
        // SAFETY: only reads the state pointer.
        unsafe { lua.exec_raw::<()>((), |s| l = s).unwrap() };
        // SAFETY: `l` is `lua`'s main state, alive and used on this thread only.
        let mask = || unsafe { ffi::lua_gethookmask(l) };

        let watch = Watch {
            late: true,
            deadline: None,
            cancel: ptr::null(),
        };
        let entered = enter(l, Some(hook), &watch).expect("late hooks are on");
        let mine = entered.slot;
        // Another slot's index: not this thread's, nothing happens.
        queue((mine + 1) % MAX_SLOTS);
        queue(MAX_SLOTS + 7);
        assert_eq!(mask(), 0);
        // A plain `raise` (not queued with a slot) is ignored too.
        // SAFETY: sends the signal to this thread.
        unsafe { libc::raise(watchdog().unwrap().signal) };
        assert_eq!(mask(), 0);

        queue(mine);
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
        queue(mine);
        assert_eq!(
            mask(),
            0,
            "the script is done: the signal must not set the hook"
        );
    }
}

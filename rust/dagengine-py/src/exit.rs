//! Interpreter exit: the flag that keeps Rust threads out of a finalizing interpreter, and
//! the lock that makes setting it and a session's hand-over to Python one protocol.
//!
//! A thread that takes the GIL while Python finalizes is terminated with `pthread_exit`,
//! which aborts the process when it unwinds through Rust frames. So once `atexit` runs
//! [`mark_exiting`], the Python-node workers (`external`) fail their nodes instead of
//! attaching, and the sessions' thread (`session`) drops replies instead of handing them
//! over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;

static EXITING: AtomicBool = AtomicBool::new(false);

/// Held from a check of the exit flag to the end of the hand-over it allowed, and by
/// [`mark_exiting`] to set the flag: a hand-over that has seen it unset has attached and
/// let go before it is set, so the sessions' thread never waits for the GIL while the
/// interpreter finalizes.
static HANDING_OVER: Mutex<()> = Mutex::new(());

/// Registered with `atexit` by the module: from here on no worker, and no session
/// hand-over, enters the interpreter. Set without the GIL and under the hand-over lock: a
/// hand-over that saw the flag unset may be waiting for the GIL.
#[pyfunction]
pub fn mark_exiting(py: Python<'_>) {
    py.detach(|| {
        let _handing_over = hand_over_lock();
        EXITING.store(true, Ordering::SeqCst);
    });
}

/// Whether the interpreter is exiting (see [`mark_exiting`]).
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// Take the hand-over lock (see [`HANDING_OVER`]).
pub(crate) fn hand_over_lock() -> MutexGuard<'static, ()> {
    HANDING_OVER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls into the `invoke` trampoline in progress, on any thread.
static IN_CALL: AtomicUsize = AtomicUsize::new(0);

/// One call into the trampoline, counted while it lasts: a run can end (a timeout, a
/// cancellation) while an abandoned attempt is still inside Python, and if the interpreter
/// finalized under it the process would abort; at exit, `dagengine._invoke` gives such
/// calls a bounded grace period ([`calls_in_flight`]). An atomic here, not a Python
/// counter in the trampoline: that cost more than a trivial node's own call.
pub(crate) struct InCall;

impl InCall {
    pub(crate) fn enter() -> Self {
        IN_CALL.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many calls into the trampoline are in progress (see [`InCall`]).
#[pyfunction]
pub fn calls_in_flight() -> usize {
    IN_CALL.load(Ordering::SeqCst)
}

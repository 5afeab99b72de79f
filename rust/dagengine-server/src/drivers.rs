//! The threads that drive runs: the next run goes to the thread that went idle last.
//!
//! A driver runs a chain's Lua nodes on its own thread, with that thread's Lua state (its
//! compiled chunks and the tables it reuses) and its allocator heap. tokio's blocking pool,
//! which drove runs before, wakes the thread that has waited *longest*: once it had grown to
//! a few threads (concurrent runs), back-to-back runs rotated over them and each started on
//! a cold thread. A 10,000-node Lua chain then took 1.7-2.0 µs/node instead of ~1.1.
//!
//! Here idle threads wait on a stack, each with a mailbox. A run is handed to the one on
//! top (the most recently used), or to a new thread when none is idle. A thread idle for
//! [`KEEP_ALIVE`] leaves.

use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::runner::lock;

/// How long an idle driver thread waits for a run before it exits. Long, because a new
/// thread pays for its start and its first Lua state.
const KEEP_ALIVE: Duration = Duration::from_mins(5);

type Job = Box<dyn FnOnce() + Send>;

/// An idle thread's mailbox.
struct Mailbox {
    job: Mutex<Option<Job>>,
    thread: Thread,
}

/// A set of driver threads.
pub(crate) struct Drivers {
    /// Idle threads, the most recently idle last.
    idle: Mutex<Vec<Arc<Mailbox>>>,
}

/// The process's driver threads.
pub(crate) static DRIVERS: Drivers = Drivers::new();

/// Runs `job` on an idle driver thread, or on a new one; on the runtime's blocking pool if
/// no thread can be started.
pub(crate) fn spawn(job: Job) {
    if let Err(job) = DRIVERS.spawn(job) {
        if let Ok(rt) = crate::runtime::runtime() {
            rt.spawn_blocking(job);
        }
    }
}

impl Drivers {
    pub(crate) const fn new() -> Self {
        Drivers {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `job` on the most recently idle thread, or on a new one; gives it back if no
    /// thread can be started.
    pub(crate) fn spawn(&'static self, job: Job) -> Result<(), Job> {
        let idle = lock(&self.idle).pop();
        if let Some(mailbox) = idle {
            *lock(&mailbox.job) = Some(job);
            mailbox.thread.unpark();
            return Ok(());
        }
        // The new thread takes the job from here, so that it is not lost with the closure
        // when the thread cannot be started.
        let handoff = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&handoff);
        let started = std::thread::Builder::new()
            .name("dagengine-run".into())
            .spawn(move || {
                if let Some(job) = lock(&theirs).take() {
                    self.serve(job);
                }
            });
        match started {
            Ok(_) => Ok(()),
            Err(_) => Err(lock(&handoff).take().expect("the thread never started")),
        }
    }

    /// A driver thread: run `first`, then whatever is handed to it while it is idle.
    fn serve(&self, first: Job) {
        let me = Arc::new(Mailbox {
            job: Mutex::new(None),
            thread: std::thread::current(),
        });
        let mut next = Some(first);
        while let Some(job) = next.take() {
            job();
            lock(&self.idle).push(Arc::clone(&me));
            next = self.wait(&me);
        }
    }

    /// The next job handed to `me` (which is on the idle stack), or `None` after
    /// [`KEEP_ALIVE`] with none.
    fn wait(&self, me: &Arc<Mailbox>) -> Option<Job> {
        let until = Instant::now() + KEEP_ALIVE;
        loop {
            if let Some(job) = lock(&me.job).take() {
                return Some(job);
            }
            let now = Instant::now();
            if now >= until {
                let mut idle = lock(&self.idle);
                if let Some(at) = idle.iter().position(|m| Arc::ptr_eq(m, me)) {
                    idle.remove(at);
                    return None;
                }
                // Taken off the stack just now: its job is on the way.
            }
            let left = until.saturating_duration_since(now);
            std::thread::park_timeout(left.max(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn thread_of_next_job(drivers: &'static Drivers) -> std::thread::ThreadId {
        let (tx, rx) = mpsc::channel();
        let job = Box::new(move || tx.send(std::thread::current().id()).unwrap());
        assert!(drivers.spawn(job).is_ok());
        rx.recv().unwrap()
    }

    #[test]
    fn the_next_run_goes_to_the_thread_that_went_idle_last() {
        // Its own set, so that other tests' runs cannot take its threads.
        let drivers: &'static Drivers = Box::leak(Box::new(Drivers::new()));
        // Three jobs at once: three threads.
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(std::sync::Barrier::new(4));
        for _ in 0..3 {
            let (tx, gate) = (tx.clone(), Arc::clone(&gate));
            let job = Box::new(move || {
                gate.wait();
                tx.send(std::thread::current().id()).unwrap();
            });
            assert!(drivers.spawn(job).is_ok());
        }
        gate.wait();
        let ids: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        // Let all three get back on the stack.
        std::thread::sleep(Duration::from_millis(50));
        // Back-to-back jobs then all go to one thread, one of those three.
        assert_eq!(lock(&drivers.idle).len(), 3);
        let first = thread_of_next_job(drivers);
        assert!(ids.contains(&first));
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(thread_of_next_job(drivers), first);
        }
    }
}

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
//! [`KEEP_ALIVE`] leaves, and so does one that finds [`MAX_IDLE`] threads idle already.
//! Past [`MAX_THREADS`] runs driven at once, runs go to tokio's blocking pool, which queues
//! them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::runner::lock;

/// How long an idle driver thread waits for a run before it exits. Long, because a new
/// thread pays for its start and its first Lua state.
const KEEP_ALIVE: Duration = Duration::from_mins(5);

/// Idle threads kept for the next runs.
const MAX_IDLE: usize = 32;

/// Driver threads at most; tokio's blocking pool takes the runs beyond.
const MAX_THREADS: usize = 512;

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
    /// Threads alive, idle or not.
    threads: AtomicUsize,
    max_threads: usize,
    max_idle: usize,
}

/// The process's driver threads.
pub(crate) static DRIVERS: Drivers = Drivers::new(MAX_THREADS, MAX_IDLE);

/// Runs `job` on an idle driver thread, or on a new one; on the runtime's blocking pool
/// past [`MAX_THREADS`] or if no thread can be started.
pub(crate) fn spawn(job: Job) {
    if let Err(job) = DRIVERS.spawn(job) {
        if let Ok(rt) = crate::runtime::runtime() {
            rt.spawn_blocking(job);
        } else {
            // Callers checked the runtime before starting a run; this cannot happen.
            eprintln!("dagengine: a run could not be started: no runtime");
        }
    }
}

impl Drivers {
    pub(crate) const fn new(max_threads: usize, max_idle: usize) -> Self {
        Drivers {
            idle: Mutex::new(Vec::new()),
            threads: AtomicUsize::new(0),
            max_threads,
            max_idle,
        }
    }

    /// Runs `job` on the most recently idle thread, or on a new one; gives it back past
    /// [`MAX_THREADS`] or if no thread can be started.
    pub(crate) fn spawn(&'static self, job: Job) -> Result<(), Job> {
        let idle = lock(&self.idle).pop();
        if let Some(mailbox) = idle {
            *lock(&mailbox.job) = Some(job);
            mailbox.thread.unpark();
            return Ok(());
        }
        if self.threads.fetch_add(1, Ordering::SeqCst) >= self.max_threads {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return Err(job);
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
        if started.is_ok() {
            return Ok(());
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
        let job = lock(&handoff).take().expect("the thread never started");
        Err(job)
    }

    /// A driver thread: run `first`, then whatever is handed to it while it is idle.
    fn serve(&self, first: Job) {
        /// Counts the thread out however it ends (a job that panics ends it too).
        struct Alive<'a>(&'a AtomicUsize);
        impl Drop for Alive<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _alive = Alive(&self.threads);
        let me = Arc::new(Mailbox {
            job: Mutex::new(None),
            thread: std::thread::current(),
        });
        let mut next = Some(first);
        while let Some(job) = next.take() {
            job();
            {
                let mut idle = lock(&self.idle);
                if idle.len() >= self.max_idle {
                    return;
                }
                idle.push(Arc::clone(&me));
            }
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

    /// Waits (up to 5 s) until `done` holds.
    fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits (up to 5 s) until `n` threads are idle.
    fn wait_idle(drivers: &'static Drivers, n: usize) {
        wait_until(|| lock(&drivers.idle).len() == n);
        assert_eq!(lock(&drivers.idle).len(), n);
    }

    #[test]
    fn the_next_run_goes_to_the_thread_that_went_idle_last() {
        // Its own set, so that other tests' runs cannot take its threads.
        let drivers: &'static Drivers = Box::leak(Box::new(Drivers::new(8, 8)));
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
        wait_idle(drivers, 3);
        // Back-to-back jobs then all go to one thread, one of those three.
        let first = thread_of_next_job(drivers);
        assert!(ids.contains(&first));
        for _ in 0..20 {
            wait_idle(drivers, 3);
            assert_eq!(thread_of_next_job(drivers), first);
        }
    }

    #[test]
    fn threads_are_capped_and_so_are_idle_ones() {
        let drivers: &'static Drivers = Box::leak(Box::new(Drivers::new(2, 1)));
        let gate = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..2 {
            let gate = Arc::clone(&gate);
            assert!(drivers
                .spawn(Box::new(move || {
                    gate.wait();
                }))
                .is_ok());
        }
        // Both threads are busy: a third run is given back (for the blocking pool).
        assert!(drivers.spawn(Box::new(|| ())).is_err());
        gate.wait();
        // Of the two threads now done, one stays idle and the other leaves.
        wait_until(|| drivers.threads.load(Ordering::SeqCst) <= 1);
        assert_eq!(drivers.threads.load(Ordering::SeqCst), 1);
        wait_idle(drivers, 1);
        let kept = thread_of_next_job(drivers);
        wait_idle(drivers, 1);
        assert_eq!(thread_of_next_job(drivers), kept);
    }
}

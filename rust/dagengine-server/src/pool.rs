//! A small worker pool for node execution.
//!
//! tokio's blocking pool grows a thread for every job that finds no idle thread, which is
//! right for blocking I/O and wrong for a burst of ten thousand ready Lua nodes (ten
//! thousand jobs, hundreds of threads, a Lua state each). Here threads are added one at a
//! time, only while jobs wait and nobody is idle, up to a maximum; and a worker runs up to
//! `batch` queued jobs inside one *context* — the Python pool enters the interpreter once
//! per batch instead of once per node.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A unit of work. Jobs report their own results (over a channel); a panicking job is
/// contained and the worker lives on.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs a closure within some context (e.g. attached to Python).
pub type Context = Arc<dyn Fn(&mut (dyn FnMut() + Send)) + Send + Sync>;

/// Where a pool's workers run their code.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Wraps a worker thread's whole life (the Python pool registers the thread with the
    /// interpreter once here, instead of once per batch).
    pub thread: Option<Context>,
    /// Wraps each batch of jobs (the Python pool holds the GIL for a batch).
    pub batch: Option<Context>,
}

/// When a pool adds threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Whenever a job waits and no worker is idle: for CPU-bound work with one thread per
    /// core (Lua).
    Eager,
    /// Only when queued jobs have seen no worker pick anything up for this long: the
    /// workers are blocked, not busy. Short Python nodes then stay on one thread that
    /// holds the GIL for a batch, instead of many threads fighting over it, while nodes
    /// that block (sleep, I/O) still get threads of their own.
    WhenStalled(Duration),
}

/// How long an idle worker polls the queue before it sleeps: a chain of nodes hands each
/// successor over within microseconds, far less than a sleep/wake round trip.
const SPIN: Duration = Duration::from_micros(50);

/// A pool of worker threads fed from one queue.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("WorkerPool")
            .field("name", &self.inner.name)
            .field("threads", &st.threads)
            .field("queued", &st.queue.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    max_threads: usize,
    batch: usize,
    growth: Growth,
    hooks: Hooks,
    state: Mutex<State>,
    work: Condvar,
    /// Wakes the watcher that grows a `WhenStalled` pool.
    stalled: Condvar,
    /// Mirror of `queue.len()`, read without the lock by spinning workers.
    queued: AtomicUsize,
    /// Workers polling `queued` before they sleep: they need no wake-up.
    spinning: AtomicUsize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// A thread was spawned and has not yet taken its first job: don't spawn another.
    starting: bool,
    /// When a worker last took a job from the queue.
    last_take: Option<Instant>,
    watcher: bool,
    /// The watcher sleeps until jobs queue up (rather than checking on a timer).
    watcher_parked: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl WorkerPool {
    /// A pool of at most `max_threads` threads named `name-N`, each running up to `batch`
    /// jobs per turn, within `hooks`. No thread starts before the first job.
    pub fn new(name: &str, max_threads: usize, batch: usize, growth: Growth, hooks: Hooks) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                max_threads: max_threads.max(1),
                batch: batch.max(1),
                growth,
                hooks,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                stalled: Condvar::new(),
                queued: AtomicUsize::new(0),
                spinning: AtomicUsize::new(0),
            }),
        }
    }

    /// Queue one job.
    pub fn submit(&self, job: Job) {
        let mut st = self.inner.lock();
        st.queue.push_back(job);
        self.inner.queued.store(st.queue.len(), Ordering::Release);
        Self::wake_or_grow(&self.inner, &mut st);
    }

    /// The most threads this pool runs.
    pub fn max_threads(&self) -> usize {
        self.inner.max_threads
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.inner.lock().threads
    }

    fn wake_or_grow(inner: &Arc<Inner>, st: &mut State) {
        if inner.spinning.load(Ordering::Acquire) > 0 {
            return;
        }
        if st.idle > 0 {
            inner.work.notify_one();
            return;
        }
        match inner.growth {
            Growth::WhenStalled(_) if st.threads > 0 => {
                if st.watcher {
                    if st.watcher_parked {
                        inner.stalled.notify_one();
                    }
                } else {
                    let watcher = inner.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("{}-watch", inner.name))
                        .spawn(move || watch(&watcher));
                    st.watcher = spawned.is_ok();
                }
            }
            _ => Self::grow(inner, st),
        }
    }

    fn grow(inner: &Arc<Inner>, st: &mut State) {
        if st.threads < inner.max_threads && !st.starting {
            let worker = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{}", inner.name, st.threads))
                .spawn(move || match &worker.hooks.thread {
                    Some(thread) => thread(&mut || worker_loop(&worker)),
                    None => worker_loop(&worker),
                });
            // If the OS refuses a thread the job stays queued for the next worker that
            // frees up or the next submit, which tries again.
            if spawned.is_ok() {
                st.threads += 1;
                st.starting = true;
            }
        }
    }
}

fn run_contained(job: Job) {
    // A job reports its own outcome; a panic must not take the worker (and the jobs
    // queued behind it) down with it.
    let _ = catch_unwind(AssertUnwindSafe(job));
}

/// Grows a `WhenStalled` pool: while jobs wait, check every `after` whether any worker
/// has taken one lately; if none has, they are all blocked, so add a thread.
fn watch(inner: &Arc<Inner>) {
    let Growth::WhenStalled(after) = inner.growth else {
        return;
    };
    let mut st = inner.lock();
    loop {
        st = if st.queue.is_empty() {
            st.watcher_parked = true;
            let mut st = inner
                .stalled
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.watcher_parked = false;
            st
        } else {
            inner
                .stalled
                .wait_timeout(st, after)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0
        };
        let stale = st.last_take.is_none_or(|t| t.elapsed() >= after);
        if !st.queue.is_empty() && st.idle == 0 && stale {
            WorkerPool::grow(inner, &mut st);
        }
    }
}

/// Take the next job, noting the time and passing the wake-up on if more are queued.
fn take(inner: &Arc<Inner>, st: &mut State) -> Option<Job> {
    let job = st.queue.pop_front()?;
    inner.queued.store(st.queue.len(), Ordering::Release);
    st.last_take = Some(Instant::now());
    if !st.queue.is_empty() {
        WorkerPool::wake_or_grow(inner, st);
    }
    Some(job)
}

fn worker_loop(inner: &Arc<Inner>) {
    inner.lock().starting = false;
    loop {
        // Poll briefly before sleeping: the next job of a chain is usually microseconds
        // away, and a condvar sleep/wake costs more than that.
        let spin_until = Instant::now() + SPIN;
        inner.spinning.fetch_add(1, Ordering::AcqRel);
        while inner.queued.load(Ordering::Acquire) == 0 && Instant::now() < spin_until {
            std::thread::yield_now();
        }
        inner.spinning.fetch_sub(1, Ordering::AcqRel);
        let first = {
            let mut st = inner.lock();
            loop {
                if let Some(job) = take(inner, &mut st) {
                    break job;
                }
                st.idle += 1;
                st = inner
                    .work
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st.idle -= 1;
            }
        };
        let mut first = Some(first);
        let mut turn = || {
            if let Some(job) = first.take() {
                run_contained(job);
            }
            for _ in 1..inner.batch {
                let next = take(inner, &mut inner.lock());
                match next {
                    Some(job) => run_contained(job),
                    None => break,
                }
            }
        };
        match &inner.hooks.batch {
            Some(batch) => batch(&mut turn),
            None => turn(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_every_job_with_bounded_threads() {
        let pool = WorkerPool::new("t", 3, 8, Growth::Eager, Hooks::default());
        let (tx, rx) = mpsc::channel();
        for i in 0..1_000 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap()));
        }
        let mut got: Vec<i32> = (0..1_000)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..1_000).collect::<Vec<_>>());
        assert!(pool.threads() <= 3);
    }

    #[test]
    fn blocked_workers_make_the_pool_grow_to_its_maximum() {
        let pool = WorkerPool::new(
            "t",
            4,
            1,
            Growth::WhenStalled(Duration::from_millis(2)),
            Hooks::default(),
        );
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let (r, s) = (release_rx.clone(), started.clone());
            pool.submit(Box::new(move || {
                s.fetch_add(1, Ordering::SeqCst);
                let _ = r.lock().unwrap().recv();
            }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while started.load(Ordering::SeqCst) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "jobs did not run concurrently"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.threads(), 4);
        for _ in 0..4 {
            release_tx.send(()).unwrap();
        }
    }

    #[test]
    fn short_jobs_stay_on_one_thread_when_growth_waits_for_a_stall() {
        let pool = WorkerPool::new(
            "t",
            8,
            16,
            Growth::WhenStalled(Duration::from_secs(5)),
            Hooks::default(),
        );
        let (tx, rx) = mpsc::channel();
        for i in 0..2_000 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap()));
        }
        for _ in 0..2_000 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_pool() {
        let pool = WorkerPool::new("t", 1, 4, Growth::Eager, Hooks::default());
        pool.submit(Box::new(|| panic!("job panics")));
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || tx.send(7).unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
    }

    #[test]
    fn context_wraps_each_batch() {
        let entered = Arc::new(AtomicUsize::new(0));
        let e = entered.clone();
        let ctx: Context = Arc::new(move |f: &mut (dyn FnMut() + Send)| {
            e.fetch_add(1, Ordering::SeqCst);
            f();
        });
        let hooks = Hooks {
            thread: None,
            batch: Some(ctx),
        };
        let pool = WorkerPool::new("t", 1, 100, Growth::Eager, hooks);
        let (tx, rx) = mpsc::channel();
        // Queue everything before the only worker starts: one batch.
        {
            let mut st = pool.inner.lock();
            for i in 0..50 {
                let tx = tx.clone();
                st.queue.push_back(Box::new(move || tx.send(i).unwrap()));
            }
            pool.inner.queued.store(50, Ordering::Release);
            WorkerPool::wake_or_grow(&pool.inner, &mut st);
        }
        for _ in 0..50 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(entered.load(Ordering::SeqCst), 1);
    }
}

//! One tokio runtime per process, created on first use.
//!
//! A runtime's threads do not survive `fork()`: a child process that inherited the
//! `OnceLock` would hand work to threads that do not exist and hang. We remember the pid
//! that built the runtime and refuse to use it from any other.

use std::sync::OnceLock;

use thiserror::Error;
use tokio::runtime::Runtime;

/// The runtime cannot be used in this process.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    #[error(
        "the dagengine runtime was started in process {parent} and cannot be used after fork() \
         (in process {child}); start engine processes with subprocess/spawn instead"
    )]
    Forked { parent: u32, child: u32 },
    #[error("could not start the dagengine runtime: {0}")]
    Start(String),
}

static RUNTIME: OnceLock<Result<(u32, Runtime), RuntimeError>> = OnceLock::new();

/// The process-wide runtime.
pub fn runtime() -> Result<&'static Runtime, RuntimeError> {
    let entry = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("dagengine")
            // Blocking threads run host (Python) work. tokio retires idle ones after 10 s,
            // and work that then needs a new thread pays for its start and its allocator
            // heap (measured: no-op DAG runs ~60% slower per node after a 12 s pause, when
            // run drivers lived here).
            .thread_keep_alive(std::time::Duration::from_mins(5))
            .enable_all()
            .build()
            .map(|rt| (std::process::id(), rt))
            .map_err(|e| RuntimeError::Start(e.to_string()))
    });
    match entry {
        Ok((pid, rt)) if *pid == std::process::id() => Ok(rt),
        Ok((pid, _)) => Err(RuntimeError::Forked {
            parent: *pid,
            child: std::process::id(),
        }),
        Err(e) => Err(e.clone()),
    }
}

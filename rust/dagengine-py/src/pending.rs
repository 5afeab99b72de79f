//! `PendingRun`: a run `DagRef.prepare_run` made, driven to its end on the caller's thread
//! (`DAG.run`).

use std::sync::{Arc, Mutex};

use dagengine_server::{run_inline, start_run_inline, Plan, RunConfig, INLINE_BUDGET};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::external::{self, PyExternal};
use crate::{errors, RunRef};

/// A run prepared by `DagRef.prepare_run`, not started.
#[pyclass(module = "dagengine._core", frozen)]
pub struct PendingRun {
    pub(crate) run: Mutex<Option<(Arc<Plan>, RunConfig, PyExternal)>>,
}

#[pymethods]
impl PendingRun {
    /// Drive the run to its end on this thread, which keeps the GIL while it calls
    /// synchronous Python nodes itself (no thread hand-off per node) and releases it while
    /// it waits for other threads or runs Lua. On Ctrl-C (or a `KeyboardInterrupt` out of
    /// a node called here) the run is cancelled, driven to its end, and the interrupt
    /// raised. A run without Python nodes is started inline (`start_run_inline`): driven
    /// here, GIL held, for a short budget, then on a driver thread while the caller waits
    /// (its Lua and no-op nodes need no GIL). A second call is a `RuntimeError`.
    fn run(&self, py: Python<'_>) -> PyResult<RunRef> {
        let taken = self
            .run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some((plan, config, external)) = taken else {
            return Err(PyRuntimeError::new_err("this run was already run"));
        };
        if !external.has_python() {
            // Lua and no-op nodes need no GIL: a short run ends here, within the budget, with
            // no thread hand-off; a longer one goes on on a driver thread, the caller waits.
            let handle = start_run_inline(
                plan.clone(),
                config,
                Some(Arc::new(external)),
                INLINE_BUDGET,
            )
            .map_err(|e| errors::runtime_error(py, &e))?;
            return Ok(RunRef { handle, plan });
        }
        let external = external.on_this_thread();
        let host = external::Host::new(py, &external);
        let handle = run_inline(plan.clone(), config, Some(Arc::new(external)), &host)
            .map_err(|e| errors::runtime_error(py, &e))?;
        host.raise()?;
        Ok(RunRef { handle, plan })
    }
}

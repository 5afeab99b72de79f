//! `dagengine._core`: the only crate that touches Python.
//!
//! Thin `*Ref` classes over the core crates. Values cross the boundary once: run inputs
//! and node outputs are converted to `serde_json::Value` on the way in and back to Python
//! objects only when a Python node or the caller needs them.

mod cache;
mod context;
mod engine;
mod errors;
mod exit;

mod external;
mod json;
mod pending;
mod session;

/// The engine's hot path allocates small blocks from many threads (tokio workers, Lua pool
/// threads, run drivers): glibc's malloc spent a tenth of an engine's CPU per run in its own
/// locking and consolidation. Only Rust allocations go through this; Python keeps its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// How long freed memory stays committed before mimalloc gives it back to the OS. Its
/// default, 10 ms, is shorter than a run of 10,000 Lua nodes (~13 ms): pages the run's first
/// nodes freed went back to the OS while it went on, and were faulted in again (zeroed by the
/// kernel) for the next nodes and the next run. 150 such runs in one process, whole-process
/// times paired 8 times: chain 0.86x the wall time (system time 0.24 -> 0.06 s), fan-out
/// 0.84x. A second keeps a busy process's memory for reuse and still returns it once idle.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

#[allow(unsafe_code)]
extern "C" {
    // mimalloc's C API, in the static library `mimalloc`'s sys crate links (its Rust
    // declaration is behind a feature that pulls in another crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Lengthen mimalloc's purge delay ([`PURGE_DELAY_MS`]) unless `MIMALLOC_PURGE_DELAY` sets
/// it (mimalloc reads its own environment variables).
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of an option mimalloc reads on its own threads.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dagengine_core::{Backoff, Dag, MapOptions, NodeIdx, NodePolicy, RunOptions, TriggerRule};
use dagengine_lua::{LuaLimits, LuaScript};
use dagengine_server::{
    start_run, start_run_inline, Condition, EventDetail, MapSpec, NodeKind, NodeSpec, Plan,
    RunConfig, RunEvent, RunHandle, DEFAULT_MAX_ITEMS, INLINE_BUDGET,
};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use pythonize::{depythonize, pythonize};
use serde_json::Value;

use crate::context::ParentOutputs;
use crate::external::{CancelToken, PyExternal};
use crate::pending::PendingRun;

fn duration(field: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{field} must be a non-negative number of seconds, got {secs}"
        ))
    })
}

/// The Python object of each node (`None` for nodes executed in Rust), shared by runs.
type Payloads = Arc<Vec<Option<Py<PyAny>>>>;

/// A graph under construction or validated, with how to execute each node.
#[pyclass(module = "dagengine._core")]
pub struct DagRef {
    dag: Dag,
    specs: Vec<NodeSpec>,
    payloads: Vec<Option<Py<PyAny>>>,
    /// The Python callable of each node's `when` (`None`: a Lua one, or none).
    conditions: Vec<Option<Py<PyAny>>>,
    /// The mapped nodes and how each fans out.
    maps: Vec<(NodeIdx, MapSpec)>,
    /// The cached nodes and how each is cached.
    caches: Vec<(NodeIdx, dagengine_server::CacheSpec)>,
    /// Built on the first run after a change; shared by all runs until the next change.
    plan: Option<BuiltPlan>,
}

/// A plan with its nodes' Python callables, their conditions' callables, and which nodes
/// may be called on the thread that drives a run (see `DagRef.run`).
type BuiltPlan = (Arc<Plan>, Payloads, Payloads, Arc<external::PyNodes>);

impl DagRef {
    fn changed(&mut self) {
        self.plan = None;
    }

    /// Bulk-added nodes are default no-ops and get no spec entry (a million-node graph
    /// needs none); pad the specs before a node with its own spec is appended.
    fn pad_specs(&mut self) {
        let n = self.dag.len();
        let spec = NodeSpec {
            kind: NodeKind::Noop,
            policy: NodePolicy::default(),
            condition: None,
        };
        self.specs.resize(n, spec);
        self.payloads.resize_with(n, || None);
        self.conditions.resize_with(n, || None);
    }

    fn preprocess_inner(&mut self, py: Python<'_>) -> PyResult<()> {
        // Already validated: return without releasing the GIL, which would let another thread
        // try to borrow this object while we hold it mutably.
        if self.dag.is_preprocessed() {
            return Ok(());
        }
        let dag = &mut self.dag;
        py.detach(|| dag.preprocess())
            .map_err(|e| errors::graph_error(py, &e))
    }

    /// What `start` and `run` share: check the arguments, build the plan on the first run
    /// after a change, and make the run's configuration and its Python nodes' executor.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        run_id: String,
        invoke: Py<PyAny>,
        (max_parallel, fail_fast, timeout): (Option<usize>, bool, Option<f64>),
        completed: Option<&Bound<'_, PyDict>>,
        (events, event_outputs): (bool, bool),
        cache: Option<Py<PyAny>>,
    ) -> PyResult<(Arc<Plan>, RunConfig, PyExternal)> {
        if max_parallel == Some(0) {
            return Err(PyValueError::new_err("max_parallel must be at least 1"));
        }
        let inputs_value: Value = depythonize(inputs)
            .map_err(|e| PyTypeError::new_err(format!("inputs are not JSON-like: {e}")))?;
        if !inputs_value.is_object() {
            return Err(PyTypeError::new_err(format!(
                "inputs must be a dict, got {}",
                inputs.get_type().name()?
            )));
        }
        self.preprocess_inner(py)?;
        if self.plan.is_none() {
            if !self.specs.is_empty() {
                self.pad_specs();
            }
            let specs = self.specs.clone();
            let mut plan = Plan::new(self.dag.clone(), specs).map_err(PyRuntimeError::new_err)?;
            for (node, map) in &self.maps {
                plan.set_map(*node, map.clone());
            }
            for (node, spec) in &self.caches {
                plan.set_cache(*node, spec.clone())
                    .map_err(PyValueError::new_err)?;
            }
            let payloads: Vec<_> = self
                .payloads
                .iter()
                .map(|p| p.as_ref().map(|o| o.clone_ref(py)))
                .collect();
            let conditions: Vec<_> = self
                .conditions
                .iter()
                .map(|p| p.as_ref().map(|o| o.clone_ref(py)))
                .collect();
            let inline = external::PyNodes::new(py, &plan, &payloads, &conditions)?;
            self.plan = Some((
                Arc::new(plan),
                Arc::new(payloads),
                Arc::new(conditions),
                Arc::new(inline),
            ));
        }
        let (plan, payloads, conditions, inline) = self.plan.clone().expect("just built");
        let mut done = Vec::new();
        let mut done_items = Vec::new();
        if let Some(completed) = completed {
            for (k, v) in completed.iter() {
                let id: String = k.extract()?;
                // A node's id, or an item's (`square[3]`) of a mapped node.
                let (idx, item) = plan.resolve(&id).ok_or_else(|| {
                    PyValueError::new_err(format!("completed names unknown node '{id}'"))
                })?;
                let out: Value = depythonize(&v).map_err(|e| {
                    PyTypeError::new_err(format!(
                        "completed output of node '{id}' is not JSON-like: {e}"
                    ))
                })?;
                // A mapped node's output is the list of its items' outputs.
                let mapped_list = item.is_none() && plan.map(idx).is_some() && out.is_array();
                if !out.is_object() && !mapped_list {
                    return Err(PyTypeError::new_err(format!(
                        "completed output of node '{id}' must be a dict"
                    )));
                }
                match item {
                    Some(i) => done_items.push((idx, i, out)),
                    None => done.push((idx, out)),
                }
            }
        }
        let inputs_py = py
            .import("types")?
            .getattr("MappingProxyType")?
            .call1((pythonize(py, &inputs_value)?,))?
            .unbind();
        let config = RunConfig {
            run_id: run_id.clone(),
            inputs: Arc::new(inputs_value),
            options: RunOptions {
                max_parallel,
                fail_fast,
            },
            timeout: timeout.map(|t| duration("timeout", t)).transpose()?,
            completed: done,
            completed_items: done_items,
            events,
            event_outputs,
            cache: cache.map(|c| cache::node_cache(c, py)),
        };
        let external = PyExternal::new(invoke, payloads, inputs_py, run_id)
            .with_conditions(conditions)
            .with_inline(inline);
        Ok((plan, config, external))
    }

    fn ids(&self, idx: &[u32]) -> Vec<String> {
        idx.iter().map(|&i| self.dag.id(i).to_owned()).collect()
    }
}

// pyo3 extracts arguments into owned values (`Vec<String>`), and `__traverse__` must take
// its visitor by value: clippy's by-reference advice cannot apply here.
#[allow(clippy::needless_pass_by_value)]
#[pymethods]
impl DagRef {
    #[new]
    fn new() -> Self {
        Self {
            dag: Dag::new(),
            specs: Vec::new(),
            payloads: Vec::new(),
            conditions: Vec::new(),
            maps: Vec::new(),
            caches: Vec::new(),
            plan: None,
        }
    }

    #[pyo3(signature = (
        node_id, deps, kind, payload=None, *, retries=0, backoff_initial=1.0,
        backoff_factor=2.0, backoff_max=60.0, timeout=None, lua_max_instructions=None,
        lua_max_memory=None, trigger_rule=None, when=None, map=None, map_max_parallel=None,
        allow_partial=false, max_items=None, cache=None
    ))]
    // One argument, and a few lines of checks, per option of a node.
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn add_node(
        &mut self,
        py: Python<'_>,
        node_id: &str,
        deps: Vec<String>,
        kind: &str,
        payload: Option<Bound<'_, PyAny>>,
        retries: u32,
        backoff_initial: f64,
        backoff_factor: f64,
        backoff_max: f64,
        timeout: Option<f64>,
        lua_max_instructions: Option<u64>,
        lua_max_memory: Option<usize>,
        trigger_rule: Option<&str>,
        when: Option<Bound<'_, PyAny>>,
        map: Option<&str>,
        map_max_parallel: Option<u32>,
        allow_partial: bool,
        max_items: Option<u32>,
        cache: Option<cache::CacheOptions>,
    ) -> PyResult<()> {
        if map_max_parallel == Some(0) || max_items == Some(0) {
            return Err(PyValueError::new_err(format!(
                "node '{node_id}': max_parallel and max_items must be at least 1"
            )));
        }
        let map = map
            .map(|expression| {
                let options = MapOptions {
                    max_parallel: map_max_parallel,
                    allow_partial,
                };
                let spec =
                    MapSpec::new(expression, options, max_items.unwrap_or(DEFAULT_MAX_ITEMS));
                spec.check()
                    .map_err(|e| errors::lua_error(py, &e, Some(node_id)))?;
                Ok::<_, PyErr>(spec)
            })
            .transpose()?;
        if !(backoff_factor.is_finite() && backoff_factor >= 1.0) {
            return Err(PyValueError::new_err(format!(
                "node '{node_id}': retry_backoff.factor must be a number >= 1, got {backoff_factor}"
            )));
        }
        let policy = NodePolicy {
            retries,
            backoff: Backoff {
                initial: duration("retry_backoff.initial", backoff_initial)?,
                factor: backoff_factor,
                max: duration("retry_backoff.max", backoff_max)?,
            },
            timeout: timeout.map(|t| duration("timeout", t)).transpose()?,
            trigger_rule: match trigger_rule {
                None => TriggerRule::AllSuccess,
                Some(name) => TriggerRule::parse(name).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "node '{node_id}': unknown trigger rule '{name}' (expected one of {})",
                        TriggerRule::NAMES
                    ))
                })?,
            },
        };
        // A str is a Lua expression; anything else a Python callable of the context.
        let (condition, when_payload) = match when {
            None => (None, None),
            Some(w) => match w.cast::<PyString>() {
                Ok(text) => {
                    let c = Condition::lua(text.to_str()?);
                    c.check()
                        .map_err(|e| errors::lua_error(py, &e, Some(node_id)))?;
                    (Some(c), None)
                }
                Err(_) => (Some(Condition::External), Some(w.unbind())),
            },
        };
        let cache = cache
            .map(|c| c.spec(py, node_id, kind, payload.as_ref(), map.is_some()))
            .transpose()?;
        let (kind, payload) = match kind {
            "noop" => (NodeKind::Noop, None),
            "lua" => {
                let source: String = payload
                    .as_ref()
                    .ok_or_else(|| PyTypeError::new_err("a lua node needs its source as payload"))?
                    .extract()?;
                let script = LuaScript::new(source);
                script
                    .check()
                    .map_err(|e| errors::lua_error(py, &e, Some(node_id)))?;
                let defaults = LuaLimits::default();
                let limits = LuaLimits {
                    max_instructions: lua_max_instructions.or(defaults.max_instructions),
                    max_memory: lua_max_memory.or(defaults.max_memory),
                    timeout: defaults.timeout,
                };
                (NodeKind::Lua { script, limits }, None)
            }
            "python" => {
                let payload =
                    payload.ok_or_else(|| PyTypeError::new_err("a python node needs a payload"))?;
                (NodeKind::External, Some(payload.unbind()))
            }
            other => {
                return Err(PyValueError::new_err(format!(
                "node '{node_id}': unknown executor kind '{other}' (expected noop, lua or python)"
            )))
            }
        };
        self.pad_specs();
        self.dag
            .add_node(node_id, deps.iter().map(String::as_str))
            .map_err(|e| errors::graph_error(py, &e))?;
        self.specs.push(NodeSpec {
            kind,
            policy,
            condition,
        });
        self.payloads.push(payload);
        self.conditions.push(when_payload);
        if let Some(map) = map {
            self.maps.push(((self.dag.len() - 1) as NodeIdx, map));
        }
        if let Some(cache) = cache {
            self.caches.push(((self.dag.len() - 1) as NodeIdx, cache));
        }
        self.changed();
        Ok(())
    }

    fn add_nodes_csr(
        &mut self,
        py: Python<'_>,
        ids: &Bound<'_, PyList>,
        offsets: &Bound<'_, PyAny>,
        parents: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let offsets = u32_vec(offsets, "offsets")?;
        let parents = u32_vec(parents, "parents")?;
        let names: Vec<Bound<'_, PyString>> = ids
            .iter()
            .map(|o| o.cast_into::<PyString>().map_err(PyErr::from))
            .collect::<PyResult<_>>()?;
        let strs: Vec<&str> = names.iter().map(|s| s.to_str()).collect::<PyResult<_>>()?;
        self.dag
            .add_nodes_csr(strs.iter().copied(), &offsets, &parents)
            .map_err(|e| errors::graph_error(py, &e))?;
        self.changed();
        Ok(())
    }

    fn preprocess(&mut self, py: Python<'_>) -> PyResult<()> {
        self.preprocess_inner(py)
    }

    fn __len__(&self) -> usize {
        self.dag.len()
    }

    #[getter]
    fn edge_count(&self) -> usize {
        self.dag.edge_count()
    }

    fn node_ids(&self) -> Vec<String> {
        self.dag.ids().map(str::to_owned).collect()
    }

    fn topological_order(&mut self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.preprocess_inner(py)?;
        Ok(self.ids(self.dag.topological_order()))
    }

    /// The topological order as node indices (insertion order), in a compact
    /// `array.array('I')`: 4 bytes per node instead of a `str` object each.
    fn topological_order_indices<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.preprocess_inner(py)?;
        let bytes: Vec<u8> = self
            .dag
            .topological_order()
            .iter()
            .flat_map(|i| i.to_ne_bytes())
            .collect();
        let array = py.import("array")?.getattr("array")?.call1(("I",))?;
        array.call_method1("frombytes", (PyBytes::new(py, &bytes),))?;
        Ok(array)
    }

    fn levels(&mut self, py: Python<'_>) -> PyResult<Vec<Vec<String>>> {
        self.preprocess_inner(py)?;
        Ok(self.dag.levels().iter().map(|l| self.ids(l)).collect())
    }

    fn roots(&mut self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.preprocess_inner(py)?;
        Ok(self.ids(&self.dag.roots()))
    }

    fn leaves(&mut self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.preprocess_inner(py)?;
        Ok(self.ids(&self.dag.leaves()))
    }

    #[pyo3(signature = (
        inputs, run_id, invoke, *, max_parallel=None, fail_fast=false, timeout=None,
        completed=None, events=true, event_outputs=false, cache=None, inline_budget=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        run_id: String,
        invoke: Py<PyAny>,
        max_parallel: Option<usize>,
        fail_fast: bool,
        timeout: Option<f64>,
        completed: Option<&Bound<'_, PyDict>>,
        events: bool,
        event_outputs: bool,
        cache: Option<Py<PyAny>>,
        inline_budget: Option<f64>,
    ) -> PyResult<RunRef> {
        let (plan, config, external) = self.prepare(
            py,
            inputs,
            run_id,
            invoke,
            (max_parallel, fail_fast, timeout),
            completed,
            (events, event_outputs),
            cache,
        )?;
        let external: Arc<dyn dagengine_server::ExternalExecutor> = Arc::new(external);
        let handle = match inline_budget {
            // Driven on this thread until it ends or the budget is spent, keeping the GIL: a
            // short run (tens of microseconds) that let go of it waited far longer to take it
            // back from the threads that took it meanwhile.
            Some(budget) => {
                let budget = duration("inline_budget", budget)?;
                start_run_inline(plan.clone(), config, Some(external), budget)
            }
            None => start_run(plan.clone(), config, Some(external)),
        }
        .map_err(|e| errors::runtime_error(py, &e))?;
        Ok(RunRef { handle, plan })
    }

    /// Like `start`, but the run only starts with `PendingRun.run`, which drives it on
    /// its caller's thread (and borrows nothing of this graph meanwhile).
    #[pyo3(signature = (
        inputs, run_id, invoke, *, max_parallel=None, fail_fast=false, timeout=None,
        completed=None, events=true, event_outputs=false, cache=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn prepare_run(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        run_id: String,
        invoke: Py<PyAny>,
        max_parallel: Option<usize>,
        fail_fast: bool,
        timeout: Option<f64>,
        completed: Option<&Bound<'_, PyDict>>,
        events: bool,
        event_outputs: bool,
        cache: Option<Py<PyAny>>,
    ) -> PyResult<PendingRun> {
        let (plan, config, external) = self.prepare(
            py,
            inputs,
            run_id,
            invoke,
            (max_parallel, fail_fast, timeout),
            completed,
            (events, event_outputs),
            cache,
        )?;
        Ok(PendingRun {
            run: Mutex::new(Some((plan, config, external))),
        })
    }
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for p in self.payloads.iter().chain(&self.conditions).flatten() {
            visit.call(p)?;
        }
        if let Some((_, payloads, conditions, _)) = &self.plan {
            for p in payloads.iter().chain(conditions.iter()).flatten() {
                visit.call(p)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.payloads.iter_mut().for_each(|p| *p = None);
        self.conditions.iter_mut().for_each(|p| *p = None);
        self.plan = None;
    }
}

/// A started run. Waiting methods release the GIL.
#[pyclass(module = "dagengine._core", frozen)]
pub struct RunRef {
    handle: RunHandle,
    plan: Arc<Plan>,
}

/// A sequence of non-negative ints as `Vec<u32>`; an `array.array` of 4-byte unsigned ints
/// is copied in bulk (one `tobytes()`), anything else is converted item by item.
fn u32_vec(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u32>> {
    let array_type = obj.py().import("array")?.getattr("array")?;
    if obj.is_instance(&array_type)? {
        let code: String = obj.getattr("typecode")?.extract()?;
        let size: usize = obj.getattr("itemsize")?.extract()?;
        if matches!(code.as_str(), "I" | "L") && size == 4 {
            let raw = obj.call_method0("tobytes")?;
            let bytes = raw.cast::<PyBytes>()?.as_bytes();
            return Ok(bytes
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect());
        }
    }
    obj.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a sequence of ints in 0..2**32 or an array('I')"
        ))
    })
}

/// Seconds from Python as a `Duration`: negatives and NaN are zero, anything beyond a year
/// (infinity too) is a year — "wait forever" without overflowing a deadline.
fn secs(timeout: f64) -> Duration {
    const YEAR: Duration = Duration::from_hours(24 * 365);
    Duration::try_from_secs_f64(timeout.max(0.0)).map_or(YEAR, |d| d.min(YEAR))
}

fn failure_dict<'py>(
    py: Python<'py>,
    f: &dagengine_server::NodeFailure,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", &f.kind)?;
    d.set_item("message", &f.message)?;
    d.set_item("traceback", &f.traceback)?;
    Ok(d)
}

impl RunRef {
    fn event_tuple<'py>(&self, py: Python<'py>, e: &RunEvent) -> PyResult<Bound<'py, PyTuple>> {
        let node = e.node_id(&self.plan);
        let detail: Py<PyAny> = match &e.detail {
            EventDetail::None => py.None(),
            EventDetail::Error(f) => {
                let d = PyDict::new(py);
                d.set_item("error", failure_dict(py, f)?)?;
                d.into_any().unbind()
            }
            EventDetail::Retry { delay, error } => {
                let d = PyDict::new(py);
                d.set_item("delay", delay.as_secs_f64())?;
                match error {
                    Some(f) => d.set_item("error", failure_dict(py, f)?)?,
                    None => d.set_item("error", py.None())?,
                }
                d.into_any().unbind()
            }
            EventDetail::Log(line) => {
                let d = PyDict::new(py);
                d.set_item("level", &line.level)?;
                d.set_item("message", &line.message)?;
                d.into_any().unbind()
            }
            EventDetail::Output(v) => {
                let d = PyDict::new(py);
                d.set_item("output", pythonize(py, v.as_ref())?)?;
                d.into_any().unbind()
            }
            EventDetail::Finished(status) => {
                let d = PyDict::new(py);
                d.set_item("status", status.as_str())?;
                d.into_any().unbind()
            }
            EventDetail::Skipped(reason) => {
                let d = PyDict::new(py);
                d.set_item("reason", reason.as_str())?;
                d.into_any().unbind()
            }
            EventDetail::Mapped(count) => {
                let d = PyDict::new(py);
                d.set_item("count", count)?;
                d.into_any().unbind()
            }
            EventDetail::Cached { run_id, key } => {
                let d = PyDict::new(py);
                d.set_item("run_id", run_id)?;
                d.set_item("key", key)?;
                d.into_any().unbind()
            }
        };
        PyTuple::new(
            py,
            [
                e.seq.into_pyobject(py)?.into_any(),
                e.kind.as_str().into_pyobject(py)?.into_any(),
                node.into_pyobject(py)?.into_any(),
                e.attempt.into_pyobject(py)?.into_any(),
                e.time.into_pyobject(py)?.into_any(),
                detail.into_bound(py),
            ],
        )
    }
}

#[pymethods]
impl RunRef {
    #[getter]
    fn run_id(&self) -> &str {
        self.handle.run_id()
    }

    fn done(&self) -> bool {
        self.handle.is_done()
    }

    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        let h = &self.handle;
        py.detach(|| h.wait(secs(timeout)))
    }

    fn next_events<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyList>> {
        let h = &self.handle;
        let events = py.detach(|| h.next_events(secs(timeout)));
        let list = PyList::empty(py);
        for e in &events {
            list.append(self.event_tuple(py, e)?)?;
        }
        Ok(list)
    }

    fn cancel(&self) {
        self.handle.cancel();
    }

    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let outcome = self
            .handle
            .outcome()
            .ok_or_else(|| PyRuntimeError::new_err("the run has not finished"))?;
        let d = PyDict::new(py);
        d.set_item("run_id", &outcome.run_id)?;
        d.set_item("status", outcome.status.as_str())?;
        match &outcome.error {
            Some(e) => {
                let err = PyDict::new(py);
                err.set_item("type", &e.kind)?;
                err.set_item("message", &e.message)?;
                err.set_item("node_id", &e.node_id)?;
                d.set_item("error", err)?;
            }
            None => d.set_item("error", py.None())?,
        }
        d.set_item("duration", outcome.duration.as_secs_f64())?;
        let outputs = Outputs {
            succeeded: (0..outcome.nodes.len() as u32)
                .filter(|&i| outcome.nodes[i as usize].output.is_some())
                .collect(),
            outcome: outcome.clone(),
            plan: self.plan.clone(),
        };
        d.set_item("outputs", Bound::new(py, outputs)?)?;
        let nodes = NodeRecords {
            outcome,
            plan: self.plan.clone(),
        };
        d.set_item("nodes", Bound::new(py, nodes)?)?;
        Ok(d)
    }
}

/// The outputs of a finished run's succeeded nodes, as a read-only mapping of node id to
/// output, each converted to Python on access (a 10,000-node run is usually read for a few
/// outputs; converting them all would cost more than the run).
#[pyclass(module = "dagengine._core", frozen, mapping)]
pub struct Outputs {
    succeeded: Vec<u32>,
    outcome: Arc<dagengine_server::RunOutcome>,
    plan: Arc<Plan>,
}

impl Outputs {
    fn output(&self, node_id: &str) -> Option<&Arc<Value>> {
        let idx = self.plan.dag().index_of(node_id)?;
        self.outcome.nodes[idx as usize].output.as_ref()
    }
}

#[pymethods]
impl Outputs {
    fn __len__(&self) -> usize {
        self.succeeded.len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, node_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let value = self
            .output(node_id)
            .ok_or_else(|| PyKeyError::new_err(node_id.to_owned()))?;
        Ok(pythonize(py, value.as_ref())?)
    }

    fn __contains__(&self, node_id: &Bound<'_, PyAny>) -> bool {
        node_id
            .extract::<&str>()
            .is_ok_and(|id| self.output(id).is_some())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py).into_any().try_iter().map(Bound::into_any)
    }

    /// Ids of the succeeded nodes, in index order.
    fn keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        let dag = self.plan.dag();
        PyList::new(py, self.succeeded.iter().map(|&i| dag.id(i))).expect("list of str")
    }
}

/// The per-node records of a finished run, as a read-only mapping of node id to a dict
/// (`status`, `output`, `error`, `attempts`, `started_at`, `finished_at`) built on access:
/// most callers read a few nodes of a large run, and building every record up front would
/// cost more than the run itself.
#[pyclass(module = "dagengine._core", frozen, mapping)]
pub struct NodeRecords {
    outcome: Arc<dagengine_server::RunOutcome>,
    plan: Arc<Plan>,
}

impl NodeRecords {
    fn record<'py>(&self, py: Python<'py>, idx: u32) -> PyResult<Bound<'py, PyDict>> {
        let rec = &self.outcome.nodes[idx as usize];
        let n = PyDict::new(py);
        n.set_item("status", rec.status.as_str())?;
        match &rec.output {
            Some(v) => n.set_item("output", pythonize(py, v.as_ref())?)?,
            None => n.set_item("output", py.None())?,
        }
        match &rec.error {
            Some(f) => n.set_item("error", failure_dict(py, f)?)?,
            None => n.set_item("error", py.None())?,
        }
        n.set_item("attempts", rec.attempts)?;
        n.set_item("started_at", rec.started_at)?;
        n.set_item("finished_at", rec.finished_at)?;
        if let Some(reason) = rec.skip_reason {
            n.set_item("skip_reason", reason.as_str())?;
        }
        if let Some(run_id) = rec.cached_from() {
            n.set_item("cached_from", run_id)?;
        }
        if let Some(key) = rec.cache_key() {
            n.set_item("cache_key", key)?;
        }
        Ok(n)
    }

    fn index(&self, node_id: &str) -> PyResult<u32> {
        self.plan
            .dag()
            .index_of(node_id)
            .ok_or_else(|| PyKeyError::new_err(node_id.to_owned()))
    }
}

#[pymethods]
impl NodeRecords {
    fn __len__(&self) -> usize {
        self.outcome.nodes.len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, node_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let idx = self.index(node_id)?;
        self.record(py, idx)
    }

    fn __contains__(&self, node_id: &Bound<'_, PyAny>) -> bool {
        node_id
            .extract::<&str>()
            .is_ok_and(|id| self.plan.dag().index_of(id).is_some())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py).into_any().try_iter().map(Bound::into_any)
    }

    /// Node ids in index order.
    fn keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::new(py, self.plan.dag().ids()).expect("list of str")
    }

    /// `(node id, record)` pairs in index order (builds every record).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (i, id) in self.plan.dag().ids().enumerate() {
            list.append((id, self.record(py, i as u32)?))?;
        }
        Ok(list)
    }
}

/// Compile `source` in text mode; raise `LuaSyntaxError` (with `line`, and the node id
/// `chunk_name` when given) if it is invalid.
#[pyfunction]
#[pyo3(signature = (source, chunk_name = None))]
fn lua_check(py: Python<'_>, source: &str, chunk_name: Option<&str>) -> PyResult<()> {
    LuaScript::new(source)
        .check()
        .map_err(|e| errors::lua_error(py, &e, chunk_name))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    tune_allocator();
    errors::load(m.py())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("INLINE_BUDGET", INLINE_BUDGET.as_secs_f64())?;
    m.add_class::<DagRef>()?;
    m.add_class::<RunRef>()?;
    m.add_class::<PendingRun>()?;
    m.add_class::<CancelToken>()?;
    m.add_class::<ParentOutputs>()?;
    m.add_class::<context::NodeContext>()?;
    m.add_class::<NodeRecords>()?;
    m.add_class::<Outputs>()?;
    m.add_class::<cache::MemoryCacheRef>()?;
    m.add_class::<engine::EngineServerRef>()?;
    m.add_class::<session::EngineSession>()?;
    m.add_function(wrap_pyfunction!(lua_check, m)?)?;
    m.add_function(wrap_pyfunction!(exit::calls_in_flight, m)?)?;
    // After this runs, worker threads stop entering the interpreter: a thread that takes
    // the GIL while Python finalizes is terminated with pthread_exit, which aborts the
    // process when it unwinds through Rust frames.
    m.py()
        .import("atexit")?
        .call_method1("register", (wrap_pyfunction!(exit::mark_exiting, m)?,))?;
    Ok(())
}

//! Python nodes: the run driver calls [`PyExternal::execute`] on a blocking-pool thread,
//! which attaches to the interpreter only for the call into the `invoke` trampoline
//! (defined in `dagengine.workflow`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::sync::OnceLock;
use std::thread::ThreadId;

use std::time::Duration;

use dagengine_core::{ErrorKind, NodeIdx};
use dagengine_server::{
    Checked, Context, ExternalCall, ExternalExecutor, Growth, Hooks, InlineHost, LogLine, LogSink,
    NodeFailure, Parents, Plan, WorkerPool,
};
use pyo3::exceptions::{PyBaseException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};
use pythonize::{depythonize, pythonize};
use serde_json::{Map, Value};

use crate::context::{convert, direct_call, CallId, DirectCall, ParentOutputs};
use crate::exit::{exiting, InCall};

/// Live cancellation flag of one node attempt (`ctx.cancelled` reads it), where the
/// attempt's log lines go while it runs (an engine process's `NodeLogStore` sends them),
/// and the run's trace context.
#[pyclass(module = "dagengine._core", frozen)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    logs: LogSink,
    trace: Option<Py<PyAny>>,
}

#[pymethods]
impl CancelToken {
    #[getter]
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The W3C trace context (`traceparent`, `tracestate`) the run came with, read-only;
    /// `None` when it came without one.
    #[getter]
    fn trace_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.trace.as_ref().map(|t| t.clone_ref(py))
    }

    /// Send `(level, message)` lines of this attempt to its run now, as `NODE_LOG` events
    /// (before the attempt's end); false once the run has ended.
    fn send_logs(&self, lines: Vec<(String, String)>) -> bool {
        self.logs.send(
            lines
                .into_iter()
                .map(|(level, message)| LogLine { level, message })
                .collect(),
        )
    }
}

/// Calls Python for the `python` nodes of one run.
pub struct PyExternal {
    invoke: Py<PyAny>,
    payloads: Arc<Vec<Option<Py<PyAny>>>>,
    /// The Python callable of each node's `when`, if it has one.
    conditions: Arc<Vec<Option<Py<PyAny>>>>,
    /// The run's inputs, converted once per run (a read-only mapping).
    inputs: Py<PyAny>,
    run_id: String,
    /// The run id as a Python string, made on the first call.
    run_id_py: OnceLock<Py<PyString>>,
    /// The trampoline's `finish`, if it has one: nodes are then called directly
    /// ([`direct_call`], a Python condition too), without the trampoline.
    finish: OnceLock<Option<Py<PyAny>>>,
    /// The trampoline's store of captured lines: `take(run_id, node_id, attempt)` returns
    /// an attempt's `(level, message)` pairs (see [`ExternalExecutor::take_logs`]).
    logs: Option<Py<PyAny>>,
    /// The run's W3C trace context (a read-only mapping), if it came with one.
    trace: Option<Py<PyAny>>,
    /// The parents' outputs of each mapped node, converted for its first item: its other
    /// items get a copy of the dict (its values shared), not a conversion each.
    item_results: Mutex<Vec<(NodeIdx, Py<PyDict>)>>,
    /// Which nodes may be called on the thread driving the run, and their ids.
    nodes: Arc<PyNodes>,
    /// For a run driven on its caller's thread (`DagRef.run`): that thread, and where a
    /// `KeyboardInterrupt` a node raised there is kept for [`Host`] to raise.
    caller: Option<(ThreadId, Interrupt)>,
}

/// A pending interrupt of the thread driving a run.
type Interrupt = Arc<Mutex<Option<PyErr>>>;

impl PyExternal {
    pub fn new(
        invoke: Py<PyAny>,
        payloads: Arc<Vec<Option<Py<PyAny>>>>,
        inputs: Py<PyAny>,
        run_id: String,
    ) -> Self {
        Self {
            invoke,
            payloads,
            conditions: Arc::default(),
            inputs,
            run_id,
            run_id_py: OnceLock::new(),
            finish: OnceLock::new(),
            logs: None,
            trace: None,
            item_results: Mutex::default(),
            nodes: Arc::default(),
            caller: None,
        }
    }

    /// With which nodes may be called on the thread driving the run, and their ids.
    #[must_use]
    pub fn with_inline(mut self, nodes: Arc<PyNodes>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Whether the plan has Python nodes or Python conditions.
    pub fn has_python(&self) -> bool {
        !self.nodes.ids.is_empty()
    }

    /// For a run driven on this thread: a `KeyboardInterrupt` out of a node called here is
    /// the caller's Ctrl-C, kept for [`Host`] (the run is cancelled, then it is raised).
    #[must_use]
    pub fn on_this_thread(mut self) -> Self {
        self.caller = Some((std::thread::current().id(), Arc::default()));
        self
    }

    /// With the run's W3C trace context (a read-only mapping), handed to each attempt.
    #[must_use]
    pub fn with_trace(mut self, trace: Option<Py<PyAny>>) -> Self {
        self.trace = trace;
        self
    }

    /// With the store the trampoline pushes captured lines to (an engine process's).
    #[must_use]
    pub fn with_logs(mut self, logs: Option<Py<PyAny>>) -> Self {
        self.logs = logs;
        self
    }

    /// With the Python callables of the nodes' conditions (see [`dagengine_server::Condition::External`]).
    #[must_use]
    pub fn with_conditions(mut self, conditions: Arc<Vec<Option<Py<PyAny>>>>) -> Self {
        self.conditions = conditions;
        self
    }

    /// Call `payload` through the `invoke` trampoline for `call`'s node; the returned dict.
    fn invoke(
        &self,
        plan: &Plan,
        mut call: ExternalCall,
        payload: &Py<PyAny>,
    ) -> Result<Map<String, Value>, NodeFailure> {
        let parents = take_parents(&mut call);
        Python::attach(|py| {
            let returned = self.call(py, plan, &call, parents, Some(payload), None)?;
            output(|| call_id(plan, &call), &returned)
        })
    }

    /// Call the `invoke` trampoline for `call`'s node: with `payload` (the node's callable;
    /// `None` for its condition only) and with `when` (its condition's callable), the
    /// trampoline checks the condition first, on the context the node then gets: it
    /// returns `False` when the condition is false, and the condition's exception (not
    /// raised) when it failed; `True` when it held and there is no `payload`. `parents` are
    /// the call's parents' outputs (see [`take_parents`]).
    #[allow(clippy::too_many_arguments)]
    fn call<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        call: &ExternalCall,
        parents: Parents,
        payload: Option<&Py<PyAny>>,
        when: Option<&Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>, NodeFailure> {
        if exiting() {
            return Err(NodeFailure {
                kind: ErrorKind::DagEngineError.as_str().to_owned(),
                message: format!(
                    "node '{}' not run: the Python interpreter is exiting",
                    call_id(plan, call)
                ),
                traceback: None,
                retryable: false,
            });
        }
        if let (Some(payload), true) = (payload, self.nodes.direct(call.node)) {
            if let Some(finish) = self.finish(py) {
                let payload = (payload.bind(py), when.map(|w| w.bind(py)));
                return self
                    .call_direct(py, plan, call, parents, payload, finish)
                    .map_err(|e| self.failure(py, &e));
            }
        }
        let invoke_call = || -> PyResult<Bound<'py, PyAny>> {
            let results = match call.item {
                Some(_) => Bound::new(
                    py,
                    ParentOutputs {
                        parents: Parents::default(),
                        nodes: self.nodes.clone(),
                        base: Some(self.item_results(py, plan, call)?),
                    },
                )?
                .into_any(),
                // Ids as Python strings are made for a plan with Python nodes: this one.
                None if self.nodes.ids.len() == plan.dag().len() => Bound::new(
                    py,
                    ParentOutputs {
                        parents,
                        nodes: self.nodes.clone(),
                        base: None,
                    },
                )?
                .into_any(),
                None => self.results_dict(py, plan, &parents)?.into_any(),
            };
            let token = Bound::new(
                py,
                CancelToken {
                    flag: call.cancel.clone(),
                    logs: call.logs.clone(),
                    trace: self.trace.as_ref().map(|t| t.clone_ref(py)),
                },
            )?;
            let id = match call.item {
                Some(_) => PyString::new(py, &call_id(plan, call)),
                None => self.nodes.id(py, plan, call.node),
            };
            let mut args = vec![
                payload.map_or_else(|| py.None().into_bound(py), |p| p.bind(py).clone()),
                id.into_any(),
                self.run_id_py(py).into_any(),
                call.attempt.into_pyobject(py)?.into_any(),
                self.inputs.bind(py).clone(),
                results.into_any(),
                token.into_any(),
            ];
            // An item of a mapped node: `(index, item)` after the others.
            if let Some((index, item)) = &call.item {
                let pair = (*index, pythonize(py, item.as_ref())?);
                args.push(pair.into_pyobject(py)?.into_any());
            } else if when.is_some() {
                args.push(py.None().into_bound(py));
            }
            if let Some(when) = when {
                args.push(when.bind(py).clone());
            }
            let args = PyTuple::new(py, args)?;
            let _in_call = InCall::enter();
            self.invoke.bind(py).call1(args)
        };
        invoke_call().map_err(|e| self.failure(py, &e))
    }

    /// The run id as a Python string.
    fn run_id_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.run_id_py
            .get_or_init(|| PyString::new(py, &self.run_id).unbind())
            .bind(py)
            .clone()
    }

    /// The trampoline's `finish` (see [`direct_call`]), if it has one.
    fn finish<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyAny>> {
        self.finish
            .get_or_init(|| {
                self.invoke
                    .bind(py)
                    .getattr("finish")
                    .ok()
                    .map(Bound::unbind)
            })
            .as_ref()
            .map(|f| f.bind(py))
    }

    /// [`PyExternal::call`] of a node (and of its Python condition, if it has one), made
    /// here: the context built natively and the node called with it, no trampoline frame
    /// in between.
    #[allow(clippy::too_many_arguments)]
    fn call_direct<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        call: &ExternalCall,
        parents: Parents,
        (payload, when): (&Bound<'py, PyAny>, Option<&Bound<'py, PyAny>>),
        finish: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (parents, item, id) = if let Some((index, item)) = &call.item {
            let base = Some(self.item_results(py, plan, call)?);
            let item = (
                index.into_pyobject(py)?.into_any(),
                pythonize(py, item.as_ref())?,
            );
            let parents = ParentOutputs {
                parents: Parents::default(),
                nodes: self.nodes.clone(),
                base,
            };
            let id = CallId::Made(PyString::new(py, &call_id(plan, call)));
            (parents, Some(item), id)
        } else {
            // Ids as Python strings are made for a plan with Python nodes: this one.
            let base = if self.nodes.ids.len() == plan.dag().len() {
                None
            } else {
                Some(self.results_dict(py, plan, &parents)?.unbind())
            };
            let parents = ParentOutputs {
                parents: if base.is_none() {
                    parents
                } else {
                    Parents::default()
                },
                nodes: self.nodes.clone(),
                base,
            };
            let id = if (call.node as usize) < self.nodes.ids.len() {
                CallId::Node(&self.nodes, call.node)
            } else {
                CallId::Made(self.nodes.id(py, plan, call.node))
            };
            (parents, None, id)
        };
        let direct = DirectCall {
            payload,
            when,
            node_id: id,
            run_id: self.run_id_py(py),
            attempt: call.attempt,
            inputs: &self.inputs,
            parents,
            item,
            cancel: &call.cancel,
        };
        let token = || {
            Bound::new(
                py,
                CancelToken {
                    flag: call.cancel.clone(),
                    logs: call.logs.clone(),
                    trace: self.trace.as_ref().map(|t| t.clone_ref(py)),
                },
            )
            .map(Bound::into_any)
        };
        direct_call(py, direct, finish, token)
    }

    /// The failure of a node whose call raised `err` (a `KeyboardInterrupt` on the thread
    /// driving the run is kept for [`Host`] too).
    fn failure(&self, py: Python<'_>, err: &PyErr) -> NodeFailure {
        let failure = failure_from(py, err);
        if let Some((thread, interrupt)) = &self.caller {
            if err.is_instance_of::<PyKeyboardInterrupt>(py)
                && std::thread::current().id() == *thread
            {
                *interrupt.lock().unwrap_or_else(PoisonError::into_inner) = Some(err.clone_ref(py));
            }
        }
        failure
    }

    /// The Python callable of `node`'s condition.
    fn condition_payload(&self, plan: &Plan, node: NodeIdx) -> Result<&Py<PyAny>, NodeFailure> {
        match self.conditions.get(node as usize) {
            Some(Some(payload)) => Ok(payload),
            _ => Err(NodeFailure {
                kind: ErrorKind::DagEngineError.as_str().to_owned(),
                message: format!("node '{}' has no Python condition", plan.dag().id(node)),
                traceback: None,
                retryable: false,
            }),
        }
    }
}

/// A node's returned value as its output: a dict (JSON-like) or `None`.
/// `node_id` names the node in a failure (asked for then only).
fn output<'a>(
    node_id: impl FnOnce() -> Cow<'a, str>,
    returned: &Bound<'_, PyAny>,
) -> Result<Map<String, Value>, NodeFailure> {
    if returned.is_none() {
        return Ok(Map::new());
    }
    let bad_return = |what: String| NodeFailure {
        kind: "TypeError".to_owned(),
        message: format!(
            "node '{}' returned {what}; expected a dict or None",
            node_id()
        ),
        traceback: None,
        retryable: false,
    };
    if let Ok(dict) = returned.cast_exact::<PyDict>() {
        if let Some(map) = crate::json::dict_to_map(dict) {
            return Ok(map);
        }
    }
    if !returned.is_instance_of::<PyDict>() {
        let ty = returned
            .get_type()
            .name()
            .map_or_else(|_| "an object".to_owned(), |n| format!("a {n}"));
        return Err(bad_return(ty));
    }
    match depythonize::<Value>(returned) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_return("a non-object".to_owned())),
        Err(e) => Err(bad_return(format!("a dict that is not JSON-like ({e})"))),
    }
}

/// Threads for Python nodes: enough for I/O-bound nodes to overlap, grown only while
/// nodes wait; `DAGENGINE_PYTHON_THREADS` overrides it.
const DEFAULT_PYTHON_THREADS: usize = 32;
/// Python nodes one worker runs per entry into the interpreter.
const PYTHON_BATCH: usize = 64;

fn python_pool() -> &'static WorkerPool {
    static POOL: OnceLock<WorkerPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("DAGENGINE_PYTHON_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_PYTHON_THREADS);
        // Register each worker with the interpreter once for its life (detached while it
        // waits), so taking the GIL later is a cheap restore, not a new thread state; hold
        // the GIL for a whole batch, so each node's own `Python::attach` is a no-op.
        let thread: Context = Arc::new(|life: &mut (dyn FnMut() + Send)| {
            if exiting() {
                life();
            } else {
                Python::attach(|py| py.detach(&mut *life));
            }
        });
        let batch: Context = Arc::new(|turn: &mut (dyn FnMut() + Send)| {
            if exiting() {
                turn();
            } else {
                Python::attach(|_| turn());
            }
        });
        let hooks = Hooks {
            thread: Some(thread),
            batch: Some(batch),
        };
        WorkerPool::new(
            "dagengine-py",
            threads,
            PYTHON_BATCH,
            Growth::WhenStalled(Duration::from_millis(1)),
            hooks,
        )
    })
}

fn failure_from(py: Python<'_>, err: &PyErr) -> NodeFailure {
    let kind = err
        .get_type(py)
        .name()
        .map_or_else(|_| "Exception".to_owned(), |n| n.to_string());
    let message = err
        .value(py)
        .str()
        .map_or_else(|_| "<unprintable exception>".to_owned(), |s| s.to_string());
    let traceback = py
        .import("traceback")
        // The traceback as the error carries it: on Python 3.11 an exception that left the
        // trampoline without passing an except or finally clause has no __traceback__ yet.
        .and_then(|tb| {
            tb.getattr("format_exception")?.call1((
                err.get_type(py),
                err.value(py),
                err.traceback(py),
            ))
        })
        .and_then(|lines| lines.extract::<Vec<String>>())
        .ok()
        .map(|lines| lines.concat());
    NodeFailure {
        kind,
        message,
        traceback,
        retryable: true,
    }
}

impl ExternalExecutor for PyExternal {
    fn pool(&self) -> WorkerPool {
        python_pool().clone()
    }

    fn inline(&self, node: NodeIdx) -> bool {
        self.nodes
            .inline
            .get(node as usize)
            .copied()
            .unwrap_or(false)
    }

    fn execute(&self, plan: &Plan, call: ExternalCall) -> Result<Map<String, Value>, NodeFailure> {
        let Some(Some(payload)) = self.payloads.get(call.node as usize) else {
            return Err(NodeFailure {
                kind: ErrorKind::DagEngineError.as_str().to_owned(),
                message: format!("node '{}' has no Python callable", plan.dag().id(call.node)),
                traceback: None,
                retryable: false,
            });
        };
        self.invoke(plan, call, payload)
    }

    fn take_logs(
        &self,
        plan: &Plan,
        node: NodeIdx,
        item: Option<u32>,
        attempt: u32,
    ) -> Vec<LogLine> {
        let Some(logs) = &self.logs else {
            return Vec::new();
        };
        if exiting() {
            return Vec::new();
        }
        let node_id = item_id(plan, node, item);
        Python::attach(|py| {
            logs.bind(py)
                .call_method1("take", (self.run_id.as_str(), node_id.as_ref(), attempt))
                .and_then(|lines| lines.extract::<Vec<(String, String)>>())
                .map(|lines| {
                    lines
                        .into_iter()
                        .map(|(level, message)| LogLine { level, message })
                        .collect()
                })
                // The store is ours and returns a list of pairs: nothing to report to a node.
                .unwrap_or_default()
        })
    }

    /// The trampoline calls the node's `when` and returns its value, or raises naming the
    /// node when it is not a bool.
    fn condition(&self, plan: &Plan, call: &ExternalCall) -> Result<bool, NodeFailure> {
        let when = self.condition_payload(plan, call.node)?;
        Python::attach(|py| {
            let parents = call.results.clone();
            let held = self.call(py, plan, call, parents, None, Some(when))?;
            held.extract::<bool>().map_err(|e| failure_from(py, &e))
        })
    }

    /// One trampoline call: the condition on the node's context, then (if it held) the
    /// node on the same context.
    fn checked(&self, plan: &Plan, mut call: ExternalCall) -> Checked {
        let owner = call.node;
        let node_id = || Cow::Borrowed(plan.dag().id(owner));
        let (when, payload) = match (
            self.condition_payload(plan, call.node),
            self.payloads.get(call.node as usize),
        ) {
            (Ok(when), Some(Some(payload))) => (when, payload),
            (Err(failure), _) => return Checked::ConditionFailed(failure),
            (Ok(_), _) => return Checked::Ran(self.execute(plan, call)),
        };
        let parents = take_parents(&mut call);
        Python::attach(|py| {
            let returned = match self.call(py, plan, &call, parents, Some(payload), Some(when)) {
                Ok(returned) => returned,
                Err(failure) => return Checked::Ran(Err(failure)),
            };
            if let Ok(held) = returned.cast::<PyBool>() {
                // Only `False` comes back as a bool (a node's own `False` is a TypeError).
                return if held.is_true() {
                    Checked::Ran(output(node_id, &returned))
                } else {
                    Checked::Skipped
                };
            }
            if returned.is_instance_of::<PyBaseException>() {
                let err = PyErr::from_value(returned);
                return Checked::ConditionFailed(self.failure(py, &err));
            }
            Checked::Ran(output(node_id, &returned))
        })
    }
}

impl PyExternal {
    /// Each parent's id and output, converted.
    fn results_dict<'py>(
        &self,
        py: Python<'py>,
        plan: &Plan,
        parents: &Parents,
    ) -> PyResult<Bound<'py, PyDict>> {
        let results = PyDict::new(py);
        parents
            .try_for_each(|p, v| results.set_item(self.nodes.id(py, plan, p), convert(py, v)?))?;
        Ok(results)
    }

    /// An item's mapped node's parents' outputs, converted once per node (a list of
    /// 100,000 rows is not converted again for each of its items): each item's
    /// [`ParentOutputs`] copies it.
    fn item_results(
        &self,
        py: Python<'_>,
        plan: &Plan,
        call: &ExternalCall,
    ) -> PyResult<Py<PyDict>> {
        let cached = self
            .item_results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(n, _)| *n == call.node)
            .map(|(_, d)| d.clone_ref(py));
        let dict = if let Some(d) = cached {
            d.into_bound(py)
        } else {
            let d = self.results_dict(py, plan, &call.results)?;
            self.item_results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((call.node, d.clone().unbind()));
            d
        };
        Ok(dict.unbind())
    }
}

/// The parents' outputs of `call`, taken out of it: an item's stay (the first of its node's
/// items converts them for all, see `item_results`).
fn take_parents(call: &mut ExternalCall) -> Parents {
    match call.item {
        Some(_) => Parents::default(),
        None => std::mem::take(&mut call.results),
    }
}

/// The id of `call`'s node, or of its item (`square[3]`).
fn call_id<'a>(plan: &'a Plan, call: &ExternalCall) -> Cow<'a, str> {
    item_id(plan, call.node, call.item.as_ref().map(|(i, _)| *i))
}

/// The id of `node`, or of its item `item` (`square[3]`).
fn item_id(plan: &Plan, node: NodeIdx, item: Option<u32>) -> Cow<'_, str> {
    let id = plan.dag().id(node);
    match item {
        // Not `format!`: its machinery cost more than a trivial item's call.
        Some(i) => {
            let mut s = String::with_capacity(id.len() + 12);
            s.push_str(id);
            s.push('[');
            push_decimal(&mut s, i);
            s.push(']');
            Cow::Owned(s)
        }
        None => Cow::Borrowed(id),
    }
}

/// Append `n` in decimal.
fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

/// What Python calls need of a plan's nodes, made once per plan.
#[derive(Default)]
pub struct PyNodes {
    /// Which nodes may run on the thread that drives a run (`PendingRun.run`): each node's
    /// callable and its condition's, if any, must be synchronous
    /// (`dagengine._invoke.inline_ok`): an `async def` node or a sub-workflow goes to the
    /// pool.
    inline: Vec<bool>,
    /// Which nodes' callables the core may call itself ([`crate::context::direct_call`]):
    /// all but sub-workflows (the trampoline hands those to the orchestrator's runner).
    direct: Vec<bool>,
    /// Each node's id as a Python string (results keys, the trampoline's `node_id`), for
    /// a plan with Python nodes (empty for one without: a million no-op nodes need none).
    pub(crate) ids: Vec<Py<PyString>>,
}

impl PyNodes {
    pub fn new(
        py: Python<'_>,
        plan: &Plan,
        payloads: &[Option<Py<PyAny>>],
        conditions: &[Option<Py<PyAny>>],
    ) -> PyResult<Self> {
        if payloads.iter().chain(conditions).all(Option::is_none) {
            return Ok(Self::default());
        }
        let ok = py.import("dagengine._invoke")?.getattr("inline_ok")?;
        let check = |p: Option<&Py<PyAny>>| -> PyResult<bool> {
            match p {
                Some(p) => ok.call1((p.bind(py),))?.extract(),
                None => Ok(true),
            }
        };
        let inline = (0..payloads.len().max(conditions.len()))
            .map(|i| {
                Ok(check(payloads.get(i).and_then(Option::as_ref))?
                    && check(conditions.get(i).and_then(Option::as_ref))?)
            })
            .collect::<PyResult<_>>()?;
        let sub = py.import("dagengine.nodes")?.getattr("SubWorkflow")?;
        let direct = payloads
            .iter()
            .map(|p| p.as_ref().is_some_and(|p| !p.bind(py).get_type().is(&sub)))
            .collect();
        let dag = plan.dag();
        let ids = (0..dag.len() as NodeIdx)
            .map(|i| PyString::new(py, dag.id(i)).unbind())
            .collect();
        Ok(Self {
            inline,
            direct,
            ids,
        })
    }

    /// Whether `node`'s callable may be called without the trampoline.
    fn direct(&self, node: NodeIdx) -> bool {
        self.direct.get(node as usize).copied().unwrap_or(false)
    }

    /// The id of `node` as a Python string.
    fn id<'py>(&self, py: Python<'py>, plan: &Plan, node: NodeIdx) -> Bound<'py, PyString> {
        match self.ids.get(node as usize) {
            Some(id) => id.bind(py).clone(),
            None => PyString::new(py, plan.dag().id(node)),
        }
    }
}

/// The thread driving a run (`DagRef.run`), holding the GIL: it is released while the run
/// waits or runs Lua, and Ctrl-C (a signal, or a `KeyboardInterrupt` out of a node called
/// here) cancels the run and is raised once it ended.
pub struct Host<'py> {
    py: Python<'py>,
    interrupt: Interrupt,
}

impl<'py> Host<'py> {
    pub fn new(py: Python<'py>, external: &PyExternal) -> Self {
        let interrupt = external
            .caller
            .as_ref()
            .map_or_else(Arc::default, |(_, i)| i.clone());
        Self { py, interrupt }
    }

    /// Raise the interrupt, if there was one.
    pub fn raise(&self) -> PyResult<()> {
        match self
            .interrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl InlineHost for Host<'_> {
    fn blocking(&self, f: &mut (dyn FnMut() + Send)) {
        self.py.detach(f);
    }

    fn interrupted(&self) -> bool {
        let mut slot = self
            .interrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return true;
        }
        match self.py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *slot = Some(e);
                true
            }
        }
    }
}

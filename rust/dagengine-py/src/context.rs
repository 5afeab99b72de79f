//! `NodeContext`, what a Python node receives (`fn(ctx)`), as a native class: the core makes
//! one per call and calls the node with it directly ([`direct_call`]), where building it in
//! the Python trampoline (a frame, an object and eight attribute stores) cost more than a
//! trivial node's own call. The trampoline remains for what needs Python around the call:
//! a condition, a sub-workflow, captured log lines; and an awaitable a node returns, or an
//! output that is neither `None` nor a dict with str keys, goes to its `finish`. Also
//! here: [`ParentOutputs`], the parents' outputs a context converts when first read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use dagengine_core::NodeIdx;
use dagengine_server::Parents;
use pythonize::pythonize;
use serde_json::Value;

use crate::exit::InCall;
use crate::external::PyNodes;

/// A context's `results`: as the core handed them (converted on the first read), or a
/// value (the converted dict, one assigned, or what the constructor was given).
enum Results {
    Lazy(ParentOutputs),
    Value(Py<PyAny>),
}

/// A context's `node_id`: a value (an item's id, one assigned, or what the constructor was
/// given), or a node of the plan, its id string looked up when first read. A run of
/// 10,000 trivial nodes spent ~10% of its time taking a reference to each node's id
/// string (a cache miss a node) that the node never read.
enum NodeId {
    Value(Py<PyAny>),
    Node(Arc<PyNodes>, NodeIdx),
}

impl NodeId {
    fn get(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            NodeId::Value(v) => v.clone_ref(py),
            NodeId::Node(nodes, node) => nodes.ids[*node as usize].clone_ref(py).into_any(),
        }
    }
}

/// The id a [`DirectCall`] gives its context: made for the call (an item's), or its
/// node's, looked up only if read.
pub(crate) enum CallId<'a, 'py> {
    Made(Bound<'py, PyString>),
    Node(&'a Arc<PyNodes>, NodeIdx),
}

impl<'py> CallId<'_, 'py> {
    fn node_id(&self) -> NodeId {
        match self {
            CallId::Made(id) => NodeId::Value(id.clone().into_any().unbind()),
            CallId::Node(nodes, node) => NodeId::Node(Arc::clone(nodes), *node),
        }
    }

    fn get(&self, py: Python<'py>) -> Bound<'py, PyString> {
        match self {
            CallId::Made(id) => id.clone(),
            CallId::Node(nodes, node) => nodes.ids[*node as usize].bind(py).clone(),
        }
    }
}

/// What `cancelled` reads: the attempt's flag, a token object (`is_set`), or nothing.
enum Cancel {
    None,
    Flag(Arc<AtomicBool>),
    Token(Py<PyAny>),
}

/// What a Python node receives: ``fn(ctx)``.
///
/// ``inputs`` are the run's inputs (read-only), ``results`` maps each parent's id to that
/// parent's output, ``node_id``/``run_id``/``attempt`` (1 for the first try) identify the
/// call, and ``cancelled`` turns true when the run is cancelled or the node times out, so
/// long-running code can stop early. In an item of a mapped node (``node_id`` like
/// ``square[3]``), ``item`` is the item and ``index`` its position (from 0); elsewhere both
/// are ``None``.
#[pyclass(module = "dagengine._core")]
pub struct NodeContext {
    /// The run's inputs, a read-only mapping.
    #[pyo3(get, set)]
    inputs: Py<PyAny>,
    /// The node's id (an item's: ``square[3]``).
    node_id: NodeId,
    #[pyo3(get, set)]
    run_id: Py<PyAny>,
    /// 1 for the first try.
    #[pyo3(get, set)]
    attempt: Py<PyAny>,
    /// An item's position in its mapped node's list (from 0); ``None`` elsewhere.
    #[pyo3(get, set)]
    index: Py<PyAny>,
    /// An item of a mapped node; ``None`` elsewhere.
    #[pyo3(get, set)]
    item: Py<PyAny>,
    results: Results,
    cancel: Cancel,
}

/// `types.MappingProxyType`.
fn mapping_proxy(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static PROXY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    PROXY.import(py, "types", "MappingProxyType")
}

// pyo3 hands `__traverse__` its visitor by value, and the constructor takes one argument
// per field of the Python signature it keeps.
#[allow(clippy::needless_pass_by_value, clippy::too_many_arguments)]
#[pymethods]
impl NodeContext {
    #[new]
    #[pyo3(signature = (inputs, results, node_id, run_id, attempt, cancel=None, item=None))]
    fn new(
        py: Python<'_>,
        inputs: Bound<'_, PyAny>,
        results: Py<PyAny>,
        node_id: Py<PyAny>,
        run_id: Py<PyAny>,
        attempt: Py<PyAny>,
        cancel: Option<Py<PyAny>>,
        item: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let proxy = mapping_proxy(py)?;
        // A view, not a copy: nodes must not change the run's inputs, and copying them for
        // every node call would cost O(inputs) per node.
        let inputs = if inputs.get_type().is(proxy) {
            inputs.unbind()
        } else {
            proxy.call1((inputs,))?.unbind()
        };
        let (index, item) = match item {
            None => (py.None(), py.None()),
            Some(pair) => pair.extract::<(Py<PyAny>, Py<PyAny>)>()?,
        };
        Ok(Self {
            inputs,
            node_id: NodeId::Value(node_id),
            run_id,
            attempt,
            index,
            item,
            results: Results::Value(results),
            cancel: cancel.map_or(Cancel::None, Cancel::Token),
        })
    }

    /// Each parent's id and its output: a dict of this call's own (changing it, or an
    /// output in it, changes nothing another node sees). The core hands the parents'
    /// outputs over as they are; they become this dict when it is first read (a node that
    /// never reads it costs nothing per parent).
    #[getter]
    fn results(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let converted = match &self.results {
            Results::Lazy(parents) => parents.dict(py)?.into_any().unbind(),
            Results::Value(v) => match v.bind(py).cast::<ParentOutputs>() {
                Ok(parents) => parents.get().dict(py)?.into_any().unbind(),
                Err(_) => return Ok(v.clone_ref(py)),
            },
        };
        self.results = Results::Value(converted.clone_ref(py));
        Ok(converted)
    }

    #[setter]
    fn set_results(&mut self, value: Py<PyAny>) {
        self.results = Results::Value(value);
    }

    /// The node's id (an item's: ``square[3]``).
    #[getter]
    fn node_id(&self, py: Python<'_>) -> Py<PyAny> {
        self.node_id.get(py)
    }

    #[setter]
    fn set_node_id(&mut self, value: Py<PyAny>) {
        self.node_id = NodeId::Value(value);
    }

    /// True once the run is cancelled or this attempt timed out (read live).
    #[getter]
    fn cancelled(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.cancel {
            Cancel::None => Ok(false),
            Cancel::Flag(flag) => Ok(flag.load(Ordering::Relaxed)),
            Cancel::Token(token) => token.bind(py).getattr("is_set")?.is_truthy(),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "NodeContext(node_id={}, run_id={}, attempt={})",
            self.node_id.get(py).bind(py).repr()?,
            self.run_id.bind(py).repr()?,
            self.attempt.bind(py).str()?,
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let NodeId::Value(v) = &self.node_id {
            visit.call(v)?;
        }
        for obj in [
            &self.inputs,
            &self.run_id,
            &self.attempt,
            &self.index,
            &self.item,
        ] {
            visit.call(obj)?;
        }
        match &self.results {
            Results::Lazy(parents) => parents.traverse(&visit)?,
            Results::Value(v) => visit.call(v)?,
        }
        if let Cancel::Token(t) = &self.cancel {
            visit.call(t)?;
        }
        Ok(())
    }

    fn __clear__(&mut self, py: Python<'_>) {
        self.results = Results::Value(py.None());
        self.cancel = Cancel::None;
        self.item = py.None();
        self.inputs = py.None();
    }
}

/// One call of a node's callable, made by the core without the trampoline.
pub(crate) struct DirectCall<'a, 'py> {
    pub(crate) payload: &'a Bound<'py, PyAny>,
    /// The node's Python condition, checked first on the same context.
    pub(crate) when: Option<&'a Bound<'py, PyAny>>,
    pub(crate) node_id: CallId<'a, 'py>,
    pub(crate) run_id: Bound<'py, PyString>,
    pub(crate) attempt: u32,
    pub(crate) inputs: &'a Py<PyAny>,
    pub(crate) parents: ParentOutputs,
    pub(crate) item: Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    pub(crate) cancel: &'a Arc<AtomicBool>,
}

/// Call the node: `payload(ctx)`. What it returned if that is `None` or a dict whose keys
/// are all `str`; anything else goes through `finish(node_id, returned, token())` (the
/// trampoline's: it awaits an awaitable, cancelled with the node, and checks the output),
/// whose answer (or exception) is the call's. With a `when`, as the trampoline does: the
/// condition is called on the same context first; `False` is returned when it is false,
/// and its exception (or a `TypeError` when it is not a bool) is returned, not raised.
pub(crate) fn direct_call<'py>(
    py: Python<'py>,
    call: DirectCall<'_, 'py>,
    finish: &Bound<'py, PyAny>,
    token: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (index, item) = match call.item {
        Some((i, v)) => (i.unbind(), v.unbind()),
        None => (py.None(), py.None()),
    };
    let ctx = Bound::new(
        py,
        NodeContext {
            inputs: call.inputs.clone_ref(py),
            node_id: call.node_id.node_id(),
            run_id: call.run_id.into_any().unbind(),
            attempt: call.attempt.into_pyobject(py)?.into_any().unbind(),
            index,
            item,
            results: Results::Lazy(call.parents),
            cancel: Cancel::Flag(call.cancel.clone()),
        },
    )?;
    let _in_call = InCall::enter();
    if let Some(when) = call.when {
        let held = match when.call1((&ctx,)) {
            Ok(held) => held,
            Err(e) => return Ok(e.into_value(py).into_bound(py).into_any()),
        };
        match held.cast_exact::<PyBool>() {
            Ok(b) if b.is_true() => {}
            Ok(_) => return Ok(held),
            Err(_) => {
                let msg = format!(
                    "node {}: when must return a bool, got {} {}",
                    call.node_id.get(py).repr()?,
                    held.get_type().name()?,
                    held.repr()?,
                );
                let err = PyTypeError::new_err(msg);
                return Ok(err.into_value(py).into_bound(py).into_any());
            }
        }
    }
    let returned = call.payload.call1((ctx,))?;
    if returned.is_none() {
        return Ok(returned);
    }
    if let Ok(dict) = returned.cast_exact::<PyDict>() {
        if dict
            .iter()
            .all(|(k, _)| k.is_exact_instance_of::<PyString>())
        {
            return Ok(returned);
        }
    }
    finish.call1(PyTuple::new(
        py,
        [call.node_id.get(py).into_any(), returned, token()?],
    )?)
}

/// A node's parents' outputs (`ctx.results`), converted to a dict only when the node reads
/// them (`NodeContext.results` calls [`ParentOutputs::dict`] once): a node that does not read
/// them (a trivial one) costs no dict per parent. Each call gets its own, converted from the
/// parents' outputs for it alone, so what one node changes in it no other node sees.
#[pyclass(module = "dagengine._core", frozen)]
pub struct ParentOutputs {
    pub(crate) parents: Parents,
    pub(crate) nodes: Arc<PyNodes>,
    /// For an item of a mapped node: its node's parents' outputs, converted for its first
    /// item; each item gets a copy (the values shared), not a conversion each.
    pub(crate) base: Option<Py<PyDict>>,
}

impl ParentOutputs {
    /// What the garbage collector needs to see of it (a [`crate::context::NodeContext`]
    /// holds one).
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match &self.base {
            Some(base) => visit.call(base),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl ParentOutputs {
    /// Each parent's id and output, converted: a new dict on every call.
    pub(crate) fn dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if let Some(base) = &self.base {
            return base.bind(py).copy();
        }
        let results = PyDict::new(py);
        self.parents.try_for_each(|p, v| {
            let id = self.nodes.ids[p as usize].bind(py);
            results.set_item(id, convert(py, v)?)
        })?;
        Ok(results)
    }

    fn __len__(&self) -> usize {
        self.parents.len()
    }
}

/// A parent's output as a new Python dict.
pub(crate) fn convert<'py>(py: Python<'py>, output: &Value) -> PyResult<Bound<'py, PyAny>> {
    match output {
        // A parent that returned nothing (the common trivial case).
        Value::Object(m) if m.is_empty() => Ok(PyDict::new(py).into_any()),
        v => pythonize(py, v).map_err(PyErr::from),
    }
}

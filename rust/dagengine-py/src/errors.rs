//! Rust errors -> the Python classes in `dagengine.exceptions`.
//!
//! The classes are defined in Python (so they have real constructors and attributes,
//! and subclass `ValueError` where that is right); each Rust error maps to its own class,
//! named by its [`ErrorKind`] and called as `Class(message, **attributes)`. The classes are
//! resolved once, when `_core` is imported ([`load`]): a missing one fails the import, not
//! the first raise.

use dagengine_core::{ErrorKind, GraphError};
use dagengine_lua::LuaError;
use dagengine_server::RuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// The exception class of each kind, indexed by `kind as usize` (`None` for the kinds
/// without one).
static CLASSES: PyOnceLock<Vec<Option<Py<PyType>>>> = PyOnceLock::new();

/// Resolve every kind's class in `dagengine.exceptions`; called by the module's init.
pub fn load(py: Python<'_>) -> PyResult<()> {
    let module = py.import("dagengine.exceptions")?;
    let classes = ErrorKind::ALL
        .iter()
        .map(|kind| {
            if !kind.has_exception_class() {
                return Ok(None);
            }
            let class = module.getattr(kind.as_str())?.cast_into::<PyType>()?;
            Ok(Some(class.unbind()))
        })
        .collect::<PyResult<Vec<_>>>()?;
    // A second import of the module (after `del sys.modules[...]`) finds the table set.
    let _ = CLASSES.set(py, classes);
    Ok(())
}

/// Build an instance of the class of `kind` as a `PyErr`.
pub fn raise(py: Python<'_>, kind: ErrorKind, message: &str, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let class = CLASSES
        .get(py)
        .and_then(|classes| classes[kind as usize].as_ref())
        .unwrap_or_else(|| panic!("no exception class for {kind} (is `_core` initialised?)"));
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        for (k, v) in attrs {
            kwargs.set_item(k, v)?;
        }
        let exc = class.bind(py).call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    // If constructing the exception fails, that error is the more useful one.
    build().unwrap_or_else(|e| e)
}

fn s(py: Python<'_>, v: &str) -> Py<PyAny> {
    v.into_pyobject(py)
        .expect("str conversion")
        .into_any()
        .unbind()
}

/// `GraphError` -> `CycleError`, `UnknownDependencyError`, ...
pub fn graph_error(py: Python<'_>, e: &GraphError) -> PyErr {
    let msg = e.to_string();
    match e {
        GraphError::DuplicateNode { node_id } => raise(
            py,
            ErrorKind::DuplicateNodeError,
            &msg,
            &[("node_id", s(py, node_id))],
        ),
        GraphError::SelfDependency { node_id } => raise(
            py,
            ErrorKind::SelfDependencyError,
            &msg,
            &[("node_id", s(py, node_id))],
        ),
        GraphError::UnknownDependency {
            node_id,
            dependency,
        } => raise(
            py,
            ErrorKind::UnknownDependencyError,
            &msg,
            &[
                ("node_id", s(py, node_id)),
                ("dependency", s(py, dependency)),
            ],
        ),
        GraphError::Cycle { path } => {
            let cycle = path
                .clone()
                .into_pyobject(py)
                .expect("list conversion")
                .into_any()
                .unbind();
            raise(py, ErrorKind::CycleError, &msg, &[("cycle", cycle)])
        }
        GraphError::InvalidInput(_) => raise(py, ErrorKind::ValidationError, &msg, &[]),
    }
}

/// A Lua error raised at the boundary (only syntax errors are raised; errors during a run
/// are recorded on the node instead).
pub fn lua_error(py: Python<'_>, e: &LuaError, node_id: Option<&str>) -> PyErr {
    let msg = match node_id {
        Some(id) => format!("node '{id}': {e}"),
        None => e.to_string(),
    };
    let mut attrs = Vec::new();
    if let Some(id) = node_id {
        attrs.push(("node_id", s(py, id)));
    }
    if let LuaError::Syntax {
        line: Some(line), ..
    } = e
    {
        attrs.push((
            "line",
            line.into_pyobject(py)
                .expect("int conversion")
                .into_any()
                .unbind(),
        ));
    }
    raise(py, e.kind(), &msg, &attrs)
}

/// The runtime cannot run here (used after fork, failed to start).
pub fn runtime_error(py: Python<'_>, e: &RuntimeError) -> PyErr {
    raise(py, ErrorKind::EngineRuntimeError, &e.to_string(), &[])
}

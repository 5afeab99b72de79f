//! Rust errors -> the Python classes in `dagengine.exceptions`.
//!
//! The classes are defined in Python (so they have real constructors and attributes,
//! and subclass `ValueError` where that is right); each Rust error variant maps to its
//! own class, looked up by name and called as `Class(message, **attributes)`.

use dagengine_core::GraphError;
use dagengine_lua::LuaError;
use dagengine_server::runner::lua_class;
use dagengine_server::RuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Build an instance of `dagengine.exceptions.<class>` as a `PyErr`.
pub fn raise(py: Python<'_>, class: &str, message: &str, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = py.import("dagengine.exceptions")?;
        let cls = module.getattr(class)?;
        let kwargs = PyDict::new(py);
        for (k, v) in attrs {
            kwargs.set_item(k, v)?;
        }
        let exc = cls.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    // If the exceptions module itself is broken, that error is the more useful one.
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
            "DuplicateNodeError",
            &msg,
            &[("node_id", s(py, node_id))],
        ),
        GraphError::SelfDependency { node_id } => raise(
            py,
            "SelfDependencyError",
            &msg,
            &[("node_id", s(py, node_id))],
        ),
        GraphError::UnknownDependency {
            node_id,
            dependency,
        } => raise(
            py,
            "UnknownDependencyError",
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
            raise(py, "CycleError", &msg, &[("cycle", cycle)])
        }
        GraphError::InvalidInput(_) => raise(py, "ValidationError", &msg, &[]),
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
    raise(py, lua_class(e), &msg, &attrs)
}

/// The runtime cannot run here (used after fork, failed to start).
pub fn runtime_error(py: Python<'_>, e: &RuntimeError) -> PyErr {
    raise(py, "EngineRuntimeError", &e.to_string(), &[])
}

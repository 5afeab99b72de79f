//! A Python cache object (`dagengine.cache.Cache`: `get(node_id, key)` and
//! `put(node_id, key, output, run_id, ttl)`) as the run's [`NodeCache`]. The driver calls it
//! on its own thread, attaching to the interpreter for the call: a cached node pays one
//! attach for its lookup, and one for its store when it ran.

use std::sync::Arc;
use std::time::Duration;

use dagengine_server::{CacheHit, CacheSpec, MemoryCache, NodeCache};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pythonize::{depythonize, pythonize};
use serde_json::Value;

use crate::errors;
use crate::exit::exiting;

/// A cached node's options as `add_node` gets them: `(key, ttl, code)`.
#[derive(FromPyObject)]
pub struct CacheOptions(Option<String>, Option<f64>, Option<String>);

impl CacheOptions {
    /// The node's cache spec: its code identity is `code`, or a Lua node's script. A
    /// ttl that is not a positive number of seconds, a key that does not compile and a
    /// mapped node raise.
    pub fn spec(
        self,
        py: Python<'_>,
        node_id: &str,
        kind: &str,
        payload: Option<&Bound<'_, PyAny>>,
        mapped: bool,
    ) -> PyResult<CacheSpec> {
        if mapped {
            return Err(PyValueError::new_err(format!(
                "node '{node_id}': a mapped node cannot be cached"
            )));
        }
        let Self(key, ttl, code) = self;
        let ttl = match ttl {
            None => None,
            Some(t) if t > 0.0 && t.is_finite() => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(PyValueError::new_err(format!(
                    "node '{node_id}': cache ttl must be a positive number of seconds, got {t}"
                )))
            }
        };
        let lua_source = (kind == "lua")
            .then(|| payload.and_then(|p| p.extract::<String>().ok()))
            .flatten();
        let code = code.or(lua_source).unwrap_or_else(|| kind.to_owned());
        let spec = CacheSpec::new(code, key.as_deref(), ttl);
        spec.check()
            .map_err(|e| errors::lua_error(py, &e, Some(node_id)))?;
        Ok(spec)
    }
}

/// The run's cache, a Python object.
pub struct PyCache {
    cache: Py<PyAny>,
}

impl PyCache {
    pub fn new(cache: Py<PyAny>) -> Self {
        Self { cache }
    }
}

impl std::fmt::Debug for PyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyCache").finish_non_exhaustive()
    }
}

impl NodeCache for PyCache {
    /// A lookup that raises, or returns something else than `None` or `(output, run_id)`,
    /// is reported like an exception nobody catches, and is a miss: the node runs.
    fn get(&self, node_id: &str, key: &str) -> Option<CacheHit> {
        if exiting() {
            return None;
        }
        Python::attach(|py| {
            let found = self
                .cache
                .bind(py)
                .call_method1("get", (node_id, key))
                .and_then(|found| {
                    if found.is_none() {
                        return Ok(None);
                    }
                    let (output, run_id): (Bound<'_, PyAny>, String) = found.extract()?;
                    let output: Value = depythonize(&output)?;
                    Ok(Some(CacheHit { output, run_id }))
                });
            found.unwrap_or_else(|e| {
                e.write_unraisable(py, None);
                None
            })
        })
    }

    /// A store that raises is reported like an exception nobody catches: the run goes on.
    fn put(&self, node_id: &str, key: &str, output: &Value, run_id: &str, ttl: Option<Duration>) {
        if exiting() {
            return;
        }
        Python::attach(|py| {
            let stored = pythonize(py, output).map_err(PyErr::from).and_then(|out| {
                let ttl = ttl.map(|t| t.as_secs_f64());
                self.cache
                    .bind(py)
                    .call_method1("put", (node_id, key, out, run_id, ttl))
            });
            if let Err(e) = stored {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// The bounded in-memory cache of the core (`dagengine.cache.MemoryCache` on the wall
/// clock): a run given it looks its cached nodes up without entering the interpreter.
#[pyclass(module = "dagengine._core", frozen)]
pub struct MemoryCacheRef {
    inner: Arc<MemoryCache>,
}

#[pymethods]
impl MemoryCacheRef {
    #[new]
    fn new(max_entries: usize) -> PyResult<Self> {
        if max_entries == 0 {
            return Err(PyValueError::new_err("max_entries must be at least 1"));
        }
        Ok(Self {
            inner: Arc::new(MemoryCache::new(max_entries)),
        })
    }

    /// The unexpired `(output, run_id)` of `node_id` under `key`, or `None`.
    fn get<'py>(
        &self,
        py: Python<'py>,
        node_id: &str,
        key: &str,
    ) -> PyResult<Option<(Bound<'py, PyAny>, String)>> {
        let Some(hit) = self.inner.get(node_id, key) else {
            return Ok(None);
        };
        Ok(Some((pythonize(py, &hit.output)?, hit.run_id)))
    }

    /// Store `output` (a dict) of run `run_id` for `node_id` under `key`, for `ttl` seconds.
    #[pyo3(signature = (node_id, key, output, run_id, ttl=None))]
    fn put(
        &self,
        node_id: &str,
        key: &str,
        output: &Bound<'_, PyAny>,
        run_id: &str,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let output: Value = depythonize(output)?;
        let ttl = ttl
            .map(|t| {
                Duration::try_from_secs_f64(t).map_err(|_| {
                    PyValueError::new_err(format!("ttl must be a number of seconds >= 0, got {t}"))
                })
            })
            .transpose()?;
        self.inner.put(node_id, key, &output, run_id, ttl);
        Ok(())
    }

    /// Drop every entry.
    fn clear(&self) {
        self.inner.clear();
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// The run's cache: the core's own for a `MemoryCacheRef`, a [`PyCache`] for anything else.
pub fn node_cache(cache: Py<PyAny>, py: Python<'_>) -> Arc<dyn NodeCache> {
    if let Ok(native) = cache.bind(py).cast::<MemoryCacheRef>() {
        return native.get().inner.clone();
    }
    Arc::new(PyCache::new(cache))
}

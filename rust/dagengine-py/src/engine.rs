//! The engine process's gRPC server, and how it resolves Python and sub-workflow nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dagengine_core::{ErrorKind, NodeIdx};
use dagengine_server::grpc::{
    EngineConfig, EngineServer, HostError, HostNode, HostNodes, HostRef, RunContext, TlsConfig,
};
use dagengine_server::{ExternalExecutor, Plan};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pythonize::pythonize;

use crate::errors;
use crate::external::PyExternal;

/// Resolves host nodes through the Python `resolve(kind, reference)` callable, caching what
/// it returns: the same import paths come back with every run.
struct PyHostNodes {
    resolve: Py<PyAny>,
    invoke: Py<PyAny>,
    /// Where the trampoline leaves Python nodes' captured lines (`take(run, node, attempt)`).
    logs: Option<Py<PyAny>>,
    /// `code_identity(import_path, node_id) -> str` of cached Python nodes, if given.
    code_identity: Option<Py<PyAny>>,
    cache: Mutex<HashMap<(bool, String), Py<PyAny>>>,
}

impl PyHostNodes {
    fn lookup(&self, py: Python<'_>, reference: &HostRef) -> PyResult<Py<PyAny>> {
        let (kind, text, is_python) = match reference {
            HostRef::Python(path) => ("python", path, true),
            HostRef::Workflow(r) => ("workflow", r, false),
        };
        let key = (is_python, text.clone());
        if let Some(found) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(found.clone_ref(py));
        }
        let value = self.resolve.bind(py).call1((kind, text.as_str()))?.unbind();
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, value.clone_ref(py));
        Ok(value)
    }
}

impl HostNodes for PyHostNodes {
    fn code_identities(
        &self,
        plan: &Plan,
        nodes: &[HostNode],
    ) -> Result<Vec<(NodeIdx, String)>, HostError> {
        let Some(identify) = &self.code_identity else {
            return Ok(Vec::new());
        };
        Python::attach(|py| {
            let mut codes = Vec::with_capacity(nodes.len());
            for h in nodes {
                let HostRef::Python(path) = &h.reference else {
                    continue;
                };
                let code = identify
                    .bind(py)
                    .call1((path.as_str(), plan.dag().id(h.node)))
                    .and_then(|v| v.extract::<String>())
                    .map_err(|e| HostError {
                        node: h.node,
                        message: describe(py, &e),
                    })?;
                codes.push((h.node, code));
            }
            Ok(codes)
        })
    }

    fn prepare(
        &self,
        plan: &Plan,
        nodes: &[HostNode],
        run: &RunContext,
    ) -> Result<Arc<dyn ExternalExecutor>, HostError> {
        Python::attach(|py| {
            let mut payloads: Vec<Option<Py<PyAny>>> = Vec::new();
            payloads.resize_with(plan.dag().len(), || None);
            for h in nodes {
                let value = self.lookup(py, &h.reference).map_err(|e| HostError {
                    node: h.node,
                    message: describe(py, &e),
                })?;
                payloads[h.node as usize] = Some(value);
            }
            let inputs = (|| -> PyResult<Py<PyAny>> {
                let dict = pythonize(py, run.inputs.as_ref())?;
                Ok(py
                    .import("types")?
                    .getattr("MappingProxyType")?
                    .call1((dict,))?
                    .unbind())
            })()
            .map_err(|e| HostError {
                node: nodes.first().map_or(0, |h| h.node),
                message: describe(py, &e),
            })?;
            let trace = if run.trace_context.is_empty() {
                None
            } else {
                Some(read_only(py, &run.trace_context).map_err(|e| HostError {
                    node: nodes.first().map_or(0, |h| h.node),
                    message: describe(py, &e),
                })?)
            };
            let external = PyExternal::new(
                self.invoke.clone_ref(py),
                Arc::new(payloads),
                inputs,
                run.run_id.clone(),
            )
            .with_logs(self.logs.as_ref().map(|l| l.clone_ref(py)))
            .with_trace(trace);
            Ok(Arc::new(external) as Arc<dyn ExternalExecutor>)
        })
    }
}

/// `map` as a read-only Python mapping (`types.MappingProxyType` over a dict).
fn read_only(py: Python<'_>, map: &HashMap<String, String>) -> PyResult<Py<PyAny>> {
    let dict = PyDict::new(py);
    for (key, value) in map {
        dict.set_item(key, value)?;
    }
    Ok(py
        .import("types")?
        .getattr("MappingProxyType")?
        .call1((dict,))?
        .unbind())
}

/// `Type: message` of a Python exception.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .name()
        .map_or_else(|_| "Exception".to_owned(), |n| n.to_string());
    format!("{ty}: {}", e.value(py))
}

/// The engine's gRPC server (`dagengine.v1.EngineService` + `grpc.health.v1`), served by
/// tonic on the core's runtime.
#[pyclass(module = "dagengine._core", frozen)]
pub struct EngineServerRef {
    server: EngineServer,
}

#[pymethods]
impl EngineServerRef {
    #[new]
    #[pyo3(signature = (
        engine_id, invoke, resolve, *, host = "127.0.0.1", port = 50051, capacity = 10,
        tls_cert = None, tls_key = None, tls_client_ca = None, max_message_bytes = 16_777_216,
        logs = None, code_identity = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        engine_id: String,
        invoke: Py<PyAny>,
        resolve: Py<PyAny>,
        host: &str,
        port: u16,
        capacity: u32,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        tls_client_ca: Option<Vec<u8>>,
        max_message_bytes: usize,
        logs: Option<Py<PyAny>>,
        code_identity: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let start_error = |msg: String| errors::raise(py, ErrorKind::EngineStartError, &msg, &[]);
        if capacity == 0 {
            return Err(start_error("capacity must be at least 1".to_owned()));
        }
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) if tls_client_ca.is_none() => None,
            _ => {
                return Err(start_error(
                    "TLS needs both tls_cert and tls_key (and tls_client_ca only with them)"
                        .to_owned(),
                ))
            }
        };
        let config = EngineConfig {
            engine_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: host.to_owned(),
            port,
            capacity,
            tls,
            max_message_bytes,
        };
        let host_nodes = Arc::new(PyHostNodes {
            resolve,
            invoke,
            logs,
            code_identity,
            cache: Mutex::new(HashMap::new()),
        });
        let server = py
            .detach(|| EngineServer::start(config, host_nodes))
            .map_err(|e| start_error(e.to_string()))?;
        Ok(Self { server })
    }

    #[getter]
    fn engine_id(&self) -> &str {
        self.server.engine_id()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.server.port()
    }

    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.server.info();
        let d = PyDict::new(py);
        d.set_item("engine_id", i.engine_id)?;
        d.set_item("version", i.version)?;
        d.set_item("capacity", i.capacity)?;
        d.set_item("active_runs", i.active_runs)?;
        d.set_item("uptime_seconds", i.uptime_seconds)?;
        d.set_item("draining", i.draining)?;
        d.set_item("active_run_ids", i.active_run_ids)?;
        Ok(d)
    }

    fn drain(&self, py: Python<'_>, grace: f64) -> usize {
        let grace = crate::secs(grace);
        let server = &self.server;
        py.detach(|| server.drain(grace))
    }

    fn stop(&self, py: Python<'_>) {
        let server = &self.server;
        py.detach(|| server.stop());
    }

    fn wait_stopped(&self, py: Python<'_>, timeout: f64) -> bool {
        let timeout = crate::secs(timeout);
        let server = &self.server;
        py.detach(|| server.wait_stopped(timeout))
    }
}

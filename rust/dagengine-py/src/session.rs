//! `EngineSession`: an engine's `Session` stream driven from Rust (see
//! `dagengine_server::grpc::session_client`), for the orchestrator's remote engines.
//!
//! Every session of the process lives on one thread, `dagengine-io`, which runs a
//! current-thread tokio runtime: the sessions' connections, their reads and writes, and
//! the hand-over of replies to Python. After each round of I/O, whatever every session has
//! received is handed over under one attach to the interpreter; while Python handles it,
//! the next replies wait in the sockets and come as one batch. So a burst of replies from
//! several engines costs one GIL hand-off, and a run costs no thread wake-up of its own
//! beyond the one its start makes (as the asyncio loop this replaces did, without the
//! loop's Python).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dagengine_core::ErrorKind;
use dagengine_server::grpc::{ClientTls, SessionClient, SessionOptions, SessionSink, Started};
use dagengine_server::RuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::Notify;
use tonic::codegen::Bytes;
use tonic::Code;

use crate::errors;
use crate::exit::{exiting, hand_over_lock};

struct Callbacks {
    on_replies: Py<PyAny>,
    on_end: Py<PyAny>,
}

enum Item {
    Replies(Bytes),
    Ended(Code, String),
}

type Delivery = (Arc<Callbacks>, Item);

/// The sessions' thread: its runtime, and what waits to be handed to Python.
struct Sessions {
    pid: u32,
    handle: tokio::runtime::Handle,
    inbox: Mutex<Vec<Delivery>>,
    ready: Notify,
}

fn sessions(py: Python<'_>) -> PyResult<&'static Arc<Sessions>> {
    static SESSIONS: OnceLock<Result<Arc<Sessions>, String>> = OnceLock::new();
    let entry = SESSIONS.get_or_init(|| start_sessions(py).map_err(|e| e.to_string()));
    match entry {
        Ok(s) if s.pid == std::process::id() => Ok(s),
        Ok(s) => Err(errors::runtime_error(
            py,
            &RuntimeError::Forked {
                parent: s.pid,
                child: std::process::id(),
            },
        )),
        Err(message) => Err(errors::raise(
            py,
            ErrorKind::EngineRuntimeError,
            message,
            &[],
        )),
    }
}

fn start_sessions(py: Python<'_>) -> PyResult<Arc<Sessions>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            errors::raise(
                py,
                ErrorKind::EngineRuntimeError,
                &format!("could not start the sessions runtime: {e}"),
                &[],
            )
        })?;
    let shared = Arc::new(Sessions {
        pid: std::process::id(),
        handle: runtime.handle().clone(),
        inbox: Mutex::new(Vec::new()),
        ready: Notify::new(),
    });
    let thread_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("dagengine-io".into())
        .spawn(move || {
            // The thread keeps its Python thread state for good (attached once, then
            // detached): each hand-over only takes the GIL back.
            let _ = Python::try_attach(|py| {
                py.detach(|| runtime.block_on(hand_over_forever(&thread_shared)));
            });
        })
        .map_err(|e| {
            errors::raise(
                py,
                ErrorKind::EngineRuntimeError,
                &format!("could not start the dagengine-io thread: {e}"),
                &[],
            )
        })?;
    Ok(shared)
}

async fn hand_over_forever(sessions: &Sessions) {
    loop {
        sessions.ready.notified().await;
        // The sessions' reads that are ready now go first: the batch is what this round
        // of I/O brought.
        tokio::task::yield_now().await;
        let items = std::mem::take(
            &mut *sessions
                .inbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if items.is_empty() {
            continue;
        }
        let _handing_over = hand_over_lock();
        if exiting() {
            continue;
        }
        let _ = Python::try_attach(|py| deliver(py, items));
    }
}

/// Hand `items` over in order: consecutive replies of one session as one list.
fn deliver(py: Python<'_>, items: Vec<Delivery>) {
    let mut current: Option<(Arc<Callbacks>, Vec<Bytes>)> = None;
    for (callbacks, item) in items {
        match item {
            Item::Replies(bytes) => match &mut current {
                Some((cb, batch)) if Arc::ptr_eq(cb, &callbacks) => batch.push(bytes),
                _ => {
                    if let Some((cb, batch)) = current.take() {
                        call_replies(py, &cb, &batch);
                    }
                    current = Some((callbacks, vec![bytes]));
                }
            },
            Item::Ended(code, message) => {
                if let Some((cb, batch)) = current.take() {
                    call_replies(py, &cb, &batch);
                }
                report(
                    py,
                    callbacks
                        .on_end
                        .bind(py)
                        .call1((code as i32, message.as_str())),
                );
            }
        }
    }
    if let Some((cb, batch)) = current.take() {
        call_replies(py, &cb, &batch);
    }
}

fn call_replies(py: Python<'_>, callbacks: &Callbacks, batch: &[Bytes]) {
    let list = PyList::new(py, batch.iter().map(|b| PyBytes::new(py, b)));
    report(
        py,
        list.and_then(|l| callbacks.on_replies.bind(py).call1((l,))),
    );
}

/// A callback that raised: reported like an exception in a thread nobody joins.
fn report(py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) {
    if let Err(e) = outcome {
        e.write_unraisable(py, None);
    }
}

struct PySink {
    callbacks: Arc<Callbacks>,
    sessions: &'static Sessions,
}

impl PySink {
    fn send(&self, item: Item) {
        self.sessions
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((Arc::clone(&self.callbacks), item));
        self.sessions.ready.notify_one();
    }
}

impl SessionSink for PySink {
    fn replies(&self, message: Bytes) {
        self.send(Item::Replies(message));
    }

    fn ended(&self, code: Code, message: String) {
        self.send(Item::Ended(code, message));
    }
}

/// One `Session` stream to an engine. See `_core.pyi`.
#[pyclass(module = "dagengine._core", frozen)]
pub struct EngineSession {
    client: SessionClient,
}

#[pymethods]
impl EngineSession {
    #[new]
    #[pyo3(signature = (
        address, on_replies, on_end, *, max_message_bytes, keepalive, connect_timeout=5.0,
        tls=false, ca_cert=None, client_cert=None, client_key=None, server_name=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        address: String,
        on_replies: Py<PyAny>,
        on_end: Py<PyAny>,
        max_message_bytes: usize,
        keepalive: f64,
        connect_timeout: f64,
        tls: bool,
        ca_cert: Option<Vec<u8>>,
        client_cert: Option<Vec<u8>>,
        client_key: Option<Vec<u8>>,
        server_name: Option<String>,
    ) -> PyResult<Self> {
        for (name, secs) in [
            ("keepalive", keepalive),
            ("connect_timeout", connect_timeout),
        ] {
            if !secs.is_finite() || secs <= 0.0 {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "{name} must be a positive number of seconds, got {secs}"
                )));
            }
        }
        let identity = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "client_cert and client_key go together (mutual TLS)",
                ))
            }
        };
        let options = SessionOptions {
            address,
            tls: tls.then_some(ClientTls {
                ca: ca_cert,
                identity,
                server_name,
            }),
            max_message_bytes,
            keepalive: Duration::from_secs_f64(keepalive),
            connect_timeout: Duration::from_secs_f64(connect_timeout),
        };
        let sessions: &'static Sessions = sessions(py)?;
        let sink = Arc::new(PySink {
            callbacks: Arc::new(Callbacks { on_replies, on_end }),
            sessions,
        });
        let client = SessionClient::open(options, sink, &sessions.handle)
            .map_err(|e| errors::raise(py, ErrorKind::EngineUnavailable, &e.to_string(), &[]))?;
        Ok(Self { client })
    }

    /// Send a run (an encoded `RunRequest`); `False` once the session has ended.
    fn start(&self, py: Python<'_>, request: &[u8]) -> PyResult<bool> {
        match self.client.start(Bytes::copy_from_slice(request)) {
            Started::Sent => Ok(true),
            Started::Ended => Ok(false),
            Started::TooLarge { size, limit } => Err(errors::raise(
                py,
                ErrorKind::MessageTooLarge,
                &format!(
                    "the request is {size} bytes on the wire, over the session's \
                     max_message_bytes of {limit}; not sent"
                ),
                &[],
            )),
        }
    }

    /// Cancel a run of this session on the engine; `False` once the session has ended.
    fn cancel(&self, run_id: String) -> bool {
        self.client.cancel(run_id)
    }

    /// End the session (the engine cancels its runs); `on_end` is called if it was not yet.
    fn close(&self) {
        self.client.close();
    }

    /// Whether the session has ended.
    #[getter]
    fn ended(&self) -> bool {
        self.client.ended()
    }
}

//! The tonic server of an engine ([`EngineServer`]): binds the address (with TLS when
//! configured), serves `EngineService` (the `service` module), health and reflection on the
//! process runtime, and drains and stops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::health::{HealthService, HealthStatuses, ServingStatus};
use super::pb;
use super::pb::engine_service_server::EngineServiceServer;
use super::service::{Active, Engine, EngineConfig, HostNodes, Service, StartError};
use crate::runner::RunHandle;
use crate::runtime::runtime;

/// Watch events buffered for slow watchers before they start missing some.
const WATCH_BUFFER: usize = 4096;

/// A running engine server. Dropping it stops the server.
pub struct EngineServer {
    engine: Arc<Engine>,
    port: u16,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    abort: tokio::task::AbortHandle,
    stopped: Arc<(Mutex<bool>, Condvar)>,
}

/// How long `stop` lets open connections finish before it closes them.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl std::fmt::Debug for EngineServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineServer")
            .field("engine_id", &self.engine.config.engine_id)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

const SERVICE_NAME: &str = "dagengine.v1.EngineService";

/// The services an engine serves, as reflection lists them (the `dagengine.v1` file also
/// describes `OrchestratorService`, which engines do not serve).
const REFLECTED: [&str; 4] = [
    SERVICE_NAME,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The address to listen on: `config.host` (an IP address or a name) and `config.port`.
fn socket_addr(config: &EngineConfig) -> Result<SocketAddr, StartError> {
    format!("{}:{}", config.host, config.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (config.host.as_str(), config.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StartError::Address(format!("{}:{}", config.host, config.port)))
        })
}

/// Server reflection (build it with `build_v1` and `build_v1alpha`: grpcurl asks v1, older
/// clients and grpcio's `ProtoReflectionDescriptorDatabase` v1alpha), describing
/// `dagengine.v1`, the health service and reflection itself, so tools need no `.proto` files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    REFLECTED.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |b, name| b.with_service_name(*name),
    )
}

#[allow(clippy::needless_pass_by_value, reason = "used with map_err")]
fn reflection_error(e: tonic_reflection::server::Error) -> StartError {
    StartError::Reflection(e.to_string())
}

impl EngineServer {
    /// Bind and start serving.
    pub fn start(config: EngineConfig, host: Arc<dyn HostNodes>) -> Result<Self, StartError> {
        let rt = runtime()?;
        let addr = socket_addr(&config)?;
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            // A peer that stops answering pings is dropped, so a partitioned orchestrator
            // does not keep runs attached to a half-open connection.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some(tls) = &config.tls {
            let mut tls_config =
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(tls_config)
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let health = HealthStatuses::default();
        health.set(SERVICE_NAME, ServingStatus::Serving);
        health.set("", ServingStatus::Serving);
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
        let (watch, _) = broadcast::channel(WATCH_BUFFER);
        let max = config.max_message_bytes;
        let engine = Arc::new(Engine {
            config,
            started: Instant::now(),
            active: Mutex::new(Active::default()),
            left: Condvar::new(),
            draining: AtomicBool::new(false),
            stopping: watch::Sender::new(false),
            watch,
            host,
            health,
            plans: Mutex::new(HashMap::new()),
        });
        let service = EngineServiceServer::new(Service {
            engine: engine.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let incoming = {
            let _guard = rt.enter();
            TcpIncoming::bind(addr)
                .map_err(|source| StartError::Bind {
                    addr: addr.to_string(),
                    source,
                })?
                .with_nodelay(Some(true))
        };
        let port = incoming
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?
            .port();
        let (tx, rx) = oneshot::channel::<()>();
        let stopped = Arc::new((Mutex::new(false), Condvar::new()));
        let done = stopped.clone();
        let health_service =
            HealthService::server(engine.health.clone(), engine.stopping.subscribe());
        let router = builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service);
        let serving = rt.spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        let abort = serving.abort_handle();
        rt.spawn(async move {
            // Ends when the server finishes its graceful shutdown, or is aborted by `stop`.
            let _ = serving.await;
            let (lock, cv) = &*done;
            *lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            cv.notify_all();
        });
        Ok(Self {
            engine,
            port,
            shutdown: Mutex::new(Some(tx)),
            abort,
            stopped,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The engine's id.
    pub fn engine_id(&self) -> &str {
        &self.engine.config.engine_id
    }

    /// Who the engine is and how busy.
    pub fn info(&self) -> pb::EngineInfo {
        self.engine.info()
    }

    /// Refuse new runs, wait up to `grace` for active ones, cancel the rest and wait for them
    /// to end. Returns how many runs were cancelled. Blocks.
    pub fn drain(&self, grace: Duration) -> usize {
        let engine = &self.engine;
        if !engine.draining.swap(true, Ordering::SeqCst) {
            engine.health.set(SERVICE_NAME, ServingStatus::NotServing);
            engine.health.set("", ServingStatus::NotServing);
        }
        let deadline = Instant::now().checked_add(grace);
        let mut active = engine.active();
        while !(active.runs.is_empty() && active.reserved == 0) {
            let left = deadline.map_or(Duration::from_hours(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                break;
            }
            active = engine
                .left
                .wait_timeout(active, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let ids: Vec<String> = active.runs.keys().cloned().collect();
        for id in &ids {
            active.drained.insert(id.clone());
            active.runs[id].cancel();
        }
        // Cancelled runs end within the Lua hook interval; Python attempts are abandoned.
        let until = Instant::now() + Duration::from_secs(10);
        while !active.runs.is_empty() && Instant::now() < until {
            active = engine
                .left
                .wait_timeout(active, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        ids.len()
    }

    /// Stop serving: cancel active runs and close the listener. Idempotent.
    pub fn stop(&self) {
        self.engine.stopping.send_replace(true);
        let handles: Vec<RunHandle> = self.engine.active().runs.values().cloned().collect();
        for h in handles {
            h.cancel();
        }
        let tx = self
            .shutdown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
            // Graceful shutdown waits for clients to hang up; idle clients may never do.
            let abort = self.abort.clone();
            if let Ok(rt) = runtime() {
                rt.spawn(async move {
                    tokio::time::sleep(STOP_GRACE).await;
                    abort.abort();
                });
            }
        }
    }

    /// Wait up to `timeout` for the server to have stopped.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.stopped;
        let guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }
}

impl Drop for EngineServer {
    fn drop(&mut self) {
        self.stop();
    }
}

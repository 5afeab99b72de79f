//! The engine's gRPC server: `dagengine.v1.EngineService`, `grpc.health.v1.Health` and
//! server reflection (`grpc.reflection.v1` and `v1alpha`), served by tonic on the process
//! runtime.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dagengine_core::{ErrorKind, NodeIdx, RunOptions};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{self, HostNode, HostRef, InvalidField, RunTag};
use super::health::{HealthStatuses, UntilStopped};
use super::pb;
use super::pb::engine_service_server::EngineService;
use super::{SESSION_PROTOCOL, SESSION_PROTOCOL_HEADER};
use crate::runner::{
    lock, start_run, start_run_inline, EventKind, ExternalExecutor, Plan, RunConfig, RunHandle,
    INLINE_BUDGET,
};
use coalesce::Coalesced;
#[cfg(test)]
use coalesce::SESSION_COALESCE_BYTES;

/// TLS material (PEM). With `client_ca`, clients must present a certificate it signed.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// How an engine serves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub engine_id: String,
    pub version: String,
    pub host: String,
    pub port: u16,
    /// Runs at once; one more gets `RESOURCE_EXHAUSTED`.
    pub capacity: u32,
    pub tls: Option<TlsConfig>,
    /// Largest message decoded or encoded.
    pub max_message_bytes: usize,
}

/// Lineage and inputs of a run, for the host preparing its nodes.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: String,
    pub inputs: Arc<Value>,
    pub parent_run_id: String,
    pub parent_node_id: String,
    pub depth: u32,
    /// The W3C trace context (`traceparent`, `tracestate`) the run's nodes run in; empty
    /// for none.
    pub trace_context: HashMap<String, String>,
}

/// A host node the embedding process cannot resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub node: u32,
    pub message: String,
}

/// The embedding process: resolves the run's Python and sub-workflow nodes and returns the
/// executor that runs them. Called on a blocking thread before the run starts.
pub trait HostNodes: Send + Sync {
    fn prepare(
        &self,
        plan: &Plan,
        nodes: &[HostNode],
        run: &RunContext,
    ) -> Result<Arc<dyn ExternalExecutor>, HostError>;

    /// The code identity of each cached Python node in `nodes`, computed on the function
    /// its import path resolves to in this process (as `dagengine.cache.code_identity`
    /// writes it); it replaces the sender's, which is its own copy's (or, without one, the
    /// import path): a function changed behind the same import path misses. Called once
    /// per validated spec, on a blocking thread. By default none: the sender's stands.
    fn code_identities(
        &self,
        plan: &Plan,
        nodes: &[HostNode],
    ) -> Result<Vec<(NodeIdx, String)>, HostError> {
        let _ = (plan, nodes);
        Ok(Vec::new())
    }
}

/// The engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("invalid address {0:?}")]
    Address(String),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(String),
}

#[derive(Default)]
pub(super) struct Active {
    pub(super) runs: HashMap<String, RunHandle>,
    /// Slots taken by requests still being prepared.
    pub(super) reserved: usize,
    /// Runs cancelled by a drain (reported as `EngineDraining`, not as a user cancel).
    pub(super) drained: HashSet<String>,
}

pub(super) struct Engine {
    pub(super) config: EngineConfig,
    pub(super) started: Instant,
    pub(super) active: Mutex<Active>,
    /// Signalled whenever a run leaves `active`.
    pub(super) left: Condvar,
    pub(super) draining: AtomicBool,
    /// Set by `stop`: the streams that only a client would end (sessions, watchers) end.
    pub(super) stopping: watch::Sender<bool>,
    pub(super) watch: broadcast::Sender<pb::RunEvent>,
    pub(super) host: Arc<dyn HostNodes>,
    pub(super) health: HealthStatuses,
    /// Validated plans by the encoded spec they came from: an orchestrator sends the same
    /// workflow again and again, and validating it (Lua compiles included) every time would
    /// cost more than running it.
    pub(super) plans: Mutex<HashMap<Vec<u8>, CachedPlan>>,
}

pub(super) type CachedPlan = (Arc<Plan>, Arc<[HostNode]>);

/// Plans kept before the cache is flushed (workflows in use at once are far fewer).
const PLAN_CACHE: usize = 256;

impl Engine {
    fn plan(&self, spec: &pb::WorkflowSpec) -> Result<CachedPlan, InvalidField> {
        use prost::Message;
        let key = spec.encode_to_vec();
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = plans.get(&key) {
            return Ok(found.clone());
        }
        drop(plans);
        let (mut plan, host) = convert::plan_from_spec(spec)?;
        self.identify(&mut plan, &host)?;
        let entry: CachedPlan = (Arc::new(plan), host.into());
        plans = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if plans.len() >= PLAN_CACHE {
            plans.clear();
        }
        plans.insert(key, entry.clone());
        Ok(entry)
    }

    /// Give the cached Python nodes of `plan` the host's code identity (see
    /// [`HostNodes::code_identities`]); a reference the host cannot resolve is refused as
    /// preparing the run would refuse it.
    fn identify(&self, plan: &mut Plan, host: &[HostNode]) -> Result<(), InvalidField> {
        let cached: Vec<HostNode> = host
            .iter()
            .filter(|h| matches!(h.reference, HostRef::Python(_)) && plan.cache(h.node).is_some())
            .cloned()
            .collect();
        if cached.is_empty() {
            return Ok(());
        }
        let codes = self
            .host
            .code_identities(plan, &cached)
            .map_err(|e| host_field(plan, &cached, &e))?;
        for (node, code) in codes {
            let Some(spec) = plan.cache(node).map(|s| s.with_code(code)) else {
                continue;
            };
            plan.set_cache(node, spec)
                .map_err(|e| InvalidField::new(format!("workflow.nodes[{node}].cache"), e))?;
        }
        Ok(())
    }

    /// Cancel the run `run_id` if it is active here; whether it was.
    fn cancel_run(&self, run_id: &str) -> bool {
        let handle = self.active().runs.get(run_id).cloned();
        if let Some(h) = &handle {
            h.cancel();
        }
        handle.is_some()
    }

    pub(super) fn active(&self) -> MutexGuard<'_, Active> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn info(&self) -> pb::EngineInfo {
        let active = self.active();
        let mut ids: Vec<String> = active.runs.keys().cloned().collect();
        ids.sort();
        pb::EngineInfo {
            engine_id: self.config.engine_id.clone(),
            version: self.config.version.clone(),
            capacity: self.config.capacity,
            active_runs: (active.runs.len() + active.reserved) as u32,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            draining: self.draining.load(Ordering::SeqCst),
            active_run_ids: ids,
        }
    }

    fn release(&self, run_id: Option<&str>, reserved: bool) {
        let mut active = self.active();
        if reserved {
            active.reserved -= 1;
        }
        if let Some(id) = run_id {
            active.runs.remove(id);
        }
        drop(active);
        // Only a drain waits on `left` (and sets `draining` before it looks): waking nobody
        // would still cost a syscall per run.
        if self.draining.load(Ordering::SeqCst) {
            self.left.notify_all();
        }
    }
}

/// A slot reserved under the capacity, given back on drop unless it became a run.
struct Reservation<'a> {
    engine: &'a Engine,
    held: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.held {
            self.engine.release(None, true);
        }
    }
}

fn invalid(e: &InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A run's inputs (`inputs_json`, a JSON object), checked against the workflow's inputs
/// schema if it has one (defaults filled in): a raw gRPC caller skips the clients' check.
fn checked_inputs(spec: &pb::WorkflowSpec, inputs_json: &[u8]) -> Result<Value, Status> {
    let inputs = convert::json_object("inputs_json", inputs_json).map_err(|e| invalid(&e))?;
    if spec.inputs_schema_json.is_empty() {
        return Ok(inputs);
    }
    let schema: Value = serde_json::from_slice(&spec.inputs_schema_json).map_err(|e| {
        invalid(&InvalidField::new(
            "workflow.inputs_schema_json",
            format!("not JSON: {e}"),
        ))
    })?;
    let Value::Object(map) = inputs else {
        return Ok(inputs);
    };
    super::inputs::validate(&schema, map)
        .map(Value::Object)
        .map_err(|p| {
            invalid(&InvalidField::new(
                "inputs_json",
                super::inputs::describe(&p),
            ))
        })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Clone)]
pub(super) struct Service {
    pub(super) engine: Arc<Engine>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;
type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvents, Status>> + Send>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionReplies, Status>> + Send>>;

/// A session's runs still being prepared, by id, and whether a cancel came for them.
type Launching = Arc<Mutex<HashMap<String, bool>>>;

/// What a run's caller asked to be sent (see `RunRequest.result_only` and `result_json`).
#[derive(Debug, Clone, Copy)]
struct Forwarding {
    result_only: bool,
    result_json: bool,
}

impl Forwarding {
    fn of(req: &pb::RunRequest) -> Self {
        Self {
            result_only: req.result_only,
            result_json: req.result_json,
        }
    }
}

/// The field of the host node `e` names, and why the host refused it.
fn host_field(plan: &Plan, nodes: &[HostNode], e: &HostError) -> InvalidField {
    let kind = match nodes
        .iter()
        .find(|h| h.node == e.node)
        .map(|h| &h.reference)
    {
        Some(HostRef::Workflow(_)) => "workflow",
        _ => "python.import_path",
    };
    InvalidField::new(
        format!("workflow.nodes[{}].{kind}", e.node),
        format!("node '{}': {}", plan.dag().id(e.node), e.message),
    )
}

/// Whether a run has Python or sub-workflow nodes: the embedding process prepares them,
/// holding the GIL, so not on an async worker.
fn needs_host(req: &pb::RunRequest) -> bool {
    req.workflow.as_ref().is_some_and(|w| {
        w.nodes.iter().any(|n| {
            matches!(
                n.executor,
                Some(pb::node_spec::Executor::Python(_) | pb::node_spec::Executor::Workflow(_))
            )
        })
    })
}

fn run_events(_: &RunTag, events: Vec<pb::RunEvent>) -> pb::RunEvents {
    pb::RunEvents { events }
}

fn session_events(tag: &RunTag, events: Vec<pb::RunEvent>) -> pb::SessionEvents {
    pb::SessionEvents {
        run_id: tag.run_id.to_string(),
        events,
        refused: None,
    }
}

/// Events buffered per Run stream before the engine stops reading the run (the client is
/// slow): the run goes on, its events wait in the core.
const STREAM_BUFFER: usize = 256;

/// How long a run's events wait for the ones that follow before they go out (see
/// `forward`): a node's start is seen at most this much later; a run's end is not delayed.
const EVENTS_GATHER: Duration = Duration::from_millis(1);

impl Service {
    fn reserve(&self, run_id: &str, depth: u32) -> Result<Reservation<'_>, Status> {
        let engine = &*self.engine;
        if engine.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "engine {} is draining and accepts no new runs",
                engine.config.engine_id
            )));
        }
        let mut active = engine.active();
        if active.runs.contains_key(run_id) {
            return Err(Status::already_exists(format!(
                "run {run_id} is already active on engine {}",
                engine.config.engine_id
            )));
        }
        let busy = active.runs.len() + active.reserved;
        // Sub-workflow runs (depth > 0) are admitted beyond capacity: their parents hold
        // slots while they wait for them, so refusing children could deadlock a full
        // cluster. The orchestrator's depth limit bounds how far this goes.
        if depth == 0 && busy >= engine.config.capacity as usize {
            return Err(Status::resource_exhausted(format!(
                "engine {} is at capacity ({busy} of {} runs active); retry later or on another engine",
                engine.config.engine_id, engine.config.capacity
            )));
        }
        active.reserved += 1;
        Ok(Reservation { engine, held: true })
    }

    /// Validate the request and start its run (on a blocking thread: preparing Python
    /// nodes takes the GIL). `inline`: start it on this thread ([`INLINE_BUDGET`]).
    fn start(
        engine: &Arc<Engine>,
        req: &pb::RunRequest,
        inline: bool,
    ) -> Result<(Arc<Plan>, RunHandle), Status> {
        let spec = req
            .workflow
            .as_ref()
            .ok_or_else(|| invalid(&InvalidField::new("workflow", "missing")))?;
        let (plan, host_nodes) = engine.plan(spec).map_err(|e| invalid(&e))?;
        let inputs = checked_inputs(spec, &req.inputs_json)?;
        let (completed, completed_items) = completed_outputs(&plan, req)?;
        let mut timeout = spec
            .timeout_seconds
            .map(|t| {
                Duration::try_from_secs_f64(t).map_err(|_| {
                    invalid(&InvalidField::new(
                        "workflow.timeout_seconds",
                        "must be a finite number >= 0",
                    ))
                })
            })
            .transpose()?;
        if req.deadline_unix > 0.0 {
            let left = Duration::from_secs_f64((req.deadline_unix - unix_now()).max(0.0));
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        let max_parallel = req.max_parallel.or(spec.max_parallel);
        if max_parallel == Some(0) {
            return Err(invalid(&InvalidField::new(
                "max_parallel",
                "must be at least 1",
            )));
        }
        let inputs = Arc::new(inputs);
        let external = if host_nodes.is_empty() {
            None
        } else {
            let run = RunContext {
                run_id: req.run_id.clone(),
                inputs: inputs.clone(),
                parent_run_id: req.parent_run_id.clone(),
                parent_node_id: req.parent_node_id.clone(),
                depth: req.depth,
                trace_context: req.trace_context.clone(),
            };
            let ext = engine
                .host
                .prepare(&plan, &host_nodes, &run)
                .map_err(|e| invalid(&host_field(&plan, &host_nodes, &e)))?;
            Some(ext)
        };
        let config = RunConfig {
            run_id: req.run_id.clone(),
            inputs,
            options: RunOptions {
                max_parallel: max_parallel.map(|m| m as usize),
                fail_fast: req.fail_fast.unwrap_or(spec.fail_fast),
            },
            timeout,
            completed,
            completed_items,
            events: true,
            event_outputs: true,
            cache: run_cache(&plan, req)?,
        };
        let handle = if inline {
            start_run_inline(plan.clone(), config, external, INLINE_BUDGET)
        } else {
            start_run(plan.clone(), config, external)
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok((plan, handle))
    }

    /// Admit and start a run, and have its events sent to `tx` (as `wrap` makes them into
    /// messages): the work of `Run`, and of each run of a `Session`.
    async fn launch<T: Send + 'static>(
        &self,
        req: pb::RunRequest,
        tx: mpsc::Sender<Result<T, Status>>,
        wrap: fn(&RunTag, Vec<pb::RunEvent>) -> T,
    ) -> Result<(), Status> {
        if req.run_id.is_empty() {
            return Err(invalid(&InvalidField::new("run_id", "must not be empty")));
        }
        let mut reservation = self.reserve(&req.run_id, req.depth)?;
        let engine = self.engine.clone();
        let req = Arc::new(req);
        let r = req.clone();
        // Preparing Python nodes takes the GIL, which must not happen on an async worker;
        // a workflow of Lua and no-op nodes (its plan usually cached) is started right here.
        let (plan, handle) = if needs_host(&req) {
            tokio::task::spawn_blocking(move || Self::start(&engine, &r, false))
                .await
                .map_err(|e| Status::internal(format!("preparing the run failed: {e}")))??
        } else {
            Self::start(&engine, &r, true)?
        };
        {
            let mut active = self.engine.active();
            active.reserved -= 1;
            active.runs.insert(req.run_id.clone(), handle.clone());
        }
        reservation.held = false;
        let tag = RunTag {
            run_id: req.run_id.as_str().into(),
            attempt: req.attempt,
            engine_id: self.engine.config.engine_id.as_str().into(),
        };
        if handle.is_done() {
            // Ended within its inline budget: its one message is ready now, so no task
            // (and no wake-up of one) is needed to forward it.
            let engine = self.engine.clone();
            Self::forward(engine, tag, plan, handle, tx, Forwarding::of(&req), wrap).await;
            return Ok(());
        }
        tokio::spawn(Self::forward(
            self.engine.clone(),
            tag,
            plan,
            handle,
            tx,
            Forwarding::of(&req),
            wrap,
        ));
        Ok(())
    }

    /// One run sent on a session: started (or refused) here, or, if it has Python nodes,
    /// on a task of its own, since preparing those waits for the GIL and must not hold up
    /// the runs behind it. False once the session's replies are gone.
    async fn session_run(
        &self,
        run: pb::RunRequest,
        tx: &mpsc::Sender<Result<pb::SessionEvents, Status>>,
        launching: &Launching,
    ) -> bool {
        if needs_host(&run) {
            let (svc, tx, launching) = (self.clone(), tx.clone(), launching.clone());
            let run_id = run.run_id.clone();
            lock(&launching).insert(run_id.clone(), false);
            tokio::spawn(async move {
                svc.launch_in_session(run, &tx).await;
                // Registered now (or refused): a cancel that came while it was being
                // prepared found nothing to cancel and was kept.
                if lock(&launching).remove(&run_id) == Some(true) {
                    svc.engine.cancel_run(&run_id);
                }
            });
            true
        } else {
            self.launch_in_session(run, tx).await
        }
    }

    /// Start a run of a session, or send its refusal; false once the session's replies
    /// are gone.
    async fn launch_in_session(
        &self,
        run: pb::RunRequest,
        tx: &mpsc::Sender<Result<pb::SessionEvents, Status>>,
    ) -> bool {
        let run_id = run.run_id.clone();
        let Err(status) = self.launch(run, tx.clone(), session_events).await else {
            return true;
        };
        let refused = pb::SessionEvents {
            run_id,
            events: Vec::new(),
            refused: Some(pb::Refusal {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }),
        };
        tx.send(Ok(refused)).await.is_ok()
    }

    /// Forward a run's events to its stream and to watchers until the run ends; the last
    /// event carries the result. A client that goes away cancels its run.
    async fn forward<T: Send + 'static>(
        engine: Arc<Engine>,
        tag: RunTag,
        plan: Arc<Plan>,
        handle: RunHandle,
        tx: mpsc::Sender<Result<T, Status>>,
        Forwarding {
            result_only,
            result_json,
        }: Forwarding,
        wrap: fn(&RunTag, Vec<pb::RunEvent>) -> T,
    ) {
        let mut client_gone = false;
        loop {
            let (mut events, mut outcome) = if client_gone {
                handle.next_events_async().await
            } else {
                tokio::select! {
                    next = handle.next_events_async() => next,
                    // The caller hung up (or its connection failed keepalive) while the run
                    // was quiet: nobody will see the result, so stop the run now rather than
                    // at its next event.
                    () = tx.closed() => {
                        client_gone = true;
                        handle.cancel();
                        continue;
                    }
                }
            };
            // A short run's other events, and its end, usually follow within microseconds:
            // wait for them a moment (never past the run's end), so that such a run is one
            // reply rather than one per node start and end (a caller handles each reply:
            // an orchestrator stores and publishes each one's events as a batch).
            if outcome.is_none() {
                let (more, end) = handle
                    .events_until(tokio::time::Instant::now() + EVENTS_GATHER)
                    .await;
                events.extend(more);
                outcome = end;
            }
            // Everything that happened since the last message goes out as one message: a
            // 3-node run is one or two messages instead of eight.
            let mut batch = Vec::with_capacity(events.len());
            let watched = engine.watch.receiver_count() > 0;
            for e in &events {
                if result_only && !watched && e.kind != EventKind::RunFinished {
                    continue; // nobody to see it: not even converted
                }
                let mut ev = convert::event(&tag, &plan, e);
                if e.kind == EventKind::RunFinished {
                    if let Some(o) = &outcome {
                        let mut result = convert::result(&tag, &plan, o);
                        if engine.active().drained.contains(&*tag.run_id) {
                            result.error = Some(pb::ErrorInfo {
                                r#type: ErrorKind::EngineDraining.as_str().into(),
                                message: format!(
                                    "engine {} was drained before run {} finished",
                                    tag.engine_id, tag.run_id
                                ),
                                ..Default::default()
                            });
                        }
                        if result_json {
                            convert::add_result_json(&mut result);
                        }
                        ev.result = Some(result);
                    }
                }
                if watched {
                    let _ = engine.watch.send(ev.clone());
                }
                if result_only && e.kind != EventKind::RunFinished {
                    continue;
                }
                batch.push(ev);
            }
            let last = outcome.is_some();
            if last {
                // The slot is free before the result leaves: a caller that starts its next
                // run as soon as it has this one's result must not find the engine full.
                engine.active().drained.remove(&*tag.run_id);
                engine.release(Some(&tag.run_id), false);
            }
            if !client_gone && !batch.is_empty() && tx.send(Ok(wrap(&tag, batch))).await.is_err() {
                // The caller is gone: nobody will see this run's result.
                client_gone = true;
                handle.cancel();
            }
            if last {
                break;
            }
        }
    }
}

/// The request, with the caller's W3C trace context from its gRPC metadata (`traceparent`,
/// `tracestate`, as OpenTelemetry's gRPC clients send it) when the message has none.
fn with_metadata_trace(request: Request<pb::RunRequest>) -> pb::RunRequest {
    let from_metadata: HashMap<String, String> = if request.get_ref().trace_context.is_empty() {
        ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|key| {
                let value = request.metadata().get(key)?.to_str().ok()?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let mut req = request.into_inner();
    if from_metadata.contains_key("traceparent") {
        req.trace_context = from_metadata;
    }
    req
}

#[tonic::async_trait]
impl EngineService for Service {
    type RunStream = BatchStream;
    type WatchStream = EventStream;

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.launch(with_metadata_trace(request), tx, run_events)
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn run_to_end(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<pb::RunResult>, Status> {
        let mut req = with_metadata_trace(request);
        req.result_only = true;
        // Dropped with this call's future when the caller hangs up: the run's forwarder
        // sees it and cancels the run.
        let (tx, mut rx) = mpsc::channel(1);
        self.launch(req, tx, run_events).await?;
        while let Some(msg) = rx.recv().await {
            if let Some(result) = msg?.events.into_iter().find_map(|e| e.result) {
                return Ok(Response::new(result));
            }
        }
        Err(Status::internal("the run ended without a result"))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<tonic::Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let svc = self.clone();
        // Runs being prepared on tasks of their own (Python nodes), not yet registered: a
        // cancel that comes meanwhile is kept here and applied once they are.
        let launching = Launching::default();
        let mut stopping = self.engine.stopping.subscribe();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    // The client stopped reading replies: its runs are cancelled by their
                    // forwarders; stop taking new ones.
                    () = tx.closed() => break,
                    // The engine stops (its runs are cancelled): the replies end once the
                    // last of them has, and the client learns the session is over.
                    _ = stopping.wait_for(|stop| *stop) => break,
                };
                let Ok(Some(req)) = next else {
                    // Half-closed (runs go on) or broken (the replies are gone too, and the
                    // forwarders cancel the runs).
                    break;
                };
                let runs = match req.kind {
                    Some(pb::session_request::Kind::Run(run)) => vec![run],
                    Some(pb::session_request::Kind::Runs(batch)) => batch.runs,
                    Some(pb::session_request::Kind::Cancel(c)) => {
                        if !svc.engine.cancel_run(&c.run_id) {
                            if let Some(cancelled) = lock(&launching).get_mut(&c.run_id) {
                                *cancelled = true;
                            }
                        }
                        continue;
                    }
                    None => continue,
                };
                let mut open = true;
                for run in runs {
                    open = svc.session_run(run, &tx, &launching).await;
                    if !open {
                        break;
                    }
                }
                if !open {
                    break;
                }
            }
        });
        let mut response = Response::new(Box::pin(Coalesced {
            rx,
            held: std::collections::VecDeque::new(),
        }) as SessionStream);
        // Which session protocol this engine speaks: a client that needs another one
        // says so instead of waiting for replies that will not come.
        response.metadata_mut().insert(
            SESSION_PROTOCOL_HEADER,
            tonic::metadata::MetadataValue::from_static(SESSION_PROTOCOL),
        );
        Ok(response)
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let run_id = request.into_inner().run_id;
        Ok(Response::new(pb::CancelResponse {
            found: self.engine.cancel_run(&run_id),
        }))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::EngineInfo>, Status> {
        Ok(Response::new(self.engine.info()))
    }

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.engine.watch.subscribe();
        let mut stopping = self.engine.stopping.subscribe();
        let stopped = Box::pin(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|item| match item {
            Ok(ev) => Ok(ev),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Ok(pb::RunEvent {
                    missed: n,
                    ..Default::default()
                })
            }
        });
        Ok(Response::new(Box::pin(UntilStopped {
            inner: stream,
            stopped,
        })))
    }
}

/// A resumed run's completed outputs (`completed_json`): those of nodes, and those of items
/// of mapped nodes (`square[3]`) that the node's expansion does not run again.
type Completed = (Vec<(NodeIdx, Value)>, Vec<(NodeIdx, u32, Value)>);

fn completed_outputs(plan: &Plan, req: &pb::RunRequest) -> Result<Completed, Status> {
    let mut completed = Vec::new();
    let mut completed_items = Vec::new();
    for (id, bytes) in &req.completed_json {
        let field = format!("completed_json[{id:?}]");
        let (idx, item) = plan.resolve(id).ok_or_else(|| {
            invalid(&InvalidField::new(
                &field,
                format!("'{id}' is not a node of the workflow"),
            ))
        })?;
        match item {
            Some(i) => completed_items.push((
                idx,
                i,
                convert::json_object(&field, bytes).map_err(|e| invalid(&e))?,
            )),
            // A mapped node's output is the list of its items'.
            None if plan.map(idx).is_some() => completed.push((
                idx,
                convert::json_value(&field, bytes).map_err(|e| invalid(&e))?,
            )),
            None => completed.push((
                idx,
                convert::json_object(&field, bytes).map_err(|e| invalid(&e))?,
            )),
        }
    }
    Ok((completed, completed_items))
}

/// The cache of a run whose workflow has cached nodes: the entries sent with it (see
/// [`crate::runner::EntriesCache`]). An entry that is not a JSON object is refused.
fn run_cache(
    plan: &Plan,
    req: &pb::RunRequest,
) -> Result<Option<Arc<dyn crate::runner::NodeCache>>, Status> {
    if !plan.has_caches() {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(req.cache_entries.len());
    for (i, e) in req.cache_entries.iter().enumerate() {
        let field = format!("cache_entries[{i}].output_json");
        let output = convert::json_object(&field, &e.output_json).map_err(|e| invalid(&e))?;
        let hit = crate::runner::CacheHit {
            output,
            run_id: e.run_id.clone(),
        };
        entries.push((e.node_id.clone(), e.key.clone(), hit));
    }
    Ok(Some(Arc::new(crate::runner::EntriesCache::new(entries))))
}

mod coalesce;
#[cfg(test)]
mod tests;

//! The engine's gRPC server over a real socket, driven by the generated tonic client.

use std::sync::Arc;
use std::time::Duration;

use dagengine_server::grpc::pb::engine_service_client::EngineServiceClient;
use dagengine_server::grpc::pb::{self, node_spec::Executor};
use dagengine_server::grpc::{
    EngineConfig, EngineServer, HostError, HostNode, HostNodes, HostRef, RunContext, SessionClient,
    SessionOptions, SessionSink, Started,
};
use dagengine_server::{ExternalCall, ExternalExecutor, NodeFailure, Plan};
use serde_json::{json, Map, Value};
use tokio_stream::StreamExt;
use tonic::Code;

/// Host nodes for the tests: `tests:echo` returns its inputs, anything else is unknown.
struct TestHost;

struct Echo(Arc<Value>);

impl ExternalExecutor for Echo {
    fn execute(
        &self,
        _plan: &Plan,
        _call: ExternalCall,
    ) -> Result<Map<String, Value>, NodeFailure> {
        Ok(self.0.as_object().cloned().unwrap_or_default())
    }
}

impl HostNodes for TestHost {
    fn prepare(
        &self,
        _plan: &Plan,
        nodes: &[HostNode],
        run: &RunContext,
    ) -> Result<Arc<dyn ExternalExecutor>, HostError> {
        for n in nodes {
            if n.reference != HostRef::Python("tests:echo".into()) {
                return Err(HostError {
                    node: n.node,
                    message: "ImportPathError: no such callable".into(),
                });
            }
        }
        Ok(Arc::new(Echo(run.inputs.clone())))
    }
}

fn server(capacity: u32) -> EngineServer {
    EngineServer::start(
        EngineConfig {
            engine_id: "test-engine".into(),
            version: "0".into(),
            host: "127.0.0.1".into(),
            port: 0,
            capacity,
            tls: None,
            max_message_bytes: 1 << 20,
        },
        Arc::new(TestHost),
    )
    .unwrap()
}

fn node(id: &str, deps: &[&str], executor: Executor) -> pb::NodeSpec {
    pb::NodeSpec {
        id: id.into(),
        deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        executor: Some(executor),
        ..Default::default()
    }
}

fn lua(code: &str) -> Executor {
    Executor::Lua(pb::LuaExecutor {
        code: code.into(),
        ..Default::default()
    })
}

fn request(run_id: &str, nodes: Vec<pb::NodeSpec>, inputs: &Value) -> pb::RunRequest {
    pb::RunRequest {
        run_id: run_id.into(),
        attempt: 1,
        workflow: Some(pb::WorkflowSpec {
            id: "w".into(),
            nodes,
            ..Default::default()
        }),
        inputs_json: serde_json::to_vec(inputs).unwrap(),
        ..Default::default()
    }
}

fn client_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(port: u16) -> EngineServiceClient<tonic::transport::Channel> {
    EngineServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

async fn collect(
    client: &mut EngineServiceClient<tonic::transport::Channel>,
    req: pb::RunRequest,
) -> Result<Vec<pb::RunEvent>, tonic::Status> {
    let mut stream = client.run(req).await?.into_inner();
    let mut events = Vec::new();
    while let Some(batch) = stream.next().await {
        events.extend(batch?.events);
    }
    Ok(events)
}

#[test]
fn runs_a_workflow_and_streams_events_then_the_result() {
    let srv = server(4);
    client_rt().block_on(async {
        let mut c = connect(srv.port()).await;
        let nodes = vec![
            node("a", &[], lua("return {x = inputs.n * 2}")),
            node(
                "b",
                &["a"],
                Executor::Python(pb::PythonExecutor {
                    import_path: "tests:echo".into(),
                }),
            ),
            node("c", &["a"], Executor::Noop(pb::NoopExecutor {})),
        ];
        let events = collect(&mut c, request("r1", nodes, &json!({"n": 21})))
            .await
            .unwrap();
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        let last = events.last().unwrap();
        assert_eq!(last.kind, pb::EventKind::RunFinished as i32);
        let result = last.result.as_ref().unwrap();
        assert_eq!(result.status, pb::RunStatus::Succeeded as i32);
        assert_eq!(result.engine_id, "test-engine");
        let a = result.nodes.iter().find(|n| n.node_id == "a").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&a.output_json).unwrap(),
            json!({"x": 42})
        );
        let b = result.nodes.iter().find(|n| n.node_id == "b").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&b.output_json).unwrap(),
            json!({"n": 21})
        );
        // Succeeded events carry outputs, for the orchestrator to store.
        let ev_a = events
            .iter()
            .find(|e| e.kind == pb::EventKind::NodeSucceeded as i32 && e.node_id == "a")
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&ev_a.output_json).unwrap(),
            json!({"x": 42})
        );
        let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.active_runs, 0);
        assert_eq!(info.capacity, 4);
    });
}

#[test]
fn bad_requests_name_the_field_and_the_engine_keeps_serving() {
    let srv = server(4);
    client_rt().block_on(async {
        let mut c = connect(srv.port()).await;
        let cases = vec![
            (
                request(
                    "x1",
                    vec![node("a", &["ghost"], lua("return {}"))],
                    &json!({}),
                ),
                "workflow.nodes[0].deps",
            ),
            (
                request("x2", vec![node("a", &[], lua("return {"))], &json!({})),
                "workflow.nodes[0].lua.code",
            ),
            (
                request(
                    "x3",
                    vec![node(
                        "a",
                        &[],
                        Executor::Python(pb::PythonExecutor {
                            import_path: "nope:f".into(),
                        }),
                    )],
                    &json!({}),
                ),
                "workflow.nodes[0].python.import_path",
            ),
            (
                request("x4", vec![node("a", &[], lua("return {}"))], &json!([1])),
                "inputs_json",
            ),
            (
                request("", vec![node("a", &[], lua("return {}"))], &json!({})),
                "run_id",
            ),
        ];
        for (req, field) in cases {
            let err = collect(&mut c, req).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(
                err.message().starts_with(field),
                "{} should name {field}",
                err.message()
            );
        }
        let ok = collect(
            &mut c,
            request("ok", vec![node("a", &[], lua("return {}"))], &json!({})),
        )
        .await
        .unwrap();
        assert_eq!(
            ok.last().unwrap().result.as_ref().unwrap().status,
            pb::RunStatus::Succeeded as i32
        );
    });
}

#[test]
fn capacity_cancel_and_drain() {
    let srv = server(1);
    let port = srv.port();
    let rt = client_rt();
    let mut c = rt.block_on(connect(port));
    let spin = || {
        request(
            "spin",
            vec![
                node("s", &[], lua("while true do end")),
                node("t", &["s"], lua("return {}")),
            ],
            &json!({}),
        )
    };
    let mut stream = rt.block_on(c.run(spin())).unwrap().into_inner();
    // Wait until the node runs.
    rt.block_on(async {
        loop {
            let batch = stream.next().await.unwrap().unwrap();
            if batch
                .events
                .iter()
                .any(|ev| ev.kind == pb::EventKind::NodeStarted as i32)
            {
                break;
            }
        }
    });
    let busy = rt
        .block_on(collect(
            &mut c,
            request("second", vec![node("a", &[], lua("return {}"))], &json!({})),
        ))
        .unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted);
    assert!(busy.message().contains("capacity"), "{}", busy.message());
    let found = rt
        .block_on(c.cancel(pb::CancelRequest {
            run_id: "spin".into(),
        }))
        .unwrap()
        .into_inner()
        .found;
    assert!(found);
    let result = rt.block_on(async {
        let mut last = None;
        while let Some(batch) = stream.next().await {
            last = batch.unwrap().events.pop().or(last);
        }
        last.unwrap().result.unwrap()
    });
    assert_eq!(result.status, pb::RunStatus::Cancelled as i32);
    // Drain: a spinning run is cancelled after the grace and reported as drained.
    let mut stream = rt.block_on(c.run(spin())).unwrap().into_inner();
    let cancelled = std::thread::scope(|s| {
        let d = s.spawn(|| srv.drain(Duration::from_millis(200)));
        d.join().unwrap()
    });
    assert_eq!(cancelled, 1);
    let result = rt.block_on(async {
        let mut last = None;
        while let Some(batch) = stream.next().await {
            last = batch.unwrap().events.pop().or(last);
        }
        last.unwrap().result.unwrap()
    });
    assert_eq!(result.error.unwrap().r#type, "EngineDraining");
    let refused = rt
        .block_on(collect(
            &mut c,
            request("late", vec![node("a", &[], lua("return {}"))], &json!({})),
        ))
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    srv.stop();
    assert!(srv.wait_stopped(Duration::from_secs(10)));
}

/// What a `SessionClient` handed over: the decoded replies, and how it ended.
#[derive(Default)]
struct Collected {
    replies: std::sync::Mutex<Vec<pb::SessionEvents>>,
    end: std::sync::Mutex<Option<(Code, String)>>,
}

impl SessionSink for Collected {
    fn replies(&self, message: tonic::codegen::Bytes) {
        let decoded = <pb::SessionReplies as prost::Message>::decode(message).unwrap();
        assert!(self.end.lock().unwrap().is_none(), "a reply after the end");
        self.replies.lock().unwrap().extend(decoded.runs);
    }

    fn ended(&self, code: Code, message: String) {
        let mut end = self.end.lock().unwrap();
        assert!(end.is_none(), "ended twice");
        *end = Some((code, message));
    }
}

impl Collected {
    fn results(&self) -> std::collections::HashMap<String, pb::RunResult> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.events.iter().map(move |e| (r.run_id.clone(), e)))
            .filter_map(|(id, e)| e.result.clone().map(|res| (id, res)))
            .collect()
    }

    fn wait(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn session_options(port: u16) -> SessionOptions {
    SessionOptions {
        address: format!("127.0.0.1:{port}"),
        tls: None,
        max_message_bytes: 1 << 20,
        keepalive: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
    }
}

#[test]
fn a_session_client_runs_many_runs_and_reports_its_end_once() {
    let srv = server(64);
    let sink = Arc::new(Collected::default());
    let runtime = dagengine_server::runtime().unwrap();
    let session =
        SessionClient::open(session_options(srv.port()), sink.clone(), runtime.handle()).unwrap();
    for i in 0..50 {
        let req = request(
            &format!("r{i}"),
            vec![node("a", &[], lua("return {x = inputs.n * 2}"))],
            &json!({"n": i}),
        );
        assert_eq!(
            session.start(prost::Message::encode_to_vec(&req).into()),
            Started::Sent
        );
    }
    // A run that would not fit in a message with its framing is not sent (it would break
    // the stream, and every run on it).
    assert_eq!(
        session.start(vec![0u8; (1 << 20) - 3].into()),
        Started::TooLarge {
            size: (1 << 20) + 1,
            limit: 1 << 20
        }
    );
    sink.wait("50 results", |s| s.results().len() == 50);
    for (run_id, result) in sink.results() {
        let n: i64 = run_id[1..].parse().unwrap();
        assert_eq!(result.status, pb::RunStatus::Succeeded as i32);
        assert_eq!(
            serde_json::from_slice::<Value>(&result.nodes[0].output_json).unwrap(),
            json!({"x": n * 2})
        );
    }
    assert!(!session.ended());
    session.close();
    assert!(session.ended());
    assert_eq!(
        sink.end.lock().unwrap().clone(),
        Some((Code::Cancelled, "the session was closed".to_owned()))
    );
    assert_eq!(session.start(vec![].into()), Started::Ended);
    session.close(); // once only: the sink would panic on a second end
}

#[test]
fn a_session_client_reports_a_refused_connection() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let runtime = dagengine_server::runtime().unwrap();
    let sink = Arc::new(Collected::default());
    let _nothing =
        SessionClient::open(session_options(port), sink.clone(), runtime.handle()).unwrap();
    sink.wait("the end", |s| s.end.lock().unwrap().is_some());
    let (code, message) = sink.end.lock().unwrap().clone().unwrap();
    assert_eq!(code, Code::Unavailable);
    assert!(message.contains("cannot connect"), "{message}");
}

#[test]
fn stop_ends_sessions_and_watchers_that_only_a_client_would_end() {
    let srv = server(4);
    let runtime = dagengine_server::runtime().unwrap();
    let sink = Arc::new(Collected::default());
    let session =
        SessionClient::open(session_options(srv.port()), sink.clone(), runtime.handle()).unwrap();
    let spin = request(
        "spin",
        vec![node("s", &[], lua("while true do end"))],
        &json!({}),
    );
    assert_eq!(
        session.start(prost::Message::encode_to_vec(&spin).into()),
        Started::Sent
    );
    sink.wait("the spin to start", |s| {
        s.replies.lock().unwrap().iter().any(|r| {
            r.events
                .iter()
                .any(|e| e.kind == pb::EventKind::NodeStarted as i32)
        })
    });
    let rt = client_rt();
    let mut watcher = rt.block_on(async {
        let mut c = connect(srv.port()).await;
        c.watch(pb::WatchRequest {}).await.unwrap().into_inner()
    });
    srv.stop();
    // Well within the script's own 10 s limit and the server's 2 s grace.
    let started = std::time::Instant::now();
    sink.wait("the session's end", |s| s.end.lock().unwrap().is_some());
    assert!(session.ended());
    let result = &sink.results()["spin"];
    assert_eq!(result.status, pb::RunStatus::Cancelled as i32);
    rt.block_on(async {
        while let Some(event) = watcher.next().await {
            event.unwrap();
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(srv.wait_stopped(Duration::from_secs(10)));
}

#[test]
fn health_watch_of_an_unknown_service_streams_service_unknown_and_stays_open() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let srv = server(1);
    let rt = client_rt();
    rt.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", srv.port()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut health = HealthClient::new(channel);
        let asked = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        let mut stream = health
            .watch(asked("no.such.Service"))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
        // The stream stays open: nothing more arrives (no error, no end) while the status
        // does not change.
        let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(more.is_err(), "the stream went on with {more:?}");
        let code = health.check(asked("no.such.Service")).await.unwrap_err();
        assert_eq!(code.code(), Code::NotFound);
        let mut known = health
            .watch(asked("dagengine.v1.EngineService"))
            .await
            .unwrap()
            .into_inner();
        let serving = known.next().await.unwrap().unwrap();
        assert_eq!(serving.status, ServingStatus::Serving as i32);
    });
    srv.stop();
    assert!(srv.wait_stopped(Duration::from_secs(10)));
}

/// The messages of one run's stream, each with when it came (since the request).
async fn messages(
    client: &mut EngineServiceClient<tonic::transport::Channel>,
    req: pb::RunRequest,
) -> Vec<(std::time::Duration, Vec<pb::RunEvent>)> {
    let started = std::time::Instant::now();
    let mut stream = client.run(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.push((started.elapsed(), batch.unwrap().events));
    }
    out
}

#[test]
fn a_short_runs_events_leave_together_and_a_long_nodes_start_is_seen_while_it_runs() {
    let srv = server(4);
    client_rt().block_on(async {
        let mut c = connect(srv.port()).await;
        // A chain of 3 nodes of some tens of microseconds each ends well within the
        // gathering: its events leave in one message with the result (the median over
        // runs: a loaded machine may stall one).
        let work = "local x = 0 for i = 1, 5000 do x = x + i end return {x = x}";
        let mut counts = Vec::new();
        for i in 0..21 {
            let nodes = vec![
                node("a", &[], lua(work)),
                node("b", &["a"], lua(work)),
                node("c", &["b"], lua(work)),
            ];
            let got = messages(&mut c, request(&format!("short-{i}"), nodes, &json!({}))).await;
            let last = &got.last().unwrap().1;
            assert_eq!(last.last().unwrap().kind, pb::EventKind::RunFinished as i32);
            counts.push(got.len());
        }
        counts.sort_unstable();
        assert_eq!(counts[counts.len() / 2], 1, "messages a run: {counts:?}");
        // A long node's start is not held until its end.
        let busy = "local x = 0 for i = 1, 30000000 do x = x + i end return {x = x}";
        let nodes = vec![node("slow", &[], lua(busy))];
        let got = messages(&mut c, request("long", nodes, &json!({}))).await;
        let (first_at, first) = &got[0];
        assert!(
            first
                .iter()
                .any(|e| e.kind == pb::EventKind::NodeStarted as i32 && e.node_id == "slow"),
            "{first:?}"
        );
        let (last_at, _) = got.last().unwrap();
        assert!(got.len() >= 2, "one message for a long run");
        assert!(
            *last_at > *first_at + std::time::Duration::from_millis(20),
            "start seen at {first_at:?}, end at {last_at:?}"
        );
    });
}

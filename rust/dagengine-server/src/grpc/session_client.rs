//! The client end of an engine's `Session` stream, run on a tokio runtime the caller
//! names: the orchestrator's path to its remote engines.
//!
//! Requests and replies cross this module as encoded protobuf: the caller hands over each
//! `RunRequest` already encoded, and gets each `SessionReplies` message as it came off the
//! wire. Nothing is decoded here; what this module does is the transport (HTTP/2, TLS,
//! keepalive), packing the runs started since the last write into one `RunBatch`, and
//! telling the caller once, at the end, why the session ended. It costs the caller no
//! event loop and no thread of its own: a start is a push onto a channel.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use super::{SESSION_PROTOCOL, SESSION_PROTOCOL_HEADER};

const SESSION_PATH: &str = "/dagengine.v1.EngineService/Session";

// Field numbers of `SessionRequest` and `RunBatch` (engine.proto).
const SESSION_REQUEST_RUN: u32 = 1;
const SESSION_REQUEST_CANCEL: u32 = 2;
const SESSION_REQUEST_RUNS: u32 = 3;
const RUN_BATCH_RUNS: u32 = 1;
const CANCEL_REQUEST_RUN_ID: u32 = 1;

/// Where a session's replies and its end go: `replies` on the session's runtime, `ended`
/// there or on the thread that closes the session. Never a `replies` after the `ended`
/// (both are called under the session's end lock, so keep them short: a push onto a
/// queue). The `ended` message does not name the engine (the sink knows which it is).
pub trait SessionSink: Send + Sync + 'static {
    /// One `SessionReplies` message, encoded, as the engine sent it.
    fn replies(&self, message: Bytes);
    /// The session is over: no more replies. `code` is the gRPC status code of why.
    fn ended(&self, code: Code, message: String);
}

/// TLS towards the engine (PEM). Without `ca`, the platform's roots verify it.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name checked against the engine's certificate (default: the address's host).
    pub server_name: Option<String>,
}

/// How a session connects.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// `host:port`.
    pub address: String,
    pub tls: Option<ClientTls>,
    /// Largest message sent or received.
    pub max_message_bytes: usize,
    /// HTTP/2 pings on the open connection; no answer within as long again breaks it.
    pub keepalive: Duration,
    /// How long connecting may take before the session ends `UNAVAILABLE`.
    pub connect_timeout: Duration,
}

/// What became of a run given to [`SessionClient::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Queued for the next write.
    Sent,
    /// The session has ended: nothing was sent.
    Ended,
    /// The run with its framing is `size` bytes, over the session's `limit`: sending it
    /// would break the whole stream, so it was not sent.
    TooLarge { size: usize, limit: usize },
}

/// A session could not be opened: its address or TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("engine {address}: {message}")]
pub struct SessionError {
    pub address: String,
    pub message: String,
}

enum Outbound {
    Run(Bytes),
    Cancel(String),
    /// Ends the request stream (see `close`).
    Close,
}

struct Shared {
    sink: Arc<dyn SessionSink>,
    /// Set under `end_lock`; read without it where a stale `false` is harmless.
    ended: AtomicBool,
    /// Orders replies and the end: no reply is handed over once the end has been.
    end_lock: Mutex<()>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.end_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Report the end, once.
    fn end(&self, code: Code, message: String) {
        let _order = self.lock();
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.sink.ended(code, message);
        }
    }

    /// Hand a reply over, unless the session has ended. `false` once it has.
    fn reply(&self, message: Bytes) -> bool {
        let _order = self.lock();
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        self.sink.replies(message);
        true
    }
}

/// One open `Session` call. Dropping it closes it like [`SessionClient::close`].
///
/// Its runtime's threads do not survive `fork()`: in a child process a session inherited
/// from the parent is ended (it sends nothing, and closing or dropping it touches nothing
/// the parent's threads may have held).
pub struct SessionClient {
    pid: u32,
    tx: mpsc::UnboundedSender<Outbound>,
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
    limit: usize,
}

impl SessionClient {
    /// Open a session with the engine at `options.address`, driven on `runtime` (its
    /// connection's tasks too). It connects in the background: a failure to connect is
    /// reported through the sink's `ended`, like any later break.
    pub fn open(
        options: SessionOptions,
        sink: Arc<dyn SessionSink>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, SessionError> {
        let endpoint = endpoint(&options)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sink,
            ended: AtomicBool::new(false),
            end_lock: Mutex::new(()),
        });
        let limit = options.max_message_bytes;
        let task = runtime
            .spawn(drive(
                endpoint,
                options,
                Batcher {
                    rx,
                    carry: None,
                    limit,
                },
                Arc::clone(&shared),
            ))
            .abort_handle();
        Ok(Self {
            pid: std::process::id(),
            tx,
            shared,
            task,
            limit,
        })
    }

    /// Whether the session has ended (nothing more can run on it).
    pub fn ended(&self) -> bool {
        self.forked() || self.shared.ended.load(Ordering::Acquire)
    }

    fn forked(&self) -> bool {
        self.pid != std::process::id()
    }

    /// Send a run: `request` is an encoded `RunRequest`. It goes out with the other runs
    /// started before the next write.
    pub fn start(&self, request: Bytes) -> Started {
        let size = run_entry_len(request.len());
        if size > self.limit {
            return Started::TooLarge {
                size,
                limit: self.limit,
            };
        }
        if !self.ended() && self.tx.send(Outbound::Run(request)).is_ok() {
            Started::Sent
        } else {
            Started::Ended
        }
    }

    /// Ask the engine to cancel a run of this session; it goes out after every start sent
    /// before it. `false` when the session has ended.
    pub fn cancel(&self, run_id: String) -> bool {
        !self.ended() && self.tx.send(Outbound::Cancel(run_id)).is_ok()
    }

    /// End the session: the engine cancels the runs still on it. The sink hears `ended`
    /// (`CANCELLED`) now, if it has not heard it yet.
    pub fn close(&self) {
        if self.forked() {
            return;
        }
        self.shared
            .end(Code::Cancelled, "the session was closed".to_owned());
        self.task.abort();
        // The request stream ends too: the call is then over both ways and the engine
        // sees it reset (with its requests still open, dropping the replies alone left
        // the stream, and its runs, alive on the engine).
        let _ = self.tx.send(Outbound::Close);
    }
}

impl Drop for SessionClient {
    fn drop(&mut self) {
        self.close();
    }
}

fn endpoint(options: &SessionOptions) -> Result<Endpoint, SessionError> {
    let config = |message: String| SessionError {
        address: options.address.clone(),
        message,
    };
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let keepalive = options.keepalive.max(Duration::from_millis(100));
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", options.address))
        .map_err(|e| config(format!("not a host:port address: {e}")))?
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .keep_alive_while_idle(false)
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        let mut tls_config = ClientTlsConfig::new();
        tls_config = match &tls.ca {
            Some(ca) => tls_config.ca_certificate(Certificate::from_pem(ca)),
            None => tls_config.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            tls_config = tls_config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| config(format!("TLS configuration refused: {e}")))?;
    }
    Ok(endpoint)
}

/// The session's call: connect, check the protocol, forward replies until the end.
async fn drive(endpoint: Endpoint, options: SessionOptions, out: Batcher, shared: Arc<Shared>) {
    let (code, message) = match call(endpoint, &options, out, &shared).await {
        Ok(()) => (Code::Unavailable, "the session ended".to_owned()),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    shared.end(code, message);
}

async fn call(
    endpoint: Endpoint,
    options: &SessionOptions,
    outbound: Batcher,
    shared: &Shared,
) -> Result<(), Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect: {}", source_chain(&e))))?;
    let limit = options.max_message_bytes;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let response = grpc
        .streaming(
            Request::new(outbound),
            PathAndQuery::from_static(SESSION_PATH),
            RawCodec,
        )
        .await?;
    let spoken = response
        .metadata()
        .get(SESSION_PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("1")
        .to_owned();
    if spoken != SESSION_PROTOCOL {
        // An engine of another dagengine version: it would not understand batched starts,
        // or we its replies. Fail the runs now rather than wait for them.
        return Err(Status::unavailable(format!(
            "the engine speaks session protocol {spoken}, this client {SESSION_PROTOCOL}: run \
             the same dagengine version on engines and orchestrator"
        )));
    }
    let mut replies = response.into_inner();
    while let Some(message) = replies.message().await? {
        if !shared.reply(message) {
            break;
        }
    }
    Ok(())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The request stream: everything queued when the transport asks for the next message goes
/// in it (runs as one `RunBatch`, up to the size limit; a cancel on its own).
struct Batcher {
    rx: mpsc::UnboundedReceiver<Outbound>,
    carry: Option<Outbound>,
    limit: usize,
}

impl Batcher {
    fn cancel_message(run_id: &str) -> Bytes {
        let inner = 1 + encoded_len_varint(run_id.len() as u64) + run_id.len();
        let mut buf = BytesMut::with_capacity(inner + 8);
        encode_key(SESSION_REQUEST_CANCEL, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        encode_key(CANCEL_REQUEST_RUN_ID, WireType::LengthDelimited, &mut buf);
        encode_varint(run_id.len() as u64, &mut buf);
        buf.put_slice(run_id.as_bytes());
        buf.freeze()
    }

    fn runs_message(runs: &[Bytes]) -> Bytes {
        if let [one] = runs {
            let mut buf = BytesMut::with_capacity(one.len() + 11);
            encode_key(SESSION_REQUEST_RUN, WireType::LengthDelimited, &mut buf);
            encode_varint(one.len() as u64, &mut buf);
            buf.put_slice(one);
            return buf.freeze();
        }
        let inner: usize = runs.iter().map(|r| run_entry_len(r.len())).sum();
        let mut buf = BytesMut::with_capacity(inner + 11);
        encode_key(SESSION_REQUEST_RUNS, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        for r in runs {
            encode_key(RUN_BATCH_RUNS, WireType::LengthDelimited, &mut buf);
            encode_varint(r.len() as u64, &mut buf);
            buf.put_slice(r);
        }
        buf.freeze()
    }
}

/// Bytes a run takes inside a `RunBatch`: its key, its length, itself.
fn run_entry_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

impl Stream for Batcher {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let first = match self.carry.take() {
            Some(item) => item,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let first = match first {
            Outbound::Cancel(run_id) => return Poll::Ready(Some(Self::cancel_message(&run_id))),
            Outbound::Close => return Poll::Ready(None),
            Outbound::Run(run) => run,
        };
        // Room for the batch's own key and length.
        let budget = self.limit.saturating_sub(16);
        let mut size = run_entry_len(first.len());
        let mut runs = vec![first];
        while let Ok(item) = self.rx.try_recv() {
            match item {
                Outbound::Run(run) if size + run_entry_len(run.len()) <= budget => {
                    size += run_entry_len(run.len());
                    runs.push(run);
                }
                other => {
                    self.carry = Some(other);
                    break;
                }
            }
        }
        Poll::Ready(Some(Self::runs_message(&runs)))
    }
}

/// Messages as bytes both ways: the caller encodes the runs, and decodes the replies.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::super::pb;
    use super::*;

    fn request(run_id: &str) -> Bytes {
        pb::RunRequest {
            run_id: run_id.to_owned(),
            attempt: 1,
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn one_run_goes_as_run_several_as_a_batch() {
        let one = pb::SessionRequest::decode(Batcher::runs_message(&[request("a")])).unwrap();
        match one.kind {
            Some(pb::session_request::Kind::Run(r)) => assert_eq!(r.run_id, "a"),
            other => panic!("expected a run, got {other:?}"),
        }
        let many = pb::SessionRequest::decode(Batcher::runs_message(&[
            request("a"),
            request("b"),
            request("c"),
        ]))
        .unwrap();
        match many.kind {
            Some(pb::session_request::Kind::Runs(b)) => {
                let ids: Vec<_> = b.runs.iter().map(|r| r.run_id.as_str()).collect();
                assert_eq!(ids, ["a", "b", "c"]);
            }
            other => panic!("expected a batch, got {other:?}"),
        }
        let cancel = pb::SessionRequest::decode(Batcher::cancel_message("run-7")).unwrap();
        match cancel.kind {
            Some(pb::session_request::Kind::Cancel(c)) => assert_eq!(c.run_id, "run-7"),
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    #[test]
    fn batches_respect_the_size_limit_and_keep_the_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let big = request(&"x".repeat(300));
        for _ in 0..5 {
            tx.send(Outbound::Run(big.clone())).unwrap();
        }
        tx.send(Outbound::Cancel("c".into())).unwrap();
        tx.send(Outbound::Run(request("after"))).unwrap();
        // Close ends the stream: what comes after it is never sent.
        tx.send(Outbound::Close).unwrap();
        tx.send(Outbound::Run(request("never"))).unwrap();
        let mut batcher = Batcher {
            rx,
            carry: None,
            limit: 1000,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut kinds = Vec::new();
        loop {
            match Pin::new(&mut batcher).poll_next(&mut cx) {
                Poll::Ready(Some(msg)) => {
                    assert!(msg.len() <= 1000, "a message of {} bytes", msg.len());
                    kinds.push(match pb::SessionRequest::decode(msg).unwrap().kind {
                        Some(pb::session_request::Kind::Run(r)) => {
                            format!("run {}", r.run_id.len())
                        }
                        Some(pb::session_request::Kind::Runs(b)) => {
                            format!("batch {}", b.runs.len())
                        }
                        Some(pb::session_request::Kind::Cancel(c)) => {
                            format!("cancel {}", c.run_id)
                        }
                        None => "none".into(),
                    });
                }
                Poll::Ready(None) => break,
                Poll::Pending => panic!("pending with a Close queued"),
            }
        }
        assert_eq!(kinds, ["batch 3", "batch 2", "cancel c", "run 5"]);
    }
}

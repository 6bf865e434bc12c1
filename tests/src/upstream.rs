//! A programmable HTTP upstream (HTTP/1.1 and h2c on one port) that records what reaches it.
//!
//! Behaviour comes from a shared [`Behavior`] the test sets, and each request may override it
//! with headers (which Envoy forwards untouched):
//! - `x-test-status: 503` — answer with that status;
//! - `x-test-delay-ms: 300` — wait before answering;
//! - `x-test-fail-first: 503` — answer that status when `x-envoy-attempt-count` is 1 (or absent),
//!   200 on later attempts: "fails the first attempt only";
//! - `x-test-reset: 1` — abort instead of answering (HTTP/1.1: the connection is closed; HTTP/2:
//!   the stream is reset).
//!
//! A request with `upgrade: websocket` is accepted (`101 Switching Protocols`) and the upgraded
//! connection echoes what it receives until the client closes it: a long-lived stream that is
//! healthy, for as long as the client holds it.
//!
//! It also counts requests in flight and the maximum ever in flight at once, which is how the
//! half-open probe quota is observed.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the upstream does with requests that carry no `x-test-*` header.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Status to answer (200 if `None`).
    pub status: Option<u16>,
    /// Delay before answering.
    pub delay: Duration,
    /// Answer this status on the first attempt (`x-envoy-attempt-count` 1 or absent), 200 after.
    pub fail_first_attempt: Option<u16>,
    /// Abort the request instead of answering.
    pub reset: bool,
    /// Answer with `status` only for every n-th request (1-based count); others get 200.
    pub fail_every_nth: Option<usize>,
    /// Answer with `status` (503 if `None`) for a seeded pseudo-random share of requests: the n-th
    /// request (1-based count since start or [`HttpUpstream::clear`]) fails when a hash of
    /// `(seed, n)` falls under the share, so two upstreams with the same seed fail the same
    /// positions of their request sequences.
    pub fail_share: Option<FailShare>,
    /// Extra response headers, as bytes (obs-text, forged `x-envoy-*`, ...).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Answer as a gRPC server that sends a message and then `grpc-status: N` in the trailers
    /// (HTTP 200, a body, trailers: not a trailers-only response).
    pub grpc_trailer_status: Option<u32>,
}

/// A seeded share of failing requests (see [`Behavior::fail_share`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailShare {
    /// In [0, 1].
    pub share: f64,
    pub seed: u64,
}

impl FailShare {
    /// Whether the n-th request fails.
    pub fn fails(&self, n: usize) -> bool {
        let h = splitmix64(self.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.share
    }
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub version: String,
    /// Lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `x-envoy-attempt-count` as a number.
    pub fn attempt(&self) -> Option<u32> {
        self.header("x-envoy-attempt-count")
            .and_then(|v| v.parse().ok())
    }
}

#[derive(Default)]
struct State {
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seen: AtomicUsize,
    /// Upgraded connections (websockets) open right now.
    upgraded_open: AtomicUsize,
}

/// A running upstream on `127.0.0.1:<port>`; stops when dropped.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight<'a>(&'a State);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HttpUpstream {
    /// Starts on a free loopback port (call within a runtime; use [`crate::run`] for shared ones).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("upstream bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("upstream addr: {e}"));
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the default behaviour.
    pub fn set(&self, b: Behavior) {
        if let Ok(mut g) = self.state.behavior.lock() {
            *g = b;
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.state.seen.load(Ordering::SeqCst)
    }

    /// Forgets recorded requests and resets the concurrency high-water mark.
    pub fn clear(&self) {
        if let Ok(mut g) = self.state.requests.lock() {
            g.clear();
        }
        self.state.seen.store(0, Ordering::SeqCst);
        self.state.max_in_flight.store(
            self.state.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Upgraded (websocket) connections open right now.
    pub fn upgraded_open(&self) -> usize {
        self.state.upgraded_open.load(Ordering::SeqCst)
    }

    /// Most requests ever handled at once (since start or [`HttpUpstream::clear`]).
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A loopback address nothing listens on (a port bound and released): connecting is refused, as
/// with a hard-down upstream.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
}

struct Upgraded<'a>(&'a State);
impl Drop for Upgraded<'_> {
    fn drop(&mut self) {
        self.0.upgraded_open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts a websocket upgrade and echoes the tunnel until the client closes it.
fn upgrade(st: Arc<State>, mut req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    st.upgraded_open.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let _open = Upgraded(&st);
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = io.shutdown().await;
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full(Bytes::new()))
        .map_err(std::io::Error::other)
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&st);
    let nth = st.seen.fetch_add(1, Ordering::SeqCst) + 1;

    let rec = RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    let mut b = st.behavior.lock().map(|g| g.clone()).unwrap_or_default();
    if let Some(s) = rec.header("x-test-status").and_then(|v| v.parse().ok()) {
        b.status = Some(s);
    }
    if let Some(ms) = rec.header("x-test-delay-ms").and_then(|v| v.parse().ok()) {
        b.delay = Duration::from_millis(ms);
    }
    if let Some(s) = rec.header("x-test-fail-first").and_then(|v| v.parse().ok()) {
        b.fail_first_attempt = Some(s);
    }
    if rec.header("x-test-reset") == Some("1") {
        b.reset = true;
    }
    let attempt = rec.attempt().unwrap_or(1);
    let websocket = rec
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if let Ok(mut g) = st.requests.lock() {
        g.push(rec);
    }
    if websocket {
        return upgrade(st.clone(), req);
    }
    // Drain the request body so HTTP/1.1 connections can be reused.
    let _ = req.into_body().collect().await;
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    if b.reset {
        return Err(std::io::Error::other("programmed reset"));
    }
    let status = match (b.fail_first_attempt, b.fail_every_nth, b.fail_share) {
        (Some(s), _, _) if attempt <= 1 => s,
        (Some(_), _, _) => 200,
        (None, Some(n), _) if n > 0 && !nth.is_multiple_of(n) => 200,
        (None, None, Some(f)) if f.fails(nth) => b.status.unwrap_or(503),
        (None, None, Some(_)) => 200,
        _ => b.status.unwrap_or(200),
    };
    if let Some(code) = b.grpc_trailer_status {
        // One length-prefixed message (an empty HealthCheckResponse), then the status trailer.
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert(
            "grpc-status",
            hyper::header::HeaderValue::from_str(&code.to_string())
                .map_err(std::io::Error::other)?,
        );
        trailers.insert(
            "grpc-message",
            hyper::header::HeaderValue::from_static("programmed"),
        );
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
        let mut builder = Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        for (k, v) in &b.headers {
            builder = builder.header(k.as_str(), v.as_slice());
        }
        return builder.body(body).map_err(std::io::Error::other);
    }
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-upstream-attempt", attempt.to_string());
    for (k, v) in &b.headers {
        builder = builder.header(k.as_str(), v.as_slice());
    }
    builder
        .body(full(format!("upstream {status}\n")))
        .map_err(std::io::Error::other)
}

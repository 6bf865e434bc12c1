//! A real gRPC upstream (tonic, the standard `grpc.health.v1.Health/Check` service, so no proto
//! compiler is needed) whose answer the test programs, and a real tonic client call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};

/// What the gRPC upstream answers.
#[derive(Debug, Clone)]
pub struct GrpcBehavior {
    /// `Code::Ok` answers SERVING; anything else is returned as that status.
    pub code: Code,
    pub delay: Duration,
    /// Answer this code on the first attempt only (`x-envoy-attempt-count` 1 or absent).
    pub fail_first_attempt: Option<Code>,
}

impl Default for GrpcBehavior {
    fn default() -> Self {
        Self {
            code: Code::Ok,
            delay: Duration::ZERO,
            fail_first_attempt: None,
        }
    }
}

#[derive(Default)]
struct State {
    behavior: Mutex<GrpcBehavior>,
    attempts: Mutex<Vec<u32>>,
    seen: AtomicUsize,
}

struct Svc(Arc<State>);

#[tonic::async_trait]
impl Health for Svc {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.seen.fetch_add(1, Ordering::SeqCst);
        let attempt = request
            .metadata()
            .get("x-envoy-attempt-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1u32);
        if let Ok(mut g) = self.0.attempts.lock() {
            g.push(attempt);
        }
        let b = self
            .0
            .behavior
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();
        if !b.delay.is_zero() {
            tokio::time::sleep(b.delay).await;
        }
        let code = match b.fail_first_attempt {
            Some(c) if attempt <= 1 => c,
            Some(_) => Code::Ok,
            None => b.code,
        };
        if code == Code::Ok {
            Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            }))
        } else {
            Err(Status::new(code, "programmed failure"))
        }
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not used by the tests"))
    }
}

/// A running gRPC upstream on `127.0.0.1:<port>` (h2c); stops when dropped.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("grpc upstream bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("grpc upstream addr: {e}"));
        let state = Arc::new(State::default());
        let svc = HealthServer::new(Svc(state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self { addr, state, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, b: GrpcBehavior) {
        if let Ok(mut g) = self.state.behavior.lock() {
            *g = b;
        }
    }

    /// Calls received so far.
    pub fn count(&self) -> usize {
        self.state.seen.load(Ordering::SeqCst)
    }

    /// `x-envoy-attempt-count` of each call received, in order.
    pub fn attempts(&self) -> Vec<u32> {
        self.state
            .attempts
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut g) = self.state.attempts.lock() {
            g.clear();
        }
        self.state.seen.store(0, Ordering::SeqCst);
    }
}

/// One `Health/Check` call through `127.0.0.1:<port>` with a real tonic client; `metadata` are
/// extra request headers (e.g. the per-test route selector). Returns the response metadata on
/// success, the status (with its metadata) on failure.
pub async fn grpc_check(
    port: u16,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::metadata::MetadataMap, Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| Status::internal(format!("connect: {e}")))?;
    let mut req = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    for (k, v) in metadata {
        let v = v
            .parse()
            .map_err(|_| Status::internal(format!("bad metadata value {v:?}")))?;
        req.metadata_mut().insert(*k, v);
    }
    let resp = HealthClient::new(channel).check(req).await?;
    Ok(resp.metadata().clone())
}

//! A per-file test stack: one Envoy with the meshbreaker filter and one upstream (HTTP or gRPC)
//! per test, each behind its own cluster, so tests share the Envoy start but not breaker state
//! (with `key_by: cluster` each test's key is its cluster name).

use crate::bootstrap::{Bootstrap, RouteKind};
use crate::client::{HttpClient, HttpResponse};
use crate::envoy::Envoy;
use crate::grpc::GrpcUpstream;
use crate::shell::Shell;
use crate::upstream::HttpUpstream;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The plugin configuration the filter tests start from: the SPEC defaults with short windows so
/// trips and recoveries happen in well under a second.
pub fn fast_config() -> Value {
    json!({
        "key_by": "cluster",
        "mode": "enforce",
        "breaker": {
            "window": "2s",
            "buckets": 4,
            "min_requests": 5,
            "error_rate_threshold": 0.5,
            "latency_p95_threshold": "300ms",
            "sleep_window": "500ms",
            "max_sleep_window": "4s",
            "half_open_max_probes": 2,
            "half_open_successes_to_close": 2
        }
    })
}

/// The SPEC key sanitization: lowercase, every character outside `[a-z0-9._:|-]` replaced by `_`,
/// cut to 128 bytes.
pub fn sanitize_key(raw: &str) -> String {
    let s: String = raw
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "._:|-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.chars().take(128).collect()
}

/// The names of the SPEC metrics.
pub const SPEC_METRICS: [&str; 7] = policy_core::metrics::ALL;

/// Envoy + the filter + named upstreams.
pub struct Stack {
    pub envoy: Envoy,
    /// Which meshbreaker this Envoy runs.
    pub shell: Shell,
    http: HashMap<String, HttpUpstream>,
    grpc: HashMap<String, GrpcUpstream>,
}

impl Stack {
    /// Starts one HTTP upstream per `http` name and one gRPC upstream per `grpc` name, and Envoy
    /// with the filter configured by `plugin`, each name being a cluster selected by `x-route`.
    pub async fn start(
        plugin: &Value,
        http: &[&str],
        grpc: &[&str],
        trust_loopback: bool,
    ) -> Stack {
        Self::start_shell(Shell::Wasm, plugin, http, grpc, trust_loopback).await
    }

    /// [`Stack::start`] with meshbreaker as `shell`.
    pub async fn start_shell(
        shell: Shell,
        plugin: &Value,
        http: &[&str],
        grpc: &[&str],
        trust_loopback: bool,
    ) -> Stack {
        Self::start_with_shell(shell, plugin, http, grpc, &[], |b| {
            b.trust_loopback(trust_loopback)
        })
        .await
    }

    /// [`Stack::start`] with more: `grpc_http` names HTTP upstreams behind gRPC routes (for
    /// responses a tonic server does not send, such as a body followed by trailers), and
    /// `configure` adjusts the bootstrap (Istio's virtual-host shape, LDS, ...).
    pub async fn start_with(
        plugin: &Value,
        http: &[&str],
        grpc: &[&str],
        grpc_http: &[&str],
        configure: impl FnOnce(Bootstrap) -> Bootstrap,
    ) -> Stack {
        Self::start_with_shell(Shell::Wasm, plugin, http, grpc, grpc_http, configure).await
    }

    /// [`Stack::start_with`] with meshbreaker as `shell`.
    pub async fn start_with_shell(
        shell: Shell,
        plugin: &Value,
        http: &[&str],
        grpc: &[&str],
        grpc_http: &[&str],
        configure: impl FnOnce(Bootstrap) -> Bootstrap,
    ) -> Stack {
        let mut b = Bootstrap::new().with_shell(shell, plugin.to_string());
        let mut hs = HashMap::new();
        // The default route's `backend` cluster (what requests without `x-route` reach).
        let backend = HttpUpstream::start().await;
        b = b.backend(backend.addr);
        hs.insert("backend".to_string(), backend);
        for name in http {
            let up = HttpUpstream::start().await;
            b = b.cluster(name, RouteKind::Http, up.addr);
            hs.insert(name.to_string(), up);
        }
        for name in grpc_http {
            let up = HttpUpstream::start().await;
            b = b.cluster(name, RouteKind::Grpc, up.addr);
            hs.insert(name.to_string(), up);
        }
        b = configure(b);
        let mut gs = HashMap::new();
        for name in grpc {
            let up = GrpcUpstream::start().await;
            b = b.cluster(name, RouteKind::Grpc, up.addr);
            gs.insert(name.to_string(), up);
        }
        let envoy = Envoy::start(b.to_yaml()).await;
        Stack {
            envoy,
            shell,
            http: hs,
            grpc: gs,
        }
    }

    /// The HTTP upstream behind cluster `name` (`backend`: the default route's).
    pub fn up(&self, name: &str) -> &HttpUpstream {
        self.http
            .get(name)
            .unwrap_or_else(|| panic!("no HTTP upstream {name}"))
    }

    /// The gRPC upstream behind cluster `name`.
    pub fn grpc(&self, name: &str) -> &GrpcUpstream {
        self.grpc
            .get(name)
            .unwrap_or_else(|| panic!("no gRPC upstream {name}"))
    }

    /// One request to cluster `route` over HTTP/1.1.
    pub async fn send(&self, route: &str, method: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h: Vec<(&str, &str)> = vec![("x-route", route)];
        h.extend_from_slice(headers);
        self.envoy
            .http1()
            .request(method, &format!("/{route}"), &h, "")
            .await
    }

    /// Value of a SPEC metric for `key` that must exist (panics naming the series when it does
    /// not): for assertions such as "is 0", which an absent series would otherwise pass.
    pub async fn metric_present(&self, name: &str, key: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("key", key)];
        labels.extend_from_slice(extra);
        self.envoy
            .metric_opt(&self.shell.metric_name(name), &labels)
            .await
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /stats/prometheus"))
    }

    /// Value of a SPEC metric for `key` (plus extra labels), summed, or `None` when this shell
    /// serves no such series (so "absent" and "zero" can be told apart).
    pub async fn metric_opt(&self, name: &str, key: &str, extra: &[(&str, &str)]) -> Option<f64> {
        let mut labels = vec![("key", key)];
        labels.extend_from_slice(extra);
        self.envoy
            .metric_opt(&self.shell.metric_name(name), &labels)
            .await
    }

    /// A client to the listener, for concurrent use.
    pub fn client(&self) -> HttpClient {
        self.envoy.http1()
    }

    /// Sends `n` requests with hosts `{prefix}{start+i}.example`, 32 at a time; every one must
    /// be answered 200 (a flood of authorities for `key_by: authority`).
    pub async fn flood_authorities(&self, prefix: &str, start: usize, n: usize) {
        let c = self.client();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(start));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let c = c.clone();
            let next = next.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= start + n {
                        break;
                    }
                    let host = format!("{prefix}{i}.example");
                    let r = c.get("/", &[("host", &host)]).await;
                    assert_eq!(r.status, 200, "{host}: {r:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// Value of a SPEC metric for `key` (plus extra labels), summed; 0 if absent.
    pub async fn metric(&self, name: &str, key: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("key", key)];
        labels.extend_from_slice(extra);
        self.envoy
            .metric_value(&self.shell.metric_name(name), &labels)
            .await
    }

    /// `/stats/prometheus`, parsed, with this shell's metrics under their SPEC names (a dynamic
    /// module's lose Envoy's prefix) and nothing else.
    pub async fn samples(&self) -> Vec<crate::prom::Sample> {
        let mut out = self.envoy.samples().await;
        out.retain_mut(|x| match self.shell.spec_name(&x.name) {
            Some(n) => {
                x.name = n.to_string();
                true
            }
            None => false,
        });
        out
    }
}

/// Whether a response is the breaker's local rejection (as opposed to an upstream answer).
pub fn is_rejection(r: &HttpResponse) -> bool {
    r.header("x-meshbreaker") == Some("open")
}

/// Asserts the SPEC rejection shape; returns `retry_after_s`.
pub fn assert_spec_rejection(r: &HttpResponse, key: &str, reason: &str) -> u64 {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert_eq!(r.header("x-meshbreaker"), Some("open"), "{r:?}");
    assert_eq!(r.header("x-meshbreaker-reason"), Some(reason), "{r:?}");
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("retry-after missing or not integer seconds: {r:?}"));
    let body = r.json();
    assert_eq!(body["error"], "circuit_open", "{body}");
    assert_eq!(body["key"], key, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(
        body["retry_after_s"].as_u64(),
        Some(retry_after),
        "retry_after_s must equal the retry-after header: {body}"
    );
    retry_after
}

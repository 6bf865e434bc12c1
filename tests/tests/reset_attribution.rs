//! Kernel reset attribution behind a cluster of many endpoints, against the real Envoy
//! (`--concurrency 2`) and the real filter, with a fake sidecar whose counters the test controls.
//!
//! Why: a key used to remember 16 upstream hosts in a FIFO and learn at most 4 per flush, so behind
//! round-robin over 40 endpoints the resetting one kept falling out of the list and being learned
//! again at the current total: most of its events were never attributed, and a `kernel_resets`
//! trip could never fire. Here one endpoint of 40 "resets" at a known rate, and the filter's
//! `meshbreaker_kernel_resets_total` must match what the sidecar reported within 10%.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A sidecar answering `GET /v1/resets` with every peer at 0 but `hot`, whose `resets` is
/// whatever the test set.
struct FakeSidecar {
    addr: SocketAddr,
    resets: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSidecar {
    async fn start(peers: Vec<SocketAddr>, hot: SocketAddr) -> FakeSidecar {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resets = Arc::new(AtomicU64::new(0));
        let polls = Arc::new(AtomicU64::new(0));
        let (r, p) = (resets.clone(), polls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let (r, p, peers) = (r.clone(), p.clone(), peers.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        got.drain(..end);
                        let n = r.load(Ordering::SeqCst);
                        let list: Vec<Value> = peers
                            .iter()
                            .map(|a| {
                                json!({"addr": a.ip().to_string(), "port": a.port(),
                                    "peer": a.to_string(),
                                    "resets": if *a == hot { n } else { 0 },
                                    "refused": 0, "timeouts": 0, "last_ms": 1})
                            })
                            .collect();
                        let body =
                            json!({"started_at_ms": 1, "now_ms": 2, "peers": list}).to_string();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if conn.write_all(head.as_bytes()).await.is_err()
                            || conn.write_all(body.as_bytes()).await.is_err()
                        {
                            return;
                        }
                        p.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        FakeSidecar {
            addr,
            resets,
            polls,
            task,
        }
    }

    async fn wait_polls(&self, n: u64) {
        let from = self.polls.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(15), "sidecar polls", || async {
            self.polls.load(Ordering::SeqCst) >= from + n
        })
        .await;
    }
}

#[test]
fn resets_towards_one_of_40_endpoints_are_attributed_within_10_percent() {
    run(async {
        let mut ups = Vec::new();
        for _ in 0..40 {
            ups.push(HttpUpstream::start().await);
        }
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let hot = addrs[27];
        let sidecar = FakeSidecar::start(addrs.clone(), hot).await;
        let plugin = json!({
            "key_by": "cluster",
            "breaker": {"window": "10s", "buckets": 10, "latency_p95_threshold": null},
            "reset_signals": {"poll_interval": "500ms", "max_resets_per_second": 100000}
        });
        let mut b = Bootstrap::new().with_filter(plugin.to_string()).cluster(
            "wide",
            RouteKind::Http,
            addrs[0],
        );
        b.sidecar = sidecar.addr;
        let mut v = b.to_value();
        let endpoints: Vec<Value> = addrs
            .iter()
            .map(|a| {
                json!({"endpoint": {"address": {"socket_address": {
                    "address": a.ip().to_string(), "port_value": a.port()}}}})
            })
            .collect();
        let clusters = v["static_resources"]["clusters"].as_array_mut().unwrap();
        let wide = clusters.iter_mut().find(|c| c["name"] == "wide").unwrap();
        wide["load_assignment"]["endpoints"][0]["lb_endpoints"] = Value::Array(endpoints);
        let envoy = Envoy::start(serde_json::to_string_pretty(&v).unwrap()).await;
        // Round-robin traffic over the 40 endpoints from both workers, all along.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic: Vec<_> = (0..8)
            .map(|_| {
                let (c, stop) = (envoy.http1(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let r = c.get("/", &[("x-route", "wide")]).await;
                        assert_eq!(r.status, 200, "{r:?}");
                    }
                })
            })
            .collect();
        // Every endpoint served (so both workers have seen them all), and the sidecar's first
        // answer taken as the baseline.
        wait_until(Duration::from_secs(15), "every endpoint served", || async {
            ups.iter().all(|u| u.count() >= 10)
        })
        .await;
        sidecar.wait_polls(3).await;
        // The hot endpoint resets 30 times per poll for 12 polls, then stops.
        let mut reported = 0;
        for _ in 0..12 {
            reported += 30;
            sidecar.resets.store(reported, Ordering::SeqCst);
            sidecar.wait_polls(1).await;
        }
        sidecar.wait_polls(3).await;
        let attributed = eventually(Duration::from_secs(10), "attribution settles", || async {
            let a = envoy
                .metric_value("meshbreaker_kernel_resets_total", &[("key", "wide")])
                .await;
            (a as u64 * 10 >= reported * 9).then_some(a as u64)
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        for t in traffic {
            t.await.unwrap();
        }
        eprintln!("attributed {attributed} of the sidecar's {reported} resets");
        assert!(
            attributed <= reported,
            "{attributed} attributed, more than the sidecar's {reported}"
        );
    })
}

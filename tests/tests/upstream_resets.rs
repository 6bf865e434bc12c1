//! SPEC "Failure" with `upstream_resets`, in the real Envoy: an upstream that resets the
//! connection in the middle of its response is an upstream failure, without the eBPF sidecar.
//!
//! Why this test exists: `cargo xtask bench --protection` found that meshbreaker never tripped in
//! its connection-reset storm unless the sidecar was on. The upstream there sends `200`, its
//! headers and part of a `content-length` body, then an RST (SO_LINGER 0). The 200 has already
//! gone downstream, and Envoy 1.40 flags the request `UPE` (upstream protocol error: the body
//! ended early), not `UR`/`UC`; the filter counted only those, so every such request looked
//! like a success. The client meanwhile waits out Envoy's delayed close (1 s) before it sees the
//! connection end, so these requests are sent concurrently.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream that answers every request with `200`, `content-length: 4096` and 512
/// body bytes, then resets the connection (SO_LINGER 0): the reset fault of the protection
/// benchmark. Returns its address and the count of requests it answered so.
async fn rst_mid_response_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\n".to_vec();
                answer.resize(answer.len() + 512, b'x');
                if conn.write_all(&answer).await.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                // Let the proxy read the head first, so that the RST lands mid-response.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = conn.set_zero_linger();
                drop(conn);
            });
        }
    });
    (addr, answered)
}

per_shell! {
fn a_reset_in_the_middle_of_a_response_is_an_upstream_failure(shell) {
    require_wasm();
    run(async {
        let (addr, answered) = rst_mid_response_upstream().await;
        let backend = HttpUpstream::start().await;
        // Latency is off, so that only the failure rule can trip (the client's view of these
        // requests includes Envoy's 1 s delayed close); `rst_ignored` counts no upstream reset.
        let cfg = json!({
            "key_by": "cluster",
            "breaker": {
                "window": "10s", "buckets": 10, "min_requests": 5,
                "error_rate_threshold": 0.5, "latency_p95_threshold": null,
                "sleep_window": "30s", "max_sleep_window": "60s"
            },
            "overrides": [{
                "match": { "cluster": "rst_ignored" },
                "breaker": { "failure": { "upstream_resets": false } }
            }]
        });
        let boot = Bootstrap::new()
            .with_shell(shell, cfg.to_string())
            .backend(backend.addr)
            .cluster("rst_counted", RouteKind::Http, addr)
            .cluster("rst_ignored", RouteKind::Http, addr)
            .to_value();
        let envoy = Envoy::start(boot.to_string()).await;
        // Ten requests per route at once (POSTs: not retried), each on its own connection.
        let mut sent = Vec::new();
        for route in ["rst_counted", "rst_ignored"] {
            for _ in 0..10 {
                let c = envoy.http1();
                sent.push(tokio::spawn(async move {
                    let path = format!("/{route}");
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        c.try_request("POST", &path, &[("x-route", route)], ""),
                    )
                    .await;
                    // The 200 head arrives, then the connection ends early: a truncated body.
                    !matches!(r, Ok(Ok(ref resp)) if resp.status == 200 && resp.body.len() == 4096)
                }));
            }
        }
        for s in sent {
            assert!(
                s.await.unwrap_or(false),
                "a client got the whole 4096-byte body: the upstream did not reset mid-response"
            );
        }
        assert_eq!(
            answered.load(Ordering::SeqCst),
            20,
            "every request reached the upstream"
        );
        eventually(Duration::from_secs(10), "rst_counted opens", || async {
            (envoy
                .metric_value(&shell.metric_name("meshbreaker_state"), &[("key", "rst_counted")])
                .await
                == 1.0)
                .then_some(())
        })
        .await;
        let trip = envoy.log_lines_with(&["transition", "key=rst_counted", "to=open"]);
        assert!(
            trip.iter().any(|l| l.contains("reason=error_rate")),
            "{trip:?}"
        );
        let r = envoy
            .http1()
            .request("POST", "/rst_counted", &[("x-route", "rst_counted")], "")
            .await;
        assert_spec_rejection(&r, "rst_counted", "error_rate");
        // The same ten resets, not counted: ten successes, CLOSED (its gauge exists: the key
        // was seen).
        assert_eq!(
            envoy
                .metric_opt(&shell.metric_name("meshbreaker_state"), &[("key", "rst_ignored")])
                .await,
            Some(0.0)
        );
        eventually(
            Duration::from_secs(10),
            "rst_ignored: 10 allowed",
            || async {
                (envoy
                    .metric_value(
                        &shell.metric_name("meshbreaker_requests_total"),
                        &[("key", "rst_ignored"), ("decision", "allowed")],
                    )
                    .await
                    == 10.0)
                    .then_some(())
            },
        )
        .await;
    });
}
}

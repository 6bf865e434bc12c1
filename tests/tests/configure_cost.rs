//! What a configuration costs to apply at the largest table (`max_keys` 100,000) with an override
//! of another window (two window geometries), in the real Envoy (`--concurrency 2`: the main
//! thread's configuration canary and two workers each configure the plugin), at startup and on an
//! LDS reload.
//!
//! Why: every VM used to look up (and create, when absent) every slot's state and every window of
//! every geometry at configure time, about 300,000 shared-data calls per VM and per reload (1.5 to
//! 2 s per reload here). Only the first VM of a process (per table size and geometry) has to
//! create them; the others check one marker.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn config(max_keys: u32, threshold: f64) -> Value {
    json!({
        "key_by": "authority",
        "max_keys": max_keys,
        "breaker": {"window": "10s", "buckets": 10, "error_rate_threshold": threshold},
        "overrides": [{"match": {"authority": "slow.example"}, "breaker": {"window": "30s", "buckets": 10}}]
    })
}

/// Envoy's time to ready at startup, and from an LDS write to a new connection answered by the
/// new filter chain, for `max_keys`.
async fn measure(max_keys: u32) -> (Duration, Duration) {
    let backend = HttpUpstream::start().await;
    let dir = std::env::temp_dir().join(format!(
        "meshbreaker-configure-{}-{max_keys}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let base = Bootstrap::new()
        .backend(backend.addr)
        .lds_from(dir.join("lds.json"));
    let mut b = base.clone().with_filter(config(max_keys, 0.3).to_string());
    b.listener_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    b.write_lds();
    let started = Instant::now();
    let envoy = Envoy::start(b.to_yaml()).await;
    let port = envoy.port;
    wait_until(Duration::from_secs(30), "first answer", || async {
        HttpClient::http1(port)
            .try_request("GET", "/", &[("host", "a.example")], "")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let startup = started.elapsed();
    let updates = || async {
        envoy
            .stat("listener_manager.lds.update_success")
            .await
            .unwrap_or(0)
    };
    let before = updates().await;
    let mut next = base.with_filter(config(max_keys, 0.4).to_string());
    next.listener_port = port;
    let started = Instant::now();
    next.write_lds();
    wait_until(Duration::from_secs(30), "LDS applied", || async {
        updates().await > before
    })
    .await;
    wait_until(Duration::from_secs(30), "the new chain answers", || async {
        HttpClient::http1(port)
            .try_request("GET", "/", &[("host", "b.example")], "")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let reload = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    (startup, reload)
}

#[test]
fn a_100k_key_table_is_configured_once_per_process_not_per_vm() {
    run(async {
        let (small_start, small_reload) = measure(100).await;
        let (big_start, big_reload) = measure(100_000).await;
        eprintln!(
            "max_keys 100: ready {small_start:?}, reload {small_reload:?}; \
             max_keys 100000 (2 geometries): ready {big_start:?}, reload {big_reload:?}"
        );
        // The first VM still creates the table at startup; a reload (same size and geometries)
        // walks none of it.
        assert!(
            big_reload < small_reload + Duration::from_millis(500),
            "a reload at 100,000 keys took {big_reload:?} (at 100 keys: {small_reload:?})"
        );
        assert!(
            big_start < small_start + Duration::from_secs(3),
            "startup at 100,000 keys took {big_start:?} (at 100 keys: {small_start:?})"
        );
    })
}

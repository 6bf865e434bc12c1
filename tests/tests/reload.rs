//! A plugin configuration reload the way Istio does it: the listener comes from LDS (here a file,
//! `path_config_source`, replaced by an atomic rename as a ConfigMap update does), and the new
//! listener carries a new `configuration`. SPEC "Reload": the state of keys that remain is kept
//! (an open circuit stays open), and a window whose geometry changed starts afresh instead of
//! blinding the key (once, after `window` 10s → 20s, a busy key never tripped again; here 2s → 4s).
//! Across a `max_keys` shrink, open keys stay open, recover in the new table, and a later reload
//! does not bring their old OPEN state back.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::Duration;

fn config(window: &str) -> Value {
    json!({
        "key_by": "cluster",
        "breaker": {
            "window": window,
            "buckets": 2,
            "min_requests": 5,
            "error_rate_threshold": 0.5,
            "latency_p95_threshold": null,
            "sleep_window": "30s",
            "max_sleep_window": "60s"
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

async fn send(port: u16, route: &str, method: &str) -> HttpResponse {
    // A new connection each time: after a reload, only new connections use the new filter chain.
    HttpClient::http1(port)
        .request(method, &format!("/{route}"), &[("x-route", route)], "")
        .await
}

async fn lds_updates(envoy: &Envoy) -> u64 {
    envoy
        .stat("listener_manager.lds.update_success")
        .await
        .unwrap_or(0)
}

per_shell! {
fn lds_reload_keeps_an_open_key_open_and_a_window_change_still_trips_a_busy_key(shell) {
    run(async {
        let open_up = HttpUpstream::start().await;
        let busy_up = HttpUpstream::start().await;
        let backend = HttpUpstream::start().await;
        let dir = std::env::temp_dir().join(format!("meshbreaker-lds-{}-{}", std::process::id(), shell.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let lds = dir.join("lds.json");
        let base = Bootstrap::new()
            .backend(backend.addr)
            .cluster("lds_open", RouteKind::Http, open_up.addr)
            .cluster("lds_busy", RouteKind::Http, busy_up.addr)
            .lds_from(lds.clone());
        let mut b = base.clone().with_shell(shell, config("2s").to_string());
        b.listener_port = free_port();
        b.write_lds();
        let envoy = Envoy::start(b.to_yaml()).await;
        let port = envoy.port;
        assert_eq!(port, b.listener_port);

        // An open key, and a busy closed one.
        open_up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        for _ in 0..5 {
            assert_eq!(send(port, "lds_open", "POST").await.status, 500);
        }
        wait_until(Duration::from_secs(10), "lds_open trips", || async {
            is_rejection(&send(port, "lds_open", "POST").await)
        })
        .await;
        // Busy in every bucket of the old window (2 × 1 s), as a key with steady traffic is.
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..50 {
            pace.tick().await;
            assert_eq!(send(port, "lds_busy", "POST").await.status, 200);
        }
        wait_until(Duration::from_secs(10), "busy window merged", || async {
            envoy
                .metric_opt(&shell.metric_name("meshbreaker_error_rate_ppm"), &[("key", "lds_busy")])
                .await
                .is_some()
        })
        .await;

        // The reload: window 2s → 4s (same buckets: every old epoch now looks twice as new as the
        // new ones), by an atomic rename of the LDS file.
        let before = lds_updates(&envoy).await;
        let mut b2 = base.with_shell(shell, config("4s").to_string());
        b2.listener_port = port;
        b2.write_lds();
        wait_until(
            Duration::from_secs(10),
            "LDS applied the new listener",
            || async { lds_updates(&envoy).await > before },
        )
        .await;
        // The new filter chain answers new connections; its VMs read the shared state.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = send(port, "lds_open", "GET").await;
        assert_spec_rejection(&r, "lds_open", "error_rate");

        // Under the new geometry the busy key's window starts afresh and still trips.
        busy_up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        wait_until(
            Duration::from_secs(10),
            "lds_busy trips after the reload",
            || async { is_rejection(&send(port, "lds_busy", "POST").await) },
        )
        .await;
        envoy
            .wait_for_log(
                "transition key=lds_busy from=closed to=open",
                Duration::from_secs(10),
            )
            .await;
        let _ = std::fs::remove_dir_all(&dir);
    })
}
}

fn authority_config(max_keys: u32, error_rate_threshold: f64) -> Value {
    json!({
        "key_by": "authority",
        "max_keys": max_keys,
        "breaker": {
            "window": "2s",
            "buckets": 2,
            "min_requests": 5,
            "error_rate_threshold": error_rate_threshold,
            "latency_p95_threshold": null,
            "sleep_window": "1s",
            "max_sleep_window": "2s",
            "half_open_max_probes": 2,
            "half_open_successes_to_close": 2
        }
    })
}

async fn to_host(port: u16, host: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut h = vec![("host", host)];
    h.extend_from_slice(extra);
    HttpClient::http1(port).request("GET", "/", &h, "").await
}

/// SPEC "Reload" across a `max_keys` shrink: the open keys stay open, recover in the new table,
/// and a later reload does not bring their old state back. The OPEN copy left in the old, larger
/// table used to win over the live slot: every later reload put the key back into HALF_OPEN and
/// rejected all but `half_open_max_probes` of its requests.
#[test]
fn after_max_keys_shrinks_and_keys_recover_a_second_reload_reopens_nothing() {
    run(async {
        let backend = HttpUpstream::start().await;
        let dir = std::env::temp_dir().join(format!("meshbreaker-shrink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lds = dir.join("lds.json");
        let base = Bootstrap::new().backend(backend.addr).lds_from(lds.clone());
        let mut b = base
            .clone()
            .with_filter(authority_config(1024, 0.5).to_string());
        b.listener_port = free_port();
        b.write_lds();
        let envoy = Envoy::start(b.to_yaml()).await;
        let port = envoy.port;
        let keys: Vec<String> = (0..4).map(|i| format!("shrink{i}.example")).collect();
        for k in &keys {
            wait_until(Duration::from_secs(10), &format!("{k} trips"), || async {
                is_rejection(&to_host(port, k, &[("x-test-status", "503")]).await)
            })
            .await;
        }
        let reload = |cfg: Value| {
            let envoy = &envoy;
            let base = base.clone();
            async move {
                let before = lds_updates(envoy).await;
                let mut next = base.with_filter(cfg.to_string());
                next.listener_port = port;
                next.write_lds();
                wait_until(Duration::from_secs(10), "LDS applied", || async {
                    lds_updates(envoy).await > before
                })
                .await;
            }
        };
        // Shrink: still open on the new table.
        reload(authority_config(8, 0.5)).await;
        for k in &keys {
            wait_until(
                Duration::from_secs(5),
                &format!("{k} rejected after the shrink"),
                || async { is_rejection(&to_host(port, k, &[]).await) },
            )
            .await;
        }
        // The upstream recovers: each key probes and closes.
        for k in &keys {
            wait_until(Duration::from_secs(10), &format!("{k} closes"), || async {
                let mut ok = 0;
                for _ in 0..3 {
                    ok += usize::from(to_host(port, k, &[]).await.status == 200);
                }
                ok == 3
            })
            .await;
        }
        // Another reload (a threshold tweak): concurrent requests of every key all pass.
        reload(authority_config(8, 0.6)).await;
        for k in &keys {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let k = k.clone();
                    tokio::spawn(
                        async move { to_host(port, &k, &[("x-test-delay-ms", "300")]).await },
                    )
                })
                .collect();
            for t in tasks {
                let r = t.await.unwrap();
                assert_eq!(
                    r.status, 200,
                    "{k} after the second reload (its old OPEN state came back?): {r:?}"
                );
            }
        }
        let half_open = envoy.log_lines_with(&["to=half_open"]);
        assert!(
            half_open.len() <= keys.len(),
            "spurious HALF_OPEN transitions (one per key is the recovery): {half_open:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
}

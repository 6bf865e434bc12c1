//! What a hostile client, a hostile upstream and Istio's generated configuration do to the filter
//! in the real Envoy: obs-text header values, key churn around an open key, retried
//! attempts without `x-envoy-attempt-count` in the response, a forged attempt count, and a gRPC
//! status that arrives in the trailers after a body.
//!
//! One Envoy (two workers) with Istio's virtual-host shape (`include_request_attempt_count` but
//! not `include_attempt_count_in_response`) serves every test but the churn one, each test on its
//! own cluster (its own key).
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::json;
use std::time::Duration;
use tokio::sync::OnceCell;

static STACK: OnceCell<Stack> = OnceCell::const_new();

fn config() -> serde_json::Value {
    let mut cfg = fast_config();
    cfg["breaker"]["sleep_window"] = "30s".into();
    cfg["breaker"]["max_sleep_window"] = "60s".into();
    cfg["breaker"]["error_rate_threshold"] = 0.4.into();
    cfg["breaker"]["latency_p95_threshold"] = serde_json::Value::Null;
    cfg["overrides"] = json!([
        // Retries are counted but never trip this key, so only the budget acts on it.
        {"match": {"cluster": "istio_budget"},
         "breaker": {"error_rate_threshold": 1.0, "min_requests": 1000},
         "retry": {"budget": {"ratio": 0.0, "min_retries_per_second": 1}}},
        {"match": {"cluster": "forged"}, "breaker": {"min_requests": 5}}
    ]);
    cfg
}

async fn stack() -> &'static Stack {
    STACK
        .get_or_init(|| async {
            Stack::start_with(
                &config(),
                &["obs_text", "istio_retry", "istio_budget", "forged"],
                &[],
                &["grpc_trailers"],
                |b| b.istio_virtual_host(),
            )
            .await
        })
        .await
}

/// Sends from fresh connections, alternating HTTP/1.1 and h2c, so both workers see requests.
fn clients(s: &Stack, n: usize) -> Vec<HttpClient> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                HttpClient::http1(s.envoy.port)
            } else {
                HttpClient::h2c(s.envoy.port)
            }
        })
        .collect()
}

#[test]
fn obs_text_in_request_and_response_headers_never_disables_the_breaker() {
    run(async {
        let s = stack().await;
        let up = s.up("obs_text");
        up.set(Behavior {
            status: Some(500),
            headers: vec![
                ("grpc-status".into(), b"\xff\xfe".to_vec()),
                ("x-envoy-attempt-count".into(), b"9\xff".to_vec()),
                ("x-obs".into(), (0x80..=0xffu8).collect()),
            ],
            ..Default::default()
        });
        let obs: Vec<u8> = (0x80..=0xffu8).collect();
        let headers: Vec<(&str, &[u8])> = vec![
            ("x-route", b"obs_text"),
            ("content-type", b"application/json\xff"),
            ("x-tenant", &obs),
        ];
        // Both workers get the hostile bytes; a panic would kill a worker's VM (Envoy then
        // answers 503 without our headers, or with fail-open passes everything).
        for c in clients(s, 8) {
            let r = c.request_bytes("POST", "/obs", &headers).await;
            if is_rejection(&r) {
                break;
            }
            assert_eq!(r.status, 500, "{r:?}");
        }
        wait_until(Duration::from_secs(10), "the key trips", || async {
            s.metric("meshbreaker_state", "obs_text", &[]).await == 1.0
        })
        .await;
        for c in clients(s, 8) {
            let r = c.request_bytes("POST", "/obs", &headers).await;
            assert_spec_rejection(&r, "obs_text", "error_rate");
        }
    })
}

#[test]
fn istio_virtual_host_shape_counts_retried_attempts() {
    run(async {
        let s = stack().await;
        let up = s.up("istio_retry");
        up.set(Behavior {
            fail_first_attempt: Some(503),
            ..Default::default()
        });
        // Every GET fails its first attempt and succeeds on the retry: half the attempts fail
        // (threshold 0.4), yet the client only ever sees 200 without an attempt count.
        let mut ok = 0;
        for _ in 0..20 {
            let r = s.send("istio_retry", "GET", &[]).await;
            if is_rejection(&r) {
                break;
            }
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(
                r.header("x-envoy-attempt-count"),
                None,
                "Istio's shape: {r:?}"
            );
            ok += 1;
        }
        assert!(ok >= 3, "{ok} requests before the trip");
        wait_until(
            Duration::from_secs(10),
            "retried attempts trip the key",
            || async { s.metric("meshbreaker_state", "istio_retry", &[]).await == 1.0 },
        )
        .await;
        assert_spec_rejection(
            &s.send("istio_retry", "GET", &[]).await,
            "istio_retry",
            "error_rate",
        );
    })
}

#[test]
fn istio_virtual_host_shape_honours_the_retry_budget() {
    run(async {
        let s = stack().await;
        let up = s.up("istio_budget");
        up.set(Behavior {
            fail_first_attempt: Some(503),
            ..Default::default()
        });
        // Budget: ratio 0 and 1 retry/s over the 2 s window. Paced so flushes (100 ms) see them.
        let mut pace = tokio::time::interval(Duration::from_millis(120));
        let mut not_retried = 0;
        for _ in 0..20 {
            pace.tick().await;
            let r = s.send("istio_budget", "GET", &[]).await;
            assert!(!is_rejection(&r), "{r:?}");
            if r.status == 503 {
                not_retried += 1;
            }
        }
        assert!(
            not_retried >= 5,
            "the budget switched retries off for only {not_retried} of 20 requests"
        );
        // Each request the budget denied made exactly one attempt.
        let first_attempts = up
            .requests()
            .iter()
            .filter(|r| r.attempt() == Some(1))
            .count();
        let retries = up
            .requests()
            .iter()
            .filter(|r| r.attempt() == Some(2))
            .count();
        assert_eq!((first_attempts, retries), (20, 20 - not_retried));
        wait_until(Duration::from_secs(10), "budget_denied counted", || async {
            s.metric_present("meshbreaker_retry_budget_denied_total", "istio_budget", &[])
                .await
                == not_retried as f64
        })
        .await;
    })
}

#[test]
fn a_forged_attempt_count_from_the_upstream_neither_trips_nor_spends_the_budget() {
    run(async {
        let s = stack().await;
        s.up("forged").set(Behavior {
            headers: vec![("x-envoy-attempt-count".into(), b"4294967295".to_vec())],
            ..Default::default()
        });
        for _ in 0..30 {
            let r = s.send("forged", "GET", &[]).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.header("x-envoy-attempt-count"), Some("4294967295"));
        }
        // The window shows no failure and the next request still gets its retries.
        wait_until(Duration::from_secs(10), "gauges published", || async {
            s.envoy
                .metric_opt("meshbreaker_error_rate_ppm", &[("key", "forged")])
                .await
                .is_some()
        })
        .await;
        // One more flush after the last sample, then nothing may have tripped.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            s.metric_present("meshbreaker_error_rate_ppm", "forged", &[])
                .await,
            0.0
        );
        assert_eq!(
            s.metric_present("meshbreaker_state", "forged", &[]).await,
            0.0
        );
        assert_eq!(
            s.metric_present("meshbreaker_retry_budget_denied_total", "forged", &[])
                .await,
            0.0
        );
        // The budget is untouched: a failing first attempt is still retried.
        let r = s
            .send("forged", "GET", &[("x-test-fail-first", "503")])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    })
}

#[test]
fn grpc_status_in_trailers_after_a_body_trips_the_key() {
    run(async {
        let s = stack().await;
        s.up("grpc_trailers").set(Behavior {
            grpc_trailer_status: Some(14),
            ..Default::default()
        });
        let c = HttpClient::h2c(s.envoy.port);
        let headers = [
            ("x-route", "grpc_trailers"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let mut last = None;
        for _ in 0..20 {
            let r = c
                .request(
                    "POST",
                    "/grpc.health.v1.Health/Check",
                    &headers,
                    "\0\0\0\0\0",
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            if is_rejection(&r) {
                last = Some(r);
                break;
            }
            // A real message came first: this is not a trailers-only response.
            assert!(!r.body.is_empty(), "{r:?}");
            assert_eq!(
                r.header("grpc-status"),
                None,
                "status only in the trailers: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let r = match last {
            Some(r) => r,
            None => {
                wait_until(Duration::from_secs(10), "the key trips", || async {
                    s.metric("meshbreaker_state", "grpc_trailers", &[]).await == 1.0
                })
                .await;
                c.request(
                    "POST",
                    "/grpc.health.v1.Health/Check",
                    &headers,
                    "\0\0\0\0\0",
                )
                .await
            }
        };
        assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
        assert_eq!(r.header("x-meshbreaker"), Some("open"), "{r:?}");
        assert_eq!(
            r.header("x-meshbreaker-reason"),
            Some("error_rate"),
            "{r:?}"
        );
    })
}

#[test]
fn an_open_key_survives_key_churn_on_two_workers() {
    run(async {
        let mut cfg = fast_config();
        cfg["key_by"] = "authority".into();
        cfg["max_keys"] = 8.into();
        cfg["breaker"]["window"] = "1s".into();
        cfg["breaker"]["buckets"] = 2.into();
        cfg["breaker"]["sleep_window"] = "30s".into();
        cfg["breaker"]["max_sleep_window"] = "60s".into();
        let s = Stack::start(&cfg, &[], &[], false).await;
        let up = s.up("backend");
        let victim = [("host", "victim.example"), ("x-test-status", "500")];
        for _ in 0..5 {
            let r = s.envoy.http1().request("POST", "/", &victim, "").await;
            assert_eq!(r.status, 500, "{r:?}");
        }
        wait_until(Duration::from_secs(10), "victim open", || async {
            s.metric("meshbreaker_state", "victim.example", &[]).await == 1.0
        })
        .await;
        // 8 s of churn (longer than any idle bound) over 8 slots, so every key probes all of
        // them, from both workers: 400 other authorities, and slots of closed keys are taken
        // over again and again (round 1 took the open key's slot within seconds).
        let start = std::time::Instant::now();
        // HTTP/1.1 only: over h2c the client's Host header is not the :authority. Eight
        // connections, which Envoy spreads over its two workers.
        let cs: Vec<HttpClient> = (0..8).map(|_| HttpClient::http1(s.envoy.port)).collect();
        let mut i = 0usize;
        while start.elapsed() < Duration::from_secs(8) {
            let mut tasks = Vec::new();
            for c in &cs {
                let c = c.clone();
                let host = format!("churn{}.example", i % 400);
                i += 1;
                tasks.push(tokio::spawn(
                    async move { c.get("/", &[("host", &host)]).await },
                ));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().status, 200);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(i >= 400, "only {i} churn requests");
        let reached = up.count();
        for _ in 0..8 {
            let r = HttpClient::http1(s.envoy.port)
                .get("/", &[("host", "victim.example")])
                .await;
            assert_spec_rejection(&r, "victim.example", "error_rate");
        }
        assert_eq!(
            up.count(),
            reached,
            "the open key's upstream is never contacted"
        );
    })
}

//! Long exchanges on a healthy upstream are not a slow upstream: a websocket held open and a
//! request body uploaded slowly each last seconds, but the upstream answered at once. The breaker
//! measures the upstream's latency (request complete to response headers, none for an upgrade),
//! so a key whose completions are half such exchanges stays CLOSED at a 1 s P95 threshold.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::json;
use std::time::Duration;

/// How long each long exchange lasts: five times the latency threshold.
const HOLD: Duration = Duration::from_secs(5);

per_shell! {
fn websockets_and_slow_uploads_do_not_trip_the_latency_rule(shell) {
    run(async {
        let cfg = json!({
            "key_by": "cluster",
            "mode": "enforce",
            "breaker": {
                // Long enough to hold every sample of the test.
                "window": "60s",
                "buckets": 12,
                "min_requests": 4,
                "error_rate_threshold": 0.5,
                "latency_p95_threshold": "1s",
                "sleep_window": "500ms",
                "max_sleep_window": "4s"
            }
        });
        let s = Stack::start_with_shell(shell, &cfg, &["streams"], &[], &[], |b| b.websocket(true)).await;
        let key = "streams";
        let port = s.envoy.port;
        let route = [("x-route", key)];

        // Three websockets and three slow uploads (20 chunks, one every 250 ms), all at once.
        let mut long = Vec::new();
        for _ in 0..3 {
            long.push(tokio::spawn(async move {
                websocket_hold(port, "/ws", &[("x-route", "streams")], HOLD).await
            }));
            long.push(tokio::spawn(async move {
                slow_upload(port, "/upload", &[("x-route", "streams")], 20, HOLD / 20).await
            }));
        }
        // Four quick requests while they run: enough completions (min_requests) for the rule to
        // be evaluated once the long exchanges end.
        for _ in 0..4 {
            let r = s.envoy.http1().get("/quick", &route).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        let mut websockets = 0;
        for t in long {
            let held = t
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("long exchange: {e}"));
            assert!(
                held.took >= HOLD,
                "a long exchange ended after {:?}: {held:?}",
                held.took
            );
            match held.status {
                101 => websockets += 1,
                200 => {}
                _ => panic!("long exchange answered {held:?}"),
            }
        }
        assert_eq!(websockets, 3, "all three upgrades were accepted");
        wait_until(
            Duration::from_secs(10),
            "the upstream's tunnels closed",
            || async { s.up(key).upgraded_open() == 0 },
        )
        .await;

        // A marker whose merge proves every earlier completion was merged: one failure (a POST is
        // not retried on a 500) among 3 + 3 + 4 + 1 completions is an error rate of exactly 1/11,
        // and any completion not yet merged would show a larger one.
        let marker = s.send(key, "POST", &[("x-test-status", "500")]).await;
        assert!(
            !is_rejection(&marker),
            "the key tripped on long exchanges: {marker:?}\ntransitions: {:?}",
            s.envoy.transitions(key)
        );
        assert_eq!(marker.status, 500, "{marker:?}");
        let expected_ppm = (1e6_f64 / 11.0).round();
        wait_until(
            Duration::from_secs(10),
            "all 11 completions merged (error rate 1/11)",
            || async {
                s.metric_opt("meshbreaker_error_rate_ppm", key, &[]).await == Some(expected_ppm)
            },
        )
        .await;

        // The long exchanges are 6 of the 11 completions, and no slow sample came of them.
        assert_eq!(
            s.metric_present("meshbreaker_state", key, &[]).await,
            0.0,
            "the key must stay CLOSED; transitions: {:?}",
            s.envoy.transitions(key)
        );
        assert_eq!(s.envoy.transitions(key), vec![], "no transition at all");
        let p95 = s
            .metric_present("meshbreaker_latency_p95_ms", key, &[])
            .await;
        assert!(p95 < 1000.0, "P95 {p95} ms: a long exchange was measured");
        let after = s.send(key, "GET", &[]).await;
        assert_eq!(after.status, 200, "{after:?}");
    })
}
}

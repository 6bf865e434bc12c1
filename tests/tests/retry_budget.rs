//! Behaviour 7: under sustained partial failure the retry budget switches retries off
//! (`x-envoy-max-retries: 0`) and `meshbreaker_retry_budget_denied_total` counts it.
//!
//! Budget here: ratio 0.25 and no per-second reserve over a 10 s window, so the allowance is a
//! quarter of the requests, whatever the run's duration (the bound does not depend on how fast the
//! machine is). Every request's first attempt fails with 503 and a retry succeeds, so without a
//! budget all 20 would be retried. The breaker never trips (threshold 1.0 and a high
//! min_requests) so only the budget acts.
//!
//! The load is paced (one request per 120 ms, "sustained"): the workers merge their samples at
//! least every 100 ms, and the budget can only act on retries it has merged; a burst faster than
//! that would test the merge period, not the budget.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::time::Duration;

per_shell! {
fn budget_denies_retries_under_sustained_partial_failure(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["breaker"]["min_requests"] = 1000.into();
        cfg["breaker"]["error_rate_threshold"] = 1.0.into();
        cfg["breaker"]["window"] = "10s".into();
        cfg["retry"] = serde_json::json!({
            "budget": {"ratio": 0.25, "min_retries_per_second": 0}
        });
        let s = Stack::start_shell(shell, &cfg, &["budget"], &[], false).await;
        let up = s.up("budget");
        up.set(Behavior {
            fail_first_attempt: Some(503),
            ..Default::default()
        });
        let mut retried = 0;
        let mut not_retried = 0;
        let start = std::time::Instant::now();
        let mut pace = tokio::time::interval(Duration::from_millis(120));
        for _ in 0..20 {
            pace.tick().await;
            let r = s.send("budget", "GET", &[]).await;
            match r.status {
                200 => {
                    assert_eq!(r.header("x-envoy-attempt-count"), Some("2"));
                    retried += 1;
                }
                503 => {
                    assert!(!is_rejection(&r), "breaker must not trip here: {r:?}");
                    assert_eq!(r.header("x-envoy-attempt-count"), Some("1"));
                    not_retried += 1;
                }
                s => panic!("unexpected status {s}"),
            }
        }
        // Retries < 0.25 x requests: the first request is retried (nothing merged yet), then one
        // more each time the merged requests reach 4 x the retries: requests 1, 6, 10, 14, 18.
        // One either way for a merge that lands a tick late.
        assert!(
            (4..=6).contains(&retried),
            "{retried} of 20 requests retried in {:?}; the budget allows about 5",
            start.elapsed()
        );
        assert_eq!(retried + not_retried, 20);
        let retry_attempts = up
            .requests()
            .iter()
            .filter(|r| r.attempt() == Some(2))
            .count();
        assert_eq!(retry_attempts, retried);
        eventually(
            Duration::from_secs(10),
            "retry_budget_denied_total = requests sent without retries",
            || async {
                let v = s
                    .metric("meshbreaker_retry_budget_denied_total", "budget", &[])
                    .await;
                (v == not_retried as f64).then_some(())
            },
        )
        .await;
    })
}
}

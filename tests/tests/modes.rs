//! Behaviour 9: modes `dry_run`, `forced_open`, `disabled`, and per-cluster overrides.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::json;
use std::time::Duration;

fn failing() -> Behavior {
    Behavior {
        status: Some(500),
        ..Default::default()
    }
}

per_shell! {
fn dry_run_never_rejects_but_marks_would_be_rejected_responses(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["mode"] = "dry_run".into();
        let s = Stack::start_shell(shell, &cfg, &["dry"], &[], false).await;
        let up = s.up("dry");
        up.set(failing());
        let mut marked = 0;
        for i in 0..15 {
            let r = s.send("dry", "POST", &[]).await;
            assert_eq!(
                r.status, 500,
                "request {i}: the upstream answer, never a rejection"
            );
            assert_eq!(r.header("x-meshbreaker"), None);
            match r.header("x-meshbreaker-dry-run") {
                Some("would-reject") => marked += 1,
                // Unmarked after the trip only as a (virtual) half-open probe.
                None => {}
                Some(other) => panic!("unexpected x-meshbreaker-dry-run: {other}"),
            }
            if i == 5 {
                // Give the merged state time to show the (virtual) trip.
                eventually(Duration::from_secs(10), "dry-run state open", || async {
                    (s.metric("meshbreaker_state", "dry", &[]).await == 1.0).then_some(())
                })
                .await;
            }
        }
        assert_eq!(up.count(), 15, "dry_run never rejects");
        assert!(marked >= 5, "only {marked} responses marked would-reject");
        eventually(
            Duration::from_secs(10),
            "dry_run_reject counter",
            || async {
                (s.metric(
                    "meshbreaker_requests_total",
                    "dry",
                    &[("decision", "dry_run_reject")],
                )
                .await
                    == marked as f64)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            s.metric_present(
                "meshbreaker_requests_total",
                "dry",
                &[("decision", "rejected")]
            )
            .await,
            0.0
        );
    })
}

/// `dry_run` must not change traffic: (virtual) HALF_OPEN probes and requests over the retry
/// budget used to go out with `x-envoy-max-retries: 0`, so their clients lost retries they would
/// have had without the filter. Every GET here makes its policy's three attempts.
fn dry_run_keeps_every_requests_retries_through_probes_and_a_spent_budget(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["mode"] = "dry_run".into();
        cfg["breaker"]["latency_p95_threshold"] = serde_json::Value::Null;
        cfg["retry"] = json!({"budget": {"ratio": 0.1, "min_retries_per_second": 0}});
        let s = Stack::start_shell(shell, &cfg, &["dryretry"], &[], false).await;
        let up = s.up("dryretry");
        up.set(failing());
        // Requests until the circuit has (virtually) tripped, probed, and the budget is spent.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut i = 0;
        loop {
            let before = up.count();
            let r = s.send("dryretry", "GET", &[]).await;
            assert_eq!(r.status, 500, "request {i}: {r:?}");
            assert_eq!(
                up.count() - before,
                3,
                "request {i}: the idempotent policy's 1 + 2 attempts (dry-run mark {:?})",
                r.header("x-meshbreaker-dry-run")
            );
            i += 1;
            let denied = s
                .metric("meshbreaker_retry_budget_denied_total", "dryretry", &[])
                .await;
            let probes = s
                .metric(
                    "meshbreaker_requests_total",
                    "dryretry",
                    &[("decision", "probe")],
                )
                .await;
            if i >= 12 && denied > 0.0 && probes > 0.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "after {i} requests: {denied} budget-denied, {probes} probes counted"
            );
        }
    })
}

fn forced_open_rejects_everything_with_sleep_window_retry_after(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["mode"] = "forced_open".into();
        cfg["breaker"]["sleep_window"] = "3s".into();
        let s = Stack::start_shell(shell, &cfg, &["forced"], &[], false).await;
        for method in ["GET", "POST", "DELETE", "GET"] {
            let r = s.send("forced", method, &[]).await;
            let retry_after = assert_spec_rejection(&r, "forced", "forced_open");
            assert_eq!(retry_after, 3);
        }
        assert_eq!(s.up("forced").count(), 0);
        eventually(Duration::from_secs(10), "rejected = 4", || async {
            (s.metric(
                "meshbreaker_requests_total",
                "forced",
                &[("decision", "rejected")],
            )
            .await
                == 4.0)
                .then_some(())
        })
        .await;
    })
}

fn disabled_mode_passes_through_without_retries_or_rejections(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["mode"] = "disabled".into();
        // Trusted listener: client retry headers would work in Envoy if the filter kept them.
        let s = Stack::start_shell(shell, &cfg, &["off"], &[], true).await;
        let up = s.up("off");
        let r = s.send("off", "GET", &[("x-test-fail-first", "503")]).await;
        assert_eq!(r.status, 503, "no retry headers: Envoy does not retry");
        let r = s
            .send(
                "off",
                "GET",
                &[
                    ("x-test-fail-first", "503"),
                    ("x-envoy-retry-on", "5xx"),
                    ("x-envoy-max-retries", "3"),
                ],
            )
            .await;
        assert_eq!(
            r.status, 503,
            "client retry headers are stripped in every mode"
        );
        assert!(up.requests().iter().all(|r| r.attempt() == Some(1)));
        assert_eq!(up.count(), 2);
        up.set(failing());
        for _ in 0..15 {
            let r = s.send("off", "POST", &[]).await;
            assert_eq!(r.status, 500);
            assert_eq!(r.header("x-meshbreaker"), None);
            assert_eq!(r.header("x-meshbreaker-dry-run"), None);
        }
        assert_eq!(up.count(), 17);
    })
}

fn overrides_apply_per_cluster(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["overrides"] = json!([
            {"match": {"cluster": "ov_lenient"}, "breaker": {"min_requests": 50}},
            {"match": {"cluster": "ov_forced"}, "mode": "forced_open"}
        ]);
        let s = Stack::start_shell(shell, &cfg, &["ov_strict", "ov_lenient", "ov_forced"], &[], false).await;
        for route in ["ov_strict", "ov_lenient"] {
            s.up(route).set(failing());
        }
        for _ in 0..12 {
            let r = s.send("ov_lenient", "POST", &[]).await;
            assert_eq!(r.status, 500, "min_requests 50 for ov_lenient: {r:?}");
            let _ = s.send("ov_strict", "POST", &[]).await;
        }
        // ov_strict keeps the default min_requests 5: it opens once the samples are merged.
        let strict_rejected = tokio::time::timeout(Duration::from_secs(10), async {
            while !is_rejection(&s.send("ov_strict", "POST", &[]).await) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        assert!(
            strict_rejected,
            "ov_strict keeps the default min_requests 5"
        );
        assert_eq!(s.up("ov_lenient").count(), 12);
        assert_eq!(
            s.metric_present("meshbreaker_state", "ov_lenient", &[])
                .await,
            0.0
        );
        let r = s.send("ov_lenient", "POST", &[]).await;
        assert!(!is_rejection(&r), "ov_lenient still closed: {r:?}");
        let r = s.send("ov_forced", "GET", &[]).await;
        assert_spec_rejection(&r, "ov_forced", "forced_open");
        assert_eq!(s.up("ov_forced").count(), 0);
    })
}
}

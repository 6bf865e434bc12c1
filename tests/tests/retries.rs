//! Behaviour 1, 2: in CLOSED the filter's retry headers make Envoy retry (the routes have no
//! `retry_on`), per method policy; retried attempts are failure samples; client-sent retry headers
//! never add attempts, even on a listener that trusts its clients as internal (where Envoy itself
//! would honour them — see `harness::trusted_client_retry_headers_make_envoy_retry`).
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::time::Duration;
use tokio::sync::OnceCell;

const ROUTES: [&str; 6] = [
    "get_retry",
    "post_no_retry",
    "retry_sample",
    "strip_post",
    "strip_get_max",
    "closed_pass",
];

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

/// One Envoy for the file, on a listener that trusts loopback clients as internal.
async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            let mut cfg = fast_config();
            // Retries alone must not trip these breakers while a test counts attempts.
            cfg["breaker"]["min_requests"] = 1000.into();
            Stack::start_shell(shell, &cfg, &ROUTES, &[], true).await
        })
        .await
}

fn attempts(up: &HttpUpstream) -> Vec<Option<u32>> {
    up.requests().iter().map(|r| r.attempt()).collect()
}

per_shell! {
fn closed_circuit_passes_requests_unchanged(shell) {
    run(async {
        let s = stack(shell).await;
        for _ in 0..10 {
            let r = s.send("closed_pass", "GET", &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body, "upstream 200\n");
            assert_eq!(r.header("x-meshbreaker"), None);
            assert_eq!(r.header("x-meshbreaker-dry-run"), None);
        }
        assert_eq!(s.up("closed_pass").count(), 10);
        eventually(Duration::from_secs(10), "allowed counter = 10", || async {
            (s.metric(
                "meshbreaker_requests_total",
                "closed_pass",
                &[("decision", "allowed")],
            )
            .await
                == 10.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            s.metric_present("meshbreaker_state", "closed_pass", &[])
                .await,
            0.0
        );
    })
}

fn get_failing_first_attempt_with_503_is_retried_by_envoy(shell) {
    run(async {
        let s = stack(shell).await;
        let r = s
            .send("get_retry", "GET", &[("x-test-fail-first", "503")])
            .await;
        assert_eq!(r.status, 200, "the filter's idempotent policy retries 5xx");
        assert_eq!(r.header("x-envoy-attempt-count"), Some("2"));
        assert_eq!(attempts(s.up("get_retry")), vec![Some(1), Some(2)]);
    })
}

fn post_is_not_retried_on_503(shell) {
    run(async {
        let s = stack(shell).await;
        let r = s
            .send("post_no_retry", "POST", &[("x-test-fail-first", "503")])
            .await;
        assert_eq!(r.status, 503);
        assert_eq!(attempts(s.up("post_no_retry")), vec![Some(1)]);
    })
}

fn idempotent_get_is_retried_at_most_twice(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.up("strip_get_max");
        let before = up.count();
        let r = s
            .send(
                "strip_get_max",
                "GET",
                &[
                    ("x-test-status", "503"),
                    // a client asking for more must not get it
                    ("x-envoy-max-retries", "10"),
                    ("x-envoy-retry-on", "5xx,reset"),
                ],
            )
            .await;
        assert_eq!(r.status, 503);
        assert_eq!(
            up.count() - before,
            3,
            "1 attempt + max_retries 2 of the idempotent policy"
        );
    })
}

fn retried_attempt_is_recorded_as_a_failure_sample(shell) {
    run(async {
        let s = stack(shell).await;
        let r = s
            .send("retry_sample", "GET", &[("x-test-fail-first", "503")])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(attempts(s.up("retry_sample")), vec![Some(1), Some(2)]);
        // 2 samples: the retried attempt (failure) and the final success => 50%.
        eventually(
            Duration::from_secs(10),
            "error_rate_ppm = 500000",
            || async {
                let v = s
                    .metric("meshbreaker_error_rate_ppm", "retry_sample", &[])
                    .await;
                (v == 500_000.0).then_some(())
            },
        )
        .await;
    })
}

fn client_retry_headers_are_stripped_on_a_trusted_listener(shell) {
    run(async {
        let s = stack(shell).await;
        let r = s
            .send(
                "strip_post",
                "POST",
                &[
                    ("x-test-fail-first", "503"),
                    ("x-envoy-retry-on", "5xx,retriable-status-codes"),
                    ("x-envoy-retriable-status-codes", "503"),
                    ("x-envoy-max-retries", "5"),
                    ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
                ],
            )
            .await;
        assert_eq!(
            r.status, 503,
            "the unsafe policy does not retry 5xx; a client must not change that"
        );
        assert_eq!(attempts(s.up("strip_post")), vec![Some(1)]);
        let seen = s.up("strip_post").requests();
        assert_eq!(seen[0].header("x-envoy-retriable-status-codes"), None);
    })
}
}

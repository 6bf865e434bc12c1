//! Behaviour 3: once the window holds `min_requests` samples with a failure ratio at or above the
//! threshold, requests are rejected locally with the SPEC response and never reach the upstream.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::time::Duration;
use tokio::sync::OnceCell;

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            Stack::start_shell(shell, &fast_config(), &["er_trip", "er_guard"], &[], false).await
        })
        .await
}

per_shell! {
fn error_rate_trip_rejects_locally_with_the_spec_response(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.up("er_trip");
        up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        // POSTs are not retried on 5xx: one sample each. 5 failures (min_requests) trip.
        for i in 0..5 {
            let r = s.send("er_trip", "POST", &[]).await;
            assert_eq!(r.status, 500, "request {i} must reach the upstream");
            assert!(!is_rejection(&r));
        }
        eventually(
            Duration::from_secs(10),
            "state gauge = 1 (open)",
            || async { (s.metric("meshbreaker_state", "er_trip", &[]).await == 1.0).then_some(()) },
        )
        .await;
        let reached = up.count();
        assert_eq!(reached, 5);
        for _ in 0..5 {
            for method in ["GET", "POST"] {
                let r = s.send("er_trip", method, &[]).await;
                let retry_after = assert_spec_rejection(&r, "er_trip", "error_rate");
                // sleep_window 500 ms x jitter <= 1.2, rounded up
                assert_eq!(retry_after, 1, "{r:?}");
            }
        }
        assert_eq!(
            up.count(),
            reached,
            "rejected requests never reach the upstream"
        );
        eventually(Duration::from_secs(10), "rejected counter = 10", || async {
            (s.metric(
                "meshbreaker_requests_total",
                "er_trip",
                &[("decision", "rejected")],
            )
            .await
                == 10.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            s.metric_present(
                "meshbreaker_transitions_total",
                "er_trip",
                &[("to", "open")]
            )
            .await,
            1.0
        );
        // The transition is logged once at info with key, from, to and reason.
        eventually(Duration::from_secs(10), "transition log line", || async {
            let lines = s.envoy.log_lines_with(&["er_trip", "error_rate", "open"]);
            (lines.len() == 1).then_some(())
        })
        .await;
    })
}

fn breaker_waits_for_min_requests_before_tripping(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.up("er_guard");
        up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        for _ in 0..4 {
            let r = s.send("er_guard", "POST", &[]).await;
            assert_eq!(r.status, 500);
        }
        // The merged window shows 100% failures, yet with 4 < 5 samples the circuit stays closed.
        eventually(Duration::from_secs(10), "error_rate_ppm = 1e6", || async {
            (s.metric("meshbreaker_error_rate_ppm", "er_guard", &[])
                .await
                == 1_000_000.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            s.metric_present("meshbreaker_state", "er_guard", &[]).await,
            0.0
        );
        let r = s.send("er_guard", "POST", &[]).await;
        assert!(!is_rejection(&r), "the 5th request must still pass: {r:?}");
        assert_eq!(up.count(), 5);
    })
}
}

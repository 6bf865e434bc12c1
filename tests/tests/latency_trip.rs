//! Behaviour 4: a slow upstream trips the breaker on the window's P95 (nearest rank), with reason
//! `latency_p95`; a fast one does not.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::time::Duration;
use tokio::sync::OnceCell;

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            Stack::start_shell(shell, &fast_config(), &["slow", "fast"], &[], false).await
        })
        .await
}

per_shell! {
fn slow_upstream_trips_on_p95_latency(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.up("slow");
        // 200 OK, but slower than latency_p95_threshold (300 ms): not failures, only slow.
        up.set(Behavior {
            delay: Duration::from_millis(400),
            ..Default::default()
        });
        let c = s.client();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let r = c.get("/slow", &[("x-route", "slow")]).await;
                (r, t0.elapsed())
            }));
        }
        // What the client measured bounds what the filter measured (request headers to end of
        // response, inside the client's round trip).
        let mut client_ms = Vec::new();
        for t in tasks {
            let (r, took) = t.await.unwrap();
            assert_eq!(r.status, 200);
            client_ms.push(took.as_secs_f64() * 1000.0);
        }
        client_ms.sort_by(f64::total_cmp);
        // Nearest rank of 5 samples at 95%: the 5th.
        let client_p95 = client_ms[client_ms.len() - 1];
        eventually(
            Duration::from_secs(10),
            "state gauge = 1 (open)",
            || async { (s.metric("meshbreaker_state", "slow", &[]).await == 1.0).then_some(()) },
        )
        .await;
        let reached = up.count();
        let r = s.send("slow", "GET", &[]).await;
        assert_spec_rejection(&r, "slow", "latency_p95");
        assert_eq!(up.count(), reached);
        // SPEC: the gauge is within 2% of the window's P95. Every sample took at least the
        // upstream's 400 ms and at most what the client saw (a loaded machine adds to both).
        let p95 = s
            .metric_present("meshbreaker_latency_p95_ms", "slow", &[])
            .await;
        let (lo, hi) = (400.0 * 0.98, (client_p95 * 1.02).ceil() + 1.0);
        assert!(
            (lo..=hi).contains(&p95),
            "p95 gauge {p95} ms, expected {lo}..={hi} (client saw {client_ms:?})"
        );
        assert_eq!(
            s.metric_present("meshbreaker_error_rate_ppm", "slow", &[])
                .await,
            0.0,
            "slow successes are not failures"
        );
    })
}

fn fast_upstream_does_not_trip_on_latency(shell) {
    run(async {
        let s = stack(shell).await;
        for _ in 0..20 {
            let r = s.send("fast", "GET", &[]).await;
            assert_eq!(r.status, 200);
        }
        eventually(Duration::from_secs(10), "p95 gauge published", || async {
            let v = s
                .envoy
                .metric(
                    &s.shell.metric_name("meshbreaker_latency_p95_ms"),
                    &[("key", "fast")],
                )
                .await;
            v.first().map(|x| x.value)
        })
        .await;
        let p95 = s.metric("meshbreaker_latency_p95_ms", "fast", &[]).await;
        assert!(p95 < 300.0, "p95 {p95}");
        assert_eq!(
            s.metric_present("meshbreaker_state", "fast", &[]).await,
            0.0
        );
        assert_eq!(s.up("fast").count(), 20);
    })
}
}

//! Behaviour 4: a slow upstream trips the breaker on the window's P95 (nearest rank), with reason
//! `latency_p95`; a fast one does not.

use meshbreaker_tests::*;
use std::time::Duration;
use tokio::sync::OnceCell;

static STACK: OnceCell<Stack> = OnceCell::const_new();

async fn stack() -> &'static Stack {
    STACK
        .get_or_init(|| async { Stack::start(&fast_config(), &["slow", "fast"], &[], false).await })
        .await
}

#[test]
fn slow_upstream_trips_on_p95_latency() {
    run(async {
        let s = stack().await;
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
                c.get("/slow", &[("x-route", "slow")]).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
        }
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
        // The gauge shows the window's P95 within SPEC's 2% of the slowest samples, which take
        // 400 ms upstream plus Envoy's few milliseconds: 392 ms to 400 ms + 2% + 12 ms.
        let p95 = s
            .metric_present("meshbreaker_latency_p95_ms", "slow", &[])
            .await;
        assert!((392.0..=420.0).contains(&p95), "p95 gauge {p95}");
        assert_eq!(
            s.metric_present("meshbreaker_error_rate_ppm", "slow", &[])
                .await,
            0.0,
            "slow successes are not failures"
        );
    })
}

#[test]
fn fast_upstream_does_not_trip_on_latency() {
    run(async {
        let s = stack().await;
        for _ in 0..20 {
            let r = s.send("fast", "GET", &[]).await;
            assert_eq!(r.status, 200);
        }
        eventually(Duration::from_secs(10), "p95 gauge published", || async {
            let v = s
                .envoy
                .metric("meshbreaker_latency_p95_ms", &[("key", "fast")])
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

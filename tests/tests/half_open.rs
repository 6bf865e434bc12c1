//! Behaviour 5: after the sleep window the circuit goes HALF_OPEN and admits at most
//! `half_open_max_probes` concurrent requests across both Envoy workers; successful probes close
//! it; a failed probe re-opens it with a doubled sleep window.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            Stack::start_shell(
                shell,
                &fast_config(),
                &["ho_quota", "ho_close", "ho_reopen"],
                &[],
                false,
            )
            .await
        })
        .await
}

/// Trips `route` with 5 failing POSTs (one sample each) and waits for the open state.
async fn trip(s: &Stack, route: &str) {
    s.up(route).set(Behavior {
        status: Some(500),
        ..Default::default()
    });
    for _ in 0..5 {
        let r = s.send(route, "POST", &[]).await;
        assert_eq!(r.status, 500);
    }
    eventually(Duration::from_secs(10), "circuit open", || async {
        (s.metric("meshbreaker_state", route, &[]).await == 1.0).then_some(())
    })
    .await;
    let r = s.send(route, "GET", &[]).await;
    assert!(is_rejection(&r), "{r:?}");
}

/// How long the circuit stays open: polls every 20 ms from `start` until a request is admitted
/// (a probe, which fails and re-opens). Returns (open duration, retry-after of the first
/// rejection seen).
async fn open_period(s: &Stack, start: Instant) -> (Duration, u64) {
    let mut first_retry_after = None;
    loop {
        let r = s.send("ho_reopen", "GET", &[]).await;
        if !is_rejection(&r) {
            assert_eq!(r.status, 500);
            assert_eq!(
                r.header("x-envoy-attempt-count"),
                Some("1"),
                "probes get x-envoy-max-retries: 0"
            );
            return (start.elapsed(), first_retry_after.unwrap_or(0));
        }
        let ra = assert_spec_rejection(&r, "ho_reopen", "error_rate");
        first_retry_after.get_or_insert(ra);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never half-opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

per_shell! {
fn half_open_admits_at_most_max_probes_concurrently_across_workers(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.up("ho_quota");
        trip(s, "ho_quota").await;
        // Recovered but slow, so the probes overlap.
        up.set(Behavior {
            delay: Duration::from_millis(400),
            ..Default::default()
        });
        up.clear();
        // Wait for the first probe to be admitted (it stays in flight for 400 ms, less than sleep_window, after which a lost probe frees its slot).
        let c = s.client();
        let first = eventually(Duration::from_secs(10), "a probe is admitted", || {
            let c = c.clone();
            async move {
                let t = tokio::spawn(async move { c.get("/p", &[("x-route", "ho_quota")]).await });
                let end = Instant::now() + Duration::from_millis(200);
                while Instant::now() < end {
                    if up.in_flight() > 0 {
                        return Some(t);
                    }
                    if t.is_finished() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(t)
            }
        })
        .await;
        // 40 concurrent clients, each on its own connections (Envoy spreads connections over its
        // two workers), while the first probe is in flight.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let c = if i % 2 == 0 {
                HttpClient::http1(s.envoy.port)
            } else {
                HttpClient::h2c(s.envoy.port)
            };
            tasks.push(tokio::spawn(async move {
                c.get("/p", &[("x-route", "ho_quota")]).await
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            let r = t.await.unwrap();
            if is_rejection(&r) {
                assert_eq!(r.status, 503);
            } else {
                assert_eq!(r.status, 200, "{r:?}");
                admitted += 1;
            }
        }
        let r = first.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            up.max_in_flight(),
            2,
            "half_open_max_probes = 2: exactly two probes in flight at once"
        );
        assert_eq!(
            admitted, 1,
            "exactly one more probe admitted besides the first"
        );
        assert!(
            s.metric(
                "meshbreaker_requests_total",
                "ho_quota",
                &[("decision", "probe")]
            )
            .await
                >= 1.0
        );
    })
}

fn successful_probes_close_the_circuit(shell) {
    run(async {
        let s = stack(shell).await;
        trip(s, "ho_close").await;
        s.up("ho_close").set(Behavior::default());
        // half_open_successes_to_close = 2: keep sending until closed.
        eventually(Duration::from_secs(5), "circuit closed", || async {
            let _ = s.send("ho_close", "GET", &[]).await;
            (s.metric("meshbreaker_state", "ho_close", &[]).await == 0.0).then_some(())
        })
        .await;
        // Counters reach Envoy on the filter's next tick.
        for to in ["open", "half_open", "closed"] {
            wait_until(
                Duration::from_secs(10),
                &format!("one transition to {to}"),
                || async {
                    s.metric_present("meshbreaker_transitions_total", "ho_close", &[("to", to)])
                        .await
                        == 1.0
                },
            )
            .await;
        }
        // Closed again, and the window was cleared: everything passes.
        let before = s.up("ho_close").count();
        for _ in 0..10 {
            let r = s.send("ho_close", "GET", &[]).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        assert_eq!(s.up("ho_close").count(), before + 10);
        assert_eq!(
            s.metric_present("meshbreaker_error_rate_ppm", "ho_close", &[])
                .await,
            0.0
        );
    })
}

fn failed_probe_reopens_with_a_doubled_sleep_window(shell) {
    run(async {
        let s = stack(shell).await;
        trip(s, "ho_reopen").await;
        let t0 = Instant::now();
        // sleep_window 500 ms, then 1 s, then 2 s (x jitter 1.0-1.2), the upstream still failing.
        let (_d1, ra1) = open_period(s, t0).await;
        let (_d2, _ra2) = open_period(s, Instant::now()).await;
        let (_d3, ra3) = open_period(s, Instant::now()).await;
        // How long each open period lasts is what the filter decided and logged (open_for_ms),
        // exact where client polling on a busy machine is not: 500 ms, then 1 s, then 2 s, each
        // times a jitter in [1.0, 1.2].
        let periods = eventually(Duration::from_secs(10), "three logged trips", || async {
            let p: Vec<u64> = s
                .envoy
                .log_lines_with(&["transition key=ho_reopen", "to=open"])
                .iter()
                .filter_map(|l| {
                    l.split("open_for_ms=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            (p.len() >= 3).then_some(p)
        })
        .await;
        for (i, base) in [500u64, 1000, 2000].iter().enumerate() {
            let max = base + base / 5;
            assert!(
                (*base..=max).contains(&periods[i]),
                "open period {i}: {} ms, expected {base}..={max} ({periods:?})",
                periods[i]
            );
        }
        assert_eq!(ra1, 1);
        assert!(
            ra3 >= 2,
            "retry-after grows with the sleep window: {ra1} then {ra3}"
        );
        wait_until(
            Duration::from_secs(10),
            "three transitions to open",
            || async {
                s.metric(
                    "meshbreaker_transitions_total",
                    "ho_reopen",
                    &[("to", "open")],
                )
                .await
                    >= 3.0
            },
        )
        .await;
        assert_eq!(
            s.metric_present(
                "meshbreaker_transitions_total",
                "ho_reopen",
                &[("to", "closed")]
            )
            .await,
            0.0
        );
    })
}
}

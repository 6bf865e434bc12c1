//! SPEC: a transition is seen by every worker on its next request. The wasm filter's workers do
//! not read shared data for a key they know CLOSED; the worker that trips a key tells the others
//! through their shared queues. This holds that in the real Envoy (two workers): under steady
//! traffic on both, no request that starts after the first rejection is let through, on either
//! worker. Without the message, the other worker would let requests through until its next tick.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

per_shell! {
fn a_trip_on_one_worker_is_seen_by_the_other_workers_next_request(shell) {
    run(async {
        let mut cfg = fast_config();
        cfg["breaker"]["window"] = "10s".into();
        cfg["breaker"]["buckets"] = 10.into();
        cfg["breaker"]["sleep_window"] = "30s".into();
        cfg["breaker"]["max_sleep_window"] = "60s".into();
        // The trip comes from one worker's failures in a row, the moment the last one completes,
        // not at a tick (the workers' ticks run nearly in step, so a trip at one worker's tick is
        // often seen by the other's flush at its own tick anyway).
        cfg["breaker"]["consecutive_failures"] = 3.into();
        cfg["breaker"]["min_requests"] = 100_000.into();
        let s = Stack::start_shell(shell, &cfg, &["tripped"], &[], false).await;
        let route = [("x-route", "tripped")];
        // POSTs: one attempt each, no retries. Sixteen keep-alive connections, which Envoy spreads over its two workers.
        let cs: Vec<HttpClient> = (0..16).map(|_| HttpClient::http1(s.envoy.port)).collect();
        for c in &cs {
            assert_eq!(c.get("/", &route).await.status, 200);
        }
        // Steady, healthy traffic on fifteen connections, and failures as fast as they come on the
        // first: each request notes when it started, when it ended and what came back.
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        for (i, c) in cs.iter().cloned().enumerate() {
            let stop = stop.clone();
            loops.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let (headers, pause) = if i == 0 {
                    (vec![("x-route", "tripped"), ("x-test-status", "500")], 0)
                } else {
                    (vec![("x-route", "tripped")], 50)
                };
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = c.request("POST", "/", &headers, "").await;
                    seen.push((started, Instant::now(), r));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                seen
            }));
        }
        eventually(Duration::from_secs(20), "the key trips", || async {
            (s.metric("meshbreaker_state", "tripped", &[]).await == 1.0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for l in loops {
            seen.extend(l.await.unwrap());
        }
        // The first rejection any client saw, whichever worker tripped the key.
        let tripped_at = seen
            .iter()
            .filter(|(_, _, r)| is_rejection(r))
            .map(|(_, ended, _)| *ended)
            .min()
            .expect("a rejection");
        let mut after = 0;
        for (started, _, r) in &seen {
            if *started > tripped_at {
                after += 1;
                assert!(
                    is_rejection(r),
                    "a request started {:?} after the first rejection was let through: {r:?}",
                    *started - tripped_at
                );
                assert_spec_rejection(r, "tripped", "consecutive_failures");
            } else {
                assert!(is_rejection(r) || [200, 500].contains(&r.status), "{r:?}");
            }
        }
        assert!(after >= 30, "only {after} requests after the trip");
    })
}
}

//! `consecutive_failures`: a hard-down upstream (nothing listens on its port) is cut off after
//! that many failed attempts in a row, long before the window holds `min_requests` samples.
//! The filter sees a request's attempts when the request completes, after Envoy's retries: with
//! retries off the trip comes after exactly five requests; with the GET policy's two retries,
//! after the request whose attempts reach five.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use policy_core::breaker::State;
use serde_json::json;
use std::time::Duration;
use tokio::sync::OnceCell;

const LIMIT: u32 = 5;

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            let mut cfg = fast_config();
            cfg["breaker"]["window"] = json!("10s");
            cfg["breaker"]["buckets"] = json!(10);
            // A window trip would need 1000 samples: only the consecutive rule can trip here.
            cfg["breaker"]["min_requests"] = json!(1000);
            cfg["breaker"]["consecutive_failures"] = json!(LIMIT);
            // Stays open while the test looks.
            cfg["breaker"]["sleep_window"] = json!("30s");
            cfg["breaker"]["max_sleep_window"] = json!("60s");
            cfg["overrides"] = json!([{
                "match": {"cluster": "down_once"},
                "retry": {"policies": [
                    {"name": "once", "match": {}, "retry_on": ["connect-failure"], "max_retries": 0}
                ]}
            }]);
            let (a, b) = (closed_port().await, closed_port().await);
            Stack::start_with_shell(shell, &cfg, &[], &[], &[], |bs| {
                bs.cluster("down_once", RouteKind::Http, a).cluster(
                    "down_retried",
                    RouteKind::Http,
                    b,
                )
            })
            .await
        })
        .await
}

/// Sends GETs to `key` one after the other on one connection (one Envoy worker: the rule counts
/// per worker) until one is rejected; returns the requests that reached the router before it.
/// HTTP/2, so that every request shares the one connection: an HTTP/1.1 pool may open a second
/// one while the first is still being handed back, and the failures then split over two workers.
async fn until_rejected(s: &Stack, key: &str, most: usize) -> Vec<HttpResponse> {
    let c = s.envoy.h2c();
    let mut failed = Vec::new();
    loop {
        let r = c.get("/down", &[("x-route", key)]).await;
        if is_rejection(&r) {
            assert_spec_rejection(&r, key, "consecutive_failures");
            return failed;
        }
        assert_eq!(r.status, 503, "the upstream is down: {r:?}");
        assert_ne!(r.header("x-meshbreaker"), Some("open"));
        failed.push(r);
        assert!(
            failed.len() <= most,
            "{key}: still not open after {} failed requests ({} connect failures); \
             transitions: {:?}",
            failed.len(),
            connect_failures(s, key).await,
            s.envoy.transitions(key)
        );
    }
}

/// Envoy's count of failed connection attempts to `cluster`.
async fn connect_failures(s: &Stack, cluster: &str) -> u64 {
    s.envoy
        .stat(&format!("cluster.{cluster}.upstream_cx_connect_fail"))
        .await
        .unwrap_or_else(|| panic!("no upstream_cx_connect_fail stat for {cluster}"))
}

/// Requests one shell may decide before the trip it has already earned: a dynamic module learns
/// the outcome in its stream-complete hook, which Envoy runs after the response has reached the
/// client, so the next request on the same connection can be decided first (the wasm filter's
/// `on_log` comes before the client has the response).
fn slack(shell: Shell) -> usize {
    match shell {
        Shell::Wasm => 0,
        Shell::Native => 1,
    }
}

/// The one trip in the log: from CLOSED, reason `consecutive_failures`, on a window far short of
/// `min_requests`.
async fn assert_one_consecutive_trip(s: &Stack, key: &str) {
    let trips = eventually(Duration::from_secs(5), "the trip is logged", || async {
        let t = s.envoy.transitions(key);
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(trips.len(), 1, "{trips:#?}");
    assert_eq!((trips[0].from, trips[0].to), (State::Closed, State::Open));
    assert_eq!(trips[0].reason, "consecutive_failures", "{trips:#?}");
    wait_until(Duration::from_secs(5), "state gauge 1 (open)", || async {
        s.metric_opt("meshbreaker_state", key, &[]).await == Some(1.0)
    })
    .await;
}

per_shell! {
fn hard_down_without_retries_trips_after_consecutive_failures_attempts(shell) {
    run(async {
        let s = stack(shell).await;
        let key = "down_once";
        let failed = until_rejected(s, key, LIMIT as usize + slack(shell)).await;
        // One attempt per request: the LIMIT-th failed request trips, the next one is rejected.
        assert!(
            (LIMIT as usize..=LIMIT as usize + slack(shell)).contains(&failed.len()),
            "{} failed requests",
            failed.len()
        );
        let reached = connect_failures(s, key).await;
        assert_eq!(reached, failed.len() as u64);
        for r in &failed {
            assert_eq!(r.header("x-envoy-attempt-count"), Some("1"), "{r:?}");
        }
        assert_one_consecutive_trip(s, key).await;
        // Kept away from now on: nothing more reaches the dead port.
        for _ in 0..20 {
            let r = s.send(key, "GET", &[]).await;
            assert_spec_rejection(&r, key, "consecutive_failures");
        }
        assert_eq!(connect_failures(s, key).await, reached);
    })
}

fn hard_down_with_retries_trips_on_the_request_whose_attempts_reach_the_limit(shell) {
    run(async {
        let s = stack(shell).await;
        let key = "down_retried";
        // GET: two retries (the `idempotent` policy), three attempts per request; the filter sees
        // them when the request ends, so five attempts take two requests (six attempts).
        let attempts = 3u32;
        let requests = LIMIT.div_ceil(attempts) as usize;
        let failed = until_rejected(s, key, requests + slack(shell)).await;
        assert!(
            (requests..=requests + slack(shell)).contains(&failed.len()),
            "{} failed requests",
            failed.len()
        );
        let requests = failed.len();
        for r in &failed {
            assert_eq!(r.header("x-envoy-attempt-count"), Some("3"), "{r:?}");
        }
        assert_eq!(
            connect_failures(s, key).await,
            u64::from(attempts) * requests as u64
        );
        assert_one_consecutive_trip(s, key).await;
        for _ in 0..20 {
            let r = s.send(key, "GET", &[]).await;
            assert_spec_rejection(&r, key, "consecutive_failures");
        }
        assert_eq!(
            connect_failures(s, key).await,
            u64::from(attempts) * requests as u64
        );
    })
}
}

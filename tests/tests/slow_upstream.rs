//! A circuit opened by a slow upstream does not flap: while the upstream stays slow, every probe
//! is slow, so it fails and re-opens the circuit with a doubled sleep window; only once the
//! upstream is fast again does a probe close it. Over a 20 s slow spell that is one trip, several
//! re-openings with growing open periods and no close; after the heal, exactly one close.
//!
//! Two upstreams, slow at once behind one Envoy: one answers in 300 ms, within the sleep window,
//! the other in 1 s (the protection benchmark's "1 s slow"), longer than the sleep window, so its
//! probes outlive the time after which a probe's quota slot is reclaimed.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use policy_core::breaker::{State, TransitionLine};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the upstream stays slow.
const SLOW_FOR: Duration = Duration::from_secs(20);
/// The latency threshold. The slow upstreams' delays are over it, so their answers are measured
/// slow however loaded the machine (a delay only adds); healed, they answer in a few ms.
const THRESHOLD_MS: u64 = 200;
const SLEEP_MS: u64 = 500;
const MAX_SLEEP_MS: u64 = 4000;

/// Client loops sending GETs to the key until `stop`, each waiting for its answer and 50 ms.
fn traffic(
    s: &'static Stack,
    key: &'static str,
    loops: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..loops)
        .map(|_| {
            let c = s.client();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = c.get("/slow", &[("x-route", key)]).await;
                    assert!(
                        r.status == 200 || is_rejection(&r),
                        "neither an answer nor a rejection: {r:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect()
}

/// Stops the client loops and waits until what their last requests did is in the log and in the
/// counters; returns the key's transitions so far.
async fn stop_and_settle(
    s: &Stack,
    key: &str,
    stop: &AtomicBool,
    loops: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<TransitionLine> {
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap_or_else(|e| panic!("client loop: {e}"));
    }
    // The filter logs a transition when the request that caused it completes, which may be a
    // moment after its client got the answer; Envoy flushes its log every 50 ms and the filter
    // publishes its counters every 100 ms. Half a second covers those several times over; the
    // counters agreeing with the log then shows both are complete (no traffic, no transition).
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually(
        Duration::from_secs(10),
        "the transition counters agree with the log",
        || async {
            let lines = s.envoy.transitions(key);
            for (to, state) in [
                ("open", State::Open),
                ("half_open", State::HalfOpen),
                ("closed", State::Closed),
            ] {
                let logged = lines.iter().filter(|t| t.to == state).count() as f64;
                let counted = s
                    .metric_opt("meshbreaker_transitions_total", key, &[("to", to)])
                    .await;
                // A series the filter never incremented may be absent: that agrees only with
                // nothing logged.
                if counted.unwrap_or(0.0) != logged || (counted.is_none() && logged > 0.0) {
                    return None;
                }
            }
            Some(lines)
        },
    )
    .await
}

static STACKS: [tokio::sync::OnceCell<Stack>; 2] = [
    tokio::sync::OnceCell::const_new(),
    tokio::sync::OnceCell::const_new(),
];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            let cfg = json!({
                "key_by": "cluster",
                "mode": "enforce",
                "breaker": {
                    "window": "3s",
                    "buckets": 6,
                    "min_requests": 5,
                    "error_rate_threshold": 0.5,
                    "latency_p95_threshold": format!("{THRESHOLD_MS}ms"),
                    "sleep_window": format!("{SLEEP_MS}ms"),
                    "max_sleep_window": format!("{MAX_SLEEP_MS}ms"),
                    // One probe at a time, one success closes: no probe is still in flight
                    // when the circuit closes, so no slow straggler lands in the fresh window.
                    "half_open_max_probes": 1,
                    "half_open_successes_to_close": 1
                }
            });
            Stack::start_shell(shell, &cfg, &["slow_300ms", "slow_1s"], &[], false).await
        })
        .await
}

per_shell! {
fn an_upstream_slow_within_the_sleep_window_trips_once_and_closes_once_after_it_heals(shell) {
    run(slow_spell(shell, "slow_300ms", Duration::from_millis(300)))
}

fn an_upstream_slower_than_the_sleep_window_trips_once_and_closes_once_after_it_heals(shell) {
    run(slow_spell(shell, "slow_1s", Duration::from_secs(1)))
}
}

/// Makes `key`'s upstream answer after `delay` for [`SLOW_FOR`] under steady traffic, then heals
/// it; checks the transitions of both periods.
async fn slow_spell(shell: Shell, key: &'static str, delay: Duration) {
    let s = stack(shell).await;
    let up = s.up(key);
    up.set(Behavior {
        delay,
        ..Default::default()
    });

    // The slow spell, with traffic throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let loops = traffic(s, key, 4, stop.clone());
    wait_until(SLOW_FOR, "the circuit opens", || async {
        s.envoy.transitions(key).iter().any(|t| t.to == State::Open)
    })
    .await;
    tokio::time::sleep(SLOW_FOR.saturating_sub(t0.elapsed())).await;
    let slow = stop_and_settle(s, key, &stop, loops).await;

    // One trip, from CLOSED, on latency; no close; re-openings from HALF_OPEN after probes
    // that failed (slow), each open period the doubled sleep window (capped), times a
    // jitter in [1.0, 1.2].
    let trips: Vec<_> = slow.iter().filter(|t| t.from == State::Closed).collect();
    assert_eq!(trips.len(), 1, "exactly one CLOSED→OPEN: {slow:#?}");
    assert_eq!(trips[0].to, State::Open);
    assert_eq!(trips[0].reason, "latency_p95", "{slow:#?}");
    assert!(
        slow.iter().all(|t| t.to != State::Closed),
        "closed while the upstream was still slow: {slow:#?}"
    );
    let opens: Vec<&TransitionLine> = slow.iter().filter(|t| t.to == State::Open).collect();
    for t in &opens[1..] {
        assert_eq!(t.from, State::HalfOpen, "{t:?}");
        assert!(t.figures.contains("probe_success=false"), "{t:?}");
    }
    // The trip comes after min_requests slow answers (one delay in), then each open period
    // is followed by a probe that takes the delay: with 1 s and the jitter at its most,
    // 2 + 0.6 + 1 + 1.2 + 1 + 2.4 + 1 = 9.2 s for three re-openings, well within 20 s.
    assert!(
        opens.len() >= 4,
        "at least three re-openings in {SLOW_FOR:?}: {opens:#?}"
    );
    let periods: Vec<u64> = opens
        .iter()
        .map(|t| {
            t.open_for_ms
                .unwrap_or_else(|| panic!("no open_for_ms: {t:?}"))
        })
        .collect();
    for (i, ms) in periods.iter().enumerate() {
        let base = (SLEEP_MS << i.min(16)).min(MAX_SLEEP_MS);
        assert!(
            (base..=base + base / 5).contains(ms),
            "open period {i}: {ms} ms, expected the sleep window {base} ms × [1.0, 1.2] \
                 ({periods:?})"
        );
    }
    assert!(
        periods.windows(2).take(3).all(|w| w[0] < w[1]),
        "the first re-openings grow: {periods:?}"
    );
    assert_eq!(
        s.metric_present("meshbreaker_state", key, &[]).await,
        1.0,
        "OPEN at the end of the slow spell"
    );

    // Healed: the next probe is fast and closes the circuit, once.
    up.set(Behavior::default());
    let healed = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let loops = traffic(s, key, 4, stop.clone());
    // The open period in progress lasts at most max_sleep_window × 1.2.
    wait_until(Duration::from_secs(15), "the circuit closes", || async {
        s.envoy
            .transitions(key)
            .iter()
            .any(|t| t.to == State::Closed)
    })
    .await;
    let closed_after = healed.elapsed();
    // Healthy traffic for a while after the close: the window started afresh.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = stop_and_settle(s, key, &stop, loops).await;
    let closes: Vec<_> = all.iter().filter(|t| t.to == State::Closed).collect();
    assert_eq!(closes.len(), 1, "exactly one close: {all:#?}");
    assert_eq!(closes[0].from, State::HalfOpen);
    assert_eq!(
        all.iter().filter(|t| t.from == State::Closed).count(),
        1,
        "no trip after the heal: {all:#?}"
    );
    assert_eq!(
        all.last(),
        Some(closes[0]),
        "the close is the last transition"
    );
    assert_eq!(s.metric_present("meshbreaker_state", key, &[]).await, 0.0);
    let r = s.send(key, "GET", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    eprintln!(
        "{key} ({}): {} openings, periods {periods:?} ms; closed {closed_after:?} after the heal",
        shell.name(),
        opens.len()
    );
}

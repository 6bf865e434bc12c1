//! The round-3 protection rules, driven through the per-key flow the filter runs (one worker over
//! a store in memory, time passed in): slow probes fail, abandoned probes free their slot, a run
//! of consecutive failures trips at once, and adaptive shedding rejects a share that follows the
//! success rate clients see, while admitted requests keep their retries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use policy_core::breaker::{Decision, SplitMix64, State, SHED_ALL};
use policy_core::config::{BreakerConfig, Config, Mode, Shedding};
use policy_core::flow::{self, Admitted, FlushInput, Geometry, Local, Memory};
use policy_core::shedding;
use policy_core::window::{Counts, FailureClass, Outcome, TripReason};
use proptest::prelude::*;

/// One worker of one key: the flow's calls, in the order the filter makes them.
struct Worker {
    cfg: BreakerConfig,
    store: Memory,
    local: Local,
    rng: SplitMix64,
    enc: Vec<u8>,
    bins: Vec<(u64, u64)>,
    transitions: Vec<(State, State, Option<TripReason>, u64)>,
}

impl Worker {
    fn new(cfg: BreakerConfig) -> Worker {
        let g = Geometry::of(&cfg);
        Worker {
            store: Memory::new("k", &g),
            local: Local::new(&cfg, 0).unwrap(),
            cfg,
            rng: SplitMix64(7),
            enc: Vec::new(),
            bins: Vec::new(),
            transitions: Vec::new(),
        }
    }

    fn decide(&mut self, now: u64) -> Decision {
        match flow::admit(
            &mut self.store,
            "k",
            Mode::Enforce,
            &self.cfg,
            now,
            &mut self.rng,
            &mut self.enc,
        ) {
            Admitted::Decided {
                decision,
                transition,
                ..
            } => {
                if let Some(t) = transition.filter(|t| t.is_change()) {
                    self.transitions
                        .push((t.from, t.to, t.reason, t.open_for_ms));
                }
                decision
            }
            other => panic!("the memory store never fails: {other:?}"),
        }
    }

    fn complete(&mut self, now: u64, outcome: &Outcome, decision: Decision) {
        let failure = outcome.failure(&self.cfg.failure);
        if let Decision::Probe(id) = decision {
            let ok = flow::probe_succeeded(outcome, failure, &self.cfg);
            let t = flow::complete_probe(
                &mut self.store,
                "k",
                id,
                ok,
                &self.cfg,
                now,
                &mut self.rng,
                &mut self.enc,
            );
            self.note(t.map(|(t, _)| t));
        }
        let g = Geometry::of(&self.cfg);
        let r = self.local.record(outcome, failure, &g, now);
        if r.due {
            self.flush(now);
            self.local.record_after_flush(outcome, failure, &g, now, r);
        }
    }

    fn abandon(&mut self, now: u64, id: u32, ran_us: u64) {
        let t = flow::abandon_probe(
            &mut self.store,
            "k",
            id,
            ran_us,
            &self.cfg,
            now,
            &mut self.rng,
            &mut self.enc,
        );
        self.note(t.map(|(t, _)| t));
    }

    fn flush(&mut self, now: u64) {
        let g = Geometry::of(&self.cfg);
        let input = FlushInput::without_resets("k", &self.cfg, g, now);
        if let flow::Flushed::Merged(m) = flow::flush(
            &mut self.store,
            &mut self.local,
            &input,
            &mut self.rng,
            &mut self.enc,
            &mut self.bins,
        ) {
            self.note(m.written.and_then(|(t, _)| t));
        }
    }

    fn note(&mut self, t: Option<policy_core::breaker::Transition>) {
        if let Some(t) = t.filter(|t| t.is_change()) {
            self.transitions
                .push((t.from, t.to, t.reason, t.open_for_ms));
        }
    }

    /// One request at `now` answered by `outcome`; what the flow decided.
    fn request(&mut self, now: u64, outcome: &Outcome) -> Decision {
        let d = self.decide(now);
        if matches!(d, Decision::Allow | Decision::Probe(_)) {
            self.complete(now, outcome, d);
        }
        d
    }

    fn state(&self) -> policy_core::breaker::BreakerState {
        self.store.slot_state().unwrap().breaker
    }
}

fn cfg() -> BreakerConfig {
    let mut c = Config::default().breaker;
    c.window = Duration::from_secs(10);
    c.buckets = 10;
    c.min_requests = 10;
    c.sleep_window = Duration::from_secs(1);
    c.max_sleep_window = Duration::from_secs(60);
    c.latency_p95_threshold = Some(Duration::from_millis(100));
    c
}

fn answer(status: u16, latency_ms: u64, attempts: u32) -> Outcome {
    Outcome {
        http_status: Some(status),
        latency_us: Some(latency_ms * 1_000),
        attempts,
        ..Outcome::default()
    }
}

fn is_rejected(d: &Decision) -> bool {
    matches!(d, Decision::Reject(_))
}

// ------------------------------------------------------------------------ probes and slowness

#[test]
fn a_slow_probe_is_a_failed_probe_while_the_latency_trip_is_on() {
    let c = cfg();
    let fast = answer(200, 5, 1);
    let slow = answer(200, 100, 1);
    let fail = |o: &Outcome| o.failure(&c.failure);
    assert!(flow::probe_succeeded(&fast, fail(&fast), &c));
    assert!(
        !flow::probe_succeeded(&slow, fail(&slow), &c),
        "at the threshold is slow"
    );
    let mut off = c.clone();
    off.latency_p95_threshold = None;
    assert!(flow::probe_succeeded(&slow, fail(&slow), &off));
    // An upgraded request has no latency: never slow.
    let upgraded = Outcome {
        latency_us: None,
        ..answer(101, 0, 1)
    };
    assert!(flow::probe_succeeded(&upgraded, fail(&upgraded), &c));
}

#[test]
fn a_slow_upstream_trips_once_and_reopens_with_growing_sleep_until_it_heals() {
    let mut w = Worker::new(cfg());
    let slow = answer(200, 300, 1);
    let mut now = 0;
    // 20 s of a slow upstream, a request every 10 ms, flushed on each tick.
    while now < 20_000 {
        w.request(now, &slow);
        if now % 100 == 0 {
            w.flush(now);
        }
        now += 10;
    }
    let closes = w
        .transitions
        .iter()
        .filter(|t| t.1 == State::Closed)
        .count();
    let trips = w
        .transitions
        .iter()
        .filter(|t| t.0 == State::Closed && t.1 == State::Open)
        .count();
    assert_eq!((trips, closes), (1, 0), "{:?}", w.transitions);
    let reopens: Vec<u64> = w
        .transitions
        .iter()
        .filter(|t| t.0 == State::HalfOpen && t.1 == State::Open)
        .map(|t| t.3)
        .collect();
    assert!(reopens.len() >= 3, "{:?}", w.transitions);
    assert!(
        reopens.windows(2).all(|p| p[1] > p[0]),
        "sleep windows grow: {reopens:?}"
    );
    // Healed: the next probes succeed and close it, once.
    let fast = answer(200, 5, 1);
    while now < 90_000 && w.state().state != State::Closed {
        w.request(now, &fast);
        now += 10;
    }
    let closes = w
        .transitions
        .iter()
        .filter(|t| t.1 == State::Closed)
        .count();
    assert_eq!(closes, 1, "{:?}", w.transitions);
}

#[test]
fn an_abandoned_probe_frees_its_slot_at_once() {
    let mut c = cfg();
    c.half_open_max_probes = 1;
    let mut w = Worker::new(c);
    for i in 0..20 {
        w.request(i, &answer(503, 1, 1));
    }
    w.flush(100);
    assert_eq!(w.state().state, State::Open);
    let Decision::Probe(id) = w.decide(2_000) else {
        panic!("a probe after the sleep window")
    };
    assert!(is_rejected(&w.decide(2_001)), "the quota is one probe");
    // The client goes away after 10 ms (under the threshold): the slot is free at once, the
    // circuit stays HALF_OPEN.
    w.abandon(2_010, id, 10_000);
    assert_eq!(w.state().state, State::HalfOpen);
    assert!(matches!(w.decide(2_011), Decision::Probe(_)));
}

#[test]
fn a_probe_abandoned_after_the_threshold_fails() {
    let mut c = cfg();
    c.half_open_max_probes = 1;
    let mut w = Worker::new(c);
    for i in 0..20 {
        w.request(i, &answer(503, 1, 1));
    }
    w.flush(100);
    let Decision::Probe(id) = w.decide(2_000) else {
        panic!("a probe after the sleep window")
    };
    w.abandon(2_500, id, 500_000);
    let st = w.state();
    assert_eq!(st.state, State::Open);
    assert_eq!(
        st.sleep_ms, 2_000,
        "re-opened with the sleep window doubled"
    );
}

// ------------------------------------------------------------------------ consecutive failures

fn consecutive(n: u32) -> BreakerConfig {
    let mut c = cfg();
    c.min_requests = 1_000;
    c.consecutive_failures = n;
    c
}

#[test]
fn n_failed_attempts_in_a_row_trip_at_once() {
    let mut w = Worker::new(consecutive(5));
    for i in 0..4 {
        w.request(i, &answer(503, 1, 1));
    }
    assert_eq!(w.state().state, State::Closed, "four are not five");
    w.request(4, &answer(503, 1, 1));
    let st = w.state();
    assert_eq!(st.state, State::Open, "the fifth trips, with no tick");
    assert_eq!(st.reason, Some(TripReason::ConsecutiveFailures));
}

#[test]
fn retried_attempts_count_towards_the_run() {
    let mut w = Worker::new(consecutive(5));
    // Three attempts, all failed, then two more: five failed attempts in two requests.
    w.request(0, &answer(503, 1, 3));
    assert_eq!(w.state().state, State::Closed);
    w.request(1, &answer(503, 1, 2));
    assert_eq!(w.state().reason, Some(TripReason::ConsecutiveFailures));
}

#[test]
fn a_success_breaks_the_run() {
    let mut w = Worker::new(consecutive(5));
    for i in 0..40 {
        let status = if i % 4 == 3 { 200 } else { 503 };
        w.request(i, &answer(status, 1, 1));
    }
    // A retried request that ends in success breaks it too.
    w.request(50, &answer(200, 1, 3));
    assert_eq!(w.state().state, State::Closed, "{:?}", w.transitions);
}

#[test]
fn consecutive_failures_off_never_trips_without_the_window() {
    let mut w = Worker::new(consecutive(0));
    for i in 0..500 {
        w.request(i, &answer(503, 1, 1));
    }
    assert_eq!(w.state().state, State::Closed);
}

// ------------------------------------------------------------------------ adaptive shedding

fn adaptive() -> BreakerConfig {
    let mut c = cfg();
    c.shedding = Shedding::Adaptive;
    c.error_rate_threshold = 0.3;
    c.latency_p95_threshold = None;
    c
}

fn window(requests: u64, client_failed: u64) -> Counts {
    let mut c = Counts {
        requests,
        samples: requests,
        ..Counts::default()
    };
    c.failures[FailureClass::HttpStatus as usize] = client_failed;
    c
}

proptest! {
    #[test]
    fn the_shedding_probability_is_zero_at_or_above_the_target(
        requests in 1u64..100_000,
        success in 0.0f64..=1.0,
        target in 0.01f64..=1.0,
    ) {
        let accepts = (requests as f64 * success).floor() as u64;
        let p = shedding::probability(&window(requests, requests - accepts), target);
        if accepts as f64 >= target * requests as f64 {
            prop_assert_eq!(p, 0);
        }
        if accepts == 0 {
            prop_assert_eq!(p, SHED_ALL);
        } else {
            prop_assert!(p < SHED_ALL);
        }
    }

    #[test]
    fn the_shedding_probability_falls_as_successes_rise(
        requests in 1u64..10_000,
        a in 0u64..10_000,
        b in 0u64..10_000,
        target in 0.01f64..=1.0,
    ) {
        let (lo, hi) = (a.min(b).min(requests), a.max(b).min(requests));
        let p_lo = shedding::probability(&window(requests, requests - lo), target);
        let p_hi = shedding::probability(&window(requests, requests - hi), target);
        prop_assert!(p_hi <= p_lo, "{} accepts: {}, {} accepts: {}", lo, p_lo, hi, p_hi);
    }
}

#[test]
fn retries_that_save_the_clients_keep_an_adaptive_circuit_closed() {
    // Half the attempts fail, but each request gets three: 87.5% of clients succeed.
    let mut w = Worker::new(adaptive());
    for i in 0..2_000u64 {
        let o = match i % 8 {
            0 => answer(503, 1, 3),
            1..=2 => answer(200, 1, 3),
            3..=4 => answer(200, 1, 2),
            _ => answer(200, 1, 1),
        };
        assert!(!is_rejected(&w.request(i * 5, &o)));
        if i % 20 == 0 {
            w.flush(i * 5);
        }
    }
    assert_eq!(w.state().state, State::Closed, "{:?}", w.transitions);
}

#[test]
fn an_adaptive_circuit_sheds_a_share_that_follows_the_client_success_rate() {
    // 25% of clients succeed against a 50% target: P = 1 - 0.25/0.5 = about half.
    let mut w = Worker::new(adaptive());
    let mut rejected = 0;
    let mut sent = 0;
    for i in 0..4_000u64 {
        let o = if i % 4 == 0 {
            answer(200, 1, 1)
        } else {
            answer(503, 1, 1)
        };
        let d = w.request(i * 2, &o);
        if i >= 1_000 {
            sent += 1;
            rejected += usize::from(is_rejected(&d));
        }
        if i % 50 == 0 {
            w.flush(i * 2);
        }
    }
    let st = w.state();
    assert_eq!(
        (st.state, st.reason),
        (State::Open, Some(TripReason::Adaptive))
    );
    let share = rejected as f64 / sent as f64;
    assert!((0.4..0.6).contains(&share), "shed {share}");
    if let Decision::Reject(r) = (0..)
        .map(|i| w.decide(8_000 + i))
        .find(is_rejected)
        .unwrap()
    {
        assert_eq!(r.reason, TripReason::Adaptive);
    }
    // The upstream heals: the share falls to 0 and the circuit closes.
    let mut now = 8_100;
    while now < 30_000 && w.state().state != State::Closed {
        w.request(now, &answer(200, 1, 1));
        if now % 100 == 0 {
            w.flush(now);
        }
        now += 2;
    }
    assert_eq!(w.state().state, State::Closed, "{:?}", w.transitions);
    assert!(now < 20_000, "closed {} ms after the heal", now - 8_100);
}

#[test]
fn an_adaptive_circuit_with_nothing_succeeding_rejects_everything_and_probes() {
    let mut w = Worker::new(adaptive());
    for i in 0..20 {
        w.request(i, &answer(503, 1, 1));
    }
    w.flush(100);
    let st = w.state();
    assert_eq!(
        (st.state, st.reason, st.shed),
        (State::Open, Some(TripReason::Adaptive), SHED_ALL)
    );
    assert!(
        (0..500).all(|i| is_rejected(&w.decide(200 + i))),
        "everything, until the sleep window ends"
    );
    assert!(matches!(w.decide(1_300), Decision::Probe(_)));
}

#[test]
fn a_latency_trip_stays_binary_under_adaptive_shedding() {
    let mut c = adaptive();
    c.latency_p95_threshold = Some(Duration::from_millis(100));
    let mut w = Worker::new(c);
    for i in 0..20 {
        w.request(i, &answer(200, 500, 1));
    }
    w.flush(100);
    let st = w.state();
    assert_eq!(
        (st.state, st.reason),
        (State::Open, Some(TripReason::LatencyP95))
    );
    assert!((0..100).all(|i| is_rejected(&w.decide(200 + i))));
}

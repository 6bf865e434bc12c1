//! SPEC scenarios of the policy core, end to end through its public API, on both targets.
//!
//! The filter runs policy-core compiled to `wasm32-unknown-unknown` inside Envoy's V8, so the same
//! scenarios run natively (`cargo test`) and under `wasm-bindgen-test` in node
//! (`cargo test -p policy-core --target wasm32-unknown-unknown --test scenarios` with
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner`): arithmetic that differs
//! on a 32-bit `usize` or a missing platform feature would show up here. No proptest in this file
//! (it is not built for wasm32); the randomized versions live in `tests/properties.rs`.
// Test code: a failed unwrap is a failed test (house rules allow it outside the library).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use policy_core::breaker::{BreakerState, Decision, FixedJitter, Rejection, State};
use policy_core::config::{BreakerConfig, Config, KeyBy, Mode};
use policy_core::encoding::{DecodeError, SlotState};
use policy_core::keys::{key_for, may_create_label, sanitize_key, KeyRegistry};
use policy_core::resets::{parse_snapshot, ResetTracker};
use policy_core::retry::{
    budget_allows_retry, CompiledRetry, RequestView, RetryDecision, MAX_RETRIES_HEADER,
    RETRY_GRPC_ON_HEADER, RETRY_ON_HEADER, ROUTER_RETRY_HEADERS,
};
use policy_core::window::{
    bucket_ms, threshold_us, trip_reason, Outcome, Recorder, TripReason, Window,
};

// ---- helpers ----------------------------------------------------------------------------------

fn outcome(status: u16, latency_ms: u64) -> Outcome {
    Outcome {
        http_status: Some(status),
        latency_us: Some(latency_ms * 1000),
        attempts: 1,
        ..Default::default()
    }
}

/// Records `outcomes` at `now_ms` through one worker's recorder, merges it into `w`, returns the
/// window's totals then (what the filter's tick does).
fn record(w: &mut Window, cfg: &BreakerConfig, now_ms: u64, outcomes: &[Outcome]) {
    let epoch = now_ms / bucket_ms(cfg);
    let mut r = Recorder::new(threshold_us(cfg)).unwrap();
    for o in outcomes {
        r.record(epoch, o, o.failure(&cfg.failure)).unwrap();
    }
    let mut scratch = Vec::new();
    assert!(w.merge_recorder(&r, epoch, &mut scratch));
}

fn evaluate(s: &mut BreakerState, w: &Window, cfg: &BreakerConfig, now_ms: u64) -> Option<State> {
    let totals = w.totals(now_ms / bucket_ms(cfg));
    s.evaluate(&totals, cfg, now_ms, &mut FixedJitter(0.0))
        .map(|t| t.to)
}

fn small_breaker() -> BreakerConfig {
    let json = br#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 10,
        "error_rate_threshold": 0.5, "latency_p95_threshold": "200ms", "sleep_window": "5s",
        "max_sleep_window": "30s", "half_open_max_probes": 2, "half_open_successes_to_close": 2}}"#;
    Config::parse(json).unwrap().breaker
}

fn probe_id(d: Decision) -> u32 {
    match d {
        Decision::Probe(id) => id,
        other => panic!("expected a probe, got {other:?}"),
    }
}

// ---- configuration ------------------------------------------------------------------------------

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn empty_config_gives_spec_defaults() {
    let c = Config::parse(b"{}").unwrap();
    assert_eq!(c.key_by, KeyBy::Cluster);
    assert_eq!(c.max_keys, 1024);
    assert_eq!(c.mode, Mode::Enforce);
    let b = &c.breaker;
    assert_eq!(b.window, Duration::from_secs(60));
    assert_eq!(b.buckets, 12);
    assert_eq!(b.min_requests, 20);
    assert_eq!(b.error_rate_threshold, 0.3);
    assert_eq!(b.latency_p95_threshold, Some(Duration::from_millis(800)));
    assert_eq!(b.sleep_window, Duration::from_secs(30));
    assert_eq!(b.max_sleep_window, Duration::from_secs(300));
    assert_eq!(
        (b.half_open_max_probes, b.half_open_successes_to_close),
        (3, 3)
    );
    assert!(b.failure.upstream_resets);
    assert!(b.failure.is_http_failure(503) && !b.failure.is_http_failure(404));
    assert!(b.failure.is_grpc_failure(14) && !b.failure.is_grpc_failure(5));
    let names: Vec<&str> = c.retry.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["grpc", "idempotent", "unsafe"]);
    assert_eq!(c.retry.budget.ratio, 0.2);
    assert!(c.overrides.is_empty() && c.reset_signals.is_none());
    assert_eq!(c, Config::default());
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn bad_config_is_rejected_with_its_field_path() {
    let e = Config::parse(br#"{"breaker": {"error_rate_threshold": 1.5}}"#).unwrap_err();
    assert_eq!(e.path, "breaker.error_rate_threshold");
    assert!(
        e.to_string()
            .starts_with("config error at breaker.error_rate_threshold:"),
        "{e}"
    );
    assert!(e.reason.contains("1.5"), "{e}");
    let e = Config::parse(br#"{"retry": {"policies": [{"name": "p", "max_retries": 11}]}}"#)
        .unwrap_err();
    assert_eq!(e.path, "retry.policies[0].max_retries");
    let e = Config::parse(br#"{"breaker": {"windw": "10s"}}"#).unwrap_err();
    assert!(e.path.starts_with("breaker"), "unknown field path: {e}");
    let e = Config::parse(br#"{"breaker": {"window": "10s", "buckets": 200}}"#).unwrap_err();
    assert_eq!(e.path, "breaker.buckets");
}

// ---- tripping -----------------------------------------------------------------------------------

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn error_rate_trips_only_after_min_requests() {
    let cfg = small_breaker();
    let mut w = Window::new(cfg.buckets, 0);
    let mut s = BreakerState::default();
    record(&mut w, &cfg, 1_000, &[outcome(503, 5); 9]);
    assert_eq!(
        evaluate(&mut s, &w, &cfg, 1_000),
        None,
        "9 failures < min_requests 10"
    );
    assert_eq!(s.state, State::Closed);
    record(&mut w, &cfg, 2_000, &[outcome(503, 5)]);
    assert_eq!(evaluate(&mut s, &w, &cfg, 2_000), Some(State::Open));
    assert_eq!(s.reason, Some(TripReason::ErrorRate));
    assert_eq!(s.open_until_ms, 7_000, "sleep 5s, jitter 1.0");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn latency_p95_trips_at_threshold() {
    let cfg = small_breaker();
    // 20 samples: the P95 is the 19th smallest. One slow sample: no trip.
    let mut w = Window::new(cfg.buckets, 0);
    record(&mut w, &cfg, 0, &[outcome(200, 10); 19]);
    record(&mut w, &cfg, 1_500, &[outcome(200, 200)]);
    let mut s = BreakerState::default();
    assert_eq!(evaluate(&mut s, &w, &cfg, 1_500), None);
    // A second sample exactly at the threshold: the 19th smallest is 200 ms ≥ 200 ms.
    record(&mut w, &cfg, 1_600, &[outcome(200, 200)]);
    let totals = w.totals(1);
    assert_eq!(totals.latency_samples, 21);
    // 21 samples: rank 20; 19 fast, so the 20th is slow.
    assert_eq!(trip_reason(&totals, &cfg), Some(TripReason::LatencyP95));
    assert_eq!(evaluate(&mut s, &w, &cfg, 1_600), Some(State::Open));
    assert_eq!(s.reason, Some(TripReason::LatencyP95));
    let p95 = w.p95_us(1, &mut Vec::new()).unwrap();
    assert!((200_000..=204_000).contains(&p95), "reported P95 {p95}");
}

// ---- OPEN / HALF_OPEN ---------------------------------------------------------------------------

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn open_half_open_closed_with_probe_quota() {
    let cfg = small_breaker();
    let mut s = BreakerState::default();
    s.trip(TripReason::ErrorRate, &cfg, 0, &mut FixedJitter(0.0))
        .unwrap();
    assert_eq!(
        s.decide(Mode::Enforce, &cfg, 4_001, &mut FixedJitter(0.0))
            .decision,
        Decision::Reject(Rejection {
            reason: TripReason::ErrorRate,
            retry_after_s: 1
        })
    );
    // The first request after the sleep turns the circuit HALF_OPEN and is a probe.
    let step = s.decide(Mode::Enforce, &cfg, 5_000, &mut FixedJitter(0.0));
    assert_eq!(
        step.transition.map(|t| (t.from, t.to)),
        Some((State::Open, State::HalfOpen))
    );
    let p0 = probe_id(step.decision);
    let p1 = probe_id(
        s.decide(Mode::Enforce, &cfg, 5_001, &mut FixedJitter(0.0))
            .decision,
    );
    // Quota 2: the third concurrent request is rejected.
    assert!(matches!(
        s.decide(Mode::Enforce, &cfg, 5_002, &mut FixedJitter(0.0))
            .decision,
        Decision::Reject(_)
    ));
    assert_eq!(s.probes_in_flight(), 2);
    let t = s
        .complete_probe(p0, true, &cfg, 5_100, &mut FixedJitter(0.0))
        .unwrap();
    assert!(!t.is_change(), "one success of two keeps HALF_OPEN");
    let t = s
        .complete_probe(p1, true, &cfg, 5_200, &mut FixedJitter(0.0))
        .unwrap();
    assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
    assert_eq!(s.state, State::Closed);
    assert_eq!(s.generation, 1, "closing clears the window");
    assert_eq!(
        s.decide(Mode::Enforce, &cfg, 5_300, &mut FixedJitter(0.0))
            .decision,
        Decision::Allow
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn failed_probe_reopens_with_doubled_sleep() {
    let cfg = small_breaker();
    let mut s = BreakerState::default();
    let t = s
        .trip(TripReason::ErrorRate, &cfg, 0, &mut FixedJitter(0.0))
        .unwrap();
    assert_eq!(t.open_for_ms, 5_000);
    let mut sleeps = Vec::new();
    for _ in 0..4 {
        let now = s.open_until_ms;
        let id = probe_id(
            s.decide(Mode::Enforce, &cfg, now, &mut FixedJitter(0.0))
                .decision,
        );
        let t = s
            .complete_probe(id, false, &cfg, now, &mut FixedJitter(0.0))
            .unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        sleeps.push(t.open_for_ms);
    }
    assert_eq!(sleeps, [10_000, 20_000, 30_000, 30_000], "capped at 30s");
    // The jitter stretches the sleep by at most 20%.
    let mut s2 = BreakerState::default();
    let t = s2
        .trip(TripReason::ErrorRate, &cfg, 0, &mut FixedJitter(0.999_999))
        .unwrap();
    assert!((5_000..=6_000).contains(&t.open_for_ms), "{t:?}");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn modes_dry_run_forced_open_disabled() {
    let cfg = small_breaker();
    let mut open = BreakerState::default();
    open.trip(TripReason::LatencyP95, &cfg, 0, &mut FixedJitter(0.0))
        .unwrap();
    // dry_run: the decision is computed, never enforced.
    let mut s = open.clone();
    assert_eq!(
        s.decide(Mode::DryRun, &cfg, 1_000, &mut FixedJitter(0.0))
            .decision,
        Decision::DryRunReject(Rejection {
            reason: TripReason::LatencyP95,
            retry_after_s: 4
        })
    );
    // forced_open: reject everything, even a CLOSED circuit, retry-after = sleep_window.
    let mut closed = BreakerState::default();
    let step = closed.decide(Mode::ForcedOpen, &cfg, 1_000, &mut FixedJitter(0.0));
    assert_eq!(
        step.decision,
        Decision::Reject(Rejection {
            reason: TripReason::ForcedOpen,
            retry_after_s: 5
        })
    );
    assert!(!step.changed);
    // disabled: pass through, even an OPEN circuit, and set no retry headers.
    let mut s = open.clone();
    assert_eq!(
        s.decide(Mode::Disabled, &cfg, 1_000, &mut FixedJitter(0.0))
            .decision,
        Decision::PassThrough
    );
    let retry = CompiledRetry::new(&Config::default().retry);
    let get = RequestView {
        method: "GET",
        path: "/",
        content_type: None,
        headers: &(),
    };
    assert_eq!(
        retry.decide(&get, Mode::Disabled, false, true),
        RetryDecision::NoHeaders
    );
    assert_eq!(retry.headers_to_strip(), &ROUTER_RETRY_HEADERS);
}

// ---- retries ------------------------------------------------------------------------------------

fn headers_of(d: RetryDecision<'_>) -> Vec<(String, String)> {
    d.headers()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn retry_policy_selection_and_headers_for_get_post_grpc() {
    let retry = CompiledRetry::new(&Config::default().retry);
    let get = RequestView {
        method: "GET",
        path: "/items",
        content_type: None,
        headers: &(),
    };
    let post = RequestView {
        method: "POST",
        path: "/items",
        content_type: Some("application/json"),
        headers: &(),
    };
    let grpc = RequestView {
        method: "POST",
        path: "/pkg.Svc/Call",
        content_type: Some("application/grpc+proto"),
        headers: &(),
    };
    assert_eq!(retry.select(&get).map(|p| p.name()), Some("idempotent"));
    assert_eq!(retry.select(&post).map(|p| p.name()), Some("unsafe"));
    assert_eq!(retry.select(&grpc).map(|p| p.name()), Some("grpc"));
    assert_eq!(
        headers_of(retry.decide(&get, Mode::Enforce, false, true)),
        pairs(&[(RETRY_ON_HEADER, "5xx,reset"), (MAX_RETRIES_HEADER, "2")])
    );
    assert_eq!(
        headers_of(retry.decide(&post, Mode::Enforce, false, true)),
        pairs(&[
            (RETRY_ON_HEADER, "connect-failure,refused-stream"),
            (MAX_RETRIES_HEADER, "1")
        ])
    );
    assert_eq!(
        headers_of(retry.decide(&grpc, Mode::Enforce, false, true)),
        pairs(&[
            (RETRY_ON_HEADER, "reset,connect-failure,refused-stream"),
            (RETRY_GRPC_ON_HEADER, "unavailable"),
            (MAX_RETRIES_HEADER, "3")
        ])
    );
    // A HALF_OPEN probe is never retried.
    assert_eq!(
        headers_of(retry.decide(&get, Mode::Enforce, true, true)),
        pairs(&[(MAX_RETRIES_HEADER, "0")])
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn retry_budget_exhaustion_switches_retries_off() {
    let c = Config::default();
    let budget = &c.retry.budget;
    let window = c.breaker.window;
    // Allowance = 0.2 × 1000 requests + 10/s × 60 s = 800 retries.
    assert!(budget_allows_retry(budget, window, 1_000, 799));
    assert!(!budget_allows_retry(budget, window, 1_000, 800));
    // Through the window's counters: 1000 requests of 2 attempts each is 1000 retries.
    let mut w = Window::new(c.breaker.buckets, 0);
    let retried = Outcome {
        attempts: 2,
        ..outcome(200, 1)
    };
    record(&mut w, &c.breaker, 0, &vec![retried; 1_000]);
    let t = w.totals(0);
    assert_eq!((t.requests, t.retries), (1_000, 1_000));
    let allows = budget_allows_retry(budget, window, t.requests, t.retries);
    assert!(!allows);
    let retry = CompiledRetry::new(&c.retry);
    let get = RequestView {
        method: "GET",
        path: "/",
        content_type: None,
        headers: &(),
    };
    let d = retry.decide(&get, Mode::Enforce, false, allows);
    assert!(d.budget_denied());
    assert_eq!(headers_of(d), pairs(&[(MAX_RETRIES_HEADER, "0")]));
}

// ---- keys ---------------------------------------------------------------------------------------

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn forged_host_is_sanitized_into_a_harmless_key() {
    let mut key = String::new();
    key_for(KeyBy::Authority, "c", "r", "a;.;b=.=c", &mut key);
    assert_eq!(key, "a_._b_._c");
    assert!(!key.contains(";.;") && !key.contains("=.="));
    assert_eq!(sanitize_key("A;.;B=.=C"), "a_._b_._c");
    assert_eq!(sanitize_key(&"x".repeat(500)).len(), 128);
    key_for(
        KeyBy::ClusterRoute,
        "outbound|8080||Reviews",
        "",
        "",
        &mut key,
    );
    assert_eq!(key, "outbound|8080||reviews|_unknown");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn registry_is_bounded_lru_and_late_keys_report_as_other() {
    let mut reg: KeyRegistry<u32> = KeyRegistry::new(3);
    let idle = |_: &u32| true;
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        reg.insert(k, i as u32, i as u64, idle).unwrap();
    }
    reg.touch("a", 10); // "b" is now the least recently used.
    reg.insert("d", 3, 11, idle).unwrap();
    assert_eq!(reg.len(), 3);
    assert!(!reg.contains("b") && reg.contains("a") && reg.contains("d"));
    // A busy (not idle) key is never evicted by a flood.
    let mut busy: KeyRegistry<bool> = KeyRegistry::new(1);
    busy.insert("open", true, 0, |v| !*v).unwrap();
    assert!(busy.insert("flood", false, 1, |v| !*v).is_err());
    assert!(busy.contains("open"));
    // Labels: the first max_keys keys own one forever; later ones are "_other".
    assert!(may_create_label(0, 2) && may_create_label(1, 2));
    assert!(!may_create_label(2, 2));
}

// ---- window merge and encoding ------------------------------------------------------------------

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn window_merge_of_two_workers_equals_one_window() {
    let cfg = small_breaker();
    let a: Vec<Outcome> = (0..60)
        .map(|i| outcome(if i % 4 == 0 { 503 } else { 200 }, 1 + i * 3))
        .collect();
    let b: Vec<Outcome> = (0..45).map(|i| outcome(200, 5 + i * 7)).collect();
    let (mut wa, mut wb, mut all) = (
        Window::new(cfg.buckets, 0),
        Window::new(cfg.buckets, 0),
        Window::new(cfg.buckets, 0),
    );
    // Worker a flushes twice, worker b's recorder lands in between: the shared window is the same
    // as one worker recording everything in order.
    record(&mut wa, &cfg, 1_000, &a[..30]);
    record(&mut wb, &cfg, 1_000, &b);
    record(&mut wa, &cfg, 1_000, &b);
    record(&mut wa, &cfg, 3_000, &a[30..]);
    record(&mut all, &cfg, 1_000, &a[..30]);
    record(&mut all, &cfg, 1_000, &b);
    record(&mut all, &cfg, 3_000, &a[30..]);
    let mut scratch = Vec::new();
    assert_eq!(wb.totals(3).samples, 45);
    assert_eq!(wa, all);
    assert_eq!(wa.totals(3), all.totals(3));
    assert_eq!(wa.totals(3).samples, 105);
    assert_eq!(wa.p95_us(3, &mut scratch), all.p95_us(3, &mut Vec::new()));
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn slot_encoding_round_trips_and_rejects_garbage() {
    let cfg = small_breaker();
    let mut breaker = BreakerState::default();
    breaker
        .trip(
            TripReason::KernelResets,
            &cfg,
            1_700_000_000_000,
            &mut FixedJitter(0.5),
        )
        .unwrap();
    let slot = SlotState {
        key: "outbound|8080||reviews.default.svc".into(),
        breaker,
        last_active_ms: 1_700_000_000_000,
    };
    let bytes = slot.encode();
    assert_eq!(SlotState::decode(&bytes), Ok(slot.clone()));
    assert_eq!(
        SlotState::peek(&bytes),
        Ok((slot.key.as_bytes(), slot.breaker.state))
    );
    let mut w = Window::new(cfg.buckets, 4);
    record(&mut w, &cfg, 2_000, &[outcome(200, 12), outcome(503, 900)]);
    w.learn_host("10.0.0.5:8080", 3);
    assert_eq!(Window::decode(&w.encode()), Ok(w.clone()));

    assert_eq!(SlotState::decode(b""), Err(DecodeError::BadHeader));
    assert_eq!(SlotState::decode(b"XX"), Err(DecodeError::BadHeader));
    assert_eq!(
        SlotState::decode(&[b'M', 9, b'S']),
        Err(DecodeError::UnsupportedVersion(9))
    );
    assert_eq!(SlotState::decode(&w.encode()), Err(DecodeError::WrongKind));
    assert_eq!(
        SlotState::decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated)
    );
    let mut long = bytes.clone();
    long.push(7);
    assert_eq!(SlotState::decode(&long), Err(DecodeError::TrailingBytes));
    let mut overflow = vec![b'M', 1, b'W'];
    overflow.extend_from_slice(&[0xff; 11]);
    assert!(Window::decode(&overflow).is_err());
}

// ---- sidecar ------------------------------------------------------------------------------------

fn snapshot(started: u64, now: u64, resets: u64, refused: u64) -> Vec<u8> {
    format!(
        r#"{{"started_at_ms":{started},"now_ms":{now},"peers":[{{"addr":"10.0.0.5","port":8080,"peer":"10.0.0.5:8080","resets":{resets},"refused":{refused},"timeouts":0,"last_ms":{now}}}]}}"#
    )
    .into_bytes()
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn sidecar_snapshot_deltas_survive_a_restart() {
    let mut tracker = ResetTracker::default();
    let first = parse_snapshot(&snapshot(100, 1_000, 5, 1)).unwrap();
    assert!(
        tracker.observe(&first).is_empty(),
        "first snapshot is the baseline"
    );
    let second = parse_snapshot(&snapshot(100, 2_000, 8, 3)).unwrap();
    let d = tracker.observe(&second).to_vec();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].peer.to_string(), "10.0.0.5:8080");
    assert_eq!((d[0].resets, d[0].refused, d[0].total()), (3, 2, 5));
    // The sidecar restarts: counters start again from small values; no negative or doubled burst.
    let restarted = parse_snapshot(&snapshot(2_500, 3_000, 1, 0)).unwrap();
    assert!(tracker.observe(&restarted).is_empty());
    assert_eq!(tracker.started_at_ms(), Some(2_500));
    let after = parse_snapshot(&snapshot(2_500, 4_000, 4, 0)).unwrap();
    let d = tracker.observe(&after).to_vec();
    assert_eq!(d.iter().map(|d| d.total()).sum::<u64>(), 3);
    assert!(parse_snapshot(b"{\"started_at_ms\":1}").is_err());
    assert!(parse_snapshot(b"not json").is_err());
}

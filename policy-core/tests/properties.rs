//! Property tests of policy-core's invariants, over random event sequences and clocks.
//!
//! Why these and not more unit tests: the breaker is shared by every Envoy worker through
//! compare-and-swap on encoded bytes, and the window is merged from many workers' recorders, so the
//! bugs that matter show up only under interleavings and sample sets nobody writes by hand. Each
//! property states one SPEC promise (probe quota, legal transitions, exact P95 trip, P95 within 2%,
//! merge = one recorder, lossless encoding) and checks it against an independent, obvious model.
//!
//! Native only: proptest is not built for wasm32 (the wasm run uses `tests/scenarios.rs`).
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed unwrap is a failed test (house rules allow it outside the library).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use policy_core::breaker::{BreakerState, Decision, Probe, SplitMix64, State, Transition};
use policy_core::config::{BreakerConfig, Config, Mode};
use policy_core::encoding::{DecodeError, SlotState};
use policy_core::window::{
    bucket_ms, nearest_rank, threshold_us, trip_reason, Bucket, Counts, FailureClass, HostCursor,
    Outcome, Recorder, TripReason, Window, FAILURE_CLASSES, HIST_HIGHEST_US, MAX_HOSTS_PER_KEY,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Breaker: probe quota and legal transitions, with workers sharing the state through CAS on bytes.
// ---------------------------------------------------------------------------------------------

/// Envoy's shared data as proxy-wasm-cpp-host implements it (`shared_data.cc`): one mutex, a CAS
/// token per entry that changes on every write, and a token checked **only if the entry exists**
/// (an absent entry is written blind; there is no create-if-absent). The filter creates its
/// entries at configure time, so the model starts with them present.
#[derive(Default)]
struct Envoy {
    entries: std::collections::HashMap<&'static str, (Vec<u8>, u32)>,
    next_token: u32,
}

impl Envoy {
    fn get(&self, key: &'static str) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    /// `Err(())` is CasMismatch.
    fn set(&mut self, key: &'static str, value: Vec<u8>, cas: u32) -> Result<(), ()> {
        if let Some((_, token)) = self.entries.get(key) {
            if cas != 0 && cas != *token {
                return Err(());
            }
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.entries.insert(key, (value, self.next_token));
        Ok(())
    }
}

/// What a worker is doing: each host call (a read, then a write) is one scheduling step, so
/// other workers' calls interleave between a worker's read and its write.
#[derive(Debug, Clone)]
enum Job {
    /// A request arrives: decide (OPEN→HALF_OPEN, probe admission) on the state entry.
    Decide,
    /// A probe this worker holds completes.
    Complete { id: u32, success: bool },
    /// A flush: merge this recorder into the window entry, then evaluate the trip for the
    /// window's generation (two entries, read and written in the filter's order).
    Flush { failed: u64, ok: u64 },
}

#[derive(Debug, Clone)]
enum Phase {
    /// The next step reads.
    Read,
    /// The next step writes these bytes with this token.
    Write { bytes: Vec<u8>, token: u32 },
}

#[derive(Debug, Clone)]
struct Running {
    job: Job,
    phase: Phase,
    attempts: usize,
    /// Flush: the window part is done; what is left is the trip on the state, for generation g
    /// with these totals.
    trip: Option<(u32, Counts)>,
    /// Decide: the probe id the pending write admits.
    admits: Option<u32>,
    /// Flush: the recorder's samples, merged into the pending window write, and their epoch.
    merging: u64,
    epoch: u64,
}

#[derive(Debug, Clone)]
enum Op {
    /// Worker `w` starts a request (if idle).
    Decide(usize),
    /// Worker `w` completes one of its probes (if idle and holding one).
    Complete {
        worker: usize,
        pick: usize,
        success: bool,
    },
    /// Worker `w` starts a flush of `failed` failures and `ok` successes (if idle).
    Flush { worker: usize, failed: u64, ok: u64 },
    /// Worker `w` makes its next host call.
    Step(usize),
    /// The wall clock moves forward.
    Forward(u64),
    /// The wall clock steps back (NTP).
    Back(u64),
}

fn op_strategy(workers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..workers).prop_map(Op::Decide),
        3 => (0..workers, any::<usize>(), any::<bool>())
            .prop_map(|(worker, pick, success)| Op::Complete { worker, pick, success }),
        2 => (0..workers, 0u64..30, 0u64..30)
            .prop_map(|(worker, failed, ok)| Op::Flush { worker, failed, ok }),
        12 => (0..workers).prop_map(Op::Step),
        3 => prop_oneof![0u64..50, 0u64..2_000, 0u64..40_000].prop_map(Op::Forward),
        1 => prop_oneof![0u64..2_000, 0u64..7_200_000].prop_map(Op::Back),
    ]
}

fn breaker_cfg_strategy() -> impl Strategy<Value = BreakerConfig> {
    (1u32..6, 1u32..6, 100u64..5_000, 1u64..8, 1u32..30).prop_map(
        |(probes, to_close, sleep_ms, max_factor, min_requests)| {
            let mut c = Config::default().breaker;
            c.half_open_max_probes = probes;
            c.half_open_successes_to_close = to_close;
            c.sleep_window = Duration::from_millis(sleep_ms);
            c.max_sleep_window = Duration::from_millis(sleep_ms * max_factor);
            c.min_requests = min_requests;
            c.error_rate_threshold = 0.5;
            c
        },
    )
}

/// SPEC's state changes; anything else is a bug.
fn legal_change(from: State, to: State) -> bool {
    matches!(
        (from, to),
        (State::Closed, State::Open)
            | (State::Open, State::HalfOpen)
            | (State::HalfOpen, State::Closed)
            | (State::HalfOpen, State::Open)
    )
}

/// Checks a transition returned by the state machine against the states seen before and after.
fn check_transition(
    t: &Option<Transition>,
    before: State,
    after: State,
) -> Result<(), TestCaseError> {
    match t {
        Some(t) if t.is_change() => {
            prop_assert!(legal_change(t.from, t.to), "illegal transition {t:?}");
            prop_assert_eq!(
                (t.from, t.to),
                (before, after),
                "transition does not match states"
            );
            if t.to == State::Open {
                prop_assert!(t.reason.is_some() && t.open_for_ms > 0, "{:?}", t);
            }
        }
        Some(t) => {
            // The only non-change a method reports: a probe success that keeps HALF_OPEN.
            prop_assert_eq!((t.from, t.to), (State::HalfOpen, State::HalfOpen));
            prop_assert_eq!((before, after), (State::HalfOpen, State::HalfOpen));
        }
        None => prop_assert_eq!(before, after, "state changed without a transition"),
    }
    Ok(())
}

const STATE: &str = "s/0";
const WINDOW: &str = "w/0";
/// The filter's CAS_ATTEMPTS.
const ATTEMPTS: usize = 16;
/// The model's window: 10 buckets of 1 s.
const BUCKET_MS: u64 = 1_000;
const BUCKETS: u32 = 10;

/// What the model checks at the end of a run.
#[derive(Default, Debug)]
struct Tally {
    /// Samples whose window write succeeded, by the window generation they went into.
    merged: std::collections::HashMap<u32, u64>,
    /// Whether the clock ever stepped back or moved past the window since the first merge
    /// (samples may then legitimately leave it).
    lossy: bool,
    first_epoch: Option<u64>,
}

/// Runs `ops` over `workers` workers sharing one state entry and one window entry under Envoy's
/// CAS rule, one host call per step, and checks after every step: the probes in flight never
/// exceed the quota, every probe is held by exactly one worker, only SPEC transitions happen, a
/// trip is never lost, and no sample is counted twice.
fn run_shared(
    cfg: &BreakerConfig,
    workers: usize,
    ops: &[Op],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut envoy = Envoy::default();
    envoy
        .set(
            STATE,
            SlotState {
                key: "k".into(),
                ..Default::default()
            }
            .encode(),
            0,
        )
        .unwrap();
    envoy
        .set(WINDOW, Window::new(BUCKETS, 0).encode(), 0)
        .unwrap();
    let mut jitter = SplitMix64(seed);
    let mut now = 10_000_000u64;
    let mut running: Vec<Option<Running>> = vec![None; workers];
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); workers];
    let mut tally = Tally::default();
    let mut last_state = State::Closed;

    for op in ops {
        match *op {
            Op::Forward(ms) => {
                now += ms;
                if tally
                    .first_epoch
                    .is_some_and(|e| now / BUCKET_MS >= e + u64::from(BUCKETS))
                {
                    tally.lossy = true;
                }
                continue;
            }
            Op::Back(ms) => {
                now = now.saturating_sub(ms);
                tally.lossy = true;
                continue;
            }
            Op::Decide(w) if running[w].is_none() => {
                running[w] = Some(Running::new(Job::Decide));
            }
            Op::Complete {
                worker,
                pick,
                success,
            } if running[worker].is_none() => {
                if held[worker].is_empty() {
                    continue;
                }
                let id = held[worker][pick % held[worker].len()];
                running[worker] = Some(Running::new(Job::Complete { id, success }));
            }
            Op::Flush { worker, failed, ok } if running[worker].is_none() => {
                running[worker] = Some(Running::new(Job::Flush { failed, ok }));
            }
            Op::Step(w) => {
                if let Some(r) = running[w].take() {
                    running[w] = step(
                        cfg,
                        &mut envoy,
                        r,
                        w,
                        now,
                        &mut jitter,
                        &mut held,
                        &mut tally,
                    )?;
                }
            }
            _ => continue,
        }
        // After every step: the invariants of the shared state.
        let st = SlotState::decode(&envoy.get(STATE).unwrap().0).unwrap();
        let b = &st.breaker;
        prop_assert!(
            b.probes_in_flight() <= cfg.half_open_max_probes as usize,
            "{} probes in flight, quota {}",
            b.probes_in_flight(),
            cfg.half_open_max_probes
        );
        if b.state != State::HalfOpen {
            prop_assert_eq!(b.probes_in_flight(), 0);
        }
        for p in &b.probes {
            let holders = held.iter().filter(|h| h.contains(&p.id)).count();
            prop_assert_eq!(holders, 1, "probe {:?} held by {} workers", p, holders);
        }
        if b.state != last_state {
            prop_assert!(
                legal_change(last_state, b.state),
                "{:?} -> {:?}",
                last_state,
                b.state
            );
            last_state = b.state;
        }
        // OPEN never lasts longer than max_sleep_window x 1.2 from now, whatever the clock did.
        if b.state == State::Open && !b.open_is_over(cfg, now) {
            prop_assert!(
                b.open_until_ms - now <= policy_core::breaker::max_open_ms(cfg),
                "open for {} more ms",
                b.open_until_ms - now
            );
        }
        // No sample counted twice (a retried CAS merges the recorder once); without clock steps
        // or window-long jumps none is lost either.
        let w = Window::decode(&envoy.get(WINDOW).unwrap().0).unwrap();
        let in_window: u64 = w.buckets.iter().map(|b| b.counts.samples).sum();
        let merged = tally.merged.get(&w.generation).copied().unwrap_or(0);
        prop_assert!(
            in_window <= merged,
            "{} samples in the window, {} merged",
            in_window,
            merged
        );
        if !tally.lossy {
            prop_assert_eq!(in_window, merged, "samples lost");
        }
    }
    // Quiescence: every job runs to its end, then one more flush; no trip may be lost.
    for _ in 0..10_000 {
        if running.iter().all(Option::is_none) {
            break;
        }
        for w in 0..workers {
            if let Some(r) = running[w].take() {
                running[w] = step(
                    cfg,
                    &mut envoy,
                    r,
                    w,
                    now,
                    &mut jitter,
                    &mut held,
                    &mut tally,
                )?;
            }
        }
    }
    let mut last = Some(Running::new(Job::Flush { failed: 0, ok: 0 }));
    while let Some(r) = last.take() {
        last = step(
            cfg,
            &mut envoy,
            r,
            0,
            now,
            &mut jitter,
            &mut held,
            &mut tally,
        )?;
    }
    let st = SlotState::decode(&envoy.get(STATE).unwrap().0).unwrap();
    let w = Window::decode(&envoy.get(WINDOW).unwrap().0).unwrap();
    let totals = w.totals(now / BUCKET_MS);
    prop_assert!(
        !(st.breaker.state == State::Closed
            && w.generation == st.breaker.generation
            && trip_reason(&totals, cfg).is_some()),
        "trip lost: CLOSED with a tripping window {:?}",
        totals
    );
    Ok(())
}

impl Running {
    fn new(job: Job) -> Running {
        Running {
            job,
            phase: Phase::Read,
            attempts: 0,
            trip: None,
            admits: None,
            merging: 0,
            epoch: 0,
        }
    }
}

/// One host call of a running job. Returns the job if it is not finished.
#[allow(clippy::too_many_arguments)]
fn step(
    cfg: &BreakerConfig,
    envoy: &mut Envoy,
    mut r: Running,
    w: usize,
    now: u64,
    jitter: &mut SplitMix64,
    held: &mut [Vec<u32>],
    tally: &mut Tally,
) -> Result<Option<Running>, TestCaseError> {
    let window_part = matches!(r.job, Job::Flush { .. }) && r.trip.is_none();
    let key = if window_part { WINDOW } else { STATE };
    match std::mem::replace(&mut r.phase, Phase::Read) {
        Phase::Read => {
            let (bytes, token) = envoy.get(key).unwrap();
            if window_part {
                let Job::Flush { failed, ok } = r.job else {
                    unreachable!()
                };
                // The filter reads the state first for the generation; the model folds that read
                // in (the generation rule itself is unit-tested in the filter).
                let st = SlotState::decode(&envoy.get(STATE).unwrap().0).unwrap();
                let mut win = Window::decode(&bytes).unwrap();
                if win.generation != st.breaker.generation {
                    win.reset(BUCKETS, st.breaker.generation);
                }
                let now_epoch = now / BUCKET_MS;
                win.clear_future(now_epoch);
                let mut rec = Recorder::new(None).unwrap();
                let fail = Outcome {
                    http_status: Some(503),
                    attempts: 1,
                    ..Default::default()
                };
                let good = Outcome {
                    http_status: Some(200),
                    attempts: 1,
                    ..Default::default()
                };
                for _ in 0..failed {
                    rec.record(now_epoch, &fail, Some(FailureClass::HttpStatus))
                        .unwrap();
                }
                for _ in 0..ok {
                    rec.record(now_epoch, &good, None).unwrap();
                }
                let mut scratch = Vec::new();
                prop_assert!(win.merge_recorder(&rec, now_epoch, &mut scratch));
                r.merging = failed + ok;
                r.epoch = now_epoch;
                r.trip = None;
                r.phase = Phase::Write {
                    bytes: win.encode(),
                    token,
                };
                // Keep the totals for the trip that follows a successful write.
                r.admits = None;
                return Ok(Some(r));
            }
            let mut st = SlotState::decode(&bytes).unwrap();
            let before = st.breaker.state;
            let (t, changed) = match r.job {
                Job::Decide => {
                    let step = st.breaker.decide(Mode::Enforce, cfg, now);
                    r.admits = match step.decision {
                        Decision::Probe(id) => Some(id),
                        _ => None,
                    };
                    (step.transition, step.changed)
                }
                Job::Complete { id, success } => {
                    let t = st.breaker.complete_probe(id, success, cfg, now, jitter);
                    (t, t.is_some())
                }
                Job::Flush { .. } => {
                    let (gen, totals) = r.trip.unwrap();
                    if st.breaker.generation != gen {
                        // Closed (and maybe re-opened) since: these totals are not its window's.
                        return Ok(None);
                    }
                    let t = st.breaker.evaluate(&totals, cfg, now, jitter);
                    (t, t.is_some())
                }
            };
            check_transition(&t, before, st.breaker.state)?;
            if !changed {
                if let Job::Complete { id, .. } = r.job {
                    held[w].retain(|h| *h != id);
                }
                return Ok(None);
            }
            r.phase = Phase::Write {
                bytes: st.encode(),
                token,
            };
            Ok(Some(r))
        }
        Phase::Write { bytes, token } => {
            match envoy.set(key, bytes.clone(), token) {
                Ok(()) => {
                    if window_part {
                        let win = Window::decode(&bytes).unwrap();
                        *tally.merged.entry(win.generation).or_insert(0) += r.merging;
                        let first = tally.first_epoch.get_or_insert(r.epoch);
                        *first = (*first).min(r.epoch);
                        if now / BUCKET_MS >= *first + u64::from(BUCKETS) {
                            tally.lossy = true;
                        }
                        let totals = win.totals(now / BUCKET_MS);
                        r.trip = Some((win.generation, totals));
                        r.attempts = 0;
                        r.phase = Phase::Read;
                        return Ok(Some(r));
                    }
                    match r.job {
                        Job::Decide => {
                            if let Some(id) = r.admits {
                                held[w].push(id);
                            }
                        }
                        Job::Complete { id, .. } => held[w].retain(|h| *h != id),
                        Job::Flush { .. } => {}
                    }
                    Ok(None)
                }
                Err(()) => {
                    r.attempts += 1;
                    if r.attempts >= ATTEMPTS {
                        // Exhausted: the filter gives up this update (and a completed probe is
                        // simply no longer this worker's to report).
                        if let Job::Complete { id, .. } = r.job {
                            held[w].retain(|h| *h != id);
                        }
                        return Ok(None);
                    }
                    r.phase = Phase::Read;
                    Ok(Some(r))
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Quota, transitions, no lost trip and no double-counted sample, with 1–4 workers whose host
    /// calls interleave between each other's reads and writes (Envoy's CAS rule), random
    /// requests, probe completions, flushes, and the clock moving forward and stepping back.
    #[test]
    fn probes_never_exceed_quota_and_only_spec_transitions_happen(
        cfg in breaker_cfg_strategy(),
        workers in 1usize..5,
        ops in prop::collection::vec(op_strategy(4), 1..300),
        seed in any::<u64>(),
    ) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Decide(w) => Op::Decide(w % workers),
                Op::Complete { worker, pick, success } => Op::Complete { worker: worker % workers, pick, success },
                Op::Flush { worker, failed, ok } => Op::Flush { worker: worker % workers, failed, ok },
                Op::Step(w) => Op::Step(w % workers),
                a => a,
            })
            .collect();
        run_shared(&cfg, workers, &ops, seed)?;
    }

    /// Envoy's rule is what makes pre-creation necessary: two workers that both saw an entry
    /// absent and both "create" it leave only the second write. The filter therefore never
    /// writes an entry it read as absent; this pins the rule the model (and the fake host) use.
    #[test]
    fn an_absent_entry_is_written_blind_whatever_the_token(token in any::<u32>()) {
        let mut envoy = Envoy::default();
        prop_assert!(envoy.set(STATE, b"first".to_vec(), token).is_ok());
        prop_assert!(envoy.set(STATE, b"second".to_vec(), 0).is_ok(), "token 0 never checks");
        let (_, t) = envoy.get(STATE).unwrap();
        prop_assert!(envoy.set(STATE, b"third".to_vec(), t.wrapping_add(1).max(1)).is_err() || t.wrapping_add(1).max(1) == t);
        prop_assert!(envoy.set(STATE, b"third".to_vec(), t).is_ok());
    }

    /// Without evaluation noise, a trip followed by a long run of requests and completions must walk
    /// through every legal state (a liveness sanity check for the property above: it really
    /// reaches HALF_OPEN and both of its exits).
    #[test]
    fn open_half_open_cycles_reach_closed_or_reopen(
        cfg in breaker_cfg_strategy(),
        outcomes in prop::collection::vec(any::<bool>(), 1..60),
        seed in any::<u64>(),
    ) {
        let mut s = BreakerState::default();
        let mut rng = SplitMix64(seed);
        let mut now = 0u64;
        let t = s.trip(TripReason::ErrorRate, &cfg, now, &mut rng).unwrap();
        prop_assert!(t.open_for_ms >= cfg.sleep_window.as_millis() as u64);
        prop_assert!(t.open_for_ms as f64 <= (cfg.sleep_window.as_millis() as f64) * 1.2 + 1.0);
        let mut closed = false;
        for success in outcomes {
            now = now.max(s.open_until_ms);
            let before = s.state;
            let step = s.decide(Mode::Enforce, &cfg, now);
            check_transition(&step.transition, before, s.state)?;
            let Decision::Probe(id) = step.decision else {
                return Err(TestCaseError::fail(format!("HALF_OPEN with free quota must probe: {step:?}")));
            };
            let before = s.state;
            let t = s.complete_probe(id, success, &cfg, now, &mut rng);
            check_transition(&t, before, s.state)?;
            if s.state == State::Closed {
                closed = true;
                break;
            }
            if s.state == State::Open {
                let max = cfg.max_sleep_window.as_millis() as u64;
                prop_assert!(s.sleep_ms <= max, "sleep {} over max {}", s.sleep_ms, max);
            }
        }
        if closed {
            prop_assert_eq!(s.sleep_ms, cfg.sleep_window.as_millis() as u64);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Window: error rate, exact P95 trip, reported P95, merge.
// ---------------------------------------------------------------------------------------------

/// The exact nearest-rank P95 of `samples`: the ceil(0.95 n)-th smallest. Independent of the crate:
/// integer ceil of 95 n / 100, spelled out rather than through `div_ceil` as the crate does.
#[allow(clippy::manual_div_ceil)]
fn exact_p95(samples: &[u64]) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let n = v.len();
    let rank = (95 * n + 99) / 100;
    Some(v[rank - 1])
}

/// A latency sample for the trip property: at an offset from the threshold, or anywhere.
#[derive(Debug, Clone, Copy)]
enum Sample {
    Offset(i64),
    Absolute(u64),
}

fn ok_outcome(latency_us: u64, attempts: u32) -> Outcome {
    Outcome {
        http_status: Some(200),
        latency_us,
        attempts,
        ..Default::default()
    }
}

/// A latency sample spread over every order of magnitude of the histogram.
fn latency_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..300,
        300u64..100_000,
        100_000u64..10_000_000,
        10_000_000u64..=HIST_HIGHEST_US,
    ]
}

/// A random outcome: status, gRPC status, reset flag, latency, attempts.
fn outcome_strategy() -> impl Strategy<Value = Outcome> {
    (
        prop::option::of(prop_oneof![
            Just(200u16),
            Just(404),
            Just(429),
            Just(500),
            Just(503)
        ]),
        prop::option::of(0u32..17),
        any::<bool>(),
        latency_strategy(),
        prop_oneof![Just(0u32), Just(1), 2u32..5, Just(u32::MAX)],
    )
        .prop_map(
            |(http_status, grpc_status, upstream_reset, latency_us, attempts)| Outcome {
                http_status,
                grpc_status,
                upstream_reset,
                latency_us,
                attempts,
            },
        )
}

fn counts_strategy() -> impl Strategy<Value = Counts> {
    let big = prop_oneof![0u64..100, any::<u64>()];
    (
        big.clone(),
        prop::array::uniform4(big.clone()),
        big.clone(),
        big.clone(),
        big.clone(),
        big.clone(),
        big,
    )
        .prop_map(
            |(samples, failures, latency_samples, slow, requests, retries, kernel_resets)| Counts {
                samples,
                failures,
                latency_samples,
                slow,
                requests,
                retries,
                kernel_resets,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any counters at all, even saturated or inconsistent ones, give a rate in [0, 1].
    #[test]
    fn error_rate_of_any_counts_is_in_zero_one(a in counts_strategy(), b in counts_strategy()) {
        for c in [a, b, { let mut s = a; s.add(&b); s }] {
            let r = c.error_rate();
            prop_assert!((0.0..=1.0).contains(&r), "{r} for {c:?}");
        }
    }

    /// The error-rate trip equals the exact rational comparison failed / samples ≥ k / 1000 (no
    /// floating-point surprise at the threshold, e.g. 3 of 10 at 0.3 trips), with the
    /// `min_requests` guard.
    #[test]
    fn error_rate_trip_is_exact_at_decimal_thresholds(
        k in 1u64..=1000,
        samples in 0u64..2_000_000,
        failed_frac in 0u64..=1000,
        min_requests in 1u32..50,
    ) {
        let failed = samples * failed_frac / 1000;
        let mut cfg = Config::default().breaker;
        cfg.error_rate_threshold = k as f64 / 1000.0;
        cfg.latency_p95_threshold = None;
        cfg.min_requests = min_requests;
        let totals = Counts { samples, failures: [failed, 0, 0, 0], ..Default::default() };
        let exact = samples >= u64::from(min_requests) && failed * 1000 >= k * samples;
        prop_assert_eq!(trip_reason(&totals, &cfg) == Some(TripReason::ErrorRate), exact);
        // Right at the threshold: k of 1000 trips, k - 1 of 1000 does not.
        let at = Counts { samples: 1000, failures: [k, 0, 0, 0], ..Default::default() };
        let below = Counts { samples: 1000, failures: [k - 1, 0, 0, 0], ..Default::default() };
        cfg.min_requests = 1;
        prop_assert_eq!(trip_reason(&at, &cfg), Some(TripReason::ErrorRate));
        prop_assert_eq!(trip_reason(&below, &cfg), None);
    }

    /// Recorded outcomes (retried attempts included, up to u32::MAX of them) give a rate in [0, 1]
    /// in every bucket and in the window totals, and the rate is failed / samples.
    #[test]
    fn error_rate_of_recorded_windows_is_in_zero_one(
        outcomes in prop::collection::vec((0u64..15, outcome_strategy()), 0..120),
    ) {
        let cfg = Config::default().breaker;
        let mut w = Window::new(cfg.buckets, 0);
        let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
        let mut scratch = Vec::new();
        let mut sorted = outcomes;
        sorted.sort_by_key(|(e, _)| *e);
        for (epoch, o) in &sorted {
            if r.record(*epoch, o, o.failure(&cfg.failure)).is_err() {
                // Flushed late, at the new epoch: kept only while its bucket is in the window.
                let live = epoch - r.epoch() < u64::from(cfg.buckets);
                prop_assert_eq!(w.merge_recorder(&r, *epoch, &mut scratch), live);
                r.clear();
                r.record(*epoch, o, o.failure(&cfg.failure)).unwrap();
            }
        }
        let last = sorted.last().map_or(0, |(e, _)| *e);
        w.merge_recorder(&r, last, &mut scratch);
        for now in last..last + 14 {
            let t = w.totals(now);
            let rate = t.error_rate();
            prop_assert!((0.0..=1.0).contains(&rate), "{rate}");
            if t.samples > 0 && t.failed() <= t.samples {
                prop_assert!((rate - t.failed() as f64 / t.samples as f64).abs() < 1e-12);
            }
        }
    }

    /// The latency trip equals the exact nearest-rank P95 compared with the threshold, samples
    /// equal to the threshold included, whether the samples come through one recorder or many
    /// workers' recorders over several buckets of the window.
    #[test]
    fn p95_trip_decision_is_exact(
        threshold_ms in 1u64..2_000,
        // Offsets around the threshold, so that many samples land on it or just beside it.
        picks in prop::collection::vec(
            (0u64..12, 0usize..3, prop_oneof![
                3 => Just(Sample::Offset(0)),
                2 => (-3i64..=3).prop_map(Sample::Offset),
                2 => (-1_000_000i64..1_000_000).prop_map(Sample::Offset),
                1 => latency_strategy().prop_map(Sample::Absolute),
            ]),
            1..300,
        ),
    ) {
        let mut cfg = Config::default().breaker;
        cfg.latency_p95_threshold = Some(Duration::from_millis(threshold_ms));
        cfg.min_requests = 1;
        cfg.error_rate_threshold = 1.0;
        let t_us = threshold_ms * 1000;
        let samples: Vec<(u64, usize, u64)> = picks
            .iter()
            .map(|(e, worker, sample)| {
                let v = match *sample {
                    Sample::Offset(off) => (t_us as i64 + off).max(0) as u64,
                    Sample::Absolute(v) => v,
                };
                (*e, *worker, v)
            })
            .collect();
        let lat: Vec<u64> = samples.iter().map(|s| s.2).collect();
        let exact = exact_p95(&lat).unwrap() >= t_us;

        // One recorder, one bucket.
        let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
        for v in &lat {
            r.record(3, &ok_outcome(*v, 1), None).unwrap();
        }
        prop_assert_eq!(r.counts().p95_at_or_over_threshold(), exact);

        // Three workers over the buckets of the window, merged.
        let mut w = Window::new(cfg.buckets, 0);
        let mut scratch = Vec::new();
        let mut sorted = samples.clone();
        sorted.sort_by_key(|s| s.0);
        for epoch in 0..12u64 {
            for worker in 0..3usize {
                let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
                for s in sorted.iter().filter(|s| s.0 == epoch && s.1 == worker) {
                    r.record(epoch, &ok_outcome(s.2, 1), None).unwrap();
                }
                prop_assert!(w.merge_recorder(&r, epoch, &mut scratch));
            }
        }
        let totals = w.totals(11);
        prop_assert_eq!(totals.latency_samples, lat.len() as u64);
        prop_assert_eq!(totals.p95_at_or_over_threshold(), exact);
        let expected = exact.then_some(TripReason::LatencyP95);
        prop_assert_eq!(trip_reason(&totals, &cfg), expected);
        // Nearest rank agrees with the independent formula.
        let n = lat.len() as u64;
        prop_assert_eq!(nearest_rank(n), (95 * n).div_ceil(100));
    }

    /// The reported P95 is within 2% (relative) of the exact nearest-rank P95, from 1 µs to the top
    /// of the histogram.
    #[test]
    fn reported_p95_is_within_two_percent(
        lat in prop::collection::vec(latency_strategy(), 1..400),
        epochs in prop::collection::vec(0u64..12, 1..400),
    ) {
        let cfg = Config::default().breaker;
        let mut w = Window::new(cfg.buckets, 0);
        let mut scratch = Vec::new();
        let mut by_epoch: Vec<(u64, u64)> =
            lat.iter().enumerate().map(|(i, v)| (epochs[i % epochs.len()], *v)).collect();
        by_epoch.sort_unstable();
        let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
        for (e, v) in &by_epoch {
            if r.record(*e, &ok_outcome(*v, 1), None).is_err() {
                prop_assert!(w.merge_recorder(&r, *e, &mut scratch));
                r.clear();
                r.record(*e, &ok_outcome(*v, 1), None).unwrap();
            }
        }
        prop_assert!(w.merge_recorder(&r, 11, &mut scratch));
        let exact = exact_p95(&lat).unwrap() as f64;
        let reported = w.p95_us(11, &mut scratch).unwrap() as f64;
        prop_assert!(
            (reported - exact).abs() <= 0.02 * exact,
            "reported {reported} vs exact {exact}"
        );
    }

    /// Two (or three) workers, each merging its own recorders into the shared window bucket by
    /// bucket, equal one window fed with every sample: the same `Window`, totals and P95 — also
    /// when the samples span more epochs than the window holds.
    #[test]
    fn merged_worker_windows_equal_one_window_of_all_samples(
        buckets in 1u32..13,
        workers in 2usize..4,
        // (epoch, worker, outcome); epochs may run past the window.
        samples in prop::collection::vec((0u64..30, 0usize..3, outcome_strategy()), 0..200),
        threshold_ms in prop::option::of(1u64..1_000),
    ) {
        let mut cfg = Config::default().breaker;
        cfg.buckets = buckets;
        cfg.latency_p95_threshold = threshold_ms.map(Duration::from_millis);
        let n = u64::from(buckets);
        let mut sorted = samples;
        sorted.sort_by_key(|s| s.0);
        let last_epoch = sorted.last().map_or(0, |s| s.0);
        let first_epoch = sorted.first().map_or(0, |s| s.0);

        // The filter's shape: every worker merges its own recorder into the one shared window.
        let mut merged = Window::new(buckets, 7);
        let mut all = Window::new(buckets, 7);
        let mut scratch = Vec::new();
        let mut epoch = first_epoch;
        while epoch <= last_epoch {
            let mut all_rec = Recorder::new(threshold_us(&cfg)).unwrap();
            for wi in (0..workers).rev() {
                let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
                for (_, _, o) in sorted.iter().filter(|s| s.0 == epoch && s.1 % workers == wi) {
                    let f = o.failure(&cfg.failure);
                    r.record(epoch, o, f).unwrap();
                    all_rec.record(epoch, o, f).unwrap();
                }
                prop_assert!(merged.merge_recorder(&r, epoch, &mut scratch));
            }
            prop_assert!(all.merge_recorder(&all_rec, epoch, &mut scratch));
            epoch += 1;
        }
        for now in [last_epoch, last_epoch + 1, last_epoch + n / 2, last_epoch + n] {
            prop_assert_eq!(merged.totals(now), all.totals(now), "totals at {}", now);
            let mut s2 = Vec::new();
            prop_assert_eq!(merged.p95_us(now, &mut scratch), all.p95_us(now, &mut s2), "p95 at {}", now);
        }
        if last_epoch - first_epoch < n {
            // Every sample still in the window: the windows are identical, bucket by bucket.
            prop_assert_eq!(&merged, &all);
        } else {
            // Buckets older than the window may differ (a dead bucket is dropped by `merge` but
            // kept by a window that never reused its slot); the live buckets must not.
            for (a, b) in merged.buckets.iter().zip(&all.buckets) {
                let live = |x: &Bucket| x.epoch <= last_epoch && last_epoch - x.epoch < n && x.counts != Counts::default();
                if live(a) || live(b) {
                    prop_assert_eq!(a, b);
                }
            }
        }
        // And the trip decision follows.
        prop_assert_eq!(trip_reason(&merged.totals(last_epoch), &cfg), trip_reason(&all.totals(last_epoch), &cfg));
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding: lossless round trips, and garbage never panics.
// ---------------------------------------------------------------------------------------------

fn state_strategy() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Closed),
        Just(State::Open),
        Just(State::HalfOpen)
    ]
}

fn reason_strategy() -> impl Strategy<Value = Option<TripReason>> {
    prop::option::of(prop_oneof![
        Just(TripReason::ErrorRate),
        Just(TripReason::LatencyP95),
        Just(TripReason::KernelResets),
        Just(TripReason::ForcedOpen),
    ])
}

fn slot_state_strategy() -> impl Strategy<Value = SlotState> {
    (
        // Sanitized keys (the real ones), or any UTF-8 of at most 128 bytes.
        prop_oneof![
            "[a-z0-9._:|-]{0,128}",
            ".{0,32}".prop_filter("at most 128 bytes", |s: &String| s.len() <= 128),
        ],
        state_strategy(),
        reason_strategy(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec((any::<u32>(), any::<u64>()), 0..8),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(
            |(
                key,
                state,
                reason,
                open_until_ms,
                sleep_ms,
                probes,
                (next_probe_id, successes, generation, last_active_ms),
            )| SlotState {
                key,
                breaker: BreakerState {
                    state,
                    reason,
                    open_until_ms,
                    sleep_ms,
                    probes: probes
                        .into_iter()
                        .map(|(id, started_ms)| Probe { id, started_ms })
                        .collect(),
                    next_probe_id,
                    successes,
                    generation,
                },
                last_active_ms,
            },
        )
}

fn bucket_strategy() -> impl Strategy<Value = Bucket> {
    prop_oneof![
        // An empty bucket encodes as one byte and decodes with epoch 0.
        1 => Just(Bucket::default()),
        3 => (
            any::<u64>(),
            counts_strategy(),
            // Ascending distinct values, non-zero counts.
            prop::collection::btree_map(prop_oneof![1u64..10_000, any::<u64>()], 1u64..u64::MAX, 0..40),
        )
            .prop_map(|(epoch, counts, bins)| Bucket { epoch, counts, bins: bins.into_iter().collect() })
            .prop_filter("non-empty", |b| b.counts != Counts::default() || !b.bins.is_empty()),
    ]
}

fn window_strategy() -> impl Strategy<Value = Window> {
    (
        (any::<u32>(), any::<u64>(), any::<u64>()),
        any::<u64>(),
        prop::collection::vec(
            ("[0-9a-f:.\\[\\]]{1,64}", any::<u64>()),
            0..=MAX_HOSTS_PER_KEY,
        ),
        prop::collection::vec(bucket_strategy(), 1..=60),
    )
        .prop_map(
            |((generation, bucket_ms, threshold_us), last_used_ms, hosts, buckets)| Window {
                generation,
                bucket_ms,
                threshold_us,
                last_used_ms,
                hosts: hosts
                    .into_iter()
                    .map(|(host, seen)| HostCursor { host, seen })
                    .collect(),
                buckets,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn slot_state_round_trips(s in slot_state_strategy()) {
        let bytes = s.encode();
        prop_assert_eq!(SlotState::decode(&bytes), Ok(s.clone()));
        prop_assert_eq!(SlotState::peek(&bytes), Ok((s.key.as_bytes(), s.breaker.state)));
        // Every strict prefix is rejected, never misread.
        for cut in 0..bytes.len() {
            prop_assert!(SlotState::decode(&bytes[..cut]).is_err(), "prefix {} accepted", cut);
        }
        // A trailing byte is rejected.
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(SlotState::decode(&longer), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn window_round_trips(w in window_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 16)) {
        let bytes = w.encode();
        prop_assert_eq!(Window::decode(&bytes), Ok(w.clone()));
        // Decoding into a reused window of another shape gives the same result.
        let mut reused = Window::new(60, 99);
        reused.learn_host("1.2.3.4:5", 6);
        reused.decode_into(&bytes).unwrap();
        prop_assert_eq!(&reused, &w);
        // Strict prefixes (a sample of them: the whole set is quadratic in a 50 KB window) are
        // rejected, never misread.
        for cut in cuts.iter().map(|i| i.index(bytes.len())).chain([0, 3, bytes.len() - 1]) {
            prop_assert!(Window::decode(&bytes[..cut]).is_err(), "prefix {} accepted", cut);
        }
    }

    /// A window built by recording real traffic round trips too (its bins come from the histogram).
    #[test]
    fn recorded_window_round_trips(
        samples in prop::collection::vec((0u64..12, outcome_strategy()), 1..150),
    ) {
        let cfg = Config::default().breaker;
        let mut w = Window::new(cfg.buckets, 3);
        let mut scratch = Vec::new();
        let mut sorted = samples;
        sorted.sort_by_key(|s| s.0);
        let mut r = Recorder::new(threshold_us(&cfg)).unwrap();
        for (e, o) in &sorted {
            if r.record(*e, o, o.failure(&cfg.failure)).is_err() {
                w.merge_recorder(&r, *e, &mut scratch);
                r.clear();
                r.record(*e, o, o.failure(&cfg.failure)).unwrap();
            }
        }
        w.merge_recorder(&r, 11, &mut scratch);
        let d = Window::decode(&w.encode()).unwrap();
        prop_assert_eq!(&d, &w);
        prop_assert_eq!(d.totals(11), w.totals(11));
        prop_assert_eq!(d.p95_us(11, &mut scratch), w.p95_us(11, &mut Vec::new()));
    }

    /// Random bytes (with a valid header half the time) never panic and are mostly rejected.
    #[test]
    fn garbage_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..200),
        kind in prop_oneof![Just(b'S'), Just(b'W'), Just(b'R'), any::<u8>()],
        with_header in any::<bool>(),
    ) {
        let mut buf = if with_header { vec![b'M', policy_core::encoding::VERSION, kind] } else { Vec::new() };
        buf.extend_from_slice(&body);
        let _ = SlotState::decode(&buf);
        let _ = SlotState::peek(&buf);
        let _ = Window::decode(&buf);
        let _ = policy_core::encoding::ResetTotals::decode(&buf);
    }
}

/// Sanity for the generators: the P95 model above is the textbook one.
#[test]
fn exact_p95_model_matches_known_values() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(exact_p95(&v), Some(95));
    let v: Vec<u64> = (1..=20).collect();
    assert_eq!(exact_p95(&v), Some(19));
    let v: Vec<u64> = (1..=21).collect();
    assert_eq!(exact_p95(&v), Some(20));
    assert_eq!(exact_p95(&[7]), Some(7));
    assert_eq!(FAILURE_CLASSES, 4);
    let _ = (
        bucket_ms(&Config::default().breaker),
        FailureClass::HttpStatus,
    );
}

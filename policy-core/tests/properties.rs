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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use policy_core::breaker::{
    BreakerState, Decision, FixedJitter, Probe, SplitMix64, State, Transition,
};
use policy_core::config::{BreakerConfig, Config, Mode};
use policy_core::encoding::{DecodeError, SlotState};
use policy_core::flow::{
    self, Admitted, Entry, FlushInput, Flushed, Geometry, Local, Store, WriteError,
};
use policy_core::window::{
    bucket_ms, nearest_rank, threshold_us, trip_reason, Bucket, Counts, FailureClass, HostCursor,
    Outcome, Recorder, TripReason, Window, FAILURE_CLASSES, HIST_HIGHEST_US, MAX_HOSTS_PER_KEY,
};
use proptest::prelude::*;

/// A key's entries where either may be absent (as before configure created them): reads of an
/// absent entry say so, and any write to one is recorded as blind.
struct Absent {
    mem: flow::Memory,
    state_present: bool,
    window_present: bool,
    blind: Vec<Entry>,
}

impl Absent {
    fn present(&self, entry: Entry) -> bool {
        match entry {
            Entry::State => self.state_present,
            Entry::Window => self.window_present,
        }
    }
}

impl Store for Absent {
    fn read(&mut self, entry: Entry) -> (Option<Vec<u8>>, Option<u32>) {
        if self.present(entry) {
            self.mem.read(entry)
        } else {
            (None, None)
        }
    }

    fn write(
        &mut self,
        entry: Entry,
        bytes: &[u8],
        version: Option<u32>,
    ) -> Result<(), WriteError> {
        if !self.present(entry) {
            self.blind.push(entry);
            return Ok(());
        }
        self.mem.write(entry, bytes, version)
    }
}

// ---------------------------------------------------------------------------------------------
// The flow: probe quota, legal transitions, no lost trip, no double-counted sample, with workers
// sharing the state and the window through CAS on bytes.
// ---------------------------------------------------------------------------------------------

/// Envoy's shared data as proxy-wasm-cpp-host implements it (`shared_data.cc`): one mutex, a CAS
/// token per entry that changes on every write, and a token checked **only if the entry exists**
/// (an absent entry is written blind; there is no create-if-absent). The filter creates its
/// entries at configure time, so the model starts with them present.
///
/// Every write of the state entry is checked as it happens, so no intermediate state escapes:
/// the probe quota, SPEC's state changes, no probe outside HALF_OPEN.
#[derive(Default)]
struct Envoy {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_token: u32,
    /// The quota the state is checked against (0: not checked).
    quota: usize,
    last_state: Option<State>,
    /// Invariant violations seen by writes.
    broken: Vec<String>,
}

impl Envoy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    /// `Err(())` is CasMismatch; `cas` 0 is no token.
    fn set(&mut self, key: &str, value: Vec<u8>, cas: u32) -> Result<(), ()> {
        if let Some((_, token)) = self.entries.get(key) {
            if cas != 0 && cas != *token {
                return Err(());
            }
        }
        if key == STATE && self.quota > 0 {
            self.check_state(&value);
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.entries
            .insert(key.to_string(), (value, self.next_token));
        Ok(())
    }

    fn check_state(&mut self, bytes: &[u8]) {
        let Ok(st) = SlotState::decode(bytes) else {
            self.broken.push("state does not decode".into());
            return;
        };
        let b = &st.breaker;
        if b.probes_in_flight() > self.quota {
            self.broken.push(format!(
                "{} probes in flight, quota {}",
                b.probes_in_flight(),
                self.quota
            ));
        }
        if b.state != State::HalfOpen && b.probes_in_flight() > 0 {
            self.broken
                .push(format!("probes in flight in {:?}", b.state));
        }
        if let Some(last) = self.last_state {
            if last != b.state && !legal_change(last, b.state) {
                self.broken.push(format!("{last:?} -> {:?}", b.state));
            }
        }
        self.last_state = Some(b.state);
    }
}

const STATE: &str = "s/0";

/// A worker's view of the key's entries, as the flow's store: the state, and the window of its
/// configuration's geometry. Before its `at`-th host call it runs `between` (another worker's
/// whole operation, or a clock step), so other workers write between its reads and its writes.
struct View<'a> {
    envoy: &'a RefCell<Envoy>,
    window: String,
    calls: usize,
    at: usize,
    between: Option<Box<dyn FnOnce() + 'a>>,
}

impl View<'_> {
    fn interleave(&mut self) {
        if self.calls == self.at {
            if let Some(f) = self.between.take() {
                f();
            }
        }
        self.calls += 1;
    }

    fn name(&self, e: Entry) -> String {
        match e {
            Entry::State => STATE.to_string(),
            Entry::Window => self.window.clone(),
        }
    }
}

impl Store for View<'_> {
    fn read(&mut self, e: Entry) -> (Option<Vec<u8>>, Option<u32>) {
        self.interleave();
        match self.envoy.borrow().get(&self.name(e)) {
            Some((b, t)) => (Some(b), Some(t)),
            None => (None, None),
        }
    }

    fn write(&mut self, e: Entry, bytes: &[u8], version: Option<u32>) -> Result<(), WriteError> {
        self.interleave();
        let name = self.name(e);
        self.envoy
            .borrow_mut()
            .set(&name, bytes.to_vec(), version.unwrap_or(0))
            .map_err(|()| WriteError::Mismatch)
    }
}

/// What a worker does with the key.
#[derive(Debug, Clone)]
enum Job {
    /// A request arrives: admit it (OPEN→HALF_OPEN, probe admission).
    Admit,
    /// One of this worker's probes completes (`pick` chooses which).
    Complete { pick: usize, success: bool },
    /// Requests complete: `failed` failures and `ok` successes are recorded as the filter
    /// records them, merged when due.
    Record { failed: u64, ok: u64 },
    /// The tick: the samples are merged if they are `flow::FLUSH_MS` old.
    Tick,
    /// A reload: the worker runs the other configuration (another window geometry).
    Reload,
}

#[derive(Debug, Clone)]
enum Op {
    /// Worker `w` runs `job`; before its `at`-th host call, the clock moves by `step_ms` (both
    /// ways) and other workers run the jobs of `between`, one after another.
    Run {
        worker: usize,
        job: Job,
        at: usize,
        between: Vec<(usize, Job)>,
        step_ms: i64,
    },
    /// The wall clock moves forward.
    Forward(u64),
    /// The wall clock steps back (NTP).
    Back(u64),
}

fn job_strategy() -> impl Strategy<Value = Job> {
    prop_oneof![
        4 => Just(Job::Admit),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, success)| Job::Complete { pick, success }),
        3 => (0u64..30, 0u64..30).prop_map(|(failed, ok)| Job::Record { failed, ok }),
        2 => Just(Job::Tick),
        1 => Just(Job::Reload),
    ]
}

fn op_strategy(workers: usize) -> impl Strategy<Value = Op> {
    let step = prop_oneof![Just(0i64), -2_000i64..2_000, -7_200_000i64..40_000];
    prop_oneof![
        12 => (
            0..workers,
            job_strategy(),
            0usize..6,
            prop::collection::vec((0..workers, job_strategy()), 0..4),
            step,
        )
            .prop_map(|(worker, job, at, between, step_ms)| Op::Run { worker, job, at, between, step_ms }),
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
            c.window = Duration::from_secs(10);
            c.buckets = 10;
            c
        },
    )
}

/// The configuration a reload switches to: the same rules, another window geometry (so another
/// window entry, as the filter names windows by geometry).
fn reloaded(cfg: &BreakerConfig) -> BreakerConfig {
    let mut c = cfg.clone();
    c.buckets = 5;
    c
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

/// One worker: its configuration (0 or 1: reloaded), its unmerged samples, the probes it holds.
struct Worker {
    reloaded: bool,
    local: Local,
    held: Vec<u32>,
}

/// The shared world of a run: Envoy, the clock, the workers, and what the checks count.
struct World<'c> {
    cfgs: [&'c BreakerConfig; 2],
    envoy: RefCell<Envoy>,
    now: Cell<u64>,
    workers: Vec<RefCell<Worker>>,
    jitter: RefCell<SplitMix64>,
    /// Samples merged per window entry and generation (from the flushes that went through).
    merged: RefCell<HashMap<(String, u32), u64>>,
    /// The clock stepped back or moved a window on since the first sample was recorded: samples
    /// may then legitimately leave the window (merged or not yet).
    lossy: Cell<bool>,
    first_sample_ms: Cell<Option<u64>>,
    /// Errors found inside a job (a transition not matching its states, say).
    broken: RefCell<Vec<String>>,
}

fn window_name(cfg: &BreakerConfig) -> String {
    let g = Geometry::of(cfg);
    format!("w/{}x{}t{}/0", g.bucket_ms, g.buckets, g.threshold_us)
}

impl<'c> World<'c> {
    fn new(cfg: &'c BreakerConfig, reload: &'c BreakerConfig, workers: usize, seed: u64) -> Self {
        let mut envoy = Envoy::default();
        let st = SlotState {
            key: "k".into(),
            ..Default::default()
        };
        envoy.set(STATE, st.encode(), 0).unwrap();
        for c in [cfg, reload] {
            envoy
                .set(&window_name(c), Geometry::of(c).empty_window(0).encode(), 0)
                .unwrap();
        }
        envoy.quota = cfg.half_open_max_probes as usize;
        envoy.last_state = Some(State::Closed);
        let now = 10_000_000u64;
        World {
            cfgs: [cfg, reload],
            envoy: RefCell::new(envoy),
            now: Cell::new(now),
            workers: (0..workers)
                .map(|_| {
                    RefCell::new(Worker {
                        reloaded: false,
                        local: Local::new(cfg, now).unwrap(),
                        held: Vec::new(),
                    })
                })
                .collect(),
            jitter: RefCell::new(SplitMix64(seed)),
            merged: RefCell::new(HashMap::new()),
            lossy: Cell::new(false),
            first_sample_ms: Cell::new(None),
            broken: RefCell::new(Vec::new()),
        }
    }

    fn step_clock(&self, delta: i64) {
        let now = self.now.get();
        if delta < 0 {
            self.now.set(now.saturating_sub(delta.unsigned_abs()));
            self.lossy.set(true);
        } else {
            self.now.set(now + delta as u64);
        }
        if self.first_sample_ms.get().is_some_and(|f| {
            // Samples leave the 10 s window after 9 s at the earliest (of the 2 s buckets).
            self.now.get() >= f + 8_000
        }) {
            self.lossy.set(true);
        }
    }

    /// Runs `job` on worker `w` through the flow, with `between` run before its `at`-th host call.
    fn run(&self, w: usize, job: &Job, at: usize, between: Option<Box<dyn FnOnce() + '_>>) {
        let Ok(mut worker) = self.workers[w].try_borrow_mut() else {
            return; // this worker is the one being interleaved: a worker does one thing at a time
        };
        let cfg = self.cfgs[usize::from(worker.reloaded)];
        let mut view = View {
            envoy: &self.envoy,
            window: window_name(cfg),
            calls: 0,
            at,
            between,
        };
        let now = self.now.get();
        let mut enc = Vec::new();
        match *job {
            Job::Admit => {
                if let Admitted::Decided {
                    decision: Decision::Probe(id),
                    ..
                } = flow::admit(
                    &mut view,
                    "k",
                    Mode::Enforce,
                    cfg,
                    now,
                    &mut FixedJitter(0.0),
                    &mut enc,
                ) {
                    worker.held.push(id);
                }
            }
            Job::Complete { pick, success } => {
                if worker.held.is_empty() {
                    return;
                }
                let n = worker.held.len();
                let id = worker.held.remove(pick % n);
                let mut jitter = self.jitter.borrow().clone();
                let t = flow::complete_probe(
                    &mut view,
                    "k",
                    id,
                    success,
                    cfg,
                    now,
                    &mut jitter,
                    &mut enc,
                );
                *self.jitter.borrow_mut() = jitter;
                if let Some((t, state)) = t {
                    if t.to != state {
                        self.broken
                            .borrow_mut()
                            .push(format!("{t:?} but the state is {state:?}"));
                    }
                }
            }
            Job::Record { failed, ok } => {
                if failed + ok > 0 && self.first_sample_ms.get().is_none() {
                    self.first_sample_ms.set(Some(now));
                }
                let g = Geometry::of(cfg);
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
                let samples =
                    std::iter::repeat_n((&fail, Some(FailureClass::HttpStatus)), failed as usize)
                        .chain(std::iter::repeat_n((&good, None), ok as usize));
                for (o, failure) in samples {
                    let r = worker.local.record(o, failure, &g, now);
                    if r.due {
                        self.flush(&mut worker, cfg, &mut view, now);
                        worker.local.record_after_flush(o, failure, &g, now, r);
                    }
                }
            }
            Job::Tick => {
                if !worker.local.recorder.is_empty() && worker.local.stale(now) {
                    self.flush(&mut worker, cfg, &mut view, now);
                }
            }
            Job::Reload => {
                // A new VM: its recorder is new (the old VM drains its own).
                self.flush(&mut worker, cfg, &mut view, now);
                worker.reloaded = !worker.reloaded;
                let cfg = self.cfgs[usize::from(worker.reloaded)];
                worker.local = Local::new(cfg, now).unwrap();
            }
        }
    }

    fn flush(&self, worker: &mut Worker, cfg: &BreakerConfig, view: &mut View<'_>, now: u64) {
        let samples = worker.local.recorder.counts().samples;
        let input = FlushInput::without_resets("k", cfg, Geometry::of(cfg), now);
        let mut jitter = self.jitter.borrow().clone();
        let flushed = flow::flush(
            view,
            &mut worker.local,
            &input,
            &mut jitter,
            &mut Vec::new(),
            &mut Vec::new(),
        );
        *self.jitter.borrow_mut() = jitter;
        if let Flushed::Merged(m) = flushed {
            *self
                .merged
                .borrow_mut()
                .entry((view.window.clone(), m.generation))
                .or_insert(0) += samples;
            if let Some((Some(t), state)) = m.written {
                if t.to != State::Open || state != State::Open || m.state_read != State::Closed {
                    self.broken
                        .borrow_mut()
                        .push(format!("trip {t:?} from {:?} to {state:?}", m.state_read));
                }
                // The trip was the last write: the state it went into must be of the window's
                // generation (a circuit that closed meanwhile is not re-opened by old samples).
                let gen = self.state().breaker.generation;
                if gen != m.generation {
                    self.broken.borrow_mut().push(format!(
                        "tripped generation {gen} on a window of generation {}",
                        m.generation
                    ));
                }
            }
        }
    }

    fn state(&self) -> SlotState {
        SlotState::decode(&self.envoy.borrow().get(STATE).unwrap().0).unwrap()
    }

    /// The invariants between operations.
    fn check(&self) -> Result<(), TestCaseError> {
        let broken: Vec<String> = self
            .envoy
            .borrow()
            .broken
            .iter()
            .chain(self.broken.borrow().iter())
            .cloned()
            .collect();
        prop_assert!(broken.is_empty(), "{:?}", broken);
        let st = self.state();
        let b = &st.breaker;
        let now = self.now.get();
        let cfg = self.cfgs[0];
        for p in &b.probes {
            let holders = self
                .workers
                .iter()
                .filter(|w| w.borrow().held.contains(&p.id))
                .count();
            prop_assert_eq!(holders, 1, "probe {:?} held by {} workers", p, holders);
        }
        // OPEN never lasts longer than max_sleep_window x 1.2 from now, whatever the clock did.
        if b.state == State::Open && !b.open_is_over(cfg, now) {
            prop_assert!(
                b.open_until_ms - now <= policy_core::breaker::max_open_ms(cfg),
                "open for {} more ms",
                b.open_until_ms - now
            );
        }
        // An OPEN key in its open period, or a key with a live probe (younger than the sleep
        // window, or started "in the future"), is never taken over, whatever its activity mark
        // says (SPEC "key_by": only once the open period ended and the probes are gone).
        let sleep = u64::try_from(cfg.sleep_window.as_millis()).unwrap_or(u64::MAX);
        let live_probe = b
            .probes
            .iter()
            .any(|p| p.started_ms > now || now - p.started_ms < sleep);
        if (b.state == State::Open && now < b.open_until_ms) || live_probe {
            for idle in [0, 1_000, 1 << 40] {
                let mut idle_st = st.clone();
                idle_st.last_active_ms = 0;
                prop_assert!(!flow::takeover_allowed(&idle_st, now, idle), "{:?}", st);
            }
        }
        // No sample counted twice (a retried CAS merges the recorder once); without clock steps
        // or window-long jumps none is lost either.
        let merged = self.merged.borrow();
        for c in self.cfgs {
            let name = window_name(c);
            let w = Window::decode(&self.envoy.borrow().get(&name).unwrap().0).unwrap();
            let in_window: u64 = w.buckets.iter().map(|b| b.counts.samples).sum();
            let m = merged.get(&(name, w.generation)).copied().unwrap_or(0);
            prop_assert!(
                in_window <= m,
                "{} samples in the window, {} merged",
                in_window,
                m
            );
            if !self.lossy.get() {
                prop_assert_eq!(in_window, m, "samples lost");
            }
        }
        Ok(())
    }
}

/// Runs `ops` over `workers` workers of one key through [`flow`], each operation's host calls
/// interleaved with another worker's operation and a clock step, and checks after every
/// operation (and the state at every write): the probes in flight never exceed the quota, every
/// probe is held by exactly one worker, only SPEC transitions happen, an OPEN key is never taken
/// over, no sample is counted twice; at the end, no trip is lost.
fn run_shared(
    cfg: &BreakerConfig,
    workers: usize,
    ops: &[Op],
    seed: u64,
) -> Result<(), TestCaseError> {
    let reload = reloaded(cfg);
    let world = World::new(cfg, &reload, workers, seed);
    for op in ops {
        match op {
            Op::Forward(ms) => world.step_clock(*ms as i64),
            Op::Back(ms) => world.step_clock(-(*ms as i64)),
            Op::Run {
                worker,
                job,
                at,
                between,
                step_ms,
            } => {
                let w = worker % workers;
                let world_ref = &world;
                let step = *step_ms;
                let between = between.clone();
                let interleaved: Box<dyn FnOnce() + '_> = Box::new(move || {
                    // A step between a read and its write leaves the outer job's `now` off the
                    // clock either way: to it, a later merge lies in the future and is cleared
                    // as a step back would (so samples may leave; none may double).
                    if step != 0 {
                        world_ref.lossy.set(true);
                    }
                    world_ref.step_clock(step);
                    for (o, b) in &between {
                        world_ref.run(o % workers, b, usize::MAX, None);
                    }
                });
                world.run(w, job, *at, Some(interleaved));
            }
        }
        world.check()?;
    }
    // Quiescence: every worker merges what it holds; then no trip may be lost.
    for w in 0..workers {
        world.run(w, &Job::Tick, usize::MAX, None);
        let mut worker = world.workers[w].borrow_mut();
        let cfg = world.cfgs[usize::from(worker.reloaded)];
        let mut view = View {
            envoy: &world.envoy,
            window: window_name(cfg),
            calls: 0,
            at: usize::MAX,
            between: None,
        };
        let now = world.now.get();
        world.flush(&mut worker, cfg, &mut view, now);
    }
    world.check()?;
    let st = world.state();
    let now = world.now.get();
    for c in world.cfgs {
        let w = Window::decode(&world.envoy.borrow().get(&window_name(c)).unwrap().0).unwrap();
        let totals = w.totals(Geometry::of(c).epoch(now));
        let flushed_here = world.workers.iter().any(|wk| {
            usize::from(wk.borrow().reloaded) == usize::from(!std::ptr::eq(c, world.cfgs[0]))
        });
        prop_assert!(
            !(flushed_here
                && st.breaker.state == State::Closed
                && w.generation == st.breaker.generation
                && trip_reason(&totals, c).is_some()),
            "trip lost: CLOSED with a tripping window {:?}",
            totals
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Quota, transitions, no takeover of an open key, no lost trip and no double-counted sample,
    /// with 1–4 workers running [`flow`] whose operations interleave between each other's reads and
    /// writes (Envoy's CAS rule), random requests, probe completions, recorded samples, ticks,
    /// reloads to another window geometry, and the clock moving forward and stepping back, also
    /// between a read and its write.
    #[test]
    fn probes_never_exceed_quota_and_only_spec_transitions_happen(
        cfg in breaker_cfg_strategy(),
        workers in 1usize..5,
        ops in prop::collection::vec(op_strategy(4), 1..300),
        seed in any::<u64>(),
    ) {
        run_shared(&cfg, workers, &ops, seed)?;
    }

    /// Envoy's rule is what makes pre-creation necessary: a write to an absent entry is blind
    /// (two workers that both saw it absent and both "create" it leave only the second write).
    /// So the flow itself (admit, flush, probe completion, whatever the state it finds) must
    /// never write an entry it read as absent; the store here records any such write.
    #[test]
    fn the_flow_never_writes_an_entry_it_read_as_absent(
        cfg in breaker_cfg_strategy(),
        state_present in any::<bool>(),
        window_present in any::<bool>(),
        tripped in any::<bool>(),
        outcomes in prop::collection::vec(outcome_strategy(), 0..30),
        now in 0u64..1 << 40,
        id in any::<u32>(),
        success in any::<bool>(),
    ) {
        let g = Geometry::of(&cfg);
        let mut mem = flow::Memory::new("k", &g);
        if tripped {
            let mut st = mem.slot_state().unwrap();
            st.breaker.trip(TripReason::ErrorRate, &cfg, now, &mut FixedJitter(0.0));
            let v = mem.state.1;
            mem.write(Entry::State, &st.encode(), Some(v)).unwrap();
        }
        let mut store = Absent { mem, state_present, window_present, blind: Vec::new() };
        let mut enc = Vec::new();
        let mut rng = FixedJitter(0.5);
        flow::admit(&mut store, "k", Mode::Enforce, &cfg, now, &mut rng, &mut enc);
        let mut local = Local::new(&cfg, now).unwrap();
        for o in &outcomes {
            let _ = local.record(o, o.failure(&cfg.failure), &g, now);
        }
        let input = FlushInput::without_resets("k", &cfg, g, now + 1);
        flow::flush(&mut store, &mut local, &input, &mut rng, &mut enc, &mut Vec::new());
        flow::complete_probe(&mut store, "k", id, success, &cfg, now + 2, &mut rng, &mut enc);
        prop_assert!(store.blind.is_empty(), "blind writes: {:?}", store.blind);
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
            let step = s.decide(Mode::Enforce, &cfg, now, &mut FixedJitter(0.0));
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
        latency_us: Some(latency_us),
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
                latency_us: Some(latency_us),
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
                // Flushed late, at the new epoch: kept while its bucket is in the window, or
                // (into the oldest bucket) when it left the window just now.
                let live = epoch - r.epoch() <= u64::from(cfg.buckets);
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
        Just(TripReason::ConsecutiveFailures),
        Just(TripReason::Adaptive),
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
        0u16..=policy_core::breaker::SHED_ALL,
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
                shed,
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
                    shed,
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

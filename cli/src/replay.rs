//! `meshbreaker replay`: access logs through policy-core on the log's own clock.
//!
//! Why: thresholds are otherwise tuned blind. policy-core is sans-IO, so the breaker the filter
//! runs can run here on yesterday's traffic: the filter's own per-key protocol
//! ([`policy_core::flow`]) over a store in memory, fed what the filter would have seen.
//!
//! ## How, per key (the filter's flow, one worker)
//! - a request is decided when it starts (`start_time`), with [`flow::admit`];
//! - an allowed request's outcome is recorded when it completes (`start_time` + `duration_ms`),
//!   every attempt counted; the window is merged ([`flow::flush`]) when the flow says a merge is
//!   due, as the filter's workers do, and [`FLUSH_MS`] after the last merge when no request
//!   completes (the filter's tick); probes complete with [`flow::complete_probe`];
//! - a request the replayed breaker rejects is counted: *would have spared* when it failed in
//!   reality, *would have cost* when it succeeded;
//! - a request that never reached an upstream (no upstream host, no response flags: answered
//!   locally, e.g. by the live breaker) has no known outcome and is not replayed.
//!
//! ## Order, memory
//!
//! The log is written in completion order, so starts arrive out of order by up to a request's
//! duration: lines wait in a reorder heap until the log has moved [`REORDER_MS`] past their
//! start, and are decided in start order; completions wait in a heap until the clock passes
//! them. Memory is bounded by [`REORDER_MAX`] waiting lines, `max_keys` keys, and per key at
//! most [`MAX_TRANSITIONS`] transitions and [`MAX_POINTS`] plot points.
//!
//! ## What the replay adds to the flow, and why
//!
//! The replay is one worker standing in for all of them, so it merges when the earliest of the
//! filter's workers could: at once for a failure or a slow sample while CLOSED (below), and at
//! bucket boundaries. The window slides at bucket boundaries: a CLOSED key with at least `min_requests` samples in
//! its window is evaluated at each boundary too (an old bucket leaving can raise the error rate or the P95 with no new
//! request), as early as any of the filter's workers could, whose tick may land right after it.
//!
//! Jitter comes from a seeded [`SplitMix64`], so a replay is repeatable; or, to hold a replay
//! to what the filter did live, from an [`OpeningSource`] ([`Replay::with_openings`]): the
//! jitter draw and the end of a live opening are inputs of the live breaker that no access log
//! holds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use policy_core::breaker::{Decision, Jitter, SplitMix64, State, Transition};
use policy_core::config::{BreakerConfig, Config, Mode};
use policy_core::flow::{
    self, Admitted, Entry, FlushInput, Flushed, Geometry, Local, Memory, Store, FLUSH_MS,
};
use policy_core::keys::{key_for, sanitize_key_into};
use policy_core::window::{bucket_ms, threshold_us, Outcome, TripReason};

use crate::accesslog::Line;
/// Transitions kept per key for the report (later ones are counted only).
pub const MAX_TRANSITIONS: usize = 10_000;
/// Plot points kept per key; beyond, every other point is dropped and the spacing doubles.
pub const MAX_POINTS: usize = 4096;
/// How long a line waits before it is decided, in log time: Envoy writes a line when the request
/// completes, so a request that took `d` is read after those that started up to `d` after it.
/// Decided on reading, a slow request (a failure retried with backoff) would be decided and
/// recorded `d` late; held until the log has reached `start + REORDER_MS`, every request shorter
/// than that is decided in start order. A longer one is decided at the clock, late.
pub const REORDER_MS: u64 = 10_000;
/// At most this many lines wait (bounded memory at any request rate); beyond, the earliest is
/// decided at once.
pub const REORDER_MAX: usize = 1 << 18;

/// One transition, with the window's figures when it opened.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionAt {
    pub at_ms: u64,
    pub from: State,
    pub to: State,
    pub reason: Option<TripReason>,
    /// For transitions into OPEN: how long it stays open, jitter included (as the filter logs it).
    pub open_for_ms: u64,
    /// `error rate 42.0% of 50 samples, p95 812ms` for trips; empty otherwise.
    pub figures: String,
}

/// What the replayed breaker did with one key's traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyReport {
    pub key: String,
    /// Requests replayed (decided).
    pub requests: u64,
    /// Requests that failed in reality (by this configuration's failure rules).
    pub failed: u64,
    pub rejected: u64,
    /// Rejected, and failed in reality.
    pub spared: u64,
    /// Rejected, and succeeded in reality.
    pub cost: u64,
    /// `dry_run`: would have been rejected.
    pub dry_run_rejects: u64,
    pub transitions: Vec<TransitionAt>,
    pub transitions_dropped: u64,
    /// (time, window error rate, state) when samples are merged, at most every
    /// `point_step_ms` of log time, for the plot.
    pub points: Vec<(u64, f32, State)>,
    /// The spacing of `points`: 1 s, doubled each time they are thinned out.
    pub point_step_ms: u64,
}

struct KeyState {
    report: KeyReport,
    /// Index of the override in force (resolved once, on the key's first request, as the
    /// filter does), or `None` for the top level.
    override_index: Option<usize>,
    /// The key's state and window, as the filter's workers share them (one worker here).
    store: Memory,
    /// The samples not merged yet.
    local: Local,
    geometry: Geometry,
    /// The state as the last flow call left it.
    state: State,
    last_point_ms: u64,
    scratch: Vec<(u64, u64)>,
    enc: Vec<u8>,
    /// A tick flush is queued in `Replay::ticks`.
    tick_queued: bool,
    /// A bucket-boundary evaluation is queued in `Replay::slides`.
    slide_queued: bool,
    /// Samples in the window at the last merge.
    window_samples: u64,
}

struct Pending {
    end_ms: u64,
    seq: u64,
    key: usize,
    outcome: Outcome,
    probe: Option<u32>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.end_ms, self.seq) == (o.end_ms, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.end_ms, self.seq).cmp(&(o.end_ms, o.seq))
    }
}

/// A request read from the log, waiting to be decided at its start.
struct Started {
    start_ms: u64,
    seq: u64,
    duration_ms: u64,
    key: usize,
    outcome: Outcome,
}

impl PartialEq for Started {
    fn eq(&self, o: &Self) -> bool {
        (self.start_ms, self.seq) == (o.start_ms, o.seq)
    }
}
impl Eq for Started {}
impl PartialOrd for Started {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Started {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.start_ms, self.seq).cmp(&(o.start_ms, o.seq))
    }
}

/// Totals over every key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub lines: u64,
    pub replayed: u64,
    /// Lines without a start time or not JSON.
    pub unreadable: u64,
    /// Answered locally in reality: no upstream outcome to replay.
    pub answered_locally: u64,
    /// New keys beyond `max_keys` (not replayed, as the filter would track them under `_other`).
    pub over_max_keys: u64,
    pub first_ms: Option<u64>,
    pub last_ms: u64,
}

/// A replay of one configuration.
pub struct Replay {
    cfg: Config,
    keys: Vec<KeyState>,
    index: HashMap<String, usize>,
    pending: BinaryHeap<Reverse<Pending>>,
    /// Lines read but not decided yet, by start time.
    reorder: BinaryHeap<Reverse<Started>>,
    /// The latest completion time read so far.
    log_end_ms: u64,
    /// Tick flushes due: (time, key), at most one per key.
    ticks: BinaryHeap<Reverse<(u64, usize)>>,
    /// Bucket-boundary evaluations due: (time, key), at most one per key.
    slides: BinaryHeap<Reverse<(u64, usize)>>,
    clock_ms: u64,
    seq: u64,
    rng: JitterSource,
    totals: Totals,
    parts: [String; 3],
    key_buf: String,
}

fn breaker_of(cfg: &Config, o: Option<usize>) -> (&BreakerConfig, Mode) {
    match o.and_then(|i| cfg.overrides.get(i)) {
        Some(o) => (&o.breaker, o.mode),
        None => (&cfg.breaker, cfg.mode),
    }
}

impl Replay {
    pub fn new(cfg: Config) -> Replay {
        Replay {
            cfg,
            keys: Vec::new(),
            index: HashMap::new(),
            pending: BinaryHeap::new(),
            reorder: BinaryHeap::new(),
            log_end_ms: 0,
            ticks: BinaryHeap::new(),
            slides: BinaryHeap::new(),
            clock_ms: 0,
            seq: 0,
            rng: JitterSource {
                seeded: SplitMix64(0x6d65_7368_6272_6b72),
                openings: None,
            },
            totals: Totals::default(),
            parts: Default::default(),
            key_buf: String::new(),
        }
    }

    /// A replay whose openings take from `source` the two inputs of an opening that no access
    /// log holds, where it has them (see [`OpeningSource`]); every other opening draws from the
    /// seeded generator and sleeps its own sleep. The rest (which requests probe, how probes
    /// end, reopening and closing) is the replayed breaker's own.
    pub fn with_openings(cfg: Config, source: impl OpeningSource + 'static) -> Replay {
        let mut r = Replay::new(cfg);
        r.rng.openings = Some(Box::new(source));
        r
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// A line that could not be read at all.
    pub fn unreadable(&mut self) {
        self.totals.lines += 1;
        self.totals.unreadable += 1;
    }

    /// Feeds one access log line. It waits in the reorder buffer until no line still to come
    /// can have started before it (see [`REORDER_MS`]), then is decided at its start.
    pub fn feed(&mut self, line: &Line<'_>) {
        self.totals.lines += 1;
        let Some(start_ms) = line.start_ms() else {
            self.totals.unreadable += 1;
            return;
        };
        if line.answered_locally() {
            self.totals.answered_locally += 1;
            return;
        }
        let duration_ms = line.duration_ms.0.unwrap_or(0.0).max(0.0) as u64;
        let Some(key) = self.key_index(line) else {
            self.totals.over_max_keys += 1;
            return;
        };
        let outcome = Outcome {
            http_status: line.status.0.and_then(|s| u16::try_from(s as u64).ok()),
            grpc_status: line
                .grpc_status
                .0
                .and_then(|s| u32::try_from(s as u64).ok()),
            upstream_reset: line.upstream_reset(),
            latency_us: line.latency_ms().map(|ms| ms.saturating_mul(1000)),
            // Bounded as the filter bounds it: at most max_retries (≤ 10) + 1 attempts.
            attempts: line.attempts.0.map_or(1, |a| (a as u32).clamp(1, 11)),
        };
        let end_ms = start_ms.saturating_add(duration_ms);
        self.log_end_ms = self.log_end_ms.max(end_ms);
        self.seq += 1;
        self.reorder.push(Reverse(Started {
            start_ms,
            seq: self.seq,
            duration_ms,
            key,
            outcome,
        }));
        let release = self.log_end_ms.saturating_sub(REORDER_MS);
        while let Some(Reverse(first)) = self.reorder.peek() {
            if first.start_ms > release && self.reorder.len() <= REORDER_MAX {
                break;
            }
            if let Some(Reverse(r)) = self.reorder.pop() {
                self.decide(r);
            }
        }
    }

    /// Decides one request at its start (or at the clock, for a request logged more than
    /// [`REORDER_MS`] late) and queues its completion.
    fn decide(&mut self, r: Started) {
        let Started {
            start_ms,
            duration_ms,
            key: k,
            outcome,
            ..
        } = r;
        let now = start_ms.max(self.clock_ms);
        self.advance(now);
        self.totals.replayed += 1;
        self.totals.first_ms.get_or_insert(start_ms);
        let ks = &mut self.keys[k];
        let (bcfg, mode) = breaker_of(&self.cfg, ks.override_index);
        let failed = outcome.failure(&bcfg.failure).is_some() || outcome.retried_attempts() > 0;
        ks.report.requests += 1;
        ks.report.failed += u64::from(failed);
        let decision = match flow::admit(
            &mut ks.store,
            &ks.report.key,
            mode,
            bcfg,
            now,
            self.rng.shedding(),
            &mut ks.enc,
        ) {
            Admitted::Decided {
                decision,
                transition,
                state,
            } => {
                ks.state = state;
                if let Some(t) = transition {
                    push_transition(ks, now, t, String::new());
                }
                decision
            }
            // The memory store holds only this key and never refuses a write.
            Admitted::Lost => Decision::Allow,
            Admitted::Failed(d) => d,
        };
        let probe = match decision {
            Decision::Allow => None,
            Decision::Probe(id) => Some(id),
            Decision::DryRunReject(_) => {
                ks.report.dry_run_rejects += 1;
                None
            }
            Decision::Reject(_) => {
                ks.report.rejected += 1;
                if failed {
                    ks.report.spared += 1;
                } else {
                    ks.report.cost += 1;
                }
                return;
            }
            Decision::PassThrough => return,
        };
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            end_ms: now.saturating_add(duration_ms),
            seq: self.seq,
            key: k,
            outcome,
            probe,
        }));
    }

    /// Moves the clock to `now`: every completion, tick flush and bucket-boundary evaluation
    /// due by then, in time order (at one instant: ticks, then boundaries, then completions).
    fn advance(&mut self, now: u64) {
        loop {
            let done = self.pending.peek().map(|Reverse(p)| p.end_ms);
            let tick = self.ticks.peek().map(|Reverse((t, _))| *t);
            let slide = self.slides.peek().map(|Reverse((t, _))| *t);
            let Some(first) = [done, tick, slide].into_iter().flatten().min() else {
                break;
            };
            if first > now {
                break;
            }
            if tick == Some(first) {
                self.tick();
            } else if slide == Some(first) {
                self.slide();
            } else if let Some(Reverse(p)) = self.pending.pop() {
                self.complete(p);
            }
        }
        self.clock_ms = now;
        self.totals.last_ms = self.totals.last_ms.max(now);
    }

    fn key_index(&mut self, line: &Line<'_>) -> Option<usize> {
        let [cluster, route, authority] = &mut self.parts;
        let part = |v: &Option<std::borrow::Cow<'_, str>>, out: &mut String| {
            out.clear();
            sanitize_key_into(crate::accesslog::present(v).unwrap_or(""), out);
        };
        part(&line.cluster, cluster);
        part(&line.route, route);
        part(&line.authority, authority);
        self.key_buf.clear();
        key_for(
            self.cfg.key_by,
            cluster,
            route,
            authority,
            &mut self.key_buf,
        );
        if let Some(&i) = self.index.get(self.key_buf.as_str()) {
            return Some(i);
        }
        if self.keys.len() >= self.cfg.max_keys as usize {
            return None;
        }
        let e = self.cfg.effective(cluster, route, authority);
        let override_index = self
            .cfg
            .overrides
            .iter()
            .position(|o| std::ptr::eq(&o.breaker, e.breaker));
        let (bcfg, _) = breaker_of(&self.cfg, override_index);
        let local = Local::new(bcfg, 0)?;
        let geometry = Geometry::of(bcfg);
        let i = self.keys.len();
        self.keys.push(KeyState {
            report: KeyReport {
                key: self.key_buf.clone(),
                point_step_ms: 1000,
                ..KeyReport::default()
            },
            override_index,
            store: Memory::new(&self.key_buf, &geometry),
            local,
            geometry,
            state: State::Closed,
            last_point_ms: 0,
            scratch: Vec::new(),
            enc: Vec::new(),
            tick_queued: false,
            slide_queued: false,
            window_samples: 0,
        });
        self.index.insert(self.key_buf.clone(), i);
        Some(i)
    }

    /// The filter's tick (every [`FLUSH_MS`]): a key with samples not merged for that long is
    /// flushed even when no request completes, as when every request in flight is waiting out
    /// a retry backoff.
    fn tick(&mut self) {
        let Some(Reverse((t, k))) = self.ticks.pop() else {
            return;
        };
        let Some(ks) = self.keys.get_mut(k) else {
            return;
        };
        ks.tick_queued = false;
        if ks.local.recorder.is_empty() {
            return;
        }
        let due = ks.local.last_flush_ms.saturating_add(FLUSH_MS);
        if due > t {
            ks.tick_queued = true;
            self.ticks.push(Reverse((due, k)));
            return;
        }
        let (bcfg, _) = breaker_of(&self.cfg, ks.override_index);
        flush(ks, bcfg, t, &mut self.rng);
        queue_slide(&mut self.slides, ks, k, bcfg, t);
    }

    /// A bucket boundary of a CLOSED key: the oldest bucket has left the window, so the trip
    /// rule is evaluated on what is left (with the samples recorded since the last merge, as a
    /// worker's tick would merge them).
    fn slide(&mut self) {
        let Some(Reverse((t, k))) = self.slides.pop() else {
            return;
        };
        let Some(ks) = self.keys.get_mut(k) else {
            return;
        };
        ks.slide_queued = false;
        if ks.state != State::Closed {
            return;
        }
        let (bcfg, _) = breaker_of(&self.cfg, ks.override_index);
        if ks.local.last_flush_ms < t {
            flush(ks, bcfg, t, &mut self.rng);
        }
        queue_slide(&mut self.slides, ks, k, bcfg, t);
    }

    fn complete(&mut self, p: Pending) {
        let now = p.end_ms;
        let Some(ks) = self.keys.get_mut(p.key) else {
            return;
        };
        let (bcfg, _) = breaker_of(&self.cfg, ks.override_index);
        let failure = p.outcome.failure(&bcfg.failure);
        if let Some(id) = p.probe {
            let ok = flow::probe_succeeded(&p.outcome, failure, bcfg);
            let mut jitter = self.rng.for_key(&ks.report.key, now, State::HalfOpen);
            let done = flow::complete_probe(
                &mut ks.store,
                &ks.report.key,
                id,
                ok,
                bcfg,
                now,
                &mut jitter,
                &mut ks.enc,
            );
            let live_end = jitter.matched_end();
            if let Some((mut t, state)) = done {
                ks.state = state;
                if t.to == State::Open {
                    end_no_later_than(&mut ks.store, &mut t, live_end, now);
                }
                if t.to != t.from {
                    push_transition(ks, now, t, String::new());
                }
            }
        }
        let g = ks.geometry;
        let recorded = ks.local.record(&p.outcome, failure, &g, now);
        // While CLOSED, a failure or a slow sample is merged and the trip rule evaluated at
        // once: the earliest any of the filter's workers could trip (each merges every 100 ms,
        // so with several the shared window is merged more often than one worker's period).
        let raises = ks.state == State::Closed
            && (failure.is_some()
                || p.outcome.retried_attempts() > 0
                || threshold_us(bcfg)
                    .zip(p.outcome.latency_us)
                    .is_some_and(|(t, l)| l >= t));
        if recorded.due || raises {
            flush(ks, bcfg, now, &mut self.rng);
            ks.local
                .record_after_flush(&p.outcome, failure, &g, now, recorded);
        }
        queue_slide(&mut self.slides, ks, p.key, bcfg, now);
        if !ks.local.recorder.is_empty() && !ks.tick_queued {
            ks.tick_queued = true;
            let due = ks.local.last_flush_ms.saturating_add(FLUSH_MS).max(now);
            self.ticks.push(Reverse((due, p.key)));
        }
    }

    /// Completes every request still in flight and returns the per-key reports.
    pub fn finish(mut self) -> (Totals, Vec<KeyReport>) {
        while let Some(Reverse(r)) = self.reorder.pop() {
            self.decide(r);
        }
        let end = self
            .pending
            .iter()
            .map(|Reverse(p)| p.end_ms)
            .max()
            .unwrap_or(self.clock_ms)
            .max(self.clock_ms);
        self.advance(end);
        let cfg = &self.cfg;
        let last = self.totals.last_ms;
        let mut rng = self.rng;
        let reports = self
            .keys
            .into_iter()
            .map(|mut ks| {
                let (bcfg, _) = breaker_of(cfg, ks.override_index);
                flush(&mut ks, bcfg, last, &mut rng);
                ks.report
            })
            .collect();
        (self.totals, reports)
    }
}

/// What a replayed opening takes from outside the access log: the unit draw of its sleep-window
/// jitter, and the time it must end by, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Opening {
    /// The unit jitter draw (0 to 1).
    pub draw: f64,
    /// The replayed opening ends no later than this (nor before it opened); its `open_for_ms`
    /// says so.
    pub end_by: Option<u64>,
}

/// A source of openings' inputs for a replay ([`Replay::with_openings`]). The breaker's one random
/// input is its sleep-window jitter, and an access log holds no request from inside an OPEN
/// period: a replay held to a run that really happened (`demo --ci` holds it to the filter's
/// logged transitions, with `meshbreaker_lab::demo::live`) takes both from what that run logged.
pub trait OpeningSource {
    /// The inputs of `key`'s opening at `now_ms` from `from` (CLOSED: a trip; HALF_OPEN: a
    /// failed probe), or `None` to draw from the seeded generator. Asked in time order.
    fn opening(&mut self, key: &str, now_ms: u64, from: State) -> Option<Opening>;
}

/// The sleep-window jitter: the opening source's draw first, then a seeded generator.
struct JitterSource {
    seeded: SplitMix64,
    openings: Option<Box<dyn OpeningSource>>,
}

impl JitterSource {
    /// The draws of adaptive shedding (which request of a shedding key is rejected): seeded, so
    /// a replay is repeatable, though a live run drew its own.
    fn shedding(&mut self) -> &mut SplitMix64 {
        &mut self.seeded
    }

    fn for_key<'a>(&'a mut self, key: &'a str, now: u64, from: State) -> KeyJitter<'a> {
        KeyJitter {
            key,
            now,
            from,
            source: self,
            matched_end: None,
        }
    }
}

/// The jitter for one opening of one key at `now`, from `from`.
struct KeyJitter<'a> {
    key: &'a str,
    now: u64,
    from: State,
    source: &'a mut JitterSource,
    matched_end: Option<u64>,
}

impl KeyJitter<'_> {
    /// The time the opening must end by, if its source said so.
    fn matched_end(&self) -> Option<u64> {
        self.matched_end
    }
}

impl Jitter for KeyJitter<'_> {
    fn unit(&mut self) -> f64 {
        let (key, now, from) = (self.key, self.now, self.from);
        match self
            .source
            .openings
            .as_mut()
            .and_then(|o| o.opening(key, now, from))
        {
            Some(o) => {
                self.matched_end = o.end_by;
                o.draw
            }
            None => self.source.seeded.unit(),
        }
    }
}

/// A replayed opening whose source gave an end ([`Opening::end_by`]) ends no later than that,
/// and not before `now`; the transition reports how long it is open then.
fn end_no_later_than(store: &mut Memory, t: &mut Transition, end_by: Option<u64>, now: u64) {
    let Some(end) = end_by else {
        return;
    };
    let bound = end.max(now);
    let Some(mut st) = store.slot_state() else {
        return;
    };
    if bound < st.breaker.open_until_ms {
        st.breaker.open_until_ms = bound;
        t.open_for_ms = bound - now;
        let version = store.state.1;
        let _ = store.write(Entry::State, &st.encode(), Some(version));
    }
}

/// Queues the key's next bucket-boundary evaluation while it is CLOSED with at least
/// `min_requests` samples in its window (a slide can only trip then).
fn queue_slide(
    slides: &mut BinaryHeap<Reverse<(u64, usize)>>,
    ks: &mut KeyState,
    k: usize,
    bcfg: &BreakerConfig,
    now: u64,
) {
    // A slide only removes samples: below min_requests it cannot trip (new samples are merged
    // by the tick, which queues a slide again).
    if ks.slide_queued
        || ks.state != State::Closed
        || ks.window_samples < u64::from(bcfg.min_requests).max(1)
    {
        return;
    }
    let b = bucket_ms(bcfg).max(1);
    let Some(next) = (now / b).checked_add(1).and_then(|e| e.checked_mul(b)) else {
        return; // the end of time: no boundary after it
    };
    ks.slide_queued = true;
    slides.push(Reverse((next, k)));
}

fn push_transition(ks: &mut KeyState, at_ms: u64, t: Transition, figures: String) {
    if ks.report.transitions.len() >= MAX_TRANSITIONS {
        ks.report.transitions_dropped += 1;
        return;
    }
    ks.report.transitions.push(TransitionAt {
        at_ms,
        from: t.from,
        to: t.to,
        reason: t.reason,
        open_for_ms: t.open_for_ms,
        figures,
    });
}

/// The filter's flush ([`flow::flush`]): merge the samples into the window, evaluate the trip.
fn flush(ks: &mut KeyState, bcfg: &BreakerConfig, now: u64, rng: &mut JitterSource) {
    let mut jitter = rng.for_key(&ks.report.key, now, State::Closed);
    let input = FlushInput::without_resets(&ks.report.key, bcfg, ks.geometry, now);
    let flushed = flow::flush(
        &mut ks.store,
        &mut ks.local,
        &input,
        &mut jitter,
        &mut ks.enc,
        &mut ks.scratch,
    );
    let live_end = jitter.matched_end();
    // The memory store holds only this key and never refuses a write: always merged.
    let Flushed::Merged(m) = flushed else {
        return;
    };
    let totals = m.totals;
    ks.window_samples = totals.samples;
    ks.state = m.written.map_or(m.state_read, |(_, state)| state);
    if let Some((Some(mut t), _)) = m.written {
        end_no_later_than(&mut ks.store, &mut t, live_end, now);
        let p95 = m.p95_us.map_or("-".into(), |us| format!("{}ms", us / 1000));
        let figures = format!(
            "error rate {:.1}% of {} samples, p95 {p95}",
            totals.error_rate() * 100.0,
            totals.samples
        );
        push_transition(ks, now, t, figures);
    }
    if now >= ks.last_point_ms.saturating_add(ks.report.point_step_ms)
        || ks.report.points.is_empty()
    {
        ks.last_point_ms = now;
        ks.report
            .points
            .push((now, totals.error_rate() as f32, ks.state));
        if ks.report.points.len() >= MAX_POINTS {
            let mut i = 0;
            ks.report.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            ks.report.point_step_ms = ks.report.point_step_ms.saturating_mul(2);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(start_ms: u64, status: u16) -> String {
        format!(
            r#"{{"start_time":"{start_ms}","duration_ms":5,"cluster":"backend","route":"r","authority":"a","status":{status},"grpc_status":null,"response_flags":"-","attempts":1,"upstream_host":"10.0.0.1:80"}}"#
        )
    }

    fn run(cfg: &str, lines: &[String]) -> (Totals, Vec<KeyReport>) {
        let mut r = Replay::new(Config::parse(cfg.as_bytes()).unwrap());
        for l in lines {
            r.feed(&serde_json::from_str(l).unwrap());
        }
        r.finish()
    }

    const FAST: &str = r#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 10,
        "error_rate_threshold": 0.5, "sleep_window": "1s", "max_sleep_window": "1s",
        "half_open_max_probes": 1, "half_open_successes_to_close": 2}}"#;

    #[test]
    fn replay_trips_on_failures_and_counts_spared_and_cost() {
        let t0 = 1_700_000_000_000;
        let mut lines: Vec<String> = (0..20).map(|i| line(t0 + i * 10, 200)).collect();
        lines.extend((0..40).map(|i| line(t0 + 200 + i * 10, 503)));
        // While open (sleep 1s..1.2s): 10 failures and 10 successes arrive.
        lines.extend((0..10).map(|i| line(t0 + 700 + i * 10, 503)));
        lines.extend((0..10).map(|i| line(t0 + 800 + i * 5, 200)));
        let (totals, reports) = run(FAST, &lines);
        assert_eq!(totals.replayed, 80);
        let r = &reports[0];
        assert_eq!(r.key, "backend");
        let t = &r.transitions[0];
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Closed, State::Open, Some(TripReason::ErrorRate))
        );
        assert!(t.figures.starts_with("error rate "), "{}", t.figures);
        assert!(r.rejected > 0);
        assert_eq!(r.rejected, r.spared + r.cost);
        assert!(r.spared >= 10 && r.cost == 10, "{r:?}");
    }

    #[test]
    fn replay_half_opens_and_closes_on_the_logs_clock() {
        let t0 = 1_700_000_000_000;
        let mut lines: Vec<String> = (0..20).map(|i| line(t0 + i * 10, 503)).collect();
        // Two seconds later (past the 1s..1.2s sleep): successes close it via two probes.
        lines.extend((0..10).map(|i| line(t0 + 2_500 + i * 100, 200)));
        let (_, reports) = run(FAST, &lines);
        let to: Vec<State> = reports[0].transitions.iter().map(|t| t.to).collect();
        assert_eq!(to, [State::Open, State::HalfOpen, State::Closed]);
        assert_eq!(
            reports[0].transitions[0].reason,
            Some(TripReason::ErrorRate)
        );
    }

    #[test]
    fn lines_answered_locally_are_not_replayed() {
        let local = r#"{"start_time":"1700000000000","duration_ms":0,"cluster":"backend","status":503,"response_flags":"-","upstream_host":"-"}"#;
        let (totals, reports) = run("{}", &[local.to_string()]);
        assert_eq!((totals.answered_locally, totals.replayed), (1, 0));
        assert!(reports.is_empty());
    }

    #[test]
    fn keys_beyond_max_keys_are_not_tracked() {
        let lines: Vec<String> = (0..5)
            .map(|i| line(1_700_000_000_000 + i, 200).replace("\"backend\"", &format!("\"c{i}\"")))
            .collect();
        let (totals, reports) = run(r#"{"max_keys": 3}"#, &lines);
        assert_eq!(reports.len(), 3);
        assert_eq!(totals.over_max_keys, 2);
    }

    #[test]
    fn completions_wait_for_the_clock() {
        // A slow failing request logged after fast ones: its failure counts at its end time.
        let mut r = Replay::new(Config::parse(FAST.as_bytes()).unwrap());
        let slow =
            line(1_700_000_000_000, 503).replace("\"duration_ms\":5", "\"duration_ms\":60000");
        r.feed(&serde_json::from_str(&slow).unwrap());
        r.feed(&serde_json::from_str(&line(1_700_000_001_000, 200)).unwrap());
        r.feed(&serde_json::from_str(&line(1_700_000_070_000, 200)).unwrap());
        // The log has reached +70 s: both early lines are decided, the slow one still in flight
        // at +1 s completed at +60 s, before the +70 s line's start.
        assert_eq!(r.reorder.len(), 1);
        assert_eq!(r.pending.len(), 2, "the clock is at +1 s: both in flight");
        let (_, reports) = r.finish();
        assert_eq!(reports[0].requests, 3);
    }

    #[test]
    fn a_request_logged_after_later_ones_is_decided_and_recorded_at_its_own_times() {
        // Envoy writes at completion: failures retried with a 400 ms backoff are read 400 ms
        // after they started, behind the fast successes that started meanwhile. Decided in
        // start order, the trip comes when the failures completed, not 400 ms later.
        let t0 = 1_700_000_000_000u64;
        let cfg = r#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 10,
            "error_rate_threshold": 0.3}}"#;
        let slow_fail = |start: u64| {
            line(start, 503)
                .replace("\"duration_ms\":5", "\"duration_ms\":400")
                .replace("\"attempts\":1", "\"attempts\":2")
        };
        let mut lines = Vec::new();
        for i in 0..60u64 {
            // By completion time: the successes of t0 + 10 i, the failures of t0 + 10 i - 400.
            lines.push(line(t0 + i * 10, 200));
            if i >= 40 {
                lines.push(slow_fail(t0 + i * 10 - 400));
            }
        }
        let (_, reports) = run(cfg, &lines);
        let trip = &reports[0].transitions[0];
        assert_eq!(trip.to, State::Open);
        // 20 slow failures started at t0..t0+190 (2 failing samples each) complete at
        // t0+400..t0+590; beside the successes, the rate passes 30% at t0+500.
        assert!(
            trip.at_ms < t0 + 600,
            "tripped at +{} ms: decided at read time, not at start",
            trip.at_ms - t0
        );
    }

    #[test]
    fn a_failure_that_crosses_the_threshold_trips_at_its_completion() {
        // 10 successes, then failures 1 ms apart: the 10th failure makes it 50% of 20. The
        // trip comes at that failure's completion, not at the next 100 ms merge.
        let t0 = 1_700_000_000_000u64;
        let mut lines: Vec<String> = (0..10).map(|i| line(t0 + i, 200)).collect();
        lines.extend((10..40).map(|i| line(t0 + i, 503)));
        let (_, reports) = run(FAST, &lines);
        let trip = &reports[0].transitions[0];
        assert_eq!(trip.to, State::Open);
        assert_eq!(trip.at_ms - t0, 19 + 5, "{}", trip.figures);
    }

    #[test]
    fn a_window_slide_trips_at_the_bucket_boundary_with_no_request_completing() {
        // 20 successes in the first bucket, 15 failures five buckets later: 43%, under 50%.
        // When the first bucket leaves the 10 s window, 15 of 15 failed, with nothing in flight:
        // a worker's next tick trips it, so the replay trips at the boundary, not at the next
        // request two seconds later.
        let t0 = 1_700_000_000_000u64; // a bucket boundary (1 s buckets)
        let mut lines: Vec<String> = (0..20).map(|i| line(t0 + i, 200)).collect();
        lines.extend((0..15).map(|i| line(t0 + 5_000 + i, 503)));
        lines.push(line(t0 + 12_000, 200));
        let (_, reports) = run(FAST, &lines);
        let trip = &reports[0].transitions[0];
        assert_eq!(
            (trip.from, trip.to, trip.reason),
            (State::Closed, State::Open, Some(TripReason::ErrorRate))
        );
        assert_eq!(trip.at_ms - t0, 10_000, "{}", trip.figures);
        assert!(
            trip.figures.contains("100.0% of 15 samples"),
            "{}",
            trip.figures
        );
    }

    #[test]
    fn slides_are_evaluated_and_do_not_trip_a_window_under_the_threshold() {
        // A request every 2.5 s, every fourth failing: the 10 s window holds 3 or 4 samples,
        // at most one failed (≤ 33%, under 50%; min_requests 3). Between requests the window
        // slides and is evaluated at the boundaries (the plot points on whole seconds come only
        // from there: completions land at …05); none trips.
        let cfg = r#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 3,
            "error_rate_threshold": 0.5}}"#;
        let t0 = 1_700_000_000_000u64;
        let lines: Vec<String> = (0..40u64)
            .map(|i| line(t0 + i * 2_500, if i % 4 == 3 { 503 } else { 200 }))
            .collect();
        let (_, reports) = run(cfg, &lines);
        let r = &reports[0];
        assert!(r.transitions.is_empty(), "{:?}", r.transitions);
        let on_boundaries = r
            .points
            .iter()
            .filter(|p| (p.0 - t0).is_multiple_of(1_000))
            .count();
        assert!(on_boundaries >= 10, "{:?}", r.points);
    }

    #[test]
    fn probe_samples_not_merged_at_the_close_count_in_the_new_window() {
        // The replay once dropped a worker's unmerged samples when a probe closed the circuit;
        // the filter merges them into the new window (a missed live trip in `demo --ci`). Here
        // the two probes still unmerged at the close bring the new window to `min_requests`.
        let cfg = r#"{"breaker": {"window": "3s", "buckets": 10, "min_requests": 20,
            "latency_p95_threshold": "200ms", "sleep_window": "1s", "max_sleep_window": "4s",
            "half_open_max_probes": 3, "half_open_successes_to_close": 3}}"#;
        let t0 = 1_700_000_000_000u64;
        let timed = |start: u64, ms: u64| {
            line(start, 200).replace("\"duration_ms\":5", &format!("\"duration_ms\":{ms}"))
        };
        // Slow: trips at the 20th completion, open 1 s to 1.2 s.
        let mut lines: Vec<String> = (0..30).map(|i| timed(t0 + i * 10, 300)).collect();
        // Three fast probes close it (two of them unmerged then); then 18 slow requests: with the
        // two probes' samples the new window holds 20 and trips again, without them it could not.
        lines.extend((0..3).map(|i| timed(t0 + 2_000 + i, 5)));
        lines.extend((0..18).map(|i| timed(t0 + 2_400 + i * 10, 300)));
        let (_, reports) = run(cfg, &lines);
        let seen: Vec<(State, State, Option<TripReason>)> = reports[0]
            .transitions
            .iter()
            .map(|t| (t.from, t.to, t.reason))
            .collect();
        let trip = (State::Closed, State::Open, Some(TripReason::LatencyP95));
        assert_eq!(
            seen.iter().filter(|t| **t == trip).count(),
            2,
            "{:?}",
            reports[0].transitions
        );
    }

    #[test]
    fn a_log_at_the_end_of_time_finishes() {
        // A start time or a duration that saturates the clock: no boundary or tick after it
        // may keep the replay waiting forever.
        let far = line(u64::MAX, 503);
        let long =
            line(1_700_000_000_000, 503).replace("\"duration_ms\":5", "\"duration_ms\":1e20");
        let mut lines: Vec<String> = (0..30).map(|i| line(1_700_000_000_000 + i, 503)).collect();
        lines.push(long);
        lines.push(far);
        let (totals, reports) = run(FAST, &lines);
        assert_eq!(totals.replayed, 32);
        assert!(!reports[0].transitions.is_empty());
    }

    #[test]
    fn keys_follow_key_by_and_overrides_resolve_per_key() {
        let cfg = r#"{"key_by": "authority",
            "breaker": {"window": "10s", "buckets": 10, "min_requests": 10, "error_rate_threshold": 0.5},
            "overrides": [{"match": {"authority": "API.example:80"}, "breaker": {"error_rate_threshold": 0.9}}]}"#;
        let t0 = 1_700_000_000_000;
        let mut lines = Vec::new();
        for (i, authority) in ["api.example:80", "other.example:80"].iter().enumerate() {
            // 70% failures: enough for 0.5, not for the override's 0.9.
            for j in 0..30u64 {
                let status = if j % 10 < 7 { 503 } else { 200 };
                lines.push(line(t0 + i as u64 * 1000 + j * 10, status).replace(
                    "\"authority\":\"a\"",
                    &format!("\"authority\":\"{authority}\""),
                ));
            }
        }
        let (_, reports) = run(cfg, &lines);
        let opened = |key: &str| {
            reports
                .iter()
                .find(|r| r.key == key)
                .map(|r| r.transitions.iter().any(|t| t.to == State::Open))
        };
        assert_eq!(
            opened("api.example:80"),
            Some(false),
            "the override's 0.9 holds"
        );
        assert_eq!(opened("other.example:80"), Some(true));
    }
}

//! The breaker's decisions and bookkeeping, in safe Rust with no ABI: what the wasm filter's
//! engine does, on process memory instead of proxy-wasm shared data.
//!
//! - The shared part of every key is the [`crate::store`] table, one per process; the per-key
//!   protocol over it is policy-core's [`flow`] (admit, complete or abandon a probe, record, merge,
//!   trip), the one the wasm filter runs.
//! - Each Envoy worker has its own [`Worker`]: the unmerged samples of its keys ([`Local`]), its
//!   jitter and its buffers. Workers are found by Envoy's worker index, each behind its own mutex,
//!   which only its worker takes on the request path; the tick (Envoy's main thread, every
//!   [`FLUSH_MS`]) takes it too, to merge samples a quiet worker would otherwise hold.
//! - Metric updates are collected in [`Pending`] and handed to Envoy by the caller, through the
//!   stream in a stream hook or through the configuration in the tick: the decision runs while
//!   request headers are still borrowed from Envoy, and Envoy wants a mutable stream to update a
//!   metric.
//!
//! The failure policy is the filter's: a request fails open only when the last state it read was
//! CLOSED (or its key has no entries); from OPEN or HALF_OPEN an update that cannot be made is a
//! rejection with `retry-after: 1` ([`flow::admit`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use policy_core::breaker::{Decision, Rejection, SplitMix64, State, Transition, TransitionLine};
use policy_core::config::{BreakerConfig, BudgetConfig, Config, Mode};
use policy_core::flow::{self, Admitted, FlushInput, Flushed, Geometry, Local, FLUSH_MS};
use policy_core::keys::EVICTION_SCAN;
use policy_core::retry::{budget_allows_retry, CompiledRetry, RequestView, RetryPlan};
use policy_core::window::{Outcome, TripReason};

use crate::abi::{self, LogLevel};
use crate::labels::Labels;
use crate::resets::{self, Feed};
use crate::store::{KeyEntries, Table};

/// Workers are found by `worker_index % WORKER_SLOTS`; Envoy runs fewer workers than this on
/// any machine the module targets, so each has its own.
pub const WORKER_SLOTS: usize = 64;
pub use policy_core::flow::MIN_TAKEOVER_IDLE_MS;
/// A key the table had no room for asks again at most this often.
pub const RETRY_ENTRIES_MS: u64 = 1_000;

/// The module's clock: milliseconds on Envoy's process-wide monotonic clock (`Instant`), from
/// an arbitrary start. All workers share it, so times written into the shared state compare.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of an instant taken earlier.
pub fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Never 0: some state fields read 0 as "never".
    u64::try_from(t.saturating_duration_since(start).as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1_000_000)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The configuration in force for a group of keys, compiled once: `[0]` the top level, `[i + 1]`
/// override `i`.
#[derive(Debug)]
pub struct Profile {
    pub mode: Mode,
    pub breaker: BreakerConfig,
    pub retry: CompiledRetry,
    pub budget: BudgetConfig,
    pub geometry: Geometry,
}

/// A metric update: counters add, gauges set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `meshbreaker_requests_total{key, decision}`.
    Requests(&'static str),
    /// `meshbreaker_transitions_total{key, to}`.
    Transitions(State),
    /// `meshbreaker_retry_budget_denied_total{key}`.
    BudgetDenied,
    /// `meshbreaker_kernel_resets_total{key}`: kernel resets attributed to the key.
    KernelResets,
    /// `meshbreaker_state{key}`.
    State,
    /// `meshbreaker_error_rate_ppm{key}`.
    ErrorRatePpm,
    /// `meshbreaker_latency_p95_ms{key}`.
    LatencyP95Ms,
}

/// Metric updates waiting for a handle on Envoy: `(metric, key label, value)`.
#[derive(Debug, Default)]
pub struct Pending {
    pub ops: Vec<(Metric, Box<str>, u64)>,
}

impl Pending {
    fn push(&mut self, m: Metric, label: &str, v: u64) {
        self.ops.push((m, label.into(), v));
    }
}

/// What this worker keeps per key.
#[derive(Debug)]
struct KeyLocal {
    /// The key's shared entries; `None` while the table has no room for it.
    entries: Option<Arc<KeyEntries>>,
    /// When to ask the table again for entries it had no room for.
    retry_entries_ms: u64,
    profile: usize,
    flow: Local,
    in_flight: u32,
    budget_ok: bool,
    /// The key's metric label (itself, or `_other` beyond the label budget).
    label: Box<str>,
    /// Upstream hosts (the sidecar's `peer` form) this worker saw for the key since its last
    /// flush; only with `reset_signals`, at most [`MAX_NEW_HOSTS`].
    new_hosts: Vec<String>,
}

/// Hosts a key learns per flush at most (the wasm filter's bound).
pub const MAX_NEW_HOSTS: usize = 4;

/// Kernel reset signals of a configuration: the sidecar's feed and the rate keys are held to.
#[derive(Debug)]
struct KernelSignals {
    feed: Arc<Feed>,
    max_resets_per_second: f64,
    /// The feed's sequence this configuration's tick last saw.
    seen: AtomicU64,
}

/// One Envoy worker's keys and buffers.
#[derive(Debug)]
pub struct Worker {
    keys: HashMap<Box<str>, KeyLocal>,
    rng: SplitMix64,
    enc: Vec<u8>,
    bins: Vec<(u64, u64)>,
}

impl Worker {
    fn new(seed: u64) -> Worker {
        Worker {
            keys: HashMap::new(),
            rng: SplitMix64(seed),
            enc: Vec::new(),
            bins: Vec::new(),
        }
    }
}

/// What the request path does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub decision: Decision,
    /// Record the outcome (false for `disabled`, rejected and untracked requests).
    pub record: bool,
    /// The most attempts this request may make; a larger attempt count is clamped.
    pub max_attempts: u32,
    pub profile: usize,
    pub retry: RetryPlan,
}

/// How a request ended, for [`Engine::complete`].
#[derive(Debug, Clone, Copy)]
pub enum End<'o> {
    /// A response (or an upstream failure): its outcome.
    Outcome(&'o Outcome),
    /// No response and no upstream failure (the client went away): no sample; a probe frees
    /// its place, failing if it had already run `ran_us` ≥ the latency threshold upstream.
    Abandoned { ran_us: u64 },
}

/// One filter configuration's breaker, shared by all workers.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    profiles: Vec<Profile>,
    idle_ms: u64,
    table: &'static Table,
    labels: &'static Labels,
    workers: Box<[Mutex<Worker>]>,
    kernel: Option<KernelSignals>,
}

fn lock(m: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    // A worker whose holder panicked (the hook failed open) still holds whole values.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(cfg: Config, table: &'static Table, labels: &'static Labels, seed: u64) -> Engine {
        let profile =
            |mode: Mode, b: &BreakerConfig, r: &policy_core::config::RetryConfig| Profile {
                mode,
                breaker: b.clone(),
                retry: CompiledRetry::new(r),
                budget: r.budget.clone(),
                geometry: Geometry::of(b),
            };
        let mut profiles = vec![profile(cfg.mode, &cfg.breaker, &cfg.retry)];
        profiles.extend(
            cfg.overrides
                .iter()
                .map(|o| profile(o.mode, &o.breaker, &o.retry)),
        );
        let longest_window = profiles
            .iter()
            .map(|p| ms(p.breaker.window))
            .max()
            .unwrap_or(0);
        let mut seeder = SplitMix64(seed);
        let workers = (0..WORKER_SLOTS)
            .map(|_| Mutex::new(Worker::new(seeder.next_u64())))
            .collect();
        let kernel = cfg.reset_signals.as_ref().map(|rs| KernelSignals {
            feed: resets::feed(rs),
            max_resets_per_second: rs.max_resets_per_second,
            seen: AtomicU64::new(0),
        });
        Engine {
            kernel,
            idle_ms: longest_window.max(MIN_TAKEOVER_IDLE_MS),
            profiles,
            cfg,
            table,
            labels,
            workers,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The sidecar's feed, with `reset_signals`.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        self.kernel.as_ref().map(|k| &k.feed)
    }

    pub fn profile(&self, i: usize) -> &Profile {
        self.profiles.get(i).unwrap_or(&self.profiles[0])
    }

    fn worker(&self, index: u32) -> MutexGuard<'_, Worker> {
        lock(&self.workers[index as usize % self.workers.len()])
    }

    /// Decides a request of `key` (profile `profile`, from [`crate::request::profile_index`]) on
    /// worker `worker` at `now_ms`: the decision, the retry plan, what to record.
    pub fn decide(
        &self,
        worker: u32,
        key: &str,
        profile: usize,
        req: &RequestView<'_>,
        now_ms: u64,
        pending: &mut Pending,
    ) -> Admission {
        let p = self.profile(profile);
        let mut guard = self.worker(worker);
        if !guard.keys.contains_key(key) && !self.make_room(&mut guard, now_ms, pending) {
            // Every local entry is busy: the request passes unguarded.
            let label = self.labels.label(key, self.cfg.max_keys);
            pending.push(Metric::Requests("allowed"), label, 1);
            let (retry, max_attempts, _) = p.retry.plan(p.mode, &Decision::Allow, req, true);
            return Admission {
                decision: Decision::Allow,
                record: false,
                max_attempts,
                profile,
                retry,
            };
        }
        let Worker { keys, rng, enc, .. } = &mut *guard;
        let fresh = !keys.contains_key(key);
        let l = match keys.get_mut(key) {
            Some(l) => l,
            None => {
                let Some(flow) = Local::new(&p.breaker, now_ms) else {
                    let (retry, max_attempts, _) =
                        p.retry.plan(p.mode, &Decision::Allow, req, true);
                    return Admission {
                        decision: Decision::Allow,
                        record: false,
                        max_attempts,
                        profile,
                        retry,
                    };
                };
                let label: Box<str> = self.labels.label(key, self.cfg.max_keys).into();
                // Every counter series of the key exists from its first request, at 0, as the
                // wasm filter defines them: "no transition yet" reads 0, not absent.
                for d in policy_core::metrics::DECISIONS {
                    pending.push(Metric::Requests(d), &label, 0);
                }
                for to in [State::Open, State::HalfOpen, State::Closed] {
                    pending.push(Metric::Transitions(to), &label, 0);
                }
                pending.push(Metric::BudgetDenied, &label, 0);
                pending.push(Metric::KernelResets, &label, 0);
                keys.entry(key.into()).or_insert(KeyLocal {
                    entries: None,
                    retry_entries_ms: 0,
                    profile,
                    flow,
                    in_flight: 0,
                    budget_ok: true,
                    label,
                    new_hosts: Vec::new(),
                })
            }
        };
        if l.entries.is_none() && now_ms >= l.retry_entries_ms {
            l.entries =
                self.table
                    .get_or_insert(key, &p.geometry, self.cfg.max_keys, self.idle_ms, now_ms);
            l.retry_entries_ms = now_ms.saturating_add(RETRY_ENTRIES_MS);
        }
        if fresh {
            // The state gauge exists from the key's first request too, with the shared state's
            // value (another worker may have opened the circuit already).
            let state = l
                .entries
                .as_ref()
                .and_then(|e| e.slot_state())
                .filter(|st| st.key == key)
                .map_or(State::Closed, |st| st.breaker.state);
            pending.push(Metric::State, &l.label, state.gauge() as u64);
        }
        let decision = match p.mode {
            Mode::Disabled => Decision::PassThrough,
            Mode::ForcedOpen => Decision::Reject(Rejection {
                reason: TripReason::ForcedOpen,
                retry_after_s: ms(p.breaker.sleep_window).div_ceil(1000).max(1),
            }),
            _ => self.admit(l, key, p, now_ms, rng, enc, pending),
        };
        let (decision_label, record) = match decision {
            Decision::Allow | Decision::PassThrough => ("allowed", p.mode != Mode::Disabled),
            Decision::Probe(_) => ("probe", true),
            Decision::Reject(_) => ("rejected", false),
            Decision::DryRunReject(_) => ("dry_run_reject", true),
        };
        pending.push(Metric::Requests(decision_label), &l.label, 1);
        // In dry_run a spent budget changes nothing, but is counted as in enforce.
        let (retry, max_attempts, budget_denied) =
            p.retry.plan(p.mode, &decision, req, l.budget_ok);
        if budget_denied {
            pending.push(Metric::BudgetDenied, &l.label, 1);
        }
        if record {
            l.in_flight = l.in_flight.saturating_add(1);
        }
        Admission {
            decision,
            record,
            max_attempts,
            profile,
            retry,
        }
    }

    /// Makes room for one more key in a full worker: drops a key with nothing in flight (looking
    /// at up to [`EVICTION_SCAN`]), preferring one with no unmerged samples; one that has some
    /// merges them first, so they are not lost with it. (Under a flood of new keys every key was
    /// used within the last merge period: were only keys with no samples dropped, a full worker
    /// would let every new key, an OPEN one among them, through unguarded.) False when every key
    /// looked at has a request in flight, whose completion needs its entry.
    fn make_room(&self, w: &mut Worker, now_ms: u64, pending: &mut Pending) -> bool {
        let max = usize::try_from(self.cfg.max_keys).unwrap_or(usize::MAX);
        if w.keys.len() < max {
            return true;
        }
        let Worker {
            keys,
            rng,
            enc,
            bins,
        } = w;
        let quiet = |l: &KeyLocal| l.flow.recorder.is_empty() && l.new_hosts.is_empty();
        let mut candidate = None;
        for (k, l) in keys.iter().take(EVICTION_SCAN) {
            if l.in_flight > 0 {
                continue;
            }
            if quiet(l) {
                candidate = Some(k.clone());
                break;
            }
            candidate.get_or_insert_with(|| k.clone());
        }
        let Some(k) = candidate else {
            return false;
        };
        let Some(l) = keys.get_mut(&k) else {
            return false;
        };
        if !quiet(l) {
            self.flush_key(l, &k, now_ms, rng, enc, bins, pending);
        }
        keys.remove(&k).is_some()
    }

    /// The shared decision on the key's state ([`flow::admit`]); a key whose entries were lost
    /// (evicted while idle) looks them up once more.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        l: &mut KeyLocal,
        key: &str,
        p: &Profile,
        now_ms: u64,
        rng: &mut SplitMix64,
        enc: &mut Vec<u8>,
        pending: &mut Pending,
    ) -> Decision {
        for _ in 0..2 {
            let Some(e) = l.entries.clone() else {
                return Decision::Allow;
            };
            e.touch(now_ms);
            match flow::admit(&mut &*e, key, p.mode, &p.breaker, now_ms, rng, enc) {
                Admitted::Lost => {
                    l.entries = self.table.get_or_insert(
                        key,
                        &p.geometry,
                        self.cfg.max_keys,
                        self.idle_ms,
                        now_ms,
                    );
                    l.retry_entries_ms = now_ms.saturating_add(RETRY_ENTRIES_MS);
                }
                Admitted::Decided {
                    decision,
                    transition,
                    state,
                } => {
                    if let Some(t) = transition {
                        on_transition(key, &l.label, &t, t.arrival_figures(), pending);
                        pending.push(Metric::State, &l.label, state.gauge() as u64);
                    }
                    return decision;
                }
                Admitted::Failed(d) => return d,
            }
        }
        Decision::Allow
    }

    /// A request of `key` decided on this worker with [`Admission::record`] ended: its probe (if
    /// it was one) is completed or abandoned, its sample recorded, and the key's samples merged
    /// when that is due. `upstream` is Envoy's `upstream.address` of the request (read only with
    /// `reset_signals`): a host the key learns, for the kernel resets attributed to it.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &self,
        worker: u32,
        key: &str,
        probe: Option<u32>,
        end: End<'_>,
        upstream: Option<&[u8]>,
        now_ms: u64,
        pending: &mut Pending,
    ) {
        let mut guard = self.worker(worker);
        let Worker {
            keys,
            rng,
            enc,
            bins,
        } = &mut *guard;
        let Some(l) = keys.get_mut(key) else {
            return;
        };
        l.in_flight = l.in_flight.saturating_sub(1);
        let p = self.profile(l.profile);
        if let Some(e) = &l.entries {
            e.touch(now_ms);
        }
        let outcome = match end {
            End::Outcome(o) => o,
            End::Abandoned { ran_us } => {
                if let (Some(id), Some(e)) = (probe, &l.entries) {
                    let t = flow::abandon_probe(
                        &mut &**e, key, id, ran_us, &p.breaker, now_ms, rng, enc,
                    );
                    if let Some((t, state)) = t {
                        on_transition(key, &l.label, &t, "probe_abandoned=true", pending);
                        pending.push(Metric::State, &l.label, state.gauge() as u64);
                    }
                }
                return;
            }
        };
        if let (Some(_), Some(h)) = (&self.kernel, upstream.and_then(resets::normalize_upstream)) {
            if !l.new_hosts.contains(&h) && l.new_hosts.len() < MAX_NEW_HOSTS {
                l.new_hosts.push(h);
            }
        }
        let failure = outcome.failure(&p.breaker.failure);
        if let (Some(id), Some(e)) = (probe, &l.entries) {
            let success = flow::probe_succeeded(outcome, failure, &p.breaker);
            let t = flow::complete_probe(&mut &**e, key, id, success, &p.breaker, now_ms, rng, enc);
            if let Some((t, state)) = t {
                let figures = if success {
                    "probe_success=true"
                } else {
                    "probe_success=false"
                };
                on_transition(key, &l.label, &t, figures, pending);
                pending.push(Metric::State, &l.label, state.gauge() as u64);
            }
        }
        let recorded = l.flow.record(outcome, failure, &p.geometry, now_ms);
        if recorded.due {
            self.flush_key(l, key, now_ms, rng, enc, bins, pending);
            l.flow
                .record_after_flush(outcome, failure, &p.geometry, now_ms, recorded);
        }
    }

    /// The tick (every [`FLUSH_MS`], Envoy's main thread): merges every key whose samples (or
    /// learned hosts) are that old, on every worker; when the sidecar's totals moved, every key
    /// with entries, so that kernel resets are attributed without waiting for traffic.
    pub fn tick(&self, now_ms: u64, pending: &mut Pending) {
        let resets_moved = self.kernel.as_ref().is_some_and(|k| {
            let seq = k.feed.totals().sequence;
            k.seen.swap(seq, Ordering::Relaxed) != seq
        });
        for w in self.workers.iter() {
            let mut guard = lock(w);
            let Worker {
                keys,
                rng,
                enc,
                bins,
            } = &mut *guard;
            for (k, l) in keys.iter_mut() {
                let news = !l.flow.recorder.is_empty() || !l.new_hosts.is_empty();
                if (l.flow.stale(now_ms) && news) || (resets_moved && l.entries.is_some()) {
                    self.flush_key(l, k, now_ms, rng, enc, bins, pending);
                }
            }
        }
    }

    /// Merges the key's samples into its shared window and trips it when the merged window says
    /// so ([`flow::flush`]); updates the retry budget and the gauges.
    #[allow(clippy::too_many_arguments)]
    fn flush_key(
        &self,
        l: &mut KeyLocal,
        key: &str,
        now_ms: u64,
        rng: &mut SplitMix64,
        enc: &mut Vec<u8>,
        bins: &mut Vec<(u64, u64)>,
        pending: &mut Pending,
    ) {
        let Some(e) = l.entries.clone() else {
            l.flow.recorder.clear();
            l.new_hosts.clear();
            l.flow.last_flush_ms = now_ms;
            return;
        };
        let p = self.profile(l.profile);
        let totals = self.kernel.as_ref().map(|k| k.feed.totals().peers);
        let mut input = FlushInput::without_resets(key, &p.breaker, p.geometry, now_ms);
        input.new_hosts = &l.new_hosts;
        input.resets = totals.as_deref();
        input.max_resets_per_second = self.kernel.as_ref().map(|k| k.max_resets_per_second);
        let flushed = flow::flush(&mut &*e, &mut l.flow, &input, rng, enc, bins);
        let m = match flushed {
            Flushed::Merged(m) => m,
            Flushed::Kept => return,
            Flushed::Lost => {
                l.new_hosts.clear();
                l.entries = None;
                l.retry_entries_ms = 0;
                return;
            }
        };
        l.new_hosts.clear();
        if m.attributed > 0 {
            pending.push(Metric::KernelResets, &l.label, m.attributed);
        }
        let totals = &m.totals;
        l.budget_ok =
            budget_allows_retry(&p.budget, p.breaker.window, totals.requests, totals.retries);
        let error_rate_ppm = (totals.error_rate() * 1e6).round() as u64;
        let p95_ms = m.p95_us.map(|us| us.div_ceil(1000)).unwrap_or(0);
        pending.push(Metric::ErrorRatePpm, &l.label, error_rate_ppm);
        pending.push(Metric::LatencyP95Ms, &l.label, p95_ms);
        let state = m.written.map_or(m.state_read, |(_, s)| s);
        pending.push(Metric::State, &l.label, state.gauge() as u64);
        if let Some((Some(t), _)) = m.written {
            let figures = format!(
                "samples={} failures={} error_rate_ppm={} p95_ms={p95_ms} kernel_resets={}",
                totals.samples,
                totals.failed(),
                error_rate_ppm,
                totals.kernel_resets
            );
            on_transition(key, &l.label, &t, &figures, pending);
        }
    }

    /// The shared state of `key`, as stored (for tests and diagnostics).
    pub fn state_of(&self, key: &str) -> Option<State> {
        self.table
            .get(key)
            .and_then(|e| e.slot_state())
            .filter(|st| st.key == key)
            .map(|st| st.breaker.state)
    }
}

/// A transition: counted, and logged once as the filter logs it ([`TransitionLine`]).
fn on_transition(key: &str, label: &str, t: &Transition, figures: &str, pending: &mut Pending) {
    if !t.is_change() {
        return;
    }
    pending.push(Metric::Transitions(t.to), label, 1);
    abi::log(
        LogLevel::Info,
        &TransitionLine::of(key, t, figures).to_string(),
    );
}

/// The flush period, for the module's ticker.
pub const TICK: Duration = Duration::from_millis(FLUSH_MS);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_core::retry::HeaderLookup;

    fn engine(json: &str) -> Engine {
        let table: &'static Table = Box::leak(Box::default());
        let labels: &'static Labels = Box::leak(Box::default());
        Engine::new(Config::parse(json.as_bytes()).unwrap(), table, labels, 7)
    }

    fn view<'a>(method: &'a str, h: &'a dyn HeaderLookup) -> RequestView<'a> {
        RequestView {
            method,
            path: "/",
            content_type: None,
            headers: h,
        }
    }

    const FAST: &str = r#"{"breaker":{"window":"2s","buckets":4,"min_requests":5,"error_rate_threshold":0.5,
        "sleep_window":"500ms","max_sleep_window":"4s","half_open_max_probes":1,"half_open_successes_to_close":1}}"#;

    fn fail() -> Outcome {
        Outcome {
            http_status: Some(500),
            attempts: 1,
            ..Outcome::default()
        }
    }

    fn ok() -> Outcome {
        Outcome {
            http_status: Some(200),
            attempts: 1,
            latency_us: Some(1_000),
            ..Outcome::default()
        }
    }

    #[test]
    fn failures_trip_at_the_tick_and_the_next_request_is_rejected() {
        let e = engine(FAST);
        let mut p = Pending::default();
        let t0 = 10_000;
        for i in 0..5 {
            let a = e.decide(0, "k", 0, &view("POST", &()), t0 + i, &mut p);
            assert_eq!(a.decision, Decision::Allow);
            e.complete(0, "k", None, End::Outcome(&fail()), None, t0 + i, &mut p);
        }
        assert_eq!(e.state_of("k"), Some(State::Closed), "not merged yet");
        e.tick(t0 + 150, &mut p);
        assert_eq!(e.state_of("k"), Some(State::Open));
        assert!(p
            .ops
            .iter()
            .any(|(m, k, v)| *m == Metric::Transitions(State::Open) && &**k == "k" && *v == 1));
        // Another worker sees the same state.
        let a = e.decide(1, "k", 0, &view("GET", &()), t0 + 160, &mut p);
        assert!(matches!(a.decision, Decision::Reject(_)), "{a:?}");
        assert!(!a.record);
    }

    /// Five failed requests of `k` on worker 0 from `t0`, merged (and tripped) by the tick.
    fn trip_with_failures(e: &Engine, p: &mut Pending, t0: u64) {
        for i in 0..5 {
            e.decide(0, "k", 0, &view("POST", &()), t0 + i, p);
            e.complete(0, "k", None, End::Outcome(&fail()), None, t0 + i, p);
        }
        e.tick(t0 + 150, p);
    }

    #[test]
    fn a_probe_that_succeeds_closes_the_circuit() {
        let e = engine(FAST);
        let mut p = Pending::default();
        let t0 = 10_000;
        trip_with_failures(&e, &mut p, t0);
        let later = t0 + 150 + 1_000;
        let a = e.decide(1, "k", 0, &view("GET", &()), later, &mut p);
        let Decision::Probe(id) = a.decision else {
            panic!("{a:?}")
        };
        assert_eq!(a.retry, RetryPlan::Off, "probes are not retried");
        assert_eq!(e.state_of("k"), Some(State::HalfOpen));
        e.complete(
            1,
            "k",
            Some(id),
            End::Outcome(&ok()),
            None,
            later + 5,
            &mut p,
        );
        assert_eq!(e.state_of("k"), Some(State::Closed));
    }

    #[test]
    fn an_abandoned_probe_frees_its_place() {
        let e = engine(FAST);
        let mut p = Pending::default();
        let t0 = 10_000;
        trip_with_failures(&e, &mut p, t0);
        let later = t0 + 2_000;
        let Decision::Probe(id) = e
            .decide(0, "k", 0, &view("GET", &()), later, &mut p)
            .decision
        else {
            panic!()
        };
        let busy = e.decide(0, "k", 0, &view("GET", &()), later + 1, &mut p);
        assert!(
            matches!(busy.decision, Decision::Reject(_)),
            "one probe at a time"
        );
        e.complete(
            0,
            "k",
            Some(id),
            End::Abandoned { ran_us: 10 },
            None,
            later + 2,
            &mut p,
        );
        let again = e.decide(0, "k", 0, &view("GET", &()), later + 3, &mut p);
        assert!(matches!(again.decision, Decision::Probe(_)), "{again:?}");
    }

    #[test]
    fn forced_open_and_disabled_profiles_decide_without_the_store() {
        let e = engine(
            r#"{"key_by":"cluster","overrides":[{"match":{"cluster":"f"},"mode":"forced_open"},
                {"match":{"cluster":"d"},"mode":"disabled"}]}"#,
        );
        let mut p = Pending::default();
        let f = e.decide(0, "f", 1, &view("GET", &()), 10_000, &mut p);
        assert!(matches!(
            f.decision,
            Decision::Reject(Rejection {
                reason: TripReason::ForcedOpen,
                ..
            })
        ));
        let d = e.decide(0, "d", 2, &view("GET", &()), 10_000, &mut p);
        assert_eq!((d.decision, d.record), (Decision::PassThrough, false));
    }

    #[test]
    fn an_allowed_request_gets_its_policy_and_the_budget_switches_retries_off() {
        let e = engine(
            r#"{"breaker":{"window":"2s","buckets":4},"retry":{"policies":[{"name":"all","max_retries":2}],
                "budget":{"ratio":0.0,"min_retries_per_second":0.0}}}"#,
        );
        let mut p = Pending::default();
        let a = e.decide(0, "k", 0, &view("GET", &()), 10_000, &mut p);
        assert_eq!((a.retry, a.max_attempts), (RetryPlan::Policy(0), 3));
        let retried = Outcome {
            attempts: 2,
            ..ok()
        };
        e.complete(0, "k", None, End::Outcome(&retried), None, 10_001, &mut p);
        e.tick(10_200, &mut p);
        let b = e.decide(0, "k", 0, &view("GET", &()), 10_201, &mut p);
        assert_eq!((b.retry, b.max_attempts), (RetryPlan::Off, 1));
        assert!(p.ops.iter().any(|(m, ..)| *m == Metric::BudgetDenied));
    }

    #[test]
    fn a_full_worker_never_lets_an_open_key_through_unguarded() {
        // max_keys 2: the worker holds two keys' samples at most.
        let e = engine(
            r#"{"max_keys":2,"breaker":{"window":"2s","buckets":4,"min_requests":5,
                "error_rate_threshold":0.5,"sleep_window":"30s","max_sleep_window":"60s"}}"#,
        );
        let mut p = Pending::default();
        let t0 = 10_000;
        for i in 0..5 {
            e.decide(0, "v", 0, &view("POST", &()), t0 + i, &mut p);
            e.complete(0, "v", None, End::Outcome(&fail()), None, t0 + i, &mut p);
        }
        e.tick(t0 + 150, &mut p);
        assert_eq!(e.state_of("v"), Some(State::Open));
        // Two other keys, each with a sample not merged yet: the worker is full of busy keys.
        for (i, k) in ["a", "b"].into_iter().enumerate() {
            let t = t0 + 200 + i as u64;
            e.decide(0, k, 0, &view("POST", &()), t, &mut p);
            e.complete(0, k, None, End::Outcome(&ok()), None, t, &mut p);
        }
        let a = e.decide(0, "v", 0, &view("GET", &()), t0 + 210, &mut p);
        assert!(matches!(a.decision, Decision::Reject(_)), "{a:?}");
    }

    #[test]
    fn requests_are_counted_per_decision() {
        let e = engine(FAST);
        let mut p = Pending::default();
        e.decide(0, "k", 0, &view("GET", &()), 10_000, &mut p);
        p.ops.clear();
        e.decide(0, "k", 0, &view("GET", &()), 10_001, &mut p);
        assert_eq!(p.ops, [(Metric::Requests("allowed"), "k".into(), 1)]);
    }

    #[test]
    fn a_new_key_starts_every_counter_series_at_zero() {
        let e = engine(FAST);
        let mut p = Pending::default();
        e.decide(0, "k", 0, &view("GET", &()), 10_000, &mut p);
        let zeros = p.ops.iter().filter(|(_, _, v)| *v == 0).count();
        assert_eq!(zeros, 4 + 3 + 2 + 1, "{:?}", p.ops);
    }
}

//! One key's protocol across workers: admit a request, complete it, merge a worker's samples into
//! the shared window, trip, probe and close, over a store the host provides.
//!
//! Why here: the filter, the replay and the property tests (and any other host, such as a native
//! module whose workers share process memory) all run this protocol. Written once, a change to it
//! (a new trip rule, a probe rule) is made once, and the property tests exercise the code the
//! filter runs rather than a model of it. Hosts only move bytes: they implement [`Store`] for a
//! key's two entries and call these functions with the time and the jitter.
//!
//! ## The store
//!
//! A key has two entries: its breaker state ([`SlotState`], read once per request) and its merged
//! window ([`Window`], written by the workers' flushes). Every write is a compare-and-swap against
//! the version the value was read with ([`cas_update`]). Envoy's shared data checks the version
//! only when the entry exists, so a write to an absent entry is blind; the flow therefore never
//! writes an entry it read as absent ([`Exhausted::Absent`]): hosts create the entries first.
//!
//! ## The rules that cross workers
//!
//! - A worker merges its samples at least every [`FLUSH_MS`] (on a completion or a tick), and
//!   evaluates the trip on the window as merged so far.
//! - Closing the circuit bumps the state's generation; a window of an older generation is started
//!   afresh at the next merge, so closing clears the window. Samples a worker recorded before the
//!   close and merges after it count in the new window (a worker cannot tell them apart).
//! - A window *newer* than the state just read means that read was stale: both are read again
//!   rather than wiping a freshly closed window.
//! - A trip is written only while the state is CLOSED and of the window's generation, so a
//!   circuit that closed meanwhile is never re-opened by the samples that opened it.
//! - `consecutive_failures` is counted per worker ([`Local`]): N failed attempts in a row on one
//!   worker make a merge due at once, and that merge trips the key (reason
//!   `consecutive_failures`) without waiting for the window.
//! - When the state cannot be updated (contention, a host refusal), a request fails open only if
//!   the last state read was CLOSED; from OPEN or HALF_OPEN it is rejected with `retry-after: 1`.

use crate::breaker::{Decision, Jitter, Rejection, State, Transition};
use crate::config::{BreakerConfig, Mode};
use crate::encoding::SlotState;
use crate::window::{
    bucket_ms, kernel_resets_exceed, threshold_us, trip_reason, Counts, FailureClass, Outcome,
    Recorder, TripReason, Window,
};

pub use crate::config::FLUSH_MS;

/// A full recorder whose merge failed asks again after this long (see [`Local::record`]).
pub const FULL_RETRY_MS: u64 = 1;

/// Compare-and-swap attempts before one update gives up (contention across workers).
pub const CAS_ATTEMPTS: usize = 16;

/// Which of a key's two entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    State,
    Window,
}

/// A refused write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The entry changed since it was read (another worker wrote it).
    Mismatch,
    /// The host refused the write.
    Failed,
}

/// A key's shared entries, as the host keeps them.
pub trait Store {
    /// The entry's bytes and version; `(None, _)` when absent.
    fn read(&mut self, entry: Entry) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `bytes` if the entry is still at `version` (an absent entry may be written blind,
    /// whatever the version: Envoy's rule; the flow never relies on it).
    fn write(&mut self, entry: Entry, bytes: &[u8], version: Option<u32>)
        -> Result<(), WriteError>;
}

/// What the update function decided.
pub enum Update<R> {
    /// Write the changed value back (with CAS), then return `R`.
    Write(R),
    /// Nothing to write: return `R`.
    Keep(R),
    /// What was read is stale in a way only a fresh read can fix (another entry it depends on
    /// moved on): read again, as after a CAS mismatch.
    Again,
}

/// Why an update did not complete; the caller's exhaustion policy decides what that means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The entry does not exist. Never written: a write would be blind.
    Absent,
    /// The entry does not decode (another filter version, or damage). Never written, never read
    /// as free: it is someone else's.
    Undecodable,
    /// [`CAS_ATTEMPTS`] writes in a row lost their compare-and-swap.
    Contention,
    /// The host refused the write.
    HostFailed,
}

/// A read: the value and its version.
pub type Read = (Option<Vec<u8>>, Option<u32>);

/// Read-modify-write of one entry with compare-and-swap, starting from `first` if the caller
/// already read it: reads, decodes, lets `f` change the value, and writes it back only at the
/// version it was read with, retrying on a mismatch. `on_exhausted` gets the last value that
/// decoded, so a caller can, say, fail open only when that value was CLOSED.
#[allow(clippy::too_many_arguments)]
pub fn cas_update<S: Store + ?Sized, T, R>(
    store: &mut S,
    entry: Entry,
    mut first: Option<Read>,
    enc: &mut Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
    encode: impl Fn(&T, &mut Vec<u8>),
    mut f: impl FnMut(&mut S, &mut T) -> Update<R>,
    on_exhausted: impl FnOnce(Exhausted, Option<T>) -> R,
) -> R {
    let mut last = None;
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, version) = first.take().unwrap_or_else(|| store.read(entry));
        let (Some(bytes), Some(version)) = (bytes, version) else {
            return on_exhausted(Exhausted::Absent, last);
        };
        let Some(mut value) = decode(&bytes) else {
            return on_exhausted(Exhausted::Undecodable, last);
        };
        match f(store, &mut value) {
            Update::Keep(r) => return r,
            Update::Again => continue,
            Update::Write(r) => {
                encode(&value, enc);
                match store.write(entry, enc, Some(version)) {
                    Ok(()) => return r,
                    Err(WriteError::Mismatch) => last = Some(value),
                    Err(WriteError::Failed) => {
                        return on_exhausted(Exhausted::HostFailed, Some(value))
                    }
                }
            }
        }
    }
    on_exhausted(Exhausted::Contention, last)
}

/// Wrapping comparison of window generations: true when `a` is newer than `b`.
pub fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// [`cas_update`] on the state entry of `key`: `f` runs only on the key's own state; an entry
/// holding another key gives `other()` and is not written.
fn update_state<S: Store + ?Sized, R>(
    store: &mut S,
    key: &str,
    first: Option<Read>,
    enc: &mut Vec<u8>,
    other: impl Fn() -> R,
    mut f: impl FnMut(&mut SlotState) -> Update<R>,
    on_exhausted: impl FnOnce(Exhausted, Option<SlotState>) -> R,
) -> R {
    cas_update(
        store,
        Entry::State,
        first,
        enc,
        |b| SlotState::decode(b).ok(),
        SlotState::encode_into,
        |_, st| {
            if st.key != key {
                return Update::Keep(other());
            }
            f(st)
        },
        on_exhausted,
    )
}

/// A window's geometry: what its epochs and `slow` counts mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    pub bucket_ms: u64,
    pub buckets: u32,
    /// 0 when the latency trip is off.
    pub threshold_us: u64,
}

impl Geometry {
    pub fn of(cfg: &BreakerConfig) -> Geometry {
        Geometry {
            bucket_ms: bucket_ms(cfg),
            buckets: cfg.buckets.max(1),
            threshold_us: threshold_us(cfg).unwrap_or(0),
        }
    }

    /// An empty window of this geometry.
    pub fn empty_window(&self, generation: u32) -> Window {
        let mut w = Window::new(self.buckets, generation);
        w.bucket_ms = self.bucket_ms;
        w.threshold_us = self.threshold_us;
        w
    }

    fn matches(&self, w: &Window) -> bool {
        w.bucket_ms == self.bucket_ms
            && w.threshold_us == self.threshold_us
            && w.buckets.len() == self.buckets as usize
    }

    pub fn epoch(&self, now_ms: u64) -> u64 {
        now_ms / self.bucket_ms.max(1)
    }
}

/// A probe succeeds when its request failed nothing and retried nothing, and, with the latency
/// trip on, answered under the latency threshold: a circuit opened by a slow upstream does not
/// close while the upstream is still slow.
pub fn probe_succeeded(
    outcome: &Outcome,
    failure: Option<FailureClass>,
    cfg: &BreakerConfig,
) -> bool {
    let slow = threshold_us(cfg)
        .zip(outcome.latency_us)
        .is_some_and(|(t, l)| l >= t);
    failure.is_none() && outcome.retried_attempts() == 0 && !slow
}

/// An activity mark more than this far ahead of a worker's clock was written before the wall
/// clock stepped back: it is replaced by the present one (by the key's workers, and by a key
/// looking for a slot), so it never keeps a slot from being taken over for the size of the step.
pub const FUTURE_MARK_MS: u64 = 1_000;

/// The shortest `idle_ms` a shell passes to [`takeover_allowed`] (it passes the longest window
/// when that is longer): several of the activity marks a busy worker writes each second, so a
/// busy key never looks idle.
pub const MIN_TAKEOVER_IDLE_MS: u64 = 5_000;

/// A slot may be taken over by another key (or released) only from a key that has seen no
/// request, and whose worker wrote no activity mark, for longer than `idle_ms`, and then only:
/// - CLOSED with no probe in flight;
/// - OPEN whose open period ended longer than `idle_ms` ago (its next request would have been a
///   probe, and none came);
/// - HALF_OPEN whose probes all started longer than `idle_ms` and its sleep window ago (their
///   requests are gone: a probe in flight keeps its worker's activity mark fresh).
///
/// So an OPEN or HALF_OPEN key never loses its slot while its open period or its probes are live,
/// and one that stopped getting traffic does not hold it forever. A time in the future (the clock
/// stepped back) is not idle.
pub fn takeover_allowed(st: &SlotState, now_ms: u64, idle_ms: u64) -> bool {
    let idle_since = |t: u64, bound: u64| now_ms >= t && now_ms - t > bound;
    let b = &st.breaker;
    if !idle_since(st.last_active_ms, idle_ms) {
        return false;
    }
    match b.state {
        State::Closed => b.probes.is_empty(),
        State::Open => idle_since(b.open_until_ms, idle_ms),
        State::HalfOpen => b
            .probes
            .iter()
            .all(|p| idle_since(p.started_ms, idle_ms.max(b.sleep_ms))),
    }
}

/// What [`admit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// The entry holds another key now (this one was CLOSED and idle), or is not ours to use.
    Lost,
    /// Decided on the key's state, which is now `state`; `transition` if the decision changed it.
    Decided {
        decision: Decision,
        transition: Option<Transition>,
        state: State,
    },
    /// The state could not be updated: the failure policy's decision.
    Failed(Decision),
}

/// Decides a request of `key`: one read of the state; a CLOSED state allows with no decode and
/// no write; otherwise the breaker decides and the state is written back (compare-and-swap) only
/// if the decision changed it (OPEN→HALF_OPEN, probe admission).
#[allow(clippy::too_many_arguments)]
pub fn admit<S: Store + ?Sized>(
    store: &mut S,
    key: &str,
    mode: Mode,
    cfg: &BreakerConfig,
    now_ms: u64,
    rng: &mut dyn Jitter,
    enc: &mut Vec<u8>,
) -> Admitted {
    // The CLOSED fast path: the key name and the state byte, no decode, no allocation. A CLOSED
    // circuit allows and changes nothing (in enforce and dry_run alike).
    let first = store.read(Entry::State);
    if let Some(b) = first.0.as_deref() {
        if let Ok((k, State::Closed)) = SlotState::peek(b) {
            if k == key.as_bytes() {
                return Admitted::Decided {
                    decision: Decision::Allow,
                    transition: None,
                    state: State::Closed,
                };
            }
        }
    }
    update_state(
        store,
        key,
        Some(first),
        enc,
        || Admitted::Lost,
        |st| {
            let step = st.breaker.decide(mode, cfg, now_ms, &mut *rng);
            let r = Admitted::Decided {
                decision: step.decision,
                transition: step.transition,
                state: st.breaker.state,
            };
            if step.changed {
                Update::Write(r)
            } else {
                Update::Keep(r)
            }
        },
        |why, last| {
            // Fail open only from CLOSED: a breaker that cannot update an OPEN or HALF_OPEN state
            // must not let a recovering upstream's traffic through unguarded.
            match last {
                Some(st) if st.key == key && st.breaker.state != State::Closed => {
                    let r = Rejection {
                        reason: st.breaker.reason.unwrap_or(TripReason::ErrorRate),
                        retry_after_s: 1,
                    };
                    Admitted::Failed(if mode == Mode::DryRun {
                        Decision::DryRunReject(r)
                    } else {
                        Decision::Reject(r)
                    })
                }
                // Someone else's entry (another version): not ours to use or change.
                _ if why == Exhausted::Undecodable => Admitted::Lost,
                _ => Admitted::Failed(Decision::Allow),
            }
        },
    )
}

/// Completes HALF_OPEN probe `id` of `key`: one compare-and-swap on the state. Returns the
/// transition and the new state when the probe changed something. On exhaustion the outcome is
/// dropped: the probe's quota slot is reclaimed after `sleep_window`.
#[allow(clippy::too_many_arguments)]
pub fn complete_probe<S: Store + ?Sized>(
    store: &mut S,
    key: &str,
    id: u32,
    success: bool,
    cfg: &BreakerConfig,
    now_ms: u64,
    jitter: &mut dyn Jitter,
    enc: &mut Vec<u8>,
) -> Option<(Transition, State)> {
    probe_update(store, key, enc, |b| {
        b.complete_probe(id, success, cfg, now_ms, &mut *jitter)
    })
}

/// A probe whose client went away before any response: frees its quota slot at once, or fails it
/// if it had run for the latency threshold ([`crate::breaker::BreakerState::abandon_probe`]).
#[allow(clippy::too_many_arguments)]
pub fn abandon_probe<S: Store + ?Sized>(
    store: &mut S,
    key: &str,
    id: u32,
    ran_us: u64,
    cfg: &BreakerConfig,
    now_ms: u64,
    jitter: &mut dyn Jitter,
    enc: &mut Vec<u8>,
) -> Option<(Transition, State)> {
    probe_update(store, key, enc, |b| {
        b.abandon_probe(id, ran_us, cfg, now_ms, &mut *jitter)
    })
}

/// One compare-and-swap on the state of `key` for the end of a probe: `f` changes the breaker
/// and says the transition; the state is written only when there is one.
fn probe_update<S: Store + ?Sized>(
    store: &mut S,
    key: &str,
    enc: &mut Vec<u8>,
    mut f: impl FnMut(&mut crate::breaker::BreakerState) -> Option<Transition>,
) -> Option<(Transition, State)> {
    update_state(
        store,
        key,
        None,
        enc,
        || None,
        |st| match f(&mut st.breaker) {
            Some(t) => Update::Write(Some((t, st.breaker.state))),
            None => Update::Keep(None),
        },
        |_, _| None,
    )
}

/// One worker's unmerged samples of one key.
#[derive(Debug, Clone)]
pub struct Local {
    pub recorder: Recorder,
    /// When this worker last merged the key's samples (or tried to).
    pub last_flush_ms: u64,
    /// Failed attempts in a row this worker saw (`consecutive_failures`).
    pub consecutive: u32,
    /// `consecutive_failures` of the key's configuration (0: off).
    pub consecutive_limit: u32,
}

impl Local {
    /// `None` when the configuration's latency threshold cannot be recorded.
    pub fn new(cfg: &BreakerConfig, now_ms: u64) -> Option<Local> {
        Some(Local {
            recorder: Recorder::new(threshold_us(cfg))?,
            last_flush_ms: now_ms,
            consecutive: 0,
            consecutive_limit: cfg.consecutive_failures,
        })
    }

    /// Whether this worker has seen `consecutive_failures` failed attempts in a row.
    pub fn consecutive_trip(&self) -> bool {
        self.consecutive_limit > 0 && self.consecutive >= self.consecutive_limit
    }

    /// Whether the samples are due for a merge at a tick: older than [`FLUSH_MS`].
    pub fn stale(&self, now_ms: u64) -> bool {
        since(now_ms, self.last_flush_ms) >= FLUSH_MS
    }

    /// Records a completed request's sample. `Recorded::due` says a merge is due now: the sample
    /// did not fit (another bucket; it is recorded again after the merge by
    /// [`Local::record_after_flush`]), the recorder is full, or the last merge is [`FLUSH_MS`] old.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        failure: Option<FailureClass>,
        geometry: &Geometry,
        now_ms: u64,
    ) -> Recorded {
        let recorded = self
            .recorder
            .record(geometry.epoch(now_ms), outcome, failure)
            .is_ok();
        // Retried attempts failed; a success after them breaks the run.
        self.consecutive = match failure {
            Some(_) => self
                .consecutive
                .saturating_add(outcome.retried_attempts().saturating_add(1)),
            None => 0,
        };
        // A full recorder asks for a merge at most once per millisecond: when merges keep losing
        // their compare-and-swap (a hot key on every worker) it still takes samples, and each
        // completion no longer pays up to `CAS_ATTEMPTS` more rounds.
        let full = self.recorder.is_full() && since(now_ms, self.last_flush_ms) >= FULL_RETRY_MS;
        Recorded {
            recorded,
            due: !recorded || full || self.stale(now_ms) || self.consecutive_trip(),
        }
    }

    /// Records a sample [`Local::record`] could not, once its merge has emptied the recorder.
    pub fn record_after_flush(
        &mut self,
        outcome: &Outcome,
        failure: Option<FailureClass>,
        geometry: &Geometry,
        now_ms: u64,
        r: Recorded,
    ) {
        if !r.recorded {
            let _ = self
                .recorder
                .record(geometry.epoch(now_ms), outcome, failure);
        }
    }
}

/// What [`Local::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub recorded: bool,
    pub due: bool,
}

/// Milliseconds from `earlier` to `now_ms`; "very long" when the wall clock stepped back past
/// `earlier`, so periodic work is due again at once instead of stalling until the clock catches up.
pub fn since(now_ms: u64, earlier: u64) -> u64 {
    now_ms.checked_sub(earlier).unwrap_or(u64::MAX)
}

/// What a flush needs besides the worker's samples.
pub struct FlushInput<'a> {
    pub key: &'a str,
    pub cfg: &'a BreakerConfig,
    pub geometry: Geometry,
    /// Upstream hosts this worker saw since its last flush (only with kernel reset signals).
    pub new_hosts: &'a [String],
    /// The sidecar's cumulative reset totals per host, if any were published.
    pub resets: Option<&'a std::collections::HashMap<String, u64>>,
    /// `max_resets_per_second` when kernel reset signals are on.
    pub max_resets_per_second: Option<f64>,
    /// The activity mark to write into the state, if one is due.
    pub activity: Option<u64>,
    pub now_ms: u64,
}

impl<'a> FlushInput<'a> {
    /// A flush of a key without kernel reset signals and no activity mark due: what a host with
    /// no sidecar (the replay, the property tests) passes.
    pub fn without_resets(
        key: &'a str,
        cfg: &'a BreakerConfig,
        geometry: Geometry,
        now_ms: u64,
    ) -> FlushInput<'a> {
        FlushInput {
            key,
            cfg,
            geometry,
            new_hosts: &[],
            resets: None,
            max_resets_per_second: None,
            activity: None,
            now_ms,
        }
    }
}

/// What a flush did.
#[derive(Debug, Clone, PartialEq)]
pub enum Flushed {
    /// The state holds another key now (this key was CLOSED and idle): the samples are dropped.
    Lost,
    /// The entries are not ours to read or write, or the merge lost every CAS: the recorder
    /// keeps its samples for the next flush.
    Kept,
    Merged(Merged),
}

/// A merge and what followed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The window's totals after the merge.
    pub totals: Counts,
    pub p95_us: Option<u64>,
    pub generation: u32,
    /// Kernel resets attributed to the key by this flush.
    pub attributed: u64,
    /// The key's state as read for the merge.
    pub state_read: State,
    /// When the state update after the merge was made (an activity mark was due, or the window
    /// may trip) and went through: the trip it made, if any, and the state then.
    pub written: Option<(Option<Transition>, State)>,
}

/// Merges the worker's samples into the shared window (compare-and-swap), attributes kernel
/// resets, then in one compare-and-swap on the state writes the activity mark and, if the window
/// of the same generation says so, the trip. On [`Flushed::Merged`] and [`Flushed::Lost`] the
/// recorder is emptied; on [`Flushed::Kept`] it keeps its samples.
pub fn flush<S: Store + ?Sized>(
    store: &mut S,
    local: &mut Local,
    input: &FlushInput<'_>,
    jitter: &mut dyn Jitter,
    enc: &mut Vec<u8>,
    bins: &mut Vec<(u64, u64)>,
) -> Flushed {
    let FlushInput {
        key,
        cfg,
        geometry: g,
        new_hosts,
        resets,
        now_ms,
        ..
    } = *input;
    local.last_flush_ms = now_ms;
    let now_epoch = g.epoch(now_ms);
    let recorder = &local.recorder;
    enum Merge {
        Lost,
        Kept,
        Merged(Counts, Option<u64>, u32, u64, State, bool),
    }
    let merge = cas_update(
        store,
        Entry::Window,
        None,
        enc,
        |b| Window::decode(b).ok(),
        |w, out| w.encode_into(out),
        |store, w| {
            // The state first, for the generation the window must have.
            let sb = store.read(Entry::State).0;
            let Some(st) = sb.and_then(|b| SlotState::decode(&b).ok()) else {
                return Update::Keep(Merge::Kept);
            };
            if st.key != key {
                return Update::Keep(Merge::Lost);
            }
            let gen = st.breaker.generation;
            if newer(w.generation, gen) {
                // Our state read is older than the window: read both again.
                return Update::Again;
            }
            // Whether anything is written: a flush with nothing to merge, learn or attribute (a
            // reset poll that moved other hosts, an activity refresh) leaves the window as it is.
            let mut changed = false;
            if newer(gen, w.generation) || !g.matches(w) {
                w.reset(g.buckets, gen);
                w.bucket_ms = g.bucket_ms;
                w.threshold_us = g.threshold_us;
                changed = true;
            }
            changed |= w.clear_future(now_epoch);
            changed |= !recorder.is_empty();
            w.merge_recorder(recorder, now_epoch, bins);
            for h in new_hosts {
                let total = resets.and_then(|r| r.get(h.as_str()).copied()).unwrap_or(0);
                let last = w.hosts.last().is_some_and(|l| l.host == *h);
                changed |= w.learn_host(h, total) || !last;
            }
            if !recorder.is_empty() {
                w.last_used_ms = now_ms;
            }
            let mut attributed = 0u64;
            if let Some(r) = resets {
                for h in w.hosts.iter_mut() {
                    let total = r.get(h.host.as_str()).copied().unwrap_or(0);
                    if total > h.seen {
                        attributed = attributed.saturating_add(total - h.seen);
                        changed = true;
                    }
                    // Totals never go backwards; if they seem to, keep the cursor where it
                    // was so the next rise is not counted twice.
                    h.seen = h.seen.max(total);
                }
            }
            if attributed > 0 {
                if let Some(mut kr) = Recorder::new(None) {
                    let _ = kr.record_kernel_resets(now_epoch, attributed);
                    w.merge_recorder(&kr, now_epoch, bins);
                }
            }
            let merged = Merge::Merged(
                w.totals(now_epoch),
                w.p95_us(now_epoch, bins),
                w.generation,
                attributed,
                st.breaker.state,
                st.breaker.sheds_a_share(),
            );
            if changed {
                Update::Write(merged)
            } else {
                Update::Keep(merged)
            }
        },
        |_, _| Merge::Kept,
    );
    let (totals, p95_us, generation, attributed, state, share) = match merge {
        Merge::Kept => return Flushed::Kept,
        Merge::Lost => {
            local.recorder.clear();
            return Flushed::Lost;
        }
        Merge::Merged(t, p, g, a, s, share) => (t, p, g, a, s, share),
    };
    local.recorder.clear();
    let mut merged = Merged {
        totals,
        p95_us,
        generation,
        attributed,
        state_read: state,
        written: None,
    };
    let kernel = input
        .max_resets_per_second
        .is_some_and(|max| kernel_resets_exceed(&merged.totals, cfg.window, max));
    let consecutive = local.consecutive_trip();
    // A circuit shedding a share follows its window at every merge (its share, or closing).
    let may_trip = share
        || (state == State::Closed
            && (kernel || consecutive || trip_reason(&merged.totals, cfg).is_some()));
    if may_trip || input.activity.is_some() {
        trip_after_merge(store, input, &mut merged, kernel, consecutive, jitter, enc);
    }
    // A run of failures counts towards a trip only while the circuit is closed: once it tripped
    // (here or elsewhere), the next trip needs a new run.
    let closed_now = merged.written.map_or(state, |(_, s)| s) == State::Closed;
    if !closed_now || merged.written.is_some_and(|(t, _)| t.is_some()) {
        local.consecutive = 0;
    }
    Flushed::Merged(merged)
}

/// One compare-and-swap on the key's state after a merge: the activity mark and, if the window
/// of the same generation says so, the trip. Exhausted, nothing is written: the window still
/// holds the samples, so the next flush evaluates again.
fn trip_after_merge<S: Store + ?Sized>(
    store: &mut S,
    input: &FlushInput<'_>,
    merged: &mut Merged,
    kernel: bool,
    consecutive: bool,
    jitter: &mut dyn Jitter,
    enc: &mut Vec<u8>,
) {
    let (key, cfg, now_ms, activity) = (input.key, input.cfg, input.now_ms, input.activity);
    let (window_gen, totals) = (merged.generation, &merged.totals);
    let out = update_state(
        store,
        key,
        None,
        enc,
        || None,
        |st| {
            let mut write = false;
            // A newer mark, or one replacing a mark from before a backward clock step.
            let stale = |a: u64| a > st.last_active_ms || st.last_active_ms > a + FUTURE_MARK_MS;
            if let Some(a) = activity.filter(|a| stale(*a)) {
                st.last_active_ms = a;
                write = true;
            }
            let mut t = None;
            let open_to_trips = st.breaker.state == State::Closed || st.breaker.sheds_a_share();
            if st.breaker.generation == window_gen && open_to_trips {
                t = if kernel {
                    st.breaker
                        .trip(TripReason::KernelResets, cfg, now_ms, &mut *jitter)
                } else if consecutive {
                    st.breaker
                        .trip(TripReason::ConsecutiveFailures, cfg, now_ms, &mut *jitter)
                } else {
                    st.breaker.evaluate(totals, cfg, now_ms, &mut *jitter)
                };
                write |= t.is_some();
            }
            let res = Some((t, st.breaker.state));
            if write {
                Update::Write(res)
            } else {
                Update::Keep(res)
            }
        },
        |_, _| None,
    );
    merged.written = out;
}

/// A key's entries in memory, for a host with one worker (the replay) and for tests. Created
/// present, as hosts must create theirs; every write bumps the version.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub state: (Vec<u8>, u32),
    pub window: (Vec<u8>, u32),
}

impl Memory {
    /// The entries of `key`, CLOSED, with an empty window of `geometry`.
    pub fn new(key: &str, geometry: &Geometry) -> Memory {
        let st = SlotState {
            key: key.to_string(),
            ..SlotState::default()
        };
        Memory {
            state: (st.encode(), 1),
            window: (geometry.empty_window(0).encode(), 1),
        }
    }

    /// The state as stored (`None` if it does not decode, which no flow write makes).
    pub fn slot_state(&self) -> Option<SlotState> {
        SlotState::decode(&self.state.0).ok()
    }

    /// The window as stored.
    pub fn window(&self) -> Option<Window> {
        Window::decode(&self.window.0).ok()
    }
}

impl Store for Memory {
    fn read(&mut self, entry: Entry) -> Read {
        let (bytes, version) = match entry {
            Entry::State => &self.state,
            Entry::Window => &self.window,
        };
        (Some(bytes.clone()), Some(*version))
    }

    fn write(
        &mut self,
        entry: Entry,
        bytes: &[u8],
        version: Option<u32>,
    ) -> Result<(), WriteError> {
        let e = match entry {
            Entry::State => &mut self.state,
            Entry::Window => &mut self.window,
        };
        if version.is_some_and(|v| v != e.1) {
            return Err(WriteError::Mismatch);
        }
        e.0.clear();
        e.0.extend_from_slice(bytes);
        e.1 = e.1.wrapping_add(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::FixedJitter;
    use crate::config::Config;
    use std::time::Duration;

    /// A memory store that runs `between` before its `at`-th host call: another worker's write
    /// between this worker's read and its write.
    struct Racing<F: FnMut(&mut Memory)> {
        mem: Memory,
        calls: usize,
        at: usize,
        between: F,
    }

    impl<F: FnMut(&mut Memory)> Racing<F> {
        fn tick(&mut self) {
            if self.calls == self.at {
                (self.between)(&mut self.mem);
            }
            self.calls += 1;
        }
    }

    impl<F: FnMut(&mut Memory)> Store for Racing<F> {
        fn read(&mut self, entry: Entry) -> Read {
            self.tick();
            self.mem.read(entry)
        }
        fn write(
            &mut self,
            entry: Entry,
            bytes: &[u8],
            version: Option<u32>,
        ) -> Result<(), WriteError> {
            self.tick();
            self.mem.write(entry, bytes, version)
        }
    }

    fn cfg() -> BreakerConfig {
        let mut c = Config::default().breaker;
        c.window = Duration::from_secs(10);
        c.buckets = 10;
        c.min_requests = 10;
        c.error_rate_threshold = 0.5;
        c
    }

    /// A worker's samples: `n` failures recorded at `now_ms`.
    fn failures(c: &BreakerConfig, n: usize, now_ms: u64) -> Local {
        let mut local = Local::new(c, now_ms).unwrap();
        let fail = Outcome {
            http_status: Some(503),
            attempts: 1,
            ..Outcome::default()
        };
        for _ in 0..n {
            let _ = local.record(
                &fail,
                Some(FailureClass::HttpStatus),
                &Geometry::of(c),
                now_ms,
            );
        }
        local
    }

    /// Flushes `local` into `store` at `now_ms`, without jitter.
    fn flush_at(
        store: &mut dyn Store,
        local: &mut Local,
        c: &BreakerConfig,
        now_ms: u64,
    ) -> Flushed {
        flush(
            store,
            local,
            &input(c, now_ms),
            &mut FixedJitter(0.0),
            &mut Vec::new(),
            &mut Vec::new(),
        )
    }

    fn input<'a>(cfg: &'a BreakerConfig, now_ms: u64) -> FlushInput<'a> {
        FlushInput::without_resets("k", cfg, Geometry::of(cfg), now_ms)
    }

    #[test]
    fn a_trip_is_not_written_when_the_circuit_closed_since_the_merge() {
        // The merge reads the state at generation 0; before the trip's read (the fourth host
        // call), the circuit tripped, probed and closed on other workers: generation 1. The
        // failures that were merged into generation 0 must not re-open it.
        let c = cfg();
        let g = Geometry::of(&c);
        let now = 100_000;
        let mut local = failures(&c, 20, now);
        let mut store = Racing {
            mem: Memory::new("k", &g),
            calls: 0,
            at: 3,
            between: |m: &mut Memory| {
                let mut st = m.slot_state().unwrap();
                st.breaker.generation = 1;
                let v = m.state.1;
                m.write(Entry::State, &st.encode(), Some(v)).unwrap();
            },
        };
        let f = flush_at(&mut store, &mut local, &c, now);
        let Flushed::Merged(m) = f else {
            panic!("{f:?}")
        };
        assert_eq!((m.generation, m.totals.samples), (0, 20));
        assert_eq!(m.written, Some((None, State::Closed)), "no trip");
        assert_eq!(store.mem.slot_state().unwrap().breaker.state, State::Closed);
    }

    #[test]
    fn a_trip_is_written_on_a_window_of_the_states_generation() {
        let c = cfg();
        let g = Geometry::of(&c);
        let now = 100_000;
        let mut local = failures(&c, 20, now);
        let mut mem = Memory::new("k", &g);
        let f = flush_at(&mut mem, &mut local, &c, now);
        let Flushed::Merged(m) = f else {
            panic!("{f:?}")
        };
        assert_eq!(m.written.map(|w| w.1), Some(State::Open));
        assert!(local.recorder.is_empty());
    }

    #[test]
    fn samples_recorded_before_a_close_count_in_the_new_window() {
        // A worker cannot tell which of its unmerged samples predate a close made on another
        // worker: they go into the new generation's window (the filter always did this; the
        // replay used to drop them, and then missed a latency trip the filter made).
        let c = cfg();
        let g = Geometry::of(&c);
        let now = 100_000;
        let mut local = failures(&c, 3, now);
        let mut mem = Memory::new("k", &g);
        let mut st = mem.slot_state().unwrap();
        st.breaker.generation = 7;
        let v = mem.state.1;
        mem.write(Entry::State, &st.encode(), Some(v)).unwrap();
        let f = flush_at(&mut mem, &mut local, &c, now + 50);
        let Flushed::Merged(m) = f else {
            panic!("{f:?}")
        };
        assert_eq!((m.generation, m.totals.samples), (7, 3));
    }

    #[test]
    fn a_flush_into_a_lost_slot_drops_the_samples() {
        let c = cfg();
        let g = Geometry::of(&c);
        let mut local = failures(&c, 3, 0);
        let mut mem = Memory::new("other", &g);
        let f = flush_at(&mut mem, &mut local, &c, 10);
        assert_eq!(f, Flushed::Lost);
        assert!(local.recorder.is_empty());
    }

    #[test]
    fn an_open_or_half_open_key_may_lose_its_slot_only_once_idle_after_its_open_period() {
        use crate::breaker::{BreakerState, Probe};
        let idle = 5_000;
        let at = |state: State, open_until_ms: u64, probes: Vec<Probe>| SlotState {
            key: "k".into(),
            last_active_ms: 1_000,
            breaker: BreakerState {
                state,
                open_until_ms,
                sleep_ms: 30_000,
                probes,
                ..BreakerState::default()
            },
        };
        let open = at(State::Open, 30_000, vec![]);
        assert!(
            !takeover_allowed(&open, 30_000 + idle, idle),
            "open period just over"
        );
        assert!(takeover_allowed(&open, 30_001 + idle, idle));
        let probe = |started_ms| Probe { id: 1, started_ms };
        let half = at(State::HalfOpen, 0, vec![probe(2_000)]);
        assert!(
            !takeover_allowed(&half, 31_000, idle),
            "a probe younger than its sleep"
        );
        assert!(takeover_allowed(&half, 32_001, idle), "an abandoned probe");
        assert!(takeover_allowed(
            &at(State::HalfOpen, 0, vec![]),
            6_001,
            idle
        ));
        let future = SlotState {
            last_active_ms: 90_000,
            ..at(State::Closed, 0, vec![])
        };
        assert!(
            !takeover_allowed(&future, 50_000, idle),
            "an activity mark in the future"
        );
    }

    #[test]
    fn an_absent_entry_is_never_written() {
        struct Empty;
        impl Store for Empty {
            fn read(&mut self, _: Entry) -> Read {
                (None, None)
            }
            fn write(&mut self, _: Entry, _: &[u8], _: Option<u32>) -> Result<(), WriteError> {
                panic!("a blind write")
            }
        }
        let c = cfg();
        let got = admit(
            &mut Empty,
            "k",
            Mode::Enforce,
            &c,
            0,
            &mut FixedJitter(0.0),
            &mut Vec::new(),
        );
        assert_eq!(got, Admitted::Failed(Decision::Allow));
    }
}

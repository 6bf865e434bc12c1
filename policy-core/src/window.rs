//! The sliding window of one key: counts per failure class, the exact latency trip, the reported P95.
//!
//! SPEC keeps one window per key for the whole Envoy process, while every Envoy worker runs its own
//! VM. So the window is split in two halves with different costs:
//!
//! - a [`Recorder`] per worker and key takes every completed request on the hot path. It covers one
//!   bucket of time and records in O(1): fixed counters plus the raw latencies of the flush
//!   interval (at most [`RECORDER_MAX_SAMPLES`], 1 KiB; binned only when merged), and is drained
//!   into the shared window at least every 100 ms. A key thus costs its worker well under 2 KiB
//!   whatever its traffic, where a dense histogram per key cost 12 KiB;
//! - the merged [`Window`] lives in proxy-wasm shared data. Its buckets keep the same counters and
//!   the latency histogram as sparse `(bin, count)` pairs, which is what makes it small to encode and
//!   cheap to merge. Trip decisions and the reported P95 are computed on the merged window when a
//!   recorder is merged (a tick), never per request.
//!
//! The latency trip is exact: each bucket counts the samples at or over `latency_p95_threshold`,
//! and the nearest-rank P95 of `n` samples is at or over the threshold exactly when fewer than
//! `ceil(0.95 n)` samples are under it. The histogram only feeds the P95 shown in gauges and logs.
//!
//! Histogram precision: two significant digits (`hdrhistogram` sigfig 2) keep every bin narrower than
//! 1% of its value, so the reported P95 (the bin's highest equivalent value) is within 1% of the exact
//! sample, inside SPEC's 2%. Latencies are recorded in microseconds from 1 µs to [`HIST_HIGHEST_US`]
//! (10 minutes; longer requests are recorded at the top bin, while their exact trip count is kept).
//! The bin of a latency is computed with one shared reference histogram (the bounds are constants),
//! never a histogram per key.

use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::BreakerConfig;

/// Lowest latency the histogram tells apart, in microseconds.
pub const HIST_LOWEST_US: u64 = 1;
/// Latencies above this (10 minutes) share the top bin of the reported P95.
pub const HIST_HIGHEST_US: u64 = 600_000_000;
/// Significant digits of the histogram: bins narrower than 1% of their value.
pub const HIST_SIGFIG: u8 = 2;
/// The quantile SPEC reports and trips on.
pub const P95: f64 = 0.95;

/// Why a sample is a failure. A retried attempt is an upstream attempt that failed and was retried
/// by Envoy: SPEC counts every attempt, so a request that ended after N attempts records N − 1 of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    HttpStatus = 0,
    GrpcStatus = 1,
    UpstreamReset = 2,
    RetriedAttempt = 3,
}

/// Number of [`FailureClass`] values.
pub const FAILURE_CLASSES: usize = 4;

/// The outcome of one request as the filter saw it, before classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// HTTP status of the response, if any came.
    pub http_status: Option<u16>,
    /// gRPC status from headers or trailers, if any.
    pub grpc_status: Option<u32>,
    /// Envoy reported an upstream connect failure or reset (response flags `UF`, `UR`, `UC`, `UPE`).
    pub upstream_reset: bool,
    /// The upstream's latency: from the request being complete at the filter to the response
    /// headers. `None` when there is none to take (an upgraded or `CONNECT` request).
    pub latency_us: Option<u64>,
    /// Upstream attempts made (`x-envoy-attempt-count`); 0 or 1 mean one.
    pub attempts: u32,
}

impl Outcome {
    /// The failure class of the final attempt under `failure` rules, or `None` for a success.
    pub fn failure(&self, failure: &crate::config::FailureConfig) -> Option<FailureClass> {
        if failure.upstream_resets && self.upstream_reset {
            return Some(FailureClass::UpstreamReset);
        }
        if let Some(code) = self.grpc_status {
            if failure.is_grpc_failure(code) {
                return Some(FailureClass::GrpcStatus);
            }
        }
        match self.http_status {
            Some(s) if failure.is_http_failure(s) => Some(FailureClass::HttpStatus),
            _ => None,
        }
    }

    /// Retried attempts before the final one.
    pub fn retried_attempts(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }
}

/// The counters of one bucket (or of a whole window, summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Completed samples: every upstream attempt, retried ones included.
    pub samples: u64,
    /// Failed samples per [`FailureClass`].
    pub failures: [u64; FAILURE_CLASSES],
    /// Samples with a latency (final outcomes): the population of the P95.
    pub latency_samples: u64,
    /// Latency samples at or over the latency threshold.
    pub slow: u64,
    /// Client requests that completed (the retry budget's deposits).
    pub requests: u64,
    /// Retries Envoy actually made (the retry budget's withdrawals).
    pub retries: u64,
    /// Kernel resets, refusals and timeouts attributed to this key by the sidecar.
    pub kernel_resets: u64,
}

impl Counts {
    pub fn failed(&self) -> u64 {
        self.failures.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub fn add(&mut self, other: &Counts) {
        self.samples = self.samples.saturating_add(other.samples);
        for (a, b) in self.failures.iter_mut().zip(other.failures.iter()) {
            *a = a.saturating_add(*b);
        }
        self.latency_samples = self.latency_samples.saturating_add(other.latency_samples);
        self.slow = self.slow.saturating_add(other.slow);
        self.requests = self.requests.saturating_add(other.requests);
        self.retries = self.retries.saturating_add(other.retries);
        self.kernel_resets = self.kernel_resets.saturating_add(other.kernel_resets);
    }

    /// Failure ratio in [0, 1]; 0 for an empty window.
    pub fn error_rate(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            (self.failed().min(self.samples) as f64) / (self.samples as f64)
        }
    }

    /// True when the nearest-rank P95 of the latency samples is at or over the threshold:
    /// fewer than `ceil(0.95 n)` samples lie under it.
    pub fn p95_at_or_over_threshold(&self) -> bool {
        let n = self.latency_samples;
        if n == 0 {
            return false;
        }
        let under = n.saturating_sub(self.slow);
        under < nearest_rank(n)
    }
}

/// The nearest rank of the P95 among `n` samples, `ceil(0.95 n)`, in exact integer arithmetic.
pub fn nearest_rank(n: u64) -> u64 {
    // ceil(95 n / 100) without floating point; counts never come near u64::MAX / 95.
    n.saturating_mul(95).div_ceil(100)
}

/// What a key's bucket length is: `window / buckets`, rounded up to whole milliseconds.
pub fn bucket_ms(cfg: &BreakerConfig) -> u64 {
    let window = cfg.window.as_millis() as u64;
    let buckets = u64::from(cfg.buckets.max(1));
    window.div_ceil(buckets).max(1)
}

/// The latency threshold in microseconds, if the latency trip is on.
pub fn threshold_us(cfg: &BreakerConfig) -> Option<u64> {
    cfg.latency_p95_threshold.map(|d| d.as_micros() as u64)
}

/// Envoy's response flags that make an attempt an upstream failure under `upstream_resets`, by
/// their access-log name and their legacy bit (what the `response.flags` property holds): `UR`
/// upstream remote reset, `UF` upstream connection failure, `UC` upstream connection
/// termination, and `UPE` upstream protocol error (what Envoy 1.40 flags when an HTTP/1.1
/// upstream resets in the middle of its response body, status 200 already sent downstream). The
/// filter reads the bits, the replay the names: one list keeps them the same failures.
pub const UPSTREAM_RESET_FLAGS: [(&str, u64); 4] =
    [("UR", 0x10), ("UF", 0x20), ("UC", 0x40), ("UPE", 0x80_0000)];

/// The bits of [`UPSTREAM_RESET_FLAGS`], or-ed.
pub const UPSTREAM_RESET_BITS: u64 = {
    let mut bits = 0;
    let mut i = 0;
    while i < UPSTREAM_RESET_FLAGS.len() {
        bits |= UPSTREAM_RESET_FLAGS[i].1;
        i += 1;
    }
    bits
};

/// Whether the access-log flag `name` is one of [`UPSTREAM_RESET_FLAGS`].
pub fn is_upstream_reset_flag(name: &str) -> bool {
    UPSTREAM_RESET_FLAGS.iter().any(|(n, _)| *n == name)
}

/// The latencies a recorder holds before [`Recorder::is_full`] asks for a merge (1 KiB of `u32`).
/// The filter merges at least every 100 ms anyway; this bounds a burst.
pub const RECORDER_MAX_SAMPLES: usize = 256;

/// The per-worker, per-key half of the window: one bucket of samples, recorded in O(1).
#[derive(Debug, Clone)]
pub struct Recorder {
    epoch: u64,
    counts: Counts,
    /// Latencies of this interval in µs, clamped to the histogram's range; binned when merged.
    latencies: Vec<u32>,
    threshold_us: Option<u64>,
}

/// A recorder refused a sample because it belongs to another bucket: merge, then record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochChanged;

/// The reference histogram that defines the bins (never counts anything); the bounds are
/// constants, so creating it cannot fail in practice, and a failure degrades to `None`.
fn reference() -> Option<&'static Histogram<u32>> {
    static H: OnceLock<Option<Histogram<u32>>> = OnceLock::new();
    H.get_or_init(|| Histogram::new_with_bounds(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_SIGFIG).ok())
        .as_ref()
}

impl Recorder {
    /// A recorder for a key whose latency threshold is `threshold_us`. Allocates nothing until
    /// the first sample. (`Option` for callers written when this allocated a histogram.)
    pub fn new(threshold_us: Option<u64>) -> Option<Recorder> {
        Some(Recorder {
            epoch: 0,
            counts: Counts::default(),
            latencies: Vec::new(),
            threshold_us,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.counts == Counts::default()
    }

    /// Heap bytes this recorder holds (its latency buffer).
    pub fn heap_bytes(&self) -> usize {
        self.latencies.capacity() * std::mem::size_of::<u32>()
    }

    /// True once the recorder holds [`RECORDER_MAX_SAMPLES`] latencies: merge it before more
    /// samples arrive (it still takes them; this is the caller's memory bound).
    pub fn is_full(&self) -> bool {
        self.latencies.len() >= RECORDER_MAX_SAMPLES
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Records one completed request in bucket `epoch` (`now_ms / bucket_ms`). O(1), no allocation.
    /// A non-empty recorder holding another epoch refuses with [`EpochChanged`].
    pub fn record(
        &mut self,
        epoch: u64,
        outcome: &Outcome,
        failure: Option<FailureClass>,
    ) -> Result<(), EpochChanged> {
        if epoch != self.epoch {
            if !self.is_empty() {
                return Err(EpochChanged);
            }
            self.epoch = epoch;
        }
        let c = &mut self.counts;
        let retried = u64::from(outcome.retried_attempts());
        c.samples = c.samples.saturating_add(1 + retried);
        c.failures[FailureClass::RetriedAttempt as usize] =
            c.failures[FailureClass::RetriedAttempt as usize].saturating_add(retried);
        if let Some(class) = failure {
            c.failures[class as usize] = c.failures[class as usize].saturating_add(1);
        }
        c.requests = c.requests.saturating_add(1);
        c.retries = c.retries.saturating_add(retried);
        let Some(latency_us) = outcome.latency_us else {
            return Ok(());
        };
        c.latency_samples = c.latency_samples.saturating_add(1);
        if self.threshold_us.is_some_and(|t| latency_us >= t) {
            c.slow = c.slow.saturating_add(1);
        }
        // HIST_HIGHEST_US (6e8) fits a u32.
        let v = latency_us.clamp(HIST_LOWEST_US, HIST_HIGHEST_US);
        self.latencies.push(u32::try_from(v).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Adds kernel resets attributed to this key in bucket `epoch`.
    pub fn record_kernel_resets(&mut self, epoch: u64, n: u64) -> Result<(), EpochChanged> {
        if epoch != self.epoch {
            if !self.is_empty() {
                return Err(EpochChanged);
            }
            self.epoch = epoch;
        }
        self.counts.kernel_resets = self.counts.kernel_resets.saturating_add(n);
        Ok(())
    }

    /// Empties the recorder after its samples were merged into the shared window.
    pub fn clear(&mut self) {
        self.counts = Counts::default();
        self.latencies.clear();
    }

    /// The recorded latencies binned as `(highest equivalent value, count)`, ascending, into `out`.
    fn bins_into(&self, out: &mut Vec<(u64, u64)>) {
        out.clear();
        let Some(h) = reference() else {
            return;
        };
        out.extend(
            self.latencies
                .iter()
                .map(|&v| (h.highest_equivalent(u64::from(v)), 1u64)),
        );
        out.sort_unstable_by_key(|x| x.0);
        out.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                kept.1 += later.1;
                true
            } else {
                false
            }
        });
    }
}

/// One bucket of the merged window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    /// `now_ms / bucket_ms` of the samples it holds; meaningless while `counts` is empty.
    pub epoch: u64,
    pub counts: Counts,
    /// Latency histogram, sparse: `(highest equivalent value in µs, count)`, ascending, no zero count.
    pub bins: Vec<(u64, u64)>,
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.counts == Counts::default() && self.bins.is_empty()
    }

    fn clear(&mut self) {
        self.counts = Counts::default();
        self.bins.clear();
    }

    /// Merges sorted `(value, count)` pairs into this bucket's sorted bins.
    fn merge_bins(
        &mut self,
        other: impl Iterator<Item = (u64, u64)>,
        scratch: &mut Vec<(u64, u64)>,
    ) {
        scratch.clear();
        let mut mine = self.bins.iter().copied().peekable();
        let mut theirs = other.peekable();
        loop {
            let next = match (mine.peek(), theirs.peek()) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    let v = (a.0, a.1.saturating_add(b.1));
                    mine.next();
                    theirs.next();
                    v
                }
                (Some(a), Some(b)) if a.0 < b.0 => {
                    let v = *a;
                    mine.next();
                    v
                }
                (Some(_), Some(b)) => {
                    let v = *b;
                    theirs.next();
                    v
                }
                (Some(a), None) => {
                    let v = *a;
                    mine.next();
                    v
                }
                (None, Some(b)) => {
                    let v = *b;
                    theirs.next();
                    v
                }
                (None, None) => break,
            };
            if next.1 > 0 {
                scratch.push(next);
            }
        }
        std::mem::swap(&mut self.bins, scratch);
    }
}

/// An upstream host a key has sent requests to, with the sidecar's cumulative reset count for it
/// when the key last took its share (so every kernel event is attributed once per key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCursor {
    /// `addr:port` as Envoy's `upstream.address` gives it (`10.0.0.5:8080`, `[::1]:8080`).
    pub host: String,
    /// Cumulative resets + refused + timeouts already attributed.
    pub seen: u64,
}

/// How many epochs ahead of a worker's `now` a bucket may be and still be another worker's newer
/// bucket rather than garbage from before a clock step: one tick's `now` is shared by every key it
/// flushes, so it can trail a boundary another worker already crossed. Real clock steps are far
/// larger than a bucket (at least 100 ms).
pub const FUTURE_SLACK: u64 = 1;

/// Most upstream hosts a key remembers for kernel reset attribution: the most recently seen ones.
/// A key with more upstream endpoints than this attributes only part of their resets (compare
/// `meshbreaker_kernel_resets_total` with the sidecar's own counters). At about 25 bytes a host,
/// 64 cost a window at most 1.6 KB more, and only with `reset_signals`.
pub const MAX_HOSTS_PER_KEY: usize = 64;
/// Longest host a window holds (`[ipv6]:port` is at most 47 bytes); longer ones are not learned,
/// so an entry can always be decoded again.
pub const MAX_HOST_LEN: usize = 64;

/// The merged window of one key, as kept in shared data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// Generation of the breaker's window: closing the circuit bumps the breaker's generation, and a
    /// window of an older generation is read as empty (SPEC: closing clears the window).
    pub generation: u32,
    /// The geometry the buckets were taken with: bucket length (ms) and latency threshold (µs, 0
    /// when the latency trip is off). A reader with another geometry starts the window afresh
    /// instead of misreading epochs or `slow` counts (a reload that changed `window`, `buckets`
    /// or `latency_p95_threshold`).
    pub bucket_ms: u64,
    pub threshold_us: u64,
    /// When a request of this key last completed (ms), for least-recently-used eviction.
    pub last_used_ms: u64,
    /// Upstream hosts learned from `upstream.address`, for the kernel reset signal.
    pub hosts: Vec<HostCursor>,
    /// Ring of `buckets` buckets, indexed by `epoch % buckets`.
    pub buckets: Vec<Bucket>,
}

impl Window {
    /// An empty window of `buckets` buckets.
    pub fn new(buckets: u32, generation: u32) -> Window {
        Window {
            generation,
            bucket_ms: 0,
            threshold_us: 0,
            last_used_ms: 0,
            hosts: Vec::new(),
            buckets: vec![Bucket::default(); buckets.max(1) as usize],
        }
    }

    /// Empties the window (keeps its allocations) and sets its generation and shape. Learned
    /// hosts go too: a new generation may be a new key (a slot takeover), which must not inherit
    /// the previous key's upstreams.
    pub fn reset(&mut self, buckets: u32, generation: u32) {
        self.generation = generation;
        self.hosts.clear();
        self.last_used_ms = 0;
        self.buckets
            .resize(buckets.max(1) as usize, Bucket::default());
        for b in &mut self.buckets {
            b.clear();
        }
    }

    /// True when `epoch` still lies inside a window ending at `now_epoch`.
    fn live(now_epoch: u64, epoch: u64, n: u64) -> bool {
        epoch <= now_epoch && now_epoch - epoch < n
    }

    /// The bucket for `epoch`, rotated (emptied) when it held another epoch. `None` when the epoch
    /// is too old to belong to the window any more (a straggler from a stalled worker).
    ///
    /// A sample "from the future" (recorded before the wall clock stepped back) is put in the
    /// current bucket, and a bucket holding a future epoch is garbage from before such a step: it
    /// is cleared rather than allowed to block the ring position, so a clock step never blinds
    /// the window.
    ///
    /// Samples from the epoch just before the window's oldest (recorded before a bucket boundary,
    /// merged after it: with `buckets: 1`, every worker's last ≤ 100 ms before each boundary) go
    /// into the oldest live bucket instead of being dropped. A bucket up to [`FUTURE_SLACK`]
    /// epochs ahead of `now_epoch` is another worker's newer bucket (this worker's `now` is a
    /// little stale), not garbage: older samples are merged into it rather than wiping it.
    fn bucket_for(&mut self, epoch: u64, now_epoch: u64) -> Option<&mut Bucket> {
        let n = self.buckets.len() as u64;
        let mut epoch = epoch.min(now_epoch);
        if n == 0 {
            return None;
        }
        if !Self::live(now_epoch, epoch, n) {
            if now_epoch - epoch != n {
                return None;
            }
            epoch = now_epoch + 1 - n;
        }
        let idx = (epoch % n) as usize;
        let b = self.buckets.get_mut(idx)?;
        if b.epoch != epoch {
            if b.epoch > epoch && b.epoch <= now_epoch.saturating_add(FUTURE_SLACK) {
                return Some(b);
            }
            // Same ring position, so the epochs differ by a multiple of the ring: the bucket holds
            // either an expired epoch or a future one. Both are garbage now.
            b.clear();
            b.epoch = epoch;
        }
        Some(b)
    }

    /// Empties buckets whose epoch lies more than [`FUTURE_SLACK`] after `now_epoch` (written
    /// before a clock step back). A bucket just ahead is a newer bucket another worker wrote after
    /// a boundary this worker's (slightly stale) `now` has not reached: it is kept.
    /// True when it emptied any.
    pub fn clear_future(&mut self, now_epoch: u64) -> bool {
        let mut cleared = false;
        for b in &mut self.buckets {
            if b.epoch > now_epoch.saturating_add(FUTURE_SLACK) && !b.is_empty() {
                b.clear();
                b.epoch = 0;
                cleared = true;
            }
        }
        cleared
    }

    /// Merges a worker's recorder into the window; `scratch` is reused to avoid allocation.
    /// Returns false when the recorder's bucket has already left the window (samples dropped).
    pub fn merge_recorder(
        &mut self,
        r: &Recorder,
        now_epoch: u64,
        scratch: &mut Vec<(u64, u64)>,
    ) -> bool {
        if r.is_empty() {
            return true;
        }
        let mut bins = std::mem::take(scratch);
        r.bins_into(&mut bins);
        let merged = match self.bucket_for(r.epoch(), now_epoch) {
            Some(b) => {
                b.counts.add(r.counts());
                b.merge_bins(bins.iter().copied(), scratch);
                true
            }
            None => false,
        };
        if scratch.capacity() < bins.capacity() {
            *scratch = bins;
        }
        merged
    }

    /// The counters summed over the buckets still inside the window at `now_epoch`.
    pub fn totals(&self, now_epoch: u64) -> Counts {
        let n = self.buckets.len() as u64;
        let mut t = Counts::default();
        for b in &self.buckets {
            if Self::live(now_epoch, b.epoch, n) {
                t.add(&b.counts);
            }
        }
        t
    }

    /// The nearest-rank P95 of the live buckets' histogram in µs: the highest value of the bin that
    /// holds the rank, so within 1% of the exact sample. Runs over the sparse bins (gathered into
    /// `scratch` and sorted); called when the window is merged or rotated, never per request.
    /// Counts come from shared data, so every sum saturates.
    pub fn p95_us(&self, now_epoch: u64, scratch: &mut Vec<(u64, u64)>) -> Option<u64> {
        let n = self.buckets.len() as u64;
        scratch.clear();
        let mut total = 0u64;
        for b in &self.buckets {
            if Self::live(now_epoch, b.epoch, n) {
                scratch.extend_from_slice(&b.bins);
                total = total.saturating_add(b.bins.iter().fold(0, |t, x| t.saturating_add(x.1)));
            }
        }
        if total == 0 {
            return None;
        }
        scratch.sort_unstable_by_key(|x| x.0);
        let rank = nearest_rank(total).max(1);
        let mut seen = 0u64;
        for (v, c) in scratch.iter() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(*v);
            }
        }
        scratch.last().map(|x| x.0)
    }

    /// Remembers `host` for kernel reset attribution; `cumulative` is the sidecar's current total
    /// for it, taken as already seen so that only later events count. The list is kept in order of
    /// the last sighting: a host seen again moves to the back with its cursor, and when the list
    /// holds [`MAX_HOSTS_PER_KEY`] hosts the one seen least recently makes room (a FIFO used to
    /// evict hosts in use and re-learn them at the current total, losing their events). True when
    /// the host is new.
    pub fn learn_host(&mut self, host: &str, cumulative: u64) -> bool {
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return false;
        }
        if let Some(i) = self.hosts.iter().position(|h| h.host == host) {
            let h = self.hosts.remove(i);
            self.hosts.push(h);
            return false;
        }
        if self.hosts.len() >= MAX_HOSTS_PER_KEY {
            self.hosts.remove(0);
        }
        self.hosts.push(HostCursor {
            host: host.to_string(),
            seen: cumulative,
        });
        true
    }
}

/// Why a breaker trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    ErrorRate,
    LatencyP95,
    KernelResets,
    ForcedOpen,
    /// `consecutive_failures` failed attempts in a row.
    ConsecutiveFailures,
    /// Adaptive shedding (`shedding: adaptive`) after an error-rate trip.
    Adaptive,
}

impl TripReason {
    /// The value of `x-meshbreaker-reason`, the body's `reason` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::ErrorRate => "error_rate",
            TripReason::LatencyP95 => "latency_p95",
            TripReason::KernelResets => "kernel_resets",
            TripReason::ForcedOpen => "forced_open",
            TripReason::ConsecutiveFailures => "consecutive_failures",
            TripReason::Adaptive => "adaptive",
        }
    }
}

/// SPEC's trip rule on a window's totals: at least `min_requests` samples, and an error rate at or
/// over the threshold (checked first) or a P95 at or over the latency threshold.
pub fn trip_reason(totals: &Counts, cfg: &BreakerConfig) -> Option<TripReason> {
    if totals.samples < u64::from(cfg.min_requests) {
        return None;
    }
    if totals.error_rate() >= cfg.error_rate_threshold {
        return Some(TripReason::ErrorRate);
    }
    if latency_trips(totals, cfg) {
        return Some(TripReason::LatencyP95);
    }
    None
}

/// The latency half of [`trip_reason`]: at least `min_requests` samples, the latency trip on, and
/// the window's P95 at or over its threshold.
pub fn latency_trips(totals: &Counts, cfg: &BreakerConfig) -> bool {
    totals.samples >= u64::from(cfg.min_requests)
        && cfg.latency_p95_threshold.is_some()
        && totals.p95_at_or_over_threshold()
}

/// SPEC's kernel reset rule: resets summed over the window ÷ the window's seconds exceed
/// `max_resets_per_second` (no `min_requests` guard).
pub fn kernel_resets_exceed(totals: &Counts, window: Duration, max_resets_per_second: f64) -> bool {
    let secs = window.as_secs_f64();
    secs > 0.0 && (totals.kernel_resets as f64) / secs > max_resets_per_second
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> BreakerConfig {
        let mut c = Config::default().breaker;
        c.window = Duration::from_secs(10);
        c.buckets = 10;
        c.min_requests = 10;
        c.error_rate_threshold = 0.5;
        c.latency_p95_threshold = Some(Duration::from_millis(100));
        c
    }

    fn ok(latency_ms: u64) -> Outcome {
        Outcome {
            http_status: Some(200),
            latency_us: Some(latency_ms * 1000),
            attempts: 1,
            ..Default::default()
        }
    }

    fn record_all(w: &mut Window, c: &BreakerConfig, now_ms: u64, outcomes: &[Outcome]) {
        let mut r = Recorder::new(threshold_us(c)).unwrap();
        let mut scratch = Vec::new();
        let epoch = now_ms / bucket_ms(c);
        for o in outcomes {
            let f = o.failure(&c.failure);
            if r.record(epoch, o, f).is_err() {
                // Full: merge, as the filter does, and go on.
                assert!(w.merge_recorder(&r, epoch, &mut scratch));
                r.clear();
                r.record(epoch, o, f).unwrap();
            }
        }
        assert!(w.merge_recorder(&r, epoch, &mut scratch));
    }

    #[test]
    fn nearest_rank_is_ceil_of_95_percent() {
        assert_eq!(nearest_rank(1), 1);
        assert_eq!(nearest_rank(20), 19);
        assert_eq!(nearest_rank(21), 20);
        assert_eq!(nearest_rank(100), 95);
        assert_eq!(nearest_rank(101), 96);
    }

    #[test]
    fn bucket_length_rounds_up_when_buckets_do_not_divide_the_window() {
        let mut c = cfg();
        c.window = Duration::from_secs(10);
        c.buckets = 3;
        assert_eq!(bucket_ms(&c), 3334);
        c.buckets = 12;
        c.window = Duration::from_secs(60);
        assert_eq!(bucket_ms(&c), 5000);
    }

    #[test]
    fn no_trip_before_min_requests_even_when_everything_fails() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let fail = Outcome {
            http_status: Some(503),
            ..ok(1)
        };
        record_all(&mut w, &c, 5_000, &[fail; 9]);
        assert_eq!(trip_reason(&w.totals(5), &c), None);
        record_all(&mut w, &c, 5_000, &[fail; 1]);
        assert_eq!(trip_reason(&w.totals(5), &c), Some(TripReason::ErrorRate));
    }

    #[test]
    fn error_rate_trips_at_threshold_not_below() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let fail = Outcome {
            http_status: Some(500),
            ..ok(1)
        };
        record_all(&mut w, &c, 0, &[fail; 4]);
        record_all(&mut w, &c, 0, &[ok(1); 6]);
        assert_eq!(trip_reason(&w.totals(0), &c), None, "0.4 < 0.5");
        record_all(&mut w, &c, 0, &[fail; 2]);
        assert_eq!(w.totals(0).error_rate(), 0.5);
        assert_eq!(trip_reason(&w.totals(0), &c), Some(TripReason::ErrorRate));
    }

    #[test]
    fn latency_trips_exactly_when_nearest_rank_p95_reaches_threshold() {
        let c = cfg();
        // 20 samples: rank 19. One slow sample leaves 19 fast ones: P95 is fast.
        let mut w = Window::new(c.buckets, 0);
        record_all(&mut w, &c, 0, &[ok(10); 19]);
        record_all(&mut w, &c, 0, &[ok(100); 1]);
        assert_eq!(trip_reason(&w.totals(0), &c), None);
        // Two slow samples of 20: the 19th smallest is slow.
        let mut w2 = Window::new(c.buckets, 0);
        record_all(&mut w2, &c, 0, &[ok(10); 18]);
        record_all(&mut w2, &c, 0, &[ok(100); 2]);
        assert_eq!(trip_reason(&w2.totals(0), &c), Some(TripReason::LatencyP95));
    }

    #[test]
    fn latency_trip_off_when_threshold_is_null() {
        let mut c = cfg();
        c.latency_p95_threshold = None;
        let mut w = Window::new(c.buckets, 0);
        record_all(&mut w, &c, 0, &[ok(10_000); 30]);
        assert_eq!(trip_reason(&w.totals(0), &c), None);
    }

    #[test]
    fn every_attempt_counts_retried_attempts_are_failures() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let retried_twice = Outcome {
            attempts: 3,
            ..ok(5)
        };
        record_all(&mut w, &c, 0, &[retried_twice; 4]);
        let t = w.totals(0);
        assert_eq!(t.samples, 12);
        assert_eq!(t.failures[FailureClass::RetriedAttempt as usize], 8);
        assert_eq!(t.requests, 4);
        assert_eq!(t.retries, 8);
        assert_eq!(
            trip_reason(&t, &c),
            Some(TripReason::ErrorRate),
            "8 of 12 failed"
        );
    }

    #[test]
    fn failure_classes_follow_the_failure_config() {
        let c = cfg();
        let reset = Outcome {
            upstream_reset: true,
            http_status: None,
            ..ok(1)
        };
        let grpc = Outcome {
            grpc_status: Some(14),
            http_status: Some(200),
            ..ok(1)
        };
        let grpc_ok = Outcome {
            grpc_status: Some(5),
            http_status: Some(200),
            ..ok(1)
        };
        let http = Outcome {
            http_status: Some(502),
            ..ok(1)
        };
        assert_eq!(reset.failure(&c.failure), Some(FailureClass::UpstreamReset));
        assert_eq!(grpc.failure(&c.failure), Some(FailureClass::GrpcStatus));
        assert_eq!(grpc_ok.failure(&c.failure), None);
        assert_eq!(http.failure(&c.failure), Some(FailureClass::HttpStatus));
        assert_eq!(ok(1).failure(&c.failure), None);
        let mut no_resets = c.failure.clone();
        no_resets.upstream_resets = false;
        assert_eq!(reset.failure(&no_resets), None);
    }

    #[test]
    fn samples_leave_the_window_after_it_slides_past_them() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let fail = Outcome {
            http_status: Some(500),
            ..ok(1)
        };
        record_all(&mut w, &c, 0, &[fail; 10]);
        assert_eq!(w.totals(9).samples, 10, "still inside a 10-bucket window");
        assert_eq!(
            w.totals(10).samples,
            0,
            "bucket 0 has left the window at epoch 10"
        );
        assert_eq!(trip_reason(&w.totals(10), &c), None);
    }

    #[test]
    fn rotation_reuses_a_bucket_for_a_newer_epoch() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        record_all(&mut w, &c, 0, &[ok(1); 3]);
        record_all(&mut w, &c, 10_000, &[ok(2); 2]);
        assert_eq!(w.totals(10).samples, 2);
        assert_eq!(w.buckets[0].epoch, 10);
    }

    #[test]
    fn a_straggler_older_than_the_window_is_dropped() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let mut r = Recorder::new(threshold_us(&c)).unwrap();
        r.record(0, &ok(1), None).unwrap();
        let mut s = Vec::new();
        assert!(!w.merge_recorder(&r, 11, &mut s));
        assert_eq!(w.totals(11).samples, 0);
    }

    #[test]
    fn samples_of_the_epoch_just_expired_go_into_the_oldest_live_bucket() {
        // With `buckets: 1` a recorder of epoch E is merged at E + 1, every boundary: it was
        // dropped. One bucket older than the window is kept, in the bucket that expires first.
        for n in [1u32, 10] {
            let mut w = Window::new(n, 0);
            let mut r = Recorder::new(None).unwrap();
            r.record(5, &ok(1), None).unwrap();
            let now = 5 + u64::from(n);
            assert!(w.merge_recorder(&r, now, &mut Vec::new()), "{n} buckets");
            assert_eq!(w.totals(now).samples, 1, "{n} buckets");
            assert_eq!(
                w.totals(now + 1).samples,
                0,
                "{n} buckets: gone a bucket later"
            );
        }
    }

    #[test]
    fn a_stale_now_keeps_another_workers_bucket_just_ahead() {
        // One tick's `now` serves every key it flushes; another worker may have merged into the
        // next epoch meanwhile. That bucket is not garbage from a clock step.
        for n in [1u32, 4] {
            let mut w = Window::new(n, 0);
            let mut ahead = Recorder::new(None).unwrap();
            ahead.record(8, &ok(1), None).unwrap();
            w.merge_recorder(&ahead, 8, &mut Vec::new());
            w.clear_future(7);
            let mut stale = Recorder::new(None).unwrap();
            stale.record(7, &ok(1), None).unwrap();
            assert!(w.merge_recorder(&stale, 7, &mut Vec::new()));
            assert_eq!(w.totals(8).samples, 2, "{n} buckets");
            // A bucket further ahead is from before a clock step back: cleared.
            w.clear_future(3);
            assert_eq!(w.totals(8).samples, 0, "{n} buckets");
        }
    }

    #[test]
    fn recorder_asks_for_a_merge_at_its_sample_bound() {
        let mut r = Recorder::new(None).unwrap();
        for _ in 0..RECORDER_MAX_SAMPLES - 1 {
            r.record(1, &ok(1), None).unwrap();
        }
        assert!(!r.is_full());
        r.record(1, &ok(1), None).unwrap();
        assert!(r.is_full());
        r.clear();
        assert!(!r.is_full() && r.is_empty());
    }

    #[test]
    fn recorder_refuses_another_epoch_until_cleared() {
        let mut r = Recorder::new(None).unwrap();
        r.record(1, &ok(1), None).unwrap();
        assert_eq!(r.record(2, &ok(1), None), Err(EpochChanged));
        r.clear();
        assert!(r.record(2, &ok(1), None).is_ok());
        assert_eq!(r.epoch(), 2);
    }

    #[test]
    fn window_merge_of_two_workers_equals_one_worker_recording_all() {
        let c = cfg();
        let a: Vec<Outcome> = (0..50).map(|i| ok(i * 7 % 300)).collect();
        let b: Vec<Outcome> = (0..40)
            .map(|i| Outcome {
                http_status: Some(if i % 3 == 0 { 503 } else { 200 }),
                ..ok(i * 11 % 500)
            })
            .collect();
        let mut wa = Window::new(c.buckets, 0);
        let mut wb = Window::new(c.buckets, 0);
        let mut all = Window::new(c.buckets, 0);
        record_all(&mut wa, &c, 1_000, &a);
        record_all(&mut wb, &c, 1_000, &b);
        record_all(&mut all, &c, 1_000, &a);
        record_all(&mut all, &c, 1_000, &b);
        let mut s = Vec::new();
        let mut rb = Recorder::new(threshold_us(&c)).unwrap();
        for o in &b {
            rb.record(1, o, o.failure(&c.failure)).unwrap();
        }
        assert!(wa.merge_recorder(&rb, 1, &mut s));
        assert_eq!(wa, all);
        assert_eq!(wa.p95_us(1, &mut s), all.p95_us(1, &mut s));
    }

    #[test]
    fn reported_p95_is_within_one_percent_of_the_exact_sample() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let lat: Vec<Outcome> = (1..=1000)
            .map(|i| Outcome {
                latency_us: Some(i * 1_237),
                ..ok(0)
            })
            .collect();
        record_all(&mut w, &c, 0, &lat);
        let mut s = Vec::new();
        let p = w.p95_us(0, &mut s).unwrap() as f64;
        let exact = (950 * 1_237) as f64;
        assert!((p - exact).abs() / exact <= 0.01, "{p} vs {exact}");
    }

    #[test]
    fn kernel_resets_trip_is_strictly_over_the_rate() {
        let mut t = Counts {
            kernel_resets: 50,
            ..Default::default()
        };
        assert!(!kernel_resets_exceed(&t, Duration::from_secs(10), 5.0));
        t.kernel_resets = 51;
        assert!(kernel_resets_exceed(&t, Duration::from_secs(10), 5.0));
    }

    #[test]
    fn a_future_bucket_left_by_a_clock_step_back_does_not_block_merges() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let fail = Outcome {
            http_status: Some(500),
            ..ok(1)
        };
        // Samples at t = 1 h, then the clock steps back to t = 0.
        record_all(&mut w, &c, 3_600_000, &[fail; 10]);
        record_all(&mut w, &c, 0, &[fail; 10]);
        assert_eq!(w.totals(0).samples, 10, "the new samples count");
        w.clear_future(0);
        assert!(w
            .buckets
            .iter()
            .all(|b| b.epoch == 0 || b.counts.samples == 0));
    }

    #[test]
    fn a_sample_recorded_before_a_clock_step_back_lands_in_the_current_bucket() {
        let c = cfg();
        let mut w = Window::new(c.buckets, 0);
        let mut r = Recorder::new(None).unwrap();
        r.record(360, &ok(1), None).unwrap();
        let mut s = Vec::new();
        assert!(w.merge_recorder(&r, 5, &mut s));
        assert_eq!(w.totals(5).samples, 1);
    }

    #[test]
    fn p95_saturates_on_bin_counts_from_shared_data() {
        // Regression (fuzz finding shared_state/window_p95_bin_count_overflow): bins decoded from
        // shared data can hold any counts; summing them overflowed.
        let mut w = Window::new(4, 0);
        w.buckets[0].epoch = 7;
        w.buckets[0].counts.samples = 1;
        w.buckets[0].bins = vec![(10, u64::MAX), (20, u64::MAX)];
        w.buckets[1].epoch = 7;
        w.buckets[1].counts.samples = 1;
        w.buckets[1].bins = vec![(30, u64::MAX)];
        let mut s = Vec::new();
        assert!(w.p95_us(7, &mut s).is_some());
    }

    #[test]
    fn learned_hosts_are_bounded_and_unique() {
        let mut w = Window::new(4, 0);
        assert!(w.learn_host("127.0.0.1:80", 5));
        assert!(!w.learn_host("127.0.0.1:80", 9));
        for i in 0..100 {
            w.learn_host(&format!("10.0.{i}.1:80"), 0);
        }
        assert_eq!(w.hosts.len(), MAX_HOSTS_PER_KEY);
        assert!(!w.learn_host(&"x".repeat(MAX_HOST_LEN + 1), 0));
    }

    #[test]
    fn a_host_seen_again_keeps_its_cursor_and_is_evicted_last() {
        // A FIFO evicted the oldest-learned host even while it was in use, and re-learned it at
        // the current total: its events in between were never attributed.
        let mut w = Window::new(4, 0);
        assert!(w.learn_host("10.9.9.9:80", 5));
        w.hosts[0].seen = 7;
        for i in 0..(MAX_HOSTS_PER_KEY * 3) {
            w.learn_host(&format!("10.0.{i}.1:80"), 0);
            assert!(!w.learn_host("10.9.9.9:80", 1_000), "known, not re-learned");
        }
        let h = w.hosts.iter().find(|h| h.host == "10.9.9.9:80").unwrap();
        assert_eq!(h.seen, 7, "its cursor, not a new baseline");
        assert_eq!(w.hosts.last().unwrap().host, "10.9.9.9:80");
    }
}

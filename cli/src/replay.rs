//! `meshbreaker replay`: access logs through policy-core on the log's own clock.
//!
//! Why: thresholds are otherwise tuned blind. policy-core is sans-IO, so the breaker the filter
//! runs can run here on yesterday's traffic: the same [`BreakerState`], [`Recorder`], [`Window`]
//! and trip rule, fed what the filter would have seen.
//!
//! How, per key (the filter's flow, one worker):
//! - a request is decided when it starts (`start_time`), with `BreakerState::decide`;
//! - an allowed request's outcome is recorded when it completes (`start_time` + `duration_ms`),
//!   every attempt counted; the window is merged at most every 100 ms of log time and the trip
//!   rule evaluated then, as the filter's flush does; probes complete with `complete_probe`;
//! - a request the replayed breaker rejects is counted: *would have spared* when it failed in
//!   reality, *would have cost* when it succeeded;
//! - a request that never reached an upstream (no upstream host, no response flags: answered
//!   locally, e.g. by the live breaker) has no known outcome and is not replayed.
//!
//! The log is written in completion order, so starts arrive slightly out of order: the clock
//! only moves forward (a late start is decided at the current clock), and completions wait in a
//! heap until the clock passes them. Memory is bounded by the requests in flight in the log,
//! `max_keys` keys, and per key at most [`MAX_TRANSITIONS`] transitions and [`MAX_POINTS`] plot
//! points. Jitter comes from a seeded [`SplitMix64`], so a replay is repeatable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use policy_core::breaker::{BreakerState, Decision, SplitMix64, State, Transition};
use policy_core::config::{BreakerConfig, Config, Mode};
use policy_core::keys::{key_for, sanitize_key_into};
use policy_core::window::{bucket_ms, threshold_us, Outcome, Recorder, TripReason, Window};

use crate::accesslog::Line;

/// The filter's flush period: how often a worker merges its samples and evaluates the trip.
pub const FLUSH_MS: u64 = 100;
/// Transitions kept per key for the report (later ones are counted only).
pub const MAX_TRANSITIONS: usize = 10_000;
/// Plot points kept per key; beyond, every other point is dropped and the spacing doubles.
pub const MAX_POINTS: usize = 4096;

/// One transition, with the window's figures when it opened.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionAt {
    pub at_ms: u64,
    pub from: State,
    pub to: State,
    pub reason: Option<TripReason>,
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
    breaker: BreakerState,
    window: Window,
    recorder: Recorder,
    last_flush_ms: u64,
    last_point_ms: u64,
    scratch: Vec<(u64, u64)>,
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
    clock_ms: u64,
    seq: u64,
    rng: SplitMix64,
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
            clock_ms: 0,
            seq: 0,
            rng: SplitMix64(0x6d65_7368_6272_6b72),
            totals: Totals::default(),
            parts: Default::default(),
            key_buf: String::new(),
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// A line that could not be read at all.
    pub fn unreadable(&mut self) {
        self.totals.lines += 1;
        self.totals.unreadable += 1;
    }

    /// Feeds one access log line.
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
        let now = start_ms.max(self.clock_ms);
        self.advance(now);
        let Some(k) = self.key_index(line) else {
            self.totals.over_max_keys += 1;
            return;
        };
        self.totals.replayed += 1;
        self.totals.first_ms.get_or_insert(start_ms);
        let outcome = Outcome {
            http_status: line.status.0.and_then(|s| u16::try_from(s as u64).ok()),
            grpc_status: line
                .grpc_status
                .0
                .and_then(|s| u32::try_from(s as u64).ok()),
            upstream_reset: line.upstream_reset(),
            latency_us: duration_ms.saturating_mul(1000),
            // Bounded as the filter bounds it: at most max_retries (≤ 10) + 1 attempts.
            attempts: line.attempts.0.map_or(1, |a| (a as u32).clamp(1, 11)),
        };
        let ks = &mut self.keys[k];
        let (bcfg, mode) = breaker_of(&self.cfg, ks.override_index);
        let failed = outcome.failure(&bcfg.failure).is_some() || outcome.retried_attempts() > 0;
        ks.report.requests += 1;
        ks.report.failed += u64::from(failed);
        let step = ks.breaker.decide(mode, bcfg, now);
        if let Some(t) = step.transition {
            push_transition(ks, now, t, String::new());
        }
        let probe = match step.decision {
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

    /// Moves the clock to `now`, completing every request that ended by then.
    fn advance(&mut self, now: u64) {
        while let Some(Reverse(p)) = self.pending.peek() {
            if p.end_ms > now {
                break;
            }
            if let Some(Reverse(p)) = self.pending.pop() {
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
        let recorder = Recorder::new(threshold_us(bcfg))?;
        let i = self.keys.len();
        self.keys.push(KeyState {
            report: KeyReport {
                key: self.key_buf.clone(),
                point_step_ms: 1000,
                ..KeyReport::default()
            },
            override_index,
            breaker: BreakerState::default(),
            window: Window::new(bcfg.buckets, 0),
            recorder,
            last_flush_ms: 0,
            last_point_ms: 0,
            scratch: Vec::new(),
        });
        self.index.insert(self.key_buf.clone(), i);
        Some(i)
    }

    fn complete(&mut self, p: Pending) {
        let now = p.end_ms;
        let Some(ks) = self.keys.get_mut(p.key) else {
            return;
        };
        let (bcfg, _) = breaker_of(&self.cfg, ks.override_index);
        let failure = p.outcome.failure(&bcfg.failure);
        if let Some(id) = p.probe {
            let ok = failure.is_none() && p.outcome.retried_attempts() == 0;
            if let Some(t) = ks.breaker.complete_probe(id, ok, bcfg, now, &mut self.rng) {
                if t.to != t.from {
                    if t.to == State::Closed {
                        // Closing clears the window (a new generation).
                        ks.window.reset(bcfg.buckets, ks.breaker.generation);
                        ks.recorder.clear();
                    }
                    push_transition(ks, now, t, String::new());
                }
            }
        }
        let epoch = now / bucket_ms(bcfg);
        let recorded = ks.recorder.record(epoch, &p.outcome, failure).is_ok();
        if !recorded || now.saturating_sub(ks.last_flush_ms) >= FLUSH_MS {
            flush(ks, bcfg, now, &mut self.rng);
            if !recorded {
                let _ = ks.recorder.record(epoch, &p.outcome, failure);
            }
        }
    }

    /// Completes every request still in flight and returns the per-key reports.
    pub fn finish(mut self) -> (Totals, Vec<KeyReport>) {
        while let Some(Reverse(p)) = self.pending.pop() {
            self.totals.last_ms = self.totals.last_ms.max(p.end_ms);
            self.complete(p);
        }
        let cfg = &self.cfg;
        let last = self.totals.last_ms;
        let mut rng = self.rng.clone();
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
        figures,
    });
}

/// The filter's flush: merge the recorder into the window, evaluate the trip rule.
fn flush(ks: &mut KeyState, bcfg: &BreakerConfig, now: u64, rng: &mut SplitMix64) {
    let now_epoch = now / bucket_ms(bcfg);
    ks.window
        .merge_recorder(&ks.recorder, now_epoch, &mut ks.scratch);
    ks.recorder.clear();
    ks.last_flush_ms = now;
    let totals = ks.window.totals(now_epoch);
    if let Some(t) = ks.breaker.evaluate(&totals, bcfg, now, rng) {
        let p95 = ks
            .window
            .p95_us(now_epoch, &mut ks.scratch)
            .map_or("-".into(), |us| format!("{}ms", us / 1000));
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
            .push((now, totals.error_rate() as f32, ks.breaker.state));
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
        assert_eq!(r.pending.len(), 1);
        r.feed(&serde_json::from_str(&line(1_700_000_001_000, 200)).unwrap());
        assert_eq!(r.pending.len(), 2, "the slow one is still in flight at +1s");
        let (_, reports) = r.finish();
        assert_eq!(reports[0].requests, 2);
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

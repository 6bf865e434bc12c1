//! The breaker state machine of one key: CLOSED → OPEN → HALF_OPEN → CLOSED (or back to OPEN).
//!
//! [`BreakerState`] is plain data because it lives in proxy-wasm shared data and is changed by
//! every Envoy worker with compare-and-swap: a worker reads it, calls one of the methods here with
//! `now`, and writes it back only when the method says it changed. In CLOSED, the common case, a
//! request's decision changes nothing, so the request path costs one read.
//!
//! Randomness (the sleep-window jitter of SPEC) comes in through [`Jitter`]; time comes in as `now_ms`.
//!
//! ## Adaptive shedding
//!
//! With `shedding: adaptive`, an error-rate trip does not reject everything: the circuit reads
//! OPEN with reason `adaptive` and rejects each request with the probability in [`BreakerState::shed`]
//! ([`crate::shedding`] computes it from the window at every merge), so an upstream that fails
//! part of its requests for reasons other than load still serves what it can. Only when nothing
//! succeeds ([`SHED_ALL`]) does the circuit behave like `all`: a sleep window, then HALF_OPEN
//! probes. Latency, kernel-reset and consecutive-failure trips are always binary, and may take over
//! a circuit that is shedding a share.
//!
//! Time is the wall clock of whoever calls, and wall clocks step. Stored instants are therefore
//! read with a sanity bound rather than trusted: an `open_until_ms` further ahead than the longest
//! possible open period ([`max_open_ms`]) is over, and a probe that "started" in the future (the
//! clock stepped back) is reclaimed. A step in either direction thus never holds a circuit open
//! longer than `max_sleep_window` × 1.2 and never blocks HALF_OPEN.

use crate::config::{BreakerConfig, Mode, Shedding};
use crate::window::{trip_reason, Counts, TripReason};

pub use crate::shedding::SHED_ALL;

/// OPEN lasts the current sleep window times a uniform factor in `[1.0, 1.0 + JITTER_SPREAD]`.
pub const JITTER_SPREAD: f64 = 0.2;

/// The circuit's state; the numbers are the values of the `meshbreaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    pub fn gauge(self) -> i64 {
        self as i64
    }

    /// The state named `s` ([`State::as_str`]).
    pub fn parse(s: &str) -> Option<State> {
        [State::Closed, State::Open, State::HalfOpen]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    pub fn from_u8(v: u8) -> Option<State> {
        match v {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

/// A source of uniform random numbers in `[0, 1)`, injected so tests can pin the jitter.
pub trait Jitter {
    fn unit(&mut self) -> f64;
}

/// A small deterministic generator (SplitMix64) for callers that have a seed but no RNG.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Jitter for SplitMix64 {
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A fixed jitter, for tests: `FixedJitter(0.0)` gives the shortest sleep, `0.999…` the longest.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&mut self) -> f64 {
        self.0
    }
}

/// A HALF_OPEN probe in flight: its id (so its completion finds it) and when it started (so a probe
/// whose request never completes frees its slot after `sleep_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub id: u32,
    pub started_ms: u64,
}

/// A state change, for the transition counter and the one info log line per transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// The trip reason for transitions into OPEN and HALF_OPEN; `None` on closing.
    pub reason: Option<TripReason>,
    /// For transitions into OPEN: how long it stays open, jitter included.
    pub open_for_ms: u64,
}

/// Why a request is rejected, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: TripReason,
    /// `retry-after`: seconds until HALF_OPEN, rounded up, at least 1.
    pub retry_after_s: u64,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it upstream with its policy's retry headers.
    Allow,
    /// Send it upstream as a HALF_OPEN probe (no retries); report its outcome with the id.
    Probe(u32),
    /// Answer locally (SPEC "What a client sees").
    Reject(Rejection),
    /// `dry_run`: would have been rejected; send it upstream marked `would-reject`.
    DryRunReject(Rejection),
    /// `disabled`: pass through untouched, set no retry headers, record nothing.
    PassThrough,
}

/// The result of a decision: the decision itself, and whether the state must be written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub decision: Decision,
    pub transition: Option<Transition>,
    pub changed: bool,
}

/// The shared breaker state of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BreakerState {
    pub state: State,
    /// Why the circuit opened (kept through HALF_OPEN and re-opens); `None` while CLOSED.
    pub reason: Option<TripReason>,
    pub open_until_ms: u64,
    /// The current sleep window before jitter: `sleep_window`, doubled per re-trip, capped.
    pub sleep_ms: u64,
    pub probes: Vec<Probe>,
    pub next_probe_id: u32,
    /// Successful probes since entering HALF_OPEN.
    pub successes: u32,
    /// Window generation: bumped on closing, which clears the window (see `window::Window`).
    pub generation: u32,
    /// With reason `adaptive`: the share of requests rejected, in 1/10000; [`SHED_ALL`] is a
    /// binary OPEN with its sleep window and probes. 0 otherwise.
    pub shed: u16,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The sleep window after a failed probe: doubled, capped at `max_sleep_window`.
pub fn doubled_sleep_ms(sleep_ms: u64, cfg: &BreakerConfig) -> u64 {
    let doubled = sleep_ms.max(ms(cfg.sleep_window)).saturating_mul(2);
    doubled.min(ms(cfg.max_sleep_window))
}

/// Every sleep window (before jitter) a breaker under `cfg` can be in: `sleep_window`, doubled per
/// re-trip from HALF_OPEN, capped at `max_sleep_window`.
pub fn sleep_sequence(cfg: &BreakerConfig) -> Vec<u64> {
    let max = ms(cfg.max_sleep_window);
    let mut s = ms(cfg.sleep_window).min(max);
    let mut out = vec![s];
    while s < max && s > 0 {
        s = doubled_sleep_ms(s, cfg);
        out.push(s);
    }
    out
}

/// The longest an OPEN period can last under `cfg`: `max_sleep_window` × (1 + [`JITTER_SPREAD`]),
/// rounded up. An `open_until_ms` further ahead than this was written before a clock step back.
pub fn max_open_ms(cfg: &BreakerConfig) -> u64 {
    let max = ms(cfg.max_sleep_window);
    max.saturating_add((max as f64 * JITTER_SPREAD).ceil() as u64)
}

impl BreakerState {
    /// Decides one arriving request. OPEN turns into HALF_OPEN here once its time is up (SPEC:
    /// evaluated when a request arrives); HALF_OPEN admits probes up to the quota.
    pub fn decide(
        &mut self,
        mode: Mode,
        cfg: &BreakerConfig,
        now_ms: u64,
        rng: &mut dyn Jitter,
    ) -> Step {
        let enforce = match mode {
            Mode::Disabled => {
                return Step {
                    decision: Decision::PassThrough,
                    transition: None,
                    changed: false,
                }
            }
            Mode::ForcedOpen => {
                let r = Rejection {
                    reason: TripReason::ForcedOpen,
                    retry_after_s: ceil_secs(ms(cfg.sleep_window)),
                };
                return Step {
                    decision: Decision::Reject(r),
                    transition: None,
                    changed: false,
                };
            }
            Mode::Enforce => true,
            Mode::DryRun => false,
        };
        let mut transition = None;
        let mut changed = false;
        if self.sheds_a_share() {
            // Adaptive shedding: no sleep window, no probes; the admitted share is the probe.
            let rejected = rng.unit() * f64::from(SHED_ALL) < f64::from(self.shed);
            let decision = if rejected {
                let r = Rejection {
                    reason: TripReason::Adaptive,
                    retry_after_s: 1,
                };
                if enforce {
                    Decision::Reject(r)
                } else {
                    Decision::DryRunReject(r)
                }
            } else {
                Decision::Allow
            };
            return Step {
                decision,
                transition: None,
                changed: false,
            };
        }
        if self.state == State::Open && self.open_is_over(cfg, now_ms) {
            transition = Some(Transition {
                from: State::Open,
                to: State::HalfOpen,
                reason: self.reason,
                open_for_ms: 0,
            });
            self.state = State::HalfOpen;
            self.probes.clear();
            self.successes = 0;
            changed = true;
        }
        let reject = |r: Rejection| {
            if enforce {
                Decision::Reject(r)
            } else {
                Decision::DryRunReject(r)
            }
        };
        let reason = self.reason.unwrap_or(TripReason::ErrorRate);
        let decision = match self.state {
            State::Closed => Decision::Allow,
            State::Open => reject(Rejection {
                reason,
                retry_after_s: ceil_secs(
                    self.open_until_ms
                        .saturating_sub(now_ms)
                        .min(max_open_ms(cfg)),
                ),
            }),
            State::HalfOpen if self.has_slow_probe(cfg, now_ms) => {
                // A probe still in flight after the latency threshold is already a slow, failed
                // probe: re-open now, rather than wait for an answer that may come after the
                // probe's slot was reclaimed, and then count for nothing.
                self.sleep_ms = doubled_sleep_ms(self.sleep_ms, cfg);
                let t = self.open(reason, State::HalfOpen, now_ms, rng);
                transition = Some(t);
                changed = true;
                reject(Rejection {
                    reason,
                    retry_after_s: ceil_secs(t.open_for_ms),
                })
            }
            State::HalfOpen => {
                changed |= self.reclaim_stuck_probes(cfg, now_ms);
                if self.probes.len() < cfg.half_open_max_probes as usize {
                    let id = self.next_probe_id;
                    self.next_probe_id = self.next_probe_id.wrapping_add(1);
                    self.probes.push(Probe {
                        id,
                        started_ms: now_ms,
                    });
                    changed = true;
                    Decision::Probe(id)
                } else {
                    reject(Rejection {
                        reason,
                        retry_after_s: 1,
                    })
                }
            }
        };
        Step {
            decision,
            transition,
            changed,
        }
    }

    /// True while the circuit rejects only a share of requests (adaptive shedding, not
    /// everything).
    pub fn sheds_a_share(&self) -> bool {
        self.state == State::Open
            && self.reason == Some(TripReason::Adaptive)
            && self.shed < SHED_ALL
    }

    /// True once an OPEN period is over: its end has passed, or it lies further ahead than any open
    /// period can last (the wall clock stepped back after the trip).
    pub fn open_is_over(&self, cfg: &BreakerConfig, now_ms: u64) -> bool {
        now_ms >= self.open_until_ms || self.open_until_ms - now_ms > max_open_ms(cfg)
    }

    /// Whether a probe in flight has run for the latency threshold (with the latency trip on).
    fn has_slow_probe(&self, cfg: &BreakerConfig, now_ms: u64) -> bool {
        let Some(threshold) = cfg.latency_p95_threshold.map(ms) else {
            return false;
        };
        self.probes
            .iter()
            .any(|p| p.started_ms <= now_ms && now_ms - p.started_ms >= threshold)
    }

    /// Frees the slots of probes whose requests never completed, and of probes that started "in
    /// the future" (the clock stepped back since), which would otherwise never age. A probe is
    /// given up after `sleep_window`, or with the latency trip on after the latency threshold if
    /// that is longer (a probe slower than that fails first, [`Self::has_slow_probe`]).
    fn reclaim_stuck_probes(&mut self, cfg: &BreakerConfig, now_ms: u64) -> bool {
        let limit = ms(cfg.sleep_window).max(cfg.latency_p95_threshold.map_or(0, ms));
        let before = self.probes.len();
        self.probes
            .retain(|p| p.started_ms <= now_ms && now_ms - p.started_ms < limit);
        self.probes.len() != before
    }

    /// A probe completed. Enough successes close the circuit (and clear the window); one failure
    /// re-opens it with a doubled sleep window. Returns `None` (and changes nothing) for a probe the
    /// state no longer knows: reclaimed, or the circuit moved on.
    pub fn complete_probe(
        &mut self,
        id: u32,
        success: bool,
        cfg: &BreakerConfig,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Option<Transition> {
        if self.state != State::HalfOpen {
            return None;
        }
        let pos = self.probes.iter().position(|p| p.id == id)?;
        self.probes.remove(pos);
        if success {
            self.successes = self.successes.saturating_add(1);
            if self.successes >= cfg.half_open_successes_to_close {
                return Some(self.close(cfg));
            }
            // Still HALF_OPEN; the probe count changed.
            return Some(Transition {
                from: State::HalfOpen,
                to: State::HalfOpen,
                reason: self.reason,
                open_for_ms: 0,
            });
        }
        self.sleep_ms = doubled_sleep_ms(self.sleep_ms, cfg);
        Some(self.open(
            self.reason.unwrap_or(TripReason::ErrorRate),
            State::HalfOpen,
            now_ms,
            jitter,
        ))
    }

    /// A probe whose client went away before any response: its quota slot is freed at once. If
    /// it had already run for the latency threshold (with the latency trip on) it says the
    /// upstream is still slow, and counts as a failed probe. `None` for a probe the state no
    /// longer knows.
    pub fn abandon_probe(
        &mut self,
        id: u32,
        ran_us: u64,
        cfg: &BreakerConfig,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Option<Transition> {
        if self.state != State::HalfOpen || !self.probes.iter().any(|p| p.id == id) {
            return None;
        }
        if crate::window::threshold_us(cfg).is_some_and(|t| ran_us >= t) {
            return self.complete_probe(id, false, cfg, now_ms, jitter);
        }
        self.probes.retain(|p| p.id != id);
        Some(Transition {
            from: State::HalfOpen,
            to: State::HalfOpen,
            reason: self.reason,
            open_for_ms: 0,
        })
    }

    /// Trips a CLOSED circuit (or one shedding a share) with `reason`; `None` otherwise.
    pub fn trip(
        &mut self,
        reason: TripReason,
        cfg: &BreakerConfig,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Option<Transition> {
        if self.state != State::Closed && !self.sheds_a_share() {
            return None;
        }
        let from = self.state;
        self.sleep_ms = ms(cfg.sleep_window).min(ms(cfg.max_sleep_window));
        Some(self.open(reason, from, now_ms, jitter))
    }

    /// Applies SPEC's trip rule to a window's totals: a CLOSED circuit trips; one shedding a
    /// share follows the window (its share changes, a latency trip takes over, or it closes).
    /// `Some` whenever the state changed and must be written, transition or not.
    pub fn evaluate(
        &mut self,
        totals: &Counts,
        cfg: &BreakerConfig,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Option<Transition> {
        let share = self.sheds_a_share();
        if self.state != State::Closed && !share {
            return None;
        }
        let reason = match cfg.shedding {
            Shedding::All => trip_reason(totals, cfg),
            // The latency trip keeps its binary meaning, so it is looked at first.
            Shedding::Adaptive => crate::window::latency_trips(totals, cfg)
                .then_some(TripReason::LatencyP95)
                .or_else(|| trip_reason(totals, cfg)),
        };
        match reason {
            Some(TripReason::ErrorRate) if cfg.shedding == Shedding::Adaptive => {
                let p = crate::shedding::probability(totals, cfg.shedding_success_rate);
                self.shed_share(p, cfg, now_ms, jitter)
            }
            Some(r) => self.trip(r, cfg, now_ms, jitter),
            None if share => Some(self.close(cfg)),
            None => None,
        }
    }

    /// Adaptive shedding at probability `p` (1/10000): a CLOSED circuit starts shedding once `p`
    /// reaches [`crate::shedding::ENTER`]; one shedding a share follows `p` in steps of
    /// [`crate::shedding::STEP`], closes at 0, and at [`SHED_ALL`] turns into a binary OPEN with
    /// its sleep window and probes.
    fn shed_share(
        &mut self,
        p: u16,
        cfg: &BreakerConfig,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Option<Transition> {
        let from = self.state;
        if p >= SHED_ALL {
            self.sleep_ms = ms(cfg.sleep_window).min(ms(cfg.max_sleep_window));
            let t = self.open(TripReason::Adaptive, from, now_ms, jitter);
            self.shed = SHED_ALL;
            return Some(t);
        }
        let changed = match from {
            State::Closed if p >= crate::shedding::ENTER => true,
            State::Closed => return None,
            _ if p == 0 => return Some(self.close(cfg)),
            _ => self.shed.abs_diff(p) >= crate::shedding::STEP,
        };
        if !changed {
            return None;
        }
        self.state = State::Open;
        self.reason = Some(TripReason::Adaptive);
        self.open_until_ms = 0;
        self.shed = p;
        self.probes.clear();
        self.successes = 0;
        Some(Transition {
            from,
            to: State::Open,
            reason: Some(TripReason::Adaptive),
            open_for_ms: 0,
        })
    }

    fn open(
        &mut self,
        reason: TripReason,
        from: State,
        now_ms: u64,
        jitter: &mut dyn Jitter,
    ) -> Transition {
        let u = jitter.unit().clamp(0.0, 1.0);
        let open_for_ms = ((self.sleep_ms as f64) * (1.0 + JITTER_SPREAD * u)).ceil() as u64;
        self.state = State::Open;
        self.reason = Some(reason);
        self.open_until_ms = now_ms.saturating_add(open_for_ms);
        self.probes.clear();
        self.successes = 0;
        // A binary OPEN: an adaptive one sheds everything until its probes succeed.
        self.shed = if reason == TripReason::Adaptive {
            SHED_ALL
        } else {
            0
        };
        Transition {
            from,
            to: State::Open,
            reason: Some(reason),
            open_for_ms,
        }
    }

    fn close(&mut self, cfg: &BreakerConfig) -> Transition {
        let (from, reason) = (self.state, self.reason);
        self.state = State::Closed;
        self.shed = 0;
        self.reason = None;
        self.open_until_ms = 0;
        self.sleep_ms = ms(cfg.sleep_window);
        self.probes.clear();
        self.successes = 0;
        self.generation = self.generation.wrapping_add(1);
        Transition {
            from,
            to: State::Closed,
            reason,
            open_for_ms: 0,
        }
    }

    /// Probes in flight (for tests and the quota).
    pub fn probes_in_flight(&self) -> usize {
        self.probes.len()
    }
}

impl Transition {
    /// True for a real change of state (a probe success that keeps HALF_OPEN is not one).
    pub fn is_change(&self) -> bool {
        self.from != self.to
    }

    /// The figures of the log line of a transition a request's arrival made: a re-open there is
    /// a probe found still in flight after the latency threshold, a failed probe.
    pub fn arrival_figures(&self) -> &'static str {
        if self.from == State::HalfOpen && self.to == State::Open {
            "probe_success=false probe_slow=true"
        } else {
            ""
        }
    }
}

/// The info line the filter logs at every transition, and what the replay's live comparison and
/// the tests read back: `meshbreaker: transition key=<key> from=<state> to=<state>
/// reason=<reason>[ open_for_ms=<n>][ <figures>]`. One definition for both sides, so the format
/// cannot drift from its parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionLine {
    pub key: String,
    pub from: State,
    pub to: State,
    /// The trip's reason (kept through HALF_OPEN and closing), or `probes_succeeded`.
    pub reason: String,
    /// For transitions into OPEN: how long it stays open, jitter included.
    pub open_for_ms: Option<u64>,
    /// The rest of the line: the window's figures on trips, the probe's outcome on probes.
    pub figures: String,
}

impl TransitionLine {
    /// What marks the line in a log.
    pub const PREFIX: &'static str = "meshbreaker: transition ";

    /// The line of transition `t` of `key`.
    pub fn of(key: &str, t: &Transition, figures: &str) -> TransitionLine {
        TransitionLine {
            key: key.to_string(),
            from: t.from,
            to: t.to,
            reason: t
                .reason
                .map_or("probes_succeeded", TripReason::as_str)
                .to_string(),
            open_for_ms: (t.to == State::Open).then_some(t.open_for_ms),
            figures: figures.to_string(),
        }
    }

    /// Reads the transition in a log line (anything before [`TransitionLine::PREFIX`], such as
    /// Envoy's own prefix, is skipped). `None` for a line without it; `Err` for one that has it
    /// but not the fields.
    pub fn find(line: &str) -> Option<Result<TransitionLine, String>> {
        let (_, rest) = line.split_once(Self::PREFIX)?;
        Some(Self::parse_fields(rest))
    }

    fn parse_fields(rest: &str) -> Result<TransitionLine, String> {
        let (mut key, mut from, mut to, mut reason, mut open_for_ms) =
            (None, None, None, None, None);
        let mut figures: Vec<&str> = Vec::new();
        for w in rest.split_whitespace() {
            match w.split_once('=') {
                Some(("key", v)) => key = Some(v),
                Some(("from", v)) => from = Some(v),
                Some(("to", v)) => to = Some(v),
                Some(("reason", v)) => reason = Some(v),
                Some(("open_for_ms", v)) => open_for_ms = Some(v),
                _ => figures.push(w),
            }
        }
        let state = |v: Option<&str>, f: &str| {
            let v = v.ok_or_else(|| format!("no {f}="))?;
            State::parse(v).ok_or_else(|| format!("unknown {f}= state"))
        };
        Ok(TransitionLine {
            key: key.ok_or("no key=")?.to_string(),
            from: state(from, "from")?,
            to: state(to, "to")?,
            reason: reason.ok_or("no reason=")?.to_string(),
            open_for_ms: match open_for_ms {
                Some(v) => Some(v.parse().map_err(|_| "open_for_ms not a number")?),
                None => None,
            },
            figures: figures.join(" "),
        })
    }
}

impl std::fmt::Display for TransitionLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}key={} from={} to={} reason={}",
            Self::PREFIX,
            self.key,
            self.from.as_str(),
            self.to.as_str(),
            self.reason
        )?;
        if let Some(ms) = self.open_for_ms {
            write!(f, " open_for_ms={ms}")?;
        }
        if !self.figures.is_empty() {
            write!(f, " {}", self.figures)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn transition_lines_read_back_what_they_write() {
        let t = Transition {
            from: State::Closed,
            to: State::Open,
            reason: Some(TripReason::LatencyP95),
            open_for_ms: 1176,
        };
        let line = TransitionLine::of("outbound|80||a", &t, "samples=239 p95_ms=302");
        let text = format!("[1796116425.412][7][info][wasm] {line}");
        assert_eq!(
            line.to_string(),
            "meshbreaker: transition key=outbound|80||a from=closed to=open reason=latency_p95 open_for_ms=1176 samples=239 p95_ms=302"
        );
        assert_eq!(TransitionLine::find(&text), Some(Ok(line)));
        let close = Transition {
            from: State::HalfOpen,
            to: State::Closed,
            reason: None,
            open_for_ms: 0,
        };
        let line = TransitionLine::of("k", &close, "");
        assert_eq!(
            line.to_string(),
            "meshbreaker: transition key=k from=half_open to=closed reason=probes_succeeded"
        );
        assert_eq!(TransitionLine::find(&line.to_string()), Some(Ok(line)));
        assert_eq!(TransitionLine::find("[x] other"), None);
        assert!(TransitionLine::find("meshbreaker: transition key=k")
            .unwrap()
            .is_err());
    }

    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        let mut c = Config::default().breaker;
        c.sleep_window = Duration::from_secs(10);
        c.max_sleep_window = Duration::from_secs(35);
        c.half_open_max_probes = 2;
        c.half_open_successes_to_close = 2;
        c
    }

    fn tripped(c: &BreakerConfig, now: u64) -> BreakerState {
        let mut s = BreakerState::default();
        s.trip(TripReason::ErrorRate, c, now, &mut FixedJitter(0.0))
            .unwrap();
        s
    }

    #[test]
    fn closed_allows_without_writing_state() {
        let mut s = BreakerState::default();
        let step = s.decide(Mode::Enforce, &cfg(), 5, &mut FixedJitter(0.0));
        assert_eq!(step.decision, Decision::Allow);
        assert!(!step.changed);
    }

    #[test]
    fn trip_opens_for_the_sleep_window_with_the_reason() {
        let c = cfg();
        let mut s = BreakerState::default();
        let t = s
            .trip(TripReason::LatencyP95, &c, 1_000, &mut FixedJitter(0.0))
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Closed, State::Open, Some(TripReason::LatencyP95))
        );
        assert_eq!(s.open_until_ms, 11_000);
        let step = s.decide(Mode::Enforce, &c, 1_500, &mut FixedJitter(0.0));
        assert_eq!(
            step.decision,
            Decision::Reject(Rejection {
                reason: TripReason::LatencyP95,
                retry_after_s: 10
            })
        );
    }

    #[test]
    fn sleep_window_jitter_stays_within_one_to_one_point_two() {
        let c = cfg();
        for u in [0.0, 0.25, 0.5, 0.999_999] {
            let mut s = BreakerState::default();
            let t = s
                .trip(TripReason::ErrorRate, &c, 0, &mut FixedJitter(u))
                .unwrap();
            assert!(
                t.open_for_ms >= 10_000 && t.open_for_ms <= 12_000,
                "{u}: {}",
                t.open_for_ms
            );
        }
        let mut rng = SplitMix64(42);
        let mut seen = (u64::MAX, 0);
        for _ in 0..1000 {
            let mut s = BreakerState::default();
            let t = s.trip(TripReason::ErrorRate, &c, 0, &mut rng).unwrap();
            seen = (seen.0.min(t.open_for_ms), seen.1.max(t.open_for_ms));
        }
        assert!(seen.0 >= 10_000 && seen.0 < 10_100, "{seen:?}");
        assert!(seen.1 <= 12_000 && seen.1 > 11_900, "{seen:?}");
    }

    #[test]
    fn retry_after_rounds_up_the_seconds_until_half_open() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        match s
            .decide(Mode::Enforce, &c, 8_999, &mut FixedJitter(0.0))
            .decision
        {
            Decision::Reject(r) => assert_eq!(r.retry_after_s, 2),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn open_turns_half_open_when_a_request_arrives_after_the_sleep() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        let step = s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        assert_eq!(
            step.transition.map(|t| (t.from, t.to)),
            Some((State::Open, State::HalfOpen))
        );
        assert_eq!(step.decision, Decision::Probe(0));
        assert!(step.changed);
    }

    #[test]
    fn half_open_never_admits_more_than_max_probes() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        let ds: Vec<Decision> = (0..5)
            .map(|i| {
                s.decide(Mode::Enforce, &c, 10_000 + i, &mut FixedJitter(0.0))
                    .decision
            })
            .collect();
        assert_eq!(ds[0], Decision::Probe(0));
        assert_eq!(ds[1], Decision::Probe(1));
        for d in &ds[2..] {
            assert_eq!(
                *d,
                Decision::Reject(Rejection {
                    reason: TripReason::ErrorRate,
                    retry_after_s: 1
                })
            );
        }
        assert_eq!(s.probes_in_flight(), 2);
    }

    #[test]
    fn a_completed_probe_frees_its_slot() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        s.complete_probe(0, true, &c, 10_010, &mut FixedJitter(0.0));
        assert_eq!(
            s.decide(Mode::Enforce, &c, 10_020, &mut FixedJitter(0.0))
                .decision,
            Decision::Probe(2)
        );
    }

    #[test]
    fn a_probe_still_in_flight_after_the_latency_threshold_reopens_the_circuit() {
        // An upstream slower than the sleep window: its probes' slots would be reclaimed before
        // they answer, and their late (slow) answers would count for nothing, leaving the circuit
        // HALF_OPEN for as long as the upstream is slow.
        let mut c = cfg();
        c.sleep_window = Duration::from_millis(250);
        c.latency_p95_threshold = Some(Duration::from_millis(800));
        let mut s = tripped(&c, 0);
        let Decision::Probe(_) = s
            .decide(Mode::Enforce, &c, 300, &mut FixedJitter(0.0))
            .decision
        else {
            panic!("a probe after the sleep window")
        };
        s.decide(Mode::Enforce, &c, 300, &mut FixedJitter(0.0));
        // 799 ms in: not slow yet; the quota is full.
        assert!(matches!(
            s.decide(Mode::Enforce, &c, 1_099, &mut FixedJitter(0.0))
                .decision,
            Decision::Reject(_)
        ));
        assert_eq!(s.state, State::HalfOpen);
        // 800 ms in: the probe is slow, so it failed: OPEN again with the sleep doubled.
        let step = s.decide(Mode::Enforce, &c, 1_100, &mut FixedJitter(0.0));
        assert!(matches!(step.decision, Decision::Reject(_)));
        assert_eq!(
            step.transition.map(|t| (t.from, t.to)),
            Some((State::HalfOpen, State::Open))
        );
        assert_eq!((s.state, s.sleep_ms), (State::Open, 500));
    }

    #[test]
    fn stuck_probe_frees_its_slot_after_sleep_window() {
        // With the latency trip off (with it on, a probe that long is a slow, failed probe).
        let mut c = cfg();
        c.latency_p95_threshold = None;
        let mut s = tripped(&c, 0);
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        assert!(matches!(
            s.decide(Mode::Enforce, &c, 19_999, &mut FixedJitter(0.0))
                .decision,
            Decision::Reject(_)
        ));
        assert_eq!(
            s.decide(Mode::Enforce, &c, 20_000, &mut FixedJitter(0.0))
                .decision,
            Decision::Probe(2)
        );
        // The reclaimed probe's late completion is ignored.
        assert_eq!(
            s.complete_probe(0, false, &c, 20_001, &mut FixedJitter(0.0)),
            None
        );
        assert_eq!(s.state, State::HalfOpen);
    }

    #[test]
    fn successes_to_close_close_the_circuit_and_clear_the_window() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        let g = s.generation;
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        s.decide(Mode::Enforce, &c, 10_000, &mut FixedJitter(0.0));
        let t1 = s
            .complete_probe(0, true, &c, 10_100, &mut FixedJitter(0.0))
            .unwrap();
        assert!(!t1.is_change());
        let t2 = s
            .complete_probe(1, true, &c, 10_200, &mut FixedJitter(0.0))
            .unwrap();
        assert_eq!((t2.from, t2.to), (State::HalfOpen, State::Closed));
        assert_eq!(s.state, State::Closed);
        assert_eq!(s.generation, g + 1);
        assert_eq!(s.reason, None);
    }

    #[test]
    fn failed_probe_reopens_with_doubled_sleep_capped_at_max() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        let mut sleeps = vec![];
        for _ in 0..4 {
            let now = s.open_until_ms;
            let step = s.decide(Mode::Enforce, &c, now, &mut FixedJitter(0.0));
            let Decision::Probe(id) = step.decision else {
                panic!("{step:?}")
            };
            let t = s
                .complete_probe(id, false, &c, now, &mut FixedJitter(0.0))
                .unwrap();
            assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
            sleeps.push(t.open_for_ms);
        }
        assert_eq!(sleeps, vec![20_000, 35_000, 35_000, 35_000]);
        // Closing resets the sleep window.
        let now = s.open_until_ms;
        for _ in 0..2 {
            let Decision::Probe(id) = s
                .decide(Mode::Enforce, &c, now, &mut FixedJitter(0.0))
                .decision
            else {
                panic!()
            };
            s.complete_probe(id, true, &c, now, &mut FixedJitter(0.0));
        }
        assert_eq!(s.state, State::Closed);
        let t = s
            .trip(TripReason::ErrorRate, &c, now, &mut FixedJitter(0.0))
            .unwrap();
        assert_eq!(t.open_for_ms, 10_000);
    }

    #[test]
    fn evaluate_trips_only_a_closed_circuit() {
        let mut c = cfg();
        c.min_requests = 2;
        let bad = Counts {
            samples: 4,
            failures: [4, 0, 0, 0],
            latency_samples: 4,
            ..Default::default()
        };
        let mut s = BreakerState::default();
        let t = s.evaluate(&bad, &c, 0, &mut FixedJitter(0.0)).unwrap();
        assert_eq!(t.reason, Some(TripReason::ErrorRate));
        assert_eq!(s.evaluate(&bad, &c, 1, &mut FixedJitter(0.0)), None);
    }

    #[test]
    fn dry_run_decides_and_counts_but_never_rejects() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        assert!(
            matches!(s.decide(Mode::DryRun, &c, 5, &mut FixedJitter(0.0)).decision, Decision::DryRunReject(r) if r.reason == TripReason::ErrorRate)
        );
        // The state machine still runs: HALF_OPEN after the sleep, probes counted.
        assert_eq!(
            s.decide(Mode::DryRun, &c, 10_000, &mut FixedJitter(0.0))
                .decision,
            Decision::Probe(0)
        );
        assert_eq!(
            s.decide(Mode::DryRun, &c, 10_000, &mut FixedJitter(0.0))
                .decision,
            Decision::Probe(1)
        );
        assert!(matches!(
            s.decide(Mode::DryRun, &c, 10_000, &mut FixedJitter(0.0))
                .decision,
            Decision::DryRunReject(_)
        ));
    }

    #[test]
    fn forced_open_rejects_everything_with_sleep_window_retry_after() {
        let c = cfg();
        let mut s = BreakerState::default();
        let step = s.decide(Mode::ForcedOpen, &c, 5, &mut FixedJitter(0.0));
        assert_eq!(
            step.decision,
            Decision::Reject(Rejection {
                reason: TripReason::ForcedOpen,
                retry_after_s: 10
            })
        );
        assert!(!step.changed);
    }

    #[test]
    fn disabled_passes_through_even_when_open() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        assert_eq!(
            s.decide(Mode::Disabled, &c, 5, &mut FixedJitter(0.0))
                .decision,
            Decision::PassThrough
        );
    }

    #[test]
    fn open_after_a_clock_step_back_lasts_at_most_max_sleep_window_times_1_2() {
        let c = cfg();
        // Tripped at t = 10 h, then the clock steps back by one hour.
        let mut s = tripped(&c, 36_000_000);
        let now = 36_000_000 - 3_600_000;
        match s
            .decide(Mode::Enforce, &c, now, &mut FixedJitter(0.0))
            .decision
        {
            Decision::Probe(_) => {}
            d => panic!("an open_until 1 h ahead is stale, expected a probe: {d:?}"),
        }
        // A step back smaller than the bound keeps it open, with a bounded retry-after.
        let mut s = tripped(&c, 100_000);
        match s
            .decide(Mode::Enforce, &c, 100_000 - 20_000, &mut FixedJitter(0.0))
            .decision
        {
            Decision::Reject(r) => assert!(r.retry_after_s <= 42, "{r:?}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn probes_started_in_the_future_are_reclaimed_after_a_clock_step_back() {
        let c = cfg();
        let mut s = tripped(&c, 0);
        s.decide(Mode::Enforce, &c, 3_600_000, &mut FixedJitter(0.0));
        s.decide(Mode::Enforce, &c, 3_600_000, &mut FixedJitter(0.0));
        assert!(matches!(
            s.decide(Mode::Enforce, &c, 3_600_001, &mut FixedJitter(0.0))
                .decision,
            Decision::Reject(_)
        ));
        // The clock steps back one hour: the two probes "started in the future".
        assert!(matches!(
            s.decide(Mode::Enforce, &c, 60_000, &mut FixedJitter(0.0))
                .decision,
            Decision::Probe(_)
        ));
    }

    #[test]
    fn splitmix_units_are_in_zero_one() {
        let mut r = SplitMix64(7);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}

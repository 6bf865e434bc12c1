//! Holding a replay to what the filter did live: its transition lines from Envoy's log, the
//! jitter draws they reveal, and a comparison with a replay of the same traffic.
//!
//! Why: `meshbreaker replay` claims to show what the breaker would have done. The one way to
//! prove that is to replay the access log of traffic the filter really decided and find the
//! transitions the filter logged (once each, at info: `meshbreaker: transition key=K from=F
//! to=T reason=R [open_for_ms=N] [figures]`). `cargo xtask demo --ci` does it on the demo.
//!
//! Three inputs of the live breaker are not in an access log, and the comparison names them:
//! - the sleep-window jitter is random. The filter logs each opening's `open_for_ms`, from which
//!   [`openings`] recovers the unit draw; the replay is then run with those draws
//!   ([`held_to_live`]), so that the comparison tests the breaker,
//!   not two dice;
//! - when a live opening ended: the log holds no request from inside it, so a replayed opening
//!   that started a little later than the filter's must not outlast it, or it would sit through
//!   the filter's probes; the replay takes each live opening's end as a bound (same place);
//! - kernel reset signals come from the sidecar. A live trip with reason `kernel_resets` has no
//!   counterpart in the access log; the replay must trip on what the log does show (the same
//!   resets, as `upstream_resets` failures: reason `error_rate`), later, and get back in step by
//!   the episode's end: [`compare`] holds kernel episodes to that rule and everything else to
//!   the strict one.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use policy_core::breaker::{sleep_sequence, State, TransitionLine, JITTER_SPREAD};
use policy_core::config::Config;

use meshbreaker_cli::replay::{KeyReport, Opening, OpeningSource, Replay, TransitionAt};

/// One transition the filter logged: its line, and when Envoy logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveTransition {
    /// Envoy's log timestamp (milliseconds since the epoch).
    pub at_ms: u64,
    pub line: TransitionLine,
}

impl std::ops::Deref for LiveTransition {
    type Target = TransitionLine;
    fn deref(&self) -> &TransitionLine {
        &self.line
    }
}

/// `1796116425.412` (Envoy's `--log-format "[%E.%e]…"`): milliseconds since the epoch.
fn epoch_ms(s: &str) -> Option<u64> {
    let (secs, ms) = s.split_once('.')?;
    if ms.len() != 3 {
        return None;
    }
    Some(secs.parse::<u64>().ok()? * 1000 + ms.parse::<u64>().ok()?)
}

/// The filter's transition lines in an Envoy log whose lines start with `[<epoch s>.<ms>]`
/// (`--log-format "[%E.%e][%t][%l][%n] %v"`). Lines where the state does not change are not
/// logged by the filter; a transition line without such a timestamp is an error.
pub fn parse_envoy_log(text: &str) -> Result<Vec<LiveTransition>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(parsed) = TransitionLine::find(line) else {
            continue;
        };
        let bad = |what: &str| format!("envoy log line {}: {what}: {line}", n + 1);
        let at_ms = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(ts, _)| epoch_ms(ts))
            .ok_or_else(|| {
                bad("no [epoch.ms] timestamp (run Envoy with --log-format \"[%E.%e]…\")")
            })?;
        let t = parsed.map_err(|e| bad(&e))?;
        out.push(LiveTransition { at_ms, line: t });
    }
    Ok(out)
}

/// Per key, each live opening in order: when it was logged, when it ended, and the unit jitter
/// draw behind it. The filter opens for `ceil(sleep × (1 + JITTER_SPREAD u))` ms, so for a logged
/// `open_for_ms` and the sleep it belongs to (one of the configuration's doubling sleeps, the
/// one `open_for_ms` lies in) the draw that reproduces it exactly is
/// `u = ((open_for_ms − 0.5) / sleep − 1) / JITTER_SPREAD`. An opening whose `open_for_ms` fits no sleep
/// of the configuration is an error: the log is not of this config.
pub fn openings(
    live: &[LiveTransition],
    cfg: &Config,
) -> Result<HashMap<String, Vec<LiveOpening>>, String> {
    let mut candidates: Vec<u64> = sleep_sequence(&cfg.breaker);
    for o in &cfg.overrides {
        candidates.extend(sleep_sequence(&o.breaker));
    }
    let mut out: HashMap<String, Vec<LiveOpening>> = HashMap::new();
    for t in live.iter().filter(|t| t.to == State::Open) {
        let open_for = t
            .open_for_ms
            .ok_or_else(|| format!("key {}: an opening without open_for_ms", t.key))?;
        let sleep = candidates
            .iter()
            .copied()
            .find(|&s| {
                s <= open_for && (open_for as f64) <= (s as f64 * (1.0 + JITTER_SPREAD)).ceil()
            })
            .ok_or_else(|| {
                format!(
                    "key {}: open_for_ms={open_for} fits no sleep window of the configuration \
                     ({candidates:?} ms, +0–20% jitter)",
                    t.key
                )
            })?;
        let u = if open_for == sleep {
            0.0
        } else {
            ((open_for as f64 - 0.5) / sleep as f64 - 1.0) / JITTER_SPREAD
        };
        out.entry(t.key.clone()).or_default().push(LiveOpening {
            at_ms: t.at_ms,
            from: t.from,
            end_ms: t.at_ms.saturating_add(open_for),
            draw: u.clamp(0.0, 1.0),
        });
    }
    Ok(out)
}

/// How far before a live opening's logged end a replayed opening held to it ends at the latest
/// ([`held_to_live`]). The logged end is Envoy's log timestamp of the trip plus `open_for_ms`, a
/// little after the filter's own `now` at the trip; a probe's access-log start is its downstream
/// start, truncated to the millisecond, a little before the filter decided it. Nothing the filter
/// let through starts inside the slack: it was OPEN there.
pub const LIVE_END_SLACK_MS: u64 = 50;

/// One opening the filter logged, for [`held_to_live`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveOpening {
    /// When the filter logged the transition into OPEN (epoch milliseconds).
    pub at_ms: u64,
    /// CLOSED (a trip) or HALF_OPEN (a failed probe): a replayed opening only takes a live one
    /// of its own kind.
    pub from: State,
    /// `at_ms` + the logged `open_for_ms`.
    pub end_ms: u64,
    /// The unit jitter draw that gives the logged `open_for_ms` (see [`openings`]).
    pub draw: f64,
}

/// A replay held to what the filter did live with the same traffic: two inputs of the live
/// breaker are not in an access log, and each replayed opening takes them from the live opening
/// of its key that it matches: of the same kind (a trip, or a failed probe), the nearest within
/// `match_ms`, each used once. An opening with none, such as one the replay makes where the
/// filter did not, uses the seeded generator and its own sleep:
/// - the sleep-window jitter draw, the breaker's one random input;
/// - when the opening ended, as a bound: the replayed opening ends no later than the live one
///   (less [`LIVE_END_SLACK_MS`]; a live opening over by the time the replay opens is not its
///   match), and its `open_for_ms` says so. The access log holds no request from inside a live
///   OPEN period (the filter answered them locally), only the filter's probes after it; a
///   replay that opened δ after the filter (its clock is the access log's start + duration in
///   milliseconds, the filter's a worker's flush on a window merged so far) would, with the same
///   draw, still be OPEN at those probes and skip a whole half-open cycle.
///
/// Openings are still compared where they start, and the rest (which requests probe, how probes
/// end, reopening and closing) is the replayed breaker's own.
pub fn held_to_live(
    cfg: Config,
    openings: HashMap<String, Vec<LiveOpening>>,
    match_ms: u64,
) -> Replay {
    Replay::with_openings(cfg, LiveOpenings::new(openings, match_ms))
}

/// The live openings a replay is held to ([`held_to_live`]).
struct LiveOpenings {
    /// Per key, the live openings in time order, each with whether a replayed opening took it.
    live: HashMap<String, VecDeque<(LiveOpening, bool)>>,
    match_ms: u64,
}

impl LiveOpenings {
    fn new(openings: HashMap<String, Vec<LiveOpening>>, match_ms: u64) -> LiveOpenings {
        let live = openings
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by_key(|o| o.at_ms);
                (k, v.into_iter().map(|o| (o, false)).collect())
            })
            .collect();
        LiveOpenings { live, match_ms }
    }
}

impl OpeningSource for LiveOpenings {
    fn opening(&mut self, key: &str, now: u64, from: State) -> Option<Opening> {
        let window = self.match_ms;
        let v = self.live.get_mut(key)?;
        // Openings are asked for in time order: one logged more than `window` before now can
        // match no later one either.
        while v
            .front()
            .is_some_and(|(o, _)| o.at_ms.saturating_add(window) < now)
        {
            v.pop_front();
        }
        // Of the same kind, near in time, not taken, and still running at `now` (one that ended
        // before the replay opened cannot be the same opening).
        let (o, used) = v
            .iter_mut()
            .take_while(|(o, _)| o.at_ms <= now.saturating_add(window))
            .filter(|(o, used)| {
                !*used && o.from == from && o.end_ms.saturating_sub(LIVE_END_SLACK_MS) > now
            })
            .min_by_key(|(o, _)| o.at_ms.abs_diff(now))?;
        *used = true;
        Some(Opening {
            draw: o.draw,
            end_by: Some(o.end_ms.saturating_sub(LIVE_END_SLACK_MS)),
        })
    }
}

/// One live transition beside its replayed counterpart.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub key: String,
    pub from: State,
    pub to: State,
    pub live_reason: String,
    pub replay_reason: String,
    pub live_ms: u64,
    pub replay_ms: u64,
    /// The opening or closing of a kernel episode (held to the looser rule of [`compare`]).
    pub kernel_episode: bool,
}

impl Pair {
    /// Replay time minus live time, milliseconds.
    pub fn delta_ms(&self) -> i64 {
        self.replay_ms as i64 - self.live_ms as i64
    }
}

/// The outcome of [`compare`]: the matched pairs in order, and every disagreement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    pub pairs: Vec<Pair>,
    pub problems: Vec<String>,
    /// Transitions inside kernel episodes (live and replayed) that were not paired.
    pub kernel_skipped: usize,
    /// Kernel episodes the replay did not open for at all.
    pub kernel_only: Vec<KernelOnly>,
}

/// A live kernel episode with no replayed counterpart (see [`compare`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelOnly {
    pub key: String,
    pub live_open_ms: u64,
    pub live_close_ms: Option<u64>,
}

impl Comparison {
    pub fn agrees(&self) -> bool {
        self.problems.is_empty() && !self.pairs.is_empty()
    }

    /// A table: key, transition, reasons, live and replay time (seconds from the first live
    /// transition), difference.
    pub fn table(&self) -> String {
        let first = self.pairs.iter().map(|p| p.live_ms).min().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:<30} {:>9} {:>9} {:>7}",
            "key", "transition", "reason live / replay", "live s", "replay s", "Δ ms"
        );
        let secs = |ms: u64| (ms as f64 - first as f64) / 1000.0;
        for p in &self.pairs {
            let _ = writeln!(
                out,
                "{:<16} {:<22} {:<30} {:>9.3} {:>9.3} {:>+7}{}",
                p.key,
                arrow(p.from, p.to),
                format!("{} / {}", p.live_reason, p.replay_reason),
                secs(p.live_ms),
                secs(p.replay_ms),
                p.delta_ms(),
                if p.kernel_episode {
                    "  (kernel episode)"
                } else {
                    ""
                }
            );
        }
        for k in &self.kernel_only {
            let _ = writeln!(
                out,
                "{:<16} kernel-only episode: opened {:.3} s, closed {}; the replay stayed closed",
                k.key,
                secs(k.live_open_ms),
                k.live_close_ms
                    .map_or("never".into(), |ms| format!("{:.3} s", secs(ms)))
            );
        }
        out
    }
}

/// The reason as the filter logs it: the trip's reason, kept through HALF_OPEN and closing.
fn replay_reason(r: &TransitionAt) -> &'static str {
    r.reason
        .map_or("probes_succeeded", |reason| reason.as_str())
}

/// Live transitions against replayed ones: the same keys, per key the same transitions
/// (from → to) in the same order with the same reasons, each within `tolerance_ms`.
///
/// Kernel episodes are the exception, since their cause is not in the access log: a live
/// opening with reason `kernel_resets`, up to the closing that ends it. Either the replay stays
/// CLOSED through it (a kernel-only episode: the filter opened on the kernel signal and
/// rejected what followed, so the log may hold too few failures to trip on), or it opens for
/// the same failure with the reason the log can show (`error_rate`: the resets are upstream
/// failures there), no earlier than the live opening (less the tolerance: the kernel signal
/// only adds to what the log shows) and before the live episode closed, and then it must close
/// before the filter's next transition, so that the comparison resumes in step. The transitions
/// inside the episode (half-open probes, re-openings) are not compared: the replay opened later,
/// so it probes other requests. Any other replayed transition inside the episode fails.
pub fn compare(live: &[LiveTransition], replayed: &[KeyReport], tolerance_ms: u64) -> Comparison {
    let mut c = Comparison::default();
    let mut keys: Vec<&str> = Vec::new();
    for t in live {
        if !keys.contains(&t.key.as_str()) {
            keys.push(&t.key);
        }
    }
    for k in replayed {
        if k.transitions.iter().any(|t| t.from != t.to) && !keys.contains(&k.key.as_str()) {
            c.problems.push(format!(
                "key {}: the replay has transitions, the filter logged none",
                k.key
            ));
        }
    }
    for key in keys {
        let l: Vec<&LiveTransition> = live.iter().filter(|t| t.key == key).collect();
        let r: Vec<&TransitionAt> = replayed
            .iter()
            .find(|k| k.key == key)
            .map(|k| k.transitions.iter().filter(|t| t.from != t.to).collect())
            .unwrap_or_default();
        compare_key(key, &l, &r, tolerance_ms, &mut c);
    }
    if live.is_empty() {
        c.problems
            .push("the filter logged no transition: nothing to compare".into());
    }
    c
}

fn arrow(from: State, to: State) -> String {
    format!("{} -> {}", from.as_str(), to.as_str())
}

fn pair(key: &str, lt: &LiveTransition, rt: &TransitionAt, kernel: bool) -> Pair {
    Pair {
        key: key.to_owned(),
        from: lt.from,
        to: lt.to,
        live_reason: lt.reason.clone(),
        replay_reason: replay_reason(rt).to_owned(),
        live_ms: lt.at_ms,
        replay_ms: rt.at_ms,
        kernel_episode: kernel,
    }
}

fn compare_key(
    key: &str,
    l: &[&LiveTransition],
    r: &[&TransitionAt],
    tol: u64,
    c: &mut Comparison,
) {
    let (mut i, mut j) = (0, 0);
    while i < l.len() {
        let lt = l[i];
        let what = format!("key {key} live transition {}", i + 1);
        if lt.from == State::Closed && lt.reason == "kernel_resets" {
            let live_close = l[i..]
                .iter()
                .position(|t| t.to == State::Closed)
                .map(|p| i + p);
            let deadline = live_close.map_or(u64::MAX, |e| l[e].at_ms);
            if r.get(j).is_none_or(|rt| rt.at_ms > deadline) {
                // The replay stayed CLOSED through the live episode: the filter opened on the
                // kernel signal and rejected what followed, so the log holds too few failures
                // to trip on. A kernel-only episode: nothing to compare, both end CLOSED.
                let end = live_close.unwrap_or(l.len() - 1);
                c.kernel_only.push(KernelOnly {
                    key: key.to_owned(),
                    live_open_ms: lt.at_ms,
                    live_close_ms: live_close.map(|e| l[e].at_ms),
                });
                c.kernel_skipped += end - i + 1;
                i = end + 1;
                continue;
            }
        }
        let Some(&rt) = r.get(j) else {
            c.problems.push(format!(
                "{what} ({}, {}): the replay has no more transitions",
                arrow(lt.from, lt.to),
                lt.reason
            ));
            return;
        };
        if lt.from == State::Closed && lt.reason == "kernel_resets" {
            // The live episode: this opening up to the closing that ends it.
            let live_close = l[i..]
                .iter()
                .position(|t| t.to == State::Closed)
                .map(|p| i + p);
            let replay_close = r[j..]
                .iter()
                .position(|t| t.to == State::Closed)
                .map(|p| j + p);
            let open = pair(key, lt, rt, true);
            let deadline = live_close.map_or(u64::MAX, |e| l[e].at_ms);
            if (rt.from, rt.to) != (State::Closed, State::Open)
                || open.replay_reason != "error_rate"
            {
                c.problems.push(format!(
                    "{what}: live opened on kernel_resets, replay {} ({}) instead of opening on error_rate",
                    arrow(rt.from, rt.to),
                    open.replay_reason
                ));
                c.pairs.push(open);
                return;
            }
            if rt.at_ms.saturating_add(tol) < lt.at_ms || rt.at_ms > deadline {
                c.problems.push(format!(
                    "{what}: live opened on kernel_resets, replay opened {:+} ms from it, \
                     outside [-{tol} ms, the live closing]",
                    open.delta_ms()
                ));
            }
            c.pairs.push(open);
            let Some(e) = live_close else {
                // Open at the end of the log: nothing more to hold the replay to.
                return;
            };
            let Some(f) = replay_close else {
                c.problems.push(format!(
                    "key {key}: the live kernel episode closed, the replay never closed after it"
                ));
                return;
            };
            let close = pair(key, l[e], r[f], true);
            if let Some(next) = l.get(e + 1) {
                if r[f].at_ms >= next.at_ms {
                    c.problems.push(format!(
                        "key {key}: the replay closed the kernel episode {:+} ms from the live \
                         closing, after the filter's next transition",
                        close.delta_ms()
                    ));
                }
            }
            c.pairs.push(close);
            c.kernel_skipped += (e - i - 1) + (f - j - 1);
            i = e + 1;
            j = f + 1;
            continue;
        }
        let p = pair(key, lt, rt, false);
        if (lt.from, lt.to) != (rt.from, rt.to) {
            c.problems.push(format!(
                "{what}: live {}, replay {}",
                arrow(lt.from, lt.to),
                arrow(rt.from, rt.to)
            ));
            // The sequences diverged: later pairs mean nothing.
            c.pairs.push(p);
            return;
        }
        if p.live_reason != p.replay_reason {
            c.problems.push(format!(
                "{what} ({}): live reason {}, replay reason {}",
                arrow(lt.from, lt.to),
                p.live_reason,
                p.replay_reason
            ));
        }
        if p.delta_ms().unsigned_abs() > tol {
            c.problems.push(format!(
                "{what} ({}): replay {:+} ms from live, over {tol} ms",
                arrow(lt.from, lt.to),
                p.delta_ms()
            ));
        }
        c.pairs.push(p);
        i += 1;
        j += 1;
    }
    if j < r.len() {
        c.problems.push(format!(
            "key {key}: {} replayed transitions after the filter's last ({} first)",
            r.len() - j,
            arrow(r[j].from, r[j].to)
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshbreaker_cli::replay::TransitionAt;
    use policy_core::window::TripReason;

    const LOG: &str = "\
[1796116425.412][16332][info][main] runtime: {}
[1796116430.100][16340][info][wasm] wasm log meshbreaker meshbreaker: meshbreaker: transition key=demo from=closed to=open reason=error_rate open_for_ms=1100 error rate 55.0% of 24 samples, p95 3ms
[1796116431.205][16341][info][wasm] wasm log meshbreaker meshbreaker: meshbreaker: transition key=demo from=open to=half_open reason=error_rate
[1796116431.300][16341][info][wasm] wasm log meshbreaker meshbreaker: meshbreaker: transition key=demo from=half_open to=open reason=error_rate open_for_ms=2000
[1796116433.305][16340][info][wasm] wasm log meshbreaker meshbreaker: meshbreaker: transition key=demo from=open to=half_open reason=error_rate
[1796116433.400][16340][info][wasm] wasm log meshbreaker meshbreaker: meshbreaker: transition key=demo from=half_open to=closed reason=error_rate probe_success=true
";

    fn cfg() -> Config {
        Config::parse(br#"{"breaker":{"sleep_window":"1s","max_sleep_window":"4s"}}"#).unwrap()
    }

    fn replayed(times: &[(u64, State, State, Option<TripReason>)]) -> Vec<KeyReport> {
        vec![KeyReport {
            key: "demo".into(),
            transitions: times
                .iter()
                .map(|&(at_ms, from, to, reason)| TransitionAt {
                    at_ms,
                    from,
                    to,
                    reason,
                    open_for_ms: 0,
                    figures: String::new(),
                })
                .collect(),
            ..KeyReport::default()
        }]
    }

    #[test]
    fn parse_envoy_log_reads_every_transition_with_its_epoch_time() {
        let t = parse_envoy_log(LOG).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].at_ms, 1_796_116_430_100);
        assert_eq!((t[0].from, t[0].to), (State::Closed, State::Open));
        assert_eq!(t[0].reason, "error_rate");
        assert_eq!(t[0].open_for_ms, Some(1100));
        assert_eq!(t[0].figures, "error rate 55.0% of 24 samples, p95 3ms");
        assert_eq!(t[4].reason, "error_rate");
        assert_eq!(t[4].figures, "probe_success=true");
        assert_eq!(t[1].open_for_ms, None);
    }

    #[test]
    fn parse_envoy_log_refuses_a_transition_without_epoch_timestamp() {
        let e = parse_envoy_log(
            "[2026-12-01 09:00:00.000][1][info][wasm] meshbreaker: transition key=a from=closed to=open reason=latency open_for_ms=1000\n",
        )
        .unwrap_err();
        assert!(e.contains("epoch"), "{e}");
    }

    #[test]
    fn openings_reproduce_the_logged_open_for_ms() {
        let t = parse_envoy_log(LOG).unwrap();
        let d = openings(&t, &cfg()).unwrap();
        let o = &d["demo"];
        assert_eq!(o.len(), 2);
        // The breaker's own formula with these draws gives the logged figures back.
        assert_eq!((1000.0 * (1.0 + 0.2 * o[0].draw)).ceil() as u64, 1100);
        assert_eq!((2000.0 * (1.0 + 0.2 * o[1].draw)).ceil() as u64, 2000);
        assert_eq!(
            (o[0].at_ms, o[0].end_ms),
            (1_796_116_430_100, 1_796_116_431_200)
        );
        assert_eq!(o[1].end_ms, 1_796_116_433_300);
    }

    #[test]
    fn openings_refuse_an_open_for_ms_of_another_configuration() {
        let mut t = parse_envoy_log(LOG).unwrap();
        t[0].line.open_for_ms = Some(1500); // between 1.2 s and 2 s: no sleep of cfg() gives it
        assert!(openings(&t, &cfg()).is_err());
    }

    #[test]
    fn compare_agrees_within_tolerance_and_flags_order_reason_and_time() {
        let live = parse_envoy_log(LOG).unwrap();
        let er = Some(TripReason::ErrorRate);
        let good = [
            (1_796_116_430_180, State::Closed, State::Open, er),
            (1_796_116_431_205, State::Open, State::HalfOpen, er),
            (1_796_116_431_300, State::HalfOpen, State::Open, er),
            (1_796_116_433_305, State::Open, State::HalfOpen, er),
            (1_796_116_433_400, State::HalfOpen, State::Closed, er),
        ];
        let c = compare(&live, &replayed(&good), 300);
        assert!(c.agrees(), "{:?}", c.problems);
        assert_eq!(c.pairs[0].delta_ms(), 80);

        let mut late = good;
        late[0].0 += 400;
        assert!(!compare(&live, &replayed(&late), 300).agrees());

        let mut reason = good;
        reason[0].3 = Some(TripReason::LatencyP95);
        assert!(!compare(&live, &replayed(&reason), 300).agrees());

        let missing = &good[..4];
        assert!(!compare(&live, &replayed(missing), 300).agrees());

        let mut order = good;
        order.swap(1, 2);
        assert!(!compare(&live, &replayed(&order), 300).agrees());

        let mut other_key = replayed(&good);
        other_key[0].key = "other".into();
        assert!(!compare(&live, &other_key, 300).agrees());
    }

    #[test]
    fn compare_holds_a_kernel_episode_to_an_error_rate_opening_and_a_closing_in_step() {
        let mut live = parse_envoy_log(LOG).unwrap();
        for t in &mut live {
            t.line.reason = "kernel_resets".into();
        }
        // After the episode, a latency trip the replay must match strictly.
        live.push(LiveTransition {
            at_ms: 1_796_116_440_000,
            line: TransitionLine {
                key: "demo".into(),
                from: State::Closed,
                to: State::Open,
                reason: "latency_p95".into(),
                open_for_ms: Some(1000),
                figures: String::new(),
            },
        });
        let er = Some(TripReason::ErrorRate);
        let lat = Some(TripReason::LatencyP95);
        // The replay opens 600 ms later (it sees only the resets in the log), probes other
        // requests (one re-opening instead of two), and closes 900 ms after the filter.
        let rows = |open_reason, open_at: u64, close_at: u64| {
            vec![
                (open_at, State::Closed, State::Open, open_reason),
                (1_796_116_431_900, State::Open, State::HalfOpen, open_reason),
                (1_796_116_431_950, State::HalfOpen, State::Open, open_reason),
                (1_796_116_434_100, State::Open, State::HalfOpen, open_reason),
                (close_at, State::HalfOpen, State::Closed, open_reason),
                (1_796_116_440_050, State::Closed, State::Open, lat),
            ]
        };
        let (open, close) = (1_796_116_430_700, 1_796_116_434_300);
        let c = compare(&live, &replayed(&rows(er, open, close)), 300);
        assert!(c.agrees(), "{:?}", c.problems);
        assert_eq!(c.pairs.len(), 3, "{:?}", c.pairs);
        assert!(c.pairs[0].kernel_episode && c.pairs[1].kernel_episode);
        assert_eq!(c.pairs[0].delta_ms(), 600);
        assert_eq!(c.kernel_skipped, 3 + 3);
        // Not on error_rate: refused.
        assert!(!compare(&live, &replayed(&rows(lat, open, close)), 300).agrees());
        // Earlier than the kernel trip by more than the tolerance: refused.
        let early = rows(er, 1_796_116_429_700, close);
        assert!(!compare(&live, &replayed(&early), 300).agrees());
        // After the live episode closed: refused.
        let late = rows(er, 1_796_116_433_500, close);
        assert!(!compare(&live, &replayed(&late), 300).agrees());
        // Closing only after the filter's next transition: refused.
        let mut out_of_step = rows(er, open, 1_796_116_440_020);
        out_of_step[5].0 = 1_796_116_440_060;
        assert!(!compare(&live, &replayed(&out_of_step), 300).agrees());
        // Never closing: refused.
        let never = &rows(er, open, close)[..4];
        assert!(!compare(&live, &replayed(never), 300).agrees());
        // Staying closed through the episode (the log held too few failures): a kernel-only
        // episode, and the latency trip after it still compared strictly.
        let c = compare(&live, &replayed(&rows(er, open, close)[5..]), 300);
        assert!(c.agrees(), "{:?}", c.problems);
        assert_eq!(c.kernel_only.len(), 1);
        assert_eq!(c.kernel_skipped, 5);
        let mut late_latency = rows(er, open, close)[5..].to_vec();
        late_latency[0].0 += 400;
        assert!(!compare(&live, &replayed(&late_latency), 300).agrees());
        // Anything but an opening inside the episode: refused.
        let odd = &rows(er, open, close)[1..];
        assert!(!compare(&live, &replayed(odd), 300).agrees());
    }

    #[test]
    fn a_replay_that_opens_after_the_filter_still_probes_with_the_filters_probes() {
        // The filter opened 30 ms before the replay does (its worker merged a partial window).
        // The access log holds no request from inside the filter's OPEN period, only its probe
        // 5 ms after that period's end: with the same draw, a replay opened 30 ms later would
        // still be OPEN at the probe and skip the half-open cycle. Held to live, its opening
        // ends no later than the filter's, it takes that probe, and the two agree.
        let t0 = 1_796_116_430_000u64;
        let cfg = Config::parse(
            br#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 10,
                "error_rate_threshold": 0.5, "sleep_window": "1s", "max_sleep_window": "1s",
                "half_open_max_probes": 1, "half_open_successes_to_close": 2}}"#,
        )
        .unwrap();
        let line = |start: u64, status: u16| {
            format!(
                r#"{{"start_time":"{start}","duration_ms":5,"cluster":"demo","route":"r","authority":"a","status":{status},"grpc_status":null,"response_flags":"-","attempts":1,"upstream_host":"10.0.0.1:80"}}"#
            )
        };
        // Ten failures: the replay trips at the tenth's completion, t0 + 95.
        let mut lines: Vec<String> = (0..10).map(|i| line(t0 + i * 10, 503)).collect();
        lines.push(line(t0 + 1_070, 503)); // the filter's first probe: fails
        lines.push(line(t0 + 2_080, 200)); // after the re-opening: two probes succeed
        lines.push(line(t0 + 2_200, 200));
        let er = "error_rate".to_string();
        let lt = |at: u64, from: State, to: State, open_for_ms: Option<u64>| LiveTransition {
            at_ms: t0 + at,
            line: TransitionLine {
                key: "demo".into(),
                from,
                to,
                reason: er.clone(),
                open_for_ms,
                figures: String::new(),
            },
        };
        let live = vec![
            lt(65, State::Closed, State::Open, Some(1_000)),
            lt(1_070, State::Open, State::HalfOpen, None),
            lt(1_075, State::HalfOpen, State::Open, Some(1_000)),
            lt(2_080, State::Open, State::HalfOpen, None),
            lt(2_205, State::HalfOpen, State::Closed, None),
        ];
        let replay = |mut r: meshbreaker_cli::replay::Replay| {
            for l in &lines {
                r.feed(&serde_json::from_str(l).unwrap());
            }
            r.finish().1
        };
        let held = replay(held_to_live(
            cfg.clone(),
            openings(&live, &cfg).unwrap(),
            300,
        ));
        let c = compare(&live, &held, 300);
        assert!(c.agrees(), "{:?}\n{}", c.problems, c.table());
        let deltas: Vec<i64> = c.pairs.iter().map(Pair::delta_ms).collect();
        assert_eq!(deltas, [30, 0, 0, 0, 0]);
        // The opening at t0 + 95 ends by the filter's end less the slack (t0 + 1015), and says so.
        let first = &held[0].transitions[0];
        assert_eq!((first.at_ms - t0, first.open_for_ms), (95, 920));
        // Its own sleep from its own opening, it sits through the probe and tells another story.
        let unheld = replay(meshbreaker_cli::replay::Replay::new(cfg));
        assert!(!compare(&live, &unheld, 300).agrees());
    }

    #[test]
    fn a_live_opening_that_ended_before_the_replay_opens_is_not_taken() {
        // The filter opened for 100 ms at t0 + 20 (a 100 ms sleep, shorter than the 300 ms
        // match window) and was over by t0 + 120; the replay trips at t0 + 195. That live
        // opening cannot be this one: the replay keeps its own sleep instead of a zero-length
        // opening cut to the live end.
        let t0 = 1_796_116_430_000u64;
        let cfg =
            Config::parse(br#"{"breaker": {"sleep_window": "100ms", "max_sleep_window": "1s"}}"#)
                .unwrap();
        let live = [LiveTransition {
            at_ms: t0 + 20,
            line: TransitionLine {
                key: "demo".into(),
                from: State::Closed,
                to: State::Open,
                reason: "error_rate".into(),
                open_for_ms: Some(100),
                figures: String::new(),
            },
        }];
        let mut r = held_to_live(cfg.clone(), openings(&live, &cfg).unwrap(), 300);
        for i in 0..20 {
            let l = format!(
                r#"{{"start_time":"{}","duration_ms":5,"cluster":"demo","status":503,"response_flags":"-","upstream_host":"10.0.0.1:80"}}"#,
                t0 + i * 10
            );
            r.feed(&serde_json::from_str(&l).unwrap());
        }
        let (_, reports) = r.finish();
        let open = &reports[0].transitions[0];
        assert_eq!(open.at_ms - t0, 195);
        assert!((100..=120).contains(&open.open_for_ms), "{open:?}");
    }

    #[test]
    fn a_replayed_trip_takes_the_draw_of_a_live_trip_not_of_a_nearer_reopening() {
        // Two live openings near the replay's trip at t0 + 195 (the 20th failure, min_requests):
        // a trip at t0 + 260 (draw 0.5: 1.1 s; it ends after the replay's, so the bound leaves
        // the replay's own end) and, nearer, a failed probe's re-opening at t0 + 190 (draw 1:
        // 2.4 s of a 2 s sleep). The trip takes the trip's draw; an opening far from every live
        // one (the failed probe of the second burst, 5 s later) takes none and keeps its own.
        let t0 = 1_796_116_430_000u64;
        let lt = |at: u64, from: State, open_for_ms: u64| LiveTransition {
            at_ms: t0 + at,
            line: TransitionLine {
                key: "demo".into(),
                from,
                to: State::Open,
                reason: "error_rate".into(),
                open_for_ms: Some(open_for_ms),
                figures: String::new(),
            },
        };
        let live = [
            lt(260, State::Closed, 1_100),
            lt(190, State::HalfOpen, 2_400),
        ];
        let mut r = held_to_live(cfg(), openings(&live, &cfg()).unwrap(), 300);
        let starts = (0..20)
            .map(|i| t0 + i * 10)
            .chain((0..40).map(|i| t0 + 5_000 + i * 10));
        for start in starts {
            let l = format!(
                r#"{{"start_time":"{start}","duration_ms":5,"cluster":"demo","status":503,"response_flags":"-","upstream_host":"10.0.0.1:80"}}"#
            );
            r.feed(&serde_json::from_str(&l).unwrap());
        }
        let (_, reports) = r.finish();
        let opens: Vec<(u64, u64)> = reports[0]
            .transitions
            .iter()
            .filter(|t| t.to == State::Open)
            .map(|t| (t.at_ms - t0, t.open_for_ms))
            .collect();
        assert_eq!(opens[0], (195, 1_100), "{opens:?}");
        let far = opens.iter().find(|(at, _)| *at > 5_000).unwrap();
        assert!((2_000..2_400).contains(&far.1), "{opens:?}");
    }

    #[test]
    fn compare_of_nothing_does_not_agree() {
        assert!(!compare(&[], &[], 300).agrees());
    }
}

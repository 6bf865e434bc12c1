//! Kernel reset signals (`reset_signals`) in the module: polling the eBPF sidecar and the reset
//! totals every key's flush attributes from.
//!
//! How the module reaches the sidecar: through Envoy, like the wasm filter. The configuration
//! names an Envoy *cluster* (`reset_signals.cluster`), not an address, and a module cannot resolve
//! a cluster's hosts; so the poll is an HTTP callout of the filter configuration
//! (`ConfigEnvoy::http_callout`, Envoy 1.40), sent from the tick on Envoy's main thread (the only
//! thread the callout may be sent from) and answered there. The sidecar's cluster therefore keeps
//! its Envoy statistics (`cluster.<name>.upstream_rq_200`, connect failures), as with the filter.
//!
//! One [`Feed`] per sidecar (`cluster`, `path`) per process, shared by every filter configuration
//! that names it (listeners, and the old and new configuration across a reload): one poll per
//! interval whoever ticks first, one delta tracker (`policy_core::resets::ResetTracker`: a new
//! `started_at_ms` is a restart, taken as a new baseline, never a burst), one set of per-peer
//! totals that never go backwards. Two trackers over the same sidecar would disagree on their
//! baselines, and each key's window keeps one cursor per host into the totals (policy-core's
//! `flow::flush`), so the totals must be one series.
//!
//! Failures (a callout Envoy refuses, a reset, a non-200 status, an answer that does not parse or
//! is over [`MAX_BODY_BYTES`], no answer within the timeout) are logged once per episode
//! (`reset sidecar unavailable`), and its end once (`reset sidecar is back`), in the filter's
//! words; nothing else stops: the breaker keeps breaking on HTTP signals.
//!
//! Locking: the feed's mutex is taken by the tick (main thread), the done hook (main thread) and
//! a key's flush (any worker, at most every 100 ms per key, to clone an `Arc`). It is never held
//! across a call into Envoy: Envoy may answer a callout before `http_callout` returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use policy_core::config::{ResetSignals, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};
use policy_core::resets::{parse_snapshot, ResetTracker};

/// The largest sidecar answer read (the wasm filter's bound: 4096 peers at about 150 bytes each
/// is 600 KB; more than this is not our sidecar).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The most peers the totals carry (the filter's bound).
pub const MAX_PEERS: usize = 4096;

/// The per-peer reset totals, cumulative since this process first polled, with a sequence that
/// moves whenever they change.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sequence: u64,
    pub peers: Arc<HashMap<String, u64>>,
}

/// A poll to send now: where, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub cluster: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// What a log line the feed wants written says (the caller logs it through Envoy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Down(String),
    Back { started_at_ms: u64 },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Down(why) => write!(
                f,
                "meshbreaker: reset sidecar unavailable ({why}); breaking on HTTP signals only \
                 until it is back"
            ),
            Notice::Back { started_at_ms } => write!(
                f,
                "meshbreaker: reset sidecar is back (started_at_ms={started_at_ms})"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    next_poll_ms: u64,
    /// `(sender, callout id, sent at)`: the sender is the configuration that sent it.
    in_flight: Option<(usize, u64, u64)>,
    tracker: ResetTracker,
    totals: HashMap<String, u64>,
    published: Totals,
    /// Inside a failure episode (already logged).
    down: bool,
}

/// One sidecar's polling and totals, shared by every configuration that names it.
#[derive(Debug)]
pub struct Feed {
    cfg: ResetSignals,
    state: Mutex<State>,
}

impl Feed {
    pub fn new(cfg: ResetSignals) -> Feed {
        Feed {
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The poll interval in milliseconds, clamped to SPEC's 100 ms–60 s (the configuration
    /// enforces it; the clamp keeps the arithmetic bounded whatever built the `ResetSignals`).
    pub fn poll_ms(&self) -> u64 {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ms(self.cfg.poll_interval).clamp(ms(MIN_POLL_INTERVAL), ms(MAX_POLL_INTERVAL))
    }

    fn timeout_ms(&self) -> u64 {
        self.poll_ms().max(1_000)
    }

    /// The poll to send now, if one is due and none is in flight (one past its timeout counts as
    /// failed). The caller sends it and reports with [`Feed::dispatched`] or
    /// [`Feed::dispatch_failed`].
    pub fn due(&self, now_ms: u64) -> (Option<PollRequest>, Option<Notice>) {
        let mut st = self.lock();
        let mut notice = None;
        if let Some((_, _, sent)) = st.in_flight {
            if now_ms.saturating_sub(sent) < self.timeout_ms().saturating_add(1_000) {
                return (None, None);
            }
            st.in_flight = None;
            notice = failed(&mut st, "no answer".into());
        }
        if now_ms < st.next_poll_ms {
            return (None, notice);
        }
        st.next_poll_ms = now_ms.saturating_add(self.poll_ms());
        let req = PollRequest {
            cluster: self.cfg.cluster.clone(),
            path: self.cfg.path.clone(),
            timeout_ms: self.timeout_ms(),
        };
        (Some(req), notice)
    }

    /// The poll went out as callout `id` of configuration `sender`.
    pub fn dispatched(&self, sender: usize, id: u64, now_ms: u64) {
        self.lock().in_flight = Some((sender, id, now_ms));
    }

    /// Envoy refused the poll.
    pub fn dispatch_failed(&self, why: &str) -> Option<Notice> {
        let mut st = self.lock();
        failed(
            &mut st,
            format!("cannot poll through cluster {}: {why}", self.cfg.cluster),
        )
    }

    /// The answer to callout `id` of `sender`: its `:status` and body (`None` when there was no
    /// response, with why). Answers to anything but the poll in flight are ignored.
    pub fn on_response(
        &self,
        sender: usize,
        id: u64,
        answer: Result<(Option<&[u8]>, &[u8]), String>,
    ) -> Option<Notice> {
        let mut st = self.lock();
        if st.in_flight.map(|(s, i, _)| (s, i)) != Some((sender, id)) {
            return None;
        }
        st.in_flight = None;
        let (status, body) = match answer {
            Ok(a) => a,
            Err(why) => return failed(&mut st, why),
        };
        if status != Some(b"200".as_slice()) {
            let shown = status.map_or_else(|| "none".into(), |s| String::from_utf8_lossy(s));
            let shown: String = shown.chars().take(16).collect();
            return failed(&mut st, format!("status {shown:?}"));
        }
        if body.len() > MAX_BODY_BYTES {
            return failed(
                &mut st,
                format!(
                    "answer of {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                    body.len()
                ),
            );
        }
        let snap = match parse_snapshot(body) {
            Ok(s) => s,
            Err(e) => return failed(&mut st, format!("unreadable answer: {e}")),
        };
        let notice = std::mem::take(&mut st.down).then_some(Notice::Back {
            started_at_ms: snap.started_at_ms,
        });
        let State {
            tracker,
            totals,
            published,
            ..
        } = &mut *st;
        let mut changed = false;
        for d in tracker.observe(&snap) {
            let n = d.total();
            if n == 0 || (!totals.contains_key(&d.peer) && totals.len() >= MAX_PEERS) {
                continue;
            }
            let t = totals.entry(d.peer.clone()).or_insert(0);
            *t = t.saturating_add(n);
            changed = true;
        }
        if changed {
            *published = Totals {
                sequence: published.sequence.saturating_add(1),
                peers: Arc::new(totals.clone()),
            };
        }
        notice
    }

    /// The totals as of the last answer.
    pub fn totals(&self) -> Totals {
        self.lock().published.clone()
    }
}

/// Marks a failure; the notice to log when it starts an episode.
fn failed(st: &mut State, why: String) -> Option<Notice> {
    if st.down {
        return None;
    }
    st.down = true;
    Some(Notice::Down(why))
}

/// The process's feed for this sidecar (`cluster`, `path`), made on first use. A configuration
/// with another poll interval or rate for the same sidecar shares the feed made first (its
/// interval); the rate each key is held to is its own configuration's.
pub fn feed(cfg: &ResetSignals) -> Arc<Feed> {
    /// Feeds by sidecar: (`cluster`, `path`).
    type Feeds = HashMap<(String, String), Arc<Feed>>;
    static FEEDS: OnceLock<Mutex<Feeds>> = OnceLock::new();
    let feeds = FEEDS.get_or_init(Default::default);
    let mut feeds = feeds.lock().unwrap_or_else(|p| p.into_inner());
    feeds
        .entry((cfg.cluster.clone(), cfg.path.clone()))
        .or_insert_with(|| Arc::new(Feed::new(cfg.clone())))
        .clone()
}

/// Envoy's `upstream.address` in the sidecar's `peer` form: `10.0.0.5:8080`, `[::1]:8080`, an
/// IPv4-mapped IPv6 address as IPv4 (the wasm filter's rule). Anything that is not an IP socket
/// address (a pipe, an internal listener, bytes that are not UTF-8) is dropped: the kernel signal
/// cannot be about it.
pub fn normalize_upstream(raw: &[u8]) -> Option<String> {
    policy_core::resets::normalize_upstream(std::str::from_utf8(raw).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> ResetSignals {
        ResetSignals {
            cluster: "meshbreaker_sidecar".into(),
            path: "/v1/resets".into(),
            poll_interval: Duration::from_secs(1),
            max_resets_per_second: 5.0,
        }
    }

    fn body(started: u64, resets: u64) -> Vec<u8> {
        format!(
            r#"{{"started_at_ms":{started},"now_ms":{n},"peers":[{{"addr":"127.0.0.1","port":80,"peer":"127.0.0.1:80","resets":{resets},"refused":0,"timeouts":0,"last_ms":{n}}}]}}"#,
            n = started + 10
        )
        .into_bytes()
    }

    /// One poll answered with `answer` at `now`.
    fn poll(f: &Feed, now: u64, id: u64, answer: Result<(Option<&[u8]>, &[u8]), String>) {
        let (req, _) = f.due(now);
        assert!(req.is_some(), "a poll is due at {now}");
        f.dispatched(1, id, now);
        f.on_response(1, id, answer);
    }

    fn total(f: &Feed) -> u64 {
        f.totals().peers.get("127.0.0.1:80").copied().unwrap_or(0)
    }

    #[test]
    fn deltas_accumulate_and_a_sidecar_restart_does_not_jump() {
        let f = Feed::new(cfg());
        poll(&f, 0, 1, Ok((Some(b"200"), &body(100, 50))));
        assert_eq!(total(&f), 0, "the first snapshot is a baseline");
        assert_eq!(f.totals().sequence, 0);
        poll(&f, 1_000, 2, Ok((Some(b"200"), &body(100, 57))));
        assert_eq!((total(&f), f.totals().sequence), (7, 1));
        poll(&f, 2_000, 3, Ok((Some(b"200"), &body(5_000, 3))));
        assert_eq!(total(&f), 7, "restart: new baseline");
        poll(&f, 3_000, 4, Ok((Some(b"200"), &body(5_000, 5))));
        assert_eq!(total(&f), 9);
    }

    #[test]
    fn one_poll_per_interval_and_none_while_one_is_in_flight() {
        let f = Feed::new(cfg());
        assert!(f.due(0).0.is_some());
        f.dispatched(1, 1, 0);
        assert!(f.due(1_500).0.is_none(), "in flight");
        f.on_response(1, 1, Ok((Some(b"200"), &body(1, 1))));
        assert!(f.due(1_500).0.is_some());
        assert!(f.due(1_600).0.is_none(), "not due yet");
    }

    #[test]
    fn failures_are_one_notice_per_episode_and_the_end_is_one_too() {
        let f = Feed::new(cfg());
        f.due(0);
        f.dispatched(1, 1, 0);
        let n = f.on_response(1, 1, Ok((Some(b"503"), b"")));
        assert!(
            matches!(n, Some(Notice::Down(ref w)) if w.contains("503")),
            "{n:?}"
        );
        f.due(1_000);
        f.dispatched(1, 2, 1_000);
        assert_eq!(f.on_response(1, 2, Err("reset".into())), None);
        assert_eq!(f.dispatch_failed("no such cluster"), None);
        f.due(2_000);
        f.dispatched(1, 3, 2_000);
        assert_eq!(
            f.on_response(1, 3, Ok((Some(b"200"), &body(42, 1)))),
            Some(Notice::Back { started_at_ms: 42 })
        );
        assert_eq!(
            Notice::Back { started_at_ms: 42 }.to_string(),
            "meshbreaker: reset sidecar is back (started_at_ms=42)"
        );
    }

    #[test]
    fn a_lost_answer_times_out_as_a_failure() {
        let f = Feed::new(cfg());
        f.due(0);
        f.dispatched(1, 1, 0);
        let (req, notice) = f.due(2_001);
        assert!(req.is_some());
        assert!(matches!(notice, Some(Notice::Down(ref w)) if w == "no answer"));
    }

    #[test]
    fn garbage_oversized_and_stray_answers_change_nothing() {
        let f = Feed::new(cfg());
        poll(&f, 0, 1, Ok((Some(b"200"), &body(100, 1))));
        poll(&f, 1_000, 2, Ok((Some(b"200"), b"{not json")));
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        poll(&f, 2_000, 3, Ok((Some(b"200"), &big)));
        f.due(3_000);
        f.dispatched(1, 4, 3_000);
        assert_eq!(
            f.on_response(2, 4, Ok((Some(b"200"), &body(100, 90)))),
            None,
            "another configuration's id"
        );
        f.on_response(1, 5, Ok((Some(b"200"), &body(100, 90))));
        assert_eq!(total(&f), 0);
    }

    #[test]
    fn upstream_addresses_take_the_sidecars_form() {
        assert_eq!(
            normalize_upstream(b"127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            normalize_upstream(b"[::ffff:10.0.0.5]:80").as_deref(),
            Some("10.0.0.5:80")
        );
        assert_eq!(normalize_upstream(b"[::1]:80").as_deref(), Some("[::1]:80"));
        assert_eq!(normalize_upstream(b"/tmp/sock"), None);
        assert_eq!(normalize_upstream(b"\xff:1"), None);
    }

    #[test]
    fn configurations_naming_one_sidecar_share_its_feed() {
        let a = feed(&cfg());
        let b = feed(&ResetSignals {
            poll_interval: Duration::from_millis(200),
            ..cfg()
        });
        assert!(Arc::ptr_eq(&a, &b));
        let c = feed(&ResetSignals {
            path: "/other".into(),
            ..cfg()
        });
        assert!(!Arc::ptr_eq(&a, &c));
    }
}

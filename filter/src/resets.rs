//! Polling the eBPF sidecar (`reset_signals`): exactly one VM per Envoy polls, the others read.
//!
//! The poller holds a lease in shared data (`…/poller` = `token:until_ms`, renewed by CAS on each
//! poll), so when its worker stops ticking another VM takes over after the lease runs out. It turns
//! the sidecar's cumulative counters into deltas with `policy_core::resets::ResetTracker` (a new
//! `started_at_ms` is a restart: zero deltas, no jump) and publishes per-peer totals that never go
//! backwards (`…/resets`, [`ResetTotals`], keyed by the sidecar's `peer` string, which is Envoy's
//! `upstream.address` form); each key takes its own share of them when it flushes.
//! A sidecar that is down, slow or answers garbage is logged once per episode; nothing else stops.
//!
//! Bounds, because the sidecar's answer and the configuration are input: a body over
//! [`MAX_BODY_BYTES`] (by `content-length` or by size) is refused before it is read into the VM;
//! the lease arithmetic saturates and uses a poll interval clamped to SPEC's 100ms–60s; totals
//! are published only while this VM still holds the lease, by compare-and-swap, merged per peer
//! with whatever is published (the larger total wins), so they never go backwards.

use std::collections::HashMap;
use std::time::Duration;

use policy_core::config::{ResetSignals, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};
use policy_core::encoding::ResetTotals;
use policy_core::resets::{parse_snapshot, ResetTracker};

use crate::host::Host;
use crate::shared::Names;

/// The most peers the published totals carry.
const MAX_PUBLISHED_PEERS: usize = 4096;

/// The largest sidecar answer read into the VM. 4096 peers (the poller's bound) at about 150
/// bytes each is 600 KB; more than this is not our sidecar, and a JSON parse of it would cost
/// the VM several times its size.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Publish attempts before giving up until the next poll (another VM keeps writing).
const MAX_CAS_ATTEMPTS: usize = 8;

pub struct PollRequest {
    pub cluster: String,
    pub path: String,
    pub timeout: Duration,
}

pub struct Poller {
    cfg: ResetSignals,
    token: u64,
    holds_lease: bool,
    next_poll_ms: u64,
    in_flight: Option<(u32, u64)>,
    tracker: ResetTracker,
    totals: HashMap<String, u64>,
    sequence: u64,
    /// Inside a failure episode (already logged).
    down: bool,
}

impl Poller {
    pub fn new(cfg: ResetSignals, seed: u64) -> Poller {
        Poller {
            cfg,
            token: seed | 1,
            holds_lease: false,
            next_poll_ms: 0,
            in_flight: None,
            tracker: ResetTracker::default(),
            totals: HashMap::new(),
            sequence: 0,
            down: false,
        }
    }

    /// The poll interval in milliseconds, clamped to the configuration's range (100ms–60s) (config enforces it; the
    /// clamp keeps the lease arithmetic bounded whatever built the `ResetSignals`).
    fn poll_ms(&self) -> u64 {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ms(self.cfg.poll_interval).clamp(ms(MIN_POLL_INTERVAL), ms(MAX_POLL_INTERVAL))
    }

    /// How long a lease lasts from its last renewal.
    fn lease_ms(&self) -> u64 {
        (3 * self.poll_ms()).saturating_add(1_000)
    }

    /// The holder and expiry of the lease entry, if it is well-formed.
    fn read_lease<H: Host>(host: &H, names: &Names) -> (Option<(u64, u64)>, Option<u32>) {
        let (v, cas) = host.get_shared(&names.poller_lease());
        let current = v
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.split_once(':'))
            .and_then(|(t, u)| Some((t.parse::<u64>().ok()?, u.parse::<u64>().ok()?)));
        (current, cas)
    }

    /// Creates the lease entry, expired, if it does not exist (at configure time, before any VM
    /// polls). Shared data has no create-if-absent and ignores the token of a write to an absent
    /// entry, so two workers that both found no lease used to both take it (and both poll the
    /// sidecar, and both log its outage); with the entry there, taking it is a real
    /// compare-and-swap that one of them wins.
    pub fn prepare_lease<H: Host>(host: &H, names: &Names) {
        crate::shared::create_if_absent(host, &names.poller_lease(), b"0:0");
    }

    /// Takes or renews the lease; true when this VM is the poller.
    fn lease<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) -> bool {
        let name = names.poller_lease();
        let (current, cas) = Self::read_lease(host, names);
        let mine = current.is_some_and(|(t, _)| t == self.token);
        // Expired, or further ahead than a renewal ever sets it: written before the wall clock
        // stepped back, so it would otherwise block every VM for the size of the step.
        let longest = self.lease_ms();
        let free = current
            .is_none_or(|(_, until)| until < now_ms || until > now_ms.saturating_add(longest));
        if !mine && !free {
            self.holds_lease = false;
            return false;
        }
        let until = now_ms.saturating_add(self.lease_ms());
        let value = format!("{}:{until}", self.token);
        if host
            .set_shared(&name, value.as_bytes(), Some(cas.unwrap_or(0)))
            .is_err()
        {
            self.holds_lease = false;
            return false;
        }
        if !self.holds_lease {
            // New poller: continue from the published totals, take the next snapshot as baseline.
            self.tracker = ResetTracker::default();
            self.totals.clear();
            if let Some(t) = host
                .get_shared(&names.resets())
                .0
                .and_then(|b| ResetTotals::decode(&b).ok())
            {
                self.sequence = t.sequence;
                self.totals.extend(t.peers);
            }
            self.holds_lease = true;
        }
        true
    }

    /// Gives the lease up (the plugin is going away: a reload replaced it), so that a VM of the
    /// new configuration polls at its next tick instead of after the lease runs out.
    pub fn release<H: Host>(&mut self, host: &H, names: &Names) {
        if !self.holds_lease {
            return;
        }
        self.holds_lease = false;
        let (current, cas) = Self::read_lease(host, names);
        if current.is_some_and(|(t, _)| t == self.token) {
            let value = format!("{}:0", self.token);
            let _ = host.set_shared(&names.poller_lease(), value.as_bytes(), cas);
        }
    }

    /// A request to send now, if a poll is due and this VM holds the lease.
    pub fn due<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) -> Option<PollRequest> {
        if let Some((_, sent)) = self.in_flight {
            let timeout = self.poll_ms().max(1_000);
            if policy_core::flow::since(now_ms, sent) < timeout.saturating_add(1_000) {
                return None;
            }
            self.in_flight = None;
            self.failed("no answer", now_ms);
        }
        // A next poll further ahead than one interval was planned before the clock stepped back:
        // due now, not once the clock has caught up.
        if now_ms < self.next_poll_ms && self.next_poll_ms - now_ms <= self.poll_ms() {
            return None;
        }
        self.next_poll_ms = now_ms.saturating_add(self.poll_ms());
        if !self.lease(host, names, now_ms) {
            return None;
        }
        Some(PollRequest {
            cluster: self.cfg.cluster.clone(),
            path: self.cfg.path.clone(),
            timeout: Duration::from_millis(self.poll_ms().max(1_000)),
        })
    }

    pub fn dispatched(&mut self, token: u32, now_ms: u64) {
        self.in_flight = Some((token, now_ms));
    }

    pub fn dispatch_failed(&mut self, why: &str, now_ms: u64) {
        self.failed(
            &format!("cannot dispatch to cluster {}: {why}", self.cfg.cluster),
            now_ms,
        );
    }

    fn failed(&mut self, why: &str, _now_ms: u64) {
        if !self.down {
            log::warn!("meshbreaker: reset sidecar unavailable ({why}); breaking on HTTP signals only until it is back");
            self.down = true;
        }
    }

    /// How many body bytes to read for the answer `token`, or `None` (logged as a failure) when
    /// the answer is larger than [`MAX_BODY_BYTES`] by its `content-length` or its size.
    pub fn body_len(
        &mut self,
        token: u32,
        content_length: Option<&[u8]>,
        body_size: usize,
        now_ms: u64,
    ) -> Option<usize> {
        if self.in_flight.is_some_and(|(t, _)| t != token) {
            return None;
        }
        let declared = content_length
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let too_big = |n: u64| n > MAX_BODY_BYTES as u64;
        if declared.is_some_and(too_big) || too_big(body_size as u64) {
            self.in_flight = None;
            self.failed(
                &format!(
                    "answer of {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                    declared.unwrap_or(body_size as u64).max(body_size as u64)
                ),
                now_ms,
            );
            return None;
        }
        Some(body_size)
    }

    pub fn on_response<H: Host>(
        &mut self,
        host: &H,
        names: &Names,
        token: u32,
        status: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) {
        if self.in_flight.is_some_and(|(t, _)| t != token) {
            return;
        }
        self.in_flight = None;
        if status != Some("200") {
            self.failed(&format!("status {}", status.unwrap_or("none")), now_ms);
            return;
        }
        let snap = match parse_snapshot(body) {
            Ok(s) => s,
            Err(e) => {
                self.failed(&format!("unreadable answer: {e}"), now_ms);
                return;
            }
        };
        if self.down {
            log::info!(
                "meshbreaker: reset sidecar is back (started_at_ms={})",
                snap.started_at_ms
            );
            self.down = false;
        }
        let mut changed = false;
        for d in self.tracker.observe(&snap) {
            let n = d.total();
            if n == 0 {
                continue;
            }
            let peer = d.peer.to_string();
            if !self.totals.contains_key(&peer) && self.totals.len() >= MAX_PUBLISHED_PEERS {
                continue;
            }
            let t = self.totals.entry(peer).or_insert(0);
            *t = t.saturating_add(n);
            changed = true;
        }
        if changed {
            self.publish(host, names, now_ms);
        }
    }

    /// Writes the totals while this VM holds the lease: compare-and-swap against the entry just
    /// read, merged with it per peer (the larger total wins), so that a VM that lost the lease
    /// mid-poll never overwrites a newer holder's totals with older ones.
    fn publish<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (lease, _) = Self::read_lease(host, names);
            if !lease.is_some_and(|(t, until)| t == self.token && until >= now_ms) {
                self.holds_lease = false;
                return;
            }
            let (current, cas) = host.get_shared(&names.resets());
            if let Some(theirs) = current.and_then(|b| ResetTotals::decode(&b).ok()) {
                self.sequence = self.sequence.max(theirs.sequence);
                for (peer, n) in theirs.peers {
                    let room = self.totals.len() < MAX_PUBLISHED_PEERS;
                    match self.totals.get_mut(&peer) {
                        Some(mine) => *mine = (*mine).max(n),
                        None if room => {
                            self.totals.insert(peer, n);
                        }
                        None => {}
                    }
                }
            }
            self.sequence = self.sequence.saturating_add(1);
            let published = ResetTotals {
                sequence: self.sequence,
                peers: self.totals.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            };
            // An absent entry has no token (Envoy then writes without a check); 0 asks for none.
            match host.set_shared(&names.resets(), &published.encode(), Some(cas.unwrap_or(0))) {
                Err(crate::host::SetError::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}

/// The sidecar's reset totals as this VM last read them from shared data: decoded only when the
/// published bytes change, and looked up by every flush.
#[derive(Default)]
pub(crate) struct ResetView {
    /// Sequence of the last totals this VM attributed.
    pub seen: Option<u64>,
    /// The last published totals as read (to skip decoding an unchanged entry) and decoded.
    pub bytes: Vec<u8>,
    pub totals: Option<std::rc::Rc<HashMap<String, u64>>>,
}

impl ResetView {
    /// Reads the published totals (one shared read) and decodes them only when their bytes
    /// changed. True when the sequence moved (every placed key then takes its share).
    pub fn refresh<H: Host>(&mut self, host: &H, names: &Names) -> bool {
        let Some(bytes) = host.get_shared(&names.resets()).0 else {
            return false;
        };
        if bytes == self.bytes {
            return false;
        }
        let Ok(t) = ResetTotals::decode(&bytes) else {
            return false;
        };
        self.bytes = bytes;
        let changed = self.seen != Some(t.sequence);
        self.seen = Some(t.sequence);
        self.totals = Some(std::rc::Rc::new(t.peers.into_iter().collect()));
        changed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

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
            r#"{{"started_at_ms":{started},"now_ms":{},"peers":[{{"addr":"127.0.0.1","port":80,"peer":"127.0.0.1:80","resets":{resets},"refused":0,"timeouts":0,"last_ms":{}}}]}}"#,
            started + 10,
            started + 10
        )
        .into_bytes()
    }

    fn published(host: &FakeHost, names: &Names) -> u64 {
        host.get_shared(&names.resets())
            .0
            .and_then(|b| ResetTotals::decode(&b).ok())
            .map(|t| t.total_for("127.0.0.1:80"))
            .unwrap_or(0)
    }

    #[test]
    fn only_one_vm_polls() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut a = Poller::new(cfg(), 2);
        let mut b = Poller::new(cfg(), 4);
        assert!(a.due(&host, &names, 0).is_some());
        assert!(b.due(&host, &names, 0).is_none());
        // The lease runs out when its holder stops polling.
        assert!(b.due(&host, &names, 10_000).is_some());
    }

    #[test]
    fn two_vms_racing_for_the_first_lease_leave_one_poller() {
        let host = FakeHost::default();
        let names = Names::new("p");
        Poller::prepare_lease(&host, &names);
        let mut a = Poller::new(cfg(), 2);
        let b = std::rc::Rc::new(std::cell::RefCell::new(Poller::new(cfg(), 4)));
        let (h, n, b2) = (host.clone(), names.clone(), b.clone());
        // b takes the lease between a's read of it and a's write.
        host.after_get("poller", 0, move || {
            assert!(b2.borrow_mut().due(&h, &n, 10_000).is_some());
        });
        assert!(a.due(&host, &names, 10_000).is_none(), "a lost the race");
        assert!(b.borrow_mut().due(&host, &names, 11_000).is_some());
        assert!(a.due(&host, &names, 11_000).is_none());
    }

    #[test]
    fn deltas_accumulate_and_a_sidecar_restart_does_not_jump() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut p = Poller::new(cfg(), 2);
        p.due(&host, &names, 0);
        p.dispatched(1, 0);
        p.on_response(&host, &names, 1, Some("200"), &body(100, 50), 0);
        assert_eq!(published(&host, &names), 0, "first snapshot is a baseline");
        p.due(&host, &names, 1000);
        p.dispatched(2, 0);
        p.on_response(&host, &names, 2, Some("200"), &body(100, 57), 1000);
        assert_eq!(published(&host, &names), 7);
        p.due(&host, &names, 2000);
        p.dispatched(3, 0);
        p.on_response(&host, &names, 3, Some("200"), &body(5_000, 3), 2000);
        assert_eq!(published(&host, &names), 7, "restart: new baseline");
        p.due(&host, &names, 3000);
        p.dispatched(4, 0);
        p.on_response(&host, &names, 4, Some("200"), &body(5_000, 5), 3000);
        assert_eq!(published(&host, &names), 9);
    }

    #[test]
    fn garbage_and_errors_change_nothing() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut p = Poller::new(cfg(), 2);
        p.due(&host, &names, 0);
        p.dispatched(1, 0);
        p.on_response(&host, &names, 1, Some("200"), b"{not json", 0);
        assert!(p.down);
        p.due(&host, &names, 1000);
        p.dispatched(2, 0);
        p.on_response(&host, &names, 2, Some("503"), b"", 1000);
        assert_eq!(published(&host, &names), 0);
        p.due(&host, &names, 2000);
        p.dispatched(3, 0);
        p.on_response(&host, &names, 3, Some("200"), &body(1, 1), 2000);
        assert!(!p.down);
    }

    #[test]
    fn body_len_refuses_answers_over_the_limit() {
        let mut p = Poller::new(cfg(), 2);
        p.dispatched(1, 0);
        assert_eq!(p.body_len(1, Some(b"120"), 120, 0), Some(120));
        p.dispatched(2, 0);
        assert_eq!(
            p.body_len(2, Some(b"99999999999"), 10, 0),
            None,
            "content-length"
        );
        assert!(p.down);
        assert!(p.in_flight.is_none());
        let mut p = Poller::new(cfg(), 2);
        p.dispatched(3, 0);
        assert_eq!(
            p.body_len(3, None, MAX_BODY_BYTES + 1, 0),
            None,
            "body size"
        );
        let mut p = Poller::new(cfg(), 2);
        p.dispatched(4, 0);
        assert_eq!(
            p.body_len(4, Some(b"\xff"), 10, 0),
            Some(10),
            "unreadable header: size decides"
        );
        assert_eq!(
            p.body_len(9, None, 10, 0),
            None,
            "an answer to another call"
        );
    }

    #[test]
    fn publish_stops_when_the_lease_was_lost() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut a = Poller::new(cfg(), 2);
        a.due(&host, &names, 0);
        a.dispatched(1, 0);
        a.on_response(&host, &names, 1, Some("200"), &body(100, 50), 0);
        // a's lease runs out while its answer is in flight; b takes over and publishes.
        let mut b = Poller::new(cfg(), 4);
        assert!(b.due(&host, &names, 10_000).is_some());
        b.dispatched(7, 10_000);
        b.on_response(&host, &names, 7, Some("200"), &body(100, 60), 10_000);
        b.due(&host, &names, 11_000);
        b.dispatched(8, 11_000);
        b.on_response(&host, &names, 8, Some("200"), &body(100, 70), 11_000);
        assert_eq!(published(&host, &names), 10);
        a.dispatched(2, 10_000);
        a.on_response(&host, &names, 2, Some("200"), &body(100, 90), 11_000);
        assert_eq!(published(&host, &names), 10, "a no longer holds the lease");
        assert!(!a.holds_lease);
    }

    #[test]
    fn published_totals_never_go_backwards() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut p = Poller::new(cfg(), 2);
        p.due(&host, &names, 0);
        p.dispatched(1, 0);
        p.on_response(&host, &names, 1, Some("200"), &body(100, 50), 0);
        // Someone published a larger total for the peer meanwhile (a previous holder).
        let larger = ResetTotals {
            sequence: 40,
            peers: vec![("127.0.0.1:80".into(), 500)],
        };
        let _ = host.set_shared(&names.resets(), &larger.encode(), None);
        p.due(&host, &names, 1000);
        p.dispatched(2, 1000);
        p.on_response(&host, &names, 2, Some("200"), &body(100, 51), 1000);
        let t = host
            .get_shared(&names.resets())
            .0
            .and_then(|b| ResetTotals::decode(&b).ok())
            .unwrap();
        assert_eq!(t.total_for("127.0.0.1:80"), 500);
        assert!(t.sequence > 40);
    }

    #[test]
    fn a_clock_step_back_neither_silences_the_poller_nor_blocks_the_lease() {
        // After a step back of D, the poller skipped every poll (and so never renewed its lease)
        // and the other VMs saw the lease D in the future: no poll for D.
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut a = Poller::new(cfg(), 2);
        assert!(a.due(&host, &names, 600_000).is_some());
        a.dispatched(1, 600_000);
        assert!(
            a.due(&host, &names, 60_000).is_some(),
            "the holder polls again at once, its answer written off"
        );
        a.dispatched(2, 60_000);
        a.on_response(&host, &names, 2, Some("200"), &body(1, 1), 60_000);
        assert!(
            a.due(&host, &names, 61_000).is_some(),
            "and keeps its interval"
        );
        // A lease written far ahead (then the holder went away) is not held for the step.
        let mut b = Poller::new(cfg(), 4);
        host.set_shared(&names.poller_lease(), b"99:900000", None)
            .unwrap();
        assert!(b.due(&host, &names, 62_000).is_some());
    }

    #[test]
    fn a_plugin_going_away_hands_the_lease_over_at_once() {
        // The lease outlived its holder's plugin: after a reload the new VMs waited up to
        // 3 polls + 1 s before polling again.
        let host = FakeHost::default();
        let names = Names::new("p");
        let mut old = Poller::new(cfg(), 2);
        assert!(old.due(&host, &names, 1_000).is_some());
        old.release(&host, &names);
        let mut new = Poller::new(cfg(), 4);
        assert!(new.due(&host, &names, 1_100).is_some());
        // Releasing a lease someone else holds changes nothing.
        old.release(&host, &names);
        let mut third = Poller::new(cfg(), 6);
        assert!(third.due(&host, &names, 1_200).is_none());
    }

    #[test]
    fn lease_arithmetic_saturates() {
        let host = FakeHost::default();
        let names = Names::new("p");
        let huge = ResetSignals {
            poll_interval: Duration::MAX,
            ..cfg()
        };
        let mut p = Poller::new(huge, 2);
        assert_eq!(p.poll_ms(), 60_000, "clamped to SPEC's bound");
        assert!(p.due(&host, &names, u64::MAX - 5).is_some());
        assert_eq!(p.next_poll_ms, u64::MAX);
    }
}

//! Kernel reset signals from the eBPF sidecar (SPEC "reset_signals" and "Sidecar"), as arithmetic.
//!
//! Why: the sidecar sees what Envoy cannot attribute well — RSTs on established connections,
//! refused connects and connects abandoned without an answer — per remote peer. It serves
//! *cumulative* counters since its own start (`GET /v1/resets`), so a poller must take deltas and
//! must not mistake a sidecar restart for a burst (or a negative burst). This module does that,
//! with no I/O:
//!
//! - [`parse_snapshot`] reads the JSON body (serde; extra fields ignored, anything malformed is an
//!   error). Each peer carries `peer`, its address in exactly the form of Envoy's
//!   `upstream.address` (`10.0.0.5:8080`, `[::1]:8080`, IPv4-mapped IPv6 as IPv4), printed by
//!   the sidecar with `std::net`; the filter matches upstream hosts against it by string, so no
//!   address is parsed or printed here;
//! - [`ResetTracker`] turns successive snapshots into per-peer deltas.
//!
//! Delta rules ([`ResetTracker::observe`]):
//! - the first snapshot is the baseline: zero deltas (events before we started polling are old news);
//! - a different `started_at_ms` means the sidecar restarted: everything is re-baselined and the
//!   poll yields zero deltas (the events between the restart and this poll are lost, never doubled);
//! - a peer whose counter went backwards (the sidecar dropped and re-created its map entry) is
//!   re-baselined with a zero delta for that poll;
//! - a peer first seen after the first snapshot counts in full if its `last_ms` is after the
//!   previous snapshot's `now_ms` (its events are new); otherwise it is taken as baseline (it was
//!   idle and only absent from our table, e.g. dropped by the peer bound).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// Default bound on the number of peers a [`ResetTracker`] remembers.
pub const DEFAULT_MAX_PEERS: usize = 4096;

/// Longest `peer` accepted: `[` + the longest IPv6 text (45) + `]:` + a port (5) is 53 bytes; the
/// shared-state encoding holds 64 ([`crate::encoding::ResetTotals`]).
pub const MAX_PEER_BYTES: usize = 64;

/// The longest part of a sidecar-supplied string that goes into an error (and so a log line).
const MAX_SHOWN: usize = 64;

/// One peer of a sidecar snapshot, cumulative since the snapshot's `started_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCounters {
    /// `10.0.0.5:8080` / `[::1]:8080`: Envoy's `upstream.address` form.
    pub peer: String,
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
    /// Sidecar clock, milliseconds: when the last event for this peer was counted.
    pub last_ms: u64,
}

/// A parsed `GET /v1/resets` body. Entries naming the same peer are merged: counters summed,
/// latest `last_ms` kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub started_at_ms: u64,
    pub now_ms: u64,
    pub peers: Vec<PeerCounters>,
}

/// Why a sidecar body was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetParseError {
    /// Not JSON of the expected shape (what was wrong, and where).
    Json(String),
    /// A `peer` that is not an `addr:port` in Envoy's form (cut to 64 bytes).
    BadAddress(String),
}

impl fmt::Display for ResetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetParseError::Json(e) => write!(f, "sidecar resets body: {e}"),
            ResetParseError::BadAddress(a) => {
                write!(f, "sidecar resets body: bad peer \"{a}\"")
            }
        }
    }
}

impl std::error::Error for ResetParseError {}

#[derive(Deserialize)]
struct WireSnapshot {
    started_at_ms: u64,
    now_ms: u64,
    peers: Vec<WirePeer>,
}

#[derive(Deserialize)]
struct WirePeer {
    peer: String,
    resets: u64,
    refused: u64,
    timeouts: u64,
    last_ms: u64,
}

/// A plausible Envoy socket address: `a.b.c.d:port` or `[v6]:port`, made only of the characters
/// those use. Not a full parse (the sidecar printed it with `std::net`); it keeps other text (a
/// hostname, a pipe path, anything long) out of the attribution table and the logs.
pub fn is_peer_address(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
    };
    s.len() <= MAX_PEER_BYTES && port_ok && host_ok
}

/// Envoy's `upstream.address` in the sidecar's `peer` form: `10.0.0.5:8080`, `[::1]:8080`, an
/// IPv4-mapped IPv6 address as IPv4. Anything that is not an IP socket address (a pipe, an
/// internal listener) is dropped: the kernel signal cannot be about it. Both shells learn an
/// upstream host with it, so they attribute resets alike.
pub fn normalize_upstream(raw: &str) -> Option<String> {
    use std::net::{IpAddr, SocketAddr};
    let addr: SocketAddr = raw.parse().ok()?;
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    Some(SocketAddr::new(ip, addr.port()).to_string())
}

/// `s` cut to [`MAX_SHOWN`] bytes at a character boundary.
fn shown(s: &str) -> String {
    let mut end = s.len().min(MAX_SHOWN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

/// Parses the sidecar's `GET /v1/resets` body. `started_at_ms`, `now_ms` and each peer's `peer`,
/// `resets`, `refused`, `timeouts` and `last_ms` are required; extra fields (`addr`, `port`, …)
/// are ignored; any other deviation (bad JSON, a repeated field, negative or fractional counters,
/// a `peer` that is not an address) rejects the whole body.
pub fn parse_snapshot(body: &[u8]) -> Result<Snapshot, ResetParseError> {
    let wire: WireSnapshot =
        serde_json::from_slice(body).map_err(|e| ResetParseError::Json(shown(&e.to_string())))?;
    let mut peers: Vec<PeerCounters> = Vec::with_capacity(wire.peers.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(wire.peers.len());
    for p in wire.peers {
        if !is_peer_address(&p.peer) {
            return Err(ResetParseError::BadAddress(shown(&p.peer)));
        }
        match seen.get(&p.peer).and_then(|&i| peers.get_mut(i)) {
            Some(c) => {
                c.resets = c.resets.saturating_add(p.resets);
                c.refused = c.refused.saturating_add(p.refused);
                c.timeouts = c.timeouts.saturating_add(p.timeouts);
                c.last_ms = c.last_ms.max(p.last_ms);
            }
            None => {
                seen.insert(p.peer.clone(), peers.len());
                peers.push(PeerCounters {
                    peer: p.peer,
                    resets: p.resets,
                    refused: p.refused,
                    timeouts: p.timeouts,
                    last_ms: p.last_ms,
                });
            }
        }
    }
    Ok(Snapshot {
        started_at_ms: wire.started_at_ms,
        now_ms: wire.now_ms,
        peers,
    })
}

/// New events towards one peer since the previous snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDelta {
    pub peer: String,
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
}

impl PeerDelta {
    /// resets + refused + timeouts: what SPEC's rate counts.
    pub fn total(&self) -> u64 {
        self.resets
            .saturating_add(self.refused)
            .saturating_add(self.timeouts)
    }
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    resets: u64,
    refused: u64,
    timeouts: u64,
    last_ms: u64,
}

impl From<&PeerCounters> for Baseline {
    fn from(p: &PeerCounters) -> Self {
        Baseline {
            resets: p.resets,
            refused: p.refused,
            timeouts: p.timeouts,
            last_ms: p.last_ms,
        }
    }
}

/// Turns the sidecar's cumulative snapshots into per-peer deltas (rules in the module docs).
/// Remembers at most `max_peers` peers; beyond that the ones with the oldest `last_ms` are dropped.
#[derive(Debug, Clone)]
pub struct ResetTracker {
    started_at_ms: Option<u64>,
    prev_now_ms: u64,
    peers: HashMap<String, Baseline>,
    max_peers: usize,
    deltas: Vec<PeerDelta>,
}

impl Default for ResetTracker {
    fn default() -> Self {
        ResetTracker::new(DEFAULT_MAX_PEERS)
    }
}

impl ResetTracker {
    pub fn new(max_peers: usize) -> Self {
        ResetTracker {
            started_at_ms: None,
            prev_now_ms: 0,
            peers: HashMap::new(),
            max_peers: max_peers.max(1),
            deltas: Vec::new(),
        }
    }

    /// Feeds the next snapshot; returns the peers with new events (non-zero deltas only).
    pub fn observe(&mut self, snap: &Snapshot) -> &[PeerDelta] {
        self.deltas.clear();
        if self.started_at_ms != Some(snap.started_at_ms) {
            // First snapshot, or the sidecar restarted: baseline only.
            self.peers.clear();
            for p in &snap.peers {
                self.peers.insert(p.peer.clone(), Baseline::from(p));
            }
        } else {
            for p in &snap.peers {
                let delta = match self.peers.get_mut(&p.peer) {
                    Some(b) => {
                        let backwards =
                            p.resets < b.resets || p.refused < b.refused || p.timeouts < b.timeouts;
                        let d = if backwards {
                            None
                        } else {
                            Some(PeerDelta {
                                peer: p.peer.clone(),
                                resets: p.resets - b.resets,
                                refused: p.refused - b.refused,
                                timeouts: p.timeouts - b.timeouts,
                            })
                        };
                        *b = Baseline::from(p);
                        d
                    }
                    None => {
                        self.peers.insert(p.peer.clone(), Baseline::from(p));
                        (p.last_ms > self.prev_now_ms).then_some(PeerDelta {
                            peer: p.peer.clone(),
                            resets: p.resets,
                            refused: p.refused,
                            timeouts: p.timeouts,
                        })
                    }
                };
                if let Some(d) = delta.filter(|d| d.total() > 0) {
                    self.deltas.push(d);
                }
            }
        }
        self.started_at_ms = Some(snap.started_at_ms);
        self.prev_now_ms = snap.now_ms;
        self.trim();
        &self.deltas
    }

    /// How many peers are remembered.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The sidecar start time of the current baseline, if any snapshot was seen.
    pub fn started_at_ms(&self) -> Option<u64> {
        self.started_at_ms
    }

    fn trim(&mut self) {
        let excess = self.peers.len().saturating_sub(self.max_peers);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .peers
            .iter()
            .map(|(k, b)| (b.last_ms, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, k) in by_age.iter().take(excess) {
            self.peers.remove(k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn snap(started: u64, now: u64, peers: &[(&str, u64, u64, u64, u64)]) -> Snapshot {
        Snapshot {
            started_at_ms: started,
            now_ms: now,
            peers: peers
                .iter()
                .map(|&(p, resets, refused, timeouts, last_ms)| PeerCounters {
                    peer: p.to_string(),
                    resets,
                    refused,
                    timeouts,
                    last_ms,
                })
                .collect(),
        }
    }

    fn totals(d: &[PeerDelta]) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = d.iter().map(|d| (d.peer.clone(), d.total())).collect();
        v.sort();
        v
    }

    #[test]
    fn parse_snapshot_reads_what_the_sidecar_writes() {
        // The sidecar's own test writes exactly this body (`ebpf-sidecar/src/report.rs`).
        let s = parse_snapshot(include_bytes!("../fixtures/v1_resets.json")).unwrap();
        assert_eq!(
            (s.started_at_ms, s.now_ms),
            (1_700_000_000_123, 1_700_000_005_000)
        );
        let peers: Vec<(&str, u64, u64, u64, u64)> = s
            .peers
            .iter()
            .map(|p| (p.peer.as_str(), p.resets, p.refused, p.timeouts, p.last_ms))
            .collect();
        assert_eq!(
            peers,
            [
                ("10.0.0.5:8080", 1, 2, 3, 1_700_000_004_000),
                ("[fd00::1]:443", 0, 0, 0, 1_700_000_001_000)
            ]
        );
    }

    #[test]
    fn parse_snapshot_reads_the_spec_example_body() {
        let body = br#"{"started_at_ms":1000,"now_ms":5000,"peers":[
            {"addr":"10.0.0.5","port":8080,"peer":"10.0.0.5:8080","resets":3,"refused":2,"timeouts":1,"last_ms":4000},
            {"addr":"::1","port":9090,"peer":"[::1]:9090","resets":0,"refused":7,"timeouts":0,"last_ms":4500}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.started_at_ms, 1000);
        assert_eq!(s.now_ms, 5000);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].peer, "10.0.0.5:8080");
        assert_eq!(
            (s.peers[0].resets, s.peers[0].refused, s.peers[0].timeouts),
            (3, 2, 1)
        );
        assert_eq!(s.peers[0].last_ms, 4000);
        assert_eq!(s.peers[1].peer, "[::1]:9090");
    }

    #[test]
    fn parse_snapshot_ignores_extra_fields() {
        let body = br#"{"version":2,"started_at_ms":1,"now_ms":2,"host":"x","peers":[
            {"peer":"10.0.0.1:80","resets":1,"refused":0,"timeouts":0,"last_ms":2,"comm":"envoy"}]}"#;
        assert_eq!(parse_snapshot(body).unwrap().peers.len(), 1);
    }

    #[test]
    fn parse_snapshot_rejects_garbage() {
        let p = |fields: &str| {
            format!(
                r#"{{"started_at_ms":1,"now_ms":2,"peers":[{{"peer":"10.0.0.1:80",{fields}}}]}}"#
            )
        };
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"not json".to_vec(),
            b"\xff\xfe\x00".to_vec(),
            b"[]".to_vec(),
            b"null".to_vec(),
            br#"{"now_ms":2,"peers":[]}"#.to_vec(),
            br#"{"started_at_ms":1,"now_ms":2}"#.to_vec(),
            br#"{"started_at_ms":-1,"now_ms":2,"peers":[]}"#.to_vec(),
            br#"{"started_at_ms":"1","now_ms":2,"peers":[]}"#.to_vec(),
            br#"{"started_at_ms":1,"started_at_ms":1,"now_ms":2,"peers":[]}"#.to_vec(),
            br#"{"started_at_ms":1,"now_ms":2,"peers":{}}"#.to_vec(),
            p(r#""resets":1.5,"refused":0,"timeouts":0,"last_ms":0"#).into_bytes(),
            p(r#""resets":1,"refused":0,"last_ms":0"#).into_bytes(),
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"resets":1,"refused":0,"timeouts":0,"last_ms":0}]}"#.to_vec(),
            p(r#""resets":1,"refused":0,"timeouts":0,"last_ms":0}"#).into_bytes(),
        ];
        for b in &bad {
            assert!(
                matches!(parse_snapshot(b), Err(ResetParseError::Json(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn parse_snapshot_rejects_a_peer_that_is_not_an_address() {
        for peer in [
            "example.com:80",
            "10.0.0.5",
            "/tmp/envoy.sock",
            "[::1]",
            "[]:80",
            "10.0.0.5:",
            "10.0.0.5:123456",
            "10.0.0.5:80 ",
        ] {
            let body = format!(
                r#"{{"started_at_ms":1,"now_ms":2,"peers":[{{"peer":"{peer}","resets":1,"refused":0,"timeouts":0,"last_ms":0}}]}}"#
            );
            assert_eq!(
                parse_snapshot(body.as_bytes()),
                Err(ResetParseError::BadAddress(peer.to_string())),
                "{peer}"
            );
        }
    }

    #[test]
    fn parse_snapshot_cuts_a_long_bad_peer_in_its_error() {
        let long = "x".repeat(10_000);
        let body = format!(
            r#"{{"started_at_ms":1,"now_ms":2,"peers":[{{"peer":"{long}","resets":1,"refused":0,"timeouts":0,"last_ms":0}}]}}"#
        );
        let e = parse_snapshot(body.as_bytes()).unwrap_err();
        assert_eq!(e, ResetParseError::BadAddress("x".repeat(64)));
        assert!(e.to_string().len() < 120, "{e}");
    }

    #[test]
    fn is_peer_address_accepts_envoy_forms() {
        for ok in [
            "10.0.0.5:8080",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.5]:1",
            "127.0.0.1:65535",
        ] {
            assert!(is_peer_address(ok), "{ok}");
        }
    }

    #[test]
    fn parse_snapshot_merges_duplicate_peers() {
        let body = br#"{"started_at_ms":1,"now_ms":9,"peers":[
            {"peer":"10.0.0.5:80","resets":1,"refused":2,"timeouts":3,"last_ms":5},
            {"peer":"10.0.0.5:80","resets":10,"refused":0,"timeouts":0,"last_ms":7}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].peer, "10.0.0.5:80");
        assert_eq!(
            (s.peers[0].resets, s.peers[0].refused, s.peers[0].timeouts),
            (11, 2, 3)
        );
        assert_eq!(s.peers[0].last_ms, 7);
    }

    #[test]
    fn first_snapshot_is_baseline_with_zero_deltas() {
        let mut t = ResetTracker::default();
        assert!(t
            .observe(&snap(100, 1000, &[("10.0.0.1:80", 50, 5, 5, 900)]))
            .is_empty());
        assert_eq!(t.peer_count(), 1);
    }

    #[test]
    fn deltas_between_snapshots() {
        let mut t = ResetTracker::default();
        t.observe(&snap(
            100,
            1000,
            &[("10.0.0.1:80", 5, 1, 0, 900), ("10.0.0.2:80", 2, 0, 0, 800)],
        ));
        let d = t.observe(&snap(
            100,
            2000,
            &[
                ("10.0.0.1:80", 8, 2, 4, 1900),
                ("10.0.0.2:80", 2, 0, 0, 800),
            ],
        ));
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0],
            PeerDelta {
                peer: "10.0.0.1:80".to_string(),
                resets: 3,
                refused: 1,
                timeouts: 4
            }
        );
        assert_eq!(d[0].total(), 8);
        let d = t.observe(&snap(
            100,
            3000,
            &[
                ("10.0.0.1:80", 8, 2, 4, 1900),
                ("10.0.0.2:80", 3, 0, 0, 2500),
            ],
        ));
        assert_eq!(totals(d), [("10.0.0.2:80".to_string(), 1)]);
    }

    #[test]
    fn sidecar_restart_rebaselines_without_a_jump() {
        let mut t = ResetTracker::default();
        t.observe(&snap(100, 1000, &[("10.0.0.1:80", 5, 0, 0, 900)]));
        // Restarted: counters start over, with a new peer and big numbers.
        let d = t.observe(&snap(
            5000,
            6000,
            &[
                ("10.0.0.1:80", 1, 0, 0, 5900),
                ("10.0.0.9:80", 40, 0, 0, 5950),
            ],
        ));
        assert!(d.is_empty());
        assert_eq!(t.started_at_ms(), Some(5000));
        let d = t.observe(&snap(
            5000,
            7000,
            &[
                ("10.0.0.1:80", 3, 0, 0, 6900),
                ("10.0.0.9:80", 41, 0, 0, 6950),
            ],
        ));
        assert_eq!(
            totals(d),
            [
                ("10.0.0.1:80".to_string(), 2),
                ("10.0.0.9:80".to_string(), 1)
            ]
        );
    }

    #[test]
    fn counter_going_backwards_rebaselines_that_peer() {
        let mut t = ResetTracker::default();
        t.observe(&snap(
            100,
            1000,
            &[
                ("10.0.0.1:80", 10, 10, 10, 900),
                ("10.0.0.2:80", 1, 0, 0, 900),
            ],
        ));
        let d = t.observe(&snap(
            100,
            2000,
            &[
                ("10.0.0.1:80", 12, 3, 10, 1900),
                ("10.0.0.2:80", 2, 0, 0, 1900),
            ],
        ));
        // Peer 1: refused went backwards → no delta, not even for resets; peer 2 unaffected.
        assert_eq!(totals(d), [("10.0.0.2:80".to_string(), 1)]);
        let d = t.observe(&snap(
            100,
            3000,
            &[
                ("10.0.0.1:80", 13, 3, 10, 2900),
                ("10.0.0.2:80", 2, 0, 0, 1900),
            ],
        ));
        assert_eq!(totals(d), [("10.0.0.1:80".to_string(), 1)]);
    }

    #[test]
    fn new_peer_after_first_snapshot_counts_in_full() {
        let mut t = ResetTracker::default();
        t.observe(&snap(100, 1000, &[]));
        let d = t.observe(&snap(100, 2000, &[("[::1]:8080", 2, 3, 1, 1500)]));
        assert_eq!(totals(d), [("[::1]:8080".to_string(), 6)]);
    }

    #[test]
    fn new_peer_with_only_old_events_is_baseline() {
        let mut t = ResetTracker::default();
        t.observe(&snap(100, 1000, &[]));
        let d = t.observe(&snap(100, 2000, &[("10.0.0.3:80", 9, 0, 0, 400)]));
        assert!(d.is_empty());
    }

    #[test]
    fn tracker_bounds_peers_dropping_the_oldest() {
        let mut t = ResetTracker::new(3);
        let peers: Vec<(String, u64)> = (0..5)
            .map(|i| (format!("10.0.0.{i}:80"), 100 + i))
            .collect();
        let s = Snapshot {
            started_at_ms: 1,
            now_ms: 1000,
            peers: peers
                .iter()
                .map(|(p, last)| PeerCounters {
                    peer: p.clone(),
                    resets: 1,
                    refused: 0,
                    timeouts: 0,
                    last_ms: *last,
                })
                .collect(),
        };
        t.observe(&s);
        assert_eq!(t.peer_count(), 3);
        // The three newest are remembered: their unchanged counters give no delta.
        assert!(t.observe(&s).is_empty());
    }
}

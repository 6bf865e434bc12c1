//! Kernel reset signals from the eBPF sidecar (SPEC "reset_signals" and "Sidecar"), as arithmetic.
//!
//! Why: the sidecar sees what Envoy cannot attribute well — RSTs on established connections,
//! refused connects and connects abandoned without an answer — per remote `addr:port`. It serves
//! *cumulative* counters since its own start (`GET /v1/resets`), so a poller must take deltas and
//! must not mistake a sidecar restart for a burst (or a negative burst). This module does that,
//! with no I/O:
//!
//! - [`parse_snapshot`] reads the JSON body (extra fields ignored, anything malformed is an error);
//! - [`PeerKey`] names a peer the way Envoy's `upstream.address` does (`10.0.0.5:8080`,
//!   `[::1]:8080`), so the filter can attribute a peer's events to the keys whose requests went
//!   there ([`normalize_upstream_address`]);
//! - [`ResetTracker`] turns successive snapshots into per-peer deltas;
//! - [`ResetCounter`] is the per-key time-bucketed event count whose rate trips a breaker with
//!   reason [`TRIP_REASON`] when it *exceeds* `max_resets_per_second` (no `min_requests` guard).
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use crate::config::json::{self, Map, Value};

/// The `x-meshbreaker-reason` and log reason of a trip caused by kernel resets.
pub const TRIP_REASON: &str = "kernel_resets";

/// Default bound on the number of peers a [`ResetTracker`] remembers.
pub const DEFAULT_MAX_PEERS: usize = 4096;

/// Most buckets a [`ResetCounter`] has (SPEC: `buckets` is 1–60).
pub const MAX_BUCKETS: usize = 60;

/// A remote peer, `addr:port`, in the canonical form Envoy uses for `upstream.address`:
/// IPv4-mapped IPv6 addresses are shown as IPv4, IPv6 is bracketed, no scope or flow info.
/// `Copy` and allocation-free, so attribution on the request path costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(SocketAddr);

impl PeerKey {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => PeerKey(SocketAddr::new(IpAddr::V4(v4), port)),
            IpAddr::V6(v6) => PeerKey(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0))),
        }
    }

    /// Parses an Envoy address string (`10.0.0.5:8080`, `[::1]:8080`, `[fe80::1%eth0]:80`; any
    /// scope is dropped). Anything else (a pipe path, a hostname, no port) is `None`.
    pub fn parse(address: &str) -> Option<Self> {
        let address = address.trim();
        if let Some(rest) = address.strip_prefix('[') {
            let (inside, port) = rest.split_once("]:")?;
            let ip = inside.split_once('%').map_or(inside, |(ip, _)| ip);
            let ip = parse_ipv6(ip.as_bytes())?;
            let port: u16 = port.parse().ok()?;
            return Some(PeerKey::new(IpAddr::V6(ip), port));
        }
        let (ip, port) = address.split_once(':')?;
        let ip = parse_ipv4(ip.as_bytes())?;
        let port = port.as_bytes();
        let mut pos = 0;
        let port = read_number(port, &mut pos, 10, 5, true)
            .filter(|_| pos == port.len())
            .and_then(|p| u16::try_from(p).ok())?;
        Some(PeerKey::new(IpAddr::V4(ip), port))
    }

    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

impl fmt::Display for PeerKey {
    /// `10.0.0.5:8080` or `[::1]:8080`: the text of `SocketAddr`'s Display (RFC 5952 for IPv6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V4(a) => {
                let [x, y, z, w] = a.ip().octets();
                write!(f, "{x}.{y}.{z}.{w}:{}", a.port())
            }
            SocketAddr::V6(a) => {
                f.write_str("[")?;
                write_ipv6(f, a.ip())?;
                if a.scope_id() != 0 {
                    write!(f, "%{}", a.scope_id())?;
                }
                write!(f, "]:{}", a.port())
            }
        }
    }
}

// Address parsing and printing by hand, with exactly the rules of `core::net` (checked against it
// in the tests): the std versions are generic over every address form and cost the wasm filter
// about 8 KB, four times what these do.

/// 1 to `max` digits in `radix` at `*pos` (more than `max` digits is an error, as in std); without
/// `zero_prefix` a number may not start with `0` unless it is `0`.
fn read_number(
    s: &[u8],
    pos: &mut usize,
    radix: u32,
    max: usize,
    zero_prefix: bool,
) -> Option<u32> {
    let start = *pos;
    let mut value: u32 = 0;
    while let Some(d) = s.get(*pos).and_then(|&b| char::from(b).to_digit(radix)) {
        if *pos - start == max {
            return None;
        }
        value = value * radix + d;
        *pos += 1;
    }
    let digits = *pos - start;
    if digits == 0 || (!zero_prefix && digits > 1 && s.get(start) == Some(&b'0')) {
        return None;
    }
    Some(value)
}

/// Dotted quad at `*pos`.
fn read_ipv4(s: &[u8], pos: &mut usize) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    for (i, o) in octets.iter_mut().enumerate() {
        if i > 0 {
            if s.get(*pos) != Some(&b'.') {
                return None;
            }
            *pos += 1;
        }
        *o = u8::try_from(read_number(s, pos, 10, 3, false)?).ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut pos = 0;
    read_ipv4(s, &mut pos).filter(|_| pos == s.len())
}

/// Colon-separated hex groups into `groups`, the last two possibly a dotted quad; returns how
/// many were filled and whether a dotted quad ended them.
fn read_groups(s: &[u8], pos: &mut usize, groups: &mut [u16]) -> (usize, bool) {
    let limit = groups.len();
    for i in 0..limit {
        let before = *pos;
        if i > 0 {
            if s.get(*pos) != Some(&b':') {
                return (i, false);
            }
            *pos += 1;
        }
        if i + 1 < limit {
            let group_start = *pos;
            if let Some(v4) = read_ipv4(s, pos) {
                let [a, b, c, d] = v4.octets();
                if let Some([g, h]) = groups.get_mut(i..i + 2) {
                    *g = u16::from_be_bytes([a, b]);
                    *h = u16::from_be_bytes([c, d]);
                }
                return (i + 2, true);
            }
            *pos = group_start;
        }
        match (read_number(s, pos, 16, 4, true), groups.get_mut(i)) {
            (Some(g), Some(slot)) => *slot = g as u16,
            _ => {
                *pos = before;
                return (i, false);
            }
        }
    }
    (limit, false)
}

fn parse_ipv6(s: &[u8]) -> Option<Ipv6Addr> {
    let mut pos = 0;
    let mut head = [0u16; 8];
    let (head_len, head_v4) = read_groups(s, &mut pos, &mut head);
    if head_len < 8 {
        // A dotted quad may only end the address; `::` stands for at least one zero group.
        if head_v4 || s.get(pos..pos + 2) != Some(b"::") {
            return None;
        }
        pos += 2;
        let mut tail = [0u16; 7];
        let limit = 7 - head_len;
        let (tail_len, _) = read_groups(s, &mut pos, tail.get_mut(..limit)?);
        head.get_mut(8 - tail_len..)?
            .copy_from_slice(tail.get(..tail_len)?);
    }
    (pos == s.len()).then(|| Ipv6Addr::from(head))
}

/// An IP address as `IpAddr::from_str` reads it.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.as_bytes();
    parse_ipv4(s)
        .map(IpAddr::V4)
        .or_else(|| parse_ipv6(s).map(IpAddr::V6))
}

fn write_groups(f: &mut fmt::Formatter<'_>, groups: &[u16]) -> fmt::Result {
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            f.write_str(":")?;
        }
        write!(f, "{g:x}")?;
    }
    Ok(())
}

/// RFC 5952 text, as `Ipv6Addr`'s Display: lower-case hex, the first longest run of two or more
/// zero groups as `::`, IPv4-mapped addresses as `::ffff:a.b.c.d`.
fn write_ipv6(f: &mut fmt::Formatter<'_>, ip: &Ipv6Addr) -> fmt::Result {
    if let Some(v4) = ip.to_ipv4_mapped() {
        let [a, b, c, d] = v4.octets();
        return write!(f, "::ffff:{a}.{b}.{c}.{d}");
    }
    let segments = ip.segments();
    let (mut best_start, mut best_len, mut run_start, mut run_len) = (0, 0, 0, 0);
    for (i, &g) in segments.iter().enumerate() {
        if g == 0 {
            if run_len == 0 {
                run_start = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best_start, best_len) = (run_start, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    if best_len > 1 {
        write_groups(f, segments.get(..best_start).unwrap_or(&[]))?;
        f.write_str("::")?;
        write_groups(f, segments.get(best_start + best_len..).unwrap_or(&[]))
    } else {
        write_groups(f, &segments)
    }
}

/// Envoy's `upstream.address` as the peer key string the sidecar's peers are keyed by, or `None`
/// if it is not an IP socket address.
pub fn normalize_upstream_address(address: &str) -> Option<String> {
    PeerKey::parse(address).map(|p| p.to_string())
}

/// One peer of a sidecar snapshot, cumulative since the snapshot's `started_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCounters {
    pub peer: PeerKey,
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
    /// Sidecar clock, milliseconds: when the last event for this peer was counted.
    pub last_ms: u64,
}

/// A parsed `GET /v1/resets` body. Entries naming the same peer (e.g. `::ffff:10.0.0.5` and
/// `10.0.0.5`) are merged: counters summed, latest `last_ms` kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub started_at_ms: u64,
    pub now_ms: u64,
    pub peers: Vec<PeerCounters>,
}

/// Why a sidecar body was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetParseError {
    /// Not JSON of the expected shape (what was wrong, and where for a syntax error).
    Json(String),
    /// A peer `addr` that is not an IP address.
    BadAddress(String),
}

impl fmt::Display for ResetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetParseError::Json(e) => write!(f, "sidecar resets body: {e}"),
            ResetParseError::BadAddress(a) => {
                write!(f, "sidecar resets body: bad peer addr \"{a}\"")
            }
        }
    }
}

impl std::error::Error for ResetParseError {}

/// A required field of a sidecar object.
#[inline(never)]
fn field<'v>(obj: &'v Map, name: &str) -> Result<&'v Value, ResetParseError> {
    obj.get(name)
        .ok_or_else(|| ResetParseError::Json(format!("missing field `{name}`")))
}

/// A non-negative JSON integer no larger than `max` (a float such as `1.0` is rejected, as the
/// sidecar only ever writes integers).
#[inline(never)]
fn uint(obj: &Map, name: &str, max: u64) -> Result<u64, ResetParseError> {
    let v = field(obj, name)?;
    v.as_number()
        .and_then(|n| n.as_u64())
        .filter(|&u| u <= max)
        .ok_or_else(|| {
            let got = match v {
                Value::Number(n) => n.to_string(),
                Value::String(_) => "a string".into(),
                _ => "another type".into(),
            };
            ResetParseError::Json(format!(
                "field `{name}`: expected an integer in [0, {max}], got {got}"
            ))
        })
}

/// Parses the sidecar's `GET /v1/resets` body. All fields of SPEC are required; extra fields are
/// ignored; any other deviation (bad JSON, a repeated field, negative or fractional counters, a port
/// above 65535, an `addr` that is not an IP) rejects the whole body.
pub fn parse_snapshot(body: &[u8]) -> Result<Snapshot, ResetParseError> {
    let doc = json::parse(body, true).map_err(|e| ResetParseError::Json(e.to_string()))?;
    let not = |what: &'static str| ResetParseError::Json(format!("expected {what}"));
    let top = doc.as_object().ok_or_else(|| not("an object"))?;
    let started_at_ms = uint(top, "started_at_ms", u64::MAX)?;
    let now_ms = uint(top, "now_ms", u64::MAX)?;
    let raw = field(top, "peers")?
        .as_array()
        .ok_or_else(|| not("`peers` to be an array"))?;
    let mut peers: Vec<PeerCounters> = Vec::with_capacity(raw.len());
    let mut seen: HashMap<PeerKey, usize> = HashMap::with_capacity(raw.len());
    for p in raw {
        let p = p
            .as_object()
            .ok_or_else(|| not("each peer to be an object"))?;
        let addr = field(p, "addr")?
            .as_str()
            .ok_or_else(|| not("`addr` to be a string"))?;
        let port = uint(p, "port", u64::from(u16::MAX))? as u16;
        let resets = uint(p, "resets", u64::MAX)?;
        let refused = uint(p, "refused", u64::MAX)?;
        let timeouts = uint(p, "timeouts", u64::MAX)?;
        let last_ms = uint(p, "last_ms", u64::MAX)?;
        let ip =
            parse_ip(addr.trim()).ok_or_else(|| ResetParseError::BadAddress(addr.to_string()))?;
        let peer = PeerKey::new(ip, port);
        let existing = seen.get(&peer).and_then(|&i| peers.get_mut(i));
        match existing {
            Some(c) => {
                c.resets = c.resets.saturating_add(resets);
                c.refused = c.refused.saturating_add(refused);
                c.timeouts = c.timeouts.saturating_add(timeouts);
                c.last_ms = c.last_ms.max(last_ms);
            }
            None => {
                seen.insert(peer, peers.len());
                peers.push(PeerCounters {
                    peer,
                    resets,
                    refused,
                    timeouts,
                    last_ms,
                });
            }
        }
    }
    Ok(Snapshot {
        started_at_ms,
        now_ms,
        peers,
    })
}

/// New events towards one peer since the previous snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerDelta {
    pub peer: PeerKey,
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
    peers: HashMap<PeerKey, Baseline>,
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
                self.peers.insert(p.peer, Baseline::from(p));
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
                                peer: p.peer,
                                resets: p.resets - b.resets,
                                refused: p.refused - b.refused,
                                timeouts: p.timeouts - b.timeouts,
                            })
                        };
                        *b = Baseline::from(p);
                        d
                    }
                    None => {
                        self.peers.insert(p.peer, Baseline::from(p));
                        (p.last_ms > self.prev_now_ms).then_some(PeerDelta {
                            peer: p.peer,
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
        let mut by_age: Vec<(u64, PeerKey)> =
            self.peers.iter().map(|(k, b)| (b.last_ms, *k)).collect();
        by_age.sort_unstable();
        for (_, k) in by_age.iter().take(excess) {
            self.peers.remove(k);
        }
    }
}

/// Per-key count of kernel reset events in a sliding window of `buckets` time buckets, aligned
/// with the breaker window: `window` / `buckets` milliseconds each, rounded up, the same bucket
/// length and bucket numbers (`now_ms / bucket_ms`) as [`crate::window::bucket_ms`].
///
/// State is plain integers in fixed arrays (no allocation, `Copy`-able data): for each slot, the
/// absolute bucket number it holds (`now_ms / bucket_ms`) and its count; slot = bucket number mod
/// `buckets`. A slot whose bucket number is older than the window counts as empty. This is what
/// the filter encodes into shared data ([`epochs`](Self::epochs), [`counts`](Self::counts),
/// [`from_parts`](Self::from_parts)) and combines across workers ([`merge`](Self::merge)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetCounter {
    window_ms: u64,
    bucket_ms: u64,
    buckets: u32,
    epochs: [u64; MAX_BUCKETS],
    counts: [u64; MAX_BUCKETS],
}

impl ResetCounter {
    /// A counter over `window` in `buckets` buckets (clamped to 1–60; a zero window counts as 1ms).
    pub fn new(window: Duration, buckets: u32) -> Self {
        let buckets = buckets.clamp(1, MAX_BUCKETS as u32);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let bucket_ms = window_ms.div_ceil(u64::from(buckets)).max(1);
        ResetCounter {
            window_ms,
            bucket_ms,
            buckets,
            epochs: [0; MAX_BUCKETS],
            counts: [0; MAX_BUCKETS],
        }
    }

    /// A counter with the geometry of a breaker's window.
    pub fn for_breaker(breaker: &crate::config::BreakerConfig) -> Self {
        ResetCounter::new(breaker.window, breaker.buckets)
    }

    /// Rebuilds a counter from encoded state; `None` if the slices are not `buckets` long or the
    /// geometry is out of range. Slots older than the window are harmless (they count as empty).
    pub fn from_parts(
        window_ms: u64,
        buckets: u32,
        epochs: &[u64],
        counts: &[u64],
    ) -> Option<Self> {
        if buckets == 0 || buckets as usize > MAX_BUCKETS || window_ms == 0 {
            return None;
        }
        let n = buckets as usize;
        if epochs.len() != n || counts.len() != n {
            return None;
        }
        let mut c = ResetCounter::new(Duration::from_millis(window_ms), buckets);
        c.epochs.get_mut(..n)?.copy_from_slice(epochs);
        c.counts.get_mut(..n)?.copy_from_slice(counts);
        Some(c)
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    pub fn bucket_count(&self) -> u32 {
        self.buckets
    }

    /// The absolute bucket number held by each slot (`buckets` entries).
    pub fn epochs(&self) -> &[u64] {
        self.epochs.get(..self.buckets as usize).unwrap_or(&[])
    }

    /// The event count of each slot (`buckets` entries).
    pub fn counts(&self) -> &[u64] {
        self.counts.get(..self.buckets as usize).unwrap_or(&[])
    }

    /// `(bucket number, count)` of each slot that still lies in the window at `now_ms`.
    pub fn buckets(&self, now_ms: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let current = now_ms / self.bucket_ms;
        self.epochs()
            .iter()
            .zip(self.counts())
            .filter(move |(&e, _)| self.in_window(e, current))
            .map(|(&e, &c)| (e, c))
    }

    fn in_window(&self, epoch: u64, current: u64) -> bool {
        epoch <= current && current - epoch < u64::from(self.buckets)
    }

    /// Adds `events` at `now_ms`. Events older than the slot's current bucket (a clock that went
    /// back by a whole window) are dropped.
    pub fn add(&mut self, now_ms: u64, events: u64) {
        let epoch = now_ms / self.bucket_ms;
        let slot = (epoch % u64::from(self.buckets)) as usize;
        let (Some(e), Some(c)) = (self.epochs.get_mut(slot), self.counts.get_mut(slot)) else {
            return;
        };
        if *e < epoch {
            *e = epoch;
            *c = 0;
        }
        if *e == epoch {
            *c = c.saturating_add(events);
        }
    }

    /// Events in the window at `now_ms`.
    pub fn sum(&self, now_ms: u64) -> u64 {
        self.buckets(now_ms)
            .fold(0u64, |acc, (_, c)| acc.saturating_add(c))
    }

    /// SPEC: events summed over the window, divided by the window's seconds.
    pub fn rate_per_second(&self, now_ms: u64) -> f64 {
        self.sum(now_ms) as f64 / (self.window_ms as f64 / 1000.0)
    }

    /// Whether the rate strictly exceeds `max_resets_per_second` (SPEC: "exceed").
    pub fn exceeds(&self, now_ms: u64, max_resets_per_second: f64) -> bool {
        self.rate_per_second(now_ms) > max_resets_per_second
    }

    /// Adds `other` into `self`, slot by slot: same bucket number → counts added; `other` newer →
    /// its slot replaces ours; `other` older → ignored. Returns `false` (and changes nothing) if the
    /// geometries differ. Meant for folding per-worker increments into a shared copy.
    pub fn merge(&mut self, other: &ResetCounter) -> bool {
        if self.window_ms != other.window_ms || self.buckets != other.buckets {
            return false;
        }
        let n = self.buckets as usize;
        let ours = self.epochs.iter_mut().zip(self.counts.iter_mut()).take(n);
        for ((e, c), (&oe, &oc)) in ours.zip(other.epochs.iter().zip(other.counts.iter())) {
            if oe > *e {
                *e = oe;
                *c = oc;
            } else if oe == *e {
                *c = c.saturating_add(oc);
            }
        }
        true
    }

    /// Forgets every event.
    pub fn clear(&mut self) {
        self.epochs = [0; MAX_BUCKETS];
        self.counts = [0; MAX_BUCKETS];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The std implementation `PeerKey::parse` used to be: `SocketAddr`'s parser, then
    /// `[addr%scope]:port` with any scope.
    fn std_peer_parse(address: &str) -> Option<PeerKey> {
        let address = address.trim();
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Some(PeerKey::new(sa.ip(), sa.port()));
        }
        let rest = address.strip_prefix('[')?;
        let (inside, port) = rest.split_once("]:")?;
        let ip = inside.split_once('%').map_or(inside, |(ip, _)| ip);
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port: u16 = port.parse().ok()?;
        Some(PeerKey::new(IpAddr::V6(ip), port))
    }

    fn address_corpus() -> Vec<String> {
        let mut out: Vec<String> = [
            "",
            ":",
            "::",
            ":::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1::8",
            "1:::8",
            "1::2::3",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "1.2.3.4::",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::ffff:1.2.3",
            "::ffff:01.2.3.4",
            "12345::",
            "0:0:0:0:0:0:0:0",
            "fe80::1",
            "FE80::ABCD",
            "fe80::1%eth0",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1.02.3.4",
            "0.0.0.00",
            "1..2.3",
            " 1.2.3.4",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "g::1",
            "::g",
            "1:2:3:4:5:6:7:8:",
            ":1:2:3:4:5:6:7",
            "[::1]",
            "2001:db8:0:0:1:0:0:1",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
            "::ffff:0:1.2.3.4",
            "0:0:0:0:0:ffff:1.2.3.4",
            "1:0:0:2:0:0:0:3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let r = next();
            let mut segs = [0u16; 8];
            for (k, s) in segs.iter_mut().enumerate() {
                // Mostly zeros and small values, so that runs of zero groups are common.
                *s = match (r >> (k * 3)) & 7 {
                    0..=3 => 0,
                    4 => 1,
                    5 => 0xffff,
                    _ => (next() & 0xffff) as u16,
                };
            }
            let v6 = Ipv6Addr::from(segs);
            let v4 = Ipv4Addr::from((next() as u32).to_be_bytes());
            out.push(v6.to_string());
            out.push(v4.to_string());
            out.push(format!(
                "{:x}:{:X}:{}:{}:{}:{}:{}:{}",
                segs[0], segs[1], segs[2], segs[3], segs[4], segs[5], segs[6], segs[7]
            ));
            out.push(format!("::ffff:{v4}"));
            // Mutations: drop, duplicate or replace one character.
            let base = if r & 1 == 0 {
                v6.to_string()
            } else {
                v4.to_string()
            };
            let b = base.as_bytes();
            let at = (next() as usize) % (b.len() + 1);
            let c = b":.0f9a%x "[(next() % 9) as usize];
            let mut m = b.to_vec();
            match next() % 3 {
                0 if at < m.len() => {
                    m.remove(at);
                }
                1 => m.insert(at, c),
                _ if at < m.len() => m[at] = c,
                _ => m.push(c),
            }
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[test]
    fn ip_parsing_matches_std_exactly() {
        for s in address_corpus() {
            assert_eq!(parse_ip(&s), s.parse::<IpAddr>().ok(), "{s:?}");
        }
    }

    #[test]
    fn peer_parse_and_display_match_std_socket_addresses() {
        for ip in address_corpus() {
            for candidate in [
                format!("{ip}:8080"),
                format!("[{ip}]:443"),
                format!("[{ip}%eth0]:80"),
                format!("[{ip}%3]:0080"),
                format!("[{ip}]:+80"),
                format!("{ip}:+80"),
                format!("{ip}:65536"),
                format!(" {ip}:1 "),
            ] {
                let ours = PeerKey::parse(&candidate);
                assert_eq!(ours, std_peer_parse(&candidate), "{candidate:?}");
                if let Some(p) = ours {
                    assert_eq!(p.to_string(), p.0.to_string(), "{candidate:?}");
                }
            }
        }
        let scoped = PeerKey(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::LOCALHOST,
            80,
            0,
            7,
        )));
        assert_eq!(scoped.to_string(), "[::1%7]:80");
        let mapped = PeerKey(SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped(),
            80,
            0,
            0,
        )));
        assert_eq!(mapped.to_string(), mapped.0.to_string());
    }

    fn peer(s: &str) -> PeerKey {
        PeerKey::parse(s).unwrap()
    }

    fn snap(started: u64, now: u64, peers: &[(&str, u64, u64, u64, u64)]) -> Snapshot {
        Snapshot {
            started_at_ms: started,
            now_ms: now,
            peers: peers
                .iter()
                .map(|&(p, resets, refused, timeouts, last_ms)| PeerCounters {
                    peer: peer(p),
                    resets,
                    refused,
                    timeouts,
                    last_ms,
                })
                .collect(),
        }
    }

    fn totals(d: &[PeerDelta]) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = d.iter().map(|d| (d.peer.to_string(), d.total())).collect();
        v.sort();
        v
    }

    #[test]
    fn parses_the_spec_example_body() {
        let body = br#"{"started_at_ms":1000,"now_ms":5000,"peers":[
            {"addr":"10.0.0.5","port":8080,"resets":3,"refused":2,"timeouts":1,"last_ms":4000},
            {"addr":"::1","port":9090,"resets":0,"refused":7,"timeouts":0,"last_ms":4500}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.started_at_ms, 1000);
        assert_eq!(s.now_ms, 5000);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].peer.to_string(), "10.0.0.5:8080");
        assert_eq!(
            (s.peers[0].resets, s.peers[0].refused, s.peers[0].timeouts),
            (3, 2, 1)
        );
        assert_eq!(s.peers[0].last_ms, 4000);
        assert_eq!(s.peers[1].peer.to_string(), "[::1]:9090");
    }

    #[test]
    fn parse_ignores_extra_fields() {
        let body = br#"{"version":2,"started_at_ms":1,"now_ms":2,"host":"x","peers":[
            {"addr":"10.0.0.1","port":80,"resets":1,"refused":0,"timeouts":0,"last_ms":2,"comm":"envoy"}]}"#;
        assert_eq!(parse_snapshot(body).unwrap().peers.len(), 1);
    }

    #[test]
    fn parse_rejects_garbage() {
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"\xff\xfe\x00",
            b"[]",
            b"null",
            br#"{"now_ms":2,"peers":[]}"#,
            br#"{"started_at_ms":1,"now_ms":2}"#,
            br#"{"started_at_ms":-1,"now_ms":2,"peers":[]}"#,
            br#"{"started_at_ms":"1","now_ms":2,"peers":[]}"#,
            br#"{"started_at_ms":1,"now_ms":2,"peers":{}}"#,
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"10.0.0.1","port":70000,"resets":0,"refused":0,"timeouts":0,"last_ms":0}]}"#,
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"10.0.0.1","port":80,"resets":1.5,"refused":0,"timeouts":0,"last_ms":0}]}"#,
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"10.0.0.1","port":80,"resets":1,"refused":0,"last_ms":0}]}"#,
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"10.0.0.1","port":80,"resets":1,"refused":0,"timeouts":0,"last_ms":0}"#,
        ];
        for b in bad {
            assert!(
                matches!(parse_snapshot(b), Err(ResetParseError::Json(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn parse_rejects_a_peer_addr_that_is_not_an_ip() {
        let body = br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"example.com","port":80,"resets":1,"refused":0,"timeouts":0,"last_ms":0}]}"#;
        assert_eq!(
            parse_snapshot(body),
            Err(ResetParseError::BadAddress("example.com".to_string()))
        );
    }

    #[test]
    fn parse_merges_ipv4_mapped_duplicates() {
        let body = br#"{"started_at_ms":1,"now_ms":9,"peers":[
            {"addr":"10.0.0.5","port":80,"resets":1,"refused":2,"timeouts":3,"last_ms":5},
            {"addr":"::ffff:10.0.0.5","port":80,"resets":10,"refused":0,"timeouts":0,"last_ms":7}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].peer.to_string(), "10.0.0.5:80");
        assert_eq!(
            (s.peers[0].resets, s.peers[0].refused, s.peers[0].timeouts),
            (11, 2, 3)
        );
        assert_eq!(s.peers[0].last_ms, 7);
    }

    #[test]
    fn peer_keys_format_like_envoy_upstream_address() {
        assert_eq!(
            PeerKey::new("10.0.0.5".parse().unwrap(), 8080).to_string(),
            "10.0.0.5:8080"
        );
        assert_eq!(
            PeerKey::new("::1".parse().unwrap(), 8080).to_string(),
            "[::1]:8080"
        );
        assert_eq!(
            PeerKey::new("2001:DB8::1".parse().unwrap(), 443).to_string(),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            PeerKey::new("::ffff:10.0.0.5".parse().unwrap(), 1).to_string(),
            "10.0.0.5:1"
        );
    }

    #[test]
    fn normalizes_envoy_upstream_address() {
        assert_eq!(
            normalize_upstream_address("10.0.0.5:8080").as_deref(),
            Some("10.0.0.5:8080")
        );
        assert_eq!(
            normalize_upstream_address("[::1]:8080").as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(
            normalize_upstream_address("[2001:0db8:0000::0001]:80").as_deref(),
            Some("[2001:db8::1]:80")
        );
        assert_eq!(
            normalize_upstream_address("[::ffff:10.0.0.5]:8080").as_deref(),
            Some("10.0.0.5:8080")
        );
        assert_eq!(
            normalize_upstream_address("[fe80::1%eth0]:80").as_deref(),
            Some("[fe80::1]:80")
        );
        assert_eq!(
            normalize_upstream_address(" 10.0.0.5:8080 ").as_deref(),
            Some("10.0.0.5:8080")
        );
        for bad in [
            "",
            "10.0.0.5",
            "::1",
            "host:80",
            "/tmp/envoy.sock",
            "10.0.0.5:99999",
            "[::1]",
        ] {
            assert_eq!(normalize_upstream_address(bad), None, "{bad}");
        }
        // The key from upstream.address equals the key from the sidecar body.
        let s = parse_snapshot(
            br#"{"started_at_ms":1,"now_ms":2,"peers":[{"addr":"::1","port":8080,"resets":1,"refused":0,"timeouts":0,"last_ms":0}]}"#,
        )
        .unwrap();
        assert_eq!(Some(s.peers[0].peer), PeerKey::parse("[::1]:8080"));
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
                peer: peer("10.0.0.1:80"),
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
                    peer: peer(p),
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

    #[test]
    fn rate_is_window_sum_over_window_seconds() {
        let mut c = ResetCounter::new(Duration::from_secs(10), 10);
        c.add(0, 5);
        c.add(3_500, 10);
        c.add(9_999, 5);
        assert_eq!(c.sum(9_999), 20);
        assert!((c.rate_per_second(9_999) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn old_buckets_expire() {
        let mut c = ResetCounter::new(Duration::from_secs(10), 10);
        c.add(500, 7); // bucket 0
        c.add(5_000, 3); // bucket 5
        assert_eq!(c.sum(9_999), 10);
        assert_eq!(c.sum(10_000), 3); // bucket 0 left the window
        assert_eq!(c.sum(15_999), 0);
        // Re-using bucket 0's slot for bucket 10 starts from zero.
        c.add(10_100, 1);
        assert_eq!(c.sum(10_100), 4);
        assert_eq!(c.counts()[0], 1);
    }

    #[test]
    fn stale_events_older_than_the_slot_are_dropped() {
        let mut c = ResetCounter::new(Duration::from_secs(1), 10);
        c.add(1_050, 1); // bucket 10, slot 0
        c.add(50, 100); // bucket 0, slot 0: older, dropped
        assert_eq!(c.sum(1_050), 1);
    }

    #[test]
    fn exceeds_is_strict() {
        let mut c = ResetCounter::new(Duration::from_secs(60), 12);
        c.add(1_000, 300); // 300 / 60 s = 5 per second
        assert!(!c.exceeds(1_000, 5.0));
        assert!(c.exceeds(1_000, 4.99));
        c.add(1_000, 1);
        assert!(c.exceeds(1_000, 5.0));
        assert!(!ResetCounter::new(Duration::from_secs(60), 12).exceeds(0, 0.0));
    }

    #[test]
    fn uneven_buckets_round_width_up_like_the_breaker_window() {
        let c = ResetCounter::new(Duration::from_millis(1000), 3);
        assert_eq!(c.bucket_ms(), 334);
        assert_eq!(c.epochs().len(), 3);
        let c = ResetCounter::new(Duration::from_secs(1), 500);
        assert_eq!(c.bucket_count(), MAX_BUCKETS as u32);
    }

    #[test]
    fn bucket_length_matches_the_breaker_window() {
        let mut cfg = crate::config::Config::default().breaker;
        for (window_ms, buckets) in [(60_000, 12), (1_000, 3), (10_000, 7), (3_600_000, 60)] {
            cfg.window = Duration::from_millis(window_ms);
            cfg.buckets = buckets;
            assert_eq!(
                ResetCounter::for_breaker(&cfg).bucket_ms(),
                crate::window::bucket_ms(&cfg)
            );
        }
    }

    #[test]
    fn merge_adds_same_buckets_and_keeps_newer() {
        let w = Duration::from_secs(10);
        let mut a = ResetCounter::new(w, 10);
        let mut b = ResetCounter::new(w, 10);
        a.add(1_000, 2); // bucket 1
        b.add(1_500, 3); // bucket 1
        a.add(2_000, 4); // bucket 2 (slot 2)
        b.add(12_000, 5); // bucket 12 (slot 2): newer than a's bucket 2
        assert!(a.merge(&b));
        assert_eq!(a.sum(10_999), 2 + 3); // window = buckets 1..=10; bucket 12 is in the future
        assert_eq!(a.sum(12_000), 5); // buckets 3..=12
        assert!(!a.merge(&ResetCounter::new(w, 5)));
    }

    #[test]
    fn parts_round_trip() {
        let mut c = ResetCounter::new(Duration::from_secs(30), 6);
        c.add(100, 1);
        c.add(29_000, 2);
        let d = ResetCounter::from_parts(c.window_ms(), c.bucket_count(), c.epochs(), c.counts())
            .unwrap();
        assert_eq!(c, d);
        assert_eq!(d.sum(29_000), 3);
        assert!(ResetCounter::from_parts(30_000, 6, &[0; 5], &[0; 6]).is_none());
        assert!(ResetCounter::from_parts(30_000, 0, &[], &[]).is_none());
        assert!(ResetCounter::from_parts(30_000, 61, &[0; 61], &[0; 61]).is_none());
    }

    #[test]
    fn buckets_lists_only_live_slots() {
        let mut c = ResetCounter::new(Duration::from_secs(4), 4);
        c.add(0, 1);
        c.add(3_000, 2);
        let live: Vec<(u64, u64)> = c.buckets(4_000).collect();
        assert_eq!(live, [(3, 2)]);
    }
}

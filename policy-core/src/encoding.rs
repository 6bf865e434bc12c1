//! A compact, versioned byte encoding of a key's shared state, for proxy-wasm shared data.
//!
//! Every Envoy worker runs its own VM, so a key's breaker and its merged window live in shared
//! data, changed with compare-and-swap. Shared-data entries cannot be deleted, so the filter uses a
//! fixed set of `max_keys` slots, each named by the key it currently holds. A slot has two entries:
//!
//! - the **state** entry ([`SlotState`]): the key name and the [`BreakerState`]. It is small (tens
//!   of bytes) because every request reads it;
//! - the **window** entry ([`Window`]): the merged buckets, written by the workers' flushes.
//!
//! Layout: a 3-byte header `b'M'`, [`VERSION`], a kind byte, then fields as unsigned LEB128 varints
//! and length-prefixed byte strings. Decoding checks every length against a bound and the end of
//! the input, so garbage returns [`DecodeError`] and never panics or allocates without bound.
//! Encoders enforce the same bounds (longer keys and hosts are cut or skipped, extra probes, bins
//! and buckets dropped), so whatever a worker writes, every worker can read back.

use crate::breaker::{BreakerState, Probe, State};
use crate::keys::MAX_KEY_LEN;
use crate::window::{
    Bucket, Counts, HostCursor, TripReason, Window, FAILURE_CLASSES, MAX_HOSTS_PER_KEY,
};

pub const MAGIC: u8 = b'M';
pub const VERSION: u8 = 3;
const KIND_STATE: u8 = b'S';
const KIND_WINDOW: u8 = b'W';
const KIND_RESETS: u8 = b'R';

/// Bounds that decoding enforces on untrusted input, and encoding on what it writes. Probes: room
/// for the most a configuration allows in flight ([`crate::config::MAX_PROBES`]) with margin;
/// lowering it under that would truncate a valid state.
pub const MAX_ENCODED_PROBES: usize = 4096;
const _: () = assert!(crate::config::MAX_PROBES as usize <= MAX_ENCODED_PROBES);
pub const MAX_BUCKETS: usize = 60;
pub const MAX_BINS_PER_BUCKET: usize = 8192;
const MAX_HOST_BYTES: usize = crate::window::MAX_HOST_LEN;
const MAX_RESET_PEERS: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadHeader,
    UnsupportedVersion(u8),
    WrongKind,
    Truncated,
    VarintOverflow,
    TooLong(&'static str),
    BadValue(&'static str),
    TrailingBytes,
}

impl std::fmt::Display for DecodeError {
    // Spelled out rather than `{:?}`: Debug formatting of strings costs kilobytes of wasm.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadHeader => f.write_str("not a meshbreaker encoding"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported encoding version {v}"),
            DecodeError::WrongKind => f.write_str("wrong kind of entry"),
            DecodeError::Truncated => f.write_str("truncated"),
            DecodeError::VarintOverflow => f.write_str("varint overflow"),
            DecodeError::TooLong(what) => write!(f, "{what}: too long"),
            DecodeError::BadValue(what) => write!(f, "{what}: bad value"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes"),
        }
    }
}

/// The state entry of a slot: which key holds it, and that key's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotState {
    pub key: String,
    pub breaker: BreakerState,
    /// When a worker last saw requests of this key start or complete (ms, refreshed about once a
    /// second per busy worker): a CLOSED key idle for longer than its window may lose the slot.
    pub last_active_ms: u64,
}

/// The sidecar's kernel reset totals as the polling VM publishes them: per peer (`addr:port`),
/// resets + refused + timeouts counted since the filter first saw the sidecar. These totals never go
/// backwards (a sidecar restart is absorbed by the poller), so keys can take deltas of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetTotals {
    /// Bumped on every publish, so readers can skip an unchanged snapshot.
    pub sequence: u64,
    pub peers: Vec<(String, u64)>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn header(out: &mut Vec<u8>, kind: u8) {
    out.clear();
    out.extend_from_slice(&[MAGIC, VERSION, kind]);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], kind: u8) -> Result<Reader<'a>, DecodeError> {
        match buf {
            [m, v, k, ..] => {
                if *m != MAGIC {
                    return Err(DecodeError::BadHeader);
                }
                if *v != VERSION {
                    return Err(DecodeError::UnsupportedVersion(*v));
                }
                if *k != kind {
                    return Err(DecodeError::WrongKind);
                }
                Ok(Reader { buf, pos: 3 })
            }
            _ => Err(DecodeError::BadHeader),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::BadValue(what))
    }

    fn len(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooLong(what));
        }
        Ok(n as usize)
    }

    fn string(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let n = self.len(max, what)?;
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadValue(what))
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

fn reason_code(r: Option<TripReason>) -> u8 {
    match r {
        None => 0,
        Some(TripReason::ErrorRate) => 1,
        Some(TripReason::LatencyP95) => 2,
        Some(TripReason::KernelResets) => 3,
        Some(TripReason::ForcedOpen) => 4,
        Some(TripReason::ConsecutiveFailures) => 5,
        Some(TripReason::Adaptive) => 6,
    }
}

fn reason_from(c: u8) -> Result<Option<TripReason>, DecodeError> {
    Ok(match c {
        0 => None,
        1 => Some(TripReason::ErrorRate),
        2 => Some(TripReason::LatencyP95),
        3 => Some(TripReason::KernelResets),
        4 => Some(TripReason::ForcedOpen),
        5 => Some(TripReason::ConsecutiveFailures),
        6 => Some(TripReason::Adaptive),
        _ => return Err(DecodeError::BadValue("reason")),
    })
}

impl SlotState {
    /// Encodes into `out` (cleared first; reuse it to avoid allocation).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        header(out, KIND_STATE);
        let key = self.key.as_bytes();
        put_bytes(out, key.get(..key.len().min(MAX_KEY_LEN)).unwrap_or(&[]));
        let b = &self.breaker;
        out.push(b.state as u8);
        out.push(reason_code(b.reason));
        put_varint(out, b.open_until_ms);
        put_varint(out, b.sleep_ms);
        put_varint(out, u64::from(b.next_probe_id));
        put_varint(out, u64::from(b.successes));
        put_varint(out, u64::from(b.generation));
        put_varint(out, self.last_active_ms);
        put_varint(out, u64::from(b.shed));
        let probes = b
            .probes
            .get(..b.probes.len().min(MAX_ENCODED_PROBES))
            .unwrap_or(&[]);
        put_varint(out, probes.len() as u64);
        for p in probes {
            put_varint(out, u64::from(p.id));
            put_varint(out, p.started_ms);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48 + self.key.len());
        self.encode_into(&mut v);
        v
    }

    pub fn decode(buf: &[u8]) -> Result<SlotState, DecodeError> {
        let mut r = Reader::new(buf, KIND_STATE)?;
        let key = r.string(MAX_KEY_LEN, "key")?;
        let state = State::from_u8(r.byte()?).ok_or(DecodeError::BadValue("state"))?;
        let reason = reason_from(r.byte()?)?;
        let open_until_ms = r.varint()?;
        let sleep_ms = r.varint()?;
        let next_probe_id = r.u32("next_probe_id")?;
        let successes = r.u32("successes")?;
        let generation = r.u32("generation")?;
        let last_active_ms = r.varint()?;
        let shed = u16::try_from(r.varint()?)
            .ok()
            .filter(|s| *s <= crate::shedding::SHED_ALL)
            .ok_or(DecodeError::BadValue("shed"))?;
        let n = r.len(MAX_ENCODED_PROBES, "probes")?;
        let mut probes = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let id = r.u32("probe id")?;
            probes.push(Probe {
                id,
                started_ms: r.varint()?,
            });
        }
        r.finish()?;
        Ok(SlotState {
            key,
            breaker: BreakerState {
                state,
                reason,
                open_until_ms,
                sleep_ms,
                probes,
                next_probe_id,
                successes,
                generation,
                shed,
            },
            last_active_ms,
        })
    }

    /// Reads only the key name and the circuit state of an encoded state entry, without
    /// decoding (or allocating) the rest: the CLOSED fast path of a request.
    pub fn peek(buf: &[u8]) -> Result<(&[u8], State), DecodeError> {
        let mut r = Reader::new(buf, KIND_STATE)?;
        let n = r.len(MAX_KEY_LEN, "key")?;
        let end = r.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let key = buf.get(r.pos..end).ok_or(DecodeError::Truncated)?;
        r.pos = end;
        let state = State::from_u8(r.byte()?).ok_or(DecodeError::BadValue("state"))?;
        Ok((key, state))
    }
}

fn put_counts(out: &mut Vec<u8>, c: &Counts) {
    put_varint(out, c.samples);
    for f in &c.failures {
        put_varint(out, *f);
    }
    put_varint(out, c.latency_samples);
    put_varint(out, c.slow);
    put_varint(out, c.requests);
    put_varint(out, c.retries);
    put_varint(out, c.kernel_resets);
}

fn read_counts(r: &mut Reader<'_>) -> Result<Counts, DecodeError> {
    let samples = r.varint()?;
    let mut failures = [0u64; FAILURE_CLASSES];
    for f in failures.iter_mut() {
        *f = r.varint()?;
    }
    Ok(Counts {
        samples,
        failures,
        latency_samples: r.varint()?,
        slow: r.varint()?,
        requests: r.varint()?,
        retries: r.varint()?,
        kernel_resets: r.varint()?,
    })
}

impl Window {
    /// Encodes into `out` (cleared first). Empty buckets take one byte; bins are delta-coded.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        header(out, KIND_WINDOW);
        put_varint(out, u64::from(self.generation));
        put_varint(out, self.bucket_ms);
        put_varint(out, self.threshold_us);
        put_varint(out, self.last_used_ms);
        let hosts = || {
            self.hosts
                .iter()
                .filter(|h| !h.host.is_empty() && h.host.len() <= MAX_HOST_BYTES)
                .take(MAX_HOSTS_PER_KEY)
        };
        put_varint(out, hosts().count() as u64);
        for h in hosts() {
            put_bytes(out, h.host.as_bytes());
            put_varint(out, h.seen);
        }
        let buckets = self
            .buckets
            .get(..self.buckets.len().min(MAX_BUCKETS))
            .unwrap_or(&[]);
        if buckets.is_empty() {
            // Never written by the filter (a window has at least one bucket); keep it decodable.
            put_varint(out, 1);
            out.push(0);
            return;
        }
        put_varint(out, buckets.len() as u64);
        for b in buckets {
            if b.counts == Counts::default() && b.bins.is_empty() {
                out.push(0);
                continue;
            }
            out.push(1);
            put_varint(out, b.epoch);
            put_counts(out, &b.counts);
            // Bins are ascending with non-zero counts (merge_bins keeps them so); anything else
            // would not decode, so it is skipped rather than written.
            let mut prev: Option<u64> = None;
            let valid = |prev: Option<u64>, v: u64, c: u64| c > 0 && prev.is_none_or(|p| v > p);
            let mut n = 0usize;
            let mut p = None;
            for (v, c) in &b.bins {
                if n < MAX_BINS_PER_BUCKET && valid(p, *v, *c) {
                    n += 1;
                    p = Some(*v);
                }
            }
            put_varint(out, n as u64);
            let mut written = 0usize;
            for (v, c) in &b.bins {
                if written < n && valid(prev, *v, *c) {
                    put_varint(out, v - prev.unwrap_or(0));
                    put_varint(out, *c);
                    prev = Some(*v);
                    written += 1;
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes into `self`, reusing its allocations (the filter keeps one scratch window per VM).
    pub fn decode_into(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(buf, KIND_WINDOW)?;
        self.generation = r.u32("generation")?;
        self.bucket_ms = r.varint()?;
        self.threshold_us = r.varint()?;
        self.last_used_ms = r.varint()?;
        let nh = r.len(MAX_HOSTS_PER_KEY, "hosts")?;
        self.hosts.clear();
        for _ in 0..nh {
            let host = r.string(MAX_HOST_BYTES, "host")?;
            if host.is_empty() {
                // The encoder never writes one: decoder and encoder hold the same rule.
                return Err(DecodeError::BadValue("host"));
            }
            self.hosts.push(HostCursor {
                host,
                seen: r.varint()?,
            });
        }
        let nb = r.len(MAX_BUCKETS, "buckets")?;
        if nb == 0 {
            return Err(DecodeError::BadValue("buckets"));
        }
        self.buckets.resize(nb, Bucket::default());
        for b in self.buckets.iter_mut() {
            b.bins.clear();
            match r.byte()? {
                0 => {
                    b.epoch = 0;
                    b.counts = Counts::default();
                }
                1 => {
                    b.epoch = r.varint()?;
                    b.counts = read_counts(&mut r)?;
                    let nbins = r.len(MAX_BINS_PER_BUCKET, "bins")?;
                    let mut prev = 0u64;
                    for i in 0..nbins {
                        let d = r.varint()?;
                        if i > 0 && d == 0 {
                            return Err(DecodeError::BadValue("bins not ascending"));
                        }
                        prev = prev
                            .checked_add(d)
                            .ok_or(DecodeError::BadValue("bin value"))?;
                        let c = r.varint()?;
                        if c == 0 {
                            return Err(DecodeError::BadValue("empty bin"));
                        }
                        b.bins.push((prev, c));
                    }
                }
                _ => return Err(DecodeError::BadValue("bucket tag")),
            }
        }
        r.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Window, DecodeError> {
        let mut w = Window::default();
        w.decode_into(buf)?;
        Ok(w)
    }
}

impl ResetTotals {
    /// Encodes what [`ResetTotals::decode`] accepts: peers longer than 64 bytes (never a socket
    /// address, see [`crate::resets::MAX_PEER_BYTES`]) are left out, and at most 16384 peers kept.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, KIND_RESETS);
        put_varint(&mut out, self.sequence);
        let kept = || {
            self.peers
                .iter()
                .filter(|(p, _)| p.len() <= MAX_HOST_BYTES)
                .take(MAX_RESET_PEERS)
        };
        put_varint(&mut out, kept().count() as u64);
        for (p, n) in kept() {
            put_bytes(&mut out, p.as_bytes());
            put_varint(&mut out, *n);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<ResetTotals, DecodeError> {
        let mut r = Reader::new(buf, KIND_RESETS)?;
        let sequence = r.varint()?;
        let n = r.len(MAX_RESET_PEERS, "peers")?;
        let mut peers = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let p = r.string(MAX_HOST_BYTES, "peer")?;
            peers.push((p, r.varint()?));
        }
        r.finish()?;
        Ok(ResetTotals { sequence, peers })
    }

    /// The cumulative total for `peer`, 0 if the sidecar has not seen it.
    pub fn total_for(&self, peer: &str) -> u64 {
        self.peers
            .iter()
            .find(|(p, _)| p == peer)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Outcome, Recorder};
    use proptest::prelude::*;

    fn sample_state() -> SlotState {
        SlotState {
            key: "outbound|8080||reviews.default.svc".into(),
            breaker: BreakerState {
                state: State::HalfOpen,
                reason: Some(TripReason::LatencyP95),
                open_until_ms: 1_700_000_123_456,
                sleep_ms: 60_000,
                probes: vec![
                    Probe {
                        id: 7,
                        started_ms: 1_700_000_100_000,
                    },
                    Probe {
                        id: 8,
                        started_ms: 9,
                    },
                ],
                next_probe_id: 9,
                successes: 1,
                generation: 3,
                shed: 2_500,
            },
            last_active_ms: 1_700_000_100_500,
        }
    }

    fn sample_window() -> Window {
        let mut w = Window::new(12, 2);
        let mut r = Recorder::new(Some(800_000)).unwrap();
        for i in 0..200u64 {
            let o = Outcome {
                http_status: Some(200),
                latency_us: Some(1000 + i * 997),
                attempts: 1 + (i % 3) as u32,
                ..Default::default()
            };
            r.record(40, &o, None).unwrap();
        }
        let mut s = Vec::new();
        w.merge_recorder(&r, 40, &mut s);
        w.last_used_ms = 123;
        w.bucket_ms = 5000;
        w.threshold_us = 800_000;
        w.learn_host("127.0.0.1:8080", 4);
        w.learn_host("[::1]:9", 0);
        w
    }

    #[test]
    fn state_round_trips() {
        let s = sample_state();
        assert_eq!(SlotState::decode(&s.encode()).unwrap(), s);
        let enc = s.encode();
        assert_eq!(
            SlotState::peek(&enc).unwrap(),
            (s.key.as_bytes(), State::HalfOpen)
        );
    }

    #[test]
    fn window_round_trips() {
        let w = sample_window();
        assert_eq!(Window::decode(&w.encode()).unwrap(), w);
    }

    #[test]
    fn reset_totals_round_trip() {
        let t = ResetTotals {
            sequence: 5,
            peers: vec![("127.0.0.1:80".into(), 10), ("[::1]:443".into(), 2)],
        };
        let d = ResetTotals::decode(&t.encode()).unwrap();
        assert_eq!(d, t);
        assert_eq!(d.total_for("[::1]:443"), 2);
        assert_eq!(d.total_for("nope:1"), 0);
    }

    #[test]
    fn reset_totals_encode_only_what_decode_accepts() {
        let long = "1".repeat(65);
        let t = ResetTotals {
            sequence: 1,
            peers: vec![(long, 3), ("[::1]:443".into(), 2)],
        };
        let d = ResetTotals::decode(&t.encode()).unwrap();
        assert_eq!(d.peers, vec![("[::1]:443".to_string(), 2)]);
        let many = ResetTotals {
            sequence: 2,
            peers: (0..MAX_RESET_PEERS + 10)
                .map(|i| (format!("10.0.{}.{}:80", i / 256, i % 256), 1))
                .collect(),
        };
        assert_eq!(
            ResetTotals::decode(&many.encode()).unwrap().peers.len(),
            MAX_RESET_PEERS
        );
    }

    #[test]
    fn closed_state_entry_is_small() {
        let s = SlotState {
            key: "outbound|8080||reviews.default.svc".into(),
            ..Default::default()
        };
        assert!(s.encode().len() <= 3 + 1 + 34 + 10, "{}", s.encode().len());
    }

    #[test]
    fn other_versions_and_kinds_are_rejected() {
        let mut b = sample_state().encode();
        b[1] = 1;
        assert_eq!(
            SlotState::decode(&b),
            Err(DecodeError::UnsupportedVersion(1))
        );
        assert_eq!(
            Window::decode(&sample_state().encode()),
            Err(DecodeError::WrongKind)
        );
        assert_eq!(SlotState::decode(b"xyz"), Err(DecodeError::BadHeader));
        assert_eq!(SlotState::decode(b""), Err(DecodeError::BadHeader));
    }

    #[test]
    fn every_truncation_of_valid_input_is_an_error() {
        let s = sample_state().encode();
        for n in 0..s.len() {
            assert!(SlotState::decode(&s[..n]).is_err(), "prefix {n}");
        }
        let w = sample_window().encode();
        for n in 0..w.len() {
            assert!(Window::decode(&w[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        let mut b = vec![MAGIC, VERSION, KIND_WINDOW, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(Window::decode(&b), Err(DecodeError::TooLong("buckets")));
    }

    #[test]
    fn a_window_entry_with_an_empty_host_is_refused() {
        // Regression (fuzz finding shared_state/window_empty_host_dropped_on_encode): the decoder
        // took a host the encoder never writes, so decode -> encode -> decode was not the identity.
        let mut w = sample_window();
        w.hosts = vec![HostCursor {
            host: "zzzzzz".into(),
            seen: 0,
        }];
        let good = w.encode();
        let at = good.windows(7).position(|x| x == b"\x06zzzzzz").unwrap();
        let mut bad = good[..at].to_vec();
        bad.push(0);
        bad.extend_from_slice(&good[at + 7..]);
        assert!(Window::decode(&good).is_ok());
        assert_eq!(Window::decode(&bad), Err(DecodeError::BadValue("host")));
    }

    #[test]
    fn encoders_never_write_what_decoders_refuse() {
        let mut s = sample_state();
        s.key = "k".repeat(500);
        s.breaker.probes = (0..5000).map(|id| Probe { id, started_ms: 1 }).collect();
        let d = SlotState::decode(&s.encode()).unwrap();
        assert_eq!(d.key.len(), MAX_KEY_LEN);
        assert_eq!(d.breaker.probes.len(), MAX_ENCODED_PROBES);
        let mut w = sample_window();
        w.hosts.push(HostCursor {
            host: "/very/long/pipe/path/".repeat(10),
            seen: 0,
        });
        w.buckets.resize(70, Bucket::default());
        if let Some(b) = w.buckets.get_mut(3) {
            b.counts.samples = 1;
            b.bins = vec![(5, 1), (5, 2), (3, 1), (9, 0), (10, 1)];
        }
        let d = Window::decode(&w.encode()).unwrap();
        assert_eq!(d.buckets.len(), MAX_BUCKETS);
        assert!(d.hosts.iter().all(|h| h.host.len() <= MAX_HOST_BYTES));
        assert_eq!(d.buckets[3].bins, vec![(5, 1), (10, 1)]);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SlotState::decode(&bytes);
            let _ = Window::decode(&bytes);
            let _ = ResetTotals::decode(&bytes);
            let _ = SlotState::peek(&bytes);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), kind in prop_oneof![Just(KIND_STATE), Just(KIND_WINDOW), Just(KIND_RESETS)]) {
            let mut b = vec![MAGIC, VERSION, kind];
            b.extend_from_slice(&bytes);
            let _ = SlotState::decode(&b);
            let _ = Window::decode(&b);
            let _ = ResetTotals::decode(&b);
        }

        #[test]
        fn mutated_encodings_never_panic(pos in 0usize..400, val in any::<u8>()) {
            let mut w = sample_window().encode();
            let i = pos % w.len();
            w[i] = val;
            let _ = Window::decode(&w);
            let mut s = sample_state().encode();
            let j = pos % s.len();
            s[j] = val;
            let _ = SlotState::decode(&s);
        }
    }
}

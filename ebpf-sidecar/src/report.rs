//! Renders a snapshot of the kernel counters as the SPEC's JSON (`/v1/resets`, with serde)
//! and as Prometheus text (`/metrics`). Pure functions over plain data, so the
//! output format is tested without a kernel.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// One peer's counters with `last_ms` already converted to wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    pub addr: IpAddr,
    pub port: u16,
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub last_ms: u64,
}

/// Everything one response shows, read at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub started_at_ms: u64,
    pub now_ms: u64,
    pub max_peers: u32,
    pub events: u64,
    pub update_failures: u64,
    pub read_failures: u64,
    /// Sorted by (addr, port).
    pub peers: Vec<PeerRow>,
}

/// `peer` of SPEC: the address and port exactly as Envoy's `upstream.address` writes them
/// (`10.0.0.5:8080`, `[::1]:8080`), IPv4-mapped IPv6 as IPv4. `std::net`'s `SocketAddr` Display is
/// that form (RFC 5952 for IPv6, no scope or flow info for a fresh `SocketAddrV6`).
pub fn peer(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr.to_canonical(), port).to_string()
}

#[derive(Serialize)]
struct ResetsBody {
    started_at_ms: u64,
    now_ms: u64,
    peers: Vec<PeerBody>,
}

#[derive(Serialize)]
struct PeerBody {
    addr: IpAddr,
    port: u16,
    peer: String,
    resets: u64,
    refused: u64,
    timeouts: u64,
    last_ms: u64,
}

/// `{"started_at_ms":…, "now_ms":…, "peers":[{"addr":…,"port":…,"peer":…,"resets":…,"refused":…,"timeouts":…,"last_ms":…}]}`.
pub fn json(s: &Snapshot) -> String {
    let body = ResetsBody {
        started_at_ms: s.started_at_ms,
        now_ms: s.now_ms,
        peers: s
            .peers
            .iter()
            .map(|p| PeerBody {
                addr: p.addr.to_canonical(),
                port: p.port,
                peer: peer(p.addr, p.port),
                resets: p.resets,
                refused: p.refused,
                timeouts: p.timeouts,
                last_ms: p.last_ms,
            })
            .collect(),
    };
    // Plain integers, addresses and strings: serializing cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(s: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + s.peers.len() * 3 * 80);
    type Family = (&'static str, &'static str, fn(&PeerRow) -> u64);
    let per_peer: [Family; 3] = [
        (
            "meshbreaker_sidecar_resets_total",
            "TCP RSTs received on connected sockets, per remote address and port.",
            |p| p.resets,
        ),
        (
            "meshbreaker_sidecar_refused_total",
            "TCP connects refused (RST or ICMP answer to the SYN), per remote address and port.",
            |p| p.refused,
        ),
        (
            "meshbreaker_sidecar_timeouts_total",
            "TCP connects abandoned in SYN_SENT without an answer, per remote address and port.",
            |p| p.timeouts,
        ),
    ];
    for (name, help, value) in per_peer {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for p in &s.peers {
            let _ = writeln!(
                out,
                "{name}{{addr=\"{}\",port=\"{}\"}} {}",
                p.addr,
                p.port,
                value(p)
            );
        }
    }
    let singles: [(&str, &str, &str, u64); 6] = [
        (
            "meshbreaker_sidecar_start_time_seconds",
            "gauge",
            "Wall-clock time the counters started at, seconds since the Unix epoch.",
            s.started_at_ms / 1000,
        ),
        ("meshbreaker_sidecar_peers", "gauge", "Peers currently held in the kernel map.", s.peers.len() as u64),
        (
            "meshbreaker_sidecar_max_peers",
            "gauge",
            "Capacity of the kernel peer map; the least recently updated peer is evicted beyond it.",
            u64::from(s.max_peers),
        ),
        ("meshbreaker_sidecar_events_total", "counter", "Kernel events counted, all kinds.", s.events),
        (
            "meshbreaker_sidecar_map_update_failures_total",
            "counter",
            "Events lost because a peer could not be inserted into the kernel map.",
            s.update_failures,
        ),
        (
            "meshbreaker_sidecar_read_failures_total",
            "counter",
            "Events lost because the socket state could not be read.",
            s.read_failures,
        ),
    ];
    for (name, kind, help, value) in singles {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            started_at_ms: 1_700_000_000_123,
            now_ms: 1_700_000_005_000,
            max_peers: 16384,
            events: 6,
            peers: vec![
                PeerRow {
                    addr: "10.0.0.5".parse().unwrap(),
                    port: 8080,
                    resets: 1,
                    refused: 2,
                    timeouts: 3,
                    last_ms: 1_700_000_004_000,
                },
                PeerRow {
                    addr: "fd00::1".parse().unwrap(),
                    port: 443,
                    resets: 0,
                    refused: 0,
                    timeouts: 0,
                    last_ms: 1_700_000_001_000,
                },
            ],
            ..Default::default()
        }
    }

    /// The `/v1/resets` body both sides test against: this crate writes it, policy-core's
    /// `resets::parse_snapshot` (the filter's poller) reads it.
    const FIXTURE: &str = include_str!("../../policy-core/fixtures/v1_resets.json");

    #[test]
    fn json_has_spec_shape() {
        assert_eq!(json(&sample()), FIXTURE.trim_end());
        assert_eq!(
            json(&Snapshot::default()),
            "{\"started_at_ms\":0,\"now_ms\":0,\"peers\":[]}"
        );
    }

    #[test]
    fn peer_is_envoy_upstream_address_form() {
        let p = |a: &str, port| peer(a.parse().unwrap(), port);
        assert_eq!(p("10.0.0.5", 8080), "10.0.0.5:8080");
        assert_eq!(p("::1", 8080), "[::1]:8080");
        assert_eq!(p("2001:0DB8:0:0::1", 443), "[2001:db8::1]:443");
        assert_eq!(p("::ffff:10.0.0.5", 80), "10.0.0.5:80");
        assert_eq!(p("fe80::1", 1), "[fe80::1]:1");
    }

    #[test]
    fn json_prints_ipv4_mapped_peers_as_ipv4() {
        let mut s = sample();
        s.peers.truncate(1);
        s.peers[0].addr = "::ffff:10.0.0.5".parse().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(v["peers"][0]["addr"], "10.0.0.5");
        assert_eq!(v["peers"][0]["peer"], "10.0.0.5:8080");
    }

    #[test]
    fn prometheus_labels_each_peer_and_declares_types() {
        let text = prometheus(&sample());
        assert!(text.contains("# TYPE meshbreaker_sidecar_resets_total counter\n"));
        assert!(
            text.contains("meshbreaker_sidecar_refused_total{addr=\"10.0.0.5\",port=\"8080\"} 2\n")
        );
        assert!(
            text.contains("meshbreaker_sidecar_timeouts_total{addr=\"fd00::1\",port=\"443\"} 0\n")
        );
        assert!(text.contains("meshbreaker_sidecar_peers 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}

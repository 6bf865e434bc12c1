//! The types shared with the kernel, mirroring `bpf/meshbreaker.h` field for field.
//!
//! The C header is the single definition; these `#[repr(C)]` structs exist so aya
//! can copy map keys and values in and out. `map_layouts_match_rust_types` checks
//! the sizes against the maps of the compiled object, so a change on one side
//! without the other fails the tests instead of reading garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The compiled eBPF object (built by build.rs from bpf/meshbreaker.bpf.c).
pub static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshbreaker.bpf.o"));

/// Per-peer counters, `struct mb_peer_key` -> `struct mb_peer_counts`.
pub const MAP_PEERS: &str = "MB_PEERS";
/// Program health, one `struct mb_stats` at index 0.
pub const MAP_STATS: &str = "MB_STATS";
/// Default capacity of [`MAP_PEERS`] (`MB_DEFAULT_MAX_PEERS`).
pub const DEFAULT_MAX_PEERS: u32 = 16384;

/// (program name in the object, tracepoint category, tracepoint name).
/// Why these two and not `sock:inet_sk_error_report`: see bpf/meshbreaker.bpf.c.
pub const TRACEPOINTS: [(&str, &str, &str); 2] = [
    ("mb_tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("mb_inet_sock_set_state", "sock", "inet_sock_set_state"),
];

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `struct mb_peer_key`: remote address (IPv4 in the first 4 bytes) and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
}

// SAFETY: repr(C), only integers, no padding (16 + 2 + 2 bytes).
unsafe impl aya::Pod for PeerKey {}

impl PeerKey {
    /// The remote address, or None for a family the program never writes.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
    }
}

/// `struct mb_peer_counts`: cumulative since the program was loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounts {
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last counted event.
    pub last_ns: u64,
}

// SAFETY: repr(C), four u64, no padding.
unsafe impl aya::Pod for PeerCounts {}

/// `struct mb_stats`: how the program itself is doing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub update_failures: u64,
    pub read_failures: u64,
    pub reserved: u64,
}

// SAFETY: repr(C), four u64, no padding.
unsafe impl aya::Pod for Stats {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn map_layouts_match_rust_types() {
        let obj = aya_obj::Object::parse(PROGRAM).unwrap();
        let peers = &obj.maps[MAP_PEERS];
        assert_eq!(peers.key_size() as usize, size_of::<PeerKey>());
        assert_eq!(peers.value_size() as usize, size_of::<PeerCounts>());
        assert_eq!(peers.max_entries(), DEFAULT_MAX_PEERS);
        let stats = &obj.maps[MAP_STATS];
        assert_eq!(stats.key_size() as usize, size_of::<u32>());
        assert_eq!(stats.value_size() as usize, size_of::<Stats>());
        assert_eq!(size_of::<PeerKey>(), 20);
        assert_eq!(size_of::<PeerCounts>(), 32);
    }

    #[test]
    fn object_has_one_program_per_tracepoint() {
        let obj = aya_obj::Object::parse(PROGRAM).unwrap();
        for (name, _, _) in TRACEPOINTS {
            assert!(obj.programs.contains_key(name), "missing program {name}");
        }
    }

    #[test]
    fn peer_key_renders_both_families() {
        let mut v4 = PeerKey {
            family: AF_INET,
            port: 80,
            ..Default::default()
        };
        v4.addr[..4].copy_from_slice(&[10, 0, 0, 5]);
        assert_eq!(v4.ip().unwrap().to_string(), "10.0.0.5");
        let v6 = PeerKey {
            addr: Ipv6Addr::LOCALHOST.octets(),
            family: AF_INET6,
            port: 80,
        };
        assert_eq!(v6.ip().unwrap().to_string(), "::1");
        assert_eq!(PeerKey { family: 99, ..v4 }.ip(), None);
    }
}

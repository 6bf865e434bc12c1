//! Peer addresses as the sidecar names them and Envoy's `upstream.address` gives them,
//! `policy_core::resets::is_peer_address`.
//!
//! The filter attributes kernel resets by matching the sidecar's `peer` string against
//! `upstream.address`, and only strings that pass `is_peer_address` enter its attribution table and
//! its logs. Two ways to get this wrong, both checked: rejecting a real address (every socket
//! address std prints, IPv4-mapped shown as IPv4 as Envoy does, must pass: otherwise that upstream
//! silently loses the kernel signal), and accepting text that is not one (anything accepted is at
//! most 64 bytes — what the shared-state encoding holds — of address characters only).
//! The input is read twice: its first 19 bytes as a socket address, and the whole as a string.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use policy_core::resets::is_peer_address;

fn address_from(data: &[u8]) -> Option<SocketAddr> {
    let (&kind, rest) = data.split_first()?;
    let port = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let ip = if kind % 2 == 0 {
        let b: [u8; 4] = rest.get(2..6)?.try_into().ok()?;
        IpAddr::V4(Ipv4Addr::from(b))
    } else {
        let b: [u8; 16] = rest.get(2..18)?.try_into().ok()?;
        // Envoy shows IPv4-mapped IPv6 peers as IPv4, and so does the sidecar.
        IpAddr::V6(Ipv6Addr::from(b)).to_canonical()
    };
    Some(SocketAddr::new(ip, port))
}

fuzz_target!(|data: &[u8]| {
    if let Some(addr) = address_from(data) {
        let text = addr.to_string();
        assert!(is_peer_address(&text), "a real address is rejected: {text}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if is_peer_address(text) {
            assert!(text.len() <= 64, "{} bytes accepted", text.len());
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b"[]:.".contains(&b)),
                "non-address characters accepted: {text:?}"
            );
        }
    }
});

//! Envoy `upstream.address` strings as the filter reads them, `PeerKey::parse` and
//! `normalize_upstream_address`, against the standard library.
//!
//! policy-core parses and prints socket addresses by hand (std's generic parser costs the wasm
//! filter kilobytes) and promises std's exact rules. The address comes from Envoy, but for
//! internal listeners, pipes and custom resolvers it is whatever the operator configured.
//! Checked: whatever the hand parser accepts, std accepts as the same address (the filter never
//! attributes kernel resets to a peer std would not name), and the printed form is std's.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use policy_core::resets::{normalize_upstream_address, PeerKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(peer) = PeerKey::parse(text) else {
        return;
    };
    // The hand parser drops any `%scope`; std accepts only numeric scopes, so compare without it.
    let trimmed = text.trim();
    let unscoped = match (trimmed.find('%'), trimmed.find(']')) {
        (Some(p), Some(b)) if p < b => format!("{}{}", &trimmed[..p], &trimmed[b..]),
        _ => trimmed.to_string(),
    };
    let std_addr: SocketAddr = unscoped
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} accepted by PeerKey::parse, rejected by std: {e}"));
    let canonical = match std_addr.ip().to_canonical() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), std_addr.port()),
        IpAddr::V6(v6) => SocketAddr::new(IpAddr::V6(v6), std_addr.port()),
    };
    assert_eq!(peer.ip(), canonical.ip(), "{text:?}: ip");
    assert_eq!(peer.port(), canonical.port(), "{text:?}: port");
    assert_eq!(
        peer.to_string(),
        canonical.to_string(),
        "{text:?}: printed form"
    );
    assert_eq!(
        normalize_upstream_address(text),
        Some(canonical.to_string())
    );
});

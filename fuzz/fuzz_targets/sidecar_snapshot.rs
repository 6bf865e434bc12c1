//! The sidecar's `GET /v1/resets` body parser, `policy_core::resets::parse_snapshot`, and the
//! delta tracker fed with what it accepts.
//!
//! The body comes over the network from a process the filter does not control (a restarted, older
//! or impostor sidecar). Beyond "never panics": an accepted snapshot names every peer once, each an
//! address `is_peer_address` accepts (so nothing else reaches the attribution table or the logs);
//! the first snapshot is a baseline (no deltas); the same snapshot seen twice yields no events, and
//! neither does a restart (new `started_at_ms`); the tracker stays within its peer bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::resets::{is_peer_address, parse_snapshot, ResetTracker};

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = parse_snapshot(data) else {
        return;
    };
    for (i, p) in snap.peers.iter().enumerate() {
        assert!(is_peer_address(&p.peer), "peer {:?} accepted", p.peer);
        assert!(
            snap.peers.iter().skip(i + 1).all(|q| q.peer != p.peer),
            "peer {} listed twice",
            p.peer
        );
    }
    let mut tracker = ResetTracker::new(64);
    assert!(
        tracker.observe(&snap).is_empty(),
        "the first snapshot is a baseline"
    );
    assert!(
        tracker.observe(&snap).is_empty(),
        "an unchanged snapshot has no events"
    );
    assert!(tracker.peer_count() <= 64);
    let mut restarted = snap.clone();
    restarted.started_at_ms = restarted.started_at_ms.wrapping_add(1);
    assert!(
        tracker.observe(&restarted).is_empty(),
        "a restart is a new baseline"
    );
});

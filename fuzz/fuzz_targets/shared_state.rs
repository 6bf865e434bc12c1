//! The shared-state decoders in `policy_core::encoding`: slot state, window, reset totals.
//!
//! Every worker VM reads these entries from Envoy's shared data on the request path and trusts
//! nothing about them: another version of the filter, another plugin with the same name, or a bug
//! may have written them. The first input byte picks the decoder; the rest is the entry.
//! Beyond "never panics": an accepted entry re-encodes to one that decodes to the same value, a
//! scratch window reused across decodes (as the filter does) gives what a fresh decode gives, and
//! the arithmetic the engine then runs on a decoded window (totals, P95, the trip decision, clearing
//! future buckets after a clock step) survives hostile counts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::config::BreakerConfig;
use policy_core::encoding::{ResetTotals, SlotState};
use policy_core::window::{trip_reason, Window};

/// Empty buckets keep no epoch in the encoding (it is meaningless while they are empty).
fn normalized(mut w: Window) -> Window {
    for b in &mut w.buckets {
        if b.counts == Default::default() && b.bins.is_empty() {
            b.epoch = 0;
        }
    }
    w
}

fn slot_state(data: &[u8]) {
    let peeked = SlotState::peek(data).map(|(k, st)| (k.to_vec(), st));
    if let Ok(s) = SlotState::decode(data) {
        assert_eq!(
            peeked,
            Ok((s.key.as_bytes().to_vec(), s.breaker.state)),
            "peek disagrees with decode"
        );
        let again = SlotState::decode(&s.encode()).expect("re-encoded state must decode");
        assert_eq!(again, s);
    }
}

fn window(data: &[u8]) {
    // The filter keeps one scratch window per VM and decodes into it: whatever a previous entry
    // left in it must not leak into the next decode.
    // The first byte says how many of the following bytes go to the first decode.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
    let mut scratch = Window::default();
    let _ = scratch.decode_into(first);
    let fresh = Window::decode(second);
    let reused = scratch.decode_into(second).map(|()| scratch.clone());
    assert_eq!(fresh.is_ok(), reused.is_ok(), "reuse changes the verdict");
    let Ok(w) = fresh else { return };
    assert_eq!(
        reused.as_ref(),
        Ok(&w),
        "a reused scratch window decodes differently"
    );
    let again = Window::decode(&w.encode()).expect("re-encoded window must decode");
    assert_eq!(again, normalized(w.clone()));

    let now_epoch = w.buckets.iter().map(|b| b.epoch).max().unwrap_or(0);
    let mut bins = Vec::new();
    let totals = w.totals(now_epoch);
    let _ = w.p95_us(now_epoch, &mut bins);
    let _ = totals.error_rate();
    let _ = trip_reason(&totals, &BreakerConfig::default());
    // What a reader does after a clock step back: drop buckets from the future, then read.
    let mut stepped = w.clone();
    stepped.clear_future(now_epoch / 2);
    let _ = stepped.totals(now_epoch / 2);
    let _ = stepped.p95_us(now_epoch / 2, &mut bins);
}

fn reset_totals(data: &[u8]) {
    if let Ok(t) = ResetTotals::decode(data) {
        let again = ResetTotals::decode(&t.encode()).expect("re-encoded totals must decode");
        assert_eq!(again, t);
        if let Some((p, _)) = t.peers.first() {
            let _ = t.total_for(p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, entry)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => slot_state(entry),
        1 => window(entry),
        _ => reset_totals(entry),
    }
});

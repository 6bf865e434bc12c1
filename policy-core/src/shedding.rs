//! Adaptive shedding: how much of its traffic an open circuit rejects (`shedding: adaptive`).
//!
//! A binary breaker that trips at a 30% error rate rejects everything, even when Envoy's retries
//! would have turned most failures into successes: on an upstream that fails half its requests
//! for reasons other than load, clients see more errors with it than without it. Adaptive
//! shedding rejects only as much as the outcomes clients see call for.
//!
//! ## The formula
//!
//! Google SRE's client-side throttling (the same rule as Envoy's admission control, with
//! `K = 1 / sr_threshold`), judged on what clients saw after Envoy's retries:
//!
//! ```text
//! P = max(0, (requests − accepts / s) / (requests + 1))
//! ```
//!
//! over the key's window, where `requests` are the client requests that completed, `accepts` those
//! whose final outcome was not a failure, and `s` is `shedding_success_rate` (0.5 by default, SRE's
//! `K = 2`). So nothing is shed while clients see at least `s` of their requests succeed; the share
//! grows as the success rate falls below it, and reaches 1 — a binary OPEN with its sleep window
//! and probes — when nothing succeeds (`accepts` = 0), so a hard-down upstream is still kept away.
//!
//! Shedding starts at [`ENTER`] and stops at 0, so a success rate hovering at `s` does not flap the
//! state; in between, the share is written back only when it moved by [`STEP`].

use crate::window::{Counts, FailureClass};

/// The share (in 1/10000) of a circuit that rejects every request:
/// [`crate::breaker::BreakerState::shed`] at a binary OPEN.
pub const SHED_ALL: u16 = 10_000;

/// The share (in 1/10000) at which a CLOSED circuit starts shedding: 5%.
pub const ENTER: u16 = 500;
/// The smallest change of the share (in 1/10000) worth a write: 1%.
pub const STEP: u16 = 100;

/// Client requests in the window whose final outcome failed (their retried attempts are not
/// client outcomes).
pub fn client_failures(totals: &Counts) -> u64 {
    totals
        .failed()
        .saturating_sub(totals.failures[FailureClass::RetriedAttempt as usize])
}

/// The rejection probability in 1/10000 for a window's `totals` and a target success rate `s`:
/// 0 at or above the target, [`SHED_ALL`] when nothing succeeded, monotone in between (and below
/// [`SHED_ALL`] while anything succeeds).
pub fn probability(totals: &Counts, s: f64) -> u16 {
    let requests = totals.requests;
    if requests == 0 {
        return 0;
    }
    let accepts = requests.saturating_sub(client_failures(totals).min(requests));
    if accepts == 0 {
        return SHED_ALL;
    }
    let s = if s > 0.0 && s <= 1.0 { s } else { 0.5 };
    let p = (requests as f64 - accepts as f64 / s) / (requests as f64 + 1.0);
    let p = (p.clamp(0.0, 1.0) * f64::from(SHED_ALL)).floor();
    (p as u16).min(SHED_ALL - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, client_failed: u64, retried: u64) -> Counts {
        let mut c = Counts {
            requests,
            samples: requests + retried,
            ..Counts::default()
        };
        c.failures[FailureClass::HttpStatus as usize] = client_failed;
        c.failures[FailureClass::RetriedAttempt as usize] = retried;
        c
    }

    #[test]
    fn nothing_is_shed_at_or_above_the_target_success_rate() {
        assert_eq!(probability(&window(100, 50, 0), 0.5), 0);
        assert_eq!(probability(&window(100, 10, 0), 0.5), 0);
        // Retried attempts are not what clients saw: half the attempts failed, but after retries
        // 87.5% of the clients succeeded.
        assert_eq!(probability(&window(800, 100, 600), 0.5), 0);
        assert_eq!(probability(&Counts::default(), 0.5), 0);
    }

    #[test]
    fn everything_is_shed_when_nothing_succeeds() {
        assert_eq!(probability(&window(20, 20, 40), 0.5), SHED_ALL);
        assert_eq!(probability(&window(1, 1, 0), 0.9), SHED_ALL);
    }

    #[test]
    fn the_share_follows_sres_formula_below_the_target() {
        // 100 requests, 20 accepted, K = 2: (100 - 40) / 101.
        let p = probability(&window(100, 80, 0), 0.5);
        assert_eq!(p, ((60.0 / 101.0) * 10_000.0_f64).floor() as u16);
        // A stricter target sheds more of the same window.
        assert!(probability(&window(100, 80, 0), 0.7) > p);
    }
}

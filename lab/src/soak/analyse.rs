//! The soak's verdicts, from what it measured ([`Summary`]): what an operator relies on, each a
//! failure when it did not hold.

use std::collections::BTreeMap;

use super::sampling::*;
use super::schedule::*;
use super::summary::*;

/// Envoy's RSS after the warm-up may grow by this much.
pub(super) const RSS_GROWTH_LIMIT: f64 = 0.05;

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Analysis {
    /// RSS after the warm-up: its first sample, the last, the smallest and the largest.
    pub(super) rss_base: u64,
    pub(super) rss_end: u64,
    pub(super) rss_min: u64,
    pub(super) rss_max: u64,
    /// `rss_end / rss_base - 1` (NaN without samples after the warm-up).
    pub(super) growth: f64,
    /// `wasm.*reload*` and `wasm.*fail*` at the end.
    pub(super) vm_failures: u64,
    /// The `wasm.*` stats of the first sample and of the last.
    pub(super) first_wasm: BTreeMap<String, u64>,
    pub(super) last: Sample,
    /// Every assertion that did not hold; empty when everything held.
    pub(super) failures: Vec<String>,
}

pub(super) fn analyse(s: &Summary) -> Analysis {
    let mut failures = Vec::new();
    let last = s.samples.last().cloned().unwrap_or_default();
    let warm: Vec<&Sample> = s.samples.iter().filter(|x| x.t >= s.warmup_s).collect();
    let rss_base = warm.first().map_or(0, |x| x.rss);
    let rss_end = last.rss;
    let rss_max = warm.iter().map(|x| x.rss).max().unwrap_or(0);
    let rss_min = warm.iter().map(|x| x.rss).min().unwrap_or(0);
    let growth = if rss_base > 0 {
        rss_end as f64 / rss_base as f64 - 1.0
    } else {
        f64::NAN
    };
    if growth.is_nan() || growth > RSS_GROWTH_LIMIT {
        failures.push(format!(
            "RSS grew {:.1}% after the warm-up ({} → {} bytes), over {:.0}%",
            growth * 100.0,
            rss_base,
            rss_end,
            RSS_GROWTH_LIMIT * 100.0
        ));
    }
    let first_wasm = s
        .samples
        .first()
        .map(|x| x.wasm.clone())
        .unwrap_or_default();
    let vm_failures: u64 = last
        .wasm
        .iter()
        .filter(|(k, _)| k.contains("reload") || k.contains("fail"))
        .filter(|(k, _)| !k.contains("remote_load"))
        .map(|(_, v)| *v)
        .sum();
    if vm_failures > 0 || s.traps > 0 {
        failures.push(format!(
            "wasm VMs failed: {vm_failures} in wasm.*reload*/fail* stats, {} trap/panic lines in the log",
            s.traps
        ));
    }
    if !s.explained.unexplained.is_empty() {
        failures.push(format!(
            "unexplained responses in the access log: {:?}",
            s.explained.unexplained
        ));
    }
    if s.seen.unexplained > 0 || s.seen.transport_errors > 0 {
        failures.push(format!(
            "the checking client saw {} unexplained responses and {} transport errors: {:?}",
            s.seen.unexplained, s.seen.transport_errors, s.seen.examples
        ));
    }
    if s.lds_updates < RELOADS.len() as u64 {
        failures.push(format!(
            "Envoy applied {} LDS updates, {} were written",
            s.lds_updates,
            RELOADS.len()
        ));
    }
    if !s.sidecar_back {
        failures.push("the filter never logged the sidecar coming back".into());
    }
    // The breaker kept working: it opened after each reload (the failing, slow and resetting
    // phases all trip it), and it is closed again at the end of a healthy stretch.
    let opened_since = |t0: f64| -> u64 {
        let before = s
            .samples
            .iter()
            .rfind(|x| x.t <= t0)
            .and_then(|x| x.filter.get("transitions_total.open").copied())
            .unwrap_or(0);
        last.filter
            .get("transitions_total.open")
            .copied()
            .unwrap_or(0)
            .saturating_sub(before)
    };
    for (i, f) in RELOADS.iter().enumerate() {
        let t0 = f * s.asked_s;
        if opened_since(t0) == 0 {
            failures.push(format!(
                "the breaker never opened after reload {} (t = {t0:.0}s)",
                i + 1
            ));
        }
    }
    if last
        .filter
        .get("transitions_total.closed")
        .copied()
        .unwrap_or(0)
        == 0
    {
        failures.push("the breaker never closed again".into());
    }
    if !s.envoy_alive {
        failures.push("Envoy is not running at the end".into());
    }
    Analysis {
        rss_base,
        rss_end,
        rss_min,
        rss_max,
        growth,
        vm_failures,
        first_wasm,
        last,
        failures,
    }
}

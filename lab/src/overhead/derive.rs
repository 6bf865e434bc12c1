//! Turning raw measurements into what the report and the picture show: per-round ratios and
//! differences between contenders (taken within each round, then summarised, so drift in the
//! machine's load between rounds cancels), the profile in µs per request, and the split of
//! meshbreaker's CPU gap to the trivial filter.

use std::collections::BTreeMap;

use super::run::{Results, Sample, ENVOY_BUCKET, WASM_BUCKET};
use super::MAIN;
use meshbreaker_harness::median;

/// Per-round pairs `f(a[r], b[r])`.
pub(super) fn paired(a: &[Sample], b: &[Sample], f: impl Fn(&Sample, &Sample) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(x, y)).collect()
}

/// The derived figures for one concurrency.
pub(super) struct Derived {
    pub(super) thr_vs_none: BTreeMap<String, Vec<f64>>,
    pub(super) thr_vs_trivial: BTreeMap<String, Vec<f64>>,
    pub(super) thr_vs_native: BTreeMap<String, Vec<f64>>,
    /// Throughput per proxy core (1 / CPU per request) relative to no filter, trivial, native:
    /// what the closed loop would show if the proxy's core were always the bottleneck.
    pub(super) cap_vs_none: BTreeMap<String, Vec<f64>>,
    pub(super) cap_vs_trivial: BTreeMap<String, Vec<f64>>,
    pub(super) cap_vs_native: BTreeMap<String, Vec<f64>>,
    /// Added CPU per request over no filter, closed loop (saturated).
    pub(super) cpu_added: BTreeMap<String, Vec<f64>>,
    /// Added CPU per request over no filter at the fixed rate (every contender in the same regime).
    pub(super) cpu_added_fixed: BTreeMap<String, Vec<f64>>,
}

pub(super) fn derive(m: &BTreeMap<String, Vec<Sample>>) -> Derived {
    let empty = Vec::new();
    let get = |l: &str| m.get(l).unwrap_or(&empty);
    let mut d = Derived {
        thr_vs_none: BTreeMap::new(),
        thr_vs_trivial: BTreeMap::new(),
        thr_vs_native: BTreeMap::new(),
        cap_vs_none: BTreeMap::new(),
        cap_vs_trivial: BTreeMap::new(),
        cap_vs_native: BTreeMap::new(),
        cpu_added: BTreeMap::new(),
        cpu_added_fixed: BTreeMap::new(),
    };
    for l in MAIN {
        let s = get(l);
        d.thr_vs_none
            .insert(l.to_string(), paired(s, get("none"), |x, y| x.rps / y.rps));
        d.thr_vs_trivial.insert(
            l.to_string(),
            paired(s, get("trivial"), |x, y| x.rps / y.rps),
        );
        d.thr_vs_native.insert(
            l.to_string(),
            paired(s, get("native"), |x, y| x.rps / y.rps),
        );
        for (map, base) in [
            (&mut d.cap_vs_none, "none"),
            (&mut d.cap_vs_trivial, "trivial"),
            (&mut d.cap_vs_native, "native"),
        ] {
            map.insert(
                l.to_string(),
                paired(s, get(base), |x, y| y.cpu_us / x.cpu_us),
            );
        }
        d.cpu_added.insert(
            l.to_string(),
            paired(s, get("none"), |x, y| x.cpu_us - y.cpu_us),
        );
        d.cpu_added_fixed.insert(
            l.to_string(),
            paired(s, get("none"), |x, y| x.cpu_us_fixed - y.cpu_us_fixed),
        );
    }
    d
}

/// Median of one contender's series in a derived map (0 if absent).
pub(super) fn med(m: &BTreeMap<String, Vec<f64>>, l: &str) -> f64 {
    median(m.get(l).map_or(&[][..], |v| v))
}

pub(super) fn col(
    m: &BTreeMap<String, Vec<Sample>>,
    l: &str,
    f: impl Fn(&Sample) -> f64,
) -> Vec<f64> {
    m.get(l)
        .map(|v| v.iter().map(f).collect())
        .unwrap_or_default()
}

/// A profiled listener's µs per request in one bucket (its share times the CPU per request
/// measured during the profile); `None` when the listener was not profiled.
pub(super) fn profile_us(res: &Results, listener: &str, bucket: &str) -> Option<f64> {
    res.profile
        .iter()
        .find(|p| p.listener == listener)
        .map(|p| p.shares.get(bucket).copied().unwrap_or(0.0) * p.cpu_us)
}

/// A profiled listener's CPU per request during the profile.
pub(super) fn profile_cpu(res: &Results, listener: &str) -> Option<f64> {
    res.profile
        .iter()
        .find(|p| p.listener == listener)
        .map(|p| p.cpu_us)
}

/// The dynamic module's CPU per request over admission_control's: the median of the rounds'
/// differences (`--concurrency 1`, closed loop); `None` without both.
pub(super) fn native_over_admission_control(m: &BTreeMap<String, Vec<Sample>>) -> Option<f64> {
    let (mbn, ac) = (m.get("mb_native")?, m.get("native")?);
    Some(median(&paired(mbn, ac, |x, y| x.cpu_us - y.cpu_us)))
}

/// Meshbreaker's CPU gap to the trivial filter, split (`--concurrency 1`, closed loop; medians
/// of the added CPU per request over no filter, µs).
pub(super) struct Gap {
    pub(super) meshbreaker: f64,
    /// The trivial filter making exactly meshbreaker's host calls, no logic.
    pub(super) floor: f64,
    pub(super) trivial: f64,
    /// The profile's meshbreaker − trivial in Envoy's C++ and in the VM's code.
    pub(super) envoy: Option<f64>,
    pub(super) wasm: Option<f64>,
    /// A typical data-carrying host call (property, header, shared data): what a crossing costs.
    pub(super) typical_call: f64,
}

pub(super) fn gap(res: &Results, d: &Derived) -> Gap {
    let diff = |b: &str| Some(profile_us(res, "mb_default", b)? - profile_us(res, "trivial", b)?);
    Gap {
        meshbreaker: med(&d.cpu_added, "mb_default"),
        floor: med(&d.cpu_added, "floor"),
        trivial: med(&d.cpu_added, "trivial"),
        envoy: diff(ENVOY_BUCKET),
        wasm: diff(WASM_BUCKET),
        typical_call: ["cluster", "header", "status", "shared"]
            .iter()
            .map(|k| med(&res.host_calls, k))
            .sum::<f64>()
            / 4.0,
    }
}

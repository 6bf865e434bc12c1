//! Samples of Envoy's memory and the filter's counters over the soak, and their CSV.

use crate::util::Result;
use meshbreaker_harness::Envoy;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::client::*;
use super::schedule::*;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Sample {
    pub(super) t: f64,
    pub(super) phase: String,
    pub(super) rss: u64,
    pub(super) wasm: BTreeMap<String, u64>,
    /// meshbreaker metrics of `KEY`: `requests_total.<decision>`, `transitions_total.<to>`, `state`, ...
    pub(super) filter: BTreeMap<String, u64>,
    pub(super) checker_responses: u64,
    pub(super) checker_non_2xx: u64,
}

pub(super) fn stats(envoy: &Envoy) -> Result<Vec<(String, u64)>> {
    let body = envoy.admin_get("/stats")?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// `wasmcustom.key=.=demo;.;decision=.=allowed;.;meshbreaker_requests_total` → `requests_total.allowed`.
pub(super) fn filter_metric(name: &str) -> Option<String> {
    let rest = name.strip_prefix(&format!("wasmcustom.key=.={KEY};.;"))?;
    let (tag, metric) = match rest.split_once(";.;") {
        Some((tag, metric)) => (tag.split_once("=.=").map(|(_, v)| v), metric),
        None => (None, rest),
    };
    let metric = metric.strip_prefix("meshbreaker_")?;
    Some(match tag {
        Some(t) => format!("{metric}.{t}"),
        None => metric.to_string(),
    })
}

pub(super) fn sample(envoy: &Envoy, t: f64, phase: Phase, seen: &Seen) -> Result<Sample> {
    let mut s = Sample {
        t,
        phase: phase.name().to_string(),
        rss: envoy.rss_bytes()?,
        checker_responses: seen.responses,
        checker_non_2xx: seen.responses - seen.ok,
        ..Default::default()
    };
    for (k, v) in stats(envoy)? {
        if k.starts_with("wasm.") {
            s.wasm.insert(k, v);
        } else if let Some(m) = filter_metric(&k) {
            s.filter.insert(m, v);
        }
    }
    Ok(s)
}

pub(super) fn write_samples(path: &Path, samples: &[Sample]) -> Result {
    let mut s = String::from(
        "t_s,phase,rss_bytes,state,allowed,rejected,probe,opened,half_opened,closed,kernel_resets,vm_count,vms_created,vms_active,checker_responses,checker_non_2xx\n",
    );
    for x in samples {
        let f = |k: &str| x.filter.get(k).copied().unwrap_or(0);
        let w = |k: &str| x.wasm.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            x.t,
            x.phase,
            x.rss,
            f("state"),
            f("requests_total.allowed"),
            f("requests_total.rejected"),
            f("requests_total.probe"),
            f("transitions_total.open"),
            f("transitions_total.half_open"),
            f("transitions_total.closed"),
            f("kernel_resets_total"),
            w("wasm.wasm_vm_count"),
            w("wasm.envoy.wasm.runtime.v8.created"),
            w("wasm.envoy.wasm.runtime.v8.active"),
            x.checker_responses,
            x.checker_non_2xx
        ));
    }
    fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

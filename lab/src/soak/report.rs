//! The soak's section of `docs/RELIABILITY.md`.

use meshbreaker_harness::{self as harness};
use std::collections::BTreeMap;

use super::access_log::*;
use super::client::*;
use super::sampling::*;
use super::schedule::*;

pub(super) struct Report<'a> {
    pub(super) minutes: f64,
    pub(super) phase_len: f64,
    pub(super) oha: &'a harness::OhaReport,
    pub(super) seen: &'a Seen,
    pub(super) explained: &'a Explained,
    pub(super) samples: &'a [Sample],
    pub(super) events: &'a [Event],
    pub(super) rss_base: u64,
    pub(super) rss_end: u64,
    pub(super) rss_min: u64,
    pub(super) rss_max: u64,
    pub(super) growth: f64,
    pub(super) vm_failures: u64,
    pub(super) traps: usize,
    pub(super) first_wasm: &'a BTreeMap<String, u64>,
    pub(super) lds_updates: u64,
    pub(super) failures: &'a [String],
    pub(super) envoy_version: String,
    pub(super) commit: String,
}

pub(super) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

impl Report<'_> {
    pub(super) fn markdown(&self) -> String {
        use crate::fuzz::group;
        let last = self.samples.last().cloned().unwrap_or_default();
        let f = |k: &str| last.filter.get(k).copied().unwrap_or(0);
        let w = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let mut s = String::new();
        s.push_str("## Soak\n\n");
        s.push_str(&format!(
            "`cargo xtask soak --minutes {:.0}`: {:.1} minutes of the real Envoy {} (`--concurrency 2`), \
             the real filter and the real eBPF sidecar, with oha as fast as the machine goes (32 \
             connections, closed loop) plus a checking client at 50 requests/s. The upstream flapped \
             healthy → failing (503) → healthy → slow (over the 250 ms P95 threshold) → healthy → \
             resetting (TCP RST) in phases of {:.0} s; the plugin configuration was reloaded twice \
             through LDS (a threshold, then the window geometry) and the sidecar was SIGKILLed and \
             restarted twice.\n\n",
            self.minutes, self.minutes, self.envoy_version, self.phase_len
        ));
        s.push_str(&format!(
            "**Verdict: {}.**\n\n",
            if self.failures.is_empty() {
                "everything held".to_string()
            } else {
                format!("FAILED — {}", self.failures.join("; "))
            }
        ));
        s.push_str("| what | figure |\n| --- | --- |\n");
        s.push_str(&format!(
            "| requests sent (oha + checker) | {} + {} ({:.0} requests/s from oha) |\n",
            group(self.oha.responses),
            group(self.seen.responses),
            self.oha.requests_per_sec
        ));
        s.push_str(&format!(
            "| requests in Envoy's access log | {} ({} 2xx) |\n",
            group(self.explained.lines),
            group(self.explained.ok)
        ));
        s.push_str(&format!(
            "| oha's statuses / errors | {:?} / {:?} |\n",
            self.oha.statuses, self.oha.errors
        ));
        s.push_str(&format!(
            "| non-2xx explained (access log) | rejections by reason {:?}; upstream answers {:?}; upstream failures by Envoy flag {:?}; client gone at the end (DC) {} |\n",
            self.explained.rejections,
            self.explained.upstream_answers,
            self.explained.upstream_failures,
            self.explained.client_gone
        ));
        s.push_str(&format!(
            "| non-2xx unexplained | access log {}; checking client {} (+{} transport errors) |\n",
            self.explained.unexplained.values().sum::<u64>(),
            self.seen.unexplained,
            self.seen.transport_errors
        ));
        s.push_str(&format!(
            "| checking client | {} responses: {} 2xx, rejections in SPEC's shape {:?}, upstream answers {:?}, upstream failures {:?}; {} reconnects after a drain |\n",
            group(self.seen.responses),
            group(self.seen.ok),
            self.seen.rejections,
            self.seen.upstream_answers,
            self.seen.upstream_failures,
            self.seen.reconnects
        ));
        s.push_str(&format!(
            "| Envoy RSS after warm-up | {} → {} ({:+.2}%; min {}, max {}; limit +5%) |\n",
            mib(self.rss_base),
            mib(self.rss_end),
            self.growth * 100.0,
            mib(self.rss_min),
            mib(self.rss_max)
        ));
        s.push_str(&format!(
            "| wasm VMs | {} failed/reloaded (`wasm.*reload*`), {} trap or panic lines in the log; `wasm_vm_count` {} → {}, `v8.created` {} → {} |\n",
            self.vm_failures,
            self.traps,
            w(self.first_wasm, "wasm.wasm_vm_count"),
            w(&last.wasm, "wasm.wasm_vm_count"),
            w(self.first_wasm, "wasm.envoy.wasm.runtime.v8.created"),
            w(&last.wasm, "wasm.envoy.wasm.runtime.v8.created")
        ));
        s.push_str(&format!(
            "| breaker | transitions: {} to open, {} to half-open, {} to closed; decisions: {} allowed, {} rejected, {} probes; {} kernel resets attributed |\n",
            group(f("transitions_total.open")),
            group(f("transitions_total.half_open")),
            group(f("transitions_total.closed")),
            group(f("requests_total.allowed")),
            group(f("requests_total.rejected")),
            group(f("requests_total.probe")),
            group(f("kernel_resets_total"))
        ));
        s.push_str(&format!("| LDS reloads applied | {} |\n", self.lds_updates));
        s.push_str(
            "\nEnvoy's response flags: `UC` upstream connection termination, `UR` upstream reset, \
             `UF` connect failure, `UT` timeout, `URX` retry limit reached, `UO` overflow of Envoy's \
             own cluster limits (pending requests, concurrent retries) while the upstream fails; \
             each access log line is classified in this order: 2xx, meshbreaker rejection \
             (`x-meshbreaker: open`), an upstream-failure flag, an upstream answer (no flag, an \
             upstream host), the client gone (`DC`); anything else is unexplained and fails the soak. \
             `v8.created` grows by one per reload (the new configuration's VM); `wasm_vm_count` is \
             the live VMs.\n",
        );
        s.push_str("\nRSS every 10 s (MiB): ");
        s.push_str(
            &self
                .samples
                .iter()
                .map(|x| format!("{:.1}", x.rss as f64 / (1 << 20) as f64))
                .collect::<Vec<_>>()
                .join(" "),
        );
        s.push_str("\n\n![RSS and decisions during the soak](reliability-soak.svg)\n\n");
        s.push_str("Events: ");
        s.push_str(
            &self
                .events
                .iter()
                .filter(|e| !e.what.starts_with("upstream"))
                .map(|e| format!("{:.0}s {}", e.at, e.what))
                .collect::<Vec<_>>()
                .join("; "),
        );
        s.push_str(".\n\n");
        s.push_str(&crate::fuzz::environment(&self.commit));
        s.push_str(&format!("oha: {}.\n", self.oha_version()));
        s.push_str(
            "\nReproduce (root, for the sidecar): `cargo xtask soak --minutes 10`; the samples are in \
             `target/soak/samples.csv`, Envoy's log and access log in `target/bench/soak/` and \
             `target/soak/`. `cargo xtask test` runs `cargo xtask soak --ci` (one minute, one cycle).\n",
        );
        s
    }

    pub(super) fn oha_version(&self) -> String {
        harness::oha_binary()
            .map(|b| harness::oha_version(&b))
            .unwrap_or_else(|_| "unknown".into())
    }
}

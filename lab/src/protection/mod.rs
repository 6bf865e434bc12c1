//! `cargo xtask bench --protection [--quick]`: how well meshbreaker keeps traffic away from a
//! failing upstream, measured against what Envoy already ships — outlier detection and
//! admission control — under the same load and the same real faults.
//!
//! Why it is built this way:
//!
//! - Every system sees the *same* fault at the *same* instant: one proxy Envoy per scenario with
//!   one listener (and one cluster with its own upstream hosts) per system, one open-loop client
//!   sending the same rate to every listener, and one `fault-upstream` process that flips the bad
//!   host of every system in one control call. Running the systems side by side rather than one
//!   after the other keeps the full run bounded and gives all of them the same machine noise
//!   (other builds share these cores).
//! - The faults are real (`bench/fault-upstream`): a closed port, real 503s, a real delay, a real
//!   RST with `SO_LINGER 0` in the middle of a response; the long-lived-stream scenario's
//!   websockets are real upgrades through Envoy and its slow uploads really trickle in.
//! - Who got each request is counted where it happened: the upstream hosts count what they
//!   received; a closed port cannot count, so for "hard down" the attempts come from Envoy's own
//!   per-attempt router `upstream_log` (connect failures to that host). The client
//!   (`steady-load`) records what every request got back, so local rejections and errors are
//!   counted per request; meshbreaker's own transition log lines (Envoy's log, stamped to the
//!   millisecond) say when each circuit opened and closed, which the flapping check counts.
//! - All systems get the same retry behaviour for a GET (5xx and resets, 2 retries, 250 ms base
//!   backoff, `previous_hosts`): meshbreaker writes it per request as headers, the others carry it
//!   in the route, so only the protection mechanism differs. "No protection" is that route alone.
//! - meshbreaker's recommended configuration is read from `envoy-config/recommended.json`, the
//!   file users are told to paste, so the benchmark measures exactly what ships.
//!
//! The full run writes the generated sections of `docs/PROTECTION.md` (its prose is
//! hand-written; see [`crate::docs`]), `docs/img/protection-<fault>.svg` and
//! `docs/img/protection-slow-states.svg`; `--quick` (inside `cargo xtask test`) runs the 1-host
//! hard-down, 50% 5xx and long-lived-stream scenarios for a few seconds each, asserts that
//! meshbreaker recommended keeps at least 90% of the requests sent after its trip away from the
//! hard-down upstream, that its clients get no more errors than unprotected ones on the 50%-failing
//! upstream (within the noise of the count, [`count_noise`]), and that meshbreaker (defaults and recommended) neither trips nor rejects anything on
//! the healthy one serving long-lived streams, and writes its findings under
//! `target/protection-quick/` only (its raw results under `target/bench/protection-quick-*/`,
//! apart from the full run's, which `--reanalyse` redraws the doc from).
//!
//! Options: `--faults down,5xx,slow,resets,streams` runs only those scenarios (the doc then holds
//! only their figures, the others' sections say they were left out: for trying a change, not
//! for publishing); `--reanalyse` redraws the report from
//! the raw results kept under `target/bench/protection-*/`; `--wasm FILE` measures that filter
//! build instead of building one (an older release, to see what a change bought: round 2's
//! filter trips in the long-lived-stream scenario, on its whole-exchange P95).
//!
//! ## Layout, one job per file, no import circle
//! This file holds the entry points. `model` is the faults, systems, scenarios and the plan of a
//! run; `processes` starts what a run needs, `config` writes the proxy's bootstrap,
//! `scenario_run` runs one scenario and keeps its raw results, `analysis` reads them, `svg` draws
//! the pictures, `tables` writes each scenario's tables and findings, `report` the generated
//! sections of `docs/PROTECTION.md`, `quick` the quick run's checks and its report. Each uses
//! only those before it in that order.

use std::path::Path;
use std::time::Instant;

use crate::util::{root, step, Result};
use meshbreaker_harness::{self as harness, Machine};

mod analysis;
mod config;
mod model;
mod processes;
mod quick;
mod report;
mod scenario_run;
mod svg;
mod tables;

use analysis::*;
use model::*;
use processes::*;
use quick::*;
use report::*;
use scenario_run::*;

// ------------------------------------------------------------------------------------ entry

/// `Err` naming the first of `only` that is no fault id.
pub fn check_faults(only: &[String]) -> Result {
    match only
        .iter()
        .find(|f| !Fault::ALL.iter().any(|k| k.id() == f.as_str()))
    {
        Some(unknown) => Err(format!(
            "--faults: no fault {unknown:?} (there are {})",
            Fault::ALL.map(Fault::id).join(", ")
        )),
        None => Ok(()),
    }
}

/// The `--quick` variant for `cargo xtask test`, with the Envoy and the wasm it already has.
pub fn quick(envoy: &Path, wasm: &Path) -> Result {
    run(true, None, envoy, wasm)
}

/// Where a run keeps what its report says about the run itself (Envoy, the filter, the machine,
/// the commit), beside the scenarios' raw results, so that `--reanalyse` says the same.
fn context_path(quick: bool) -> std::path::PathBuf {
    let name = if quick {
        "protection-quick-context.json"
    } else {
        "protection-context.json"
    };
    root().join("target").join("bench").join(name)
}

/// The last run's raw results analysed again, with the context it kept: nothing is built,
/// installed or measured.
pub fn reanalyse(quick: bool, only: Option<&[String]>) -> Result {
    step("re-analyse the saved results under target/bench/protection-*/");
    let ctx: ReportCtx = crate::docs::load_results(&context_path(quick))?;
    let runs = plan(quick, only)
        .iter()
        .map(|sc| load_saved(sc, quick))
        .collect::<Result<Vec<_>>>()?;
    report(quick, &runs, &ctx)
}

/// One run: the full benchmark (fills in `docs/PROTECTION.md`) or `quick`, only the faults in
/// `only` when given.
pub fn run(quick: bool, only: Option<&[String]>, envoy: &Path, wasm: &Path) -> Result {
    let started = Instant::now();
    let scenarios = plan(quick, only);
    step("build the fault upstream and the load client (release)");
    let bins =
        harness::cargo::build_bins("fault-upstream", &["fault-upstream", "steady-load"], true)?;
    let needs_sidecar = scenarios
        .iter()
        .any(|s| s.systems.iter().any(|k| k.uses_sidecar()));
    let sidecar = if needs_sidecar {
        step("build and start the eBPF sidecar (meshbreaker-sidecar, root)");
        Some(Sidecar::start()?)
    } else {
        None
    };
    eprintln!(
        "{} scenarios, about {} min",
        scenarios.len(),
        estimate(&scenarios).as_secs().div_ceil(60)
    );
    let mut runs = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        step(&format!(
            "[{}/{}] {} ({}s: warm-up {}s, {} {}s, then {}s) — {}",
            i + 1,
            scenarios.len(),
            sc.title(),
            sc.phases.total().as_secs(),
            sc.phases.warm.as_secs(),
            if sc.fault.fails() { "fault" } else { "streams" },
            sc.phases.fault.as_secs(),
            sc.phases.recover.as_secs(),
            sc.systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let port = sidecar.as_ref().map(|s| s.port);
        let run = run_scenario(sc, quick, &bins, envoy, wasm, port)?;
        print_summary(&run);
        runs.push(run);
    }
    drop(sidecar);
    let ctx = ReportCtx {
        envoy_version: harness::envoy_version(envoy),
        wasm_bytes: std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0),
        machine: Machine::probe(),
        elapsed: started.elapsed(),
        commit: report::filter_commit(),
    };
    crate::docs::save_results(&context_path(quick), &ctx)?;
    report(quick, &runs, &ctx)
}

fn report(quick: bool, runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    if quick {
        quick_report_and_assert(runs, ctx)
    } else {
        full_report(runs, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::config::{bootstrap, to_yaml};
    use super::tables::reasons;
    use super::*;
    use policy_core::breaker::State;
    use serde_json::json;

    /// Every scenario's bootstrap, full run and quick, as Envoy reads it (after `to_yaml`).
    #[test]
    fn bootstraps_match_their_snapshots() {
        use meshbreaker_harness::snapshot::check_bootstrap;
        for (run, quick) in [("full", false), ("quick", true)] {
            for (i, sc) in plan(quick, None).iter().enumerate() {
                let ports: Vec<u16> = (0..sc.systems.len() * sc.hosts)
                    .map(|p| 20_000 + p as u16)
                    .collect();
                let sidecar = sc.systems.iter().any(|s| s.uses_sidecar()).then_some(9911);
                let boot = bootstrap(
                    sc,
                    &ports,
                    Path::new("/snapshot/meshbreaker.wasm"),
                    Path::new("/snapshot/logs"),
                    sidecar,
                );
                let name = format!("protection-{run}-{i:02}-{}", sc.id());
                check_bootstrap(&name, &to_yaml(&boot)).unwrap();
            }
        }
    }

    #[test]
    fn to_yaml_keeps_strings_exact_and_nests_lists_of_maps() {
        let v = json!({
            "@type": "t",
            "format": "a %B%\n",
            "cfg": "{\n  \"x\": 1\n}",
            "list": [{ "name": "n", "empty": {} }, 3],
        });
        let y = to_yaml(&v);
        assert!(y.contains("\"@type\": \"t\"\n"), "{y}");
        // `|` keeps the one trailing newline an access-log format needs; `|-` keeps none.
        assert!(y.contains("format: |\n  a %B%\n"), "{y}");
        assert!(y.contains("cfg: |-\n  {\n    \"x\": 1\n  }\n"), "{y}");
        // (serde_json's maps are sorted by key.)
        assert!(
            y.contains("list:\n  - empty: {}\n    name: \"n\"\n  - 3\n"),
            "{y}"
        );
    }

    fn run_with(hosts: usize, client: Vec<Req>, bad: Vec<BadHit>) -> (ScenarioRun, SysData) {
        let d = SysData {
            client,
            bad_received: bad.iter().map(|h| h.t).collect(),
            bad,
            ..SysData::default()
        };
        let run = ScenarioRun {
            scenario: Scenario {
                fault: Fault::Down,
                hosts,
                systems: vec![System::MbDefault],
                phases: FULL,
            },
            loadavg: 0.0,
            t_start: 0,
            t_fault: 1_000,
            t_heal: 3_000,
            t_end: 5_000,
            data: Vec::new(),
            bootstrap: String::new(),
        };
        (run, d)
    }

    #[test]
    fn analyse_counts_requests_sent_after_the_trip_that_still_reached_the_bad_host() {
        // 200 req/s for 5 s; the fault at 1 s, the first local rejection at 1.5 s, the heal at 3 s.
        let mut client = Vec::new();
        let mut bad = Vec::new();
        for i in 0..1000u64 {
            let t = i * 5;
            let local = (1_500..3_000).contains(&t) && i % 50 != 0;
            client.push(Req {
                t,
                lat_us: 1_000,
                class: if local { class::MB_OPEN } else { class::OK },
                att: 1,
                id: i,
                kind: kind::GET,
            });
            if !local {
                bad.push(BadHit { t: t + 1, id: i });
            }
        }
        let (run, d) = run_with(1, client, bad);
        let m = analyse(&run, &d);
        assert_eq!(m.offered, 400);
        assert_eq!(m.protect_ms, Some(505));
        let (trip_ms, sent, reached) = m.after_trip.unwrap();
        assert_eq!((trip_ms, sent), (505, 299));
        assert_eq!(
            reached, 5,
            "every 50th request after the trip passed, as a probe would"
        );
        assert_eq!(m.shed_fault, 294);
        assert_eq!(m.recover_ms, Some(0));
    }

    #[test]
    fn the_recommended_system_is_the_shipped_file_and_the_choice_runs_change_only_the_target() {
        let rec = System::MbRecommended.plugin_config();
        assert!(rec["breaker"].is_object(), "{RECOMMENDED_JSON}");
        assert_eq!(rec["breaker"]["shedding"], "adaptive");
        for (sys, rate) in System::SHEDDING.iter().zip(SHEDDING_CHOICES) {
            let mut c = sys.plugin_config();
            assert_eq!(c["breaker"]["shedding_success_rate"], json!(rate));
            c["breaker"]
                .as_object_mut()
                .unwrap()
                .remove("shedding_success_rate");
            assert_eq!(c, rec, "{}", sys.name());
        }
    }

    #[test]
    fn transitions_are_read_from_envoys_log_with_their_millisecond() {
        let log = "1796301187000 warning main some other line\n\
            1796301187702 info wasm wasm log meshbreaker meshbreaker meshbreaker-mb-recommended: \
            meshbreaker: transition key=mb-recommended from=closed to=open \
            reason=consecutive_failures open_for_ms=283 samples=651 failures=17\n\
            1796301187986 info wasm wasm log meshbreaker meshbreaker meshbreaker-mb-recommended: \
            meshbreaker: transition key=mb-recommended from=open to=half_open \
            reason=consecutive_failures\n\
            1796301187990 info wasm wasm log meshbreaker meshbreaker meshbreaker-mb-default: \
            meshbreaker: transition key=mb-default from=closed to=open reason=error_rate \
            open_for_ms=30000\n";
        let t = transitions(log);
        let rec = &t["mb-recommended"];
        assert_eq!(rec.len(), 2);
        assert_eq!((rec[0].t, rec[0].to), (1796301187702, State::Open));
        assert_eq!(rec[0].reason, "consecutive_failures");
        assert_eq!((rec[1].t, rec[1].to), (1796301187986, State::HalfOpen));
        assert_eq!(t["mb-default"][0].reason, "error_rate");
        assert_eq!(reasons(rec), " (reasons: consecutive_failures ×1)");
    }

    #[test]
    fn the_flapping_check_counts_the_closes_while_the_fault_lasts() {
        let (run, mut d) = run_with(1, Vec::new(), Vec::new());
        let change = |t: u64, to: State| Change {
            t,
            to,
            reason: "latency_p95".into(),
        };
        // Fault from 1 s to 3 s: one close inside it, one after the heal.
        d.changes = vec![
            change(1_200, State::Open),
            change(1_500, State::HalfOpen),
            change(1_510, State::Closed),
            change(1_900, State::Open),
            change(3_300, State::HalfOpen),
            change(3_310, State::Closed),
        ];
        let m = analyse(&run, &d);
        assert_eq!((m.opens_fault, m.closes_fault), (2, 1));
        assert_eq!(m.closed_after_heal_ms, Some(310));
    }

    #[test]
    fn the_streams_check_fails_a_meshbreaker_that_trips_or_sheds_on_a_healthy_upstream() {
        let req = |i: u64, kind: u8, class: u8| Req {
            t: 1_000 + i * 10,
            lat_us: 3_000_000,
            class,
            att: 1,
            id: i,
            kind,
        };
        let healthy = SysData {
            client: vec![
                req(0, kind::WEBSOCKET, class::OK),
                req(1, kind::SLOW_UPLOAD, class::OK),
                req(2, kind::GET, class::OK),
            ],
            ..SysData::default()
        };
        let tripped = SysData {
            client: vec![
                req(0, kind::WEBSOCKET, class::OK),
                req(1, kind::SLOW_UPLOAD, class::MB_OPEN),
                req(2, kind::GET, class::MB_OPEN),
            ],
            changes: vec![Change {
                t: 1_005,
                to: State::Open,
                reason: "latency_p95".into(),
            }],
            ..SysData::default()
        };
        let (mut run, _) = run_with(1, Vec::new(), Vec::new());
        run.scenario.fault = Fault::Streams;
        run.data = vec![
            (System::MbDefault, healthy),
            (System::MbRecommended, tripped),
        ];
        let checks = quick_checks(&[run]);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks[0].0, "{checks:?}");
        assert!(!checks[1].0, "{checks:?}");
        assert!(checks[1].1.contains("latency_p95"), "{checks:?}");
    }

    #[test]
    fn the_partial_failure_check_allows_the_noise_of_the_count_and_no_more() {
        // No protection's clients: 400 upstream 503s; meshbreaker's: `extra` more (some shed).
        let run_of = |extra: u64| {
            let client = |errors: u64, shed: u64| -> Vec<Req> {
                (0..2_000u64)
                    .map(|i| Req {
                        t: 1_000 + i,
                        lat_us: 1_000,
                        class: if i < shed {
                            class::MB_OPEN
                        } else if i < errors {
                            1
                        } else {
                            class::OK
                        },
                        att: 1,
                        id: i,
                        kind: kind::GET,
                    })
                    .collect()
            };
            let (mut run, _) = run_with(1, Vec::new(), Vec::new());
            run.scenario.fault = Fault::Errors;
            run.data = vec![
                (
                    System::NoProtection,
                    SysData {
                        client: client(400, 0),
                        ..SysData::default()
                    },
                ),
                (
                    System::MbRecommended,
                    SysData {
                        client: client(400 + extra, 50),
                        ..SysData::default()
                    },
                ),
            ];
            quick_checks(&[run])
        };
        assert_eq!(count_noise(400), 60);
        assert!(run_of(60)[0].0, "{:?}", run_of(60));
        assert!(!run_of(61)[0].0, "{:?}", run_of(61));
    }

    /// The report writes the sections the checked-in doc has, in its order, and no others,
    /// whatever the runs hold: none (every scenario left out) or one.
    #[test]
    fn the_report_writes_exactly_the_generated_sections_of_the_checked_in_doc() {
        let path = crate::util::root().join("docs").join("PROTECTION.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let ctx = ReportCtx {
            envoy_version: "envoy".into(),
            wasm_bytes: 1,
            machine: Machine::default(),
            elapsed: std::time::Duration::ZERO,
            commit: "abc".into(),
        };
        let healthy = || SysData {
            client: (0..100u64)
                .map(|i| Req {
                    t: i * 50,
                    lat_us: 1_000,
                    class: class::OK,
                    att: 1,
                    id: i,
                    kind: kind::GET,
                })
                .collect(),
            ..SysData::default()
        };
        let (mut run, _) = run_with(1, Vec::new(), Vec::new());
        run.data = vec![
            (System::NoProtection, healthy()),
            (System::MbRecommended, healthy()),
        ];
        for runs in [Vec::new(), vec![run]] {
            crate::docs::check_sections(&doc, PREFIX, &sections(&runs, &ctx)).unwrap();
        }
    }

    #[test]
    fn analyse_recovery_is_the_end_of_the_last_second_the_healed_host_was_still_shed() {
        // The host gets nothing until 4 s (one second after the heal), then everything.
        let client: Vec<Req> = (0..1000u64)
            .map(|i| Req {
                t: i * 5,
                lat_us: 1_000,
                class: class::OK,
                att: 1,
                id: i,
                kind: kind::GET,
            })
            .collect();
        let bad: Vec<BadHit> = client
            .iter()
            .filter(|r| r.t < 1_000 || r.t >= 4_000)
            .map(|r| BadHit { t: r.t, id: r.id })
            .collect();
        let (run, d) = run_with(1, client, bad);
        assert_eq!(analyse(&run, &d).recover_ms, Some(1_000));
    }
}

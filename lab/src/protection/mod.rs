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
//! The full run writes `docs/PROTECTION.md`, `docs/img/protection-<fault>.svg` and
//! `docs/img/protection-slow-states.svg`; `--quick` (inside `cargo xtask test`) runs the 1-host
//! hard-down, 50% 5xx and long-lived-stream scenarios for a few seconds each, asserts that
//! meshbreaker recommended keeps at least 90% of the requests sent after its trip away from the
//! hard-down upstream, that its clients get no more errors than unprotected ones on the 50%-failing
//! upstream (within the noise of the count, [`count_noise`]), and that meshbreaker (defaults and recommended) neither trips nor rejects anything on
//! the healthy one serving long-lived streams, and writes its findings under
//! `target/protection-quick/` only.
//!
//! Options: `--faults down,5xx,slow,resets,streams` runs only those scenarios (the doc then holds
//! only them: for trying a change, not for publishing); `--reanalyse` redraws the report from
//! the raw results kept under `target/bench/protection-*/`; `--wasm FILE` measures that filter
//! build instead of building one (an older release, to see what a change bought: round 2's
//! filter trips in the long-lived-stream scenario, on its whole-exchange P95).
//!
//! ## Layout, one job per file
//! This file holds the model (faults, systems, scenarios) and the entry points; `processes`
//! starts what a run needs, `config` writes the proxy's bootstrap, `scenario_run` runs one
//! scenario and keeps its raw results, `analysis` reads them, `report` writes the checks and
//! `docs/PROTECTION.md`, `svg` draws the pictures.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy_core::breaker::{State, TransitionLine};
use serde_json::{json, Value};

use crate::util::{output, root, step, Result};
use meshbreaker_harness::{self as harness, bootstrap, Envoy, EnvoyOpts, Machine, Proc};

mod analysis;
mod config;
mod processes;
mod report;
mod scenario_run;
mod svg;

use analysis::*;
use config::*;
use processes::*;
use report::*;
use scenario_run::*;
use svg::*;

/// Requests per second each system's listener gets.
const RATE: f64 = 200.0;
/// Client connection pools per listener (so at least this many connections each).
const CLIENTS: usize = 16;
/// The share of traffic meshbreaker must keep away from a hard-down lone upstream after its trip.
const MIN_KEPT_AFTER_TRIP: f64 = 0.90;
/// Delay of the "slow" fault: over meshbreaker's default 800 ms P95 threshold, no errors.
const SLOW_MS: u64 = 1000;
/// The long-lived-stream scenario: the share of requests that are long-lived, and how long each
/// is held (a websocket open, an upload's body trickling in).
const STREAM_SHARE: f64 = 0.1;
const STREAM_HOLD_MS: u64 = 3000;
/// The adaptive shedding targets measured beside the recommended one on the 1-host 50% 5xx run.
const SHEDDING_CHOICES: [f64; 2] = [0.3, 0.7];

/// The recommended configuration, as shipped in `envoy-config/recommended.json` (the one place
/// it is written; `docs/configuration.md` shows the same block).
const RECOMMENDED_JSON: &str = include_str!("../../../envoy-config/recommended.json");

fn recommended() -> Value {
    serde_json::from_str(RECOMMENDED_JSON).unwrap_or(Value::Null)
}

/// The recommended configuration with `shedding_success_rate` set to `rate`.
fn recommended_with_success_rate(rate: f64) -> Value {
    let mut c = recommended();
    c["breaker"]["shedding_success_rate"] = json!(rate);
    c
}

/// One line of JSON for a table cell.
fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

// ------------------------------------------------------------------------------------ model

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Down,
    Errors,
    Slow,
    Resets,
    /// No fault: a healthy upstream while a share of the requests are long-lived (websockets,
    /// slow uploads). The "fault" phase is the time they are sent.
    Streams,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Down,
        Fault::Errors,
        Fault::Slow,
        Fault::Resets,
        Fault::Streams,
    ];

    fn id(self) -> &'static str {
        match self {
            Fault::Down => "down",
            Fault::Errors => "5xx",
            Fault::Slow => "slow",
            Fault::Resets => "resets",
            Fault::Streams => "streams",
        }
    }

    fn title(self) -> String {
        match self {
            Fault::Down => "hard down (port closed: connection refused)".into(),
            Fault::Errors => "50% 5xx".into(),
            Fault::Slow => format!("slow: every answer {SLOW_MS} ms late, no errors"),
            Fault::Resets => "connection-reset storm (RST mid-response, SO_LINGER 0)".into(),
            Fault::Streams => format!(
                "long-lived streams on a healthy upstream: {:.0}% of requests are websockets held \
                 {} s or uploads trickling in for {} s",
                STREAM_SHARE * 100.0,
                STREAM_HOLD_MS / 1000,
                STREAM_HOLD_MS / 1000
            ),
        }
    }

    fn control_query(self) -> String {
        match self {
            Fault::Down => "mode=down".into(),
            Fault::Errors => "mode=error&value=0.5".into(),
            Fault::Slow => format!("mode=delay&value={SLOW_MS}"),
            Fault::Resets => "mode=reset".into(),
            Fault::Streams => "mode=ok".into(),
        }
    }

    /// Whether the upstream fails at all (the streams scenario has no bad host).
    fn fails(self) -> bool {
        self != Fault::Streams
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    NoProtection,
    OdDefault,
    OdTuned,
    AdmissionControl,
    MbDefault,
    MbRecommended,
    /// The recommended configuration with `shedding_success_rate` 0.3 and 0.7: the runs that
    /// chose the target (1-host 50% 5xx only).
    MbRecommendedSr30,
    MbRecommendedSr70,
    MbDefaultSidecar,
    MbRecommendedSidecar,
}

impl System {
    const BASE: [System; 6] = [
        System::NoProtection,
        System::OdDefault,
        System::OdTuned,
        System::AdmissionControl,
        System::MbDefault,
        System::MbRecommended,
    ];
    const SIDECAR: [System; 2] = [System::MbDefaultSidecar, System::MbRecommendedSidecar];
    const SHEDDING: [System; 2] = [System::MbRecommendedSr30, System::MbRecommendedSr70];

    /// Listener, cluster and meshbreaker key name.
    fn name(self) -> &'static str {
        match self {
            System::NoProtection => "no-protection",
            System::OdDefault => "od-default",
            System::OdTuned => "od-tuned",
            System::AdmissionControl => "admission-control",
            System::MbDefault => "mb-default",
            System::MbRecommended => "mb-recommended",
            System::MbRecommendedSr30 => "mb-recommended-sr30",
            System::MbRecommendedSr70 => "mb-recommended-sr70",
            System::MbDefaultSidecar => "mb-default-ebpf",
            System::MbRecommendedSidecar => "mb-recommended-ebpf",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::NoProtection => "no protection",
            System::OdDefault => "outlier detection, defaults",
            System::OdTuned => "outlier detection, tuned",
            System::AdmissionControl => "admission control, tuned",
            System::MbDefault => "meshbreaker, defaults",
            System::MbRecommended => "meshbreaker, recommended",
            System::MbRecommendedSr30 => {
                "meshbreaker, recommended but shedding_success_rate 0.3 (choice run)"
            }
            System::MbRecommendedSr70 => {
                "meshbreaker, recommended but shedding_success_rate 0.7 (choice run)"
            }
            System::MbDefaultSidecar => "meshbreaker, defaults + eBPF sidecar",
            System::MbRecommendedSidecar => "meshbreaker, recommended + eBPF sidecar",
        }
    }

    fn is_meshbreaker(self) -> bool {
        !matches!(
            self,
            System::NoProtection | System::OdDefault | System::OdTuned | System::AdmissionControl
        )
    }

    fn uses_sidecar(self) -> bool {
        matches!(
            self,
            System::MbDefaultSidecar | System::MbRecommendedSidecar
        )
    }

    /// The plugin configuration of a meshbreaker system.
    fn plugin_config(self) -> Value {
        let sidecar = |poll: &str| {
            json!({
                "cluster": "meshbreaker_sidecar",
                "path": "/v1/resets",
                "poll_interval": poll,
                "max_resets_per_second": 5
            })
        };
        match self {
            System::MbDefault => json!({}),
            System::MbRecommended => recommended(),
            System::MbRecommendedSr30 => recommended_with_success_rate(SHEDDING_CHOICES[0]),
            System::MbRecommendedSr70 => recommended_with_success_rate(SHEDDING_CHOICES[1]),
            System::MbDefaultSidecar => json!({ "reset_signals": sidecar("1s") }),
            System::MbRecommendedSidecar => {
                let mut c = recommended();
                c["reset_signals"] = sidecar("250ms");
                c
            }
            _ => Value::Null,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Phases {
    warm: Duration,
    fault: Duration,
    recover: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.warm + self.fault + self.recover
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    fault: Fault,
    hosts: usize,
    systems: Vec<System>,
    phases: Phases,
}

impl Scenario {
    fn id(&self) -> String {
        format!("{}-{}host", self.fault.id(), self.hosts)
    }

    fn title(&self) -> String {
        format!(
            "{}, {} upstream host{}",
            self.fault.title(),
            self.hosts,
            match (self.hosts, self.fault.fails()) {
                (1, _) => "",
                (_, true) => "s (one of them bad)",
                (_, false) => "s",
            }
        )
    }
}

/// What the client saw for one request (`steady-load`'s classes).
mod class {
    pub const OK: u8 = 0;
    pub const MB_OPEN: u8 = 2;
    pub const SHED: u8 = 3;
    pub const NO_HEALTHY: u8 = 4;

    /// Answered by the proxy itself without any upstream attempt being made for it.
    pub fn local(c: u8) -> bool {
        matches!(c, MB_OPEN | SHED | NO_HEALTHY)
    }
}

/// What the client sent (`steady-load`'s kinds).
mod kind {
    pub const GET: u8 = 0;
    pub const WEBSOCKET: u8 = 1;
    pub const SLOW_UPLOAD: u8 = 2;
}

#[derive(Clone, Copy, Debug)]
struct Req {
    t: u64,
    lat_us: u64,
    class: u8,
    att: u64,
    id: u64,
    kind: u8,
}

/// One state change of a meshbreaker key, from the filter's transition log line.
#[derive(Clone, Debug)]
struct Change {
    t: u64,
    to: State,
    reason: String,
}

/// One request that reached, or was sent towards, the bad host.
#[derive(Clone, Copy, Debug)]
struct BadHit {
    t: u64,
    id: u64,
}

#[derive(Debug, Default)]
struct SysData {
    client: Vec<Req>,
    /// Requests the bad host received (its own count) plus Envoy's connect attempts to it that
    /// the closed port refused (router upstream log).
    bad: Vec<BadHit>,
    /// Of `bad`, the part the bad host counted itself.
    bad_received: Vec<u64>,
    /// Arrival times at the healthy hosts.
    healthy: Vec<u64>,
    /// Upstream log entries for the bad host, for cross-checking the upstream's own count.
    uplog_bad_total: usize,
    stats: BTreeMap<&'static str, f64>,
    /// meshbreaker only: the key's transitions over the run, in order (Envoy's log).
    changes: Vec<Change>,
}

struct ScenarioRun {
    scenario: Scenario,
    /// The machine's 1-minute load average when the run started (other builds share it).
    loadavg: f64,
    t_start: u64,
    t_fault: u64,
    t_heal: u64,
    t_end: u64,
    data: Vec<(System, SysData)>,
    bootstrap: String,
}

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
    run(true, false, None, envoy, wasm)
}

/// Seconds a scenario costs beyond its phases: Envoy's start with one wasm VM per meshbreaker
/// listener, the wait for the access logs, the upstream's counts.
const OVERHEAD_S: u64 = 8;

/// One run: the full benchmark (writes `docs/PROTECTION.md`) or `quick`, only the faults in
/// `only` when given, or (`reanalyse`) the last run's raw results analysed again.
pub fn run(
    quick: bool,
    reanalyse: bool,
    only: Option<&[String]>,
    envoy: &Path,
    wasm: &Path,
) -> Result {
    let started = Instant::now();
    let scenarios = plan(quick, only);
    let ctx = |elapsed: Duration| ReportCtx {
        envoy_version: harness::envoy_version(envoy),
        wasm_bytes: std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0),
        machine: Machine::probe(),
        elapsed,
    };
    if reanalyse {
        step("re-analyse the saved results under target/bench/protection-*/");
        let runs = scenarios
            .iter()
            .map(load_saved)
            .collect::<Result<Vec<_>>>()?;
        let elapsed = runs.iter().map(|r| (r.t_end - r.t_start) / 1000 + 6).sum();
        return report(quick, &runs, &ctx(Duration::from_secs(elapsed)));
    }
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
        let run = run_scenario(sc, &bins, envoy, wasm, sidecar.as_ref().map(|s| s.port))?;
        print_summary(&run);
        runs.push(run);
    }
    drop(sidecar);
    report(quick, &runs, &ctx(started.elapsed()))
}

/// How long `scenarios` take to measure.
fn estimate(scenarios: &[Scenario]) -> Duration {
    scenarios
        .iter()
        .map(|s| s.phases.total() + Duration::from_secs(OVERHEAD_S))
        .sum()
}

fn report(quick: bool, runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    if quick {
        quick_report_and_assert(runs, ctx)
    } else {
        full_report(runs, ctx)
    }
}

/// The phases of the full run's fault scenarios (the doc's prose quotes them).
const FULL: Phases = Phases {
    warm: Duration::from_secs(8),
    fault: Duration::from_secs(25),
    recover: Duration::from_secs(45),
};
/// The full run's long-lived-stream scenario: nothing to recover from, only the last streams
/// to finish.
const FULL_STREAMS: Phases = Phases {
    warm: Duration::from_secs(5),
    fault: Duration::from_secs(30),
    recover: Duration::from_secs(5),
};

fn plan(quick: bool, only: Option<&[String]>) -> Vec<Scenario> {
    let wanted = |f: Fault| only.is_none_or(|o| o.iter().any(|x| x == f.id()));
    let mut s = Vec::new();
    if quick {
        let phases = Phases {
            warm: Duration::from_secs(3),
            fault: Duration::from_secs(6),
            recover: Duration::from_secs(4),
        };
        for fault in [Fault::Down, Fault::Errors] {
            s.push(Scenario {
                fault,
                hosts: 1,
                systems: System::BASE.to_vec(),
                phases,
            });
        }
        // Streams held 3 s complete from 3 s on: 10 s of them give 7 s of completions, enough
        // for a 60 s window that holds 1 s of plain GETs to see more than 5% long-lived
        // samples (which tripped round 2's whole-exchange P95 at about 6 s).
        s.push(Scenario {
            fault: Fault::Streams,
            hosts: 1,
            systems: vec![
                System::NoProtection,
                System::MbDefault,
                System::MbRecommended,
            ],
            phases: Phases {
                warm: Duration::from_secs(1),
                fault: Duration::from_secs(10),
                recover: Duration::from_secs(4),
            },
        });
        s.retain(|sc| wanted(sc.fault));
        return s;
    }
    for fault in Fault::ALL {
        if !wanted(fault) {
            continue;
        }
        if fault == Fault::Streams {
            // A trip is cluster-wide: more hosts would show nothing new.
            s.push(Scenario {
                fault,
                hosts: 1,
                systems: System::BASE.to_vec(),
                phases: FULL_STREAMS,
            });
            continue;
        }
        for hosts in [1, 3] {
            let mut systems = System::BASE.to_vec();
            if fault == Fault::Resets {
                systems.extend(System::SIDECAR);
            }
            if fault == Fault::Errors && hosts == 1 {
                systems.extend(System::SHEDDING);
            }
            s.push(Scenario {
                fault,
                hosts,
                systems,
                phases: FULL,
            });
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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

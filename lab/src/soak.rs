//! `cargo xtask soak [--minutes N] [--ci]`: the real Envoy (`--concurrency 2`), the real filter and
//! the real eBPF sidecar for minutes at the load the machine sustains (oha), while the upstream
//! flaps healthy → failing → healthy → slow → healthy → resetting, the plugin configuration is
//! reloaded twice through LDS (a listener from a file, replaced by an atomic rename, as Istio's
//! pushes do) and the sidecar is SIGKILLed and restarted twice. Writes `docs/RELIABILITY.md`
//! (its soak section), `target/soak/samples.csv` and `target/soak/soak.svg`.
//!
//! Why: a breaker that leaks a little per request, loses a VM to a rare input, forgets a reload or
//! mislabels its own rejections only shows after hours of traffic, not in a unit test. The soak
//! asserts what an operator relies on:
//! - Envoy's RSS after the warm-up grows by at most 5 % (sampled every 10 s);
//! - no wasm VM fails or is reloaded (`wasm.*` stats and the log);
//! - every non-2xx the clients saw is explained: a meshbreaker rejection carrying its headers, an
//!   upstream answer, or an upstream failure Envoy reported (response flags). Envoy's access log
//!   classifies every request (oha's too); a checking client also inspects every response it
//!   gets (rejection shape per SPEC);
//! - the breaker kept working: it opened and closed again after each reload.
//!
//! `--ci` (what `cargo xtask test` runs): one minute, one flap cycle, `docs/` untouched.
//! `MESHBREAKER_SIDECAR` and `MESHBREAKER_DEMO` name prebuilt sidecar and demo binaries (else
//! they are built here), `MESHBREAKER_ENVOY` the Envoy.
//! The sidecar needs root (BPF): the soak fails loudly without it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{root, step, Result};
use meshbreaker_harness::bootstrap;
use meshbreaker_harness::sidecar::{Sidecar, SidecarOpts};
use meshbreaker_harness::{self as harness, Envoy, EnvoyOpts, Load, Proc};

/// The cluster (and so the breaker key) the soak's traffic goes to.
const KEY: &str = "demo";

// ----------------------------------------------------------------------------------- schedule

/// What the upstream does during one phase of the flap cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Failing,
    Slow,
    Resetting,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Failing => "failing",
            Phase::Slow => "slow",
            Phase::Resetting => "resetting",
        }
    }
}

const CYCLE: [Phase; 6] = [
    Phase::Healthy,
    Phase::Failing,
    Phase::Healthy,
    Phase::Slow,
    Phase::Healthy,
    Phase::Resetting,
];

/// The events of one soak, as fractions of its duration.
const RELOADS: [f64; 2] = [0.30, 0.70];
const SIDECAR_KILLS: [f64; 2] = [0.45, 0.85];
/// How long the sidecar stays dead.
const SIDECAR_DOWN: Duration = Duration::from_secs(3);

/// How long to soak.
#[derive(Clone, Debug)]
pub struct Opts {
    pub duration: Duration,
    /// The short run `cargo xtask test` asserts: `docs/RELIABILITY.md` is left as it is.
    pub ci: bool,
}

// ------------------------------------------------------------------------------ configuration

/// The plugin configuration; `variant` 0 is the start, 1 and 2 the two reloads: the first
/// changes a threshold (state kept), the second the window geometry (windows start afresh).
fn plugin_config(variant: usize, sidecar_cluster: &str) -> Value {
    let (threshold, window) = match variant {
        0 => (0.5, "5s"),
        1 => (0.4, "5s"),
        _ => (0.4, "6s"),
    };
    json!({
        "key_by": "cluster",
        "mode": "enforce",
        "breaker": {
            "window": window,
            "buckets": 5,
            "min_requests": 20,
            "error_rate_threshold": threshold,
            "latency_p95_threshold": "250ms",
            "sleep_window": "1s",
            "max_sleep_window": "8s",
            "half_open_max_probes": 3,
            "half_open_successes_to_close": 3
        },
        "reset_signals": {
            "cluster": sidecar_cluster,
            "path": "/v1/resets",
            "poll_interval": "500ms",
            "max_resets_per_second": 5
        }
    })
}

/// Envoy's access log line: enough to explain every response.
const ACCESS_LOG_FORMAT: &str =
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESP(X-MESHBREAKER)% %RESP(X-MESHBREAKER-REASON)% %UPSTREAM_HOST%\n";

/// The listener, as LDS serves it from a file.
fn listener(port: u16, wasm: &Path, plugin: &Value, access_log: &Path) -> Value {
    let hcm = json!({
        "@type": bootstrap::HCM_TYPE,
        "stat_prefix": "soak",
        "codec_type": "AUTO",
        "use_remote_address": true,
        "access_log": [bootstrap::file_access_log(access_log, ACCESS_LOG_FORMAT)],
        "route_config": {
            "name": "soak",
            "virtual_hosts": [{
                "name": "soak",
                "domains": ["*"],
                "include_request_attempt_count": true,
                "include_attempt_count_in_response": true,
                "routes": [bootstrap::route(
                    "http",
                    vec![],
                    KEY,
                    "5s",
                    bootstrap::retry_policy("0.025s", Some("0.25s"))
                )]
            }]
        },
        "http_filters": [
            bootstrap::wasm_filter_json("meshbreaker", wasm, &plugin.to_string()),
            bootstrap::router()
        ]
    });
    let mut l = bootstrap::listener("soak", port, hcm);
    l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    l
}

fn bootstrap(lds: &Path, upstream: SocketAddr, sidecar: SocketAddr) -> Value {
    json!({
        "node": {"id": "meshbreaker-soak", "cluster": "meshbreaker"},
        "admin": bootstrap::admin(0),
        "stats_config": bootstrap::stats_config(),
        "dynamic_resources": {
            "lds_config": {"path_config_source": {"path": lds.display().to_string()}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [
            bootstrap::static_cluster(KEY, &[upstream], "1s"),
            bootstrap::static_cluster("meshbreaker_sidecar", &[sidecar], "0.25s")
        ]}
    })
}

/// Writes the LDS file the way a control plane must: a new file renamed over the old one, so
/// Envoy's inotify watch sees one complete update.
fn write_lds(path: &Path, listener: &Value) -> Result {
    let tmp = path.with_extension("tmp");
    let doc = json!({"version_info": format!("{}", now_ms()), "resources": [listener]});
    fs::write(&tmp, doc.to_string()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

// ---------------------------------------------------------------------------------- processes

/// Builds a workspace binary (release) and returns its path.
fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    step(&format!("build {bin}"));
    harness::cargo::build_bin(package, bin, true)
}

/// The eBPF sidecar on `addr`, started and waited for (`/healthz`), its stderr in `log`.
fn start_sidecar(bin: &Path, addr: SocketAddr, log: &Path) -> Result<Sidecar> {
    let opts = SidecarOpts {
        log: Some(log.to_path_buf()),
        ..Default::default()
    };
    Sidecar::start(bin, addr, &opts)
}

// ------------------------------------------------------------------------------------ upstream

/// The demo upstream (`meshbreaker-demo upstream`, from `demo/`) with its fault switched over
/// its own control endpoint, `PUT /_demo/mode/<healthy|errors|slow|resets>`: 50 % 503s, 300 ms
/// per answer, or a TCP RST for every request.
struct Upstream {
    addr: SocketAddr,
    _proc: Proc,
}

impl Upstream {
    fn start(dir: &Path) -> Result<Upstream> {
        let bin = match std::env::var_os("MESHBREAKER_DEMO") {
            Some(p) => PathBuf::from(p),
            None => build_binary("meshbreaker-demo", "meshbreaker-demo")?,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let p = Proc::spawn_logged(
            "meshbreaker-demo upstream",
            Command::new(&bin)
                .arg("upstream")
                .arg("--listen")
                .arg(addr.to_string()),
            &dir.join("upstream.log"),
        )?;
        harness::wait_for(Duration::from_secs(20), || {
            matches!(
                harness::http_get(addr.port(), "/_demo/stats", None),
                Ok((200, _))
            )
            .then_some(())
        })
        .ok_or("the demo upstream did not answer within 20 s")?;
        if !p.is_running() {
            return Err("the demo upstream exited".into());
        }
        Ok(Upstream { addr, _proc: p })
    }

    fn set(&self, phase: Phase) -> Result {
        let mode = match phase {
            Phase::Healthy => "healthy",
            Phase::Failing => "errors",
            Phase::Slow => "slow",
            Phase::Resetting => "resets",
        };
        let mut s = TcpStream::connect(self.addr).map_err(|e| format!("demo upstream: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        write!(
            s,
            "PUT /_demo/mode/{mode} HTTP/1.1\r\nhost: demo\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .map_err(|e| format!("demo upstream: {e}"))?;
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        if reply.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("demo upstream refused mode {mode}: {reply:.200}"))
        }
    }
}

// ------------------------------------------------------------------------------ checking client

/// What the checking client saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    responses: u64,
    ok: u64,
    rejections: BTreeMap<String, u64>,
    upstream_answers: BTreeMap<u16, u64>,
    upstream_failures: BTreeMap<String, u64>,
    unexplained: u64,
    examples: Vec<String>,
    /// Connections Envoy closed between requests (drain after a reload), reopened.
    reconnects: u64,
    transport_errors: u64,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a keep-alive connection; `Ok(None)` if the server had closed it first.
fn exchange(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Reply>> {
    conn.get_mut()
        .write_all(b"GET /soak HTTP/1.1\r\nhost: soak\r\nx-soak-client: checker\r\n\r\n")?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            headers.push((k, v));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            conn.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    }
    Ok(Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// SPEC's rejection shape; `Err(why)` when a response says `x-meshbreaker: open` but is not it.
fn check_rejection(r: &Reply) -> std::result::Result<String, String> {
    let reason = r.header("x-meshbreaker-reason").unwrap_or_default();
    if r.status != 503 {
        return Err(format!("rejection with status {}", r.status));
    }
    if !["error_rate", "latency_p95", "kernel_resets", "forced_open"].contains(&reason) {
        return Err(format!("rejection reason {reason:?}"));
    }
    if r.header("content-type") != Some("application/json") {
        return Err("rejection without content-type application/json".into());
    }
    let retry_after: Option<u64> = r.header("retry-after").and_then(|v| v.parse().ok());
    let body: Value = serde_json::from_str(&r.body).map_err(|e| format!("body: {e}"))?;
    if body["error"] != "circuit_open" || body["key"] != KEY || body["reason"] != reason {
        return Err(format!("rejection body {}", r.body));
    }
    if retry_after.is_none() || body["retry_after_s"].as_u64() != retry_after {
        return Err(format!(
            "retry-after {:?} vs body {}",
            r.header("retry-after"),
            r.body
        ));
    }
    Ok(reason.to_string())
}

fn classify(r: &Reply, seen: &mut Seen) {
    seen.responses += 1;
    if (200..300).contains(&r.status) {
        seen.ok += 1;
        return;
    }
    let verdict = if r.header("x-meshbreaker") == Some("open") {
        check_rejection(r).map(|reason| *seen.rejections.entry(reason).or_default() += 1)
    } else if r.header("x-envoy-upstream-service-time").is_some() {
        // Only responses that came from the upstream carry it.
        *seen.upstream_answers.entry(r.status).or_default() += 1;
        Ok(())
    } else if r
        .body
        .starts_with("upstream connect error or disconnect/reset before headers")
        || r.body.starts_with("upstream request timeout")
    {
        let what = r.body.split(". ").last().unwrap_or(&r.body).to_string();
        *seen.upstream_failures.entry(what).or_default() += 1;
        Ok(())
    } else {
        Err("neither a rejection nor from the upstream".to_string())
    };
    if let Err(why) = verdict {
        seen.unexplained += 1;
        if seen.examples.len() < 5 {
            seen.examples.push(format!(
                "{} ({why}): {:?} {:.200}",
                r.status, r.headers, r.body
            ));
        }
    }
}

/// Requests at `rate` per second on one keep-alive connection until `stop`.
fn checker(port: u16, rate: f64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        if conn.is_none() {
            conn = TcpStream::connect(("127.0.0.1", port)).ok().map(|s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                BufReader::new(s)
            });
        }
        let Some(c) = conn.as_mut() else {
            if let Ok(mut s) = seen.lock() {
                s.transport_errors += 1;
            }
            continue;
        };
        let result = exchange(c);
        let mut s = match seen.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        match result {
            Ok(Some(r)) => {
                let close = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                classify(&r, &mut s);
                if close {
                    conn = None;
                }
            }
            Ok(None) => {
                s.reconnects += 1;
                conn = None;
                next = Instant::now();
            }
            Err(e) => {
                s.transport_errors += 1;
                if s.examples.len() < 5 {
                    s.examples.push(format!("transport error: {e}"));
                }
                conn = None;
            }
        }
    }
}

// ------------------------------------------------------------------------------------ sampling

#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    phase: &'static str,
    rss: u64,
    wasm: BTreeMap<String, u64>,
    /// meshbreaker metrics of `KEY`: `requests_total.<decision>`, `transitions_total.<to>`, `state`, ...
    filter: BTreeMap<String, u64>,
    checker_responses: u64,
    checker_non_2xx: u64,
}

fn stats(envoy: &Envoy) -> Result<Vec<(String, u64)>> {
    let body = envoy.admin_get("/stats")?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// `wasmcustom.key=.=demo;.;decision=.=allowed;.;meshbreaker_requests_total` → `requests_total.allowed`.
fn filter_metric(name: &str) -> Option<String> {
    let rest = name.strip_prefix(&format!("wasmcustom.key=.={KEY};.;"))?;
    let (tag, metric) = match rest.split_once(";.;") {
        Some((tag, metric)) => (tag.split_once("=.=").map(|(_, v)| v), metric),
        None => (None, rest),
    };
    let metric = metric.strip_prefix("meshbreaker_")?;
    Some(match tag {
        Some(t) => format!("{metric}.{t}"),
        None => metric.to_string(),
    })
}

fn sample(envoy: &Envoy, t: f64, phase: Phase, seen: &Seen) -> Result<Sample> {
    let mut s = Sample {
        t,
        phase: phase.name(),
        rss: envoy.rss_bytes()?,
        checker_responses: seen.responses,
        checker_non_2xx: seen.responses - seen.ok,
        ..Default::default()
    };
    for (k, v) in stats(envoy)? {
        if k.starts_with("wasm.") {
            s.wasm.insert(k, v);
        } else if let Some(m) = filter_metric(&k) {
            s.filter.insert(m, v);
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------- access log

#[derive(Debug, Default)]
struct Explained {
    lines: u64,
    ok: u64,
    rejections: BTreeMap<String, u64>,
    upstream_answers: BTreeMap<u16, u64>,
    upstream_failures: BTreeMap<String, u64>,
    /// `DC`: the client went away (oha stopping at the end with requests in flight).
    client_gone: u64,
    unexplained: BTreeMap<String, u64>,
}

/// Response flags that mean "the upstream failed" (Envoy's own words for it).
const UPSTREAM_FLAGS: [&str; 9] = ["UF", "URX", "UC", "UR", "UT", "UH", "UO", "UMSDR", "UPE"];

fn explain_access_log(path: &Path) -> Result<Explained> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut e = Explained::default();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut p = line.split(' ');
        let (Some(code), Some(flags), Some(mb), Some(reason), Some(host)) =
            (p.next(), p.next(), p.next(), p.next(), p.next())
        else {
            *e.unexplained
                .entry(format!("malformed: {line}"))
                .or_default() += 1;
            continue;
        };
        e.lines += 1;
        let code: u16 = code.parse().unwrap_or(0);
        if (200..300).contains(&code) {
            e.ok += 1;
        } else if mb == "open" && code == 503 {
            *e.rejections.entry(reason.to_string()).or_default() += 1;
        } else if flags.split(',').any(|f| UPSTREAM_FLAGS.contains(&f)) {
            *e.upstream_failures.entry(flags.to_string()).or_default() += 1;
        } else if flags == "-" && host != "-" {
            *e.upstream_answers.entry(code).or_default() += 1;
        } else if flags.split(',').any(|f| f == "DC") {
            e.client_gone += 1;
        } else {
            *e.unexplained
                .entry(format!("{code} {flags} {mb} {reason} {host}"))
                .or_default() += 1;
        }
    }
    Ok(e)
}

// ----------------------------------------------------------------------------------- the soak

struct Event {
    at: f64,
    what: String,
}

/// One soak with the filter `wasm` in the Envoy `envoy_bin` (the sidecar and the demo upstream
/// are built here); writes the soak section of `docs/RELIABILITY.md` unless `a.ci`.
pub fn run(a: &Opts, wasm: &Path, envoy_bin: &Path) -> Result {
    let commit = crate::fuzz::commit();
    let (wasm, envoy_bin) = (wasm.to_path_buf(), envoy_bin.to_path_buf());
    let oha = harness::oha_binary()?;
    let sidecar_bin = match std::env::var_os("MESHBREAKER_SIDECAR") {
        Some(p) => PathBuf::from(p),
        None => build_binary("meshbreaker-sidecar", "meshbreaker-sidecar")?,
    };
    let dir = root().join("target").join("soak");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    let total = a.duration;
    let phase_len = if a.ci {
        total.div_f64(CYCLE.len() as f64)
    } else {
        Duration::from_secs(15)
    };
    let warmup = if a.ci {
        Duration::from_secs(10)
    } else {
        total.mul_f64(0.2).max(Duration::from_secs(30))
    };
    step(&format!(
        "soak for {:.0}s: phases of {:.0}s, warm-up {:.0}s, reloads at {:?}, sidecar kills at {:?}",
        total.as_secs_f64(),
        phase_len.as_secs_f64(),
        warmup.as_secs_f64(),
        RELOADS.map(|f| (f * total.as_secs_f64()).round()),
        SIDECAR_KILLS.map(|f| (f * total.as_secs_f64()).round())
    ));

    let upstream = Upstream::start(&dir)?;
    let sidecar_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut sidecar = Some(start_sidecar(
        &sidecar_bin,
        sidecar_addr,
        &dir.join("sidecar-0.log"),
    )?);
    let port = free_port()?;
    let lds = dir.join("lds.json");
    let access_log = dir.join("access.log");
    write_lds(
        &lds,
        &listener(
            port,
            &wasm,
            &plugin_config(0, "meshbreaker_sidecar"),
            &access_log,
        ),
    )?;
    let yaml = bootstrap(&lds, upstream.addr, sidecar_addr).to_string();
    let envoy = Envoy::start(
        &envoy_bin,
        "soak",
        &yaml,
        &EnvoyOpts {
            concurrency: 2,
            cpus: None,
            log_level: "info".into(),
            extra_args: vec!["--drain-time-s".into(), "5".into()],
        },
    )?;
    harness::wait_for(Duration::from_secs(20), || {
        matches!(harness::http_get(port, "/", None), Ok((200, _))).then_some(())
    })
    .ok_or("the soak listener never answered 200")?;

    // Load: oha as fast as the machine goes (closed loop), and the checking client.
    let url = format!("http://127.0.0.1:{port}/");
    let load = Load {
        worker_threads: 1,
        ..Load::closed(&url, 32, total)
    };
    let oha_thread = std::thread::spawn(move || harness::run_oha(&oha, &load));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let checker_thread = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || checker(port, 50.0, stop, seen))
    };

    let started = Instant::now();
    let mut events: Vec<Event> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut phase_idx = usize::MAX;
    let mut reloads_done = 0usize;
    let mut kills_done = 0usize;
    let mut sidecar_down_since: Option<Instant> = None;
    let mut sidecar_starts = 1usize;
    let mut next_sample = Duration::ZERO;
    let lds_updates_before = envoy
        .stat("listener_manager.lds.update_success")?
        .unwrap_or(0);
    let log_event = |events: &mut Vec<Event>, t: f64, what: String| {
        eprintln!("  {t:>6.1}s  {what}");
        events.push(Event { at: t, what });
    };
    while started.elapsed() < total {
        let el = started.elapsed();
        let t = el.as_secs_f64();
        let frac = t / total.as_secs_f64();
        let idx = (el.as_secs_f64() / phase_len.as_secs_f64()) as usize % CYCLE.len();
        if idx != phase_idx {
            phase_idx = idx;
            upstream.set(CYCLE[idx])?;
            log_event(&mut events, t, format!("upstream {}", CYCLE[idx].name()));
        }
        if reloads_done < RELOADS.len() && frac >= RELOADS[reloads_done] {
            reloads_done += 1;
            write_lds(
                &lds,
                &listener(
                    port,
                    &wasm,
                    &plugin_config(reloads_done, "meshbreaker_sidecar"),
                    &access_log,
                ),
            )?;
            log_event(
                &mut events,
                t,
                format!("plugin configuration reload {reloads_done} through LDS"),
            );
        }
        if kills_done < SIDECAR_KILLS.len() && frac >= SIDECAR_KILLS[kills_done] {
            kills_done += 1;
            drop(sidecar.take());
            sidecar_down_since = Some(Instant::now());
            log_event(&mut events, t, format!("sidecar SIGKILLed ({kills_done})"));
        }
        if let Some(since) = sidecar_down_since {
            if since.elapsed() >= SIDECAR_DOWN {
                sidecar = Some(start_sidecar(
                    &sidecar_bin,
                    sidecar_addr,
                    &dir.join(format!("sidecar-{sidecar_starts}.log")),
                )?);
                sidecar_starts += 1;
                sidecar_down_since = None;
                log_event(&mut events, t, "sidecar restarted".into());
            }
        }
        if el >= next_sample {
            next_sample += Duration::from_secs(10);
            let snapshot = seen.lock().map(|s| s.clone()).unwrap_or_default();
            let s = sample(&envoy, t, CYCLE[phase_idx], &snapshot)?;
            eprintln!(
                "  {t:>6.1}s  rss {:.1} MiB  state {}  allowed {}  rejected {}  opened {}  vms {}  checker {} ({} non-2xx)",
                s.rss as f64 / (1 << 20) as f64,
                s.filter.get("state").copied().unwrap_or(0),
                s.filter.get("requests_total.allowed").copied().unwrap_or(0),
                s.filter.get("requests_total.rejected").copied().unwrap_or(0),
                s.filter.get("transitions_total.open").copied().unwrap_or(0),
                s.wasm.get("wasm.wasm_vm_count").copied().unwrap_or(0),
                s.checker_responses,
                s.checker_non_2xx
            );
            samples.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let oha_report = oha_thread
        .join()
        .map_err(|_| "the oha thread panicked".to_string())??;
    let _ = checker_thread.join();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    upstream.set(Phase::Healthy)?;
    let last = sample(&envoy, elapsed, Phase::Healthy, &seen)?;
    samples.push(last.clone());
    let lds_updates = envoy
        .stat("listener_manager.lds.update_success")?
        .unwrap_or(0)
        .saturating_sub(lds_updates_before);
    let envoy_log = fs::read_to_string(envoy.dir.join("envoy.log")).unwrap_or_default();
    drop(sidecar);
    // Give the access log its last flush (Envoy flushes every second by default).
    std::thread::sleep(Duration::from_millis(1500));
    let explained = explain_access_log(&access_log)?;

    // ---- verdicts
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warmup.as_secs_f64())
        .collect();
    let rss_base = warm.first().map_or(0, |s| s.rss);
    let rss_end = last.rss;
    let rss_max = warm.iter().map(|s| s.rss).max().unwrap_or(0);
    let rss_min = warm.iter().map(|s| s.rss).min().unwrap_or(0);
    let growth = if rss_base > 0 {
        rss_end as f64 / rss_base as f64 - 1.0
    } else {
        f64::NAN
    };
    if growth.is_nan() || growth > 0.05 {
        failures.push(format!(
            "RSS grew {:.1}% after the warm-up ({} → {} bytes), over 5%",
            growth * 100.0,
            rss_base,
            rss_end
        ));
    }
    let first_wasm = samples.first().map(|s| s.wasm.clone()).unwrap_or_default();
    let vm_failures: u64 = last
        .wasm
        .iter()
        .filter(|(k, _)| k.contains("reload") || k.contains("fail"))
        .filter(|(k, _)| !k.contains("remote_load"))
        .map(|(_, v)| *v)
        .sum();
    let traps = envoy_log
        .lines()
        .filter(|l| {
            l.contains("panicked") || l.contains("RuntimeError") || l.contains("Function: proxy_on")
        })
        .count();
    if vm_failures > 0 || traps > 0 {
        failures.push(format!(
            "wasm VMs failed: {vm_failures} in wasm.*reload*/fail* stats, {traps} trap/panic lines in the log"
        ));
    }
    if !explained.unexplained.is_empty() {
        failures.push(format!(
            "unexplained responses in the access log: {:?}",
            explained.unexplained
        ));
    }
    if seen.unexplained > 0 || seen.transport_errors > 0 {
        failures.push(format!(
            "the checking client saw {} unexplained responses and {} transport errors: {:?}",
            seen.unexplained, seen.transport_errors, seen.examples
        ));
    }
    if lds_updates < RELOADS.len() as u64 {
        failures.push(format!(
            "Envoy applied {lds_updates} LDS updates, {} were written",
            RELOADS.len()
        ));
    }
    if !envoy_log.contains("is back") {
        failures.push("the filter never logged the sidecar coming back".into());
    }
    // The breaker kept working: it opened after each reload (the failing, slow and resetting
    // phases all trip it), and it is closed again at the end of a healthy stretch.
    let opened_at = |t0: f64| -> u64 {
        let before = samples
            .iter()
            .rfind(|s| s.t <= t0)
            .and_then(|s| s.filter.get("transitions_total.open").copied())
            .unwrap_or(0);
        last.filter
            .get("transitions_total.open")
            .copied()
            .unwrap_or(0)
            .saturating_sub(before)
    };
    for (i, f) in RELOADS.iter().enumerate() {
        let t0 = f * total.as_secs_f64();
        if opened_at(t0) == 0 {
            failures.push(format!(
                "the breaker never opened after reload {} (t = {t0:.0}s)",
                i + 1
            ));
        }
    }
    if last
        .filter
        .get("transitions_total.closed")
        .copied()
        .unwrap_or(0)
        == 0
    {
        failures.push("the breaker never closed again".into());
    }
    if !envoy_is_alive(&envoy) {
        failures.push("Envoy is not running at the end".into());
    }

    write_samples(&dir.join("samples.csv"), &samples)?;
    plot(
        &dir.join("soak.svg"),
        &samples,
        &events,
        warmup.as_secs_f64(),
    );
    let report = Report {
        minutes: elapsed / 60.0,
        phase_len: phase_len.as_secs_f64(),
        oha: &oha_report,
        seen: &seen,
        explained: &explained,
        samples: &samples,
        events: &events,
        rss_base,
        rss_end,
        rss_min,
        rss_max,
        growth,
        vm_failures,
        traps,
        first_wasm: &first_wasm,
        lds_updates,
        failures: &failures,
        envoy_version: harness::envoy_version(&envoy_bin),
        commit,
    };
    let section = report.markdown();
    eprintln!("\n{section}");
    if !a.ci {
        let svg = root().join("docs").join("reliability-soak.svg");
        let _ = fs::copy(dir.join("soak.svg"), &svg);
        crate::fuzz::write_section("soak", &section)?;
        eprintln!("wrote docs/RELIABILITY.md (soak section) and docs/reliability-soak.svg");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("the soak failed:\n  - {}", failures.join("\n  - ")))
    }
}

fn envoy_is_alive(envoy: &Envoy) -> bool {
    Path::new(&format!("/proc/{}", envoy.pid)).exists()
        && matches!(
            envoy.admin_get("/ready").as_deref().map(str::trim),
            Ok("LIVE")
        )
}

fn write_samples(path: &Path, samples: &[Sample]) -> Result {
    let mut s = String::from(
        "t_s,phase,rss_bytes,state,allowed,rejected,probe,opened,half_opened,closed,kernel_resets,vm_count,vms_created,vms_active,checker_responses,checker_non_2xx\n",
    );
    for x in samples {
        let f = |k: &str| x.filter.get(k).copied().unwrap_or(0);
        let w = |k: &str| x.wasm.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            x.t,
            x.phase,
            x.rss,
            f("state"),
            f("requests_total.allowed"),
            f("requests_total.rejected"),
            f("requests_total.probe"),
            f("transitions_total.open"),
            f("transitions_total.half_open"),
            f("transitions_total.closed"),
            f("kernel_resets_total"),
            w("wasm.wasm_vm_count"),
            w("wasm.envoy.wasm.runtime.v8.created"),
            w("wasm.envoy.wasm.runtime.v8.active"),
            x.checker_responses,
            x.checker_non_2xx
        ));
    }
    fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

/// RSS over time and the filter's decisions per second, with the warm-up and events marked.
fn plot(path: &Path, samples: &[Sample], events: &[Event], warmup_s: f64) {
    use plotters::prelude::*;
    let Some(end) = samples.last().map(|s| s.t) else {
        return;
    };
    let root_area = SVGBackend::new(path, (960, 640)).into_drawing_area();
    let _ = root_area.fill(&WHITE);
    let (top, bottom) = root_area.split_vertically(320);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let lo = samples.iter().map(|s| mib(s.rss)).fold(f64::MAX, f64::min);
    let hi = samples.iter().map(|s| mib(s.rss)).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.2).max(2.0);
    if let Ok(mut chart) = ChartBuilder::on(&top)
        .caption(
            "Envoy RSS (MiB); grey: warm-up, blue: reload, red: sidecar killed / restarted",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, (lo - pad)..(hi + pad))
    {
        let _ = chart.configure_mesh().x_desc("seconds").draw();
        let _ = chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, lo - pad), (warmup_s, hi + pad)],
            RGBColor(235, 235, 235).filled(),
        )));
        for e in events.iter().filter(|e| !e.what.starts_with("upstream")) {
            let color = if e.what.contains("reload") { BLUE } else { RED };
            let _ = chart.draw_series(std::iter::once(PathElement::new(
                vec![(e.at, lo - pad), (e.at, hi + pad)],
                color.mix(0.5),
            )));
        }
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            samples
                .iter()
                .map(|s| (s.t, mib(s.rss)))
                .collect::<Vec<_>>(),
            BLACK.stroke_width(2),
        )));
    }
    let rate = |k: &str| -> Vec<(f64, f64)> {
        samples
            .windows(2)
            .map(|w| {
                let a = w[0].filter.get(k).copied().unwrap_or(0);
                let b = w[1].filter.get(k).copied().unwrap_or(0);
                let dt = (w[1].t - w[0].t).max(0.1);
                (w[1].t, b.saturating_sub(a) as f64 / dt)
            })
            .collect()
    };
    let allowed = rate("requests_total.allowed");
    let rejected = rate("requests_total.rejected");
    let top_rate = allowed
        .iter()
        .chain(rejected.iter())
        .map(|x| x.1)
        .fold(1.0, f64::max);
    if let Ok(mut chart) = ChartBuilder::on(&bottom)
        .caption(
            "decisions/s (black allowed, red rejected); upstream failing (red), slow (yellow), resetting (violet)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..top_rate * 1.1)
    {
        let _ = chart.configure_mesh().x_desc("seconds").draw();
        let phases: Vec<(f64, &str)> = events
            .iter()
            .filter_map(|e| e.what.strip_prefix("upstream ").map(|p| (e.at, p)))
            .collect();
        for (i, (at, phase)) in phases.iter().enumerate() {
            let until = phases.get(i + 1).map_or(end, |n| n.0);
            let color = match *phase {
                "failing" => RGBColor(255, 215, 215),
                "slow" => RGBColor(255, 245, 200),
                "resetting" => RGBColor(230, 215, 255),
                _ => continue,
            };
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(*at, 0.0), (until, top_rate * 1.1)],
                color.filled(),
            )));
        }
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            allowed,
            BLACK.stroke_width(2),
        )));
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            rejected,
            RED.stroke_width(2),
        )));
    }
    let _ = root_area.present();
}

struct Report<'a> {
    minutes: f64,
    phase_len: f64,
    oha: &'a harness::OhaReport,
    seen: &'a Seen,
    explained: &'a Explained,
    samples: &'a [Sample],
    events: &'a [Event],
    rss_base: u64,
    rss_end: u64,
    rss_min: u64,
    rss_max: u64,
    growth: f64,
    vm_failures: u64,
    traps: usize,
    first_wasm: &'a BTreeMap<String, u64>,
    lds_updates: u64,
    failures: &'a [String],
    envoy_version: String,
    commit: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

impl Report<'_> {
    fn markdown(&self) -> String {
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

    fn oha_version(&self) -> String {
        harness::oha_binary()
            .map(|b| harness::oha_version(&b))
            .unwrap_or_else(|_| "unknown".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The bootstrap and the three LDS listeners (start, two reloads), as Envoy reads them.
    #[test]
    fn bootstraps_match_their_snapshots() {
        use meshbreaker_harness::snapshot::check_bootstrap;
        let upstream: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let sidecar: SocketAddr = ([127, 0, 0, 1], 9911).into();
        let boot = bootstrap(Path::new("/snapshot/lds.json"), upstream, sidecar);
        check_bootstrap("soak", &boot.to_string()).unwrap();
        for variant in 0..3 {
            let l = listener(
                10_000,
                Path::new("/snapshot/meshbreaker.wasm"),
                &plugin_config(variant, "meshbreaker_sidecar"),
                Path::new("/snapshot/access.log"),
            );
            check_bootstrap(&format!("soak-listener-{variant}"), &l.to_string()).unwrap();
        }
    }
}

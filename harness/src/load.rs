//! Load for the experiments: oha (closed loop or fixed rate, parsed from its JSON report) and a
//! flood of one request per distinct `Host`, to grow a key table to a known size.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::read_response;
use crate::{output, run, step, Result};

/// The oha release installed when none is present (crates.io's newest when this was written).
pub const OHA_VERSION: &str = "1.16.0";

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
}

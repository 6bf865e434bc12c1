//! The processes a run starts: the fault upstream, the load client, the sidecar, and their priority.

use crate::util::Result;
use meshbreaker_harness::{self as harness, Proc};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The niceness the benchmark's own processes run at. Other builds share this machine's two
/// cores; a proxy or client that waits for the CPU shows up as a stall in every system's
/// timeline at once. Root may raise priority; elsewhere this is a no-op.
pub(super) const NICE: &str = "-10";

/// Raises the priority of every thread of `pid` (threads that exist already do not follow a
/// renice of the process; Envoy's workers exist once it is LIVE).
pub(super) fn renice(pid: u32) {
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
pub(super) fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
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

pub(super) struct FaultUpstream {
    pub(super) _proc: Proc,
    pub(super) _stdin: Option<ChildStdin>,
    pub(super) control: u16,
    pub(super) hosts: Vec<u16>,
}

impl FaultUpstream {
    pub(super) fn start(bin: &Path, hosts: usize) -> Result<FaultUpstream> {
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
    pub(super) fn set(&self, hosts: &[usize], query: &str) -> Result<u64> {
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

    pub(super) fn counts(&self) -> Result<Value> {
        match http(self.control, "GET", "/counts")? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("/counts: {e}")),
            (s, body) => Err(format!("/counts: {s} {body:.200}")),
        }
    }
}

/// The eBPF sidecar (`meshbreaker-sidecar`), for the reset-storm runs with `reset_signals`.
pub(super) struct Sidecar {
    pub(super) _running: harness::sidecar::Sidecar,
    pub(super) port: u16,
}

impl Sidecar {
    pub(super) fn start() -> Result<Sidecar> {
        if harness::sidecar::euid() != Some(0) {
            return Err("the reset-storm runs with the eBPF sidecar need root (BPF)".into());
        }
        let bin = harness::sidecar::binary(true)?;
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

//! The processes beside Envoy: the eBPF sidecar and the demo upstream with its fault switch.

use crate::util::{step, Result};
use meshbreaker_harness::sidecar::{Sidecar, SidecarOpts};
use meshbreaker_harness::{self as harness, Proc};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::config::*;
use super::schedule::*;

/// Builds a workspace binary (release) and returns its path.
pub(super) fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    step(&format!("build {bin}"));
    harness::cargo::build_bin(package, bin, true)
}

/// The eBPF sidecar on `addr`, started and waited for (`/healthz`), its stderr in `log`.
pub(super) fn start_sidecar(bin: &Path, addr: SocketAddr, log: &Path) -> Result<Sidecar> {
    let opts = SidecarOpts {
        log: Some(log.to_path_buf()),
        ..Default::default()
    };
    Sidecar::start(bin, addr, &opts)
}

/// The demo upstream (`meshbreaker-demo upstream`, from `demo/`) with its fault switched over
/// its own control endpoint, `PUT /_demo/mode/<healthy|errors|slow|resets>`: 50 % 503s, 300 ms
/// per answer, or a TCP RST for every request.
pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    pub(super) _proc: Proc,
}

impl Upstream {
    pub(super) fn start(dir: &Path) -> Result<Upstream> {
        let bin = meshbreaker_harness::binary_from_env("MESHBREAKER_DEMO")
            .unwrap_or_else(|| build_binary("meshbreaker-demo", "meshbreaker-demo"))?;
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

    pub(super) fn set(&self, phase: Phase) -> Result {
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

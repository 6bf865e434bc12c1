//! The real stack, once, for everything that runs it: the integration tests (`tests/`), the
//! sidecar's tests, and the experiments behind `cargo xtask` (demo, benchmarks, soak).
//!
//! Blocking and std-only: the experiments run no async runtime, and the tests wrap what they need.
//!
//! * [`envoy`]: start an Envoy from a bootstrap, wait until LIVE, read ports and stats from admin;
//!   hot restart off ([`envoy::NO_HOT_RESTART`]), so any number run side by side.
//! * [`cargo`]: workspace binaries built on demand, found through cargo's JSON.
//! * [`process`]: supervised children (own group, death signal, killed on drop and at exit).
//! * [`bootstrap`]: bootstrap pieces; [`snapshot`]: generated bootstraps held to committed files.
//! * [`http`]: a tiny blocking HTTP/1.1 client.
//! * [`load`]: oha runs and parsed reports, one request per distinct `Host`.
//! * [`procfs`]: CPU time, RSS, pinning, `perf` per shared object, the machine.
//! * [`prom`]: the Prometheus text format Envoy's `/stats/prometheus` serves, parsed.
//! * [`sidecar`]: the eBPF sidecar: preflight (root, BTF, tracefs), binary, start.
//! * [`stats`]: median and spread that ignore failed rounds.

pub mod bootstrap;
pub mod cargo;
pub mod envoy;
pub mod http;
pub mod load;
pub mod process;
pub mod procfs;
pub mod prom;
pub mod sidecar;
pub mod snapshot;
pub mod stats;

pub use envoy::{envoy_version, Envoy, EnvoyOpts};
pub use http::http_get;
pub use load::{flood_hosts, oha_binary, oha_version, run_oha, Load, OhaReport};
pub use process::Proc;
pub use procfs::{perf_available, perf_dso_profile, pin, proc_cpu_time, proc_rss_bytes, Machine};
pub use stats::{median, spread};

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the experiments' steps return: a message for the person running them on failure.
pub type Result<T = ()> = std::result::Result<T, String>;

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The prebuilt binary an environment variable names (`MESHBREAKER_ENVOY`, `MESHBREAKER_SIDECAR`):
/// `None` when it is unset, an error naming the variable when it names no file.
pub fn binary_from_env(var: &str) -> Option<Result<PathBuf>> {
    let p = PathBuf::from(std::env::var_os(var)?);
    Some(if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{var}={} is not a file", p.display()))
    })
}

/// Announces a step on stderr.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs `cmd` (echoed first) to completion; `Err` unless it exits 0.
pub fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// `cmd`'s stdout when it runs and exits 0.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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

//! `cargo xtask demo`: the whole local stack on this machine, no Docker, driven through its
//! phases and watched live.
//!
//! With what `cargo xtask demo` installed and built (the filter, the pinned Envoy, the demo
//! binaries), it starts the demo upstream, the eBPF sidecar (when root and the kernel allow), and
//! Envoy with the filter at `--concurrency 2` on `envoy-config/demo.yaml` (moved to free ports), then runs
//! `meshbreaker-demo drive`: healthy → 50% errors → recovery → slow → recovery → resets →
//! recovery, a live line per second, a summary table and `target/demo/timeline.svg`.
//!
//! Why a supervisor that owns every child: a demo interrupted with Ctrl-C must not leave an
//! Envoy holding ports or a sidecar holding BPF programs. Each child runs in its own process
//! group (so the terminal's SIGINT reaches only this supervisor, which then stops them in order)
//! and with `PR_SET_PDEATHSIG` (so even a SIGKILLed supervisor takes them along); the guard kills
//! each group on drop. `--ci` checks exactly that: it interrupts a second demo and verifies that
//! none of the processes it started is left.
//!
//! ## Layout, one job per file
//! This file holds the run: the stack started, driven and stopped. `supervise` holds the
//! children and Ctrl-C, `check` is `--ci`'s checks of a finished run, and `live` reads the
//! transitions the filter logged, which the replay of the demo's access log is held to.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshbreaker_harness::http_get;
use meshbreaker_harness::sidecar::{Sidecar, SidecarOpts};
use meshbreaker_harness::Proc;

use crate::util::{root, step, Result};

mod check;
pub mod live;
mod supervise;

use check::*;
use supervise::*;

/// One demo run.
pub struct Opts {
    /// Short and asserted: the summary, the picture, the replay against the live filter, and an
    /// interrupted second demo leaving nothing behind.
    pub ci: bool,
    /// Comma-separated phases.
    pub phases: String,
    /// Seconds per phase.
    pub duration: f64,
    /// Seconds more for each recovery phase.
    pub recovery_extra: f64,
    /// Requests per second.
    pub rate: u32,
    /// Where the logs, the summary and the picture go.
    pub out: PathBuf,
}

impl Opts {
    /// The demo's defaults for what the command line left out: every phase, 10 s each at 100
    /// requests/s (4 s with `ci`), and 5 s more for each recovery (4 s with `ci`: the demo's
    /// `max_sleep_window` is 4 s, so an 8 s recovery outlasts the longest open, 4.8 s).
    pub fn new(
        ci: bool,
        phases: Option<String>,
        duration: Option<f64>,
        rate: Option<u32>,
        out: PathBuf,
    ) -> Result<Opts> {
        let duration = duration.unwrap_or(if ci { 4.0 } else { 10.0 });
        if duration <= 0.0 {
            return Err("--duration must be positive".into());
        }
        Ok(Opts {
            ci,
            phases: phases
                .unwrap_or_else(|| "healthy,errors,recovery,slow,recovery,resets,recovery".into()),
            duration,
            recovery_extra: if ci { 4.0 } else { 5.0 },
            rate: rate.unwrap_or(100),
            out,
        })
    }
}

/// Why the sidecar cannot run here, if it cannot.
pub fn sidecar_unavailable() -> Option<String> {
    if std::env::var_os("MESHBREAKER_DEMO_NO_SIDECAR").is_some() {
        return Some("MESHBREAKER_DEMO_NO_SIDECAR is set".into());
    }
    meshbreaker_harness::sidecar::unavailable()
}

/// `envoy-config/demo.yaml` on the given ports, loopback only, with an absolute wasm path.
fn demo_bootstrap(
    wasm: &Path,
    listener: u16,
    admin: u16,
    upstream: u16,
    sidecar: u16,
) -> Result<String> {
    let src = root().join("envoy-config").join("demo.yaml");
    let text = fs::read_to_string(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut out = text;
    for (from, to) in [
        (
            "address: 0.0.0.0, port_value: 10000".to_owned(),
            format!("address: 127.0.0.1, port_value: {listener}"),
        ),
        (
            "port_value: 9901 }".to_owned(),
            format!("port_value: {admin} }}"),
        ),
        (
            "port_value: 8080 }".to_owned(),
            format!("port_value: {upstream} }}"),
        ),
        (
            "port_value: 9911 }".to_owned(),
            format!("port_value: {sidecar} }}"),
        ),
        (
            "filename: target/dist/meshbreaker.wasm".to_owned(),
            format!("filename: {}", wasm.display()),
        ),
    ] {
        let n = out.matches(&from).count();
        if n != 1 {
            return Err(format!(
                "{}: expected {from:?} once, found it {n} times",
                src.display()
            ));
        }
        out = out.replace(&from, &to);
    }
    Ok(out)
}

/// Envoy's log line: `[epoch seconds.milliseconds][thread][level][logger] message`.
const LOG_FORMAT: &str = "[%E.%e][%t][%l][%n] %v";

/// `--recheck`: `--ci`'s summary, picture and replay checks on the `out` dir of a past run.
pub fn recheck(out: &Path) -> Result {
    check_summary(out)?;
    check_replay(out)
}

/// One demo with the filter `wasm` in the Envoy `envoy`, the demo binaries (and the sidecar, when
/// it can run) built in `target/debug`.
pub fn run(o: &Opts, wasm: &Path, envoy: &Path) -> Result {
    install_signal_handlers();
    let started = Instant::now();
    let (wasm, envoy) = (wasm.to_path_buf(), envoy.to_path_buf());
    let bin = root().join("target").join("debug");
    fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;

    let (listener, admin, upstream, sidecar) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let bootstrap = o.out.join("envoy.yaml");
    fs::write(
        &bootstrap,
        demo_bootstrap(&wasm, listener, admin, upstream, sidecar)?,
    )
    .map_err(|e| format!("{}: {e}", bootstrap.display()))?;

    step("start the stack");
    let mut sup = Supervisor::default();
    let up_log = log_file(&o.out, "upstream")?;
    sup.spawn(
        "upstream",
        Command::new(bin.join("meshbreaker-demo"))
            .args(["upstream", "--listen", &format!("127.0.0.1:{upstream}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(up_log),
    )?;
    wait_for("the upstream", &mut sup, 10, || {
        http_get(upstream, "/_demo/stats", None).is_ok()
    })?;

    let kernel = match sidecar_unavailable() {
        Some(why) => Err(why),
        None => {
            let addr = SocketAddr::from(([127, 0, 0, 1], sidecar));
            let opts = SidecarOpts {
                log: Some(o.out.join("sidecar.log")),
                ..Default::default()
            };
            // A sidecar that does not come up leaves the demo without kernel signals, not
            // without a demo.
            Sidecar::start(&bin.join("meshbreaker-sidecar"), addr, &opts)
                .map(|s| sup.sidecar = Some(s))
        }
    };
    match &kernel {
        Ok(()) => eprintln!("kernel signals: on (meshbreaker-sidecar on 127.0.0.1:{sidecar})"),
        Err(why) => eprintln!("kernel signals: off ({why})"),
    }

    let envoy_log = log_file(&o.out, "envoy")?;
    // The bootstrap's JSON access log goes to stdout: access.log, replayed by `--ci`.
    let access_log = log_file(&o.out, "access")?;
    let opts = meshbreaker_harness::EnvoyOpts {
        concurrency: 2,
        log_level: "info".into(),
        // Epoch seconds, so the filter's transition lines share the access log's clock.
        extra_args: vec!["--log-format".into(), LOG_FORMAT.into()],
        ..Default::default()
    };
    let mut cmd = meshbreaker_harness::envoy::command(
        &envoy,
        &bootstrap,
        &o.out.join("admin-address.txt"),
        &opts,
    );
    sup.spawn("envoy", cmd.stdout(access_log).stderr(envoy_log))?;
    wait_for("Envoy", &mut sup, 60, || {
        matches!(http_get(admin, "/ready", None), Ok((200, _)))
    })
    .map_err(|e| format!("{e} (see {})", o.out.join("envoy.log").display()))?;
    eprintln!(
        "envoy: listener 127.0.0.1:{listener}, admin http://127.0.0.1:{admin}/stats/prometheus, \
         upstream 127.0.0.1:{upstream}; logs in {}",
        o.out.display()
    );
    let prom = start_prometheus(o, &mut sup, admin, sidecar, kernel.is_ok())?;

    step(&format!("drive: {} ({} s per phase)", o.phases, o.duration));
    sup.spawn(
        "driver",
        Command::new(bin.join("meshbreaker-demo"))
            .args([
                "drive",
                "--target",
                &format!("http://127.0.0.1:{listener}/demo"),
            ])
            .args(["--admin", &format!("http://127.0.0.1:{admin}")])
            .args(["--upstream", &format!("http://127.0.0.1:{upstream}")])
            .args(["--phases", &o.phases, "--duration", &o.duration.to_string()])
            .args(["--recovery-extra", &o.recovery_extra.to_string()])
            .args(["--rate", &o.rate.to_string()])
            .arg("--out")
            .arg(&o.out)
            .stdin(Stdio::null()),
    )?;
    let drive_started_s = crate::prometheus::now_s();
    let pids: Vec<String> = sup.pids().iter().map(u32::to_string).collect();
    fs::write(o.out.join("pids"), pids.join("\n")).map_err(|e| e.to_string())?;

    // Wait for the driver; anything else dying first, or Ctrl-C, ends the demo.
    let status = loop {
        if interrupted() {
            sup.stop_all();
            eprintln!("\ninterrupted: stopped everything the demo started");
            return Err("interrupted".into());
        }
        let driver = sup.children.iter().find(|c| c.name() == "driver");
        if let Some(status) = driver.and_then(Proc::exited) {
            break status;
        }
        if let Some(e) = sup.exited() {
            return Err(format!("{e} during the run (logs in {})", o.out.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        sup.stop_all();
        return Err(format!("the driver failed ({status})"));
    }
    if let (true, Some(port)) = (o.ci, prom) {
        let checked = check_prometheus(&o.out, port, drive_started_s);
        sup.stop_all();
        checked?;
    }
    sup.stop_all();
    eprintln!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    if o.ci {
        check_summary(&o.out)?;
        check_replay(&o.out)?;
        check_interrupt_leaves_nothing()?;
        eprintln!(
            "demo --ci: all checks passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Prometheus beside the stack (module `prometheus`), when Debian's package is installed: one
/// line with its URL, or one line saying why there is none. `--ci` needs it.
fn start_prometheus(
    o: &Opts,
    sup: &mut Supervisor,
    admin: u16,
    sidecar: u16,
    sidecar_running: bool,
) -> Result<Option<u16>> {
    let Some(bin) = crate::prometheus::binary() else {
        let why = "prometheus: not installed (Debian package prometheus, which the demo installs when it runs as root), so no Prometheus beside the demo";
        if o.ci {
            return Err(format!(
                "demo --ci checks the shipped PromQL against a real Prometheus: {why}"
            ));
        }
        eprintln!("{why}");
        return Ok(None);
    };
    let port = free_port()?;
    let mut cmd =
        crate::prometheus::prepare(&bin, &o.out.join("prometheus"), port, admin, sidecar)?;
    sup.spawn("prometheus", cmd.stderr(log_file(&o.out, "prometheus")?))?;
    wait_for("Prometheus", sup, 60, || crate::prometheus::ready(port))
        .map_err(|e| format!("{e} (see {})", o.out.join("prometheus.log").display()))?;
    eprintln!(
        "prometheus: http://127.0.0.1:{port}/ (scrapes Envoy and the sidecar{}, evaluates observability/rules/ with `for: {}`; try /alerts)",
        if sidecar_running { "" } else { ", which is off: MeshbreakerSidecarDown fires" },
        crate::prometheus::DEMO_FOR
    );
    Ok(Some(port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// `envoy-config/demo.yaml` with the demo's ports and wasm path, as Envoy reads it.
    #[test]
    fn the_bootstrap_matches_its_snapshot() {
        let boot = demo_bootstrap(
            Path::new("/snapshot/meshbreaker.wasm"),
            10_000,
            9901,
            8080,
            9911,
        )
        .unwrap();
        meshbreaker_harness::snapshot::check_bootstrap("demo", &boot).unwrap();
    }
}

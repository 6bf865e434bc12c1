//! `cargo xtask demo`: the whole local stack on this machine, no Docker, driven through its
//! phases and watched live.
//!
//! With what `cargo xtask demo` installed and built (the filter, the pinned Envoy, the demo
//! binaries), it starts the demo upstream, the eBPF sidecar (when root and the kernel allow), and Envoy with the filter at
//! `--concurrency 2` on `envoy-config/demo.yaml` (moved to free ports), then runs
//! `meshbreaker-demo drive`: healthy → 50% errors → recovery → slow → recovery → resets →
//! recovery, a live line per second, a summary table and `target/demo/timeline.svg`.
//!
//! Why a supervisor that owns every child: a demo interrupted with Ctrl-C must not leave an
//! Envoy holding ports or a sidecar holding BPF programs. Each child runs in its own process
//! group (so the terminal's SIGINT reaches only this supervisor, which then stops them in order)
//! and with `PR_SET_PDEATHSIG` (so even a SIGKILLed supervisor takes them along); the guard kills
//! each group on drop. `--ci` checks exactly that: it interrupts a second demo and verifies that
//! none of the processes it started is left.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use meshbreaker_harness::Proc;

use crate::util::{root, step, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

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

/// The processes the demo started (each a supervised [`Proc`]: its own process group, killed if
/// xtask dies), stopped (SIGTERM, then SIGKILL after 5 s) in reverse order.
#[derive(Default)]
struct Supervisor {
    children: Vec<Proc>,
}

impl Supervisor {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<u32> {
        let p = Proc::spawn(name, cmd)?.term_grace(Duration::from_secs(5));
        let pid = p.pid();
        self.children.push(p);
        Ok(pid)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Proc::pid).collect()
    }

    /// The first child that exited, with its status.
    fn exited(&mut self) -> Option<String> {
        self.children
            .iter()
            .find_map(|c| Some(format!("{} exited ({})", c.name(), c.exited()?)))
    }

    fn stop_all(&mut self) {
        for c in self.children.iter().rev() {
            c.terminate();
        }
        while let Some(mut c) = self.children.pop() {
            c.stop();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
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

fn log_file(out: &Path, name: &str) -> Result<fs::File> {
    let p = out.join(format!("{name}.log"));
    fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
}

fn wait_for(
    what: &str,
    sup: &mut Supervisor,
    secs: u64,
    mut ready: impl FnMut() -> bool,
) -> Result {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut told = 0;
    while Instant::now() < deadline {
        if ready() {
            if told > 0 {
                eprintln!("{what} ready after {:.1} s", start.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        let waited = start.elapsed().as_secs();
        if waited >= 2 && waited / 2 > told {
            told = waited / 2;
            eprintln!("  … waiting for {what} ({waited} s of at most {secs} s)");
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        if let Some(e) = sup.exited() {
            return Err(format!("{e} while waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready within {secs} s"))
}

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
        http_get(upstream, "/_demo/stats").is_some()
    })?;

    let kernel = match sidecar_unavailable() {
        Some(why) => Err(why),
        None => {
            let log = log_file(&o.out, "sidecar")?;
            sup.spawn(
                "meshbreaker-sidecar",
                Command::new(bin.join("meshbreaker-sidecar"))
                    .args(["--listen", &format!("127.0.0.1:{sidecar}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log),
            )?;
            match wait_for("the sidecar", &mut sup, 15, || {
                http_get(sidecar, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            }) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Drop the failed sidecar but keep the rest.
                    if let Some(i) = sup
                        .children
                        .iter()
                        .position(|c| c.name() == "meshbreaker-sidecar")
                    {
                        sup.children.remove(i);
                    }
                    let log = fs::read_to_string(o.out.join("sidecar.log")).unwrap_or_default();
                    Err(format!("{e}; {}", log.lines().last().unwrap_or("no log")))
                }
            }
        }
    };
    match &kernel {
        Ok(()) => eprintln!("kernel signals: on (meshbreaker-sidecar on 127.0.0.1:{sidecar})"),
        Err(why) => eprintln!("kernel signals: off ({why})"),
    }

    let envoy_log = log_file(&o.out, "envoy")?;
    // The bootstrap's JSON access log goes to stdout: access.log, replayed by `--ci`.
    let access_log = log_file(&o.out, "access")?;
    sup.spawn(
        "envoy",
        Command::new(&envoy)
            .current_dir(root())
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--concurrency",
                "2",
                meshbreaker_harness::envoy::NO_HOT_RESTART,
                "--log-level",
                "info",
                // Epoch seconds, so the filter's transition lines share the access log's clock.
                "--log-format",
                LOG_FORMAT,
            ])
            .stdin(Stdio::null())
            .stdout(access_log)
            .stderr(envoy_log),
    )?;
    wait_for("Envoy", &mut sup, 60, || {
        http_get(admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
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
        if INTERRUPTED.load(Ordering::SeqCst) {
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

/// `--ci`: the shipped PromQL against the demo's series, and `MeshbreakerCircuitOpen` firing in
/// every failing phase and resolved after the last recovery; the timeline goes to `alerts.txt`.
fn check_prometheus(out: &Path, port: u16, t0: f64) -> Result {
    step("demo --ci: the shipped rules, dashboard and docs PromQL against the real Prometheus");
    let p = out.join("summary.json");
    let report: Value =
        serde_json::from_str(&fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    let key = report["key"].as_str().ok_or("summary.json has no key")?;
    let phases = report["phases"]
        .as_array()
        .ok_or("summary.json has no phases")?;
    // The last scrape and evaluation of the final state: wait for the alert to resolve.
    let alert = "MeshbreakerCircuitOpen";
    let deadline = Instant::now() + Duration::from_secs(15);
    let resolved_at = loop {
        let now = crate::prometheus::now_s();
        let firing = crate::prometheus::firing(port, alert, key, now - 1.0, now)?;
        if firing.is_empty() {
            break now - t0;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{alert} for key {key} still firing 15 s after the demo ended"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let checked = crate::prometheus::check_expressions(port)?;
    let intervals = crate::prometheus::firing(port, alert, key, t0, t0 + resolved_at)?;
    let mut lines = vec![format!(
        "{alert}{{key=\"{key}\"}} (for: {}), seconds since the drive started:",
        crate::prometheus::DEMO_FOR
    )];
    let mut problems = Vec::new();
    for ph in phases {
        let name = ph["name"].as_str().unwrap_or("?");
        let (start, end) = (
            ph["start_s"].as_f64().unwrap_or(0.0),
            ph["end_s"].as_f64().unwrap_or(0.0),
        );
        let fired: Vec<String> = intervals
            .iter()
            .filter(|(from, _)| *from >= start && *from < end)
            .map(|(from, to)| format!("firing {from:.1}–{to:.1}"))
            .collect();
        lines.push(format!(
            "  {name:<9} {start:5.1}–{end:5.1}  {}",
            if fired.is_empty() {
                "—".to_owned()
            } else {
                fired.join(", ")
            }
        ));
        let grace = crate::prometheus::FIRING_GRACE_S;
        if ph["fault"] != "healthy"
            && !intervals
                .iter()
                .any(|(from, _)| *from >= start && *from < end + grace)
        {
            problems.push(format!(
                "{alert} did not fire during phase {name} ({start:.1}–{end:.1} s, or {grace} s after)"
            ));
        }
    }
    let last_end = phases
        .last()
        .and_then(|p| p["end_s"].as_f64())
        .unwrap_or(0.0);
    lines.push(format!(
        "  resolved: not firing at {resolved_at:.1} s (the last phase ended at {last_end:.1} s)"
    ));
    let text = lines.join("\n");
    eprintln!("{text}");
    let _ = fs::write(out.join("alerts.txt"), format!("{text}\n"));
    if intervals.is_empty() {
        problems.push(format!("{alert} never fired for key {key}"));
    }
    if problems.is_empty() {
        eprintln!("prometheus: {checked} expressions return series; {alert} fired in every failing phase and resolved");
        Ok(())
    } else {
        Err(format!("demo --ci:\n  {}", problems.join("\n  ")))
    }
}

/// `--ci`: every failing phase opened the circuit, every recovery closed it, and the picture
/// has its state bands and every phase's label.
fn check_summary(out: &Path) -> Result {
    step("demo --ci: check the summary and timeline.svg");
    let p = out.join("summary.json");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let phases = report["phases"]
        .as_array()
        .ok_or("summary.json has no phases")?;
    let mut problems = Vec::new();
    for ph in phases {
        let name = ph["name"].as_str().unwrap_or("?");
        let start = ph["start_s"].as_f64().unwrap_or(0.0);
        if ph["fault"] != "healthy" {
            if ph["time_to_open_s"].is_null() {
                problems.push(format!(
                    "phase {name} at {start:.1}s never opened the circuit"
                ));
            }
            if ph["rejected"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!(
                    "phase {name} at {start:.1}s spared the upstream no request"
                ));
            }
        }
        if name == "recovery" && (ph["time_to_close_s"].is_null() || ph["state_at_end"] != 0) {
            problems.push(format!(
                "recovery at {start:.1}s did not close the circuit (state at end {})",
                ph["state_at_end"]
            ));
        }
    }
    let svg_path = out.join("timeline.svg");
    let svg = fs::read_to_string(&svg_path).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    for (what, color) in [("closed", "#4CAF50"), ("open", "#E53935")] {
        if !svg.contains(&format!("fill=\"{color}\"")) {
            problems.push(format!(
                "timeline.svg has no {what} state band (fill {color})"
            ));
        }
    }
    let labels: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("</text>").map(|(text, _)| text.trim()))
        .collect();
    for ph in phases {
        let name = ph["name"].as_str().unwrap_or("?");
        if !labels.contains(&name) {
            problems.push(format!("timeline.svg does not label phase {name}"));
        }
    }
    if problems.is_empty() {
        eprintln!(
            "summary: {} phases as expected; timeline.svg has its state bands and labels",
            phases.len()
        );
        Ok(())
    } else {
        Err(format!("demo --ci:\n  {}", problems.join("\n  ")))
    }
}

/// `--ci`: the demo's own access log, replayed with the demo's configuration (taken from the
/// bootstrap Envoy ran, as `meshbreaker check` finds it), gives the transitions the filter
/// logged live: same keys, same transitions in the same order with the same reasons, each within
/// one bucket (`window` / `buckets`). The replay takes from the filter's log what the access log
/// lacks: each opening's jitter draw (recovered from the logged `open_for_ms`), and its end as
/// a bound ([`live::held_to_live`]). Kernel episodes
/// (`kernel_resets` trips: the sidecar's signal, not in the access log) are held to the looser
/// rule of [`crate::live::compare`], explained in docs/replay.md.
fn check_replay(out: &Path) -> Result {
    use crate::live;
    step("demo --ci: replay the demo's access log and compare with the filter's live transitions");
    let bootstrap = out.join("envoy.yaml");
    let cfg = meshbreaker_cli::load_config(&bootstrap)?;
    let log_path = out.join("envoy.log");
    let envoy_log =
        fs::read_to_string(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let live_transitions = live::parse_envoy_log(&envoy_log)?;
    let openings = live::openings(&live_transitions, &cfg)?;
    let tolerance_ms = policy_core::window::bucket_ms(&cfg.breaker);
    let mut replays = [live::held_to_live(cfg, openings, tolerance_ms)];
    let access = out.join("access.log");
    let file = fs::File::open(&access).map_err(|e| format!("{}: {e}", access.display()))?;
    meshbreaker_cli::replay_stream(file, &mut replays, |_| {})
        .map_err(|e| format!("{}: {e}", access.display()))?;
    let [replay] = replays;
    let (totals, keys) = replay.finish();
    let c = live::compare(&live_transitions, &keys, tolerance_ms);
    eprintln!(
        "access.log: {} lines, {} replayed, {} answered locally (rejected live), {} unreadable",
        totals.lines, totals.replayed, totals.answered_locally, totals.unreadable
    );
    eprint!("{}", c.table());
    let max_delta = c
        .pairs
        .iter()
        .filter(|p| !p.kernel_episode)
        .map(|p| p.delta_ms().unsigned_abs())
        .max()
        .unwrap_or(0);
    let summary = format!(
        "{} transitions paired, largest difference outside kernel episodes {max_delta} ms \
         (tolerance: one bucket, {tolerance_ms} ms); kernel episodes: {} kernel-only (the \
         replay stayed closed), {} transitions inside them not paired",
        c.pairs.len(),
        c.kernel_only.len(),
        c.kernel_skipped
    );
    let _ = fs::write(
        out.join("replay-vs-live.txt"),
        format!("{}\n{summary}\n", c.table()),
    );
    if c.agrees() {
        eprintln!("replay agrees with the live filter: {summary}");
        Ok(())
    } else {
        Err(format!(
            "demo --ci: the replay of access.log disagrees with the filter's log:\n  {}",
            c.problems.join("\n  ")
        ))
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose: it holds no port and runs no code.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Starts a second demo (no build), interrupts it with SIGINT once traffic flows, and checks that
/// it exits and that none of the processes it started is left.
fn check_interrupt_leaves_nothing() -> Result {
    step("demo --ci: Ctrl-C stops everything the demo started");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Rebuilt while running: Linux reports the old inode as "<path> (deleted)".
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => PathBuf::from(p),
        None => exe,
    };
    let out = root().join("target").join("demo").join("interrupt");
    let _ = fs::remove_file(out.join("pids"));
    let mut child = Command::new(exe)
        .args([
            "demo",
            "--skip-build",
            "--phases",
            "healthy",
            "--duration",
            "120",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the second demo: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    let pids = loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "the second demo never started driving:\n{}",
                seen.join("\n")
            ));
        }
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        if let Ok(text) = fs::read_to_string(out.join("pids")) {
            let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
            if pids.len() >= 3 {
                break pids;
            }
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!(
                "the second demo exited early ({s}):\n{}",
                seen.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the interrupted demo did not exit within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("processes left after Ctrl-C: {left:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "interrupted demo exited ({status}); none of its {} processes ({pids:?}) is left",
        pids.len()
    );
    Ok(())
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

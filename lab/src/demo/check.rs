//! `--ci`'s checks of a finished demo: the summary and the picture, the shipped PromQL against
//! a real Prometheus, the replay of the demo's access log held to the filter's live
//! transitions ([`super::live`]), and Ctrl-C leaving no process behind.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{root, step, Result};

use super::live;

/// `--ci`: the shipped PromQL against the demo's series, and `MeshbreakerCircuitOpen` firing in
/// every failing phase and resolved after the last recovery; the timeline goes to `alerts.txt`.
pub(super) fn check_prometheus(out: &Path, port: u16, t0: f64) -> Result {
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
pub(super) fn check_summary(out: &Path) -> Result {
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
/// rule of [`live::compare`], explained in docs/replay.md.
pub(super) fn check_replay(out: &Path) -> Result {
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
pub(super) fn check_interrupt_leaves_nothing() -> Result {
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

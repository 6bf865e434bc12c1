//! `cargo xtask soak [--minutes N] [--ci | --reanalyse]`: the real Envoy (`--concurrency 2`), the
//! real filter and the real eBPF sidecar for minutes at the load the machine sustains (oha), while
//! the upstream flaps healthy → failing → healthy → slow → healthy → resetting, the plugin
//! configuration is reloaded twice through LDS (a listener from a file, replaced by an atomic
//! rename, as Istio's pushes do) and the sidecar is SIGKILLed and restarted twice. Writes the
//! soak's figures into `docs/RELIABILITY.md` (its `soak-…` generated sections; the prose around
//! them is written by hand) and `docs/reliability-soak.svg`, and keeps what it measured in
//! `target/soak/`: `summary.json` (everything the report is drawn from), `samples.csv` and
//! `soak.svg`.
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
//! `--reanalyse`: the verdicts, the sections and the picture again from
//! `target/soak/summary.json`, without measuring.
//! `MESHBREAKER_SIDECAR` and `MESHBREAKER_DEMO` name prebuilt sidecar and demo binaries (else
//! they are built here), `MESHBREAKER_ENVOY` the Envoy.
//! The sidecar needs root (BPF): the soak fails loudly without it.
//!
//! ## Layout, one job per file, no import circle
//! This file holds the run and the entry points. `schedule` is the key, the phases and the
//! events' times; `config` writes the plugin configurations, the listener and the bootstrap,
//! `stack` starts the sidecar and the demo upstream, `client` is the checking client, `sampling`
//! and `access_log` gather and explain what happened, `summary` is what a soak measured and its
//! JSON, `analyse` the verdicts, `svg` draws the picture and `report` writes the sections. None of
//! them uses this file or one that uses it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::docs::{self, first_line, Environment};
use crate::util::{root, step, Result};
use meshbreaker_harness::{self as harness, Envoy, EnvoyOpts, Load};

mod access_log;
mod analyse;
mod client;
mod config;
mod report;
mod sampling;
mod schedule;
mod stack;
mod summary;
mod svg;

use access_log::*;
use analyse::*;
use client::*;
use config::*;
use report::*;
use sampling::*;
pub use schedule::Opts;
use schedule::*;
use stack::*;
use summary::*;
use svg::*;

// ----------------------------------------------------------------------------------- the soak

/// One soak with the filter `wasm` in the Envoy `envoy_bin` (the sidecar and the demo upstream
/// are built here); keeps what it measured in `target/soak/summary.json` and writes the soak's
/// sections of `docs/RELIABILITY.md` and its picture unless `a.ci`.
pub fn run(a: &Opts, wasm: &Path, envoy_bin: &Path) -> Result {
    let commit = docs::commit();
    let (wasm, envoy_bin) = (wasm.to_path_buf(), envoy_bin.to_path_buf());
    let oha = harness::oha_binary()?;
    let oha_version = harness::oha_version(&oha);
    step("the sidecar (MESHBREAKER_SIDECAR, or built here)");
    let sidecar_bin = harness::sidecar::binary(true)?;
    let dir = run_dir(a.ci);
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
    samples.push(sample(&envoy, elapsed, Phase::Healthy, &seen)?);
    let lds_updates = envoy
        .stat("listener_manager.lds.update_success")?
        .unwrap_or(0)
        .saturating_sub(lds_updates_before);
    let envoy_log = fs::read_to_string(envoy.dir.join("envoy.log")).unwrap_or_default();
    drop(sidecar);
    // Give the access log its last flush (Envoy flushes every second by default).
    std::thread::sleep(Duration::from_millis(1500));
    let explained = explain_access_log(&access_log)?;

    let summary = Summary {
        ci: a.ci,
        asked_s: total.as_secs_f64(),
        elapsed_s: elapsed,
        phase_len_s: phase_len.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        envoy_version: harness::envoy_version(&envoy_bin),
        oha: Oha {
            responses: oha_report.responses,
            requests_per_sec: oha_report.requests_per_sec,
            statuses: oha_report.statuses.clone(),
            errors: oha_report.errors.clone(),
        },
        seen,
        explained,
        samples,
        events,
        lds_updates,
        traps: envoy_log
            .lines()
            .filter(|l| {
                l.contains("panicked")
                    || l.contains("RuntimeError")
                    || l.contains("Function: proxy_on")
            })
            .count(),
        sidecar_back: envoy_log.contains("is back"),
        envoy_alive: envoy_is_alive(&envoy),
        environment: Environment::probe(
            &commit,
            vec![first_line(Command::new("rustc").arg("-V")), oha_version],
        ),
    };
    write_samples(&dir.join("samples.csv"), &summary.samples)?;
    let saved = dir.join("summary.json");
    docs::save_results(&saved, &summary)?;
    // Drawn from the saved results, so that `--reanalyse` draws exactly the same.
    finish(&docs::load_results::<Summary>(&saved)?)
}

/// The verdicts, the sections and the picture again from the last soak's
/// `target/soak/summary.json`, without measuring (into `docs/` unless that soak was `--ci`).
pub fn reanalyse() -> Result {
    step("the soak's sections and picture again from target/soak/summary.json");
    finish(&docs::load_results::<Summary>(
        &run_dir(false).join("summary.json"),
    )?)
}

/// Where a soak keeps what it measured: `target/soak/`, and `target/soak-ci/` for `--ci`, so
/// that the one-minute soak `cargo xtask test` runs leaves the last real soak's results (which
/// `--reanalyse` redraws the doc from) alone.
fn run_dir(ci: bool) -> PathBuf {
    root()
        .join("target")
        .join(if ci { "soak-ci" } else { "soak" })
}

/// Judges the soak, draws `target/soak/soak.svg` and prints the sections; unless `--ci`, writes
/// them into `docs/RELIABILITY.md` and the picture beside it. Fails when a verdict failed.
fn finish(summary: &Summary) -> Result {
    let analysis = analyse(summary);
    let svg = run_dir(summary.ci).join("soak.svg");
    plot(&svg, &summary.samples, &summary.events, summary.warmup_s);
    let sections = sections(summary, &analysis);
    for s in &sections {
        eprintln!("\n{}", s.body);
    }
    if !summary.ci {
        let docs_dir = root().join("docs");
        docs::fill(&docs_dir.join("RELIABILITY.md"), "soak-", &sections)?;
        fs::copy(&svg, docs_dir.join(SVG)).map_err(|e| format!("{}: {e}", svg.display()))?;
        eprintln!("wrote docs/RELIABILITY.md (its soak- sections) and docs/{SVG}");
    }
    if analysis.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the soak failed:\n  - {}",
            analysis.failures.join("\n  - ")
        ))
    }
}

fn envoy_is_alive(envoy: &Envoy) -> bool {
    Path::new(&format!("/proc/{}", envoy.pid)).exists()
        && matches!(
            envoy.admin_get("/ready").as_deref().map(str::trim),
            Ok("LIVE")
        )
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

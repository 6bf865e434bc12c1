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
//!
//! ## Layout, one job per file, no import circle
//! This file holds the run. `schedule` is the key, the phases and the events' times;
//! `config` writes the plugin configurations, the listener and the bootstrap, `stack` starts the
//! sidecar and the demo upstream, `client` is the checking client, `sampling` and `access_log`
//! gather and explain what happened, `svg` draws the picture and `report` writes the section of
//! `docs/RELIABILITY.md`. None of them uses this file or one that uses it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{root, step, Result};
use meshbreaker_harness::{self as harness, Envoy, EnvoyOpts, Load};

mod access_log;
mod client;
mod config;
mod report;
mod sampling;
mod schedule;
mod stack;
mod svg;

use access_log::*;
use client::*;
use config::*;
use report::*;
use sampling::*;
pub use schedule::Opts;
use schedule::*;
use stack::*;
use svg::*;

// ----------------------------------------------------------------------------------- the soak

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

//! One scenario run: the stack up, the fault on and off, the raw results kept.

use crate::util::{root, Result};
use meshbreaker_harness::{self as harness, Envoy, EnvoyOpts, Proc};
use policy_core::breaker::TransitionLine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::*;
use super::model::*;
use super::processes::*;

/// Envoy's log format for the benchmark: the wall-clock millisecond first (spdlog's `%E` seconds
/// and `%e` milliseconds), so the filter's transition lines can be placed on the run's timeline.
pub(super) const LOG_FORMAT: &str = "%E%e %l %n %v";

pub(super) fn run_scenario(
    sc: &Scenario,
    quick: bool,
    bins: &BTreeMap<String, PathBuf>,
    envoy_bin: &Path,
    wasm: &Path,
    sidecar: Option<u16>,
) -> Result<ScenarioRun> {
    let phases = &sc.phases;
    let n_sys = sc.systems.len();
    let up = FaultUpstream::start(&bins["fault-upstream"], n_sys * sc.hosts)?;
    let name = scenario_name(sc, quick);
    let dir = &scenario_dir(sc, quick);
    let sidecar = sidecar.filter(|_| sc.systems.iter().any(|s| s.uses_sidecar()));
    let boot = bootstrap(sc, &up.hosts, wasm, dir, sidecar);
    let yaml = to_yaml(&boot);
    let opts = EnvoyOpts {
        concurrency: 2,
        // The filter logs each transition at info; everything else stays at warning.
        extra_args: vec![
            "--component-log-level".into(),
            "wasm:info".into(),
            "--log-format".into(),
            LOG_FORMAT.into(),
        ],
        ..EnvoyOpts::default()
    };
    let envoy = Envoy::start(envoy_bin, &name, &yaml, &opts)?;
    renice(envoy.pid);
    let ports = envoy.listeners()?;
    let mut targets = Vec::new();
    for s in &sc.systems {
        let p = *ports
            .get(s.name())
            .ok_or_else(|| format!("no listener {}", s.name()))?;
        // Everything answers before the load starts.
        match harness::http_get(p, "/", None) {
            Ok((200, _)) => {}
            other => {
                return Err(format!(
                    "{} does not answer 200 before the run: {other:?}",
                    s.name()
                ))
            }
        }
        targets.push(format!("{}=127.0.0.1:{p}", s.name()));
    }
    let load_out = dir.join("load.json");
    let mut load = Command::new("nice");
    load.args(["-n", NICE]).arg(&bins["steady-load"]);
    for t in &targets {
        load.arg("--target").arg(t);
    }
    load.args([
        "--rate",
        &RATE.to_string(),
        "--duration-ms",
        &phases.total().as_millis().to_string(),
        "--clients",
        &CLIENTS.to_string(),
    ])
    .arg("--out")
    .arg(&load_out)
    .stdin(Stdio::null());
    if sc.fault == Fault::Streams {
        load.args([
            "--long-share",
            &STREAM_SHARE.to_string(),
            "--long-from-ms",
            &phases.warm.as_millis().to_string(),
            "--long-until-ms",
            &(phases.warm + phases.fault).as_millis().to_string(),
            "--long-hold-ms",
            &STREAM_HOLD_MS.to_string(),
        ]);
    }
    let load_at_start = harness::procfs::loadavg()[0];
    let t_start = now_ms();
    let started = Instant::now();
    let load = Proc::spawn("steady-load", &mut load)?;
    let bad: Vec<usize> = (0..n_sys).map(|i| i * sc.hosts).collect();
    let sleep_until = |at: Duration, what: &str| {
        while started.elapsed() < at {
            let left = at.saturating_sub(started.elapsed());
            let left_s = left.as_secs_f64().ceil() as u64;
            if left_s > 0 && left_s.is_multiple_of(10) {
                eprintln!(
                    "  t={:>3.0}s  {what} in {left_s}s",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
    };
    let (on, off) = if sc.fault.fails() {
        ("fault", "heal")
    } else {
        ("long-lived streams", "no more streams")
    };
    sleep_until(phases.warm, on);
    let t_fault = up.set(&bad, &sc.fault.control_query())?;
    eprintln!(
        "  t={:>3.0}s  {on} on: {}",
        started.elapsed().as_secs_f64(),
        sc.fault.title()
    );
    sleep_until(phases.warm + phases.fault, off);
    let t_heal = up.set(&bad, "mode=ok")?;
    eprintln!("  t={:>3.0}s  {off}", started.elapsed().as_secs_f64());
    sleep_until(phases.total(), "end");
    let status = loop {
        if let Some(s) = load.exited() {
            break s;
        }
        if started.elapsed() > phases.total() + Duration::from_secs(40) {
            return Err("steady-load did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        return Err(format!("steady-load failed: {status}"));
    }
    let t_end = t_start + phases.total().as_millis() as u64;
    // File access logs are flushed by a background thread: wait until every upstream log has
    // stopped growing before Envoy is killed, or the last seconds would be missing.
    let logs: Vec<PathBuf> = sc
        .systems
        .iter()
        .map(|s| dir.join(format!("{}.upstream.log", s.name())))
        .collect();
    let size = || -> u64 {
        logs.iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let flush_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (size(), Instant::now());
    while Instant::now() < flush_deadline && last.1.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(250));
        let now = size();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let stats = envoy.admin_get("/stats").unwrap_or_default();
    let _ = std::fs::write(dir.join("stats.txt"), &stats);
    let counts = up.counts()?;
    drop(envoy);
    drop(up);
    let save = |file: &str, v: &Value| {
        std::fs::write(dir.join(file), v.to_string()).map_err(|e| format!("{file}: {e}"))
    };
    save("counts.json", &counts)?;
    save(
        "run.json",
        &json!({"t_start": t_start, "t_fault": t_fault, "t_heal": t_heal, "t_end": t_end,
                "loadavg": load_at_start}),
    )?;
    load_saved(sc, quick)
}

/// A scenario's Envoy name: `protection-<id>` for the full run, `protection-quick-<id>` for
/// `--quick`, so that a quick run (inside `cargo xtask test`) never overwrites the raw results
/// the published report is redrawn from.
fn scenario_name(sc: &Scenario, quick: bool) -> String {
    format!(
        "protection-{}{}",
        if quick { "quick-" } else { "" },
        sc.id()
    )
}

/// The directory of a scenario's Envoy and raw results, `target/bench/<its Envoy's name>/`.
pub(super) fn scenario_dir(sc: &Scenario, quick: bool) -> PathBuf {
    root()
        .join("target")
        .join("bench")
        .join(scenario_name(sc, quick))
}

/// Reads a scenario's raw results back (`--reanalyse` redraws the report from them). The
/// systems are those of `sc` that the results hold (each listener's upstream log is there from
/// Envoy's start), so results measured with fewer systems still read back.
pub(super) fn load_saved(sc: &Scenario, quick: bool) -> Result<ScenarioRun> {
    let dir = scenario_dir(sc, quick);
    let mut sc = sc.clone();
    sc.systems
        .retain(|s| dir.join(format!("{}.upstream.log", s.name())).is_file());
    let read = |file: &str| -> Result<Value> {
        let p = dir.join(file);
        serde_json::from_str(
            &std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
        )
        .map_err(|e| format!("{}: {e}", p.display()))
    };
    let times = read("run.json")?;
    let time = |k: &str| times[k].as_u64().unwrap_or(0);
    let loadavg = times["loadavg"].as_f64().unwrap_or(0.0);
    let (t_start, t_fault, t_heal, t_end) = (
        time("t_start"),
        time("t_fault"),
        time("t_heal"),
        time("t_end"),
    );
    let counts = read("counts.json")?;
    let stats = std::fs::read_to_string(dir.join("stats.txt")).unwrap_or_default();
    let yaml = std::fs::read_to_string(dir.join("envoy.yaml")).unwrap_or_default();
    let loaded = read("load.json")?;
    let changes = transitions(&std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default());
    let mut data = Vec::new();
    for (i, &sys) in sc.systems.iter().enumerate() {
        let host_ports = &up_ports(&counts)[i * sc.hosts..(i + 1) * sc.hosts];
        let mut d = SysData::default();
        let target = loaded["targets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == sys.name()))
            .ok_or_else(|| format!("load.json: no target {}", sys.name()))?;
        let col = |k: &str| -> Vec<u64> {
            target[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_u64().unwrap_or(0))
                .collect()
        };
        let (t, lat, cls, att, id) = (col("t"), col("lat_us"), col("class"), col("att"), col("id"));
        let kinds = col("kind");
        for (j, &t) in t.iter().enumerate() {
            d.client.push(Req {
                t,
                lat_us: lat.get(j).copied().unwrap_or(0),
                class: cls.get(j).copied().unwrap_or(7) as u8,
                att: att.get(j).copied().unwrap_or(0),
                id: id.get(j).copied().unwrap_or(0),
                kind: kinds.get(j).copied().unwrap_or(0) as u8,
            });
        }
        for (k, h) in counts["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(i * sc.hosts)
            .take(sc.hosts)
            .enumerate()
        {
            let ts = h["t"].as_array().cloned().unwrap_or_default();
            let ids = h["id"].as_array().cloned().unwrap_or_default();
            for (j, tv) in ts.iter().enumerate() {
                let t = tv.as_u64().unwrap_or(0);
                if k == 0 {
                    let id = ids.get(j).and_then(Value::as_u64).unwrap_or(0);
                    d.bad.push(BadHit { t, id });
                    d.bad_received.push(t);
                } else {
                    d.healthy.push(t);
                }
            }
        }
        // Envoy's attempts towards the bad host that its closed port refused.
        let bad_addr = format!("127.0.0.1:{}", host_ports[0]);
        let log = std::fs::read_to_string(dir.join(format!("{}.upstream.log", sys.name())))
            .unwrap_or_default();
        for l in log.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[1] != bad_addr {
                continue;
            }
            d.uplog_bad_total += 1;
            if f[3].contains("UF") {
                d.bad.push(BadHit {
                    t: f[0].parse().unwrap_or(0),
                    id: f[4].parse().unwrap_or(0),
                });
            }
        }
        d.bad.sort_by_key(|h| h.t);
        d.stats = pick_stats(&stats, sys);
        d.changes = changes.get(sys.name()).cloned().unwrap_or_default();
        data.push((sys, d));
    }
    Ok(ScenarioRun {
        scenario: sc,
        loadavg,
        t_start,
        t_fault,
        t_heal,
        t_end,
        data,
        bootstrap: yaml,
    })
}

/// The filter's transition lines in Envoy's log (format [`LOG_FORMAT`]), per key, in order.
pub(super) fn transitions(log: &str) -> BTreeMap<String, Vec<Change>> {
    let mut out: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for l in log.lines() {
        let Some(Ok(line)) = TransitionLine::find(l) else {
            continue;
        };
        let Some(t) = l
            .split_whitespace()
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
        else {
            continue;
        };
        out.entry(line.key).or_default().push(Change {
            t,
            to: line.to,
            reason: line.reason,
        });
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.t);
    }
    out
}

pub(super) fn up_ports(counts: &Value) -> Vec<u16> {
    counts["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["port"].as_u64().unwrap_or(0) as u16)
        .collect()
}

/// The few Envoy stats the report quotes for `sys`, from admin `/stats` text.
pub(super) fn pick_stats(stats: &str, sys: System) -> BTreeMap<&'static str, f64> {
    let n = sys.name();
    let mut out = BTreeMap::new();
    let mut add = |k: &'static str, v: f64| *out.entry(k).or_insert(0.0) += v;
    for l in stats.lines() {
        let Some((name, v)) = l.rsplit_once(": ") else {
            continue;
        };
        let Ok(v) = v.trim().parse::<f64>() else {
            continue;
        };
        if name == format!("cluster.{n}.outlier_detection.ejections_enforced_total") {
            add("ejections", v);
        } else if name == format!("cluster.{n}.outlier_detection.ejections_overflow") {
            add("ejections_overflow", v);
        } else if name.starts_with(&format!(
            "cluster.{n}.outlier_detection.ejections_detected_"
        )) {
            add("ejections_detected", v);
        } else if name == format!("http.{n}.admission_control.rq_rejected") {
            add("ac_rejected", v);
        } else if name == format!("cluster.{n}.upstream_rq_retry") {
            add("retries", v);
        } else if name == format!("cluster.{n}.upstream_rq_retry_overflow") {
            add("retry_overflow", v);
        } else if name == format!("cluster.{n}.upstream_cx_connect_fail") {
            add("connect_fail", v);
        } else if name.contains(&format!("key=.={n};")) {
            if name.ends_with("meshbreaker_transitions_total") && name.contains("to=.=open;") {
                add("mb_opens", v);
            } else if name.ends_with("meshbreaker_transitions_total")
                && name.contains("to=.=closed;")
            {
                add("mb_closes", v);
            } else if name.ends_with("meshbreaker_state") {
                add("mb_state", v);
            } else if name.ends_with("meshbreaker_requests_total")
                && name.contains("decision=.=rejected;")
            {
                add("mb_rejected", v);
            } else if name.ends_with("meshbreaker_kernel_resets_total") {
                add("mb_kernel_resets", v);
            } else if name.ends_with(policy_core::metrics::RETRY_BUDGET_DENIED_TOTAL) {
                add("mb_budget_denied", v);
            }
        }
    }
    out
}

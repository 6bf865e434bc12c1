//! Measuring: the proxies, the load, the profile, RSS per key, criterion; the raw results they
//! give, and their JSON form (`target/bench/overhead/results.json`, read back by `--reanalyse`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::{
    Built, Opts, AUTHORITY_KEYS, CLIENT_CPU, FIXED_RATE, HOST_CALLS, MAIN, PROFILED, PROXY_CPU,
};
use crate::util::{cargo, root, run, step, Result};
use meshbreaker_harness::stats::nan;
use meshbreaker_harness::{self as harness, bootstrap, Envoy, EnvoyOpts, Load, Machine, OhaReport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One contender in one round. A figure with no response behind it is NaN.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Sample {
    #[serde(deserialize_with = "nan::one")]
    pub(super) rps: f64,
    /// Proxy CPU per response, µs, closed loop (saturated).
    #[serde(deserialize_with = "nan::one")]
    pub(super) cpu_us: f64,
    /// Proxy CPU per response, µs, at the fixed rate.
    #[serde(deserialize_with = "nan::one")]
    pub(super) cpu_us_fixed: f64,
    /// Proxy CPU seconds per wall second in the closed loop (1.0 = its core saturated).
    #[serde(deserialize_with = "nan::one")]
    pub(super) busy: f64,
    #[serde(deserialize_with = "nan::one")]
    pub(super) p50_us: f64,
    #[serde(deserialize_with = "nan::one")]
    pub(super) p99_us: f64,
    #[serde(deserialize_with = "nan::one")]
    pub(super) fixed_rps: f64,
    /// Responses that were not 200, and transport errors other than the deadline cut.
    pub(super) bad: u64,
}

/// One key count of the memory measurement: (keys, RSS growth bytes, per key bytes, non-200
/// responses).
pub(super) type RssRow = (usize, u64, f64, u64);

/// One listener's perf profile: its CPU per request while profiled, and each bucket's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Profile {
    pub(super) listener: String,
    #[serde(deserialize_with = "nan::one")]
    pub(super) cpu_us: f64,
    #[serde(deserialize_with = "nan::by_name")]
    pub(super) shares: BTreeMap<String, f64>,
}

/// Everything measured, for the report.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Results {
    /// concurrency → listener → one sample per round.
    pub(super) main: BTreeMap<u32, BTreeMap<String, Vec<Sample>>>,
    /// kind → per-round cost of one call, µs (proxy CPU, difference to the trivial filter / N).
    #[serde(deserialize_with = "nan::lists_by_name")]
    pub(super) host_calls: BTreeMap<String, Vec<f64>>,
    /// trivial filter's CPU per request in the host-call rounds (µs), for reference.
    #[serde(deserialize_with = "nan::list")]
    pub(super) hc_trivial_cpu: Vec<f64>,
    /// perf profile per listener.
    pub(super) profile: Vec<Profile>,
    /// Why there is no profile, if there is none.
    pub(super) profile_skipped: Option<String>,
    /// concurrency → distinct `key` labels of meshbreaker_requests_total after the warm-up.
    pub(super) keys_seen: BTreeMap<u32, usize>,
    /// concurrency → distinct `key` labels of the dynamic module's requests counter.
    pub(super) native_keys_seen: BTreeMap<u32, usize>,
    /// The wasm filter's RSS per tracked key.
    pub(super) rss: Vec<RssRow>,
    pub(super) rss_baseline: u64,
    /// The same for the dynamic module.
    pub(super) rss_native: Vec<RssRow>,
    pub(super) rss_native_baseline: u64,
    /// criterion: name → (median ns, lower, upper).
    pub(super) criterion: Vec<(String, f64, f64, f64)>,
    pub(super) wasm_bytes: u64,
    pub(super) noop_bytes: u64,
    pub(super) native_bytes: u64,
}

/// What was measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Versions {
    pub(super) envoy: String,
    pub(super) oha: String,
    pub(super) rustc: String,
    pub(super) commit: String,
}

/// What the report says about the run itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunInfo {
    /// The machine when the measurements began (after the builds) and when the proxies' were
    /// over (before criterion builds its benchmarks).
    pub(super) before: Machine,
    pub(super) after: Machine,
    pub(super) versions: Versions,
    /// When the measurements began, UTC.
    pub(super) date: String,
    /// The proxies' measurements, from `date` until `after` was probed.
    pub(super) took: Duration,
}

/// One run: its options, the run itself and what it measured; `results.json` is its serde form.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Raw {
    /// The layout of `results.json` ([`FORMAT`]): a file of another layout is refused, not half
    /// read.
    pub(super) format: u64,
    pub(super) opts: Opts,
    pub(super) run: RunInfo,
    pub(super) res: Results,
}

/// One overhead benchmark of `built`: every measurement, nothing written.
pub(super) fn measure_all(opts: Opts, built: &Built) -> Result<Raw> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return Err(
            "the benchmark pins the proxy to CPU 1 and the client to CPU 0: it needs 2 CPUs".into(),
        );
    }
    let (wasm, envoy, noop, module) = (
        built.wasm.clone(),
        built.envoy.clone(),
        built.noop.clone(),
        built.module.clone(),
    );
    // Installed on the first run (a build): before the clock and the load probe start.
    let oha = harness::oha_binary()?;
    let started = Instant::now();
    let date = crate::docs::utc_now();
    let machine_before = Machine::probe();
    let mut res = Results {
        wasm_bytes: file_size(&wasm),
        noop_bytes: file_size(&noop),
        native_bytes: file_size(&module),
        ..Results::default()
    };

    step("upstream Envoy (direct response), pinned to CPU 0");
    let (upstream, up_port) = start_upstream(&envoy, "upstream")?;

    for &c in &opts.concurrencies {
        step(&format!(
            "proxy Envoy --concurrency {c}, pinned to CPU {PROXY_CPU}"
        ));
        let proxy = Envoy::start(
            &envoy,
            &format!("proxy-c{c}"),
            &proxy_yaml(up_port, &wasm, &noop, &module, opts.calls_per_request),
            &EnvoyOpts {
                concurrency: c,
                cpus: Some(PROXY_CPU.into()),
                ..EnvoyOpts::default()
            },
        )?;
        let ports = proxy.listeners()?;
        let port = |l: &str| -> Result<u16> {
            ports
                .get(l)
                .copied()
                .ok_or_else(|| format!("proxy has no listener {l}"))
        };
        // Every listener answers 200 before anything is timed.
        for l in MAIN
            .iter()
            .copied()
            .chain(HOST_CALLS.iter().map(|(k, _)| *k))
        {
            let p = port(&hc_listener(l))?;
            let got = harness::wait_for(Duration::from_secs(10), || {
                harness::http_get(p, "/", Some(&format!("k00:{p}")))
                    .ok()
                    .filter(|(s, _)| *s == 200)
            });
            if got.is_none() {
                return Err(format!(
                    "listener {l} does not answer 200; proxy log tail:\n{}",
                    proxy.log_tail(30)
                ));
            }
        }
        eprintln!("warm-up: every listener 0.5 s closed loop");
        for l in MAIN {
            let mut load = main_load(l, port(l)?, Duration::from_millis(500));
            load.rate = None;
            harness::run_oha(&oha, &load)?;
        }
        // The authority listener must really track its 100 keys (and the default ones their
        // cluster).
        let keys = meshbreaker_keys(&proxy, WASM_COUNTER)?;
        let native_keys = meshbreaker_keys(&proxy, NATIVE_COUNTER)?;
        eprintln!(
            "meshbreaker keys seen in the proxy's stats: {keys} (wasm), {native_keys} (native)"
        );
        res.keys_seen.insert(c, keys);
        res.native_keys_seen.insert(c, native_keys);
        let mut by_listener: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for r in 1..=opts.rounds {
            for l in MAIN {
                eprintln!(
                    "[--concurrency {c}] round {r}/{}: {:<13} closed loop, then {FIXED_RATE} req/s",
                    opts.rounds, l
                );
                let s = measure(&oha, &proxy, l, port(l)?, opts.duration)?;
                eprintln!(
                    "    {:>8.0} req/s  {:>6.1} µs CPU/req  p50 {:>6.0} µs  p99 {:>6.0} µs{}",
                    s.rps,
                    s.cpu_us,
                    s.p50_us,
                    s.p99_us,
                    if s.bad > 0 {
                        format!("  ({} non-200/errors)", s.bad)
                    } else {
                        String::new()
                    }
                );
                by_listener.entry(l.to_string()).or_default().push(s);
            }
        }
        res.main.insert(c, by_listener);

        if c == 1 {
            let n = opts.calls_per_request as f64;
            for r in 1..=opts.rounds {
                let trivial = closed_cpu(&oha, &proxy, port("trivial")?, opts.duration)?;
                eprintln!(
                    "[host calls] round {r}/{}: trivial            {:>6.1} µs CPU/req",
                    opts.rounds, trivial
                );
                res.hc_trivial_cpu.push(trivial);
                for (k, _) in HOST_CALLS {
                    let cpu = closed_cpu(&oha, &proxy, port(&hc_listener(k))?, opts.duration)?;
                    let per_call = (cpu - trivial) / n;
                    eprintln!(
                        "[host calls] round {r}/{}: {k:<8} ×{} {:>6.1} µs CPU/req → {:>5.2} µs per call",
                        opts.rounds, opts.calls_per_request, cpu, per_call
                    );
                    res.host_calls
                        .entry(k.to_string())
                        .or_default()
                        .push(per_call);
                }
            }
        }
        if c == 1 {
            profile(&oha, &proxy, &port, opts.duration, &mut res);
        }
        drop(proxy);
    }
    drop(upstream);

    let config = format!(
        r#"{{"key_by":"authority","max_keys":{}}}"#,
        opts.rss_keys.iter().copied().max().unwrap_or(10_000)
    );
    (res.rss_baseline, res.rss) = measure_rss(
        &envoy,
        ("wasm filter", "proxy-rss"),
        &wasm_filter("mb_keys", "meshbreaker", &wasm, &config),
        &opts,
    )?;
    (res.rss_native_baseline, res.rss_native) = measure_rss(
        &envoy,
        ("dynamic module", "proxy-rss-native"),
        &native_module_filter(&module, &config),
        &opts,
    )?;

    // The proxies are done: the end of the measured time and the load at the end. criterion
    // builds policy-core's benchmarks first, which would load the machine in the probe.
    let machine_after = Machine::probe();
    let took = started.elapsed();
    if opts.criterion {
        res.criterion = criterion(opts.quick)?;
    }
    let versions = Versions {
        envoy: harness::envoy_version(&envoy),
        oha: harness::oha_version(&oha),
        rustc: machine_before.rustc.clone(),
        commit: crate::docs::commit(),
    };
    Ok(Raw {
        format: FORMAT,
        opts,
        run: RunInfo {
            before: machine_before,
            after: machine_after,
            versions,
            date,
            took,
        },
        res,
    })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The listener name of a host-call kind (main contenders keep their name).
fn hc_listener(kind: &str) -> String {
    if MAIN.contains(&kind) {
        kind.to_string()
    } else {
        format!("hc_{kind}")
    }
}

/// The oha load for a main contender; `mb_authority` spreads requests over 100 `Host`s.
fn main_load(listener: &str, port: u16, duration: Duration) -> Load {
    let url = format!("http://127.0.0.1:{port}/");
    let mut load = Load::closed(&url, 16, duration);
    load.cpus = Some(CLIENT_CPU.into());
    if listener == "mb_authority" {
        load.url = format!("http://k[0-9]{{2}}:{port}/");
        load.extra_args.push("--rand-regex-url".into());
        for k in 0..AUTHORITY_KEYS {
            load.extra_args.push("--connect-to".into());
            load.extra_args
                .push(format!("k{k:02}:{port}:127.0.0.1:{port}"));
        }
    }
    load
}

/// Runs oha on `load` and returns its report, the proxy's CPU per response (µs) and its CPU
/// seconds per wall second.
fn with_cpu(oha: &Path, proxy: &Envoy, load: &Load) -> Result<(OhaReport, f64, f64)> {
    let before = proxy.cpu_time()?;
    let t = Instant::now();
    let rep = harness::run_oha(oha, load)?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = (proxy.cpu_time()? - before).as_secs_f64();
    let per = if rep.responses > 0 {
        cpu * 1e6 / rep.responses as f64
    } else {
        f64::NAN
    };
    Ok((rep, per, cpu / wall))
}

fn bad(rep: &OhaReport) -> u64 {
    let non200: u64 = rep
        .statuses
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(_, n)| n)
        .sum();
    let errors: u64 = rep
        .errors
        .iter()
        .filter(|(e, _)| !e.contains("deadline"))
        .map(|(_, n)| n)
        .sum();
    non200 + errors
}

/// One contender, one round: closed loop (throughput, CPU per request), then fixed rate with
/// latency correction (p50, p99).
fn measure(oha: &Path, proxy: &Envoy, listener: &str, port: u16, d: Duration) -> Result<Sample> {
    let closed = main_load(listener, port, d);
    let (c, cpu, busy) = with_cpu(oha, proxy, &closed)?;
    let (f, cpu_fixed, _) = with_cpu(oha, proxy, &fixed_load(listener, port, d))?;
    Ok(Sample {
        rps: c.requests_per_sec,
        cpu_us: cpu,
        cpu_us_fixed: cpu_fixed,
        busy,
        p50_us: f.p50 * 1e6,
        p99_us: f.p99 * 1e6,
        fixed_rps: f.requests_per_sec,
        bad: bad(&c) + bad(&f),
    })
}

/// The fixed-rate load (latency-corrected) for a contender.
fn fixed_load(listener: &str, port: u16, d: Duration) -> Load {
    let mut fixed = main_load(listener, port, d);
    fixed.rate = Some(FIXED_RATE);
    fixed.latency_correction = true;
    fixed
}

/// The proxy's CPU per response (µs) in a closed loop on a plain listener.
fn closed_cpu(oha: &Path, proxy: &Envoy, port: u16, d: Duration) -> Result<f64> {
    let (_, cpu, _) = with_cpu(oha, proxy, &main_load("", port, d))?;
    Ok(cpu)
}

/// The requests counter in Prometheus form: the wasm filter's (through the stats tags), and the
/// dynamic module's (Envoy's prefix and default metrics namespace, real labels).
const WASM_COUNTER: &str = "meshbreaker_requests_total{";
const NATIVE_COUNTER: &str = "envoy_dynamicmodulescustom_meshbreaker_requests_total{";

/// Distinct `key` labels of one requests counter in the proxy's Prometheus stats.
fn meshbreaker_keys(proxy: &Envoy, counter: &str) -> Result<usize> {
    let body = proxy.admin_get("/stats/prometheus")?;
    let mut keys: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with(counter))
        .filter_map(|l| l.split("key=\"").nth(1)?.split('"').next())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(keys.len())
}

/// Where the proxy's CPU goes, per shared object, for no filter, admission_control, the trivial
/// filter and meshbreaker's two shells (closed loop, `perf record` on the proxy).
fn profile(
    oha: &Path,
    proxy: &Envoy,
    port: &dyn Fn(&str) -> Result<u16>,
    d: Duration,
    res: &mut Results,
) {
    if !harness::perf_available() {
        res.profile_skipped = Some("`perf` is not installed or cannot sample here".into());
        return;
    }
    for l in PROFILED {
        eprintln!("[profile] perf record on the proxy: {l}");
        let data = proxy.dir.join(format!("perf-{l}.data"));
        let run = port(l).and_then(|p| {
            harness::perf_dso_profile(proxy.pid, &data, || {
                with_cpu(oha, proxy, &main_load(l, p, d))
            })
        });
        match run {
            Ok(((_, cpu, _), rows)) => {
                let mut buckets: BTreeMap<String, f64> = BTreeMap::new();
                for (dso, share) in rows {
                    *buckets.entry(bucket(&dso).to_string()).or_insert(0.0) += share;
                }
                res.profile.push(Profile {
                    listener: l.to_string(),
                    cpu_us: cpu,
                    shares: buckets,
                });
            }
            Err(e) => {
                res.profile_skipped = Some(format!("perf failed: {e}"));
                res.profile.clear();
                return;
            }
        }
    }
}

/// The profile's buckets.
pub(super) const ENVOY_BUCKET: &str = "Envoy C++ (HCM, router, V8 runtime, host-call glue)";
pub(super) const WASM_BUCKET: &str = "wasm code (V8 JIT, inside the VM)";
pub(super) const MODULE_BUCKET: &str = "the dynamic module (libmeshbreaker.so)";

/// The profile bucket of a perf DSO name.
fn bucket(dso: &str) -> &'static str {
    if dso.starts_with("libmeshbreaker") {
        MODULE_BUCKET
    } else if dso == "envoy" {
        ENVOY_BUCKET
    } else if dso.starts_with("[kernel") || dso == "[vdso]" {
        "kernel (sockets, syscalls)"
    } else if dso.starts_with("[unknown")
        || dso.starts_with("//anon")
        || dso.starts_with("[anon")
        || dso.starts_with("[JIT")
        || dso.starts_with("perf-")
        || dso.starts_with("memfd:")
    {
        WASM_BUCKET
    } else {
        "libc and other libraries"
    }
}

/// RSS growth per tracked key: a fresh proxy (`--concurrency 2`) with one meshbreaker listener
/// (`filter`: either shell, `key_by: authority`, `max_keys` = the largest count); one request per
/// new `Host`. Returns the baseline RSS and per key count (keys, growth, per key, non-200).
fn measure_rss(
    envoy: &Path,
    (shell, name): (&str, &str),
    filter: &Value,
    opts: &Opts,
) -> Result<(u64, Vec<RssRow>)> {
    let max = opts.rss_keys.iter().copied().max().unwrap_or(10_000);
    step(&format!(
        "RSS per tracked key ({shell}): --concurrency 2, key_by authority, max_keys {max}"
    ));
    // Kept until the end of the measurement: dropping it stops the upstream Envoy.
    let (_upstream, up_port) = start_upstream(envoy, &format!("upstream-{name}"))?;
    let yaml = proxy_yaml_with(up_port, &[("mb_keys".to_string(), Some(filter.clone()))]);
    let proxy = Envoy::start(
        envoy,
        name,
        &yaml,
        &EnvoyOpts {
            concurrency: 2,
            cpus: Some(PROXY_CPU.into()),
            ..EnvoyOpts::default()
        },
    )?;
    let port = *proxy
        .listeners()?
        .get("mb_keys")
        .ok_or("proxy has no mb_keys listener")?;
    // Warm-up on a handful of keys over several connections (both workers), then the baseline.
    let warm: Vec<String> = (0..64).map(|i| format!("warm{}", i % 8)).collect();
    harness::flood_hosts(port, &warm, 8)?;
    std::thread::sleep(Duration::from_millis(500));
    let baseline = proxy.rss_bytes()?;
    let mut rows = Vec::new();
    let mut sent = 0usize;
    let mut keys = opts.rss_keys.clone();
    keys.sort_unstable();
    for n in keys {
        eprintln!("RSS: growing the key table to {n} distinct authorities");
        let hosts: Vec<String> = (sent..n).map(|i| format!("key{i}.bench")).collect();
        let t = Instant::now();
        let statuses = harness::flood_hosts(port, &hosts, 8)?;
        sent = n;
        // Let the tick flush and the allocator settle.
        std::thread::sleep(Duration::from_millis(500));
        let rss = proxy.rss_bytes()?;
        let grown = rss.saturating_sub(baseline);
        let not_ok: u64 = statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, c)| c)
            .sum();
        eprintln!(
            "    {n} keys: RSS {:.1} MiB (+{:.1} MiB), {:.0} bytes per key ({:.1} s)",
            rss as f64 / 1048576.0,
            grown as f64 / 1048576.0,
            grown as f64 / n as f64,
            t.elapsed().as_secs_f64()
        );
        rows.push((n, grown, grown as f64 / n as f64, not_ok));
    }
    Ok((baseline, rows))
}

/// Runs the policy-core criterion benchmarks and reads their medians from
/// `target/criterion/**/new/estimates.json`.
fn criterion(quick: bool) -> Result<Vec<(String, f64, f64, f64)>> {
    step("policy-core criterion benchmarks");
    let since = SystemTime::now();
    let (warm, meas) = if quick { ("0.5", "1") } else { ("1", "3") };
    run(cargo().args([
        "bench",
        "-p",
        "policy-core",
        "--bench",
        "policy",
        "--",
        "--warm-up-time",
        warm,
        "--measurement-time",
        meas,
    ]))?;
    let mut out = Vec::new();
    let mut stack = vec![root().join("target").join("criterion")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some(row) = read_estimate(&p, since) {
                        out.push(row);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_estimate(new_dir: &Path, since: SystemTime) -> Option<(String, f64, f64, f64)> {
    let est = new_dir.join("estimates.json");
    let modified = std::fs::metadata(&est).ok()?.modified().ok()?;
    if modified < since {
        return None; // a benchmark that no longer exists or did not run now
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&est).ok()?).ok()?;
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new_dir.join("benchmark.json")).ok()?)
            .ok()?;
    let name = b["full_id"].as_str()?.to_string();
    let m = &v["median"];
    Some((
        name,
        m["point_estimate"].as_f64()?,
        m["confidence_interval"]["lower_bound"].as_f64()?,
        m["confidence_interval"]["upper_bound"].as_f64()?,
    ))
}

// ---- Envoy configurations --------------------------------------------------------------------

/// The direct-response upstream Envoy, pinned to the client's CPU, and its listener port.
fn start_upstream(envoy: &Path, name: &str) -> Result<(Envoy, u16)> {
    let upstream = Envoy::start(
        envoy,
        name,
        &upstream_yaml(),
        &EnvoyOpts {
            concurrency: 1,
            cpus: Some(CLIENT_CPU.into()),
            ..EnvoyOpts::default()
        },
    )?;
    let up_port = *upstream
        .listeners()?
        .get("upstream")
        .ok_or("upstream Envoy has no listener")?;
    Ok((upstream, up_port))
}

fn upstream_yaml() -> String {
    let hcm = json!({
        "@type": bootstrap::HCM_TYPE,
        "stat_prefix": "upstream",
        "route_config": { "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{
                "match": { "prefix": "/" },
                "direct_response": { "status": 200, "body": { "inline_string": "ok" } }
            }]
        }]},
        "http_filters": [bootstrap::router()]
    });
    json!({
        "admin": bootstrap::admin(0),
        "static_resources": { "listeners": [bootstrap::listener("upstream", 0, hcm)] }
    })
    .to_string()
}

/// A proxy-wasm filter entry; each listener gets its own VM (`vm_id` = listener).
fn wasm_filter(vm: &str, root_id: &str, wasm: &Path, configuration: &str) -> Value {
    bootstrap::wasm_filter_with_root(vm, root_id, wasm, configuration)
}

/// Envoy's native admission_control: success-rate based shedding, the C++ filter a user would
/// otherwise pick.
fn native_filter() -> Value {
    json!({
        "name": "envoy.filters.http.admission_control",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
            "enabled": { "default_value": true, "runtime_key": "bench.ac.enabled" },
            "sampling_window": "60s",
            "aggression": { "default_value": 1.0, "runtime_key": "bench.ac.aggression" },
            "sr_threshold": { "default_value": { "value": 95.0 }, "runtime_key": "bench.ac.sr_threshold" },
            "rps_threshold": { "default_value": 5, "runtime_key": "bench.ac.rps_threshold" },
            "max_rejection_probability": {
                "default_value": { "value": 80.0 },
                "runtime_key": "bench.ac.max_rejection_probability"
            },
            "success_criteria": {
                "http_criteria": { "http_success_status": [{ "start": 100, "end": 500 }] }
            }
        }
    })
}

/// The dynamic module's filter entry, loaded by path and never unloaded, as
/// `envoy-config/native.yaml` loads it.
fn native_module_filter(module: &Path, filter_config: &str) -> Value {
    bootstrap::native_module_filter(module, filter_config)
}

/// The proxy with every contender and every host-call variant as its own listener.
fn proxy_yaml(up_port: u16, wasm: &Path, noop: &Path, module: &Path, n: u32) -> String {
    let mut listeners = vec![
        ("none".to_string(), None),
        ("native".to_string(), Some(native_filter())),
        (
            "trivial".to_string(),
            Some(wasm_filter("trivial", "noop", noop, "")),
        ),
        (
            "floor".to_string(),
            Some(wasm_filter("floor", "noop", noop, "mesh=1")),
        ),
        (
            "mb_default".to_string(),
            Some(wasm_filter("mb_default", "meshbreaker", wasm, "{}")),
        ),
        (
            "mb_native".to_string(),
            Some(native_module_filter(module, "{}")),
        ),
        (
            "mb_authority".to_string(),
            Some(wasm_filter(
                "mb_authority",
                "meshbreaker",
                wasm,
                r#"{"key_by":"authority"}"#,
            )),
        ),
    ];
    for (k, _) in HOST_CALLS {
        let name = hc_listener(k);
        let f = wasm_filter(&name, "noop", noop, &format!("{k}={n}"));
        listeners.push((name, Some(f)));
    }
    proxy_yaml_with(up_port, &listeners)
}

/// A proxy bootstrap: one listener per `(name, http filter before the router)`, each with the
/// shipped route shape (named route, a retry policy without `retry_on`, attempt-count headers).
fn proxy_yaml_with(up_port: u16, listeners: &[(String, Option<Value>)]) -> String {
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|(name, filter)| {
            let mut filters: Vec<Value> = filter.iter().cloned().collect();
            filters.push(bootstrap::router());
            let hcm = json!({
                "@type": bootstrap::HCM_TYPE,
                "stat_prefix": name,
                "codec_type": "AUTO",
                "use_remote_address": true,
                "route_config": {
                    "name": "local_route",
                    "virtual_hosts": [{
                        "name": "local",
                        "domains": ["*"],
                        "include_request_attempt_count": true,
                        "include_attempt_count_in_response": true,
                        "routes": [{
                            "name": "http",
                            "match": { "prefix": "/" },
                            "route": {
                                "cluster": "backend",
                                "timeout": "30s",
                                "retry_policy": {
                                    "retry_back_off": { "base_interval": "0.025s", "max_interval": "0.25s" }
                                }
                            }
                        }]
                    }]
                },
                "http_filters": filters
            });
            bootstrap::listener(name, 0, hcm)
        })
        .collect();
    json!({
        "admin": bootstrap::admin(0),
        "stats_config": bootstrap::stats_config(),
        "static_resources": {
            "listeners": listeners,
            "clusters": [bootstrap::static_cluster("backend", &[([127, 0, 0, 1], up_port).into()], "1s")]
        }
    })
    .to_string()
}

// ---- the raw results' JSON -------------------------------------------------------------------

/// The layout of `results.json`.
pub(super) const FORMAT: u64 = 1;

impl Raw {
    /// Writes the raw results to `path` (creating its directory).
    pub(super) fn save(&self, path: &Path) -> Result {
        crate::docs::save_results(path, self)
    }

    /// Reads the raw results a run kept at `path`.
    pub(super) fn load(path: &Path) -> Result<Raw> {
        let raw: Raw = crate::docs::load_results(path)?;
        if raw.format != FORMAT {
            return Err(format!(
                "{}: results of layout {}, this code reads layout {FORMAT}: measure again",
                path.display(),
                raw.format
            ));
        }
        Ok(raw)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::fixtures::{raw, results};
    use super::*;

    #[test]
    fn raw_results_read_back_as_they_were_written() {
        let mut res = results(50.0, 16384.0);
        res.main.get_mut(&1).unwrap().get_mut("none").unwrap()[0].cpu_us = f64::NAN;
        res.profile_skipped = Some("no perf".into());
        res.keys_seen.insert(1, 102);
        res.criterion.push(("record".into(), 8.3, 8.2, 8.4));
        res.profile.push(Profile {
            listener: "none".into(),
            cpu_us: 65.4,
            shares: [(ENVOY_BUCKET.to_string(), 0.8)].into_iter().collect(),
        });
        let before = raw(res);
        let path = std::env::temp_dir().join(format!(
            "meshbreaker-overhead-{}/results.json",
            std::process::id()
        ));
        before.save(&path).unwrap();
        let after = Raw::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        // Compared through the JSON, where NaN is null; serde_json's reading of a float may be
        // off by its last bit, which is why the run reports from the file read back too.
        let json = |r: &Raw| serde_json::to_value(r).unwrap();
        assert_close(&json(&after), &json(&before));
        assert!(after.res.main[&1]["none"][0].cpu_us.is_nan());
        assert_eq!(after.opts, before.opts);
        assert_eq!(after.run.versions, before.run.versions);
        assert_eq!(after.run.took, before.run.took);
    }

    /// `a` and `b` alike, their numbers within a relative 1e-12.
    fn assert_close(a: &Value, b: &Value) {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{x} vs {y}");
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len());
                x.iter().zip(y).for_each(|(x, y)| assert_close(x, y));
            }
            (Value::Object(x), Value::Object(y)) => {
                assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
                x.iter().for_each(|(k, x)| assert_close(x, &y[k]));
            }
            _ => assert_eq!(a, b),
        }
    }

    #[test]
    fn results_of_another_layout_are_refused() {
        let mut other = raw(results(50.0, 16384.0));
        other.format = FORMAT + 1;
        let path = std::env::temp_dir().join(format!(
            "meshbreaker-overhead-layout-{}/results.json",
            std::process::id()
        ));
        other.save(&path).unwrap();
        let err = Raw::load(&path).unwrap_err();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        assert!(err.contains("measure again"), "{err}");
    }

    #[test]
    fn bootstraps_match_their_snapshots() {
        use meshbreaker_harness::snapshot::check_bootstrap;
        check_bootstrap("bench-upstream", &upstream_yaml()).unwrap();
        let proxy = proxy_yaml(
            8080,
            Path::new("/snapshot/meshbreaker.wasm"),
            Path::new("/snapshot/noop.wasm"),
            Path::new("/snapshot/libmeshbreaker.so"),
            50,
        );
        check_bootstrap("bench-proxy", &proxy).unwrap();
        // The RSS-per-key proxies, one per shell.
        let config = r#"{"key_by":"authority","max_keys":100000}"#;
        let wasm = wasm_filter(
            "mb_keys",
            "meshbreaker",
            Path::new("/snapshot/meshbreaker.wasm"),
            config,
        );
        let rss = proxy_yaml_with(8080, &[("mb_keys".to_string(), Some(wasm))]);
        check_bootstrap("bench-proxy-rss", &rss).unwrap();
        let native = native_module_filter(Path::new("/snapshot/libmeshbreaker.so"), config);
        let rss = proxy_yaml_with(8080, &[("mb_keys".to_string(), Some(native))]);
        check_bootstrap("bench-proxy-rss-native", &rss).unwrap();
    }

    #[test]
    fn proxy_config_has_a_listener_per_contender_and_host_call_kind() {
        let y = proxy_yaml(
            8080,
            Path::new("/m.wasm"),
            Path::new("/n.wasm"),
            Path::new("/libmeshbreaker.so"),
            50,
        );
        let v: Value = serde_json::from_str(&y).unwrap();
        let names: Vec<&str> = v["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["name"].as_str())
            .collect();
        for l in MAIN {
            assert!(names.contains(l), "{l}");
        }
        for (k, _) in HOST_CALLS {
            assert!(y.contains(&format!("\"value\":\"{k}=50\"")), "{k}");
        }
        assert!(y.contains("\"port_value\":8080"));
        assert!(y.contains("\"filename\":\"/libmeshbreaker.so\""));
        assert!(y.contains("\"do_not_close\":true"));
    }
}

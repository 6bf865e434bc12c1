//! A real Prometheus beside `cargo xtask demo`: it scrapes the demo's Envoy (and the eBPF
//! sidecar when it runs) and evaluates the shipped rules (`observability/rules/`), so a person
//! can look at the series while the demo runs, and `--ci` can prove the PromQL the project ships.
//!
//! Why against the demo and not synthetic series: `promtool test rules` proves the rules' logic
//! on series the test writes; only a real scrape proves that the names, labels and tag
//! extraction the rules, the dashboard and `docs/operations.md` rely on are what Envoy serves.
//!
//! ## What `--ci` asserts
//! - every expression of the rules file, of the Grafana dashboard and of the PromQL block of
//!   `docs/operations.md` returns at least one series, each with the labels the expression keeps
//!   (`key` for meshbreaker's own metrics, the `by (…)` labels where it aggregates); an alert's
//!   expression is run without its comparison, so a quiet alert still proves its series exist;
//! - `MeshbreakerCircuitOpen` fires during every failing phase and is resolved at the end of the
//!   last recovery (from Prometheus' own `ALERTS` series).
//!
//! ## Demo time
//! The demo's breaker windows are seconds, not minutes, so the Prometheus here scrapes and
//! evaluates every 250 ms and every alert's `for:` is cut to [`DEMO_FOR`]; the expressions are the
//! shipped ones, byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{root, Result};

/// Every alert's `for:` in the demo: long enough to show "pending" first, short enough that a
/// 4 s failing phase (`--ci`) fires. The rules file says minutes; the demo's windows are seconds.
pub const DEMO_FOR: &str = "500ms";
/// How late after a failing phase's end its alert may start firing and still count for it: the
/// alert fires [`DEMO_FOR`] after the open, plus one scrape and one evaluation (250 ms each), and
/// an open can come late in a 4 s phase.
pub const FIRING_GRACE_S: f64 = 1.0;
/// The scrape job of the eBPF sidecar, as the `MeshbreakerSidecarDown` alert expects it.
const SIDECAR_JOB: &str = "meshbreaker-sidecar";

/// Debian's `prometheus` package (installed by `cargo xtask demo`, `test` and `deps`), if present.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("prometheus"))
        .find(|p| p.is_file())
}

fn rules_file() -> PathBuf {
    root().join("observability/rules/meshbreaker.rules.yaml")
}

/// Writes `prometheus.yml` and the demo-time rules into `dir`; returns the command that runs
/// Prometheus on `port` with its data in `dir/data`.
pub fn prepare(
    bin: &Path,
    dir: &Path,
    port: u16,
    envoy_admin: u16,
    sidecar: u16,
) -> Result<Command> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = rules_file();
    let text = fs::read_to_string(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut cut = 0;
    let rules: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                cut += 1;
                format!("{indent}for: {DEMO_FOR}")
            }
            _ => l.to_owned(),
        })
        .collect();
    if cut == 0 {
        return Err(format!(
            "{}: no `for:` line to cut to demo time",
            src.display()
        ));
    }
    fs::write(dir.join("meshbreaker.rules.yaml"), rules.join("\n") + "\n")
        .map_err(|e| e.to_string())?;
    let mut config = format!(
        "global:\n  scrape_interval: 250ms\n  evaluation_interval: 250ms\n\
         rule_files: [meshbreaker.rules.yaml]\n\
         scrape_configs:\n\
         \x20 - job_name: envoy\n    metrics_path: /stats/prometheus\n\
         \x20   static_configs: [{{targets: ['127.0.0.1:{envoy_admin}']}}]\n"
    );
    // Scraped even when the sidecar could not start: `up` is then 0, and the sidecar-down alert
    // has the series it watches.
    config.push_str(&format!(
        "  - job_name: {SIDECAR_JOB}\n    static_configs: [{{targets: ['127.0.0.1:{sidecar}']}}]\n"
    ));
    fs::write(dir.join("prometheus.yml"), config).map_err(|e| e.to_string())?;
    let mut c = Command::new(bin);
    c.current_dir(dir)
        .arg("--config.file=prometheus.yml")
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Ok(c)
}

/// `GET path` on Prometheus (HTTP/1.0: one plain body, no chunking).
fn get(port: u16, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("prometheus 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        Some((head, body)) => Err(format!(
            "prometheus {path}: {} {body}",
            head.lines().next().unwrap_or("")
        )),
        None => Err(format!("prometheus {path}: no response")),
    }
}

pub fn ready(port: u16) -> bool {
    get(port, "/-/ready").is_ok()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data.result` of an API call, failing on anything but `"status": "success"`.
fn api(port: u16, path: &str) -> Result<Vec<Value>> {
    let body = get(port, path)?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{path}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn labels(series: &Value) -> BTreeMap<String, String> {
    series["metric"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// One expression the project ships, where it comes from, and the labels each of its series
/// must carry.
#[derive(Debug)]
pub struct Shipped {
    pub source: String,
    pub expr: String,
    pub labels: Vec<String>,
}

/// The labels an expression keeps: its outermost `by (…)`, else `key` for meshbreaker's own
/// metrics, else `instance` (a scraped series).
fn kept_labels(expr: &str) -> Vec<String> {
    if let Some((_, rest)) = expr.split_once("by (") {
        if let Some((list, _)) = rest.split_once(')') {
            return list.split(',').map(|l| l.trim().to_owned()).collect();
        }
    }
    // A metric name starting with `meshbreaker_` (not `envoy_wasm_meshbreaker_…`).
    let ours = expr.match_indices("meshbreaker_").any(|(i, _)| {
        !expr[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    if ours {
        vec!["key".into()]
    } else {
        vec!["instance".into()]
    }
}

/// An alert's expression without its final comparison with a number.
fn without_comparison(expr: &str) -> String {
    for op in [" >= ", " <= ", " == ", " != ", " > ", " < "] {
        if let Some((lhs, rhs)) = expr.rsplit_once(op) {
            if rhs.trim().parse::<f64>().is_ok() {
                return lhs.trim().to_owned();
            }
        }
    }
    expr.to_owned()
}

/// Every PromQL expression of the rules file, the dashboard and docs/operations.md.
pub fn shipped_expressions() -> Result<Vec<Shipped>> {
    let mut out = Vec::new();
    let rules_text = fs::read_to_string(rules_file()).map_err(|e| e.to_string())?;
    let rules: Value = serde_yaml_ng::from_str(&rules_text).map_err(|e| e.to_string())?;
    for g in rules["groups"].as_array().ok_or("rules: no groups")? {
        for r in g["rules"]
            .as_array()
            .ok_or("rules: a group without rules")?
        {
            let expr = r["expr"].as_str().ok_or("rules: a rule without expr")?;
            let (name, expr) = match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(rec), _) => (rec, expr.to_owned()),
                (_, Some(alert)) => (alert, without_comparison(expr)),
                _ => return Err("rules: neither record nor alert".into()),
            };
            out.push(Shipped {
                source: format!("rules {name}"),
                labels: kept_labels(&expr),
                expr,
            });
        }
    }
    let dash_path = root().join("observability/grafana/meshbreaker.json");
    let dash: Value = serde_json::from_str(
        &fs::read_to_string(&dash_path).map_err(|e| format!("{}: {e}", dash_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", dash_path.display()))?;
    for p in dash["panels"].as_array().ok_or("dashboard: no panels")? {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .ok_or("dashboard: a target without expr")?
                .replace("$key", ".*")
                .replace("$__rate_interval", "5s");
            out.push(Shipped {
                source: format!("dashboard \"{}\"", p["title"].as_str().unwrap_or("?")),
                labels: kept_labels(&expr),
                expr,
            });
        }
    }
    for expr in operations_promql()? {
        // A condition (`… > 0`) is run without its comparison, as an alert's is.
        let expr = without_comparison(&expr);
        out.push(Shipped {
            source: "docs/operations.md".into(),
            labels: kept_labels(&expr),
            expr,
        });
    }
    Ok(out)
}

/// The expressions of the ```promql block of docs/operations.md: comments dropped, an indented
/// line continues the expression above it.
pub fn operations_promql() -> Result<Vec<String>> {
    let path = root().join("docs/operations.md");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = text
        .split("```promql\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .ok_or("docs/operations.md has no ```promql block")?;
    let mut out: Vec<String> = Vec::new();
    for line in block.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match out.last_mut() {
            Some(last) if line.starts_with(' ') => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => out.push(line.trim().to_owned()),
        }
    }
    Ok(out)
}

/// `--ci`: every shipped expression returns series with the labels it keeps.
pub fn check_expressions(port: u16) -> Result<usize> {
    let shipped = shipped_expressions()?;
    let mut problems = Vec::new();
    for s in &shipped {
        let result = api(port, &format!("/api/v1/query?query={}", encode(&s.expr)))?;
        if result.is_empty() {
            problems.push(format!("{}: `{}` returned no series", s.source, s.expr));
            continue;
        }
        for series in &result {
            let l = labels(series);
            for want in &s.labels {
                if l.get(want).is_none_or(String::is_empty) {
                    problems.push(format!(
                        "{}: `{}` returned a series without `{want}`: {l:?}",
                        s.source, s.expr
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        eprintln!(
            "prometheus: all {} shipped expressions (rules, dashboard, docs/operations.md) return series with their labels",
            shipped.len()
        );
        Ok(shipped.len())
    } else {
        Err(format!("prometheus:\n  {}", problems.join("\n  ")))
    }
}

/// Seconds since the epoch, as Prometheus' API takes them.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The intervals (seconds since `t0`) in which `alert` was firing for `key`, from Prometheus'
/// `ALERTS` series over [`t0`, `end`], sampled every 250 ms.
pub fn firing(port: u16, alert: &str, key: &str, t0: f64, end: f64) -> Result<Vec<(f64, f64)>> {
    let step = 0.25;
    let q = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\",key=\"{key}\"}}");
    let result = api(
        port,
        &format!(
            "/api/v1/query_range?query={}&start={t0:.3}&end={end:.3}&step={step}",
            encode(&q)
        ),
    )?;
    let mut times: Vec<f64> = result
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v[0].as_f64())
        .map(|t| t - t0)
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let mut out: Vec<(f64, f64)> = Vec::new();
    for t in times {
        match out.last_mut() {
            // A resolved alert's series gets a stale marker: a gap longer than a few
            // evaluations is a resolution.
            Some((_, end)) if t - *end <= 1.0 + 1e-6 => *end = t,
            _ => out.push((t, t)),
        }
    }
    Ok(out)
}

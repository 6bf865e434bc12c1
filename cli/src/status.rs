//! `meshbreaker status`: a running Envoy's meshbreaker metrics (SPEC "What an operator sees"),
//! read from the admin endpoint's `/stats/prometheus` and shown as one row per key.
//!
//! Why Prometheus text and not `/stats?format=json`: the `key`, `decision` and `to` labels exist
//! only after Envoy's `stats_tags` (or Istio's `extraStatTags`) extracted them, and the
//! Prometheus output is where they are labels. Names may carry a prefix (`envoy_`,
//! `wasmcustom_`); the suffix decides.

use std::collections::BTreeMap;

use policy_core::metrics as names;

/// One key's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRow {
    pub key: String,
    pub state: Option<f64>,
    pub error_rate_ppm: Option<f64>,
    pub p95_ms: Option<f64>,
    pub allowed: f64,
    pub rejected: f64,
    pub probe: f64,
    pub dry_run_reject: f64,
    pub to_open: f64,
    pub to_half_open: f64,
    pub to_closed: f64,
    pub budget_denied: f64,
    pub kernel_resets: f64,
}

/// GETs `<admin>/stats/prometheus`.
pub fn fetch(admin: &str) -> Result<String, String> {
    let url = format!("{}/stats/prometheus", admin.trim_end_matches('/'));
    let mut resp = ureq::get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    resp.body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))
}

/// `name{a="b",c="d"} value` → (name, labels, value); comments and other lines are `None`.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, BTreeMap::new(), value));
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        // Values escape `\` and `"` with a backslash.
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, other)) => v.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        let end = end?;
        labels.insert(k.trim_start_matches(','), v);
        rest = after.get(end + 1..)?.trim_start_matches(',');
    }
    Some((name, labels, value))
}

/// The per-key rows of a `/stats/prometheus` text, sorted by key.
pub fn rows(text: &str) -> Vec<KeyRow> {
    let mut by_key: BTreeMap<String, KeyRow> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(metric) = name.find("meshbreaker_").map(|i| &name[i..]) else {
            continue;
        };
        let Some(key) = labels.get("key") else {
            continue;
        };
        let row = by_key.entry(key.clone()).or_insert_with(|| KeyRow {
            key: key.clone(),
            ..KeyRow::default()
        });
        let label = |k: &str| labels.get(k).map(String::as_str);
        match metric {
            names::STATE => row.state = Some(value),
            names::ERROR_RATE_PPM => row.error_rate_ppm = Some(value),
            names::LATENCY_P95_MS => row.p95_ms = Some(value),
            names::REQUESTS_TOTAL => match label("decision") {
                Some("allowed") => row.allowed += value,
                Some("rejected") => row.rejected += value,
                Some("probe") => row.probe += value,
                Some("dry_run_reject") => row.dry_run_reject += value,
                _ => {}
            },
            names::TRANSITIONS_TOTAL => match label("to") {
                Some("open") => row.to_open += value,
                Some("half_open") => row.to_half_open += value,
                Some("closed") => row.to_closed += value,
                _ => {}
            },
            names::RETRY_BUDGET_DENIED_TOTAL => row.budget_denied += value,
            names::KERNEL_RESETS_TOTAL => row.kernel_resets += value,
            _ => {}
        }
    }
    by_key.into_values().collect()
}

fn state_name(v: Option<f64>) -> &'static str {
    match v {
        Some(0.0) => "closed",
        Some(1.0) => "OPEN",
        Some(2.0) => "half-open",
        Some(_) => "?",
        None => "-",
    }
}

/// The table `meshbreaker status` prints.
pub fn table(rows: &[KeyRow]) -> String {
    let header = [
        "KEY", "STATE", "ERR%", "P95ms", "ALLOWED", "REJECTED", "PROBE", "DRYRUN", "OPENED",
        "HALF", "CLOSED", "BUDGET", "KRESETS",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let n = |v: f64| format!("{v:.0}");
    for r in rows {
        lines.push(vec![
            r.key.clone(),
            state_name(r.state).into(),
            r.error_rate_ppm
                .map_or("-".into(), |p| format!("{:.1}", p / 10_000.0)),
            r.p95_ms.map_or("-".into(), |p| format!("{p:.0}")),
            n(r.allowed),
            n(r.rejected),
            n(r.probe),
            n(r.dry_run_reject),
            n(r.to_open),
            n(r.to_half_open),
            n(r.to_closed),
            n(r.budget_denied),
            n(r.kernel_resets),
        ]);
    }
    let cols = header.len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        for (c, cell) in l.iter().enumerate() {
            if c == 0 {
                out.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no meshbreaker keys yet: no traffic, or the stats_tags that make `key` a label are missing)\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE meshbreaker_state gauge
meshbreaker_state{key="outbound|8080||reviews.default.svc"} 1
meshbreaker_state{key="backend"} 0
meshbreaker_error_rate_ppm{key="backend"} 250000
meshbreaker_latency_p95_ms{key="backend"} 42
meshbreaker_requests_total{key="backend",decision="allowed"} 90
meshbreaker_requests_total{key="backend",decision="rejected"} 10
envoy_meshbreaker_transitions_total{key="backend",to="open"} 2
meshbreaker_transitions_total{key="backend",to="closed"} 1
meshbreaker_retry_budget_denied_total{key="backend"} 3
envoy_cluster_upstream_rq{cluster="x"} 5
"#;

    #[test]
    fn rows_collect_each_key_and_label() {
        let r = rows(TEXT);
        assert_eq!(r.len(), 2);
        let b = &r[0];
        assert_eq!(b.key, "backend");
        assert_eq!(b.state, Some(0.0));
        assert_eq!(b.error_rate_ppm, Some(250_000.0));
        assert_eq!(
            (
                b.allowed,
                b.rejected,
                b.to_open,
                b.to_closed,
                b.budget_denied
            ),
            (90.0, 10.0, 2.0, 1.0, 3.0)
        );
        assert_eq!(r[1].key, "outbound|8080||reviews.default.svc");
        assert_eq!(r[1].state, Some(1.0));
    }

    #[test]
    fn table_shows_state_names_and_percentages() {
        let t = table(&rows(TEXT));
        let backend = t.lines().find(|l| l.starts_with("backend")).unwrap();
        assert!(
            backend.contains("closed") && backend.contains("25.0"),
            "{backend}"
        );
        assert!(t.contains("OPEN"));
    }

    #[test]
    fn label_values_unescape() {
        let (_, l, v) = sample(r#"meshbreaker_state{key="a\"b\\c"} 2"#).unwrap();
        assert_eq!(l["key"], "a\"b\\c");
        assert_eq!(v, 2.0);
    }
}

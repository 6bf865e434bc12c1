//! The text a replay prints: the transitions per key, then a summary table (side by side with
//! `--compare`).

use std::fmt::Write as _;

use crate::accesslog::format_time_ms;
use crate::replay::{KeyReport, Totals};

/// One replayed configuration: its name (the file), totals and per-key reports.
pub struct Run {
    pub name: String,
    pub totals: Totals,
    pub keys: Vec<KeyReport>,
}

fn offset(ms: u64, first: u64) -> String {
    let d = ms.saturating_sub(first);
    format!("+{}.{:03}s", d / 1000, d % 1000)
}

/// Transitions of one run, per key.
pub fn transitions(run: &Run) -> String {
    let mut out = String::new();
    let first = run.totals.first_ms.unwrap_or(0);
    let _ = writeln!(out, "== {}: transitions", run.name);
    for k in &run.keys {
        if k.transitions.is_empty() {
            continue;
        }
        let _ = writeln!(out, "key {}", k.key);
        for t in &k.transitions {
            if t.from == t.to {
                continue;
            }
            let reason = t.reason.map_or("", |r| r.as_str());
            let _ = writeln!(
                out,
                "  {} ({:>10})  {:>9} -> {:<9} {reason:<13} {}",
                format_time_ms(t.at_ms),
                offset(t.at_ms, first),
                t.from.as_str(),
                t.to.as_str(),
                t.figures
            );
        }
        if k.transitions_dropped > 0 {
            let _ = writeln!(
                out,
                "  … {} more transitions not listed",
                k.transitions_dropped
            );
        }
    }
    out
}

/// The summary table: per key, requests, failures and per run rejected / spared / cost / opened.
pub fn summary(runs: &[Run]) -> String {
    let mut keys: Vec<&str> = Vec::new();
    for r in runs {
        for k in &r.keys {
            if !keys.contains(&k.key.as_str()) {
                keys.push(&k.key);
            }
        }
    }
    let mut header = vec!["KEY".to_string(), "REQUESTS".into(), "FAILED".into()];
    for (i, _) in runs.iter().enumerate() {
        let tag = if runs.len() > 1 {
            format!("[{}]", (b'A' + i as u8) as char)
        } else {
            String::new()
        };
        for col in ["REJECTED", "SPARED", "COST", "OPENED"] {
            header.push(format!("{col}{tag}"));
        }
    }
    let mut rows = vec![header];
    for key in &keys {
        let mut row = vec![key.to_string()];
        let base = runs
            .iter()
            .find_map(|r| r.keys.iter().find(|k| k.key == *key));
        row.push(base.map_or(0, |k| k.requests).to_string());
        row.push(base.map_or(0, |k| k.failed).to_string());
        for r in runs {
            let k = r.keys.iter().find(|k| k.key == *key);
            let opened = k.map_or(0, |k| {
                k.transitions
                    .iter()
                    .filter(|t| t.to.as_str() == "open" && t.from != t.to)
                    .count()
            });
            row.push(k.map_or(0, |k| k.rejected).to_string());
            row.push(k.map_or(0, |k| k.spared).to_string());
            row.push(k.map_or(0, |k| k.cost).to_string());
            row.push(opened.to_string());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in runs.iter().enumerate() {
        let t = &r.totals;
        let span = t.last_ms.saturating_sub(t.first_ms.unwrap_or(t.last_ms));
        let tag = if runs.len() > 1 {
            format!("[{}] ", (b'A' + i as u8) as char)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{tag}{}: {} lines, {} replayed over {}.{:03}s of log time ({} answered locally, {} unreadable, {} beyond max_keys)",
            r.name,
            t.lines,
            t.replayed,
            span / 1000,
            span % 1000,
            t.answered_locally,
            t.unreadable,
            t.over_max_keys
        );
    }
    for row in &rows {
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
    }
    out.push_str("SPARED: rejected requests that failed in reality; COST: rejected requests that succeeded.\n");
    out
}

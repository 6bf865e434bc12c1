//! `replay --svg FILE`: a timeline per key, drawn with plotters. The line is the window's error
//! rate as the replayed breaker saw it; shaded spans are OPEN (red) and HALF_OPEN (amber). With
//! `--compare`, configuration A shades the upper half of each panel and B the lower half.

use std::path::Path;

use plotters::prelude::*;
use policy_core::breaker::State;

use crate::report::Run;

/// Most keys drawn (the busiest).
pub const MAX_PANELS: usize = 8;

/// Spans `(from_s, to_s, state)` where a key was not CLOSED, in seconds since `first`.
fn spans(run: &Run, key: &str, first: u64, end_s: f64) -> Vec<(f64, f64, State)> {
    let Some(k) = run.keys.iter().find(|k| k.key == key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut current: Option<(f64, State)> = None;
    for t in &k.transitions {
        let at = t.at_ms.saturating_sub(first) as f64 / 1000.0;
        if let Some((from, s)) = current.take() {
            out.push((from, at, s));
        }
        if t.to != State::Closed {
            current = Some((at, t.to));
        }
    }
    if let Some((from, s)) = current {
        out.push((from, end_s, s));
    }
    out
}

pub fn draw(path: &Path, runs: &[Run]) -> Result<(), String> {
    let Some(base) = runs.first() else {
        return Ok(());
    };
    let mut keys: Vec<(&str, u64)> = base
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.requests))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.1));
    keys.truncate(MAX_PANELS);
    let first = runs
        .iter()
        .filter_map(|r| r.totals.first_ms)
        .min()
        .unwrap_or(0);
    let last = runs.iter().map(|r| r.totals.last_ms).max().unwrap_or(first);
    let end_s = (last.saturating_sub(first) as f64 / 1000.0).max(1.0);
    let panels = keys.len().max(1);
    let root = SVGBackend::new(path, (1200, 60 + 180 * panels as u32)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let title = if runs.len() > 1 {
        format!(
            "meshbreaker replay: A = {} (upper), B = {} (lower)",
            names[0], names[1]
        )
    } else {
        format!("meshbreaker replay: {}", names[0])
    };
    let (top, body) = root.split_vertically(40);
    top.titled(&title, ("sans-serif", 20)).map_err(err)?;
    let areas = body.split_evenly((panels, 1));
    for (area, (key, _)) in areas.iter().zip(&keys) {
        let mut chart = ChartBuilder::on(area)
            .caption(*key, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..end_s, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds of log time")
            .y_desc("error rate")
            .x_labels(10)
            .y_labels(3)
            .draw()
            .map_err(err)?;
        for (i, run) in runs.iter().enumerate().take(2) {
            let (lo, hi) = match (runs.len(), i) {
                (1, _) => (0.0, 1.0),
                (_, 0) => (0.5, 1.0),
                _ => (0.0, 0.5),
            };
            for (from, to, state) in spans(run, key, first, end_s) {
                let color = if state == State::Open {
                    RED.mix(0.25)
                } else {
                    RGBColor(255, 170, 0).mix(0.3)
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(from, lo), (to.max(from + 0.01), hi)],
                        color.filled(),
                    )))
                    .map_err(err)?;
            }
            if let Some(k) = run.keys.iter().find(|k| k.key == *key) {
                let style = if i == 0 {
                    BLUE.stroke_width(1)
                } else {
                    BLACK.mix(0.6).stroke_width(1)
                };
                // No samples are merged while a key is OPEN: break the line at gaps instead of
                // drawing a slope across them.
                let gap_s = 2.5 * k.point_step_ms as f64 / 1000.0;
                let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
                for (t, e, _) in &k.points {
                    let x = t.saturating_sub(first) as f64 / 1000.0;
                    let last = segments.last().and_then(|s| s.last()).map(|p| p.0);
                    if last.is_some_and(|px| x - px > gap_s) {
                        segments.push(Vec::new());
                    }
                    if let Some(seg) = segments.last_mut() {
                        seg.push((x, f64::from(*e)));
                    }
                }
                for seg in segments {
                    chart
                        .draw_series(LineSeries::new(seg, style))
                        .map_err(err)?;
                }
            }
        }
    }
    root.present().map_err(err)
}

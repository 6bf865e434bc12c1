//! The picture: RSS and the filter's decisions over time, with the events marked.

use std::path::Path;

use super::sampling::*;
use super::schedule::*;

/// RSS over time and the filter's decisions per second, with the warm-up and events marked.
pub(super) fn plot(path: &Path, samples: &[Sample], events: &[Event], warmup_s: f64) {
    use plotters::prelude::*;
    let Some(end) = samples.last().map(|s| s.t) else {
        return;
    };
    let root_area = SVGBackend::new(path, (960, 640)).into_drawing_area();
    let _ = root_area.fill(&WHITE);
    let (top, bottom) = root_area.split_vertically(320);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let lo = samples.iter().map(|s| mib(s.rss)).fold(f64::MAX, f64::min);
    let hi = samples.iter().map(|s| mib(s.rss)).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.2).max(2.0);
    if let Ok(mut chart) = ChartBuilder::on(&top)
        .caption(
            "Envoy RSS (MiB); grey: warm-up, blue: reload, red: sidecar killed / restarted",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, (lo - pad)..(hi + pad))
    {
        let _ = chart.configure_mesh().x_desc("seconds").draw();
        let _ = chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, lo - pad), (warmup_s, hi + pad)],
            RGBColor(235, 235, 235).filled(),
        )));
        for e in events.iter().filter(|e| !e.what.starts_with("upstream")) {
            let color = if e.what.contains("reload") { BLUE } else { RED };
            let _ = chart.draw_series(std::iter::once(PathElement::new(
                vec![(e.at, lo - pad), (e.at, hi + pad)],
                color.mix(0.5),
            )));
        }
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            samples
                .iter()
                .map(|s| (s.t, mib(s.rss)))
                .collect::<Vec<_>>(),
            BLACK.stroke_width(2),
        )));
    }
    let rate = |k: &str| -> Vec<(f64, f64)> {
        samples
            .windows(2)
            .map(|w| {
                let a = w[0].filter.get(k).copied().unwrap_or(0);
                let b = w[1].filter.get(k).copied().unwrap_or(0);
                let dt = (w[1].t - w[0].t).max(0.1);
                (w[1].t, b.saturating_sub(a) as f64 / dt)
            })
            .collect()
    };
    let allowed = rate("requests_total.allowed");
    let rejected = rate("requests_total.rejected");
    let top_rate = allowed
        .iter()
        .chain(rejected.iter())
        .map(|x| x.1)
        .fold(1.0, f64::max);
    if let Ok(mut chart) = ChartBuilder::on(&bottom)
        .caption(
            "decisions/s (black allowed, red rejected); upstream failing (red), slow (yellow), resetting (violet)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..top_rate * 1.1)
    {
        let _ = chart.configure_mesh().x_desc("seconds").draw();
        let phases: Vec<(f64, &str)> = events
            .iter()
            .filter_map(|e| e.what.strip_prefix("upstream ").map(|p| (e.at, p)))
            .collect();
        for (i, (at, phase)) in phases.iter().enumerate() {
            let until = phases.get(i + 1).map_or(end, |n| n.0);
            let color = match *phase {
                "failing" => RGBColor(255, 215, 215),
                "slow" => RGBColor(255, 245, 200),
                "resetting" => RGBColor(230, 215, 255),
                _ => continue,
            };
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(*at, 0.0), (until, top_rate * 1.1)],
                color.filled(),
            )));
        }
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            allowed,
            BLACK.stroke_width(2),
        )));
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            rejected,
            RED.stroke_width(2),
        )));
    }
    let _ = root_area.present();
}

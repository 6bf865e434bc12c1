//! `timeline.svg`: the run at a glance. Four panels over one time axis: the circuit state as
//! coloured bands with every phase labelled, the window error rate, the window P95 and the
//! requests rejected per second.

use std::path::Path;

use plotters::prelude::*;

use crate::drive::Report;

pub const CLOSED: RGBColor = RGBColor(76, 175, 80);
pub const OPEN: RGBColor = RGBColor(229, 57, 53);
pub const HALF_OPEN: RGBColor = RGBColor(255, 179, 0);

fn state_color(state: u8) -> RGBColor {
    match state {
        1 => OPEN,
        2 => HALF_OPEN,
        _ => CLOSED,
    }
}

/// A panel: its caption, the value at sample i, the line colour.
type Panel<'a> = (&'a str, Box<dyn Fn(usize) -> f64 + 'a>, RGBColor);

pub fn timeline(r: &Report, out: &Path) -> Result<(), String> {
    draw(r, out).map_err(|e| format!("{}: {e}", out.display()))
}

fn draw(r: &Report, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let end = r.phases.last().map_or(1.0, |p| p.end_s).max(1.0);
    let root = SVGBackend::new(out, (1200, 860)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("meshbreaker demo — key {}", r.key),
        ("sans-serif", 22).into_font(),
    )?;
    let (bands, rest) = root.split_vertically(170);
    let panels = rest.split_evenly((3, 1));

    // Panel 1: state bands and phase labels.
    let mut chart = ChartBuilder::on(&bands)
        .margin(10)
        .x_label_area_size(25)
        .y_label_area_size(60)
        .caption(
            "circuit state (green closed, red open, amber half-open)",
            ("sans-serif", 16),
        )
        .build_cartesian_2d(0.0..end, 0.0..2.0)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("seconds")
        .draw()?;
    for w in r.samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a.t, 0.0), (b.t, 1.2)],
            state_color(a.state).filled(),
        )))?;
    }
    for p in &r.phases {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(p.start_s, 0.0), (p.start_s, 2.0)],
            BLACK.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (p.start_s + 0.2, 1.75),
            ("sans-serif", 15).into_font(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("fault: {}", p.fault),
            (p.start_s + 0.2, 1.45),
            ("sans-serif", 11).into_font(),
        )))?;
    }

    // Panels 2-4: error rate, P95, rejected per second.
    let series: [Panel; 3] = [
        (
            "window error rate (%)",
            Box::new(|i| r.samples[i].error_rate * 100.0),
            RGBColor(198, 40, 40),
        ),
        (
            "window P95 (ms)",
            Box::new(|i| r.samples[i].p95_ms),
            RGBColor(21, 101, 192),
        ),
        (
            "rejected per second",
            Box::new(|i| {
                if i == 0 {
                    return 0.0;
                }
                let (a, b) = (&r.samples[i - 1], &r.samples[i]);
                let dt = (b.t - a.t).max(1e-3);
                b.rejected.saturating_sub(a.rejected) as f64 / dt
            }),
            RGBColor(106, 27, 154),
        ),
    ];
    for (area, (label, value, color)) in panels.iter().zip(series.iter()) {
        let values: Vec<(f64, f64)> = (0..r.samples.len())
            .map(|i| (r.samples[i].t, value(i)))
            .collect();
        let top = values.iter().map(|v| v.1).fold(1.0_f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(60)
            .caption(*label, ("sans-serif", 16))
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        // The state as a faint background, so each curve reads against the circuit.
        for w in r.samples.windows(2) {
            if w[0].state != 0 {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(w[0].t, 0.0), (w[1].t, top)],
                    state_color(w[0].state).mix(0.12).filled(),
                )))?;
            }
        }
        chart.draw_series(LineSeries::new(values, color.stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}

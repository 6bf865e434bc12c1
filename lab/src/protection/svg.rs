//! The pictures: each fault's timeline, and the slow scenario's states.

use crate::util::Result;
use policy_core::breaker::State;
use std::path::Path;

use super::analysis::*;
use super::model::*;

pub(super) fn draw_timeline(path: &Path, fault: Fault, runs: &[&ScenarioRun]) -> Result {
    use plotters::prelude::*;
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    let height = 380 * runs.len() as u32;
    let root_area = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root_area.split_evenly((runs.len(), 1));
    let phases = runs.first().map_or(FULL, |r| r.scenario.phases);
    let x0 = -(phases.warm.as_secs_f64());
    let x1 = (phases.fault + phases.recover).as_secs_f64();
    let fault_s = phases.fault.as_secs_f64();
    for (panel, run) in panels.iter().zip(runs) {
        let all: Vec<(System, Metrics)> = run
            .data
            .iter()
            .map(|(s, d)| (*s, analyse(run, d)))
            .collect();
        let ymax = all
            .iter()
            .flat_map(|(_, m)| m.timeline.iter().map(|p| p.1))
            .fold(10.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} — {} host{}: requests reaching the bad host per second",
                    fault.id(),
                    run.scenario.hosts,
                    if run.scenario.hosts == 1 {
                        ""
                    } else {
                        "s, one bad"
                    }
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the fault (shaded: fault on)")
            .y_desc("req/s to the bad host")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (fault_s, ymax)],
                RGBColor(0xee, 0xee, 0xee).filled(),
            )))
            .map_err(|e| e.to_string())?;
        for (i, (sys, m)) in all.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    m.timeline.clone(),
                    color.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?
                .label(sys.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root_area.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The state of every meshbreaker key of the slow runs over time, one panel per run and system.
pub(super) fn draw_states(path: &Path, runs: &[&ScenarioRun]) -> Result {
    use plotters::prelude::*;
    let panels_of: Vec<(&ScenarioRun, System, &SysData)> = runs
        .iter()
        .flat_map(|r| {
            r.data
                .iter()
                .filter(|(s, _)| s.is_meshbreaker())
                .map(move |(s, d)| (*r, *s, d))
        })
        .collect();
    if panels_of.is_empty() {
        return Ok(());
    }
    let root_area = SVGBackend::new(path, (1000, 170 * panels_of.len() as u32)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root_area.split_evenly((panels_of.len(), 1));
    let level = |s: State| match s {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
    };
    for (panel, (run, sys, d)) in panels.iter().zip(&panels_of) {
        let p = run.scenario.phases;
        let (x0, x1) = (-(p.warm.as_secs_f64()), (p.fault + p.recover).as_secs_f64());
        let at = |t: u64| (t as f64 - run.t_fault as f64) / 1000.0;
        let mut pts = vec![(x0, 0.0)];
        let mut now = 0.0;
        for c in &d.changes {
            let x = at(c.t).clamp(x0, x1);
            pts.push((x, now));
            now = level(c.to);
            pts.push((x, now));
        }
        pts.push((x1, now));
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "slow — {} host{}: {} ({} closes while slow)",
                    run.scenario.hosts,
                    if run.scenario.hosts == 1 { "" } else { "s" },
                    sys.label(),
                    analyse(run, d).closes_fault
                ),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, -0.2..2.3)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_labels(3)
            .y_label_formatter(&|y: &f64| match y.round() as i64 {
                0 => "closed".into(),
                1 => "open".into(),
                2 => "half-open".into(),
                _ => String::new(),
            })
            .x_desc("seconds since the fault (shaded: slow)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, -0.2), (p.fault.as_secs_f64(), 2.3)],
                RGBColor(0xee, 0xee, 0xee).filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                pts,
                RGBColor(0xd6, 0x27, 0x28).stroke_width(2),
            )))
            .map_err(|e| e.to_string())?;
    }
    root_area.present().map_err(|e| e.to_string())?;
    Ok(())
}

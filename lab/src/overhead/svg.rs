//! The picture, `docs/img/overhead.svg`: top row per contender and concurrency (throughput per
//! proxy core relative to no filter, added proxy CPU per request, p50 at the fixed rate); bottom
//! row the price of one host call per kind and each shell's RSS per tracked key against its
//! target. Bars are medians, whiskers the min–max over rounds.

use std::collections::BTreeMap;
use std::path::Path;

use super::derive::{col, derive, Derived};
use super::run::{Results, Sample};
use super::{FIXED_RATE, HOST_CALLS, MAIN};
use crate::util::Result;
use meshbreaker_harness::{median, spread};

/// A contender's name under its bars.
fn short(listener: &str) -> &'static str {
    match listener {
        "none" => "none",
        "native" => "adm. ctrl",
        "trivial" => "trivial",
        "floor" => "floor",
        "mb_default" => "mb default",
        "mb_native" => "mb native",
        "mb_authority" => "mb authority",
        _ => "variant",
    }
}

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
pub(super) fn draw(res: &Results, path: &Path) -> Result {
    use plotters::prelude::*;
    let root_area = SVGBackend::new(path, (1500, 800)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root_area.split_vertically(420);
    let top = top.split_evenly((1, 3));
    let (hc_area, rss_area) = bottom.split_horizontally(960);
    let colors = [RGBColor(70, 110, 190), RGBColor(230, 140, 40)];
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
    let names: Vec<&str> = MAIN.iter().map(|l| short(l)).collect();
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
    use super::super::fixtures::results;
    use super::*;

    #[test]
    fn draw_writes_a_picture() {
        let path =
            std::env::temp_dir().join(format!("meshbreaker-overhead-{}.svg", std::process::id()));
        draw(&results(50.0, 16384.0), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg") && svg.contains("RSS per tracked key"));
    }
}

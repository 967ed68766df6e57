//! SVG figures of the overhead report, in the style of vmwatch's own
//! (plotters, DejaVu Sans registered as "sans-serif" by
//! [`vmwatch_core::plots::register_font`], white background).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use vmwatch_core::plots::register_font;

use crate::util;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

/// A bar series: name, per category (median, min, max).
pub type BarSeries = (String, Vec<(f64, f64, f64)>);

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Grouped bars: per category, one bar per series (median) with a min–max
/// whisker. `series` = (name, per category (median, min, max)).
pub fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[BarSeries],
) -> Result<()> {
    register_font()?;
    let mut svg = String::new();
    {
        let n = categories.len().max(1);
        let width = (160 + 90 * n as u32).max(520);
        let root = SVGBackend::with_string(&mut svg, (width, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let vals = series
            .iter()
            .flat_map(|s| s.1.iter().flat_map(|v| [v.0, v.1, v.2]));
        let (lo, hi) = vals.fold((0.0f64, 1.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let pad = (hi - lo) * 0.08;
        let y0 = if lo < 0.0 { lo - pad } else { 0.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .margin_top(40)
            .x_label_area_size(130)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n as f64, y0..hi + pad)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        let k = series.len().max(1) as f64;
        for (si, (_, vals)) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            for (i, (med, min, max)) in vals.iter().enumerate() {
                let x0 = i as f64 + 0.1 + 0.8 * si as f64 / k;
                let x1 = x0 + 0.8 / k;
                let xm = (x0 + x1) / 2.0;
                chart
                    .draw_series([Rectangle::new([(x0, 0.0), (x1, *med)], color.filled())])
                    .map_err(err)?;
                chart
                    .draw_series([
                        PathElement::new(vec![(xm, *min), (xm, *max)], BLACK),
                        PathElement::new(vec![(xm - 0.03, *min), (xm + 0.03, *min)], BLACK),
                        PathElement::new(vec![(xm - 0.03, *max), (xm + 0.03, *max)], BLACK),
                    ])
                    .map_err(err)?;
            }
        }
        let style = ("sans-serif", 12)
            .into_font()
            .transform(FontTransform::Rotate90)
            .into_text_style(&root);
        for (i, name) in categories.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, y0));
            root.draw_text(name, &style, (x - 6, y + 8)).map_err(err)?;
        }
        let mut x = 80;
        for (si, (name, _)) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            root.draw(&Rectangle::new([(x, 36), (x + 12, 48)], color.filled()))
                .map_err(err)?;
            root.draw_text(
                name,
                &("sans-serif", 13).into_text_style(&root),
                (x + 16, 35),
            )
            .map_err(err)?;
            x += 40 + 8 * name.len() as i32;
        }
        root.present().map_err(err)?;
    }
    util::write_atomic(path, svg.as_bytes())
}

/// Lines on a log y axis: x = VM count, one series per configuration.
pub fn lines_log(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let pts = series.iter().flat_map(|s| s.1.iter());
        let max_x = pts.clone().map(|p| p.0).fold(1.0, f64::max);
        let ys: Vec<f64> = pts.map(|p| p.1).filter(|y| *y > 0.0).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
        let hi = ys.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5..max_x + 0.5, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(max_x as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        for (si, (name, points)) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let p: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1 > 0.0).collect();
            chart
                .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(p.iter().map(|q| Circle::new(*q, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::MiddleRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    util::write_atomic(path, svg.as_bytes())
}

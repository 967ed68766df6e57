//! Figures of `vmwatch eval --plots DIR` (SVG, plotters): the learning curve
//! (the paper's Fig. 3) and F-measure and sensitivity per scenario (Fig. 4).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Where Debian's fonts-dejavu-core puts the font the figures use.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers DejaVu Sans as plotters' `"sans-serif"` (once per process;
/// later calls return the first outcome). Every figure calls it before
/// drawing text: these and `cargo xtask bench`'s, so all share one font.
pub fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| Error::Invalid(format!("plots need a font: {e}")))
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::Plot {
        what: "a figure".into(),
        source: Box::new(e),
    }
}

/// Fig. 3: false positives (%) against training windows.
pub fn learning_curve(path: &Path, curve: &[(usize, f64)]) -> Result<()> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let max_x = curve.iter().map(|c| c.0).max().unwrap_or(1) as f64;
        let max_y = curve.iter().map(|c| c.1 * 100.0).fold(5.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption("False positives vs training windows", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("training windows")
            .y_desc("false positives (%)")
            .draw()
            .map_err(plot_err)?;
        let points: Vec<(f64, f64)> = curve.iter().map(|(n, r)| (*n as f64, r * 100.0)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), &BLUE))
            .map_err(plot_err)?;
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    crate::atomic::write(path, svg.as_bytes())
}

/// Fig. 4: F-measure and sensitivity (%) per scenario, side by side.
pub fn scenarios(path: &Path, title: &str, rows: &[(String, f64, f64)]) -> Result<()> {
    register_font()?;
    let mut svg = String::new();
    {
        let width = 160 + 90 * rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width.max(480), 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let n = rows.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(50)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..105.0)
            .map_err(plot_err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc("%")
            .draw()
            .map_err(plot_err)?;
        // Per scenario: F-measure in the left half, sensitivity in the right.
        let bars = rows.iter().enumerate().flat_map(|(i, (_, f, s))| {
            let i = i as u32;
            [
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::CenterOf(i), f * 100.0),
                    ],
                    BLUE.filled(),
                ),
                Rectangle::new(
                    [
                        (SegmentValue::CenterOf(i), 0.0),
                        (SegmentValue::Exact(i + 1), s * 100.0),
                    ],
                    RED.mix(0.6).filled(),
                ),
            ]
        });
        chart.draw_series(bars).map_err(plot_err)?;
        root.draw_text(
            "blue: F-measure   red: sensitivity",
            &("sans-serif", 14).into_text_style(&root),
            (60, 396),
        )
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    crate::atomic::write(path, svg.as_bytes())
}

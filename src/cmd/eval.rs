//! `vmwatch eval`: the paper's evaluation as a markdown report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use vmwatch::dataset::Table;
use vmwatch::eval::{evaluate, learning_curve, median, relearn};
use vmwatch::model::Smoothing;
use vmwatch::train::grid_search;

/// Evaluate detection the paper's way: per anomaly file, k folds; per fold
/// train on the other normal folds and test on the held-out normal fold plus
/// the matching anomaly fold. Prints markdown tables: per-scenario
/// TP/FP/TN/FN, sensitivity, precision, F-measure, their medians, the
/// learning curve and (with --relearn) the re-learning experiment.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Windows of normal behaviour.
    #[arg(long, value_name = "FILE")]
    normal: PathBuf,
    /// Windows of one anomaly scenario per file (repeatable).
    #[arg(long, required = true, value_name = "FILE")]
    anomaly: Vec<PathBuf>,
    /// Use only these features (one per line). Default: every feature that
    /// is nonzero in any input file.
    #[arg(long, value_name = "FILE")]
    features: Option<PathBuf>,
    /// Use only the features of these sources (comma separated: qemu,
    /// syscalls, kvm) that are nonzero in any input file.
    #[arg(
        long = "source",
        value_delimiter = ',',
        value_name = "SOURCES",
        conflicts_with = "features"
    )]
    sources: Vec<vmwatch::features::Source>,
    #[command(flatten)]
    svm: super::SvmArgs,
    /// Flag a window only when K of the last N windows of its held-out
    /// stretch are anomalous (the monitor's --smooth; section 5.1).
    #[arg(long, default_value = "1/1", value_name = "K/N")]
    smooth: Smoothing,
    /// A second normal (e.g. web-peak): report false positives before and
    /// after adding it to the training windows.
    #[arg(long, value_name = "FILE")]
    relearn: Option<PathBuf>,
    /// Also draw the figures as SVG into DIR: learning-curve.svg (Fig. 3)
    /// and scenarios.svg (F-measure and sensitivity per scenario, Fig. 4).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Also write the results as JSON to FILE (for scripts such as `cargo
    /// xtask eval`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The machine-readable report of `--json`.
#[derive(Debug, serde::Serialize)]
struct Report {
    normal: String,
    normal_windows: usize,
    features: usize,
    nu: f64,
    gamma: f64,
    parameters: String,
    folds: usize,
    smoothing: String,
    scenarios: Vec<ScenarioReport>,
    median_f_measure: f64,
    median_sensitivity: f64,
    median_fp_rate: f64,
    /// (training windows, false-positive rate).
    learning_curve: Vec<(usize, f64)>,
    relearn: Option<Relearn>,
}

#[derive(Debug, serde::Serialize)]
struct ScenarioReport {
    name: String,
    windows: usize,
    tp: f64,
    fp: f64,
    tn: f64,
    fn_: f64,
    sensitivity: f64,
    precision: f64,
    f_measure: f64,
    fp_rate: f64,
}

#[derive(Debug, serde::Serialize)]
struct Relearn {
    file: String,
    fp_rate_before: f64,
    fp_rate_after: f64,
}

fn scenario_name(path: &Path, table: &Table) -> String {
    let first = table.keys.first().map(|k| k.label.as_str()).unwrap_or("");
    if !first.is_empty() && table.keys.iter().all(|k| k.label == first) {
        first.to_string()
    } else {
        path.file_name()
            .and_then(|n| n.to_str())
            .map(|n| {
                n.trim_end_matches(".gz")
                    .trim_end_matches(".csv")
                    .to_string()
            })
            .unwrap_or_else(|| path.display().to_string())
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let normal = Table::read(&args.normal)?;
    let anomalies = args
        .anomaly
        .iter()
        .map(|p| {
            let t = Table::read(p)?;
            Ok((scenario_name(p, &t), t))
        })
        .collect::<Result<Vec<_>>>()?;
    let peak = args.relearn.as_deref().map(Table::read).transpose()?;
    let features: Vec<String> = match &args.features {
        Some(path) => vmwatch::features::read_feature_list(path)?,
        None => {
            let tables: Vec<&Table> = std::iter::once(&normal)
                .chain(anomalies.iter().map(|(_, t)| t))
                .chain(peak.iter())
                .collect();
            Table::nonzero_features(&tables, &args.sources)
        }
    };
    if features.is_empty() {
        bail!("every feature (of the chosen sources) is zero in the input files");
    }
    let x_normal = normal.project(&features);
    let (nu, gamma, how) = match (args.svm.nu, args.svm.gamma) {
        (Some(nu), Some(gamma)) => (nu, gamma, "fixed".to_string()),
        _ => {
            eprintln!(
                "searching nu and gamma ({} grid, {} folds)…",
                args.svm.grid.name(),
                args.svm.folds
            );
            let (best, _) = grid_search(
                x_normal.view(),
                args.svm.folds,
                &args.svm.grid.points(),
                &|| {},
            )?;
            (
                best.nu,
                best.gamma,
                format!(
                    "{} grid, {:.2}% CV false positives",
                    args.svm.grid.name(),
                    best.fp_rate * 100.0
                ),
            )
        }
    };
    // With `--json /dev/stdout` the JSON report alone goes to stdout.
    let mut out: Box<dyn Write> = if args.json.as_deref().is_some_and(super::is_stdout) {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    writeln!(
        out,
        "Normal: `{}` ({} windows); {} features; nu = {nu}, gamma = {gamma} ({how}); {} folds; \
         smoothing {}.\n",
        args.normal.display(),
        normal.len(),
        features.len(),
        args.svm.folds,
        args.smooth
    )?;
    writeln!(
        out,
        "| scenario | windows | TP | FP | TN | FN | sensitivity | precision | F-measure |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let (mut fs, mut ss, mut fprs) = (Vec::new(), Vec::new(), Vec::new());
    let mut bars = Vec::new();
    let mut scenarios = Vec::new();
    for (name, table) in &anomalies {
        eprintln!("evaluating {name}…");
        let c = evaluate(
            x_normal.view(),
            table.project(&features).view(),
            args.svm.folds,
            nu,
            gamma,
            args.smooth,
        )?;
        writeln!(
            out,
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.1}% | {:.1}% |",
            table.len(),
            c.tp,
            c.fp,
            c.tn,
            c.fn_,
            100.0 * c.sensitivity(),
            100.0 * c.precision(),
            100.0 * c.f_measure()
        )?;
        bars.push((name.clone(), c.f_measure(), c.sensitivity()));
        scenarios.push(ScenarioReport {
            name: name.clone(),
            windows: table.len(),
            tp: c.tp,
            fp: c.fp,
            tn: c.tn,
            fn_: c.fn_,
            sensitivity: c.sensitivity(),
            precision: c.precision(),
            f_measure: c.f_measure(),
            fp_rate: c.fp_rate(),
        });
        fs.push(c.f_measure());
        ss.push(c.sensitivity());
        fprs.push(c.fp_rate());
    }
    writeln!(
        out,
        "\nMedian over {} scenarios: F-measure {:.1}%, sensitivity {:.1}%; false positives on \
         held-out normal windows {:.2}%.\n",
        anomalies.len(),
        100.0 * median(&fs),
        100.0 * median(&ss),
        100.0 * median(&fprs)
    )?;

    let sizes: Vec<usize> = [10, 20, 50, 100, 200, 400, 800]
        .into_iter()
        .filter(|&n| n <= x_normal.nrows() * (args.svm.folds - 1) / args.svm.folds)
        .collect();
    let curve = learning_curve(x_normal.view(), args.svm.folds, nu, gamma, &sizes)?;
    writeln!(
        out,
        "Learning curve (false positives on held-out normal folds):\n"
    )?;
    writeln!(out, "| training windows | false positives |")?;
    writeln!(out, "|---:|---:|")?;
    for (n, rate) in &curve {
        writeln!(out, "| {n} | {:.2}% |", rate * 100.0)?;
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        vmwatch::plots::learning_curve(&dir.join("learning-curve.svg"), &curve)?;
        let title = format!(
            "F-measure and sensitivity per scenario ({} features)",
            features.len()
        );
        vmwatch::plots::scenarios(&dir.join("scenarios.svg"), &title, &bars)?;
        eprintln!("figures written to {}", dir.display());
    }
    let mut relearned = None;
    if let (Some(peak), Some(path)) = (&peak, &args.relearn) {
        let (before, after) = relearn(
            x_normal.view(),
            peak.project(&features).view(),
            args.svm.folds,
            nu,
            gamma,
        )?;
        writeln!(
            out,
            "\nRe-learning with `{}`: {:.1}% false positives when trained on the normal file \
             alone, {:.1}% after adding the other folds of the new normal (paper: 82% → 1%).",
            path.display(),
            before * 100.0,
            after * 100.0
        )?;
        relearned = Some(Relearn {
            file: path.display().to_string(),
            fp_rate_before: before,
            fp_rate_after: after,
        });
    }
    if let Some(path) = &args.json {
        let report = Report {
            normal: args.normal.display().to_string(),
            normal_windows: normal.len(),
            features: features.len(),
            nu,
            gamma,
            parameters: how,
            folds: args.svm.folds,
            smoothing: args.smooth.to_string(),
            median_f_measure: median(&fs),
            median_sensitivity: median(&ss),
            median_fp_rate: median(&fprs),
            scenarios,
            learning_curve: curve,
            relearn: relearned,
        };
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        vmwatch::atomic::write(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

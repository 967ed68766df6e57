//! `vmwatch eval`: the paper's evaluation as a markdown report.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use vmwatch_core::dataset::Table;
use vmwatch_core::eval::{self, EvalConfig};
use vmwatch_core::model::Smoothing;

/// Evaluate detection the paper's way: per anomaly file, k folds; per fold
/// train on the other normal folds and test on the held-out normal fold plus
/// the matching anomaly fold. Prints markdown tables: per-scenario
/// TP/FP/TN/FN, sensitivity, precision, F-measure, their medians, the
/// learning curve and (with --relearn) the re-learning experiment.
///
/// With --boot instead: phased recordings (`cargo xtask lab record
/// --phases`), labelled per window; each boot (QEMU process) is held out in
/// turn and scored by a model of the other boots' normal windows.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Windows of normal behaviour.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "boot",
        conflicts_with = "boot"
    )]
    normal: Option<PathBuf>,
    /// Windows of one anomaly scenario per file (repeatable).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "boot",
        conflicts_with = "boot"
    )]
    anomaly: Vec<PathBuf>,
    /// Evaluate by boot: files of phased recordings, whose windows are
    /// labelled normal (--normal-label), an anomaly (its scenario), or
    /// `switch` (not scored); every QEMU process in them is one boot
    /// (repeatable).
    #[arg(long, value_name = "FILE")]
    boot: Vec<PathBuf>,
    /// With --boot: the labels of normal windows (repeatable).
    #[arg(long, value_name = "LABEL", default_value = "web", requires = "boot")]
    normal_label: Vec<String>,
    #[command(flatten)]
    features: super::FeatureArgs,
    #[command(flatten)]
    svm: super::SvmArgs,
    /// Flag a window only when K of the last N windows of its held-out
    /// stretch are anomalous (the monitor's --smooth, section 5.1; 1/1 for
    /// raw verdicts).
    #[arg(long, default_value_t = Smoothing::RECOMMENDED, value_name = "K/N")]
    smooth: Smoothing,
    /// A second normal (e.g. web-peak): report false positives before and
    /// after adding it to the training windows.
    #[arg(long, value_name = "FILE", conflicts_with = "boot")]
    relearn: Option<PathBuf>,
    /// With --boot: boots of a second normal (e.g. `web-peak`; at least 2,
    /// every window normal): the re-learning experiment, each scored by the
    /// model of every normal window of the --boot files, then by one that
    /// also learned the other boots given here (repeatable).
    #[arg(long, value_name = "FILE", requires = "boot")]
    relearn_boot: Vec<PathBuf>,
    /// With --boot: also the learning curve, each held-out boot scored by
    /// models of only K other boots, for each K given (comma separated,
    /// e.g. 1,2,4,8).
    #[arg(long, value_name = "K,...", value_delimiter = ',', requires = "boot")]
    curve_boots: Vec<usize>,
    /// Also draw the figures as SVG into DIR: learning-curve.svg (Fig. 3)
    /// and scenarios.svg (F-measure and sensitivity per scenario, Fig. 4).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Also write the results as JSON to FILE (for scripts such as `cargo
    /// xtask eval`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = EvalConfig {
        features: args.features.choice()?,
        params: args.svm.params(),
        folds: args.svm.folds,
        smoothing: args.smooth,
    };
    let report = match &args.normal {
        None => {
            let boots = args
                .boot
                .iter()
                .map(|p| Ok((p.display().to_string(), Table::read(p)?)))
                .collect::<Result<Vec<_>>>()?;
            let relearn = args
                .relearn_boot
                .iter()
                .map(|p| Ok((p.display().to_string(), Table::read(p)?)))
                .collect::<Result<Vec<_>>>()?;
            let extras = eval::boots::Extras {
                curve: args.curve_boots.clone(),
                relearn: &relearn,
            };
            eval::boots::run(&boots, &args.normal_label, &config, &extras, &mut |step| {
                eprintln!("{step}")
            })?
        }
        Some(normal_path) => {
            let normal = Table::read(normal_path)?;
            let anomalies = args
                .anomaly
                .iter()
                .map(|p| {
                    let t = Table::read(p)?;
                    Ok((t.scenario_name(p), t))
                })
                .collect::<Result<Vec<_>>>()?;
            let peak = args.relearn.as_deref().map(Table::read).transpose()?;
            let relearn_name = args.relearn.as_ref().map(|p| p.display().to_string());
            eval::run(
                (&normal_path.display().to_string(), &normal),
                &anomalies,
                relearn_name.as_deref().zip(peak.as_ref()),
                &config,
                &mut |step| eprintln!("{step}"),
            )?
        }
    };
    // With `--json /dev/stdout` the JSON report alone goes to stdout.
    let mut out: Box<dyn Write> = if args.json.as_deref().is_some_and(super::is_stdout) {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    out.write_all(report.markdown().as_bytes())?;
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // By boot there is no learning curve to draw.
        if !report.learning_curve.is_empty() {
            vmwatch_core::plots::learning_curve(
                &dir.join("learning-curve.svg"),
                &report.learning_curve,
            )?;
        }
        let title = format!(
            "F-measure and sensitivity per scenario ({} features)",
            report.features
        );
        let bars: Vec<(String, f64, f64)> = report
            .scenarios
            .iter()
            .map(|s| (s.name.clone(), s.f_measure, s.sensitivity))
            .collect();
        vmwatch_core::plots::scenarios(&dir.join("scenarios.svg"), &title, &bars)?;
        eprintln!("figures written to {}", dir.display());
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        vmwatch_core::atomic::write(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

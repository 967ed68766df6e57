//! `vmwatch train`: fit the scaler and one-class SVM on normal windows.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use vmwatch::dataset::Table;
use vmwatch::model::{Model, Smoothing, TrainingSummary};
use vmwatch::train::{cv_fp_rate, grid_search};

/// Train a detector on windows of normal behaviour.
///
/// Without --nu/--gamma, a grid search picks them by k-fold
/// cross-validation on the training windows, minimising false positives
/// (the paper's procedure).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset files of normal behaviour (CSV or CSV.gz).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Use only these features (one per line, e.g. from `vmwatch select`).
    /// Default: every feature that is nonzero somewhere in the files.
    #[arg(long, value_name = "FILE")]
    features: Option<PathBuf>,
    /// Use only the features of these sources (comma separated: qemu,
    /// syscalls, kvm) that are nonzero somewhere in the files.
    #[arg(
        long = "source",
        value_delimiter = ',',
        value_name = "SOURCES",
        conflicts_with = "features"
    )]
    sources: Vec<vmwatch::features::Source>,
    #[command(flatten)]
    svm: super::SvmArgs,
    /// Default smoothing stored in the model (K/N: K anomalous of the last N).
    #[arg(long, default_value = "1/1")]
    smooth: Smoothing,
    /// Where to write the model (JSON, written atomically).
    #[arg(short, long, value_name = "MODEL")]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let table = Table::read_all(&args.files)?;
    if table.len() < 10 {
        bail!(
            "{} training windows are too few (need at least 10)",
            table.len()
        );
    }
    let features = match &args.features {
        Some(path) => vmwatch::features::read_feature_list(path)?,
        None => Table::nonzero_features(&[&table], &args.sources),
    };
    if features.is_empty() {
        bail!("every feature is zero in the training files: nothing to learn from");
    }
    let missing: Vec<&String> = features
        .iter()
        .filter(|f| !table.features.contains(f))
        .collect();
    if missing.len() == features.len() {
        bail!("none of the requested features is a column of the training files");
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} requested features are absent (zeros) in the training files",
            missing.len()
        );
    }
    let raw = table.project(&features);
    eprintln!(
        "training on {} windows x {} features from {} file(s)",
        raw.nrows(),
        features.len(),
        args.files.len()
    );

    let (nu, gamma, fp, grid_name) = match (args.svm.nu, args.svm.gamma) {
        // The option parsers checked the range.
        (Some(nu), Some(gamma)) => {
            let fp = cv_fp_rate(raw.view(), args.svm.folds, nu, gamma)?;
            (nu, gamma, fp, "fixed".to_string())
        }
        _ => {
            let points = args.svm.grid.points();
            let bar = progress(points.len() as u64);
            let (best, _) = grid_search(raw.view(), args.svm.folds, &points, &|| bar.inc(1))?;
            bar.finish_and_clear();
            (
                best.nu,
                best.gamma,
                best.fp_rate,
                args.svm.grid.name().to_string(),
            )
        }
    };
    let summary = TrainingSummary {
        windows: raw.nrows(),
        files: args.files.iter().map(|p| p.display().to_string()).collect(),
        cv_false_positive_rate: Some(fp),
        folds: args.svm.folds,
        grid: grid_name,
    };
    let mut model = Model::fit(features, raw.view(), nu, gamma, summary)?;
    model.smoothing = args.smooth;
    model.save(&args.output)?;
    let summary = format!(
        "nu = {nu}, gamma = {gamma}: {:.2}% false positives in {}-fold cross-validation, \
         {} support vectors; model written to {}",
        fp * 100.0,
        args.svm.folds,
        model.svm.coef.len(),
        args.output.display()
    );
    // With `-o /dev/stdout` the model alone goes to stdout.
    if super::is_stdout(&args.output) {
        eprintln!("{summary}");
    } else {
        writeln!(std::io::stdout(), "{summary}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(n: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new(n).with_style(
        ProgressStyle::with_template("grid search [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    )
}

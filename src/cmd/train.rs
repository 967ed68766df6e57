//! `vmwatch train`: fit the scaler and one-class SVM on normal windows.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use vmwatch_core::dataset::Table;
use vmwatch_core::model::Smoothing;
use vmwatch_core::train::{train, Chosen, SvmParams, TrainConfig, TrainingSet};

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
    #[command(flatten)]
    features: super::FeatureArgs,
    #[command(flatten)]
    svm: super::SvmArgs,
    /// Default smoothing stored in the model (K/N: K anomalous of the last
    /// N; 1/1 for raw verdicts).
    #[arg(long, default_value_t = Smoothing::RECOMMENDED)]
    smooth: Smoothing,
    /// Where to write the model (JSON, written atomically).
    #[arg(short, long, value_name = "MODEL")]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let table = Table::read_all(&args.files)?;
    let set = TrainingSet::new(&table, &args.features.choice()?)?;
    eprintln!(
        "training on {} windows x {} features from {} file(s)",
        set.raw.nrows(),
        set.features.len(),
        args.files.len()
    );
    if !set.qemu_builds.is_empty() {
        let builds: Vec<String> = set.qemu_builds.iter().map(|b| b.to_string()).collect();
        eprintln!("the windows were counted on QEMU {}", builds.join("; "));
    }
    let config = TrainConfig {
        params: args.svm.params(),
        folds: args.svm.folds,
        smoothing: args.smooth,
        files: args.files.iter().map(|p| p.display().to_string()).collect(),
    };
    let bar = match config.params {
        SvmParams::Search(grid) => progress(grid.points().len() as u64),
        SvmParams::Fixed { .. } => ProgressBar::hidden(),
    };
    let trained = train(set, &config, &|| bar.inc(1))?;
    bar.finish_and_clear();
    trained.model.save(&args.output)?;
    let Chosen { nu, gamma, .. } = trained.chosen;
    let summary = format!(
        "nu = {nu}, gamma = {gamma}: {:.2}% false positives in {}-fold cross-validation, \
         {} support vectors; model written to {}",
        trained.fp_rate * 100.0,
        args.svm.folds,
        trained.model.svm.coef.len(),
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

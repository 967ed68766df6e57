//! `vmwatch detect`: offline verdicts for recorded windows.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch_core::dataset::Table;
use vmwatch_core::model::{Model, Smoothing};
use vmwatch_core::verdict::{judge_table, tally_by_label};

/// Score recorded windows with a trained model: one verdict per VM and
/// window (negative score = outside the normal region).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (from `vmwatch train`).
    #[arg(long, value_name = "MODEL")]
    model: PathBuf,
    /// Dataset files to score.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Flag a VM only when K of its last N windows are anomalous (default:
    /// the model's).
    #[arg(long, value_name = "K/N")]
    smooth: Option<Smoothing>,
    /// One JSON object per line and window.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let model = Model::load(&args.model)?;
    let smooth = args.smooth.unwrap_or(model.smoothing);
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{:<16} {:>8} {:<14} {:>6} {:>10}  VERDICT",
            "VM", "PID", "LABEL", "WINDOW", "SCORE"
        )?;
    }
    let mut all = Vec::new();
    for file in &args.files {
        let table = Table::read(file)?;
        let verdicts = judge_table(&model, &table, smooth, &file.display().to_string())?;
        for v in &verdicts {
            if args.json {
                serde_json::to_writer(&mut out, v)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<16} {:>8} {:<14} {:>6} {:>10.4}  {}",
                    v.vm,
                    v.pid,
                    v.label.as_deref().unwrap_or(""),
                    v.window,
                    v.score,
                    if v.anomalous { "ANOMALOUS" } else { "normal" }
                )?;
            }
        }
        all.extend(verdicts);
    }
    if !args.json {
        for (label, n, a) in tally_by_label(&all) {
            eprintln!(
                "label {label:?}: {a} of {n} windows anomalous ({:.1}%)",
                100.0 * a as f64 / n as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `vmwatch detect`: offline verdicts for recorded windows.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde::Serialize;

use vmwatch::dataset::Table;
use vmwatch::model::{Model, Smoothing};

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

#[derive(Serialize)]
struct Verdict<'a> {
    start_unix_ms: u64,
    vm: &'a str,
    pid: u32,
    label: &'a str,
    window: u64,
    score: f64,
    anomalous: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let model = Model::load(&args.model)?;
    let smooth = args.smooth.unwrap_or(model.smoothing);
    let mut out = std::io::stdout().lock();
    let mut totals: Vec<(String, usize, usize)> = Vec::new();
    if !args.json {
        writeln!(
            out,
            "{:<16} {:>8} {:<14} {:>6} {:>10}  VERDICT",
            "VM", "PID", "LABEL", "WINDOW", "SCORE"
        )?;
    }
    for file in &args.files {
        let table = Table::read(file)?;
        let present = model
            .features
            .iter()
            .filter(|f| table.features.contains(f))
            .count();
        if present == 0 {
            bail!(
                "{} has none of the model's {} features (the model counts {}…): wrong model or wrong source?",
                file.display(),
                model.features.len(),
                model.features[0]
            );
        }
        if present < model.features.len() {
            tracing::warn!(
                "{}: {} of the model's features are absent and read as zero",
                file.display(),
                model.features.len() - present
            );
        }
        let scores = model.decisions(table.project(&model.features).view());
        // Smoothing runs per VM process over its windows in order.
        let mut order: Vec<usize> = (0..table.len()).collect();
        order.sort_by_key(|&i| (table.keys[i].pid, table.keys[i].window));
        let mut history: HashMap<u32, Vec<bool>> = HashMap::new();
        let mut flagged = vec![false; table.len()];
        for i in order {
            let h = history.entry(table.keys[i].pid).or_default();
            h.push(scores[i] < 0.0);
            flagged[i] = smooth.flags(h);
        }
        for (i, key) in table.keys.iter().enumerate() {
            match totals.iter_mut().find(|t| t.0 == key.label) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += usize::from(flagged[i]);
                }
                None => totals.push((key.label.clone(), 1, usize::from(flagged[i]))),
            }
            if args.json {
                let v = Verdict {
                    start_unix_ms: key.start_unix_ms,
                    vm: &key.vm,
                    pid: key.pid,
                    label: &key.label,
                    window: key.window,
                    score: scores[i],
                    anomalous: flagged[i],
                };
                serde_json::to_writer(&mut out, &v)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<16} {:>8} {:<14} {:>6} {:>10.4}  {}",
                    key.vm,
                    key.pid,
                    key.label,
                    key.window,
                    scores[i],
                    if flagged[i] { "ANOMALOUS" } else { "normal" }
                )?;
            }
        }
    }
    if !args.json {
        for (label, n, a) in &totals {
            eprintln!(
                "label {label:?}: {a} of {n} windows anomalous ({:.1}%)",
                100.0 * *a as f64 / *n as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

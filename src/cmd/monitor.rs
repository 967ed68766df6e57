//! `vmwatch monitor`: live verdicts per VM and window.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ndarray::Array2;
use serde::Serialize;

use vmwatch::collector::BpfObjects;
use vmwatch::model::{Model, Smoothing};
use vmwatch::session::{Ended, Session, SessionConfig};
use vmwatch::signals::StopSignal;

use super::TargetArgs;

/// Watch VMs live and print, every window, whether each still behaves like
/// the model's normal profile. Only the model's features are attached.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (from `vmwatch train`).
    #[arg(long, value_name = "MODEL")]
    model: PathBuf,
    #[command(flatten)]
    targets: TargetArgs,
    /// Flag a VM only when K of its last N windows are anomalous (default:
    /// the model's).
    #[arg(long, value_name = "K/N")]
    smooth: Option<Smoothing>,
    /// One JSON object per line and window (time, vm, pid, window, score,
    /// anomalous).
    #[arg(long)]
    json: bool,
    /// Window length; must match the model's training windows.
    #[arg(long, default_value = "2s", value_parser = vmwatch::window::parse_interval)]
    interval: std::time::Duration,
    /// Stop after this many windows (default: until SIGINT, SIGTERM, SIGHUP
    /// or SIGQUIT).
    #[arg(long, value_name = "N", value_parser = super::windows)]
    windows: Option<u64>,
    /// Most VMs watched at once (1 to 1024).
    #[arg(long, default_value_t = vmwatch::collector::DEFAULT_MAX_VMS, value_name = "N",
          value_parser = super::max_vms)]
    max_vms: u32,
}

#[derive(Serialize)]
struct Line<'a> {
    start_unix_ms: u64,
    vm: &'a str,
    pid: u32,
    window: u64,
    score: f64,
    anomalous: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let stop = StopSignal::install()?;
    let model = Model::load(&args.model)?;
    let smooth = args.smooth.unwrap_or(model.smoothing);
    let mut objects = BpfObjects::default();
    let mut session = Session::start(
        &mut objects,
        SessionConfig {
            targets: args.targets.targets(),
            sources: Vec::new(),
            features: Some(model.features.clone()),
            max_vms: args.max_vms,
        },
    )?;
    // The session drops model features its targets lack; they stay zero.
    let columns: Vec<Option<usize>> = {
        let have: HashMap<&str, usize> = session
            .features()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        model
            .features
            .iter()
            .map(|f| have.get(f.as_str()).copied())
            .collect()
    };
    tracing::info!(
        "monitoring {} VM(s) with {} of the model's {} features, smoothing {}/{}",
        session.watched().count(),
        columns.iter().flatten().count(),
        model.features.len(),
        smooth.k,
        smooth.n
    );
    let table = !args.json && std::io::stdout().is_terminal();
    let mut history: HashMap<u32, Vec<bool>> = HashMap::new();
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{:>6}  {:<20} {:>8} {:>10}  VERDICT",
            "WINDOW", "VM", "PID", "SCORE"
        )?;
    }
    let ended = session.run(args.interval, args.windows, &stop, |w| {
        for p in &w.drain.exited {
            tracing::info!("VM {} (PID {}) exited", p.vm, p.pid);
            history.remove(&p.pid);
        }
        if w.drain.samples.is_empty() {
            return Ok(());
        }
        let mut raw = Array2::<f64>::zeros((w.drain.samples.len(), model.features.len()));
        for (r, s) in w.drain.samples.iter().enumerate() {
            for (j, c) in columns.iter().enumerate() {
                if let Some(c) = c {
                    raw[[r, j]] = s.counts[*c] as f64;
                }
            }
        }
        let scores = model.decisions(raw.view());
        for (s, score) in w.drain.samples.iter().zip(scores) {
            let h = history.entry(s.process.pid).or_default();
            h.push(score < 0.0);
            if h.len() > smooth.n as usize {
                h.remove(0);
            }
            let anomalous = smooth.flags(h);
            let write = |out: &mut std::io::StdoutLock| -> std::io::Result<()> {
                if args.json {
                    let line = Line {
                        start_unix_ms: w.start_unix_ms,
                        vm: &s.process.vm,
                        pid: s.process.pid,
                        window: w.index,
                        score,
                        anomalous,
                    };
                    serde_json::to_writer(&mut *out, &line)?;
                    writeln!(out)
                } else {
                    let verdict = match (anomalous, table) {
                        (true, true) => "\x1b[1;31mANOMALOUS\x1b[0m",
                        (true, false) => "ANOMALOUS",
                        (false, _) => "normal",
                    };
                    writeln!(
                        out,
                        "{:>6}  {:<20} {:>8} {:>10.4}  {verdict}",
                        w.index, s.process.vm, s.process.pid, score
                    )
                }
            };
            write(&mut out)
                .and_then(|()| out.flush())
                .map_err(|e| vmwatch::Error::Io {
                    what: "writing verdicts".into(),
                    source: e,
                })?;
        }
        Ok(())
    })?;
    drop(session);
    if let Ended::Signal(sig) = ended {
        tracing::info!("stopped by signal {sig}");
    }
    Ok(ExitCode::SUCCESS)
}

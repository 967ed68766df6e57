//! `vmwatch monitor`: live verdicts per VM and window.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch::bpf::BpfObjects;
use vmwatch::session::{Ended, Session, SessionConfig};
use vmwatch::signals::StopSignal;
use vmwatch_core::model::{Model, Smoothing};
use vmwatch_core::verdict::{Judge, Verdict};

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
    #[arg(long, default_value = "2s", value_parser = vmwatch_core::window::parse_interval)]
    interval: std::time::Duration,
    /// Stop after this many windows (default: until SIGINT, SIGTERM, SIGHUP
    /// or SIGQUIT).
    #[arg(long, value_name = "N", value_parser = super::windows)]
    windows: Option<u64>,
    /// Most VMs watched at once (1 to 1024).
    #[arg(long, default_value_t = vmwatch::bpf::DEFAULT_MAX_VMS, value_name = "N",
          value_parser = super::max_vms)]
    max_vms: u32,
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
    let mut judge = Judge::new(model, session.features(), smooth, "the watched VMs")?;
    tracing::info!(
        "monitoring {} VM(s) with {} of the model's {} features, smoothing {}/{}",
        session.watched().len(),
        judge.model().features.len() - judge.missing(),
        judge.model().features.len(),
        smooth.k,
        smooth.n
    );
    let table = !args.json && std::io::stdout().is_terminal();
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
            judge.forget(&p.pid);
        }
        let samples = &w.drain.samples;
        let judged = judge.judge(samples.iter().map(|s| (s.process.pid, s.counts.as_slice())));
        for (s, (score, anomalous)) in samples.iter().zip(judged) {
            let v = Verdict {
                start_unix_ms: w.start_unix_ms,
                vm: s.process.vm.clone(),
                pid: s.process.pid,
                label: None,
                window: w.index,
                score,
                anomalous,
            };
            print_verdict(&mut out, &v, args.json, table).map_err(|source| {
                vmwatch_core::Error::Io {
                    what: "writing verdicts".into(),
                    source,
                }
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

/// One verdict: a JSON line, or a table row (the verdict in colour on a
/// terminal).
fn print_verdict(
    out: &mut impl Write,
    v: &Verdict,
    json: bool,
    colour: bool,
) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, v)?;
        writeln!(out)?;
    } else {
        let verdict = match (v.anomalous, colour) {
            (true, true) => "\x1b[1;31mANOMALOUS\x1b[0m",
            (true, false) => "ANOMALOUS",
            (false, _) => "normal",
        };
        writeln!(
            out,
            "{:>6}  {:<20} {:>8} {:>10.4}  {verdict}",
            v.window, v.vm, v.pid, v.score
        )?;
    }
    out.flush()
}

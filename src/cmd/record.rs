//! `vmwatch record`: feature rows for each watched VM and window.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use vmwatch::bpf::BpfObjects;
use vmwatch::session::{Ended, Session, SessionConfig};
use vmwatch::signals::StopSignal;
use vmwatch_core::dataset::DatasetWriter;
use vmwatch_core::govern::Trapped;

use super::{CountArgs, TargetArgs};

/// Count probe hits per VM and write one CSV row per VM and window.
///
/// Rows are flushed as each window closes. A VM that exits stops getting
/// rows while the others go on. SIGINT/SIGTERM end the recording cleanly
/// (the open window is discarded) and exit 0.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    count: CountArgs,
    /// Stop after this many windows (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "N", value_parser = super::windows)]
    windows: Option<u64>,
    /// Value of the `label` column (e.g. the scenario).
    #[arg(long, default_value = "")]
    label: String,
    /// Output file (`.csv`, or `.csv.gz` for gzip). A character device or
    /// FIFO (`/dev/stdout`) is written through; a symbolic link is refused.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace the output file if it exists (once the first window's rows
    /// are written; until then the old file stays as it was).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Install before attaching so a early Ctrl-C still detaches cleanly.
    let stop = StopSignal::install()?;
    // Refuse an existing file (without --force), a symbolic link and the
    // like before attaching, which takes long; creating it later stays
    // exclusive (O_EXCL), so a file that appears meanwhile is not clobbered.
    DatasetWriter::check(&args.output, args.force)?;
    let list = args
        .count
        .probes
        .as_deref()
        .map(vmwatch_core::features::read_feature_list)
        .transpose()?;
    // A list's tracked set is tracked with every transition as a column,
    // so the recording says what its seq: columns were counted among.
    let mut track = args.count.track.clone();
    for p in list.iter().flat_map(|l| &l.track) {
        if !track.contains(p) {
            track.push(p.clone());
        }
    }
    let features = list.map(|l| l.features);
    let mut objects = BpfObjects::default();
    let t = Instant::now();
    let mut session = Session::start(
        &mut objects,
        SessionConfig {
            targets: args.targets.targets(),
            sources: args.count.sources.clone(),
            features,
            track,
            also_track: Vec::new(),
            max_vms: args.count.max_vms,
            budget: args.count.govern.budget,
            hit_cost: args.count.govern.hit_cost(),
        },
    )?;
    let sites = session.attached_sites();
    tracing::info!(
        "counting {} features ({} probe sites) for {} process(es); attached in {:.2?}",
        session.features().len(),
        sites,
        session.watched().len(),
        t.elapsed()
    );
    let first: Vec<_> = session.watched().into_iter().cloned().collect();
    for p in &first {
        let facts = session.facts(p);
        tracing::info!("watching VM {} (PID {}), QEMU {}", p.vm, p.pid, facts.qemu);
    }

    let mut writer = DatasetWriter::create(&args.output, session.features(), args.force)?;
    let progress = progress_bar(args.windows);
    let mut rows = 0u64;
    let mut costs = CostSummary::default();
    let ended = session.run(args.count.interval, args.windows, &stop, |w| {
        for p in &w.drain.exited {
            progress
                .suspend(|| tracing::info!("VM {} (PID {}) exited; its rows stop", p.vm, p.pid));
        }
        for p in &w.joined {
            progress.suspend(|| tracing::info!("watching VM {} (PID {})", p.vm, p.pid));
        }
        if w.missed > 0 {
            progress
                .suspend(|| tracing::warn!("window {} overran {} boundaries", w.index, w.missed));
        }
        for row in w.rows(&args.label) {
            writer.write_row(&row)?;
            rows += 1;
        }
        for s in &w.drain.samples {
            costs.add(s, w.duration_ms);
        }
        writer.flush()?;
        progress.set_position(w.index + 1);
        progress.set_message(format!("{} VMs, {rows} rows", w.drain.samples.len()));
        Ok(())
    })?;
    progress.finish_and_clear();
    let kept = writer.keeps_old_file();
    writer
        .finish()
        .with_context(|| format!("closing {}", args.output.display()))?;
    drop(session);
    match ended {
        Ended::Signal(sig) => tracing::info!("stopped by signal {sig}; open window discarded"),
        Ended::NoneLeft => tracing::info!("every watched process exited"),
        Ended::Count => {}
    }
    costs.report(args.count.govern.budget);
    if kept {
        tracing::info!(
            "no row was recorded; {} was left as it was",
            args.output.display()
        );
    } else {
        tracing::info!("wrote {rows} rows to {}", args.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What each VM's probes cost over the recording (DESIGN.md: the cost per
/// VM is a first-class number).
#[derive(Default)]
struct CostSummary {
    vms: Vec<VmCost>,
}

struct VmCost {
    pid: u32,
    vm: String,
    windows: u64,
    /// Sum and maximum of the windows' cost (share of one CPU).
    sum: f64,
    max: f64,
    /// Windows with estimated counts, and the most probes estimated in one.
    estimated: u64,
    most: usize,
    /// Hits trapped, those of them not counted (links being switched), and
    /// the windows' total length in ms.
    hits: u64,
    dark: u64,
    ms: u64,
}

impl CostSummary {
    fn add(&mut self, s: &vmwatch::counter::Sample, ms: u64) {
        let p = &s.process;
        let share = s.probe_cpu_ns / (ms.max(1) as f64 * 1e6);
        let i = match self.vms.iter().position(|v| v.pid == p.pid) {
            Some(i) => i,
            None => {
                self.vms.push(VmCost {
                    pid: p.pid,
                    vm: p.vm.clone(),
                    windows: 0,
                    sum: 0.0,
                    max: 0.0,
                    estimated: 0,
                    most: 0,
                    hits: 0,
                    dark: 0,
                    ms: 0,
                });
                self.vms.len() - 1
            }
        };
        let v = &mut self.vms[i];
        v.windows += 1;
        v.sum += share;
        v.max = v.max.max(share);
        v.estimated += u64::from(!s.sampled.is_empty());
        v.most = v.most.max(s.sampled.len());
        v.hits += s.probe_hits;
        v.dark += s.probe_dark_hits;
        v.ms += ms;
    }

    fn report(&self, budget: Option<f64>) {
        let pct = |x: f64| format!("{:.3}%", x * 100.0);
        let budget = budget.map_or("no budget".to_string(), |b| format!("budget {}", pct(b)));
        for v in self.vms.iter().filter(|v| v.windows > 0) {
            let per_s = |n: u64| n as f64 * 1000.0 / v.ms.max(1) as f64;
            tracing::info!(
                "VM {} (PID {}): its probe hits cost {} of a CPU per window on average, {} at \
                 most ({budget}); {}; {} of {} windows have estimated counts (at most {} probes \
                 duty-cycled)",
                v.vm,
                v.pid,
                pct(v.sum / v.windows as f64),
                pct(v.max),
                Trapped {
                    per_s: per_s(v.hits),
                    dark_per_s: per_s(v.dark),
                },
                v.estimated,
                v.windows,
                v.most
            );
        }
    }
}

fn progress_bar(windows: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match windows {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] window {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{elapsed_precise} {spinner} window {pos} {msg}")
                .expect("valid template"),
        ),
    }
}

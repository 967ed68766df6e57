//! `vmwatch monitor`: live verdicts per VM and window.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch::bpf::BpfObjects;
use vmwatch::counter::BinaryFacts;
use vmwatch::discover::procs::Process;
use vmwatch::session::{Ended, Session, SessionConfig, Target};
use vmwatch::signals::StopSignal;
use vmwatch_core::model::{Model, Smoothing};
use vmwatch_core::verdict::{Judge, Verdict};

use super::TargetArgs;

/// Watch VMs live and print, every window, whether each still behaves like
/// the model's normal profile. Only the model's features are attached.
///
/// A VM whose QEMU lacks features the model relies on (nonzero in its
/// training windows: another QEMU version, another build) is refused:
/// given by --pid or --vm, monitor fails with a sentence that names them;
/// found by --all only, that VM is skipped with the same sentence and the
/// others are monitored. --allow-missing-features judges it anyway, with
/// them read as zero. A VM whose QEMU build is not one the model was
/// trained on is monitored with a warning.
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
    /// anomalous, and missing_features for a VM whose QEMU lacks some of
    /// the model's features).
    #[arg(long)]
    json: bool,
    /// Judge VMs whose QEMU lacks features the model relies on, with those
    /// read as zero; their verdicts say how many are missing.
    #[arg(long)]
    allow_missing_features: bool,
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
    #[command(flatten)]
    govern: super::GovernArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let stop = StopSignal::install()?;
    let model = Model::load(&args.model)?;
    let smooth = args.smooth.unwrap_or(model.smoothing);
    let mut objects = BpfObjects::default();
    let targets = args.targets.targets();
    if model.training.qemu_builds.is_empty() {
        tracing::info!(
            "the model does not say which QEMU it was trained on (an older vmwatch, or datasets \
             without the qemu_build_id column): QEMU builds are not compared"
        );
    }
    let mut session = Session::start(
        &mut objects,
        SessionConfig {
            targets: targets.clone(),
            sources: Vec::new(),
            features: Some(model.features.clone()),
            track: Vec::new(),
            also_track: model.training.tracked.clone(),
            max_vms: args.max_vms,
            budget: args.govern.budget,
            hit_cost: args.govern.hit_cost(),
        },
    )?;
    tracing::info!(
        "counting {} features ({} probe sites) for {} process(es)",
        session.features().len(),
        session.attached_sites(),
        session.watched().len()
    );
    if !model.training.tracked.is_empty() {
        tracing::info!(
            "tracking the {} probes the model's seq: transitions were learned with: {}",
            model.training.tracked.len(),
            model.training.tracked.join(", ")
        );
    }
    // The session drops model features no target has; they stay zero, and
    // so do probes a VM's own QEMU lacks: each VM is vetted.
    let mut judge = Judge::new(model, session.features(), smooth, "the watched VMs")?;
    let vet_vm = |judge: &Judge<u32>, p: &Process, facts: &BinaryFacts| {
        vet(judge, p, facts, &targets, args.allow_missing_features)
    };
    // Missing features per vetted PID.
    let mut vetted: HashMap<u32, Option<usize>> = HashMap::new();
    let mut first_skip = None;
    let first: Vec<Process> = session.watched().into_iter().cloned().collect();
    for p in &first {
        let facts = session.facts(p);
        match vet_vm(&judge, p, &facts)? {
            Vetted::Judge(missing) => {
                vetted.insert(p.pid, missing);
            }
            Vetted::Skip(e) => {
                session.unwatch(p.pid);
                first_skip.get_or_insert(e);
            }
        }
    }
    if let (true, Some(e)) = (session.watched().is_empty(), first_skip) {
        return Err(e.into());
    }
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
            vetted.remove(&p.pid);
        }
        // VMs that joined are vetted at their first full window.
        let mut samples = Vec::with_capacity(w.drain.samples.len());
        for s in &w.drain.samples {
            let pid = s.process.pid;
            if let Entry::Vacant(entry) = vetted.entry(pid) {
                match vet_vm(&judge, &s.process, &s.binary)? {
                    Vetted::Judge(missing) => {
                        entry.insert(missing);
                    }
                    Vetted::Skip(_) => {
                        w.unwatch(pid);
                        continue;
                    }
                }
            }
            samples.push(s);
        }
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
                missing_features: vetted.get(&s.process.pid).copied().flatten(),
                estimated_features: Some(judge.estimated(&s.sampled)).filter(|&n| n > 0),
                probe_cost: Some(s.probe_cpu_ns / (w.duration_ms.max(1) as f64 * 1e6)),
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

/// What vetting a VM decided.
enum Vetted {
    /// Judge it; with this many of the model's features missing.
    Judge(Option<usize>),
    /// Leave it out (found by --all only), for this reason (logged).
    Skip(vmwatch_core::Error),
}

/// Whether the VM of process `p` can be judged with the model: a VM whose
/// QEMU lacks features the model relies on is refused unless `allow`
/// (an error when the targets name it, else skipped); other missing
/// features and another QEMU build are warnings. Logs once per VM.
fn vet(
    judge: &Judge<u32>,
    p: &Process,
    facts: &BinaryFacts,
    targets: &[Target],
    allow: bool,
) -> vmwatch_core::Result<Vetted> {
    let model = judge.model();
    if model.trained_on(&facts.qemu) == Some(false) {
        let builds: Vec<String> = model
            .training
            .qemu_builds
            .iter()
            .map(|b| b.to_string())
            .collect();
        tracing::warn!(
            "VM {} (PID {}): its QEMU is {}, not one the model was trained on ({}); its verdicts \
             may differ",
            p.vm,
            p.pid,
            facts.qemu,
            builds.join("; ")
        );
    }
    let coverage = judge.coverage(&facts.lacking);
    let Some(what) = coverage.describe() else {
        return Ok(Vetted::Judge(None));
    };
    if !coverage.is_usable() && !allow {
        let e = vmwatch_core::Error::MissingFeatures {
            vm: p.vm.clone(),
            pid: p.pid,
            features: coverage.relied,
        };
        let named = targets.iter().any(|t| match t {
            Target::Pid(pid) => *pid == p.pid,
            Target::Vm(name) => *name == p.vm,
            _ => false,
        });
        if named {
            return Err(e);
        }
        tracing::warn!("{e} (skipped: the other VMs are monitored)");
        return Ok(Vetted::Skip(e));
    }
    let anyway = if coverage.is_usable() {
        ""
    } else {
        "; judged anyway (--allow-missing-features)"
    };
    tracing::warn!("VM {} (PID {}): {what}{anyway}", p.vm, p.pid);
    Ok(Vetted::Judge(Some(coverage.missing.len())))
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
        let missing = match v.missing_features {
            Some(1) => "  (1 feature missing)".to_string(),
            Some(n) => format!("  ({n} features missing)"),
            None => String::new(),
        };
        writeln!(
            out,
            "{:>6}  {:<20} {:>8} {:>10.4}  {verdict}{missing}",
            v.window, v.vm, v.pid, v.score
        )?;
    }
    out.flush()
}

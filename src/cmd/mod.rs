//! Subcommands of the `vmwatch` binary.

pub mod agent;
pub mod cleanup;
pub mod ctl;
pub mod detect;
pub mod eval;
pub mod list;
pub mod monitor;
pub mod probes;
pub mod record;
pub mod select;
pub mod train;

use std::path::PathBuf;

use clap::Args;

use vmwatch::session::Target;
use vmwatch_core::train::{FeatureChoice, SvmParams};

/// Whether `path` is this process's standard output (`-o /dev/stdout`): a
/// command then prints its report to stderr rather than into the file.
pub fn is_stdout(path: &std::path::Path) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    match (std::fs::File::from(out).metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Which VMs to watch.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct TargetArgs {
    /// Watch the process with this PID (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch the QEMU process(es) of the VM with this name (from `-name`;
    /// repeatable). A VM restarted under the same name is picked up again.
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    /// Watch every QEMU process, including ones started later.
    #[arg(long)]
    pub all: bool,
}

impl TargetArgs {
    pub fn targets(&self) -> Vec<Target> {
        let mut t: Vec<Target> = self.pids.iter().copied().map(Target::Pid).collect();
        t.extend(self.vms.iter().cloned().map(Target::Vm));
        if self.all {
            t.push(Target::All);
        }
        t
    }
}

/// Options shared by the commands that count (`record`, `monitor`).
#[derive(Debug, Clone, Args)]
pub struct CountArgs {
    /// Sources to count, comma separated: `qemu` (USDT probes), `syscalls`
    /// (BPF syscall counter), `kvm` (KVM tracepoints and exit reasons),
    /// `perf` (software performance counters of the VM's threads: vCPU and
    /// other CPU time, context switches, page faults, CPU migrations),
    /// `seq` (transitions between two probes on a thread, `seq:A>B`, those
    /// of --track and --probes), `arg` (log2 buckets of chosen probe
    /// arguments, e.g. `arg:virtqueue_fill:len:rx:64-127`), or `strace` alone (the real `strace -c -f`,
    /// the paper's baseline). Default: the sources of --probes, else qemu.
    #[arg(long = "source", value_delimiter = ',', value_name = "SOURCES")]
    pub sources: Vec<vmwatch::session::CountSource>,
    /// Count only these features (one name per line, e.g. `qemu:tap_send`,
    /// `seq:virtqueue_fill>virtio_notify`); only their probe sites are
    /// attached.
    #[arg(long, value_name = "FILE")]
    pub probes: Option<PathBuf>,
    /// Track these QEMU probes (comma separated) and count every transition
    /// among them, `seq:A>B` for each ordered pair: a thread's previous
    /// probe is the last tracked one it hit. Implies `--source seq` when
    /// --source is not given.
    #[arg(long, value_delimiter = ',', value_name = "PROBES")]
    pub track: Vec<String>,
    /// Window length (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = vmwatch_core::window::parse_interval)]
    pub interval: std::time::Duration,
    /// Most VMs watched at once (sizes the kernel maps; 1 to 1024).
    #[arg(long, default_value_t = vmwatch::bpf::DEFAULT_MAX_VMS, value_name = "N",
          value_parser = max_vms)]
    pub max_vms: u32,
    #[command(flatten)]
    pub govern: GovernArgs,
}

/// The cost governor's options (`record`, `monitor`).
#[derive(Debug, Clone, Args)]
pub struct GovernArgs {
    /// Share of one CPU each VM's QEMU probe hits may cost, in percent
    /// (the cost governor): cheap probes stay exact, hot ones are counted
    /// during part of each window and their counts estimated (marked in
    /// the rows' `sampled` column). `none` counts every probe exactly.
    #[arg(long, default_value = "1", value_name = "PERCENT|none",
          value_parser = vmwatch_core::govern::parse_budget)]
    pub budget: Budget,
    /// CPU time one probe hit costs the VM, in ns, for the budget and the
    /// cost reports. Default: measured at start-up on this host, for 5-byte-
    /// nop and int3 sites apart.
    #[arg(long, value_name = "NS", value_parser = hit_cost)]
    pub hit_cost: Option<f64>,
}

/// `--budget`'s value: the share of one CPU, `None` for `none`.
pub type Budget = Option<f64>;

impl GovernArgs {
    /// What a hit costs, when given (else measured).
    pub fn hit_cost(&self) -> Option<vmwatch_core::govern::HitCost> {
        self.hit_cost.map(vmwatch_core::govern::HitCost::flat)
    }
}

fn hit_cost(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a cost in ns above 0 and at most 1000000"
        )),
    }
}

/// Which features to learn from (`train`, `eval`).
#[derive(Debug, Clone, Args)]
pub struct FeatureArgs {
    /// Use only these features (one per line, e.g. from `vmwatch select`).
    /// Default: every feature that is nonzero somewhere in the input files.
    #[arg(long, value_name = "FILE")]
    pub features: Option<PathBuf>,
    /// Use only the features of these sources (comma separated: qemu,
    /// syscalls, kvm, perf, seq, arg) that are nonzero somewhere in the input
    /// files.
    #[arg(
        long = "source",
        value_delimiter = ',',
        value_name = "SOURCES",
        conflicts_with = "features"
    )]
    pub sources: Vec<vmwatch_core::features::Source>,
}

impl FeatureArgs {
    pub fn choice(&self) -> vmwatch_core::Result<FeatureChoice> {
        Ok(match &self.features {
            Some(path) => FeatureChoice::List(vmwatch_core::features::read_feature_list(path)?),
            None => FeatureChoice::Nonzero(self.sources.clone()),
        })
    }
}

/// One-class SVM parameters: fixed, or searched on a grid by k-fold CV.
#[derive(Debug, Clone, Args)]
pub struct SvmArgs {
    /// The SVM's nu (upper bound on the training-error fraction, 0 < nu <=
    /// 1); with --gamma it skips the grid search.
    #[arg(long, requires = "gamma", value_parser = parse_nu)]
    pub nu: Option<f64>,
    /// The RBF kernel's gamma (exp(-gamma * |x - y|^2) on scaled features;
    /// finite, > 0).
    #[arg(long, requires = "nu", value_parser = parse_gamma)]
    pub gamma: Option<f64>,
    /// Parameter grid: `paper` (nu, gamma in 0.01..0.1) or `wide` (log grid).
    #[arg(long, default_value = "paper")]
    pub grid: vmwatch_core::train::Grid,
    /// Cross-validation folds (at least 2).
    #[arg(long, default_value_t = 5, value_parser = folds)]
    pub folds: usize,
}

impl SvmArgs {
    pub fn params(&self) -> SvmParams {
        match (self.nu, self.gamma) {
            // The option parsers checked the range; clap makes them a pair.
            (Some(nu), Some(gamma)) => SvmParams::Fixed { nu, gamma },
            _ => SvmParams::Search(self.grid),
        }
    }
}

/// `text` parsed as a `T` that `valid` accepts; otherwise the sentence
/// `invalid` makes (for an option's value parser).
fn parse_checked<T: std::str::FromStr>(
    text: &str,
    valid: impl Fn(&T) -> bool,
    invalid: impl FnOnce() -> String,
) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(v) if valid(&v) => Ok(v),
        _ => Err(invalid()),
    }
}

/// `--max-vms`: 1 to [`vmwatch::bpf::MAX_VMS`].
pub fn max_vms(s: &str) -> Result<u32, String> {
    let max = vmwatch::bpf::MAX_VMS;
    parse_checked(
        s.trim(),
        |n| (1..=max).contains(n),
        || format!("`{s}` is not a number of VMs from 1 to {max}"),
    )
}

/// `--folds`: 2 to 100.
fn folds(s: &str) -> Result<usize, String> {
    parse_checked(
        s.trim(),
        |n| (2..=100).contains(n),
        || format!("`{s}` is not a number of folds from 2 to 100"),
    )
}

/// `--windows`: at least 1.
pub fn windows(s: &str) -> Result<u64, String> {
    parse_checked(
        s.trim(),
        |n| *n >= 1,
        || format!("`{s}` is not a number of windows (1 or more)"),
    )
}

fn parse_number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))
}

/// A number (else "`s` is not a number") that `valid` accepts (else
/// "`must_be`, not `s`").
fn number_within(s: &str, valid: fn(f64) -> bool, must_be: &str) -> Result<f64, String> {
    let x = parse_number(s)?;
    if valid(x) {
        Ok(x)
    } else {
        Err(format!("{must_be}, not `{s}`"))
    }
}

/// `--nu`: 0 < nu <= 1 (a model with another nu cannot be loaded).
fn parse_nu(s: &str) -> Result<f64, String> {
    number_within(
        s,
        vmwatch_core::model::valid_nu,
        "nu must be a number with 0 < nu <= 1",
    )
}

/// `--gamma`: finite and > 0 (JSON cannot even store an infinite one).
fn parse_gamma(s: &str) -> Result<f64, String> {
    number_within(
        s,
        vmwatch_core::model::valid_gamma,
        "gamma must be a finite number > 0",
    )
}

//! Counters: what watches processes and, every window, drains one row of
//! counts per watched process. The BPF collector ([`bpf`]) and the strace
//! baseline ([`strace`]) implement [`Counter`]; a session drives whichever
//! it was given. The BPF collector also reads each watched process's
//! software performance counters ([`perf`]) into the same rows.

pub mod bpf;
pub mod perf;
pub mod strace;

use std::sync::Arc;

use vmwatch_core::features::Columns;
use vmwatch_core::qemu::QemuBuild;

use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::error::Result;

/// One drained window of one watched process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub process: Process,
    /// One count per column: exact, or estimated where `sampled` says.
    pub counts: Vec<u64>,
    /// Columns whose count is an estimate (the cost governor counted the
    /// probe during part of the window only): (column, fraction counted).
    pub sampled: Vec<(usize, f64)>,
    /// QEMU probe hits the VM's threads trapped into during the window.
    pub probe_hits: u64,
    /// Of these, hits on the cost governor's links while switched off
    /// (being attached or detached): paid for, not counted.
    pub probe_dark_hits: u64,
    /// CPU time those hits cost the VM, in ns (hits × cost per hit).
    pub probe_cpu_ns: f64,
    /// What its executable is (filled in by the session).
    pub binary: Arc<BinaryFacts>,
}

/// What a watched process's executable means for its rows: which QEMU it
/// is, and which columns it cannot count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryFacts {
    /// Its build id and version (unknown when not read).
    pub qemu: QemuBuild,
    /// Columns it has no probe for, sorted: they stay zero for it.
    pub lacking: Vec<usize>,
}

/// Result of a drain: samples of live processes, and processes that exited
/// since the previous drain (their partial window is not reported).
#[derive(Debug, Default)]
pub struct Drain {
    pub samples: Vec<Sample>,
    pub exited: Vec<Process>,
}

/// Counts features per watched process.
pub trait Counter {
    /// The features counted, in row order.
    fn columns(&self) -> &Columns;

    /// Starts counting `process`. `binary` is its executable's probes when
    /// QEMU probes are counted.
    fn watch(&mut self, process: &Process, binary: Option<&UsdtBinary>) -> Result<()>;

    /// Processes being counted.
    fn watched(&self) -> Vec<&Process>;

    /// Stops counting `pid` (nothing when it is not watched).
    fn unwatch(&mut self, pid: u32);

    /// Every watched process's counts since the previous drain; processes
    /// that exited are unwatched and reported.
    fn drain(&mut self) -> Result<Drain>;

    /// Probe sites attached in the kernel.
    fn attached_sites(&self) -> usize {
        0
    }

    /// The window length, which the cost governor cuts into phases.
    fn set_interval(&mut self, _interval: std::time::Duration) {}

    /// When the counter has work between drains (the cost governor).
    fn wake_at(&self) -> Option<std::time::Instant> {
        None
    }

    /// Does that work.
    fn wake(&mut self, _now: std::time::Instant) -> Result<()> {
        Ok(())
    }
}

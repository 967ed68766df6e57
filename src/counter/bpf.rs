//! The BPF collector: per-VM counting in the kernel. It loads the BPF
//! object ([`crate::attach`]), attaches each QEMU binary once for every
//! process that runs it, raises the semaphores of each watched process, and
//! drains one row per watched process per window ([`crate::drain`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vmwatch_core::features::Columns;

use super::{Counter, Drain, Sample};
use crate::attach::semaphores::{self, Raised};
use crate::attach::uprobes::{self, BinaryAttachment};
use crate::attach::{self, Kernel};
use crate::bpf::{BpfObjects, Layout};
use crate::discover::kvm::KvmEvents;
use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::drain::Drainer;
use crate::error::{Error, Result};
use crate::govern::{self, Due, GovernConfig, Governed, Schedule, VmProbes};
use vmwatch_core::govern::HitCost;

/// How a collector is set up.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The features to count, in row order. Each attached binary attaches
    /// the sites of its probes among them only.
    pub columns: Columns,
    /// Most processes watched at once (sizes the kernel maps).
    pub max_vms: u32,
    /// The kernel's KVM tracepoints, when `kvm:` features are counted.
    pub kvm: Option<KvmEvents>,
    /// Share of one CPU each VM's probe hits may cost; `None`: exact.
    pub budget: Option<f64>,
    /// What a hit costs; `None`: measured now ([`govern::calibrate`]).
    pub hit_cost: Option<HitCost>,
}

/// A watched process in its slot.
struct Watched {
    process: Process,
    /// Semaphores raised in this process; lowered when the slot is freed.
    raised: Raised,
    /// Its counted QEMU probes, for the governor (none: no probe counted).
    probes: Option<VmProbes>,
}

/// Loaded BPF counters plus the attachments and watched processes.
pub struct Collector<'obj> {
    kernel: Kernel<'obj>,
    columns: Columns,
    attachments: HashMap<(u64, u64), BinaryAttachment>,
    slots: Vec<Option<Watched>>,
    drainer: Drainer,
    govern: GovernConfig,
    schedule: Schedule,
}

impl<'obj> Collector<'obj> {
    /// Loads the BPF programs of the sources `config` counts, sizes the maps
    /// and attaches the syscall and KVM programs.
    pub fn new(objects: &'obj mut BpfObjects, config: CollectorConfig) -> Result<Self> {
        let layout = Layout::new(config.columns.len(), config.max_vms)?;
        let kernel = attach::load(objects, &layout, &config.columns, config.kvm.as_ref())?;
        let drainer = Drainer::new(kernel.counts_fd(), layout)?;
        let counts_probes = config
            .columns
            .iter()
            .any(|(_, f)| matches!(f, vmwatch_core::features::Feature::Probe(_)));
        let cost = match config.hit_cost {
            Some(c) => c,
            None if counts_probes => govern::hit_cost(&kernel.skel.progs.count_usdt),
            None => HitCost::flat(govern::DEFAULT_TRAP_NS),
        };
        Ok(Self {
            kernel,
            columns: config.columns,
            attachments: HashMap::new(),
            slots: (0..layout.slots).map(|_| None).collect(),
            drainer,
            govern: GovernConfig {
                budget: config.budget,
                cost,
            },
            schedule: Schedule::new(Duration::from_secs(2), Instant::now()),
        })
    }

    /// Attachments, one per distinct binary.
    pub fn attachments(&self) -> impl Iterator<Item = &BinaryAttachment> {
        self.attachments.values()
    }

    /// Whether the syscall program is attached.
    pub fn counts_syscalls(&self) -> bool {
        self.kernel.counts_syscalls
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        self.slots.iter().flatten().map(|s| &s.process)
    }

    /// Starts counting `process`. Attaches its binary first if no other
    /// watched process runs the same file. `binary` is `None` when no QEMU
    /// probe is counted (e.g. syscalls only).
    pub fn watch(&mut self, process: &Process, binary: Option<&UsdtBinary>) -> Result<()> {
        if self.processes().any(|p| p.pid == process.pid) {
            return Ok(());
        }
        let slot = self.slots.iter().position(Option::is_none).ok_or_else(|| {
            Error::Invalid(format!(
                "cannot watch PID {}: already watching {} processes (raise --max-vms)",
                process.pid,
                self.slots.len()
            ))
        })?;
        let raised = match binary {
            Some(binary) => self.attach_and_raise(process, binary)?,
            None => Raised::default(),
        };
        let probes = binary.map(|_| {
            VmProbes::new(
                &self.attachments[&process.binary_id].probes_of,
                &self.govern.cost,
                Instant::now(),
            )
        });
        self.drainer.open(slot)?;
        if let Err(e) = self.kernel.watch(process.pid, slot) {
            self.drainer.close(slot);
            return Err(e);
        }
        self.slots[slot] = Some(Watched {
            process: process.clone(),
            raised,
            probes,
        });
        Ok(())
    }

    fn attach_and_raise(&mut self, process: &Process, binary: &UsdtBinary) -> Result<Raised> {
        if !self.attachments.contains_key(&process.binary_id) {
            let prog = &self.kernel.skel.progs.count_usdt;
            let att = uprobes::attach(prog, process, binary, &self.kernel.probes)?;
            self.attachments.insert(process.binary_id, att);
        }
        let raised = semaphores::raise(
            process.pid,
            process.binary_id,
            &self.attachments[&process.binary_id].semaphores,
        );
        if raised.is_err() {
            self.detach_unused(process.binary_id);
        }
        raised
    }

    /// Stops counting `pid` and detaches its binary when no watched process
    /// runs it any more.
    pub fn unwatch(&mut self, pid: u32) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.process.pid == pid))
        else {
            return;
        };
        let watched = self.slots[i].take().expect("slot found above");
        self.kernel.unwatch(pid);
        self.drainer.close(i);
        let binary_id = watched.process.binary_id;
        drop(watched);
        self.detach_unused(binary_id);
    }

    /// Detaches a binary no watched process runs any more.
    fn detach_unused(&mut self, binary_id: (u64, u64)) {
        if self.processes().any(|p| p.binary_id == binary_id) {
            return;
        }
        if let Some(att) = self.attachments.remove(&binary_id) {
            let t = Instant::now();
            let path = att.path.clone();
            drop(att);
            tracing::debug!("detached {path} in {:?}", t.elapsed());
        }
    }

    /// Reads every watched process's counts since the previous drain.
    /// Processes that exited are unwatched and reported in `exited`.
    pub fn drain(&mut self) -> Result<Drain> {
        let mut out = Drain::default();
        let drained = self.drainer.drain()?;
        let now = Instant::now();
        for (slot, mut counts) in drained {
            let watched = self.slots[slot].as_mut().expect("open slots are watched");
            if watched.process.is_alive() {
                let cost = watched
                    .probes
                    .as_mut()
                    .map(|p| p.close_window(now, &mut counts))
                    .unwrap_or_default();
                out.samples.push(Sample {
                    process: watched.process.clone(),
                    counts,
                    sampled: cost.sampled,
                    probe_hits: cost.hits,
                    probe_cpu_ns: cost.cpu_ns,
                    binary: Default::default(),
                });
            } else {
                out.exited.push(watched.process.clone());
            }
        }
        for p in &out.exited {
            self.unwatch(p.pid);
        }
        // The window's end is a phase's start.
        if self.govern.budget.is_some() {
            self.run_due(Due::Phase, now)?;
        }
        Ok(out)
    }

    /// The next instant the governor has something to do.
    pub fn wake_at(&self) -> Option<Instant> {
        self.govern.budget.map(|_| self.schedule.next())
    }

    /// Does what the governor has due by `now`.
    pub fn wake(&mut self, now: Instant) -> Result<()> {
        if self.govern.budget.is_none() {
            return Ok(());
        }
        while let Some(due) = self.schedule.pop_due(now) {
            self.run_due(due, now)?;
        }
        Ok(())
    }

    fn run_due(&mut self, due: Due, now: Instant) -> Result<()> {
        // Phases are measured by the counters; a turn-on reads them too, to
        // see whether probes fired while their semaphore was down.
        let rows = if matches!(due, Due::Phase | Due::On) {
            self.drainer.peek()?
        } else {
            Vec::new()
        };
        let mut vms: Vec<Governed<'_>> = Vec::new();
        for (slot, w) in self.slots.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let Some(probes) = w.probes.as_mut() else {
                continue;
            };
            let cum = rows
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, r)| r.as_slice());
            vms.push(Governed {
                pid: w.process.pid,
                probes,
                raised: &mut w.raised,
                cum,
            });
        }
        let found = govern::run_due(due, now, &mut self.schedule, self.govern.budget, &mut vms);
        drop(vms);
        if due == Due::Phase && self.schedule.cycles() {
            // The base of the off probes' hits while off (see find_ungated).
            let at = Instant::now();
            for (slot, row) in self.drainer.peek()? {
                if let Some(p) = self.slots[slot].as_mut().and_then(|w| w.probes.as_mut()) {
                    p.set_off_base(&row, at);
                }
            }
        }
        for (pid, cols) in found.ungated {
            let names: Vec<&str> = cols
                .iter()
                .take(5)
                .filter_map(|&c| self.columns.names().get(c).map(String::as_str))
                .collect();
            tracing::info!(
                "PID {pid}: {} probe(s) ({}{}) fired while their semaphore was down (this QEMU \
                 does not check it before their sites): they are counted exactly, not \
                 duty-cycled",
                cols.len(),
                names.join(", "),
                if cols.len() > names.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        for (pid, cols) in found.shared {
            let names: Vec<&str> = cols
                .iter()
                .take(5)
                .filter_map(|&c| self.columns.names().get(c).map(String::as_str))
                .collect();
            tracing::info!(
                "PID {pid}: another tracer holds the semaphore of {} probe(s) ({}{}); \
                 they are counted exactly, not duty-cycled",
                cols.len(),
                names.join(", "),
                if cols.len() > names.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}

impl Counter for Collector<'_> {
    fn columns(&self) -> &Columns {
        &self.columns
    }

    fn watch(&mut self, process: &Process, binary: Option<&UsdtBinary>) -> Result<()> {
        Collector::watch(self, process, binary)
    }

    fn watched(&self) -> Vec<&Process> {
        self.processes().collect()
    }

    fn unwatch(&mut self, pid: u32) {
        Collector::unwatch(self, pid);
    }

    fn drain(&mut self) -> Result<Drain> {
        Collector::drain(self)
    }

    fn set_interval(&mut self, interval: Duration) {
        self.schedule.set_interval(interval);
    }

    fn wake_at(&self) -> Option<Instant> {
        Collector::wake_at(self)
    }

    fn wake(&mut self, now: Instant) -> Result<()> {
        Collector::wake(self, now)
    }

    fn attached_sites(&self) -> usize {
        self.attachments.values().map(|a| a.sites).sum()
    }
}

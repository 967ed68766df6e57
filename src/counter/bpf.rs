//! The BPF collector: per-VM counting in the kernel. It loads the BPF
//! object ([`crate::attach`]), attaches each QEMU binary once for every
//! process that runs it, raises the semaphores of each watched process, and
//! drains one row per watched process per window ([`crate::drain`]), with
//! the process's software performance counters ([`super::perf`]) read into
//! the same row when `perf:` features are columns.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use vmwatch_core::features::Columns;

use super::perf::{self, PerfColumns, ProcessCounters};
use super::{Counter, Drain, Sample};
use crate::attach::semaphores::{self, Raised};
use crate::attach::switches::{self, Switches};
use crate::attach::uprobes::{self, BinaryAttachment, ProcessLinks};
use crate::attach::{self, Kernel};
use crate::bpf::BpfObjects;
use crate::discover::kvm::KvmEvents;
use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::drain::Drainer;
use crate::error::{Error, Result};
use crate::govern::{self, Due, GovernConfig, Governed, Linker, Schedule, VmProbes};
use vmwatch_core::govern::HitCost;

/// How a collector is set up.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The features to count, in row order. Each attached binary attaches
    /// the sites of its probes among them only.
    pub columns: Columns,
    /// Probes tracked for `seq:` transitions besides those the columns
    /// name (`--track`).
    pub tracked: Vec<String>,
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
    /// Its own links, for probes split off its binary's link.
    links: ProcessLinks,
    /// Its slot's switched-off hits as last read (cumulative).
    dark: u64,
    /// Its threads' perf counters, when `perf:` features are counted.
    perf: Option<ProcessCounters>,
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
    switches: Switches,
    /// Where the perf counts go (`None`: no `perf:` column).
    perf: Option<PerfColumns>,
}

impl<'obj> Collector<'obj> {
    /// Loads the BPF programs of the sources `config` counts, sizes the maps
    /// and attaches the syscall and KVM programs.
    pub fn new(objects: &'obj mut BpfObjects, config: CollectorConfig) -> Result<Self> {
        let kernel = attach::load(
            objects,
            &config.columns,
            &config.tracked,
            config.max_vms,
            config.kvm.as_ref(),
        )?;
        let layout = kernel.layout;
        let drainer = Drainer::new(kernel.counts_fd(), layout)?;
        let switches = Switches::new(libbpf_rs::MapCore::max_entries(&kernel.skel.maps.switches));
        let counts_probes = !kernel.probes.is_empty();
        let cost = match config.hit_cost {
            Some(c) => c,
            None if counts_probes => govern::hit_cost(&kernel.skel.progs.count_usdt),
            None => HitCost::flat(govern::DEFAULT_TRAP_NS),
        };
        let perf = PerfColumns::of(&config.columns);
        if perf.is_some() {
            perf::raise_open_files_limit();
        }
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
            switches,
            perf,
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
        // First: nothing else to undo when the process cannot be counted.
        let perf = match self.perf {
            Some(_) => Some(ProcessCounters::open(process.pid)?),
            None => None,
        };
        let raised = match binary {
            Some(binary) => self.attach_and_raise(process, binary)?,
            None => Raised::default(),
        };
        let mut links = ProcessLinks::new();
        let probes = match binary {
            Some(_) => Some(self.own_links(process, &mut links)?),
            None => None,
        };
        let opened =
            self.drainer
                .open(slot)
                .and_then(|()| match self.kernel.watch(process.pid, slot) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.drainer.close(slot);
                        Err(e)
                    }
                });
        if let Err(e) = opened {
            for l in links.take_all() {
                self.switches.retire(&self.kernel, l);
            }
            return Err(e);
        }
        // A slot's switched-off hits, like its counters, are never reset.
        let dark = self.kernel.dark_hits(slot).unwrap_or(0);
        self.slots[slot] = Some(Watched {
            process: process.clone(),
            raised,
            probes,
            links,
            dark,
            perf,
        });
        Ok(())
    }

    /// The governor's view of a newly watched `process`, with a link of its
    /// own, on, for the probes split off its binary's link.
    fn own_links(&mut self, process: &Process, links: &mut ProcessLinks) -> Result<VmProbes> {
        let att = &self.attachments[&process.binary_id];
        let mut probes = VmProbes::new(&att.probes_of, &self.govern.cost, Instant::now());
        let split: Vec<u32> = att.split().iter().copied().collect();
        if !split.is_empty() {
            let mut link =
                ProcessLinks::attach(&self.kernel, &mut self.switches, att, process, &split)?;
            if let Err(e) = switches::flip(&self.kernel, &mut link, true) {
                self.switches.retire(&self.kernel, link);
                return Err(e);
            }
            links.exact = Some(link);
            probes.linked(&split);
        }
        Ok(probes)
    }

    fn attach_and_raise(&mut self, process: &Process, binary: &UsdtBinary) -> Result<Raised> {
        if !self.attachments.contains_key(&process.binary_id) {
            // Governed: what earlier runs found ungated goes on links at once.
            let split = match self.govern.budget {
                Some(_) => govern::ungated::known(binary.qemu.build_id.as_deref()),
                None => BTreeSet::new(),
            };
            let att = uprobes::attach(&self.kernel, &mut self.switches, process, binary, &split)?;
            if !att.split().is_empty() {
                tracing::info!(
                    "{} probe(s) an earlier run found its semaphores do not gate go on links of \
                     each watched process",
                    att.split().len()
                );
            }
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
        let mut watched = self.slots[i].take().expect("slot found above");
        self.kernel.unwatch(pid);
        self.drainer.close(i);
        for l in watched.links.take_all() {
            self.switches.retire(&self.kernel, l);
        }
        let binary_id = watched.process.binary_id;
        drop(watched);
        self.detach_unused(binary_id);
    }

    /// The first few of these feature columns' names, for a log line.
    fn first_names(&self, cols: impl Iterator<Item = usize>) -> String {
        let names: Vec<String> = cols
            .filter_map(|c| self.columns.names().get(c).cloned())
            .collect();
        vmwatch_core::error::first_few(&names, 5)
    }

    /// Detaches a binary no watched process runs any more.
    fn detach_unused(&mut self, binary_id: (u64, u64)) {
        if self.processes().any(|p| p.binary_id == binary_id) {
            return;
        }
        if let Some(mut att) = self.attachments.remove(&binary_id) {
            if let Some(main) = att.take_main() {
                self.switches.retire(&self.kernel, main);
            }
            tracing::debug!("detaching {}", att.path);
        }
    }

    /// Reads every watched process's counts since the previous drain.
    /// Processes that exited are unwatched and reported in `exited`.
    pub fn drain(&mut self) -> Result<Drain> {
        let mut out = Drain::default();
        let drained = self.drainer.drain()?;
        let now = Instant::now();
        let governed = self.govern.budget.is_some();
        // Each slot's switched-off hits, read once: for the window's cost
        // and for the phase that starts with the next window. Ungoverned,
        // no link is ever switched off.
        let mut dark_now = Vec::new();
        for (slot, mut counts) in drained {
            let watched = self.slots[slot].as_mut().expect("open slots are watched");
            if watched.process.is_alive() {
                let dark = match governed.then(|| self.kernel.dark_hits(slot)) {
                    Some(Ok(d)) => {
                        dark_now.push((slot, d));
                        let n = d.wrapping_sub(watched.dark);
                        watched.dark = d;
                        n
                    }
                    Some(Err(e)) => {
                        tracing::debug!("{}", vmwatch_core::error::chain(&e));
                        0
                    }
                    None => 0,
                };
                let cost = watched
                    .probes
                    .as_mut()
                    .map(|p| p.close_window(now, &mut counts, dark))
                    .unwrap_or_default();
                // The hidden counters of tracked probes that are not
                // columns have been charged; rows are the columns.
                counts.truncate(self.columns.len());
                if let (Some(cols), Some(p)) = (&self.perf, watched.perf.as_mut()) {
                    p.read().write(cols, &mut counts);
                }
                out.samples.push(Sample {
                    process: watched.process.clone(),
                    counts,
                    sampled: cost.sampled,
                    probe_hits: cost.hits,
                    probe_cpu_ns: cost.cpu_ns,
                    probe_dark_hits: cost.dark,
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
        if governed {
            self.run_due(Due::Phase, now, Some(dark_now))?;
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
            self.run_due(due, now, None)?;
        }
        Ok(())
    }

    /// Runs what is `due` at `now`; `dark`: each slot's switched-off hits,
    /// if just read (else a phase reads them).
    fn run_due(&mut self, due: Due, now: Instant, dark: Option<Vec<(usize, u64)>>) -> Result<()> {
        // Phases are measured by the counters; a turn-on reads them too, to
        // see whether probes fired while their semaphore was down.
        let rows = if matches!(due, Due::Phase | Due::On) {
            self.drainer.peek()?
        } else {
            Vec::new()
        };
        let dark: Vec<(usize, u64)> = if let Some(d) = dark {
            d
        } else if due == Due::Phase {
            (0..self.slots.len())
                .filter(|&s| self.slots[s].is_some())
                .filter_map(|s| self.kernel.dark_hits(s).ok().map(|d| (s, d)))
                .collect()
        } else {
            Vec::new()
        };
        let mut vms = governed(&mut self.slots, &self.attachments, &rows, &dark, |_| true);
        let mut linker = Linker {
            kernel: &self.kernel,
            switches: &mut self.switches,
        };
        let found = govern::run_due(
            due,
            now,
            &mut self.schedule,
            self.govern.budget,
            &mut vms,
            &mut linker,
        );
        drop(vms);
        if !found.split.is_empty() {
            self.split_off(&found.split);
        }
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
            let all: Vec<&str> = cols
                .iter()
                .filter_map(|&c| self.columns.names().get(c))
                .filter_map(|n| n.strip_prefix("qemu:"))
                .collect();
            if let Some(att) = self
                .processes()
                .find(|p| p.pid == pid)
                .and_then(|p| self.attachments.get(&p.binary_id))
            {
                govern::ungated::remember(att.build_id.as_deref(), &all);
            }
            tracing::info!(
                "PID {pid}: {} probe(s) ({}) fired while their semaphore was down (this QEMU \
                 does not check it before their sites): they are counted exactly, and moved onto \
                 links of their own once they are worth thinning",
                cols.len(),
                self.first_names(cols.iter().copied())
            );
        }
        for (pid, cols) in found.shared {
            tracing::info!(
                "PID {pid}: another tracer holds the semaphore of {} probe(s) ({}); \
                 they are counted exactly, not duty-cycled",
                cols.len(),
                self.first_names(cols.iter().copied())
            );
        }
        Ok(())
    }
}

/// The governor's view of the watched processes `which` accepts (by
/// binary), with their cumulative rows from `rows`.
fn governed<'a>(
    slots: &'a mut [Option<Watched>],
    attachments: &'a HashMap<(u64, u64), BinaryAttachment>,
    rows: &'a [(usize, Vec<u64>)],
    dark: &[(usize, u64)],
    which: impl Fn((u64, u64)) -> bool,
) -> Vec<Governed<'a>> {
    let mut vms = Vec::new();
    for (slot, w) in slots.iter_mut().enumerate() {
        let Some(w) = w else { continue };
        let (Some(probes), Some(binary)) =
            (w.probes.as_mut(), attachments.get(&w.process.binary_id))
        else {
            continue;
        };
        if !which(w.process.binary_id) {
            continue;
        }
        let cum = rows
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, r)| r.as_slice());
        vms.push(Governed {
            process: &w.process,
            probes,
            raised: &mut w.raised,
            links: &mut w.links,
            binary,
            cum,
            dark: dark.iter().find(|(s, _)| *s == slot).map(|(_, d)| *d),
        });
    }
    vms
}

impl Collector<'_> {
    /// Moves the probes `wanted` (by PID) off their binaries' links onto
    /// links of every watched process of those binaries, without a gap in
    /// their counts: the new links are attached with their switches off,
    /// then turned on before the old ones are turned off. Probes that
    /// cannot be moved stay exact.
    fn split_off(&mut self, wanted: &[(u32, Vec<usize>)]) {
        let mut by_binary: HashMap<(u64, u64), BTreeSet<u32>> = HashMap::new();
        for (pid, cols) in wanted {
            if let Some(p) = self.processes().find(|p| p.pid == *pid) {
                by_binary
                    .entry(p.binary_id)
                    .or_default()
                    .extend(cols.iter().map(|&c| c as u32));
            }
        }
        for (binary_id, cols) in by_binary {
            let t = Instant::now();
            let moved: Vec<u32> = cols.iter().copied().collect();
            match self.split_binary(binary_id, cols) {
                Ok(n) => {
                    tracing::info!(
                        "moved {} hot probe(s) ({}), which no semaphore gates, onto links of each \
                         of {n} watched process(es) to duty-cycle them, in {:?}",
                        moved.len(),
                        self.first_names(moved.iter().map(|&c| c as usize)),
                        t.elapsed()
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "{}; {} probe(s) stay counted exactly",
                        vmwatch_core::error::chain(&e),
                        moved.len()
                    );
                    for w in self.slots.iter_mut().flatten() {
                        if w.process.binary_id == binary_id {
                            if let Some(p) = w.probes.as_mut() {
                                p.keep_exact(&moved);
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Collector::split_off`] for one binary; returns how many processes
    /// got links.
    fn split_binary(&mut self, binary_id: (u64, u64), cols: BTreeSet<u32>) -> Result<usize> {
        let att = self
            .attachments
            .get(&binary_id)
            .ok_or_else(|| Error::Invalid("splitting probes of a detached binary".into()))?;
        let moved: Vec<u32> = cols.difference(att.split()).copied().collect();
        let mut split = att.split().clone();
        split.extend(cols);
        let procs: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|w| w.process.binary_id == binary_id)
            })
            .collect();
        let Some(&first) = procs.first() else {
            return Ok(0);
        };
        // Everything new is attached (off) before anything is switched.
        let mut new = Vec::new();
        let attached = (|| -> Result<Option<switches::SwitchedLink>> {
            let first = &self.slots[first].as_ref().expect("listed").process;
            let main = att.main_without(&self.kernel, &mut self.switches, first, &split)?;
            for &i in &procs {
                let w = self.slots[i].as_ref().expect("listed");
                // What it counts now: the moved probes and its exact ones.
                let mut on: BTreeSet<u32> = moved.iter().copied().collect();
                if let Some(l) = &w.links.exact {
                    on.extend(l.columns.iter().copied());
                }
                let on: Vec<u32> = on.into_iter().collect();
                new.push(ProcessLinks::attach(
                    &self.kernel,
                    &mut self.switches,
                    att,
                    &w.process,
                    &on,
                )?);
            }
            Ok(main)
        })();
        let mut main = match attached {
            Ok(main) => main,
            Err(e) => {
                for l in new {
                    self.switches.retire(&self.kernel, l);
                }
                return Err(e);
            }
        };
        // On before off: a hit in between may count twice, none is lost.
        if let Some(m) = main.as_mut() {
            switches::flip(&self.kernel, m, true)?;
        }
        for l in &mut new {
            switches::flip(&self.kernel, l, true)?;
        }
        let att = self.attachments.get_mut(&binary_id).expect("checked above");
        if let Some(old) = att.swap_main(main, split) {
            self.switches.retire(&self.kernel, old);
        }
        for (&i, link) in procs.iter().zip(new) {
            let w = self.slots[i].as_mut().expect("listed");
            if let Some(old) = w.links.exact.replace(link) {
                self.switches.retire(&self.kernel, old);
            }
            for (_, old) in std::mem::take(&mut w.links.cycled) {
                self.switches.retire(&self.kernel, old);
            }
            if let Some(p) = w.probes.as_mut() {
                p.linked(&moved);
            }
        }
        // Each process's exact link down to the probes it counts exactly.
        let rows = Vec::new();
        let mut vms = governed(&mut self.slots, &self.attachments, &rows, &[], |b| {
            b == binary_id
        });
        let mut linker = Linker {
            kernel: &self.kernel,
            switches: &mut self.switches,
        };
        for vm in &mut vms {
            govern::sync_exact_links(vm, &mut linker);
        }
        Ok(procs.len())
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

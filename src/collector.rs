//! In-kernel per-VM counting: loads the BPF counters, attaches them to the
//! QEMU binaries of watched processes, and drains one count vector per
//! watched process per window.
//!
//! Counters are cumulative per (slot, feature) and never reset while a slot
//! is in use; a drain subtracts the previous snapshot. Every hit therefore
//! lands in exactly one window, even one that races with the drain — it is
//! then counted in whichever window first reads it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, OpenObject, UprobeMultiOpts};

use crate::bpf::{types, OpenVmwatchSkel, VmwatchSkel, VmwatchSkelBuilder};
use crate::error::{Error, Result};
use crate::features;
use crate::kvm::{ExitTracepoint, KvmEvents, KVM, KVM_EXIT, KVM_EXIT_OTHER};
use crate::procs::Process;
use crate::semaphores;
use crate::stapsdt::UsdtBinary;

/// Counters per `counts` map value: the length of `struct chunk` in
/// bpf/vmwatch.bpf.c, its only definition.
const CHUNK: usize = size_of::<types::chunk>() / size_of::<u64>();

/// Default number of processes one collector can watch at once.
pub const DEFAULT_MAX_VMS: u32 = 64;

/// Most processes one collector can watch: the per-CPU counter map is
/// allocated up front (16 KiB per CPU, slot and 2,048 features).
pub const MAX_VMS: u32 = 1024;

/// How a collector is set up.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Feature names (columns), in order. QEMU probe features are
    /// `qemu:NAME`; each attached binary attaches the sites of these only.
    pub features: Vec<String>,
    /// Most processes watched at once (sizes the kernel maps).
    pub max_vms: u32,
    /// The kernel's KVM tracepoints, when `kvm:` features are counted.
    pub kvm: Option<KvmEvents>,
}

/// Where the counter of (slot, feature) lives in the `counts` map: row
/// `slot` takes `chunks` consecutive values of [`CHUNK`] counters. The BPF
/// programs get the same numbers through rodata, set in [`Collector::new`]
/// only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    features: u32,
    chunks: u32,
    slots: u32,
}

impl Layout {
    fn new(features: usize, slots: u32) -> Result<Self> {
        let features = u32::try_from(features)
            .ok()
            .filter(|&f| f > 0)
            .ok_or_else(|| Error::Invalid(format!("cannot count {features} features")))?;
        if !(1..=MAX_VMS).contains(&slots) {
            return Err(Error::Invalid(format!(
                "cannot watch {slots} VMs at once (1 to {MAX_VMS})"
            )));
        }
        let chunks = features.div_ceil(CHUNK as u32);
        Ok(Self {
            features,
            chunks,
            slots,
        })
    }

    /// Values in the `counts` map.
    fn entries(&self) -> u32 {
        self.chunks * self.slots
    }

    /// Key of the first value of `slot`'s row.
    fn first_key(&self, slot: usize) -> u32 {
        slot as u32 * self.chunks
    }
}

/// One binary's uprobe_multi link: every selected probe site of the file,
/// attached once for all processes that run it. Dropping it detaches all
/// sites and lowers their semaphores.
pub struct BinaryAttachment {
    _link: Link,
    /// File offsets of the attached probes' semaphores (deduplicated).
    semaphores: Vec<u64>,
    pub path: String,
    pub sites: usize,
    pub probes: usize,
    pub attach_time: std::time::Duration,
}

struct Slot {
    process: Process,
    /// Semaphores raised in this process; lowered when the slot is freed.
    _raised: semaphores::Raised,
    /// Cumulative counts at the previous drain.
    prev: Vec<u64>,
}

/// One drained window of one watched process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub process: Process,
    pub counts: Vec<u64>,
}

/// Result of a drain: samples of live processes, and processes that exited
/// since the previous drain (their partial window is not reported).
#[derive(Debug, Default)]
pub struct Drain {
    pub samples: Vec<Sample>,
    pub exited: Vec<Process>,
}

/// Storage for the collector's BPF object; it must outlive the
/// [`Collector`] built on it.
pub struct BpfObjects {
    object: MaybeUninit<OpenObject>,
}

impl Default for BpfObjects {
    fn default() -> Self {
        Self {
            object: MaybeUninit::uninit(),
        }
    }
}

/// What the syscall and KVM programs count, as feature indices.
#[derive(Debug, Default)]
struct KernelSources<'a> {
    /// (syscall number, feature).
    syscalls: Vec<(u32, u32)>,
    /// (tracepoint name, feature).
    kvm_events: Vec<(&'a str, u32)>,
    /// `kvm_exit`, when an exit reason is a feature.
    kvm_exit: Option<&'a ExitTracepoint>,
    /// (exit reason, feature) of the reasons that are columns.
    exit_reasons: Vec<(u32, u32)>,
}

impl<'a> KernelSources<'a> {
    fn of(features: &[String], kvm: Option<&'a KvmEvents>) -> Self {
        let index: HashMap<&str, u32> = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i as u32))
            .collect();
        let syscalls = features::syscall_features()
            .into_iter()
            .filter_map(|(name, nr)| Some((nr, *index.get(name.as_str())?)))
            .collect();
        let (kvm_events, kvm_exit) = match kvm {
            Some(events) => (
                events
                    .events
                    .iter()
                    .filter_map(|e| Some((e.as_str(), *index.get(format!("{KVM}{e}").as_str())?)))
                    .collect(),
                events
                    .exit
                    .as_ref()
                    .filter(|_| features.iter().any(|f| f.starts_with(KVM_EXIT))),
            ),
            None => (Vec::new(), None),
        };
        let exit_reasons = kvm_exit
            .iter()
            .flat_map(|exit| &exit.reasons)
            .filter_map(|(reason, name)| {
                Some((*reason, *index.get(format!("{KVM_EXIT}{name}").as_str())?))
            })
            .collect();
        Self {
            syscalls,
            kvm_events,
            kvm_exit,
            exit_reasons,
        }
    }
}

/// Loaded BPF counters plus the attachments and watched processes.
pub struct Collector<'obj> {
    skel: VmwatchSkel<'obj>,
    /// Links of the syscall and KVM programs; detached on drop.
    _kernel_links: Vec<Link>,
    counts_syscalls: bool,
    layout: Layout,
    features: Vec<String>,
    qemu_index: HashMap<String, u32>,
    attachments: HashMap<(u64, u64), BinaryAttachment>,
    slots: Vec<Option<Slot>>,
    ncpus: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
}

impl<'obj> Collector<'obj> {
    /// Loads the BPF programs of the sources `config` counts, sizes the maps
    /// and attaches the syscall and KVM programs.
    pub fn new(objects: &'obj mut BpfObjects, config: CollectorConfig) -> Result<Self> {
        restore_left_raised();
        let layout = Layout::new(config.features.len(), config.max_vms)?;
        let sources = KernelSources::of(&config.features, config.kvm.as_ref());
        let mut open = VmwatchSkelBuilder::default()
            .open(&mut objects.object)
            .map_err(|e| Error::bpf("opening the BPF object", e))?;
        configure(&mut open, &layout, &config.features, &sources)?;
        let skel = open
            .load()
            .map_err(|e| Error::bpf("loading the BPF programs", e))?;
        let kernel_links = attach_kernel_sources(&skel, &sources)?;

        let qemu_index = config
            .features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((f.strip_prefix(features::QEMU)?.to_string(), i as u32)))
            .collect();
        let ncpus =
            libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("counting possible CPUs", e))?;
        Ok(Self {
            skel,
            _kernel_links: kernel_links,
            counts_syscalls: !sources.syscalls.is_empty(),
            layout,
            features: config.features,
            qemu_index,
            attachments: HashMap::new(),
            slots: (0..layout.slots).map(|_| None).collect(),
            ncpus,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// Feature names, in column order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Attachments, one per distinct binary.
    pub fn attachments(&self) -> impl Iterator<Item = &BinaryAttachment> {
        self.attachments.values()
    }

    /// Watched processes.
    pub fn watched(&self) -> impl Iterator<Item = &Process> {
        self.slots.iter().flatten().map(|s| &s.process)
    }

    /// Starts counting `process`. Attaches its binary first if no other
    /// watched process runs the same file.
    /// `binary` is `None` when no QEMU probe is counted (e.g. syscalls only).
    pub fn watch(&mut self, process: &Process, binary: Option<&UsdtBinary>) -> Result<()> {
        if self.watched().any(|p| p.pid == process.pid) {
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
            None => semaphores::Raised::default(),
        };
        // Counts left by a previous occupant are the baseline, not data.
        let prev = self.read_rows(slot, 1)?;
        let tgid = process.pid;
        self.skel
            .maps
            .watched
            .update(
                &tgid.to_ne_bytes(),
                &(slot as u32).to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .map_err(|e| Error::bpf(format!("watching PID {tgid}"), e))?;
        self.slots[slot] = Some(Slot {
            process: process.clone(),
            _raised: raised,
            prev,
        });
        Ok(())
    }

    fn attach_and_raise(
        &mut self,
        process: &Process,
        binary: &UsdtBinary,
    ) -> Result<semaphores::Raised> {
        if !self.attachments.contains_key(&process.binary_id) {
            let att = self.attach_binary(process, binary)?;
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
        let slot = self.slots[i].take().expect("slot found above");
        if let Err(e) = self.skel.maps.watched.delete(&pid.to_ne_bytes()) {
            tracing::warn!("removing PID {pid} from the watched map: {e}");
        }
        let binary_id = slot.process.binary_id;
        drop(slot);
        self.detach_unused(binary_id);
    }

    /// Detaches a binary no watched process runs any more.
    fn detach_unused(&mut self, binary_id: (u64, u64)) {
        if self.watched().any(|p| p.binary_id == binary_id) {
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
        let used = self
            .slots
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        let mut out = Drain::default();
        if used == 0 {
            return Ok(out);
        }
        let rows = self.read_rows(0, used)?;
        let width = self.features.len();
        let mut gone = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate().take(used) {
            let Some(slot) = slot else { continue };
            let cur = &rows[i * width..(i + 1) * width];
            if !slot.process.is_alive() {
                gone.push(slot.process.clone());
                continue;
            }
            let counts = cur
                .iter()
                .zip(&slot.prev)
                .map(|(c, p)| c.wrapping_sub(*p))
                .collect();
            slot.prev.copy_from_slice(cur);
            out.samples.push(Sample {
                process: slot.process.clone(),
                counts,
            });
        }
        for p in &gone {
            self.unwatch(p.pid);
        }
        out.exited = gone;
        Ok(out)
    }

    /// Feature columns of the syscall source, if it is enabled.
    pub fn counts_syscalls(&self) -> bool {
        self.counts_syscalls
    }

    fn attach_binary(&self, process: &Process, binary: &UsdtBinary) -> Result<BinaryAttachment> {
        let mut opts = UprobeMultiOpts::default();
        let mut seen = std::collections::HashSet::new();
        let mut probes = std::collections::HashSet::new();
        let mut semaphores = std::collections::BTreeSet::new();
        let mut ref_ctrs = Vec::new();
        for site in binary.provider_sites("qemu") {
            let Some(&feature) = self.qemu_index.get(&site.name) else {
                continue;
            };
            // Two notes at one address would count each hit twice.
            if !seen.insert(site.file_offset) {
                continue;
            }
            probes.insert(feature);
            opts.offsets.push(site.file_offset as usize);
            opts.cookies.push(u64::from(feature));
            ref_ctrs.push(site.semaphore_offset.unwrap_or(0) as usize);
            // Raised per watched process (see `semaphores`), not by the
            // kernel's ref_ctr_offset.
            semaphores.extend(site.semaphore_offset);
        }
        if opts.offsets.is_empty() {
            return Err(Error::NoProviderProbes {
                path: process.binary.clone(),
                provider: "qemu (of the selected features)".into(),
            });
        }
        let sites = opts.offsets.len();
        // /proc/PID/exe resolves to the running file even if it was replaced.
        let path = process.exe_path();
        let prog = &self.skel.progs.count_usdt;
        let what = || {
            format!(
                "attaching {sites} probe sites to {}",
                process.binary.display()
            )
        };
        let t = Instant::now();
        let link = match prog.attach_uprobe_multi_with_opts(-1, &path, "", opts.clone()) {
            Ok(link) => link,
            // The kernel rejects a uprobe whose ref_ctr_offset differs from
            // an existing one at the same site: another tracer (or a stale
            // kernel uprobe) uses kernel-managed semaphores. Match it.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::InvalidInput => {
                tracing::debug!("attach without ref_ctr_offset refused ({e}); retrying with it");
                opts.ref_ctr_offsets = ref_ctrs;
                prog.attach_uprobe_multi_with_opts(-1, &path, "", opts)
                    .map_err(|e| Error::bpf(what(), e))?
            }
            Err(e) => return Err(Error::bpf(what(), e)),
        };
        let attach_time = t.elapsed();
        tracing::info!(
            "attached {sites} sites of {} probes in {} in {attach_time:?}",
            probes.len(),
            process.binary.display()
        );
        Ok(BinaryAttachment {
            _link: link,
            semaphores: semaphores.into_iter().collect(),
            path: process.binary.display().to_string(),
            sites,
            probes: probes.len(),
            attach_time,
        })
    }

    /// Cumulative counts (summed over CPUs) of `n` slots from `first`:
    /// one batched map read of their chunks.
    fn read_rows(&mut self, first: usize, n: usize) -> Result<Vec<u64>> {
        let width = self.features.len();
        let chunks = self.layout.chunks as usize;
        let count = n * chunks;
        let start = self.layout.first_key(first);
        let per_key = CHUNK * self.ncpus;
        self.keys.resize(count, 0);
        self.values.resize(count * per_key, 0);
        let fd = self.skel.maps.counts.as_fd().as_raw_fd();
        // The batch starts after `in_batch`; no token means from key 0.
        let mut in_batch = start.wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut done = 0usize;
        while done < count {
            let mut got = (count - done) as u32;
            let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
                ..Default::default()
            };
            let in_ptr = if start == 0 && done == 0 {
                std::ptr::null_mut()
            } else {
                (&mut in_batch as *mut u32).cast::<c_void>()
            };
            // SAFETY: past `done`, the buffers hold `count - done` keys and
            // as many values of `ncpus` chunks; the kernel writes at most `got`.
            let ret = unsafe {
                libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                    fd,
                    in_ptr,
                    (&mut out_batch as *mut u32).cast::<c_void>(),
                    self.keys[done..].as_mut_ptr().cast::<c_void>(),
                    self.values[done * per_key..].as_mut_ptr().cast::<c_void>(),
                    &mut got,
                    &opts,
                )
            };
            if ret < 0 && ret != -libc::ENOENT {
                return Err(Error::io(
                    "reading the counter map",
                    std::io::Error::from_raw_os_error(-ret),
                ));
            }
            if got == 0 {
                return Err(Error::Invalid(format!(
                    "counter map ended after {done} of {count} entries"
                )));
            }
            done += got as usize;
            in_batch = out_batch;
        }
        // values: [slot][chunk][cpu][CHUNK] -> rows: [slot][feature]
        let mut rows = vec![0u64; n * width];
        for (slot, row) in rows.chunks_exact_mut(width).enumerate() {
            for (c, part) in row.chunks_mut(CHUNK).enumerate() {
                let base = (slot * chunks + c) * per_key;
                for cpu in 0..self.ncpus {
                    let vals = &self.values[base + cpu * CHUNK..][..part.len()];
                    for (sum, v) in part.iter_mut().zip(vals) {
                        *sum += v;
                    }
                }
            }
        }
        Ok(rows)
    }
}

/// Lowers the semaphores that a vmwatch killed earlier left raised.
fn restore_left_raised() {
    match semaphores::repair() {
        Ok(r) => {
            for (owner, pid, n) in &r.restored {
                tracing::warn!(
                    "lowered {n} USDT semaphores in PID {pid} that vmwatch PID {owner} raised and \
                     never lowered (it was killed)"
                );
            }
        }
        Err(e) => tracing::warn!("restoring semaphores left raised by a killed vmwatch: {e}"),
    }
}

/// Sets everything the BPF object needs before load, for every source at
/// once: the layout in rodata and map sizes, which programs load, and where
/// `kvm_exit` keeps its reason.
fn configure(
    open: &mut OpenVmwatchSkel<'_>,
    layout: &Layout,
    features: &[String],
    sources: &KernelSources<'_>,
) -> Result<()> {
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .expect("rodata is mmapped");
    rodata.nr_features = layout.features;
    rodata.nr_chunks = layout.chunks;
    if let Some(exit) = sources.kvm_exit {
        rodata.exit_reason_off = exit.reason_offset;
        rodata.exit_vmx = u32::from(exit.vmx);
        // Out of range (not counted) unless `kvm:exit:other` is a column.
        rodata.exit_other = features
            .iter()
            .position(|f| f == KVM_EXIT_OTHER)
            .map_or(u32::MAX, |i| i as u32);
    }
    open.maps
        .watched
        .set_max_entries(layout.slots)
        .map_err(|e| Error::bpf("sizing the watched-process map", e))?;
    open.maps
        .counts
        .set_max_entries(layout.entries())
        .map_err(|e| Error::bpf("sizing the counter map", e))?;
    let progs = &mut open.progs;
    progs
        .count_syscall
        .set_autoload(!sources.syscalls.is_empty());
    progs.count_kvm.set_autoload(!sources.kvm_events.is_empty());
    progs
        .count_kvm_exit
        .set_autoload(sources.kvm_exit.is_some());
    Ok(())
}

/// Fills the syscall and exit-reason maps and attaches the syscall and KVM
/// programs: the `sys_enter` raw tracepoint, a raw-tracepoint link per KVM
/// event (feature = cookie) and, for exit reasons, the classic `kvm_exit`
/// tracepoint through a perf event.
fn attach_kernel_sources(skel: &VmwatchSkel<'_>, sources: &KernelSources<'_>) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    if !sources.syscalls.is_empty() {
        for (nr, feature) in &sources.syscalls {
            skel.maps
                .sys_feature
                .update(
                    &nr.to_ne_bytes(),
                    &(feature + 1).to_ne_bytes(),
                    libbpf_rs::MapFlags::ANY,
                )
                .map_err(|e| Error::bpf(format!("mapping syscall {nr}"), e))?;
        }
        links.push(
            skel.progs
                .count_syscall
                .attach_raw_tracepoint("sys_enter")
                .map_err(|e| Error::bpf("attaching the raw tracepoint sys_enter", e))?,
        );
        tracing::info!(
            "counting {} syscalls per watched process",
            sources.syscalls.len()
        );
    }
    for (name, feature) in &sources.kvm_events {
        let opts = libbpf_rs::RawTracepointOpts {
            cookie: u64::from(*feature),
            ..Default::default()
        };
        links.push(
            skel.progs
                .count_kvm
                .attach_raw_tracepoint_with_opts(name, opts)
                .map_err(|e| Error::bpf(format!("attaching the raw tracepoint {name}"), e))?,
        );
    }
    if let Some(exit) = sources.kvm_exit {
        for (reason, feature) in &sources.exit_reasons {
            skel.maps
                .exit_feature
                .update(
                    &reason.to_ne_bytes(),
                    &(feature + 1).to_ne_bytes(),
                    libbpf_rs::MapFlags::ANY,
                )
                .map_err(|e| Error::bpf("mapping exit reasons", e))?;
        }
        // A tracepoint runs its BPF programs for hits on every CPU once one
        // perf event carries them (the kernel refuses the same program on a
        // second event of the same tracepoint): one event suffices.
        let cpu = online_cpus()?.first().copied().unwrap_or(0);
        let fd = tracepoint_perf_event(exit.id, cpu)?;
        let link = skel
            .progs
            .count_kvm_exit
            .attach_perf_event(fd.as_raw_fd())
            .map_err(|e| Error::bpf("attaching the kvm_exit tracepoint", e))?;
        // The link owns and closes the perf event from now on.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
        links.push(link);
    }
    if !sources.kvm_events.is_empty() || sources.kvm_exit.is_some() {
        tracing::info!(
            "counting {} KVM tracepoints{}",
            sources.kvm_events.len(),
            if sources.kvm_exit.is_some() {
                " and exit reasons"
            } else {
                ""
            }
        );
    }
    Ok(links)
}

/// A perf event counting tracepoint `id` on `cpu` for every process.
fn tracepoint_perf_event(id: u64, cpu: u32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;

    let mut attr: libbpf_rs::libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_rs::libbpf_sys::PERF_TYPE_TRACEPOINT;
    attr.size = std::mem::size_of_val(&attr) as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    // SAFETY: attr is a valid, zero-initialised perf_event_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const _,
            -1i32,
            cpu as i32,
            -1i32,
            libbpf_rs::libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(Error::io(
            format!("opening the kvm_exit perf event on CPU {cpu}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Online CPUs from /sys/devices/system/cpu/online (e.g. `0-3,6`).
fn online_cpus() -> Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| Error::io("reading the online CPUs", e))?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (
            a.parse()
                .map_err(|_| Error::Invalid(format!("bad CPU list `{text}`")))?,
            b.parse()
                .map_err(|_| Error::Invalid(format!("bad CPU list `{text}`")))?,
        );
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

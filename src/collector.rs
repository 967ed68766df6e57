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
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, OpenObject, UprobeMultiOpts};

use crate::bpf::kvm_count::{KvmCountSkel, KvmCountSkelBuilder};
use crate::bpf::syscall_count::{SyscallCountSkel, SyscallCountSkelBuilder};
use crate::bpf::usdt_count::{UsdtCountSkel, UsdtCountSkelBuilder};
use crate::error::{Error, Result};
use crate::features;
use crate::procs::Process;
use crate::semaphores;
use crate::stapsdt::UsdtBinary;

/// Features per counter-map value (`CHUNK` in bpf/vmwatch.h).
const CHUNK: usize = 2048;

/// Default number of processes one collector can watch at once.
pub const DEFAULT_MAX_VMS: u32 = 64;

/// How a collector is set up.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Feature names (columns), in order. QEMU probe features are
    /// `qemu:NAME`; each attached binary attaches the sites of these only.
    pub features: Vec<String>,
    /// Most processes watched at once (sizes the kernel maps).
    pub max_vms: u32,
    /// The kernel's KVM tracepoints, when `kvm:` features are counted.
    pub kvm: Option<crate::kvm::KvmEvents>,
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

/// Storage for the BPF objects of a collector (one per BPF source file);
/// it must outlive the [`Collector`] built on it.
pub struct BpfObjects {
    usdt: MaybeUninit<OpenObject>,
    syscalls: MaybeUninit<OpenObject>,
    kvm: MaybeUninit<OpenObject>,
}

impl Default for BpfObjects {
    fn default() -> Self {
        Self {
            usdt: MaybeUninit::uninit(),
            syscalls: MaybeUninit::uninit(),
            kvm: MaybeUninit::uninit(),
        }
    }
}

/// The syscall counter: its program stays attached while this lives.
struct SyscallSource<'obj> {
    _link: Link,
    _skel: SyscallCountSkel<'obj>,
}

/// The KVM counter: its links (one owns the `kvm_exit` perf event) stay
/// attached while this lives.
struct KvmSource<'obj> {
    _links: Vec<Link>,
    _skel: KvmCountSkel<'obj>,
}

/// Loaded BPF counters plus the attachments and watched processes.
pub struct Collector<'obj> {
    skel: UsdtCountSkel<'obj>,
    _syscalls: Option<SyscallSource<'obj>>,
    _kvm: Option<KvmSource<'obj>>,
    features: Vec<String>,
    qemu_index: HashMap<String, u32>,
    attachments: HashMap<(u64, u64), BinaryAttachment>,
    slots: Vec<Option<Slot>>,
    ncpus: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
}

impl<'obj> Collector<'obj> {
    /// Loads the BPF programs and sizes the maps for `config`.
    pub fn new(objects: &'obj mut BpfObjects, config: CollectorConfig) -> Result<Self> {
        let width = u32::try_from(config.features.len())
            .map_err(|_| Error::Invalid("too many features".into()))?;
        if width == 0 {
            return Err(Error::Invalid("no features to count".into()));
        }
        let max_vms = config.max_vms.max(1);
        let chunks = width.div_ceil(CHUNK as u32);
        let entries = chunks.checked_mul(max_vms).ok_or_else(|| {
            Error::Invalid(format!(
                "{width} features x {max_vms} VMs overflows the counter map"
            ))
        })?;

        let builder = UsdtCountSkelBuilder::default();
        let mut open = builder
            .open(&mut objects.usdt)
            .map_err(|e| Error::bpf("opening the BPF object", e))?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .expect("rodata is mmapped")
            .nr_features = width;
        open.maps
            .watched
            .set_max_entries(max_vms)
            .map_err(|e| Error::bpf("sizing the watched-process map", e))?;
        open.maps
            .counts
            .set_max_entries(entries)
            .map_err(|e| Error::bpf("sizing the counter map", e))?;
        let skel = open
            .load()
            .map_err(|e| Error::bpf("loading the BPF programs", e))?;

        let qemu_index = config
            .features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((f.strip_prefix(features::QEMU)?.to_string(), i as u32)))
            .collect();
        let ncpus =
            libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("counting possible CPUs", e))?;
        let syscalls = attach_syscalls(&mut objects.syscalls, &skel, &config.features, chunks)?;
        let kvm = match &config.kvm {
            Some(events) => attach_kvm(&mut objects.kvm, &skel, &config.features, chunks, events)?,
            None => None,
        };
        Ok(Self {
            skel,
            _syscalls: syscalls,
            _kvm: kvm,
            features: config.features,
            qemu_index,
            attachments: HashMap::new(),
            slots: (0..max_vms).map(|_| None).collect(),
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
        self._syscalls.is_some()
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
        let chunks = width.div_ceil(CHUNK);
        let count = n * chunks;
        let start = (first * chunks) as u32;
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

/// Points a second BPF object's `watched` and `counts` maps at the usdt
/// object's, so every source counts into the same rows.
fn share_maps(
    watched: &mut libbpf_rs::OpenMapMut<'_>,
    counts: &mut libbpf_rs::OpenMapMut<'_>,
    usdt: &UsdtCountSkel<'_>,
) -> Result<()> {
    watched
        .reuse_fd(usdt.maps.watched.as_fd())
        .map_err(|e| Error::bpf("sharing the watched-process map", e))?;
    counts
        .reuse_fd(usdt.maps.counts.as_fd())
        .map_err(|e| Error::bpf("sharing the counter map", e))
}

/// Loads and attaches the syscall counter when any `sys:` feature is asked
/// for, sharing the usdt object's `watched` and `counts` maps.
fn attach_syscalls<'obj>(
    object: &'obj mut MaybeUninit<OpenObject>,
    usdt: &UsdtCountSkel<'_>,
    features: &[String],
    chunks: u32,
) -> Result<Option<SyscallSource<'obj>>> {
    let numbers: HashMap<String, u32> = features::syscall_features().into_iter().collect();
    let wanted: Vec<(u32, u32)> = features
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((*numbers.get(f)?, i as u32)))
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let mut open = SyscallCountSkelBuilder::default()
        .open(object)
        .map_err(|e| Error::bpf("opening the syscall counter", e))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .expect("rodata is mmapped");
    rodata.nr_features = features.len() as u32;
    rodata.nr_chunks = chunks;
    share_maps(&mut open.maps.watched, &mut open.maps.counts, usdt)?;
    let skel = open
        .load()
        .map_err(|e| Error::bpf("loading the syscall counter", e))?;
    for (nr, feature) in &wanted {
        skel.maps
            .sys_feature
            .update(
                &nr.to_ne_bytes(),
                &(feature + 1).to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .map_err(|e| Error::bpf(format!("mapping syscall {nr}"), e))?;
    }
    let link = skel
        .progs
        .count_syscall
        .attach_raw_tracepoint("sys_enter")
        .map_err(|e| Error::bpf("attaching the raw tracepoint sys_enter", e))?;
    tracing::info!("counting {} syscalls per watched process", wanted.len());
    Ok(Some(SyscallSource {
        _link: link,
        _skel: skel,
    }))
}

/// Loads and attaches the KVM counter when any `kvm:` feature is asked for:
/// a raw-tracepoint link per event (feature = cookie) and, for exit
/// reasons, the classic `kvm_exit` tracepoint through a perf event.
fn attach_kvm<'obj>(
    object: &'obj mut MaybeUninit<OpenObject>,
    usdt: &UsdtCountSkel<'_>,
    features: &[String],
    chunks: u32,
    events: &crate::kvm::KvmEvents,
) -> Result<Option<KvmSource<'obj>>> {
    use crate::kvm::{KVM, KVM_EXIT, KVM_EXIT_OTHER};

    let index = |name: &str| features.iter().position(|f| f == name).map(|i| i as u32);
    let tracepoints: Vec<(&str, u32)> = events
        .events
        .iter()
        .filter_map(|e| Some((e.as_str(), index(&format!("{KVM}{e}"))?)))
        .collect();
    let exit = events
        .exit
        .as_ref()
        .filter(|_| features.iter().any(|f| f.starts_with(KVM_EXIT)));
    if tracepoints.is_empty() && exit.is_none() {
        return Ok(None);
    }
    let mut open = KvmCountSkelBuilder::default()
        .open(object)
        .map_err(|e| Error::bpf("opening the KVM counter", e))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .expect("rodata is mmapped");
    rodata.nr_features = features.len() as u32;
    rodata.nr_chunks = chunks;
    if let Some(exit) = exit {
        rodata.exit_reason_off = exit.reason_offset;
        rodata.exit_vmx = u32::from(exit.vmx);
        // Out of range (not counted) unless `kvm:exit:other` is a column.
        rodata.exit_other = index(KVM_EXIT_OTHER).unwrap_or(u32::MAX);
    }
    share_maps(&mut open.maps.watched, &mut open.maps.counts, usdt)?;
    let skel = open
        .load()
        .map_err(|e| Error::bpf("loading the KVM counter", e))?;

    let mut links = Vec::new();
    for (name, feature) in &tracepoints {
        let opts = libbpf_rs::RawTracepointOpts {
            cookie: u64::from(*feature),
            ..Default::default()
        };
        let link = skel
            .progs
            .count_kvm
            .attach_raw_tracepoint_with_opts(name, opts)
            .map_err(|e| Error::bpf(format!("attaching the raw tracepoint {name}"), e))?;
        links.push(link);
    }
    if let Some(exit) = exit {
        for (reason, name) in &exit.reasons {
            if let Some(f) = index(&format!("{KVM_EXIT}{name}")) {
                skel.maps
                    .exit_feature
                    .update(
                        &reason.to_ne_bytes(),
                        &(f + 1).to_ne_bytes(),
                        libbpf_rs::MapFlags::ANY,
                    )
                    .map_err(|e| Error::bpf("mapping exit reasons", e))?;
            }
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
    tracing::info!(
        "counting {} KVM tracepoints{}",
        tracepoints.len(),
        if exit.is_some() {
            " and exit reasons"
        } else {
            ""
        }
    );
    Ok(Some(KvmSource {
        _links: links,
        _skel: skel,
    }))
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

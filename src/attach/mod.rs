//! Attach: the BPF object, loaded with the layout and programs of every
//! source set up in one place ([`load`]); the syscall and KVM programs'
//! links; per QEMU binary a `uprobe_multi` link ([`uprobes`]), whose sites
//! also carry the ids of the probes `seq:` features track ([`sequences`]);
//! and per watched process the USDT semaphores vmwatch raises
//! ([`semaphores`]).

pub mod arguments;
pub mod semaphores;
pub mod sequences;
pub mod switches;
pub mod uprobes;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsRawFd;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore};
use vmwatch_core::arguments::Queue;
use vmwatch_core::features::{Columns, Feature};

use crate::bpf::{BpfObjects, Layout, OpenVmwatchSkel, VmwatchSkel, VmwatchSkelBuilder};
use crate::discover::kvm::{ExitTracepoint, KvmEvents};
use crate::error::{Error, Result};
use arguments::{Arguments, Role, SiteTable};
use sequences::{ProbeIds, Sequences};

/// The loaded object with its syscall and KVM links (detached on drop).
pub struct Kernel<'obj> {
    pub skel: VmwatchSkel<'obj>,
    _links: Vec<Link>,
    /// The counters' layout: the columns, then the hidden counters of
    /// tracked probes that are not columns ([`Sequences`]).
    pub layout: Layout,
    /// Probe name -> counter and sequence id, for the `uprobe_multi`
    /// cookies: every counted or tracked probe.
    pub probes: HashMap<String, ProbeIds>,
    /// What the sites of probes whose arguments `arg:` features read do
    /// with them, by probe name.
    pub roles: HashMap<String, Role>,
    /// Entries of the `sites` table handed out so far.
    pub sites: RefCell<SiteTable>,
    pub counts_syscalls: bool,
}

/// What the syscall and KVM programs count, by column.
#[derive(Debug, Default)]
struct KernelSources<'a> {
    /// (syscall number, column).
    syscalls: Vec<(u32, u32)>,
    /// (tracepoint name, column).
    kvm_events: Vec<(&'a str, u32)>,
    /// `kvm_exit`, when an exit reason is a column.
    kvm_exit: Option<&'a ExitTracepoint>,
    /// (exit reason, column) of the reasons that are columns.
    exit_reasons: Vec<(u32, u32)>,
    /// Column of `kvm:exit:other`.
    exit_other: Option<u32>,
}

impl<'a> KernelSources<'a> {
    fn of(columns: &Columns, kvm: Option<&'a KvmEvents>) -> Self {
        let mut out = Self::default();
        for (i, f) in columns.iter() {
            let i = i as u32;
            match f {
                Feature::Syscall(nr) => out.syscalls.push((*nr, i)),
                Feature::KvmEvent(e) => {
                    if let Some(name) = kvm.and_then(|k| k.events.iter().find(|k| *k == e)) {
                        out.kvm_events.push((name.as_str(), i));
                    }
                }
                Feature::KvmExit(reason) => {
                    let Some(exit) = kvm.and_then(|k| k.exit.as_ref()) else {
                        continue;
                    };
                    out.kvm_exit = Some(exit);
                    if *f == Feature::kvm_exit_other() {
                        out.exit_other = Some(i);
                    }
                    out.exit_reasons.extend(
                        exit.reasons
                            .iter()
                            .filter(|(_, name)| *name == reason)
                            .map(|(nr, _)| (*nr, i)),
                    );
                }
                // Probes and their transitions: through the uprobe links'
                // cookies (`Sequences`). Perf events are not counted in
                // BPF: read from perf counters at each drain.
                Feature::Probe(_) | Feature::Seq { .. } | Feature::Arg(_) | Feature::Perf(_) => {}
            }
        }
        out
    }
}

/// Loads the BPF object for `columns` and up to `slots` watched processes
/// (the layout, every source's rodata, map sizes and which programs load,
/// all here) and attaches the syscall and KVM programs. Semaphores a killed
/// vmwatch left raised are lowered first.
pub fn load<'obj>(
    objects: &'obj mut BpfObjects,
    columns: &Columns,
    tracked: &[String],
    slots: u32,
    kvm: Option<&KvmEvents>,
) -> Result<Kernel<'obj>> {
    let mut seq = Sequences::of(columns, tracked)?;
    let args = Arguments::of(columns);
    // Probes whose arguments are read are attached, columns or not.
    let mut reading: Vec<&String> = args.roles.keys().collect();
    reading.sort();
    for probe in reading {
        seq.ensure(probe);
    }
    let layout = Layout::new(seq.width, slots)?;
    restore_left_raised();
    let sources = KernelSources::of(columns, kvm);
    let mut open = VmwatchSkelBuilder::default()
        .open(&mut objects.object)
        .map_err(|e| Error::bpf("opening the BPF object", e))?;
    configure(&mut open, &layout, &sources, &seq)?;
    let skel = open
        .load()
        .map_err(|e| Error::bpf("loading the BPF programs", e))?;
    fill_seq_pairs(&skel, &seq)?;
    fill_feature_map(&skel.maps.arg_columns, &args.table, |_| {
        "filling the argument column table".to_string()
    })?;
    if args.any() {
        tracing::info!(
            "counting {} argument buckets of {} probes",
            args.table.len(),
            args.roles.len()
        );
    }
    let links = attach_kernel_sources(&skel, &sources)?;
    Ok(Kernel {
        skel,
        _links: links,
        layout,
        probes: seq.probes,
        roles: args.roles,
        sites: RefCell::new(SiteTable::default()),
        counts_syscalls: !sources.syscalls.is_empty(),
    })
}

/// Fills the `seq_pairs` table: pair key -> column + 1 of each `seq:`
/// feature (the other entries stay 0: not counted).
fn fill_seq_pairs(skel: &VmwatchSkel<'_>, seq: &Sequences) -> Result<()> {
    for (key, column) in seq.table() {
        skel.maps
            .seq_pairs
            .update(
                &key.to_ne_bytes(),
                &(column + 1).to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .map_err(|e| Error::bpf("filling the sequence pair table", e))?;
    }
    if seq.any() {
        tracing::info!(
            "counting {} probe transitions between {} tracked probes",
            seq.pairs.len(),
            seq.tracked
        );
    }
    Ok(())
}

impl Kernel<'_> {
    /// The cookie field of a site of probe `name` with `ids` in `binary`:
    /// its `sites` entry + 1 when it is tracked or reads arguments, else 0.
    pub fn site_entry(
        &self,
        binary: &str,
        site: &crate::discover::stapsdt::UsdtSite,
        ids: ProbeIds,
    ) -> Result<u16> {
        let role = self.roles.get(&site.name);
        if ids.seq == 0 && role.is_none() {
            return Ok(0);
        }
        self.sites.borrow_mut().entry(
            binary,
            site.file_offset,
            || arguments::site_info(ids.seq, role, site),
            |i, info| {
                // SAFETY: a repr(C) struct of plain integers, read as bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (info as *const crate::bpf::types::site_info).cast::<u8>(),
                        std::mem::size_of_val(info),
                    )
                };
                self.skel
                    .maps
                    .sites
                    .update(&i.to_ne_bytes(), bytes, libbpf_rs::MapFlags::ANY)
                    .map_err(|e| Error::bpf("filling the probe site table", e))
            },
        )
    }

    /// Whether probe `name`'s sites must stay exact (never duty-cycled): a
    /// tracked probe's threads would lose transitions, an argument
    /// family's buckets could not be scaled with its count.
    pub fn pinned(&self, name: &str) -> bool {
        self.probes.get(name).is_some_and(|p| p.seq != 0) || self.roles.contains_key(name)
    }

    /// What a hit of probe `name` costs beyond counting it, ns: tracking it
    /// for `seq:` features, reading its arguments for `arg:` ones.
    pub fn extra_ns(&self, name: &str) -> f64 {
        let track = self.probes.get(name).is_some_and(|p| p.seq != 0);
        let args = self.roles.contains_key(name);
        f64::from(u8::from(track)) * vmwatch_core::govern::TRACK_NS
            + f64::from(u8::from(args)) * vmwatch_core::govern::ARGS_NS
    }

    /// Publishes `pid` in slot `slot` to the BPF programs.
    pub fn watch(&self, pid: u32, slot: usize) -> Result<()> {
        self.skel
            .maps
            .watched
            .update(
                &pid.to_ne_bytes(),
                &(slot as u32).to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .map_err(|e| Error::bpf(format!("watching PID {pid}"), e))
    }

    pub fn unwatch(&self, pid: u32) {
        if let Err(e) = self.skel.maps.watched.delete(&pid.to_ne_bytes()) {
            tracing::warn!("removing PID {pid} from the watched map: {e}");
        }
    }

    /// Hits `slot`'s switched-off links trapped so far (cumulative).
    pub fn dark_hits(&self, slot: usize) -> Result<u64> {
        let values = self
            .skel
            .maps
            .dark
            .lookup_percpu(&(slot as u32).to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .map_err(|e| Error::bpf("reading the switched-off hits", e))?
            .unwrap_or_default();
        Ok(values
            .iter()
            .filter_map(|v| v.get(..8))
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            .sum())
    }

    /// The `counts` map, for the drain.
    pub fn counts_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.skel.maps.counts).as_raw_fd()
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
        Err(e) => tracing::warn!(
            "restoring semaphores left raised by a killed vmwatch: {}",
            vmwatch_core::error::chain(&e)
        ),
    }
}

/// Sets everything the BPF object needs before load, for every source at
/// once: the layout in rodata and map sizes, which programs load, and where
/// `kvm_exit` keeps its reason.
fn configure(
    open: &mut OpenVmwatchSkel<'_>,
    layout: &Layout,
    sources: &KernelSources<'_>,
    seq: &Sequences,
) -> Result<()> {
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .expect("rodata is mmapped");
    rodata.nr_features = layout.features;
    rodata.nr_chunks = layout.chunks;
    rodata.nr_tracked = seq.tracked as u32;
    // One definition of the argument table's shape and the queue kinds.
    rodata.arg_buckets = u32::from(vmwatch_core::arguments::BUCKETS);
    rodata.arg_splits = u32::from(vmwatch_core::arguments::SPLITS);
    rodata.queue_rx = Queue::Rx as u32;
    rodata.queue_tx = Queue::Tx as u32;
    rodata.queue_rw = Queue::Rw as u32;
    if let Some(exit) = sources.kvm_exit {
        rodata.exit_reason_off = exit.reason_offset;
        rodata.exit_vmx = u32::from(exit.vmx);
        // Out of range (not counted) unless `kvm:exit:other` is a column.
        rodata.exit_other = sources.exit_other.unwrap_or(u32::MAX);
    }
    open.maps
        .watched
        .set_max_entries(layout.slots)
        .map_err(|e| Error::bpf("sizing the watched-process map", e))?;
    open.maps
        .counts
        .set_max_entries(layout.entries())
        .map_err(|e| Error::bpf("sizing the counter map", e))?;
    open.maps
        .dark
        .set_max_entries(layout.slots)
        .map_err(|e| Error::bpf("sizing the switched-off hits map", e))?;
    open.maps
        .seq_pairs
        .set_max_entries(seq.table_len())
        .map_err(|e| Error::bpf("sizing the sequence pair table", e))?;
    open.maps
        .arg_columns
        .set_max_entries(Arguments::table_len())
        .map_err(|e| Error::bpf("sizing the argument column table", e))?;
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
        fill_feature_map(&skel.maps.sys_feature, &sources.syscalls, |nr| {
            format!("mapping syscall {nr}")
        })?;
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
        fill_feature_map(&skel.maps.exit_feature, &sources.exit_reasons, |_| {
            "mapping exit reasons".to_string()
        })?;
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

/// Fills a map of key (syscall number, exit reason) -> column + 1, as the
/// BPF side reads it (0, or no entry: not counted); `what` names a failed
/// key's update.
fn fill_feature_map(
    map: &impl MapCore,
    entries: &[(u32, u32)],
    what: impl Fn(u32) -> String,
) -> Result<()> {
    for (key, feature) in entries {
        map.update(
            &key.to_ne_bytes(),
            &(feature + 1).to_ne_bytes(),
            libbpf_rs::MapFlags::ANY,
        )
        .map_err(|e| Error::bpf(what(*key), e))?;
    }
    Ok(())
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

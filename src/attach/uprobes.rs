//! QEMU's USDT probes: one `uprobe_multi` link per binary carries every
//! selected probe site of the file, for all processes that run it (the BPF
//! program filters by tgid), each site with its feature column (and, for a
//! probe `seq:` features track, its sequence id) in the BPF cookie, so no
//! USDT argument parsing is needed. Under a cost governor, probes their
//! semaphores do not gate move off that link onto links of each watched
//! process ([`ProcessLinks`]), which the governor attaches and detaches
//! ([`super::switches`]); tracked probes never leave it.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use libbpf_rs::UprobeMultiOpts;

use super::switches::{self, SwitchedLink, Switches};
use super::Kernel;
use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::error::{Error, Result};

/// A probe site as attached: file offset, column, `sites` entry + 1 (0:
/// none), semaphore file offset (0: none).
#[derive(Debug, Clone, Copy)]
struct Site {
    offset: usize,
    column: u32,
    site: u16,
    ref_ctr: usize,
}

/// One binary's link. Retired through [`Switches::retire`] (or dropped)
/// it detaches every site; the semaphores are lowered per process, by the
/// [`super::semaphores::Raised`] of each.
pub struct BinaryAttachment {
    /// The link of every site not split off; `None` once all are.
    main: Option<SwitchedLink>,
    /// Every attached site, by column.
    all_sites: Vec<Site>,
    /// Columns moved to per-process links.
    split: BTreeSet<u32>,
    /// The build id of the file (hex), for what is remembered of it.
    pub build_id: Option<String>,
    /// The kernel wanted the semaphores' offsets with the sites.
    ref_ctr: Cell<bool>,
    /// File offsets of the attached probes' semaphores (deduplicated).
    pub semaphores: Vec<u64>,
    /// Each attached probe (by column) with its semaphores, for the cost
    /// governor.
    pub probes_of: Vec<AttachedProbe>,
    pub path: String,
    pub sites: usize,
    pub probes: usize,
    pub attach_time: Duration,
}

/// An attached probe as the cost governor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedProbe {
    pub column: u32,
    /// Its semaphores: indices into [`BinaryAttachment::semaphores`]. Empty
    /// when some site has none (it cannot be turned off).
    pub semaphores: Vec<usize>,
    /// Whether every site is a 5-byte nop (the cheaper, optimized uprobe).
    pub nop5: bool,
    /// Tracked for `seq:` features or its arguments read for `arg:` ones:
    /// counted exactly, never duty-cycled (a probe that is off breaks its
    /// threads' transitions; its argument buckets are not scaled).
    pub tracked: bool,
    /// What a hit costs beyond counting it, ns ([`Kernel::extra_ns`]).
    pub extra_ns: f64,
}

/// Attaches the counting program to the sites of `binary` (run by
/// `process`) whose probe is counted or tracked ([`Kernel::probes`]), on
/// one link with its switch on; the probes named in `split` are left to
/// links of each watched process ([`ProcessLinks`]), except tracked ones.
pub fn attach(
    kernel: &Kernel<'_>,
    switches: &mut Switches,
    process: &Process,
    binary: &UsdtBinary,
    split: &BTreeSet<String>,
) -> Result<BinaryAttachment> {
    let mut seen = HashSet::new();
    let mut probes = HashSet::new();
    let mut semaphores = BTreeSet::new();
    let mut all_sites = Vec::new();
    let binary_key = binary
        .qemu
        .build_id
        .clone()
        .unwrap_or_else(|| process.binary.display().to_string());
    // Column -> (semaphore offsets, every site a 5-byte nop, every site
    // guarded, tracked, ns beyond counting).
    type Seen = (BTreeSet<u64>, bool, bool, bool, f64);
    let mut per_probe: HashMap<u32, Seen> = HashMap::new();
    for site in binary.provider_sites("qemu") {
        let Some(&ids) = kernel.probes.get(&site.name) else {
            continue;
        };
        let feature = ids.column;
        // Two notes at one address would count each hit twice.
        if !seen.insert(site.file_offset) {
            continue;
        }
        probes.insert(feature);
        let p = per_probe.entry(feature).or_insert_with(|| {
            let name = &site.name;
            (
                BTreeSet::new(),
                true,
                true,
                kernel.pinned(name),
                kernel.extra_ns(name),
            )
        });
        p.0.extend(site.semaphore_offset);
        p.1 &= site.nop5;
        p.2 &= site.semaphore_offset.is_some();
        all_sites.push(Site {
            offset: site.file_offset as usize,
            column: feature,
            site: kernel.site_entry(&binary_key, site, ids)?,
            // Raised per watched process (see `semaphores`), not by the
            // kernel's ref_ctr_offset, unless the kernel insists.
            ref_ctr: site.semaphore_offset.unwrap_or(0) as usize,
        });
        semaphores.extend(site.semaphore_offset);
    }
    if all_sites.is_empty() {
        return Err(Error::NoProviderProbes {
            path: process.binary.clone(),
            provider: "qemu (of the selected features)".into(),
        });
    }
    all_sites.sort_by_key(|s| s.column);
    // Tracked probes stay on this link: they are never duty-cycled.
    let split: BTreeSet<u32> = split
        .iter()
        .filter(|name| !kernel.pinned(name))
        .filter_map(|name| kernel.probes.get(name).copied())
        .map(|p| p.column)
        .filter(|c| probes.contains(c))
        .collect();
    let mut att = BinaryAttachment {
        main: None,
        sites: all_sites.len(),
        all_sites,
        split,
        build_id: binary.qemu.build_id.clone(),
        ref_ctr: Cell::new(false),
        semaphores: semaphores.into_iter().collect(),
        probes_of: Vec::new(),
        path: process.binary.display().to_string(),
        probes: probes.len(),
        attach_time: Duration::ZERO,
    };
    let t = Instant::now();
    att.main = att.main_without(kernel, switches, process, &att.split)?;
    att.attach_time = t.elapsed();
    if let Some(main) = att.main.as_mut() {
        switches::flip(kernel, main, true)?;
    }
    tracing::info!(
        "attached {} sites of {} probes in {} in {:?}",
        att.sites,
        att.probes,
        process.binary.display(),
        att.attach_time
    );
    let mut probes_of: Vec<AttachedProbe> = per_probe
        .into_iter()
        .map(
            |(column, (sems, nop5, guarded, tracked, extra_ns))| AttachedProbe {
                column,
                semaphores: if guarded {
                    sems.iter()
                        .filter_map(|s| att.semaphores.binary_search(s).ok())
                        .collect()
                } else {
                    Vec::new()
                },
                nop5,
                tracked,
                extra_ns,
            },
        )
        .collect();
    probes_of.sort_by_key(|p| p.column);
    att.probes_of = probes_of;
    Ok(att)
}

impl BinaryAttachment {
    /// Attaches the sites of the columns `which` accepts, for `pid` (-1:
    /// every process of the file), on a new link with its switch off.
    fn link(
        &self,
        kernel: &Kernel<'_>,
        switches: &mut Switches,
        process: &Process,
        pid: i32,
        which: impl Fn(u32) -> bool,
    ) -> Result<SwitchedLink> {
        let switch = switches.take(kernel)?;
        let mut opts = UprobeMultiOpts::default();
        let mut ref_ctrs = Vec::new();
        let mut columns = BTreeSet::new();
        for s in self.all_sites.iter().filter(|s| which(s.column)) {
            opts.offsets.push(s.offset);
            opts.cookies
                .push(crate::bpf::usdt_cookie(s.column, Some(switch), s.site));
            ref_ctrs.push(s.ref_ctr);
            columns.insert(s.column);
        }
        let sites = opts.offsets.len();
        if self.ref_ctr.get() {
            opts.ref_ctr_offsets = ref_ctrs.clone();
        }
        // /proc/PID/exe resolves to the running file even if it was replaced.
        let path = process.exe_path();
        let what = || {
            format!(
                "attaching {sites} probe sites to {}",
                process.binary.display()
            )
        };
        let prog = &kernel.skel.progs.count_usdt;
        let attached = match prog.attach_uprobe_multi_with_opts(pid, &path, "", opts.clone()) {
            Ok(link) => Ok(link),
            // The kernel rejects a uprobe whose ref_ctr_offset differs from
            // an existing one at the same site: another tracer (or a stale
            // kernel uprobe) uses kernel-managed semaphores. Match it.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::InvalidInput && !self.ref_ctr.get() => {
                tracing::debug!("attach without ref_ctr_offset refused ({e}); retrying with it");
                opts.ref_ctr_offsets = ref_ctrs;
                self.ref_ctr.set(true);
                prog.attach_uprobe_multi_with_opts(pid, &path, "", opts)
                    .map_err(|e| Error::bpf(what(), e))
            }
            Err(e) => Err(Error::bpf(what(), e)),
        };
        match attached {
            Ok(link) => Ok(SwitchedLink::new(
                link,
                switch,
                columns.into_iter().collect(),
            )),
            Err(e) => {
                switches.put_back(switch);
                Err(e)
            }
        }
    }

    /// Columns on per-process links.
    pub fn split(&self) -> &BTreeSet<u32> {
        &self.split
    }

    /// A link for the columns not in `split` (none left: `None`), switch
    /// off, to replace the binary's link by [`BinaryAttachment::swap_main`].
    pub fn main_without(
        &self,
        kernel: &Kernel<'_>,
        switches: &mut Switches,
        process: &Process,
        split: &BTreeSet<u32>,
    ) -> Result<Option<SwitchedLink>> {
        if self.all_sites.iter().all(|s| split.contains(&s.column)) {
            return Ok(None);
        }
        self.link(kernel, switches, process, -1, |c| !split.contains(&c))
            .map(Some)
    }

    /// Makes `main` (on by now) the binary's link for the columns outside
    /// `split`; returns the old one, to be retired.
    pub fn swap_main(
        &mut self,
        main: Option<SwitchedLink>,
        split: BTreeSet<u32>,
    ) -> Option<SwitchedLink> {
        self.split = split;
        std::mem::replace(&mut self.main, main)
    }

    /// Takes the binary's link, to be retired.
    pub fn take_main(&mut self) -> Option<SwitchedLink> {
        self.main.take()
    }
}

/// The per-process links of one watched process: the split-off probes it
/// counts all the time (`exact`) and those it duty-cycles, one link per
/// level, attached while their turn lasts.
pub struct ProcessLinks {
    pub exact: Option<SwitchedLink>,
    pub cycled: Vec<(u32, SwitchedLink)>,
}

impl ProcessLinks {
    pub fn new() -> Self {
        Self {
            exact: None,
            cycled: Vec::new(),
        }
    }

    /// Attaches the sites of `columns` (split-off columns of `binary`) for
    /// `process` only, switch off.
    pub fn attach(
        kernel: &Kernel<'_>,
        switches: &mut Switches,
        binary: &BinaryAttachment,
        process: &Process,
        columns: &[u32],
    ) -> Result<SwitchedLink> {
        let pid = i32::try_from(process.pid)
            .map_err(|_| Error::Invalid(format!("PID {} out of range", process.pid)))?;
        binary.link(kernel, switches, process, pid, |c| {
            columns.binary_search(&c).is_ok()
        })
    }

    /// Every link, to be retired.
    pub fn take_all(&mut self) -> Vec<SwitchedLink> {
        let mut out: Vec<SwitchedLink> = self.exact.take().into_iter().collect();
        out.extend(self.cycled.drain(..).map(|(_, l)| l));
        out
    }
}

impl Default for ProcessLinks {
    fn default() -> Self {
        Self::new()
    }
}

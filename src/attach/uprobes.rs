//! QEMU's USDT probes: one `uprobe_multi` link per binary carries every
//! selected probe site of the file, for all processes that run it (the BPF
//! program filters by tgid), each site with its feature column as the BPF
//! cookie, so no USDT argument parsing is needed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts};

use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::error::{Error, Result};

/// One binary's link. Dropping it detaches every site; the semaphores are
/// lowered per process, by the [`super::semaphores::Raised`] of each.
pub struct BinaryAttachment {
    _link: Link,
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
}

/// Attaches `prog` to the sites of `binary` (run by `process`) whose probe
/// is a column: `columns` maps a probe name to its column.
pub fn attach(
    prog: &ProgramMut<'_>,
    process: &Process,
    binary: &UsdtBinary,
    columns: &HashMap<String, u32>,
) -> Result<BinaryAttachment> {
    let mut opts = UprobeMultiOpts::default();
    let mut seen = HashSet::new();
    let mut probes = HashSet::new();
    let mut semaphores = BTreeSet::new();
    let mut ref_ctrs = Vec::new();
    // Column -> (semaphore offsets, every site a 5-byte nop, every site guarded).
    let mut per_probe: HashMap<u32, (BTreeSet<u64>, bool, bool)> = HashMap::new();
    for site in binary.provider_sites("qemu") {
        let Some(&feature) = columns.get(&site.name) else {
            continue;
        };
        // Two notes at one address would count each hit twice.
        if !seen.insert(site.file_offset) {
            continue;
        }
        probes.insert(feature);
        let p = per_probe
            .entry(feature)
            .or_insert_with(|| (BTreeSet::new(), true, true));
        p.0.extend(site.semaphore_offset);
        p.1 &= site.nop5;
        p.2 &= site.semaphore_offset.is_some();
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
    let what = || {
        format!(
            "attaching {sites} probe sites to {}",
            process.binary.display()
        )
    };
    let t = Instant::now();
    let link = match prog.attach_uprobe_multi_with_opts(-1, &path, "", opts.clone()) {
        Ok(link) => link,
        // The kernel rejects a uprobe whose ref_ctr_offset differs from an
        // existing one at the same site: another tracer (or a stale kernel
        // uprobe) uses kernel-managed semaphores. Match it.
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
    let semaphores: Vec<u64> = semaphores.into_iter().collect();
    let mut probes_of: Vec<AttachedProbe> = per_probe
        .into_iter()
        .map(|(column, (sems, nop5, guarded))| AttachedProbe {
            column,
            semaphores: if guarded {
                sems.iter()
                    .filter_map(|s| semaphores.binary_search(s).ok())
                    .collect()
            } else {
                Vec::new()
            },
            nop5,
        })
        .collect();
    probes_of.sort_by_key(|p| p.column);
    Ok(BinaryAttachment {
        _link: link,
        semaphores,
        probes_of,
        path: process.binary.display().to_string(),
        sites,
        probes: probes.len(),
        attach_time,
    })
}

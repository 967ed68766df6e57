//! The USDT probes of a built QEMU, read with binutils' `readelf`: counts, the
//! kind of nop at each site, and the difference between two builds
//! (`cargo xtask qemu --diff BUILD`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

/// The x86-64 5-byte nop (`nopl 0x0(%rax,%rax,1)`) of the lab's `sys/sdt.h`.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// The 1-byte `nop` of systemtap's `sys/sdt.h`.
const NOP1: u8 = 0x90;

/// USDT probe counts of a binary (from `readelf -n` and the bytes at the sites).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeCounts {
    /// All `stapsdt` notes (call sites), any provider.
    pub sites: usize,
    /// Notes of provider `qemu`.
    pub qemu_sites: usize,
    /// Distinct probe names of provider `qemu`.
    pub qemu_names: usize,
    /// `qemu` sites that are 5-byte nops (optimizable uprobes on Linux ≥ 6.18).
    pub nop5_sites: usize,
    /// `qemu` sites that are 1-byte nops.
    pub nop1_sites: usize,
}

/// One `stapsdt` note.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    provider: String,
    name: String,
    location: u64,
    /// The argument sizes (`8 -4` for `8@%rdi -4@%esi`): what a probe renamed
    /// with its arguments unchanged keeps.
    signature: String,
}

/// Counts the USDT probes of `binary` with `readelf -n` (notes) and `readelf -lW`
/// (segments, to find the bytes of each site in the file).
pub fn count_probes(binary: &Path) -> Result<ProbeCounts> {
    let sites = read_sites(binary)?;
    let segments = util::output(Command::new("readelf").arg("-lW").arg(binary))
        .with_context(|| format!("could not read the program headers of {}", binary.display()))?;
    let segments = parse_load_segments(&segments);
    let data = fs::read(binary).with_context(|| format!("could not read {}", binary.display()))?;
    Ok(counts(&sites, &segments, &data))
}

/// The distinct probe names of provider `qemu` in `binary`, each with the
/// argument sizes of its first site.
pub fn qemu_probes(binary: &Path) -> Result<BTreeMap<String, String>> {
    let mut probes = BTreeMap::new();
    for s in read_sites(binary)?
        .into_iter()
        .filter(|s| s.provider == "qemu")
    {
        probes.entry(s.name).or_insert(s.signature);
    }
    Ok(probes)
}

fn read_sites(binary: &Path) -> Result<Vec<Site>> {
    let notes = util::output(Command::new("readelf").arg("-n").arg(binary))
        .with_context(|| format!("could not read the ELF notes of {}", binary.display()))?;
    Ok(parse_probe_notes(&notes))
}

fn counts(sites: &[Site], segments: &[(u64, u64, u64)], data: &[u8]) -> ProbeCounts {
    let mut c = ProbeCounts {
        sites: sites.len(),
        ..ProbeCounts::default()
    };
    let mut names = BTreeSet::new();
    for s in sites.iter().filter(|s| s.provider == "qemu") {
        c.qemu_sites += 1;
        names.insert(s.name.as_str());
        let bytes = file_offset(segments, s.location)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| data.get(at..at.checked_add(NOP5.len())?));
        match bytes {
            Some(b) if b == NOP5 => c.nop5_sites += 1,
            Some([NOP1, ..]) => c.nop1_sites += 1,
            _ => {}
        }
    }
    c.qemu_names = names.len();
    c
}

/// `readelf -n` → the `stapsdt` notes (provider, name, location).
fn parse_probe_notes(readelf: &str) -> Vec<Site> {
    let mut sites = Vec::new();
    let mut current: Option<(String, Option<String>)> = None;
    for line in readelf.lines() {
        let line = line.trim();
        if let Some(p) = line.strip_prefix("Provider:") {
            current = Some((p.trim().to_string(), None));
        } else if let Some(name) = line.strip_prefix("Name:") {
            if let Some((_, n)) = &mut current {
                *n = Some(name.trim().to_string());
            }
        } else if let Some(rest) = line.strip_prefix("Location:") {
            let location = rest
                .split(',')
                .next()
                .and_then(|l| u64::from_str_radix(l.trim().trim_start_matches("0x"), 16).ok());
            if let (Some((provider, Some(name))), Some(location)) = (current.take(), location) {
                sites.push(Site {
                    provider,
                    name,
                    location,
                    signature: String::new(),
                });
            }
        } else if let Some(args) = line.strip_prefix("Arguments:") {
            // Follows the Location line of the same note.
            if let Some(site) = sites.last_mut() {
                site.signature = args
                    .split_whitespace()
                    .filter_map(|a| a.split_once('@').map(|(size, _)| size))
                    .collect::<Vec<_>>()
                    .join(" ");
            }
        }
    }
    sites
}

/// `readelf -lW` → the `LOAD` segments as (virtual address, file size, offset).
fn parse_load_segments(readelf: &str) -> Vec<(u64, u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    readelf
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["LOAD", offset, vaddr, _paddr, filesz, ..] => {
                    Some((hex(vaddr)?, hex(filesz)?, hex(offset)?))
                }
                _ => None,
            }
        })
        .collect()
}

fn file_offset(segments: &[(u64, u64, u64)], addr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|(vaddr, filesz, _)| addr >= *vaddr && addr - vaddr < *filesz)
        .and_then(|(vaddr, _, off)| off.checked_add(addr - vaddr))
}

/// How the probe names of two builds differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Names in both.
    pub common: usize,
    /// Only in the new build.
    pub added: Vec<String>,
    /// Only in the old build.
    pub removed: Vec<String>,
    /// (removed, added) pairs that look like one probe renamed: the same argument
    /// sizes, and one name is the other plus `_` and more words, or both have the
    /// same words but the last.
    pub renamed: Vec<(String, String)>,
}

/// `old` and `new` map probe names to their argument sizes ([`qemu_probes`]).
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Diff {
    let added: Vec<String> = new
        .keys()
        .filter(|n| !old.contains_key(*n))
        .cloned()
        .collect();
    let removed: Vec<String> = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    let pair = |r: &str, a: &str| related(r, a) && old.get(r) == new.get(a);
    let mut renamed = Vec::new();
    for r in &removed {
        let candidates: Vec<&String> = added.iter().filter(|a| pair(r, a)).collect();
        // Only unambiguous pairs: one candidate, which no other removed name claims.
        if let [a] = candidates.as_slice() {
            if removed.iter().filter(|r2| pair(r2, a)).count() == 1 {
                renamed.push((r.clone(), (*a).clone()));
            }
        }
    }
    Diff {
        common: old.keys().filter(|n| new.contains_key(*n)).count(),
        added,
        removed,
        renamed,
    }
}

fn related(a: &str, b: &str) -> bool {
    let extends = |x: &str, y: &str| y.strip_prefix(x).is_some_and(|rest| rest.starts_with('_'));
    let stem = |x: &str| x.rsplit_once('_').map(|(s, _)| s.to_string());
    let same_stem = match (stem(a), stem(b)) {
        // At least two words in the stem: `vnc_x` and `vnc_y` are not one probe.
        (Some(sa), Some(sb)) => sa == sb && sa.contains('_'),
        _ => false,
    };
    extends(a, b) || extends(b, a) || same_stem
}

/// Renders a diff between builds `old_name` and `new_name`, and where each of
/// `features` (`qemu:<probe>` lines; others are ignored) stands.
pub fn report(
    old_name: &str,
    new_name: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    features: &[(String, Vec<String>)],
) -> String {
    let d = diff(old, new);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "qemu probe names: {old_name} {}, {new_name} {}; {} in both, {} added, {} removed ({} of them look renamed)",
        old.len(),
        new.len(),
        d.common,
        d.added.len(),
        d.removed.len(),
        d.renamed.len()
    );
    let renamed_to: BTreeMap<&str, &str> = d
        .renamed
        .iter()
        .map(|(r, a)| (r.as_str(), a.as_str()))
        .collect();
    let _ = writeln!(out, "\nlikely renamed ({}):", d.renamed.len());
    for (r, a) in &d.renamed {
        let _ = writeln!(out, "  {r} -> {a}");
    }
    let _ = writeln!(out, "\nremoved ({}):", d.removed.len());
    for r in &d.removed {
        let _ = writeln!(out, "  {r}");
    }
    let _ = writeln!(out, "\nadded ({}):", d.added.len());
    for a in &d.added {
        let _ = writeln!(out, "  {a}");
    }
    for (source, list) in features {
        let probes: Vec<&str> = list
            .iter()
            .filter_map(|f| f.strip_prefix("qemu:"))
            .collect();
        let _ = writeln!(
            out,
            "\nfeatures of {source} ({} qemu probes):",
            probes.len()
        );
        for p in probes {
            let state = match (old.contains_key(p), new.contains_key(p)) {
                (_, true) => "present".to_string(),
                (true, false) => match renamed_to.get(p) {
                    Some(to) => format!("MISSING in {new_name} (renamed to {to}?)"),
                    None => format!("MISSING in {new_name}"),
                },
                (false, false) => format!("in neither {old_name} nor {new_name}"),
            };
            let _ = writeln!(out, "  qemu:{p}: {state}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES: &str = "\
Displaying notes found in: .note.stapsdt
  Owner                Data size \tDescription
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: qemu
    Name: vhost_commit
    Location: 0x0000000000001001, Base: 0x0000000000000002, Semaphore: 0x0000000000000003
    Arguments: 
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: qemu
    Name: vhost_commit
    Location: 0x0000000000001008, Base: 0x2, Semaphore: 0x3
    Arguments: -4@%esi
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: libc
    Name: setjmp
    Location: 0x0000000000001010, Base: 0x2, Semaphore: 0x0
";

    #[test]
    fn probe_notes() {
        let sites = parse_probe_notes(NOTES);
        assert_eq!(sites.len(), 3);
        assert_eq!(sites[1].name, "vhost_commit");
        assert_eq!(sites[1].location, 0x1008);
        assert_eq!(sites[2].provider, "libc");
        assert_eq!(sites[0].signature, "");
        assert_eq!(sites[1].signature, "-4");
    }

    #[test]
    fn nop_kinds() {
        let phdrs = "\
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  LOAD           0x000000 0x0000000000000000 0x0000000000000000 0x000800 0x000800 R   0x1000
  LOAD           0x000800 0x0000000000001000 0x0000000000001000 0x000100 0x000100 R E 0x1000
";
        let segments = parse_load_segments(phdrs);
        assert_eq!(segments, [(0, 0x800, 0), (0x1000, 0x100, 0x800)]);
        let mut data = vec![0u8; 0x900];
        data[0x801..0x806].copy_from_slice(&NOP5);
        data[0x808] = NOP1;
        let c = counts(&parse_probe_notes(NOTES), &segments, &data);
        assert_eq!(
            c,
            ProbeCounts {
                sites: 3,
                qemu_sites: 2,
                qemu_names: 1,
                nop5_sites: 1,
                nop1_sites: 1,
            }
        );
    }

    /// Probes with their argument sizes: `name` or `name=8 -4`.
    fn set(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|s| {
                let (n, sig) = s.split_once('=').unwrap_or((s, "8"));
                (n.to_string(), sig.to_string())
            })
            .collect()
    }

    #[test]
    fn diffs() {
        let old = set(&[
            "thread_pool_complete",
            "apic_mem_writel",
            "vnc_a",
            "virtqueue_fill",
            "exec_tb_nocache",
            "e1000e_irq_clear_ims=-4",
        ]);
        let new = set(&[
            "thread_pool_complete_aio",
            "apic_register_write",
            "vnc_b",
            "virtqueue_fill",
            "exec_tb_x",
            "exec_tb_y",
            "e1000e_irq_clear=-4 -4 -4",
        ]);
        let d = diff(&old, &new);
        assert_eq!(d.common, 1);
        assert_eq!(d.removed.len(), 5);
        assert_eq!(d.added.len(), 6);
        // exec_tb_nocache has two candidates: not a rename; vnc_a/vnc_b: too
        // short; e1000e_irq_clear has other arguments.
        assert_eq!(
            d.renamed,
            [(
                "thread_pool_complete".to_string(),
                "thread_pool_complete_aio".to_string()
            )]
        );
        let text = report(
            "a",
            "b",
            &old,
            &new,
            &[(
                "features.txt".into(),
                vec![
                    "qemu:thread_pool_complete".into(),
                    "qemu:virtqueue_fill".into(),
                    "qemu:apic_mem_writel".into(),
                    "sys:read".into(),
                ],
            )],
        );
        assert!(text.contains(
            "qemu:thread_pool_complete: MISSING in b (renamed to thread_pool_complete_aio?)"
        ));
        assert!(text.contains("qemu:virtqueue_fill: present"));
        assert!(text.contains("qemu:apic_mem_writel: MISSING in b\n"));
        assert!(!text.contains("sys:read"));
    }
}

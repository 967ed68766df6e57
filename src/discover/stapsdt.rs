//! USDT probe discovery: reads the SystemTap SDT notes (`.note.stapsdt`)
//! of an ELF binary and resolves each probe site and semaphore to the file
//! offsets the kernel's uprobe interface wants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection};
use serde::Serialize;

use crate::discover::procs::Process;
use crate::error::{Error, Result};
use vmwatch_core::error::shown;
use vmwatch_core::limits::MAX_BINARY_BYTES;
use vmwatch_core::qemu::{self, QemuBuild};

/// Note type of SDT probe descriptors (`NT_STAPSDT` in <sys/sdt.h>).
const NT_STAPSDT: u32 = 3;

/// The x86-64 5-byte nop (`nopl 0x0(%rax,%rax,1)`, the kernel's `x86_nops[5]`).
/// Linux ≥ 6.18 turns a uprobe on a site made of it into a call to a trampoline
/// and the `uprobe` syscall after the first hit, instead of trapping on an int3 at
/// every hit; systemtap's `sys/sdt.h` emits a 1-byte `nop`, which always traps.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// One call site of a USDT probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsdtSite {
    pub provider: String,
    pub name: String,
    /// Virtual address of the probe's `nop`, as linked.
    pub address: u64,
    /// File offset of the probe's `nop` (what uprobes attach to).
    pub file_offset: u64,
    /// Virtual address of the semaphore, if the probe has one.
    pub semaphore: Option<u64>,
    /// File offset of the semaphore (the uprobe `ref_ctr_offset`).
    pub semaphore_offset: Option<u64>,
    /// Argument spec, e.g. `-4@%esi 8@%rdi`.
    pub args: String,
    /// The site is a 5-byte nop ([`NOP5`]), so the kernel can optimize its uprobe.
    pub nop5: bool,
}

/// A probe name with all its call sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    pub sites: usize,
    /// How many of the sites are 5-byte nops (see [`NOP5`]).
    pub nop5_sites: usize,
    /// Semaphore address (shared by the probe's sites), if any.
    pub semaphore: Option<u64>,
}

/// All USDT sites of one binary.
#[derive(Debug, Clone)]
pub struct UsdtBinary {
    pub path: PathBuf,
    pub sites: Vec<UsdtSite>,
    /// Its build id and QEMU version (see [`build_of`]).
    pub qemu: QemuBuild,
}

impl UsdtBinary {
    /// Reads the SDT notes of `path`. A binary without notes is an error
    /// that says how to get them.
    pub fn read(path: &Path) -> Result<Self> {
        let data = read_bounded(path)?;
        Self::parse(path, &data)
    }

    /// Parses the SDT notes of an ELF image read from `path` (named in
    /// errors only).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Self> {
        let sites = parse_sites(data).map_err(|reason| Error::Elf {
            path: path.to_owned(),
            reason,
        })?;
        if sites.is_empty() {
            return Err(Error::NoProbes {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            sites,
            qemu: build_of(data),
        })
    }

    /// Reads the executable of `p` (through /proc/PID/exe, so a replaced or
    /// deleted file is still the one running), which must have `qemu` probes.
    pub fn of_process(p: &Process) -> Result<Self> {
        let bin = Self::read(&p.exe_path()).map_err(|e| match e {
            Error::NoProbes { .. } => Error::NoProbes {
                path: p.binary.clone(),
            },
            other => other,
        })?;
        if bin.provider_sites("qemu").next().is_none() {
            return Err(Error::NoProviderProbes {
                path: p.binary.clone(),
                provider: "qemu".into(),
            });
        }
        Ok(bin)
    }

    /// How many sites are 5-byte nops (see [`NOP5`]).
    pub fn nop5_sites(&self) -> usize {
        self.sites.iter().filter(|s| s.nop5).count()
    }

    /// Probes grouped by (provider, name), sorted.
    pub fn probes(&self) -> Vec<UsdtProbe> {
        let mut by_name: BTreeMap<(&str, &str), UsdtProbe> = BTreeMap::new();
        for s in &self.sites {
            by_name
                .entry((&s.provider, &s.name))
                .and_modify(|p| {
                    p.sites += 1;
                    p.nop5_sites += usize::from(s.nop5);
                    p.semaphore = p.semaphore.or(s.semaphore);
                })
                .or_insert_with(|| UsdtProbe {
                    provider: s.provider.clone(),
                    name: s.name.clone(),
                    sites: 1,
                    nop5_sites: usize::from(s.nop5),
                    semaphore: s.semaphore,
                });
        }
        by_name.into_values().collect()
    }

    /// Sites of one provider.
    pub fn provider_sites<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a UsdtSite> {
        self.sites.iter().filter(move |s| s.provider == provider)
    }
}

/// Reads a regular file of at most [`MAX_BINARY_BYTES`]: a device such as
/// /dev/zero is no executable, and would be read for as long as memory lasts.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|source| Error::read(path.to_owned(), source))?;
    if !meta.is_file() {
        return Err(Error::Elf {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    Ok(vmwatch_core::limits::read_file(
        path,
        MAX_BINARY_BYTES,
        "an executable",
    )?)
}

/// What an ELF image says about the QEMU it is, read without running it:
/// the build id of its `.note.gnu.build-id` (`NT_GNU_BUILD_ID`), and the
/// version after `QEMU emulator version ` (the `-version` banner) in its
/// `.rodata` section, or anywhere in the file when `.rodata` does not have
/// it. Either is `None` when the image does not have it.
pub fn build_of(data: &[u8]) -> QemuBuild {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
        return QemuBuild::default();
    };
    let build_id = file.build_id().ok().flatten();
    let rodata = file
        .section_by_name(".rodata")
        .and_then(|s| s.data().ok())
        .filter(|d| !d.is_empty());
    let version = rodata
        .and_then(qemu::version_in)
        .or_else(|| qemu::version_in(data));
    QemuBuild::new(build_id, version)
}

/// The build of the executable at `path` (see [`build_of`]); unknown when
/// it cannot be read.
pub fn build_of_file(path: &Path) -> QemuBuild {
    read_bounded(path).map_or_else(|_| QemuBuild::default(), |d| build_of(&d))
}

/// The distinct probe names of `provider` in `binary`.
pub fn probe_names(binary: &UsdtBinary, provider: &str) -> usize {
    binary
        .probes()
        .iter()
        .filter(|p| p.provider == provider)
        .count()
}

fn parse_sites(data: &[u8]) -> Result<Vec<UsdtSite>, String> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = file.endian();
    let header = file.elf_header();

    // Prelink may move the binary; SDT notes record where `.stapsdt.base`
    // was at link time so addresses can be adjusted by the difference.
    let base_addr = file.section_by_name(".stapsdt.base").map(|s| s.address());

    let segments: Vec<(u64, u64, u64)> = header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| (ph.p_vaddr(endian), ph.p_filesz(endian), ph.p_offset(endian)))
        .collect();
    // Checked: the headers are the file's, and may put a segment at the
    // top of the address space.
    let to_offset = |addr: u64| -> Option<u64> {
        segments
            .iter()
            .find(|(vaddr, filesz, _)| addr >= *vaddr && addr - vaddr < *filesz)
            .and_then(|(vaddr, _, off)| off.checked_add(addr - vaddr))
    };

    let sections = header.sections(endian, data).map_err(|e| e.to_string())?;
    let mut sites = Vec::new();
    for section in sections.iter() {
        if section.sh_type(endian) != elf::SHT_NOTE {
            continue;
        }
        let Some(mut notes) = section.notes(endian, data).map_err(|e| e.to_string())? else {
            continue;
        };
        while let Some(note) = notes.next().map_err(|e| e.to_string())? {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let desc = note.desc();
            let site = parse_desc(desc, endian, base_addr)
                .ok_or_else(|| "malformed stapsdt note".to_string())?;
            let (address, semaphore, provider, name, args) = site;
            // The names come from the file: escaped, the message stays one line.
            let probe = || format!("{}:{}", shown(&provider), shown(&name));
            let file_offset = to_offset(address).ok_or_else(|| {
                format!(
                    "probe {} at {address:#x} lies in no loadable segment",
                    probe()
                )
            })?;
            let semaphore_offset = match semaphore {
                Some(sema) => Some(to_offset(sema).ok_or_else(|| {
                    format!(
                        "semaphore of {} at {sema:#x} lies in no loaded segment",
                        probe()
                    )
                })?),
                None => None,
            };
            let nop5 = usize::try_from(file_offset)
                .ok()
                .and_then(|at| data.get(at..at.checked_add(NOP5.len())?))
                == Some(&NOP5[..]);
            sites.push(UsdtSite {
                provider,
                name,
                address,
                file_offset,
                semaphore,
                semaphore_offset,
                args,
                nop5,
            });
        }
    }
    Ok(sites)
}

type RawSite = (u64, Option<u64>, String, String, String);

/// Decodes one 64-bit stapsdt descriptor: pc, base, semaphore, then the
/// NUL-terminated provider, name and argument strings.
fn parse_desc(desc: &[u8], endian: Endianness, base_addr: Option<u64>) -> Option<RawSite> {
    let word = |i: usize| -> Option<u64> {
        let b: [u8; 8] = desc.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(match endian {
            Endianness::Little => u64::from_le_bytes(b),
            Endianness::Big => u64::from_be_bytes(b),
        })
    };
    let (mut pc, note_base, mut sema) = (word(0)?, word(1)?, word(2)?);
    if let Some(base) = base_addr {
        let delta = base.wrapping_sub(note_base);
        pc = pc.wrapping_add(delta);
        if sema != 0 {
            sema = sema.wrapping_add(delta);
        }
    }
    let mut strings = desc.get(24..)?.split(|&b| b == 0);
    let mut next = || {
        strings
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    };
    let (provider, name, args) = (next()?, next()?, next().unwrap_or_default());
    if provider.is_empty() || name.is_empty() {
        return None;
    }
    Some((pc, (sema != 0).then_some(sema), provider, name, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(pc: u64, base: u64, sema: u64, strings: &[&str]) -> Vec<u8> {
        let mut d = Vec::new();
        for w in [pc, base, sema] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        for s in strings {
            d.extend_from_slice(s.as_bytes());
            d.push(0);
        }
        d
    }

    #[test]
    fn decodes_descriptor_and_adjusts_for_moved_base() {
        let d = desc(0x1000, 0x2000, 0x3000, &["qemu", "tap_send", "8@%rdi"]);
        let (pc, sema, provider, name, args) =
            parse_desc(&d, Endianness::Little, Some(0x2100)).unwrap();
        assert_eq!((pc, sema), (0x1100, Some(0x3100)));
        assert_eq!((provider.as_str(), name.as_str()), ("qemu", "tap_send"));
        assert_eq!(args, "8@%rdi");
    }

    #[test]
    fn zero_semaphore_means_none() {
        let d = desc(0x1000, 0x2000, 0, &["qemu", "x", ""]);
        let (_, sema, ..) = parse_desc(&d, Endianness::Little, Some(0x2000)).unwrap();
        assert_eq!(sema, None);
    }

    #[test]
    fn truncated_descriptor_is_rejected() {
        assert!(parse_desc(&[0u8; 20], Endianness::Little, None).is_none());
        let d = desc(1, 2, 3, &[]);
        assert!(parse_desc(&d, Endianness::Little, None).is_none());
    }

    #[test]
    fn garbage_is_not_elf() {
        assert!(parse_sites(b"definitely not an ELF file").is_err());
    }

    /// A fuzz seed: a static executable with three probes in one PT_LOAD.
    /// `include_bytes!` promises no alignment: the parser must need none.
    const TINY: &[u8] = include_bytes!("../../fuzz/corpus/stapsdt/usdt-tiny");

    #[test]
    fn reads_the_tiny_seed() {
        let b = UsdtBinary::parse(Path::new("t"), TINY).unwrap();
        let names: Vec<String> = b.probes().iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["unguarded", "tap_send", "virtqueue_fill"]);
        assert_eq!(b.qemu.version, None);
    }

    #[test]
    fn the_build_of_an_executable_is_read_not_run() {
        // This test binary: the build id readelf shows (Debian's toolchain
        // writes one).
        let exe = std::env::current_exe().unwrap();
        let me = std::fs::read(&exe).unwrap();
        let b = build_of(&me);
        assert!(
            b.build_id.is_some(),
            "no build id read from this test binary"
        );
        let readelf = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output();
        if let Some(out) = readelf.ok().filter(|o| o.status.success()) {
            let text = String::from_utf8_lossy(&out.stdout);
            let want = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Build ID: "))
                .map(str::to_string);
            assert_eq!(b.build_id, want);
        }
        // A banner in the data, as QEMU has it.
        assert_eq!(build_of(TINY).version, None);
        let fake = [TINY, qemu::VERSION_PREFIX, b"10.1.2 (test)\nCopyright"].concat();
        assert_eq!(build_of(&fake).version.as_deref(), Some("10.1.2 (test)"));
        assert_eq!(build_of(b"not ELF"), QemuBuild::default());
    }

    #[test]
    fn hostile_headers_and_names_make_one_line_errors() {
        // Found by the stapsdt fuzz target: a segment's file offset near
        // 2^64 overflowed the address-to-offset sum (a panic in debug
        // builds), and a `\r` in a provider name split the message.
        let mut data = TINY.to_vec();
        let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
        data[phoff + 8..phoff + 16].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let at = TINY.windows(5).position(|w| w == b"qemu\0").unwrap();
        data[at + 1] = b'\r';
        let err = UsdtBinary::parse(Path::new("t"), &data)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(r"t is not an ELF file vmwatch can read: probe q\rmu:tap_send at 0x")
                && err.ends_with(" lies in no loadable segment"),
            "{err}"
        );
    }
}

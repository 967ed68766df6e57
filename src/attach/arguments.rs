//! Argument features (`arg:`) in the kernel: which probe sites read which
//! of their USDT arguments, where those arguments are (from the specs of
//! `.note.stapsdt`, parsed here), and the table of (family, split, bucket)
//! -> column the BPF program counts into (`arg_columns` in
//! bpf/vmwatch.bpf.c). The families are `vmwatch_core::arguments`'s.
//!
//! A site with extras (arguments, or a probe `seq:` features track) has an
//! entry in the kernel's `sites` table ([`SiteTable`]), its index in the
//! site's cookie. Entries are kept per binary and reused when the binary is
//! attached again, so a long-running agent with VMs coming and going does
//! not run out of them.

use std::collections::{BTreeMap, HashMap};

use vmwatch_core::arguments::{self, ArgFeature};
use vmwatch_core::features::{Columns, Feature};

use crate::bpf::types;
use crate::discover::stapsdt::UsdtSite;
use crate::error::{Error, Result};

/// The kernel's `enum site_role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRole {
    Bucket = 1,
    QueueBucket = 2,
    QueueKind = 3,
}

/// What a probe's sites do with their arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub kind: SiteRole,
    /// (argument position, family id) of each bucketed argument (at most
    /// `SITE_VALUES`, 2).
    pub values: Vec<(u8, u32)>,
    /// Positions of the other arguments it reads: the queue for
    /// [`SiteRole::QueueBucket`]; queue, in_num, out_num for
    /// [`SiteRole::QueueKind`].
    pub others: Vec<u8>,
}

impl Role {
    /// Positions of every argument it reads, in `site_info.arg` order
    /// (`None`: a slot left unread, before the queue of a one-value role).
    fn positions(&self) -> Vec<Option<u8>> {
        match self.kind {
            SiteRole::QueueKind => self.others.iter().copied().map(Some).collect(),
            SiteRole::Bucket | SiteRole::QueueBucket => {
                // Values first (arg[0], arg[1]); the queue is arg[2].
                let mut p: Vec<Option<u8>> = self.values.iter().map(|&(p, _)| Some(p)).collect();
                if self.kind == SiteRole::QueueBucket {
                    p.resize(2, None);
                    p.extend(self.others.iter().copied().map(Some));
                }
                p
            }
        }
    }
}

/// The argument features of some columns, as the kernel counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arguments {
    /// Roles by probe name: the families' probes, and `virtqueue_pop` when
    /// a family is split by queue.
    pub roles: HashMap<String, Role>,
    /// `arg_columns` entries: key -> column.
    pub table: Vec<(u32, u32)>,
}

impl Arguments {
    pub fn of(columns: &Columns) -> Self {
        let used: Vec<(usize, ArgFeature)> = columns
            .iter()
            .filter_map(|(i, f)| match f {
                Feature::Arg(a) => Some((i, *a)),
                _ => None,
            })
            .collect();
        let mut values: BTreeMap<&str, Vec<(u8, u32)>> = BTreeMap::new();
        let mut queue: HashMap<&str, u8> = HashMap::new();
        for (_, a) in &used {
            let fam = a.family();
            let v = values.entry(fam.probe).or_default();
            if !v.iter().any(|&(_, f)| f == u32::from(a.family)) {
                v.push((fam.position, u32::from(a.family)));
            }
            if let Some(q) = fam.queue {
                queue.insert(fam.probe, q);
            }
        }
        let mut roles: HashMap<String, Role> = values
            .into_iter()
            .map(|(probe, values)| {
                let role = match queue.get(probe) {
                    Some(&q) => Role {
                        kind: SiteRole::QueueBucket,
                        values,
                        others: vec![q],
                    },
                    None => Role {
                        kind: SiteRole::Bucket,
                        values,
                        others: Vec::new(),
                    },
                };
                (probe.to_string(), role)
            })
            .collect();
        if !queue.is_empty() {
            let (pop, positions) = arguments::POP;
            roles.insert(
                pop.to_string(),
                Role {
                    kind: SiteRole::QueueKind,
                    values: Vec::new(),
                    others: positions.to_vec(),
                },
            );
        }
        let table = used
            .iter()
            .map(|(i, a)| (a.table_key(), *i as u32))
            .collect();
        Self { roles, table }
    }

    /// Entries of the column table: every (family, split, bucket).
    pub fn table_len() -> u32 {
        arguments::FAMILIES.len() as u32 * u32::from(arguments::SPLITS * arguments::BUCKETS)
    }

    pub fn any(&self) -> bool {
        !self.table.is_empty()
    }
}

/// The `sites` table's entries: per binary (build id, else path) and site
/// file offset, the entry index.
#[derive(Debug, Default)]
pub struct SiteTable {
    by_binary: HashMap<String, HashMap<u64, u16>>,
    used: u32,
}

/// Entries of the kernel's `sites` table (`MAX_SITES`).
pub const MAX_SITES: u32 = 8192;

impl SiteTable {
    /// The entry of `site` of `binary`, made by `info` when it has none yet
    /// (`write` stores it in the kernel); its cookie field, entry + 1.
    pub fn entry(
        &mut self,
        binary: &str,
        site: u64,
        info: impl FnOnce() -> types::site_info,
        write: impl FnOnce(u32, &types::site_info) -> Result<()>,
    ) -> Result<u16> {
        if let Some(&i) = self.by_binary.get(binary).and_then(|b| b.get(&site)) {
            return Ok(i);
        }
        if self.used >= MAX_SITES {
            return Err(Error::Invalid(format!(
                "more than {MAX_SITES} probe sites need their arguments or sequences read; name \
                 fewer arg: or seq: features"
            )));
        }
        write(self.used, &info())?;
        self.used += 1;
        let cookie = self.used as u16;
        self.by_binary
            .entry(binary.to_string())
            .or_default()
            .insert(site, cookie);
        Ok(cookie)
    }
}

/// A site's extras: its tracked-probe id and, when every argument `role`
/// reads has a spec vmwatch can read, the role (else the site only counts,
/// with a debug line).
pub fn site_info(seq: u16, role: Option<&Role>, site: &UsdtSite) -> types::site_info {
    let mut info = types::site_info {
        seq,
        ..Default::default()
    };
    let Some(role) = role else {
        return info;
    };
    let specs: Vec<&str> = site.args.split_whitespace().collect();
    let locs: Option<Vec<types::arg_loc>> = role
        .positions()
        .iter()
        .map(|&p| match p {
            Some(p) => specs.get(usize::from(p)).and_then(|s| parse_arg(s)),
            None => Some(types::arg_loc::default()),
        })
        .collect();
    let Some(locs) = locs else {
        tracing::debug!(
            "probe {} at {:#x}: argument specs `{}` not readable, its arguments are not counted \
             there",
            site.name,
            site.file_offset,
            site.args
        );
        return info;
    };
    info.role = role.kind as u8;
    info.nr_values = role.values.len() as u8;
    for (i, &(_, family)) in role.values.iter().enumerate() {
        info.family[i] = family;
    }
    for (i, loc) in locs.into_iter().enumerate() {
        info.arg[i] = loc;
    }
    info
}

/// The kernel's `enum arg_kind`.
const ARG_CONST: u8 = 1;
const ARG_REG: u8 = 2;
const ARG_DEREF: u8 = 3;

/// Where one USDT argument is, from its spec (`-4@%eax`, `8@-24(%rbp)`,
/// `4@$5`), on x86-64; `None` for forms vmwatch does not read (symbols,
/// rip-relative or indexed addressing, high-byte registers, other
/// architectures).
pub fn parse_arg(spec: &str) -> Option<types::arg_loc> {
    let (size, operand) = spec.split_once('@')?;
    let size: i8 = size.parse().ok()?;
    let is_signed = u8::from(size < 0);
    let size = size.unsigned_abs();
    if ![1, 2, 4, 8].contains(&size) {
        return None;
    }
    let mut loc = types::arg_loc {
        size,
        is_signed,
        ..Default::default()
    };
    if let Some(imm) = operand.strip_prefix('$') {
        loc.kind = ARG_CONST;
        loc.disp = parse_int(imm)?;
    } else if let Some(reg) = operand.strip_prefix('%') {
        loc.kind = ARG_REG;
        loc.reg = reg_offset(reg)?;
    } else {
        let (disp, rest) = operand.split_once('(')?;
        let reg = rest.strip_suffix(')')?.strip_prefix('%')?;
        loc.kind = ARG_DEREF;
        loc.disp = if disp.is_empty() { 0 } else { parse_int(disp)? };
        loc.reg = reg_offset(reg)?;
    }
    Some(loc)
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// Offset of a general-purpose register (any width but the high bytes) in
/// x86-64's `struct pt_regs`.
fn reg_offset(name: &str) -> Option<u16> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    // Order of struct pt_regs (arch/x86/include/asm/ptrace.h), 8 bytes each.
    const REGS: [&[&str]; 16] = [
        &["r15", "r15d", "r15w", "r15b"],
        &["r14", "r14d", "r14w", "r14b"],
        &["r13", "r13d", "r13w", "r13b"],
        &["r12", "r12d", "r12w", "r12b"],
        &["rbp", "ebp", "bp", "bpl"],
        &["rbx", "ebx", "bx", "bl"],
        &["r11", "r11d", "r11w", "r11b"],
        &["r10", "r10d", "r10w", "r10b"],
        &["r9", "r9d", "r9w", "r9b"],
        &["r8", "r8d", "r8w", "r8b"],
        &["rax", "eax", "ax", "al"],
        &["rcx", "ecx", "cx", "cl"],
        &["rdx", "edx", "dx", "dl"],
        &["rsi", "esi", "si", "sil"],
        &["rdi", "edi", "di", "dil"],
        // orig_ax, ip, cs, flags come between rdi and rsp.
        &[],
    ];
    if let Some(i) = REGS.iter().position(|names| names.contains(&name)) {
        return Some(i as u16 * 8);
    }
    ["rsp", "esp", "sp", "spl"].contains(&name).then_some(152)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(spec: &str) -> (u8, u16, i64, u8, u8) {
        let l = parse_arg(spec).unwrap_or_else(|| panic!("{spec} parses"));
        (l.kind, l.reg, l.disp, l.size, l.is_signed)
    }

    #[test]
    fn argument_specs_of_gcc_and_clang_parse() {
        assert_eq!(loc("8@%rdi"), (ARG_REG, 112, 0, 8, 0));
        assert_eq!(loc("-4@%eax"), (ARG_REG, 80, 0, 4, 1));
        assert_eq!(loc("4@%r12d"), (ARG_REG, 24, 0, 4, 0));
        assert_eq!(loc("1@%sil"), (ARG_REG, 104, 0, 1, 0));
        assert_eq!(loc("8@-24(%rbp)"), (ARG_DEREF, 32, -24, 8, 0));
        assert_eq!(loc("4@(%rsp)"), (ARG_DEREF, 152, 0, 4, 0));
        assert_eq!(loc("-8@16(%rsp)"), (ARG_DEREF, 152, 16, 8, 1));
        assert_eq!(loc("4@$5"), (ARG_CONST, 0, 5, 4, 0));
        assert_eq!(loc("-4@$-1"), (ARG_CONST, 0, -1, 4, 1));
        assert_eq!(loc("8@%r8"), (ARG_REG, 72, 0, 8, 0));
        for bad in [
            "8@foo(%rip)",
            "8@qemu_x(%rip)",
            "4@8(%rax,%rbx,4)",
            "1@%ah",
            "3@%rax",
            "8@%xmm0",
            "8@1234",
            "%rdi",
            "",
        ] {
            assert!(parse_arg(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn roles_follow_the_columns_and_split_families_need_the_pop_probe() {
        let f = |n: &str| n.parse::<Feature>().unwrap();
        let cols = Columns::new([
            f("qemu:virtqueue_fill"),
            f("arg:virtqueue_fill:len:rx:64-127"),
            f("arg:virtio_blk_handle_write:nsectors:8-15"),
            f("arg:virtio_blk_handle_write:sector:1024-2047"),
            f("arg:virtqueue_fill:len:tx:0"),
        ]);
        let a = Arguments::of(&cols);
        assert_eq!(
            a.roles["virtqueue_fill"],
            Role {
                kind: SiteRole::QueueBucket,
                values: vec![(2, 0)],
                others: vec![0],
            }
        );
        assert_eq!(
            a.roles["virtqueue_fill"].positions(),
            [Some(2), None, Some(0)]
        );
        assert_eq!(
            a.roles["virtio_blk_handle_write"],
            Role {
                kind: SiteRole::Bucket,
                values: vec![(3, 2), (2, 4)],
                others: vec![],
            }
        );
        assert_eq!(a.roles["virtqueue_pop"].kind, SiteRole::QueueKind);
        assert_eq!(
            a.roles["virtqueue_pop"].positions(),
            [Some(0), Some(2), Some(3)]
        );
        // Keys: (family * 4 + split) * 32 + bucket.
        assert_eq!(
            a.table,
            [
                (32 + 7, 1),
                ((2 * 4) * 32 + 4, 2),
                ((4 * 4) * 32 + 11, 3),
                (64, 4)
            ]
        );
        assert!(a.table.iter().all(|(k, _)| *k < Arguments::table_len()));
        assert!(!Arguments::of(&Columns::new([f("qemu:a")])).any());
    }

    #[test]
    fn a_site_reads_its_arguments_only_when_every_spec_is_readable() {
        let cols = Columns::new(["arg:virtqueue_fill:len:rx:64-127".parse().unwrap()]);
        let a = Arguments::of(&cols);
        let site = |args: &str| UsdtSite {
            provider: "qemu".into(),
            name: "virtqueue_fill".into(),
            address: 0,
            file_offset: 0x10,
            semaphore: None,
            semaphore_offset: None,
            nop5: true,
            args: args.into(),
        };
        let role = a.roles.get("virtqueue_fill");
        let i = site_info(3, role, &site("8@%rbx 8@%rbp 4@%r12d 4@%eax"));
        assert_eq!((i.seq, i.role, i.nr_values), (3, 2, 1));
        assert_eq!(i.family[0], 0);
        // len (arg 2) first, the queue (arg 0) third.
        assert_eq!((i.arg[0].reg, i.arg[0].size), (24, 4));
        assert_eq!((i.arg[2].reg, i.arg[2].size), (40, 8));
        // The unused slot between them needs no readable spec.
        assert_eq!(i.arg[1].kind, 0);
        let i = site_info(3, role, &site("8@%rbx 8@foo(%rip) 4@%r12d 4@%eax"));
        assert_eq!(i.role, 2, "argument 1 is not read");
        let i = site_info(3, role, &site("8@%rbx 8@%rbp 4@foo(%rip) 4@%eax"));
        assert_eq!((i.seq, i.role), (3, 0), "only tracked");
        let i = site_info(0, role, &site("8@%rbx"));
        assert_eq!(i.role, 0, "too few arguments");
    }

    #[test]
    fn site_entries_are_reused_per_binary_and_bounded() {
        let mut t = SiteTable::default();
        let mut writes = Vec::new();
        let mut entry = |t: &mut SiteTable, b: &str, s: u64| {
            t.entry(b, s, types::site_info::default, |i, _| {
                writes.push(i);
                Ok(())
            })
            .unwrap()
        };
        assert_eq!(entry(&mut t, "a", 1), 1);
        assert_eq!(entry(&mut t, "a", 2), 2);
        assert_eq!(entry(&mut t, "b", 1), 3);
        assert_eq!(entry(&mut t, "a", 1), 1);
        assert_eq!(writes, [0, 1, 2]);
        t.used = MAX_SITES;
        let err = t
            .entry("c", 1, types::site_info::default, |_, _| Ok(()))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("more than 8192 probe sites"),
            "{err}"
        );
    }
}

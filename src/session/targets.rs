//! Targets: the user's `--pid`, `--vm` and `--all` resolved to processes,
//! and which QEMU processes found by name may be taken for VMs.

use crate::discover::procs::{self, Process, Skipped, Untrusted};
use crate::error::{Error, Result};

/// Which processes to watch.
#[derive(Debug, Clone)]
pub enum Target {
    /// A process by PID (any process with `qemu` USDT probes).
    Pid(u32),
    /// QEMU processes whose VM name (`-name`) matches; re-resolved every
    /// window, so a restarted VM is picked up again.
    Vm(String),
    /// Every QEMU process, including ones started later.
    All,
    /// Every QEMU process whose VM name matches, now or later; matching
    /// none yet is no error (the agent starts on a host without VMs).
    Names(NameFilter),
}

/// VM names to include and exclude, as glob patterns (`web-*`).
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: globset::GlobSet,
    exclude: globset::GlobSet,
}

impl NameFilter {
    /// Names that match an `include` pattern and no `exclude` pattern.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let set = |patterns: &[String]| {
            let mut b = globset::GlobSetBuilder::new();
            for p in patterns {
                let glob = globset::Glob::new(p)
                    .map_err(|e| Error::Invalid(format!("`{p}` is not a VM name pattern: {e}")))?;
                b.add(glob);
            }
            b.build()
                .map_err(|e| Error::Invalid(format!("VM name patterns: {e}")))
        };
        Ok(Self {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    pub fn matches(&self, vm: &str) -> bool {
        self.include.is_match(vm) && !self.exclude.is_match(vm)
    }
}

/// How a process came to be a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--pid`: the user's own choice, taken as given.
    Pid,
    /// Found by `--vm` or `--all`: only trusted QEMU processes.
    Discovered,
}

/// Targets resolved to live processes.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Processes to watch, in target order, each once.
    pub processes: Vec<(Process, Origin)>,
    /// Candidates of `--vm`/`--all` not taken for VMs (already logged).
    pub untrusted: Vec<(Process, Untrusted)>,
}

/// Resolves targets to live processes, failing on any that names nothing
/// usable. Processes found by name must pass [`Process::trust`]; the ones
/// that do not are skipped with a warning.
pub fn resolve(targets: &[Target]) -> Result<Resolved> {
    if targets.is_empty() {
        return Err(Error::Invalid(
            "no target given (use --pid, --vm or --all)".into(),
        ));
    }
    let mut out = Resolved::default();
    // Explicit PIDs first, so a process also found by name keeps --pid's rules.
    for t in targets {
        if let Target::Pid(pid) = t {
            let p = Process::from_pid(*pid)?;
            if !out.processes.iter().any(|(o, _)| o.pid == p.pid) {
                out.processes.push((p, Origin::Pid));
            }
        }
    }
    let mut scan: Option<procs::Scan> = None;
    for t in targets {
        let scan = match t {
            Target::Pid(_) => continue,
            _ => scan.get_or_insert_with(procs::scan),
        };
        let mut found = false;
        let mut skipped = Skipped {
            hidden: scan.hidden,
            ..Skipped::default()
        };
        for p in &scan.qemus {
            if !wanted(std::slice::from_ref(t), p) {
                continue;
            }
            if out.processes.iter().any(|(o, _)| o.pid == p.pid) {
                found = true;
                continue;
            }
            match p.trust() {
                Ok(()) => {
                    found = true;
                    out.processes.push((p.clone(), Origin::Discovered));
                }
                Err(why) => {
                    if !out.untrusted.iter().any(|(u, _)| u.pid == p.pid) {
                        out.untrusted.push((p.clone(), why.clone()));
                    }
                    skipped.untrusted.push((p.pid, why));
                }
            }
        }
        if !found && !matches!(t, Target::Names(_)) {
            return Err(match t {
                Target::Vm(name) => Error::NoSuchVm {
                    name: name.clone(),
                    skipped,
                },
                _ => Error::NoQemu { skipped },
            });
        }
    }
    for (p, why) in &out.untrusted {
        skip(p, why);
    }
    Ok(out)
}

/// Logs why a candidate of `--vm`/`--all` is not watched.
pub(super) fn skip(p: &Process, why: &(dyn std::error::Error + 'static)) {
    tracing::warn!(
        "skipping QEMU PID {} (VM {}): {}",
        p.pid,
        p.vm,
        vmwatch_core::error::chain(why)
    );
}

/// Tells a process apart from a later one with the same PID.
pub(super) fn key(p: &Process) -> (u32, u64) {
    (p.pid, p.start_time)
}

/// Whether `targets` find processes by name (so more can join later).
pub fn can_grow(targets: &[Target]) -> bool {
    targets.iter().any(|t| !matches!(t, Target::Pid(_)))
}

/// Whether `p`, found by a scan, is what one of `targets` names.
pub fn wanted(targets: &[Target], p: &Process) -> bool {
    targets.iter().any(|t| match t {
        Target::All => true,
        Target::Vm(name) => *name == p.vm,
        Target::Names(filter) => filter.matches(&p.vm),
        Target::Pid(_) => false,
    })
}

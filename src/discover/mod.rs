//! Discovery: what there is to watch, read from the host without attaching
//! anything. QEMU processes and who is a VM ([`procs`]), the USDT probe sites
//! and semaphores of their binaries ([`stapsdt`]), and the running kernel's
//! KVM tracepoints ([`kvm`]).

pub mod kvm;
pub mod procs;
pub mod stapsdt;

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{Error, Result};

/// One QEMU process as `vmwatch list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QemuEntry {
    pub pid: u32,
    pub vm: String,
    /// `-uuid` in lower-case canonical form; `null` without one.
    pub uuid: Option<String>,
    pub binary: String,
    /// Distinct `qemu` probe names of its binary (0: no USDT probes).
    pub probes: usize,
    /// Whether `--vm` and `--all` take it for a VM.
    pub trusted: bool,
    pub untrusted_reason: Option<String>,
}

/// Every QEMU process on the host with its probe count and trust. A user
/// who cannot see every process gets an error, not a partial list.
pub fn list_qemus() -> Result<Vec<QemuEntry>> {
    let scan = procs::scan();
    if scan.hidden > 0 {
        return Err(Error::NeedsRoot {
            what: "listing QEMU processes".into(),
            hidden: scan.hidden,
            uid: procs::current_uid(),
        });
    }
    let mut probe_counts = HashMap::new();
    Ok(scan
        .qemus
        .into_iter()
        .map(|p| {
            let untrusted = p.trust().err();
            let probes = *probe_counts
                .entry(p.binary_id)
                .or_insert_with(|| stapsdt::count_probe_names(&p.exe_path(), "qemu"));
            QemuEntry {
                pid: p.pid,
                vm: p.vm,
                uuid: p.uuid,
                binary: p.binary.display().to_string(),
                probes,
                trusted: untrusted.is_none(),
                untrusted_reason: untrusted.map(|u| u.to_string()),
            }
        })
        .collect())
}

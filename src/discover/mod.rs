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
    /// Its binary's ELF build id (`.note.gnu.build-id`, hex); `null` when
    /// it has none.
    pub qemu_build_id: Option<String>,
    /// The QEMU version its binary declares (its `-version` banner, read
    /// from the file, not by running it); `null` when not found.
    pub qemu_version: Option<String>,
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
    let mut binaries = HashMap::new();
    Ok(scan
        .qemus
        .into_iter()
        .map(|p| {
            let untrusted = p.trust().err();
            let (probes, build) = binaries
                .entry(p.binary_id)
                .or_insert_with(|| match stapsdt::UsdtBinary::read(&p.exe_path()) {
                    Ok(b) => (stapsdt::probe_names(&b, "qemu"), b.qemu),
                    Err(_) => (0, stapsdt::build_of_file(&p.exe_path())),
                })
                .clone();
            QemuEntry {
                pid: p.pid,
                vm: p.vm,
                uuid: p.uuid,
                binary: p.binary.display().to_string(),
                probes,
                qemu_build_id: build.build_id,
                qemu_version: build.version,
                trusted: untrusted.is_none(),
                untrusted_reason: untrusted.map(|u| u.to_string()),
            }
        })
        .collect())
}

//! `vmwatch list`: QEMU processes on the host.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use vmwatch::discover::QemuEntry;

/// List the QEMU processes on this host: PID, VM name and UUID, binary,
/// USDT probes.
///
/// The VM name is QEMU's `-name` (libvirt passes the domain's), else
/// libvirt's for the process (its PID file or machine cgroup), else
/// `qemu-PID`; the UUID is `-uuid`, `-` when there is none.
///
/// Every process named like QEMU is listed; the ones `--vm` and `--all`
/// do not take for VMs (not run by root or a system account, or from an
/// executable others can change) are marked untrusted. Needs root: other
/// users' processes cannot be inspected.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const NO_PROBES_HINT: &str =
    "no USDT probes: vmwatch needs a QEMU built with --enable-trace-backends=dtrace";

pub fn run(args: Args) -> Result<ExitCode> {
    let entries = vmwatch::discover::list_qemus()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        writeln!(out, "no QEMU processes running")?;
        return Ok(ExitCode::SUCCESS);
    }
    let vw = entries.iter().map(|e| e.vm.len()).max().unwrap_or(2).max(2);
    let uw = entries
        .iter()
        .map(|e| uuid(e).len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:>8}  {:<vw$}  {:<uw$}  {:>6}  BINARY",
        "PID", "VM", "UUID", "PROBES"
    )?;
    for e in &entries {
        let mut hint = String::new();
        if let Some(why) = &e.untrusted_reason {
            hint.push_str(&format!("  (untrusted, not used by --vm/--all: {why})"));
        }
        if e.probes == 0 {
            hint.push_str(&format!("  ({NO_PROBES_HINT})"));
        }
        writeln!(
            out,
            "{:>8}  {:<vw$}  {:<uw$}  {:>6}  {}{hint}",
            e.pid,
            e.vm,
            uuid(e),
            e.probes,
            e.binary
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The UUID column: `-` without one.
fn uuid(e: &QemuEntry) -> &str {
    e.uuid.as_deref().unwrap_or("-")
}

//! `vmwatch list`: QEMU processes on the host.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

/// List the QEMU processes on this host: PID, VM name, binary, USDT probes.
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
    writeln!(out, "{:>8}  {:<vw$}  {:>6}  BINARY", "PID", "VM", "PROBES")?;
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
            "{:>8}  {:<vw$}  {:>6}  {}{hint}",
            e.pid, e.vm, e.probes, e.binary
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `vmwatch list`: QEMU processes on the host.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use vmwatch::procs;
use vmwatch::stapsdt;

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

#[derive(Serialize)]
struct Entry {
    pid: u32,
    vm: String,
    binary: String,
    probes: usize,
    /// Whether `--vm` and `--all` take it for a VM.
    trusted: bool,
    untrusted_reason: Option<String>,
}

const NO_PROBES_HINT: &str =
    "no USDT probes: vmwatch needs a QEMU built with --enable-trace-backends=dtrace";

pub fn run(args: Args) -> Result<ExitCode> {
    let scan = procs::scan();
    // A partial list would pass for the whole host.
    if scan.hidden > 0 {
        return Err(vmwatch::Error::NeedsRoot {
            what: "listing QEMU processes".into(),
            hidden: scan.hidden,
            uid: procs::current_uid(),
        }
        .into());
    }
    let mut probe_counts = std::collections::HashMap::new();
    let entries: Vec<Entry> = scan
        .qemus
        .into_iter()
        .map(|p| {
            let untrusted = p.trust().err();
            let probes = *probe_counts
                .entry(p.binary_id)
                .or_insert_with(|| stapsdt::count_probe_names(&p.exe_path(), "qemu"));
            Entry {
                pid: p.pid,
                vm: p.vm,
                binary: p.binary.display().to_string(),
                probes,
                trusted: untrusted.is_none(),
                untrusted_reason: untrusted.map(|u| u.to_string()),
            }
        })
        .collect();
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

//! `vmwatch probes`: the USDT probes of a binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch::discover::stapsdt::UsdtBinary;

/// List the USDT probes of a binary: provider, name, call sites, semaphore.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary (e.g. a qemu-system-x86_64 built with the dtrace backend).
    binary: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let bin = UsdtBinary::read(&args.binary)?;
    let probes = bin.probes();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &probes)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = probes
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<10} {:<width$} {:>5}  SEMAPHORE",
        "PROVIDER", "NAME", "SITES"
    )?;
    for p in &probes {
        let sema = p
            .semaphore
            .map_or_else(|| "-".to_string(), |s| format!("{s:#x}"));
        writeln!(
            out,
            "{:<10} {:<width$} {:>5}  {sema}",
            p.provider, p.name, p.sites
        )?;
    }
    writeln!(
        out,
        "{} probes, {} sites in {}",
        probes.len(),
        bin.sites.len(),
        args.binary.display()
    )?;
    // Whether uprobes on these sites can take Linux ≥ 6.18's faster path.
    let nop5 = bin.nop5_sites();
    let kind = if nop5 == bin.sites.len() {
        "all sites are 5-byte nops: Linux >= 6.18 optimizes their uprobes (no int3 trap per hit)"
            .to_string()
    } else if nop5 == 0 {
        "sites are 1-byte nops: every hit of an attached probe traps on an int3".to_string()
    } else {
        format!("{nop5} of the sites are 5-byte nops (optimizable uprobes), the rest 1-byte nops")
    };
    writeln!(out, "{kind}")?;
    Ok(ExitCode::SUCCESS)
}

//! `vmwatch cleanup`: lower the USDT semaphores a killed vmwatch left raised.

use std::process::ExitCode;

use anyhow::Result;

use vmwatch::attach::semaphores;

/// Lower the USDT semaphores that a vmwatch which was killed (SIGKILL, the
/// OOM killer) raised in QEMU processes and never lowered.
///
/// Every vmwatch records what it raises under /run/vmwatch and restores what
/// dead instances left behind when it starts; this does the same on demand.
/// Running vmwatch instances are left alone.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode> {
    let repair = semaphores::repair()?;
    for (owner, pid, n) in &repair.restored {
        println!(
            "lowered {n} semaphores in PID {pid} (raised by vmwatch PID {owner}, which was killed)"
        );
    }
    if repair.gone > 0 {
        println!(
            "dropped {} record(s) of processes that have exited since",
            repair.gone
        );
    }
    for (pid, n) in &repair.live {
        println!("vmwatch PID {pid} is running (semaphores raised in {n} process(es)): left alone");
    }
    if repair.restored.is_empty() && repair.gone == 0 {
        println!("nothing to clean up");
    }
    Ok(ExitCode::SUCCESS)
}

//! `vmwatch ctl`: talk to the running agent.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use vmwatch::agent::ctl::{self, Request, Response};

/// Ask the running agent: the state of every VM, or relearn or forget one.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's state directory (its socket is STATE_DIR/agent.sock).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/vmwatch")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Every VM: state, windows learned, last score, verdict, probe cost.
    Status {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Learn a new period of the VM's behaviour on top of what it learned,
    /// then retrain (after a planned change of its workload).
    Relearn {
        /// VM name, UUID or state key.
        vm: String,
    },
    /// Drop everything the agent learned of the VM.
    Forget {
        /// VM name, UUID or state key.
        vm: String,
    },
    /// Print everything the agent learned of the VM (JSON), to move it to
    /// another host with `ctl import` (a live migration).
    Export {
        /// VM name, UUID or state key.
        vm: String,
    },
    /// Take a VM's state exported on another host (from FILE, or stdin).
    Import {
        /// The output of `ctl export` (default: stdin).
        file: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> Result<ExitCode> {
    let socket = args.state_dir.join("agent.sock");
    let (request, json) = match &args.command {
        Command::Status { json } => (Request::Status, *json),
        Command::Relearn { vm } => (Request::Relearn { vm: vm.clone() }, false),
        Command::Forget { vm } => (Request::Forget { vm: vm.clone() }, false),
        Command::Export { vm } => (Request::Export { vm: vm.clone() }, true),
        Command::Import { file } => (
            Request::Import {
                bundle: read_bundle(file.as_deref())?,
            },
            false,
        ),
    };
    let mut out = std::io::stdout().lock();
    match ctl::request(&socket, &request)? {
        Response::Status { vms } if json => {
            serde_json::to_writer_pretty(&mut out, &vms)?;
            writeln!(out)?;
        }
        Response::Status { vms } => {
            let w = vms.iter().map(|v| v.vm.len()).max().unwrap_or(2).max(2);
            writeln!(
                out,
                "{:<w$}  {:>8}  {:<10}  {:>7}  {:>9}  {:<9}  {:>9}  UUID",
                "VM", "PID", "STATE", "LEARNED", "SCORE", "VERDICT", "COST"
            )?;
            for v in &vms {
                let dash = || "-".to_string();
                writeln!(
                    out,
                    "{:<w$}  {:>8}  {:<10}  {:>7}  {:>9}  {:<9}  {:>9}  {}",
                    v.vm,
                    v.pid.map_or_else(dash, |p| p.to_string()),
                    v.state,
                    v.windows_learned,
                    v.score.map_or_else(dash, |s| format!("{s:.4}")),
                    v.anomalous
                        .map_or_else(dash, |a| if a { "ANOMALOUS" } else { "normal" }.into()),
                    v.probe_cost_ratio
                        .map_or_else(dash, |c| format!("{:.3}%", c * 100.0)),
                    v.uuid.as_deref().unwrap_or("-")
                )?;
            }
        }
        Response::Bundle { bundle } => {
            serde_json::to_writer(&mut out, &bundle)?;
            writeln!(out)?;
        }
        Response::Done { message } => writeln!(out, "{message}")?,
        Response::Error { message } => bail!("the agent says: {message}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A bundle from `path`, or stdin.
fn read_bundle(path: Option<&std::path::Path>) -> Result<Box<ctl::Bundle>> {
    let text = match path {
        Some(p) => vmwatch_core::limits::read_file(p, 1 << 30, "a VM state")?,
        None => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)?;
            v
        }
    };
    let what = path.map_or_else(|| "stdin".into(), |p| p.display().to_string());
    serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{what} is not the output of `vmwatch ctl export`: {e}"))
}

//! `vmwatch agent`: the host service (docs/AGENT.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch::agent::config::{self, AgentConfig};
use vmwatch::session::Ended;
use vmwatch::signals::StopSignal;

/// Watch every QEMU VM of the host, learn each one's normal behaviour by
/// itself, and tell every window whether it still behaves so.
///
/// A new VM learns (its windows go to its own training set in the state
/// directory), is trained after --learn-windows windows, then monitored
/// with a smoothed verdict per window. State is kept per VM UUID (else
/// name): a restarted agent resumes every VM. Metrics for Prometheus on
/// --metrics; `vmwatch ctl` talks to it. SIGINT, SIGTERM, SIGHUP and
/// SIGQUIT stop it cleanly.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML; default /etc/vmwatch/agent.toml when it
    /// exists). The options below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory (default /var/lib/vmwatch).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (default 127.0.0.1:9477;
    /// `none`: no metrics).
    #[arg(long, value_name = "ADDR", value_parser = config::parse_metrics)]
    metrics: Option<Option<std::net::SocketAddr>>,
    /// Windows a new VM learns before it is trained (default 300: ten
    /// minutes of 2-s windows).
    #[arg(long, value_name = "N", value_parser = learn_windows)]
    learn_windows: Option<u64>,
    /// Share of one CPU, in percent, a VM's probe hits may cost before it is
    /// logged and flagged (vmwatch_vm_over_budget); `none`: no budget
    /// (default 1).
    #[arg(long, value_name = "PERCENT", value_parser = config::parse_budget)]
    budget: Option<Option<f64>>,
    /// JSON-lines events to this file (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
}

fn learn_windows(s: &str) -> Result<u64, String> {
    let n = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of windows"))?;
    config::check_learn_windows(n)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let stop = StopSignal::install()?;
    let mut config = AgentConfig::load(args.config.as_deref())?;
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(m) = args.metrics {
        config.metrics = m;
    }
    if let Some(n) = args.learn_windows {
        config.learn_windows = n;
    }
    if let Some(b) = args.budget {
        config.budget = b;
    }
    if args.events.is_some() {
        config.events = args.events;
    }
    match vmwatch::agent::run(&config, &stop)? {
        Ended::Signal(sig) => tracing::info!("agent stopped by signal {sig}"),
        other => tracing::info!("agent ended: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

//! `vmwatch`: the command-line front end. Each subcommand is a thin layer
//! over the library; errors surface as one sentence and a non-zero exit.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Watches QEMU/KVM virtual machines from the host and tells, every window,
/// whether each still behaves like its normal profile. Counts QEMU's USDT
/// probes per VM with eBPF, without touching the guest.
#[derive(Debug, Parser)]
#[command(name = "vmwatch", version, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Probes(cmd::probes::Args),
    List(cmd::list::Args),
    Record(cmd::record::Args),
    Train(cmd::train::Args),
    Detect(cmd::detect::Args),
    Eval(cmd::eval::Args),
    Monitor(cmd::monitor::Args),
    Select(cmd::select::Args),
    Cleanup(cmd::cleanup::Args),
    Agent(cmd::agent::Args),
    Ctl(cmd::ctl::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Probes(a) => cmd::probes::run(a),
        Command::List(a) => cmd::list::run(a),
        Command::Record(a) => cmd::record::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Detect(a) => cmd::detect::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Monitor(a) => cmd::monitor::run(a),
        Command::Select(a) => cmd::select::run(a),
        Command::Cleanup(a) => cmd::cleanup::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Ctl(a) => cmd::ctl::run(a),
    };
    match result {
        Ok(code) => code,
        // `vmwatch probes QEMU | head` closes the pipe early: not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, each once: `what: cause: root`.
            eprintln!("vmwatch: {}", vmwatch_core::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs captured in files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    // libbpf's own messages (e.g. a failed feature probe) go to debug logs.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |level, msg| {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
            _ => tracing::trace!(target: "libbpf", "{msg}"),
        }
    })));
}
